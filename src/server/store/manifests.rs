//! What the metadata database keeps for chunked content (`crate::chunks`):
//! each chunked blob's manifest, and which manifests hold each chunk.
//!
//! A manifest is global, like the blob storage it describes: a project may
//! read a chunked blob once its hash is in the project's blobs
//! (`project_blobs`), which only a verified manifest PUT or a commit does.
//! The chunk list is kept in one compact column ([`encode_chunks`]: 40 bytes
//! a chunk); `manifest_chunks` lists each (chunk, manifest) pair once so
//! garbage collection can tell in SQL that a chunk is still part of a
//! manifest (a chunk stays while any manifest holding it exists, and a
//! manifest stays while its hash is held like any blob's: by a version, a
//! skill or a project's upload within the grace period).

use std::collections::HashSet;

use async_trait::async_trait;

use super::StoreResult;
use crate::chunks::{ChunkRef, Manifest};
use crate::model::BlobHash;

/// Bytes per chunk in the encoded column: the blake3 hash, then the size as
/// a big-endian u64.
const ENCODED_CHUNK: usize = 40;

/// The chunk list as stored.
pub fn encode_chunks(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * ENCODED_CHUNK);
    for c in chunks {
        out.extend_from_slice(&hash_bytes(&c.hash));
        out.extend_from_slice(&c.size.to_be_bytes());
    }
    out
}

/// The chunk list from its stored form; `None` when the bytes are not one.
pub fn decode_chunks(raw: &[u8]) -> Option<Vec<ChunkRef>> {
    if raw.len() % ENCODED_CHUNK != 0 {
        return None;
    }
    raw.chunks_exact(ENCODED_CHUNK)
        .map(|c| {
            let hash: [u8; 32] = c[..32].try_into().ok()?;
            let size: [u8; 8] = c[32..].try_into().ok()?;
            Some(ChunkRef {
                hash: BlobHash::from_blake3(blake3::Hash::from_bytes(hash)),
                size: u64::from_be_bytes(size),
            })
        })
        .collect()
}

fn hash_bytes(hash: &BlobHash) -> [u8; 32] {
    // A BlobHash is always 64 lowercase hex characters (checked when parsed).
    blake3::Hash::from_hex(hash.as_str())
        .map(|h| *h.as_bytes())
        .unwrap_or([0; 32])
}

/// A manifest from its stored columns (a row that does not decode is a
/// damaged database).
pub fn manifest_from_row(hash: BlobHash, size: i64, chunks: &[u8]) -> StoreResult<Manifest> {
    let chunks = decode_chunks(chunks).ok_or_else(|| {
        super::backend(format!(
            "the stored manifest of {hash} is damaged ({} bytes of chunk list)",
            chunks.len()
        ))
    })?;
    Ok(Manifest {
        hash,
        size: size.max(0) as u64,
        chunks,
    })
}

/// The distinct chunk hashes of a manifest, in first-seen order.
pub fn distinct_chunks(manifest: &Manifest) -> Vec<BlobHash> {
    let mut seen = HashSet::new();
    manifest
        .chunks
        .iter()
        .filter(|c| seen.insert(c.hash.clone()))
        .map(|c| c.hash.clone())
        .collect()
}

/// What recording a manifest for a project did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestPut {
    /// Recorded; `new_to_project` says whether the project lacked the hash.
    Recorded { new_to_project: bool },
    /// This chunk is no longer the project's (garbage collection released
    /// it after it was checked): nothing was recorded.
    ChunkGone(BlobHash),
}

/// Chunked content's rows. A supertrait of
/// [`MetadataStore`](super::MetadataStore), implemented by each store in its
/// `manifests.rs`.
#[async_trait]
pub trait ManifestStore: Send + Sync {
    /// Which of `hashes` the project holds (uploaded, or registered by a
    /// manifest or a commit).
    async fn project_blobs_among(&self, project_id: i64, hashes: Vec<BlobHash>) -> StoreResult<HashSet<BlobHash>>;
    /// In ONE transaction: checks every chunk is still the project's and
    /// marks it used now (so garbage collection keeps it), stores the
    /// manifest unless one is stored for its hash (the stored one stays:
    /// both were verified to make the same bytes), makes the chunks of the
    /// stored manifest the project's too (it may read them: they are parts
    /// of a blob it holds) and records the hash as the project's.
    async fn put_manifest(&self, project_id: i64, manifest: &Manifest) -> StoreResult<ManifestPut>;
    /// Forgets that the project holds this blob (it is gone from storage),
    /// so `blobs/missing` asks for it again.
    async fn forget_project_blob(&self, project_id: i64, hash: &BlobHash) -> StoreResult<()>;
    /// The stored manifest of a chunked blob.
    async fn manifest(&self, hash: &BlobHash) -> StoreResult<Option<Manifest>>;
    /// The stored manifests among `hashes` (garbage collection, migration).
    async fn manifests_among(&self, hashes: Vec<BlobHash>) -> StoreResult<Vec<Manifest>>;
    /// Every stored manifest's hash.
    async fn manifest_hashes(&self) -> StoreResult<Vec<BlobHash>>;
    /// Garbage collection: in one transaction, drops the manifest of each
    /// candidate that no version or skill refers to and no project used at
    /// or after `cutoff` (Unix ms), with the projects' records of that hash,
    /// and returns those. Their chunks are then held by nothing but other
    /// manifests and recent uploads.
    async fn release_manifests(&self, candidates: Vec<BlobHash>, cutoff: i64) -> StoreResult<Vec<BlobHash>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lists_survive_encoding() {
        let chunks = vec![
            ChunkRef {
                hash: BlobHash::of(b"one"),
                size: 1,
            },
            ChunkRef {
                hash: BlobHash::of(b"two"),
                size: u64::MAX,
            },
        ];
        let raw = encode_chunks(&chunks);
        assert_eq!(raw.len(), 80);
        assert_eq!(decode_chunks(&raw), Some(chunks));
        assert_eq!(decode_chunks(&raw[..79]), None);
    }
}
