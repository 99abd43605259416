//! Reading large files by chunks (see `crate::chunks`): a clean file of at
//! least [`CHUNKED_MIN`] bytes whose whole blob is not in the local cache is
//! opened by its manifest, and each read fetches only the chunks it covers,
//! each into the shared cache as an ordinary blob named by its own hash.
//! Every chunk is hashed before use (by the fill, or on this process's first
//! open of a cached one); one that does not match is fetched once more,
//! then the read fails with EIO: wrong bytes are never served.
//!
//! Sequential readers get chunks fetched ahead on worker threads
//! ([`prefetch`], decided by [`readahead`]). A handle keeps descriptors of
//! only its last few chunks, so the cache can evict what a streaming reader
//! left behind and a 5 GB file streams through a 1 GB cache.

mod prefetch;
pub mod readahead;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::warn;

use super::{BlobSource, Vfs, VfsError, VfsResult};
use crate::cache::{BlobCache, CacheError};
use crate::chunks::{spans_covering, ChunkRef, ChunkSpan, Manifest, CHUNKED_MIN};
use crate::model::BlobHash;
use prefetch::Prefetcher;
use readahead::{Readahead, MAX_AHEAD_BYTES};

/// Chunk descriptors one handle keeps open: the chunk being read and the
/// one before (a read may straddle them). Older ones are closed, so chunks
/// the cache evicts stop using disk.
const HANDLE_WINDOW: usize = 3;
/// Manifests kept in memory, weighed in chunks (~40,000 chunks is ~80 GB of
/// files at the average chunk size, a few MB of memory).
const MANIFEST_CACHE_CHUNKS: u64 = 40_000;
/// How long a chunk that failed to arrive fails again at once.
const FAILURE_MEMORY: Duration = Duration::from_secs(5);
/// How long a manifest (or the answer that a blob is stored whole) is kept
/// after its last use.
const MANIFEST_IDLE: Duration = Duration::from_secs(10 * 60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A chunked blob: its manifest and where each chunk starts.
#[derive(Debug)]
pub(crate) struct ChunkedBlob {
    manifest: Manifest,
    spans: Vec<ChunkSpan>,
}

impl ChunkedBlob {
    fn new(manifest: Manifest) -> Self {
        let spans = manifest.spans();
        Self { manifest, spans }
    }

    fn chunk(&self, index: usize) -> &ChunkRef {
        &self.manifest.chunks[index]
    }
}

/// One open handle reading a chunked blob.
pub(crate) struct ChunkedHandle {
    blob: Arc<ChunkedBlob>,
    state: Mutex<HandleState>,
}

#[derive(Default)]
struct HandleState {
    readahead: Readahead,
    /// The last chunks this handle read, most recent last.
    window: VecDeque<(usize, Arc<File>)>,
}

impl ChunkedHandle {
    fn new(blob: Arc<ChunkedBlob>) -> Self {
        Self {
            blob,
            state: Mutex::default(),
        }
    }

    fn in_window(&self, index: usize) -> Option<Arc<File>> {
        lock(&self.state)
            .window
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, f)| f.clone())
    }

    fn keep(&self, index: usize, file: Arc<File>) {
        let mut state = lock(&self.state);
        if state.window.iter().any(|(i, _)| *i == index) {
            return;
        }
        state.window.push_back((index, file));
        while state.window.len() > HANDLE_WINDOW {
            state.window.pop_front();
        }
    }
}

/// The mount's chunked-read state: manifests, handles, readahead workers.
pub(crate) struct Chunks {
    /// `None` records that the blob is stored whole.
    manifests: moka::sync::Cache<BlobHash, Option<Arc<ChunkedBlob>>>,
    handles: Mutex<HashMap<u64, Arc<ChunkedHandle>>>,
    prefetcher: Prefetcher,
    /// How far ahead of a sequential reader chunks are fetched.
    max_ahead: u64,
    /// Chunks whose fetch just failed, with the error: the kernel retries a
    /// failed readahead page by page at once, and each retry would wait out
    /// a hung server's timeout again.
    failed: moka::sync::Cache<BlobHash, Arc<String>>,
}

impl Chunks {
    pub(crate) fn new(cache: Arc<BlobCache>, source: Arc<dyn BlobSource>) -> Self {
        // A small cache must hold the window ahead and the chunks in use.
        let max_ahead = MAX_AHEAD_BYTES.min(cache.max_bytes() / 4);
        Self {
            manifests: moka::sync::Cache::builder()
                .max_capacity(MANIFEST_CACHE_CHUNKS)
                .weigher(|_, blob: &Option<Arc<ChunkedBlob>>| {
                    blob.as_ref()
                        .map_or(1, |b| u32::try_from(b.manifest.chunks.len()).unwrap_or(u32::MAX))
                })
                .time_to_idle(MANIFEST_IDLE)
                .build(),
            handles: Mutex::default(),
            failed: moka::sync::Cache::builder()
                .max_capacity(1024)
                .time_to_live(FAILURE_MEMORY)
                .build(),
            prefetcher: Prefetcher::new(cache, source),
            max_ahead,
        }
    }
}

/// Fetches one chunk into the cache (or opens the cached copy, hashed on
/// this process's first open of it), trying once more when the bytes do
/// not match the chunk's name. A chunk of the wrong length is refused too:
/// every offset in the file after it would be wrong. `budget` bounds the
/// bytes of fills in progress (see [`BlobCache::get_or_fill_chunk`]).
pub(crate) fn fetch_chunk(
    cache: &BlobCache,
    source: &dyn BlobSource,
    chunk: &ChunkRef,
    budget: u64,
) -> Result<File, CacheError> {
    let (mut mismatches, mut busy) = (0, 0);
    loop {
        let result = cache
            .get_or_fill_chunk(&chunk.hash, chunk.size, budget, |fill| {
                source.fetch_chunk(&chunk.hash, fill)
            })
            .and_then(|file| match file.metadata() {
                Ok(meta) if meta.len() == chunk.size => Ok(file),
                Ok(meta) => Err(CacheError::Fetch {
                    hash: chunk.hash.clone(),
                    message: format!("the chunk has {} bytes, its manifest says {}", meta.len(), chunk.size),
                }),
                Err(e) => Err(CacheError::io(cache.path_of(&chunk.hash), e)),
            });
        match result {
            Err(CacheError::HashMismatch { expected, actual }) if mismatches == 0 => {
                mismatches += 1;
                warn!(chunk = %expected, %actual, "a chunk arrived with the wrong bytes; fetching it again");
            }
            // A readahead of this chunk that had no room did not fetch it;
            // a reader fetches it itself (its budget has no bound).
            Err(CacheError::Busy { .. }) if budget == u64::MAX && busy < 3 => busy += 1,
            other => return other,
        }
    }
}

impl Vfs {
    /// How a clean file of `size` bytes is read: by chunks when it is large,
    /// its whole blob is not cached here, and the server stores it as
    /// chunks. `None` means the whole-blob path (small files, files this
    /// mount wrote and still caches whole, blobs stored whole).
    pub(super) fn chunked_blob(&self, hash: &BlobHash, size: u64) -> VfsResult<Option<Arc<ChunkedBlob>>> {
        if size < CHUNKED_MIN || self.open_files.contains_key(hash) || self.cache.contains(hash) {
            return Ok(None);
        }
        if let Some(known) = self.chunks.manifests.get(hash) {
            return Ok(known);
        }
        let manifest = self.source.manifest(hash)?;
        let blob = match manifest {
            None => None,
            Some(manifest) => {
                let bad = |why: String| {
                    VfsError::new(
                        libc::EIO,
                        format!("the server's manifest of {hash} cannot be used: {why}"),
                    )
                };
                if manifest.hash != *hash {
                    return Err(bad(format!("it describes {}", manifest.hash)));
                }
                if manifest.size != size {
                    return Err(bad(format!("it has {} bytes, the file {size}", manifest.size)));
                }
                manifest.check_shape().map_err(bad)?;
                Some(Arc::new(ChunkedBlob::new(manifest)))
            }
        };
        self.chunks.manifests.insert(hash.clone(), blob.clone());
        Ok(blob)
    }

    /// Whether opening a clean file needs nothing from the server before the
    /// first read: its manifest is known (chunks are fetched by reads).
    pub(super) fn manifest_known(&self, hash: &BlobHash, size: u64) -> bool {
        size >= CHUNKED_MIN && matches!(self.chunks.manifests.get(hash), Some(Some(_)))
    }

    /// Makes `fh` a handle that reads `blob` by chunks.
    pub(super) fn open_chunked(&self, fh: u64, blob: Arc<ChunkedBlob>) {
        lock(&self.chunks.handles).insert(fh, Arc::new(ChunkedHandle::new(blob)));
    }

    pub(super) fn chunked_handle(&self, fh: u64) -> Option<Arc<ChunkedHandle>> {
        lock(&self.chunks.handles).get(&fh).cloned()
    }

    /// The handle is closed: its chunk descriptors go with it.
    pub(super) fn release_chunked(&self, fh: u64) {
        lock(&self.chunks.handles).remove(&fh);
    }

    /// Whether reading `size` bytes at `offset` through `fh` must download a
    /// chunk first (the FUSE adapter then reads off its fixed threads).
    pub fn read_would_fetch(&self, fh: u64, offset: u64, size: u32) -> bool {
        let Some(handle) = self.chunked_handle(fh) else {
            return false;
        };
        spans_covering(&handle.blob.spans, offset, u64::from(size))
            .iter()
            .any(|s| handle.in_window(s.index).is_none() && !self.cache.has_checked(&handle.blob.chunk(s.index).hash))
    }

    /// A read through a chunked handle: the chunks it covers, fetched and
    /// checked as needed; chunks ahead queued for a sequential reader.
    pub(super) fn read_chunked(&self, handle: &ChunkedHandle, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        let blob = &handle.blob;
        let end = offset.saturating_add(u64::from(size)).min(blob.manifest.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let ahead = lock(&handle.state)
            .readahead
            .on_read(&blob.spans, offset, end, self.chunks.max_ahead);
        for index in ahead {
            self.chunks.prefetcher.submit(blob.chunk(index));
        }
        let mut out = vec![0u8; (end - offset) as usize];
        for span in spans_covering(&blob.spans, offset, end - offset) {
            let file = self.chunk_file(handle, span.index)?;
            let from = offset.max(span.offset);
            let to = end.min(span.offset + span.size);
            let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
            file.read_exact_at(dst, from - span.offset)
                .map_err(|e| VfsError::io(format!("read chunk {} of {}", span.index, blob.manifest.hash), e))?;
        }
        Ok(out)
    }

    /// The open chunk `index` of a handle's blob, fetched if needed.
    fn chunk_file(&self, handle: &ChunkedHandle, index: usize) -> VfsResult<Arc<File>> {
        if let Some(file) = handle.in_window(index) {
            return Ok(file);
        }
        let chunk = handle.blob.chunk(index);
        if let Some(error) = self.chunks.failed.get(&chunk.hash) {
            return Err(VfsError::new(
                libc::EIO,
                format!(
                    "chunk {index} of {} failed a moment ago: {error}",
                    handle.blob.manifest.hash
                ),
            ));
        }
        let file = match fetch_chunk(&self.cache, &*self.source, chunk, u64::MAX) {
            Ok(file) => Arc::new(file),
            Err(e) => {
                if !matches!(e, CacheError::NoSpace { .. }) {
                    self.chunks.failed.insert(chunk.hash.clone(), Arc::new(e.to_string()));
                }
                return Err(e.into());
            }
        };
        handle.keep(index, file.clone());
        Ok(file)
    }

    /// Reads a clean blob that no chunked handle holds (a writable handle
    /// whose content was acknowledged meanwhile): by chunks when it is
    /// stored so, else through the whole blob.
    pub(super) fn read_clean(&self, hash: &BlobHash, blob_size: u64, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        if let Some(blob) = self.chunked_blob(hash, blob_size)? {
            return self.read_chunked(&ChunkedHandle::new(blob), offset, size);
        }
        let file = self.open_blob(hash)?;
        read_at_most(&file, offset, size)
    }

    /// Copies a clean blob into a staging file (copy on first write) and
    /// returns its length. A chunked blob is assembled from its chunks, each
    /// checked, and the whole is checked against its hash on the way.
    pub(super) fn copy_clean_into(&self, hash: &BlobHash, blob_size: u64, dst: &File) -> VfsResult<u64> {
        let Some(blob) = self.chunked_blob(hash, blob_size)? else {
            return copy_whole(&*self.open_blob(hash)?, dst);
        };
        let mut whole = blake3::Hasher::new();
        let mut buf = Vec::new();
        for span in &blob.spans {
            let chunk = fetch_chunk(&self.cache, &*self.source, blob.chunk(span.index), u64::MAX)?;
            buf.resize(span.size as usize, 0);
            chunk
                .read_exact_at(&mut buf, 0)
                .map_err(|e| VfsError::io("read a chunk to stage", e))?;
            whole.update(&buf);
            dst.write_all_at(&buf, span.offset)
                .map_err(|e| VfsError::io("copy into staging", e))?;
        }
        let actual = BlobHash::from_blake3(whole.finalize());
        if actual != *hash {
            return Err(VfsError::new(
                libc::EIO,
                format!("the chunks of {hash} add up to {actual}: the server's manifest is wrong"),
            ));
        }
        Ok(blob.manifest.size)
    }
}

/// Up to `size` bytes at `offset` (fewer at the end of the file).
pub(super) fn read_at_most(file: &File, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        let n = file
            .read_at(&mut buf[filled..], offset + filled as u64)
            .map_err(|e| VfsError::io("read", e))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Copies all of `src` into `dst` from offset 0; returns the length.
pub(super) fn copy_whole(src: &File, dst: &File) -> VfsResult<u64> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, super::journal::ReadAt::new(src));
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, dst);
    let size = std::io::copy(&mut reader, &mut writer).map_err(|e| VfsError::io("copy into staging", e))?;
    std::io::Write::flush(&mut writer).map_err(|e| VfsError::io("copy into staging", e))?;
    Ok(size)
}
