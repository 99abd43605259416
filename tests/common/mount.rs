//! The client side of a real FUSE mount, shared by tests/mount.rs and
//! tests/skills_dir.rs: a temp home with its own XDG dirs, the `contextfs`
//! CLI pointed at a test server, and cleanup of whatever a test left mounted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use super::process::*;

const BIN: &str = env!("CARGO_BIN_EXE_contextfs");

/// A python prelude for tests that try file operations in a mount:
/// `attempt(label, fn)` prints `label OK` or `label ERRNO-NAME`.
pub const TRY_OPS: &str = r#"
import errno, os, sys
def attempt(label, fn):
    try:
        fn()
        print(label, "OK")
    except OSError as e:
        print(label, errno.errorcode.get(e.errno, str(e.errno)))
"#;

/// True while `pid` is a live (not zombie) process.
pub fn process_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// True while `pid` is a live (not zombie) process serving `mountpoint`.
pub fn mount_process_alive(pid: u32, mountpoint: &Path) -> bool {
    if !process_alive(pid) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(mountpoint.to_string_lossy().as_ref())
}

/// The mount point `dir` of one project and the `contextfs` client that
/// mounts it: a temp home (XDG_STATE_HOME, XDG_CACHE_HOME, HOME) and the
/// server, token and project the client is pointed at.
pub struct MountClient {
    /// Holds the XDG dirs, HOME and the mount points; shared by the mounts
    /// of one test so they share the blob cache.
    pub home: Arc<tempfile::TempDir>,
    /// The mount point, `name` below the home.
    pub dir: PathBuf,
    pub server: String,
    pub project: String,
    pub token: String,
}

impl MountClient {
    /// The client for mount point `name` in `home`. Fails (never skips)
    /// without FUSE.
    pub fn new(home: Arc<tempfile::TempDir>, name: &str, server: &str, project: &str, token: &str) -> MountClient {
        require_fuse();
        let dir = home.path().canonicalize().expect("canonical temp dir").join(name);
        MountClient {
            home,
            dir,
            server: server.to_string(),
            project: project.to_string(),
            token: token.to_string(),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.home.path().canonicalize().expect("canonical temp dir")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root().join("cache").join("contextfs")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state").join("contextfs")
    }

    pub fn log_path(&self) -> PathBuf {
        mount_log_path(&self.root().join("state"), &self.dir)
    }

    /// The mount's log so far (empty before the first mount).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `program` with this client's environment and nothing from the caller's.
    pub fn command(&self, program: &str) -> Command {
        let root = self.root();
        let env = ClientEnv {
            root: &root,
            server: &self.server,
            token: &self.token,
            project: &self.project,
        };
        isolated_command(program, &env)
    }

    /// Runs `contextfs ARGS` (bounded to 120 s).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(BIN).args(args).output().expect("run contextfs")
    }

    /// Runs `contextfs ARGS`, which must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "contextfs {args:?} failed: {}", both(&out));
        stdout(&out)
    }

    /// `contextfs status` of the mount point.
    pub fn status(&self) -> String {
        self.cli_ok(&["status", &self.dir.display().to_string()])
    }

    /// The mount process's pid, as `contextfs status` reports it.
    pub fn pid_from_status(&self) -> u32 {
        let status = self.status();
        status
            .split("(pid ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid in `contextfs status`:\n{status}"))
    }

    /// Runs a bash script inside the mount point.
    pub fn sh(&self, script: &str) -> Output {
        self.sh_in(&self.dir, script)
    }

    /// Runs a bash script inside the mount point that must succeed; its stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        self.sh_ok_in(&self.dir, script)
    }

    /// Runs a bash script in `dir`.
    pub fn sh_in(&self, dir: &Path, script: &str) -> Output {
        self.command("bash")
            .args(["-c", script])
            .current_dir(dir)
            .output()
            .expect("run bash")
    }

    /// Runs a bash script in `dir` that must succeed; its stdout.
    pub fn sh_ok_in(&self, dir: &Path, script: &str) -> String {
        let out = self.sh_in(dir, script);
        assert!(
            out.status.success(),
            "`{script}` failed in {}: {}\nmount log:\n{}",
            dir.display(),
            both(&out),
            self.log()
        );
        stdout(&out)
    }

    /// Waits until `contextfs status` shows nothing queued or pending.
    pub async fn wait_synced(&self) {
        eventually("the mount has nothing queued or pending", || async {
            let status = self.status();
            if status.contains("(0 queued, 0 pending,") {
                Ok(())
            } else {
                Err(status)
            }
        })
        .await;
    }

    /// For a test harness's `Drop`: prints the mount log when the test
    /// failed, runs `contextfs umount` if a mount process of `pids` still
    /// serves the mount point or it is still mounted, then `fusermount3 -u
    /// -z` on the mount point and `also_mounted` if still mounted, then kills
    /// a mount process that survived both.
    pub fn clean_up(&self, also_mounted: &[PathBuf], pids: &[u32]) {
        if std::thread::panicking() {
            eprintln!("--- mount log of {} ---\n{}", self.dir.display(), self.log());
        }
        let alive = pids.iter().any(|pid| mount_process_alive(*pid, &self.dir));
        if alive || contextfs::mount::is_mounted(&self.dir) {
            let _ = self.cli(&["umount", &self.dir.display().to_string()]);
        }
        for dir in std::iter::once(&self.dir).chain(also_mounted) {
            if contextfs::mount::is_mounted(dir) {
                let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(dir).status();
            }
        }
        for pid in pids.iter().filter(|pid| mount_process_alive(**pid, &self.dir)) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}
