//! The server's largest file (`max_file_bytes`, from `GET /health`): no
//! write, truncate or fallocate takes a file past it. A write that starts
//! below it is shortened to end there (as with RLIMIT_FSIZE); one that
//! starts at or past it, a truncate or a fallocate past it fail with EFBIG.
//! What stays is a file the server accepts, journaled as usual.

use crate::harness::*;

const LIMIT: u64 = 1000;

const APPEND: OpenMode = OpenMode {
    read: true,
    write: true,
    truncate: false,
    append: true,
};

fn vfs_with_limit(env: &Env) -> Vfs {
    let vfs = env.mount(&empty_listing());
    vfs.set_max_file_bytes(LIMIT);
    vfs
}

/// The bytes and size of the single commit queued, after closing everything.
fn queued_size(vfs: &Vfs) -> u64 {
    let items = plan(vfs);
    assert_eq!(items.len(), 1, "{:?}", describe(&items));
    match &items[0].op {
        DrainOp::Commit { size, .. } => *size,
        other => panic!("expected a commit, got {other:?}"),
    }
}

#[test]
fn a_write_across_the_limit_is_shortened_and_the_next_one_fails_with_efbig() {
    let env = Env::new();
    let vfs = vfs_with_limit(&env);
    let (attr, fh) = vfs.create(ROOT_INO, "big.bin", 0o644, RW, false).unwrap();
    assert_eq!(vfs.write(fh, 0, &[b'a'; 900]).unwrap(), 900);
    // 200 bytes from 900: only 100 fit.
    assert_eq!(vfs.write(fh, 900, &[b'b'; 200]).unwrap(), 100);
    let err = vfs.write(fh, 1000, &[b'c'; 10]).unwrap_err();
    assert_eq!(err.errno, libc::EFBIG, "{err}");
    assert!(err.message.contains("at most 1000 bytes"), "{err}");
    assert_eq!(errno(vfs.write(fh, 5000, b"x")), Err(libc::EFBIG));
    // An empty write past the limit changes nothing and is no error.
    assert_eq!(vfs.write(fh, 5000, b"").unwrap(), 0);
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(vfs.getattr(attr.ino).unwrap().size, LIMIT);
    let bytes = read_path(&vfs, "big.bin");
    assert_eq!(bytes.len() as u64, LIMIT);
    assert!(bytes[..900].iter().all(|b| *b == b'a') && bytes[900..].iter().all(|b| *b == b'b'));
    assert_eq!(queued_size(&vfs), LIMIT, "what is queued is what the server accepts");
}

#[test]
fn appends_stop_at_the_limit() {
    let env = Env::new();
    let vfs = vfs_with_limit(&env);
    let (attr, fh) = vfs.create(ROOT_INO, "log", 0o644, APPEND, false).unwrap();
    let mut total = 0;
    let err = loop {
        match vfs.write(fh, 0, &[b'l'; 300]) {
            Ok(n) => total += n as u64,
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno, libc::EFBIG, "{err}");
    assert_eq!(total, LIMIT);
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(vfs.getattr(attr.ino).unwrap().size, LIMIT);
    assert_eq!(queued_size(&vfs), LIMIT);
}

#[test]
fn truncate_and_fallocate_past_the_limit_fail_and_change_nothing() {
    let env = Env::new();
    let vfs = vfs_with_limit(&env);
    let (attr, fh) = vfs.create(ROOT_INO, "f", 0o644, RW, false).unwrap();
    vfs.write(fh, 0, b"hello").unwrap();
    let grow = |size| SetAttr {
        size: Some(size),
        mode: None,
        atime: None,
        mtime: None,
    };
    let err = vfs.setattr(attr.ino, Some(fh), grow(LIMIT + 1)).unwrap_err();
    assert_eq!(err.errno, libc::EFBIG, "{err}");
    assert_eq!(errno(vfs.fallocate(fh, 0, LIMIT + 1, 0)), Err(libc::EFBIG));
    // Past the limit even when the size would not change.
    assert_eq!(
        errno(vfs.fallocate(fh, LIMIT, 10, libc::FALLOC_FL_KEEP_SIZE)),
        Err(libc::EFBIG)
    );
    assert_eq!(vfs.getattr(attr.ino).unwrap().size, 5);
    // Up to the limit is fine.
    vfs.setattr(attr.ino, Some(fh), grow(LIMIT)).unwrap();
    vfs.fallocate(fh, 0, LIMIT, 0).unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(vfs.getattr(attr.ino).unwrap().size, LIMIT);
    assert_eq!(queued_size(&vfs), LIMIT);
    // A path truncate (no handle) is refused the same way.
    assert_eq!(errno(vfs.setattr(attr.ino, None, grow(LIMIT * 2))), Err(libc::EFBIG));
    assert_eq!(vfs.getattr(attr.ino).unwrap().size, LIMIT);
}

#[test]
fn without_a_limit_from_the_server_files_may_reach_one_tebibyte() {
    let env = Env::new();
    let vfs = env.mount(&empty_listing());
    assert_eq!(vfs.max_file_bytes(), contextfs::vfs::DEFAULT_MAX_FILE_BYTES);
    assert_eq!(contextfs::vfs::DEFAULT_MAX_FILE_BYTES, 1 << 40);
    let (attr, fh) = vfs.create(ROOT_INO, "sparse", 0o644, RW, false).unwrap();
    // A sparse write near the default limit is accepted, one past it is not.
    assert_eq!(vfs.write(fh, (1 << 40) - 1, b"xy").unwrap(), 1);
    assert_eq!(errno(vfs.write(fh, 1 << 40, b"z")), Err(libc::EFBIG));
    assert_eq!(vfs.getattr(attr.ino).unwrap().size, 1 << 40);
    // Empty again before close, which would hash a terabyte of zeros.
    let empty = SetAttr {
        size: Some(0),
        mode: None,
        atime: None,
        mtime: None,
    };
    vfs.setattr(attr.ino, Some(fh), empty).unwrap();
    vfs.release(fh).unwrap();
}
