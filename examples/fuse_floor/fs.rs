//! The FUSE requests: each one counted, then answered from the tree.

use std::ffi::OsStr;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::tree::{new_attr, set_size};
use crate::{Floor, ROOT, STATS_XATTR, TTL};

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
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
