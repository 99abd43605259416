//! Acknowledgements of the drain plan, and the status they show.

use crate::harness::*;

#[test]
fn status_goes_pending_queued_then_merged_with_the_merged_bytes() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    let ino = ino_of(&vfs, "doc.md").unwrap();
    assert_eq!(status(&vfs, ino), "clean");
    let fh = vfs.open(ino, RW).unwrap();
    vfs.write(fh, DOC.len() as u64, b"local line\n").unwrap();
    assert_eq!(status(&vfs, ino), "pending");
    vfs.flush(fh).unwrap();
    assert_eq!(status(&vfs, ino), "queued");
    vfs.release(fh).unwrap();
    assert_eq!(status(&vfs, ino), "queued");

    let items = plan(&vfs);
    let (_, _, _, committed, _, _) = only_commit(&items);
    let merged: &[u8] = b"# Doc\nversion three\nremote line\nlocal line\n";
    let merged_hash = env.source.put(merged);
    let v = version_info(
        10,
        5,
        "doc.md",
        NodeKind::File,
        merged_hash,
        merged.len() as u64,
        VersionStatus::Merged,
    );
    vfs.ack_commit(items[0].uid, items[0].rev, &committed, &v).unwrap();

    assert_eq!(status(&vfs, ino), "merged");
    assert_eq!(vfs.getattr(ino).unwrap().size, merged.len() as u64);
    assert_eq!(read_path(&vfs, "doc.md"), merged);
    assert_eq!(vfs.getxattr(ino, "user.contextfs.version").unwrap(), b"5");
    assert!(plan(&vfs).is_empty());
    assert_eq!(vfs.outcomes(), vec![("doc.md".to_string(), VersionStatus::Merged)]);
    assert_eq!(env.durable_records(vfs, &listing), 0);
}

#[test]
fn clean_ack_reads_the_committed_bytes_from_the_cache() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let vfs = env.mount(&empty_listing());
    let ino = write_file(&vfs, ROOT_INO, "new.md", b"fresh\n");
    let staged = || -> Vec<_> {
        std::fs::read_dir(env.state_dir.join("staging"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let staging = staged();
    assert_eq!(staging.len(), 1, "one staging file: {staging:?}");
    let staging_inode = std::fs::metadata(&staging[0]).unwrap().ino();
    // A tar keeps the archive's times, and so does the staging file.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    vfs.setattr(
        ino,
        None,
        SetAttr {
            mtime: Some(old),
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&staging[0])
        .unwrap()
        .set_modified(old)
        .unwrap();
    let items = plan(&vfs);
    let (path, node, base, hash, _, _) = only_commit(&items);
    assert_eq!((path.as_str(), node, base), ("new.md", None, None));
    let v = version_info(40, 1, "new.md", NodeKind::File, hash.clone(), 6, VersionStatus::Clean);
    vfs.ack_commit(items[0].uid, items[0].rev, &hash, &v).unwrap();
    assert_eq!(status(&vfs, ino), "clean");
    let calls = env.source.calls();
    assert_eq!(read_path(&vfs, "new.md"), b"fresh\n");
    assert_eq!(
        env.source.calls(),
        calls,
        "the acknowledged bytes were seeded into the cache"
    );
    // The staging file itself became the cached blob: no copy, and no inode
    // made or freed (on ext4 without a journal, freed inodes slow every
    // create after them). Its time now says "just cached", so the cache
    // does not evict it first.
    assert_eq!(staged(), Vec::<std::path::PathBuf>::new(), "nothing left in staging");
    let cached = env.cache.open_blob(&hash).unwrap().expect("cached");
    let meta = cached.metadata().unwrap();
    assert_eq!(meta.ino(), staging_inode, "the cache holds the former staging file");
    assert!(meta.modified().unwrap() > old + std::time::Duration::from_secs(86_400 * 365));
    // The file still shows its own mtime, not the cache's.
    assert_eq!(vfs.getattr(ino).unwrap().mtime, old);
    // Later writes stage the file again, in a new staging file, and commit
    // on the new node...
    let fh = vfs.open(ino, RW).unwrap();
    vfs.write(fh, 0, b"FRESH").unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(staged().len(), 1);
    assert_eq!(read_path(&vfs, "new.md"), b"FRESH\n");
    let (_, node, base, _, _, _) = only_commit(&plan(&vfs));
    assert_eq!((node, base), (Some(40), Some(1)));
    // ...so the cached blob still holds the bytes of its hash.
    let mut cached = Vec::new();
    env.cache
        .open_blob(&hash)
        .unwrap()
        .expect("still cached")
        .read_to_end(&mut cached)
        .unwrap();
    assert_eq!(cached, b"fresh\n");
}

#[test]
fn an_ack_for_an_older_revision_keeps_newer_changes() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    let ino = ino_of(&vfs, "doc.md").unwrap();
    let fh = vfs.open(ino, RW).unwrap();
    vfs.write(fh, 0, b"first").unwrap();
    vfs.flush(fh).unwrap();
    let items = plan(&vfs);
    let (_, _, _, first, _, _) = only_commit(&items);
    vfs.write(fh, 0, b"SECOND").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    let v = version_info(10, 4, "doc.md", NodeKind::File, first.clone(), 20, VersionStatus::Clean);
    vfs.ack_commit(items[0].uid, items[0].rev, &first, &v).unwrap();
    assert_eq!(status(&vfs, ino), "queued");
    let mut expected = DOC.to_vec();
    expected[..6].copy_from_slice(b"SECOND");
    assert_eq!(read_path(&vfs, "doc.md"), expected);
    let (_, node, base, hash, _, _) = only_commit(&plan(&vfs));
    assert_eq!((node, base, hash), (Some(10), Some(4), BlobHash::of(&expected)));
}

#[test]
fn reading_a_server_file_with_the_server_down_is_eio_and_writes_need_no_server() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(BlobCache::open(&tmp.path().join("cache"), 1 << 30).unwrap());
    let config = VfsConfig {
        state_dir: tmp.path().join("state"),
        read_only: false,
        agent_id: None,
        durability: contextfs::vfs::Durability::DEFAULT,
    };
    let vfs = Vfs::new(config, cache, Arc::new(FailSource)).unwrap();
    let entry = TreeEntry {
        path: "remote.md".into(),
        id: 1,
        kind: NodeKind::File,
        mode: 0o644,
        size: 3,
        hash: BlobHash::of(b"abc"),
        version: 1,
        modified_at: TIME.into(),
        accessed_at: None,
    };
    vfs.load(&tree_listing(1, vec![entry]), None).unwrap();
    let ino = ino_of(&vfs, "remote.md").unwrap();
    assert_eq!(vfs.open(ino, RO).unwrap_err().errno, libc::EIO);
    // O_TRUNC needs no old bytes.
    let fh = vfs.open(ino, TRUNC).unwrap();
    vfs.write(fh, 0, b"offline").unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(read_path(&vfs, "remote.md"), b"offline");
    write_file(&vfs, ROOT_INO, "local.md", b"local");
    assert_eq!(read_path(&vfs, "local.md"), b"local");
}

#[test]
fn acknowledging_one_of_two_identical_large_files_keeps_the_others_bytes() {
    let env = Env::new();
    let vfs = env.mount(&empty_listing());
    let big = vec![b'x'; 100_000];
    write_file(&vfs, ROOT_INO, "one.bin", &big);
    write_file(&vfs, ROOT_INO, "two.bin", &big);
    let items = plan(&vfs);
    assert_eq!(items.len(), 2);
    let one = items.iter().find(|i| i.describe() == "commit one.bin").unwrap();
    let hash = BlobHash::of(&big);
    let v = version_info(
        60,
        1,
        "one.bin",
        NodeKind::File,
        hash.clone(),
        big.len() as u64,
        VersionStatus::Clean,
    );
    vfs.ack_commit(one.uid, one.rev, &hash, &v).unwrap();
    let items = plan(&vfs);
    let (path, _, _, _, _, source) = only_commit(&items);
    assert_eq!(path, "two.bin");
    match source {
        ContentSource::File(file) => assert_eq!(std::fs::read(file).unwrap(), big),
        other => panic!("expected a pending file, got {other:?}"),
    }
    drop(vfs);
    let listing = tree_listing(2, vec![file_entry(&env.source, "one.bin", 60, 1, &big)]);
    let vfs = env.mount(&listing);
    assert_eq!(read_path(&vfs, "two.bin"), big);
}

/// A rename's answer carries the node's head, which another writer edited
/// meanwhile: the clean file shows those bytes (the edit's own event is old
/// news by then). Found by
/// `sync::late_acks_echoes_and_remote_news_never_beat_local_state`
/// (minimal case: `[Local(Rename { from: "a", to: "c" }), RemoteWrite
/// { pick: 2, data: [0] }, Drain, RemoteCreate { path: "d" }, RemoteRename
/// { pick: 3, to: "b/d" }, Answer(0), Feed(2), Feed(2)]`).
#[test]
fn a_rename_ack_shows_another_writers_earlier_edit() {
    let env = Env::new();
    let listing = tree_listing(1, vec![file_entry(&env.source, "a", 1, 1, b"old")]);
    let vfs = env.mount(&listing);
    vfs.rename(ROOT_INO, "a", ROOT_INO, "c", false).unwrap();
    // Another writer edits node 1 (version 2); then the rename lands (version 3).
    let new = env.source.put(b"new");
    let items = plan(&vfs);
    assert_eq!(describe(&items), ["rename a -> c"]);
    let v = version_info(1, 3, "c", NodeKind::File, new.clone(), 3, VersionStatus::Clean);
    vfs.ack_namespace(items[0].uid, items[0].rev, &v).unwrap();
    assert!(vfs.queued().is_empty(), "the rename was all there was to send");
    // The feed: the edit (old news now), the rename's echo, then a later
    // rename by the other writer, all carrying the edited bytes.
    vfs.apply_events(&[event(2, 1, 2, "a", new.clone(), 3, false)]);
    vfs.apply_events(&[rename_event(event(3, 1, 3, "c", new.clone(), 3, false), "a")]);
    vfs.apply_events(&[rename_event(event(4, 1, 4, "e", new.clone(), 3, false), "c")]);
    assert_eq!(read_path(&vfs, "e"), b"new", "the server's bytes of a clean file");
}

/// Acknowledging a commit offers the committed bytes to the cache. When a
/// reader is downloading those same bytes at that moment (another file with
/// the same content), the acknowledgement must not wait for the download:
/// the mount acknowledges on its sync worker's runtime, the runtime that
/// download needs to make progress, so waiting hung both (a mount under the
/// 20-100 ms latency proxy did: `echo >>` and `cat` waited for ever).
#[test]
fn an_ack_does_not_wait_for_a_readers_download_of_the_same_bytes() {
    let env = Env::new();
    let source = Arc::new(GateSource::default());
    let bytes: &[u8] = b"the same bytes in two files\n";
    let listing = tree_listing(1, vec![file_entry(&source.inner, "remote.md", 7, 1, bytes)]);
    let vfs = Arc::new(env.vfs_on(source.clone()));
    vfs.load(&listing, None).unwrap();
    let local = write_file(&vfs, ROOT_INO, "local.md", bytes);
    let items = plan(&vfs);
    let (_, _, _, hash, _, _) = only_commit(&items);

    // A reader of remote.md downloads those bytes and is held mid-download.
    let reader = {
        let vfs = vfs.clone();
        std::thread::spawn(move || read_path(&vfs, "remote.md"))
    };
    source.wait_for_fetch();

    let (acked_tx, acked) = std::sync::mpsc::channel();
    let acker = {
        let vfs = vfs.clone();
        let (uid, rev) = (items[0].uid, items[0].rev);
        let v = version_info(
            8,
            1,
            "local.md",
            NodeKind::File,
            hash.clone(),
            bytes.len() as u64,
            VersionStatus::Clean,
        );
        std::thread::spawn(move || {
            vfs.ack_commit(uid, rev, &hash, &v).unwrap();
            let _ = acked_tx.send(());
        })
    };
    // Not a timing goal: a wait that never ends would show up as this
    // timeout; the download is let go either way so no thread is left hung.
    let waited = acked.recv_timeout(std::time::Duration::from_secs(30));
    source.release();
    assert!(waited.is_ok(), "the acknowledgement waited for the reader's download");
    acker.join().unwrap();
    assert_eq!(reader.join().unwrap(), bytes);
    assert_eq!(status(&vfs, local), "clean");
    assert_eq!(read_path(&vfs, "local.md"), bytes);
    assert!(plan(&vfs).is_empty());
}
