//! `contextfs run`: a Docker container with the project at `/workspace` and
//! the published skills at `/skills`.
//!
//! The project is served by a FUSE mount on the host, one per (server,
//! project, agent id) so every commit carries the writing agent's id; the
//! mounts share the machine's blob cache. A run:
//!
//! 1. checks FUSE, the Docker engine and the image, with errors that say what
//!    to do;
//! 2. takes a [`Lease`] on the agent's mount, starting it (`contextfs mount
//!    --daemon --allow-other`) unless a run of the same agent already did;
//! 3. creates the container with the mount's parent bound at
//!    `/mnt/contextfs` with `rslave` propagation, and `/workspace` →
//!    `/mnt/contextfs/ws`, `/skills` → `/mnt/contextfs/ws/skills` as
//!    symlinks in the container's own layer. Binding the FUSE mount point
//!    itself would leave the container a dead copy (ENOTCONN) when the host
//!    mount restarts; through the shared parent the new mount appears in the
//!    running container;
//! 4. starts it attached (output streams through), waits for its exit code;
//! 5. asks the mount to commit everything now (`flush` on the control
//!    socket) and prints one line per file written since the run started;
//! 6. removes the container and gives the lease back: the last run of an
//!    agent unmounts, unless changes are still queued (server unreachable) —
//!    then the mount stays and keeps retrying, and the run exits non-zero
//!    naming the journal.

use std::io::{Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::host_mount::{self, collect_idle_mounts, Layout, Lease, MountSpec, WS_DIR};
use super::{check_fuse, slug};

/// Where the mount's shared parent appears inside the container.
pub const CONTAINER_MNT: &str = "/mnt/contextfs";
/// The workspace inside the container (a symlink into [`CONTAINER_MNT`]).
pub const WORKSPACE: &str = "/workspace";
/// The published skills inside the container (read-only: the mount refuses writes).
pub const SKILLS: &str = "/skills";
/// The Docker engine's socket when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The label naming the host mount a container uses (its shared parent).
pub const MOUNT_LABEL: &str = "contextfs.mount";

/// Whether a running container (of a `contextfs run` that was killed, say)
/// still uses the host mount whose shared parent is `root`. `None` when
/// Docker cannot be asked.
pub fn containers_using(root: &std::path::Path) -> Option<usize> {
    let filters = serde_json::json!({ "label": [format!("{MOUNT_LABEL}={}", root.display())] }).to_string();
    let target = format!(
        "/containers/json?filters={}",
        percent_encoding::utf8_percent_encode(&filters, percent_encoding::NON_ALPHANUMERIC)
    );
    match engine_request("GET", &target, "text/plain", b"") {
        Ok((200, body)) => serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .ok()
            .map(|v| v.len()),
        _ => None,
    }
}

/// Where to reach the server and as whom.
#[derive(Debug, Clone)]
pub struct Connection {
    pub server: String,
    pub token: String,
    pub project: String,
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub image: String,
    /// `UID[:GID]` or a user name of the image.
    pub user: Option<String>,
    /// Recorded with the container's commits [default: the container name].
    pub agent_id: Option<String>,
    /// `KEY=VALUE` pairs for the container.
    pub env: Vec<String>,
    /// Container name (default: `cfs-<project>-<random>`).
    pub name: Option<String>,
    /// Keep stdin open and attached.
    pub interactive: bool,
    pub command: Vec<String>,
    pub cache_dir: Option<std::path::PathBuf>,
    pub cache_size: Option<u64>,
}

fn docker() -> Command {
    Command::new("docker")
}

fn first_line(text: &str) -> &str {
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("")
}

/// Fails with how to start Docker when its engine does not answer (or the
/// `docker` command is missing).
pub fn check_engine() -> anyhow::Result<()> {
    let hint = "hint: start the Docker engine — `sudo systemctl start docker`, or `sudo dockerd &` where there is \
no systemd (in this repository `scripts/docker` starts one) — and check it with `docker info`";
    match engine_request("GET", "/_ping", "text/plain", b"") {
        Ok((200, _)) => {}
        Ok((status, body)) => bail!(
            "the Docker engine is not healthy ({status}: {})\n{hint}",
            first_line(&body)
        ),
        Err(e) => bail!("Docker is not running: {e:#}\n{hint}"),
    }
    match docker().arg("--version").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "`docker --version` failed: {}",
            first_line(&String::from_utf8_lossy(&out.stderr))
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the `docker` command is not installed.\nhint: install the Docker CLI (`sudo apt-get install docker.io`)"
        ),
        Err(e) => bail!("cannot run `docker`: {e}"),
    }
}

/// Fails, naming the image and how to build it, when `image` is not on this
/// host: `contextfs run` never pulls (there is no image registry to pull from).
pub fn check_image(image: &str) -> anyhow::Result<()> {
    let target = format!("/images/{}/json", encode(image));
    match engine_request("GET", &target, "text/plain", b"")? {
        (200, _) => Ok(()),
        (404, _) => bail!(
            "image {image} is not on this host, and contextfs run does not pull images (there is no image registry to pull from).\n\
hint: build it locally, e.g. from a root filesystem: `tar -C ROOTFS -c . | docker import - {image}` \
(scripts/docker builds contextfs-busybox:latest that way); `docker images` lists what is here"
        ),
        (status, body) => bail!("cannot inspect image {image} ({status}): {}", first_line(&body)),
    }
}

/// Percent-encodes what a Docker object name may contain that a URL path may not.
fn encode(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2F", "/")
        .replace("%3A", ":")
        .replace("%2E", ".")
        .replace("%2D", "-")
        .replace("%5F", "_")
}

/// Docker's container-name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

pub fn generated_name(project: &str) -> String {
    format!("cfs-{}-{}", slug(project, 32), hex::encode(rand::random::<[u8; 4]>()))
}

/// One `--mount` value; fields with commas or quotes are CSV-quoted.
fn mount_arg(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let field = if v.is_empty() {
                k.to_string()
            } else {
                format!("{k}={v}")
            };
            if field.contains(',') || field.contains('"') {
                format!("\"{}\"", field.replace('"', "\"\""))
            } else {
                field
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A tar archive of symlinks (`name` → `target`), for the engine's archive API.
pub fn symlink_tar(links: &[(&str, &str)]) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        let text = format!("{:0width$o}\0", value, width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    }
    let mut out = Vec::new();
    for (name, target) in links {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], 0o777);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], 0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        octal(&mut h[136..148], now);
        h[156] = b'2'; // symlink
        h[157..157 + target.len()].copy_from_slice(target.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| *b as u64).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        out.extend_from_slice(&h);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// One request to the Docker engine API (`DOCKER_HOST` or the default
/// socket); returns the status code and the body.
fn engine_request(method: &str, target: &str, content_type: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let mut stream: Box<dyn Stream> = if let Some(addr) = host.strip_prefix("tcp://") {
        Box::new(
            std::net::TcpStream::connect(addr.trim_end_matches('/'))
                .with_context(|| format!("cannot reach the Docker engine at {host}"))?,
        )
    } else {
        let path = host
            .strip_prefix("unix://")
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_DOCKER_SOCKET);
        let s = std::os::unix::net::UnixStream::connect(path)
            .with_context(|| format!("cannot reach the Docker engine at {path}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Box::new(s)
    };
    // HTTP/1.0: the engine then never answers with chunked encoding.
    let head = format!(
        "{method} {target} HTTP/1.0\r\nHost: docker\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("the Docker engine sent no HTTP status"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Replaces `/workspace` and `/skills` in a created container with symlinks
/// into the bound parent (an image's empty directories there are replaced).
fn install_links(container: &str) -> anyhow::Result<()> {
    let ws = format!("{CONTAINER_MNT}/{WS_DIR}");
    let skills = format!("{CONTAINER_MNT}/{WS_DIR}/skills");
    let tar = symlink_tar(&[
        (WORKSPACE.trim_start_matches('/'), ws.as_str()),
        (SKILLS.trim_start_matches('/'), skills.as_str()),
    ]);
    let target = format!("/containers/{container}/archive?path=%2F&noOverwriteDirNonDir=false");
    let (status, body) = engine_request("PUT", &target, "application/x-tar", &tar)?;
    if status != 200 {
        bail!(
            "cannot link {WORKSPACE} and {SKILLS} in the container ({status}): {}",
            first_line(&body)
        );
    }
    Ok(())
}

/// Removes the container when dropped.
struct Container {
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let target = format!("/containers/{}?force=1&v=1", encode(&self.name));
        if let Err(e) = engine_request("DELETE", &target, "text/plain", b"") {
            eprintln!("contextfs: could not remove container {}: {e:#}", self.name);
        }
    }
}

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// While alive, SIGINT/SIGTERM/SIGHUP do not kill this process (it still
/// has to commit and clean up); SIGTERM and SIGHUP are passed on to the
/// container (the docker CLI gets a terminal's SIGINT itself and forwards it).
struct SignalGuard {
    done: Arc<AtomicBool>,
    previous: Vec<(libc::c_int, libc::sighandler_t)>,
}

impl SignalGuard {
    fn install(container: String) -> SignalGuard {
        SIGNALLED.store(0, Ordering::SeqCst);
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        let previous = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
            .into_iter()
            // SAFETY: installs a handler that only stores to an atomic.
            .map(|sig| (sig, unsafe { libc::signal(sig, handler) }))
            .collect();
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let sig = SIGNALLED.swap(0, Ordering::SeqCst);
                if sig == libc::SIGTERM || sig == libc::SIGHUP {
                    let name = if sig == libc::SIGTERM { "TERM" } else { "HUP" };
                    let _ = docker()
                        .args(["kill", "--signal", name, &container])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        SignalGuard { done, previous }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        for (sig, previous) in &self.previous {
            // SAFETY: restores the disposition saved in `install`.
            unsafe { libc::signal(*sig, *previous) };
        }
    }
}

fn create_container(
    name: &str,
    agent: &str,
    conn: &Connection,
    opts: &RunOptions,
    layout: &Layout,
    propagates: bool,
) -> anyhow::Result<()> {
    let root = layout.root.display().to_string();
    let mut mount = vec![("type", "bind"), ("source", root.as_str()), ("target", CONTAINER_MNT)];
    if propagates {
        mount.push(("bind-propagation", "rslave"));
    }
    let mut cmd = docker();
    cmd.arg("create")
        .args(["--name", name])
        .args(["--label", &format!("contextfs.project={}", conn.project)])
        .args(["--label", &format!("contextfs.agent={agent}")])
        .args(["--label", &format!("{MOUNT_LABEL}={root}")])
        .args(["--mount", &mount_arg(&mount)])
        .args(["--workdir", WORKSPACE])
        .args(["--env", &format!("CONTEXTFS_AGENT_ID={agent}")])
        .args(["--env", &format!("CONTEXTFS_PROJECT={}", conn.project)]);
    for e in &opts.env {
        cmd.args(["--env", e]);
    }
    if let Some(user) = &opts.user {
        cmd.args(["--user", user]);
    }
    if opts.interactive {
        cmd.arg("--interactive");
    }
    cmd.arg(&opts.image).args(&opts.command);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("cannot run `docker create`")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut message = format!("docker could not create the container: {}", stderr.trim());
        if stderr.contains("already in use") {
            message.push_str("\nhint: pick another --name, or remove the old container with `docker rm -f NAME`");
        } else if stderr.to_ascii_lowercase().contains("no such image") || stderr.contains("pull access denied") {
            message.push_str(&format!(
                "\nhint: image {} must exist on this host (there is no registry): build it with `docker import`",
                opts.image
            ));
        }
        bail!(message);
    }
    Ok(())
}

/// Starts the created container attached; returns its exit code.
fn start_attached(name: &str, interactive: bool) -> anyhow::Result<i32> {
    let mut cmd = docker();
    cmd.args(["start", "--attach"]);
    if interactive {
        cmd.arg("--interactive");
    } else {
        cmd.stdin(Stdio::null());
    }
    let status = cmd.arg(name).status().context("cannot run `docker start`")?;
    let inspected = engine_request("GET", &format!("/containers/{}/json", encode(name)), "text/plain", b"")
        .ok()
        .filter(|(status, _)| *status == 200)
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
    let state = inspected.as_ref().map(|v| &v["State"]);
    let code = state.and_then(|s| s["ExitCode"].as_i64()).map(|c| c as i32);
    let error = state.and_then(|s| s["Error"].as_str()).unwrap_or_default().to_string();
    if !error.is_empty() {
        eprintln!("contextfs: the container failed: {error}");
    }
    Ok(match (status.success(), code) {
        (true, Some(c)) => c,
        (false, Some(c)) if c != 0 => c,
        _ => status.code().filter(|c| *c != 0).unwrap_or(125),
    })
}

/// `contextfs run`: see the module documentation.
pub fn run(conn: Connection, opts: RunOptions) -> anyhow::Result<ExitCode> {
    let started_ms = crate::server::store::now_millis();
    if opts.command.is_empty() {
        bail!("no command: put it after `--`, e.g. `contextfs run --image IMG -- sh -c 'ls /workspace'`");
    }
    if let Some(e) = opts.env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
        bail!("--env {e:?} is not KEY=VALUE");
    }
    check_fuse()?;
    check_engine()?;
    check_image(&opts.image)?;
    let name = opts.name.clone().unwrap_or_else(|| generated_name(&conn.project));
    if !valid_container_name(&name) {
        bail!(
            "{name:?} is not a valid container name (letters, digits, `_`, `.`, `-`; starting with a letter or digit)"
        );
    }
    let agent = opts.agent_id.clone().unwrap_or_else(|| name.clone());
    if agent.trim().is_empty() {
        bail!("--agent-id must not be empty");
    }
    collect_idle_mounts();
    let layout = Layout::for_agent(&conn.server, &conn.project, &agent);
    let spec = MountSpec {
        server: conn.server.clone(),
        token: conn.token.clone(),
        project: conn.project.clone(),
        agent_id: agent.clone(),
        cache_dir: opts.cache_dir.clone(),
        cache_size: opts.cache_size,
    };
    let lease = Lease::acquire(layout.clone(), spec)?;
    eprintln!(
        "contextfs: project {} {} at {} as agent {agent}",
        conn.project,
        if lease.reused { "already mounted" } else { "mounted" },
        layout.ws.display()
    );
    let outcome = (|| -> anyhow::Result<i32> {
        create_container(&name, &agent, &conn, &opts, &layout, lease.propagates)?;
        let container = Container { name: name.clone() };
        install_links(&name)?;
        let code = {
            let _signals = SignalGuard::install(name.clone());
            start_attached(&name, opts.interactive)?
        };
        drop(container);
        Ok(code)
    })();
    // Whatever happened to the container, what it wrote is committed now.
    let flushed = host_mount::flush(&layout.ws, started_ms, |line| eprintln!("contextfs: {line}"));
    let code = match outcome {
        Ok(code) => code,
        Err(e) => {
            let _ = lease.release(false);
            return Err(e);
        }
    };
    let report = match flushed {
        Ok(report) => report,
        Err(e) => {
            let _ = lease.release(true);
            eprintln!("contextfs: {e:#}");
            return Ok(exit_code(if code != 0 { code } else { 1 }));
        }
    };
    let rendered = report.render();
    if rendered.is_empty() {
        eprintln!("contextfs: container {name} exited with {code}; agent {agent} changed nothing");
    } else {
        eprintln!("contextfs: container {name} exited with {code}; changes of agent {agent}:");
        eprint!("{rendered}");
    }
    let queued = !report.queued.is_empty();
    if queued {
        eprintln!(
            "contextfs: nothing is lost — the journal at {} keeps these changes. The mount at {} stays up and commits them \
when the server is reachable again (`contextfs status {}` shows progress); `contextfs run --agent-id {agent} ...` \
or `contextfs mount {} --agent-id {agent}` also commits them.",
            report.info.journal,
            layout.ws.display(),
            layout.ws.display(),
            layout.ws.display()
        );
    }
    match lease.release(queued) {
        Ok(Some(final_report)) if !final_report.queued.is_empty() => {
            eprint!("{}", final_report.render());
            return Ok(exit_code(if code != 0 { code } else { 1 }));
        }
        Ok(_) => {}
        Err(e) => eprintln!("contextfs: could not unmount {}: {e:#}", layout.ws.display()),
    }
    Ok(exit_code(if code == 0 && queued { 1 } else { code }))
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names() {
        assert!(valid_container_name("cfs-p-0a1b"));
        assert!(valid_container_name("a.b_c-d"));
        assert!(!valid_container_name("-x"));
        assert!(!valid_container_name("a b"));
        assert!(!valid_container_name("x"));
        assert!(valid_container_name(&generated_name("my project/with slash")));
    }

    #[test]
    fn mount_args_quote_commas() {
        assert_eq!(
            mount_arg(&[("type", "bind"), ("source", "/a,b"), ("target", "/t")]),
            "type=bind,\"source=/a,b\",target=/t"
        );
    }

    #[test]
    fn symlink_tar_has_valid_headers() {
        let tar = symlink_tar(&[("workspace", "/mnt/contextfs/ws")]);
        assert_eq!(tar.len(), 512 + 1024);
        let h = &tar[..512];
        assert_eq!(&h[..9], b"workspace");
        assert_eq!(h[156], b'2');
        assert_eq!(&h[157..174], b"/mnt/contextfs/ws");
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|b| *b as u64).sum::<u64>());
    }
}
