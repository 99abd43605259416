//! What the cloud-sandbox suites (tests/daytona.rs, tests/e2b.rs) share: the
//! static binary and the image their fake sandboxes need, a fake provider
//! process (examples/fake_daytona, examples/fake_e2b), and `contextfs` run
//! in an environment of its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use contextfs::api::TokenInfo;

use super::{both, send, Checkout, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_contextfs");
/// The image every fake sandbox is a container of.
pub const SANDBOX_IMAGE: &str = "contextfs-busybox:latest";

fn target_dir() -> PathBuf {
    // target/debug/contextfs → target
    Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in target/<profile>/")
        .to_path_buf()
}

/// The static contextfs that goes into sandboxes.
pub fn static_binary() -> PathBuf {
    let path = std::env::var_os("CONTEXTFS_STATIC_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("static/x86_64-unknown-linux-gnu/release/contextfs"));
    assert!(
        path.is_file(),
        "no static contextfs at {}: run scripts/static-build (scripts/test does)",
        path.display()
    );
    path
}

/// The Python with the official sandbox SDKs (scripts/py-sdks).
pub fn sdk_python() -> PathBuf {
    let path =
        std::env::var_os("CONTEXTFS_SDK_PYTHON").map_or_else(|| target_dir().join("py-venv/bin/python"), PathBuf::from);
    assert!(
        path.is_file(),
        "no Python with the official SDKs at {}: run scripts/py-sdks (scripts/test does)",
        path.display()
    );
    path
}

pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["image", "inspect", SANDBOX_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "docker or the {SANDBOX_IMAGE} image is missing: run scripts/docker (scripts/test does)"
    );
}

pub fn container_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running fake provider (an example binary); stopped with SIGTERM, on
/// which it removes its containers.
pub struct FakeProvider {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, from its `listening on` line.
    pub base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeProvider {
    /// Starts `examples/<example>` with `key`, on a free port, its sandboxes
    /// made of [`SANDBOX_IMAGE`]; `fail_env` is its fault variable, which the
    /// test's environment must not pass on.
    pub fn start(example: &str, key: &str, fail_env: &str, extra: &[&str]) -> FakeProvider {
        let binary = Path::new(BIN)
            .parent()
            .expect("target/<profile>")
            .join("examples")
            .join(example);
        assert!(
            binary.is_file(),
            "no {}: build it with `cargo build --example {example}` (scripts/test does)",
            binary.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join(format!("{example}.log"));
        let mut child = Command::new(binary)
            .args(["--api-key", key, "--listen", "127.0.0.1:0", "--image", SANDBOX_IMAGE])
            .args(extra)
            .env_remove(fail_env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {example}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let base = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            panic!(
                "{example} did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        FakeProvider {
            child: Some(child),
            base,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `contextfs <provider> ...` in an environment of its own (state, config,
/// the server with the admin token, the provider's variables).
pub struct SandboxCli {
    _home: tempfile::TempDir,
    pub env: Vec<(String, String)>,
    /// `daytona` or `e2b`: the subcommand.
    provider: &'static str,
    /// Variables of the test's own environment that must not reach it.
    unset: &'static [&'static str],
}

impl SandboxCli {
    pub fn new(
        server: &TestServer,
        provider: &'static str,
        provider_env: &[(&str, &str)],
        unset: &'static [&'static str],
    ) -> SandboxCli {
        let home = tempfile::tempdir().expect("temp dir");
        let mut env = vec![
            ("HOME".to_string(), home.path().display().to_string()),
            (
                "XDG_STATE_HOME".to_string(),
                home.path().join("state").display().to_string(),
            ),
            (
                "XDG_CONFIG_HOME".to_string(),
                home.path().join("config").display().to_string(),
            ),
            ("CONTEXTFS_SERVER".to_string(), server.base.clone()),
            ("CONTEXTFS_TOKEN".to_string(), server.admin.clone()),
        ];
        env.extend(provider_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env.push((
            "CONTEXTFS_STATIC_BINARY".to_string(),
            static_binary().display().to_string(),
        ));
        env.push(("CONTEXTFS_LOG".to_string(), "warn".to_string()));
        SandboxCli {
            _home: home,
            env,
            provider,
            unset,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_remove("CONTEXTFS_PROJECT")
            .env_remove("CONTEXTFS_SANDBOX_SERVER");
        for var in self.unset {
            command.env_remove(var);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run contextfs")
    }

    /// `create --project P EXTRA...`, which must succeed: the id it printed
    /// and its log (stderr).
    pub fn create(&self, project: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec![self.provider, "create", "--project", project];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(out.status.success(), "create failed: {}", both(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!id.is_empty() && !id.contains('\n'), "create printed {id:?}");
        (id, String::from_utf8_lossy(&out.stderr).to_string())
    }

    pub fn exec(&self, id: &str, script: &str) -> Output {
        self.run(&[self.provider, "exec", id, "--", script])
    }

    /// Runs `script`, requires exit 0, returns standard output.
    pub fn exec_ok(&self, id: &str, script: &str) -> String {
        let out = self.exec(id, script);
        assert!(out.status.success(), "exec {script:?} failed: {}", both(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

pub async fn project_tokens(server: &TestServer, project: &str) -> Vec<TokenInfo> {
    send(server.get(&server.purl(project, "/tokens"), &server.admin))
        .await
        .expect("list tokens")
}

/// Waits (up to 30 s) until `path` on the server has exactly `want`.
pub async fn wait_for_file(server: &TestServer, project: &str, path: &str, want: &[u8]) -> Checkout {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match server.read(project, &server.admin, path, None).await {
            Ok(c) if c.bytes == want => return c,
            other if Instant::now() > deadline => {
                panic!("{path} never became {:?}: {other:?}", String::from_utf8_lossy(want))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
