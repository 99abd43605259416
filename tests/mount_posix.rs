//! POSIX behaviour that agents' tools notice, through a real FUSE mount on a
//! real server: atomic rename-over for concurrent readers, limits answered
//! as ext4 answers them, fallocate.

mod common;

use common::*;

/// An editor saves `doc.txt` 200 times by writing a temp file and renaming
/// it over; a reader keeps opening and reading it meanwhile. POSIX rename(2)
/// replaces the target atomically: every open finds a file, and every read
/// is one whole version, never a mix and never nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_is_atomic_for_concurrent_readers() {
    let s = TestServer::start().await;
    let m = MountedWorkspace::create(&s, "atomic", "agent-atomic").await;
    let out = m.sh_ok(
        r#"python3 - <<'PY'
import os, threading
def version(n):
    return "".join(f"version {n} line {i}\n" for i in range(200))
with open("doc.txt", "w") as f:
    f.write(version(0))
done = threading.Event()
def save():
    for n in range(1, 201):
        with open(".doc.txt.tmp", "w") as f:
            f.write(version(n))
        os.replace(".doc.txt.tmp", "doc.txt")
    done.set()
saver = threading.Thread(target=save)
saver.start()
reads = missing = mixed = 0
while not done.is_set() or reads < 50:
    try:
        with open("doc.txt") as f:
            text = f.read()
    except FileNotFoundError:
        missing += 1
        continue
    reads += 1
    lines = text.splitlines()
    first = lines[0].split(" line ")[0] if lines else ""
    if len(lines) != 200 or any(not l.startswith(first + " line ") for l in lines):
        mixed += 1
saver.join()
print(f"missing {missing} mixed {mixed}")
print("reads", "many" if reads >= 50 else reads)
PY"#,
    );
    assert_eq!(out, "missing 0 mixed 0\nreads many\n");
}

/// Limits answer as ext4 does: a 256-byte name is ENAMETOOLONG on every
/// operation (lookup included), a size beyond the maximum is EFBIG, and a
/// directory's link count is 2 plus its subdirectories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_as_ext4_does() {
    let s = TestServer::start().await;
    let m = MountedWorkspace::create(&s, "limits", "agent-limits").await;
    let script = format!(
        r#"{TRY_OPS}
long = "x" * 256
attempt("stat", lambda: os.stat(long))
attempt("chmod", lambda: os.chmod(long, 0o600))
attempt("unlink", lambda: os.unlink(long))
attempt("create", lambda: open(long, "w"))
attempt("mkdir", lambda: os.mkdir(long))
open("f", "w").write("x")
attempt("truncate", lambda: os.truncate("f", 999_999_999_999_999))
attempt("truncate-ok", lambda: os.truncate("f", 3))
os.makedirs("d/a/deep"); os.mkdir("d/b"); open("d/file", "w").close()
print("nlink", os.stat("d").st_nlink, os.stat("d/a").st_nlink, os.stat("d/b").st_nlink)
os.rmdir("d/b")
print("nlink", os.stat("d").st_nlink)
"#
    );
    let out = m.sh_ok(&format!("python3 -c '{}'", script.replace('\'', "'\\''")));
    assert_eq!(
        out,
        "stat ENAMETOOLONG\nchmod ENAMETOOLONG\nunlink ENAMETOOLONG\ncreate ENAMETOOLONG\nmkdir ENAMETOOLONG\n\
         truncate EFBIG\ntruncate-ok OK\nnlink 4 3 2\nnlink 3\n"
    );
    assert_eq!(m.sh_ok("stat -c %s f"), "3\n", "the refused truncate changed nothing");
}

/// fallocate(2) on files being written: preallocation (with and without
/// KEEP_SIZE), punching a hole and zeroing a range change the staging file
/// and are committed on close; other modes are EOPNOTSUPP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallocate_preallocates_punches_and_zeroes_and_is_committed() {
    let s = TestServer::start().await;
    let p = "falloc";
    let m = MountedWorkspace::create(&s, p, "agent-falloc").await;
    m.sh_ok("fallocate -l 65536 pre.bin && test $(stat -c %s pre.bin) = 65536");
    m.sh_ok("printf abcdefgh > hole.bin && fallocate -p -o 1 -l 3 hole.bin");
    m.sh_ok("printf abcdefgh > zero.bin && fallocate -z -o 4 -l 2 zero.bin");
    m.sh_ok("printf abc > keep.bin && fallocate -n -l 4096 keep.bin && test $(stat -c %s keep.bin) = 3");
    let collapse = m.sh("printf abcdefgh > c.bin && fallocate -c -o 0 -l 4096 c.bin");
    assert!(
        !collapse.status.success(),
        "collapse-range is not supported: {}",
        both(&collapse)
    );
    assert!(
        both(&collapse).contains("not supported"),
        "EOPNOTSUPP, not EIO: {}",
        both(&collapse)
    );
    assert_eq!(m.sh_ok("od -An -c hole.bin | tr -s ' '"), " a \\0 \\0 \\0 e f g h\n");
    server_has(&s, p, "pre.bin", &[0u8; 65536]).await;
    server_has(&s, p, "hole.bin", b"a\0\0\0efgh").await;
    server_has(&s, p, "zero.bin", b"abcd\0\0gh").await;
    server_has(&s, p, "keep.bin", b"abc").await;
}

/// A name that is not UTF-8 cannot be stored by the service: EINVAL at
/// once, with a log line that says why (the bytes escaped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_utf8_gets_einval_and_a_clear_log_line() {
    let s = TestServer::start().await;
    let m = MountedWorkspace::create(&s, "utf8", "agent-utf8").await;
    let out = m.sh_ok(&format!(
        "python3 -c '{TRY_OPS}\nattempt(\"create\", lambda: open(b\"caf\\xe9.txt\", \"w\"))\nattempt(\"mkdir\", lambda: os.mkdir(b\"d\\xff\"))'"
    ));
    assert_eq!(out, "create EINVAL\nmkdir EINVAL\n");
    let log = m.log();
    assert!(
        log.lines()
            .any(|l| l.contains("not UTF-8") && l.to_lowercase().contains("caf\\xe9.txt")),
        "no log line names the refused name:\n{log}"
    );
}

/// Times are file metadata: `touch -d` (mtime and atime, nanoseconds) is
/// committed, survives the commit, a remount and shows in another mount;
/// utimensat honours UTIME_OMIT; ctime follows chmod and utimensat; a
/// directory's mtime moves when an entry is created, renamed or removed in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_times_survive_commit_remount_and_other_mounts() {
    let s = TestServer::start().await;
    let p = "times";
    let mut m = MountedWorkspace::create(&s, p, "agent-times").await;
    m.sh_ok("echo hello > f && touch -d '2001-02-03 04:05:06.123456789 UTC' f");
    m.sh_ok("echo other > g && touch -a -d '2002-01-01 00:00:00.5 UTC' g && touch -m -d '2003-01-01 UTC' g");
    let stat = "stat -c '%n %.9X %.9Y' f g";
    let want = "f 981173106.123456789 981173106.123456789\ng 1009843200.500000000 1041379200.000000000\n";
    assert_eq!(m.sh_ok(stat), want, "right after touch");
    m.wait_synced().await;
    assert_eq!(m.sh_ok(stat), want, "after the commit");
    let head = server_has(&s, p, "f", b"hello\n").await;
    assert_eq!(head.mtime, "2001-02-03T04:05:06.123456789Z");

    let other = m.another("mnt2", "agent-times-2");
    assert_eq!(other.sh_ok(stat), want, "another mount");
    drop(other);
    m.umount();
    m.mount();
    assert_eq!(m.sh_ok(stat), want, "after a remount");

    // utimensat with UTIME_OMIT for the mtime changes the atime alone, and
    // ctime moves with it; chmod moves ctime too.
    let out = m.sh_ok(
        r#"python3 - <<'PY'
import os, time
before = os.stat("f")
time.sleep(0.05)
os.utime("f", ns=(1_000_000_000_000_000_123, before.st_mtime_ns))
after = os.stat("f")
print("mtime kept", after.st_mtime_ns == before.st_mtime_ns)
print("atime", after.st_atime_ns)
print("ctime moved", after.st_ctime_ns > before.st_ctime_ns)
time.sleep(0.05)
os.chmod("f", 0o600)
print("ctime moved by chmod", os.stat("f").st_ctime_ns > after.st_ctime_ns)
PY"#,
    );
    assert_eq!(
        out,
        "mtime kept True\natime 1000000000000000123\nctime moved True\nctime moved by chmod True\n"
    );
    m.wait_synced().await;
    m.umount();
    m.mount();
    assert_eq!(
        m.sh_ok("stat -c '%.9X %.9Y %a' f"),
        "1000000000.000000123 981173106.123456789 600\n",
        "atime and mode committed"
    );

    let out = m.sh_ok(
        r#"python3 - <<'PY'
import os, time
os.mkdir("d")
def moved(step):
    before = os.stat("d").st_mtime_ns
    time.sleep(0.02)
    step()
    after = os.stat("d")
    print(step.__name__, after.st_mtime_ns > before, after.st_ctime_ns >= after.st_mtime_ns)
def create(): open("d/x", "w").close()
def rename(): os.rename("d/x", "d/y")
def remove(): os.unlink("d/y")
for step in (create, rename, remove):
    moved(step)
PY"#,
    );
    assert_eq!(out, "create True True\nrename True True\nremove True True\n");
}

/// `rsync -a` into the mount, then again: the second run finds every file
/// and directory up to date and transfers nothing (`make` sees the same
/// times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_twice_transfers_nothing_the_second_time() {
    let s = TestServer::start().await;
    let m = MountedWorkspace::create(&s, "rsync", "agent-rsync").await;
    let src = tempfile::tempdir().expect("temp dir");
    let src_dir = src.path().display();
    m.sh_ok(&format!(
        "cd {src_dir} && mkdir -p a/b c && for i in $(seq 1 40); do echo line $i > a/f$i.txt; \
         echo $i > a/b/g$i.md; done && printf '#!/bin/sh\\n' > c/run.sh && chmod 755 c/run.sh && \
         touch -d '2010-05-06 07:08:09.987654321' a/f1.txt"
    ));
    let first = m.sh_ok(&format!("rsync -ai {src_dir}/ ./ws/ | wc -l"));
    assert!(
        first.trim().parse::<u32>().expect("a count") >= 80,
        "first run sent {first}"
    );
    m.wait_synced().await;
    let second = m.sh_ok(&format!("rsync -ai {src_dir}/ ./ws/"));
    assert_eq!(second, "", "the second rsync found differences");
}

/// Linux applies PATH_MAX to each syscall's path argument, not to a file's
/// distance from the root: a 4,095-byte relative path works from a
/// subdirectory (and from a directory already thousands of bytes deep), as on
/// ext4, and is committed; a 4,096-byte argument is refused by the kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_paths_up_to_path_max_work_from_any_directory() {
    let s = TestServer::start().await;
    let p = "pathmax";
    let m = MountedWorkspace::create(&s, p, "agent-pathmax").await;
    let out = m.sh_ok(
        r#"python3 - <<'PY'
import errno, os
def relative(total):
    # dirs of 250-byte names, then a file name that makes `total` bytes
    parts, used = [], 0
    while total - used > 255:
        name = chr(ord("a") + len(parts) % 26) * 250
        parts.append(name); used += 251
    parts.append("f" * (total - used))
    return "/".join(parts)
root = os.getcwd()
for start in ("sub", "sub/" + "s" * 250 + "/" + "t" * 250 + "/" + "u" * 250):
    os.makedirs(start, exist_ok=True)
    os.chdir(start)
    rel = relative(4095)
    os.makedirs(os.path.dirname(rel), exist_ok=True)
    with open(rel, "w") as f:
        f.write("deep\n")
    print(len(rel), open(rel).read().strip(), os.stat(rel).st_size)
    try:
        open(relative(4096), "w")
    except OSError as e:
        print("4096", errno.errorcode[e.errno])
    os.chdir(root)
PY"#,
    );
    assert_eq!(out, "4095 deep 5\n4096 ENAMETOOLONG\n4095 deep 5\n4096 ENAMETOOLONG\n");
    m.wait_synced().await;
    let tree = tree_map(&s, p).await.expect("tree");
    let deepest = tree.keys().max_by_key(|k| k.len()).expect("entries").clone();
    assert_eq!(
        deepest.len(),
        "sub/".len() + 3 * 251 + 4095,
        "the deepest file reached the server"
    );
    server_has(&s, p, &deepest, b"deep\n").await;
}
