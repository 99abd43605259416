//! Shell basics, bad input and remote changes, unsupported ioctls, `status` in a pipe.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_basics_land_on_the_server_with_the_agent_id() {
    let s = TestServer::start().await;
    let p = "shell";
    let agent = "agent-shell-1";
    let m = MountedWorkspace::create(&s, p, agent).await;
    // Written by the admin after the mount started: arrives via the change feed.
    s.commit(p, &s.admin, "hello.md", None, b"# Hello\nfrom the API\n")
        .await
        .expect("put hello.md");
    mount_shows(&m, "hello.md", "# Hello\nfrom the API\n").await;
    assert!(m.sh_ok("ls").lines().any(|l| l == "hello.md"));

    // echo > and >>
    assert_eq!(m.sh_ok("echo hi > f && echo more >> f && cat f"), "hi\nmore\n");
    server_has(&s, p, "f", b"hi\nmore\n").await;

    // A command that writes its output late: the shell's redirection closes
    // a duplicate of the new file (a commit of it, empty) long before that.
    m.sh_ok("(sleep 1; echo generated) > late.md");
    server_has(&s, p, "late.md", b"generated\n").await;
    m.wait_synced().await;
    assert_eq!(m.sh_ok("cat late.md"), "generated\n");
    assert_eq!(s.read_bytes(p, &s.admin, "late.md").await, b"generated\n");

    // mkdir -p
    m.sh_ok("mkdir -p a/b/c && test -d a/b/c");
    eventually("a/b/c is a directory on the server", || async {
        let t = tree_map(&s, p).await?;
        match ["a", "a/b", "a/b/c"]
            .iter()
            .find(|d| t.get(**d).is_none_or(|e| e.kind != NodeKind::Dir))
        {
            None => Ok(()),
            Some(d) => Err(format!("{d} missing: {:?}", t.keys().collect::<Vec<_>>())),
        }
    })
    .await;

    // mv keeps the node
    let node_of_f = tree_map(&s, p).await.unwrap()["f"].id;
    assert_eq!(m.sh_ok("mv f a/b/c/g && test ! -e f && cat a/b/c/g"), "hi\nmore\n");
    eventually("f moved to a/b/c/g on the server", || async {
        let t = tree_map(&s, p).await?;
        match (t.get("f"), t.get("a/b/c/g")) {
            (None, Some(g)) if g.id == node_of_f && g.hash == BlobHash::of(b"hi\nmore\n") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // cp -r of a small source tree, diff -r back, same files on the server.
    let snapshot = tempfile::tempdir().expect("temp dir");
    let src = snapshot.path().join("src");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
        .arg(&src)
        .status()
        .expect("cp");
    assert!(copied.success());
    let expected = files_under(&src);
    assert!(expected.len() > 10, "the source tree is too small to mean much");
    let src = src.display().to_string();
    m.sh_ok(&format!("cp -r {src} srccopy && diff -r {src} srccopy"));
    eventually("the copied tree is on the server", || async {
        let t = tree_map(&s, p).await?;
        let on_server: BTreeMap<String, (u64, BlobHash)> = t
            .values()
            .filter(|e| e.kind == NodeKind::File)
            .filter_map(|e| {
                e.path
                    .strip_prefix("srccopy/")
                    .map(|rel| (rel.to_string(), (e.size, e.hash.clone())))
            })
            .collect();
        if on_server == expected {
            Ok(())
        } else {
            let missing: Vec<_> = expected.keys().filter(|k| !on_server.contains_key(*k)).collect();
            Err(format!(
                "{} of {} files; missing {missing:?}",
                on_server.len(),
                expected.len()
            ))
        }
    })
    .await;

    // rm -r
    m.sh_ok("rm -r srccopy/merge a/b && test ! -e a/b && test ! -e srccopy/merge && test -d a");
    eventually("rm -r reached the server", || async {
        let t = tree_map(&s, p).await?;
        let left: Vec<&String> = t
            .keys()
            .filter(|k| k.starts_with("srccopy/merge") || k.starts_with("a/b"))
            .collect();
        if left.is_empty() && t.contains_key("a") && t.contains_key("srccopy/lib.rs") {
            Ok(())
        } else {
            Err(format!("still there: {left:?}"))
        }
    })
    .await;

    // chmod +x, run it, mode 755 on the server
    let script = "#!/bin/sh\necho script ran\n";
    assert_eq!(
        m.sh_ok("printf '#!/bin/sh\\necho script ran\\n' > run.sh && chmod +x run.sh && ./run.sh"),
        "script ran\n"
    );
    assert_eq!(m.sh_ok("stat -c %a run.sh"), "755\n");
    eventually("run.sh is 0755 on the server", || async {
        let t = tree_map(&s, p).await?;
        match t.get("run.sh") {
            Some(e) if e.mode == 0o755 && e.hash == BlobHash::of(script.as_bytes()) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Every write the mount made carries its agent id.
    m.wait_synced().await;
    let log = m.cli_ok(&["log", "run.sh"]);
    let rows: Vec<&str> = log.lines().skip(1).collect();
    assert!(!rows.is_empty(), "{log}");
    assert!(rows.iter().all(|r| r.contains(agent)), "contextfs log run.sh:\n{log}");
    let audit: AuditPage = send(
        s.get(&s.purl(p, "/audit"), &s.admin)
            .query(&[("since", "0"), ("limit", "1000")]),
    )
    .await
    .expect("audit");
    let by_mount: Vec<&AuditEntry> = audit.entries.iter().filter(|e| e.actor != "admin").collect();
    assert!(
        by_mount.len() > expected.len(),
        "only {} audited mutations from the mount",
        by_mount.len()
    );
    for e in &by_mount {
        assert_eq!(
            e.agent_id.as_deref(),
            Some(agent),
            "written without the agent id: {e:?}"
        );
    }
    for path in ["srccopy/lib.rs", "a", "run.sh"] {
        for v in s.history(p, &s.admin, path).await {
            assert_eq!(v.agent_id.as_deref(), Some(agent), "{path} v{}", v.version);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_right_errno_and_remote_changes_appear() {
    let s = TestServer::start().await;
    let p = "strict";
    let m = MountedWorkspace::create(&s, p, "agent-strict").await;
    m.sh_ok("echo content > f.txt");

    let long = "n".repeat(256);
    let max = "m".repeat(255);
    let lines = m
        .python(
            &format!(
                "{TRY_OPS}\nattempt('long', lambda: os.close(os.open('{long}', os.O_WRONLY | os.O_CREAT, 0o644)))\n\
             attempt('longdir', lambda: os.mkdir('{long}'))\n\
             attempt('max', lambda: os.close(os.open('{max}', os.O_WRONLY | os.O_CREAT, 0o644)))\n\
             attempt('link', lambda: os.link('f.txt', 'hard.txt'))\n\
             attempt('fifo', lambda: os.mkfifo('pipe'))\n\
             attempt('mknod', lambda: os.mknod('node', 0o600 | 0o100000))\n"
            ),
            &[],
        )
        .output_lines();
    assert_eq!(
        lines,
        [
            "long ENAMETOOLONG",
            "longdir ENAMETOOLONG",
            "max OK",
            "link EPERM",
            "fifo EPERM",
            "mknod EPERM"
        ]
    );
    let ln = m.sh("ln f.txt hard2.txt");
    assert!(!ln.status.success());
    assert!(
        String::from_utf8_lossy(&ln.stderr).contains("Operation not permitted"),
        "{}",
        both(&ln)
    );

    eventually("getfattr says clean", || async {
        let out = m.sh("getfattr --only-values -n user.contextfs.status f.txt");
        if stdout(&out) == "clean" {
            Ok(())
        } else {
            Err(both(&out))
        }
    })
    .await;
    let node = m.sh_ok("getfattr --only-values -n user.contextfs.node f.txt");
    let head = server_has(&s, p, "f.txt", b"content\n").await;
    assert_eq!(node, head.node.to_string());
    assert_eq!(m.sh_ok("getfattr --only-values -n user.contextfs.version f.txt"), "1");

    // A change made elsewhere shows up in the mount.
    s.commit(p, &s.admin, "f.txt", Some(head.version), b"changed remotely\n")
        .await
        .expect("remote edit");
    mount_shows(&m, "f.txt", "changed remotely\n").await;
    assert_eq!(m.sh_ok("getfattr --only-values -n user.contextfs.version f.txt"), "2");
    s.commit(p, &s.admin, "remote/new.md", None, b"new from elsewhere\n")
        .await
        .expect("remote create");
    mount_shows(&m, "remote/new.md", "new from elsewhere\n").await;

    m.wait_synced().await;
    let t = tree_map(&s, p).await.unwrap();
    let paths: Vec<&str> = t.keys().map(String::as_str).collect();
    let mut expected = vec![max.as_str(), "f.txt", "remote", "remote/new.md"];
    expected.sort();
    assert_eq!(paths, expected, "no refused entry reached the server");
}

/// `isatty()` on every Python `open()` sends TCGETS: it gets ENOTTY, as on a
/// local disk, and the mount log names the command once, not once per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_ioctls_get_enotty_and_one_log_line() {
    let s = TestServer::start().await;
    let m = MountedWorkspace::create(&s, "ioctl", "agent-ioctl").await;
    let out = m.sh_ok(
        r#"python3 -c "
import errno, fcntl, termios
for i in range(200):
    with open(f'f{i % 5}', 'w') as f:
        assert not f.isatty()
        try:
            fcntl.ioctl(f.fileno(), termios.TCGETS, bytes(64))
            print('TCGETS succeeded')
        except OSError as e:
            if i == 0: print(errno.errorcode[e.errno])
""#,
    );
    assert_eq!(out, "ENOTTY\n");
    let log = m.log();
    assert!(
        !log.contains("Not Implemented] ioctl"),
        "fuser's per-call warning is back:\n{log}"
    );
    let lines = log.lines().filter(|l| l.contains("unsupported ioctl")).count();
    assert_eq!(lines, 1, "one line for TCGETS, however often it is sent:\n{log}");
}

/// `contextfs status | head` ends quietly, as `ls | head` does: status is
/// killed by SIGPIPE once head has its line, and does not panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_piped_into_head_ends_quietly() {
    let s = TestServer::start().await;
    let m = MountedWorkspace::create(&s, "piped", "agent-piped").await;
    let dir = m
        .dir
        .join("a-directory-with-a-long-name-so-the-listing-outgrows-a-pipe");
    std::fs::create_dir(&dir).expect("mkdir");
    for i in 0..1500 {
        std::fs::write(dir.join(format!("file-{i:05}.txt")), b"x").expect("write");
    }
    m.wait_synced().await;
    let script = format!(
        "{} status {} | head -n 1; echo \"status exit: ${{PIPESTATUS[0]}}\"",
        env!("CARGO_BIN_EXE_contextfs"),
        m.dir.display()
    );
    let out = m.command("bash").args(["-c", &script]).output().expect("run bash");
    let (out_text, err_text) = (stdout(&out), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out_text.starts_with("project piped"), "{out_text}");
    assert!(
        out_text.ends_with("status exit: 141\n"),
        "killed by SIGPIPE (128 + 13):\n{out_text}"
    );
    assert!(!err_text.contains("panicked"), "{err_text}");
}

/// Log rotation and a folder moved aside and made again, all in one drain
/// round: each rename lands as a rename (the file keeps its node, so its
/// history), none is refused or sent again as a new file, and the new
/// folder is a new node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_that_free_each_others_paths_land_as_renames() {
    let s = TestServer::start().await;
    let p = "rotate";
    let m = MountedWorkspace::create(&s, p, "agent-rotate").await;
    m.sh_ok("echo 0 > log && echo 1 > log.1 && echo 2 > log.2 && mkdir b && echo old > b/f");
    m.wait_synced().await;
    let before = tree_map(&s, p).await.unwrap();
    m.sh_ok("mv log.2 log.3 && mv log.1 log.2 && mv log log.1 && echo 3 > log && mv b c && mkdir b && echo new > b/f");
    m.wait_synced().await;
    let after = tree_map(&s, p).await.unwrap();
    for (old, new) in [
        ("log.2", "log.3"),
        ("log.1", "log.2"),
        ("log", "log.1"),
        ("b", "c"),
        ("b/f", "c/f"),
    ] {
        assert_eq!(
            after[new].id, before[old].id,
            "{old} -> {new} is not a rename: {after:#?}"
        );
    }
    assert_ne!(after["b"].id, before["b"].id, "the new b is a new node");
    for (path, bytes) in [
        ("log.3", "2\n"),
        ("log.2", "1\n"),
        ("log.1", "0\n"),
        ("log", "3\n"),
        ("c/f", "old\n"),
        ("b/f", "new\n"),
    ] {
        server_has(&s, p, path, bytes.as_bytes()).await;
    }
    let history = s.history(p, &s.admin, "log.3").await;
    assert!(history.len() >= 2, "log.3 keeps the history of log.2: {history:#?}");
}
