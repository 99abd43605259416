//! WebDAV at `/dav/{project}/` (issue 14), for desktops (Finder, Explorer,
//! GNOME Files), davfs2 and rclone. docs/WEBDAV.md is the user's side.
//!
//! The protocol (PROPFIND, GET with ranges, MKCOL, MOVE, COPY, DELETE,
//! LOCK/UNLOCK) is the `dav-server` crate's, over [`fs::ProjectFs`], a
//! `DavFileSystem` on the service itself. Before a request reaches it, the
//! gate here authenticates (HTTP Basic, the token as the password), refuses
//! bad paths (400), writes by read-only tokens and into the published
//! `skills/` (403), PROPFIND of infinite depth (403) and oversized bodies
//! (413). PUT does not go through the crate: [`put`] streams the body into a
//! commit whose base is the `If-Match` version, so edits merge.
//!
//! Locks ([`locks`]) and dead properties ([`props`]) live in the metadata
//! database, so every instance on one PostgreSQL sees the same ones.

mod auth;
mod file;
mod fs;
mod locks;
mod mtime;
mod paths;
mod props;
mod put;
mod skills;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use dav_server::fs::FsError;
use dav_server::{DavHandler, DavMethod, DavMethodSet};

use crate::model::WsPath;
use crate::server::error::ApiError;
use crate::server::service::Service;
use fs::ProjectFs;
use locks::{DbLocks, MAX_LOCK_SECONDS};
use paths::{parse_destination, parse_request_path, DavPathError};
use skills::{SkillsView, SKILLS_DIR};

/// A refused WebDAV request: a status and a plain-text reason.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct DavRefusal {
    pub status: StatusCode,
    pub message: String,
}

impl DavRefusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn from_fs(e: FsError) -> Self {
        let status = match e {
            FsError::NotFound => StatusCode::NOT_FOUND,
            FsError::Forbidden => StatusCode::FORBIDDEN,
            FsError::Exists => StatusCode::CONFLICT,
            FsError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, format!("{e:?}"))
    }
}

impl From<ApiError> for DavRefusal {
    fn from(e: ApiError) -> Self {
        if e.status.is_server_error() {
            tracing::error!(code = e.code.as_str(), message = ?e.message, "webdav request failed");
        }
        Self::new(e.status, e.message)
    }
}

impl From<DavPathError> for DavRefusal {
    fn from(e: DavPathError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.to_string())
    }
}

impl IntoResponse for DavRefusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.message),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(auth::REALM_CHALLENGE),
            );
        }
        crate::server::error::with_retry_after(response)
    }
}

/// One WebDAV request, past the gate.
pub struct DavRequest {
    pub fs: ProjectFs,
    pub locks: Box<DbLocks>,
    /// Lock owner: the token's id, so a lock taken with one token is not
    /// released by another.
    pub principal: String,
}

/// Routes `/dav/{project}/...`; merged into the server's router.
pub fn router() -> Router<Arc<Service>> {
    Router::new()
        .route("/dav", any(handle))
        .route("/dav/", any(handle))
        .route("/dav/{*rest}", any(handle))
}

async fn handle(State(service): State<Arc<Service>>, req: Request) -> Response {
    match serve(service, req).await {
        Ok(response) => response,
        Err(refusal) => {
            tracing::debug!(status = %refusal.status, message = %refusal.message, "webdav request refused");
            refusal.into_response()
        }
    }
}

fn is_write(method: &Method) -> bool {
    matches!(
        method.as_str(),
        "PUT" | "DELETE" | "MKCOL" | "MOVE" | "COPY" | "PROPPATCH" | "LOCK" | "UNLOCK"
    )
}

/// The published skills as `skills/`, unless the project has its own
/// `skills` entry (then that one is shown, as in a mount).
async fn skills_view(service: &Service, project_id: i64) -> Result<Option<Arc<SkillsView>>, DavRefusal> {
    let own =
        WsPath::parse(SKILLS_DIR).map_err(|e| DavRefusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if service
        .store
        .node_at(project_id, &own)
        .await
        .map_err(ApiError::from)?
        .is_some_and(|n| !n.deleted)
    {
        return Ok(None);
    }
    Ok(Some(Arc::new(SkillsView::new(&service.skills().await?))))
}

/// The first `Second-N` of a `Timeout` header; `None` for `Infinite` or none.
fn lock_seconds(header: Option<&str>) -> Option<u64> {
    header?
        .split(',')
        .map(str::trim)
        .find_map(|t| t.strip_prefix("Second-").and_then(|n| n.parse().ok()))
}

fn touches_skills(path: &Option<WsPath>) -> bool {
    path.as_ref()
        .is_some_and(|p| p.as_str() == SKILLS_DIR || p.as_str().starts_with("skills/"))
}

async fn serve(service: Arc<Service>, mut req: Request) -> Result<Response, DavRefusal> {
    let target = parse_request_path(req.uri().path())?;
    let credentials = auth::credentials(req.headers()).ok_or_else(|| {
        DavRefusal::new(
            StatusCode::UNAUTHORIZED,
            "sign in with the project token as the password (HTTP Basic)",
        )
    })?;
    let caller = service.authenticate(&credentials.secret).await?;
    let project = service.project_for(&caller, &target.project, false).await?;
    let method = req.method().clone();
    if matches!(method.as_str(), "PATCH" | "POST") {
        return Err(DavRefusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "WebDAV writes whole files with PUT",
        ));
    }
    let writes = is_write(&method);
    if writes && !caller.may_write() {
        return Err(DavRefusal::new(
            StatusCode::FORBIDDEN,
            format!("token {} is read-only for project {}", caller.token_id, project.name),
        ));
    }
    let destination = match req.headers().get("destination") {
        Some(value) if matches!(method.as_str(), "MOVE" | "COPY") => {
            let value = value
                .to_str()
                .map_err(|_| DavRefusal::new(StatusCode::BAD_REQUEST, "the Destination header is not ASCII"))?;
            Some(parse_destination(value, &target.project)?)
        }
        _ => None,
    };
    let skills =
        if target.path.is_none() || touches_skills(&target.path) || destination.as_ref().is_some_and(touches_skills) {
            skills_view(&service, project.id).await?
        } else {
            None
        };
    let agent = Some(
        credentials
            .user
            .filter(|u| u.len() <= 64 && !u.chars().any(crate::model::is_forbidden_in_name))
            .unwrap_or_else(|| "webdav".to_string()),
    );
    let fs = ProjectFs {
        service: service.clone(),
        caller: caller.clone(),
        project,
        agent,
        skills,
        props: Default::default(),
    };
    let read_only = |p: &Option<WsPath>| p.as_ref().is_some_and(|p| fs.in_skills(p));
    let source_is_written = writes && method.as_str() != "COPY";
    if (source_is_written && read_only(&target.path)) || destination.as_ref().is_some_and(read_only) {
        return Err(DavRefusal::new(StatusCode::FORBIDDEN, "skills/ is read-only"));
    }
    normalise_headers(&method, req.headers_mut())?;
    let ctx = DavRequest {
        locks: Box::new(DbLocks::new(service.store.clone(), fs.project.id, &fs.project.name)),
        principal: caller.token_id.clone(),
        fs,
    };
    if method == Method::PUT {
        let path = target
            .path
            .clone()
            .ok_or_else(|| DavRefusal::new(StatusCode::METHOD_NOT_ALLOWED, "the project root is a folder"))?;
        return put::put(&ctx, path, req).await;
    }
    if method == Method::DELETE && target.path.is_none() {
        return Err(DavRefusal::new(
            StatusCode::FORBIDDEN,
            "the project root cannot be deleted",
        ));
    }
    let req = with_small_body(req, service.limits.max_request_bytes).await?;
    Ok(run_dav_server(ctx, &target.project, &method, req).await)
}

/// Refuses a PROPFIND of infinite depth, caps lock times, and makes a
/// missing `Overwrite` mean "do not overwrite".
fn normalise_headers(method: &Method, headers: &mut axum::http::HeaderMap) -> Result<(), DavRefusal> {
    match method.as_str() {
        "PROPFIND" => {
            let depth = headers.get("depth").and_then(|v| v.to_str().ok()).map(str::trim);
            if !matches!(depth, Some("0") | Some("1")) {
                // RFC 4918 §9.1: no header means infinity, which would load
                // the whole tree at once.
                return Err(DavRefusal::new(
                    StatusCode::FORBIDDEN,
                    "PROPFIND needs Depth: 0 or 1 (infinity is not supported)",
                ));
            }
        }
        "LOCK" => {
            // A lock a client forgets (or asks to keep forever) must not
            // block the file for good.
            let asked = headers.get("timeout").and_then(|v| v.to_str().ok());
            if lock_seconds(asked).is_none_or(|s| s > MAX_LOCK_SECONDS) {
                headers.insert(
                    "timeout",
                    HeaderValue::from_str(&format!("Second-{MAX_LOCK_SECONDS}"))
                        .map_err(|e| DavRefusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
                );
            }
        }
        "MOVE" | "COPY" if !headers.contains_key("overwrite") => {
            // Never replace an existing destination unless asked to.
            headers.insert("overwrite", HeaderValue::from_static("F"));
        }
        _ => {}
    }
    Ok(())
}

/// The request with its body read into memory: methods other than PUT carry
/// at most a small XML body (413 over `limit`).
async fn with_small_body(req: Request, limit: usize) -> Result<Request, DavRefusal> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            DavRefusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over the limit of {limit} bytes"),
            )
        } else {
            DavRefusal::new(StatusCode::BAD_REQUEST, "the request body could not be read")
        }
    })?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Hands the request to dav-server over this request's `ProjectFs`.
async fn run_dav_server(ctx: DavRequest, project: &str, method: &Method, req: Request) -> Response {
    // Everything but SabreDAV's partial PATCH, so `Allow` does not offer it.
    let mut methods = DavMethodSet::all();
    methods.remove(DavMethod::Patch);
    let handler = DavHandler::builder()
        .methods(methods)
        .filesystem(Box::new(ctx.fs))
        .locksystem(ctx.locks)
        .principal(ctx.principal)
        .strip_prefix(format!("/dav/{project}"))
        .build_handler();
    let mut response = handler.handle(req).await.into_response();
    if method == Method::OPTIONS {
        // dav-server also advertises SabreDAV partial updates (PATCH),
        // which this server refuses.
        response.headers_mut().insert("dav", HeaderValue::from_static("1, 2"));
    }
    response
}
