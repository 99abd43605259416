//! Blob garbage collection: the grace period, dry runs, damage reports,
//! the schedule, and commits streaming in while GC runs.

use super::*;

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
