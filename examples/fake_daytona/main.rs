//! A local stand-in for Daytona: its published REST API (the `Sandbox` and
//! `ListSandboxesResponse` models of `daytona-api-client` 0.226, and the
//! toolbox routes of `daytona-toolbox-api-client` 0.226 that the official SDKs
//! call), with every sandbox a local Docker container. The official `daytona`
//! Python SDK drives it in tests/sdk_fidelity/daytona_sdk.py.
//!
//! ```text
//! cargo run --example fake_daytona -- --api-key KEY [--listen 127.0.0.1:0]
//!     [--image contextfs-busybox:latest] [--no-fuse]
//!     [--fail-with STATUS [--fail-count N] [--fail-method GET]]
//! ```
//!
//! Prints `listening on http://ADDR`; point `DAYTONA_API_URL` at
//! `http://ADDR/api` and `DAYTONA_API_KEY` at KEY. Routes:
//!
//! - `POST /api/sandbox` (`CreateSandbox`: `snapshot`, `env`, `labels`,
//!   `autoStopInterval`, `autoDeleteInterval`, …) → `Sandbox` in state
//!   `starting`; `GET /api/sandbox/{idOrName}` → `started` once the container
//!   runs; `GET /api/sandbox?labels={json}&limit=&cursor=` →
//!   `{items, nextCursor}`; `DELETE /api/sandbox/{id}` removes the container;
//!   `POST /api/sandbox/{id}/stop` and `/start` stop and start it (as
//!   Daytona's auto-stop would: files stay, processes and mounts do not);
//!   `GET /api/sandbox/{id}/toolbox-proxy-url`;
//! - the toolbox at `toolboxProxyUrl` = `http://ADDR/toolbox`, see toolbox.rs.
//!
//! Every request needs `Authorization: Bearer KEY` (else 401). Containers run
//! `--network host` (so a contextfs server on 127.0.0.1 is reachable) with
//! `--device /dev/fuse --cap-add SYS_ADMIN`, unless `--no-fuse` or the
//! sandbox's label `fake-daytona/fuse=false` asks for a sandbox without FUSE.
//! A `snapshot` names a local Docker image. `--fail-with STATUS` (or
//! `FAKE_DAYTONA_FAIL=STATUS`) answers requests with that status (429 with
//! `Retry-After: 1`), all of them or only the first `--fail-count N`, and
//! only those of one `--fail-method`, for fault tests. SIGTERM / Ctrl-C removes every container it started.

// Each fake uses only some of the shared helpers.
#[allow(dead_code)]
#[path = "../fake_support/docker.rs"]
mod docker;
#[allow(dead_code)]
#[path = "../fake_support/multipart.rs"]
mod multipart;
mod toolbox;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;
use serde_json::{json, Value};

use docker::docker;

#[derive(Parser, Debug)]
#[command(about = "A local Daytona-compatible API that maps sandboxes onto Docker containers")]
struct Args {
    /// Address to listen on (port 0 picks one; the address is printed)
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The API key clients must send as `Authorization: Bearer KEY`
    #[arg(long, env = "FAKE_DAYTONA_API_KEY", hide_env_values = true)]
    api_key: String,
    /// The image sandboxes start from when no snapshot is given
    #[arg(long, default_value = "contextfs-busybox:latest")]
    image: String,
    /// Start every sandbox without /dev/fuse (sync-mode tests)
    #[arg(long)]
    no_fuse: bool,
    /// Answer requests with this HTTP status (fault tests)
    #[arg(long, env = "FAKE_DAYTONA_FAIL")]
    fail_with: Option<u16>,
    /// Only the first N requests fail (default: all)
    #[arg(long, requires = "fail_with")]
    fail_count: Option<u64>,
    /// Only requests with this HTTP method fail (default: all)
    #[arg(long, requires = "fail_with")]
    fail_method: Option<String>,
    /// Prefix of the container names (`PREFIX-<sandbox id>`)
    #[arg(long, default_value = "fake-daytona")]
    name_prefix: String,
}

#[derive(Clone)]
pub struct Sandbox {
    id: String,
    name: String,
    pub container: String,
    snapshot: String,
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    auto_stop: i64,
    auto_archive: i64,
    auto_delete: i64,
    pub state: String,
    error_reason: Option<String>,
    created_at: String,
    updated_at: String,
}

pub struct Fake {
    args: Args,
    base: String,
    boxes: Mutex<HashMap<String, Sandbox>>,
    failed: AtomicU64,
}

pub type Shared = State<Arc<Fake>>;

/// Daytona's error body (NestJS's: path, timestamp, statusCode, error, message).
pub fn error(status: StatusCode, path: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "path": path,
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "statusCode": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": message.into(),
    });
    (status, Json(body)).into_response()
}

fn not_found(path: &str, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        path,
        format!("Sandbox with ID or name {id} not found"),
    )
}

/// The `Sandbox` model: every field its required list names, and the
/// optional ones a sandbox of this fake can say something true about.
fn sandbox_json(fake: &Fake, b: &Sandbox, state: Option<&str>) -> Value {
    let state = state.unwrap_or(&b.state);
    let desired = match state {
        "stopping" | "stopped" => "stopped",
        "destroying" | "destroyed" => "destroyed",
        _ => "started",
    };
    json!({
        "id": b.id,
        "organizationId": "fake-org",
        "name": b.name,
        "snapshot": b.snapshot,
        "user": "root",
        "env": b.env,
        "labels": b.labels,
        "public": false,
        "networkBlockAll": false,
        "kvm": false,
        "target": "local",
        "cpu": 1, "gpu": 0, "memory": 1, "disk": 3,
        "state": state,
        "desiredState": desired,
        "errorReason": b.error_reason,
        "recoverable": false,
        "backupState": "None",
        "autoStopInterval": b.auto_stop,
        "autoPauseInterval": 0,
        "autoArchiveInterval": b.auto_archive,
        "autoDeleteInterval": b.auto_delete,
        "volumes": [],
        "createdAt": b.created_at,
        "updatedAt": b.updated_at,
        "lastActivityAt": b.updated_at,
        "daemonVersion": "fake",
        "runnerId": "fake-runner",
        "toolboxProxyUrl": format!("{}/toolbox", fake.base),
    })
}

/// Bearer auth and the fault switch, before any route.
async fn gate(State(fake): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let method_fails = fake
        .args
        .fail_method
        .as_deref()
        .is_none_or(|m| m.eq_ignore_ascii_case(request.method().as_str()));
    if let Some(status) = fake.args.fail_with.filter(|_| method_fails) {
        let failed = fake.failed.fetch_add(1, Ordering::SeqCst);
        if fake.args.fail_count.is_none_or(|n| failed < n) {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            eprintln!("fake-daytona: {} {path} -> {status} (--fail-with)", request.method());
            let mut response = if status == StatusCode::TOO_MANY_REQUESTS {
                error(status, &path, "ThrottlerException: Too Many Requests")
            } else {
                error(status, &path, "An unexpected error occurred.")
            };
            if status == StatusCode::TOO_MANY_REQUESTS {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            return response;
        }
    }
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| k == fake.args.api_key);
    if !authorized {
        eprintln!("fake-daytona: {} {path} -> 401", request.method());
        return error(StatusCode::UNAUTHORIZED, &path, "Invalid credentials");
    }
    next.run(request).await
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct CreateSandbox {
    name: Option<String>,
    snapshot: Option<String>,
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    auto_stop_interval: Option<i64>,
    auto_archive_interval: Option<i64>,
    auto_delete_interval: Option<i64>,
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("docker task")
}

async fn create(State(fake): Shared, body: Bytes) -> Response {
    let route = "/api/sandbox";
    let req: CreateSandbox = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, route, format!("invalid body: {e}")),
    };
    let image = req.snapshot.clone().unwrap_or_else(|| fake.args.image.clone());
    let check = image.clone();
    match blocking(move || docker(&["image", "inspect", &check]).map(|o| o.status.success())).await {
        Ok(true) => {}
        Ok(false) => return error(StatusCode::NOT_FOUND, route, format!("Snapshot {image} not found")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, route, format!("docker: {e}")),
    }
    let id = docker::uuid();
    let name = req.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| id.clone());
    if fake.boxes.lock().unwrap().values().any(|b| b.name == name) {
        return error(
            StatusCode::CONFLICT,
            route,
            format!("Sandbox with name {name} already exists"),
        );
    }
    let fuse = !fake.args.no_fuse && req.labels.get("fake-daytona/fuse").map(String::as_str) != Some("false");
    let now = chrono::Utc::now().to_rfc3339();
    let mut b = Sandbox {
        id: id.clone(),
        name,
        container: format!("{}-{id}", fake.args.name_prefix),
        snapshot: image.clone(),
        env: req.env.clone(),
        labels: req.labels.clone(),
        // Daytona's defaults: stop after 15 idle minutes, archive after 7 days, never delete.
        auto_stop: req.auto_stop_interval.unwrap_or(15),
        auto_archive: req.auto_archive_interval.unwrap_or(10080),
        auto_delete: req.auto_delete_interval.unwrap_or(-1),
        state: "starting".into(),
        error_reason: None,
        created_at: now.clone(),
        updated_at: now,
    };
    let labels = vec![
        format!("fake-daytona.id={id}"),
        format!("fake-daytona.pid={}", std::process::id()),
    ];
    let env: Vec<(String, String)> = req.env.clone().into_iter().collect();
    let run = docker::run_args(
        &b.container,
        &format!("sandbox-{}", &id[..8]),
        &labels,
        &env,
        fuse,
        &image,
    );
    match blocking(move || docker(&run.iter().map(String::as_str).collect::<Vec<_>>())).await {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            b.state = "error".into();
            b.error_reason = Some(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Err(e) => {
            b.state = "error".into();
            b.error_reason = Some(format!("docker: {e}"));
        }
    }
    eprintln!(
        "fake-daytona: created sandbox {id} (container {}, fuse {fuse}, state {})",
        b.container, b.state
    );
    // The answer says `starting`, as Daytona's does; the next GET says `started`.
    let reply = sandbox_json(&fake, &b, None);
    if b.state == "starting" {
        b.state = "started".into();
    }
    fake.boxes.lock().unwrap().insert(id, b);
    Json(reply).into_response()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ListQuery {
    /// A JSON object of labels every listed sandbox must carry.
    labels: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    name: Option<String>,
    id: Option<String>,
}

/// `GET /api/sandbox`: one page of `ListSandboxesResponse`, oldest first.
async fn list(State(fake): Shared, Query(q): Query<ListQuery>) -> Response {
    let wanted: BTreeMap<String, String> = match q.labels.as_deref().filter(|l| !l.is_empty()) {
        Some(raw) => match serde_json::from_str(raw) {
            Ok(l) => l,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "/api/sandbox",
                    format!("labels must be a JSON object of strings: {e}"),
                )
            }
        },
        None => BTreeMap::new(),
    };
    let boxes = fake.boxes.lock().unwrap();
    let mut matching: Vec<&Sandbox> = boxes
        .values()
        .filter(|b| wanted.iter().all(|(k, v)| b.labels.get(k) == Some(v)))
        .filter(|b| q.name.as_ref().is_none_or(|n| &b.name == n))
        .filter(|b| q.id.as_ref().is_none_or(|i| &b.id == i))
        .collect();
    matching.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    let skip: usize = q.cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit = q.limit.unwrap_or(100).clamp(1, 200);
    let items: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(limit)
        .map(|b| {
            let mut item = sandbox_json(&fake, b, None);
            // `SandboxListItem` carries no env.
            if let Some(o) = item.as_object_mut() {
                o.remove("env");
            }
            item
        })
        .collect();
    let next = (skip + limit < matching.len()).then(|| (skip + limit).to_string());
    Json(json!({"items": items, "nextCursor": next})).into_response()
}

/// A sandbox by id or name.
pub fn find(fake: &Fake, id_or_name: &str) -> Option<Sandbox> {
    let boxes = fake.boxes.lock().unwrap();
    boxes
        .get(id_or_name)
        .or_else(|| boxes.values().find(|b| b.name == id_or_name))
        .cloned()
}

async fn get_sandbox(State(fake): Shared, Path(id): Path<String>) -> Response {
    match find(&fake, &id) {
        Some(b) => Json(sandbox_json(&fake, &b, None)).into_response(),
        None => not_found(&format!("/api/sandbox/{id}"), &id),
    }
}

async fn toolbox_proxy_url(State(fake): Shared, Path(id): Path<String>) -> Response {
    match find(&fake, &id) {
        Some(_) => Json(json!({"url": format!("{}/toolbox", fake.base)})).into_response(),
        None => not_found(&format!("/api/sandbox/{id}/toolbox-proxy-url"), &id),
    }
}

async fn delete_sandbox(State(fake): Shared, Path(id): Path<String>) -> Response {
    let route = format!("/api/sandbox/{id}");
    let Some(found) = find(&fake, &id) else {
        return not_found(&route, &id);
    };
    let Some(b) = fake.boxes.lock().unwrap().remove(&found.id) else {
        return not_found(&route, &id);
    };
    let container = b.container.clone();
    let out = blocking(move || docker(&["rm", "-f", &container])).await;
    eprintln!("fake-daytona: deleted sandbox {} ({:?})", b.id, out.map(|o| o.status));
    // Gone at once: a later GET answers 404, as Daytona's does once it is destroyed.
    Json(sandbox_json(&fake, &b, Some("destroying"))).into_response()
}

/// `POST /api/sandbox/{id}/stop`: stops the container (Daytona's auto-stop).
async fn stop_sandbox(State(fake): Shared, Path(id): Path<String>) -> Response {
    lifecycle(fake, id, "stop", "stopped").await
}

/// `POST /api/sandbox/{id}/start`: starts it again (its files are kept; processes are not).
async fn start_sandbox(State(fake): Shared, Path(id): Path<String>) -> Response {
    lifecycle(fake, id, "start", "started").await
}

async fn lifecycle(fake: Arc<Fake>, id: String, verb: &'static str, state: &str) -> Response {
    let route = format!("/api/sandbox/{id}/{verb}");
    let Some(b) = find(&fake, &id) else {
        return not_found(&route, &id);
    };
    let container = b.container.clone();
    match blocking(move || docker(&[verb, &container])).await {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return error(
                StatusCode::BAD_REQUEST,
                &route,
                format!("cannot {verb}: {}", String::from_utf8_lossy(&o.stderr).trim()),
            )
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &route, format!("docker: {e}")),
    }
    let mut boxes = fake.boxes.lock().unwrap();
    let Some(b) = boxes.get_mut(&b.id) else {
        return not_found(&route, &id);
    };
    b.state = state.to_string();
    b.updated_at = chrono::Utc::now().to_rfc3339();
    eprintln!("fake-daytona: sandbox {} {state}", b.id);
    // Daytona answers with the transition under way; the next GET has the result.
    let transition = if state == "stopped" { "stopping" } else { "starting" };
    Json(sandbox_json(&fake, b, Some(transition))).into_response()
}

fn remove_all(fake: &Fake) {
    let boxes: Vec<Sandbox> = fake.boxes.lock().unwrap().drain().map(|(_, b)| b).collect();
    for b in boxes {
        let _ = docker(&["rm", "-f", &b.container]);
        eprintln!("fake-daytona: removed container {}", b.container);
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
        base: format!("http://{addr}"),
        boxes: Mutex::new(HashMap::new()),
        failed: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/api/sandbox", post(create).get(list))
        .route("/api/sandbox/{id}", get(get_sandbox).delete(delete_sandbox))
        .route("/api/sandbox/{id}/stop", post(stop_sandbox))
        .route("/api/sandbox/{id}/start", post(start_sandbox))
        .route("/api/sandbox/{id}/toolbox-proxy-url", get(toolbox_proxy_url))
        .merge(toolbox::routes())
        .fallback(|request: Request| async move { error(StatusCode::NOT_FOUND, request.uri().path(), "Not Found") })
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
