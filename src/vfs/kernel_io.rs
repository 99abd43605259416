//! How the kernel does I/O on each open handle: through its page cache, or
//! straight from the cached blob file (FUSE passthrough, which leaves the
//! mount process out of every read).
//!
//! The kernel keeps one I/O mode per inode. Once an inode is open for
//! passthrough, every further open of it must be a passthrough open of the
//! same backing file (anything else fails with EIO in the caller's `open`),
//! and a passthrough open is refused while cached opens exist. A writer can
//! never share a read-only blob file, so while readers stream an inode by
//! passthrough, writers must wait for them (see [`Busy`]). This table counts
//! open handles per inode so that every answer the mount gives is one the
//! kernel accepts.
//!
//! A new file may also be written by passthrough: its create starts a
//! *staging* epoch whose backing file is the file's staging file, so the
//! kernel writes it without a WRITE request per page (see
//! `docs/SEMANTICS.md`, "Write passthrough"). Every other open of that inode
//! joins the epoch while it lasts; writers only while the staging file is
//! still the file's unsealed content ([`KernelIoTable::seal_staging`]).

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use super::Ino;
use crate::model::BlobHash;

/// The I/O mode chosen for one open handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleIo {
    /// Through the kernel's page cache (the FUSE default).
    Cached,
    /// The kernel reads the blob file itself. All passthrough opens of one
    /// inode in one `epoch` share a backing file; the epoch ends with the
    /// last of them.
    Passthrough { epoch: u64 },
}

/// The inode is open for passthrough reading of a blob this open cannot
/// share (a writer, or other content): the kernel would refuse any answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// What the current passthrough epoch of an inode gives the kernel.
#[derive(Debug, Clone)]
enum Backing {
    /// A clean blob, read only.
    Blob(BlobHash),
    /// The inode's staging file, which the kernel writes itself.
    /// `writable` until the epoch's last writer has gone and the file was
    /// sealed: later writers must wait for the epoch to end.
    Staging { file: Arc<File>, writable: bool },
}

#[derive(Debug, Default)]
struct InodeIo {
    cached: u32,
    passthrough: u32,
    backing: Option<Backing>,
    epoch: u64,
}

#[derive(Debug, Default)]
pub struct KernelIoTable {
    inodes: HashMap<Ino, InodeIo>,
    next_epoch: u64,
}

impl KernelIoTable {
    /// Chooses the mode of a new handle on `ino`. `passthrough_read` is the
    /// blob a read-only open of clean content may hand to the kernel (None for
    /// writers, local content, or when passthrough is not wanted).
    pub fn open(&mut self, ino: Ino, passthrough_read: Option<&BlobHash>) -> Result<HandleIo, Busy> {
        let entry = self.inodes.entry(ino).or_default();
        if entry.passthrough > 0 {
            let same_blob =
                matches!((&entry.backing, passthrough_read), (Some(Backing::Blob(h)), Some(want)) if h == want);
            if same_blob {
                entry.passthrough += 1;
                return Ok(HandleIo::Passthrough { epoch: entry.epoch });
            }
            return Err(Busy);
        }
        match passthrough_read {
            Some(hash) if entry.cached == 0 => {
                self.next_epoch += 1;
                entry.epoch = self.next_epoch;
                entry.backing = Some(Backing::Blob(hash.clone()));
                entry.passthrough = 1;
                Ok(HandleIo::Passthrough { epoch: entry.epoch })
            }
            _ => {
                entry.cached += 1;
                Ok(HandleIo::Cached)
            }
        }
    }

    /// Starts a staging epoch for a handle that just created `ino`: the
    /// kernel writes `staging` itself. None if the inode has other opens.
    pub fn start_staging(&mut self, ino: Ino, staging: Arc<File>) -> Option<HandleIo> {
        let entry = self.inodes.entry(ino).or_default();
        if entry.cached > 0 || entry.passthrough > 0 {
            return None;
        }
        self.next_epoch += 1;
        entry.epoch = self.next_epoch;
        entry.backing = Some(Backing::Staging {
            file: staging,
            writable: true,
        });
        entry.passthrough = 1;
        Some(HandleIo::Passthrough { epoch: entry.epoch })
    }

    /// Joins the staging epoch of `ino`, if one is open and `content` is its
    /// staging file (a writer also needs it unsealed, see `seal_staging`).
    /// Ok(None): no staging epoch; Err(Busy): one this open cannot share.
    pub fn join_staging(
        &mut self,
        ino: Ino,
        content: Option<&Arc<File>>,
        write: bool,
    ) -> Result<Option<HandleIo>, Busy> {
        let Some(entry) = self.inodes.get_mut(&ino) else {
            return Ok(None);
        };
        let Some(Backing::Staging { file, writable }) = &entry.backing else {
            return Ok(None);
        };
        if entry.passthrough == 0 {
            return Ok(None);
        }
        let same = content.is_some_and(|c| Arc::ptr_eq(c, file));
        if !same || (write && !writable) {
            return Err(Busy);
        }
        entry.passthrough += 1;
        Ok(Some(HandleIo::Passthrough { epoch: entry.epoch }))
    }

    /// The staging file the kernel writes for `ino`, while a staging epoch
    /// is open (its length and times are the file's).
    pub fn staging_file(&self, ino: Ino) -> Option<&Arc<File>> {
        match self.inodes.get(&ino) {
            Some(InodeIo {
                backing: Some(Backing::Staging { file, .. }),
                passthrough: 1..,
                ..
            }) => Some(file),
            _ => None,
        }
    }

    /// The staging file while the kernel may still write it: a staging
    /// epoch that writers can join (not sealed yet).
    pub fn kernel_writing(&self, ino: Ino) -> Option<&Arc<File>> {
        match self.inodes.get(&ino) {
            Some(InodeIo {
                backing: Some(Backing::Staging { file, writable: true }),
                passthrough: 1..,
                ..
            }) => Some(file),
            _ => None,
        }
    }

    /// The epoch's last writer is gone and its file was sealed: readers may
    /// still join, writers wait until the epoch ends.
    pub fn seal_staging(&mut self, ino: Ino) {
        if let Some(InodeIo {
            backing: Some(Backing::Staging { writable, .. }),
            ..
        }) = self.inodes.get_mut(&ino)
        {
            *writable = false;
        }
    }

    /// Whether an open that cannot be a passthrough read would be refused now.
    pub fn busy(&self, ino: Ino) -> bool {
        self.inodes.get(&ino).is_some_and(|e| e.passthrough > 0)
    }

    /// Whether a writer of `ino` must wait for passthrough readers: any
    /// passthrough epoch but a staging one still open to writers.
    pub fn writers_wait(&self, ino: Ino) -> bool {
        self.inodes
            .get(&ino)
            .is_some_and(|e| e.passthrough > 0 && !matches!(e.backing, Some(Backing::Staging { writable: true, .. })))
    }

    /// Forgets a released handle. Returns the passthrough epoch it ended, if
    /// it was the last open of one: its backing file can be let go.
    pub fn release(&mut self, ino: Ino, io: HandleIo) -> Option<u64> {
        let entry = self.inodes.get_mut(&ino)?;
        let mut ended = None;
        match io {
            HandleIo::Cached => entry.cached = entry.cached.saturating_sub(1),
            HandleIo::Passthrough { epoch } => {
                if entry.epoch == epoch && entry.passthrough > 0 {
                    entry.passthrough -= 1;
                    if entry.passthrough == 0 {
                        entry.backing = None;
                        ended = Some(epoch);
                    }
                }
            }
        }
        if entry.cached == 0 && entry.passthrough == 0 {
            self.inodes.remove(&ino);
        }
        ended
    }

    /// A passthrough open the kernel could not be given (no backing file
    /// could be registered, so no sibling of its epoch got one either): the
    /// handle becomes a cached one.
    pub fn downgrade(&mut self, ino: Ino, io: HandleIo) -> Option<u64> {
        let ended = self.release(ino, io);
        self.inodes.entry(ino).or_default().cached += 1;
        ended
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.inodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(text: &str) -> BlobHash {
        BlobHash::of(text.as_bytes())
    }

    fn epoch_of(io: Result<HandleIo, Busy>) -> u64 {
        match io {
            Ok(HandleIo::Passthrough { epoch }) => epoch,
            other => panic!("expected a passthrough open, got {other:?}"),
        }
    }

    #[test]
    fn readers_of_one_blob_share_an_epoch_and_writers_must_wait() {
        let mut t = KernelIoTable::default();
        let h = hash("a");
        let e1 = epoch_of(t.open(7, Some(&h)));
        let e2 = epoch_of(t.open(7, Some(&h)));
        assert_eq!(e1, e2);
        assert_eq!(t.open(7, None), Err(Busy), "a writer next to passthrough readers");
        assert_eq!(t.open(7, Some(&hash("b"))), Err(Busy), "other content");
        assert!(t.busy(7));
        assert_eq!(t.release(7, HandleIo::Passthrough { epoch: e1 }), None);
        assert_eq!(t.release(7, HandleIo::Passthrough { epoch: e2 }), Some(e1));
        assert!(!t.busy(7));
        assert_eq!(t.open(7, None), Ok(HandleIo::Cached), "the writer once they closed");
    }

    #[test]
    fn cached_opens_keep_readers_off_passthrough_until_they_close() {
        let mut t = KernelIoTable::default();
        let h = hash("x");
        assert_eq!(t.open(3, None), Ok(HandleIo::Cached));
        assert_eq!(t.open(3, Some(&h)), Ok(HandleIo::Cached));
        assert!(!t.busy(3));
        t.release(3, HandleIo::Cached);
        t.release(3, HandleIo::Cached);
        assert!(t.is_empty());
        let e = epoch_of(t.open(3, Some(&h)));
        assert_eq!(t.release(3, HandleIo::Passthrough { epoch: e }), Some(e));
        assert!(t.is_empty());
    }

    #[test]
    fn each_epoch_is_new() {
        let mut t = KernelIoTable::default();
        let first = epoch_of(t.open(1, Some(&hash("old"))));
        t.release(1, HandleIo::Passthrough { epoch: first });
        let second = epoch_of(t.open(1, Some(&hash("new"))));
        assert_ne!(first, second);
        // A stale release of the old epoch changes nothing.
        assert_eq!(t.release(1, HandleIo::Passthrough { epoch: first }), None);
        assert!(t.busy(1));
    }

    fn staging_file() -> Arc<File> {
        Arc::new(tempfile::tempfile().expect("temp file"))
    }

    #[test]
    fn a_staging_epoch_takes_readers_and_writers_of_its_file_until_it_is_sealed() {
        let mut t = KernelIoTable::default();
        let file = staging_file();
        let other = staging_file();
        let e = epoch_of(t.start_staging(4, file.clone()).ok_or(Busy));
        assert!(t.staging_file(4).is_some_and(|f| Arc::ptr_eq(f, &file)));
        assert!(!t.writers_wait(4), "writers of the same file join");
        assert_eq!(
            t.join_staging(4, Some(&file), true),
            Ok(Some(HandleIo::Passthrough { epoch: e }))
        );
        assert_eq!(
            t.join_staging(4, Some(&file), false),
            Ok(Some(HandleIo::Passthrough { epoch: e }))
        );
        assert_eq!(t.join_staging(4, Some(&other), false), Err(Busy), "other content");
        assert_eq!(t.join_staging(4, None, false), Err(Busy), "clean content");
        assert_eq!(t.open(4, None), Err(Busy), "a cached open next to it");
        assert!(t.kernel_writing(4).is_some());
        t.seal_staging(4);
        assert!(t.kernel_writing(4).is_none(), "sealed");
        assert!(t.staging_file(4).is_some(), "readers still read it");
        assert!(t.writers_wait(4));
        assert_eq!(
            t.join_staging(4, Some(&file), true),
            Err(Busy),
            "a writer after the seal"
        );
        assert_eq!(
            t.join_staging(4, Some(&file), false),
            Ok(Some(HandleIo::Passthrough { epoch: e }))
        );
        for _ in 0..3 {
            assert_eq!(t.release(4, HandleIo::Passthrough { epoch: e }), None);
        }
        assert_eq!(t.release(4, HandleIo::Passthrough { epoch: e }), Some(e));
        assert!(t.staging_file(4).is_none());
        assert_eq!(t.join_staging(4, Some(&file), true), Ok(None), "no epoch any more");
        assert!(t.is_empty());
    }

    #[test]
    fn a_staging_epoch_starts_only_on_an_inode_nobody_has_open() {
        let mut t = KernelIoTable::default();
        assert_eq!(t.open(5, None), Ok(HandleIo::Cached));
        assert_eq!(t.start_staging(5, staging_file()), None);
        assert_eq!(
            t.join_staging(5, None, true),
            Ok(None),
            "cached opens are no staging epoch"
        );
        t.release(5, HandleIo::Cached);
        let h = hash("x");
        let e = epoch_of(t.open(5, Some(&h)));
        assert_eq!(t.start_staging(5, staging_file()), None, "blob readers hold it");
        assert_eq!(
            t.join_staging(5, None, false),
            Ok(None),
            "a blob epoch is no staging epoch"
        );
        t.release(5, HandleIo::Passthrough { epoch: e });
        assert!(t.is_empty());
    }

    #[test]
    fn a_downgraded_handle_ends_its_epoch_and_counts_as_cached() {
        let mut t = KernelIoTable::default();
        let h = hash("x");
        let e = epoch_of(t.open(9, Some(&h)));
        assert_eq!(t.downgrade(9, HandleIo::Passthrough { epoch: e }), Some(e));
        assert!(!t.busy(9));
        assert_eq!(t.open(9, Some(&h)), Ok(HandleIo::Cached), "cached opens exist now");
        t.release(9, HandleIo::Cached);
        t.release(9, HandleIo::Cached);
        assert!(t.is_empty());
    }
}
