//! `contextfs doctor [MOUNTPOINT]`: every check a mount depends on, each
//! with a one-line fix, instead of one error at a time. Exits 1 when
//! something blocks a mount.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::GlobalArgs;
use crate::api::{Health, WhoAmI};
use crate::client::{Client, ClientError};

#[derive(Args, Debug)]
#[command(args_override_self = true)]
#[command(
    long_about = "Checks what a mount on this machine depends on and prints one line per check, \
with a one-line fix for each problem: /dev/fuse, fusermount3, user_allow_other (for non-root --allow-other), \
kernel FUSE passthrough, the server (reachable, its version, clock skew), the token's scope for the project, \
free space in the cache and journal folders, stale or dead mounts (MOUNTPOINT, and every contextfs mount), \
and dockerd and the contextfs volume plugin socket when Docker is used.\n\n\
Exits 1 when something blocks a mount (FAIL), 0 when there are only warnings."
)]
pub struct DoctorArgs {
    /// A mount point to check (mounted, dead, or where a mount would go)
    pub mountpoint: Option<PathBuf>,
    /// Check for `contextfs mount --allow-other` (needs user_allow_other for non-root)
    #[arg(long)]
    pub allow_other: bool,
    /// Docker is used here: dockerd must answer (otherwise only reported)
    #[arg(long)]
    pub docker: bool,
    /// The blob cache folder [default: $XDG_CACHE_HOME/contextfs]
    #[arg(long, env = "CONTEXTFS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print the checks as JSON
    #[arg(long)]
    pub json: bool,
    // Where the checks look; tests point them elsewhere to break one check at a time.
    #[arg(long, hide = true, default_value = "/dev/fuse")]
    pub dev_fuse: PathBuf,
    #[arg(long, hide = true, default_value = "/etc/fuse.conf")]
    pub fuse_conf: PathBuf,
    #[arg(long, hide = true, default_value = "/var/run/docker.sock")]
    pub docker_socket: PathBuf,
    #[arg(long, hide = true, default_value = crate::sandbox::plugin::DEFAULT_SOCKET)]
    pub plugin_socket: PathBuf,
    #[arg(long, hide = true, default_value = "/proc/self/mountinfo")]
    pub mountinfo: PathBuf,
    /// Free bytes below which a folder blocks (journal, cache)
    #[arg(long, hide = true, default_value_t = 256 << 20)]
    pub min_free: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Info,
    Warn,
    Fail,
}

/// One check's result: `fix` says what to do when it is not ok.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, outcome: Outcome, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        name,
        outcome,
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

fn dev_fuse(args: &DoctorArgs) -> Check {
    let path = &args.dev_fuse;
    let fix = "load FUSE (`modprobe fuse`); in a container add --device /dev/fuse --cap-add SYS_ADMIN";
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_char_device() => {
            match std::fs::OpenOptions::new().read(true).write(true).open(path) {
                Ok(_) => check(
                    "fuse device",
                    Outcome::Ok,
                    format!("{} is usable", path.display()),
                    None,
                ),
                Err(e) => check(
                    "fuse device",
                    Outcome::Fail,
                    format!("{} cannot be opened: {e}", path.display()),
                    Some("make it usable for this user: `chmod 666 /dev/fuse` (or add the user to its group)"),
                ),
            }
        }
        Ok(_) => check(
            "fuse device",
            Outcome::Fail,
            format!("{} is not a character device", path.display()),
            Some(fix),
        ),
        Err(e) => check(
            "fuse device",
            Outcome::Fail,
            format!("{} is missing ({e})", path.display()),
            Some(fix),
        ),
    }
}

fn fusermount(root: bool) -> Check {
    match on_path("fusermount3") {
        Some(path) => check("fusermount3", Outcome::Ok, format!("found at {}", path.display()), None),
        None if root => check(
            "fusermount3",
            Outcome::Info,
            "not installed; root mounts without it (unmounting a dead mount needs it)",
            Some("apt-get install fuse3"),
        ),
        None => check(
            "fusermount3",
            Outcome::Fail,
            "not installed: a non-root user cannot mount FUSE without it",
            Some("apt-get install fuse3"),
        ),
    }
}

fn allow_other(args: &DoctorArgs, root: bool) -> Check {
    if root {
        return check("allow_other", Outcome::Ok, "root may use --allow-other", None);
    }
    let conf = std::fs::read_to_string(&args.fuse_conf).unwrap_or_default();
    let enabled = conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .any(|l| l == "user_allow_other");
    let fix = format!("add the line `user_allow_other` to {}", args.fuse_conf.display());
    match (enabled, args.allow_other) {
        (true, _) => check(
            "allow_other",
            Outcome::Ok,
            format!("user_allow_other is set in {}", args.fuse_conf.display()),
            None,
        ),
        (false, true) => check(
            "allow_other",
            Outcome::Fail,
            format!(
                "--allow-other needs user_allow_other in {}, which is not set",
                args.fuse_conf.display()
            ),
            Some(&fix),
        ),
        (false, false) => check(
            "allow_other",
            Outcome::Info,
            "user_allow_other is not set: only this user sees mounts (containers and other users need --allow-other)",
            Some(&fix),
        ),
    }
}

/// FUSE passthrough (kernel reads straight from the cache): Linux >= 6.9, as root.
fn passthrough(root: bool) -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let supported = version >= (6, 9);
    let detail = format!("kernel {}", release.trim());
    match (supported, root) {
        (true, true) => check("passthrough", Outcome::Ok, format!("{detail}: available"), None),
        (true, false) => check(
            "passthrough",
            Outcome::Info,
            format!("{detail} supports it, but only root mounts use it; reads go through the mount"),
            Some("mount as root for local-disk read speed (optional)"),
        ),
        (false, _) => check(
            "passthrough",
            Outcome::Info,
            format!("{detail}: needs Linux 6.9 or newer; reads go through the mount"),
            None,
        ),
    }
}

/// The server: reachable, its version, and the clock skew from its Date header.
async fn server(global: &GlobalArgs) -> Vec<Check> {
    let url = global.server_url();
    let fix_unreachable = "start `contextfs serve` there, or point --server / CONTEXTFS_SERVER at the right address";
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(http) => http,
        Err(e) => return vec![check("server", Outcome::Fail, format!("no HTTP client: {e}"), None)],
    };
    let sent = chrono::Utc::now();
    let response = match http
        .get(format!("{}/api/v1/health", url.trim_end_matches('/')))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return vec![check(
                "server",
                Outcome::Fail,
                format!("{url} is unreachable: {}", error_chain(&e)),
                Some(fix_unreachable),
            )]
        }
    };
    let received = chrono::Utc::now();
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok());
    let health: Health = match response.json().await {
        Ok(h) => h,
        Err(e) => {
            return vec![check(
                "server",
                Outcome::Fail,
                format!("{url} answered, but not as a contextfs server: {e}"),
                Some(fix_unreachable),
            )]
        }
    };
    let mine = env!("CARGO_PKG_VERSION");
    let mut checks = vec![if health.version == mine {
        check(
            "server",
            Outcome::Ok,
            format!("{url} answers, version {}", health.version),
            None,
        )
    } else {
        check(
            "server",
            Outcome::Warn,
            format!("{url} answers with version {}, this client is {mine}", health.version),
            Some("run the same contextfs version on both sides"),
        )
    }];
    checks.push(match date {
        Some(date) => {
            // The Date header has whole seconds: allow the round trip plus one.
            let midpoint = sent + (received - sent) / 2;
            let skew = (date.with_timezone(&chrono::Utc) - midpoint).num_seconds();
            if skew.abs() > 30 {
                check(
                    "clock",
                    Outcome::Warn,
                    format!("this machine's clock is {} s off the server's", -skew),
                    Some("sync the clocks (chrony or systemd-timesyncd); file times and `--since` go by them"),
                )
            } else {
                check(
                    "clock",
                    Outcome::Ok,
                    format!("within {} s of the server's", skew.abs().max(1)),
                    None,
                )
            }
        }
        None => check("clock", Outcome::Info, "the server sent no Date header", None),
    });
    checks
}

/// An error with its causes (reqwest's own text hides "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    text
}

/// What the token may do with the project.
async fn token_scope(global: &GlobalArgs) -> Check {
    let fix_token =
        "set CONTEXTFS_TOKEN or --token-file to a token of this project (`contextfs token create` as admin)";
    let Some(token) = global.token.clone() else {
        return check("token", Outcome::Fail, "no token", Some(fix_token));
    };
    let client = match Client::new(&global.server_url(), Some(token)) {
        Ok(c) => c,
        Err(e) => return check("token", Outcome::Fail, e.to_string(), None),
    };
    let who: WhoAmI = match client.whoami().await {
        Ok(w) => w,
        Err(ClientError::Api { status, .. }) if status.as_u16() == 401 => {
            return check(
                "token",
                Outcome::Fail,
                "the server does not know this token (or it was revoked)",
                Some(fix_token),
            )
        }
        Err(e) => return check("token", Outcome::Fail, format!("cannot ask the server: {e}"), None),
    };
    let project = global.project.as_deref();
    match (who.admin, who.project.as_deref(), project) {
        (true, _, _) => check(
            "token",
            Outcome::Warn,
            "the admin token: it reaches every project",
            Some("give mounts a project token (`contextfs token create`), keep the admin token for admin work"),
        ),
        (false, _, None) => check(
            "token",
            Outcome::Fail,
            "no project chosen",
            Some("pass --project NAME or set CONTEXTFS_PROJECT"),
        ),
        (false, Some(scope), Some(wanted)) if scope != wanted => check(
            "token",
            Outcome::Fail,
            format!("the token is for project {scope}, not {wanted}"),
            Some(fix_token),
        ),
        (false, _, Some(wanted)) if who.access == crate::api::Access::Read => check(
            "token",
            Outcome::Warn,
            format!("read-only token for project {wanted}: writes in a mount will fail"),
            Some("use a read-write token, or mount with --read-only"),
        ),
        (false, _, Some(wanted)) => check(
            "token",
            Outcome::Ok,
            format!("read-write token for project {wanted}"),
            None,
        ),
    }
}

/// The nearest existing folder at or above `path` (what statvfs can ask).
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

fn free_space(name: &'static str, path: &Path, min_free: u64) -> Check {
    let Some(existing) = existing_ancestor(path) else {
        return check(
            name,
            Outcome::Warn,
            format!("{}: no folder above it exists", path.display()),
            None,
        );
    };
    let Ok(c_path) = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()) else {
        return check(
            name,
            Outcome::Warn,
            format!("{}: not a usable path", path.display()),
            None,
        );
    };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        let e = std::io::Error::last_os_error();
        return check(
            name,
            Outcome::Warn,
            format!("cannot ask {} for free space: {e}", existing.display()),
            None,
        );
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    let detail = format!("{} free at {}", super::ops::human_bytes(free), path.display());
    if free < min_free {
        check(
            name,
            Outcome::Fail,
            format!("only {detail} (needs {})", super::ops::human_bytes(min_free)),
            Some("free space there, or move it (--cache-dir, XDG_CACHE_HOME / XDG_STATE_HOME)"),
        )
    } else {
        check(name, Outcome::Ok, detail, None)
    }
}

/// Mount points of contextfs FUSE mounts, from /proc/self/mountinfo.
fn contextfs_mounts(mountinfo: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string(mountinfo).unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mut fields = after.split_whitespace();
            let (fstype, source) = (fields.next()?, fields.next().unwrap_or(""));
            let mountpoint = before.split_whitespace().nth(4)?;
            // Mounted as root the type is plain `fuse`; the source names us (`contextfs:PROJECT`).
            let ours = fstype == "fuse.contextfs" || (fstype.starts_with("fuse") && source.starts_with("contextfs:"));
            ours.then(|| PathBuf::from(unescape_mountinfo(mountpoint)))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mountinfo(raw: &str) -> String {
    raw.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A mount whose process died answers every call with ENOTCONN.
fn is_dead(mountpoint: &Path) -> bool {
    matches!(std::fs::metadata(mountpoint), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

fn mounts(args: &DoctorArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let mounted = contextfs_mounts(&args.mountinfo);
    for dead in mounted.iter().filter(|m| is_dead(m)) {
        checks.push(Check {
            name: "mounts",
            outcome: Outcome::Fail,
            detail: format!("{} is a dead contextfs mount (its process is gone)", dead.display()),
            fix: Some(format!(
                "fusermount3 -u -z {} (then mount again; its journal is replayed)",
                dead.display()
            )),
        });
    }
    if let Some(mountpoint) = &args.mountpoint {
        let shown = mountpoint.display();
        let canonical = crate::mount::canonical_mountpoint(mountpoint).unwrap_or_else(|_| mountpoint.clone());
        let here = mounted.iter().any(|m| *m == canonical || m == mountpoint);
        if here && is_dead(mountpoint) {
            // Reported above.
        } else if here {
            let socket = crate::mount::socket_path(&canonical);
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                checks.push(check(
                    "mountpoint",
                    Outcome::Ok,
                    format!("{shown} is a live contextfs mount"),
                    None,
                ));
            } else {
                checks.push(check(
                    "mountpoint",
                    Outcome::Warn,
                    format!("{shown} is mounted but its control socket does not answer"),
                    Some("`contextfs status` cannot reach it; if it hangs, `fusermount3 -u -z` it and mount again"),
                ));
            }
        } else if is_dead(mountpoint) {
            checks.push(Check {
                name: "mountpoint",
                outcome: Outcome::Fail,
                detail: format!("{shown} is a dead mount"),
                fix: Some(format!("fusermount3 -u -z {shown}")),
            });
        } else {
            match std::fs::read_dir(mountpoint).map(|mut entries| entries.next().is_some()) {
                Ok(true) => checks.push(check(
                    "mountpoint",
                    Outcome::Warn,
                    format!("{shown} is not empty: a mount would hide what is there"),
                    Some("mount on an empty folder"),
                )),
                Ok(false) => checks.push(check(
                    "mountpoint",
                    Outcome::Ok,
                    format!("{shown} is free for a mount"),
                    None,
                )),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => checks.push(check(
                    "mountpoint",
                    Outcome::Ok,
                    format!("{shown} does not exist yet (mount creates it)"),
                    None,
                )),
                Err(e) => checks.push(check(
                    "mountpoint",
                    Outcome::Fail,
                    format!("{shown}: {e}"),
                    Some("pick a folder this user may read"),
                )),
            }
        }
    }
    if checks.is_empty() {
        checks.push(check(
            "mounts",
            Outcome::Ok,
            format!("{} contextfs mount(s), none dead", mounted.len()),
            None,
        ));
    }
    checks
}

fn answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

fn docker(args: &DoctorArgs) -> Vec<Check> {
    let used = args.docker || on_path("docker").is_some();
    if !used {
        return vec![check("docker", Outcome::Info, "docker is not installed; skipped", None)];
    }
    let missing = if args.docker { Outcome::Fail } else { Outcome::Warn };
    let mut checks = vec![if answers(&args.docker_socket) {
        check(
            "docker",
            Outcome::Ok,
            format!("dockerd answers on {}", args.docker_socket.display()),
            None,
        )
    } else {
        check(
            "docker",
            missing,
            format!("dockerd does not answer on {}", args.docker_socket.display()),
            Some("start it: `systemctl start docker` (or `dockerd &`)"),
        )
    }];
    let plugin = &args.plugin_socket;
    checks.push(if answers(plugin) {
        check(
            "docker plugin",
            Outcome::Ok,
            format!("the contextfs volume plugin answers on {}", plugin.display()),
            None,
        )
    } else if plugin.exists() {
        check(
            "docker plugin",
            missing,
            format!("{} is left from a plugin that is not running", plugin.display()),
            Some("remove the socket and start `contextfs docker-plugin` again"),
        )
    } else {
        check(
            "docker plugin",
            Outcome::Info,
            "the contextfs volume plugin is not running (needed only for `docker volume create -d contextfs`)",
            Some("start `contextfs docker-plugin`"),
        )
    });
    checks
}

pub async fn run(global: &GlobalArgs, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let global = global.clone().with_saved_defaults()?;
    let root = is_root();
    let mut checks = vec![
        dev_fuse(&args),
        fusermount(root),
        allow_other(&args, root),
        passthrough(root),
    ];
    let server_checks = server(&global).await;
    let reachable = server_checks.first().is_some_and(|c| c.outcome != Outcome::Fail);
    checks.extend(server_checks);
    if reachable {
        checks.push(token_scope(&global).await);
    }
    let cache = args
        .cache_dir
        .clone()
        .unwrap_or_else(crate::cache::BlobCache::default_root);
    checks.push(free_space("cache space", &cache, args.min_free));
    checks.push(free_space("journal space", &crate::mount::state_root(), args.min_free));
    checks.extend(mounts(&args));
    checks.extend(docker(&args));

    let blocked = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if args.json {
        super::ops::print_json(&checks)?;
    } else {
        for c in &checks {
            let tag = match c.outcome {
                Outcome::Ok => "ok  ",
                Outcome::Info => "info",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
            };
            println!("{tag}  {:<13} {}", c.name, c.detail);
            if let (Some(fix), true) = (&c.fix, c.outcome != Outcome::Ok) {
                println!("      {:<13} fix: {fix}", "");
            }
        }
        if blocked > 0 {
            println!("{blocked} problem(s) block a mount");
        }
    }
    Ok(if blocked > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
