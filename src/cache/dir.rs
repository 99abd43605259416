//! The cache's folders on disk: where the root is, the private directories
//! under it, and the scans that read them back (the blobs present, the temp
//! files that fills left behind).
//!
//! Nothing here keeps state; [`super::BlobCache`] decides what to do with
//! what these functions find.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};

use super::CacheError;
use crate::model::BlobHash;

/// Temp files younger than this may belong to a fill running in another
/// process right now, so startup cleanup leaves them alone.
pub(super) const STALE_TMP_AGE: Duration = Duration::from_secs(60 * 60);

/// Creates a directory (and parents) readable only by the owner: cached
/// blobs are workspace contents.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), CacheError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CacheError::io(dir, e))
}

/// `$XDG_CACHE_HOME/contextfs`, else `$HOME/.cache/contextfs`, else a
/// per-user directory under the system temp dir. Relative values are ignored,
/// as the XDG spec requires.
pub(super) fn root_from_env(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(xdg) = absolute(xdg_cache_home) {
        return xdg.join("contextfs");
    }
    if let Some(home) = absolute(home) {
        return home.join(".cache").join("contextfs");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("contextfs-{uid}")).join("contextfs")
}

/// Lists every well-formed blob under `blobs_dir` as `(hash, size, mtime)`.
/// Entries that vanish mid-scan (another process evicting) are skipped.
pub(super) fn scan_blobs(blobs_dir: &Path) -> Result<Vec<(BlobHash, u64, SystemTime)>, CacheError> {
    let mut out = Vec::new();
    let prefixes = fs::read_dir(blobs_dir).map_err(|e| CacheError::io(blobs_dir, e))?;
    for prefix in prefixes {
        let prefix = match prefix {
            Ok(p) => p,
            Err(e) => {
                warn!("skipping unreadable entry in {}: {e}", blobs_dir.display());
                continue;
            }
        };
        let prefix_name = prefix.file_name();
        let Some(prefix_name) = prefix_name.to_str() else {
            continue;
        };
        if prefix_name.len() != 2 {
            continue;
        }
        let files = match fs::read_dir(prefix.path()) {
            Ok(files) => files,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!("skipping unreadable cache directory {}: {e}", prefix.path().display());
                }
                continue;
            }
        };
        for file in files.flatten() {
            let name = file.file_name();
            let Some(hash) = name.to_str().and_then(|n| BlobHash::parse(n).ok()) else {
                continue;
            };
            if !hash.as_str().starts_with(prefix_name) {
                continue;
            }
            // DirEntry::metadata does not follow symlinks; only plain files count.
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((hash, meta.len(), mtime));
        }
    }
    Ok(out)
}

/// Deletes temp files left by fills that died (crash, kill) long ago.
pub(super) fn remove_stale_tmp(tmp_dir: &Path, max_age: Duration) {
    let entries = match fs::read_dir(tmp_dir) {
        Ok(entries) => entries,
        Err(e) => {
            warn!("cannot list {}: {e}", tmp_dir.display());
            return;
        }
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let Ok(mtime) = meta.modified() else { continue };
        let stale = now.duration_since(mtime).is_ok_and(|age| age > max_age);
        if !meta.is_file() || !stale {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => debug!("removed stale cache temp file {}", entry.path().display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot remove stale cache temp file {}: {e}", entry.path().display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::set_mtime;
    use crate::cache::BlobCache;

    #[test]
    fn default_root_follows_xdg_then_home() {
        assert_eq!(
            root_from_env(Some("/x/cache".into()), Some("/home/u".into())),
            PathBuf::from("/x/cache/contextfs")
        );
        assert_eq!(
            root_from_env(Some("relative".into()), Some("/home/u".into())),
            PathBuf::from("/home/u/.cache/contextfs")
        );
        assert_eq!(
            root_from_env(None, Some("/home/u".into())),
            PathBuf::from("/home/u/.cache/contextfs")
        );
        let fallback = root_from_env(None, None);
        assert!(
            fallback.is_absolute() && fallback.ends_with("contextfs"),
            "{fallback:?}"
        );
        assert!(BlobCache::default_root().ends_with("contextfs"));
    }

    #[test]
    fn open_removes_only_stale_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp).expect("mkdir");
        let (stale, young) = (tmp.join("stale"), tmp.join("young"));
        fs::write(&stale, b"old fill").expect("stale");
        fs::write(&young, b"fill in progress").expect("young");
        set_mtime(&stale, SystemTime::now() - Duration::from_secs(2 * 3600));
        set_mtime(&young, SystemTime::now() - Duration::from_secs(10 * 60));
        let _cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        assert!(!stale.exists());
        assert!(young.exists());
    }
}
