//! Remote changes arriving through the change feed.

use crate::harness::*;

#[test]
fn remote_changes_reach_new_opens_but_not_open_handles() {
    let env = Env::new();
    let listing = tree_listing(
        3,
        vec![
            file_entry(&env.source, "doc.md", 10, 3, b"v3 bytes"),
            file_entry(&env.source, "other.md", 11, 1, b"other v1"),
        ],
    );
    let vfs = env.mount(&listing);
    let doc = ino_of(&vfs, "doc.md").unwrap();
    let old = vfs.open(doc, RO).unwrap();
    assert_eq!(vfs.read(old, 0, 100).unwrap(), b"v3 bytes");

    let v4: &[u8] = b"v4 bytes, longer";
    vfs.apply_events(&[event(4, 10, 4, "doc.md", env.source.put(v4), v4.len() as u64, false)]);
    assert_eq!(vfs.cursor(), 4);
    assert_eq!(vfs.getattr(doc).unwrap().size, v4.len() as u64);
    assert_eq!(read_path(&vfs, "doc.md"), v4);
    assert_eq!(
        vfs.read(old, 0, 100).unwrap(),
        b"v3 bytes",
        "a handle opened before keeps its bytes"
    );
    vfs.release(old).unwrap();
    assert_eq!(vfs.getxattr(doc, "user.contextfs.version").unwrap(), b"4");
    // Old news (our own change coming back) changes nothing.
    vfs.apply_events(&[event(5, 10, 3, "doc.md", env.source.put(b"stale"), 5, false)]);
    assert_eq!(read_path(&vfs, "doc.md"), v4);

    // A file with queued local changes keeps them.
    let other = ino_of(&vfs, "other.md").unwrap();
    let fh = vfs.open(other, TRUNC).unwrap();
    vfs.write(fh, 0, b"local edit").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    vfs.apply_events(&[event(6, 11, 2, "other.md", env.source.put(b"remote edit"), 11, false)]);
    assert_eq!(read_path(&vfs, "other.md"), b"local edit");
    assert_eq!(status(&vfs, other), "queued");
    // ... and so does one with unflushed writes.
    let fh = vfs.open(other, RW).unwrap();
    vfs.write(fh, 0, b"LOCAL").unwrap();
    vfs.apply_events(&[event(7, 11, 3, "other.md", env.source.put(b"remote again"), 12, false)]);
    assert_eq!(vfs.read(fh, 0, 100).unwrap(), b"LOCAL edit");
    vfs.release(fh).unwrap();

    // Remote create, then remote delete.
    vfs.apply_events(&[event(8, 12, 1, "new.md", env.source.put(b"from elsewhere"), 14, false)]);
    let names = root_names(&vfs);
    assert_eq!(names, ["doc.md", "new.md", "other.md"]);
    assert_eq!(read_path(&vfs, "new.md"), b"from elsewhere");
    vfs.apply_events(&[event(9, 12, 2, "new.md", BlobHash::of(b""), 0, true)]);
    let names = root_names(&vfs);
    assert_eq!(names, ["doc.md", "other.md"]);
    assert_eq!(vfs.lookup(ROOT_INO, "new.md").unwrap_err().errno, libc::ENOENT);
    assert_eq!(vfs.cursor(), 9);
    // Nothing of this is a local change.
    assert_eq!(describe(&plan(&vfs)), ["commit other.md"]);
}

#[test]
fn a_remote_rename_moves_a_clean_file() {
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![dir_entry("docs", 1), file_entry(&env.source, "docs/a.md", 2, 1, b"aaa")],
    );
    let vfs = env.mount(&listing);
    let ino = ino_of(&vfs, "docs/a.md").unwrap();
    let e = rename_event(event(2, 2, 2, "b.md", BlobHash::of(b"aaa"), 3, false), "docs/a.md");
    vfs.apply_events(&[e]);
    assert_eq!(ino_of(&vfs, "b.md").unwrap(), ino);
    assert_eq!(
        vfs.lookup(ino_of(&vfs, "docs").unwrap(), "a.md").unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(read_path(&vfs, "b.md"), b"aaa");
}

/// Another writer moved a node onto the path of a new local file, and the
/// mount's commit landed in that node: the inode that showed the node at its
/// old path goes (the server has nothing there), instead of staying as a
/// ghost whose edits would be committed into the other file's node. Found by
/// `sync::late_acks_echoes_and_remote_news_never_beat_local_state` (minimal
/// case: `[Local(Write { path: "b/c", data: [] }), RemoteRename { pick: 0,
/// to: "b/c" }, Drain, Answer(0), Feed(1)]`).
#[test]
fn an_ack_binding_a_node_another_inode_shows_leaves_no_ghost() {
    let env = Env::new();
    let listing = tree_listing(1, vec![file_entry(&env.source, "a", 1, 1, b"server a")]);
    let vfs = env.mount(&listing);
    // Locally: a new file `c`. Meanwhile another writer renames `a` to `c`
    // (node 1, version 2), and the mount's base-less commit of `c` lands in
    // that node on the server (version 3).
    write_file(&vfs, ROOT_INO, "c", b"local c");
    let items = plan(&vfs);
    let (path, node, _, hash, _, _) = only_commit(&items);
    assert_eq!((path.as_str(), node), ("c", None));
    let v = version_info(1, 3, "c", NodeKind::File, hash.clone(), 7, VersionStatus::Lww);
    vfs.ack_commit(items[0].uid, items[0].rev, &hash, &v).unwrap();
    let renamed = rename_event(event(2, 1, 2, "c", BlobHash::of(b"server a"), 8, false), "a");
    vfs.apply_events(&[renamed]);
    assert_eq!(read_path(&vfs, "c"), b"local c");
    assert_eq!(
        root_names(&vfs),
        ["c"],
        "the server has node 1 at `c` only; `a` is gone there"
    );
}
