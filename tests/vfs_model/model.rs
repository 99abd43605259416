//! The reference model of the tree (a `BTreeMap` of paths), and how the
//! Vfs's tree is read back to compare with it.

use crate::harness::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MNode {
    Dir,
    /// Index into `Model::data` (a file's identity, followed by handles).
    File(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Dir,
    File(Vec<u8>),
}

#[derive(Debug, Clone, Default)]
pub struct Model {
    pub tree: BTreeMap<String, MNode>,
    pub data: Vec<Vec<u8>>,
}

pub fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

pub fn under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

impl Model {
    pub fn new_file(&mut self, bytes: Vec<u8>) -> usize {
        self.data.push(bytes);
        self.data.len() - 1
    }

    /// What path resolution of `path`'s parent reports.
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
            match self.tree.get(&prefix) {
                None => return Err(libc::ENOENT),
                Some(MNode::File(_)) => return Err(libc::ENOTDIR),
                Some(MNode::Dir) => {}
            }
        }
        Ok(())
    }

    /// What opening `path` as a file reports: its file id or the errno.
    pub fn file_at(&self, path: &str) -> Result<usize, i32> {
        self.walk_parent(path).and_then(|()| match self.tree.get(path) {
            None => Err(libc::ENOENT),
            Some(MNode::Dir) => Err(libc::EISDIR),
            Some(MNode::File(id)) => Ok(*id),
        })
    }

    pub fn has_children(&self, dir: &str) -> bool {
        self.tree
            .range(format!("{dir}/")..)
            .next()
            .is_some_and(|(k, _)| under(k, dir))
    }

    pub fn snapshot(&self) -> BTreeMap<String, Seen> {
        self.tree
            .iter()
            .map(|(p, n)| {
                let seen = match n {
                    MNode::Dir => Seen::Dir,
                    MNode::File(id) => Seen::File(self.data[*id].clone()),
                };
                (p.clone(), seen)
            })
            .collect()
    }

    pub fn write(&mut self, id: usize, at: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            // pwrite(2) of zero bytes changes nothing, not even past the end.
            return;
        }
        let data = &mut self.data[id];
        if data.len() < at + bytes.len() {
            data.resize(at + bytes.len(), 0);
        }
        data[at..at + bytes.len()].copy_from_slice(bytes);
    }

    pub fn rename(&mut self, from: &str, to: &str, no_replace: bool) -> Result<(), i32> {
        self.walk_parent(from)?;
        self.walk_parent(to)?;
        let Some(&src) = self.tree.get(from) else {
            return Err(libc::ENOENT);
        };
        if src == MNode::Dir && under(to, from) {
            return Err(libc::EINVAL);
        }
        if from == to {
            return Ok(());
        }
        if let Some(&dst) = self.tree.get(to) {
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (src, dst) {
                (MNode::Dir, MNode::File(_)) => return Err(libc::ENOTDIR),
                (MNode::File(_), MNode::Dir) => return Err(libc::EISDIR),
                (MNode::Dir, MNode::Dir) if self.has_children(to) => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            self.tree.remove(to);
        }
        let moving: Vec<String> = self
            .tree
            .keys()
            .filter(|k| *k == from || under(k, from))
            .cloned()
            .collect();
        for old in moving {
            let node = self.tree.remove(&old).unwrap();
            self.tree.insert(format!("{to}{}", &old[from.len()..]), node);
        }
        Ok(())
    }
}

/// The server tree both the model and the Vfs start from in "server" cases.
pub fn server_listing(source: &MapSource) -> (TreeListing, Model) {
    let files: [(&str, i64, &[u8]); 4] = [
        ("a", 1, b"server a\n"),
        ("b/a", 3, b"nested a, from the server\n"),
        ("b/c", 4, b"c"),
        ("c", 5, b""),
    ];
    let mut entries = vec![dir_entry("b", 2)];
    let mut model = Model::default();
    model.tree.insert("b".into(), MNode::Dir);
    for (path, id, bytes) in files {
        entries.push(file_entry(source, path, id, 1, bytes));
        let fid = model.new_file(bytes.to_vec());
        model.tree.insert(path.into(), MNode::File(fid));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    (tree_listing(7, entries), model)
}

/// Resolves `path`'s parent the way the kernel's path walk would.
pub fn vfs_parent(vfs: &Vfs, path: &str) -> Result<(Ino, String), i32> {
    let (parent, name) = match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path),
    };
    let mut ino = ROOT_INO;
    if !parent.is_empty() {
        for part in parent.split('/') {
            let attr = vfs.lookup(ino, part).map_err(|e| e.errno)?;
            if attr.kind != NodeKind::Dir {
                return Err(libc::ENOTDIR);
            }
            ino = attr.ino;
        }
    }
    Ok((ino, name.to_string()))
}

/// Looks `path` up the way the kernel's path walk would.
pub fn vfs_ino(vfs: &Vfs, path: &str) -> Result<Ino, i32> {
    let (parent, name) = vfs_parent(vfs, path)?;
    Ok(vfs.lookup(parent, &name).map_err(|e| e.errno)?.ino)
}

/// The whole tree as the Vfs shows it, every file read through a fresh open.
pub fn vfs_snapshot(vfs: &Vfs) -> BTreeMap<String, Seen> {
    pub fn walk(vfs: &Vfs, ino: Ino, prefix: &str, out: &mut BTreeMap<String, Seen>) {
        for entry in vfs.readdir(ino).unwrap() {
            let path = if prefix.is_empty() {
                entry.name.clone()
            } else {
                format!("{prefix}/{}", entry.name)
            };
            match entry.kind {
                NodeKind::Dir => {
                    out.insert(path.clone(), Seen::Dir);
                    walk(vfs, entry.ino, &path, out);
                }
                _ => {
                    let fh = vfs.open(entry.ino, RO).unwrap();
                    let bytes = read_all(vfs, fh);
                    vfs.release(fh).unwrap();
                    let size = vfs.getattr(entry.ino).unwrap().size;
                    assert_eq!(size, bytes.len() as u64, "size attribute of {path}");
                    out.insert(path, Seen::File(bytes));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(vfs, ROOT_INO, "", &mut out);
    out
}

pub fn show(tree: &BTreeMap<String, Seen>) -> Vec<String> {
    tree.iter()
        .map(|(p, s)| match s {
            Seen::Dir => format!("{p}/"),
            Seen::File(b) if b.len() > 40 => {
                format!("{p} ({} bytes, hash {})", b.len(), &BlobHash::of(b).as_str()[..8])
            }
            Seen::File(b) => format!("{p} {:?}", String::from_utf8_lossy(b)),
        })
        .collect()
}

pub fn check_tree(vfs: &Vfs, model: &Model, when: &str) -> Result<(), TestCaseError> {
    let got = vfs_snapshot(vfs);
    let want = model.snapshot();
    prop_assert!(
        got == want,
        "{when}: tree differs\n vfs:   {:?}\n model: {:?}",
        show(&got),
        show(&want)
    );
    Ok(())
}
