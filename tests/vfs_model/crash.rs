//! A crash that cuts the journal: local operations, then the mount dies and
//! `STATE/journal/journal.log` is cut at an arbitrary byte offset (a power
//! loss mid-write). The remount must replay every record whose frame is
//! complete and invent nothing: its queued records are exactly the live
//! records of the complete frames, and when the cut falls between two
//! operations the tree is the model's tree after the first of them.

use crate::harness::*;
use crate::sync_model::*;

/// The server tree the crash cases start from (so saves can inherit nodes).
pub fn crash_listing(env: &Env) -> (TreeListing, SyncModel) {
    let mut model = SyncModel::default();
    let mut entries = vec![dir_entry("b", 2)];
    model.add("b", bound(Kind::Dir, b"", 0o755, 2, "b"));
    for (path, node, bytes) in [("a", 1, &b"server a"[..]), ("b/a", 3, b"nested")] {
        entries.push(file_entry(&env.source, path, node, 1, bytes));
        model.add(path, bound(Kind::File, bytes, 0o644, node, path));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    (tree_listing(1, entries), model)
}

/// A clean entry the server lists as `node`, version 1.
pub fn bound(kind: Kind, bytes: &[u8], mode: u32, node: i64, path: &str) -> Entry {
    Entry {
        node: Some(node),
        seen: 1,
        server_path: path.into(),
        changed: 0,
        dirty: false,
        content: false,
        ..Entry::local(kind, bytes.to_vec(), mode)
    }
}

/// The journal's frames (`len u32 LE | blake3(json)[..8] | json`) that are
/// complete within `bytes`, as (uid, Some(rev)) for a put, (uid, None) for
/// a removal.
fn complete_frames(bytes: &[u8]) -> Vec<(u64, Option<u64>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 12 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let Some(json) = bytes.get(pos + 12..pos + 12 + len) else {
            break;
        };
        assert_eq!(
            &blake3::hash(json).as_bytes()[..8],
            &bytes[pos + 4..pos + 12],
            "an intact frame"
        );
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        let frame = match (v.get("put"), v.get("remove")) {
            (Some(r), _) => (r["uid"].as_u64().unwrap(), Some(r["rev"].as_u64().unwrap())),
            (_, Some(uid)) => (uid.as_u64().unwrap(), None),
            _ => panic!("unknown journal frame {v}"),
        };
        out.push(frame);
        pos += 12 + len;
    }
    out
}

/// A state of the run between two operations: the log's length and frame
/// count then, and the tree the model shows.
struct Boundary {
    len: usize,
    frames: usize,
    view: View,
    /// The pending content files then (name -> bytes).
    pending: BTreeMap<String, Vec<u8>>,
}

fn pending_files(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn run_crash(ops: &[LocalOp], cut_at: f64, at_boundary: Option<usize>) -> Result<(), TestCaseError> {
    let env = Env::new();
    let (listing, mut model) = crash_listing(&env);
    let vfs = env.mount(&listing);
    let log = env.state_dir.join("journal/journal.log");
    let log_state = || {
        let bytes = std::fs::read(&log).unwrap_or_default();
        (bytes.len(), complete_frames(&bytes).len())
    };
    let pending_dir = env.state_dir.join("pending");
    let mut boundaries = vec![Boundary {
        len: 0,
        frames: 0,
        view: model.view(),
        pending: pending_files(&pending_dir),
    }];
    for (step, op) in ops.iter().enumerate() {
        local_op(&vfs, &mut model, op)?;
        check_view(&vfs, &model.view(), &format!("step {step}: {op:?}"))?;
        let (len, frames) = log_state();
        if len < boundaries.last().unwrap().len {
            // Compacted (the journal emptied): earlier offsets mean nothing now.
            boundaries.clear();
        }
        boundaries.push(Boundary {
            len,
            frames,
            view: model.view(),
            pending: pending_files(&pending_dir),
        });
    }
    drop(vfs); // the crash: nothing more is written

    let bytes = std::fs::read(&log).unwrap_or_default();
    let cut = match at_boundary {
        Some(i) => boundaries[i % boundaries.len()].len,
        None => (bytes.len() as f64 * cut_at) as usize,
    };
    let kept = &bytes[..cut.min(bytes.len())];
    std::fs::write(&log, kept).unwrap();
    // The pending files as a power loss at that moment leaves them: the
    // journal deletes a pending file only once the frame that retired it
    // is durable, so one deleted by a later operation was still there. The
    // operation in progress may have made new ones already.
    if let Some(at) = boundaries.iter().rposition(|b| b.len <= cut) {
        for b in &boundaries[at..boundaries.len().min(at + 2)] {
            for (name, content) in &b.pending {
                let path = pending_dir.join(name);
                if !path.exists() {
                    std::fs::write(path, content).unwrap();
                }
            }
        }
    }
    let frames = complete_frames(kept);
    let mut live: BTreeMap<u64, u64> = BTreeMap::new();
    for (uid, rev) in &frames {
        match rev {
            Some(rev) => live.insert(*uid, *rev),
            None => live.remove(uid),
        };
    }

    let vfs = env.mount(&listing);
    let replayed: BTreeMap<u64, u64> = vfs.queued().iter().map(|(_, r)| (r.uid, r.rev)).collect();
    prop_assert_eq!(
        &replayed,
        &live,
        "cut at byte {} of {}: replayed records (uid -> rev) differ from the complete frames",
        cut,
        bytes.len()
    );
    let failed: Vec<_> = vfs
        .queued()
        .into_iter()
        .filter(|(_, r)| r.last_error.is_some())
        .collect();
    prop_assert!(failed.is_empty(), "records replay could not apply: {:?}", failed);
    if let Some(b) = boundaries.iter().find(|b| b.frames == frames.len()) {
        check_view(
            &vfs,
            &b.view,
            &format!("after a crash cutting the journal at byte {cut}"),
        )?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn a_cut_journal_replays_every_complete_frame_and_nothing_else(
        ops in prop::collection::vec(any_local_op(), 1..24),
        cut_at in 0.0f64..=1.0,
        at_boundary in prop::option::weighted(0.4, 0usize..64),
    ) {
        run_crash(&ops, cut_at, at_boundary)?;
    }
}
