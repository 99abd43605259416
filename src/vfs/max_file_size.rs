//! The server's largest file (`max_file_bytes` from `GET /health`, set by
//! the sync worker): `write`, `truncate` and `fallocate` in handles.rs never
//! take a file past it, so nothing is journaled that the server would refuse.

use super::*;

impl Vfs {
    /// The largest file the server stores; see [`Vfs::write`].
    pub fn set_max_file_bytes(&self, limit: u64) {
        self.max_file_bytes.store(limit, Ordering::Relaxed);
    }

    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes.load(Ordering::Relaxed)
    }

    /// `EFBIG` for a change that would make a file `end` bytes long.
    pub(super) fn past_max_file_size(what: &str, end: u64, limit: u64) -> VfsError {
        VfsError::new(
            libc::EFBIG,
            format!("{what}: the file would have {end} bytes; the server stores files of at most {limit} bytes (--max-file-bytes)"),
        )
    }
}
