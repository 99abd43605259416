//! File times over WebDAV: what `getlastmodified` reports and what happens
//! to the `X-OC-Mtime` a client sends with PUT.
//!
//! MTIME HOOK (issue 14): versions do not carry a file time of their own yet
//! (another branch adds an optional `mtime`). These two functions are the
//! single place to wire it: report `v.mtime` when set, and pass the PUT's
//! time to the commit. Until then `getlastmodified` is the commit time and
//! `X-OC-Mtime` is parsed (garbage is a 400) but not kept.

use std::time::SystemTime;

use super::DavRequest;
use crate::api::VersionInfo;

/// The time a version reports as `getlastmodified`.
pub fn version_time(v: &VersionInfo) -> SystemTime {
    super::fs::system_time(&v.created_at)
}

/// Keeps the client's file time for `written`; true when it was kept (the
/// response then says `X-OC-Mtime: accepted`).
pub fn record(_ctx: &DavRequest, _written: &VersionInfo, _mtime_secs: Option<i64>) -> bool {
    false
}
