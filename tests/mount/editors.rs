//! Editors' save patterns, git inside the mount, the skills tree.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_saves_add_one_version_to_the_same_node() {
    let s = TestServer::start().await;
    let p = "editors";
    let m = MountedWorkspace::create(&s, p, "agent-editor").await;
    for (path, text) in [
        ("vim.md", "vim v1\n"),
        ("py.md", "python v1\n"),
        ("sed.md", "sed v1\n"),
        ("tool.sh", "echo tool v1\n"),
    ] {
        s.commit(p, &s.admin, path, None, text.as_bytes()).await.expect("put");
        mount_shows(&m, path, text).await;
    }
    let history = |path: &'static str| s.history(p, &s.admin, path);

    // vim: rename to backup, write the new file and fsync it, delete the
    // backup. (In one process, as an editor does it: three shell commands can
    // take longer than the debounce on a loaded machine, and then the rename
    // to the backup reaches the server on its own.) The fsync of the new file
    // must not send it before the backup is gone.
    let before = history("vim.md").await;
    m.python(
        "import os\nos.rename('vim.md', 'vim.md~')\nwith open('vim.md', 'w') as f:\n    f.write('vim v2\\n')\n    f.flush()\n    os.fsync(f.fileno())\nos.unlink('vim.md~')\n",
        &[],
    )
    .finish();
    one_more_version(&s, &m, p, "vim.md", b"vim v2\n", &before, 1..=1).await;

    // Python: write a temp file, os.replace it over the original.
    let before = history("py.md").await;
    let out = m.python(
        "import os\nwith open('.py.md.tmp', 'w') as f:\n    f.write('python v2\\n')\nos.replace('.py.md.tmp', 'py.md')\n",
        &[],
    );
    out.finish();
    one_more_version(&s, &m, p, "py.md", b"python v2\n", &before, 1..=1).await;

    // sed -i: a temp file in the same directory renamed over the original.
    let before = history("sed.md").await;
    m.sh_ok("sed -i 's/v1/v2/' sed.md");
    one_more_version(&s, &m, p, "sed.md", b"sed v2\n", &before, 1..=1).await;

    // Written in place, then made executable: content and mode right.
    let before = history("tool.sh").await;
    m.sh_ok("printf 'echo tool v2\\n' > tool.sh && chmod 755 tool.sh && ./tool.sh");
    let after = one_more_version(&s, &m, p, "tool.sh", b"echo tool v2\n", &before, 1..=2).await;
    assert_eq!(after[0].mode, 0o755, "{after:#?}");

    let t = tree_map(&s, p).await.unwrap();
    let paths: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        ["py.md", "sed.md", "tool.sh", "vim.md"],
        "no temp names left on the server"
    );
    assert_eq!(
        m.sh_ok("ls -A | grep -v '^skills$'"),
        "py.md\nsed.md\ntool.sh\nvim.md\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_init_add_commit_inside_the_mount() {
    let s = TestServer::start().await;
    let p = "gitrepo";
    let m = MountedWorkspace::create(&s, p, "agent-git").await;
    m.sh_ok(
        "mkdir repo && cd repo && printf '# Repo\\n' > README.md && mkdir src && printf 'fn main() {}\\n' > src/main.rs \
         && git -c init.defaultBranch=main init -q && git add -A && git commit -q -m 'first commit in the mount'",
    );
    let log = m.sh_ok("cd repo && git log --oneline");
    assert!(log.contains("first commit in the mount"), "{log}");
    assert_eq!(
        m.sh_ok("cd repo && git status --porcelain"),
        "",
        "the work tree is clean"
    );
    let head = m.sh_ok("cd repo && git rev-parse HEAD");
    let fsck = m.sh("cd repo && git fsck --full");
    assert!(fsck.status.success(), "git fsck: {}", both(&fsck));

    m.wait_synced().await;
    server_has(&s, p, "repo/.git/HEAD", b"ref: refs/heads/main\n").await;
    server_has(&s, p, "repo/.git/refs/heads/main", head.as_bytes()).await;
    let t = tree_map(&s, p).await.unwrap();
    for path in [
        "repo/README.md",
        "repo/src/main.rs",
        "repo/.git/config",
        "repo/.git/index",
    ] {
        assert!(t.contains_key(path), "{path} missing on the server: {:?}", t.keys());
    }
    let objects = t
        .keys()
        .filter(|k| k.starts_with("repo/.git/objects/") && t[*k].kind == NodeKind::File)
        .count();
    assert!(
        objects >= 5,
        "blob x2, tree x2, commit: only {objects} objects on the server"
    );
    assert!(
        !t.keys().any(|k| k.ends_with(".lock") || k.contains("tmp_obj_")),
        "git's temp files reached the server: {:?}",
        t.keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_skills_are_readable_and_read_only() {
    let s = TestServer::start().await;
    let p = "skilled";
    let token = s.project_with_token(p).await;
    let skill_md = "---\nname: pdf\ndescription: Read and fill PDF forms\n---\n# PDF\nUse the scripts.\n";
    let skills = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(skills.path().join("pdf/scripts")).unwrap();
    std::fs::write(skills.path().join("pdf/SKILL.md"), skill_md).unwrap();
    std::fs::write(skills.path().join("pdf/scripts/fill.sh"), "#!/bin/sh\necho filled\n").unwrap();
    s.publish_skills(skills.path());

    let home = tempfile::tempdir().expect("temp dir");
    let m = MountedWorkspace::mount_at(Arc::new(home), "mnt", &s.mount_url(), p, &token, "agent-skills", &[]);
    assert_eq!(m.sh_ok("cat skills/pdf/SKILL.md"), skill_md);
    assert_eq!(m.sh_ok("ls skills/pdf"), "SKILL.md\nscripts\n");

    for script in [
        "echo x > skills/pdf/SKILL.md",
        "echo x >> skills/pdf/SKILL.md",
        "touch skills/pdf/new.md",
        "rm -f skills/pdf/SKILL.md",
        "mkdir skills/other",
        "mv skills/pdf pdf",
        "chmod 600 skills/pdf/SKILL.md",
    ] {
        let out = m.sh(script);
        assert!(!out.status.success(), "`{script}` succeeded under skills/");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
            "`{script}`: {}",
            both(&out)
        );
    }
    let lines = m
        .python(
            &format!(
                "{TRY_OPS}\nattempt('write', lambda: os.open('skills/pdf/SKILL.md', os.O_WRONLY))\n\
             attempt('create', lambda: os.open('skills/pdf/x.md', os.O_WRONLY | os.O_CREAT, 0o644))\n\
             attempt('unlink', lambda: os.unlink('skills/pdf/SKILL.md'))\n\
             attempt('rmdir', lambda: os.rmdir('skills/pdf/scripts'))\n\
             attempt('rename', lambda: os.rename('skills/pdf/SKILL.md', 'skills/pdf/S.md'))\n"
            ),
            &[],
        )
        .output_lines();
    assert_eq!(
        lines,
        [
            "write EROFS",
            "create EROFS",
            "unlink EROFS",
            "rmdir EROFS",
            "rename EROFS"
        ]
    );
    assert_eq!(m.sh_ok("cat skills/pdf/SKILL.md"), skill_md, "unchanged");
    assert_eq!(m.sh_ok("sh skills/pdf/scripts/fill.sh"), "filled\n");
    // Nothing under skills/ reached the project.
    m.wait_synced().await;
    let t = tree_map(&s, p).await.unwrap();
    assert!(t.is_empty(), "the project got entries: {:?}", t.keys());

    // Publishing again reaches the running mount, no remount needed.
    let skill_v2 = "---\nname: pdf\ndescription: Read and fill PDF forms\n---\n# PDF v2\n";
    std::fs::write(skills.path().join("pdf/SKILL.md"), skill_v2).unwrap();
    std::fs::create_dir_all(skills.path().join("xlsx")).unwrap();
    std::fs::write(
        skills.path().join("xlsx/SKILL.md"),
        "---\nname: xlsx\ndescription: Spreadsheets\n---\n# XLSX\n",
    )
    .unwrap();
    s.publish_skills(skills.path());
    mount_shows(&m, "skills/pdf/SKILL.md", skill_v2).await;
    assert_eq!(m.sh_ok("ls skills"), "pdf\nxlsx\n");
}
