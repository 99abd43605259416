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
use tokio_postgres::{IsolationLevel, Row};

use super::{backend, describe, PostgresStore};
use crate::server::store::records::*;
use crate::server::store::{StoreError, StoreResult};

fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| backend(format!("{what}: {}", describe(&e)))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, idx: usize) -> StoreResult<T> {
    row.try_get(idx)
        .map_err(|e| backend(format!("unexpected value in column {idx}: {e}")))
}

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
        .map_err(pg("cannot inspect the database"))?;
    Ok(!get::<bool>(&row, 0)?)
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
    let stmt = tx.prepare(sql).await.map_err(pg("cannot export"))?;
    let portal = tx.bind(&stmt, &[]).await.map_err(pg("cannot export"))?;
    loop {
        let rows = tx
            .query_portal(&portal, BATCH_ROWS as i32)
            .await
            .map_err(pg("cannot export"))?;
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
    let tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg("cannot start the export"))?;
    let s = &sink;
    table(
        &tx,
        s,
        "SELECT key, value FROM meta ORDER BY key",
        |r| {
            Ok(MetaRecord {
                key: get(r, 0)?,
                value: get(r, 1)?,
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
                id: get(r, 0)?,
                name: get(r, 1)?,
                created_at: get(r, 2)?,
                cursor: get(r, 3)?,
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
                id: get(r, 0)?,
                secret_hash: get(r, 1)?,
                project_id: get(r, 2)?,
                access: get(r, 3)?,
                label: get(r, 4)?,
                created_at: get(r, 5)?,
                revoked_at: get(r, 6)?,
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
                id: get(r, 0)?,
                project_id: get(r, 1)?,
                path: get(r, 2)?,
                kind: get(r, 3)?,
                deleted: get(r, 4)?,
                head: get(r, 5)?,
                deleted_at: get(r, 6)?,
            })
        },
        RecordBatch::Nodes,
    )
    .await?;
    table(
        &tx,
        s,
        "SELECT node_id, number, project_id, path, kind, mode, hash, size, op, status, deleted, parent, author,
                agent_id, message, created_at, idempotency_key
         FROM versions ORDER BY node_id, number",
        |r| {
            Ok(VersionRecord {
                node_id: get(r, 0)?,
                number: get(r, 1)?,
                project_id: get(r, 2)?,
                path: get(r, 3)?,
                kind: get(r, 4)?,
                mode: get(r, 5)?,
                hash: get(r, 6)?,
                size: get(r, 7)?,
                op: get(r, 8)?,
                status: get(r, 9)?,
                deleted: get(r, 10)?,
                parent: get(r, 11)?,
                author: get(r, 12)?,
                agent_id: get(r, 13)?,
                message: get(r, 14)?,
                created_at: get(r, 15)?,
                idempotency_key: get(r, 16)?,
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
                project_id: get(r, 0)?,
                seq: get(r, 1)?,
                node_id: get(r, 2)?,
                version: get(r, 3)?,
                old_path: get(r, 4)?,
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
                id: get(r, 0)?,
                project_id: get(r, 1)?,
                seq: get(r, 2)?,
                created_at: get(r, 3)?,
                actor: get(r, 4)?,
                agent_id: get(r, 5)?,
                action: get(r, 6)?,
                path: get(r, 7)?,
                version: get(r, 8)?,
                status: get(r, 9)?,
                detail: get(r, 10)?,
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
                project_id: get(r, 0)?,
                hash: get(r, 1)?,
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
                name: get(r, 0)?,
                description: get(r, 1)?,
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
                path: get(r, 0)?,
                skill: get(r, 1)?,
                hash: get(r, 2)?,
                size: get(r, 3)?,
                mode: get(r, 4)?,
            })
        },
        RecordBatch::SkillFiles,
    )
    .await?;
    tx.commit().await.map_err(pg("cannot finish the export"))?;
    sink.send(RecordBatch::End)
        .await
        .map_err(|_| backend("the migration stopped reading the export"))
}

fn col<T, U>(rows: &[T], f: impl Fn(&T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

async fn insert(tx: &deadpool_postgres::Transaction<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<()> {
    tx.execute(sql, params).await.map_err(pg("cannot import"))?;
    Ok(())
}

pub(super) async fn import(
    store: &PostgresStore,
    mut source: tokio::sync::mpsc::Receiver<RecordBatch>,
    replace: bool,
) -> StoreResult<ImportCounts> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(pg("cannot start the import"))?;
    if replace {
        tx.batch_execute(
            "TRUNCATE skill_files, skills, project_blobs, audit, events, versions, nodes, tokens, projects;
             DELETE FROM meta;",
        )
        .await
        .map_err(pg("cannot empty the target"))?;
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
                    &[&col(&rows, |r| r.key.clone()), &col(&rows, |r| r.value.clone())],
                )
                .await?;
            }
            RecordBatch::Projects(rows) => {
                insert(
                    &tx,
                    "INSERT INTO projects (id, name, created_at, cursor)
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[])",
                    &[
                        &col(&rows, |r| r.id),
                        &col(&rows, |r| r.name.clone()),
                        &col(&rows, |r| r.created_at),
                        &col(&rows, |r| r.cursor),
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
                        &col(&rows, |r| r.id.clone()),
                        &col(&rows, |r| r.secret_hash.clone()),
                        &col(&rows, |r| r.project_id),
                        &col(&rows, |r| r.access.clone()),
                        &col(&rows, |r| r.label.clone()),
                        &col(&rows, |r| r.created_at),
                        &col(&rows, |r| r.revoked_at),
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
                        &col(&rows, |r| r.id),
                        &col(&rows, |r| r.project_id),
                        &col(&rows, |r| r.path.clone()),
                        &col(&rows, |r| r.kind.clone()),
                        &col(&rows, |r| r.deleted),
                        &col(&rows, |r| r.head),
                        &col(&rows, |r| r.deleted_at),
                    ],
                )
                .await?;
            }
            RecordBatch::Versions(rows) => {
                insert(
                    &tx,
                    "INSERT INTO versions (node_id, number, project_id, path, kind, mode, hash, size, op, status,
                                           deleted, parent, author, agent_id, message, created_at, idempotency_key)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                                          $6::bigint[], $7::text[], $8::bigint[], $9::text[], $10::text[],
                                          $11::bool[], $12::bigint[], $13::text[], $14::text[], $15::text[],
                                          $16::bigint[], $17::text[])",
                    &[
                        &col(&rows, |r| r.node_id),
                        &col(&rows, |r| r.number),
                        &col(&rows, |r| r.project_id),
                        &col(&rows, |r| r.path.clone()),
                        &col(&rows, |r| r.kind.clone()),
                        &col(&rows, |r| r.mode),
                        &col(&rows, |r| r.hash.clone()),
                        &col(&rows, |r| r.size),
                        &col(&rows, |r| r.op.clone()),
                        &col(&rows, |r| r.status.clone()),
                        &col(&rows, |r| r.deleted),
                        &col(&rows, |r| r.parent),
                        &col(&rows, |r| r.author.clone()),
                        &col(&rows, |r| r.agent_id.clone()),
                        &col(&rows, |r| r.message.clone()),
                        &col(&rows, |r| r.created_at),
                        &col(&rows, |r| r.idempotency_key.clone()),
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
                        &col(&rows, |r| r.project_id),
                        &col(&rows, |r| r.seq),
                        &col(&rows, |r| r.node_id),
                        &col(&rows, |r| r.version),
                        &col(&rows, |r| r.old_path.clone()),
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
                        &col(&rows, |r| r.id),
                        &col(&rows, |r| r.project_id),
                        // a row of a project always has its number
                        &col(&rows, |r| r.seq.or(r.project_id.map(|_| r.id))),
                        &col(&rows, |r| r.created_at),
                        &col(&rows, |r| r.actor.clone()),
                        &col(&rows, |r| r.agent_id.clone()),
                        &col(&rows, |r| r.action.clone()),
                        &col(&rows, |r| r.path.clone()),
                        &col(&rows, |r| r.version),
                        &col(&rows, |r| r.status.clone()),
                        &col(&rows, |r| r.detail.clone()),
                    ],
                )
                .await?;
            }
            RecordBatch::ProjectBlobs(rows) => {
                insert(
                    &tx,
                    "INSERT INTO project_blobs (project_id, hash)
                     SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING",
                    &[&col(&rows, |r| r.project_id), &col(&rows, |r| r.hash.clone())],
                )
                .await?;
            }
            RecordBatch::Skills(rows) => {
                insert(
                    &tx,
                    "INSERT INTO skills (name, description) SELECT * FROM unnest($1::text[], $2::text[])",
                    &[&col(&rows, |r| r.name.clone()), &col(&rows, |r| r.description.clone())],
                )
                .await?;
            }
            RecordBatch::SkillFiles(rows) => {
                insert(
                    &tx,
                    "INSERT INTO skill_files (path, skill, hash, size, mode)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])",
                    &[
                        &col(&rows, |r| r.path.clone()),
                        &col(&rows, |r| r.skill.clone()),
                        &col(&rows, |r| r.hash.clone()),
                        &col(&rows, |r| r.size),
                        &col(&rows, |r| r.mode),
                    ],
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
    .map_err(pg("cannot move the id sequences past the imported rows"))?;
    tx.commit().await.map_err(pg("cannot commit the import"))?;
    Ok(counts)
}
