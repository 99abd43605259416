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
        assert!(
            Instant::now() < deadline,
            "scripts/run did not stop within 60 s of Ctrl-C"
        );
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
