//! Helpers for tests that run programs and mount real FUSE filesystems.

use std::future::Future;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long `eventually` waits for something to become true.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

/// Fails (never skips) when this machine cannot mount FUSE.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests mount a real FUSE filesystem. Install fuse3 (scripts/test does) \
         and, in a container, run with --device /dev/fuse --cap-add SYS_ADMIN. Not skipping: a skipped mount test proves nothing."
    );
    assert!(
        Command::new("fusermount3").arg("--version").output().is_ok(),
        "fusermount3 is missing: install fuse3 (scripts/test does)"
    );
}

/// Exit code, stdout and stderr of a finished program, for assertion messages.
pub fn both(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `probe` every 100 ms until it succeeds; panics with `what` and the
/// last reason after [`EVENTUALLY`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(why) if started.elapsed() > EVENTUALLY => {
                panic!("{what}: still not true after {EVENTUALLY:?}; last check: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Where the contextfs client's mount and project settings point: a test's
/// own server, token and project, and XDG/HOME dirs below `root`.
pub struct ClientEnv<'a> {
    pub root: &'a Path,
    pub server: &'a str,
    pub token: &'a str,
    pub project: &'a str,
}

/// `program` (bounded to 120 s) with `env` and nothing from the caller's
/// environment that would change what contextfs or git do.
pub fn isolated_command(program: &str, env: &ClientEnv) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "5", "120", program]);
    for var in [
        "CONTEXTFS_AGENT_ID",
        "CONTEXTFS_CACHE_DIR",
        "CONTEXTFS_LOG",
        "CONTEXTFS_DATA",
        "GIT_DIR",
        "GIT_WORK_TREE",
    ] {
        c.env_remove(var);
    }
    c.env("CONTEXTFS_SERVER", env.server)
        .env("CONTEXTFS_TOKEN", env.token)
        .env("CONTEXTFS_PROJECT", env.project)
        .env("XDG_STATE_HOME", env.root.join("state"))
        .env("XDG_CACHE_HOME", env.root.join("cache"))
        .env("XDG_CONFIG_HOME", env.root.join("config"))
        .env("HOME", env.root.join("home"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Mount Test")
        .env("GIT_AUTHOR_EMAIL", "mount@test.invalid")
        .env("GIT_COMMITTER_NAME", "Mount Test")
        .env("GIT_COMMITTER_EMAIL", "mount@test.invalid")
        .stdin(std::process::Stdio::null());
    c
}

/// The log file `contextfs mount --daemon` writes for `mountpoint`.
pub fn mount_log_path(state_home: &Path, mountpoint: &Path) -> std::path::PathBuf {
    state_home.join("contextfs/logs").join(format!(
        "mount-{}.log",
        mountpoint.display().to_string().replace('/', "_")
    ))
}
