//! A project mounted through a real FUSE mount for the mount suites
//! (tests/mount.rs, tests/mount_races.rs): mount, umount, kill -9, programs
//! steered inside it, and polls of what the server and the mount show.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::ops::Deref;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contextfs::api::*;
use contextfs::model::BlobHash;

use super::*;

/// A project mounted with `contextfs mount --daemon` into a temp dir with its
/// own XDG state and cache dirs. Dropping it runs `contextfs umount`, then
/// `fusermount3 -u -z` if something is still mounted, then kills a mount
/// process that survived both.
pub struct MountedWorkspace {
    pub client: MountClient,
    pub agent: String,
    /// Extra `contextfs mount` arguments.
    pub mount_args: Vec<String>,
    pub pid: Option<u32>,
}

impl Deref for MountedWorkspace {
    type Target = MountClient;
    fn deref(&self) -> &MountClient {
        &self.client
    }
}

impl MountedWorkspace {
    /// Creates `project` with a read-write token on `s` and mounts it.
    pub async fn create(s: &TestServer, project: &str, agent: &str) -> MountedWorkspace {
        let token = s.project_with_token(project).await;
        let home = tempfile::tempdir().expect("temp dir");
        Self::mount_at(Arc::new(home), "mnt", &s.mount_url(), project, &token, agent, &[])
    }

    /// Like `create`, with extra `contextfs mount` arguments.
    pub async fn create_with(s: &TestServer, project: &str, agent: &str, args: &[&str]) -> MountedWorkspace {
        let token = s.project_with_token(project).await;
        let home = tempfile::tempdir().expect("temp dir");
        Self::mount_at(Arc::new(home), "mnt", &s.mount_url(), project, &token, agent, args)
    }

    pub fn mount_at(
        home: Arc<tempfile::TempDir>,
        name: &str,
        server: &str,
        project: &str,
        token: &str,
        agent: &str,
        args: &[&str],
    ) -> MountedWorkspace {
        let mut m = MountedWorkspace {
            client: MountClient::new(home, name, server, project, token),
            agent: agent.to_string(),
            mount_args: args.iter().map(|a| a.to_string()).collect(),
            pid: None,
        };
        m.mount();
        m
    }

    /// A second mount of the same project (same XDG dirs, so the same cache).
    pub fn another(&self, name: &str, agent: &str) -> MountedWorkspace {
        Self::mount_at(
            self.home.clone(),
            name,
            &self.server,
            &self.project,
            &self.token,
            agent,
            &[],
        )
    }

    pub fn mount(&mut self) {
        let dir = self.dir.display().to_string();
        let mut args = vec!["mount", dir.as_str(), "--daemon", "--agent-id", &self.agent];
        args.extend(self.mount_args.iter().map(String::as_str));
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "contextfs mount --daemon failed: {}\nlog:\n{}",
            both(&out),
            self.log()
        );
        let text = stdout(&out);
        assert!(text.contains(&format!("mounted at {dir}")), "{text}");
        assert!(
            contextfs::mount::is_mounted(&self.dir),
            "{dir} is not in /proc/mounts after: {text}"
        );
        self.pid = Some(self.pid_from_status());
    }

    /// `contextfs umount`. When it returns, the mount process is gone (so a
    /// new mount can take the mount point at once).
    pub fn umount(&mut self) -> Output {
        let out = self.cli(&["umount", &self.dir.display().to_string()]);
        if let Some(pid) = self.pid {
            assert!(
                !mount_process_alive(pid, &self.dir),
                "the mount process {pid} still runs after umount returned: {}",
                both(&out)
            );
        }
        self.pid = None;
        assert!(
            !contextfs::mount::is_mounted(&self.dir),
            "still mounted after umount: {}",
            both(&out)
        );
        out
    }

    /// SIGKILL for the mount process: no flush, no unmount.
    pub fn kill_9(&mut self) {
        let pid = self.pid_from_status();
        assert_eq!(Some(pid), self.pid, "status names another process");
        let ok = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -9 {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while mount_process_alive(pid, &self.dir) {
            assert!(Instant::now() < deadline, "mount process {pid} survived kill -9");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.pid = None;
    }

    /// Starts a python script inside the mount, with pipes to talk to it.
    pub fn python(&self, script: &str, args: &[&str]) -> Steered {
        let mut child = self
            .command("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Steered { child, stdin, stdout }
    }
}

impl Drop for MountedWorkspace {
    fn drop(&mut self) {
        self.client.clean_up(&[], self.pid.as_slice());
    }
}

/// A process inside the mount that the test drives line by line.
pub struct Steered {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<ChildStdout>,
}

impl Steered {
    pub fn expect_line(&mut self, want: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from python");
        assert_eq!(line.trim_end(), want, "python said something else");
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to python");
        stdin.flush().expect("flush to python");
    }

    /// Closes its stdin, waits for success and returns what it printed.
    pub fn output_lines(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let lines: Vec<String> = (&mut self.stdout)
            .lines()
            .map(|l| l.expect("read from python"))
            .collect();
        let status = self.child.wait().expect("wait for python");
        assert!(status.success(), "python failed: {status}; printed {lines:?}");
        lines
    }

    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for python");
        assert!(status.success(), "python failed: {status}");
    }
}

/// Every regular file under `dir` as relative path -> (size, hash).
pub fn files_under(dir: &Path) -> BTreeMap<String, (u64, BlobHash)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("read dir") {
            let entry = entry.expect("dir entry");
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path()).expect("read file");
                let rel = entry.path().strip_prefix(dir).expect("below dir").display().to_string();
                out.insert(rel, (bytes.len() as u64, BlobHash::of(&bytes)));
            }
        }
    }
    out
}

/// The project's tree as path -> entry (admin view).
pub async fn tree_map(s: &TestServer, project: &str) -> Result<BTreeMap<String, TreeEntry>, String> {
    let listing = s
        .tree(project, &s.admin, &[])
        .await
        .map_err(|e| format!("tree: {e:?}"))?;
    Ok(listing.entries.into_iter().map(|e| (e.path.clone(), e)).collect())
}

/// Polls the server until `path` holds exactly `want`; returns its checkout.
pub async fn server_has(s: &TestServer, project: &str, path: &str, want: &[u8]) -> Checkout {
    eventually(&format!("server has the new {path}"), || async {
        match s.read(project, &s.admin, path, None).await {
            Ok(c) if c.bytes == want => Ok(c),
            Ok(c) => Err(format!("v{} holds {:?}", c.version, String::from_utf8_lossy(&c.bytes))),
            Err(e) => Err(format!("{e:?}")),
        }
    })
    .await
}

/// Polls the mount until `cat path` prints exactly `want`.
pub async fn mount_shows(m: &MountedWorkspace, path: &str, want: &str) {
    eventually(&format!("{} shows the new {path}", m.dir.display()), || async {
        let out = m.sh(&format!("cat {path}"));
        let got = stdout(&out);
        if out.status.success() && got == want {
            Ok(())
        } else {
            Err(both(&out))
        }
    })
    .await;
}
