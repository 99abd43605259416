//! `GET /metrics`: the server's counters in the Prometheus text format.
//!
//! Labels carry only route templates (`/api/v1/projects/{project}/commit`),
//! methods, status codes and fixed outcome names: never a project name, a
//! path, a token or anything from a request body, so the page can be shown
//! to whoever runs the monitoring. By default only loopback peers may read
//! it; with `serve --metrics-listen ADDR` it moves to a listener of its own.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client): it
//! writes the exposition format, histograms included, without a global
//! registry.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Service;
use crate::api::{GcReport, VersionStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every metric the server keeps, registered once.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    commits: Family<OutcomeLabels, Counter>,
    blob_bytes: Gauge,
    feed_waiters: Gauge,
    gc_runs: Counter,
    gc_blobs_deleted: Counter,
    gc_bytes_freed: Counter,
    gc_versions_pruned: Counter,
    gc_missing: Gauge,
    gc_corrupt: Gauge,
    gc_last_run: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("contextfs");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            requests.clone(),
        );
        let latency = Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time to answer commit, checkout, blob upload and one-call file upload requests",
            latency.clone(),
        );
        let commits = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "commits",
            "Content versions written by commits, by outcome (clean, merged, lww)",
            commits.clone(),
        );
        let blob_bytes = Gauge::default();
        registry.register(
            "blob_stored_bytes",
            "Bytes in blob storage as of the last GC scan, plus blobs uploaded since",
            blob_bytes.clone(),
        );
        let feed_waiters = Gauge::default();
        registry.register(
            "changefeed_waiters",
            "Change-feed long-polls waiting right now",
            feed_waiters.clone(),
        );
        let gc_runs = Counter::default();
        registry.register(
            "gc_runs",
            "Garbage collection runs that changed storage",
            gc_runs.clone(),
        );
        let gc_blobs_deleted = Counter::default();
        registry.register(
            "gc_blobs_deleted",
            "Blobs garbage collection deleted",
            gc_blobs_deleted.clone(),
        );
        let gc_bytes_freed = Counter::default();
        registry.register(
            "gc_freed_bytes",
            "Bytes garbage collection freed",
            gc_bytes_freed.clone(),
        );
        let gc_versions_pruned = Counter::default();
        registry.register(
            "gc_versions_pruned",
            "Versions retention pruned",
            gc_versions_pruned.clone(),
        );
        let gc_missing = Gauge::default();
        registry.register(
            "gc_missing_blobs",
            "Referenced blobs the last GC run found missing from storage",
            gc_missing.clone(),
        );
        let gc_corrupt = Gauge::default();
        registry.register(
            "gc_corrupt_blobs",
            "Referenced blobs the last GC run found with the wrong size",
            gc_corrupt.clone(),
        );
        let gc_last_run = Gauge::default();
        registry.register(
            "gc_last_run_timestamp_seconds",
            "When the last GC run finished (Unix seconds)",
            gc_last_run.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            commits,
            blob_bytes,
            feed_waiters,
            gc_runs,
            gc_blobs_deleted,
            gc_bytes_freed,
            gc_versions_pruned,
            gc_missing,
            gc_corrupt,
            gc_last_run,
        }
    }
}

/// Keeps the change-feed waiter gauge up while a long-poll waits.
pub struct WaiterGuard<'a>(&'a Gauge);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn commit(&self, status: VersionStatus) {
        self.commits
            .get_or_create(&OutcomeLabels {
                outcome: status.as_str(),
            })
            .inc();
    }

    pub fn feed_waiter(&self) -> WaiterGuard<'_> {
        self.feed_waiters.inc();
        WaiterGuard(&self.feed_waiters)
    }

    pub fn blob_stored(&self, size: u64) {
        self.blob_bytes.inc_by(size as i64);
    }

    pub fn gc_finished(&self, report: &GcReport) {
        if report.dry_run {
            return;
        }
        self.gc_runs.inc();
        self.gc_blobs_deleted.inc_by(report.blobs_deleted);
        self.gc_bytes_freed.inc_by(report.bytes_freed);
        self.gc_versions_pruned.inc_by(report.versions_pruned);
        self.gc_missing.set(report.missing.len() as i64);
        self.gc_corrupt.set(report.corrupt.len() as i64);
        self.blob_bytes
            .set(report.bytes_scanned.saturating_sub(report.bytes_freed) as i64);
        self.gc_last_run.set(chrono::Utc::now().timestamp());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

/// Which latency histogram a request belongs to, by method and route template.
fn operation(method: &Method, route: &str) -> Option<&'static str> {
    let in_project = |tail: &str| route.starts_with("/api/v1/projects/{project}") && route.ends_with(tail);
    match *method {
        Method::POST if in_project("/commit") => Some("commit"),
        Method::GET if in_project("/files/{*path}") => Some("checkout"),
        Method::PUT if in_project("/files/{*path}") => Some("put_file"),
        Method::PUT if in_project("/blobs/{hash}") => Some("blob_put"),
        _ => None,
    }
}

/// Middleware: counts every request by route template and status, and
/// times the few operations with a latency histogram.
pub async fn track(State(service): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let metrics = &service.metrics;
    if let Some(op) = operation(&method, &route) {
        metrics
            .latency
            .get_or_create(&OperationLabels { operation: op })
            .observe(started.elapsed().as_secs_f64());
    }
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method: method.as_str().to_string(),
            status: response.status().as_u16(),
        })
        .inc();
    response
}

fn exposition(service: &Service) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        service.metrics.render(),
    )
        .into_response()
}

/// `GET /metrics` on the main listener: loopback peers only, and not at all
/// when `--metrics-listen` gave metrics a listener of their own.
pub async fn on_main_listener(State(service): State<Arc<Service>>, req: Request) -> Response {
    let local = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(addr)| addr.ip().is_loopback());
    if service.ops.metrics_listen.is_some() || !local {
        return super::error::ApiError::not_found("no such route; see docs/HTTP_API.md").into_response();
    }
    exposition(&service)
}

/// The router of `--metrics-listen`: `/metrics` for any peer that reaches it.
pub fn dedicated_router(service: Arc<Service>) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(s): State<Arc<Service>>| async move { exposition(&s) }),
        )
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(service)
}
