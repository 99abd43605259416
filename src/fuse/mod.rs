//! The fuser adapter: every callback converts its arguments, calls the
//! [`Vfs`] core and turns the result into a reply. No filesystem logic lives
//! here, so everything it does is testable without a kernel in `crate::vfs`.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use crate::api::NodeKind;
use crate::vfs::history::History;
use crate::vfs::{Attr, KernelIo, OpenMode, SetAttr, Vfs, VfsError};

mod announce;
pub use announce::spawn_kernel_thread;

mod history;
mod reply;
use history::owns as in_history;
use reply::{fill_dir, fill_dir_plus, reply_created, reply_opened, Backings};

/// How long the kernel may trust attributes and names. Remote changes are
/// also pushed as invalidations, so this only bounds a missed one.
pub const TTL: Duration = Duration::from_secs(1);

pub struct ContextFs {
    vfs: Arc<Vfs>,
    uid: u32,
    gid: u32,
    backings: Arc<Backings>,
    /// Opens running on threads of their own (see [`ContextFs::open`]).
    handed_off: Arc<std::sync::atomic::AtomicUsize>,
    /// ioctl commands already logged as unsupported (each is logged once:
    /// `isatty()` alone sends TCGETS on every Python `open()`).
    unsupported_ioctls: Mutex<std::collections::HashSet<u32>>,
    /// `.contextfs/history` (project mounts; see `history.rs`).
    history: Option<Arc<History>>,
}

fn errno(e: VfsError) -> Errno {
    if e.errno == libc::EIO {
        tracing::warn!(error = %e.message, "I/O error");
    } else {
        tracing::debug!(errno = e.errno, error = %e.message, "request failed");
    }
    Errno::from_i32(e.errno)
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
    }
}

/// Attributes as the kernel wants them; every file belongs to the mounting user.
fn file_attr(a: &Attr, uid: u32, gid: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.mode as u16,
        nlink: a.nlink,
        uid,
        gid,
        rdev: 0,
        blksize: 128 * 1024,
        flags: 0,
    }
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    // The service stores UTF-8 paths; other names cannot round-trip.
    name.to_str().ok_or_else(|| {
        // `{:?}` escapes the bytes, so the name cannot forge log lines.
        tracing::info!(name = ?name, "refused a file name that is not UTF-8 (EINVAL): contextfs stores UTF-8 paths");
        Errno::EINVAL
    })
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl ContextFs {
    pub fn new(vfs: Arc<Vfs>) -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            vfs,
            uid,
            gid,
            backings: Arc::new(Backings::default()),
            handed_off: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            unsupported_ioctls: Mutex::new(std::collections::HashSet::new()),
            history: None,
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        file_attr(a, self.uid, self.gid)
    }

    fn open_flags(io: &KernelIo) -> FopenFlags {
        match io {
            KernelIo::Cached { keep_cache: true } => FopenFlags::FOPEN_KEEP_CACHE,
            KernelIo::Cached { keep_cache: false } | KernelIo::Passthrough { .. } => FopenFlags::empty(),
        }
    }

    fn end_epoch(&self, epoch: Option<u64>) {
        self.backings.end(epoch);
    }

    fn reply_opened(&self, fh: u64, reply: ReplyOpen) {
        reply_opened(&self.vfs, &self.backings, fh, reply)
    }

    /// An entry reply; the kernel then holds a reference to the inode until
    /// it forgets it (see `Vfs::kernel_ref`).
    fn reply_entry(&self, result: Result<Attr, Errno>, reply: ReplyEntry) {
        match result {
            Ok(a) => {
                self.vfs.kernel_ref(a.ino);
                reply.entry(&TTL, &self.attr(&a), Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }
}

/// Opens and reads that download on threads of their own at most; beyond that they run
/// on the FUSE thread that received them (slower for the others, never lost).
const MAX_HANDED_OFF_OPENS: usize = 64;

/// One of the [`MAX_HANDED_OFF_OPENS`] places, given back when dropped
/// (also when the thread meant to use it could not start).
struct HandOffSlot(Arc<std::sync::atomic::AtomicUsize>);

impl HandOffSlot {
    fn take(count: &Arc<std::sync::atomic::AtomicUsize>) -> Option<Self> {
        use std::sync::atomic::Ordering::SeqCst;
        count
            .fetch_update(SeqCst, SeqCst, |n| (n < MAX_HANDED_OFF_OPENS).then_some(n + 1))
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for HandOffSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Filesystem for ContextFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Larger requests mean fewer round trips for sequential I/O.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Passthrough lets the kernel read cached blobs itself (kernel >= 6.9).
        if self.vfs.passthrough_wanted()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.vfs.enable_passthrough(true);
        }
        tracing::info!(passthrough = self.vfs.passthrough_enabled(), "FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if in_history(parent) || self.is_history_name(parent.0, name) {
            return self.history_lookup(parent.0, name, reply);
        }
        let reply = match name.to_str() {
            Some(n) if self.announcer(req.pid()) => match self.announcer_lookup(parent.0, n, reply) {
                Ok(()) => return,
                Err(reply) => reply,
            },
            _ => reply,
        };
        let result = name_str(name).and_then(|n| self.vfs.lookup(parent.0, n).map_err(errno));
        self.reply_entry(result, reply);
    }

    /// (fuser's default `batch_forget` calls this for each inode.)
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if in_history(ino) {
            return self.history_forget(ino.0, nlookup);
        }
        self.vfs.kernel_forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if in_history(ino) {
            return self.history_getattr(ino.0, reply);
        }
        match self.vfs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if in_history(ino) {
            return reply.error(Errno::EROFS);
        }
        if self.announcer(req.pid()) {
            return match self.vfs.announcer_attr(ino.0) {
                Ok(a) => reply.attr(&TTL, &self.attr(&a)),
                Err(e) => reply.error(errno(e)),
            };
        }
        // Ownership is not part of the model: only a no-op chown succeeds.
        if uid.is_some_and(|u| u != self.uid) || gid.is_some_and(|g| g != self.gid) {
            return reply.error(Errno::EPERM);
        }
        let set = SetAttr {
            size,
            mode: mode.map(|m| m & 0o7777),
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        let (vfs, owner) = (self.vfs.clone(), (self.uid, self.gid));
        let op = move || match vfs.setattr(ino.0, fh.map(|f| f.0), set) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a, owner.0, owner.1)),
            Err(e) => reply.error(errno(e)),
        };
        // A truncate waits for passthrough readers of the file.
        if size.is_some() && self.vfs.passthrough_readers(ino.0) {
            return run_waiting(op);
        }
        op()
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        if in_history(ino) {
            return reply.error(Errno::EINVAL);
        }
        match self.vfs.readlink(ino.0) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if self.history_refuses(parent.0, name) {
            return reply.error(Errno::EROFS);
        }
        // Device nodes, fifos and sockets have no place in a shared workspace.
        reply.error(Errno::EPERM);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        if self.history_refuses(parent.0, name) {
            return reply.error(Errno::EROFS);
        }
        if self.announcer(req.pid()) {
            return match name_str(name) {
                Ok(n) => self.announcer_entry(parent.0, n, reply),
                Err(e) => reply.error(e),
            };
        }
        let result = name_str(name).and_then(|n| self.vfs.mkdir(parent.0, n, mode & !umask).map_err(errno));
        self.reply_entry(result, reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.history_refuses(parent.0, name) {
            return reply.error(Errno::EROFS);
        }
        let announced = self.announcer(req.pid());
        match name_str(name).and_then(|n| match announced {
            true => self.vfs.announcer_remove(parent.0, n).map_err(errno),
            false => self.vfs.unlink(parent.0, n).map_err(errno),
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.history_refuses(parent.0, name) {
            return reply.error(Errno::EROFS);
        }
        let announced = self.announcer(req.pid());
        match name_str(name).and_then(|n| match announced {
            true => self.vfs.announcer_remove(parent.0, n).map_err(errno),
            false => self.vfs.rmdir(parent.0, n).map_err(errno),
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        if self.history_refuses(parent.0, link_name) {
            return reply.error(Errno::EROFS);
        }
        if self.announcer(req.pid()) {
            return match name_str(link_name) {
                Ok(n) => self.announcer_entry(parent.0, n, reply),
                Err(e) => reply.error(e),
            };
        }
        let result = name_str(link_name).and_then(|n| {
            let target = target.to_str().ok_or(Errno::EINVAL)?;
            self.vfs.symlink(parent.0, n, target).map_err(errno)
        });
        self.reply_entry(result, reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if self.history_refuses(parent.0, name) || self.history_refuses(newparent.0, newname) {
            return reply.error(Errno::EROFS);
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let announced = self.announcer(req.pid());
        let result = name_str(name).and_then(|from| {
            let to = name_str(newname)?;
            if announced {
                return self
                    .vfs
                    .announcer_rename(parent.0, from, newparent.0, to)
                    .map_err(errno);
            }
            self.vfs
                .rename(parent.0, from, newparent.0, to, no_replace)
                .map_err(errno)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        if in_history(ino) || self.history_refuses(newparent.0, newname) {
            return reply.error(Errno::EROFS);
        }
        // Hard links cannot be versioned as one node; fail fast and clearly.
        reply.error(Errno::EPERM);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.announcer(req.pid()) {
            // A handle that writes nothing (its close is the IN_CLOSE_WRITE).
            return reply.opened(FileHandle(Vfs::announcer_handle()), FopenFlags::FOPEN_DIRECT_IO);
        }
        let mode = OpenMode::from_flags(flags.0);
        if in_history(ino) {
            return self.history_open(ino.0, mode, reply);
        }
        if (mode.write || mode.truncate) && self.vfs.passthrough_readers(ino.0) {
            // A writer waits for passthrough readers of the file; it never
            // becomes a passthrough open itself.
            let vfs = self.vfs.clone();
            return run_waiting(
                move || match vfs.open(ino.0, mode).and_then(|fh| Ok((fh, vfs.kernel_io(fh)?))) {
                    Ok((fh, io)) => reply.opened(FileHandle(fh), Self::open_flags(&io)),
                    Err(e) => reply.error(errno(e)),
                },
            );
        }
        if self.vfs.open_would_fetch(ino.0, mode) {
            // A cold open downloads first (up to the client's timeout): off
            // the fixed FUSE threads, so cached reads and stats keep going.
            if let Some(slot) = HandOffSlot::take(&self.handed_off) {
                let (vfs, backings) = (self.vfs.clone(), self.backings.clone());
                return run_waiting(move || {
                    let _slot = slot;
                    match vfs.open(ino.0, mode) {
                        Ok(fh) => reply_opened(&vfs, &backings, fh, reply),
                        Err(e) => reply.error(errno(e)),
                    }
                });
            }
        }
        match self.vfs.open(ino.0, mode) {
            Ok(fh) => self.reply_opened(fh, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if in_history(ino) {
            return match self.history_read(fh.0, offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            };
        }
        if Vfs::is_announcer_handle(fh.0) {
            return reply.error(Errno::EBADF);
        }
        if self.vfs.read_would_fetch(fh.0, offset, size) {
            // A read of a large file that must download a chunk first (up to
            // the client's timeout): off the fixed FUSE threads, like a cold open.
            if let Some(slot) = HandOffSlot::take(&self.handed_off) {
                let vfs = self.vfs.clone();
                return run_waiting(move || {
                    let _slot = slot;
                    match vfs.read(fh.0, offset, size) {
                        Ok(data) => reply.data(&data),
                        Err(e) => reply.error(errno(e)),
                    }
                });
            }
        }
        match self.vfs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if Vfs::is_announcer_handle(fh.0) {
            return reply.error(Errno::EBADF);
        }
        match self.vfs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// close(): this is where the commit becomes durable (release's errors
    /// never reach the caller).
    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        if in_history(ino) || Vfs::is_announcer_handle(fh.0) {
            return reply.ok();
        }
        match self.vfs.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if in_history(ino) {
            self.history_release(fh.0);
            return reply.ok();
        }
        if Vfs::is_announcer_handle(fh.0) {
            return reply.ok();
        }
        if self.vfs.release_seals_large_file(fh.0) {
            // Hashing a large file the kernel wrote: off the fixed FUSE threads.
            let (vfs, backings) = (self.vfs.clone(), self.backings.clone());
            return run_waiting(move || match vfs.release_kernel(fh.0) {
                Ok(ended) => {
                    backings.end(ended);
                    reply.ok()
                }
                Err(e) => reply.error(errno(e)),
            });
        }
        match self.vfs.release_kernel(fh.0) {
            Ok(ended) => {
                self.end_epoch(ended);
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    /// fsync waits for the server's answer (up to 10 s): on a thread of its
    /// own, so a slow server never ties up the FUSE threads.
    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if in_history(ino) || Vfs::is_announcer_handle(fh.0) {
            return reply.ok();
        }
        let vfs = self.vfs.clone();
        run_waiting(move || match vfs.fsync(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        });
    }

    /// fsync of a directory (how programs make a create or rename durable):
    /// the journal's fdatasync, on a thread of its own.
    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let vfs = self.vfs.clone();
        run_waiting(move || match vfs.fsyncdir() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if in_history(ino) {
            return self.history_opendir(ino.0, reply);
        }
        match self.vfs.getattr(ino.0) {
            Ok(a) if a.kind == NodeKind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        if in_history(ino) {
            return self.history_readdir(ino.0, offset, reply);
        }
        match self.vfs.readdir(ino.0) {
            Ok(entries) => fill_dir(reply, ino.0, self.vfs.parent_of(ino.0), entries, offset),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus) {
        if in_history(ino) {
            return self.history_readdirplus(ino.0, offset, reply);
        }
        match self.vfs.readdir(ino.0) {
            Ok(entries) => fill_dir_plus(
                reply,
                entries,
                offset,
                |ino| self.vfs.getattr(ino).ok().map(|a| self.attr(&a)),
                |ino| self.vfs.kernel_ref(ino),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// No ioctl is supported: ENOTTY, as a regular file on a local disk
    /// answers the terminal ioctls (fuser's default logs every call and
    /// answers ENOSYS).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let first = self
            .unsupported_ioctls
            .lock()
            .map(|mut seen| seen.insert(cmd))
            .unwrap_or(false);
        if first {
            tracing::info!(
                cmd = format_args!("{cmd:#x}"),
                "unsupported ioctl answered ENOTTY (logged once per command)"
            );
        }
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if in_history(ino) {
            return reply.error(Errno::EROFS);
        }
        if Vfs::is_announcer_handle(fh.0) {
            return reply.error(Errno::EBADF);
        }
        match self.vfs.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.vfs.statfs();
        reply.statfs(s.blocks, s.bfree, s.bfree, s.files, s.ffree, 4096, 255, 4096);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if in_history(ino) {
            return reply.error(Errno::EROFS);
        }
        // The contextfs attributes are read-only and others are not stored.
        reply.error(Errno::ENOTSUP);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if in_history(ino) {
            return reply.error(Errno::ENODATA);
        }
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENODATA);
        };
        match self.vfs.getxattr(ino.0, name) {
            Ok(value) if size == 0 => reply.size(value.len() as u32),
            Ok(value) if value.len() <= size as usize => reply.data(&value),
            Ok(_) => reply.error(Errno::ERANGE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = match in_history(ino) {
            true => Ok(Vec::new()),
            false => self.vfs.listxattr(ino.0),
        };
        match names {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() <= size as usize {
                    reply.data(&buf)
                } else {
                    reply.error(Errno::ERANGE)
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        if in_history(ino) {
            return reply.error(Errno::EROFS);
        }
        reply.error(Errno::ENOTSUP);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if self.history_refuses(parent.0, name) {
            return reply.error(Errno::EROFS);
        }
        if self.announcer(req.pid()) {
            return match name_str(name) {
                Ok(n) => self.announcer_create(parent.0, n, reply),
                Err(e) => reply.error(e),
            };
        }
        let exclusive = flags & libc::O_EXCL != 0;
        let name = match name_str(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        // Opening an existing file this way waits for its passthrough readers.
        let waits = !exclusive
            && self
                .vfs
                .lookup(parent.0, &name)
                .is_ok_and(|a| self.vfs.passthrough_readers(a.ino));
        let (vfs, backings, owner) = (self.vfs.clone(), self.backings.clone(), (self.uid, self.gid));
        let op = move || {
            let created = vfs.create(
                parent.0,
                &name,
                mode & !umask & 0o7777,
                OpenMode::from_flags(flags),
                exclusive,
            );
            match created {
                Ok((a, fh)) => {
                    vfs.kernel_ref(a.ino);
                    reply_created(&vfs, &backings, &file_attr(&a, owner.0, owner.1), fh, reply)
                }
                Err(e) => reply.error(errno(e)),
            }
        };
        if waits {
            return run_waiting(op);
        }
        op()
    }
}

/// Runs an operation that may wait (for passthrough readers to close, for
/// the server) on a thread of its own, replying from there: blocked FUSE
/// threads could be the ones the readers' release requests need. (If the
/// thread cannot start, the dropped reply answers EIO.)
fn run_waiting(op: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name("fuse-wait".into()).spawn(op) {
        tracing::error!(error = %e, "cannot start a thread for an operation that waits");
    }
}
