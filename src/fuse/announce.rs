//! The mount's kernel thread: it sends cache invalidations, and it repeats
//! remote changes through the mount point so that the kernel raises the
//! inotify events a local change would (see `crate::vfs::announce` for the
//! design). The FUSE callbacks recognise this thread's requests by their pid
//! and answer them from the tree, without journaling anything.
//!
//! Why no deadlock: this thread holds no lock of the core while it is in a
//! system call, and no FUSE worker ever waits for it. Why no loop: its
//! requests never reach the journaling operations, so no announcement is
//! ever committed, and so never comes back through the feed.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use fuser::{FileHandle, FopenFlags, Generation, INodeNo, Notifier, ReplyCreate, ReplyEntry};

use super::{errno, file_attr, ContextFs, TTL};
use crate::api::NodeKind;
use crate::vfs::{AnnouncedPaths, Announcement, Invalidation, KernelUpdate, Vfs};

/// `statfs` magic of a FUSE file system.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Starts the thread that applies [`KernelUpdate`]s in order. Announcements
/// run against `mountpoint`, which must be this session's mount point.
pub fn spawn_kernel_thread(
    notifier: Notifier,
    vfs: Arc<Vfs>,
    mountpoint: PathBuf,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel::<KernelUpdate>();
    vfs.set_invalidation_sink(tx);
    std::thread::Builder::new().name("fuse-kernel".into()).spawn(move || {
        // SAFETY: gettid cannot fail.
        let tid = unsafe { libc::gettid() };
        vfs.set_announcer_thread(u32::try_from(tid).unwrap_or(0));
        while let Ok(first) = rx.recv() {
            // The root is open only while updates keep coming: an open
            // descriptor makes the mount point busy for umount.
            // (Opened at most once per run of updates, failure included.)
            let mut root: Option<Option<MountRoot>> = None;
            let mut next = Some(first);
            while let Some(update) = next.take() {
                match update {
                    KernelUpdate::Invalidate(item) => invalidate(&notifier, &item),
                    // The mount is closing: no new use of the mount root.
                    KernelUpdate::Announce(_) if !vfs.announcing() => {}
                    KernelUpdate::Announce(a) => {
                        let opened = root.get_or_insert_with(|| {
                            MountRoot::open(&mountpoint)
                                .map_err(|e| tracing::warn!(error = %e, "cannot open the mount point to show remote changes to file watchers"))
                                .ok()
                        });
                        if let Some(root) = opened {
                            announce(&vfs, root, a);
                        }
                    }
                }
                next = rx.try_recv().ok();
            }
        }
    })
}

fn invalidate(notifier: &Notifier, item: &Invalidation) {
    let result = match item {
        Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
        Invalidation::Entry { parent, name } => notifier.inval_entry(INodeNo(*parent), OsStr::new(name)),
    };
    // ENOENT just means the kernel had nothing cached.
    if let Err(e) = result {
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::debug!(error = %e, ?item, "invalidation failed");
        }
    }
}

/// The mount's root directory, opened through the mount: every announcement
/// is a `*at` call relative to it, so once the file system is unmounted they
/// fail instead of touching the directory underneath.
struct MountRoot(OwnedFd);

impl MountRoot {
    fn open(mountpoint: &Path) -> std::io::Result<Self> {
        let path = CString::new(mountpoint.as_os_str().as_bytes())?;
        // SAFETY: a valid C string; the descriptor is owned below.
        // O_PATH: no IN_OPEN/IN_CLOSE_NOWRITE of its own on the root's watchers.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: statfs fills the zeroed struct.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if fs.f_type as i64 != FUSE_SUPER_MAGIC {
            return Err(std::io::Error::other(format!(
                "{} is not the FUSE mount (statfs type {:#x})",
                mountpoint.display(),
                fs.f_type
            )));
        }
        Ok(Self(fd))
    }

    fn dirfd(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

fn c_path(path: &str) -> std::io::Result<CString> {
    // Relative to the root descriptor; the root itself is ".".
    CString::new(if path.is_empty() { "." } else { path }).map_err(std::io::Error::other)
}

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn timespec(t: SystemTime) -> libc::timespec {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

const OMIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};

/// Runs one announcement; a change the tree has moved past since, or one
/// the kernel cannot show (the name already cached, for example), is
/// skipped: the change itself is in the tree either way.
fn announce(vfs: &Vfs, root: &MountRoot, a: Announcement) {
    let Some(paths) = vfs.announced_paths(&a) else {
        tracing::trace!(?a, "announcement overtaken by later changes");
        return;
    };
    vfs.arm(a.clone());
    let result = run(vfs, root, &a, &paths);
    vfs.disarm();
    if let Err(e) = result {
        tracing::debug!(error = %e, ?paths, "remote change not shown to file watchers");
    }
}

fn run(vfs: &Vfs, root: &MountRoot, a: &Announcement, paths: &AnnouncedPaths) -> std::io::Result<()> {
    let dir = root.dirfd();
    let (path, to) = match paths {
        AnnouncedPaths::One(p) => (c_path(p)?, None),
        AnnouncedPaths::Two { from, to } => (c_path(from)?, Some(c_path(to)?)),
    };
    // SAFETY (every call below): valid C strings and a live directory fd.
    match a {
        Announcement::Created {
            kind: NodeKind::Dir, ..
        } => check(unsafe { libc::mkdirat(dir, path.as_ptr(), 0o755) }),
        Announcement::Created {
            kind: NodeKind::Symlink,
            target,
            ..
        } => {
            let target = CString::new(target.clone().unwrap_or_default()).map_err(std::io::Error::other)?;
            check(unsafe { libc::symlinkat(target.as_ptr(), dir, path.as_ptr()) })
        }
        Announcement::Created { parent, name, .. } => {
            let mtime = vfs
                .lookup(*parent, name)
                .map(|a| a.mtime)
                .unwrap_or_else(|_| SystemTime::now());
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW;
            write_and_close(unsafe { libc::openat(dir, path.as_ptr(), flags, 0o644) }, mtime)
        }
        Announcement::Modified { mtime, .. } => {
            let flags = libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
            let fd = unsafe { libc::openat(dir, path.as_ptr(), flags) };
            if fd < 0 {
                // Passthrough readers pin the inode: IN_MODIFY alone.
                let times = [OMIT, timespec(*mtime)];
                return check(unsafe {
                    libc::utimensat(dir, path.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
                });
            }
            write_and_close(fd, *mtime)
        }
        Announcement::Attrib {
            mode,
            mode_changed: true,
            ..
        } => check(unsafe { libc::fchmodat(dir, path.as_ptr(), (*mode & 0o7777) as libc::mode_t, 0) }),
        Announcement::Attrib { ino, .. } => {
            let attr = vfs
                .getattr(*ino)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno))?;
            let times = [timespec(attr.atime), timespec(attr.mtime)];
            check(unsafe { libc::utimensat(dir, path.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        }
        Announcement::Deleted { ghost, .. } => {
            let flags = if ghost.kind == NodeKind::Dir {
                libc::AT_REMOVEDIR
            } else {
                0
            };
            check(unsafe { libc::unlinkat(dir, path.as_ptr(), flags) })
        }
        Announcement::Renamed { .. } => {
            let to = to.ok_or_else(|| std::io::Error::other("a rename needs two paths"))?;
            check(unsafe { libc::renameat(dir, path.as_ptr(), dir, to.as_ptr()) })
        }
    }
}

/// IN_MODIFY (an mtime change through the descriptor), then IN_CLOSE_WRITE.
fn write_and_close(fd: libc::c_int, mtime: SystemTime) -> std::io::Result<()> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let times = [OMIT, timespec(mtime)];
    // SAFETY: a live descriptor and two timespecs.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
}

/// The FUSE side: requests from the announcer thread, answered from the
/// tree. Each returns `false` when the request is not the announcer's.
impl ContextFs {
    pub(super) fn announcer(&self, pid: u32) -> bool {
        self.vfs.is_announcer(pid)
    }

    /// A lookup that the armed announcement answers (its hidden or ghost name).
    pub(super) fn announcer_lookup(&self, parent: u64, name: &str, reply: ReplyEntry) -> Result<(), ReplyEntry> {
        match self.vfs.announcer_lookup(parent, name) {
            Some(result) => {
                self.reply_entry(result.map_err(errno), reply);
                Ok(())
            }
            None => Err(reply),
        }
    }

    /// mkdir or symlink by the announcer: the entry the tree already has.
    pub(super) fn announcer_entry(&self, parent: u64, name: &str, reply: ReplyEntry) {
        self.reply_entry(self.vfs.announcer_create(parent, name).map_err(errno), reply);
    }

    /// create by the announcer: the entry, and a handle that writes nothing.
    pub(super) fn announcer_create(&self, parent: u64, name: &str, reply: ReplyCreate) {
        match self.vfs.announcer_create(parent, name) {
            Ok(a) => {
                self.vfs.kernel_ref(a.ino);
                reply.created(
                    &TTL,
                    &file_attr(&a, self.uid, self.gid),
                    Generation(0),
                    FileHandle(Vfs::announcer_handle()),
                    FopenFlags::FOPEN_DIRECT_IO,
                )
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}
