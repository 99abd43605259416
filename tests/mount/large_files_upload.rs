//! Large files written through the mount: uploaded by chunks (only the
//! chunks the server lacks), resumed after kill -9 of the mount or of the
//! server without sending present chunks again, never committed before the
//! manifest, never committed from damaged journal bytes, and never larger
//! than the server's `--max-file-bytes` (EFBIG at the write).
//!
//! The servers keep blobs in a folder (`start_on`, never S3): the tests read
//! `DATA/blobs/ab/<hash>` to see which chunks were stored and when. An
//! upload of a blob the folder has refreshes that file's mtime
//! (`touch` in src/server/blobs/dir.rs), and nothing else writes it, so a
//! chunk file whose mtime did not move was not uploaded again.

use std::time::{Duration, Instant, SystemTime};

use contextfs::chunks::{Manifest, CHUNK_MAX};

use super::*;

const MIB: usize = 1024 * 1024;
/// Large uploads, hashing and chunking run in debug builds on a shared
/// machine: far beyond the usual 30 s.
const LARGE_DEADLINE: Duration = Duration::from_secs(300);

/// A server whose blobs live in DATA/blobs (whatever CONTEXTFS_TEST_BLOBS
/// says), on a data dir the returned TempDir keeps.
async fn folder_server(args: &[&str]) -> (tempfile::TempDir, TestServer) {
    let data = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_on(data.path().join("data"), args.iter().map(|a| a.to_string()).collect()).await;
    (data, s)
}

/// Every blob file in the server's folder: hash -> (size, mtime).
fn blob_files(s: &TestServer) -> BTreeMap<String, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let blobs = s.data_dir.join("blobs");
    for shard in std::fs::read_dir(&blobs).expect("the server's blob folder").flatten() {
        for entry in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            if let Ok(meta) = entry.metadata() {
                let mtime = meta.modified().expect("mtime");
                out.insert(entry.file_name().to_string_lossy().into_owned(), (meta.len(), mtime));
            }
        }
    }
    out
}

/// The server's blob files once nothing changed among them for a second
/// (at most 60 s): what requests still on their way have left there.
async fn settled_blob_files(s: &TestServer) -> BTreeMap<String, (u64, SystemTime)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = blob_files(s);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = blob_files(s);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

async fn eventually_within<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(why) if started.elapsed() > deadline => {
                panic!("{what}: still not true after {deadline:?}; last check: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until the server's head of `path` has `hash`.
async fn server_has_hash(s: &TestServer, p: &str, path: &str, hash: &BlobHash) -> TreeEntry {
    eventually_within(&format!("the server has {path} as {hash}"), LARGE_DEADLINE, || async {
        let tree = tree_map(s, p).await?;
        match tree.get(path) {
            Some(e) if e.hash == *hash => Ok(e.clone()),
            Some(e) => Err(format!("{path} is {} ({} bytes)", e.hash, e.size)),
            None => Err(format!("no {path} yet")),
        }
    })
    .await
}

async fn manifest_of_blob(s: &TestServer, p: &str, hash: &BlobHash) -> Result<Manifest, ApiErr> {
    send(s.get(&s.purl(p, &format!("/manifests/{hash}")), &s.admin)).await
}

/// Waits until the server's folder holds at least `n` chunks of the upload
/// in progress (blobs that were not there in `before`); the file is not
/// committed yet (else the test would prove nothing). Returns the folder.
async fn some_chunks_uploaded(
    s: &TestServer,
    p: &str,
    path: &str,
    before: &BTreeMap<String, (u64, SystemTime)>,
    n: usize,
) -> BTreeMap<String, (u64, SystemTime)> {
    let folder = eventually_within(
        &format!("{n} chunks of {path} are on the server"),
        LARGE_DEADLINE,
        || async {
            let now = blob_files(s);
            let new = now.keys().filter(|k| !before.contains_key(*k)).count();
            if new >= n {
                Ok(now)
            } else {
                Err(format!("{new} new blobs"))
            }
        },
    )
    .await;
    let tree = tree_map(s, p).await.expect("tree");
    assert!(
        !tree.contains_key(path),
        "{path} was committed already; the upload was too fast to interrupt"
    );
    folder
}

/// The chunks of `manifest` present in `folder` with their mtimes there.
fn chunk_times(manifest: &Manifest, folder: &BTreeMap<String, (u64, SystemTime)>) -> BTreeMap<String, SystemTime> {
    manifest
        .chunks
        .iter()
        .filter_map(|c| folder.get(c.hash.as_str()).map(|(_, t)| (c.hash.to_string(), *t)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_commits_by_chunks_reads_back_elsewhere_and_an_append_sends_only_the_last_chunks() {
    let (_data, s) = folder_server(&[]).await;
    let p = "large";
    let m = MountedWorkspace::create(&s, p, "agent-large").await;
    let original = pseudo_random(150 * MIB + 12_345, 21);
    let source = m.home.path().join("source.bin");
    std::fs::write(&source, &original).expect("write the source file");
    let before = blob_files(&s);
    m.sh_ok(&format!("cp {} big.bin", source.display()));
    let hash = BlobHash::of(&original);
    let entry = server_has_hash(&s, p, "big.bin", &hash).await;
    assert_eq!(entry.size, original.len() as u64);

    // Stored as chunks: every chunk of the manifest is a blob file of its
    // size, and the whole file is no blob of its own.
    let manifest = manifest_of_blob(&s, p, &hash).await.expect("the manifest GET answers");
    assert_eq!(
        (manifest.hash.clone(), manifest.size),
        (hash.clone(), original.len() as u64)
    );
    assert!(manifest.chunks.len() >= 150 / 8, "{} chunks", manifest.chunks.len());
    let folder = blob_files(&s);
    for c in &manifest.chunks {
        assert_eq!(
            folder.get(c.hash.as_str()).map(|f| f.0),
            Some(c.size),
            "chunk {}",
            c.hash
        );
    }
    assert!(
        !folder.contains_key(hash.as_str()),
        "the whole file was stored as one blob too"
    );
    let stored: u64 = folder
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .map(|(_, f)| f.0)
        .sum();
    assert_eq!(stored, original.len() as u64, "each chunk stored once, nothing else");
    assert_eq!(s.history(p, &s.admin, "big.bin").await.len(), 1);
    m.wait_synced().await;

    // A second mount with an empty cache reads the same bytes.
    let other_home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let m2 = MountedWorkspace::mount_at(other_home, "mnt2", &s.mount_url(), p, &m.token, "agent-reader", &[]);
    let read_back = std::fs::read(m2.dir.join("big.bin")).expect("read through the second mount");
    assert!(read_back == original, "the second mount reads other bytes");
    drop(read_back);

    // Append 1 MiB: only the last chunk(s) are new on the server.
    let tail = pseudo_random(MIB, 99);
    let tail_file = m.home.path().join("tail.bin");
    std::fs::write(&tail_file, &tail).expect("write the tail");
    let before_append = blob_files(&s);
    m.sh_ok(&format!("cat {} >> big.bin", tail_file.display()));
    let mut appended = original;
    appended.extend_from_slice(&tail);
    let new_hash = BlobHash::of(&appended);
    server_has_hash(&s, p, "big.bin", &new_hash).await;
    let after_append = blob_files(&s);
    let new_blobs: Vec<(&String, u64)> = after_append
        .iter()
        .filter(|(k, _)| !before_append.contains_key(*k))
        .map(|(k, f)| (k, f.0))
        .collect();
    let new_bytes: u64 = new_blobs.iter().map(|(_, size)| size).sum();
    assert!(
        new_bytes <= 2 * CHUNK_MAX as u64 && new_bytes >= tail.len() as u64,
        "the append stored {new_bytes} new bytes: {new_blobs:?}"
    );
    let new_manifest = manifest_of_blob(&s, p, &new_hash).await.expect("the new manifest");
    let last = new_manifest.chunks.len();
    for (blob, _) in &new_blobs {
        let at = new_manifest
            .chunks
            .iter()
            .position(|c| c.hash.as_str() == blob.as_str())
            .unwrap_or_else(|| panic!("new blob {blob} is no chunk of the new version"));
        assert!(at + 3 >= last, "new chunk {at} of {last} is not at the end");
    }
    // Every chunk before the change was reused, untouched.
    for c in &new_manifest.chunks[..last.saturating_sub(3)] {
        assert_eq!(
            after_append.get(c.hash.as_str()).map(|f| f.1),
            before_append.get(c.hash.as_str()).map(|f| f.1),
            "chunk {} was uploaded again",
            c.hash
        );
    }
    let history = s.history(p, &s.admin, "big.bin").await;
    assert_eq!(history.len(), 2, "{history:#?}");
    m.wait_synced().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_mount_mid_upload_resumes_without_resending_chunks_or_committing_early() {
    let (_data, mut s) = folder_server(&[]).await;
    // Slow round trips, so the upload is still going when the mount dies.
    s.slow_down_mounts(Duration::from_millis(300), Duration::from_millis(500));
    let p = "killed";
    let mut m = MountedWorkspace::create(&s, p, "agent-killed").await;
    let content = pseudo_random(160 * MIB, 5);
    let hash = BlobHash::of(&content);
    let source = m.home.path().join("source.bin");
    std::fs::write(&source, &content).expect("write the source file");
    let before = blob_files(&s);
    m.sh_ok(&format!("cp {} big.bin", source.display()));
    some_chunks_uploaded(&s, p, "big.bin", &before, 4).await;
    m.kill_9();
    // Requests the proxy still holds reach the server for a moment (an
    // upload sent twice before the kill touches its blob when the second
    // lands): what counts is the blob folder once it has settled.
    let at_kill = settled_blob_files(&s).await;
    assert!(
        manifest_of_blob(&s, p, &hash).await.is_err(),
        "the manifest was sent before the mount died"
    );
    assert!(!tree_map(&s, p).await.expect("tree").contains_key("big.bin"));

    m.mount();
    server_has_hash(&s, p, "big.bin", &hash).await;
    let manifest = manifest_of_blob(&s, p, &hash).await.expect("the manifest");
    let present = chunk_times(&manifest, &at_kill);
    assert!(
        present.len() >= 4,
        "only {} chunks were there at the kill",
        present.len()
    );
    assert!(
        present.len() < manifest.chunks.len(),
        "every chunk was there at the kill"
    );
    let now = blob_files(&s);
    let resent: Vec<&String> = present
        .iter()
        .filter(|(h, t)| now[h.as_str()].1 != **t)
        .map(|(h, _)| h)
        .collect();
    assert!(resent.is_empty(), "chunks uploaded again after the restart: {resent:?}");
    let history = s.history(p, &s.admin, "big.bin").await;
    assert_eq!(
        history.len(),
        1,
        "one version, committed after the manifest: {history:#?}"
    );
    assert!(
        std::fs::read(m.dir.join("big.bin")).expect("read back") == content,
        "the mount shows other bytes"
    );
    m.wait_synced().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_leaves_the_file_queued_with_the_reason_and_it_lands_on_restart() {
    let (_data, mut s) = folder_server(&[]).await;
    s.slow_down_mounts(Duration::from_millis(300), Duration::from_millis(500));
    let p = "server-restart";
    let m = MountedWorkspace::create(&s, p, "agent-restart").await;
    let content = pseudo_random(160 * MIB, 77);
    let hash = BlobHash::of(&content);
    let source = m.home.path().join("source.bin");
    std::fs::write(&source, &content).expect("write the source file");
    let before = blob_files(&s);
    m.sh_ok(&format!("cp {} big.bin", source.display()));
    some_chunks_uploaded(&s, p, "big.bin", &before, 8).await;
    s.kill_9();
    let at_kill = blob_files(&s);
    let status = eventually_within("status says why big.bin waits", LARGE_DEADLINE, || async {
        let status = m.status();
        if status.contains("server: UNREACHABLE") && status.contains("queued   big.bin [create]") {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert!(status.contains("last error:"), "{status}");

    s.restart_on_same_port().await;
    server_has_hash(&s, p, "big.bin", &hash).await;
    let manifest = manifest_of_blob(&s, p, &hash).await.expect("the manifest");
    let present = chunk_times(&manifest, &at_kill);
    assert!(
        present.len() >= 8,
        "only {} chunks were there at the kill",
        present.len()
    );
    let now = blob_files(&s);
    let resent: Vec<&String> = present
        .iter()
        .filter(|(h, t)| now[h.as_str()].1 != **t)
        .map(|(h, _)| h)
        .collect();
    // A chunk the server stored but had not yet recorded when it died is
    // sent again: at most the uploads in flight (4 per file).
    assert!(
        resent.len() <= 4,
        "{} of {} chunks uploaded again: {resent:?}",
        resent.len(),
        present.len()
    );
    let history = s.history(p, &s.admin, "big.bin").await;
    assert_eq!(history.len(), 1, "{history:#?}");
    m.wait_synced().await;
    let status = m.status();
    assert!(status.contains("server: reachable"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_servers_max_file_bytes_fail_with_efbig_and_what_stays_is_committed() {
    let (_data, s) = folder_server(&["--max-file-bytes", "40M"]).await;
    let p = "efbig";
    let m = MountedWorkspace::create(&s, p, "agent-efbig").await;
    let limit = 40 * MIB;
    let out = m.sh("dd if=/dev/urandom of=big.bin bs=1M count=50");
    assert!(!out.status.success(), "dd past the limit succeeded: {}", both(&out));
    assert!(both(&out).contains("File too large"), "{}", both(&out));
    let kept = std::fs::read(m.dir.join("big.bin")).expect("read what stays");
    assert_eq!(kept.len(), limit, "a write across the limit ends at it");
    let hash = BlobHash::of(&kept);
    server_has_hash(&s, p, "big.bin", &hash).await;
    m.wait_synced().await;
    let versions = s.history(p, &s.admin, "big.bin").await;

    // Growing it any further fails too, and changes nothing.
    for grow in [
        "truncate -s 41M big.bin",
        "echo more >> big.bin",
        "fallocate -l 41M big.bin",
    ] {
        let out = m.sh(grow);
        assert!(!out.status.success(), "{grow} succeeded");
        assert!(both(&out).contains("File too large"), "{grow}: {}", both(&out));
    }
    // Up to the limit is fine (a sparse file).
    m.sh_ok("truncate -s 40M small.bin");
    assert_eq!(
        std::fs::metadata(m.dir.join("big.bin")).expect("stat").len(),
        limit as u64
    );
    m.wait_synced().await;
    let status = m.status();
    assert!(
        status.contains("(0 queued, 0 pending,") && !status.lines().any(|l| l.starts_with("queued")),
        "nothing waits that the server would refuse:\n{status}"
    );
    assert_eq!(
        s.history(p, &s.admin, "big.bin").await,
        versions,
        "the refused changes made no version"
    );
    server_has_hash(&s, p, "small.bin", &BlobHash::of(&vec![0u8; limit])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_copy_is_never_committed_and_status_says_why() {
    let (_data, mut s) = folder_server(&[]).await;
    let p = "damaged";
    let m = MountedWorkspace::create(&s, p, "agent-damaged").await;
    s.kill_9();
    // One file uploaded by chunks, one in a single PUT.
    let big = pseudo_random(20 * MIB, 3);
    let medium = pseudo_random(MIB, 4);
    std::fs::write(m.dir.join("big.bin"), &big).expect("write big.bin");
    std::fs::write(m.dir.join("medium.bin"), &medium).expect("write medium.bin");
    for (name, bytes) in [("big.bin", &big), ("medium.bin", &medium)] {
        let hash = BlobHash::of(bytes);
        // A file the kernel wrote is named by its hash once its last
        // descriptor is released (after close() returned; SEMANTICS.md,
        // "Write passthrough").
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut copies = files_named(&m.state_dir(), hash.as_str());
        while copies.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            copies = files_named(&m.state_dir(), hash.as_str());
        }
        assert_eq!(copies.len(), 1, "{name}: the journal's copy: {copies:?}");
        // Flip bytes in the middle, as a disk error would.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&copies[0])
            .expect("open the copy");
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"DAMAGED", bytes.len() as u64 / 2)
            .expect("damage the copy");
    }
    s.restart_on_same_port().await;
    let status = eventually_within("status names both refusals", LARGE_DEADLINE, || async {
        let status = m.status();
        let refused = |name: &str| {
            status
                .lines()
                .any(|l| l.starts_with(&format!("queued   {name}")) && l.contains("does not hold the content"))
        };
        if refused("big.bin") && refused("medium.bin") {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert!(status.contains("cannot be uploaded"), "{status}");
    let tree = tree_map(&s, p).await.expect("tree");
    assert!(
        !tree.contains_key("big.bin") && !tree.contains_key("medium.bin"),
        "{tree:?}"
    );
    assert!(
        manifest_of_blob(&s, p, &BlobHash::of(&big)).await.is_err(),
        "a manifest of damaged bytes"
    );
}
