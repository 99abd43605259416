//! Open handles and their data: open, read, write (to the staging file,
//! outside the state lock), flush = commit on close, release. (fsync is in
//! `fsync.rs`, setattr in `setattr.rs`.)

use super::*;

/// Where a new staging file's bytes come from.
enum StagingSource {
    /// A clean blob and its size.
    Blob(BlobHash, u64),
    Sealed(Arc<File>),
}

impl Vfs {
    /// Opens the blob of a clean file through the cache (fetching it if
    /// needed). Open descriptors are shared for a while: blobs never change,
    /// and every read is positional, so one fd serves all handles.
    /// Whether opening `ino` would have to download its content first (a
    /// clean file whose blob is in no local cache): the FUSE adapter then
    /// opens it off its fixed worker threads, so one slow download does not
    /// hold a thread every other request may need.
    pub fn open_would_fetch(&self, ino: Ino, mode: OpenMode) -> bool {
        let (hash, size) = match Self::get(&self.lock(), ino).map(|i| (&i.content, i.size)) {
            Ok((Content::Blob { hash }, size)) => (hash.clone(), size),
            _ => return false,
        };
        // A large file whose manifest is known opens for reading without the
        // server; opened to write, it is assembled from all its chunks.
        let reads_by_chunks = !mode.write && !mode.truncate && self.manifest_known(&hash, size);
        !self.open_files.contains_key(&hash) && !self.cache.contains(&hash) && !reads_by_chunks
    }

    pub(super) fn open_blob(&self, hash: &BlobHash) -> VfsResult<Arc<File>> {
        if let Some(file) = self.open_files.get(hash) {
            return Ok(file);
        }
        let file = match self.cache.open_blob(hash)? {
            Some(file) => file,
            None => self.cache.get_or_fill(hash, |fill| self.source.fetch(hash, fill))?,
        };
        let file = Arc::new(file);
        self.open_files.insert(hash.clone(), file.clone());
        Ok(file)
    }

    /// Turns clean content into a local staging file (copy on first write),
    /// and a sealed staging file into a fresh one (copy on write).
    ///
    /// The copy runs outside the lock, so the content may move on before
    /// it is installed: another writer's change closed and parked, or
    /// committed into a newer blob. The copy is installed only if the content
    /// is still the one it was made from; otherwise it is dropped and the
    /// new content staged. (Installing it anyway put the older bytes back
    /// and lost the other writer's change: eight appenders released at once
    /// by a passthrough reader kept one line of eight under load.)
    pub(super) fn make_local(&self, ino: Ino, truncate: bool) -> VfsResult<()> {
        for _ in 0..WRITE_ATTEMPTS {
            let mut attempts = 0;
            let (source, sealed) = loop {
                self.unpark(ino)?;
                let st = self.lock();
                let inode = Self::get(&st, ino)?;
                match &inode.content {
                    Content::Blob { hash } => break (StagingSource::Blob(hash.clone(), inode.size), None),
                    Content::Local { sealed: false, .. } => return Ok(()),
                    Content::Local { file, .. } => break (StagingSource::Sealed(file.clone()), Some(file.clone())),
                    // Parked again by a release in between: open it again.
                    Content::Parked { .. } if attempts < WRITE_ATTEMPTS => attempts += 1,
                    Content::Parked { .. } => {
                        return Err(VfsError::new(libc::EIO, "the staging file kept being parked"))
                    }
                    Content::Dir => return Err(VfsError::isdir(Self::path_of(&st, ino))),
                    Content::Symlink { .. } => {
                        return Err(VfsError::new(libc::ELOOP, "cannot open a symlink for writing"))
                    }
                }
            };
            let copied_from = match &source {
                StagingSource::Blob(hash, _) => Some(hash.clone()),
                StagingSource::Sealed(_) => None,
            };
            let (file, path) = self.new_local_file()?;
            let mut size = 0;
            if !truncate {
                size = match source {
                    // A large file stored as chunks is assembled from them.
                    StagingSource::Blob(hash, blob_size) => self.copy_clean_into(&hash, blob_size, &file)?,
                    StagingSource::Sealed(sealed) => chunked::copy_whole(&sealed, &file)?,
                };
            }
            let mut st = self.lock();
            let inode = Self::get_mut(&mut st, ino)?;
            let unchanged = match (&inode.content, &sealed, &copied_from) {
                (Content::Local { file: current, .. }, Some(old), _) => Arc::ptr_eq(current, old),
                (Content::Blob { hash }, None, Some(from)) => hash == from,
                _ => false,
            };
            if !unchanged {
                self.staging.retire(&path, false, false, size, Some(file));
                if matches!(&inode.content, Content::Local { sealed: false, .. }) {
                    return Ok(()); // someone else made it local meanwhile: use theirs
                }
                continue; // parked, committed or sealed again meanwhile: stage that
            }
            if let (Content::Local { path: old, .. }, true) = (&inode.content, sealed.is_some()) {
                // The journal keeps its own name for the sealed bytes.
                let _ = std::fs::remove_file(old);
            }
            inode.content = Content::Local {
                file,
                path,
                sealed: false,
                kernel_wrote: false,
            };
            inode.size = size;
            return Ok(());
        }
        Err(VfsError::new(
            libc::EIO,
            "the file kept changing while it was staged for writing",
        ))
    }

    pub fn open(&self, ino: Ino, mode: OpenMode) -> VfsResult<u64> {
        self.unpark(ino)?;
        {
            let st = self.lock();
            let inode = Self::get(&st, ino)?;
            if inode.kind == NodeKind::Dir && mode.write {
                return Err(VfsError::isdir(Self::path_of(&st, ino)));
            }
            if mode.write || mode.truncate {
                Self::check_writable(&st, ino)?;
            }
        }
        if mode.write || mode.truncate {
            // Before staging a copy: the kernel lets nobody else in while
            // passthrough readers hold the file.
            self.await_passthrough_readers(ino)?;
        }
        let mut pinned = None;
        let mut chunked = None;
        // make_local(truncate) drops a clean file's bytes itself: judge the change by the size before.
        let size_before = Self::get(&self.lock(), ino)?.size;
        if mode.write || mode.truncate {
            self.make_local(ino, mode.truncate)?;
        } else {
            let clean = {
                let st = self.lock();
                let inode = Self::get(&st, ino)?;
                match &inode.content {
                    Content::Blob { hash } => Some((hash.clone(), inode.size)),
                    _ => None,
                }
            };
            if let Some((hash, blob_size)) = clean {
                // A large file not cached whole is read by chunks (never passthrough).
                match self.chunked_blob(&hash, blob_size)? {
                    Some(blob) => chunked = Some(blob),
                    None => pinned = Some(self.open_blob(&hash)?),
                }
            }
        }
        // O_TRUNC changes the staging file's length: in step with writers.
        let data_lock = if mode.truncate {
            Some(self.data_lock_of(ino)?)
        } else {
            None
        };
        let _data = data_lock.as_ref().map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
        let mut st = self.lock();
        // Only a read-only handle pinned to a clean blob can be read by the
        // kernel without us; `pinned` is set exactly for those.
        let inode = Self::get(&st, ino)?;
        let passthrough_read = match (&pinned, &inode.content) {
            (Some(_), Content::Blob { hash }) if self.passthrough_allowed(inode) => Some(hash.clone()),
            _ => None,
        };
        // A new file the kernel writes itself: every open joins its epoch.
        let staging = match &inode.content {
            Content::Local { file, .. } => Some(file.clone()),
            _ => None,
        };
        let io = match st.kernel_io.join_staging(ino, staging.as_ref(), mode.write) {
            Ok(Some(io)) => io,
            Ok(None) => st
                .kernel_io
                .open(ino, passthrough_read.as_ref())
                .map_err(|_| Self::passthrough_busy(&st, ino))?,
            Err(_) => return Err(Self::passthrough_busy(&st, ino)),
        };
        let mut dirty = false;
        if mode.truncate {
            // Sealed or parked by a close since make_local: empty means a
            // new file (the old one stays the journal's, or waits for it).
            if matches!(
                &Self::get(&st, ino)?.content,
                Content::Local { sealed: true, .. } | Content::Parked { .. }
            ) {
                let (file, path) = self.new_local_file()?;
                let inode = Self::get_mut(&mut st, ino)?;
                if let Content::Local { path: old, .. } | Content::Parked { path: old, .. } = &inode.content {
                    let _ = std::fs::remove_file(old);
                }
                inode.content = Content::Local {
                    file,
                    path,
                    sealed: false,
                    kernel_wrote: false,
                };
            }
            let inode = Self::get_mut(&mut st, ino)?;
            if let Content::Local { file, .. } = &inode.content {
                if inode.size != 0 || size_before != 0 {
                    file.set_len(0).map_err(|e| VfsError::io("truncate", e))?;
                    inode.size = 0;
                    inode.data_rev += 1;
                    inode.mtime = SystemTime::now();
                    inode.ctime = inode.mtime;
                    dirty = true;
                }
            }
        }
        let inode = Self::get_mut(&mut st, ino)?;
        inode.open_handles += 1;
        if mode.write {
            inode.open_writers += 1;
        }
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(
            fh,
            Handle {
                ino,
                write: mode.write,
                append: mode.append,
                dirty,
                pinned,
                io,
            },
        );
        if let Some(blob) = chunked {
            self.open_chunked(fh, blob);
        }
        Ok(fh)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        if let Some(handle) = self.chunked_handle(fh) {
            return self.read_chunked(&handle, offset, size);
        }
        let (file, ino) = {
            let st = self.lock();
            let handle = st.handles.get(&fh).ok_or_else(VfsError::badf)?;
            match &handle.pinned {
                Some(f) => (Some(f.clone()), handle.ino),
                None => match &Self::get(&st, handle.ino)?.content {
                    Content::Local { file, .. } => (Some(file.clone()), handle.ino),
                    Content::Blob { .. } => (None, handle.ino),
                    // Parked between this handle's open and its count (a race
                    // with another release): open it again, then read.
                    Content::Parked { .. } => {
                        let ino = handle.ino;
                        drop(st);
                        self.unpark(ino)?;
                        return self.read(fh, offset, size);
                    }
                    Content::Dir => return Err(VfsError::isdir(Self::path_of(&st, handle.ino))),
                    Content::Symlink { target } => {
                        let bytes = target.as_bytes();
                        let start = (offset as usize).min(bytes.len());
                        let end = (start + size as usize).min(bytes.len());
                        return Ok(bytes[start..end].to_vec());
                    }
                },
            }
        };
        let file = match file {
            Some(f) => f,
            None => {
                // A writable handle whose content went clean (acknowledged) meanwhile.
                let (hash, blob_size) = {
                    let st = self.lock();
                    let inode = Self::get(&st, ino)?;
                    match &inode.content {
                        Content::Blob { hash } => (hash.clone(), inode.size),
                        _ => return Err(VfsError::new(libc::EAGAIN, "content changed; retry")),
                    }
                };
                return self.read_clean(&hash, blob_size, offset, size);
            }
        };
        chunked::read_at_most(&file, offset, size)
    }

    /// Writes at `offset` (at the end for an append handle). As with
    /// RLIMIT_FSIZE, a write that starts below the largest file size is
    /// shortened to end there, and one that starts at or past it fails with
    /// `EFBIG`: nothing is journaled that the server would refuse.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> VfsResult<u32> {
        let limit = self.max_file_bytes();
        let written = std::sync::atomic::AtomicUsize::new(0);
        // Where a write refused for its size started (appends learn it late).
        let refused_at = std::sync::atomic::AtomicU64::new(u64::MAX);
        let change = self.change_staged(fh, "write to staging file", |staged, append_at| {
            let at = append_at.unwrap_or(offset);
            // A zero-length write never extends a file.
            if data.is_empty() {
                return Ok(0);
            }
            if at >= limit {
                refused_at.store(at, Ordering::Relaxed);
                return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
            }
            let fits = data.len().min(usize::try_from(limit - at).unwrap_or(usize::MAX));
            staged.write_all_at(&data[..fits], at)?;
            written.store(fits, Ordering::Relaxed);
            Ok(at + fits as u64)
        });
        match change {
            Ok(()) => Ok(written.load(Ordering::Relaxed) as u32),
            Err(e) if e.errno == libc::EFBIG && refused_at.load(Ordering::Relaxed) != u64::MAX => {
                let at = refused_at.load(Ordering::Relaxed);
                Err(Self::past_max_file_size(
                    "write",
                    at.saturating_add(data.len() as u64),
                    limit,
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// fallocate(2) on a writable handle, applied to the staging file and
    /// committed on close like a write: mode 0 and `FALLOC_FL_KEEP_SIZE`
    /// preallocate, `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` and
    /// `FALLOC_FL_ZERO_RANGE` zero a range; other modes are `EOPNOTSUPP`.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> VfsResult<()> {
        use libc::{FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH, FALLOC_FL_ZERO_RANGE as ZERO};
        if ![0, KEEP, PUNCH | KEEP, ZERO, ZERO | KEEP].contains(&mode) {
            return Err(VfsError::new(
                libc::EOPNOTSUPP,
                format!("fallocate mode {mode:#x} is not supported"),
            ));
        }
        if length == 0 {
            return Err(VfsError::new(libc::EINVAL, "fallocate of zero bytes"));
        }
        let end = offset
            .checked_add(length)
            .filter(|end| i64::try_from(*end).is_ok())
            .ok_or_else(|| VfsError::new(libc::EFBIG, "fallocate beyond the largest file size"))?;
        // Like fallocate(2) past s_maxbytes: refused whatever the mode.
        let limit = self.max_file_bytes();
        if end > limit {
            return Err(Self::past_max_file_size("fallocate", end, limit));
        }
        self.change_staged(fh, "fallocate in staging file", |staged, _| {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid descriptor; offset and length fit in off_t (checked above).
            let rc = unsafe { libc::fallocate(staged.as_raw_fd(), mode, offset as libc::off_t, length as libc::off_t) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(if mode & KEEP != 0 { 0 } else { end })
        })
    }

    /// Changes the bytes of the staging file of `fh`'s (writable) inode:
    /// `change` gets the file and, when the handle appends, the file's size
    /// (where an append goes), and returns the size the file has at least
    /// afterwards. It runs outside
    /// the state lock under the inode's data lock, which keeps this file's
    /// size, appends and truncates in order.
    fn change_staged(
        &self,
        fh: u64,
        what: &str,
        change: impl Fn(&File, Option<u64>) -> std::io::Result<u64>,
    ) -> VfsResult<()> {
        let ino = {
            let st = self.lock();
            let handle = st.handles.get(&fh).ok_or_else(VfsError::badf)?;
            if !handle.write {
                return Err(VfsError::badf());
            }
            handle.ino
        };
        let mut reclaimed = false;
        for _attempt in 0..WRITE_ATTEMPTS {
            // Content may have gone clean after an acknowledgement: stage it again.
            self.make_local(ino, false)?;
            let (staged, data_lock, append) = {
                let st = self.lock();
                let append = st.handles.get(&fh).is_some_and(|h| h.append);
                let inode = Self::get(&st, ino)?;
                let Content::Local { file, .. } = &inode.content else {
                    continue; // gone clean again between the two locks
                };
                (file.clone(), inode.data_lock.clone(), append)
            };
            let _data = data_lock.lock().unwrap_or_else(|p| p.into_inner());
            if !self.is_open_staging(ino, &staged) {
                continue; // sealed by a close (or replaced) before the data lock
            }
            // Only an append needs the size (stable under the data lock).
            let append_at = if append {
                Some(Self::get(&self.lock(), ino)?.size)
            } else {
                None
            };
            let at_least = match change(&staged, append_at) {
                Ok(at_least) => at_least,
                // A full disk may be holding removed files' contents until
                // the journal's next sync: sync now, free them, try again.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && !reclaimed => {
                    reclaimed = true;
                    if self.journal.reclaim_retired_contents() {
                        continue;
                    }
                    return Err(VfsError::io(what, e));
                }
                Err(e) => return Err(VfsError::io(what, e)),
            };
            let mut st = self.lock();
            let inode = Self::get_mut(&mut st, ino)?;
            if !matches!(&inode.content, Content::Local { file, .. } if Arc::ptr_eq(file, &staged)) {
                // Replaced meanwhile (acknowledged and retired, or a remote
                // change): the change went to a file nobody reads; again.
                continue;
            }
            inode.size = inode.size.max(at_least);
            inode.data_rev += 1;
            inode.mtime = SystemTime::now();
            inode.ctime = inode.mtime;
            if let Some(h) = st.handles.get_mut(&fh) {
                h.dirty = true;
            }
            return Ok(());
        }
        Err(VfsError::new(
            libc::EIO,
            format!("{what}: the staging file kept being replaced"),
        ))
    }

    /// The data lock of `ino` (see [`Inode::data_lock`]).
    pub(super) fn data_lock_of(&self, ino: Ino) -> VfsResult<Arc<Mutex<()>>> {
        Ok(Self::get(&self.lock(), ino)?.data_lock.clone())
    }

    /// close(): commits the handle's changes into the journal. Returns once
    /// they survive the mount process dying (`Durability::Local`; the group
    /// sync makes them survive a power loss) or are durable (`Strict`).
    pub fn flush(&self, fh: u64) -> VfsResult<()> {
        let ino = {
            let mut st = self.lock();
            let handle = st.handles.get(&fh).ok_or_else(VfsError::badf)?;
            let ino = handle.ino;
            // The kernel wrote this handle's file itself: whether it changed
            // is not known here, so every close journals it.
            let kernel_writes = Self::kernel_writes_through(&st, handle);
            if !handle.dirty && !kernel_writes {
                return Ok(());
            }
            if let Some(h) = st.handles.get_mut(&fh) {
                h.dirty = false;
            }
            if kernel_writes {
                let inode = Self::get_mut(&mut st, ino)?;
                inode.data_rev += 1;
            }
            ino
        };
        if let Err(e) = self.journal_content(ino).and_then(|()| self.journal.close_point()) {
            if let Some(h) = self.lock().handles.get_mut(&fh) {
                h.dirty = true;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Whether `staged` is still `ino`'s staging file and may change (not
    /// sealed). Checked under the data lock before every change.
    fn is_open_staging(&self, ino: Ino, staged: &Arc<File>) -> bool {
        let st = self.lock();
        st.inodes.get(&ino).is_some_and(
            |i| matches!(&i.content, Content::Local { file, sealed: false, .. } if Arc::ptr_eq(file, staged)),
        )
    }

    /// Snapshots a local file's content into the journal if it changed.
    /// Small contents are copied into the record; larger ones are hashed in
    /// place and the staging file itself becomes the journal's pending
    /// content (a hard link, no copy), sealed until the next change.
    pub(super) fn journal_content(&self, ino: Ino) -> VfsResult<()> {
        let (file, path, data_lock, rev) = {
            let st = self.lock();
            let inode = Self::get(&st, ino)?;
            if inode.unlinked || inode.data_rev == inode.journaled_data_rev {
                return Ok(());
            }
            match &inode.content {
                Content::Local { file, path, .. } => {
                    (file.clone(), path.clone(), inode.data_lock.clone(), inode.data_rev)
                }
                _ => return Ok(()),
            }
        };
        if self
            .lock()
            .kernel_io
            .kernel_writing(ino)
            .is_some_and(|f| Arc::ptr_eq(f, &file))
        {
            return self.journal_kernel_written(ino, &file, &path, &data_lock, rev);
        }
        // Hashing and copying happen outside the lock; the revision check below
        // keeps a concurrent writer's newer change from being marked journaled.
        let size_now = file.metadata().map_err(|e| VfsError::io("stat staging file", e))?.len();
        // The claim keeps the pending file until the record naming it is
        // appended (`journal_content_hash` below).
        let (snapshot, rev) = if size_now > journal::INLINE_LIMIT {
            // Writers wait while the bytes are hashed and linked: what the
            // journal names must be exactly what was hashed.
            let _data = data_lock.lock().unwrap_or_else(|p| p.into_inner());
            if !self.is_open_staging(ino, &file) {
                return Ok(()); // replaced or sealed meanwhile: that close journals it
            }
            // Every write so far is in these bytes (writes need the data lock).
            let rev = Self::get(&self.lock(), ino)?.data_rev;
            let snapshot = self.journal.adopt_staged(&file, &path)?;
            let mut st = self.lock();
            if let Some(inode) = st.inodes.get_mut(&ino) {
                if inode.unlinked {
                    // Removed while it was hashed: no record will name these
                    // bytes, and nobody needs them (see free_unlinked_staging).
                    Self::drop_pending_unless_used(&self.journal, &st, &snapshot.hash);
                    drop(st);
                    drop(snapshot);
                    self.free_unlinked_staging(ino);
                    return Ok(());
                }
                if let Content::Local {
                    file: current, sealed, ..
                } = &mut inode.content
                {
                    *sealed |= Arc::ptr_eq(current, &file);
                }
            }
            (snapshot, rev)
        } else {
            (self.journal.snapshot(&file)?, rev)
        };
        let mut st = self.lock();
        let inode = Self::get(&st, ino)?;
        if inode.unlinked {
            return Ok(());
        }
        let journal::Snapshot {
            hash,
            size,
            inline,
            claim,
        } = snapshot;
        self.journal_content_hash(&mut st, ino, hash, size, inline)?;
        let inode = Self::get_mut(&mut st, ino)?;
        inode.journaled_data_rev = inode.journaled_data_rev.max(rev);
        // Released once the record naming the content is appended, and
        // outside the core's lock (it takes the journal's).
        drop(st);
        drop(claim);
        Ok(())
    }

    /// Journals `ino`'s content by hash (inline when small), unless its
    /// record already says exactly that; retires an open-content link the
    /// record had (write passthrough, see `kernel_writes.rs`).
    pub(super) fn journal_content_hash(
        &self,
        st: &mut State,
        ino: Ino,
        hash: BlobHash,
        size: u64,
        inline: Option<Vec<u8>>,
    ) -> VfsResult<()> {
        let inode = Self::get(st, ino)?;
        let (uid, mtime) = (inode.uid, nanos_of(inode.mtime));
        let prev = st.records.get(&uid);
        let unchanged = prev.is_some_and(|r| {
            !r.open_content
                && r.content.as_ref() == Some(&hash)
                && r.inline.is_some() == inline.is_some()
                && r.mtime == Some(mtime)
        });
        if unchanged {
            return Ok(());
        }
        let was_open = prev.is_some_and(|r| r.open_content);
        let mut record = Self::next_record(st, ino)?;
        record.content = Some(hash);
        record.size = size;
        record.inline = inline.map(|b| Journal::encode_inline(&b));
        record.open_content = false;
        self.commit_record(st, ino, record)?;
        if was_open {
            self.journal.remove_open_content(uid);
        }
        Ok(())
    }

    pub fn release(&self, fh: u64) -> VfsResult<()> {
        self.release_kernel(fh).map(|_| ())
    }

    /// release(); also returns the passthrough epoch whose last handle this
    /// was, so the adapter can let go of its backing file.
    pub fn release_kernel(&self, fh: u64) -> VfsResult<Option<u64>> {
        let flush_needed = self.lock().handles.get(&fh).is_some_and(|h| h.dirty);
        if flush_needed {
            // release() errors never reach close(); flush already reported any.
            if let Err(e) = self.flush(fh) {
                tracing::error!(error = %e, "commit on release failed; the change stays staged");
            }
        }
        let mut st = self.lock();
        let handle = st.handles.remove(&fh).ok_or_else(VfsError::badf)?;
        self.release_chunked(fh);
        let kernel_wrote = Self::kernel_writes_through(&st, &handle);
        let ended_epoch = st.kernel_io.release(handle.ino, handle.io);
        let forget = match st.inodes.get_mut(&handle.ino) {
            Some(inode) => {
                inode.open_handles = inode.open_handles.saturating_sub(1);
                if handle.write {
                    inode.open_writers = inode.open_writers.saturating_sub(1);
                }
                inode.unlinked && !inode.held()
            }
            None => false,
        };
        // The last writer of a file the kernel wrote itself: nothing can
        // change it now (readers still in the epoch make later writers wait),
        // so its bytes are journaled by hash (see kernel_writes.rs).
        let seal = kernel_wrote && !forget && st.inodes.get(&handle.ino).is_some_and(|i| i.open_writers == 0);
        if seal {
            st.kernel_io.seal_staging(handle.ino);
        }
        if forget {
            Self::forget_inode(&mut st, handle.ino);
        } else if !seal {
            Self::park_if_idle(&mut st, handle.ino);
        }
        drop(st);
        if seal {
            self.seal_kernel_written(handle.ino);
        }
        Ok(ended_epoch)
    }

    /// Closed and journaled: the staging file waits for the server without
    /// holding a descriptor.
    pub(super) fn park_if_idle(st: &mut State, ino: Ino) {
        let Some(inode) = st.inodes.get_mut(&ino) else { return };
        let idle = inode.open_handles == 0 && inode.data_rev == inode.journaled_data_rev;
        if let (
            true,
            Content::Local {
                path,
                sealed,
                kernel_wrote,
                ..
            },
        ) = (idle, &inode.content)
        {
            inode.content = Content::Parked {
                path: path.clone(),
                sealed: *sealed,
                kernel_wrote: *kernel_wrote,
            };
        }
    }

    /// Opens a parked staging file again (see [`Content::Parked`]).
    pub(super) fn unpark(&self, ino: Ino) -> VfsResult<()> {
        let path = match &Self::get(&self.lock(), ino)?.content {
            Content::Parked { path, .. } => path.clone(),
            _ => return Ok(()),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| VfsError::io("reopen staging file", e))?;
        let mut st = self.lock();
        let inode = Self::get_mut(&mut st, ino)?;
        if let Content::Parked {
            path: parked,
            sealed,
            kernel_wrote,
        } = &inode.content
        {
            if *parked == path {
                inode.content = Content::Local {
                    file: Arc::new(file),
                    path,
                    sealed: *sealed,
                    kernel_wrote: *kernel_wrote,
                };
            }
        }
        Ok(())
    }
}
