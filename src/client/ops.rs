//! Client calls of the operations routes: retention, garbage collection and
//! project activity.

use std::time::Duration;

use reqwest::Method;

use super::{Client, ClientResult};
use crate::api::*;

/// Filters of [`Client::activity`].
#[derive(Debug, Clone, Default)]
pub struct ActivityQuery {
    pub before: Option<i64>,
    pub limit: u32,
    pub agent: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
    pub path_prefix: Option<String>,
}

impl Client {
    pub async fn retention(&self, project: &str) -> ClientResult<RetentionInfo> {
        self.json(self.request(Method::GET, &Self::project_route(project, "/retention")))
            .await
    }

    pub async fn set_retention(&self, project: &str, request: &RetentionRequest) -> ClientResult<RetentionInfo> {
        self.json(
            self.request(Method::PUT, &Self::project_route(project, "/retention"))
                .json(request),
        )
        .await
    }

    /// A GC run can take a while on large storage: no request timeout.
    pub async fn gc(&self, dry_run: bool) -> ClientResult<GcReport> {
        self.json(
            self.request(Method::POST, "/gc")
                .json(&GcRequest { dry_run })
                .timeout(Duration::from_secs(24 * 3600)),
        )
        .await
    }

    pub async fn activity(&self, project: &str, q: &ActivityQuery) -> ClientResult<ActivityPage> {
        let mut builder = self
            .request(Method::GET, &Self::project_route(project, "/activity"))
            .query(&[("limit", q.limit)]);
        if let Some(before) = q.before {
            builder = builder.query(&[("before", before)]);
        }
        for (name, value) in [
            ("agent", &q.agent),
            ("since", &q.since),
            ("path_prefix", &q.path_prefix),
        ] {
            if let Some(value) = value {
                builder = builder.query(&[(name, value)]);
            }
        }
        self.json(builder).await
    }
}
