//! `contextfs sync`, `sync status`, `checkout`, `push`, `pull`: thin glue
//! over `crate::sync` with the messages a user needs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};

use super::{parse_size, GlobalArgs};
use crate::cache::BlobCache;
use crate::sync::state::SyncState;
use crate::sync::status::{describe_placements, process_alive, SyncReport};
use crate::sync::{daemon, shown, FileOutcome, Folder, FolderConfig, Outcome, SyncError};

#[derive(Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    long_about = "Keeps DIR in two-way sync with the project: downloads what is missing (the first time, \
everything), then watches DIR for changes and follows the project's change feed.\n\n\
Each local change is committed with the version it was edited from, so the server merges three ways \
(JSON by key, text by line); only a true conflict falls back to last-writer-wins, and the other side's \
bytes stay in history. Merged results are written back into DIR, but never over a file that changed \
again meanwhile. Remote changes are written atomically (temp file + rename) and never overwrite a \
local edit. State lives in DIR/.contextfs/; ignore rules in DIR/.contextfsignore (gitignore syntax).\n\n\
Runs in the foreground until Ctrl-C / SIGTERM; --daemon returns once the first sync is done. \
`contextfs sync status DIR` shows what is pending, skipped and how files were materialised."
)]
pub struct SyncCommand {
    #[command(subcommand)]
    pub action: Option<SyncAction>,
    #[command(flatten)]
    pub folder: FolderArgs,
    /// Return once the first sync is done and keep syncing in the background
    #[arg(long)]
    pub daemon: bool,
}

#[derive(Subcommand, Debug)]
pub enum SyncAction {
    /// Show a synced folder: the sync process, pending and skipped files, recent outcomes
    Status { dir: PathBuf },
}

#[derive(Args, Debug)]
pub struct FolderArgs {
    /// The local folder (created if missing)
    pub dir: Option<PathBuf>,
    /// Agent id recorded with every commit [default: the host name]
    #[arg(long, env = "CONTEXTFS_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Shared blob cache [default: ~/.cache/contextfs]; put it on the same
    /// file system as DIR so files can be reflink clones of it
    #[arg(long, env = "CONTEXTFS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Cache size limit, e.g. 10G, 500M
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub cache_size: u64,
}

/// Which one-shot half to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneShot {
    Checkout,
    Push,
    Pull,
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn dir_of(args: &FolderArgs) -> anyhow::Result<PathBuf> {
    args.dir
        .clone()
        .ok_or_else(|| anyhow!("name the folder: contextfs sync DIR --project NAME"))
}

/// Server and project: the folder's own (from its state file) unless flags
/// or the environment say otherwise; a new folder needs a project.
fn config(global: &GlobalArgs, args: &FolderArgs, dir: &Path) -> anyhow::Result<FolderConfig> {
    // Flags and the environment may override a folder's own server and
    // project; `contextfs login`'s saved defaults may not.
    let explicit_server = global.server.clone();
    let explicit_project = global.project.clone();
    let global = global.clone().with_saved_defaults()?;
    let saved = dir
        .canonicalize()
        .ok()
        .filter(|d| SyncState::exists(d))
        .map(|d| SyncState::load(&d))
        .transpose()?;
    let (server, project) = match &saved {
        Some(state) => (
            explicit_server.unwrap_or_else(|| state.server.clone()),
            explicit_project.unwrap_or_else(|| state.project.clone()),
        ),
        None => (
            global.server_url(),
            global.project.clone().ok_or_else(|| {
                anyhow!(
                    "no project: pass --project NAME (or set CONTEXTFS_PROJECT) the first time {} is synced",
                    dir.display()
                )
            })?,
        ),
    };
    Ok(FolderConfig {
        root: dir.to_path_buf(),
        server,
        project,
        token: global.token.clone(),
        agent_id: args.agent_id.clone().or_else(host_name),
        cache_dir: args.cache_dir.clone().unwrap_or_else(BlobCache::default_root),
        cache_size: args.cache_size,
    })
}

fn explain(e: SyncError, config: &FolderConfig) -> anyhow::Error {
    match &e {
        SyncError::Client(crate::client::ClientError::Unreachable { .. }) => anyhow!(
            "{e}\nhint: is `contextfs serve` running at {}? Point --server (or CONTEXTFS_SERVER) at it",
            config.server
        ),
        SyncError::Client(c) if c.status().is_some_and(|s| s.as_u16() == 401) => {
            anyhow!("{e}\nhint: check CONTEXTFS_TOKEN / --token-file, or run `contextfs login`")
        }
        SyncError::Busy { pid, .. } => anyhow!("{e}\nhint: stop it first (kill {pid}), or use `contextfs sync status`"),
        _ => anyhow!(e),
    }
}

/// Prints outcomes; true if any file could not be committed.
fn print_outcomes(outcomes: &[FileOutcome]) -> bool {
    let mut failed = false;
    for outcome in outcomes {
        println!("{outcome}");
        failed |= matches!(outcome.outcome, Outcome::Failed(_) | Outcome::Skipped(_));
    }
    failed
}

pub async fn one_shot(global: &GlobalArgs, args: FolderArgs, which: OneShot) -> anyhow::Result<ExitCode> {
    let dir = dir_of(&args)?;
    let config = config(global, &args, &dir)?;
    let mut folder = Folder::open(&config, which == OneShot::Checkout).map_err(|e| explain(e, &config))?;
    let mut failed = false;
    match which {
        OneShot::Checkout => {
            let outcomes = if folder.state.cursor == 0 && folder.state.files.is_empty() {
                folder.checkout(true, true).await
            } else {
                // Catch up, then fetch whatever is still missing.
                match folder.pull().await {
                    Ok(mut outcomes) => folder.checkout(true, false).await.map(|more| {
                        outcomes.extend(more);
                        outcomes
                    }),
                    Err(e) => Err(e),
                }
            }
            .map_err(|e| explain(e, &config))?;
            failed |= print_outcomes(&outcomes);
            println!(
                "{} is project {} at change {} ({})",
                folder.root.display(),
                folder.project(),
                folder.state.cursor,
                describe_placements(folder.state.clones, folder.state.copies)
            );
        }
        OneShot::Pull => {
            let outcomes = folder.pull().await.map_err(|e| explain(e, &config))?;
            failed |= print_outcomes(&outcomes);
        }
        OneShot::Push => {
            let report = folder.push().await.map_err(|e| explain(e, &config))?;
            failed |= print_outcomes(&report.outcomes);
            let reported: Vec<&str> = report.outcomes.iter().map(|o| o.path.as_str()).collect();
            for (path, why) in &folder.skipped {
                if !reported.contains(&path.as_str()) {
                    println!("skipped  {} ({why})", shown(path));
                    failed = true;
                }
            }
            for path in &report.unsettled {
                println!("pending  {} (still being written; run push again)", shown(path));
                failed = true;
            }
            if let Some(e) = report.interrupted {
                for (path, why) in &folder.pending {
                    println!("pending  {} ({why})", shown(path));
                }
                eprintln!("error: {:#}", explain(e, &config));
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub async fn run(global: &GlobalArgs, cmd: SyncCommand) -> anyhow::Result<ExitCode> {
    if let Some(SyncAction::Status { dir }) = cmd.action {
        return status(&dir);
    }
    let dir = dir_of(&cmd.folder)?;
    let config = config(global, &cmd.folder, &dir)?;
    if cmd.daemon {
        return daemonize(&dir);
    }
    let folder = Folder::open(&config, true).map_err(|e| explain(e, &config))?;
    let root = folder.root.clone();
    eprintln!(
        "syncing {} with project {} on {} (Ctrl-C to stop)",
        root.display(),
        config.project,
        config.server
    );
    let print: daemon::Printer = Box::new(|o: &FileOutcome| println!("{o}"));
    daemon::run(
        folder,
        print,
        || {
            eprintln!("ready: {} is in sync", root.display());
        },
        shutdown_signal(),
    )
    .await
    .map_err(|e| explain(e, &config))?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Starts the same command without --daemon in a new session, and returns
/// once it reports its first sync done (or why it stopped).
fn daemonize(dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let root = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    std::fs::create_dir_all(SyncState::dir(&root))
        .with_context(|| format!("cannot create {}", SyncState::dir(&root).display()))?;
    let log_path = daemon::log_path(&root);
    let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut child = super::background::respawn_detached(log, "sync")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(report) = SyncReport::load(&root) {
            if report.pid == child.id() && report.ready {
                println!(
                    "syncing {} (pid {}, log: {})",
                    root.display(),
                    child.id(),
                    log_path.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the sync exited ({status}) before its first sync was done:\n{}",
                tail.join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!("the first sync was not done after 600 s; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `contextfs sync status DIR`.
pub fn status(dir: &Path) -> anyhow::Result<ExitCode> {
    let root = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let state = SyncState::load(&root).map_err(|e| anyhow!(e))?;
    let report = SyncReport::load(&root);
    let running = report.as_ref().filter(|r| r.pid != 0 && process_alive(r.pid));
    match running {
        Some(r) => println!(
            "project {} at {} (pid {}), server {}",
            state.project,
            root.display(),
            r.pid,
            state.server
        ),
        None => println!(
            "project {} at {} (no sync running), server {}",
            state.project,
            root.display(),
            state.server
        ),
    }
    if let Some(r) = running {
        let log = daemon::log_path(&root);
        if log.is_file() {
            println!("log: {}", log.display());
        }
        let online = if r.online { "reachable" } else { "UNREACHABLE" };
        println!(
            "server: {online}{}",
            r.last_error
                .as_deref()
                .map(|e| format!(" — last error: {e}"))
                .unwrap_or_default()
        );
    }
    println!(
        "state: {} ({} files, change {})",
        SyncState::path(&root).display(),
        state.files.len(),
        state.cursor
    );
    println!("materialised: {}", describe_placements(state.clones, state.copies));
    let (pending, skipped) = match running {
        Some(r) => (r.pending.clone(), r.skipped.clone()),
        None => {
            // Nobody is syncing: look at the folder itself.
            let rules = crate::sync::ignore::IgnoreRules::load(&root);
            let scan = crate::sync::scan::scan_folder(&root, &rules)
                .with_context(|| format!("cannot scan {}", root.display()))?;
            let diff = crate::sync::scan::diff(&root, &state, &scan);
            let mut pending = std::collections::BTreeMap::new();
            for change in diff.changes {
                use crate::sync::scan::Change;
                let (path, what) = match change {
                    Change::Restat { .. } => continue,
                    Change::Write { path, base: None, .. } => (path, "new"),
                    Change::Write { path, .. } => (path, "modified"),
                    Change::Move { to, .. } => (to, "moved"),
                    Change::Delete { path, .. } => (path, "deleted"),
                    Change::Mkdir { path } => (path, "new directory"),
                    Change::Rmdir { path, .. } => (path, "deleted directory"),
                };
                pending.insert(path, format!("{what}, not pushed"));
            }
            let mut skipped: std::collections::BTreeMap<String, String> = scan.skipped.into_iter().collect();
            for (path, refused) in &state.refused {
                skipped.insert(path.clone(), refused.reason.clone());
            }
            (pending, skipped)
        }
    };
    println!("pending: {} change(s)", pending.len());
    for (path, why) in &pending {
        println!("pending  {} ({why})", shown(path));
    }
    for (path, why) in &skipped {
        println!("skipped  {} ({why})", shown(path));
    }
    if let Some(r) = running {
        for outcome in &r.recent {
            println!("{outcome}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
