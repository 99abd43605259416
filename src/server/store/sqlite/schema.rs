//! The SQLite schema and opening a database: WAL mode, `synchronous=FULL`,
//! the schema version check and an integrity check.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::server::store::{backend, StoreResult};

/// 2: versions carry the file times their writer set (`mtime`, `atime`).
/// 3: operations: retention policies, when a project last uploaded each
/// blob (`project_blobs.used_at`, for garbage collection), indexes by hash.
/// 4: WebDAV locks and dead properties (`dav_locks`, `dav_props`).
/// 5: chunked content (`manifests`, `manifest_chunks`).
const SCHEMA_VERSION: i64 = 6;

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
    mtime INTEGER,
    atime INTEGER,
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
    used_at INTEGER,
    PRIMARY KEY (project_id, hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS project_blobs_hash ON project_blobs(hash);
CREATE INDEX IF NOT EXISTS versions_hash ON versions(hash);
CREATE TABLE IF NOT EXISTS retention (
    project_id INTEGER PRIMARY KEY,
    keep_days INTEGER,
    keep_versions INTEGER
);
CREATE TABLE IF NOT EXISTS dav_locks (
    token TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    principal TEXT,
    owner_xml TEXT,
    deep INTEGER NOT NULL,
    shared INTEGER NOT NULL,
    timeout_secs INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dav_locks_project ON dav_locks(project_id, expires_at);
CREATE TABLE IF NOT EXISTS dav_props (
    node_id INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    prefix TEXT,
    xml BLOB NOT NULL,
    PRIMARY KEY (node_id, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    chunks BLOB NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifest_chunks (
    chunk TEXT NOT NULL,
    manifest TEXT NOT NULL,
    PRIMARY KEY (chunk, manifest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifest_chunks_manifest ON manifest_chunks(manifest);
CREATE TABLE IF NOT EXISTS unsynced_blobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL,
    data BLOB NOT NULL
);
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

/// One connection to the database at `path` (the writer's or a reader's).
pub(super) fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // temp_store = MEMORY: every entry of a batch runs in its own savepoint,
    // whose statement journal SQLite otherwise writes to a temporary file
    // (perf: a tenth of the server's CPU under a batch of small commits).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

/// Brings a database written by an older build up to [`SCHEMA_VERSION`],
/// one step at a time; a newer one is refused.
fn upgrade(conn: &Connection, path: &Path, found: &str) -> StoreResult<()> {
    let mut version: i64 = found
        .parse()
        .map_err(|_| backend(format!("database schema version {found:?} is not a number")))?;
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return Err(backend(format!(
            "database schema version {found} is not supported by this build (expects {SCHEMA_VERSION})"
        )));
    }
    // Version 1 predates file times: its versions keep the commit time
    // as their mtime (NULL columns).
    if version == 1 {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             ALTER TABLE versions ADD COLUMN mtime INTEGER;
             ALTER TABLE versions ADD COLUMN atime INTEGER;
             UPDATE meta SET value = '2' WHERE key = 'schema_version';
             COMMIT;",
        )?;
        tracing::info!(path = %path.display(), "upgraded the database schema to version 2 (file times)");
        version = 2;
    }
    // Version 2 has no upload times: its blobs count as uploaded long ago,
    // and garbage collection falls back to the blob's own upload time. The
    // new tables and indexes were made by `SCHEMA`.
    if version == 2 {
        let has_used_at = conn
            .prepare("SELECT 1 FROM pragma_table_info('project_blobs') WHERE name = 'used_at'")?
            .exists([])?;
        conn.execute_batch("BEGIN IMMEDIATE;")?;
        if !has_used_at {
            conn.execute_batch("ALTER TABLE project_blobs ADD COLUMN used_at INTEGER;")?;
        }
        conn.execute_batch("UPDATE meta SET value = '3' WHERE key = 'schema_version'; COMMIT;")?;
        tracing::info!(path = %path.display(), "upgraded the database schema to version 3 (retention, blob upload times)");
        version = 3;
    }
    // Version 3 has no WebDAV tables; `SCHEMA` made them, empty.
    if version == 3 {
        conn.execute_batch("UPDATE meta SET value = '4' WHERE key = 'schema_version';")?;
        tracing::info!(path = %path.display(), "upgraded the database schema to version 4 (WebDAV locks and properties)");
        version = 4;
    }
    // Version 4 has no chunked content; `SCHEMA` made its tables, empty.
    if version == 4 {
        conn.execute_batch("UPDATE meta SET value = '5' WHERE key = 'schema_version';")?;
        tracing::info!(path = %path.display(), "upgraded the database schema to version 5 (chunked content)");
        version = 5;
    }
    // Version 5 writes every blob durably at once; `SCHEMA` made the table
    // of copies kept until deferred blobs are synced, empty. (A build that
    // expects version 5 refuses this database: it would not restore them.)
    if version == 5 {
        conn.execute_batch("UPDATE meta SET value = '6' WHERE key = 'schema_version';")?;
        tracing::info!(path = %path.display(), "upgraded the database schema to version 6 (deferred blob sync)");
    }
    Ok(())
}

/// The writer's connection: creates the schema if needed, checks its version
/// and the database's integrity.
pub(super) fn open_database(path: &Path) -> StoreResult<Connection> {
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
        Some(v) => upgrade(&conn, path, &v)?,
    }
    // An integrity check on open turns silent corruption into a loud refusal.
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(backend(format!(
            "database {} failed its integrity check: {check}",
            path.display()
        )));
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by a build before file times (schema 1) opens,
    /// gains the time columns, and keeps its versions with NULL times (the
    /// commit time stands in for them).
    #[test]
    fn a_schema_1_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.db");
        let conn = open_database(&path).expect("new database");
        conn.execute_batch(
            "INSERT INTO projects (id, name, created_at) VALUES (1, 'p', 0);
             INSERT INTO nodes (id, project_id, path, kind, head) VALUES (1, 1, 'a', 'file', 1);
             INSERT INTO versions (node_id, number, project_id, path, kind, mode, hash, size, op, status, deleted,
                                   author, created_at)
             VALUES (1, 1, 1, 'a', 'file', 420, 'h', 0, 'create', 'clean', 0, 'admin', 5);
             ALTER TABLE versions DROP COLUMN mtime;
             ALTER TABLE versions DROP COLUMN atime;
             UPDATE meta SET value = '1' WHERE key = 'schema_version';",
        )
        .expect("make it a schema 1 database");
        drop(conn);

        let conn = open_database(&path).expect("upgraded on open");
        let version: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .expect("schema version");
        assert_eq!(version, SCHEMA_VERSION.to_string());
        let (created, mtime): (i64, Option<i64>) = conn
            .query_row("SELECT created_at, mtime FROM versions WHERE node_id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("the old version is still there");
        assert_eq!((created, mtime), (5, None));
        drop(conn);
        open_database(&path).expect("a second open finds nothing to upgrade");
    }

    /// A schema 2 database (before retention and upload times) gains
    /// `project_blobs.used_at` (NULL for its old rows) and the retention
    /// table, and keeps its rows.
    #[test]
    fn a_schema_2_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.db");
        let conn = open_database(&path).expect("new database");
        conn.execute_batch(
            "INSERT INTO project_blobs (project_id, hash) VALUES (1, 'h');
             ALTER TABLE project_blobs DROP COLUMN used_at;
             DROP TABLE retention;
             UPDATE meta SET value = '2' WHERE key = 'schema_version';",
        )
        .expect("make it a schema 2 database");
        drop(conn);

        let conn = open_database(&path).expect("upgraded on open");
        let version: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .expect("schema version");
        assert_eq!(version, SCHEMA_VERSION.to_string());
        let used_at: Option<i64> = conn
            .query_row("SELECT used_at FROM project_blobs WHERE hash = 'h'", [], |r| r.get(0))
            .expect("the old row is still there");
        assert_eq!(used_at, None);
        conn.execute("INSERT INTO retention (project_id, keep_days) VALUES (1, 7)", [])
            .expect("the retention table exists");
    }

    /// A schema 3 database (before WebDAV kept locks and properties in it)
    /// gains the empty `dav_locks` and `dav_props` tables.
    #[test]
    fn a_schema_3_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.db");
        let conn = open_database(&path).expect("new database");
        conn.execute_batch(
            "DROP TABLE dav_locks;
             DROP TABLE dav_props;
             INSERT INTO projects (id, name, created_at) VALUES (1, 'p', 0);
             UPDATE meta SET value = '3' WHERE key = 'schema_version';",
        )
        .expect("make it a schema 3 database");
        drop(conn);

        let conn = open_database(&path).expect("upgraded on open");
        let version: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .expect("schema version");
        assert_eq!(version, SCHEMA_VERSION.to_string());
        conn.execute(
            "INSERT INTO dav_locks (token, project_id, path, deep, shared, timeout_secs, expires_at)
             VALUES ('t', 1, 'a', 0, 0, 60, 0)",
            [],
        )
        .expect("the lock table exists");
        conn.execute(
            "INSERT INTO dav_props (node_id, namespace, name, xml) VALUES (1, 'urn:x', 'p', x'3c702f3e')",
            [],
        )
        .expect("the property table exists");
    }

    /// A schema 4 database (before chunked content) gains the empty
    /// `manifests` and `manifest_chunks` tables and keeps its rows.
    #[test]
    fn a_schema_4_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.db");
        let conn = open_database(&path).expect("new database");
        conn.execute_batch(
            "DROP TABLE manifests;
             DROP TABLE manifest_chunks;
             INSERT INTO project_blobs (project_id, hash, used_at) VALUES (1, 'h', 5);
             UPDATE meta SET value = '4' WHERE key = 'schema_version';",
        )
        .expect("make it a schema 4 database");
        drop(conn);

        let conn = open_database(&path).expect("upgraded on open");
        let version: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .expect("schema version");
        assert_eq!(version, SCHEMA_VERSION.to_string());
        conn.execute(
            "INSERT INTO manifests (hash, size, chunks, created_at) VALUES ('h', 1, x'00', 0)",
            [],
        )
        .expect("the manifest table exists");
        conn.execute("INSERT INTO manifest_chunks (chunk, manifest) VALUES ('c', 'h')", [])
            .expect("the chunk index exists");
        let used_at: i64 = conn
            .query_row("SELECT used_at FROM project_blobs WHERE hash = 'h'", [], |r| r.get(0))
            .expect("the old row is still there");
        assert_eq!(used_at, 5);
    }

    /// A schema 5 database (every blob synced at once) gains the empty
    /// table of copies kept for deferred blobs.
    #[test]
    fn a_schema_5_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.db");
        let conn = open_database(&path).expect("new database");
        conn.execute_batch(
            "DROP TABLE unsynced_blobs;
             UPDATE meta SET value = '5' WHERE key = 'schema_version';",
        )
        .expect("make it a schema 5 database");
        drop(conn);

        let conn = open_database(&path).expect("upgraded on open");
        let version: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .expect("schema version");
        assert_eq!(version, "6");
        conn.execute("INSERT INTO unsynced_blobs (hash, data) VALUES ('h', x'00')", [])
            .expect("the table exists");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.db");
        let conn = open_database(&path).expect("new database");
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", [])
            .expect("pretend a newer build wrote it");
        drop(conn);
        let err = open_database(&path)
            .expect_err("a newer schema must be refused")
            .to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
