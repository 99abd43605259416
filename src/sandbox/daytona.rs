//! Daytona sandboxes with a contextfs workspace inside.
//!
//! [`Daytona`] is a small client for the parts of Daytona's REST API that
//! contextfs needs, shaped after Daytona's published OpenAPI (the generated
//! `libs/api-client` models and the toolbox daemon's swagger):
//!
//! - `POST {api}/sandbox` with a `CreateSandbox` body (`snapshot`, `labels`,
//!   `env`, `autoStopInterval`, `autoDeleteInterval`) → `Sandbox`;
//! - `GET {api}/sandbox/{id}` → `Sandbox` (`id`, `state`, `toolboxProxyUrl`, …);
//! - `DELETE {api}/sandbox/{id}`;
//! - the toolbox at `{toolboxProxyUrl}/{id}`: `POST /process/execute` with
//!   `{command, cwd, envs, timeout}` → `{exitCode, result}` (the command is fed
//!   to the sandbox's shell), `POST /files/upload?path=` (multipart field
//!   `file`), `GET /files/download?path=`.
//!
//! Every call carries `Authorization: Bearer <DAYTONA_API_KEY>`.
//!
//! On top of it, [`create`], [`exec`] and [`destroy`] run the life of a
//! contextfs sandbox: a project token, a static `contextfs` binary uploaded
//! into the sandbox, the project mounted at `/workspace` with the skills at
//! `/skills` — or, where FUSE is not available, [`sync`] mode, which copies
//! the tree in before each command and commits what changed afterwards.

pub mod sync;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::api::Access;
use crate::client::{Client, ClientError};

/// Daytona's hosted API; self-hosted installations set `DAYTONA_API_URL`.
pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";
/// Where the project appears inside the sandbox.
pub const WORKSPACE: &str = "/workspace";
/// Where the published skills appear inside the sandbox (read-only).
pub const SKILLS: &str = "/skills";
/// Where the mount inside the sandbox keeps its journal, logs and socket.
pub const SANDBOX_STATE: &str = "/var/lib/contextfs";
/// The mount's blob cache inside the sandbox.
pub const SANDBOX_CACHE: &str = "/var/cache/contextfs";
/// The label every contextfs sandbox carries (its value is the project).
pub const PROJECT_LABEL: &str = "contextfs.project";

/// Characters left as they are in a URL path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// What went wrong talking to Daytona, worded as what to do about it.
#[derive(Debug, Error)]
pub enum DaytonaError {
    #[error("no Daytona API key: set DAYTONA_API_KEY (or pass --api-key); keys are made in the Daytona dashboard")]
    NoKey,
    #[error("Daytona refused the API key (HTTP {status}: {message}); check DAYTONA_API_KEY")]
    Unauthorized { status: u16, message: String },
    #[error("Daytona is failing (HTTP {status}: {message}); retry")]
    Server { status: u16, message: String },
    #[error("cannot reach Daytona at {url}: {detail}; check DAYTONA_API_URL and the network")]
    Unreachable { url: String, detail: String },
    #[error("Daytona: {message} (HTTP 404, {what})")]
    NotFound { what: String, message: String },
    #[error("Daytona rejected the request for {what} (HTTP {status}: {message})")]
    Rejected { what: String, status: u16, message: String },
    #[error("unexpected answer from Daytona at {url}: {detail}")]
    Protocol { url: String, detail: String },
}

impl DaytonaError {
    pub fn status(&self) -> Option<u16> {
        match self {
            DaytonaError::Unauthorized { status, .. }
            | DaytonaError::Server { status, .. }
            | DaytonaError::Rejected { status, .. } => Some(*status),
            DaytonaError::NotFound { .. } => Some(404),
            _ => None,
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, DaytonaError::Server { .. } | DaytonaError::Unreachable { .. })
    }
}

pub type DaytonaResult<T> = Result<T, DaytonaError>;

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

/// `ExecuteRequest` of the toolbox API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteRequest {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    /// Seconds; absent or 0 means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// `ExecuteResponse` of the toolbox API: the exit code and the combined
/// standard output and error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteResponse {
    #[serde(default, rename = "exitCode")]
    pub exit_code: i64,
    #[serde(default)]
    pub result: String,
}

/// A client for Daytona's REST API.
#[derive(Clone)]
pub struct Daytona {
    http: reqwest::Client,
    api: String,
    key: String,
}

impl Daytona {
    pub fn new(api_url: &str, key: &str) -> DaytonaResult<Self> {
        let api = api_url.trim().trim_end_matches('/').to_string();
        if !(api.starts_with("http://") || api.starts_with("https://")) {
            return Err(DaytonaError::Protocol {
                url: api,
                detail: "DAYTONA_API_URL must start with http:// or https://".into(),
            });
        }
        if key.trim().is_empty() {
            return Err(DaytonaError::NoKey);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DaytonaError::Protocol {
                url: api.clone(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            http,
            api,
            key: key.trim().to_string(),
        })
    }

    pub fn api_url(&self) -> &str {
        &self.api
    }

    fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.key)
    }

    async fn send(&self, what: &str, builder: RequestBuilder) -> DaytonaResult<Response> {
        let response = builder.send().await.map_err(|e| DaytonaError::Unreachable {
            url: e.url().map(|u| u.to_string()).unwrap_or_else(|| self.api.clone()),
            detail: if e.is_timeout() {
                "no answer in time".to_string()
            } else {
                cause(&e)
            },
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = error_message(&text, status);
        Err(match status.as_u16() {
            401 | 403 => DaytonaError::Unauthorized {
                status: status.as_u16(),
                message,
            },
            404 => DaytonaError::NotFound {
                what: what.to_string(),
                message,
            },
            s if s >= 500 => DaytonaError::Server { status: s, message },
            s => DaytonaError::Rejected {
                what: what.to_string(),
                status: s,
                message,
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, what: &str, builder: RequestBuilder) -> DaytonaResult<T> {
        let response = self.send(what, builder).await?;
        let url = response.url().to_string();
        let bytes = response.bytes().await.map_err(|e| DaytonaError::Unreachable {
            url: url.clone(),
            detail: describe(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| DaytonaError::Protocol {
            url,
            detail: format!(
                "{e}: {}",
                String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>()
            ),
        })
    }

    fn sandbox_url(&self, id: &str) -> String {
        format!("{}/sandbox/{}", self.api, utf8_percent_encode(id, SEGMENT))
    }

    /// `POST /sandbox`.
    pub async fn create_sandbox(&self, request: &CreateSandbox) -> DaytonaResult<Sandbox> {
        let url = format!("{}/sandbox", self.api);
        self.json(
            "sandbox creation",
            self.request(Method::POST, &url)
                .json(request)
                .timeout(Duration::from_secs(300)),
        )
        .await
    }

    /// `GET /sandbox/{id}`.
    pub async fn sandbox(&self, id: &str) -> DaytonaResult<Sandbox> {
        self.json(
            &format!("sandbox {id}"),
            self.request(Method::GET, &self.sandbox_url(id))
                .timeout(Duration::from_secs(60)),
        )
        .await
    }

    /// `DELETE /sandbox/{id}`.
    pub async fn delete_sandbox(&self, id: &str) -> DaytonaResult<()> {
        self.send(
            &format!("sandbox {id}"),
            self.request(Method::DELETE, &self.sandbox_url(id))
                .timeout(Duration::from_secs(120)),
        )
        .await?;
        Ok(())
    }

    /// `POST /sandbox/{id}/start`: starts a stopped (or archived) sandbox.
    pub async fn start_sandbox(&self, id: &str) -> DaytonaResult<()> {
        self.send(
            &format!("sandbox {id}"),
            self.request(Method::POST, &format!("{}/start", self.sandbox_url(id)))
                .timeout(Duration::from_secs(300)),
        )
        .await?;
        Ok(())
    }

    /// Polls `GET /sandbox/{id}` until the sandbox is `started`. Passing
    /// failures (5xx, connection resets) are retried until the deadline.
    pub async fn wait_started(&self, id: &str, timeout: Duration) -> anyhow::Result<Sandbox> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.sandbox(id).await {
                Ok(sandbox) => match sandbox.state.as_deref() {
                    Some("started") => return Ok(sandbox),
                    Some(state @ ("error" | "build_failed" | "destroyed" | "destroying")) => bail!(
                        "sandbox {id} did not start: its state is {state}{}",
                        sandbox
                            .error_reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ),
                    state => {
                        if Instant::now() > deadline {
                            bail!(
                                "sandbox {id} was not started after {timeout:?} (state {})",
                                state.unwrap_or("unknown")
                            );
                        }
                    }
                },
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::warn!("waiting for sandbox {id}: {e}");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// The toolbox API of a sandbox.
    pub fn toolbox(&self, sandbox_id: &str, toolbox_proxy_url: Option<&str>) -> Toolbox {
        let id = utf8_percent_encode(sandbox_id, SEGMENT).to_string();
        let base = match toolbox_proxy_url.map(str::trim).filter(|u| !u.is_empty()) {
            Some(proxy) => format!("{}/{id}", proxy.trim_end_matches('/')),
            // Older installations proxy the toolbox through the API itself.
            None => format!("{}/toolbox/{id}/toolbox", self.api),
        };
        Toolbox {
            daytona: self.clone(),
            sandbox: sandbox_id.to_string(),
            base,
        }
    }
}

/// The toolbox API of one sandbox (`{toolboxProxyUrl}/{sandboxId}`).
#[derive(Clone)]
pub struct Toolbox {
    daytona: Daytona,
    sandbox: String,
    base: String,
}

impl Toolbox {
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /process/execute`: runs `command` in the sandbox's shell.
    pub async fn execute(&self, request: &ExecuteRequest) -> DaytonaResult<ExecuteResponse> {
        let url = format!("{}/process/execute", self.base);
        let request = &ExecuteRequest {
            command: portable_command(&request.command),
            ..request.clone()
        };
        // The HTTP wait covers the command's own limit, or an hour without one.
        let wait = Duration::from_secs(request.timeout.filter(|t| *t > 0).unwrap_or(3600) + 60);
        self.daytona
            .json(
                &format!("sandbox {} (process/execute)", self.sandbox),
                self.daytona.request(Method::POST, &url).json(request).timeout(wait),
            )
            .await
    }

    /// Runs a script and fails unless it exits 0; returns its output.
    pub async fn run(&self, what: &str, script: String, envs: BTreeMap<String, String>) -> anyhow::Result<String> {
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
            bail!(
                "cannot {what} (exit code {}): {}",
                response.exit_code,
                tail(&response.result, 20)
            );
        }
        Ok(response.result)
    }

    /// `POST /files/upload?path=P` with the bytes as the multipart field `file`.
    pub async fn upload(&self, path: &str, bytes: Bytes) -> DaytonaResult<()> {
        let url = format!("{}/files/upload", self.base);
        let boundary = format!("contextfs-{}", hex::encode(rand::random::<[u8; 12]>()));
        let name = path
            .rsplit('/')
            .next()
            .unwrap_or("file")
            .replace(['"', '\r', '\n'], "_");
        let mut body = Vec::with_capacity(bytes.len() + 256);
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .expect("write to a Vec");
        body.extend_from_slice(&bytes);
        write!(body, "\r\n--{boundary}--\r\n").expect("write to a Vec");
        self.daytona
            .send(
                &format!("sandbox {} (files/upload {path})", self.sandbox),
                self.daytona
                    .request(Method::POST, &url)
                    .query(&[("path", path)])
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(body)
                    .timeout(Duration::from_secs(600)),
            )
            .await?;
        Ok(())
    }

    /// `GET /files/download?path=P`; `None` when the file does not exist.
    pub async fn download(&self, path: &str) -> DaytonaResult<Option<Bytes>> {
        let url = format!("{}/files/download", self.base);
        let result = self
            .daytona
            .send(
                &format!("file {path} in sandbox {}", self.sandbox),
                self.daytona
                    .request(Method::GET, &url)
                    .query(&[("path", path)])
                    .timeout(Duration::from_secs(600)),
            )
            .await;
        let response = match result {
            Ok(r) => r,
            Err(DaytonaError::NotFound { .. }) => return Ok(None),
            // The toolbox answers a missing file with 400 on some versions.
            Err(DaytonaError::Rejected {
                status: 400, message, ..
            }) if message.contains("no such file") || message.contains("not exist") => return Ok(None),
            Err(e) => return Err(e),
        };
        let url = response.url().to_string();
        response.bytes().await.map(Some).map_err(|e| DaytonaError::Unreachable {
            url,
            detail: describe(&e),
        })
    }
}

/// Toolbox daemons before March 2026 split the command into words and ran it
/// without a shell; newer ones feed it to a shell on standard input. What
/// Daytona's SDKs sent to the old ones, `sh -c "echo B64 | base64 -d | sh"`,
/// runs the same script on both. (Scripts too long for one argument go as
/// they are: only newer daemons run those.)
fn portable_command(script: &str) -> String {
    use base64::Engine;
    if script.len() > 64 * 1024 {
        return script.to_string();
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(script);
    format!("sh -c \"echo '{encoded}' | base64 -d | sh\"")
}

/// Daytona's errors are JSON with a `message` (a string, or a list of them).
fn error_message(text: &str, status: StatusCode) -> String {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        match value.get("message") {
            Some(serde_json::Value::String(m)) if !m.is_empty() => return m.clone(),
            Some(serde_json::Value::Array(items)) if !items.is_empty() => {
                return items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            _ => {}
        }
        if let Some(e) = value.get("error").and_then(|e| e.as_str()) {
            return e.to_string();
        }
    }
    let text = text.trim();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_string()
    } else {
        text.chars().take(200).collect()
    }
}

/// reqwest's Display hides the cause; walk the chain.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The causes of a transport error, without reqwest's "error sending request for url (...)".
fn cause(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// The last `lines` lines of a command's output.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------
// What this machine remembers about each sandbox
// ---------------------------------------------------------------------------

/// How the workspace reaches the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `contextfs mount` runs inside the sandbox (FUSE).
    Mount,
    /// No FUSE: this machine copies the tree in before each command and
    /// commits what changed after it.
    Sync,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Mount => "mount",
            Mode::Sync => "sync",
        }
    }
}

/// Which mode `create` should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeChoice {
    /// Mount; fall back to sync when the mount fails.
    Auto,
    Mount,
    Sync,
}

/// A sandbox this machine created, kept in `STATE/daytona/<id>.json` (0600:
/// it holds the project token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub api_url: String,
    pub toolbox_proxy_url: Option<String>,
    pub project: String,
    /// The contextfs server as this machine reaches it.
    pub server: String,
    /// The contextfs server as the sandbox reaches it (mount mode).
    pub sandbox_server: String,
    /// The project token the sandbox (and sync mode) uses.
    pub token: String,
    pub token_id: String,
    pub mode: Mode,
    /// The contextfs binary inside the sandbox.
    pub binary: String,
    pub created_at: String,
}

/// `STATE/daytona`, beside the mounts' journals.
pub fn state_dir() -> PathBuf {
    crate::mount::state_root().join("daytona")
}

/// A sandbox id as a file name (ids are UUIDs; anything else is hex-encoded).
fn file_stem(id: &str) -> String {
    if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        id.to_string()
    } else {
        format!("x{}", hex::encode(id.as_bytes()))
    }
}

impl SandboxRecord {
    pub fn path(id: &str) -> PathBuf {
        state_dir().join(format!("{}.json", file_stem(id)))
    }

    pub fn manifest_path(id: &str) -> PathBuf {
        state_dir().join(format!("{}.manifest.json", file_stem(id)))
    }

    pub fn lock_path(id: &str) -> PathBuf {
        state_dir().join(format!("{}.lock", file_stem(id)))
    }

    pub fn load(id: &str) -> anyhow::Result<Option<SandboxRecord>> {
        let path = Self::path(id);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Every sandbox this machine knows, oldest first.
    pub fn all() -> anyhow::Result<Vec<SandboxRecord>> {
        let dir = state_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !name.ends_with(".json") || name.ends_with(".manifest.json") {
                continue;
            }
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(record) = serde_json::from_slice::<SandboxRecord>(&bytes) {
                    records.push(record);
                }
            }
        }
        records.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(records)
    }

    pub fn save(&self) -> anyhow::Result<()> {
        write_private(&Self::path(&self.id), &serde_json::to_vec_pretty(self)?)
    }

    /// Forgets the sandbox (record, manifest, lock).
    pub fn forget(id: &str) {
        for path in [Self::path(id), Self::manifest_path(id), Self::lock_path(id)] {
            let _ = std::fs::remove_file(path);
        }
    }

    pub fn toolbox(&self, daytona: &Daytona) -> Toolbox {
        daytona.toolbox(&self.id, self.toolbox_proxy_url.as_deref())
    }
}

/// Writes a file with mode 0600 atomically (temp file, fsync, rename).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().expect("state files live in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// An exclusive lock on one sandbox's local state, held while a sync-mode
/// command runs so two commands never interleave their manifests.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    pub fn acquire(id: &str) -> anyhow::Result<StateLock> {
        let path = SandboxRecord::lock_path(id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; the lock goes with the file.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot lock {}", path.display()));
        }
        Ok(StateLock { _file: file })
    }
}

// ---------------------------------------------------------------------------
// Scripts run inside the sandbox
// ---------------------------------------------------------------------------

/// Sets `$S` to nothing as root, to `sudo -n` (keeping the variables the
/// mount needs) otherwise, and exports where the mount keeps its state.
fn privileged_prelude() -> String {
    format!(
        "export XDG_STATE_HOME={SANDBOX_STATE} CONTEXTFS_CACHE_DIR={SANDBOX_CACHE}\n\
         if [ \"$(id -u)\" = 0 ]; then S=; \
         elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
         S='sudo -n --preserve-env=CONTEXTFS_TOKEN,XDG_STATE_HOME,CONTEXTFS_CACHE_DIR'; \
         else S=none; fi\n"
    )
}

/// Installs the uploaded binary and checks it runs; prints `bin=PATH`.
fn install_script(upload: &str) -> String {
    format!(
        "set -e\n{prelude}\
         if [ \"$S\" = none ]; then bin=\"$HOME/.local/bin/contextfs\"; mkdir -p \"$HOME/.local/bin\"; S=; \
         else bin=/usr/local/bin/contextfs; $S mkdir -p /usr/local/bin; fi\n\
         $S cp {upload} \"$bin\"\n$S chmod 755 \"$bin\"\nrm -f {upload}\n\
         if ! out=$(\"$bin\" --version 2>&1); then echo \"the uploaded contextfs does not run here: $out\"; exit 3; fi\n\
         $S mkdir -p {WORKSPACE} {SKILLS}\n\
         if [ -n \"$S\" ]; then $S chown \"$(id -u):$(id -g)\" {WORKSPACE} {SKILLS} || true; fi\n\
         echo \"bin=$bin\"\n",
        prelude = privileged_prelude(),
        upload = shell_quote(upload),
    )
}

/// Mounts the project at /workspace (root or sudo; the token comes in the
/// request's environment, never on a command line) and points /skills at
/// the mount's read-only skills folder.
fn mount_script(bin: &str, project: &str, server: &str, agent_id: &str) -> String {
    format!(
        "{prelude}\
         if [ \"$S\" = none ]; then echo 'mounting needs root or password-less sudo in the sandbox'; exit 10; fi\n\
         if [ ! -e /dev/fuse ]; then echo 'this sandbox has no /dev/fuse'; exit 10; fi\n\
         $S mkdir -p {SANDBOX_STATE} {SANDBOX_CACHE} || exit 11\n\
         grep -qs ' {WORKSPACE} ' /proc/mounts || $S mkdir -p {WORKSPACE} || exit 11\n\
         $S {bin} mount {WORKSPACE} --project {project} --server {server} --agent-id {agent} --daemon --allow-other 2>&1 || exit 11\n\
         if [ -d {SKILLS} ] && [ ! -L {SKILLS} ]; then $S rmdir {SKILLS} 2>/dev/null || \
         echo 'note: {SKILLS} is a non-empty folder of the image; the published skills are at {WORKSPACE}/skills'; fi\n\
         if [ ! -e {SKILLS} ] || [ -L {SKILLS} ]; then $S ln -sfn {WORKSPACE}/skills {SKILLS}; fi\n",
        prelude = privileged_prelude(),
        bin = shell_quote(bin),
        project = shell_quote(project),
        server = shell_quote(server),
        agent = shell_quote(agent_id),
    )
}

/// Commits what is pending and unmounts (prints the per-file report).
fn umount_script(bin: &str) -> String {
    format!(
        "{prelude}\
         if ! grep -qs ' {WORKSPACE} fuse' /proc/mounts; then echo 'nothing mounted at {WORKSPACE}'; exit 0; fi\n\
         [ \"$S\" = none ] && S=\n\
         $S {bin} umount {WORKSPACE} 2>&1\n",
        prelude = privileged_prelude(),
        bin = shell_quote(bin),
    )
}

/// True in the sandbox while the mount at /workspace answers (a killed
/// mount process leaves its entry in /proc/mounts, but statfs fails).
const MOUNT_ALIVE: &str = "{ grep -qs ' /workspace fuse' /proc/mounts && stat -f /workspace >/dev/null 2>&1; }";

/// Printed instead of running the command when the mount is gone.
const NOT_MOUNTED: &str = "__contextfs_workspace_not_mounted__";

/// The user's command for a mount-mode sandbox: refuse to run when the mount
/// died (writes would land in the bare folder underneath and be lost), and
/// keep the command off the shell's standard input (the toolbox feeds the
/// script through it).
fn guarded_command(command: &str) -> String {
    format!(
        "if ! {MOUNT_ALIVE}; then printf '%s' '{NOT_MOUNTED}'; exit 125; fi\n\
         (\n{command}\n) </dev/null\n"
    )
}

// ---------------------------------------------------------------------------
// create / exec / destroy
// ---------------------------------------------------------------------------

pub struct CreateOptions {
    pub project: String,
    /// The contextfs server as this machine reaches it.
    pub server: String,
    /// An admin token: it makes the project token the sandbox gets.
    pub admin_token: String,
    /// The server as the sandbox reaches it [default: `server`].
    pub sandbox_server: Option<String>,
    pub snapshot: Option<String>,
    pub auto_stop: Option<i64>,
    pub auto_delete: Option<i64>,
    pub labels: BTreeMap<String, String>,
    /// A statically linked contextfs for x86_64 Linux.
    pub binary: PathBuf,
    pub mode: ModeChoice,
    pub start_timeout: Duration,
}

/// Explains a contextfs server error for the sandbox commands.
fn server_error(e: ClientError, server: &str) -> anyhow::Error {
    let hint = match &e {
        ClientError::Unreachable { .. } => {
            format!("is `contextfs serve` running at {server}? Set --server / CONTEXTFS_SERVER")
        }
        ClientError::Api { status, .. } if status.as_u16() == 401 => {
            "check --token / CONTEXTFS_TOKEN: creating a sandbox needs the admin token (the server's DATA/admin-token)"
                .to_string()
        }
        ClientError::Api { status, .. } if status.as_u16() == 403 => {
            "creating a sandbox needs the admin token: it makes a project token for the sandbox".to_string()
        }
        ClientError::Api { status, .. } if status.as_u16() == 404 => {
            "create the project first: `contextfs project create NAME`".to_string()
        }
        _ => String::new(),
    };
    if hint.is_empty() {
        anyhow!(e)
    } else {
        anyhow!("{e}\nhint: {hint}")
    }
}

/// Whether an ELF file has no program interpreter (is statically linked).
pub fn is_static_elf(path: &Path) -> anyhow::Result<bool> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = || anyhow!("{} is not an x86_64 Linux executable", path.display());
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes")) as usize;
    if u16_at(18) != 62 {
        return Err(bad());
    }
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if at + 4 > bytes.len() {
            return Err(bad());
        }
        // PT_INTERP: a dynamic loader is needed.
        if u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Creates a sandbox with the project inside. On any failure after the
/// sandbox exists, it is deleted again and the token revoked.
pub async fn create(
    daytona: &Daytona,
    opts: CreateOptions,
    log: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<SandboxRecord> {
    if !is_static_elf(&opts.binary)? {
        bail!(
            "{} is dynamically linked; the sandbox needs a static contextfs: build one with scripts/static-build \
             and pass its path with --binary (or CONTEXTFS_STATIC_BINARY)",
            opts.binary.display()
        );
    }
    let binary =
        Bytes::from(std::fs::read(&opts.binary).with_context(|| format!("cannot read {}", opts.binary.display()))?);
    let admin = Client::new(&opts.server, Some(opts.admin_token.clone())).map_err(|e| server_error(e, &opts.server))?;
    let created = admin
        .create_token(&opts.project, Access::ReadWrite, Some("daytona sandbox".to_string()))
        .await
        .map_err(|e| server_error(e, &opts.server))
        .with_context(|| format!("cannot make a token for project {}", opts.project))?;

    let mut labels = opts.labels.clone();
    labels.insert(PROJECT_LABEL.to_string(), opts.project.clone());
    let request = CreateSandbox {
        snapshot: opts.snapshot.clone(),
        labels,
        auto_stop_interval: opts.auto_stop,
        auto_delete_interval: opts.auto_delete,
        ..CreateSandbox::default()
    };
    let sandbox = match daytona.create_sandbox(&request).await {
        Ok(s) => s,
        Err(e) => {
            revoke_quietly(&admin, &created.info.id).await;
            return Err(e).context("cannot create the sandbox");
        }
    };
    log(&format!(
        "created sandbox {} (state {}); its token for project {} is {}",
        sandbox.id,
        sandbox.state.as_deref().unwrap_or("unknown"),
        created.info.project,
        created.info.id
    ));

    let setup = async {
        let sandbox = daytona.wait_started(&sandbox.id, opts.start_timeout).await?;
        let toolbox = daytona.toolbox(&sandbox.id, sandbox.toolbox_proxy_url.as_deref());
        let upload = format!("/tmp/contextfs-upload-{}", hex::encode(rand::random::<[u8; 4]>()));
        log(&format!(
            "uploading {} ({} MB)",
            opts.binary.display(),
            binary.len() / (1 << 20)
        ));
        toolbox
            .upload(&upload, binary.clone())
            .await
            .context("cannot upload contextfs into the sandbox")?;
        let out = toolbox
            .run(
                "install contextfs in the sandbox",
                install_script(&upload),
                BTreeMap::new(),
            )
            .await?;
        let bin = out
            .lines()
            .find_map(|l| l.strip_prefix("bin="))
            .ok_or_else(|| anyhow!("the install script printed no path: {}", tail(&out, 5)))?
            .to_string();
        let mut record = SandboxRecord {
            id: sandbox.id.clone(),
            api_url: daytona.api_url().to_string(),
            toolbox_proxy_url: sandbox.toolbox_proxy_url.clone(),
            project: opts.project.clone(),
            server: opts.server.clone(),
            sandbox_server: opts.sandbox_server.clone().unwrap_or_else(|| opts.server.clone()),
            token: created.token.clone(),
            token_id: created.info.id.clone(),
            mode: Mode::Mount,
            binary: bin,
            created_at: chrono::Utc::now().to_rfc3339(),
        };
        let mounted = match opts.mode {
            ModeChoice::Sync => false,
            ModeChoice::Auto | ModeChoice::Mount => match mount_in(&toolbox, &record).await {
                Ok(output) => {
                    for line in output.lines().filter(|l| l.starts_with("note:")) {
                        log(line);
                    }
                    log(&format!(
                        "mounted project {} at {WORKSPACE}, skills at {SKILLS}",
                        opts.project
                    ));
                    true
                }
                Err(e) if opts.mode == ModeChoice::Mount || from_daytona(&e) => return Err(e),
                Err(e) => {
                    log(&format!(
                        "{} — using sync mode: the tree is copied in before each `exec` and changes are \
                             committed after it",
                        format!("{e:#}").replace('\n', " / ")
                    ));
                    false
                }
            },
        };
        if !mounted {
            record.mode = Mode::Sync;
            let _lock = StateLock::acquire(&record.id)?;
            let report = sync::pull(&record, &toolbox, &mut sync::Manifest::default()).await?;
            log(&format!(
                "copied {} files and {} skill files into the sandbox",
                report.uploaded, report.skills
            ));
        }
        record.save()?;
        Ok::<_, anyhow::Error>(record)
    };
    match setup.await {
        Ok(record) => Ok(record),
        Err(e) => {
            log(&format!("setting up sandbox {} failed; deleting it", sandbox.id));
            if let Err(de) = daytona.delete_sandbox(&sandbox.id).await {
                log(&format!("could not delete sandbox {}: {de}", sandbox.id));
            }
            revoke_quietly(&admin, &created.info.id).await;
            SandboxRecord::forget(&sandbox.id);
            Err(e)
        }
    }
}

async fn revoke_quietly(admin: &Client, token_id: &str) {
    if let Err(e) = admin.revoke_token(token_id).await {
        tracing::warn!("could not revoke token {token_id}: {e}");
    }
}

/// Mounts the workspace in a running sandbox (again).
async fn mount_in(toolbox: &Toolbox, record: &SandboxRecord) -> anyhow::Result<String> {
    let envs = BTreeMap::from([("CONTEXTFS_TOKEN".to_string(), record.token.clone())]);
    let response = toolbox
        .execute(&ExecuteRequest {
            command: mount_script(
                &record.binary,
                &record.project,
                &record.sandbox_server,
                &format!("daytona-{}", record.id),
            ),
            cwd: None,
            envs,
            timeout: Some(300),
        })
        .await
        .context("cannot run the mount in the sandbox")?;
    if response.exit_code != 0 {
        bail!("the mount failed in the sandbox: {}", tail(&response.result, 20));
    }
    Ok(response.result)
}

/// Brings back a sandbox Daytona stopped (auto-stop) or archived, and in
/// mount mode mounts the workspace again (the new mount replays whatever
/// the old one left in its journal). `Ok(false)` when it was running.
pub async fn revive(daytona: &Daytona, record: &SandboxRecord, log: &(dyn Fn(&str) + Sync)) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let sandbox = daytona.sandbox(&record.id).await?;
        let state = sandbox.state.clone().unwrap_or_default();
        match state.as_str() {
            "started" => return Ok(false),
            "stopped" | "archived" => {
                log(&format!("sandbox {} was {state}; starting it again", record.id));
                daytona
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
    daytona.wait_started(&record.id, Duration::from_secs(300)).await?;
    if record.mode == Mode::Mount {
        mount_in(&record.toolbox(daytona), record).await?;
        log(&format!("mounted project {} at {WORKSPACE} again", record.project));
    }
    Ok(true)
}

/// Whether an error came from Daytona (not from the contextfs server or
/// this machine): then the sandbox may just be stopped.
fn from_daytona(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<DaytonaError>()
            .is_some_and(|d| !matches!(d, DaytonaError::Unauthorized { .. } | DaytonaError::NoKey))
    })
}

pub struct ExecOptions {
    /// Working directory [default: /workspace].
    pub cwd: Option<String>,
    pub envs: BTreeMap<String, String>,
    /// Seconds before the sandbox kills the command.
    pub timeout: Option<u64>,
}

pub struct ExecOutcome {
    pub exit_code: i64,
    pub output: String,
    /// Sync mode: what went in and what was committed.
    pub sync: Option<sync::SyncReport>,
}

/// Runs a shell command in the sandbox. In sync mode the tree is brought up
/// to date first and changes are committed afterwards. A sandbox Daytona
/// stopped meanwhile is started again (and remounted) first; so is a mount
/// that died.
pub async fn exec(
    daytona: &Daytona,
    record: &SandboxRecord,
    command: &str,
    opts: ExecOptions,
    log: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<ExecOutcome> {
    let toolbox = record.toolbox(daytona);
    let request = |command: String| ExecuteRequest {
        command,
        cwd: Some(opts.cwd.clone().unwrap_or_else(|| WORKSPACE.to_string())),
        envs: opts.envs.clone(),
        timeout: opts.timeout,
    };
    match record.mode {
        Mode::Mount => {
            let run = || async {
                toolbox
                    .execute(&request(guarded_command(command)))
                    .await
                    .with_context(|| format!("cannot run the command in sandbox {}", record.id))
            };
            // A refused call never ran the command, so it is safe to retry.
            let mut response = match run().await {
                Err(e) if from_daytona(&e) && revive(daytona, record, log).await? => run().await?,
                other => other?,
            };
            if response.exit_code == 125 && response.result.starts_with(NOT_MOUNTED) {
                log(&format!(
                    "the contextfs mount in sandbox {} was not running; mounting it again",
                    record.id
                ));
                mount_in(&toolbox, record).await.with_context(|| {
                    format!(
                        "the command was not run; the mount's log is under {SANDBOX_STATE}/contextfs/logs in the sandbox"
                    )
                })?;
                response = run().await?;
                if response.exit_code == 125 && response.result.starts_with(NOT_MOUNTED) {
                    bail!(
                        "the contextfs mount at {WORKSPACE} in sandbox {} does not stay up; the command was not run",
                        record.id
                    );
                }
            }
            Ok(ExecOutcome {
                exit_code: response.exit_code,
                output: response.result,
                sync: None,
            })
        }
        Mode::Sync => {
            let _lock = StateLock::acquire(&record.id)?;
            let mut manifest = sync::Manifest::load(&record.id)?;
            // The pull is the first call: if Daytona refuses it, nothing ran yet.
            let pulled = match sync::pull(record, &toolbox, &mut manifest).await {
                Err(e) if from_daytona(&e) && revive(daytona, record, log).await? => {
                    sync::pull(record, &toolbox, &mut manifest).await?
                }
                other => other?,
            };
            let marker = format!("__contextfs_scan_{}__", hex::encode(rand::random::<[u8; 8]>()));
            let script = sync::command_then_scan(command, &marker, &record.binary);
            let response = toolbox
                .execute(&request(script))
                .await
                .with_context(|| format!("cannot run the command in sandbox {}", record.id))?;
            let (output, scan) = match response.result.rfind(&marker) {
                Some(at) => (
                    response.result[..at].to_string(),
                    sync::parse_scan(&response.result[at + marker.len()..]).ok(),
                ),
                None => (response.result.clone(), None),
            };
            let mut report = sync::push(record, &toolbox, &mut manifest, scan).await?;
            report.pulled = pulled;
            Ok(ExecOutcome {
                exit_code: response.exit_code,
                output,
                sync: Some(report),
            })
        }
    }
}

pub struct DestroyOutcome {
    /// The mount's umount report, or the final sync's outcomes.
    pub flushed: Vec<String>,
    pub token_revoked: Option<Result<String, String>>,
}

/// Flushes (umount in the sandbox, or a last sync) and deletes the sandbox;
/// then revokes its project token when `admin` may. Refuses to delete when
/// the flush left changes behind, unless `force`.
pub async fn destroy(
    daytona: &Daytona,
    id: &str,
    record: Option<&SandboxRecord>,
    admin: Option<&Client>,
    force: bool,
    log: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<DestroyOutcome> {
    let mut flushed = Vec::new();
    // Deleted already (Daytona's auto-delete, or elsewhere): nothing to flush.
    let gone = match daytona.sandbox(id).await {
        Err(DaytonaError::NotFound { .. }) => true,
        Err(DaytonaError::Unauthorized { status, message }) => {
            return Err(DaytonaError::Unauthorized { status, message }.into())
        }
        _ => false,
    };
    let flush: anyhow::Result<()> = async {
        if gone {
            log(&format!(
                "sandbox {id} no longer exists at Daytona; whatever it had not committed went with it"
            ));
            return Ok(());
        }
        if let Some(r) = record {
            // A stopped sandbox still holds what its mount had not committed.
            revive(daytona, r, log).await?;
        }
        match record {
            Some(r) if r.mode == Mode::Sync => {
                let _lock = StateLock::acquire(id)?;
                let toolbox = r.toolbox(daytona);
                let mut manifest = sync::Manifest::load(id)?;
                let report = sync::push(r, &toolbox, &mut manifest, None).await?;
                flushed.extend(report.lines());
                if report.failed > 0 {
                    bail!("{} changes could not be committed", report.failed);
                }
                Ok(())
            }
            _ => {
                let toolbox = match record {
                    Some(r) => r.toolbox(daytona),
                    None => {
                        let sandbox = daytona.sandbox(id).await?;
                        daytona.toolbox(&sandbox.id, sandbox.toolbox_proxy_url.as_deref())
                    }
                };
                if let Some(r) = record {
                    // A dead mount's journal is committed by mounting again.
                    let alive = toolbox
                        .execute(&ExecuteRequest {
                            command: MOUNT_ALIVE.to_string(),
                            cwd: None,
                            envs: BTreeMap::new(),
                            timeout: Some(60),
                        })
                        .await
                        .context("cannot reach the sandbox")?;
                    if alive.exit_code != 0 {
                        log("the mount in the sandbox was not running; mounting it again to commit its journal");
                        mount_in(&toolbox, r).await?;
                    }
                }
                let bin = record
                    .map(|r| r.binary.clone())
                    .unwrap_or_else(|| "/usr/local/bin/contextfs".to_string());
                let response = toolbox
                    .execute(&ExecuteRequest {
                        command: umount_script(&bin),
                        cwd: None,
                        envs: BTreeMap::new(),
                        timeout: Some(600),
                    })
                    .await
                    .context("cannot flush the mount in the sandbox")?;
                flushed.extend(response.result.lines().map(str::to_string));
                if response.exit_code != 0 {
                    bail!(
                        "`contextfs umount {WORKSPACE}` in the sandbox failed (exit code {}): some changes are \
                         still only in the sandbox's journal",
                        response.exit_code
                    );
                }
                Ok(())
            }
        }
    }
    .await;
    match flush {
        Ok(()) => {}
        Err(e) if force => log(&format!("flushing failed ({e:#}); deleting anyway (--force)")),
        Err(e) => {
            return Err(e.context(format!(
                "sandbox {id} was NOT deleted; fix the cause and retry, or pass --force to delete it and lose \
                 what was not committed"
            )))
        }
    }
    match if gone { Ok(()) } else { daytona.delete_sandbox(id).await } {
        Ok(()) => {}
        Err(DaytonaError::NotFound { .. }) => log(&format!("sandbox {id} was already gone")),
        Err(e) => return Err(e).with_context(|| format!("cannot delete sandbox {id}")),
    }
    let token_revoked = match (record, admin) {
        (Some(r), Some(admin)) => Some(match admin.revoke_token(&r.token_id).await {
            Ok(()) => Ok(r.token_id.clone()),
            Err(e) => Err(format!(
                "could not revoke the sandbox's token {}: {e}; revoke it with `contextfs token revoke {}`",
                r.token_id, r.token_id
            )),
        }),
        (Some(r), None) => Some(Err(format!(
            "the sandbox's token {} is still valid: revoke it with `contextfs token revoke {}` (admin token)",
            r.token_id, r.token_id
        ))),
        (None, _) => None,
    };
    SandboxRecord::forget(id);
    Ok(DestroyOutcome { flushed, token_revoked })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_commands_run_the_script_in_a_shell() {
        let script = "x='a b'; printf '%s|' \"$x\" \"$(echo $((1 + 2)))\"\nexit 4\n";
        let wrapped = portable_command(script);
        // As a newer daemon runs it: fed to a shell.
        let mut child = std::process::Command::new("sh")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), wrapped.as_bytes()).unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!((out.status.code(), &out.stdout[..]), (Some(4), &b"a b|3|"[..]));
        // As an older daemon runs it: split into words, no shell around it.
        let inner = wrapped.strip_prefix("sh -c \"").unwrap().strip_suffix('"').unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(inner).output().unwrap();
        assert_eq!((out.status.code(), &out.stdout[..]), (Some(4), &b"a b|3|"[..]));
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("plain/path.md"), "plain/path.md");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn daytona_error_messages_are_read() {
        let body = r#"{"path":"/api/sandbox","timestamp":"x","statusCode":401,"error":"Unauthorized","message":"Invalid API key"}"#;
        assert_eq!(error_message(body, StatusCode::UNAUTHORIZED), "Invalid API key");
        assert_eq!(
            error_message(r#"{"message":["a","b"]}"#, StatusCode::BAD_REQUEST),
            "a; b"
        );
        assert_eq!(error_message("", StatusCode::BAD_GATEWAY), "Bad Gateway");
    }

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

    #[test]
    fn the_running_test_binary_is_recognised_as_elf() {
        let exe = std::env::current_exe().unwrap();
        // Test binaries are dynamically linked on gnu targets unless built with crt-static.
        assert!(is_static_elf(&exe).is_ok());
        assert!(is_static_elf(Path::new("/etc/hostname")).is_err() || !Path::new("/etc/hostname").exists());
    }
}
