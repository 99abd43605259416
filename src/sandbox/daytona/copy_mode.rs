//! Copy mode (`--mode sync` on the command line): the workspace for
//! sandboxes that cannot mount FUSE. Instead of a mount, files are copied
//! into the sandbox before each command and out of it afterwards.
//!
//! This machine keeps a manifest per sandbox (`STATE/daytona/<id>.manifest.json`):
//! for every file it put into or took out of the sandbox, the server node,
//! version, hash and mode that file was based on. Around each command (one
//! round):
//!
//! 1. **scan** — the contextfs binary inside the sandbox lists `/workspace`
//!    with blake3 hashes (`contextfs daytona scan`), so nothing is downloaded
//!    just to find out whether it changed;
//! 2. **pull** — files that changed on the server and are untouched in the
//!    sandbox are uploaded through the toolbox file API (deletions, modes,
//!    symlinks and empty folders in one shell script); a file changed on
//!    both sides is left alone: its commit will merge;
//! 3. the command runs, followed in the same call by a second scan;
//! 4. **push** — each changed file is downloaded through the toolbox, uploaded
//!    as a blob and committed with the manifest's base version and node, so
//!    the server merges three ways against whatever happened meanwhile. A
//!    merged result is written back into the sandbox. Deletions carry their
//!    base version too: a file edited elsewhere is not deleted but comes back.
//!
//! The published skills are copied to `/skills` (and made read-only); edits
//! there are not committed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::api::Toolbox;
use super::scripts::{shell_quote, tail};
use super::state::{write_private, SandboxRecord};
use super::{SKILLS, WORKSPACE};
use crate::api::{
    CommitRequest, DeleteRequest, ErrorCode, MkdirRequest, NodeKind, TreeEntry, VersionInfo, VersionStatus,
};
use crate::client::{Client, ClientError};
use crate::model::{BlobHash, WsPath};

/// Transfers in flight at once.
const PARALLEL: usize = 8;

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

async fn scan_sandbox(record: &SandboxRecord, toolbox: &Toolbox) -> anyhow::Result<Scan> {
    let out = toolbox
        .run(
            "list the sandbox's workspace",
            format!("{} daytona scan {WORKSPACE}", shell_quote(&record.binary)),
            BTreeMap::new(),
        )
        .await?;
    parse_scan(&out)
}

/// The server version a file in the sandbox was based on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub node: i64,
    pub version: i64,
    pub hash: BlobHash,
    pub mode: u32,
    pub kind: NodeKind,
}

impl Base {
    fn of_entry(e: &TreeEntry) -> Base {
        Base {
            node: e.id,
            version: e.version,
            hash: e.hash.clone(),
            mode: e.mode,
            kind: e.kind,
        }
    }

    fn of_version(v: &VersionInfo) -> Base {
        Base {
            node: v.node,
            version: v.version,
            hash: v.hash.clone(),
            mode: v.mode,
            kind: v.kind,
        }
    }
}

/// What this machine knows the sandbox's copy was based on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Workspace files and symlinks by path.
    pub files: BTreeMap<String, Base>,
    /// Workspace folders known to exist on both sides.
    pub dirs: BTreeSet<String>,
    /// Skill files copied to /skills, by path under it.
    pub skills: BTreeMap<String, BlobHash>,
}

impl Manifest {
    pub fn load(id: &str) -> anyhow::Result<Manifest> {
        let path = SandboxRecord::manifest_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, id: &str) -> anyhow::Result<()> {
        write_private(&SandboxRecord::manifest_path(id), &serde_json::to_vec(self)?)
    }
}

fn exec_bit(mode: u32) -> bool {
    mode & 0o111 != 0
}

fn same_content(local: &ScanEntry, kind: NodeKind, hash: &BlobHash) -> bool {
    local.kind == kind && local.hash.as_ref() == Some(hash)
}

fn in_workspace(path: &str) -> String {
    format!("{WORKSPACE}/{path}")
}

#[derive(Debug, Clone, Default)]
pub struct PullReport {
    /// Workspace files (and symlinks) brought into the sandbox.
    pub uploaded: usize,
    /// Files and folders removed because they were deleted on the server.
    pub removed: usize,
    /// Skill files copied or updated.
    pub skills: usize,
}

enum Source {
    Project,
    Skill,
}

/// Brings the sandbox's /workspace and /skills up to date with the server.
pub async fn pull(record: &SandboxRecord, toolbox: &Toolbox, manifest: &mut Manifest) -> anyhow::Result<PullReport> {
    // Work on a copy: it replaces the manifest only once the sandbox has it all.
    let mut next = manifest.clone();
    let report = pull_into(record, toolbox, &mut next).await?;
    *manifest = next;
    manifest.save(&record.id)?;
    Ok(report)
}

async fn pull_into(record: &SandboxRecord, toolbox: &Toolbox, manifest: &mut Manifest) -> anyhow::Result<PullReport> {
    let client = Client::new(&record.server, Some(record.token.clone()))?;
    let project = record.project.as_str();
    let (scan, tree, skills) = tokio::try_join!(
        scan_sandbox(record, toolbox),
        async {
            client
                .tree(project, None, true)
                .await
                .with_context(|| format!("cannot list project {project} on {}", record.server))
        },
        async { client.skills().await.context("cannot list the published skills") },
    )?;
    let local: HashMap<&str, &ScanEntry> = scan.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut report = PullReport::default();
    // Removals run before the uploads; folders, symlinks and modes after.
    let mut before = String::new();
    let mut after = String::new();
    let mut uploads: Vec<(String, BlobHash, Source)> = Vec::new();
    let on_server: BTreeSet<&str> = tree.entries.iter().map(|e| e.path.as_str()).collect();

    for e in &tree.entries {
        let path = e.path.as_str();
        let l = local.get(path).copied();
        if e.kind == NodeKind::Dir {
            match l {
                Some(l) if l.kind == NodeKind::Dir => {}
                // Something else took the place in the sandbox: its commit reports it.
                Some(_) => continue,
                // Removed in the sandbox since the last round: the push deletes it.
                None if manifest.dirs.contains(path) => continue,
                None => after.push_str(&format!("mkdir -p {}\n", shell_quote(&in_workspace(path)))),
            }
            manifest.dirs.insert(e.path.clone());
            continue;
        }
        let base = manifest.files.get(path);
        let fetch = match (l, base) {
            (Some(l), _) if same_content(l, e.kind, &e.hash) => {
                if e.kind == NodeKind::File && exec_bit(l.mode) != exec_bit(e.mode) {
                    // Only follow the server's mode if the sandbox did not change it.
                    if base.is_none_or(|b| exec_bit(b.mode) == exec_bit(l.mode)) {
                        after.push_str(&chmod(path, e.mode));
                    } else {
                        continue;
                    }
                }
                false
            }
            // Deleted in the sandbox since the last round: the push deletes it.
            (None, Some(_)) => continue,
            (None, None) => true,
            // Untouched in the sandbox since the last round: take the server's.
            (Some(l), Some(b)) if same_content(l, b.kind, &b.hash) => true,
            // Changed on both sides (or created on both): the push merges.
            (Some(_), _) => continue,
        };
        if fetch {
            match e.kind {
                NodeKind::Symlink => {
                    let target = client
                        .get_blob(project, &e.hash)
                        .await
                        .with_context(|| format!("cannot read the symlink {path}"))?;
                    let target = String::from_utf8_lossy(&target).to_string();
                    after.push_str(&format!(
                        "rm -f {p}; ln -s {t} {p}\n",
                        p = shell_quote(&in_workspace(path)),
                        t = shell_quote(&target)
                    ));
                }
                _ => {
                    if l.is_some_and(|l| l.kind == NodeKind::Symlink) {
                        // An upload would write through the symlink.
                        before.push_str(&format!("rm -f {}\n", shell_quote(&in_workspace(path))));
                    }
                    uploads.push((in_workspace(path), e.hash.clone(), Source::Project));
                    after.push_str(&chmod(path, e.mode));
                }
            }
            report.uploaded += 1;
        }
        manifest.files.insert(e.path.clone(), Base::of_entry(e));
    }

    // Deleted on the server: remove what the sandbox did not change.
    let gone: Vec<String> = manifest
        .files
        .keys()
        .filter(|p| !on_server.contains(p.as_str()))
        .cloned()
        .collect();
    for path in gone {
        let base = &manifest.files[&path];
        match local.get(path.as_str()) {
            Some(l) if same_content(l, base.kind, &base.hash) => {
                before.push_str(&format!("rm -f {}\n", shell_quote(&in_workspace(&path))));
                manifest.files.remove(&path);
                report.removed += 1;
            }
            None => {
                manifest.files.remove(&path);
            }
            // Changed in the sandbox: the push commits it (restoring the file).
            Some(_) => {}
        }
    }
    let gone_dirs: Vec<String> = manifest
        .dirs
        .iter()
        .rev()
        .filter(|p| !on_server.contains(p.as_str()))
        .cloned()
        .collect();
    for dir in gone_dirs {
        if local.contains_key(dir.as_str()) {
            // Only if empty: anything the sandbox added stays (and is committed).
            before.push_str(&format!("rmdir {} 2>/dev/null\n", shell_quote(&in_workspace(&dir))));
            report.removed += 1;
        }
        manifest.dirs.remove(&dir);
    }

    // Skills: a read-only copy under /skills.
    let mut wanted: BTreeMap<String, (BlobHash, u32)> = BTreeMap::new();
    for skill in &skills.skills {
        for f in &skill.files {
            wanted.insert(f.path.as_str().to_string(), (f.hash.clone(), f.mode));
        }
    }
    let mut skills_changed = false;
    for (path, (hash, mode)) in &wanted {
        if manifest.skills.get(path) != Some(hash) {
            let dest = format!("{SKILLS}/{path}");
            before.push_str(&format!("rm -f {}\n", shell_quote(&dest)));
            uploads.push((dest.clone(), hash.clone(), Source::Skill));
            after.push_str(&format!("chmod {:o} {}\n", mode & 0o777, shell_quote(&dest)));
            report.skills += 1;
            skills_changed = true;
        }
    }
    let stale: Vec<String> = manifest
        .skills
        .keys()
        .filter(|p| !wanted.contains_key(*p))
        .cloned()
        .collect();
    for path in &stale {
        before.push_str(&format!("rm -f {}\n", shell_quote(&format!("{SKILLS}/{path}"))));
        skills_changed = true;
    }
    if skills_changed {
        before = format!("mkdir -p {SKILLS} 2>/dev/null; chmod -R u+w {SKILLS} 2>/dev/null\n{before}");
        after.push_str(&format!("chmod -R a-w {SKILLS} 2>/dev/null\n"));
    }

    if !before.is_empty() {
        toolbox
            .run(
                "prepare the sandbox's workspace",
                format!("{before}true\n"),
                BTreeMap::new(),
            )
            .await?;
    }
    futures_util::stream::iter(uploads.into_iter().map(|(dest, hash, source)| {
        let client = client.clone();
        let toolbox = toolbox.clone();
        async move {
            let bytes = match source {
                Source::Project => client.get_blob(project, &hash).await,
                Source::Skill => client.get_skill_blob(&hash).await,
            }
            .with_context(|| format!("cannot download {dest} from the server"))?;
            toolbox
                .upload(&dest, bytes)
                .await
                .with_context(|| format!("cannot copy {dest} into the sandbox"))?;
            Ok::<_, anyhow::Error>(())
        }
    }))
    .buffer_unordered(PARALLEL)
    .try_collect::<Vec<()>>()
    .await?;
    if !after.is_empty() {
        toolbox
            .run(
                "finish the sandbox's workspace",
                format!("{after}true\n"),
                BTreeMap::new(),
            )
            .await?;
    }
    for path in stale {
        manifest.skills.remove(&path);
    }
    for (path, (hash, _)) in wanted {
        manifest.skills.insert(path, hash);
    }
    Ok(report)
}

fn chmod(path: &str, mode: u32) -> String {
    format!("chmod {:o} {}\n", mode & 0o7777, shell_quote(&in_workspace(path)))
}

/// What one round of copy mode did, file by file.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    pub pulled: PullReport,
    /// `path: outcome`, one per changed file, in path order.
    pub outcomes: Vec<(String, String)>,
    pub committed: usize,
    pub failed: usize,
}

impl CopyReport {
    pub fn lines(&self) -> Vec<String> {
        self.outcomes.iter().map(|(p, o)| format!("{p}: {o}")).collect()
    }
}

enum Outcome {
    Committed(Box<VersionInfo>, bool),
    Deleted,
    Kept(String),
    Skipped(String),
    Failed(String),
}

fn describe_commit(v: &VersionInfo, rewritten: bool) -> String {
    let status = match v.status {
        VersionStatus::Clean => "clean",
        VersionStatus::Merged => "merged with changes made elsewhere",
        VersionStatus::Lww => "conflict: this version won, the other stays in history",
    };
    let back = if rewritten {
        "; the sandbox now has the merged file"
    } else {
        ""
    };
    format!("{status} (version {}){back}", v.version)
}

/// Commits what changed in the sandbox since the manifest. `scan` is the
/// sandbox's listing if the caller already has it.
pub async fn push(
    record: &SandboxRecord,
    toolbox: &Toolbox,
    manifest: &mut Manifest,
    scan: Option<Scan>,
) -> anyhow::Result<CopyReport> {
    let scan = match scan {
        Some(s) => s,
        None => scan_sandbox(record, toolbox).await?,
    };
    let client = Client::new(&record.server, Some(record.token.clone()))?;
    let agent = format!("daytona-{}", record.id);
    let mut report = CopyReport::default();
    let local: HashMap<&str, &ScanEntry> = scan.entries.iter().map(|e| (e.path.as_str(), e)).collect();

    for skipped in &scan.skipped {
        let (path, why) = skipped
            .split_once(": ")
            .unwrap_or((skipped.as_str(), "cannot be synced"));
        report.outcomes.push((path.to_string(), format!("skipped ({why})")));
    }

    // New folders first (files create their parents, but empty ones need this).
    for e in scan.entries.iter().filter(|e| e.kind == NodeKind::Dir) {
        if manifest.dirs.contains(&e.path) {
            continue;
        }
        let Ok(path) = WsPath::parse(&e.path) else {
            report
                .outcomes
                .push((e.path.clone(), "skipped (the server refuses this path)".into()));
            continue;
        };
        match client
            .mkdir(
                &record.project,
                &MkdirRequest {
                    path,
                    mode: None,
                    agent_id: Some(agent.clone()),
                    message: None,
                },
            )
            .await
        {
            Ok(_) => {
                manifest.dirs.insert(e.path.clone());
            }
            Err(err) => {
                report.failed += 1;
                report.outcomes.push((e.path.clone(), format!("FAILED: {err}")));
            }
        }
    }

    let changed: Vec<ScanEntry> = scan
        .entries
        .iter()
        .filter(|e| e.kind != NodeKind::Dir)
        .filter(|e| match manifest.files.get(&e.path) {
            None => true,
            Some(b) => {
                !same_content(e, b.kind, &b.hash) || (e.kind == NodeKind::File && exec_bit(e.mode) != exec_bit(b.mode))
            }
        })
        .cloned()
        .collect();
    let results: Vec<(String, Outcome)> = futures_util::stream::iter(changed.into_iter().map(|e| {
        let base = manifest.files.get(&e.path).cloned();
        let client = client.clone();
        let toolbox = toolbox.clone();
        let agent = agent.clone();
        async move {
            let path = e.path.clone();
            let outcome = commit_one(record, &client, &toolbox, &agent, &e, base).await;
            (path, outcome)
        }
    }))
    .buffer_unordered(PARALLEL)
    .collect()
    .await;

    for (path, outcome) in results {
        let text = match outcome {
            Outcome::Committed(v, rewritten) => {
                report.committed += 1;
                let text = describe_commit(&v, rewritten);
                manifest.files.insert(path.clone(), Base::of_version(&v));
                text
            }
            Outcome::Skipped(why) => format!("skipped ({why})"),
            Outcome::Failed(why) => {
                report.failed += 1;
                format!("FAILED: {why}")
            }
            Outcome::Deleted | Outcome::Kept(_) => unreachable!("commits only"),
        };
        report.outcomes.push((path, text));
    }

    // Deleted in the sandbox: delete on the server, unless it moved on there.
    let deleted: Vec<(String, Base)> = manifest
        .files
        .iter()
        .filter(|(p, _)| !local.contains_key(p.as_str()))
        .map(|(p, b)| (p.clone(), b.clone()))
        .collect();
    for (path, base) in deleted {
        let outcome = delete_one(record, &client, &agent, &path, &base).await;
        let text = match outcome {
            Outcome::Deleted => {
                report.committed += 1;
                "deleted".to_string()
            }
            Outcome::Kept(why) => format!("kept: {why}"),
            Outcome::Failed(why) => {
                report.failed += 1;
                format!("FAILED to delete: {why}")
            }
            _ => unreachable!("deletes only"),
        };
        if !text.starts_with("FAILED") {
            // Deleted, or it comes back with the next pull.
            manifest.files.remove(&path);
        }
        report.outcomes.push((path, text));
    }
    let gone_dirs: Vec<String> = manifest
        .dirs
        .iter()
        .rev()
        .filter(|d| !local.contains_key(d.as_str()))
        .cloned()
        .collect();
    for dir in gone_dirs {
        manifest.dirs.remove(&dir);
        let Ok(path) = WsPath::parse(&dir) else { continue };
        let request = DeleteRequest {
            path,
            base_version: None,
            recursive: false,
            agent_id: Some(agent.clone()),
            message: None,
            node: None,
        };
        match client.delete(&record.project, &request).await {
            Ok(_) => {
                report.committed += 1;
                report.outcomes.push((format!("{dir}/"), "deleted".into()));
            }
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => {}
            // Not empty on the server (someone added a file): it comes back.
            Err(e) => report.outcomes.push((format!("{dir}/"), format!("kept: {e}"))),
        }
    }
    report.outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    manifest.save(&record.id)?;
    Ok(report)
}

async fn commit_one(
    record: &SandboxRecord,
    client: &Client,
    toolbox: &Toolbox,
    agent: &str,
    entry: &ScanEntry,
    base: Option<Base>,
) -> Outcome {
    let Ok(path) = WsPath::parse(&entry.path) else {
        return Outcome::Skipped("the server refuses this path".into());
    };
    let bytes = match entry.kind {
        NodeKind::Symlink => Bytes::from(entry.target.clone().unwrap_or_default().into_bytes()),
        _ => match toolbox.download(&in_workspace(&entry.path)).await {
            Ok(Some(b)) => b,
            Ok(None) => return Outcome::Skipped("removed while syncing".into()),
            Err(e) => return Outcome::Failed(format!("cannot download it from the sandbox: {e}")),
        },
    };
    let hash = BlobHash::of(&bytes);
    if let Err(e) = client.put_blob(&record.project, bytes.clone()).await {
        return Outcome::Failed(format!("cannot upload it: {e}"));
    }
    let exec = exec_bit(entry.mode);
    let mode = match &base {
        Some(b) if exec_bit(b.mode) == exec => None,
        _ if entry.kind == NodeKind::Symlink => None,
        _ => Some(if exec { 0o755 } else { 0o644 }),
    };
    let key = blake3::hash(
        format!(
            "daytona\0{}\0{}\0{hash}\0{:?}\0{:?}",
            record.id,
            entry.path,
            base.as_ref().map(|b| (b.node, b.version)),
            mode
        )
        .as_bytes(),
    )
    .to_hex()[..32]
        .to_string();
    let mut request = CommitRequest {
        path,
        base_version: base.as_ref().map(|b| b.version),
        hash: hash.clone(),
        kind: Some(entry.kind),
        mode,
        agent_id: Some(agent.to_string()),
        message: None,
        idempotency_key: Some(key),
        node: base.as_ref().map(|b| b.node),
        content_base64: None,
        mtime: None,
        atime: None,
    };
    let mut result = client.commit(&record.project, &request).await;
    if let Err(ClientError::Api { code, .. }) = &result {
        if matches!(code, ErrorCode::NodeMismatch | ErrorCode::BaseVersionUnknown) {
            // The path holds another file now (deleted and re-created, or
            // renamed over): commit over whatever is there.
            request.node = None;
            request.base_version = None;
            request.idempotency_key = None;
            result = client.commit(&record.project, &request).await;
        }
    }
    let version = match result {
        Ok(v) => v,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    // Merged: the sandbox should see what the server now holds.
    let mut rewritten = false;
    if version.hash != hash && entry.kind == NodeKind::File {
        match client.get_blob(&record.project, &version.hash).await {
            Ok(merged) => {
                if toolbox.upload(&in_workspace(&entry.path), merged).await.is_ok() {
                    rewritten = true;
                }
            }
            Err(e) => tracing::warn!("cannot fetch the merged {}: {e}", entry.path),
        }
        if !rewritten {
            // Keep the base at what the sandbox has, so the next round merges again.
            return Outcome::Committed(Box::new(VersionInfo { hash, ..version }), false);
        }
    }
    Outcome::Committed(Box::new(version), rewritten)
}

async fn delete_one(record: &SandboxRecord, client: &Client, agent: &str, path: &str, base: &Base) -> Outcome {
    let Ok(ws) = WsPath::parse(path) else {
        return Outcome::Kept("the server refuses this path".into());
    };
    let request = DeleteRequest {
        path: ws,
        base_version: Some(base.version),
        recursive: false,
        agent_id: Some(agent.to_string()),
        message: None,
        node: Some(base.node),
    };
    match client.delete(&record.project, &request).await {
        Ok(_) => Outcome::Deleted,
        Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => {
            Outcome::Kept("already deleted on the server".into())
        }
        Err(e) if e.status().is_some_and(|s| s.as_u16() == 409) => Outcome::Kept(
            "it changed on the server since this sandbox got it; it comes back with the next command".into(),
        ),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_lists_files_dirs_and_symlinks_with_hashes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f.md"), b"hello").unwrap();
        std::fs::write(dir.path().join("run.sh"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.path().join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("a/b/f.md", dir.path().join("link")).unwrap();
        let s = scan(dir.path()).unwrap();
        let paths: Vec<(&str, NodeKind)> = s.entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(
            paths,
            [
                ("a", NodeKind::Dir),
                ("a/b", NodeKind::Dir),
                ("a/b/f.md", NodeKind::File),
                ("link", NodeKind::Symlink),
                ("run.sh", NodeKind::File)
            ]
        );
        let f = &s.entries[2];
        assert_eq!(f.hash, Some(BlobHash::of(b"hello")));
        assert_eq!(f.size, 5);
        assert!(exec_bit(s.entries[4].mode));
        assert_eq!(s.entries[3].target.as_deref(), Some("a/b/f.md"));
        assert_eq!(s.entries[3].hash, Some(BlobHash::of(b"a/b/f.md")));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(parse_scan(&json).unwrap().entries, s.entries);
    }

    #[test]
    fn the_scan_follows_the_command_and_keeps_its_exit_code() {
        let script = command_then_scan("echo hi; exit 3", "MARK", "/usr/local/bin/contextfs");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script.replace(
                "/usr/local/bin/contextfs daytona scan /workspace",
                "echo '{\"entries\":[]}'",
            ))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\nMARK{\"entries\":[]}\n");
    }
}
