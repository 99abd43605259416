//! A local stand-in for E2B: its published REST control plane (the models of
//! the `e2b` Python SDK 2.63's generated client: `NewSandboxV2`, `Sandbox`,
//! `SandboxDetail`, `ListedSandbox`) and the in-sandbox `envd` API (see
//! envd.rs), with every sandbox a local Docker container. The official `e2b`
//! Python SDK drives it in tests/sdk_fidelity/e2b_sdk.py.
//!
//! ```text
//! cargo run --example fake_e2b -- --api-key KEY [--listen 127.0.0.1:0]
//!     [--image contextfs-busybox:latest] [--no-fuse]
//!     [--fail-with STATUS [--fail-count N] [--fail-method GET]]
//! ```
//!
//! Prints `listening on http://ADDR`. The control plane and envd share that
//! address: set `E2B_API_URL` and `E2B_SANDBOX_URL` to it and `E2B_API_KEY`
//! to KEY (the SDK then sends envd calls there with the `E2b-Sandbox-Id`
//! header, as it does through E2B's own sandbox proxy). Control plane, all
//! with `X-API-KEY: KEY` (else 401):
//!
//! - `POST /v2/sandboxes` (and `/sandboxes`): `{templateID, timeout, metadata,
//!   envVars, …}` → 201 `Sandbox` `{sandboxID, templateID, clientID,
//!   envdVersion, envdAccessToken, domain}`; a template names a local Docker
//!   image (`base` is `--image`);
//! - `GET /sandboxes/{id}` → `SandboxDetail` (`state` `running`, `startedAt`,
//!   `endAt`, `metadata`, …); `GET /v2/sandboxes?metadata=k%3Dv&state=running`
//!   and `GET /sandboxes` → `[ListedSandbox]`;
//! - `DELETE /sandboxes/{id}` → 204; `POST /sandboxes/{id}/timeout`
//!   `{timeout}` → 204 (the sandbox now ends `timeout` s from now);
//!   `POST /sandboxes/{id}/refreshes` `{duration}` → 204 (keep-alive: it ends
//!   no sooner than that).
//!
//! As on E2B, a sandbox past its `endAt` is killed (its container removed):
//! the default timeout is 300 s. `--fail-with STATUS` answers control-plane
//! requests with that status, as fake_daytona's does. SIGTERM / Ctrl-C removes
//! every container it started.

// Each fake uses only some of the shared helpers.
#[allow(dead_code)]
#[path = "../fake_support/docker.rs"]
mod docker;
mod envd;
#[allow(dead_code)]
#[path = "../fake_support/multipart.rs"]
mod multipart;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use clap::Parser;
use serde::Deserialize;
use serde_json::{json, Value};

use docker::docker;

/// The envd version the fake's sandboxes report (the features the SDK
/// enables follow it; 0.5.7 has everything the tests use).
const ENVD_VERSION: &str = "0.5.7";
/// envd's port inside a sandbox (the SDK sends it as `E2b-Sandbox-Port`).
pub const ENVD_PORT: u16 = 49983;

#[derive(Parser, Debug)]
#[command(about = "A local E2B-compatible API that maps sandboxes onto Docker containers")]
struct Args {
    /// Address to listen on (port 0 picks one; the address is printed)
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The API key clients must send as `X-API-KEY`
    #[arg(long, env = "FAKE_E2B_API_KEY", hide_env_values = true)]
    api_key: String,
    /// The image of the `base` template
    #[arg(long, default_value = "contextfs-busybox:latest")]
    image: String,
    /// Start every sandbox without /dev/fuse (sync-mode tests)
    #[arg(long)]
    no_fuse: bool,
    /// Answer control-plane requests with this HTTP status (fault tests)
    #[arg(long, env = "FAKE_E2B_FAIL")]
    fail_with: Option<u16>,
    /// Only the first N requests fail (default: all)
    #[arg(long, requires = "fail_with")]
    fail_count: Option<u64>,
    /// Only requests with this HTTP method fail (default: all)
    #[arg(long, requires = "fail_with")]
    fail_method: Option<String>,
    /// Prefix of the container names (`PREFIX-<sandbox id>`)
    #[arg(long, default_value = "fake-e2b")]
    name_prefix: String,
}

#[derive(Clone)]
pub struct Sandbox {
    id: String,
    template: String,
    pub container: String,
    metadata: BTreeMap<String, String>,
    pub access_token: String,
    started_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
}

pub struct Fake {
    args: Args,
    boxes: Mutex<HashMap<String, Sandbox>>,
    failed: AtomicU64,
    next_pid: AtomicU64,
}

pub type Shared = State<Arc<Fake>>;

/// E2B's error body: `{code, message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": status.as_u16(), "message": message.into()})),
    )
        .into_response()
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("sandbox \"{id}\" doesn't exist or you don't have access to it"),
    )
}

/// The control plane's routes (envd's are told apart by their paths).
fn is_control_plane(path: &str) -> bool {
    path.starts_with("/sandboxes") || path.starts_with("/v2/sandboxes")
}

/// API-key auth and the fault switch, for the control plane.
async fn gate(State(fake): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if !is_control_plane(&path) {
        return next.run(request).await;
    }
    let method_fails = fake
        .args
        .fail_method
        .as_deref()
        .is_none_or(|m| m.eq_ignore_ascii_case(request.method().as_str()));
    if let Some(status) = fake.args.fail_with.filter(|_| method_fails) {
        let failed = fake.failed.fetch_add(1, Ordering::SeqCst);
        if fake.args.fail_count.is_none_or(|n| failed < n) {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            eprintln!("fake-e2b: {} {path} -> {status} (--fail-with)", request.method());
            return error(status, "fake failure (--fail-with)");
        }
    }
    let authorized = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k == fake.args.api_key);
    if !authorized {
        eprintln!("fake-e2b: {} {path} -> 401", request.method());
        return error(StatusCode::UNAUTHORIZED, "Invalid API key, it must start with 'e2b_'");
    }
    next.run(request).await
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("docker task")
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    /// Seconds until E2B kills the sandbox.
    timeout: Option<i64>,
    metadata: BTreeMap<String, String>,
    env_vars: BTreeMap<String, String>,
}

fn sandbox_json(b: &Sandbox) -> Value {
    json!({
        "sandboxID": b.id,
        "templateID": b.template,
        "clientID": "fake-client",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": b.access_token,
        "domain": null,
    })
}

fn detail_json(b: &Sandbox) -> Value {
    json!({
        "sandboxID": b.id,
        "templateID": b.template,
        "clientID": "fake-client",
        "startedAt": b.started_at.to_rfc3339(),
        "endAt": b.end_at.to_rfc3339(),
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": b.access_token,
        "cpuCount": 2,
        "memoryMB": 512,
        "diskSizeMB": 1024,
        "state": "running",
        "metadata": b.metadata,
        "domain": null,
    })
}

async fn create(State(fake): Shared, body: Bytes) -> Response {
    let req: NewSandbox = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
    };
    let image = match req.template_id.as_str() {
        "" | "base" => fake.args.image.clone(),
        other => other.to_string(),
    };
    let check = image.clone();
    match blocking(move || docker(&["image", "inspect", &check]).map(|o| o.status.success())).await {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("template '{}' not found", req.template_id),
            )
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("docker: {e}")),
    }
    // E2B's sandbox ids are 20 lowercase letters and digits.
    let id: String = hex::encode(rand::random::<[u8; 10]>());
    let timeout = req.timeout.filter(|t| *t > 0).unwrap_or(300);
    let fuse = !fake.args.no_fuse && req.metadata.get("fake-e2b/fuse").map(String::as_str) != Some("false");
    let now = Utc::now();
    let b = Sandbox {
        id: id.clone(),
        template: if req.template_id.is_empty() {
            "base".into()
        } else {
            req.template_id.clone()
        },
        container: format!("{}-{id}", fake.args.name_prefix),
        metadata: req.metadata.clone(),
        access_token: format!("ea_{}", hex::encode(rand::random::<[u8; 16]>())),
        started_at: now,
        end_at: now + chrono::Duration::seconds(timeout),
    };
    let labels = vec![
        format!("fake-e2b.id={id}"),
        format!("fake-e2b.pid={}", std::process::id()),
    ];
    let env: Vec<(String, String)> = req.env_vars.into_iter().collect();
    let run = docker::run_args(&b.container, &format!("e2b-{}", &id[..8]), &labels, &env, fuse, &image);
    let container = b.container.clone();
    let started = blocking(move || {
        let out = docker(&run.iter().map(String::as_str).collect::<Vec<_>>())?;
        if !out.status.success() {
            return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        // E2B templates have bash and a `user` home; busybox gets an ash behind that name.
        let setup = "mkdir -p /home/user && [ -e /bin/bash ] || \
                     { printf '#!/bin/sh\\nexec /bin/sh \"$@\"\\n' > /bin/bash && chmod 755 /bin/bash; }";
        let out = docker(&["exec", &container, "sh", "-c", setup])?;
        Ok::<_, std::io::Error>(if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        })
    })
    .await;
    match started {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let container = b.container.clone();
            blocking(move || docker(&["rm", "-f", &container])).await.ok();
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start the sandbox: {e}"),
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("docker: {e}")),
    }
    eprintln!(
        "fake-e2b: created sandbox {id} (container {}, fuse {fuse}, timeout {timeout} s)",
        b.container
    );
    let reply = sandbox_json(&b);
    fake.boxes.lock().unwrap().insert(id, b);
    (StatusCode::CREATED, Json(reply)).into_response()
}

pub fn find(fake: &Fake, id: &str) -> Option<Sandbox> {
    fake.boxes.lock().unwrap().get(id).cloned()
}

async fn get_sandbox(State(fake): Shared, Path(id): Path<String>) -> Response {
    match find(&fake, &id) {
        Some(b) => Json(detail_json(&b)).into_response(),
        None => not_found(&id),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListQuery {
    /// `k1=v1&k2=v2`, URL-encoded once more as one query value.
    metadata: Option<String>,
    state: Option<String>,
}

async fn list(State(fake): Shared, Query(q): Query<ListQuery>) -> Response {
    let wanted: Vec<(String, String)> = q
        .metadata
        .as_deref()
        .map(|m| {
            m.split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (decode(k), decode(v)))
                .collect()
        })
        .unwrap_or_default();
    // Every sandbox here is running; asking only for paused ones finds none.
    if q.state
        .as_deref()
        .is_some_and(|s| !s.split(',').any(|s| s == "running"))
    {
        return Json(Vec::<Value>::new()).into_response();
    }
    let boxes = fake.boxes.lock().unwrap();
    let mut listed: Vec<&Sandbox> = boxes
        .values()
        .filter(|b| wanted.iter().all(|(k, v)| b.metadata.get(k) == Some(v)))
        .collect();
    listed.sort_by_key(|b| b.started_at);
    let items: Vec<Value> = listed
        .into_iter()
        .map(|b| {
            let mut item = detail_json(b);
            if let Some(o) = item.as_object_mut() {
                o.remove("envdAccessToken");
                o.remove("domain");
            }
            item
        })
        .collect();
    Json(items).into_response()
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .to_string()
}

async fn kill(State(fake): Shared, Path(id): Path<String>) -> Response {
    let Some(b) = fake.boxes.lock().unwrap().remove(&id) else {
        return not_found(&id);
    };
    let container = b.container.clone();
    let out = blocking(move || docker(&["rm", "-f", &container])).await;
    eprintln!("fake-e2b: killed sandbox {id} ({:?})", out.map(|o| o.status));
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct TimeoutBody {
    timeout: i64,
}

/// `POST /sandboxes/{id}/timeout`: the sandbox now ends `timeout` s from now.
async fn set_timeout(State(fake): Shared, Path(id): Path<String>, Json(body): Json<TimeoutBody>) -> Response {
    let mut boxes = fake.boxes.lock().unwrap();
    let Some(b) = boxes.get_mut(&id) else {
        return not_found(&id);
    };
    b.end_at = Utc::now() + chrono::Duration::seconds(body.timeout.max(0));
    eprintln!("fake-e2b: sandbox {id} now ends at {}", b.end_at);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RefreshBody {
    duration: Option<i64>,
}

/// `POST /sandboxes/{id}/refreshes`: keep-alive; it ends no sooner than `duration` s from now.
async fn refresh(State(fake): Shared, Path(id): Path<String>, body: Bytes) -> Response {
    let body: RefreshBody = serde_json::from_slice(&body).unwrap_or_default();
    let mut boxes = fake.boxes.lock().unwrap();
    let Some(b) = boxes.get_mut(&id) else {
        return not_found(&id);
    };
    let until = Utc::now() + chrono::Duration::seconds(body.duration.unwrap_or(60).max(0));
    if until > b.end_at {
        b.end_at = until;
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Kills sandboxes past their `endAt`, as E2B does.
async fn reaper(fake: Arc<Fake>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Utc::now();
        let expired: Vec<Sandbox> = {
            let mut boxes = fake.boxes.lock().unwrap();
            let ids: Vec<String> = boxes
                .values()
                .filter(|b| b.end_at <= now)
                .map(|b| b.id.clone())
                .collect();
            ids.iter().filter_map(|id| boxes.remove(id)).collect()
        };
        for b in expired {
            let container = b.container.clone();
            let _ = blocking(move || docker(&["rm", "-f", &container])).await;
            eprintln!("fake-e2b: sandbox {} reached its timeout and was killed", b.id);
        }
    }
}

fn remove_all(fake: &Fake) {
    let boxes: Vec<Sandbox> = fake.boxes.lock().unwrap().drain().map(|(_, b)| b).collect();
    for b in boxes {
        let _ = docker(&["rm", "-f", &b.container]);
        eprintln!("fake-e2b: removed container {}", b.container);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.api_key.is_empty() {
        anyhow::bail!("--api-key must not be empty");
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let fake = Arc::new(Fake {
        args,
        boxes: Mutex::new(HashMap::new()),
        failed: AtomicU64::new(0),
        next_pid: AtomicU64::new(1000),
    });
    tokio::spawn(reaper(fake.clone()));
    let app = Router::new()
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_sandbox).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .merge(envd::routes())
        .fallback(|request: Request| async move {
            eprintln!(
                "fake-e2b: {} {} -> 404 (no such route)",
                request.method(),
                request.uri().path()
            );
            error(StatusCode::NOT_FOUND, "Not Found")
        })
        .layer(middleware::from_fn_with_state(fake.clone(), gate))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 30))
        .with_state(fake.clone());
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    let cleanup = fake.clone();
    tokio::task::spawn_blocking(move || remove_all(&cleanup)).await?;
    Ok(())
}
