//! Running `contextfs serve` for a test: its data directory, its database
//! (SQLite, or PostgreSQL with `CONTEXTFS_TEST_DATABASE`), its blobs (a
//! folder, or S3 with `CONTEXTFS_TEST_BLOBS=s3`), restarts and logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{latency, new_http_client, s3_support, Api, ADMIN_TOKEN};

/// How long a server may take to print its `listening on` line.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Set (by `scripts/test`) to a PostgreSQL URL whose user may create
/// databases: every [`TestServer`] then keeps its metadata in a database of
/// its own on that server, so the API suite runs against the PostgreSQL store.
pub const TEST_DATABASE_ENV: &str = "CONTEXTFS_TEST_DATABASE";

/// `url` with its database name replaced by `name`.
pub fn database_url(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A new, empty database on the `CONTEXTFS_TEST_DATABASE` server, or `None`
/// when that variable is not set.
pub async fn fresh_test_database() -> Option<String> {
    let admin = std::env::var(TEST_DATABASE_ENV).ok().filter(|u| !u.trim().is_empty())?;
    let name = format!("cfs_test_{}", hex::encode(rand::random::<[u8; 6]>()));
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{TEST_DATABASE_ENV}={admin}: cannot connect: {e}"));
    let driver = tokio::spawn(connection);
    let mut attempt = 0;
    loop {
        match client.batch_execute(&format!("CREATE DATABASE {name}")).await {
            Ok(()) => break,
            // concurrent CREATE DATABASEs may briefly collide on the template
            Err(e) if attempt < 20 => {
                attempt += 1;
                eprintln!("CREATE DATABASE {name} failed ({e:?}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("CREATE DATABASE {name}: {e:?}"),
        }
    }
    drop(client);
    let _ = driver.await;
    Some(database_url(&admin, &name))
}

/// With this set to `s3`, every test server keeps its blobs in the S3
/// server of `s3_support` (under a prefix of its own) unless the test names
/// its own `--blobs`: `scripts/test` runs the mount suites that way.
pub const TEST_BLOBS_ENV: &str = "CONTEXTFS_TEST_BLOBS";

fn blobs_in_s3() -> bool {
    match std::env::var(TEST_BLOBS_ENV).unwrap_or_default().as_str() {
        "" => false,
        "s3" => true,
        other => panic!("{TEST_BLOBS_ENV}={other:?}: the only value is `s3`"),
    }
}

/// A running `contextfs serve` on its own temporary data directory.
pub struct TestServer {
    root: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub api: Api,
    extra_args: Vec<String>,
    /// Extra environment variables for the server process (e.g. AWS credentials).
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
    starts: usize,
    /// With `CONTEXTFS_TEST_LATENCY_MS` set: the slow, reordering way in
    /// that mounts use (see [`TestServer::mount_url`]).
    proxy: Option<latency::LatencyProxy>,
}

impl Deref for TestServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra `serve` flags (e.g. `--max-blob-bytes`).
    pub async fn start_with(extra_args: &[&str]) -> TestServer {
        Self::start_with_env(extra_args, &[]).await
    }

    /// Starts a server with extra `serve` flags and environment variables.
    /// With `CONTEXTFS_TEST_DATABASE` set, its metadata lives in a fresh
    /// PostgreSQL database (kept across restarts) instead of SQLite.
    pub async fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> TestServer {
        let root = tempfile::tempdir().expect("temp dir");
        let data_dir = root.path().join("data");
        let mut args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Some(url) = fresh_test_database().await {
            args.extend(["--database".to_string(), url]);
        }
        if blobs_in_s3() && !args.iter().any(|a| a == "--blobs") {
            args.extend(s3_support::blob_args(&s3_support::fresh_prefix("server")));
            env.extend(s3_support::AWS_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        }
        Self::start_in(root, data_dir, args, env).await
    }

    /// Starts a server on `data_dir` (which may be another server's) with
    /// exactly these extra flags; its logs go to a temp dir of its own.
    pub async fn start_on(data_dir: PathBuf, extra_args: Vec<String>) -> TestServer {
        Self::start_on_with_env(data_dir, extra_args, &[]).await
    }

    /// [`TestServer::start_on`] with extra environment variables.
    pub async fn start_on_with_env(data_dir: PathBuf, extra_args: Vec<String>, env: &[(&str, &str)]) -> TestServer {
        let root = tempfile::tempdir().expect("temp dir");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::start_in(root, data_dir, extra_args, env).await
    }

    async fn start_in(
        root: tempfile::TempDir,
        data_dir: PathBuf,
        extra_args: Vec<String>,
        extra_env: Vec<(String, String)>,
    ) -> TestServer {
        let mut server = TestServer {
            root,
            data_dir,
            api: Api {
                http: new_http_client(),
                base: String::new(),
                admin: ADMIN_TOKEN.to_string(),
            },
            extra_args,
            extra_env,
            child: None,
            starts: 0,
            proxy: None,
        };
        server.spawn().await;
        server
    }

    /// The `--database` URL this server was started with, if any.
    pub fn database(&self) -> Option<&str> {
        let at = self.extra_args.iter().position(|a| a == "--database")?;
        self.extra_args.get(at + 1).map(String::as_str)
    }

    /// Whether the server process is running (not killed or stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.root.path().join(format!("server-{n}.log"))
    }

    /// The server's stderr so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        match self.spawn_listening_on("127.0.0.1:0").await {
            Ok(addr) => {
                self.api.base = format!("http://{addr}");
                self.route_mounts_to(addr);
            }
            Err(why) => panic!("{why}"),
        }
    }

    /// Points the latency proxy (started on first use) at `addr`.
    fn route_mounts_to(&mut self, addr: SocketAddr) {
        match (&self.proxy, latency::latency_from_env()) {
            (Some(proxy), _) => proxy.set_upstream(addr),
            (None, Some((min, max))) => self.proxy = Some(latency::LatencyProxy::start(addr, min, max)),
            (None, None) => {}
        }
    }

    /// From now on mounts reach this server through a proxy that adds
    /// `min..=max` to every round trip and reorders concurrent answers
    /// (whatever `CONTEXTFS_TEST_LATENCY_MS` says).
    pub fn slow_down_mounts(&mut self, min: Duration, max: Duration) {
        let addr = self.listen_addr().parse().expect("the server's address");
        self.proxy = Some(latency::LatencyProxy::start(addr, min, max));
    }

    /// The URL mounts use: the server itself, or with
    /// `CONTEXTFS_TEST_LATENCY_MS` set, a proxy that delays and reorders
    /// every request and answer. The test's own API calls stay direct.
    pub fn mount_url(&self) -> String {
        match &self.proxy {
            Some(proxy) => proxy.url(),
            None => self.api.base.clone(),
        }
    }

    /// Starts `contextfs serve --listen LISTEN` and waits for its `listening
    /// on` line: the address it printed, or (with the log) why it exited
    /// before listening. Panics if it neither listens nor exits in time.
    async fn spawn_listening_on(&mut self, listen: &str) -> Result<SocketAddr, String> {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("create log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_contextfs"))
            .arg("serve")
            .arg("--data")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(listen)
            .args(&self.extra_args)
            .env("CONTEXTFS_LOG", "warn")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env(contextfs::server::ADMIN_TOKEN_ENV, ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn contextfs serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        // Reads until the `listening on` line, then keeps draining stdout so the
        // server can never block on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                    if let (Some(tx), Ok(addr)) = (tx.take(), addr.parse()) {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        self.child = Some(child);
        match tokio::time::timeout(START_DEADLINE, rx).await {
            Ok(Ok(addr)) => Ok(addr),
            Ok(Err(_)) => {
                let status = self.child.as_mut().and_then(|c| c.wait().ok());
                self.child = None;
                Err(format!(
                    "server exited before listening ({status:?}); log:\n{}",
                    self.log()
                ))
            }
            Err(_) => panic!(
                "server did not print `listening on` within {START_DEADLINE:?}; log:\n{}",
                self.log()
            ),
        }
    }

    /// SIGKILL: no chance to flush or clean up anything.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("server is running");
        child.kill().expect("kill -9");
        let status = child.wait().expect("reap server");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "server died of SIGKILL");
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within 30 s of SIGTERM; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again on the same data directory (stopping it
    /// gracefully first when it is still running). The port changes.
    pub async fn restart(&mut self) {
        self.stop_gracefully_if_running().await;
        self.spawn().await;
    }

    /// SIGTERM when the server runs; it must exit successfully.
    async fn stop_gracefully_if_running(&mut self) {
        if self.child.is_some() {
            let status = self.stop().await;
            assert!(
                status.success(),
                "graceful shutdown failed: {status:?}; log:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Added for the mount tests: restarting on the same address
// ---------------------------------------------------------------------------

impl TestServer {
    /// The `127.0.0.1:PORT` this server listens (or last listened) on.
    pub fn listen_addr(&self) -> String {
        self.api.base.trim_start_matches("http://").to_string()
    }

    /// Starts the server again on the same data directory AND the same
    /// address (stopping it gracefully first if it still runs), so clients
    /// that keep the URL — a running mount, a journal keyed by the URL —
    /// reconnect. Retries for a while if the port is briefly not bindable.
    pub async fn restart_on_same_port(&mut self) {
        self.stop_gracefully_if_running().await;
        let addr = self.listen_addr();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn_at(&addr).await {
                Ok(()) => return,
                Err(why) if Instant::now() < deadline => {
                    eprintln!("restart on {addr} failed ({why}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(why) => panic!("cannot restart the server on {addr}: {why}"),
            }
        }
    }

    /// Like the private `spawn`, but on a fixed address and returning an
    /// error (with the log) instead of panicking when the server exits early.
    async fn spawn_at(&mut self, addr: &str) -> Result<(), String> {
        let got = self.spawn_listening_on(addr).await?;
        assert_eq!(got.to_string(), addr, "server listens elsewhere");
        self.api.base = format!("http://{got}");
        Ok(())
    }
}

impl TestServer {
    /// The server's process id while it runs (to freeze it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}
