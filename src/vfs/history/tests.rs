//! The history view over a real [`Vfs`] (tree, cache, blob fetches) and a
//! scripted version source standing in for the server's history route.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Mutex;

use super::*;
use crate::api::{SkillFile, SkillInfo, SkillsListing, TreeEntry, TreeListing, VersionOp, VersionStatus};
use crate::cache::{BlobCache, CacheError, CacheFill};
use crate::vfs::{BlobSource, Durability, Vfs, VfsConfig};

/// The server's blobs, counting downloads.
#[derive(Default)]
struct Blobs {
    bytes: Mutex<HashMap<BlobHash, Vec<u8>>>,
    fetches: AtomicUsize,
}

impl Blobs {
    fn put(&self, bytes: &[u8]) -> BlobHash {
        let hash = BlobHash::of(bytes);
        locked(&self.bytes).insert(hash.clone(), bytes.to_vec());
        hash
    }
}

impl BlobSource for Blobs {
    fn fetch(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        match locked(&self.bytes).get(hash).cloned() {
            Some(bytes) => fill.write(&bytes),
            None => Err(CacheError::Fetch {
                hash: hash.clone(),
                message: "not on the test server".into(),
            }),
        }
    }
}

/// Version lists by path, as the history route would answer.
#[derive(Default)]
struct Versions {
    by_path: Mutex<HashMap<String, Vec<VersionInfo>>>,
    down: AtomicBool,
    calls: AtomicUsize,
}

impl VersionSource for Versions {
    fn versions(&self, path: &WsPath) -> Result<Option<Vec<VersionInfo>>, HistoryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(HistoryError::Server("connection refused".into()));
        }
        Ok(locked(&self.by_path).get(path.as_str()).cloned())
    }
}

fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

fn version(node: i64, number: i64, path: &str, bytes: &[u8], at: i64) -> VersionInfo {
    VersionInfo {
        node,
        version: number,
        path: path.to_string(),
        kind: NodeKind::File,
        mode: 0o644,
        hash: BlobHash::of(bytes),
        size: bytes.len() as u64,
        op: if number == 1 {
            VersionOp::Create
        } else {
            VersionOp::Write
        },
        status: VersionStatus::Clean,
        deleted: false,
        parent: (number > 1).then(|| number - 1),
        author: "t".into(),
        agent_id: None,
        message: None,
        created_at: time(at),
        mtime: None,
        atime: None,
    }
}

fn entry(path: &str, kind: NodeKind, bytes: &[u8], id: i64, version: i64) -> TreeEntry {
    TreeEntry {
        path: path.to_string(),
        id,
        kind,
        mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
        size: bytes.len() as u64,
        hash: BlobHash::of(bytes),
        version,
        modified_at: time(0),
        accessed_at: None,
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    cache_dir: std::path::PathBuf,
    blobs: Arc<Blobs>,
    versions: Arc<Versions>,
    vfs: Arc<Vfs>,
    history: History,
}

const PLAN: [&[u8]; 3] = [b"one\n", b"one\ntwo\n", b"one\ntwo\nthree\n"];

/// A mount of `notes/plan.md` (3 versions), `top.txt` (1 version), a
/// `.contextfs` nowhere, and the published skills at `skills/`.
fn fixture(fresh_for: Duration) -> Fixture {
    let tmp = tempfile::tempdir().expect("temp dir");
    let cache_dir = tmp.path().join("cache");
    let cache = Arc::new(BlobCache::open(&cache_dir, 1 << 30).expect("cache"));
    let blobs = Arc::new(Blobs::default());
    let config = VfsConfig {
        state_dir: tmp.path().join("state"),
        read_only: false,
        agent_id: None,
        durability: Durability::DEFAULT,
    };
    let vfs = Arc::new(Vfs::new(config, cache, blobs.clone()).expect("vfs"));
    let listing = TreeListing {
        cursor: 9,
        entries: vec![
            entry("notes", NodeKind::Dir, b"", 1, 1),
            entry("notes/plan.md", NodeKind::File, PLAN[2], 2, 3),
            entry("top.txt", NodeKind::File, b"top", 3, 1),
        ],
    };
    let skill = b"---\nname: s\n---\n";
    let skills = SkillsListing {
        published_at: Some(time(0)),
        skills: vec![SkillInfo {
            name: "s".into(),
            description: String::new(),
            files: vec![SkillFile {
                path: WsPath::parse("s/SKILL.md").expect("path"),
                hash: BlobHash::of(skill),
                size: skill.len() as u64,
                mode: 0o644,
            }],
        }],
    };
    vfs.load(&listing, Some(&skills)).expect("load");
    let versions = Arc::new(Versions::default());
    let plan: Vec<VersionInfo> = (0..3)
        .map(|i| version(2, i as i64 + 1, "notes/plan.md", PLAN[i], i as i64 * 10))
        .collect();
    for bytes in PLAN {
        blobs.put(bytes);
    }
    blobs.put(b"top");
    locked(&versions.by_path).insert("notes/plan.md".into(), plan);
    locked(&versions.by_path).insert("top.txt".into(), vec![version(3, 1, "top.txt", b"top", 5)]);
    let history = History::with_freshness(vfs.clone(), versions.clone(), fresh_for);
    Fixture {
        _tmp: tmp,
        cache_dir,
        blobs,
        versions,
        vfs,
        history,
    }
}

impl Fixture {
    /// The inode at `path` below `history/` ("" is `history` itself).
    fn resolve(&self, path: &str) -> VfsResult<Attr> {
        let mut attr = self.history.lookup(META_INO, HISTORY_DIR)?;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            attr = self.history.lookup(attr.ino, name)?;
        }
        Ok(attr)
    }

    fn names(&self, path: &str) -> Vec<String> {
        let ino = self.resolve(path).expect("resolve").ino;
        self.history
            .readdir(ino)
            .expect("readdir")
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    fn cat(&self, path: &str) -> VfsResult<Vec<u8>> {
        let fh = self.history.open(self.resolve(path)?.ino, false)?;
        let bytes = self.history.read(fh, 0, 1 << 20);
        self.history.release(fh);
        bytes
    }

    fn calls(&self) -> usize {
        self.versions.calls.load(Ordering::SeqCst)
    }
}

fn errno<T: std::fmt::Debug>(r: VfsResult<T>) -> i32 {
    r.expect_err("an error").errno
}

#[test]
fn each_version_is_a_read_only_file_with_its_commit_time() {
    let f = fixture(LIST_FRESH);
    assert_eq!(f.names(""), ["notes", "top.txt"], "skills/ is not the project's");
    assert_eq!(f.names("notes"), ["plan.md"]);
    assert_eq!(f.names("notes/plan.md"), ["1", "2", "3"]);
    for (i, bytes) in PLAN.iter().enumerate() {
        let path = format!("notes/plan.md/{}", i + 1);
        assert_eq!(f.cat(&path).expect("cat"), *bytes, "{path}");
        let attr = f.resolve(&path).expect("stat");
        assert!(is_history_ino(attr.ino));
        assert_eq!(
            (attr.kind, attr.size, attr.mode),
            (NodeKind::File, bytes.len() as u64, 0o444)
        );
        assert_eq!(Some(attr.mtime), crate::vfs::parse_server_time(&time(i as i64 * 10)));
    }
    let dir = f.resolve("notes/plan.md").expect("stat");
    assert_eq!((dir.kind, dir.mode), (NodeKind::Dir, 0o555));
    assert_eq!(
        Some(dir.mtime),
        crate::vfs::parse_server_time(&time(20)),
        "the newest commit"
    );
    assert_eq!(f.history.parent_of(dir.ino), f.resolve("notes").expect("notes").ino);
    assert_eq!(f.history.parent_of(META_INO), ROOT_INO);
    let one = f.resolve("notes/plan.md/1").expect("stat").ino;
    assert_eq!(errno(f.history.open(one, true)), libc::EROFS);
    assert_eq!(errno(f.history.open(dir.ino, false)), libc::EISDIR);
    assert_eq!(errno(f.history.lookup(one, "x")), libc::ENOTDIR);
}

#[test]
fn missing_versions_and_unknown_paths_are_enoent() {
    let f = fixture(LIST_FRESH);
    for bad in ["4", "0", "01", "-1", "+1", "x", "1.0", " 1"] {
        assert_eq!(
            errno(f.resolve(&format!("notes/plan.md/{bad}"))),
            libc::ENOENT,
            "{bad:?}"
        );
    }
    assert_eq!(errno(f.resolve("nothing.md")), libc::ENOENT);
    assert_eq!(errno(f.resolve("notes/nothing.md")), libc::ENOENT);
    assert_eq!(errno(f.history.lookup(META_INO, "other")), libc::ENOENT);
    assert_eq!(
        errno(f.resolve("skills")),
        libc::ENOENT,
        "published skills have no history"
    );
    assert_eq!(errno(f.resolve(&"n".repeat(300))), libc::ENAMETOOLONG);
}

#[test]
fn pruned_and_deleted_versions_are_not_files_but_deleted_files_are_reachable() {
    let f = fixture(LIST_FRESH);
    // Retention pruned 1 and 2; 5 deleted the file, which is gone from the tree.
    let mut gone = vec![
        version(7, 3, "notes/gone.md", b"three", 30),
        version(7, 4, "notes/gone.md", b"four", 40),
        version(7, 5, "notes/gone.md", b"four", 50),
    ];
    gone[2].deleted = true;
    gone[2].op = VersionOp::Delete;
    locked(&f.versions.by_path).insert("notes/gone.md".into(), gone);
    f.blobs.put(b"four");
    assert_eq!(f.names("notes"), ["plan.md"], "a deleted file is not listed");
    assert_eq!(f.names("notes/gone.md"), ["3", "4"]);
    assert_eq!(f.cat("notes/gone.md/4").expect("cat"), b"four");
    for missing in ["1", "2", "5"] {
        assert_eq!(errno(f.resolve(&format!("notes/gone.md/{missing}"))), libc::ENOENT);
    }
}

#[test]
fn a_deleted_directory_is_reachable_by_name_with_its_files() {
    let f = fixture(LIST_FRESH);
    let mut dir = vec![version(20, 1, "old", b"", 1), version(20, 2, "old", b"", 2)];
    for v in &mut dir {
        v.kind = NodeKind::Dir;
    }
    dir[1].deleted = true;
    let mut file = vec![version(21, 1, "old/x.md", b"x", 1), version(21, 2, "old/x.md", b"x", 2)];
    file[1].deleted = true;
    locked(&f.versions.by_path).insert("old".into(), dir);
    locked(&f.versions.by_path).insert("old/x.md".into(), file);
    f.blobs.put(b"x");
    let old = f.resolve("old").expect("old");
    assert_eq!(old.kind, NodeKind::Dir);
    assert_eq!(f.names("old"), Vec::<String>::new(), "its files are not listed");
    assert_eq!(f.names("old/x.md"), ["1"]);
    assert_eq!(f.cat("old/x.md/1").expect("cat"), b"x");
}

#[test]
fn lists_are_asked_again_once_stale_and_not_before() {
    let memo = fixture(Duration::from_secs(3600));
    memo.names("notes/plan.md");
    let asked = memo.calls();
    for _ in 0..5 {
        memo.resolve("notes/plan.md/2").expect("stat");
        memo.names("notes/plan.md");
    }
    assert_eq!(memo.calls(), asked, "a fresh list is used as it is");

    let f = fixture(Duration::ZERO);
    assert_eq!(f.names("notes/plan.md"), ["1", "2", "3"]);
    let four = version(2, 4, "notes/plan.md", b"four\n", 40);
    f.blobs.put(b"four\n");
    locked(&f.versions.by_path)
        .get_mut("notes/plan.md")
        .expect("plan")
        .push(four);
    assert_eq!(f.names("notes/plan.md"), ["1", "2", "3", "4"]);
    assert_eq!(f.cat("notes/plan.md/4").expect("cat"), b"four\n");
    let dir = f.resolve("notes/plan.md").expect("stat");
    assert_eq!(Some(dir.mtime), crate::vfs::parse_server_time(&time(40)));
}

#[test]
fn a_file_made_again_at_a_path_gets_new_inodes_for_its_versions() {
    let f = fixture(Duration::ZERO);
    let old = f.resolve("top.txt/1").expect("stat");
    locked(&f.versions.by_path).insert("top.txt".into(), vec![version(8, 1, "top.txt", b"new top", 60)]);
    f.blobs.put(b"new top");
    let new = f.resolve("top.txt/1").expect("stat");
    assert_ne!(old.ino, new.ino, "the kernel may keep the old one's pages");
    assert_eq!(f.cat("top.txt/1").expect("cat"), b"new top");
}

#[test]
fn an_unreachable_server_gives_eio_or_the_list_fetched_last() {
    let f = fixture(Duration::ZERO);
    assert_eq!(f.names("notes/plan.md"), ["1", "2", "3"]);
    f.versions.down.store(true, Ordering::SeqCst);
    assert_eq!(f.names("notes/plan.md"), ["1", "2", "3"], "the last list");
    assert_eq!(f.cat("notes/plan.md/1").expect("cat"), PLAN[0]);
    // Never listed: a file of the tree is still a directory, its list EIO;
    // a path outside the tree cannot be told from a missing one.
    let top = f.resolve("top.txt").expect("stat");
    assert_eq!(errno(f.history.readdir(top.ino)), libc::EIO);
    assert_eq!(errno(f.resolve("elsewhere.md")), libc::EIO);
}

#[test]
fn versions_are_read_through_the_shared_cache_once() {
    let f = fixture(LIST_FRESH);
    for _ in 0..3 {
        for i in 1..=3 {
            f.cat(&format!("notes/plan.md/{i}")).expect("cat");
        }
    }
    assert_eq!(f.blobs.fetches.load(Ordering::SeqCst), 3, "one download per blob");
    let mut stored: Vec<(String, u64)> = Vec::new();
    for prefix in std::fs::read_dir(f.cache_dir.join("blobs")).expect("blobs").flatten() {
        for blob in std::fs::read_dir(prefix.path()).expect("prefix").flatten() {
            let len = blob.metadata().expect("stat").len();
            stored.push((blob.file_name().to_string_lossy().to_string(), len));
        }
    }
    stored.sort();
    let mut want: Vec<(String, u64)> = PLAN
        .iter()
        .map(|b| (BlobHash::of(b).to_string(), b.len() as u64))
        .collect();
    want.sort();
    assert_eq!(stored, want, "the cache holds each version's blob and nothing else");
}

#[test]
fn the_view_mirrors_the_project_and_hides_skills_and_itself() {
    let f = fixture(LIST_FRESH);
    let root = f.resolve("").expect("history");
    assert_eq!(root.nlink, 4, "two entries");
    let meta = f.history.readdir(META_INO).expect("readdir");
    assert_eq!(meta.len(), 1);
    assert_eq!((meta[0].ino, meta[0].name.as_str()), (HISTORY_ROOT_INO, HISTORY_DIR));
    let notes = f.resolve("notes").expect("notes");
    assert_eq!(notes.kind, NodeKind::Dir);
    let mounted = f.vfs.lookup(ROOT_INO, "notes").expect("the mount's notes");
    assert_eq!(notes.mtime, mounted.mtime, "the mount's folder time");
    // Listing hands out the same numbers lookups do.
    let listed = f.history.readdir(root.ino).expect("readdir");
    assert_eq!(
        listed.iter().find(|e| e.name == "notes").map(|e| e.ino),
        Some(notes.ino)
    );
}
