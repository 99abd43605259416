//! The floor of a FUSE metadata operation: a read-only file system that
//! mirrors a directory's names, kinds and sizes into memory at startup and
//! answers `lookup`, `getattr` and `readdir` from there, with the FUSE
//! settings of a contextfs mount (fuser, the same number of worker threads,
//! cloned device fds, the same attribute and entry TTL).
//!
//! ```text
//! cargo run --release --example fuse_floor -- SOURCE_DIR MOUNTPOINT
//! ```
//!
//! It runs in the foreground until it is unmounted (`fusermount3 -u
//! MOUNTPOINT`). `scripts/bench-mount` measures it next to a native
//! directory and contextfs: what a stat or a listing costs through FUSE when
//! the file system does almost nothing, so a reader can tell the kernel
//! round trip from the work of contextfs itself. File contents are not
//! served (`open` fails with EACCES).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, MountOption, OpenFlags, ReplyAttr,
    ReplyDirectory, ReplyEntry, ReplyOpen, Request, Session,
};

const ROOT: u64 = 1;

struct Node {
    attr: FileAttr,
    /// Children in the order `readdir` lists them (inode numbers).
    children: Vec<u64>,
    parent: u64,
    name: OsString,
}

struct Floor {
    /// `nodes[ino - 1]`.
    nodes: Vec<Node>,
    names: HashMap<(u64, OsString), u64>,
}

impl Floor {
    fn load(source: &Path) -> anyhow::Result<Self> {
        let mut floor = Floor {
            nodes: Vec::new(),
            names: HashMap::new(),
        };
        let meta = std::fs::metadata(source).with_context(|| format!("cannot read {}", source.display()))?;
        if !meta.is_dir() {
            bail!("{} is not a directory", source.display());
        }
        floor.add(ROOT, OsString::new(), &meta);
        let mut pending: Vec<(u64, PathBuf)> = vec![(ROOT, source.to_path_buf())];
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
                let ino = floor.add(dir_ino, entry.file_name(), &meta);
                if meta.is_dir() {
                    pending.push((ino, path));
                }
            }
        }
        Ok(floor)
    }

    fn add(&mut self, parent: u64, name: OsString, meta: &std::fs::Metadata) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let ino = self.nodes.len() as u64 + 1;
        let kind = if meta.is_dir() {
            FileType::Directory
        } else if meta.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let mtime = UNIX_EPOCH + Duration::new(meta.mtime().max(0) as u64, meta.mtime_nsec() as u32);
        let attr = FileAttr {
            ino: INodeNo(ino),
            size: meta.len(),
            blocks: meta.len().div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: (meta.mode() & 0o555) as u16,
            nlink: if meta.is_dir() { 2 } else { 1 },
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        self.nodes.push(Node {
            attr,
            children: Vec::new(),
            parent,
            name: name.clone(),
        });
        if ino != ROOT {
            self.nodes[(parent - 1) as usize].children.push(ino);
            self.names.insert((parent, name), ino);
        }
        ino
    }

    fn node(&self, ino: INodeNo) -> Option<&Node> {
        self.nodes.get((ino.0 as usize).checked_sub(1)?)
    }
}

impl Filesystem for Floor {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.names.get(&(parent.0, name.to_os_string())) {
            Some(&ino) => reply.entry(
                &contextfs::fuse::TTL,
                &self.nodes[(ino - 1) as usize].attr,
                Generation(0),
            ),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(node) => reply.attr(&contextfs::fuse::TTL, &node.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::EACCES);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(node) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if node.attr.kind != FileType::Directory {
            return reply.error(Errno::ENOTDIR);
        }
        let parent = if ino.0 == ROOT { ROOT } else { node.parent };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (parent, FileType::Directory, OsStr::new("..")),
        ];
        let children = node.children.iter().map(|&c| {
            let child = &self.nodes[(c - 1) as usize];
            (c, child.attr.kind, child.name.as_os_str())
        });
        for (i, (child, kind, name)) in dots.into_iter().chain(children).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [source, mountpoint] = args.as_slice() else {
        bail!("usage: fuse_floor SOURCE_DIR MOUNTPOINT");
    };
    let started = SystemTime::now();
    let floor = Floor::load(source)?;
    eprintln!(
        "fuse_floor: {} nodes of {} loaded in {:.2} s; mounting at {}",
        floor.nodes.len(),
        source.display(),
        started.elapsed().unwrap_or_default().as_secs_f64(),
        mountpoint.display()
    );
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("fuse_floor".into()), MountOption::RO];
    config.n_threads = Some(contextfs::mount::FUSE_THREADS);
    config.clone_fd = true;
    Session::new(floor, mountpoint, &config)
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?
        .run()
        .context("FUSE session failed")
}
