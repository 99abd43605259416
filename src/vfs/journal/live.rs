//! The journal's live records, and the order their changes were made in.
//!
//! Replay applies records oldest change first. `changed_at` has millisecond
//! resolution, and many changes share a millisecond (`rmdir b; mkdir b`):
//! among those, the one made first must replay first, or the new `b` is
//! placed before the old one is removed. So each record also carries the
//! sequence number of the frame that last changed it (not one that only
//! rewrote it, such as a rebase after an answer), counted in log order, which
//! a compacted log keeps.

use std::collections::HashMap;

use super::Record;

#[derive(Debug, Default)]
pub(super) struct LiveRecords {
    records: HashMap<u64, Live>,
    next_seq: u64,
}

#[derive(Debug)]
struct Live {
    record: Record,
    /// When its current change was made, among all frames.
    seq: u64,
}

impl LiveRecords {
    pub(super) fn put(&mut self, record: Record) {
        let seq = match self.records.get(&record.uid) {
            Some(old) if old.record.changed_at == record.changed_at => old.seq,
            _ => {
                self.next_seq += 1;
                self.next_seq
            }
        };
        self.records.insert(record.uid, Live { record, seq });
    }

    pub(super) fn remove(&mut self, uid: u64) {
        self.records.remove(&uid);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Record> {
        self.records.values().map(|l| &l.record)
    }

    /// Oldest change first.
    pub(super) fn in_change_order(&self) -> Vec<&Record> {
        let mut live: Vec<&Live> = self.records.values().collect();
        live.sort_by_key(|l| (l.record.changed_at, l.seq));
        live.into_iter().map(|l| &l.record).collect()
    }
}
