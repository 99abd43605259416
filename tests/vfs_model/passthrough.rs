//! Kernel passthrough: which opens get it, and what writers wait for.

use crate::harness::*;

fn is_passthrough(vfs: &Vfs, fh: u64) -> bool {
    matches!(vfs.kernel_io(fh).unwrap(), KernelIo::Passthrough { .. })
}

#[test]
fn passthrough_is_only_for_clean_reads_and_writers_wait_for_its_readers() {
    let env = Env::new();
    let listing = tree_listing(1, vec![file_entry(&env.source, "data.bin", 10, 1, b"version one")]);
    let vfs = env.mount(&listing);
    let data = ino_of(&vfs, "data.bin").unwrap();

    // Not agreed with the kernel yet, or a writable file without --passthrough: cached.
    let fh = vfs.open(data, RO).unwrap();
    assert!(!is_passthrough(&vfs, fh));
    vfs.release(fh).unwrap();
    vfs.enable_passthrough(true);
    let fh = vfs.open(data, RO).unwrap();
    assert!(!is_passthrough(&vfs, fh), "writable files need --passthrough");
    vfs.release(fh).unwrap();

    vfs.set_passthrough_policy(PassthroughPolicy::All);
    let r1 = vfs.open(data, RO).unwrap();
    let r2 = vfs.open(data, RO).unwrap();
    let (KernelIo::Passthrough { epoch: e1, .. }, KernelIo::Passthrough { epoch: e2, .. }) =
        (vfs.kernel_io(r1).unwrap(), vfs.kernel_io(r2).unwrap())
    else {
        panic!("both readers should be passthrough");
    };
    assert_eq!(e1, e2, "one backing file per inode");
    // A writer cannot share the readers' blob file: it waits, then ETXTBSY.
    let started = std::time::Instant::now();
    assert_eq!(errno(vfs.open(data, RW)), Err(libc::ETXTBSY));
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "it waited for the readers"
    );
    assert_eq!(
        errno(vfs.setattr(
            data,
            None,
            SetAttr {
                size: Some(0),
                ..Default::default()
            }
        )),
        Err(libc::ETXTBSY),
        "truncate(2) too"
    );
    assert_eq!(read_path(&vfs, "data.bin"), b"version one", "nothing changed");
    vfs.release(r1).unwrap();
    assert_eq!(
        vfs.release_kernel(r2).unwrap(),
        Some(e1),
        "the last reader ends the epoch"
    );

    // Readers gone: the writer goes ahead, and its handle is a cached one.
    let w = vfs.open(data, RW).unwrap();
    assert!(!is_passthrough(&vfs, w));
    vfs.write(w, 0, b"VERSION").unwrap();
    // Local, uncommitted content is served by the mount, never passthrough.
    let r3 = vfs.open(data, RO).unwrap();
    assert!(!is_passthrough(&vfs, r3));
    vfs.release(r3).unwrap();
    vfs.release(w).unwrap();
}

#[test]
fn a_remote_change_under_passthrough_readers_moves_the_file_to_a_new_inode() {
    let env = Env::new();
    let listing = tree_listing(1, vec![file_entry(&env.source, "doc.md", 10, 1, b"old bytes")]);
    let vfs = env.mount(&listing);
    vfs.enable_passthrough(true);
    vfs.set_passthrough_policy(PassthroughPolicy::All);
    let old_ino = ino_of(&vfs, "doc.md").unwrap();
    let reader = vfs.open(old_ino, RO).unwrap();
    assert!(is_passthrough(&vfs, reader));

    let new: &[u8] = b"new bytes from elsewhere";
    vfs.apply_events(&[event(2, 10, 2, "doc.md", env.source.put(new), new.len() as u64, false)]);
    let new_ino = ino_of(&vfs, "doc.md").unwrap();
    assert_ne!(new_ino, old_ino, "the kernel pins the old inode to the old blob");
    assert_eq!(read_path(&vfs, "doc.md"), new, "new opens read the new version");
    let fresh = vfs.open(new_ino, RO).unwrap();
    assert!(is_passthrough(&vfs, fresh), "with a backing file of its own");
    assert_eq!(
        vfs.read(reader, 0, 100).unwrap(),
        b"old bytes",
        "the open reader keeps its bytes"
    );
    assert_eq!(vfs.getattr(old_ino).unwrap().nlink, 0);
    vfs.release(reader).unwrap();
    vfs.release(fresh).unwrap();
    assert!(
        vfs.getattr(old_ino).is_err(),
        "the old inode is forgotten with its last handle"
    );
    assert_eq!(vfs.getxattr(new_ino, "user.contextfs.version").unwrap(), b"2");
    // The node keeps working as one: a local edit is a change of node 10.
    let fh = vfs.open(new_ino, TRUNC).unwrap();
    vfs.write(fh, 0, b"local edit").unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(read_path(&vfs, "doc.md"), b"local edit");
    let queued = vfs.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].1.node, Some(10));
}

#[test]
fn read_only_files_use_passthrough_without_the_flag() {
    let env = Env::new();
    let listing = tree_listing(1, vec![file_entry(&env.source, "spec.md", 10, 1, b"spec")]);
    let config = VfsConfig {
        state_dir: env.state_dir.clone(),
        read_only: true,
        agent_id: None,
        durability: contextfs::vfs::Durability::DEFAULT,
    };
    let vfs = Vfs::new(config, env.cache.clone(), env.source.clone()).unwrap();
    vfs.load(&listing, None).unwrap();
    vfs.enable_passthrough(true);
    let fh = vfs.open(ino_of(&vfs, "spec.md").unwrap(), RO).unwrap();
    assert!(is_passthrough(&vfs, fh));
    vfs.release(fh).unwrap();
}

// ----- write passthrough: the kernel writes a new file's staging file -----

/// A mount whose kernel agreed to passthrough, with the default policy.
fn writing_mount(env: &Env) -> Vfs {
    let vfs = env.mount(&empty_listing());
    vfs.enable_passthrough(true);
    vfs.set_passthrough_policy(PassthroughPolicy::All);
    vfs
}

/// Creates `name` and returns its inode, handle and the file the kernel
/// writes (what `reply_created` registers as the backing file).
fn create_written_by_kernel(vfs: &Vfs, name: &str) -> (Ino, u64, Arc<std::fs::File>) {
    let (attr, fh) = vfs.create(ROOT_INO, name, 0o644, WO, false).unwrap();
    match vfs.kernel_io(fh).unwrap() {
        KernelIo::Passthrough { file, .. } => (attr.ino, fh, file),
        other => panic!("a create should be written by the kernel, got {other:?}"),
    }
}

fn kernel_writes(file: &std::fs::File, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    file.write_all_at(bytes, at).unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn record_of(vfs: &Vfs, path: &str) -> contextfs::vfs::journal::Record {
    vfs.queued()
        .into_iter()
        .find(|(p, _)| p == path)
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no record for {path}"))
}

#[test]
fn a_large_file_the_kernel_writes_is_journaled_by_its_staging_file_until_its_last_writer_goes() {
    let env = Env::new();
    let vfs = writing_mount(&env);
    let (ino, fh, file) = create_written_by_kernel(&vfs, "data.bin");
    let first = pattern(200_000, 1);
    kernel_writes(&file, 0, &first);
    assert_eq!(
        vfs.getattr(ino).unwrap().size,
        200_000,
        "the size comes from the staging file"
    );

    // A reader joins the writer's epoch: the kernel wants one backing file.
    let reader = vfs.open(ino, RO).unwrap();
    assert!(matches!(vfs.kernel_io(reader).unwrap(), KernelIo::Passthrough { file: f, .. } if Arc::ptr_eq(&f, &file)));

    // A close while the handle stays open (a dup of it): journaled by file, not sent.
    vfs.flush(fh).unwrap();
    let record = record_of(&vfs, "data.bin");
    assert!(record.open_content && record.content.is_none(), "{record:?}");
    assert!(
        plan(&vfs).is_empty(),
        "nothing is sent while the kernel may still write it"
    );

    // The dup writes on; then its last release seals the bytes by hash.
    let more = pattern(50_000, 2);
    kernel_writes(&file, 200_000, &more);
    vfs.release(reader).unwrap();
    vfs.release(fh).unwrap();
    let all = [first, more].concat();
    let record = record_of(&vfs, "data.bin");
    assert!(!record.open_content);
    assert_eq!(record.content, Some(BlobHash::of(&all)));
    assert_eq!(record.size, all.len() as u64);
    assert_eq!(read_path(&vfs, "data.bin"), all);
    let pending = env.state_dir.join("pending");
    assert_eq!(std::fs::read(pending.join(BlobHash::of(&all).as_str())).unwrap(), all);
    assert_eq!(describe(&plan(&vfs)).len(), 1, "sendable now");

    // A later writer is an ordinary one, and copies before changing the sealed bytes.
    let w = vfs.open(ino, RW).unwrap();
    assert!(!is_passthrough(&vfs, w));
    vfs.write(w, 0, b"CHANGED").unwrap();
    vfs.release(w).unwrap();
    assert_eq!(
        std::fs::read(pending.join(BlobHash::of(&all).as_str())).unwrap(),
        all,
        "the sealed bytes stay"
    );
    vfs.make_journal_durable().unwrap(); // the group sync
    assert!(
        std::fs::read_dir(&pending)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".open-")),
        "no open link is left once the seal is durable"
    );
}

#[test]
fn a_mount_that_dies_while_the_kernel_writes_replays_the_bytes_as_they_were_left() {
    let env = Env::new();
    let vfs = writing_mount(&env);
    let (_ino, fh, file) = create_written_by_kernel(&vfs, "log.bin");
    let closed = pattern(300_000, 3);
    kernel_writes(&file, 0, &closed);
    vfs.flush(fh).unwrap(); // close() of one descriptor returned
    let later = pattern(10_000, 4);
    kernel_writes(&file, 300_000, &later); // another descriptor wrote on
                                           // kill -9: no release, no group sync; the page cache keeps what was written.
    drop(vfs);
    drop(file);
    let vfs = env.mount(&empty_listing());
    let all = [closed, later].concat();
    assert_eq!(read_path(&vfs, "log.bin"), all, "every byte the kernel had written");
    let record = record_of(&vfs, "log.bin");
    assert!(!record.open_content, "replay hashes it");
    assert_eq!(record.content, Some(BlobHash::of(&all)));
    assert_eq!(describe(&plan(&vfs)).len(), 1, "and it goes to the server");
}

#[test]
fn a_small_file_the_kernel_writes_is_journaled_inline_once_per_change() {
    let env = Env::new();
    let vfs = writing_mount(&env);
    let (_ino, fh, file) = create_written_by_kernel(&vfs, "note.md");
    kernel_writes(&file, 0, b"first line\n");
    vfs.flush(fh).unwrap();
    let record = record_of(&vfs, "note.md");
    assert_eq!(record.content, Some(BlobHash::of(b"first line\n")));
    assert!(record.inline.is_some() && !record.open_content);
    assert!(plan(&vfs).is_empty(), "not sent while a descriptor may still write it");
    // Released without a change since that close: no second record.
    let (_, other, other_file) = create_written_by_kernel(&vfs, "other.md");
    kernel_writes(&other_file, 0, b"x");
    vfs.flush(other).unwrap();
    let rev = record_of(&vfs, "other.md").rev;
    vfs.release(other).unwrap();
    assert_eq!(
        record_of(&vfs, "other.md").rev,
        rev,
        "an unchanged file is not journaled again"
    );
    // A write through a dup after the close is journaled at the release.
    kernel_writes(&file, 11, b"second line\n");
    vfs.release(fh).unwrap();
    assert_eq!(read_path(&vfs, "note.md"), b"first line\nsecond line\n");
    assert_eq!(
        record_of(&vfs, "note.md").content,
        Some(BlobHash::of(b"first line\nsecond line\n"))
    );
    assert_eq!(describe(&plan(&vfs)).len(), 2, "both files go out now");
}

#[test]
fn writers_join_the_kernels_epoch_until_its_last_writer_goes_then_wait_for_its_readers() {
    let env = Env::new();
    let vfs = writing_mount(&env);
    let (ino, fh, file) = create_written_by_kernel(&vfs, "shared.txt");
    let second = vfs.open(ino, RW).unwrap();
    assert!(matches!(vfs.kernel_io(second).unwrap(), KernelIo::Passthrough { file: f, .. } if Arc::ptr_eq(&f, &file)));
    let reader = vfs.open(ino, RO).unwrap();
    kernel_writes(&file, 0, b"both wrote here");
    vfs.release(second).unwrap();
    vfs.release(fh).unwrap();
    // The reader keeps the epoch (and its backing file) alive; a new writer
    // could not share it once it is sealed: it waits, then ETXTBSY.
    assert!(vfs.passthrough_readers(ino));
    assert_eq!(errno(vfs.open(ino, RW)), Err(libc::ETXTBSY));
    assert!(
        vfs.release_kernel(reader).unwrap().is_some(),
        "the reader ends the epoch"
    );
    let w = vfs.open(ino, RW).unwrap();
    vfs.write(w, 0, b"BOTH").unwrap();
    vfs.release(w).unwrap();
    assert_eq!(read_path(&vfs, "shared.txt"), b"BOTH wrote here");
}

#[test]
fn a_file_the_kernel_grew_past_the_largest_size_fails_at_close_with_efbig() {
    let env = Env::new();
    let vfs = writing_mount(&env);
    let (ino, fh, file) = create_written_by_kernel(&vfs, "huge.bin");
    // The kernel does not know the server's limit (sparse: no disk used).
    file.set_len(contextfs::vfs::DEFAULT_MAX_FILE_BYTES + 1).unwrap();
    assert_eq!(errno(vfs.flush(fh)), Err(libc::EFBIG));
    assert!(plan(&vfs).is_empty(), "nothing the server would refuse is queued");
    file.set_len(5).unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(vfs.getattr(ino).unwrap().size, 5);
    assert_eq!(describe(&plan(&vfs)).len(), 1);
}

#[test]
fn writes_go_through_the_mount_when_the_policy_or_the_server_says_so() {
    let env = Env::new();
    let vfs = writing_mount(&env);
    vfs.set_passthrough_policy(PassthroughPolicy::Reads);
    let (_, fh) = vfs.create(ROOT_INO, "a.txt", 0o644, WO, false).unwrap();
    assert!(!is_passthrough(&vfs, fh), "--passthrough reads");
    vfs.release(fh).unwrap();
    vfs.set_passthrough_policy(PassthroughPolicy::All);
    vfs.set_max_file_bytes(1 << 30);
    let (_, fh) = vfs.create(ROOT_INO, "b.txt", 0o644, WO, false).unwrap();
    assert!(
        !is_passthrough(&vfs, fh),
        "a server with a smaller limit: write() enforces it"
    );
    vfs.release(fh).unwrap();
}

#[test]
fn a_file_removed_before_its_last_writer_goes_leaves_nothing_in_the_journal() {
    let env = Env::new();
    let vfs = writing_mount(&env);
    let (_ino, fh, file) = create_written_by_kernel(&vfs, "tmp.o");
    kernel_writes(&file, 0, &pattern(500_000, 5));
    vfs.flush(fh).unwrap();
    vfs.unlink(ROOT_INO, "tmp.o").unwrap();
    vfs.release(fh).unwrap();
    vfs.make_journal_durable().unwrap();
    assert!(vfs.queued().is_empty(), "{:?}", vfs.queued());
    let pending: Vec<_> = std::fs::read_dir(env.state_dir.join("pending"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(pending.is_empty(), "pending contents left: {pending:?}");
    // Its bytes go with the kernel's last descriptor: no name keeps them.
    let meta = file.metadata().unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::nlink(&meta) == 0 || meta.len() == 0,
        "the staging file keeps {} bytes under {} names",
        meta.len(),
        std::os::unix::fs::MetadataExt::nlink(&meta)
    );
}
