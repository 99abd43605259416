//! The sync worker: drains the journal to the server (with retry and
//! backoff) and follows the project's change feed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;

use super::remote::Remote;
use crate::api::VersionInfo;
use crate::api::{CommitRequest, DeleteRequest, ErrorCode, MkdirRequest, RenameRequest};
use crate::client::{ClientError, ClientResult};
use crate::model::BlobHash;
use crate::vfs::drain::{ContentSource, DrainItem, DrainOp};
use crate::vfs::Vfs;

/// How long a change must rest before it is sent, so an editor's
/// write-temp-then-rename save reaches the server as one commit.
pub const DEBOUNCE_MS: i64 = 150;
/// Commits sent at once.
const COMMIT_CONCURRENCY: usize = 16;
/// The shortest pause between two drain rounds while changes keep coming.
const MIN_ROUND_GAP: Duration = Duration::from_millis(25);
/// A record the server refused is retried after this long.
const FAILED_RETRY: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct ReplicatorStatus {
    /// The last round could reach the server.
    pub online: bool,
    /// Why the server could not be reached or refused, if it did.
    pub last_error: Option<String>,
    pub commits: u64,
}

pub struct Replicator {
    pub vfs: Arc<Vfs>,
    remote: Arc<dyn Remote>,
    project: String,
    agent_id: Option<String>,
    status: Mutex<ReplicatorStatus>,
    /// Records the server refused, and when to try them again.
    refused: Mutex<HashMap<u64, Instant>>,
    /// First commits of new files whose answer never came (the connection
    /// dropped) and whose file was deleted meanwhile, so no record asks for
    /// them again: the server may or may not have made the node. Each is sent
    /// again with its idempotency key until the server answers, and its
    /// answer then has the node deleted.
    doubtful: Mutex<Vec<DrainItem>>,
    /// Recently acknowledged changes with their time, for `flush` reports.
    acked: Mutex<std::collections::VecDeque<Acked>>,
    /// The server answered the batch route with 404: commit one by one.
    batch_unsupported: std::sync::atomic::AtomicBool,
    /// What the server accepts (`GET /health`), once known (upload.rs).
    limits: Mutex<Option<crate::api::Limits>>,
    /// The limits are not known, or the server may have restarted since.
    limits_stale: std::sync::atomic::AtomicBool,
}

/// One change the server acknowledged: when (ms since the epoch, local
/// clock), which path and how (`clean | merged | lww | mkdir | renamed | deleted`).
#[derive(Debug, Clone)]
pub struct Acked {
    pub at_ms: i64,
    pub path: String,
    pub outcome: String,
}

/// How many acknowledged changes [`Replicator::acked_since`] remembers.
const ACKED_KEPT: usize = 100_000;

/// What one drain round achieved.
#[derive(Debug, Default)]
pub struct Round {
    pub done: usize,
    pub left: usize,
    /// Set when the round stopped on an error worth retrying later.
    pub transient: Option<String>,
    /// The server refused something this round (its reason is the status's
    /// last error, which the changes that did land must not clear).
    pub refused: bool,
}

#[derive(Clone)]
enum Outcome {
    Done,
    /// Try again later (server down, 5xx).
    Transient(String),
    /// The server refused this one; it stays in the journal.
    Refused(String),
}

fn classify(e: ClientError) -> Outcome {
    if e.is_transient() {
        return Outcome::Transient(e.to_string());
    }
    match e.status() {
        Some(StatusCode::UNAUTHORIZED) | Some(StatusCode::FORBIDDEN) => Outcome::Refused(format!(
            "{e} — the token was revoked or lacks write access; changes stay in the journal"
        )),
        _ => Outcome::Refused(e.to_string()),
    }
}

/// The idempotency key of a commit: the same for every retry of one request
/// (also after a restart replays the journal), different for any other. A
/// record's `rev` starts again at 1 once it is acknowledged, so uid and rev
/// alone would repeat: the server would then answer a later commit of the
/// same file with the earlier commit's version and the new bytes were lost.
fn commit_key(uid: u64, rev: u64, op: &DrainOp) -> String {
    let what = match op {
        DrainOp::Commit {
            path,
            node,
            base_version,
            hash,
            kind,
            mode,
            ..
        } => format!("{path}|{node:?}|{base_version:?}|{hash}|{}|{mode}", kind.as_str()),
        other => format!("{other:?}"),
    };
    let digest = blake3::hash(what.as_bytes()).to_hex();
    format!("u{uid:016x}-r{rev}-{}", &digest[..32])
}

impl Replicator {
    pub fn new(vfs: Arc<Vfs>, remote: Arc<dyn Remote>, project: String, agent_id: Option<String>) -> Self {
        // From now on fsync waits for the server (until a round fails to reach it).
        vfs.round_finished(true);
        Self {
            vfs,
            remote,
            project,
            agent_id,
            status: Mutex::new(ReplicatorStatus {
                online: true,
                ..Default::default()
            }),
            refused: Mutex::new(HashMap::new()),
            doubtful: Mutex::new(Vec::new()),
            acked: Mutex::new(std::collections::VecDeque::new()),
            batch_unsupported: std::sync::atomic::AtomicBool::new(false),
            limits: Mutex::new(None),
            limits_stale: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn note(&self, path: &str, outcome: &str) {
        if let Ok(mut acked) = self.acked.lock() {
            if acked.len() >= ACKED_KEPT {
                acked.pop_front();
            }
            acked.push_back(Acked {
                at_ms: crate::server::store::now_millis(),
                path: path.to_string(),
                outcome: outcome.to_string(),
            });
        }
    }

    /// The last outcome per path of the changes acknowledged at or after
    /// `since_ms`, sorted by path.
    pub fn acked_since(&self, since_ms: i64) -> Vec<(String, String)> {
        let mut last = std::collections::BTreeMap::new();
        if let Ok(acked) = self.acked.lock() {
            for a in acked.iter().filter(|a| a.at_ms >= since_ms) {
                last.insert(a.path.clone(), a.outcome.clone());
            }
        }
        last.into_iter().collect()
    }

    pub fn status(&self) -> ReplicatorStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set_status(&self, online: bool, error: Option<String>) {
        if let Ok(mut s) = self.status.lock() {
            s.online = online;
            if error.is_some() || online {
                s.last_error = error;
            }
        }
    }

    fn refused_recently(&self, uid: u64) -> bool {
        self.refused
            .lock()
            .map(|r| r.get(&uid).is_some_and(|t| t.elapsed() < FAILED_RETRY))
            .unwrap_or(false)
    }

    /// Sends everything that is ready, in dependency order, until nothing is
    /// left or the server cannot be reached. `force` skips the debounce.
    pub async fn drain(&self, force: bool) -> Round {
        let mut round = Round::default();
        self.refresh_limits_if_stale().await;
        self.resolve_doubtful(&mut round).await;
        loop {
            let min_age = if force { 0 } else { DEBOUNCE_MS };
            let plan = self.vfs.drain_plan(min_age, &|uid| self.refused_recently(uid));
            if plan.is_empty() {
                break;
            }
            let mut progressed = 0;
            let mut refused_namespace = false;
            // Contents are independent of each other (they go in batches),
            // and so are deletions at one depth (children go before their
            // parents) and a run of mkdirs at one depth: those run
            // concurrently. Renames run one by one, in order.
            let phase_of = |item: &DrainItem| match (item.order_key(), &item.op) {
                ((1, depth), DrainOp::Mkdir { .. }) => (1, depth, true),
                ((3, depth), _) => (3, depth, false),
                ((kind, _), _) => (kind, 0, false),
            };
            let mut phases: Vec<Vec<DrainItem>> = Vec::new();
            for item in plan {
                match phases.last_mut() {
                    Some(last) if phase_of(&last[0]) == phase_of(&item) => last.push(item),
                    _ => phases.push(vec![item]),
                }
            }
            for phase in phases {
                let concurrent = matches!(phase_of(&phase[0]), (2 | 3, _, _) | (1, _, true));
                let outcomes: Vec<(DrainItem, Outcome)> = if phase_of(&phase[0]).0 == 2 {
                    self.commit_phase(phase).await
                } else if concurrent {
                    self.execute_concurrently(phase).await
                } else {
                    let mut out = Vec::new();
                    for item in phase {
                        let outcome = self.execute(&item).await;
                        let stop = matches!(outcome, Outcome::Transient(_));
                        out.push((item, outcome));
                        if stop {
                            break;
                        }
                    }
                    out
                };
                for (item, outcome) in outcomes {
                    match outcome {
                        Outcome::Done => {
                            progressed += 1;
                            if let Ok(mut r) = self.refused.lock() {
                                r.remove(&item.uid);
                            }
                        }
                        Outcome::Transient(e) => {
                            self.keep_if_doubtful(&item);
                            round.transient = Some(e);
                        }
                        Outcome::Refused(e) => {
                            refused_namespace |= matches!(item.op, DrainOp::Mkdir { .. } | DrainOp::Rename { .. });
                            tracing::warn!(op = %item.describe(), error = %e, "the server refused a change; it stays in the journal");
                            self.vfs.fail(item.uid, &e);
                            round.refused = true;
                            if let Ok(mut r) = self.refused.lock() {
                                r.insert(item.uid, Instant::now());
                            }
                            self.set_status(true, Some(e));
                        }
                    }
                }
                // What lies below a refused mkdir or rename waits for it: the
                // plan is made again, and holds it back (`refused_recently`).
                // Sent now, a file would make the server create the very
                // directory it refused, under the path this mount assumed.
                if round.transient.is_some() || refused_namespace {
                    break;
                }
            }
            round.done += progressed;
            // (After a refused namespace change, the rest is planned again without it.)
            if round.transient.is_some() || (progressed == 0 && !refused_namespace) {
                break;
            }
        }
        match &round.transient {
            Some(e) => {
                self.limits_may_have_changed();
                self.set_status(false, Some(e.clone()))
            }
            None if round.done > 0 && !round.refused => self.set_status(true, None),
            None => {}
        }
        // Acknowledgements were appended without waiting; make them durable
        // so a restart does not resend (harmless, but wasted work).
        if round.done > 0 {
            if let Err(e) = self.vfs.make_journal_durable() {
                tracing::warn!(error = %e, "cannot sync the journal");
            }
        }
        round.left = self.vfs.queued().len();
        self.vfs.round_finished(round.transient.is_none());
        round
    }

    /// A first commit that failed in a way that may have reached the server,
    /// for a file deleted meanwhile: nothing else would ever find out.
    fn keep_if_doubtful(&self, item: &DrainItem) {
        let first_commit = matches!(item.op, DrainOp::Commit { node: None, .. });
        if first_commit && !self.vfs.has_record(item.uid) {
            if let Ok(mut doubtful) = self.doubtful.lock() {
                doubtful.push(item.clone());
            }
        }
    }

    /// Sends the doubtful commits again (same idempotency key, so the server
    /// makes at most one node); an answer leads to that node's deletion, a
    /// refusal means the server never made it.
    async fn resolve_doubtful(&self, round: &mut Round) {
        let pending = self
            .doubtful
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        for item in pending {
            match self.execute(&item).await {
                Outcome::Done => round.done += 1,
                Outcome::Refused(e) => {
                    tracing::debug!(op = %item.describe(), error = %e, "a doubtful commit was refused: the server has no such node")
                }
                Outcome::Transient(e) => {
                    round.transient = Some(e);
                    if let Ok(mut doubtful) = self.doubtful.lock() {
                        doubtful.push(item);
                    }
                }
            }
        }
    }

    async fn execute(&self, item: &DrainItem) -> Outcome {
        let p = &self.project;
        // Until its answer is applied, the feed's echo of a create waits.
        let _in_flight = self.vfs.sending(item);
        match &item.op {
            DrainOp::Forget => match self.vfs.forget_record(item.uid, item.rev) {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Transient(e.to_string()),
            },
            DrainOp::Mkdir { path, mode } => {
                let req = MkdirRequest {
                    path: path.clone(),
                    mode: Some(*mode),
                    agent_id: self.agent_id.clone(),
                    message: None,
                };
                match self.remote.mkdir(p, &req).await {
                    Ok(v) => {
                        self.note(&v.path, "mkdir");
                        self.local(self.vfs.ack_namespace(item.uid, item.rev, &v))
                    }
                    Err(e) => classify(e),
                }
            }
            DrainOp::Rename { node, from, to } => {
                let from = &self.vfs.server_path_now(item.uid).unwrap_or_else(|| from.clone());
                let req = RenameRequest {
                    from: from.clone(),
                    to: to.clone(),
                    // Locally the target is ours; whatever the server has there
                    // becomes a restorable deletion.
                    replace: true,
                    base_version: None,
                    agent_id: self.agent_id.clone(),
                    message: None,
                    node: Some(*node),
                };
                match self.remote.rename(p, &req).await {
                    Ok(v) => {
                        self.note(&v.path, "renamed");
                        self.local(self.vfs.ack_namespace(item.uid, item.rev, &v))
                    }
                    Err(e) if e.status() == Some(StatusCode::NOT_FOUND) || e.has_code(ErrorCode::NodeMismatch) => {
                        // The node is gone from where we knew it: send ours as new.
                        self.local(self.vfs.unbind(item.uid))
                    }
                    Err(e) => classify(e),
                }
            }
            DrainOp::Commit { source, hash, .. } => {
                if let Some(failed) = self.upload_content(item).await {
                    return failed;
                }
                let Some(mut req) = self.commit_request(item) else {
                    return Outcome::Done;
                };
                let mut result = self.remote.commit(p, &req).await;
                if let (Err(e), ContentSource::Inline(bytes)) = (&result, source) {
                    if e.has_code(ErrorCode::BlobMissing) {
                        // A server that predates inline content: upload, then commit.
                        if let Err(e) = self.remote.put_blob(p, Bytes::from(bytes.clone())).await {
                            return classify(e);
                        }
                        req.content_base64 = None;
                        result = self.remote.commit(p, &req).await;
                    }
                }
                self.commit_answered(item, hash, result)
            }
            DrainOp::Delete { node, path, recursive } => {
                let path = &self.vfs.server_path_now(item.uid).unwrap_or_else(|| path.clone());
                let req = DeleteRequest {
                    path: path.clone(),
                    base_version: None,
                    recursive: *recursive,
                    agent_id: self.agent_id.clone(),
                    message: None,
                    node: Some(*node),
                };
                match self.remote.delete(p, &req).await {
                    Ok(response) => {
                        self.note(path.as_str(), "deleted");
                        self.local(self.vfs.ack_delete(item.uid, item.rev, *node, &response.deleted))
                    }
                    Err(e) if e.status() == Some(StatusCode::NOT_FOUND) || e.has_code(ErrorCode::NodeMismatch) => {
                        self.local(self.vfs.ack_delete(item.uid, item.rev, *node, &[]))
                    }
                    Err(e) => classify(e),
                }
            }
        }
    }

    /// The commit request of a `Commit` item (its content uploaded already
    /// or inline); `None` for any other item.
    fn commit_request(&self, item: &DrainItem) -> Option<CommitRequest> {
        let DrainOp::Commit {
            path,
            node,
            base_version,
            hash,
            kind,
            mode,
            source,
            mtime,
            atime,
            ..
        } = &item.op
        else {
            return None;
        };
        // Small contents travel inside the commit: one request, not two.
        let inline = match source {
            ContentSource::Inline(bytes) => Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            _ => None,
        };
        Some(CommitRequest {
            path: path.clone(),
            base_version: *base_version,
            hash: hash.clone(),
            kind: Some(*kind),
            mode: Some(*mode),
            agent_id: self.agent_id.clone(),
            message: None,
            // Stable across retries and restarts: a commit is applied once.
            idempotency_key: Some(commit_key(item.uid, item.rev, &item.op)),
            node: *node,
            content_base64: inline,
            mtime: mtime.map(crate::model::format_file_time),
            atime: atime.map(crate::model::format_file_time),
        })
    }

    /// Applies the server's answer to a commit (sent alone or in a batch).
    fn commit_answered(&self, item: &DrainItem, hash: &BlobHash, result: ClientResult<VersionInfo>) -> Outcome {
        match result {
            Ok(v) => {
                if let Ok(mut s) = self.status.lock() {
                    s.commits += 1;
                }
                self.note(&v.path, v.status.as_str());
                self.local(self.vfs.ack_commit(item.uid, item.rev, hash, &v))
            }
            Err(e) if matches!(e.code(), Some(ErrorCode::BaseVersionUnknown | ErrorCode::NodeMismatch)) => {
                // The node's history is not what we knew: commit as new.
                self.local(self.vfs.unbind(item.uid))
            }
            Err(e) => classify(e),
        }
    }

    /// Sends each item on its own, up to COMMIT_CONCURRENCY at once.
    async fn execute_concurrently(&self, items: Vec<DrainItem>) -> Vec<(DrainItem, Outcome)> {
        stream::iter(items)
            .map(|item| async move {
                let outcome = self.execute(&item).await;
                (item, outcome)
            })
            .buffer_unordered(COMMIT_CONCURRENCY)
            .collect()
            .await
    }

    fn local(&self, result: Result<(), crate::vfs::VfsError>) -> Outcome {
        match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Transient(format!("local journal: {e}")),
        }
    }

    /// Drains whenever something is journaled, retrying with backoff.
    pub async fn run_drain(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let round = self.drain(false).await;
            let wait = if round.transient.is_some() {
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            } else {
                backoff = Duration::from_millis(200);
                if round.left > 0 {
                    // Wake when the oldest debounced change is ready.
                    self.until_next_ready()
                } else {
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = self.vfs.wake.notified() => {
                    // Let a burst of closes land, but send the first change
                    // as soon as its debounce is over (what fsync waits for: at once).
                    if !self.vfs.has_urgent() {
                        tokio::time::sleep(self.until_next_ready()).await;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Until the next journaled change is past its debounce; at least
    /// [`MIN_ROUND_GAP`], so a steady stream of closes is sent in batches
    /// (each round commits up to COMMIT_CONCURRENCY changes at once).
    fn until_next_ready(&self) -> Duration {
        let debounce = Duration::from_millis(DEBOUNCE_MS as u64);
        self.vfs
            .next_ready_in(DEBOUNCE_MS, &|uid| self.refused_recently(uid))
            .unwrap_or(debounce)
            .clamp(MIN_ROUND_GAP, debounce)
    }

    /// Follows the change feed with long polls.
    pub async fn run_feed(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let since = self.vfs.cursor();
            let poll = self.remote.changes(&self.project, since, Duration::from_secs(25));
            let page = tokio::select! {
                page = poll => page,
                _ = stop.changed() => return,
            };
            match page {
                Ok(page) => {
                    backoff = Duration::from_millis(200);
                    let vfs = self.vfs.clone();
                    let events = page.events;
                    let applied = tokio::task::spawn_blocking(move || {
                        for hash in Vfs::symlink_hashes(&events) {
                            if let Err(e) = vfs.prefetch(&hash) {
                                tracing::warn!(error = %e, "cannot fetch a symlink target");
                            }
                        }
                        vfs.apply_events(&events);
                    })
                    .await;
                    if let Err(e) = applied {
                        tracing::error!(error = %e, "applying remote changes failed");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "change feed unavailable");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

mod batch;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
mod upload;
