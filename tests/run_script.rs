//! `scripts/run`, the README's first command, as a user at a terminal runs
//! it: Ctrl-C signals the terminal's whole foreground process group, server
//! included, and must still commit the last change before the server stops.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_contextfs");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_of_scripts_run_commits_the_last_write_before_the_server_stops() {
    require_fuse();
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().canonicalize().expect("canonical temp dir");
    let (data, mount) = (root.join("data"), root.join("workspace"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // `setsid`: a session and process group of its own, as a terminal gives
    // a job (the test process is no group leader, so setsid execs in place
    // and the child's pid is the group's id).
    let mut run = Command::new("setsid");
    run.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/run"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", root.join("home"))
        .env("XDG_STATE_HOME", root.join("state"))
        .env("XDG_CACHE_HOME", root.join("cache"))
        .env("XDG_CONFIG_HOME", root.join("config"))
        .env("CONTEXTFS_BIN", BIN)
        .env("CONTEXTFS_DATA", &data)
        .env("CONTEXTFS_MOUNT", &mount)
        .env("CONTEXTFS_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A terminal's job starts with Ctrl-C at its default. A test run that was
    // itself started in the background by a non-interactive shell (`cmd &`)
    // inherits SIGINT ignored, and bash cannot trap a signal ignored on entry:
    // scripts/run then waited for its server forever.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut run, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = run.spawn().expect("start scripts/run");
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut said = String::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).expect("read scripts/run") == 0 {
            let status = child.wait();
            panic!("scripts/run ended before it was ready ({status:?}):\n{said}");
        }
        said.push_str(&line);
        if line.contains("Ctrl-C commits what is pending") {
            break;
        }
    }
    assert!(
        contextfs::mount::is_mounted(&mount),
        "scripts/run says it is ready:\n{said}"
    );
    std::fs::write(mount.join("notes.md"), "written just before Ctrl-C\n").expect("write into the mount");

    // Ctrl-C: SIGINT to the job's whole process group.
    let group = Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status()
        .expect("kill");
    assert!(group.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll scripts/run") {
            break status;
        }
        if Instant::now() >= deadline {
            panic!(
                "scripts/run did not stop within 60 s of Ctrl-C\n{}",
                hung_report(pid, &root, &data)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let said = format!("{said}{rest}\n--- stderr\n{err}");
    assert!(
        !contextfs::mount::is_mounted(&mount),
        "still mounted after Ctrl-C:\n{said}"
    );
    assert!(
        !err.contains("stay in the journal"),
        "Ctrl-C left changes in the journal (exit {status:?}):\n{said}"
    );

    // The server is gone with the script; one on the same data shows the write.
    let s = TestServer::start_on(data.clone(), vec![]).await;
    let history = s.history("demo", &s.admin, "notes.md").await;
    assert_eq!(history.len(), 1, "one version of notes.md:\n{said}");
    assert_eq!(
        s.read_bytes("demo", &s.admin, "notes.md").await,
        b"written just before Ctrl-C\n"
    );
}

/// What is still running in the job's process group and session, and the
/// tails of the server's and the mount's logs: enough to tell which step of
/// the clean-up hung.
fn hung_report(pid: u32, root: &std::path::Path, data: &std::path::Path) -> String {
    let ps = Command::new("ps")
        .args(["-eo", "pid,pgid,sid,stat,wchan:24,args"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let related: Vec<&str> = ps
        .lines()
        .filter(|l| l.contains("contextfs") || l.contains("scripts/run") || l.contains(&format!(" {pid} ")))
        .collect();
    let tail = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let mount_logs: Vec<String> = walk(&root.join("state"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log") && !p.ends_with("journal.log"))
        .map(|p| format!("--- {} ---\n{}", p.display(), tail(&p)))
        .collect();
    // Not left running for the next test: the job, and the server and
    // mount it started in sessions of their own (their arguments name `root`).
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
    let root_str = root.to_string_lossy();
    for line in ps.lines().filter(|l| l.contains(root_str.as_ref())) {
        if let Some(other) = line.split_whitespace().next() {
            let _ = Command::new("kill").args(["-KILL", other]).status();
        }
    }
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(root.join("workspace"))
        .status();
    format!(
        "--- processes ---\n{}\n--- server log ---\n{}\n{}",
        related.join("\n"),
        tail(&data.join("serve.log")),
        mount_logs.join("\n")
    )
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
