//! Worker threads that fetch chunks ahead of sequential readers into the
//! shared cache. A FUSE thread only queues (never waits): when the queue is
//! full the chunk is simply not fetched ahead, and the reader fetches it
//! when it gets there. A reader that reaches a chunk still being fetched
//! waits on that same fill (the cache's single flight), not a second one.

use std::collections::HashSet;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::debug;

use super::fetch_chunk;
use crate::cache::BlobCache;
use crate::chunks::ChunkRef;
use crate::model::BlobHash;
use crate::vfs::BlobSource;

/// Chunks fetched ahead at once, over every handle of the mount.
pub const PREFETCH_WORKERS: usize = 4;
/// Chunks waiting for a worker; more are dropped (the reader fetches them).
const QUEUE: usize = 32;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Prefetcher {
    cache: Arc<BlobCache>,
    source: Arc<dyn BlobSource>,
    /// Started with the first chunk asked for (most mounts never read a
    /// large file); dropping it ends the workers.
    queue: Mutex<Option<SyncSender<ChunkRef>>>,
    /// Chunks queued or being fetched, so several readers of one file ask once.
    pending: Arc<Mutex<HashSet<BlobHash>>>,
}

impl Prefetcher {
    pub(crate) fn new(cache: Arc<BlobCache>, source: Arc<dyn BlobSource>) -> Self {
        Self {
            cache,
            source,
            queue: Mutex::new(None),
            pending: Arc::default(),
        }
    }

    /// Queues `chunk` to be fetched into the cache, unless it is there
    /// already, queued already, or the queue is full. Never blocks on I/O
    /// beyond a stat.
    pub(crate) fn submit(&self, chunk: &ChunkRef) {
        if self.cache.has_checked(&chunk.hash) {
            return;
        }
        // A cheap early look at the budget the worker enforces (see `work`).
        if self.cache.reserved().saturating_add(chunk.size) > self.cache.max_bytes() / 2 {
            debug!(chunk = %chunk.hash, "the cache is too small to fetch more ahead");
            return;
        }
        if !lock(&self.pending).insert(chunk.hash.clone()) {
            return;
        }
        let mut queue = lock(&self.queue);
        if queue.is_none() {
            *queue = self.start();
        }
        let sent = match queue.as_ref() {
            Some(tx) => match tx.try_send(chunk.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    debug!(chunk = %chunk.hash, "readahead queue full; the reader fetches this chunk itself");
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if !sent {
            lock(&self.pending).remove(&chunk.hash);
        }
    }

    /// Starts the workers; `None` if no thread could start (no readahead).
    fn start(&self) -> Option<SyncSender<ChunkRef>> {
        let (tx, rx) = mpsc::sync_channel::<ChunkRef>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for n in 0..PREFETCH_WORKERS {
            let (cache, source, rx, pending) = (
                self.cache.clone(),
                self.source.clone(),
                rx.clone(),
                self.pending.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("readahead-{n}"))
                .spawn(move || work(&cache, &*source, &rx, &pending));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "cannot start a readahead thread"),
            }
        }
        (started > 0).then_some(tx)
    }
}

/// One worker: fetches queued chunks until the prefetcher is dropped.
fn work(
    cache: &BlobCache,
    source: &dyn BlobSource,
    rx: &Mutex<Receiver<ChunkRef>>,
    pending: &Mutex<HashSet<BlobHash>>,
) {
    loop {
        let next = lock(rx).recv();
        let Ok(chunk) = next else { return };
        // Fills in progress hold room in the cache: readahead takes at most
        // half of it, so a small cache keeps room for what readers need now.
        if let Err(e) = fetch_chunk(cache, source, &chunk, cache.max_bytes() / 2) {
            // The reader fetches it again itself and reports the error then.
            debug!(chunk = %chunk.hash, error = %e, "readahead of a chunk failed");
        }
        lock(pending).remove(&chunk.hash);
    }
}
