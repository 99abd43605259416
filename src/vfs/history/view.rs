//! The mount's tree and blob cache as the history view sees them: paths of
//! the project only (not the published `skills/` folder, not `.contextfs`),
//! and blobs through the same cache and fetch path as any clean file.

use std::fs::File;
use std::sync::Arc;

use super::{ProjectView, ViewEntry, META_DIR};
use crate::model::BlobHash;
use crate::vfs::{Ino, State, Vfs, VfsResult, ROOT_INO};

impl Vfs {
    /// The inode at `path` ("" is the root), if it is part of the project.
    fn project_ino(st: &State, path: &str) -> Option<Ino> {
        let mut ino = ROOT_INO;
        if path.is_empty() {
            return Some(ino);
        }
        for (depth, name) in path.split('/').enumerate() {
            ino = *st.inodes.get(&ino)?.children.get(name)?;
            if Self::hidden_from_history(st, ino, depth == 0, name) {
                return None;
            }
        }
        Some(ino)
    }

    fn hidden_from_history(st: &State, ino: Ino, top: bool, name: &str) -> bool {
        (st.skills_root == Some(ino) && ino != ROOT_INO) || (top && name == META_DIR)
    }
}

impl ProjectView for Vfs {
    fn entry(&self, path: &str) -> Option<ViewEntry> {
        let st = self.lock();
        let inode = st.inodes.get(&Self::project_ino(&st, path)?)?;
        Some(ViewEntry {
            kind: inode.kind,
            mtime: inode.mtime,
        })
    }

    fn children(&self, path: &str) -> Vec<(String, ViewEntry)> {
        let st = self.lock();
        let Some(dir) = Self::project_ino(&st, path).and_then(|ino| st.inodes.get(&ino)) else {
            return Vec::new();
        };
        dir.children
            .iter()
            .filter(|(name, ino)| !Self::hidden_from_history(&st, **ino, path.is_empty(), name))
            .filter_map(|(name, ino)| {
                let child = st.inodes.get(ino)?;
                Some((
                    name.clone(),
                    ViewEntry {
                        kind: child.kind,
                        mtime: child.mtime,
                    },
                ))
            })
            .collect()
    }

    fn open_blob(&self, hash: &BlobHash) -> VfsResult<Arc<File>> {
        Vfs::open_blob(self, hash)
    }
}
