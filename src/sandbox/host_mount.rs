//! Host mounts managed on behalf of containers: where each one lives
//! ([`Layout`]), starting, flushing and stopping it over its control socket,
//! the shared bind mount that lets a restarted mount reach running
//! containers, and the leases that let several containers share one mount
//! ([`Lease`]).
//!
//! One mount per (server, project, agent id): every commit carries the agent
//! id of the mount that sent it, so a mount shared by two agents could not
//! tell their writes apart. Mounts of one machine share the blob cache, so
//! twenty agents reading the same files keep one copy on disk.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::{docker, slug};
use crate::mount::control::{self, Message, MountReport};
use crate::mount::{self as runtime};

/// What a host mount serves and as whom.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub server: String,
    pub token: String,
    pub project: String,
    /// Recorded with every commit this mount sends.
    pub agent_id: String,
    /// The shared blob cache (default: the mount's own default).
    pub cache_dir: Option<PathBuf>,
    pub cache_size: Option<u64>,
}

/// A short stable hash for names.
fn short_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..10].to_string()
}

/// Where `contextfs run` keeps the mount of (server, project, agent):
///
/// ```text
/// STATE/run/<project>/<agent>-<hash>/        a bind mount of itself, shared propagation
/// STATE/run/<project>/<agent>-<hash>/ws      the FUSE mount point
/// STATE/run/<project>/<agent>-<hash>.users   flock: shared while a run uses the mount
/// STATE/run/<project>/<agent>-<hash>.setup   flock: held while a run starts or stops it
/// ```
///
/// Containers bind the parent (not the mount point) with `rslave`
/// propagation, so a restarted mount shows up in running containers instead
/// of leaving them a dead (ENOTCONN) copy.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The shared parent that containers bind.
    pub root: PathBuf,
    /// The FUSE mount point, `root/ws`.
    pub ws: PathBuf,
    users: PathBuf,
    setup: PathBuf,
}

/// Name of the mount point inside [`Layout::root`].
pub const WS_DIR: &str = "ws";

impl Layout {
    pub fn for_agent(server: &str, project: &str, agent: &str) -> Layout {
        let base = runtime::state_root().join("run").join(slug(project, 64));
        let key = format!("{}|{project}|{agent}", server.trim_end_matches('/'));
        let name = format!("{}-{}", slug(agent, 48), short_hash(&key));
        Layout::at(&base, &name)
    }

    /// `dir/name` as the root, with its lock files beside it. `dir` is
    /// created and made canonical (mounts and their control sockets are
    /// keyed by the canonical mount point).
    pub fn at(dir: &Path, name: &str) -> Layout {
        let _ = std::fs::create_dir_all(dir);
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let root = dir.join(name);
        Layout {
            ws: root.join(WS_DIR),
            users: dir.join(format!("{name}.users")),
            setup: dir.join(format!("{name}.setup")),
            root,
        }
    }
}

fn lock_file(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// flock(2); `Ok(false)` when `nonblocking` and someone else holds it.
fn flock(file: &File, operation: libc::c_int, nonblocking: bool) -> anyhow::Result<bool> {
    let op = if nonblocking {
        operation | libc::LOCK_NB
    } else {
        operation
    };
    loop {
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if nonblocking => return Ok(false),
            _ => return Err(anyhow!("flock: {e}")),
        }
    }
}

/// One line of /proc/self/mountinfo for a mount point: is it shared?
struct MountEntry {
    shared: bool,
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let n = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The topmost mount at exactly `path`, if `path` is a mount point.
fn mount_entry(path: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = path.display().to_string();
    let mut found = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 7 || unescape_mountinfo(fields[4]) != wanted {
            continue;
        }
        let optional = fields[6..].iter().take_while(|f| **f != "-");
        let shared = optional.clone().any(|f| f.starts_with("shared:"));
        // Later lines are mounted on top of earlier ones.
        found = Some(MountEntry { shared });
    }
    found
}

fn cstring(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Makes `dir` a bind mount of itself with shared propagation, so mounts
/// made below it later reach containers that bound it with `rslave`.
/// `Ok(false)` when this process may not (not root): containers then see
/// the mount but not a restart of it.
pub fn make_shared_dir(dir: &Path) -> anyhow::Result<bool> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let c = cstring(&dir)?;
    let entry = mount_entry(&dir);
    if entry.is_none() {
        // SAFETY: valid NUL-terminated paths; a bind of a directory onto itself.
        let rc = unsafe {
            libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                return Ok(false);
            }
            bail!("cannot bind {} onto itself: {e}", dir.display());
        }
    }
    if !entry.is_some_and(|e| e.shared) {
        // SAFETY: as above; only changes the propagation type.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                return Ok(false);
            }
            bail!("cannot make {} a shared mount: {e}", dir.display());
        }
    }
    Ok(true)
}

/// Is `dir` a shared mount point (as [`make_shared_dir`] leaves it)?
pub fn is_shared_mount(dir: &Path) -> bool {
    mount_entry(dir).is_some_and(|e| e.shared)
}

/// Removes what [`make_shared_dir`] set up (after the FUSE mount is gone).
fn remove_shared_dir(layout: &Layout) {
    if runtime::is_mounted(&layout.ws) {
        // A stale FUSE mount (its process died) still sits there: its journal
        // waits for the next mount of the same agent, which detaches it.
        return;
    }
    if mount_entry(&layout.root).is_some() {
        if let Ok(c) = cstring(&layout.root) {
            // SAFETY: a valid path; MNT_DETACH only detaches.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _ = std::fs::remove_dir(&layout.ws);
    let _ = std::fs::remove_dir(&layout.root);
}

/// The running mount at `ws`, if any.
pub fn mount_status(ws: &Path) -> Option<MountReport> {
    match control::request(&runtime::socket_path(ws), "status") {
        Ok(Message::Status(r)) => Some(r),
        _ => None,
    }
}

/// Mounts `spec` at `ws` (allow_other, in the background) unless a mount of
/// the same server and project already runs there. Returns whether one was
/// reused.
pub fn ensure_mount(ws: &Path, spec: &MountSpec) -> anyhow::Result<bool> {
    if let Some(r) = mount_status(ws) {
        if r.info.project != spec.project || r.info.server.trim_end_matches('/') != spec.server.trim_end_matches('/') {
            bail!(
                "{} is already mounted for project {} on {}, not {} on {}",
                ws.display(),
                r.info.project,
                r.info.server,
                spec.project,
                spec.server
            );
        }
        return Ok(true);
    }
    if let Some(parent) = ws.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let exe = std::env::current_exe().context("cannot find the contextfs executable")?;
    let mut command = Command::new(exe);
    command.args(["mount", "--daemon", "--allow-other"]);
    if let Some(dir) = &spec.cache_dir {
        command.arg("--cache-dir").arg(dir);
    }
    if let Some(size) = spec.cache_size {
        command.arg("--cache-size").arg(size.to_string());
    }
    command
        .arg(ws)
        // Secrets travel in the environment, never on a command line.
        .env("CONTEXTFS_SERVER", &spec.server)
        .env("CONTEXTFS_TOKEN", &spec.token)
        .env("CONTEXTFS_PROJECT", &spec.project)
        .env("CONTEXTFS_AGENT_ID", &spec.agent_id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = command.output().context("cannot start `contextfs mount`")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim().trim_start_matches("error: ");
        bail!("cannot mount project {} at {}: {stderr}", spec.project, ws.display());
    }
    Ok(false)
}

/// Commits what the mount at `ws` has queued (waiting for an unreachable
/// server as long as `umount` would) and reports the changes acknowledged
/// since `since_ms`. Progress lines go to `progress`.
pub fn flush(ws: &Path, since_ms: i64, progress: impl FnMut(&str)) -> anyhow::Result<MountReport> {
    let mut progress = progress;
    let answer = control::flush(&runtime::socket_path(ws), since_ms, |m| {
        if let Message::Progress(line) = m {
            progress(line);
        }
    });
    match answer {
        Ok(Message::Done(r)) => Ok(r),
        Ok(Message::Error(e)) => bail!("the mount at {} refused to flush: {e}", ws.display()),
        Ok(other) => bail!("unexpected answer from the mount at {}: {other:?}", ws.display()),
        Err(e) => bail!(
            "the mount at {} is not running ({e}); whatever it journaled is committed by the next mount there",
            ws.display()
        ),
    }
}

/// Stops the mount at `ws` the way `contextfs umount` does (commit, report,
/// unmount) and waits for its process to exit.
pub fn unmount(ws: &Path) -> anyhow::Result<MountReport> {
    match control::request(&runtime::socket_path(ws), "umount") {
        Ok(Message::Done(r)) => {
            wait_for_exit(r.info.pid, Duration::from_secs(10));
            Ok(r)
        }
        Ok(Message::Error(e)) => bail!("{e}"),
        Ok(other) => bail!("unexpected answer from the mount at {}: {other:?}", ws.display()),
        Err(e) if runtime::is_mounted(ws) => {
            runtime::detach_stale(ws)?;
            bail!(
                "the contextfs process serving {} was gone ({e}); detached the mount. \
                 Its journal is committed by the next mount there",
                ws.display()
            )
        }
        Err(_) => bail!("nothing is mounted at {}", ws.display()),
    }
}

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

/// A container's claim on a shared host mount. While any lease is held the
/// mount stays; the last one to finish unmounts it (unless changes are still
/// queued: then the mount keeps retrying in the background and a later
/// `contextfs run` removes it once its journal is empty).
pub struct Lease {
    pub layout: Layout,
    pub spec: MountSpec,
    /// Whether a running mount was reused rather than started.
    pub reused: bool,
    /// Whether the parent is a shared mount (restarts reach containers).
    pub propagates: bool,
    users: Option<File>,
}

impl Lease {
    /// Takes a lease on the mount of `spec` at `layout`, starting it if needed.
    pub fn acquire(layout: Layout, spec: MountSpec) -> anyhow::Result<Lease> {
        let users = lock_file(&layout.users)?;
        flock(&users, libc::LOCK_SH, false)?;
        let setup = lock_file(&layout.setup)?;
        flock(&setup, libc::LOCK_EX, false)?;
        let propagates = make_shared_dir(&layout.root)?;
        if !propagates {
            tracing::warn!(dir = %layout.root.display(), "not allowed to make a shared bind mount (not root?): containers will not see a restart of the mount");
        }
        let reused = ensure_mount(&layout.ws, &spec)?;
        drop(setup);
        Ok(Lease {
            layout,
            spec,
            reused,
            propagates,
            users: Some(users),
        })
    }

    /// Gives the lease back. When nobody else holds one and `keep` is false,
    /// unmounts (which commits what is left) and returns the umount report.
    pub fn release(mut self, keep: bool) -> anyhow::Result<Option<MountReport>> {
        drop(self.users.take());
        let setup = lock_file(&self.layout.setup)?;
        flock(&setup, libc::LOCK_EX, false)?;
        let users = lock_file(&self.layout.users)?;
        if keep || !flock(&users, libc::LOCK_EX, true)? || in_use_by_containers(&self.layout) {
            return Ok(None);
        }
        let report = match mount_status(&self.layout.ws) {
            Some(_) => Some(unmount(&self.layout.ws)?),
            None => None,
        };
        remove_shared_dir(&self.layout);
        Ok(report)
    }
}

/// Whether containers still run on this mount although no `contextfs run`
/// holds a lease (one was killed): then it must stay. Unknown counts as yes.
fn in_use_by_containers(layout: &Layout) -> bool {
    docker::containers_using(&layout.root).is_none_or(|n| n > 0)
}

/// Unmounts managed mounts nobody uses any more whose journal is empty
/// (left running because the server was unreachable when their last run
/// ended). Best effort; never fails.
pub fn collect_idle_mounts() {
    let base = runtime::state_root().join("run");
    let Ok(projects) = std::fs::read_dir(&base) else { return };
    for project in projects.flatten() {
        let Ok(entries) = std::fs::read_dir(project.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".users") else {
                continue;
            };
            let layout = Layout::at(&project.path(), stem);
            let (Ok(users), Ok(setup)) = (lock_file(&layout.users), lock_file(&layout.setup)) else {
                continue;
            };
            if !matches!(flock(&setup, libc::LOCK_EX, true), Ok(true))
                || !matches!(flock(&users, libc::LOCK_EX, true), Ok(true))
            {
                continue;
            }
            match mount_status(&layout.ws) {
                Some(r) if r.queued.is_empty() && r.pending.is_empty() && !in_use_by_containers(&layout) => {
                    if let Err(e) = unmount(&layout.ws) {
                        tracing::warn!(ws = %layout.ws.display(), error = %e, "cannot unmount an idle mount");
                        continue;
                    }
                    remove_shared_dir(&layout);
                }
                Some(_) => continue,
                None => remove_shared_dir(&layout),
            }
            // The lock files stay: removing one while another run waits on
            // it would let two runs lock different files.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn layouts_differ_per_agent_and_server() {
        let a = Layout::for_agent("http://h:1", "p", "a");
        let b = Layout::for_agent("http://h:1", "p", "b");
        let c = Layout::for_agent("http://h:2", "p", "a");
        assert_ne!(a.root, b.root);
        assert_ne!(a.root, c.root);
        assert_eq!(a.ws, a.root.join("ws"));
    }
}
