//! Real clients from Debian's packages: rclone's webdav backend, a davfs2
//! mount, cadaver; rclone also PUTs a file far over `--max-blob-bytes`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use contextfs::api::*;

fn require_tool(program: &str, package: &str) {
    assert!(
        Command::new(program).arg("--version").output().is_ok() || Command::new(program).arg("-V").output().is_ok(),
        "{program} is missing: install the Debian package {package} (scripts/test does). \
         Not skipping: a skipped client test proves nothing."
    );
}

/// A tree of text and binary files, nested, with a name that needs encoding.
fn write_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 4)).join(format!("sub {}", i % 3));
        std::fs::create_dir_all(&dir).expect("mkdir");
        if i % 2 == 0 {
            std::fs::write(dir.join(format!("note-{i}.md")), format!("# note {i}\nline\n")).expect("write");
        } else {
            let bytes: Vec<u8> = (0..(i * 97 % 5000)).map(|b| (b * 31 + i) as u8).collect();
            std::fs::write(dir.join(format!("blob-{i}.bin")), bytes).expect("write");
        }
    }
}

/// Every file below `root`, by relative path, with its bytes.
fn read_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .expect("below root")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).expect("read")));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

struct Rclone {
    remote: String,
}

impl Rclone {
    fn new(s: &TestServer, token: &str) -> Rclone {
        Self::with_vendor(s, token, "other")
    }

    /// `owncloud` makes rclone send `X-OC-Mtime` and trust the server's times.
    fn with_vendor(s: &TestServer, token: &str, vendor: &str) -> Rclone {
        require_tool("rclone", "rclone");
        let out = Command::new("rclone")
            .args(["obscure", token])
            .output()
            .expect("rclone obscure");
        assert!(out.status.success(), "rclone obscure: {}", both(&out));
        let pass = stdout(&out).trim().to_string();
        Rclone {
            remote: format!(
                ":webdav,url='{}/dav/{PROJECT}',vendor={vendor},user=tester,pass='{pass}':",
                s.base
            ),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("rclone")
            .args(args)
            .env("RCLONE_CONFIG", "/dev/null")
            .output()
            .expect("run rclone");
        assert!(out.status.success(), "rclone {args:?}: {}", both(&out));
        both(&out)
    }

    fn path(&self, rel: &str) -> String {
        format!("{}{rel}", self.remote)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rclone_copy_and_sync_round_trip_byte_for_byte() {
    let (s, token) = setup().await;
    let rclone = Rclone::new(&s, &token);
    let work = tempfile::tempdir().expect("tempdir");
    let local = work.path().join("local");
    write_tree(&local, 60);
    let local_str = local.to_str().expect("utf-8 path");

    rclone.run(&["copy", local_str, &rclone.path("tree")]);
    // What the server holds, read through the REST API, is the local tree.
    for (rel, bytes) in read_tree(&local) {
        assert_eq!(
            s.read_bytes(PROJECT, &token, &format!("tree/{rel}")).await,
            bytes,
            "tree/{rel}"
        );
    }
    let back = work.path().join("back");
    rclone.run(&["copy", &rclone.path("tree"), back.to_str().expect("utf-8")]);
    assert_eq!(read_tree(&back), read_tree(&local));

    // Change the local tree and sync: edits, deletions, new files, a new folder.
    std::fs::write(local.join("d0/sub 0/note-0.md"), "# note 0\nedited\n").expect("edit");
    std::fs::remove_file(local.join("d1/sub 1/blob-1.bin")).expect("rm");
    std::fs::remove_dir_all(local.join("d3")).expect("rm -r");
    std::fs::create_dir_all(local.join("fresh/deep")).expect("mkdir");
    std::fs::write(local.join("fresh/deep/new.bin"), vec![0u8, 255, 1, 254]).expect("new");
    rclone.run(&["sync", local_str, &rclone.path("tree")]);
    let back2 = work.path().join("back2");
    rclone.run(&["copy", &rclone.path("tree"), back2.to_str().expect("utf-8")]);
    assert_eq!(read_tree(&back2), read_tree(&local));
    // The deleted file is a deletion in its history, not gone.
    assert!(s.history(PROJECT, &token, "tree/d1/sub 1/blob-1.bin").await[0].deleted);
    assert_eq!(s.history(PROJECT, &token, "tree/d0/sub 0/note-0.md").await.len(), 2);
}

/// A davfs2 mount of the project, unmounted (which uploads) on drop.
struct DavfsMount {
    dir: tempfile::TempDir,
    mountpoint: PathBuf,
    mounted: bool,
}

impl DavfsMount {
    fn mount(s: &TestServer, token: &str) -> DavfsMount {
        require_fuse();
        require_tool("mount.davfs", "davfs2");
        let dir = tempfile::tempdir().expect("tempdir");
        // mount.davfs drops to the davfs2 user: it needs to reach its cache.
        let cache = dir.path().join("cache");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir_all(&cache).expect("cache dir");
        std::fs::create_dir_all(&mountpoint).expect("mountpoint");
        set_mode(dir.path(), 0o755);
        set_mode(&cache, 0o777);
        let url = format!("{}/dav/{PROJECT}/", s.base);
        let secrets = dir.path().join("secrets");
        std::fs::write(&secrets, format!("{url} tester {token}\n")).expect("secrets");
        set_mode(&secrets, 0o600);
        let conf = dir.path().join("davfs2.conf");
        std::fs::write(
            &conf,
            format!(
                "cache_dir {}\nsecrets {}\nuse_locks 1\ndelay_upload 0\n\
                 # Linux >= 6.16 refuses davfs2's directory reads with smaller buffers.\nbuf_size 64\n",
                cache.display(),
                secrets.display()
            ),
        )
        .expect("davfs2.conf");
        let out = Command::new("mount.davfs")
            .arg("-o")
            .arg(format!("conf={}", conf.display()))
            .arg(&url)
            .arg(&mountpoint)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run mount.davfs");
        assert!(out.status.success(), "mount.davfs: {}", both(&out));
        DavfsMount {
            dir,
            mountpoint,
            mounted: true,
        }
    }

    fn sh(&self, script: &str) {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&self.mountpoint)
            .output()
            .expect("run sh");
        assert!(out.status.success(), "{script}: {}", both(&out));
    }

    /// Unmounts; davfs2 uploads what is still dirty before it returns.
    fn unmount(&mut self) {
        if self.mounted {
            let out = Command::new("umount").arg(&self.mountpoint).output().expect("umount");
            assert!(out.status.success(), "umount: {}", both(&out));
            self.mounted = false;
        }
    }
}

impl Drop for DavfsMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).output();
        }
        let _ = self.dir.path();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread")]
async fn davfs2_mount_creates_edits_renames_deletes_and_copies_a_tree() {
    let (s, token) = setup().await;
    s.commit(PROJECT, &token, "existing.md", None, b"first line\n")
        .await
        .expect("commit");
    s.commit(PROJECT, &token, "old.md", None, b"to be removed\n")
        .await
        .expect("commit");
    s.commit(PROJECT, &token, "move-me.md", None, b"moving\n")
        .await
        .expect("commit");
    let moved_node = s.read(PROJECT, &token, "move-me.md", None).await.expect("read").node;
    let source = tempfile::tempdir().expect("tempdir");
    write_tree(source.path(), 24);

    let mut mount = DavfsMount::mount(&s, &token);
    mount.sh("test \"$(cat existing.md)\" = 'first line'");
    mount.sh("printf 'created\\n' > created.md");
    mount.sh("printf 'second line\\n' >> existing.md");
    mount.sh("mv move-me.md moved.md");
    mount.sh("rm old.md");
    mount.sh("mkdir folder");
    mount.sh(&format!("cp -r '{}' folder/tree", source.path().display()));
    mount.unmount();

    assert_eq!(s.read_bytes(PROJECT, &token, "created.md").await, b"created\n");
    assert_eq!(
        s.read_bytes(PROJECT, &token, "existing.md").await,
        b"first line\nsecond line\n"
    );
    let moved = s.read(PROJECT, &token, "moved.md", None).await.expect("moved");
    assert_eq!(
        (moved.node, moved.bytes.as_slice()),
        (moved_node, b"moving\n".as_slice())
    );
    assert!(s.history(PROJECT, &token, "old.md").await[0].deleted);
    for (rel, bytes) in read_tree(source.path()) {
        assert_eq!(
            s.read_bytes(PROJECT, &token, &format!("folder/tree/{rel}")).await,
            bytes,
            "folder/tree/{rel}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cadaver_locks_edits_moves_and_others_get_423() {
    let (s, token) = setup().await;
    require_tool("cadaver", "cadaver");
    let home = tempfile::tempdir().expect("tempdir");
    // cadaver reads its credentials from ~/.netrc.
    let netrc = home.path().join(".netrc");
    std::fs::write(&netrc, format!("machine 127.0.0.1\nlogin tester\npassword {token}\n")).expect(".netrc");
    set_mode(&netrc, 0o600);
    let local = home.path().join("local.txt");
    std::fs::write(&local, "from cadaver\n").expect("local file");
    let script = format!(
        "mkcol cad\nput {l} cad/file.txt\nmove cad/file.txt cad/moved.txt\nlock cad/moved.txt\nput {l} cad/moved.txt\nls cad\nquit\n",
        l = local.display()
    );
    let mut child = Command::new("cadaver")
        .arg(format!("{}/dav/{PROJECT}/", s.base))
        .env("HOME", home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cadaver");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), script.as_bytes()).expect("script");
    let out = child.wait_with_output().expect("cadaver finishes");
    let text = both(&out);
    assert!(!text.contains("failed"), "a cadaver command failed: {text}");
    assert!(text.contains("moved.txt"), "{text}");

    assert_eq!(s.read_bytes(PROJECT, &token, "cad/moved.txt").await, b"from cadaver\n");
    let history = s.history(PROJECT, &token, "cad/moved.txt").await;
    assert_eq!(
        history.iter().map(|v| v.op).collect::<Vec<_>>(),
        vec![VersionOp::Rename, VersionOp::Create],
        "the second PUT of the same bytes is no new version"
    );
    // cadaver quit holding its lock: a writer without the token is refused.
    let dav = Dav::new(&s, PROJECT, &token);
    assert_eq!(dav.put("cad/moved.txt", b"intruder\n").await.0, StatusCode::LOCKED);
    let (_, lock_info) = dav.propfind("cad/moved.txt", "0").await;
    assert!(
        lock_info.contains("Second-"),
        "locks are capped, never infinite: {lock_info}"
    );
    assert_eq!(s.read_bytes(PROJECT, &token, "cad/moved.txt").await, b"from cadaver\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn rclone_keeps_file_times_and_a_second_sync_transfers_nothing() {
    let (s, token) = setup().await;
    let rclone = Rclone::with_vendor(&s, &token, "owncloud");
    let work = tempfile::tempdir().expect("tempdir");
    let local = work.path().join("local");
    write_tree(&local, 12);
    let dated = local.join("d0/sub 0/note-0.md");
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_934_245);
    std::fs::File::options()
        .write(true)
        .open(&dated)
        .expect("open")
        .set_modified(when)
        .expect("set mtime");
    let local_str = local.to_str().expect("utf-8 path");
    rclone.run(&["sync", local_str, &rclone.path("tree")]);
    let head = &s.history(PROJECT, &token, "tree/d0/sub 0/note-0.md").await[0];
    assert_eq!(head.mtime.as_deref(), Some("2020-01-02T03:04:05.000000000Z"));
    let cursor = s.snapshot(PROJECT).await.0;
    let log = rclone.run(&["sync", "-v", local_str, &rclone.path("tree")]);
    assert!(!log.contains("Copied"), "the second sync uploaded again: {log}");
    assert_eq!(s.snapshot(PROJECT).await.0, cursor, "the second sync wrote versions");
}

/// The server's peak resident memory (`VmHWM`) since the last reset, in
/// bytes; resetting it (`clear_refs` 5) makes the next reading the peak of
/// what happens from now on.
fn peak_rss(pid: u32, reset: bool) -> u64 {
    if reset {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the server's peak RSS");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server's /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn rclone_puts_a_40_mib_file_over_the_blob_limit_in_bounded_memory() {
    let (s, token) = setup_with(&["--max-blob-bytes", "8M"]).await;
    let rclone = Rclone::new(&s, &token);
    let work = tempfile::tempdir().expect("tempdir");
    let local = work.path().join("set.bin");
    let bytes = pseudo_random(40 << 20, 11);
    std::fs::write(&local, &bytes).expect("write");

    let pid = s.pid().expect("the server runs");
    let before = peak_rss(pid, true);
    rclone.run(&["copyto", local.to_str().expect("utf-8"), &rclone.path("data/set.bin")]);
    let growth = peak_rss(pid, false).saturating_sub(before);
    eprintln!("peak RSS growth during the PUT: {} KiB", growth >> 10);
    // Buffered, the 40 MiB body alone would be 40 MiB of growth. Streamed,
    // the server holds a few body pieces, FastCDC's 8 MiB window and at most
    // two chunks (2 MiB on average, 8 MiB at most) at a time, plus what the
    // allocator keeps of freed chunks: about 25 MiB measured.
    assert!(growth < 32 << 20, "the server's peak RSS grew by {} MiB", growth >> 20);

    let version = s.history(PROJECT, &token, "data/set.bin").await.remove(0);
    assert_eq!((version.hash, version.size), (hash_of(&bytes), bytes.len() as u64));
    let back = work.path().join("back.bin");
    rclone.run(&["copyto", &rclone.path("data/set.bin"), back.to_str().expect("utf-8")]);
    assert!(
        std::fs::read(&back).expect("read back") == bytes,
        "rclone reads back the same bytes"
    );
}
