//! HTTP routes: each handler parses its request, calls the service and shapes
//! the response. docs/HTTP_API.md documents every route listed here.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::auth::Caller;
use super::blobs::ByteStream;
use super::chunk_routes::{
    get_manifest, manifest_body_limit, missing_blobs, put_manifest, requested_range, served_response,
};
use super::error::ApiError;
use super::service::{PutFileOptions, Service};
use crate::api::*;
use crate::model::{BlobHash, WsPath};

type Shared = State<Arc<Service>>;

/// `Json` whose rejections are API errors: 400 naming the field, or 413.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            "the request body is over the server's limit",
        )
    } else {
        ApiError::bad_request(ErrorCode::InvalidBody, rejection.body_text())
    }
}

/// `Query` whose rejections are 400s naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(ErrorCode::InvalidQuery, e.body_text()))
    }
}

/// `Path` whose rejections (e.g. a segment that is not UTF-8) are API errors.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| {
                let code = if e.status().is_client_error() {
                    ErrorCode::InvalidPath
                } else {
                    ErrorCode::Internal
                };
                ApiError::new(e.status(), code, e.body_text())
            })
    }
}

fn ws_path(raw: &str) -> Result<WsPath, ApiError> {
    WsPath::parse(raw).map_err(|e| ApiError::bad_request(ErrorCode::InvalidPath, e.to_string()))
}

fn blob_hash(raw: &str) -> Result<BlobHash, ApiError> {
    BlobHash::parse(raw).map_err(|e| ApiError::bad_request(ErrorCode::InvalidHash, e.to_string()))
}

fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

pub fn router(service: Arc<Service>) -> Router {
    let json_limit = service.limits.max_request_bytes;
    let project = Router::new()
        .route("/", get(get_project))
        .route("/tokens", post(create_token).get(list_tokens))
        .route("/tree", get(tree))
        .route(
            "/blobs/{hash}",
            put(put_blob).get(get_blob).layer(DefaultBodyLimit::disable()),
        )
        .route("/blobs/missing", post(missing_blobs))
        .route(
            "/manifests/{hash}",
            put(put_manifest)
                .get(get_manifest)
                .layer(DefaultBodyLimit::max(manifest_body_limit(&service.limits))),
        )
        .route(
            "/files/{*path}",
            get(checkout).put(put_file).layer(DefaultBodyLimit::disable()),
        )
        .route("/commit", post(commit))
        .route("/commit/batch", post(commit_batch))
        .route("/mkdir", post(mkdir))
        .route("/rename", post(rename))
        .route("/delete", post(delete_path))
        .route("/history", get(history))
        .route("/rollback", post(rollback))
        .route("/changes", get(changes))
        .route("/audit", get(audit))
        .merge(super::ops_routes::project_routes());
    let api = Router::new()
        .route("/health", get(health))
        .route("/whoami", get(whoami))
        .route("/projects", post(create_project).get(list_projects))
        .nest("/projects/{project}", project)
        .route("/tokens/{id}", delete(revoke_token))
        .route("/skills", get(list_skills).post(publish_skills))
        .route(
            "/skills/blobs/{hash}",
            put(put_skill_blob)
                .get(get_skill_blob)
                .layer(DefaultBodyLimit::disable()),
        )
        .merge(super::ops_routes::api_routes());
    Router::new()
        .nest(API_PREFIX, api)
        .route("/metrics", get(super::metrics::on_main_listener))
        // WebDAV at /dav/{project}/ (docs/WEBDAV.md).
        .merge(super::dav::router())
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this route does not take that method; see docs/HTTP_API.md",
            )
        })
        .fallback(|| async { ApiError::not_found("no such route; see docs/HTTP_API.md") })
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            super::metrics::track,
        ))
        .with_state(service)
}

/// How long `GET /health` waits for the database before it answers 503.
const HEALTH_DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `200 {"status": "ok"}`, or `503` (code `unavailable`) while the database
/// cannot be reached: a load balancer then sends clients elsewhere, and the
/// mount keeps its changes queued.
async fn health(State(s): Shared) -> Result<Json<Health>, ApiError> {
    match tokio::time::timeout(HEALTH_DB_TIMEOUT, s.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(match ApiError::from(e) {
                e if e.status.is_server_error() => ApiError::unavailable(e.message),
                e => e,
            })
        }
        Err(_) => {
            return Err(ApiError::unavailable(format!(
                "the metadata database did not answer within {} s",
                HEALTH_DB_TIMEOUT.as_secs()
            )))
        }
    }
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        limits: Some(Limits {
            max_file_bytes: s.limits.max_file_bytes,
            max_blob_bytes: s.limits.max_blob_bytes,
            chunked_min: crate::chunks::CHUNKED_MIN,
        }),
    }))
}

async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        project: caller.project.clone(),
        access: caller.access,
        admin: caller.admin,
        token_id: caller.token_id,
    })
}

async fn create_project(
    State(s): Shared,
    caller: Caller,
    ApiJson(req): ApiJson<CreateProjectRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((StatusCode::CREATED, Json(s.create_project(&caller, req).await?)))
}

async fn list_projects(State(s): Shared, caller: Caller) -> Result<Json<Vec<ProjectInfo>>, ApiError> {
    Ok(Json(s.list_projects(&caller).await?))
}

async fn get_project(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> Result<Json<ProjectInfo>, ApiError> {
    Ok(Json(s.project(&caller, &project).await?))
}

async fn create_token(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((StatusCode::CREATED, Json(s.create_token(&caller, &project, req).await?)))
}

async fn list_tokens(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(s.list_tokens(&caller, &project).await?))
}

async fn revoke_token(State(s): Shared, caller: Caller, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    s.revoke_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct TreeQuery {
    prefix: Option<String>,
    #[serde(default = "yes")]
    recursive: bool,
}

fn yes() -> bool {
    true
}

async fn tree(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiQuery(q): ApiQuery<TreeQuery>,
) -> Result<Json<TreeListing>, ApiError> {
    let prefix = q.prefix.as_deref().filter(|p| !p.is_empty()).map(ws_path).transpose()?;
    Ok(Json(s.tree(&caller, &project, prefix.as_ref(), q.recursive).await?))
}

async fn put_blob(
    State(s): Shared,
    caller: Caller,
    ApiPath((project, hash)): ApiPath<(String, String)>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let hash = blob_hash(&hash)?;
    let receipt = s.put_blob(&caller, &project, &hash, body_stream(body)).await?;
    let status = if receipt.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(receipt)))
}

fn stream_response(size: u64, stream: ByteStream, mut headers: HeaderMap) -> Response {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    (headers, Body::from_stream(stream)).into_response()
}

async fn get_blob(
    State(s): Shared,
    caller: Caller,
    ApiPath((project, hash)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hash = blob_hash(&hash)?;
    let served = s.get_blob(&caller, &project, &hash, requested_range(&headers)).await?;
    Ok(served_response(served, blob_headers(&hash)))
}

fn blob_headers(hash: &BlobHash) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(hash.as_str()) {
        headers.insert(HEADER_HASH, v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{hash}\"")) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    headers
}

#[derive(Deserialize)]
struct CheckoutQuery {
    version: Option<i64>,
}

async fn checkout(
    State(s): Shared,
    caller: Caller,
    ApiPath((project, path)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<CheckoutQuery>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = ws_path(&path)?;
    let range = requested_range(&request_headers);
    let (info, served) = s.checkout(&caller, &project, &path, q.version, range).await?;
    let mut headers = blob_headers(&info.hash);
    headers.remove(header::CACHE_CONTROL);
    headers.insert(HEADER_NODE, HeaderValue::from(info.node));
    headers.insert(HEADER_VERSION, HeaderValue::from(info.version));
    headers.insert(HEADER_KIND, HeaderValue::from_static(info.kind.as_str()));
    headers.insert(HEADER_MODE, HeaderValue::from(info.mode));
    headers.insert(HEADER_STATUS, HeaderValue::from_static(info.status.as_str()));
    if let Ok(mtime) = HeaderValue::from_str(info.modified_at()) {
        headers.insert(HEADER_MTIME, mtime);
    }
    if let Some(Ok(atime)) = info.atime.as_deref().map(HeaderValue::from_str) {
        headers.insert(HEADER_ATIME, atime);
    }
    Ok(served_response(served, headers))
}

fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map(str::to_string).map_err(|_| {
                ApiError::bad_request(ErrorCode::InvalidHeader, format!("header {name} is not visible ASCII"))
            })
        })
        .transpose()
}

/// The body's `Content-Length`, when the request sent one (hyper holds the
/// body to it: a shorter body fails as cut off).
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

async fn put_file(
    State(s): Shared,
    caller: Caller,
    ApiPath((project, path)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<VersionInfo>, ApiError> {
    let path = ws_path(&path)?;
    let base = header_text(&headers, HEADER_BASE_VERSION)?
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ApiError::bad_request(
                    ErrorCode::InvalidHeader,
                    format!("header {HEADER_BASE_VERSION} must be a version number, got {v:?}"),
                )
            })
        })
        .transpose()?;
    // Checked before the body is read: a malformed time stores nothing.
    let time = |name: &str| -> Result<Option<String>, ApiError> {
        let Some(raw) = header_text(&headers, name)? else {
            return Ok(None);
        };
        crate::model::parse_file_time(&raw)
            .map(|nanos| Some(crate::model::format_file_time(nanos)))
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidHeader, format!("header {name}: {e}")))
    };
    let options = PutFileOptions {
        base_version: base,
        agent_id: header_text(&headers, HEADER_AGENT)?,
        message: header_text(&headers, HEADER_MESSAGE)?,
        mtime: time(HEADER_MTIME)?,
        atime: time(HEADER_ATIME)?,
        content_length: declared_length(&headers),
    };
    Ok(Json(
        s.put_file(&caller, &project, path, options, body_stream(body)).await?,
    ))
}

async fn commit(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<CommitRequest>,
) -> Result<Json<VersionInfo>, ApiError> {
    Ok(Json(s.commit(&caller, &project, req).await?))
}

async fn commit_batch(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<BatchCommitRequest>,
) -> Result<Json<BatchCommitResponse>, ApiError> {
    let results = s.commit_batch(&caller, &project, req.commits).await?;
    let results = results
        .into_iter()
        .map(|r| match r {
            Ok(v) => BatchCommitResult {
                version: Some(v),
                error: None,
            },
            Err(e) => BatchCommitResult {
                version: None,
                error: Some(e.into_batch_entry()),
            },
        })
        .collect();
    Ok(Json(BatchCommitResponse { results }))
}

async fn mkdir(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<MkdirRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (info, created) = s.mkdir(&caller, &project, req).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(info)))
}

async fn rename(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<RenameRequest>,
) -> Result<Json<VersionInfo>, ApiError> {
    Ok(Json(s.rename(&caller, &project, req).await?))
}

async fn delete_path(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<DeleteRequest>,
) -> Result<Json<DeleteResponse>, ApiError> {
    Ok(Json(s.delete(&caller, &project, req).await?))
}

#[derive(Deserialize)]
struct HistoryQuery {
    path: String,
    before: Option<i64>,
    limit: Option<u32>,
}

async fn history(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let path = ws_path(&q.path)?;
    Ok(Json(s.history(&caller, &project, &path, q.before, q.limit).await?))
}

async fn rollback(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> Result<Json<VersionInfo>, ApiError> {
    Ok(Json(s.rollback(&caller, &project, req).await?))
}

#[derive(Deserialize)]
struct ChangesQuery {
    #[serde(default)]
    since: i64,
    #[serde(default)]
    timeout_ms: u64,
    limit: Option<u32>,
}

async fn changes(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> Result<Json<ChangesPage>, ApiError> {
    Ok(Json(
        s.changes(&caller, &project, q.since, Duration::from_millis(q.timeout_ms), q.limit)
            .await?,
    ))
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    since: i64,
    limit: Option<u32>,
}

async fn audit(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    Ok(Json(s.audit(&caller, &project, q.since, q.limit).await?))
}

async fn list_skills(State(s): Shared, _caller: Caller) -> Result<Json<SkillsListing>, ApiError> {
    Ok(Json(s.skills().await?))
}

async fn publish_skills(
    State(s): Shared,
    caller: Caller,
    ApiJson(req): ApiJson<PublishSkillsRequest>,
) -> Result<Json<SkillsListing>, ApiError> {
    Ok(Json(s.publish_skills(&caller, req).await?))
}

async fn put_skill_blob(
    State(s): Shared,
    caller: Caller,
    ApiPath(hash): ApiPath<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let hash = blob_hash(&hash)?;
    let receipt = s.put_skill_blob(&caller, &hash, body_stream(body)).await?;
    Ok((
        if receipt.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(receipt),
    ))
}

async fn get_skill_blob(
    State(s): Shared,
    _caller: Caller,
    ApiPath(hash): ApiPath<String>,
) -> Result<Response, ApiError> {
    let hash = blob_hash(&hash)?;
    let (size, stream) = s.get_skill_blob(&hash).await?;
    Ok(stream_response(size, stream, blob_headers(&hash)))
}
