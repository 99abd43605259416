//! E2B behind the provider-neutral [`Provider`] trait.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::api::{E2b, E2bError, NewSandbox};
use super::envd::EnvdShell;
use super::{DEFAULT_DOMAIN, ENVD_PORT};
use crate::sandbox::remote::{Created, Log, Provider, ProviderKind, SandboxRecord, Shell, KEEP_ALIVE_EVERY};

/// E2B with the settings its sandboxes are created with.
pub struct E2bProvider {
    pub api: E2b,
    /// The template sandboxes start from (`base` unless told).
    pub template: String,
    /// Minutes E2B keeps a sandbox alive after each command (its timeout).
    pub timeout_minutes: u64,
    /// `E2B_SANDBOX_URL`: one URL for every sandbox's envd (a proxy, or a
    /// local stand-in); otherwise `https://49983-{id}.{domain}`.
    pub sandbox_url: Option<String>,
    /// `E2B_DOMAIN` [default: e2b.app], unless E2B names another per sandbox.
    pub domain: Option<String>,
    pub env_vars: BTreeMap<String, String>,
}

impl E2bProvider {
    fn envd_url(&self, id: &str, domain: Option<&str>) -> String {
        match &self.sandbox_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let domain = domain
                    .or(self.domain.as_deref())
                    .filter(|d| !d.is_empty())
                    .unwrap_or(DEFAULT_DOMAIN);
                format!("https://{ENVD_PORT}-{id}.{domain}")
            }
        }
    }
}

#[async_trait]
impl Provider for E2bProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::E2b
    }

    fn name(&self) -> &'static str {
        "E2B"
    }

    fn api_url(&self) -> &str {
        self.api.api_url()
    }

    async fn create(&self, labels: BTreeMap<String, String>) -> anyhow::Result<Created> {
        let request = NewSandbox {
            template_id: self.template.clone(),
            timeout: Some(self.timeout_minutes.max(1) * 60),
            metadata: labels,
            env_vars: self.env_vars.clone(),
        };
        let sandbox = self.api.create_sandbox(&request).await?;
        Ok(Created {
            endpoint: Some(self.envd_url(&sandbox.sandbox_id, sandbox.domain.as_deref())),
            access_token: sandbox.envd_access_token,
            id: sandbox.sandbox_id,
        })
    }

    fn shell(&self, record: &SandboxRecord) -> Arc<dyn Shell> {
        let url = match (&self.sandbox_url, &record.endpoint) {
            // Where it was created, unless this run points elsewhere on purpose.
            (None, Some(endpoint)) => endpoint.clone(),
            _ => self.envd_url(&record.id, None),
        };
        Arc::new(EnvdShell::new(
            reqwest::Client::new(),
            &url,
            &record.id,
            record.access_token.clone(),
        ))
    }

    async fn exists(&self, id: &str) -> anyhow::Result<bool> {
        match self.api.sandbox(id).await {
            Ok(_) => Ok(true),
            Err(E2bError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Keep-alive: the sandbox's timeout starts again, so E2B does not kill
    /// it during the command. E2B sandboxes do not stop; one that timed out
    /// is gone (an error of kind NotFound).
    async fn wake(&self, record: &SandboxRecord, _log: &Log<'_>) -> anyhow::Result<bool> {
        let minutes = record.timeout_minutes.unwrap_or(self.timeout_minutes).max(1);
        self.api.set_timeout(&record.id, minutes * 60).await?;
        Ok(false)
    }

    /// A command outlasting the sandbox's timeout: renewed whenever less
    /// than three keep-alive periods are left (E2B would kill the sandbox,
    /// the command and the mount with it).
    async fn keep_alive(&self, record: &SandboxRecord) -> anyhow::Result<()> {
        let info = self.api.sandbox(&record.id).await?;
        let end = info
            .end_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let margin = chrono::Duration::from_std(KEEP_ALIVE_EVERY * 3).unwrap_or_default();
        if end.is_none_or(|end| end.with_timezone(&chrono::Utc) - chrono::Utc::now() < margin) {
            let minutes = record.timeout_minutes.unwrap_or(self.timeout_minutes).max(1);
            self.api.set_timeout(&record.id, minutes * 60).await?;
            tracing::debug!(sandbox = %record.id, minutes, "renewed the E2B timeout during a command");
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> anyhow::Result<bool> {
        match self.api.kill(id).await {
            Ok(()) => Ok(true),
            Err(E2bError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
