//! Export and import of plain rows for `contextfs migrate` (see
//! [`records`](crate::server::store::records)), for [`PostgresStore`].
//!
//! Export reads one REPEATABLE READ snapshot through portals, a batch at a
//! time. Import writes every batch with one `INSERT ... SELECT FROM unnest(...)`
//! inside ONE transaction that commits only on [`RecordBatch::End`]; then the
//! identity sequences and each project's `audit_seq` are moved past the
//! imported rows so new rows continue the numbering.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::retry::pg_error;
use super::rows::col;
use super::{read_snapshot, PostgresStore};
use crate::server::store::backend;
use crate::server::store::records::*;
use crate::server::store::StoreResult;

pub(super) async fn is_empty(store: &PostgresStore) -> StoreResult<bool> {
    let c = store.client().await?;
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM projects) OR EXISTS (SELECT 1 FROM tokens) OR EXISTS (SELECT 1 FROM nodes)
                 OR EXISTS (SELECT 1 FROM audit) OR EXISTS (SELECT 1 FROM project_blobs)
                 OR EXISTS (SELECT 1 FROM skills) OR EXISTS (SELECT 1 FROM skill_files)",
            &[],
        )
        .await
        .map_err(pg_error("cannot inspect the database"))?;
    Ok(!col::<bool>(&row, 0)?)
}

type Sink = tokio::sync::mpsc::Sender<RecordBatch>;

/// Streams one query's rows in batches through a portal.
async fn table<T>(
    tx: &deadpool_postgres::Transaction<'_>,
    sink: &Sink,
    sql: &str,
    map: impl Fn(&Row) -> StoreResult<T>,
    wrap: impl Fn(Vec<T>) -> RecordBatch,
) -> StoreResult<()> {
    let stmt = tx.prepare(sql).await.map_err(pg_error("cannot export"))?;
    let portal = tx.bind(&stmt, &[]).await.map_err(pg_error("cannot export"))?;
    loop {
        let rows = tx
            .query_portal(&portal, BATCH_ROWS as i32)
            .await
            .map_err(pg_error("cannot export"))?;
        if rows.is_empty() {
            return Ok(());
        }
        let batch = rows.iter().map(&map).collect::<StoreResult<Vec<T>>>()?;
        sink.send(wrap(batch))
            .await
            .map_err(|_| backend("the migration stopped reading the export"))?;
    }
}

pub(super) async fn export(store: &PostgresStore, sink: Sink) -> StoreResult<()> {
    let mut c = store.client().await?;
    let tx = read_snapshot(&mut c)
        .await
        .map_err(pg_error("cannot start the export"))?;
    let s = &sink;
    table(
        &tx,
        s,
        "SELECT key, value FROM meta ORDER BY key",
        |r| {
            Ok(MetaRecord {
                key: col(r, 0)?,
                value: col(r, 1)?,
            })
        },
        RecordBatch::Meta,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT id, name, created_at, cursor FROM projects ORDER BY id",
        |r| {
            Ok(ProjectRecord {
                id: col(r, 0)?,
                name: col(r, 1)?,
                created_at: col(r, 2)?,
                cursor: col(r, 3)?,
            })
        },
        RecordBatch::Projects,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT id, secret_hash, project_id, access, label, created_at, revoked_at FROM tokens ORDER BY id",
        |r| {
            Ok(TokenRecord {
                id: col(r, 0)?,
                secret_hash: col(r, 1)?,
                project_id: col(r, 2)?,
                access: col(r, 3)?,
                label: col(r, 4)?,
                created_at: col(r, 5)?,
                revoked_at: col(r, 6)?,
            })
        },
        RecordBatch::Tokens,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT id, project_id, path, kind, deleted, head, deleted_at FROM nodes ORDER BY id",
        |r| {
            Ok(NodeRecord {
                id: col(r, 0)?,
                project_id: col(r, 1)?,
                path: col(r, 2)?,
                kind: col(r, 3)?,
                deleted: col(r, 4)?,
                head: col(r, 5)?,
                deleted_at: col(r, 6)?,
            })
        },
        RecordBatch::Nodes,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT node_id, number, project_id, path, kind, mode, hash, size, op, status, deleted, parent, author,
                agent_id, message, created_at, idempotency_key, mtime, atime
         FROM versions ORDER BY node_id, number",
        |r| {
            Ok(VersionRecord {
                node_id: col(r, 0)?,
                number: col(r, 1)?,
                project_id: col(r, 2)?,
                path: col(r, 3)?,
                kind: col(r, 4)?,
                mode: col(r, 5)?,
                hash: col(r, 6)?,
                size: col(r, 7)?,
                op: col(r, 8)?,
                status: col(r, 9)?,
                deleted: col(r, 10)?,
                parent: col(r, 11)?,
                author: col(r, 12)?,
                agent_id: col(r, 13)?,
                message: col(r, 14)?,
                created_at: col(r, 15)?,
                idempotency_key: col(r, 16)?,
                mtime: col(r, 17)?,
                atime: col(r, 18)?,
            })
        },
        RecordBatch::Versions,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT project_id, seq, node_id, version, old_path FROM events ORDER BY project_id, seq",
        |r| {
            Ok(EventRecord {
                project_id: col(r, 0)?,
                seq: col(r, 1)?,
                node_id: col(r, 2)?,
                version: col(r, 3)?,
                old_path: col(r, 4)?,
            })
        },
        RecordBatch::Events,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT id, project_id, seq, created_at, actor, agent_id, action, path, version, status, detail
         FROM audit ORDER BY id",
        |r| {
            Ok(AuditRecord {
                id: col(r, 0)?,
                project_id: col(r, 1)?,
                seq: col(r, 2)?,
                created_at: col(r, 3)?,
                actor: col(r, 4)?,
                agent_id: col(r, 5)?,
                action: col(r, 6)?,
                path: col(r, 7)?,
                version: col(r, 8)?,
                status: col(r, 9)?,
                detail: col(r, 10)?,
            })
        },
        RecordBatch::Audit,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT project_id, hash FROM project_blobs ORDER BY project_id, hash",
        |r| {
            Ok(ProjectBlobRecord {
                project_id: col(r, 0)?,
                hash: col(r, 1)?,
            })
        },
        RecordBatch::ProjectBlobs,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT name, description FROM skills ORDER BY name",
        |r| {
            Ok(SkillRecord {
                name: col(r, 0)?,
                description: col(r, 1)?,
            })
        },
        RecordBatch::Skills,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT path, skill, hash, size, mode FROM skill_files ORDER BY path",
        |r| {
            Ok(SkillFileRecord {
                path: col(r, 0)?,
                skill: col(r, 1)?,
                hash: col(r, 2)?,
                size: col(r, 3)?,
                mode: col(r, 4)?,
            })
        },
        RecordBatch::SkillFiles,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT project_id, keep_days, keep_versions FROM retention ORDER BY project_id",
        |r| {
            Ok(RetentionRecord {
                project_id: col(r, 0)?,
                keep_days: col(r, 1)?,
                keep_versions: col(r, 2)?,
            })
        },
        RecordBatch::Retention,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT node_id, namespace, name, prefix, xml FROM dav_props ORDER BY node_id, namespace, name",
        |r| {
            Ok(DavPropRecord {
                node_id: col(r, 0)?,
                namespace: col(r, 1)?,
                name: col(r, 2)?,
                prefix: col(r, 3)?,
                xml: col(r, 4)?,
            })
        },
        RecordBatch::DavProps,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT hash, size, chunks, created_at FROM manifests ORDER BY hash",
        |r| {
            Ok(ManifestRecord {
                hash: col(r, 0)?,
                size: col(r, 1)?,
                chunks: col(r, 2)?,
                created_at: col(r, 3)?,
            })
        },
        RecordBatch::Manifests,
    )
    .await?;
    tx.commit().await.map_err(pg_error("cannot finish the export"))?;
    sink.send(RecordBatch::End)
        .await
        .map_err(|_| backend("the migration stopped reading the export"))
}

/// One column of `rows`, as the array an `unnest(...)` parameter takes.
fn array<T, U>(rows: &[T], f: impl Fn(&T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

async fn insert(tx: &deadpool_postgres::Transaction<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<()> {
    tx.execute(sql, params).await.map_err(pg_error("cannot import"))?;
    Ok(())
}

pub(super) async fn import(
    store: &PostgresStore,
    mut source: tokio::sync::mpsc::Receiver<RecordBatch>,
    replace: bool,
) -> StoreResult<ImportCounts> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(pg_error("cannot start the import"))?;
    if replace {
        tx.batch_execute(
            "TRUNCATE manifest_chunks, manifests, dav_props, dav_locks, retention, skill_files, skills, project_blobs, audit, events, versions, nodes, tokens, projects;
             DELETE FROM meta;",
        )
        .await
        .map_err(pg_error("cannot empty the target"))?;
    }
    let mut counts = ImportCounts::default();
    loop {
        let Some(batch) = source.recv().await else {
            // Dropping `tx` rolls everything back.
            return Err(backend("the export stopped before its end; nothing was imported"));
        };
        counts.add(&batch);
        batch.validate()?;
        match batch {
            RecordBatch::End => break,
            RecordBatch::Meta(rows) => {
                let rows: Vec<_> = rows.into_iter().filter(|r| r.key != "schema_version").collect();
                insert(
                    &tx,
                    "INSERT INTO meta (key, value) SELECT * FROM unnest($1::text[], $2::text[])
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&array(&rows, |r| r.key.clone()), &array(&rows, |r| r.value.clone())],
                )
                .await?;
            }
            RecordBatch::Projects(rows) => {
                insert(
                    &tx,
                    "INSERT INTO projects (id, name, created_at, cursor)
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[])",
                    &[
                        &array(&rows, |r| r.id),
                        &array(&rows, |r| r.name.clone()),
                        &array(&rows, |r| r.created_at),
                        &array(&rows, |r| r.cursor),
                    ],
                )
                .await?;
            }
            RecordBatch::Tokens(rows) => {
                insert(
                    &tx,
                    "INSERT INTO tokens (id, secret_hash, project_id, access, label, created_at, revoked_at)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                                          $6::bigint[], $7::bigint[])",
                    &[
                        &array(&rows, |r| r.id.clone()),
                        &array(&rows, |r| r.secret_hash.clone()),
                        &array(&rows, |r| r.project_id),
                        &array(&rows, |r| r.access.clone()),
                        &array(&rows, |r| r.label.clone()),
                        &array(&rows, |r| r.created_at),
                        &array(&rows, |r| r.revoked_at),
                    ],
                )
                .await?;
            }
            RecordBatch::Nodes(rows) => {
                insert(
                    &tx,
                    "INSERT INTO nodes (id, project_id, path, kind, deleted, head, deleted_at)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bool[],
                                          $6::bigint[], $7::bigint[])",
                    &[
                        &array(&rows, |r| r.id),
                        &array(&rows, |r| r.project_id),
                        &array(&rows, |r| r.path.clone()),
                        &array(&rows, |r| r.kind.clone()),
                        &array(&rows, |r| r.deleted),
                        &array(&rows, |r| r.head),
                        &array(&rows, |r| r.deleted_at),
                    ],
                )
                .await?;
            }
            RecordBatch::Versions(rows) => {
                insert(
                    &tx,
                    "INSERT INTO versions (node_id, number, project_id, path, kind, mode, hash, size, op, status,
                                           deleted, parent, author, agent_id, message, created_at, idempotency_key,
                                           mtime, atime)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                                          $6::bigint[], $7::text[], $8::bigint[], $9::text[], $10::text[],
                                          $11::bool[], $12::bigint[], $13::text[], $14::text[], $15::text[],
                                          $16::bigint[], $17::text[], $18::bigint[], $19::bigint[])",
                    &[
                        &array(&rows, |r| r.node_id),
                        &array(&rows, |r| r.number),
                        &array(&rows, |r| r.project_id),
                        &array(&rows, |r| r.path.clone()),
                        &array(&rows, |r| r.kind.clone()),
                        &array(&rows, |r| r.mode),
                        &array(&rows, |r| r.hash.clone()),
                        &array(&rows, |r| r.size),
                        &array(&rows, |r| r.op.clone()),
                        &array(&rows, |r| r.status.clone()),
                        &array(&rows, |r| r.deleted),
                        &array(&rows, |r| r.parent),
                        &array(&rows, |r| r.author.clone()),
                        &array(&rows, |r| r.agent_id.clone()),
                        &array(&rows, |r| r.message.clone()),
                        &array(&rows, |r| r.created_at),
                        &array(&rows, |r| r.idempotency_key.clone()),
                        &array(&rows, |r| r.mtime),
                        &array(&rows, |r| r.atime),
                    ],
                )
                .await?;
            }
            RecordBatch::Events(rows) => {
                insert(
                    &tx,
                    "INSERT INTO events (project_id, seq, node_id, version, old_path)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[])",
                    &[
                        &array(&rows, |r| r.project_id),
                        &array(&rows, |r| r.seq),
                        &array(&rows, |r| r.node_id),
                        &array(&rows, |r| r.version),
                        &array(&rows, |r| r.old_path.clone()),
                    ],
                )
                .await?;
            }
            RecordBatch::Audit(rows) => {
                insert(
                    &tx,
                    "INSERT INTO audit (id, project_id, seq, created_at, actor, agent_id, action, path, version,
                                        status, detail)
                     OVERRIDING SYSTEM VALUE
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                                          $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[],
                                          $11::text[])",
                    &[
                        &array(&rows, |r| r.id),
                        &array(&rows, |r| r.project_id),
                        // a row of a project always has its number
                        &array(&rows, |r| r.seq.or(r.project_id.map(|_| r.id))),
                        &array(&rows, |r| r.created_at),
                        &array(&rows, |r| r.actor.clone()),
                        &array(&rows, |r| r.agent_id.clone()),
                        &array(&rows, |r| r.action.clone()),
                        &array(&rows, |r| r.path.clone()),
                        &array(&rows, |r| r.version),
                        &array(&rows, |r| r.status.clone()),
                        &array(&rows, |r| r.detail.clone()),
                    ],
                )
                .await?;
            }
            RecordBatch::ProjectBlobs(rows) => {
                insert(
                    &tx,
                    "INSERT INTO project_blobs (project_id, hash)
                     SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING",
                    &[&array(&rows, |r| r.project_id), &array(&rows, |r| r.hash.clone())],
                )
                .await?;
            }
            RecordBatch::Skills(rows) => {
                insert(
                    &tx,
                    "INSERT INTO skills (name, description) SELECT * FROM unnest($1::text[], $2::text[])",
                    &[
                        &array(&rows, |r| r.name.clone()),
                        &array(&rows, |r| r.description.clone()),
                    ],
                )
                .await?;
            }
            RecordBatch::SkillFiles(rows) => {
                insert(
                    &tx,
                    "INSERT INTO skill_files (path, skill, hash, size, mode)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])",
                    &[
                        &array(&rows, |r| r.path.clone()),
                        &array(&rows, |r| r.skill.clone()),
                        &array(&rows, |r| r.hash.clone()),
                        &array(&rows, |r| r.size),
                        &array(&rows, |r| r.mode),
                    ],
                )
                .await?;
            }
            RecordBatch::Retention(rows) => {
                insert(
                    &tx,
                    "INSERT INTO retention (project_id, keep_days, keep_versions)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])",
                    &[
                        &array(&rows, |r| r.project_id),
                        &array(&rows, |r| r.keep_days),
                        &array(&rows, |r| r.keep_versions),
                    ],
                )
                .await?;
            }
            RecordBatch::DavProps(rows) => {
                insert(
                    &tx,
                    "INSERT INTO dav_props (node_id, namespace, name, prefix, xml)
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[])",
                    &[
                        &array(&rows, |r| r.node_id),
                        &array(&rows, |r| r.namespace.clone()),
                        &array(&rows, |r| r.name.clone()),
                        &array(&rows, |r| r.prefix.clone()),
                        &array(&rows, |r| r.xml.clone()),
                    ],
                )
                .await?;
            }
            RecordBatch::Manifests(rows) => {
                insert(
                    &tx,
                    "INSERT INTO manifests (hash, size, chunks, created_at)
                     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bigint[])",
                    &[
                        &array(&rows, |r| r.hash.clone()),
                        &array(&rows, |r| r.size),
                        &array(&rows, |r| r.chunks.clone()),
                        &array(&rows, |r| r.created_at),
                    ],
                )
                .await?;
                let pairs: Vec<(String, String)> = rows
                    .iter()
                    .flat_map(|r| r.chunk_hashes().into_iter().map(|c| (c, r.hash.clone())))
                    .collect();
                insert(
                    &tx,
                    "INSERT INTO manifest_chunks (chunk, manifest)
                     SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
                    &[&array(&pairs, |p| p.0.clone()), &array(&pairs, |p| p.1.clone())],
                )
                .await?;
            }
        }
    }
    // New rows continue after the imported ones.
    tx.batch_execute(
        "UPDATE projects p SET audit_seq = coalesce((SELECT max(a.seq) FROM audit a WHERE a.project_id = p.id), 0);
         SELECT setval(pg_get_serial_sequence('projects', 'id'), coalesce((SELECT max(id) FROM projects), 0) + 1, false);
         SELECT setval(pg_get_serial_sequence('nodes', 'id'), coalesce((SELECT max(id) FROM nodes), 0) + 1, false);
         SELECT setval(pg_get_serial_sequence('audit', 'id'), coalesce((SELECT max(id) FROM audit), 0) + 1, false);",
    )
    .await
    .map_err(pg_error("cannot move the id sequences past the imported rows"))?;
    tx.commit().await.map_err(pg_error("cannot commit the import"))?;
    Ok(counts)
}
