//! Large files read through a real mount from a real server that stores
//! them as chunks (issue 21): a small read fetches a chunk, not the file; a
//! random read one more chunk; a full read is identical; a small cache
//! streams the file within its limit; a chunk corrupted on the server is
//! never served (EIO for its range, the rest reads fine); a chunk corrupted
//! in the local cache is caught and fetched again; a dead server gives EIO,
//! not a hung reader; an append to a chunked file works.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use contextfs::chunks::{manifest_of, Manifest};
use contextfs::client::Client;

use super::*;

const MIB: u64 = 1024 * 1024;
/// Large enough for ~50 chunks, small enough for a debug build.
const FILE_BYTES: u64 = 100 * MIB;

/// Bytes that chunk like real data, the same in every test.
fn big_bytes() -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..FILE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as u8
        })
        .collect()
}

/// A server with project `p` holding `big.bin` uploaded by chunks, and a
/// copy of the file on local disk to compare with.
struct Fixture {
    s: TestServer,
    project: String,
    token: String,
    bytes: Vec<u8>,
    manifest: Manifest,
    original: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Fixture {
    async fn new(project: &str) -> Fixture {
        let s = TestServer::start().await;
        let token = s.project_with_token(project).await;
        let bytes = big_bytes();
        let manifest = manifest_of(&bytes[..]).expect("chunk the file");
        let scratch = tempfile::tempdir().expect("temp dir");
        let original = scratch.path().join("big.bin");
        std::fs::write(&original, &bytes).expect("write the original");
        let client = Client::new(&s.mount_url(), Some(token.clone())).expect("client");
        client
            .upload_file(project, &manifest.hash, &original)
            .await
            .expect("upload by chunks");
        s.commit_req(project, &token, &commit_request("big.bin", None, manifest.hash.clone()))
            .await
            .expect("commit big.bin");
        Fixture {
            s,
            project: project.to_string(),
            token,
            bytes,
            manifest,
            original,
            _scratch: scratch,
        }
    }

    /// A fresh mount (its own empty cache unless `home` is shared).
    fn mount(&self, home: Arc<tempfile::TempDir>, args: &[&str]) -> MountedWorkspace {
        MountedWorkspace::mount_at(
            home,
            "mnt",
            &self.s.mount_url(),
            &self.project,
            &self.token,
            "reader",
            args,
        )
    }

    /// The chunk holding byte `offset`, and where it starts and ends.
    fn chunk_at(&self, offset: u64) -> (usize, u64, u64) {
        let span = self
            .manifest
            .spans()
            .into_iter()
            .find(|s| s.offset + s.size > offset)
            .expect("offset inside the file");
        (span.index, span.offset, span.offset + span.size)
    }

    /// A chunk of at least 3 MiB near `offset` (not the last), so a small
    /// read 1 MiB into it (and the kernel's readahead around it) stays inside it.
    fn roomy_chunk_near(&self, offset: u64) -> (usize, u64, u64) {
        let (index, _, _) = self.chunk_at(offset);
        let spans = self.manifest.spans();
        let span = spans[index..]
            .iter()
            .chain(spans[..index].iter().rev())
            .find(|s| s.size >= 3 * MIB && s.index + 1 < spans.len())
            .expect("a chunk of 3 MiB or more");
        (span.index, span.offset, span.offset + span.size)
    }

    fn server_blob_path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.as_str();
        self.s.data_dir.join("blobs").join(&hex[..2]).join(hex)
    }
}

/// The blobs in a mount's cache directory.
fn cached_blobs(m: &MountClient) -> Vec<BlobHash> {
    let mut out = Vec::new();
    let blobs = m.cache_dir().join("blobs");
    for prefix in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
        for blob in std::fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
            if let Some(hash) = blob.file_name().to_str().and_then(|n| BlobHash::parse(n).ok()) {
                out.push(hash);
            }
        }
    }
    out
}

/// Waits (bounded) until every thread of `pid` is stopped by SIGSTOP.
fn wait_until_stopped(pid: libc::pid_t) {
    for _ in 0..1000 {
        let stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .all(|task| {
                std::fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(|stat| stat.rsplit(')').next().map(|rest| rest.trim_start().starts_with('T')))
                    .unwrap_or(true)
            });
        if stopped {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// `pread` of `len` bytes at `offset` of a file in the mount, by a program
/// that does nothing else: its bytes, or the errno it got.
fn pread(m: &MountClient, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, i32> {
    let script = format!(
        "import os, sys\nfd = os.open({path:?}, os.O_RDONLY)\ntry:\n    data = os.pread(fd, {len}, {offset})\nexcept OSError as e:\n    print(e.errno)\n    sys.exit(3)\nsys.stdout.buffer.write(data)\n"
    );
    let out = m
        .command("python3")
        .args(["-c", &script])
        .current_dir(&m.dir)
        .output()
        .expect("run python3");
    match out.status.code() {
        Some(0) => Ok(out.stdout),
        Some(3) => Err(stdout(&out).trim().parse().expect("an errno")),
        _ => panic!("pread failed: {}", both(&out)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_mount_fetches_only_the_chunks_a_read_needs() {
    let f = Fixture::new("chunked-read").await;
    let m = f.mount(Arc::new(tempfile::tempdir().expect("home")), &[]);
    let chunks: std::collections::HashSet<&BlobHash> = f.manifest.chunks.iter().map(|c| &c.hash).collect();

    // head -c 100: one chunk (or a few), never the file.
    let head = m.sh_ok("head -c 100 big.bin | od -An -tx1 | tr -d ' \\n'");
    let want: String = f.bytes[..100].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(head, want);
    let after_head = cached_blobs(&m);
    assert!(!after_head.contains(&f.manifest.hash), "the whole file was downloaded");
    assert!(
        (1..=2).contains(&after_head.len()) && after_head.iter().all(|h| chunks.contains(h)),
        "head -c 100 left {} blobs in the cache: {after_head:?}",
        after_head.len()
    );

    // A random 4 KiB read far into the file: exactly the chunk that holds it.
    let (index, start, _) = f.roomy_chunk_near(80 * MIB);
    let offset = start + MIB;
    let got = pread(&m, "big.bin", offset, 4096).expect("random read");
    assert!(
        got == f.bytes[offset as usize..offset as usize + 4096],
        "wrong bytes at {offset}"
    );
    let mut after_random = cached_blobs(&m);
    after_random.retain(|h| !after_head.contains(h));
    assert_eq!(
        after_random,
        vec![f.manifest.chunks[index].hash.clone()],
        "a random read added other blobs than its chunk"
    );

    // A full read is identical, and still never downloads the file whole.
    m.sh_ok(&format!("cmp big.bin {}", f.original.display()));
    assert!(!cached_blobs(&m).contains(&f.manifest.hash));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cache_streams_a_large_file_within_its_limit() {
    let f = Fixture::new("small-cache").await;
    let limit = 32 * MIB;
    let m = f.mount(Arc::new(tempfile::tempdir().expect("home")), &["--cache-size", "32M"]);
    let cache_dir = m.cache_dir();
    let done = Arc::new(AtomicBool::new(false));
    let largest = Arc::new(AtomicU64::new(0));
    // The directory is measured with the mount process stopped (SIGSTOP),
    // so no fill is published or evicted halfway through a walk.
    let pid = m.pid.expect("the mount's pid") as libc::pid_t;
    let sampler = {
        let (done, largest, cache_dir) = (done.clone(), largest.clone(), cache_dir.clone());
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while !done.load(Ordering::SeqCst) {
                // SAFETY: signals to the mount process this test started.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                wait_until_stopped(pid);
                largest.fetch_max(dir_bytes(&cache_dir), Ordering::SeqCst);
                unsafe { libc::kill(pid, libc::SIGCONT) };
                samples += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            samples
        })
    };
    m.sh_ok(&format!("cmp big.bin {}", f.original.display()));
    done.store(true, Ordering::SeqCst);
    let samples = sampler.join().expect("sampler");
    let largest = largest.load(Ordering::SeqCst).max(dir_bytes(&cache_dir));
    assert!(samples > 0);
    assert!(
        largest <= limit,
        "the cache directory reached {largest} bytes, over its {limit}-byte limit"
    );
    assert!(largest > limit / 2, "measured while the cache was full: {largest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupted_on_the_server_is_never_served_and_a_dead_server_gives_eio() {
    if std::env::var(TEST_BLOBS_ENV).is_ok_and(|v| !v.is_empty()) {
        eprintln!("skipped: damages a blob file, which needs the folder store");
        return;
    }
    let mut f = Fixture::new("bad-chunk").await;
    let (bad, start, end) = f.roomy_chunk_near(50 * MIB);
    let path = f.server_blob_path(&f.manifest.chunks[bad].hash);
    let mut stored = std::fs::read(&path).expect("the chunk is a blob in the server's folder");
    stored[1000] ^= 0xff;
    std::fs::write(&path, &stored).expect("corrupt the chunk");

    let m = f.mount(Arc::new(tempfile::tempdir().expect("home")), &[]);
    assert_eq!(pread(&m, "big.bin", start + MIB, 4096), Err(libc::EIO));
    assert_eq!(
        pread(&m, "big.bin", start + 512, 4096),
        Err(libc::EIO),
        "asked again: EIO again"
    );
    assert!(!cached_blobs(&m).contains(&f.manifest.chunks[bad].hash));
    // The other ranges read fine.
    assert_eq!(pread(&m, "big.bin", 0, 4096).expect("start"), f.bytes[..4096]);
    let tail = FILE_BYTES - 4096;
    assert_eq!(pread(&m, "big.bin", tail, 4096).expect("end"), f.bytes[tail as usize..]);
    assert!(end < tail);

    // The server goes away: a read of a chunk not fetched yet fails with
    // EIO instead of hanging; chunks already here still read.
    f.s.stop().await;
    let (_, far, _) = f.roomy_chunk_near(20 * MIB);
    assert_eq!(pread(&m, "big.bin", far + MIB, 4096), Err(libc::EIO));
    assert_eq!(pread(&m, "big.bin", 8192, 4096).expect("cached"), f.bytes[8192..12288]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupted_in_the_cache_is_caught_and_fetched_again() {
    let f = Fixture::new("bad-cache").await;
    let home = Arc::new(tempfile::tempdir().expect("home"));
    let (index, start, end) = f.roomy_chunk_near(60 * MIB);
    let hash = f.manifest.chunks[index].hash.clone();
    let want = &f.bytes[(start + MIB) as usize..(start + MIB + 4096) as usize];
    let mut m = f.mount(home.clone(), &[]);
    assert_eq!(pread(&m, "big.bin", start + MIB, 4096).expect("first read"), want);
    m.umount();
    let cached = m
        .cache_dir()
        .join("blobs")
        .join(&hash.as_str()[..2])
        .join(hash.as_str());
    let mut on_disk = std::fs::read(&cached).expect("the chunk is cached");
    on_disk[(MIB + 100) as usize] ^= 0x5a;
    std::fs::write(&cached, &on_disk).expect("corrupt the cached chunk");

    m.mount();
    assert_eq!(
        pread(&m, "big.bin", start + MIB, 4096).expect("read after the corruption"),
        want,
        "a corrupted cached chunk was served"
    );
    let refetched = std::fs::read(&cached).expect("the chunk is cached again");
    assert!(
        refetched == f.bytes[start as usize..end as usize],
        "the cache holds the right bytes again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_to_a_chunked_file_is_committed() {
    let f = Fixture::new("append").await;
    let m = f.mount(Arc::new(tempfile::tempdir().expect("home")), &[]);
    m.sh_ok("echo 'one more line' >> big.bin");
    m.wait_synced().await;
    let mut expected = f.bytes.clone();
    expected.extend_from_slice(b"one more line\n");
    let history = f.s.history(&f.project, &f.token, "big.bin").await;
    let newest = history.iter().max_by_key(|v| v.version).expect("a version");
    assert_eq!(newest.hash, BlobHash::of(&expected), "{history:#?}");
    m.sh_ok(&format!("test $(stat -c %s big.bin) -eq {}", expected.len()));
    m.sh_ok(&format!("cmp -n {FILE_BYTES} big.bin {}", f.original.display()));
    assert_eq!(m.sh_ok("tail -c 14 big.bin"), "one more line\n");
}

/// A server that accepts connections and never answers (stopped with
/// SIGSTOP): reads that need a chunk wait on threads of their own and end
/// with EIO (after the client's 30 s wait), while a read of a chunk already
/// cached, from another program, is answered at once: the cold reads, more
/// than the mount's FUSE threads, do not hold them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_waiting_on_a_hung_server_hold_no_fuse_thread_and_end_with_eio() {
    let f = Fixture::new("hung-server").await;
    let m = f.mount(Arc::new(tempfile::tempdir().expect("home")), &[]);
    assert_eq!(pread(&m, "big.bin", 0, 4096).expect("first chunk"), f.bytes[..4096]);
    let server = f.s.pid().expect("server pid") as libc::pid_t;
    // SAFETY: signals to the server process this test started.
    unsafe { libc::kill(server, libc::SIGSTOP) };

    let spans = f.manifest.spans();
    // Twelve chunks spread over the file, none near the cached first one.
    let step = ((spans.len() - 2) / 12).max(1);
    let cold: Vec<u64> = (2..spans.len())
        .step_by(step)
        .take(12)
        .map(|i| spans[i].offset + 4096)
        .collect();
    assert!(
        cold.len() > contextfs::mount::FUSE_THREADS,
        "more cold reads than FUSE threads"
    );
    let script = "import os, sys\nfd = os.open('big.bin', os.O_RDONLY)\ntry:\n    os.pread(fd, 4096, int(sys.argv[1]))\nexcept OSError as e:\n    print(e.errno)\n    sys.exit(3)\n";
    let mut readers: Vec<std::process::Child> = cold
        .iter()
        .map(|offset| {
            m.command("python3")
                .args(["-c", script, &offset.to_string()])
                .current_dir(&m.dir)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start a cold reader")
        })
        .collect();
    // Give the cold reads time to reach the mount and start waiting.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let cached = pread(&m, "big.bin", 8192, 4096).expect("a cached range reads while the server hangs");
    let still_waiting = readers
        .iter_mut()
        .map(|r| r.try_wait())
        .filter(|w| matches!(w, Ok(None)))
        .count();
    assert_eq!(cached, f.bytes[8192..12288]);
    assert_eq!(
        still_waiting,
        cold.len(),
        "the cached read was answered while every cold read still waited on the server"
    );
    for reader in readers {
        let out = reader.wait_with_output().expect("cold reader");
        assert_eq!(
            out.status.code(),
            Some(3),
            "a cold read must fail, not succeed: {}",
            both(&out)
        );
        assert_eq!(stdout(&out).trim(), libc::EIO.to_string());
    }
    // SAFETY: as above.
    unsafe { libc::kill(server, libc::SIGCONT) };
}
