//! Integration tests of `contextfs mount` through a real FUSE mount: shell
//! tools, editors and git work in the folder, every change lands on a real
//! `contextfs serve`, concurrent mounts merge, and nothing written is lost
//! when the server is down or the mount is killed.
//!
//! Every test starts its own server, project and temp directories (its own
//! XDG_STATE_HOME / XDG_CACHE_HOME), so the file runs safely with
//! `--test-threads=N`. Without /dev/fuse the tests FAIL: a skipped mount test
//! proves nothing.
//!
//! - `basics`: shell tools, bad input, remote changes, the CLI in a pipe;
//! - `sharing`: two mounts, kernel passthrough, fsync;
//! - `offline`: kill -9, the server down, the umount report;
//! - `editors`: editors' saves, git, skills;
//! - `watchers`: inotify events for other agents' changes;
//! - `history`: past versions at `.contextfs/history/<path>/<N>`;
//! - `large_files_upload`: large files by chunks, resumed uploads, EFBIG;
//! - `large_files_read`: large files read by chunks (issue 21);
//! - `write_passthrough`: new files written by the kernel itself.

#[path = "../common/mod.rs"]
mod common;

mod basics;
mod editors;
mod history;
mod large_files_read;
mod large_files_upload;
mod offline;
mod sharing;
mod watchers;
mod write_passthrough;

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
