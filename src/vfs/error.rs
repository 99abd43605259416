//! The error every core operation returns: the errno the kernel gets, a
//! message for the log, and the error that caused it (an I/O or cache error)
//! for whoever wants the chain.

use std::sync::Arc;

use crate::cache::{is_no_space, CacheError};

/// The errno for a failed disk operation: a full disk or quota is `ENOSPC`
/// and a size beyond the file system's maximum `EFBIG` (the caller can act
/// on both), anything else is `EIO`. The one place this rule lives; the
/// cache classifies with the same [`is_no_space`].
pub fn errno_for_io(e: &std::io::Error) -> i32 {
    if is_no_space(e) {
        libc::ENOSPC
    } else if e.raw_os_error() == Some(libc::EFBIG) {
        libc::EFBIG
    } else {
        libc::EIO
    }
}

#[derive(Debug, Clone)]
pub struct VfsError {
    pub errno: i32,
    pub message: String,
    /// What caused it, when something below the core failed.
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for VfsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for VfsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The cause itself, not the Arc around it, so callers can downcast.
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Two errors are the same when the caller would see the same thing: errno
/// and message (the source is detail for the log).
impl PartialEq for VfsError {
    fn eq(&self, other: &Self) -> bool {
        self.errno == other.errno && self.message == other.message
    }
}

impl Eq for VfsError {}

impl VfsError {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
            source: None,
        }
    }

    /// `what` failed because of `source`.
    pub fn caused_by(
        errno: i32,
        what: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            errno,
            message: format!("{what}: {source}"),
            source: Some(Arc::new(source)),
        }
    }

    pub(super) fn noent(what: impl std::fmt::Display) -> Self {
        Self::new(libc::ENOENT, format!("{what}: no such file or directory"))
    }
    pub(super) fn exists(what: impl std::fmt::Display) -> Self {
        Self::new(libc::EEXIST, format!("{what} already exists"))
    }
    pub(super) fn notdir(what: impl std::fmt::Display) -> Self {
        Self::new(libc::ENOTDIR, format!("{what} is not a directory"))
    }
    pub(super) fn isdir(what: impl std::fmt::Display) -> Self {
        Self::new(libc::EISDIR, format!("{what} is a directory"))
    }
    pub(super) fn rofs(what: impl std::fmt::Display) -> Self {
        Self::new(libc::EROFS, format!("{what} is read-only"))
    }
    pub(super) fn badf() -> Self {
        Self::new(libc::EBADF, "unknown file handle")
    }

    /// A disk operation `what` failed.
    pub fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        Self::caused_by(errno_for_io(&e), what, e)
    }
}

impl From<CacheError> for VfsError {
    fn from(e: CacheError) -> Self {
        Self {
            errno: e.errno(),
            message: e.to_string(),
            source: Some(Arc::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn disk_errors_keep_their_cause_and_map_full_disks_to_enospc() {
        let full = VfsError::io("write to staging file", std::io::Error::from_raw_os_error(libc::EDQUOT));
        assert_eq!(full.errno, libc::ENOSPC);
        let cause = full.source().expect("the I/O error is kept");
        assert_eq!(
            cause.downcast_ref::<std::io::Error>().and_then(|e| e.raw_os_error()),
            Some(libc::EDQUOT)
        );
        let too_big = VfsError::io("truncate", std::io::Error::from_raw_os_error(libc::EFBIG));
        assert_eq!(too_big.errno, libc::EFBIG);
        let other = VfsError::io("read", std::io::Error::from_raw_os_error(libc::EBADMSG));
        assert_eq!(other.errno, libc::EIO);
        assert!(other.message.starts_with("read: "), "{}", other.message);
    }
}
