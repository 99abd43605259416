//! `contextfs daytona` against a real `contextfs serve` and the local
//! Daytona stand-in (examples/fake_daytona/), whose sandboxes are Docker
//! containers of `contextfs-busybox:latest` with a static contextfs inside.
//!
//! Needs: dockerd and the image (`scripts/docker`), the static binary
//! (`scripts/static-build`), and the example built (`cargo test --all-targets`
//! or `cargo build --example fake_daytona`). `scripts/test` does all three.
//! Only `real_daytona` talks to Daytona itself, and only when
//! `DAYTONA_API_KEY` is set.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sandbox::*;
use common::*;
use contextfs::api::Access;

const KEY: &str = "dtn_fake_test_key";

fn docker_exec_ok(container: &str, script: &str) -> bool {
    Command::new("docker")
        .args(["exec", container, "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running fake Daytona.
struct FakeDaytona {
    fake: FakeProvider,
    /// `http://127.0.0.1:PORT/api`
    api: String,
}

impl FakeDaytona {
    fn start(extra: &[&str]) -> FakeDaytona {
        let fake = FakeProvider::start("fake_daytona", KEY, "FAKE_DAYTONA_FAIL", extra);
        let api = format!("{}/api", fake.base);
        FakeDaytona { fake, api }
    }

    fn log(&self) -> String {
        self.fake.log()
    }
}

/// `contextfs daytona` in an environment of its own, against `daytona_api`.
fn daytona_cli(server: &TestServer, daytona_api: &str, key: &str) -> SandboxCli {
    SandboxCli::new(
        server,
        "daytona",
        &[("DAYTONA_API_URL", daytona_api), ("DAYTONA_API_KEY", key)],
        &["DAYTONA_API_KEY"],
    )
}

async fn publish_skill(server: &TestServer) -> String {
    let skill_md = "---\nname: pdf\ndescription: Read and fill PDF forms\n---\n# PDF\nUse the scripts.\n";
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("pdf/scripts")).unwrap();
    std::fs::write(dir.path().join("pdf/SKILL.md"), skill_md).unwrap();
    std::fs::write(dir.path().join("pdf/scripts/fill.sh"), "#!/bin/sh\necho filled\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("pdf/scripts/fill.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    server.publish_skills(dir.path());
    skill_md.to_string()
}

/// What Daytona's auto-stop does, through the fake's API.
async fn stop_sandbox(fake: &FakeDaytona, id: &str) {
    let response = reqwest::Client::new()
        .post(format!("{}/sandbox/{id}/stop", fake.api))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("stop request");
    assert!(
        response.status().is_success(),
        "stop: {}",
        response.text().await.unwrap_or_default()
    );
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_mode_runs_commands_on_the_workspace_and_destroy_flushes() {
    require_docker();
    let server = TestServer::start().await;
    let p = "sbx";
    server.create_project(p).await;
    server
        .commit(p, &server.admin, "notes/input.md", None, b"# Input\nfrom the API\n")
        .await
        .expect("seed file");
    let skill_md = publish_skill(&server).await;
    let fake = FakeDaytona::start(&[]);
    let cli = daytona_cli(&server, &fake.api, KEY);

    let started = Instant::now();
    let (id, log) = cli.create(
        p,
        &["--auto-stop", "15", "--auto-delete", "120", "--label", "team=research"],
    );
    eprintln!("create took {:?}", started.elapsed());
    assert!(log.contains("mounted project sbx at /workspace"), "{log}");
    let container = format!("fake-daytona-{id}");
    assert!(container_exists(&container), "{}", fake.log());
    let list = cli.run(&["daytona", "list"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains(&format!("{id}\tsbx\tmount")),
        "{}",
        both(&list)
    );
    // Daytona got the lifecycle settings and labels.
    let sandbox: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/sandbox/{id}", fake.api))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sandbox["autoStopInterval"], 15);
    assert_eq!(sandbox["autoDeleteInterval"], 120);
    assert_eq!(sandbox["labels"]["team"], "research");
    assert_eq!(sandbox["labels"]["contextfs.project"], "sbx");
    // The sandbox got a project token, not the admin token.
    let toks = project_tokens(&server, p).await;
    assert_eq!(toks.len(), 1, "{toks:?}");
    assert_eq!(toks[0].access, Access::ReadWrite);
    let env = Command::new("docker")
        .args([
            "exec",
            &container,
            "sh",
            "-c",
            "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep CONTEXTFS_TOKEN || true",
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&env.stdout).contains(&server.admin),
        "the admin token reached the sandbox"
    );

    // A file put through the API is readable in the sandbox.
    let started = Instant::now();
    assert_eq!(cli.exec_ok(&id, "cat notes/input.md"), "# Input\nfrom the API\n");
    eprintln!("exec took {:?}", started.elapsed());

    // A write in the sandbox lands as a commit by this sandbox.
    cli.exec_ok(&id, "printf '# Out\\nwritten in the sandbox\\n' > /workspace/out.md");
    wait_for_file(&server, p, "out.md", b"# Out\nwritten in the sandbox\n").await;
    let history = server.history(p, &server.admin, "out.md").await;
    assert_eq!(history[0].agent_id.as_deref(), Some(format!("daytona-{id}").as_str()));

    // Exit codes and output come back.
    let out = cli.exec(&id, "echo to-stdout; echo to-stderr >&2; exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", both(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\nto-stderr\n");
    let out = cli.run(&["daytona", "exec", &id, "--cwd", "/workspace/notes", "--", "ls", "-1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "input.md\n", "{}", both(&out));

    // Skills are under /skills, read-only.
    assert_eq!(cli.exec_ok(&id, "cat /skills/pdf/SKILL.md"), skill_md);
    let out = cli.exec(&id, "echo x > /skills/pdf/new.md");
    assert!(!out.status.success(), "writing a skill succeeded: {}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Read-only file system"),
        "{}",
        both(&out)
    );

    // The mount process dies: the next exec notices (a dead FUSE mount still
    // sits in /proc/mounts), mounts again and runs the command.
    assert!(docker_exec_ok(&container, "kill -9 $(pidof contextfs)"));
    let out = cli.exec(&id, "cat out.md");
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "# Out\nwritten in the sandbox\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was not running; mounting it again"),
        "{}",
        both(&out)
    );

    // Daytona stops the sandbox (auto-stop): processes and mount are gone; the
    // next exec starts it and mounts again; files written before are there.
    stop_sandbox(&fake, &id).await;
    let out = cli.exec(&id, "cat out.md && echo after-restart > restarted.md");
    assert!(out.status.success(), "{}", both(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("starting it again") && stderr.contains("again"),
        "{stderr}"
    );
    wait_for_file(&server, p, "restarted.md", b"after-restart\n").await;

    // Destroy right after a write: the umount commits it before the sandbox goes.
    cli.exec_ok(&id, "echo last > /workspace/last.md");
    let started = Instant::now();
    let out = cli.run(&["daytona", "destroy", &id]);
    eprintln!("destroy took {:?}", started.elapsed());
    assert!(out.status.success(), "{}", both(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("last.md"), "the umount report names the file: {stderr}");
    assert!(stderr.contains("revoked token"), "{stderr}");
    assert_eq!(server.read_bytes(p, &server.admin, "last.md").await, b"last\n");
    assert!(!container_exists(&container), "the container is still there");
    assert!(project_tokens(&server, p).await.iter().all(|t| t.revoked));
    let list = cli.run(&["daytona", "list"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).trim().is_empty(),
        "{}",
        both(&list)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_without_fuse_commits_with_base_versions_and_merges() {
    require_docker();
    let server = TestServer::start().await;
    let p = "nofuse";
    server.create_project(p).await;
    let doc = "line one\nline two\nline three\nline four\nline five\n";
    let v1 = server
        .commit(p, &server.admin, "doc.md", None, doc.as_bytes())
        .await
        .expect("seed doc");
    server
        .commit(p, &server.admin, "gone.md", None, b"delete me\n")
        .await
        .expect("seed gone");
    let skill_md = publish_skill(&server).await;
    let fake = FakeDaytona::start(&[]);
    let cli = daytona_cli(&server, &fake.api, KEY);

    // The label makes the fake start this sandbox without /dev/fuse.
    let (id, log) = cli.create(p, &["--label", "fake-daytona/fuse=false"]);
    assert!(log.contains("using sync mode"), "{log}");
    assert!(log.contains("no /dev/fuse"), "the reason is shown: {log}");
    let container = format!("fake-daytona-{id}");
    assert!(!docker_exec_ok(&container, "test -e /dev/fuse"));

    // The tree and the skills were copied in.
    assert_eq!(cli.exec_ok(&id, "cat doc.md"), doc);
    assert_eq!(cli.exec_ok(&id, "cat /skills/pdf/SKILL.md"), skill_md);
    assert_eq!(
        cli.exec_ok(&id, "test -x /skills/pdf/scripts/fill.sh && echo yes"),
        "yes\n"
    );

    // A new file is committed as soon as exec returns, with a per-file report.
    let out = cli.exec(&id, "printf 'new\\n' > out.md && mkdir -p sub/empty && rm gone.md");
    assert!(out.status.success(), "{}", both(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains("out.md: clean (version 1)"), "{stderr}");
    assert!(stderr.contains("gone.md: deleted"), "{stderr}");
    assert_eq!(server.read_bytes(p, &server.admin, "out.md").await, b"new\n");
    let history = server.history(p, &server.admin, "out.md").await;
    assert_eq!(history[0].agent_id.as_deref(), Some(format!("daytona-{id}").as_str()));
    let tree = server.tree(p, &server.admin, &[("recursive", "true")]).await.unwrap();
    let paths: Vec<&str> = tree.entries.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"sub/empty"), "{paths:?}");
    assert!(!paths.contains(&"gone.md"), "{paths:?}");

    // An edit in the sandbox and a concurrent API edit of another line merge:
    // the sandbox's commit names the version it started from.
    let edit = cli
        .command(&[
            "daytona",
            "exec",
            &id,
            "--",
            "sed -i 's/line one/LINE ONE (sandbox)/' doc.md && touch /tmp/edited && \
             while [ ! -e /tmp/go ]; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start exec");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !docker_exec_ok(&container, "test -e /tmp/edited") {
        assert!(Instant::now() < deadline, "the sandbox edit never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api_edit = doc.replace("line five", "LINE FIVE (api)");
    let v2 = server
        .commit(p, &server.admin, "doc.md", Some(v1.version), api_edit.as_bytes())
        .await
        .expect("api edit");
    assert_eq!(v2.version, v1.version + 1);
    assert!(docker_exec_ok(&container, "touch /tmp/go"));
    let out = tokio::task::spawn_blocking(move || edit.wait_with_output())
        .await
        .unwrap()
        .expect("exec");
    assert!(out.status.success(), "{}", both(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains("doc.md: merged"), "{stderr}");
    let merged = "LINE ONE (sandbox)\nline two\nline three\nline four\nLINE FIVE (api)\n";
    let head = server.read(p, &server.admin, "doc.md", None).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&head.bytes), merged);
    assert_eq!(head.status, "merged");
    let history = server.history(p, &server.admin, "doc.md").await;
    assert_eq!(history[0].parent, Some(v1.version + 1), "merged on top of the API edit");
    // The sandbox now holds the merged file too.
    assert_eq!(cli.exec_ok(&id, "cat doc.md"), merged);

    // Stopped by Daytona: started again before the next command.
    stop_sandbox(&fake, &id).await;
    let out = cli.exec(&id, "cat doc.md");
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("starting it again"),
        "{}",
        both(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), merged);

    // A change made through the API reaches the sandbox before the next command.
    server
        .commit(p, &server.admin, "later.md", None, b"from the api\n")
        .await
        .unwrap();
    assert_eq!(cli.exec_ok(&id, "cat later.md"), "from the api\n");

    // Destroy does a last sync (here: a file written after the last exec
    // returned), then removes the container.
    cli.exec_ok(&id, "(sleep 1; echo bye > /workspace/bye.md) >/dev/null 2>&1 &");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !docker_exec_ok(&container, "test -s /workspace/bye.md") {
        assert!(Instant::now() < deadline, "the background write never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cli.run(&["daytona", "destroy", &id]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bye.md: clean"),
        "{}",
        both(&out)
    );
    assert_eq!(server.read_bytes(p, &server.admin, "bye.md").await, b"bye\n");
    assert!(!container_exists(&container));
    assert!(project_tokens(&server, p).await.iter().all(|t| t.revoked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daytona_failures_give_clear_errors_and_leave_nothing_behind() {
    let server = TestServer::start().await;
    let p = "faults";
    server.create_project(p).await;

    // Wrong API key → 401 → says which variable to check.
    let fake = FakeDaytona::start(&[]);
    let cli = daytona_cli(&server, &fake.api, "not-the-key");
    let out = cli.run(&["daytona", "create", "--project", p]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HTTP 401") && stderr.contains("check DAYTONA_API_KEY"),
        "{stderr}"
    );

    // Daytona answering 500 → "failing; retry".
    let failing = FakeDaytona::start(&["--fail-with", "500"]);
    let cli = daytona_cli(&server, &failing.api, KEY);
    let out = cli.run(&["daytona", "create", "--project", p]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Daytona is failing") && stderr.contains("retry"),
        "{stderr}"
    );
    let out = cli.run(&["daytona", "destroy", "some-id"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Daytona is failing"),
        "{}",
        both(&out)
    );

    // Nobody listening.
    let cli = daytona_cli(&server, "http://127.0.0.1:9/api", KEY);
    let out = cli.run(&["daytona", "create", "--project", p]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach Daytona at http://127.0.0.1:9"),
        "{stderr}"
    );

    // No key at all.
    let mut cli = daytona_cli(&server, &fake.api, KEY);
    cli.env.retain(|(k, _)| k != "DAYTONA_API_KEY");
    let out = cli.run(&["daytona", "create", "--project", p]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("set DAYTONA_API_KEY"),
        "{}",
        both(&out)
    );

    // A sandbox this machine does not know.
    let out = cli.run(&["daytona", "exec", "nope", "--", "true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not create sandbox nope"),
        "{}",
        both(&out)
    );

    // The project tokens made for the failed attempts were revoked again.
    let toks = project_tokens(&server, p).await;
    assert!(!toks.is_empty());
    assert!(toks.iter().all(|t| t.revoked), "{toks:?}");

    // A non-admin token cannot make sandboxes, and says why.
    let project_token = server.token(p, Access::ReadWrite).await.token;
    let mut cli = daytona_cli(&server, &fake.api, KEY);
    for (k, v) in cli.env.iter_mut() {
        if k == "CONTEXTFS_TOKEN" {
            *v = project_token.clone();
        }
    }
    let out = cli.run(&["daytona", "create", "--project", p]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin token"),
        "{}",
        both(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_or_failing_daytona_is_retried_with_backoff_then_reported() {
    require_docker();
    let server = TestServer::start().await;
    let p = "retries";
    server.create_project(p).await;

    // Two 429s (with Retry-After): the create waits and goes through.
    let throttled = FakeDaytona::start(&["--fail-with", "429", "--fail-count", "2"]);
    let cli = daytona_cli(&server, &throttled.api, KEY);
    let (id, stderr) = cli.create(p, &["--mode", "sync"]);
    assert!(
        stderr.contains("HTTP 429") && stderr.contains("trying again"),
        "{stderr}"
    );
    cli.exec_ok(&id, "echo after-429 > throttled.md");
    assert_eq!(
        server.read_bytes(p, &server.admin, "throttled.md").await,
        b"after-429\n"
    );
    let out = cli.run(&["daytona", "destroy", &id]);
    assert!(out.status.success(), "{}", both(&out));

    // Reads that fail in passing (503) are sent again.
    let flaky = FakeDaytona::start(&["--fail-with", "503", "--fail-method", "GET", "--fail-count", "2"]);
    let cli = daytona_cli(&server, &flaky.api, KEY);
    let (id, _) = cli.create(p, &["--mode", "sync"]);
    assert_eq!(flaky.log().matches("-> 503").count(), 2, "{}", flaky.log());
    let out = cli.run(&["daytona", "destroy", &id]);
    assert!(out.status.success(), "{}", both(&out));

    // Throttled for good: a bounded number of tries, then a message saying so.
    let limited = FakeDaytona::start(&["--fail-with", "429"]);
    let cli = daytona_cli(&server, &limited.api, KEY);
    let out = cli.run(&["daytona", "create", "--project", p]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rate-limiting this API key (HTTP 429") && stderr.contains("4 attempts"),
        "{stderr}"
    );
    assert_eq!(limited.log().matches("-> 429").count(), 4, "{}", limited.log());
    // Every token made on the way was revoked with its sandbox (or its failed create).
    assert!(project_tokens(&server, p).await.iter().all(|t| t.revoked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_past_its_timeout_is_killed_and_what_it_wrote_is_committed() {
    require_docker();
    let server = TestServer::start().await;
    let p = "exec-timeout";
    server.create_project(p).await;
    let fake = FakeDaytona::start(&[]);
    let cli = daytona_cli(&server, &fake.api, KEY);
    let (id, _) = cli.create(p, &["--mode", "sync"]);
    let out = cli.run(&[
        "daytona",
        "exec",
        &id,
        "--timeout",
        "2",
        "--",
        "echo partial > partial.md; sleep 60; echo never > never.md",
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", both(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ran past its time limit (2 s)"), "{stderr}");
    assert!(stderr.contains("partial.md"), "{stderr}");
    assert_eq!(server.read_bytes(p, &server.admin, "partial.md").await, b"partial\n");
    assert!(server.read(p, &server.admin, "never.md", None).await.is_err());
    let out = cli.run(&["daytona", "destroy", &id]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(project_tokens(&server, p).await.iter().all(|t| t.revoked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_after_daytona_deleted_the_sandbox_forgets_it_and_revokes_its_token() {
    require_docker();
    let server = TestServer::start().await;
    let p = "autodeleted";
    server.create_project(p).await;
    let fake = FakeDaytona::start(&[]);
    let cli = daytona_cli(&server, &fake.api, KEY);
    let (id, _) = cli.create(p, &["--mode", "sync"]);
    // What Daytona's auto-delete does.
    let response = reqwest::Client::new()
        .delete(format!("{}/sandbox/{id}", fake.api))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    // An exec finds it gone and says what to do; nothing runs.
    let out = cli.exec(&id, "echo lost > lost.md");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no longer exists at Daytona") && stderr.contains("contextfs daytona destroy"),
        "{stderr}"
    );
    let out = cli.run(&["daytona", "destroy", &id]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no longer exists"),
        "{}",
        both(&out)
    );
    assert!(project_tokens(&server, p).await.iter().all(|t| t.revoked));
    assert!(String::from_utf8_lossy(&cli.run(&["daytona", "list"]).stdout)
        .trim()
        .is_empty());
}

/// The Python with the official Daytona and E2B SDKs (scripts/py-sdks).
/// The proof that fake_daytona follows Daytona's published API: the official
/// `daytona` Python SDK (pinned in scripts/py-sdks) goes through a sandbox's
/// whole life against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_daytona_sdk_drives_the_fake_through_a_sandbox_life() {
    require_docker();
    let fake = FakeDaytona::start(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk_fidelity/daytona_sdk.py");
    let out = Command::new(sdk_python())
        .arg(&script)
        .args([fake.api.as_str(), KEY, SANDBOX_IMAGE])
        .stdin(Stdio::null())
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "the Daytona SDK failed against the fake:\n{}\nfake's log:\n{}",
        both(&out),
        fake.log()
    );
    let steps = [
        "create",
        "exec",
        "upload",
        "download",
        "stop",
        "start",
        "exec again",
        "delete",
    ];
    for step in steps {
        assert!(stdout.contains(&format!("step: {step}")), "{stdout}");
    }
}

/// Against Daytona itself; runs only with DAYTONA_API_KEY set (and
/// DAYTONA_API_URL for a self-hosted one). The test server listens on
/// loopback, which a cloud sandbox cannot reach, so it uses sync mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_daytona() {
    let Some(key) = std::env::var("DAYTONA_API_KEY").ok().filter(|k| !k.is_empty()) else {
        eprintln!("real_daytona: DAYTONA_API_KEY is not set, so this test does not talk to Daytona");
        return;
    };
    let api = std::env::var("DAYTONA_API_URL").unwrap_or_else(|_| contextfs::sandbox::daytona::DEFAULT_API_URL.into());
    let server = TestServer::start().await;
    let p = "real";
    server.create_project(p).await;
    server
        .commit(p, &server.admin, "hello.md", None, b"hello from contextfs\n")
        .await
        .unwrap();
    let cli = daytona_cli(&server, &api, &key);
    let mut extra = vec!["--mode", "sync", "--auto-stop", "15", "--auto-delete", "30"];
    let snapshot = std::env::var("DAYTONA_TEST_SNAPSHOT").ok();
    if let Some(s) = &snapshot {
        extra.extend(["--snapshot", s.as_str()]);
    }
    let (id, _) = cli.create(p, &extra);
    let result = std::panic::AssertUnwindSafe(async {
        assert_eq!(cli.exec_ok(&id, "cat hello.md"), "hello from contextfs\n");
        cli.exec_ok(&id, "echo from-daytona > out.md");
        assert_eq!(server.read_bytes(p, &server.admin, "out.md").await, b"from-daytona\n");
    });
    let outcome = futures_util::FutureExt::catch_unwind(result).await;
    let out = cli.run(&["daytona", "destroy", &id, "--force"]);
    assert!(out.status.success(), "{}", both(&out));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
