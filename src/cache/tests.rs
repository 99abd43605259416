//! Unit tests of the blob cache.

use super::*;

pub(super) fn read_all(mut file: File) -> Vec<u8> {
    let mut out = Vec::new();
    file.read_to_end(&mut out).expect("read cached blob");
    out
}

pub(super) fn tmp_files(cache: &BlobCache) -> Vec<PathBuf> {
    fs::read_dir(&cache.tmp_dir)
        .expect("list tmp")
        .map(|e| e.expect("tmp entry").path())
        .collect()
}

pub(super) fn blob_files(cache: &BlobCache) -> usize {
    scan_blobs(&cache.blobs_dir).expect("scan").len()
}

pub(super) fn set_mtime(path: &Path, mtime: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
}

#[test]
fn cache_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<BlobCache>();
    check::<CacheError>();
}

#[test]
fn fill_then_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
    let content = b"hello, cached world".repeat(100);
    let hash = BlobHash::of(&content);
    assert!(!cache.contains(&hash));
    assert!(cache.open_blob(&hash).expect("open_blob").is_none());

    let file = cache
        .get_or_fill(&hash, |fill| {
            for chunk in content.chunks(700) {
                fill.write(chunk)?;
            }
            assert_eq!(fill.written(), content.len() as u64);
            Ok(())
        })
        .expect("fill");
    assert_eq!(read_all(file), content);
    assert!(cache.contains(&hash));
    assert!(cache.path_of(&hash).is_file());
    assert!(cache
        .path_of(&hash)
        .starts_with(dir.path().join("blobs").join(&hash.as_str()[..2])));
    assert_eq!(cache.usage(), (content.len() as u64, 1 << 20, 1));
    assert!(tmp_files(&cache).is_empty());

    let reopened = cache.open_blob(&hash).expect("open_blob").expect("present");
    assert_eq!(read_all(reopened), content);
    // Present: the fill closure is not called again.
    let again = cache
        .get_or_fill(&hash, |_| panic!("must not refill a cached blob"))
        .expect("hit");
    assert_eq!(read_all(again), content);
}

#[test]
fn a_sealed_file_is_linked_not_copied_and_a_cross_device_one_is_copied() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BlobCache::open(&dir.path().join("cache"), 1 << 30).expect("open");
    let content = vec![7u8; 3 << 20];
    let hash = BlobHash::of(&content);
    let staged = dir.path().join("staged");
    fs::write(&staged, &content).expect("write");
    cache.insert_sealed_file(&hash, &staged).expect("insert");
    let cached = cache.open_blob(&hash).expect("open").expect("cached");
    assert_eq!(read_all(cached), content);
    let (cached_meta, staged_meta) = (
        fs::metadata(cache.path_of(&hash)).expect("stat cached"),
        fs::metadata(&staged).expect("stat staged"),
    );
    assert_eq!(cached_meta.ino(), staged_meta.ino(), "the cache holds the same inode");
    assert_eq!(cache.usage().0, content.len() as u64);

    // /dev/shm is another filesystem here: no link, a verified copy.
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let other = b"on another filesystem".repeat(1000);
    let other_hash = BlobHash::of(&other);
    let elsewhere = shm.path().join("staged");
    fs::write(&elsewhere, &other).expect("write");
    cache
        .insert_sealed_file(&other_hash, &elsewhere)
        .expect("insert by copy");
    let cached = cache.open_blob(&other_hash).expect("open").expect("cached");
    assert_eq!(read_all(cached), other);
    assert_ne!(
        fs::metadata(cache.path_of(&other_hash)).expect("stat").ino(),
        fs::metadata(&elsewhere).expect("stat").ino()
    );
}

#[test]
fn an_owned_file_is_adopted_only_when_its_bytes_match_and_not_twice() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BlobCache::open(&dir.path().join("cache"), 1 << 30).expect("open");
    let content = b"a small committed file\n".to_vec();
    let hash = BlobHash::of(&content);

    // Bytes that do not hash to the name: left alone, nothing cached.
    let wrong = dir.path().join("wrong");
    fs::write(&wrong, b"other bytes").expect("write");
    let wrong_file = File::open(&wrong).expect("open");
    assert_eq!(
        cache.adopt_owned_file(&hash, &wrong_file, &wrong).expect("adopt"),
        Adoption::NotLinked
    );
    assert!(!cache.contains(&hash));
    assert_eq!(fs::read(&wrong).expect("read"), b"other bytes");

    // The right bytes, timed like an old archive member: linked (same
    // inode), and touched so that LRU and the stale-temp sweep see it as new.
    let staged = dir.path().join("staged");
    fs::write(&staged, &content).expect("write");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    set_mtime(&staged, old);
    let staged_file = File::open(&staged).expect("open");
    assert_eq!(
        cache.adopt_owned_file(&hash, &staged_file, &staged).expect("adopt"),
        Adoption::Linked
    );
    let cached = fs::metadata(cache.path_of(&hash)).expect("stat cached");
    assert_eq!(cached.ino(), staged_file.metadata().expect("stat").ino());
    assert!(cached.modified().expect("mtime") > old + Duration::from_secs(86_400));
    assert_eq!(
        read_all(cache.open_blob(&hash).expect("open").expect("cached")),
        content
    );
    assert!(
        tmp_files(&cache).is_empty(),
        "no temp file made or left: {:?}",
        tmp_files(&cache)
    );

    // A second file with the same bytes: the cache has them already.
    let twin = dir.path().join("twin");
    fs::write(&twin, &content).expect("write");
    let twin_file = File::open(&twin).expect("open");
    assert_eq!(
        cache.adopt_owned_file(&hash, &twin_file, &twin).expect("adopt"),
        Adoption::AlreadyCached
    );
    assert_ne!(
        fs::metadata(cache.path_of(&hash)).expect("stat").ino(),
        twin_file.metadata().expect("stat").ino()
    );

    // On another filesystem it cannot be linked; the caller copies.
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let other = b"on another filesystem".to_vec();
    let other_hash = BlobHash::of(&other);
    let elsewhere = shm.path().join("staged");
    fs::write(&elsewhere, &other).expect("write");
    let elsewhere_file = File::open(&elsewhere).expect("open");
    assert_eq!(
        cache
            .adopt_owned_file(&other_hash, &elsewhere_file, &elsewhere)
            .expect("adopt"),
        Adoption::NotLinked
    );
    assert!(!cache.contains(&other_hash));
    assert!(tmp_files(&cache).is_empty());
}

#[test]
fn an_empty_blob_is_filled_without_a_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
    let hash = BlobHash::of(b"");
    let file = cache.get_or_fill(&hash, |_| Ok(())).expect("fill");
    assert_eq!(read_all(file), b"");
    assert!(cache.contains(&hash));
    assert!(tmp_files(&cache).is_empty());
}

#[test]
fn lru_evicts_least_recently_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = |c: u8| vec![c; 100];
    // Room for three 100-byte blobs.
    let cache = BlobCache::open(dir.path(), 300).expect("open");
    let (a, b, c, d) = (blob(b'a'), blob(b'b'), blob(b'c'), blob(b'd'));
    let (ha, hb, hc, hd) = (BlobHash::of(&a), BlobHash::of(&b), BlobHash::of(&c), BlobHash::of(&d));
    cache.insert_bytes(&ha, &a).expect("a");
    cache.insert_bytes(&hb, &b).expect("b");
    cache.insert_bytes(&hc, &c).expect("c");
    assert_eq!(cache.usage(), (300, 300, 3));
    // Touch a: b becomes the least recently used.
    assert!(cache.open_blob(&ha).expect("open a").is_some());
    cache.insert_bytes(&hd, &d).expect("d");
    assert!(!cache.contains(&hb), "b should be evicted");
    assert!(!cache.path_of(&hb).exists());
    for h in [&ha, &hc, &hd] {
        assert!(cache.contains(h));
    }
    assert_eq!(cache.usage(), (300, 300, 3));
    assert_eq!(blob_files(&cache), 3);
}

#[test]
fn oversized_blob_is_stored_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BlobCache::open(dir.path(), 100).expect("open");
    let small = vec![1u8; 40];
    let big = vec![2u8; 250];
    cache.insert_bytes(&BlobHash::of(&small), &small).expect("small");
    cache.insert_bytes(&BlobHash::of(&big), &big).expect("big");
    assert!(!cache.contains(&BlobHash::of(&small)));
    assert!(cache.contains(&BlobHash::of(&big)));
    assert_eq!(cache.usage(), (250, 100, 1));
    // The next insert pushes the oversized one out.
    cache.insert_bytes(&BlobHash::of(&small), &small).expect("small again");
    assert!(!cache.contains(&BlobHash::of(&big)));
    assert_eq!(cache.usage(), (40, 100, 1));
}

#[test]
fn second_instance_shares_blobs_and_survives_eviction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = BlobCache::open(dir.path(), 200).expect("open one");
    let two = BlobCache::open(dir.path(), 200).expect("open two");
    let x = vec![b'x'; 100];
    let hx = BlobHash::of(&x);
    one.insert_bytes(&hx, &x).expect("insert x");

    // The other "process" sees it and learns it.
    assert!(two.contains(&hx));
    let seen = two.open_blob(&hx).expect("open").expect("present in two");
    assert_eq!(read_all(seen), x);
    assert_eq!(two.usage(), (100, 200, 1));

    // One evicts x to make room for y and z.
    for c in [b'y', b'z'] {
        let v = vec![c; 100];
        one.insert_bytes(&BlobHash::of(&v), &v).expect("insert");
    }
    assert!(!one.path_of(&hx).exists());

    // Two misses, forgets it and refills without trouble.
    assert!(two.open_blob(&hx).expect("open").is_none());
    assert_eq!(two.usage(), (0, 200, 0));
    let refilled = two.get_or_fill(&hx, |fill| fill.write(&x)).expect("refill");
    assert_eq!(read_all(refilled), x);
    assert!(one.open_blob(&hx).expect("open").is_some());
}

#[test]
fn resync_enforces_the_limit_across_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = BlobCache::open(dir.path(), 200).expect("open one");
    let two = BlobCache::open(dir.path(), 200).expect("open two");
    let blobs: Vec<Vec<u8>> = [b'a', b'b', b'c', b'd'].iter().map(|&c| vec![c; 100]).collect();
    let hashes: Vec<BlobHash> = blobs.iter().map(|b| BlobHash::of(b)).collect();
    one.insert_bytes(&hashes[0], &blobs[0]).expect("a");
    one.insert_bytes(&hashes[1], &blobs[1]).expect("b");
    two.insert_bytes(&hashes[2], &blobs[2]).expect("c");
    two.insert_bytes(&hashes[3], &blobs[3]).expect("d");
    // Make two's blobs unambiguously newer than one's last uses.
    let later = SystemTime::now() + Duration::from_secs(10);
    set_mtime(&one.path_of(&hashes[2]), later);
    set_mtime(&one.path_of(&hashes[3]), later);
    assert_eq!(blob_files(&one), 4);

    one.resync().expect("resync");
    assert_eq!(blob_files(&one), 2);
    assert!(!one.contains(&hashes[0]) && !one.contains(&hashes[1]));
    assert!(one.contains(&hashes[2]) && one.contains(&hashes[3]));
    assert_eq!(one.usage(), (200, 200, 2));
}

#[test]
fn insert_file_copies_and_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BlobCache::open(&dir.path().join("cache"), 1 << 24).expect("open");
    let src = dir.path().join("staged");
    // Several copy chunks long.
    let content: Vec<u8> = (0..(COPY_CHUNK * 3 + 17)).map(|i| (i * 7 % 256) as u8).collect();
    fs::write(&src, &content).expect("write src");
    let hash = BlobHash::of(&content);
    cache.insert_file(&hash, &src).expect("insert_file");
    let cached = cache.open_blob(&hash).expect("open").expect("present");
    assert_eq!(read_all(cached), content);
    assert_eq!(fs::read(&src).expect("src still there"), content);
    assert_eq!(cache.usage().0, content.len() as u64);

    let wrong = BlobHash::of(b"not the file");
    let err = cache.insert_file(&wrong, &src).expect_err("mismatch");
    assert!(matches!(err, CacheError::HashMismatch { .. }));
    assert!(!cache.contains(&wrong));
    assert!(tmp_files(&cache).is_empty());

    let missing = dir.path().join("missing");
    match cache
        .insert_file(&BlobHash::of(b"m"), &missing)
        .expect_err("missing src")
    {
        CacheError::Io { path, source } => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(tmp_files(&cache).is_empty());
}

#[test]
fn reopen_rebuilds_usage_and_evicts_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (vec![b'o'; 100], vec![b'n'; 150]);
    let (h_old, h_new) = (BlobHash::of(&old), BlobHash::of(&new));
    {
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
        cache.insert_bytes(&h_new, &new).expect("new");
        cache.insert_bytes(&h_old, &old).expect("old");
        let now = SystemTime::now();
        set_mtime(&cache.path_of(&h_old), now - Duration::from_secs(3600));
        set_mtime(&cache.path_of(&h_new), now - Duration::from_secs(60));
    }
    // Junk that is not a blob is ignored.
    fs::write(dir.path().join("blobs").join("README"), b"x").expect("junk");
    let cache = BlobCache::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(cache.usage(), (250, 1 << 20, 2));
    drop(cache);

    // A smaller limit evicts by mtime, oldest first.
    let cache = BlobCache::open(dir.path(), 200).expect("reopen smaller");
    assert_eq!(cache.usage(), (150, 200, 1));
    assert!(!cache.contains(&h_old));
    assert!(cache.contains(&h_new));
}

#[test]
fn reads_touch_mtime_at_most_once_a_minute() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = BlobCache::open(dir.path(), 1 << 20).expect("open");
    let hash = BlobHash::of(b"touch me");
    cache.insert_bytes(&hash, b"touch me").expect("insert");
    let path = cache.path_of(&hash);
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).expect("mtime");

    // Reopen in a fresh instance whose index learns the old mtime.
    set_mtime(&path, SystemTime::now() - Duration::from_secs(3600));
    let cache = BlobCache::open(dir.path(), 1 << 20).expect("reopen");
    cache.open_blob(&hash).expect("open").expect("present");
    let touched = mtime(&path);
    assert!(SystemTime::now().duration_since(touched).expect("not future") < Duration::from_secs(30));

    // Within the minute a read does not write metadata again.
    let pinned = SystemTime::now() - Duration::from_secs(30);
    set_mtime(&path, pinned);
    cache.open_blob(&hash).expect("open").expect("present");
    assert_eq!(mtime(&path), pinned);
}

#[test]
fn survives_cache_dir_removed_underneath() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("cache");
    let cache = BlobCache::open(&root, 1 << 20).expect("open");
    cache.insert_bytes(&BlobHash::of(b"one"), b"one").expect("one");
    fs::remove_dir_all(&root).expect("rm -rf cache");
    assert!(cache.open_blob(&BlobHash::of(b"one")).expect("open").is_none());
    assert_eq!(cache.usage(), (0, 1 << 20, 0));
    cache.insert_bytes(&BlobHash::of(b"two"), b"two").expect("two");
    assert!(cache.contains(&BlobHash::of(b"two")));
}

#[test]
fn no_space_is_classified() {
    for code in [libc::ENOSPC, libc::EDQUOT] {
        let e = io::Error::from_raw_os_error(code);
        assert!(is_no_space(&e));
        let err = CacheError::io("/c/tmp/x", e);
        assert!(matches!(err, CacheError::NoSpace { .. }), "{err:?}");
        assert_eq!(err.errno(), libc::ENOSPC);
        assert!(err.to_string().contains("cache disk is full"));
        // Waiters receive the same classification.
        assert_eq!(err.duplicate().errno(), libc::ENOSPC);
    }
    for e in [
        io::Error::from_raw_os_error(libc::EIO),
        io::Error::from_raw_os_error(libc::EACCES),
        io::Error::other("no errno"),
    ] {
        assert!(!is_no_space(&e));
        let err = CacheError::io("/c/tmp/x", e);
        assert!(matches!(err, CacheError::Io { .. }));
        assert_eq!(err.errno(), libc::EIO);
    }
    let fetch = CacheError::Fetch {
        hash: BlobHash::of(b"x"),
        message: "503".into(),
    };
    assert_eq!(fetch.errno(), libc::EIO);
}

/// A large blob is trusted on open as a whole file (it was fsynced before it
/// was published), but a chunk is hashed on this process's first open of
/// it, even if a whole-file open trusted the same name already: bytes
/// changed on disk are never served as a chunk.
#[test]
fn a_chunk_is_hashed_on_first_open_and_a_changed_one_fetched_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let hash = BlobHash::of(&bytes);
    BlobCache::open(dir.path(), 1 << 30)
        .expect("open writer")
        .insert_bytes(&hash, &bytes)
        .expect("insert");
    let mut changed = bytes.clone();
    changed[1000] ^= 1;
    fs::write(
        dir.path().join("blobs").join(&hash.as_str()[..2]).join(hash.as_str()),
        &changed,
    )
    .expect("change");

    let reader = BlobCache::open(dir.path(), 1 << 30).expect("open reader");
    let whole = reader.open_blob(&hash).expect("open").expect("present");
    assert_eq!(read_all(whole), changed, "whole blobs above UNSYNCED_MAX are trusted");
    assert!(!reader.has_checked(&hash), "trusted is not checked");
    let mut fetched = 0;
    let chunk = reader
        .get_or_fill_chunk(&hash, bytes.len() as u64, u64::MAX, |fill| {
            fetched += 1;
            fill.write(&bytes)
        })
        .expect("chunk");
    assert_eq!(read_all(chunk), bytes);
    assert_eq!(fetched, 1, "the changed copy was dropped and fetched again");
    assert!(reader.has_checked(&hash));
    // Checked once: the next open neither hashes nor fetches.
    let again = reader
        .get_or_fill_chunk(&hash, bytes.len() as u64, u64::MAX, |_| panic!("no second fetch"))
        .expect("chunk again");
    assert_eq!(read_all(again), bytes);
}

/// A chunk is published without an fsync, so a crash can leave it torn under
/// its name. It is marked so: an open of the same name as a whole file (a
/// small file whose bytes are that chunk) hashes it despite its size, and a
/// torn one is removed rather than served.
#[test]
fn an_unsynced_chunk_is_not_trusted_for_its_size_by_a_whole_file_open() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let hash = BlobHash::of(&bytes);
    let writer = BlobCache::open(dir.path(), 1 << 30).expect("open writer");
    writer
        .get_or_fill_chunk(&hash, bytes.len() as u64, u64::MAX, |fill| fill.write(&bytes))
        .expect("fill the chunk");
    let path = dir.path().join("blobs").join(&hash.as_str()[..2]).join(hash.as_str());
    let mode = fs::metadata(&path).expect("published").permissions().mode();
    assert_eq!(
        mode & 0o222,
        0,
        "an unsynced chunk is published read-only, mode {mode:o}"
    );

    // What a power loss can leave: the name, with bytes that never arrived.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(&path, vec![0u8; bytes.len()]).expect("tear");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod back");

    let reader = BlobCache::open(dir.path(), 1 << 30).expect("open reader");
    assert!(
        reader.open_blob(&hash).expect("open").is_none(),
        "a torn unsynced chunk must not be served as a whole file"
    );
    assert!(!path.exists(), "the torn chunk is removed");
}

/// Room for a chunk is made before it downloads, so blobs plus fills in
/// progress stay within the limit; the promise ends with the fill, whether
/// it succeeds or fails.
#[test]
fn a_chunk_fill_makes_room_before_it_downloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = 1000 * 1024;
    let cache = BlobCache::open(dir.path(), limit).expect("open");
    for n in 0..2u8 {
        cache
            .insert_bytes(&BlobHash::of(&[n; 400 * 1024]), &[n; 400 * 1024])
            .expect("insert");
    }
    let chunk = vec![9u8; 300 * 1024];
    let hash = BlobHash::of(&chunk);
    cache
        .get_or_fill_chunk(&hash, chunk.len() as u64, u64::MAX, |fill| {
            let (used, _, count) = cache.usage();
            assert_eq!(count, 1, "the oldest blob made room first");
            assert!(used + cache.reserved() <= limit, "{used} + {}", cache.reserved());
            fill.write(&chunk)
        })
        .expect("fill");
    assert_eq!(cache.reserved(), 0);
    assert_eq!(cache.usage().0, 700 * 1024);
    let failing = BlobHash::of(b"never");
    let err = cache
        .get_or_fill_chunk(&failing, 200 * 1024, u64::MAX, |_| {
            Err(CacheError::Fetch {
                hash: failing.clone(),
                message: "server down".into(),
            })
        })
        .expect_err("fails");
    assert!(matches!(err, CacheError::Fetch { .. }));
    assert_eq!(cache.reserved(), 0, "a failed fill gives its room back");
    // A fill over its budget does not start (readahead when the cache is busy).
    let ahead = vec![3u8; 200 * 1024];
    let err = cache
        .get_or_fill_chunk(&BlobHash::of(&ahead), ahead.len() as u64, 100 * 1024, |_| {
            panic!("no fill over the budget")
        })
        .expect_err("over budget");
    assert!(matches!(err, CacheError::Busy { .. }), "{err:?}");
    assert_eq!(cache.reserved(), 0);
}

/// Offering bytes to the cache never waits for another thread's fill of the
/// same hash (the mount offers them from its async runtime, which that fill
/// may need): every offer answers `BeingFilled` at once, touches nothing,
/// and the fill then publishes as usual.
#[test]
fn offers_never_wait_for_a_fill_of_the_same_hash_in_progress() {
    use std::sync::{mpsc, Arc};
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(BlobCache::open(&dir.path().join("cache"), 1 << 30).expect("open"));
    let content = b"bytes a reader is downloading\n".to_vec();
    let hash = BlobHash::of(&content);
    let staged = dir.path().join("staged");
    fs::write(&staged, &content).expect("write");

    let (started_tx, started) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    let filler = {
        let (cache, hash, content) = (cache.clone(), hash.clone(), content.clone());
        std::thread::spawn(move || {
            cache
                .get_or_fill(&hash, |fill| {
                    started_tx.send(()).expect("report the start");
                    release.recv().expect("wait for the test");
                    fill.write(&content)
                })
                .map(read_all)
        })
    };
    started.recv().expect("the fill started");

    assert_eq!(
        cache.insert_file(&hash, &staged).expect("offer a copy"),
        Offered::BeingFilled
    );
    assert_eq!(
        cache.insert_sealed_file(&hash, &staged).expect("offer a link"),
        Offered::BeingFilled
    );
    let file = File::open(&staged).expect("open staged");
    assert_eq!(
        cache.adopt_owned_file(&hash, &file, &staged).expect("offer the file"),
        Adoption::BeingFilled
    );
    assert_eq!(
        fs::read(&staged).expect("read staged"),
        content,
        "the offered file is untouched"
    );

    release_tx.send(()).expect("release the fill");
    assert_eq!(filler.join().expect("filler").expect("filled"), content);
    assert!(cache.contains(&hash));
    // Once published, an offer finds it cached.
    assert_eq!(
        cache.insert_file(&hash, &staged).expect("offer again"),
        Offered::AlreadyCached
    );
}
