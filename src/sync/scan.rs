//! Finding what changed in a synced folder since the state file was written,
//! without reading everything: a file whose size, mtime and inode match its
//! state entry is taken as unchanged; any other is hashed, and only a new
//! hash (or mode) is a change. Within one scan, content that left one path
//! and appeared at another is a move, so it keeps its node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::ignore::IgnoreRules;
use super::state::{Stat, SyncState};
use crate::model::{BlobHash, WsPath};

/// A regular file or symlink in the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub stat: Stat,
    pub mode: u32,
    pub symlink: bool,
}

/// What the folder holds now.
#[derive(Debug, Default)]
pub struct Scan {
    pub files: BTreeMap<String, LocalFile>,
    pub dirs: BTreeSet<String>,
    /// Entries that cannot be synced, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Walks `root`, not following symlinks, leaving out ignored paths.
pub fn scan_folder(root: &Path, rules: &IgnoreRules) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        let entries = match fs::read_dir(&abs) {
            Ok(entries) => entries,
            Err(e) if dir.is_empty() => return Err(e),
            // Removed while we walked: what was below it is gone too.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            // Unreadable (permissions): reported, never a reason to stop.
            Err(e) => {
                scan.skipped.push((dir, format!("cannot read this directory: {e}")));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let raw_name = entry.file_name();
            let Some(name) = raw_name.to_str().map(str::to_string) else {
                let shown = String::from_utf8_lossy(raw_name.as_bytes()).into_owned();
                let rel = join(&dir, &shown);
                scan.skipped.push((rel, "the name is not UTF-8".into()));
                continue;
            };
            let rel = join(&dir, &name);
            let meta = match fs::symlink_metadata(entry.path()) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    scan.skipped.push((rel, format!("cannot read it: {e}")));
                    continue;
                }
            };
            let kind = meta.file_type();
            if rules.is_ignored(&rel, kind.is_dir()) {
                continue;
            }
            if let Err(e) = WsPath::parse_new(&rel) {
                scan.skipped
                    .push((rel, format!("the server cannot store this name: {e}")));
                continue;
            }
            if kind.is_dir() {
                scan.dirs.insert(rel.clone());
                stack.push(rel);
            } else if kind.is_file() || kind.is_symlink() {
                scan.files.insert(
                    rel,
                    LocalFile {
                        stat: Stat::of(&meta),
                        mode: if kind.is_symlink() { 0o777 } else { meta.mode() & 0o7777 },
                        symlink: kind.is_symlink(),
                    },
                );
            } else {
                let what = if kind.is_fifo() {
                    "a fifo"
                } else if kind.is_socket() {
                    "a socket"
                } else if kind.is_block_device() || kind.is_char_device() {
                    "a device file"
                } else {
                    "not a regular file"
                };
                scan.skipped.push((rel, format!("{what} cannot be synced")));
            }
        }
    }
    Ok(scan)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The bytes that stand for a file on the server: its content, or a
/// symlink's target.
pub fn hash_local(path: &Path, symlink: bool) -> io::Result<BlobHash> {
    if symlink {
        let target = fs::read_link(path)?;
        return Ok(BlobHash::of(target.as_os_str().as_bytes()));
    }
    let mut hasher = blake3::Hasher::new();
    let file = fs::File::open(path)?;
    hasher.update_reader(file)?;
    Ok(BlobHash::from_blake3(hasher.finalize()))
}

/// A local change to send to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// New bytes (or mode) at `path`; `base` is the node and version they
    /// were edited from, `None` for a new file.
    Write {
        path: String,
        base: Option<(i64, i64)>,
        hash: BlobHash,
        file: LocalFile,
        mode_changed: bool,
    },
    /// Same content at a new path.
    Move {
        from: String,
        to: String,
        node: i64,
        version: i64,
        file: LocalFile,
    },
    Delete {
        path: String,
        node: i64,
        version: i64,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
        node: i64,
    },
    /// Only the fingerprint moved (touched, copied over with the same bytes).
    Restat {
        path: String,
        stat: Stat,
    },
}

/// What [`diff`] found: the changes, and files that were still being
/// written while hashed (left for the next scan).
#[derive(Debug, Default)]
pub struct Diff {
    pub changes: Vec<Change>,
    pub unsettled: Vec<String>,
}

/// Compares the folder with the state. Hashes only files whose fingerprint
/// moved; a file whose fingerprint changes while it is hashed is unsettled.
pub fn diff(root: &Path, state: &SyncState, scan: &Scan) -> Diff {
    let mut out = Diff::default();
    let mut created: Vec<(String, BlobHash, LocalFile)> = Vec::new();
    for (path, local) in &scan.files {
        let entry = state.files.get(path);
        if let Some(entry) = entry {
            if entry.stat == local.stat && entry.mode == local.mode && entry.symlink == local.symlink {
                continue;
            }
        } else if state.refused.get(path).is_some_and(|r| r.stat == local.stat) {
            continue;
        }
        let abs = root.join(path);
        let hash = match settled_hash(&abs, local) {
            Some(hash) => hash,
            None => {
                out.unsettled.push(path.clone());
                continue;
            }
        };
        match entry {
            Some(entry) if entry.hash == hash && entry.mode == local.mode && entry.symlink == local.symlink => {
                out.changes.push(Change::Restat {
                    path: path.clone(),
                    stat: local.stat,
                });
            }
            Some(entry) if entry.symlink == local.symlink => out.changes.push(Change::Write {
                path: path.clone(),
                base: Some((entry.node, entry.version)),
                hash,
                file: local.clone(),
                mode_changed: entry.mode != local.mode,
            }),
            _ => created.push((path.clone(), hash, local.clone())),
        }
    }
    // Paths the state has that are gone (or are no longer files).
    let mut gone: HashMap<BlobHash, Vec<String>> = HashMap::new();
    let mut gone_order: Vec<String> = Vec::new();
    for (path, entry) in &state.files {
        let still_there = scan.files.get(path).is_some_and(|f| f.symlink == entry.symlink);
        // A file that is still here but left out of the scan (ignored now,
        // or skipped) is not deleted on the server: ignoring is not deleting.
        // Nor is one that cannot be looked at (an unreadable directory).
        let left_out = !scan.files.contains_key(path)
            && match fs::symlink_metadata(root.join(path)) {
                Ok(meta) => !meta.is_dir(),
                Err(e) => e.kind() != io::ErrorKind::NotFound,
            };
        if !still_there && !left_out && !scan.skipped.iter().any(|(p, _)| p == path) {
            gone.entry(entry.hash.clone()).or_default().push(path.clone());
            gone_order.push(path.clone());
        }
    }
    let mut moved_away: BTreeSet<String> = BTreeSet::new();
    for (path, hash, file) in created {
        let from = gone
            .get_mut(&hash)
            .and_then(|paths| {
                let at = paths
                    .iter()
                    .position(|p| state.files.get(p).is_some_and(|e| e.symlink == file.symlink))?;
                Some(paths.remove(at))
            })
            // A path that was a file of another kind is replaced, not moved.
            .filter(|from| !scan.files.contains_key(from));
        match from.and_then(|from| state.files.get(&from).map(|e| (from, e))) {
            Some((from, entry)) => {
                moved_away.insert(from.clone());
                out.changes.push(Change::Move {
                    from,
                    to: path,
                    node: entry.node,
                    version: entry.version,
                    file,
                });
            }
            None => {
                // A path that changed kind (file <-> symlink) is deleted first.
                if let Some(entry) = state.files.get(&path) {
                    moved_away.insert(path.clone());
                    out.changes.push(Change::Delete {
                        path: path.clone(),
                        node: entry.node,
                        version: entry.version,
                    });
                }
                out.changes.push(Change::Write {
                    path,
                    base: None,
                    hash,
                    file,
                    mode_changed: true,
                });
            }
        }
    }
    for path in gone_order {
        if moved_away.contains(&path) {
            continue;
        }
        if let Some(entry) = state.files.get(&path) {
            out.changes.push(Change::Delete {
                path,
                node: entry.node,
                version: entry.version,
            });
        }
    }
    for dir in &scan.dirs {
        if !state.dirs.contains_key(dir) {
            out.changes.push(Change::Mkdir { path: dir.clone() });
        }
    }
    // Deepest first, so a parent is removed after its children.
    for (dir, node) in state.dirs.iter().rev() {
        if !scan.dirs.contains(dir) {
            out.changes.push(Change::Rmdir {
                path: dir.clone(),
                node: *node,
            });
        }
    }
    out
}

/// The hash of a file that did not change while it was read.
fn settled_hash(abs: &Path, local: &LocalFile) -> Option<BlobHash> {
    let hash = hash_local(abs, local.symlink).ok()?;
    let after = fs::symlink_metadata(abs).ok()?;
    (Stat::of(&after) == local.stat).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::state::Entry;

    fn synced(root: &Path, state: &mut SyncState, path: &str, node: i64) {
        let abs = root.join(path);
        let meta = fs::symlink_metadata(&abs).unwrap();
        state.files.insert(
            path.to_string(),
            Entry {
                node,
                version: 1,
                hash: hash_local(&abs, false).unwrap(),
                symlink: false,
                mode: meta.mode() & 0o7777,
                stat: Stat::of(&meta),
            },
        );
    }

    fn changes(root: &Path, state: &SyncState) -> Vec<Change> {
        let rules = IgnoreRules::load(root);
        let scan = scan_folder(root, &rules).unwrap();
        diff(root, state, &scan).changes
    }

    #[test]
    fn untouched_files_are_not_changes_and_edits_are() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("a.md"), "one\n").unwrap();
        fs::write(root.join("b.md"), "two\n").unwrap();
        let mut state = SyncState::new("http://x", "p");
        synced(root, &mut state, "a.md", 1);
        synced(root, &mut state, "b.md", 2);
        assert_eq!(changes(root, &state), vec![]);
        fs::write(root.join("b.md"), "two, edited\n").unwrap();
        match &changes(root, &state)[..] {
            [Change::Write { path, base, .. }] => {
                assert_eq!(path, "b.md");
                assert_eq!(*base, Some((2, 1)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rename_is_a_move_of_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("a.md"), "one\n").unwrap();
        let mut state = SyncState::new("http://x", "p");
        synced(root, &mut state, "a.md", 7);
        fs::create_dir(root.join("sub")).unwrap();
        fs::rename(root.join("a.md"), root.join("sub/b.md")).unwrap();
        let found = changes(root, &state);
        assert!(found.contains(&Change::Mkdir { path: "sub".into() }), "{found:?}");
        assert!(
            found
                .iter()
                .any(|c| matches!(c, Change::Move { from, to, node: 7, .. } if from == "a.md" && to == "sub/b.md")),
            "{found:?}"
        );
        assert!(!found.iter().any(|c| matches!(c, Change::Delete { .. })), "{found:?}");
    }

    #[test]
    fn a_removed_file_is_a_deletion_with_its_base() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("a.md"), "one\n").unwrap();
        let mut state = SyncState::new("http://x", "p");
        synced(root, &mut state, "a.md", 7);
        fs::remove_file(root.join("a.md")).unwrap();
        assert_eq!(
            changes(root, &state),
            vec![Change::Delete {
                path: "a.md".into(),
                node: 7,
                version: 1
            }]
        );
    }

    #[test]
    fn a_synced_file_that_becomes_ignored_is_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("run.log"), "log\n").unwrap();
        let mut state = SyncState::new("http://x", "p");
        synced(root, &mut state, "run.log", 4);
        fs::write(root.join(crate::sync::ignore::IGNORE_FILE), "*.log\n").unwrap();
        let found = changes(root, &state);
        assert!(!found.iter().any(|c| matches!(c, Change::Delete { .. })), "{found:?}");
    }

    #[test]
    fn fifos_and_bad_names_are_skipped_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let fifo = std::ffi::CString::new(root.join("pipe").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let bad = std::ffi::OsStr::from_bytes(b"bad\xffname");
        fs::write(root.join(bad), "x").unwrap();
        let scan = scan_folder(root, &IgnoreRules::load(root)).unwrap();
        assert!(scan.files.is_empty(), "{:?}", scan.files);
        let reasons: Vec<&str> = scan.skipped.iter().map(|(_, why)| why.as_str()).collect();
        assert!(reasons.contains(&"a fifo cannot be synced"), "{reasons:?}");
        assert!(reasons.contains(&"the name is not UTF-8"), "{reasons:?}");
    }
}
