//! The request and response bodies of Daytona's REST and toolbox APIs, as
//! far as contextfs uses them (field names as in Daytona's OpenAPI).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `CreateSandbox` of Daytona's OpenAPI (the fields contextfs sets).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandbox {
    /// The ID or name of the snapshot (image) the sandbox starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Minutes of inactivity before the sandbox stops (0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_stop_interval: Option<i64>,
    /// Minutes after stopping before it is deleted (negative disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_delete_interval: Option<i64>,
}

/// `Sandbox` of Daytona's OpenAPI (the fields contextfs reads; others are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `creating`, `starting`, `started`, `stopped`, `error`, `destroyed`, …
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub error_reason: Option<String>,
    #[serde(default)]
    pub auto_stop_interval: Option<i64>,
    #[serde(default)]
    pub auto_delete_interval: Option<i64>,
    /// Base of the toolbox API; calls go to `{toolboxProxyUrl}/{id}/...`.
    #[serde(default)]
    pub toolbox_proxy_url: Option<String>,
}

/// The toolbox's `ExecuteRequest` and `ExecuteResponse`, which contextfs
/// uses as every provider's shell request.
pub use crate::sandbox::remote::{ExecuteRequest, ExecuteResponse};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::daytona::Daytona;

    #[test]
    fn sandbox_json_from_the_openapi_shape_decodes() {
        let json = r#"{"id":"abc","organizationId":"o","name":"n","user":"daytona","env":{},"labels":{"k":"v"},
            "public":false,"networkBlockAll":false,"target":"us","cpu":1,"gpu":0,"memory":1,"disk":3,
            "state":"started","autoStopInterval":15,"toolboxProxyUrl":"https://proxy.app.daytona.io/toolbox"}"#;
        let s: Sandbox = serde_json::from_str(json).unwrap();
        assert_eq!(s.state.as_deref(), Some("started"));
        assert_eq!(s.labels["k"], "v");
        let d = Daytona::new("http://127.0.0.1:1/api/", "k").unwrap();
        assert_eq!(
            d.toolbox(&s.id, s.toolbox_proxy_url.as_deref()).base_url(),
            "https://proxy.app.daytona.io/toolbox/abc"
        );
        assert_eq!(
            d.toolbox("abc", None).base_url(),
            "http://127.0.0.1:1/api/toolbox/abc/toolbox"
        );
    }

    #[test]
    fn fields_this_client_does_not_know_are_ignored() {
        // The 0.226 `Sandbox` has fields this client never reads (kvm, spot, volumes, …),
        // and later versions will add more.
        let json = r#"{"id":"abc","organizationId":"o","name":"n","user":"daytona","env":{},"labels":{},
            "public":false,"networkBlockAll":false,"kvm":false,"target":"us","cpu":1,"gpu":0,"memory":1,
            "disk":3,"state":"started","desiredState":"started","volumes":[{"volumeId":"v","mountPath":"/v"}],
            "buildInfo":{"dockerfileContent":"FROM x"},"aFieldFromTheFuture":{"nested":[1,2]},
            "toolboxProxyUrl":"https://proxy.app.daytona.io/toolbox"}"#;
        let s: Sandbox = serde_json::from_str(json).unwrap();
        assert_eq!((s.id.as_str(), s.state.as_deref()), ("abc", Some("started")));
        // An unknown state is kept as it is, not an error.
        let s: Sandbox = serde_json::from_str(r#"{"id":"x","state":"resizing"}"#).unwrap();
        assert_eq!(s.state.as_deref(), Some("resizing"));
        // Older daemons answer `code`, newer `exitCode`.
        let old: ExecuteResponse = serde_json::from_str(r#"{"code":3,"result":"x"}"#).unwrap();
        let new: ExecuteResponse = serde_json::from_str(r#"{"exitCode":3,"result":"x","extra":1}"#).unwrap();
        assert_eq!((old.exit_code, new.exit_code), (3, 3));
    }

    #[test]
    fn create_request_uses_camel_case_and_skips_unset_fields() {
        let req = CreateSandbox {
            snapshot: Some("snap".into()),
            auto_stop_interval: Some(15),
            auto_delete_interval: Some(120),
            labels: BTreeMap::from([("a".to_string(), "b".to_string())]),
            ..CreateSandbox::default()
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"snapshot":"snap","labels":{"a":"b"},"autoStopInterval":15,"autoDeleteInterval":120})
        );
    }
}
