//! The durable journal of local changes the server has not acknowledged yet.
//!
//! One record per changed inode, keyed by the inode's local uid, in
//! `STATE/journal/<uid>.json`. A record describes the *state* the inode should
//! reach on the server (its path, content, mode, or deletion), not a list of
//! operations, so repeated edits of one file collapse into one commit and an
//! editor's temp-file-and-rename save becomes one commit on the target.
//! Records are replaced atomically (temp file, fsync, rename, fsync of the
//! directory) before the operation that caused them returns: `close()`
//! succeeds only once the change is on disk, whether or not the server is up.
//! Small contents are stored inside the record; larger ones as
//! `STATE/pending/<hash>` files written (and fsynced) first.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::VfsError;
use crate::api::NodeKind;
use crate::model::BlobHash;

/// Contents up to this size travel inside the journal record (one fsync less).
pub const INLINE_LIMIT: u64 = 64 * 1024;

/// Where the parent of a changed inode lives, so a record stays valid when an
/// ancestor directory is renamed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParentRef {
    Root,
    /// A directory the server knows, by node id.
    Node(i64),
    /// A directory created locally and not yet on the server, by local uid.
    Local(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub uid: u64,
    /// Bumped on every change; an acknowledgement for an older revision does
    /// not clear newer changes.
    pub rev: u64,
    /// The server node this inode is bound to, once it has one.
    pub node: Option<i64>,
    /// The server version the local state derives from (the commit's base).
    pub base_version: Option<i64>,
    /// Where the server has the node (to detect a local rename).
    pub server_path: Option<String>,
    pub parent: ParentRef,
    pub name: String,
    pub deleted: bool,
    pub kind: NodeKind,
    pub mode: u32,
    /// Content to commit, if the content changed.
    pub content: Option<BlobHash>,
    pub size: u64,
    /// Set when only the mode changed.
    pub mode_dirty: bool,
    /// Unix milliseconds of the last local change.
    pub changed_at: i64,
    /// Small contents inline (base64), so replay needs nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Why the server last refused this record, for `contextfs status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub struct Journal {
    dir: PathBuf,
    pending: PathBuf,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> VfsError {
    let errno = match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => libc::ENOSPC,
        _ => libc::EIO,
    };
    VfsError::new(errno, format!("journal: cannot {what} {}: {e}", path.display()))
}

fn fsync_dir(dir: &Path) -> Result<(), VfsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync", dir, e))
}

impl Journal {
    pub fn open(state_dir: &Path) -> Result<Self, VfsError> {
        let dir = state_dir.join("journal");
        let pending = state_dir.join("pending");
        for d in [&dir, &pending] {
            fs::create_dir_all(d).map_err(|e| io("create", d, e))?;
        }
        Ok(Self { dir, pending })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(&self, uid: u64) -> PathBuf {
        self.dir.join(format!("{uid:016x}.json"))
    }

    pub fn pending_blob_path(&self, hash: &BlobHash) -> PathBuf {
        self.pending.join(hash.as_str())
    }

    /// Makes a snapshot of `source` durable and returns its hash and size.
    /// Small contents come back as bytes to inline into the record.
    pub fn snapshot(&self, source: &File) -> Result<(BlobHash, u64, Option<Vec<u8>>), VfsError> {
        let len = source.metadata().map_err(|e| io("stat", &self.pending, e))?.len();
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, ReadAt::new(source));
        if len <= INLINE_LIMIT {
            let mut bytes = Vec::with_capacity(len as usize);
            reader
                .read_to_end(&mut bytes)
                .map_err(|e| io("read", &self.pending, e))?;
            let hash = BlobHash::of(&bytes);
            let size = bytes.len() as u64;
            return Ok((hash, size, Some(bytes)));
        }
        let temp = self.pending.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut out = File::create(&temp).map_err(|e| io("create", &temp, e))?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = reader.read(&mut buf).map_err(|e| io("read", &temp, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| io("write", &temp, e))?;
                size += n as u64;
            }
            out.sync_all().map_err(|e| io("fsync", &temp, e))?;
            let hash = BlobHash::from_blake3(hasher.finalize());
            let target = self.pending_blob_path(&hash);
            fs::rename(&temp, &target).map_err(|e| io("rename", &target, e))?;
            fsync_dir(&self.pending)?;
            Ok((hash, size, None))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Durably replaces the record of `record.uid`.
    pub fn write(&self, record: &Record) -> Result<(), VfsError> {
        let target = self.record_path(record.uid);
        let temp = self.dir.join(format!(".tmp-{:016x}-{}", record.uid, record.rev));
        let bytes = serde_json::to_vec(record).map_err(|e| VfsError::new(libc::EIO, format!("journal: {e}")))?;
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)
                .map_err(|e| io("create", &temp, e))?;
            f.write_all(&bytes).map_err(|e| io("write", &temp, e))?;
            f.sync_all().map_err(|e| io("fsync", &temp, e))?;
            fs::rename(&temp, &target).map_err(|e| io("rename", &target, e))?;
            fsync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Drops a record the server has fully acknowledged.
    pub fn remove(&self, uid: u64) -> Result<(), VfsError> {
        let path = self.record_path(uid);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path, e)),
        }
    }

    pub fn remove_pending_blob(&self, hash: &BlobHash) {
        let _ = fs::remove_file(self.pending_blob_path(hash));
    }

    /// Every record on disk (for replay after a restart or a crash).
    pub fn load(&self) -> Result<Vec<Record>, VfsError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| io("read", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io("read", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(".tmp-") {
                // Never renamed into place: the operation did not return success.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let bytes = fs::read(entry.path()).map_err(|e| io("read", &entry.path(), e))?;
            match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) => out.push(r),
                Err(e) => {
                    return Err(VfsError::new(
                        libc::EIO,
                        format!(
                            "journal record {} is unreadable ({e}); move it aside to continue",
                            entry.path().display()
                        ),
                    ))
                }
            }
        }
        out.sort_by_key(|r| (r.changed_at, r.uid));
        Ok(out)
    }

    pub fn inline_bytes(record: &Record) -> Option<Vec<u8>> {
        record
            .inline
            .as_ref()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
    }

    pub fn encode_inline(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// Reads a file from offset 0 with pread, leaving its shared cursor alone.
pub struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> ReadAt<'a> {
    pub fn new(file: &'a File) -> Self {
        Self { file, pos: 0 }
    }
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: u64) -> Record {
        Record {
            uid,
            rev: 1,
            node: None,
            base_version: None,
            server_path: None,
            parent: ParentRef::Root,
            name: "a.md".into(),
            deleted: false,
            kind: NodeKind::File,
            mode: 0o644,
            content: Some(BlobHash::of(b"hi")),
            size: 2,
            mode_dirty: false,
            changed_at: 1,
            inline: Some(Journal::encode_inline(b"hi")),
            last_error: None,
        }
    }

    #[test]
    fn records_survive_reopen_and_removal_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.write(&record(7)).unwrap();
        let mut r = record(7);
        r.rev = 2;
        j.write(&r).unwrap();
        std::fs::write(dir.path().join("journal/.tmp-junk"), b"torn").unwrap();
        let j2 = Journal::open(dir.path()).unwrap();
        let loaded = j2.load().unwrap();
        assert_eq!(loaded, vec![r.clone()]);
        assert_eq!(Journal::inline_bytes(&loaded[0]).unwrap(), b"hi");
        assert!(!dir.path().join("journal/.tmp-junk").exists());
        j2.remove(7).unwrap();
        assert!(j2.load().unwrap().is_empty());
    }

    #[test]
    fn large_snapshots_go_to_pending_files() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let src_path = dir.path().join("src");
        let data = vec![7u8; (INLINE_LIMIT + 10) as usize];
        std::fs::write(&src_path, &data).unwrap();
        let (hash, size, inline) = j.snapshot(&File::open(&src_path).unwrap()).unwrap();
        assert_eq!(hash, BlobHash::of(&data));
        assert_eq!(size, data.len() as u64);
        assert!(inline.is_none());
        assert_eq!(std::fs::read(j.pending_blob_path(&hash)).unwrap(), data);
        std::fs::write(&src_path, b"small").unwrap();
        let (_, _, inline) = j.snapshot(&File::open(&src_path).unwrap()).unwrap();
        assert_eq!(inline.unwrap(), b"small");
    }

    #[test]
    fn unreadable_record_is_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("journal/0000000000000001.json"), b"{broken").unwrap();
        let err = j.load().unwrap_err();
        assert_eq!(err.errno, libc::EIO);
        assert!(err.message.contains("unreadable"));
    }
}
