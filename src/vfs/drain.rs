//! Turning journal records into server operations, and applying the
//! server's answers back to the tree. The sync worker (`crate::mount`) does
//! the network calls; this file holds the rules.

use std::path::PathBuf;

use super::journal::Journal;
use super::*;

/// Where the bytes of a commit come from.
#[derive(Debug, Clone)]
pub enum ContentSource {
    Inline(Vec<u8>),
    File(PathBuf),
    /// Already on the server (a mode-only change, or a re-commit after the
    /// server lost track of the node).
    Server,
}

#[derive(Debug, Clone)]
pub enum DrainOp {
    Mkdir {
        path: WsPath,
        mode: u32,
    },
    Rename {
        node: i64,
        from: WsPath,
        to: WsPath,
    },
    Commit {
        path: WsPath,
        node: Option<i64>,
        base_version: Option<i64>,
        hash: BlobHash,
        size: u64,
        kind: NodeKind,
        mode: u32,
        source: ContentSource,
        /// The file's mtime and atime (nanoseconds), when the record has them.
        mtime: Option<i64>,
        atime: Option<i64>,
    },
    Delete {
        node: i64,
        path: WsPath,
        recursive: bool,
    },
    /// Nothing left to send: drop the record.
    Forget,
}

#[derive(Debug, Clone)]
pub struct DrainItem {
    pub uid: u64,
    pub rev: u64,
    pub op: DrainOp,
}

impl DrainItem {
    /// Namespace first (parents before children), then contents, then
    /// deletions (children before parents).
    pub fn order_key(&self) -> (u8, i64) {
        match &self.op {
            DrainOp::Forget => (0, 0),
            DrainOp::Mkdir { path, .. } => (1, path.as_str().matches('/').count() as i64),
            DrainOp::Rename { to, .. } => (1, to.as_str().matches('/').count() as i64),
            DrainOp::Commit { .. } => (2, 0),
            DrainOp::Delete { path, .. } => (3, -(path.as_str().matches('/').count() as i64)),
        }
    }

    /// The path the item acts on (where it lands, for a rename).
    pub fn path(&self) -> &str {
        match &self.op {
            DrainOp::Mkdir { path, .. } | DrainOp::Commit { path, .. } | DrainOp::Delete { path, .. } => path.as_str(),
            DrainOp::Rename { to, .. } => to.as_str(),
            DrainOp::Forget => "",
        }
    }

    /// Where the item goes in a plan: [`Self::order_key`], then at one depth
    /// renames before mkdirs, then by path (and uid) so that a journal
    /// always gives the same plan.
    fn plan_rank(&self) -> ((u8, i64), bool, &str, u64) {
        (
            self.order_key(),
            !matches!(self.op, DrainOp::Rename { .. }),
            self.path(),
            self.uid,
        )
    }

    pub fn describe(&self) -> String {
        match &self.op {
            DrainOp::Mkdir { path, .. } => format!("mkdir {path}"),
            DrainOp::Rename { from, to, .. } => format!("rename {from} -> {to}"),
            DrainOp::Commit { path, .. } => format!("commit {path}"),
            DrainOp::Delete { path, .. } => format!("delete {path}"),
            DrainOp::Forget => "forget".into(),
        }
    }
}

/// Moves each rename after the rename (at the same depth) that frees its
/// target: `mv log.1 log.2; mv log log.1` must send log.1's rename first,
/// or the server finds log.1 taken. A cycle (a swap) keeps its order: the
/// server refuses one of them, which waits for a later round.
fn vacating_renames_first(items: Vec<DrainItem>) -> Vec<DrainItem> {
    let vacates: HashMap<((u8, i64), &str), usize> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| match &item.op {
            DrainOp::Rename { from, .. } => Some(((item.order_key(), from.as_str()), i)),
            _ => None,
        })
        .collect();
    if vacates.is_empty() {
        return items;
    }
    let mut order = Vec::with_capacity(items.len());
    let mut placed = vec![false; items.len()];
    let mut on_chain = vec![false; items.len()];
    for start in 0..items.len() {
        // The chain of renames that free each other's targets, walked back
        // to the first one that frees nothing still pending.
        let mut chain = Vec::new();
        let mut at = start;
        while !placed[at] && !on_chain[at] {
            on_chain[at] = true;
            chain.push(at);
            let DrainOp::Rename { to, .. } = &items[at].op else {
                break;
            };
            match vacates.get(&(items[at].order_key(), to.as_str())) {
                Some(&next) => at = next,
                None => break,
            }
        }
        for i in chain.into_iter().rev() {
            on_chain[i] = false;
            if !placed[i] {
                placed[i] = true;
                order.push(i);
            }
        }
    }
    let mut slots: Vec<Option<DrainItem>> = items.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

fn valid(path: &str) -> VfsResult<WsPath> {
    WsPath::parse(path).map_err(|e| VfsError::new(libc::EINVAL, format!("the server would reject {path:?}: {e}")))
}

impl Vfs {
    /// Milliseconds until `record` may be sent: its last change is
    /// `min_age_ms` old (a short debounce lets an editor finish its save
    /// dance before anything is sent), or at once when fsync waits for it.
    fn ready_in_ms(record: &Record, now: i64, min_age_ms: i64, urgent: &std::collections::HashSet<u64>) -> i64 {
        if urgent.contains(&record.uid) {
            0
        } else {
            (record.changed_at + min_age_ms - now).max(0)
        }
    }

    /// How long until the next journaled change (other than `skip`ped ones)
    /// is ready to send; `None` when nothing waits.
    pub fn next_ready_in(&self, min_age_ms: i64, skip: &dyn Fn(u64) -> bool) -> Option<std::time::Duration> {
        let urgent = self.urgent_uids();
        let st = self.lock();
        let now = now_millis();
        st.records
            .values()
            .filter(|r| !skip(r.uid))
            .map(|r| Self::ready_in_ms(r, now, min_age_ms, &urgent))
            .min()
            .map(|ms| std::time::Duration::from_millis(ms as u64))
    }

    /// One operation per record that is ready (see [`Vfs::ready_in_ms`]),
    /// in the order they must run.
    pub fn drain_plan(&self, min_age_ms: i64, skip: &dyn Fn(u64) -> bool) -> Vec<DrainItem> {
        let urgent = self.urgent_uids();
        let st = self.lock();
        let now = now_millis();
        let mut items = Vec::new();
        let mut deleting = std::collections::HashSet::new();
        // Directories whose own change waits for a later round.
        let mut waiting = std::collections::HashSet::new();
        for record in st.records.values() {
            let ready = Self::ready_in_ms(record, now, min_age_ms, &urgent) == 0 && !skip(record.uid);
            if !ready && !record.deleted {
                if record.kind == NodeKind::Dir {
                    waiting.insert(record.uid);
                }
                continue;
            }
            match self.plan_record(&st, record) {
                Ok(Some(op)) => {
                    if let DrainOp::Delete { path, .. } = &op {
                        deleting.insert(path.as_str().to_string());
                    }
                    if ready {
                        items.push(DrainItem {
                            uid: record.uid,
                            rev: record.rev,
                            op,
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(uid = record.uid, error = %e, "cannot plan a journaled change"),
            }
        }
        // Whatever lands at (or below) a path whose old node is still to be
        // deleted waits for that deletion (a later round): sent first, it would
        // land in the old node (`rm x; mkdir x` / `rm f; echo > f`), and the
        // deletion would then remove it from the server.
        let blocked = |path: &WsPath| {
            let path = path.as_str();
            deleting.contains(path) || path.match_indices('/').any(|(i, _)| deleting.contains(&path[..i]))
        };
        // Whatever lies below a directory whose rename or mkdir is not in
        // this plan waits too: its path assumes that change has been made
        // (sent now, a new file would make the server create the renamed
        // directory's new path, and the rename would then find it taken).
        let below_waiting = |uid: u64| {
            let mut current = st.by_uid.get(&uid).and_then(|i| st.inodes.get(i)).map(|i| i.parent);
            while let Some(ino) = current.filter(|i| *i != ROOT_INO) {
                let Some(dir) = st.inodes.get(&ino) else { break };
                if waiting.contains(&dir.uid) {
                    return true;
                }
                current = Some(dir.parent);
            }
            false
        };
        items.retain(|i| match &i.op {
            DrainOp::Mkdir { path, .. } | DrainOp::Commit { path, .. } | DrainOp::Rename { to: path, .. } => {
                !blocked(path) && (waiting.is_empty() || !below_waiting(i.uid))
            }
            DrainOp::Delete { .. } | DrainOp::Forget => true,
        });
        // At one depth, renames go before mkdirs (`mv b c; mkdir b`: the
        // mkdir needs the path the rename frees). Other ties go by path, so
        // the same journal gives the same plan (the records map has no
        // order, and uids are random).
        items.sort_by(|a, b| a.plan_rank().cmp(&b.plan_rank()));
        vacating_renames_first(items)
    }

    pub(super) fn plan_record(&self, st: &State, r: &Record) -> VfsResult<Option<DrainOp>> {
        let ino = st.by_uid.get(&r.uid).copied();
        let live = ino.and_then(|i| st.inodes.get(&i)).filter(|i| !i.unlinked);
        let (ino, inode) = match (ino, live) {
            (Some(ino), Some(inode)) if !r.deleted => (ino, inode),
            _ => {
                return Ok(Some(match (r.node, &r.server_path) {
                    (Some(node), Some(path)) => {
                        let parent = match r.parent {
                            ParentRef::Root => Some(ROOT_INO),
                            ParentRef::Node(n) => st.by_node.get(&n).copied(),
                            ParentRef::Local(u) => st.by_uid.get(&u).copied(),
                        };
                        let path = match parent {
                            Some(parent) => Self::settled_server_path(st, parent, &r.name, path),
                            None => path.clone(),
                        };
                        DrainOp::Delete {
                            node,
                            path: valid(&path)?,
                            recursive: r.kind == NodeKind::Dir,
                        }
                    }
                    _ => DrainOp::Forget,
                }))
            }
        };
        if r.open_content || st.kernel_io.kernel_writing(ino).is_some() {
            // The kernel may still be writing it: sent once its writers are
            // gone, as one version however many descriptors wrote it.
            return Ok(None);
        }
        let path = valid(&Self::path_of(st, ino))?;
        let source = || -> ContentSource {
            match (Journal::inline_bytes(r), &r.content) {
                (Some(bytes), _) => ContentSource::Inline(bytes),
                (None, Some(hash)) => {
                    let staged = self.journal.pending_blob_path(hash);
                    // No pending file: the content is one the server already
                    // has (a node re-committed as new after `unbind`).
                    if staged.exists() {
                        ContentSource::File(staged)
                    } else {
                        ContentSource::Server
                    }
                }
                (None, None) => ContentSource::Server,
            }
        };
        let op = match (r.node, &inode.server) {
            (None, _) if r.kind == NodeKind::Dir => DrainOp::Mkdir { path, mode: r.mode },
            (None, _) => match &r.content {
                Some(hash) => DrainOp::Commit {
                    path,
                    node: None,
                    base_version: None,
                    hash: hash.clone(),
                    size: r.size,
                    kind: r.kind,
                    mode: r.mode,
                    source: source(),
                    mtime: r.mtime,
                    atime: r.atime,
                },
                // Created but not closed yet: its close journals the content.
                None => return Ok(None),
            },
            (Some(node), server) => {
                let server_path = r.server_path.clone().unwrap_or_default();
                let server_hash = server.as_ref().map(|s| s.hash.clone());
                if Self::settled_server_path(st, inode.parent, &inode.name, &server_path) != path.as_str() {
                    DrainOp::Rename {
                        node,
                        from: valid(&server_path)?,
                        to: path,
                    }
                } else if r.kind != NodeKind::Dir && (r.content.is_some() || r.meta_dirty) {
                    // (A directory's mode stays local: the server commits files only.)
                    let hash = match (&r.content, server_hash) {
                        (Some(h), _) => h.clone(),
                        (None, Some(h)) => h,
                        (None, None) => return Ok(None),
                    };
                    DrainOp::Commit {
                        path,
                        node: Some(node),
                        base_version: r.base_version,
                        hash,
                        size: r.size,
                        kind: r.kind,
                        mode: r.mode,
                        source: source(),
                        mtime: r.mtime,
                        atime: r.atime,
                    }
                } else {
                    DrainOp::Forget
                }
            }
        };
        Ok(Some(op))
    }

    /// Where the server will have a node once this plan's renames have run: a
    /// node still under the parent and name the server knows moves along with
    /// that parent (a renamed ancestor carries it; it needs no rename of its own).
    fn settled_server_path(st: &State, parent: Ino, name: &str, server_path: &str) -> String {
        let (server_parent, server_name) = server_path.rsplit_once('/').unwrap_or(("", server_path));
        let parent_server = if parent == ROOT_INO {
            Some("")
        } else {
            st.inodes
                .get(&parent)
                .filter(|p| !p.unlinked)
                .and_then(|p| p.server.as_ref())
                .map(|s| s.path.as_str())
        };
        if name != server_name || parent_server != Some(server_parent) {
            return server_path.to_string();
        }
        match Self::path_of(st, parent) {
            p if p.is_empty() => name.to_string(),
            p => format!("{p}/{name}"),
        }
    }

    /// A directory moved on the server from `old` to `new`: what it holds moved too.
    pub(super) fn rebase_server_paths(&self, st: &mut State, old: &str, new: &str) -> VfsResult<()> {
        if old == new {
            return Ok(());
        }
        let moved = |p: &str| {
            p.strip_prefix(old)
                .filter(|rest| rest.starts_with('/'))
                .map(|rest| format!("{new}{rest}"))
        };
        for inode in st.inodes.values_mut() {
            if let Some(s) = inode.server.as_mut() {
                if let Some(p) = moved(&s.path) {
                    s.path = p;
                }
            }
        }
        for r in st.records.values_mut() {
            if let Some(p) = r.server_path.as_deref().and_then(moved) {
                r.server_path = Some(p);
                self.journal.write(r)?;
            }
        }
        Ok(())
    }
}
