//! Replies that take more than one step: an open that registers its
//! passthrough backing file, and directory listings (plain and plus).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fuser::{
    BackingId, FileAttr, FileHandle, FopenFlags, Generation, INodeNo, ReplyCreate, ReplyDirectory, ReplyDirectoryPlus,
    ReplyOpen,
};

use super::{errno, file_type, ContextFs, TTL};
use crate::api::NodeKind;
use crate::vfs::{DirEntry, KernelIo, Vfs};

/// Registered backing files of the passthrough epochs with open handles.
#[derive(Default)]
pub(super) struct Backings(Mutex<HashMap<u64, Arc<BackingId>>>);

impl Backings {
    /// The backing file of a passthrough epoch: registered by its first open,
    /// shared by the rest (the kernel wants one per inode), dropped by the
    /// last release.
    pub(super) fn get_or_register(
        &self,
        epoch: u64,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<Arc<BackingId>> {
        let mut backings = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = backings.get(&epoch) {
            return Ok(b.clone());
        }
        let backing = Arc::new(register()?);
        backings.insert(epoch, backing.clone());
        Ok(backing)
    }

    pub(super) fn end(&self, epoch: Option<u64>) {
        if let Some(epoch) = epoch {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&epoch);
        }
    }
}

/// Replies to an open with the handle's kernel I/O mode, registering its
/// passthrough backing file when it has one.
pub(super) fn reply_opened(vfs: &Vfs, backings: &Backings, fh: u64, reply: ReplyOpen) {
    let io = match vfs.kernel_io(fh) {
        Ok(io) => io,
        Err(e) => return reply.error(errno(e)),
    };
    let KernelIo::Passthrough { file, epoch } = &io else {
        return reply.opened(FileHandle(fh), ContextFs::open_flags(&io));
    };
    match backings.get_or_register(*epoch, || reply.open_backing(&**file)) {
        Ok(backing) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing),
        Err(e) => {
            // Needs CAP_SYS_ADMIN and a backing file on a plain file system.
            tracing::warn!(error = %e, "the kernel refused a passthrough backing file; reads go through the mount from now on");
            match vfs.passthrough_failed(fh) {
                Ok((io, ended)) => {
                    backings.end(ended);
                    reply.opened(FileHandle(fh), ContextFs::open_flags(&io));
                }
                Err(e) => reply.error(errno(e)),
            }
        }
    }
}

/// Replies to a create with the new file's attributes and handle; a file
/// the kernel writes itself (write passthrough) gets its staging file
/// registered as the backing file.
pub(super) fn reply_created(vfs: &Vfs, backings: &Backings, attr: &FileAttr, fh: u64, reply: ReplyCreate) {
    let io = match vfs.kernel_io(fh) {
        Ok(io) => io,
        Err(e) => return reply.error(errno(e)),
    };
    let KernelIo::Passthrough { file, epoch } = &io else {
        return reply.created(&TTL, attr, Generation(0), FileHandle(fh), ContextFs::open_flags(&io));
    };
    match backings.get_or_register(*epoch, || reply.open_backing(&**file)) {
        Ok(backing) => {
            reply.created_passthrough(&TTL, attr, Generation(0), FileHandle(fh), FopenFlags::empty(), &backing)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the kernel refused a passthrough backing file; reads and writes go through the mount from now on");
            match vfs.passthrough_failed(fh) {
                Ok((io, ended)) => {
                    backings.end(ended);
                    reply.created(&TTL, attr, Generation(0), FileHandle(fh), ContextFs::open_flags(&io));
                }
                Err(e) => reply.error(errno(e)),
            }
        }
    }
}

/// Answers a readdir from `entries`, after `.` and `..`.
pub(super) fn fill_dir(mut reply: ReplyDirectory, ino: u64, parent: u64, entries: Vec<DirEntry>, offset: u64) {
    let dots = [
        (ino, ".".to_string(), NodeKind::Dir),
        (parent, "..".to_string(), NodeKind::Dir),
    ];
    let all = dots
        .into_iter()
        .chain(entries.into_iter().map(|e| (e.ino, e.name, e.kind)));
    for (i, (child, name, kind)) in all.enumerate().skip(offset as usize) {
        if reply.add(INodeNo(child), (i + 1) as u64, file_type(kind), name) {
            break;
        }
    }
    reply.ok();
}

/// Answers a readdirplus from `entries` with their attributes; the kernel
/// then holds a reference to each entry it took (`kernel_ref`).
pub(super) fn fill_dir_plus(
    mut reply: ReplyDirectoryPlus,
    entries: Vec<DirEntry>,
    offset: u64,
    attr: impl Fn(u64) -> Option<FileAttr>,
    kernel_ref: impl Fn(u64),
) {
    for (i, entry) in entries.into_iter().enumerate().skip(offset as usize) {
        let Some(a) = attr(entry.ino) else { continue };
        if reply.add(INodeNo(entry.ino), (i + 1) as u64, &entry.name, &TTL, &a, Generation(0)) {
            break;
        }
        // The kernel counts a lookup for every entry but `.` and `..`.
        if entry.name != "." && entry.name != ".." {
            kernel_ref(entry.ino);
        }
    }
    reply.ok();
}
