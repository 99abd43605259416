//! The metadata store in PostgreSQL, shared by several stateless
//! `contextfs serve` instances.
//!
//! Same semantics as the embedded [`SqliteStore`](super::sqlite::SqliteStore),
//! but where SQLite gets them for free from its single writer, here the
//! database enforces them between concurrent transactions (READ COMMITTED):
//!
//! - **Compare-and-set on the head.** A content write locks its node row
//!   (`SELECT ... FOR NO KEY UPDATE`), compares the head with the expected one
//!   (`HeadMoved` otherwise), and moves the head with
//!   `UPDATE nodes SET head = $new ... WHERE id = $id AND head = $parent`,
//!   checking that exactly one row changed. Two instances can never both
//!   append version N+1 to a node (the `(node_id, number)` primary key is a
//!   third guard).
//! - **Gap-free, ordered change feed.** Each event takes its `seq` from
//!   `UPDATE projects SET cursor = cursor + 1 ... RETURNING cursor`. The row
//!   lock is held until commit and a commit is visible before its locks are
//!   released, so events of a project commit in `seq` order with no gaps, and
//!   a reader that saw `seq` N has seen every event before it. The bump is the
//!   last statement of its transaction, so the lock is held only briefly.
//! - **Namespace.** A partial unique index keeps one live node per path; an
//!   idempotency key is unique per project. Creating a node share-locks every
//!   ancestor directory (`FOR SHARE`) while renaming or deleting a directory
//!   locks it and its descendants (`FOR NO KEY UPDATE`) first, so a file can
//!   never be created under a directory that is being moved away.
//! - **Races become retries.** A transaction that hits a unique violation
//!   (someone created the same path or parent first), a deadlock or a
//!   serialization failure is rolled back and run again from the start, a
//!   few times; the fresh attempt sees the winner and answers as SQLite
//!   would (`HeadMoved`, `exists`, "already there"). If it keeps losing,
//!   `HeadMoved` tells the service to re-plan.
//! - **Cross-instance wake-ups.** The cursor bump also calls
//!   `pg_notify('contextfs_changes', project_id)`; notifications are sent on
//!   commit. [`MetadataStore::subscribe`] LISTENs on a dedicated connection
//!   and hands the project ids to the service's change feed.
//!
//! Schema changes are SQL files under `migrations/postgres/`, embedded in the
//! binary and applied on start inside one transaction holding an advisory
//! lock, so instances starting together do not race; `schema_version` records
//! what was applied.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls, Row};

use super::namespace::{self, NodeRow};
use super::*;
use crate::api::{AuditEntry, SkillFile, TreeEntry};

/// The SQL migrations, in order. Version N is `MIGRATIONS[N - 1]`; never edit
/// one that shipped: add the next file instead.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../../migrations/postgres/0001_initial.sql"))];

/// Key of the advisory lock that serialises migrations between instances.
const MIGRATION_LOCK: i64 = 0x636f_6e74_6578_7401; // "context" + 1
/// Key of the transaction-scoped advisory lock around `publish_skills`.
const SKILLS_LOCK: i64 = 0x636f_6e74_6578_7402;
/// The NOTIFY channel carrying the project id of every committed change.
pub const CHANGES_CHANNEL: &str = "contextfs_changes";
/// `application_name` of the LISTEN connection (to find it in `pg_stat_activity`).
pub const LISTENER_NAME: &str = "contextfs-listen";
/// Connections per instance.
const POOL_SIZE: usize = 16;
/// How often a transaction that lost a race is run again before giving up
/// with `HeadMoved`.
const MAX_TX_ATTEMPTS: u32 = 12;
/// How often the listener connection proves it is still alive.
const LISTEN_PING: Duration = Duration::from_secs(10);

pub struct PostgresStore {
    pool: Pool,
    config: tokio_postgres::Config,
}

/// A database error with the server's message and SQLSTATE when there is one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// A database error as a store error that says what was being done.
fn pg_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError + Copy {
    move |e| backend(format!("{what}: {}", describe(&e)))
}

/// Why a transaction attempt failed: a final store error, or a database
/// error that may only mean it lost a race.
enum TxError {
    Store(StoreError),
    Pg(tokio_postgres::Error),
    /// A compare-and-set inside the transaction found the row changed.
    Raced,
}

type TxResult<T> = Result<T, TxError>;

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        TxError::Pg(e)
    }
}

impl From<deadpool_postgres::PoolError> for TxError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        TxError::Store(backend(format!("no database connection: {e}")))
    }
}

impl TxError {
    /// Running the transaction again may succeed (or answer differently).
    fn retryable(&self) -> bool {
        match self {
            TxError::Raced => true,
            TxError::Pg(e) => e.code().is_some_and(|c| {
                *c == SqlState::UNIQUE_VIOLATION
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
            }),
            TxError::Store(_) => false,
        }
    }

    fn reason(&self) -> String {
        match self {
            TxError::Store(e) => e.to_string(),
            TxError::Pg(e) => describe(e),
            TxError::Raced => "a compare-and-set found the row changed".into(),
        }
    }

    fn into_store(self) -> StoreError {
        if self.retryable() {
            return StoreError::HeadMoved;
        }
        match self {
            TxError::Store(e) => e,
            TxError::Pg(e) => backend(describe(&e)),
            TxError::Raced => StoreError::HeadMoved,
        }
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        e.into_store()
    }
}

/// Runs `$body` in a READ COMMITTED transaction bound to `$tx`, commits, and
/// runs the whole thing again when it lost a race (see [`TxError::retryable`]).
/// `$body` is an expression that may use `.await` and `?` (into [`TxError`]).
macro_rules! write_tx {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut attempt: u32 = 0;
        loop {
            let outcome: TxResult<_> = async {
                let mut client = $store.pool.get().await?;
                let $tx = client.transaction().await?;
                let value = $body;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match outcome {
                Ok(value) => break Ok(value),
                Err(e) if e.retryable() && attempt + 1 < MAX_TX_ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(attempt, reason = %e.reason(), "transaction lost a race; running it again");
                    backoff(attempt).await;
                }
                Err(e) => break Err(e.into_store()),
            }
        }
    }};
}

/// A short, jittered, growing pause before running a transaction again.
async fn backoff(attempt: u32) {
    let cap_ms = 2u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(1 + rand::random::<u64>() % cap_ms)).await;
}

/// A column of a row, or a store error naming the column.
fn col<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> StoreResult<T> {
    row.try_get(idx)
        .map_err(|e| backend(format!("unexpected value in column {idx}: {e}")))
}

fn parse_kind(raw: &str) -> StoreResult<NodeKind> {
    NodeKind::parse(raw).ok_or_else(|| backend(format!("unknown node kind {raw:?} in the database")))
}

fn parse_hash(raw: &str) -> StoreResult<BlobHash> {
    BlobHash::parse(raw).map_err(|_| backend(format!("invalid hash {raw:?} in the database")))
}

/// The columns [`version_from_row`] reads, in order.
macro_rules! version_columns {
    () => {
        "node_id, number, path, kind, mode, hash, size, op, status, deleted, parent, author, agent_id, message, created_at"
    };
}

fn version_from_row(r: &Row) -> StoreResult<VersionInfo> {
    version_from_row_at(r, 0)
}

async fn get_version<C: GenericClient>(c: &C, node: i64, number: i64) -> TxResult<Option<VersionInfo>> {
    let stmt = c
        .prepare_cached(concat!(
            "SELECT ",
            version_columns!(),
            " FROM versions WHERE node_id = $1 AND number = $2"
        ))
        .await?;
    let row = c.query_opt(&stmt, &[&node, &number]).await?;
    Ok(row.as_ref().map(version_from_row).transpose()?)
}

async fn head_of<C: GenericClient>(c: &C, node: &NodeRow) -> TxResult<VersionInfo> {
    Ok(get_version(c, node.id, node.head)
        .await?
        .ok_or_else(|| backend("node head missing"))?)
}

fn node_from_row(r: &Row) -> StoreResult<NodeRow> {
    Ok(NodeRow {
        id: col(r, 0)?,
        path: col(r, 1)?,
        kind: parse_kind(col(r, 2)?)?,
        deleted: col(r, 3)?,
        head: col(r, 4)?,
    })
}

/// How a transaction reads a node row.
#[derive(Clone, Copy)]
enum Lock {
    /// A plain read (the unique index or a later lock guards the write).
    None,
    /// The node must stay as it is (an ancestor of something being created).
    Share,
    /// The node is about to change (head, path or deletion).
    Update,
}

async fn live_node<C: GenericClient>(c: &C, project_id: i64, path: &str, lock: Lock) -> TxResult<Option<NodeRow>> {
    let sql = match lock {
        Lock::None => {
            "SELECT id, path, kind, deleted, head FROM nodes WHERE project_id = $1 AND path = $2 AND NOT deleted"
        }
        Lock::Share => {
            "SELECT id, path, kind, deleted, head FROM nodes WHERE project_id = $1 AND path = $2 AND NOT deleted
             FOR SHARE"
        }
        Lock::Update => {
            "SELECT id, path, kind, deleted, head FROM nodes WHERE project_id = $1 AND path = $2 AND NOT deleted
             FOR NO KEY UPDATE"
        }
    };
    let stmt = c.prepare_cached(sql).await?;
    let row = c.query_opt(&stmt, &[&project_id, &path]).await?;
    Ok(row.as_ref().map(node_from_row).transpose()?)
}

/// The node with this id, locked for an update of its head.
async fn lock_node<C: GenericClient>(c: &C, project_id: i64, id: i64) -> TxResult<Option<NodeRow>> {
    let stmt = c
        .prepare_cached(
            "SELECT id, path, kind, deleted, head FROM nodes WHERE project_id = $1 AND id = $2 FOR NO KEY UPDATE",
        )
        .await?;
    let row = c.query_opt(&stmt, &[&project_id, &id]).await?;
    Ok(row.as_ref().map(node_from_row).transpose()?)
}

/// Live descendants of a directory path, deepest first, locked for update.
async fn live_descendants<C: GenericClient>(c: &C, project_id: i64, dir: &str) -> TxResult<Vec<NodeRow>> {
    // bytewise order: the path column is COLLATE "C"
    let (lower, upper) = namespace::descendant_range(dir);
    let stmt = c
        .prepare_cached(
            "SELECT id, path, kind, deleted, head FROM nodes
             WHERE project_id = $1 AND NOT deleted AND path >= $2 AND path < $3 ORDER BY path DESC
             FOR NO KEY UPDATE",
        )
        .await?;
    let rows = c.query(&stmt, &[&project_id, &lower, &upper]).await?;
    Ok(rows.iter().map(node_from_row).collect::<StoreResult<Vec<_>>>()?)
}

async fn current_cursor<C: GenericClient>(c: &C, project_id: i64) -> TxResult<i64> {
    let stmt = c.prepare_cached("SELECT cursor FROM projects WHERE id = $1").await?;
    let row = c.query_one(&stmt, &[&project_id]).await?;
    Ok(col(&row, 0)?)
}

#[allow(clippy::too_many_arguments)]
async fn audit<C: GenericClient>(
    c: &C,
    project_id: Option<i64>,
    meta: &WriteMeta,
    action: &str,
    path: Option<&str>,
    version: Option<i64>,
    status: Option<&str>,
    detail: Option<&str>,
) -> TxResult<()> {
    let sql = match project_id {
        // The per-project sequence number comes from the project row, so
        // entries commit in `seq` order (like the change feed).
        Some(_) => {
            "WITH s AS (UPDATE projects SET audit_seq = audit_seq + 1 WHERE id = $1 RETURNING audit_seq)
             INSERT INTO audit (project_id, seq, created_at, actor, agent_id, action, path, version, status, detail)
             SELECT $1, s.audit_seq, $2, $3, $4, $5, $6, $7, $8, $9 FROM s"
        }
        None => {
            "INSERT INTO audit (project_id, seq, created_at, actor, agent_id, action, path, version, status, detail)
             VALUES ($1, NULL, $2, $3, $4, $5, $6, $7, $8, $9)"
        }
    };
    let stmt = c.prepare_cached(sql).await?;
    c.execute(
        &stmt,
        &[
            &project_id,
            &meta.now,
            &meta.author,
            &meta.agent_id,
            &action,
            &path,
            &version,
            &status,
            &detail,
        ],
    )
    .await?;
    Ok(())
}

/// Appends version `parent + 1` (or 1) to `node`, moves the node's head with
/// a compare-and-set, and records the change-feed event (with its NOTIFY) and
/// the audit row. The node row must already be locked (or freshly inserted).
async fn append_version<C: GenericClient>(
    c: &C,
    project_id: i64,
    node: i64,
    parent: Option<i64>,
    v: &NewVersion<'_>,
    meta: &WriteMeta,
) -> TxResult<(VersionInfo, i64)> {
    let number = parent.unwrap_or(0) + 1;
    if let Some(parent) = parent {
        let stmt = c
            .prepare_cached(
                "UPDATE nodes SET head = $2, path = $3, kind = $4, deleted = $5, deleted_at = $6
                 WHERE id = $1 AND head = $7",
            )
            .await?;
        let deleted_at = v.deleted.then_some(meta.now);
        let moved = c
            .execute(
                &stmt,
                &[
                    &node,
                    &number,
                    &v.path,
                    &v.kind.as_str(),
                    &v.deleted,
                    &deleted_at,
                    &parent,
                ],
            )
            .await?;
        if moved != 1 {
            return Err(TxError::Raced);
        }
    }
    let stmt = c
        .prepare_cached(concat!(
            "INSERT INTO versions (node_id, number, project_id, path, kind, mode, hash, size, op, status, deleted,
                                   parent, author, agent_id, message, created_at, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             RETURNING ",
            version_columns!()
        ))
        .await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &node,
                &number,
                &project_id,
                &v.path,
                &v.kind.as_str(),
                &(v.mode as i64),
                &v.hash.as_str(),
                &(v.size as i64),
                &v.op.as_str(),
                &v.status.as_str(),
                &v.deleted,
                &parent,
                &meta.author,
                &meta.agent_id,
                &meta.message,
                &meta.now,
                &v.idempotency_key,
            ],
        )
        .await?;
    let info = version_from_row(&row)?;
    // One statement takes the next cursor and audit number from the project
    // row (locking it until commit), appends the event and the audit row and
    // queues the notification that other instances receive on commit.
    let stmt = c
        .prepare_cached(
            "WITH p AS (
                 UPDATE projects SET cursor = cursor + 1, audit_seq = audit_seq + 1 WHERE id = $1
                 RETURNING cursor, audit_seq, pg_notify('contextfs_changes', id::text) AS notified
             ),
             e AS (
                 INSERT INTO events (project_id, seq, node_id, version, old_path)
                 SELECT $1, p.cursor, $2, $3, $4 FROM p
             ),
             a AS (
                 INSERT INTO audit (project_id, seq, created_at, actor, agent_id, action, path, version, status, detail)
                 SELECT $1, p.audit_seq, $5, $6, $7, $8, $9, $3, $10, $4 FROM p
             )
             SELECT cursor FROM p",
        )
        .await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &project_id,
                &node,
                &number,
                &v.old_path,
                &meta.now,
                &meta.author,
                &meta.agent_id,
                &v.op.as_str(),
                &v.path,
                &v.status.as_str(),
            ],
        )
        .await?;
    Ok((info, col(&row, 0)?))
}

async fn create_node<C: GenericClient>(
    c: &C,
    project_id: i64,
    v: &NewVersion<'_>,
    meta: &WriteMeta,
) -> TxResult<(VersionInfo, i64)> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO nodes (project_id, path, kind, deleted, head) VALUES ($1, $2, $3, false, 1) RETURNING id",
        )
        .await?;
    let row = c.query_one(&stmt, &[&project_id, &v.path, &v.kind.as_str()]).await?;
    let node: i64 = col(&row, 0)?;
    append_version(c, project_id, node, None, v, meta).await
}

/// `mkdir -p` of every ancestor of `path` (each share-locked, so none can be
/// moved or deleted before this transaction ends); fails if one of them is
/// not a directory. Returns the cursor it advanced to (0 if nothing was made).
async fn ensure_parents<C: GenericClient>(c: &C, project_id: i64, path: &WsPath, meta: &WriteMeta) -> TxResult<i64> {
    let mut cursor = 0;
    for dir in path.ancestors() {
        cursor = cursor.max(ensure_dir(c, project_id, &dir, 0o755, meta, false).await?.1);
    }
    Ok(cursor)
}

/// Returns the directory's head version (only when `want_head` or created),
/// the cursor it advanced to (0 if it already existed) and whether it was
/// created.
async fn ensure_dir<C: GenericClient>(
    c: &C,
    project_id: i64,
    dir: &WsPath,
    mode: u32,
    meta: &WriteMeta,
    want_head: bool,
) -> TxResult<(Option<VersionInfo>, i64, bool)> {
    match live_node(c, project_id, dir.as_str(), Lock::Share).await? {
        Some(node) if node.kind == NodeKind::Dir => {
            let head = if want_head {
                Some(head_of(c, &node).await?)
            } else {
                None
            };
            Ok((head, 0, false))
        }
        Some(node) => Err(node.not_a_directory().into()),
        None => {
            let v = NewVersion::directory(dir.as_str(), mode);
            let (info, seq) = create_node(c, project_id, &v, meta).await?;
            Ok((Some(info), seq, true))
        }
    }
}

async fn tombstone<C: GenericClient>(
    c: &C,
    project_id: i64,
    node: &NodeRow,
    meta: &WriteMeta,
) -> TxResult<(VersionInfo, i64)> {
    let head = head_of(c, node).await?;
    let v = NewVersion::tombstone(node, &head);
    append_version(c, project_id, node.id, Some(node.head), &v, meta).await
}

fn project_row(r: &Row) -> StoreResult<ProjectRow> {
    Ok(ProjectRow {
        id: col(r, 0)?,
        name: col(r, 1)?,
        created_at: col(r, 2)?,
        cursor: col(r, 3)?,
    })
}

fn token_row(r: &Row) -> StoreResult<TokenRow> {
    let access: &str = col(r, 3)?;
    Ok(TokenRow {
        id: col(r, 0)?,
        project_id: col(r, 1)?,
        project: col(r, 2)?,
        access: Access::parse(access).ok_or_else(|| backend(format!("unknown access {access:?} in the database")))?,
        label: col(r, 4)?,
        created_at: col(r, 5)?,
        revoked: col::<Option<i64>>(r, 6)?.is_some(),
    })
}

macro_rules! token_select {
    () => {
        "SELECT t.id, t.project_id, p.name, t.access, t.label, t.created_at, t.revoked_at
         FROM tokens t JOIN projects p ON p.id = t.project_id"
    };
}

// ----- the transactions behind the write methods -----

async fn write_content_tx<C: GenericClient>(
    c: &C,
    project_id: i64,
    write: &ContentWrite,
    meta: &WriteMeta,
) -> TxResult<Applied<VersionInfo>> {
    if let Some(key) = &write.idempotency_key {
        let stmt = c
            .prepare_cached("SELECT 1 FROM versions WHERE project_id = $1 AND idempotency_key = $2")
            .await?;
        if c.query_opt(&stmt, &[&project_id, key]).await?.is_some() {
            // A concurrent retry of the same commit won: let the caller find it.
            return Err(StoreError::HeadMoved.into());
        }
    }
    if let Some(hash) = &write.record_blob {
        let stmt = c
            .prepare_cached("INSERT INTO project_blobs (project_id, hash) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .await?;
        c.execute(&stmt, &[&project_id, &hash.as_str()]).await?;
    }
    match &write.target {
        WriteTarget::New { path } => {
            if live_node(c, project_id, path.as_str(), Lock::None).await?.is_some() {
                return Err(StoreError::HeadMoved.into());
            }
            let parents_cursor = ensure_parents(c, project_id, path, meta).await?;
            let v = NewVersion::content(write, path.as_str());
            // A node created meanwhile at the path trips the unique index:
            // the retry then answers HeadMoved.
            let (info, seq) = create_node(c, project_id, &v, meta).await?;
            Ok(Applied {
                value: info,
                cursor: seq.max(parents_cursor),
            })
        }
        WriteTarget::Existing { node, expected_head } => {
            // The row lock makes the check and the write one atomic step.
            let row = lock_node(c, project_id, *node)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("node {node} does not exist")))?;
            if row.head != *expected_head {
                return Err(StoreError::HeadMoved.into());
            }
            let mut parents_cursor = 0;
            if row.deleted {
                // Restoring a deleted node: its path must be free again.
                if let Some(other) = live_node(c, project_id, &row.path, Lock::None).await? {
                    return Err(row.restore_blocked_by(&other).into());
                }
                let path = WsPath::parse(&row.path).map_err(backend)?;
                parents_cursor = ensure_parents(c, project_id, &path, meta).await?;
            } else {
                row.check_write_kind(write.kind)?;
            }
            let v = NewVersion::content(write, &row.path);
            let (info, seq) = match append_version(c, project_id, row.id, Some(row.head), &v, meta).await {
                // The head is the caller's expectation, not ours to re-read.
                Err(TxError::Raced) => return Err(StoreError::HeadMoved.into()),
                other => other?,
            };
            Ok(Applied {
                value: info,
                cursor: seq.max(parents_cursor),
            })
        }
    }
}

async fn mkdir_tx<C: GenericClient>(
    c: &C,
    project_id: i64,
    path: &WsPath,
    mode: u32,
    meta: &WriteMeta,
) -> TxResult<Applied<(VersionInfo, bool)>> {
    let parents_cursor = ensure_parents(c, project_id, path, meta).await?;
    let (info, seq, created) = ensure_dir(c, project_id, path, mode, meta, true).await?;
    let info = info.ok_or_else(|| backend("directory head missing"))?;
    let cursor = if seq == 0 && parents_cursor == 0 {
        current_cursor(c, project_id).await?
    } else {
        seq.max(parents_cursor)
    };
    Ok(Applied {
        value: (info, created),
        cursor,
    })
}

#[allow(clippy::too_many_arguments)]
async fn rename_tx<C: GenericClient>(
    c: &C,
    project_id: i64,
    from: &WsPath,
    to: &WsPath,
    replace: bool,
    guard: &NodeGuard,
    meta: &WriteMeta,
) -> TxResult<Applied<RenameOutcome>> {
    let source = live_node(c, project_id, from.as_str(), Lock::Update)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("{from} does not exist")))?;
    namespace::check_rename_source(&source, guard, from, to)?;
    if to == from {
        let head = head_of(c, &source).await?;
        return Ok(Applied {
            value: RenameOutcome {
                moved: head,
                replaced: None,
            },
            cursor: current_cursor(c, project_id).await?,
        });
    }
    // Lock everything that moves before anything is written.
    let children = if source.kind == NodeKind::Dir {
        live_descendants(c, project_id, from.as_str()).await?
    } else {
        Vec::new()
    };
    // The destination's ancestors are share-locked (or created) before the
    // first write, so this transaction never waits for a lock while it holds
    // the project row. If they had to be created, there is no target yet.
    let mut cursor = ensure_parents(c, project_id, to, meta).await?;
    let mut replaced = None;
    if let Some(target) = live_node(c, project_id, to.as_str(), Lock::Update).await? {
        namespace::check_rename_target(&source, &target, replace, from, to)?;
        if target.kind == NodeKind::Dir && !live_descendants(c, project_id, &target.path).await?.is_empty() {
            return Err(namespace::rename_target_not_empty(to).into());
        }
        let (info, seq) = tombstone(c, project_id, &target, meta).await?;
        cursor = cursor.max(seq);
        replaced = Some(info);
    }
    // Children keep their ids; only their current path moves with the directory.
    if !children.is_empty() {
        let stmt = c.prepare_cached("UPDATE nodes SET path = $2 WHERE id = $1").await?;
        for child in &children {
            let new_path = namespace::moved_path(&child.path, from, to);
            c.execute(&stmt, &[&child.id, &new_path]).await?;
        }
    }
    let head = head_of(c, &source).await?;
    let v = NewVersion::rename(from.as_str(), to.as_str(), source.kind, &head);
    let (moved, seq) = append_version(c, project_id, source.id, Some(source.head), &v, meta).await?;
    Ok(Applied {
        value: RenameOutcome { moved, replaced },
        cursor: cursor.max(seq),
    })
}

async fn delete_tx<C: GenericClient>(
    c: &C,
    project_id: i64,
    path: &WsPath,
    guard: &NodeGuard,
    recursive: bool,
    meta: &WriteMeta,
) -> TxResult<Applied<Vec<VersionInfo>>> {
    let node = live_node(c, project_id, path.as_str(), Lock::Update)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("{path} does not exist")))?;
    node.check_guard(guard)?;
    let mut deleted = Vec::new();
    let mut cursor = 0;
    if node.kind == NodeKind::Dir {
        let children = live_descendants(c, project_id, &node.path).await?;
        namespace::check_delete_contents(path, !children.is_empty(), recursive)?;
        for child in &children {
            let (info, seq) = tombstone(c, project_id, child, meta).await?;
            cursor = cursor.max(seq);
            deleted.push(info);
        }
    }
    let (info, seq) = tombstone(c, project_id, &node, meta).await?;
    deleted.insert(0, info);
    Ok(Applied {
        value: deleted,
        cursor: cursor.max(seq),
    })
}

async fn publish_skills_tx<C: GenericClient>(c: &C, skills: &[SkillInfo], meta: &WriteMeta) -> TxResult<()> {
    // Publishing replaces the whole set: one publisher at a time.
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&SKILLS_LOCK]).await?;
    c.execute("DELETE FROM skills", &[]).await?;
    c.execute("DELETE FROM skill_files", &[]).await?;
    for skill in skills {
        c.execute(
            "INSERT INTO skills (name, description) VALUES ($1, $2)",
            &[&skill.name, &skill.description],
        )
        .await?;
        for file in &skill.files {
            c.execute(
                "INSERT INTO skill_files (path, skill, hash, size, mode) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &file.path.as_str(),
                    &skill.name,
                    &file.hash.as_str(),
                    &(file.size as i64),
                    &(file.mode as i64),
                ],
            )
            .await?;
        }
    }
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('skills_published_at', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&meta.now.to_string()],
    )
    .await?;
    let names: Vec<&str> = skills.iter().map(|s| s.name.as_str()).collect();
    audit(
        c,
        None,
        meta,
        "publish_skills",
        None,
        None,
        None,
        Some(&names.join(",")),
    )
    .await
}

// ----- opening, migrations, LISTEN -----

impl PostgresStore {
    /// Connects, applies pending migrations and sets up the connection pool.
    /// `url` is a libpq-style URL or key=value string (TLS is not supported:
    /// use `sslmode=disable` or leave sslmode unset on a trusted network).
    pub async fn open(url: &str) -> StoreResult<Self> {
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| backend(format!("invalid database URL: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("contextfs");
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        migrate(&config).await?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| backend(format!("cannot build the connection pool: {e}")))?;
        Ok(Self { pool, config })
    }

    /// [`PostgresStore::open`] from synchronous code, inside a runtime or
    /// not: connecting and migrating run on a helper thread. The pool opens
    /// its connections later, on the runtime that uses the store.
    pub fn open_blocking(url: &str) -> StoreResult<Self> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| backend(format!("cannot start a runtime to open the database: {e}")))?
                        .block_on(Self::open(url))
                })
                .join()
                .unwrap_or_else(|_| Err(backend("opening the database panicked")))
        })
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Client> {
        self.pool
            .get()
            .await
            .map_err(|e| backend(format!("no database connection: {e}")))
    }
}

/// A read-only REPEATABLE READ transaction: all its queries see one snapshot.
async fn read_snapshot(
    c: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    c.build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// Opens one connection outside the pool; its driver runs on this runtime
/// until the client is dropped.
async fn connect(config: &tokio_postgres::Config) -> StoreResult<tokio_postgres::Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| backend(format!("cannot connect to PostgreSQL: {}", describe(&e))))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "database connection closed");
        }
    });
    Ok(client)
}

/// Applies the migrations this database lacks, all in one transaction under
/// an advisory lock: instances starting together wait for each other, and
/// the second finds nothing left to do.
async fn migrate(config: &tokio_postgres::Config) -> StoreResult<()> {
    let mut client = connect(config).await?;
    let pg = pg_error("cannot migrate the database schema");
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg)?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(pg)?
        .get(0);
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(backend(format!(
            "database schema version {current} is newer than this build supports ({latest}); upgrade contextfs"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| backend(format!("migration {version} failed: {}", describe(&e))))?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[version])
            .await
            .map_err(pg)?;
        tracing::info!(version, "applied database migration");
    }
    tx.commit().await.map_err(pg)?;
    Ok(())
}

/// Keeps one connection LISTENing on [`CHANGES_CHANNEL`] and forwards the
/// project ids to `wakes`, reconnecting (and sending [`Wake::All`], since
/// anything may have been missed) until the receiver goes away.
async fn listen(config: tokio_postgres::Config, wakes: tokio::sync::mpsc::UnboundedSender<Wake>) {
    let mut failures: u32 = 0;
    while !wakes.is_closed() {
        let started = std::time::Instant::now();
        match listen_once(&config, &wakes).await {
            Ok(()) => return,
            Err(e) => {
                // a connection that lived a while starts the count afresh
                if started.elapsed() > Duration::from_secs(60) {
                    failures = 0;
                }
                failures += 1;
                if failures <= 3 || failures % 60 == 0 {
                    tracing::warn!(error = %e, "change-feed listener lost its database connection; reconnecting");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
    }
}

/// One listener connection's life; `Ok` when the receiver went away.
async fn listen_once(
    config: &tokio_postgres::Config,
    wakes: &tokio::sync::mpsc::UnboundedSender<Wake>,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| describe(&e))?;
    let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<Result<String, String>>();
    // Driving the connection by polling its messages also runs the client's queries.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if notes_tx.send(Ok(n.payload().to_string())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = notes_tx.send(Err(describe(&e)));
                    return;
                }
            }
        }
        let _ = notes_tx.send(Err("connection closed".into()));
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
            .await
            .map_err(|e| describe(&e))?;
        // Whatever committed while no one was listening is only found by re-reading.
        if wakes.send(Wake::All).is_err() {
            return Ok(());
        }
        let mut ping = tokio::time::interval(LISTEN_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(Ok(payload)) => {
                        let wake = payload.parse().map(Wake::Project).unwrap_or(Wake::All);
                        if wakes.send(wake).is_err() {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err("connection closed".into()),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(Duration::from_secs(10), client.simple_query("")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(describe(&e)),
                        Err(_) => return Err("the database did not answer a ping within 10 s".into()),
                    }
                }
                _ = wakes.closed() => return Ok(()),
            }
        }
    }
    .await;
    drop(client);
    driver.abort();
    result
}

#[async_trait]
impl MetadataStore for PostgresStore {
    fn subscribe(&self) -> Option<BoxStream<'static, Wake>> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut config = self.config.clone();
        config.application_name(LISTENER_NAME);
        tokio::spawn(listen(config, tx));
        Some(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
    }

    async fn create_project(&self, name: &str, meta: WriteMeta) -> StoreResult<ProjectRow> {
        write_tx!(self, |tx| {
            let row = tx
                .query_opt(
                    "INSERT INTO projects (name, created_at, cursor) VALUES ($1, $2, 0)
                     ON CONFLICT (name) DO NOTHING RETURNING id, name, created_at, cursor",
                    &[&name, &meta.now],
                )
                .await?;
            let Some(row) = row else {
                return Err(StoreError::AlreadyExists(format!("project {name} already exists")).into());
            };
            let row = project_row(&row)?;
            audit(&tx, Some(row.id), &meta, "create_project", None, None, None, Some(name)).await?;
            row
        })
    }

    async fn project(&self, name: &str) -> StoreResult<Option<ProjectRow>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT id, name, created_at, cursor FROM projects WHERE name = $1")
            .await
            .map_err(TxError::from)?;
        let row = c.query_opt(&stmt, &[&name]).await.map_err(TxError::from)?;
        row.as_ref().map(project_row).transpose()
    }

    async fn projects(&self) -> StoreResult<Vec<ProjectRow>> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT id, name, created_at, cursor FROM projects ORDER BY name", &[])
            .await
            .map_err(TxError::from)?;
        rows.iter().map(project_row).collect()
    }

    async fn create_token(
        &self,
        project_id: i64,
        id: &str,
        secret_hash: &str,
        access: Access,
        label: Option<String>,
        meta: WriteMeta,
    ) -> StoreResult<TokenRow> {
        write_tx!(self, |tx| {
            tx.execute(
                "INSERT INTO tokens (id, secret_hash, project_id, access, label, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&id, &secret_hash, &project_id, &access.as_str(), &label, &meta.now],
            )
            .await?;
            audit(
                &tx,
                Some(project_id),
                &meta,
                "create_token",
                None,
                None,
                Some(access.as_str()),
                Some(id),
            )
            .await?;
            let row = tx
                .query_one(concat!(token_select!(), " WHERE t.id = $1"), &[&id])
                .await?;
            token_row(&row)?
        })
    }

    async fn token_by_secret_hash(&self, secret_hash: &str) -> StoreResult<Option<TokenRow>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(concat!(token_select!(), " WHERE t.secret_hash = $1"))
            .await
            .map_err(TxError::from)?;
        let row = c.query_opt(&stmt, &[&secret_hash]).await.map_err(TxError::from)?;
        row.as_ref().map(token_row).transpose()
    }

    async fn tokens(&self, project_id: i64) -> StoreResult<Vec<TokenRow>> {
        let c = self.client().await?;
        let rows = c
            .query(
                concat!(token_select!(), " WHERE t.project_id = $1 ORDER BY t.created_at, t.id"),
                &[&project_id],
            )
            .await
            .map_err(TxError::from)?;
        rows.iter().map(token_row).collect()
    }

    async fn revoke_token(&self, id: &str, meta: WriteMeta) -> StoreResult<bool> {
        write_tx!(self, |tx| {
            let project = tx
                .query_opt("SELECT project_id FROM tokens WHERE id = $1 FOR UPDATE", &[&id])
                .await?;
            match project {
                None => false,
                Some(row) => {
                    let project: i64 = col(&row, 0)?;
                    let revoked = tx
                        .execute(
                            "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                            &[&id, &meta.now],
                        )
                        .await?;
                    // Revoking again is a no-op, not a second event.
                    if revoked > 0 {
                        audit(&tx, Some(project), &meta, "revoke_token", None, None, None, Some(id)).await?;
                    }
                    true
                }
            }
        })
    }

    async fn tree(&self, project_id: i64, prefix: Option<&WsPath>, recursive: bool) -> StoreResult<TreeListing> {
        let mut c = self.client().await?;
        // The cursor and the entries come from one snapshot.
        let tx = read_snapshot(&mut c).await.map_err(TxError::from)?;
        let cursor = current_cursor(&tx, project_id).await?;
        const COLUMNS: &str = "SELECT n.path, n.id, v.kind, v.mode, v.size, v.hash, v.number, v.created_at
             FROM nodes n JOIN versions v ON v.node_id = n.id AND v.number = n.head
             WHERE n.project_id = $1 AND NOT n.deleted";
        let (rows, depth_start) = match prefix {
            Some(p) => {
                let (lower, upper) = namespace::descendant_range(p.as_str());
                let stmt = tx
                    .prepare_cached(&format!("{COLUMNS} AND n.path >= $2 AND n.path < $3 ORDER BY n.path"))
                    .await
                    .map_err(TxError::from)?;
                let rows = tx
                    .query(&stmt, &[&project_id, &lower, &upper])
                    .await
                    .map_err(TxError::from)?;
                (rows, lower.len())
            }
            None => {
                let stmt = tx
                    .prepare_cached(&format!("{COLUMNS} ORDER BY n.path"))
                    .await
                    .map_err(TxError::from)?;
                (tx.query(&stmt, &[&project_id]).await.map_err(TxError::from)?, 0)
            }
        };
        tx.commit().await.map_err(TxError::from)?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            let path: String = col(r, 0)?;
            if !namespace::tree_lists(&path, depth_start, recursive) {
                continue;
            }
            entries.push(TreeEntry {
                path,
                id: col(r, 1)?,
                kind: parse_kind(col(r, 2)?)?,
                mode: col::<i64>(r, 3)? as u32,
                size: col::<i64>(r, 4)? as u64,
                hash: parse_hash(col(r, 5)?)?,
                version: col(r, 6)?,
                modified_at: format_time(col(r, 7)?),
            });
        }
        Ok(TreeListing { cursor, entries })
    }

    async fn node_at(&self, project_id: i64, path: &WsPath) -> StoreResult<Option<NodeHead>> {
        let c = self.client().await?;
        // The node and its head version in one statement (one snapshot).
        let stmt = c
            .prepare_cached(concat!(
                "SELECT n.id, n.path, n.kind, n.deleted, n.head, ",
                "v.node_id, v.number, v.path, v.kind, v.mode, v.hash, v.size, v.op, v.status, v.deleted, v.parent,
                 v.author, v.agent_id, v.message, v.created_at
                 FROM nodes n LEFT JOIN versions v ON v.node_id = n.id AND v.number = n.head
                 WHERE n.project_id = $1 AND n.path = $2
                 ORDER BY n.deleted ASC, n.deleted_at DESC NULLS LAST, n.id DESC LIMIT 1"
            ))
            .await
            .map_err(TxError::from)?;
        let Some(row) = c
            .query_opt(&stmt, &[&project_id, &path.as_str()])
            .await
            .map_err(TxError::from)?
        else {
            return Ok(None);
        };
        let node = node_from_row(&row)?;
        if col::<Option<i64>>(&row, 5)?.is_none() {
            return Err(backend("node head missing"));
        }
        let head = version_from_row_at(&row, 5)?;
        Ok(Some(node.into_head(head)))
    }

    async fn version(&self, node: i64, number: i64) -> StoreResult<Option<VersionInfo>> {
        let c = self.client().await?;
        Ok(get_version(&c, node, number).await?)
    }

    async fn history(&self, node: i64, before: Option<i64>, limit: u32) -> StoreResult<Vec<VersionInfo>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(concat!(
                "SELECT ",
                version_columns!(),
                " FROM versions WHERE node_id = $1 AND number < $2 ORDER BY number DESC LIMIT $3"
            ))
            .await
            .map_err(TxError::from)?;
        let rows = c
            .query(&stmt, &[&node, &before.unwrap_or(i64::MAX), &i64::from(limit)])
            .await
            .map_err(TxError::from)?;
        rows.iter().map(version_from_row).collect()
    }

    async fn find_idempotent(&self, project_id: i64, key: &str) -> StoreResult<Option<VersionInfo>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(concat!(
                "SELECT ",
                version_columns!(),
                " FROM versions WHERE project_id = $1 AND idempotency_key = $2"
            ))
            .await
            .map_err(TxError::from)?;
        let row = c.query_opt(&stmt, &[&project_id, &key]).await.map_err(TxError::from)?;
        row.as_ref().map(version_from_row).transpose()
    }

    async fn write_content(
        &self,
        project_id: i64,
        write: ContentWrite,
        meta: WriteMeta,
    ) -> StoreResult<Applied<VersionInfo>> {
        write_tx!(self, |tx| write_content_tx(&tx, project_id, &write, &meta).await?)
    }

    async fn mkdir(
        &self,
        project_id: i64,
        path: &WsPath,
        mode: u32,
        meta: WriteMeta,
    ) -> StoreResult<Applied<(VersionInfo, bool)>> {
        write_tx!(self, |tx| mkdir_tx(&tx, project_id, path, mode, &meta).await?)
    }

    async fn rename(
        &self,
        project_id: i64,
        from: &WsPath,
        to: &WsPath,
        replace: bool,
        guard: NodeGuard,
        meta: WriteMeta,
    ) -> StoreResult<Applied<RenameOutcome>> {
        write_tx!(self, |tx| rename_tx(&tx, project_id, from, to, replace, &guard, &meta)
            .await?)
    }

    async fn delete(
        &self,
        project_id: i64,
        path: &WsPath,
        guard: NodeGuard,
        recursive: bool,
        meta: WriteMeta,
    ) -> StoreResult<Applied<Vec<VersionInfo>>> {
        write_tx!(self, |tx| delete_tx(&tx, project_id, path, &guard, recursive, &meta)
            .await?)
    }

    async fn changes(&self, project_id: i64, since: i64, limit: u32) -> StoreResult<(Vec<ChangeEvent>, bool)> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT e.seq, e.node_id, v.path, e.old_path, v.op, v.number, v.kind, v.hash, v.size, v.mode, v.deleted,
                        v.agent_id, v.created_at
                 FROM events e JOIN versions v ON v.node_id = e.node_id AND v.number = e.version
                 WHERE e.project_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
            )
            .await
            .map_err(TxError::from)?;
        let rows = c
            .query(&stmt, &[&project_id, &since, &(i64::from(limit) + 1)])
            .await
            .map_err(TxError::from)?;
        let mut events = Vec::with_capacity(rows.len());
        for r in &rows {
            let op: &str = col(r, 4)?;
            events.push(ChangeEvent {
                seq: col(r, 0)?,
                node: col(r, 1)?,
                path: col(r, 2)?,
                old_path: col(r, 3)?,
                op: VersionOp::parse(op)
                    .ok_or_else(|| backend(format!("unknown version op {op:?} in the database")))?,
                version: col(r, 5)?,
                kind: parse_kind(col(r, 6)?)?,
                hash: parse_hash(col(r, 7)?)?,
                size: col::<i64>(r, 8)? as u64,
                mode: col::<i64>(r, 9)? as u32,
                deleted: col(r, 10)?,
                agent_id: col(r, 11)?,
                at: format_time(col(r, 12)?),
            });
        }
        let more = trim_page(&mut events, limit);
        Ok((events, more))
    }

    async fn audit(&self, project_id: i64, since: i64, limit: u32) -> StoreResult<AuditPage> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT seq, created_at, actor, agent_id, action, path, version, status, detail FROM audit
                 WHERE project_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .await
            .map_err(TxError::from)?;
        let rows = c
            .query(&stmt, &[&project_id, &since, &(i64::from(limit) + 1)])
            .await
            .map_err(TxError::from)?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            entries.push(AuditEntry {
                seq: col(r, 0)?,
                at: format_time(col(r, 1)?),
                actor: col(r, 2)?,
                agent_id: col(r, 3)?,
                action: col(r, 4)?,
                path: col(r, 5)?,
                version: col(r, 6)?,
                status: col(r, 7)?,
                detail: col(r, 8)?,
            });
        }
        Ok(audit_page(entries, limit))
    }

    async fn record_blob(&self, project_id: i64, hash: &BlobHash) -> StoreResult<()> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("INSERT INTO project_blobs (project_id, hash) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .await
            .map_err(TxError::from)?;
        c.execute(&stmt, &[&project_id, &hash.as_str()])
            .await
            .map_err(TxError::from)?;
        Ok(())
    }

    async fn project_has_blob(&self, project_id: i64, hash: &BlobHash) -> StoreResult<bool> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT 1 FROM project_blobs WHERE project_id = $1 AND hash = $2")
            .await
            .map_err(TxError::from)?;
        Ok(c.query_opt(&stmt, &[&project_id, &hash.as_str()])
            .await
            .map_err(TxError::from)?
            .is_some())
    }

    async fn publish_skills(&self, skills: Vec<SkillInfo>, meta: WriteMeta) -> StoreResult<()> {
        write_tx!(self, |tx| publish_skills_tx(&tx, &skills, &meta).await?)
    }

    async fn skills(&self) -> StoreResult<SkillsListing> {
        let mut c = self.client().await?;
        let tx = read_snapshot(&mut c).await.map_err(TxError::from)?;
        let published_at = tx
            .query_opt("SELECT value FROM meta WHERE key = 'skills_published_at'", &[])
            .await
            .map_err(TxError::from)?
            .map(|r| col::<String>(&r, 0))
            .transpose()?;
        let skills = tx
            .query("SELECT name, description FROM skills ORDER BY name", &[])
            .await
            .map_err(TxError::from)?
            .iter()
            .map(|r| {
                Ok(SkillInfo {
                    name: col(r, 0)?,
                    description: col(r, 1)?,
                    files: Vec::new(),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let rows = tx
            .query(
                "SELECT skill, path, hash, size, mode FROM skill_files ORDER BY path",
                &[],
            )
            .await
            .map_err(TxError::from)?;
        tx.commit().await.map_err(TxError::from)?;
        let mut files = Vec::with_capacity(rows.len());
        for r in &rows {
            let path: &str = col(r, 1)?;
            let file = SkillFile {
                path: WsPath::parse(path).map_err(backend)?,
                hash: parse_hash(col(r, 2)?)?,
                size: col::<i64>(r, 3)? as u64,
                mode: col::<i64>(r, 4)? as u32,
            };
            files.push((col(r, 0)?, file));
        }
        Ok(skills_listing(published_at, skills, files))
    }

    async fn skill_has_blob(&self, hash: &BlobHash) -> StoreResult<bool> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT 1 FROM skill_files WHERE hash = $1 LIMIT 1")
            .await
            .map_err(TxError::from)?;
        Ok(c.query_opt(&stmt, &[&hash.as_str()])
            .await
            .map_err(TxError::from)?
            .is_some())
    }

    async fn referenced_hashes(&self) -> StoreResult<Vec<BlobHash>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT hash FROM versions UNION SELECT hash FROM skill_files UNION SELECT hash FROM project_blobs",
                &[],
            )
            .await
            .map_err(TxError::from)?;
        rows.iter().map(|r| parse_hash(col(r, 0)?)).collect()
    }

    async fn is_empty(&self) -> StoreResult<bool> {
        records_io::is_empty(self).await
    }

    async fn export_records(&self, sink: tokio::sync::mpsc::Sender<records::RecordBatch>) -> StoreResult<()> {
        records_io::export(self, sink).await
    }

    async fn import_records(
        &self,
        source: tokio::sync::mpsc::Receiver<records::RecordBatch>,
        replace: bool,
    ) -> StoreResult<records::ImportCounts> {
        records_io::import(self, source, replace).await
    }
}

/// `contextfs migrate`'s export and import (kept in their own file).
#[path = "postgres_records.rs"]
mod records_io;

/// [`version_from_row`] for the version columns starting at `offset`.
fn version_from_row_at(r: &Row, offset: usize) -> StoreResult<VersionInfo> {
    let at = |i: usize| offset + i;
    let op: &str = col(r, at(7))?;
    let status: &str = col(r, at(8))?;
    Ok(VersionInfo {
        node: col(r, at(0))?,
        version: col(r, at(1))?,
        path: col(r, at(2))?,
        kind: parse_kind(col(r, at(3))?)?,
        mode: col::<i64>(r, at(4))? as u32,
        hash: parse_hash(col(r, at(5))?)?,
        size: col::<i64>(r, at(6))? as u64,
        op: VersionOp::parse(op).ok_or_else(|| backend(format!("unknown version op {op:?} in the database")))?,
        status: VersionStatus::parse(status)
            .ok_or_else(|| backend(format!("unknown version status {status:?} in the database")))?,
        deleted: col(r, at(9))?,
        parent: col(r, at(10))?,
        author: col(r, at(11))?,
        agent_id: col(r, at(12))?,
        message: col(r, at(13))?,
        created_at: format_time(col(r, at(14))?),
    })
}
