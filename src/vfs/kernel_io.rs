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

use std::collections::HashMap;

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

#[derive(Debug, Default)]
struct InodeIo {
    cached: u32,
    passthrough: u32,
    /// The blob the current passthrough epoch reads.
    hash: Option<BlobHash>,
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
            if passthrough_read.is_some() && passthrough_read == entry.hash.as_ref() {
                entry.passthrough += 1;
                return Ok(HandleIo::Passthrough { epoch: entry.epoch });
            }
            return Err(Busy);
        }
        match passthrough_read {
            Some(hash) if entry.cached == 0 => {
                self.next_epoch += 1;
                entry.epoch = self.next_epoch;
                entry.hash = Some(hash.clone());
                entry.passthrough = 1;
                Ok(HandleIo::Passthrough { epoch: entry.epoch })
            }
            _ => {
                entry.cached += 1;
                Ok(HandleIo::Cached)
            }
        }
    }

    /// Whether an open that cannot be a passthrough read would be refused now.
    pub fn busy(&self, ino: Ino) -> bool {
        self.inodes.get(&ino).is_some_and(|e| e.passthrough > 0)
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
                        entry.hash = None;
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
