//! The toolbox API of fake_daytona, at `{toolboxProxyUrl}/{sandboxId}`: the
//! routes of `daytona-toolbox-api-client` 0.226 that the official SDKs and
//! contextfs call.
//!
//! - `POST /process/execute` (`ExecuteRequest` `{command, cwd, envs, timeout}`
//!   → `ExecuteResponse` `{exitCode, result}`; the command is fed to `sh` on
//!   standard input, as the daemon does; no `timeout` means 360 s, as in the
//!   daemon; a command past its time gets 408 "command execution timeout");
//! - `POST /files/bulk-upload` (multipart `files[i].path` + `files[i].file`,
//!   what the SDKs' `upload_file(s)` send), `POST /files/upload-v2?path=` and
//!   the older `POST /files/upload?path=` (multipart field `file`);
//! - `POST /files/bulk-download` (`{paths}` → multipart parts named `file`,
//!   or `error` with a JSON body, each with the source path as filename: what
//!   the SDKs' `download_file(s)` read) and `GET /files/download?path=`;
//! - `GET /files?path=` (`[FileInfo]`) and `GET /files/info?path=`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::docker::{self, ReadFile};
use crate::{error, find, multipart, Fake, Sandbox, Shared};

/// The daemon's limit for a command sent without one.
const DEFAULT_EXEC_TIMEOUT: u64 = 360;

pub fn routes() -> Router<std::sync::Arc<Fake>> {
    Router::new()
        .route("/toolbox/{id}/process/execute", post(execute))
        .route("/toolbox/{id}/files/upload", post(upload_one))
        .route("/toolbox/{id}/files/upload-v2", post(upload_one))
        .route("/toolbox/{id}/files/bulk-upload", post(bulk_upload))
        .route("/toolbox/{id}/files/download", get(download))
        .route("/toolbox/{id}/files/bulk-download", post(bulk_download))
        .route("/toolbox/{id}/files", get(list_files))
        .route("/toolbox/{id}/files/info", get(file_info))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("docker task")
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
    envs: Option<BTreeMap<String, String>>,
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
    for (k, v) in req.envs.iter().flatten() {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    args.push(b.container.clone());
    let timeout = req.timeout.filter(|t| *t > 0).unwrap_or(DEFAULT_EXEC_TIMEOUT);
    // Like Daytona's daemon: the command goes to the shell on standard input,
    // standard output and error come back combined.
    args.extend([
        "sh".into(),
        "-c".into(),
        format!("exec timeout -s KILL {timeout} sh 2>&1"),
    ]);
    let input = req.command.into_bytes();
    let limit = Duration::from_secs(timeout);
    match blocking(move || docker::docker_with_input(&args, input, Some(limit))).await {
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

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `POST /files/upload-v2?path=` (and the older `/files/upload`): one file, multipart field `file`.
async fn upload_one(
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
    let file =
        multipart::parse(&content_type(&headers), &body).and_then(|parts| parts.into_iter().find(|p| p.name == "file"));
    let Some(file) = file else {
        return error(
            StatusCode::BAD_REQUEST,
            &route,
            "expected multipart/form-data with a `file` field",
        );
    };
    let container = b.container.clone();
    let target = dest.clone();
    match blocking(move || docker::write_file(&container, &target, file.data)).await {
        Ok(()) => {
            let name = dest.rsplit('/').next().unwrap_or_default().to_string();
            Json(json!({"name": name, "path": dest, "type": "file"})).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &route, e),
    }
}

/// `POST /files/bulk-upload`: `files[i].path` names where `files[i].file` goes.
async fn bulk_upload(State(fake): Shared, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let route = format!("/toolbox/{id}/files/bulk-upload");
    let b = match started(&fake, &id, &route) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(parts) = multipart::parse(&content_type(&headers), &body) else {
        return error(StatusCode::BAD_REQUEST, &route, "expected multipart/form-data");
    };
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for part in parts {
        if let Some(index) = part.name.strip_suffix(".path") {
            paths.insert(index.to_string(), String::from_utf8_lossy(&part.data).to_string());
        } else if let Some(index) = part.name.strip_suffix(".file") {
            files.insert(index.to_string(), part.data);
        }
    }
    if paths.is_empty() {
        return error(StatusCode::BAD_REQUEST, &route, "no files[i].path fields");
    }
    let container = b.container.clone();
    let (written, errors) = blocking(move || {
        let mut written = Vec::new();
        let mut errors = Vec::new();
        for (index, dest) in paths {
            match files.remove(&index) {
                None => errors.push(format!("{index}: no file for {dest}")),
                Some(data) => {
                    let size = data.len();
                    match docker::write_file(&container, &dest, data) {
                        Ok(()) => written.push(json!({"path": dest, "bytes": size})),
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        (written, errors)
    })
    .await;
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, Json(json!({"files": written, "errors": errors}))).into_response()
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
    match blocking(move || docker::read_file(&container, &path)).await {
        ReadFile::Bytes(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        ReadFile::NotFound => error(StatusCode::NOT_FOUND, &route, format!("file not found: {src}")),
        ReadFile::Failed(e) => error(StatusCode::BAD_REQUEST, &route, e),
    }
}

#[derive(Deserialize)]
struct BulkDownload {
    paths: Vec<String>,
}

/// `POST /files/bulk-download`: one multipart part per path, `file` or `error`.
async fn bulk_download(State(fake): Shared, Path(id): Path<String>, Json(req): Json<BulkDownload>) -> Response {
    let route = format!("/toolbox/{id}/files/bulk-download");
    let b = match started(&fake, &id, &route) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let container = b.container.clone();
    let results = blocking(move || {
        req.paths
            .into_iter()
            .map(|p| {
                let read = docker::read_file(&container, &p);
                (p, read)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut bodies: Vec<(String, bool, Vec<u8>)> = Vec::new();
    for (path, read) in results {
        match read {
            ReadFile::Bytes(bytes) => bodies.push((path, true, bytes)),
            ReadFile::NotFound | ReadFile::Failed(_) => {
                let message = match read {
                    ReadFile::Failed(e) => e,
                    _ => format!("file not found: {path}"),
                };
                let status = if message.starts_with("file not found") {
                    404
                } else {
                    400
                };
                let body = json!({"message": message, "statusCode": status, "code": "FILE_NOT_FOUND", "source": path});
                bodies.push((path, false, body.to_string().into_bytes()));
            }
        }
    }
    let parts: Vec<multipart::OutPart<'_>> = bodies
        .iter()
        .map(|(path, ok, data)| {
            if *ok {
                ("file", Some(path.as_str()), Some("application/octet-stream"), &data[..])
            } else {
                ("error", Some(path.as_str()), Some("application/json"), &data[..])
            }
        })
        .collect();
    let (content_type, body) = multipart::build(&parts);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn file_info_json(dir: &str, e: &docker::Entry) -> Value {
    let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
    let modified = chrono::DateTime::from_timestamp(e.mtime, 0).unwrap_or_default();
    let kind = if e.is_dir {
        'd'
    } else if e.is_symlink {
        'L'
    } else {
        '-'
    };
    json!({
        "name": e.name,
        "path": path,
        "isDir": e.is_dir,
        "size": e.size,
        "mode": format!("{kind}{}", docker::permissions(e.mode)),
        "permissions": format!("{:04o}", e.mode),
        "owner": e.uid.to_string(),
        "group": e.gid.to_string(),
        "modTime": modified.format("%Y-%m-%d %H:%M:%S %z UTC").to_string(),
        "modifiedAt": modified.to_rfc3339(),
    })
}

/// `GET /files?path=`: the folder's entries as `FileInfo`.
async fn list_files(State(fake): Shared, Path(id): Path<String>, Query(q): Query<PathQuery>) -> Response {
    let route = format!("/toolbox/{id}/files");
    let b = match started(&fake, &id, &route) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let dir = q.path.filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
    let container = b.container.clone();
    let listed = dir.clone();
    match blocking(move || docker::list_dir(&container, &listed)).await {
        Ok(Some(entries)) => Json(entries.iter().map(|e| file_info_json(&dir, e)).collect::<Vec<_>>()).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &route, format!("not a directory: {dir}")),
        Err(e) => error(StatusCode::BAD_REQUEST, &route, e),
    }
}

/// `GET /files/info?path=`: one entry's `FileInfo`.
async fn file_info(State(fake): Shared, Path(id): Path<String>, Query(q): Query<PathQuery>) -> Response {
    let route = format!("/toolbox/{id}/files/info");
    let b = match started(&fake, &id, &route) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(path) = q.path.filter(|p| !p.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, &route, "path is required");
    };
    let trimmed = path.trim_end_matches('/');
    let (dir, name) = match trimmed.rsplit_once('/') {
        Some((d, n)) => (if d.is_empty() { "/" } else { d }.to_string(), n.to_string()),
        None => (".".to_string(), trimmed.to_string()),
    };
    let container = b.container.clone();
    let listed = dir.clone();
    match blocking(move || docker::list_dir(&container, &listed)).await {
        Ok(Some(entries)) => match entries.iter().find(|e| e.name == name) {
            Some(e) => Json(file_info_json(&dir, e)).into_response(),
            None => error(StatusCode::NOT_FOUND, &route, format!("file not found: {path}")),
        },
        Ok(None) => error(StatusCode::NOT_FOUND, &route, format!("file not found: {path}")),
        Err(e) => error(StatusCode::BAD_REQUEST, &route, e),
    }
}
