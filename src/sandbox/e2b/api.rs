//! E2B's REST control plane ([`E2b`]) and the errors of every E2B call
//! ([`E2bError`]), worded as what to do about them.

use std::collections::BTreeMap;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sandbox::remote::http::{self, Failure, Refusal, Retry};
use crate::sandbox::remote::ErrorKind;

/// Characters left as they are in a URL path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// What went wrong talking to E2B, worded as what to do about it.
#[derive(Debug, Error)]
pub enum E2bError {
    #[error("no E2B API key: set E2B_API_KEY (or pass --api-key); keys are made in the E2B dashboard")]
    NoKey,
    #[error("E2B refused the API key (HTTP {status}: {message}); check E2B_API_KEY")]
    Unauthorized { status: u16, message: String },
    #[error("E2B is failing (HTTP {status}: {message}, {attempts} attempts); retry later")]
    Server {
        status: u16,
        message: String,
        attempts: u32,
    },
    #[error("E2B is rate-limiting this API key (HTTP 429: {message}, {attempts} attempts); wait a minute and retry")]
    Throttled { message: String, attempts: u32 },
    #[error("cannot reach E2B at {url}: {detail}; check E2B_API_URL (E2B_SANDBOX_URL for envd) and the network")]
    Unreachable { url: String, detail: String },
    #[error("E2B: {message} (HTTP 404, {what})")]
    NotFound { what: String, message: String },
    #[error("E2B sandbox {id} is gone (killed, or its timeout ran out): {message}")]
    SandboxGone { id: String, message: String },
    #[error("E2B rejected the request for {what} (HTTP {status}: {message})")]
    Rejected { what: String, status: u16, message: String },
    #[error("the command in E2B sandbox {id} ran past its time limit ({seconds} s) and was killed")]
    TimedOut { id: String, seconds: u64 },
    #[error("unexpected answer from E2B at {url}: {detail}")]
    Protocol { url: String, detail: String },
}

impl E2bError {
    /// What the error means to the provider-neutral sandbox logic.
    pub fn kind(&self) -> ErrorKind {
        match self {
            E2bError::Unauthorized { .. } | E2bError::NoKey => ErrorKind::Unauthorized,
            E2bError::NotFound { .. } | E2bError::SandboxGone { .. } => ErrorKind::NotFound,
            E2bError::TimedOut { .. } => ErrorKind::TimedOut,
            _ => ErrorKind::Other,
        }
    }

    /// Words a failed request of `what` (`sandbox` names it when the answer came from its envd).
    pub(super) fn from_failure(f: Failure, what: &str, fallback_url: &str, sandbox: Option<&str>) -> E2bError {
        match f {
            Failure::Transport { url, detail, .. } => E2bError::Unreachable {
                url: if url.is_empty() { fallback_url.to_string() } else { url },
                detail,
            },
            Failure::Status {
                status,
                retry_after,
                body,
                attempts,
            } => match Refusal::of(status, retry_after, &body, attempts) {
                // E2B's proxy answers 502 "The sandbox ID was not found" for a sandbox that is gone.
                Refusal::Server {
                    status: 502, message, ..
                } if message.contains("was not found") => E2bError::SandboxGone {
                    id: sandbox.unwrap_or_default().to_string(),
                    message,
                },
                Refusal::Unauthorized { status, message } => E2bError::Unauthorized { status, message },
                Refusal::NotFound { message } => E2bError::NotFound {
                    what: what.to_string(),
                    message,
                },
                Refusal::Throttled { message, attempts } => E2bError::Throttled { message, attempts },
                Refusal::Server {
                    status,
                    message,
                    attempts,
                } => E2bError::Server {
                    status,
                    message,
                    attempts,
                },
                Refusal::Rejected { status, message } => E2bError::Rejected {
                    what: what.to_string(),
                    status,
                    message,
                },
            },
        }
    }
}

pub type E2bResult<T> = Result<T, E2bError>;

/// `NewSandboxV2` (the fields contextfs sets).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds until E2B kills the sandbox (renewed by [`E2b::set_timeout`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
}

/// `Sandbox` (the create answer) and `SandboxDetail` / `ListedSandbox` (the
/// fields contextfs reads; the rest are ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(default, rename = "templateID")]
    pub template_id: Option<String>,
    #[serde(default)]
    pub envd_version: Option<String>,
    #[serde(default)]
    pub envd_access_token: Option<String>,
    /// Where the sandbox is reached: `49983-{id}.{domain}`.
    #[serde(default)]
    pub domain: Option<String>,
    /// `running` or `paused`.
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub end_at: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A client for E2B's REST control plane.
#[derive(Clone)]
pub struct E2b {
    pub(super) http: reqwest::Client,
    api: String,
    key: String,
}

impl E2b {
    pub fn new(api_url: &str, key: &str) -> E2bResult<Self> {
        let (api, http) = crate::sandbox::remote::http::api_client(api_url, "E2B_API_URL")
            .map_err(|(url, detail)| E2bError::Protocol { url, detail })?;
        if key.trim().is_empty() {
            return Err(E2bError::NoKey);
        }
        Ok(Self {
            http,
            api,
            key: key.trim().to_string(),
        })
    }

    pub fn api_url(&self) -> &str {
        &self.api
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api))
            .header("X-API-KEY", &self.key)
    }

    async fn send(&self, what: &str, retry: Retry, builder: RequestBuilder) -> E2bResult<Response> {
        http::send(what, retry, builder)
            .await
            .map_err(|f| E2bError::from_failure(f, what, &self.api, None))
    }

    async fn json<T: DeserializeOwned>(&self, what: &str, retry: Retry, builder: RequestBuilder) -> E2bResult<T> {
        let response = self.send(what, retry, builder).await?;
        let url = response.url().to_string();
        let bytes = response.bytes().await.map_err(|e| E2bError::Unreachable {
            url: url.clone(),
            detail: http::describe(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| E2bError::Protocol {
            url,
            detail: format!(
                "{e}: {}",
                String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>()
            ),
        })
    }

    fn sandbox_path(id: &str) -> String {
        format!("/sandboxes/{}", utf8_percent_encode(id, SEGMENT))
    }

    /// `POST /v2/sandboxes`: the sandbox runs when this returns.
    pub async fn create_sandbox(&self, request: &NewSandbox) -> E2bResult<SandboxInfo> {
        self.json(
            "sandbox creation",
            // A create that failed with 5xx may have made a sandbox: not sent twice.
            Retry::OnlyThrottled,
            self.request(Method::POST, "/v2/sandboxes")
                .json(request)
                .timeout(Duration::from_secs(300)),
        )
        .await
    }

    /// `GET /sandboxes/{id}`.
    pub async fn sandbox(&self, id: &str) -> E2bResult<SandboxInfo> {
        self.json(
            &format!("sandbox {id}"),
            Retry::Idempotent,
            self.request(Method::GET, &Self::sandbox_path(id))
                .timeout(Duration::from_secs(60)),
        )
        .await
    }

    /// `GET /v2/sandboxes?metadata=k=v&...`: the running sandboxes carrying all of `metadata`.
    pub async fn list(&self, metadata: &BTreeMap<String, String>) -> E2bResult<Vec<SandboxInfo>> {
        let query = metadata
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    utf8_percent_encode(k, SEGMENT),
                    utf8_percent_encode(v, SEGMENT)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        self.json(
            "sandbox list",
            Retry::Idempotent,
            self.request(Method::GET, "/v2/sandboxes")
                .query(&[("metadata", query.as_str()), ("state", "running")])
                .timeout(Duration::from_secs(60)),
        )
        .await
    }

    /// `DELETE /sandboxes/{id}`: kills the sandbox.
    pub async fn kill(&self, id: &str) -> E2bResult<()> {
        self.send(
            &format!("sandbox {id}"),
            Retry::Idempotent,
            self.request(Method::DELETE, &Self::sandbox_path(id))
                .timeout(Duration::from_secs(120)),
        )
        .await?;
        Ok(())
    }

    /// `POST /sandboxes/{id}/timeout`: E2B kills the sandbox `seconds` from now
    /// unless this is called again (contextfs's keep-alive).
    pub async fn set_timeout(&self, id: &str, seconds: u64) -> E2bResult<()> {
        self.send(
            &format!("sandbox {id}"),
            Retry::Idempotent,
            self.request(Method::POST, &format!("{}/timeout", Self::sandbox_path(id)))
                .json(&serde_json::json!({ "timeout": seconds }))
                .timeout(Duration::from_secs(60)),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_answers_decode_and_unknown_fields_are_ignored() {
        let json = r#"{"templateID":"base","sandboxID":"i1x2","clientID":"c","envdVersion":"0.5.7",
            "envdAccessToken":"ea_1","trafficAccessToken":null,"domain":null,"aNewField":[1]}"#;
        let s: SandboxInfo = serde_json::from_str(json).unwrap();
        assert_eq!(s.sandbox_id, "i1x2");
        assert_eq!(s.envd_access_token.as_deref(), Some("ea_1"));
        assert_eq!(s.domain, None);
    }

    #[test]
    fn new_sandbox_uses_e2b_field_names() {
        let req = NewSandbox {
            template_id: "base".into(),
            timeout: Some(600),
            metadata: BTreeMap::from([("thread_id".to_string(), "t".to_string())]),
            ..NewSandbox::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"templateID":"base","timeout":600,"metadata":{"thread_id":"t"}})
        );
    }

    #[test]
    fn a_gone_sandbox_is_told_apart_from_a_failing_e2b() {
        let gone = Failure::Status {
            status: 502,
            retry_after: None,
            body: r#"{"code":502,"message":"The sandbox abc was not found"}"#.into(),
            attempts: 1,
        };
        let e = E2bError::from_failure(gone, "x", "http://e", Some("abc"));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let failing = Failure::Status {
            status: 502,
            retry_after: None,
            body: "bad gateway".into(),
            attempts: 4,
        };
        assert!(matches!(
            E2bError::from_failure(failing, "x", "http://e", Some("abc")),
            E2bError::Server { status: 502, .. }
        ));
    }
}
