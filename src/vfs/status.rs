//! What the mount tells about itself: the `user.contextfs.*` extended
//! attributes, queued and unflushed files, statfs.

use super::*;

impl Vfs {
    /// `user.contextfs.status` and friends.
    pub fn getxattr(&self, ino: Ino, name: &str) -> VfsResult<Vec<u8>> {
        let st = self.lock();
        let inode = Self::get(&st, ino)?;
        let value = match name {
            "user.contextfs.version" => inode.server.as_ref().map(|s| s.version.to_string()),
            "user.contextfs.node" => inode.server.as_ref().map(|s| s.node.to_string()),
            "user.contextfs.status" => Some(Self::status_word(&st, inode).to_string()),
            _ => None,
        };
        value
            .map(String::into_bytes)
            .ok_or_else(|| VfsError::new(libc::ENODATA, format!("no attribute {name}")))
    }

    pub fn listxattr(&self, ino: Ino) -> VfsResult<Vec<String>> {
        let st = self.lock();
        let inode = Self::get(&st, ino)?;
        let mut names = vec!["user.contextfs.status".to_string()];
        if inode.server.is_some() {
            names.push("user.contextfs.version".into());
            names.push("user.contextfs.node".into());
        }
        Ok(names)
    }

    /// clean / merged / lww for acknowledged files; pending while a handle
    /// holds unjournaled writes; queued while the journal holds a change.
    pub(super) fn status_word(st: &State, inode: &Inode) -> &'static str {
        if inode.data_rev != inode.journaled_data_rev {
            "pending"
        } else if st.records.contains_key(&inode.uid) {
            "queued"
        } else {
            match inode.last_status {
                Some(VersionStatus::Merged) => "merged",
                Some(VersionStatus::Lww) => "lww",
                _ => "clean",
            }
        }
    }

    /// (path, record) of every change still waiting for the server.
    pub fn queued(&self) -> Vec<(String, Record)> {
        let st = self.lock();
        let mut out: Vec<(String, Record)> = st
            .records
            .values()
            .map(|r| {
                let path = match st.by_uid.get(&r.uid) {
                    Some(ino) if !r.deleted => Self::path_of(&st, *ino),
                    _ => r.server_path.clone().unwrap_or_else(|| r.name.clone()),
                };
                (path, r.clone())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Files whose writes are not journaled yet (open, written, not closed).
    pub fn unflushed(&self) -> Vec<String> {
        let st = self.lock();
        st.inodes
            .iter()
            .filter(|(_, i)| i.data_rev != i.journaled_data_rev && !i.unlinked)
            .map(|(ino, _)| Self::path_of(&st, *ino))
            .collect()
    }

    /// Space as the writer experiences it: every write is staged on the disk
    /// that holds the mount's state, so that disk's size and free space are
    /// what `df` and installers should see.
    pub fn statfs(&self) -> Statfs {
        let files = self.lock().inodes.len() as u64;
        let (ok, vfs) = self.staging_statvfs();
        let (blocks, bfree) = if ok {
            let unit = vfs.f_frsize.max(1);
            (vfs.f_blocks * unit / 4096, vfs.f_bavail * unit / 4096)
        } else {
            (1 << 28, 1 << 28)
        };
        let ffree = if ok { vfs.f_favail.max(1 << 20) } else { 1 << 20 };
        Statfs {
            blocks,
            bfree,
            files: files + ffree,
            ffree,
        }
    }
}

impl Vfs {
    /// statvfs(3) of the disk that holds the staging files (no lock taken).
    fn staging_statvfs(&self) -> (bool, libc::statvfs) {
        // SAFETY: an all-zero statvfs is a valid value of the plain C struct.
        let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(self.staging.dir().as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
        let ok = unsafe { libc::statvfs(path.as_ptr(), &mut vfs) } == 0;
        (ok, vfs)
    }

    /// Bytes an unprivileged writer may still use on the staging disk.
    pub(super) fn staging_free_bytes(&self) -> Option<u64> {
        let (ok, vfs) = self.staging_statvfs();
        ok.then(|| vfs.f_bavail.saturating_mul(vfs.f_frsize.max(1)))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Statfs {
    /// In 4 KiB blocks.
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
}
