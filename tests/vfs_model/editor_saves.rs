//! Editor-save patterns: each is one commit on the target's node.

use crate::harness::*;

fn assert_commit_on_doc(vfs: &Vfs, bytes: &[u8]) {
    let (path, node, base, hash, _, source) = only_commit(&plan(vfs));
    assert_eq!(path, "doc.md");
    assert_eq!(node, Some(10));
    assert_eq!(base, Some(3));
    assert_eq!(hash, BlobHash::of(bytes));
    assert!(
        matches!(source, ContentSource::Inline(ref b) if b == bytes),
        "{source:?}"
    );
    assert_eq!(read_path(vfs, "doc.md"), bytes);
    assert_eq!(vfs.queued().len(), 1, "{:?}", vfs.queued());
}

#[test]
fn save_by_temp_file_and_rename_is_one_commit_on_the_node() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    write_file(&vfs, ROOT_INO, "doc.md.tmp", b"new text\n");
    vfs.rename(ROOT_INO, "doc.md.tmp", ROOT_INO, "doc.md", false).unwrap();
    assert_commit_on_doc(&vfs, b"new text\n");
    assert_eq!(
        vfs.getxattr(ino_of(&vfs, "doc.md").unwrap(), "user.contextfs.node")
            .unwrap(),
        b"10"
    );
    // And it survives a restart the same way.
    drop(vfs);
    let vfs = env.mount(&listing);
    assert_commit_on_doc(&vfs, b"new text\n");
}

#[test]
fn vim_backup_rename_save_is_one_commit_and_no_delete() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    vfs.rename(ROOT_INO, "doc.md", ROOT_INO, "doc.md~", false).unwrap();
    let (_, fh) = vfs
        .create(
            ROOT_INO,
            "doc.md",
            0o644,
            OpenMode {
                write: true,
                ..Default::default()
            },
            true,
        )
        .unwrap();
    vfs.write(fh, 0, b"vim wrote this\n").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    vfs.unlink(ROOT_INO, "doc.md~").unwrap();
    let items = plan(&vfs);
    assert!(
        !items.iter().any(|i| matches!(i.op, DrainOp::Delete { .. })),
        "{:?}",
        describe(&items)
    );
    assert_commit_on_doc(&vfs, b"vim wrote this\n");
    drop(vfs);
    let vfs = env.mount(&listing);
    assert_commit_on_doc(&vfs, b"vim wrote this\n");
    assert_eq!(vfs.lookup(ROOT_INO, "doc.md~").unwrap_err().errno, libc::ENOENT);
}

#[test]
fn os_replace_from_a_hidden_temp_name_is_one_commit() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    // Python's atomic-write helpers: mkstemp in the same directory, then os.replace.
    let (_, fh) = vfs.create(ROOT_INO, ".doc.md.x7f3k2", 0o600, RW, true).unwrap();
    vfs.write(fh, 0, b"python ").unwrap();
    vfs.write(fh, 7, b"wrote\n").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    vfs.rename(ROOT_INO, ".doc.md.x7f3k2", ROOT_INO, "doc.md", false)
        .unwrap();
    assert_commit_on_doc(&vfs, b"python wrote\n");
    let names = root_names(&vfs);
    assert_eq!(names, ["doc.md"]);
}

#[test]
fn rewrite_in_place_with_o_trunc_then_chmod_is_one_commit_with_the_mode() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    let ino = ino_of(&vfs, "doc.md").unwrap();
    let fh = vfs.open(ino, TRUNC).unwrap();
    assert_eq!(vfs.getattr(ino).unwrap().size, 0);
    vfs.write(fh, 0, b"#!/bin/sh\necho hi\n").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    vfs.setattr(
        ino,
        None,
        SetAttr {
            mode: Some(0o100755),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(vfs.getattr(ino).unwrap().mode, 0o755);
    let (path, node, base, hash, mode, _) = only_commit(&plan(&vfs));
    assert_eq!((path.as_str(), node, base, mode), ("doc.md", Some(10), Some(3), 0o755));
    assert_eq!(hash, BlobHash::of(b"#!/bin/sh\necho hi\n"));
}

#[test]
fn unlinking_a_server_file_is_one_delete() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    vfs.unlink(ROOT_INO, "doc.md").unwrap();
    let items = plan(&vfs);
    assert_eq!(items.len(), 1, "{:?}", describe(&items));
    match &items[0].op {
        DrainOp::Delete { node, path, recursive } => {
            assert_eq!((*node, path.as_str(), *recursive), (10, "doc.md", false))
        }
        other => panic!("expected a delete, got {other:?}"),
    }
    drop(vfs);
    let vfs = env.mount(&listing);
    assert_eq!(vfs.lookup(ROOT_INO, "doc.md").unwrap_err().errno, libc::ENOENT);
    assert_eq!(plan(&vfs).len(), 1);
}

#[test]
fn a_new_file_unlinked_before_it_synced_leaves_nothing() {
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    write_file(&vfs, ROOT_INO, "scratch.txt", b"scratch");
    assert_eq!(env.durable_records(vfs, &listing), 1);
    let vfs = env.mount(&listing);
    assert_eq!(plan(&vfs).len(), 1);
    vfs.unlink(ROOT_INO, "scratch.txt").unwrap();
    assert!(plan(&vfs).is_empty(), "{:?}", describe(&plan(&vfs)));
    assert!(vfs.queued().is_empty());
    assert_eq!(env.durable_records(vfs, &listing), 0);
}

#[test]
fn o_trunc_alone_on_a_server_file_is_a_change() {
    // `: > doc.md` opens with O_TRUNC and writes nothing.
    let (env, listing) = doc_env();
    let vfs = env.mount(&listing);
    let ino = ino_of(&vfs, "doc.md").unwrap();
    let fh = vfs.open(ino, TRUNC).unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(read_path(&vfs, "doc.md"), b"");
    let (_, node, base, hash, _, _) = only_commit(&plan(&vfs));
    assert_eq!((node, base, hash), (Some(10), Some(3), BlobHash::of(b"")));
    drop(vfs);
    let vfs = env.mount(&listing);
    assert_eq!(read_path(&vfs, "doc.md"), b"");
}
