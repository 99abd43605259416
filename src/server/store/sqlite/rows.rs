//! Row access for the SQLite store, and [`SqliteTxn`]: the shared
//! transaction logic ([`txn`](crate::server::store::txn)) over the writer's
//! connection.

use std::future::Future;

use futures_util::FutureExt;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::api::{NodeKind, VersionInfo, VersionOp, VersionStatus};
use crate::model::BlobHash;
use crate::server::store::namespace::{self, NodeRow};
use crate::server::store::txn::{Lock, Txn};
use crate::server::store::{backend, format_time, FileTimes, NewVersion, StoreError, StoreResult, WriteMeta};

pub(super) const VERSION_COLUMNS: &str =
    "node_id, number, path, kind, mode, hash, size, op, status, deleted, parent, author, agent_id, message, created_at, mtime, atime";

pub(super) fn parse_kind(raw: String) -> rusqlite::Result<NodeKind> {
    NodeKind::parse(&raw).ok_or_else(|| rusqlite::Error::InvalidColumnType(0, raw, rusqlite::types::Type::Text))
}

pub(super) fn parse_hash(raw: String) -> rusqlite::Result<BlobHash> {
    BlobHash::parse(&raw).map_err(|_| rusqlite::Error::InvalidColumnType(0, raw, rusqlite::types::Type::Text))
}

pub(super) fn version_from_row(r: &Row) -> rusqlite::Result<VersionInfo> {
    let op: String = r.get(7)?;
    let status: String = r.get(8)?;
    Ok(VersionInfo {
        node: r.get(0)?,
        version: r.get(1)?,
        path: r.get(2)?,
        kind: parse_kind(r.get(3)?)?,
        mode: r.get(4)?,
        hash: parse_hash(r.get(5)?)?,
        size: r.get::<_, i64>(6)? as u64,
        op: VersionOp::parse(&op)
            .ok_or_else(|| rusqlite::Error::InvalidColumnType(7, op.clone(), rusqlite::types::Type::Text))?,
        status: VersionStatus::parse(&status)
            .ok_or_else(|| rusqlite::Error::InvalidColumnType(8, status.clone(), rusqlite::types::Type::Text))?,
        deleted: r.get(9)?,
        parent: r.get(10)?,
        author: r.get(11)?,
        agent_id: r.get(12)?,
        message: r.get(13)?,
        created_at: format_time(r.get(14)?),
        mtime: FileTimes::format(r.get(15)?),
        atime: FileTimes::format(r.get(16)?),
    })
}

pub(super) fn get_version(conn: &Connection, node: i64, number: i64) -> StoreResult<Option<VersionInfo>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM versions WHERE node_id = ?1 AND number = ?2"
    ))?;
    Ok(stmt.query_row(params![node, number], version_from_row).optional()?)
}

/// The node's head version (a node without one is a broken database).
pub(super) fn head_of(conn: &Connection, node: &NodeRow) -> StoreResult<VersionInfo> {
    get_version(conn, node.id, node.head)?.ok_or_else(|| backend("node head missing"))
}

/// A `nodes` row selected as `id, path, kind, deleted, head`.
pub(super) fn node_row(r: &Row) -> rusqlite::Result<NodeRow> {
    Ok(NodeRow {
        id: r.get(0)?,
        path: r.get(1)?,
        kind: parse_kind(r.get(2)?)?,
        deleted: r.get(3)?,
        head: r.get(4)?,
    })
}

fn live_node(conn: &Connection, project_id: i64, path: &str) -> StoreResult<Option<NodeRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, path, kind, deleted, head FROM nodes WHERE project_id = ?1 AND path = ?2 AND deleted = 0",
    )?;
    Ok(stmt.query_row(params![project_id, path], node_row).optional()?)
}

fn node_by_id(conn: &Connection, project_id: i64, id: i64) -> StoreResult<Option<NodeRow>> {
    let mut stmt =
        conn.prepare_cached("SELECT id, path, kind, deleted, head FROM nodes WHERE project_id = ?1 AND id = ?2")?;
    Ok(stmt.query_row(params![project_id, id], node_row).optional()?)
}

/// Two statements, not one with `RETURNING`: SQLite runs a `RETURNING`
/// statement in a statement journal, and releasing that walks the in-memory
/// sub-journal of the whole batch (a tenth of the server's CPU on small files).
fn bump_cursor(conn: &Connection, project_id: i64) -> StoreResult<i64> {
    conn.prepare_cached("UPDATE projects SET cursor = cursor + 1 WHERE id = ?1")?
        .execute([project_id])?;
    current_cursor(conn, project_id)
}

pub(super) fn current_cursor(conn: &Connection, project_id: i64) -> StoreResult<i64> {
    Ok(conn
        .prepare_cached("SELECT cursor FROM projects WHERE id = ?1")?
        .query_row([project_id], |r| r.get(0))?)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn audit(
    conn: &Connection,
    project_id: Option<i64>,
    meta: &WriteMeta,
    action: &str,
    path: Option<&str>,
    version: Option<i64>,
    status: Option<&str>,
    detail: Option<&str>,
) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO audit (project_id, created_at, actor, agent_id, action, path, version, status, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    stmt.execute(params![
        project_id,
        meta.now,
        meta.author,
        meta.agent_id,
        action,
        path,
        version,
        status,
        detail
    ])?;
    Ok(())
}

/// Appends version `parent + 1` (or 1) to `node`, moves the node's head, and
/// records the change-feed event and the audit row.
fn append_version(
    conn: &Connection,
    project_id: i64,
    node: i64,
    parent: Option<i64>,
    v: &NewVersion,
    meta: &WriteMeta,
) -> StoreResult<(VersionInfo, i64)> {
    let number = parent.unwrap_or(0) + 1;
    conn.prepare_cached(
        "INSERT INTO versions (node_id, number, project_id, path, kind, mode, hash, size, op, status, deleted, parent,
                               author, agent_id, message, created_at, idempotency_key, mtime, atime)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    )?
    .execute(params![
        node,
        number,
        project_id,
        v.path,
        v.kind.as_str(),
        v.mode,
        v.hash.as_str(),
        v.size as i64,
        v.op.as_str(),
        v.status.as_str(),
        v.deleted,
        parent,
        meta.author,
        meta.agent_id,
        meta.message,
        meta.now,
        v.idempotency_key,
        v.times.mtime,
        v.times.atime,
    ])?;
    conn.prepare_cached(
        "UPDATE nodes SET head = ?2, path = ?3, kind = ?4, deleted = ?5, deleted_at = ?6 WHERE id = ?1",
    )?
    .execute(params![
        node,
        number,
        v.path,
        v.kind.as_str(),
        v.deleted,
        v.deleted.then_some(meta.now)
    ])?;
    let seq = bump_cursor(conn, project_id)?;
    conn.prepare_cached(
        "INSERT INTO events (project_id, seq, node_id, version, old_path) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![project_id, seq, node, number, v.old_path])?;
    audit(
        conn,
        Some(project_id),
        meta,
        v.op.as_str(),
        Some(v.path),
        Some(number),
        Some(v.status.as_str()),
        v.old_path,
    )?;
    let info = get_version(conn, node, number)?.ok_or_else(|| backend("a version vanished inside its transaction"))?;
    Ok((info, seq))
}

/// Live descendants of a directory path, deepest first.
fn live_descendants(conn: &Connection, project_id: i64, dir: &str) -> StoreResult<Vec<NodeRow>> {
    let (lower, upper) = namespace::descendant_range(dir);
    let mut stmt = conn.prepare_cached(
        "SELECT id, path, kind, deleted, head FROM nodes
         WHERE project_id = ?1 AND deleted = 0 AND path >= ?2 AND path < ?3 ORDER BY path DESC",
    )?;
    let rows = stmt
        .query_map(params![project_id, lower, upper], node_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A write transaction of one project on the writer's connection (inside the
/// job's savepoint). Row locks are not needed: the writer is the only one.
pub(super) struct SqliteTxn<'a> {
    conn: &'a Connection,
    project: i64,
}

impl<'a> SqliteTxn<'a> {
    pub fn new(conn: &'a Connection, project: i64) -> Self {
        Self { conn, project }
    }
}

/// Every method is an `async fn` that awaits nothing: its future is ready on
/// the first poll (see [`run_now`]).
impl Txn for SqliteTxn<'_> {
    type Error = StoreError;

    /// The single writer never loses a compare-and-set; were it to, the head
    /// moved under the caller.
    fn lost_race() -> StoreError {
        StoreError::HeadMoved
    }

    async fn live_node(&self, path: &str, _lock: Lock) -> StoreResult<Option<NodeRow>> {
        live_node(self.conn, self.project, path)
    }

    async fn node_by_id(&self, id: i64) -> StoreResult<Option<NodeRow>> {
        node_by_id(self.conn, self.project, id)
    }

    async fn live_descendants(&self, dir: &str) -> StoreResult<Vec<NodeRow>> {
        live_descendants(self.conn, self.project, dir)
    }

    async fn version(&self, node: i64, number: i64) -> StoreResult<Option<VersionInfo>> {
        get_version(self.conn, node, number)
    }

    async fn cursor(&self) -> StoreResult<i64> {
        current_cursor(self.conn, self.project)
    }

    async fn idempotency_key_used(&self, key: &str) -> StoreResult<bool> {
        let seen: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM versions WHERE project_id = ?1 AND idempotency_key = ?2")?
            .query_row(params![self.project, key], |r| r.get(0))
            .optional()?;
        Ok(seen.is_some())
    }

    async fn record_blob(&self, hash: &BlobHash) -> StoreResult<()> {
        record_blob(self.conn, self.project, hash)
    }

    async fn keep_unsynced_blob(&self, hash: &BlobHash, bytes: &[u8]) -> StoreResult<()> {
        self.conn
            .prepare_cached("INSERT INTO unsynced_blobs (hash, data) VALUES (?1, ?2)")?
            .execute(params![hash.as_str(), bytes])?;
        Ok(())
    }

    /// `last_insert_rowid` rather than `RETURNING id` (see [`bump_cursor`]).
    async fn insert_node(&self, path: &str, kind: NodeKind) -> StoreResult<i64> {
        self.conn
            .prepare_cached("INSERT INTO nodes (project_id, path, kind, deleted, head) VALUES (?1, ?2, ?3, 0, 1)")?
            .execute(params![self.project, path, kind.as_str()])?;
        Ok(self.conn.last_insert_rowid())
    }

    async fn move_node(&self, id: i64, path: &str) -> StoreResult<()> {
        self.conn
            .prepare_cached("UPDATE nodes SET path = ?2 WHERE id = ?1")?
            .execute(params![id, path])?;
        Ok(())
    }

    async fn append_version(
        &self,
        node: i64,
        parent: Option<i64>,
        v: &NewVersion<'_>,
        meta: &WriteMeta,
    ) -> StoreResult<Option<(VersionInfo, i64)>> {
        append_version(self.conn, self.project, node, parent, v, meta).map(Some)
    }
}

/// Runs a transaction of [`SqliteTxn`] steps to its end on this thread. Its
/// futures never wait, so one poll finishes it; one that does not is a bug,
/// answered as an error rather than a blocked writer thread.
pub(super) fn run_now<T>(work: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    work.now_or_never()
        .unwrap_or_else(|| Err(backend("a SQLite transaction step was not ready (it must never wait)")))
}

/// Records that the project holds this blob, and when it last uploaded it
/// (garbage collection keeps recently uploaded blobs for their commit).
pub(super) fn record_blob(conn: &Connection, project_id: i64, hash: &BlobHash) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO project_blobs (project_id, hash, used_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(project_id, hash) DO UPDATE SET used_at = excluded.used_at",
    )?
    .execute(params![project_id, hash.as_str(), crate::server::store::now_millis()])?;
    Ok(())
}
