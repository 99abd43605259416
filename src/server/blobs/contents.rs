//! The server's view of file contents over blob storage: every read the
//! server makes goes through [`Contents`], which serves a chunked blob
//! (`crate::chunks`) by streaming its chunks in order, and a whole blob as
//! stored.
//!
//! Whole reads are verified on the way out: the bytes are hashed as they
//! stream and the last piece is held back until the hash is checked, so a
//! blob damaged in storage ends the response short (the client sees a broken
//! download) instead of being served as good. A byte range of a blob or of a
//! partly read chunk cannot be checked without reading all of it; clients
//! that read ranges verify what they assemble (the mount checks every chunk).

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::{BlobError, BlobStore, ByteStream, Deletion, StoredBlob};
use crate::chunks::{spans_covering, Manifest};
use crate::model::BlobHash;
use crate::server::store::MetadataStore;

/// Chunk downloads opened ahead of the one being streamed (S3 latency).
const CHUNKS_AHEAD: usize = 2;

/// Blob storage plus the manifests of chunked blobs.
pub struct Contents {
    raw: Arc<dyn BlobStore>,
    store: Arc<dyn MetadataStore>,
}

impl Contents {
    pub fn new(raw: Arc<dyn BlobStore>, store: Arc<dyn MetadataStore>) -> Self {
        Self { raw, store }
    }

    async fn manifest_or_missing(&self, hash: &BlobHash) -> Result<Manifest, BlobError> {
        self.store
            .manifest(hash)
            .await
            .map_err(|e| BlobError::Io(format!("cannot read the manifest of {hash}: {e}")))?
            .ok_or_else(|| BlobError::NotFound(hash.clone()))
    }

    /// `len` bytes from `offset` of a chunked blob: only the chunks that
    /// hold them are read; chunks read whole are verified.
    fn chunked_stream(&self, manifest: &Manifest, offset: u64, len: u64) -> ByteStream {
        let spans = manifest.spans();
        let end = offset.saturating_add(len).min(manifest.size);
        let pieces: Vec<(BlobHash, u64, u64, bool)> = spans_covering(&spans, offset, end.saturating_sub(offset))
            .iter()
            .map(|span| {
                let from = offset.max(span.offset) - span.offset;
                let to = end.min(span.offset + span.size) - span.offset;
                let whole = from == 0 && to == span.size;
                (manifest.chunks[span.index].hash.clone(), from, to - from, whole)
            })
            .collect();
        let raw = self.raw.clone();
        let whole_hash = manifest.hash.clone();
        let opened = futures_util::stream::iter(pieces)
            .map(move |(chunk, from, n, whole)| {
                let raw = raw.clone();
                let whole_hash = whole_hash.clone();
                async move {
                    let opened = if whole {
                        raw.get(&chunk).await.map(|(_, s)| verified(chunk.clone(), s))
                    } else {
                        raw.get_range(&chunk, from, n).await
                    };
                    opened.map_err(|e| {
                        tracing::error!(%whole_hash, %chunk, error = %e, "a chunk of a chunked blob cannot be read");
                        std::io::Error::other(format!("chunk {chunk} of {whole_hash}: {e}"))
                    })
                }
            })
            .buffered(CHUNKS_AHEAD);
        Box::pin(opened.try_flatten())
    }
}

/// `stream` passed through while hashing it; its last piece is held back
/// until the whole hashes to `hash`, else the stream ends with an error.
pub fn verified(hash: BlobHash, stream: ByteStream) -> ByteStream {
    struct Check {
        inner: ByteStream,
        hasher: blake3::Hasher,
        held: Option<Bytes>,
        hash: BlobHash,
        done: bool,
    }
    let check = Check {
        inner: stream,
        hasher: blake3::Hasher::new(),
        held: None,
        hash,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(check, |mut c| async move {
        loop {
            if c.done {
                return None;
            }
            match c.inner.next().await {
                Some(Ok(piece)) if piece.is_empty() => continue,
                Some(Ok(piece)) => {
                    c.hasher.update(&piece);
                    if let Some(previous) = c.held.replace(piece) {
                        return Some((Ok(previous), c));
                    }
                }
                Some(Err(e)) => {
                    c.done = true;
                    return Some((Err(e), c));
                }
                None => {
                    c.done = true;
                    let actual = BlobHash::from_blake3(c.hasher.finalize());
                    if actual != c.hash {
                        tracing::error!(hash = %c.hash, %actual, "a blob in storage is corrupt: its bytes hash to another hash");
                        return Some((
                            Err(std::io::Error::other(BlobError::Corrupt {
                                hash: c.hash.clone(),
                                actual,
                            })),
                            c,
                        ));
                    }
                    return c.held.take().map(|last| (Ok(last), c));
                }
            }
        }
    }))
}

#[async_trait]
impl BlobStore for Contents {
    async fn size(&self, hash: &BlobHash) -> Result<Option<u64>, BlobError> {
        if let Some(size) = self.raw.size(hash).await? {
            return Ok(Some(size));
        }
        match self.manifest_or_missing(hash).await {
            Ok(m) => Ok(Some(m.size)),
            Err(BlobError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_stream(
        &self,
        expected: Option<&BlobHash>,
        body: ByteStream,
        limit: u64,
    ) -> Result<(BlobHash, u64, bool), BlobError> {
        self.raw.put_stream(expected, body, limit).await
    }

    async fn put_bytes(&self, bytes: Bytes) -> Result<BlobHash, BlobError> {
        self.raw.put_bytes(bytes).await
    }

    async fn get(&self, hash: &BlobHash) -> Result<(u64, ByteStream), BlobError> {
        match self.raw.get(hash).await {
            Ok((size, stream)) => Ok((size, verified(hash.clone(), stream))),
            Err(BlobError::NotFound(_)) => {
                let manifest = self.manifest_or_missing(hash).await?;
                Ok((manifest.size, self.chunked_stream(&manifest, 0, manifest.size)))
            }
            Err(e) => Err(e),
        }
    }

    async fn get_range(&self, hash: &BlobHash, offset: u64, len: u64) -> Result<ByteStream, BlobError> {
        match self.raw.get_range(hash, offset, len).await {
            Err(BlobError::NotFound(_)) => {
                let manifest = self.manifest_or_missing(hash).await?;
                Ok(self.chunked_stream(&manifest, offset, len))
            }
            other => other,
        }
    }

    async fn read_all(&self, hash: &BlobHash, limit: u64) -> Result<Vec<u8>, BlobError> {
        let bytes = match self.raw.read_all(hash, limit).await {
            Err(BlobError::NotFound(_)) => {
                let manifest = self.manifest_or_missing(hash).await?;
                if manifest.size > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                let mut out = Vec::with_capacity(manifest.size as usize);
                let mut stream = self.chunked_stream(&manifest, 0, manifest.size);
                while let Some(piece) = stream.next().await {
                    out.extend_from_slice(&piece.map_err(|e| BlobError::Io(e.to_string()))?);
                }
                out
            }
            other => other?,
        };
        let actual = BlobHash::of(&bytes);
        if actual != *hash {
            tracing::error!(%hash, %actual, "a blob in storage is corrupt: its bytes hash to another hash");
            return Err(BlobError::Corrupt {
                hash: hash.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    async fn list(&self) -> Result<Vec<StoredBlob>, BlobError> {
        self.raw.list().await
    }

    async fn delete_if_idle(&self, hash: &BlobHash, cutoff: SystemTime) -> Result<Deletion, BlobError> {
        self.raw.delete_if_idle(hash, cutoff).await
    }

    async fn put_bytes_deferred(&self, bytes: Bytes) -> Result<Option<BlobHash>, BlobError> {
        self.raw.put_bytes_deferred(bytes).await
    }

    async fn sync_deferred(&self) -> Result<(), BlobError> {
        self.raw.sync_deferred().await
    }

    async fn restore(&self, bytes: Bytes) -> Result<BlobHash, BlobError> {
        self.raw.restore(bytes).await
    }
}
