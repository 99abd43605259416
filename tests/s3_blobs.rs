//! `contextfs serve --blobs s3://...` against a real S3-protocol server on
//! loopback (moto, see tests/s3_support): the API flows that touch blobs, and
//! what lands in the bucket — never an object under a hash whose bytes were
//! not verified, never a leftover after a crash.

mod common;
use common::s3_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use contextfs::api::*;
use contextfs::model::BlobHash;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use s3_support::{blob_key, AWS_ENV};
use serde_json::json;

/// A server whose blobs live under a fresh prefix of the test bucket.
async fn s3_server(test: &str) -> (TestServer, String) {
    let prefix = s3_support::fresh_prefix(test);
    let args = s3_support::blob_args(&prefix);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = TestServer::start_with_env(&args, AWS_ENV).await;
    (server, prefix)
}

/// Deterministic bytes that are not all alike (so parts differ).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_upload_verify_and_mismatch_leave_nothing_under_a_wrong_hash() {
    let (s, prefix) = s3_server("verify").await;
    let t = s.project_with_token("p").await;
    let other = s.project_with_token("q").await;

    // a small blob: 201 then 200, readable, stored at PREFIX/blobs/ab/<hash>
    let bytes = b"hello S3 blobs\n".to_vec();
    let hash = BlobHash::of(&bytes);
    let url = s.purl("p", &format!("/blobs/{hash}"));
    let (status, receipt) = s.put_blob("p", &t, &hash, bytes.clone()).await.unwrap();
    assert_eq!((status, receipt.created, receipt.size), (StatusCode::CREATED, true, 15));
    let (status, receipt) = s.put_blob("p", &t, &hash, bytes.clone()).await.unwrap();
    assert_eq!((status, receipt.created), (StatusCode::OK, false));
    assert_eq!(s.get_blob("p", &t, hash.as_str()).await.unwrap(), bytes);
    let head = s.req(Method::HEAD, &url, Some(&t)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[reqwest::header::CONTENT_LENGTH], "15");
    assert_eq!(s3_support::list(&prefix).await, [(blob_key(&hash), 15)]);
    assert_eq!(s3_support::get(&prefix, &blob_key(&hash)).await.unwrap(), bytes);
    // the bucket is shared storage, but project scoping still holds
    assert_err(
        s.get_blob("q", &other, hash.as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // a small mismatch (buffered path) and a large one (streamed multipart
    // at the claimed key, aborted): 400, and neither hash has an object
    for (len, seed) in [(1000usize, 1u64), (12 << 20, 2)] {
        let claimed = BlobHash::of(format!("claimed {len}").as_bytes());
        let sent = pattern(len, seed);
        s.put_blob_expecting_hash_mismatch("p", &t, &claimed, sent.clone())
            .await;
        for h in [&claimed, &BlobHash::of(&sent)] {
            let head = s
                .req(Method::HEAD, &s.purl("p", &format!("/blobs/{h}")), Some(&t))
                .send()
                .await
                .unwrap();
            assert_eq!(head.status(), StatusCode::NOT_FOUND, "{len} bytes: {h}");
        }
        assert_err(
            s.commit_req("p", &t, &commit_request("x.bin", None, claimed)).await,
            StatusCode::BAD_REQUEST,
            "blob_missing",
        );
    }
    // a large body claiming the hash of a stored blob is verified all the same
    expect_error(
        s.put_blob_request("p", &t, &hash, pattern(10 << 20, 3)),
        StatusCode::BAD_REQUEST,
        "hash_mismatch",
    )
    .await;
    assert_eq!(
        s.get_blob("p", &t, hash.as_str()).await.unwrap(),
        bytes,
        "stored blob untouched"
    );
    assert_eq!(
        s3_support::list(&prefix).await,
        [(blob_key(&hash), 15)],
        "only the verified blob may exist in the bucket; log:\n{}",
        s.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_large_streamed_blob_round_trip() {
    let (s, prefix) = s3_server("large").await;
    let t = s.project_with_token("p").await;

    // 64 MiB, sent as a stream of 1 MiB chunks; the server streams it into a
    // multipart upload while hashing
    const LEN: usize = 64 << 20;
    let big = Arc::new(pattern(LEN, 7));
    let hash = BlobHash::of(&big);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    let started = std::time::Instant::now();
    let (status, receipt): (_, BlobReceipt) = send_with_status(s.put_blob_request(
        "p",
        &t,
        &hash,
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    ))
    .await
    .unwrap_or_else(|e| panic!("64 MiB upload: {e:?}; log:\n{}", s.log()));
    eprintln!("64 MiB upload to S3 took {:?}", started.elapsed());
    assert_eq!(
        (status, receipt.hash.clone(), receipt.size),
        (StatusCode::CREATED, hash.clone(), LEN as u64)
    );

    // the same bytes again: verified, not stored twice
    let (status, receipt) = s.put_blob("p", &t, &hash, big.to_vec()).await.unwrap();
    assert_eq!((status, receipt.created), (StatusCode::OK, false));

    // GET streams it back intact
    let resp = s.get(&s.purl("p", &format!("/blobs/{hash}")), &t).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_LENGTH],
        LEN.to_string().as_str()
    );
    let back = resp.bytes().await.unwrap();
    assert!(
        back.len() == LEN && BlobHash::of(&back) == hash,
        "64 MiB blob came back different"
    );

    // commit it and check it out
    let v = s
        .commit_req("p", &t, &commit_request("data/big.bin", None, hash.clone()))
        .await
        .unwrap();
    assert_eq!((v.size, v.version), (LEN as u64, 1));
    let co = s.read("p", &t, "data/big.bin", None).await.unwrap();
    assert!(co.bytes.len() == LEN && co.hash == hash.to_string());

    // a one-call PUT has no hash up front: one over S3's in-memory limit
    // (8 MiB) and under the chunked threshold (16 MiB; larger ones are cut
    // into chunks as they arrive) goes to PREFIX/tmp/, is hashed, copied
    // under its hash and the temp is deleted
    let second = pattern(12 << 20, 8);
    let v: VersionInfo = send(
        s.req(Method::PUT, &s.file_url("p", "data/second.bin"), Some(&t))
            .body(second.clone()),
    )
    .await
    .unwrap_or_else(|e| panic!("one-call PUT: {e:?}; log:\n{}", s.log()));
    assert_eq!(v.hash, BlobHash::of(&second));
    assert_eq!(s.read_bytes("p", &t, "data/second.bin").await, second);

    let mut want = vec![
        (blob_key(&hash), LEN as u64),
        (blob_key(&BlobHash::of(&second)), second.len() as u64),
    ];
    want.sort();
    assert_eq!(s3_support::list(&prefix).await, want, "no tmp/ leftovers, nothing else");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_commit_checkout_history_merge_and_skills() {
    let (mut s, prefix) = s3_server("flows").await;
    let t = s.project_with_token("p").await;

    // commit, checkout, history, rollback
    s.commit(
        "p",
        &t,
        "notes/plan.md",
        None,
        b"# Plan\n\n- one\n\nmiddle\n\n- three\n",
    )
    .await
    .unwrap();
    s.commit("p", &t, "notes/plan.md", Some(1), b"# Plan v2\n")
        .await
        .unwrap();
    let rb: VersionInfo = send(s.post(
        &s.purl("p", "/rollback"),
        &t,
        &json!({"path": "notes/plan.md", "version": 1}),
    ))
    .await
    .unwrap();
    assert_eq!(rb.version, 3);
    assert_eq!(
        s.read("p", &t, "notes/plan.md", Some(2)).await.unwrap().bytes,
        b"# Plan v2\n"
    );

    // a three-way merge: the server writes the merged bytes to S3 itself
    let base = "# Plan\n\n- one\n\nmiddle\n\n- three\n";
    let a = base.replace("- one", "- one (A)");
    let b = base.replace("- three", "- three (B)");
    s.commit("p", &t, "notes/plan.md", Some(3), a.as_bytes()).await.unwrap();
    let merged = s.commit("p", &t, "notes/plan.md", Some(3), b.as_bytes()).await.unwrap();
    assert_eq!(merged.status, VersionStatus::Merged);
    let want = "# Plan\n\n- one (A)\n\nmiddle\n\n- three (B)\n";
    assert_eq!(merged.hash, BlobHash::of(want.as_bytes()));
    assert_eq!(
        s3_support::get(&prefix, &blob_key(&merged.hash)).await.as_deref(),
        Some(want.as_bytes()),
        "the merge result must be in the bucket under its hash"
    );
    // JSON merges too
    s.commit("p", &t, "cfg.json", None, br#"{"a":1,"b":2}"#).await.unwrap();
    s.commit("p", &t, "cfg.json", Some(1), br#"{"a":10,"b":2}"#)
        .await
        .unwrap();
    let j = s
        .commit("p", &t, "cfg.json", Some(1), br#"{"a":1,"b":20}"#)
        .await
        .unwrap();
    assert_eq!(j.status, VersionStatus::Merged);
    assert!(s3_support::get(&prefix, &blob_key(&j.hash)).await.is_some());

    // skills: blobs and manifests come from S3 too
    let md = b"---\nname: pdf\ndescription: Read PDFs\n---\n# pdf\n".to_vec();
    send::<BlobReceipt>(
        s.req(
            Method::PUT,
            &s.url(&format!("/skills/blobs/{}", BlobHash::of(&md))),
            Some(&s.admin),
        )
        .body(md.clone()),
    )
    .await
    .unwrap();
    let listing: SkillsListing = send(s.post(
        &s.url("/skills"),
        &s.admin,
        &json!({"files": [{"path": "pdf/SKILL.md", "hash": BlobHash::of(&md), "size": md.len()}]}),
    ))
    .await
    .unwrap();
    assert_eq!(listing.skills[0].description, "Read PDFs");

    // every version's blob is in the bucket, and the history survives a restart
    let hist = s.history("p", &t, "notes/plan.md").await;
    assert_eq!(hist.len(), 5);
    let keys: Vec<String> = s3_support::list(&prefix).await.into_iter().map(|(k, _)| k).collect();
    for v in &hist {
        assert!(keys.contains(&blob_key(&v.hash)), "v{} blob missing from S3", v.version);
    }
    assert!(keys.iter().all(|k| k.starts_with("blobs/")), "{keys:?}");
    s.restart().await;
    for v in &hist {
        let co = s.read("p", &t, "notes/plan.md", Some(v.version)).await.unwrap();
        assert_eq!(BlobHash::of(&co.bytes), v.hash);
    }
    assert_eq!(s.read_bytes("p", &t, "notes/plan.md").await, want.as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_kill_9_mid_upload_leaves_no_object_under_a_hash() {
    let (mut s, prefix) = s3_server("kill").await;
    let t = s.project_with_token("p").await;
    s.commit("p", &t, "kept.md", None, b"acknowledged before the crash\n")
        .await
        .unwrap();
    let kept = s3_support::list(&prefix).await;
    assert_eq!(kept.len(), 1);

    // two uploads that send 24 MiB and then stall: one with a hash (past the
    // in-memory limit, so multipart at the final key has begun) and a
    // one-call file PUT (over the chunked threshold: the server stores each
    // chunk it has cut as an object under that chunk's own hash)
    const SENT: u64 = 24 << 20;
    let full = pattern(40 << 20, 9);
    let hash = BlobHash::of(&full);
    let stalled = |url: String, sent: Arc<AtomicU64>| {
        let chunks: Vec<Vec<u8>> = full[..SENT as usize].chunks(1 << 20).map(<[u8]>::to_vec).collect();
        let body = futures_util::stream::iter(chunks)
            .then(move |c| {
                let sent = sent.clone();
                async move {
                    sent.fetch_add(c.len() as u64, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(c)
                }
            })
            .chain(futures_util::stream::pending());
        let req = s
            .req(Method::PUT, &url, Some(&t))
            .body(reqwest::Body::wrap_stream(body));
        tokio::spawn(async move { req.send().await.map(|r| r.status()) })
    };
    let (sent_a, sent_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a = stalled(s.purl("p", &format!("/blobs/{hash}")), sent_a.clone());
    let b = stalled(s.file_url("p", "big/upload.bin"), sent_b.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sent_a.load(Ordering::SeqCst) < SENT || sent_b.load(Ordering::SeqCst) < SENT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "uploads stalled early; log:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // let the server push its first parts to S3, then pull the plug
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill_9();
    for task in [a, b] {
        let outcome = task.await.expect("upload task");
        assert!(
            !matches!(outcome, Ok(status) if status.is_success()),
            "an interrupted upload must not succeed: {outcome:?}"
        );
    }

    // the crash hit the blob upload mid-multipart (when the server can tell)...
    if let Some(pending) = s3_support::pending_multipart_keys(&prefix) {
        let hash_key = format!("{prefix}/{}", blob_key(&hash));
        assert!(
            pending.contains(&hash_key),
            "no multipart upload at {hash_key}: {pending:?}"
        );
    }
    // ...and left no object under the file's hash and no temp object: only
    // chunks the one-call upload had cut, each whole under its own hash (GC
    // removes them once the grace period is over)
    let chunks: Vec<(String, u64)> = contextfs::chunks::manifest_of(&full[..])
        .expect("manifest")
        .chunks
        .iter()
        .map(|c| (blob_key(&c.hash), c.size))
        .collect();
    let left = s3_support::list(&prefix).await;
    for object in &left {
        assert!(
            kept.contains(object) || chunks.contains(object),
            "a crash mid-upload left {object:?}, which is neither the committed file nor a whole chunk"
        );
    }
    assert!(kept.iter().all(|k| left.contains(k)));
    s.restart().await;
    let head = s
        .req(Method::HEAD, &s.purl("p", &format!("/blobs/{hash}")), Some(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        s.read_bytes("p", &t, "kept.md").await,
        b"acknowledged before the crash\n"
    );
    assert_err(
        s.read("p", &t, "big/upload.bin", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // the same upload, complete this time, works
    assert_eq!(s.upload("p", &t, &full).await, hash);
    let now = s3_support::list(&prefix).await;
    assert!(
        now.contains(&(blob_key(&hash), full.len() as u64)),
        "the blob is there once it was verified: {now:?}"
    );
    assert_eq!(now.len(), left.len() + 1, "and nothing else appeared: {now:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_unreachable_bucket_refuses_to_start() {
    let server = s3_support::server();
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_contextfs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .args([
            "--blobs",
            "s3://no-such-bucket-here/x",
            "--s3-endpoint",
            &server.endpoint,
        ])
        .envs(AWS_ENV.iter().copied())
        .env("CONTEXTFS_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run contextfs serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve must refuse a missing bucket");
    assert!(
        stderr.contains("no-such-bucket-here") && stderr.contains("blob storage"),
        "the error names the bucket: {stderr}"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_contextfs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .args(["--blobs", "gs://elsewhere"])
        .output()
        .expect("run contextfs serve");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("s3://bucket"));
}
