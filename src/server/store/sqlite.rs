//! The embedded metadata store: SQLite in WAL mode.
//!
//! All writes go through one writer thread that batches whatever requests are
//! waiting into a single transaction (group commit): each request runs inside
//! its own SAVEPOINT so one failure does not undo its neighbours, and one
//! fsync of the WAL acknowledges the whole batch. `synchronous=FULL` means a
//! commit the client was told about survives power loss. Reads use a small
//! pool of separate connections that see WAL snapshots and never block the
//! writer.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::namespace::{self, NodeRow};
use super::*;
use crate::api::{AuditEntry, SkillFile};

/// How many queued writes one transaction may absorb.
const MAX_BATCH: usize = 256;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    access TEXT NOT NULL,
    label TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    head INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_live_path ON nodes(project_id, path) WHERE deleted = 0;
CREATE INDEX IF NOT EXISTS nodes_any_path ON nodes(project_id, path, deleted_at);
CREATE TABLE IF NOT EXISTS versions (
    node_id INTEGER NOT NULL REFERENCES nodes(id),
    number INTEGER NOT NULL,
    project_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    mode INTEGER NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    op TEXT NOT NULL,
    status TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    parent INTEGER,
    author TEXT NOT NULL,
    agent_id TEXT,
    message TEXT,
    created_at INTEGER NOT NULL,
    idempotency_key TEXT,
    PRIMARY KEY (node_id, number)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS versions_idempotency ON versions(project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    project_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    old_path TEXT,
    PRIMARY KEY (project_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    project_id INTEGER,
    created_at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    agent_id TEXT,
    action TEXT NOT NULL,
    path TEXT,
    version INTEGER,
    status TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_project ON audit(project_id, id);
CREATE TABLE IF NOT EXISTS project_blobs (
    project_id INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (project_id, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS skills (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS skill_files (
    path TEXT PRIMARY KEY,
    skill TEXT NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mode INTEGER NOT NULL
);
"#;

const VERSION_COLUMNS: &str =
    "node_id, number, path, kind, mode, hash, size, op, status, deleted, parent, author, agent_id, message, created_at";

/// A write queued for the writer thread. Running it and telling its caller
/// how it ended are separate steps: a job is either run (inside the batch's
/// transaction and its own savepoint) and later finished with the batch's
/// commit result, or abandoned without ever touching the database.
trait Job: Send {
    /// Runs the job's statements; the caller learns the outcome only through
    /// the returned [`Ran`], once the batch has committed or failed.
    fn run(self: Box<Self>, conn: &Connection) -> Ran;
    /// Fails the job without running it (its transaction or savepoint could
    /// not be opened): nothing it would have written reaches the database.
    fn abandon(self: Box<Self>, reason: String);
}

/// A job that has run: whether its statements succeeded (else its savepoint
/// is rolled back) and how to answer its caller once the batch has ended.
struct Ran {
    ok: bool,
    finish: Box<dyn FnOnce(Result<(), String>) + Send>,
}

/// [`SqliteStore::write`]'s job: a closure and the channel its caller awaits.
struct Request<F, T> {
    work: F,
    reply: tokio::sync::oneshot::Sender<StoreResult<T>>,
}

impl<F, T> Job for Request<F, T>
where
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Ran {
        let Request { work, reply } = *self;
        let result = work(conn);
        Ran {
            ok: result.is_ok(),
            finish: Box::new(move |committed| {
                let _ = reply.send(match committed {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::Backend(e)),
                });
            }),
        }
    }

    fn abandon(self: Box<Self>, reason: String) {
        let _ = self.reply.send(Err(StoreError::Backend(reason)));
    }
}

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

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536;",
    )?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts the writer thread.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let conn = open_connection(path)?;
        conn.execute_batch(SCHEMA)?;
        let found: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()?;
        match found {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(backend(format!(
                    "database schema version {v} is not supported by this build (expects {SCHEMA_VERSION})"
                )))
            }
        }
        // An integrity check on open turns silent corruption into a loud refusal.
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(backend(format!(
                "database {} failed its integrity check: {check}",
                path.display()
            )));
        }
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

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&conn, batch);
    }
}

/// Runs `batch` as one transaction, each job inside its own savepoint, and
/// answers every job's caller with the commit's outcome.
///
/// A job runs only inside its savepoint: when `BEGIN IMMEDIATE` fails the
/// whole batch is abandoned unrun, and a job whose `SAVEPOINT` fails is
/// abandoned alone. If a failed job's savepoint cannot be rolled back, its
/// partial writes would reach the commit, so the whole transaction is rolled
/// back and every job fails.
fn run_batch(conn: &Connection, batch: Vec<Box<dyn Job>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let reason = format!("cannot begin a transaction: {e}");
        for job in batch {
            job.abandon(reason.clone());
        }
        return;
    }
    let mut finishes = Vec::with_capacity(batch.len());
    let mut poisoned: Option<String> = None;
    for job in batch {
        if let Some(reason) = &poisoned {
            job.abandon(reason.clone());
            continue;
        }
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            tracing::error!(error = %e, "savepoint failed; the write is not run");
            job.abandon(format!("cannot open a savepoint for the write: {e}"));
            continue;
        }
        let ran = job.run(conn);
        let end = if ran.ok {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        if let Err(e) = conn.execute_batch(end) {
            tracing::error!(error = %e, "ending savepoint failed");
            if !ran.ok {
                poisoned = Some(format!("cannot undo a failed write in the batch: {e}"));
            }
        }
        finishes.push(ran.finish);
    }
    let committed = match poisoned {
        Some(reason) => Err(reason),
        None => conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
    };
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for finish in finishes {
        finish(committed.clone());
    }
}

fn parse_kind(raw: String) -> rusqlite::Result<NodeKind> {
    NodeKind::parse(&raw).ok_or_else(|| rusqlite::Error::InvalidColumnType(0, raw, rusqlite::types::Type::Text))
}

fn parse_hash(raw: String) -> rusqlite::Result<BlobHash> {
    BlobHash::parse(&raw).map_err(|_| rusqlite::Error::InvalidColumnType(0, raw, rusqlite::types::Type::Text))
}

fn version_from_row(r: &Row) -> rusqlite::Result<VersionInfo> {
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
    })
}

fn get_version(conn: &Connection, node: i64, number: i64) -> StoreResult<Option<VersionInfo>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM versions WHERE node_id = ?1 AND number = ?2"
    ))?;
    Ok(stmt.query_row(params![node, number], version_from_row).optional()?)
}

/// The node's head version (a node without one is a broken database).
fn head_of(conn: &Connection, node: &NodeRow) -> StoreResult<VersionInfo> {
    get_version(conn, node.id, node.head)?.ok_or_else(|| backend("node head missing"))
}

/// A `nodes` row selected as `id, path, kind, deleted, head`.
fn node_row(r: &Row) -> rusqlite::Result<NodeRow> {
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

fn bump_cursor(conn: &Connection, project_id: i64) -> StoreResult<i64> {
    let mut stmt = conn.prepare_cached("UPDATE projects SET cursor = cursor + 1 WHERE id = ?1 RETURNING cursor")?;
    Ok(stmt.query_row([project_id], |r| r.get(0))?)
}

fn current_cursor(conn: &Connection, project_id: i64) -> StoreResult<i64> {
    Ok(conn.query_row("SELECT cursor FROM projects WHERE id = ?1", [project_id], |r| r.get(0))?)
}

#[allow(clippy::too_many_arguments)]
fn audit(
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
                               author, agent_id, message, created_at, idempotency_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
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

fn create_node(
    conn: &Connection,
    project_id: i64,
    v: &NewVersion,
    meta: &WriteMeta,
) -> StoreResult<(VersionInfo, i64)> {
    let node: i64 = conn
        .prepare_cached(
            "INSERT INTO nodes (project_id, path, kind, deleted, head) VALUES (?1, ?2, ?3, 0, 1) RETURNING id",
        )?
        .query_row(params![project_id, v.path, v.kind.as_str()], |r| r.get(0))?;
    append_version(conn, project_id, node, None, v, meta)
}

/// `mkdir -p` of every ancestor of `path`; fails if one of them is not a directory.
fn ensure_parents(conn: &Connection, project_id: i64, path: &WsPath, meta: &WriteMeta) -> StoreResult<i64> {
    let mut cursor = 0;
    for dir in path.ancestors() {
        cursor = cursor.max(ensure_dir(conn, project_id, &dir, 0o755, meta)?.1);
    }
    Ok(cursor)
}

/// Returns the directory's head version, the cursor it advanced to (0 if it
/// already existed) and whether it was created.
fn ensure_dir(
    conn: &Connection,
    project_id: i64,
    dir: &WsPath,
    mode: u32,
    meta: &WriteMeta,
) -> StoreResult<(VersionInfo, i64, bool)> {
    match live_node(conn, project_id, dir.as_str())? {
        Some(node) if node.kind == NodeKind::Dir => {
            let head = head_of(conn, &node)?;
            Ok((head, 0, false))
        }
        Some(node) => Err(node.not_a_directory()),
        None => {
            let v = NewVersion::directory(dir.as_str(), mode);
            let (info, seq) = create_node(conn, project_id, &v, meta)?;
            Ok((info, seq, true))
        }
    }
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

fn tombstone(conn: &Connection, project_id: i64, node: &NodeRow, meta: &WriteMeta) -> StoreResult<(VersionInfo, i64)> {
    let head = head_of(conn, node)?;
    let v = NewVersion::tombstone(node, &head);
    append_version(conn, project_id, node.id, Some(node.head), &v, meta)
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
                "SELECT n.path, n.id, v.kind, v.mode, v.size, v.hash, v.number, v.created_at
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
                entries.push(crate::api::TreeEntry {
                    path,
                    id: r.get(1)?,
                    kind: parse_kind(r.get(2)?)?,
                    mode: r.get(3)?,
                    size: r.get::<_, i64>(4)? as u64,
                    hash: parse_hash(r.get(5)?)?,
                    version: r.get(6)?,
                    modified_at: format_time(r.get(7)?),
                });
            }
            Ok(TreeListing { cursor, entries })
        })
        .await
    }

    async fn node_at(&self, project_id: i64, path: &WsPath) -> StoreResult<Option<NodeHead>> {
        let path = path.as_str().to_string();
        self.read(move |conn| {
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
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {VERSION_COLUMNS} FROM versions WHERE project_id = ?1 AND idempotency_key = ?2"
                ))?
                .query_row(params![project_id, key], version_from_row)
                .optional()?)
        })
        .await
    }

    async fn write_content(
        &self,
        project_id: i64,
        write: ContentWrite,
        meta: WriteMeta,
    ) -> StoreResult<Applied<VersionInfo>> {
        self.write(move |conn| {
            if let Some(key) = &write.idempotency_key {
                let seen: Option<i64> = conn
                    .prepare_cached("SELECT 1 FROM versions WHERE project_id = ?1 AND idempotency_key = ?2")?
                    .query_row(params![project_id, key], |r| r.get(0))
                    .optional()?;
                if seen.is_some() {
                    // A concurrent retry of the same commit won: let the caller find it.
                    return Err(StoreError::HeadMoved);
                }
            }
            if let Some(hash) = &write.record_blob {
                conn.prepare_cached("INSERT OR IGNORE INTO project_blobs (project_id, hash) VALUES (?1, ?2)")?
                    .execute(params![project_id, hash.as_str()])?;
            }
            match &write.target {
                WriteTarget::New { path } => {
                    if live_node(conn, project_id, path.as_str())?.is_some() {
                        return Err(StoreError::HeadMoved);
                    }
                    let parents_cursor = ensure_parents(conn, project_id, path, &meta)?;
                    let v = NewVersion::content(&write, path.as_str());
                    let (info, seq) = create_node(conn, project_id, &v, &meta)?;
                    Ok(Applied {
                        value: info,
                        cursor: seq.max(parents_cursor),
                    })
                }
                WriteTarget::Existing { node, expected_head } => {
                    let row = node_by_id(conn, project_id, *node)?
                        .ok_or_else(|| StoreError::NotFound(format!("node {node} does not exist")))?;
                    if row.head != *expected_head {
                        return Err(StoreError::HeadMoved);
                    }
                    let mut parents_cursor = 0;
                    if row.deleted {
                        // Restoring a deleted node: its path must be free again.
                        if let Some(other) = live_node(conn, project_id, &row.path)? {
                            return Err(row.restore_blocked_by(&other));
                        }
                        let path = WsPath::parse(&row.path).map_err(backend)?;
                        parents_cursor = ensure_parents(conn, project_id, &path, &meta)?;
                    } else {
                        row.check_write_kind(write.kind)?;
                    }
                    let v = NewVersion::content(&write, &row.path);
                    let (info, seq) = append_version(conn, project_id, row.id, Some(row.head), &v, &meta)?;
                    Ok(Applied {
                        value: info,
                        cursor: seq.max(parents_cursor),
                    })
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
        self.write(move |conn| {
            let parents_cursor = ensure_parents(conn, project_id, &path, &meta)?;
            let (info, seq, created) = ensure_dir(conn, project_id, &path, mode, &meta)?;
            let cursor = if seq == 0 && parents_cursor == 0 {
                current_cursor(conn, project_id)?
            } else {
                seq.max(parents_cursor)
            };
            Ok(Applied {
                value: (info, created),
                cursor,
            })
        })
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
            let source = live_node(conn, project_id, from.as_str())?
                .ok_or_else(|| StoreError::NotFound(format!("{from} does not exist")))?;
            namespace::check_rename_source(&source, &guard, &from, &to)?;
            let mut cursor = 0;
            let mut replaced = None;
            if to == from {
                let head = head_of(conn, &source)?;
                return Ok(Applied {
                    value: RenameOutcome {
                        moved: head,
                        replaced: None,
                    },
                    cursor: current_cursor(conn, project_id)?,
                });
            }
            if let Some(target) = live_node(conn, project_id, to.as_str())? {
                namespace::check_rename_target(&source, &target, replace, &from, &to)?;
                if target.kind == NodeKind::Dir && !live_descendants(conn, project_id, &target.path)?.is_empty() {
                    return Err(namespace::rename_target_not_empty(&to));
                }
                let (info, seq) = tombstone(conn, project_id, &target, &meta)?;
                cursor = cursor.max(seq);
                replaced = Some(info);
            }
            cursor = cursor.max(ensure_parents(conn, project_id, &to, &meta)?);
            // Children keep their ids; only their current path moves with the directory.
            if source.kind == NodeKind::Dir {
                for child in live_descendants(conn, project_id, from.as_str())? {
                    let new_path = namespace::moved_path(&child.path, &from, &to);
                    conn.prepare_cached("UPDATE nodes SET path = ?2 WHERE id = ?1")?
                        .execute(params![child.id, new_path])?;
                }
            }
            let head = head_of(conn, &source)?;
            let v = NewVersion::rename(from.as_str(), to.as_str(), source.kind, &head);
            let (moved, seq) = append_version(conn, project_id, source.id, Some(source.head), &v, &meta)?;
            Ok(Applied {
                value: RenameOutcome { moved, replaced },
                cursor: cursor.max(seq),
            })
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
            let node = live_node(conn, project_id, path.as_str())?
                .ok_or_else(|| StoreError::NotFound(format!("{path} does not exist")))?;
            node.check_guard(&guard)?;
            let mut deleted = Vec::new();
            let mut cursor = 0;
            if node.kind == NodeKind::Dir {
                let children = live_descendants(conn, project_id, &node.path)?;
                namespace::check_delete_contents(&path, !children.is_empty(), recursive)?;
                for child in &children {
                    let (info, seq) = tombstone(conn, project_id, child, &meta)?;
                    cursor = cursor.max(seq);
                    deleted.push(info);
                }
            }
            let (info, seq) = tombstone(conn, project_id, &node, &meta)?;
            deleted.insert(0, info);
            Ok(Applied {
                value: deleted,
                cursor: cursor.max(seq),
            })
        })
        .await
    }

    async fn changes(&self, project_id: i64, since: i64, limit: u32) -> StoreResult<(Vec<ChangeEvent>, bool)> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.seq, e.node_id, v.path, e.old_path, v.op, v.number, v.kind, v.hash, v.size, v.mode, v.deleted,
                        v.agent_id, v.created_at
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
        self.write(move |conn| {
            conn.prepare_cached("INSERT OR IGNORE INTO project_blobs (project_id, hash) VALUES (?1, ?2)")?
                .execute(params![project_id, hash.as_str()])?;
            Ok(())
        })
        .await
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

    async fn is_empty(&self) -> StoreResult<bool> {
        self.read(|conn| Ok(!records_io::has_rows(conn)?)).await
    }

    async fn export_records(&self, sink: tokio::sync::mpsc::Sender<records::RecordBatch>) -> StoreResult<()> {
        self.read(move |conn| records_io::export(conn, &sink)).await
    }

    async fn import_records(
        &self,
        source: tokio::sync::mpsc::Receiver<records::RecordBatch>,
        replace: bool,
    ) -> StoreResult<records::ImportCounts> {
        self.write(move |conn| records_io::import(conn, source, replace)).await
    }
}

/// Export and import of plain rows for `contextfs migrate`.
mod records_io {
    use rusqlite::{params, Connection, Row};

    use super::{backend, StoreResult};
    use crate::server::store::records::*;

    type Sink = tokio::sync::mpsc::Sender<RecordBatch>;

    pub fn has_rows(conn: &Connection) -> StoreResult<bool> {
        Ok(conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM projects) OR EXISTS (SELECT 1 FROM tokens) OR EXISTS (SELECT 1 FROM nodes)
                 OR EXISTS (SELECT 1 FROM audit) OR EXISTS (SELECT 1 FROM project_blobs)
                 OR EXISTS (SELECT 1 FROM skills) OR EXISTS (SELECT 1 FROM skill_files)",
            [],
            |r| r.get(0),
        )?)
    }

    /// Streams one table's rows in batches of [`BATCH_ROWS`].
    fn table<T>(
        conn: &Connection,
        sink: &Sink,
        sql: &str,
        map: impl Fn(&Row) -> rusqlite::Result<T>,
        wrap: impl Fn(Vec<T>) -> RecordBatch,
    ) -> StoreResult<()> {
        let send = |rows: Vec<T>| {
            sink.blocking_send(wrap(rows))
                .map_err(|_| backend("the migration stopped reading the export"))
        };
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        let mut buf = Vec::with_capacity(BATCH_ROWS);
        while let Some(r) = rows.next()? {
            buf.push(map(r)?);
            if buf.len() == BATCH_ROWS {
                send(std::mem::replace(&mut buf, Vec::with_capacity(BATCH_ROWS)))?;
            }
        }
        if !buf.is_empty() {
            send(buf)?;
        }
        Ok(())
    }

    pub fn export(conn: &Connection, sink: &Sink) -> StoreResult<()> {
        table(
            conn,
            sink,
            "SELECT key, value FROM meta WHERE key <> 'schema_version' ORDER BY key",
            |r| {
                Ok(MetaRecord {
                    key: r.get(0)?,
                    value: r.get(1)?,
                })
            },
            RecordBatch::Meta,
        )?;
        table(
            conn,
            sink,
            "SELECT id, name, created_at, cursor FROM projects ORDER BY id",
            |r| {
                Ok(ProjectRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                    cursor: r.get(3)?,
                })
            },
            RecordBatch::Projects,
        )?;
        table(
            conn,
            sink,
            "SELECT id, secret_hash, project_id, access, label, created_at, revoked_at FROM tokens ORDER BY id",
            |r| {
                Ok(TokenRecord {
                    id: r.get(0)?,
                    secret_hash: r.get(1)?,
                    project_id: r.get(2)?,
                    access: r.get(3)?,
                    label: r.get(4)?,
                    created_at: r.get(5)?,
                    revoked_at: r.get(6)?,
                })
            },
            RecordBatch::Tokens,
        )?;
        table(
            conn,
            sink,
            "SELECT id, project_id, path, kind, deleted, head, deleted_at FROM nodes ORDER BY id",
            |r| {
                Ok(NodeRecord {
                    id: r.get(0)?,
                    project_id: r.get(1)?,
                    path: r.get(2)?,
                    kind: r.get(3)?,
                    deleted: r.get(4)?,
                    head: r.get(5)?,
                    deleted_at: r.get(6)?,
                })
            },
            RecordBatch::Nodes,
        )?;
        table(
            conn,
            sink,
            "SELECT node_id, number, project_id, path, kind, mode, hash, size, op, status, deleted, parent, author,
                    agent_id, message, created_at, idempotency_key
             FROM versions ORDER BY node_id, number",
            |r| {
                Ok(VersionRecord {
                    node_id: r.get(0)?,
                    number: r.get(1)?,
                    project_id: r.get(2)?,
                    path: r.get(3)?,
                    kind: r.get(4)?,
                    mode: r.get(5)?,
                    hash: r.get(6)?,
                    size: r.get(7)?,
                    op: r.get(8)?,
                    status: r.get(9)?,
                    deleted: r.get(10)?,
                    parent: r.get(11)?,
                    author: r.get(12)?,
                    agent_id: r.get(13)?,
                    message: r.get(14)?,
                    created_at: r.get(15)?,
                    idempotency_key: r.get(16)?,
                })
            },
            RecordBatch::Versions,
        )?;
        table(
            conn,
            sink,
            "SELECT project_id, seq, node_id, version, old_path FROM events ORDER BY project_id, seq",
            |r| {
                Ok(EventRecord {
                    project_id: r.get(0)?,
                    seq: r.get(1)?,
                    node_id: r.get(2)?,
                    version: r.get(3)?,
                    old_path: r.get(4)?,
                })
            },
            RecordBatch::Events,
        )?;
        table(
            conn,
            sink,
            "SELECT id, project_id, created_at, actor, agent_id, action, path, version, status, detail
             FROM audit ORDER BY id",
            |r| {
                let id: i64 = r.get(0)?;
                let project_id: Option<i64> = r.get(1)?;
                Ok(AuditRecord {
                    id,
                    project_id,
                    // the audit API pages by the row id here
                    seq: project_id.map(|_| id),
                    created_at: r.get(2)?,
                    actor: r.get(3)?,
                    agent_id: r.get(4)?,
                    action: r.get(5)?,
                    path: r.get(6)?,
                    version: r.get(7)?,
                    status: r.get(8)?,
                    detail: r.get(9)?,
                })
            },
            RecordBatch::Audit,
        )?;
        table(
            conn,
            sink,
            "SELECT project_id, hash FROM project_blobs ORDER BY project_id, hash",
            |r| {
                Ok(ProjectBlobRecord {
                    project_id: r.get(0)?,
                    hash: r.get(1)?,
                })
            },
            RecordBatch::ProjectBlobs,
        )?;
        table(
            conn,
            sink,
            "SELECT name, description FROM skills ORDER BY name",
            |r| {
                Ok(SkillRecord {
                    name: r.get(0)?,
                    description: r.get(1)?,
                })
            },
            RecordBatch::Skills,
        )?;
        table(
            conn,
            sink,
            "SELECT path, skill, hash, size, mode FROM skill_files ORDER BY path",
            |r| {
                Ok(SkillFileRecord {
                    path: r.get(0)?,
                    skill: r.get(1)?,
                    hash: r.get(2)?,
                    size: r.get(3)?,
                    mode: r.get(4)?,
                })
            },
            RecordBatch::SkillFiles,
        )?;
        sink.blocking_send(RecordBatch::End)
            .map_err(|_| backend("the migration stopped reading the export"))
    }

    pub fn import(
        conn: &Connection,
        mut source: tokio::sync::mpsc::Receiver<RecordBatch>,
        replace: bool,
    ) -> StoreResult<ImportCounts> {
        if replace {
            conn.execute_batch(
                "DELETE FROM skill_files; DELETE FROM skills; DELETE FROM project_blobs; DELETE FROM audit;
                 DELETE FROM events; DELETE FROM versions; DELETE FROM nodes; DELETE FROM tokens;
                 DELETE FROM projects; DELETE FROM meta WHERE key <> 'schema_version';",
            )?;
        }
        let mut counts = ImportCounts::default();
        loop {
            let Some(batch) = source.blocking_recv() else {
                return Err(backend("the export stopped before its end; nothing was imported"));
            };
            counts.add(&batch);
            batch.validate()?;
            match batch {
                RecordBatch::End => break,
                RecordBatch::Meta(rows) => {
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    )?;
                    for r in rows.iter().filter(|r| r.key != "schema_version") {
                        stmt.execute(params![r.key, r.value])?;
                    }
                }
                RecordBatch::Projects(rows) => {
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO projects (id, name, created_at, cursor) VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    for r in rows {
                        stmt.execute(params![r.id, r.name, r.created_at, r.cursor])?;
                    }
                }
                RecordBatch::Tokens(rows) => {
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO tokens (id, secret_hash, project_id, access, label, created_at, revoked_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    for r in rows {
                        stmt.execute(params![
                            r.id,
                            r.secret_hash,
                            r.project_id,
                            r.access,
                            r.label,
                            r.created_at,
                            r.revoked_at
                        ])?;
                    }
                }
                RecordBatch::Nodes(rows) => {
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO nodes (id, project_id, path, kind, deleted, head, deleted_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    for r in rows {
                        stmt.execute(params![
                            r.id,
                            r.project_id,
                            r.path,
                            r.kind,
                            r.deleted,
                            r.head,
                            r.deleted_at
                        ])?;
                    }
                }
                RecordBatch::Versions(rows) => {
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO versions (node_id, number, project_id, path, kind, mode, hash, size, op, status,
                                               deleted, parent, author, agent_id, message, created_at, idempotency_key)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                    )?;
                    for r in rows {
                        stmt.execute(params![
                            r.node_id,
                            r.number,
                            r.project_id,
                            r.path,
                            r.kind,
                            r.mode,
                            r.hash,
                            r.size,
                            r.op,
                            r.status,
                            r.deleted,
                            r.parent,
                            r.author,
                            r.agent_id,
                            r.message,
                            r.created_at,
                            r.idempotency_key
                        ])?;
                    }
                }
                RecordBatch::Events(rows) => {
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO events (project_id, seq, node_id, version, old_path) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?;
                    for r in rows {
                        stmt.execute(params![r.project_id, r.seq, r.node_id, r.version, r.old_path])?;
                    }
                }
                RecordBatch::Audit(rows) => {
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO audit (id, project_id, created_at, actor, agent_id, action, path, version, status,
                                            detail)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?;
                    for r in rows {
                        stmt.execute(params![
                            r.id,
                            r.project_id,
                            r.created_at,
                            r.actor,
                            r.agent_id,
                            r.action,
                            r.path,
                            r.version,
                            r.status,
                            r.detail
                        ])?;
                    }
                }
                RecordBatch::ProjectBlobs(rows) => {
                    let mut stmt =
                        conn.prepare_cached("INSERT OR IGNORE INTO project_blobs (project_id, hash) VALUES (?1, ?2)")?;
                    for r in rows {
                        stmt.execute(params![r.project_id, r.hash])?;
                    }
                }
                RecordBatch::Skills(rows) => {
                    let mut stmt = conn.prepare_cached("INSERT INTO skills (name, description) VALUES (?1, ?2)")?;
                    for r in rows {
                        stmt.execute(params![r.name, r.description])?;
                    }
                }
                RecordBatch::SkillFiles(rows) => {
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO skill_files (path, skill, hash, size, mode) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?;
                    for r in rows {
                        stmt.execute(params![r.path, r.skill, r.hash, r.size, r.mode])?;
                    }
                }
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// A writer connection on a fresh database with one table, and its path.
    fn writer(dir: &tempfile::TempDir) -> (Connection, std::path::PathBuf) {
        let path = dir.path().join("meta.db");
        let conn = open_connection(&path).expect("open the database");
        conn.execute_batch("CREATE TABLE t (x TEXT NOT NULL)")
            .expect("create a table");
        (conn, path)
    }

    /// A job inserting `x` into `t` (and noting that it ran), and the channel
    /// its caller would await.
    fn insert_job(
        x: &'static str,
        ran: Arc<AtomicBool>,
        before: impl FnOnce(&Connection) + Send + 'static,
    ) -> (Box<dyn Job>, tokio::sync::oneshot::Receiver<StoreResult<()>>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let work = move |conn: &Connection| {
            ran.store(true, Ordering::SeqCst);
            before(conn);
            conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
            Ok(())
        };
        (Box::new(Request { work, reply }), rx)
    }

    fn rows(path: &Path) -> Vec<String> {
        let conn = open_connection(path).expect("open a reader");
        let mut stmt = conn.prepare("SELECT x FROM t ORDER BY x").expect("prepare");
        let rows = stmt.query_map([], |r| r.get(0)).expect("query");
        rows.collect::<Result<_, _>>().expect("read rows")
    }

    #[test]
    fn a_batch_that_cannot_begin_runs_none_of_its_jobs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (conn, path) = writer(&dir);
        conn.busy_timeout(Duration::ZERO).expect("busy timeout");
        // Another connection holds the write lock, so BEGIN IMMEDIATE fails.
        let blocker = open_connection(&path).expect("open a second connection");
        blocker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
        // Were the job run anyway (outside any transaction), it would free the
        // lock and its insert would autocommit.
        let ran = Arc::new(AtomicBool::new(false));
        let (job, mut reply) = insert_job("a", ran.clone(), move |_| {
            blocker.execute_batch("ROLLBACK").expect("release the write lock");
        });
        run_batch(&conn, vec![job]);
        assert!(
            !ran.load(Ordering::SeqCst),
            "the job ran although its batch never began"
        );
        match reply.try_recv() {
            Ok(Err(StoreError::Backend(e))) => assert!(e.contains("cannot begin a transaction"), "{e}"),
            other => panic!("expected a backend error, got {other:?}"),
        }
        // The abandoned job (and the blocker it held) is gone: the database is unchanged.
        assert!(rows(&path).is_empty());
    }

    /// Denies `SAVEPOINT ...` (not RELEASE or ROLLBACK TO) on the connection
    /// it is installed on.
    unsafe extern "C" fn deny_savepoints(
        _: *mut std::os::raw::c_void,
        action: std::os::raw::c_int,
        operation: *const std::os::raw::c_char,
        _: *const std::os::raw::c_char,
        _: *const std::os::raw::c_char,
        _: *const std::os::raw::c_char,
    ) -> std::os::raw::c_int {
        let begins = !operation.is_null() && std::ffi::CStr::from_ptr(operation).to_bytes() == b"BEGIN";
        if action == rusqlite::ffi::SQLITE_SAVEPOINT && begins {
            rusqlite::ffi::SQLITE_DENY
        } else {
            rusqlite::ffi::SQLITE_OK
        }
    }

    #[test]
    fn a_job_whose_savepoint_fails_is_not_run() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (conn, path) = writer(&dir);
        // The first job succeeds, then makes every later SAVEPOINT fail
        // (SQLITE_AUTH) through an authorizer on the writer's connection.
        let (first_ran, second_ran) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (first, mut first_reply) = insert_job("a", first_ran.clone(), |conn| {
            // SAFETY: the handle is the live connection the job runs on, and
            // the callback is a plain function that reads only its arguments.
            let rc = unsafe {
                rusqlite::ffi::sqlite3_set_authorizer(conn.handle(), Some(deny_savepoints), std::ptr::null_mut())
            };
            assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        });
        let (second, mut second_reply) = insert_job("b", second_ran.clone(), |_| {});
        run_batch(&conn, vec![first, second]);
        assert!(first_ran.load(Ordering::SeqCst));
        assert!(matches!(first_reply.try_recv(), Ok(Ok(()))));
        assert!(!second_ran.load(Ordering::SeqCst), "the job ran without its savepoint");
        match second_reply.try_recv() {
            Ok(Err(StoreError::Backend(e))) => assert!(e.contains("savepoint"), "{e}"),
            other => panic!("expected a backend error, got {other:?}"),
        }
        assert_eq!(rows(&path), ["a"]);
    }
}
