//! PostgreSQL rows of chunked content's manifests; what they mean is in
//! [`store::manifests`](crate::server::store::manifests). A manifest PUT
//! marks its chunks used with an UPDATE that locks their rows, so a garbage
//! collector releasing one of them either committed first (the chunk is
//! gone and nothing is recorded) or sees the fresh use and keeps it.

use std::collections::HashSet;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::retry::{write_tx, TxError, TxResult};
use super::rows::{col, parse_hash, record_blob};
use super::PostgresStore;
use crate::chunks::Manifest;
use crate::model::BlobHash;
use crate::server::store::manifests::{distinct_chunks, encode_chunks, manifest_from_row, ManifestPut, ManifestStore};
use crate::server::store::{now_millis, StoreResult};

fn texts(hashes: &[BlobHash]) -> Vec<String> {
    hashes.iter().map(|h| h.as_str().to_string()).collect()
}

async fn stored_manifests<C: GenericClient>(c: &C, hashes: &[String]) -> TxResult<Vec<Manifest>> {
    let rows = c
        .query(
            "SELECT hash, size, chunks FROM manifests WHERE hash = ANY($1) ORDER BY hash",
            &[&hashes],
        )
        .await?;
    let mut found = Vec::with_capacity(rows.len());
    for r in &rows {
        let hash = parse_hash(col::<&str>(r, 0)?)?;
        found.push(manifest_from_row(hash, col(r, 1)?, col::<&[u8]>(r, 2)?)?);
    }
    Ok(found)
}

async fn insert_chunk_rows<C: GenericClient>(c: &C, manifest: &BlobHash, chunks: &[BlobHash]) -> TxResult<()> {
    c.execute(
        "INSERT INTO manifest_chunks (chunk, manifest) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
        &[&texts(chunks), &manifest.as_str()],
    )
    .await?;
    Ok(())
}

/// Inserts the manifest's row unless one is stored; whether it was new.
async fn insert_manifest_row<C: GenericClient>(c: &C, manifest: &Manifest, now: i64) -> TxResult<bool> {
    let inserted = c
        .execute(
            "INSERT INTO manifests (hash, size, chunks, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (hash) DO NOTHING",
            &[
                &manifest.hash.as_str(),
                &(manifest.size as i64),
                &encode_chunks(&manifest.chunks),
                &now,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

async fn insert_manifest<C: GenericClient>(c: &C, manifest: &Manifest, chunks: &[BlobHash], now: i64) -> TxResult<()> {
    insert_manifest_row(c, manifest, now).await?;
    insert_chunk_rows(c, &manifest.hash, chunks).await
}

/// Drops the candidates' manifests first (row locks: a manifest PUT holding
/// one finishes first), forgets the projects' unheld records, then reads
/// again: under READ COMMITTED that sees every transaction committed
/// meanwhile, and a manifest whose hash turned out to be held is put back.
async fn release_manifests_tx<C: GenericClient>(c: &C, hashes: &[String], cutoff: i64) -> TxResult<Vec<String>> {
    let dropped = c
        .query(
            "DELETE FROM manifests WHERE hash = ANY($1) RETURNING hash, size, chunks, created_at",
            &[&hashes],
        )
        .await?;
    let held = super::ops::forget_unheld_project_rows(c, hashes, cutoff, false).await?;
    let mut released = Vec::new();
    for r in &dropped {
        let hash: String = col(r, 0)?;
        if held.contains(&hash) {
            c.execute(
                "INSERT INTO manifests (hash, size, chunks, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (hash) DO NOTHING",
                &[&hash, &col::<i64>(r, 1)?, &col::<&[u8]>(r, 2)?, &col::<i64>(r, 3)?],
            )
            .await?;
        } else {
            c.execute("DELETE FROM manifest_chunks WHERE manifest = $1", &[&hash])
                .await?;
            released.push(hash);
        }
    }
    Ok(released)
}

async fn put_manifest_tx<C: GenericClient>(c: &C, project_id: i64, manifest: &Manifest) -> TxResult<ManifestPut> {
    let chunks = distinct_chunks(manifest);
    let now = now_millis();
    let marked: HashSet<String> = c
        .query(
            "UPDATE project_blobs SET used_at = $3 WHERE project_id = $1 AND hash = ANY($2) RETURNING hash",
            &[&project_id, &texts(&chunks), &now],
        )
        .await?
        .iter()
        .map(|r| col::<String>(r, 0))
        .collect::<StoreResult<_>>()?;
    if let Some(gone) = chunks.iter().find(|c| !marked.contains(c.as_str())) {
        return Ok(ManifestPut::ChunkGone(gone.clone()));
    }
    if insert_manifest_row(c, manifest, now).await? {
        insert_chunk_rows(c, &manifest.hash, &chunks).await?;
    } else {
        // Share-locked: a collector dropping this manifest waits for this
        // transaction, then sees the hash in use and puts it back.
        let stored = c
            .query_opt(
                "SELECT size, chunks FROM manifests WHERE hash = $1 FOR SHARE",
                &[&manifest.hash.as_str()],
            )
            .await?;
        match stored {
            Some(r) => {
                let stored = manifest_from_row(manifest.hash.clone(), col(&r, 0)?, col::<&[u8]>(&r, 1)?)?;
                for chunk in distinct_chunks(&stored) {
                    record_blob(c, project_id, &chunk).await?;
                }
            }
            // A collector dropped it after the insert looked: store ours.
            None => insert_manifest(c, manifest, &chunks, now).await?,
        }
    }
    let known = c
        .query_opt(
            "SELECT 1 FROM project_blobs WHERE project_id = $1 AND hash = $2",
            &[&project_id, &manifest.hash.as_str()],
        )
        .await?
        .is_some();
    record_blob(c, project_id, &manifest.hash).await?;
    Ok(ManifestPut::Recorded { new_to_project: !known })
}

#[async_trait]
impl ManifestStore for PostgresStore {
    async fn project_blobs_among(&self, project_id: i64, hashes: Vec<BlobHash>) -> StoreResult<HashSet<BlobHash>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT hash FROM project_blobs WHERE project_id = $1 AND hash = ANY($2)",
                &[&project_id, &texts(&hashes)],
            )
            .await
            .map_err(TxError::from)?;
        rows.iter().map(|r| parse_hash(col(r, 0)?)).collect()
    }

    async fn put_manifest(&self, project_id: i64, manifest: &Manifest) -> StoreResult<ManifestPut> {
        write_tx!(self, |tx| put_manifest_tx(&tx, project_id, manifest).await?)
    }

    async fn forget_project_blob(&self, project_id: i64, hash: &BlobHash) -> StoreResult<()> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM project_blobs WHERE project_id = $1 AND hash = $2",
            &[&project_id, &hash.as_str()],
        )
        .await
        .map_err(TxError::from)?;
        Ok(())
    }

    async fn manifest(&self, hash: &BlobHash) -> StoreResult<Option<Manifest>> {
        let c = self.client().await?;
        Ok(stored_manifests(&c, &[hash.as_str().to_string()]).await?.pop())
    }

    async fn manifests_among(&self, hashes: Vec<BlobHash>) -> StoreResult<Vec<Manifest>> {
        let c = self.client().await?;
        Ok(stored_manifests(&c, &texts(&hashes)).await?)
    }

    async fn manifest_hashes(&self) -> StoreResult<Vec<BlobHash>> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT hash FROM manifests ORDER BY hash", &[])
            .await
            .map_err(TxError::from)?;
        rows.iter().map(|r| parse_hash(col(r, 0)?)).collect()
    }

    async fn release_manifests(&self, candidates: Vec<BlobHash>, cutoff: i64) -> StoreResult<Vec<BlobHash>> {
        let mut released = Vec::new();
        for batch in candidates.chunks(500) {
            let hashes = texts(batch);
            let freed = write_tx!(self, |tx| release_manifests_tx(&tx, &hashes, cutoff).await?)?;
            for h in freed {
                released.push(parse_hash(&h)?);
            }
        }
        Ok(released)
    }
}
