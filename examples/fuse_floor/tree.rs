//! The floor's in-memory tree: nodes, names and the namespace operations.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo, RenameFlags};

use crate::ROOT;

/// `st_blksize` as contextfs reports it (stdio and `cp` size their buffers by it).
pub(crate) const BLKSIZE: u32 = 128 * 1024;

/// The first `readdir` cookie of a child: 1 and 2 are `.` and `..`.
pub(crate) const FIRST_COOKIE: u64 = 3;

pub(crate) struct Node {
    pub(crate) attr: FileAttr,
    pub(crate) parent: u64,
    /// This node's `readdir` cookie in its parent.
    pub(crate) cookie: u64,
    /// Regular files: the contents (`None`: mirrored, not readable).
    pub(crate) data: Option<Vec<u8>>,
    /// Symlinks: the target.
    pub(crate) target: Option<PathBuf>,
    /// Directories: children by cookie (stable offsets while entries are
    /// removed during a listing, as `rm -r` does).
    pub(crate) entries: BTreeMap<u64, (OsString, u64)>,
    pub(crate) next_cookie: u64,
    /// Open file handles, so an unlinked open file lives on until its release.
    pub(crate) open: u32,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) nodes: HashMap<u64, Node>,
    pub(crate) names: HashMap<(u64, OsString), u64>,
    pub(crate) next_ino: u64,
}

pub(crate) fn new_attr(
    ino: u64,
    kind: FileType,
    perm: u32,
    size: u64,
    time: SystemTime,
    uid: u32,
    gid: u32,
) -> FileAttr {
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

pub(crate) fn set_size(attr: &mut FileAttr, size: u64) {
    attr.size = size;
    attr.blocks = size.div_ceil(512);
}

impl State {
    pub(crate) fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.nodes.get(&ino.0).ok_or(Errno::ENOENT)
    }

    pub(crate) fn node_mut(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    pub(crate) fn child(&self, parent: INodeNo, name: &OsStr) -> Option<u64> {
        self.names.get(&(parent.0, name.to_os_string())).copied()
    }

    /// Adds a new node named `name` in the directory `parent`.
    pub(crate) fn insert(&mut self, parent: u64, name: &OsStr, mut attr: FileAttr) -> Result<FileAttr, Errno> {
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
    pub(crate) fn remove_name(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
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
    pub(crate) fn check_removable(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.child(parent, name).ok_or(Errno::ENOENT)?;
        let node = &self.nodes[&ino];
        match (dir, node.attr.kind == FileType::Directory) {
            (true, false) => Err(Errno::ENOTDIR),
            (false, true) => Err(Errno::EISDIR),
            (true, true) if !node.entries.is_empty() => Err(Errno::ENOTEMPTY),
            _ => Ok(()),
        }
    }

    pub(crate) fn rename(
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
