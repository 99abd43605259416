//! Staging files: the local files that writers change before a close
//! journals them.
//!
//! A new file used to get a new staging file, deleted once the server had
//! acknowledged it. Under an untar that is a create and a delete per file in
//! one directory, and the file system pays for the churn: on this machine's
//! ext4 (no journal) `perf` showed a third of the mount's CPU in the inode
//! allocator (`find_inode_bit` → `recently_deleted`, scanning past inodes
//! freed in the last 30 s), and creates slowed from 2,500/s to 1,400/s as the
//! mount went on. So a retired staging file that nobody can still read is
//! kept in a small pool and reused, truncated, by the next writer: no inode
//! is allocated or freed for it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{VfsError, VfsResult};

/// How many retired staging files are kept for reuse.
const POOL_LIMIT: usize = 1024;

/// A retired file larger than this is deleted, not kept: the pool holds
/// small files only, so it never holds much disk.
const POOL_MAX_BYTES: u64 = super::journal::INLINE_LIMIT;

pub(super) struct StagingFiles {
    dir: PathBuf,
    pool: Mutex<Vec<PathBuf>>,
}

impl StagingFiles {
    /// Opens the staging directory, removing what a previous run left there
    /// (staging files are rebuilt from the journal on replay).
    pub(super) fn open(dir: PathBuf) -> VfsResult<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| VfsError::io("create staging directory", e))?;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir,
            pool: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// An empty staging file, reused from the pool when it has one.
    pub(super) fn create(&self) -> VfsResult<(Arc<File>, PathBuf)> {
        let reused = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(path) = reused {
            // Nobody else has it (see `retire`); O_TRUNC drops the old bytes.
            match OpenOptions::new().read(true).write(true).truncate(true).open(&path) {
                Ok(file) => return Ok((Arc::new(file), path)),
                Err(e) => {
                    tracing::debug!(error = %e, path = %path.display(), "a pooled staging file could not be reopened");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let path = self.dir.join(format!("{:016x}", rand::random::<u64>()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| VfsError::io("create staging file", e))?;
        Ok((Arc::new(file), path))
    }

    /// Lets go of a staging file the tree no longer names. It is reused only
    /// if nothing else can reach its bytes: not sealed (the journal's pending
    /// content is a hard link to a sealed file), no other descriptor shared
    /// (`file` is the last `Arc`, or the file is parked and has none), and
    /// small. Otherwise it is deleted, and open descriptors keep the bytes.
    /// A file the kernel wrote by passthrough (`kernel_wrote`) is reused only
    /// if, once this descriptor is closed, nothing has it open for writing:
    /// a shared memory map can outlive the file's last close.
    pub(super) fn retire(&self, path: &Path, sealed: bool, kernel_wrote: bool, size: u64, file: Option<Arc<File>>) {
        let unshared = match file {
            Some(file) => Arc::strong_count(&file) == 1,
            None => true,
        };
        let reusable = !sealed && unshared && size <= POOL_MAX_BYTES && path.parent() == Some(self.dir.as_path());
        if reusable && (!kernel_wrote || no_other_writer(path)) {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < POOL_LIMIT {
                pool.push(path.to_path_buf());
                return;
            }
        }
        let _ = std::fs::remove_file(path);
    }

    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Whether nothing has `path` open for writing (a descriptor, or a memory
/// map that outlived its descriptor): the kernel grants a read lease only
/// then. False when it cannot tell (leases disabled, another owner).
pub(super) fn no_other_writer(path: &Path) -> bool {
    opened_without_other_writer(path).is_some()
}

/// [`no_other_writer`], keeping the read-only descriptor it opened to ask
/// (the caller reads the file next: one open, not two).
pub(super) fn opened_without_other_writer(path: &Path) -> Option<File> {
    use std::os::fd::AsRawFd;
    let file = File::open(path).ok()?;
    // SAFETY: fcntl on a descriptor this function owns.
    let leased = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) } == 0;
    if !leased {
        return None;
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    Some(file)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};

    use super::*;

    fn staging() -> (tempfile::TempDir, StagingFiles) {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = StagingFiles::open(dir.path().join("staging")).expect("open");
        (dir, files)
    }

    fn contents(file: &File) -> Vec<u8> {
        let mut f = file;
        f.rewind().expect("rewind");
        let mut out = Vec::new();
        f.read_to_end(&mut out).expect("read");
        out
    }

    #[test]
    fn a_retired_unshared_file_comes_back_empty_under_the_same_inode() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, files) = staging();
        let (file, path) = files.create().expect("create");
        (&*file).write_all(b"old bytes of another file").expect("write");
        let ino = file.metadata().expect("stat").ino();
        files.retire(&path, false, false, 25, Some(file));
        assert_eq!(files.pooled(), 1);
        let (again, again_path) = files.create().expect("reuse");
        assert_eq!(again_path, path);
        assert_eq!(again.metadata().expect("stat").ino(), ino, "no new inode");
        assert!(contents(&again).is_empty(), "the old bytes are gone");
        assert_eq!(files.pooled(), 0);
    }

    #[test]
    fn files_someone_can_still_read_are_deleted_not_reused() {
        let (_dir, files) = staging();
        // Sealed: the journal's pending content is a link to it.
        let (sealed, sealed_path) = files.create().expect("create");
        let journal_link = sealed_path.with_extension("journal");
        std::fs::hard_link(&sealed_path, &journal_link).expect("link");
        (&*sealed).write_all(b"journaled").expect("write");
        files.retire(&sealed_path, true, false, 9, Some(sealed));
        assert!(!sealed_path.exists());
        assert_eq!(std::fs::read(&journal_link).expect("read"), b"journaled");
        // Shared: a reader still holds a descriptor; its bytes must stay.
        let (shared, shared_path) = files.create().expect("create");
        (&*shared).write_all(b"being read").expect("write");
        let reader = shared.clone();
        files.retire(&shared_path, false, false, 10, Some(shared));
        assert!(!shared_path.exists());
        assert_eq!(contents(&reader), b"being read");
        // Large: the pool never holds much disk.
        let (large, large_path) = files.create().expect("create");
        files.retire(&large_path, false, false, POOL_MAX_BYTES + 1, Some(large));
        assert!(!large_path.exists());
        assert_eq!(files.pooled(), 0);
        let (fresh, fresh_path) = files.create().expect("create");
        assert!(contents(&fresh).is_empty());
        assert_ne!(fresh_path, sealed_path);
    }

    #[test]
    fn the_pool_is_bounded_and_a_vanished_pooled_file_is_replaced() {
        let (_dir, files) = staging();
        let created: Vec<_> = (0..POOL_LIMIT + 3).map(|_| files.create().expect("create")).collect();
        let paths: Vec<_> = created.iter().map(|(_, p)| p.clone()).collect();
        for (file, path) in created {
            files.retire(&path, false, false, 0, Some(file));
        }
        assert_eq!(files.pooled(), POOL_LIMIT);
        assert_eq!(
            paths.iter().filter(|p| p.exists()).count(),
            POOL_LIMIT,
            "the rest deleted"
        );
        // Someone removed a pooled file behind our back: a new one is made.
        let last = paths[POOL_LIMIT - 1].clone();
        std::fs::remove_file(&last).expect("remove");
        let (file, path) = files.create().expect("create");
        assert_ne!(path, last);
        assert!(contents(&file).is_empty());
    }

    #[test]
    fn opening_clears_what_a_previous_run_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let staging_dir = dir.path().join("staging");
        std::fs::create_dir_all(&staging_dir).expect("mkdir");
        std::fs::write(staging_dir.join("leftover"), b"x").expect("write");
        let files = StagingFiles::open(staging_dir.clone()).expect("open");
        assert_eq!(std::fs::read_dir(files.dir()).expect("list").count(), 0);
    }

    #[test]
    fn a_file_the_kernel_wrote_is_reused_only_when_no_map_or_descriptor_can_still_write_it() {
        let (_dir, files) = staging();
        // A shared writable map that outlives every descriptor of the file,
        // as a passthrough mmap can outlive the FUSE file's release.
        let (file, mapped_path) = files.create().expect("create");
        file.set_len(4096).expect("size");
        // SAFETY: the map is only written by this test, then dropped.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&*file) }.expect("map");
        files.retire(&mapped_path, false, true, 4096, Some(file));
        assert_eq!(files.pooled(), 0, "reused while a map could still write it");
        assert!(!mapped_path.exists(), "deleted instead");
        map[0] = b'x';
        drop(map);
        // Nothing else has it: reused like any staging file.
        let (file, path) = files.create().expect("create");
        files.retire(&path, false, true, 0, Some(file));
        assert_eq!(files.pooled(), 1);
    }
}
