//! Blob storage: immutable file contents addressed by their blake3 hash.
//!
//! A blob is written completely and verified before it becomes visible under
//! its hash, so metadata can never point at a partial or wrong blob.

pub mod contents;
pub mod dir;
pub mod s3;

use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use thiserror::Error;

use crate::model::BlobHash;

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

#[derive(Debug, Error)]
pub enum BlobError {
    #[error("the uploaded bytes hash to {actual}, not {expected}")]
    HashMismatch { expected: BlobHash, actual: BlobHash },
    #[error("the blob is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("blob {hash} in storage is damaged: its bytes hash to {actual}")]
    Corrupt { hash: BlobHash, actual: BlobHash },
    #[error("blob {0} does not exist")]
    NotFound(BlobHash),
    #[error("reading the upload failed: {0}")]
    Upload(String),
    #[error("blob storage error: {0}")]
    Io(String),
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The blob's size, if it is stored.
    async fn size(&self, hash: &BlobHash) -> Result<Option<u64>, BlobError>;
    /// Streams `body` into storage. When `expected` is given the bytes must hash
    /// to it. Returns the hash, the size and whether the blob was new.
    async fn put_stream(
        &self,
        expected: Option<&BlobHash>,
        body: ByteStream,
        limit: u64,
    ) -> Result<(BlobHash, u64, bool), BlobError>;
    /// Stores bytes the server produced itself (merge results).
    async fn put_bytes(&self, bytes: Bytes) -> Result<BlobHash, BlobError>;
    /// The blob's size and a stream of its bytes.
    async fn get(&self, hash: &BlobHash) -> Result<(u64, ByteStream), BlobError>;
    /// `len` bytes of the blob from `offset` (the caller keeps them within
    /// its size; a stored blob shorter than that ends the stream early).
    async fn get_range(&self, hash: &BlobHash, offset: u64, len: u64) -> Result<ByteStream, BlobError>;
    /// The whole blob in memory, refusing blobs over `limit` bytes.
    async fn read_all(&self, hash: &BlobHash, limit: u64) -> Result<Vec<u8>, BlobError>;

    // ----- garbage collection (`server::gc`) -----

    /// Everything stored in the blob area, with its upload time. Fails as a
    /// whole rather than return a partial listing.
    async fn list(&self) -> Result<Vec<StoredBlob>, BlobError>;
    /// Deletes the blob unless it was uploaded (or uploaded again) at or
    /// after `cutoff`: an upload racing the collector wins.
    async fn delete_if_idle(&self, hash: &BlobHash, cutoff: SystemTime) -> Result<Deletion, BlobError>;

    // ----- small contents made durable later (`server::service::deferred`) -----

    /// Stores small bytes without making them durable yet: the caller keeps
    /// a durable copy (the metadata database) until [`Self::sync_deferred`]
    /// has run. `None` when this store has no such mode (every write of an
    /// object store is durable when it returns): use [`Self::put_bytes`].
    async fn put_bytes_deferred(&self, _bytes: Bytes) -> Result<Option<BlobHash>, BlobError> {
        Ok(None)
    }
    /// Makes everything [`Self::put_bytes_deferred`] stored so far durable.
    async fn sync_deferred(&self) -> Result<(), BlobError> {
        Ok(())
    }
    /// Stores `bytes` durably under their hash, replacing whatever is stored
    /// there (a copy torn by a crash before it was made durable).
    async fn restore(&self, bytes: Bytes) -> Result<BlobHash, BlobError> {
        self.put_bytes(bytes).await
    }
}

/// One object found in the blob area.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    /// Its name relative to the blob area (`ab/abcdef…`).
    pub name: String,
    /// `None` when the name is not a blob hash (never deleted by GC).
    pub hash: Option<BlobHash>,
    pub size: u64,
    /// When it was last written (an upload of an existing blob refreshes it
    /// in the folder store).
    pub modified: SystemTime,
}

/// What [`BlobStore::delete_if_idle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    Deleted {
        size: u64,
    },
    /// Uploaded again since the cutoff: kept.
    Recent,
    /// Already gone.
    Missing,
}
