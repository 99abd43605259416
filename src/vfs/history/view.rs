//! The mount's tree and blob cache as the history view sees them: paths of
//! the project only (not the published `skills/` folder, not `.contextfs`),
//! and blobs through the same cache and fetch path as any clean file.
//!
//! Only the Vfs's public calls are used (and which inode shows the skills),
//! so the tree's internals can change without this file noticing.

use std::fs::File;
use std::sync::Arc;

use super::{ProjectView, ViewEntry, META_DIR};
use crate::api::NodeKind;
use crate::model::BlobHash;
use crate::vfs::{Ino, Vfs, VfsResult, ROOT_INO};

impl Vfs {
    /// The directory that shows the published skills in a project mount.
    fn skills_folder(&self) -> Option<Ino> {
        self.lock().skills_root.filter(|ino| *ino != ROOT_INO)
    }

    /// The inode at `path` ("" is the root), if it is part of the project.
    fn project_ino(&self, path: &str) -> Option<Ino> {
        let mut ino = ROOT_INO;
        if path.is_empty() {
            return Some(ino);
        }
        let skills = self.skills_folder();
        for (depth, name) in path.split('/').enumerate() {
            if depth == 0 && name == META_DIR {
                return None;
            }
            ino = self.lookup(ino, name).ok()?.ino;
            if Some(ino) == skills {
                return None;
            }
        }
        Some(ino)
    }
}

impl ProjectView for Vfs {
    fn entry(&self, path: &str) -> Option<ViewEntry> {
        let attr = self.getattr(self.project_ino(path)?).ok()?;
        Some(ViewEntry {
            kind: attr.kind,
            mtime: attr.mtime,
        })
    }

    fn children(&self, path: &str) -> Vec<(String, NodeKind)> {
        let Some(dir) = self.project_ino(path) else {
            return Vec::new();
        };
        let skills = self.skills_folder();
        self.readdir(dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| Some(e.ino) != skills && !(path.is_empty() && e.name == META_DIR))
            .map(|e| (e.name, e.kind))
            .collect()
    }

    fn open_blob(&self, hash: &BlobHash) -> VfsResult<Arc<File>> {
        Vfs::open_blob(self, hash)
    }
}
