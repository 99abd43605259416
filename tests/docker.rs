//! Integration tests of `contextfs run` and `contextfs docker-plugin`
//! against the real Docker engine (start it and build the test image with
//! `scripts/docker`; `scripts/test` does). Containers run as root and as a
//! non-root user, read and write /workspace through a real FUSE mount on
//! this host, and every change lands on a real `contextfs serve` with the
//! container's agent id.
//!
//! Every test starts its own server and its own state and cache dirs, so
//! the file runs with `--test-threads=N`. Only the volume plugin test uses a
//! fixed place (Docker discovers plugins at /run/docker/plugins/contextfs.sock).
//! Without Docker or FUSE the tests FAIL with what to do: a skipped test
//! proves nothing.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::docker_run::{require_docker, Sandbox, IMAGE};
use common::*;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_contextfs");
const PLUGIN_SOCKET: &str = "/run/docker/plugins/contextfs.sock";
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn suffix() -> String {
    hex::encode(rand::random::<[u8; 4]>())
}

/// Polls `probe` until it returns `Some`, failing after [`DEADLINE`].
async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(what: &str, mut probe: impl FnMut() -> Fut) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(started.elapsed() < DEADLINE, "{what}: not true after {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A project with a read-write token, `hello.md` and a published skill.
async fn project(s: &TestServer, name: &str) -> String {
    let token = s.project_with_token(name).await;
    s.commit(name, &token, "hello.md", None, b"hello from the api\n")
        .await
        .expect("put hello.md");
    let skills = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(skills.path().join("pdf")).unwrap();
    std::fs::write(
        skills.path().join("pdf/SKILL.md"),
        "---\nname: pdf\ndescription: PDF forms\n---\n# PDF skill\n",
    )
    .unwrap();
    s.publish_skills(skills.path());
    token
}

/// A server with project `p` (see [`project`]), its read-write token and
/// a sandbox that uses that token.
async fn server_with_sandbox(p: &str) -> (TestServer, String, Sandbox) {
    let s = TestServer::start().await;
    let token = project(&s, p).await;
    let sb = Sandbox::new(&s, p, &token);
    (s, token, sb)
}

/// The newest version of `path` carries `agent`'s id.
async fn assert_written_by(s: &TestServer, project: &str, token: &str, path: &str, agent: &str) {
    let newest = s
        .history(project, token, path)
        .await
        .first()
        .and_then(|v| v.agent_id.clone());
    assert_eq!(
        newest.as_deref(),
        Some(agent),
        "the agent id of {path}'s newest version"
    );
}

/// Waits until `path` is on the server (failing with `what` after
/// [`DEADLINE`]); its newest version.
async fn committed(s: &TestServer, project: &str, token: &str, path: &str, what: &str) -> Checkout {
    eventually(what, || async { s.read(project, token, path, None).await.ok() }).await
}

// ---------------------------------------------------------------------------
// contextfs run
// ---------------------------------------------------------------------------

/// What every container of the first test does: read, write, fail to write
/// skills, and exit with 7 (which `contextfs run` must pass on).
const WORK: &str = r#"
set -e
ls /workspace
cat /workspace/hello.md
cat /skills/pdf/SKILL.md
echo "written by $CONTEXTFS_AGENT_ID" > /workspace/out-$ROLE.md
mkdir -p /workspace/reports
echo report > /workspace/reports/$ROLE.md
if echo x > /skills/pdf/SKILL.md 2>/dev/null; then echo SKILLS-WRITABLE; exit 9; fi
if touch /skills/new.md 2>/dev/null; then echo SKILLS-WRITABLE; exit 9; fi
echo "uid=$(id -u)"
exit 7
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_root_and_as_a_user_reads_writes_and_commits_with_the_agent_id() {
    require_docker();
    let p = "runs";
    let (s, token, sb) = server_with_sandbox(p).await;
    let root_name = format!("cfs-test-root-{}", suffix());
    let user_agent = format!("agent-user-{}", suffix());
    let started = Instant::now();
    let (as_root, as_user) = tokio::join!(
        sb.run(&["--name", &root_name, "--env", "ROLE=root"], WORK),
        sb.run(
            &["--user", "1000:1000", "--agent-id", &user_agent, "-e", "ROLE=user"],
            WORK
        ),
    );
    eprintln!("two concurrent runs took {:?}", started.elapsed());
    for (out, uid) in [(&as_root, "0"), (&as_user, "1000")] {
        assert_eq!(
            out.status.code(),
            Some(7),
            "the container's exit code passes through: {}",
            both(out)
        );
        let text = stdout(out);
        assert!(
            text.contains("hello.md") && text.contains("skills"),
            "ls /workspace: {}",
            both(out)
        );
        assert!(text.contains("hello from the api"), "cat via the mount: {}", both(out));
        assert!(text.contains("# PDF skill"), "skills readable: {}", both(out));
        assert!(
            !text.contains("SKILLS-WRITABLE"),
            "/skills must be read-only: {}",
            both(out)
        );
        assert!(text.contains(&format!("uid={uid}")), "{}", both(out));
    }
    // Committed before `contextfs run` returned, each with its agent id; the
    // run listed them.
    for (out, role, agent) in [
        (&as_root, "root", root_name.as_str()),
        (&as_user, "user", user_agent.as_str()),
    ] {
        let err = stderr(out);
        assert!(
            err.contains(&format!("clean    out-{role}.md")),
            "per-file outcomes: {}",
            both(out)
        );
        assert!(
            err.contains(&format!("clean    reports/{role}.md")),
            "per-file outcomes: {}",
            both(out)
        );
        let path = format!("out-{role}.md");
        assert_eq!(
            s.read_bytes(p, &token, &path).await,
            format!("written by {agent}\n").into_bytes()
        );
        assert_written_by(&s, p, &token, &path, agent).await;
        assert_written_by(&s, p, &token, &format!("reports/{role}.md"), agent).await;
    }
    // `contextfs log` shows the agents too.
    let log = sb.cmd().args(["log", "out-user.md"]).output().await.unwrap();
    assert!(stdout(&log).contains(&user_agent), "{}", both(&log));
    // Each run was the last user of its agent's mount: nothing stays mounted.
    assert_eq!(sb.leftover_mounts(), Vec::<String>::new());
    let containers = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("name={root_name}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&containers).trim(), "", "the container is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_of_one_agent_share_its_mount_until_the_last_one_ends() {
    require_docker();
    let p = "sharing";
    let (s, token, sb) = server_with_sandbox(p).await;
    let agent = format!("shared-{}", suffix());
    let long = sb.run(
        &["--agent-id", &agent],
        "echo one > /workspace/long.md; while [ ! -e /workspace/short.md ]; do sleep 0.1; done; sleep 2; echo two >> /workspace/long.md",
    );
    let short = async {
        committed(&s, p, &token, "long.md", "the long run wrote long.md").await;
        let sockets = std::fs::read_dir(sb.state().join("contextfs/sockets")).unwrap().count();
        let out = sb
            .run(&["--agent-id", &agent], "echo short > /workspace/short.md")
            .await;
        (sockets, out)
    };
    let (long, (sockets_before, short)) = tokio::join!(long, short);
    assert!(short.status.success(), "{}", both(&short));
    assert!(
        stderr(&short).contains("already mounted"),
        "the second run reuses the agent's mount: {}",
        both(&short)
    );
    assert_eq!(sockets_before, 1, "one mount for the agent");
    // The short run ended first; the long one still wrote through the mount.
    assert!(long.status.success(), "{}", both(&long));
    assert!(stderr(&long).contains("clean    long.md"), "{}", both(&long));
    assert_eq!(s.read_bytes(p, &token, "long.md").await, b"one\ntwo\n");
    for path in ["long.md", "short.md"] {
        assert_written_by(&s, p, &token, path, agent.as_str()).await;
    }
    assert_eq!(sb.leftover_mounts(), Vec::<String>::new(), "the last run unmounted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_the_host_mount_shows_up_in_a_running_container() {
    require_docker();
    let p = "restart";
    let (s, token, sb) = server_with_sandbox(p).await;
    let agent = format!("restarter-{}", suffix());
    // The container checks in, waits for `go` (committed through the API
    // after the restart, so it arrives through the NEW mount), then lists
    // and writes through the new mount.
    let script = r#"
echo up > /workspace/started.md
while [ ! -e /workspace/go ]; do sleep 0.1; done
ls /workspace
cat /workspace/hello.md
echo after > /workspace/after.md
"#;
    let run = sb.spawn_run(&["--agent-id", &agent], script);
    committed(&s, p, &token, "started.md", "the container wrote started.md").await;
    let ws = sb.ws_of(&agent);
    let first_pid = sb.status_of(&ws).await;
    let umount = sb.cmd().arg("umount").arg(&ws).output().await.unwrap();
    assert!(umount.status.success(), "umount: {}", both(&umount));
    let mount = sb
        .cmd()
        .args(["mount", "--daemon", "--allow-other", "--agent-id", &agent])
        .arg(&ws)
        .output()
        .await
        .unwrap();
    assert!(mount.status.success(), "mount again: {}", both(&mount));
    let second_pid = sb.status_of(&ws).await;
    assert_ne!(first_pid, second_pid, "a new mount process serves the workspace");
    s.commit(p, &token, "go", None, b"").await.expect("put go");
    let out = tokio::time::timeout(Duration::from_secs(60), run.wait_with_output())
        .await
        .expect("the run finishes")
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let text = stdout(&out);
    assert!(
        text.contains("hello.md") && text.contains("started.md") && text.contains("go"),
        "ls /workspace after the restart: {}",
        both(&out)
    );
    assert!(text.contains("hello from the api"), "{}", both(&out));
    assert_eq!(s.read_bytes(p, &token, "after.md").await, b"after\n");
    assert_written_by(&s, p, &token, "after.md", agent.as_str()).await;
    assert!(stderr(&out).contains("clean    after.md"), "{}", both(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_server_stops_during_a_run() {
    require_docker();
    let p = "outage";
    let (mut s, token, sb) = server_with_sandbox(p).await;
    let agent = format!("offline-{}", suffix());
    let script =
        "echo up > /workspace/started.md; sleep 3; echo 'written while the server was down' > /workspace/queued.md";
    let run = sb.spawn_run(&["--agent-id", &agent], script);
    committed(&s, p, &token, "started.md", "the container wrote started.md").await;
    s.stop().await;
    let out = tokio::time::timeout(Duration::from_secs(90), run.wait_with_output())
        .await
        .expect("the run finishes")
        .unwrap();
    assert!(
        !out.status.success(),
        "the run must fail while changes are queued: {}",
        both(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("queued   queued.md"),
        "names the queued file: {}",
        both(&out)
    );
    assert!(err.contains("journal"), "names the journal: {}", both(&out));
    // The server comes back (same address: the mount and its journal know it
    // by URL); a later run of the same agent commits what was queued.
    s.restart_on_same_port().await;
    let later = sb.run(&["--agent-id", &agent], "cat /workspace/queued.md").await;
    assert!(later.status.success(), "{}", both(&later));
    assert_eq!(
        s.read_bytes(p, &token, "queued.md").await,
        b"written while the server was down\n"
    );
    assert_written_by(&s, p, &token, "queued.md", agent.as_str()).await;
    assert_eq!(sb.leftover_mounts(), Vec::<String>::new(), "the last run unmounted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_missing_pieces_fail_with_the_fix() {
    require_docker();
    let p = "errors";
    let (_server, _token, sb) = server_with_sandbox(p).await;

    // An image that is not here: no registry to pull from.
    let mut c = sb.cmd();
    let out = c
        .args(["run", "--image", "contextfs-no-such-image:1", "--", "true"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("contextfs-no-such-image:1") && err.contains("registry") && err.contains("docker import"),
        "{}",
        both(&out)
    );

    // Docker not running.
    let mut c = sb.cmd();
    let out = c
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["run", "--image", IMAGE, "--", "true"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Docker is not running") && err.contains("dockerd"),
        "{}",
        both(&out)
    );

    // No FUSE device: /dev/fuse replaced by a plain file in a private mount namespace.
    let fake = sb.home.path().join("not-fuse");
    std::fs::write(&fake, "").unwrap();
    let out = {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /dev/fuse && exec {BIN} run --image {IMAGE} -- true",
                fake.display()
            ))
            .env("CONTEXTFS_SERVER", &sb.server)
            .env("CONTEXTFS_TOKEN", &sb.token)
            .env("CONTEXTFS_PROJECT", &sb.project)
            .env("XDG_STATE_HOME", sb.state())
            .env("HOME", sb.home.path());
        c.output().await.expect("unshare")
    };
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("/dev/fuse") && err.contains("modprobe fuse") && err.contains("--device /dev/fuse"),
        "{}",
        both(&out)
    );

    // Malformed flags.
    let out = sb.run(&["--env", "NOEQUALS"], "true").await;
    assert!(
        !out.status.success() && stderr(&out).contains("KEY=VALUE"),
        "{}",
        both(&out)
    );
    let out = sb.run(&["--name", "bad name"], "true").await;
    assert!(
        !out.status.success() && stderr(&out).contains("container name"),
        "{}",
        both(&out)
    );
    assert_eq!(sb.leftover_mounts(), Vec::<String>::new());
}

/// Twenty containers of twenty agents read one file: one copy in the cache,
/// twenty agent ids in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_agents_share_one_cache_and_keep_their_own_agent_ids() {
    require_docker();
    let report = many_agents(20, 8 << 20).await;
    assert!(
        report.cache_bytes < report.file_bytes + report.file_bytes / 4,
        "one copy in the cache: {report:?}"
    );
}

#[derive(Debug)]
#[allow(dead_code)]
struct ManyAgents {
    agents: usize,
    file_bytes: u64,
    /// `du -sb` of the shared cache after all runs.
    cache_bytes: u64,
    wall: Duration,
    slowest_run: Duration,
}

async fn many_agents(n: usize, size: usize) -> ManyAgents {
    let p = "crowd";
    let (s, token, sb) = server_with_sandbox(p).await;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
    s.commit(p, &token, "big.bin", None, &data).await.expect("put big.bin");
    let expected = format!("{}", data.len());
    let started = Instant::now();
    let runs = (0..n).map(|i| {
        let sb = &sb;
        async move {
            let t = Instant::now();
            let agent = format!("crowd-agent-{i}");
            let out = sb
                .run(
                    &["--agent-id", &agent],
                    &format!("wc -c < /workspace/big.bin; echo {i} > /workspace/agent-{i}.txt"),
                )
                .await;
            (i, agent, out, t.elapsed())
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let wall = started.elapsed();
    let mut slowest = Duration::ZERO;
    for (i, agent, out, took) in &results {
        slowest = slowest.max(*took);
        assert!(out.status.success(), "agent {i}: {}", both(out));
        assert_eq!(
            stdout(out).trim(),
            expected,
            "agent {i} read the whole file: {}",
            both(out)
        );
        let path = format!("agent-{i}.txt");
        assert_written_by(&s, p, &token, &path, agent.as_str()).await;
    }
    let du = std::process::Command::new("du")
        .arg("-sb")
        .arg(sb.cache())
        .output()
        .expect("du");
    let cache_bytes: u64 = stdout(&du)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let log = sb.cmd().args(["log", "agent-3.txt"]).output().await.unwrap();
    assert!(stdout(&log).contains("crowd-agent-3"), "{}", both(&log));
    assert_eq!(sb.leftover_mounts(), Vec::<String>::new());
    let report = ManyAgents {
        agents: n,
        file_bytes: data.len() as u64,
        cache_bytes,
        wall,
        slowest_run: slowest,
    };
    eprintln!("{report:?}");
    report
}

/// The numbers in docs/BENCHMARKS.md ("Sandboxes"):
/// `cargo test --release --test docker -- --ignored --nocapture bench_`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_twenty_agents_read_one_50mb_file() {
    require_docker();
    let r = many_agents(20, 50 << 20).await;
    println!(
        "agents={} file={} MB cache(du)={:.1} MB wall={:.2?} slowest run={:.2?}",
        r.agents,
        r.file_bytes >> 20,
        r.cache_bytes as f64 / (1 << 20) as f64,
        r.wall,
        r.slowest_run
    );
}

// ---------------------------------------------------------------------------
// The volume plugin
// ---------------------------------------------------------------------------

/// The plugin process on the standard socket; killed when dropped.
struct Plugin {
    child: tokio::process::Child,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run docker")
}

async fn docker_ok(args: &[&str]) -> String {
    let out = docker(args).await;
    assert!(out.status.success(), "docker {args:?}: {}", both(&out));
    stdout(&out)
}

/// `docker run --rm -v VOLUME:/workspace IMAGE sh -c SCRIPT`.
async fn run_on_volume(volume: &str, script: &str) -> Output {
    docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:/workspace"),
        IMAGE,
        "sh",
        "-c",
        script,
    ])
    .await
}

/// `docker volume create -d contextfs -o OPTION... NAME`.
async fn create_volume(options: &[&str], name: &str) -> Output {
    let mut args = vec!["volume", "create", "-d", "contextfs"];
    for option in options {
        args.extend(["-o", option]);
    }
    args.push(name);
    docker(&args).await
}

/// The volume's status as the plugin reports it (its mount IDs in use).
async fn volume_status(volume: &str) -> String {
    docker_ok(&["volume", "inspect", volume, "--format", "{{json .Status}}"]).await
}

fn is_mounted(path: &Path) -> bool {
    let wanted = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_volume_plugin_mounts_refcounts_commits_and_unmounts() {
    require_docker();
    let s = TestServer::start().await;
    let p = "volumes";
    let token = project(&s, p).await;
    // The plugin holds the admin token; the project token goes in per volume.
    let sb = Sandbox::new(&s, p, &s.admin);
    assert!(
        std::os::unix::net::UnixStream::connect(PLUGIN_SOCKET).is_err(),
        "another contextfs docker-plugin already serves {PLUGIN_SOCKET}; stop it before running this test"
    );
    let state_dir = sb.home.path().join("plugin");
    let child = sb
        .cmd()
        .env_remove("CONTEXTFS_PROJECT")
        .arg("docker-plugin")
        .arg("--state-dir")
        .arg(&state_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the plugin");
    let _plugin = Plugin { child };
    eventually("the plugin listens", || async {
        std::os::unix::net::UnixStream::connect(PLUGIN_SOCKET).ok().map(|_| ())
    })
    .await;

    let vol = format!("cfs-test-vol-{}", suffix());
    let agent = format!("vol-agent-{}", suffix());
    // Bad options are refused with the list of good ones.
    let bad = create_volume(&["projekt=x"], &format!("{vol}-bad")).await;
    assert!(
        !bad.status.success() && stderr(&bad).contains("project="),
        "{}",
        both(&bad)
    );
    let missing = create_volume(&["project=nope"], &format!("{vol}-nope")).await;
    assert!(
        !missing.status.success() && stderr(&missing).contains("does not exist"),
        "{}",
        both(&missing)
    );

    let options = [
        format!("project={p}"),
        format!("agent_id={agent}"),
        format!("token={token}"),
    ];
    let created = create_volume(&options.each_ref().map(String::as_str), &vol).await;
    assert!(
        created.status.success(),
        "docker volume create {vol}: {}",
        both(&created)
    );
    let ws = contextfs::sandbox::plugin::volume_mountpoint(&state_dir.canonicalize().unwrap(), &vol);

    // One container: reads, writes; committed once it is gone.
    let out = run_on_volume(&vol, "cat /workspace/hello.md; echo v > /workspace/vol.md").await;
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).contains("hello from the api"), "{}", both(&out));
    let version = committed(&s, p, &token, "vol.md", "vol.md committed").await;
    assert_eq!(version.bytes, b"v\n");
    assert_written_by(&s, p, &token, "vol.md", agent.as_str()).await;

    // Two containers at once on the same volume: the first one's mount
    // survives the second one leaving.
    let long = format!("cfs-test-long-{}", suffix());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &long,
        "-v",
        &format!("{vol}:/workspace"),
        "--user",
        "1000:1000",
        IMAGE,
        "sh",
        "-c",
        "while [ ! -e /workspace/stop ]; do sleep 0.1; done; echo a > /workspace/a.md",
    ])
    .await;
    let status = volume_status(&vol).await;
    assert!(status.contains("\"mounts\":1"), "one mount ID in use: {status}");
    let out = run_on_volume(&vol, "echo b > /workspace/b.md").await;
    assert!(out.status.success(), "{}", both(&out));
    assert!(is_mounted(&ws), "the volume stays mounted while a container uses it");
    let status = volume_status(&vol).await;
    assert!(status.contains("\"mounts\":1"), "back to one mount ID: {status}");
    committed(&s, p, &token, "b.md", "b.md committed").await;
    s.commit(p, &token, "stop", None, b"").await.expect("put stop");
    let code = docker_ok(&["wait", &long]).await;
    assert_eq!(code.trim(), "0");
    docker_ok(&["rm", &long]).await;
    // The last Unmount flushed: a.md is on the server now.
    let a = committed(&s, p, &token, "a.md", "a.md committed").await;
    assert_eq!(a.bytes, b"a\n");
    assert_written_by(&s, p, &token, "a.md", agent.as_str()).await;
    let status = volume_status(&vol).await;
    assert!(status.contains("\"mounts\":0"), "{status}");

    // docker volume rm unmounts.
    docker_ok(&["volume", "rm", &vol]).await;
    assert!(!is_mounted(&ws), "volume rm unmounted {}", ws.display());
    let listed = docker_ok(&["volume", "ls", "--format", "{{.Name}}"]).await;
    assert!(!listed.lines().any(|l| l == vol), "{listed}");
}
