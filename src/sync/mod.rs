//! `contextfs sync`, `checkout`, `push`, `pull`: a project as a plain local
//! folder, kept in two-way sync with the server where FUSE is not available.
//!
//! The parts:
//!
//! - [`state`]: the state file per synced folder (what each path was last
//!   synced as: node, version, hash, size, mtime, inode), written atomically,
//!   and the folder lock;
//! - [`ignore`]: `.contextfsignore` (gitignore syntax) plus defaults;
//! - [`scan`]: walks the folder and finds what changed since the state
//!   file, by size, mtime and inode, confirmed by hash, with renames;
//! - [`push`]: sends local changes with their base version and node, so the
//!   server merges three ways;
//! - [`apply`]: applies the change feed to the folder, never overwriting a
//!   local file that changed meanwhile;
//! - [`materialise`]: places server contents into the folder from the shared
//!   blob cache, as reflink clones where the file system can, else copies;
//! - [`folder`]: one synced folder tying these together (checkout, push,
//!   pull rounds);
//! - [`daemon`]: the long-running loop: file events, the feed, retries;
//! - [`status`]: what `contextfs sync status` shows.

pub mod apply;
pub mod daemon;
pub mod folder;
pub mod ignore;
pub mod materialise;
pub mod push;
pub mod scan;
pub mod state;
pub mod status;

use std::path::PathBuf;

use crate::client::ClientError;

pub use folder::{Folder, FolderConfig};

/// The folder inside a synced folder that holds its state; never synced.
pub const STATE_DIR: &str = ".contextfs";

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{path} is not a synced folder (no {STATE_DIR}/state.json); run `contextfs checkout` or `contextfs sync` there first")]
    NotSynced { path: PathBuf },
    #[error("the state file {path} is damaged: {detail}")]
    BadState { path: PathBuf, detail: String },
    #[error("another contextfs process (pid {pid}) syncs {path}")]
    Busy { path: PathBuf, pid: String },
    #[error("{path} is synced with project {synced} on {server}, not {wanted}")]
    OtherProject {
        path: PathBuf,
        synced: String,
        server: String,
        wanted: String,
    },
    #[error("blob cache: {0}")]
    Cache(#[from] crate::cache::CacheError),
    #[error("file events: {0}")]
    Watch(String),
}

impl SyncError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SyncError::Io {
            path: path.into(),
            source,
        }
    }

    /// Worth retrying later (the server was unreachable or failed).
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Client(e) => e.is_transient(),
            SyncError::Cache(crate::cache::CacheError::Fetch { .. }) => true,
            _ => false,
        }
    }
}

pub type SyncResult<T> = Result<T, SyncError>;

/// What happened to one path in a push or pull, as printed per file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum Outcome {
    /// Sent as is (or nothing to merge).
    Clean,
    /// The server merged it with changes made elsewhere; the folder holds the merged bytes.
    Merged,
    /// A true conflict: this side's bytes won, the other side's stay in history.
    Lww,
    /// Deleted (on the server by a push, in the folder by a pull).
    Deleted,
    /// Moved, keeping its node and history; the detail is the old path.
    Moved(String),
    /// Written into the folder from the server (pull).
    Updated,
    /// A deletion refused because the file changed elsewhere: it came back.
    Restored,
    /// (pull) A server change not written because the file changed here;
    /// the detail says what the next push does with it.
    Kept(String),
    /// Not synced, and why (too large, not UTF-8, a fifo, ...). Not retried
    /// until the file changes.
    Skipped(String),
    /// Could not be sent now (server down, ...): retried later.
    Failed(String),
}

impl Outcome {
    /// The word printed before the path.
    pub fn label(&self) -> String {
        match self {
            Outcome::Clean => "clean".into(),
            Outcome::Merged => "merged".into(),
            Outcome::Lww => "lww".into(),
            Outcome::Deleted => "deleted".into(),
            Outcome::Moved(_) => "moved".into(),
            Outcome::Updated => "updated".into(),
            Outcome::Restored => "restored".into(),
            Outcome::Kept(_) => "kept".into(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
            Outcome::Failed(why) => format!("failed: {why}"),
        }
    }

    pub fn from_status(status: crate::api::VersionStatus) -> Self {
        match status {
            crate::api::VersionStatus::Clean => Outcome::Clean,
            crate::api::VersionStatus::Merged => Outcome::Merged,
            crate::api::VersionStatus::Lww => Outcome::Lww,
        }
    }
}

/// One line of a push or pull report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileOutcome {
    pub path: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl std::fmt::Display for FileOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = shown(&self.path);
        match &self.outcome {
            Outcome::Moved(from) => write!(f, "moved    {} -> {path}", shown(from)),
            Outcome::Skipped(why) => write!(f, "skipped  {path} ({why})"),
            Outcome::Failed(why) => write!(f, "failed   {path} ({why})"),
            Outcome::Kept(why) => write!(f, "kept     {path} ({why})"),
            other => write!(f, "{:<8} {path}", other.label()),
        }
    }
}

/// A path as printed: quoted and escaped when it holds control characters,
/// so a file name cannot break a report line or drive the terminal.
pub fn shown(path: &str) -> std::borrow::Cow<'_, str> {
    if path.chars().any(char::is_control) {
        std::borrow::Cow::Owned(format!("{path:?}"))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}
