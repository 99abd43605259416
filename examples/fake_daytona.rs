//! A local stand-in for Daytona: the parts of its published OpenAPI that
//! `contextfs daytona` uses, with every sandbox a local Docker container.
//!
//! ```text
//! cargo run --example fake_daytona -- --api-key KEY [--listen 127.0.0.1:0]
//!     [--image contextfs-busybox:latest] [--no-fuse] [--fail-with 500]
//! ```
//!
//! Prints `listening on http://ADDR`; point `DAYTONA_API_URL` at
//! `http://ADDR/api` and `DAYTONA_API_KEY` at KEY. Routes:
//!
//! - `POST /api/sandbox` (`CreateSandbox`: `snapshot`, `env`, `labels`,
//!   `autoStopInterval`, `autoDeleteInterval`, …) → `Sandbox` in state
//!   `starting`; `GET /api/sandbox/{id}` → `started` once the container runs;
//!   `GET /api/sandbox` lists; `DELETE /api/sandbox/{id}` removes the container;
//!   `POST /api/sandbox/{id}/stop` and `/start` stop and start it (as
//!   Daytona's auto-stop would: files stay, processes and mounts do not);
//! - the toolbox at `toolboxProxyUrl` = `http://ADDR/toolbox`:
//!   `POST /toolbox/{id}/process/execute` (`{command, cwd, envs, timeout}` →
//!   `{exitCode, result}`; the command is fed to `sh` on standard input, as
//!   Daytona's daemon does), `POST /toolbox/{id}/files/upload?path=`
//!   (multipart field `file`), `GET /toolbox/{id}/files/download?path=`.
//!
//! Every request needs `Authorization: Bearer KEY` (else 401). Containers run
//! `--network host` (so a contextfs server on 127.0.0.1 is reachable) with
//! `--device /dev/fuse --cap-add SYS_ADMIN`, unless `--no-fuse` or the
//! sandbox's label `fake-daytona/fuse=false` asks for a sandbox without FUSE.
//! A `snapshot` names a local Docker image. `--fail-with STATUS` (or
//! `FAKE_DAYTONA_FAIL=STATUS`) answers every request with that status, for
//! fault tests. SIGTERM / Ctrl-C removes every container it started.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;
use serde_json::{json, Value};

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
    /// Answer every request with this HTTP status (fault tests)
    #[arg(long, env = "FAKE_DAYTONA_FAIL")]
    fail_with: Option<u16>,
    /// Prefix of the container names (`PREFIX-<sandbox id>`)
    #[arg(long, default_value = "fake-daytona")]
    name_prefix: String,
}

#[derive(Clone)]
struct Sandbox {
    id: String,
    container: String,
    snapshot: String,
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    auto_stop: i64,
    auto_delete: i64,
    state: String,
    error_reason: Option<String>,
    created_at: String,
}

struct Fake {
    args: Args,
    base: String,
    boxes: Mutex<HashMap<String, Sandbox>>,
}

type Shared = State<Arc<Fake>>;

fn error(status: StatusCode, path: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "path": path,
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "statusCode": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": message.into(),
    });
    (status, Json(body)).into_response()
}

fn sandbox_json(fake: &Fake, b: &Sandbox, state: Option<&str>) -> Value {
    json!({
        "id": b.id,
        "organizationId": "fake-org",
        "name": b.id,
        "snapshot": b.snapshot,
        "user": "root",
        "env": b.env,
        "labels": b.labels,
        "public": false,
        "networkBlockAll": false,
        "target": "local",
        "cpu": 1, "gpu": 0, "memory": 1, "disk": 3,
        "state": state.unwrap_or(&b.state),
        "errorReason": b.error_reason,
        "autoStopInterval": b.auto_stop,
        "autoArchiveInterval": 10080,
        "autoDeleteInterval": b.auto_delete,
        "createdAt": b.created_at,
        "updatedAt": chrono::Utc::now().to_rfc3339(),
        "toolboxProxyUrl": format!("{}/toolbox", fake.base),
    })
}

/// Bearer auth and the fault switch, before any route.
async fn gate(State(fake): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if let Some(status) = fake.args.fail_with {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        eprintln!("fake-daytona: {} {path} -> {status} (--fail-with)", request.method());
        return error(status, &path, "An unexpected error occurred.");
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

fn docker(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("docker").args(args).stdin(Stdio::null()).output()
}

fn docker_with_input(
    args: &[String],
    input: Vec<u8>,
    timeout: Option<Duration>,
) -> std::io::Result<(std::process::Output, bool)> {
    use std::io::Read;
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        // A runaway command is cut off (the sandbox-side `timeout` should already have).
        if timeout.is_some_and(|limit| started.elapsed() > limit + Duration::from_secs(5)) {
            let _ = child.kill();
            timed_out = true;
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let output = std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    let timed_out = timed_out || timeout.is_some_and(|t| output.status.code() == Some(137) && started.elapsed() >= t);
    Ok((output, timed_out))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct CreateSandbox {
    snapshot: Option<String>,
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    auto_stop_interval: Option<i64>,
    auto_delete_interval: Option<i64>,
}

async fn create(State(fake): Shared, body: Bytes) -> Response {
    let req: CreateSandbox = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "/api/sandbox", format!("invalid body: {e}")),
    };
    let image = req.snapshot.clone().unwrap_or_else(|| fake.args.image.clone());
    let check = image.clone();
    let exists = tokio::task::spawn_blocking(move || docker(&["image", "inspect", &check]).map(|o| o.status.success()))
        .await
        .expect("docker task");
    match exists {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::NOT_FOUND,
                "/api/sandbox",
                format!("Snapshot {image} not found"),
            )
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "/api/sandbox",
                format!("docker: {e}"),
            )
        }
    }
    let r: [u8; 16] = rand::random();
    let h = hex::encode(r);
    let id = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);
    let fuse = !fake.args.no_fuse && req.labels.get("fake-daytona/fuse").map(String::as_str) != Some("false");
    let mut b = Sandbox {
        id: id.clone(),
        container: format!("{}-{id}", fake.args.name_prefix),
        snapshot: image.clone(),
        env: req.env.clone(),
        labels: req.labels.clone(),
        auto_stop: req.auto_stop_interval.unwrap_or(15),
        auto_delete: req.auto_delete_interval.unwrap_or(-1),
        state: "starting".into(),
        error_reason: None,
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    let mut run: Vec<String> = [
        "run",
        "-d",
        "--name",
        &b.container,
        "--hostname",
        &format!("sandbox-{}", &h[..8]),
        "--network",
        "host",
        "--label",
        &format!("fake-daytona.id={id}"),
        "--label",
        &format!("fake-daytona.pid={}", std::process::id()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if fuse {
        run.extend(
            [
                "--device",
                "/dev/fuse",
                "--cap-add",
                "SYS_ADMIN",
                "--security-opt",
                "apparmor=unconfined",
            ]
            .map(String::from),
        );
    }
    for (k, v) in &req.env {
        run.push("-e".into());
        run.push(format!("{k}={v}"));
    }
    run.push(image);
    run.extend(
        [
            "sh",
            "-c",
            "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
        ]
        .map(String::from),
    );
    let started = tokio::task::spawn_blocking(move || Command::new("docker").args(&run).stdin(Stdio::null()).output())
        .await
        .expect("docker task");
    match started {
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
    let reply = sandbox_json(&fake, &b, Some(if b.state == "error" { "error" } else { "starting" }));
    if b.state == "starting" {
        b.state = "started".into();
    }
    fake.boxes.lock().unwrap().insert(id, b);
    Json(reply).into_response()
}

async fn list(State(fake): Shared) -> Response {
    let boxes = fake.boxes.lock().unwrap();
    let all: Vec<Value> = boxes.values().map(|b| sandbox_json(&fake, b, None)).collect();
    Json(all).into_response()
}

fn find(fake: &Fake, id: &str) -> Option<Sandbox> {
    fake.boxes.lock().unwrap().get(id).cloned()
}

async fn get_sandbox(State(fake): Shared, Path(id): Path<String>) -> Response {
    match find(&fake, &id) {
        Some(b) => Json(sandbox_json(&fake, &b, None)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("/api/sandbox/{id}"),
            format!("Sandbox with ID or name {id} not found"),
        ),
    }
}

async fn delete_sandbox(State(fake): Shared, Path(id): Path<String>) -> Response {
    let Some(b) = fake.boxes.lock().unwrap().remove(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("/api/sandbox/{id}"),
            format!("Sandbox with ID or name {id} not found"),
        );
    };
    let container = b.container.clone();
    let out = tokio::task::spawn_blocking(move || docker(&["rm", "-f", &container]))
        .await
        .expect("docker task");
    eprintln!("fake-daytona: deleted sandbox {id} ({:?})", out.map(|o| o.status));
    Json(sandbox_json(&fake, &b, Some("destroyed"))).into_response()
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
        return error(
            StatusCode::NOT_FOUND,
            &route,
            format!("Sandbox with ID or name {id} not found"),
        );
    };
    let container = b.container.clone();
    let out = tokio::task::spawn_blocking(move || docker(&[verb, &container]))
        .await
        .expect("docker task");
    match out {
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
    let Some(b) = boxes.get_mut(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            &route,
            format!("Sandbox with ID or name {id} not found"),
        );
    };
    b.state = state.to_string();
    eprintln!("fake-daytona: sandbox {id} {state}");
    Json(sandbox_json(&fake, b, None)).into_response()
}

#[allow(clippy::result_large_err)]
fn started(fake: &Fake, id: &str, path: &str) -> Result<Sandbox, Response> {
    match find(fake, id) {
        Some(b) if b.state == "started" => Ok(b),
        Some(b) => Err(error(
            StatusCode::BAD_REQUEST,
            path,
            format!("Sandbox {id} is not started (state {})", b.state),
        )),
        None => Err(error(
            StatusCode::NOT_FOUND,
            path,
            format!("Sandbox with ID or name {id} not found"),
        )),
    }
}

#[derive(Deserialize)]
struct ExecuteRequest {
    command: String,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    #[serde(default)]
    timeout: Option<u64>,
}

async fn execute(State(fake): Shared, Path(id): Path<String>, Json(req): Json<ExecuteRequest>) -> Response {
    let path = format!("/toolbox/{id}/process/execute");
    let b = match started(&fake, &id, &path) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if req.command.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            &path,
            "command cannot be empty or whitespace-only",
        );
    }
    let mut args: Vec<String> = vec!["exec".into(), "-i".into()];
    if let Some(cwd) = &req.cwd {
        args.push("-w".into());
        args.push(cwd.clone());
    }
    for (k, v) in &req.envs {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    args.push(b.container.clone());
    let timeout = req.timeout.filter(|t| *t > 0);
    // Like Daytona's daemon: the command goes to the shell on standard input,
    // standard output and error come back combined.
    let shell = match timeout {
        Some(t) => format!("exec timeout -s KILL {t} sh 2>&1"),
        None => "exec sh 2>&1".to_string(),
    };
    args.extend(["sh".into(), "-c".into(), shell]);
    let input = req.command.into_bytes();
    let result = tokio::task::spawn_blocking(move || docker_with_input(&args, input, timeout.map(Duration::from_secs)))
        .await
        .expect("docker task");
    match result {
        Ok((_, true)) => error(StatusCode::REQUEST_TIMEOUT, &path, "command execution timeout"),
        Ok((out, false)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).to_string();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Json(json!({"exitCode": out.status.code().unwrap_or(-1), "result": text})).into_response()
        }
        Err(e) => Json(json!({"exitCode": -1, "result": e.to_string()})).into_response(),
    }
}

#[derive(Deserialize)]
struct PathQuery {
    path: Option<String>,
}

/// The bytes of the multipart part named `file`.
fn multipart_file(content_type: &str, body: &[u8]) -> Option<Vec<u8>> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("\r\n--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    // The body starts with the first delimiter (without its leading CRLF).
    let mut at = find(body, &delimiter.as_bytes()[2..], 0)? + delimiter.len() - 2;
    loop {
        let rest = body.get(at..)?;
        if rest.starts_with(b"--") {
            return None;
        }
        let part_start = at + 2; // CRLF after the delimiter
        let headers_end = find(body, b"\r\n\r\n", part_start)?;
        let headers = String::from_utf8_lossy(&body[part_start..headers_end]).to_ascii_lowercase();
        let content_start = headers_end + 4;
        let next = find(body, delimiter.as_bytes(), content_start)?;
        if headers.contains("name=\"file\"") {
            return Some(body[content_start..next].to_vec());
        }
        at = next + delimiter.len();
    }
}

async fn upload(
    State(fake): Shared,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = format!("/toolbox/{id}/files/upload");
    let b = match started(&fake, &id, &route) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(dest) = q.path.filter(|p| !p.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, &route, "path is required");
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Some(bytes) = multipart_file(&content_type, &body) else {
        return error(
            StatusCode::BAD_REQUEST,
            &route,
            "expected multipart/form-data with a `file` field",
        );
    };
    let args: Vec<String> = [
        "exec",
        "-i",
        &b.container,
        "sh",
        "-c",
        "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\"",
        "sh",
        &dest,
    ]
    .map(String::from)
    .to_vec();
    let result = tokio::task::spawn_blocking(move || docker_with_input(&args, bytes, None))
        .await
        .expect("docker task");
    match result {
        Ok((out, _)) if out.status.success() => Json(json!({"message": "File uploaded successfully"})).into_response(),
        Ok((out, _)) => error(
            StatusCode::BAD_REQUEST,
            &route,
            format!("cannot write {dest}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &route, format!("docker: {e}")),
    }
}

async fn download(State(fake): Shared, Path(id): Path<String>, Query(q): Query<PathQuery>) -> Response {
    let route = format!("/toolbox/{id}/files/download");
    let b = match started(&fake, &id, &route) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(src) = q.path.filter(|p| !p.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, &route, "path is required");
    };
    let container = b.container.clone();
    let path = src.clone();
    let out = tokio::task::spawn_blocking(move || {
        docker(&[
            "exec",
            &container,
            "sh",
            "-c",
            "if [ -f \"$1\" ]; then exec cat \"$1\"; else exit 44; fi",
            "sh",
            &path,
        ])
    })
    .await
    .expect("docker task");
    match out {
        Ok(o) if o.status.success() => ([(header::CONTENT_TYPE, "application/octet-stream")], o.stdout).into_response(),
        Ok(o) if o.status.code() == Some(44) => error(StatusCode::NOT_FOUND, &route, format!("file not found: {src}")),
        Ok(o) => error(
            StatusCode::BAD_REQUEST,
            &route,
            format!("cannot read {src}: {}", String::from_utf8_lossy(&o.stderr).trim()),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &route, format!("docker: {e}")),
    }
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
    });
    let app = Router::new()
        .route("/api/sandbox", post(create).get(list))
        .route("/api/sandbox/{id}", get(get_sandbox).delete(delete_sandbox))
        .route("/api/sandbox/{id}/stop", post(stop_sandbox))
        .route("/api/sandbox/{id}/start", post(start_sandbox))
        .route("/toolbox/{id}/process/execute", post(execute))
        .route("/toolbox/{id}/files/upload", post(upload))
        .route("/toolbox/{id}/files/download", get(download))
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

#[cfg(test)]
mod tests {
    use super::multipart_file;

    #[test]
    fn the_file_part_is_found() {
        let body = b"--XYZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nnope\r\n--XYZ\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"a\"\r\nContent-Type: application/octet-stream\r\n\r\n\
line1\r\nline2\r\n--XYZ--\r\n";
        assert_eq!(
            multipart_file("multipart/form-data; boundary=XYZ", body).as_deref(),
            Some(&b"line1\r\nline2"[..])
        );
        assert_eq!(
            multipart_file("multipart/form-data; boundary=XYZ", b"--XYZ--\r\n"),
            None
        );
    }
}
