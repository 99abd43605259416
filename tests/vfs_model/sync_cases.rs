//! Shrunk failures of the sync property (`sync.rs`), kept as plain tests:
//! each pins one race between local changes, late answers and another
//! writer's news, and fails without the fix it came with. (A regression
//! file's seed can be lost to a bad edit without anyone noticing; these
//! cannot.)

use crate::sync::{run_sync, SyncOp};
use crate::sync_model::LocalOp;

/// A mode change pending while a rename's answer brought another writer's
/// edit: once the change is committed, the file shows what the server has.
#[test]
fn a_remote_rename_after_a_chmod_commit_keeps_the_committed_bytes() {
    use LocalOp::*;
    use SyncOp::*;
    let ops = [
        Local(Rename {
            from: "b/a".into(),
            to: "c".into(),
            no_replace: false,
        }),
        Local(Chmod {
            path: "c".into(),
            mode: 0o755,
        }),
        RemoteWrite { pick: 1, data: vec![0] },
        Drain,
        Answer(0),
        Drain,
        RemoteRename {
            pick: 1,
            to: "d".into(),
        },
        Answer(0),
        Feed(2),
        Feed(2),
    ];
    run_sync(&ops).unwrap();
}

/// A new file is renamed over another (taking that file's node) and removed
/// while its create is in flight: the node the create made is deleted too,
/// not left on the server (nor shown again when the feed reports it).
#[test]
fn a_create_renamed_over_a_file_and_removed_in_flight_deletes_both_nodes() {
    use LocalOp::*;
    use SyncOp::*;
    let ops = [
        Local(Write {
            path: "c".into(),
            data: vec![],
        }),
        Local(Write {
            path: "a".into(),
            data: vec![],
        }),
        Drain,
        Local(Rename {
            from: "c".into(),
            to: "b/a".into(),
            no_replace: false,
        }),
        Local(Unlink { path: "b/a".into() }),
        Answer(1),
        Feed(2),
        Drain,
        Answer(0),
        Answer(0),
    ];
    assert_eq!(run_sync(&ops).unwrap(), ["a", "b"]);
}

/// Another writer moves a new file before its create is answered, and the
/// file changes here meanwhile: the node stays where the feed put it (and
/// takes that writer's later edit), and the change here lands as a new file.
#[test]
fn a_new_file_moved_away_before_its_answer_and_changed_here_becomes_a_new_file() {
    use LocalOp::*;
    use SyncOp::*;
    let ops = [
        Local(Write {
            path: "c".into(),
            data: vec![],
        }),
        Drain,
        RemoteRename {
            pick: 2,
            to: "b/d".into(),
        },
        Feed(2),
        Local(Write {
            path: "c".into(),
            data: vec![7],
        }),
        Answer(0),
        RemoteWrite { pick: 2, data: vec![0] },
        Feed(1),
        Drain,
        Answer(0),
        Feed(1),
    ];
    assert_eq!(run_sync(&ops).unwrap(), ["a", "b", "b/a", "b/d", "c"]);
}

/// A new file is renamed over a server file while its create is in flight
/// (it takes that file's node), and another writer had moved that file
/// away: the node the create made is deleted, the new file lands at its
/// path, and the moved file's next news shows it where the other writer
/// put it (not in the new file, which claimed its node for a while).
#[test]
fn a_create_renamed_over_a_file_moved_away_meanwhile_keeps_both_files() {
    use LocalOp::*;
    use SyncOp::*;
    let ops = [
        Local(Unlink { path: "a".into() }),
        RemoteRename {
            pick: 1,
            to: "d".into(),
        },
        Drain,
        Answer(0),
        Local(Write {
            path: "a".into(),
            data: vec![9],
        }),
        Drain,
        Local(Rename {
            from: "a".into(),
            to: "b/a".into(),
            no_replace: false,
        }),
        Answer(0),
        Feed(1),
        Drain,
        Answer(0),
        Answer(0),
        Drain,
        Answer(0),
        Feed(10),
        // The other writer edits the file it moved: that is news of d, not
        // of the new file (which claimed d's node for a while).
        RemoteWrite { pick: 0, data: vec![5] },
        Feed(10),
    ];
    assert_eq!(run_sync(&ops).unwrap(), ["b", "b/a", "d"]);
}

/// Another writer edits a file between our commit of it and that commit's
/// answer: the feed's news of it comes while our change is pending (held
/// back: local changes win), and shows once the answer settles it, instead
/// of our older version staying until the file's next change.
#[test]
fn an_edit_that_lands_between_our_commit_and_its_answer_shows_after_the_answer() {
    use LocalOp::*;
    use SyncOp::*;
    let ops = [
        Local(Write {
            path: "a".into(),
            data: vec![1],
        }),
        Drain,
        RemoteWrite { pick: 0, data: vec![9] },
        Feed(2),
        Answer(0),
    ];
    assert_eq!(run_sync(&ops).unwrap(), ["a", "b", "b/a"]);
}
