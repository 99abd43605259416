//! Operations commands: `gc`, `project set`/`show` (retention), the
//! project-wide `log` and `diff --since`, and the `serve` flags for
//! retention, garbage collection and metrics.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::api::*;
use crate::client::{ActivityQuery, Client};
use crate::server::gc::OpsConfig;

/// `serve` flags of issue 17 (retention, GC, metrics).
#[derive(Args, Debug, Clone)]
pub struct ServeOpsArgs {
    /// Run garbage collection (retention pruning, then unreferenced blobs)
    /// this often, e.g. 6h [default: only on `contextfs gc`]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub gc_interval: Option<Duration>,
    /// How long an unreferenced blob stays after its last upload, so a commit
    /// that follows its upload is never left without its blob
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    pub gc_grace: Duration,
    /// Default retention for projects without a policy: versions older than
    /// DAYS may be pruned (heads and protected versions always stay)
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub keep_days: Option<u32>,
    /// Default retention for projects without a policy: at most N versions per file
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub keep_versions: Option<u32>,
    /// Serve /metrics on this address (to any peer) instead of on the main
    /// listener (loopback peers only)
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

impl ServeOpsArgs {
    pub fn config(&self) -> OpsConfig {
        let default_retention = RetentionPolicy {
            keep_days: self.keep_days,
            keep_versions: self.keep_versions,
        };
        if self.gc_grace < Duration::from_secs(600) {
            eprintln!(
                "warning: --gc-grace {}s: a commit landing more than that after its upload may find its blob \
                 collected and fail with blob_missing; keep it at 10m or more outside tests",
                self.gc_grace.as_secs()
            );
        }
        OpsConfig {
            gc_grace: self.gc_grace,
            gc_interval: self.gc_interval,
            default_retention: (!default_retention.is_empty()).then_some(default_retention),
            metrics_listen: self.metrics_listen,
        }
    }
}

/// `90s`, `10m`, `6h`, `7d` or plain seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration (examples: 90s, 10m, 6h, 7d)"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown duration unit {other:?} (use s, m, h or d)")),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{raw} is too long"))
}

// ----- commands -----

/// Pretty JSON on stdout: the shapes docs/OPERATIONS.md documents.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot encode the answer as JSON")?;
    println!("{text}");
    Ok(())
}

/// `--since`: RFC 3339, or a duration back from now (`90m`, `2h`, `7d`).
pub fn since_time(raw: &str) -> anyhow::Result<String> {
    if chrono::DateTime::parse_from_rfc3339(raw).is_ok() {
        return Ok(raw.to_string());
    }
    let ago = parse_duration(raw).map_err(|e| {
        anyhow::anyhow!("--since {raw:?}: not an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration ago ({e})")
    })?;
    let ago = chrono::Duration::from_std(ago).context("--since is too far back")?;
    Ok((chrono::Utc::now() - ago).to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `contextfs gc`: exit status 1 when storage lost or damaged a referenced blob.
pub async fn gc(c: &Client, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let report = c.gc(dry_run).await.map_err(super::commands::explain)?;
    if json {
        print_json(&report)?;
    } else {
        print_gc_report(&report);
    }
    if report.has_damage() {
        eprintln!(
            "error: {} referenced blob(s) missing and {} with the wrong size: restore them from a backup \
             (docs/OPERATIONS.md, \"Damaged blobs\"); GC never deletes them",
            report.missing.len(),
            report.corrupt.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_gc_report(r: &GcReport) {
    let would = if r.dry_run { "would be " } else { "" };
    if r.pruned.is_empty() {
        println!("retention: no versions {would}pruned");
    } else {
        for p in &r.pruned {
            println!(
                "retention: {} versions of project {} {would}pruned ({})",
                p.versions,
                p.project,
                p.policy.describe()
            );
        }
    }
    println!(
        "blobs: {} in storage ({}), {} referenced, {} unreferenced but within the {}s grace period",
        r.blobs_scanned,
        human_bytes(r.bytes_scanned),
        r.blobs_referenced,
        r.blobs_in_grace,
        r.grace_seconds
    );
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    println!(
        "{verb} {} unreferenced blobs, {} {}",
        r.blobs_deleted,
        human_bytes(r.bytes_freed),
        if r.dry_run { "to free" } else { "freed" }
    );
    for hash in &r.missing {
        println!("MISSING  {hash}  (referenced by a version, not in storage)");
    }
    for c in &r.corrupt {
        println!(
            "CORRUPT  {}  (stored {} bytes, versions say {})",
            c.hash, c.stored_size, c.expected_size
        );
    }
    for name in &r.unrecognised {
        println!("kept     {name}  (not a blob name; left alone)");
    }
}

fn print_retention(info: &RetentionInfo) {
    let effective = info
        .effective
        .map(|p| p.describe())
        .unwrap_or_else(|| "keep every version".into());
    let source = match info.source.as_str() {
        "project" => "the project's policy",
        "server_default" => "the server default",
        _ => "no policy",
    };
    println!("project {}: {effective} ({source})", info.project);
}

pub async fn project_set(
    c: &Client,
    name: &str,
    keep_days: Option<i64>,
    keep_versions: Option<i64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let info = c
        .set_retention(
            name,
            &RetentionRequest {
                keep_days,
                keep_versions,
            },
        )
        .await
        .map_err(super::commands::explain)?;
    if json {
        print_json(&info)?;
    } else {
        print_retention(&info);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn project_show(c: &Client, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let info = c.retention(name).await.map_err(super::commands::explain)?;
    if json {
        print_json(&info)?;
    } else {
        print_retention(&info);
    }
    Ok(ExitCode::SUCCESS)
}

/// What `log` (no path) and `diff --since` ask the activity route.
pub struct ActivityArgs {
    pub limit: u32,
    pub agent: Option<String>,
    pub since: Option<String>,
    pub path_prefix: Option<String>,
}

impl ActivityArgs {
    fn query(&self) -> anyhow::Result<ActivityQuery> {
        Ok(ActivityQuery {
            before: None,
            limit: self.limit.clamp(1, 1000),
            agent: self.agent.clone(),
            since: self.since.as_deref().map(since_time).transpose()?,
            path_prefix: self
                .path_prefix
                .as_deref()
                .map(|p| p.trim_matches('/').to_string())
                .filter(|p| !p.is_empty()),
        })
    }
}

/// Up to `limit` entries, following pages.
async fn activity_entries(c: &Client, project: &str, args: &ActivityArgs) -> anyhow::Result<Vec<ActivityEntry>> {
    let mut query = args.query()?;
    let want = args.limit as usize;
    let mut entries = Vec::new();
    loop {
        query.limit = (want - entries.len()).clamp(1, 1000) as u32;
        let page = c.activity(project, &query).await.map_err(super::commands::explain)?;
        entries.extend(page.entries);
        match page.next_before {
            Some(before) if entries.len() < want => query.before = Some(before),
            _ => break,
        }
    }
    Ok(entries)
}

/// `contextfs log` without a path: the project's activity, newest first.
pub async fn project_log(c: &Client, project: &str, args: ActivityArgs, json: bool) -> anyhow::Result<ExitCode> {
    let entries = activity_entries(c, project, &args).await?;
    if json {
        print_json(&entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>7}  {:<24}  {:<16}  {:<8}  {:<7}  {:>7}  PATH",
        "SEQ", "TIME", "AGENT", "OP", "STATUS", "VERSION"
    );
    for e in entries {
        let path = match &e.old_path {
            Some(old) => format!("{old} -> {}", e.path),
            None => e.path.clone(),
        };
        println!(
            "{:>7}  {:<24}  {:<16}  {:<8}  {:<7}  {:>7}  {path}",
            e.seq,
            e.at,
            e.agent_id.as_deref().unwrap_or(&e.author),
            e.op.as_str(),
            e.status.as_str(),
            e.version
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One file in `diff --since`.
#[derive(Debug, serde::Serialize)]
pub struct FileChange {
    pub path: String,
    /// `added`, `modified`, `deleted` or `renamed`.
    pub change: &'static str,
    pub versions: u64,
    /// The newest version before the window, if the file had one.
    pub from_version: Option<i64>,
    pub to_version: i64,
    pub statuses: Vec<String>,
    pub agents: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    pub size: u64,
}

/// Folds the window's entries (newest first) into one change per node.
fn summarise(entries: &[ActivityEntry]) -> Vec<FileChange> {
    let mut by_node: std::collections::BTreeMap<i64, Vec<&ActivityEntry>> = Default::default();
    // Files and symlinks: a directory's own versions say nothing its files do not.
    for e in entries.iter().filter(|e| e.kind != NodeKind::Dir) {
        by_node.entry(e.node).or_default().push(e);
    }
    let mut changes: Vec<FileChange> = by_node
        .into_values()
        .map(|list| {
            let newest = list[0];
            let oldest = list[list.len() - 1];
            let created = list
                .iter()
                .any(|e| matches!(e.op, VersionOp::Create | VersionOp::Mkdir));
            let renamed_from = list.iter().rev().find_map(|e| e.old_path.clone());
            let change = if newest.deleted {
                "deleted"
            } else if created {
                "added"
            } else if renamed_from.is_some() {
                "renamed"
            } else {
                "modified"
            };
            let mut statuses: Vec<String> = list.iter().map(|e| e.status.as_str().to_string()).collect();
            statuses.sort();
            statuses.dedup();
            let mut agents: Vec<String> = list
                .iter()
                .map(|e| e.agent_id.clone().unwrap_or_else(|| e.author.clone()))
                .collect();
            agents.sort();
            agents.dedup();
            FileChange {
                path: newest.path.clone(),
                change,
                versions: list.len() as u64,
                from_version: (!created && oldest.version > 1).then_some(oldest.version - 1),
                to_version: newest.version,
                statuses,
                agents,
                old_path: renamed_from.filter(|old| *old != newest.path),
                size: newest.size,
            }
        })
        .collect();
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    changes
}

/// `contextfs diff --since T [PREFIX]`: a summary per changed file.
pub async fn diff_since(
    c: &Client,
    project: &str,
    since: &str,
    prefix: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let args = ActivityArgs {
        limit: 100_000,
        agent: None,
        since: Some(since.to_string()),
        path_prefix: prefix,
    };
    let changes = summarise(&activity_entries(c, project, &args).await?);
    if json {
        print_json(&changes)?;
        return Ok(ExitCode::SUCCESS);
    }
    for ch in &changes {
        let mark = match ch.change {
            "added" => "A",
            "deleted" => "D",
            "renamed" => "R",
            _ => "M",
        };
        let span = match ch.from_version {
            Some(from) => format!("v{from}..v{}", ch.to_version),
            None => format!("v{}", ch.to_version),
        };
        let renamed = ch
            .old_path
            .as_deref()
            .map(|old| format!(" (from {old})"))
            .unwrap_or_default();
        println!(
            "{mark} {}{renamed}  {span}, {} version(s), {} by {}",
            ch.path,
            ch.versions,
            ch.statuses.join("/"),
            ch.agents.join(", ")
        );
    }
    if changes.is_empty() {
        eprintln!("no changes since {}", since_time(since)?);
    }
    Ok(ExitCode::SUCCESS)
}

// ----- completions and man pages -----

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = <super::Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "contextfs", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// `contextfs man DIR`: contextfs.1 and contextfs-SUB.1 for each subcommand.
pub fn man_pages(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let command = <super::Cli as clap::CommandFactory>::command();
    write_man_page(dir, "contextfs", command.clone())?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("contextfs-{}", sub.get_name());
        write_man_page(dir, &name, sub.clone().display_name(name.clone()))?;
    }
    println!("man pages written to {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn write_man_page(dir: &std::path::Path, name: &str, command: clap::Command) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut out)
        .with_context(|| format!("cannot render the man page {name}"))?;
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// `contextfs status --json`: the mount's report plus the figures a script
/// watches, under stable names.
#[derive(Debug, serde::Serialize)]
pub struct MountStatusJson {
    pub project: String,
    pub mountpoint: String,
    pub server: String,
    /// The mount process.
    pub pid: u32,
    pub online: bool,
    pub last_error: Option<String>,
    /// Changes in the journal the server has not acknowledged.
    pub queue_depth: usize,
    /// How long the oldest of them has waited (null when none).
    pub oldest_queued_age_ms: Option<i64>,
    /// How far the mount's commits lag behind its local changes: the oldest
    /// queued change's age, 0 when everything is committed.
    pub commit_lag_ms: i64,
    /// The change-feed cursor the mount has applied (compare with the
    /// project's `cursor` to see how far behind remote changes it is).
    pub feed_cursor: Option<i64>,
    pub cache: Option<MountCacheJson>,
    /// Open files with unclosed writes.
    pub pending_files: usize,
    pub commits_since_mount: u64,
    pub passthrough: String,
    pub queued: Vec<crate::mount::control::QueuedItem>,
    pub pending: Vec<String>,
    /// `{path, status}` of every commit acknowledged since the mount.
    pub outcomes: Vec<MountOutcome>,
}

#[derive(Debug, serde::Serialize)]
pub struct MountCacheJson {
    pub bytes_cached: u64,
    pub limit_bytes: u64,
    pub blobs: usize,
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses); null before the first read.
    pub hit_ratio: Option<f64>,
}

#[derive(Debug, serde::Serialize)]
pub struct MountOutcome {
    pub path: String,
    pub status: String,
}

impl MountStatusJson {
    pub fn from_report(r: crate::mount::control::MountReport) -> Self {
        let now = chrono::Utc::now().timestamp_millis();
        let oldest_queued_age_ms = r
            .queued
            .iter()
            .filter_map(|q| q.changed_at)
            .min()
            .map(|at| (now - at).max(0));
        let cache = r.cache.map(|c| MountCacheJson {
            hit_ratio: (c.hits + c.misses > 0).then(|| c.hits as f64 / (c.hits + c.misses) as f64),
            bytes_cached: c.bytes_cached,
            limit_bytes: c.limit_bytes,
            blobs: c.blobs,
            hits: c.hits,
            misses: c.misses,
        });
        Self {
            oldest_queued_age_ms,
            commit_lag_ms: oldest_queued_age_ms.unwrap_or(0),
            feed_cursor: r.feed_cursor,
            cache,
            project: r.info.project,
            mountpoint: r.info.mountpoint,
            server: r.info.server,
            pid: r.info.pid,
            online: r.online,
            last_error: r.last_error,
            queue_depth: r.queued.len(),
            pending_files: r.pending.len(),
            commits_since_mount: r.commits,
            passthrough: r.passthrough,
            queued: r.queued,
            pending: r.pending,
            outcomes: r
                .outcomes
                .into_iter()
                .map(|(path, status)| MountOutcome { path, status })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_since_times_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21_600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("-1h").is_err());
        assert_eq!(
            since_time("2026-01-31T12:00:00Z").ok().as_deref(),
            Some("2026-01-31T12:00:00Z")
        );
        let ago = since_time("2h").expect("a duration ago");
        let parsed = chrono::DateTime::parse_from_rfc3339(&ago).expect("RFC 3339");
        let hours = (chrono::Utc::now() - parsed.with_timezone(&chrono::Utc)).num_minutes();
        assert!((119..=121).contains(&hours), "{ago}");
        assert!(since_time("yesterday").is_err());
    }
}
