//! Past versions inside the mount: `MOUNT/.contextfs/history/<path>/<N>` is
//! a read-only file holding version N of `<path>`.
//!
//! Below `history/`, a directory of the project is a directory listing its
//! children, and a file is a directory of its versions, named by number,
//! each with its commit time as mtime. Nothing is stored for it: a version's
//! bytes are the shared blob cache's file of its hash (fetched and verified
//! the way the mount fetches any clean file), version lists are asked of the
//! server (`GET .../history?path=`) and kept for [`LIST_FRESH`].
//!
//! Everything here lives in a reserved inode range ([`HISTORY_INO_BIT`]),
//! outside the [`Vfs`](super::Vfs) tree: nothing of it is journaled or
//! committed, and no write reaches it (the FUSE adapter answers `EROFS`).
//! The core is plain Rust over two traits, [`ProjectView`] (the mount's tree
//! and its blob cache) and [`VersionSource`] (the server), so unit tests
//! drive it without a kernel or a server.

mod table;
#[cfg(test)]
mod tests;
mod view;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;

use super::{Attr, DirEntry, Ino, VfsError, VfsResult, ROOT_INO};
use crate::api::{NodeKind, VersionInfo};
use crate::model::{BlobHash, WsPath, MAX_NAME_BYTES};
pub use table::VersionFile;
use table::{Entry, Key, Table};

/// The hidden directory at the mount's root (like NetApp's `.snapshot`).
pub const META_DIR: &str = ".contextfs";
/// The folder inside [`META_DIR`] that mirrors the project's tree.
pub const HISTORY_DIR: &str = "history";

/// Every inode number of the history view has this bit; the Vfs counts its
/// own numbers up from 1 and never gets near it.
pub const HISTORY_INO_BIT: Ino = 1 << 62;
/// `.contextfs`
pub const META_INO: Ino = HISTORY_INO_BIT | 1;
/// `.contextfs/history`
pub const HISTORY_ROOT_INO: Ino = HISTORY_INO_BIT | 2;

/// How long a version list fetched from the server is used as it is: a new
/// commit shows up in a listing at most this long after it landed.
pub const LIST_FRESH: Duration = Duration::from_millis(500);

/// Lists older than this are dropped once there are many.
const MEMO_KEEP: Duration = Duration::from_secs(60);
const MEMO_SWEEP_AT: usize = 1024;

/// Whether `ino` belongs to the history view.
pub fn is_history_ino(ino: Ino) -> bool {
    ino & HISTORY_INO_BIT != 0
}

/// A version list could not be fetched.
#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Server(String),
}

/// What the mount shows at a path of the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewEntry {
    pub kind: NodeKind,
    pub mtime: SystemTime,
}

/// The mount's own tree and blob cache, as the history view needs them
/// (implemented by [`Vfs`](super::Vfs) in `view.rs`).
pub trait ProjectView: Send + Sync {
    /// The entry at `path` ("" is the root), unless absent or not part of
    /// the project (the published `skills/` folder).
    fn entry(&self, path: &str) -> Option<ViewEntry>;
    /// The project entries in the directory `path`, by name, with their kinds.
    fn children(&self, path: &str) -> Vec<(String, NodeKind)>;
    /// The cached blob `hash`, fetched into the cache first if missing.
    fn open_blob(&self, hash: &BlobHash) -> VfsResult<Arc<File>>;
}

/// Where version lists come from (the server's history route, in a mount).
pub trait VersionSource: Send + Sync {
    /// Every version of the node at `path` (the live one, else the one
    /// deleted last), in any order; `None` when no node was ever there.
    fn versions(&self, path: &WsPath) -> Result<Option<Vec<VersionInfo>>, HistoryError>;
}

/// One node's versions with content, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listing {
    kind: NodeKind,
    versions: Vec<VersionFile>,
}

impl Listing {
    fn of(mut all: Vec<VersionInfo>) -> Self {
        all.sort_by_key(|v| v.version);
        let kind = all.last().map_or(NodeKind::File, |v| v.kind);
        let versions = all
            .into_iter()
            .filter(|v| !v.deleted && v.kind != NodeKind::Dir)
            .map(|v| VersionFile {
                node: v.node,
                version: v.version,
                committed: super::parse_server_time(&v.created_at).unwrap_or(SystemTime::UNIX_EPOCH),
                hash: v.hash,
                size: v.size,
                mode: v.mode,
            })
            .collect();
        Listing { kind, versions }
    }

    fn newest(&self) -> Option<SystemTime> {
        self.versions.last().map(|v| v.committed)
    }
}

struct Memo {
    at: Instant,
    listing: Option<Arc<Listing>>,
}

/// The history view of one mount.
pub struct History {
    view: Arc<dyn ProjectView>,
    source: Arc<dyn VersionSource>,
    table: Mutex<Table>,
    /// Version lists by path (`None`: the server has no node there).
    memo: Mutex<HashMap<String, Memo>>,
    handles: Mutex<HashMap<u64, Arc<File>>>,
    next_fh: AtomicU64,
    /// The time of `.contextfs` and `history` themselves.
    created: SystemTime,
    fresh_for: Duration,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// A version number as `ls` prints it: digits, no sign, no leading zero.
fn parse_version(name: &str) -> Option<i64> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

fn dir_attr(ino: Ino, time: SystemTime, nlink: usize) -> Attr {
    Attr {
        ino,
        kind: NodeKind::Dir,
        size: 0,
        mode: 0o555,
        atime: time,
        mtime: time,
        ctime: time,
        nlink: u32::try_from(nlink).unwrap_or(u32::MAX),
    }
}

impl History {
    pub fn new(view: Arc<dyn ProjectView>, source: Arc<dyn VersionSource>) -> Self {
        Self::with_freshness(view, source, LIST_FRESH)
    }

    /// Like [`History::new`], keeping version lists for `fresh_for`.
    pub fn with_freshness(view: Arc<dyn ProjectView>, source: Arc<dyn VersionSource>, fresh_for: Duration) -> Self {
        History {
            view,
            source,
            table: Mutex::new(Table::default()),
            memo: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(HISTORY_INO_BIT),
            created: SystemTime::now(),
            fresh_for,
        }
    }

    fn entry(&self, ino: Ino) -> VfsResult<Entry> {
        locked(&self.table)
            .get(ino)
            .cloned()
            .ok_or_else(|| VfsError::noent(format!("history inode {ino}")))
    }

    fn intern(&self, key: Key, parent: Ino, file: Option<VersionFile>) -> Ino {
        locked(&self.table).intern(key, parent, file)
    }

    /// The version list of `path`: the one fetched within `fresh_for`, else
    /// a new one from the server. With the server unreachable, the last one
    /// fetched (if any) is used and the failure logged.
    fn listing(&self, path: &str) -> VfsResult<Option<Arc<Listing>>> {
        if let Some(m) = locked(&self.memo).get(path) {
            if m.at.elapsed() < self.fresh_for {
                return Ok(m.listing.clone());
            }
        }
        // A path the server cannot hold has no history.
        let Ok(ws) = WsPath::parse(path) else { return Ok(None) };
        match self.source.versions(&ws) {
            Ok(all) => {
                let listing = all.map(|all| Arc::new(Listing::of(all)));
                let mut memo = locked(&self.memo);
                if memo.len() >= MEMO_SWEEP_AT {
                    memo.retain(|_, m| m.at.elapsed() < MEMO_KEEP);
                }
                memo.insert(
                    path.to_string(),
                    Memo {
                        at: Instant::now(),
                        listing: listing.clone(),
                    },
                );
                Ok(listing)
            }
            Err(e) => match locked(&self.memo).get(path) {
                Some(m) => {
                    tracing::warn!(path = ?path, error = %e, "cannot list versions; showing the list fetched last");
                    Ok(m.listing.clone())
                }
                None => Err(VfsError::caused_by(
                    libc::EIO,
                    format!("listing the versions of {path:?}"),
                    e,
                )),
            },
        }
    }

    /// The attributes of `.contextfs` (what a lookup of it at the root
    /// answers).
    pub fn meta_attr(&self) -> Attr {
        dir_attr(META_INO, self.created, 3)
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> VfsResult<Attr> {
        if name.len() > MAX_NAME_BYTES {
            return Err(VfsError::new(
                libc::ENAMETOOLONG,
                format!("name is {} bytes; the limit is {MAX_NAME_BYTES}", name.len()),
            ));
        }
        let ino = match self.entry(parent)?.key {
            Key::Meta if name == HISTORY_DIR => HISTORY_ROOT_INO,
            Key::Meta => return Err(VfsError::noent(join(META_DIR, name))),
            Key::Root => self.lookup_path(parent, name.to_string())?,
            Key::Dir(dir) => self.lookup_path(parent, join(&dir, name))?,
            Key::Versions(path) => self.lookup_version(parent, path, name)?,
            Key::Version { path, .. } => return Err(VfsError::notdir(path)),
        };
        self.getattr(ino)
    }

    /// `history/<path>`: a directory of the project, or a file's versions.
    fn lookup_path(&self, parent: Ino, path: String) -> VfsResult<Ino> {
        let listing = match self.view.entry(&path) {
            Some(e) if e.kind == NodeKind::Dir => return Ok(self.intern(Key::Dir(path), parent, None)),
            // A file the mount shows: its versions (none yet, if the server
            // cannot be asked or has not got it).
            Some(_) => self.listing(&path).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "versions unknown for now");
                None
            }),
            // Not in the tree: a deleted file (or directory) is still
            // reachable by name, if the server has its history.
            None => match self.listing(&path)? {
                None => return Err(VfsError::noent(join(HISTORY_DIR, &path))),
                Some(l) if l.kind == NodeKind::Dir => return Ok(self.intern(Key::Dir(path), parent, None)),
                Some(l) => Some(l),
            },
        };
        let mut table = locked(&self.table);
        let ino = table.intern(Key::Versions(path), parent, None);
        table.set_newest(ino, listing.and_then(|l| l.newest()));
        Ok(ino)
    }

    fn lookup_version(&self, parent: Ino, path: String, name: &str) -> VfsResult<Ino> {
        let missing = || VfsError::noent(format!("{HISTORY_DIR}/{path}/{name}"));
        let number = parse_version(name).ok_or_else(missing)?;
        let listing = self.listing(&path)?.ok_or_else(missing)?;
        let file = listing
            .versions
            .iter()
            .find(|v| v.version == number)
            .cloned()
            .ok_or_else(missing)?;
        let key = Key::Version {
            path,
            node: file.node,
            version: number,
        };
        Ok(self.intern(key, parent, Some(file)))
    }

    pub fn getattr(&self, ino: Ino) -> VfsResult<Attr> {
        let entry = self.entry(ino)?;
        Ok(match entry.key {
            Key::Meta => self.meta_attr(),
            Key::Root => dir_attr(ino, self.created, 2 + self.view.children("").len()),
            Key::Dir(path) => {
                let time = self.view.entry(&path).map_or(self.created, |e| e.mtime);
                dir_attr(ino, time, 2 + self.view.children(&path).len())
            }
            Key::Versions(path) => {
                let time = entry
                    .newest
                    .or_else(|| self.view.entry(&path).map(|e| e.mtime))
                    .unwrap_or(self.created);
                dir_attr(ino, time, 2)
            }
            Key::Version { .. } => {
                let file = entry
                    .file
                    .ok_or_else(|| VfsError::noent(format!("history inode {ino}")))?;
                Attr {
                    ino,
                    kind: NodeKind::File,
                    size: file.size,
                    // Readable by all; the executable bits the version had.
                    mode: 0o444 | (file.mode & 0o111),
                    atime: file.committed,
                    mtime: file.committed,
                    ctime: file.committed,
                    nlink: 1,
                }
            }
        })
    }

    /// The directory holding `ino` (`.contextfs`'s is the mount's root).
    pub fn parent_of(&self, ino: Ino) -> Ino {
        locked(&self.table).get(ino).map_or(ROOT_INO, |e| e.parent)
    }

    /// A directory's entries (without `.` and `..`), each with its inode.
    pub fn readdir(&self, ino: Ino) -> VfsResult<Vec<DirEntry>> {
        let dir = |ino, name: &str| DirEntry {
            ino,
            name: name.to_string(),
            kind: NodeKind::Dir,
        };
        match self.entry(ino)?.key {
            Key::Meta => Ok(vec![dir(HISTORY_ROOT_INO, HISTORY_DIR)]),
            Key::Root => Ok(self.children(ino, "")),
            Key::Dir(path) => Ok(self.children(ino, &path)),
            Key::Versions(path) => {
                let Some(listing) = self.listing(&path)? else {
                    return Ok(Vec::new());
                };
                let mut table = locked(&self.table);
                table.set_newest(ino, listing.newest());
                Ok(listing
                    .versions
                    .iter()
                    .map(|v| {
                        let key = Key::Version {
                            path: path.clone(),
                            node: v.node,
                            version: v.version,
                        };
                        DirEntry {
                            ino: table.intern(key, ino, Some(v.clone())),
                            name: v.version.to_string(),
                            kind: NodeKind::File,
                        }
                    })
                    .collect())
            }
            Key::Version { path, .. } => Err(VfsError::notdir(path)),
        }
    }

    /// The project's entries in `path`, each a directory here: a folder of
    /// the project, or a file's versions.
    fn children(&self, parent: Ino, path: &str) -> Vec<DirEntry> {
        let children = self.view.children(path);
        let mut table = locked(&self.table);
        children
            .into_iter()
            .map(|(name, kind)| {
                let child = join(path, &name);
                let key = match kind {
                    NodeKind::Dir => Key::Dir(child),
                    NodeKind::File | NodeKind::Symlink => Key::Versions(child),
                };
                DirEntry {
                    ino: table.intern(key, parent, None),
                    name,
                    kind: NodeKind::Dir,
                }
            })
            .collect()
    }

    /// Opens a version file for reading (`EROFS` for writing): its blob from
    /// the shared cache, downloaded into it first if missing.
    pub fn open(&self, ino: Ino, write: bool) -> VfsResult<u64> {
        let entry = self.entry(ino)?;
        if write {
            return Err(VfsError::rofs(join(META_DIR, HISTORY_DIR)));
        }
        let Some(file) = entry.file else {
            return Err(VfsError::isdir(format!("history inode {ino}")));
        };
        let blob = self.view.open_blob(&file.hash)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        locked(&self.handles).insert(fh, blob);
        Ok(fh)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        let file = locked(&self.handles).get(&fh).cloned().ok_or_else(VfsError::badf)?;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VfsError::io("read a cached version", e)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    pub fn release(&self, fh: u64) {
        locked(&self.handles).remove(&fh);
    }

    /// The kernel got `ino` in a reply and holds it until it forgets it.
    pub fn kernel_ref(&self, ino: Ino) {
        locked(&self.table).kernel_ref(ino);
    }

    pub fn kernel_forget(&self, ino: Ino, n: u64) {
        locked(&self.table).forget(ino, n);
    }
}
