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
//!
//! The namespace writes (`write_content`, `mkdir`, `rename`, `delete`) run
//! the shared `store::txn` logic over `rows::PgTxn`, inside
//! `retry::write_tx!`. Here: the store and its reads; `schema`
//! (migrations), `retry` (lost races run again), `rows` (row access, locks
//! and the `Txn`), `listen` (LISTEN/NOTIFY), `records` (`contextfs migrate`
//! export and import).

mod dav;
mod listen;
mod manifests;
mod ops;
mod records;
mod retry;
mod rows;
mod schema;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio_postgres::{IsolationLevel, NoTls, Row};

use super::namespace;
use super::txn;
use super::*;
use crate::api::{AuditEntry, SkillFile, TreeEntry};
use retry::{write_tx, TxError, TxResult};
use rows::{
    audit, col, current_cursor, get_version, node_from_row, parse_hash, parse_kind, version_columns, version_from_row,
    version_from_row_at, PgTxn,
};

/// Key of the transaction-scoped advisory lock around `publish_skills`.
const SKILLS_LOCK: i64 = 0x636f_6e74_6578_7402;
/// The NOTIFY channel carrying the project id of every committed change.
pub const CHANGES_CHANNEL: &str = "contextfs_changes";
/// `application_name` of the LISTEN connection (to find it in `pg_stat_activity`).
pub const LISTENER_NAME: &str = "contextfs-listen";
/// Connections per instance.
const POOL_SIZE: usize = 16;

pub struct PostgresStore {
    pool: Pool,
    config: tokio_postgres::Config,
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

// ----- opening -----

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
        schema::migrate(&config).await?;
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
        self.pool.get().await.map_err(retry::no_connection)
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

#[async_trait]
impl MetadataStore for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await.map_err(retry::pg_error("ping"))?;
        Ok(())
    }

    fn subscribe(&self) -> Option<BoxStream<'static, Wake>> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut config = self.config.clone();
        config.application_name(LISTENER_NAME);
        tokio::spawn(listen::listen(config, tx));
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
        const COLUMNS: &str = "SELECT n.path, n.id, v.kind, v.mode, v.size, v.hash, v.number, v.created_at,
                    v.mtime, v.atime
             FROM nodes n JOIN versions v ON v.node_id = n.id AND v.number = n.head
             WHERE n.project_id = $1 AND NOT n.deleted";
        let (rows, depth_start) = match prefix {
            Some(p) => {
                let (lower, upper) = namespace::descendant_range(p.as_str());
                let stmt = tx
                    // The prefix bounds let the range use `nodes_any_path` (migration 3).
                    .prepare_cached(&format!(
                        "{COLUMNS} AND n.path >= $2 AND n.path < $3
                         AND left(n.path, 512) BETWEEN left($2, 512) AND left($3, 512) ORDER BY n.path"
                    ))
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
            let created_at: i64 = col(r, 7)?;
            entries.push(TreeEntry {
                path,
                id: col(r, 1)?,
                kind: parse_kind(col(r, 2)?)?,
                mode: col::<i64>(r, 3)? as u32,
                size: col::<i64>(r, 4)? as u64,
                hash: parse_hash(col(r, 5)?)?,
                version: col(r, 6)?,
                modified_at: FileTimes::format(col(r, 8)?).unwrap_or_else(|| format_time(created_at)),
                accessed_at: FileTimes::format(col(r, 9)?),
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
                 v.author, v.agent_id, v.message, v.created_at, v.mtime, v.atime
                 FROM nodes n LEFT JOIN versions v ON v.node_id = n.id AND v.number = n.head
                 WHERE n.project_id = $1 AND left(n.path, 512) = left($2, 512) AND n.path = $2
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
        write_tx!(self, |tx| txn::write_content(
            &PgTxn::new(&tx, project_id),
            &write,
            &meta
        )
        .await?)
    }

    async fn write_contents(
        &self,
        project_id: i64,
        writes: Vec<(ContentWrite, WriteMeta)>,
    ) -> StoreResult<Vec<StoreResult<Applied<VersionInfo>>>> {
        write_tx!(self, |mut tx| {
            let mut out = Vec::with_capacity(writes.len());
            for (write, meta) in &writes {
                let entry = tx.savepoint("batch_entry").await?;
                let result = txn::write_content(&PgTxn::new(&entry, project_id), write, meta).await;
                match result {
                    Ok(applied) => {
                        entry.commit().await?;
                        out.push(Ok(applied));
                    }
                    // Lost to a concurrent writer (a node made at the path,
                    // a head moved): this entry alone; the service plans it again.
                    Err(e) if e.retryable() => {
                        entry.rollback().await?;
                        out.push(Err(StoreError::HeadMoved));
                    }
                    Err(TxError::Store(e)) => {
                        entry.rollback().await?;
                        out.push(Err(e));
                    }
                    // The database itself failed: nothing of the batch stays.
                    Err(e) => return Err(e),
                }
            }
            out
        })
    }

    async fn mkdir(
        &self,
        project_id: i64,
        path: &WsPath,
        mode: u32,
        meta: WriteMeta,
    ) -> StoreResult<Applied<(VersionInfo, bool)>> {
        write_tx!(self, |tx| txn::mkdir(&PgTxn::new(&tx, project_id), path, mode, &meta)
            .await?)
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
        write_tx!(self, |tx| {
            let t = PgTxn::new(&tx, project_id);
            txn::rename(&t, from, to, replace, &guard, &meta).await?
        })
    }

    async fn delete(
        &self,
        project_id: i64,
        path: &WsPath,
        guard: NodeGuard,
        recursive: bool,
        meta: WriteMeta,
    ) -> StoreResult<Applied<Vec<VersionInfo>>> {
        write_tx!(self, |tx| {
            let t = PgTxn::new(&tx, project_id);
            txn::delete(&t, path, &guard, recursive, &meta).await?
        })
    }

    async fn changes(&self, project_id: i64, since: i64, limit: u32) -> StoreResult<(Vec<ChangeEvent>, bool)> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT e.seq, e.node_id, v.path, e.old_path, v.op, v.number, v.kind, v.hash, v.size, v.mode, v.deleted,
                        v.agent_id, v.created_at, v.mtime, v.atime
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
                mtime: FileTimes::format(col(r, 13)?),
                atime: FileTimes::format(col(r, 14)?),
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
        Ok(rows::record_blob(&c, project_id, hash).await?)
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

    async fn retention(&self, project_id: i64) -> StoreResult<Option<RetentionPolicy>> {
        ops::retention(self, project_id).await
    }

    async fn set_retention(
        &self,
        project_id: i64,
        policy: Option<RetentionPolicy>,
        meta: WriteMeta,
    ) -> StoreResult<()> {
        ops::set_retention(self, project_id, policy, meta).await
    }

    async fn prune_versions(
        &self,
        project_id: i64,
        policy: RetentionPolicy,
        dry_run: bool,
        meta: WriteMeta,
    ) -> StoreResult<u64> {
        ops::prune_versions(self, project_id, policy, dry_run, meta).await
    }

    async fn blob_references(&self) -> StoreResult<Vec<(BlobHash, u64)>> {
        ops::blob_references(self).await
    }

    async fn blobs_used_since(&self, since: i64) -> StoreResult<Vec<BlobHash>> {
        ops::blobs_used_since(self, since).await
    }

    async fn release_blobs(&self, candidates: Vec<BlobHash>, cutoff: i64) -> StoreResult<Vec<BlobHash>> {
        ops::release_blobs(self, candidates, cutoff).await
    }

    async fn blob_held(&self, hash: &BlobHash) -> StoreResult<bool> {
        ops::blob_held(self, hash).await
    }

    async fn activity(&self, project_id: i64, filter: super::ops::ActivityFilter) -> StoreResult<Vec<ActivityEntry>> {
        ops::activity(self, project_id, &filter).await
    }

    async fn is_empty(&self) -> StoreResult<bool> {
        records::is_empty(self).await
    }

    async fn export_records(&self, sink: tokio::sync::mpsc::Sender<super::records::RecordBatch>) -> StoreResult<()> {
        records::export(self, sink).await
    }

    async fn import_records(
        &self,
        source: tokio::sync::mpsc::Receiver<super::records::RecordBatch>,
        replace: bool,
    ) -> StoreResult<super::records::ImportCounts> {
        records::import(self, source, replace).await
    }
}
