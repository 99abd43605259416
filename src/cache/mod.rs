//! A content-addressed disk cache of file contents, keyed by blake3 hash and
//! shared by every contextfs mount on the machine.
//!
//! Layout under the root (default [`BlobCache::default_root`]):
//!
//! * `blobs/ab/abcdef…` — one file per blob, named by its full hash;
//! * `tmp/` — fills in progress, renamed into `blobs/` only once their bytes
//!   hashed to the expected value.
//!
//! A name under `blobs/` never serves bytes other than the ones it promises,
//! even after a power loss: a blob larger than [`UNSYNCED_MAX`] is fsynced
//! before the rename; a smaller one is not (an fsync per small file was a
//! large share of a mount's CPU when agents write many files), and each
//! process instead checks its hash the first time it opens one that it did
//! not write itself. A torn blob is then removed and fetched again. Chunks
//! of large files are hashed on first open whatever their size, so they are
//! not fsynced either (see `fill`).
//!
//! Several processes may use one root at once. There is no lock file: each
//! process keeps its own LRU index (rebuilt from the directory on open and
//! resynced every few minutes, ordered by file mtime), readers refresh a
//! blob's mtime at most once a minute so the others see the recency, and
//! every operation tolerates a blob vanishing underneath it (Linux keeps an
//! unlinked file readable through open descriptors; a later open just misses
//! and refills). Only clean content that is already on the server lives here,
//! so anything may be evicted at any time.
//!
//! The parts: `dir` knows the folders and scans them, `fill` writes and
//! verifies blobs (and catches torn ones), `flight` lets one thread per
//! hash fill while the others wait, and `index` is the in-memory LRU. This
//! file ties them together as [`BlobCache`].

mod dir;
mod fill;
mod flight;
mod index;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use crate::model::BlobHash;
use dir::{create_private_dir, remove_stale_tmp, root_from_env, scan_blobs, STALE_TMP_AGE};
pub use fill::CacheFill;
use fill::Verdict;
use flight::{FlightGuard, Flights, Role};
use index::{needs_touch, Entry, Index};

/// How often an insert rescans the directory to learn about blobs added or
/// evicted by other processes, which keeps the shared total near the limit.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Read size when copying a local file into the cache.
const COPY_CHUNK: usize = 256 * 1024;
/// Blobs up to this size are published without an fsync and verified on a
/// process's first open instead (hashing 64 KiB costs microseconds).
pub const UNSYNCED_MAX: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The disk (or the user's quota) under the cache is full.
    #[error("cache disk is full ({path}): {source}")]
    NoSpace { path: PathBuf, source: io::Error },
    #[error("cached bytes hash to {actual}, expected {expected}")]
    HashMismatch { expected: BlobHash, actual: BlobHash },
    #[error("cache I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A fill callback could not obtain the bytes (e.g. the server failed).
    #[error("fetching blob {hash} failed: {message}")]
    Fetch { hash: BlobHash, message: String },
    /// A fill that may wait (readahead) did not start: fills in progress
    /// already hold its budget of the cache. Nothing is wrong with the blob.
    #[error("no room in the cache to fetch {hash} now")]
    Busy { hash: BlobHash },
}

impl CacheError {
    /// The errno a filesystem operation should report for this error.
    pub fn errno(&self) -> i32 {
        match self {
            CacheError::NoSpace { .. } => libc::ENOSPC,
            _ => libc::EIO,
        }
    }

    /// Wraps an I/O error on `path`, classifying a full disk or quota as
    /// [`CacheError::NoSpace`] so callers can report `ENOSPC` rather than `EIO`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if is_no_space(&source) {
            CacheError::NoSpace { path, source }
        } else {
            CacheError::Io { path, source }
        }
    }

    /// A copy for threads that waited on someone else's fill (`io::Error` is
    /// not `Clone`); the variant and errno are preserved.
    fn duplicate(&self) -> Self {
        fn dup(e: &io::Error) -> io::Error {
            match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }
        }
        match self {
            CacheError::NoSpace { path, source } => CacheError::NoSpace {
                path: path.clone(),
                source: dup(source),
            },
            CacheError::HashMismatch { expected, actual } => CacheError::HashMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            },
            CacheError::Io { path, source } => CacheError::Io {
                path: path.clone(),
                source: dup(source),
            },
            CacheError::Fetch { hash, message } => CacheError::Fetch {
                hash: hash.clone(),
                message: message.clone(),
            },
            CacheError::Busy { hash } => CacheError::Busy { hash: hash.clone() },
        }
    }
}

/// True for "disk full" (`ENOSPC`) and "quota exceeded" (`EDQUOT`).
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere leaves the index merely imprecise (it self-heals on
    // misses and resyncs), so keep serving rather than poisoning every mount.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's view of the directory plus when it was last rescanned.
struct IndexState {
    index: Index,
    scanned_at: Instant,
    /// Bytes promised to fills in progress whose size is known in advance
    /// (chunks): room is made for them before they download, so the blobs
    /// plus the fills in `tmp/` stay within the limit.
    reserved: u64,
}

/// The cache handle of one process; `Send + Sync`, meant to be shared behind
/// an `Arc` by every thread of the mount.
pub struct BlobCache {
    root: PathBuf,
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    max_bytes: u64,
    state: Mutex<IndexState>,
    flights: Flights,
    /// `open_blob` lookups the cache answered / could not (`contextfs
    /// status --json`'s hit ratio).
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (used, max, count) = self.usage();
        f.debug_struct("BlobCache")
            .field("root", &self.root)
            .field("used", &used)
            .field("max_bytes", &max)
            .field("blobs", &count)
            .finish()
    }
}

impl BlobCache {
    /// `$XDG_CACHE_HOME/contextfs`, else `~/.cache/contextfs`.
    pub fn default_root() -> PathBuf {
        root_from_env(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
    }

    /// Creates the directories, removes temp files older than an hour
    /// (younger ones may be another process's fill in progress), indexes the
    /// blobs already present (oldest mtime = least recently used) and evicts
    /// down to `max_bytes`.
    pub fn open(root: &Path, max_bytes: u64) -> Result<Self, CacheError> {
        let blobs_dir = root.join("blobs");
        let tmp_dir = root.join("tmp");
        for dir in [root, &blobs_dir, &tmp_dir] {
            create_private_dir(dir)?;
        }
        remove_stale_tmp(&tmp_dir, STALE_TMP_AGE);
        let entries = scan_blobs(&blobs_dir)?
            .into_iter()
            .map(|(hash, size, mtime)| (hash, Entry::on_disk(size, mtime)))
            .collect();
        let cache = Self {
            root: root.to_path_buf(),
            blobs_dir,
            tmp_dir,
            max_bytes,
            state: Mutex::new(IndexState {
                index: Index::from_entries(entries),
                scanned_at: Instant::now(),
                reserved: 0,
            }),
            flights: Flights::new(),
            hits: Default::default(),
            misses: Default::default(),
        };
        {
            let mut state = lock(&cache.state);
            cache.evict_to(&mut state.index, max_bytes);
        }
        Ok(cache)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob lives (or would live): `ROOT/blobs/ab/abcdef…`.
    pub fn path_of(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.as_str();
        self.blobs_dir.join(hex.get(..2).unwrap_or(hex)).join(hex)
    }

    /// Opens a cached blob for reading and marks it recently used: in this
    /// process's index, and on disk by touching its mtime at most once a
    /// minute so other processes' scans see the recency. `None` when absent,
    /// including when another process evicted it (it is then dropped from the
    /// index). Blobs that another process added are learned here; the first
    /// open of a small one this process did not write checks its bytes, and
    /// a torn one (left by a power loss) is removed and reported absent.
    pub fn open_blob(&self, hash: &BlobHash) -> Result<Option<File>, CacheError> {
        use std::sync::atomic::Ordering::Relaxed;
        let found = self.open_uncounted(hash, UNSYNCED_MAX)?;
        match found {
            Some(_) => self.hits.fetch_add(1, Relaxed),
            None => self.misses.fetch_add(1, Relaxed),
        };
        Ok(found)
    }

    /// The limit in bytes this cache evicts down to.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// [`BlobCache::open_blob`] without counting a hit or miss (the looks
    /// `get_or_fill` takes after the caller's own).
    /// Blobs of at most `hash_limit` bytes are hashed on this process's first
    /// open of them.
    fn open_uncounted(&self, hash: &BlobHash, hash_limit: u64) -> Result<Option<File>, CacheError> {
        let path = self.path_of(hash);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                lock(&self.state).index.remove(hash);
                return Ok(None);
            }
            Err(e) => return Err(CacheError::io(path, e)),
        };
        let now = SystemTime::now();
        let (touch, verified) = {
            let mut state = lock(&self.state);
            let touch = match state.index.promote(hash, now) {
                Some(touch) => touch,
                // Not ours yet: added by another process, or evicted by one of
                // our threads between the open and the lock. Index it only if
                // the name is still there; the descriptor is good either way.
                None => match fs::metadata(&path) {
                    Ok(meta) if meta.is_file() => {
                        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        let touch = needs_touch(mtime, now);
                        let disk_mtime = if touch { now } else { mtime };
                        state.index.insert(
                            hash.clone(),
                            Entry {
                                size: meta.len(),
                                last_used: now,
                                disk_mtime,
                                verified: false,
                            },
                        );
                        touch
                    }
                    _ => false,
                },
            };
            (touch, state.index.is_verified(hash))
        };
        if !verified && !self.check_bytes(hash, &path, &file, hash_limit)? {
            return Ok(None);
        }
        if touch {
            // Best effort: a failed touch only weakens other processes' LRU.
            if let Err(e) = file.set_modified(now) {
                debug!("cannot touch {}: {e}", path.display());
            }
        }
        Ok(Some(file))
    }

    /// Checks a blob this process did not write (see
    /// [`fill::check_on_open`]) and records the verdict in the index: only
    /// hashed bytes count as verified, so a chunk that a whole-file open
    /// trusted is still hashed when it is first opened as a chunk.
    fn check_bytes(&self, hash: &BlobHash, path: &Path, file: &File, hash_limit: u64) -> Result<bool, CacheError> {
        let verdict = fill::check_on_open(hash, path, file, hash_limit)?;
        let mut state = lock(&self.state);
        match verdict {
            Verdict::Intact => state.index.mark_verified(hash),
            Verdict::Trusted => {}
            Verdict::Torn => {
                state.index.remove(hash);
            }
        }
        Ok(verdict != Verdict::Torn)
    }

    /// Whether the blob is on disk right now (it may be evicted by another
    /// process a moment later; use [`BlobCache::open_blob`] to read it).
    pub fn contains(&self, hash: &BlobHash) -> bool {
        let present = fs::symlink_metadata(self.path_of(hash)).is_ok_and(|m| m.is_file());
        if !present {
            lock(&self.state).index.remove(hash);
        }
        present
    }

    /// Single-flight get-or-fill. If the blob is cached it is opened.
    /// Otherwise exactly one caller per hash in this process runs `fill`,
    /// which writes the bytes into the [`CacheFill`]; they are verified
    /// (blake3 must equal `hash`), fsynced if larger than [`UNSYNCED_MAX`], room is made by evicting LRU blobs,
    /// and the file is renamed into place and indexed. The filler gets a
    /// handle on the new file, and concurrent callers for the same hash then
    /// open it.
    ///
    /// If the fill fails (its own error, a hash mismatch, a full disk, a
    /// panic) nothing is left behind, the filler gets the error and the
    /// callers that were waiting on that fill get a copy of it (same variant
    /// and errno) without running their own `fill`: a server that is failing
    /// is asked once, not once per waiter. Later calls try again.
    ///
    /// Concurrent fills of one hash in different processes are not
    /// coordinated; both publish identical bytes and the last rename wins.
    pub fn get_or_fill<F>(&self, hash: &BlobHash, fill: F) -> Result<File, CacheError>
    where
        F: FnOnce(&mut CacheFill) -> Result<(), CacheError>,
    {
        self.get_or_fill_with(hash, UNSYNCED_MAX, None, fill)
    }

    /// [`BlobCache::get_or_fill`] for one chunk of a large file (see
    /// `crate::chunks`), of `size` bytes: a cached copy is hashed on this
    /// process's first open of it (a chunk is never served unchecked; one
    /// that does not match is removed and filled again), and room for
    /// `size` bytes is made before the fill starts, so blobs and fills in
    /// progress together stay within the limit. The fill does not start when
    /// the fills in progress would then hold more than `budget` bytes (a
    /// readahead, which can wait; a reader passes `u64::MAX`). Counts a hit
    /// or a miss.
    pub fn get_or_fill_chunk<F>(&self, hash: &BlobHash, size: u64, budget: u64, fill: F) -> Result<File, CacheError>
    where
        F: FnOnce(&mut CacheFill) -> Result<(), CacheError>,
    {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(file) = self.open_uncounted(hash, u64::MAX)? {
            self.hits.fetch_add(1, Relaxed);
            return Ok(file);
        }
        self.misses.fetch_add(1, Relaxed);
        self.get_or_fill_with(hash, u64::MAX, Some((size, budget)), fill)
    }

    /// Bytes promised to chunk fills in progress.
    pub fn reserved(&self) -> u64 {
        lock(&self.state).reserved
    }

    /// Whether a chunk is cached and already hashed by this process, so
    /// opening it costs no download and no hashing.
    pub fn has_checked(&self, hash: &BlobHash) -> bool {
        lock(&self.state).index.is_verified(hash) && self.contains(hash)
    }

    fn get_or_fill_with<F>(
        &self,
        hash: &BlobHash,
        hash_limit: u64,
        reserve: Option<(u64, u64)>,
        fill: F,
    ) -> Result<File, CacheError>
    where
        F: FnOnce(&mut CacheFill) -> Result<(), CacheError>,
    {
        let guard = loop {
            if let Some(file) = self.open_uncounted(hash, hash_limit)? {
                return Ok(file);
            }
            match self.flights.join(hash) {
                Role::Leader(guard) => break guard,
                // Success means the blob was published: loop to open it. If it
                // was evicted again in between, this caller fills it itself.
                Role::Waiter(flight) => flight.wait()?,
            }
        };
        self.fill_as_leader(guard, hash, hash_limit, reserve, fill)
            .map(|(file, _)| file)
    }

    /// The fill of `hash` by the leader of its flight (`guard`): the blob
    /// another leader published between our miss and our lead is opened
    /// (`false`: not filled by us), else `fill` runs and the blob is
    /// published (`true`). Ends the flight with the outcome.
    fn fill_as_leader<F>(
        &self,
        guard: FlightGuard<'_>,
        hash: &BlobHash,
        hash_limit: u64,
        reserve: Option<(u64, u64)>,
        fill: F,
    ) -> Result<(File, bool), CacheError>
    where
        F: FnOnce(&mut CacheFill) -> Result<(), CacheError>,
    {
        let result = match self.open_uncounted(hash, hash_limit) {
            Ok(Some(file)) => Ok((file, false)),
            Ok(None) => match reserve.map(|(size, budget)| self.reserve(size, budget)) {
                Some(None) => Err(CacheError::Busy { hash: hash.clone() }),
                Some(Some(reservation)) => {
                    self.fill_and_publish(hash, Some(&reservation), |pending: &mut CacheFill| {
                        // A chunk: hashed on every process's first open.
                        pending.skip_fsync();
                        fill(pending)
                    })
                }
                None => self.fill_and_publish(hash, None, fill),
            }
            .map(|file| (file, true)),
            Err(e) => Err(e),
        };
        guard.finish(&result);
        result
    }

    /// Inserts bytes already in memory, after checking they hash to `hash`.
    pub fn insert_bytes(&self, hash: &BlobHash, bytes: &[u8]) -> Result<(), CacheError> {
        let actual = BlobHash::of(bytes);
        if actual != *hash {
            return Err(CacheError::HashMismatch {
                expected: hash.clone(),
                actual,
            });
        }
        self.get_or_fill(hash, |fill| fill.write(bytes)).map(drop)
    }

    /// Offers the cache a copy of a local file (e.g. a staged write the
    /// server has now acknowledged), verifying the hash while copying. `src`
    /// is only read, never moved or linked, so later changes to it cannot
    /// corrupt the cache. If the blob is already cached, or being filled,
    /// `src` is not read at all (see [`BlobCache::offer`]).
    pub fn insert_file(&self, hash: &BlobHash, src: &Path) -> Result<Offered, CacheError> {
        self.offer(hash, |fill| copy_into(fill, src))
    }

    /// Offers a local file as the cache's copy of `hash` by hard-linking it,
    /// with no copy and no second hash: only for a file whose bytes were
    /// hashed to `hash` and that nobody changes again (a staging file the
    /// journal sealed when it was closed). Copies, checking the hash, where
    /// the cache is on another filesystem. Like [`BlobCache::offer`], never
    /// waits for another fill.
    pub fn insert_sealed_file(&self, hash: &BlobHash, src: &Path) -> Result<Offered, CacheError> {
        self.offer(hash, |fill| match fill.adopt(src, None)? {
            true => Ok(()),
            false => copy_into(fill, src),
        })
    }

    /// [`BlobCache::get_or_fill`] for bytes offered to the cache that the
    /// caller does not need back: when another thread of this process is
    /// filling `hash`, it answers [`Offered::BeingFilled`] at once instead
    /// of waiting for that fill. The mount seeds the cache from its sync
    /// worker's async runtime, and a reader's download of the same bytes
    /// needs that runtime to finish; a worker that waited for it could
    /// stop the download it waits for (and, the runtime's timers with it,
    /// every timeout that would have ended the wait).
    fn offer<F>(&self, hash: &BlobHash, fill: F) -> Result<Offered, CacheError>
    where
        F: FnOnce(&mut CacheFill) -> Result<(), CacheError>,
    {
        if self.open_uncounted(hash, UNSYNCED_MAX)?.is_some() {
            return Ok(Offered::AlreadyCached);
        }
        let guard = match self.flights.join(hash) {
            Role::Leader(guard) => guard,
            Role::Waiter(_) => return Ok(Offered::BeingFilled),
        };
        self.fill_as_leader(guard, hash, UNSYNCED_MAX, None, fill)
            .map(|(_, filled)| {
                if filled {
                    Offered::Filled
                } else {
                    Offered::AlreadyCached
                }
            })
    }

    /// Makes `src`, a file that nobody but the caller can reach or change
    /// any more (a retired staging file), the cache's copy of `hash` by a
    /// hard link: no copy, and no inode made or freed. Its bytes are hashed
    /// first through `src_file`, so a file that does not match is left
    /// alone. The caller keeps `src` unless the answer is
    /// [`Adoption::Linked`].
    pub fn adopt_owned_file(&self, hash: &BlobHash, src_file: &File, src: &Path) -> Result<Adoption, CacheError> {
        if self.contains(hash) {
            return Ok(Adoption::AlreadyCached);
        }
        // Callers adopt small files: a buffer malloc takes from its heap.
        let actual = fill::hash_by_position(src_file, 64 * 1024).map_err(|e| CacheError::io(src, e))?;
        if actual != *hash {
            debug!(
                "{} holds {actual}, not {hash}: not adopted into the cache",
                src.display()
            );
            return Ok(Adoption::NotLinked);
        }
        // Its mtime is the workspace file's (tar, cp -p): as a cache entry it
        // must read as just used, or it would be evicted first, and a cache
        // temp file that old would be removed as stale mid-publish.
        if let Err(e) = src_file.set_modified(SystemTime::now()) {
            debug!("cannot touch {}: {e}", src.display());
        }
        let mut linked = false;
        let outcome = self.offer(hash, |fill| {
            linked = fill.adopt(src, Some(src_file))?;
            if linked {
                Ok(())
            } else {
                Err(CacheError::io(src, io::Error::other("cannot be linked into the cache")))
            }
        });
        match outcome {
            Ok(Offered::Filled) if linked => Ok(Adoption::Linked),
            // Another thread published it meanwhile.
            Ok(Offered::Filled | Offered::AlreadyCached) => Ok(Adoption::AlreadyCached),
            Ok(Offered::BeingFilled) => Ok(Adoption::BeingFilled),
            Err(_) if !linked => Ok(Adoption::NotLinked),
            Err(e) => Err(e),
        }
    }

    /// `(hits, misses)` of [`BlobCache::open_blob`] in this process.
    pub fn hit_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// `(bytes used, limit, number of blobs)` as this process sees the
    /// directory (other processes' recent changes show up after a resync).
    pub fn usage(&self) -> (u64, u64, usize) {
        let state = lock(&self.state);
        (state.index.used(), self.max_bytes, state.index.len())
    }

    /// Rescans the directory: learns blobs other processes added, forgets the
    /// ones they evicted, removes stale temp files and evicts down to the
    /// limit. Inserts call it every few minutes on their own.
    pub fn resync(&self) -> Result<(), CacheError> {
        remove_stale_tmp(&self.tmp_dir, STALE_TMP_AGE);
        // Scan without the lock: readers must not wait on a directory walk.
        let scan = scan_blobs(&self.blobs_dir)?;
        let mut state = lock(&self.state);
        state.scanned_at = Instant::now();
        state.index.merge_scan(scan, |hash| {
            fs::symlink_metadata(self.path_of(hash)).is_ok_and(|m| m.is_file())
        });
        self.evict_to(&mut state.index, self.max_bytes);
        Ok(())
    }

    fn fill_and_publish<F>(
        &self,
        hash: &BlobHash,
        reservation: Option<&Reservation<'_>>,
        fill: F,
    ) -> Result<File, CacheError>
    where
        F: FnOnce(&mut CacheFill) -> Result<(), CacheError>,
    {
        let mut pending = CacheFill::create(&self.tmp_dir, hash)?;
        fill(&mut pending)?;
        let reader = pending.seal(hash)?;
        self.publish(hash, pending, reservation)?;
        Ok(reader)
    }

    /// Promises `size` bytes to a fill about to start, evicting to make
    /// room; `None` when fills in progress would then hold over `budget`.
    fn reserve(&self, size: u64, budget: u64) -> Option<Reservation<'_>> {
        let mut state = lock(&self.state);
        if state.reserved.saturating_add(size) > budget {
            return None;
        }
        state.reserved = state.reserved.saturating_add(size);
        let target = self.max_bytes.saturating_sub(state.reserved);
        self.evict_to(&mut state.index, target);
        Some(Reservation {
            cache: self,
            size: std::sync::atomic::AtomicU64::new(size),
        })
    }

    /// Makes room for a sealed fill, then renames it into place and indexes
    /// it. A blob larger than the whole limit is still stored, after evicting
    /// everything else; the next insert evicts it in turn.
    fn publish(
        &self,
        hash: &BlobHash,
        mut pending: CacheFill,
        reservation: Option<&Reservation<'_>>,
    ) -> Result<(), CacheError> {
        let target = self.path_of(hash);
        self.resync_if_due();
        let size = pending.written();
        let mut state = lock(&self.state);
        // The blob now counts in the index instead of as a promise.
        if let Some(reservation) = reservation {
            let promised = reservation.size.swap(0, std::sync::atomic::Ordering::Relaxed);
            state.reserved = state.reserved.saturating_sub(promised);
        }
        // A racing publisher of the same hash (another process) is replaced,
        // not double-counted.
        state.index.remove(hash);
        let room = self.max_bytes.saturating_sub(size).saturating_sub(state.reserved);
        self.evict_to(&mut state.index, room);
        pending.rename_to(&target)?;
        let now = SystemTime::now();
        state.index.insert(
            hash.clone(),
            Entry {
                size,
                last_used: now,
                disk_mtime: now,
                // Its bytes were hashed on the way in.
                verified: true,
            },
        );
        Ok(())
    }

    fn resync_if_due(&self) {
        let due = {
            let mut state = lock(&self.state);
            let due = state.scanned_at.elapsed() >= RESYNC_INTERVAL;
            if due {
                // Claim it so concurrent inserts do not all rescan.
                state.scanned_at = Instant::now();
            }
            due
        };
        if due {
            if let Err(e) = self.resync() {
                warn!("cannot rescan blob cache {}: {e}", self.root.display());
            }
        }
    }

    /// Deletes least recently used blobs until the index holds at most
    /// `target` bytes. Runs under the index lock so no thread of this process
    /// can publish a blob that is being deleted.
    fn evict_to(&self, index: &mut Index, target: u64) {
        while index.used() > target {
            let Some((victim, entry)) = index.pop_lru() else { break };
            let path = self.path_of(&victim);
            match fs::remove_file(&path) {
                Ok(()) => debug!("evicted {victim} ({} bytes) from the blob cache", entry.size),
                // Another process evicted it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!("cannot evict {}: {e}", path.display()),
            }
        }
    }
}

/// What [`BlobCache::adopt_owned_file`] did with the file it was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// The file is the cache's copy now, under a second name.
    Linked,
    /// The cache had the blob already; the file was not touched.
    AlreadyCached,
    /// Another thread of this process is filling the blob (a reader's
    /// download); the file was not touched and the caller did not wait.
    BeingFilled,
    /// Its bytes do not match, or it cannot be linked (another filesystem).
    NotLinked,
}

/// What [`BlobCache::insert_file`] and [`BlobCache::insert_sealed_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// The offered bytes are the cache's copy now.
    Filled,
    /// The cache had the blob already.
    AlreadyCached,
    /// Another thread of this process is filling the blob; nothing was done
    /// and nobody waited.
    BeingFilled,
}

/// Room promised to one fill; given back when the fill publishes or fails.
struct Reservation<'a> {
    cache: &'a BlobCache,
    size: std::sync::atomic::AtomicU64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let left = *self.size.get_mut();
        if left > 0 {
            let mut state = lock(&self.cache.state);
            state.reserved = state.reserved.saturating_sub(left);
        }
    }
}

/// Copies `src` into `fill` (which hashes it on the way).
fn copy_into(fill: &mut CacheFill, src: &Path) -> Result<(), CacheError> {
    let mut input = File::open(src).map_err(|e| CacheError::io(src, e))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CacheError::io(src, e)),
        };
        fill.write(&buf[..n])?;
    }
}

#[cfg(test)]
pub(super) mod tests;
