//! Model-based and unit tests of the filesystem core (`contextfs::vfs`),
//! driven without a kernel or a server: a reference model of the tree checks
//! every errno and every byte, a remount checks journal replay, and unit
//! tests pin the editor-save patterns, acknowledgements and remote changes.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use contextfs::api::{ChangeEvent, NodeKind, TreeEntry, TreeListing, VersionInfo, VersionOp, VersionStatus};
use contextfs::cache::{BlobCache, CacheError, CacheFill};
use contextfs::model::BlobHash;
use contextfs::vfs::drain::{ContentSource, DrainItem, DrainOp};
use contextfs::vfs::{
    BlobSource, Ino, KernelIo, OpenMode, PassthroughPolicy, SetAttr, Vfs, VfsConfig, VfsError, ROOT_INO,
};
use proptest::prelude::*;
use proptest::sample::select;

// ----- fixtures -----

/// Serves blobs from a map (the "server"), counting fetches.
#[derive(Default)]
struct MapSource {
    blobs: Mutex<HashMap<BlobHash, Vec<u8>>>,
    calls: AtomicUsize,
}

impl MapSource {
    fn put(&self, bytes: &[u8]) -> BlobHash {
        let hash = BlobHash::of(bytes);
        self.blobs.lock().unwrap().insert(hash.clone(), bytes.to_vec());
        hash
    }

    fn calls(&self) -> usize {
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

/// A server that is down.
struct FailSource;

impl BlobSource for FailSource {
    fn fetch(&self, hash: &BlobHash, _fill: &mut CacheFill) -> Result<(), CacheError> {
        Err(CacheError::Fetch {
            hash: hash.clone(),
            message: "server unreachable".into(),
        })
    }
}

/// A state dir, a cache and a source that outlive the mounts made on them.
struct Env {
    _tmp: tempfile::TempDir,
    state_dir: PathBuf,
    cache: Arc<BlobCache>,
    source: Arc<MapSource>,
}

impl Env {
    fn new() -> Self {
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

    fn vfs(&self) -> Vfs {
        let config = VfsConfig {
            state_dir: self.state_dir.clone(),
            read_only: false,
            agent_id: None,
        };
        Vfs::new(config, self.cache.clone(), self.source.clone()).unwrap()
    }

    fn mount(&self, listing: &TreeListing) -> Vfs {
        let vfs = self.vfs();
        vfs.load(listing, None).unwrap();
        vfs
    }

    /// How many journaled changes a new mount of this state dir replays.
    /// What survives a restart once the sync worker ended its round
    /// (acknowledgements are appended without waiting; the round syncs them).
    fn durable_records(&self, vfs: Vfs, listing: &TreeListing) -> usize {
        vfs.make_journal_durable().unwrap();
        drop(vfs);
        self.mount(listing).queued().len()
    }
}

const TIME: &str = "2024-01-01T00:00:00Z";

fn tree_listing(cursor: i64, entries: Vec<TreeEntry>) -> TreeListing {
    TreeListing { cursor, entries }
}

fn empty_listing() -> TreeListing {
    tree_listing(0, vec![])
}

fn file_entry(source: &MapSource, path: &str, id: i64, version: i64, bytes: &[u8]) -> TreeEntry {
    TreeEntry {
        path: path.into(),
        id,
        kind: NodeKind::File,
        mode: 0o644,
        size: bytes.len() as u64,
        hash: source.put(bytes),
        version,
        modified_at: TIME.into(),
    }
}

fn dir_entry(path: &str, id: i64) -> TreeEntry {
    TreeEntry {
        path: path.into(),
        id,
        kind: NodeKind::Dir,
        mode: 0o755,
        size: 0,
        hash: BlobHash::of(b""),
        version: 1,
        modified_at: TIME.into(),
    }
}

fn version_info(
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
    }
}

fn event(seq: i64, node: i64, version: i64, path: &str, hash: BlobHash, size: u64, deleted: bool) -> ChangeEvent {
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
    }
}

/// `e` as a rename from `old_path` to its path.
fn rename_event(mut e: ChangeEvent, old_path: &str) -> ChangeEvent {
    e.op = VersionOp::Rename;
    e.old_path = Some(old_path.into());
    e
}

const RW: OpenMode = OpenMode {
    read: true,
    write: true,
    truncate: false,
    append: false,
};
/// `open(O_WRONLY | O_TRUNC)`.
const TRUNC: OpenMode = OpenMode {
    read: false,
    write: true,
    truncate: true,
    append: false,
};
const RO: OpenMode = OpenMode {
    read: true,
    write: false,
    truncate: false,
    append: false,
};

fn ino_of(vfs: &Vfs, path: &str) -> Result<Ino, VfsError> {
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        ino = vfs.lookup(ino, part)?.ino;
    }
    Ok(ino)
}

fn read_all(vfs: &Vfs, fh: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = vfs.read(fh, out.len() as u64, 64 * 1024).unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

fn read_path(vfs: &Vfs, path: &str) -> Vec<u8> {
    let fh = vfs.open(ino_of(vfs, path).unwrap(), RO).unwrap();
    let bytes = read_all(vfs, fh);
    vfs.release(fh).unwrap();
    bytes
}

/// Opens `path` read-write, writes `bytes` at `offset` and closes it.
fn write_at(vfs: &Vfs, path: &str, offset: u64, bytes: &[u8]) {
    let fh = vfs.open(ino_of(vfs, path).unwrap(), RW).unwrap();
    vfs.write(fh, offset, bytes).unwrap();
    vfs.release(fh).unwrap();
}

fn write_file(vfs: &Vfs, parent: Ino, name: &str, bytes: &[u8]) -> Ino {
    let (attr, fh) = vfs.create(parent, name, 0o644, RW, false).unwrap();
    vfs.write(fh, 0, bytes).unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    attr.ino
}

/// The names in the root directory, in readdir order.
fn root_names(vfs: &Vfs) -> Vec<String> {
    vfs.readdir(ROOT_INO).unwrap().into_iter().map(|e| e.name).collect()
}

fn status(vfs: &Vfs, ino: Ino) -> String {
    String::from_utf8(vfs.getxattr(ino, "user.contextfs.status").unwrap()).unwrap()
}

fn plan(vfs: &Vfs) -> Vec<DrainItem> {
    vfs.drain_plan(0, &|_| false)
}

fn describe(items: &[DrainItem]) -> Vec<String> {
    items.iter().map(|i| i.describe()).collect()
}

// ----- the reference model -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MNode {
    Dir,
    /// Index into `Model::data` (a file's identity, followed by handles).
    File(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Dir,
    File(Vec<u8>),
}

#[derive(Debug, Clone, Default)]
struct Model {
    tree: BTreeMap<String, MNode>,
    data: Vec<Vec<u8>>,
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

impl Model {
    fn new_file(&mut self, bytes: Vec<u8>) -> usize {
        self.data.push(bytes);
        self.data.len() - 1
    }

    /// What path resolution of `path`'s parent reports.
    fn walk_parent(&self, path: &str) -> Result<(), i32> {
        let parent = parent_of(path);
        if parent.is_empty() {
            return Ok(());
        }
        let mut prefix = String::new();
        for part in parent.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match self.tree.get(&prefix) {
                None => return Err(libc::ENOENT),
                Some(MNode::File(_)) => return Err(libc::ENOTDIR),
                Some(MNode::Dir) => {}
            }
        }
        Ok(())
    }

    /// What opening `path` as a file reports: its file id or the errno.
    fn file_at(&self, path: &str) -> Result<usize, i32> {
        self.walk_parent(path).and_then(|()| match self.tree.get(path) {
            None => Err(libc::ENOENT),
            Some(MNode::Dir) => Err(libc::EISDIR),
            Some(MNode::File(id)) => Ok(*id),
        })
    }

    fn has_children(&self, dir: &str) -> bool {
        self.tree
            .range(format!("{dir}/")..)
            .next()
            .is_some_and(|(k, _)| under(k, dir))
    }

    fn snapshot(&self) -> BTreeMap<String, Seen> {
        self.tree
            .iter()
            .map(|(p, n)| {
                let seen = match n {
                    MNode::Dir => Seen::Dir,
                    MNode::File(id) => Seen::File(self.data[*id].clone()),
                };
                (p.clone(), seen)
            })
            .collect()
    }

    fn write(&mut self, id: usize, at: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            // pwrite(2) of zero bytes changes nothing, not even past the end.
            return;
        }
        let data = &mut self.data[id];
        if data.len() < at + bytes.len() {
            data.resize(at + bytes.len(), 0);
        }
        data[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn rename(&mut self, from: &str, to: &str, no_replace: bool) -> Result<(), i32> {
        self.walk_parent(from)?;
        self.walk_parent(to)?;
        let Some(&src) = self.tree.get(from) else {
            return Err(libc::ENOENT);
        };
        if src == MNode::Dir && under(to, from) {
            return Err(libc::EINVAL);
        }
        if from == to {
            return Ok(());
        }
        if let Some(&dst) = self.tree.get(to) {
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (src, dst) {
                (MNode::Dir, MNode::File(_)) => return Err(libc::ENOTDIR),
                (MNode::File(_), MNode::Dir) => return Err(libc::EISDIR),
                (MNode::Dir, MNode::Dir) if self.has_children(to) => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            self.tree.remove(to);
        }
        let moving: Vec<String> = self
            .tree
            .keys()
            .filter(|k| *k == from || under(k, from))
            .cloned()
            .collect();
        for old in moving {
            let node = self.tree.remove(&old).unwrap();
            self.tree.insert(format!("{to}{}", &old[from.len()..]), node);
        }
        Ok(())
    }
}

/// The server tree both the model and the Vfs start from in "server" cases.
fn server_listing(source: &MapSource) -> (TreeListing, Model) {
    let files: [(&str, i64, &[u8]); 4] = [
        ("a", 1, b"server a\n"),
        ("b/a", 3, b"nested a, from the server\n"),
        ("b/c", 4, b"c"),
        ("c", 5, b""),
    ];
    let mut entries = vec![dir_entry("b", 2)];
    let mut model = Model::default();
    model.tree.insert("b".into(), MNode::Dir);
    for (path, id, bytes) in files {
        entries.push(file_entry(source, path, id, 1, bytes));
        let fid = model.new_file(bytes.to_vec());
        model.tree.insert(path.into(), MNode::File(fid));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    (tree_listing(7, entries), model)
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        path: String,
        exclusive: bool,
        truncate: bool,
        append: bool,
    },
    Open {
        path: String,
        truncate: bool,
        append: bool,
    },
    Write {
        h: usize,
        offset: u64,
        data: Vec<u8>,
    },
    TruncateHandle {
        h: usize,
        size: u64,
    },
    TruncatePath {
        path: String,
        size: u64,
    },
    Flush {
        h: usize,
    },
    Close {
        h: usize,
    },
    Rename {
        from: String,
        to: String,
        no_replace: bool,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Read {
        path: String,
    },
}

fn any_path() -> impl Strategy<Value = String> {
    prop::collection::vec(select(vec!["a", "b", "c", "d"]), 1..=2).prop_map(|parts| parts.join("/"))
}

fn any_offset() -> impl Strategy<Value = u64> {
    // 70_000 pushes the content past the journal's inline limit.
    prop_oneof![8 => select(vec![0u64, 1, 3, 8, 100, 5000]), 1 => Just(70_000u64)]
}

/// Up to 40 operations: a few that populate the tree (so later operations
/// meet existing names often), then anything.
fn any_ops() -> impl Strategy<Value = Vec<Op>> {
    let top = select(vec!["a", "b", "c", "d"]).prop_map(String::from);
    let populate = prop_oneof![
        2 => top.prop_map(|path| Op::Mkdir { path }),
        2 => any_path().prop_map(|path| Op::Mkdir { path }),
        3 => any_path().prop_map(|path| Op::Create { path, exclusive: false, truncate: false, append: false }),
        2 => (0usize..8, prop::collection::vec(any::<u8>(), 1..6)).prop_map(|(h, data)| Op::Write { h, offset: 0, data }),
    ];
    (
        prop::collection::vec(populate, 0..=12),
        prop::collection::vec(any_op(), 0..=28),
    )
        .prop_map(|(mut ops, more)| {
            ops.extend(more);
            ops
        })
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any_path(), any::<bool>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(path, exclusive, truncate, append)| Op::Create { path, exclusive, truncate, append }),
        2 => (any_path(), prop::bool::weighted(0.3), prop::bool::weighted(0.3))
            .prop_map(|(path, truncate, append)| Op::Open { path, truncate, append }),
        5 => (0usize..8, any_offset(), prop::collection::vec(any::<u8>(), 0..6))
            .prop_map(|(h, offset, data)| Op::Write { h, offset, data }),
        1 => (0usize..8, select(vec![0u64, 2, 9, 6000])).prop_map(|(h, size)| Op::TruncateHandle { h, size }),
        1 => (any_path(), select(vec![0u64, 2, 9, 6000])).prop_map(|(path, size)| Op::TruncatePath { path, size }),
        1 => (0usize..8).prop_map(|h| Op::Flush { h }),
        3 => (0usize..8).prop_map(|h| Op::Close { h }),
        4 => (any_path(), any_path(), prop::bool::weighted(0.25))
            .prop_map(|(from, to, no_replace)| Op::Rename { from, to, no_replace }),
        2 => any_path().prop_map(|path| Op::Unlink { path }),
        3 => any_path().prop_map(|path| Op::Mkdir { path }),
        2 => any_path().prop_map(|path| Op::Rmdir { path }),
        1 => any_path().prop_map(|path| Op::Read { path }),
    ]
}

/// One open writable handle, on both sides.
struct OpenHandle {
    fh: u64,
    ino: Ino,
    file: usize,
    append: bool,
}

/// Resolves `path`'s parent the way the kernel's path walk would.
fn vfs_parent(vfs: &Vfs, path: &str) -> Result<(Ino, String), i32> {
    let (parent, name) = match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path),
    };
    let mut ino = ROOT_INO;
    if !parent.is_empty() {
        for part in parent.split('/') {
            let attr = vfs.lookup(ino, part).map_err(|e| e.errno)?;
            if attr.kind != NodeKind::Dir {
                return Err(libc::ENOTDIR);
            }
            ino = attr.ino;
        }
    }
    Ok((ino, name.to_string()))
}

/// Looks `path` up the way the kernel's path walk would.
fn vfs_ino(vfs: &Vfs, path: &str) -> Result<Ino, i32> {
    let (parent, name) = vfs_parent(vfs, path)?;
    Ok(vfs.lookup(parent, &name).map_err(|e| e.errno)?.ino)
}

fn errno<T>(r: Result<T, VfsError>) -> Result<T, i32> {
    r.map_err(|e| e.errno)
}

/// The whole tree as the Vfs shows it, every file read through a fresh open.
fn vfs_snapshot(vfs: &Vfs) -> BTreeMap<String, Seen> {
    fn walk(vfs: &Vfs, ino: Ino, prefix: &str, out: &mut BTreeMap<String, Seen>) {
        for entry in vfs.readdir(ino).unwrap() {
            let path = if prefix.is_empty() {
                entry.name.clone()
            } else {
                format!("{prefix}/{}", entry.name)
            };
            match entry.kind {
                NodeKind::Dir => {
                    out.insert(path.clone(), Seen::Dir);
                    walk(vfs, entry.ino, &path, out);
                }
                _ => {
                    let fh = vfs.open(entry.ino, RO).unwrap();
                    let bytes = read_all(vfs, fh);
                    vfs.release(fh).unwrap();
                    let size = vfs.getattr(entry.ino).unwrap().size;
                    assert_eq!(size, bytes.len() as u64, "size attribute of {path}");
                    out.insert(path, Seen::File(bytes));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(vfs, ROOT_INO, "", &mut out);
    out
}

fn show(tree: &BTreeMap<String, Seen>) -> Vec<String> {
    tree.iter()
        .map(|(p, s)| match s {
            Seen::Dir => format!("{p}/"),
            Seen::File(b) if b.len() > 40 => {
                format!("{p} ({} bytes, hash {})", b.len(), &BlobHash::of(b).as_str()[..8])
            }
            Seen::File(b) => format!("{p} {:?}", String::from_utf8_lossy(b)),
        })
        .collect()
}

fn check_tree(vfs: &Vfs, model: &Model, when: &str) -> Result<(), TestCaseError> {
    let got = vfs_snapshot(vfs);
    let want = model.snapshot();
    prop_assert!(
        got == want,
        "{when}: tree differs\n vfs:   {:?}\n model: {:?}",
        show(&got),
        show(&want)
    );
    Ok(())
}

/// Runs `ops` on a fresh mount and on the model, comparing each outcome;
/// then closes every handle and compares the trees, and with `remount` also
/// the tree a new mount rebuilds from the journal.
fn run_model(ops: &[Op], with_server: bool, remount: bool) -> Result<(), TestCaseError> {
    let env = Env::new();
    let (listing, mut model) = if with_server {
        server_listing(&env.source)
    } else {
        (empty_listing(), Model::default())
    };
    let vfs = env.mount(&listing);
    check_tree(&vfs, &model, "after load")?;
    let mut handles: Vec<OpenHandle> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        let when = format!("step {step}: {op:?}");
        match op {
            Op::Create {
                path,
                exclusive,
                truncate,
                append,
            } => {
                let mode = OpenMode {
                    read: true,
                    write: true,
                    truncate: *truncate,
                    append: *append,
                };
                let got = errno(
                    vfs_parent(&vfs, path)
                        .map_err(|e| VfsError::new(e, "walk"))
                        .and_then(|(parent, name)| vfs.create(parent, &name, 0o644, mode, *exclusive)),
                );
                let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                    Some(_) if *exclusive => Err(libc::EEXIST),
                    Some(MNode::Dir) => Err(libc::EISDIR),
                    Some(MNode::File(id)) => Ok(*id),
                    None => {
                        let id = model.new_file(Vec::new());
                        model.tree.insert(path.clone(), MNode::File(id));
                        Ok(id)
                    }
                });
                prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want.map(|_| ()), "{}", when);
                if let (Ok((attr, fh)), Ok(file)) = (got, want) {
                    if *truncate {
                        model.data[file].clear();
                    }
                    handles.push(OpenHandle {
                        fh,
                        ino: attr.ino,
                        file,
                        append: *append,
                    });
                }
            }
            Op::Open { path, truncate, append } => {
                let mode = OpenMode {
                    read: true,
                    write: true,
                    truncate: *truncate,
                    append: *append,
                };
                let got = vfs_ino(&vfs, path).and_then(|ino| errno(vfs.open(ino, mode)).map(|fh| (ino, fh)));
                let want = model.file_at(path);
                prop_assert_eq!(got.map(|_| ()), want.map(|_| ()), "{}", when);
                if let (Ok((ino, fh)), Ok(file)) = (got, want) {
                    if *truncate {
                        model.data[file].clear();
                    }
                    handles.push(OpenHandle {
                        fh,
                        ino,
                        file,
                        append: *append,
                    });
                }
            }
            Op::Write { h, offset, data } => {
                if handles.is_empty() {
                    continue;
                }
                let handle = &handles[h % handles.len()];
                let n = vfs.write(handle.fh, *offset, data);
                prop_assert_eq!(n, Ok(data.len() as u32), "{}", when);
                let at = if handle.append {
                    model.data[handle.file].len()
                } else {
                    *offset as usize
                };
                model.write(handle.file, at, data);
            }
            Op::TruncateHandle { h, size } => {
                if handles.is_empty() {
                    continue;
                }
                let handle = &handles[h % handles.len()];
                let attr = vfs.setattr(
                    handle.ino,
                    Some(handle.fh),
                    SetAttr {
                        size: Some(*size),
                        ..Default::default()
                    },
                );
                prop_assert!(attr.as_ref().is_ok_and(|a| a.size == *size), "{}: {:?}", when, attr);
                model.data[handle.file].resize(*size as usize, 0);
            }
            Op::TruncatePath { path, size } => {
                let got = vfs_ino(&vfs, path).and_then(|ino| {
                    errno(vfs.setattr(
                        ino,
                        None,
                        SetAttr {
                            size: Some(*size),
                            ..Default::default()
                        },
                    ))
                });
                let want = model.file_at(path);
                prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want.map(|_| ()), "{}", when);
                if let Ok(id) = want {
                    model.data[id].resize(*size as usize, 0);
                }
            }
            Op::Flush { h } => {
                if handles.is_empty() {
                    continue;
                }
                let fh = handles[h % handles.len()].fh;
                prop_assert_eq!(vfs.flush(fh), Ok(()), "{}", when);
            }
            Op::Close { h } => {
                if handles.is_empty() {
                    continue;
                }
                let handle = handles.remove(h % handles.len());
                prop_assert_eq!(vfs.flush(handle.fh), Ok(()), "{}", when);
                prop_assert_eq!(vfs.release(handle.fh), Ok(()), "{}", when);
            }
            Op::Rename { from, to, no_replace } => {
                let got = vfs_parent(&vfs, from).and_then(|(p, n)| {
                    let (np, nn) = vfs_parent(&vfs, to)?;
                    errno(vfs.rename(p, &n, np, &nn, *no_replace))
                });
                let want = model.rename(from, to, *no_replace);
                prop_assert_eq!(got, want, "{}", when);
            }
            Op::Unlink { path } => {
                let got = vfs_parent(&vfs, path).and_then(|(p, n)| errno(vfs.unlink(p, &n)));
                let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                    None => Err(libc::ENOENT),
                    Some(MNode::Dir) => Err(libc::EISDIR),
                    Some(MNode::File(_)) => {
                        model.tree.remove(path);
                        Ok(())
                    }
                });
                prop_assert_eq!(got, want, "{}", when);
            }
            Op::Mkdir { path } => {
                let got = vfs_parent(&vfs, path).and_then(|(p, n)| errno(vfs.mkdir(p, &n, 0o755)).map(|_| ()));
                let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                    Some(_) => Err(libc::EEXIST),
                    None => {
                        model.tree.insert(path.clone(), MNode::Dir);
                        Ok(())
                    }
                });
                prop_assert_eq!(got, want, "{}", when);
            }
            Op::Rmdir { path } => {
                let got = vfs_parent(&vfs, path).and_then(|(p, n)| errno(vfs.rmdir(p, &n)));
                let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                    None => Err(libc::ENOENT),
                    Some(MNode::File(_)) => Err(libc::ENOTDIR),
                    Some(MNode::Dir) if model.has_children(path) => Err(libc::ENOTEMPTY),
                    Some(MNode::Dir) => {
                        model.tree.remove(path);
                        Ok(())
                    }
                });
                prop_assert_eq!(got, want, "{}", when);
            }
            Op::Read { path } => {
                let got = vfs_parent(&vfs, path).and_then(|(parent, name)| {
                    let attr = vfs.lookup(parent, &name).map_err(|e| e.errno)?;
                    if attr.kind == NodeKind::Dir {
                        return Ok(None);
                    }
                    let fh = errno(vfs.open(attr.ino, RO))?;
                    let bytes = read_all(&vfs, fh);
                    errno(vfs.release(fh))?;
                    Ok(Some(bytes))
                });
                let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                    None => Err(libc::ENOENT),
                    Some(MNode::Dir) => Ok(None),
                    Some(MNode::File(id)) => Ok(Some(model.data[*id].clone())),
                });
                prop_assert_eq!(got, want, "{}", when);
            }
        }
    }

    for handle in handles.drain(..) {
        prop_assert_eq!(vfs.flush(handle.fh), Ok(()));
        prop_assert_eq!(vfs.release(handle.fh), Ok(()));
    }
    check_tree(&vfs, &model, "after the sequence")?;
    prop_assert!(
        vfs.unflushed().is_empty(),
        "unflushed after closing everything: {:?}",
        vfs.unflushed()
    );
    let before = plan_summary(&vfs);
    let vfs = if remount {
        drop(vfs);
        let vfs = env.mount(&listing);
        check_tree(&vfs, &model, "after remount")?;
        prop_assert_eq!(plan_summary(&vfs), before, "what would be sent after remount");
        vfs
    } else {
        vfs
    };

    // Every journaled change is plannable (valid paths, known nodes): the
    // deletions now, the rest once the deletions they wait for are done.
    let queued = vfs.queued().len();
    let mut planned = 0;
    for item in plan(&vfs) {
        if let DrainOp::Delete { node, .. } = item.op {
            prop_assert_eq!(vfs.ack_delete(item.uid, item.rev, node, &[]), Ok(()));
            planned += 1;
        }
    }
    let rest = plan(&vfs);
    prop_assert!(
        !rest.iter().any(|i| matches!(i.op, DrainOp::Delete { .. })),
        "{:?}",
        describe(&rest)
    );
    planned += rest.len();
    prop_assert_eq!(planned, queued, "records without a plan: {:?}", vfs.queued());
    Ok(())
}

/// What a drain would send, comparable across mounts (uids are not).
fn plan_summary(vfs: &Vfs) -> Vec<String> {
    let mut out: Vec<String> = plan(vfs)
        .iter()
        .map(|i| match &i.op {
            DrainOp::Commit {
                path,
                node,
                base_version,
                hash,
                mode,
                ..
            } => {
                format!(
                    "commit {path} node {node:?} base {base_version:?} mode {mode:o} {}",
                    &hash.as_str()[..8]
                )
            }
            DrainOp::Delete { node, path, recursive } => format!("delete {path} node {node} recursive {recursive}"),
            DrainOp::Rename { node, from, to } => format!("rename {from} -> {to} node {node}"),
            DrainOp::Mkdir { path, mode } => format!("mkdir {path} mode {mode:o}"),
            DrainOp::Forget => "forget".into(),
        })
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn vfs_matches_model(ops in any_ops(), with_server in any::<bool>()) {
        run_model(&ops, with_server, false)?;
    }

    #[test]
    fn journal_replay_rebuilds_the_tree(ops in any_ops(), with_server in any::<bool>()) {
        run_model(&ops, with_server, true)?;
    }
}

// ----- editor-save patterns -----

const DOC: &[u8] = b"# Doc\nversion three\n";

/// A mount whose server tree has `doc.md` (node 10, version 3).
fn doc_env() -> (Env, TreeListing) {
    let env = Env::new();
    let listing = tree_listing(3, vec![file_entry(&env.source, "doc.md", 10, 3, DOC)]);
    (env, listing)
}

fn only_commit(items: &[DrainItem]) -> (String, Option<i64>, Option<i64>, BlobHash, u32, ContentSource) {
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

fn assert_commit_on_doc(vfs: &Vfs, bytes: &[u8]) {
    let (path, node, base, hash, _, source) = only_commit(&plan(vfs));
    assert_eq!(path, "doc.md");
    assert_eq!(node, Some(10));
    assert_eq!(base, Some(3));
    assert_eq!(hash, BlobHash::of(bytes));
    assert!(
        matches!(source, ContentSource::Inline(ref b) if b == bytes),
        "{source:?}"
    );
    assert_eq!(read_path(vfs, "doc.md"), bytes);
    assert_eq!(vfs.queued().len(), 1, "{:?}", vfs.queued());
}

#[test]
fn save_by_temp_file_and_rename_is_one_commit_on_the_node() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    write_file(&vfs, ROOT_INO, "doc.md.tmp", b"new text\n");
    vfs.rename(ROOT_INO, "doc.md.tmp", ROOT_INO, "doc.md", false).unwrap();
    assert_commit_on_doc(&vfs, b"new text\n");
    assert_eq!(
        vfs.getxattr(ino_of(&vfs, "doc.md").unwrap(), "user.contextfs.node")
            .unwrap(),
        b"10"
    );
    // And it survives a restart the same way.
    drop(vfs);
    let vfs = env.mount(&listing);
    assert_commit_on_doc(&vfs, b"new text\n");
}

#[test]
fn vim_backup_rename_save_is_one_commit_and_no_delete() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    vfs.rename(ROOT_INO, "doc.md", ROOT_INO, "doc.md~", false).unwrap();
    let (_, fh) = vfs
        .create(
            ROOT_INO,
            "doc.md",
            0o644,
            OpenMode {
                write: true,
                ..Default::default()
            },
            true,
        )
        .unwrap();
    vfs.write(fh, 0, b"vim wrote this\n").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    vfs.unlink(ROOT_INO, "doc.md~").unwrap();
    let items = plan(&vfs);
    assert!(
        !items.iter().any(|i| matches!(i.op, DrainOp::Delete { .. })),
        "{:?}",
        describe(&items)
    );
    assert_commit_on_doc(&vfs, b"vim wrote this\n");
    drop(vfs);
    let vfs = env.mount(&listing);
    assert_commit_on_doc(&vfs, b"vim wrote this\n");
    assert_eq!(vfs.lookup(ROOT_INO, "doc.md~").unwrap_err().errno, libc::ENOENT);
}

#[test]
fn os_replace_from_a_hidden_temp_name_is_one_commit() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    // Python's atomic-write helpers: mkstemp in the same directory, then os.replace.
    let (_, fh) = vfs.create(ROOT_INO, ".doc.md.x7f3k2", 0o600, RW, true).unwrap();
    vfs.write(fh, 0, b"python ").unwrap();
    vfs.write(fh, 7, b"wrote\n").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    vfs.rename(ROOT_INO, ".doc.md.x7f3k2", ROOT_INO, "doc.md", false)
        .unwrap();
    assert_commit_on_doc(&vfs, b"python wrote\n");
    let names = root_names(&vfs);
    assert_eq!(names, ["doc.md"]);
}

#[test]
fn rewrite_in_place_with_o_trunc_then_chmod_is_one_commit_with_the_mode() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    let ino = ino_of(&vfs, "doc.md").unwrap();
    let fh = vfs.open(ino, TRUNC).unwrap();
    assert_eq!(vfs.getattr(ino).unwrap().size, 0);
    vfs.write(fh, 0, b"#!/bin/sh\necho hi\n").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    vfs.setattr(
        ino,
        None,
        SetAttr {
            mode: Some(0o100755),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(vfs.getattr(ino).unwrap().mode, 0o755);
    let (path, node, base, hash, mode, _) = only_commit(&plan(&vfs));
    assert_eq!((path.as_str(), node, base, mode), ("doc.md", Some(10), Some(3), 0o755));
    assert_eq!(hash, BlobHash::of(b"#!/bin/sh\necho hi\n"));
}

#[test]
fn unlinking_a_server_file_is_one_delete() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    vfs.unlink(ROOT_INO, "doc.md").unwrap();
    let items = plan(&vfs);
    assert_eq!(items.len(), 1, "{:?}", describe(&items));
    match &items[0].op {
        DrainOp::Delete { node, path, recursive } => {
            assert_eq!((*node, path.as_str(), *recursive), (10, "doc.md", false))
        }
        other => panic!("expected a delete, got {other:?}"),
    }
    drop(vfs);
    let vfs = env.mount(&listing);
    assert_eq!(vfs.lookup(ROOT_INO, "doc.md").unwrap_err().errno, libc::ENOENT);
    assert_eq!(plan(&vfs).len(), 1);
}

#[test]
fn a_new_file_unlinked_before_it_synced_leaves_nothing() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    write_file(&vfs, ROOT_INO, "scratch.txt", b"scratch");
    assert_eq!(env.durable_records(vfs, &listing), 1);
    let vfs = env.mount(&listing);
    assert_eq!(plan(&vfs).len(), 1);
    vfs.unlink(ROOT_INO, "scratch.txt").unwrap();
    assert!(plan(&vfs).is_empty(), "{:?}", describe(&plan(&vfs)));
    assert!(vfs.queued().is_empty());
    assert_eq!(env.durable_records(vfs, &listing), 0);
}

#[test]
fn o_trunc_alone_on_a_server_file_is_a_change() {
    // `: > doc.md` opens with O_TRUNC and writes nothing.
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    let ino = ino_of(&vfs, "doc.md").unwrap();
    let fh = vfs.open(ino, TRUNC).unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(read_path(&vfs, "doc.md"), b"");
    let (_, node, base, hash, _, _) = only_commit(&plan(&vfs));
    assert_eq!((node, base, hash), (Some(10), Some(3), BlobHash::of(b"")));
    drop(vfs);
    let vfs = env.mount(&listing);
    assert_eq!(read_path(&vfs, "doc.md"), b"");
}

// ----- acknowledgements and status -----

#[test]
fn status_goes_pending_queued_then_merged_with_the_merged_bytes() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    let ino = ino_of(&vfs, "doc.md").unwrap();
    assert_eq!(status(&vfs, ino), "clean");
    let fh = vfs.open(ino, RW).unwrap();
    vfs.write(fh, DOC.len() as u64, b"local line\n").unwrap();
    assert_eq!(status(&vfs, ino), "pending");
    vfs.flush(fh).unwrap();
    assert_eq!(status(&vfs, ino), "queued");
    vfs.release(fh).unwrap();
    assert_eq!(status(&vfs, ino), "queued");

    let items = plan(&vfs);
    let (_, _, _, committed, _, _) = only_commit(&items);
    let merged: &[u8] = b"# Doc\nversion three\nremote line\nlocal line\n";
    let merged_hash = env.source.put(merged);
    let v = version_info(
        10,
        5,
        "doc.md",
        NodeKind::File,
        merged_hash,
        merged.len() as u64,
        VersionStatus::Merged,
    );
    vfs.ack_commit(items[0].uid, items[0].rev, &committed, &v).unwrap();

    assert_eq!(status(&vfs, ino), "merged");
    assert_eq!(vfs.getattr(ino).unwrap().size, merged.len() as u64);
    assert_eq!(read_path(&vfs, "doc.md"), merged);
    assert_eq!(vfs.getxattr(ino, "user.contextfs.version").unwrap(), b"5");
    assert!(plan(&vfs).is_empty());
    assert_eq!(vfs.outcomes(), vec![("doc.md".to_string(), VersionStatus::Merged)]);
    assert_eq!(env.durable_records(vfs, &listing), 0);
}

#[test]
fn clean_ack_reads_the_committed_bytes_from_the_cache() {
    let env = Env::new();
    let vfs = env.mount(&empty_listing());
    let ino = write_file(&vfs, ROOT_INO, "new.md", b"fresh\n");
    let items = plan(&vfs);
    let (path, node, base, hash, _, _) = only_commit(&items);
    assert_eq!((path.as_str(), node, base), ("new.md", None, None));
    let v = version_info(40, 1, "new.md", NodeKind::File, hash.clone(), 6, VersionStatus::Clean);
    vfs.ack_commit(items[0].uid, items[0].rev, &hash, &v).unwrap();
    assert_eq!(status(&vfs, ino), "clean");
    let calls = env.source.calls();
    assert_eq!(read_path(&vfs, "new.md"), b"fresh\n");
    assert_eq!(
        env.source.calls(),
        calls,
        "the acknowledged bytes were seeded into the cache"
    );
    // Nothing is left behind in the staging area.
    let staged: Vec<_> = std::fs::read_dir(env.state_dir.join("staging")).unwrap().collect();
    assert!(staged.is_empty(), "left in staging: {staged:?}");
    // Later writes stage the file again and commit on the new node...
    let fh = vfs.open(ino, RW).unwrap();
    vfs.write(fh, 0, b"FRESH").unwrap();
    vfs.release(fh).unwrap();
    let (_, node, base, _, _, _) = only_commit(&plan(&vfs));
    assert_eq!((node, base), (Some(40), Some(1)));
    // ...in a copy: the cached blob still holds the bytes of its hash.
    let mut cached = Vec::new();
    env.cache
        .open_blob(&hash)
        .unwrap()
        .expect("still cached")
        .read_to_end(&mut cached)
        .unwrap();
    assert_eq!(cached, b"fresh\n");
}

#[test]
fn an_ack_for_an_older_revision_keeps_newer_changes() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    let ino = ino_of(&vfs, "doc.md").unwrap();
    let fh = vfs.open(ino, RW).unwrap();
    vfs.write(fh, 0, b"first").unwrap();
    vfs.flush(fh).unwrap();
    let items = plan(&vfs);
    let (_, _, _, first, _, _) = only_commit(&items);
    vfs.write(fh, 0, b"SECOND").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    let v = version_info(10, 4, "doc.md", NodeKind::File, first.clone(), 20, VersionStatus::Clean);
    vfs.ack_commit(items[0].uid, items[0].rev, &first, &v).unwrap();
    assert_eq!(status(&vfs, ino), "queued");
    let mut expected = DOC.to_vec();
    expected[..6].copy_from_slice(b"SECOND");
    assert_eq!(read_path(&vfs, "doc.md"), expected);
    let (_, node, base, hash, _, _) = only_commit(&plan(&vfs));
    assert_eq!((node, base, hash), (Some(10), Some(4), BlobHash::of(&expected)));
}

#[test]
fn reading_a_server_file_with_the_server_down_is_eio_and_writes_need_no_server() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(BlobCache::open(&tmp.path().join("cache"), 1 << 30).unwrap());
    let config = VfsConfig {
        state_dir: tmp.path().join("state"),
        read_only: false,
        agent_id: None,
    };
    let vfs = Vfs::new(config, cache, Arc::new(FailSource)).unwrap();
    let entry = TreeEntry {
        path: "remote.md".into(),
        id: 1,
        kind: NodeKind::File,
        mode: 0o644,
        size: 3,
        hash: BlobHash::of(b"abc"),
        version: 1,
        modified_at: TIME.into(),
    };
    vfs.load(&tree_listing(1, vec![entry]), None).unwrap();
    let ino = ino_of(&vfs, "remote.md").unwrap();
    assert_eq!(vfs.open(ino, RO).unwrap_err().errno, libc::EIO);
    // O_TRUNC needs no old bytes.
    let fh = vfs.open(ino, TRUNC).unwrap();
    vfs.write(fh, 0, b"offline").unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(read_path(&vfs, "remote.md"), b"offline");
    write_file(&vfs, ROOT_INO, "local.md", b"local");
    assert_eq!(read_path(&vfs, "local.md"), b"local");
}

// ----- kernel passthrough -----

fn is_passthrough(vfs: &Vfs, fh: u64) -> bool {
    matches!(vfs.kernel_io(fh).unwrap(), KernelIo::Passthrough { .. })
}

#[test]
fn passthrough_is_only_for_clean_reads_and_writers_wait_for_its_readers() {
    let env = Env::new();
    let listing = tree_listing(1, vec![file_entry(&env.source, "data.bin", 10, 1, b"version one")]);
    let vfs = env.mount(&listing);
    let data = ino_of(&vfs, "data.bin").unwrap();

    // Not agreed with the kernel yet, or a writable file without --passthrough: cached.
    let fh = vfs.open(data, RO).unwrap();
    assert!(!is_passthrough(&vfs, fh));
    vfs.release(fh).unwrap();
    vfs.enable_passthrough(true);
    let fh = vfs.open(data, RO).unwrap();
    assert!(!is_passthrough(&vfs, fh), "writable files need --passthrough");
    vfs.release(fh).unwrap();

    vfs.set_passthrough_policy(PassthroughPolicy::All);
    let r1 = vfs.open(data, RO).unwrap();
    let r2 = vfs.open(data, RO).unwrap();
    let (KernelIo::Passthrough { epoch: e1, .. }, KernelIo::Passthrough { epoch: e2, .. }) =
        (vfs.kernel_io(r1).unwrap(), vfs.kernel_io(r2).unwrap())
    else {
        panic!("both readers should be passthrough");
    };
    assert_eq!(e1, e2, "one backing file per inode");
    // A writer cannot share the readers' blob file: it waits, then ETXTBSY.
    let started = std::time::Instant::now();
    assert_eq!(errno(vfs.open(data, RW)), Err(libc::ETXTBSY));
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "it waited for the readers"
    );
    assert_eq!(
        errno(vfs.setattr(
            data,
            None,
            SetAttr {
                size: Some(0),
                ..Default::default()
            }
        )),
        Err(libc::ETXTBSY),
        "truncate(2) too"
    );
    assert_eq!(read_path(&vfs, "data.bin"), b"version one", "nothing changed");
    vfs.release(r1).unwrap();
    assert_eq!(
        vfs.release_kernel(r2).unwrap(),
        Some(e1),
        "the last reader ends the epoch"
    );

    // Readers gone: the writer goes ahead, and its handle is a cached one.
    let w = vfs.open(data, RW).unwrap();
    assert!(!is_passthrough(&vfs, w));
    vfs.write(w, 0, b"VERSION").unwrap();
    // Local, uncommitted content is served by the mount, never passthrough.
    let r3 = vfs.open(data, RO).unwrap();
    assert!(!is_passthrough(&vfs, r3));
    vfs.release(r3).unwrap();
    vfs.release(w).unwrap();
}

#[test]
fn a_remote_change_under_passthrough_readers_moves_the_file_to_a_new_inode() {
    let env = Env::new();
    let listing = tree_listing(1, vec![file_entry(&env.source, "doc.md", 10, 1, b"old bytes")]);
    let vfs = env.mount(&listing);
    vfs.enable_passthrough(true);
    vfs.set_passthrough_policy(PassthroughPolicy::All);
    let old_ino = ino_of(&vfs, "doc.md").unwrap();
    let reader = vfs.open(old_ino, RO).unwrap();
    assert!(is_passthrough(&vfs, reader));

    let new: &[u8] = b"new bytes from elsewhere";
    vfs.apply_events(&[event(2, 10, 2, "doc.md", env.source.put(new), new.len() as u64, false)]);
    let new_ino = ino_of(&vfs, "doc.md").unwrap();
    assert_ne!(new_ino, old_ino, "the kernel pins the old inode to the old blob");
    assert_eq!(read_path(&vfs, "doc.md"), new, "new opens read the new version");
    let fresh = vfs.open(new_ino, RO).unwrap();
    assert!(is_passthrough(&vfs, fresh), "with a backing file of its own");
    assert_eq!(
        vfs.read(reader, 0, 100).unwrap(),
        b"old bytes",
        "the open reader keeps its bytes"
    );
    assert_eq!(vfs.getattr(old_ino).unwrap().nlink, 0);
    vfs.release(reader).unwrap();
    vfs.release(fresh).unwrap();
    assert!(
        vfs.getattr(old_ino).is_err(),
        "the old inode is forgotten with its last handle"
    );
    assert_eq!(vfs.getxattr(new_ino, "user.contextfs.version").unwrap(), b"2");
    // The node keeps working as one: a local edit is a change of node 10.
    let fh = vfs.open(new_ino, TRUNC).unwrap();
    vfs.write(fh, 0, b"local edit").unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(read_path(&vfs, "doc.md"), b"local edit");
    let queued = vfs.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1.node, Some(10));
}

#[test]
fn read_only_files_use_passthrough_without_the_flag() {
    let env = Env::new();
    let listing = tree_listing(1, vec![file_entry(&env.source, "spec.md", 10, 1, b"spec")]);
    let config = VfsConfig {
        state_dir: env.state_dir.clone(),
        read_only: true,
        agent_id: None,
    };
    let vfs = Vfs::new(config, env.cache.clone(), env.source.clone()).unwrap();
    vfs.load(&listing, None).unwrap();
    vfs.enable_passthrough(true);
    let fh = vfs.open(ino_of(&vfs, "spec.md").unwrap(), RO).unwrap();
    assert!(is_passthrough(&vfs, fh));
    vfs.release(fh).unwrap();
}

// ----- remote changes -----

#[test]
fn remote_changes_reach_new_opens_but_not_open_handles() {
    let env = Env::new();
    let listing = tree_listing(
        3,
        vec![
            file_entry(&env.source, "doc.md", 10, 3, b"v3 bytes"),
            file_entry(&env.source, "other.md", 11, 1, b"other v1"),
        ],
    );
    let vfs = env.mount(&listing);
    let doc = ino_of(&vfs, "doc.md").unwrap();
    let old = vfs.open(doc, RO).unwrap();
    assert_eq!(vfs.read(old, 0, 100).unwrap(), b"v3 bytes");

    let v4: &[u8] = b"v4 bytes, longer";
    vfs.apply_events(&[event(4, 10, 4, "doc.md", env.source.put(v4), v4.len() as u64, false)]);
    assert_eq!(vfs.cursor(), 4);
    assert_eq!(vfs.getattr(doc).unwrap().size, v4.len() as u64);
    assert_eq!(read_path(&vfs, "doc.md"), v4);
    assert_eq!(
        vfs.read(old, 0, 100).unwrap(),
        b"v3 bytes",
        "a handle opened before keeps its bytes"
    );
    vfs.release(old).unwrap();
    assert_eq!(vfs.getxattr(doc, "user.contextfs.version").unwrap(), b"4");
    // Old news (our own change coming back) changes nothing.
    vfs.apply_events(&[event(5, 10, 3, "doc.md", env.source.put(b"stale"), 5, false)]);
    assert_eq!(read_path(&vfs, "doc.md"), v4);

    // A file with queued local changes keeps them.
    let other = ino_of(&vfs, "other.md").unwrap();
    let fh = vfs.open(other, TRUNC).unwrap();
    vfs.write(fh, 0, b"local edit").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    vfs.apply_events(&[event(6, 11, 2, "other.md", env.source.put(b"remote edit"), 11, false)]);
    assert_eq!(read_path(&vfs, "other.md"), b"local edit");
    assert_eq!(status(&vfs, other), "queued");
    // ... and so does one with unflushed writes.
    let fh = vfs.open(other, RW).unwrap();
    vfs.write(fh, 0, b"LOCAL").unwrap();
    vfs.apply_events(&[event(7, 11, 3, "other.md", env.source.put(b"remote again"), 12, false)]);
    assert_eq!(vfs.read(fh, 0, 100).unwrap(), b"LOCAL edit");
    vfs.release(fh).unwrap();

    // Remote create, then remote delete.
    vfs.apply_events(&[event(8, 12, 1, "new.md", env.source.put(b"from elsewhere"), 14, false)]);
    let names = root_names(&vfs);
    assert_eq!(names, ["doc.md", "new.md", "other.md"]);
    assert_eq!(read_path(&vfs, "new.md"), b"from elsewhere");
    vfs.apply_events(&[event(9, 12, 2, "new.md", BlobHash::of(b""), 0, true)]);
    let names = root_names(&vfs);
    assert_eq!(names, ["doc.md", "other.md"]);
    assert_eq!(vfs.lookup(ROOT_INO, "new.md").unwrap_err().errno, libc::ENOENT);
    assert_eq!(vfs.cursor(), 9);
    // Nothing of this is a local change.
    assert_eq!(describe(&plan(&vfs)), ["commit other.md"]);
}

#[test]
fn a_remote_rename_moves_a_clean_file() {
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![dir_entry("docs", 1), file_entry(&env.source, "docs/a.md", 2, 1, b"aaa")],
    );
    let vfs = env.mount(&listing);
    let ino = ino_of(&vfs, "docs/a.md").unwrap();
    let e = rename_event(event(2, 2, 2, "b.md", BlobHash::of(b"aaa"), 3, false), "docs/a.md");
    vfs.apply_events(&[e]);
    assert_eq!(ino_of(&vfs, "b.md").unwrap(), ino);
    assert_eq!(
        vfs.lookup(ino_of(&vfs, "docs").unwrap(), "a.md").unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(read_path(&vfs, "b.md"), b"aaa");
}

// ----- journal replay corner cases -----

#[test]
fn replay_puts_children_in_a_local_directory_renamed_after_they_were_written() {
    let env = Env::new();
    let vfs = env.mount(&empty_listing());
    let dir = vfs.mkdir(ROOT_INO, "notes", 0o755).unwrap().ino;
    write_file(&vfs, dir, "todo.md", b"- replay\n");
    // Journal timestamps have millisecond resolution: make the order visible.
    std::thread::sleep(std::time::Duration::from_millis(5));
    vfs.rename(ROOT_INO, "notes", ROOT_INO, "journal", false).unwrap();
    drop(vfs);
    let vfs = env.mount(&empty_listing());
    assert_eq!(read_path(&vfs, "journal/todo.md"), b"- replay\n");
    assert_eq!(vfs.lookup(ROOT_INO, "todo.md").unwrap_err().errno, libc::ENOENT);
}

#[test]
fn replay_of_swapped_server_files_keeps_both_contents() {
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![
            file_entry(&env.source, "a", 1, 1, b"AAA"),
            file_entry(&env.source, "b", 2, 1, b"BBB"),
        ],
    );
    let vfs = env.mount(&listing);
    vfs.rename(ROOT_INO, "a", ROOT_INO, "tmp", false).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3));
    vfs.rename(ROOT_INO, "b", ROOT_INO, "a", false).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3));
    vfs.rename(ROOT_INO, "tmp", ROOT_INO, "b", false).unwrap();
    assert_eq!(
        (read_path(&vfs, "a"), read_path(&vfs, "b")),
        (b"BBB".to_vec(), b"AAA".to_vec())
    );
    drop(vfs);
    let vfs = env.mount(&listing);
    assert_eq!(
        (read_path(&vfs, "a"), read_path(&vfs, "b")),
        (b"BBB".to_vec(), b"AAA".to_vec())
    );
    assert_eq!(
        vfs.getxattr(ino_of(&vfs, "a").unwrap(), "user.contextfs.node").unwrap(),
        b"2"
    );
}

#[test]
fn a_file_in_a_directory_that_reached_the_server_replays_into_it() {
    let env = Env::new();
    let vfs = env.mount(&empty_listing());
    let dir = vfs.mkdir(ROOT_INO, "d", 0o755).unwrap().ino;
    let items = plan(&vfs);
    assert_eq!(describe(&items), ["mkdir d"]);
    write_file(&vfs, dir, "f.md", b"inside d");
    let v = version_info(50, 1, "d", NodeKind::Dir, BlobHash::of(b""), 0, VersionStatus::Clean);
    vfs.ack_namespace(items[0].uid, items[0].rev, &v).unwrap();
    assert_eq!(describe(&plan(&vfs)), ["commit d/f.md"]);
    // Crash before the file's commit (after the round's journal sync); the
    // server now lists `d`.
    vfs.make_journal_durable().unwrap();
    drop(vfs);
    let listing = tree_listing(2, vec![dir_entry("d", 50)]);
    let vfs = env.mount(&listing);
    assert_eq!(read_path(&vfs, "d/f.md"), b"inside d");
    assert_eq!(vfs.lookup(ROOT_INO, "f.md").unwrap_err().errno, libc::ENOENT);
    assert_eq!(describe(&plan(&vfs)), ["commit d/f.md"]);
}

#[test]
fn acknowledging_one_of_two_identical_large_files_keeps_the_others_bytes() {
    let env = Env::new();
    let vfs = env.mount(&empty_listing());
    let big = vec![b'x'; 100_000];
    write_file(&vfs, ROOT_INO, "one.bin", &big);
    write_file(&vfs, ROOT_INO, "two.bin", &big);
    let items = plan(&vfs);
    assert_eq!(items.len(), 2);
    let one = items.iter().find(|i| i.describe() == "commit one.bin").unwrap();
    let hash = BlobHash::of(&big);
    let v = version_info(
        60,
        1,
        "one.bin",
        NodeKind::File,
        hash.clone(),
        big.len() as u64,
        VersionStatus::Clean,
    );
    vfs.ack_commit(one.uid, one.rev, &hash, &v).unwrap();
    let items = plan(&vfs);
    let (path, _, _, _, _, source) = only_commit(&items);
    assert_eq!(path, "two.bin");
    match source {
        ContentSource::File(file) => assert_eq!(std::fs::read(file).unwrap(), big),
        other => panic!("expected a pending file, got {other:?}"),
    }
    drop(vfs);
    let listing = tree_listing(2, vec![file_entry(&env.source, "one.bin", 60, 1, &big)]);
    let vfs = env.mount(&listing);
    assert_eq!(read_path(&vfs, "two.bin"), big);
}

/// A server tree of directory `d` (node 20) holding `d/f.md` (node 21, version 1).
fn dir_d_with_f_md(env: &Env) -> TreeListing {
    tree_listing(
        1,
        vec![dir_entry("d", 20), file_entry(&env.source, "d/f.md", 21, 1, b"f")],
    )
}

/// The server's acknowledgement of `item`, the rename of directory `d`
/// (node 20) to `e` as its version 2.
fn ack_rename_of_d_to_e(vfs: &Vfs, item: &DrainItem) {
    let v = version_info(20, 2, "e", NodeKind::Dir, BlobHash::of(b""), 0, VersionStatus::Clean);
    vfs.ack_namespace(item.uid, item.rev, &v).unwrap();
}

#[test]
fn editing_a_file_in_a_renamed_server_directory_plans_no_rename_of_the_file() {
    let env = Env::new();
    let vfs = env.mount(&dir_d_with_f_md(&env));
    vfs.rename(ROOT_INO, "d", ROOT_INO, "e", false).unwrap();
    write_at(&vfs, "e/f.md", 1, b"+");
    let items = plan(&vfs);
    assert_eq!(describe(&items), ["rename d -> e", "commit e/f.md"]);
    // After the directory's rename reached the server, the file is just a commit.
    ack_rename_of_d_to_e(&vfs, &items[0]);
    let (path, node, base, _, _, _) = only_commit(&plan(&vfs));
    assert_eq!((path.as_str(), node, base), ("e/f.md", Some(21), Some(1)));
}

#[test]
fn deleting_a_file_in_a_renamed_server_directory_deletes_it_where_the_rename_put_it() {
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![
            dir_entry("d", 20),
            file_entry(&env.source, "d/f.md", 21, 1, b"f"),
            file_entry(&env.source, "d/x.md", 22, 1, b"x"),
        ],
    );
    let vfs = env.mount(&listing);
    vfs.rename(ROOT_INO, "d", ROOT_INO, "e", false).unwrap();
    vfs.unlink(ino_of(&vfs, "e").unwrap(), "x.md").unwrap();
    let items = plan(&vfs);
    // The deletion runs after the rename, so it names the node's new path.
    assert_eq!(describe(&items), ["rename d -> e", "delete e/x.md"]);
    ack_rename_of_d_to_e(&vfs, &items[0]);
    assert_eq!(describe(&plan(&vfs)), ["delete e/x.md"]);
    // A restart (after the round's journal sync) before the deletion reached
    // the server keeps it that way.
    vfs.make_journal_durable().unwrap();
    drop(vfs);
    let listing = tree_listing(
        2,
        vec![
            dir_entry("e", 20),
            file_entry(&env.source, "e/f.md", 21, 1, b"f"),
            file_entry(&env.source, "e/x.md", 22, 1, b"x"),
        ],
    );
    let vfs = env.mount(&listing);
    assert_eq!(describe(&plan(&vfs)), ["delete e/x.md"]);
    assert_eq!(vfs.readdir(ino_of(&vfs, "e").unwrap()).unwrap().len(), 1);
}

#[test]
fn editing_a_file_after_its_directory_was_renamed_remotely_is_a_plain_commit() {
    let env = Env::new();
    let vfs = env.mount(&dir_d_with_f_md(&env));
    let mut e = event(2, 20, 2, "e", BlobHash::of(b""), 0, false);
    e.kind = NodeKind::Dir;
    vfs.apply_events(&[rename_event(e, "d")]);
    write_at(&vfs, "e/f.md", 1, b"+");
    let (path, node, base, _, _, _) = only_commit(&plan(&vfs));
    assert_eq!((path.as_str(), node, base), ("e/f.md", Some(21), Some(1)));
}

#[test]
fn chmod_of_a_server_directory_sends_no_commit() {
    // `cp -a`, `tar x` and `chmod -R` change directory modes; the server's
    // commit route refuses directories, so such a record would never drain.
    let env = Env::new();
    let listing = tree_listing(1, vec![dir_entry("d", 20)]);
    let vfs = env.mount(&listing);
    let d = ino_of(&vfs, "d").unwrap();
    vfs.setattr(
        d,
        None,
        SetAttr {
            mode: Some(0o700),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(vfs.getattr(d).unwrap().mode, 0o700);
    let items = plan(&vfs);
    assert!(
        !items.iter().any(|i| matches!(i.op, DrainOp::Commit { .. })),
        "{:?}",
        describe(&items)
    );
    // Renamed too: the rename is sent, and nothing after it.
    vfs.rename(ROOT_INO, "d", ROOT_INO, "e", false).unwrap();
    let items = plan(&vfs);
    assert_eq!(describe(&items), ["rename d -> e"]);
    ack_rename_of_d_to_e(&vfs, &items[0]);
    assert!(
        plan(&vfs).iter().all(|i| matches!(i.op, DrainOp::Forget)),
        "{:?}",
        describe(&plan(&vfs))
    );
}

#[test]
fn recreating_a_deleted_path_waits_for_the_deletion() {
    // Sent before the deletion, the new file would be written into the old
    // node (the server merges a base-less commit into it, and mkdir of an
    // existing directory returns it), and the deletion would then remove it.
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![
            dir_entry("b", 2),
            file_entry(&env.source, "b/a", 3, 1, b"old a"),
            file_entry(&env.source, "doc.md", 10, 3, DOC),
        ],
    );
    let vfs = env.mount(&listing);
    // rm -rf b && mkdir b && echo new > b/new
    let b = ino_of(&vfs, "b").unwrap();
    vfs.unlink(b, "a").unwrap();
    vfs.rmdir(ROOT_INO, "b").unwrap();
    let b = vfs.mkdir(ROOT_INO, "b", 0o755).unwrap().ino;
    write_file(&vfs, b, "new", b"new");
    // rm doc.md && echo new > doc.md
    vfs.unlink(ROOT_INO, "doc.md").unwrap();
    write_file(&vfs, ROOT_INO, "doc.md", b"recreated");

    let items = plan(&vfs);
    let mut deletes = describe(&items);
    deletes.sort();
    assert_eq!(deletes, ["delete b", "delete b/a", "delete doc.md"]);
    assert_eq!(items[0].describe(), "delete b/a", "children before their directory");
    for item in &items {
        let DrainOp::Delete { node, .. } = item.op else {
            unreachable!()
        };
        vfs.ack_delete(item.uid, item.rev, node, &[]).unwrap();
    }
    let mut next = describe(&plan(&vfs));
    next.sort();
    assert_eq!(next, ["commit b/new", "commit doc.md", "mkdir b"]);
    assert_eq!(read_path(&vfs, "b/new"), b"new");
    assert_eq!(read_path(&vfs, "doc.md"), b"recreated");
}
