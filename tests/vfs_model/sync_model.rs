//! The reference model of a mount that talks to a server: every entry has a
//! kind (file, directory, symlink), bytes (a symlink's target), a mode, and
//! what the mount knows of its server node. Local operations here are whole
//! system calls (open-write-close, chmod, truncate, touch, symlink, fsync),
//! so no handle stays open between operations; `sync.rs` adds the server.

use crate::harness::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// File bytes, or a symlink's target.
    pub bytes: Vec<u8>,
    pub mode: u32,
    /// The server node the mount binds this entry to, once it knows it.
    pub node: Option<i64>,
    /// The newest version of that node the mount has seen.
    pub seen: i64,
    /// Where the mount believes the server has the node.
    pub server_path: String,
    /// Bumped by every local change (what a new journal revision is).
    pub changed: u64,
    /// Local changes the server has not acknowledged (a journal record).
    pub dirty: bool,
    /// Of those, a content or mode change (a rename's answer leaves it queued).
    pub content: bool,
}

impl Entry {
    pub fn local(kind: Kind, bytes: Vec<u8>, mode: u32) -> Self {
        Self {
            kind,
            bytes,
            mode,
            node: None,
            seen: 0,
            server_path: String::new(),
            changed: 1,
            dirty: true,
            content: kind != Kind::Dir,
        }
    }
}

/// What the tree shows: (kind, bytes, mode) by path.
pub type View = BTreeMap<String, (Kind, Vec<u8>, u32)>;

#[derive(Debug, Clone, Default)]
pub struct SyncModel {
    /// Path -> entry id.
    pub tree: BTreeMap<String, usize>,
    pub entries: Vec<Entry>,
    /// Nodes this mount deleted -> tombstone version once the server answered.
    pub deleted: HashMap<i64, Option<i64>>,
    /// Paths of creates sent and not answered yet (how many).
    pub creating: HashMap<String, usize>,
}

pub fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

pub fn under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

impl SyncModel {
    pub fn kind(&self, path: &str) -> Option<Kind> {
        self.tree.get(path).map(|id| self.entries[*id].kind)
    }

    pub fn entry_at(&self, path: &str) -> Option<&Entry> {
        self.tree.get(path).map(|id| &self.entries[*id])
    }

    pub fn add(&mut self, path: &str, entry: Entry) -> usize {
        self.entries.push(entry);
        let id = self.entries.len() - 1;
        self.tree.insert(path.to_string(), id);
        id
    }

    /// A local change of entry `id`; `content` for data or mode.
    pub fn touch(&mut self, id: usize, content: bool) {
        let e = &mut self.entries[id];
        e.changed += 1;
        e.dirty = true;
        e.content |= content;
    }

    pub fn bound(&self, node: i64) -> Option<(String, usize)> {
        self.tree
            .iter()
            .find(|(_, id)| self.entries[**id].node == Some(node))
            .map(|(p, id)| (p.clone(), *id))
    }

    /// What the kernel's path walk reports for `path`'s parent.
    pub fn walk_parent(&self, path: &str) -> Result<(), i32> {
        let parent = parent_of(path);
        if parent.is_empty() {
            return Ok(());
        }
        let mut prefix = String::new();
        for part in parent.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match self.kind(&prefix) {
                None => return Err(libc::ENOENT),
                Some(Kind::Dir) => {}
                Some(_) => return Err(libc::ENOTDIR),
            }
        }
        Ok(())
    }

    pub fn has_children(&self, dir: &str) -> bool {
        self.tree
            .range(format!("{dir}/")..)
            .next()
            .is_some_and(|(k, _)| under(k, dir))
    }

    pub fn view(&self) -> View {
        self.tree
            .iter()
            .map(|(p, id)| {
                let e = &self.entries[*id];
                let bytes = if e.kind == Kind::Dir {
                    Vec::new()
                } else {
                    e.bytes.clone()
                };
                (p.clone(), (e.kind, bytes, e.mode))
            })
            .collect()
    }

    /// The mount removed entry `id` (unlink, rmdir, replaced by a rename):
    /// a new unbound file standing at its node's server path inherits the
    /// node (an editor's save); otherwise the node is deleted.
    pub fn removed(&mut self, id: usize) {
        let e = self.entries[id].clone();
        let Some(node) = e.node else { return };
        if e.kind == Kind::File {
            if let Some(&heir) = self.tree.get(&e.server_path) {
                let h = &self.entries[heir];
                if heir != id && h.node.is_none() && h.kind == Kind::File {
                    let h = &mut self.entries[heir];
                    h.node = Some(node);
                    h.seen = e.seen;
                    h.server_path = e.server_path.clone();
                    h.dirty = true;
                    h.content = true;
                    return;
                }
            }
        }
        self.deleted.insert(node, None);
    }

    /// rename(2) on the model; entries keep their identity.
    pub fn rename(&mut self, from: &str, to: &str, no_replace: bool) -> Result<(), i32> {
        self.walk_parent(from)?;
        self.walk_parent(to)?;
        let Some(&src) = self.tree.get(from) else {
            return Err(libc::ENOENT);
        };
        let src_dir = self.entries[src].kind == Kind::Dir;
        if src_dir && under(to, from) {
            return Err(libc::EINVAL);
        }
        if from == to {
            return Ok(());
        }
        if let Some(&dst) = self.tree.get(to) {
            if no_replace {
                return Err(libc::EEXIST);
            }
            let dst_dir = self.entries[dst].kind == Kind::Dir;
            match (src_dir, dst_dir) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if self.has_children(to) => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            self.tree.remove(to);
            let inherits = self.entries[src].kind == Kind::File
                && self.entries[src].node.is_none()
                && self.entries[dst].node.is_some();
            if inherits {
                let d = self.entries[dst].clone();
                let s = &mut self.entries[src];
                s.node = d.node;
                s.seen = d.seen;
                s.server_path = d.server_path;
            } else {
                self.removed(dst);
            }
        }
        let moving: Vec<String> = self
            .tree
            .keys()
            .filter(|k| *k == from || under(k, from))
            .cloned()
            .collect();
        for old in moving {
            let id = self.tree.remove(&old).unwrap();
            self.tree.insert(format!("{to}{}", &old[from.len()..]), id);
        }
        self.touch(src, false);
        Ok(())
    }
}

/// A local operation: one or a few system calls, nothing left open.
#[derive(Debug, Clone)]
pub enum LocalOp {
    /// `open(O_CREAT|O_TRUNC)`, write, close.
    Write {
        path: String,
        data: Vec<u8>,
    },
    /// Open an existing file read-write, write at `offset`, fsync, close.
    Fsync {
        path: String,
        offset: u64,
        data: Vec<u8>,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        no_replace: bool,
    },
    Symlink {
        path: String,
        target: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Truncate {
        path: String,
        size: u64,
    },
    /// `touch -d`: sets mtime only.
    Touch {
        path: String,
        secs: u64,
    },
}

pub fn any_local_path() -> impl Strategy<Value = String> {
    prop::collection::vec(select(vec!["a", "b", "c"]), 1..=2).prop_map(|parts| parts.join("/"))
}

pub fn any_local_op() -> impl Strategy<Value = LocalOp> {
    let data = || prop::collection::vec(any::<u8>(), 0..5);
    prop_oneof![
        5 => (any_local_path(), data()).prop_map(|(path, data)| LocalOp::Write { path, data }),
        1 => (any_local_path(), select(vec![0u64, 2, 70_000]), data())
            .prop_map(|(path, offset, data)| LocalOp::Fsync { path, offset, data }),
        3 => any_local_path().prop_map(|path| LocalOp::Mkdir { path }),
        1 => any_local_path().prop_map(|path| LocalOp::Rmdir { path }),
        2 => any_local_path().prop_map(|path| LocalOp::Unlink { path }),
        3 => (any_local_path(), any_local_path(), prop::bool::weighted(0.2))
            .prop_map(|(from, to, no_replace)| LocalOp::Rename { from, to, no_replace }),
        1 => (any_local_path(), select(vec!["a", "../x", "b/c"]))
            .prop_map(|(path, t)| LocalOp::Symlink { path, target: t.to_string() }),
        2 => (any_local_path(), select(vec![0o644u32, 0o755, 0o600, 0o700]))
            .prop_map(|(path, mode)| LocalOp::Chmod { path, mode }),
        1 => (any_local_path(), select(vec![0u64, 1, 7])).prop_map(|(path, size)| LocalOp::Truncate { path, size }),
        1 => (any_local_path(), 1u64..2_000_000_000).prop_map(|(path, secs)| LocalOp::Touch { path, secs }),
    ]
}

/// `path`'s parent inode and name, the way the kernel's path walk finds them.
pub fn walk(vfs: &Vfs, path: &str) -> Result<(Ino, String), i32> {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let mut ino = ROOT_INO;
    if !parent.is_empty() {
        for part in parent.split('/') {
            let attr = errno(vfs.lookup(ino, part))?;
            if attr.kind != NodeKind::Dir {
                return Err(libc::ENOTDIR);
            }
            ino = attr.ino;
        }
    }
    Ok((ino, name.to_string()))
}

fn lookup(vfs: &Vfs, path: &str) -> Result<Ino, i32> {
    let (parent, name) = walk(vfs, path)?;
    Ok(errno(vfs.lookup(parent, &name))?.ino)
}

/// Runs `op` on the Vfs and on the model; both must report the same.
pub fn local_op(vfs: &Vfs, model: &mut SyncModel, op: &LocalOp) -> Result<(), TestCaseError> {
    let when = format!("{op:?}");
    match op {
        LocalOp::Write { path, data } => {
            let got = walk(vfs, path).and_then(|(p, n)| {
                let (_, fh) = errno(vfs.create(p, &n, 0o644, TRUNC, false))?;
                errno(vfs.write(fh, 0, data))?;
                errno(vfs.flush(fh))?;
                errno(vfs.release(fh))
            });
            let want = model.walk_parent(path).and_then(|()| match model.kind(path) {
                Some(Kind::Dir) => Err(libc::EISDIR),
                Some(Kind::Symlink) => Err(libc::ELOOP),
                Some(Kind::File) => {
                    let id = model.tree[path];
                    model.entries[id].bytes = data.clone();
                    model.touch(id, true);
                    Ok(())
                }
                None => {
                    model.add(path, Entry::local(Kind::File, data.clone(), 0o644));
                    Ok(())
                }
            });
            prop_assert_eq!(got, want, "{}", when);
        }
        LocalOp::Fsync { path, offset, data } => {
            let got = lookup(vfs, path).and_then(|ino| {
                let fh = errno(vfs.open(ino, RW))?;
                errno(vfs.write(fh, *offset, data))?;
                // No sync worker is attached: fsync returns once the change
                // is durable in the journal (the server counts as unreachable).
                errno(vfs.fsync(fh))?;
                errno(vfs.release(fh))
            });
            let want = model.walk_parent(path).and_then(|()| match model.kind(path) {
                None => Err(libc::ENOENT),
                Some(Kind::Dir) => Err(libc::EISDIR),
                Some(Kind::Symlink) => Err(libc::ELOOP),
                Some(Kind::File) => {
                    let id = model.tree[path];
                    if !data.is_empty() {
                        let bytes = &mut model.entries[id].bytes;
                        let end = *offset as usize + data.len();
                        if bytes.len() < end {
                            bytes.resize(end, 0);
                        }
                        bytes[*offset as usize..end].copy_from_slice(data);
                    }
                    // Even an empty write makes the handle dirty: a new revision.
                    model.touch(id, true);
                    Ok(())
                }
            });
            prop_assert_eq!(got, want, "{}", when);
        }
        LocalOp::Mkdir { path } => {
            let got = walk(vfs, path).and_then(|(p, n)| errno(vfs.mkdir(p, &n, 0o755)).map(|_| ()));
            let want = model.walk_parent(path).and_then(|()| match model.kind(path) {
                Some(_) => Err(libc::EEXIST),
                None => {
                    model.add(path, Entry::local(Kind::Dir, Vec::new(), 0o755));
                    Ok(())
                }
            });
            prop_assert_eq!(got, want, "{}", when);
        }
        LocalOp::Rmdir { path } => {
            let got = walk(vfs, path).and_then(|(p, n)| errno(vfs.rmdir(p, &n)));
            let want = model.walk_parent(path).and_then(|()| match model.kind(path) {
                None => Err(libc::ENOENT),
                Some(Kind::Dir) if model.has_children(path) => Err(libc::ENOTEMPTY),
                Some(Kind::Dir) => {
                    let id = model.tree.remove(path).unwrap();
                    model.removed(id);
                    Ok(())
                }
                Some(_) => Err(libc::ENOTDIR),
            });
            prop_assert_eq!(got, want, "{}", when);
        }
        LocalOp::Unlink { path } => {
            let got = walk(vfs, path).and_then(|(p, n)| errno(vfs.unlink(p, &n)));
            let want = model.walk_parent(path).and_then(|()| match model.kind(path) {
                None => Err(libc::ENOENT),
                Some(Kind::Dir) => Err(libc::EISDIR),
                Some(_) => {
                    let id = model.tree.remove(path).unwrap();
                    model.removed(id);
                    Ok(())
                }
            });
            prop_assert_eq!(got, want, "{}", when);
        }
        LocalOp::Rename { from, to, no_replace } => {
            let got = walk(vfs, from).and_then(|(p, n)| {
                let (np, nn) = walk(vfs, to)?;
                errno(vfs.rename(p, &n, np, &nn, *no_replace))
            });
            let want = model.rename(from, to, *no_replace);
            prop_assert_eq!(got, want, "{}", when);
        }
        LocalOp::Symlink { path, target } => {
            let got = walk(vfs, path).and_then(|(p, n)| errno(vfs.symlink(p, &n, target)).map(|_| ()));
            let want = model.walk_parent(path).and_then(|()| match model.kind(path) {
                Some(_) => Err(libc::EEXIST),
                None => {
                    model.add(path, Entry::local(Kind::Symlink, target.clone().into_bytes(), 0o777));
                    Ok(())
                }
            });
            prop_assert_eq!(got, want, "{}", when);
        }
        LocalOp::Chmod { path, mode } => {
            let set = SetAttr {
                mode: Some(*mode),
                ..Default::default()
            };
            let got = lookup(vfs, path).and_then(|ino| errno(vfs.setattr(ino, None, set)).map(|a| a.mode));
            let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                None => Err(libc::ENOENT),
                Some(&id) => {
                    if model.entries[id].mode != *mode {
                        model.entries[id].mode = *mode;
                        model.touch(id, true);
                    }
                    Ok(*mode)
                }
            });
            prop_assert_eq!(got, want, "{}", when);
        }
        LocalOp::Truncate { path, size } => {
            let set = SetAttr {
                size: Some(*size),
                ..Default::default()
            };
            let got = lookup(vfs, path).and_then(|ino| errno(vfs.setattr(ino, None, set)).map(|a| a.size));
            let want = model.walk_parent(path).and_then(|()| match model.kind(path) {
                None => Err(libc::ENOENT),
                Some(Kind::Dir) => Err(libc::EISDIR),
                Some(Kind::Symlink) => Err(libc::ELOOP),
                Some(Kind::File) => {
                    let id = model.tree[path];
                    model.entries[id].bytes.resize(*size as usize, 0);
                    model.touch(id, true);
                    Ok(*size)
                }
            });
            prop_assert_eq!(got, want, "{}", when);
        }
        LocalOp::Touch { path, secs } => {
            let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(*secs);
            let set = SetAttr {
                mtime: Some(mtime),
                ..Default::default()
            };
            let got = lookup(vfs, path).and_then(|ino| {
                errno(vfs.setattr(ino, None, set))?;
                Ok(errno(vfs.getattr(ino))?.mtime)
            });
            // Times are metadata the server keeps: a pending change, like chmod.
            let want = model.walk_parent(path).and_then(|()| match model.tree.get(path) {
                None => Err(libc::ENOENT),
                Some(&id) => {
                    model.touch(id, true);
                    Ok(mtime)
                }
            });
            prop_assert_eq!(got, want, "{}", when);
        }
    }
    Ok(())
}

/// The tree the Vfs shows: kind, bytes (symlink targets) and mode by path.
pub fn vfs_view(vfs: &Vfs) -> View {
    fn walk_dir(vfs: &Vfs, ino: Ino, prefix: &str, out: &mut View) {
        for entry in vfs.readdir(ino).unwrap() {
            let path = if prefix.is_empty() {
                entry.name.clone()
            } else {
                format!("{prefix}/{}", entry.name)
            };
            let attr = vfs.getattr(entry.ino).unwrap();
            match entry.kind {
                NodeKind::Dir => {
                    out.insert(path.clone(), (Kind::Dir, Vec::new(), attr.mode));
                    walk_dir(vfs, entry.ino, &path, out);
                }
                NodeKind::Symlink => {
                    let target = vfs.readlink(entry.ino).unwrap().into_bytes();
                    out.insert(path, (Kind::Symlink, target, attr.mode));
                }
                NodeKind::File => {
                    let fh = vfs.open(entry.ino, RO).unwrap();
                    let bytes = read_all(vfs, fh);
                    vfs.release(fh).unwrap();
                    assert_eq!(attr.size, bytes.len() as u64, "size attribute of {path}");
                    out.insert(path, (Kind::File, bytes, attr.mode));
                }
            }
        }
    }
    let mut out = View::new();
    walk_dir(vfs, ROOT_INO, "", &mut out);
    out
}

pub fn show_view(view: &View) -> Vec<String> {
    view.iter()
        .map(|(p, (k, b, m))| match k {
            Kind::Dir => format!("{p}/ {m:o}"),
            Kind::Symlink => format!("{p} -> {} {m:o}", String::from_utf8_lossy(b)),
            Kind::File if b.len() > 24 => format!("{p} ({} bytes) {m:o}", b.len()),
            Kind::File => format!("{p} {:?} {m:o}", String::from_utf8_lossy(b)),
        })
        .collect()
}

pub fn check_view(vfs: &Vfs, want: &View, when: &str) -> Result<(), TestCaseError> {
    let got = vfs_view(vfs);
    prop_assert!(
        got == *want,
        "{}: tree differs\n vfs:   {:?}\n model: {:?}",
        when,
        show_view(&got),
        show_view(want)
    );
    Ok(())
}
