//! Issue 15: many sandboxes of one project on one machine keep one copy of
//! each file in the blob cache. What that means depends on where contextfs
//! runs for each kind of sandbox:
//!
//! * `contextfs run` (Docker): the project is mounted on the host, one FUSE
//!   mount per agent, and every mount of the machine uses the same blob
//!   cache (`--cache-dir`, `CONTEXTFS_CACHE_DIR`, default
//!   `~/.cache/contextfs`). Twenty containers of twenty agents reading the
//!   same files must leave exactly one file per distinct blob there:
//!   [`twenty_run_containers_keep_one_copy_of_each_blob_in_the_host_cache`].
//! * Daytona and E2B (mount mode): contextfs runs inside the sandbox, which
//!   in production is a machine of its own (a VM), and its mount keeps its
//!   cache in the sandbox (`/var/cache/contextfs`). "One copy per machine"
//!   is then one copy per sandbox; a cache shared by several sandboxes would
//!   need a folder writable by all of them, which breaks the isolation a
//!   sandbox is for (any of them could read or plant the blobs of the
//!   others), so it is not done — not even in the local fakes, whose
//!   sandboxes are containers on this machine but are kept as separate as
//!   real ones. [`each_cloud_sandbox_keeps_one_copy_per_blob_in_its_own_cache`]
//!   checks the per-sandbox claim and that two sandboxes hold two copies.
//! * Sync mode (no FUSE in the sandbox) has no cache at all: every file is a
//!   plain file in the sandbox's `/workspace`, one per path, so two paths
//!   with the same content are two copies there (see docs/SANDBOXES.md).
//!
//! Needs dockerd and the test image (`scripts/docker`), and for the cloud
//! sandbox test the static binary and examples/fake_daytona (`scripts/test`
//! provides all of them).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::docker_run::{require_docker, Sandbox};
use common::sandbox::{require_docker as require_sandbox_image, FakeProvider, SandboxCli};
use common::*;

/// Containers started at once.
const SANDBOXES: usize = 20;
/// Files with distinct content; [`COPIES`] more files repeat some of them.
const DISTINCT: usize = 20;
const COPIES: usize = 4;

/// The project: `f00.txt` … `f19.txt` with distinct content (`f00.txt`
/// 200 KiB, above the size the cache publishes without fsync, the others
/// 1-7 KiB), and `copy-of-fNN.txt` files with the same bytes as `fNN.txt`.
fn project_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = (0..DISTINCT)
        .map(|i| {
            let size = if i == 0 { 200 << 10 } else { 1000 + i * 300 };
            let mut bytes = format!("file {i}\n").into_bytes();
            bytes.extend((0..size).map(|j| b'a' + ((i * 31 + j * 7 + j / 61) % 26) as u8));
            (format!("f{i:02}.txt"), bytes)
        })
        .collect();
    let copies: Vec<(String, Vec<u8>)> = (0..COPIES)
        .map(|k| (format!("copy-of-{}", files[k * 3].0), files[k * 3].1.clone()))
        .collect();
    files.extend(copies);
    files
}

/// Commits the files; returns the shell command that prints them all in
/// order, the bytes it must print, and the project's distinct blobs as the
/// server lists them (hash → size).
async fn seed(s: &TestServer, p: &str, token: &str) -> (String, Vec<u8>, BTreeMap<String, u64>) {
    let files = project_files();
    let mut expected = Vec::new();
    for (path, bytes) in &files {
        s.commit(p, token, path, None, bytes)
            .await
            .unwrap_or_else(|e| panic!("commit {path}: {e:?}"));
        expected.extend_from_slice(bytes);
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let command = format!("cd /workspace && cat {}", names.join(" "));
    let (_, entries) = s.snapshot(p).await;
    assert_eq!(entries.len(), files.len(), "the project's tree: {entries:?}");
    let distinct: BTreeMap<String, u64> = entries.iter().map(|e| (e.hash.as_str().to_string(), e.size)).collect();
    assert_eq!(distinct.len(), DISTINCT, "distinct blobs on the server");
    (command, expected, distinct)
}

/// The blobs in a cache folder (hash → size), after checking that each
/// file's bytes hash to its name and that no fill was left in `tmp/`.
fn cache_blobs(root: &Path) -> BTreeMap<String, u64> {
    let leftovers: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(
        leftovers,
        Vec::<std::path::PathBuf>::new(),
        "fills left in the cache's tmp/"
    );
    let mut blobs = BTreeMap::new();
    let shards = std::fs::read_dir(root.join("blobs"))
        .unwrap_or_else(|e| panic!("no blobs/ in the cache {}: {e}", root.display()));
    for shard in shards.flatten() {
        for blob in std::fs::read_dir(shard.path()).expect("read a cache shard").flatten() {
            let name = blob.file_name().to_string_lossy().to_string();
            let bytes = std::fs::read(blob.path()).expect("read a cached blob");
            assert_eq!(
                hash_of(&bytes).as_str(),
                name,
                "cached blob {} holds other bytes",
                blob.path().display()
            );
            let previous = blobs.insert(name, bytes.len() as u64);
            assert!(previous.is_none(), "one blob in two shards");
        }
    }
    blobs
}

/// Twenty `contextfs run` containers, each of its own agent (so twenty host
/// mounts, twenty processes), read every file of the project at once; the
/// cache they share then holds exactly the project's distinct blobs, each
/// once, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_run_containers_keep_one_copy_of_each_blob_in_the_host_cache() {
    require_docker();
    let s = TestServer::start().await;
    let p = "shared-cache";
    let token = s.project_with_token(p).await;
    let (command, expected, distinct) = seed(&s, p, &token).await;
    let sb = Sandbox::new(&s, p, &token);

    let runs = (0..SANDBOXES).map(|i| {
        let (sb, command) = (&sb, &command);
        async move {
            let agent = format!("cache-agent-{i}");
            let out = sb.run(&["--agent-id", &agent], command).await;
            (agent, out)
        }
    });
    for (agent, out) in futures_util::future::join_all(runs).await {
        assert!(out.status.success(), "{agent}: {}", both(&out));
        assert!(
            out.stdout == expected,
            "{agent} read {} bytes, not the project's {} bytes: {}",
            out.stdout.len(),
            expected.len(),
            String::from_utf8_lossy(&out.stderr)
        );
        // Its own mount: a mount of another agent would have been "already mounted".
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("project {p} mounted at")) && stderr.contains(&format!("as agent {agent}\n")),
            "{agent} did not start its own mount: {stderr}"
        );
    }
    assert_eq!(sb.leftover_mounts(), Vec::<String>::new());

    let cached = cache_blobs(&sb.cache());
    assert_eq!(
        cached, distinct,
        "the shared cache holds each distinct blob of the project once, and nothing else"
    );
    let files_bytes: usize = project_files().iter().map(|(_, b)| b.len()).sum();
    eprintln!(
        "{SANDBOXES} containers read {files_bytes} bytes in {} files each; the cache holds {} blobs, {} bytes",
        DISTINCT + COPIES,
        cached.len(),
        cached.values().sum::<u64>()
    );
}

const DAYTONA_KEY: &str = "dtn_fake_cache_key";

/// What `contextfs daytona exec` prints for the sandbox's own cache: one
/// `HASH SIZE` line per blob, then `tmp=N` (fills in progress).
const LIST_SANDBOX_CACHE: &str = "cd /var/cache/contextfs && for f in blobs/*/*; do [ -f \"$f\" ] && \
echo \"${f##*/} $(wc -c < \"$f\")\"; done; echo \"tmp=$(ls tmp | wc -l)\"";

/// Each cloud sandbox (here: two of the local Daytona stand-in, in mount
/// mode) is a machine of its own, so its mount has a cache of its own: after
/// reading every file twice it holds each distinct blob once. Two sandboxes
/// on this machine therefore hold two copies — by design, see the module
/// documentation — and the host's cache is not involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cloud_sandbox_keeps_one_copy_per_blob_in_its_own_cache() {
    require_sandbox_image();
    let s = TestServer::start().await;
    let p = "sandbox-cache";
    s.create_project(p).await;
    let (command, expected, distinct) = seed(&s, p, &s.admin).await;
    let fake = FakeProvider::start("fake_daytona", DAYTONA_KEY, "FAKE_DAYTONA_FAIL", &[]);
    let api = format!("{}/api", fake.base);
    let cli = SandboxCli::new(
        &s,
        "daytona",
        &[("DAYTONA_API_URL", &api), ("DAYTONA_API_KEY", DAYTONA_KEY)],
        &["DAYTONA_API_KEY"],
    );

    let mut copies = 0;
    for round in 0..2 {
        let (id, log) = cli.create(p, &["--mode", "mount"]);
        assert!(
            log.contains("mounted project"),
            "sandbox {round} is not in mount mode: {log}"
        );
        for _ in 0..2 {
            let out = cli.exec(&id, &command);
            assert!(out.status.success(), "exec in sandbox {round}: {}", both(&out));
            assert!(
                out.stdout == expected,
                "sandbox {round} read {} bytes, not the project's {}",
                out.stdout.len(),
                expected.len()
            );
        }
        let listing = cli.exec_ok(&id, LIST_SANDBOX_CACHE);
        let mut cached = BTreeMap::new();
        let mut tmp = None;
        for line in listing.lines() {
            if let Some(n) = line.strip_prefix("tmp=") {
                tmp = n.trim().parse::<usize>().ok();
            } else if let Some((hash, size)) = line.split_once(' ') {
                let size = size.trim().parse::<u64>().expect("a size from wc -c");
                cached.insert(hash.to_string(), size);
            }
        }
        assert_eq!(tmp, Some(0), "fills left in sandbox {round}'s cache: {listing}");
        assert_eq!(
            cached, distinct,
            "sandbox {round}'s own cache holds each distinct blob once: {listing}"
        );
        copies += cached.len();
        let out = cli.run(&["daytona", "destroy", &id]);
        assert!(out.status.success(), "destroy: {}", both(&out));
    }
    assert_eq!(copies, 2 * DISTINCT, "one copy per sandbox, as on two machines");
}
