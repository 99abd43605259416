//! Daytona behind the provider-neutral [`Provider`] and [`Shell`] traits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_trait::async_trait;
use bytes::Bytes;

use super::api::{Daytona, DaytonaError, Toolbox};
use super::records::CreateSandbox;
use crate::sandbox::remote::{
    Created, ExecuteRequest, ExecuteResponse, Log, Provider, ProviderKind, SandboxRecord, Shell,
};

/// Daytona with the settings its sandboxes are created with.
pub struct DaytonaProvider {
    pub api: Daytona,
    /// `snapshot`, `autoStopInterval`, `autoDeleteInterval` (labels come per sandbox).
    pub template: CreateSandbox,
    /// How long to wait for a sandbox to start.
    pub start_timeout: Duration,
}

#[async_trait]
impl Shell for Toolbox {
    async fn execute(&self, request: &ExecuteRequest) -> anyhow::Result<ExecuteResponse> {
        Ok(Toolbox::execute(self, request).await?)
    }

    async fn upload_many(&self, files: &[(String, Bytes)]) -> anyhow::Result<()> {
        Ok(Toolbox::upload_many(self, files).await?)
    }

    async fn download(&self, path: &str) -> anyhow::Result<Option<Bytes>> {
        Ok(Toolbox::download(self, path).await?)
    }
}

#[async_trait]
impl Provider for DaytonaProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Daytona
    }

    fn name(&self) -> &'static str {
        "Daytona"
    }

    fn api_url(&self) -> &str {
        self.api.api_url()
    }

    async fn create(&self, labels: BTreeMap<String, String>) -> anyhow::Result<Created> {
        let request = CreateSandbox {
            labels,
            ..self.template.clone()
        };
        let sandbox = self.api.create_sandbox(&request).await?;
        let started = async { self.api.wait_started(&sandbox.id, self.start_timeout).await }.await;
        match started {
            Ok(s) => Ok(Created {
                id: s.id,
                endpoint: s.toolbox_proxy_url,
                access_token: None,
            }),
            Err(e) => {
                // It exists but will not start: do not leave it behind.
                if let Err(de) = self.api.delete_sandbox(&sandbox.id).await {
                    tracing::warn!("could not delete sandbox {}: {de}", sandbox.id);
                }
                Err(e)
            }
        }
    }

    fn shell(&self, record: &SandboxRecord) -> Arc<dyn Shell> {
        Arc::new(self.api.toolbox(&record.id, record.endpoint.as_deref()))
    }

    async fn exists(&self, id: &str) -> anyhow::Result<bool> {
        match self.api.sandbox(id).await {
            Ok(s) => Ok(!matches!(s.state.as_deref(), Some("destroyed" | "destroying"))),
            Err(DaytonaError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts a sandbox Daytona stopped (auto-stop) or archived.
    async fn wake(&self, record: &SandboxRecord, log: &Log<'_>) -> anyhow::Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let sandbox = self.api.sandbox(&record.id).await?;
            let state = sandbox.state.clone().unwrap_or_default();
            match state.as_str() {
                "started" => return Ok(false),
                "stopped" | "archived" => {
                    log(&format!("sandbox {} was {state}; starting it again", record.id));
                    self.api
                        .start_sandbox(&record.id)
                        .await
                        .with_context(|| format!("cannot start sandbox {}", record.id))?;
                    break;
                }
                // Already coming back: wait for it below.
                "starting" | "creating" | "restoring" | "pulling_snapshot" | "resuming" => break,
                // On its way down: let it settle, then start it.
                "stopping" | "archiving" if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => bail!(
                    "sandbox {} is {other}{}; it cannot run commands",
                    record.id,
                    sandbox
                        .error_reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ),
            }
        }
        self.api.wait_started(&record.id, Duration::from_secs(300)).await?;
        Ok(true)
    }

    async fn delete(&self, id: &str) -> anyhow::Result<bool> {
        match self.api.delete_sandbox(id).await {
            Ok(()) => Ok(true),
            Err(DaytonaError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
