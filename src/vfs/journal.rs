//! The durable journal of local changes the server has not acknowledged yet.
//!
//! One record per changed inode, keyed by the inode's local uid. A record
//! describes the *state* the inode should reach on the server (its path,
//! content, mode, or deletion), not a list of operations, so repeated edits of
//! one file collapse into one commit and an editor's temp-file-and-rename save
//! becomes one commit on the target.
//!
//! Records live in one append-only log, `STATE/journal/journal.log`, as
//! checksummed frames. Appending only fills a buffer; [`Journal::make_durable`] writes
//! and fdatasyncs everything appended so far, and concurrent callers share one
//! fsync (group commit). A FUSE call that changes state appends under the
//! core's lock and syncs after releasing it, so `close()` returns only once the
//! change is on disk without making every other file operation wait for the
//! disk. Acknowledgements (removals) are appended without waiting: losing one
//! in a crash only means a record is sent again, and its idempotency key makes
//! the server answer with the version it already made.
//!
//! Replay keeps every complete frame whose checksum holds. A torn or corrupt
//! frame (a power loss mid-write, a bad sector) is skipped with a warning
//! naming its offset and length, and replay resynchronises on the next valid
//! frame, so one bad frame in the middle never hides the frames after it. A
//! write that fails part-way (EIO, ENOSPC, EFBIG) is cut off again before
//! anything else is appended: the log never holds a torn frame followed by
//! frames that were reported durable. The log is compacted (live records
//! only) when the journal is opened and whenever it empties. Small contents are stored inside the record; larger ones as
//! `STATE/pending/<hash>` files written (and fsynced) before their record.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

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

/// One frame of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Put(Box<Record>),
    Remove(u64),
}

struct Log {
    file: File,
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
    /// A leader is writing and syncing right now.
    syncing: bool,
    /// Live records, to compact the log.
    live: HashMap<u64, Record>,
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

fn fsync_dir(dir: &Path) -> Result<(), VfsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync", dir, e))
}

/// `len (u32 LE) | blake3(json)[..8] | json`
fn encode(entry: &Entry, out: &mut Vec<u8>) -> Result<(), VfsError> {
    let json = serde_json::to_vec(entry).map_err(|e| VfsError::new(libc::EIO, format!("journal: {e}")))?;
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&blake3::hash(&json).as_bytes()[..8]);
    out.extend_from_slice(&json);
    Ok(())
}

/// A frame longer than this is taken for garbage while resynchronising.
const MAX_FRAME: usize = 64 << 20;

/// The frame starting at `pos`, and where it ends, if it is complete and intact.
fn frame_at(bytes: &[u8], pos: usize) -> Option<(Entry, usize)> {
    let header = bytes.get(pos..pos + 12)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let json = bytes.get(pos + 12..pos + 12 + len)?;
    if json.first() != Some(&b'{') || blake3::hash(json).as_bytes()[..8] != header[4..12] {
        return None;
    }
    let entry = serde_json::from_slice::<Entry>(json).ok()?;
    Some((entry, pos + 12 + len))
}

/// A stretch of the log that held no valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Skipped {
    offset: usize,
    len: usize,
}

/// Every intact frame, resynchronising after a torn or corrupt one on the
/// next offset where an intact frame starts; and the stretches skipped.
fn decode(bytes: &[u8]) -> (Vec<Entry>, Vec<Skipped>) {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        if let Some((entry, end)) = frame_at(bytes, pos) {
            entries.push(entry);
            pos = end;
            continue;
        }
        let next = (pos + 1..bytes.len())
            .find(|&p| frame_at(bytes, p).is_some())
            .unwrap_or(bytes.len());
        skipped.push(Skipped {
            offset: pos,
            len: next - pos,
        });
        pos = next;
    }
    (entries, skipped)
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
        let file = Self::write_compacted(&dir, &log_path, &live)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            dir,
            pending,
            log_path,
            log: Mutex::new(Log {
                file,
                buffer: Vec::new(),
                appended: 0,
                written: 0,
                durable: 0,
                unsynced_pending: Vec::new(),
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

    fn read_log(path: &Path) -> Result<HashMap<u64, Record>, VfsError> {
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
        let mut live = HashMap::new();
        for entry in entries {
            match entry {
                Entry::Put(r) => {
                    live.insert(r.uid, *r);
                }
                Entry::Remove(uid) => {
                    live.remove(&uid);
                }
            }
        }
        Ok(live)
    }

    /// Rewrites the log with only `live` records (temp file, fsync, rename,
    /// fsync of the directory) and returns it open for appending.
    fn write_compacted(dir: &Path, log_path: &Path, live: &HashMap<u64, Record>) -> Result<File, VfsError> {
        let temp = dir.join("journal.log.tmp");
        let mut bytes = Vec::new();
        let mut records: Vec<&Record> = live.values().collect();
        records.sort_by_key(|r| (r.changed_at, r.uid));
        for r in records {
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
            Entry::Put(r) => {
                log.live.insert(r.uid, *r);
            }
            Entry::Remove(uid) => {
                log.live.remove(&uid);
            }
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
            // Nothing reached the file if it cannot even be reopened.
            let file = log.file.try_clone().map_err(|e| (io("open", &self.log_path, e), true));
            drop(log);
            let result = file.and_then(|mut f| {
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
            });
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
                self.synced.notify_all();
                return Err(e);
            }
            log.written = upto;
            if sync {
                log.durable = upto;
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
        log.file = file;
        log.buffer.clear();
        log.written = log.appended;
        log.durable = log.appended;
        log.torn = false;
        Ok(())
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
            let hash = BlobHash::from_blake3(hasher.finalize());
            let target = self.pending_blob_path(&hash);
            match self.durability {
                Durability::Strict => {
                    out.sync_all().map_err(|e| io("fsync", &temp, e))?;
                    fs::rename(&temp, &target).map_err(|e| io("rename", &target, e))?;
                    fsync_dir(&self.pending)?;
                }
                Durability::Local { .. } => {
                    // Synced by the next make_durable, before the log.
                    fs::rename(&temp, &target).map_err(|e| io("rename", &target, e))?;
                    self.lock().unsynced_pending.push(target);
                }
            }
            Ok((hash, size, None))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    pub fn remove_pending_blob(&self, hash: &BlobHash) {
        let _ = fs::remove_file(self.pending_blob_path(hash));
    }

    /// Every live record (for replay after a restart or a crash).
    pub fn load(&self) -> Result<Vec<Record>, VfsError> {
        let mut out: Vec<Record> = self.lock().live.values().cloned().collect();
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
            meta_dirty: false,
            changed_at: 1,
            mtime: None,
            atime: None,
            inline: Some(Journal::encode_inline(b"hi")),
            last_error: None,
        }
    }

    #[test]
    fn synced_records_survive_reopen_and_removals_compact_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.write(&record(7)).unwrap();
        let mut r = record(7);
        r.rev = 2;
        j.write(&r).unwrap();
        j.write(&record(8)).unwrap();
        j.make_durable().unwrap();
        let j2 = Journal::open(dir.path()).unwrap();
        let loaded = j2.load().unwrap();
        assert_eq!(loaded.len(), 2);
        assert!(loaded.contains(&r), "the last revision of a record wins");
        assert_eq!(Journal::inline_bytes(&loaded[0]).unwrap(), b"hi");
        j2.remove(7).unwrap();
        j2.remove(8).unwrap();
        j2.make_durable().unwrap();
        assert!(Journal::open(dir.path()).unwrap().load().unwrap().is_empty());
        let log = dir.path().join("journal/journal.log");
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            0,
            "an empty journal is compacted to nothing"
        );
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_ignored_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.write(&record(1)).unwrap();
        j.write(&record(2)).unwrap();
        j.make_durable().unwrap();
        drop(j);
        let log = dir.path().join("journal/journal.log");
        let mut bytes = std::fs::read(&log).unwrap();
        let mut third = Vec::new();
        encode(&Entry::Put(Box::new(record(3))), &mut third).unwrap();
        bytes.extend_from_slice(&third[..third.len() / 2]); // cut off mid-frame
        std::fs::write(&log, &bytes).unwrap();
        assert_eq!(uids_after_reopen(dir.path()), [1, 2]);
        // A flipped byte inside a frame fails its checksum: replay stops there.
        let mut bytes = std::fs::read(&log).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        std::fs::write(&log, &bytes).unwrap();
        assert_eq!(Journal::open(dir.path()).unwrap().load().unwrap().len(), 1);
    }

    /// `Durability::Local`: a record is in the log file (it survives the
    /// process) as soon as close_point returns, without an fsync; the next
    /// make_durable makes it durable.
    #[test]
    fn local_close_point_writes_without_an_fsync_and_survives_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open_with(dir.path(), Durability::DEFAULT).unwrap();
        for uid in 1..=500 {
            j.write(&record(uid)).unwrap();
            j.close_point().unwrap();
        }
        j.remove(7).unwrap();
        j.make_written().unwrap();
        assert!(
            j.wait_until_undurable(std::time::Duration::ZERO),
            "nothing was fsynced yet"
        );
        // The process dies here: nothing more is written or synced.
        let expected: Vec<u64> = (1..=500).filter(|u| *u != 7).collect();
        assert_eq!(uids_after_reopen(dir.path()), expected);
        j.make_durable().unwrap();
        assert!(!j.wait_until_undurable(std::time::Duration::ZERO));
        drop(j);
        assert_eq!(uids_after_reopen(dir.path()), expected);
    }

    fn uids_after_reopen(dir: &Path) -> Vec<u64> {
        let mut uids: Vec<u64> = Journal::open(dir)
            .unwrap()
            .load()
            .unwrap()
            .iter()
            .map(|r| r.uid)
            .collect();
        uids.sort();
        uids
    }

    /// A write that fails part-way (EIO, ENOSPC, EFBIG) leaves no torn frame
    /// in front of the frames that later syncs report durable.
    #[test]
    fn a_write_failing_mid_frame_loses_nothing_synced_later() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.write(&record(1)).unwrap();
        j.make_durable().unwrap();
        j.write(&record(2)).unwrap();
        j.lock().fail_write_after = Some(20); // inside the frame's JSON
        let err = j
            .make_durable()
            .expect_err("the injected write failure must reach the caller");
        assert_eq!(err.errno, libc::EIO);
        j.write(&record(3)).unwrap();
        j.make_durable().unwrap();
        j.write(&record(4)).unwrap();
        j.make_durable().unwrap();
        let on_disk = std::fs::read(dir.path().join("journal/journal.log")).unwrap();
        assert_eq!(decode(&on_disk).1, [], "the torn part of the failed write was cut off");
        drop(j);
        assert_eq!(uids_after_reopen(dir.path()), [1, 2, 3, 4]);
    }

    /// When the torn bytes cannot be cut off, the next sync rewrites the log.
    #[test]
    fn a_torn_write_that_cannot_be_cut_off_is_rewritten_over() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.write(&record(1)).unwrap();
        j.make_durable().unwrap();
        // What a failed write leaves when truncating it fails too.
        let mut half = Vec::new();
        encode(&Entry::Put(Box::new(record(9))), &mut half).unwrap();
        let log_path = dir.path().join("journal/journal.log");
        let mut f = OpenOptions::new().append(true).open(&log_path).unwrap();
        f.write_all(&half[..half.len() / 2]).unwrap();
        j.lock().torn = true;
        j.write(&record(2)).unwrap();
        j.make_durable().unwrap();
        assert!(!j.lock().torn);
        j.write(&record(3)).unwrap();
        j.make_durable().unwrap();
        drop(j);
        assert_eq!(uids_after_reopen(dir.path()), [1, 2, 3]);
    }

    /// A torn or corrupt frame in the middle hides none of the frames after it.
    #[test]
    fn replay_resynchronises_after_a_bad_frame_in_the_middle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("journal")).unwrap();
        let log = dir.path().join("journal/journal.log");
        let frame = |uid| {
            let mut b = Vec::new();
            encode(&Entry::Put(Box::new(record(uid))), &mut b).unwrap();
            b
        };
        // 1, half of 2, 3, 4 with a flipped byte, 5.
        let mut bytes = frame(1);
        bytes.extend_from_slice(&frame(2)[..30]);
        bytes.extend(frame(3));
        let mut corrupt = frame(4);
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0x55;
        bytes.extend(corrupt);
        bytes.extend(frame(5));
        let (entries, skipped) = decode(&bytes);
        assert_eq!(entries.len(), 3);
        assert_eq!(skipped.len(), 2, "the torn and the corrupt frame: {skipped:?}");
        assert_eq!(skipped[0].offset, frame(1).len());
        assert_eq!(skipped[0].len, 30);
        std::fs::write(&log, &bytes).unwrap();
        assert_eq!(uids_after_reopen(dir.path()), [1, 3, 5]);
        // Opening compacted the log: it now holds only intact frames.
        assert!(decode(&std::fs::read(&log).unwrap()).1.is_empty());
    }

    #[test]
    fn concurrent_writers_share_syncs_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(Journal::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        j.write(&record(t * 1000 + i)).unwrap();
                        j.make_durable().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(j);
        assert_eq!(Journal::open(dir.path()).unwrap().load().unwrap().len(), 400);
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
}
