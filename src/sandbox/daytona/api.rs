//! The client for the parts of Daytona's REST API that contextfs needs: the
//! sandbox endpoints ([`Daytona`]) and one sandbox's toolbox ([`Toolbox`]),
//! with errors worded as what to do about them ([`DaytonaError`]).

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::records::{CreateSandbox, ExecuteRequest, ExecuteResponse, Sandbox};
use crate::sandbox::remote::http::{self, Failure, Refusal, Retry};

/// Characters left as they are in a URL path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// What went wrong talking to Daytona, worded as what to do about it.
#[derive(Debug, Error)]
pub enum DaytonaError {
    #[error("no Daytona API key: set DAYTONA_API_KEY (or pass --api-key); keys are made in the Daytona dashboard")]
    NoKey,
    #[error("Daytona refused the API key (HTTP {status}: {message}); check DAYTONA_API_KEY")]
    Unauthorized { status: u16, message: String },
    #[error("Daytona is failing (HTTP {status}: {message}, {attempts} attempts); retry later")]
    Server {
        status: u16,
        message: String,
        attempts: u32,
    },
    #[error(
        "Daytona is rate-limiting this API key (HTTP 429: {message}, {attempts} attempts); wait a minute and retry"
    )]
    Throttled { message: String, attempts: u32 },
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
            DaytonaError::Throttled { .. } => Some(429),
            DaytonaError::NotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// What the error means to the provider-neutral sandbox logic.
    pub fn kind(&self) -> crate::sandbox::remote::ErrorKind {
        use crate::sandbox::remote::ErrorKind;
        match self {
            DaytonaError::Unauthorized { .. } | DaytonaError::NoKey => ErrorKind::Unauthorized,
            DaytonaError::NotFound { .. } => ErrorKind::NotFound,
            // The toolbox answers 408 when a command ran past its `timeout`.
            DaytonaError::Rejected { status: 408, .. } => ErrorKind::TimedOut,
            _ => ErrorKind::Other,
        }
    }

    pub(super) fn is_transient(&self) -> bool {
        matches!(
            self,
            DaytonaError::Server { .. } | DaytonaError::Throttled { .. } | DaytonaError::Unreachable { .. }
        )
    }
}

pub type DaytonaResult<T> = Result<T, DaytonaError>;

/// A client for Daytona's REST API.
#[derive(Clone)]
pub struct Daytona {
    http: reqwest::Client,
    api: String,
    key: String,
}

impl Daytona {
    pub fn new(api_url: &str, key: &str) -> DaytonaResult<Self> {
        let (api, http) = crate::sandbox::remote::http::api_client(api_url, "DAYTONA_API_URL")
            .map_err(|(url, detail)| DaytonaError::Protocol { url, detail })?;
        if key.trim().is_empty() {
            return Err(DaytonaError::NoKey);
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

    fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.key)
    }

    /// Sends the request with the shared retry policy ([`http::send`]) and
    /// words what failed for Daytona.
    async fn send(&self, what: &str, retry: Retry, builder: RequestBuilder) -> DaytonaResult<Response> {
        http::send(what, retry, builder).await.map_err(|f| match f {
            Failure::Transport { url, detail, .. } => DaytonaError::Unreachable {
                url: if url.is_empty() { self.api.clone() } else { url },
                detail,
            },
            Failure::Status {
                status,
                retry_after,
                body,
                attempts,
            } => match Refusal::of(status, retry_after, &body, attempts) {
                Refusal::Unauthorized { status, message } => DaytonaError::Unauthorized { status, message },
                Refusal::NotFound { message } => DaytonaError::NotFound {
                    what: what.to_string(),
                    message,
                },
                Refusal::Throttled { message, attempts } => DaytonaError::Throttled { message, attempts },
                Refusal::Server {
                    status,
                    message,
                    attempts,
                } => DaytonaError::Server {
                    status,
                    message,
                    attempts,
                },
                Refusal::Rejected { status, message } => DaytonaError::Rejected {
                    what: what.to_string(),
                    status,
                    message,
                },
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, what: &str, retry: Retry, builder: RequestBuilder) -> DaytonaResult<T> {
        let response = self.send(what, retry, builder).await?;
        let url = response.url().to_string();
        let bytes = response.bytes().await.map_err(|e| DaytonaError::Unreachable {
            url: url.clone(),
            detail: http::describe(&e),
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
        // A create that failed with 5xx may have made a sandbox: not sent twice.
        self.json(
            "sandbox creation",
            Retry::OnlyThrottled,
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
            Retry::Idempotent,
            self.request(Method::GET, &self.sandbox_url(id))
                .timeout(Duration::from_secs(60)),
        )
        .await
    }

    /// `DELETE /sandbox/{id}`.
    pub async fn delete_sandbox(&self, id: &str) -> DaytonaResult<()> {
        self.send(
            &format!("sandbox {id}"),
            Retry::Idempotent,
            self.request(Method::DELETE, &self.sandbox_url(id))
                .timeout(Duration::from_secs(120)),
        )
        .await?;
        Ok(())
    }

    /// `POST /sandbox/{id}/start`: starts a stopped (or archived) sandbox.
    pub async fn start_sandbox(&self, id: &str) -> DaytonaResult<()> {
        // Starting a started sandbox changes nothing: safe to send again.
        self.send(
            &format!("sandbox {id}"),
            Retry::Idempotent,
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
                // A command may have run before a 5xx: only a throttled one is sent again.
                Retry::OnlyThrottled,
                self.daytona.request(Method::POST, &url).json(request).timeout(wait),
            )
            .await
    }

    /// Writes one file: [`Toolbox::upload_many`] with one entry.
    pub async fn upload(&self, path: &str, bytes: Bytes) -> DaytonaResult<()> {
        self.upload_many(&[(path.to_string(), bytes)]).await
    }

    /// `POST /files/bulk-upload`: several files in one request, as the
    /// current SDKs send them (multipart `files[i].path` + `files[i].file`).
    /// Toolbox daemons without that route (404) get one `POST /files/upload`
    /// per file instead.
    pub async fn upload_many(&self, files: &[(String, Bytes)]) -> DaytonaResult<()> {
        if files.is_empty() {
            return Ok(());
        }
        let url = format!("{}/files/bulk-upload", self.base);
        let mut parts: Vec<(String, Option<&str>, &[u8])> = Vec::with_capacity(files.len() * 2);
        for (i, (path, bytes)) in files.iter().enumerate() {
            parts.push((format!("files[{i}].path"), None, path.as_bytes()));
            parts.push((format!("files[{i}].file"), Some(path.as_str()), &bytes[..]));
        }
        let (content_type, body) = http::multipart_body(&parts);
        let what = match files {
            [(path, _)] => format!("sandbox {} (files/bulk-upload {path})", self.sandbox),
            _ => format!("sandbox {} (files/bulk-upload, {} files)", self.sandbox, files.len()),
        };
        let result = self
            .daytona
            .send(
                &what,
                // Writing the same bytes again changes nothing.
                Retry::Idempotent,
                self.daytona
                    .request(Method::POST, &url)
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(body)
                    .timeout(Duration::from_secs(600)),
            )
            .await;
        match result {
            Err(DaytonaError::NotFound { .. }) => {
                for (path, bytes) in files {
                    self.upload_legacy(path, bytes).await?;
                }
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// `POST /files/upload?path=P` with the bytes as the multipart field `file`
    /// (toolbox daemons before bulk upload).
    async fn upload_legacy(&self, path: &str, bytes: &[u8]) -> DaytonaResult<()> {
        let url = format!("{}/files/upload", self.base);
        let name = path.rsplit('/').next().unwrap_or("file").to_string();
        let (content_type, body) = http::multipart_body(&[("file".to_string(), Some(name.as_str()), bytes)]);
        self.daytona
            .send(
                &format!("sandbox {} (files/upload {path})", self.sandbox),
                Retry::Idempotent,
                self.daytona
                    .request(Method::POST, &url)
                    .query(&[("path", path)])
                    .header(reqwest::header::CONTENT_TYPE, content_type)
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
                Retry::Idempotent,
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
            detail: http::describe(&e),
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
}
