//! Fixtures shared by every file of the suite: a blob "server" (`MapSource`),
//! a state dir and cache that outlive mounts (`Env`), listings, server
//! answers, change events, and small helpers to drive a `Vfs`.

pub use std::collections::{BTreeMap, HashMap};
pub use std::io::Read;
pub use std::path::PathBuf;
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::sync::{Arc, Condvar, Mutex};

pub use contextfs::api::{ChangeEvent, NodeKind, TreeEntry, TreeListing, VersionInfo, VersionOp, VersionStatus};
pub use contextfs::cache::{BlobCache, CacheError, CacheFill};
pub use contextfs::model::BlobHash;
pub use contextfs::vfs::drain::{ContentSource, DrainItem, DrainOp};
pub use contextfs::vfs::{
    BlobSource, Ino, KernelIo, OpenMode, PassthroughPolicy, SetAttr, Vfs, VfsConfig, VfsError, ROOT_INO,
};
pub use proptest::prelude::*;
pub use proptest::sample::select;
pub use proptest::test_runner::FileFailurePersistence;

/// A proptest configuration running `cases` cases, whose regressions live
/// beside the test's source file (`tests/vfs_model/local_ops.rs` ->
/// `tests/vfs_model/local_ops.proptest-regressions`). Proptest's default
/// (`SourceParallel`) would put them in `tests/proptest-regressions/*.txt`,
/// since `tests/vfs_model/` holds a `main.rs`.
/// `cases` per property; `PROPTEST_CASES` overrides it for a longer soak
/// (`PROPTEST_CASES=20000 cargo test --test vfs_model`).
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    }
}

/// Serves blobs from a map (the "server"), counting fetches.
#[derive(Default)]
pub struct MapSource {
    blobs: Mutex<HashMap<BlobHash, Vec<u8>>>,
    calls: AtomicUsize,
}

impl MapSource {
    pub fn put(&self, bytes: &[u8]) -> BlobHash {
        let hash = BlobHash::of(bytes);
        self.blobs.lock().unwrap().insert(hash.clone(), bytes.to_vec());
        hash
    }

    /// The bytes of a blob the server holds.
    pub fn get(&self, hash: &BlobHash) -> Option<Vec<u8>> {
        self.blobs.lock().unwrap().get(hash).cloned()
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl BlobSource for MapSource {
    fn fetch(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let bytes = self.blobs.lock().unwrap().get(hash).cloned();
        match bytes {
            Some(bytes) => fill.write(&bytes),
            None => Err(CacheError::Fetch {
                hash: hash.clone(),
                message: "not on the test server".into(),
            }),
        }
    }
}

/// A source whose fetches wait for the test to let them go, so a test can
/// hold a reader (or a writer staging its copy) in the middle of a download.
#[derive(Default)]
pub struct GateSource {
    pub inner: MapSource,
    /// (fetches started, released)
    gate: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl GateSource {
    pub fn wait_for_fetch(&self) {
        let mut g = self.gate.lock().unwrap();
        while g.0 == 0 {
            g = self.changed.wait(g).unwrap();
        }
    }

    pub fn release(&self) {
        self.gate.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

impl BlobSource for GateSource {
    fn fetch(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError> {
        let mut g = self.gate.lock().unwrap();
        g.0 += 1;
        self.changed.notify_all();
        while !g.1 {
            g = self.changed.wait(g).unwrap();
        }
        drop(g);
        self.inner.fetch(hash, fill)
    }
}

/// A server that is down.
pub struct FailSource;

impl BlobSource for FailSource {
    fn fetch(&self, hash: &BlobHash, _fill: &mut CacheFill) -> Result<(), CacheError> {
        Err(CacheError::Fetch {
            hash: hash.clone(),
            message: "server unreachable".into(),
        })
    }
}

/// A state dir, a cache and a source that outlive the mounts made on them.
pub struct Env {
    _tmp: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub cache: Arc<BlobCache>,
    pub source: Arc<MapSource>,
}

impl Env {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let state_dir = tmp.path().join("state");
        let cache = Arc::new(BlobCache::open(&tmp.path().join("cache"), 1 << 30).unwrap());
        Self {
            _tmp: tmp,
            state_dir,
            cache,
            source: Arc::new(MapSource::default()),
        }
    }

    pub fn vfs(&self) -> Vfs {
        self.vfs_on(self.source.clone())
    }

    /// A mount of this state dir and cache that fetches from `source`.
    pub fn vfs_on(&self, source: Arc<dyn BlobSource>) -> Vfs {
        let config = VfsConfig {
            state_dir: self.state_dir.clone(),
            read_only: false,
            agent_id: None,
            durability: contextfs::vfs::Durability::DEFAULT,
        };
        Vfs::new(config, self.cache.clone(), source).unwrap()
    }

    pub fn mount(&self, listing: &TreeListing) -> Vfs {
        let vfs = self.vfs();
        vfs.load(listing, None).unwrap();
        vfs
    }

    /// How many journaled changes a new mount of this state dir replays.
    /// What survives a restart once the sync worker ended its round
    /// (acknowledgements are appended without waiting; the round syncs them).
    pub fn durable_records(&self, vfs: Vfs, listing: &TreeListing) -> usize {
        vfs.make_journal_durable().unwrap();
        drop(vfs);
        self.mount(listing).queued().len()
    }
}

pub const TIME: &str = "2024-01-01T00:00:00Z";

pub fn tree_listing(cursor: i64, entries: Vec<TreeEntry>) -> TreeListing {
    TreeListing { cursor, entries }
}

pub fn empty_listing() -> TreeListing {
    tree_listing(0, vec![])
}

pub fn file_entry(source: &MapSource, path: &str, id: i64, version: i64, bytes: &[u8]) -> TreeEntry {
    TreeEntry {
        path: path.into(),
        id,
        kind: NodeKind::File,
        mode: 0o644,
        size: bytes.len() as u64,
        hash: source.put(bytes),
        version,
        modified_at: TIME.into(),
        accessed_at: None,
    }
}

pub fn dir_entry(path: &str, id: i64) -> TreeEntry {
    TreeEntry {
        path: path.into(),
        id,
        kind: NodeKind::Dir,
        mode: 0o755,
        size: 0,
        hash: BlobHash::of(b""),
        version: 1,
        modified_at: TIME.into(),
        accessed_at: None,
    }
}

pub fn version_info(
    node: i64,
    version: i64,
    path: &str,
    kind: NodeKind,
    bytes_hash: BlobHash,
    size: u64,
    status: VersionStatus,
) -> VersionInfo {
    VersionInfo {
        node,
        version,
        path: path.into(),
        kind,
        mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
        hash: bytes_hash,
        size,
        op: VersionOp::Write,
        status,
        deleted: false,
        parent: None,
        author: "test".into(),
        agent_id: None,
        message: None,
        created_at: TIME.into(),
        mtime: None,
        atime: None,
    }
}

pub fn event(seq: i64, node: i64, version: i64, path: &str, hash: BlobHash, size: u64, deleted: bool) -> ChangeEvent {
    ChangeEvent {
        seq,
        node,
        path: path.into(),
        old_path: None,
        op: if deleted { VersionOp::Delete } else { VersionOp::Write },
        version,
        kind: NodeKind::File,
        hash,
        size,
        mode: 0o644,
        deleted,
        agent_id: None,
        at: TIME.into(),
        mtime: None,
        atime: None,
    }
}

/// `e` as a rename from `old_path` to its path.
pub fn rename_event(mut e: ChangeEvent, old_path: &str) -> ChangeEvent {
    e.op = VersionOp::Rename;
    e.old_path = Some(old_path.into());
    e
}

pub const RW: OpenMode = OpenMode {
    read: true,
    write: true,
    truncate: false,
    append: false,
};
/// `open(O_WRONLY | O_TRUNC)`.
pub const TRUNC: OpenMode = OpenMode {
    read: false,
    write: true,
    truncate: true,
    append: false,
};
pub const WO: OpenMode = OpenMode {
    read: false,
    write: true,
    truncate: false,
    append: false,
};

pub const RO: OpenMode = OpenMode {
    read: true,
    write: false,
    truncate: false,
    append: false,
};

pub fn errno<T>(r: Result<T, VfsError>) -> Result<T, i32> {
    r.map_err(|e| e.errno)
}

pub fn ino_of(vfs: &Vfs, path: &str) -> Result<Ino, VfsError> {
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        ino = vfs.lookup(ino, part)?.ino;
    }
    Ok(ino)
}

pub fn read_all(vfs: &Vfs, fh: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = vfs.read(fh, out.len() as u64, 64 * 1024).unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

pub fn read_path(vfs: &Vfs, path: &str) -> Vec<u8> {
    let fh = vfs.open(ino_of(vfs, path).unwrap(), RO).unwrap();
    let bytes = read_all(vfs, fh);
    vfs.release(fh).unwrap();
    bytes
}

/// Opens `path` read-write, writes `bytes` at `offset` and closes it.
pub fn write_at(vfs: &Vfs, path: &str, offset: u64, bytes: &[u8]) {
    let fh = vfs.open(ino_of(vfs, path).unwrap(), RW).unwrap();
    vfs.write(fh, offset, bytes).unwrap();
    vfs.release(fh).unwrap();
}

pub fn write_file(vfs: &Vfs, parent: Ino, name: &str, bytes: &[u8]) -> Ino {
    let (attr, fh) = vfs.create(parent, name, 0o644, RW, false).unwrap();
    vfs.write(fh, 0, bytes).unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    attr.ino
}

/// The names in the root directory, in readdir order.
pub fn root_names(vfs: &Vfs) -> Vec<String> {
    vfs.readdir(ROOT_INO).unwrap().into_iter().map(|e| e.name).collect()
}

pub fn status(vfs: &Vfs, ino: Ino) -> String {
    String::from_utf8(vfs.getxattr(ino, "user.contextfs.status").unwrap()).unwrap()
}

pub fn plan(vfs: &Vfs) -> Vec<DrainItem> {
    vfs.drain_plan(0, &|_| false)
}

pub fn describe(items: &[DrainItem]) -> Vec<String> {
    items.iter().map(|i| i.describe()).collect()
}

// ----- editor-save patterns -----

pub const DOC: &[u8] = b"# Doc\nversion three\n";

/// A mount whose server tree has `doc.md` (node 10, version 3).
pub fn doc_env() -> (Env, TreeListing) {
    let env = Env::new();
    let listing = tree_listing(3, vec![file_entry(&env.source, "doc.md", 10, 3, DOC)]);
    (env, listing)
}

pub fn only_commit(items: &[DrainItem]) -> (String, Option<i64>, Option<i64>, BlobHash, u32, ContentSource) {
    assert_eq!(items.len(), 1, "expected one drain item, got {:?}", describe(items));
    match &items[0].op {
        DrainOp::Commit {
            path,
            node,
            base_version,
            hash,
            mode,
            source,
            ..
        } => (
            path.as_str().to_string(),
            *node,
            *base_version,
            hash.clone(),
            *mode,
            source.clone(),
        ),
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// A server tree of directory `d` (node 20) holding `d/f.md` (node 21, version 1).
pub fn dir_d_with_f_md(env: &Env) -> TreeListing {
    tree_listing(
        1,
        vec![dir_entry("d", 20), file_entry(&env.source, "d/f.md", 21, 1, b"f")],
    )
}

/// The server's acknowledgement of `item`, the rename of directory `d`
/// (node 20) to `e` as its version 2.
pub fn ack_rename_of_d_to_e(vfs: &Vfs, item: &DrainItem) {
    let v = version_info(20, 2, "e", NodeKind::Dir, BlobHash::of(b""), 0, VersionStatus::Clean);
    vfs.ack_namespace(item.uid, item.rev, &v).unwrap();
}

/// Every seed saved in this suite's `*.proptest-regressions` files is one
/// that proptest will run: a line it cannot parse is skipped with only a
/// warning (two seeds were lost that way, one behind a '+' from a patch,
/// one sharing its line with the next).
#[test]
fn every_saved_seed_is_a_line_proptest_runs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vfs_model");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "proptest-regressions") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let seed = line.strip_prefix("cc ").and_then(|rest| rest.split_whitespace().next());
            let well_formed = seed.is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                && line.matches("cc ").count() == 1;
            assert!(
                well_formed,
                "{}:{}: not a seed line proptest reads: {line:.120}",
                path.display(),
                n + 1
            );
        }
    }
    assert!(files >= 3, "found only {files} regression files in {}", dir.display());
}
