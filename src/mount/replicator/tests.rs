//! The sync worker against a scripted server ([`FakeRemote`]): outages,
//! lost answers, refusals and late answers, on a real Vfs (temp dirs, real
//! journal and cache), driven without a kernel.

use std::sync::Arc;

use reqwest::StatusCode;

use super::fake::{Call, FakeRemote, Fault, Gate, Op};
use super::Replicator;
use crate::api::{ErrorCode, NodeKind, TreeListing};
use crate::cache::BlobCache;
use crate::mount::remote::Remote;
use crate::vfs::journal::INLINE_LIMIT;
use crate::vfs::{Ino, OpenMode, Vfs, VfsConfig, ROOT_INO};

const RW: OpenMode = OpenMode {
    read: true,
    write: true,
    truncate: false,
    append: false,
};
const RO: OpenMode = OpenMode {
    read: true,
    write: false,
    truncate: false,
    append: false,
};

struct Mount {
    _tmp: tempfile::TempDir,
    vfs: Arc<Vfs>,
    server: Arc<FakeRemote>,
    worker: Replicator,
}

/// An empty project mounted over a fresh fake server.
fn mount() -> Mount {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(BlobCache::open(&tmp.path().join("cache"), 1 << 30).unwrap());
    let server = Arc::new(FakeRemote::default());
    let config = VfsConfig {
        state_dir: tmp.path().join("state"),
        read_only: false,
        agent_id: None,
        durability: crate::vfs::Durability::DEFAULT,
    };
    let vfs = Arc::new(Vfs::new(config, cache, server.clone()).unwrap());
    vfs.load(
        &TreeListing {
            cursor: 0,
            entries: vec![],
        },
        None,
    )
    .unwrap();
    let worker = Replicator::new(vfs.clone(), server.clone(), "p".into(), None);
    Mount {
        _tmp: tmp,
        vfs,
        server,
        worker,
    }
}

fn write_file(vfs: &Vfs, parent: Ino, name: &str, bytes: &[u8]) -> Ino {
    let (attr, fh) = vfs.create(parent, name, 0o644, RW, false).unwrap();
    vfs.write(fh, 0, bytes).unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    attr.ino
}

fn ino_of(vfs: &Vfs, path: &str) -> Result<Ino, i32> {
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        ino = vfs.lookup(ino, part).map_err(|e| e.errno)?.ino;
    }
    Ok(ino)
}

fn read_path(vfs: &Vfs, path: &str) -> Vec<u8> {
    let fh = vfs.open(ino_of(vfs, path).unwrap(), RO).unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = vfs.read(fh, out.len() as u64, 64 * 1024).unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    vfs.release(fh).unwrap();
    out
}

fn queued_paths(vfs: &Vfs) -> Vec<String> {
    vfs.queued().into_iter().map(|(p, _)| p).collect()
}

/// The local files of [`outage_tree`], path -> bytes.
fn outage_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("a.txt", b"alpha\n".to_vec()),
        ("d/b.txt", b"beta\n".to_vec()),
        // Over the inline limit: uploaded from its staged file first.
        ("big.bin", vec![7u8; INLINE_LIMIT as usize + 10]),
    ]
}

fn outage_tree(vfs: &Vfs) {
    let d = vfs.mkdir(ROOT_INO, "d", 0o755).unwrap().ino;
    for (path, bytes) in outage_files() {
        match path.split_once('/') {
            Some((_, name)) => write_file(vfs, d, name, bytes.as_slice()),
            None => write_file(vfs, ROOT_INO, path, bytes.as_slice()),
        };
    }
}

/// (1) An outage of the first `n` calls, for every `n` that ends in another
/// phase of a round: after every round each change is either on the server
/// with its bytes or still queued; once calls succeed everything lands, each
/// file in one version, and nothing stays queued.
#[tokio::test]
async fn an_unreachable_server_loses_nothing_and_everything_lands_once_it_answers() {
    for n in 0..8 {
        let m = mount();
        outage_tree(&m.vfs);
        assert_eq!(m.vfs.queued().len(), 4, "n={n}: d and three files are queued");
        m.server.fail_first(n);
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds <= n + 2, "n={n}: no progress after {rounds} rounds");
            let round = m.worker.drain(true).await;
            let tree = m.server.tree();
            let queued = queued_paths(&m.vfs);
            for (path, bytes) in outage_files() {
                match tree.get(path) {
                    Some((_, _, _, on_server)) => assert_eq!(on_server, &bytes, "n={n}: {path} landed whole"),
                    None => assert!(
                        queued.iter().any(|q| q == path),
                        "n={n}: {path} neither sent nor queued"
                    ),
                }
            }
            assert!(
                tree.contains_key("d") || queued.iter().any(|q| q == "d"),
                "n={n}: d lost"
            );
            if round.transient.is_none() {
                assert_eq!(round.left, 0, "n={n}");
                break;
            }
            let status = m.worker.status();
            assert!(!status.online, "n={n}: a failed round marks the mount offline");
            assert!(status.last_error.unwrap_or_default().contains("cannot reach"), "n={n}");
        }
        assert!(m.vfs.queued().is_empty(), "n={n}: {:?}", queued_paths(&m.vfs));
        let tree = m.server.tree();
        assert_eq!(tree["d"].2, NodeKind::Dir);
        for (path, bytes) in outage_files() {
            assert_eq!(tree[path].1, 1, "n={n}: {path} was written once");
            assert_eq!(tree[path].3, bytes, "n={n}: {path}");
            assert_eq!(read_path(&m.vfs, path), bytes, "n={n}: the mount reads {path}");
        }
        let status = m.worker.status();
        assert!(status.online && status.last_error.is_none(), "n={n}: {status:?}");
        let big = crate::model::BlobHash::of(&outage_files()[2].1);
        let uploads = m
            .server
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::PutBlob(_)))
            .count();
        assert!(uploads >= 1, "n={n}: big.bin was uploaded before its commit");
        assert!(
            m.server
                .calls()
                .iter()
                .all(|c| !matches!(c, Call::PutBlob(h) if *h != big)),
            "n={n}: only big.bin goes as an upload"
        );
        let failed = m.server.calls().len() - (1 + 3 + 1);
        assert_eq!(
            failed, n,
            "n={n}: mkdir, 3 commits and an upload succeeded; the rest failed"
        );
    }
}

/// (2) The server applied a commit but its answer was lost: the retry
/// carries the same idempotency key and the server applies it once; the next
/// change to the file is a new request with a new key.
#[tokio::test]
async fn a_lost_answer_is_retried_with_the_same_key_and_applied_once() {
    let m = mount();
    let ino = write_file(&m.vfs, ROOT_INO, "f.txt", b"one\n");
    m.server.on(Op::Commit, Some("f.txt"), Fault::LoseAnswer, Some(1));

    let round = m.worker.drain(true).await;
    assert!(round.transient.is_some(), "a lost answer is worth a retry");
    assert_eq!(m.server.tree()["f.txt"].1, 1, "the server has it");
    assert_eq!(queued_paths(&m.vfs), ["f.txt"], "the mount does not know that yet");

    let round = m.worker.drain(true).await;
    assert!(round.transient.is_none() && round.left == 0, "{round:?}");
    let commits = m.server.commits_to("f.txt");
    assert_eq!(commits.len(), 2);
    assert!(commits[0].idempotency_key.is_some());
    assert_eq!(commits[0].idempotency_key, commits[1].idempotency_key);
    let tree = m.server.tree();
    assert_eq!(tree["f.txt"].1, 1, "applied once, not twice");
    assert_eq!(
        m.server.changes("p", 0, Default::default()).await.unwrap().events.len(),
        1,
        "one version in the feed"
    );

    // A later write to the same file is another commit, with another key.
    let fh = m.vfs.open(ino, RW).unwrap();
    m.vfs.write(fh, 0, b"two\n").unwrap();
    m.vfs.release(fh).unwrap();
    let round = m.worker.drain(true).await;
    assert!(round.transient.is_none() && round.left == 0, "{round:?}");
    let commits = m.server.commits_to("f.txt");
    assert_eq!(commits.len(), 3);
    assert_ne!(commits[2].idempotency_key, commits[1].idempotency_key);
    assert_eq!(commits[2].node, Some(tree["f.txt"].0), "a new version of the same node");
    assert_eq!(m.server.tree()["f.txt"].1, 2);
    assert_eq!(m.server.tree()["f.txt"].3, b"two\n");
}

/// (3) The server refuses one file (a 4xx): it stays queued with the reason,
/// is not resent at once, and the other files land.
#[tokio::test]
async fn a_refused_change_stays_queued_with_its_reason_while_the_rest_land() {
    let m = mount();
    write_file(&m.vfs, ROOT_INO, "good1.txt", b"1\n");
    write_file(&m.vfs, ROOT_INO, "bad.txt", b"no\n");
    write_file(&m.vfs, ROOT_INO, "good2.txt", b"2\n");
    let refusal = Fault::Refuse(StatusCode::BAD_REQUEST, ErrorCode::InvalidField);
    m.server.on(Op::Commit, Some("bad.txt"), refusal, None);

    let round = m.worker.drain(true).await;
    assert!(round.transient.is_none(), "a refusal is not an outage: {round:?}");
    assert_eq!(round.left, 1);
    let queued = m.vfs.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0, "bad.txt");
    let reason = queued[0].1.last_error.clone().expect("the reason is kept");
    assert!(
        reason.contains("refused by the test") && reason.contains("400"),
        "{reason}"
    );
    let tree = m.server.tree();
    assert_eq!(tree.keys().collect::<Vec<_>>(), ["good1.txt", "good2.txt"]);
    let status = m.worker.status();
    assert!(status.online, "the server answered");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused by the test")),
        "`contextfs status` names the refusal although other changes landed: {status:?}"
    );

    // Not hammered: the next round leaves it alone for a while.
    let round = m.worker.drain(true).await;
    assert_eq!(round.left, 1);
    assert_eq!(m.server.commits_to("bad.txt").len(), 1);
    assert_eq!(queued_paths(&m.vfs), ["bad.txt"]);
}

/// A refused mkdir holds back what was written inside the directory: sent
/// in the same round, a file would make the server create the directory it
/// just refused. Both stay queued; the others land.
#[tokio::test]
async fn what_lies_below_a_refused_mkdir_waits_for_it() {
    let m = mount();
    let dir = m.vfs.mkdir(ROOT_INO, "d", 0o755).unwrap().ino;
    write_file(&m.vfs, dir, "inside.txt", b"in d\n");
    write_file(&m.vfs, ROOT_INO, "outside.txt", b"elsewhere\n");
    let refusal = Fault::Refuse(StatusCode::BAD_REQUEST, ErrorCode::InvalidField);
    m.server.on(Op::Mkdir, Some("d"), refusal, Some(1));

    let round = m.worker.drain(true).await;
    assert!(round.transient.is_none(), "{round:?}");
    assert!(
        m.server.commits_to("d/inside.txt").is_empty(),
        "a file below the refused directory was sent"
    );
    assert_eq!(queued_paths(&m.vfs), ["d", "d/inside.txt"]);
    assert_eq!(m.server.tree().keys().collect::<Vec<_>>(), ["outside.txt"]);

    // Once the server takes the directory (the retry pause is over), its
    // contents follow.
    m.worker.refused.lock().unwrap().clear();
    let round = m.worker.drain(true).await;
    assert!(round.transient.is_none(), "{round:?}");
    assert!(queued_paths(&m.vfs).is_empty(), "{:?}", queued_paths(&m.vfs));
    assert_eq!(
        m.server.tree().keys().collect::<Vec<_>>(),
        ["d", "d/inside.txt", "outside.txt"]
    );
}

/// (4) A late answer does not bring back a file deleted meanwhile: the
/// create reaches the server, its answer waits, the file is unlinked and the
/// feed's echo arrives first; then the answer lands. The mount shows no file
/// and deletes the node the answer named; later news of it stays stale.
#[tokio::test]
async fn a_late_answer_does_not_resurrect_a_file_deleted_meanwhile() {
    let m = mount();
    write_file(&m.vfs, ROOT_INO, "f", b"short-lived\n");
    let gate = Arc::new(Gate::default());
    m.server.on(Op::Commit, Some("f"), Fault::Hold(gate.clone()), Some(1));

    let script = async {
        gate.reached().await;
        assert!(m.server.tree().contains_key("f"), "applied; the answer is on its way");
        m.vfs.unlink(ROOT_INO, "f").unwrap();
        // The feed's echo of the create overtakes the answer.
        let page = m.server.changes("p", 0, Default::default()).await.unwrap();
        assert_eq!(page.events.len(), 1);
        m.vfs.apply_events(&page.events);
        assert_eq!(
            ino_of(&m.vfs, "f"),
            Err(libc::ENOENT),
            "the echo does not bring it back"
        );
        gate.open();
    };
    let (round, ()) = tokio::join!(m.worker.drain(true), script);

    assert!(round.transient.is_none() && round.left == 0, "{round:?}");
    assert_eq!(ino_of(&m.vfs, "f"), Err(libc::ENOENT));
    let node = m.server.commits_to("f").len();
    assert_eq!(node, 1);
    let deletes: Vec<_> = m
        .server
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Delete(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(deletes.len(), 1, "the node the answer named is deleted");
    assert_eq!(deletes[0].path.as_str(), "f");
    assert_eq!(deletes[0].node, Some(1), "by node, the one the server created");
    assert!(m.server.tree().is_empty());
    assert!(m.vfs.queued().is_empty());

    // The whole feed, create and tombstone, replayed late: still gone.
    let page = m.server.changes("p", 0, Default::default()).await.unwrap();
    assert_eq!(page.events.len(), 2);
    m.vfs.apply_events(&page.events[..1]);
    assert_eq!(ino_of(&m.vfs, "f"), Err(libc::ENOENT), "the create's echo is stale");
    m.vfs.apply_events(&page.events);
    assert_eq!(ino_of(&m.vfs, "f"), Err(libc::ENOENT));
    assert!(m.vfs.queued().is_empty());
}

/// The answer to a new file's first commit is lost (the connection drops)
/// after the server made the node, and the file is deleted meanwhile, so no
/// journal record would ever send anything for it again: the commit is
/// sent again with its idempotency key, and the node its answer names is
/// deleted. The server does not keep a file the user deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_whose_first_commit_lost_its_answer_is_not_left_on_the_server() {
    let m = mount();
    write_file(&m.vfs, ROOT_INO, "f", b"short-lived\n");
    let gate = Arc::new(Gate::default());
    m.server
        .on(Op::Commit, Some("f"), Fault::HoldThenLose(gate.clone()), Some(1));
    let script = async {
        gate.reached().await;
        m.vfs.unlink(ROOT_INO, "f").unwrap();
        gate.open();
    };
    let (round, ()) = tokio::join!(m.worker.drain(true), script);
    assert!(round.transient.is_some(), "the answer was lost: {round:?}");
    assert!(m.server.tree().contains_key("f"), "the server made the node");
    assert!(m.vfs.queued().is_empty(), "no record asks for f any more");
    for _ in 0..5 {
        m.worker.drain(true).await;
        if m.server.tree().is_empty() && m.vfs.queued().is_empty() {
            break;
        }
    }
    assert!(
        m.server.tree().is_empty(),
        "f stays on the server: {:?}",
        m.server.tree().keys().collect::<Vec<_>>()
    );
    assert_eq!(m.server.commits_to("f").len(), 2, "sent twice");
    let keys: Vec<_> = m
        .server
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Commit(r) => r.idempotency_key,
            _ => None,
        })
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "the same idempotency key: one node at most");
    assert_eq!(ino_of(&m.vfs, "f"), Err(libc::ENOENT));
}

/// The largest file comes from the server (`GET /health`) before the first
/// round, 1 TiB while it does not say, and is asked again only after a
/// round that could not reach the server (it may have restarted with
/// another `--max-file-bytes`).
#[tokio::test]
async fn the_largest_file_is_the_servers_and_is_asked_again_after_an_outage() {
    let m = mount();
    assert_eq!(m.vfs.max_file_bytes(), crate::vfs::DEFAULT_MAX_FILE_BYTES);
    let limits = |max_file_bytes| crate::api::Limits {
        max_file_bytes,
        max_blob_bytes: 1 << 30,
        chunked_min: 16 << 20,
    };
    m.server.set_limits(Some(limits(5000)));
    m.worker.drain(true).await;
    assert_eq!(m.vfs.max_file_bytes(), 5000);
    let (_, fh) = m.vfs.create(ROOT_INO, "f", 0o644, RW, false).unwrap();
    assert_eq!(
        m.vfs.write(fh, 4990, &[1; 20]).unwrap(),
        10,
        "shortened to end at the limit"
    );
    assert_eq!(m.vfs.write(fh, 5000, &[1]).map_err(|e| e.errno), Err(libc::EFBIG));
    m.vfs.release(fh).unwrap();

    // Reachable rounds do not ask again.
    m.server.set_limits(Some(limits(9000)));
    m.worker.drain(true).await;
    assert_eq!(m.vfs.max_file_bytes(), 5000);
    // A round that cannot reach the server marks them stale: the next asks.
    write_file(&m.vfs, ROOT_INO, "g", b"g\n");
    m.server.fail_first(1);
    assert!(m.worker.drain(true).await.transient.is_some());
    m.worker.drain(true).await;
    assert_eq!(m.vfs.max_file_bytes(), 9000);
    assert_eq!(m.worker.limits(), Some(limits(9000)));
    // A server that does not say: the default again.
    m.server.set_limits(None);
    m.server.fail_first(1);
    write_file(&m.vfs, ROOT_INO, "h", b"h\n");
    assert!(m.worker.drain(true).await.transient.is_some());
    m.worker.drain(true).await;
    assert_eq!(m.vfs.max_file_bytes(), crate::vfs::DEFAULT_MAX_FILE_BYTES);
    assert!(m.vfs.queued().is_empty());
}

/// `rm -rf` right after a burst of creates: files removed after the round
/// planned their commits (while earlier batches were on the wire) are not
/// sent at all. The server never creates them only for a delete to follow,
/// and the rest land as planned.
#[tokio::test]
async fn files_removed_after_the_plan_are_not_sent() {
    let m = mount();
    let names: Vec<String> = (0..10).map(|n| format!("f{n}")).collect();
    for name in &names {
        write_file(&m.vfs, ROOT_INO, name, format!("{name}\n").as_bytes());
    }
    let plan = m.vfs.drain_plan(0, &|_| false);
    assert_eq!(plan.len(), names.len());
    let (removed, kept) = names.split_at(4);
    for name in removed {
        m.vfs.unlink(ROOT_INO, name).unwrap();
    }
    let outcomes = m.worker.send_batch(plan).await;
    assert_eq!(outcomes.len(), names.len(), "every item has its outcome");
    for name in removed {
        assert!(
            m.server.commits_to(name).is_empty(),
            "{name} was removed before its batch went, yet it was sent"
        );
    }
    for name in kept {
        assert_eq!(m.server.commits_to(name).len(), 1, "{name} is committed once");
    }
    let round = m.worker.drain(true).await;
    assert!(round.transient.is_none() && round.left == 0, "{round:?}");
    let on_server: Vec<_> = m.server.tree().keys().cloned().collect();
    assert_eq!(on_server, kept.to_vec());
    let deletes = m
        .server
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Delete(_)))
        .count();
    assert_eq!(deletes, 0, "nothing was created only to be deleted");
}
