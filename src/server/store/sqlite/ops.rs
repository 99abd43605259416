//! SQLite SQL of the operations queries: retention, pruning, the blob
//! references garbage collection needs, and project activity. The rules are
//! in [`store::ops`](crate::server::store::ops).

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{audit, parse_hash, parse_kind};
use crate::api::{ActivityEntry, RetentionPolicy, VersionOp, VersionStatus};
use crate::model::BlobHash;
use crate::server::store::ops::{age_cutoff, ActivityFilter};
use crate::server::store::{backend, format_time, StoreResult, WriteMeta};

pub(super) fn retention(conn: &Connection, project_id: i64) -> StoreResult<Option<RetentionPolicy>> {
    let row: Option<(Option<i64>, Option<i64>)> = conn
        .prepare_cached("SELECT keep_days, keep_versions FROM retention WHERE project_id = ?1")?
        .query_row([project_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.map(|(days, versions)| RetentionPolicy {
        keep_days: days.map(|d| d as u32),
        keep_versions: versions.map(|n| n as u32),
    }))
}

pub(super) fn set_retention(
    conn: &Connection,
    project_id: i64,
    policy: Option<RetentionPolicy>,
    meta: &WriteMeta,
) -> StoreResult<()> {
    match policy {
        Some(p) => conn.execute(
            "INSERT INTO retention (project_id, keep_days, keep_versions) VALUES (?1, ?2, ?3)
             ON CONFLICT(project_id) DO UPDATE SET keep_days = excluded.keep_days, keep_versions = excluded.keep_versions",
            params![project_id, p.keep_days, p.keep_versions],
        )?,
        None => conn.execute("DELETE FROM retention WHERE project_id = ?1", [project_id])?,
    };
    let detail = policy.map(|p| p.describe()).unwrap_or_else(|| "cleared".into());
    audit(
        conn,
        Some(project_id),
        meta,
        "set_retention",
        None,
        None,
        None,
        Some(&detail),
    )
}

/// The versions the policy lets go, as (node, number).
const PRUNABLE: &str = "
WITH ranked AS (
    SELECT node_id, number, created_at,
           ROW_NUMBER() OVER (PARTITION BY node_id ORDER BY number DESC) AS newest
    FROM versions WHERE project_id = ?1
),
protected AS (
    SELECT id AS node_id, head AS number FROM nodes WHERE project_id = ?1
    UNION
    SELECT m.node_id, m.parent FROM versions m JOIN nodes n ON n.id = m.node_id
    WHERE m.project_id = ?1 AND n.deleted = 0 AND m.status = 'merged' AND m.parent IS NOT NULL
      AND m.number = (SELECT max(number) FROM versions x WHERE x.node_id = m.node_id AND x.status = 'merged')
    UNION
    SELECT w.node_id, w.parent FROM versions w
    JOIN versions l ON l.node_id = w.node_id AND l.number = w.parent
    WHERE w.project_id = ?1 AND w.status = 'lww' AND (?2 IS NULL OR l.created_at >= ?2)
)
SELECT r.node_id, r.number FROM ranked r
WHERE ((?2 IS NOT NULL AND r.created_at < ?2) OR (?3 IS NOT NULL AND r.newest > ?3))
  AND NOT EXISTS (SELECT 1 FROM protected p WHERE p.node_id = r.node_id AND p.number = r.number)";

pub(super) fn prune_versions(
    conn: &Connection,
    project_id: i64,
    policy: RetentionPolicy,
    dry_run: bool,
    meta: &WriteMeta,
) -> StoreResult<u64> {
    if policy.is_empty() {
        return Ok(0);
    }
    let cutoff = age_cutoff(policy.keep_days, meta.now);
    let prunable: Vec<(i64, i64)> = conn
        .prepare_cached(PRUNABLE)?
        .query_map(params![project_id, cutoff, policy.keep_versions], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    if dry_run || prunable.is_empty() {
        return Ok(prunable.len() as u64);
    }
    // Their change-feed events stay: the feed joins versions, so they drop
    // out of it, and a node's later events still carry its current state.
    let mut delete = conn.prepare_cached("DELETE FROM versions WHERE node_id = ?1 AND number = ?2")?;
    for (node, number) in &prunable {
        delete.execute(params![node, number])?;
    }
    let detail = format!("{} versions ({})", prunable.len(), policy.describe());
    audit(conn, Some(project_id), meta, "prune", None, None, None, Some(&detail))?;
    Ok(prunable.len() as u64)
}

pub(super) fn blob_references(conn: &Connection) -> StoreResult<Vec<(BlobHash, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT hash, max(size) FROM versions WHERE kind != 'dir' GROUP BY hash
         UNION ALL SELECT hash, max(size) FROM skill_files GROUP BY hash",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((parse_hash(r.get(0)?)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(super) fn blobs_used_since(conn: &Connection, since: i64) -> StoreResult<Vec<BlobHash>> {
    let mut stmt = conn.prepare("SELECT DISTINCT hash FROM project_blobs WHERE used_at >= ?1")?;
    let rows = stmt
        .query_map([since], |r| parse_hash(r.get(0)?))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Runs on the writer thread, so no commit interleaves: a candidate some
/// version (even a directory's), skill, recent upload or stored manifest
/// (as one of its chunks) holds stays.
pub(super) fn release_blobs(conn: &Connection, candidates: Vec<BlobHash>, cutoff: i64) -> StoreResult<Vec<BlobHash>> {
    let mut held = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM versions WHERE hash = ?1)
             OR EXISTS (SELECT 1 FROM skill_files WHERE hash = ?1)
             OR EXISTS (SELECT 1 FROM project_blobs WHERE hash = ?1 AND used_at >= ?2)
             OR EXISTS (SELECT 1 FROM manifest_chunks WHERE chunk = ?1)",
    )?;
    let mut forget = conn.prepare_cached("DELETE FROM project_blobs WHERE hash = ?1")?;
    let mut released = Vec::new();
    for hash in candidates {
        let is_held: bool = held.query_row(params![hash.as_str(), cutoff], |r| r.get(0))?;
        if !is_held {
            forget.execute([hash.as_str()])?;
            released.push(hash);
        }
    }
    Ok(released)
}

pub(super) fn blob_held(conn: &Connection, hash: &BlobHash) -> StoreResult<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM versions WHERE hash = ?1)
                 OR EXISTS (SELECT 1 FROM skill_files WHERE hash = ?1)
                 OR EXISTS (SELECT 1 FROM project_blobs WHERE hash = ?1)
                 OR EXISTS (SELECT 1 FROM manifest_chunks WHERE chunk = ?1)",
        )?
        .query_row([hash.as_str()], |r| r.get(0))?)
}

pub(super) fn activity(conn: &Connection, project_id: i64, f: &ActivityFilter) -> StoreResult<Vec<ActivityEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.seq, e.node_id, v.number, v.path, e.old_path, v.op, v.status, v.deleted, v.size, v.hash,
                v.author, v.agent_id, v.message, v.created_at, v.kind
         FROM events e JOIN versions v ON v.node_id = e.node_id AND v.number = e.version
         WHERE e.project_id = ?1 AND e.seq < ?2
           AND (?3 IS NULL OR v.agent_id = ?3)
           AND (?4 IS NULL OR v.created_at >= ?4)
           AND (?5 IS NULL OR v.path = ?5 OR (v.path >= ?5 || '/' AND v.path < ?5 || '0'))
         ORDER BY e.seq DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![
            project_id,
            f.before.unwrap_or(i64::MAX),
            f.agent,
            f.since,
            f.path_prefix,
            f.limit as i64
        ],
        |r| {
            Ok((
                (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?),
                (r.get::<_, String>(3)?, r.get::<_, Option<String>>(4)?),
                (r.get::<_, String>(5)?, r.get::<_, String>(6)?, r.get::<_, bool>(7)?),
                (r.get::<_, i64>(8)?, r.get::<_, String>(9)?),
                (
                    r.get::<_, String>(10)?,
                    r.get::<_, Option<String>>(11)?,
                    r.get::<_, Option<String>>(12)?,
                ),
                (r.get::<_, i64>(13)?, r.get::<_, String>(14)?),
            ))
        },
    )?;
    let mut entries = Vec::new();
    for row in rows {
        let (
            (seq, node, version),
            (path, old_path),
            (op, status, deleted),
            (size, hash),
            (author, agent_id, message),
            (at, kind),
        ) = row?;
        entries.push(ActivityEntry {
            seq,
            node,
            version,
            path,
            old_path,
            kind: parse_kind(kind)?,
            op: VersionOp::parse(&op).ok_or_else(|| backend(format!("unknown op {op:?} in the database")))?,
            status: VersionStatus::parse(&status)
                .ok_or_else(|| backend(format!("unknown status {status:?} in the database")))?,
            deleted,
            size: size as u64,
            hash: parse_hash(hash)?,
            author,
            agent_id,
            message,
            at: format_time(at),
        });
    }
    Ok(entries)
}
