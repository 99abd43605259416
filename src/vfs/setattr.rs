//! setattr(2): truncate by path or handle, chmod, utimensat; each change is
//! journaled like a write (a size change) or as metadata (mode, times).

use super::*;

impl Vfs {
    pub fn setattr(&self, ino: Ino, fh: Option<u64>, set: SetAttr) -> VfsResult<Attr> {
        let out = self.setattr_journaled(ino, fh, set)?;
        // Written before the call returns (outside the core's lock); durable
        // with the next group sync (docs/SEMANTICS.md, "Durability").
        self.journal.make_written()?;
        Ok(out)
    }

    pub(super) fn setattr_journaled(&self, ino: Ino, fh: Option<u64>, set: SetAttr) -> VfsResult<Attr> {
        if set.size.is_some() || set.mode.is_some() || set.mtime.is_some() || set.atime.is_some() {
            Self::check_writable(&self.lock(), ino)?;
        }
        if let Some(size) = set.size {
            if self.lock().inodes.get(&ino).is_some_and(|i| i.kind == NodeKind::Dir) {
                return Err(VfsError::isdir(self.path(ino)));
            }
            let limit = self.max_file_bytes();
            if size > limit {
                return Err(Self::past_max_file_size("truncate", size, limit));
            }
            // truncate(2) changes what passthrough readers' backing file shows.
            self.await_passthrough_readers(ino)?;
            let data_lock = self.data_lock_of(ino)?;
            let mut attempts = 0;
            let (data_guard, mut st) = loop {
                self.make_local(ino, size == 0)?;
                let data = data_lock.lock().unwrap_or_else(|p| p.into_inner());
                let st = self.lock();
                // Sealed or parked by a close in between: again.
                let ready = matches!(&Self::get(&st, ino)?.content, Content::Local { sealed: false, .. });
                if ready {
                    break (data, st);
                }
                attempts += 1;
                if attempts == WRITE_ATTEMPTS {
                    return Err(VfsError::new(libc::EIO, "truncate: the staging file kept being sealed"));
                }
            };
            let inode = Self::get_mut(&mut st, ino)?;
            if let Content::Local { file, .. } = &inode.content {
                file.set_len(size).map_err(|e| VfsError::io("truncate", e))?;
            }
            inode.size = size;
            inode.data_rev += 1;
            inode.mtime = SystemTime::now();
            inode.ctime = inode.mtime;
            let through_handle = fh.and_then(|f| st.handles.get_mut(&f)).filter(|h| h.write);
            match through_handle {
                // ftruncate on a writable handle: committed with that handle's close.
                Some(handle) => handle.dirty = true,
                None => {
                    // journal_content takes the data lock itself.
                    drop(st);
                    drop(data_guard);
                    self.journal_content(ino)?;
                }
            }
        }
        let mut st = self.lock();
        if let Some(mtime) = set.mtime {
            Self::set_staging_mtime(&st, ino, mtime);
        }
        let inode = Self::get_mut(&mut st, ino)?;
        let mut changed = false;
        if let Some(mode) = set.mode.map(|m| m & 0o7777).filter(|m| *m != inode.mode) {
            inode.mode = mode;
            changed = true;
        }
        // utimensat: UTIME_OMIT arrives as None, UTIME_NOW as the current time.
        if let Some(mtime) = set.mtime {
            inode.mtime = mtime;
            changed = true;
        }
        if let Some(atime) = set.atime {
            inode.atime = atime;
            changed = true;
        }
        if changed {
            inode.ctime = SystemTime::now();
            // Mode and times are the file's metadata: committed as a version.
            // (A directory's are journaled too, but stay on this mount: the
            // server versions files only.)
            let mut record = Self::next_record(&st, ino)?;
            record.meta_dirty = true;
            self.commit_record(&mut st, ino, record)?;
        }
        Self::attr(&st, ino)
    }
}
