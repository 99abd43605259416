//! Applying the server's change feed to the tree: other agents' writes,
//! renames and deletions appear without a remount. An inode with local
//! changes still waiting in the journal keeps them; its next commit merges on
//! the server.

use std::io::Read;
use std::time::SystemTime;

use super::*;
use crate::api::ChangeEvent;

impl Vfs {
    /// Symlink events whose targets must be read before [`Vfs::apply_events`].
    pub fn symlink_hashes(events: &[ChangeEvent]) -> Vec<BlobHash> {
        events
            .iter()
            .filter(|e| e.kind == NodeKind::Symlink && !e.deleted)
            .map(|e| e.hash.clone())
            .collect()
    }

    /// Makes sure `hash` is in the cache (called by the sync worker, outside callbacks).
    pub fn prefetch(&self, hash: &BlobHash) -> VfsResult<()> {
        self.open_blob(hash).map(|_| ())
    }

    fn cached_text(&self, hash: &BlobHash) -> String {
        let mut out = String::new();
        if let Ok(Some(mut f)) = self.cache.open_blob(hash) {
            let _ = f.read_to_string(&mut out);
        }
        out
    }

    /// The directory at `path`; `None` if a component is missing or the
    /// last one is not a directory.
    fn resolve(st: &State, path: &str) -> Option<Ino> {
        if path.is_empty() {
            return Some(ROOT_INO);
        }
        let mut current = ROOT_INO;
        for part in path.split('/') {
            current = *st.inodes.get(&current)?.children.get(part)?;
        }
        // A local file may sit where the server still has a directory (a
        // pending local rename moved the directory away): nothing goes in it.
        st.inodes
            .get(&current)
            .is_some_and(|i| i.kind == NodeKind::Dir)
            .then_some(current)
    }

    pub fn apply_events(&self, events: &[ChangeEvent]) {
        let mut invalidations = Vec::new();
        let mut announcements = Vec::new();
        {
            let mut st = self.lock();
            for e in events {
                st.cursor = st.cursor.max(e.seq);
                self.apply_event(&mut st, e, &mut invalidations, &mut announcements);
                st.local_news.seen(e);
            }
        }
        // The kernel forgets what it cached before the watchers hear of it.
        self.invalidate(invalidations);
        self.announce(announcements);
    }

    fn apply_event(&self, st: &mut State, e: &ChangeEvent, out: &mut Vec<Invalidation>, news: &mut Vec<Announcement>) {
        let (parent_path, name) = match e.path.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", e.path.as_str()),
        };
        let server = ServerState {
            node: e.node,
            version: e.version,
            hash: e.hash.clone(),
            path: e.path.clone(),
            mode: e.mode,
        };
        // An inode already removed from the tree (kept for the kernel or an
        // open handle until they let go) no longer shows the node.
        let shown = st
            .by_node
            .get(&e.node)
            .copied()
            .filter(|ino| st.inodes.get(ino).is_some_and(|i| !i.unlinked));
        match shown {
            Some(ino) => {
                let Some(inode) = st.inodes.get(&ino) else { return };
                if inode.server.as_ref().is_some_and(|s| s.version >= e.version) {
                    return; // Our own change coming back, or old news.
                }
                if Self::has_local_changes(st, inode) {
                    // Local changes win locally; the server merges them on
                    // commit. The newest news waits for the answer that
                    // settles them (`State::withheld`).
                    if st.withheld.get(&e.node).is_none_or(|w| w.version < e.version) {
                        st.withheld.insert(e.node, e.clone());
                    }
                    return;
                }
                if e.deleted {
                    let (parent, name) = (inode.parent, inode.name.clone());
                    if let Ok(ghost) = Self::attr(st, ino) {
                        news.push(Announcement::Deleted {
                            parent,
                            name: name.clone(),
                            ghost,
                        });
                    }
                    Self::detach(st, ino);
                    out.push(Invalidation::Entry { parent, name });
                    return;
                }
                let (old_parent, old_name) = (inode.parent, inode.name.clone());
                let mut moved = None;
                if Self::path_of(st, ino) != e.path {
                    let Some(new_parent) = Self::resolve(st, parent_path) else {
                        return;
                    };
                    if let Some(occupant) = st.inodes.get(&new_parent).and_then(|p| p.children.get(name)).copied() {
                        if occupant != ino {
                            let busy = st
                                .inodes
                                .get(&occupant)
                                .is_some_and(|o| st.records.contains_key(&o.uid));
                            if busy {
                                return; // A local change sits there; leave both alone.
                            }
                            Self::detach(st, occupant);
                        }
                    }
                    if let Some(p) = st.inodes.get_mut(&old_parent) {
                        p.children.remove(&old_name);
                    }
                    if let Some(p) = st.inodes.get_mut(&new_parent) {
                        p.children.insert(name.to_string(), ino);
                    }
                    if let Some(i) = st.inodes.get_mut(&ino) {
                        i.parent = new_parent;
                        i.name = name.to_string();
                    }
                    out.push(Invalidation::Entry {
                        parent: old_parent,
                        name: old_name.clone(),
                    });
                    out.push(Invalidation::Entry {
                        parent: new_parent,
                        name: name.to_string(),
                    });
                    moved = Some((old_parent, old_name, new_parent));
                }
                let target = (e.kind == NodeKind::Symlink).then(|| self.cached_text(&e.hash));
                let Some(changed) = st
                    .inodes
                    .get(&ino)
                    .map(|i| i.server.as_ref().is_none_or(|s| s.hash != e.hash))
                else {
                    return;
                };
                // The kernel pins every open of an inode to the blob its
                // passthrough readers hold: new content needs a new inode.
                let ino = if changed && st.kernel_io.busy(ino) {
                    Self::replace_inode(st, ino, out)
                } else {
                    ino
                };
                if let Some((parent, old_name, to_parent)) = moved {
                    if let Ok(ghost) = Self::attr(st, ino) {
                        news.push(Announcement::Renamed {
                            parent,
                            name: old_name,
                            to_parent,
                            to_name: name.to_string(),
                            ghost,
                        });
                    }
                }
                let Some(inode) = st.inodes.get_mut(&ino) else { return };
                let retimed = e.mtime.is_some() && e.kind != NodeKind::Dir;
                let mode_changed = inode.mode != e.mode;
                // Every version carries times; only a different one is news.
                let new_times = server_times(e.mtime.as_deref(), e.atime.as_deref(), &e.at);
                let times_differ = retimed && new_times.is_some_and(|(m, a)| m != inode.mtime || a != inode.atime);
                if mode_changed || retimed {
                    inode.ctime = SystemTime::now();
                }
                inode.mode = e.mode;
                let old_path = inode.server.replace(server).map(|s| s.path);
                if changed || retimed {
                    // The writer's times (`touch` elsewhere changes them alone).
                    if let Some((mtime, atime)) = new_times {
                        inode.mtime = mtime;
                        inode.atime = atime;
                    }
                }
                if changed {
                    inode.content = match (e.kind, target) {
                        (NodeKind::Dir, _) => Content::Dir,
                        (NodeKind::Symlink, Some(t)) => Content::Symlink { target: t },
                        _ => Content::Blob { hash: e.hash.clone() },
                    };
                    inode.size = e.size;
                    inode.ctime = SystemTime::now();
                    out.push(Invalidation::Inode(ino));
                    if e.kind == NodeKind::File {
                        news.push(Announcement::Modified {
                            ino,
                            mtime: inode.mtime,
                        });
                    }
                } else if retimed {
                    out.push(Invalidation::Inode(ino));
                }
                if !changed && (mode_changed || times_differ) {
                    news.push(Announcement::Attrib {
                        ino,
                        mode: e.mode,
                        mode_changed,
                    });
                }
                if let Some(old) = old_path.filter(|_| e.kind == NodeKind::Dir) {
                    if let Err(err) = self.rebase_server_paths(st, &old, &e.path) {
                        tracing::error!(error = %err, "cannot record a remote directory rename in the journal");
                    }
                }
            }
            None => {
                if e.deleted || st.local_news.is_stale(e) {
                    return;
                }
                let Some(parent) = Self::resolve(st, parent_path) else {
                    tracing::debug!(path = %e.path, "remote change under a directory this mount does not show");
                    return;
                };
                if st
                    .inodes
                    .get(&parent)
                    .is_some_and(|p| p.read_only || p.children.contains_key(name))
                {
                    // A local file of the same name: its commit will meet this node on the server.
                    return;
                }
                let content = match e.kind {
                    NodeKind::Dir => Content::Dir,
                    NodeKind::Symlink => Content::Symlink {
                        target: self.cached_text(&e.hash),
                    },
                    NodeKind::File => Content::Blob { hash: e.hash.clone() },
                };
                news.push(Announcement::Created {
                    parent,
                    name: name.to_string(),
                    kind: e.kind,
                    target: match &content {
                        Content::Symlink { target } => Some(target.clone()),
                        _ => None,
                    },
                });
                let ino = Self::alloc_ino(st);
                let mut inode = Inode::new(rand::random(), parent, name.to_string(), e.kind, e.mode, content);
                inode.size = e.size;
                if let Some((mtime, atime)) = server_times(e.mtime.as_deref(), e.atime.as_deref(), &e.at) {
                    inode.mtime = mtime;
                    inode.atime = atime;
                }
                inode.server = Some(server);
                Self::insert_inode(st, ino, inode);
                out.push(Invalidation::Entry {
                    parent,
                    name: name.to_string(),
                });
            }
        }
    }
}
