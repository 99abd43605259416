//! The mount against a simulated server: local operations, drains of the
//! journal whose answers (acknowledgements) come back late and in any order,
//! the change feed (echoes of the mount's own changes, in server order, and
//! another writer's creates, writes, renames and deletions), all checked
//! against the model after every step. The model encodes the ordering rules
//! of docs/SEMANTICS.md: local state wins over stale remote news, news of
//! untouched files is applied.

use std::collections::VecDeque;

use crate::harness::*;
use crate::sync_model::*;
use contextfs::vfs::ordering::CreateInFlight;

#[derive(Debug, Clone)]
struct SNode {
    path: String,
    kind: NodeKind,
    bytes: Vec<u8>,
    mode: u32,
    version: i64,
    deleted: bool,
}

/// What a server answered to one drained request.
#[derive(Debug, Clone)]
enum Answer {
    Namespace(VersionInfo),
    Commit(BlobHash, VersionInfo),
    Delete(i64, Vec<VersionInfo>),
    /// The node is gone: the worker unbinds the file (it is committed as new).
    Unbind,
    Refused,
    Forget,
}

/// Numbers nodes, versions and feed events the way the server does.
struct Server {
    nodes: BTreeMap<i64, SNode>,
    next_node: i64,
    seq: i64,
    source: Arc<MapSource>,
    feed: VecDeque<ChangeEvent>,
}

fn kind_of(k: NodeKind) -> Kind {
    match k {
        NodeKind::File => Kind::File,
        NodeKind::Dir => Kind::Dir,
        NodeKind::Symlink => Kind::Symlink,
    }
}

impl Server {
    fn live_at(&self, path: &str) -> Option<i64> {
        self.nodes
            .iter()
            .find(|(_, n)| !n.deleted && n.path == path)
            .map(|(id, _)| *id)
    }

    fn dir_exists(&self, path: &str) -> bool {
        path.is_empty() || self.live_at(path).is_some_and(|n| self.nodes[&n].kind == NodeKind::Dir)
    }

    fn info(&self, node: i64, op: VersionOp) -> VersionInfo {
        let n = &self.nodes[&node];
        VersionInfo {
            node,
            version: n.version,
            path: n.path.clone(),
            kind: n.kind,
            mode: n.mode,
            hash: BlobHash::of(&n.bytes),
            size: n.bytes.len() as u64,
            op,
            status: VersionStatus::Clean,
            deleted: n.deleted,
            parent: None,
            author: "server".into(),
            agent_id: None,
            message: None,
            created_at: TIME.into(),
            mtime: None,
            atime: None,
        }
    }

    /// Records `node`'s new version in the feed.
    fn publish(&mut self, node: i64, op: VersionOp, old_path: Option<String>) {
        self.seq += 1;
        let n = &self.nodes[&node];
        self.source.put(&n.bytes);
        self.feed.push_back(ChangeEvent {
            seq: self.seq,
            node,
            path: n.path.clone(),
            old_path,
            op,
            version: n.version,
            kind: n.kind,
            hash: BlobHash::of(&n.bytes),
            size: n.bytes.len() as u64,
            mode: n.mode,
            deleted: n.deleted,
            agent_id: None,
            at: TIME.into(),
            mtime: None,
            atime: None,
        });
    }

    fn create(&mut self, path: &str, kind: NodeKind, bytes: Vec<u8>, mode: u32) -> i64 {
        let parent = parent_of(path);
        if !self.dir_exists(parent) {
            // The server makes missing parents.
            self.create(parent, NodeKind::Dir, Vec::new(), 0o755);
        }
        let id = self.next_node;
        self.next_node += 1;
        let node = SNode {
            path: path.into(),
            kind,
            bytes,
            mode,
            version: 1,
            deleted: false,
        };
        self.nodes.insert(id, node);
        self.publish(id, VersionOp::Create, None);
        id
    }

    fn write(&mut self, id: i64, bytes: Vec<u8>, mode: u32) {
        let n = self.nodes.get_mut(&id).unwrap();
        n.bytes = bytes;
        n.mode = mode;
        n.version += 1;
        self.publish(id, VersionOp::Write, None);
    }

    fn rename(&mut self, id: i64, to: &str) {
        let from = self.nodes[&id].path.clone();
        for n in self.nodes.values_mut().filter(|n| !n.deleted && under(&n.path, &from)) {
            n.path = format!("{to}{}", &n.path[from.len()..]);
        }
        let n = self.nodes.get_mut(&id).unwrap();
        n.path = to.into();
        n.version += 1;
        self.publish(id, VersionOp::Rename, Some(from));
    }

    /// Deletes `id` and what lies below it; returns the tombstones.
    fn delete(&mut self, id: i64) -> Vec<VersionInfo> {
        let path = self.nodes[&id].path.clone();
        let mut ids: Vec<i64> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.deleted && under(&n.path, &path))
            .map(|(i, _)| *i)
            .collect();
        ids.push(id);
        ids.into_iter()
            .map(|i| {
                let n = self.nodes.get_mut(&i).unwrap();
                n.deleted = true;
                n.version += 1;
                self.publish(i, VersionOp::Delete, None);
                self.info(i, VersionOp::Delete)
            })
            .collect()
    }

    fn apply(&mut self, item: &DrainItem) -> Answer {
        match &item.op {
            DrainOp::Forget => Answer::Forget,
            DrainOp::Mkdir { path, mode } => {
                let id = match self.live_at(path.as_str()) {
                    Some(id) if self.nodes[&id].kind == NodeKind::Dir => id,
                    Some(_) => return Answer::Refused,
                    None => self.create(path.as_str(), NodeKind::Dir, Vec::new(), *mode),
                };
                Answer::Namespace(self.info(id, VersionOp::Mkdir))
            }
            DrainOp::Rename { node, to, .. } => {
                if self.nodes.get(node).is_none_or(|n| n.deleted) {
                    return Answer::Unbind;
                }
                if self.live_at(to.as_str()).is_some() || !self.dir_exists(parent_of(to.as_str())) {
                    return Answer::Refused;
                }
                self.rename(*node, to.as_str());
                Answer::Namespace(self.info(*node, VersionOp::Rename))
            }
            DrainOp::Commit {
                path,
                node,
                hash,
                kind,
                mode,
                source,
                ..
            } => {
                let bytes = match source {
                    ContentSource::Inline(b) => b.clone(),
                    ContentSource::File(p) => std::fs::read(p).unwrap(),
                    // Committed by hash: a blob the server already stores.
                    ContentSource::Server => match self.source.get(hash) {
                        Some(bytes) => bytes,
                        None => return Answer::Refused,
                    },
                };
                assert_eq!(BlobHash::of(&bytes), *hash, "the bytes of {path}");
                let id = match node {
                    Some(n) if self.nodes.get(n).is_none_or(|n| n.deleted) => return Answer::Unbind,
                    // The server commits by path: another node there (or
                    // none) is a node mismatch, and the mount unbinds.
                    Some(n) if self.live_at(path.as_str()) != Some(*n) => return Answer::Unbind,
                    Some(n) => *n,
                    None => match self.live_at(path.as_str()) {
                        Some(id) if self.nodes[&id].kind == *kind => id,
                        Some(_) => return Answer::Refused,
                        None => {
                            let id = self.create(path.as_str(), *kind, bytes, *mode);
                            return Answer::Commit(hash.clone(), self.info(id, VersionOp::Create));
                        }
                    },
                };
                // Last writer wins: the answer carries the committed bytes.
                self.write(id, bytes, *mode);
                Answer::Commit(hash.clone(), self.info(id, VersionOp::Write))
            }
            DrainOp::Delete { node, path, .. } => match self.nodes.get(node) {
                Some(n) if !n.deleted && n.path == path.as_str() => Answer::Delete(*node, self.delete(*node)),
                _ => Answer::Delete(*node, Vec::new()),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum SyncOp {
    Local(LocalOp),
    /// Send every ready record; the answers wait.
    Drain,
    /// Deliver one waiting answer (any of them: answers overtake each other).
    Answer(usize),
    /// Deliver the next `n` events of the feed.
    Feed(usize),
    RemoteWrite {
        pick: usize,
        data: Vec<u8>,
    },
    RemoteCreate {
        path: String,
        data: Vec<u8>,
    },
    RemoteRename {
        pick: usize,
        to: String,
    },
    RemoteDelete {
        pick: usize,
    },
}

/// Where the other writer creates or renames files: names local operations
/// never use (`d`), in directories they do. A remote rename onto a path
/// where a new local file waits makes two inodes share one node (see
/// `remote::bug_*`), which this suite does not model.
fn remote_path() -> impl Strategy<Value = String> {
    select(vec!["d", "b/d", "c/d", "a/d"]).prop_map(String::from)
}

fn any_sync_op() -> impl Strategy<Value = SyncOp> {
    prop_oneof![
        10 => any_local_op().prop_map(SyncOp::Local),
        3 => Just(SyncOp::Drain),
        3 => (0usize..8).prop_map(SyncOp::Answer),
        3 => (1usize..4).prop_map(SyncOp::Feed),
        1 => (0usize..8, prop::collection::vec(any::<u8>(), 1..4)).prop_map(|(pick, data)| SyncOp::RemoteWrite { pick, data }),
        1 => (remote_path(), prop::collection::vec(any::<u8>(), 1..4)).prop_map(|(path, data)| SyncOp::RemoteCreate { path, data }),
        1 => (0usize..8, remote_path()).prop_map(|(pick, to)| SyncOp::RemoteRename { pick, to }),
        1 => (0usize..8).prop_map(|pick| SyncOp::RemoteDelete { pick }),
    ]
}

/// A request sent and not answered yet.
struct InFlight<'a> {
    item: DrainItem,
    answer: Answer,
    /// The model entry it is about, and its change count when planned.
    entry: Option<(usize, u64)>,
    create_path: Option<String>,
    _guard: CreateInFlight<'a>,
}

/// News of a node held back while a dirty entry shows it, by node.
type Withheld = HashMap<i64, (ChangeEvent, Vec<u8>)>;

/// The model's side of `e` (see the module doc and docs/SEMANTICS.md).
fn model_event(model: &mut SyncModel, withheld: &mut Withheld, e: &ChangeEvent, bytes: Vec<u8>) {
    match model.bound(e.node) {
        Some((path, id)) => {
            let en = &model.entries[id];
            if en.seen >= e.version {
                return; // old news
            }
            if en.dirty {
                // Local changes win; the newest news waits for the answer
                // that settles the entry.
                if withheld.get(&e.node).is_none_or(|(w, _)| w.version < e.version) {
                    withheld.insert(e.node, (e.clone(), bytes));
                }
                return;
            }
            if e.deleted {
                let gone: Vec<String> = model
                    .tree
                    .keys()
                    .filter(|k| **k == path || under(k, &path))
                    .cloned()
                    .collect();
                for k in gone {
                    model.tree.remove(&k);
                }
                return;
            }
            if e.path != path {
                let parent = parent_of(&e.path);
                if !parent.is_empty() && model.kind(parent) != Some(Kind::Dir) {
                    return;
                }
                if let Some(&occupant) = model.tree.get(&e.path) {
                    if model.entries[occupant].dirty {
                        return;
                    }
                    model.tree.remove(&e.path);
                }
                let moving: Vec<String> = model
                    .tree
                    .keys()
                    .filter(|k| **k == path || under(k, &path))
                    .cloned()
                    .collect();
                for old in moving {
                    let id = model.tree.remove(&old).unwrap();
                    model.tree.insert(format!("{}{}", e.path, &old[path.len()..]), id);
                }
            }
            let en = &mut model.entries[id];
            en.bytes = bytes;
            en.mode = e.mode;
            en.seen = e.version;
            en.server_path = e.path.clone();
        }
        None => {
            let stale = match model.deleted.get(&e.node) {
                Some(None) => true,
                Some(Some(t)) => e.version <= *t,
                None => false,
            };
            let parent = parent_of(&e.path);
            let placeable = parent.is_empty() || model.kind(parent) == Some(Kind::Dir);
            if !e.deleted
                && !stale
                && !model.creating.contains_key(&e.path)
                && placeable
                && !model.tree.contains_key(&e.path)
            {
                let entry = Entry {
                    node: Some(e.node),
                    seen: e.version,
                    server_path: e.path.clone(),
                    changed: 0,
                    dirty: false,
                    content: false,
                    ..Entry::local(kind_of(e.kind), bytes, e.mode)
                };
                model.add(&e.path, entry);
            }
        }
    }
    if e.deleted
        && model
            .deleted
            .get(&e.node)
            .is_some_and(|t| t.is_some_and(|t| e.version >= t))
    {
        model.deleted.remove(&e.node);
    }
}

/// Withheld news of `node`, applied once the entry that shows it settled.
fn model_apply_withheld(model: &mut SyncModel, withheld: &mut Withheld, node: i64) {
    if !withheld.contains_key(&node) {
        return;
    }
    if model.bound(node).is_some_and(|(_, id)| model.entries[id].dirty) {
        return;
    }
    if let Some((e, bytes)) = withheld.remove(&node) {
        model_event(model, withheld, &e, bytes);
    }
}

fn live_files(server: &Server) -> Vec<i64> {
    server
        .nodes
        .iter()
        .filter(|(_, n)| !n.deleted && n.kind == NodeKind::File)
        .map(|(id, _)| *id)
        .collect()
}

/// Runs `ops`; returns the paths the server has at the end.
pub(crate) fn run_sync(ops: &[SyncOp]) -> Result<Vec<String>, TestCaseError> {
    let env = Env::new();
    let (listing, mut model) = crate::crash::crash_listing(&env);
    let mut server = Server {
        nodes: BTreeMap::new(),
        next_node: 100,
        seq: listing.cursor,
        source: env.source.clone(),
        feed: VecDeque::new(),
    };
    for e in &listing.entries {
        let bytes = model.entry_at(&e.path).unwrap().bytes.clone();
        let node = SNode {
            path: e.path.clone(),
            kind: e.kind,
            bytes,
            mode: e.mode,
            version: e.version,
            deleted: false,
        };
        server.nodes.insert(e.id, node);
    }
    let vfs = env.mount(&listing);
    let mut flight: Vec<InFlight<'_>> = Vec::new();
    let mut withheld = Withheld::new();
    for (step, op) in ops.iter().enumerate() {
        let when = format!("step {step}: {op:?}");
        match op {
            SyncOp::Local(op) => local_op(&vfs, &mut model, op)?,
            SyncOp::Drain => {
                let busy: std::collections::HashSet<u64> = flight.iter().map(|f| f.item.uid).collect();
                for item in vfs.drain_plan(0, &|uid| busy.contains(&uid)) {
                    let guard = vfs.sending(&item);
                    let (entry_path, create_path) = match &item.op {
                        DrainOp::Mkdir { path, .. } | DrainOp::Commit { path, node: None, .. } => {
                            (Some(path.as_str().to_string()), Some(path.as_str().to_string()))
                        }
                        DrainOp::Commit { path, .. } | DrainOp::Rename { to: path, .. } => {
                            (Some(path.as_str().to_string()), None)
                        }
                        // Nothing to send (a file renamed away and back): the
                        // entry is the live file the record is about.
                        DrainOp::Forget => (
                            vfs.queued()
                                .into_iter()
                                .find(|(_, r)| r.uid == item.uid && !r.deleted)
                                .map(|(path, _)| path),
                            None,
                        ),
                        _ => (None, None),
                    };
                    let entry = entry_path
                        .and_then(|p| model.tree.get(&p).copied())
                        .map(|id| (id, model.entries[id].changed));
                    if let Some(p) = &create_path {
                        *model.creating.entry(p.clone()).or_default() += 1;
                    }
                    let answer = server.apply(&item);
                    flight.push(InFlight {
                        item,
                        answer,
                        entry,
                        create_path,
                        _guard: guard,
                    });
                }
            }
            SyncOp::Answer(k) => {
                if flight.is_empty() {
                    continue;
                }
                let f = flight.remove(k % flight.len());
                let (uid, rev) = (f.item.uid, f.item.rev);
                let live = f.entry.filter(|(id, _)| model.tree.values().any(|v| v == id));
                // The nodes whose withheld news the answer may release.
                let mut release: Vec<i64> = match &f.answer {
                    Answer::Namespace(v) | Answer::Commit(_, v) => vec![v.node],
                    Answer::Delete(node, tombs) => std::iter::once(*node).chain(tombs.iter().map(|t| t.node)).collect(),
                    Answer::Forget => live.and_then(|(id, _)| model.entries[id].node).into_iter().collect(),
                    // The node it lets go: its held-back news is dropped.
                    Answer::Unbind => {
                        if let Some(node) = live.and_then(|(id, _)| model.entries[id].node) {
                            withheld.remove(&node);
                        }
                        Vec::new()
                    }
                    Answer::Refused => Vec::new(),
                };
                // The record is dropped when nothing changed since the plan and
                // the answer covers all of it (a rename's leaves a content change).
                let settled = |model: &mut SyncModel, covers_content: bool| {
                    if let Some((id, changed)) = live {
                        let e = &mut model.entries[id];
                        if e.changed == changed && (covers_content || !e.content) {
                            e.dirty = false;
                            e.content = false;
                        }
                    }
                };
                // The feed already showed a later version of this commit's
                // node at another entry (another writer moved the new file
                // before the answer came): a file unchanged since the commit
                // goes, the other entry is the node now.
                let superseded = match (&f.answer, live) {
                    (Answer::Commit(_, v), Some((id, changed))) => {
                        let newer_elsewhere = model.tree.values().any(|&o| {
                            o != id && model.entries[o].node == Some(v.node) && model.entries[o].seen >= v.version
                        });
                        let quiet = model.entries[id].changed == changed && model.entries[id].kind == Kind::File;
                        (newer_elsewhere && quiet).then_some(id)
                    }
                    _ => None,
                };
                // Newer elsewhere, but this file changed since: it becomes a
                // new file, and the other entry keeps the node.
                let held_elsewhere = match (&f.answer, live) {
                    (Answer::Commit(_, v), Some((id, _))) if superseded.is_none() => model
                        .tree
                        .values()
                        .any(|&o| {
                            o != id && model.entries[o].node == Some(v.node) && model.entries[o].seen >= v.version
                        })
                        .then_some(id),
                    _ => None,
                };
                // The new file took another node since (renamed over a
                // server file): the mount deletes the one its create made.
                let inherited = match (&f.answer, live) {
                    (Answer::Commit(_, v) | Answer::Namespace(v), Some((id, _))) if f.create_path.is_some() => {
                        model.entries[id].node.is_some_and(|n| n != v.node)
                    }
                    _ => false,
                };
                match &f.answer {
                    Answer::Commit(h, v) if inherited => {
                        prop_assert_eq!(vfs.ack_commit(uid, rev, h, v), Ok(()), "{}", when);
                        model.deleted.insert(v.node, None);
                    }
                    Answer::Commit(h, v) if superseded.is_some() => {
                        prop_assert_eq!(vfs.ack_commit(uid, rev, h, v), Ok(()), "{}", when);
                        model.tree.retain(|_, id| Some(*id) != superseded);
                    }
                    Answer::Commit(h, v) if held_elsewhere.is_some() => {
                        prop_assert_eq!(vfs.ack_commit(uid, rev, h, v), Ok(()), "{}", when);
                        if let Some(id) = held_elsewhere {
                            model.entries[id].node = None;
                            model.entries[id].server_path.clear();
                        }
                    }
                    Answer::Namespace(v) | Answer::Commit(_, v) => {
                        match &f.answer {
                            Answer::Commit(h, v) => prop_assert_eq!(vfs.ack_commit(uid, rev, h, v), Ok(()), "{}", when),
                            _ => prop_assert_eq!(vfs.ack_namespace(uid, rev, v), Ok(()), "{}", when),
                        }
                        match live {
                            Some((id, _)) => {
                                let en = &mut model.entries[id];
                                en.node = Some(v.node);
                                en.seen = en.seen.max(v.version);
                                en.server_path = v.path.clone();
                                settled(&mut model, matches!(f.answer, Answer::Commit(..)));
                                // An answer carries the node's head: a clean
                                // file shows another writer's edit in it (a
                                // mode-only commit commits the head's bytes).
                                let en = &model.entries[id];
                                if !en.dirty && en.kind == Kind::File && BlobHash::of(&en.bytes) != v.hash {
                                    model.entries[id].bytes = read_blob(&env, &v.hash);
                                }
                            }
                            None if f.create_path.is_some() => {
                                model.deleted.insert(v.node, None); // orphaned: the mount deletes it
                            }
                            None => {}
                        }
                    }
                    Answer::Delete(node, tombs) => {
                        prop_assert_eq!(vfs.ack_delete(uid, rev, *node, tombs), Ok(()), "{}", when);
                        if tombs.is_empty() {
                            model.deleted.remove(node);
                        }
                        for t in tombs {
                            let known = model.deleted.entry(t.node).or_insert(None);
                            *known = Some(known.map_or(t.version, |k| k.max(t.version)));
                        }
                    }
                    Answer::Unbind => {
                        prop_assert_eq!(vfs.unbind(uid), Ok(()), "{}", when);
                        if let Some((id, _)) = live {
                            model.entries[id].node = None;
                            model.entries[id].seen = 0; // versions of the next node start over
                            model.entries[id].server_path.clear();
                        }
                    }
                    Answer::Refused => vfs.fail(uid, "refused by the test server"),
                    Answer::Forget => {
                        prop_assert_eq!(vfs.forget_record(uid, rev), Ok(()), "{}", when);
                        settled(&mut model, true);
                    }
                }
                for node in release.drain(..) {
                    model_apply_withheld(&mut model, &mut withheld, node);
                }
                if let Some(p) = &f.create_path {
                    let n = model.creating.get_mut(p).unwrap();
                    *n -= 1;
                    if *n == 0 {
                        model.creating.remove(p);
                    }
                }
                drop(f);
            }
            SyncOp::Feed(n) => {
                for _ in 0..*n {
                    let Some(e) = server.feed.pop_front() else { break };
                    for hash in Vfs::symlink_hashes(std::slice::from_ref(&e)) {
                        vfs.prefetch(&hash).unwrap();
                    }
                    vfs.apply_events(std::slice::from_ref(&e));
                    let bytes = if e.deleted {
                        Vec::new()
                    } else {
                        read_blob(&env, &e.hash)
                    };
                    model_event(&mut model, &mut withheld, &e, bytes);
                }
            }
            SyncOp::RemoteWrite { pick, data } => {
                let files = live_files(&server);
                if let Some(&id) = files.get(pick % files.len().max(1)) {
                    let mode = server.nodes[&id].mode;
                    server.write(id, data.clone(), mode);
                }
            }
            SyncOp::RemoteCreate { path, data } => {
                if server.live_at(path).is_none() && server.dir_exists(parent_of(path)) {
                    server.create(path, NodeKind::File, data.clone(), 0o644);
                }
            }
            SyncOp::RemoteRename { pick, to } => {
                let files = live_files(&server);
                if let Some(&id) = files.get(pick % files.len().max(1)) {
                    if server.live_at(to).is_none() && server.dir_exists(parent_of(to)) {
                        server.rename(id, to);
                    }
                }
            }
            SyncOp::RemoteDelete { pick } => {
                let files = live_files(&server);
                if let Some(&id) = files.get(pick % files.len().max(1)) {
                    server.delete(id);
                }
            }
        }
        check_view(&vfs, &model.view(), &when)?;
    }
    let mut on_server: Vec<String> = server
        .nodes
        .values()
        .filter(|n| !n.deleted)
        .map(|n| n.path.clone())
        .collect();
    on_server.sort();
    Ok(on_server)
}

fn read_blob(env: &Env, hash: &BlobHash) -> Vec<u8> {
    let mut fill = Vec::new();
    let file = env.cache.get_or_fill(hash, |f| env.source.fetch(hash, f)).unwrap();
    std::io::BufReader::new(file).read_to_end(&mut fill).unwrap();
    fill
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn late_acks_echoes_and_remote_news_never_beat_local_state(
        ops in prop::collection::vec(any_sync_op(), 1..40),
    ) {
        run_sync(&ops)?;
    }
}
