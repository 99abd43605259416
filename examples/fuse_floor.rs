//! The floor of a FUSE file system: an in-memory, writable file system that
//! answers every request as fast as the kernel round trip allows, with the
//! FUSE settings of a contextfs mount (fuser 0.18, the same number of worker
//! threads, cloned device fds, the same attribute and entry TTL, block size,
//! `max_write`, `max_readahead` and passthrough capability, no writeback
//! cache, and the same set of implemented requests, so the kernel sends it
//! the same requests it sends contextfs).
//!
//! ```text
//! cargo run --release --example fuse_floor -- [SOURCE_DIR] MOUNTPOINT
//! ```
//!
//! With a SOURCE_DIR, it first mirrors that directory's names, kinds, modes
//! and sizes (not its contents: such files can be stat'ed, listed, renamed
//! and removed, but `open` fails with EACCES). Everything created through the
//! mount (files, directories, symlinks) lives in memory with its contents.
//! It runs in the foreground until it is unmounted (`fusermount3 -u
//! MOUNTPOINT`).
//!
//! `scripts/bench-mount` measures it next to a native directory and contextfs:
//! what a stat, a listing, a create, a mkdir or a rename costs through FUSE
//! when the file system does almost nothing, so a reader can tell the kernel
//! round trip from the work of contextfs itself.
//!
//! It counts the requests it receives, per kind. Reading the extended
//! attribute `user.fuse_floor.requests` of the mount's root returns the counts
//! so far as JSON (that `getxattr` itself is not counted):
//! `python3 -c 'import os; print(os.getxattr("MNT", "user.fuse_floor.requests"))'`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, TimeOrNow, WriteFlags,
};

const ROOT: u64 = 1;
const TTL: Duration = contextfs::fuse::TTL;
/// `st_blksize` as contextfs reports it (stdio and `cp` size their buffers by it).
const BLKSIZE: u32 = 128 * 1024;
const STATS_XATTR: &str = "user.fuse_floor.requests";
/// The first `readdir` cookie of a child: 1 and 2 are `.` and `..`.
const FIRST_COOKIE: u64 = 3;

/// The requests counted, in the order the statistics list them.
const OPS: [&str; 24] = [
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "fsyncdir",
    "statfs",
    "getxattr",
    "listxattr",
    "create",
    "other",
];

fn op_index(name: &str) -> usize {
    OPS.iter().position(|o| *o == name).unwrap_or(OPS.len() - 1)
}

struct Node {
    attr: FileAttr,
    parent: u64,
    /// This node's `readdir` cookie in its parent.
    cookie: u64,
    /// Regular files: the contents (`None`: mirrored, not readable).
    data: Option<Vec<u8>>,
    /// Symlinks: the target.
    target: Option<PathBuf>,
    /// Directories: children by cookie (stable offsets while entries are
    /// removed during a listing, as `rm -r` does).
    entries: BTreeMap<u64, (OsString, u64)>,
    next_cookie: u64,
    /// Open file handles, so an unlinked open file lives on until its release.
    open: u32,
}

#[derive(Default)]
struct State {
    nodes: HashMap<u64, Node>,
    names: HashMap<(u64, OsString), u64>,
    next_ino: u64,
}

struct Floor {
    state: Mutex<State>,
    counts: [AtomicU64; OPS.len()],
    uid: u32,
    gid: u32,
}

fn new_attr(ino: u64, kind: FileType, perm: u32, size: u64, time: SystemTime, uid: u32, gid: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind,
        perm: (perm & 0o7777) as u16,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn set_size(attr: &mut FileAttr, size: u64) {
    attr.size = size;
    attr.blocks = size.div_ceil(512);
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl State {
    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.nodes.get(&ino.0).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Option<u64> {
        self.names.get(&(parent.0, name.to_os_string())).copied()
    }

    /// Adds a new node named `name` in the directory `parent`.
    fn insert(&mut self, parent: u64, name: &OsStr, mut attr: FileAttr) -> Result<FileAttr, Errno> {
        let dir = self.nodes.get_mut(&parent).ok_or(Errno::ENOENT)?;
        if dir.attr.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if self.names.contains_key(&(parent, name.to_os_string())) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        attr.ino = INodeNo(ino);
        let cookie = dir.next_cookie;
        dir.next_cookie += 1;
        dir.entries.insert(cookie, (name.to_os_string(), ino));
        let now = SystemTime::now();
        (dir.attr.mtime, dir.attr.ctime) = (now, now);
        if attr.kind == FileType::Directory {
            dir.attr.nlink += 1;
        }
        let data = (attr.kind == FileType::RegularFile).then(Vec::new);
        self.nodes.insert(
            ino,
            Node {
                attr,
                parent,
                cookie,
                data,
                target: None,
                entries: BTreeMap::new(),
                next_cookie: FIRST_COOKIE,
                open: 0,
            },
        );
        self.names.insert((parent, name.to_os_string()), ino);
        Ok(attr)
    }

    /// Takes the name `name` out of `parent`; the node itself stays while it
    /// is open (files) and is dropped otherwise.
    fn remove_name(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let ino = self.names.remove(&(parent, name.to_os_string())).ok_or(Errno::ENOENT)?;
        let (cookie, is_dir) = {
            let node = &self.nodes[&ino];
            (node.cookie, node.attr.kind == FileType::Directory)
        };
        let dir = self.nodes.get_mut(&parent).expect("the parent of a name exists");
        dir.entries.remove(&cookie);
        let now = SystemTime::now();
        (dir.attr.mtime, dir.attr.ctime) = (now, now);
        if is_dir {
            dir.attr.nlink -= 1;
        }
        let node = self.nodes.get_mut(&ino).expect("a named node exists");
        node.attr.nlink = 0;
        node.attr.ctime = now;
        if node.open == 0 {
            self.nodes.remove(&ino);
        }
        Ok(ino)
    }

    /// What `unlink` (`dir = false`) or `rmdir` (`dir = true`) may remove.
    fn check_removable(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.child(parent, name).ok_or(Errno::ENOENT)?;
        let node = &self.nodes[&ino];
        match (dir, node.attr.kind == FileType::Directory) {
            (true, false) => Err(Errno::ENOTDIR),
            (false, true) => Err(Errno::EISDIR),
            (true, true) if !node.entries.is_empty() => Err(Errno::ENOTEMPTY),
            _ => Ok(()),
        }
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return Err(Errno::EINVAL);
        }
        let ino = self.child(INodeNo(parent), name).ok_or(Errno::ENOENT)?;
        let is_dir = self.nodes[&ino].attr.kind == FileType::Directory;
        // A directory may not move below itself.
        let mut up = newparent;
        while is_dir && up != ROOT {
            if up == ino {
                return Err(Errno::EINVAL);
            }
            up = self.nodes.get(&up).ok_or(Errno::ENOENT)?.parent;
        }
        if let Some(existing) = self.child(INodeNo(newparent), newname) {
            if existing == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            let target_is_dir = self.nodes[&existing].attr.kind == FileType::Directory;
            match (is_dir, target_is_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.nodes[&existing].entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            self.remove_name(newparent, newname)?;
        }
        let target_dir = self.node(INodeNo(newparent))?;
        if target_dir.attr.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        // Detach from the old parent, attach to the new one, same inode.
        let node = self.nodes.remove(&ino).expect("a named node exists");
        self.names.remove(&(parent, name.to_os_string()));
        let now = SystemTime::now();
        let old = self.nodes.get_mut(&parent).expect("the parent of a name exists");
        old.entries.remove(&node.cookie);
        (old.attr.mtime, old.attr.ctime) = (now, now);
        if is_dir {
            old.attr.nlink -= 1;
        }
        let new = self.nodes.get_mut(&newparent).expect("checked above");
        let cookie = new.next_cookie;
        new.next_cookie += 1;
        new.entries.insert(cookie, (newname.to_os_string(), ino));
        (new.attr.mtime, new.attr.ctime) = (now, now);
        if is_dir {
            new.attr.nlink += 1;
        }
        let mut node = node;
        (node.parent, node.cookie, node.attr.ctime) = (newparent, cookie, now);
        self.nodes.insert(ino, node);
        self.names.insert((newparent, newname.to_os_string()), ino);
        Ok(())
    }
}

impl Floor {
    fn new() -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut state = State {
            next_ino: ROOT + 1,
            ..State::default()
        };
        let root = new_attr(ROOT, FileType::Directory, 0o755, 0, SystemTime::now(), uid, gid);
        state.nodes.insert(
            ROOT,
            Node {
                attr: root,
                parent: ROOT,
                cookie: 0,
                data: None,
                target: None,
                entries: BTreeMap::new(),
                next_cookie: FIRST_COOKIE,
                open: 0,
            },
        );
        Floor {
            state: Mutex::new(state),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            uid,
            gid,
        }
    }

    /// Mirrors `source` (names, kinds, modes, sizes, mtimes) into the root.
    fn mirror(&self, source: &Path) -> anyhow::Result<usize> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(source).with_context(|| format!("cannot read {}", source.display()))?;
        if !meta.is_dir() {
            bail!("{} is not a directory", source.display());
        }
        let mut state = self.lock();
        let mut pending: Vec<(u64, PathBuf)> = vec![(ROOT, source.to_path_buf())];
        let mut count = 0;
        while let Some((dir_ino, dir)) = pending.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("cannot list {}", dir.display()))?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let path = entry.path();
                let meta =
                    std::fs::symlink_metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?;
                let kind = if meta.is_dir() {
                    FileType::Directory
                } else if meta.file_type().is_symlink() {
                    FileType::Symlink
                } else {
                    FileType::RegularFile
                };
                let mtime = UNIX_EPOCH + Duration::new(meta.mtime().max(0) as u64, meta.mtime_nsec() as u32);
                let attr = new_attr(0, kind, meta.mode(), meta.len(), mtime, self.uid, self.gid);
                let ino = state
                    .insert(dir_ino, &entry.file_name(), attr)
                    .map_err(|e| anyhow::anyhow!("cannot mirror {}: {e:?}", path.display()))?
                    .ino
                    .0;
                let node = state.nodes.get_mut(&ino).expect("just inserted");
                node.data = None;
                if kind == FileType::Symlink {
                    node.target = Some(std::fs::read_link(&path)?);
                }
                if meta.is_dir() {
                    pending.push((ino, path));
                }
                count += 1;
            }
        }
        Ok(count)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, op: &str) {
        self.counts[op_index(op)].fetch_add(1, Ordering::Relaxed);
    }

    fn stats_json(&self) -> String {
        let fields: Vec<String> = OPS
            .iter()
            .zip(&self.counts)
            .map(|(op, n)| format!("\"{op}\":{}", n.load(Ordering::Relaxed)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// A new node of `kind` in `parent`, owned by the caller.
    fn make(&self, parent: INodeNo, name: &OsStr, kind: FileType, mode: u32, umask: u32) -> Result<FileAttr, Errno> {
        let attr = new_attr(0, kind, mode & !umask, 0, SystemTime::now(), self.uid, self.gid);
        self.lock().insert(parent.0, name, attr)
    }
}

fn reply_empty(result: Result<(), Errno>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_entry(result: Result<FileAttr, Errno>, reply: ReplyEntry) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // As contextfs's `init`: 1 MiB requests and (when the kernel has it)
        // the passthrough capability; the floor never opens a file with it.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
            let _ = config.set_max_stack_depth(1);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.count("lookup");
        let state = self.lock();
        let result = state.node(parent).and_then(|dir| {
            if dir.attr.kind != FileType::Directory {
                return Err(Errno::ENOTDIR);
            }
            let ino = state.child(parent, name).ok_or(Errno::ENOENT)?;
            Ok(state.nodes[&ino].attr)
        });
        reply_entry(result, reply);
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        self.count("forget");
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.count("getattr");
        match self.lock().node(ino) {
            Ok(node) => reply.attr(&TTL, &node.attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.count("setattr");
        // As contextfs: every file belongs to the mounting user.
        if uid.is_some_and(|u| u != self.uid) || gid.is_some_and(|g| g != self.gid) {
            return reply.error(Errno::EPERM);
        }
        let mut state = self.lock();
        let node = match state.node_mut(ino) {
            Ok(node) => node,
            Err(e) => return reply.error(e),
        };
        let now = SystemTime::now();
        if let Some(size) = size {
            let Some(data) = node.data.as_mut() else {
                return reply.error(if node.attr.kind == FileType::Directory {
                    Errno::EISDIR
                } else {
                    Errno::EACCES
                });
            };
            data.resize(size as usize, 0);
            set_size(&mut node.attr, size);
            node.attr.mtime = now;
        }
        if let Some(mode) = mode {
            node.attr.perm = (mode & 0o7777) as u16;
        }
        if let Some(t) = atime {
            node.attr.atime = time(t);
        }
        if let Some(t) = mtime {
            node.attr.mtime = time(t);
        }
        node.attr.ctime = now;
        reply.attr(&TTL, &node.attr);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.count("readlink");
        use std::os::unix::ffi::OsStrExt;
        match self.lock().node(ino).map(|n| n.target.clone()) {
            Ok(Some(target)) => reply.data(target.as_os_str().as_bytes()),
            Ok(None) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.count("mkdir");
        reply_entry(self.make(parent, name, FileType::Directory, mode, umask), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count("unlink");
        let mut state = self.lock();
        let result = state
            .check_removable(parent, name, false)
            .and_then(|()| state.remove_name(parent.0, name).map(drop));
        reply_empty(result, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count("rmdir");
        let mut state = self.lock();
        let result = state
            .check_removable(parent, name, true)
            .and_then(|()| state.remove_name(parent.0, name).map(drop));
        reply_empty(result, reply);
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        self.count("symlink");
        let size = target.as_os_str().len() as u64;
        let attr = new_attr(0, FileType::Symlink, 0o777, size, SystemTime::now(), self.uid, self.gid);
        let mut state = self.lock();
        let result = state.insert(parent.0, link_name, attr).inspect(|a| {
            state.nodes.get_mut(&a.ino.0).expect("just inserted").target = Some(target.to_path_buf());
        });
        reply_entry(result, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.count("rename");
        reply_empty(self.lock().rename(parent.0, name, newparent.0, newname, flags), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.count("open");
        let mut state = self.lock();
        let node = match state.node_mut(ino) {
            Ok(node) => node,
            Err(e) => return reply.error(e),
        };
        let Some(data) = node.data.as_mut() else {
            return reply.error(if node.attr.kind == FileType::Directory {
                Errno::EISDIR
            } else {
                Errno::EACCES
            });
        };
        if flags.0 & libc::O_TRUNC != 0 && flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            data.clear();
            set_size(&mut node.attr, 0);
            let now = SystemTime::now();
            (node.attr.mtime, node.attr.ctime) = (now, now);
        }
        node.open += 1;
        reply.opened(FileHandle(ino.0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.count("read");
        let state = self.lock();
        match state.node(ino).map(|n| n.data.as_deref()) {
            Ok(Some(data)) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Ok(None) => reply.error(Errno::EACCES),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.count("write");
        let mut state = self.lock();
        let node = match state.node_mut(ino) {
            Ok(node) => node,
            Err(e) => return reply.error(e),
        };
        let Some(data) = node.data.as_mut() else {
            return reply.error(Errno::EBADF);
        };
        let (offset, end) = (offset as usize, offset as usize + bytes.len());
        if offset == data.len() {
            // Appending (the common case): no zero-fill first.
            data.extend_from_slice(bytes);
        } else {
            if data.len() < end {
                data.resize(end, 0);
            }
            data[offset..end].copy_from_slice(bytes);
        }
        let size = data.len() as u64;
        set_size(&mut node.attr, size);
        let now = SystemTime::now();
        (node.attr.mtime, node.attr.ctime) = (now, now);
        reply.written(bytes.len() as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.count("flush");
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.count("release");
        let mut state = self.lock();
        if let Ok(node) = state.node_mut(ino) {
            node.open = node.open.saturating_sub(1);
            if node.open == 0 && node.attr.nlink == 0 {
                state.nodes.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.count("fsync");
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.count("opendir");
        match self.lock().node(ino).map(|n| n.attr.kind) {
            Ok(FileType::Directory) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.count("readdir");
        let state = self.lock();
        let node = match state.node(ino) {
            Ok(node) if node.attr.kind == FileType::Directory => node,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let dots = [(1, ino.0, OsStr::new(".")), (2, node.parent, OsStr::new(".."))];
        let dots = dots.into_iter().map(|(c, i, n)| (c, i, FileType::Directory, n));
        let children = node
            .entries
            .range(offset + 1..)
            .map(|(&c, (name, child))| (c, *child, state.nodes[child].attr.kind, name.as_os_str()));
        for (cookie, child, kind, name) in dots.filter(|d| d.0 > offset).chain(children) {
            if reply.add(INodeNo(child), cookie, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.count("fsyncdir");
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.count("statfs");
        let files = self.lock().nodes.len() as u64;
        reply.statfs(1 << 30, 1 << 29, 1 << 29, files + (1 << 20), 1 << 20, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino.0 != ROOT || name != STATS_XATTR {
            // Like contextfs for a name it does not have.
            self.count("getxattr");
            return reply.error(Errno::ENODATA);
        }
        let value = self.stats_json();
        if size == 0 {
            reply.size(value.len() as u32)
        } else if value.len() <= size as usize {
            reply.data(value.as_bytes())
        } else {
            reply.error(Errno::ERANGE)
        }
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.count("listxattr");
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.count("other");
        reply.error(Errno::ENOTSUP);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        self.count("other");
        reply.error(Errno::ENOTTY);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.count("create");
        let mut state = self.lock();
        // O_CREAT without O_EXCL on an existing file opens (and truncates) it.
        let result = match state.child(parent, name) {
            Some(_) if flags & libc::O_EXCL != 0 => Err(Errno::EEXIST),
            Some(ino) => {
                let node = state.nodes.get_mut(&ino).expect("a named node exists");
                match node.data.as_mut() {
                    Some(data) => {
                        if flags & libc::O_TRUNC != 0 {
                            data.clear();
                            set_size(&mut node.attr, 0);
                        }
                        Ok(node.attr)
                    }
                    None if node.attr.kind == FileType::Directory => Err(Errno::EISDIR),
                    None => Err(Errno::EACCES),
                }
            }
            None => {
                let attr = new_attr(
                    0,
                    FileType::RegularFile,
                    mode & !umask,
                    0,
                    SystemTime::now(),
                    self.uid,
                    self.gid,
                );
                state.insert(parent.0, name, attr)
            }
        };
        match result {
            Ok(attr) => {
                state.nodes.get_mut(&attr.ino.0).expect("exists").open += 1;
                reply.created(&TTL, &attr, Generation(0), FileHandle(attr.ino.0), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (source, mountpoint) = match args.as_slice() {
        [mountpoint] => (None, mountpoint),
        [source, mountpoint] => (Some(source), mountpoint),
        _ => bail!("usage: fuse_floor [SOURCE_DIR] MOUNTPOINT"),
    };
    let floor = Floor::new();
    if let Some(source) = source {
        let started = std::time::Instant::now();
        let count = floor.mirror(source)?;
        eprintln!(
            "fuse_floor: {count} nodes of {} mirrored in {:.2} s",
            source.display(),
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!("fuse_floor: mounting at {}", mountpoint.display());
    let mut config = Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("fuse_floor".into()),
        fuser::MountOption::Subtype("fuse_floor".into()),
    ];
    config.n_threads = Some(contextfs::mount::FUSE_THREADS);
    config.clone_fd = true;
    Session::new(floor, mountpoint, &config)
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?
        .run()
        .context("FUSE session failed")
}
