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

mod fs;
mod tree;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use fuser::{Config, Errno, FileAttr, FileType, INodeNo, Session};

use tree::{new_attr, Node, State, FIRST_COOKIE};

const ROOT: u64 = 1;
const TTL: Duration = contextfs::fuse::TTL;
const STATS_XATTR: &str = "user.fuse_floor.requests";

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

pub(crate) struct Floor {
    pub(crate) state: Mutex<State>,
    pub(crate) counts: [AtomicU64; OPS.len()],
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl Floor {
    pub(crate) fn new() -> Self {
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
    pub(crate) fn mirror(&self, source: &Path) -> anyhow::Result<usize> {
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn count(&self, op: &str) {
        self.counts[op_index(op)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats_json(&self) -> String {
        let fields: Vec<String> = OPS
            .iter()
            .zip(&self.counts)
            .map(|(op, n)| format!("\"{op}\":{}", n.load(Ordering::Relaxed)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// A new node of `kind` in `parent`, owned by the caller.
    pub(crate) fn make(
        &self,
        parent: INodeNo,
        name: &OsStr,
        kind: FileType,
        mode: u32,
        umask: u32,
    ) -> Result<FileAttr, Errno> {
        let attr = new_attr(0, kind, mode & !umask, 0, SystemTime::now(), self.uid, self.gid);
        self.lock().insert(parent.0, name, attr)
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
