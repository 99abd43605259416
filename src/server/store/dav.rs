//! What WebDAV keeps in the metadata database (issue 14): write locks and
//! dead properties. Both live in the database rather than in one process,
//! so several `contextfs serve` instances on one PostgreSQL see the same
//! locks and properties.
//!
//! A lock is on a path of a project (RFC 4918 locks URLs, not resources):
//! `path` is the project path without slashes at either end, the project's
//! root being `""`. A `deep` lock covers everything below its path too.
//! Locks always expire (`expires_at`); expired rows are never reported and
//! are removed by the next LOCK of the project.
//!
//! Dead properties belong to a node, so they follow a rename (MOVE keeps
//! the node) and the DAV layer drops them when it deletes the node.
//!
//! The conflict rules ([`lock_conflict`], [`check_conflict`]) are here, once;
//! each store only runs them inside its transaction.

use async_trait::async_trait;

use super::StoreResult;

/// One write lock, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DavLockRow {
    /// The lock token (`urn:uuid:...`), unique across projects.
    pub token: String,
    /// Project path, no leading or trailing slash; `""` is the root.
    pub path: String,
    /// Who took it (the token id of the caller).
    pub principal: Option<String>,
    /// The client's `<D:owner>` element, as XML.
    pub owner_xml: Option<String>,
    pub deep: bool,
    pub shared: bool,
    /// What the client was granted, in seconds (reported back as `Second-N`).
    pub timeout_secs: u64,
    /// Unix milliseconds after which the lock is gone.
    pub expires_at: i64,
}

/// One dead property of a node: stored as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadPropRow {
    /// The XML namespace (`""` when none).
    pub namespace: String,
    pub name: String,
    pub prefix: Option<String>,
    /// The whole element, as XML.
    pub xml: Vec<u8>,
}

/// WebDAV's rows in the metadata database. A supertrait of
/// [`MetadataStore`](super::MetadataStore), implemented by each store in its
/// `dav.rs`.
#[async_trait]
pub trait DavStore: Send + Sync {
    /// The project's locks that have not expired at `now` (Unix ms).
    async fn dav_locks(&self, project_id: i64, now: i64) -> StoreResult<Vec<DavLockRow>>;
    /// In ONE transaction: removes the project's expired locks, and adds
    /// `lock` unless an unexpired lock conflicts with it ([`lock_conflict`]);
    /// that lock is the `Err`.
    async fn dav_lock(
        &self,
        project_id: i64,
        lock: DavLockRow,
        now: i64,
    ) -> StoreResult<Result<DavLockRow, DavLockRow>>;
    /// Gives an unexpired lock a new timeout; `None` when there is no such lock.
    async fn dav_refresh(
        &self,
        project_id: i64,
        token: &str,
        timeout_secs: u64,
        now: i64,
    ) -> StoreResult<Option<DavLockRow>>;
    /// Removes these locks of the project; returns how many there were.
    async fn dav_unlock(&self, project_id: i64, tokens: Vec<String>) -> StoreResult<u64>;

    /// The dead properties of each node, in `(node, property)` pairs.
    async fn dead_props(&self, nodes: Vec<i64>) -> StoreResult<Vec<(i64, DeadPropRow)>>;
    /// In one transaction: sets (replaces) `set` and removes `remove`
    /// (`(namespace, name)`) on the node.
    async fn patch_dead_props(
        &self,
        node: i64,
        set: Vec<DeadPropRow>,
        remove: Vec<(String, String)>,
    ) -> StoreResult<()>;
    /// Forgets every dead property of these nodes (they were deleted).
    async fn drop_dead_props(&self, nodes: Vec<i64>) -> StoreResult<()>;
    /// Gives `to` a copy of the dead properties of `from` (COPY), replacing its own.
    async fn copy_dead_props(&self, from: i64, to: i64) -> StoreResult<()>;
}

/// When a lock granted (or refreshed) at `now` for `timeout_secs` expires,
/// in Unix milliseconds (saturating).
pub fn expires_at(now: i64, timeout_secs: u64) -> i64 {
    now.saturating_add(i64::try_from(timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX))
}

/// True when `ancestor` is `path` or one of its parent folders.
fn is_at_or_above(ancestor: &str, path: &str) -> bool {
    ancestor == path
        || ancestor.is_empty()
        || (path.len() > ancestor.len() && path.starts_with(ancestor) && path.as_bytes()[ancestor.len()] == b'/')
}

/// True when `lock` applies to `path`: on it, or deep on a folder above it.
pub fn covers(lock: &DavLockRow, path: &str) -> bool {
    lock.path == path || (lock.deep && is_at_or_above(&lock.path, path))
}

/// True when `lock` sits strictly below `path`.
fn below(lock: &DavLockRow, path: &str) -> bool {
    lock.path != path && is_at_or_above(path, &lock.path)
}

/// The lock among `existing` that forbids taking `new`: an exclusive lock
/// conflicts with any other lock on the same resources, shared locks only
/// with exclusive ones. A deep `new` also meets the locks below its path.
pub fn lock_conflict<'a>(existing: &'a [DavLockRow], new: &DavLockRow) -> Option<&'a DavLockRow> {
    existing.iter().find(|l| {
        let meets = covers(l, &new.path) || (new.deep && below(l, &new.path));
        meets && !(l.shared && new.shared)
    })
}

/// Whether a request may change `path` (and, with `deep`, everything below
/// it) given the locks: every lock that applies must be one the request
/// holds (its token submitted, by the principal that took it, unless
/// `ignore_principal`); of shared locks, holding one is enough. Returns the
/// lock that refuses it. The same rules as dav-server's `MemLs`.
pub fn check_conflict<'a>(
    locks: &'a [DavLockRow],
    path: &str,
    principal: Option<&str>,
    ignore_principal: bool,
    deep: bool,
    submitted: &[String],
) -> Option<&'a DavLockRow> {
    let held =
        |l: &DavLockRow| submitted.contains(&l.token) && (ignore_principal || principal == l.principal.as_deref());
    let mut holds_one = false;
    let mut first_shared = None;
    for l in locks.iter().filter(|l| covers(l, path)) {
        if held(l) {
            holds_one = true;
        } else if !l.shared {
            return Some(l);
        } else {
            first_shared.get_or_insert(l);
        }
    }
    if !holds_one {
        if let Some(l) = first_shared {
            return Some(l);
        }
    }
    if deep {
        return locks.iter().find(|l| below(l, path) && !held(l));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(token: &str, path: &str, deep: bool, shared: bool) -> DavLockRow {
        DavLockRow {
            token: token.into(),
            path: path.into(),
            principal: Some("me".into()),
            owner_xml: None,
            deep,
            shared,
            timeout_secs: 60,
            expires_at: 0,
        }
    }

    #[test]
    fn exclusive_locks_conflict_with_every_lock_on_the_same_resource() {
        let held = [lock("a", "docs/x.md", false, false)];
        assert!(lock_conflict(&held, &lock("b", "docs/x.md", false, false)).is_some());
        assert!(lock_conflict(&held, &lock("b", "docs/x.md", false, true)).is_some());
        assert!(lock_conflict(&held, &lock("b", "docs/y.md", false, false)).is_none());
        // A name that only starts like the locked one is another resource.
        assert!(lock_conflict(&held, &lock("b", "docs/x.md.tmp", false, false)).is_none());
        // A deep lock of a folder above meets it; a shallow one does not.
        assert!(lock_conflict(&held, &lock("b", "docs", true, false)).is_some());
        assert!(lock_conflict(&held, &lock("b", "docs", false, false)).is_none());
        assert!(lock_conflict(&held, &lock("b", "", true, true)).is_some());
    }

    #[test]
    fn shared_locks_share_and_deep_locks_cover_below() {
        let held = [lock("a", "docs", true, true)];
        assert!(lock_conflict(&held, &lock("b", "docs/x.md", false, true)).is_none());
        assert!(lock_conflict(&held, &lock("b", "docs/x.md", false, false)).is_some());
        assert!(lock_conflict(&held, &lock("b", "other/x.md", false, false)).is_none());
    }

    #[test]
    fn a_write_needs_every_applying_lock_it_does_not_share() {
        let locks = [lock("a", "docs", true, false), lock("s", "notes/n.md", false, true)];
        assert!(check_conflict(&locks, "docs/x.md", Some("me"), false, false, &[]).is_some());
        assert!(check_conflict(&locks, "docs/x.md", Some("me"), false, false, &["a".into()]).is_none());
        // The token alone is not enough: the principal that took it must send it.
        assert!(check_conflict(&locks, "docs/x.md", Some("you"), false, false, &["a".into()]).is_some());
        assert!(check_conflict(&locks, "docs/x.md", Some("you"), true, false, &["a".into()]).is_none());
        assert!(check_conflict(&locks, "notes/n.md", Some("me"), false, false, &[]).is_some());
        assert!(check_conflict(&locks, "notes/n.md", Some("me"), false, false, &["s".into()]).is_none());
        assert!(check_conflict(&locks, "free.md", Some("me"), false, false, &[]).is_none());
        // Deleting or moving a folder meets the locks inside it.
        assert!(check_conflict(&locks, "notes", Some("me"), false, false, &[]).is_none());
        assert!(check_conflict(&locks, "notes", Some("me"), false, true, &[]).is_some());
        assert!(check_conflict(&locks, "", Some("me"), false, true, &["a".into(), "s".into()]).is_none());
    }
}
