//! Write passthrough: a new file's writes go from the kernel straight into
//! its staging file, without a FUSE WRITE request per page (the only way a
//! sequential write through FUSE gets near the local disk; BENCHMARKS.md,
//! "FUSE passthrough for writes").
//!
//! The mount then never sees a write, so:
//! - every close (FLUSH) of a writer journals the file, changed or not;
//! - nothing of it is sent while writers remain (one version per file);
//! - while writers remain, a large file is journaled *by its staging file*
//!   (`Record::open_content`, linked as `pending/.open-<uid>`), not by hash:
//!   a descriptor `dup`ed before the close can still write it, and a hash
//!   taken now could change under its name;
//! - the release of the epoch's last writer seals it: hashed, linked by hash,
//!   sealed like any closed large file (copy on the next write);
//! - replay hashes an open content as it finds it;
//! - attributes come from the staging file while the kernel writes it.
//!
//! Only a file this mount creates starts such an epoch (the server has no
//! version of it, so fsync need not send anything), only with the server's
//! default size limit (the kernel cannot be stopped at `--max-file-bytes`;
//! a file past it fails at close with `EFBIG`), and only with `--passthrough
//! all`, and not on a nearly full disk: there a write through the mount can
//! free the space that deleted files' journal entries still hold before it
//! reports ENOSPC, where the kernel would report it at once.
//! docs/SEMANTICS.md, "Write passthrough", has the user's view.

use std::fs::Metadata;

use super::*;

/// Below this much free space on the staging disk, new files are written
/// through the mount (see the module comment).
const KERNEL_WRITES_MIN_FREE: u64 = 256 << 20;

impl Vfs {
    /// Whether a file created now is written by the kernel itself.
    pub(super) fn kernel_may_write_new_files(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
            && self.passthrough_policy() == PassthroughPolicy::All
            && !self.config.read_only
            && self.max_file_bytes() >= DEFAULT_MAX_FILE_BYTES
            && self
                .staging_free_bytes()
                .is_some_and(|free| free >= KERNEL_WRITES_MIN_FREE)
    }

    /// Whether the kernel writes through `handle` itself: a writer in a
    /// staging epoch (its writes never reach the mount).
    pub(super) fn kernel_writes_through(st: &State, handle: &Handle) -> bool {
        handle.write && st.kernel_io.kernel_writing(handle.ino).is_some()
    }

    /// Takes a staging file's length and mtime as the file's.
    fn adopt_staging_attrs(&self, ino: Ino, meta: &Metadata) {
        let mut st = self.lock();
        if let Some(inode) = st.inodes.get_mut(&ino) {
            inode.size = meta.len();
            if let Ok(mtime) = meta.modified() {
                inode.mtime = mtime;
                inode.ctime = inode.ctime.max(mtime);
            }
        }
    }

    /// A close while the kernel may still write the file (its own writer
    /// handle, or a `dup` of it, stays open): small contents are journaled
    /// inline as they are now; larger ones by their staging file, which is
    /// linked into the journal, not hashed (see the module comment).
    pub(super) fn journal_kernel_written(
        &self,
        ino: Ino,
        file: &Arc<File>,
        path: &Path,
        data_lock: &Arc<Mutex<()>>,
        rev: u64,
    ) -> VfsResult<()> {
        // A truncate or fallocate in flight finishes first.
        let _data = data_lock.lock().unwrap_or_else(|p| p.into_inner());
        let meta = file.metadata().map_err(|e| VfsError::io("stat staging file", e))?;
        let limit = self.max_file_bytes();
        if meta.len() > limit {
            return Err(Self::past_max_file_size("close", meta.len(), limit));
        }
        self.adopt_staging_attrs(ino, &meta);
        if meta.len() <= journal::INLINE_LIMIT {
            let journal::Snapshot {
                hash,
                size,
                inline,
                claim,
            } = self.journal.snapshot(file)?;
            let mut st = self.lock();
            if Self::get(&st, ino)?.unlinked {
                return Ok(());
            }
            self.journal_content_hash(&mut st, ino, hash, size, inline)?;
            let inode = Self::get_mut(&mut st, ino)?;
            inode.journaled_data_rev = inode.journaled_data_rev.max(rev);
            // Released once the record naming the content is appended, and
            // outside the core's lock (it takes the journal's).
            drop(st);
            drop(claim);
            return Ok(());
        }
        let uid = Self::get(&self.lock(), ino)?.uid;
        self.journal.adopt_open(file, path, uid)?;
        let mut st = self.lock();
        if Self::get(&st, ino)?.unlinked {
            return Ok(());
        }
        let mut record = Self::next_record(&st, ino)?;
        record.content = None;
        record.inline = None;
        record.open_content = true;
        record.size = meta.len();
        self.commit_record(&mut st, ino, record)?;
        let inode = Self::get_mut(&mut st, ino)?;
        inode.journaled_data_rev = inode.journaled_data_rev.max(rev);
        Ok(())
    }

    /// The epoch's last writer was released: the kernel cannot write the
    /// staging file any more, so it is journaled by hash (a large one sealed
    /// and linked, as at any close) and parked if nobody has it open.
    /// Errors are logged: the close that could report them is over, and the
    /// record journaled by that close keeps the bytes (replay hashes them).
    pub(super) fn seal_kernel_written(&self, ino: Ino) {
        let file = match Self::get(&self.lock(), ino).map(|i| &i.content) {
            Ok(Content::Local { file, .. }) => file.clone(),
            _ => return,
        };
        match file.metadata() {
            Ok(meta) => self.adopt_staging_attrs(ino, &meta),
            Err(e) => tracing::warn!(error = %e, "cannot stat a staging file the kernel wrote"),
        }
        if self.lock().inodes.get(&ino).is_some_and(|i| i.unlinked) {
            // Removed already: nothing to journal, and its bytes can go now
            // (an untar's or a build's temp files are often removed at once).
            self.free_unlinked_staging(ino);
            return;
        }
        if let Some(inode) = self.lock().inodes.get_mut(&ino) {
            // What the kernel wrote since the last close is not known: journal it.
            inode.data_rev += 1;
        }
        if let Err(e) = self.journal_content(ino) {
            tracing::error!(path = %self.path(ino), error = %e, "cannot journal a file at its last close; its last closed state stays journaled");
        }
        Self::park_if_idle(&mut self.lock(), ino);
        // Sendable now, even when its last close had journaled it already.
        self.wake.notify_one();
    }

    /// Whether releasing `fh` seals a large file the kernel wrote (a hash
    /// of all its bytes): the adapter then releases it off its fixed threads.
    pub fn release_seals_large_file(&self, fh: u64) -> bool {
        let st = self.lock();
        let Some(handle) = st.handles.get(&fh).filter(|h| h.write) else {
            return false;
        };
        let Some(file) = st.kernel_io.kernel_writing(handle.ino) else {
            return false;
        };
        let last_writer = st.inodes.get(&handle.ino).is_some_and(|i| i.open_writers == 1);
        last_writer && file.metadata().is_ok_and(|m| m.len() > journal::INLINE_LIMIT)
    }

    /// utimensat while the kernel writes the file: its staging file's mtime
    /// is the file's until the epoch's last writer is gone.
    pub(super) fn set_staging_mtime(st: &State, ino: Ino, mtime: SystemTime) {
        if let Some(file) = st.kernel_io.kernel_writing(ino) {
            if let Err(e) = file.set_modified(mtime) {
                tracing::warn!(error = %e, "cannot set the mtime of a staging file");
            }
        }
    }
}
