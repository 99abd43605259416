//! The service: commit logic with optimistic locking and three-way merge,
//! namespace operations, history, rollback, the change feed and skills.
//!
//! Handlers in `routes.rs` only translate HTTP; every rule lives here, on top
//! of the [`MetadataStore`] and [`BlobStore`] traits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::auth::{new_secret, secret_hash, Caller};
use super::blobs::{BlobError, BlobStore, ByteStream};
use super::error::ApiError;
use super::feed::Feed;
use super::store::{
    now_millis, ContentWrite, MetadataStore, NodeGuard, NodeHead, ProjectRow, StoreError, TokenRow, WriteMeta,
    WriteTarget,
};
use crate::api::*;
use crate::merge::{merge, MergeOutcome};
use crate::model::{validate_project_name, BlobHash, WsPath};

/// Inputs larger than this are not merged: the commit falls back to last-writer-wins.
pub const MAX_MERGE_BYTES: u64 = 16 * 1024 * 1024;
/// How often a commit re-reads the head after losing a compare-and-set.
const MAX_COMMIT_ATTEMPTS: usize = 64;
const MAX_AGENT_ID: usize = 256;
const MAX_MESSAGE: usize = 4096;
const MAX_IDEMPOTENCY_KEY: usize = 128;
const MAX_SYMLINK_TARGET: u64 = 4096;
/// Commits to one path are serialised in-process to avoid retry storms; the
/// compare-and-set in the store stays the real guarantee.
const PATH_LOCK_STRIPES: usize = 1024;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest blob upload, in bytes.
    pub max_blob_bytes: u64,
    /// Largest JSON request body, in bytes.
    pub max_request_bytes: usize,
    /// Longest change-feed long-poll.
    pub max_poll: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blob_bytes: 1 << 30,
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
    /// Valid project tokens by secret hash. A revocation here clears it at
    /// once; through another instance sharing the store it takes effect
    /// within the time-to-live.
    pub(super) token_cache: moka::sync::Cache<String, Caller>,
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

fn check_mode(mode: Option<u32>) -> Result<(), ApiError> {
    match mode {
        Some(m) if m > 0o7777 => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            format!("mode {m:#o} has bits outside 0o7777"),
        )),
        _ => Ok(()),
    }
}

fn default_mode(kind: NodeKind) -> u32 {
    match kind {
        NodeKind::File => 0o644,
        NodeKind::Dir => 0o755,
        NodeKind::Symlink => 0o777,
    }
}

fn project_info(p: &ProjectRow) -> ProjectInfo {
    ProjectInfo {
        name: p.name.clone(),
        created_at: super::store::format_time(p.created_at),
        cursor: p.cursor,
    }
}

fn token_info(t: &TokenRow) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        project: t.project.clone(),
        access: t.access,
        label: t.label.clone(),
        created_at: super::store::format_time(t.created_at),
        revoked: t.revoked,
    }
}

/// What a commit will write once the head is known.
struct CommitPlan {
    target: WriteTarget,
    hash: BlobHash,
    size: u64,
    status: VersionStatus,
    op: VersionOp,
    mode: u32,
}

enum Planned {
    Write(CommitPlan),
    /// The head already holds exactly what the commit asks for.
    AlreadyThere(VersionInfo),
}

impl Service {
    pub fn new(store: Arc<dyn MetadataStore>, blobs: Arc<dyn BlobStore>, admin_token: &str, limits: Limits) -> Self {
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
        }
    }

    /// Ends every waiting change-feed long-poll (with no events) and makes new
    /// ones return at once, so a graceful shutdown does not wait for them.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    fn path_lock(&self, project_id: i64, path: &WsPath) -> &tokio::sync::Mutex<()> {
        let key = blake3::hash(format!("{project_id}\0{path}").as_bytes());
        let idx = u64::from_le_bytes(key.as_bytes()[..8].try_into().unwrap_or_default()) as usize;
        &self.path_locks[idx % PATH_LOCK_STRIPES]
    }

    // ----- projects and tokens (admin) -----

    pub async fn create_project(&self, caller: &Caller, req: CreateProjectRequest) -> Result<ProjectInfo, ApiError> {
        caller.require_admin()?;
        validate_project_name(&req.name).map_err(|e| ApiError::bad_request(ErrorCode::InvalidName, e.to_string()))?;
        let row = self.store.create_project(&req.name, meta(caller, None, None)?).await?;
        Ok(project_info(&row))
    }

    pub async fn list_projects(&self, caller: &Caller) -> Result<Vec<ProjectInfo>, ApiError> {
        let rows = self.store.projects().await?;
        Ok(rows
            .iter()
            .filter(|p| caller.admin || caller.project.as_deref() == Some(p.name.as_str()))
            .map(project_info)
            .collect())
    }

    pub async fn project(&self, caller: &Caller, name: &str) -> Result<ProjectInfo, ApiError> {
        Ok(project_info(&self.project_for(caller, name, false).await?))
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        project: &str,
        req: CreateTokenRequest,
    ) -> Result<CreatedToken, ApiError> {
        caller.require_admin()?;
        let project = self.project_for(caller, project, true).await?;
        if req.label.as_ref().is_some_and(|l| l.len() > MAX_AGENT_ID) {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidField,
                "label is longer than 256 bytes",
            ));
        }
        let secret = new_secret();
        let id = format!("tok_{}", hex::encode(rand::random::<[u8; 6]>()));
        let row = self
            .store
            .create_token(
                project.id,
                &id,
                &secret_hash(&secret),
                req.access,
                req.label,
                meta(caller, None, None)?,
            )
            .await?;
        Ok(CreatedToken {
            token: secret,
            info: token_info(&row),
        })
    }

    pub async fn list_tokens(&self, caller: &Caller, project: &str) -> Result<Vec<TokenInfo>, ApiError> {
        caller.require_admin()?;
        let project = self.project_for(caller, project, false).await?;
        Ok(self.store.tokens(project.id).await?.iter().map(token_info).collect())
    }

    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<(), ApiError> {
        caller.require_admin()?;
        if self.store.revoke_token(id, meta(caller, None, None)?).await? {
            self.token_cache.invalidate_all();
            Ok(())
        } else {
            Err(ApiError::not_found(format!("token {id} not found")))
        }
    }

    // ----- reads -----

    pub async fn tree(
        &self,
        caller: &Caller,
        project: &str,
        prefix: Option<&WsPath>,
        recursive: bool,
    ) -> Result<TreeListing, ApiError> {
        let project = self.project_for(caller, project, false).await?;
        if let Some(prefix) = prefix {
            match self.store.node_at(project.id, prefix).await? {
                Some(n) if !n.deleted && n.kind == NodeKind::Dir => {}
                Some(n) if !n.deleted => {
                    return Err(ApiError::conflict(
                        ErrorCode::NotADirectory,
                        format!("{prefix} is a {}", n.kind.as_str()),
                    ))
                }
                _ => return Err(ApiError::not_found(format!("{prefix} does not exist"))),
            }
        }
        Ok(self.store.tree(project.id, prefix, recursive).await?)
    }

    /// The version of `path` to read: its head, or `version` when given.
    pub async fn checkout(
        &self,
        caller: &Caller,
        project: &str,
        path: &WsPath,
        version: Option<i64>,
    ) -> Result<(VersionInfo, ByteStream), ApiError> {
        let project = self.project_for(caller, project, false).await?;
        let node = self.store.node_at(project.id, path).await?;
        let info = match (node, version) {
            (Some(n), None) if !n.deleted => n.head,
            (Some(n), None) => {
                return Err(ApiError::not_found(format!(
                    "{path} was deleted in version {}; read an older version or roll it back",
                    n.head.version
                )))
            }
            (Some(n), Some(v)) => self.store.version(n.node, v).await?.ok_or_else(|| {
                ApiError::not_found(format!("{path} has no version {v} (head is {})", n.head.version))
            })?,
            (None, _) => return Err(ApiError::not_found(format!("{path} does not exist"))),
        };
        if info.deleted {
            return Err(ApiError::not_found(format!(
                "version {} of {path} is a deletion",
                info.version
            )));
        }
        if info.kind == NodeKind::Dir {
            return Err(ApiError::conflict(
                ErrorCode::IsADirectory,
                format!("{path} is a directory; list it with the tree route"),
            ));
        }
        let (_, stream) = self.blobs.get(&info.hash).await?;
        Ok((info, stream))
    }

    pub async fn history(
        &self,
        caller: &Caller,
        project: &str,
        path: &WsPath,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ApiError> {
        let project = self.project_for(caller, project, false).await?;
        let node = self
            .store
            .node_at(project.id, path)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("{path} has no history")))?;
        let limit = limit.unwrap_or(100).clamp(1, 1000);
        let versions = self.store.history(node.node, before, limit).await?;
        let next_before = match versions.last() {
            Some(v) if versions.len() as u32 == limit && v.version > 1 => Some(v.version),
            _ => None,
        };
        Ok(HistoryPage {
            node: node.node,
            path: node.path,
            versions,
            next_before,
        })
    }

    pub async fn changes(
        &self,
        caller: &Caller,
        project: &str,
        since: i64,
        timeout: Duration,
        limit: Option<u32>,
    ) -> Result<ChangesPage, ApiError> {
        let project = self.project_for(caller, project, false).await?;
        let limit = limit.unwrap_or(1000).clamp(1, 10_000);
        let deadline = tokio::time::Instant::now() + timeout.min(self.limits.max_poll);
        let notify = self.feed.handle(project.id);
        loop {
            // Register for wake-ups before reading, so a commit landing in
            // between cannot be missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (events, more) = self.store.changes(project.id, since, limit).await?;
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                let cursor = events.last().map(|e| e.seq).unwrap_or(since);
                return Ok(ChangesPage { cursor, events, more });
            }
            let mut stopping = self.stopping.subscribe();
            let woken = tokio::select! {
                woken = tokio::time::timeout_at(deadline, notified) => woken.is_ok(),
                _ = stopping.wait_for(|stop| *stop) => false,
            };
            if !woken {
                let cursor = since;
                return Ok(ChangesPage {
                    cursor,
                    events: Vec::new(),
                    more: false,
                });
            }
        }
    }

    pub async fn audit(
        &self,
        caller: &Caller,
        project: &str,
        since: i64,
        limit: Option<u32>,
    ) -> Result<AuditPage, ApiError> {
        let project = self.project_for(caller, project, false).await?;
        Ok(self
            .store
            .audit(project.id, since, limit.unwrap_or(100).clamp(1, 1000))
            .await?)
    }

    // ----- blobs -----

    pub async fn put_blob(
        &self,
        caller: &Caller,
        project: &str,
        hash: &BlobHash,
        body: ByteStream,
    ) -> Result<BlobReceipt, ApiError> {
        let project = self.project_for(caller, project, true).await?;
        let (hash, size, created) = self
            .blobs
            .put_stream(Some(hash), body, self.limits.max_blob_bytes)
            .await?;
        self.store.record_blob(project.id, &hash).await?;
        Ok(BlobReceipt { hash, size, created })
    }

    /// A project may read blobs it uploaded or refers to, and published skills.
    pub async fn get_blob(
        &self,
        caller: &Caller,
        project: &str,
        hash: &BlobHash,
    ) -> Result<(u64, ByteStream), ApiError> {
        let project = self.project_for(caller, project, false).await?;
        if !self.store.project_has_blob(project.id, hash).await? && !self.store.skill_has_blob(hash).await? {
            return Err(ApiError::not_found(format!(
                "blob {hash} not found in project {}",
                project.name
            )));
        }
        Ok(self.blobs.get(hash).await?)
    }

    // ----- writes -----

    pub async fn commit(&self, caller: &Caller, project: &str, req: CommitRequest) -> Result<VersionInfo, ApiError> {
        self.commit_content(caller, project, req, None).await
    }

    /// A commit whose content either was uploaded before (`uploaded: None`:
    /// it must be the project's already), or came with this request
    /// (`content_base64`, or `uploaded: Some(size)` from `PUT files`): then the
    /// blob becomes the project's in the commit's own transaction, so a refused
    /// commit leaves no trace in the project.
    async fn commit_content(
        &self,
        caller: &Caller,
        project: &str,
        req: CommitRequest,
        uploaded: Option<u64>,
    ) -> Result<VersionInfo, ApiError> {
        let project = self.project_for(caller, project, true).await?;
        let kind = req.kind.unwrap_or(NodeKind::File);
        if kind == NodeKind::Dir {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidField,
                "kind: directories are made with the mkdir route",
            ));
        }
        check_mode(req.mode)?;
        if req
            .idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidField,
                format!("idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY} bytes"),
            ));
        }
        let meta = meta(caller, req.agent_id.clone(), req.message.clone())?;
        if let Some(done) = self.idempotent_result(project.id, &req).await? {
            return Ok(done);
        }
        let size = match (req.content_base64.as_deref(), uploaded) {
            (Some(encoded), _) => self.store_inline_content(&req.hash, encoded).await?,
            (None, Some(size)) => size,
            (None, None) => self.visible_blob_size(&project, &req.hash).await?,
        };
        let came_with_request = req.content_base64.is_some() || uploaded.is_some();
        if kind == NodeKind::Symlink && size > MAX_SYMLINK_TARGET {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidField,
                format!("a symlink target is at most {MAX_SYMLINK_TARGET} bytes"),
            ));
        }
        let _serialised = self.path_lock(project.id, &req.path).lock().await;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let head = self.store.node_at(project.id, &req.path).await?;
            let plan = match self.plan_commit(&project, &req, kind, size, head).await? {
                Planned::AlreadyThere(v) => return Ok(v),
                Planned::Write(plan) => plan,
            };
            let write = ContentWrite {
                target: plan.target,
                kind,
                mode: plan.mode,
                hash: plan.hash,
                size: plan.size,
                op: plan.op,
                status: plan.status,
                idempotency_key: req.idempotency_key.clone(),
                record_blob: came_with_request.then(|| req.hash.clone()),
            };
            match self.store.write_content(project.id, write, meta.clone()).await {
                Ok(applied) => {
                    self.feed.notify(project.id);
                    return Ok(applied.value);
                }
                Err(StoreError::HeadMoved) => {
                    if let Some(done) = self.idempotent_result(project.id, &req).await? {
                        return Ok(done);
                    }
                    tracing::debug!(path = %req.path, "commit lost the compare-and-set; merging again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Busy,
            format!("{} is changing too fast to commit; retry", req.path),
        ))
    }

    async fn idempotent_result(&self, project_id: i64, req: &CommitRequest) -> Result<Option<VersionInfo>, ApiError> {
        let Some(key) = &req.idempotency_key else {
            return Ok(None);
        };
        Ok(self.store.find_idempotent(project_id, key).await?)
    }

    async fn visible_blob_size(&self, project: &ProjectRow, hash: &BlobHash) -> Result<u64, ApiError> {
        let missing = || {
            ApiError::bad_request(
                ErrorCode::BlobMissing,
                format!(
                    "blob {hash} has not been uploaded to project {}; PUT it to .../blobs/{hash} first",
                    project.name
                ),
            )
        };
        if !self.store.project_has_blob(project.id, hash).await? {
            return Err(missing());
        }
        self.blobs.size(hash).await?.ok_or_else(missing)
    }

    /// Stores the content a commit carried inline as the blob `hash`; its size.
    async fn store_inline_content(&self, hash: &BlobHash, encoded: &str) -> Result<u64, ApiError> {
        use base64::Engine;
        let too_large = || {
            ApiError::bad_request(
                ErrorCode::ContentTooLarge,
                format!("content_base64 carries at most {MAX_INLINE_CONTENT} bytes; PUT larger content to .../blobs/{hash} first"),
            )
        };
        // Cheap check before decoding; the exact one after.
        if encoded.len() > MAX_INLINE_CONTENT.div_ceil(3) * 4 {
            return Err(too_large());
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| {
            ApiError::bad_request(ErrorCode::InvalidField, format!("content_base64 is not base64: {e}"))
        })?;
        if bytes.len() > MAX_INLINE_CONTENT {
            return Err(too_large());
        }
        let actual = BlobHash::of(&bytes);
        if actual != *hash {
            return Err(BlobError::HashMismatch {
                expected: hash.clone(),
                actual,
            }
            .into());
        }
        let len = bytes.len() as u64;
        // The blob becomes the project's with the commit's own transaction
        // (`ContentWrite::record_blob`): a refused commit leaves no trace.
        self.blobs.put_bytes(Bytes::from(bytes)).await?;
        Ok(len)
    }

    async fn plan_commit(
        &self,
        project: &ProjectRow,
        req: &CommitRequest,
        kind: NodeKind,
        size: u64,
        head: Option<NodeHead>,
    ) -> Result<Planned, ApiError> {
        let unknown_base = |base: i64, head: Option<VersionInfo>| {
            ApiError::conflict(
                ErrorCode::BaseVersionUnknown,
                format!(
                    "{} has no version {base} to build on; re-read the file and commit again",
                    req.path
                ),
            )
            .with_head(head)
        };
        let write = |target, hash: BlobHash, size, status, op, mode| {
            Ok(Planned::Write(CommitPlan {
                target,
                hash,
                size,
                status,
                op,
                mode,
            }))
        };
        let mode_or = |fallback: u32| req.mode.unwrap_or(fallback);
        if let Some(expected) = req.node {
            if head.as_ref().map(|h| h.node) != Some(expected) {
                return Err(ApiError::conflict(
                    ErrorCode::NodeMismatch,
                    format!(
                        "{} is not node {expected} any more; re-read it and commit again",
                        req.path
                    ),
                )
                .with_head(head.map(|h| h.head)));
            }
        }
        let Some(head) = head else {
            return match req.base_version {
                None => write(
                    WriteTarget::New { path: req.path.clone() },
                    req.hash.clone(),
                    size,
                    VersionStatus::Clean,
                    VersionOp::Create,
                    mode_or(default_mode(kind)),
                ),
                Some(base) => Err(unknown_base(base, None)),
            };
        };
        let existing = WriteTarget::Existing {
            node: head.node,
            expected_head: head.head.version,
        };
        if head.deleted {
            return match req.base_version {
                // A fresh file where an old one was deleted: a new node.
                None => write(
                    WriteTarget::New { path: req.path.clone() },
                    req.hash.clone(),
                    size,
                    VersionStatus::Clean,
                    VersionOp::Create,
                    mode_or(default_mode(kind)),
                ),
                // Edited a file someone else deleted: the edit wins and
                // restores it; the deletion stays in history.
                Some(base) if (1..head.head.version).contains(&base) => write(
                    existing,
                    req.hash.clone(),
                    size,
                    VersionStatus::Lww,
                    VersionOp::Write,
                    mode_or(head.head.mode),
                ),
                // The tombstone itself (or later) holds no content to build on.
                Some(base) if base == head.head.version => Err(ApiError::conflict(
                    ErrorCode::BaseVersionUnknown,
                    format!(
                        "version {base} of {} is its deletion, which has no content to build on; commit without a base version to create the file again",
                        req.path
                    ),
                )
                .with_head(Some(head.head))),
                Some(base) => Err(unknown_base(base, Some(head.head))),
            };
        }
        if head.kind == NodeKind::Dir {
            return Err(ApiError::conflict(
                ErrorCode::IsADirectory,
                format!("{} is a directory", req.path),
            ));
        }
        let mode = mode_or(head.head.mode);
        let unchanged = |hash: &BlobHash| *hash == head.head.hash && mode == head.head.mode && kind == head.kind;
        let base_info = match req.base_version {
            Some(base) if base == head.head.version => {
                if unchanged(&req.hash) {
                    return Ok(Planned::AlreadyThere(head.head));
                }
                return write(
                    existing,
                    req.hash.clone(),
                    size,
                    VersionStatus::Clean,
                    VersionOp::Write,
                    mode,
                );
            }
            Some(base) if base > head.head.version => return Err(unknown_base(base, Some(head.head))),
            Some(base) => Some(
                self.store
                    .version(head.node, base)
                    .await?
                    .ok_or_else(|| unknown_base(base, Some(head.head.clone())))?,
            ),
            None => None,
        };
        if unchanged(&req.hash) {
            return Ok(Planned::AlreadyThere(head.head));
        }
        // The head moved on since the writer's base: merge three ways.
        let base_bytes = match &base_info {
            Some(b) if !b.deleted && b.kind == kind => self.read_for_merge(&b.hash).await?,
            _ => Some(Vec::new()),
        };
        let head_bytes = self.read_for_merge(&head.head.hash).await?;
        let new_bytes = self.read_for_merge(&req.hash).await?;
        let (Some(base), Some(head_bytes), Some(new_bytes), NodeKind::File) = (base_bytes, head_bytes, new_bytes, kind)
        else {
            tracing::info!(path = %req.path, "not merged (symlink or over {MAX_MERGE_BYTES} bytes): last writer wins");
            return write(
                existing,
                req.hash.clone(),
                size,
                VersionStatus::Lww,
                VersionOp::Write,
                mode,
            );
        };
        match merge(req.path.as_str(), &base, &head_bytes, &new_bytes) {
            MergeOutcome::Merged(bytes) if bytes == new_bytes => write(
                existing,
                req.hash.clone(),
                size,
                VersionStatus::Clean,
                VersionOp::Write,
                mode,
            ),
            MergeOutcome::Merged(bytes) if bytes == head_bytes && mode == head.head.mode => {
                // The writer's change is already contained in the head.
                Ok(Planned::AlreadyThere(head.head))
            }
            MergeOutcome::Merged(bytes) => {
                let merged_size = bytes.len() as u64;
                let hash = self.blobs.put_bytes(Bytes::from(bytes)).await?;
                self.store.record_blob(project.id, &hash).await?;
                write(
                    existing,
                    hash,
                    merged_size,
                    VersionStatus::Merged,
                    VersionOp::Write,
                    mode,
                )
            }
            MergeOutcome::Conflict(reason) => {
                tracing::info!(path = %req.path, %reason, "true conflict: last writer wins, the previous head stays in history");
                write(
                    existing,
                    req.hash.clone(),
                    size,
                    VersionStatus::Lww,
                    VersionOp::Write,
                    mode,
                )
            }
        }
    }

    /// A blob's bytes for merging, or `None` when it is too large to merge.
    async fn read_for_merge(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, ApiError> {
        match self.blobs.read_all(hash, MAX_MERGE_BYTES).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(BlobError::TooLarge { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// One-call upload and commit for pipelines: `PUT .../files/{path}`.
    /// Without a base version the upload overwrites the head as it is now.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_file(
        &self,
        caller: &Caller,
        project: &str,
        path: WsPath,
        base_version: Option<i64>,
        agent_id: Option<String>,
        message: Option<String>,
        body: ByteStream,
    ) -> Result<VersionInfo, ApiError> {
        let row = self.project_for(caller, project, true).await?;
        let (hash, size, _) = self.blobs.put_stream(None, body, self.limits.max_blob_bytes).await?;
        let base_version = match base_version {
            Some(b) => Some(b),
            None => match self.store.node_at(row.id, &path).await? {
                Some(n) if !n.deleted => Some(n.head.version),
                _ => None,
            },
        };
        let req = CommitRequest {
            path,
            base_version,
            hash,
            kind: None,
            mode: None,
            agent_id,
            message,
            idempotency_key: None,
            node: None,
            content_base64: None,
        };
        self.commit_content(caller, project, req, Some(size)).await
    }

    pub async fn mkdir(
        &self,
        caller: &Caller,
        project: &str,
        req: MkdirRequest,
    ) -> Result<(VersionInfo, bool), ApiError> {
        let project = self.project_for(caller, project, true).await?;
        check_mode(req.mode)?;
        let meta = meta(caller, req.agent_id, req.message)?;
        let applied = self
            .store
            .mkdir(project.id, &req.path, req.mode.unwrap_or(0o755), meta)
            .await?;
        self.feed.notify(project.id);
        Ok(applied.value)
    }

    pub async fn rename(&self, caller: &Caller, project: &str, req: RenameRequest) -> Result<VersionInfo, ApiError> {
        let project = self.project_for(caller, project, true).await?;
        let meta = meta(caller, req.agent_id, req.message)?;
        match self
            .store
            .rename(
                project.id,
                &req.from,
                &req.to,
                req.replace,
                NodeGuard {
                    base_version: req.base_version,
                    node: req.node,
                },
                meta,
            )
            .await
        {
            Ok(applied) => {
                self.feed.notify(project.id);
                Ok(applied.value.moved)
            }
            Err(StoreError::HeadMoved) => Err(self.stale(&project, &req.from).await),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, caller: &Caller, project: &str, req: DeleteRequest) -> Result<DeleteResponse, ApiError> {
        let project = self.project_for(caller, project, true).await?;
        let meta = meta(caller, req.agent_id, req.message)?;
        match self
            .store
            .delete(
                project.id,
                &req.path,
                NodeGuard {
                    base_version: req.base_version,
                    node: req.node,
                },
                req.recursive,
                meta,
            )
            .await
        {
            Ok(applied) => {
                self.feed.notify(project.id);
                Ok(DeleteResponse { deleted: applied.value })
            }
            Err(StoreError::HeadMoved) => Err(self.stale(&project, &req.path).await),
            Err(e) => Err(e.into()),
        }
    }

    async fn stale(&self, project: &ProjectRow, path: &WsPath) -> ApiError {
        let head = self
            .store
            .node_at(project.id, path)
            .await
            .ok()
            .flatten()
            .map(|n| n.head);
        ApiError::conflict(
            ErrorCode::BaseVersionStale,
            format!("{path} changed since the given base version; re-read it and retry"),
        )
        .with_head(head)
    }

    pub async fn rollback(
        &self,
        caller: &Caller,
        project: &str,
        req: RollbackRequest,
    ) -> Result<VersionInfo, ApiError> {
        let project = self.project_for(caller, project, true).await?;
        let meta = meta(caller, req.agent_id, req.message)?;
        let _serialised = self.path_lock(project.id, &req.path).lock().await;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let node = self
                .store
                .node_at(project.id, &req.path)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("{} has no history", req.path)))?;
            let target = self.store.version(node.node, req.version).await?.ok_or_else(|| {
                ApiError::not_found(format!(
                    "{} has no version {} (head is {})",
                    req.path, req.version, node.head.version
                ))
            })?;
            if target.deleted {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidField,
                    format!(
                        "version {} of {} is a deletion; use the delete route to delete",
                        req.version, req.path
                    ),
                ));
            }
            let write = ContentWrite {
                target: WriteTarget::Existing {
                    node: node.node,
                    expected_head: node.head.version,
                },
                kind: target.kind,
                mode: target.mode,
                hash: target.hash,
                size: target.size,
                op: VersionOp::Rollback,
                status: VersionStatus::Clean,
                idempotency_key: None,
                record_blob: None,
            };
            match self.store.write_content(project.id, write, meta.clone()).await {
                Ok(applied) => {
                    self.feed.notify(project.id);
                    return Ok(applied.value);
                }
                Err(StoreError::HeadMoved) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Busy,
            format!("{} is changing too fast; retry", req.path),
        ))
    }

    // ----- skills -----

    pub async fn put_skill_blob(
        &self,
        caller: &Caller,
        hash: &BlobHash,
        body: ByteStream,
    ) -> Result<BlobReceipt, ApiError> {
        caller.require_admin()?;
        let (hash, size, created) = self
            .blobs
            .put_stream(Some(hash), body, self.limits.max_blob_bytes)
            .await?;
        Ok(BlobReceipt { hash, size, created })
    }

    pub async fn get_skill_blob(&self, hash: &BlobHash) -> Result<(u64, ByteStream), ApiError> {
        if !self.store.skill_has_blob(hash).await? {
            return Err(ApiError::not_found(format!(
                "blob {hash} is not part of the published skills"
            )));
        }
        Ok(self.blobs.get(hash).await?)
    }

    pub async fn skills(&self) -> Result<SkillsListing, ApiError> {
        Ok(self.store.skills().await?)
    }

    /// Replaces the published skills. Each skill is a top-level folder with a
    /// SKILL.md whose front matter names it and describes it.
    pub async fn publish_skills(&self, caller: &Caller, req: PublishSkillsRequest) -> Result<SkillsListing, ApiError> {
        caller.require_admin()?;
        let mut by_skill: BTreeMap<String, Vec<SkillFile>> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for file in req.files {
            check_mode(Some(file.mode))?;
            if !seen.insert(file.path.clone()) {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidSkill,
                    format!("{} is listed twice; each skill file appears once", file.path),
                ));
            }
            let Some((skill, _)) = file.path.as_str().split_once('/') else {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidSkill,
                    format!(
                        "{}: every skill file must be inside a skill folder (skill-name/...)",
                        file.path
                    ),
                ));
            };
            by_skill.entry(skill.to_string()).or_default().push(file);
        }
        let mut skills = Vec::new();
        for (name, files) in by_skill {
            let manifest = files
                .iter()
                .find(|f| f.path.as_str() == format!("{name}/SKILL.md"))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        ErrorCode::InvalidSkill,
                        format!("skill {name}: missing {name}/SKILL.md"),
                    )
                })?;
            for f in &files {
                match self.blobs.size(&f.hash).await? {
                    Some(size) if size == f.size => {}
                    Some(size) => {
                        return Err(ApiError::bad_request(
                            ErrorCode::InvalidSkill,
                            format!("skill {name}: {} is {size} bytes, not {}", f.path, f.size),
                        ))
                    }
                    None => {
                        return Err(ApiError::bad_request(
                            ErrorCode::BlobMissing,
                            format!("skill {name}: blob {} of {} was not uploaded", f.hash, f.path),
                        ))
                    }
                }
            }
            let text = self.blobs.read_all(&manifest.hash, 1 << 20).await?;
            let (front_name, description) = parse_skill_front_matter(&text).map_err(|problem| {
                ApiError::bad_request(ErrorCode::InvalidSkill, format!("skill {name}: SKILL.md {problem}"))
            })?;
            if front_name != name {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidSkill,
                    format!("skill {name}: SKILL.md front matter says name: {front_name}, but the folder is {name}"),
                ));
            }
            skills.push(SkillInfo {
                name,
                description,
                files,
            });
        }
        self.store.publish_skills(skills, meta(caller, None, None)?).await?;
        self.skills().await
    }
}

/// The `name` and `description` of a SKILL.md's YAML front matter.
pub fn parse_skill_front_matter(bytes: &[u8]) -> Result<(String, String), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
        .ok_or("does not start with a front matter block (a line `---`)")?;
    let end = rest.find("\n---").ok_or("front matter is not closed by a line `---`")?;
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&rest[..end]).map_err(|e| format!("front matter is not valid YAML: {e}"))?;
    let field = |key: &str| -> Result<String, String> {
        match yaml.get(key) {
            Some(serde_yaml::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(_) => Err(format!("front matter field `{key}` must be a non-empty string")),
            None => Err(format!("front matter has no `{key}` field")),
        }
    };
    Ok((field("name")?, field("description")?))
}

#[cfg(test)]
mod tests {
    use super::parse_skill_front_matter;

    #[test]
    fn front_matter() {
        let ok = b"---\nname: pdf\ndescription: Read PDFs\n---\n# PDF\n";
        assert_eq!(
            parse_skill_front_matter(ok).unwrap(),
            ("pdf".into(), "Read PDFs".into())
        );
        assert!(parse_skill_front_matter(b"# no front matter")
            .unwrap_err()
            .contains("front matter"));
        assert!(parse_skill_front_matter(b"---\nname: x\n---\n")
            .unwrap_err()
            .contains("description"));
        assert!(parse_skill_front_matter(b"---\nname: [x\n---\n")
            .unwrap_err()
            .contains("YAML"));
        assert!(parse_skill_front_matter(b"---\nname: x\ndescription: y\n")
            .unwrap_err()
            .contains("closed"));
    }
}
