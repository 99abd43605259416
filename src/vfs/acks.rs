//! Applying the server's answers to the tree: acknowledged commits,
//! namespace changes and deletions settle their records, bind inodes to
//! nodes, seed the shared cache and retire staging files; refusals stay
//! queued with their reason. (`drain.rs` turns records into operations.)

use super::*;
use crate::api::VersionInfo;
use crate::cache::Adoption;

impl Vfs {
    /// Drops a record if it is still at `rev`; returns whether it did.
    fn settle(&self, st: &mut State, uid: u64, rev: u64) -> VfsResult<bool> {
        match st.records.get(&uid) {
            Some(r) if r.rev == rev => {
                let pending_blob = r.pending_content().cloned();
                let open_content = r.open_content;
                self.journal.remove(uid)?;
                st.records.remove(&uid);
                if open_content {
                    self.journal.remove_open_content(uid);
                }
                if let Some(hash) = pending_blob {
                    Self::drop_pending_unless_used(&self.journal, st, &hash);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Rewrites a record that has newer changes than what was acknowledged.
    fn rebase(&self, st: &mut State, uid: u64, server: &ServerState, clean: bool) -> VfsResult<()> {
        if let Some(r) = st.records.get_mut(&uid) {
            r.node = Some(server.node);
            r.server_path = Some(server.path.clone());
            if clean || r.base_version.is_some() {
                r.base_version = Some(if clean {
                    server.version
                } else {
                    r.base_version.unwrap_or(server.version)
                });
            }
            let copy = r.clone();
            self.journal.write(&copy)?;
        }
        Ok(())
    }

    /// Binds the inode of `uid` to the node the server answered with.
    fn bind(&self, st: &mut State, uid: u64, v: &VersionInfo, out: &mut Vec<Invalidation>) -> VfsResult<Option<Ino>> {
        let Some(ino) = st.by_uid.get(&uid).copied() else {
            return Ok(None);
        };
        let other = st.by_node.get(&v.node).copied().filter(|other| *other != ino);
        // Only when the answer is newer than what that inode shows: a late
        // answer must not undo a later move the feed already applied.
        let older = |o: &Ino| {
            st.inodes
                .get(o)
                .and_then(|i| i.server.as_ref())
                .is_some_and(|s| s.version < v.version)
        };
        if let Some(other) = other.filter(older) {
            self.release_node(st, other, out)?;
        }
        st.by_node.insert(v.node, ino);
        if let Some(inode) = st.inodes.get_mut(&ino) {
            inode.server = Some(ServerState::from_version(v));
        }
        Ok(Some(ino))
    }

    /// The feed already showed a later version of the node this commit made
    /// at another inode: another writer moved the new file before the answer
    /// came back, and the feed put it where they moved it. That inode is the
    /// node now. This file goes if it is unchanged since the commit; if it
    /// changed, its change is committed as a new file where it was written
    /// (binding it too would leave two inodes claiming one node). True if
    /// either happened: nothing else of the answer applies.
    fn superseded_by_news(
        &self,
        st: &mut State,
        uid: u64,
        rev: u64,
        v: &VersionInfo,
        out: &mut Vec<Invalidation>,
    ) -> VfsResult<bool> {
        let Some(ino) = st.by_uid.get(&uid).copied() else {
            return Ok(false);
        };
        if !Self::newer_elsewhere(st, ino, v) {
            return Ok(false);
        }
        let Some(inode) = st.inodes.get(&ino) else {
            return Ok(false);
        };
        let quiet = inode.kind == NodeKind::File
            && inode.open_writers == 0
            && inode.data_rev == inode.journaled_data_rev
            && st.records.get(&uid).is_some_and(|r| r.rev == rev);
        if !quiet {
            self.unbind_locked(st, uid)?;
            return Ok(true);
        }
        let (parent, name) = (inode.parent, inode.name.clone());
        self.settle(st, uid, rev)?;
        Self::detach(st, ino);
        out.push(Invalidation::Entry { parent, name });
        Ok(true)
    }

    /// Whether an inode other than `ino` shows `v`'s node at `v`'s version
    /// or later (the feed put it there first).
    fn newer_elsewhere(st: &State, ino: Ino, v: &VersionInfo) -> bool {
        st.by_node.get(&v.node).copied().is_some_and(|other| {
            other != ino
                && st
                    .inodes
                    .get(&other)
                    .and_then(|i| i.server.as_ref())
                    .is_some_and(|s| s.version >= v.version)
        })
    }

    /// Another inode showed the node the server just put at one of this
    /// mount's paths (another writer moved it there, and this mount's create
    /// landed in it): the server has nothing at that inode's path any more.
    /// A clean file goes, as the other writer's rename would have taken it;
    /// one with local changes keeps them and is committed as a new file.
    fn release_node(&self, st: &mut State, ino: Ino, out: &mut Vec<Invalidation>) -> VfsResult<()> {
        let Some(inode) = st.inodes.get(&ino) else {
            return Ok(());
        };
        if inode.kind == NodeKind::Dir {
            // Its entries follow the directory's own events; leave it be.
            return Ok(());
        }
        let busy = Self::has_local_changes(st, inode) || inode.open_writers > 0;
        if busy {
            let uid = inode.uid;
            return self.unbind_locked(st, uid);
        }
        let (parent, name) = (inode.parent, inode.name.clone());
        if let Some(inode) = st.inodes.get_mut(&ino) {
            inode.server = None;
        }
        Self::detach(st, ino);
        out.push(Invalidation::Entry { parent, name });
        Ok(())
    }

    /// A clean file whose node's head another writer changed before this
    /// mount's own change of it landed: the answer carries that head, so the
    /// file now shows its bytes (a new inode if passthrough readers pin the
    /// old ones).
    /// The file shows the server's bytes of `v` now: its times too (the
    /// writer's mtime, or the commit time for merged bytes).
    fn adopt_version_times(inode: &mut Inode, v: &VersionInfo) {
        let (mtime, atime) = server_times(v.mtime.as_deref(), v.atime.as_deref(), &v.created_at)
            .unwrap_or_else(|| (SystemTime::now(), SystemTime::now()));
        inode.mtime = mtime;
        inode.atime = atime;
        inode.ctime = SystemTime::now();
    }

    fn adopt_head_content(st: &mut State, ino: Ino, v: &VersionInfo, out: &mut Vec<Invalidation>) {
        let Some(inode) = st.inodes.get(&ino) else { return };
        let clean = !Self::has_local_changes(st, inode);
        let stale = matches!(&inode.content, Content::Blob { hash } if *hash != v.hash);
        if v.kind != NodeKind::File || !clean || !stale || inode.open_writers > 0 {
            return;
        }
        let ino = if st.kernel_io.busy(ino) {
            Self::replace_inode(st, ino, out)
        } else {
            ino
        };
        if let Some(inode) = st.inodes.get_mut(&ino) {
            inode.content = Content::Blob { hash: v.hash.clone() };
            inode.size = v.size;
            Self::adopt_version_times(inode, v);
            out.push(Invalidation::Inode(ino));
        }
    }

    /// A mkdir or rename reached the server.
    /// The server made a node for a file or directory that was removed here
    /// while the request was in flight (its record was simply forgotten,
    /// since it had no node yet), or that took another node meanwhile.
    /// Journal the node's deletion so the server does not keep what the
    /// user deleted or replaced. Returns true when it did.
    fn orphaned(&self, st: &mut State, uid: u64, v: &VersionInfo) -> VfsResult<bool> {
        let gone = st
            .by_uid
            .get(&uid)
            .and_then(|i| st.inodes.get(i))
            .is_none_or(|i| i.unlinked);
        // The file's record may name another node by now: while its create
        // was in flight, it was renamed over a file the server has, and took
        // that file's node (one clean commit of an editor's save), perhaps
        // to be removed after. The record commits to (or deletes) that node;
        // the node this answer made is nobody's, and needs a deletion of its
        // own, under a new uid. Binding the file to it instead would leave
        // the other node on the server, hidden from this mount.
        let uid = match st.records.get(&uid) {
            Some(r) if r.node.is_some_and(|n| n != v.node) => rand::random(),
            Some(_) => return Ok(false),
            None if gone => uid,
            None => return Ok(false),
        };
        st.local_news.deleting(v.node);
        // The directory the server put it in, so the deletion follows that
        // directory if it is renamed before the deletion is sent.
        let parent = match v.path.rsplit_once('/') {
            None => ParentRef::Root,
            Some((dir, _)) => st
                .inodes
                .iter()
                .find(|(_, i)| !i.unlinked && i.server.as_ref().is_some_and(|s| s.path == dir))
                .map(|(ino, _)| Self::parent_ref(st, *ino))
                .unwrap_or(ParentRef::Root),
        };
        let record = Record {
            uid,
            rev: 1,
            node: Some(v.node),
            base_version: Some(v.version),
            server_path: Some(v.path.clone()),
            parent,
            name: v.path.rsplit('/').next().unwrap_or(&v.path).to_string(),
            deleted: true,
            kind: v.kind,
            mode: v.mode,
            content: None,
            size: 0,
            meta_dirty: false,
            changed_at: now_millis(),
            mtime: None,
            atime: None,
            inline: None,
            last_error: None,
            open_content: false,
        };
        self.journal.write(&record)?;
        st.records.insert(uid, record);
        self.wake.notify_one();
        Ok(true)
    }

    pub fn ack_namespace(&self, uid: u64, rev: u64, v: &VersionInfo) -> VfsResult<()> {
        let result = self.apply_namespace_answer(uid, rev, v);
        self.apply_withheld(v.node);
        result
    }

    fn apply_namespace_answer(&self, uid: u64, rev: u64, v: &VersionInfo) -> VfsResult<()> {
        let mut invalidate = Vec::new();
        let mut st = self.lock();
        if self.orphaned(&mut st, uid, v)? {
            return Ok(());
        }
        let before = st
            .by_uid
            .get(&uid)
            .and_then(|i| st.inodes.get(i))
            .and_then(|i| i.server.as_ref())
            .map(|s| (s.path.clone(), s.hash.clone()));
        let ino = self.bind(&mut st, uid, v, &mut invalidate)?;
        if v.kind == NodeKind::Dir {
            if let Some((old, _)) = &before {
                self.rebase_server_paths(&mut st, old, &v.path)?;
            }
            // Records inside it named it by local uid, which a remount cannot resolve.
            for r in st.records.values_mut() {
                if r.parent == ParentRef::Local(uid) {
                    r.parent = ParentRef::Node(v.node);
                    self.journal.write(r)?;
                }
            }
        }
        let nothing_else = st
            .records
            .get(&uid)
            .is_some_and(|r| r.content.is_none() && !r.meta_dirty);
        if !(nothing_else && self.settle(&mut st, uid, rev)?) {
            // Pending content derives from the head this mount knew: only
            // when the answer carries that same content may it be the new
            // base; otherwise another writer's change sits in between, and
            // the server must merge with it instead of overwriting it.
            let same_content = before.as_ref().is_none_or(|(_, hash)| *hash == v.hash);
            let server = ServerState::from_version(v);
            self.rebase(&mut st, uid, &server, same_content || v.kind == NodeKind::Dir)?;
        }
        if let Some(ino) = ino {
            Self::adopt_head_content(&mut st, ino, v, &mut invalidate);
        }
        drop(st);
        self.invalidate(invalidate);
        Ok(())
    }

    /// A commit reached the server. If nothing changed locally since, the
    /// staged copy is retired and the file reads the server's version, which
    /// is the merged bytes when the server merged. The cache is seeded
    /// first, so the record settles and the file becomes that blob in one
    /// step: once the queue is empty, the next open is a passthrough read.
    pub fn ack_commit(&self, uid: u64, rev: u64, committed: &BlobHash, v: &VersionInfo) -> VfsResult<()> {
        let result = self.apply_commit_answer(uid, rev, committed, v);
        self.apply_withheld(v.node);
        result
    }

    fn apply_commit_answer(&self, uid: u64, rev: u64, committed: &BlobHash, v: &VersionInfo) -> VfsResult<()> {
        if v.hash == *committed {
            self.seed_cache(uid, rev, committed);
        }
        let mut invalidate = Vec::new();
        let mut retired = None;
        {
            let mut st = self.lock();
            if self.orphaned(&mut st, uid, v)? {
                return Ok(());
            }
            if self.superseded_by_news(&mut st, uid, rev, v, &mut invalidate)? {
                drop(st);
                self.invalidate(invalidate);
                return Ok(());
            }
            let ino = self.bind(&mut st, uid, v, &mut invalidate)?;
            if let Some(ino) = ino {
                let path = Self::path_of(&st, ino);
                st.outcomes.insert(path, v.status);
            }
            let settled = self.settle(&mut st, uid, rev)?;
            if !settled {
                let server = ServerState::from_version(v);
                self.rebase(&mut st, uid, &server, v.status == VersionStatus::Clean)?;
            }
            if let Some(ino) = ino {
                // (Passthrough readers of the staging file keep it: their
                // epoch pins every open of the inode to it.)
                let staging_read = st.kernel_io.staging_file(ino).is_some();
                let inode = Self::get_mut(&mut st, ino)?;
                inode.last_status = Some(v.status);
                let quiet = inode.open_writers == 0 && inode.data_rev == inode.journaled_data_rev && !staging_read;
                let staged = matches!(&inode.content, Content::Local { .. } | Content::Parked { .. });
                // Written again meanwhile: the staged copy is the newer truth.
                if staged && settled && quiet && inode.kind == NodeKind::File {
                    let content = std::mem::replace(&mut inode.content, Content::Blob { hash: v.hash.clone() });
                    retired = Some((content, inode.size));
                    if v.hash != *committed {
                        // Merged: the bytes (and so the times) are the server's now.
                        invalidate.push(Invalidation::Inode(ino));
                        Self::adopt_version_times(inode, v);
                    }
                    inode.size = v.size;
                }
                // A commit of a mode or times change carries the head's
                // content, which may be another writer's edit this file
                // does not show yet (a rename's answer brought it while the
                // change was pending): once nothing is pending, show it.
                if settled && !staged {
                    Self::adopt_head_content(&mut st, ino, v, &mut invalidate);
                }
            }
        }
        if let Some((content, size)) = retired {
            let merged = v.hash != *committed;
            self.retire_staged(content, size, (!merged).then_some(committed));
        }
        self.invalidate(invalidate);
        Ok(())
    }

    /// Lets go of the staging file of a file that now reads its committed
    /// blob. An unsealed one that only this function can still reach
    /// becomes the cache's copy of `committed` by a link, instead of being
    /// copied there (`seed_cache`) and then pooled or deleted: no inode is
    /// made or freed per committed file, which on ext4 without a journal is
    /// what kept slowing creates down (staging.rs). Otherwise it goes to the
    /// staging pool, or is deleted (`StagingFiles::retire`).
    fn retire_staged(&self, content: Content, size: u64, committed: Option<&BlobHash>) {
        let (file, path, sealed, kernel_wrote) = match content {
            Content::Local {
                file,
                path,
                sealed,
                kernel_wrote,
            } => (Some(file), path, sealed, kernel_wrote),
            Content::Parked {
                path,
                sealed,
                kernel_wrote,
            } => (None, path, sealed, kernel_wrote),
            _ => return,
        };
        if let Some(committed) = committed.filter(|_| !sealed) {
            match self.adopt_into_cache(committed, file.as_ref(), &path, kernel_wrote) {
                Adoption::Linked => {
                    // Only the name goes: the inode is the cache's now.
                    let _ = std::fs::remove_file(&path);
                    return;
                }
                // A reader downloading the same bytes fills the cache; this
                // (the sync worker's runtime) must not wait for it.
                Adoption::AlreadyCached | Adoption::BeingFilled => {}
                // Shared, or not linkable: a copy, hash-checked, so a writer
                // that still has the file cannot poison the cache.
                Adoption::NotLinked => {
                    if let Err(e) = self.cache.insert_file(committed, &path) {
                        tracing::debug!(error = %e, "could not seed the cache");
                    }
                }
            }
        }
        self.staging.retire(&path, sealed, kernel_wrote, size, file);
    }

    /// Offers the retired staging file at `path` to the cache as its copy of
    /// `committed`, if nobody else has it open (this is the last reference
    /// to its descriptor and, for a file the kernel wrote, no writable map
    /// remains: see `staging::no_other_writer`).
    fn adopt_into_cache(
        &self,
        committed: &BlobHash,
        file: Option<&Arc<File>>,
        path: &Path,
        kernel_wrote: bool,
    ) -> Adoption {
        if file.is_some_and(|f| Arc::strong_count(f) > 1) {
            return Adoption::NotLinked;
        }
        let reopened;
        let file: &File = match file {
            // The descriptor that asked for the lease is the one read next.
            _ if kernel_wrote => match super::staging::opened_without_other_writer(path) {
                Some(f) => {
                    reopened = f;
                    &reopened
                }
                None => return Adoption::NotLinked,
            },
            Some(file) => file,
            None => match File::open(path) {
                Ok(f) => {
                    reopened = f;
                    &reopened
                }
                Err(_) => return Adoption::NotLinked,
            },
        };
        self.cache.adopt_owned_file(committed, file, path).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "could not link a committed staging file into the cache");
            Adoption::NotLinked
        })
    }

    /// Seeds the shared cache with the committed bytes of `uid`'s staged
    /// file, if nothing changed since the commit (so the next read needs no
    /// download and is a passthrough read). Outside the core's lock: every
    /// FUSE call would wait behind a copy. A sealed file (hashed at close,
    /// copied before any later write) becomes the cache's by a link, at
    /// once; others are copied hash-checked, so a writer that reopens the
    /// file meanwhile cannot poison the cache. Never waits for a reader's
    /// download of the same bytes (`BlobCache::offer`).
    fn seed_cache(&self, uid: u64, rev: u64, committed: &BlobHash) {
        let staged = {
            let st = self.lock();
            let current = st.records.get(&uid).is_some_and(|r| r.rev == rev);
            let inode = st.by_uid.get(&uid).and_then(|ino| st.inodes.get(ino));
            match inode.map(|i| (&i.content, i.open_writers == 0 && i.data_rev == i.journaled_data_rev)) {
                Some((
                    Content::Local {
                        path,
                        sealed,
                        kernel_wrote,
                        ..
                    }
                    | Content::Parked {
                        path,
                        sealed,
                        kernel_wrote,
                    },
                    true,
                )) if current => Some((path.clone(), *sealed, *kernel_wrote)),
                _ => None,
            }
        };
        // An unsealed file is seeded when it is retired (`retire_staged`).
        let Some((staged, true, kernel_wrote)) = staged else {
            return;
        };
        // A file the kernel wrote is linked only if no memory map can still
        // change it (kernel_writes.rs); otherwise it is copied, hash-checked.
        let seeded = if !kernel_wrote || super::staging::no_other_writer(&staged) {
            self.cache.insert_sealed_file(committed, &staged)
        } else {
            self.cache.insert_file(committed, &staged)
        };
        if let Err(e) = seeded {
            tracing::debug!(error = %e, "could not seed the cache");
        }
    }

    /// Where the server has the node a record names, now. Renames of its
    /// ancestors acknowledged since the plan was made have moved it, so a
    /// rename or deletion sends this instead of the path it was planned with
    /// (sent with a stale path, the server would refuse it as `node_mismatch`).
    pub fn server_path_now(&self, uid: u64) -> Option<WsPath> {
        let st = self.lock();
        WsPath::parse(st.records.get(&uid)?.server_path.as_deref()?).ok()
    }

    /// A deletion reached the server: `tombstones` are the versions it made
    /// (none when the node was no longer where this mount deleted it, in
    /// which case the server's later news of it is applied as usual).
    pub fn ack_delete(&self, uid: u64, rev: u64, node: i64, tombstones: &[VersionInfo]) -> VfsResult<()> {
        let mut st = self.lock();
        if tombstones.is_empty() {
            st.local_news.delete_refused(node);
        }
        for t in tombstones {
            st.local_news.deleted(t.node, t.version);
        }
        if st
            .by_node
            .get(&node)
            .is_some_and(|ino| st.inodes.get(ino).is_none_or(|i| i.unlinked || i.uid == uid))
        {
            st.by_node.remove(&node);
        }
        self.settle(&mut st, uid, rev)?;
        drop(st);
        for n in std::iter::once(node).chain(tombstones.iter().map(|t| t.node)) {
            self.apply_withheld(n);
        }
        Ok(())
    }

    pub fn forget_record(&self, uid: u64, rev: u64) -> VfsResult<()> {
        let mut st = self.lock();
        let node = st.records.get(&uid).and_then(|r| r.node);
        self.settle(&mut st, uid, rev)?;
        drop(st);
        if let Some(node) = node {
            self.apply_withheld(node);
        }
        Ok(())
    }

    /// The news of `node` held back while an inode with local changes
    /// showed it (`State::withheld`), applied once no such inode shows it
    /// (the answer that settled it). The usual rules decide: news older
    /// than the answer is ignored.
    fn apply_withheld(&self, node: i64) {
        let event = {
            let mut st = self.lock();
            if !st.withheld.contains_key(&node) {
                return;
            }
            let held = st
                .by_node
                .get(&node)
                .and_then(|ino| st.inodes.get(ino))
                .filter(|i| !i.unlinked)
                .is_some_and(|i| Self::has_local_changes(&st, i));
            if held {
                return;
            }
            st.withheld.remove(&node)
        };
        if let Some(e) = event {
            self.apply_events(std::slice::from_ref(&e));
        }
    }

    /// The server no longer has this inode's node where we thought: from now
    /// on it is a new file (its content will be committed as new).
    pub fn unbind(&self, uid: u64) -> VfsResult<()> {
        let mut st = self.lock();
        let node = st
            .by_uid
            .get(&uid)
            .and_then(|i| st.inodes.get(i))
            .and_then(|i| i.server.as_ref())
            .map(|s| s.node);
        let result = self.unbind_locked(&mut st, uid);
        // What was held back for the node it lets go is not this file's
        // news any more; which file it is depends on what the user meant
        // (see the note on `State::withheld`), so it is dropped, as before.
        if let Some(node) = node {
            st.withheld.remove(&node);
        }
        result
    }

    fn unbind_locked(&self, st: &mut State, uid: u64) -> VfsResult<()> {
        let Some(&ino) = st.by_uid.get(&uid) else { return Ok(()) };
        let Some(inode) = st.inodes.get_mut(&ino) else {
            return Ok(());
        };
        let old = inode.server.take();
        let kind = inode.kind;
        if let Some(old) = &old {
            if st.by_node.get(&old.node) == Some(&ino) {
                st.by_node.remove(&old.node);
            }
        }
        if let Some(r) = st.records.get_mut(&uid) {
            r.node = None;
            r.base_version = None;
            r.server_path = None;
            if r.content.is_none() && kind != NodeKind::Dir {
                // Re-commit the content it had on the server.
                r.content = old.map(|o| o.hash);
            }
            r.rev += 1;
            let copy = r.clone();
            self.journal.write(&copy)?;
        }
        Ok(())
    }

    /// The server refused a record for good (until something changes).
    pub fn fail(&self, uid: u64, message: &str) {
        let mut st = self.lock();
        if let Some(r) = st.records.get_mut(&uid) {
            r.last_error = Some(message.to_string());
            let copy = r.clone();
            if let Err(e) = self.journal.write(&copy) {
                tracing::error!(error = %e, "cannot record a failure in the journal");
            }
        }
    }

    /// Outcomes of the commits acknowledged since the mount started.
    pub fn outcomes(&self) -> Vec<(String, VersionStatus)> {
        self.lock().outcomes.iter().map(|(p, s)| (p.clone(), *s)).collect()
    }

    /// Whether the journal holds a record for `uid`.
    pub fn has_record(&self, uid: u64) -> bool {
        self.lock().records.contains_key(&uid)
    }

    pub fn has_queued(&self) -> bool {
        !self.lock().records.is_empty()
    }
}
