//! The embedded metadata store: SQLite in WAL mode.
//!
//! All writes go through one writer thread that batches whatever requests are
//! waiting into a single transaction (group commit): each request runs inside
//! its own SAVEPOINT so one failure does not undo its neighbours, and one
//! fsync of the WAL acknowledges the whole batch. `synchronous=FULL` means a
//! commit the client was told about survives power loss. Reads use a small
//! pool of separate connections that see WAL snapshots and never block the
//! writer.
//!
//! The namespace writes (`write_content`, `mkdir`, `rename`, `delete`) run
//! the shared `store::txn` logic over `rows::SqliteTxn` on the
//! writer thread. Here: the store and its reads; `schema` (tables, opening),
//! `writer` (the writer thread and its batches), `rows` (row access and the
//! `Txn`), `records` (`contextfs migrate` export and import).

mod dav;
mod manifests;
mod ops;
mod records;
mod rows;
mod schema;
mod writer;

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::namespace;
use super::txn;
use super::*;
use crate::api::{AuditEntry, SkillFile};
use rows::{
    audit, current_cursor, get_version, head_of, node_row, parse_hash, parse_kind, run_now, version_from_row,
    SqliteTxn, VERSION_COLUMNS,
};
use schema::open_connection;
use writer::{writer_loop, Job, Request};

pub struct SqliteStore {
    writer: mpsc::Sender<Box<dyn Job>>,
    readers: Arc<ReaderPool>,
}

struct ReaderPool {
    path: std::path::PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> StoreResult<Connection> {
        let pooled = self.idle.lock().map_err(|_| backend("reader pool poisoned"))?.pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < 16 {
                idle.push(conn);
            }
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts the writer thread.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let conn = schema::open_database(path)?;
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| backend(format!("cannot start the database writer thread: {e}")))?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(ReaderPool {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.writer
            .send(Box::new(Request { work: f, reply }))
            .map_err(|_| backend("the database writer thread has stopped"))?;
        rx.await
            .map_err(|_| backend("the database writer thread dropped a request"))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = {
                // One read transaction = one consistent snapshot for multi-query reads.
                let tx = conn.unchecked_transaction()?;
                let r = f(&tx);
                tx.finish()?;
                r
            };
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|e| backend(format!("database reader task failed: {e}")))?
    }
}

/// The live node at `path`, else the most recently deleted one there.
fn node_at_now(conn: &Connection, project_id: i64, path: &str) -> StoreResult<Option<NodeHead>> {
    let row = conn
        .prepare_cached(
            "SELECT id, path, kind, deleted, head FROM nodes WHERE project_id = ?1 AND path = ?2
             ORDER BY deleted ASC, deleted_at DESC, id DESC LIMIT 1",
        )?
        .query_row(params![project_id, path], node_row)
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let head = head_of(conn, &row)?;
    Ok(Some(row.into_head(head)))
}

fn find_idempotent_now(conn: &Connection, project_id: i64, key: &str) -> StoreResult<Option<VersionInfo>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE project_id = ?1 AND idempotency_key = ?2"
        ))?
        .query_row(params![project_id, key], version_from_row)
        .optional()?)
}

fn project_row(r: &Row) -> rusqlite::Result<ProjectRow> {
    Ok(ProjectRow {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        cursor: r.get(3)?,
    })
}

fn token_row(r: &Row) -> rusqlite::Result<TokenRow> {
    let access: String = r.get(3)?;
    Ok(TokenRow {
        id: r.get(0)?,
        project_id: r.get(1)?,
        project: r.get(2)?,
        access: Access::parse(&access)
            .ok_or_else(|| rusqlite::Error::InvalidColumnType(3, access.clone(), rusqlite::types::Type::Text))?,
        label: r.get(4)?,
        created_at: r.get(5)?,
        revoked: r.get::<_, Option<i64>>(6)?.is_some(),
    })
}

const TOKEN_SELECT: &str = "SELECT t.id, t.project_id, p.name, t.access, t.label, t.created_at, t.revoked_at
                            FROM tokens t JOIN projects p ON p.id = t.project_id";

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn create_project(&self, name: &str, meta: WriteMeta) -> StoreResult<ProjectRow> {
        let name = name.to_string();
        self.write(move |conn| {
            let exists: Option<i64> =
                conn.query_row("SELECT id FROM projects WHERE name = ?1", [&name], |r| r.get(0)).optional()?;
            if exists.is_some() {
                return Err(StoreError::AlreadyExists(format!("project {name} already exists")));
            }
            let row = conn.query_row(
                "INSERT INTO projects (name, created_at, cursor) VALUES (?1, ?2, 0) RETURNING id, name, created_at, cursor",
                params![name, meta.now],
                project_row,
            )?;
            audit(conn, Some(row.id), &meta, "create_project", None, None, None, Some(&name))?;
            Ok(row)
        })
        .await
    }

    async fn project(&self, name: &str) -> StoreResult<Option<ProjectRow>> {
        let name = name.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT id, name, created_at, cursor FROM projects WHERE name = ?1")?
                .query_row([name], project_row)
                .optional()?)
        })
        .await
    }

    async fn projects(&self) -> StoreResult<Vec<ProjectRow>> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT id, name, created_at, cursor FROM projects ORDER BY name")?;
            let rows = stmt.query_map([], project_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
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
        let id = id.to_string();
        let secret_hash = secret_hash.to_string();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO tokens (id, secret_hash, project_id, access, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, secret_hash, project_id, access.as_str(), label, meta.now],
            )?;
            audit(conn, Some(project_id), &meta, "create_token", None, None, Some(access.as_str()), Some(&id))?;
            Ok(conn.query_row(&format!("{TOKEN_SELECT} WHERE t.id = ?1"), [&id], token_row)?)
        })
        .await
    }

    async fn token_by_secret_hash(&self, secret_hash: &str) -> StoreResult<Option<TokenRow>> {
        let secret_hash = secret_hash.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!("{TOKEN_SELECT} WHERE t.secret_hash = ?1"))?
                .query_row([secret_hash], token_row)
                .optional()?)
        })
        .await
    }

    async fn tokens(&self, project_id: i64) -> StoreResult<Vec<TokenRow>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "{TOKEN_SELECT} WHERE t.project_id = ?1 ORDER BY t.created_at, t.id"
            ))?;
            let rows = stmt
                .query_map([project_id], token_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn revoke_token(&self, id: &str, meta: WriteMeta) -> StoreResult<bool> {
        let id = id.to_string();
        self.write(move |conn| {
            let project: Option<i64> = conn
                .query_row("SELECT project_id FROM tokens WHERE id = ?1", [&id], |r| r.get(0))
                .optional()?;
            let Some(project) = project else { return Ok(false) };
            let revoked = conn.execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, meta.now],
            )?;
            // Revoking again is a no-op, not a second event.
            if revoked > 0 {
                audit(conn, Some(project), &meta, "revoke_token", None, None, None, Some(&id))?;
            }
            Ok(true)
        })
        .await
    }

    async fn tree(&self, project_id: i64, prefix: Option<&WsPath>, recursive: bool) -> StoreResult<TreeListing> {
        let prefix = prefix.map(|p| p.as_str().to_string());
        self.read(move |conn| {
            let cursor = current_cursor(conn, project_id)?;
            let (lower, upper) = match &prefix {
                Some(p) => namespace::descendant_range(p),
                None => (String::new(), "\u{10FFFF}".to_string()),
            };
            let mut stmt = conn.prepare_cached(
                "SELECT n.path, n.id, v.kind, v.mode, v.size, v.hash, v.number, v.created_at, v.mtime, v.atime
                 FROM nodes n JOIN versions v ON v.node_id = n.id AND v.number = n.head
                 WHERE n.project_id = ?1 AND n.deleted = 0 AND n.path >= ?2 AND n.path < ?3
                 ORDER BY n.path",
            )?;
            let depth_start = lower.len();
            let mut entries = Vec::new();
            let mut rows = stmt.query(params![project_id, lower, upper])?;
            while let Some(r) = rows.next()? {
                let path: String = r.get(0)?;
                if !namespace::tree_lists(&path, depth_start, recursive) {
                    continue;
                }
                let created_at: i64 = r.get(7)?;
                entries.push(crate::api::TreeEntry {
                    path,
                    id: r.get(1)?,
                    kind: parse_kind(r.get(2)?)?,
                    mode: r.get(3)?,
                    size: r.get::<_, i64>(4)? as u64,
                    hash: parse_hash(r.get(5)?)?,
                    version: r.get(6)?,
                    modified_at: FileTimes::format(r.get(8)?).unwrap_or_else(|| format_time(created_at)),
                    accessed_at: FileTimes::format(r.get(9)?),
                });
            }
            Ok(TreeListing { cursor, entries })
        })
        .await
    }

    async fn node_at(&self, project_id: i64, path: &WsPath) -> StoreResult<Option<NodeHead>> {
        let path = path.as_str().to_string();
        self.read(move |conn| node_at_now(conn, project_id, &path)).await
    }

    fn keeps_unsynced_blobs(&self) -> bool {
        true
    }

    async fn newest_unsynced_blob(&self) -> StoreResult<Option<i64>> {
        self.read(|conn| Ok(conn.query_row("SELECT max(id) FROM unsynced_blobs", [], |r| r.get(0))?))
            .await
    }

    async fn forget_unsynced_blobs(&self, newest: i64) -> StoreResult<()> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM unsynced_blobs WHERE id <= ?1")?
                .execute([newest])?;
            Ok(())
        })
        .await
    }

    async fn unsynced_blobs(&self) -> StoreResult<Vec<(i64, BlobHash, Vec<u8>)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT id, hash, data FROM unsynced_blobs ORDER BY id")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, rows::parse_hash(r.get(1)?)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn nodes_at(&self, project_id: i64, paths: Vec<WsPath>) -> StoreResult<Vec<Option<NodeHead>>> {
        self.read(move |conn| {
            paths
                .iter()
                .map(|path| node_at_now(conn, project_id, path.as_str()))
                .collect()
        })
        .await
    }

    async fn version(&self, node: i64, number: i64) -> StoreResult<Option<VersionInfo>> {
        self.read(move |conn| get_version(conn, node, number)).await
    }

    async fn history(&self, node: i64, before: Option<i64>, limit: u32) -> StoreResult<Vec<VersionInfo>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM versions WHERE node_id = ?1 AND number < ?2 ORDER BY number DESC LIMIT ?3"
            ))?;
            let rows = stmt
                .query_map(params![node, before.unwrap_or(i64::MAX), limit], version_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn find_idempotent(&self, project_id: i64, key: &str) -> StoreResult<Option<VersionInfo>> {
        let key = key.to_string();
        self.read(move |conn| find_idempotent_now(conn, project_id, &key)).await
    }

    async fn find_idempotent_many(
        &self,
        project_id: i64,
        keys: Vec<Option<String>>,
    ) -> StoreResult<Vec<Option<VersionInfo>>> {
        self.read(move |conn| {
            keys.iter()
                .map(|key| match key {
                    Some(key) => find_idempotent_now(conn, project_id, key),
                    None => Ok(None),
                })
                .collect()
        })
        .await
    }

    async fn write_content(
        &self,
        project_id: i64,
        write: ContentWrite,
        meta: WriteMeta,
    ) -> StoreResult<Applied<VersionInfo>> {
        self.write(move |conn| run_now(txn::write_content(&SqliteTxn::new(conn, project_id), &write, &meta)))
            .await
    }

    async fn write_contents(
        &self,
        project_id: i64,
        writes: Vec<(ContentWrite, WriteMeta)>,
    ) -> StoreResult<Vec<StoreResult<Applied<VersionInfo>>>> {
        // One writer job: one transaction (the job's savepoint inside the
        // writer's batch). Entries are written optimistically, all in one
        // savepoint: a savepoint per entry cost the writer about a fifth of
        // its time, and almost every batch commits whole. Only when an entry
        // fails is that undone and the batch written again with a savepoint
        // per entry, so the failed one leaves no trace and the rest commit.
        self.write(move |conn| {
            let write_all = |each: bool| -> StoreResult<Vec<StoreResult<Applied<VersionInfo>>>> {
                let mut out = Vec::with_capacity(writes.len());
                for (write, meta) in &writes {
                    if each {
                        conn.prepare_cached("SAVEPOINT batch_entry")?.execute([])?;
                    }
                    let result = run_now(txn::write_content(&SqliteTxn::new(conn, project_id), write, meta));
                    if each {
                        if result.is_err() {
                            conn.prepare_cached("ROLLBACK TO batch_entry")?.execute([])?;
                        }
                        conn.prepare_cached("RELEASE batch_entry")?.execute([])?;
                    } else if result.is_err() {
                        return Ok(Vec::new());
                    }
                    out.push(result);
                }
                Ok(out)
            };
            conn.prepare_cached("SAVEPOINT batch_all")?.execute([])?;
            let optimistic = write_all(false);
            match optimistic {
                Ok(out) if out.len() == writes.len() => {
                    conn.prepare_cached("RELEASE batch_all")?.execute([])?;
                    Ok(out)
                }
                _ => {
                    conn.prepare_cached("ROLLBACK TO batch_all")?.execute([])?;
                    conn.prepare_cached("RELEASE batch_all")?.execute([])?;
                    write_all(true)
                }
            }
        })
        .await
    }

    async fn mkdir(
        &self,
        project_id: i64,
        path: &WsPath,
        mode: u32,
        meta: WriteMeta,
    ) -> StoreResult<Applied<(VersionInfo, bool)>> {
        let path = path.clone();
        self.write(move |conn| run_now(txn::mkdir(&SqliteTxn::new(conn, project_id), &path, mode, &meta)))
            .await
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
        let (from, to) = (from.clone(), to.clone());
        self.write(move |conn| {
            let t = SqliteTxn::new(conn, project_id);
            run_now(txn::rename(&t, &from, &to, replace, &guard, &meta))
        })
        .await
    }

    async fn delete(
        &self,
        project_id: i64,
        path: &WsPath,
        guard: NodeGuard,
        recursive: bool,
        meta: WriteMeta,
    ) -> StoreResult<Applied<Vec<VersionInfo>>> {
        let path = path.clone();
        self.write(move |conn| {
            let t = SqliteTxn::new(conn, project_id);
            run_now(txn::delete(&t, &path, &guard, recursive, &meta))
        })
        .await
    }

    async fn changes(&self, project_id: i64, since: i64, limit: u32) -> StoreResult<(Vec<ChangeEvent>, bool)> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.seq, e.node_id, v.path, e.old_path, v.op, v.number, v.kind, v.hash, v.size, v.mode, v.deleted,
                        v.agent_id, v.created_at, v.mtime, v.atime
                 FROM events e JOIN versions v ON v.node_id = e.node_id AND v.number = e.version
                 WHERE e.project_id = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3",
            )?;
            let mut events = stmt
                .query_map(params![project_id, since, limit as i64 + 1], |r| {
                    let op: String = r.get(4)?;
                    Ok(ChangeEvent {
                        seq: r.get(0)?,
                        node: r.get(1)?,
                        path: r.get(2)?,
                        old_path: r.get(3)?,
                        op: VersionOp::parse(&op).ok_or_else(|| {
                            rusqlite::Error::InvalidColumnType(4, op.clone(), rusqlite::types::Type::Text)
                        })?,
                        version: r.get(5)?,
                        kind: parse_kind(r.get(6)?)?,
                        hash: parse_hash(r.get(7)?)?,
                        size: r.get::<_, i64>(8)? as u64,
                        mode: r.get(9)?,
                        deleted: r.get(10)?,
                        agent_id: r.get(11)?,
                        at: format_time(r.get(12)?),
                        mtime: FileTimes::format(r.get(13)?),
                        atime: FileTimes::format(r.get(14)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let more = trim_page(&mut events, limit);
            Ok((events, more))
        })
        .await
    }

    async fn audit(&self, project_id: i64, since: i64, limit: u32) -> StoreResult<AuditPage> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, created_at, actor, agent_id, action, path, version, status, detail FROM audit
                 WHERE project_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let entries = stmt
                .query_map(params![project_id, since, limit as i64 + 1], |r| {
                    Ok(AuditEntry {
                        seq: r.get(0)?,
                        at: format_time(r.get(1)?),
                        actor: r.get(2)?,
                        agent_id: r.get(3)?,
                        action: r.get(4)?,
                        path: r.get(5)?,
                        version: r.get(6)?,
                        status: r.get(7)?,
                        detail: r.get(8)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(audit_page(entries, limit))
        })
        .await
    }

    async fn record_blob(&self, project_id: i64, hash: &BlobHash) -> StoreResult<()> {
        let hash = hash.clone();
        self.write(move |conn| rows::record_blob(conn, project_id, &hash)).await
    }

    async fn project_has_blob(&self, project_id: i64, hash: &BlobHash) -> StoreResult<bool> {
        let hash = hash.clone();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM project_blobs WHERE project_id = ?1 AND hash = ?2")?
                .query_row(params![project_id, hash.as_str()], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    async fn publish_skills(&self, skills: Vec<SkillInfo>, meta: WriteMeta) -> StoreResult<()> {
        self.write(move |conn| {
            conn.execute("DELETE FROM skills", [])?;
            conn.execute("DELETE FROM skill_files", [])?;
            for skill in &skills {
                conn.execute(
                    "INSERT INTO skills (name, description) VALUES (?1, ?2)",
                    params![skill.name, skill.description],
                )?;
                for file in &skill.files {
                    conn.execute(
                        "INSERT INTO skill_files (path, skill, hash, size, mode) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            file.path.as_str(),
                            skill.name,
                            file.hash.as_str(),
                            file.size as i64,
                            file.mode
                        ],
                    )?;
                }
            }
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('skills_published_at', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [meta.now.to_string()],
            )?;
            let names: Vec<&str> = skills.iter().map(|s| s.name.as_str()).collect();
            audit(
                conn,
                None,
                &meta,
                "publish_skills",
                None,
                None,
                None,
                Some(&names.join(",")),
            )?;
            Ok(())
        })
        .await
    }

    async fn skills(&self) -> StoreResult<SkillsListing> {
        self.read(|conn| {
            let published_at: Option<String> = conn
                .query_row("SELECT value FROM meta WHERE key = 'skills_published_at'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let skills: Vec<SkillInfo> = conn
                .prepare("SELECT name, description FROM skills ORDER BY name")?
                .query_map([], |r| {
                    Ok(SkillInfo {
                        name: r.get(0)?,
                        description: r.get(1)?,
                        files: Vec::new(),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut stmt = conn.prepare("SELECT skill, path, hash, size, mode FROM skill_files ORDER BY path")?;
            let mut rows = stmt.query([])?;
            let mut files = Vec::new();
            while let Some(r) = rows.next()? {
                let path: String = r.get(1)?;
                let file = SkillFile {
                    path: WsPath::parse(&path).map_err(backend)?,
                    hash: parse_hash(r.get(2)?)?,
                    size: r.get::<_, i64>(3)? as u64,
                    mode: r.get(4)?,
                };
                files.push((r.get(0)?, file));
            }
            Ok(skills_listing(published_at, skills, files))
        })
        .await
    }

    async fn skill_has_blob(&self, hash: &BlobHash) -> StoreResult<bool> {
        let hash = hash.clone();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM skill_files WHERE hash = ?1 LIMIT 1")?
                .query_row([hash.as_str()], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    async fn referenced_hashes(&self) -> StoreResult<Vec<BlobHash>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT hash FROM versions UNION SELECT hash FROM skill_files UNION SELECT hash FROM project_blobs",
            )?;
            let rows = stmt
                .query_map([], |r| parse_hash(r.get(0)?))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn retention(&self, project_id: i64) -> StoreResult<Option<RetentionPolicy>> {
        self.read(move |conn| ops::retention(conn, project_id)).await
    }

    async fn set_retention(
        &self,
        project_id: i64,
        policy: Option<RetentionPolicy>,
        meta: WriteMeta,
    ) -> StoreResult<()> {
        self.write(move |conn| ops::set_retention(conn, project_id, policy, &meta))
            .await
    }

    async fn prune_versions(
        &self,
        project_id: i64,
        policy: RetentionPolicy,
        dry_run: bool,
        meta: WriteMeta,
    ) -> StoreResult<u64> {
        if dry_run {
            return self
                .read(move |conn| ops::prune_versions(conn, project_id, policy, true, &meta))
                .await;
        }
        self.write(move |conn| ops::prune_versions(conn, project_id, policy, false, &meta))
            .await
    }

    async fn blob_references(&self) -> StoreResult<Vec<(BlobHash, u64)>> {
        self.read(ops::blob_references).await
    }

    async fn blobs_used_since(&self, since: i64) -> StoreResult<Vec<BlobHash>> {
        self.read(move |conn| ops::blobs_used_since(conn, since)).await
    }

    async fn release_blobs(&self, candidates: Vec<BlobHash>, cutoff: i64) -> StoreResult<Vec<BlobHash>> {
        self.write(move |conn| ops::release_blobs(conn, candidates, cutoff))
            .await
    }

    async fn blob_held(&self, hash: &BlobHash) -> StoreResult<bool> {
        let hash = hash.clone();
        self.read(move |conn| ops::blob_held(conn, &hash)).await
    }

    async fn activity(&self, project_id: i64, filter: super::ops::ActivityFilter) -> StoreResult<Vec<ActivityEntry>> {
        self.read(move |conn| ops::activity(conn, project_id, &filter)).await
    }

    async fn is_empty(&self) -> StoreResult<bool> {
        self.read(|conn| Ok(!records::has_rows(conn)?)).await
    }

    async fn export_records(&self, sink: tokio::sync::mpsc::Sender<super::records::RecordBatch>) -> StoreResult<()> {
        self.read(move |conn| records::export(conn, &sink)).await
    }

    async fn import_records(
        &self,
        source: tokio::sync::mpsc::Receiver<super::records::RecordBatch>,
        replace: bool,
    ) -> StoreResult<super::records::ImportCounts> {
        self.write(move |conn| records::import(conn, source, replace)).await
    }
}
