//! What `contextfs sync status DIR` shows: the running sync's own report
//! (`DIR/.contextfs/status.json`, rewritten after every round) and what a
//! fresh look at the folder finds pending.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::folder::Folder;
use super::state::{write_atomically, SyncState};
use super::FileOutcome;

const STATUS_FILE: &str = "status.json";

/// A running `contextfs sync`'s view of itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncReport {
    pub pid: u32,
    pub project: String,
    pub server: String,
    /// The first round (download and push) is done.
    pub ready: bool,
    pub online: bool,
    pub last_error: Option<String>,
    pub cursor: i64,
    pub files: usize,
    /// Local changes waiting for the server, with why.
    pub pending: BTreeMap<String, String>,
    /// Paths not synced, with why.
    pub skipped: BTreeMap<String, String>,
    pub recent: Vec<FileOutcome>,
    pub clones: u64,
    pub copies: u64,
    pub updated_at: String,
}

impl SyncReport {
    pub fn of(folder: &Folder, ready: bool, online: bool, last_error: Option<String>) -> Self {
        SyncReport {
            pid: std::process::id(),
            project: folder.state.project.clone(),
            server: folder.state.server.clone(),
            ready,
            online,
            last_error,
            cursor: folder.state.cursor,
            files: folder.state.files.len(),
            pending: folder.pending.clone(),
            skipped: folder.skipped.clone(),
            recent: folder.recent.iter().cloned().collect(),
            clones: folder.state.clones,
            copies: folder.state.copies,
            updated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    pub fn save(&self, root: &Path) {
        match serde_json::to_vec_pretty(self) {
            Ok(bytes) => {
                if let Err(e) = write_atomically(&SyncState::dir(root), STATUS_FILE, &bytes) {
                    tracing::warn!(error = %e, "cannot write the sync status");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the sync status"),
        }
    }

    pub fn load(root: &Path) -> Option<Self> {
        let bytes = std::fs::read(SyncState::dir(root).join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// How files were materialised, in words.
pub fn describe_placements(clones: u64, copies: u64) -> String {
    match (clones, copies) {
        (0, 0) => "no files downloaded yet".into(),
        (_, 0) => format!("{clones} file(s) placed as reflink clones of the shared blob cache (sharing its disk blocks)"),
        (0, _) => format!(
            "{copies} file(s) placed as copies (this file system cannot clone from the blob cache; XFS, btrfs and APFS can)"
        ),
        _ => format!("{clones} file(s) placed as reflink clones, {copies} as copies"),
    }
}

/// True while `pid` is a live process (a zombie, killed but not yet
/// reaped, is not).
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, None | Some("Z") | Some("X"))
    }
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }
}
