//! Operating contextfs (issue 17): blob garbage collection, retention,
//! metrics, project history and the machine-readable CLI, against a real
//! `contextfs serve`.
//!
//! Every test runs on SQLite and a blob folder by default; `scripts/test`
//! runs this suite again with `CONTEXTFS_TEST_DATABASE` (PostgreSQL) and
//! `CONTEXTFS_TEST_BLOBS=s3`, where the test servers keep their metadata in
//! PostgreSQL and their blobs in S3.

mod common;

use std::collections::HashMap;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use contextfs::api::*;
use reqwest::{Method, StatusCode};

/// The grace period of the GC test servers: short, so tests can wait it out.
const GRACE: &str = "2s";
const PAST_GRACE: Duration = Duration::from_millis(2500);

/// Runs `contextfs ARGS` against `server` with `token` (and `project`).
fn cli(server: &TestServer, token: &str, project: &str, args: &[&str]) -> Output {
    let root = tempfile::tempdir().expect("temp dir");
    let env = ClientEnv {
        root: root.path(),
        server: &server.base,
        token,
        project,
    };
    isolated_command(env!("CARGO_BIN_EXE_contextfs"), &env)
        .args(args)
        .output()
        .expect("run contextfs")
}

fn cli_ok(server: &TestServer, token: &str, project: &str, args: &[&str]) -> String {
    let out = cli(server, token, project, args);
    assert!(out.status.success(), "contextfs {args:?} failed: {}", both(&out));
    stdout(&out)
}

fn json_of<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not the documented JSON ({e}):\n{text}"))
}

async fn gc(server: &TestServer, dry_run: bool) -> GcReport {
    send(server.post(&server.url("/gc"), &server.admin, &GcRequest { dry_run }))
        .await
        .unwrap_or_else(|e| panic!("POST /gc: {e:?}"))
}

async fn set_retention(server: &TestServer, project: &str, days: Option<i64>, versions: Option<i64>) -> RetentionInfo {
    let req = RetentionRequest {
        keep_days: days,
        keep_versions: versions,
    };
    send(
        server
            .req(Method::PUT, &server.purl(project, "/retention"), Some(&server.admin))
            .json(&req),
    )
    .await
    .unwrap_or_else(|e| panic!("PUT retention: {e:?}"))
}

/// The server keeps its blobs in S3 (`CONTEXTFS_TEST_BLOBS=s3`).
fn blobs_in_s3() -> bool {
    std::env::var("CONTEXTFS_TEST_BLOBS").is_ok_and(|v| v == "s3")
}

// ----- garbage collection -----

/// An upload nobody commits goes once the grace period is over; blobs that
/// any version refers to stay, and every version reads back. A dry run
/// reports the same and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_only_unreferenced_blobs_past_the_grace_period() {
    let server = TestServer::start_with(&["--gc-grace", GRACE]).await;
    let token = server.project_with_token("gc").await;
    let v1 = server
        .commit("gc", &token, "notes.md", None, b"first\n")
        .await
        .expect("v1");
    let v2 = server
        .commit("gc", &token, "notes.md", Some(v1.version), b"second\n")
        .await
        .expect("v2");
    let orphan = server.upload("gc", &token, b"uploaded, never committed").await;

    // Within the grace period the orphan stays, even for a real run.
    let early = gc(&server, false).await;
    assert_eq!(early.blobs_deleted, 0, "{early:?}");
    assert!(early.blobs_in_grace >= 1, "{early:?}");
    server
        .get_blob("gc", &token, orphan.as_str())
        .await
        .expect("orphan kept in grace");

    tokio::time::sleep(PAST_GRACE).await;
    let dry = gc(&server, true).await;
    assert!(dry.dry_run);
    assert_eq!(dry.deleted, vec![orphan.clone()], "{dry:?}");
    assert_eq!(dry.bytes_freed, b"uploaded, never committed".len() as u64);
    server
        .get_blob("gc", &token, orphan.as_str())
        .await
        .expect("a dry run deletes nothing");

    let real = gc(&server, false).await;
    assert_eq!(real.deleted, vec![orphan.clone()], "{real:?}");
    assert_eq!(real.blobs_referenced, 2, "{real:?}");
    assert!(real.missing.is_empty() && real.corrupt.is_empty(), "{real:?}");
    server
        .get_blob("gc", &token, orphan.as_str())
        .await
        .expect_err("the orphan is gone (and no longer the project's)");
    for (version, bytes) in [(v1.version, &b"first\n"[..]), (v2.version, b"second\n")] {
        let read = server
            .read("gc", &token, "notes.md", Some(version))
            .await
            .expect("read");
        assert_eq!(read.bytes, bytes, "version {version}");
    }
    // Committing by the deleted hash is refused cleanly; uploading it again works.
    let refused = server
        .commit_req("gc", &token, &commit_request("orphan.txt", None, orphan.clone()))
        .await
        .expect_err("the project no longer holds the blob");
    assert_eq!(refused.code, "blob_missing", "{refused:?}");
    server
        .commit("gc", &token, "orphan.txt", None, b"uploaded, never committed")
        .await
        .expect("upload again and commit");
    assert_eq!(
        server.read_bytes("gc", &token, "orphan.txt").await,
        b"uploaded, never committed"
    );
    assert_eq!(gc(&server, true).await.blobs_deleted, 0);
}

/// Writers commit without pause while GC runs again and again (with
/// retention pruning old versions, so GC has real work): no GC run finds a
/// referenced blob missing, every version history still lists reads back
/// with the bytes committed, and once the writers stop and the grace period
/// passes, storage holds exactly the referenced blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_while_commits_stream_in_loses_no_version() {
    let server = Arc::new(TestServer::start_with(&["--gc-grace", GRACE]).await);
    let token = server.project_with_token("busy").await;
    set_retention(&server, "busy", None, Some(3)).await;
    let stop = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..3 {
        let (server, token, stop) = (server.clone(), token.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let path = format!("w{w}.txt");
            let mut committed: HashMap<i64, Vec<u8>> = HashMap::new();
            let mut head: Option<i64> = None;
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) || n < 20 {
                // Every fourth commit brings back the content of eight
                // revisions ago, whose blob GC may just have freed.
                let body = if n % 4 == 3 && n >= 8 {
                    format!("writer {w} revision {}\n", n - 8).into_bytes()
                } else {
                    format!("writer {w} revision {n}\n").into_bytes()
                };
                let v = server
                    .commit("busy", &token, &path, head, &body)
                    .await
                    .unwrap_or_else(|e| panic!("writer {w} commit {n}: {e:?}"));
                committed.insert(v.version, body);
                head = Some(v.version);
                if n % 5 == 0 {
                    server
                        .upload("busy", &token, format!("garbage {w} {n}").as_bytes())
                        .await;
                }
                n += 1;
            }
            (path, committed, head)
        }));
    }
    let collector = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                runs.push(gc(&server, false).await);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            runs
        })
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let runs = collector.await.expect("collector");
    let mut results = Vec::new();
    for w in writers {
        results.push(w.await.expect("writer"));
    }
    for run in &runs {
        assert!(
            run.missing.is_empty() && run.corrupt.is_empty(),
            "a GC run during the writes found damage: {run:?}"
        );
    }
    assert!(runs.len() >= 3, "GC ran {} times", runs.len());

    tokio::time::sleep(PAST_GRACE).await;
    let last = gc(&server, false).await;
    assert!(last.missing.is_empty() && last.corrupt.is_empty(), "{last:?}");
    let freed: u64 = runs.iter().map(|r| r.blobs_deleted).sum::<u64>() + last.blobs_deleted;
    let pruned: u64 = runs.iter().map(|r| r.versions_pruned).sum::<u64>() + last.versions_pruned;
    assert!(
        freed > 0 && pruned > 0,
        "GC had nothing to do: freed {freed}, pruned {pruned}"
    );

    for (path, committed, head) in results {
        let history = server.history("busy", &token, &path).await;
        assert_eq!(
            history.first().map(|v| v.version),
            head,
            "{path}: the head is the last commit"
        );
        assert!(
            history.len() >= 3,
            "{path}: retention keeps 3 versions, history has {}",
            history.len()
        );
        for v in &history {
            let read = server
                .read("busy", &token, &path, Some(v.version))
                .await
                .unwrap_or_else(|e| panic!("{path} version {} listed in history but unreadable: {e:?}", v.version));
            assert_eq!(
                Some(&read.bytes),
                committed.get(&v.version),
                "{path} version {} reads back other bytes",
                v.version
            );
        }
    }
    // Storage now holds exactly what versions refer to.
    let settled = gc(&server, true).await;
    assert_eq!(settled.blobs_deleted, 0, "{settled:?}");
    assert_eq!(settled.blobs_in_grace, 0, "{settled:?}");
    assert_eq!(settled.blobs_scanned, settled.blobs_referenced, "{settled:?}");
}

/// A referenced blob that vanished or changed size is reported (and `gc`
/// exits 1), never deleted; a file in the blob folder that is not a blob is
/// left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_reports_missing_and_damaged_blobs_and_deletes_neither() {
    if blobs_in_s3() {
        eprintln!("skipped on S3: this test edits the blob folder");
        return;
    }
    let server = TestServer::start_with(&["--gc-grace", GRACE]).await;
    let token = server.project_with_token("damaged").await;
    let lost = server
        .commit("damaged", &token, "lost.txt", None, b"lost bytes\n")
        .await
        .expect("commit");
    let torn = server
        .commit("damaged", &token, "torn.txt", None, b"torn bytes\n")
        .await
        .expect("commit");
    let blob_file = |hash: &contextfs::model::BlobHash| {
        server
            .data_dir
            .join("blobs")
            .join(&hash.as_str()[..2])
            .join(hash.as_str())
    };
    std::fs::remove_file(blob_file(&lost.hash)).expect("lose a blob");
    std::fs::write(blob_file(&torn.hash), b"torn").expect("truncate a blob");
    let stray = server.data_dir.join("blobs").join("ab").join("notes-from-an-admin.txt");
    std::fs::write(&stray, b"not a blob").expect("stray file");
    tokio::time::sleep(PAST_GRACE).await;

    let report = gc(&server, false).await;
    assert_eq!(report.missing, vec![lost.hash.clone()], "{report:?}");
    assert_eq!(
        report.corrupt,
        vec![CorruptBlob {
            hash: torn.hash.clone(),
            expected_size: b"torn bytes\n".len() as u64,
            stored_size: 4,
        }],
        "{report:?}"
    );
    assert_eq!(report.unrecognised, vec!["ab/notes-from-an-admin.txt".to_string()]);
    assert_eq!(report.blobs_deleted, 0, "{report:?}");
    assert!(blob_file(&torn.hash).exists(), "a damaged referenced blob is kept");
    assert!(stray.exists(), "a file that is not a blob is kept");

    let out = cli(&server, &server.admin, "damaged", &["gc"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("MISSING  {}", lost.hash)), "{text}");
    assert!(text.contains(&format!("CORRUPT  {}", torn.hash)), "{text}");
    assert!(stderr(&out).contains("restore them from a backup"), "{}", both(&out));
}

/// `contextfs gc --dry-run` says what would go; `gc` frees it and says so;
/// `--json` prints the report. A project token may not run GC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_command_prints_what_it_freed() {
    let server = TestServer::start_with(&["--gc-grace", GRACE]).await;
    let token = server.project_with_token("cmd").await;
    server.upload("cmd", &token, &[7u8; 3000]).await;
    tokio::time::sleep(PAST_GRACE).await;

    let dry = cli_ok(&server, &server.admin, "cmd", &["gc", "--dry-run"]);
    assert!(
        dry.contains("would delete 1 unreferenced blobs, 2.9 KiB to free"),
        "{dry}"
    );
    let real = cli_ok(&server, &server.admin, "cmd", &["gc"]);
    assert!(real.contains("deleted 1 unreferenced blobs, 2.9 KiB freed"), "{real}");
    let report: GcReport = json_of(&cli_ok(&server, &server.admin, "cmd", &["gc", "--json"]));
    assert_eq!((report.blobs_deleted, report.dry_run), (0, false));

    let denied = cli(&server, &token, "cmd", &["gc"]);
    assert!(!denied.status.success(), "{}", both(&denied));
    assert!(stderr(&denied).contains("admin"), "{}", both(&denied));
}

/// `serve --gc-interval` collects on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_gc_interval_collects_on_a_schedule() {
    let server = TestServer::start_with(&["--gc-grace", "1s", "--gc-interval", "1s"]).await;
    let token = server.project_with_token("sched").await;
    let orphan = server.upload("sched", &token, b"scheduled for deletion").await;
    eventually("the scheduled GC deletes the orphan", || async {
        match server.get_blob("sched", &token, orphan.as_str()).await {
            Err(_) => Ok(()),
            Ok(_) => Err("still there".to_string()),
        }
    })
    .await;
}

// ----- retention -----

async fn commit_series(server: &TestServer, project: &str, token: &str, path: &str, count: usize) -> Vec<VersionInfo> {
    let mut out: Vec<VersionInfo> = Vec::new();
    for n in 0..count {
        let base = out.last().map(|v| v.version);
        let v = server
            .commit(project, token, path, base, format!("{path} revision {n}\n").as_bytes())
            .await
            .expect("commit");
        out.push(v);
    }
    out
}

/// keep-versions prunes a file's old versions, which leave history with a
/// `pruned before version N` marker; heads, the version a live file was last
/// merged from and young lww losers stay; audit rows stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_versions_and_keeps_what_it_promises() {
    let server = TestServer::start_with(&["--gc-grace", GRACE]).await;
    let token = server.project_with_token("kept").await;
    let plain = commit_series(&server, "kept", &token, "plain.md", 6).await;

    // merged.md: v1 base, v2 by one writer, v3 merged from a writer still on v1.
    let m1 = server
        .commit("kept", &token, "merged.md", None, b"a\nb\nc\n")
        .await
        .expect("m1");
    let m2 = server
        .commit("kept", &token, "merged.md", Some(m1.version), b"A\nb\nc\n")
        .await
        .expect("m2");
    let m3 = server
        .commit("kept", &token, "merged.md", Some(m1.version), b"a\nb\nC\n")
        .await
        .expect("m3");
    assert_eq!(m3.status, VersionStatus::Merged);
    // lww.bin: v2's bytes lose to a conflicting binary write based on v1.
    let l1 = server
        .commit("kept", &token, "lww.bin", None, &[0u8, 1])
        .await
        .expect("l1");
    let l2 = server
        .commit("kept", &token, "lww.bin", Some(l1.version), &[0u8, 2])
        .await
        .expect("l2");
    let l3 = server
        .commit("kept", &token, "lww.bin", Some(l1.version), &[0u8, 3])
        .await
        .expect("l3");
    assert_eq!(l3.status, VersionStatus::Lww);
    let audit_before: AuditPage = send(
        server
            .get(&server.purl("kept", "/audit"), &server.admin)
            .query(&[("limit", "1000")]),
    )
    .await
    .expect("audit");

    let info = set_retention(&server, "kept", Some(30), Some(1)).await;
    assert_eq!(info.source, "project");
    assert_eq!(
        info.effective,
        Some(RetentionPolicy {
            keep_days: Some(30),
            keep_versions: Some(1)
        })
    );
    let report = gc(&server, false).await;
    // plain.md: 5 old versions; merged.md: only v1 (v2 is what v3 merged
    // against); lww.bin: only v1 (v2 is a young lww loser).
    assert_eq!(report.versions_pruned, 7, "{report:?}");
    assert_eq!(report.pruned.len(), 1);

    let versions = |h: Vec<VersionInfo>| h.iter().map(|v| v.version).collect::<Vec<_>>();
    assert_eq!(
        versions(server.history("kept", &token, "plain.md").await),
        vec![plain[5].version]
    );
    assert_eq!(
        versions(server.history("kept", &token, "merged.md").await),
        vec![m3.version, m2.version]
    );
    assert_eq!(
        versions(server.history("kept", &token, "lww.bin").await),
        vec![l3.version, l2.version]
    );
    let page = server
        .history_page("kept", &token, "plain.md", None, None)
        .await
        .expect("history");
    assert_eq!(
        page.pruned,
        vec![PrunedGap {
            before: plain[5].version,
            count: 5
        }]
    );
    let log = cli_ok(&server, &token, "kept", &["log", "plain.md"]);
    assert!(
        log.contains("pruned before version 6 (5 version(s) removed by retention)"),
        "{log}"
    );
    assert_eq!(
        server.read_bytes("kept", &token, "plain.md").await,
        b"plain.md revision 5\n"
    );
    let gone = server.read("kept", &token, "plain.md", Some(plain[0].version)).await;
    assert_eq!(gone.expect_err("pruned").status, StatusCode::NOT_FOUND);

    // Audit rows stay, and the pruning itself is audited.
    let audit_after: AuditPage = send(
        server
            .get(&server.purl("kept", "/audit"), &server.admin)
            .query(&[("limit", "1000")]),
    )
    .await
    .expect("audit");
    for entry in &audit_before.entries {
        assert!(
            audit_after
                .entries
                .iter()
                .any(|e| e.seq == entry.seq && e.action == entry.action),
            "audit row {entry:?} vanished"
        );
    }
    assert!(
        audit_after.entries.iter().any(|e| e.action == "prune"),
        "{audit_after:?}"
    );

    // The pruned blobs go with the next GC past the grace period; the kept ones read.
    tokio::time::sleep(PAST_GRACE).await;
    let swept = gc(&server, false).await;
    assert!(swept.blobs_deleted >= 5, "{swept:?}");
    assert_eq!(server.read_bytes("kept", &token, "lww.bin").await, vec![0u8, 3]);
    let loser = server
        .read("kept", &token, "lww.bin", Some(l2.version))
        .await
        .expect("lww loser");
    assert_eq!(loser.bytes, vec![0u8, 2]);

    // A writer still on a pruned base: the commit lands (last writer wins).
    let late = server
        .commit("kept", &token, "plain.md", Some(plain[1].version), b"late edit\n")
        .await
        .expect("a commit on a pruned base still lands");
    assert_eq!(late.status, VersionStatus::Lww);
    assert_eq!(server.read_bytes("kept", &token, "plain.md").await, b"late edit\n");
}

/// 0 and negative limits are refused with the reason, over HTTP and the CLI;
/// only the admin sets a policy; any project token reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_refuses_zero_and_negative_limits() {
    let server = TestServer::start().await;
    let token = server.project_with_token("limits").await;
    for (days, versions, field) in [
        (Some(0), None, "keep_days"),
        (None, Some(-2), "keep_versions"),
        (Some(-1), Some(3), "keep_days"),
    ] {
        let err = expect_error(
            server
                .req(Method::PUT, &server.purl("limits", "/retention"), Some(&server.admin))
                .json(&RetentionRequest {
                    keep_days: days,
                    keep_versions: versions,
                }),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        )
        .await;
        assert!(err.message.contains(&format!("{field} must be at least 1")), "{err:?}");
    }
    let out = cli(
        &server,
        &server.admin,
        "limits",
        &["project", "set", "limits", "--keep-days", "-3"],
    );
    assert!(!out.status.success(), "{}", both(&out));
    assert!(
        stderr(&out).contains("keep_days must be at least 1 (got -3)"),
        "{}",
        both(&out)
    );

    expect_error(
        server
            .req(Method::PUT, &server.purl("limits", "/retention"), Some(&token))
            .json(&RetentionRequest {
                keep_days: Some(3),
                keep_versions: None,
            }),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let set = cli_ok(
        &server,
        &server.admin,
        "limits",
        &["project", "set", "limits", "--keep-days", "14", "--keep-versions", "20"],
    );
    assert!(
        set.contains("keep 14 days and at most 20 versions per file (the project's policy)"),
        "{set}"
    );
    let shown: RetentionInfo = json_of(&cli_ok(
        &server,
        &token,
        "limits",
        &["project", "show", "limits", "--json"],
    ));
    assert_eq!(shown.policy.and_then(|p| p.keep_days), Some(14));
    let cleared = cli_ok(
        &server,
        &server.admin,
        "limits",
        &["project", "set", "limits", "--clear"],
    );
    assert!(cleared.contains("keep every version (no policy)"), "{cleared}");
}

/// `serve --keep-versions` applies to projects without a policy of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_default_retention_applies_to_projects_without_a_policy() {
    let server = TestServer::start_with(&["--keep-versions", "2"]).await;
    let token = server.project_with_token("defaulted").await;
    let own = server.project_with_token("own").await;
    commit_series(&server, "defaulted", &token, "a.txt", 4).await;
    commit_series(&server, "own", &own, "a.txt", 4).await;
    set_retention(&server, "own", None, Some(3)).await;
    let info: RetentionInfo = send(server.get(&server.purl("defaulted", "/retention"), &token))
        .await
        .expect("retention");
    assert_eq!((info.source.as_str(), info.policy), ("server_default", None));

    let report = gc(&server, false).await;
    let pruned: HashMap<String, u64> = report.pruned.iter().map(|p| (p.project.clone(), p.versions)).collect();
    assert_eq!(pruned.get("defaulted"), Some(&2), "{report:?}");
    assert_eq!(pruned.get("own"), Some(&1), "{report:?}");
}

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

// ----- project history -----

async fn commit_as(
    server: &TestServer,
    project: &str,
    token: &str,
    path: &str,
    agent: &str,
    bytes: &[u8],
) -> VersionInfo {
    let hash = server.upload(project, token, bytes).await;
    let mut req = commit_request(path, None, hash);
    req.agent_id = Some(agent.to_string());
    if let Ok(head) = server.history_page(project, token, path, None, Some(1)).await {
        req.base_version = head.versions.first().filter(|v| !v.deleted).map(|v| v.version);
    }
    server.commit_req(project, token, &req).await.expect("commit")
}

/// `GET .../activity` and `contextfs log` without a path: every version of
/// the project newest first, filtered by agent, time and path prefix, paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_history_shows_who_changed_what() {
    let server = TestServer::start().await;
    let token = server.project_with_token("hist").await;
    commit_as(&server, "hist", &token, "docs/a.md", "alice", b"a1\n").await;
    commit_as(&server, "hist", &token, "src/main.rs", "bob", b"fn main() {}\n").await;
    commit_as(&server, "hist", &token, "docs/a.md", "alice", b"a2\n").await;
    commit_as(&server, "hist", &token, "docs-old.md", "bob", b"not below docs/\n").await;
    let activity = |query: Vec<(&'static str, String)>| {
        let server = &server;
        let token = token.clone();
        async move {
            send::<ActivityPage>(server.get(&server.purl("hist", "/activity"), &token).query(&query))
                .await
                .expect("activity")
        }
    };

    let all = activity(vec![]).await;
    let seen: Vec<(String, i64, Option<String>)> = all
        .entries
        .iter()
        .filter(|e| e.op != VersionOp::Mkdir)
        .map(|e| (e.path.clone(), e.version, e.agent_id.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("docs-old.md".to_string(), 1, Some("bob".to_string())),
            ("docs/a.md".to_string(), 2, Some("alice".to_string())),
            ("src/main.rs".to_string(), 1, Some("bob".to_string())),
            ("docs/a.md".to_string(), 1, Some("alice".to_string())),
        ],
        "newest first"
    );
    let alice = activity(vec![("agent", "alice".into())]).await;
    assert!(alice.entries.iter().all(|e| e.agent_id.as_deref() == Some("alice")));
    // Her two writes, and the `docs` directory her first write created.
    let ops: Vec<VersionOp> = alice.entries.iter().map(|e| e.op).collect();
    assert_eq!(ops, [VersionOp::Write, VersionOp::Create, VersionOp::Mkdir]);
    let docs = activity(vec![("path_prefix", "docs".into())]).await;
    let paths: Vec<&str> = docs.entries.iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.iter().all(|p| *p == "docs" || p.starts_with("docs/")),
        "{paths:?}"
    );
    assert!(paths.contains(&"docs/a.md"));
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert!(activity(vec![("since", future)]).await.entries.is_empty());
    let bad = expect_error(
        server
            .get(&server.purl("hist", "/activity"), &token)
            .query(&[("since", "yesterday")]),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert!(bad.message.contains("RFC 3339"), "{bad:?}");

    // Pages of two cover everything once.
    let mut paged = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut q = vec![("limit", "2".to_string())];
        if let Some(b) = before {
            q.push(("before", b.to_string()));
        }
        let page = activity(q).await;
        paged.extend(page.entries.iter().map(|e| e.seq));
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(paged, all.entries.iter().map(|e| e.seq).collect::<Vec<_>>());

    // The CLI: a table, and --json with the route's entries.
    let table = cli_ok(&server, &token, "hist", &["log", "--agent", "bob"]);
    assert!(
        table.contains("src/main.rs") && table.contains("docs-old.md"),
        "{table}"
    );
    assert!(!table.contains("docs/a.md"), "{table}");
    let listed: Vec<ActivityEntry> = json_of(&cli_ok(
        &server,
        &token,
        "hist",
        &["log", "--json", "--since", "1h", "--path-prefix", "/docs/"],
    ));
    assert_eq!(
        listed
            .iter()
            .filter(|e| e.path == "docs/a.md")
            .map(|e| e.version)
            .collect::<Vec<_>>(),
        vec![2, 1]
    );
}

/// `contextfs diff --since T`: one line (or JSON object) per changed file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_since_summarises_each_changed_file() {
    let server = TestServer::start().await;
    let token = server.project_with_token("sum").await;
    commit_as(&server, "sum", &token, "old.txt", "setup", b"before the window\n").await;
    commit_as(&server, "sum", &token, "gone.txt", "setup", b"to delete\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    commit_as(&server, "sum", &token, "old.txt", "carol", b"edited in the window\n").await;
    commit_as(&server, "sum", &token, "old.txt", "dave", b"edited twice\n").await;
    commit_as(&server, "sum", &token, "new.txt", "carol", b"brand new\n").await;
    let out = cli_ok(&server, &token, "sum", &["rm", "gone.txt"]);
    assert!(!out.is_empty());

    let text = cli_ok(&server, &token, "sum", &["diff", "--since", &since]);
    assert!(
        text.contains("M old.txt  v1..v3, 2 version(s), clean by carol, dave"),
        "{text}"
    );
    assert!(text.contains("A new.txt  v1, 1 version(s), clean by carol"), "{text}");
    assert!(text.contains("D gone.txt"), "{text}");
    let changes: Vec<serde_json::Value> =
        json_of(&cli_ok(&server, &token, "sum", &["diff", "--since", &since, "--json"]));
    let kinds: Vec<(String, String)> = changes
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap_or("").to_string(),
                c["change"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("gone.txt".to_string(), "deleted".to_string()),
            ("new.txt".to_string(), "added".to_string()),
            ("old.txt".to_string(), "modified".to_string()),
        ]
    );
}

// ----- machine-readable CLI -----

/// `--json` on the listing commands prints the documented shapes;
/// completions come out for bash, zsh and fish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_print_json_and_completions_cover_the_commands() {
    let server = TestServer::start().await;
    let token = server.project_with_token("shapes").await;
    server
        .commit("shapes", &token, "dir/file.txt", None, b"x")
        .await
        .expect("commit");
    let projects: Vec<ProjectInfo> = json_of(&cli_ok(
        &server,
        &server.admin,
        "shapes",
        &["project", "list", "--json"],
    ));
    assert_eq!(projects.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["shapes"]);
    let tokens: Vec<TokenInfo> = json_of(&cli_ok(&server, &server.admin, "shapes", &["token", "list", "--json"]));
    assert_eq!(tokens.len(), 1);
    let listing: TreeListing = json_of(&cli_ok(&server, &token, "shapes", &["ls", "-r", "--json"]));
    let paths: Vec<&str> = listing.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["dir", "dir/file.txt"]);
    let history: HistoryPage = json_of(&cli_ok(&server, &token, "shapes", &["log", "dir/file.txt", "--json"]));
    assert_eq!(history.versions.len(), 1);
    let skills: SkillsListing = json_of(&cli_ok(&server, &token, "shapes", &["skills", "list", "--json"]));
    assert!(skills.skills.is_empty());

    // Sandbox records hold tokens: `list --json` shows what identifies a sandbox, no secret.
    let home = tempfile::tempdir().expect("temp dir");
    let state = home.path().join("state/contextfs/daytona");
    std::fs::create_dir_all(&state).expect("state dir");
    for (id, provider) in [("sb-daytona-1", "daytona"), ("sb-e2b-1", "e2b")] {
        let record = serde_json::json!({
            "id": id, "provider": provider, "api_url": "http://127.0.0.1:9", "endpoint": null,
            "access_token": "envd-secret-access", "project": "shapes", "server": server.base,
            "sandbox_server": server.base, "token": "cfs_sandbox_secret_token", "token_id": "tok_1",
            "mode": "sync", "binary": "/usr/local/bin/contextfs", "created_at": "2026-12-06T00:00:00Z"
        });
        std::fs::write(state.join(format!("{id}.json")), record.to_string()).expect("record");
    }
    let env = ClientEnv {
        root: home.path(),
        server: &server.base,
        token: &token,
        project: "shapes",
    };
    for (provider, id) in [("daytona", "sb-daytona-1"), ("e2b", "sb-e2b-1")] {
        let out = isolated_command(env!("CARGO_BIN_EXE_contextfs"), &env)
            .args([provider, "list", "--json"])
            .output()
            .expect("list");
        assert!(out.status.success(), "{}", both(&out));
        let text = stdout(&out);
        let listed: Vec<serde_json::Value> = json_of(&text);
        assert_eq!(listed.len(), 1, "{text}");
        assert_eq!(
            (listed[0]["id"].as_str(), listed[0]["mode"].as_str()),
            (Some(id), Some("sync"))
        );
        assert!(!text.contains("secret"), "{text}");
    }

    let bash = cli_ok(&server, &token, "shapes", &["completions", "bash"]);
    assert!(
        bash.contains("_contextfs()") && bash.contains("gc") && bash.contains("--keep-days"),
        "bash"
    );
    let zsh = cli_ok(&server, &token, "shapes", &["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef contextfs"), "{}", &zsh[..zsh.len().min(200)]);
    let fish = cli_ok(&server, &token, "shapes", &["completions", "fish"]);
    assert!(fish.contains("complete -c contextfs"), "fish");
    let man = tempfile::tempdir().expect("temp dir");
    cli_ok(&server, &token, "shapes", &["man", &man.path().display().to_string()]);
    let page = std::fs::read_to_string(man.path().join("contextfs-gc.1")).expect("contextfs-gc.1");
    assert!(page.contains(".TH") && page.contains("dry"), "{page}");
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

// ----- retention rules on the store itself (old versions need old times) -----

mod store_rules {
    use std::sync::Arc;

    use contextfs::api::{NodeKind, RetentionPolicy, VersionOp, VersionStatus};
    use contextfs::model::BlobHash;
    use contextfs::server::store::{now_millis, ContentWrite, FileTimes, MetadataStore, WriteMeta, WriteTarget};

    const DAY: i64 = 86_400_000;

    fn meta(now: i64) -> WriteMeta {
        WriteMeta {
            author: "admin".into(),
            agent_id: None,
            message: None,
            now,
        }
    }

    /// The store under test: PostgreSQL with `CONTEXTFS_TEST_DATABASE`, else SQLite.
    async fn store(dir: &std::path::Path) -> Arc<dyn MetadataStore> {
        match super::fresh_test_database().await {
            Some(url) => Arc::new(
                contextfs::server::store::postgres::PostgresStore::open(&url)
                    .await
                    .expect("PostgreSQL store"),
            ),
            None => Arc::new(
                contextfs::server::store::sqlite::SqliteStore::open(&dir.join("meta.db")).expect("SQLite store"),
            ),
        }
    }

    /// Writes `statuses` as consecutive versions of `path`, each `ages` days
    /// old; returns the node.
    async fn file(store: &dyn MetadataStore, project: i64, path: &str, versions: &[(VersionStatus, i64)]) -> i64 {
        let now = now_millis();
        let mut head: Option<(i64, i64)> = None;
        for (n, (status, days_old)) in versions.iter().enumerate() {
            let target = match head {
                None => WriteTarget::New {
                    path: contextfs::model::WsPath::parse(path).expect("path"),
                },
                Some((node, version)) => WriteTarget::Existing {
                    node,
                    expected_head: version,
                },
            };
            let write = ContentWrite {
                target,
                kind: NodeKind::File,
                mode: 0o644,
                hash: BlobHash::of(format!("{path} {n}").as_bytes()),
                size: 3,
                op: if head.is_none() {
                    VersionOp::Create
                } else {
                    VersionOp::Write
                },
                status: *status,
                idempotency_key: None,
                record_blob: None,
                times: FileTimes::default(),
            };
            let v = store
                .write_content(project, write, meta(now - days_old * DAY))
                .await
                .expect("write")
                .value;
            head = Some((v.node, v.version));
        }
        head.expect("at least one version").0
    }

    async fn kept(store: &dyn MetadataStore, node: i64) -> Vec<i64> {
        let mut numbers: Vec<i64> = store
            .history(node, None, 100)
            .await
            .expect("history")
            .iter()
            .map(|v| v.version)
            .collect();
        numbers.sort();
        numbers
    }

    /// keep-days prunes by age, keep-versions by count; a young lww loser
    /// outlives the count, an old one goes; heads always stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn age_and_count_limits_and_lww_losers() {
        use VersionStatus::{Clean, Lww};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path()).await;
        let project = store
            .create_project("ages", meta(now_millis()))
            .await
            .expect("project")
            .id;
        let old = file(&*store, project, "old.txt", &[(Clean, 10), (Clean, 9), (Clean, 1)]).await;
        let young = file(&*store, project, "young.txt", &[(Clean, 3), (Clean, 2), (Clean, 1)]).await;
        let lost_young = file(&*store, project, "lww-young.txt", &[(Clean, 3), (Clean, 2), (Lww, 1)]).await;
        let lost_old = file(&*store, project, "lww-old.txt", &[(Clean, 10), (Lww, 9), (Clean, 8)]).await;
        let ancient_head = file(&*store, project, "ancient.txt", &[(Clean, 30)]).await;

        let policy = RetentionPolicy {
            keep_days: Some(5),
            keep_versions: Some(1),
        };
        let counted = store
            .prune_versions(project, policy, true, meta(now_millis()))
            .await
            .expect("dry run");
        let pruned = store
            .prune_versions(project, policy, false, meta(now_millis()))
            .await
            .expect("prune");
        assert_eq!(counted, pruned, "a dry run counts what a real run removes");
        assert_eq!(kept(&*store, old).await, [3], "older than 5 days");
        assert_eq!(kept(&*store, young).await, [3], "young, but beyond 1 version");
        assert_eq!(kept(&*store, lost_young).await, [2, 3], "the young lww loser stays");
        assert_eq!(
            kept(&*store, lost_old).await,
            [3],
            "an lww loser older than the policy goes"
        );
        assert_eq!(kept(&*store, ancient_head).await, [1], "a head stays, however old");
        assert_eq!(pruned, 2 + 2 + 1 + 2);
        assert_eq!(
            store
                .prune_versions(project, policy, false, meta(now_millis()))
                .await
                .expect("again"),
            0,
            "pruning is idempotent"
        );
    }
}

/// An unreferenced blob past the grace period that a client uploads again
/// (to commit it) gets a fresh grace period: GC keeps it and the commit
/// reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_an_old_blob_that_is_uploaded_again_for_a_commit() {
    let server = TestServer::start_with(&["--gc-grace", GRACE]).await;
    let token = server.project_with_token("again").await;
    let bytes = b"uploaded long ago, committed only now";
    let hash = server.upload("again", &token, bytes).await;
    tokio::time::sleep(PAST_GRACE).await;
    assert_eq!(gc(&server, true).await.deleted, vec![hash.clone()], "it is garbage now");

    server.upload("again", &token, bytes).await;
    let report = gc(&server, false).await;
    assert_eq!(
        report.blobs_deleted, 0,
        "the new upload restarted its grace period: {report:?}"
    );
    server
        .commit_req("again", &token, &commit_request("late.txt", None, hash))
        .await
        .expect("commit after the upload");
    assert_eq!(server.read_bytes("again", &token, "late.txt").await, bytes);
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
