//! The control socket of a running mount: `contextfs status`,
//! `contextfs umount` and `flush` (used by `contextfs run` and the Docker
//! volume plugin) send one JSON line and read JSON lines back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::replicator::Replicator;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountInfo {
    pub project: String,
    pub mountpoint: String,
    pub server: String,
    pub journal: String,
    pub pid: u32,
    /// Where the published skills are mounted (`--skills-dir`), if apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skills_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedItem {
    pub path: String,
    pub change: String,
    pub error: Option<String>,
    /// Unix milliseconds of the change (absent from older mounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<i64>,
}

/// How the blob cache serves this mount (absent from older mounts).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheReport {
    pub bytes_cached: u64,
    pub limit_bytes: u64,
    pub blobs: usize,
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountReport {
    pub info: MountInfo,
    pub online: bool,
    pub last_error: Option<String>,
    /// Open files with writes that are not closed yet.
    pub pending: Vec<String>,
    /// Changes in the journal the server has not acknowledged.
    pub queued: Vec<QueuedItem>,
    /// (path, clean | merged | lww) of every commit acknowledged since mount.
    pub outcomes: Vec<(String, String)>,
    pub commits: u64,
    /// Which files the kernel reads straight from the cache, in words.
    #[serde(default)]
    pub passthrough: String,
    #[serde(default)]
    pub cache: Option<CacheReport>,
    /// The change-feed cursor the mount has applied up to.
    #[serde(default)]
    pub feed_cursor: Option<i64>,
}

impl MountReport {
    /// One line per file, as `umount` and `status` print it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (path, status) in &self.outcomes {
            if !self.queued.iter().any(|q| &q.path == path) {
                out.push_str(&format!("{status:<8} {path}\n"));
            }
        }
        for q in &self.queued {
            let why = q.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
            out.push_str(&format!("queued   {} [{}]{why}\n", q.path, q.change));
        }
        for p in &self.pending {
            out.push_str(&format!("pending  {p} (open, not closed yet)\n"));
        }
        if !self.queued.is_empty() {
            out.push_str(&format!(
                "{} change(s) are still only in the journal at {}; they are committed by the next mount of project {} at {}\n",
                self.queued.len(),
                self.info.journal,
                self.info.project,
                self.info.mountpoint
            ));
        }
        out
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    Progress(String),
    Done(MountReport),
    Status(MountReport),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Request {
    cmd: String,
    /// `flush`: report the changes acknowledged at or after this moment
    /// (ms since the epoch) instead of everything since the mount started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since_ms: Option<i64>,
}

pub fn report(info: &MountInfo, worker: &Replicator) -> MountReport {
    let status = worker.status();
    MountReport {
        info: info.clone(),
        online: status.online,
        last_error: status.last_error,
        pending: worker.vfs.unflushed(),
        queued: super::queued_items(&worker.vfs),
        outcomes: worker
            .vfs
            .outcomes()
            .into_iter()
            .map(|(p, s)| (p, s.as_str().to_string()))
            .collect(),
        commits: status.commits,
        passthrough: worker.vfs.passthrough_description(),
        cache: Some({
            let cache = worker.vfs.cache();
            let (bytes_cached, limit_bytes, blobs) = cache.usage();
            let (hits, misses) = cache.hit_counts();
            CacheReport {
                bytes_cached,
                limit_bytes,
                blobs,
                hits,
                misses,
            }
        }),
        feed_cursor: Some(worker.vfs.cursor()),
    }
}

/// Serves the control socket until `stop` flips.
pub async fn serve(
    path: PathBuf,
    info: MountInfo,
    worker: Arc<Replicator>,
    umount: tokio::sync::mpsc::Sender<tokio::sync::mpsc::Sender<Message>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot open the control socket; `contextfs umount` will fall back to a plain unmount");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let info = info.clone();
        let worker = worker.clone();
        let umount = umount.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            let Ok(Some(line)) = lines.next_line().await else {
                return;
            };
            let reply = |m: &Message| serde_json::to_string(m).map(|s| s + "\n").unwrap_or_default();
            let request = serde_json::from_str::<Request>(&line);
            let since_ms = request.as_ref().ok().and_then(|r| r.since_ms);
            match request.map(|r| r.cmd) {
                Ok(cmd) if cmd == "flush" => {
                    // Drain with force, like umount, but stay mounted.
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                    let flush = async {
                        let progress = move |line: String| {
                            let _ = tx.send(line);
                        };
                        super::flush_pending(&worker, &progress).await
                    };
                    tokio::pin!(flush);
                    loop {
                        tokio::select! {
                            _ = &mut flush => break,
                            Some(line) = rx.recv() => {
                                let _ = write.write_all(reply(&Message::Progress(line)).as_bytes()).await;
                            }
                        }
                    }
                    let mut done = report(&info, &worker);
                    if let Some(since) = since_ms {
                        done.outcomes = worker.acked_since(since);
                    }
                    let _ = write.write_all(reply(&Message::Done(done)).as_bytes()).await;
                }
                Ok(cmd) if cmd == "status" => {
                    let _ = write
                        .write_all(reply(&Message::Status(report(&info, &worker))).as_bytes())
                        .await;
                }
                Ok(cmd) if cmd == "umount" => {
                    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
                    if umount.send(tx).await.is_err() {
                        let _ = write
                            .write_all(reply(&Message::Error("the mount is already stopping".into())).as_bytes())
                            .await;
                        return;
                    }
                    while let Some(m) = rx.recv().await {
                        let done = matches!(m, Message::Done(_));
                        if write.write_all(reply(&m).as_bytes()).await.is_err() || done {
                            break;
                        }
                    }
                }
                _ => {
                    let _ = write
                        .write_all(reply(&Message::Error(format!("unknown request {line:?}"))).as_bytes())
                        .await;
                }
            }
        });
    }
}

/// Sends `cmd` to the mount at `socket`; `on_message` sees every reply line
/// until the final one, which is returned.
pub fn request_with(socket: &Path, cmd: &str, on_message: impl FnMut(&Message)) -> std::io::Result<Message> {
    send_request(
        socket,
        &Request {
            cmd: cmd.to_string(),
            since_ms: None,
        },
        on_message,
    )
}

/// Asks the mount at `socket` to commit everything queued now (waiting for
/// the server up to the same grace as umount) without unmounting. The answer
/// is a [`Message::Done`] whose outcomes are the changes acknowledged at or
/// after `since_ms` (ms since the epoch), and whose `queued` lists what is
/// still only in the journal.
pub fn flush(socket: &Path, since_ms: i64, on_message: impl FnMut(&Message)) -> std::io::Result<Message> {
    send_request(
        socket,
        &Request {
            cmd: "flush".to_string(),
            since_ms: Some(since_ms),
        },
        on_message,
    )
}

/// How long `status` waits for the mount's answer. It comes from the sync
/// worker's runtime in milliseconds; a mount that says nothing for this long
/// is stuck, and `contextfs status` must say so instead of hanging too.
/// (umount and flush have no such bound: committing may take long, and
/// they report progress meanwhile.)
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

fn send_request(socket: &Path, request: &Request, on_message: impl FnMut(&Message)) -> std::io::Result<Message> {
    let answer_within = (request.cmd == "status").then_some(STATUS_TIMEOUT);
    send_request_within(socket, request, answer_within, on_message)
}

fn send_request_within(
    socket: &Path,
    request: &Request,
    answer_within: Option<Duration>,
    mut on_message: impl FnMut(&Message),
) -> std::io::Result<Message> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.set_read_timeout(answer_within)?;
    let line = serde_json::to_string(request)? + "\n";
    stream.write_all(line.as_bytes())?;
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the mount did not answer within {} s",
                    answer_within.unwrap_or_default().as_secs_f32()
                ),
            ),
            _ => e,
        })?;
        let message: Message = serde_json::from_str(&line)?;
        match message {
            Message::Progress(_) => on_message(&message),
            other => return Ok(other),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the mount closed the control connection",
    ))
}

pub fn request(socket: &Path, cmd: &str) -> std::io::Result<Message> {
    request_with(socket, cmd, |_| {})
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A mount whose control socket accepts but never answers (its runtime
    /// stuck): `status` fails with `TimedOut` instead of waiting for ever.
    #[test]
    fn a_status_request_to_a_mount_that_never_answers_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("control.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let held = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
        let request = Request {
            cmd: "status".to_string(),
            since_ms: None,
        };
        let err = send_request_within(&socket, &request, Some(Duration::from_millis(200)), |_| {})
            .expect_err("no answer ever comes");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("did not answer within"), "{err}");
        drop(held.join().expect("accept"));
    }
}
