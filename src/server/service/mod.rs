//! The service: commit logic with optimistic locking and three-way merge,
//! namespace operations, history, rollback, the change feed and skills.
//!
//! Handlers in `routes.rs` only translate HTTP; every rule lives here, on top
//! of the [`MetadataStore`] and [`BlobStore`] traits.
//!
//! One file per concept, each an `impl Service` block:
//! - `admin.rs`: projects and tokens;
//! - `read.rs`: tree, checkout, history, the change feed, audit, blobs;
//! - `commit.rs`: commits (idempotency, inline content, the three-way merge
//!   decision) and the one-call `PUT files` upload;
//! - `upload.rs`: storing a file sent whole in one request, of any size:
//!   one blob, or chunks cut while it arrives;
//! - `batch.rs`: many commits in one request and one transaction;
//! - `deferred.rs`: small contents whose blob files are synced later, kept
//!   in the database meanwhile;
//! - `chunked.rs`: chunked content: which blobs a project lacks, manifests,
//!   byte ranges of blobs and files;
//! - `namespace.rs`: mkdir, rename, delete, rollback;
//! - `skills.rs`: publishing and reading skills, SKILL.md front matter.

use std::sync::Arc;
use std::time::Duration;

use super::auth::{secret_hash, Caller};
use super::blobs::contents::Contents;
use super::blobs::BlobStore;
use super::error::ApiError;
use super::feed::Feed;
use super::store::{now_millis, MetadataStore, WriteMeta};
use crate::api::*;
use crate::model::WsPath;

mod admin;
mod batch;
mod chunked;
mod commit;
mod deferred;
mod namespace;
mod ops;
mod read;
mod skills;
mod upload;

pub use batch::MAX_BATCH_COMMITS;
pub use chunked::{Served, MAX_MISSING_QUERY};
pub use commit::{PutFileOptions, MAX_MERGE_BYTES};
pub use deferred::{deferred_sync_interval, restore_deferred_blobs, spawn_deferred_sync, DeferredError};
pub use ops::parse_since;
pub use skills::parse_skill_front_matter;
pub use upload::StoredUpload;

/// How often a commit re-reads the head after losing a compare-and-set.
const MAX_COMMIT_ATTEMPTS: usize = 64;
const MAX_AGENT_ID: usize = 256;
const MAX_MESSAGE: usize = 4096;
/// Commits to one path are serialised in-process to avoid retry storms; the
/// compare-and-set in the store stays the real guarantee.
const PATH_LOCK_STRIPES: usize = 1024;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest blob upload, in bytes.
    pub max_blob_bytes: u64,
    /// Largest file (a chunked blob's manifest size), in bytes.
    pub max_file_bytes: u64,
    /// Largest JSON request body, in bytes.
    pub max_request_bytes: usize,
    /// Longest change-feed long-poll.
    pub max_poll: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blob_bytes: 1 << 30,
            max_file_bytes: 1 << 40,
            max_request_bytes: 8 << 20,
            max_poll: Duration::from_secs(60),
        }
    }
}

pub struct Service {
    pub store: Arc<dyn MetadataStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub feed: Feed,
    pub limits: Limits,
    pub(super) admin_token_hash: String,
    path_locks: Vec<tokio::sync::Mutex<()>>,
    /// Flips to true when the server starts shutting down.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Valid project tokens by secret hash, each with the revocation epoch
    /// its store lookup started in. A revocation here bumps the epoch, so
    /// every entry filled before it (even a fill still in flight when the
    /// revocation returned) is ignored from then on; through another
    /// instance sharing the store it takes effect within the time-to-live.
    pub(super) token_cache: moka::sync::Cache<String, (Caller, u64)>,
    /// Bumped by every revocation on this instance, after the store has it.
    pub(super) revocation_epoch: std::sync::atomic::AtomicU64,
    /// Retention, GC and metrics settings (`serve` flags).
    pub ops: crate::server::gc::OpsConfig,
    pub metrics: crate::server::metrics::Metrics,
    /// One GC run at a time on this instance.
    pub(crate) gc_lock: tokio::sync::Mutex<()>,
    /// How often small inline contents written without a sync are synced
    /// (`deferred.rs`); `None`: every blob is durable before its commit.
    deferred_sync: Option<std::time::Duration>,
}

/// How long another instance may keep accepting a token revoked elsewhere.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);

fn meta(caller: &Caller, agent_id: Option<String>, message: Option<String>) -> Result<WriteMeta, ApiError> {
    if agent_id.as_ref().is_some_and(|a| a.len() > MAX_AGENT_ID) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("agent_id is longer than {MAX_AGENT_ID} bytes"),
        ));
    }
    if message.as_ref().is_some_and(|m| m.len() > MAX_MESSAGE) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("message is longer than {MAX_MESSAGE} bytes"),
        ));
    }
    Ok(WriteMeta {
        author: caller.token_id.clone(),
        agent_id,
        message,
        now: now_millis(),
    })
}

/// Refuses a path that a write would create (or rename to) when it holds
/// control characters: 400 `invalid_path`.
fn check_new_path(path: &WsPath) -> Result<(), ApiError> {
    path.check_new()
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidPath, e.to_string()))
}

fn check_mode(mode: Option<u32>) -> Result<(), ApiError> {
    match mode {
        Some(m) if m > 0o7777 => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("mode {m:#o} has bits outside 0o7777"),
        )),
        _ => Ok(()),
    }
}

impl Service {
    pub fn new(store: Arc<dyn MetadataStore>, blobs: Arc<dyn BlobStore>, admin_token: &str, limits: Limits) -> Self {
        if limits.max_blob_bytes < crate::chunks::CHUNK_MAX as u64 {
            // Large one-call uploads are cut into chunks of up to CHUNK_MAX.
            tracing::warn!(
                max_blob_bytes = limits.max_blob_bytes,
                chunk_max = crate::chunks::CHUNK_MAX,
                "--max-blob-bytes is below the largest chunk: a one-call upload over it is refused when a chunk is larger"
            );
        }
        // Every read goes through the contents layer (chunked blobs).
        let blobs: Arc<dyn BlobStore> = Arc::new(Contents::new(blobs, store.clone()));
        Self {
            store,
            blobs,
            feed: Feed::default(),
            limits,
            admin_token_hash: secret_hash(admin_token),
            path_locks: (0..PATH_LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            stopping: tokio::sync::watch::channel(false).0,
            token_cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(TOKEN_CACHE_TTL)
                .build(),
            revocation_epoch: std::sync::atomic::AtomicU64::new(0),
            ops: Default::default(),
            metrics: Default::default(),
            gc_lock: tokio::sync::Mutex::new(()),
            deferred_sync: None,
        }
    }

    /// Lets small inline contents be synced later, every `interval`, where
    /// both stores can (`deferred.rs`); `serve` turns it on unless told
    /// otherwise.
    pub fn with_deferred_sync(mut self, interval: Option<std::time::Duration>) -> Self {
        self.deferred_sync = interval;
        self
    }

    /// The interval set by [`Self::with_deferred_sync`], read once at start.
    pub fn deferred_sync(&self) -> Option<std::time::Duration> {
        self.deferred_sync
    }

    /// The service with these operations settings.
    pub fn with_ops(mut self, ops: crate::server::gc::OpsConfig) -> Self {
        self.ops = ops;
        self
    }

    /// Ends every waiting change-feed long-poll (with no events) and makes new
    /// ones return at once, so a graceful shutdown does not wait for them.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    fn path_lock(&self, project_id: i64, path: &WsPath) -> &tokio::sync::Mutex<()> {
        &self.path_locks[self.path_lock_index(project_id, path)]
    }

    /// The stripe of `path_locks` that serialises commits to this path.
    fn path_lock_index(&self, project_id: i64, path: &WsPath) -> usize {
        let key = blake3::hash(format!("{project_id}\0{path}").as_bytes());
        let idx = u64::from_le_bytes(key.as_bytes()[..8].try_into().unwrap_or_default()) as usize;
        idx % PATH_LOCK_STRIPES
    }
}
