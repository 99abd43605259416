//! PostgreSQL rows of WebDAV's locks and dead properties; the rules are in
//! [`store::dav`](crate::server::store::dav). A LOCK takes a transaction
//! advisory lock per project first, so two instances locking paths of the
//! same project check and insert one after the other: the second sees the
//! first's lock and answers 423.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::retry::{write_tx, TxError, TxResult};
use super::rows::col;
use super::PostgresStore;
use crate::server::store::dav::{expires_at, lock_conflict, DavLockRow, DavStore, DeadPropRow};
use crate::server::store::StoreResult;

/// First key of the per-project advisory lock ("dav" + 1); the second is
/// the project id (truncated: a collision only makes two projects wait
/// for each other).
const LOCK_CLASS: i32 = 0x6461_7601;

const LOCK_COLUMNS: &str = "token, path, principal, owner_xml, deep, shared, timeout_secs, expires_at";

fn lock_row(r: &Row) -> StoreResult<DavLockRow> {
    Ok(DavLockRow {
        token: col(r, 0)?,
        path: col(r, 1)?,
        principal: col(r, 2)?,
        owner_xml: col(r, 3)?,
        deep: col(r, 4)?,
        shared: col(r, 5)?,
        timeout_secs: col::<i64>(r, 6)?.max(0) as u64,
        expires_at: col(r, 7)?,
    })
}

async fn live_locks<C: GenericClient>(c: &C, project_id: i64, now: i64) -> TxResult<Vec<DavLockRow>> {
    let rows = c
        .query(
            &format!("SELECT {LOCK_COLUMNS} FROM dav_locks WHERE project_id = $1 AND expires_at > $2 ORDER BY token"),
            &[&project_id, &now],
        )
        .await?;
    Ok(rows.iter().map(lock_row).collect::<StoreResult<Vec<_>>>()?)
}

async fn lock_tx<C: GenericClient>(
    c: &C,
    project_id: i64,
    lock: &DavLockRow,
    now: i64,
) -> TxResult<Result<DavLockRow, DavLockRow>> {
    c.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &(project_id as i32)],
    )
    .await?;
    c.execute(
        "DELETE FROM dav_locks WHERE project_id = $1 AND expires_at <= $2",
        &[&project_id, &now],
    )
    .await?;
    let existing = live_locks(c, project_id, now).await?;
    if let Some(conflict) = lock_conflict(&existing, lock) {
        return Ok(Err(conflict.clone()));
    }
    c.execute(
        "INSERT INTO dav_locks (token, project_id, path, principal, owner_xml, deep, shared, timeout_secs, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &lock.token,
            &project_id,
            &lock.path,
            &lock.principal,
            &lock.owner_xml,
            &lock.deep,
            &lock.shared,
            &(lock.timeout_secs as i64),
            &lock.expires_at,
        ],
    )
    .await?;
    Ok(Ok(lock.clone()))
}

#[async_trait]
impl DavStore for PostgresStore {
    async fn dav_locks(&self, project_id: i64, now: i64) -> StoreResult<Vec<DavLockRow>> {
        let c = self.client().await?;
        Ok(live_locks(&c, project_id, now).await?)
    }

    async fn dav_lock(
        &self,
        project_id: i64,
        lock: DavLockRow,
        now: i64,
    ) -> StoreResult<Result<DavLockRow, DavLockRow>> {
        write_tx!(self, |tx| lock_tx(&tx, project_id, &lock, now).await?)
    }

    async fn dav_refresh(
        &self,
        project_id: i64,
        token: &str,
        timeout_secs: u64,
        now: i64,
    ) -> StoreResult<Option<DavLockRow>> {
        let expires_at = expires_at(now, timeout_secs);
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "UPDATE dav_locks SET timeout_secs = $1, expires_at = $2
                     WHERE project_id = $3 AND token = $4 AND expires_at > $5 RETURNING {LOCK_COLUMNS}"
                ),
                &[&(timeout_secs as i64), &expires_at, &project_id, &token, &now],
            )
            .await
            .map_err(TxError::from)?;
        row.as_ref().map(lock_row).transpose()
    }

    async fn dav_unlock(&self, project_id: i64, tokens: Vec<String>) -> StoreResult<u64> {
        let c = self.client().await?;
        let removed = c
            .execute(
                "DELETE FROM dav_locks WHERE project_id = $1 AND token = ANY($2)",
                &[&project_id, &tokens],
            )
            .await
            .map_err(TxError::from)?;
        Ok(removed)
    }

    async fn dead_props(&self, nodes: Vec<i64>) -> StoreResult<Vec<(i64, DeadPropRow)>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT node_id, namespace, name, prefix, xml FROM dav_props WHERE node_id = ANY($1)
                 ORDER BY node_id, namespace, name",
                &[&nodes],
            )
            .await
            .map_err(TxError::from)?;
        rows.iter()
            .map(|r| {
                Ok((
                    col(r, 0)?,
                    DeadPropRow {
                        namespace: col(r, 1)?,
                        name: col(r, 2)?,
                        prefix: col(r, 3)?,
                        xml: col(r, 4)?,
                    },
                ))
            })
            .collect()
    }

    async fn patch_dead_props(
        &self,
        node: i64,
        set: Vec<DeadPropRow>,
        remove: Vec<(String, String)>,
    ) -> StoreResult<()> {
        write_tx!(self, |tx| {
            for p in &set {
                tx.execute(
                    "INSERT INTO dav_props (node_id, namespace, name, prefix, xml) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (node_id, namespace, name) DO UPDATE SET prefix = excluded.prefix, xml = excluded.xml",
                    &[&node, &p.namespace, &p.name, &p.prefix, &p.xml],
                )
                .await?;
            }
            for (namespace, name) in &remove {
                tx.execute(
                    "DELETE FROM dav_props WHERE node_id = $1 AND namespace = $2 AND name = $3",
                    &[&node, namespace, name],
                )
                .await?;
            }
        })
    }

    async fn drop_dead_props(&self, nodes: Vec<i64>) -> StoreResult<()> {
        if nodes.is_empty() {
            return Ok(());
        }
        let c = self.client().await?;
        c.execute("DELETE FROM dav_props WHERE node_id = ANY($1)", &[&nodes])
            .await
            .map_err(TxError::from)?;
        Ok(())
    }

    async fn copy_dead_props(&self, from: i64, to: i64) -> StoreResult<()> {
        write_tx!(self, |tx| {
            tx.execute("DELETE FROM dav_props WHERE node_id = $1", &[&to]).await?;
            tx.execute(
                "INSERT INTO dav_props (node_id, namespace, name, prefix, xml)
                 SELECT $2, namespace, name, prefix, xml FROM dav_props WHERE node_id = $1",
                &[&from, &to],
            )
            .await?;
        })
    }
}
