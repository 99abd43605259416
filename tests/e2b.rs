//! `contextfs e2b` against a real `contextfs serve` and the local E2B
//! stand-in (examples/fake_e2b), whose sandboxes are Docker containers of
//! `contextfs-busybox:latest` with a static contextfs inside; and the
//! official `e2b` Python SDK against the fake, proving it follows E2B's API.
//!
//! Needs what tests/daytona.rs needs (`scripts/docker`, `scripts/static-build`,
//! the examples built) plus the SDK venv (`scripts/py-sdks`); `scripts/test`
//! does all of it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sandbox::*;
use common::*;

const KEY: &str = "e2b_fake_test_key";

/// A running fake E2B.
struct FakeE2b {
    fake: FakeProvider,
    /// `http://127.0.0.1:PORT`: the control plane and envd alike.
    url: String,
}

impl FakeE2b {
    fn start(extra: &[&str]) -> FakeE2b {
        let fake = FakeProvider::start("fake_e2b", KEY, "FAKE_E2B_FAIL", extra);
        let url = fake.base.clone();
        FakeE2b { fake, url }
    }

    fn log(&self) -> String {
        self.fake.log()
    }

    /// `GET /sandboxes/{id}` as E2B's own API answers it.
    async fn sandbox(&self, id: &str) -> Option<serde_json::Value> {
        let response = reqwest::Client::new()
            .get(format!("{}/sandboxes/{id}", self.url))
            .header("X-API-KEY", KEY)
            .send()
            .await
            .expect("get sandbox");
        if response.status() == 404 {
            return None;
        }
        Some(response.json().await.expect("sandbox JSON"))
    }

    /// What E2B does when a sandbox's timeout is set: it dies `seconds` from now.
    async fn set_timeout(&self, id: &str, seconds: u64) {
        let response = reqwest::Client::new()
            .post(format!("{}/sandboxes/{id}/timeout", self.url))
            .header("X-API-KEY", KEY)
            .json(&serde_json::json!({ "timeout": seconds }))
            .send()
            .await
            .expect("timeout request");
        assert!(response.status().is_success(), "{}", response.status());
    }
}

/// `contextfs e2b` in an environment of its own, against `e2b_url`.
fn e2b_cli(server: &TestServer, e2b_url: &str, key: &str) -> SandboxCli {
    SandboxCli::new(
        server,
        "e2b",
        &[
            ("E2B_API_URL", e2b_url),
            ("E2B_SANDBOX_URL", e2b_url),
            ("E2B_API_KEY", key),
        ],
        &["E2B_DOMAIN"],
    )
}

// ---------------------------------------------------------------------------

/// The proof that fake_e2b follows E2B's published API: the official `e2b`
/// Python SDK (pinned in scripts/py-sdks) against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_e2b_sdk_drives_the_fake() {
    require_docker();
    let python = sdk_python();
    let fake = FakeE2b::start(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk_fidelity/e2b_sdk.py");
    let out = Command::new(python)
        .arg(&script)
        .args([KEY, "base"])
        .env("E2B_API_URL", &fake.url)
        .env("E2B_SANDBOX_URL", &fake.url)
        // The fake speaks HTTP/1.1 on loopback; the SDK defaults to HTTP/2.
        .env("E2B_HTTP_VERSION", "1.1")
        .env_remove("E2B_API_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "the E2B SDK failed against the fake:\n{}\nfake's log:\n{}",
        both(&out),
        fake.log()
    );
    for step in [
        "bad key",
        "create",
        "commands.run",
        "files.write",
        "set_timeout",
        "kill",
    ] {
        assert!(stdout.contains(&format!("step: {step}")), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_mode_with_metadata_keep_alive_killed_mount_and_destroy() {
    require_docker();
    let server = TestServer::start().await;
    let p = "e2b-mount";
    server.create_project(p).await;
    server
        .commit(p, &server.admin, "notes/input.md", None, b"from the API\n")
        .await
        .expect("seed file");
    let fake = FakeE2b::start(&[]);
    let cli = e2b_cli(&server, &fake.url, KEY);
    let (id, log) = cli.create(
        p,
        &[
            "--timeout",
            "10",
            "--metadata",
            "thread_id=th-1",
            "--metadata",
            "user_id=u-7",
        ],
    );
    assert!(log.contains("mounted project e2b-mount at /workspace"), "{log}");
    let container = format!("fake-e2b-{id}");
    assert!(container_exists(&container), "{}", fake.log());
    // E2B got the metadata the design notes use, and the project.
    let sandbox = fake.sandbox(&id).await.expect("the sandbox exists");
    assert_eq!(sandbox["metadata"]["thread_id"], "th-1");
    assert_eq!(sandbox["metadata"]["user_id"], "u-7");
    assert_eq!(sandbox["metadata"]["contextfs.project"], "e2b-mount");
    let toks = project_tokens(&server, p).await;
    assert_eq!(toks.len(), 1, "{toks:?}");

    assert_eq!(cli.exec_ok(&id, "cat notes/input.md"), "from the API\n");
    cli.exec_ok(&id, "echo written-in-e2b > out.md");
    wait_for_file(&server, p, "out.md", b"written-in-e2b\n").await;
    let history = server.history(p, &server.admin, "out.md").await;
    assert_eq!(history[0].agent_id.as_deref(), Some(format!("e2b-{id}").as_str()));
    let out = cli.exec(&id, "echo out; echo err >&2; exit 5");
    assert_eq!(out.status.code(), Some(5), "{}", both(&out));
    // E2B streams stdout and stderr apart; they come back combined, in the order they arrived.
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    assert_eq!(lines, ["err", "out"], "{}", both(&out));

    // Keep-alive: E2B was about to kill it; the next exec renews its timeout.
    fake.set_timeout(&id, 30).await;
    let before = fake.sandbox(&id).await.expect("exists")["endAt"]
        .as_str()
        .unwrap()
        .to_string();
    cli.exec_ok(&id, "true");
    let after = fake.sandbox(&id).await.expect("exists")["endAt"]
        .as_str()
        .unwrap()
        .to_string();
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    assert!(
        parse(&after) - parse(&before) > chrono::Duration::minutes(5),
        "the timeout was not renewed: {before} -> {after}"
    );

    // A command that outlasts the sandbox's timeout: E2B's timer is renewed
    // while it runs, so the sandbox (and the command) survive it.
    let long = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let command = scope.spawn(|| cli.exec(&id, "sleep 35; echo survived > long.md; echo survived"));
            std::thread::sleep(Duration::from_secs(3));
            tokio::runtime::Handle::current().block_on(fake.set_timeout(&id, 15));
            command.join().expect("exec thread")
        })
    });
    assert_eq!(String::from_utf8_lossy(&long.stdout), "survived\n", "{}", both(&long));
    wait_for_file(&server, p, "long.md", b"survived\n").await;

    // The mount dies: the next exec mounts again.
    assert!(Command::new("docker")
        .args(["exec", &container, "sh", "-c", "kill -9 $(pidof contextfs)"])
        .status()
        .is_ok_and(|s| s.success()));
    let out = cli.exec(&id, "cat out.md");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "written-in-e2b\n",
        "{}",
        both(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was not running; mounting it again"),
        "{}",
        both(&out)
    );

    // Destroy right after a write: the umount commits it, the token goes.
    cli.exec_ok(&id, "echo last > last.md");
    let out = cli.run(&["e2b", "destroy", &id]);
    assert!(out.status.success(), "{}", both(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("last.md") && stderr.contains("revoked token"),
        "{stderr}"
    );
    assert_eq!(server.read_bytes(p, &server.admin, "last.md").await, b"last\n");
    assert!(!container_exists(&container));
    assert!(project_tokens(&server, p).await.iter().all(|t| t.revoked));
    assert!(String::from_utf8_lossy(&cli.run(&["e2b", "list"]).stdout)
        .trim()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fuse_it_falls_back_to_sync_mode_and_a_timed_out_sandbox_loses_nothing_closed() {
    require_docker();
    let server = TestServer::start().await;
    let p = "e2b-sync";
    server.create_project(p).await;
    server
        .commit(p, &server.admin, "seed.md", None, b"seed\n")
        .await
        .expect("seed file");
    let fake = FakeE2b::start(&["--no-fuse"]);
    let cli = e2b_cli(&server, &fake.url, KEY);
    let (id, log) = cli.create(p, &[]);
    assert!(log.contains("using sync mode"), "{log}");
    let list = cli.run(&["e2b", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&format!("{id}\t{p}\tsync")));

    // Per-file outcomes after the command.
    let out = cli.exec(&id, "cat seed.md; echo new > new.md");
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "seed\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("new.md"),
        "{}",
        both(&out)
    );
    assert_eq!(server.read_bytes(p, &server.admin, "new.md").await, b"new\n");

    // A command past its --timeout is killed; what it wrote is committed.
    let out = cli.run(&[
        "e2b",
        "exec",
        &id,
        "--timeout",
        "2",
        "--",
        "echo partial > partial.md; sleep 60",
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ran past its time limit (2 s)"),
        "{}",
        both(&out)
    );
    assert_eq!(server.read_bytes(p, &server.admin, "partial.md").await, b"partial\n");

    // E2B's timeout runs out between commands: the sandbox is gone, what
    // its commands wrote is not; exec says so, destroy revokes the token.
    fake.set_timeout(&id, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.sandbox(&id).await.is_some() {
        assert!(Instant::now() < deadline, "the fake never timed the sandbox out");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = cli.exec(&id, "true");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no longer exists at E2B") && stderr.contains("contextfs e2b destroy"),
        "{stderr}"
    );
    assert_eq!(server.read_bytes(p, &server.admin, "new.md").await, b"new\n");
    let out = cli.run(&["e2b", "destroy", &id]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no longer exists"));
    assert!(project_tokens(&server, p).await.iter().all(|t| t.revoked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2b_failures_give_clear_errors_and_leave_no_token_behind() {
    let server = TestServer::start().await;
    let p = "e2b-faults";
    server.create_project(p).await;

    // Wrong key → 401 → names the variable.
    let fake = FakeE2b::start(&[]);
    let out = e2b_cli(&server, &fake.url, "e2b_wrong").run(&["e2b", "create", "--project", p]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("E2B refused the API key (HTTP 401") && stderr.contains("check E2B_API_KEY"),
        "{stderr}"
    );

    // E2B answering 503 on everything: a bounded number of tries, then a clear message.
    let failing = FakeE2b::start(&["--fail-with", "503"]);
    let cli = e2b_cli(&server, &failing.url, KEY);
    let out = cli.run(&["e2b", "create", "--project", p]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("E2B is failing (HTTP 503"),
        "{}",
        both(&out)
    );
    let out = cli.run(&["e2b", "destroy", "nope"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("E2B is failing") && stderr.contains("4 attempts"),
        "{stderr}"
    );

    // Throttled twice, then through: create goes on after the backoff.
    require_docker();
    let throttled = FakeE2b::start(&["--fail-with", "429", "--fail-count", "2"]);
    let ok_cli = e2b_cli(&server, &throttled.url, KEY);
    let (id, stderr) = ok_cli.create(p, &["--mode", "sync"]);
    assert!(
        stderr.contains("HTTP 429") && stderr.contains("trying again"),
        "{stderr}"
    );
    let out = ok_cli.run(&["e2b", "destroy", &id]);
    assert!(out.status.success(), "{}", both(&out));

    // Nobody listening.
    let out = e2b_cli(&server, "http://127.0.0.1:9", KEY).run(&["e2b", "create", "--project", p]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach E2B at http://127.0.0.1:9"),
        "{}",
        both(&out)
    );

    // A sandbox this machine did not create.
    let out = cli.run(&["e2b", "exec", "nope", "--", "true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not create sandbox nope"),
        "{}",
        both(&out)
    );
    // Every token made on the way was revoked.
    let toks = project_tokens(&server, p).await;
    assert!(!toks.is_empty());
    assert!(toks.iter().all(|t| t.revoked), "{toks:?}");
}
