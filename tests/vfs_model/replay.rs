//! Journal replay corner cases (a remount rebuilds the tree).

use crate::harness::*;

#[test]
fn replay_puts_children_in_a_local_directory_renamed_after_they_were_written() {
    let env = Env::new();
    let vfs = env.mount(&empty_listing());
    let dir = vfs.mkdir(ROOT_INO, "notes", 0o755).unwrap().ino;
    write_file(&vfs, dir, "todo.md", b"- replay\n");
    // Journal timestamps have millisecond resolution: make the order visible.
    std::thread::sleep(std::time::Duration::from_millis(5));
    vfs.rename(ROOT_INO, "notes", ROOT_INO, "journal", false).unwrap();
    drop(vfs);
    let vfs = env.mount(&empty_listing());
    assert_eq!(read_path(&vfs, "journal/todo.md"), b"- replay\n");
    assert_eq!(vfs.lookup(ROOT_INO, "todo.md").unwrap_err().errno, libc::ENOENT);
}

#[test]
fn replay_of_swapped_server_files_keeps_both_contents() {
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![
            file_entry(&env.source, "a", 1, 1, b"AAA"),
            file_entry(&env.source, "b", 2, 1, b"BBB"),
        ],
    );
    let vfs = env.mount(&listing);
    vfs.rename(ROOT_INO, "a", ROOT_INO, "tmp", false).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3));
    vfs.rename(ROOT_INO, "b", ROOT_INO, "a", false).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3));
    vfs.rename(ROOT_INO, "tmp", ROOT_INO, "b", false).unwrap();
    assert_eq!(
        (read_path(&vfs, "a"), read_path(&vfs, "b")),
        (b"BBB".to_vec(), b"AAA".to_vec())
    );
    drop(vfs);
    let vfs = env.mount(&listing);
    assert_eq!(
        (read_path(&vfs, "a"), read_path(&vfs, "b")),
        (b"BBB".to_vec(), b"AAA".to_vec())
    );
    assert_eq!(
        vfs.getxattr(ino_of(&vfs, "a").unwrap(), "user.contextfs.node").unwrap(),
        b"2"
    );
}

#[test]
fn a_file_in_a_directory_that_reached_the_server_replays_into_it() {
    let env = Env::new();
    let vfs = env.mount(&empty_listing());
    let dir = vfs.mkdir(ROOT_INO, "d", 0o755).unwrap().ino;
    let items = plan(&vfs);
    assert_eq!(describe(&items), ["mkdir d"]);
    write_file(&vfs, dir, "f.md", b"inside d");
    let v = version_info(50, 1, "d", NodeKind::Dir, BlobHash::of(b""), 0, VersionStatus::Clean);
    vfs.ack_namespace(items[0].uid, items[0].rev, &v).unwrap();
    assert_eq!(describe(&plan(&vfs)), ["commit d/f.md"]);
    // Crash before the file's commit (after the round's journal sync); the
    // server now lists `d`.
    vfs.make_journal_durable().unwrap();
    drop(vfs);
    let listing = tree_listing(2, vec![dir_entry("d", 50)]);
    let vfs = env.mount(&listing);
    assert_eq!(read_path(&vfs, "d/f.md"), b"inside d");
    assert_eq!(vfs.lookup(ROOT_INO, "f.md").unwrap_err().errno, libc::ENOENT);
    assert_eq!(describe(&plan(&vfs)), ["commit d/f.md"]);
}

/// The mount dies after the server made a directory (its mkdir, or one of
/// the files written into it, reached the server) but before the answer
/// was applied: the journal still says "mkdir d", and the server already
/// holds `d` with a file committed into it. The remount shows both the
/// server's file and the journaled one in `d`; the mkdir is sent again and
/// binds to the server's node.
#[test]
fn a_journaled_mkdir_the_server_already_made_keeps_what_the_server_holds_in_it() {
    let env = Env::new();
    let vfs = env.mount(&empty_listing());
    let dir = vfs.mkdir(ROOT_INO, "d", 0o755).unwrap().ino;
    write_file(&vfs, dir, "journaled.md", b"only in the journal");
    assert_eq!(describe(&plan(&vfs)), ["mkdir d", "commit d/journaled.md"]);
    vfs.make_journal_durable().unwrap();
    drop(vfs);
    let listing = tree_listing(
        3,
        vec![
            dir_entry("d", 50),
            file_entry(&env.source, "d/committed.md", 51, 1, b"on the server"),
        ],
    );
    let vfs = env.mount(&listing);
    assert_eq!(read_path(&vfs, "d/committed.md"), b"on the server");
    assert_eq!(read_path(&vfs, "d/journaled.md"), b"only in the journal");
    let items = plan(&vfs);
    assert_eq!(describe(&items), ["mkdir d", "commit d/journaled.md"]);
    let v = version_info(50, 1, "d", NodeKind::Dir, BlobHash::of(b""), 0, VersionStatus::Clean);
    vfs.ack_namespace(items[0].uid, items[0].rev, &v).unwrap();
    assert_eq!(
        vfs.getxattr(ino_of(&vfs, "d").unwrap(), "user.contextfs.node").unwrap(),
        b"50"
    );
    assert_eq!(read_path(&vfs, "d/committed.md"), b"on the server");
}

/// `rmdir b; mkdir b` within one millisecond (no sleep between them): the
/// remount removes the old `b` and then makes the new one, whatever the
/// random uids of the two records. Ten fresh mounts, so an order that
/// depended on the uids would show.
#[test]
fn a_directory_removed_and_made_again_at_once_replays_as_the_new_one() {
    for _ in 0..10 {
        let env = Env::new();
        let listing = tree_listing(1, vec![dir_entry("b", 1)]);
        let vfs = env.mount(&listing);
        vfs.rmdir(ROOT_INO, "b").unwrap();
        let dir = vfs.mkdir(ROOT_INO, "b", 0o700).unwrap().ino;
        write_file(&vfs, dir, "x.md", b"new b");
        drop(vfs);
        remount_shows_the_new_b(&env, &listing);
    }
}

/// After a remount, `b` is the 0o700 directory made here, with its `x.md`.
fn remount_shows_the_new_b(env: &Env, listing: &TreeListing) {
    let vfs = env.mount(listing);
    assert_eq!(read_path(&vfs, "b/x.md"), b"new b");
    let b = vfs.getattr(ino_of(&vfs, "b").unwrap()).unwrap();
    assert_eq!((b.kind, b.mode & 0o777), (NodeKind::Dir, 0o700));
}

/// A new directory renamed over an empty server directory, then written
/// into: the remount shows the new directory and its file. (Replay took the
/// old directory over for the journaled mkdir, the way it adopts a
/// directory whose mkdir reached the server, and the old one's journaled
/// deletion then removed it.)
#[test]
fn a_new_directory_renamed_over_a_server_directory_replays_as_the_new_one() {
    let env = Env::new();
    let listing = tree_listing(1, vec![dir_entry("b", 1)]);
    let vfs = env.mount(&listing);
    let dir = vfs.mkdir(ROOT_INO, "c", 0o700).unwrap().ino;
    vfs.rename(ROOT_INO, "c", ROOT_INO, "b", false).unwrap();
    write_file(&vfs, dir, "x.md", b"new b");
    drop(vfs);
    remount_shows_the_new_b(&env, &listing);
}
