//! Retention: what pruning removes and keeps, the markers it leaves, refused
//! limits, the server default, and the age rules on the store itself.

use super::*;

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
    let gone = server
        .read("kept", &token, "plain.md", Some(plain[0].version))
        .await
        .expect_err("pruned");
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(
        gone.message.contains("was pruned by the project's retention policy"),
        "{gone:?}"
    );

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
                unsynced_copy: None,
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

/// `contextfs migrate` carries retention policies to the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_carries_retention_policies() {
    if std::env::var("CONTEXTFS_TEST_DATABASE").is_ok() || blobs_in_s3() {
        eprintln!("skipped: this test migrates one data directory into another");
        return;
    }
    let mut source = TestServer::start().await;
    source.create_project("kept").await;
    set_retention(&source, "kept", Some(9), Some(4)).await;
    source.stop().await;
    let target_dir = tempfile::tempdir().expect("temp dir");
    let target_data = target_dir.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_contextfs"))
        .arg("migrate")
        .arg("--from")
        .arg(&source.data_dir)
        .arg("--to")
        .arg(&target_data)
        .env("CONTEXTFS_LOG", "warn")
        .output()
        .expect("migrate");
    assert!(out.status.success(), "{}", both(&out));
    let target = TestServer::start_on(target_data, vec![]).await;
    let info: RetentionInfo = send(target.get(&target.purl("kept", "/retention"), &target.admin))
        .await
        .expect("retention on the target");
    assert_eq!(
        info.policy,
        Some(RetentionPolicy {
            keep_days: Some(9),
            keep_versions: Some(4)
        })
    );
}
