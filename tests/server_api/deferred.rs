//! Small contents committed inline are written to the blob folder without
//! an fsync, and a copy is kept in the SQLite database (durable with the
//! commit) until a sync round makes the blob files durable. What a power
//! loss does to such files is played here by removing or tearing them
//! after a kill -9: the next start restores them from the kept copies
//! before it answers. (With PostgreSQL or S3 nothing is deferred: skipped.)

use super::*;
use base64::Engine;

/// A server on SQLite and the blob folder, its sync interval set by
/// `CONTEXTFS_DEFERRED_SYNC_MS=sync_ms`; `None` (said on stderr) when the
/// suite runs on PostgreSQL or S3, where nothing is deferred.
async fn start_on_sqlite_and_folder(sync_ms: &str) -> Option<TestServer> {
    let s = TestServer::start_with_env(&[], &[("CONTEXTFS_DEFERRED_SYNC_MS", sync_ms)]).await;
    let s3 = std::env::var(TEST_BLOBS_ENV).is_ok_and(|v| !v.is_empty());
    if s3 || s.database().is_some() {
        eprintln!("skipped: deferred blob sync needs SQLite and the blob folder");
        return None;
    }
    Some(s)
}

fn inline(path: &str, bytes: &[u8]) -> CommitRequest {
    let mut req = commit_request(path, None, hash_of(bytes));
    req.content_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
    req
}

/// Copies the database keeps of blobs not synced yet (read beside the
/// running server: WAL readers do not block it).
fn kept_copies(s: &TestServer) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        s.data_dir.join("metadata.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the database");
    db.query_row("SELECT count(*) FROM unsynced_blobs", [], |r| r.get(0))
        .expect("count kept copies")
}

fn blob_path(s: &TestServer, bytes: &[u8]) -> std::path::PathBuf {
    let hash = hash_of(bytes);
    s.data_dir.join("blobs").join(&hash.as_str()[..2]).join(hash.as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn inline_contents_lost_with_the_page_cache_are_restored_at_the_next_start() {
    // No sync round before the kill.
    let Some(mut s) = start_on_sqlite_and_folder("3600000").await else {
        return;
    };
    let t = s.project_with_token("p").await;
    let files: [(&str, &[u8]); 4] = [
        ("notes.md", b"# notes\nfirst line\n"),
        ("data.json", b"{\"k\": 1}\n"),
        ("kept.txt", b"this one stays on disk\n"),
        ("alone.txt", b"committed alone, not in a batch\n"),
    ];
    let commits: Vec<CommitRequest> = files[..3].iter().map(|(p, b)| inline(p, b)).collect();
    let answer: BatchCommitResponse = send(s.post(&s.purl("p", "/commit/batch"), &t, &json!({ "commits": commits })))
        .await
        .expect("batch");
    assert!(
        answer.results.iter().all(|r| r.version.is_some()),
        "{:?}",
        answer.results
    );
    s.commit_req("p", &t, &inline(files[3].0, files[3].1))
        .await
        .expect("single inline commit");
    assert_eq!(kept_copies(&s), 4, "one kept copy per inline content");

    s.kill_9();
    // The power loss: one blob file never reached the disk, one is torn.
    std::fs::remove_file(blob_path(&s, files[0].1)).expect("lose a blob file");
    std::fs::write(blob_path(&s, files[1].1), &files[1].1[..4]).expect("tear a blob file");
    std::fs::remove_file(blob_path(&s, files[3].1)).expect("lose another");

    s.restart().await;
    let restored = s.log().matches("restored a blob that was not on disk").count();
    assert_eq!(restored, 3, "log:\n{}", s.log());
    for (path, bytes) in files {
        assert_eq!(s.read_bytes("p", &t, path).await, bytes, "{path}");
    }
    assert_eq!(kept_copies(&s), 0, "restored, synced and dropped");
}

/// The copy is written in the commit's own transaction: an entry refused
/// (at its plan, or by the database inside the batch's transaction) keeps
/// none, and every committed one keeps exactly one.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_is_kept_with_its_commit_and_not_for_a_refused_entry() {
    let Some(s) = start_on_sqlite_and_folder("3600000").await else {
        return;
    };
    let t = s.project_with_token("p").await;
    s.commit_req("p", &t, &inline("dir/inside.txt", b"a file\n"))
        .await
        .expect("commit");
    assert_eq!(kept_copies(&s), 1);
    let commits = [
        inline("good.txt", b"committed\n"),
        // Refused when planned: a directory is there.
        inline("dir", b"over a directory\n"),
        // Refused by the database, inside the batch's transaction.
        inline("dir/inside.txt/under-a-file", b"under a file\n"),
    ];
    let answer: BatchCommitResponse = send(s.post(&s.purl("p", "/commit/batch"), &t, &json!({ "commits": commits })))
        .await
        .expect("batch");
    let committed: Vec<bool> = answer.results.iter().map(|r| r.version.is_some()).collect();
    assert_eq!(committed, [true, false, false], "{:?}", answer.results);
    assert_eq!(
        kept_copies(&s),
        2,
        "one copy per committed inline content, none for the refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_round_and_a_clean_shutdown_drop_the_kept_copies() {
    let Some(s) = start_on_sqlite_and_folder("50").await else {
        return;
    };
    let t = s.project_with_token("p").await;
    s.commit_req("p", &t, &inline("a.txt", b"synced by a round\n"))
        .await
        .expect("commit");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kept_copies(&s) > 0 {
        assert!(std::time::Instant::now() < deadline, "no sync round dropped the copy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.read_bytes("p", &t, "a.txt").await, b"synced by a round\n");

    // A round that never comes: the shutdown syncs what is left.
    let Some(mut s) = start_on_sqlite_and_folder("3600000").await else {
        return;
    };
    let t = s.project_with_token("p").await;
    s.commit_req("p", &t, &inline("b.txt", b"synced at shutdown\n"))
        .await
        .expect("commit");
    assert_eq!(kept_copies(&s), 1);
    assert!(s.stop().await.success(), "log:\n{}", s.log());
    assert_eq!(kept_copies(&s), 0, "log:\n{}", s.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_turns_deferring_off() {
    let Some(s) = start_on_sqlite_and_folder("0").await else {
        return;
    };
    let t = s.project_with_token("p").await;
    s.commit_req("p", &t, &inline("a.txt", b"fsynced before the commit\n"))
        .await
        .expect("commit");
    assert_eq!(kept_copies(&s), 0, "nothing kept: the blob was durable at once");
    assert!(blob_path(&s, b"fsynced before the commit\n").is_file());
}
