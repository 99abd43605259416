//! Placing server contents into a synced folder. Bytes come through the
//! machine's shared blob cache (fetched once per machine), and each file is
//! made as a reflink clone of its cached blob where the file system can
//! (`FICLONE` on Linux XFS and btrfs, `clonefile` on APFS), so N folders of
//! one project cost about one copy on disk; elsewhere it is copied.
//!
//! A file is staged in `DIR/.contextfs/tmp/` and renamed into place, so
//! readers see the old bytes or the new ones, never a mix. The rename
//! happens only if the target is still what the caller expects: a local
//! file that changed meanwhile is never overwritten.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::ignore::OWN_TEMP_PREFIX;
use super::state::{Stat, SyncState};
use super::{SyncError, SyncResult};
use crate::cache::{BlobCache, CacheError};
use crate::client::Client;
use crate::model::BlobHash;

/// How a file's bytes got into the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A reflink clone of the cached blob: shares its disk blocks.
    Clone,
    /// A full copy.
    Copy,
    /// A symlink (its target is the content).
    Symlink,
}

/// The server content to place: a blob, its mode and mtime, and whether it
/// is a symlink (then the blob is its target).
#[derive(Debug, Clone)]
pub struct Content {
    pub hash: BlobHash,
    pub mode: u32,
    pub mtime_ns: Option<i64>,
    pub symlink: bool,
}

impl Content {
    /// From the API's fields (`mtime` as RFC 3339; unparsable means "now").
    pub fn new(hash: &BlobHash, mode: u32, mtime: Option<&str>, kind: crate::api::NodeKind) -> Self {
        Content {
            hash: hash.clone(),
            mode,
            mtime_ns: mtime.and_then(|t| crate::model::parse_file_time(t).ok()),
            symlink: kind == crate::api::NodeKind::Symlink,
        }
    }
}

/// What the target must be for a placement to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing there (a new file).
    Absent,
    /// The file as the state file last saw it.
    Unchanged(Stat),
}

/// The file as it was placed, or why not.
#[derive(Debug)]
pub enum Placed {
    Done {
        stat: Stat,
        how: Placement,
    },
    /// The target changed since it was last synced: left alone.
    LocalChanged,
}

/// Fetches blobs into the cache and places them; shared by the threads of
/// one folder (and cheap to clone).
#[derive(Clone)]
pub struct Materialiser {
    pub cache: Arc<BlobCache>,
    pub client: Client,
    pub project: String,
    pub runtime: tokio::runtime::Handle,
}

impl Materialiser {
    /// Makes sure `hash` is in the cache and opens it. Blocking: call it
    /// from a blocking thread, never from the async runtime's own threads.
    pub fn cached(&self, hash: &BlobHash) -> SyncResult<File> {
        Ok(self.cache.get_or_fill(hash, |fill| {
            let failed = |message: String| CacheError::Fetch {
                hash: hash.clone(),
                message,
            };
            self.runtime.block_on(async {
                let mut response =
                    tokio::time::timeout(Duration::from_secs(30), self.client.blob_response(&self.project, hash))
                        .await
                        .map_err(|_| failed("the server did not answer within 30 s".into()))?
                        .map_err(|e| failed(e.to_string()))?;
                loop {
                    let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
                        .await
                        .map_err(|_| failed("the download stalled for 30 s".into()))?
                        .map_err(|e| failed(e.to_string()))?;
                    match chunk {
                        Some(bytes) => fill.write(&bytes)?,
                        None => return Ok(()),
                    }
                }
            })
        })?)
    }

    /// Places blob `hash` at `root/rel` (blocking), if the target is still
    /// as `expect` says.
    pub fn place(&self, root: &Path, rel: &str, content: &Content, expect: Expect) -> SyncResult<Placed> {
        let target = root.join(rel);
        // Cheap early check: no download for a file that changed meanwhile.
        if !target_is(&target, expect) {
            return Ok(Placed::LocalChanged);
        }
        let blob = self.cached(&content.hash)?;
        let temp = temp_path(root);
        let how =
            stage(&blob, &self.cache.path_of(&content.hash), &temp, content).map_err(|e| SyncError::io(&target, e))?;
        finish(&temp, &target, expect, how)
    }
}

/// A fresh temp name in the folder's state dir (same file system as the
/// folder, so the final rename is atomic).
pub fn temp_path(root: &Path) -> PathBuf {
    let n: u64 = rand::random();
    SyncState::dir(root)
        .join("tmp")
        .join(format!("{OWN_TEMP_PREFIX}{}-{n:016x}", std::process::id()))
}

/// Whether the target is what the caller expects right now.
fn target_is(target: &Path, expect: Expect) -> bool {
    match (expect, fs::symlink_metadata(target)) {
        (Expect::Absent, Err(e)) => e.kind() == io::ErrorKind::NotFound,
        (Expect::Absent, Ok(_)) => false,
        (Expect::Unchanged(stat), Ok(meta)) => Stat::of(&meta) == stat,
        (Expect::Unchanged(_), Err(_)) => false,
    }
}

/// Renames the staged temp file into place if the target is still as
/// expected; removes the temp file otherwise.
pub fn finish(temp: &Path, target: &Path, expect: Expect, how: Placement) -> SyncResult<Placed> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| SyncError::io(parent, e))?;
    }
    // The window between this check and the rename is a few microseconds;
    // an editor saving inside it would lose that save to the server's bytes
    // (still in history on the server, but not in the folder).
    if !target_is(target, expect) {
        let _ = fs::remove_file(temp);
        return Ok(Placed::LocalChanged);
    }
    if let Err(e) = fs::rename(temp, target) {
        let _ = fs::remove_file(temp);
        return Err(SyncError::io(target, e));
    }
    let meta = fs::symlink_metadata(target).map_err(|e| SyncError::io(target, e))?;
    Ok(Placed::Done {
        stat: Stat::of(&meta),
        how,
    })
}

/// Writes the blob to `temp`: a symlink, a reflink clone, or a copy.
pub fn stage(blob: &File, blob_path: &Path, temp: &Path, content: &Content) -> io::Result<Placement> {
    if let Some(parent) = temp.parent() {
        fs::create_dir_all(parent)?;
    }
    if content.symlink {
        let target = fs::read(blob_path).or_else(|_| {
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut &*blob, &mut bytes)?;
            Ok::<_, io::Error>(bytes)
        })?;
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), temp)?;
        return Ok(Placement::Symlink);
    }
    let how = match clone_blob(blob, blob_path, temp) {
        Ok(()) => Placement::Clone,
        Err(_) => {
            let _ = fs::remove_file(temp);
            let mut out = File::create(temp)?;
            let mut input = blob.try_clone()?;
            io::Seek::seek(&mut input, io::SeekFrom::Start(0))?;
            io::copy(&mut input, &mut out)?;
            Placement::Copy
        }
    };
    let file = fs::OpenOptions::new().write(true).open(temp)?;
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(content.mode & 0o7777))?;
    if let Some(ns) = content.mtime_ns {
        let when = if ns >= 0 {
            std::time::UNIX_EPOCH + Duration::from_nanos(ns as u64)
        } else {
            std::time::UNIX_EPOCH
        };
        file.set_times(fs::FileTimes::new().set_modified(when).set_accessed(when))?;
    }
    Ok(how)
}

/// A reflink clone of the blob at `temp` (Linux: the `FICLONE` ioctl).
#[cfg(target_os = "linux")]
fn clone_blob(blob: &File, _blob_path: &Path, temp: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    /// `_IOW(0x94, 9, int)` from linux/fs.h.
    const FICLONE: libc::c_ulong = 0x4004_9409;
    let out = File::create(temp)?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open for the duration of the call.
    let rc = unsafe { libc::ioctl(out.as_raw_fd(), FICLONE as _, blob.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A clone of the blob at `temp` (macOS: `clonefile`, APFS).
#[cfg(target_os = "macos")]
fn clone_blob(_blob: &File, blob_path: &Path, temp: &Path) -> io::Result<()> {
    let src = std::ffi::CString::new(blob_path.as_os_str().as_bytes())?;
    let dst = std::ffi::CString::new(temp.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated paths that live across the call.
    let rc = unsafe { libc::clonefile(src.as_ptr(), dst.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn clone_blob(_blob: &File, _blob_path: &Path, _temp: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_never_overwrites_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("blob"), "server bytes").unwrap();
        let blob = File::open(root.join("blob")).unwrap();
        fs::write(root.join("f"), "old").unwrap();
        let seen = Stat::of(&fs::symlink_metadata(root.join("f")).unwrap());
        // The editor saves after the state file saw "old".
        fs::write(root.join("f"), "editor's bytes, longer").unwrap();
        let temp = temp_path(root);
        let content = |mode, mtime_ns| Content {
            hash: BlobHash::of(b"server bytes"),
            mode,
            mtime_ns,
            symlink: false,
        };
        let how = stage(&blob, &root.join("blob"), &temp, &content(0o644, None)).unwrap();
        let placed = finish(&temp, &root.join("f"), Expect::Unchanged(seen), how).unwrap();
        assert!(matches!(placed, Placed::LocalChanged), "{placed:?}");
        assert_eq!(fs::read_to_string(root.join("f")).unwrap(), "editor's bytes, longer");
        assert!(!temp.exists());
        let temp = temp_path(root);
        let how = stage(&blob, &root.join("blob"), &temp, &content(0o755, Some(1_000_000_000))).unwrap();
        let placed = finish(&temp, &root.join("new/g"), Expect::Absent, how).unwrap();
        assert!(matches!(placed, Placed::Done { .. }), "{placed:?}");
        assert_eq!(fs::read_to_string(root.join("new/g")).unwrap(), "server bytes");
    }
}
