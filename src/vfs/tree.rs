//! The inode table: lookups, attributes, paths, and the bookkeeping that
//! adds, moves and forgets inodes and journals their records.

use super::*;

impl Vfs {
    /// The attributes of `ino`. A directory's link count is 2 plus its
    /// subdirectories (their `..`), as on ext4: `find` and some build tools
    /// rely on it.
    pub(super) fn attr(st: &State, ino: Ino) -> VfsResult<Attr> {
        let inode = Self::get(st, ino)?;
        let nlink = if inode.kind == NodeKind::Dir {
            let subdirs = inode
                .children
                .values()
                .filter(|c| st.inodes.get(c).is_some_and(|c| c.kind == NodeKind::Dir))
                .count();
            2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2)
        } else if inode.unlinked {
            0
        } else {
            1
        };
        // A file the kernel writes itself: its staging file knows its length.
        let (size, mtime) = match st.kernel_io.staging_file(ino).and_then(|f| f.metadata().ok()) {
            Some(m) => (m.len(), m.modified().unwrap_or(inode.mtime)),
            None => (inode.size, inode.mtime),
        };
        Ok(Attr {
            ino,
            kind: inode.kind,
            size,
            mode: inode.mode & 0o7777,
            atime: inode.atime,
            mtime,
            ctime: inode.ctime.max(mtime),
            nlink,
        })
    }

    pub(super) fn get(st: &State, ino: Ino) -> VfsResult<&Inode> {
        st.inodes
            .get(&ino)
            .ok_or_else(|| VfsError::noent(format!("inode {ino}")))
    }

    pub(super) fn get_mut(st: &mut State, ino: Ino) -> VfsResult<&mut Inode> {
        st.inodes
            .get_mut(&ino)
            .ok_or_else(|| VfsError::noent(format!("inode {ino}")))
    }

    pub(super) fn child(st: &State, parent: Ino, name: &str) -> VfsResult<Option<Ino>> {
        let dir = Self::get(st, parent)?;
        if dir.kind != NodeKind::Dir {
            return Err(VfsError::notdir(Self::path_of(st, parent)));
        }
        Ok(dir.children.get(name).copied())
    }

    /// The inode's path inside the project ("" for the root).
    pub(super) fn path_of(st: &State, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut current = ino;
        let mut guard = 0;
        while current != ROOT_INO && guard < 4096 {
            let Some(inode) = st.inodes.get(&current) else { break };
            parts.push(inode.name.clone());
            current = inode.parent;
            guard += 1;
        }
        parts.reverse();
        parts.join("/")
    }

    /// The parent directory's inode (the root is its own parent).
    pub fn parent_of(&self, ino: Ino) -> Ino {
        self.lock().inodes.get(&ino).map(|i| i.parent).unwrap_or(ROOT_INO)
    }

    pub fn path(&self, ino: Ino) -> String {
        Self::path_of(&self.lock(), ino)
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> VfsResult<Attr> {
        // A name no entry can have: ENAMETOOLONG as on ext4, not ENOENT
        // (stat, chmod and unlink of it all start with this lookup).
        check_name_length(name)?;
        let st = self.lock();
        let ino = Self::child(&st, parent, name)?.ok_or_else(|| VfsError::noent(name))?;
        Self::attr(&st, ino)
    }

    pub fn getattr(&self, ino: Ino) -> VfsResult<Attr> {
        let st = self.lock();
        Self::attr(&st, ino)
    }

    pub fn readdir(&self, ino: Ino) -> VfsResult<Vec<DirEntry>> {
        let st = self.lock();
        let dir = Self::get(&st, ino)?;
        if dir.kind != NodeKind::Dir {
            return Err(VfsError::notdir(Self::path_of(&st, ino)));
        }
        Ok(dir
            .children
            .iter()
            .filter_map(|(name, child)| {
                st.inodes.get(child).map(|c| DirEntry {
                    ino: *child,
                    name: name.clone(),
                    kind: c.kind,
                })
            })
            .collect())
    }

    pub fn readlink(&self, ino: Ino) -> VfsResult<String> {
        let st = self.lock();
        match &Self::get(&st, ino)?.content {
            Content::Symlink { target } => Ok(target.clone()),
            _ => Err(VfsError::new(libc::EINVAL, "not a symlink")),
        }
    }

    pub(super) fn check_writable(st: &State, ino: Ino) -> VfsResult<()> {
        let inode = Self::get(st, ino)?;
        if inode.read_only {
            return Err(VfsError::rofs(Self::path_of(st, ino)));
        }
        Ok(())
    }

    pub(super) fn check_new_path(st: &State, parent: Ino, name: &str) -> VfsResult<()> {
        check_name(name)?;
        let parent_path = Self::path_of(st, parent);
        if parent_path.len() + 1 + name.len() > MAX_PATH_BYTES {
            return Err(VfsError::new(
                libc::ENAMETOOLONG,
                format!("path inside the project would be longer than {MAX_PATH_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    /// Whether `inode` has changes the server has not acknowledged (a
    /// journal record, or writes not journaled yet). Local changes win over
    /// remote news: the feed holds news of such an inode back.
    pub(super) fn has_local_changes(st: &State, inode: &Inode) -> bool {
        st.records.contains_key(&inode.uid) || inode.data_rev != inode.journaled_data_rev
    }

    pub(super) fn alloc_ino(st: &mut State) -> Ino {
        let ino = st.next_ino;
        st.next_ino += 1;
        ino
    }

    pub(super) fn insert_inode(st: &mut State, ino: Ino, inode: Inode) {
        st.by_uid.insert(inode.uid, ino);
        if let Some(server) = &inode.server {
            st.by_node.insert(server.node, ino);
        }
        let (parent, name) = (inode.parent, inode.name.clone());
        st.inodes.insert(ino, inode);
        if let Some(p) = st.inodes.get_mut(&parent) {
            p.children.insert(name, ino);
            p.mtime = SystemTime::now();
            p.ctime = p.mtime;
        }
    }

    /// Takes `ino` out of its directory; keeps it while handles are open.
    pub(super) fn detach(st: &mut State, ino: Ino) {
        let (parent, name) = match st.inodes.get(&ino) {
            Some(i) => (i.parent, i.name.clone()),
            None => return,
        };
        if let Some(p) = st.inodes.get_mut(&parent) {
            if p.children.get(&name) == Some(&ino) {
                p.children.remove(&name);
            }
            p.mtime = SystemTime::now();
            p.ctime = p.mtime;
        }
        let keep = st.inodes.get(&ino).is_some_and(Inode::held);
        if keep {
            if let Some(i) = st.inodes.get_mut(&ino) {
                i.unlinked = true;
            }
        } else {
            Self::forget_inode(st, ino);
        }
    }

    /// Moves the entry at `ino` to a fresh inode number (same uid, node and
    /// content) and leaves the old inode, unlinked, to the handles holding
    /// it. Used when passthrough readers pin the old inode to its blob.
    pub(super) fn replace_inode(st: &mut State, ino: Ino, out: &mut Vec<Invalidation>) -> Ino {
        let Some(old) = st.inodes.get_mut(&ino) else {
            return ino;
        };
        old.unlinked = true;
        let mut fresh = Inode::new(
            old.uid,
            old.parent,
            old.name.clone(),
            old.kind,
            old.mode,
            old.content.clone(),
        );
        fresh.size = old.size;
        fresh.mtime = old.mtime;
        fresh.atime = old.atime;
        fresh.ctime = old.ctime;
        fresh.server = old.server.clone();
        fresh.data_rev = old.data_rev;
        fresh.journaled_data_rev = old.journaled_data_rev;
        fresh.read_only = old.read_only;
        fresh.last_status = old.last_status;
        let (parent, name) = (fresh.parent, fresh.name.clone());
        let new_ino = Self::alloc_ino(st);
        Self::insert_inode(st, new_ino, fresh);
        out.push(Invalidation::Entry { parent, name });
        new_ino
    }

    /// The kernel got `ino` in a reply (lookup, create, mkdir, symlink,
    /// readdirplus): it holds one more reference until it forgets it.
    pub fn kernel_ref(&self, ino: Ino) {
        if let Some(inode) = self.lock().inodes.get_mut(&ino) {
            inode.kernel_refs += 1;
        }
    }

    /// The kernel dropped `n` references (FUSE forget). An inode already
    /// removed from the tree goes once nothing holds it.
    pub fn kernel_forget(&self, ino: Ino, n: u64) {
        let mut st = self.lock();
        let Some(inode) = st.inodes.get_mut(&ino) else { return };
        inode.kernel_refs = inode.kernel_refs.saturating_sub(n);
        if inode.unlinked && !inode.held() && ino != ROOT_INO {
            Self::forget_inode(&mut st, ino);
        }
    }

    pub(super) fn forget_inode(st: &mut State, ino: Ino) {
        if let Some(inode) = st.inodes.remove(&ino) {
            if st.by_uid.get(&inode.uid) == Some(&ino) {
                st.by_uid.remove(&inode.uid);
            }
            if let Some(server) = &inode.server {
                if st.by_node.get(&server.node) == Some(&ino) {
                    st.by_node.remove(&server.node);
                }
            }
            if let Content::Local { path, .. } | Content::Parked { path, .. } = &inode.content {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    pub(super) fn parent_ref(st: &State, parent: Ino) -> ParentRef {
        if parent == ROOT_INO {
            return ParentRef::Root;
        }
        match st.inodes.get(&parent) {
            Some(p) => match &p.server {
                Some(s) => ParentRef::Node(s.node),
                None => ParentRef::Local(p.uid),
            },
            None => ParentRef::Root,
        }
    }

    /// The journal record describing `ino`'s pending state, revision bumped.
    pub(super) fn next_record(st: &State, ino: Ino) -> VfsResult<Record> {
        let inode = Self::get(st, ino)?;
        let prev = st.records.get(&inode.uid);
        Ok(Record {
            uid: inode.uid,
            rev: prev.map(|r| r.rev + 1).unwrap_or(1),
            node: inode.server.as_ref().map(|s| s.node),
            base_version: inode.server.as_ref().map(|s| s.version),
            server_path: inode.server.as_ref().map(|s| s.path.clone()),
            parent: Self::parent_ref(st, inode.parent),
            name: inode.name.clone(),
            deleted: false,
            kind: inode.kind,
            mode: inode.mode,
            content: prev.and_then(|r| r.content.clone()),
            size: inode.size,
            meta_dirty: prev.is_some_and(|r| r.meta_dirty),
            changed_at: now_millis(),
            mtime: Some(nanos_of(inode.mtime)),
            atime: Some(nanos_of(inode.atime)),
            inline: prev.and_then(|r| r.inline.clone()),
            last_error: None,
            open_content: prev.is_some_and(|r| r.open_content),
        })
    }

    /// Journals a record and makes it the inode's pending state.
    pub(super) fn commit_record(&self, st: &mut State, ino: Ino, mut record: Record) -> VfsResult<()> {
        record.changed_at = now_millis();
        self.journal.write(&record)?;
        if let Some(inode) = st.inodes.get(&ino) {
            st.records.insert(inode.uid, record);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Re-journals an inode whose name, parent or mode changed.
    pub(super) fn journal_namespace(&self, st: &mut State, ino: Ino) -> VfsResult<()> {
        let record = Self::next_record(st, ino)?;
        self.commit_record(st, ino, record)
    }
}
