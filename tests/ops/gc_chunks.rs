//! Garbage collection of chunked content: the chunks of a manifest whose
//! hash something holds stay; a manifest nothing holds is dropped after the
//! grace period, and with it the chunks no other live manifest lists.

use std::collections::HashSet;

use super::*;
use contextfs::chunks::{manifest_of, Manifest};
use contextfs::client::Client;
use contextfs::model::BlobHash;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Uploads `bytes` by chunks (as the mount does); its hash and manifest.
async fn upload_chunked(server: &TestServer, project: &str, token: &str, bytes: &[u8]) -> (BlobHash, Manifest) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("upload");
    std::fs::write(&path, bytes).expect("write the file");
    let hash = hash_of(bytes);
    let client = Client::new(&server.base, Some(token.to_string())).expect("client");
    client
        .upload_file(project, &hash, &path)
        .await
        .unwrap_or_else(|e| panic!("upload {hash}: {e}"));
    (hash, manifest_of(bytes).expect("manifest"))
}

fn chunk_set(m: &Manifest) -> HashSet<BlobHash> {
    m.chunks.iter().map(|c| c.hash.clone()).collect()
}

async fn missing(server: &TestServer, project: &str, token: &str, hashes: &HashSet<BlobHash>) -> HashSet<BlobHash> {
    let client = Client::new(&server.base, Some(token.to_string())).expect("client");
    let asked: Vec<BlobHash> = hashes.iter().cloned().collect();
    client
        .missing_blobs(project, &asked)
        .await
        .expect("blobs/missing")
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_the_chunks_of_live_manifests_and_collects_the_rest() {
    let server = TestServer::start_with(&["--gc-grace", GRACE]).await;
    let token = server.project_with_token("big").await;
    // A is committed; B is A with 1 MiB appended (it shares most of A's
    // chunks) and is uploaded but never committed; C shares nothing.
    let a_bytes = noise(20 << 20, 1);
    let mut b_bytes = a_bytes.clone();
    b_bytes.extend_from_slice(&noise(1 << 20, 2));
    let c_bytes = noise(18 << 20, 3);
    let (a, a_manifest) = upload_chunked(&server, "big", &token, &a_bytes).await;
    server
        .commit_req("big", &token, &commit_request("a.bin", None, a.clone()))
        .await
        .expect("commit A");
    let (b, b_manifest) = upload_chunked(&server, "big", &token, &b_bytes).await;
    let (_c, c_manifest) = upload_chunked(&server, "big", &token, &c_bytes).await;
    let (a_chunks, b_chunks, c_chunks) = (chunk_set(&a_manifest), chunk_set(&b_manifest), chunk_set(&c_manifest));
    let shared: HashSet<BlobHash> = a_chunks.intersection(&b_chunks).cloned().collect();
    let b_only: HashSet<BlobHash> = b_chunks.difference(&a_chunks).cloned().collect();
    assert!(
        !shared.is_empty() && !b_only.is_empty(),
        "an append changes only the last chunks"
    );

    let early = gc(&server, false).await;
    assert_eq!(
        (early.blobs_deleted, early.manifests_deleted),
        (0, 0),
        "all in grace: {early:?}"
    );
    assert!(early.missing.is_empty(), "a chunked hash is not missing: {early:?}");

    tokio::time::sleep(PAST_GRACE).await;
    let expected: HashSet<BlobHash> = b_only.union(&c_chunks).cloned().collect();
    let dry = gc(&server, true).await;
    assert_eq!(dry.manifests_deleted, 2, "B's and C's manifests: {dry:?}");
    assert_eq!(dry.deleted.iter().cloned().collect::<HashSet<_>>(), expected, "{dry:?}");
    let real = gc(&server, false).await;
    assert_eq!(real.manifests_deleted, 2, "{real:?}");
    assert_eq!(
        real.deleted.iter().cloned().collect::<HashSet<_>>(),
        expected,
        "{real:?}"
    );
    assert!(real.missing.is_empty() && real.corrupt.is_empty(), "{real:?}");
    assert_eq!(
        real.blobs_referenced as usize,
        a_chunks.len(),
        "A's chunks are referenced: {real:?}"
    );

    assert!(
        server.read_bytes("big", &token, "a.bin").await == a_bytes,
        "A reads back whole"
    );
    assert!(missing(&server, "big", &token, &a_chunks).await.is_empty());
    assert_eq!(
        missing(&server, "big", &token, &c_chunks).await,
        c_chunks,
        "C's chunks are gone"
    );
    let client = Client::new(&server.base, Some(token.clone())).expect("client");
    assert_eq!(
        client.get_manifest("big", &b).await.unwrap(),
        None,
        "B's manifest is gone"
    );
    let refused = server
        .commit_req("big", &token, &commit_request("b.bin", None, b.clone()))
        .await
        .expect_err("B is no longer the project's");
    assert_eq!(refused.code, "blob_missing");

    // B uploaded again sends only what GC took, then commits. A is then
    // pruned away: its own chunks go, the ones it shares with B stay.
    let before = missing(&server, "big", &token, &b_chunks).await;
    assert_eq!(before, b_only, "only B's own chunks have to be sent again");
    let (b_again, _) = upload_chunked(&server, "big", &token, &b_bytes).await;
    server
        .commit_req("big", &token, &commit_request("b.bin", None, b_again))
        .await
        .expect("commit B");
    let a_head = server.history("big", &token, "a.bin").await[0].version;
    server
        .commit("big", &token, "a.bin", Some(a_head), b"small now\n")
        .await
        .expect("overwrite A");
    set_retention(&server, "big", None, Some(1)).await;
    tokio::time::sleep(PAST_GRACE).await;
    let after = gc(&server, false).await;
    assert_eq!(after.versions_pruned, 1, "{after:?}");
    assert_eq!(after.manifests_deleted, 1, "A's manifest: {after:?}");
    let a_only: HashSet<BlobHash> = a_chunks.difference(&b_chunks).cloned().collect();
    let deleted: HashSet<BlobHash> = after.deleted.iter().cloned().collect();
    assert!(a_only.is_subset(&deleted), "A's own chunks go: {after:?}");
    assert!(deleted.is_disjoint(&b_chunks), "no chunk of B goes: {after:?}");
    assert!(after.missing.is_empty(), "{after:?}");
    assert!(
        server.read_bytes("big", &token, "b.bin").await == b_bytes,
        "B reads back whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_reports_a_lost_chunk_of_a_committed_file_as_missing() {
    if blobs_in_s3() {
        eprintln!("skipped: removes a blob file, which needs the folder store");
        return;
    }
    let server = TestServer::start_with(&["--gc-grace", GRACE]).await;
    let token = server.project_with_token("lost").await;
    let bytes = noise(20 << 20, 4);
    let (hash, manifest) = upload_chunked(&server, "lost", &token, &bytes).await;
    server
        .commit_req("lost", &token, &commit_request("f.bin", None, hash))
        .await
        .expect("commit");
    let chunk = manifest.chunks[2].hash.clone();
    let path = server
        .data_dir
        .join("blobs")
        .join(&chunk.as_str()[..2])
        .join(chunk.as_str());
    std::fs::remove_file(&path).expect("lose a chunk");
    let report = gc(&server, false).await;
    assert_eq!(report.missing, vec![chunk], "{report:?}");
}
