//! `/metrics` and `contextfs status --json`.

use super::*;

// ----- metrics -----

async fn metrics_text(url: &str) -> (StatusCode, String) {
    let resp = new_http_client().get(url).send().await.expect("GET /metrics");
    let status = resp.status();
    (status, resp.text().await.expect("metrics body"))
}

/// The value of the sample line that starts with `series` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Requests by route template and status, latency histograms, merge
/// outcomes, blob bytes and GC results, with no project name, path, token
/// or body anywhere on the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_reveal_no_names() {
    let server = TestServer::start_with(&["--gc-grace", GRACE]).await;
    let token = server.project_with_token("secret-project-name").await;
    let p = "secret-project-name";
    let v1 = server
        .commit(p, &token, "private/plan.md", None, b"a\nb\nc\n")
        .await
        .expect("v1");
    server
        .commit(p, &token, "private/plan.md", Some(v1.version), b"A\nb\nc\n")
        .await
        .expect("v2");
    let merged = server
        .commit(
            p,
            &token,
            "private/plan.md",
            Some(v1.version),
            b"a\nb\nconfidential body\n",
        )
        .await
        .expect("v3");
    assert_eq!(merged.status, VersionStatus::Merged);
    server.read(p, &token, "private/plan.md", None).await.expect("checkout");
    server.read(p, &token, "no/such/file", None).await.expect_err("404");
    gc(&server, false).await;

    let (status, text) = metrics_text(&format!("{}/metrics", server.base)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let commit_200 =
        "contextfs_http_requests_total{route=\"/api/v1/projects/{project}/commit\",method=\"POST\",status=\"200\"}";
    assert_eq!(sample(&text, commit_200), 3.0, "{text}");
    let checkout_404 =
        "contextfs_http_requests_total{route=\"/api/v1/projects/{project}/files/{*path}\",method=\"GET\",status=\"404\"}";
    assert_eq!(sample(&text, checkout_404), 1.0, "{text}");
    assert_eq!(
        sample(&text, "contextfs_commits_total{outcome=\"clean\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "contextfs_commits_total{outcome=\"merged\"}"),
        1.0,
        "{text}"
    );
    for op in ["commit", "checkout", "blob_put"] {
        let count = format!("contextfs_request_duration_seconds_count{{operation=\"{op}\"}}");
        assert!(sample(&text, &count) >= 1.0, "no {op} latency: {text}");
    }
    assert!(
        text.contains("contextfs_request_duration_seconds_bucket{le=\"0.001\",operation=\"commit\"}")
            || text.contains("contextfs_request_duration_seconds_bucket{operation=\"commit\",le=\"0.001\"}"),
        "no commit latency buckets: {text}"
    );
    assert_eq!(sample(&text, "contextfs_gc_runs_total"), 1.0, "{text}");
    assert!(sample(&text, "contextfs_blob_stored_bytes") > 0.0, "{text}");
    assert!(text.contains("contextfs_changefeed_waiters"), "{text}");
    for secret in [
        p,
        "private",
        "plan.md",
        "confidential",
        token.as_str(),
        server.admin.as_str(),
    ] {
        assert!(!text.contains(secret), "/metrics shows {secret:?}:\n{text}");
    }
}

/// A non-loopback IPv4 address of this machine, if it has one.
fn outside_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// `/metrics` answers loopback peers only; `--metrics-listen` moves it to a
/// listener of its own (and off the main one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_loopback_only_unless_given_their_own_listener() {
    let data = tempfile::tempdir().expect("temp dir");
    let wide = TestServer::start_on(data.path().join("wide"), vec![]).await;
    // start_on listens on 127.0.0.1: from there it answers.
    let (status, _) = metrics_text(&format!("{}/metrics", wide.base)).await;
    assert_eq!(status, StatusCode::OK);
    drop(wide);

    if let Some(ip) = outside_address() {
        // A server on every interface, asked from a non-loopback address.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_contextfs"))
            .args(["serve", "--listen", "0.0.0.0:0", "--data"])
            .arg(data.path().join("open"))
            .env(contextfs::server::ADMIN_TOKEN_ENV, ADMIN_TOKEN)
            .env("CONTEXTFS_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("serve");
        let stdout = child.stdout.take().expect("stdout");
        let port = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout).lines().find_map(|l| {
                l.ok()?
                    .strip_prefix("listening on http://")?
                    .rsplit(':')
                    .next()?
                    .parse::<u16>()
                    .ok()
            })
        })
        .await
        .expect("read stdout")
        .expect("listening line");
        let (outside, _) = metrics_text(&format!("http://{ip}:{port}/metrics")).await;
        let (inside, _) = metrics_text(&format!("http://127.0.0.1:{port}/metrics")).await;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(outside, StatusCode::NOT_FOUND, "metrics answered {ip}");
        assert_eq!(inside, StatusCode::OK);
    } else {
        eprintln!("no non-loopback address on this machine: the outside peer check is skipped");
    }

    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let separate = TestServer::start_with(&["--metrics-listen", &listen]).await;
    let (main, _) = metrics_text(&format!("{}/metrics", separate.base)).await;
    assert_eq!(
        main,
        StatusCode::NOT_FOUND,
        "with --metrics-listen the main listener has no /metrics"
    );
    let (own, text) = metrics_text(&format!("http://{listen}/metrics")).await;
    assert_eq!(own, StatusCode::OK);
    assert!(text.contains("contextfs_http_requests_total"), "{text}");
}

/// The change-feed waiter gauge counts a long-poll while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_change_feed_waiters() {
    let server = Arc::new(TestServer::start().await);
    let token = server.project_with_token("feed").await;
    let cursor = server.changes("feed", &token, 0, 0).await.expect("cursor").cursor;
    let waiting = {
        let (server, token) = (server.clone(), token.clone());
        tokio::spawn(async move { server.changes("feed", &token, cursor, 20_000).await })
    };
    let url = format!("{}/metrics", server.base);
    eventually("one waiter shows", || async {
        let (_, text) = metrics_text(&url).await;
        (sample(&text, "contextfs_changefeed_waiters") == 1.0)
            .then_some(())
            .ok_or(text)
    })
    .await;
    server
        .commit("feed", &token, "wake.txt", None, b"x")
        .await
        .expect("commit");
    waiting.await.expect("long-poll").expect("woken");
    let (_, text) = metrics_text(&url).await;
    assert_eq!(sample(&text, "contextfs_changefeed_waiters"), 0.0, "{text}");
}

// ----- mount status -----

/// Leaves no mount behind, even when the test fails halfway.
struct Unmount(String);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-z", &self.0])
            .output();
    }
}

/// `contextfs status --json`: queue depth and lag, the cache's use and hit
/// counts, the feed cursor and the passthrough mode, while the server is up
/// and while it is down with a change queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_status_json_reports_queue_cache_and_lag() {
    require_fuse();
    let mut server = TestServer::start().await;
    let token = server.project_with_token("mnt").await;
    server
        .commit("mnt", &token, "seed.txt", None, b"seed\n")
        .await
        .expect("seed");
    let root = tempfile::tempdir().expect("temp dir");
    let ws = root.path().join("ws");
    let ws_arg = ws.display().to_string();
    let base = server.base.clone();
    let env = ClientEnv {
        root: root.path(),
        server: &base,
        token: &token,
        project: "mnt",
    };
    let run = |args: &[&str]| {
        isolated_command(env!("CARGO_BIN_EXE_contextfs"), &env)
            .args(args)
            .output()
            .expect("contextfs")
    };
    // The first mount fetches seed.txt into the machine's blob cache; the
    // second finds it there (a hit).
    let _unmount = Unmount(ws_arg.clone());
    let mounted = run(&["mount", "--daemon", &ws_arg]);
    assert!(mounted.status.success(), "{}", both(&mounted));
    assert_eq!(std::fs::read(ws.join("seed.txt")).expect("read"), b"seed\n");
    let out = run(&["umount", &ws_arg]);
    assert!(out.status.success(), "{}", both(&out));
    let mounted = run(&["mount", "--daemon", &ws_arg]);
    assert!(mounted.status.success(), "{}", both(&mounted));
    assert_eq!(std::fs::read(ws.join("seed.txt")).expect("read again"), b"seed\n");

    let status = |run: &dyn Fn(&[&str]) -> Output| -> serde_json::Value {
        let out = run(&["status", "--json", &ws_arg]);
        assert!(out.status.success(), "{}", both(&out));
        json_of(&stdout(&out))
    };
    let idle = status(&run);
    assert_eq!(idle["project"], "mnt");
    assert_eq!(idle["online"], true);
    assert_eq!(
        (idle["queue_depth"].as_u64(), idle["commit_lag_ms"].as_i64()),
        (Some(0), Some(0))
    );
    assert!(idle["oldest_queued_age_ms"].is_null());
    assert!(idle["passthrough"].is_string());
    assert!(idle["feed_cursor"].as_i64().is_some_and(|c| c >= 1), "{idle}");
    let cache = &idle["cache"];
    assert!(cache["bytes_cached"].as_u64().is_some_and(|b| b >= 5), "{idle}");
    assert!(cache["blobs"].as_u64().is_some_and(|b| b >= 1), "{idle}");
    assert!(
        cache["hits"].as_u64().is_some_and(|h| h >= 1),
        "the second mount's read is a hit: {idle}"
    );
    assert!(
        cache["hit_ratio"].as_f64().is_some_and(|r| r > 0.0 && r <= 1.0),
        "{idle}"
    );

    server.stop().await;
    std::fs::write(ws.join("offline.txt"), b"written while the server is down\n").expect("write");
    let queued = eventually("the change is queued", || async {
        let s = status(&run);
        if s["queue_depth"].as_u64() == Some(1) {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    assert_eq!(queued["queued"][0]["path"], "offline.txt");
    let age = queued["oldest_queued_age_ms"]
        .as_i64()
        .expect("an age while something is queued");
    assert!(age >= 0 && queued["commit_lag_ms"].as_i64() == Some(age), "{queued}");

    server.restart_on_same_port().await;
    eventually("the queued change is committed", || async {
        let s = status(&run);
        (s["queue_depth"].as_u64() == Some(0))
            .then_some(())
            .ok_or(s.to_string())
    })
    .await;
    let out = run(&["umount", &ws_arg]);
    assert!(out.status.success(), "{}", both(&out));
}
