//! Chunked content through a real server: a large file uploaded by chunks
//! (`Client::upload_file`), committed, read back whole and in byte ranges;
//! manifests refused for every bad input; resuming an upload with
//! `blobs/missing`, also across a server crash; projects kept apart; a
//! damaged chunk in storage never served as good.

use super::*;
use contextfs::chunks::{manifest_of, Manifest, CHUNKED_MIN};
use contextfs::client::Client;

/// Pseudo-random bytes (so chunk boundaries fall where FastCDC puts them
/// in real data, not every CHUNK_MAX as in a constant file).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut reader = blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof();
    reader.fill(&mut out);
    out
}

/// A temp file with `bytes`, its hash and manifest.
fn large_file(bytes: &[u8]) -> (tempfile::NamedTempFile, BlobHash, Manifest) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, bytes).expect("write the file");
    let manifest = manifest_of(bytes).expect("chunk the file");
    (file, BlobHash::of(bytes), manifest)
}

fn client(s: &TestServer, token: &str) -> Client {
    Client::new(&s.base, Some(token.to_string())).expect("client")
}

fn manifest_url(s: &TestServer, project: &str, hash: &BlobHash) -> String {
    s.purl(project, &format!("/manifests/{hash}"))
}

async fn put_manifest_json(s: &TestServer, project: &str, token: &str, hash: &BlobHash, body: &Value) -> ApiErr {
    let resp = s
        .req(Method::PUT, &manifest_url(s, project, hash), Some(token))
        .json(body)
        .send()
        .await
        .expect("manifest request");
    assert!(!resp.status().is_success(), "the manifest was accepted: {body}");
    error_of(resp).await
}

/// Uploads the chunks of `manifest` at these indexes as ordinary blobs.
async fn upload_chunks(s: &TestServer, project: &str, token: &str, bytes: &[u8], manifest: &Manifest, which: &[usize]) {
    let spans = manifest.spans();
    for &i in which {
        let span = spans[i];
        let chunk = &bytes[span.offset as usize..(span.offset + span.size) as usize];
        s.upload(project, token, chunk).await;
    }
}

struct Ranged {
    status: StatusCode,
    content_range: Option<String>,
    content_length: Option<u64>,
    accept_ranges: Option<String>,
    body: Vec<u8>,
}

async fn get_range(s: &TestServer, url: &str, token: &str, range: &str) -> Ranged {
    let resp = s
        .get(url, token)
        .header("Range", range)
        .send()
        .await
        .expect("range request");
    let text = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    };
    let (content_range, accept_ranges) = (text("content-range"), text("accept-ranges"));
    let content_length = text("content-length").map(|v| v.parse().expect("a length"));
    let status = resp.status();
    let body = resp.bytes().await.expect("range body").to_vec();
    Ranged {
        status,
        content_range,
        content_length,
        accept_ranges,
        body,
    }
}

#[tokio::test]
async fn a_large_file_is_uploaded_by_chunks_and_read_back_whole_and_in_ranges() {
    let s = TestServer::start().await;
    let token = s.project_with_token("p").await;
    let health: Health = s
        .get(&s.url("/health"), &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let limits = health.limits.expect("the server says its limits");
    assert_eq!(limits.max_file_bytes, 1 << 40, "the default per-file limit is 1 TiB");
    assert_eq!(limits.chunked_min, CHUNKED_MIN);

    let bytes = noise(40 << 20, 1);
    let size = bytes.len() as u64;
    let (file, hash, manifest) = large_file(&bytes);
    assert!(
        manifest.chunks.len() >= 5,
        "40 MiB makes several chunks: {}",
        manifest.chunks.len()
    );
    let c = client(&s, &token);
    let receipt = c.upload_file("p", &hash, file.path()).await.expect("upload by chunks");
    assert_eq!(
        (receipt.hash.clone(), receipt.size, receipt.created),
        (hash.clone(), size, true)
    );
    assert_eq!(c.get_manifest("p", &hash).await.unwrap(), Some(manifest.clone()));
    let again = c
        .upload_file("p", &hash, file.path())
        .await
        .expect("the same upload again");
    assert!(!again.created, "a second upload registers nothing new");
    // A single blob has no manifest.
    let small = s.upload("p", &token, b"small").await;
    assert_eq!(c.get_manifest("p", &small).await.unwrap(), None);

    let v = s
        .commit_req("p", &token, &commit_request("big/data.bin", None, hash.clone()))
        .await
        .expect("commit the chunked file");
    assert_eq!(v.size, size);
    let whole = s.read("p", &token, "big/data.bin", None).await.expect("checkout");
    assert_eq!(whole.hash, hash.as_str());
    assert!(whole.bytes == bytes, "the checkout is the file");
    assert!(
        s.get_blob("p", &token, hash.as_str()).await.unwrap() == bytes,
        "the blob GET is the file"
    );

    let boundary = manifest.spans()[1].offset as usize;
    let file_url = s.file_url("p", "big/data.bin");
    let blob_url = s.purl("p", &format!("/blobs/{hash}"));
    let cases: Vec<(String, usize, usize)> = vec![
        ("bytes=0-99".into(), 0, 100),
        (format!("bytes={}-{}", boundary - 50, boundary + 49), boundary - 50, 100),
        (format!("bytes={}-", size - 10), size as usize - 10, 10),
        ("bytes=-1000".into(), size as usize - 1000, 1000),
        (format!("bytes=1048576-{}", 12 << 20), 1 << 20, (11 << 20) + 1),
        (format!("bytes={}-{}", size - 5, size + 100), size as usize - 5, 5),
    ];
    for url in [&file_url, &blob_url] {
        for (range, offset, len) in &cases {
            let got = get_range(&s, url, &token, range).await;
            assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{range} of {url}");
            assert_eq!(
                got.content_range.as_deref(),
                Some(format!("bytes {offset}-{}/{size}", offset + len - 1).as_str()),
                "{range}"
            );
            assert_eq!(got.content_length, Some(*len as u64), "{range}");
            assert_eq!(got.accept_ranges.as_deref(), Some("bytes"));
            assert!(
                got.body == bytes[*offset..offset + len],
                "{range}: the bytes of the range"
            );
        }
        let past = get_range(&s, url, &token, &format!("bytes={size}-")).await;
        assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(past.content_range, Some(format!("bytes */{size}")));
        let several = get_range(&s, url, &token, "bytes=0-1,5-6").await;
        assert_eq!(several.status, StatusCode::OK, "several ranges get the whole body");
        assert!(several.body == bytes);
        assert_eq!(several.accept_ranges.as_deref(), Some("bytes"));
    }
    // The client's range call (what a mount uses for parts of a blob).
    let resp = c
        .blob_range_response("p", &hash, boundary as u64 - 3, 6)
        .await
        .expect("range");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert!(resp.bytes().await.unwrap() == bytes[boundary - 3..boundary + 3]);
    // Ranges of a small, whole blob too.
    let part = get_range(&s, &s.purl("p", &format!("/blobs/{small}")), &token, "bytes=1-3").await;
    assert_eq!((part.status, part.body), (StatusCode::PARTIAL_CONTENT, b"mal".to_vec()));
}

#[tokio::test]
async fn manifests_are_refused_for_missing_chunks_wrong_hashes_bad_shapes_and_sizes_over_the_limit() {
    let s = TestServer::start_with(&["--max-file-bytes", "30M"]).await;
    let token = s.project_with_token("p").await;
    let health: Health = s
        .get(&s.url("/health"), &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health.limits.map(|l| l.max_file_bytes), Some(30 << 20));

    let bytes = noise(20 << 20, 2);
    let (_file, hash, manifest) = large_file(&bytes);
    let n = manifest.chunks.len();
    upload_chunks(&s, "p", &token, &bytes, &manifest, &(0..n - 1).collect::<Vec<_>>()).await;
    let last = manifest.chunks[n - 1].hash.clone();

    let e = put_manifest_json(&s, "p", &token, &hash, &serde_json::to_value(&manifest).unwrap()).await;
    assert_eq!((e.status, e.code.as_str()), (StatusCode::BAD_REQUEST, "blob_missing"));
    assert!(
        e.message.contains(last.as_str()),
        "names the missing chunk: {}",
        e.message
    );

    upload_chunks(&s, "p", &token, &bytes, &manifest, &[n - 1]).await;
    // The chunks, but under another hash: the server reads them and says what they make.
    let wrong = hash_of(b"something else");
    let mut lying = manifest.clone();
    lying.hash = wrong.clone();
    let e = put_manifest_json(&s, "p", &token, &wrong, &serde_json::to_value(&lying).unwrap()).await;
    assert_eq!((e.status, e.code.as_str()), (StatusCode::BAD_REQUEST, "hash_mismatch"));
    assert!(e.message.contains(hash.as_str()), "gives the real hash: {}", e.message);
    // Chunks in another order make other bytes.
    let mut shuffled = manifest.clone();
    shuffled.chunks.swap(0, 1);
    let e = put_manifest_json(&s, "p", &token, &hash, &serde_json::to_value(&shuffled).unwrap()).await;
    assert_eq!(e.code, "hash_mismatch");
    // The URL and the body disagree.
    let e = put_manifest_json(&s, "p", &token, &wrong, &serde_json::to_value(&manifest).unwrap()).await;
    assert_eq!((e.status, e.code.as_str()), (StatusCode::BAD_REQUEST, "invalid_field"));
    // Sizes that do not add up, no chunks, a zero-byte chunk, a chunk size that lies.
    let mut short = manifest.clone();
    short.size -= 1;
    let mut empty = manifest.clone();
    empty.chunks.clear();
    let mut zero = manifest.clone();
    zero.chunks[0].size = 0;
    let mut shifted = manifest.clone();
    shifted.chunks[0].size += 1;
    shifted.chunks[1].size -= 1;
    for (what, bad) in [("short", short), ("empty", empty), ("zero", zero), ("shifted", shifted)] {
        let e = put_manifest_json(&s, "p", &token, &hash, &serde_json::to_value(&bad).unwrap()).await;
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_field"),
            "{what}: {e:?}"
        );
    }
    let e = put_manifest_json(&s, "p", &token, &hash, &json!({"hash": hash, "size": 1})).await;
    assert_eq!((e.status, e.code.as_str()), (StatusCode::BAD_REQUEST, "invalid_body"));

    // Nothing of that registered the hash.
    let e = s
        .commit_req("p", &token, &commit_request("f.bin", None, hash.clone()))
        .await
        .expect_err("the hash is not the project's yet");
    assert_eq!(e.code, "blob_missing");
    assert_eq!(client(&s, &token).get_manifest("p", &hash).await.unwrap(), None);

    // Over --max-file-bytes: 413 before any chunk is read.
    let big = noise(40 << 20, 3);
    let (_big_file, big_hash, big_manifest) = large_file(&big);
    let e = put_manifest_json(
        &s,
        "p",
        &token,
        &big_hash,
        &serde_json::to_value(&big_manifest).unwrap(),
    )
    .await;
    assert_eq!(
        (e.status, e.code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    assert!(e.message.contains("--max-file-bytes"), "{}", e.message);

    // A read-only token may not register anything.
    let reader = s.token("p", Access::Read).await.token;
    let e = put_manifest_json(&s, "p", &reader, &hash, &serde_json::to_value(&manifest).unwrap()).await;
    assert_eq!(e.status, StatusCode::FORBIDDEN);

    // With everything right: registered, committed, read back.
    let receipt: BlobReceipt = send(
        s.req(Method::PUT, &manifest_url(&s, "p", &hash), Some(&token))
            .json(&manifest),
    )
    .await
    .expect("the manifest");
    assert!(receipt.created);
    s.commit_req("p", &token, &commit_request("f.bin", None, hash.clone()))
        .await
        .expect("commit");
    assert!(s.read_bytes("p", &token, "f.bin").await == bytes);
}

#[tokio::test]
async fn missing_blobs_tells_an_interrupted_upload_what_is_left() {
    let s = TestServer::start().await;
    let token = s.project_with_token("p").await;
    let bytes = noise(24 << 20, 4);
    let (file, hash, manifest) = large_file(&bytes);
    let chunks: Vec<BlobHash> = manifest.chunks.iter().map(|c| c.hash.clone()).collect();
    let c = client(&s, &token);
    assert_eq!(
        c.missing_blobs("p", &chunks).await.unwrap(),
        chunks,
        "nothing uploaded yet"
    );

    let half: Vec<usize> = (0..chunks.len()).step_by(2).collect();
    upload_chunks(&s, "p", &token, &bytes, &manifest, &half).await;
    let rest: Vec<BlobHash> = (0..chunks.len())
        .filter(|i| i % 2 == 1)
        .map(|i| chunks[i].clone())
        .collect();
    assert_eq!(
        c.missing_blobs("p", &chunks).await.unwrap(),
        rest,
        "the rest, in request order"
    );

    c.upload_file("p", &hash, file.path())
        .await
        .expect("the upload resumes");
    assert!(c.missing_blobs("p", &chunks).await.unwrap().is_empty());
    assert!(c
        .missing_blobs("p", std::slice::from_ref(&hash))
        .await
        .unwrap()
        .is_empty());

    // Bounded, and only for writers.
    let many = vec![hash.clone(); 10_001];
    let e = expect_error(
        s.post(&s.purl("p", "/blobs/missing"), &token, &json!({ "hashes": many })),
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert!(e.message.contains("10000"), "{}", e.message);
    let reader = s.token("p", Access::Read).await.token;
    expect_error(
        s.post(&s.purl("p", "/blobs/missing"), &reader, &json!({ "hashes": [hash] })),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        s.post(&s.purl("p", "/blobs/missing"), &token, &json!({ "hashes": ["nothex"] })),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
}

#[tokio::test]
async fn a_server_crash_between_chunks_and_manifest_commits_nothing_and_the_upload_completes_after() {
    let mut s = TestServer::start().await;
    let token = s.project_with_token("p").await;
    let bytes = noise(30 << 20, 5);
    let (file, hash, manifest) = large_file(&bytes);
    let n = manifest.chunks.len();
    upload_chunks(&s, "p", &token, &bytes, &manifest, &(0..n / 2).collect::<Vec<_>>()).await;
    s.kill_9();
    s.restart().await;

    let e = s
        .commit_req("p", &token, &commit_request("f.bin", None, hash.clone()))
        .await
        .expect_err("no commit can name a blob whose manifest never arrived");
    assert_eq!(e.code, "blob_missing");
    let c = client(&s, &token);
    assert_eq!(c.get_manifest("p", &hash).await.unwrap(), None);
    let chunks: Vec<BlobHash> = manifest.chunks.iter().map(|c| c.hash.clone()).collect();
    let missing = c.missing_blobs("p", &chunks).await.unwrap();
    assert_eq!(
        missing,
        chunks[n / 2..].to_vec(),
        "the chunks acknowledged before the crash are kept"
    );

    c.upload_file("p", &hash, file.path())
        .await
        .expect("the upload completes");
    s.commit_req("p", &token, &commit_request("f.bin", None, hash.clone()))
        .await
        .expect("commit");
    s.restart().await;
    assert!(
        s.read_bytes("p", &token, "f.bin").await == bytes,
        "read back after another restart"
    );
}

#[tokio::test]
async fn another_project_cannot_read_the_manifest_or_chunks_it_never_uploaded() {
    let s = TestServer::start().await;
    let owner = s.project_with_token("p").await;
    let other = s.project_with_token("q").await;
    let bytes = noise(20 << 20, 6);
    let (file, hash, manifest) = large_file(&bytes);
    client(&s, &owner)
        .upload_file("p", &hash, file.path())
        .await
        .expect("upload");

    let stranger = client(&s, &other);
    assert_eq!(stranger.get_manifest("q", &hash).await.unwrap(), None);
    let e = s.get_blob("q", &other, hash.as_str()).await.expect_err("not q's");
    assert_eq!(e.status, StatusCode::NOT_FOUND);
    let e = s
        .get_blob("q", &other, manifest.chunks[0].hash.as_str())
        .await
        .expect_err("not q's");
    assert_eq!(e.status, StatusCode::NOT_FOUND);
    // Knowing the manifest is not enough: q must upload the chunks itself.
    let e = put_manifest_json(&s, "q", &other, &hash, &serde_json::to_value(&manifest).unwrap()).await;
    assert_eq!(e.code, "blob_missing");
    let chunks: Vec<BlobHash> = manifest.chunks.iter().map(|c| c.hash.clone()).collect();
    assert_eq!(stranger.missing_blobs("q", &chunks).await.unwrap(), chunks);
    // And p's token cannot reach q at all.
    let e = s
        .get_blob("q", &owner, hash.as_str())
        .await
        .expect_err("p's token in q");
    assert_eq!(e.status, StatusCode::NOT_FOUND);

    // Once q has the bytes too, it is q's as well (stored once).
    let receipt = stranger.upload_file("q", &hash, file.path()).await.expect("q uploads");
    assert!(receipt.created, "new to q");
    assert_eq!(stranger.get_manifest("q", &hash).await.unwrap(), Some(manifest));
}

#[tokio::test]
async fn a_damaged_chunk_in_storage_is_never_served_as_good() {
    if std::env::var(TEST_BLOBS_ENV).is_ok_and(|v| !v.is_empty()) {
        eprintln!("skipped: damages a blob file, which needs the folder store");
        return;
    }
    let s = TestServer::start().await;
    let token = s.project_with_token("p").await;
    let bytes = noise(20 << 20, 7);
    let (file, hash, manifest) = large_file(&bytes);
    client(&s, &token)
        .upload_file("p", &hash, file.path())
        .await
        .expect("upload");
    s.commit_req("p", &token, &commit_request("f.bin", None, hash.clone()))
        .await
        .expect("commit");

    // Flip one byte of the second chunk in place (same size).
    let chunk = manifest.chunks[1].hash.as_str().to_string();
    let path = s.data_dir.join("blobs").join(&chunk[..2]).join(&chunk);
    let mut stored = std::fs::read(&path).expect("the chunk is a file");
    stored[1000] ^= 0xff;
    std::fs::write(&path, &stored).expect("damage it");

    for url in [
        s.file_url("p", "f.bin"),
        s.purl("p", &format!("/blobs/{hash}")),
        s.purl("p", &format!("/blobs/{chunk}")),
    ] {
        let resp = s.get(&url, &token).send().await.expect("request");
        let outcome = if resp.status().is_success() {
            resp.bytes().await.map(|b| b.to_vec())
        } else {
            Ok(Vec::new())
        };
        if let Ok(body) = outcome {
            assert!(
                body != bytes && body != stored && body.len() < stored.len().max(bytes.len()),
                "{url}: a damaged chunk was served whole ({} bytes)",
                body.len()
            );
        }
    }
    assert!(s.log().contains("corrupt"), "the server logs the damage");
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_manifest_puts_all_succeed_and_exactly_one_registers_the_file() {
    let s = TestServer::start().await;
    let token = s.project_with_token("p").await;
    let bytes = noise(18 << 20, 8);
    let (_file, hash, manifest) = large_file(&bytes);
    upload_chunks(
        &s,
        "p",
        &token,
        &bytes,
        &manifest,
        &(0..manifest.chunks.len()).collect::<Vec<_>>(),
    )
    .await;
    let c = client(&s, &token);
    let puts = (0..4).map(|_| c.put_manifest("p", &manifest));
    let receipts = futures_util::future::join_all(puts).await;
    let created = receipts
        .iter()
        .map(|r| r.as_ref().expect("every racing PUT succeeds").created)
        .filter(|created| *created)
        .count();
    assert_eq!(
        created, 1,
        "one PUT registered the file, the others found it: {receipts:?}"
    );
    s.commit_req("p", &token, &commit_request("f.bin", None, hash))
        .await
        .expect("commit");
    assert!(s.read_bytes("p", &token, "f.bin").await == bytes);
}

#[tokio::test]
async fn a_chunk_lost_from_storage_is_asked_for_again_and_the_retry_completes() {
    if std::env::var(TEST_BLOBS_ENV).is_ok_and(|v| !v.is_empty()) {
        eprintln!("skipped: removes a blob file, which needs the folder store");
        return;
    }
    let s = TestServer::start().await;
    let token = s.project_with_token("p").await;
    let bytes = noise(20 << 20, 9);
    let (file, hash, manifest) = large_file(&bytes);
    let n = manifest.chunks.len();
    upload_chunks(&s, "p", &token, &bytes, &manifest, &(0..n).collect::<Vec<_>>()).await;
    let lost = manifest.chunks[1].hash.as_str().to_string();
    std::fs::remove_file(s.data_dir.join("blobs").join(&lost[..2]).join(&lost)).expect("lose a chunk");

    let c = client(&s, &token);
    let e = c
        .put_manifest("p", &manifest)
        .await
        .expect_err("the manifest names a chunk storage lost");
    assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST), "{e}");
    assert!(e.to_string().contains(&lost), "names the lost chunk: {e}");
    let chunks: Vec<BlobHash> = manifest.chunks.iter().map(|c| c.hash.clone()).collect();
    assert_eq!(
        c.missing_blobs("p", &chunks).await.unwrap(),
        vec![manifest.chunks[1].hash.clone()],
        "the lost chunk is asked for again"
    );
    // The upload helper asks which chunks are missing, so it sends the lost
    // one again (it also retries a manifest PUT answered blob_missing).
    c.upload_file("p", &hash, file.path())
        .await
        .expect("the retry uploads it and completes");
    s.commit_req("p", &token, &commit_request("f.bin", None, hash))
        .await
        .expect("commit");
    assert!(s.read_bytes("p", &token, "f.bin").await == bytes);
}
