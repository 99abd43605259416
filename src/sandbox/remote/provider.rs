//! The one seam between contextfs's sandbox logic and a sandbox service:
//! [`Provider`] (the control plane) and [`Shell`] (inside one sandbox).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::state::SandboxRecord;

/// Which service a sandbox lives at (recorded with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Records written before E2B existed have no provider: they are Daytona's.
    #[default]
    Daytona,
    E2b,
}

impl ProviderKind {
    /// How commands and agent ids name it: `daytona`, `e2b`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Daytona => "daytona",
            ProviderKind::E2b => "e2b",
        }
    }
}

/// A command to run in a sandbox's shell (the shape of Daytona's toolbox
/// `ExecuteRequest`, which contextfs uses for every provider).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteRequest {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    /// Seconds; absent or 0 means the provider's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// What a command did: its exit code and its standard output and error
/// combined. Daytona's daemons before the `exitCode` field sent `code`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteResponse {
    #[serde(default, rename = "exitCode", alias = "code")]
    pub exit_code: i64,
    #[serde(default)]
    pub result: String,
}

/// What a provider error means to the shared logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The API key was refused: nothing will work until it is fixed.
    Unauthorized,
    /// The sandbox (or file) does not exist (any more).
    NotFound,
    /// A command ran past its time limit and was killed.
    TimedOut,
    /// Anything else the provider answered (5xx, 429, refusals, no connection).
    Other,
}

/// The kind of the first provider error in `e`'s chain, if it has one.
pub fn error_kind(e: &anyhow::Error) -> Option<ErrorKind> {
    e.chain().find_map(|c| {
        c.downcast_ref::<crate::sandbox::daytona::DaytonaError>()
            .map(|d| d.kind())
            .or_else(|| c.downcast_ref::<crate::sandbox::e2b::E2bError>().map(|d| d.kind()))
    })
}

/// Inside one sandbox: run scripts, write and read files.
#[async_trait]
pub trait Shell: Send + Sync {
    /// Runs `command` in the sandbox's shell; a command past its `timeout`
    /// fails with an error of kind [`ErrorKind::TimedOut`].
    async fn execute(&self, request: &ExecuteRequest) -> anyhow::Result<ExecuteResponse>;
    /// Writes files (parents are created).
    async fn upload_many(&self, files: &[(String, Bytes)]) -> anyhow::Result<()>;
    /// Reads a regular file; `None` when it does not exist.
    async fn download(&self, path: &str) -> anyhow::Result<Option<Bytes>>;

    /// Writes one file.
    async fn upload(&self, path: &str, bytes: Bytes) -> anyhow::Result<()> {
        self.upload_many(&[(path.to_string(), bytes)]).await
    }

    /// Runs a script and fails unless it exits 0; returns its output.
    async fn run(&self, what: &str, script: String, envs: BTreeMap<String, String>) -> anyhow::Result<String> {
        use anyhow::Context;
        let response = self
            .execute(&ExecuteRequest {
                command: script,
                cwd: None,
                envs,
                timeout: Some(600),
            })
            .await
            .with_context(|| format!("cannot {what}"))?;
        if response.exit_code != 0 {
            anyhow::bail!(
                "cannot {what} (exit code {}): {}",
                response.exit_code,
                super::scripts::tail(&response.result, 20)
            );
        }
        Ok(response.result)
    }
}

/// A sandbox a provider just made.
pub struct Created {
    pub id: String,
    /// Provider-specific ways in, kept in the record (Daytona's
    /// `toolboxProxyUrl`; E2B's envd URL and access token).
    pub endpoint: Option<String>,
    pub access_token: Option<String>,
}

/// Where progress lines go (a named type, so `async_trait` keeps `&str` higher-ranked).
pub type Log<'a> = dyn Fn(&str) + Sync + 'a;

/// How often [`Provider::keep_alive`] runs while a command runs.
pub const KEEP_ALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A sandbox service's control plane.
#[async_trait]
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;
    /// For messages: "Daytona", "E2B".
    fn name(&self) -> &'static str;
    /// The API this provider talks to (kept in each record).
    fn api_url(&self) -> &str;
    /// Creates a sandbox carrying `labels` (metadata) and waits until it runs.
    async fn create(&self, labels: BTreeMap<String, String>) -> anyhow::Result<Created>;
    /// The shell of a sandbox this machine created.
    fn shell(&self, record: &SandboxRecord) -> Arc<dyn Shell>;
    /// Whether the sandbox still exists (`Ok(false)`: the provider says it is gone).
    async fn exists(&self, id: &str) -> anyhow::Result<bool>;
    /// Gets a sandbox ready for a command: starts a stopped one, extends a
    /// timeout. `Ok(true)` when it had stopped, so its processes (the mount)
    /// are gone; an error when it no longer exists.
    async fn wake(&self, record: &SandboxRecord, log: &Log<'_>) -> anyhow::Result<bool>;
    /// Called every [`KEEP_ALIVE_EVERY`] while a command runs: a provider
    /// that kills sandboxes on a timer (E2B) renews it when it would run
    /// out before the next call. Nothing by default.
    async fn keep_alive(&self, record: &SandboxRecord) -> anyhow::Result<()> {
        let _ = record;
        Ok(())
    }
    /// Deletes the sandbox; `Ok(false)` when it was already gone.
    async fn delete(&self, id: &str) -> anyhow::Result<bool>;
}
