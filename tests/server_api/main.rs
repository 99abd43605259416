//! Integration tests of `contextfs serve` through its REST API: every route,
//! merges, concurrent writers, crash safety and bad input, one file per
//! concern:
//!
//! - `projects`: health, identity, projects and tokens;
//! - `files`: file times, the tree, blobs, checkout and the one-call PUT;
//! - `commits`, `namespace`, `feed`, `skills`: the other routes' flows;
//! - `batch`: `POST .../commit/batch`, each entry its own commit;
//! - `deferred`: inline contents synced later, restored after a crash;
//! - `chunks`: large files by chunks, manifests, `blobs/missing`, byte ranges;
//! - `large_put`: one-call PUTs of large files, cut into chunks by the server;
//! - `merges`: merges, sixteen concurrent writers, kill -9 of the server;
//! - `access`: tokens refused (401, 404 across projects, 403 read-only);
//! - `bad_input`: every other refusal, with its status and code, and nothing changed.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod bad_input;
mod batch;
mod chunks;
mod commits;
mod deferred;
mod feed;
mod files;
mod large_put;
mod merges;
mod namespace;
mod projects;
mod skills;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use contextfs::api::*;
use contextfs::model::BlobHash;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A small project with one file, for the bad-input tests.
async fn seeded(s: &TestServer) -> (String, VersionInfo) {
    let t = s.project_with_token("p").await;
    let v = s.commit("p", &t, "docs/keep.md", None, b"keep me\n").await.unwrap();
    (t, v)
}

/// Commits `hash` to `path` of project `p` on top of `base`, which the server
/// must refuse with 409 `base_version_unknown`; the error.
async fn refused_as_unknown_base(s: &TestServer, token: &str, path: &str, base: i64, hash: &BlobHash) -> ApiErr {
    let result = s
        .commit_req("p", token, &commit_request(path, Some(base), hash.clone()))
        .await;
    match result {
        Ok(v) => panic!("a commit to {path} on base {base} succeeded: {v:?}"),
        Err(e) => {
            assert_eq!(
                (e.status, e.code.as_str()),
                (StatusCode::CONFLICT, "base_version_unknown"),
                "a commit to {path} on base {base}: {e:?}"
            );
            e
        }
    }
}
