//! The in-sandbox `envd` API of fake_e2b, as the `e2b` SDK 2.63 calls it
//! through a sandbox URL: every request names its sandbox in the
//! `E2b-Sandbox-Id` header and carries the sandbox's `X-Access-Token`.
//!
//! - `GET /health` → 204;
//! - `POST /process.Process/Start`: Connect-RPC server streaming with the JSON
//!   codec (`application/connect+json`, 5-byte envelopes): a `StartRequest`
//!   `{process: {cmd, args, envs, cwd}}` in, `StartResponse`s
//!   `{event: {start: {pid}}}`, `{event: {data: {stdout|stderr: base64}}}`,
//!   `{event: {end: {exitCode, exited, status}}}` out, then the end-of-stream
//!   envelope; `Connect-Timeout-Ms` bounds the command (then the stream ends
//!   with `deadline_exceeded`);
//! - `GET /files?path=P` → the bytes (404 `{code, message}` if missing);
//!   `POST /files?path=P` with the bytes as multipart field `file` (or
//!   octet-stream) → `[{name, path, type}]`. Relative paths start at
//!   `/home/user`, the E2B user's home.
//!
//! A sandbox that is gone (killed, or past its timeout) gets what E2B's proxy
//! answers: 502 "The sandbox ID was not found". Commands run as root (the
//! busybox image has no `user` account; its home exists).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::docker::{self, ReadFile};
use crate::{error, find, multipart, Fake, Sandbox, Shared};

const HOME: &str = "/home/user";

pub fn routes() -> Router<Arc<Fake>> {
    Router::new()
        .route("/health", get(health))
        .route("/process.Process/Start", post(start))
        .route("/files", get(read_file).post(write_file))
}

/// The sandbox a request is for, if it exists and the access token is its own.
#[allow(clippy::result_large_err)]
fn sandbox(fake: &Fake, headers: &HeaderMap) -> Result<Sandbox, Response> {
    let id = headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(b) = find(fake, id) else {
        let body = json!({"code": 502, "message": format!("The sandbox {id} was not found"), "sandboxId": id});
        return Err((StatusCode::BAD_GATEWAY, Json(body)).into_response());
    };
    let token = headers.get("x-access-token").and_then(|v| v.to_str().ok());
    if token != Some(b.access_token.as_str()) {
        return Err(error(StatusCode::UNAUTHORIZED, "invalid access token"));
    }
    Ok(b)
}

async fn health(State(fake): Shared, headers: HeaderMap) -> Response {
    match sandbox(&fake, &headers) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

fn resolve(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{HOME}/{}", path.trim_start_matches("./"))
    }
}

#[derive(Deserialize)]
struct PathQuery {
    path: Option<String>,
}

async fn read_file(State(fake): Shared, headers: HeaderMap, Query(q): Query<PathQuery>) -> Response {
    let b = match sandbox(&fake, &headers) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(path) = q.path.filter(|p| !p.is_empty()).map(|p| resolve(&p)) else {
        return error(StatusCode::BAD_REQUEST, "path is required");
    };
    let container = b.container.clone();
    let target = path.clone();
    match tokio::task::spawn_blocking(move || docker::read_file(&container, &target))
        .await
        .expect("docker task")
    {
        ReadFile::Bytes(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        ReadFile::NotFound => error(StatusCode::NOT_FOUND, format!("path '{path}' does not exist")),
        ReadFile::Failed(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn write_file(State(fake): Shared, headers: HeaderMap, Query(q): Query<PathQuery>, body: Bytes) -> Response {
    let b = match sandbox(&fake, &headers) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    // (path, bytes): the query's path, or each part's filename in a multi-file upload.
    let files: Vec<(String, Vec<u8>)> = if content_type.starts_with("multipart/form-data") {
        let Some(parts) = multipart::parse(&content_type, &body) else {
            return error(StatusCode::BAD_REQUEST, "malformed multipart body");
        };
        let files: Vec<_> = parts.into_iter().filter(|p| p.name == "file").collect();
        match (&q.path, files.len()) {
            (Some(path), 1) => files.into_iter().map(|p| (path.clone(), p.data)).collect(),
            _ => files
                .into_iter()
                .filter_map(|p| p.filename.clone().map(|f| (f, p.data)))
                .collect(),
        }
    } else {
        match &q.path {
            Some(path) => vec![(path.clone(), body.to_vec())],
            None => return error(StatusCode::BAD_REQUEST, "path is required"),
        }
    };
    if files.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no file in the request");
    }
    let container = b.container.clone();
    let written = tokio::task::spawn_blocking(move || {
        let mut written = Vec::new();
        for (path, data) in files {
            let path = resolve(&path);
            docker::write_file(&container, &path, data)?;
            let name = path.rsplit('/').next().unwrap_or_default().to_string();
            written.push(json!({"name": name, "path": path, "type": "file"}));
        }
        Ok::<_, String>(written)
    })
    .await
    .expect("docker task");
    match written {
        Ok(w) => Json(w).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// One Connect envelope: flags, big-endian length, the JSON message.
fn envelope(flags: u8, message: &Value) -> Bytes {
    let json = message.to_string().into_bytes();
    let mut frame = Vec::with_capacity(json.len() + 5);
    frame.push(flags);
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(&json);
    Bytes::from(frame)
}

/// The message of the first envelope of a Connect streaming request.
fn first_message(body: &[u8]) -> Option<Value> {
    let length = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    serde_json::from_slice(body.get(5..5 + length)?).ok()
}

fn connect_error(code: &str, message: &str) -> Response {
    // A Connect error before any message: the end-of-stream envelope alone.
    let frame = envelope(2, &json!({"error": {"code": code, "message": message}}));
    ([(header::CONTENT_TYPE, "application/connect+json")], frame).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProcessConfig {
    cmd: String,
    args: Vec<String>,
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// `process.Process/Start`: runs the command, streams its output and end.
async fn start(State(fake): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let b = match sandbox(&fake, &headers) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(request) = first_message(&body) else {
        return connect_error(
            "invalid_argument",
            "expected one enveloped StartRequest (application/connect+json)",
        );
    };
    let config: ProcessConfig = request
        .get("process")
        .cloned()
        .and_then(|p| serde_json::from_value(p).ok())
        .unwrap_or_default();
    if config.cmd.is_empty() {
        return connect_error("invalid_argument", "process.cmd is required");
    }
    let limit = headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    let cwd = config
        .cwd
        .clone()
        .map(|c| resolve(&c))
        .unwrap_or_else(|| HOME.to_string());
    let mut command = tokio::process::Command::new("docker");
    command.args(["exec", "-w", &cwd]);
    for (k, v) in &config.envs {
        command.arg("-e").arg(format!("{k}={v}"));
    }
    command.arg(&b.container);
    // Killed inside the sandbox too when its time runs out (a killed
    // `docker exec` client would leave it running).
    if let Some(limit) = limit {
        command.args(["timeout", "-s", "KILL", &limit.as_secs().max(1).to_string()]);
    }
    command
        .arg(&config.cmd)
        .args(&config.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return connect_error("internal", &format!("docker: {e}")),
    };
    let pid = fake.next_pid.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    tokio::spawn(async move {
        let _ = tx.send(envelope(0, &json!({"event": {"start": {"pid": pid}}}))).await;
        let (events_tx, mut events) = mpsc::channel::<Event>(64);
        let out_tx = events_tx.clone();
        let pump_out = tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 || out_tx.send(Event::Stdout(buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        });
        let pump_err = tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 || events_tx.send(Event::Stderr(buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        });
        let run = async {
            while let Some(event) = events.recv().await {
                let (stream, data) = match event {
                    Event::Stdout(d) => ("stdout", d),
                    Event::Stderr(d) => ("stderr", d),
                };
                let data = base64::engine::general_purpose::STANDARD.encode(data);
                let message = json!({"event": {"data": {stream: data}}});
                if tx.send(envelope(0, &message)).await.is_err() {
                    return None;
                }
            }
            child.wait().await.ok()
        };
        let outcome = match limit {
            Some(limit) => tokio::time::timeout(limit, run).await.ok(),
            None => Some(run.await),
        };
        pump_out.abort();
        pump_err.abort();
        let end = match outcome {
            Some(Some(status)) => {
                let code = status.code().unwrap_or(-1);
                let end = json!({"event": {"end": {
                    "exitCode": code,
                    "exited": status.code().is_some(),
                    "status": format!("exit status {code}"),
                }}});
                let _ = tx.send(envelope(0, &end)).await;
                json!({})
            }
            Some(None) => return,
            None => json!({"error": {"code": "deadline_exceeded", "message": "the command ran past its timeout"}}),
        };
        let _ = tx.send(envelope(2, &end)).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (Ok::<_, std::io::Error>(frame), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/connect+json")],
        Body::from_stream(stream),
    )
        .into_response()
}
