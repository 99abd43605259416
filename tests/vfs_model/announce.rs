//! Remote changes announced to file watchers: which announcements the core
//! queues for each kind of change, and how it answers the announcer's
//! requests (the old view of the armed names, nothing journaled).

use std::sync::mpsc;

use contextfs::vfs::{AnnouncedPaths, Announcement, KernelUpdate};

use crate::harness::*;

fn announcements(rx: &mpsc::Receiver<KernelUpdate>) -> Vec<Announcement> {
    rx.try_iter()
        .filter_map(|u| match u {
            KernelUpdate::Announce(a) => Some(a),
            KernelUpdate::Invalidate(_) => None,
        })
        .collect()
}

#[test]
fn each_kind_of_remote_change_is_announced_after_its_invalidations() {
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![
            dir_entry("docs", 1),
            file_entry(&env.source, "docs/a.md", 2, 1, b"aaa"),
            file_entry(&env.source, "gone.md", 3, 1, b"bye"),
            file_entry(&env.source, "run.sh", 4, 1, b"#!"),
        ],
    );
    let vfs = env.mount(&listing);
    let (tx, rx) = mpsc::channel();
    vfs.set_invalidation_sink(tx);
    let docs = ino_of(&vfs, "docs").unwrap();
    let a = ino_of(&vfs, "docs/a.md").unwrap();

    let mut chmod = event(5, 4, 2, "run.sh", BlobHash::of(b"#!"), 2, false);
    chmod.mode = 0o755;
    vfs.apply_events(&[
        event(2, 2, 2, "docs/a.md", env.source.put(b"new"), 3, false),
        event(3, 5, 1, "docs/b.md", env.source.put(b"b"), 1, false),
        event(4, 3, 2, "gone.md", BlobHash::of(b""), 0, true),
        chmod,
        rename_event(event(6, 2, 3, "a.md", env.source.put(b"new"), 3, false), "docs/a.md"),
    ]);
    let updates: Vec<KernelUpdate> = rx.try_iter().collect();
    let first_announcement = updates
        .iter()
        .position(|u| matches!(u, KernelUpdate::Announce(_)))
        .unwrap();
    assert!(
        updates[first_announcement..]
            .iter()
            .all(|u| matches!(u, KernelUpdate::Announce(_))),
        "every invalidation goes first: {updates:#?}"
    );
    let news: Vec<Announcement> = updates
        .into_iter()
        .filter_map(|u| match u {
            KernelUpdate::Announce(a) => Some(a),
            KernelUpdate::Invalidate(_) => None,
        })
        .collect();
    assert!(
        matches!(&news[0], Announcement::Modified { ino, .. } if *ino == a),
        "{news:#?}"
    );
    assert!(
        matches!(&news[1], Announcement::Created { parent, name, kind: NodeKind::File, .. } if *parent == docs && name == "b.md"),
        "{news:#?}"
    );
    assert!(
        matches!(&news[2], Announcement::Deleted { parent, name, .. } if *parent == ROOT_INO && name == "gone.md"),
        "{news:#?}"
    );
    assert!(
        matches!(
            &news[3],
            Announcement::Attrib {
                mode: 0o755,
                mode_changed: true,
                ..
            }
        ),
        "{news:#?}"
    );
    assert!(
        matches!(&news[4], Announcement::Renamed { parent, name, to_parent, to_name, ghost }
            if *parent == docs && name == "a.md" && *to_parent == ROOT_INO && to_name == "a.md" && ghost.ino == a),
        "{news:#?}"
    );
    assert_eq!(news.len(), 5, "{news:#?}");

    // Paths are those of the tree when the announcement runs.
    assert_eq!(vfs.announced_paths(&news[0]), Some(AnnouncedPaths::One("a.md".into())));
    assert_eq!(
        vfs.announced_paths(&news[1]),
        Some(AnnouncedPaths::One("docs/b.md".into()))
    );
    assert_eq!(
        vfs.announced_paths(&news[4]),
        Some(AnnouncedPaths::Two {
            from: "docs/a.md".into(),
            to: "a.md".into()
        })
    );
    // Nothing of it is a local change.
    assert!(plan(&vfs).is_empty());
}

#[test]
fn the_armed_announcement_shows_the_announcer_the_old_names_and_journals_nothing() {
    let env = Env::new();
    let listing = tree_listing(
        1,
        vec![dir_entry("docs", 1), file_entry(&env.source, "docs/a.md", 2, 1, b"aaa")],
    );
    let vfs = env.mount(&listing);
    let (tx, rx) = mpsc::channel();
    vfs.set_invalidation_sink(tx);
    let docs = ino_of(&vfs, "docs").unwrap();
    let a = ino_of(&vfs, "docs/a.md").unwrap();

    // A remote create: the announcer sees no entry until its create.
    vfs.apply_events(&[event(2, 5, 1, "docs/new.md", env.source.put(b"n"), 1, false)]);
    let created = announcements(&rx).remove(0);
    vfs.arm(created.clone());
    assert_eq!(
        vfs.announcer_lookup(docs, "new.md").unwrap().unwrap_err().errno,
        libc::ENOENT
    );
    assert!(
        vfs.announcer_lookup(docs, "a.md").is_none(),
        "other names are looked up as usual"
    );
    assert_eq!(
        vfs.lookup(docs, "new.md").unwrap().size,
        1,
        "others see the new file at once"
    );
    let shown = vfs.announcer_create(docs, "new.md").unwrap();
    assert_eq!(shown.ino, ino_of(&vfs, "docs/new.md").unwrap());
    assert!(vfs.announcer_lookup(docs, "new.md").is_none(), "announced once");
    assert_eq!(vfs.announcer_create(docs, "new.md").unwrap_err().errno, libc::EPERM);
    vfs.disarm();

    // A remote rename: the old name is a ghost, the new one hidden.
    vfs.apply_events(&[rename_event(
        event(3, 2, 2, "docs/b.md", BlobHash::of(b"aaa"), 3, false),
        "docs/a.md",
    )]);
    let renamed = announcements(&rx).remove(0);
    vfs.arm(renamed);
    assert_eq!(vfs.announcer_lookup(docs, "a.md").unwrap().unwrap().ino, a);
    assert_eq!(
        vfs.announcer_lookup(docs, "b.md").unwrap().unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(
        vfs.lookup(docs, "a.md").unwrap_err().errno,
        libc::ENOENT,
        "for everyone else it moved"
    );
    assert_eq!(
        vfs.announcer_rename(docs, "a.md", ROOT_INO, "b.md").unwrap_err().errno,
        libc::EPERM,
        "only the armed rename"
    );
    vfs.announcer_rename(docs, "a.md", docs, "b.md").unwrap();
    vfs.disarm();

    // A remote delete: the ghost can be removed, once.
    vfs.apply_events(&[event(4, 2, 3, "docs/b.md", BlobHash::of(b""), 0, true)]);
    let deleted = announcements(&rx).remove(0);
    vfs.arm(deleted);
    assert_eq!(vfs.announcer_lookup(docs, "b.md").unwrap().unwrap().ino, a);
    vfs.announcer_remove(docs, "b.md").unwrap();
    assert_eq!(vfs.announcer_remove(docs, "b.md").unwrap_err().errno, libc::EPERM);
    vfs.disarm();

    // Unarmed, the announcer can change nothing.
    assert_eq!(vfs.announcer_remove(docs, "new.md").unwrap_err().errno, libc::EPERM);
    assert_eq!(root_names(&vfs), ["docs"]);
    assert!(plan(&vfs).is_empty(), "no announcer request was journaled");
}

#[test]
fn announcements_overtaken_by_later_changes_are_dropped() {
    let env = Env::new();
    let listing = tree_listing(1, vec![file_entry(&env.source, "a.md", 2, 1, b"aaa")]);
    let vfs = env.mount(&listing);
    let (tx, rx) = mpsc::channel();
    vfs.set_invalidation_sink(tx);
    // Created, then deleted before the announcer got to it.
    vfs.apply_events(&[
        event(2, 3, 1, "b.md", env.source.put(b"b"), 1, false),
        event(3, 3, 2, "b.md", BlobHash::of(b""), 0, true),
    ]);
    let news = announcements(&rx);
    assert_eq!(news.len(), 2, "{news:#?}");
    assert_eq!(vfs.announced_paths(&news[0]), None, "the create is old news");
    assert_eq!(vfs.announced_paths(&news[1]), Some(AnnouncedPaths::One("b.md".into())));
    // A local file took the name since: the deletion is not shown either.
    let (_, fh) = vfs.create(ROOT_INO, "b.md", 0o644, RW, true).unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(vfs.announced_paths(&news[1]), None);
}
