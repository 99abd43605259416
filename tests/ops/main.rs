//! Operating contextfs (issue 17): blob garbage collection, retention,
//! metrics, project history and the machine-readable CLI, against a real
//! `contextfs serve`.
//!
//! Every test runs on SQLite and a blob folder by default; `scripts/test`
//! runs this suite again with `CONTEXTFS_TEST_DATABASE` (PostgreSQL) and
//! `CONTEXTFS_TEST_BLOBS=s3`, where the test servers keep their metadata in
//! PostgreSQL and their blobs in S3.

#[path = "../common/mod.rs"]
mod common;

mod gc;
mod gc_chunks;
mod history;
mod metrics;
mod retention;

use std::collections::HashMap;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use contextfs::api::*;
use reqwest::{Method, StatusCode};

/// The grace period of the GC test servers: short, so tests can wait it out.
const GRACE: &str = "2s";
const PAST_GRACE: Duration = Duration::from_millis(2500);

/// Runs `contextfs ARGS` against `server` with `token` (and `project`).
fn cli(server: &TestServer, token: &str, project: &str, args: &[&str]) -> Output {
    let root = tempfile::tempdir().expect("temp dir");
    let env = ClientEnv {
        root: root.path(),
        server: &server.base,
        token,
        project,
    };
    isolated_command(env!("CARGO_BIN_EXE_contextfs"), &env)
        .args(args)
        .output()
        .expect("run contextfs")
}

fn cli_ok(server: &TestServer, token: &str, project: &str, args: &[&str]) -> String {
    let out = cli(server, token, project, args);
    assert!(out.status.success(), "contextfs {args:?} failed: {}", both(&out));
    stdout(&out)
}

fn json_of<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not the documented JSON ({e}):\n{text}"))
}

async fn gc(server: &TestServer, dry_run: bool) -> GcReport {
    send(server.post(&server.url("/gc"), &server.admin, &GcRequest { dry_run }))
        .await
        .unwrap_or_else(|e| panic!("POST /gc: {e:?}"))
}

async fn set_retention(server: &TestServer, project: &str, days: Option<i64>, versions: Option<i64>) -> RetentionInfo {
    let req = RetentionRequest {
        keep_days: days,
        keep_versions: versions,
    };
    send(
        server
            .req(Method::PUT, &server.purl(project, "/retention"), Some(&server.admin))
            .json(&req),
    )
    .await
    .unwrap_or_else(|e| panic!("PUT retention: {e:?}"))
}

/// The server keeps its blobs in S3 (`CONTEXTFS_TEST_BLOBS=s3`).
fn blobs_in_s3() -> bool {
    std::env::var("CONTEXTFS_TEST_BLOBS").is_ok_and(|v| v == "s3")
}
