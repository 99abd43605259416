//! Filling the cache and trusting what is in it: a [`CacheFill`] writes one
//! blob into `tmp/`, hashing as it goes, and is sealed (hash checked, fsynced
//! above [`UNSYNCED_MAX`]) before [`super::BlobCache`] renames it into
//! place; a small blob found on disk is hashed on first open, and one torn by
//! a power loss is removed.
//!
//! A chunk fill is not fsynced whatever its size: every process hashes a
//! chunk on its first open anyway. It is published read-only (no owner write
//! bit) instead, which tells a whole-file open of the same name that the
//! bytes were never made durable, so it hashes them too rather than trusting
//! them for their size.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};

use super::dir::create_private_dir;
use super::{CacheError, UNSYNCED_MAX};
use crate::model::BlobHash;
/// Distinguishes temp files of concurrent fills within one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The destination of one fill: a temp file that is hashed as it is written.
/// The temp file is made on the first write, so a fill that adopts a file
/// ([`Self::adopt`]) creates and frees no inode of its own. Dropped without
/// being published, it deletes its temp file.
pub struct CacheFill {
    file: Option<File>,
    tmp_dir: PathBuf,
    prefix: String,
    path: PathBuf,
    hasher: blake3::Hasher,
    written: u64,
    published: bool,
    /// The bytes are a linked file the caller vouches for ([`Self::adopt`]).
    adopted: bool,
    /// Published without an fsync, marked so (see the module doc).
    unsynced: bool,
}

impl CacheFill {
    pub(super) fn create(tmp_dir: &Path, hash: &BlobHash) -> Result<Self, CacheError> {
        let prefix = hash.as_str().get(..16).unwrap_or(hash.as_str()).to_string();
        Ok(Self {
            file: None,
            tmp_dir: tmp_dir.to_path_buf(),
            prefix,
            path: PathBuf::new(),
            hasher: blake3::Hasher::new(),
            written: 0,
            published: false,
            adopted: false,
            unsynced: false,
        })
    }

    /// Seals without an fsync, marking the file as never made durable: for
    /// chunks, which every process hashes on its first open.
    pub(super) fn skip_fsync(&mut self) {
        self.unsynced = true;
    }

    /// Makes a new temp name and runs `make` on it until the name is free:
    /// the pid keeps processes apart, and `make` failing with
    /// `AlreadyExists` settles the rare collision (e.g. containers sharing
    /// the directory) by trying the next name.
    fn new_temp<T>(&mut self, mut make: impl FnMut(&Path) -> io::Result<T>) -> Result<T, CacheError> {
        let mut recreated = false;
        loop {
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self.tmp_dir.join(format!("{}.{}.{n}", self.prefix, std::process::id()));
            match make(&path) {
                Ok(made) => {
                    self.path = path;
                    return Ok(made);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                // Someone removed the cache directory under a running mount:
                // recreate it once rather than failing every read from now on.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !recreated => {
                    recreated = true;
                    create_private_dir(&self.tmp_dir)?;
                }
                Err(e) => return Err(CacheError::io(path, e)),
            }
        }
    }

    /// The temp file, created on first use.
    fn file(&mut self) -> Result<&mut File, CacheError> {
        if self.file.is_none() {
            let file = self.new_temp(|path| OpenOptions::new().write(true).create_new(true).open(path))?;
            self.file = Some(file);
        }
        // Just set when it was None.
        self.file
            .as_mut()
            .ok_or_else(|| CacheError::io(&self.path, io::Error::other("no temp file")))
    }

    /// Appends a chunk. A full disk is reported as [`CacheError::NoSpace`].
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), CacheError> {
        let file = self.file()?;
        let written = file.write_all(chunk);
        written.map_err(|e| CacheError::io(&self.path, e))?;
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Makes `src` itself the fill, by a hard link instead of a copy: for a
    /// file whose bytes the caller hashed already and that nobody changes
    /// any more. False (the fill untouched) where `src` cannot be linked,
    /// e.g. on another filesystem; then the caller copies. `opened`, a
    /// descriptor of `src` the caller has (at offset 0), is duplicated
    /// rather than the link opened by name.
    pub fn adopt(&mut self, src: &Path, opened: Option<&File>) -> Result<bool, CacheError> {
        if self.written > 0 || self.file.is_some() {
            return Ok(false);
        }
        let linked = self.new_temp(|path| fs::hard_link(src, path));
        if let Err(e) = linked {
            debug!("cannot link {} into the cache ({e}); copying", src.display());
            return Ok(false);
        }
        let opened = match opened {
            Some(file) => file.try_clone(),
            None => File::open(&self.path),
        }
        .and_then(|file| Ok((file.metadata()?.len(), file)));
        let (written, file) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                let _ = fs::remove_file(&self.path);
                return Err(CacheError::io(&self.path, e));
            }
        };
        self.written = written;
        self.file = Some(file);
        self.adopted = true;
        Ok(true)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks the hash and, above [`UNSYNCED_MAX`], makes the bytes durable,
    /// so the rename that follows cannot expose a torn blob after a crash
    /// (smaller ones are checked when opened instead). Returns a read handle
    /// on the same inode, which stays valid even if the blob is evicted at once.
    pub(super) fn seal(&mut self, expected: &BlobHash) -> Result<File, CacheError> {
        let actual = BlobHash::from_blake3(self.hasher.finalize());
        if !self.adopted && actual != *expected {
            return Err(CacheError::HashMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        // An empty blob has had no write: its temp file is made here.
        let large = self.written > UNSYNCED_MAX;
        let (adopted, unsynced) = (self.adopted, self.unsynced && !self.adopted);
        let file = self.file()?;
        let synced = match (large, unsynced) {
            (false, _) => Ok(()),
            (true, false) => file.sync_all(),
            (true, true) => mark_unsynced(file),
        };
        // An adopted fill's descriptor is a reader already; a written one is
        // write-only.
        let reader = match synced {
            Ok(()) if adopted => file.try_clone(),
            Ok(()) => File::open(&self.path),
            Err(e) => Err(e),
        };
        reader.map_err(|e| CacheError::io(&self.path, e))
    }

    /// Renames the sealed fill to `target`. From then on the file is the
    /// cache's: dropping the fill no longer removes it.
    /// Its directory is made on the first rename that needs it, not looked
    /// for before every rename.
    pub(super) fn rename_to(&mut self, target: &Path) -> Result<(), CacheError> {
        let mut renamed = fs::rename(&self.path, target);
        if renamed.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::NotFound) && self.path.exists() {
            if let Some(parent) = target.parent() {
                create_private_dir(parent)?;
            }
            renamed = fs::rename(&self.path, target);
        }
        renamed.map_err(|e| CacheError::io(target, e))?;
        self.published = true;
        Ok(())
    }
}

impl Drop for CacheFill {
    fn drop(&mut self) {
        if self.published || self.file.is_none() {
            return;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot remove cache temp file {}: {e}", self.path.display()),
        }
    }
}

/// What the first look at a blob this process did not write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Its bytes were hashed and match its name.
    Intact,
    /// Too large to hash on open: fsynced before it was published, trusted.
    Trusted,
    /// Its bytes do not match its name; it was removed.
    Torn,
}

/// The first open of a blob this process did not write: a blob of at most
/// `hash_limit` bytes ([`UNSYNCED_MAX`] for whole files; a chunk's bound for
/// chunks, which are never served unchecked) is hashed (with positioned
/// reads: `file`'s offset stays at 0) and removed when it does not match,
/// unless another process already replaced it with a new file. Larger blobs
/// were fsynced before they were published and are trusted as they are.
pub(super) fn check_on_open(hash: &BlobHash, path: &Path, file: &File, hash_limit: u64) -> Result<Verdict, CacheError> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(|e| CacheError::io(path, e))?;
    if meta.len() > hash_limit.max(UNSYNCED_MAX) && !marked_unsynced(&meta) {
        return Ok(Verdict::Trusted);
    }
    let actual = hash_by_position(file, (meta.len() as usize).min(1 << 20)).map_err(|e| CacheError::io(path, e))?;
    if actual == *hash {
        return Ok(Verdict::Intact);
    }
    warn!(
        "cached blob {} holds bytes hashing to {actual} (torn by a crash, or corrupted on disk); removing it",
        path.display()
    );
    let same_file = fs::symlink_metadata(path).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
    if same_file {
        if let Err(e) = fs::remove_file(path) {
            debug!("cannot remove {}: {e}", path.display());
        }
    }
    Ok(Verdict::Torn)
}

/// Marks a fill published without an fsync: no owner write bit.
fn mark_unsynced(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o444))
}

/// Whether a blob's bytes may not have reached the disk (see
/// [`mark_unsynced`]): then its size is no reason to trust it.
fn marked_unsynced(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o200 == 0
}

/// The blake3 hash of all of `file`, read by position (its offset stays
/// where it is) in pieces of up to `piece` bytes.
pub(super) fn hash_by_position(file: &File, piece: usize) -> io::Result<BlobHash> {
    use std::os::unix::fs::FileExt;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; piece.max(4096)];
    let mut offset = 0u64;
    loop {
        match file.read_at(&mut buf, offset) {
            Ok(0) => return Ok(BlobHash::from_blake3(hasher.finalize())),
            Ok(n) => {
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{read_all, tmp_files};
    use crate::cache::BlobCache;

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
        assert!(cache.flights.is_empty());

        let file = cache.get_or_fill(&hash, |fill| fill.write(b"payload")).expect("retry");
        assert_eq!(read_all(file), b"payload");
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
    fn real_enospc_from_a_fill_write_is_no_space() {
        // /dev/full fails every write with ENOSPC, no root or tmpfs needed.
        let Ok(file) = File::options().write(true).open("/dev/full") else {
            return;
        };
        let mut fill = CacheFill {
            file: Some(file),
            tmp_dir: PathBuf::from("/dev"),
            prefix: String::new(),
            path: PathBuf::from("/dev/full"),
            hasher: blake3::Hasher::new(),
            written: 0,
            // Never let Drop try to remove /dev/full.
            published: true,
            adopted: false,
            unsynced: false,
        };
        let err = fill.write(b"bytes").expect_err("disk full");
        assert!(matches!(err, CacheError::NoSpace { .. }), "{err:?}");
        assert_eq!(err.errno(), libc::ENOSPC);
        assert_eq!(fill.written(), 0);
    }
}
