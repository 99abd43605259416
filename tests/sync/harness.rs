//! The harness of the sync suite: a synced folder driven through the real
//! `contextfs` binary, tree snapshots, seeding, and an XFS loop volume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use contextfs::model::BlobHash;

pub const BIN: &str = env!("CARGO_BIN_EXE_contextfs");

/// A local folder synced with one project, and the `contextfs` client
/// environment it runs in (its own XDG dirs below `home`, so folders of one
/// test share the blob cache as on one machine).
pub struct Folder {
    pub home: Arc<tempfile::TempDir>,
    pub dir: PathBuf,
    pub server: String,
    pub project: String,
    pub token: String,
    pub agent: String,
    pub pid: Option<u32>,
}

impl Folder {
    pub fn new(home: &Arc<tempfile::TempDir>, name: &str, s: &TestServer, project: &str, token: &str) -> Folder {
        let root = home.path().canonicalize().expect("canonical temp dir");
        Folder {
            home: home.clone(),
            dir: root.join(name),
            server: s.mount_url(),
            project: project.to_string(),
            token: token.to_string(),
            agent: format!("agent-{name}"),
            pid: None,
        }
    }

    pub fn command(&self, program: &str) -> Command {
        let root = self.home.path().canonicalize().expect("canonical temp dir");
        let env = ClientEnv {
            root: &root,
            server: &self.server,
            token: &self.token,
            project: &self.project,
        };
        isolated_command(program, &env)
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(BIN).args(args).output().expect("run contextfs")
    }

    pub fn dir_arg(&self) -> String {
        self.dir.display().to_string()
    }

    /// `contextfs sync DIR --daemon`; returns once the first sync is done.
    pub fn start(&mut self) {
        let out = self.cli(&["sync", &self.dir_arg(), "--daemon", "--agent-id", &self.agent]);
        assert!(
            out.status.success(),
            "sync --daemon failed: {}\nlog:\n{}",
            both(&out),
            self.log()
        );
        let text = stdout(&out);
        let pid = text
            .split("(pid ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid in: {text}"));
        self.pid = Some(pid);
    }

    pub fn kill_9(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while process_alive(pid) {
                assert!(std::time::Instant::now() < deadline, "sync {pid} survived kill -9");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(".contextfs/sync.log")).unwrap_or_default()
    }

    pub fn status(&self) -> String {
        let out = self.cli(&["sync", "status", &self.dir_arg()]);
        assert!(out.status.success(), "sync status failed: {}", both(&out));
        stdout(&out)
    }

    pub fn sh(&self, script: &str) -> Output {
        self.command("bash")
            .args(["-c", script])
            .current_dir(&self.dir)
            .output()
            .expect("run bash")
    }

    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "`{script}` failed: {}", both(&out));
        stdout(&out)
    }

    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(path)).ok()
    }

    /// The state file's count of files placed (clones + copies).
    pub fn placements(&self) -> u64 {
        let text = std::fs::read_to_string(self.dir.join(".contextfs/state.json")).expect("state file");
        let state: serde_json::Value = serde_json::from_str(&text).expect("state is JSON");
        state["clones"].as_u64().unwrap_or(0) + state["copies"].as_u64().unwrap_or(0)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sync log of {} ---\n{}", self.dir.display(), self.log());
        }
        self.kill_9();
    }
}

/// Every regular file and symlink under `dir` (leaving out the sync's own
/// state folder) as relative path -> hash of its bytes.
pub fn tree_of(dir: &Path) -> BTreeMap<String, BlobHash> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(dir).expect("below dir").display().to_string();
            if rel == ".contextfs" {
                continue;
            }
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.insert(rel, BlobHash::of(&bytes));
            }
        }
    }
    out
}

/// The server's tree as path -> hash (files only).
pub async fn server_tree(s: &TestServer, project: &str) -> BTreeMap<String, BlobHash> {
    tree_map(s, project)
        .await
        .expect("tree")
        .into_iter()
        .filter(|(_, e)| e.kind != contextfs::api::NodeKind::Dir)
        .map(|(p, e)| (p, e.hash))
        .collect()
}

pub async fn seed(s: &TestServer, project: &str, files: &[(&str, &[u8])]) {
    for (path, bytes) in files {
        s.commit(project, &s.admin, path, None, bytes)
            .await
            .expect("seed commit");
    }
}

/// A loop device with XFS (reflink=1) mounted for one test; undone on drop.
pub struct XfsVolume {
    _image_dir: tempfile::TempDir,
    pub device: String,
    pub mountpoint: PathBuf,
}

impl XfsVolume {
    pub fn make() -> XfsVolume {
        let image_dir = tempfile::tempdir().expect("temp dir");
        let image = image_dir.path().join("xfs.img");
        let run = |cmd: &mut Command| -> String {
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test installs xfsprogs)"));
            assert!(out.status.success(), "{cmd:?}: {}", both(&out));
            stdout(&out).trim().to_string()
        };
        run(Command::new("truncate").args(["-s", "1G"]).arg(&image));
        let device = run(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        run(Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1", &device]));
        let mountpoint = image_dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("mkdir");
        run(Command::new("mount").arg(&device).arg(&mountpoint));
        XfsVolume {
            _image_dir: image_dir,
            device,
            mountpoint,
        }
    }

    pub fn used_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=used"])
            .arg(&self.mountpoint)
            .output()
            .expect("df");
        stdout(&out)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df used")
    }
}

impl Drop for XfsVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mountpoint).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}
