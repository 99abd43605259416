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
