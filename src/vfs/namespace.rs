//! Namespace operations: creating files, directories and symlinks,
//! removing and renaming them (with the editor-save node handover), each
//! journaled before it returns.

use super::*;

impl Vfs {
    pub(super) fn new_local_file(&self) -> VfsResult<(Arc<File>, PathBuf)> {
        self.staging.create()
    }

    pub fn mkdir(&self, parent: Ino, name: &str, mode: u32) -> VfsResult<Attr> {
        let out = self.mkdir_journaled(parent, name, mode)?;
        // Written before the call returns (outside the core's lock); durable
        // with the next group sync (docs/SEMANTICS.md, "Durability").
        self.journal.make_written()?;
        Ok(out)
    }

    pub(super) fn mkdir_journaled(&self, parent: Ino, name: &str, mode: u32) -> VfsResult<Attr> {
        let mut st = self.lock();
        Self::check_writable(&st, parent)?;
        Self::check_new_path(&st, parent, name)?;
        if Self::child(&st, parent, name)?.is_some() {
            return Err(VfsError::exists(name));
        }
        let ino = Self::alloc_ino(&mut st);
        let inode = Inode::new(
            rand::random(),
            parent,
            name.to_string(),
            NodeKind::Dir,
            mode & 0o7777,
            Content::Dir,
        );
        Self::insert_inode(&mut st, ino, inode);
        if let Err(e) = self.journal_namespace(&mut st, ino) {
            Self::detach(&mut st, ino);
            return Err(e);
        }
        Self::attr(&st, ino)
    }

    pub fn symlink(&self, parent: Ino, name: &str, target: &str) -> VfsResult<Attr> {
        let out = self.symlink_journaled(parent, name, target)?;
        // Written before the call returns (outside the core's lock); durable
        // with the next group sync (docs/SEMANTICS.md, "Durability").
        self.journal.make_written()?;
        Ok(out)
    }

    pub(super) fn symlink_journaled(&self, parent: Ino, name: &str, target: &str) -> VfsResult<Attr> {
        let mut st = self.lock();
        Self::check_writable(&st, parent)?;
        Self::check_new_path(&st, parent, name)?;
        if target.is_empty() || target.len() > 4096 || target.contains('\0') {
            return Err(VfsError::new(
                libc::EINVAL,
                "symlink target must be 1-4096 bytes without NUL",
            ));
        }
        if Self::child(&st, parent, name)?.is_some() {
            return Err(VfsError::exists(name));
        }
        let ino = Self::alloc_ino(&mut st);
        let mut inode = Inode::new(
            rand::random(),
            parent,
            name.to_string(),
            NodeKind::Symlink,
            0o777,
            Content::Symlink {
                target: target.to_string(),
            },
        );
        inode.size = target.len() as u64;
        Self::insert_inode(&mut st, ino, inode);
        let mut record = Self::next_record(&st, ino)?;
        record.content = Some(BlobHash::of(target.as_bytes()));
        record.inline = Some(Journal::encode_inline(target.as_bytes()));
        record.size = target.len() as u64;
        if let Err(e) = self.commit_record(&mut st, ino, record) {
            Self::detach(&mut st, ino);
            return Err(e);
        }
        Self::attr(&st, ino)
    }

    /// Creates (or, without `exclusive`, opens) a regular file.
    pub fn create(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        open: OpenMode,
        exclusive: bool,
    ) -> VfsResult<(Attr, u64)> {
        let existing = {
            let st = self.lock();
            Self::check_writable(&st, parent)?;
            Self::check_new_path(&st, parent, name)?;
            Self::child(&st, parent, name)?
        };
        if let Some(ino) = existing {
            if exclusive {
                return Err(VfsError::exists(name));
            }
            let fh = self.open(ino, OpenMode { write: true, ..open })?;
            return Ok((self.getattr(ino)?, fh));
        }
        let kernel_writes = self.kernel_may_write_new_files();
        let (file, path) = self.new_local_file()?;
        let mut st = self.lock();
        if Self::child(&st, parent, name)?.is_some() {
            // Lost a race with another creator: behave like O_EXCL said.
            self.staging.retire(&path, false, false, 0, Some(file));
            return Err(VfsError::exists(name));
        }
        let ino = Self::alloc_ino(&mut st);
        let mut inode = Inode::new(
            rand::random(),
            parent,
            name.to_string(),
            NodeKind::File,
            mode & 0o7777,
            Content::Local {
                file: file.clone(),
                path,
                sealed: false,
                kernel_wrote: kernel_writes,
            },
        );
        inode.data_rev = 1;
        inode.open_handles = 1;
        inode.open_writers = 1;
        Self::insert_inode(&mut st, ino, inode);
        let fh = st.next_fh;
        st.next_fh += 1;
        // A brand-new inode: no passthrough readers can hold it, and the
        // kernel may write it itself (kernel_writes.rs).
        let io = if kernel_writes {
            st.kernel_io.start_staging(ino, file)
        } else {
            st.kernel_io.open(ino, None).ok()
        }
        .unwrap_or(HandleIo::Cached);
        // A new file is committed at close even if nothing is written to it.
        st.handles.insert(
            fh,
            Handle {
                ino,
                write: true,
                append: open.append,
                dirty: true,
                pinned: None,
                io,
            },
        );
        Ok((Self::attr(&st, ino)?, fh))
    }

    /// Journals that `ino` (and, for a directory, everything below) is gone.
    pub(super) fn journal_deletion(&self, st: &mut State, ino: Ino) -> VfsResult<()> {
        let inode = Self::get(st, ino)?;
        // Content the deletion makes moot: its pending file goes too (on a
        // full disk, that is what rm must free).
        let moot = st.records.get(&inode.uid).and_then(|r| r.pending_content().cloned());
        let uid = inode.uid;
        let open_content = st.records.get(&uid).is_some_and(|r| r.open_content);
        let result = match &inode.server {
            Some(server) => {
                st.local_news.deleting(server.node);
                let mut record = Self::next_record(st, ino)?;
                record.deleted = true;
                record.content = None;
                record.inline = None;
                record.open_content = false;
                self.commit_record(st, ino, record)
            }
            // Never reached the server: forgetting the record is enough.
            None => {
                let uid = inode.uid;
                if st.records.remove(&uid).is_some() {
                    self.journal.remove(uid)?;
                }
                Ok(())
            }
        };
        if let Some(hash) = moot {
            Self::drop_pending_unless_used(&self.journal, st, &hash);
        }
        if open_content {
            self.journal.remove_open_content(uid);
        }
        result
    }

    /// Removes the pending file of `hash` unless a live record still names
    /// it (identical contents share one pending file).
    pub(super) fn drop_pending_unless_used(journal: &Journal, st: &State, hash: &BlobHash) {
        let used = st.records.values().any(|r| r.pending_content() == Some(hash));
        if !used {
            journal.remove_pending_blob(hash);
        }
    }

    pub fn unlink(&self, parent: Ino, name: &str) -> VfsResult<()> {
        let removed = Self::child(&self.lock(), parent, name)?;
        self.unlink_journaled(parent, name)?;
        // Written before the call returns (outside the core's lock); durable
        // with the next group sync (docs/SEMANTICS.md, "Durability").
        match self.journal.make_written() {
            // A full disk: rm must free space, not fail for want of it.
            Err(e) if e.errno == libc::ENOSPC && removed.is_some_and(|ino| self.free_unlinked_staging_soon(ino)) => {
                self.journal.make_written()
            }
            other => other,
        }
    }

    /// [`Vfs::free_unlinked_staging`], waiting (at most 1 s) for handles
    /// still open: the kernel sends a closed file's release after close()
    /// returned, so `cmd > f; rm f` can reach the mount before it.
    fn free_unlinked_staging_soon(&self, ino: Ino) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            if self.free_unlinked_staging(ino) {
                return true;
            }
            let open = self.lock().inodes.get(&ino).is_some_and(|i| i.open_handles > 0);
            if !open || std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Empties the staging file of an unlinked inode that no handle has
    /// open (only the kernel still refers to it, and forgets it soon): its
    /// bytes can never be read or committed again. True if it freed any.
    pub(super) fn free_unlinked_staging(&self, ino: Ino) -> bool {
        let st = self.lock();
        let Some(inode) = st.inodes.get(&ino).filter(|i| i.unlinked && i.open_handles == 0) else {
            return false;
        };
        // A sealed one's bytes may be the journal's pending content too (a
        // hard link): emptied only once no other name holds them (the journal
        // dropped its link at once when its record never reached the log:
        // `Journal::remove_pending_blob`).
        let empty_if_private = |file: &File, sealed: bool| {
            use std::os::unix::fs::MetadataExt;
            (!sealed || file.metadata().is_ok_and(|m| m.nlink() == 1)) && file.set_len(0).is_ok()
        };
        match &inode.content {
            Content::Local { file, sealed, .. } if inode.size > 0 => empty_if_private(file, *sealed),
            Content::Parked { path, sealed, .. } if inode.size > 0 => OpenOptions::new()
                .write(true)
                .open(path)
                .is_ok_and(|f| empty_if_private(&f, *sealed)),
            _ => false,
        }
    }

    pub(super) fn unlink_journaled(&self, parent: Ino, name: &str) -> VfsResult<()> {
        let mut st = self.lock();
        Self::check_writable(&st, parent)?;
        let ino = Self::child(&st, parent, name)?.ok_or_else(|| VfsError::noent(name))?;
        Self::check_writable(&st, ino)?;
        if Self::get(&st, ino)?.kind == NodeKind::Dir {
            return Err(VfsError::isdir(name));
        }
        self.remove_entry(&mut st, ino)
    }

    pub fn rmdir(&self, parent: Ino, name: &str) -> VfsResult<()> {
        self.rmdir_journaled(parent, name)?;
        // Written before the call returns (outside the core's lock); durable
        // with the next group sync (docs/SEMANTICS.md, "Durability").
        self.journal.make_written()
    }

    pub(super) fn rmdir_journaled(&self, parent: Ino, name: &str) -> VfsResult<()> {
        let mut st = self.lock();
        Self::check_writable(&st, parent)?;
        let ino = Self::child(&st, parent, name)?.ok_or_else(|| VfsError::noent(name))?;
        Self::check_writable(&st, ino)?;
        let inode = Self::get(&st, ino)?;
        if inode.kind != NodeKind::Dir {
            return Err(VfsError::notdir(name));
        }
        if !inode.children.is_empty() {
            return Err(VfsError::new(libc::ENOTEMPTY, format!("{name} is not empty")));
        }
        self.remove_entry(&mut st, ino)
    }

    /// Removes an entry. If a new, never-synced file now stands where the
    /// server still has this node (vim's rename-to-backup save, or a
    /// temp-file-and-rename), the new file inherits the node so history
    /// continues instead of a delete plus an unrelated create.
    pub(super) fn remove_entry(&self, st: &mut State, ino: Ino) -> VfsResult<()> {
        if let Some(heir) = Self::heir_for(st, ino) {
            self.inherit(st, ino, heir)?;
        } else {
            self.journal_deletion(st, ino)?;
        }
        Self::detach(st, ino);
        Ok(())
    }

    /// A new local file standing at the server path of `ino`'s node.
    pub(super) fn heir_for(st: &State, ino: Ino) -> Option<Ino> {
        let inode = st.inodes.get(&ino)?;
        let server = inode.server.as_ref()?;
        if inode.kind != NodeKind::File {
            return None;
        }
        let mut current = ROOT_INO;
        for part in server.path.split('/') {
            current = *st.inodes.get(&current)?.children.get(part)?;
        }
        let heir = st.inodes.get(&current)?;
        (current != ino && heir.server.is_none() && heir.kind == NodeKind::File).then_some(current)
    }

    /// `heir` takes over `old`'s server node: its next commit is a new version
    /// of that node, based on the version `old` had.
    pub(super) fn inherit(&self, st: &mut State, old: Ino, heir: Ino) -> VfsResult<()> {
        let server = Self::get(st, old)?.server.clone();
        let old_uid = Self::get(st, old)?.uid;
        if let Some(server) = server {
            st.by_node.insert(server.node, heir);
            let heir_inode = Self::get_mut(st, heir)?;
            heir_inode.server = Some(server);
            let mut record = Self::next_record(st, heir)?;
            if record.content.is_none() {
                // Nothing journaled yet for the heir (still open): its close will be.
                record.meta_dirty = true;
            }
            self.commit_record(st, heir, record)?;
        }
        self.journal.remove(old_uid)?;
        if st.records.remove(&old_uid).is_some_and(|r| r.open_content) {
            self.journal.remove_open_content(old_uid);
        }
        if let Some(i) = st.inodes.get_mut(&old) {
            i.server = None;
        }
        Ok(())
    }

    pub fn rename(&self, parent: Ino, name: &str, new_parent: Ino, new_name: &str, no_replace: bool) -> VfsResult<()> {
        self.rename_journaled(parent, name, new_parent, new_name, no_replace)?;
        // Written before the call returns (outside the core's lock); durable
        // with the next group sync (docs/SEMANTICS.md, "Durability").
        self.journal.make_written()
    }

    pub(super) fn rename_journaled(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        no_replace: bool,
    ) -> VfsResult<()> {
        let mut st = self.lock();
        Self::check_writable(&st, parent)?;
        Self::check_writable(&st, new_parent)?;
        Self::check_new_path(&st, new_parent, new_name)?;
        let ino = Self::child(&st, parent, name)?.ok_or_else(|| VfsError::noent(name))?;
        Self::check_writable(&st, ino)?;
        if Self::get(&st, new_parent)?.kind != NodeKind::Dir {
            return Err(VfsError::notdir(new_name));
        }
        // A directory cannot move below itself.
        let mut up = new_parent;
        while up != ROOT_INO {
            if up == ino {
                return Err(VfsError::new(libc::EINVAL, "cannot move a directory into itself"));
            }
            up = Self::get(&st, up)?.parent;
        }
        let target = Self::child(&st, new_parent, new_name)?;
        if target == Some(ino) {
            return Ok(());
        }
        let moving_kind = Self::get(&st, ino)?.kind;
        if let Some(target) = target {
            if no_replace {
                return Err(VfsError::exists(new_name));
            }
            let t = Self::get(&st, target)?;
            match (moving_kind == NodeKind::Dir, t.kind == NodeKind::Dir) {
                (true, false) => return Err(VfsError::notdir(new_name)),
                (false, true) => return Err(VfsError::isdir(new_name)),
                (true, true) if !t.children.is_empty() => {
                    return Err(VfsError::new(libc::ENOTEMPTY, format!("{new_name} is not empty")))
                }
                _ => {}
            }
            Self::check_writable(&st, target)?;
        }
        // Move first, so inheritance sees the new layout.
        let now = SystemTime::now();
        if let Some(p) = st.inodes.get_mut(&parent) {
            p.children.remove(name);
            (p.mtime, p.ctime) = (now, now);
        }
        if let Some(target) = target {
            if let Some(p) = st.inodes.get_mut(&new_parent) {
                p.children.remove(new_name);
            }
            let inherits = moving_kind == NodeKind::File
                && Self::get(&st, ino)?.server.is_none()
                && Self::get(&st, target)?.server.is_some();
            if let Some(t) = st.inodes.get_mut(&target) {
                // Detached below; keep parent/name for the journal record.
                t.unlinked = true;
            }
            {
                let inode = Self::get_mut(&mut st, ino)?;
                inode.parent = new_parent;
                inode.name = new_name.to_string();
            }
            if let Some(p) = st.inodes.get_mut(&new_parent) {
                p.children.insert(new_name.to_string(), ino);
            }
            if inherits {
                // The classic editor save: the temp file becomes the target.
                self.inherit(&mut st, target, ino)?;
            } else {
                self.journal_deletion(&mut st, target)?;
            }
            let keep = st.inodes.get(&target).is_some_and(Inode::held);
            if !keep {
                Self::forget_inode(&mut st, target);
            }
        } else {
            let inode = Self::get_mut(&mut st, ino)?;
            inode.parent = new_parent;
            inode.name = new_name.to_string();
            if let Some(p) = st.inodes.get_mut(&new_parent) {
                p.children.insert(new_name.to_string(), ino);
            }
        }
        if let Some(p) = st.inodes.get_mut(&new_parent) {
            (p.mtime, p.ctime) = (now, now);
        }
        Self::get_mut(&mut st, ino)?.ctime = now;
        // A file renamed away from a node's server path may free it for an heir
        // already standing there (vim: rename to backup happens before the write).
        let needs_record = {
            let inode = Self::get(&st, ino)?;
            inode.server.is_some() || st.records.contains_key(&inode.uid)
        };
        if needs_record {
            self.journal_namespace(&mut st, ino)?;
        }
        Ok(())
    }
}
