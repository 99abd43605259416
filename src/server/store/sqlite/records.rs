//! Export and import of plain rows for `contextfs migrate` (see
//! [`records`](crate::server::store::records)), for [`SqliteStore`](super::SqliteStore).

use rusqlite::{params, Connection, Row};

use crate::server::store::records::*;
use crate::server::store::{backend, StoreResult};

type Sink = tokio::sync::mpsc::Sender<RecordBatch>;

pub(super) fn has_rows(conn: &Connection) -> StoreResult<bool> {
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

pub(super) fn export(conn: &Connection, sink: &Sink) -> StoreResult<()> {
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
                agent_id, message, created_at, idempotency_key, mtime, atime
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
                mtime: r.get(17)?,
                atime: r.get(18)?,
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
    table(
        conn,
        sink,
        "SELECT project_id, keep_days, keep_versions FROM retention ORDER BY project_id",
        |r| {
            Ok(RetentionRecord {
                project_id: r.get(0)?,
                keep_days: r.get(1)?,
                keep_versions: r.get(2)?,
            })
        },
        RecordBatch::Retention,
    )?;
    table(
        conn,
        sink,
        "SELECT node_id, namespace, name, prefix, xml FROM dav_props ORDER BY node_id, namespace, name",
        |r| {
            Ok(DavPropRecord {
                node_id: r.get(0)?,
                namespace: r.get(1)?,
                name: r.get(2)?,
                prefix: r.get(3)?,
                xml: r.get(4)?,
            })
        },
        RecordBatch::DavProps,
    )?;
    table(
        conn,
        sink,
        "SELECT hash, size, chunks, created_at FROM manifests ORDER BY hash",
        |r| {
            Ok(ManifestRecord {
                hash: r.get(0)?,
                size: r.get(1)?,
                chunks: r.get(2)?,
                created_at: r.get(3)?,
            })
        },
        RecordBatch::Manifests,
    )?;
    sink.blocking_send(RecordBatch::End)
        .map_err(|_| backend("the migration stopped reading the export"))
}

pub(super) fn import(
    conn: &Connection,
    mut source: tokio::sync::mpsc::Receiver<RecordBatch>,
    replace: bool,
) -> StoreResult<ImportCounts> {
    if replace {
        conn.execute_batch(
            "DELETE FROM manifest_chunks; DELETE FROM manifests; DELETE FROM dav_props; DELETE FROM dav_locks; DELETE FROM retention; DELETE FROM skill_files; DELETE FROM skills; DELETE FROM project_blobs; DELETE FROM audit;
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
                let mut stmt =
                    conn.prepare_cached("INSERT INTO projects (id, name, created_at, cursor) VALUES (?1, ?2, ?3, ?4)")?;
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
                                           deleted, parent, author, agent_id, message, created_at, idempotency_key,
                                           mtime, atime)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
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
                        r.idempotency_key,
                        r.mtime,
                        r.atime
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
            RecordBatch::Retention(rows) => {
                let mut stmt = conn.prepare_cached(
                    "INSERT INTO retention (project_id, keep_days, keep_versions) VALUES (?1, ?2, ?3)",
                )?;
                for r in rows {
                    stmt.execute(params![r.project_id, r.keep_days, r.keep_versions])?;
                }
            }
            RecordBatch::DavProps(rows) => {
                let mut stmt = conn.prepare_cached(
                    "INSERT INTO dav_props (node_id, namespace, name, prefix, xml) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for r in rows {
                    stmt.execute(params![r.node_id, r.namespace, r.name, r.prefix, r.xml])?;
                }
            }
            RecordBatch::Manifests(rows) => {
                let mut manifest = conn
                    .prepare_cached("INSERT INTO manifests (hash, size, chunks, created_at) VALUES (?1, ?2, ?3, ?4)")?;
                let mut chunk = conn.prepare_cached(
                    "INSERT INTO manifest_chunks (chunk, manifest) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )?;
                for r in rows {
                    manifest.execute(params![r.hash, r.size, r.chunks, r.created_at])?;
                    for c in r.chunk_hashes() {
                        chunk.execute(params![c, r.hash])?;
                    }
                }
            }
        }
    }
    Ok(counts)
}
