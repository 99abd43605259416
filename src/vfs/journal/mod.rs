//! The durable journal of local changes the server has not acknowledged yet.
//!
//! One record per changed inode, keyed by the inode's local uid. A record
//! describes the *state* the inode should reach on the server (its path,
//! content, mode, or deletion), not a list of operations, so repeated edits of
//! one file collapse into one commit and an editor's temp-file-and-rename save
//! becomes one commit on the target.
//!
//! Records live in one append-only log, `STATE/journal/journal.log`, as
//! checksummed frames (`frame.rs`). Appending only fills a buffer;
//! [`Journal::make_written`] writes it to the log (the page cache: it then
//! survives the process dying) and [`Journal::make_durable`] also fdatasyncs,
//! concurrent callers sharing one write and one fsync (group commit). What
//! `close()` waits for is the [`Durability`] mode (docs/SEMANTICS.md,
//! "Durability"); a FUSE call appends under the core's lock and writes or
//! syncs after releasing it, so no other file operation waits for the disk.
//! Acknowledgements (removals) are appended without waiting: losing one in a
//! crash only means a record is sent again, and its idempotency key makes
//! the server answer with the version it already made.
//!
//! Replay keeps every complete frame whose checksum holds. A torn or corrupt
//! frame (a power loss mid-write, a bad sector) is skipped with a warning
//! naming its offset and length, and replay resynchronises on the next valid
//! frame, so one bad frame in the middle never hides the frames after it. A
//! write that fails part-way (EIO, ENOSPC, EFBIG) is cut off again before
//! anything else is appended: the log never holds a torn frame followed by
//! frames that were reported durable. The log is compacted (live records
//! only) when the journal is opened and whenever it empties.
//!
//! Small contents are stored inside the record; larger ones as
//! `STATE/pending/<hash>` files (`content.rs`): the staging file itself,
//! hard-linked, synced before the log record that names it becomes durable.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::VfsError;
use crate::api::NodeKind;
use crate::model::BlobHash;
use frame::{decode, encode, Entry};
use live::LiveRecords;

mod content;
mod frame;
mod live;
#[cfg(test)]
mod tests;

pub use content::{PendingClaim, ReadAt, Snapshot};

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
    /// Set when metadata (mode, times) changed: commit even without new content.
    #[serde(alias = "mode_dirty")]
    pub meta_dirty: bool,
    /// Unix milliseconds of the last local change.
    pub changed_at: i64,
    /// The file's mtime and atime (nanoseconds since the epoch) to commit;
    /// absent in records written before file times were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<i64>,
    /// Small contents inline (base64), so replay needs nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Why the server last refused this record, for `contextfs status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The content is a staging file the kernel may still be writing (write
    /// passthrough), linked as `pending/.open-<uid>`; its hash is taken
    /// once its writers are gone (or on replay). `content` is then unset
    /// and the record is not sent yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_content: bool,
}

impl Record {
    /// The content this record keeps as a pending file (`pending/<hash>`):
    /// its hash, unless the bytes are inline.
    pub fn pending_content(&self) -> Option<&BlobHash> {
        self.content.as_ref().filter(|_| self.inline.is_none())
    }
}

/// When a change a FUSE call journaled survives what (docs/SEMANTICS.md,
/// "Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Like a local disk: `close()` returns once the record is written to
    /// the log (the page cache), so it survives the mount process dying at
    /// once; a background group fsync makes it survive a power loss within
    /// `group_sync` (see [`Journal::wait_until_undurable`]). `fsync(2)` makes
    /// it durable at once.
    Local { group_sync: std::time::Duration },
    /// Every `close()` waits for its own fdatasync (shared with concurrent
    /// closes), as before `Local` existed.
    Strict,
}

impl Durability {
    /// The mount's default: a group fsync at most 100 ms after a change.
    pub const DEFAULT_GROUP_SYNC: std::time::Duration = std::time::Duration::from_millis(100);
    pub const DEFAULT: Durability = Durability::Local {
        group_sync: Self::DEFAULT_GROUP_SYNC,
    };
}

pub struct Journal {
    dir: PathBuf,
    pending: PathBuf,
    log_path: PathBuf,
    log: Mutex<Log>,
    synced: Condvar,
    /// Signalled when a frame is appended, for the group-sync thread.
    appended: Condvar,
    durability: Durability,
}

struct Log {
    /// Shared with the leader writing outside the lock (no dup per write).
    file: Arc<File>,
    /// Encoded frames appended but not yet written.
    buffer: Vec<u8>,
    /// Frames appended so far / written to the log file (the page cache) /
    /// known durable on disk.
    appended: u64,
    written: u64,
    durable: u64,
    /// Pending content files written without an fsync (`Durability::Local`):
    /// synced, with their directory, before the log's next fdatasync, so a
    /// durable record never names content that a power loss could take.
    unsynced_pending: Vec<PathBuf>,
    /// Pending content files whose records are removed, by file name, each
    /// with the `appended` count when it was doomed: deleted only once that
    /// frame is durable, so a power loss that takes the removal leaves the
    /// record its content. Making the same content pending again spares it.
    doomed_pending: HashMap<String, u64>,
    /// Pending content files this process made that no frame written to
    /// the log can name yet, each with the `appended` count when it was
    /// made (frames naming it come later). Doomed before the next write, one
    /// is deleted at once: no record on disk can ask for it, and on a full
    /// disk (a close whose record could not be written, then `rm`) its bytes
    /// are the room the removal's own frame needs.
    fresh_pending: HashMap<String, u64>,
    /// Pending content files a close has just made or found (by name, with
    /// how many such closes), whose records are not appended yet: no record
    /// names them, but one is about to. Not deleted meanwhile (see
    /// [`PendingClaim`]).
    claimed_pending: HashMap<String, usize>,
    /// Claimed files whose deletion was asked for meanwhile: looked at again
    /// when the last claim ends.
    doomed_while_claimed: std::collections::HashSet<String>,
    /// A leader is writing and syncing right now.
    syncing: bool,
    /// Live records, to compact the log.
    live: LiveRecords,
    /// Bytes in the log file: where the next write starts.
    size: u64,
    /// A failed write left bytes past `size` that could not be cut off: the
    /// next write rewrites the whole log instead of appending after them.
    torn: bool,
    /// Test hook: the next write stops after this many bytes and fails, as a
    /// full disk or an I/O error would.
    #[cfg(test)]
    fail_write_after: Option<usize>,
}

/// Compact when the log grows past this (it is also compacted whenever it empties).
const COMPACT_AT: u64 = 64 << 20;

fn io(what: &str, path: &Path, e: std::io::Error) -> VfsError {
    VfsError::io(format_args!("journal: cannot {what} {}", path.display()), e)
}

/// The file name of record `uid`'s open content (see [`Record::open_content`]).
pub fn open_content_name(uid: u64) -> String {
    format!(".open-{uid:016x}")
}

fn fsync_dir(dir: &Path) -> Result<(), VfsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync", dir, e))
}

impl Journal {
    /// Opens the journal with [`Durability::Strict`] (tests and tools).
    pub fn open(state_dir: &Path) -> Result<Self, VfsError> {
        Self::open_with(state_dir, Durability::Strict)
    }

    /// Opens the journal, replaying and compacting its log.
    pub fn open_with(state_dir: &Path, durability: Durability) -> Result<Self, VfsError> {
        let dir = state_dir.join("journal");
        let pending = state_dir.join("pending");
        for d in [&dir, &pending] {
            fs::create_dir_all(d).map_err(|e| io("create", d, e))?;
        }
        let log_path = dir.join("journal.log");
        let live = Self::read_log(&log_path)?;
        Self::remove_unreferenced_pending(&pending, &live);
        let file = Self::write_compacted(&dir, &log_path, &live)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            dir,
            pending,
            log_path,
            log: Mutex::new(Log {
                file: Arc::new(file),
                buffer: Vec::new(),
                appended: 0,
                written: 0,
                durable: 0,
                unsynced_pending: Vec::new(),
                doomed_pending: HashMap::new(),
                fresh_pending: HashMap::new(),
                claimed_pending: HashMap::new(),
                doomed_while_claimed: std::collections::HashSet::new(),
                syncing: false,
                live,
                size,
                torn: false,
                #[cfg(test)]
                fail_write_after: None,
            }),
            synced: Condvar::new(),
            appended: Condvar::new(),
            durability,
        })
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn read_log(path: &Path) -> Result<LiveRecords, VfsError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("read", path, e)),
        };
        let (entries, skipped) = decode(&bytes);
        for s in &skipped {
            // A write that was cut off (it never returned success), or damage.
            tracing::warn!(
                path = %path.display(),
                offset = s.offset,
                bytes = s.len,
                at_tail = s.offset + s.len == bytes.len(),
                "journal: skipping a torn or corrupt frame; every intact frame around it is kept"
            );
        }
        let mut live = LiveRecords::default();
        for entry in entries {
            match entry {
                Entry::Put(r) => live.put(*r),
                Entry::Remove(uid) => live.remove(uid),
            }
        }
        Ok(live)
    }

    /// Rewrites the log with only `live` records (temp file, fsync, rename,
    /// fsync of the directory) and returns it open for appending.
    fn write_compacted(dir: &Path, log_path: &Path, live: &LiveRecords) -> Result<File, VfsError> {
        let temp = dir.join("journal.log.tmp");
        let mut bytes = Vec::new();
        // In change order, which the frames' order carries to the next open.
        for r in live.in_change_order() {
            encode(&Entry::Put(Box::new(r.clone())), &mut bytes)?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| io("create", &temp, e))?;
        f.write_all(&bytes).map_err(|e| io("write", &temp, e))?;
        f.sync_all().map_err(|e| io("fsync", &temp, e))?;
        fs::rename(&temp, log_path).map_err(|e| io("rename", log_path, e))?;
        fsync_dir(dir)?;
        OpenOptions::new()
            .append(true)
            .open(log_path)
            .map_err(|e| io("open", log_path, e))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes pending content no live record names: a content superseded
    /// by a later close of the same file while the mount ran, or a temp file
    /// a crash left. Only on open, before anything can make content pending.
    fn remove_unreferenced_pending(pending: &Path, live: &LiveRecords) {
        let mut named: std::collections::HashSet<String> = live
            .values()
            .filter_map(|r| r.pending_content().map(|h| h.as_str().to_string()))
            .collect();
        named.extend(
            live.values()
                .filter(|r| r.open_content)
                .map(|r| open_content_name(r.uid)),
        );
        let Ok(entries) = fs::read_dir(pending) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !named.contains(&name) {
                tracing::debug!(file = %name, "removing pending content no record names");
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    pub fn pending_blob_path(&self, hash: &BlobHash) -> PathBuf {
        self.pending.join(hash.as_str())
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, entry: Entry) -> Result<(), VfsError> {
        let mut log = self.lock();
        encode(&entry, &mut log.buffer)?;
        log.appended += 1;
        self.appended.notify_one();
        match entry {
            Entry::Put(r) => log.live.put(*r),
            Entry::Remove(uid) => log.live.remove(uid),
        }
        Ok(())
    }

    /// Appends a record; it is durable once [`Journal::make_durable`] returns.
    pub fn write(&self, record: &Record) -> Result<(), VfsError> {
        self.append(Entry::Put(Box::new(record.clone())))
    }

    /// Appends the removal of a record the server fully acknowledged.
    pub fn remove(&self, uid: u64) -> Result<(), VfsError> {
        self.append(Entry::Remove(uid))
    }

    /// What `close()` waits for: the record written to the log (`Local`:
    /// it survives the process dying; the group sync makes it durable) or
    /// durable (`Strict`).
    pub fn close_point(&self) -> Result<(), VfsError> {
        match self.durability {
            Durability::Local { .. } => self.make_written(),
            Durability::Strict => self.make_durable(),
        }
    }

    /// Writes everything appended so far to the log file, without an fsync:
    /// it then survives the mount process dying (kill -9, OOM, panic), and
    /// a write error (ENOSPC) reaches the caller.
    pub fn make_written(&self) -> Result<(), VfsError> {
        self.persist(false)
    }

    /// Makes everything appended so far durable. Concurrent callers share one
    /// write and fdatasync: the first becomes the leader and writes for all.
    pub fn make_durable(&self) -> Result<(), VfsError> {
        self.persist(true)
    }

    /// For the group-sync thread: waits (at most `timeout`) until something
    /// appended is not durable yet; true if so.
    pub fn wait_until_undurable(&self, timeout: std::time::Duration) -> bool {
        let log = self.lock();
        if log.durable < log.appended {
            return true;
        }
        let (log, _) = self
            .appended
            .wait_timeout(log, timeout)
            .unwrap_or_else(|p| p.into_inner());
        log.durable < log.appended
    }

    fn persist(&self, sync: bool) -> Result<(), VfsError> {
        let mut log = self.lock();
        let target = log.appended;
        loop {
            if log.durable >= target || (!sync && log.written >= target) {
                return Ok(());
            }
            if log.syncing {
                log = self.synced.wait(log).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            if log.torn {
                // A failed write left bytes that could not be cut off: rewrite
                // the log from the live records (they include the buffer).
                self.rewrite(&mut log)?;
                self.synced.notify_all();
                continue;
            }
            log.syncing = true;
            let batch = std::mem::take(&mut log.buffer);
            let upto = log.appended;
            let start = log.size;
            let blobs = if sync {
                std::mem::take(&mut log.unsynced_pending)
            } else {
                Vec::new()
            };
            #[cfg(test)]
            let fail_after = log.fail_write_after.take();
            #[cfg(not(test))]
            let fail_after: Option<usize> = None;
            let file = log.file.clone();
            drop(log);
            let result = (|| {
                let mut f: &File = &file;
                if batch.is_empty() && !sync {
                    return Ok(());
                }
                let write = match fail_after {
                    Some(n) => f
                        .write_all(&batch[..n.min(batch.len())])
                        .and(Err(std::io::Error::from_raw_os_error(libc::EIO))),
                    None => f.write_all(&batch),
                };
                write.map_err(|e| {
                    // Cut off whatever part of the batch reached the file, so
                    // the retry does not append after a torn frame.
                    let cut = f.set_len(start).and_then(|()| f.sync_data());
                    (io("write", &self.log_path, e), cut.is_ok())
                })?;
                if !sync {
                    return Ok(());
                }
                // Content first: a durable record must find its pending file.
                // (On failure the batch is in the file already: the next
                // attempt rewrites the log from the live records.)
                self.sync_pending(&blobs).map_err(|e| (e, false))?;
                f.sync_data().map_err(|e| (io("fsync", &self.log_path, e), false))
            })();
            log = self.lock();
            log.syncing = false;
            if let Err((e, cut)) = result {
                // Keep the frames for the next attempt. After a failed fsync
                // the file's state is unknown, so that attempt rewrites it.
                let newer = std::mem::take(&mut log.buffer);
                log.buffer = batch;
                log.buffer.extend_from_slice(&newer);
                log.unsynced_pending.extend(blobs);
                log.torn |= !cut;
                if !cut {
                    // Part of the batch may be in the file: what it names is not fresh.
                    log.fresh_pending.clear();
                }
                self.synced.notify_all();
                return Err(e);
            }
            log.written = upto;
            // A frame naming one made before `upto` may be in the file now.
            log.fresh_pending.retain(|_, made_at| *made_at >= upto);
            if sync {
                log.durable = upto;
                self.delete_doomed_pending(&mut log);
            }
            log.size += batch.len() as u64;
            self.synced.notify_all();
            if sync && (log.live.is_empty() || log.size > COMPACT_AT) {
                self.compact(&mut log);
            }
        }
    }

    /// Rewrites the log from the live records, which already hold every
    /// appended frame: afterwards nothing is buffered and all is durable.
    fn rewrite(&self, log: &mut Log) -> Result<(), VfsError> {
        let file = Self::write_compacted(&self.dir, &self.log_path, &log.live)?;
        log.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        log.file = Arc::new(file);
        log.buffer.clear();
        log.written = log.appended;
        log.durable = log.appended;
        log.torn = false;
        log.fresh_pending.clear();
        self.delete_doomed_pending(log);
        Ok(())
    }

    /// Deletes the doomed pending files whose removal frames are durable
    /// now (under the log lock, which making content pending takes too).
    fn delete_doomed_pending(&self, log: &mut Log) {
        let durable = log.durable;
        log.doomed_pending.retain(|name, doomed_at| {
            if *doomed_at > durable {
                return true;
            }
            let _ = fs::remove_file(self.pending.join(name));
            false
        });
    }

    /// fdatasyncs pending content files written without one, then their
    /// directory. A file already gone was acknowledged and retired.
    fn sync_pending(&self, blobs: &[PathBuf]) -> Result<(), VfsError> {
        if blobs.is_empty() {
            return Ok(());
        }
        for path in blobs {
            match File::open(path) {
                Ok(f) => f.sync_data().map_err(|e| io("fsync", path, e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("open", path, e)),
            }
        }
        fsync_dir(&self.pending)
    }

    /// Rewrites the log with its live records. Runs with the log locked and
    /// nothing buffered or in flight, so no frame can be lost.
    fn compact(&self, log: &mut Log) {
        if !log.buffer.is_empty() || log.syncing || log.durable != log.appended {
            return;
        }
        if let Err(e) = self.rewrite(log) {
            tracing::warn!(error = %e, "journal compaction failed; the log keeps growing");
        }
    }

    /// Every live record (for replay after a restart or a crash).
    pub fn load(&self) -> Result<Vec<Record>, VfsError> {
        Ok(self.lock().live.in_change_order().into_iter().cloned().collect())
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
