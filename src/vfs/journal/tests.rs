use super::*;

fn record(uid: u64) -> Record {
    Record {
        uid,
        rev: 1,
        node: None,
        base_version: None,
        server_path: None,
        parent: ParentRef::Root,
        name: "a.md".into(),
        deleted: false,
        kind: NodeKind::File,
        mode: 0o644,
        content: Some(BlobHash::of(b"hi")),
        size: 2,
        meta_dirty: false,
        changed_at: 1,
        mtime: None,
        atime: None,
        inline: Some(Journal::encode_inline(b"hi")),
        last_error: None,
        open_content: false,
    }
}

#[test]
fn synced_records_survive_reopen_and_removals_compact_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.write(&record(7)).unwrap();
    let mut r = record(7);
    r.rev = 2;
    j.write(&r).unwrap();
    j.write(&record(8)).unwrap();
    j.make_durable().unwrap();
    let j2 = Journal::open(dir.path()).unwrap();
    let loaded = j2.load().unwrap();
    assert_eq!(loaded.len(), 2);
    assert!(loaded.contains(&r), "the last revision of a record wins");
    assert_eq!(Journal::inline_bytes(&loaded[0]).unwrap(), b"hi");
    j2.remove(7).unwrap();
    j2.remove(8).unwrap();
    j2.make_durable().unwrap();
    assert!(Journal::open(dir.path()).unwrap().load().unwrap().is_empty());
    let log = dir.path().join("journal/journal.log");
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        0,
        "an empty journal is compacted to nothing"
    );
}

#[test]
fn a_torn_or_corrupt_tail_is_ignored_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.write(&record(1)).unwrap();
    j.write(&record(2)).unwrap();
    j.make_durable().unwrap();
    drop(j);
    let log = dir.path().join("journal/journal.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let mut third = Vec::new();
    encode(&Entry::Put(Box::new(record(3))), &mut third).unwrap();
    bytes.extend_from_slice(&third[..third.len() / 2]); // cut off mid-frame
    std::fs::write(&log, &bytes).unwrap();
    assert_eq!(uids_after_reopen(dir.path()), [1, 2]);
    // A flipped byte inside a frame fails its checksum: replay stops there.
    let mut bytes = std::fs::read(&log).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    std::fs::write(&log, &bytes).unwrap();
    assert_eq!(Journal::open(dir.path()).unwrap().load().unwrap().len(), 1);
}

/// `Durability::Local`: a record is in the log file (it survives the
/// process) as soon as close_point returns, without an fsync; the next
/// make_durable makes it durable.
#[test]
fn local_close_point_writes_without_an_fsync_and_survives_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open_with(dir.path(), Durability::DEFAULT).unwrap();
    for uid in 1..=500 {
        j.write(&record(uid)).unwrap();
        j.close_point().unwrap();
    }
    j.remove(7).unwrap();
    j.make_written().unwrap();
    assert!(
        j.wait_until_undurable(std::time::Duration::ZERO),
        "nothing was fsynced yet"
    );
    // The process dies here: nothing more is written or synced.
    let expected: Vec<u64> = (1..=500).filter(|u| *u != 7).collect();
    assert_eq!(uids_after_reopen(dir.path()), expected);
    j.make_durable().unwrap();
    assert!(!j.wait_until_undurable(std::time::Duration::ZERO));
    drop(j);
    assert_eq!(uids_after_reopen(dir.path()), expected);
}

fn uids_after_reopen(dir: &Path) -> Vec<u64> {
    let mut uids: Vec<u64> = Journal::open(dir)
        .unwrap()
        .load()
        .unwrap()
        .iter()
        .map(|r| r.uid)
        .collect();
    uids.sort();
    uids
}

/// A write that fails part-way (EIO, ENOSPC, EFBIG) leaves no torn frame
/// in front of the frames that later syncs report durable.
#[test]
fn a_write_failing_mid_frame_loses_nothing_synced_later() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.write(&record(1)).unwrap();
    j.make_durable().unwrap();
    j.write(&record(2)).unwrap();
    j.lock().fail_write_after = Some(20); // inside the frame's JSON
    let err = j
        .make_durable()
        .expect_err("the injected write failure must reach the caller");
    assert_eq!(err.errno, libc::EIO);
    j.write(&record(3)).unwrap();
    j.make_durable().unwrap();
    j.write(&record(4)).unwrap();
    j.make_durable().unwrap();
    let on_disk = std::fs::read(dir.path().join("journal/journal.log")).unwrap();
    assert_eq!(decode(&on_disk).1, [], "the torn part of the failed write was cut off");
    drop(j);
    assert_eq!(uids_after_reopen(dir.path()), [1, 2, 3, 4]);
}

/// When the torn bytes cannot be cut off, the next sync rewrites the log.
#[test]
fn a_torn_write_that_cannot_be_cut_off_is_rewritten_over() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.write(&record(1)).unwrap();
    j.make_durable().unwrap();
    // What a failed write leaves when truncating it fails too.
    let mut half = Vec::new();
    encode(&Entry::Put(Box::new(record(9))), &mut half).unwrap();
    let log_path = dir.path().join("journal/journal.log");
    let mut f = OpenOptions::new().append(true).open(&log_path).unwrap();
    f.write_all(&half[..half.len() / 2]).unwrap();
    j.lock().torn = true;
    j.write(&record(2)).unwrap();
    j.make_durable().unwrap();
    assert!(!j.lock().torn);
    j.write(&record(3)).unwrap();
    j.make_durable().unwrap();
    drop(j);
    assert_eq!(uids_after_reopen(dir.path()), [1, 2, 3]);
}

/// A torn or corrupt frame in the middle hides none of the frames after it.
#[test]
fn replay_resynchronises_after_a_bad_frame_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("journal")).unwrap();
    let log = dir.path().join("journal/journal.log");
    let frame = |uid| {
        let mut b = Vec::new();
        encode(&Entry::Put(Box::new(record(uid))), &mut b).unwrap();
        b
    };
    // 1, half of 2, 3, 4 with a flipped byte, 5.
    let mut bytes = frame(1);
    bytes.extend_from_slice(&frame(2)[..30]);
    bytes.extend(frame(3));
    let mut corrupt = frame(4);
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x55;
    bytes.extend(corrupt);
    bytes.extend(frame(5));
    let (entries, skipped) = decode(&bytes);
    assert_eq!(entries.len(), 3);
    assert_eq!(skipped.len(), 2, "the torn and the corrupt frame: {skipped:?}");
    assert_eq!(skipped[0].offset, frame(1).len());
    assert_eq!(skipped[0].len, 30);
    std::fs::write(&log, &bytes).unwrap();
    assert_eq!(uids_after_reopen(dir.path()), [1, 3, 5]);
    // Opening compacted the log: it now holds only intact frames.
    assert!(decode(&std::fs::read(&log).unwrap()).1.is_empty());
}

#[test]
fn concurrent_writers_share_syncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let j = std::sync::Arc::new(Journal::open(dir.path()).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    j.write(&record(t * 1000 + i)).unwrap();
                    j.make_durable().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(j);
    assert_eq!(Journal::open(dir.path()).unwrap().load().unwrap().len(), 400);
}

#[test]
fn large_snapshots_go_to_pending_files() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let src_path = dir.path().join("src");
    let data = vec![7u8; (INLINE_LIMIT + 10) as usize];
    std::fs::write(&src_path, &data).unwrap();
    let Snapshot { hash, size, inline, .. } = j.snapshot(&File::open(&src_path).unwrap()).unwrap();
    assert_eq!(hash, BlobHash::of(&data));
    assert_eq!(size, data.len() as u64);
    assert!(inline.is_none());
    assert_eq!(std::fs::read(j.pending_blob_path(&hash)).unwrap(), data);
    std::fs::write(&src_path, b"small").unwrap();
    let inline = j.snapshot(&File::open(&src_path).unwrap()).unwrap().inline;
    assert_eq!(inline.unwrap(), b"small");
}

#[test]
fn pending_content_no_record_names_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let pend = |j: &Journal, byte: u8| {
        let src = dir.path().join(format!("src{byte}"));
        std::fs::write(&src, vec![byte; (INLINE_LIMIT + 1) as usize]).unwrap();
        j.snapshot(&File::open(&src).unwrap()).unwrap().hash
    };
    let large = |uid: u64, rev: u64, hash: &BlobHash| Record {
        rev,
        content: Some(hash.clone()),
        size: INLINE_LIMIT + 1,
        inline: None,
        ..record(uid)
    };
    // A file closed twice before its commit: the first content is superseded.
    let (first, second, kept) = (pend(&j, 1), pend(&j, 2), pend(&j, 3));
    j.write(&large(1, 1, &first)).unwrap();
    j.write(&large(1, 2, &second)).unwrap();
    j.write(&large(2, 1, &kept)).unwrap();
    j.make_durable().unwrap();
    drop(j);
    let j = Journal::open(dir.path()).unwrap();
    assert!(!j.pending_blob_path(&first).exists(), "superseded content is gone");
    assert!(j.pending_blob_path(&second).exists(), "the live record's content stays");
    assert!(j.pending_blob_path(&kept).exists());
}

/// Pending content whose record never reached the log file (its write
/// failed: a full disk) goes at once when the record goes, since nothing on
/// disk can name it; content a written record names waits, as before, for
/// the removal to be durable, so a crash that takes the removal still finds
/// the bytes.
#[test]
fn pending_content_no_written_frame_names_goes_at_once_when_doomed() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open_with(dir.path(), Durability::DEFAULT).unwrap();
    let pend = |j: &Journal, byte: u8| {
        let src = dir.path().join(format!("src{byte}"));
        std::fs::write(&src, vec![byte; (INLINE_LIMIT + 1) as usize]).unwrap();
        let staged = File::open(&src).unwrap();
        j.adopt_staged(&staged, &src).unwrap().hash
    };
    let large = |uid: u64, hash: &BlobHash| Record {
        content: Some(hash.clone()),
        size: INLINE_LIMIT + 1,
        inline: None,
        ..record(uid)
    };
    // Written to the log (close() returned), not yet durable.
    let written = pend(&j, 1);
    j.write(&large(1, &written)).unwrap();
    j.close_point().unwrap();
    // Its record's write fails, as on a full disk.
    let unwritten = pend(&j, 2);
    j.write(&large(2, &unwritten)).unwrap();
    j.lock().fail_write_after = Some(0);
    j.close_point().expect_err("the injected write failure");
    // Both files are removed (rm) before anything more reaches the disk.
    for (uid, hash) in [(1, &written), (2, &unwritten)] {
        j.remove(uid).unwrap();
        j.remove_pending_blob(hash);
    }
    assert!(
        !j.pending_blob_path(&unwritten).exists(),
        "no frame on disk names it: its room is free at once"
    );
    assert!(
        j.pending_blob_path(&written).exists(),
        "a written record names it until its removal is durable"
    );
    j.make_durable().unwrap();
    assert!(
        !j.pending_blob_path(&written).exists(),
        "gone once the removal is durable"
    );
    drop(j);
    assert_eq!(uids_after_reopen(dir.path()), Vec::<u64>::new());
}

/// Two files with the same bytes share one pending file. File B's close
/// finds it already there; before B's record is appended, file A is removed
/// and the core, seeing no record name the bytes, asks to delete it. B's
/// claim keeps it: B's record must not name a file that is gone (the
/// server would lack the bytes if A was never sent). Once B's record is
/// appended the file lives as long as a record names it.
#[test]
fn a_pending_file_a_close_just_found_survives_the_removal_of_the_other_file_with_those_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open_with(dir.path(), Durability::DEFAULT).unwrap();
    let bytes = vec![5u8; (INLINE_LIMIT + 1) as usize];
    let staged = |name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        (File::open(&path).unwrap(), path)
    };
    let large = |uid: u64, hash: &BlobHash| Record {
        content: Some(hash.clone()),
        size: INLINE_LIMIT + 1,
        inline: None,
        ..record(uid)
    };
    // A: closed and written to the log.
    let (file_a, path_a) = staged("a");
    let a = j.adopt_staged(&file_a, &path_a).unwrap();
    j.write(&large(1, &a.hash)).unwrap();
    let hash = a.hash.clone();
    drop(a);
    j.close_point().unwrap();
    // B: the same bytes; the link finds A's pending file.
    let (file_b, path_b) = staged("b");
    let b = j.adopt_staged(&file_b, &path_b).unwrap();
    assert_eq!(b.hash, hash);
    // A is removed before B's record is appended, and made durable.
    j.remove(1).unwrap();
    j.remove_pending_blob(&hash);
    j.make_durable().unwrap();
    assert!(
        j.pending_blob_path(&hash).exists(),
        "B's close claimed the pending file: it stays for B's record"
    );
    j.write(&large(2, &hash)).unwrap();
    drop(b);
    j.make_durable().unwrap();
    assert!(j.pending_blob_path(&hash).exists(), "B's record names it");
    drop(j);
    assert_eq!(uids_after_reopen(dir.path()), vec![2]);
    let j = Journal::open_with(dir.path(), Durability::DEFAULT).unwrap();
    assert!(j.pending_blob_path(&hash).exists(), "and after a restart");
    // B goes too: now nothing names the file, and it goes.
    j.remove(2).unwrap();
    j.remove_pending_blob(&hash);
    j.make_durable().unwrap();
    assert!(!j.pending_blob_path(&hash).exists());
}

/// A close that claimed pending content and then gave up (its file was
/// removed while it was hashed) leaves nothing behind: the deletion asked
/// for meanwhile happens when the claim ends.
#[test]
fn a_claim_given_up_lets_the_deletion_asked_for_meanwhile_happen() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open_with(dir.path(), Durability::DEFAULT).unwrap();
    let path = dir.path().join("c");
    std::fs::write(&path, vec![6u8; (INLINE_LIMIT + 1) as usize]).unwrap();
    let claimed = j.adopt_staged(&File::open(&path).unwrap(), &path).unwrap();
    let hash = claimed.hash.clone();
    j.remove_pending_blob(&hash);
    assert!(j.pending_blob_path(&hash).exists(), "kept while claimed");
    drop(claimed);
    assert!(
        !j.pending_blob_path(&hash).exists(),
        "no record ever named it: gone when the claim ends"
    );
}

/// `rmdir b; mkdir b` in one millisecond: the deletion must replay first,
/// whatever the uids, also after the log is reopened (and compacted) and
/// after the older record is rewritten without a change of its own.
#[test]
fn changes_made_in_one_millisecond_load_in_the_order_they_were_made() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let mut removal = record(9);
    removal.deleted = true;
    removal.changed_at = 5;
    let mut mkdir = record(3);
    mkdir.kind = NodeKind::Dir;
    mkdir.changed_at = 5;
    j.write(&removal).unwrap();
    j.write(&mkdir).unwrap();
    // An answer rebases the removal: a rewrite, not a change.
    removal.node = Some(42);
    j.write(&removal).unwrap();
    let uids = |j: &Journal| j.load().unwrap().iter().map(|r| r.uid).collect::<Vec<_>>();
    assert_eq!(uids(&j), [9, 3]);
    j.make_durable().unwrap();
    drop(j);
    let reopened = Journal::open(dir.path()).unwrap();
    assert_eq!(uids(&reopened), [9, 3], "after a reopen, which compacts the log");
    drop(reopened);
    let again = Journal::open(dir.path()).unwrap();
    assert_eq!(uids(&again), [9, 3], "after a second reopen");
}
