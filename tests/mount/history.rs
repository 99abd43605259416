//! Past versions inside the mount: `.contextfs/history/<path>/<N>` (issue
//! 17 part 7), read with plain shell tools.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::*;

const H: &str = ".contextfs/history";

/// Writes `bytes` to `path` through the mount and waits until the server
/// has them as a version of their own.
async fn write_version(s: &TestServer, m: &MountedWorkspace, p: &str, path: &str, bytes: &str) {
    m.sh_ok(&format!("printf '%s' '{bytes}' > {path}"));
    server_has(s, p, path, bytes.as_bytes()).await;
    m.wait_synced().await;
}

fn commit_time(v: &VersionInfo) -> SystemTime {
    let t = chrono::DateTime::parse_from_rfc3339(&v.created_at).expect("an RFC 3339 time");
    SystemTime::from(t)
}

fn mtime(m: &MountedWorkspace, path: &str) -> SystemTime {
    std::fs::metadata(m.dir.join(path))
        .and_then(|md| md.modified())
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
}

/// Fails with the shell's message, which must name `errno_text`.
fn fails_with(m: &MountedWorkspace, script: &str, errno_text: &str) {
    let out = m.sh(script);
    assert!(!out.status.success(), "`{script}` succeeded: {}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(errno_text),
        "`{script}` should fail with {errno_text:?}: {}",
        both(&out)
    );
}

/// (name, size) of every file in the cache's blob folders, and whether its
/// temp folder is empty.
fn cached_blobs(m: &MountedWorkspace) -> (BTreeSet<(String, u64)>, bool) {
    let root = m.cache_dir();
    let mut out = BTreeSet::new();
    for prefix in std::fs::read_dir(root.join("blobs")).expect("cache blobs").flatten() {
        for blob in std::fs::read_dir(prefix.path()).expect("cache prefix").flatten() {
            let size = blob.metadata().expect("stat blob").len();
            out.insert((blob.file_name().to_string_lossy().to_string(), size));
        }
    }
    let tmp_empty = std::fs::read_dir(root.join("tmp")).map_or(true, |mut d| d.next().is_none());
    (out, tmp_empty)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_versions_are_read_only_files_under_contextfs_history() {
    let s = TestServer::start().await;
    let p = "history";
    let m = MountedWorkspace::create(&s, p, "agent-history").await;
    m.sh_ok("mkdir -p notes a/b/c");
    let texts = ["first plan\n", "first plan\nsecond step\n", "a rewritten plan\n"];
    for text in texts {
        write_version(&s, &m, p, "notes/plan.md", text).await;
    }
    write_version(&s, &m, p, "a/b/c/deep.txt", "deep\n").await;
    let versions = s.history(p, &s.admin, "notes/plan.md").await;
    assert_eq!(versions.len(), 3, "{versions:#?}");

    // cat of each version, ls of the versions, diff between two of them.
    for (n, text) in texts.iter().enumerate() {
        assert_eq!(m.sh_ok(&format!("cat {H}/notes/plan.md/{}", n + 1)), *text);
    }
    assert_eq!(m.sh_ok(&format!("ls {H}/notes/plan.md")), "1\n2\n3\n");
    let diff = m.sh(&format!("diff {H}/notes/plan.md/1 {H}/notes/plan.md/2"));
    assert_eq!(diff.status.code(), Some(1), "{}", both(&diff));
    assert!(stdout(&diff).contains("> second step"), "{}", both(&diff));
    assert_eq!(m.sh_ok(&format!("cat {H}/a/b/c/deep.txt/1")), "deep\n");
    assert_eq!(m.sh_ok(&format!("ls {H}")), "a\nnotes\n", "no skills/, no .contextfs");
    assert_eq!(m.sh_ok(&format!("ls {H}/a/b")), "c\n");

    // Each version's mtime is its commit time; the folder's, the newest's.
    for v in &versions {
        let path = format!("{H}/notes/plan.md/{}", v.version);
        assert_eq!(mtime(&m, &path), commit_time(v), "{path}");
        assert_eq!(m.sh_ok(&format!("stat -c %s {path}")).trim(), v.size.to_string());
    }
    assert_eq!(mtime(&m, &format!("{H}/notes/plan.md")), commit_time(&versions[0]));

    // Hidden from the root's listing, reachable by name.
    let root = m.sh_ok("ls -a");
    assert!(!root.lines().any(|l| l == ".contextfs"), "{root}");
    assert_eq!(m.sh_ok("ls -a .contextfs"), ".\n..\nhistory\n");
    assert_eq!(m.sh_ok("cd .contextfs/history/notes && cat plan.md/2"), texts[1]);

    // Bad input.
    fails_with(&m, &format!("cat {H}/notes/plan.md/4"), "No such file or directory");
    fails_with(&m, &format!("cat {H}/notes/plan.md/0"), "No such file or directory");
    fails_with(&m, &format!("cat {H}/notes/plan.md/first"), "No such file or directory");
    fails_with(&m, &format!("ls {H}/notes/unknown.md"), "No such file or directory");
    fails_with(&m, &format!("ls {H}/unknown"), "No such file or directory");
    fails_with(&m, "ls .contextfs/other", "No such file or directory");

    // Nothing under it can be written, and .contextfs itself neither.
    for script in [
        format!("echo x > {H}/notes/plan.md/1"),
        format!("echo x >> {H}/notes/plan.md/1"),
        format!("echo x > {H}/notes/plan.md/9"),
        format!("touch {H}/notes/new.md"),
        format!("mkdir {H}/notes/d"),
        format!("rm -f {H}/notes/plan.md/1"),
        format!("rmdir {H}/a/b/c"),
        format!("mv {H}/notes/plan.md/1 stolen"),
        format!("cp notes/plan.md {H}/notes/copy.md"),
        format!("mv notes/plan.md {H}/"),
        format!("chmod 600 {H}/notes/plan.md/1"),
        format!("touch -d 2020-01-01 {H}/notes/plan.md/1"),
        format!("truncate -s 0 {H}/notes/plan.md/1"),
        format!("ln -s x {H}/notes/link"),
        format!("setfattr -n user.x -v 1 {H}/notes/plan.md/1"),
        "rmdir .contextfs/history".to_string(),
        "rmdir .contextfs".to_string(),
        "mv .contextfs elsewhere".to_string(),
        "mv notes .contextfs".to_string(),
        "rm -rf .contextfs".to_string(),
    ] {
        fails_with(&m, &script, "Read-only file system");
    }
    fails_with(&m, "mkdir .contextfs", "File exists");
    assert_eq!(m.sh_ok("cat notes/plan.md"), texts[2], "the file itself is untouched");

    // A new commit shows up in the listing within about a second.
    s.commit(p, &s.admin, "notes/plan.md", Some(3), b"from the API\n")
        .await
        .expect("commit version 4");
    eventually("version 4 is listed", || async {
        let out = m.sh(&format!("ls {H}/notes/plan.md"));
        match stdout(&out).as_str() {
            "1\n2\n3\n4\n" => Ok(()),
            other => Err(format!("{other:?} {}", both(&out))),
        }
    })
    .await;
    assert_eq!(m.sh_ok(&format!("cat {H}/notes/plan.md/4")), "from the API\n");

    // Nothing of it reached the server, nothing is queued.
    m.wait_synced().await;
    let tree = tree_map(&s, p).await.expect("tree");
    assert!(
        tree.keys().all(|k| !k.starts_with(".contextfs")),
        "{:?}",
        tree.keys().collect::<Vec<_>>()
    );
    assert_eq!(s.history(p, &s.admin, "notes/plan.md").await.len(), 4);

    // No extra storage: the cache holds each blob once, named by its hash,
    // and nothing else.
    let mut known: BTreeSet<(String, u64)> = BTreeSet::new();
    for path in ["notes/plan.md", "a/b/c/deep.txt"] {
        for v in s.history(p, &s.admin, path).await {
            known.insert((v.hash.to_string(), v.size));
        }
    }
    let (cached, tmp_empty) = cached_blobs(&m);
    assert!(tmp_empty, "leftover temp files in the cache");
    assert!(cached.is_subset(&known), "cache {cached:?}\nversions {known:?}");
    for v in s.history(p, &s.admin, "notes/plan.md").await {
        assert!(
            cached.contains(&(v.hash.to_string(), v.size)),
            "version {} read but not cached",
            v.version
        );
    }
    for n in 1..=4 {
        m.sh_ok(&format!("cat {H}/notes/plan.md/{n} > /dev/null"));
    }
    assert_eq!(cached_blobs(&m).0, cached, "reading again stores nothing");

    // Retention: a pruned version is ENOENT, as a missing one.
    let policy = RetentionRequest {
        keep_days: None,
        keep_versions: Some(2),
    };
    let _: RetentionInfo = send(
        s.req(reqwest::Method::PUT, &s.purl(p, "/retention"), Some(&s.admin))
            .json(&policy),
    )
    .await
    .expect("PUT retention");
    let _: GcReport = send(s.post(&s.url("/gc"), &s.admin, &GcRequest { dry_run: false }))
        .await
        .expect("POST /gc");
    eventually("versions 1 and 2 are pruned from the listing", || async {
        let out = m.sh(&format!("ls {H}/notes/plan.md"));
        match stdout(&out).as_str() {
            "3\n4\n" => Ok(()),
            other => Err(format!("{other:?} {}", both(&out))),
        }
    })
    .await;
    // The kernel may keep a name it looked up for its entry TTL (1 s).
    eventually("a pruned version is ENOENT", || async {
        let out = m.sh(&format!("cat {H}/notes/plan.md/1"));
        let refused =
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("No such file or directory");
        refused.then_some(()).ok_or_else(|| both(&out))
    })
    .await;
    assert_eq!(m.sh_ok(&format!("cat {H}/notes/plan.md/3")), texts[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_files_read_only_mounts_an_own_contextfs_and_a_server_down() {
    let mut s = TestServer::start().await;
    let p = "history-edges";
    let m = MountedWorkspace::create(&s, p, "agent-edges").await;
    write_version(&s, &m, p, "kept.md", "kept\n").await;
    write_version(&s, &m, p, "gone.md", "soon gone\n").await;
    m.sh_ok("rm gone.md");
    eventually("gone.md is deleted on the server", || async {
        let tree = tree_map(&s, p).await?;
        match tree.contains_key("gone.md") {
            false => Ok(()),
            true => Err("still there".to_string()),
        }
    })
    .await;
    // A deleted file's versions stay reachable by name, not listed.
    assert_eq!(m.sh_ok(&format!("cat {H}/gone.md/1")), "soon gone\n");
    assert_eq!(m.sh_ok(&format!("ls {H}/gone.md")), "1\n", "the deletion is no file");
    assert_eq!(m.sh_ok(&format!("ls {H}")), "kept.md\n");

    // A read-only mount shows history too.
    let ro = MountedWorkspace::mount_at(
        m.home.clone(),
        "ro",
        &m.server,
        p,
        &m.token,
        "agent-ro",
        &["--read-only"],
    );
    assert_eq!(ro.sh_ok(&format!("cat {H}/kept.md/1")), "kept\n");
    fails_with(&ro, &format!("echo x > {H}/kept.md/1"), "Read-only file system");

    // A project with its own top-level .contextfs: the project's entry wins.
    let own = "history-own";
    let token = s.project_with_token(own).await;
    s.commit(own, &s.admin, ".contextfs/config.json", None, b"{}\n")
        .await
        .expect("commit .contextfs/config.json");
    let o = MountedWorkspace::mount_at(m.home.clone(), "own", &m.server, own, &token, "agent-own", &[]);
    assert!(o.sh_ok("ls -a").lines().any(|l| l == ".contextfs"));
    assert_eq!(o.sh_ok("ls .contextfs"), "config.json\n");
    fails_with(&o, &format!("ls {H}"), "No such file or directory");
    o.sh_ok("echo '{\"a\": 1}' > .contextfs/config.json");
    server_has(&s, own, ".contextfs/config.json", b"{\"a\": 1}\n").await;
    assert!(
        o.log().contains("own top-level `.contextfs` entry"),
        "no warning in the log:\n{}",
        o.log()
    );

    // With the server down: lists fetched before still show, a path never
    // asked about fails with EIO at once, and the rest of the mount works.
    m.sh_ok(&format!("ls {H}/kept.md"));
    s.stop().await;
    assert_eq!(m.sh_ok(&format!("ls {H}/kept.md")), "1\n");
    assert_eq!(m.sh_ok(&format!("cat {H}/kept.md/1")), "kept\n");
    fails_with(&m, &format!("ls {H}/never.md"), "Input/output error");
    assert_eq!(m.sh_ok("cat kept.md"), "kept\n");
    m.sh_ok("echo offline > offline.md");
    s.restart_on_same_port().await;
    server_has(&s, p, "offline.md", b"offline\n").await;
}
