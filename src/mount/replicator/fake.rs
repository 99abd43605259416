//! An in-memory server behind [`Remote`] for the sync worker's tests: it
//! keeps a tree, blobs, idempotency keys and a change feed the way the real
//! server does where the worker depends on it, records every call, and can be
//! scripted to fail, refuse, delay or lose the answer of chosen calls.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use reqwest::StatusCode;
use tokio::sync::Notify;

use crate::api::{
    BlobReceipt, ChangeEvent, ChangesPage, CommitRequest, DeleteRequest, DeleteResponse, ErrorCode, Limits,
    MkdirRequest, NodeKind, RenameRequest, VersionInfo, VersionOp, VersionStatus,
};
use crate::cache::{CacheError, CacheFill};
use crate::client::{ClientError, ClientResult};
use crate::model::BlobHash;
use crate::mount::remote::Remote;
use crate::vfs::BlobSource;

/// One request as the fake received it (also the ones that failed).
#[derive(Debug, Clone)]
pub enum Call {
    Mkdir(MkdirRequest),
    Rename(RenameRequest),
    Commit(CommitRequest),
    Delete(DeleteRequest),
    PutBlob(BlobHash),
    Changes,
}

impl Call {
    fn op(&self) -> Op {
        match self {
            Call::Mkdir(_) => Op::Mkdir,
            Call::Rename(_) => Op::Rename,
            Call::Commit(_) => Op::Commit,
            Call::Delete(_) => Op::Delete,
            Call::PutBlob(_) => Op::PutBlob,
            Call::Changes => Op::Changes,
        }
    }

    fn path(&self) -> Option<&str> {
        match self {
            Call::Mkdir(r) => Some(r.path.as_str()),
            Call::Rename(r) => Some(r.from.as_str()),
            Call::Commit(r) => Some(r.path.as_str()),
            Call::Delete(r) => Some(r.path.as_str()),
            Call::PutBlob(_) | Call::Changes => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Mkdir,
    Rename,
    Commit,
    Delete,
    PutBlob,
    Changes,
}

/// Lets a test hold the answer of a call the fake already applied.
#[derive(Default)]
pub struct Gate {
    reached: Notify,
    open: Notify,
}

impl Gate {
    /// Resolves once the held call was applied (its answer now waits).
    pub async fn reached(&self) {
        self.reached.notified().await
    }

    /// Lets the held answer go.
    pub fn open(&self) {
        self.open.notify_one()
    }
}

#[derive(Clone)]
pub enum Fault {
    /// The request never reaches the server: nothing is applied.
    Unreachable,
    /// The server applies the request, but its answer is lost on the way back.
    LoseAnswer,
    /// The server refuses the request with this answer: nothing is applied.
    Refuse(StatusCode, ErrorCode),
    /// The server applies the request; its answer waits for the gate.
    Hold(Arc<Gate>),
    /// The server applies the request; once the gate opens, its answer is
    /// lost on the way back.
    HoldThenLose(Arc<Gate>),
}

struct Rule {
    op: Op,
    path: Option<String>,
    fault: Fault,
    /// How many more calls it hits; `None`: all.
    times: Option<usize>,
}

#[derive(Debug, Clone)]
struct Node {
    id: i64,
    version: i64,
    kind: NodeKind,
    mode: u32,
    hash: BlobHash,
    size: u64,
    /// The file times the last commit named, as the real server keeps them.
    mtime: Option<String>,
    atime: Option<String>,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    fail_first: usize,
    rules: Vec<Rule>,
    tree: BTreeMap<String, Node>,
    last_id: i64,
    blobs: HashMap<BlobHash, Vec<u8>>,
    /// Idempotency key -> the answer of the commit that first used it.
    keys: HashMap<String, VersionInfo>,
    events: Vec<ChangeEvent>,
    /// What `GET /health` says the server accepts.
    limits: Option<Limits>,
}

#[derive(Default)]
pub struct FakeRemote {
    state: Mutex<State>,
}

/// What the real client returns when the server cannot be reached.
pub fn unreachable(detail: &str) -> ClientError {
    ClientError::Unreachable {
        url: "http://fake.invalid".into(),
        detail: detail.into(),
    }
}

/// What the real client returns for an error answer of the server.
pub fn api_error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ClientError {
    ClientError::Api {
        status,
        code,
        message: message.into(),
        head: None,
    }
}

fn not_found(what: &str) -> ClientError {
    api_error(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("{what} not found"))
}

impl FakeRemote {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The first `n` calls (from now on, counting all calls) fail as unreachable.
    pub fn fail_first(&self, n: usize) {
        let mut st = self.lock();
        st.fail_first = st.calls.len() + n;
    }

    /// The next `times` calls of `op` (on `path`, when given) meet `fault`; `None`: all of them.
    pub fn on(&self, op: Op, path: Option<&str>, fault: Fault, times: Option<usize>) {
        self.lock().rules.push(Rule {
            op,
            path: path.map(str::to_string),
            fault,
            times,
        });
    }

    /// From now on `GET /health` answers these limits.
    pub fn set_limits(&self, limits: Option<Limits>) {
        self.lock().limits = limits;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The commits received for `path`, failed ones included.
    pub fn commits_to(&self, path: &str) -> Vec<CommitRequest> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Commit(r) if r.path.as_str() == path => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The live tree: path -> (node, head version, kind, bytes).
    pub fn tree(&self) -> BTreeMap<String, (i64, i64, NodeKind, Vec<u8>)> {
        let st = self.lock();
        st.tree
            .iter()
            .map(|(p, n)| {
                let bytes = st.blobs.get(&n.hash).cloned().unwrap_or_default();
                (p.clone(), (n.id, n.version, n.kind, bytes))
            })
            .collect()
    }

    /// Records the call, then fails it, applies it, or applies it and
    /// delays or loses the answer, as scripted.
    async fn serve<T>(&self, call: Call, apply: impl FnOnce(&mut State) -> ClientResult<T>) -> ClientResult<T> {
        let fault = {
            let mut st = self.lock();
            let fault = if st.calls.len() < st.fail_first {
                Some(Fault::Unreachable)
            } else {
                let hit = st.rules.iter().position(|r| {
                    r.op == call.op() && r.times != Some(0) && (r.path.is_none() || r.path.as_deref() == call.path())
                });
                hit.map(|i| {
                    let rule = &mut st.rules[i];
                    if let Some(n) = &mut rule.times {
                        *n -= 1;
                    }
                    rule.fault.clone()
                })
            };
            st.calls.push(call);
            fault
        };
        match &fault {
            Some(Fault::Unreachable) => return Err(unreachable("connection refused")),
            Some(Fault::Refuse(status, code)) => {
                return Err(api_error(*status, code.clone(), "refused by the test"));
            }
            _ => {}
        }
        let result = {
            let mut st = self.lock();
            apply(&mut st)
        };
        match fault {
            Some(Fault::LoseAnswer) => Err(unreachable("connection reset before the answer")),
            Some(Fault::Hold(gate)) => {
                gate.reached.notify_one();
                gate.open.notified().await;
                result
            }
            Some(Fault::HoldThenLose(gate)) => {
                gate.reached.notify_one();
                gate.open.notified().await;
                Err(unreachable("connection reset before the answer"))
            }
            _ => result,
        }
    }
}

impl State {
    fn info(path: &str, n: &Node, op: VersionOp, status: VersionStatus, parent: Option<i64>) -> VersionInfo {
        VersionInfo {
            node: n.id,
            version: n.version,
            path: path.to_string(),
            kind: n.kind,
            mode: n.mode,
            hash: n.hash.clone(),
            size: n.size,
            op,
            status,
            deleted: op == VersionOp::Delete,
            parent,
            author: "fake".into(),
            agent_id: None,
            message: None,
            created_at: "2024-01-01T00:00:00Z".into(),
            mtime: n.mtime.clone(),
            atime: n.atime.clone(),
        }
    }

    fn record(&mut self, v: &VersionInfo, old_path: Option<&str>) {
        let seq = self.events.len() as i64 + 1;
        self.events.push(ChangeEvent {
            seq,
            node: v.node,
            path: v.path.clone(),
            old_path: old_path.map(str::to_string),
            op: v.op,
            version: v.version,
            kind: v.kind,
            hash: v.hash.clone(),
            size: v.size,
            mode: v.mode,
            deleted: v.deleted,
            agent_id: None,
            at: v.created_at.clone(),
            mtime: v.mtime.clone(),
            atime: v.atime.clone(),
        });
    }

    fn check_parent(&self, path: &str) -> ClientResult<()> {
        match path.rsplit_once('/') {
            None => Ok(()),
            Some((dir, _)) => match self.tree.get(dir) {
                Some(n) if n.kind == NodeKind::Dir => Ok(()),
                Some(_) => Err(api_error(StatusCode::CONFLICT, ErrorCode::NotADirectory, dir)),
                None => Err(not_found(dir)),
            },
        }
    }

    fn check_node(&self, path: &str, node: Option<i64>) -> ClientResult<&Node> {
        let n = self.tree.get(path).ok_or_else(|| not_found(path))?;
        match node {
            Some(id) if id != n.id => Err(api_error(StatusCode::CONFLICT, ErrorCode::NodeMismatch, path)),
            _ => Ok(n),
        }
    }

    fn new_node(&mut self, kind: NodeKind, mode: u32, hash: BlobHash, size: u64) -> Node {
        self.last_id += 1;
        Node {
            id: self.last_id,
            version: 1,
            kind,
            mode,
            hash,
            size,
            mtime: None,
            atime: None,
        }
    }

    fn commit(&mut self, req: &CommitRequest) -> ClientResult<VersionInfo> {
        if let Some(first) = req.idempotency_key.as_ref().and_then(|k| self.keys.get(k)) {
            return Ok(first.clone());
        }
        let path = req.path.as_str();
        if let Some(b64) = &req.content_base64 {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| api_error(StatusCode::BAD_REQUEST, ErrorCode::InvalidBody, e.to_string()))?;
            if BlobHash::of(&bytes) != req.hash {
                return Err(api_error(StatusCode::BAD_REQUEST, ErrorCode::HashMismatch, path));
            }
            self.blobs.insert(req.hash.clone(), bytes);
        }
        let size = match self.blobs.get(&req.hash) {
            Some(bytes) => bytes.len() as u64,
            None => return Err(api_error(StatusCode::BAD_REQUEST, ErrorCode::BlobMissing, path)),
        };
        self.check_parent(path)?;
        let kind = req.kind.unwrap_or(NodeKind::File);
        let (node, op, status, parent) = match self.tree.get(path) {
            Some(head) => {
                if req.node.is_some_and(|id| id != head.id) {
                    return Err(api_error(StatusCode::CONFLICT, ErrorCode::NodeMismatch, path));
                }
                if req.base_version.is_some_and(|b| b > head.version) {
                    return Err(api_error(StatusCode::CONFLICT, ErrorCode::BaseVersionUnknown, path));
                }
                // No merge here: anything but a write over the head is last writer wins.
                let status = if req.base_version == Some(head.version) {
                    VersionStatus::Clean
                } else {
                    VersionStatus::Lww
                };
                let node = Node {
                    version: head.version + 1,
                    mode: req.mode.unwrap_or(head.mode),
                    hash: req.hash.clone(),
                    size,
                    mtime: req.mtime.clone(),
                    atime: req.atime.clone(),
                    ..head.clone()
                };
                (node, VersionOp::Write, status, Some(head.version))
            }
            None if req.node.is_some() => return Err(not_found(path)),
            None => {
                let mut node = self.new_node(kind, req.mode.unwrap_or(0o644), req.hash.clone(), size);
                node.mtime = req.mtime.clone();
                node.atime = req.atime.clone();
                (node, VersionOp::Create, VersionStatus::Clean, None)
            }
        };
        let v = Self::info(path, &node, op, status, parent);
        self.tree.insert(path.to_string(), node);
        self.record(&v, None);
        if let Some(key) = &req.idempotency_key {
            self.keys.insert(key.clone(), v.clone());
        }
        Ok(v)
    }

    fn mkdir(&mut self, req: &MkdirRequest) -> ClientResult<VersionInfo> {
        let path = req.path.as_str();
        if self.tree.contains_key(path) {
            return Err(api_error(StatusCode::CONFLICT, ErrorCode::Exists, path));
        }
        self.check_parent(path)?;
        let node = self.new_node(NodeKind::Dir, req.mode.unwrap_or(0o755), BlobHash::of(b""), 0);
        let v = Self::info(path, &node, VersionOp::Mkdir, VersionStatus::Clean, None);
        self.tree.insert(path.to_string(), node);
        self.record(&v, None);
        Ok(v)
    }

    /// `path` and everything under it, `path` first.
    fn subtree(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}/");
        std::iter::once(path.to_string())
            .chain(self.tree.keys().filter(|p| p.starts_with(&prefix)).cloned())
            .collect()
    }

    fn tombstones(&mut self, path: &str) -> Vec<VersionInfo> {
        let mut out = Vec::new();
        for p in self.subtree(path) {
            if let Some(mut n) = self.tree.remove(&p) {
                n.version += 1;
                let v = Self::info(&p, &n, VersionOp::Delete, VersionStatus::Clean, Some(n.version - 1));
                self.record(&v, None);
                out.push(v);
            }
        }
        out
    }

    fn delete(&mut self, req: &DeleteRequest) -> ClientResult<DeleteResponse> {
        let path = req.path.as_str();
        self.check_node(path, req.node)?;
        if !req.recursive && self.subtree(path).len() > 1 {
            return Err(api_error(StatusCode::CONFLICT, ErrorCode::NotEmpty, path));
        }
        Ok(DeleteResponse {
            deleted: self.tombstones(path),
        })
    }

    fn rename(&mut self, req: &RenameRequest) -> ClientResult<VersionInfo> {
        let (from, to) = (req.from.as_str(), req.to.as_str());
        self.check_node(from, req.node)?;
        self.check_parent(to)?;
        if self.tree.contains_key(to) {
            if !req.replace {
                return Err(api_error(StatusCode::CONFLICT, ErrorCode::Exists, to));
            }
            self.tombstones(to);
        }
        for p in self.subtree(from) {
            if let Some(n) = self.tree.remove(&p) {
                self.tree.insert(format!("{to}{}", &p[from.len()..]), n);
            }
        }
        let n = self.tree.get_mut(to).expect("just moved");
        n.version += 1;
        let v = Self::info(to, n, VersionOp::Rename, VersionStatus::Clean, Some(n.version - 1));
        self.record(&v, Some(from));
        Ok(v)
    }

    fn put_blob(&mut self, bytes: Vec<u8>) -> BlobReceipt {
        let hash = BlobHash::of(&bytes);
        let size = bytes.len() as u64;
        let created = self.blobs.insert(hash.clone(), bytes).is_none();
        BlobReceipt { hash, size, created }
    }
}

#[async_trait]
impl Remote for FakeRemote {
    async fn mkdir(&self, _project: &str, request: &MkdirRequest) -> ClientResult<VersionInfo> {
        self.serve(Call::Mkdir(request.clone()), |st| st.mkdir(request)).await
    }

    async fn rename(&self, _project: &str, request: &RenameRequest) -> ClientResult<VersionInfo> {
        self.serve(Call::Rename(request.clone()), |st| st.rename(request)).await
    }

    async fn commit(&self, _project: &str, request: &CommitRequest) -> ClientResult<VersionInfo> {
        self.serve(Call::Commit(request.clone()), |st| st.commit(request)).await
    }

    async fn delete(&self, _project: &str, request: &DeleteRequest) -> ClientResult<DeleteResponse> {
        self.serve(Call::Delete(request.clone()), |st| st.delete(request)).await
    }

    async fn put_blob(&self, _project: &str, bytes: Bytes) -> ClientResult<BlobReceipt> {
        let hash = BlobHash::of(&bytes);
        self.serve(Call::PutBlob(hash), |st| Ok(st.put_blob(bytes.to_vec())))
            .await
    }

    async fn put_blob_file(&self, _project: &str, hash: &BlobHash, path: &Path) -> ClientResult<BlobReceipt> {
        // Read before the call, as the client opens the file before it sends.
        let bytes = tokio::fs::read(path).await.map_err(|e| ClientError::Protocol {
            url: path.display().to_string(),
            detail: format!("cannot open the content to upload: {e}"),
        })?;
        self.serve(Call::PutBlob(hash.clone()), |st| {
            if BlobHash::of(&bytes) != *hash {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::HashMismatch,
                    hash.to_string(),
                ));
            }
            Ok(st.put_blob(bytes))
        })
        .await
    }

    async fn limits(&self) -> ClientResult<Option<Limits>> {
        Ok(self.lock().limits)
    }

    async fn changes(&self, _project: &str, since: i64, _wait: Duration) -> ClientResult<ChangesPage> {
        self.serve(Call::Changes, |st| {
            let events: Vec<ChangeEvent> = st.events.iter().filter(|e| e.seq > since).cloned().collect();
            let cursor = events.last().map_or(since, |e| e.seq);
            Ok(ChangesPage {
                cursor,
                events,
                more: false,
            })
        })
        .await
    }
}

/// The mount reads blobs from the server it syncs with.
impl BlobSource for FakeRemote {
    fn fetch(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError> {
        let bytes = self.lock().blobs.get(hash).cloned();
        match bytes {
            Some(bytes) => fill.write(&bytes),
            None => Err(CacheError::Fetch {
                hash: hash.clone(),
                message: "not on the fake server".into(),
            }),
        }
    }
}
