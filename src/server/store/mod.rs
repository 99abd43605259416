//! Metadata store: projects, tokens, nodes, versions, the change feed, the audit
//! log and skills.
//!
//! The service talks to a [`MetadataStore`] trait object so that the embedded
//! SQLite store and a PostgreSQL store can sit behind the same commit logic.
//! Every mutating call is one transaction that also appends its change-feed
//! events and audit rows, and every content write is a compare-and-set on the
//! node's head version: that is the optimistic lock the whole service rests on.
//!
//! The namespace writes are written once, in `txn`, over the row access
//! each store provides; `sqlite/` and `postgres/` hold what is theirs alone.

pub mod dav;
pub mod manifests;
mod namespace;
pub mod ops;
pub mod postgres;
pub mod records;
pub mod sqlite;
mod txn;

use std::sync::LazyLock;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use thiserror::Error;

use crate::api::{
    Access, ActivityEntry, AuditEntry, AuditPage, ChangeEvent, NodeKind, RetentionPolicy, SkillFile, SkillInfo,
    SkillsListing, TreeListing, VersionInfo, VersionOp, VersionStatus,
};
use crate::model::{BlobHash, WsPath};
use namespace::NodeRow;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The compare-and-set lost: the node's head is no longer the expected one
    /// (or a node appeared at a path expected to be free).
    #[error("the head moved on")]
    HeadMoved,
    /// A namespace rule forbids the operation (`code` is the API error code).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("metadata database error: {0}")]
    Backend(String),
    /// The database cannot be reached now (connection refused or lost, the
    /// server shutting down): nothing was written, and the same request may
    /// succeed later.
    #[error("the metadata database is unreachable: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<records::InvalidRecord> for StoreError {
    fn from(e: records::InvalidRecord) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// A database failure (or a row the database should never hold) as text.
fn backend(message: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(message.to_string())
}

#[derive(Debug, Clone)]
pub struct ProjectRow {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    pub cursor: i64,
}

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub project_id: i64,
    pub project: String,
    pub access: Access,
    pub label: Option<String>,
    pub created_at: i64,
    pub revoked: bool,
}

/// Who is writing, for versions and the audit log.
#[derive(Debug, Clone)]
pub struct WriteMeta {
    /// Token id, or `admin`.
    pub author: String,
    pub agent_id: Option<String>,
    pub message: Option<String>,
    /// Unix milliseconds.
    pub now: i64,
}

/// A node and its head version. `deleted` nodes are tombstoned but restorable.
#[derive(Debug, Clone)]
pub struct NodeHead {
    pub node: i64,
    pub path: String,
    pub kind: NodeKind,
    pub deleted: bool,
    pub head: VersionInfo,
}

/// Where a content write lands.
#[derive(Debug, Clone)]
pub enum WriteTarget {
    /// A new node at a free path; missing parent directories are created.
    New { path: WsPath },
    /// A new version of an existing (possibly deleted) node, only if its head
    /// is still `expected_head`. A deleted node is restored at its last path.
    Existing { node: i64, expected_head: i64 },
}

/// A content version to append (commit, merge result, rollback).
#[derive(Debug, Clone)]
pub struct ContentWrite {
    pub target: WriteTarget,
    pub kind: NodeKind,
    pub mode: u32,
    pub hash: BlobHash,
    pub size: u64,
    pub op: VersionOp,
    pub status: VersionStatus,
    pub idempotency_key: Option<String>,
    /// A blob that came with the commit (inline content), recorded as the
    /// project's in the same transaction as the version.
    pub record_blob: Option<BlobHash>,
    /// The bytes of `record_blob` when its file was written without a sync
    /// (`server::service::deferred`): kept in the version's own transaction
    /// until a sync round has made the file durable. Only for stores that
    /// [keep such copies](MetadataStore::keeps_unsynced_blobs).
    pub unsynced_copy: Option<bytes::Bytes>,
    /// The file's times as the writer set them.
    pub times: FileTimes,
}

/// A file's mtime and atime as its writer set them, in nanoseconds since the
/// Unix epoch; `None` where it set none (then the commit time stands in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileTimes {
    pub mtime: Option<i64>,
    pub atime: Option<i64>,
}

impl FileTimes {
    /// The times a stored version carries (its strings were written by
    /// [`format_file_time`](crate::model::format_file_time)).
    pub fn of(v: &VersionInfo) -> Self {
        let parse = |t: &Option<String>| t.as_deref().and_then(|t| crate::model::parse_file_time(t).ok());
        Self {
            mtime: parse(&v.mtime),
            atime: parse(&v.atime),
        }
    }

    pub fn format(t: Option<i64>) -> Option<String> {
        t.map(crate::model::format_file_time)
    }
}

/// Everything a new version row needs beyond its node (both stores).
pub(crate) struct NewVersion<'a> {
    pub path: &'a str,
    pub kind: NodeKind,
    pub mode: u32,
    pub hash: &'a BlobHash,
    pub size: u64,
    pub op: VersionOp,
    pub status: VersionStatus,
    pub deleted: bool,
    pub idempotency_key: Option<&'a str>,
    pub old_path: Option<&'a str>,
    pub times: FileTimes,
}

impl<'a> NewVersion<'a> {
    /// The version a content write puts at `path`.
    pub fn content(write: &'a ContentWrite, path: &'a str) -> Self {
        Self {
            path,
            kind: write.kind,
            mode: write.mode,
            hash: &write.hash,
            size: write.size,
            op: write.op,
            status: write.status,
            deleted: false,
            idempotency_key: write.idempotency_key.as_deref(),
            old_path: None,
            times: write.times,
        }
    }

    /// A new directory at `path` (`mkdir`, or a missing parent of a write).
    pub fn directory(path: &'a str, mode: u32) -> Self {
        Self {
            path,
            kind: NodeKind::Dir,
            mode,
            hash: &EMPTY_CONTENT,
            size: 0,
            op: VersionOp::Mkdir,
            status: VersionStatus::Clean,
            deleted: false,
            idempotency_key: None,
            old_path: None,
            times: FileTimes::default(),
        }
    }

    /// The tombstone that deletes `node`; it keeps the head's content so a
    /// restore knows what was there.
    pub fn tombstone(node: &'a NodeRow, head: &'a VersionInfo) -> Self {
        Self {
            deleted: true,
            ..Self::unchanged(&node.path, node.kind, head, VersionOp::Delete)
        }
    }

    /// `head`'s node moved from `from` to `to`, content unchanged.
    pub fn rename(from: &'a str, to: &'a str, kind: NodeKind, head: &'a VersionInfo) -> Self {
        Self {
            old_path: Some(from),
            ..Self::unchanged(to, kind, head, VersionOp::Rename)
        }
    }

    /// A version at `path` with `head`'s content (a namespace change).
    fn unchanged(path: &'a str, kind: NodeKind, head: &'a VersionInfo, op: VersionOp) -> Self {
        Self {
            path,
            kind,
            mode: head.mode,
            hash: &head.hash,
            size: head.size,
            op,
            status: VersionStatus::Clean,
            deleted: false,
            idempotency_key: None,
            old_path: None,
            // A rename or deletion leaves the file's times as they were.
            times: FileTimes::of(head),
        }
    }
}

/// What a directory version records as its content.
static EMPTY_CONTENT: LazyLock<BlobHash> = LazyLock::new(|| BlobHash::of(b""));

/// A mutation's result plus the project cursor it advanced to, so the service
/// can wake change-feed waiters.
#[derive(Debug, Clone)]
pub struct Applied<T> {
    pub value: T,
    pub cursor: i64,
}

/// Preconditions of a namespace operation on the node at a path.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeGuard {
    /// The node's head must still be this version (`HeadMoved` otherwise).
    pub base_version: Option<i64>,
    /// The node at the path must be this one (`node_mismatch` otherwise).
    pub node: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct RenameOutcome {
    pub moved: VersionInfo,
    pub replaced: Option<VersionInfo>,
}

/// A change made through another process that shares the store: the
/// change-feed waiters of that project (or of every project) should re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Project(i64),
    /// Changes may have been missed (e.g. the listener reconnected): wake everyone.
    All,
}

#[async_trait]
pub trait MetadataStore: dav::DavStore + manifests::ManifestStore + Send + Sync + 'static {
    /// Wake-ups for changes committed by other processes sharing this store
    /// (several `contextfs serve` instances on one PostgreSQL). `None` for a
    /// store only this process writes to: the service wakes its own waiters.
    /// Called once, from inside the runtime, when the server starts.
    fn subscribe(&self) -> Option<BoxStream<'static, Wake>> {
        None
    }

    /// Whether the database answers now (`GET /health`). Stores that live
    /// in this process are always there.
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn create_project(&self, name: &str, meta: WriteMeta) -> StoreResult<ProjectRow>;
    async fn project(&self, name: &str) -> StoreResult<Option<ProjectRow>>;
    async fn projects(&self) -> StoreResult<Vec<ProjectRow>>;

    async fn create_token(
        &self,
        project_id: i64,
        id: &str,
        secret_hash: &str,
        access: Access,
        label: Option<String>,
        meta: WriteMeta,
    ) -> StoreResult<TokenRow>;
    async fn token_by_secret_hash(&self, secret_hash: &str) -> StoreResult<Option<TokenRow>>;
    async fn tokens(&self, project_id: i64) -> StoreResult<Vec<TokenRow>>;
    /// Returns false when no such token exists.
    async fn revoke_token(&self, id: &str, meta: WriteMeta) -> StoreResult<bool>;

    /// Live entries under `prefix` (the whole project when `None`).
    async fn tree(&self, project_id: i64, prefix: Option<&WsPath>, recursive: bool) -> StoreResult<TreeListing>;
    /// The live node at `path`, else the most recently deleted one there.
    async fn node_at(&self, project_id: i64, path: &WsPath) -> StoreResult<Option<NodeHead>>;
    async fn version(&self, node: i64, number: i64) -> StoreResult<Option<VersionInfo>>;
    /// Newest first, versions strictly older than `before` when given.
    async fn history(&self, node: i64, before: Option<i64>, limit: u32) -> StoreResult<Vec<VersionInfo>>;
    async fn find_idempotent(&self, project_id: i64, key: &str) -> StoreResult<Option<VersionInfo>>;
    // ----- small contents whose blobs are made durable later -----

    /// Whether this store keeps durable copies of small blob contents until
    /// their blob files are synced (`server::service::deferred`). When not,
    /// every blob is written durably at once.
    fn keeps_unsynced_blobs(&self) -> bool {
        false
    }
    /// The newest copy kept, if any: what a sync that starts now covers.
    async fn newest_unsynced_blob(&self) -> StoreResult<Option<i64>> {
        Ok(None)
    }
    /// Drops the copies up to `newest` once their blobs are durable.
    async fn forget_unsynced_blobs(&self, _newest: i64) -> StoreResult<()> {
        Ok(())
    }
    /// Every copy kept (after a crash: the blobs to check and restore).
    async fn unsynced_blobs(&self) -> StoreResult<Vec<(i64, BlobHash, Vec<u8>)>> {
        Ok(Vec::new())
    }

    /// [`Self::node_at`] of every path, in order, for a batch that plans
    /// many commits at once: one round trip where the backend can.
    async fn nodes_at(&self, project_id: i64, paths: Vec<WsPath>) -> StoreResult<Vec<Option<NodeHead>>> {
        let mut heads = Vec::with_capacity(paths.len());
        for path in &paths {
            heads.push(self.node_at(project_id, path).await?);
        }
        Ok(heads)
    }
    /// [`Self::find_idempotent`] of every key, in order (`None` keys find
    /// nothing), likewise.
    async fn find_idempotent_many(
        &self,
        project_id: i64,
        keys: Vec<Option<String>>,
    ) -> StoreResult<Vec<Option<VersionInfo>>> {
        let mut found = Vec::with_capacity(keys.len());
        for key in &keys {
            found.push(match key {
                Some(key) => self.find_idempotent(project_id, key).await?,
                None => None,
            });
        }
        Ok(found)
    }

    /// Compare-and-set append of a content version; `HeadMoved` when it lost.
    async fn write_content(
        &self,
        project_id: i64,
        write: ContentWrite,
        meta: WriteMeta,
    ) -> StoreResult<Applied<VersionInfo>>;
    /// Several content writes in ONE transaction (a batch of commits), each
    /// in its own savepoint: an entry that fails gets its error in its slot
    /// and leaves no trace, the others commit together. The outer error means
    /// nothing was written. Stores without savepoints write one by one.
    async fn write_contents(
        &self,
        project_id: i64,
        writes: Vec<(ContentWrite, WriteMeta)>,
    ) -> StoreResult<Vec<StoreResult<Applied<VersionInfo>>>> {
        let mut out = Vec::with_capacity(writes.len());
        for (write, meta) in writes {
            out.push(self.write_content(project_id, write, meta).await);
        }
        Ok(out)
    }
    /// `mkdir -p`; returns the directory's head and whether anything was created.
    async fn mkdir(
        &self,
        project_id: i64,
        path: &WsPath,
        mode: u32,
        meta: WriteMeta,
    ) -> StoreResult<Applied<(VersionInfo, bool)>>;
    async fn rename(
        &self,
        project_id: i64,
        from: &WsPath,
        to: &WsPath,
        replace: bool,
        guard: NodeGuard,
        meta: WriteMeta,
    ) -> StoreResult<Applied<RenameOutcome>>;
    async fn delete(
        &self,
        project_id: i64,
        path: &WsPath,
        guard: NodeGuard,
        recursive: bool,
        meta: WriteMeta,
    ) -> StoreResult<Applied<Vec<VersionInfo>>>;

    /// Events with `seq > since`, oldest first; the bool says more are waiting.
    async fn changes(&self, project_id: i64, since: i64, limit: u32) -> StoreResult<(Vec<ChangeEvent>, bool)>;
    async fn audit(&self, project_id: i64, since: i64, limit: u32) -> StoreResult<AuditPage>;

    /// Remember that this project uploaded (or was given) a blob, so its
    /// tokens may read it; other projects cannot probe for it by hash.
    async fn record_blob(&self, project_id: i64, hash: &BlobHash) -> StoreResult<()>;
    async fn project_has_blob(&self, project_id: i64, hash: &BlobHash) -> StoreResult<bool>;

    /// Replace the published skills as a whole.
    async fn publish_skills(&self, skills: Vec<SkillInfo>, meta: WriteMeta) -> StoreResult<()>;
    async fn skills(&self) -> StoreResult<SkillsListing>;
    async fn skill_has_blob(&self, hash: &BlobHash) -> StoreResult<bool>;

    /// Every hash any version, skill or project upload refers to (crash
    /// checks and migration walk this).
    async fn referenced_hashes(&self) -> StoreResult<Vec<BlobHash>>;

    // ----- operations: retention, garbage collection, activity (`ops`) -----

    /// The project's own retention policy, if it has one.
    async fn retention(&self, project_id: i64) -> StoreResult<Option<RetentionPolicy>>;
    /// Sets (or with `None` clears) the project's retention policy; audited.
    async fn set_retention(&self, project_id: i64, policy: Option<RetentionPolicy>, meta: WriteMeta)
        -> StoreResult<()>;
    /// Removes the project's versions the policy lets go (see
    /// the rules in [`ops`]) in one transaction with an audit row; with
    /// `dry_run` only counts them. Returns how many.
    async fn prune_versions(
        &self,
        project_id: i64,
        policy: RetentionPolicy,
        dry_run: bool,
        meta: WriteMeta,
    ) -> StoreResult<u64>;
    /// Every blob a version (not a directory) or a skill file refers to,
    /// with the size recorded for it.
    async fn blob_references(&self) -> StoreResult<Vec<(BlobHash, u64)>>;
    /// Blobs some project uploaded (or re-uploaded) at or after `since` (Unix ms).
    async fn blobs_used_since(&self, since: i64) -> StoreResult<Vec<BlobHash>>;
    /// In one transaction, forgets each of `candidates` that no version or
    /// skill refers to and no project used at or after `cutoff`, and returns
    /// those: only they may be deleted from storage.
    async fn release_blobs(&self, candidates: Vec<BlobHash>, cutoff: i64) -> StoreResult<Vec<BlobHash>>;
    /// Whether any version, skill or project upload refers to the blob (the
    /// collector's last look before it deletes a released blob).
    async fn blob_held(&self, hash: &BlobHash) -> StoreResult<bool>;
    /// The project's versions, newest first, by change-feed sequence.
    async fn activity(&self, project_id: i64, filter: ops::ActivityFilter) -> StoreResult<Vec<ActivityEntry>>;

    // ----- migration (`contextfs migrate`; see [`records`]) -----

    /// True when the store holds no projects, tokens, audit rows, blobs
    /// records or skills (a freshly created schema is empty).
    async fn is_empty(&self) -> StoreResult<bool> {
        Err(StoreError::Backend(
            "this metadata store cannot be a migration target yet".into(),
        ))
    }

    /// Sends every row of every table to `sink` as batches, table by table in
    /// [`records::TABLES`] order, all from one consistent snapshot. Stops with
    /// an error if `sink` is closed early.
    async fn export_records(&self, sink: tokio::sync::mpsc::Sender<records::RecordBatch>) -> StoreResult<()> {
        drop(sink);
        Err(StoreError::Backend(
            "this metadata store cannot be a migration source yet".into(),
        ))
    }

    /// Writes the batches from `source` verbatim (same ids, numbers, times),
    /// until it closes, in ONE transaction: either everything is imported or
    /// nothing is. With `replace` every existing row is deleted first.
    /// Id and sequence generators continue after the imported rows.
    async fn import_records(
        &self,
        source: tokio::sync::mpsc::Receiver<records::RecordBatch>,
        replace: bool,
    ) -> StoreResult<records::ImportCounts> {
        let _ = (source, replace);
        Err(StoreError::Backend(
            "this metadata store cannot be a migration target yet".into(),
        ))
    }
}

// ----- results both stores build from the rows they read -----

/// Cuts rows read with `LIMIT limit + 1` back to `limit`; true when more
/// were waiting.
fn trim_page<T>(rows: &mut Vec<T>, limit: u32) -> bool {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    more
}

/// An audit page from entries read with `LIMIT limit + 1`; the next page
/// starts after the last entry shown.
fn audit_page(mut entries: Vec<AuditEntry>, limit: u32) -> AuditPage {
    let more = trim_page(&mut entries, limit);
    let next_since = if more { entries.last().map(|e| e.seq) } else { None };
    AuditPage { entries, next_since }
}

/// The published skills with their files: each `(skill name, file)` joins
/// its skill, in the given order. `published_at` is the stored `meta` value
/// (Unix milliseconds).
fn skills_listing(
    published_at: Option<String>,
    mut skills: Vec<SkillInfo>,
    files: Vec<(String, SkillFile)>,
) -> SkillsListing {
    for (skill, file) in files {
        if let Some(s) = skills.iter_mut().find(|s| s.name == skill) {
            s.files.push(file);
        }
    }
    SkillsListing {
        published_at: published_at.and_then(|v| v.parse().ok()).map(format_time),
        skills,
    }
}

/// Milliseconds since the epoch as RFC 3339, for the API.
pub fn format_time(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
