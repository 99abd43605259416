//! The commit path: a commit's checks, idempotency, inline content, the plan
//! against the head (the three-way merge decision) with its compare-and-set
//! retry loop, and the one-call `PUT files` upload.

use bytes::Bytes;

use super::upload::StoredUpload;
use super::{check_mode, check_new_path, meta, Service, MAX_COMMIT_ATTEMPTS};
use crate::api::*;
use crate::merge::{merge, MergeOutcome};
use crate::model::{BlobHash, WsPath};
use crate::server::auth::Caller;
use crate::server::blobs::{BlobError, ByteStream};
use crate::server::error::ApiError;
use crate::server::store::{ContentWrite, FileTimes, NodeHead, ProjectRow, StoreError, WriteMeta, WriteTarget};

/// Inputs larger than this are not merged: the commit falls back to last-writer-wins.
pub const MAX_MERGE_BYTES: u64 = 16 * 1024 * 1024;
const MAX_IDEMPOTENCY_KEY: usize = 128;
const MAX_SYMLINK_TARGET: u64 = 4096;

/// The file times a commit names, checked: a malformed one refuses the
/// commit (400) before anything is stored.
fn request_times(req: &CommitRequest) -> Result<FileTimes, ApiError> {
    let parse = |field: &str, raw: &Option<String>| -> Result<Option<i64>, ApiError> {
        raw.as_deref()
            .map(|t| {
                crate::model::parse_file_time(t)
                    .map_err(|e| ApiError::bad_request(ErrorCode::InvalidField, format!("{field}: {e}")))
            })
            .transpose()
    };
    Ok(FileTimes {
        mtime: parse("mtime", &req.mtime)?,
        atime: parse("atime", &req.atime)?,
    })
}

fn default_mode(kind: NodeKind) -> u32 {
    match kind {
        NodeKind::File => 0o644,
        NodeKind::Dir => 0o755,
        NodeKind::Symlink => 0o777,
    }
}

/// What a `PUT files` request says besides its body.
#[derive(Debug, Clone, Default)]
pub struct PutFileOptions {
    /// The version the upload was based on; `None`: the head as it is now.
    pub base_version: Option<i64>,
    pub agent_id: Option<String>,
    pub message: Option<String>,
    /// The file's times (RFC 3339 or Unix seconds); `None`: the commit time.
    pub mtime: Option<String>,
    pub atime: Option<String>,
    /// The body's length when the request declared it (`Content-Length`):
    /// a body over `--max-file-bytes` is refused before it is read, and a
    /// large one is cut into chunks from its first byte.
    pub content_length: Option<u64>,
}

/// A commit whose checks passed and whose content is in place.
pub(super) struct Prepared {
    pub req: CommitRequest,
    pub kind: NodeKind,
    pub times: FileTimes,
    pub meta: WriteMeta,
    pub size: u64,
    /// The content came with the request (inline or `PUT files`): the blob
    /// becomes the project's in the commit's transaction.
    pub came_with_request: bool,
    /// The inline content, when its blob file was written without a sync:
    /// kept in the commit's transaction ([`ContentWrite::unsynced_copy`]).
    pub unsynced_copy: Option<Bytes>,
}

impl Prepared {
    pub fn log_committed(&self, project: &ProjectRow, v: &VersionInfo) {
        // Client text goes out through `?` (Debug): quoted, with newlines
        // and escape sequences escaped.
        tracing::debug!(
            project = ?project.name,
            path = ?self.req.path.as_str(),
            version = v.version,
            agent = ?self.meta.agent_id,
            commit_message = ?self.meta.message,
            "committed"
        );
    }
}

/// A lookup a batch may have done already for many entries at once.
pub(super) enum Lookup<T> {
    /// Done: what it found.
    Found(Option<T>),
    /// Not done yet: ask the store.
    Ask,
}

pub(super) enum Checked {
    Ready(Prepared),
    /// A retry of a commit that already landed: its version.
    Done(VersionInfo),
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
    pub async fn commit(&self, caller: &Caller, project: &str, req: CommitRequest) -> Result<VersionInfo, ApiError> {
        check_new_path(&req.path)?;
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
        match self
            .prepare_commit(caller, &project, req, uploaded, Lookup::Ask)
            .await?
        {
            Checked::Done(v) => Ok(v),
            Checked::Ready(prepared) => self.commit_prepared(&project, prepared).await,
        }
    }

    /// A commit's checks, its idempotency lookup and its content put in
    /// place: everything before the head is read.
    pub(super) async fn prepare_commit(
        &self,
        caller: &Caller,
        project: &ProjectRow,
        req: CommitRequest,
        uploaded: Option<u64>,
        idempotent: Lookup<VersionInfo>,
    ) -> Result<Checked, ApiError> {
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
        let times = request_times(&req)?;
        let meta = meta(caller, req.agent_id.clone(), req.message.clone())?;
        let done = match idempotent {
            Lookup::Found(done) => done,
            Lookup::Ask => self.idempotent_result(project.id, &req).await?,
        };
        if let Some(done) = done {
            return Ok(Checked::Done(done));
        }
        let (size, unsynced_copy) = match (req.content_base64.as_deref(), uploaded) {
            (Some(encoded), _) => self.store_inline_content(&req.hash, encoded).await?,
            (None, Some(size)) => (size, None),
            (None, None) => (self.visible_blob_size(project, &req.hash).await?, None),
        };
        let came_with_request = req.content_base64.is_some() || uploaded.is_some();
        if kind == NodeKind::Symlink && size > MAX_SYMLINK_TARGET {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidField,
                format!("a symlink target is at most {MAX_SYMLINK_TARGET} bytes"),
            ));
        }
        Ok(Checked::Ready(Prepared {
            req,
            kind,
            times,
            meta,
            size,
            came_with_request,
            unsynced_copy,
        }))
    }

    /// Plans `p` against the head as it is now: the version to write, or
    /// the head itself when it already holds what `p` asks for.
    pub(super) async fn plan_prepared(
        &self,
        project: &ProjectRow,
        p: &Prepared,
        head: Lookup<NodeHead>,
    ) -> Result<Result<ContentWrite, VersionInfo>, ApiError> {
        let head = match head {
            Lookup::Found(head) => head,
            Lookup::Ask => self.store.node_at(project.id, &p.req.path).await?,
        };
        let plan = match self.plan_commit(project, &p.req, p.kind, p.size, head, p.times).await? {
            Planned::AlreadyThere(v) => return Ok(Err(v)),
            Planned::Write(plan) => plan,
        };
        // Merged bytes are nobody's local file: they get the commit time.
        let times = if plan.hash == p.req.hash {
            p.times
        } else {
            FileTimes::default()
        };
        Ok(Ok(ContentWrite {
            target: plan.target,
            kind: p.kind,
            mode: plan.mode,
            hash: plan.hash,
            size: plan.size,
            op: plan.op,
            status: plan.status,
            idempotency_key: p.req.idempotency_key.clone(),
            record_blob: p.came_with_request.then(|| p.req.hash.clone()),
            unsynced_copy: p.unsynced_copy.clone(),
            times,
        }))
    }

    /// Plans and writes `p` under its path lock, merging again whenever the
    /// head moves meanwhile.
    pub(super) async fn commit_prepared(&self, project: &ProjectRow, p: Prepared) -> Result<VersionInfo, ApiError> {
        let _serialised = self.path_lock(project.id, &p.req.path).lock().await;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let write = match self.plan_prepared(project, &p, Lookup::Ask).await? {
                Err(already_there) => return Ok(already_there),
                Ok(write) => write,
            };
            match self.store.write_content(project.id, write, p.meta.clone()).await {
                Ok(applied) => {
                    self.feed.notify(project.id);
                    self.metrics.commit(applied.value.status);
                    p.log_committed(project, &applied.value);
                    return Ok(applied.value);
                }
                Err(StoreError::HeadMoved) => {
                    if let Some(done) = self.idempotent_result(project.id, &p.req).await? {
                        return Ok(done);
                    }
                    tracing::debug!(path = ?p.req.path.as_str(), "commit lost the compare-and-set; merging again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Busy,
            format!("{} is changing too fast to commit; retry", p.req.path),
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

    /// Stores the content a commit carried inline as the blob `hash`; its
    /// size, and the copy to keep with the commit when the blob's file is
    /// not synced yet.
    async fn store_inline_content(&self, hash: &BlobHash, encoded: &str) -> Result<(u64, Option<Bytes>), ApiError> {
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
        // Inline content is a blob like any upload: the same size limit.
        if bytes.len() as u64 > self.limits.max_blob_bytes {
            return Err(BlobError::TooLarge {
                limit: self.limits.max_blob_bytes,
            }
            .into());
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
        let unsynced_copy = self.store_small_content(Bytes::from(bytes)).await?;
        Ok((len, unsynced_copy))
    }

    async fn plan_commit(
        &self,
        project: &ProjectRow,
        req: &CommitRequest,
        kind: NodeKind,
        size: u64,
        head: Option<NodeHead>,
        times: FileTimes,
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
        // A commit that names times changes them, even with the same bytes
        // (`touch`); one that names none keeps the head's.
        let times_unchanged = times.mtime.is_none() || times == FileTimes::of(&head.head);
        let unchanged =
            |hash: &BlobHash| *hash == head.head.hash && mode == head.head.mode && kind == head.kind && times_unchanged;
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
            Some(base) => match self.store.version(head.node, base).await? {
                Some(found) => Some(found),
                // Retention pruned the base: nothing to merge against, the
                // writer's bytes win and the head stays in history.
                None if base >= 1 => {
                    tracing::info!(path = ?req.path.as_str(), base, "base version was pruned: last writer wins");
                    return write(
                        existing,
                        req.hash.clone(),
                        size,
                        VersionStatus::Lww,
                        VersionOp::Write,
                        mode,
                    );
                }
                None => return Err(unknown_base(base, Some(head.head.clone()))),
            },
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
            tracing::info!(path = ?req.path.as_str(), agent = ?req.agent_id, "not merged (symlink or over {MAX_MERGE_BYTES} bytes): last writer wins");
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
                tracing::info!(path = ?req.path.as_str(), agent = ?req.agent_id, reason = ?reason, "true conflict: last writer wins, the previous head stays in history");
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
    /// A body of any size up to `--max-file-bytes` streams into storage
    /// (`upload.rs`); a failed one commits nothing.
    pub async fn put_file(
        &self,
        caller: &Caller,
        project: &str,
        path: WsPath,
        options: PutFileOptions,
        body: ByteStream,
    ) -> Result<VersionInfo, ApiError> {
        check_new_path(&path)?;
        let row = self.project_for(caller, project, true).await?;
        let stored = self.store_upload(&row, body, options.content_length).await?;
        self.commit_upload(caller, &row, path, options, stored).await
    }

    /// Commits what [`Service::store_upload`] stored to `path`: registers
    /// a chunked upload's manifest first (the server cut it itself), then
    /// commits the hash as `PUT files` does.
    pub async fn commit_upload(
        &self,
        caller: &Caller,
        project: &ProjectRow,
        path: WsPath,
        options: PutFileOptions,
        stored: StoredUpload,
    ) -> Result<VersionInfo, ApiError> {
        check_new_path(&path)?;
        let PutFileOptions {
            base_version,
            agent_id,
            message,
            mtime,
            atime,
            content_length: _,
        } = options;
        if let StoredUpload::Chunked(manifest) = &stored {
            self.register_manifest_cut_by_server(project, manifest).await?;
        }
        let base_version = match base_version {
            Some(b) => Some(b),
            None => match self.store.node_at(project.id, &path).await? {
                Some(n) if !n.deleted => Some(n.head.version),
                _ => None,
            },
        };
        let req = CommitRequest {
            path,
            base_version,
            hash: stored.hash().clone(),
            kind: None,
            mode: None,
            agent_id,
            message,
            idempotency_key: None,
            node: None,
            content_base64: None,
            mtime,
            atime,
        };
        self.commit_content(caller, &project.name, req, Some(stored.size()))
            .await
    }
}
