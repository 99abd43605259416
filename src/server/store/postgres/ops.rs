//! PostgreSQL SQL of the operations queries: retention, pruning, the blob
//! references garbage collection needs, and project activity. The rules are
//! in [`store::ops`](crate::server::store::ops).

use std::collections::HashSet;

use deadpool_postgres::GenericClient;

use super::retry::{write_tx, TxError, TxResult};
use super::rows::{audit, col, parse_hash, parse_kind};
use super::PostgresStore;
use crate::api::{ActivityEntry, RetentionPolicy, VersionOp, VersionStatus};
use crate::model::BlobHash;
use crate::server::store::ops::{age_cutoff, ActivityFilter};
use crate::server::store::{backend, format_time, StoreResult, WriteMeta};

/// How many candidates one release transaction looks at.
const RELEASE_BATCH: usize = 1000;

pub(super) async fn retention(store: &PostgresStore, project_id: i64) -> StoreResult<Option<RetentionPolicy>> {
    let c = store.client().await?;
    let row = c
        .query_opt(
            "SELECT keep_days, keep_versions FROM retention WHERE project_id = $1",
            &[&project_id],
        )
        .await
        .map_err(TxError::from)?;
    row.map(|r| {
        Ok(RetentionPolicy {
            keep_days: col::<Option<i64>>(&r, 0)?.map(|d| d as u32),
            keep_versions: col::<Option<i64>>(&r, 1)?.map(|n| n as u32),
        })
    })
    .transpose()
}

async fn set_retention_tx<C: GenericClient>(
    c: &C,
    project_id: i64,
    policy: Option<RetentionPolicy>,
    meta: &WriteMeta,
) -> TxResult<()> {
    match policy {
        Some(p) => {
            let days = p.keep_days.map(i64::from);
            let versions = p.keep_versions.map(i64::from);
            c.execute(
                "INSERT INTO retention (project_id, keep_days, keep_versions) VALUES ($1, $2, $3)
                 ON CONFLICT (project_id) DO UPDATE
                 SET keep_days = excluded.keep_days, keep_versions = excluded.keep_versions",
                &[&project_id, &days, &versions],
            )
            .await?
        }
        None => {
            c.execute("DELETE FROM retention WHERE project_id = $1", &[&project_id])
                .await?
        }
    };
    let detail = policy.map(|p| p.describe()).unwrap_or_else(|| "cleared".into());
    audit(
        c,
        Some(project_id),
        meta,
        "set_retention",
        None,
        None,
        None,
        Some(&detail),
    )
    .await
}

pub(super) async fn set_retention(
    store: &PostgresStore,
    project_id: i64,
    policy: Option<RetentionPolicy>,
    meta: WriteMeta,
) -> StoreResult<()> {
    write_tx!(store, |tx| set_retention_tx(&tx, project_id, policy, &meta).await?)
}

/// The versions the policy lets go, as (node_id, number).
const PRUNABLE: &str = "
WITH ranked AS (
    SELECT node_id, number, created_at,
           ROW_NUMBER() OVER (PARTITION BY node_id ORDER BY number DESC) AS newest
    FROM versions WHERE project_id = $1
),
protected AS (
    SELECT id AS node_id, head AS number FROM nodes WHERE project_id = $1
    UNION
    SELECT m.node_id, m.parent FROM versions m JOIN nodes n ON n.id = m.node_id
    WHERE m.project_id = $1 AND NOT n.deleted AND m.status = 'merged' AND m.parent IS NOT NULL
      AND m.number = (SELECT max(number) FROM versions x WHERE x.node_id = m.node_id AND x.status = 'merged')
    UNION
    SELECT w.node_id, w.parent FROM versions w
    JOIN versions l ON l.node_id = w.node_id AND l.number = w.parent
    WHERE w.project_id = $1 AND w.status = 'lww' AND ($2::bigint IS NULL OR l.created_at >= $2)
),
prunable AS (
    SELECT r.node_id, r.number FROM ranked r
    WHERE (($2::bigint IS NOT NULL AND r.created_at < $2) OR ($3::bigint IS NOT NULL AND r.newest > $3))
      AND NOT EXISTS (SELECT 1 FROM protected p WHERE p.node_id = r.node_id AND p.number = r.number)
)";

async fn prune_tx<C: GenericClient>(
    c: &C,
    project_id: i64,
    policy: RetentionPolicy,
    dry_run: bool,
    meta: &WriteMeta,
) -> TxResult<u64> {
    let cutoff = age_cutoff(policy.keep_days, meta.now);
    let keep = policy.keep_versions.map(i64::from);
    let sql = if dry_run {
        format!("{PRUNABLE} SELECT count(*) FROM prunable")
    } else {
        // Their change-feed events stay: the feed joins versions, so they
        // drop out of it, and a node's later events carry its current state.
        format!(
            "{PRUNABLE}, gone AS (DELETE FROM versions v USING prunable p
                                 WHERE v.node_id = p.node_id AND v.number = p.number RETURNING 1)
             SELECT count(*) FROM gone"
        )
    };
    let count: i64 = col(&c.query_one(&sql, &[&project_id, &cutoff, &keep]).await?, 0)?;
    if !dry_run && count > 0 {
        let detail = format!("{count} versions ({})", policy.describe());
        audit(c, Some(project_id), meta, "prune", None, None, None, Some(&detail)).await?;
    }
    Ok(count as u64)
}

pub(super) async fn prune_versions(
    store: &PostgresStore,
    project_id: i64,
    policy: RetentionPolicy,
    dry_run: bool,
    meta: WriteMeta,
) -> StoreResult<u64> {
    if policy.is_empty() {
        return Ok(0);
    }
    write_tx!(store, |tx| prune_tx(&tx, project_id, policy, dry_run, &meta).await?)
}

pub(super) async fn blob_references(store: &PostgresStore) -> StoreResult<Vec<(BlobHash, u64)>> {
    let c = store.client().await?;
    let rows = c
        .query(
            "SELECT hash, max(size) FROM versions WHERE kind <> 'dir' GROUP BY hash
             UNION ALL SELECT hash, max(size) FROM skill_files GROUP BY hash",
            &[],
        )
        .await
        .map_err(TxError::from)?;
    rows.iter()
        .map(|r| Ok((parse_hash(col(r, 0)?)?, col::<i64>(r, 1)? as u64)))
        .collect()
}

pub(super) async fn blobs_used_since(store: &PostgresStore, since: i64) -> StoreResult<Vec<BlobHash>> {
    let c = store.client().await?;
    let rows = c
        .query("SELECT DISTINCT hash FROM project_blobs WHERE used_at >= $1", &[&since])
        .await
        .map_err(TxError::from)?;
    rows.iter().map(|r| parse_hash(col(r, 0)?)).collect()
}

/// Forgets the projects' records of the candidates nothing holds, then reads
/// again: under READ COMMITTED the second statement sees every transaction
/// that committed meanwhile, so a candidate that gained a version, a skill or
/// an upload after all gets its project rows back. Returns the candidates
/// still held. With `chunks_hold`, a chunk listed by a stored manifest counts
/// as held too (a manifest's own hash is never one).
pub(super) async fn forget_unheld_project_rows<C: GenericClient>(
    c: &C,
    hashes: &[String],
    cutoff: i64,
    chunks_hold: bool,
) -> TxResult<HashSet<String>> {
    let (unlisted, or_listed) = if chunks_hold {
        (
            "AND NOT EXISTS (SELECT 1 FROM manifest_chunks m WHERE m.chunk = p.hash)",
            "UNION SELECT chunk FROM manifest_chunks WHERE chunk = ANY($1)",
        )
    } else {
        ("", "")
    };
    let forgotten = c
        .query(
            &format!(
                "DELETE FROM project_blobs p
                 WHERE p.hash = ANY($1) AND (p.used_at IS NULL OR p.used_at < $2)
                   AND NOT EXISTS (SELECT 1 FROM versions v WHERE v.hash = p.hash)
                   AND NOT EXISTS (SELECT 1 FROM skill_files s WHERE s.hash = p.hash)
                   {unlisted}
                 RETURNING p.project_id, p.hash"
            ),
            &[&hashes, &cutoff],
        )
        .await?;
    let held: HashSet<String> = c
        .query(
            &format!(
                "SELECT hash FROM versions WHERE hash = ANY($1)
                 UNION SELECT hash FROM skill_files WHERE hash = ANY($1)
                 UNION SELECT hash FROM project_blobs WHERE hash = ANY($1)
                 {or_listed}"
            ),
            &[&hashes],
        )
        .await?
        .iter()
        .map(|r| col::<String>(r, 0))
        .collect::<StoreResult<_>>()?;
    for r in &forgotten {
        let (project, hash): (i64, String) = (col(r, 0)?, col(r, 1)?);
        if held.contains(&hash) {
            c.execute(
                "INSERT INTO project_blobs (project_id, hash) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&project, &hash],
            )
            .await?;
        }
    }
    Ok(held)
}

/// Releases the candidates nothing holds (a chunk of a stored manifest is held).
async fn release_tx<C: GenericClient>(c: &C, hashes: &[String], cutoff: i64) -> TxResult<Vec<String>> {
    let held = forget_unheld_project_rows(c, hashes, cutoff, true).await?;
    Ok(hashes.iter().filter(|h| !held.contains(*h)).cloned().collect())
}

pub(super) async fn release_blobs(
    store: &PostgresStore,
    candidates: Vec<BlobHash>,
    cutoff: i64,
) -> StoreResult<Vec<BlobHash>> {
    let mut released = Vec::new();
    for batch in candidates.chunks(RELEASE_BATCH) {
        let hashes: Vec<String> = batch.iter().map(|h| h.as_str().to_string()).collect();
        let freed = write_tx!(store, |tx| release_tx(&tx, &hashes, cutoff).await?)?;
        for h in freed {
            released.push(parse_hash(&h)?);
        }
    }
    Ok(released)
}

pub(super) async fn blob_held(store: &PostgresStore, hash: &BlobHash) -> StoreResult<bool> {
    let c = store.client().await?;
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM versions WHERE hash = $1)
                 OR EXISTS (SELECT 1 FROM skill_files WHERE hash = $1)
                 OR EXISTS (SELECT 1 FROM project_blobs WHERE hash = $1)
                 OR EXISTS (SELECT 1 FROM manifest_chunks WHERE chunk = $1)",
            &[&hash.as_str()],
        )
        .await
        .map_err(TxError::from)?;
    col(&row, 0)
}

pub(super) async fn activity(
    store: &PostgresStore,
    project_id: i64,
    f: &ActivityFilter,
) -> StoreResult<Vec<ActivityEntry>> {
    let c = store.client().await?;
    let before = f.before.unwrap_or(i64::MAX);
    let limit = i64::from(f.limit);
    let rows = c
        .query(
            "SELECT e.seq, e.node_id, v.number, v.path, e.old_path, v.op, v.status, v.deleted, v.size, v.hash,
                    v.author, v.agent_id, v.message, v.created_at, v.kind
             FROM events e JOIN versions v ON v.node_id = e.node_id AND v.number = e.version
             WHERE e.project_id = $1 AND e.seq < $2
               AND ($3::text IS NULL OR v.agent_id = $3)
               AND ($4::bigint IS NULL OR v.created_at >= $4)
               AND ($5::text IS NULL OR v.path = $5
                    OR (v.path >= ($5 || '/') COLLATE \"C\" AND v.path < ($5 || '0') COLLATE \"C\"))
             ORDER BY e.seq DESC LIMIT $6",
            &[&project_id, &before, &f.agent, &f.since, &f.path_prefix, &limit],
        )
        .await
        .map_err(TxError::from)?;
    rows.iter()
        .map(|r| {
            let op: &str = col(r, 5)?;
            let status: &str = col(r, 6)?;
            Ok(ActivityEntry {
                seq: col(r, 0)?,
                node: col(r, 1)?,
                version: col(r, 2)?,
                path: col(r, 3)?,
                old_path: col(r, 4)?,
                kind: parse_kind(col(r, 14)?)?,
                op: VersionOp::parse(op).ok_or_else(|| backend(format!("unknown op {op:?} in the database")))?,
                status: VersionStatus::parse(status)
                    .ok_or_else(|| backend(format!("unknown status {status:?} in the database")))?,
                deleted: col(r, 7)?,
                size: col::<i64>(r, 8)? as u64,
                hash: parse_hash(col(r, 9)?)?,
                author: col(r, 10)?,
                agent_id: col(r, 11)?,
                message: col(r, 12)?,
                at: format_time(col(r, 13)?),
            })
        })
        .collect()
}
