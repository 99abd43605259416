//! kill -9 with a queued change, files written while the server is down, the umount report, a create removed in flight.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_queued_change_commits_it_on_the_next_mount() {
    let mut s = TestServer::start().await;
    let p = "crash";
    let mut m = MountedWorkspace::create(&s, p, "agent-crash").await;
    s.stop().await;
    m.sh_ok("echo 'written while the server was down' > crash.txt");
    let status = m.status();
    assert!(status.contains("queued   crash.txt [create]"), "{status}");
    m.kill_9();
    let dead = m.sh("ls");
    assert!(!dead.status.success(), "a killed mount cannot answer: {}", both(&dead));

    s.restart_on_same_port().await;
    m.mount();
    // (Printed just after the mount starts answering `status`.)
    eventually("the new mount says it replays the journal", || async {
        let log = m.log();
        if log.contains("replaying 1 change(s)") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    let c = server_has(&s, p, "crash.txt", b"written while the server was down\n").await;
    assert_eq!(c.version, 1);
    let history = s.history(p, &s.admin, "crash.txt").await;
    assert_eq!(history.len(), 1, "committed once: {history:#?}");
    assert_eq!(history[0].agent_id.as_deref(), Some("agent-crash"));
    assert_eq!(m.sh_ok("cat crash.txt"), "written while the server was down\n");
    m.wait_synced().await;
    let out = m.umount();
    assert!(out.status.success(), "{}", both(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_files_written_offline_land_when_the_server_returns() {
    let mut s = TestServer::start().await;
    let p = "offline";
    let mut m = MountedWorkspace::create(&s, p, "agent-offline").await;
    s.stop().await;
    m.sh_ok("mkdir batch && for i in $(seq 1 100); do echo \"file $i\" > batch/f$i.txt; done");
    let status = eventually("status shows the server unreachable", || async {
        let st = m.status();
        if st.contains("server: UNREACHABLE") {
            Ok(st)
        } else {
            Err(st)
        }
    })
    .await;
    assert!(status.contains("(101 queued, 0 pending,"), "{status}");
    for i in 1..=100 {
        assert!(
            status.contains(&format!("queued   batch/f{i}.txt [create]")),
            "f{i} not queued:\n{status}"
        );
    }
    assert!(status.contains("queued   batch [create]"), "{status}");

    s.restart_on_same_port().await;
    eventually("all 100 files are on the server", || async {
        let t = tree_map(&s, p).await?;
        let landed = (1..=100)
            .filter(|i| {
                t.get(&format!("batch/f{i}.txt"))
                    .is_some_and(|e| e.hash == BlobHash::of(format!("file {i}\n").as_bytes()))
            })
            .count();
        if landed == 100 {
            Ok(())
        } else {
            Err(format!("{landed} of 100"))
        }
    })
    .await;
    let out = m.umount();
    assert!(out.status.success(), "umount: {}", both(&out));
    let report = stdout(&out);
    for i in 1..=100 {
        assert!(report.contains(&format!("clean    batch/f{i}.txt\n")), "{report}");
    }
    assert!(!report.contains("queued"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn umount_reports_each_file_with_its_outcome() {
    let s = TestServer::start().await;
    let p = "report";
    let original = ten_lines();
    let mut m = MountedWorkspace::create(&s, p, "agent-report").await;
    let v1 = s
        .commit(p, &s.admin, "notes.md", None, original.as_bytes())
        .await
        .expect("put notes.md");
    mount_shows(&m, "notes.md", &original).await;

    // The mount edits line 2 of version 1 and holds the file open while the
    // API commits an edit of line 9; closing then commits on a stale base.
    let mut edit = m.python(HOLD_OPEN_EDIT, &["notes.md", "2", "line 2 from the mount"]);
    edit.expect_line("ready");
    edit.send("go");
    edit.expect_line("written");
    let theirs = edit_line(&original, 9, "line 9 from the API");
    let v2 = s
        .commit(p, &s.admin, "notes.md", Some(v1.version), theirs.as_bytes())
        .await
        .expect("API edit");
    assert_eq!(v2.status, VersionStatus::Clean);
    m.sh_ok("echo one > one.txt && mkdir -p d && echo two > d/two.txt");
    edit.send("close");
    edit.expect_line("closed");
    edit.finish();

    let out = m.umount();
    let report = stdout(&out);
    assert!(out.status.success(), "umount: {}", both(&out));
    for line in ["merged   notes.md", "clean    one.txt", "clean    d/two.txt"] {
        assert!(
            report.lines().any(|l| l.trim_end() == line),
            "no `{line}` in:\n{report}"
        );
    }
    assert!(report.contains(&format!("unmounted {}", m.dir.display())), "{report}");
    assert!(!report.contains("queued"), "{report}");
    // The mount point can be mounted again right away.
    m.mount();
    assert_eq!(m.sh_ok("cat one.txt d/two.txt"), "one\ntwo\n");
    let merged = edit_line(&theirs, 2, "line 2 from the mount");
    let head = s.read(p, &s.admin, "notes.md", None).await.expect("read");
    assert_eq!(String::from_utf8_lossy(&head.bytes), merged);
    assert_eq!(head.status, "merged");
    assert_eq!(s.read_bytes(p, &s.admin, "d/two.txt").await, b"two\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn umount_with_the_server_down_names_the_journal_and_the_next_mount_commits() {
    let mut s = TestServer::start().await;
    let p = "stranded";
    let mut m = MountedWorkspace::create(&s, p, "agent-stranded").await;
    m.sh_ok("echo before > before.txt");
    server_has(&s, p, "before.txt", b"before\n").await;
    m.wait_synced().await;

    s.stop().await;
    m.sh_ok("echo stranded > stranded.txt");
    let out = m.umount();
    let text = both(&out);
    assert!(
        !out.status.success(),
        "umount must fail while changes are only queued: {text}"
    );
    let report = stdout(&out);
    assert!(report.contains("clean    before.txt"), "{text}");
    assert!(report.contains("queued   stranded.txt [create]"), "{text}");
    let journal = report
        .split("still only in the journal at ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("the report does not name the journal: {text}"));
    let journal = Path::new(journal);
    assert!(
        journal.starts_with(m.state_dir()),
        "journal {} not under the state dir",
        journal.display()
    );
    // Whatever its format, the journal holds the queued change.
    let stored: u64 = std::fs::read_dir(journal)
        .unwrap_or_else(|e| panic!("journal {}: {e}", journal.display()))
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert!(stored > 0, "the journal {} is empty", journal.display());

    s.restart_on_same_port().await;
    m.mount();
    server_has(&s, p, "stranded.txt", b"stranded\n").await;
    assert_eq!(m.sh_ok("cat stranded.txt before.txt"), "stranded\nbefore\n");
    let history = s.history(p, &s.admin, "stranded.txt").await;
    assert_eq!(history.len(), 1, "{history:#?}");
    let out = m.umount();
    assert!(out.status.success(), "{}", both(&out));
}

/// A test server stopped with SIGSTOP: its kernel still accepts requests
/// (they wait in the socket), and nothing answers until `thaw`.
struct FrozenServer {
    pid: String,
    port: u16,
}

impl FrozenServer {
    fn freeze(s: &TestServer) -> FrozenServer {
        let port = s.listen_addr().rsplit_once(':').unwrap().1.parse().unwrap();
        let pid = s.pid().expect("server runs").to_string();
        assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
        FrozenServer { pid, port }
    }

    /// Until a request the mount sent waits, unread, in the server's socket.
    async fn until_a_request_waits(&self) {
        eventually("the mount sent a request to the frozen server", || async {
            match unread_request_bytes(self.port) {
                0 => Err("no request waiting".to_string()),
                _ => Ok(()),
            }
        })
        .await;
    }

    fn thaw(self) {
        assert!(Command::new("kill")
            .args(["-CONT", &self.pid])
            .status()
            .unwrap()
            .success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_removed_while_its_first_commit_is_in_flight_is_gone_on_the_server() {
    let s = TestServer::start().await;
    let p = "inflight";
    let m = MountedWorkspace::create(&s, p, "agent-inflight").await;
    let frozen = FrozenServer::freeze(&s);
    m.sh_ok("echo scratch > scratch.txt");
    frozen.until_a_request_waits().await;
    m.sh_ok("rm scratch.txt");
    frozen.thaw();
    m.wait_synced().await;
    eventually("scratch.txt is not on the server", || async {
        let t = tree_map(&s, p).await?;
        match t.get("scratch.txt") {
            None => Ok(()),
            Some(e) => Err(format!("still there: {e:?}")),
        }
    })
    .await;
}

/// A server that takes a commit and never answers (frozen here; in the
/// field, a stuck server or a half-open pooled connection): the request
/// gives up after --request-timeout, umount reports the change queued
/// instead of waiting with it, and once the server runs again the next
/// mount commits it, once (the frozen server still applies the request it
/// had read; the retry carries the same idempotency key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_does_not_hold_umount_and_the_change_commits_once() {
    let s = TestServer::start().await;
    let p = "silent";
    let mut m = MountedWorkspace::create_with(&s, p, "agent-silent", &["--request-timeout", "2"]).await;
    let frozen = FrozenServer::freeze(&s);
    m.sh_ok("echo silent > silent.txt");
    frozen.until_a_request_waits().await;
    let out = m.umount();
    let text = both(&out);
    assert!(
        !out.status.success(),
        "umount must fail while the change is only queued: {text}"
    );
    assert!(stdout(&out).contains("queued   silent.txt [create]"), "{text}");
    assert!(text.contains("no answer in time"), "{text}");
    frozen.thaw();
    m.mount();
    server_has(&s, p, "silent.txt", b"silent\n").await;
    m.wait_synced().await;
    let history = s.history(p, &s.admin, "silent.txt").await;
    assert_eq!(history.len(), 1, "committed once: {history:#?}");
    assert_eq!(m.sh_ok("cat silent.txt"), "silent\n");
    let out = m.umount();
    assert!(out.status.success(), "{}", both(&out));
}
