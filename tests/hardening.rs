//! Hardening of `contextfs serve` against hostile or broken clients, each
//! checked against a real server process: timeouts and the connection cap,
//! log injection, the revocation race, file modes, tokens off the command
//! line and per-project blob receipts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use contextfs::api::*;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// 1. Timeouts and the connection cap
// ---------------------------------------------------------------------------

/// Reads until the server closes the connection (or `limit` passes);
/// returns how long that took, or `None` if it was still open.
async fn wait_for_close(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A connection that sent half a request line and then nothing.
async fn slow_client(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET /api/v1/hea").await.expect("write half a line");
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn half_a_request_line_is_cut_off_and_idle_keep_alive_closes() {
    let s = TestServer::start_with(&["--header-timeout", "2"]).await;
    let addr = s.listen_addr();

    let mut slow = slow_client(&addr).await;
    let took = wait_for_close(&mut slow, Duration::from_secs(10))
        .await
        .expect("a half-sent request header must be cut off");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "cut off after {took:?}; the header timeout is 2 s"
    );

    // A keep-alive connection that finished a request and then idles is closed too.
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(format!("GET /api/v1/health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.expect("read response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = wait_for_close(&mut idle, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection must be closed");
    assert!(took < Duration::from_secs(5), "idle connection closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_stays_fast_with_a_thousand_slow_clients() {
    const SLOW: usize = 1000;
    let s = TestServer::start_with(&["--header-timeout", "10"]).await;
    let addr = s.listen_addr();
    let opened = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        slow.push(slow_client(&addr).await);
    }
    let open_time = opened.elapsed();

    let mut latencies = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        // A fresh connection each time: the slow ones must not hold up accepting.
        let health: Health = send(new_http_client().get(s.url("/health"))).await.expect("health");
        assert_eq!(health.status, "ok");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let (median, max) = (latencies[latencies.len() / 2], latencies[latencies.len() - 1]);
    eprintln!("{SLOW} slow clients opened in {open_time:?}; /health median {median:?}, max {max:?}");
    assert!(
        opened.elapsed() < Duration::from_secs(9),
        "the slow clients must still be open while health is measured"
    );
    assert!(
        max < Duration::from_secs(1),
        "health took {max:?} with {SLOW} slow clients"
    );

    // And every slow client is cut off by the header timeout.
    let deadline = opened + Duration::from_secs(20);
    for stream in &mut slow {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            wait_for_close(stream, left).await.is_some(),
            "a slow client was still connected 20 s after opening (header timeout 10 s)"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_fails_but_a_long_poll_does_not() {
    let s = TestServer::start_with(&["--header-timeout", "2", "--body-timeout", "1"]).await;
    let token = s.project_with_token("slow").await;
    let addr = s.listen_addr();

    // A blob upload that promises 100 bytes, sends 10 and stalls.
    let hash = hash_of(&[b'x'; 100]);
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "PUT /api/v1/projects/slow/blobs/{hash} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(&[b'x'; 10]).await.expect("write some body");
    let started = Instant::now();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let took = started.elapsed();
    assert!(
        read.is_ok(),
        "a stalled body must end the request within the body timeout"
    );
    assert!(
        took < Duration::from_secs(5),
        "stalled body ended after {took:?}; body timeout 1 s"
    );
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "a stalled upload must not succeed: {text}"
    );
    // Nothing was stored.
    assert_err(
        s.get_blob("slow", &token, hash.as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // A long-poll is a slow *response*: it outlives both timeouts.
    let started = Instant::now();
    let page = s.changes("slow", &token, 0, 4000).await.expect("long poll");
    assert!(page.events.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(3900),
        "the long poll returned early: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_cap_queues_new_connections_and_says_so_once() {
    let s = TestServer::start_with(&["--header-timeout", "2", "--max-connections", "4"]).await;
    let addr = s.listen_addr();
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(slow_client(&addr).await);
    }
    for _ in 0..3 {
        slow.push(slow_client(&addr).await);
    }
    // Health waits for a slot (the slow ones are cut off after 2 s), then works.
    let started = Instant::now();
    let health: Health = send(new_http_client().get(s.url("/health"))).await.expect("health");
    assert_eq!(health.status, "ok");
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = s.log();
    assert_eq!(
        log.matches("connection limit reached").count(),
        1,
        "one log line when the cap is hit; log:\n{log}"
    );
    assert!(log.contains("max_connections=4"), "the log names the cap; log:\n{log}");
}

// ---------------------------------------------------------------------------
// 2. Log injection and control characters in names
// ---------------------------------------------------------------------------

const FORGED: &str = "l\n2026-12-06T00:00:00Z ERROR forged";

/// True when some line of `log` starts like a log record that says "forged".
fn has_forged_line(log: &str) -> bool {
    log.lines()
        .any(|l| l.starts_with("2026-12-06T00:00:00Z") || l.trim_start().starts_with("ERROR forged"))
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_in_new_paths_are_refused_and_never_reach_the_log() {
    let s = TestServer::start_with_env(&[], &[("CONTEXTFS_LOG", "debug")]).await;
    let token = s.project_with_token("logs").await;
    let hash = s.upload("logs", &token, b"x").await;
    for bad in [
        FORGED,
        "esc\u{1b}[31mred",
        "del\u{7f}",
        "c1\u{85}next",
        "tab\there",
        "dir/\rx",
    ] {
        let err = assert_err(
            s.commit_req("logs", &token, &commit_request(bad, None, hash.clone()))
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_path",
        );
        assert!(err.message.contains("control character"), "{err:?}");
        assert!(
            !err.message.contains('\n') && !err.message.contains('\u{1b}'),
            "{err:?}"
        );
        // mkdir, rename's target and the one-call PUT refuse them too.
        expect_error(
            s.post(&s.purl("logs", "/mkdir"), &token, &serde_json::json!({ "path": bad })),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        )
        .await;
        expect_error(
            s.req(reqwest::Method::PUT, &s.file_url("logs", bad), Some(&token))
                .body("x"),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        )
        .await;
    }
    s.commit("logs", &token, "clean.txt", None, b"x").await.expect("commit");
    expect_error(
        s.post(
            &s.purl("logs", "/rename"),
            &token,
            &serde_json::json!({ "from": "clean.txt", "to": FORGED }),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_path",
    )
    .await;

    // Client text that is logged (agent id, message) comes out escaped.
    let agent = "agent\n2026-12-06T00:00:00Z ERROR forged\u{1b}[2J";
    let mut req = commit_request("note.txt", None, hash.clone());
    req.agent_id = Some(agent.into());
    req.message = Some("msg\r\n\u{1b}]0;title\u{7}".into());
    s.commit_req("logs", &token, &req)
        .await
        .expect("commit with odd agent id");
    let log = eventually("the commit is logged", || async {
        let log = s.log();
        if log.contains("note.txt") {
            Ok(log)
        } else {
            Err("no `committed` line yet".to_string())
        }
    })
    .await;
    assert!(!has_forged_line(&log), "a client value started a log line:\n{log}");
    assert!(!log.contains('\u{1b}'), "an escape sequence reached the log:\n{log:?}");
    assert!(
        !log.contains('\u{7}') && !log.contains('\r'),
        "a control character reached the log:\n{log:?}"
    );
    assert!(
        log.contains(r#"agent=Some("agent\n2026-12-06T00:00:00Z ERROR forged\u{1b}[2J")"#),
        "the agent id is logged quoted and escaped:\n{log}"
    );
    assert!(
        log.contains(r#"commit_message=Some("msg\r\n\u{1b}]0;title\u{7}")"#),
        "the message is logged quoted and escaped:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_stored_before_the_rule_stays_readable() {
    let mut s = TestServer::start_with(&[]).await;
    if s.database().is_some() {
        eprintln!("skipped: this test edits the SQLite database");
        return;
    }
    let token = s.project_with_token("legacy").await;
    s.commit("legacy", &token, "old-name", None, b"kept")
        .await
        .expect("commit");
    s.stop().await;
    // As if the name had been stored before control characters were refused.
    let db = rusqlite::Connection::open(s.data_dir.join("metadata.sqlite3")).expect("open db");
    let legacy = "old\nname";
    db.execute("UPDATE nodes SET path = ?1 WHERE path = 'old-name'", [legacy])
        .expect("rename node");
    db.execute("UPDATE versions SET path = ?1 WHERE path = 'old-name'", [legacy])
        .expect("rename versions");
    drop(db);
    s.restart().await;

    let listing = s.tree("legacy", &token, &[]).await.expect("tree lists the legacy name");
    assert!(listing.entries.iter().any(|e| e.path.as_str() == legacy), "{listing:?}");
    assert_eq!(s.read_bytes("legacy", &token, legacy).await, b"kept");
    assert_eq!(s.history("legacy", &token, legacy).await.len(), 1);
    // It can be renamed away to a clean name, but not written under its old name.
    let hash = s.upload("legacy", &token, b"new").await;
    assert_err(
        s.commit_req("legacy", &token, &commit_request(legacy, None, hash))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    );
    let _: VersionInfo = send(s.post(
        &s.purl("legacy", "/rename"),
        &token,
        &serde_json::json!({ "from": legacy, "to": "new-name" }),
    ))
    .await
    .expect("rename to a clean name");
    assert_eq!(s.read_bytes("legacy", &token, "new-name").await, b"kept");
}

// ---------------------------------------------------------------------------
// 3. Revocation race
// ---------------------------------------------------------------------------

/// `DELETE /tokens/{id}` as the admin; it must answer 204.
async fn revoke(s: &TestServer, id: &str) {
    let resp = s
        .req(
            reqwest::Method::DELETE,
            &s.url(&format!("/tokens/{id}")),
            Some(&s.admin),
        )
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_sent_after_a_revocation_returns_is_authorised() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const ROUNDS: usize = 40;
    const CLIENTS: usize = 6;
    let s = TestServer::start().await;
    s.create_project("revoke").await;
    let (mut late_successes, mut total) = (0usize, 0usize);
    for round in 0..ROUNDS {
        let created = s.token("revoke", Access::ReadWrite).await;
        let stop = Arc::new(AtomicBool::new(false));
        // (sent at, succeeded) of every request.
        let seen = Arc::new(Mutex::new(Vec::<(Instant, bool)>::new()));
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (api, stop, seen, token) = (s.with_own_client(), stop.clone(), seen.clone(), created.token.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let resp = api.get(&api.url("/whoami"), &token).send().await.expect("whoami");
                    seen.lock().unwrap().push((sent, resp.status().is_success()));
                }
            }));
        }
        // Let the token be used (and cached) a little, varying the moment.
        tokio::time::sleep(Duration::from_millis(5 + (round as u64 * 7) % 40)).await;
        revoke(&s, &created.info.id).await;
        let revoked_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("client task");
        }
        let seen = seen.lock().unwrap();
        total += seen.len();
        late_successes += seen.iter().filter(|(sent, ok)| *ok && *sent > revoked_at).count();
        assert!(
            seen.iter().any(|(sent, _)| *sent > revoked_at),
            "round {round}: no request was sent after the revocation"
        );
    }
    eprintln!("{ROUNDS} rounds, {total} requests");
    assert_eq!(late_successes, 0, "requests sent after the 204 were authorised");
}

/// The race itself, made to happen every time: the server holds each
/// token-cache fill 500 ms after its lookup (a test-only delay). A request
/// whose lookup found the token valid is still filling when the DELETE
/// returns; the next request must not be authorised by that late fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_fill_in_flight_during_a_revocation_authorises_nothing_after_it() {
    let s = TestServer::start_with_env(&[], &[("CONTEXTFS_TEST_TOKEN_FILL_DELAY_MS", "500")]).await;
    s.create_project("fill").await;
    let created = s.token("fill", Access::ReadWrite).await;
    let api = s.with_own_client();
    let token = created.token.clone();
    // The first use looks the token up and starts filling the cache.
    let first = tokio::spawn({
        let (api, token) = (api.clone(), token.clone());
        async move {
            api.get(&api.url("/whoami"), &token)
                .send()
                .await
                .expect("whoami")
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    revoke(&s, &created.info.id).await;
    // That request was authorised before the DELETE returned; its fill lands now.
    assert!(first.await.expect("first request").is_success());
    let after = api.get(&api.url("/whoami"), &token).send().await.expect("whoami");
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "a request sent after the revocation returned was authorised"
    );
}

// ---------------------------------------------------------------------------
// 4. Secret and data file modes
// ---------------------------------------------------------------------------

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `contextfs serve` on `data` WITHOUT `CONTEXTFS_ADMIN_TOKEN` (unless
/// given in `env`): `Ok(stderr so far)` once it listens (then stops it), or
/// `Err(stderr)` if it exits first.
fn run_serve(data: &std::path::Path, listen: &str, env: &[(&str, &str)]) -> Result<String, String> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let log = data.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_contextfs"))
        .args(["serve", "--listen", listen, "--data"])
        .arg(data)
        .env_remove(contextfs::server::ADMIN_TOKEN_ENV)
        .env("CONTEXTFS_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let listening = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("listening on "));
    if listening {
        let _ = child.kill();
    }
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    if listening {
        Ok(stderr)
    } else {
        Err(stderr)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn data_directory_database_and_blobs_are_private() {
    let s = TestServer::start().await;
    let token = s.project_with_token("modes").await;
    s.commit("modes", &token, "f.txt", None, b"private bytes")
        .await
        .expect("commit");
    assert_eq!(mode_of(&s.data_dir), 0o700, "data directory");
    if s.database().is_none() {
        assert_eq!(mode_of(&s.data_dir.join("metadata.sqlite3")), 0o600, "database");
    }
    let mut checked = 0;
    let mut dirs = vec![s.data_dir.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                assert_eq!(mode_of(&path), 0o700, "{}", path.display());
                dirs.push(path);
            } else {
                assert_eq!(mode_of(&path), 0o600, "{}", path.display());
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 2,
        "expected a database and a blob under {}",
        s.data_dir.display()
    );
}

#[test]
fn the_admin_token_file_is_0600_and_a_readable_one_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");

    // Generated on first start: 0600.
    let fresh = root.path().join("fresh");
    run_serve(&fresh, "127.0.0.1:0", &[]).expect("serve on a fresh directory");
    assert_eq!(mode_of(&fresh.join("admin-token")), 0o600);
    assert_eq!(mode_of(&fresh), 0o700);

    // An existing empty file gets the secret and mode 0600.
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    std::fs::write(empty.join("admin-token"), "").expect("write");
    set_mode(&empty.join("admin-token"), 0o644);
    run_serve(&empty, "127.0.0.1:0", &[]).expect("serve with an empty token file");
    assert_eq!(mode_of(&empty.join("admin-token")), 0o600);
    assert!(std::fs::read_to_string(empty.join("admin-token"))
        .unwrap()
        .starts_with("cfs_admin_"));

    // A secret others can read: refused, naming the fix.
    set_mode(&empty.join("admin-token"), 0o640);
    let err = run_serve(&empty, "127.0.0.1:0", &[]).expect_err("a group-readable secret must be refused");
    assert!(err.contains("chmod 600"), "{err}");
    set_mode(&empty.join("admin-token"), 0o604);
    let err = run_serve(&empty, "127.0.0.1:0", &[]).expect_err("a world-readable secret must be refused");
    assert!(err.contains("chmod 600"), "{err}");
    set_mode(&empty.join("admin-token"), 0o600);
    run_serve(&empty, "127.0.0.1:0", &[]).expect("after chmod 600 it starts");

    // A short admin secret is refused, saying why.
    let err = run_serve(
        &root.path().join("short"),
        "127.0.0.1:0",
        &[(contextfs::server::ADMIN_TOKEN_ENV, "hunter2")],
    )
    .expect_err("a 7-character admin secret must be refused");
    assert!(err.contains("at least 16"), "{err}");
}

#[test]
fn listening_beyond_loopback_warns_once_about_tls() {
    let root = tempfile::tempdir().expect("tempdir");
    let local = run_serve(&root.path().join("a"), "127.0.0.1:0", &[]).expect("serve on loopback");
    assert!(!local.contains("without TLS"), "{local}");
    let open = run_serve(&root.path().join("b"), "0.0.0.0:0", &[]).expect("serve on 0.0.0.0");
    assert_eq!(open.matches("without TLS").count(), 1, "{open}");
}

// ---------------------------------------------------------------------------
// 5. Tokens never on a command line
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn tokens_come_from_the_environment_a_file_or_login_and_token_flag_warns() {
    use std::process::Command;
    let s = TestServer::start().await;
    s.create_project("cli").await;
    let home = tempfile::tempdir().expect("tempdir");
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_contextfs"))
            .args(args)
            .env_remove("CONTEXTFS_TOKEN")
            .env_remove("CONTEXTFS_TOKEN_FILE")
            .env_remove("CONTEXTFS_PROJECT")
            .env("CONTEXTFS_SERVER", &s.base)
            .env("XDG_CONFIG_HOME", home.path())
            .envs(env.iter().copied())
            .output()
            .expect("run contextfs");
        (out.status.success(), stdout(&out), stderr(&out))
    };
    const WARNING: &str = "other users can see it";

    let (ok, out, err) = cli(&["project", "list"], &[("CONTEXTFS_TOKEN", &s.admin)]);
    assert!(ok && out.contains("cli"), "{out}{err}");
    assert!(!err.contains(WARNING), "{err}");

    let (ok, out, err) = cli(&["--token", &s.admin, "project", "list"], &[]);
    assert!(ok && out.contains("cli"), "{out}{err}");
    assert_eq!(err.matches(WARNING).count(), 1, "--token must warn once: {err}");
    assert!(
        !out.contains(WARNING),
        "the warning goes to stderr, not into parsed output"
    );

    let file = home.path().join("token");
    std::fs::write(&file, format!("{}\n", s.admin)).expect("write token file");
    let file = file.to_str().expect("utf-8 path");
    let (ok, out, err) = cli(&["--token-file", file, "project", "list"], &[]);
    assert!(ok && out.contains("cli"), "{out}{err}");
    assert!(!err.contains(WARNING), "{err}");
    let (ok, out, err) = cli(&["project", "list"], &[("CONTEXTFS_TOKEN_FILE", file)]);
    assert!(ok && out.contains("cli"), "{out}{err}");

    // `contextfs login` saves it (0600) and later commands need nothing else.
    let (ok, out, err) = cli(&["login"], &[("CONTEXTFS_TOKEN", &s.admin)]);
    assert!(ok, "{out}{err}");
    let config = home.path().join("contextfs").join("config.toml");
    assert_eq!(mode_of(&config), 0o600);
    let (ok, out, err) = cli(&["project", "list"], &[]);
    assert!(ok && out.contains("cli"), "{out}{err}");
    assert!(!err.contains(WARNING), "{err}");

    let (ok, _, err) = cli(&["--token-file", "/nonexistent/token", "project", "list"], &[]);
    assert!(!ok && err.contains("cannot read the token file"), "{err}");
}

// ---------------------------------------------------------------------------
// 6. Blob de-duplication does not leak across projects
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_another_project_stored_is_created_for_this_one() {
    let s = TestServer::start().await;
    let a = s.project_with_token("dedup-a").await;
    let b = s.project_with_token("dedup-b").await;
    let bytes = b"the same secret bytes in two projects".to_vec();
    let hash = hash_of(&bytes);
    let put = |project: &'static str, token: String| {
        let rb = s.put_blob_request(project, &token, &hash, bytes.clone());
        async move { send_with_status::<BlobReceipt>(rb).await.expect("upload") }
    };
    let (status, receipt) = put("dedup-a", a.clone()).await;
    assert_eq!((status, receipt.created), (StatusCode::CREATED, true));
    // Project b cannot tell that a has these bytes.
    let (status, receipt) = put("dedup-b", b.clone()).await;
    assert_eq!((status, receipt.created), (StatusCode::CREATED, true));
    // A repeat within one project is not new.
    let (status, receipt) = put("dedup-b", b.clone()).await;
    assert_eq!((status, receipt.created), (StatusCode::OK, false));
    let (status, receipt) = put("dedup-a", a.clone()).await;
    assert_eq!((status, receipt.created), (StatusCode::OK, false));
}
