//! The `envd` daemon inside an E2B sandbox, as the [`Shell`] of the
//! provider-neutral sandbox logic: commands through Connect-RPC
//! (`process.Process/Start`, JSON codec), files through `GET`/`POST /files`.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use super::api::{E2bError, E2bResult};
use super::ENVD_PORT;
use crate::sandbox::remote::http::{self, Retry};
use crate::sandbox::remote::{ExecuteRequest, ExecuteResponse, Shell};

/// One sandbox's envd.
#[derive(Clone)]
pub struct EnvdShell {
    http: reqwest::Client,
    /// `https://49983-{id}.{domain}`, or a sandbox proxy URL.
    url: String,
    sandbox: String,
    access_token: Option<String>,
}

/// A Connect envelope: flags, big-endian length, the message.
fn envelope(flags: u8, message: &Value) -> Vec<u8> {
    let json = message.to_string().into_bytes();
    let mut frame = Vec::with_capacity(json.len() + 5);
    frame.push(flags);
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(&json);
    frame
}

/// The envelopes of a Connect stream: (flags, JSON message).
fn envelopes(mut body: &[u8]) -> Result<Vec<(u8, Value)>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err("a truncated envelope".into());
        }
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let end = 5 + length;
        let message = body.get(5..end).ok_or("a truncated message")?;
        let value = serde_json::from_slice(message).map_err(|e| format!("a message that is not JSON: {e}"))?;
        out.push((body[0], value));
        body = &body[end..];
    }
    Ok(out)
}

/// What a `process.Process/Start` stream said: output (stdout and stderr in
/// the order they came), the exit code, or the stream's error.
fn read_process_stream(frames: Vec<(u8, Value)>) -> Result<(String, Option<i64>), (String, String)> {
    let mut output = Vec::new();
    let mut exit_code = None;
    for (flags, message) in frames {
        if flags & 2 != 0 {
            // End of stream: `{}` or `{"error": {code, message}}`.
            if let Some(error) = message.get("error") {
                let code = error.get("code").and_then(Value::as_str).unwrap_or("unknown");
                let text = error.get("message").and_then(Value::as_str).unwrap_or_default();
                return Err((code.to_string(), text.to_string()));
            }
            continue;
        }
        let Some(event) = message.get("event") else { continue };
        if let Some(data) = event.get("data") {
            for stream in ["stdout", "stderr", "pty"] {
                if let Some(chunk) = data.get(stream).and_then(Value::as_str) {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(chunk)
                        .map_err(|e| ("internal".to_string(), format!("output that is not base64: {e}")))?;
                    output.extend_from_slice(&bytes);
                }
            }
        } else if let Some(end) = event.get("end") {
            // Proto JSON leaves out zero values: no exitCode means 0.
            exit_code = Some(end.get("exitCode").and_then(Value::as_i64).unwrap_or(0));
        }
    }
    Ok((String::from_utf8_lossy(&output).to_string(), exit_code))
}

impl EnvdShell {
    pub fn new(http: reqwest::Client, url: &str, sandbox: &str, access_token: Option<String>) -> Self {
        EnvdShell {
            http,
            url: url.trim_end_matches('/').to_string(),
            sandbox: sandbox.to_string(),
            access_token,
        }
    }

    /// A request to envd with the headers E2B's SDK sends (the sandbox proxy routes on them).
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("E2b-Sandbox-Id", &self.sandbox)
            .header("E2b-Sandbox-Port", ENVD_PORT.to_string());
        match &self.access_token {
            Some(t) => builder.header("X-Access-Token", t),
            None => builder,
        }
    }

    async fn send(&self, what: &str, retry: Retry, builder: RequestBuilder) -> E2bResult<reqwest::Response> {
        http::send(what, retry, builder)
            .await
            .map_err(|f| E2bError::from_failure(f, what, &self.url, Some(&self.sandbox)))
    }

    /// Runs `/bin/bash -l -c COMMAND` (as the SDK's `commands.run` does) and
    /// waits for it; output is stdout and stderr in the order they came.
    pub async fn run_command(&self, request: &ExecuteRequest) -> E2bResult<ExecuteResponse> {
        let what = format!("sandbox {} (process.Process/Start)", self.sandbox);
        let mut process = json!({
            "cmd": "/bin/bash",
            "args": ["-l", "-c", request.command],
            "envs": request.envs,
        });
        if let Some(cwd) = &request.cwd {
            process["cwd"] = json!(cwd);
        }
        let body = envelope(0, &json!({ "process": process, "stdin": false }));
        let limit = request.timeout.filter(|t| *t > 0);
        let mut builder = self
            .request(Method::POST, "/process.Process/Start")
            .header(reqwest::header::CONTENT_TYPE, "application/connect+json")
            .header("Connect-Protocol-Version", "1")
            .body(body)
            // The HTTP wait covers the command's own limit, or an hour without one.
            .timeout(Duration::from_secs(limit.unwrap_or(3600) + 60));
        if let Some(seconds) = limit {
            builder = builder.header("Connect-Timeout-Ms", (seconds * 1000).to_string());
        }
        // A command may have run before a 5xx: only a throttled one is sent again.
        let response = self.send(&what, Retry::OnlyThrottled, builder).await?;
        let url = response.url().to_string();
        let bytes = response.bytes().await.map_err(|e| E2bError::Unreachable {
            url: url.clone(),
            detail: http::describe(&e),
        })?;
        let frames = envelopes(&bytes).map_err(|detail| E2bError::Protocol {
            url: url.clone(),
            detail,
        })?;
        match read_process_stream(frames) {
            Ok((result, Some(exit_code))) => Ok(ExecuteResponse { exit_code, result }),
            Ok((_, None)) => Err(E2bError::Protocol {
                url,
                detail: "the command's stream ended without its exit code".into(),
            }),
            Err((code, _)) if code == "deadline_exceeded" => Err(E2bError::TimedOut {
                id: self.sandbox.clone(),
                seconds: limit.unwrap_or_default(),
            }),
            Err((code, message)) if code == "unauthenticated" || code == "permission_denied" => {
                Err(E2bError::Unauthorized { status: 401, message })
            }
            Err((code, message)) => Err(E2bError::Rejected {
                what,
                status: 200,
                message: format!("{code}: {message}"),
            }),
        }
    }

    /// `POST /files`: every file as a multipart part `file` whose filename is its path.
    pub async fn write_files(&self, files: &[(String, Bytes)]) -> E2bResult<()> {
        if files.is_empty() {
            return Ok(());
        }
        let parts: Vec<(String, Option<&str>, &[u8])> = files
            .iter()
            .map(|(path, bytes)| ("file".to_string(), Some(path.as_str()), &bytes[..]))
            .collect();
        let (content_type, body) = http::multipart_body(&parts);
        let mut builder = self.request(Method::POST, "/files");
        if let [(path, _)] = files {
            builder = builder.query(&[("path", path.as_str())]);
        }
        let what = match files {
            [(path, _)] => format!("sandbox {} (files {path})", self.sandbox),
            _ => format!("sandbox {} (files, {} files)", self.sandbox, files.len()),
        };
        self.send(
            &what,
            // Writing the same bytes again changes nothing.
            Retry::Idempotent,
            builder
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body)
                .timeout(Duration::from_secs(600)),
        )
        .await?;
        Ok(())
    }

    /// `GET /files?path=P`; `None` when the file does not exist.
    pub async fn read_file(&self, path: &str) -> E2bResult<Option<Bytes>> {
        let what = format!("file {path} in sandbox {}", self.sandbox);
        let result = self
            .send(
                &what,
                Retry::Idempotent,
                self.request(Method::GET, "/files")
                    .query(&[("path", path)])
                    .timeout(Duration::from_secs(600)),
            )
            .await;
        let response = match result {
            Ok(r) => r,
            Err(E2bError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let url = response.url().to_string();
        response.bytes().await.map(Some).map_err(|e| E2bError::Unreachable {
            url,
            detail: http::describe(&e),
        })
    }
}

#[async_trait]
impl Shell for EnvdShell {
    async fn execute(&self, request: &ExecuteRequest) -> anyhow::Result<ExecuteResponse> {
        Ok(self.run_command(request).await?)
    }

    async fn upload_many(&self, files: &[(String, Bytes)]) -> anyhow::Result<()> {
        // Batches keep one request's body to a sensible size.
        for batch in files.chunks(32) {
            self.write_files(batch)
                .await
                .with_context(|| format!("cannot write {} files into the sandbox", batch.len()))?;
        }
        Ok(())
    }

    async fn download(&self, path: &str) -> anyhow::Result<Option<Bytes>> {
        Ok(self.read_file(path).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_stream_is_read_in_order() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut body = Vec::new();
        body.extend(envelope(0, &json!({"event": {"start": {"pid": 7}}})));
        body.extend(envelope(0, &json!({"event": {"data": {"stdout": b64("out\n")}}})));
        body.extend(envelope(0, &json!({"event": {"keepalive": {}}})));
        body.extend(envelope(0, &json!({"event": {"data": {"stderr": b64("err\n")}}})));
        body.extend(envelope(0, &json!({"event": {"end": {"exitCode": 3, "exited": true}}})));
        body.extend(envelope(2, &json!({})));
        let (output, code) = read_process_stream(envelopes(&body).unwrap()).unwrap();
        assert_eq!((output.as_str(), code), ("out\nerr\n", Some(3)));
        // A zero exit code is left out by proto JSON.
        let ok = envelope(0, &json!({"event": {"end": {"exited": true}}}));
        assert_eq!(read_process_stream(envelopes(&ok).unwrap()).unwrap().1, Some(0));
        let deadline = envelope(2, &json!({"error": {"code": "deadline_exceeded", "message": "late"}}));
        assert_eq!(
            read_process_stream(envelopes(&deadline).unwrap()).unwrap_err().0,
            "deadline_exceeded"
        );
        assert!(envelopes(&[0, 0, 0, 0, 9, b'{']).is_err());
    }
}
