//! The in-memory LRU index of one process's view of the cache directory.
//!
//! It only does bookkeeping (sizes, recency, the running total); every file
//! operation lives in the parent module, so this part is pure and cheap to
//! hold under a mutex.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use lru::LruCache;

use crate::model::BlobHash;

/// How stale a blob's on-disk mtime may get before a read touches it again.
/// Touching on every read would turn reads into metadata writes.
pub(super) const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub size: u64,
    /// Last use seen by this process.
    pub last_used: SystemTime,
    /// The mtime we last saw or set on disk; other processes order by it.
    pub disk_mtime: SystemTime,
    /// This process wrote the blob, or has checked its bytes since it found
    /// it on disk (see `UNSYNCED_MAX` in the parent module).
    pub verified: bool,
}

impl Entry {
    /// A blob seen on disk but never used by this process.
    pub fn on_disk(size: u64, mtime: SystemTime) -> Self {
        Self {
            size,
            last_used: mtime,
            disk_mtime: mtime,
            verified: false,
        }
    }

    /// Recency used when merging with a directory scan: whichever is newer of
    /// our own use and another process's touch.
    fn recency(&self) -> SystemTime {
        self.last_used.max(self.disk_mtime)
    }
}

/// Whether `mtime` is old enough (or in the future after a clock jump) that
/// a read should refresh it.
pub(super) fn needs_touch(mtime: SystemTime, now: SystemTime) -> bool {
    now.duration_since(mtime).map_or(true, |age| age >= TOUCH_INTERVAL)
}

pub(super) struct Index {
    lru: LruCache<BlobHash, Entry>,
    used: u64,
}

impl Index {
    pub fn new() -> Self {
        Self {
            // Bounded by bytes, not entries, so the count limit is unused.
            lru: LruCache::unbounded(),
            used: 0,
        }
    }

    /// Builds an index from `(hash, entry)` pairs, ordering by recency
    /// (oldest becomes least recently used). The sort is stable, so ties keep
    /// the order they were given in.
    pub fn from_entries(mut entries: Vec<(BlobHash, Entry)>) -> Self {
        entries.sort_by_key(|(_, e)| e.recency());
        let mut index = Self::new();
        for (hash, entry) in entries {
            index.insert(hash, entry);
        }
        index
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    #[cfg(test)]
    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.lru.contains(hash)
    }

    /// Inserts as most recently used, replacing (and un-counting) any old entry.
    pub fn insert(&mut self, hash: BlobHash, entry: Entry) {
        self.used = self.used.saturating_add(entry.size);
        if let Some(old) = self.lru.put(hash, entry) {
            self.used = self.used.saturating_sub(old.size);
        }
    }

    pub fn remove(&mut self, hash: &BlobHash) -> Option<Entry> {
        let entry = self.lru.pop(hash)?;
        self.used = self.used.saturating_sub(entry.size);
        Some(entry)
    }

    pub fn pop_lru(&mut self) -> Option<(BlobHash, Entry)> {
        let (hash, entry) = self.lru.pop_lru()?;
        self.used = self.used.saturating_sub(entry.size);
        Some((hash, entry))
    }

    /// Marks a use. `None` when the hash is not indexed; otherwise whether the
    /// caller should now touch the file's mtime (the entry already records it
    /// as touched, so concurrent readers do not all do it).
    pub fn promote(&mut self, hash: &BlobHash, now: SystemTime) -> Option<bool> {
        let entry = self.lru.get_mut(hash)?;
        entry.last_used = now;
        if needs_touch(entry.disk_mtime, now) {
            entry.disk_mtime = now;
            Some(true)
        } else {
            Some(false)
        }
    }

    /// Whether the blob is indexed and its bytes are known to be good.
    pub fn is_verified(&self, hash: &BlobHash) -> bool {
        self.lru.peek(hash).is_some_and(|e| e.verified)
    }

    pub fn mark_verified(&mut self, hash: &BlobHash) {
        if let Some(entry) = self.lru.peek_mut(hash) {
            entry.verified = true;
        }
    }

    /// Merges a fresh directory scan into the index. Indexed blobs missing
    /// from the scan are kept only if `still_exists` says so (they may have
    /// been published after the scan started); blobs only in the scan are
    /// added at the recency of their mtime.
    pub fn merge_scan(
        &mut self,
        scan: Vec<(BlobHash, u64, SystemTime)>,
        mut still_exists: impl FnMut(&BlobHash) -> bool,
    ) {
        let mut on_disk: HashMap<BlobHash, (u64, SystemTime)> = scan
            .into_iter()
            .map(|(hash, size, mtime)| (hash, (size, mtime)))
            .collect();
        let mut merged = Vec::with_capacity(self.lru.len() + on_disk.len());
        // Least recently used first, so the stable sort keeps our order on ties.
        while let Some((hash, mut entry)) = self.lru.pop_lru() {
            if let Some((size, mtime)) = on_disk.remove(&hash) {
                entry.size = size;
                entry.disk_mtime = entry.disk_mtime.max(mtime);
                merged.push((hash, entry));
            } else if still_exists(&hash) {
                merged.push((hash, entry));
            }
        }
        merged.extend(
            on_disk
                .into_iter()
                .map(|(hash, (size, mtime))| (hash, Entry::on_disk(size, mtime))),
        );
        *self = Self::from_entries(merged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn h(name: &str) -> BlobHash {
        BlobHash::of(name.as_bytes())
    }

    #[test]
    fn accounting_follows_inserts_and_removals() {
        let mut index = Index::new();
        index.insert(h("a"), Entry::on_disk(10, at(1)));
        index.insert(h("b"), Entry::on_disk(5, at(2)));
        assert_eq!((index.used(), index.len()), (15, 2));
        // Re-inserting replaces rather than double-counts.
        index.insert(h("a"), Entry::on_disk(10, at(3)));
        assert_eq!((index.used(), index.len()), (15, 2));
        assert_eq!(index.remove(&h("b")).map(|e| e.size), Some(5));
        assert_eq!(index.remove(&h("b")), None);
        assert_eq!((index.used(), index.len()), (10, 1));
    }

    #[test]
    fn from_entries_orders_by_mtime() {
        let index = Index::from_entries(vec![
            (h("new"), Entry::on_disk(1, at(30))),
            (h("old"), Entry::on_disk(1, at(10))),
            (h("mid"), Entry::on_disk(1, at(20))),
        ]);
        let mut index = index;
        let order: Vec<_> = std::iter::from_fn(|| index.pop_lru().map(|(k, _)| k)).collect();
        assert_eq!(order, [h("old"), h("mid"), h("new")]);
    }

    #[test]
    fn promote_touches_at_most_once_a_minute() {
        let mut index = Index::new();
        index.insert(h("a"), Entry::on_disk(1, at(1000)));
        assert_eq!(index.promote(&h("a"), at(1030)), Some(false));
        assert_eq!(index.promote(&h("a"), at(1060)), Some(true));
        assert_eq!(index.promote(&h("a"), at(1061)), Some(false));
        assert_eq!(index.promote(&h("zz"), at(1061)), None);
        // A clock that went backwards still refreshes.
        assert!(needs_touch(at(2000), at(1000)));
    }

    #[test]
    fn blobs_found_on_disk_start_unverified_and_a_scan_keeps_the_mark() {
        let mut index = Index::new();
        index.insert(h("a"), Entry::on_disk(1, at(1000)));
        assert!(!index.is_verified(&h("a")));
        index.mark_verified(&h("a"));
        assert!(index.is_verified(&h("a")));
        index.merge_scan(vec![(h("a"), 1, at(1000)), (h("b"), 2, at(1000))], |_| true);
        assert!(
            index.is_verified(&h("a")),
            "a rescan must not forget a check already done"
        );
        assert!(!index.is_verified(&h("b")));
        assert!(!index.is_verified(&h("zz")));
    }

    #[test]
    fn merge_adds_drops_and_reorders() {
        let mut index = Index::new();
        index.insert(h("gone"), Entry::on_disk(7, at(10)));
        index.insert(h("kept"), Entry::on_disk(3, at(20)));
        index.insert(h("fresh"), Entry::on_disk(4, at(30)));
        // "kept" was touched by another process after our last use of it.
        let scan = vec![(h("kept"), 3, at(50)), (h("other"), 2, at(25))];
        index.merge_scan(scan, |hash| *hash == h("fresh"));
        assert_eq!((index.used(), index.len()), (9, 3));
        assert!(!index.contains(&h("gone")));
        let order: Vec<_> = std::iter::from_fn(|| index.pop_lru().map(|(k, _)| k)).collect();
        assert_eq!(order, [h("other"), h("fresh"), h("kept")]);
    }
}
