//! The FUSE side of `.contextfs/history` (`crate::vfs::history`): requests
//! for its inode range go here, and every write-ish request on it is
//! answered `EROFS`. Requests that may ask the server (lookups, listings,
//! opens of a version not cached yet) run on a thread of their own, so an
//! unreachable server never holds the FUSE threads.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, ReplyAttr, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen,
};

use super::{errno, file_attr, fill_dir, fill_dir_plus, name_str, run_waiting, ContextFs, HandOffSlot, TTL};
use crate::api::NodeKind;
use crate::vfs::history::{is_history_ino, History, META_DIR, META_INO};
use crate::vfs::{OpenMode, ROOT_INO};

/// How long the kernel may trust a version file's attributes: a version
/// never changes (its inode names one node's one version).
const VERSION_TTL: Duration = Duration::from_secs(60);

impl ContextFs {
    /// Shows the project's past versions at `.contextfs/history`.
    pub fn with_history(mut self, history: History) -> Self {
        self.history = Some(Arc::new(history));
        self
    }

    /// `.contextfs` at the root is the history view's, unless the project
    /// has an entry of that name (the project's data wins).
    pub(super) fn is_history_name(&self, parent: u64, name: &OsStr) -> bool {
        parent == ROOT_INO && name == META_DIR && self.history.is_some() && self.vfs.lookup(ROOT_INO, META_DIR).is_err()
    }

    /// A request that would create, change or remove `parent/name` inside
    /// the history view, or `.contextfs` itself: `EROFS`.
    pub(super) fn history_refuses(&self, parent: u64, name: &OsStr) -> bool {
        is_history_ino(parent) || self.is_history_name(parent, name)
    }

    fn history(&self) -> Result<Arc<History>, Errno> {
        self.history.clone().ok_or(Errno::ENOENT)
    }

    /// Runs `op` on a thread of its own when one is free (it may wait for
    /// the server, up to the history client's deadline).
    fn history_off_thread(&self, op: impl FnOnce() + Send + 'static) {
        match HandOffSlot::take(&self.handed_off) {
            Some(slot) => run_waiting(move || {
                let _slot = slot;
                op()
            }),
            None => op(),
        }
    }

    pub(super) fn history_lookup(&self, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let history = match self.history() {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let owner = (self.uid, self.gid);
        if parent == ROOT_INO {
            history.kernel_ref(META_INO);
            return reply.entry(&TTL, &file_attr(&history.meta_attr(), owner.0, owner.1), Generation(0));
        }
        let name = match name_str(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        self.history_off_thread(move || match history.lookup(parent, &name) {
            Ok(a) => {
                history.kernel_ref(a.ino);
                reply.entry(&TTL, &file_attr(&a, owner.0, owner.1), Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        });
    }

    pub(super) fn history_forget(&self, ino: u64, n: u64) {
        if let Some(h) = &self.history {
            h.kernel_forget(ino, n);
        }
    }

    pub(super) fn history_getattr(&self, ino: u64, reply: ReplyAttr) {
        match self.history().and_then(|h| h.getattr(ino).map_err(errno)) {
            Ok(a) if a.kind == NodeKind::File => reply.attr(&VERSION_TTL, &self.attr(&a)),
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    pub(super) fn history_opendir(&self, ino: u64, reply: ReplyOpen) {
        match self.history().and_then(|h| h.getattr(ino).map_err(errno)) {
            Ok(a) if a.kind == NodeKind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    pub(super) fn history_readdir(&self, ino: u64, offset: u64, reply: ReplyDirectory) {
        let history = match self.history() {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        self.history_off_thread(move || match history.readdir(ino) {
            Ok(entries) => fill_dir(reply, ino, history.parent_of(ino), entries, offset),
            Err(e) => reply.error(errno(e)),
        });
    }

    pub(super) fn history_readdirplus(&self, ino: u64, offset: u64, reply: ReplyDirectoryPlus) {
        let history = match self.history() {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let owner = (self.uid, self.gid);
        self.history_off_thread(move || match history.readdir(ino) {
            Ok(entries) => fill_dir_plus(
                reply,
                entries,
                offset,
                |ino| history.getattr(ino).ok().map(|a| file_attr(&a, owner.0, owner.1)),
                |ino| history.kernel_ref(ino),
            ),
            Err(e) => reply.error(errno(e)),
        });
    }

    /// Opens a version file; its pages stay valid (`FOPEN_KEEP_CACHE`), as
    /// its bytes never change. Writing is `EROFS`.
    pub(super) fn history_open(&self, ino: u64, mode: OpenMode, reply: ReplyOpen) {
        let history = match self.history() {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        if mode.write || mode.truncate {
            return reply.error(Errno::EROFS);
        }
        self.history_off_thread(move || match history.open(ino, false) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        });
    }

    pub(super) fn history_read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.history()?.read(fh, offset, size).map_err(errno)
    }

    pub(super) fn history_release(&self, fh: u64) {
        if let Some(h) = &self.history {
            h.release(fh);
        }
    }
}

/// Whether a request for `ino` goes to the history view.
pub(super) fn owns(ino: INodeNo) -> bool {
    is_history_ino(ino.0)
}
