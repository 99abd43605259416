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
//! not write itself. A torn blob is then removed and fetched again.
//!
//! Several processes may use one root at once. There is no lock file: each
//! process keeps its own LRU index (rebuilt from the directory on open and
//! resynced every few minutes, ordered by file mtime), readers refresh a
//! blob's mtime at most once a minute so the others see the recency, and
//! every operation tolerates a blob vanishing underneath it (Linux keeps an
//! unlinked file readable through open descriptors; a later open just misses
//! and refills). Only clean content that is already on the server lives here,
//! so anything may be evicted at any time.

mod index;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use crate::model::BlobHash;
use index::{needs_touch, Entry, Index};

/// Temp files younger than this may belong to a fill running in another
/// process right now, so startup cleanup leaves them alone.
const STALE_TMP_AGE: Duration = Duration::from_secs(60 * 60);
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

/// Creates a directory (and parents) readable only by the owner: cached
/// blobs are workspace contents.
fn create_private_dir(dir: &Path) -> Result<(), CacheError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CacheError::io(dir, e))
}

/// `$XDG_CACHE_HOME/contextfs`, else `$HOME/.cache/contextfs`, else a
/// per-user directory under the system temp dir. Relative values are ignored,
/// as the XDG spec requires.
fn root_from_env(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(xdg) = absolute(xdg_cache_home) {
        return xdg.join("contextfs");
    }
    if let Some(home) = absolute(home) {
        return home.join(".cache").join("contextfs");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("contextfs-{uid}")).join("contextfs")
}

/// Lists every well-formed blob under `blobs_dir` as `(hash, size, mtime)`.
/// Entries that vanish mid-scan (another process evicting) are skipped.
fn scan_blobs(blobs_dir: &Path) -> Result<Vec<(BlobHash, u64, SystemTime)>, CacheError> {
    let mut out = Vec::new();
    let prefixes = fs::read_dir(blobs_dir).map_err(|e| CacheError::io(blobs_dir, e))?;
    for prefix in prefixes {
        let prefix = match prefix {
            Ok(p) => p,
            Err(e) => {
                warn!("skipping unreadable entry in {}: {e}", blobs_dir.display());
                continue;
            }
        };
        let prefix_name = prefix.file_name();
        let Some(prefix_name) = prefix_name.to_str() else {
            continue;
        };
        if prefix_name.len() != 2 {
            continue;
        }
        let files = match fs::read_dir(prefix.path()) {
            Ok(files) => files,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!("skipping unreadable cache directory {}: {e}", prefix.path().display());
                }
                continue;
            }
        };
        for file in files.flatten() {
            let name = file.file_name();
            let Some(hash) = name.to_str().and_then(|n| BlobHash::parse(n).ok()) else {
                continue;
            };
            if !hash.as_str().starts_with(prefix_name) {
                continue;
            }
            // DirEntry::metadata does not follow symlinks; only plain files count.
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((hash, meta.len(), mtime));
        }
    }
    Ok(out)
}

/// Deletes temp files left by fills that died (crash, kill) long ago.
fn remove_stale_tmp(tmp_dir: &Path, max_age: Duration) {
    let entries = match fs::read_dir(tmp_dir) {
        Ok(entries) => entries,
        Err(e) => {
            warn!("cannot list {}: {e}", tmp_dir.display());
            return;
        }
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let Ok(mtime) = meta.modified() else { continue };
        let stale = now.duration_since(mtime).is_ok_and(|age| age > max_age);
        if !meta.is_file() || !stale {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => debug!("removed stale cache temp file {}", entry.path().display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot remove stale cache temp file {}: {e}", entry.path().display()),
        }
    }
}

/// This process's view of the directory plus when it was last rescanned.
struct IndexState {
    index: Index,
    scanned_at: Instant,
}

/// The shared outcome of one in-progress fill.
struct Flight {
    outcome: Mutex<Option<Result<(), CacheError>>>,
    done: Condvar,
}

impl Flight {
    fn wait(&self) -> Result<(), CacheError> {
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(result) = outcome.as_ref() {
                return result.as_ref().map(|_| ()).map_err(CacheError::duplicate);
            }
            outcome = self.done.wait(outcome).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

enum Role<'a> {
    Leader(FlightGuard<'a>),
    Waiter(Arc<Flight>),
}

/// Held by the thread running a fill. Dropping it (also by panic) retires the
/// flight and wakes the waiters, so nobody blocks forever.
struct FlightGuard<'a> {
    cache: &'a BlobCache,
    hash: BlobHash,
    flight: Arc<Flight>,
    outcome: Option<Result<(), CacheError>>,
}

impl FlightGuard<'_> {
    fn finish(mut self, result: &Result<File, CacheError>) {
        self.outcome = Some(result.as_ref().map(|_| ()).map_err(CacheError::duplicate));
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        // Retire first: a caller arriving from now on must look at the disk
        // (or start a new fill), not wait on a finished flight.
        {
            let mut flights = lock(&self.cache.flights);
            if flights.get(&self.hash).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                flights.remove(&self.hash);
            }
        }
        let outcome = self.outcome.take().unwrap_or_else(|| {
            Err(CacheError::Fetch {
                hash: self.hash.clone(),
                message: "the thread filling the cache panicked".to_string(),
            })
        });
        *lock(&self.flight.outcome) = Some(outcome);
        self.flight.done.notify_all();
    }
}

/// Distinguishes temp files of concurrent fills within one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The destination of one fill: a temp file that is hashed as it is written.
/// Dropped without being published, it deletes its temp file.
pub struct CacheFill {
    file: File,
    path: PathBuf,
    hasher: blake3::Hasher,
    written: u64,
    published: bool,
}

impl CacheFill {
    fn create(tmp_dir: &Path, hash: &BlobHash) -> Result<Self, CacheError> {
        let prefix = hash.as_str().get(..16).unwrap_or(hash.as_str());
        let mut recreated = false;
        loop {
            // The pid keeps processes apart; create_new settles the rare
            // collision (e.g. containers sharing the directory) by retrying.
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = tmp_dir.join(format!("{prefix}.{}.{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        path,
                        hasher: blake3::Hasher::new(),
                        written: 0,
                        published: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                // Someone removed the cache directory under a running mount:
                // recreate it once rather than failing every read from now on.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !recreated => {
                    recreated = true;
                    create_private_dir(tmp_dir)?;
                }
                Err(e) => return Err(CacheError::io(path, e)),
            }
        }
    }

    /// Appends a chunk. A full disk is reported as [`CacheError::NoSpace`].
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), CacheError> {
        self.file.write_all(chunk).map_err(|e| CacheError::io(&self.path, e))?;
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks the hash and, above [`UNSYNCED_MAX`], makes the bytes durable,
    /// so the rename that follows cannot expose a torn blob after a crash
    /// (smaller ones are checked when opened instead). Returns a read handle
    /// on the same inode, which stays valid even if the blob is evicted at once.
    fn seal(&mut self, expected: &BlobHash) -> Result<File, CacheError> {
        let actual = BlobHash::from_blake3(self.hasher.finalize());
        if actual != *expected {
            return Err(CacheError::HashMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        if self.written > UNSYNCED_MAX {
            self.file.sync_all().map_err(|e| CacheError::io(&self.path, e))?;
        }
        File::open(&self.path).map_err(|e| CacheError::io(&self.path, e))
    }
}

impl Drop for CacheFill {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot remove cache temp file {}: {e}", self.path.display()),
        }
    }
}

/// The cache handle of one process; `Send + Sync`, meant to be shared behind
/// an `Arc` by every thread of the mount.
pub struct BlobCache {
    root: PathBuf,
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    max_bytes: u64,
    state: Mutex<IndexState>,
    flights: Mutex<HashMap<BlobHash, Arc<Flight>>>,
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
            }),
            flights: Mutex::new(HashMap::new()),
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
        if !verified && !self.check_bytes(hash, &path, &file)? {
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

    /// The first open of a blob this process did not write: a blob of at
    /// most [`UNSYNCED_MAX`] bytes may have been published without an fsync,
    /// so its bytes are hashed (with positioned reads: `file`'s offset stays
    /// at 0). False when they do not match, after removing the blob, unless
    /// another process already replaced it with a new file.
    fn check_bytes(&self, hash: &BlobHash, path: &Path, file: &File) -> Result<bool, CacheError> {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let meta = file.metadata().map_err(|e| CacheError::io(path, e))?;
        if meta.len() <= UNSYNCED_MAX {
            let mut bytes = vec![0u8; meta.len() as usize];
            let mut read = 0;
            while read < bytes.len() {
                match file.read_at(&mut bytes[read..], read as u64) {
                    Ok(0) => break,
                    Ok(n) => read += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(CacheError::io(path, e)),
                }
            }
            bytes.truncate(read);
            let actual = BlobHash::of(&bytes);
            if actual != *hash {
                warn!(
                    "cached blob {} holds bytes hashing to {actual} (torn by a crash?); removing it",
                    path.display()
                );
                let same_file =
                    fs::symlink_metadata(path).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
                if same_file {
                    if let Err(e) = fs::remove_file(path) {
                        debug!("cannot remove {}: {e}", path.display());
                    }
                }
                lock(&self.state).index.remove(hash);
                return Ok(false);
            }
        }
        lock(&self.state).index.mark_verified(hash);
        Ok(true)
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
        let guard = loop {
            if let Some(file) = self.open_blob(hash)? {
                return Ok(file);
            }
            match self.join_flight(hash) {
                Role::Leader(guard) => break guard,
                // Success means the blob was published: loop to open it. If it
                // was evicted again in between, this caller fills it itself.
                Role::Waiter(flight) => flight.wait()?,
            }
        };
        // Another leader may have published between our miss and our lead.
        let result = match self.open_blob(hash) {
            Ok(Some(file)) => Ok(file),
            Ok(None) => self.fill_and_publish(hash, fill),
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

    /// Inserts a copy of a local file (e.g. a staged write the server has now
    /// acknowledged), verifying the hash while copying. `src` is only read,
    /// never moved or linked, so later changes to it cannot corrupt the
    /// cache. If the blob is already cached, `src` is not read at all.
    pub fn insert_file(&self, hash: &BlobHash, src: &Path) -> Result<(), CacheError> {
        self.get_or_fill(hash, |fill| {
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
        })
        .map(drop)
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

    fn join_flight(&self, hash: &BlobHash) -> Role<'_> {
        let mut flights = lock(&self.flights);
        if let Some(flight) = flights.get(hash) {
            return Role::Waiter(Arc::clone(flight));
        }
        let flight = Arc::new(Flight {
            outcome: Mutex::new(None),
            done: Condvar::new(),
        });
        flights.insert(hash.clone(), Arc::clone(&flight));
        Role::Leader(FlightGuard {
            cache: self,
            hash: hash.clone(),
            flight,
            outcome: None,
        })
    }

    fn fill_and_publish<F>(&self, hash: &BlobHash, fill: F) -> Result<File, CacheError>
    where
        F: FnOnce(&mut CacheFill) -> Result<(), CacheError>,
    {
        let mut pending = CacheFill::create(&self.tmp_dir, hash)?;
        fill(&mut pending)?;
        let reader = pending.seal(hash)?;
        self.publish(hash, pending)?;
        Ok(reader)
    }

    /// Makes room for a sealed fill, then renames it into place and indexes
    /// it. A blob larger than the whole limit is still stored, after evicting
    /// everything else; the next insert evicts it in turn.
    fn publish(&self, hash: &BlobHash, mut pending: CacheFill) -> Result<(), CacheError> {
        let target = self.path_of(hash);
        if let Some(parent) = target.parent() {
            create_private_dir(parent)?;
        }
        self.resync_if_due();
        let size = pending.written;
        let mut state = lock(&self.state);
        // A racing publisher of the same hash (another process) is replaced,
        // not double-counted.
        state.index.remove(hash);
        self.evict_to(&mut state.index, self.max_bytes.saturating_sub(size));
        fs::rename(&pending.path, &target).map_err(|e| CacheError::io(&target, e))?;
        pending.published = true;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;

    fn read_all(mut file: File) -> Vec<u8> {
        let mut out = Vec::new();
        file.read_to_end(&mut out).expect("read cached blob");
        out
    }

    fn tmp_files(cache: &BlobCache) -> Vec<PathBuf> {
        fs::read_dir(&cache.tmp_dir)
            .expect("list tmp")
            .map(|e| e.expect("tmp entry").path())
            .collect()
    }

    fn blob_files(cache: &BlobCache) -> usize {
        scan_blobs(&cache.blobs_dir).expect("scan").len()
    }

    fn set_mtime(path: &Path, mtime: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
    }

    /// Blocks until `waiters` other threads have joined the flight for `hash`
    /// (each holds a clone of its Arc), so single-flight tests are not timing
    /// dependent.
    fn wait_for_waiters(cache: &BlobCache, hash: &BlobHash, waiters: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let count = lock(&cache.flights).get(hash).map(Arc::strong_count).unwrap_or(0);
            // One reference in the map, one in the leader's guard.
            if count >= waiters + 2 {
                return;
            }
            assert!(Instant::now() < deadline, "waiters never joined ({count})");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn cache_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<BlobCache>();
        check::<CacheError>();
    }

    #[test]
    fn default_root_follows_xdg_then_home() {
        assert_eq!(
            root_from_env(Some("/x/cache".into()), Some("/home/u".into())),
            PathBuf::from("/x/cache/contextfs")
        );
        assert_eq!(
            root_from_env(Some("relative".into()), Some("/home/u".into())),
            PathBuf::from("/home/u/.cache/contextfs")
        );
        assert_eq!(
            root_from_env(None, Some("/home/u".into())),
            PathBuf::from("/home/u/.cache/contextfs")
        );
        let fallback = root_from_env(None, None);
        assert!(
            fallback.is_absolute() && fallback.ends_with("contextfs"),
            "{fallback:?}"
        );
        assert!(BlobCache::default_root().ends_with("contextfs"));
    }

    #[test]
    fn fill_then_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        let content = b"hello, cached world".repeat(100);
        let hash = BlobHash::of(&content);
        assert!(!cache.contains(&hash));
        assert!(cache.open_blob(&hash).expect("open_blob").is_none());

        let file = cache
            .get_or_fill(&hash, |fill| {
                for chunk in content.chunks(700) {
                    fill.write(chunk)?;
                }
                assert_eq!(fill.written(), content.len() as u64);
                Ok(())
            })
            .expect("fill");
        assert_eq!(read_all(file), content);
        assert!(cache.contains(&hash));
        assert!(cache.path_of(&hash).is_file());
        assert!(cache
            .path_of(&hash)
            .starts_with(dir.path().join("blobs").join(&hash.as_str()[..2])));
        assert_eq!(cache.usage(), (content.len() as u64, 1 << 20, 1));
        assert!(tmp_files(&cache).is_empty());

        let reopened = cache.open_blob(&hash).expect("open_blob").expect("present");
        assert_eq!(read_all(reopened), content);
        // Present: the fill closure is not called again.
        let again = cache
            .get_or_fill(&hash, |_| panic!("must not refill a cached blob"))
            .expect("hit");
        assert_eq!(read_all(again), content);
    }

    #[test]
    fn hash_mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        let expected = BlobHash::of(b"the real content");
        let err = cache
            .get_or_fill(&expected, |fill| fill.write(b"something else"))
            .expect_err("mismatch");
        match &err {
            CacheError::HashMismatch { expected: e, actual } => {
                assert_eq!(e, &expected);
                assert_eq!(actual, &BlobHash::of(b"something else"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.errno(), libc::EIO);
        assert!(!cache.path_of(&expected).exists());
        assert!(tmp_files(&cache).is_empty());
        assert_eq!(cache.usage(), (0, 1 << 20, 0));

        let err = cache.insert_bytes(&expected, b"wrong").expect_err("mismatch");
        assert!(matches!(err, CacheError::HashMismatch { .. }));
        assert!(!cache.contains(&expected));
        assert!(tmp_files(&cache).is_empty());
    }

    #[test]
    fn failed_fill_leaves_nothing_and_is_retried_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        let hash = BlobHash::of(b"payload");
        let err = cache
            .get_or_fill(&hash, |fill| {
                fill.write(b"pay")?;
                Err(CacheError::Fetch {
                    hash: hash.clone(),
                    message: "connection reset".into(),
                })
            })
            .expect_err("fill fails");
        assert!(matches!(err, CacheError::Fetch { .. }), "{err:?}");
        assert!(tmp_files(&cache).is_empty());
        assert!(!cache.contains(&hash));
        // A panicking fill also cleans up and does not wedge the hash.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = cache.get_or_fill(&hash, |fill| {
                fill.write(b"pay")?;
                panic!("fill blew up")
            });
        }));
        assert!(panicked.is_err());
        assert!(tmp_files(&cache).is_empty());
        assert!(lock(&cache.flights).is_empty());

        let file = cache.get_or_fill(&hash, |fill| fill.write(b"payload")).expect("retry");
        assert_eq!(read_all(file), b"payload");
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blob = |c: u8| vec![c; 100];
        // Room for three 100-byte blobs.
        let cache = BlobCache::open(dir.path(), 300).expect("open");
        let (a, b, c, d) = (blob(b'a'), blob(b'b'), blob(b'c'), blob(b'd'));
        let (ha, hb, hc, hd) = (BlobHash::of(&a), BlobHash::of(&b), BlobHash::of(&c), BlobHash::of(&d));
        cache.insert_bytes(&ha, &a).expect("a");
        cache.insert_bytes(&hb, &b).expect("b");
        cache.insert_bytes(&hc, &c).expect("c");
        assert_eq!(cache.usage(), (300, 300, 3));
        // Touch a: b becomes the least recently used.
        assert!(cache.open_blob(&ha).expect("open a").is_some());
        cache.insert_bytes(&hd, &d).expect("d");
        assert!(!cache.contains(&hb), "b should be evicted");
        assert!(!cache.path_of(&hb).exists());
        for h in [&ha, &hc, &hd] {
            assert!(cache.contains(h));
        }
        assert_eq!(cache.usage(), (300, 300, 3));
        assert_eq!(blob_files(&cache), 3);
    }

    #[test]
    fn oversized_blob_is_stored_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 100).expect("open");
        let small = vec![1u8; 40];
        let big = vec![2u8; 250];
        cache.insert_bytes(&BlobHash::of(&small), &small).expect("small");
        cache.insert_bytes(&BlobHash::of(&big), &big).expect("big");
        assert!(!cache.contains(&BlobHash::of(&small)));
        assert!(cache.contains(&BlobHash::of(&big)));
        assert_eq!(cache.usage(), (250, 100, 1));
        // The next insert pushes the oversized one out.
        cache.insert_bytes(&BlobHash::of(&small), &small).expect("small again");
        assert!(!cache.contains(&BlobHash::of(&big)));
        assert_eq!(cache.usage(), (40, 100, 1));
    }

    #[test]
    fn second_instance_shares_blobs_and_survives_eviction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = BlobCache::open(dir.path(), 200).expect("open one");
        let two = BlobCache::open(dir.path(), 200).expect("open two");
        let x = vec![b'x'; 100];
        let hx = BlobHash::of(&x);
        one.insert_bytes(&hx, &x).expect("insert x");

        // The other "process" sees it and learns it.
        assert!(two.contains(&hx));
        let seen = two.open_blob(&hx).expect("open").expect("present in two");
        assert_eq!(read_all(seen), x);
        assert_eq!(two.usage(), (100, 200, 1));

        // One evicts x to make room for y and z.
        for c in [b'y', b'z'] {
            let v = vec![c; 100];
            one.insert_bytes(&BlobHash::of(&v), &v).expect("insert");
        }
        assert!(!one.path_of(&hx).exists());

        // Two misses, forgets it and refills without trouble.
        assert!(two.open_blob(&hx).expect("open").is_none());
        assert_eq!(two.usage(), (0, 200, 0));
        let refilled = two.get_or_fill(&hx, |fill| fill.write(&x)).expect("refill");
        assert_eq!(read_all(refilled), x);
        assert!(one.open_blob(&hx).expect("open").is_some());
    }

    #[test]
    fn a_small_blob_torn_by_a_crash_is_caught_on_open_and_fetched_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = b"# notes\nwritten by an agent just before the power went\n".to_vec();
        let hash = BlobHash::of(&bytes);
        {
            let before = BlobCache::open(dir.path(), 1 << 20).expect("open");
            before.insert_bytes(&hash, &bytes).expect("insert");
        }
        // What a power loss can leave of an unsynced small blob: the name,
        // with the right size but bytes that never reached the disk.
        fs::write(
            dir.path().join("blobs").join(&hash.as_str()[..2]).join(hash.as_str()),
            vec![0u8; bytes.len()],
        )
        .expect("tear the blob");

        let after = BlobCache::open(dir.path(), 1 << 20).expect("open after the crash");
        assert!(
            after.contains(&hash),
            "the torn file is still there before anyone opens it"
        );
        assert!(
            after.open_blob(&hash).expect("open").is_none(),
            "a torn blob must never be served"
        );
        assert!(!after.path_of(&hash).exists(), "the torn blob is removed");
        assert_eq!(after.usage(), (0, 1 << 20, 0));
        let refilled = after
            .get_or_fill(&hash, |fill| fill.write(&bytes))
            .expect("fetch again");
        assert_eq!(read_all(refilled), bytes);
        assert_eq!(read_all(after.open_blob(&hash).expect("open").expect("present")), bytes);
    }

    #[test]
    fn a_small_blob_of_another_process_is_checked_once_and_read_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = BlobCache::open(dir.path(), 1 << 20).expect("open writer");
        let reader = BlobCache::open(dir.path(), 1 << 20).expect("open reader");
        let bytes = vec![b'k'; UNSYNCED_MAX as usize];
        let hash = BlobHash::of(&bytes);
        writer.insert_bytes(&hash, &bytes).expect("insert");
        assert!(!reader.state.lock().expect("state").index.is_verified(&hash));
        // The check reads with positioned reads: the caller still reads it all.
        assert_eq!(
            read_all(reader.open_blob(&hash).expect("open").expect("present")),
            bytes
        );
        assert!(reader.state.lock().expect("state").index.is_verified(&hash));
        assert!(writer.state.lock().expect("state").index.is_verified(&hash));
    }

    #[test]
    fn resync_enforces_the_limit_across_instances() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = BlobCache::open(dir.path(), 200).expect("open one");
        let two = BlobCache::open(dir.path(), 200).expect("open two");
        let blobs: Vec<Vec<u8>> = [b'a', b'b', b'c', b'd'].iter().map(|&c| vec![c; 100]).collect();
        let hashes: Vec<BlobHash> = blobs.iter().map(|b| BlobHash::of(b)).collect();
        one.insert_bytes(&hashes[0], &blobs[0]).expect("a");
        one.insert_bytes(&hashes[1], &blobs[1]).expect("b");
        two.insert_bytes(&hashes[2], &blobs[2]).expect("c");
        two.insert_bytes(&hashes[3], &blobs[3]).expect("d");
        // Make two's blobs unambiguously newer than one's last uses.
        let later = SystemTime::now() + Duration::from_secs(10);
        set_mtime(&one.path_of(&hashes[2]), later);
        set_mtime(&one.path_of(&hashes[3]), later);
        assert_eq!(blob_files(&one), 4);

        one.resync().expect("resync");
        assert_eq!(blob_files(&one), 2);
        assert!(!one.contains(&hashes[0]) && !one.contains(&hashes[1]));
        assert!(one.contains(&hashes[2]) && one.contains(&hashes[3]));
        assert_eq!(one.usage(), (200, 200, 2));
    }

    #[test]
    fn single_flight_fills_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(BlobCache::open(dir.path(), 1 << 20).expect("open"));
        let content: Arc<Vec<u8>> = Arc::new((0..100_000u32).map(|i| (i % 251) as u8).collect());
        let hash = BlobHash::of(&content);
        let fills = Arc::new(AtomicUsize::new(0));
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (cache, content, hash, fills, barrier) = (
                    Arc::clone(&cache),
                    Arc::clone(&content),
                    hash.clone(),
                    Arc::clone(&fills),
                    Arc::clone(&barrier),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    let file = cache
                        .get_or_fill(&hash, |fill| {
                            fills.fetch_add(1, Ordering::SeqCst);
                            wait_for_waiters(&cache, &hash, threads - 1);
                            fill.write(&content)
                        })
                        .expect("get_or_fill");
                    read_all(file)
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().expect("thread"), *content);
        }
        assert_eq!(fills.load(Ordering::SeqCst), 1);
        assert_eq!(cache.usage(), (content.len() as u64, 1 << 20, 1));
        assert!(lock(&cache.flights).is_empty());
    }

    #[test]
    fn single_flight_failure_is_shared_with_waiters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Arc::new(BlobCache::open(dir.path(), 1 << 20).expect("open"));
        let hash = BlobHash::of(b"never arrives");
        let fills = Arc::new(AtomicUsize::new(0));
        let threads = 4;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (cache, hash, fills, barrier) = (
                    Arc::clone(&cache),
                    hash.clone(),
                    Arc::clone(&fills),
                    Arc::clone(&barrier),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    cache
                        .get_or_fill(&hash, |fill| {
                            fills.fetch_add(1, Ordering::SeqCst);
                            wait_for_waiters(&cache, &hash, threads - 1);
                            fill.write(b"partial")?;
                            Err(CacheError::Io {
                                path: PathBuf::from("/remote"),
                                source: io::Error::from_raw_os_error(libc::ECONNRESET),
                            })
                        })
                        .expect_err("fill fails")
                })
            })
            .collect();
        for handle in handles {
            let err = handle.join().expect("thread");
            assert!(matches!(&err, CacheError::Io { source, .. } if source.raw_os_error() == Some(libc::ECONNRESET)));
        }
        assert_eq!(fills.load(Ordering::SeqCst), 1);
        assert!(tmp_files(&cache).is_empty());
        assert!(!cache.contains(&hash));
    }

    #[test]
    fn insert_file_copies_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(&dir.path().join("cache"), 1 << 24).expect("open");
        let src = dir.path().join("staged");
        // Several copy chunks long.
        let content: Vec<u8> = (0..(COPY_CHUNK * 3 + 17)).map(|i| (i * 7 % 256) as u8).collect();
        fs::write(&src, &content).expect("write src");
        let hash = BlobHash::of(&content);
        cache.insert_file(&hash, &src).expect("insert_file");
        let cached = cache.open_blob(&hash).expect("open").expect("present");
        assert_eq!(read_all(cached), content);
        assert_eq!(fs::read(&src).expect("src still there"), content);
        assert_eq!(cache.usage().0, content.len() as u64);

        let wrong = BlobHash::of(b"not the file");
        let err = cache.insert_file(&wrong, &src).expect_err("mismatch");
        assert!(matches!(err, CacheError::HashMismatch { .. }));
        assert!(!cache.contains(&wrong));
        assert!(tmp_files(&cache).is_empty());

        let missing = dir.path().join("missing");
        match cache
            .insert_file(&BlobHash::of(b"m"), &missing)
            .expect_err("missing src")
        {
            CacheError::Io { path, source } => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(tmp_files(&cache).is_empty());
    }

    #[test]
    fn reopen_rebuilds_usage_and_evicts_oldest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (old, new) = (vec![b'o'; 100], vec![b'n'; 150]);
        let (h_old, h_new) = (BlobHash::of(&old), BlobHash::of(&new));
        {
            let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
            cache.insert_bytes(&h_new, &new).expect("new");
            cache.insert_bytes(&h_old, &old).expect("old");
            let now = SystemTime::now();
            set_mtime(&cache.path_of(&h_old), now - Duration::from_secs(3600));
            set_mtime(&cache.path_of(&h_new), now - Duration::from_secs(60));
        }
        // Junk that is not a blob is ignored.
        fs::write(dir.path().join("blobs").join("README"), b"x").expect("junk");
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(cache.usage(), (250, 1 << 20, 2));
        drop(cache);

        // A smaller limit evicts by mtime, oldest first.
        let cache = BlobCache::open(dir.path(), 200).expect("reopen smaller");
        assert_eq!(cache.usage(), (150, 200, 1));
        assert!(!cache.contains(&h_old));
        assert!(cache.contains(&h_new));
    }

    #[test]
    fn open_removes_only_stale_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp).expect("mkdir");
        let (stale, young) = (tmp.join("stale"), tmp.join("young"));
        fs::write(&stale, b"old fill").expect("stale");
        fs::write(&young, b"fill in progress").expect("young");
        set_mtime(&stale, SystemTime::now() - Duration::from_secs(2 * 3600));
        set_mtime(&young, SystemTime::now() - Duration::from_secs(10 * 60));
        let _cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        assert!(!stale.exists());
        assert!(young.exists());
    }

    #[test]
    fn reads_touch_mtime_at_most_once_a_minute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        let hash = BlobHash::of(b"touch me");
        cache.insert_bytes(&hash, b"touch me").expect("insert");
        let path = cache.path_of(&hash);
        let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).expect("mtime");

        // Reopen in a fresh instance whose index learns the old mtime.
        set_mtime(&path, SystemTime::now() - Duration::from_secs(3600));
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("reopen");
        cache.open_blob(&hash).expect("open").expect("present");
        let touched = mtime(&path);
        assert!(SystemTime::now().duration_since(touched).expect("not future") < Duration::from_secs(30));

        // Within the minute a read does not write metadata again.
        let pinned = SystemTime::now() - Duration::from_secs(30);
        set_mtime(&path, pinned);
        cache.open_blob(&hash).expect("open").expect("present");
        assert_eq!(mtime(&path), pinned);
    }

    #[test]
    fn survives_cache_dir_removed_underneath() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("cache");
        let cache = BlobCache::open(&root, 1 << 20).expect("open");
        cache.insert_bytes(&BlobHash::of(b"one"), b"one").expect("one");
        fs::remove_dir_all(&root).expect("rm -rf cache");
        assert!(cache.open_blob(&BlobHash::of(b"one")).expect("open").is_none());
        assert_eq!(cache.usage(), (0, 1 << 20, 0));
        cache.insert_bytes(&BlobHash::of(b"two"), b"two").expect("two");
        assert!(cache.contains(&BlobHash::of(b"two")));
    }

    #[test]
    fn no_space_is_classified() {
        for code in [libc::ENOSPC, libc::EDQUOT] {
            let e = io::Error::from_raw_os_error(code);
            assert!(is_no_space(&e));
            let err = CacheError::io("/c/tmp/x", e);
            assert!(matches!(err, CacheError::NoSpace { .. }), "{err:?}");
            assert_eq!(err.errno(), libc::ENOSPC);
            assert!(err.to_string().contains("cache disk is full"));
            // Waiters receive the same classification.
            assert_eq!(err.duplicate().errno(), libc::ENOSPC);
        }
        for e in [
            io::Error::from_raw_os_error(libc::EIO),
            io::Error::from_raw_os_error(libc::EACCES),
            io::Error::other("no errno"),
        ] {
            assert!(!is_no_space(&e));
            let err = CacheError::io("/c/tmp/x", e);
            assert!(matches!(err, CacheError::Io { .. }));
            assert_eq!(err.errno(), libc::EIO);
        }
        let fetch = CacheError::Fetch {
            hash: BlobHash::of(b"x"),
            message: "503".into(),
        };
        assert_eq!(fetch.errno(), libc::EIO);
    }

    #[test]
    fn real_enospc_from_a_fill_write_is_no_space() {
        // /dev/full fails every write with ENOSPC, no root or tmpfs needed.
        let Ok(file) = File::options().write(true).open("/dev/full") else {
            return;
        };
        let mut fill = CacheFill {
            file,
            path: PathBuf::from("/dev/full"),
            hasher: blake3::Hasher::new(),
            written: 0,
            // Never let Drop try to remove /dev/full.
            published: true,
        };
        let err = fill.write(b"bytes").expect_err("disk full");
        assert!(matches!(err, CacheError::NoSpace { .. }), "{err:?}");
        assert_eq!(err.errno(), libc::ENOSPC);
        assert_eq!(fill.written(), 0);
    }
}
