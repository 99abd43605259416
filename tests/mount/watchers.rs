//! File watchers (inotify) on a mount see what other agents change: the
//! events a local change raises, for changes made through another mount.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::*;

/// One inotify event: the watched path (as labelled), the name inside it.
#[derive(Debug, Clone)]
struct Seen {
    watch: String,
    name: String,
    mask: EventMask,
    cookie: u32,
}

struct Watcher {
    inotify: Inotify,
    labels: HashMap<WatchDescriptor, String>,
    seen: Vec<Seen>,
}

impl Watcher {
    fn new() -> Self {
        Self {
            inotify: Inotify::init().expect("inotify_init"),
            labels: HashMap::new(),
            seen: Vec::new(),
        }
    }

    fn watch(&mut self, path: &Path, label: &str) {
        let wd = self
            .inotify
            .watches()
            .add(path, WatchMask::ALL_EVENTS)
            .unwrap_or_else(|e| panic!("watch {}: {e}", path.display()));
        self.labels.insert(wd, label.to_string());
    }

    fn poll(&mut self) {
        let mut buffer = [0u8; 64 * 1024];
        loop {
            match self.inotify.read_events(&mut buffer) {
                Ok(events) => {
                    let mut any = false;
                    for e in events {
                        any = true;
                        self.seen.push(Seen {
                            watch: self.labels.get(&e.wd).cloned().unwrap_or_default(),
                            name: e.name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                            mask: e.mask,
                            cookie: e.cookie,
                        });
                    }
                    if !any {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("reading inotify events: {e}"),
            }
        }
    }

    /// Waits (up to 20 s) until an event at `watch`/`name` has all of `mask`.
    async fn expect(&mut self, watch: &str, name: &str, mask: EventMask) -> Seen {
        let started = Instant::now();
        loop {
            self.poll();
            if let Some(s) = self.find(watch, name, mask) {
                return s;
            }
            if started.elapsed() > Duration::from_secs(20) {
                panic!("no {mask:?} for {watch}/{name}; events seen: {:#?}", self.seen);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn find(&self, watch: &str, name: &str, mask: EventMask) -> Option<Seen> {
        self.seen
            .iter()
            .find(|s| s.watch == watch && s.name == name && s.mask.contains(mask))
            .cloned()
    }
}

/// The changes each (watch, name) saw: creates, deletions, moves, content
/// and attribute changes (opens and reads differ between writers).
fn changes_by_name(seen: &[Seen]) -> BTreeMap<(String, String), Vec<&'static str>> {
    let kinds = [
        (EventMask::CREATE, "create"),
        (EventMask::DELETE, "delete"),
        (EventMask::MOVED_FROM, "moved_from"),
        (EventMask::MOVED_TO, "moved_to"),
        (EventMask::MODIFY, "modify"),
        (EventMask::CLOSE_WRITE, "close_write"),
        (EventMask::ATTRIB, "attrib"),
        (EventMask::ISDIR, "isdir"),
    ];
    let mut out: BTreeMap<(String, String), Vec<&'static str>> = BTreeMap::new();
    for s in seen {
        // ISDIR only qualifies a change (an `ls` opens directories).
        if !kinds[..7].iter().any(|(mask, _)| s.mask.contains(*mask)) {
            continue;
        }
        for (mask, label) in kinds {
            if s.mask.contains(mask) {
                let entry = out.entry((s.watch.clone(), s.name.clone())).or_default();
                if !entry.contains(&label) {
                    entry.push(label);
                }
            }
        }
    }
    for labels in out.values_mut() {
        labels.sort_unstable();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_changes_raise_the_events_a_local_change_raises() {
    let s = TestServer::start().await;
    let p = "watched";
    let mut a = MountedWorkspace::create(&s, p, "agent-a").await;
    let b = a.another("mnt-b", "agent-b");
    b.sh_ok(
        "mkdir dir gone-dir && echo old > old.md && echo x > mv-me.txt && echo d > del.txt \
         && echo s > run.sh && ln -s old.md link",
    );
    eventually("mount A shows B's files", || async {
        let out = a.sh("test -d gone-dir && test -f run.sh && test -L link && cat old.md");
        (stdout(&out) == "old\n").then_some(()).ok_or_else(|| both(&out))
    })
    .await;

    let mut w = Watcher::new();
    w.watch(&a.dir, "root");
    w.watch(&a.dir.join("dir"), "dir");
    w.watch(&a.dir.join("old.md"), "old.md");
    // The same watches on B see the local change.
    let mut local = Watcher::new();
    local.watch(&b.dir, "root");
    local.watch(&b.dir.join("dir"), "dir");
    local.watch(&b.dir.join("old.md"), "old.md");

    // Another agent edits, creates, deletes, moves and chmods.
    b.sh_ok(
        "echo new > old.md && echo hi > new.md && mkdir newdir && rm del.txt && rmdir gone-dir \
         && mv mv-me.txt dir/moved.txt && chmod 755 run.sh && ln -s new.md link2",
    );

    w.expect("root", "old.md", EventMask::MODIFY).await;
    w.expect("root", "old.md", EventMask::CLOSE_WRITE).await;
    w.expect("old.md", "", EventMask::MODIFY).await;
    w.expect("root", "new.md", EventMask::CREATE).await;
    w.expect("root", "new.md", EventMask::CLOSE_WRITE).await;
    w.expect("root", "newdir", EventMask::CREATE | EventMask::ISDIR).await;
    w.expect("root", "link2", EventMask::CREATE).await;
    w.expect("root", "del.txt", EventMask::DELETE).await;
    w.expect("root", "gone-dir", EventMask::DELETE | EventMask::ISDIR).await;
    let from = w.expect("root", "mv-me.txt", EventMask::MOVED_FROM).await;
    let to = w.expect("dir", "moved.txt", EventMask::MOVED_TO).await;
    assert_eq!(from.cookie, to.cookie, "one rename, one cookie: {from:?} {to:?}");
    assert_ne!(from.cookie, 0);
    w.expect("root", "run.sh", EventMask::ATTRIB).await;

    // Per watch and name, the kinds of change are those B's watcher saw.
    tokio::time::sleep(Duration::from_millis(500)).await;
    local.poll();
    w.poll();
    assert_eq!(
        changes_by_name(&w.seen),
        changes_by_name(&local.seen),
        "remote (A) against local (B) events"
    );

    // What the events announce is there to read.
    assert_eq!(a.sh_ok("cat old.md new.md dir/moved.txt"), "new\nhi\nx\n");
    assert_eq!(a.sh_ok("stat -c %a run.sh"), "755\n");
    assert_eq!(a.sh_ok("readlink link2"), "new.md\n");
    assert_eq!(
        a.sh_ok("ls"),
        "dir\nlink\nlink2\nnew.md\nnewdir\nold.md\nrun.sh\nskills\n"
    );

    // Showing them committed nothing: every version is one of B's edits.
    a.wait_synced().await;
    b.wait_synced().await;
    let history = s.history(p, &s.admin, "old.md").await;
    assert_eq!(history.len(), 2, "create and one edit, no echo: {history:#?}");
    assert!(
        history.iter().all(|v| v.agent_id.as_deref() == Some("agent-b")),
        "{history:#?}"
    );
    let status = a.status();
    assert!(
        status.contains("0 queued, 0 pending, 0 commits since mount"),
        "mount A committed nothing: {status}"
    );
    // The announcer let go of the mount point: a plain umount works.
    a.umount();
}

/// An editor that watches its file and reads it again on every event sees
/// each remote edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_watching_its_file_rereads_each_remote_edit() {
    let s = TestServer::start().await;
    let p = "editor";
    let a = MountedWorkspace::create(&s, p, "agent-a").await;
    let b = a.another("mnt-b", "agent-b");
    b.sh_ok("echo 'version 0' > plan.md");
    mount_shows(&a, "plan.md", "version 0\n").await;
    let mut w = Watcher::new();
    w.watch(&a.dir, "root");
    for round in 1..=5 {
        w.seen.clear();
        b.sh_ok(&format!("echo 'version {round}' > plan.md"));
        w.expect("root", "plan.md", EventMask::CLOSE_WRITE).await;
        let text = std::fs::read_to_string(a.dir.join("plan.md")).expect("read plan.md");
        assert_eq!(
            text,
            format!("version {round}\n"),
            "reread after the event of round {round}"
        );
    }
}

/// Two mounts whose watchers read every file the other one changes settle:
/// the server gets the real edits and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watching_mounts_settle_without_echo() {
    let s = TestServer::start().await;
    let p = "pair-watch";
    let a = MountedWorkspace::create(&s, p, "agent-a").await;
    let b = a.another("mnt-b", "agent-b");
    let mut watchers = Vec::new();
    for m in [&a, &b] {
        let mut w = Watcher::new();
        w.watch(&m.dir.clone(), "root");
        watchers.push((w, m.dir.clone()));
    }
    // Each edit lands before the next, so each is one version.
    for i in 0..5 {
        a.sh_ok(&format!("echo 'a {i}' >> from-a.md"));
        b.sh_ok(&format!("echo 'b {i}' >> from-b.md"));
        for (path, agent) in [("from-a.md", "a"), ("from-b.md", "b")] {
            let want: String = (0..=i).map(|j| format!("{agent} {j}\n")).collect();
            server_has(&s, p, path, want.as_bytes()).await;
        }
    }
    // Each watcher sees the other's file and reads it, as an editor would.
    for ((w, root), other) in watchers.iter_mut().zip(["from-b.md", "from-a.md"]) {
        w.expect("root", other, EventMask::CLOSE_WRITE).await;
        let _ = std::fs::read(root.join(other));
    }
    for (path, agent) in [("from-a.md", "a"), ("from-b.md", "b")] {
        let want: String = (0..5).map(|i| format!("{agent} {i}\n")).collect();
        server_has(&s, p, path, want.as_bytes()).await;
        mount_shows(&a, path, &want).await;
        mount_shows(&b, path, &want).await;
    }
    a.wait_synced().await;
    b.wait_synced().await;
    let cursor = s.snapshot(p).await.0;
    // Quiet for a while: no more commits, no more events.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (w, _) in watchers.iter_mut() {
        w.poll();
        w.seen.clear();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.snapshot(p).await.0,
        cursor,
        "nothing was committed after the edits settled"
    );
    for (w, _) in watchers.iter_mut() {
        w.poll();
        assert!(w.seen.is_empty(), "no events once settled: {:#?}", w.seen);
    }
    // One version per real edit, each by its writer: none from the watchers.
    for (path, agent) in [("from-a.md", "agent-a"), ("from-b.md", "agent-b")] {
        let history = s.history(p, &s.admin, path).await;
        assert!(
            history.len() == 5 && history.iter().all(|v| v.agent_id.as_deref() == Some(agent)),
            "{path}: five edits, five versions, all by {agent}: {history:#?}"
        );
    }
}

/// A reader holding the file open (a passthrough open of its blob) keeps its
/// bytes; the watcher still hears of the new content, and a new open reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_edit_of_a_file_held_open_raises_the_event_and_spares_the_reader() {
    use std::io::{Read, Seek};
    let s = TestServer::start().await;
    let p = "held";
    let a = MountedWorkspace::create(&s, p, "agent-a").await;
    let b = a.another("mnt-b", "agent-b");
    b.sh_ok("echo 'first version' > data.txt");
    mount_shows(&a, "data.txt", "first version\n").await;
    let mut held = std::fs::File::open(a.dir.join("data.txt")).expect("open data.txt");
    let mut text = String::new();
    held.read_to_string(&mut text).expect("read");
    assert_eq!(text, "first version\n");

    let mut w = Watcher::new();
    w.watch(&a.dir, "root");
    b.sh_ok("echo 'second version, longer' > data.txt");
    w.expect("root", "data.txt", EventMask::MODIFY).await;
    mount_shows(&a, "data.txt", "second version, longer\n").await;
    held.rewind().expect("rewind");
    text.clear();
    held.read_to_string(&mut text).expect("read again");
    assert_eq!(text, "first version\n", "an open handle keeps the bytes it opened");
}

/// `--inotify off`: remote changes still arrive, but raise no events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_inotify_off_remote_changes_arrive_without_events() {
    let s = TestServer::start().await;
    let p = "quiet";
    let a = MountedWorkspace::create_with(&s, p, "agent-a", &["--inotify", "off"]).await;
    let b = a.another("mnt-b", "agent-b");
    let mut w = Watcher::new();
    w.watch(&a.dir, "root");
    b.sh_ok("echo one > one.md && mkdir two");
    mount_shows(&a, "one.md", "one\n").await;
    // The mkdir may be sent after the file (a slow server, the latency proxy).
    eventually("mount A shows two/", || async {
        a.dir
            .join("two")
            .is_dir()
            .then_some(())
            .ok_or_else(|| "no two/ yet".to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.poll();
    let changes = changes_by_name(&w.seen);
    assert!(changes.is_empty(), "no events with --inotify off: {changes:?}");
}

/// A container sees the mount through a bind mount (`/workspace`): a watch
/// set through a bind mount of the mount point hears remote changes too
/// (inotify watches inodes, whatever path reached them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_through_a_bind_mount_hears_remote_changes() {
    let s = TestServer::start().await;
    let p = "bound";
    let a = MountedWorkspace::create(&s, p, "agent-a").await;
    let b = a.another("mnt-b", "agent-b");
    let bound = BindMount::new(&a.dir, &a.root().join("workspace"));
    let mut w = Watcher::new();
    w.watch(&bound.target, "workspace");
    b.sh_ok("echo 'from B' > note.md");
    w.expect("workspace", "note.md", EventMask::CREATE).await;
    w.expect("workspace", "note.md", EventMask::CLOSE_WRITE).await;
    let text = std::fs::read_to_string(bound.target.join("note.md")).expect("read through the bind mount");
    assert_eq!(text, "from B\n");
}

/// `mount --bind`, undone when dropped (also when the test fails).
struct BindMount {
    target: std::path::PathBuf,
}

impl BindMount {
    fn new(source: &Path, target: &Path) -> Self {
        std::fs::create_dir_all(target).expect("bind target");
        let out = Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(target)
            .output()
            .expect("run mount --bind");
        assert!(out.status.success(), "mount --bind (needs root): {}", both(&out));
        Self {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.target).status();
    }
}
