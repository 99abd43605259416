//! REST types of the operations routes (retention, garbage collection,
//! project activity), shared by server and client. docs/HTTP_API.md §9
//! documents them; their JSON shapes are stable.

use serde::{Deserialize, Serialize};

use crate::api::{NodeKind, VersionOp, VersionStatus};
use crate::model::BlobHash;

/// How long a project keeps superseded versions. Either limit may be unset;
/// with both set a version goes once it fails either. Heads and the versions
/// docs/OPERATIONS.md lists as protected always stay.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Versions older than this many days may be pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u32>,
    /// Only this many newest versions of each file are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_versions: Option<u32>,
}

impl RetentionPolicy {
    pub fn is_empty(&self) -> bool {
        self.keep_days.is_none() && self.keep_versions.is_none()
    }

    /// `keep 30 days, 10 versions` / `keep everything`.
    pub fn describe(&self) -> String {
        match (self.keep_days, self.keep_versions) {
            (None, None) => "keep every version".to_string(),
            (Some(d), None) => format!("keep {d} days"),
            (None, Some(n)) => format!("keep {n} versions per file"),
            (Some(d), Some(n)) => format!("keep {d} days and at most {n} versions per file"),
        }
    }
}

/// `PUT /projects/{p}/retention`. Signed so that 0 and negative values reach
/// the server and are refused with a reason instead of a parse error.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RetentionRequest {
    #[serde(default)]
    pub keep_days: Option<i64>,
    #[serde(default)]
    pub keep_versions: Option<i64>,
}

/// `GET`/`PUT /projects/{p}/retention`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetentionInfo {
    pub project: String,
    /// The project's own policy (`null`: none set).
    pub policy: Option<RetentionPolicy>,
    /// What pruning applies: the project's policy, else the server default.
    pub effective: Option<RetentionPolicy>,
    /// `project`, `server_default` or `none`.
    pub source: String,
}

/// `POST /gc`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcRequest {
    /// Report what would be pruned and freed, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Versions pruned in one project by a GC run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProjectPruned {
    pub project: String,
    pub policy: RetentionPolicy,
    pub versions: u64,
}

/// A blob some version refers to whose stored size differs from the size
/// the version recorded: reported, never deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CorruptBlob {
    pub hash: BlobHash,
    pub expected_size: u64,
    pub stored_size: u64,
}

/// What a GC run did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    pub started_at: String,
    /// Seconds a blob stays after its last upload even when nothing refers to it.
    pub grace_seconds: u64,
    pub pruned: Vec<ProjectPruned>,
    pub versions_pruned: u64,
    /// Blobs found in storage.
    pub blobs_scanned: u64,
    pub bytes_scanned: u64,
    /// Blobs some version or skill refers to.
    pub blobs_referenced: u64,
    /// Unreferenced blobs kept because they were uploaded within the grace period.
    pub blobs_in_grace: u64,
    /// Blobs deleted (with `dry_run`: that would be).
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    /// The first 1,000 deleted hashes.
    pub deleted: Vec<BlobHash>,
    /// Referenced by a version but absent from storage.
    pub missing: Vec<BlobHash>,
    pub corrupt: Vec<CorruptBlob>,
    /// Objects in the blob area whose name is not a blob hash: kept.
    pub unrecognised: Vec<String>,
    /// Manifests of chunked blobs nothing holds any more, dropped (with
    /// `dry_run`: that would be); their chunks go with the blobs above.
    #[serde(default)]
    pub manifests_deleted: u64,
}

impl GcReport {
    /// Something is wrong with storage: a referenced blob is missing or damaged.
    pub fn has_damage(&self) -> bool {
        !self.missing.is_empty() || !self.corrupt.is_empty()
    }
}

/// One entry of a project's activity (`GET /projects/{p}/activity`): one
/// version, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActivityEntry {
    /// The change-feed sequence number (page with `before`).
    pub seq: i64,
    pub node: i64,
    pub version: i64,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    pub kind: NodeKind,
    pub op: VersionOp,
    pub status: VersionStatus,
    pub deleted: bool,
    pub size: u64,
    pub hash: BlobHash,
    /// Token id, or `admin`.
    pub author: String,
    pub agent_id: Option<String>,
    pub message: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActivityPage {
    pub entries: Vec<ActivityEntry>,
    /// Pass as `before` for the next (older) page; `None` on the last.
    pub next_before: Option<i64>,
}

/// Versions of a file that retention pruned: `count` versions right below
/// version `before` (`pruned before version N`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrunedGap {
    pub before: i64,
    pub count: i64,
}
