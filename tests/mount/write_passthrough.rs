//! Write passthrough: the kernel writes a file this mount creates straight
//! into its staging file (no FUSE request per write). Every byte still
//! lands once, through `dup`ed descriptors, a kill -9 and a remount.

use super::*;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A new file written by the kernel: its size shows while it grows, a
/// descriptor `dup`ed before the first close keeps writing after it, and
/// the server gets every byte as one version once the last one is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_written_by_the_kernel_lands_once_with_every_byte() {
    let s = TestServer::start().await;
    let p = "kernel-writes";
    let m = MountedWorkspace::create(&s, p, "agent-kernel-writes").await;
    let status = m.status();
    assert!(status.contains("and writes of new files"), "{status}");
    let script = r#"
import os
def pattern(n, seed):
    return bytes(((i * 31) + seed) & 0xff for i in range(n))
first, second = pattern(3 << 20, 1), pattern(1 << 20, 2)
f = open('out.bin', 'wb', buffering=0)
sizes = []
for i in range(3):
    f.write(first[i << 20:(i + 1) << 20])
    sizes.append(os.stat('out.bin').st_size)
print('sizes', sizes)
d = os.dup(f.fileno())
f.close()                       # a close() while a dup stays open
os.write(d, second)
os.close(d)
data = open('out.bin', 'rb').read()
print('read back', data == first + second)
"#;
    assert_eq!(
        m.python(script, &[]).output_lines(),
        ["sizes [1048576, 2097152, 3145728]", "read back True"]
    );
    // A shell's redirected group: each command's exit closes a copy of the descriptor.
    m.sh_ok("{ echo one; sleep 0.2; echo two; } > group.txt");
    m.wait_synced().await;
    let all = [pattern(3 << 20, 1), pattern(1 << 20, 2)].concat();
    server_has(&s, p, "out.bin", &all).await;
    server_has(&s, p, "group.txt", b"one\ntwo\n").await;
    let tree = tree_map(&s, p).await.expect("tree");
    assert_eq!(
        tree["out.bin"].version, 1,
        "one version: nothing was sent before the last close"
    );
    assert_eq!(tree["group.txt"].version, 1);
}

/// kill -9 of the mount while a process still writes a new file through a
/// descriptor that outlived a close: after the remount the file holds every
/// byte written before the kill, and it reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_a_dup_still_writes_keeps_every_byte_written_before_it() {
    let s = TestServer::start().await;
    let p = "kernel-writes-kill";
    let mut m = MountedWorkspace::create(&s, p, "agent-kernel-kill").await;
    let script = r#"
import os, sys
def pattern(n, seed):
    return bytes(((i * 31) + seed) & 0xff for i in range(n))
f = open('log.bin', 'wb', buffering=0)
f.write(pattern(1 << 20, 3))
d = os.dup(f.fileno())
f.close()
os.write(d, pattern(1 << 20, 4))
print('written', flush=True)
sys.stdin.readline()            # the mount is killed meanwhile
try:
    os.close(d)
except OSError:
    pass
"#;
    let mut writer = m.python(script, &[]);
    writer.expect_line("written");
    // Journaled by its staging file at the close, not sent while the dup may write.
    let status = m.status();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("queued   log.bin [create, still open for writing]")),
        "{status}"
    );
    m.kill_9();
    writer.finish();
    m.mount();
    let all = [pattern(1 << 20, 3), pattern(1 << 20, 4)].concat();
    assert_eq!(std::fs::read(m.dir.join("log.bin")).expect("read back"), all);
    m.wait_synced().await;
    server_has(&s, p, "log.bin", &all).await;
}
