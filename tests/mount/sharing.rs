//! Two mounts of one project, kernel passthrough, fsync.

use super::*;

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
