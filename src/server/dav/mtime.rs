//! File times over WebDAV: what `getlastmodified` reports and what happens
//! to the `X-OC-Mtime` a client (rclone, Nextcloud and ownCloud clients)
//! sends with PUT.
//!
//! Versions carry the mtime their writer set (issue 12): `getlastmodified`
//! is that time, else the commit time; `X-OC-Mtime` (Unix seconds, with an
//! optional fraction) becomes the new version's mtime.

use std::time::SystemTime;

use axum::http::{HeaderMap, StatusCode};

use super::DavRefusal;
use crate::api::VersionInfo;

/// Header rclone and Nextcloud/ownCloud clients send with the file's mtime.
pub const HEADER_OC_MTIME: &str = "x-oc-mtime";

/// The time a version reports as `getlastmodified`: its writer's mtime,
/// else when it was committed.
pub fn version_time(v: &VersionInfo) -> SystemTime {
    super::fs::system_time(v.modified_at())
}

/// The PUT's `X-OC-Mtime` in the API's form; a malformed one is a 400
/// before anything is read or stored.
pub fn requested(headers: &HeaderMap) -> Result<Option<String>, DavRefusal> {
    let Some(value) = headers.get(HEADER_OC_MTIME) else {
        return Ok(None);
    };
    let bad = || DavRefusal::new(StatusCode::BAD_REQUEST, "X-OC-Mtime must be seconds since the epoch");
    let text = value.to_str().map_err(|_| bad())?;
    let nanos = crate::model::parse_file_time(text).map_err(|_| bad())?;
    Ok(Some(crate::model::format_file_time(nanos)))
}
