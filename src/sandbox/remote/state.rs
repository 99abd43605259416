//! What this machine remembers about each sandbox it created:
//! `STATE/daytona/<id>.json` ([`SandboxRecord`]), the copy-mode manifest
//! beside it, and the lock that keeps two commands on one sandbox apart.
//! E2B's records live there too (the folder's name predates E2B; each record
//! says its provider).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::provider::ProviderKind;

/// How the workspace reaches the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `contextfs mount` runs inside the sandbox (FUSE).
    Mount,
    /// No FUSE: this machine copies the tree in before each command and
    /// commits what changed after it. Recorded (and shown) as `sync`, the
    /// name the command line uses.
    #[serde(rename = "sync")]
    Copy,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Mount => "mount",
            Mode::Copy => "sync",
        }
    }
}

/// Which mode `create` should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeChoice {
    /// Mount; fall back to copy mode when the mount fails.
    Auto,
    Mount,
    /// Copy mode (`--mode sync`).
    Copy,
}

/// A sandbox this machine created, kept in `STATE/daytona/<id>.json` (0600:
/// it holds the project token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    /// Daytona when absent (records from before E2B).
    #[serde(default)]
    pub provider: ProviderKind,
    pub api_url: String,
    /// The provider's way into the sandbox: Daytona's `toolboxProxyUrl`, E2B's envd URL.
    #[serde(alias = "toolbox_proxy_url")]
    pub endpoint: Option<String>,
    /// E2B's envd access token for this sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// E2B: the sandbox's timeout in minutes, renewed before each command (keep-alive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<u64>,
    pub project: String,
    /// The contextfs server as this machine reaches it.
    pub server: String,
    /// The contextfs server as the sandbox reaches it (mount mode).
    pub sandbox_server: String,
    /// The project token the sandbox (and copy mode) uses.
    pub token: String,
    pub token_id: String,
    pub mode: Mode,
    /// The contextfs binary inside the sandbox.
    pub binary: String,
    pub created_at: String,
}

/// `STATE/daytona`, beside the mounts' journals.
pub fn state_dir() -> PathBuf {
    crate::mount::state_root().join("daytona")
}

/// A sandbox id as a file name (ids are UUIDs; anything else is hex-encoded).
fn file_stem(id: &str) -> String {
    if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        id.to_string()
    } else {
        format!("x{}", hex::encode(id.as_bytes()))
    }
}

impl SandboxRecord {
    pub fn path(id: &str) -> PathBuf {
        state_dir().join(format!("{}.json", file_stem(id)))
    }

    pub fn manifest_path(id: &str) -> PathBuf {
        state_dir().join(format!("{}.manifest.json", file_stem(id)))
    }

    pub fn lock_path(id: &str) -> PathBuf {
        state_dir().join(format!("{}.lock", file_stem(id)))
    }

    pub fn load(id: &str) -> anyhow::Result<Option<SandboxRecord>> {
        let path = Self::path(id);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Every sandbox this machine knows, oldest first.
    pub fn all() -> anyhow::Result<Vec<SandboxRecord>> {
        let dir = state_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !name.ends_with(".json") || name.ends_with(".manifest.json") {
                continue;
            }
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(record) = serde_json::from_slice::<SandboxRecord>(&bytes) {
                    records.push(record);
                }
            }
        }
        records.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(records)
    }

    pub fn save(&self) -> anyhow::Result<()> {
        write_private(&Self::path(&self.id), &serde_json::to_vec_pretty(self)?)
    }

    /// Forgets the sandbox (record, manifest, lock).
    pub fn forget(id: &str) {
        for path in [Self::path(id), Self::manifest_path(id), Self::lock_path(id)] {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The agent id its commits carry: `daytona-<id>`, `e2b-<id>`.
    pub fn agent_id(&self) -> String {
        format!("{}-{}", self.provider.as_str(), self.id)
    }
}

/// Writes a file with mode 0600 atomically (temp file, fsync, rename).
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().expect("state files live in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// An exclusive lock on one sandbox's local state, held while a copy-mode
/// command runs so two commands never interleave their manifests.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    pub fn acquire(id: &str) -> anyhow::Result<StateLock> {
        let path = SandboxRecord::lock_path(id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; the lock goes with the file.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot lock {}", path.display()));
        }
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_mode_keeps_its_recorded_name() {
        // Records written before the rename say "sync" and must still load.
        assert_eq!(serde_json::to_string(&Mode::Copy).unwrap(), "\"sync\"");
        assert_eq!(serde_json::from_str::<Mode>("\"sync\"").unwrap(), Mode::Copy);
        assert_eq!(serde_json::from_str::<Mode>("\"mount\"").unwrap(), Mode::Mount);
        assert_eq!(Mode::Copy.as_str(), "sync");
    }

    #[test]
    fn records_from_before_e2b_load_as_daytona() {
        let json = r#"{"id":"a","api_url":"http://x/api","toolbox_proxy_url":"http://x/toolbox","project":"p",
            "server":"http://s","sandbox_server":"http://s","token":"t","token_id":"ti","mode":"sync",
            "binary":"/usr/local/bin/contextfs","created_at":"2026-01-01T00:00:00Z"}"#;
        let r: SandboxRecord = serde_json::from_str(json).unwrap();
        assert_eq!(
            (r.provider, r.endpoint.as_deref()),
            (ProviderKind::Daytona, Some("http://x/toolbox"))
        );
        assert_eq!(r.agent_id(), "daytona-a");
    }
}
