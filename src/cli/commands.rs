//! Client commands: each one is a few REST calls and a human-readable answer.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;

use super::{ops, Command, GlobalArgs, ProjectCommand, SkillsCommand, TokenCommand};
use crate::api::*;
use crate::client::{Client, ClientError, UploadError};
use crate::model::{BlobHash, WsPath};

/// The content of `put`: the file named, or standard input spooled to a
/// temporary file (either may be larger than memory), and its hash.
struct PutContent {
    path: PathBuf,
    hash: BlobHash,
    spooled: bool,
}

impl PutContent {
    fn read(file: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut hasher = blake3::Hasher::new();
        match file {
            Some(path) => {
                let mut source =
                    std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
                std::io::copy(&mut source, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
                Ok(Self {
                    path,
                    hash: BlobHash::from_blake3(hasher.finalize()),
                    spooled: false,
                })
            }
            None => {
                let path = std::env::temp_dir().join(format!(
                    ".contextfs-put-{}-{:016x}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                // Removed on drop, also when reading fails half way.
                let mut content = Self {
                    path,
                    hash: BlobHash::of(b""),
                    spooled: true,
                };
                let spool = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&content.path)
                    .with_context(|| format!("cannot create {}", content.path.display()))?;
                let mut out = std::io::BufWriter::with_capacity(1 << 20, spool);
                let mut buf = vec![0u8; 1 << 20];
                let mut stdin = std::io::stdin().lock();
                loop {
                    let n = match stdin.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(anyhow!(e).context("cannot read standard input")),
                    };
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n])
                        .with_context(|| format!("cannot write {}", content.path.display()))?;
                }
                out.flush()
                    .with_context(|| format!("cannot write {}", content.path.display()))?;
                content.hash = BlobHash::from_blake3(hasher.finalize());
                Ok(content)
            }
        }
    }
}

impl Drop for PutContent {
    fn drop(&mut self) {
        if self.spooled {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// [`explain`] for uploads, which can also fail on the local file.
fn explain_upload(e: UploadError) -> anyhow::Error {
    match e {
        UploadError::Server(e) => explain(e),
        e @ UploadError::Changed { .. } => anyhow!("{e}\nhint: the file changed while `put` read it; run it again"),
        e => anyhow!(e),
    }
}

/// Turns a client error into a message that says what to do about it.
pub(super) fn explain(e: ClientError) -> anyhow::Error {
    let hint = match &e {
        ClientError::Unreachable { .. } => {
            "is `contextfs serve` running there? Point --server (or CONTEXTFS_SERVER) at it".to_string()
        }
        ClientError::Api { status, .. } if status.as_u16() == 401 => {
            "check CONTEXTFS_TOKEN / --token-file (the admin token is in the server's DATA/admin-token)".to_string()
        }
        ClientError::Api { status, .. } if status.as_u16() == 403 => {
            "this token may not do that: use a read-write project token, or the admin token for admin commands"
                .to_string()
        }
        ClientError::Api {
            code: ErrorCode::BaseVersionUnknown | ErrorCode::BaseVersionStale,
            ..
        } => "see the file's versions with `contextfs log PATH`".to_string(),
        _ => String::new(),
    };
    if hint.is_empty() {
        anyhow!(e)
    } else {
        anyhow!("{e}\nhint: {hint}")
    }
}

fn client(global: &GlobalArgs) -> anyhow::Result<Client> {
    let token = global.token.clone().ok_or_else(|| {
        anyhow!("no token: set CONTEXTFS_TOKEN, pass --token-file FILE or run `contextfs login` (the admin token is in the server's DATA/admin-token)")
    })?;
    Client::new(&global.server_url(), Some(token)).map_err(explain)
}

fn project(global: &GlobalArgs) -> anyhow::Result<&str> {
    global
        .project
        .as_deref()
        .ok_or_else(|| anyhow!("no project: pass --project NAME or set CONTEXTFS_PROJECT"))
}

/// Accepts `/notes/a.md` and `notes/a.md/` as the user most likely meant them.
fn ws_path(raw: &str) -> anyhow::Result<WsPath> {
    let trimmed = raw.trim_matches('/');
    WsPath::parse(trimmed).map_err(|e| anyhow!("invalid path {raw:?}: {e}"))
}

pub async fn run(global: &GlobalArgs, command: Command) -> anyhow::Result<ExitCode> {
    let global = &global.clone().with_saved_defaults()?;
    if let Command::Login { default_project } = command {
        return login(global, default_project).await;
    }
    let c = client(global)?;
    match command {
        Command::Serve(_)
        | Command::Migrate(_)
        | Command::Mount(_)
        | Command::Umount { .. }
        | Command::Status { .. }
        | Command::Login { .. }
        | Command::Daytona(_)
        | Command::E2b(_)
        | Command::Run(_)
        | Command::DockerPlugin(_)
        | Command::Sync(_)
        | Command::Checkout(_)
        | Command::Push(_)
        | Command::Pull(_)
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Doctor(_) => {
            unreachable!("handled before client commands")
        }
        Command::Project(ProjectCommand::Create { name }) => {
            let p = c.create_project(&name).await.map_err(explain)?;
            println!("created project {}", p.name);
        }
        Command::Project(ProjectCommand::List { json }) => {
            let projects = c.projects().await.map_err(explain)?;
            if json {
                ops::print_json(&projects)?;
            }
            for p in projects.iter().filter(|_| !json) {
                println!("{}\t{}\tcursor {}", p.name, p.created_at, p.cursor);
            }
        }
        Command::Project(ProjectCommand::Set {
            name,
            keep_days,
            keep_versions,
            clear,
            json,
        }) => {
            if clear || keep_days.is_some() || keep_versions.is_some() {
                return ops::project_set(&c, &name, keep_days, keep_versions, json).await;
            }
            bail!("say what to keep: --keep-days DAYS and/or --keep-versions N, or --clear to remove the policy");
        }
        Command::Project(ProjectCommand::Show { name, json }) => return ops::project_show(&c, &name, json).await,
        Command::Gc { dry_run, json } => return ops::gc(&c, dry_run, json).await,
        Command::Token(TokenCommand::Create { read_only, label }) => {
            let access = if read_only { Access::Read } else { Access::ReadWrite };
            let t = c.create_token(project(global)?, access, label).await.map_err(explain)?;
            eprintln!(
                "token {} ({}) for project {}; it is shown only once:",
                t.info.id,
                t.info.access.as_str(),
                t.info.project
            );
            println!("{}", t.token);
        }
        Command::Token(TokenCommand::List { json }) => {
            let tokens = c.tokens(project(global)?).await.map_err(explain)?;
            if json {
                ops::print_json(&tokens)?;
            }
            for t in tokens.into_iter().filter(|_| !json) {
                let state = if t.revoked { "revoked" } else { "active" };
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.access.as_str(),
                    state,
                    t.created_at,
                    t.label.unwrap_or_default()
                );
            }
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            c.revoke_token(&id).await.map_err(explain)?;
            println!("revoked {id}");
        }
        Command::Ls {
            path,
            recursive,
            long,
            json,
        } => ls(&c, project(global)?, path, recursive, long, json).await?,
        Command::Cat { path, version } => {
            let path = ws_path(&path)?;
            let file = c
                .checkout(project(global)?, path.as_str(), version)
                .await
                .map_err(explain)?;
            let mut out = std::io::stdout().lock();
            out.write_all(&file.bytes)
                .and_then(|_| out.flush())
                .context("cannot write to standard output")?;
        }
        Command::Put {
            path,
            file,
            base,
            executable,
            agent_id,
            message,
        } => {
            let path = ws_path(&path)?;
            let content = PutContent::read(file)?;
            let project = project(global)?;
            let base = match base {
                Some(b) => Some(b),
                None => current_head(&c, project, &path).await?,
            };
            // The server's limits say from what size a file goes up by chunks.
            let limits = c.health().await.ok().and_then(|h| h.limits);
            let receipt = c
                .upload_file_within(project, &content.hash, &content.path, limits.as_ref())
                .await
                .map_err(explain_upload)?;
            let request = CommitRequest {
                path: path.clone(),
                base_version: base,
                hash: receipt.hash,
                kind: None,
                mode: executable.then_some(0o755),
                agent_id,
                message,
                idempotency_key: None,
                node: None,
                content_base64: None,
                mtime: None,
                atime: None,
            };
            let v = c.commit(project, &request).await.map_err(explain)?;
            println!("{}: version {} ({})", v.path, v.version, v.status.as_str());
        }
        Command::Log {
            path: None,
            limit,
            agent,
            since,
            path_prefix,
            json,
        } => {
            let args = ops::ActivityArgs {
                limit,
                agent,
                since,
                path_prefix,
            };
            return ops::project_log(&c, project(global)?, args, json).await;
        }
        Command::Log {
            path: Some(path),
            limit,
            json,
            ..
        } => {
            let path = ws_path(&path)?;
            let page = c
                .history(project(global)?, path.as_str(), None, limit)
                .await
                .map_err(explain)?;
            if json {
                ops::print_json(&page)?;
                return Ok(ExitCode::SUCCESS);
            }
            let pruned_below = |version: i64| page.pruned.iter().find(|g| g.before == version).copied();
            println!(
                "{:>7}  {:<24}  {:<16}  {:<7}  {:<8}  {:>9}  MESSAGE",
                "VERSION", "TIME", "AGENT", "STATUS", "OP", "SIZE"
            );
            for v in &page.versions {
                let gap = pruned_below(v.version);
                println!(
                    "{:>7}  {:<24}  {:<16}  {:<7}  {:<8}  {:>9}  {}",
                    v.version,
                    v.created_at,
                    v.agent_id.as_deref().unwrap_or(&v.author),
                    v.status.as_str(),
                    v.op.as_str(),
                    v.size,
                    v.message.as_deref().unwrap_or_default()
                );
                if let Some(gap) = gap {
                    println!(
                        "{:>7}  pruned before version {} ({} version(s) removed by retention)",
                        "...", gap.before, gap.count
                    );
                }
            }
        }
        Command::Diff {
            path,
            since: Some(since),
            json,
            ..
        } => return ops::diff_since(&c, project(global)?, &since, path, json).await,
        Command::Diff { path, v1, v2, .. } => {
            let (Some(path), Some(v1), Some(v2)) = (path, v1, v2) else {
                bail!("usage: contextfs diff PATH V1 V2, or contextfs diff --since TIME [PATH-PREFIX]");
            };
            let path = ws_path(&path)?;
            let project = project(global)?;
            let old = c.checkout(project, path.as_str(), Some(v1)).await.map_err(explain)?;
            let new = c.checkout(project, path.as_str(), Some(v2)).await.map_err(explain)?;
            print!("{}", unified_diff(path.as_str(), v1, &old.bytes, v2, &new.bytes));
        }
        Command::Rollback {
            path,
            version,
            agent_id,
        } => {
            let path = ws_path(&path)?;
            let request = RollbackRequest {
                path,
                version,
                agent_id,
                message: Some(format!("rollback to version {version}")),
            };
            let v = c.rollback(project(global)?, &request).await.map_err(explain)?;
            println!("{}: version {} now equals version {version}", v.path, v.version);
        }
        Command::Mkdir { path } => {
            let request = MkdirRequest {
                path: ws_path(&path)?,
                mode: None,
                agent_id: None,
                message: None,
            };
            let v = c.mkdir(project(global)?, &request).await.map_err(explain)?;
            println!("{}/ (node {})", v.path, v.node);
        }
        Command::Mv { from, to, replace } => {
            let request = RenameRequest {
                from: ws_path(&from)?,
                to: ws_path(&to)?,
                replace,
                base_version: None,
                agent_id: None,
                message: None,
                node: None,
            };
            let v = c.rename(project(global)?, &request).await.map_err(explain)?;
            println!("{from} -> {} (node {}, version {})", v.path, v.node, v.version);
        }
        Command::Rm { path, recursive } => {
            let request = DeleteRequest {
                path: ws_path(&path)?,
                base_version: None,
                recursive,
                agent_id: None,
                message: None,
                node: None,
            };
            let r = c.delete(project(global)?, &request).await.map_err(explain)?;
            for v in r.deleted {
                println!(
                    "deleted {} (restore with: contextfs rollback {} {})",
                    v.path,
                    v.path,
                    v.version - 1
                );
            }
        }
        Command::Skills(SkillsCommand::Publish { dir }) => publish_skills(&c, &dir).await?,
        Command::Skills(SkillsCommand::List { json }) => {
            let listing = c.skills().await.map_err(explain)?;
            if json {
                ops::print_json(&listing)?;
            }
            for s in listing.skills.into_iter().filter(|_| !json) {
                println!("{}\t{} ({} files)", s.name, s.description, s.files.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the server and token, then saves them as defaults.
async fn login(global: &GlobalArgs, default_project: Option<String>) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    let who = c.whoami().await.map_err(explain)?;
    let project = default_project.or_else(|| who.project.clone());
    let saved = super::config::Config {
        server: Some(global.server_url()),
        token: global.token.clone(),
        project: project.clone(),
    };
    let path = super::config::save(&saved)?;
    let role = if who.admin {
        "admin".to_string()
    } else {
        format!(
            "{} token for project {}",
            who.access.as_str(),
            who.project.unwrap_or_default()
        )
    };
    println!(
        "logged in to {} ({role}); defaults saved in {}",
        global.server_url(),
        path.display()
    );
    if let Some(p) = project {
        println!("now `contextfs mount ~/ws` mounts project {p}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The head version of a live file, so a plain `put` overwrites what is there now.
async fn current_head(c: &Client, project: &str, path: &WsPath) -> anyhow::Result<Option<i64>> {
    match c.history(project, path.as_str(), None, 1).await {
        Ok(page) => Ok(page.versions.first().filter(|v| !v.deleted).map(|v| v.version)),
        Err(e) if e.status().map(|s| s.as_u16()) == Some(404) && e.has_code(ErrorCode::NotFound) => {
            // Either the path is new or the project is missing; the commit tells which.
            Ok(None)
        }
        Err(e) => Err(explain(e)),
    }
}

async fn ls(
    c: &Client,
    project: &str,
    path: Option<String>,
    recursive: bool,
    long: bool,
    json: bool,
) -> anyhow::Result<()> {
    let prefix = match path.as_deref().map(|p| p.trim_matches('/')) {
        None | Some("") | Some(".") => None,
        Some(p) => Some(ws_path(p)?),
    };
    let listing = c
        .tree(project, prefix.as_ref().map(|p| p.as_str()), recursive)
        .await
        .map_err(explain)?;
    if json {
        return ops::print_json(&listing);
    }
    let strip = prefix.as_ref().map(|p| p.as_str().len() + 1).unwrap_or(0);
    for e in listing.entries {
        let name = &e.path[strip..];
        let suffix = match e.kind {
            NodeKind::Dir => "/",
            NodeKind::Symlink => "@",
            NodeKind::File => "",
        };
        if long {
            println!(
                "{:>6o}  {:>10}  v{:<5}  {}  {}  {name}{suffix}",
                e.mode,
                e.size,
                e.version,
                e.modified_at,
                &e.hash.as_str()[..12]
            );
        } else {
            println!("{name}{suffix}");
        }
    }
    Ok(())
}

pub fn unified_diff(path: &str, v1: i64, old: &[u8], v2: i64, new: &[u8]) -> String {
    match (std::str::from_utf8(old), std::str::from_utf8(new)) {
        (Ok(a), Ok(b)) => similar::TextDiff::from_lines(a, b)
            .unified_diff()
            .header(&format!("a/{path}@{v1}"), &format!("b/{path}@{v2}"))
            .to_string(),
        _ if old == new => String::new(),
        _ => format!("Binary versions {v1} and {v2} of {path} differ\n"),
    }
}

/// Every regular file under `dir`, relative to it, skipping hidden entries.
fn walk(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries =
            std::fs::read_dir(&current).with_context(|| format!("cannot read directory {}", current.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read directory {}", current.display()))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                stack.push(entry.path());
            } else if file_type.is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(dir)
                    .map(|p| p.to_string_lossy().to_string())
                    .map_err(|e| anyhow!("{e}"))?;
                out.push((entry.path(), rel));
            } else {
                eprintln!("warning: skipping {} (not a regular file)", entry.path().display());
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

async fn publish_skills(c: &Client, dir: &Path) -> anyhow::Result<()> {
    let files = walk(dir)?;
    if files.is_empty() {
        bail!(
            "{} holds no skills: each skill is a folder with a SKILL.md",
            dir.display()
        );
    }
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("uploading skills {bar:30} {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut manifest = Vec::new();
    for (full, rel) in files {
        bar.set_message(rel.clone());
        let bytes = std::fs::read(&full).with_context(|| format!("cannot read {}", full.display()))?;
        let mode = std::fs::metadata(&full)?.permissions().mode() & 0o777;
        let receipt = c.put_skill_blob(Bytes::from(bytes)).await.map_err(explain)?;
        manifest.push(SkillFile {
            path: WsPath::parse(&rel).map_err(|e| anyhow!("{}: {e}", full.display()))?,
            hash: receipt.hash,
            size: receipt.size,
            mode: if mode & 0o111 != 0 { 0o755 } else { 0o644 },
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let listing = c.publish_skills(manifest).await.map_err(explain)?;
    for s in &listing.skills {
        println!("published {}: {} ({} files)", s.name, s.description, s.files.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unified_diff;

    #[test]
    fn diff_shows_changed_lines() {
        let d = unified_diff("a.md", 1, b"x\ny\n", 2, b"x\nz\n");
        assert!(d.contains("--- a/a.md@1") && d.contains("+++ b/a.md@2"));
        assert!(d.contains("-y\n") && d.contains("+z\n"));
        assert_eq!(unified_diff("b", 1, &[0, 1], 2, &[0, 1]), "");
        assert!(unified_diff("b", 1, &[0xff], 2, &[0xfe]).contains("Binary"));
    }
}
