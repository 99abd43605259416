//! One-call uploads of large files (`PUT .../files/{path}`), as pipelines
//! send them: a body far over `--max-blob-bytes` is stored as chunks cut on
//! the server, up to `--max-file-bytes`; a refused or cut-off body commits
//! nothing and registers no manifest, and its chunks go with the next GC.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use super::*;
use contextfs::chunks::{manifest_of, Manifest, CHUNK_MAX};
use contextfs::client::Client;

const BIG: usize = 40 << 20;

fn big_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write the file");
    file
}

/// `curl -T file` (a streamed body with a Content-Length, as a pipeline
/// sends it): the status and the answer's body.
fn curl_put(s: &TestServer, token: &str, path: &str, file: &Path) -> (u16, String) {
    let answer = tempfile::NamedTempFile::new().expect("temp file");
    let out = Command::new("curl")
        .args(["-sS", "-T"])
        .arg(file)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg("-o")
        .arg(answer.path())
        .args(["-w", "%{http_code}"])
        .arg(s.file_url("p", path))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl: {}", both(&out));
    let status = stdout(&out).trim().parse().expect("an HTTP status");
    (status, std::fs::read_to_string(answer.path()).unwrap_or_default())
}

/// Every file in the server's blob folder, by size (`None` when the blobs
/// are in S3).
fn stored_blob_sizes(s: &TestServer) -> Option<Vec<u64>> {
    let blobs = s.data_dir.join("blobs");
    if !blobs.is_dir() {
        return None;
    }
    let mut sizes = Vec::new();
    for shard in std::fs::read_dir(&blobs).expect("list blobs").flatten() {
        for blob in std::fs::read_dir(shard.path()).expect("list shard").flatten() {
            sizes.push(blob.metadata().expect("stat blob").len());
        }
    }
    Some(sizes)
}

async fn manifest(s: &TestServer, token: &str, hash: &BlobHash) -> Option<Manifest> {
    let client = Client::new(&s.base, Some(token.to_string())).expect("client");
    client.get_manifest("p", hash).await.expect("GET manifest")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_of_40_mib_over_an_8_mib_blob_limit_is_stored_as_chunks() {
    let s = TestServer::start_with(&["--max-blob-bytes", "8M"]).await;
    let token = s.project_with_token("p").await;
    let bytes = pseudo_random(BIG, 7);
    let file = big_file(&bytes);
    let hash = hash_of(&bytes);

    let (status, answer) = curl_put(&s, &token, "data/set.bin", file.path());
    assert_eq!(status, 200, "{answer}");
    let version: VersionInfo = serde_json::from_str(&answer).expect("a version");
    assert_eq!((version.hash.clone(), version.size), (hash.clone(), BIG as u64));
    assert!(
        s.read_bytes("p", &token, "data/set.bin").await == bytes,
        "the file reads back"
    );

    // Cut as a client cuts it: the manifest `upload_file` would send.
    let stored = manifest(&s, &token, &hash).await.expect("stored as chunks");
    assert_eq!(stored, manifest_of(&bytes[..]).expect("manifest"));
    assert!(stored.chunks.len() > 4, "{} chunks", stored.chunks.len());
    if let Some(sizes) = stored_blob_sizes(&s) {
        assert_eq!(sizes.len(), stored.chunks.len(), "one blob per chunk, no whole blob");
        assert!(sizes.iter().all(|n| *n <= CHUNK_MAX as u64), "{sizes:?}");
    }

    let (from, to) = (12_345_678usize, 21_000_000usize);
    let resp = s
        .get(&s.file_url("p", "data/set.bin"), &token)
        .header("Range", format!("bytes={from}-{to}"))
        .send()
        .await
        .expect("range request");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert!(resp.bytes().await.expect("range body") == bytes[from..=to], "the range");

    // Without a length (chunked transfer encoding) it streams the same way.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    let again = s
        .req(Method::PUT, &s.file_url("p", "data/copy.bin"), Some(&token))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
        .send()
        .await
        .expect("streamed PUT");
    assert_eq!(again.status(), StatusCode::OK);
    assert!(s.read_bytes("p", &token, "data/copy.bin").await == bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_over_max_file_bytes_is_refused_and_commits_nothing() {
    let s = TestServer::start_with(&["--max-blob-bytes", "8M", "--max-file-bytes", "30M"]).await;
    let token = s.project_with_token("p").await;
    let bytes = pseudo_random(BIG, 8);
    let file = big_file(&bytes);

    let (status, answer) = curl_put(&s, &token, "data/set.bin", file.path());
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer.contains("too_large") && answer.contains("--max-file-bytes"),
        "{answer}"
    );
    let read = s.read("p", &token, "data/set.bin", None).await;
    assert_err(read, StatusCode::NOT_FOUND, "not_found");
    assert!(manifest(&s, &token, &hash_of(&bytes)).await.is_none());
}

/// Sends a PUT declaring `declared` bytes, then only `bytes`, and closes:
/// what the server answered, if anything.
fn cut_off_put(s: &TestServer, token: &str, path: &str, declared: usize, bytes: &[u8]) -> String {
    let addr = s.listen_addr();
    let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
    let target = s.file_url("p", path).replace(&s.base, "");
    write!(
        conn,
        "PUT {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {declared}\r\n\r\n"
    )
    .expect("send the head");
    conn.write_all(bytes).expect("send half the body");
    conn.shutdown(std::net::Shutdown::Write).expect("close our side");
    conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_off_midway_commits_nothing_and_gc_removes_its_chunks() {
    let s = TestServer::start_with(&["--max-blob-bytes", "8M", "--gc-grace", "2s"]).await;
    let token = s.project_with_token("p").await;
    let bytes = pseudo_random(BIG, 9);

    let answer = cut_off_put(&s, &token, "data/set.bin", BIG, &bytes[..BIG / 2]);
    assert!(
        !answer.starts_with("HTTP/1.1 2"),
        "a cut-off body was accepted: {answer}"
    );
    let read = s.read("p", &token, "data/set.bin", None).await;
    assert_err(read, StatusCode::NOT_FOUND, "not_found");
    assert!(manifest(&s, &token, &hash_of(&bytes)).await.is_none());
    assert!(manifest(&s, &token, &hash_of(&bytes[..BIG / 2])).await.is_none());
    if let Some(sizes) = stored_blob_sizes(&s) {
        assert!(!sizes.is_empty(), "the chunks that arrived were stored");
    }

    // The server is fine: another large file goes in.
    let other = pseudo_random(BIG, 10);
    let file = big_file(&other);
    let (status, answer) = curl_put(&s, &token, "data/other.bin", file.path());
    assert_eq!(status, 200, "{answer}");
    assert!(s.read_bytes("p", &token, "data/other.bin").await == other);

    // The cut-off body's chunks are ordinary unreferenced blobs: GC removes
    // them after the grace period and keeps the committed file's.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let report: GcReport = send(s.post(&s.url("/gc"), &s.admin, &GcRequest { dry_run: false }))
        .await
        .expect("gc");
    assert!(report.blobs_deleted > 0, "{report:?}");
    let kept = manifest(&s, &token, &hash_of(&other))
        .await
        .expect("the committed file's manifest");
    if let Some(sizes) = stored_blob_sizes(&s) {
        assert_eq!(sizes.len(), kept.chunks.len(), "{report:?}");
    }
    assert!(s.read_bytes("p", &token, "data/other.bin").await == other);
}
