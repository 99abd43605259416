//! Operations: retention policies, garbage collection on demand, and a
//! project's activity (what changed, by whom, newest first).

use super::Service;
use crate::api::*;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::store::ops::ActivityFilter;

/// Longest `keep_days` accepted (a century).
const MAX_KEEP_DAYS: i64 = 36_500;
/// Most `keep_versions` accepted.
const MAX_KEEP_VERSIONS: i64 = 1_000_000;

/// A limit of a retention request, checked: 1..=max, with the reason when not.
fn retention_limit(field: &str, raw: Option<i64>, max: i64) -> Result<Option<u32>, ApiError> {
    match raw {
        None => Ok(None),
        Some(n) if n <= 0 => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!(
                "{field} must be at least 1 (got {n}): a policy of 0 would prune every version but the head; \
                 leave it out to keep versions regardless of {}",
                if field == "keep_days" { "age" } else { "count" }
            ),
        )),
        Some(n) if n > max => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("{field} must be at most {max} (got {n})"),
        )),
        Some(n) => Ok(Some(n as u32)),
    }
}

impl Service {
    async fn retention_info(&self, project: &str, project_id: i64) -> Result<RetentionInfo, ApiError> {
        let own = self.store.retention(project_id).await?;
        let (effective, source) = match (own, self.ops.default_retention) {
            (Some(p), _) => (Some(p), "project"),
            (None, Some(d)) => (Some(d), "server_default"),
            (None, None) => (None, "none"),
        };
        Ok(RetentionInfo {
            project: project.to_string(),
            policy: own,
            effective,
            source: source.to_string(),
        })
    }

    pub async fn retention(&self, caller: &Caller, project: &str) -> Result<RetentionInfo, ApiError> {
        let row = self.project_for(caller, project, false).await?;
        self.retention_info(&row.name, row.id).await
    }

    /// Sets the project's policy; a request with neither limit clears it
    /// (the server default applies again).
    pub async fn set_retention(
        &self,
        caller: &Caller,
        project: &str,
        req: RetentionRequest,
    ) -> Result<RetentionInfo, ApiError> {
        caller.require_admin()?;
        let policy = RetentionPolicy {
            keep_days: retention_limit("keep_days", req.keep_days, MAX_KEEP_DAYS)?,
            keep_versions: retention_limit("keep_versions", req.keep_versions, MAX_KEEP_VERSIONS)?,
        };
        let row = self.project_for(caller, project, true).await?;
        let meta = super::meta(caller, None, None)?;
        let policy = (!policy.is_empty()).then_some(policy);
        self.store.set_retention(row.id, policy, meta).await?;
        self.retention_info(&row.name, row.id).await
    }

    pub async fn gc(&self, caller: &Caller, req: GcRequest) -> Result<GcReport, ApiError> {
        caller.require_admin()?;
        Ok(crate::server::gc::run(self, req.dry_run, &caller.token_id).await?)
    }

    pub async fn activity(
        &self,
        caller: &Caller,
        project: &str,
        mut filter: ActivityFilter,
    ) -> Result<ActivityPage, ApiError> {
        let row = self.project_for(caller, project, false).await?;
        filter.limit = filter.limit.clamp(1, 1000);
        if let Some(prefix) = filter.path_prefix.take() {
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty() {
                let path = crate::model::WsPath::parse(prefix)
                    .map_err(|e| ApiError::bad_request(ErrorCode::InvalidPath, format!("path_prefix: {e}")))?;
                filter.path_prefix = Some(path.as_str().to_string());
            }
        }
        let limit = filter.limit;
        let entries = self.store.activity(row.id, filter).await?;
        let next_before = match entries.last() {
            Some(last) if entries.len() as u32 == limit => Some(last.seq),
            _ => None,
        };
        Ok(ActivityPage { entries, next_before })
    }
}

/// `since` as the API takes it: RFC 3339, to Unix milliseconds.
pub fn parse_since(raw: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            ApiError::bad_request(
                ErrorCode::InvalidQuery,
                format!("since must be an RFC 3339 time such as 2026-01-31T12:00:00Z ({e})"),
            )
        })
}
