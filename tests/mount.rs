//! Integration tests of `contextfs mount` through a real FUSE mount: shell
//! tools, editors and git work in the folder, every change lands on a real
//! `contextfs serve`, concurrent mounts merge, and nothing written is lost
//! when the server is down or the mount is killed.
//!
//! Every test starts its own server, project and temp directories (its own
//! XDG_STATE_HOME / XDG_CACHE_HOME), so the file runs safely with
//! `--test-threads=N`. Without /dev/fuse the tests FAIL: a skipped mount test
//! proves nothing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use contextfs::api::*;
use contextfs::model::BlobHash;

fn ten_lines() -> String {
    (1..=10).map(|i| format!("line {i}\n")).collect()
}

fn edit_line(text: &str, n: usize, new: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == n {
                format!("{new}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Opens a file read-write and reads it (`ready`); after a line on stdin
/// replaces line N and writes it through without closing (`written`); after
/// another line closes it (`closed`).
const HOLD_OPEN_EDIT: &str = r#"
import sys
path, n, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
f = open(path, "r+")
lines = f.read().split("\n")
print("ready", flush=True)
sys.stdin.readline()
lines[n - 1] = text
f.seek(0)
f.truncate()
f.write("\n".join(lines))
f.flush()
print("written", flush=True)
sys.stdin.readline()
f.close()
print("closed", flush=True)
"#;

// ---------------------------------------------------------------------------
// 1. Shell basics
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 2. Two mounts of one project
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mounts_merge_edits_of_one_file_and_share_the_cache() {
    let mut s = TestServer::start().await;
    let p = "pair";
    let original = ten_lines();
    let a = MountedWorkspace::create(&s, p, "agent-a").await;
    s.commit(p, &s.admin, "doc.md", None, original.as_bytes())
        .await
        .expect("put doc.md");
    let b = a.another("mnt-b", "agent-b");
    mount_shows(&a, "doc.md", &original).await;
    mount_shows(&b, "doc.md", &original).await;

    // Both read version 1, then edit different lines at the same moment.
    let mut edit_a = a.python(HOLD_OPEN_EDIT, &["doc.md", "2", "line 2 edited by A"]);
    let mut edit_b = b.python(HOLD_OPEN_EDIT, &["doc.md", "9", "line 9 edited by B"]);
    edit_a.expect_line("ready");
    edit_b.expect_line("ready");
    edit_a.send("go");
    edit_b.send("go");
    edit_a.expect_line("written");
    edit_b.expect_line("written");
    edit_a.send("close");
    edit_b.send("close");
    edit_a.expect_line("closed");
    edit_b.expect_line("closed");
    edit_a.finish();
    edit_b.finish();

    let merged = edit_line(&edit_line(&original, 2, "line 2 edited by A"), 9, "line 9 edited by B");
    server_has(&s, p, "doc.md", merged.as_bytes()).await;
    let history = s.history(p, &s.admin, "doc.md").await;
    let statuses: Vec<VersionStatus> = history.iter().map(|v| v.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == VersionStatus::Merged).count(),
        1,
        "exactly one merged version: {history:#?}"
    );
    assert_eq!(
        history.len(),
        3,
        "original, one clean edit, one merged edit: {history:#?}"
    );
    let agents: Vec<Option<&str>> = history.iter().map(|v| v.agent_id.as_deref()).collect();
    assert!(
        agents.contains(&Some("agent-a")) && agents.contains(&Some("agent-b")),
        "{agents:?}"
    );
    mount_shows(&a, "doc.md", &merged).await;
    mount_shows(&b, "doc.md", &merged).await;

    // The shared cache: a blob A read is served to B without the server.
    let shared: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let hash = s
        .commit(p, &s.admin, "data/shared.bin", None, &shared)
        .await
        .expect("put shared.bin")
        .hash;
    for m in [&a, &b] {
        eventually("both mounts list data/shared.bin", || async {
            let out = m.sh("stat -c %s data/shared.bin");
            if stdout(&out) == format!("{}\n", shared.len()) {
                Ok(())
            } else {
                Err(both(&out))
            }
        })
        .await;
    }
    let cached = a
        .cache_dir()
        .join("blobs")
        .join(&hash.as_str()[..2])
        .join(hash.as_str());
    assert!(!cached.exists(), "nothing has read shared.bin yet");
    let read_a = std::fs::read(a.dir.join("data/shared.bin")).expect("read in A");
    assert_eq!(read_a, shared);
    assert_eq!(std::fs::read(&cached).expect("the blob is in the shared cache"), shared);
    let copies = walk_names(&a.cache_dir().join("blobs"))
        .into_iter()
        .filter(|n| n == hash.as_str())
        .count();
    assert_eq!(copies, 1, "exactly one cache file for the blob");
    // With the server gone, B can only get the bytes from the shared cache.
    s.stop().await;
    let read_b = std::fs::read(b.dir.join("data/shared.bin")).expect("read in B with the server stopped");
    assert_eq!(read_b, shared);
    s.restart_on_same_port().await;
}

/// A large file this mount wrote is read by kernel passthrough from the
/// first open after its commit: when the server acknowledged it, the
/// journal's sealed staging file became the cache's blob by a link (no
/// copy), in the same step that emptied the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_this_mount_wrote_is_read_by_passthrough_from_the_first_open_after_its_commit() {
    let s = TestServer::start().await;
    let m = MountedWorkspace::create(&s, "written", "agent-written").await;
    let status = m.status();
    assert!(status.contains("kernel passthrough: every clean file"), "{status}");
    let size = 32usize << 20;
    let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.dir.join("big.bin"), &bytes).expect("write");
    let closed_at = std::time::SystemTime::now();
    m.wait_synced().await;
    // No second copy: the cache's file was born with the write, before the
    // commit (a copy made at the acknowledgement would be younger).
    let cached = files_named(&m.cache_dir(), BlobHash::of(&bytes).as_str());
    assert_eq!(cached.len(), 1, "the blob is in the cache: {cached:?}");
    let born = std::fs::metadata(&cached[0])
        .and_then(|m| m.created())
        .expect("birth time");
    assert!(
        born <= closed_at,
        "the cache holds a copy made after the file was closed"
    );
    let script = r#"
import errno, os
size = 32 << 20
r = os.open('big.bin', os.O_RDONLY)
data = b''.join(iter(lambda: os.read(r, 1 << 20), b''))
print('read', len(data), data == bytes(i % 251 for i in range(size)))
# The kernel refuses other opens while a passthrough reader holds the file.
try:
    os.open('big.bin', os.O_WRONLY)
    print('writer opened: the first open was not a passthrough read')
except OSError as e:
    print('writer', errno.errorcode[e.errno])
os.close(r)
"#;
    assert_eq!(
        m.python(script, &[]).output_lines(),
        ["read 33554432 True", "writer ETXTBSY"]
    );
    server_has(&s, "written", "big.bin", &bytes).await;
}

/// With `--passthrough read-only` writable files never use FUSE passthrough
/// (which makes writers wait for readers): a writer, an appender and new
/// readers all work while a reader holds the file open, and every one sees
/// the latest bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_passthrough_read_only_writers_never_wait_for_readers() {
    let s = TestServer::start().await;
    let m = MountedWorkspace::create_with(&s, "streams", "agent-streams", &["--passthrough", "read-only"]).await;
    let status = m.status();
    assert!(status.contains("kernel passthrough: read-only files"), "{status}");
    m.sh_ok(
        "printf old > f.txt && mkdir -p bin && printf '#!/bin/sh\\necho ran\\n' > bin/run.sh && chmod +x bin/run.sh",
    );
    m.wait_synced().await;
    let script = r#"
import mmap, os
def whole(fd):
    os.lseek(fd, 0, 0)
    return os.read(fd, 1000).decode()
r1 = os.open('f.txt', os.O_RDONLY)
print('r1', whole(r1))
with mmap.mmap(r1, 0, access=mmap.ACCESS_READ) as mm:
    print('r1 mmap', mm[:].decode())
w = os.open('f.txt', os.O_WRONLY | os.O_TRUNC)
os.write(w, b'new')
os.close(w)
r2 = os.open('f.txt', os.O_RDONLY)
print('r2', whole(r2))
print('r1 again', whole(r1))
with open('f.txt', 'ab') as a:
    a.write(b'+more')
r3 = os.open('f.txt', os.O_RDONLY)
print('r3', whole(r3))
with mmap.mmap(r3, 0, access=mmap.ACCESS_COPY) as mm:
    print('r3 private mmap', mm[:].decode())
for fd in (r1, r2, r3):
    os.close(fd)
r4 = os.open('f.txt', os.O_RDONLY)
print('r4', whole(r4))
os.close(r4)
"#;
    let lines = m.python(script, &[]).output_lines();
    assert_eq!(
        lines,
        [
            "r1 old",
            "r1 mmap old",
            "r2 new",
            // One file, one page cache: POSIX says an open reader sees the write.
            "r1 again new",
            "r3 new+more",
            "r3 private mmap new+more",
            "r4 new+more",
        ],
        "mount log:\n{}",
        m.log()
    );
    // Executing a clean file maps it from the kernel's side as well.
    assert_eq!(m.sh_ok("./bin/run.sh"), "ran\n");
    m.wait_synced().await;
    server_has(&s, "streams", "f.txt", b"new+more").await;
    // Once the writes are acknowledged the file is clean again, and a fresh
    // reader (passthrough, when the kernel allows it) reads the new blob.
    assert_eq!(m.sh_ok("cat f.txt"), "new+more");
}

/// By default (`--passthrough all`) the kernel reads clean files straight
/// from the cache. It then refuses every other open of a file while such a
/// reader holds it, so a writer waits for the reader (up to 2 s) and
/// otherwise gets ETXTBSY; nothing is half-written, and a remote change still
/// reaches new opens at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_makes_writers_wait_for_readers_and_never_serves_stale_bytes() {
    let s = TestServer::start().await;
    let m = MountedWorkspace::create(&s, "fast", "agent-fast").await;
    let status = m.status();
    assert!(status.contains("kernel passthrough: every clean file"), "{status}");
    m.sh_ok("printf 'v1\n' > f.txt && printf 'g\n' > g.txt");
    m.wait_synced().await;
    let script = r#"
import errno, os, sys, threading, time
def whole(fd):
    os.lseek(fd, 0, 0)
    return os.read(fd, 1000).decode().strip()
r = os.open('f.txt', os.O_RDONLY)
print('reader', whole(r))
# A writer while the reader holds the file: refused after a wait.
t0 = time.monotonic()
try:
    os.open('f.txt', os.O_WRONLY | os.O_APPEND)
    print('writer opened')
except OSError as e:
    print('writer', errno.errorcode[e.errno], 'after', 'a wait' if time.monotonic() - t0 >= 1.5 else 'no wait')
try:
    os.truncate('f.txt', 0)
    print('truncate done')
except OSError as e:
    print('truncate', errno.errorcode[e.errno])
print('reader', whole(r))
# The reader closes during the writer's wait: the writer goes ahead.
threading.Timer(0.5, os.close, [r]).start()
with open('f.txt', 'a') as w:
    w.write('v2\n')
print('after', open('f.txt').read().split(), flush=True)
# Eight writers wait at once (more than the mount's FUSE threads): the mount
# keeps answering, and when the reader closes they all go ahead.
r = os.open('g.txt', os.O_RDONLY)
results = []
def append(i):
    try:
        with open('g.txt', 'a') as w:
            w.write(f'w{i}\n')
        results.append('ok')
    except OSError as e:
        results.append(errno.errorcode[e.errno])
writers = [threading.Thread(target=append, args=(i,)) for i in range(8)]
for w in writers:
    w.start()
time.sleep(0.3)
t0 = time.monotonic()
os.listdir('.')
print('mount answers while writers wait:', 'yes' if time.monotonic() - t0 < 0.5 else 'no', flush=True)
os.close(r)
for w in writers:
    w.join()
print('writers', sorted(set(results)), len(results), 'lines', len(open('g.txt').read().split()), flush=True)
sys.stdin.readline()
# Committed and clean again: hold a passthrough reader while another
# writer changes the file on the server.
r = os.open('f.txt', os.O_RDONLY)
print('held', whole(r).split())
print('ready', flush=True)
sys.stdin.readline()
print('new open', open('f.txt').read().split())
print('held', whole(r).split())
os.close(r)
"#;
    let mut py = m.python(script, &[]);
    py.expect_line("reader v1");
    py.expect_line("writer ETXTBSY after a wait");
    py.expect_line("truncate ETXTBSY");
    py.expect_line("reader v1");
    py.expect_line("after ['v1', 'v2']");
    py.expect_line("mount answers while writers wait: yes");
    py.expect_line("writers ['ok'] 8 lines 9");
    m.wait_synced().await;
    let head = server_has(&s, "fast", "f.txt", b"v1\nv2\n").await;
    py.send("go");
    py.expect_line("held ['v1', 'v2']");
    py.expect_line("ready");
    s.commit("fast", &m.token, "f.txt", Some(head.version), b"v1\nv2\nremote v3\n")
        .await
        .unwrap();
    mount_shows(&m, "f.txt", "v1\nv2\nremote v3\n").await;
    py.send("go");
    assert_eq!(
        py.output_lines(),
        ["new open ['v1', 'v2', 'remote', 'v3']", "held ['v1', 'v2']"],
        "mount log:\n{}",
        m.log()
    );
}

/// fsync of an edit to a file the server has sends it and waits: when fsync
/// returns, the server has the bytes. With the server down it returns once
/// the change is durable in the journal (no hang), and the change lands later.
/// (New files go out with the debounce; see the editor-save test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_commits_and_waits_and_never_hangs_with_the_server_down() {
    let mut s = TestServer::start().await;
    let m = MountedWorkspace::create(&s, "durable", "agent-fsync").await;
    m.sh_ok("printf 'draft\n' > report.md");
    m.wait_synced().await;
    let script = r#"
import os, sys, time
fd = os.open('report.md', os.O_WRONLY | os.O_TRUNC)
os.write(fd, b'# Report\nfinal numbers\n')
os.fsync(fd)
print('fsynced', flush=True)
sys.stdin.readline()
os.write(fd, b'offline addendum\n')
t0 = time.monotonic()
os.fsync(fd)
print('offline fsync', 'returned' if time.monotonic() - t0 < 15 else 'hung', flush=True)
os.close(fd)
"#;
    let mut py = m.python(script, &[]);
    py.expect_line("fsynced");
    // No polling: fsync returned, so the server has it now.
    let now = s.read("durable", &s.admin, "report.md", None).await.unwrap();
    assert_eq!(now.bytes, b"# Report\nfinal numbers\n");

    s.stop().await;
    py.send("go");
    assert_eq!(py.output_lines(), ["offline fsync returned"]);
    let status = m.status();
    assert!(status.contains("report.md"), "the change is queued: {status}");
    s.restart_on_same_port().await;
    server_has(
        &s,
        "durable",
        "report.md",
        b"# Report\nfinal numbers\noffline addendum\n",
    )
    .await;
}

/// A change the server refuses (here: the mount's token was revoked) makes
/// fsync fail with EIO at once; the bytes stay in the journal and `status`
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_of_a_change_the_server_refuses_is_eio() {
    let s = TestServer::start().await;
    let m = MountedWorkspace::create(&s, "revoked", "agent-revoked").await;
    m.sh_ok("printf 'before\n' > kept.md");
    m.wait_synced().await;
    let who: WhoAmI = send(s.get(&s.url("/whoami"), &m.token)).await.unwrap();
    let revoked = s
        .req(
            reqwest::Method::DELETE,
            &s.url(&format!("/tokens/{}", who.token_id)),
            Some(&s.admin),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), reqwest::StatusCode::NO_CONTENT);
    let script = r#"
import errno, os
fd = os.open('kept.md', os.O_WRONLY | os.O_TRUNC)
os.write(fd, b'written after the revocation\n')
try:
    os.fsync(fd)
    print('fsync ok')
except OSError as e:
    print('fsync', errno.errorcode[e.errno])
os.close(fd)
print(open('kept.md').read().strip())
"#;
    assert_eq!(
        m.python(script, &[]).output_lines(),
        ["fsync EIO", "written after the revocation"]
    );
    let status = m.status();
    assert!(
        status.contains("kept.md") && status.contains("revoked"),
        "status names the file and the reason: {status}"
    );
}

/// Names of all files below `dir`.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.file_name().to_string_lossy().to_string());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// 3. kill -9 with an unflushed journal
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 4. A hundred files written while the server is down
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 5. Editors' save patterns and git
// ---------------------------------------------------------------------------

/// Waits for `path` to hold `want`, then checks the save added exactly
/// `added` versions to the same node (`before` is its history beforehand).
async fn one_more_version(
    s: &TestServer,
    m: &MountedWorkspace,
    p: &str,
    path: &str,
    want: &[u8],
    before: &[VersionInfo],
    added: std::ops::RangeInclusive<usize>,
) -> Vec<VersionInfo> {
    server_has(s, p, path, want).await;
    m.wait_synced().await;
    let after = s.history(p, &s.admin, path).await;
    let grew = after.len() - before.len();
    assert!(
        added.contains(&grew),
        "{path}: {grew} new versions, wanted {added:?}: {after:#?}"
    );
    assert!(
        after.iter().all(|v| v.node == before[0].node),
        "{path} changed node: {after:#?}"
    );
    assert_eq!(&after[grew..], before, "{path}: history continues");
    assert!(
        after[..grew].iter().all(|v| !v.deleted && v.op == VersionOp::Write),
        "{after:#?}"
    );
    after
}

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

// ---------------------------------------------------------------------------
// 6. Skills
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 7. The umount report
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 8. Bad input and remote changes
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Known bugs, reproduced deterministically (run with `--ignored`)
// ---------------------------------------------------------------------------

/// Bytes received on an established connection to `port` that the
/// server has not read yet (from /proc/net/tcp): non-zero while a request
/// waits for a frozen server.
fn unread_request_bytes(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let local_port = cols.get(1)?.rsplit_once(':')?.1;
            let established = *cols.get(3)? == "01";
            let rx = cols.get(4)?.split_once(':')?.1;
            (established && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| u64::from_str_radix(rx, 16).ok())
                .flatten()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_removed_while_its_first_commit_is_in_flight_is_gone_on_the_server() {
    let s = TestServer::start().await;
    let p = "inflight";
    let m = MountedWorkspace::create(&s, p, "agent-inflight").await;
    let port: u16 = s.listen_addr().rsplit_once(':').unwrap().1.parse().unwrap();
    let pid = s.pid().expect("server runs").to_string();
    // Frozen, the server's kernel still accepts the request; nothing answers.
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    m.sh_ok("echo scratch > scratch.txt");
    eventually("the mount sent the commit to the frozen server", || async {
        match unread_request_bytes(port) {
            0 => Err("no request waiting".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    m.sh_ok("rm scratch.txt");
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
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

/// Every file below `dir` whose name is `name`.
fn files_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_named(&path, name));
        } else if entry.file_name().to_str() == Some(name) {
            out.push(path);
        }
    }
    out
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
