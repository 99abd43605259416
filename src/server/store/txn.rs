//! The namespace and version logic of every write, once for both stores.
//!
//! `write_content`, `mkdir`, `rename` and `delete` (and the steps they share:
//! `mkdir -p` of missing parents, tombstones, new nodes) are written here
//! against [`Txn`]: the few row operations in which SQLite and PostgreSQL
//! differ. A store opens its transaction, wraps it in its `Txn` and runs
//! these functions; what they may do given the rows is decided by
//! [`namespace`].
//!
//! # Why an async trait that SQLite answers synchronously
//!
//! PostgreSQL is reached through tokio-postgres, whose every query is a
//! future; SQLite runs synchronously on its writer thread, inside the batch's
//! transaction. A synchronous core would force PostgreSQL to block a runtime
//! thread on every query (reads depend on earlier reads and writes, so they
//! cannot be planned ahead). So the core is `async`, and the SQLite `Txn`
//! implements each method as an `async fn` that never awaits anything: its
//! futures are ready on the first poll, and the writer thread drives a whole
//! transaction with one `now_or_never()` (no executor, no waker, no runtime on
//! that thread; see `sqlite::rows::run_now`). The trait uses native `async fn`
//! (not `#[async_trait]`): no boxing per row access, and the SQLite futures,
//! which borrow a `!Sync` connection, need not be `Send`, while the
//! PostgreSQL ones still are (auto traits leak through the concrete types).
//!
//! # Locks and races
//!
//! [`Lock`] says how a read must lock the row until the transaction ends;
//! SQLite has one writer and ignores it. [`Txn::append_version`] moves a
//! node's head with a compare-and-set: when it loses (only possible in
//! PostgreSQL), a content write answers `HeadMoved` (the caller's expected
//! head is stale), and any other step answers [`Txn::lost_race`], which makes
//! the PostgreSQL store run the whole transaction again.
//!
//! # Order of a rename
//!
//! Both stores rename in one order: lock the source, lock (read) the source's
//! descendants, create the destination's missing parents, then look at,
//! check and tombstone the node being replaced, move the descendants and
//! append the rename version. Every lock is taken before the first write
//! (the first version appended, which takes the project row's cursor lock in
//! PostgreSQL), so a transaction never waits for a row lock while it holds
//! the project row. SQLite used to tombstone the target before creating the
//! parents. The outcome is the same either way, change-feed events
//! included: a target only exists when its parents do, so at most one of the
//! two steps writes anything, and a failure undoes both. SQLite now simply
//! reads in the same order as PostgreSQL must lock.

use super::namespace::{self, NodeRow};
use super::{Applied, ContentWrite, NewVersion, NodeGuard, RenameOutcome, StoreError, WriteMeta, WriteTarget};
use crate::api::{NodeKind, VersionInfo};
use crate::model::{BlobHash, WsPath};

/// How a transaction reads a node row (PostgreSQL row locks; SQLite's single
/// writer needs none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// A plain read (the unique index or a later lock guards the write).
    None,
    /// The node must stay as it is (an ancestor of something being created).
    Share,
    /// The node is about to change (head, path or deletion).
    Update,
}

/// The row operations of one write transaction in one project. Each store
/// implements it over its open transaction.
pub(crate) trait Txn {
    /// A store error, or a backend failure the store may retry.
    type Error: From<StoreError>;

    /// The error for a compare-and-set lost to a concurrent transaction:
    /// running the transaction again will see the winner.
    fn lost_race() -> Self::Error;

    /// The live node at `path`, read with `lock`.
    async fn live_node(&self, path: &str, lock: Lock) -> Result<Option<NodeRow>, Self::Error>;

    /// The node with this id in this project (live or deleted), locked for an
    /// update of its head.
    async fn node_by_id(&self, id: i64) -> Result<Option<NodeRow>, Self::Error>;

    /// Live descendants of the directory path `dir`, deepest first, locked
    /// for update.
    async fn live_descendants(&self, dir: &str) -> Result<Vec<NodeRow>, Self::Error>;

    async fn version(&self, node: i64, number: i64) -> Result<Option<VersionInfo>, Self::Error>;

    /// The project's change-feed cursor.
    async fn cursor(&self) -> Result<i64, Self::Error>;

    /// Whether a version of this project already carries the idempotency key.
    async fn idempotency_key_used(&self, key: &str) -> Result<bool, Self::Error>;

    /// Records that the project holds this blob (a no-op when it already does).
    async fn record_blob(&self, hash: &BlobHash) -> Result<(), Self::Error>;

    /// Keeps a copy of a blob whose file is not synced yet, durable with this
    /// transaction ([`ContentWrite::unsynced_copy`]).
    async fn keep_unsynced_blob(&self, hash: &BlobHash, bytes: &[u8]) -> Result<(), Self::Error>;

    /// Inserts a live node row at `path` whose head will be version 1; the
    /// caller appends that version next. Returns the node's id.
    async fn insert_node(&self, path: &str, kind: NodeKind) -> Result<i64, Self::Error>;

    /// Moves a node row to `path` without a version (a descendant of a
    /// renamed directory).
    async fn move_node(&self, id: i64, path: &str) -> Result<(), Self::Error>;

    /// Appends version `parent + 1` (or 1) to `node`, moves the node's head
    /// (a compare-and-set on `parent`), records the change-feed event and the
    /// audit row. Returns the version and the cursor it advanced the project
    /// to, or `None` when the head was no longer `parent`.
    async fn append_version(
        &self,
        node: i64,
        parent: Option<i64>,
        v: &NewVersion<'_>,
        meta: &WriteMeta,
    ) -> Result<Option<(VersionInfo, i64)>, Self::Error>;
}

/// The node's head version (a node without one is a broken database).
async fn head_of<T: Txn>(t: &T, node: &NodeRow) -> Result<VersionInfo, T::Error> {
    Ok(t.version(node.id, node.head)
        .await?
        .ok_or_else(|| StoreError::Backend("node head missing".into()))?)
}

/// Appends a version to an existing node; a lost compare-and-set runs the
/// transaction again.
async fn append<T: Txn>(
    t: &T,
    node: i64,
    parent: i64,
    v: &NewVersion<'_>,
    meta: &WriteMeta,
) -> Result<(VersionInfo, i64), T::Error> {
    t.append_version(node, Some(parent), v, meta)
        .await?
        .ok_or_else(T::lost_race)
}

async fn create_node<T: Txn>(t: &T, v: &NewVersion<'_>, meta: &WriteMeta) -> Result<(VersionInfo, i64), T::Error> {
    let node = t.insert_node(v.path, v.kind).await?;
    t.append_version(node, None, v, meta).await?.ok_or_else(T::lost_race)
}

/// `mkdir -p` of every ancestor of `path` (each share-locked, so none can be
/// moved or deleted before this transaction ends); fails if one of them is
/// not a directory. Returns the cursor it advanced to (0 if nothing was made).
async fn ensure_parents<T: Txn>(t: &T, path: &WsPath, meta: &WriteMeta) -> Result<i64, T::Error> {
    let mut cursor = 0;
    for dir in path.ancestors() {
        cursor = cursor.max(ensure_dir(t, &dir, 0o755, meta, false).await?.1);
    }
    Ok(cursor)
}

/// Returns the directory's head version (only when `want_head` or created),
/// the cursor it advanced to (0 if it already existed) and whether it was
/// created.
async fn ensure_dir<T: Txn>(
    t: &T,
    dir: &WsPath,
    mode: u32,
    meta: &WriteMeta,
    want_head: bool,
) -> Result<(Option<VersionInfo>, i64, bool), T::Error> {
    match t.live_node(dir.as_str(), Lock::Share).await? {
        Some(node) if node.kind == NodeKind::Dir => {
            let head = if want_head {
                Some(head_of(t, &node).await?)
            } else {
                None
            };
            Ok((head, 0, false))
        }
        Some(node) => Err(node.not_a_directory().into()),
        None => {
            let v = NewVersion::directory(dir.as_str(), mode);
            let (info, seq) = create_node(t, &v, meta).await?;
            Ok((Some(info), seq, true))
        }
    }
}

/// Deletes `node` with a tombstone version that keeps its head's content.
async fn tombstone<T: Txn>(t: &T, node: &NodeRow, meta: &WriteMeta) -> Result<(VersionInfo, i64), T::Error> {
    let head = head_of(t, node).await?;
    let v = NewVersion::tombstone(node, &head);
    append(t, node.id, node.head, &v, meta).await
}

/// [`MetadataStore::write_content`](super::MetadataStore::write_content).
pub(crate) async fn write_content<T: Txn>(
    t: &T,
    write: &ContentWrite,
    meta: &WriteMeta,
) -> Result<Applied<VersionInfo>, T::Error> {
    if let Some(key) = &write.idempotency_key {
        if t.idempotency_key_used(key).await? {
            // A concurrent retry of the same commit won: let the caller find it.
            return Err(StoreError::HeadMoved.into());
        }
    }
    if let Some(hash) = &write.record_blob {
        t.record_blob(hash).await?;
        if let Some(bytes) = &write.unsynced_copy {
            t.keep_unsynced_blob(hash, bytes).await?;
        }
    } else if write.unsynced_copy.is_some() {
        return Err(StoreError::Backend("a copy of an unsynced blob came without its blob".to_string()).into());
    }
    match &write.target {
        WriteTarget::New { path } => {
            if t.live_node(path.as_str(), Lock::None).await?.is_some() {
                return Err(StoreError::HeadMoved.into());
            }
            let parents_cursor = ensure_parents(t, path, meta).await?;
            let v = NewVersion::content(write, path.as_str());
            // A node created meanwhile at the path (PostgreSQL) trips the
            // unique index: the retry then answers HeadMoved.
            let (info, seq) = create_node(t, &v, meta).await?;
            Ok(Applied {
                value: info,
                cursor: seq.max(parents_cursor),
            })
        }
        WriteTarget::Existing { node, expected_head } => {
            // The row lock makes the check and the write one atomic step.
            let row = t
                .node_by_id(*node)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("node {node} does not exist")))?;
            if row.head != *expected_head {
                return Err(StoreError::HeadMoved.into());
            }
            let mut parents_cursor = 0;
            if row.deleted {
                // Restoring a deleted node: its path must be free again.
                if let Some(other) = t.live_node(&row.path, Lock::None).await? {
                    return Err(row.restore_blocked_by(&other).into());
                }
                let path = WsPath::parse(&row.path).map_err(|e| StoreError::Backend(e.to_string()))?;
                parents_cursor = ensure_parents(t, &path, meta).await?;
            } else {
                row.check_write_kind(write.kind)?;
            }
            let v = NewVersion::content(write, &row.path);
            // A lost compare-and-set is the caller's stale expectation, not
            // ours to re-read: no retry.
            let (info, seq) = t
                .append_version(row.id, Some(row.head), &v, meta)
                .await?
                .ok_or(StoreError::HeadMoved)?;
            Ok(Applied {
                value: info,
                cursor: seq.max(parents_cursor),
            })
        }
    }
}

/// [`MetadataStore::mkdir`](super::MetadataStore::mkdir).
pub(crate) async fn mkdir<T: Txn>(
    t: &T,
    path: &WsPath,
    mode: u32,
    meta: &WriteMeta,
) -> Result<Applied<(VersionInfo, bool)>, T::Error> {
    let parents_cursor = ensure_parents(t, path, meta).await?;
    let (info, seq, created) = ensure_dir(t, path, mode, meta, true).await?;
    let info = info.ok_or_else(|| StoreError::Backend("directory head missing".into()))?;
    let cursor = if seq == 0 && parents_cursor == 0 {
        t.cursor().await?
    } else {
        seq.max(parents_cursor)
    };
    Ok(Applied {
        value: (info, created),
        cursor,
    })
}

/// [`MetadataStore::rename`](super::MetadataStore::rename), in the order the
/// module documentation gives.
pub(crate) async fn rename<T: Txn>(
    t: &T,
    from: &WsPath,
    to: &WsPath,
    replace: bool,
    guard: &NodeGuard,
    meta: &WriteMeta,
) -> Result<Applied<RenameOutcome>, T::Error> {
    let source = t
        .live_node(from.as_str(), Lock::Update)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("{from} does not exist")))?;
    namespace::check_rename_source(&source, guard, from, to)?;
    if to == from {
        let head = head_of(t, &source).await?;
        return Ok(Applied {
            value: RenameOutcome {
                moved: head,
                replaced: None,
            },
            cursor: t.cursor().await?,
        });
    }
    // Lock everything that moves before anything is written.
    let children = if source.kind == NodeKind::Dir {
        t.live_descendants(from.as_str()).await?
    } else {
        Vec::new()
    };
    // The destination's ancestors are share-locked (or created) before the
    // target is looked at. If they had to be created, there is no target yet.
    let mut cursor = ensure_parents(t, to, meta).await?;
    let mut replaced = None;
    if let Some(target) = t.live_node(to.as_str(), Lock::Update).await? {
        namespace::check_rename_target(&source, &target, replace, from, to)?;
        if target.kind == NodeKind::Dir && !t.live_descendants(&target.path).await?.is_empty() {
            return Err(namespace::rename_target_not_empty(to).into());
        }
        let (info, seq) = tombstone(t, &target, meta).await?;
        cursor = cursor.max(seq);
        replaced = Some(info);
    }
    // Children keep their ids; only their current path moves with the directory.
    for child in &children {
        t.move_node(child.id, &namespace::moved_path(&child.path, from, to))
            .await?;
    }
    let head = head_of(t, &source).await?;
    let v = NewVersion::rename(from.as_str(), to.as_str(), source.kind, &head);
    let (moved, seq) = append(t, source.id, source.head, &v, meta).await?;
    Ok(Applied {
        value: RenameOutcome { moved, replaced },
        cursor: cursor.max(seq),
    })
}

/// [`MetadataStore::delete`](super::MetadataStore::delete).
pub(crate) async fn delete<T: Txn>(
    t: &T,
    path: &WsPath,
    guard: &NodeGuard,
    recursive: bool,
    meta: &WriteMeta,
) -> Result<Applied<Vec<VersionInfo>>, T::Error> {
    let node = t
        .live_node(path.as_str(), Lock::Update)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("{path} does not exist")))?;
    node.check_guard(guard)?;
    let mut deleted = Vec::new();
    let mut cursor = 0;
    if node.kind == NodeKind::Dir {
        let children = t.live_descendants(&node.path).await?;
        namespace::check_delete_contents(path, !children.is_empty(), recursive)?;
        for child in &children {
            let (info, seq) = tombstone(t, child, meta).await?;
            cursor = cursor.max(seq);
            deleted.push(info);
        }
    }
    let (info, seq) = tombstone(t, &node, meta).await?;
    deleted.insert(0, info);
    Ok(Applied {
        value: deleted,
        cursor: cursor.max(seq),
    })
}
