//! What the `contextfs run` suites (tests/docker.rs, tests/shared_cache.rs)
//! share: the Docker and FUSE checks and [`Sandbox`], a test's own state
//! dir, blob cache and HOME for `contextfs` commands.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use tokio::process::Command;

use super::{stdout, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_contextfs");
/// The image `contextfs run` starts in these suites (scripts/docker builds it).
pub const IMAGE: &str = "contextfs-busybox:latest";

/// Fails with what to do when FUSE, the Docker engine or [`IMAGE`] is missing.
pub fn require_docker() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: contextfs run serves /workspace through a FUSE mount on this host (modprobe fuse; \
         in a container: --device /dev/fuse --cap-add SYS_ADMIN)"
    );
    let info = std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`docker info` failed — the Docker engine is not running. Run scripts/docker first (it starts dockerd \
             and builds {IMAGE}); scripts/test does.\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            panic!("cannot run `docker` ({e}): run scripts/docker first (it installs docker.io and starts dockerd)")
        }
    }
    let image = std::process::Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("docker image inspect");
    assert!(
        image.success(),
        "image {IMAGE} is missing: run scripts/docker (it builds it with docker import)"
    );
}

/// A test's own XDG state dir (managed mounts, journals, control sockets),
/// blob cache and HOME. Dropping it stops every mount still running there
/// and detaches whatever is left mounted below it.
pub struct Sandbox {
    pub home: tempfile::TempDir,
    pub server: String,
    pub token: String,
    pub project: String,
}

impl Sandbox {
    pub fn new(s: &TestServer, project: &str, token: &str) -> Sandbox {
        Sandbox {
            home: tempfile::tempdir().expect("temp dir"),
            server: s.base.clone(),
            token: token.to_string(),
            project: project.to_string(),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.home.path().join("state")
    }

    pub fn cache(&self) -> PathBuf {
        self.home.path().join("cache")
    }

    /// `contextfs ARGS` with this sandbox's server, token, project and dirs.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("CONTEXTFS_SERVER", &self.server)
            .env("CONTEXTFS_TOKEN", &self.token)
            .env("CONTEXTFS_PROJECT", &self.project)
            .env("XDG_STATE_HOME", self.state())
            .env("CONTEXTFS_CACHE_DIR", self.cache())
            .env("HOME", self.home.path())
            .env_remove("CONTEXTFS_AGENT_ID")
            .env_remove("DOCKER_HOST")
            .env("CONTEXTFS_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// `contextfs run --image IMAGE ARGS -- sh -c SCRIPT`.
    pub fn run_cmd(&self, args: &[&str], script: &str) -> Command {
        let mut c = self.cmd();
        c.args(["run", "--image", IMAGE])
            .args(args)
            .args(["--", "sh", "-c", script]);
        c
    }

    /// `contextfs run` started in the background, its output piped.
    pub fn spawn_run(&self, args: &[&str], script: &str) -> tokio::process::Child {
        self.run_cmd(args, script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn contextfs run")
    }

    /// `contextfs status MOUNTPOINT`: which process serves it.
    pub async fn status_of(&self, mountpoint: &Path) -> String {
        let out = self.cmd().arg("status").arg(mountpoint).output().await;
        stdout(&out.expect("run contextfs status"))
    }

    pub fn run(&self, args: &[&str], script: &str) -> impl std::future::Future<Output = Output> {
        let mut c = self.run_cmd(args, script);
        async move { c.output().await.expect("run contextfs run") }
    }

    /// The managed mount point of `agent` (there must be exactly one).
    pub fn ws_of(&self, agent: &str) -> PathBuf {
        let dir = self.state().join("contextfs/run").join(&self.project);
        let found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{agent}-")))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one managed mount dir for {agent} in {}: {found:?}",
            dir.display()
        );
        found[0].join("ws")
    }

    /// Mount points below this sandbox's dirs that are still mounted.
    pub fn leftover_mounts(&self) -> Vec<String> {
        let root = self
            .home
            .path()
            .canonicalize()
            .unwrap_or_else(|_| self.home.path().to_path_buf());
        let prefix = root.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let sockets = self.state().join("contextfs/sockets");
        for socket in std::fs::read_dir(&sockets).into_iter().flatten().flatten() {
            let _ = contextfs::mount::control::request(&socket.path(), "umount");
        }
        let mut mounts = self.leftover_mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = std::process::Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}
