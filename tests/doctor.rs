//! `contextfs doctor`: each check is broken on purpose and must say FAIL (or
//! warn) with its fix, and the exit status must say whether a mount is
//! blocked. The checks read their inputs from hidden flags (`--dev-fuse`,
//! `--fuse-conf`, `--mountinfo`, the Docker sockets, `--min-free`) so one
//! check at a time can be broken without touching the machine; non-root
//! checks run the binary as `nobody`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use contextfs::api::Access;

const BIN: &str = env!("CARGO_BIN_EXE_contextfs");

/// Everything the doctor looks at, pointed at a healthy setup in `root`.
struct Setup {
    root: tempfile::TempDir,
    server: String,
    token: String,
    project: String,
}

impl Setup {
    fn new(server: &TestServer, token: &str, project: &str) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::write(root.path().join("mountinfo"), "").expect("empty mountinfo");
        Self {
            root,
            server: server.base.clone(),
            token: token.to_string(),
            project: project.to_string(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.root.path().join(name).display().to_string()
    }

    /// `contextfs doctor` with the healthy defaults, then `extra` (later flags win).
    fn command(&self, extra: &[&str]) -> Command {
        let env = ClientEnv {
            root: self.root.path(),
            server: &self.server,
            token: &self.token,
            project: &self.project,
        };
        let mut c = isolated_command(BIN, &env);
        c.arg("doctor")
            .args(["--mountinfo", &self.path("mountinfo")])
            .args(["--plugin-socket", &self.path("no-plugin.sock")])
            .args(["--cache-dir", &self.path("cache")])
            .args(extra);
        c
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.command(extra).output().expect("run contextfs doctor")
    }
}

/// Every line of check `name` (its outcome tag first), each with the fix below it.
fn lines_of(out: &Output, name: &str) -> Vec<String> {
    let text = stdout(out);
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        if line.get(6..19).is_none_or(|field| field.trim_end() != name) {
            continue;
        }
        let mut entry = line.to_string();
        if let Some(next) = lines.get(at + 1).filter(|l| l.trim_start().starts_with("fix:")) {
            entry.push('\n');
            entry.push_str(next);
        }
        found.push(entry);
    }
    assert!(!found.is_empty(), "no `{name}` check in:\n{text}");
    found
}

/// The (first) line of check `name` and the fix below it.
fn line_of(out: &Output, name: &str) -> String {
    lines_of(out, name).remove(0)
}

fn assert_fails(out: &Output, name: &str, says: &str, fix: &str) {
    // A check may report several findings (every dead mount on the machine):
    // the one about this test's subject is the one that must be there.
    let all = lines_of(out, name);
    let line = all
        .iter()
        .find(|l| l.contains(&format!("fix: {fix}")))
        .or(all.first())
        .cloned()
        .unwrap_or_default();
    assert!(line.starts_with("FAIL"), "{name} should fail:\n{}", both(out));
    assert!(line.contains(says), "{name} should say {says:?}:\n{line}");
    assert!(
        line.contains(&format!("fix: {fix}")),
        "{name} should suggest {fix:?}:\n{line}"
    );
    assert_eq!(out.status.code(), Some(1), "a blocking problem exits 1:\n{}", both(out));
}

async fn healthy() -> (TestServer, String) {
    let server = TestServer::start().await;
    let token = server.project_with_token("doc").await;
    (server, token)
}

/// Runs `contextfs doctor` (healthy defaults, then `extra`) as the user
/// `nobody`, with PATH as given; `None` where that is impossible.
fn as_nobody(setup: &Setup, path_env: &str, extra: &[&str]) -> Option<Output> {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let probe = Command::new(setpriv)
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "true"])
        .output()
        .ok()?;
    if !probe.status.success() {
        eprintln!("cannot run as nobody here: the non-root checks are skipped");
        return None;
    }
    // nobody must reach the setup's files.
    let _ = Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(setup.root.path())
        .status();
    let home = setup.root.path();
    let out = Command::new(setpriv)
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", BIN, "doctor"])
        .args(["--mountinfo", &setup.path("mountinfo")])
        .args(["--plugin-socket", &setup.path("no-plugin.sock")])
        .args(["--cache-dir", &setup.path("cache")])
        .args(extra)
        .env_clear()
        .env("PATH", path_env)
        .env("HOME", home.join("home"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("CONTEXTFS_SERVER", &setup.server)
        .env("CONTEXTFS_TOKEN", &setup.token)
        .env("CONTEXTFS_PROJECT", &setup.project)
        .output()
        .expect("run doctor as nobody");
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_working_setup_and_prints_json() {
    let (server, token) = healthy().await;
    let setup = Setup::new(&server, &token, "doc");
    let out = setup.run(&[&setup.path("ws")]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    for name in [
        "fuse device",
        "server",
        "clock",
        "token",
        "cache space",
        "journal space",
        "mountpoint",
    ] {
        assert!(line_of(&out, name).starts_with("ok"), "{name}:\n{}", both(&out));
    }
    assert!(line_of(&out, "passthrough").len() > 6);
    let json: Vec<serde_json::Value> =
        serde_json::from_slice(&setup.run(&["--json"]).stdout).expect("doctor --json is a list of checks");
    assert!(json
        .iter()
        .all(|c| c["name"].is_string() && c["outcome"].is_string() && c["detail"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_without_a_usable_fuse_device() {
    let (server, token) = healthy().await;
    let setup = Setup::new(&server, &token, "doc");
    let out = setup.run(&["--dev-fuse", &setup.path("missing-fuse")]);
    assert_fails(&out, "fuse device", "is missing", "load FUSE (`modprobe fuse`)");
    std::fs::write(setup.path("plain-file"), b"").expect("file");
    let out = setup.run(&["--dev-fuse", &setup.path("plain-file")]);
    assert_fails(&out, "fuse device", "is not a character device", "load FUSE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_for_a_non_root_user_without_fusermount3_or_user_allow_other() {
    let (server, token) = healthy().await;
    let setup = Setup::new(&server, &token, "doc");
    std::fs::write(setup.path("fuse.conf"), "# mount_max = 1000\n").expect("fuse.conf");
    let conf = setup.path("fuse.conf");
    let empty_path = setup.path("empty-bin");
    std::fs::create_dir_all(&empty_path).expect("dir");
    let Some(out) = as_nobody(&setup, &empty_path, &["--allow-other", "--fuse-conf", &conf]) else {
        return;
    };
    assert_fails(&out, "fusermount3", "not installed", "apt-get install fuse3");
    assert_fails(
        &out,
        "allow_other",
        "needs user_allow_other",
        &format!("add the line `user_allow_other` to {conf}"),
    );

    std::fs::write(&conf, "user_allow_other\n").expect("fix fuse.conf");
    let system_path = std::env::var("PATH").unwrap_or_default();
    let fixed = as_nobody(&setup, &system_path, &["--allow-other", "--fuse-conf", &conf]).expect("nobody");
    assert!(line_of(&fixed, "allow_other").starts_with("ok"), "{}", both(&fixed));
    assert!(line_of(&fixed, "fusermount3").starts_with("ok"), "{}", both(&fixed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_when_the_server_is_unreachable_or_the_token_does_not_fit() {
    let (server, token) = healthy().await;
    let mut setup = Setup::new(&server, &token, "doc");

    setup.server = "http://127.0.0.1:1".to_string();
    let out = setup.run(&[]);
    assert_fails(&out, "server", "is unreachable", "start `contextfs serve` there");
    setup.server = server.base.clone();

    setup.token = "cfs_not_a_token".to_string();
    assert_fails(
        &setup.run(&[]),
        "token",
        "does not know this token",
        "set CONTEXTFS_TOKEN",
    );

    server.create_project("other").await;
    setup.token = server.token("other", Access::ReadWrite).await.token;
    assert_fails(
        &setup.run(&[]),
        "token",
        "is for project other, not doc",
        "set CONTEXTFS_TOKEN",
    );

    setup.token = server.token("doc", Access::Read).await.token;
    let out = setup.run(&[]);
    assert!(line_of(&out, "token").starts_with("warn"), "{}", both(&out));
    assert!(
        line_of(&out, "token").contains("mount with --read-only"),
        "{}",
        both(&out)
    );
    assert_eq!(out.status.code(), Some(0), "a read-only token does not block a mount");
}

/// A server whose clock is a day off: the doctor warns with the skew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_warns_about_clock_skew() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let body = format!(r#"{{"status":"ok","version":"{}"}}"#, env!("CARGO_PKG_VERSION"));
                let date = (chrono::Utc::now() - chrono::Duration::days(1))
                    .to_rfc2822()
                    .replace("+0000", "GMT");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nDate: {date}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    let (server, token) = healthy().await;
    let mut setup = Setup::new(&server, &token, "doc");
    setup.server = format!("http://{addr}");
    let out = setup.run(&[]);
    let clock = line_of(&out, "clock");
    assert!(
        clock.starts_with("warn") && clock.contains("s off the server's"),
        "{}",
        both(&out)
    );
    assert!(clock.contains("fix: sync the clocks"), "{clock}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_when_the_cache_or_journal_has_no_room() {
    let (server, token) = healthy().await;
    let setup = Setup::new(&server, &token, "doc");
    // Asks for more room than any disk has: both folders are short of it.
    let out = setup.run(&["--min-free", "1125899906842624"]);
    assert_fails(&out, "cache space", "only", "free space there");
    assert_fails(&out, "journal space", "only", "free space there");
}

/// A mount whose process was killed leaves a dead mount point (ENOTCONN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_a_dead_mount() {
    require_fuse();
    let (server, token) = healthy().await;
    let setup = Setup::new(&server, &token, "doc");
    let ws = setup.root.path().join("ws");
    let ws_arg = ws.display().to_string();
    let env = ClientEnv {
        root: setup.root.path(),
        server: &setup.server,
        token: &setup.token,
        project: &setup.project,
    };
    let mounted = isolated_command(BIN, &env)
        .args(["mount", "--daemon", &ws_arg])
        .output()
        .expect("mount");
    let mut guard = MountGuard {
        dir: ws_arg.clone(),
        pid: None,
    };
    assert!(mounted.status.success(), "{}", both(&mounted));
    let status = isolated_command(BIN, &env)
        .args(["status", "--json", &ws_arg])
        .output()
        .expect("status");
    assert!(status.status.success(), "{}", both(&status));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(report["project"], "doc");
    assert_eq!(report["queue_depth"], 0);
    let pid = report["pid"].as_u64().expect("pid in status --json");
    guard.pid = Some(pid);
    std::fs::copy("/proc/self/mountinfo", setup.path("mountinfo")).expect("mountinfo");

    let alive = setup.run(&[&ws_arg]);
    assert!(line_of(&alive, "mountpoint").starts_with("ok"), "{}", both(&alive));

    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill -9");
    common::eventually("the mount is dead", || async {
        match std::fs::metadata(&ws) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let out = setup.run(&[&ws_arg]);
    assert_fails(
        &out,
        "mounts",
        "is a dead contextfs mount",
        &format!("fusermount3 -u -z {ws_arg}"),
    );
    let fixed = Command::new("fusermount3").args(["-u", "-z", &ws_arg]).status();
    assert!(fixed.is_ok_and(|s| s.success()), "the suggested fix works");
    assert!(std::fs::metadata(&ws).is_ok(), "the mount point is usable again");
    drop(guard);
}

/// Leaves no mount behind, even when the test fails halfway.
struct MountGuard {
    dir: String,
    pid: Option<u64>,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = Command::new("fusermount3").args(["-u", "-z", &self.dir]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_dockerd_and_the_plugin_socket_when_docker_is_used() {
    let (server, token) = healthy().await;
    let setup = Setup::new(&server, &token, "doc");
    let out = setup.run(&["--docker", "--docker-socket", &setup.path("no-docker.sock")]);
    assert_fails(&out, "docker", "dockerd does not answer", "start it");

    // A live dockerd stand-in, and a plugin socket nobody serves any more.
    let docker = std::os::unix::net::UnixListener::bind(setup.path("docker.sock")).expect("bind");
    let stale = setup.path("stale-plugin.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind plugin"));
    let out = setup.run(&[
        "--docker",
        "--docker-socket",
        &setup.path("docker.sock"),
        "--plugin-socket",
        &stale,
    ]);
    assert!(line_of(&out, "docker").starts_with("ok"), "{}", both(&out));
    assert_fails(
        &out,
        "docker plugin",
        "is left from a plugin that is not running",
        "remove the socket",
    );
    drop(docker);
}
