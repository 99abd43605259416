//! HTTP routes of the operations features (docs/HTTP_API.md §9): retention,
//! garbage collection and project activity. Merged into `routes::router`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::routes::{ApiJson, ApiPath, ApiQuery};
use super::service::{parse_since, Service};
use super::store::ops::ActivityFilter;
use crate::api::*;

type Shared = State<Arc<Service>>;

/// Routes under `/api/v1/projects/{project}`.
pub fn project_routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/retention", get(get_retention).put(put_retention))
        .route("/activity", get(activity))
}

/// Routes under `/api/v1`.
pub fn api_routes() -> Router<Arc<Service>> {
    Router::new().route("/gc", post(gc))
}

async fn get_retention(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> Result<Json<RetentionInfo>, ApiError> {
    Ok(Json(s.retention(&caller, &project).await?))
}

async fn put_retention(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<RetentionRequest>,
) -> Result<Json<RetentionInfo>, ApiError> {
    Ok(Json(s.set_retention(&caller, &project, req).await?))
}

/// The body may be left out: a real run.
async fn gc(State(s): Shared, caller: Caller, body: axum::body::Bytes) -> Result<Json<GcReport>, ApiError> {
    let req: GcRequest = if body.iter().all(u8::is_ascii_whitespace) {
        GcRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(ErrorCode::InvalidBody, e.to_string()))?
    };
    Ok(Json(s.gc(&caller, req).await?))
}

#[derive(Deserialize)]
struct ActivityQuery {
    before: Option<i64>,
    limit: Option<u32>,
    agent: Option<String>,
    since: Option<String>,
    path_prefix: Option<String>,
}

async fn activity(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiQuery(q): ApiQuery<ActivityQuery>,
) -> Result<Json<ActivityPage>, ApiError> {
    let filter = ActivityFilter {
        before: q.before,
        agent: q.agent.filter(|a| !a.is_empty()),
        since: q
            .since
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(parse_since)
            .transpose()?,
        path_prefix: q.path_prefix.filter(|p| !p.is_empty()),
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(s.activity(&caller, &project, filter).await?))
}
