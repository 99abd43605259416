//! Building the tree at mount time: the server's listing, the published
//! skills, then every journaled change that had not reached the server when
//! the previous mount stopped (or crashed).

use std::collections::HashMap;
use std::io::Read;
use std::time::SystemTime;

use super::journal::{Journal, ParentRef, Record};
use super::*;
use crate::api::{SkillsListing, TreeListing};

/// Name of the read-only directory that shows the published skills.
pub const SKILLS_DIR: &str = "skills";

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub entries: usize,
    pub skills: usize,
    pub replayed: usize,
    /// Set when the project has its own top-level `skills` entry.
    pub skills_hidden: bool,
}

fn parse_time(raw: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(SystemTime::from)
        .unwrap_or_else(|_| SystemTime::now())
}

impl Vfs {
    /// Replaces the tree with `listing`, adds `skills` (at the root, unless the
    /// project has its own `skills` entry), and replays the journal.
    pub fn load(&self, listing: &TreeListing, skills: Option<&SkillsListing>) -> VfsResult<LoadReport> {
        let mut report = LoadReport::default();
        let symlink_targets = self.symlink_targets(
            listing
                .entries
                .iter()
                .filter(|e| e.kind == NodeKind::Symlink)
                .map(|e| &e.hash),
        )?;
        let mut st = self.lock();
        st.cursor = listing.cursor;
        // Sized once: growing a 100,000-entry table doubles it for a moment.
        st.inodes.reserve(listing.entries.len() + 1);
        st.by_node.reserve(listing.entries.len());
        st.by_uid.reserve(listing.entries.len() + 1);
        let mut by_path: HashMap<String, Ino> = HashMap::from([(String::new(), ROOT_INO)]);
        for entry in &listing.entries {
            let (parent_path, name) = match entry.path.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None => (String::new(), entry.path.clone()),
            };
            let Some(&parent) = by_path.get(&parent_path) else {
                tracing::warn!(path = %entry.path, "listing entry without a parent directory; skipped");
                continue;
            };
            let content = match entry.kind {
                NodeKind::Dir => Content::Dir,
                NodeKind::File => Content::Blob {
                    hash: entry.hash.clone(),
                },
                NodeKind::Symlink => Content::Symlink {
                    target: symlink_targets.get(&entry.hash).cloned().unwrap_or_default(),
                },
            };
            let ino = Self::alloc_ino(&mut st);
            let mut inode = Inode::new(rand::random(), parent, name, entry.kind, entry.mode, content);
            inode.size = entry.size;
            inode.mtime = parse_time(&entry.modified_at);
            inode.atime = entry.accessed_at.as_deref().map_or(inode.mtime, parse_time);
            inode.ctime = inode.mtime;
            inode.server = Some(ServerState {
                node: entry.id,
                version: entry.version,
                hash: entry.hash.clone(),
                path: entry.path.clone(),
                mode: entry.mode,
            });
            Self::insert_inode(&mut st, ino, inode);
            if entry.kind == NodeKind::Dir {
                by_path.insert(entry.path.clone(), ino);
            }
            report.entries += 1;
        }
        if let Some(skills) = skills {
            if Self::get(&st, ROOT_INO)?.children.contains_key(SKILLS_DIR) {
                tracing::warn!(
                    "the project has its own `skills` entry; published skills are not shown (use --skills-dir)"
                );
                report.skills_hidden = true;
            } else {
                report.skills = Self::add_skills(&mut st, ROOT_INO, SKILLS_DIR, skills);
            }
        }
        drop(st);
        report.replayed = self.replay()?;
        Ok(report)
    }

    /// Reads symlink targets (tiny blobs) through the cache.
    fn symlink_targets<'a>(&self, hashes: impl Iterator<Item = &'a BlobHash>) -> VfsResult<HashMap<BlobHash, String>> {
        let mut out = HashMap::new();
        for hash in hashes {
            if out.contains_key(hash) {
                continue;
            }
            let file = self.open_blob(hash)?;
            let mut target = String::new();
            super::journal::ReadAt::new(&file)
                .read_to_string(&mut target)
                .map_err(|e| VfsError::io("read symlink target", e))?;
            out.insert(hash.clone(), target);
        }
        Ok(out)
    }

    /// Fills the root of this Vfs with the published skills, for a mount that
    /// shows nothing but them (`contextfs mount --skills-dir`). The Vfs must be
    /// fresh and created read-only; the root becomes a read-only `0o555`
    /// directory like `skills/` in a project mount. Returns how many skills.
    pub fn load_skills_root(&self, skills: &SkillsListing) -> VfsResult<usize> {
        if !self.config.read_only {
            return Err(VfsError::new(
                libc::EINVAL,
                "a skills-only mount must be created read-only",
            ));
        }
        let mut st = self.lock();
        let root = Self::get_mut(&mut st, ROOT_INO)?;
        if !root.children.is_empty() {
            return Err(VfsError::exists("the root of this mount (it is already loaded)"));
        }
        root.mode = 0o555;
        root.read_only = true;
        st.skills_root = Some(ROOT_INO);
        Ok(Self::fill_skills(&mut st, ROOT_INO, skills))
    }

    /// Shows `skills` instead of the skills loaded before (they were
    /// published again). Open files keep the bytes they opened; everything
    /// else sees the new set at once. Returns false when this mount shows no
    /// skills.
    pub fn refresh_skills(&self, skills: &SkillsListing) -> VfsResult<bool> {
        let mut invalidate = Vec::new();
        {
            let mut st = self.lock();
            let Some(root) = st.skills_root else {
                return Ok(false);
            };
            let children: Vec<(String, Ino)> = Self::get(&st, root)?
                .children
                .iter()
                .map(|(name, ino)| (name.clone(), *ino))
                .collect();
            for (name, ino) in children {
                Self::detach_tree(&mut st, ino);
                invalidate.push(Invalidation::Entry { parent: root, name });
            }
            Self::fill_skills(&mut st, root, skills);
            invalidate.push(Invalidation::Inode(root));
        }
        self.invalidate(invalidate);
        Ok(true)
    }

    /// Detaches `ino` and everything below it (children first).
    fn detach_tree(st: &mut State, ino: Ino) {
        let children: Vec<Ino> = st
            .inodes
            .get(&ino)
            .map(|i| i.children.values().copied().collect())
            .unwrap_or_default();
        for child in children {
            Self::detach_tree(st, child);
        }
        Self::detach(st, ino);
    }

    /// Adds a read-only tree of skills under `parent/name`; returns how many skills.
    fn add_skills(st: &mut State, parent: Ino, name: &str, skills: &SkillsListing) -> usize {
        let root = Self::alloc_ino(st);
        let mut dir = Inode::new(
            rand::random(),
            parent,
            name.to_string(),
            NodeKind::Dir,
            0o555,
            Content::Dir,
        );
        dir.read_only = true;
        Self::insert_inode(st, root, dir);
        st.skills_root = Some(root);
        Self::fill_skills(st, root, skills)
    }

    /// Adds every skill file (and the folders leading to it) below the
    /// directory `root`, all read-only; returns how many skills.
    fn fill_skills(st: &mut State, root: Ino, skills: &SkillsListing) -> usize {
        let mut dirs: HashMap<String, Ino> = HashMap::from([(String::new(), root)]);
        for skill in &skills.skills {
            for file in &skill.files {
                let path = file.path.as_str();
                let mut parent_ino = root;
                let mut prefix = String::new();
                let parts: Vec<&str> = path.split('/').collect();
                for part in &parts[..parts.len() - 1] {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(part);
                    parent_ino = match dirs.get(&prefix) {
                        Some(&ino) => ino,
                        None => {
                            let ino = Self::alloc_ino(st);
                            let mut d = Inode::new(
                                rand::random(),
                                parent_ino,
                                part.to_string(),
                                NodeKind::Dir,
                                0o555,
                                Content::Dir,
                            );
                            d.read_only = true;
                            Self::insert_inode(st, ino, d);
                            dirs.insert(prefix.clone(), ino);
                            ino
                        }
                    };
                }
                let ino = Self::alloc_ino(st);
                let mode = if file.mode & 0o111 != 0 { 0o555 } else { 0o444 };
                let mut f = Inode::new(
                    rand::random(),
                    parent_ino,
                    parts[parts.len() - 1].to_string(),
                    NodeKind::File,
                    mode,
                    Content::Blob {
                        hash: file.hash.clone(),
                    },
                );
                f.size = file.size;
                f.read_only = true;
                Self::insert_inode(st, ino, f);
            }
        }
        skills.skills.len()
    }

    /// Re-applies journaled changes on top of the server tree.
    fn replay(&self) -> VfsResult<usize> {
        let records = Self::parents_first(self.journal.load()?);
        let count = records.len();
        // Nodes the journal deletes: a journaled mkdir never takes one over.
        let deleting: std::collections::HashSet<i64> =
            records.iter().filter(|r| r.deleted).filter_map(|r| r.node).collect();
        {
            // Lift every listed node a record places out of the listing's layout
            // first, so placing one record cannot displace (and drop) a node a
            // later record moves (a swap, or renames within one millisecond).
            let mut st = self.lock();
            for r in records.iter().filter(|r| !r.deleted) {
                let Some(ino) = r.node.and_then(|n| st.by_node.get(&n).copied()) else {
                    continue;
                };
                let Some((parent, name)) = st.inodes.get(&ino).map(|i| (i.parent, i.name.clone())) else {
                    continue;
                };
                if let Some(p) = st.inodes.get_mut(&parent) {
                    if p.children.get(&name) == Some(&ino) {
                        p.children.remove(&name);
                    }
                }
            }
        }
        for record in records {
            if let Err(e) = self.replay_one(record.clone(), &deleting) {
                // Keep the record on disk: nothing is dropped, status shows it.
                tracing::error!(uid = record.uid, name = %record.name, error = %e, "cannot replay a journaled change");
                let mut st = self.lock();
                // A lifted node goes back where the listing had it.
                if let Some(ino) = record.node.and_then(|n| st.by_node.get(&n).copied()) {
                    if let Some((parent, name)) = st.inodes.get(&ino).map(|i| (i.parent, i.name.clone())) {
                        if let Some(p) = st.inodes.get_mut(&parent) {
                            p.children.entry(name).or_insert(ino);
                        }
                    }
                }
                let mut failed = record;
                failed.last_error = Some(format!("replay failed: {e}"));
                st.records.insert(failed.uid, failed);
            }
        }
        Ok(count)
    }

    /// Journal order (oldest change first), except that a record inside a
    /// directory created locally comes after that directory's record, which a
    /// later change (a rename, a chmod) may have made newer.
    fn parents_first(mut records: Vec<Record>) -> Vec<Record> {
        let mut ordered = Vec::with_capacity(records.len());
        while !records.is_empty() {
            let waiting: std::collections::HashSet<u64> = records.iter().map(|r| r.uid).collect();
            let (ready, rest): (Vec<Record>, Vec<Record>) = records
                .into_iter()
                .partition(|r| !matches!(r.parent, ParentRef::Local(p) if p != r.uid && waiting.contains(&p)));
            if ready.is_empty() {
                // A cycle cannot be journaled; keep everything anyway.
                ordered.extend(rest);
                break;
            }
            ordered.extend(ready);
            records = rest;
        }
        ordered
    }

    fn resolve_parent(st: &State, parent: &ParentRef) -> Option<Ino> {
        match parent {
            ParentRef::Root => Some(ROOT_INO),
            ParentRef::Node(node) => st.by_node.get(node).copied(),
            ParentRef::Local(uid) => st.by_uid.get(uid).copied(),
        }
    }

    /// A record whose content the kernel was still writing when the mount
    /// stopped (write passthrough): its bytes are what it holds now. They
    /// are hashed and journaled by hash before anything uses the record.
    fn seal_open_content(&self, mut record: Record) -> VfsResult<Record> {
        if !record.open_content {
            return Ok(record);
        }
        // Held until the record naming the content is appended.
        let mut claim = None;
        if !record.deleted {
            let sealed = self.journal.seal_open_content(record.uid)?;
            tracing::info!(name = %record.name, size = sealed.size, "replay: a file written by passthrough is journaled as it was left");
            record.content = Some(sealed.hash);
            record.size = sealed.size;
            claim = Some(sealed.claim);
        }
        record.inline = None;
        record.open_content = false;
        self.journal.write(&record)?;
        drop(claim);
        self.journal.remove_open_content(record.uid);
        Ok(record)
    }

    fn replay_one(&self, record: Record, deleting: &std::collections::HashSet<i64>) -> VfsResult<()> {
        let record = self.seal_open_content(record)?;
        // Rebuild the staged content first (outside the lock).
        let staged = match (&record.content, record.kind, record.deleted) {
            (Some(hash), NodeKind::File, false) => match Journal::inline_bytes(&record) {
                Some(bytes) => {
                    let (file, path) = self.new_local_file()?;
                    file.write_all_at(&bytes, 0)
                        .map_err(|e| VfsError::io("restore staging file", e))?;
                    Some((file, path, bytes.len() as u64, false))
                }
                // The pending file itself, linked (no copy, and never read
                // into memory: it can be gigabytes): sealed, as after a close.
                None => Some(self.link_pending_as_staging(hash)?),
            },
            _ => None,
        };
        let mut st = self.lock();
        let existing = record.node.and_then(|n| st.by_node.get(&n).copied());
        if record.deleted {
            if let Some(ino) = existing {
                Self::detach(&mut st, ino);
            }
            st.records.insert(record.uid, record);
            return Ok(());
        }
        let parent = Self::resolve_parent(&st, &record.parent)
            .or_else(|| {
                // The parent's record is gone (it reached the server): find it by path.
                let parent_path = record
                    .server_path
                    .as_deref()
                    .and_then(|p| p.rsplit_once('/'))
                    .map(|(p, _)| p)?;
                let mut current = ROOT_INO;
                for part in parent_path.split('/') {
                    current = *st.inodes.get(&current)?.children.get(part)?;
                }
                Some(current)
            })
            .unwrap_or_else(|| {
                tracing::warn!(uid = record.uid, name = %record.name, parent = ?record.parent,
                    "replay: the directory of a journaled change is gone; it is placed at the root");
                ROOT_INO
            });
        // A directory whose mkdir reached the server although its answer
        // never reached this mount (it died first), or that another writer
        // made too: the listing has it, maybe with files committed into it
        // since. The record takes that directory over, so what it holds
        // stays shown (displaced, it vanished from this mount until the next
        // remount); the mkdir is sent again and the server answers with this
        // same node. Not a directory the journal deletes: the mkdir replaced
        // it (`rmdir b; mkdir b`, or a new directory renamed over it).
        let taken_over = match existing {
            None if record.kind == NodeKind::Dir && record.node.is_none() => Self::get(&st, parent)?
                .children
                .get(&record.name)
                .copied()
                .filter(|dir| {
                    st.inodes.get(dir).is_some_and(|d| {
                        d.kind == NodeKind::Dir
                            && d.server.as_ref().is_some_and(|s| !deleting.contains(&s.node))
                            && !st.records.contains_key(&d.uid)
                    })
                }),
            _ => None,
        };
        if taken_over.is_some() {
            tracing::info!(name = %record.name, "replay: the server has the directory of a journaled mkdir already; it is taken over");
        }
        let ino = match existing.or(taken_over) {
            Some(ino) => {
                // Move it to where the journal says it was.
                let (old_parent, old_name) = {
                    let i = Self::get(&st, ino)?;
                    (i.parent, i.name.clone())
                };
                if let Some(p) = st.inodes.get_mut(&old_parent) {
                    if p.children.get(&old_name) == Some(&ino) {
                        p.children.remove(&old_name);
                    }
                }
                let i = Self::get_mut(&mut st, ino)?;
                i.parent = parent;
                i.name = record.name.clone();
                let old_uid = std::mem::replace(&mut i.uid, record.uid);
                st.by_uid.remove(&old_uid);
                ino
            }
            None => {
                let ino = Self::alloc_ino(&mut st);
                let content = match record.kind {
                    NodeKind::Dir => Content::Dir,
                    NodeKind::Symlink => Content::Symlink {
                        target: Journal::inline_bytes(&record)
                            .map(|b| String::from_utf8_lossy(&b).to_string())
                            .unwrap_or_default(),
                    },
                    NodeKind::File => Content::Blob {
                        hash: record.content.clone().unwrap_or_else(|| BlobHash::of(b"")),
                    },
                };
                let inode = Inode::new(
                    record.uid,
                    parent,
                    record.name.clone(),
                    record.kind,
                    record.mode,
                    content,
                );
                st.inodes.insert(ino, inode);
                ino
            }
        };
        st.by_uid.insert(record.uid, ino);
        // Whatever the server tree had under this name yields to the journal.
        if let Some(displaced) = Self::get(&st, parent)?.children.get(&record.name).copied() {
            if displaced != ino {
                Self::detach(&mut st, displaced);
            }
        }
        if let Some(p) = st.inodes.get_mut(&parent) {
            p.children.insert(record.name.clone(), ino);
        }
        let inode = Self::get_mut(&mut st, ino)?;
        inode.mode = record.mode;
        // Times set locally and not yet committed.
        if let Some(mtime) = record.mtime {
            inode.mtime = time_of_nanos(mtime);
        }
        if let Some(atime) = record.atime {
            inode.atime = time_of_nanos(atime);
        }
        if let Some((file, path, size, sealed)) = staged {
            inode.content = Content::Local {
                file,
                path,
                sealed,
                kernel_wrote: false,
            };
            inode.size = size;
        } else if record.kind == NodeKind::Symlink {
            inode.size = record.size;
        }
        // The listing is the truth about where the server has the node: an
        // acknowledged rename whose record update was lost in a crash is not
        // sent again.
        let mut record = record;
        if existing.is_some() {
            if let Some(server) = &inode.server {
                record.server_path = Some(server.path.clone());
            }
        }
        st.records.insert(record.uid, record);
        Ok(())
    }

    /// A staging file for pending content `hash`: a hard link to it
    /// (sealed: the journal's bytes), or a copy where links fail.
    fn link_pending_as_staging(&self, hash: &BlobHash) -> VfsResult<(Arc<File>, PathBuf, u64, bool)> {
        let pending = self.journal.pending_blob_path(hash);
        let path = self.staging.dir().join(format!("{:016x}", rand::random::<u64>()));
        let sealed = match std::fs::hard_link(&pending, &path) {
            Ok(()) => true,
            Err(_) => {
                std::fs::copy(&pending, &path).map_err(|e| VfsError::io("copy pending content", e))?;
                false
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| VfsError::io("open restored staging file", e))?;
        let size = file
            .metadata()
            .map_err(|e| VfsError::io("stat restored staging file", e))?
            .len();
        Ok((Arc::new(file), path, size, sealed))
    }
}
