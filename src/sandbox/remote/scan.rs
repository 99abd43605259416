//! The scan of copy mode: the contextfs binary inside the sandbox lists
//! `/workspace` with blake3 hashes (`contextfs daytona scan DIR`, hidden;
//! E2B sandboxes run the same command), so nothing is downloaded just to find
//! out whether it changed.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};

use super::provider::Shell;
use super::scripts::{shell_quote, tail};
use super::state::SandboxRecord;
use super::WORKSPACE;
use crate::api::NodeKind;
use crate::model::BlobHash;

/// One entry of a scanned folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanEntry {
    /// Relative to the scanned folder, `/`-separated.
    pub path: String,
    pub kind: NodeKind,
    pub mode: u32,
    pub size: u64,
    /// blake3 of the contents (files) or of the target (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<BlobHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// What `contextfs daytona scan DIR` prints (as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Scan {
    pub entries: Vec<ScanEntry>,
    /// Entries that cannot be copied (names that are not UTF-8, fifos, …).
    #[serde(default)]
    pub skipped: Vec<String>,
}

/// Lists `root` recursively (symlinks are not followed), hashing every file.
pub fn scan(root: &Path) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    let mut stack: Vec<(std::path::PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if !prefix.is_empty() => {
                out.skipped.push(format!("{prefix}: {e}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                out.skipped.push(format!(
                    "{prefix}{}: the name is not UTF-8",
                    entry.file_name().to_string_lossy()
                ));
                continue;
            };
            let rel = format!("{prefix}{name}");
            let meta = entry.path().symlink_metadata()?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_dir() {
                out.entries.push(ScanEntry {
                    path: rel.clone(),
                    kind: NodeKind::Dir,
                    mode,
                    size: 0,
                    hash: None,
                    target: None,
                });
                stack.push((entry.path(), format!("{rel}/")));
            } else if ft.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                match target.to_str() {
                    Some(t) => out.entries.push(ScanEntry {
                        path: rel,
                        kind: NodeKind::Symlink,
                        mode,
                        size: t.len() as u64,
                        hash: Some(BlobHash::of(t.as_bytes())),
                        target: Some(t.to_string()),
                    }),
                    None => out.skipped.push(format!("{rel}: the symlink target is not UTF-8")),
                }
            } else if ft.is_file() {
                let mut file = match std::fs::File::open(entry.path()) {
                    Ok(f) => f,
                    Err(e) => {
                        out.skipped.push(format!("{rel}: {e}"));
                        continue;
                    }
                };
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                out.entries.push(ScanEntry {
                    path: rel,
                    kind: NodeKind::File,
                    mode,
                    size: meta.size(),
                    hash: Some(BlobHash::from_blake3(hasher.finalize())),
                    target: None,
                });
            } else {
                out.skipped.push(format!("{rel}: not a file, folder or symlink"));
            }
        }
    }
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

pub fn parse_scan(text: &str) -> anyhow::Result<Scan> {
    serde_json::from_str(text.trim())
        .map_err(|e| anyhow!("the sandbox's scan is not readable ({e}): {}", tail(text, 5)))
}

/// The user's command followed, in the same toolbox call, by a scan of the
/// workspace after `marker` (the command's exit code is kept).
pub fn command_then_scan(command: &str, marker: &str, binary: &str) -> String {
    format!(
        "(\n{command}\n) </dev/null\n__contextfs_rc=$?\nprintf '%s' '{marker}'\n\
         {bin} daytona scan {WORKSPACE} 2>&1\nexit $__contextfs_rc\n",
        bin = shell_quote(binary)
    )
}

pub(super) async fn scan_sandbox(record: &SandboxRecord, toolbox: &dyn Shell) -> anyhow::Result<Scan> {
    let out = toolbox
        .run(
            "list the sandbox's workspace",
            format!("{} daytona scan {WORKSPACE}", shell_quote(&record.binary)),
            BTreeMap::new(),
        )
        .await?;
    parse_scan(&out)
}
