//! The state file of a synced folder (`DIR/.contextfs/state.json`): what
//! each path was last synced as, and where the change feed was read up to.
//!
//! It is rewritten whole, atomically (temp file, fsync, rename, fsync of the
//! directory), after every round that changed it, so a `kill -9` at any
//! moment leaves either the old or the new state, never a torn one. Every
//! step it records is safe to repeat: a commit sent again with the same base
//! and bytes is a no-op on the server, a deletion of a path already gone is
//! dropped, and a file already holding the right bytes is not rewritten.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{SyncError, SyncResult, STATE_DIR};
use crate::model::BlobHash;

const STATE_FILE: &str = "state.json";
const FORMAT: u32 = 1;

/// What a path was when it was last in sync with the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub node: i64,
    /// The server version the local bytes are (the base of the next commit).
    pub version: i64,
    pub hash: BlobHash,
    #[serde(default)]
    pub symlink: bool,
    pub mode: u32,
    /// The local file as last seen: a change of any of these means "hash again".
    pub stat: Stat,
}

/// The cheap fingerprint of a local file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

impl Stat {
    pub fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stat {
            size: meta.len(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// A path that was refused for good (too large, a name the server rejects):
/// not tried again until the file changes, so nothing retries in a loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub reason: String,
    pub stat: Stat,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncState {
    pub format: u32,
    pub server: String,
    pub project: String,
    /// Random per folder: makes idempotency keys unique to this folder.
    pub folder_id: String,
    /// Change-feed events up to this sequence number are applied.
    pub cursor: i64,
    /// Files and symlinks by path (relative, `/`-separated).
    pub files: BTreeMap<String, Entry>,
    /// Directories the server has, by path, with their node.
    pub dirs: BTreeMap<String, i64>,
    /// Paths refused by the server, until they change.
    #[serde(default)]
    pub refused: BTreeMap<String, Refused>,
    /// How files were materialised so far: reflink clones and copies.
    #[serde(default)]
    pub clones: u64,
    #[serde(default)]
    pub copies: u64,
}

impl SyncState {
    pub fn new(server: &str, project: &str) -> Self {
        SyncState {
            format: FORMAT,
            server: server.to_string(),
            project: project.to_string(),
            folder_id: hex::encode(rand::random::<[u8; 8]>()),
            cursor: 0,
            files: BTreeMap::new(),
            dirs: BTreeMap::new(),
            refused: BTreeMap::new(),
            clones: 0,
            copies: 0,
        }
    }

    pub fn dir(root: &Path) -> PathBuf {
        root.join(STATE_DIR)
    }

    pub fn path(root: &Path) -> PathBuf {
        Self::dir(root).join(STATE_FILE)
    }

    pub fn exists(root: &Path) -> bool {
        Self::path(root).is_file()
    }

    pub fn load(root: &Path) -> SyncResult<Self> {
        let path = Self::path(root);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SyncError::NotSynced {
                    path: root.to_path_buf(),
                })
            }
            Err(e) => return Err(SyncError::io(&path, e)),
        };
        let state: SyncState = serde_json::from_slice(&text).map_err(|e| SyncError::BadState {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if state.format != FORMAT {
            return Err(SyncError::BadState {
                path,
                detail: format!("format {} (this build reads {FORMAT})", state.format),
            });
        }
        Ok(state)
    }

    /// Writes the whole state atomically and durably.
    pub fn save(&self, root: &Path) -> SyncResult<()> {
        let dir = Self::dir(root);
        let bytes = serde_json::to_vec(self).map_err(|e| SyncError::BadState {
            path: Self::path(root),
            detail: e.to_string(),
        })?;
        write_atomically(&dir, STATE_FILE, &bytes)
    }

    /// The path of a file node, if this folder has it.
    pub fn path_of_node(&self, node: i64) -> Option<String> {
        self.files.iter().find(|(_, e)| e.node == node).map(|(p, _)| p.clone())
    }

    pub fn dir_of_node(&self, node: i64) -> Option<String> {
        self.dirs.iter().find(|(_, n)| **n == node).map(|(p, _)| p.clone())
    }

    /// Moves every file and directory below `from` to below `to` (a
    /// directory renamed as a whole).
    pub fn move_subtree(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let moved = |p: &str| -> Option<String> {
            if p == from {
                Some(to.to_string())
            } else {
                p.strip_prefix(&prefix).map(|rest| format!("{to}/{rest}"))
            }
        };
        let files: Vec<String> = self.files.keys().filter(|p| moved(p).is_some()).cloned().collect();
        for old in files {
            if let (Some(entry), Some(new)) = (self.files.remove(&old), moved(&old)) {
                self.files.insert(new, entry);
            }
        }
        let dirs: Vec<String> = self.dirs.keys().filter(|p| moved(p).is_some()).cloned().collect();
        for old in dirs {
            if let (Some(node), Some(new)) = (self.dirs.remove(&old), moved(&old)) {
                self.dirs.insert(new, node);
            }
        }
    }
}

/// Writes `name` in `dir` through a temp file, fsync, rename and an fsync of
/// the directory: readers and crashes see the old bytes or the new ones.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> SyncResult<()> {
    fs::create_dir_all(dir).map_err(|e| SyncError::io(dir, e))?;
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let target = dir.join(name);
    let result = (|| -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, &target)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(|e| SyncError::io(&target, e))
}

/// An exclusive lock on a synced folder, held by the one process syncing it.
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Takes the lock, or says which process holds it.
    pub fn take(root: &Path) -> SyncResult<Self> {
        let dir = SyncState::dir(root);
        fs::create_dir_all(&dir).map_err(|e| SyncError::io(&dir, e))?;
        let path = dir.join("lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| SyncError::io(&path, e))?;
        // A holder that was just killed keeps the lock until its last
        // thread is gone, a moment after its main thread shows as dead.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            // SAFETY: flock on a descriptor we own; released when it closes.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let pid = fs::read_to_string(&path).unwrap_or_default().trim().to_string();
            let holder_alive = pid.parse().map_or(true, super::status::process_alive);
            if holder_alive || std::time::Instant::now() > deadline {
                return Err(SyncError::Busy {
                    path: root.to_path_buf(),
                    pid: if pid.is_empty() { "?".into() } else { pid },
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()));
        written.map_err(|e| SyncError::io(&path, e))?;
        Ok(FolderLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: i64) -> Entry {
        Entry {
            node,
            version: 1,
            hash: BlobHash::of(b""),
            symlink: false,
            mode: 0o644,
            stat: Stat::default(),
        }
    }

    #[test]
    fn a_saved_state_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SyncState::new("http://x", "p");
        state.files.insert("a/b.md".into(), entry(3));
        state.cursor = 9;
        state.save(dir.path()).unwrap();
        let back = SyncState::load(dir.path()).unwrap();
        assert_eq!(back.files, state.files);
        assert_eq!(back.cursor, 9);
        assert_eq!(back.path_of_node(3).as_deref(), Some("a/b.md"));
    }

    #[test]
    fn moving_a_subtree_moves_only_what_is_below() {
        let mut state = SyncState::new("http://x", "p");
        state.files.insert("a/x".into(), entry(1));
        state.files.insert("ab/y".into(), entry(2));
        state.dirs.insert("a".into(), 5);
        state.dirs.insert("a/sub".into(), 6);
        state.move_subtree("a", "c/d");
        assert!(state.files.contains_key("c/d/x"));
        assert!(state.files.contains_key("ab/y"));
        assert_eq!(state.dirs.get("c/d"), Some(&5));
        assert_eq!(state.dirs.get("c/d/sub"), Some(&6));
    }

    #[test]
    fn a_second_lock_on_a_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = FolderLock::take(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open conflicts.
        match FolderLock::take(dir.path()) {
            Err(SyncError::Busy { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Busy, got {:?}", other.err()),
        }
    }
}
