//! Small contents made durable later: the blob files of inline commits are
//! written without an fsync, and a copy of their bytes is kept in the
//! metadata database, which is durable when the commit is. A background
//! round makes the files durable with one `syncfs` (every second by
//! default) and then drops the copies; after a crash, startup restores
//! every blob whose copy is still kept before the server answers.
//!
//! Why: two fsyncs per small blob (the file and its directory entry) were
//! the largest single cost of committing small files (perf: about a third
//! of the server's CPU under an untar). One `syncfs` a second and one row
//! in a transaction the commit writes anyway cost far less.
//!
//! Only where both stores can: SQLite keeps the copies, the blob folder
//! defers its fsyncs. With PostgreSQL or S3 every blob is durable at once,
//! as before.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Service;
use crate::model::BlobHash;
use crate::server::blobs::{BlobError, BlobStore};
use crate::server::error::ApiError;
use crate::server::store::{MetadataStore, StoreError};

/// A sync round or a restore that failed; the kept copies stay.
#[derive(Debug, thiserror::Error)]
pub enum DeferredError {
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("blob storage: {0}")]
    Blobs(#[from] BlobError),
}

/// How often deferred blob files are synced, unless
/// `CONTEXTFS_DEFERRED_SYNC_MS` says otherwise.
pub const DEFERRED_SYNC_INTERVAL: Duration = Duration::from_secs(1);

impl Service {
    /// Stores the small contents of an inline commit: deferred when both
    /// stores can (see the module comment), else durably at once. Returns
    /// the copy the commit must keep in its own transaction when deferred:
    /// also when the file was there already, since it may be a deferred one
    /// that is not synced yet.
    ///
    /// The copy goes in with the commit, not in a transaction of its own
    /// before it: one small transaction per blob was most of the SQLite
    /// writer's transactions and WAL fsyncs under an untar. A commit that
    /// fails keeps no copy; its blob file, unsynced, is then referenced by
    /// nothing (a later durable put of the same bytes syncs it,
    /// `BlobStore::put_bytes`).
    pub(super) async fn store_small_content(&self, bytes: Bytes) -> Result<Option<Bytes>, ApiError> {
        if self.deferred_sync.is_some()
            && self.store.keeps_unsynced_blobs()
            && self.blobs.put_bytes_deferred(bytes.clone()).await?.is_some()
        {
            return Ok(Some(bytes));
        }
        self.blobs.put_bytes(bytes).await?;
        Ok(None)
    }

    /// One round: syncs the deferred blob files written so far, then drops
    /// their kept copies. Copies kept after the round started stay for the
    /// next one (their files may have been written after the sync).
    pub async fn sync_deferred_blobs(&self) -> Result<(), DeferredError> {
        let Some(newest) = self.store.newest_unsynced_blob().await? else {
            return Ok(());
        };
        self.blobs.sync_deferred().await?;
        self.store.forget_unsynced_blobs(newest).await?;
        Ok(())
    }

    /// At startup, before the first request: see [`restore_deferred_blobs`].
    pub async fn restore_deferred_blobs(&self) -> Result<usize, DeferredError> {
        restore_deferred_blobs(self.store.as_ref(), self.blobs.as_ref()).await
    }
}

/// Every blob whose copy is still kept (the server stopped before its
/// round) is checked, and written again from the copy if it is missing or
/// torn; then everything is synced and the copies dropped. Returns how many
/// were restored. Run before anything reads the blobs: at `serve`'s start,
/// and by `migrate` on its source.
pub async fn restore_deferred_blobs(store: &dyn MetadataStore, blobs: &dyn BlobStore) -> Result<usize, DeferredError> {
    let kept = store.unsynced_blobs().await?;
    let Some(newest) = kept.iter().map(|(id, _, _)| *id).max() else {
        return Ok(0);
    };
    let mut restored = 0;
    for (_, hash, data) in kept {
        match blobs.read_all(&hash, u64::MAX).await {
            Ok(bytes) if BlobHash::of(&bytes) == hash => continue,
            Ok(_) | Err(BlobError::NotFound(_) | BlobError::Corrupt { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let actual = BlobHash::of(&data);
        if actual != hash {
            // The database's own copy is damaged: nothing to restore from.
            tracing::error!(%hash, %actual, "the kept copy of an unsynced blob does not match its hash");
            continue;
        }
        blobs.restore(Bytes::from(data)).await?;
        tracing::warn!(%hash, "restored a blob that was not on disk after a crash");
        restored += 1;
    }
    // Also covers deferred files whose copy was never kept (a crash in
    // between): their commits failed, but a later one may reuse them.
    blobs.sync_deferred().await?;
    store.forget_unsynced_blobs(newest).await?;
    Ok(restored)
}

/// Runs a sync round every `interval` for as long as the server runs.
pub fn spawn_deferred_sync(service: Arc<Service>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = service.sync_deferred_blobs().await {
                // The copies stay kept: nothing is lost, the next round retries.
                tracing::error!(error = %e, "cannot sync deferred blobs; their copies stay in the database");
            }
        }
    });
}

/// The sync interval: `CONTEXTFS_DEFERRED_SYNC_MS` (milliseconds), else
/// [`DEFERRED_SYNC_INTERVAL`]; `0` turns deferring off (every blob is
/// durable before its commit, as with PostgreSQL or S3).
pub fn deferred_sync_interval() -> Option<Duration> {
    match std::env::var("CONTEXTFS_DEFERRED_SYNC_MS")
        .ok()
        .map(|v| v.trim().parse::<u64>())
    {
        None => Some(DEFERRED_SYNC_INTERVAL),
        Some(Ok(0)) => None,
        Some(Ok(ms)) => Some(Duration::from_millis(ms)),
        Some(Err(_)) => {
            tracing::warn!("CONTEXTFS_DEFERRED_SYNC_MS is not a number of milliseconds; using 1000");
            Some(DEFERRED_SYNC_INTERVAL)
        }
    }
}
