//! Pending contents: the bytes of files over [`INLINE_LIMIT`] that records
//! name by hash, as `STATE/pending/<hash>`, made by linking a closed file's
//! staging file (no copy) or, where links are not possible, by copying.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

use std::path::PathBuf;

use super::{fsync_dir, io, open_content_name, Durability, Journal, Log, INLINE_LIMIT};
use crate::model::BlobHash;
use crate::vfs::VfsError;

/// Staging files from this size up are hashed on every core.
const PARALLEL_HASH_MIN: u64 = 4 * 1024 * 1024;

/// The hash and size of a closed staging file. A large one is hashed on
/// every core through a memory map (blake3's tree hash splits across
/// threads): close() of a multi-gigabyte file otherwise waited for one
/// core's full pass over it.
fn hash_staged(file: &File, staged: &Path) -> Result<(BlobHash, u64), VfsError> {
    let len = file.metadata().map_err(|e| io("stat", staged, e))?.len();
    let mut hasher = blake3::Hasher::new();
    if len >= PARALLEL_HASH_MIN {
        // SAFETY: the map is read-only and dropped before returning; the
        // caller keeps the staging file's bytes unchanged from here on (the
        // same promise the hard link below relies on), and the file is
        // private to this mount, so nothing truncates it under the map.
        let map = unsafe { memmap2::Mmap::map(file) }.map_err(|e| io("map", staged, e))?;
        hasher.update_rayon(&map);
        return Ok((BlobHash::from_blake3(hasher.finalize()), map.len() as u64));
    }
    let mut reader = std::io::BufReader::with_capacity(1 << 20, ReadAt::new(file));
    let size = std::io::copy(&mut reader, &mut hasher).map_err(|e| io("read", staged, e))?;
    Ok((BlobHash::from_blake3(hasher.finalize()), size))
}

impl Journal {
    /// A copy of `source` as pending content, for file systems without hard links.
    fn snapshot_file(&self, source: &File) -> Result<Snapshot<'_>, VfsError> {
        self.snapshot_with_limit(source, 0)
    }

    /// Makes a snapshot of `source` durable and returns its hash and size.
    /// Small contents come back as bytes to inline into the record; larger
    /// ones are pending content, claimed until the record naming it is
    /// appended (hold the claim until then).
    pub fn snapshot(&self, source: &File) -> Result<Snapshot<'_>, VfsError> {
        self.snapshot_with_limit(source, INLINE_LIMIT)
    }

    fn snapshot_with_limit(&self, source: &File, inline_limit: u64) -> Result<Snapshot<'_>, VfsError> {
        let len = source.metadata().map_err(|e| io("stat", &self.pending, e))?.len();
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, ReadAt::new(source));
        if len <= inline_limit {
            let mut bytes = Vec::with_capacity(len as usize);
            reader
                .read_to_end(&mut bytes)
                .map_err(|e| io("read", &self.pending, e))?;
            let hash = BlobHash::of(&bytes);
            let size = bytes.len() as u64;
            return Ok(Snapshot {
                hash,
                size,
                inline: Some(bytes),
                claim: PendingClaim::none(self),
            });
        }
        let temp = self.pending.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut out = File::create(&temp).map_err(|e| io("create", &temp, e))?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = reader.read(&mut buf).map_err(|e| io("read", &temp, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| io("write", &temp, e))?;
                size += n as u64;
            }
            let hash = BlobHash::from_blake3(hasher.finalize());
            let target = self.pending_blob_path(&hash);
            let strict = matches!(self.durability, Durability::Strict);
            if strict {
                out.sync_all().map_err(|e| io("fsync", &temp, e))?;
            }
            let claim = {
                let mut log = self.lock();
                let existed = target.exists();
                fs::rename(&temp, &target).map_err(|e| io("rename", &target, e))?;
                Self::made_pending(&mut log, hash.as_str(), existed);
                if !strict {
                    // Synced by the next make_durable, before the log.
                    log.unsynced_pending.push(target);
                }
                PendingClaim::taken(self, &mut log, hash.as_str())
            };
            if strict {
                fsync_dir(&self.pending)?;
            }
            Ok(Snapshot {
                hash,
                size,
                inline: None,
                claim,
            })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Makes a staging file the pending content of its record without
    /// copying it: hashes it in place and hard-links it as
    /// `pending/<hash>` (the caller keeps its bytes unchanged from now on).
    /// Falls back to a copy where the file system cannot link. The content
    /// is claimed until the record naming it is appended: hold the claim
    /// until then.
    pub fn adopt_staged(&self, file: &File, staged: &Path) -> Result<Snapshot<'_>, VfsError> {
        let (hash, size) = hash_staged(file, staged)?;
        let target = self.pending_blob_path(&hash);
        // Linked and claimed under the log lock, and spared if it was
        // doomed: a doomed file is deleted under that lock too, so it cannot
        // vanish between the link finding it present and the record naming it.
        let (linked, claim) = {
            let mut log = self.lock();
            let linked = fs::hard_link(staged, &target);
            let present = linked.is_ok()
                || linked
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::AlreadyExists);
            let claim = if present {
                Self::made_pending(&mut log, hash.as_str(), linked.is_err());
                PendingClaim::taken(self, &mut log, hash.as_str())
            } else {
                PendingClaim::none(self)
            };
            (linked, claim)
        };
        let snapshot = Snapshot {
            hash,
            size,
            inline: None,
            claim,
        };
        match linked {
            Ok(()) => {}
            // The same bytes are pending already (another file, or a retry).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(snapshot),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) || e.raw_os_error() == Some(libc::EPERM) => {
                return self.snapshot_file(file);
            }
            Err(e) => return Err(io("link", &target, e)),
        }
        match self.durability {
            Durability::Strict => {
                file.sync_data().map_err(|e| io("fsync", staged, e))?;
                fsync_dir(&self.pending)?;
            }
            Durability::Local { .. } => self.lock().unsynced_pending.push(target),
        }
        Ok(snapshot)
    }

    /// For a full disk: makes the log durable at once, so the pending
    /// contents of retired records (removed files, acknowledged commits) are
    /// deleted now rather than at the next group sync. True if any was.
    pub fn reclaim_retired_contents(&self) -> bool {
        let before = self.lock().doomed_pending.len();
        if before == 0 || self.make_durable().is_err() {
            return false;
        }
        self.lock().doomed_pending.len() < before
    }

    /// Deletes the pending content of `hash` once the frames appended so
    /// far (the removal of the last record naming it) are durable, or at
    /// once if no frame in the log file names it yet ([`Log::fresh_pending`]).
    pub fn remove_pending_blob(&self, hash: &BlobHash) {
        self.doom_pending(hash.as_str());
    }

    /// Pending file `name` exists now (made by this call unless `existed`):
    /// spared if it was doomed, and fresh if this call made it.
    fn made_pending(log: &mut Log, name: &str, existed: bool) {
        log.doomed_pending.remove(name);
        if !existed {
            let appended = log.appended;
            log.fresh_pending.insert(name.to_string(), appended);
        }
    }

    /// Deletes pending file `name` once the frames appended so far are
    /// durable, or at once if no frame written to the log can name it; not
    /// while a close has claimed it (then again when the claim ends).
    fn doom_pending(&self, name: &str) {
        let mut log = self.lock();
        self.doom_pending_locked(&mut log, name);
    }

    fn doom_pending_locked(&self, log: &mut Log, name: &str) {
        if log.claimed_pending.contains_key(name) {
            log.doomed_while_claimed.insert(name.to_string());
            return;
        }
        let appended = log.appended;
        if log.fresh_pending.remove(name).is_some() {
            let _ = fs::remove_file(self.pending.join(name));
            return;
        }
        log.doomed_pending.insert(name.to_string(), appended);
        if log.durable >= appended {
            self.delete_doomed_pending(log);
        }
    }

    /// Where record `uid`'s open content is linked.
    pub fn open_content_path(&self, uid: u64) -> PathBuf {
        self.pending.join(open_content_name(uid))
    }

    /// Makes a staging file that the kernel may still write (write
    /// passthrough) the open content of record `uid`: linked, not hashed,
    /// as `pending/.open-<uid>`, so the bytes outlive the mount process and
    /// replay finds them. Durable like any pending content: at once with
    /// `Strict`, else with the next group sync.
    pub fn adopt_open(&self, file: &File, staged: &Path, uid: u64) -> Result<(), VfsError> {
        use std::os::unix::fs::MetadataExt;
        let target = self.open_content_path(uid);
        let staged_meta = file.metadata().map_err(|e| io("stat", staged, e))?;
        let existing = fs::metadata(&target).ok();
        let already = existing
            .as_ref()
            .is_some_and(|m| m.ino() == staged_meta.ino() && m.dev() == staged_meta.dev());
        {
            let mut log = self.lock();
            if !already {
                // Another staging file of the same record (an earlier epoch):
                // replaced in one step, never missing.
                let temp = self.pending.join(format!(".tmp-{:016x}", rand::random::<u64>()));
                let linked = fs::hard_link(staged, &temp).and_then(|()| fs::rename(&temp, &target));
                if let Err(e) = linked {
                    let _ = fs::remove_file(&temp);
                    return Err(io("link", &target, e));
                }
            }
            Self::made_pending(&mut log, &open_content_name(uid), existing.is_some());
            if self.durability != Durability::Strict {
                log.unsynced_pending.push(target);
            }
        }
        if self.durability == Durability::Strict {
            file.sync_data().map_err(|e| io("fsync", staged, e))?;
            fsync_dir(&self.pending)?;
        }
        Ok(())
    }

    /// Hashes record `uid`'s open content and makes it pending content by
    /// hash (a link, no copy): for replay, once the kernel can no longer
    /// write it. The caller journals the record by hash, then dooms the
    /// open link with [`Journal::remove_open_content`].
    pub fn seal_open_content(&self, uid: u64) -> Result<Snapshot<'_>, VfsError> {
        let path = self.open_content_path(uid);
        let file = File::open(&path).map_err(|e| io("open", &path, e))?;
        self.adopt_staged(&file, &path)
    }

    /// Deletes record `uid`'s open link once the frames appended so far
    /// (the record naming its content by hash) are durable, or at once if
    /// no frame in the log file names it yet.
    pub fn remove_open_content(&self, uid: u64) {
        self.doom_pending(&open_content_name(uid));
    }
}

/// A file's content as the journal holds it for its record: the hash and
/// size, the bytes themselves when small enough to inline, and the claim on
/// its pending file.
pub struct Snapshot<'j> {
    pub hash: BlobHash,
    pub size: u64,
    pub inline: Option<Vec<u8>>,
    pub claim: PendingClaim<'j>,
}

/// Keeps a pending content file from being deleted between the close that
/// made (or found) it and the append of the record that names it: until
/// then no record names it, so a removal of another file with the same
/// bytes would otherwise delete it under the record about to name it.
/// Dropping the last claim looks at a deletion asked for meanwhile again:
/// the file goes if no live record names it.
pub struct PendingClaim<'j> {
    journal: &'j Journal,
    name: Option<String>,
}

impl<'j> PendingClaim<'j> {
    fn none(journal: &'j Journal) -> Self {
        Self { journal, name: None }
    }

    /// Claims `name`; the caller holds the log lock.
    fn taken(journal: &'j Journal, log: &mut Log, name: &str) -> Self {
        *log.claimed_pending.entry(name.to_string()).or_default() += 1;
        Self {
            journal,
            name: Some(name.to_string()),
        }
    }
}

impl Drop for PendingClaim<'_> {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        let mut log = self.journal.lock();
        match log.claimed_pending.get_mut(&name) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return;
            }
            Some(_) => {
                log.claimed_pending.remove(&name);
            }
            None => return,
        }
        if !log.doomed_while_claimed.remove(&name) {
            return;
        }
        let named = log
            .live
            .values()
            .any(|r| r.pending_content().is_some_and(|h| h.as_str() == name));
        if !named {
            self.journal.doom_pending_locked(&mut log, &name);
        }
    }
}

/// Reads a file from offset 0 with pread, leaving its shared cursor alone.
pub struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> ReadAt<'a> {
    pub fn new(file: &'a File) -> Self {
        Self { file, pos: 0 }
    }
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
