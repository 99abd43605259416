//! Files larger than one upload may be (`--max-blob-bytes`, 1 GiB by
//! default) go up by chunks from `contextfs push` and `contextfs put`, as
//! from the mount: a file over the single-blob limit is committed, stored
//! as chunks, and reads back whole. (16 MiB stands in for the 1 GiB default:
//! the same path, without writing gigabytes in a test.)

use super::*;
use contextfs::chunks::Manifest;

const MIB: usize = 1024 * 1024;

/// The head of `path` holds `bytes`, stored as a chunked blob.
async fn committed_by_chunks(s: &TestServer, p: &str, path: &str, bytes: &[u8]) {
    let hash = BlobHash::of(bytes);
    let tree = server_tree(s, p).await;
    assert_eq!(tree.get(path), Some(&hash), "{path} on the server: {tree:?}");
    let manifest: Manifest = send(s.get(&s.purl(p, &format!("/manifests/{hash}")), &s.admin))
        .await
        .unwrap_or_else(|e| panic!("{path} is not stored as chunks: {e:?}"));
    assert_eq!(manifest.size, bytes.len() as u64);
    assert!(manifest.chunks.len() > 1, "{path}: {} chunk(s)", manifest.chunks.len());
    assert!(
        s.read_bytes(p, &s.admin, path).await == bytes,
        "{path} reads back other bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_put_upload_files_over_the_single_blob_limit_by_chunks() {
    let s = TestServer::start_with(&["--max-blob-bytes", "16777216"]).await;
    let p = "large";
    let token = s.project_with_token(p).await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let a = Folder::new(&home, "a", &s, p, &token);
    let out = a.cli(&["checkout", &a.dir_arg(), "--project", p]);
    assert!(out.status.success(), "checkout: {}", both(&out));

    // `contextfs push` of a 40 MiB file.
    let pushed = pseudo_random(40 * MIB, 11);
    std::fs::write(a.dir.join("pushed.bin"), &pushed).expect("write pushed.bin");
    let out = a.cli(&["push", &a.dir_arg()]);
    assert!(out.status.success(), "push: {}", both(&out));
    assert!(stdout(&out).contains("clean    pushed.bin"), "{}", both(&out));
    committed_by_chunks(&s, p, "pushed.bin", &pushed).await;

    // `contextfs put PATH FILE` and `contextfs put PATH < FILE`.
    let put = pseudo_random(24 * MIB, 12);
    let source = home.path().join("put-source.bin");
    std::fs::write(&source, &put).expect("write the source");
    let out = a.cli(&["put", "put.bin", &source.display().to_string()]);
    assert!(out.status.success(), "put FILE: {}", both(&out));
    committed_by_chunks(&s, p, "put.bin", &put).await;
    let out = a
        .command("bash")
        .args(["-c", &format!("{BIN} put from-stdin.bin < {}", source.display())])
        .output()
        .expect("run put < FILE");
    assert!(out.status.success(), "put < FILE: {}", both(&out));
    committed_by_chunks(&s, p, "from-stdin.bin", &put).await;
    // The spooled copy of standard input is gone.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(".contextfs-put-")
                && std::fs::metadata(e.path()).is_ok_and(|m| m.len() == put.len() as u64)
        })
        .collect();
    assert!(leftovers.is_empty(), "put left its spool file: {leftovers:?}");
}

/// A chunk the project uploaded earlier but the server's storage lost is
/// sent again by the same `put`: the manifest PUT names it (blob_missing),
/// the upload asks which chunks are missing again and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_lost_from_storage_is_sent_again_by_the_same_upload() {
    // Blobs in DATA/blobs whatever CONTEXTFS_TEST_BLOBS says: a chunk file is removed.
    let data = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_on(data.path().join("data"), vec![]).await;
    let p = "lost";
    let token = s.project_with_token(p).await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let a = Folder::new(&home, "a", &s, p, &token);
    let first = pseudo_random(24 * MIB, 31);
    let source = home.path().join("first.bin");
    std::fs::write(&source, &first).expect("write the source");
    let out = a.cli(&["put", "first.bin", &source.display().to_string()]);
    assert!(out.status.success(), "put: {}", both(&out));
    committed_by_chunks(&s, p, "first.bin", &first).await;
    let manifest: Manifest = send(s.get(&s.purl(p, &format!("/manifests/{}", BlobHash::of(&first))), &s.admin))
        .await
        .expect("the manifest");
    let lost = manifest.chunks[0].hash.to_string();
    std::fs::remove_file(s.data_dir.join("blobs").join(&lost[..2]).join(&lost)).expect("lose a chunk");

    // The same bytes and more: the first chunk is shared.
    let mut second = first.clone();
    second.extend_from_slice(&pseudo_random(MIB, 32));
    let source = home.path().join("second.bin");
    std::fs::write(&source, &second).expect("write the source");
    let out = a.cli(&["put", "second.bin", &source.display().to_string()]);
    assert!(out.status.success(), "one put completes: {}", both(&out));
    committed_by_chunks(&s, p, "second.bin", &second).await;
    assert!(
        s.data_dir.join("blobs").join(&lost[..2]).join(&lost).exists(),
        "the lost chunk is stored again"
    );
}
