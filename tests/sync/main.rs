//! `contextfs sync`, `checkout`, `push`, `pull` against a real server, with
//! real folders and real file events (issue 13's "what must never happen").
//! Every wait polls with a generous deadline; nothing asserts on timing.

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod large_files;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use contextfs::api::VersionStatus;
use contextfs::model::BlobHash;
use harness::*;

/// Two synced folders and a FUSE mount of one project, edited at once:
/// different files, one text file in different places, one JSON file in
/// different keys, and one line all three rewrite (a true conflict). All
/// three converge to identical trees, every edit is in the head or in
/// history, and every `lww` is reported by the side that wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_folders_and_a_mount_edited_at_once_converge() {
    let s = TestServer::start().await;
    let token = s.project_with_token("conv").await;
    let notes: String = (1..=12).map(|i| format!("line {i}\n")).collect();
    seed(
        &s,
        "conv",
        &[
            ("notes.md", notes.as_bytes()),
            ("state.json", br#"{"a":0,"b":0,"m":0}"#),
            ("conflict.txt", b"base\n"),
        ],
    )
    .await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut a = Folder::new(&home, "a", &s, "conv", &token);
    let mut b = Folder::new(&home, "b", &s, "conv", &token);
    a.start();
    b.start();
    let m = MountedWorkspace::mount_at(home.clone(), "mnt", &s.mount_url(), "conv", &token, "agent-m", &[]);
    // Each side edits its own line and key, writes its own file, and
    // rewrites the conflict line, all at once.
    let edit = |who: &str, line: usize| {
        format!(
            r#"python3 - <<'EOF'
import json
p = open('notes.md').read().split('\n')
p[{idx}] = 'line {line} edited by {who}'
open('notes.md', 'w').write('\n'.join(p))
d = json.load(open('state.json'))
d['{who}'] = '{who}'
open('state.json', 'w').write(json.dumps(d))
open('conflict.txt', 'w').write('{who} wins\n')
open('own-{who}.txt', 'w').write('written by {who}\n')
EOF"#,
            idx = line - 1
        )
    };
    let mut children = Vec::new();
    for (dir, who, line) in [(&a.dir, "a", 2), (&b.dir, "b", 6), (&m.dir, "m", 11)] {
        children.push(
            a.command("bash")
                .args(["-c", &edit(who, line)])
                .current_dir(dir)
                .spawn()
                .expect("start editor"),
        );
    }
    for mut child in children {
        assert!(child.wait().expect("editor").success());
    }
    let want_lines = ["line 2 edited by a", "line 6 edited by b", "line 11 edited by m"];
    let converged = eventually("the folders, the mount and the server converge", || async {
        let server = server_tree(&s, "conv").await;
        let trees = [tree_of(&a.dir), tree_of(&b.dir), tree_of(&m.dir)];
        if trees.iter().any(|t| *t != server) {
            return Err(format!("server {server:?}\nfolders/mount {trees:?}"));
        }
        let notes = String::from_utf8(s.read_bytes("conv", &s.admin, "notes.md").await).expect("utf-8");
        if let Some(missing) = want_lines.iter().find(|l| !notes.contains(*l)) {
            return Err(format!("notes.md lacks {missing:?}: {notes}"));
        }
        let state: serde_json::Value =
            serde_json::from_slice(&s.read_bytes("conv", &s.admin, "state.json").await).expect("json");
        if ["a", "b", "m"].iter().any(|k| state[k] != *k) {
            return Err(format!("state.json misses a key: {state}"));
        }
        Ok(server)
    })
    .await;
    for who in ["a", "b", "m"] {
        assert!(converged.contains_key(&format!("own-{who}.txt")), "{converged:?}");
    }
    // Every side's conflicting bytes are in history, and each lww is
    // reported by the side whose commit it was.
    let history = s.history("conv", &s.admin, "conflict.txt").await;
    for who in ["a", "b", "m"] {
        let wanted = BlobHash::of(format!("{who} wins\n").as_bytes());
        assert!(
            history.iter().any(|v| v.hash == wanted),
            "{who}'s conflict.txt is not in history: {history:?}"
        );
    }
    let mount_status = eventually("the mount reports its outcomes", || async {
        let status = m.status();
        Ok::<_, String>(status)
    })
    .await;
    for version in history.iter().filter(|v| v.status == VersionStatus::Lww) {
        let reported = match version.agent_id.as_deref() {
            Some("agent-a") => a.log(),
            Some("agent-b") => b.log(),
            Some("agent-m") => mount_status.clone(),
            other => panic!("lww by an unexpected agent {other:?}"),
        };
        assert!(
            reported
                .lines()
                .any(|l| l.starts_with("lww") && l.contains("conflict.txt")),
            "{:?} wrote lww v{} but did not report it:\n{reported}",
            version.agent_id,
            version.version
        );
    }
}

/// The sync is killed with -9 at random moments during bursts of edits,
/// with remote changes landing while it is down, and restarted each time.
/// Nothing is lost either way, and nothing unchanged is downloaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_nothing_and_downloads_nothing_twice() {
    let s = TestServer::start().await;
    let token = s.project_with_token("crash").await;
    let seeded: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("seed/{i}.md"), format!("seed file {i}\n").into_bytes()))
        .collect();
    for (path, bytes) in &seeded {
        s.commit("crash", &s.admin, path, None, bytes).await.expect("seed");
    }
    seed(&s, "crash", &[("log.md", b"# log\n")]).await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut a = Folder::new(&home, "a", &s, "crash", &token);
    a.start();
    let inodes = |a: &Folder| -> BTreeMap<String, u64> {
        seeded
            .iter()
            .map(|(p, _)| {
                (
                    p.clone(),
                    std::fs::metadata(a.dir.join(p)).map(|m| m.ino()).unwrap_or(0),
                )
            })
            .collect()
    };
    let before = inodes(&a);
    assert!(before.values().all(|i| *i != 0), "checkout missed seed files");
    let mut remote_changes = 0;
    for round in 0..3u64 {
        // A burst of creates and edits, with the kill somewhere inside it.
        let mut burst = a
            .command("bash")
            .args([
                "-c",
                &format!(
                    "for i in $(seq 0 39); do echo \"burst {round} file $i\" > burst-{round}-$i.md; \
                     echo \"round {round} step $i\" >> log.md; sleep 0.01; done"
                ),
            ])
            .current_dir(&a.dir)
            .spawn()
            .expect("start burst");
        let delay = 20 + (rand::random::<u64>() % 300);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        a.kill_9();
        assert!(burst.wait().expect("burst").success());
        // Remote changes while the sync is down.
        s.commit(
            "crash",
            &s.admin,
            &format!("remote-{round}.md"),
            None,
            format!("remote {round}\n").as_bytes(),
        )
        .await
        .expect("remote commit");
        remote_changes += 1;
        // And a line at the top of the log the burst appends to: merged
        // with the local lines, never overwriting them.
        let head = s
            .read("crash", &s.admin, "log.md", None)
            .await
            .expect("log.md on the server");
        let mut bytes = format!("remote header {round}\n").into_bytes();
        bytes.extend_from_slice(&head.bytes);
        s.commit("crash", &s.admin, "log.md", Some(head.version), &bytes)
            .await
            .expect("remote edit of log.md");
        remote_changes += 1;
        let placed_before = a.placements();
        a.start();
        // What the restart downloaded: the remote changes made while it was
        // down, at most (and what the burst raced with), never the seed.
        let placed_after = a.placements();
        assert!(
            placed_after - placed_before <= remote_changes,
            "the restart downloaded {} files for {remote_changes} remote changes",
            placed_after - placed_before
        );
    }
    let local = eventually(
        "every local edit reaches the server and every remote one the folder",
        || async {
            let server = server_tree(&s, "crash").await;
            let local = tree_of(&a.dir);
            if local == server {
                Ok(local)
            } else {
                Err(format!("server {server:?}\nlocal {local:?}"))
            }
        },
    )
    .await;
    for round in 0..3 {
        for i in 0..40 {
            let path = format!("burst-{round}-{i}.md");
            assert_eq!(
                local.get(&path),
                Some(&BlobHash::of(format!("burst {round} file {i}\n").as_bytes()))
            );
        }
        assert!(local.contains_key(&format!("remote-{round}.md")));
    }
    let log = String::from_utf8(a.read("log.md").expect("log.md")).expect("utf-8");
    let local_lines = log.lines().filter(|l| l.starts_with("round ")).count();
    assert_eq!(local_lines, 120, "log.md lost local lines: {log}");
    let remote_lines = log.lines().filter(|l| l.starts_with("remote header ")).count();
    assert_eq!(remote_lines, 3, "log.md lost remote edits: {log}");
    assert_eq!(inodes(&a), before, "unchanged seed files were written again");
}

/// With the server down, local edits queue and `sync status` says so; when
/// it is back they land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_made_while_the_server_is_down_land_when_it_is_back() {
    let mut s = TestServer::start().await;
    let token = s.project_with_token("down").await;
    seed(&s, "down", &[("kept.md", b"one\n")]).await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut a = Folder::new(&home, "a", &s, "down", &token);
    a.start();
    s.kill_9();
    a.sh_ok("echo offline > offline.md && echo two >> kept.md");
    eventually("sync status shows the server down and the queued edits", || async {
        let status = a.status();
        if status.contains("UNREACHABLE")
            && status.contains("pending  offline.md")
            && status.contains("pending  kept.md")
        {
            Ok(())
        } else {
            Err(status)
        }
    })
    .await;
    s.restart_on_same_port().await;
    server_has(&s, "down", "offline.md", b"offline\n").await;
    server_has(&s, "down", "kept.md", b"one\ntwo\n").await;
    eventually("sync status shows everything sent", || async {
        let status = a.status();
        if status.contains("server: reachable") && status.contains("pending: 0 change(s)") {
            Ok(())
        } else {
            Err(status)
        }
    })
    .await;
}

/// Files over the server's size limit, names that are not UTF-8 or that the
/// server refuses, fifos, sockets and device files are skipped with the
/// reason in `sync status` and the output, once: no retry storm, no crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_skipped_with_its_reason_and_not_retried() {
    // Over the largest file (--max-file-bytes): refused before any chunk is
    // sent. (Over --max-blob-bytes alone it would go up by chunks.)
    let s = TestServer::start_with(&["--max-blob-bytes", "1048576", "--max-file-bytes", "1048576"]).await;
    let token = s.project_with_token("bad").await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut a = Folder::new(&home, "a", &s, "bad", &token);
    a.start();
    a.sh_ok(
        r#"head -c 2097152 /dev/urandom > big.bin
           touch "$(printf 'bad\377name.txt')" "$(printf 'new\nline.txt')"
           mkfifo pipe
           python3 -c "import socket; s = socket.socket(socket.AF_UNIX); s.bind('sock')"
           mknod null-device c 1 3
           echo fine > good.txt"#,
    );
    server_has(&s, "bad", "good.txt", b"fine\n").await;
    let reasons = [
        ("big.bin", "larger than the server accepts"),
        ("bad\u{fffd}name.txt", "not UTF-8"),
        ("\"new\\nline.txt\"", "cannot store this name"),
        ("pipe", "a fifo cannot be synced"),
        ("sock", "a socket cannot be synced"),
        ("null-device", "a device file cannot be synced"),
    ];
    eventually("sync status names every skipped file and why", || async {
        let status = a.status();
        match reasons.iter().find(|(path, why)| {
            !status
                .lines()
                .any(|l| l.starts_with(&format!("skipped  {path}")) && l.contains(why))
        }) {
            None => Ok(()),
            Some(missing) => Err(format!("{missing:?} missing from:\n{status}")),
        }
    })
    .await;
    // More rounds (new edits) do not send the refused file again.
    for i in 0..5 {
        a.sh_ok(&format!("echo {i} > more-{i}.txt"));
        server_has(&s, "bad", &format!("more-{i}.txt"), format!("{i}\n").as_bytes()).await;
    }
    // Each is said once in the sync's own output, however many rounds ran.
    for (path, why) in reasons {
        let said = a
            .log()
            .lines()
            .filter(|l| l.starts_with(&format!("skipped  {path}")) && l.contains(why))
            .count();
        assert_eq!(said, 1, "{path} was reported {said} times:\n{}", a.log());
    }
    assert!(process_alive(a.pid.expect("running")), "the sync died:\n{}", a.log());
    let tree = server_tree(&s, "bad").await;
    assert!(!tree.contains_key("big.bin") && !tree.contains_key("pipe"), "{tree:?}");
    // The one-shot push says the same and fails: these were not committed.
    a.kill_9();
    let out = a.cli(&["push", &a.dir_arg()]);
    assert!(
        !out.status.success(),
        "push succeeded with skipped files: {}",
        both(&out)
    );
    let text = stdout(&out);
    for (path, why) in reasons {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("skipped  {path}")) && l.contains(why)),
            "push did not report {path}: {}",
            both(&out)
        );
    }
}

/// A file renamed differently on two sides ends with both names, the bytes
/// intact, and no copy lost. Driven through the one-shot halves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_differently_on_both_sides_keeps_both_names() {
    let s = TestServer::start().await;
    let token = s.project_with_token("ren").await;
    seed(&s, "ren", &[("doc.md", b"the document\n")]).await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let a = Folder::new(&home, "a", &s, "ren", &token);
    let b = Folder::new(&home, "b", &s, "ren", &token);
    for f in [&a, &b] {
        let out = f.cli(&["checkout", &f.dir_arg(), "--project", "ren"]);
        assert!(out.status.success(), "checkout: {}", both(&out));
        assert!(stdout(&out).contains("updated  doc.md"), "{}", both(&out));
    }
    std::fs::rename(a.dir.join("doc.md"), a.dir.join("from-a.md")).expect("mv in a");
    std::fs::create_dir(b.dir.join("sub")).expect("mkdir in b");
    std::fs::rename(b.dir.join("doc.md"), b.dir.join("sub/from-b.md")).expect("mv in b");
    let out = a.cli(&["push", &a.dir_arg()]);
    assert!(out.status.success(), "push a: {}", both(&out));
    assert!(stdout(&out).contains("moved    doc.md -> from-a.md"), "{}", both(&out));
    let out = b.cli(&["push", &b.dir_arg()]);
    assert!(out.status.success(), "push b: {}", both(&out));
    for f in [&a, &b] {
        let out = f.cli(&["pull", &f.dir_arg()]);
        assert!(out.status.success(), "pull: {}", both(&out));
    }
    let want = BlobHash::of(b"the document\n");
    let expected: BTreeMap<String, BlobHash> = [
        ("from-a.md".to_string(), want.clone()),
        ("sub/from-b.md".to_string(), want),
    ]
    .into_iter()
    .collect();
    assert_eq!(tree_of(&a.dir), expected);
    assert_eq!(tree_of(&b.dir), expected);
    assert_eq!(server_tree(&s, "ren").await, expected);
    // The node and its history followed a's rename.
    let history = s.history("ren", &s.admin, "from-a.md").await;
    assert!(history.iter().any(|v| v.path == "doc.md"), "{history:?}");
}

/// An editor saving while a pull downloads a newer version of the same file
/// keeps the editor's bytes; the next push commits them on top of the
/// version they were edited from, so the server's version stays in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_saving_during_a_pull_keeps_its_bytes() {
    let mut s = TestServer::start().await;
    // 300 ms per round trip, so the save can land while the pull downloads.
    s.slow_down_mounts(Duration::from_millis(300), Duration::from_millis(300));
    let token = s.project_with_token("edit").await;
    seed(&s, "edit", &[("draft.txt", b"first draft\n")]).await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let a = Folder::new(&home, "a", &s, "edit", &token);
    let out = a.cli(&["checkout", &a.dir_arg(), "--project", "edit"]);
    assert!(out.status.success(), "checkout: {}", both(&out));
    let mut attempt = 0;
    let editor_bytes = loop {
        attempt += 1;
        assert!(attempt <= 12, "the editor's save never landed during a pull's download");
        // Binary (a NUL byte): the server takes it whole, without a merge.
        let remote: Vec<u8> = std::iter::once(0u8)
            .chain((0..20_000u32).flat_map(|i| format!("remote {attempt} {i}\n").into_bytes()))
            .collect();
        let remote_blob = home
            .path()
            .join("cache/contextfs/blobs")
            .join(&BlobHash::of(&remote).as_str()[..2])
            .join(BlobHash::of(&remote).as_str());
        let head = s.read("edit", &s.admin, "draft.txt", None).await.expect("head");
        s.commit("edit", &s.admin, "draft.txt", Some(head.version), &remote)
            .await
            .expect("remote commit");
        let pull = a
            .command(BIN)
            .args(["pull", &a.dir_arg()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start pull");
        // Different moments each attempt, to land inside the download.
        tokio::time::sleep(Duration::from_millis(300 + 100 * (attempt % 6))).await;
        // The editor saves the way most do: a temp file renamed over the original.
        let editor = format!("editor save {attempt}\n");
        std::fs::write(a.dir.join("draft.txt.new"), &editor).expect("write temp");
        std::fs::rename(a.dir.join("draft.txt.new"), a.dir.join("draft.txt")).expect("rename over");
        let out = pull.wait_with_output().expect("pull");
        assert!(out.status.success(), "pull: {}", both(&out));
        assert_eq!(
            a.read("draft.txt").expect("draft.txt"),
            editor.as_bytes(),
            "the pull replaced the editor's save: {}",
            both(&out)
        );
        let kept = stdout(&out).contains("kept     draft.txt");
        if kept && remote_blob.exists() {
            // The pull had downloaded the new version (it is in the cache)
            // and still did not place it: the save landed in between.
            break editor;
        }
        // The save came before the pull looked, or after it was done:
        // push and try another moment.
        let out = a.cli(&["push", &a.dir_arg()]);
        assert!(out.status.success(), "push: {}", both(&out));
    };
    let out = a.cli(&["push", &a.dir_arg()]);
    assert!(out.status.success(), "push: {}", both(&out));
    let text = stdout(&out);
    assert!(
        text.contains("draft.txt"),
        "push did not send the editor's save: {text}"
    );
    assert_eq!(
        s.read_bytes("edit", &s.admin, "draft.txt").await,
        editor_bytes.as_bytes()
    );
    // Both whole versions survive: the remote one in history, never a mix.
    let history = s.history("edit", &s.admin, "draft.txt").await;
    assert!(history.len() >= 3, "{history:?}");
    assert!(
        text.lines().any(|l| l.starts_with("lww") || l.starts_with("clean")),
        "{text}"
    );
}

/// Several folders of one project on a file system that can clone share the
/// blob cache's blocks: the disk holds about one copy, and `sync status`
/// says the files are clones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_on_xfs_share_the_cached_blocks_as_reflink_clones() {
    let s = TestServer::start().await;
    let token = s.project_with_token("big").await;
    let mut project_bytes = 0u64;
    for i in 0..4 {
        let bytes: Vec<u8> = (0..8u32 << 20)
            .map(|n| (n.wrapping_mul(2654435761) >> (i + 7)) as u8)
            .collect();
        project_bytes += bytes.len() as u64;
        s.commit("big", &s.admin, &format!("data/{i}.bin"), None, &bytes)
            .await
            .expect("seed");
    }
    let volume = XfsVolume::make();
    let home = Arc::new(tempfile::tempdir_in(&volume.mountpoint).expect("temp dir on xfs"));
    let used_before = volume.used_bytes();
    let folders: Vec<Folder> = (0..5)
        .map(|i| Folder::new(&home, &format!("f{i}"), &s, "big", &token))
        .collect();
    for f in &folders {
        let out = f.cli(&["checkout", &f.dir_arg(), "--project", "big"]);
        assert!(out.status.success(), "checkout: {}", both(&out));
        assert!(stdout(&out).contains("as reflink clones"), "{}", both(&out));
        assert_eq!(tree_of(&f.dir).len(), 4);
    }
    let used = volume.used_bytes() - used_before;
    assert!(
        used as f64 <= 1.1 * project_bytes as f64,
        "5 folders of a {project_bytes}-byte project use {used} bytes"
    );
    assert!(
        folders[0].status().contains("reflink clones"),
        "{}",
        folders[0].status()
    );
}

/// Namespace changes travel both ways and keep nodes: a directory renamed
/// on the server moves here, a deletion and a chmod arrive, a directory
/// renamed here keeps its files' nodes on the server, a symlink is sent as
/// one; ignored files and editor droppings stay local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_changes_travel_both_ways_and_ignored_files_stay_local() {
    let s = TestServer::start().await;
    let token = s.project_with_token("ns").await;
    seed(
        &s,
        "ns",
        &[
            ("dir/a.md", b"a\n"),
            ("dir/b.md", b"b\n"),
            ("run.sh", b"echo hi\n"),
            ("gone.md", b"bye\n"),
        ],
    )
    .await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut a = Folder::new(&home, "a", &s, "ns", &token);
    a.start();
    // On the server: move a directory, delete a file, make a script executable.
    let url = s.purl("ns", "/rename");
    send::<serde_json::Value>(s.post(&url, &s.admin, &serde_json::json!({"from": "dir", "to": "moved"})))
        .await
        .expect("rename");
    let url = s.purl("ns", "/delete");
    send::<serde_json::Value>(s.post(&url, &s.admin, &serde_json::json!({"path": "gone.md"})))
        .await
        .expect("delete");
    let head = s.read("ns", &s.admin, "run.sh", None).await.expect("run.sh");
    let mut chmod = commit_request("run.sh", Some(head.version), BlobHash::of(b"echo hi\n"));
    chmod.mode = Some(0o755);
    s.commit_req("ns", &s.admin, &chmod).await.expect("chmod");
    eventually("the server's namespace changes reach the folder", || async {
        let tree = tree_of(&a.dir);
        let mode = std::fs::metadata(a.dir.join("run.sh"))
            .map(|m| m.mode() & 0o777)
            .unwrap_or(0);
        let ok = tree.contains_key("moved/a.md")
            && tree.contains_key("moved/b.md")
            && !a.dir.join("dir").exists()
            && !tree.contains_key("gone.md")
            && mode == 0o755;
        if ok {
            Ok(())
        } else {
            Err(format!("{tree:?}, run.sh mode {mode:o}"))
        }
    })
    .await;
    let node_of_a = s.read("ns", &s.admin, "moved/a.md", None).await.expect("a").node;
    // Here: rename the directory, add a symlink, and files to leave alone.
    a.sh_ok(
        "mv moved renamed && ln -s renamed/a.md link && printf 'build/\\n*.log\\n' > .contextfsignore \
         && mkdir build && echo obj > build/out.o && echo noise > run.log && echo swap > .notes.md.swp \
         && echo kept > notes.md",
    );
    server_has(&s, "ns", "notes.md", b"kept\n").await;
    eventually("the local rename and symlink reach the server", || async {
        let tree = tree_map(&s, "ns").await?;
        let link = tree.get("link").map(|e| e.kind);
        match (tree.get("renamed/a.md"), tree.contains_key("moved/a.md"), link) {
            (Some(e), false, Some(contextfs::api::NodeKind::Symlink)) if e.id == node_of_a => Ok(()),
            _ => Err(format!("{:?}", tree.keys().collect::<Vec<_>>())),
        }
    })
    .await;
    let tree = server_tree(&s, "ns").await;
    for ignored in ["build/out.o", "run.log", ".notes.md.swp"] {
        assert!(!tree.contains_key(ignored), "{ignored} was synced: {tree:?}");
    }
    assert!(
        tree.contains_key(".contextfsignore"),
        "the ignore file itself is synced: {tree:?}"
    );
    assert_eq!(
        std::fs::read_link(a.dir.join("link")).expect("link"),
        Path::new("renamed/a.md")
    );
}

/// One process syncs a folder at a time, and a folder stays with its
/// project: a second sync, a push during a sync, or a checkout of another
/// project into it are refused with a message that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_has_one_sync_and_one_project() {
    let s = TestServer::start().await;
    let token = s.project_with_token("one").await;
    s.create_project("other").await;
    seed(&s, "one", &[("a.md", b"a\n")]).await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut a = Folder::new(&home, "a", &s, "one", &token);
    a.start();
    let pid = a.pid.expect("running").to_string();
    for args in [vec!["sync", &a.dir_arg()], vec!["push", &a.dir_arg()]] {
        let out = a.cli(&args);
        assert!(!out.status.success(), "{args:?} ran beside the sync: {}", both(&out));
        assert!(
            stderr(&out).contains(&format!("another contextfs process (pid {pid}) syncs")),
            "{}",
            both(&out)
        );
    }
    a.kill_9();
    let out = a
        .command(BIN)
        .args(["checkout", &a.dir_arg(), "--project", "other"])
        .env("CONTEXTFS_TOKEN", &s.admin)
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "checkout of another project succeeded: {}",
        both(&out)
    );
    assert!(stderr(&out).contains("is synced with project one"), "{}", both(&out));
    let status = a.status();
    assert!(
        status.contains("project one at") && status.contains("(no sync running)"),
        "{status}"
    );
}

/// A deletion carries its base version: a file edited elsewhere since this
/// folder last saw it is not deleted; it comes back with the other edit. A
/// file nobody else touched is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_loses_to_an_edit_made_elsewhere() {
    let s = TestServer::start().await;
    let token = s.project_with_token("del").await;
    seed(&s, "del", &[("edited.md", b"v1\n"), ("untouched.md", b"u\n")]).await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let a = Folder::new(&home, "a", &s, "del", &token);
    let out = a.cli(&["checkout", &a.dir_arg(), "--project", "del"]);
    assert!(out.status.success(), "checkout: {}", both(&out));
    let head = s.read("del", &s.admin, "edited.md", None).await.expect("head");
    s.commit("del", &s.admin, "edited.md", Some(head.version), b"v2 from elsewhere\n")
        .await
        .expect("remote edit");
    std::fs::remove_file(a.dir.join("edited.md")).expect("rm");
    std::fs::remove_file(a.dir.join("untouched.md")).expect("rm");
    let out = a.cli(&["push", &a.dir_arg()]);
    assert!(out.status.success(), "push: {}", both(&out));
    let text = stdout(&out);
    assert!(text.contains("restored edited.md"), "{text}");
    assert!(text.contains("deleted  untouched.md"), "{text}");
    assert_eq!(a.read("edited.md").as_deref(), Some(&b"v2 from elsewhere\n"[..]));
    let tree = server_tree(&s, "del").await;
    assert_eq!(tree.get("edited.md"), Some(&BlobHash::of(b"v2 from elsewhere\n")));
    assert!(!tree.contains_key("untouched.md"), "{tree:?}");
    // Nothing left to do: a second push has nothing to send.
    let out = a.cli(&["push", &a.dir_arg()]);
    assert!(out.status.success() && stdout(&out).is_empty(), "{}", both(&out));
}

/// Checking out a synced folder again fetches whatever it lacks, such as
/// files a removed ignore rule had kept out, and nothing it already has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checking_out_again_fetches_only_what_is_missing() {
    let s = TestServer::start().await;
    let token = s.project_with_token("again").await;
    seed(&s, "again", &[("keep.md", b"k\n"), ("build/out.txt", b"built\n")]).await;
    let home = Arc::new(tempfile::tempdir().expect("temp dir"));
    let a = Folder::new(&home, "a", &s, "again", &token);
    std::fs::create_dir_all(&a.dir).expect("mkdir");
    std::fs::write(a.dir.join(".contextfsignore"), "build/\n").expect("ignore file");
    let out = a.cli(&["checkout", &a.dir_arg(), "--project", "again"]);
    assert!(out.status.success(), "checkout: {}", both(&out));
    assert!(!a.dir.join("build/out.txt").exists(), "an ignored path was written");
    let inode = std::fs::metadata(a.dir.join("keep.md")).expect("keep.md").ino();
    std::fs::write(a.dir.join(".contextfsignore"), "").expect("ignore file");
    let out = a.cli(&["checkout", &a.dir_arg()]);
    assert!(out.status.success(), "checkout again: {}", both(&out));
    assert_eq!(
        stdout(&out).lines().filter(|l| l.starts_with("updated")).count(),
        1,
        "{}",
        both(&out)
    );
    assert_eq!(a.read("build/out.txt").as_deref(), Some(&b"built\n"[..]));
    assert_eq!(std::fs::metadata(a.dir.join("keep.md")).expect("keep.md").ino(), inode);
}
