//! What both stores share for the operations queries: the activity filter
//! and the rules of retention pruning (each store has the SQL).
//!
//! Pruning removes a version when it is older than `keep_days` or not among
//! its node's `keep_versions` newest, unless it is
//! - a node's head (a deleted node's head is its tombstone, which keeps the
//!   content it deleted),
//! - the version a live node's latest merge was computed against (the
//!   `parent` of its newest `merged` version),
//! - an `lww` loser (the parent of an `lww` version) younger than
//!   `keep_days`; without `keep_days`, every lww loser stays.
//!
//! Version numbers are never reused, so a gap in a node's numbers is exactly
//! what pruning removed: history shows it as `pruned before version N`.

/// Filters of a project activity page (`GET .../activity`).
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter {
    /// Only entries with a change-feed sequence below this.
    pub before: Option<i64>,
    pub agent: Option<String>,
    /// Unix milliseconds: only versions written at or after it.
    pub since: Option<i64>,
    /// The path itself and everything below it.
    pub path_prefix: Option<String>,
    pub limit: u32,
}

/// Unix milliseconds before which versions are old enough to prune.
pub fn age_cutoff(keep_days: Option<u32>, now: i64) -> Option<i64> {
    keep_days.map(|d| now - i64::from(d) * 86_400_000)
}
