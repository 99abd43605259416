//! A file stored as chunks (uploaded by the client's `upload_file`, as the
//! mount does) reads through WebDAV whole and in ranges.

use super::*;
use contextfs::client::Client;

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_file_reads_whole_and_in_ranges() {
    let (s, token) = setup().await;
    let mut bytes = vec![0u8; 20 << 20];
    blake3::Hasher::new()
        .update(b"webdav chunks")
        .finalize_xof()
        .fill(&mut bytes);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("big.bin");
    std::fs::write(&file, &bytes).expect("write");
    let hash = hash_of(&bytes);
    let client = Client::new(&s.base, Some(token.clone())).expect("client");
    client
        .upload_file(PROJECT, &hash, &file)
        .await
        .expect("upload by chunks");
    assert!(
        client.get_manifest(PROJECT, &hash).await.unwrap().is_some(),
        "stored as chunks"
    );
    s.commit_req(PROJECT, &token, &commit_request("big.bin", None, hash))
        .await
        .expect("commit");

    let dav = Dav::new(&s, PROJECT, &token);
    let (status, _, body) = dav.send(dav.req("GET", "big.bin")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == bytes, "the whole file ({} bytes read)", body.len());
    let (from, to) = ((9 << 20) - 7, (9 << 20) + 7);
    let (status, _, body) = dav
        .send(dav.req("GET", "big.bin").header("range", format!("bytes={from}-{to}")))
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(body == bytes[from..=to], "the range");
}
