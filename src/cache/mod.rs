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
use flight::{Flights, Role};
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

/// This process's view of the directory plus when it was last rescanned.
struct IndexState {
    index: Index,
    scanned_at: Instant,
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
        let found = self.open_uncounted(hash)?;
        match found {
            Some(_) => self.hits.fetch_add(1, Relaxed),
            None => self.misses.fetch_add(1, Relaxed),
        };
        Ok(found)
    }

    /// [`BlobCache::open_blob`] without counting a hit or miss (the looks
    /// `get_or_fill` takes after the caller's own).
    fn open_uncounted(&self, hash: &BlobHash) -> Result<Option<File>, CacheError> {
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

    /// Checks a blob this process did not write (see
    /// [`fill::check_unsynced`]) and records the verdict in the index.
    fn check_bytes(&self, hash: &BlobHash, path: &Path, file: &File) -> Result<bool, CacheError> {
        let intact = fill::check_unsynced(hash, path, file)?;
        let mut state = lock(&self.state);
        if intact {
            state.index.mark_verified(hash);
        } else {
            state.index.remove(hash);
        }
        Ok(intact)
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
            if let Some(file) = self.open_uncounted(hash)? {
                return Ok(file);
            }
            match self.flights.join(hash) {
                Role::Leader(guard) => break guard,
                // Success means the blob was published: loop to open it. If it
                // was evicted again in between, this caller fills it itself.
                Role::Waiter(flight) => flight.wait()?,
            }
        };
        // Another leader may have published between our miss and our lead.
        let result = match self.open_uncounted(hash) {
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
        self.get_or_fill(hash, |fill| copy_into(fill, src)).map(drop)
    }

    /// Makes a local file the cache's copy of `hash` by hard-linking it, with
    /// no copy and no second hash: only for a file whose bytes were hashed
    /// to `hash` and that nobody changes again (a staging file the journal
    /// sealed when it was closed). Copies, checking the hash, where the
    /// cache is on another filesystem.
    pub fn insert_sealed_file(&self, hash: &BlobHash, src: &Path) -> Result<(), CacheError> {
        self.get_or_fill(hash, |fill| match fill.adopt(src)? {
            true => Ok(()),
            false => copy_into(fill, src),
        })
        .map(drop)
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
        let size = pending.written();
        let mut state = lock(&self.state);
        // A racing publisher of the same hash (another process) is replaced,
        // not double-counted.
        state.index.remove(hash);
        self.evict_to(&mut state.index, self.max_bytes.saturating_sub(size));
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
pub(super) mod tests {
    use super::*;

    pub(super) fn read_all(mut file: File) -> Vec<u8> {
        let mut out = Vec::new();
        file.read_to_end(&mut out).expect("read cached blob");
        out
    }

    pub(super) fn tmp_files(cache: &BlobCache) -> Vec<PathBuf> {
        fs::read_dir(&cache.tmp_dir)
            .expect("list tmp")
            .map(|e| e.expect("tmp entry").path())
            .collect()
    }

    pub(super) fn blob_files(cache: &BlobCache) -> usize {
        scan_blobs(&cache.blobs_dir).expect("scan").len()
    }

    pub(super) fn set_mtime(path: &Path, mtime: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
    }

    #[test]
    fn cache_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<BlobCache>();
        check::<CacheError>();
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
    fn a_sealed_file_is_linked_not_copied_and_a_cross_device_one_is_copied() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(&dir.path().join("cache"), 1 << 30).expect("open");
        let content = vec![7u8; 3 << 20];
        let hash = BlobHash::of(&content);
        let staged = dir.path().join("staged");
        fs::write(&staged, &content).expect("write");
        cache.insert_sealed_file(&hash, &staged).expect("insert");
        let cached = cache.open_blob(&hash).expect("open").expect("cached");
        assert_eq!(read_all(cached), content);
        let (cached_meta, staged_meta) = (
            fs::metadata(cache.path_of(&hash)).expect("stat cached"),
            fs::metadata(&staged).expect("stat staged"),
        );
        assert_eq!(cached_meta.ino(), staged_meta.ino(), "the cache holds the same inode");
        assert_eq!(cache.usage().0, content.len() as u64);

        // /dev/shm is another filesystem here: no link, a verified copy.
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let other = b"on another filesystem".repeat(1000);
        let other_hash = BlobHash::of(&other);
        let elsewhere = shm.path().join("staged");
        fs::write(&elsewhere, &other).expect("write");
        cache
            .insert_sealed_file(&other_hash, &elsewhere)
            .expect("insert by copy");
        let cached = cache.open_blob(&other_hash).expect("open").expect("cached");
        assert_eq!(read_all(cached), other);
        assert_ne!(
            fs::metadata(cache.path_of(&other_hash)).expect("stat").ino(),
            fs::metadata(&elsewhere).expect("stat").ino()
        );
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
}
