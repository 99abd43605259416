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

mod acks;
pub mod announce;
mod chunked;
pub mod drain;
mod error;
mod fsync;
mod handles;
pub mod history;
pub mod journal;
pub mod kernel_io;
mod kernel_writes;
mod max_file_size;
mod namespace;
pub mod ordering;
mod passthrough;
pub mod remote;
pub mod replay;
mod setattr;
mod staging;
mod status;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::api::{NodeKind, VersionStatus};
use crate::cache::{BlobCache, CacheError, CacheFill};
use crate::model::{BlobHash, WsPath, MAX_NAME_BYTES, MAX_PATH_BYTES};
pub use announce::{AnnouncedPaths, Announcement, KernelUpdate};
pub use error::{errno_for_io, VfsError};
pub use journal::Durability;
use journal::{Journal, ParentRef, Record};
use kernel_io::{HandleIo, KernelIoTable};
pub use status::Statfs;

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

pub type VfsResult<T> = Result<T, VfsError>;

/// Fetches blobs the cache does not hold (the server, in production).
pub trait BlobSource: Send + Sync {
    fn fetch(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError>;

    /// The manifest of a blob stored as chunks (`crate::chunks`); `None`
    /// when it is stored whole. Sources that know only whole blobs keep the
    /// default.
    fn manifest(&self, _hash: &BlobHash) -> Result<Option<crate::chunks::Manifest>, CacheError> {
        Ok(None)
    }

    /// Fetches one chunk of a chunked blob (an ordinary blob of at most
    /// `crate::chunks::CHUNK_LIMIT` bytes). Implementations bound the whole
    /// download in time: a reader waits on it.
    fn fetch_chunk(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError> {
        self.fetch(hash, fill)
    }
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
        /// The file's inode is also the journal's pending content (linked
        /// there on close, instead of copied): its bytes never change
        /// again. The next change copies them to a new staging file first
        /// (copy on write). Every change of a staging file checks this under
        /// the inode's data lock, which sealing holds too.
        sealed: bool,
        /// The kernel wrote this file itself (write passthrough): a shared
        /// memory map may outlive its last close, so it is reused or linked
        /// into the cache only once nothing else has it open for writing
        /// (`staging::no_other_writer`).
        kernel_wrote: bool,
    },
    /// A `Local` file nobody has open whose change is journaled: the same
    /// staging file, without a descriptor (thousands can wait for the server
    /// during an untar). Any use opens it again first ([`Vfs::unpark`]).
    Parked {
        path: PathBuf,
        sealed: bool,
        kernel_wrote: bool,
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
    /// Only what `touch -a`/utimensat or the server set: reads leave it
    /// alone, as on a filesystem mounted `noatime`.
    atime: SystemTime,
    ctime: SystemTime,
    content: Content,
    children: BTreeMap<String, Ino>,
    server: Option<ServerState>,
    /// Bumped by every local data change; compared with the journaled one.
    data_rev: u64,
    journaled_data_rev: u64,
    open_handles: u32,
    open_writers: u32,
    /// References the kernel holds (its lookup count): the kernel may still
    /// send requests for this inode (an open of a path it resolved before a
    /// rename replaced it) until it forgets them, so an inode removed from
    /// the tree lives on, unlinked, until then.
    kernel_refs: u64,
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
    /// Something still refers to it: an open handle, or the kernel.
    fn held(&self) -> bool {
        self.open_handles > 0 || self.kernel_refs > 0
    }

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
            atime: now,
            ctime: now,
            content,
            children: BTreeMap::new(),
            server: None,
            data_rev: 0,
            journaled_data_rev: 0,
            open_handles: 0,
            open_writers: 0,
            kernel_refs: 0,
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
    pub atime: SystemTime,
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
    pub atime: Option<SystemTime>,
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
    /// Every clean file, as `all`, but every write goes through the mount
    /// process (no write passthrough).
    Reads,
    /// Every clean file (the mount's default): reads at local-disk speed, but
    /// opening a file for writing while a process reads it this way waits up
    /// to 2 s for that reader, then fails with ETXTBSY. The kernel also
    /// writes new files itself (write passthrough: no FUSE request per write).
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

/// The largest file when the server does not say (its `--max-file-bytes`
/// default): writes past it fail with `EFBIG` (see handles.rs).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 40;

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
    /// What `close()` waits for (`--durability`).
    pub durability: Durability,
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
    /// The newest news of a node that an inode with local changes shows,
    /// held back (local changes win locally), by node. Applied once the
    /// answer that settles those changes is in: another writer's edit that
    /// landed between our commit and its answer then shows, instead of our
    /// older version until the node's next change. Dropped when the inode
    /// lets the node go (a node mismatch: committed as new), where it is
    /// not clear which file the news is about (two inodes may have claimed
    /// the node; session 16's note).
    withheld: HashMap<i64, crate::api::ChangeEvent>,
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
    staging: staging::StagingFiles,
    cache: Arc<BlobCache>,
    /// Recently used blob descriptors, so hot files skip open(2).
    open_files: moka::sync::Cache<BlobHash, Arc<File>>,
    source: Arc<dyn BlobSource>,
    /// Large files read by chunks: manifests, chunked handles, readahead.
    chunks: chunked::Chunks,
    invalidations: Mutex<Option<mpsc::Sender<KernelUpdate>>>,
    /// The thread that shows remote changes to file watchers (announce.rs).
    announcer: announce::Announcer,
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
    /// The server's `max_file_bytes`: no write, truncate or fallocate takes
    /// a file past it (`EFBIG`), so nothing is journaled that the server
    /// would refuse. Set by the sync worker from `GET /health`.
    max_file_bytes: std::sync::atomic::AtomicU64,
    pub config: VfsConfig,
}

fn check_name(name: &str) -> VfsResult<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(VfsError::new(libc::EINVAL, format!("invalid file name {name:?}")));
    }
    // The server refuses new names with control characters (they could forge
    // log lines or smuggle terminal escapes); refusing here gives EINVAL at
    // once instead of a commit that fails later in the background.
    if name.chars().any(crate::model::is_forbidden_in_name) {
        return Err(VfsError::new(
            libc::EINVAL,
            format!("file name {name:?} contains a control character (newline, tab, ESC, DEL, U+0080-U+009F); contextfs refuses those"),
        ));
    }
    check_name_length(name)
}

fn check_name_length(name: &str) -> VfsResult<()> {
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

/// Nanoseconds since the Unix epoch, as the server stores file times
/// (saturating outside the years 1678-2262).
pub(crate) fn nanos_of(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

pub(crate) fn time_of_nanos(nanos: i64) -> SystemTime {
    let magnitude = std::time::Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// A time from the server (RFC 3339); `None` for text that is not one.
pub(crate) fn parse_server_time(raw: &str) -> Option<SystemTime> {
    crate::model::parse_file_time(raw).ok().map(time_of_nanos)
}

/// The mtime and atime the server has for a version: the writer's, else
/// the commit time (`at`); the atime defaults to the mtime.
pub(crate) fn server_times(mtime: Option<&str>, atime: Option<&str>, at: &str) -> Option<(SystemTime, SystemTime)> {
    let mtime = parse_server_time(mtime.unwrap_or(at))?;
    Some((mtime, atime.and_then(parse_server_time).unwrap_or(mtime)))
}

impl Vfs {
    pub fn new(config: VfsConfig, cache: Arc<BlobCache>, source: Arc<dyn BlobSource>) -> VfsResult<Self> {
        let journal = Journal::open_with(&config.state_dir, config.durability)?;
        let staging = staging::StagingFiles::open(config.state_dir.join("staging"))?;
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
            withheld: HashMap::new(),
        };
        Ok(Self {
            state: Mutex::new(state),
            journal,
            staging,
            chunks: chunked::Chunks::new(cache.clone(), source.clone()),
            cache,
            open_files: moka::sync::Cache::builder()
                .max_capacity(512)
                .time_to_idle(std::time::Duration::from_secs(30))
                .build(),
            source,
            invalidations: Mutex::new(None),
            announcer: announce::Announcer::default(),
            wake: tokio::sync::Notify::new(),
            urgent: Mutex::new(std::collections::HashSet::new()),
            round_done: Condvar::new(),
            server_reachable: AtomicBool::new(false),
            passthrough: AtomicBool::new(false),
            passthrough_policy: Mutex::new(PassthroughPolicy::ReadOnly),
            max_file_bytes: std::sync::atomic::AtomicU64::new(DEFAULT_MAX_FILE_BYTES),
            config,
        })
    }

    /// Where kernel-cache invalidations and announcements go (the FUSE
    /// adapter's kernel thread).
    pub fn set_invalidation_sink(&self, sink: mpsc::Sender<KernelUpdate>) {
        if let Ok(mut guard) = self.invalidations.lock() {
            *guard = Some(sink);
        }
    }

    /// No more invalidations or announcements: the kernel thread skips the
    /// announcements still queued and ends (before the unmount, which its
    /// open mount root would make busy).
    pub fn close_kernel_updates(&self) {
        self.stop_announcing();
        if let Ok(mut guard) = self.invalidations.lock() {
            *guard = None;
        }
    }

    fn invalidate(&self, items: Vec<Invalidation>) {
        if items.is_empty() {
            return;
        }
        self.send_kernel_updates(items.into_iter().map(KernelUpdate::Invalidate));
    }

    /// Queues updates for the FUSE adapter's kernel thread, in order
    /// (dropped when no thread listens: tests, or a closing mount).
    fn send_kernel_updates(&self, updates: impl Iterator<Item = KernelUpdate>) {
        if let Ok(guard) = self.invalidations.lock() {
            if let Some(sink) = guard.as_ref() {
                for update in updates {
                    let _ = sink.send(update);
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

    /// fsync(2) of a directory (and what `syncfs` would be, if FUSE passed
    /// it on): every change journaled so far becomes durable.
    pub fn fsyncdir(&self) -> VfsResult<()> {
        self.journal.make_durable()
    }

    /// Starts the journal's group sync: one fdatasync for every change
    /// journaled in the last interval (100 ms by default), at most that
    /// long after the first of them. Namespace changes rely on it in both
    /// durability modes. The thread ends once the Vfs is dropped.
    pub fn spawn_group_sync(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let interval = match self.journal.durability() {
            Durability::Local { group_sync } => group_sync,
            Durability::Strict => Durability::DEFAULT_GROUP_SYNC,
        };
        let vfs = Arc::downgrade(self);
        std::thread::Builder::new().name("journal-sync".into()).spawn(move || {
            let mut failing = false;
            loop {
                let Some(v) = vfs.upgrade() else { return };
                if !v.journal.wait_until_undurable(Duration::from_secs(1)) {
                    continue;
                }
                std::thread::sleep(interval);
                match v.journal.make_durable() {
                    Ok(()) if failing => {
                        tracing::info!("journal group sync works again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        // The next fsync(2) reports it to its caller too.
                        tracing::error!(error = %e, "journal group sync failed; retrying");
                        failing = true;
                    }
                    Err(_) => std::thread::sleep(Duration::from_secs(1)),
                }
            }
        })
    }

    pub fn journal_dir(&self) -> &Path {
        self.journal.dir()
    }

    /// The blob cache this mount reads through (its use, for `status`).
    pub fn cache(&self) -> &BlobCache {
        &self.cache
    }

    pub fn cursor(&self) -> i64 {
        self.lock().cursor
    }
}

/// Turns a client-visible path into a validated project path.
pub fn project_path(path: &str) -> Option<WsPath> {
    WsPath::parse(path).ok()
}
