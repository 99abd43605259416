//! What the drain plan sends, and in which order, for renamed and recreated paths.

use crate::harness::*;

#[test]
fn editing_a_file_in_a_renamed_server_directory_plans_no_rename_of_the_file() {
    let env = Env::new();
    let vfs = env.mount(&dir_d_with_f_md(&env));
    vfs.rename(ROOT_INO, "d", ROOT_INO, "e", false).unwrap();
    write_at(&vfs, "e/f.md", 1, b"+");
    let items = plan(&vfs);
    assert_eq!(describe(&items), ["rename d -> e", "commit e/f.md"]);
    // After the directory's rename reached the server, the file is just a commit.
    ack_rename_of_d_to_e(&vfs, &items[0]);
    let (path, node, base, _, _, _) = only_commit(&plan(&vfs));
    assert_eq!((path.as_str(), node, base), ("e/f.md", Some(21), Some(1)));
}

#[test]
fn deleting_a_file_in_a_renamed_server_directory_deletes_it_where_the_rename_put_it() {
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![
            dir_entry("d", 20),
            file_entry(&env.source, "d/f.md", 21, 1, b"f"),
            file_entry(&env.source, "d/x.md", 22, 1, b"x"),
        ],
    );
    let vfs = env.mount(&listing);
    vfs.rename(ROOT_INO, "d", ROOT_INO, "e", false).unwrap();
    vfs.unlink(ino_of(&vfs, "e").unwrap(), "x.md").unwrap();
    let items = plan(&vfs);
    // The deletion runs after the rename, so it names the node's new path.
    assert_eq!(describe(&items), ["rename d -> e", "delete e/x.md"]);
    ack_rename_of_d_to_e(&vfs, &items[0]);
    assert_eq!(describe(&plan(&vfs)), ["delete e/x.md"]);
    // A restart (after the round's journal sync) before the deletion reached
    // the server keeps it that way.
    vfs.make_journal_durable().unwrap();
    drop(vfs);
    let listing = tree_listing(
        2,
        vec![
            dir_entry("e", 20),
            file_entry(&env.source, "e/f.md", 21, 1, b"f"),
            file_entry(&env.source, "e/x.md", 22, 1, b"x"),
        ],
    );
    let vfs = env.mount(&listing);
    assert_eq!(describe(&plan(&vfs)), ["delete e/x.md"]);
    assert_eq!(vfs.readdir(ino_of(&vfs, "e").unwrap()).unwrap().len(), 1);
}

#[test]
fn editing_a_file_after_its_directory_was_renamed_remotely_is_a_plain_commit() {
    let env = Env::new();
    let vfs = env.mount(&dir_d_with_f_md(&env));
    let mut e = event(2, 20, 2, "e", BlobHash::of(b""), 0, false);
    e.kind = NodeKind::Dir;
    vfs.apply_events(&[rename_event(e, "d")]);
    write_at(&vfs, "e/f.md", 1, b"+");
    let (path, node, base, _, _, _) = only_commit(&plan(&vfs));
    assert_eq!((path.as_str(), node, base), ("e/f.md", Some(21), Some(1)));
}

#[test]
fn chmod_of_a_server_directory_sends_no_commit() {
    // `cp -a`, `tar x` and `chmod -R` change directory modes; the server's
    // commit route refuses directories, so such a record would never drain.
    let env = Env::new();
    let listing = tree_listing(1, vec![dir_entry("d", 20)]);
    let vfs = env.mount(&listing);
    let d = ino_of(&vfs, "d").unwrap();
    vfs.setattr(
        d,
        None,
        SetAttr {
            mode: Some(0o700),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(vfs.getattr(d).unwrap().mode, 0o700);
    let items = plan(&vfs);
    assert!(
        !items.iter().any(|i| matches!(i.op, DrainOp::Commit { .. })),
        "{:?}",
        describe(&items)
    );
    // Renamed too: the rename is sent, and nothing after it.
    vfs.rename(ROOT_INO, "d", ROOT_INO, "e", false).unwrap();
    let items = plan(&vfs);
    assert_eq!(describe(&items), ["rename d -> e"]);
    ack_rename_of_d_to_e(&vfs, &items[0]);
    assert!(
        plan(&vfs).iter().all(|i| matches!(i.op, DrainOp::Forget)),
        "{:?}",
        describe(&plan(&vfs))
    );
}

#[test]
fn recreating_a_deleted_path_waits_for_the_deletion() {
    // Sent before the deletion, the new file would be written into the old
    // node (the server merges a base-less commit into it, and mkdir of an
    // existing directory returns it), and the deletion would then remove it.
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![
            dir_entry("b", 2),
            file_entry(&env.source, "b/a", 3, 1, b"old a"),
            file_entry(&env.source, "doc.md", 10, 3, DOC),
        ],
    );
    let vfs = env.mount(&listing);
    // rm -rf b && mkdir b && echo new > b/new
    let b = ino_of(&vfs, "b").unwrap();
    vfs.unlink(b, "a").unwrap();
    vfs.rmdir(ROOT_INO, "b").unwrap();
    let b = vfs.mkdir(ROOT_INO, "b", 0o755).unwrap().ino;
    write_file(&vfs, b, "new", b"new");
    // rm doc.md && echo new > doc.md
    vfs.unlink(ROOT_INO, "doc.md").unwrap();
    write_file(&vfs, ROOT_INO, "doc.md", b"recreated");

    let items = plan(&vfs);
    let mut deletes = describe(&items);
    deletes.sort();
    assert_eq!(deletes, ["delete b", "delete b/a", "delete doc.md"]);
    assert_eq!(items[0].describe(), "delete b/a", "children before their directory");
    for item in &items {
        let DrainOp::Delete { node, .. } = item.op else {
            unreachable!()
        };
        vfs.ack_delete(item.uid, item.rev, node, &[]).unwrap();
    }
    let mut next = describe(&plan(&vfs));
    next.sort();
    assert_eq!(next, ["commit b/new", "commit doc.md", "mkdir b"]);
    assert_eq!(read_path(&vfs, "b/new"), b"new");
    assert_eq!(read_path(&vfs, "doc.md"), b"recreated");
}

/// Log rotation: each rename goes after the one that frees its target, and
/// `mv b c; mkdir b` sends the rename before the mkdir that needs its path.
#[test]
fn renames_go_after_the_renames_that_free_their_targets_and_before_mkdirs() {
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![
            dir_entry("b", 10),
            file_entry(&env.source, "log", 11, 1, b"0"),
            file_entry(&env.source, "log.1", 12, 1, b"1"),
            file_entry(&env.source, "log.2", 13, 1, b"2"),
        ],
    );
    let vfs = env.mount(&listing);
    vfs.rename(ROOT_INO, "log.2", ROOT_INO, "log.3", false).unwrap();
    vfs.rename(ROOT_INO, "log.1", ROOT_INO, "log.2", false).unwrap();
    vfs.rename(ROOT_INO, "log", ROOT_INO, "log.1", false).unwrap();
    vfs.rename(ROOT_INO, "b", ROOT_INO, "c", false).unwrap();
    vfs.mkdir(ROOT_INO, "b", 0o755).unwrap();
    assert_eq!(
        describe(&plan(&vfs)),
        [
            "rename b -> c",
            "rename log.2 -> log.3",
            "rename log.1 -> log.2",
            "rename log -> log.1",
            "mkdir b"
        ]
    );
}

/// A long chain, each rename freeing the next one's target (files shifted
/// up by one): sent from the top down.
#[test]
fn a_chain_of_renames_shifting_files_up_goes_from_the_top_down() {
    let env = Env::new();
    let entries = (0..30)
        .map(|i| file_entry(&env.source, &format!("f{i:02}"), 100 + i, 1, b"x"))
        .collect();
    let vfs = env.mount(&tree_listing(1, entries));
    for i in (0..30).rev() {
        vfs.rename(
            ROOT_INO,
            &format!("f{i:02}"),
            ROOT_INO,
            &format!("f{:02}", i + 1),
            false,
        )
        .unwrap();
    }
    let want: Vec<String> = (0..30)
        .rev()
        .map(|i| format!("rename f{i:02} -> f{:02}", i + 1))
        .collect();
    assert_eq!(describe(&plan(&vfs)), want);
}
