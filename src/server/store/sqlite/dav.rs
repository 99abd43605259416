//! SQLite rows of WebDAV's locks and dead properties; the rules are in
//! [`store::dav`](crate::server::store::dav). A LOCK runs on the writer
//! thread, so its conflict check and its insert are one step no other
//! write interleaves with.

use async_trait::async_trait;
use rusqlite::{params, Connection, Row};

use super::SqliteStore;
use crate::server::store::dav::{expires_at, lock_conflict, DavLockRow, DavStore, DeadPropRow};
use crate::server::store::StoreResult;

const LOCK_COLUMNS: &str = "token, path, principal, owner_xml, deep, shared, timeout_secs, expires_at";

fn lock_row(r: &Row) -> rusqlite::Result<DavLockRow> {
    Ok(DavLockRow {
        token: r.get(0)?,
        path: r.get(1)?,
        principal: r.get(2)?,
        owner_xml: r.get(3)?,
        deep: r.get(4)?,
        shared: r.get(5)?,
        timeout_secs: r.get::<_, i64>(6)?.max(0) as u64,
        expires_at: r.get(7)?,
    })
}

fn live_locks(conn: &Connection, project_id: i64, now: i64) -> StoreResult<Vec<DavLockRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {LOCK_COLUMNS} FROM dav_locks WHERE project_id = ?1 AND expires_at > ?2 ORDER BY token"
    ))?;
    let rows = stmt
        .query_map(params![project_id, now], lock_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn lock_tx(
    conn: &Connection,
    project_id: i64,
    lock: DavLockRow,
    now: i64,
) -> StoreResult<Result<DavLockRow, DavLockRow>> {
    conn.execute(
        "DELETE FROM dav_locks WHERE project_id = ?1 AND expires_at <= ?2",
        params![project_id, now],
    )?;
    let existing = live_locks(conn, project_id, now)?;
    if let Some(conflict) = lock_conflict(&existing, &lock) {
        return Ok(Err(conflict.clone()));
    }
    conn.execute(
        "INSERT INTO dav_locks (token, project_id, path, principal, owner_xml, deep, shared, timeout_secs, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            lock.token,
            project_id,
            lock.path,
            lock.principal,
            lock.owner_xml,
            lock.deep,
            lock.shared,
            lock.timeout_secs as i64,
            lock.expires_at
        ],
    )?;
    Ok(Ok(lock))
}

fn prop_row(r: &Row) -> rusqlite::Result<(i64, DeadPropRow)> {
    Ok((
        r.get(0)?,
        DeadPropRow {
            namespace: r.get(1)?,
            name: r.get(2)?,
            prefix: r.get(3)?,
            xml: r.get(4)?,
        },
    ))
}

fn insert_prop(conn: &Connection, node: i64, p: &DeadPropRow) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO dav_props (node_id, namespace, name, prefix, xml) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (node_id, namespace, name) DO UPDATE SET prefix = excluded.prefix, xml = excluded.xml",
        params![node, p.namespace, p.name, p.prefix, p.xml],
    )?;
    Ok(())
}

#[async_trait]
impl DavStore for SqliteStore {
    async fn dav_locks(&self, project_id: i64, now: i64) -> StoreResult<Vec<DavLockRow>> {
        self.read(move |conn| live_locks(conn, project_id, now)).await
    }

    async fn dav_lock(
        &self,
        project_id: i64,
        lock: DavLockRow,
        now: i64,
    ) -> StoreResult<Result<DavLockRow, DavLockRow>> {
        self.write(move |conn| lock_tx(conn, project_id, lock, now)).await
    }

    async fn dav_refresh(
        &self,
        project_id: i64,
        token: &str,
        timeout_secs: u64,
        now: i64,
    ) -> StoreResult<Option<DavLockRow>> {
        let token = token.to_string();
        self.write(move |conn| {
            let expires_at = expires_at(now, timeout_secs);
            let changed = conn.execute(
                "UPDATE dav_locks SET timeout_secs = ?1, expires_at = ?2
                 WHERE project_id = ?3 AND token = ?4 AND expires_at > ?5",
                params![timeout_secs as i64, expires_at, project_id, token, now],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            let mut stmt = conn.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM dav_locks WHERE token = ?1"))?;
            let row = stmt.query_row(params![token], lock_row)?;
            Ok(Some(row))
        })
        .await
    }

    async fn dav_unlock(&self, project_id: i64, tokens: Vec<String>) -> StoreResult<u64> {
        self.write(move |conn| {
            let mut removed = 0;
            for token in &tokens {
                removed += conn.execute(
                    "DELETE FROM dav_locks WHERE project_id = ?1 AND token = ?2",
                    params![project_id, token],
                )? as u64;
            }
            Ok(removed)
        })
        .await
    }

    async fn dead_props(&self, nodes: Vec<i64>) -> StoreResult<Vec<(i64, DeadPropRow)>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT node_id, namespace, name, prefix, xml FROM dav_props WHERE node_id = ?1 ORDER BY namespace, name",
            )?;
            let mut out = Vec::new();
            for node in nodes {
                for row in stmt.query_map(params![node], prop_row)? {
                    out.push(row?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn patch_dead_props(
        &self,
        node: i64,
        set: Vec<DeadPropRow>,
        remove: Vec<(String, String)>,
    ) -> StoreResult<()> {
        self.write(move |conn| {
            for p in &set {
                insert_prop(conn, node, p)?;
            }
            for (namespace, name) in &remove {
                conn.execute(
                    "DELETE FROM dav_props WHERE node_id = ?1 AND namespace = ?2 AND name = ?3",
                    params![node, namespace, name],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn drop_dead_props(&self, nodes: Vec<i64>) -> StoreResult<()> {
        if nodes.is_empty() {
            return Ok(());
        }
        self.write(move |conn| {
            for node in &nodes {
                conn.execute("DELETE FROM dav_props WHERE node_id = ?1", params![node])?;
            }
            Ok(())
        })
        .await
    }

    async fn copy_dead_props(&self, from: i64, to: i64) -> StoreResult<()> {
        self.write(move |conn| {
            conn.execute("DELETE FROM dav_props WHERE node_id = ?1", params![to])?;
            conn.execute(
                "INSERT INTO dav_props (node_id, namespace, name, prefix, xml)
                 SELECT ?2, namespace, name, prefix, xml FROM dav_props WHERE node_id = ?1",
                params![from, to],
            )?;
            Ok(())
        })
        .await
    }
}
