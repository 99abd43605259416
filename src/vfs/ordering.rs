//! Local state wins over stale remote news.
//!
//! The change feed echoes this mount's own commits, and on a slow server an
//! echo (or the answer to a request) can arrive after the user has already
//! moved on: the file was deleted, its directory removed, its name reused.
//! Applying such news would bring back what the user deleted. The rule,
//! also written down in docs/SEMANTICS.md:
//!
//! - A node with local changes still in the journal keeps them; remote state
//!   for it is applied only when its version is newer than the one the mount
//!   last saw (both checked in `remote.rs`).
//! - A node this mount deleted stays deleted: news of it at or below the
//!   tombstone version (or any news while the deletion is still on its way)
//!   is stale. A newer version (someone restored it) is applied.
//! - A node this mount does not know yet, appearing at a path where one of
//!   this mount's own creates is on its way to the server, is that create's
//!   echo: it waits for the create's acknowledgement, which binds the node
//!   to the local file, or deletes it when the file is already gone.

use std::collections::HashMap;

use super::*;
use crate::api::ChangeEvent;

/// What this mount has done that the server's news may not reflect yet.
#[derive(Debug, Default)]
pub(super) struct LocalNews {
    /// Creates (mkdir, first commit) sent and not yet answered: uid -> path.
    creating: HashMap<u64, String>,
    /// How many of those creates target each path.
    creating_paths: HashMap<String, usize>,
    /// Nodes this mount deleted: node -> tombstone version, once known.
    deleted: HashMap<i64, Option<i64>>,
}

/// Known tombstones kept for late news; beyond this the oldest-known are
/// dropped (pending deletions are always kept).
const DELETED_KEPT: usize = 100_000;

impl LocalNews {
    fn start_create(&mut self, uid: u64, path: &str) {
        if let Some(old) = self.creating.insert(uid, path.to_string()) {
            self.forget_path(&old);
        }
        *self.creating_paths.entry(path.to_string()).or_default() += 1;
    }

    fn end_create(&mut self, uid: u64) {
        if let Some(path) = self.creating.remove(&uid) {
            self.forget_path(&path);
        }
    }

    fn forget_path(&mut self, path: &str) {
        if let Some(n) = self.creating_paths.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                self.creating_paths.remove(path);
            }
        }
    }

    /// This mount deleted `node` (the deletion may still be on its way).
    pub(super) fn deleting(&mut self, node: i64) {
        self.deleted.entry(node).or_insert(None);
    }

    /// The server made `version` the tombstone of `node`.
    pub(super) fn deleted(&mut self, node: i64, version: i64) {
        if self.deleted.len() >= DELETED_KEPT {
            self.deleted.retain(|_, v| v.is_none());
        }
        let known = self.deleted.entry(node).or_insert(None);
        *known = Some(known.map_or(version, |v| v.max(version)));
    }

    /// The server did not delete `node` where this mount did (it had moved
    /// or gone): its news is no longer this mount's to judge.
    pub(super) fn delete_refused(&mut self, node: i64) {
        self.deleted.remove(&node);
    }

    /// Whether `e`, about a node this mount has no inode for, is stale news.
    pub(super) fn is_stale(&self, e: &ChangeEvent) -> bool {
        match self.deleted.get(&e.node) {
            Some(None) => return true,
            Some(Some(tombstone)) if e.version <= *tombstone => return true,
            _ => {}
        }
        !e.deleted && self.creating_paths.contains_key(&e.path)
    }

    /// The feed delivered `e`: a tombstone this mount was waiting for has
    /// been seen, so no older news of that node can follow it.
    pub(super) fn seen(&mut self, e: &ChangeEvent) {
        if e.deleted
            && self
                .deleted
                .get(&e.node)
                .is_some_and(|t| t.is_some_and(|v| e.version >= v))
        {
            self.deleted.remove(&e.node);
        }
    }
}

/// Marks a create as on its way to the server while it lives (see the
/// module doc); the sync worker holds one across the request and the
/// application of its answer.
pub struct CreateInFlight<'a> {
    vfs: &'a Vfs,
    uid: Option<u64>,
}

impl Drop for CreateInFlight<'_> {
    fn drop(&mut self) {
        if let Some(uid) = self.uid {
            self.vfs.lock().local_news.end_create(uid);
        }
    }
}

impl Vfs {
    /// Called by the sync worker before it sends `item`; keep the returned
    /// guard until the answer has been applied.
    pub fn sending(&self, item: &drain::DrainItem) -> CreateInFlight<'_> {
        let create = match &item.op {
            drain::DrainOp::Mkdir { path, .. } | drain::DrainOp::Commit { path, node: None, .. } => Some(path),
            _ => None,
        };
        let uid = create.map(|path| {
            self.lock().local_news.start_create(item.uid, path.as_str());
            item.uid
        });
        CreateInFlight { vfs: self, uid }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VersionOp;

    fn event(node: i64, version: i64, path: &str, deleted: bool) -> ChangeEvent {
        ChangeEvent {
            seq: 1,
            node,
            path: path.into(),
            old_path: None,
            op: if deleted { VersionOp::Delete } else { VersionOp::Create },
            version,
            kind: NodeKind::File,
            hash: BlobHash::of(b""),
            size: 0,
            mode: 0o644,
            deleted,
            agent_id: None,
            at: String::new(),
            mtime: None,
            atime: None,
        }
    }

    #[test]
    fn news_of_a_node_this_mount_deleted_is_stale_until_someone_restores_it() {
        let mut news = LocalNews::default();
        news.deleting(7);
        assert!(
            news.is_stale(&event(7, 1, "a", false)),
            "pending deletion: any news is stale"
        );
        news.deleted(7, 3);
        assert!(news.is_stale(&event(7, 2, "a", false)));
        assert!(
            !news.is_stale(&event(7, 4, "a", false)),
            "a restore after the tombstone is news"
        );
        news.seen(&event(7, 3, "a", true));
        assert!(
            !news.is_stale(&event(7, 2, "a", false)),
            "forgotten once the tombstone went by"
        );
    }

    #[test]
    fn an_unknown_node_at_the_path_of_a_create_in_flight_is_its_echo() {
        let mut news = LocalNews::default();
        news.start_create(1, "d/f");
        news.start_create(2, "d/f");
        assert!(news.is_stale(&event(9, 1, "d/f", false)));
        assert!(!news.is_stale(&event(9, 1, "d/g", false)));
        news.end_create(1);
        assert!(
            news.is_stale(&event(9, 1, "d/f", false)),
            "the second create is still in flight"
        );
        news.end_create(2);
        assert!(!news.is_stale(&event(9, 1, "d/f", false)));
    }
}
