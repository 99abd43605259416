//! `contextfs mount`, `umount` and `status` on the command line.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::{GlobalArgs, MountCommand};
use crate::cache::BlobCache;
use crate::mount::control::{self, Message};
use crate::mount::{self as runtime, MountArgs};

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

pub fn run(global: GlobalArgs, cmd: MountCommand) -> anyhow::Result<ExitCode> {
    let global = global.with_saved_defaults()?;
    let project = global
        .project
        .clone()
        .ok_or_else(|| anyhow!("no project: pass --project NAME, set CONTEXTFS_PROJECT, or save one with `contextfs login --default-project`"))?;
    let token = global.token.clone().ok_or_else(|| {
        anyhow!("no token: set CONTEXTFS_TOKEN, pass --token-file FILE, or run `CONTEXTFS_TOKEN=T contextfs login --server URL`")
    })?;
    if let Some(dir) = &cmd.skills_dir {
        // Refuse a bad --skills-dir here too, so --daemon reports it plainly
        // (a running mount at MOUNTPOINT is reported by the mount itself).
        let mountpoint = runtime::canonical_mountpoint(&cmd.mountpoint)?;
        if control::request(&runtime::socket_path(&mountpoint), "status").is_err() {
            runtime::check_skills_dir(&mountpoint, dir)?;
        }
    }
    if cmd.daemon {
        return daemonize(&cmd.mountpoint);
    }
    let durability = cmd.durability();
    let args = MountArgs {
        mountpoint: cmd.mountpoint,
        project,
        server: global.server_url(),
        token,
        agent_id: cmd.agent_id.or_else(host_name),
        allow_other: cmd.allow_other,
        read_only: cmd.read_only,
        cache_dir: cmd.cache_dir.unwrap_or_else(BlobCache::default_root),
        cache_size: cmd.cache_size,
        fuse_options: cmd.options,
        offline: cmd.offline,
        skills_dir: cmd.skills_dir,
        passthrough: cmd.passthrough,
        durability,
        inotify: cmd.inotify,
        request_timeout: Duration::from_secs(cmd.request_timeout),
    };
    runtime::run(args, |_| {})
}

/// Starts the same command without --daemon in a new session, and returns
/// once that mount answers on its control socket (or reports why it failed).
fn daemonize(mountpoint: &Path) -> anyhow::Result<ExitCode> {
    let mountpoint = runtime::canonical_mountpoint(mountpoint)?;
    let logs = runtime::state_root().join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let log_path = logs.join(format!(
        "mount-{}.log",
        mountpoint.display().to_string().replace('/', "_")
    ));
    let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut child = super::background::respawn_detached(log, "mount")?;
    let socket = runtime::socket_path(&mountpoint);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Message::Status(_)) = control::request(&socket, "status") {
            println!(
                "mounted at {} (pid {}, log: {})",
                mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the mount exited ({status}) before it was ready:\n{}", tail.join("\n"));
        }
        if Instant::now() > deadline {
            bail!("the mount was not ready after 120 s; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until process `pid` has exited (or is a zombie).
fn wait_for_exit(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z") | Some("X")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn umount(mountpoint: &Path) -> anyhow::Result<ExitCode> {
    let mountpoint = runtime::canonical_mountpoint(mountpoint)?;
    let socket = runtime::socket_path(&mountpoint);
    let started = Instant::now();
    let answer = control::request_with(&socket, "umount", |m| {
        if let Message::Progress(line) = m {
            if started.elapsed() > Duration::from_secs(1) {
                eprintln!("{line}");
            }
        }
    });
    match answer {
        Ok(Message::Done(report)) => {
            // The mount still holds its state lock until it exits: a
            // `contextfs mount` right after this must not find it taken.
            wait_for_exit(report.info.pid, Duration::from_secs(10));
            print!("{}", report.render());
            if report.queued.is_empty() {
                println!("unmounted {}", mountpoint.display());
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        Ok(Message::Error(e)) => bail!("{e}"),
        Ok(other) => bail!("unexpected answer from the mount: {other:?}"),
        Err(_) if runtime::is_mounted(&mountpoint) => {
            // The mount process is gone (killed?): its journal waits for the next mount.
            runtime::detach_stale(&mountpoint)?;
            eprintln!(
                "the contextfs process serving {} was not running; detached the mount. \
                 Anything it had journaled is committed by the next `contextfs mount` of the same project there.",
                mountpoint.display()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(_) => bail!("nothing is mounted at {}", mountpoint.display()),
    }
}

pub fn status(mountpoint: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mountpoint = runtime::canonical_mountpoint(mountpoint)?;
    match control::request(&runtime::socket_path(&mountpoint), "status") {
        Ok(Message::Status(r)) if json => {
            super::ops::print_json(&super::ops::MountStatusJson::from_report(r))?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(Message::Status(r)) => {
            println!(
                "project {} at {} (pid {}), server {}",
                r.info.project, r.info.mountpoint, r.info.pid, r.info.server
            );
            if let Some(dir) = &r.info.skills_dir {
                println!("skills: {dir} (read-only)");
            }
            if !r.passthrough.is_empty() {
                println!("kernel passthrough: {}", r.passthrough);
            }
            let state = if r.online { "reachable" } else { "UNREACHABLE" };
            println!(
                "server: {state}{}",
                r.last_error
                    .as_deref()
                    .map(|e| format!(" — last error: {e}"))
                    .unwrap_or_default()
            );
            println!(
                "journal: {} ({} queued, {} pending, {} commits since mount)",
                r.info.journal,
                r.queued.len(),
                r.pending.len(),
                r.commits
            );
            print!("{}", r.render());
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => bail!("unexpected answer from the mount: {other:?}"),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => bail!(
            "the contextfs mount at {} is running but did not answer ({e}): it is busy or stuck\nhint: {}",
            mountpoint.display(),
            runtime::unanswering_mount_hint(&mountpoint)
        ),
        Err(e) => bail!("no running contextfs mount at {} ({e})", mountpoint.display()),
    }
}
