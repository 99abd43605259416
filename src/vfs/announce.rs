//! Remote changes shown to file watchers (inotify).
//!
//! The kernel raises inotify events only for operations that pass through
//! its VFS; FUSE's cache invalidations do not count. So once a remote change
//! is applied to the tree, the mount *announces* it: one thread of the mount
//! (the announcer, see `crate::fuse::announce`) repeats the change through
//! the mount point, as a local process would (create, unlink, rename, chmod,
//! utimensat, open for writing and close), and the kernel raises the events a
//! local change raises.
//!
//! The tree already holds the change, so these requests change nothing: the
//! FUSE adapter recognises the announcer by the pid of the request and sends
//! them here, never to the ordinary (journaling) operations. Nothing an
//! announcer request does is journaled or committed, which is what keeps two
//! mounts watching each other from echoing. For the kernel to run a create,
//! the name must look absent to it, and for an unlink or rename the old name
//! must look present: while an announcement runs, it is *armed*, and the
//! announcer's lookups see the name as it was before the change (hidden new
//! names, ghost old names). Nobody else's lookups are affected.

use super::*;

/// A remote change to repeat through the mount point. Inodes and names are
/// those of the tree when the change was applied; paths are worked out only
/// when the announcement runs, from the tree as it is then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// A new file, directory or symlink at `(parent, name)` (IN_CREATE).
    Created {
        parent: Ino,
        name: String,
        kind: NodeKind,
        /// A symlink's target (symlink(2) needs one).
        target: Option<String>,
    },
    /// New content (IN_MODIFY, then IN_CLOSE_WRITE).
    Modified { ino: Ino, mtime: SystemTime },
    /// New mode or times without new content (IN_ATTRIB).
    Attrib { ino: Ino, mode: u32, mode_changed: bool },
    /// `(parent, name)` no longer exists (IN_DELETE); `ghost` is what it was.
    Deleted { parent: Ino, name: String, ghost: Attr },
    /// Moved from `(parent, name)` to `(to_parent, to_name)`
    /// (IN_MOVED_FROM and IN_MOVED_TO with one cookie).
    Renamed {
        parent: Ino,
        name: String,
        to_parent: Ino,
        to_name: String,
        ghost: Attr,
    },
}

/// What goes to the FUSE adapter's kernel thread, in order: a remote
/// change's invalidations before its announcements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelUpdate {
    Invalidate(Invalidation),
    Announce(Announcement),
}

/// The announcement paths, relative to the mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnouncedPaths {
    One(String),
    Two { from: String, to: String },
}

/// The announcer thread and the announcement it is running.
#[derive(Default)]
pub(super) struct Announcer {
    /// Thread id of the announcer (0: none). FUSE requests carry the
    /// calling thread's id.
    tid: std::sync::atomic::AtomicU32,
    armed: Mutex<Option<Announcement>>,
    /// `--inotify off`, or the mount is going away: nothing (more) is announced.
    pub(super) closed: std::sync::atomic::AtomicBool,
}

/// Handles of the announcer's opens: never in the handle table, so nothing
/// they do reaches staging or the journal. (The core's handles count up from
/// 1, the history view's from 1 << 62.)
const ANNOUNCER_FH: u64 = u64::MAX;

impl Vfs {
    /// The announcer thread starts: requests from `tid` are announcements.
    pub fn set_announcer_thread(&self, tid: u32) {
        self.announcer.tid.store(tid, std::sync::atomic::Ordering::SeqCst);
    }

    /// No more announcements (`--inotify off`, or the mount is closing).
    pub fn stop_announcing(&self) {
        self.announcer.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether announcements still run (not once the mount is closing).
    pub fn announcing(&self) -> bool {
        !self.announcer.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether a FUSE request with this pid comes from the announcer.
    pub fn is_announcer(&self, pid: u32) -> bool {
        pid != 0 && self.announcer.tid.load(std::sync::atomic::Ordering::Relaxed) == pid
    }

    /// A handle number that is one of the announcer's opens.
    pub fn is_announcer_handle(fh: u64) -> bool {
        fh == ANNOUNCER_FH
    }

    pub fn announcer_handle() -> u64 {
        ANNOUNCER_FH
    }

    fn armed(&self) -> MutexGuard<'_, Option<Announcement>> {
        self.announcer.armed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The paths an announcement uses now, or `None` when the tree moved on
    /// (a parent removed since, the entry gone) and there is nothing to show.
    pub fn announced_paths(&self, a: &Announcement) -> Option<AnnouncedPaths> {
        let st = self.lock();
        let live = |ino: Ino| st.inodes.get(&ino).is_some_and(|i| !i.unlinked);
        let join = |parent: Ino, name: &str| {
            let dir = Self::path_of(&st, parent);
            if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            }
        };
        match a {
            Announcement::Created { parent, name, .. } => {
                let shown = Self::child(&st, *parent, name).ok().flatten();
                (live(*parent) && shown.is_some()).then(|| AnnouncedPaths::One(join(*parent, name)))
            }
            Announcement::Modified { ino, .. } | Announcement::Attrib { ino, .. } => {
                live(*ino).then(|| AnnouncedPaths::One(Self::path_of(&st, *ino)))
            }
            Announcement::Deleted { parent, name, .. } => {
                let taken = Self::child(&st, *parent, name).ok().flatten().is_some();
                (live(*parent) && !taken).then(|| AnnouncedPaths::One(join(*parent, name)))
            }
            Announcement::Renamed {
                parent,
                name,
                to_parent,
                to_name,
                ghost,
            } => {
                let moved = Self::child(&st, *to_parent, to_name).ok().flatten() == Some(ghost.ino);
                let vacated = Self::child(&st, *parent, name).ok().flatten().is_none();
                (live(*parent) && live(*to_parent) && moved && vacated).then(|| AnnouncedPaths::Two {
                    from: join(*parent, name),
                    to: join(*to_parent, to_name),
                })
            }
        }
    }

    /// The announcer is about to run `a`.
    pub fn arm(&self, a: Announcement) {
        *self.armed() = Some(a);
    }

    /// The announcer finished (or gave up on) its announcement.
    pub fn disarm(&self) {
        *self.armed() = None;
    }

    /// An announcer lookup: the armed announcement's old view of its names,
    /// or `None` for an ordinary lookup.
    pub fn announcer_lookup(&self, parent: Ino, name: &str) -> Option<VfsResult<Attr>> {
        let armed = self.armed().clone();
        match armed.as_ref()? {
            Announcement::Created { parent: p, name: n, .. } if *p == parent && n == name => {
                Some(Err(VfsError::noent(name)))
            }
            Announcement::Deleted {
                parent: p,
                name: n,
                ghost,
            } if *p == parent && n == name => Some(Ok(ghost.clone())),
            // The moved inode as it is now (its dentry moves to the new name).
            Announcement::Renamed {
                parent: p,
                name: n,
                ghost,
                ..
            } if *p == parent && n == name => Some(Ok(self.getattr(ghost.ino).unwrap_or_else(|_| ghost.clone()))),
            Announcement::Renamed { to_parent, to_name, .. } if *to_parent == parent && to_name == name => {
                Some(Err(VfsError::noent(name)))
            }
            _ => None,
        }
    }

    /// The announcer's create, mkdir or symlink: the entry the tree already
    /// has, once (the kernel now shows it).
    pub fn announcer_create(&self, parent: Ino, name: &str) -> VfsResult<Attr> {
        let mut armed = self.armed();
        let matches = matches!(armed.as_ref(), Some(Announcement::Created { parent: p, name: n, .. }) if *p == parent && n == name);
        if !matches {
            return Err(Self::unexpected("create", name));
        }
        *armed = None;
        drop(armed);
        self.lookup(parent, name)
    }

    /// The announcer's unlink or rmdir of an armed ghost.
    pub fn announcer_remove(&self, parent: Ino, name: &str) -> VfsResult<()> {
        let mut armed = self.armed();
        match armed.as_ref() {
            Some(Announcement::Deleted { parent: p, name: n, .. }) if *p == parent && n == name => {
                *armed = None;
                Ok(())
            }
            _ => Err(Self::unexpected("removal", name)),
        }
    }

    /// The announcer's rename of an armed ghost to its hidden new name.
    pub fn announcer_rename(&self, parent: Ino, name: &str, to_parent: Ino, to_name: &str) -> VfsResult<()> {
        let mut armed = self.armed();
        match armed.as_ref() {
            Some(Announcement::Renamed {
                parent: p,
                name: n,
                to_parent: tp,
                to_name: tn,
                ..
            }) if *p == parent && n == name && *tp == to_parent && tn == to_name => {
                *armed = None;
                Ok(())
            }
            _ => Err(Self::unexpected("rename", name)),
        }
    }

    /// The announcer's chmod, utimensat or open: the attributes as they are
    /// (the tree already has the change).
    pub fn announcer_attr(&self, ino: Ino) -> VfsResult<Attr> {
        self.getattr(ino)
    }

    /// An announcer request that no armed announcement explains is refused,
    /// never run as a local change.
    fn unexpected(what: &str, name: &str) -> VfsError {
        tracing::debug!(what, name, "announcer request without a matching announcement");
        VfsError::new(libc::EPERM, format!("unexpected announcer {what} of {name:?}"))
    }

    /// Queues announcements after the invalidations already queued.
    pub(super) fn announce(&self, items: Vec<Announcement>) {
        if !items.is_empty() && self.announcing() {
            self.send_kernel_updates(items.into_iter().map(KernelUpdate::Announce));
        }
    }
}
