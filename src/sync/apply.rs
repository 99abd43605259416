//! Applying the project's change feed to a synced folder.
//!
//! The rule: a local file that changed since it was last synced is never
//! overwritten or deleted by news from the server. It keeps its bytes and
//! its old base version, so its next push merges three ways; only a rename
//! moves it (the bytes travel with it). News of this folder's own changes
//! (their versions are already in the state) is skipped.

use std::collections::BTreeSet;
use std::fs;
use std::io;

use super::folder::Folder;
use super::materialise::{Content, Expect, Placed};
use super::push::local_mode_of;
use super::state::{Entry, Stat};
use super::{FileOutcome, Outcome, SyncError, SyncResult};
use crate::api::{ChangeEvent, NodeKind};

/// Longest long-poll the daemon asks for.
pub const FEED_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

impl Folder {
    /// One-shot pull: applies every event after the state's cursor.
    pub async fn pull(&mut self) -> SyncResult<Vec<FileOutcome>> {
        let mut outcomes = Vec::new();
        loop {
            let page = self
                .client
                .changes(
                    &self.state.project.clone(),
                    self.state.cursor,
                    std::time::Duration::ZERO,
                )
                .await?;
            outcomes.extend(self.apply_events(&page.events).await?);
            self.state.cursor = self.state.cursor.max(page.cursor);
            self.save()?;
            if !page.more {
                break;
            }
        }
        Ok(outcomes)
    }

    /// Applies events in order, then saves the state. A transient failure
    /// (a download from a server that went away) stops before the failed
    /// event, so it is applied again later; the cursor covers only what was
    /// applied.
    pub async fn apply_events(&mut self, events: &[ChangeEvent]) -> SyncResult<Vec<FileOutcome>> {
        let mut outcomes = Vec::new();
        let mut removed_dirs = BTreeSet::new();
        for event in events {
            if event.seq <= self.state.cursor {
                continue;
            }
            let applied = if event.kind == NodeKind::Dir {
                self.apply_dir(event, &mut removed_dirs);
                Ok(None)
            } else {
                self.apply_file(event).await
            };
            match applied {
                Ok(Some(outcome)) => outcomes.push(outcome),
                Ok(None) => {}
                Err(e) if e.is_transient() => {
                    self.save()?;
                    self.note(&outcomes);
                    return Err(e);
                }
                Err(e) => outcomes.push(FileOutcome {
                    path: event.path.clone(),
                    outcome: Outcome::Failed(e.to_string()),
                }),
            }
            self.state.cursor = event.seq;
        }
        // Deepest first; a directory still holding local files stays.
        for dir in removed_dirs.iter().rev() {
            if fs::remove_dir(self.root.join(dir)).is_ok() {
                self.state.dirs.remove(dir);
            }
        }
        self.save()?;
        self.note(&outcomes);
        Ok(outcomes)
    }

    fn apply_dir(&mut self, event: &ChangeEvent, removed: &mut BTreeSet<String>) {
        let known = self.state.dir_of_node(event.node);
        if event.deleted {
            if let Some(path) = known {
                removed.insert(path);
            }
            return;
        }
        if self.rules.is_ignored(&event.path, true) {
            return;
        }
        let old = known.or_else(|| event.old_path.clone().filter(|p| self.state.dirs.contains_key(p)));
        if let Some(old) = old.filter(|old| *old != event.path) {
            let from = self.root.join(&old);
            let to = self.root.join(&event.path);
            if from.is_dir() && fs::symlink_metadata(&to).is_err() {
                if let Some(parent) = to.parent() {
                    let _ = fs::create_dir_all(parent);
                }
                if fs::rename(&from, &to).is_ok() {
                    self.state.move_subtree(&old, &event.path);
                    self.state.dirs.insert(event.path.clone(), event.node);
                    return;
                }
            }
            // Could not move it here (the target is taken): the files below
            // arrive as they are written; forget the old directory.
            self.state.dirs.remove(&old);
        }
        if fs::create_dir_all(self.root.join(&event.path)).is_ok() {
            self.state.dirs.insert(event.path.clone(), event.node);
        }
    }

    async fn apply_file(&mut self, event: &ChangeEvent) -> SyncResult<Option<FileOutcome>> {
        let symlink = event.kind == NodeKind::Symlink;
        let Some(path) = self.state.path_of_node(event.node) else {
            return self.apply_unknown(event).await;
        };
        let Some(entry) = self.state.files.get(&path).cloned() else {
            return Ok(None);
        };
        if event.version <= entry.version {
            return Ok(None);
        }
        let abs = self.root.join(&path);
        let local = local_stat(&abs);
        let unchanged = local == Some(entry.stat);
        if event.deleted {
            if unchanged {
                remove_file(&abs)?;
                self.state.files.remove(&path);
                return Ok(Some(FileOutcome {
                    path,
                    outcome: Outcome::Deleted,
                }));
            }
            if local.is_none() {
                self.state.files.remove(&path);
                return Ok(None);
            }
            // Edited here: kept; its push (based before the deletion) restores it.
            return Ok(kept(
                path,
                "deleted on the server but changed here: the next push restores it",
            ));
        }
        // A move: the local file follows its node, edited or not.
        let mut path = path;
        let mut moved_from = None;
        if event.path != path && !self.rules.is_ignored(&event.path, false) {
            let target = self.root.join(&event.path);
            if fs::symlink_metadata(&target).is_err() {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| SyncError::io(parent, e))?;
                }
                let moved = match local {
                    Some(_) => fs::rename(&abs, &target).is_ok(),
                    None => true,
                };
                if moved {
                    if let Some(entry) = self.state.files.remove(&path) {
                        self.state.files.insert(event.path.clone(), entry);
                    }
                    moved_from = Some(path.clone());
                    path = event.path.clone();
                }
            }
        }
        let abs = self.root.join(&path);
        let local = local_stat(&abs);
        let Some(entry) = self.state.files.get(&path).cloned() else {
            return Ok(None);
        };
        let outcome = |path: String| {
            Some(FileOutcome {
                path,
                outcome: match &moved_from {
                    Some(from) => Outcome::Moved(from.clone()),
                    None => Outcome::Updated,
                },
            })
        };
        if local != Some(entry.stat) {
            // Edited (or removed) here: its next push merges against the
            // old base, so the base stays.
            if moved_from.is_some() || local.is_none() {
                return Ok(moved_from.is_some().then(|| outcome(path)).flatten());
            }
            return Ok(kept(path, CHANGED_HERE));
        }
        if event.hash == entry.hash && event.mode == entry.mode {
            if let Some(e) = self.state.files.get_mut(&path) {
                e.version = event.version;
            }
            return Ok(moved_from.is_some().then(|| outcome(path)).flatten());
        }
        if event.hash == entry.hash && !symlink {
            // Only the mode changed.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&abs, fs::Permissions::from_mode(event.mode & 0o7777))
                .map_err(|e| SyncError::io(&abs, e))?;
            let stat = local_stat(&abs).unwrap_or(entry.stat);
            if let Some(e) = self.state.files.get_mut(&path) {
                e.version = event.version;
                e.mode = event.mode & 0o7777;
                e.stat = stat;
            }
            return Ok(outcome(path));
        }
        let placed = self
            .place(&path, event_content(event), Expect::Unchanged(entry.stat))
            .await?;
        match placed {
            Placed::Done { stat, .. } => {
                let mode = local_mode_of(&abs).unwrap_or(event.mode);
                self.state.files.insert(
                    path.clone(),
                    Entry {
                        node: event.node,
                        version: event.version,
                        hash: event.hash.clone(),
                        symlink,
                        mode,
                        stat,
                    },
                );
                Ok(outcome(path))
            }
            Placed::LocalChanged => Ok(kept(path, CHANGED_HERE)),
        }
    }

    /// News of a node this folder does not have: a new file, or one moved
    /// in from an ignored path.
    async fn apply_unknown(&mut self, event: &ChangeEvent) -> SyncResult<Option<FileOutcome>> {
        if event.deleted || self.rules.is_ignored(&event.path, false) {
            return Ok(None);
        }
        let symlink = event.kind == NodeKind::Symlink;
        let abs = self.root.join(&event.path);
        let local = local_stat(&abs);
        let expect = match (local, self.state.files.get(&event.path)) {
            (None, _) => Expect::Absent,
            // Another node of ours was here (replaced on the server): take
            // the new one if ours is unchanged.
            (Some(stat), Some(entry)) if stat == entry.stat => Expect::Unchanged(stat),
            (Some(stat), None) => {
                // A file made here with the same bytes: adopt it.
                let same = super::scan::hash_local(&abs, symlink).ok().as_ref() == Some(&event.hash);
                if same {
                    self.state.files.insert(
                        event.path.clone(),
                        Entry {
                            node: event.node,
                            version: event.version,
                            hash: event.hash.clone(),
                            symlink,
                            mode: local_mode_of(&abs).unwrap_or(event.mode),
                            stat,
                        },
                    );
                }
                // Other bytes: the push merges them (no base: a union).
                return Ok((!same).then(|| kept(event.path.clone(), CREATED_HERE)).flatten());
            }
            (Some(_), Some(_)) => return Ok(kept(event.path.clone(), CHANGED_HERE)),
        };
        let placed = self.place(&event.path, event_content(event), expect).await?;
        match placed {
            Placed::Done { stat, .. } => {
                self.state.files.insert(
                    event.path.clone(),
                    Entry {
                        node: event.node,
                        version: event.version,
                        hash: event.hash.clone(),
                        symlink,
                        mode: local_mode_of(&abs).unwrap_or(event.mode),
                        stat,
                    },
                );
                Ok(Some(FileOutcome {
                    path: event.path.clone(),
                    outcome: Outcome::Updated,
                }))
            }
            Placed::LocalChanged => Ok(kept(event.path.clone(), CHANGED_HERE)),
        }
    }
}

const CHANGED_HERE: &str = "changed on the server and here: the next push merges both";
const CREATED_HERE: &str = "created on the server and here: the next push merges both";

fn kept(path: String, why: &str) -> Option<FileOutcome> {
    Some(FileOutcome {
        path,
        outcome: Outcome::Kept(why.to_string()),
    })
}

fn event_content(event: &ChangeEvent) -> Content {
    Content::new(
        &event.hash,
        event.mode,
        Some(event.mtime.as_deref().unwrap_or(&event.at)),
        event.kind,
    )
}

fn local_stat(abs: &std::path::Path) -> Option<Stat> {
    fs::symlink_metadata(abs).ok().map(|m| Stat::of(&m))
}

fn remove_file(abs: &std::path::Path) -> SyncResult<()> {
    match fs::remove_file(abs) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SyncError::io(abs, e)),
    }
}
