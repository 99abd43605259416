//! Docker helpers shared by the local stand-ins for cloud sandboxes
//! (fake_daytona, fake_e2b): every sandbox is a local container.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `docker ARGS` with no input.
pub fn docker(args: &[&str]) -> std::io::Result<Output> {
    Command::new("docker").args(args).stdin(Stdio::null()).output()
}

/// `docker ARGS` with `input` on standard input; kills it a few seconds after
/// `timeout`. Returns the output and whether the time ran out.
pub fn docker_with_input(
    args: &[String],
    input: Vec<u8>,
    timeout: Option<Duration>,
) -> std::io::Result<(Output, bool)> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        // A runaway command is cut off (the sandbox-side `timeout` should already have).
        if timeout.is_some_and(|limit| started.elapsed() > limit + Duration::from_secs(5)) {
            let _ = child.kill();
            timed_out = true;
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let output = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    let timed_out = timed_out || timeout.is_some_and(|t| output.status.code() == Some(137) && started.elapsed() >= t);
    Ok((output, timed_out))
}

/// `docker run` arguments for a sandbox container: host network (so a
/// contextfs server on 127.0.0.1 is reachable), FUSE when asked, a shell that
/// waits for ever.
pub fn run_args(
    container: &str,
    hostname: &str,
    labels: &[String],
    env: &[(String, String)],
    fuse: bool,
    image: &str,
) -> Vec<String> {
    let mut run: Vec<String> = [
        "run",
        "-d",
        "--name",
        container,
        "--hostname",
        hostname,
        "--network",
        "host",
    ]
    .map(String::from)
    .to_vec();
    for label in labels {
        run.push("--label".into());
        run.push(label.clone());
    }
    if fuse {
        run.extend(
            [
                "--device",
                "/dev/fuse",
                "--cap-add",
                "SYS_ADMIN",
                "--security-opt",
                "apparmor=unconfined",
            ]
            .map(String::from),
        );
    }
    for (k, v) in env {
        run.push("-e".into());
        run.push(format!("{k}={v}"));
    }
    run.push(image.to_string());
    run.extend(
        [
            "sh",
            "-c",
            "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
        ]
        .map(String::from),
    );
    run
}

/// Writes `bytes` to `path` in the container (parents created).
pub fn write_file(container: &str, path: &str, bytes: Vec<u8>) -> Result<(), String> {
    let args: Vec<String> = [
        "exec",
        "-i",
        container,
        "sh",
        "-c",
        "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\"",
        "sh",
        path,
    ]
    .map(String::from)
    .to_vec();
    match docker_with_input(&args, bytes, None) {
        Ok((out, _)) if out.status.success() => Ok(()),
        Ok((out, _)) => Err(format!(
            "cannot write {path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("docker: {e}")),
    }
}

/// What reading a file in a container found.
pub enum ReadFile {
    Bytes(Vec<u8>),
    NotFound,
    Failed(String),
}

/// Reads the regular file `path` in the container.
pub fn read_file(container: &str, path: &str) -> ReadFile {
    let out = docker(&[
        "exec",
        container,
        "sh",
        "-c",
        "if [ -f \"$1\" ]; then exec cat \"$1\"; else exit 44; fi",
        "sh",
        path,
    ]);
    match out {
        Ok(o) if o.status.success() => ReadFile::Bytes(o.stdout),
        Ok(o) if o.status.code() == Some(44) => ReadFile::NotFound,
        Ok(o) => ReadFile::Failed(format!(
            "cannot read {path}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => ReadFile::Failed(format!("docker: {e}")),
    }
}

/// One entry of a folder listing in a container.
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    pub is_symlink: bool,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub uid: u32,
    pub gid: u32,
}

/// Lists the folder `path` in the container (`None` if it is not a folder).
pub fn list_dir(container: &str, path: &str) -> Result<Option<Vec<Entry>>, String> {
    // busybox stat: name, raw mode (hex), size, mtime, uid, gid; one line each.
    let script = "[ -d \"$1\" ] || exit 44; cd \"$1\" || exit 1; for f in .* *; do \
                  case \"$f\" in .|..) continue;; esac; [ -e \"$f\" ] || [ -L \"$f\" ] || continue; \
                  stat -c '%f %s %Y %u %g %n' -- \"$f\"; done";
    let out = docker(&["exec", container, "sh", "-c", script, "sh", path]).map_err(|e| format!("docker: {e}"))?;
    if out.status.code() == Some(44) {
        return Ok(None);
    }
    if !out.status.success() {
        return Err(format!(
            "cannot list {path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut entries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.splitn(6, ' ');
        let (Some(raw_mode), Some(size), Some(mtime), Some(uid), Some(gid), Some(name)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        let raw = u32::from_str_radix(raw_mode, 16).unwrap_or(0);
        entries.push(Entry {
            name: name.to_string(),
            is_dir: raw & 0o170000 == 0o040000,
            is_symlink: raw & 0o170000 == 0o120000,
            size: size.parse().unwrap_or(0),
            mode: raw & 0o7777,
            mtime: mtime.parse().unwrap_or(0),
            uid: uid.parse().unwrap_or(0),
            gid: gid.parse().unwrap_or(0),
        });
    }
    Ok(Some(entries))
}

/// `rwxr-xr-x` for the permission bits.
pub fn permissions(mode: u32) -> String {
    let mut text = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// A random id shaped like a UUID.
pub fn uuid() -> String {
    let h = hex::encode(rand::random::<[u8; 16]>());
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}
