//! SQLite rows of chunked content's manifests; what they mean is in
//! [`store::manifests`](crate::server::store::manifests). A manifest PUT runs
//! on the writer thread, so its chunk check and its inserts are one step that
//! a garbage collector's release cannot interleave with.

use std::collections::HashSet;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{parse_hash, record_blob};
use super::SqliteStore;
use crate::chunks::Manifest;
use crate::model::BlobHash;
use crate::server::store::manifests::{distinct_chunks, encode_chunks, manifest_from_row, ManifestPut, ManifestStore};
use crate::server::store::{now_millis, StoreResult};

fn project_has(conn: &Connection, project_id: i64, hash: &BlobHash) -> StoreResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM project_blobs WHERE project_id = ?1 AND hash = ?2")?
        .query_row(params![project_id, hash.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

fn stored_manifest(conn: &Connection, hash: &BlobHash) -> StoreResult<Option<Manifest>> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT size, chunks FROM manifests WHERE hash = ?1")?
        .query_row(params![hash.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(size, chunks)| manifest_from_row(hash.clone(), size, &chunks))
        .transpose()
}

fn put_manifest_tx(conn: &Connection, project_id: i64, manifest: &Manifest) -> StoreResult<ManifestPut> {
    let chunks = distinct_chunks(manifest);
    for chunk in &chunks {
        if !project_has(conn, project_id, chunk)? {
            return Ok(ManifestPut::ChunkGone(chunk.clone()));
        }
    }
    let now = now_millis();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO manifests (hash, size, chunks, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (hash) DO NOTHING",
        )?
        .execute(params![
            manifest.hash.as_str(),
            manifest.size as i64,
            encode_chunks(&manifest.chunks),
            now
        ])?;
    let stored_chunks = if inserted == 1 {
        let mut insert = conn
            .prepare_cached("INSERT INTO manifest_chunks (chunk, manifest) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?;
        for chunk in &chunks {
            insert.execute(params![chunk.as_str(), manifest.hash.as_str()])?;
        }
        chunks
    } else {
        match stored_manifest(conn, &manifest.hash)? {
            Some(stored) => distinct_chunks(&stored),
            None => chunks,
        }
    };
    for chunk in &stored_chunks {
        record_blob(conn, project_id, chunk)?;
    }
    let new_to_project = !project_has(conn, project_id, &manifest.hash)?;
    record_blob(conn, project_id, &manifest.hash)?;
    Ok(ManifestPut::Recorded { new_to_project })
}

/// On the writer thread: nothing commits between the check and the deletes.
fn release_manifests_tx(conn: &Connection, candidates: &[BlobHash], cutoff: i64) -> StoreResult<Vec<BlobHash>> {
    let mut held = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM versions WHERE hash = ?1)
             OR EXISTS (SELECT 1 FROM skill_files WHERE hash = ?1)
             OR EXISTS (SELECT 1 FROM project_blobs WHERE hash = ?1 AND used_at >= ?2)",
    )?;
    let mut released = Vec::new();
    for hash in candidates {
        if held.query_row(params![hash.as_str(), cutoff], |r| r.get::<_, bool>(0))? {
            continue;
        }
        conn.execute("DELETE FROM project_blobs WHERE hash = ?1", [hash.as_str()])?;
        conn.execute("DELETE FROM manifest_chunks WHERE manifest = ?1", [hash.as_str()])?;
        if conn.execute("DELETE FROM manifests WHERE hash = ?1", [hash.as_str()])? == 1 {
            released.push(hash.clone());
        }
    }
    Ok(released)
}

#[async_trait]
impl ManifestStore for SqliteStore {
    async fn project_blobs_among(&self, project_id: i64, hashes: Vec<BlobHash>) -> StoreResult<HashSet<BlobHash>> {
        self.read(move |conn| {
            let mut held = HashSet::new();
            for hash in hashes {
                if project_has(conn, project_id, &hash)? {
                    held.insert(hash);
                }
            }
            Ok(held)
        })
        .await
    }

    async fn put_manifest(&self, project_id: i64, manifest: &Manifest) -> StoreResult<ManifestPut> {
        let manifest = manifest.clone();
        self.write(move |conn| put_manifest_tx(conn, project_id, &manifest))
            .await
    }

    async fn forget_project_blob(&self, project_id: i64, hash: &BlobHash) -> StoreResult<()> {
        let hash = hash.clone();
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM project_blobs WHERE project_id = ?1 AND hash = ?2",
                params![project_id, hash.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    async fn manifest(&self, hash: &BlobHash) -> StoreResult<Option<Manifest>> {
        let hash = hash.clone();
        self.read(move |conn| stored_manifest(conn, &hash)).await
    }

    async fn manifests_among(&self, hashes: Vec<BlobHash>) -> StoreResult<Vec<Manifest>> {
        self.read(move |conn| {
            let mut found = Vec::new();
            for hash in &hashes {
                if let Some(m) = stored_manifest(conn, hash)? {
                    found.push(m);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn manifest_hashes(&self) -> StoreResult<Vec<BlobHash>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT hash FROM manifests ORDER BY hash")?;
            let hashes = stmt
                .query_map([], |r| parse_hash(r.get(0)?))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(hashes)
        })
        .await
    }

    async fn release_manifests(&self, candidates: Vec<BlobHash>, cutoff: i64) -> StoreResult<Vec<BlobHash>> {
        self.write(move |conn| release_manifests_tx(conn, &candidates, cutoff))
            .await
    }
}
