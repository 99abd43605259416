//! `POST .../commit/batch` against a real `contextfs serve` (SQLite, and
//! PostgreSQL when CONTEXTFS_TEST_DATABASE is set): every entry is its own
//! commit (version, base, merge, status, idempotency key), one bad entry
//! fails alone with its reason, and a refused batch writes nothing.

use super::*;
use base64::Engine;

fn inline(path: &str, base: Option<i64>, bytes: &[u8]) -> CommitRequest {
    let mut req = commit_request(path, base, hash_of(bytes));
    req.content_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
    req
}

async fn batch(s: &TestServer, project: &str, token: &str, commits: &[CommitRequest]) -> Vec<BatchCommitResult> {
    let answer: BatchCommitResponse =
        send(s.post(&s.purl(project, "/commit/batch"), token, &json!({ "commits": commits })))
            .await
            .expect("the batch is answered");
    assert_eq!(answer.results.len(), commits.len(), "one result per commit, in order");
    answer.results
}

fn version(r: &BatchCommitResult) -> &VersionInfo {
    r.version
        .as_ref()
        .unwrap_or_else(|| panic!("expected a version, got {:?}", r.error))
}

fn error(r: &BatchCommitResult) -> &BatchEntryError {
    r.error
        .as_ref()
        .unwrap_or_else(|| panic!("expected an error, got {:?}", r.version))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_entry_is_its_own_version_merged_and_idempotent() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let base = "# Notes\n\none\n\ntwo\n\nthree\n";
    let v1 = s.commit("p", &t, "notes.md", None, base.as_bytes()).await.unwrap();
    // Another writer moves notes.md on: the batch's edit, based on v1, merges.
    s.commit(
        "p",
        &t,
        "notes.md",
        Some(1),
        "# Notes\n\nONE\n\ntwo\n\nthree\n".as_bytes(),
    )
    .await
    .unwrap();

    let mut commits: Vec<CommitRequest> = (0..40)
        .map(|i| inline(&format!("src/deep/f{i:02}.txt"), None, format!("file {i}\n").as_bytes()))
        .collect();
    commits.push(inline(
        "notes.md",
        Some(v1.version),
        b"# Notes\n\none\n\ntwo\n\nTHREE\n",
    ));
    for (i, c) in commits.iter_mut().enumerate() {
        c.idempotency_key = Some(format!("batch-key-{i}"));
        c.agent_id = Some("batcher".into());
    }
    let results = batch(&s, "p", &t, &commits).await;
    for (i, r) in results[..40].iter().enumerate() {
        let v = version(r);
        assert_eq!(
            (v.path.as_str(), v.version, v.op, v.status),
            (
                format!("src/deep/f{i:02}.txt").as_str(),
                1,
                VersionOp::Create,
                VersionStatus::Clean
            )
        );
        assert_eq!(v.agent_id.as_deref(), Some("batcher"));
    }
    let merged = version(&results[40]);
    assert_eq!((merged.version, merged.status), (3, VersionStatus::Merged));
    assert_eq!(
        s.read_bytes("p", &t, "notes.md").await,
        b"# Notes\n\nONE\n\ntwo\n\nTHREE\n",
        "both edits are in the head"
    );
    assert_eq!(s.read_bytes("p", &t, "src/deep/f07.txt").await, b"file 7\n");
    let nodes: std::collections::HashSet<i64> = results.iter().map(|r| version(r).node).collect();
    assert_eq!(nodes.len(), 41, "every file is its own node");

    // The same batch again (a lost answer, retried): the same versions,
    // nothing new written.
    let cursor = s.snapshot("p").await.0;
    let again = batch(&s, "p", &t, &commits).await;
    for (first, second) in results.iter().zip(&again) {
        assert_eq!(version(first), version(second));
    }
    assert_eq!(s.snapshot("p").await.0, cursor, "a retried batch moves nothing");
    assert_eq!(s.history("p", &t, "notes.md").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_entry_fails_alone_with_its_reason_and_leaves_no_trace() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    s.commit("p", &t, "dir/inside.txt", None, b"x").await.unwrap();
    let cursor = s.snapshot("p").await.0;

    let mut wrong_bytes = inline("mismatch.txt", None, b"what the hash says");
    wrong_bytes.content_base64 = Some(base64::engine::general_purpose::STANDARD.encode(b"other bytes"));
    let commits = vec![
        inline("good-1.txt", None, b"one"),
        wrong_bytes,
        inline("bad\u{1b}[31mname", None, b"escape"),
        inline("dir", None, b"over a directory"),
        inline("dir/inside.txt", Some(9), b"unknown base"),
        commit_request("never-uploaded.txt", None, hash_of(b"nobody sent these bytes")),
        inline("good-2.txt", None, b"two"),
        // Refused by the database inside the batch's transaction (which
        // first writes the entries optimistically together, then again one
        // savepoint each): the entries around it still commit, once.
        inline("dir/inside.txt/under-a-file", None, b"no"),
        inline("good-3.txt", None, b"three"),
    ];
    let results = batch(&s, "p", &t, &commits).await;
    assert_eq!(version(&results[0]).path.as_str(), "good-1.txt");
    assert_eq!(version(&results[6]).path.as_str(), "good-2.txt");
    assert_eq!(version(&results[8]).path.as_str(), "good-3.txt");
    let expected = [
        (1, 400, ErrorCode::HashMismatch),
        (2, 400, ErrorCode::InvalidPath),
        (3, 409, ErrorCode::IsADirectory),
        (4, 409, ErrorCode::BaseVersionUnknown),
        (5, 400, ErrorCode::BlobMissing),
        (7, 409, ErrorCode::NotADirectory),
    ];
    for (i, status, code) in expected {
        let e = error(&results[i]);
        assert_eq!((e.status, &e.detail.code), (status, &code), "entry {i}: {e:?}");
        assert!(!e.detail.message.is_empty(), "entry {i} says why");
    }
    // The unknown base names the head, as a single commit's 409 does.
    assert_eq!(error(&results[4]).detail.head.as_ref().map(|h| h.version), Some(1));
    let (after, entries) = s.snapshot("p").await;
    let mut paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["dir", "dir/inside.txt", "good-1.txt", "good-2.txt", "good-3.txt"]
    );
    assert_eq!(after, cursor + 3, "three versions, nothing of the refused entries");
    for good in ["good-1.txt", "good-2.txt", "good-3.txt"] {
        assert_eq!(s.history("p", &t, good).await.len(), 1, "{good} committed once");
    }
    assert_eq!(s.history("p", &t, "dir/inside.txt").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_batch_writes_nothing() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let reader = s.token("p", Access::Read).await.token;
    let url = s.purl("p", "/commit/batch");
    let one = json!({ "commits": [inline("a.txt", None, b"a")] });
    expect_error(
        s.post(&url, &t, &json!({ "commits": [] })),
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    let too_many: Vec<CommitRequest> = (0..=MAX_BATCH).map(|i| inline(&format!("f{i}"), None, b"x")).collect();
    let err = expect_error(
        s.post(&url, &t, &json!({ "commits": too_many })),
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert!(err.message.contains("1000"), "{err:?}");
    expect_error(s.post(&url, &reader, &one), StatusCode::FORBIDDEN, "forbidden").await;
    expect_error(
        s.post(&url, "cfs_not_a_token", &one),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    expect_error(
        s.post(&url, &t, &json!({ "commits": [{ "path": "a.txt" }] })),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    assert!(s.snapshot("p").await.1.is_empty(), "nothing was written");
}

/// The batch route's cap (`MAX_BATCH_COMMITS` in the service).
const MAX_BATCH: usize = 1000;

#[tokio::test(flavor = "multi_thread")]
async fn batches_and_single_commits_racing_on_the_same_files_merge_every_edit() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    const FILES: usize = 12;
    const WRITERS: usize = 6;
    let base: String = (0..WRITERS).map(|w| format!("line {w}\n\n")).collect();
    for f in 0..FILES {
        s.commit("p", &t, &format!("f{f}.md"), None, base.as_bytes())
            .await
            .unwrap();
    }
    // Each writer edits its own line of every file, from version 1: half of
    // them in one batch, half file by file.
    let http = reqwest::Client::new();
    let (batch_url, commit_url) = (s.purl("p", "/commit/batch"), s.purl("p", "/commit"));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (http, t, base) = (http.clone(), t.clone(), base.clone());
        let (batch_url, commit_url) = (batch_url.clone(), commit_url.clone());
        tasks.push(tokio::spawn(async move {
            let commits: Vec<CommitRequest> = (0..FILES)
                .map(|f| {
                    let text = base.replace(&format!("line {w}\n"), &format!("line {w} edited by {w}\n"));
                    inline(&format!("f{f}.md"), Some(1), text.as_bytes())
                })
                .collect();
            let mut landed = Vec::new();
            if w % 2 == 0 {
                let rb = http
                    .post(&batch_url)
                    .bearer_auth(&t)
                    .json(&json!({ "commits": commits }));
                let answer: BatchCommitResponse = send(rb).await.expect("batch");
                for r in answer.results {
                    landed.push(r.version.ok_or(format!("{:?}", r.error)));
                }
            } else {
                for c in &commits {
                    let rb = http.post(&commit_url).bearer_auth(&t).json(c);
                    landed.push(send::<VersionInfo>(rb).await.map_err(|e| format!("{e:?}")));
                }
            }
            landed
        }));
    }
    for task in tasks {
        for outcome in task.await.expect("writer") {
            outcome.expect("every commit lands");
        }
    }
    for f in 0..FILES {
        let text = String::from_utf8(s.read_bytes("p", &t, &format!("f{f}.md")).await).unwrap();
        for w in 0..WRITERS {
            assert!(
                text.contains(&format!("line {w} edited by {w}\n")),
                "f{f}.md lost writer {w}'s edit:\n{text}"
            );
        }
        assert_eq!(s.history("p", &t, &format!("f{f}.md")).await.len(), 1 + WRITERS);
    }
}
