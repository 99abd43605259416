//! Row access for the PostgreSQL store, and [`PgTxn`]: the shared
//! transaction logic ([`txn`](crate::server::store::txn)) over one
//! READ COMMITTED transaction, with the row locks it asks for.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use super::retry::{TxError, TxResult};
use crate::api::{NodeKind, VersionInfo, VersionOp, VersionStatus};
use crate::model::BlobHash;
use crate::server::store::namespace::{self, NodeRow};
use crate::server::store::txn::{Lock, Txn};
use crate::server::store::{backend, format_time, FileTimes, NewVersion, StoreResult, WriteMeta};

/// A column of a row, or a store error naming the column.
pub(super) fn col<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> StoreResult<T> {
    row.try_get(idx)
        .map_err(|e| backend(format!("unexpected value in column {idx}: {e}")))
}

pub(super) fn parse_kind(raw: &str) -> StoreResult<NodeKind> {
    NodeKind::parse(raw).ok_or_else(|| backend(format!("unknown node kind {raw:?} in the database")))
}

pub(super) fn parse_hash(raw: &str) -> StoreResult<BlobHash> {
    BlobHash::parse(raw).map_err(|_| backend(format!("invalid hash {raw:?} in the database")))
}

/// The columns [`version_from_row`] reads, in order.
macro_rules! version_columns {
    () => {
        "node_id, number, path, kind, mode, hash, size, op, status, deleted, parent, author, agent_id, message, created_at, mtime, atime"
    };
}
pub(super) use version_columns;

pub(super) fn version_from_row(r: &Row) -> StoreResult<VersionInfo> {
    version_from_row_at(r, 0)
}

pub(super) async fn get_version<C: GenericClient>(c: &C, node: i64, number: i64) -> TxResult<Option<VersionInfo>> {
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

pub(super) fn node_from_row(r: &Row) -> StoreResult<NodeRow> {
    Ok(NodeRow {
        id: col(r, 0)?,
        path: col(r, 1)?,
        kind: parse_kind(col(r, 2)?)?,
        deleted: col(r, 3)?,
        head: col(r, 4)?,
    })
}

/// Selects the live node at `$2` through the `nodes_live_path` index (on
/// the path's MD5: see migration 3).
macro_rules! live_node_at {
    () => {
        "SELECT id, path, kind, deleted, head FROM nodes
         WHERE project_id = $1 AND md5(path) = md5($2::text) AND path = $2 AND NOT deleted"
    };
}

async fn live_node<C: GenericClient>(c: &C, project_id: i64, path: &str, lock: Lock) -> TxResult<Option<NodeRow>> {
    let sql = match lock {
        Lock::None => live_node_at!(),
        Lock::Share => concat!(live_node_at!(), " FOR SHARE"),
        Lock::Update => concat!(live_node_at!(), " FOR NO KEY UPDATE"),
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
             WHERE project_id = $1 AND NOT deleted AND path >= $2 AND path < $3
               AND left(path, 512) BETWEEN left($2, 512) AND left($3, 512)
             ORDER BY path DESC
             FOR NO KEY UPDATE",
        )
        .await?;
    let rows = c.query(&stmt, &[&project_id, &lower, &upper]).await?;
    Ok(rows.iter().map(node_from_row).collect::<StoreResult<Vec<_>>>()?)
}

pub(super) async fn current_cursor<C: GenericClient>(c: &C, project_id: i64) -> TxResult<i64> {
    let stmt = c.prepare_cached("SELECT cursor FROM projects WHERE id = $1").await?;
    let row = c.query_one(&stmt, &[&project_id]).await?;
    Ok(col(&row, 0)?)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn audit<C: GenericClient>(
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
/// `None` when the compare-and-set found another head.
async fn append_version<C: GenericClient>(
    c: &C,
    project_id: i64,
    node: i64,
    parent: Option<i64>,
    v: &NewVersion<'_>,
    meta: &WriteMeta,
) -> TxResult<Option<(VersionInfo, i64)>> {
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
            return Ok(None);
        }
    }
    let stmt = c
        .prepare_cached(concat!(
            "INSERT INTO versions (node_id, number, project_id, path, kind, mode, hash, size, op, status, deleted,
                                   parent, author, agent_id, message, created_at, idempotency_key, mtime, atime)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
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
                &v.times.mtime,
                &v.times.atime,
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
    Ok(Some((info, col(&row, 0)?)))
}

/// [`version_from_row`] for the version columns starting at `offset`.
pub(super) fn version_from_row_at(r: &Row, offset: usize) -> StoreResult<VersionInfo> {
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
        mtime: FileTimes::format(col(r, at(15))?),
        atime: FileTimes::format(col(r, at(16))?),
    })
}

/// A write transaction of one project on a PostgreSQL transaction.
pub(super) struct PgTxn<'a, C> {
    c: &'a C,
    project: i64,
}

impl<'a, C: GenericClient> PgTxn<'a, C> {
    pub fn new(c: &'a C, project: i64) -> Self {
        Self { c, project }
    }
}

impl<C: GenericClient> Txn for PgTxn<'_, C> {
    type Error = TxError;

    fn lost_race() -> TxError {
        TxError::Raced
    }

    async fn live_node(&self, path: &str, lock: Lock) -> TxResult<Option<NodeRow>> {
        live_node(self.c, self.project, path, lock).await
    }

    async fn node_by_id(&self, id: i64) -> TxResult<Option<NodeRow>> {
        lock_node(self.c, self.project, id).await
    }

    async fn live_descendants(&self, dir: &str) -> TxResult<Vec<NodeRow>> {
        live_descendants(self.c, self.project, dir).await
    }

    async fn version(&self, node: i64, number: i64) -> TxResult<Option<VersionInfo>> {
        get_version(self.c, node, number).await
    }

    async fn cursor(&self) -> TxResult<i64> {
        current_cursor(self.c, self.project).await
    }

    async fn idempotency_key_used(&self, key: &str) -> TxResult<bool> {
        let stmt = self
            .c
            .prepare_cached("SELECT 1 FROM versions WHERE project_id = $1 AND idempotency_key = $2")
            .await?;
        Ok(self.c.query_opt(&stmt, &[&self.project, &key]).await?.is_some())
    }

    async fn record_blob(&self, hash: &BlobHash) -> TxResult<()> {
        record_blob(self.c, self.project, hash).await
    }

    /// The service defers blob syncs only on a store that keeps copies,
    /// which PostgreSQL does not (`keeps_unsynced_blobs`).
    async fn keep_unsynced_blob(&self, _hash: &BlobHash, _bytes: &[u8]) -> TxResult<()> {
        Err(
            crate::server::store::StoreError::Backend("PostgreSQL keeps no copies of unsynced blobs".to_string())
                .into(),
        )
    }

    async fn insert_node(&self, path: &str, kind: NodeKind) -> TxResult<i64> {
        let stmt = self
            .c
            .prepare_cached(
                "INSERT INTO nodes (project_id, path, kind, deleted, head) VALUES ($1, $2, $3, false, 1) RETURNING id",
            )
            .await?;
        let row = self.c.query_one(&stmt, &[&self.project, &path, &kind.as_str()]).await?;
        Ok(col(&row, 0)?)
    }

    async fn move_node(&self, id: i64, path: &str) -> TxResult<()> {
        let stmt = self
            .c
            .prepare_cached("UPDATE nodes SET path = $2 WHERE id = $1")
            .await?;
        self.c.execute(&stmt, &[&id, &path]).await?;
        Ok(())
    }

    async fn append_version(
        &self,
        node: i64,
        parent: Option<i64>,
        v: &NewVersion<'_>,
        meta: &WriteMeta,
    ) -> TxResult<Option<(VersionInfo, i64)>> {
        append_version(self.c, self.project, node, parent, v, meta).await
    }
}

/// Records that the project holds this blob, and when it last uploaded it
/// (garbage collection keeps recently uploaded blobs for their commit).
pub(super) async fn record_blob<C: GenericClient>(c: &C, project_id: i64, hash: &BlobHash) -> TxResult<()> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO project_blobs (project_id, hash, used_at) VALUES ($1, $2, $3)
             ON CONFLICT (project_id, hash) DO UPDATE SET used_at = excluded.used_at",
        )
        .await?;
    let now = crate::server::store::now_millis();
    c.execute(&stmt, &[&project_id, &hash.as_str(), &now]).await?;
    Ok(())
}
