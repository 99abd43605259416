//! The filesystem core of `contextfs mount`: inodes, open handles, staged
//! writes, commit-on-close into the durable journal, and the bookkeeping that
//! lets the sync worker push changes and apply remote ones.
//!
//! Nothing here knows about fuser: the FUSE adapter (`crate::fuse`) converts
//! kernel requests into these calls and errors into their `errno`, so the
//! whole behaviour is unit- and property-testable without a kernel.
//!
//! Content of a file is either a server blob (`Content::Blob`, read through
//! the shared cache) or a local staging file (`Content::Local`) while it has
//! changes the server has not acknowledged. Every change that must survive a
//! crash is written to the [`journal::Journal`] before the call returns.

pub mod drain;
mod error;
pub mod journal;
pub mod kernel_io;
pub mod ordering;
pub mod remote;
pub mod replay;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::api::{NodeKind, VersionStatus};
use crate::cache::{BlobCache, CacheError, CacheFill};
use crate::model::{BlobHash, WsPath, MAX_NAME_BYTES, MAX_PATH_BYTES};
pub use error::{errno_for_io, VfsError};
use journal::{Journal, ParentRef, Record};
use kernel_io::{HandleIo, KernelIoTable};

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

pub type VfsResult<T> = Result<T, VfsError>;

/// Fetches blobs the cache does not hold (the server, in production).
pub trait BlobSource: Send + Sync {
    fn fetch(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError>;
}

/// Kernel cache entries to drop, sent to the FUSE adapter's notifier thread
/// (never invalidated from inside a callback, which can deadlock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Inode(Ino),
    Entry { parent: Ino, name: String },
}

/// What the server knows about an inode's node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub node: i64,
    pub version: i64,
    pub hash: BlobHash,
    pub path: String,
    pub mode: u32,
}

impl ServerState {
    /// What the server said about a node in answer to a write.
    pub fn from_version(v: &crate::api::VersionInfo) -> Self {
        Self {
            node: v.node,
            version: v.version,
            hash: v.hash.clone(),
            path: v.path.clone(),
            mode: v.mode,
        }
    }
}

#[derive(Debug, Clone)]
enum Content {
    Dir,
    /// Clean content: the bytes of a blob.
    Blob {
        hash: BlobHash,
    },
    /// Local changes live in this staging file.
    Local {
        file: Arc<File>,
        path: PathBuf,
    },
    Symlink {
        target: String,
    },
}

#[derive(Debug)]
struct Inode {
    uid: u64,
    parent: Ino,
    name: String,
    kind: NodeKind,
    mode: u32,
    size: u64,
    mtime: SystemTime,
    ctime: SystemTime,
    content: Content,
    children: BTreeMap<String, Ino>,
    server: Option<ServerState>,
    /// Bumped by every local data change; compared with the journaled one.
    data_rev: u64,
    journaled_data_rev: u64,
    open_handles: u32,
    open_writers: u32,
    /// Removed from the tree but still open somewhere.
    unlinked: bool,
    read_only: bool,
    /// Outcome of the last commit the server acknowledged.
    last_status: Option<VersionStatus>,
    /// The blob the kernel's page cache last saw for this inode.
    kernel_hash: Option<BlobHash>,
    /// Held across a change of the staging file's bytes or length (pwrite,
    /// truncate), which run outside the state lock: writes to different
    /// files proceed in parallel, and one file's size stays in step with
    /// its staging file.
    data_lock: Arc<Mutex<()>>,
}

impl Inode {
    fn new(uid: u64, parent: Ino, name: String, kind: NodeKind, mode: u32, content: Content) -> Self {
        let now = SystemTime::now();
        Self {
            uid,
            parent,
            name,
            kind,
            mode,
            size: 0,
            mtime: now,
            ctime: now,
            content,
            children: BTreeMap::new(),
            server: None,
            data_rev: 0,
            journaled_data_rev: 0,
            open_handles: 0,
            open_writers: 0,
            unlinked: false,
            read_only: false,
            last_status: None,
            kernel_hash: None,
            data_lock: Arc::new(Mutex::new(())),
        }
    }
}

/// File attributes as the adapter reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: NodeKind,
    pub size: u64,
    /// Permission bits only (no file-type bits).
    pub mode: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub nlink: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub name: String,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    pub read: bool,
    pub write: bool,
    pub truncate: bool,
    pub append: bool,
}

impl OpenMode {
    /// From open(2) flags.
    pub fn from_flags(flags: i32) -> Self {
        let acc = flags & libc::O_ACCMODE;
        Self {
            read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            truncate: flags & libc::O_TRUNC != 0,
            append: flags & libc::O_APPEND != 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub mtime: Option<SystemTime>,
}

/// How the kernel does I/O on an open handle (see [`kernel_io`]).
#[derive(Debug, Clone)]
pub enum KernelIo {
    /// Through the page cache; `keep_cache` when it still holds this blob.
    Cached { keep_cache: bool },
    /// The kernel reads `file` itself; handles of one `epoch` share one
    /// registered backing file.
    Passthrough { file: Arc<File>, epoch: u64 },
}

/// Which files the kernel may read straight from the cache (FUSE passthrough).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PassthroughPolicy {
    /// Never: every read goes through the mount process.
    Off,
    /// Files nobody can write through this mount: skills, `--read-only`
    /// mounts, read-only tokens. Writers never wait.
    ReadOnly,
    /// Every clean file (the mount's default): reads at local-disk speed, but
    /// opening a file for writing while a process reads it this way waits up
    /// to 2 s for that reader, then fails with ETXTBSY.
    #[default]
    All,
}

/// How often a write retries when its staging file is replaced under it
/// (each retry needs another acknowledgement or remote change to race with).
const WRITE_ATTEMPTS: usize = 8;

/// How long fsync waits for the server to acknowledge the change.
const FSYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an open for writing waits for passthrough readers of the same
/// file to close before it fails with ETXTBSY.
const PASSTHROUGH_WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug)]
struct Handle {
    ino: Ino,
    write: bool,
    append: bool,
    /// This handle wrote since its last flush.
    dirty: bool,
    /// A read-only handle on clean content keeps the blob it opened.
    pinned: Option<Arc<File>>,
    io: HandleIo,
}

pub struct VfsConfig {
    /// Per-mount state: journal and staging files.
    pub state_dir: PathBuf,
    pub read_only: bool,
    /// Mount-level agent id recorded with commits.
    pub agent_id: Option<String>,
}

struct State {
    inodes: HashMap<Ino, Inode>,
    by_node: HashMap<i64, Ino>,
    by_uid: HashMap<u64, Ino>,
    handles: HashMap<u64, Handle>,
    next_ino: Ino,
    next_fh: u64,
    /// Journal records of changes the server has not acknowledged, by uid.
    /// Records outlive their inode (a deletion waiting to reach the server).
    records: HashMap<u64, Record>,
    /// Outcome of every commit acknowledged since the mount started, by path.
    outcomes: BTreeMap<String, VersionStatus>,
    /// The project's change-feed cursor this tree reflects.
    cursor: i64,
    /// The kernel I/O mode of every open handle, per inode.
    kernel_io: KernelIoTable,
    /// The directory that shows the published skills, if this mount has one.
    skills_root: Option<Ino>,
    /// What this mount did that the server's news may not show yet.
    local_news: ordering::LocalNews,
}

pub struct Vfs {
    /// The tree, handles and journaled records.
    ///
    /// Lock order (never take an earlier one while holding a later one):
    /// 1. an inode's `data_lock` (staging-file bytes and length);
    /// 2. this state lock;
    /// 3. the journal's log lock (`Journal::write` under the state lock);
    /// 4. the cache's index lock (`BlobCache` calls under the state lock).
    ///
    /// Disk data I/O (pwrite, hashing, copies, fsync) runs outside the state
    /// lock, re-checking what it raced with (`data_rev`, the staging file)
    /// once it has the lock again.
    state: Mutex<State>,
    journal: Journal,
    staging_dir: PathBuf,
    cache: Arc<BlobCache>,
    /// Recently used blob descriptors, so hot files skip open(2).
    open_files: moka::sync::Cache<BlobHash, Arc<File>>,
    source: Arc<dyn BlobSource>,
    invalidations: Mutex<Option<mpsc::Sender<Invalidation>>>,
    /// Wakes the sync worker when something new is journaled.
    pub(crate) wake: tokio::sync::Notify,
    /// Records fsync wants sent now, without the debounce (by uid).
    pub(crate) urgent: Mutex<std::collections::HashSet<u64>>,
    /// Signalled by the worker after every round, for fsync's waiters.
    round_done: Condvar,
    /// A sync worker is attached (a real mount) and last reached the server.
    server_reachable: AtomicBool,
    /// The kernel accepted FUSE passthrough and backing files can be registered.
    passthrough: AtomicBool,
    /// Which files may use passthrough (`--passthrough`); a Vfs starts with
    /// `ReadOnly` until the mount says otherwise.
    passthrough_policy: Mutex<PassthroughPolicy>,
    pub config: VfsConfig,
}

fn check_name(name: &str) -> VfsResult<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(VfsError::new(libc::EINVAL, format!("invalid file name {name:?}")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(VfsError::new(
            libc::ENAMETOOLONG,
            format!("name is {} bytes; the limit is {MAX_NAME_BYTES}", name.len()),
        ));
    }
    Ok(())
}

fn now_millis() -> i64 {
    crate::server::store::now_millis()
}

impl Vfs {
    pub fn new(config: VfsConfig, cache: Arc<BlobCache>, source: Arc<dyn BlobSource>) -> VfsResult<Self> {
        let journal = Journal::open(&config.state_dir)?;
        let staging_dir = config.state_dir.join("staging");
        std::fs::create_dir_all(&staging_dir).map_err(|e| VfsError::io("create staging directory", e))?;
        // Staging files are rebuilt from the journal on replay; stale ones are junk.
        if let Ok(entries) = std::fs::read_dir(&staging_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut root = Inode::new(
            rand::random(),
            ROOT_INO,
            String::new(),
            NodeKind::Dir,
            0o755,
            Content::Dir,
        );
        root.read_only = config.read_only;
        let state = State {
            inodes: HashMap::from([(ROOT_INO, root)]),
            by_node: HashMap::new(),
            by_uid: HashMap::new(),
            handles: HashMap::new(),
            next_ino: ROOT_INO + 1,
            next_fh: 1,
            records: HashMap::new(),
            outcomes: BTreeMap::new(),
            cursor: 0,
            kernel_io: KernelIoTable::default(),
            skills_root: None,
            local_news: ordering::LocalNews::default(),
        };
        Ok(Self {
            state: Mutex::new(state),
            journal,
            staging_dir,
            cache,
            open_files: moka::sync::Cache::builder()
                .max_capacity(512)
                .time_to_idle(std::time::Duration::from_secs(30))
                .build(),
            source,
            invalidations: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
            urgent: Mutex::new(std::collections::HashSet::new()),
            round_done: Condvar::new(),
            server_reachable: AtomicBool::new(false),
            passthrough: AtomicBool::new(false),
            passthrough_policy: Mutex::new(PassthroughPolicy::ReadOnly),
            config,
        })
    }

    /// Where kernel-cache invalidations go (the FUSE notifier thread).
    pub fn set_invalidation_sink(&self, sink: mpsc::Sender<Invalidation>) {
        if let Ok(mut guard) = self.invalidations.lock() {
            *guard = Some(sink);
        }
    }

    fn invalidate(&self, items: Vec<Invalidation>) {
        if items.is_empty() {
            return;
        }
        if let Ok(guard) = self.invalidations.lock() {
            if let Some(sink) = guard.as_ref() {
                for item in items {
                    let _ = sink.send(item);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every journal append durable (acknowledgements are appended
    /// without waiting; the sync worker calls this after each round).
    pub fn make_journal_durable(&self) -> VfsResult<()> {
        self.journal.make_durable()
    }

    pub fn journal_dir(&self) -> &Path {
        self.journal.dir()
    }

    pub fn cursor(&self) -> i64 {
        self.lock().cursor
    }

    // ----- attributes and lookups -----

    fn attr_of(ino: Ino, inode: &Inode) -> Attr {
        Attr {
            ino,
            kind: inode.kind,
            size: inode.size,
            mode: inode.mode & 0o7777,
            mtime: inode.mtime,
            ctime: inode.ctime,
            nlink: if inode.kind == NodeKind::Dir {
                2
            } else if inode.unlinked {
                0
            } else {
                1
            },
        }
    }

    fn get(st: &State, ino: Ino) -> VfsResult<&Inode> {
        st.inodes
            .get(&ino)
            .ok_or_else(|| VfsError::noent(format!("inode {ino}")))
    }

    fn get_mut(st: &mut State, ino: Ino) -> VfsResult<&mut Inode> {
        st.inodes
            .get_mut(&ino)
            .ok_or_else(|| VfsError::noent(format!("inode {ino}")))
    }

    fn child(st: &State, parent: Ino, name: &str) -> VfsResult<Option<Ino>> {
        let dir = Self::get(st, parent)?;
        if dir.kind != NodeKind::Dir {
            return Err(VfsError::notdir(Self::path_of(st, parent)));
        }
        Ok(dir.children.get(name).copied())
    }

    /// The inode's path inside the project ("" for the root).
    fn path_of(st: &State, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut current = ino;
        let mut guard = 0;
        while current != ROOT_INO && guard < 4096 {
            let Some(inode) = st.inodes.get(&current) else { break };
            parts.push(inode.name.clone());
            current = inode.parent;
            guard += 1;
        }
        parts.reverse();
        parts.join("/")
    }

    /// The parent directory's inode (the root is its own parent).
    pub fn parent_of(&self, ino: Ino) -> Ino {
        self.lock().inodes.get(&ino).map(|i| i.parent).unwrap_or(ROOT_INO)
    }

    pub fn path(&self, ino: Ino) -> String {
        Self::path_of(&self.lock(), ino)
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> VfsResult<Attr> {
        let st = self.lock();
        let ino = Self::child(&st, parent, name)?.ok_or_else(|| VfsError::noent(name))?;
        Ok(Self::attr_of(ino, Self::get(&st, ino)?))
    }

    pub fn getattr(&self, ino: Ino) -> VfsResult<Attr> {
        let st = self.lock();
        Ok(Self::attr_of(ino, Self::get(&st, ino)?))
    }

    pub fn readdir(&self, ino: Ino) -> VfsResult<Vec<DirEntry>> {
        let st = self.lock();
        let dir = Self::get(&st, ino)?;
        if dir.kind != NodeKind::Dir {
            return Err(VfsError::notdir(Self::path_of(&st, ino)));
        }
        Ok(dir
            .children
            .iter()
            .filter_map(|(name, child)| {
                st.inodes.get(child).map(|c| DirEntry {
                    ino: *child,
                    name: name.clone(),
                    kind: c.kind,
                })
            })
            .collect())
    }

    pub fn readlink(&self, ino: Ino) -> VfsResult<String> {
        let st = self.lock();
        match &Self::get(&st, ino)?.content {
            Content::Symlink { target } => Ok(target.clone()),
            _ => Err(VfsError::new(libc::EINVAL, "not a symlink")),
        }
    }

    fn check_writable(st: &State, ino: Ino) -> VfsResult<()> {
        let inode = Self::get(st, ino)?;
        if inode.read_only {
            return Err(VfsError::rofs(Self::path_of(st, ino)));
        }
        Ok(())
    }

    fn check_new_path(st: &State, parent: Ino, name: &str) -> VfsResult<()> {
        check_name(name)?;
        let parent_path = Self::path_of(st, parent);
        if parent_path.len() + 1 + name.len() > MAX_PATH_BYTES {
            return Err(VfsError::new(libc::ENAMETOOLONG, "path is longer than 4096 bytes"));
        }
        Ok(())
    }

    fn alloc_ino(st: &mut State) -> Ino {
        let ino = st.next_ino;
        st.next_ino += 1;
        ino
    }

    fn insert_inode(st: &mut State, ino: Ino, inode: Inode) {
        st.by_uid.insert(inode.uid, ino);
        if let Some(server) = &inode.server {
            st.by_node.insert(server.node, ino);
        }
        let (parent, name) = (inode.parent, inode.name.clone());
        st.inodes.insert(ino, inode);
        if let Some(p) = st.inodes.get_mut(&parent) {
            p.children.insert(name, ino);
            p.mtime = SystemTime::now();
            p.ctime = p.mtime;
        }
    }

    /// Takes `ino` out of its directory; keeps it while handles are open.
    fn detach(st: &mut State, ino: Ino) {
        let (parent, name) = match st.inodes.get(&ino) {
            Some(i) => (i.parent, i.name.clone()),
            None => return,
        };
        if let Some(p) = st.inodes.get_mut(&parent) {
            if p.children.get(&name) == Some(&ino) {
                p.children.remove(&name);
            }
            p.mtime = SystemTime::now();
            p.ctime = p.mtime;
        }
        let keep = st.inodes.get(&ino).is_some_and(|i| i.open_handles > 0);
        if keep {
            if let Some(i) = st.inodes.get_mut(&ino) {
                i.unlinked = true;
            }
        } else {
            Self::forget_inode(st, ino);
        }
    }

    /// Moves the entry at `ino` to a fresh inode number (same uid, node and
    /// content) and leaves the old inode, unlinked, to the handles holding
    /// it. Used when passthrough readers pin the old inode to its blob.
    fn replace_inode(st: &mut State, ino: Ino, out: &mut Vec<Invalidation>) -> Ino {
        let Some(old) = st.inodes.get_mut(&ino) else {
            return ino;
        };
        old.unlinked = true;
        let mut fresh = Inode::new(
            old.uid,
            old.parent,
            old.name.clone(),
            old.kind,
            old.mode,
            old.content.clone(),
        );
        fresh.size = old.size;
        fresh.mtime = old.mtime;
        fresh.ctime = old.ctime;
        fresh.server = old.server.clone();
        fresh.data_rev = old.data_rev;
        fresh.journaled_data_rev = old.journaled_data_rev;
        fresh.read_only = old.read_only;
        fresh.last_status = old.last_status;
        let (parent, name) = (fresh.parent, fresh.name.clone());
        let new_ino = Self::alloc_ino(st);
        Self::insert_inode(st, new_ino, fresh);
        out.push(Invalidation::Entry { parent, name });
        new_ino
    }

    fn forget_inode(st: &mut State, ino: Ino) {
        if let Some(inode) = st.inodes.remove(&ino) {
            if st.by_uid.get(&inode.uid) == Some(&ino) {
                st.by_uid.remove(&inode.uid);
            }
            if let Some(server) = &inode.server {
                if st.by_node.get(&server.node) == Some(&ino) {
                    st.by_node.remove(&server.node);
                }
            }
            if let Content::Local { path, .. } = &inode.content {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn parent_ref(st: &State, parent: Ino) -> ParentRef {
        if parent == ROOT_INO {
            return ParentRef::Root;
        }
        match st.inodes.get(&parent) {
            Some(p) => match &p.server {
                Some(s) => ParentRef::Node(s.node),
                None => ParentRef::Local(p.uid),
            },
            None => ParentRef::Root,
        }
    }

    /// The journal record describing `ino`'s pending state, revision bumped.
    fn next_record(st: &State, ino: Ino) -> VfsResult<Record> {
        let inode = Self::get(st, ino)?;
        let prev = st.records.get(&inode.uid);
        Ok(Record {
            uid: inode.uid,
            rev: prev.map(|r| r.rev + 1).unwrap_or(1),
            node: inode.server.as_ref().map(|s| s.node),
            base_version: inode.server.as_ref().map(|s| s.version),
            server_path: inode.server.as_ref().map(|s| s.path.clone()),
            parent: Self::parent_ref(st, inode.parent),
            name: inode.name.clone(),
            deleted: false,
            kind: inode.kind,
            mode: inode.mode,
            content: prev.and_then(|r| r.content.clone()),
            size: inode.size,
            mode_dirty: prev.is_some_and(|r| r.mode_dirty),
            changed_at: now_millis(),
            inline: prev.and_then(|r| r.inline.clone()),
            last_error: None,
        })
    }

    /// Journals a record and makes it the inode's pending state.
    fn commit_record(&self, st: &mut State, ino: Ino, mut record: Record) -> VfsResult<()> {
        record.changed_at = now_millis();
        self.journal.write(&record)?;
        if let Some(inode) = st.inodes.get(&ino) {
            st.records.insert(inode.uid, record);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Re-journals an inode whose name, parent or mode changed.
    fn journal_namespace(&self, st: &mut State, ino: Ino) -> VfsResult<()> {
        let record = Self::next_record(st, ino)?;
        self.commit_record(st, ino, record)
    }

    // ----- creating things -----

    fn new_local_file(&self) -> VfsResult<(Arc<File>, PathBuf)> {
        let path = self.staging_dir.join(format!("{:016x}", rand::random::<u64>()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| VfsError::io("create staging file", e))?;
        Ok((Arc::new(file), path))
    }

    pub fn mkdir(&self, parent: Ino, name: &str, mode: u32) -> VfsResult<Attr> {
        let out = self.mkdir_journaled(parent, name, mode)?;
        // Durable before the call returns; synced outside the core's lock.
        self.journal.make_durable()?;
        Ok(out)
    }

    fn mkdir_journaled(&self, parent: Ino, name: &str, mode: u32) -> VfsResult<Attr> {
        let mut st = self.lock();
        Self::check_writable(&st, parent)?;
        Self::check_new_path(&st, parent, name)?;
        if Self::child(&st, parent, name)?.is_some() {
            return Err(VfsError::exists(name));
        }
        let ino = Self::alloc_ino(&mut st);
        let inode = Inode::new(
            rand::random(),
            parent,
            name.to_string(),
            NodeKind::Dir,
            mode & 0o7777,
            Content::Dir,
        );
        Self::insert_inode(&mut st, ino, inode);
        if let Err(e) = self.journal_namespace(&mut st, ino) {
            Self::detach(&mut st, ino);
            return Err(e);
        }
        Ok(Self::attr_of(ino, Self::get(&st, ino)?))
    }

    pub fn symlink(&self, parent: Ino, name: &str, target: &str) -> VfsResult<Attr> {
        let out = self.symlink_journaled(parent, name, target)?;
        // Durable before the call returns; synced outside the core's lock.
        self.journal.make_durable()?;
        Ok(out)
    }

    fn symlink_journaled(&self, parent: Ino, name: &str, target: &str) -> VfsResult<Attr> {
        let mut st = self.lock();
        Self::check_writable(&st, parent)?;
        Self::check_new_path(&st, parent, name)?;
        if target.is_empty() || target.len() > 4096 || target.contains('\0') {
            return Err(VfsError::new(
                libc::EINVAL,
                "symlink target must be 1-4096 bytes without NUL",
            ));
        }
        if Self::child(&st, parent, name)?.is_some() {
            return Err(VfsError::exists(name));
        }
        let ino = Self::alloc_ino(&mut st);
        let mut inode = Inode::new(
            rand::random(),
            parent,
            name.to_string(),
            NodeKind::Symlink,
            0o777,
            Content::Symlink {
                target: target.to_string(),
            },
        );
        inode.size = target.len() as u64;
        Self::insert_inode(&mut st, ino, inode);
        let mut record = Self::next_record(&st, ino)?;
        record.content = Some(BlobHash::of(target.as_bytes()));
        record.inline = Some(Journal::encode_inline(target.as_bytes()));
        record.size = target.len() as u64;
        if let Err(e) = self.commit_record(&mut st, ino, record) {
            Self::detach(&mut st, ino);
            return Err(e);
        }
        Ok(Self::attr_of(ino, Self::get(&st, ino)?))
    }

    /// Creates (or, without `exclusive`, opens) a regular file.
    pub fn create(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        open: OpenMode,
        exclusive: bool,
    ) -> VfsResult<(Attr, u64)> {
        let existing = {
            let st = self.lock();
            Self::check_writable(&st, parent)?;
            Self::check_new_path(&st, parent, name)?;
            Self::child(&st, parent, name)?
        };
        if let Some(ino) = existing {
            if exclusive {
                return Err(VfsError::exists(name));
            }
            let fh = self.open(ino, OpenMode { write: true, ..open })?;
            return Ok((self.getattr(ino)?, fh));
        }
        let (file, path) = self.new_local_file()?;
        let mut st = self.lock();
        if Self::child(&st, parent, name)?.is_some() {
            // Lost a race with another creator: behave like O_EXCL said.
            let _ = std::fs::remove_file(&path);
            return Err(VfsError::exists(name));
        }
        let ino = Self::alloc_ino(&mut st);
        let mut inode = Inode::new(
            rand::random(),
            parent,
            name.to_string(),
            NodeKind::File,
            mode & 0o7777,
            Content::Local { file, path },
        );
        inode.data_rev = 1;
        inode.open_handles = 1;
        inode.open_writers = 1;
        Self::insert_inode(&mut st, ino, inode);
        let fh = st.next_fh;
        st.next_fh += 1;
        // A brand-new inode: no passthrough readers can hold it.
        let io = st.kernel_io.open(ino, None).unwrap_or(HandleIo::Cached);
        // A new file is committed at close even if nothing is written to it.
        st.handles.insert(
            fh,
            Handle {
                ino,
                write: true,
                append: open.append,
                dirty: true,
                pinned: None,
                io,
            },
        );
        Ok((Self::attr_of(ino, Self::get(&st, ino)?), fh))
    }

    // ----- open, read, write -----

    /// Opens the blob of a clean file through the cache (fetching it if
    /// needed). Open descriptors are shared for a while: blobs never change,
    /// and every read is positional, so one fd serves all handles.
    /// Whether opening `ino` would have to download its content first (a
    /// clean file whose blob is in no local cache): the FUSE adapter then
    /// opens it off its fixed worker threads, so one slow download does not
    /// hold a thread every other request may need.
    pub fn open_would_fetch(&self, ino: Ino) -> bool {
        let hash = match Self::get(&self.lock(), ino).map(|i| &i.content) {
            Ok(Content::Blob { hash }) => hash.clone(),
            _ => return false,
        };
        !self.open_files.contains_key(&hash) && !self.cache.contains(&hash)
    }

    fn open_blob(&self, hash: &BlobHash) -> VfsResult<Arc<File>> {
        if let Some(file) = self.open_files.get(hash) {
            return Ok(file);
        }
        let file = match self.cache.open_blob(hash)? {
            Some(file) => file,
            None => self.cache.get_or_fill(hash, |fill| self.source.fetch(hash, fill))?,
        };
        let file = Arc::new(file);
        self.open_files.insert(hash.clone(), file.clone());
        Ok(file)
    }

    /// Turns clean content into a local staging file (copy on first write).
    fn make_local(&self, ino: Ino, truncate: bool) -> VfsResult<()> {
        let hash = {
            let st = self.lock();
            match &Self::get(&st, ino)?.content {
                Content::Blob { hash } => hash.clone(),
                Content::Local { .. } => return Ok(()),
                Content::Dir => return Err(VfsError::isdir(Self::path_of(&st, ino))),
                Content::Symlink { .. } => return Err(VfsError::new(libc::ELOOP, "cannot open a symlink for writing")),
            }
        };
        let (file, path) = self.new_local_file()?;
        let mut size = 0;
        if !truncate {
            let source = self.open_blob(&hash)?;
            let mut reader = std::io::BufReader::with_capacity(1 << 20, journal::ReadAt::new(&source));
            let mut writer = std::io::BufWriter::with_capacity(1 << 20, &*file);
            size = std::io::copy(&mut reader, &mut writer).map_err(|e| VfsError::io("copy into staging", e))?;
            std::io::Write::flush(&mut writer).map_err(|e| VfsError::io("copy into staging", e))?;
        }
        let mut st = self.lock();
        let inode = Self::get_mut(&mut st, ino)?;
        match &inode.content {
            // Someone else made it local meanwhile: use theirs.
            Content::Local { .. } => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {
                inode.content = Content::Local { file, path };
                inode.size = size;
            }
        }
        Ok(())
    }

    pub fn open(&self, ino: Ino, mode: OpenMode) -> VfsResult<u64> {
        {
            let st = self.lock();
            let inode = Self::get(&st, ino)?;
            if inode.kind == NodeKind::Dir && mode.write {
                return Err(VfsError::isdir(Self::path_of(&st, ino)));
            }
            if mode.write || mode.truncate {
                Self::check_writable(&st, ino)?;
            }
        }
        if mode.write || mode.truncate {
            // Before staging a copy: the kernel lets nobody else in while
            // passthrough readers hold the file.
            self.await_passthrough_readers(ino)?;
        }
        let mut pinned = None;
        // make_local(truncate) drops a clean file's bytes itself: judge the change by the size before.
        let size_before = Self::get(&self.lock(), ino)?.size;
        if mode.write || mode.truncate {
            self.make_local(ino, mode.truncate)?;
        } else {
            let hash = {
                let st = self.lock();
                match &Self::get(&st, ino)?.content {
                    Content::Blob { hash } => Some(hash.clone()),
                    _ => None,
                }
            };
            if let Some(hash) = hash {
                pinned = Some(self.open_blob(&hash)?);
            }
        }
        // O_TRUNC changes the staging file's length: in step with writers.
        let data_lock = if mode.truncate {
            Some(self.data_lock_of(ino)?)
        } else {
            None
        };
        let _data = data_lock.as_ref().map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
        let mut st = self.lock();
        // Only a read-only handle pinned to a clean blob can be read by the
        // kernel without us; `pinned` is set exactly for those.
        let inode = Self::get(&st, ino)?;
        let passthrough_read = match (&pinned, &inode.content) {
            (Some(_), Content::Blob { hash }) if self.passthrough_allowed(inode) => Some(hash.clone()),
            _ => None,
        };
        let io = st
            .kernel_io
            .open(ino, passthrough_read.as_ref())
            .map_err(|_| Self::passthrough_busy(&st, ino))?;
        let mut dirty = false;
        if mode.truncate {
            let inode = Self::get_mut(&mut st, ino)?;
            if let Content::Local { file, .. } = &inode.content {
                if inode.size != 0 || size_before != 0 {
                    file.set_len(0).map_err(|e| VfsError::io("truncate", e))?;
                    inode.size = 0;
                    inode.data_rev += 1;
                    inode.mtime = SystemTime::now();
                    dirty = true;
                }
            }
        }
        let inode = Self::get_mut(&mut st, ino)?;
        inode.open_handles += 1;
        if mode.write {
            inode.open_writers += 1;
        }
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(
            fh,
            Handle {
                ino,
                write: mode.write,
                append: mode.append,
                dirty,
                pinned,
                io,
            },
        );
        Ok(fh)
    }

    /// Lets read-only opens of clean files use FUSE passthrough; the adapter
    /// calls it once the kernel has agreed to it.
    pub fn enable_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Which files may use passthrough once the kernel offers it.
    pub fn set_passthrough_policy(&self, policy: PassthroughPolicy) {
        *self.passthrough_policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    fn passthrough_policy(&self) -> PassthroughPolicy {
        *self.passthrough_policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For `contextfs status`: which files the kernel reads by itself.
    pub fn passthrough_description(&self) -> String {
        if !self.passthrough_wanted() {
            "off (--passthrough off)".into()
        } else if !self.passthrough_enabled() {
            "off (the kernel did not offer it: it needs Linux >= 6.9 with FUSE passthrough, and root)".into()
        } else if self.passthrough_policy() == PassthroughPolicy::All {
            "every clean file (writers wait for passthrough readers; --passthrough read-only avoids that)".into()
        } else if self.config.read_only {
            "every file (read-only mount)".into()
        } else {
            "read-only files (skills; --passthrough read-only); writable files go through the mount".into()
        }
    }

    /// Whether passthrough readers hold `ino`: opening it for writing (or
    /// truncating it) would wait for them.
    pub fn passthrough_readers(&self, ino: Ino) -> bool {
        self.lock().kernel_io.busy(ino)
    }

    /// Whether the adapter should ask the kernel for passthrough at all.
    pub fn passthrough_wanted(&self) -> bool {
        self.passthrough_policy() != PassthroughPolicy::Off
    }

    fn passthrough_allowed(&self, inode: &Inode) -> bool {
        self.passthrough.load(Ordering::Relaxed)
            && (inode.read_only || self.config.read_only || self.passthrough_policy() == PassthroughPolicy::All)
    }

    fn passthrough_busy(st: &State, ino: Ino) -> VfsError {
        VfsError::new(
            libc::ETXTBSY,
            format!(
                "{} is open for reading through kernel passthrough; it can be changed once those readers close (mount with --passthrough read-only to never wait)",
                Self::path_of(st, ino)
            ),
        )
    }

    /// Waits (bounded) until no passthrough reader holds `ino`: the kernel
    /// refuses every other open of it meanwhile.
    fn await_passthrough_readers(&self, ino: Ino) -> VfsResult<()> {
        let started = std::time::Instant::now();
        loop {
            {
                let st = self.lock();
                if !st.kernel_io.busy(ino) {
                    return Ok(());
                }
                if started.elapsed() > PASSTHROUGH_WRITER_WAIT {
                    return Err(Self::passthrough_busy(&st, ino));
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// How the kernel should do I/O on a handle just opened or created.
    pub fn kernel_io(&self, fh: u64) -> VfsResult<KernelIo> {
        let mut st = self.lock();
        let handle = st.handles.get(&fh).ok_or_else(VfsError::badf)?;
        let (ino, io, pinned) = (handle.ino, handle.io, handle.pinned.clone());
        let inode = Self::get_mut(&mut st, ino)?;
        Ok(match (io, pinned) {
            (HandleIo::Passthrough { epoch }, Some(file)) => KernelIo::Passthrough { file, epoch },
            _ => KernelIo::Cached {
                keep_cache: Self::keep_kernel_cache(inode),
            },
        })
    }

    /// The kernel would not take the handle's backing file: stop offering
    /// passthrough and give the handle the mode a plain open would get.
    /// Returns that mode and the passthrough epoch this ended, if any.
    pub fn passthrough_failed(&self, fh: u64) -> VfsResult<(KernelIo, Option<u64>)> {
        self.enable_passthrough(false);
        let ended = {
            let mut st = self.lock();
            let handle = st.handles.get(&fh).ok_or_else(VfsError::badf)?;
            let (ino, io) = (handle.ino, handle.io);
            let ended = st.kernel_io.downgrade(ino, io);
            if let Some(h) = st.handles.get_mut(&fh) {
                h.io = HandleIo::Cached;
            }
            ended
        };
        Ok((self.kernel_io(fh)?, ended))
    }

    /// Whether the kernel may keep its page cache for a cached open: only
    /// when the file is clean and holds the same blob as at the previous open.
    fn keep_kernel_cache(inode: &mut Inode) -> bool {
        match &inode.content {
            Content::Blob { hash } => {
                let same = inode.kernel_hash.as_ref() == Some(hash);
                inode.kernel_hash = Some(hash.clone());
                same
            }
            _ => {
                inode.kernel_hash = None;
                false
            }
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        let (file, ino) = {
            let st = self.lock();
            let handle = st.handles.get(&fh).ok_or_else(VfsError::badf)?;
            match &handle.pinned {
                Some(f) => (Some(f.clone()), handle.ino),
                None => match &Self::get(&st, handle.ino)?.content {
                    Content::Local { file, .. } => (Some(file.clone()), handle.ino),
                    Content::Blob { .. } => (None, handle.ino),
                    Content::Dir => return Err(VfsError::isdir(Self::path_of(&st, handle.ino))),
                    Content::Symlink { target } => {
                        let bytes = target.as_bytes();
                        let start = (offset as usize).min(bytes.len());
                        let end = (start + size as usize).min(bytes.len());
                        return Ok(bytes[start..end].to_vec());
                    }
                },
            }
        };
        let file = match file {
            Some(f) => f,
            None => {
                // A writable handle whose content went clean (acknowledged) meanwhile.
                let hash = {
                    let st = self.lock();
                    match &Self::get(&st, ino)?.content {
                        Content::Blob { hash } => hash.clone(),
                        _ => return Err(VfsError::new(libc::EAGAIN, "content changed; retry")),
                    }
                };
                self.open_blob(&hash)?
            }
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            let n = file
                .read_at(&mut buf[filled..], offset + filled as u64)
                .map_err(|e| VfsError::io("read", e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> VfsResult<u32> {
        let ino = {
            let st = self.lock();
            let handle = st.handles.get(&fh).ok_or_else(VfsError::badf)?;
            if !handle.write {
                return Err(VfsError::badf());
            }
            handle.ino
        };
        for _attempt in 0..WRITE_ATTEMPTS {
            // Content may have gone clean after an acknowledgement: stage it again.
            self.make_local(ino, false)?;
            let (staged, data_lock, append) = {
                let st = self.lock();
                let append = st.handles.get(&fh).is_some_and(|h| h.append);
                let inode = Self::get(&st, ino)?;
                let Content::Local { file, .. } = &inode.content else {
                    continue; // gone clean again between the two locks
                };
                (file.clone(), inode.data_lock.clone(), append)
            };
            // The bytes go to disk outside the state lock; the data lock
            // keeps this file's size, appends and truncates in order.
            let _data = data_lock.lock().unwrap_or_else(|p| p.into_inner());
            let at = if append {
                Self::get(&self.lock(), ino)?.size
            } else {
                offset
            };
            staged
                .write_all_at(data, at)
                .map_err(|e| VfsError::io("write to staging file", e))?;
            let mut st = self.lock();
            let inode = Self::get_mut(&mut st, ino)?;
            if !matches!(&inode.content, Content::Local { file, .. } if Arc::ptr_eq(file, &staged)) {
                // Replaced meanwhile (acknowledged and retired, or a remote
                // change): those bytes went to a file nobody reads; again.
                continue;
            }
            if !data.is_empty() {
                // A zero-length write never extends a file.
                inode.size = inode.size.max(at + data.len() as u64);
            }
            inode.data_rev += 1;
            inode.mtime = SystemTime::now();
            inode.ctime = inode.mtime;
            if let Some(h) = st.handles.get_mut(&fh) {
                h.dirty = true;
            }
            return Ok(data.len() as u32);
        }
        Err(VfsError::new(
            libc::EIO,
            "the staging file kept being replaced during a write",
        ))
    }

    /// The data lock of `ino` (see [`Inode::data_lock`]).
    fn data_lock_of(&self, ino: Ino) -> VfsResult<Arc<Mutex<()>>> {
        Ok(Self::get(&self.lock(), ino)?.data_lock.clone())
    }

    /// close(): commits the handle's changes into the journal. Returns only
    /// after they are durable, so a successful close never loses data.
    pub fn flush(&self, fh: u64) -> VfsResult<()> {
        let ino = {
            let mut st = self.lock();
            let handle = st.handles.get_mut(&fh).ok_or_else(VfsError::badf)?;
            if !handle.dirty {
                return Ok(());
            }
            handle.dirty = false;
            handle.ino
        };
        if let Err(e) = self.journal_content(ino).and_then(|()| self.journal.make_durable()) {
            if let Some(h) = self.lock().handles.get_mut(&fh) {
                h.dirty = true;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Snapshots a local file's content into the journal if it changed.
    fn journal_content(&self, ino: Ino) -> VfsResult<()> {
        let (file, rev) = {
            let st = self.lock();
            let inode = Self::get(&st, ino)?;
            if inode.unlinked || inode.data_rev == inode.journaled_data_rev {
                return Ok(());
            }
            match &inode.content {
                Content::Local { file, .. } => (file.clone(), inode.data_rev),
                _ => return Ok(()),
            }
        };
        // Hashing and copying happen outside the lock; the revision check below
        // keeps a concurrent writer's newer change from being marked journaled.
        let (hash, size, inline) = self.journal.snapshot(&file)?;
        let mut st = self.lock();
        let inode = Self::get(&st, ino)?;
        if inode.unlinked {
            return Ok(());
        }
        let mut record = Self::next_record(&st, ino)?;
        record.content = Some(hash);
        record.size = size;
        record.inline = inline.map(|b| Journal::encode_inline(&b));
        self.commit_record(&mut st, ino, record)?;
        let inode = Self::get_mut(&mut st, ino)?;
        inode.journaled_data_rev = inode.journaled_data_rev.max(rev);
        Ok(())
    }

    pub fn release(&self, fh: u64) -> VfsResult<()> {
        self.release_kernel(fh).map(|_| ())
    }

    /// release(); also returns the passthrough epoch whose last handle this
    /// was, so the adapter can let go of its backing file.
    pub fn release_kernel(&self, fh: u64) -> VfsResult<Option<u64>> {
        let flush_needed = self.lock().handles.get(&fh).is_some_and(|h| h.dirty);
        if flush_needed {
            // release() errors never reach close(); flush already reported any.
            if let Err(e) = self.flush(fh) {
                tracing::error!(error = %e, "commit on release failed; the change stays staged");
            }
        }
        let mut st = self.lock();
        let handle = st.handles.remove(&fh).ok_or_else(VfsError::badf)?;
        let ended_epoch = st.kernel_io.release(handle.ino, handle.io);
        let forget = match st.inodes.get_mut(&handle.ino) {
            Some(inode) => {
                inode.open_handles = inode.open_handles.saturating_sub(1);
                if handle.write {
                    inode.open_writers = inode.open_writers.saturating_sub(1);
                }
                inode.unlinked && inode.open_handles == 0
            }
            None => false,
        };
        if forget {
            Self::forget_inode(&mut st, handle.ino);
        }
        Ok(ended_epoch)
    }

    /// fsync(): the change is journaled (durable). An edit of a file the
    /// server has, in place, is then sent at once and fsync waits (at most
    /// [`FSYNC_WAIT`]) for the answer; a change the server refuses is `EIO`.
    /// With the server unreachable it returns once the change is durable
    /// here (it stays queued). A new or moved file goes out with the normal
    /// debounce: an editor fsyncs its new file before it removes the backup,
    /// and sending the new file then would split the save into two nodes.
    pub fn fsync(&self, fh: u64) -> VfsResult<()> {
        self.flush(fh)?;
        let waiting_for = {
            let st = self.lock();
            let ino = st.handles.get(&fh).ok_or_else(VfsError::badf)?.ino;
            let record = st.inodes.get(&ino).and_then(|i| st.records.get(&i.uid));
            // Only a commit to a node the server has can go out on its own.
            match record.map(|r| (r, self.plan_record(&st, r))) {
                Some((r, Ok(Some(drain::DrainOp::Commit { node: Some(_), .. })))) => Some((r.uid, r.rev)),
                _ => None,
            }
        };
        let Some((uid, rev)) = waiting_for else {
            self.wake.notify_one();
            return Ok(());
        };
        // Marked urgent before the worker is woken (in await_commit), so the
        // wake-up sends it at once instead of sleeping out the debounce.
        self.set_urgent(uid, true);
        let result = self.await_commit(uid, rev);
        self.set_urgent(uid, false);
        result
    }

    fn set_urgent(&self, uid: u64, on: bool) {
        let mut urgent = self.urgent.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            urgent.insert(uid);
        } else {
            urgent.remove(&uid);
        }
    }

    /// Whether fsync waits for some record to go out now.
    pub fn has_urgent(&self) -> bool {
        !self.urgent.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The records fsync waits for (usually none), copied once per plan.
    fn urgent_uids(&self) -> std::collections::HashSet<u64> {
        self.urgent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until record `uid` at `rev` was acknowledged (or superseded),
    /// refused (`EIO`), the server is unreachable, or [`FSYNC_WAIT`] passed.
    fn await_commit(&self, uid: u64, rev: u64) -> VfsResult<()> {
        self.wake.notify_one();
        let deadline = std::time::Instant::now() + FSYNC_WAIT;
        let mut st = self.lock();
        loop {
            if !self.server_reachable.load(Ordering::Relaxed) {
                return Ok(()); // durable here; it goes out when the server is back
            }
            match st.records.get(&uid) {
                None => return Ok(()),
                Some(r) if r.rev > rev => return Ok(()), // superseded by a newer change
                Some(r) => {
                    if let Some(error) = &r.last_error {
                        return Err(VfsError::new(
                            libc::EIO,
                            format!(
                                "the server refused {}: {error}; the change stays in the journal (see `contextfs status`)",
                                Self::path_of(&st, st.by_uid.get(&uid).copied().unwrap_or(ROOT_INO))
                            ),
                        ));
                    }
                }
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(()); // still durable here; the worker keeps trying
            }
            st = self
                .round_done
                .wait_timeout(st, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The sync worker reports after each round whether it reached the
    /// server; fsync waits only while it does.
    pub fn round_finished(&self, server_reachable: bool) {
        self.server_reachable.store(server_reachable, Ordering::Relaxed);
        let _guard = self.lock();
        self.round_done.notify_all();
    }

    pub fn setattr(&self, ino: Ino, fh: Option<u64>, set: SetAttr) -> VfsResult<Attr> {
        let out = self.setattr_journaled(ino, fh, set)?;
        // Durable before the call returns; synced outside the core's lock.
        self.journal.make_durable()?;
        Ok(out)
    }

    fn setattr_journaled(&self, ino: Ino, fh: Option<u64>, set: SetAttr) -> VfsResult<Attr> {
        if set.size.is_some() || set.mode.is_some() {
            Self::check_writable(&self.lock(), ino)?;
        }
        if let Some(size) = set.size {
            if self.lock().inodes.get(&ino).is_some_and(|i| i.kind == NodeKind::Dir) {
                return Err(VfsError::isdir(self.path(ino)));
            }
            // truncate(2) changes what passthrough readers' backing file shows.
            self.await_passthrough_readers(ino)?;
            self.make_local(ino, size == 0)?;
            let data_lock = self.data_lock_of(ino)?;
            let _data = data_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut st = self.lock();
            let inode = Self::get_mut(&mut st, ino)?;
            if let Content::Local { file, .. } = &inode.content {
                file.set_len(size).map_err(|e| VfsError::io("truncate", e))?;
            }
            inode.size = size;
            inode.data_rev += 1;
            inode.mtime = SystemTime::now();
            inode.ctime = inode.mtime;
            let through_handle = fh.and_then(|f| st.handles.get_mut(&f)).filter(|h| h.write);
            match through_handle {
                // ftruncate on a writable handle: committed with that handle's close.
                Some(handle) => handle.dirty = true,
                None => {
                    drop(st);
                    self.journal_content(ino)?;
                }
            }
        }
        let mut st = self.lock();
        if let Some(mode) = set.mode {
            let inode = Self::get_mut(&mut st, ino)?;
            let mode = mode & 0o7777;
            if inode.mode != mode {
                inode.mode = mode;
                inode.ctime = SystemTime::now();
                let mut record = Self::next_record(&st, ino)?;
                record.mode_dirty = true;
                self.commit_record(&mut st, ino, record)?;
            }
        }
        if let Some(mtime) = set.mtime {
            // mtime is local metadata: the server keeps version times.
            Self::get_mut(&mut st, ino)?.mtime = mtime;
        }
        Ok(Self::attr_of(ino, Self::get(&st, ino)?))
    }

    // ----- removing and renaming -----

    /// Journals that `ino` (and, for a directory, everything below) is gone.
    fn journal_deletion(&self, st: &mut State, ino: Ino) -> VfsResult<()> {
        let inode = Self::get(st, ino)?;
        match &inode.server {
            Some(server) => {
                st.local_news.deleting(server.node);
                let mut record = Self::next_record(st, ino)?;
                record.deleted = true;
                record.content = None;
                record.inline = None;
                self.commit_record(st, ino, record)
            }
            // Never reached the server: forgetting the record is enough.
            None => {
                let uid = inode.uid;
                if st.records.remove(&uid).is_some() {
                    self.journal.remove(uid)?;
                }
                Ok(())
            }
        }
    }

    pub fn unlink(&self, parent: Ino, name: &str) -> VfsResult<()> {
        self.unlink_journaled(parent, name)?;
        // Durable before the call returns; synced outside the core's lock.
        self.journal.make_durable()
    }

    fn unlink_journaled(&self, parent: Ino, name: &str) -> VfsResult<()> {
        let mut st = self.lock();
        Self::check_writable(&st, parent)?;
        let ino = Self::child(&st, parent, name)?.ok_or_else(|| VfsError::noent(name))?;
        Self::check_writable(&st, ino)?;
        if Self::get(&st, ino)?.kind == NodeKind::Dir {
            return Err(VfsError::isdir(name));
        }
        self.remove_entry(&mut st, ino)
    }

    pub fn rmdir(&self, parent: Ino, name: &str) -> VfsResult<()> {
        self.rmdir_journaled(parent, name)?;
        // Durable before the call returns; synced outside the core's lock.
        self.journal.make_durable()
    }

    fn rmdir_journaled(&self, parent: Ino, name: &str) -> VfsResult<()> {
        let mut st = self.lock();
        Self::check_writable(&st, parent)?;
        let ino = Self::child(&st, parent, name)?.ok_or_else(|| VfsError::noent(name))?;
        Self::check_writable(&st, ino)?;
        let inode = Self::get(&st, ino)?;
        if inode.kind != NodeKind::Dir {
            return Err(VfsError::notdir(name));
        }
        if !inode.children.is_empty() {
            return Err(VfsError::new(libc::ENOTEMPTY, format!("{name} is not empty")));
        }
        self.remove_entry(&mut st, ino)
    }

    /// Removes an entry. If a new, never-synced file now stands where the
    /// server still has this node (vim's rename-to-backup save, or a
    /// temp-file-and-rename), the new file inherits the node so history
    /// continues instead of a delete plus an unrelated create.
    fn remove_entry(&self, st: &mut State, ino: Ino) -> VfsResult<()> {
        if let Some(heir) = Self::heir_for(st, ino) {
            self.inherit(st, ino, heir)?;
        } else {
            self.journal_deletion(st, ino)?;
        }
        Self::detach(st, ino);
        Ok(())
    }

    /// A new local file standing at the server path of `ino`'s node.
    fn heir_for(st: &State, ino: Ino) -> Option<Ino> {
        let inode = st.inodes.get(&ino)?;
        let server = inode.server.as_ref()?;
        if inode.kind != NodeKind::File {
            return None;
        }
        let mut current = ROOT_INO;
        for part in server.path.split('/') {
            current = *st.inodes.get(&current)?.children.get(part)?;
        }
        let heir = st.inodes.get(&current)?;
        (current != ino && heir.server.is_none() && heir.kind == NodeKind::File).then_some(current)
    }

    /// `heir` takes over `old`'s server node: its next commit is a new version
    /// of that node, based on the version `old` had.
    fn inherit(&self, st: &mut State, old: Ino, heir: Ino) -> VfsResult<()> {
        let server = Self::get(st, old)?.server.clone();
        let old_uid = Self::get(st, old)?.uid;
        if let Some(server) = server {
            st.by_node.insert(server.node, heir);
            let heir_inode = Self::get_mut(st, heir)?;
            heir_inode.server = Some(server);
            let mut record = Self::next_record(st, heir)?;
            if record.content.is_none() {
                // Nothing journaled yet for the heir (still open): its close will be.
                record.mode_dirty = true;
            }
            self.commit_record(st, heir, record)?;
        }
        self.journal.remove(old_uid)?;
        st.records.remove(&old_uid);
        if let Some(i) = st.inodes.get_mut(&old) {
            i.server = None;
        }
        Ok(())
    }

    pub fn rename(&self, parent: Ino, name: &str, new_parent: Ino, new_name: &str, no_replace: bool) -> VfsResult<()> {
        self.rename_journaled(parent, name, new_parent, new_name, no_replace)?;
        // Durable before the call returns; synced outside the core's lock.
        self.journal.make_durable()
    }

    fn rename_journaled(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        no_replace: bool,
    ) -> VfsResult<()> {
        let mut st = self.lock();
        Self::check_writable(&st, parent)?;
        Self::check_writable(&st, new_parent)?;
        Self::check_new_path(&st, new_parent, new_name)?;
        let ino = Self::child(&st, parent, name)?.ok_or_else(|| VfsError::noent(name))?;
        Self::check_writable(&st, ino)?;
        if Self::get(&st, new_parent)?.kind != NodeKind::Dir {
            return Err(VfsError::notdir(new_name));
        }
        // A directory cannot move below itself.
        let mut up = new_parent;
        while up != ROOT_INO {
            if up == ino {
                return Err(VfsError::new(libc::EINVAL, "cannot move a directory into itself"));
            }
            up = Self::get(&st, up)?.parent;
        }
        let target = Self::child(&st, new_parent, new_name)?;
        if target == Some(ino) {
            return Ok(());
        }
        let moving_kind = Self::get(&st, ino)?.kind;
        if let Some(target) = target {
            if no_replace {
                return Err(VfsError::exists(new_name));
            }
            let t = Self::get(&st, target)?;
            match (moving_kind == NodeKind::Dir, t.kind == NodeKind::Dir) {
                (true, false) => return Err(VfsError::notdir(new_name)),
                (false, true) => return Err(VfsError::isdir(new_name)),
                (true, true) if !t.children.is_empty() => {
                    return Err(VfsError::new(libc::ENOTEMPTY, format!("{new_name} is not empty")))
                }
                _ => {}
            }
            Self::check_writable(&st, target)?;
        }
        // Move first, so inheritance sees the new layout.
        if let Some(p) = st.inodes.get_mut(&parent) {
            p.children.remove(name);
            p.mtime = SystemTime::now();
        }
        if let Some(target) = target {
            if let Some(p) = st.inodes.get_mut(&new_parent) {
                p.children.remove(new_name);
            }
            let inherits = moving_kind == NodeKind::File
                && Self::get(&st, ino)?.server.is_none()
                && Self::get(&st, target)?.server.is_some();
            if let Some(t) = st.inodes.get_mut(&target) {
                // Detached below; keep parent/name for the journal record.
                t.unlinked = true;
            }
            {
                let inode = Self::get_mut(&mut st, ino)?;
                inode.parent = new_parent;
                inode.name = new_name.to_string();
            }
            if let Some(p) = st.inodes.get_mut(&new_parent) {
                p.children.insert(new_name.to_string(), ino);
            }
            if inherits {
                // The classic editor save: the temp file becomes the target.
                self.inherit(&mut st, target, ino)?;
            } else {
                self.journal_deletion(&mut st, target)?;
            }
            let keep = st.inodes.get(&target).is_some_and(|t| t.open_handles > 0);
            if !keep {
                Self::forget_inode(&mut st, target);
            }
        } else {
            let inode = Self::get_mut(&mut st, ino)?;
            inode.parent = new_parent;
            inode.name = new_name.to_string();
            if let Some(p) = st.inodes.get_mut(&new_parent) {
                p.children.insert(new_name.to_string(), ino);
            }
        }
        if let Some(p) = st.inodes.get_mut(&new_parent) {
            p.mtime = SystemTime::now();
        }
        Self::get_mut(&mut st, ino)?.ctime = SystemTime::now();
        // A file renamed away from a node's server path may free it for an heir
        // already standing there (vim: rename to backup happens before the write).
        let needs_record = {
            let inode = Self::get(&st, ino)?;
            inode.server.is_some() || st.records.contains_key(&inode.uid)
        };
        if needs_record {
            self.journal_namespace(&mut st, ino)?;
        }
        Ok(())
    }

    // ----- status and extended attributes -----

    /// `user.contextfs.status` and friends.
    pub fn getxattr(&self, ino: Ino, name: &str) -> VfsResult<Vec<u8>> {
        let st = self.lock();
        let inode = Self::get(&st, ino)?;
        let value = match name {
            "user.contextfs.version" => inode.server.as_ref().map(|s| s.version.to_string()),
            "user.contextfs.node" => inode.server.as_ref().map(|s| s.node.to_string()),
            "user.contextfs.status" => Some(Self::status_word(&st, inode).to_string()),
            _ => None,
        };
        value
            .map(String::into_bytes)
            .ok_or_else(|| VfsError::new(libc::ENODATA, format!("no attribute {name}")))
    }

    pub fn listxattr(&self, ino: Ino) -> VfsResult<Vec<String>> {
        let st = self.lock();
        let inode = Self::get(&st, ino)?;
        let mut names = vec!["user.contextfs.status".to_string()];
        if inode.server.is_some() {
            names.push("user.contextfs.version".into());
            names.push("user.contextfs.node".into());
        }
        Ok(names)
    }

    /// clean / merged / lww for acknowledged files; pending while a handle
    /// holds unjournaled writes; queued while the journal holds a change.
    fn status_word(st: &State, inode: &Inode) -> &'static str {
        if inode.data_rev != inode.journaled_data_rev {
            "pending"
        } else if st.records.contains_key(&inode.uid) {
            "queued"
        } else {
            match inode.last_status {
                Some(VersionStatus::Merged) => "merged",
                Some(VersionStatus::Lww) => "lww",
                _ => "clean",
            }
        }
    }

    /// (path, record) of every change still waiting for the server.
    pub fn queued(&self) -> Vec<(String, Record)> {
        let st = self.lock();
        let mut out: Vec<(String, Record)> = st
            .records
            .values()
            .map(|r| {
                let path = match st.by_uid.get(&r.uid) {
                    Some(ino) if !r.deleted => Self::path_of(&st, *ino),
                    _ => r.server_path.clone().unwrap_or_else(|| r.name.clone()),
                };
                (path, r.clone())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Files whose writes are not journaled yet (open, written, not closed).
    pub fn unflushed(&self) -> Vec<String> {
        let st = self.lock();
        st.inodes
            .iter()
            .filter(|(_, i)| i.data_rev != i.journaled_data_rev && !i.unlinked)
            .map(|(ino, _)| Self::path_of(&st, *ino))
            .collect()
    }

    /// Space as the writer experiences it: every write is staged on the disk
    /// that holds the mount's state, so that disk's size and free space are
    /// what `df` and installers should see.
    pub fn statfs(&self) -> Statfs {
        let files = self.lock().inodes.len() as u64;
        let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(self.staging_dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
        let ok = unsafe { libc::statvfs(path.as_ptr(), &mut vfs) } == 0;
        let (blocks, bfree) = if ok {
            let unit = vfs.f_frsize.max(1);
            (vfs.f_blocks * unit / 4096, vfs.f_bavail * unit / 4096)
        } else {
            (1 << 28, 1 << 28)
        };
        let ffree = if ok { vfs.f_favail.max(1 << 20) } else { 1 << 20 };
        Statfs {
            blocks,
            bfree,
            files: files + ffree,
            ffree,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Statfs {
    /// In 4 KiB blocks.
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
}

/// Turns a client-visible path into a validated project path.
pub fn project_path(path: &str) -> Option<WsPath> {
    WsPath::parse(path).ok()
}
