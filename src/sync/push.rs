//! Sending local changes: every commit names the node and base version the
//! local bytes were edited from, so the server merges three ways; moves use
//! the rename route so the node and its history follow the file; deletions
//! carry their base, so a file edited elsewhere meanwhile is not deleted but
//! comes back. When the server answers with other bytes than the ones sent
//! (a merge), they are written back, but only into a file that did not
//! change again since it was read.

use std::fs;

use base64::Engine;

use super::folder::Folder;
use super::materialise::{Content, Expect, Placed};
use super::scan::{self, Change, LocalFile};
use super::state::{Entry, Refused};
use super::{FileOutcome, Outcome, SyncError, SyncResult};
use crate::api::Limits;
use crate::api::{
    CommitRequest, DeleteRequest, ErrorCode, MkdirRequest, NodeKind, RenameRequest, VersionInfo, MAX_INLINE_CONTENT,
};
use crate::client::{ClientError, UploadError};
use crate::model::{format_file_time, BlobHash, WsPath};

/// What one push round did.
#[derive(Debug, Default)]
pub struct PushReport {
    pub outcomes: Vec<FileOutcome>,
    /// Files still being written while hashed: the next round takes them.
    pub unsettled: Vec<String>,
    /// Set when the server could not be reached (or failed): the rest waits.
    pub interrupted: Option<SyncError>,
}

impl Folder {
    /// One round: scan, diff against the state, send every change. Stops at
    /// the first transient failure (server down), keeping the rest pending.
    pub async fn push(&mut self) -> SyncResult<PushReport> {
        let scan = self.scan()?;
        let diff = scan::diff(&self.root, &self.state, &scan);
        let mut report = PushReport {
            unsettled: diff.unsettled,
            ..Default::default()
        };
        let mut changes = diff.changes;
        // Parents before children, then moves, writes, deletions, and
        // directories removed last (deepest first, as diff lists them).
        changes.sort_by_key(|c| match c {
            Change::Restat { .. } => 0,
            Change::Mkdir { .. } => 1,
            Change::Move { .. } => 2,
            Change::Write { .. } => 3,
            Change::Delete { .. } => 4,
            Change::Rmdir { .. } => 5,
        });
        let total = changes.len();
        self.pending.clear();
        for (done, change) in changes.into_iter().enumerate() {
            let path = change_path(&change).to_string();
            match self.send(change).await {
                Ok(Some(outcome)) => report.outcomes.push(outcome),
                Ok(None) => {}
                Err(e) if is_transient(&e) => {
                    tracing::info!(error = %e, left = total - done, "server unavailable; changes wait");
                    self.pending.insert(path, e.to_string());
                    report.interrupted = Some(e);
                    // It may come back with other limits.
                    self.limits = None;
                    break;
                }
                Err(e) => report.outcomes.push(FileOutcome {
                    path,
                    outcome: Outcome::Failed(e.to_string()),
                }),
            }
        }
        if report.interrupted.is_some() {
            // Whatever the round did not reach is still pending.
            if let Ok(scan) = self.scan() {
                for change in scan::diff(&self.root, &self.state, &scan).changes {
                    if !matches!(change, Change::Restat { .. }) {
                        self.pending
                            .entry(change_path(&change).to_string())
                            .or_insert_with(|| "waiting for the server".into());
                    }
                }
            }
        }
        for path in &report.unsettled {
            self.pending.insert(path.clone(), "still being written".into());
        }
        self.save()?;
        self.note(&report.outcomes);
        Ok(report)
    }

    async fn send(&mut self, change: Change) -> SyncResult<Option<FileOutcome>> {
        match change {
            Change::Restat { path, stat } => {
                if let Some(entry) = self.state.files.get_mut(&path) {
                    entry.stat = stat;
                }
                Ok(None)
            }
            Change::Mkdir { path } => self.send_mkdir(path).await,
            Change::Rmdir { path, node } => self.send_rmdir(path, node).await,
            Change::Write {
                path,
                base,
                hash,
                file,
                mode_changed,
            } => self.send_write(path, base, hash, file, mode_changed).await,
            Change::Move {
                from,
                to,
                node,
                version,
                file,
            } => self.send_move(from, to, node, version, file).await,
            Change::Delete { path, node, version } => self.send_delete(path, node, version).await,
        }
    }

    async fn send_mkdir(&mut self, path: String) -> SyncResult<Option<FileOutcome>> {
        let request = MkdirRequest {
            path: ws_path(&path)?,
            mode: None,
            agent_id: self.agent_id.clone(),
            message: None,
        };
        match self.client.mkdir(self.project(), &request).await {
            Ok(version) => {
                self.state.dirs.insert(path, version.node);
                Ok(None)
            }
            Err(e) if is_permanent(&e) => Ok(Some(self.refuse_dir(path, &e))),
            Err(e) => Err(e.into()),
        }
    }

    fn refuse_dir(&mut self, path: String, e: &ClientError) -> FileOutcome {
        FileOutcome {
            path,
            outcome: Outcome::Skipped(reason(e)),
        }
    }

    async fn send_rmdir(&mut self, path: String, node: i64) -> SyncResult<Option<FileOutcome>> {
        let request = DeleteRequest {
            path: ws_path(&path)?,
            base_version: None,
            recursive: false,
            agent_id: self.agent_id.clone(),
            message: None,
            node: Some(node),
        };
        match self.client.delete(self.project(), &request).await {
            Ok(_) => {
                self.state.dirs.remove(&path);
                Ok(Some(FileOutcome {
                    path,
                    outcome: Outcome::Deleted,
                }))
            }
            // Gone already, replaced, or still holding files this folder
            // does not have (ignored here): forget it either way.
            Err(e) if is_permanent(&e) => {
                self.state.dirs.remove(&path);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn send_write(
        &mut self,
        path: String,
        base: Option<(i64, i64)>,
        hash: BlobHash,
        file: LocalFile,
        mode_changed: bool,
    ) -> SyncResult<Option<FileOutcome>> {
        let abs = self.root.join(&path);
        let inline = if file.symlink {
            let target = fs::read_link(&abs).map_err(|e| SyncError::io(&abs, e))?;
            use std::os::unix::ffi::OsStrExt;
            Some(target.as_os_str().as_bytes().to_vec())
        } else if file.stat.size as usize <= MAX_INLINE_CONTENT {
            match fs::read(&abs) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(SyncError::io(&abs, e)),
            }
        } else {
            None
        };
        if let Some(bytes) = &inline {
            if BlobHash::of(bytes) != hash {
                // Written again since it was hashed: the next round sends it.
                return Ok(None);
            }
        } else {
            let limits = self.upload_limits().await;
            match self
                .client
                .upload_file_within(self.project(), &hash, &abs, limits.as_ref())
                .await
            {
                Ok(_) => {}
                // Written again since it was hashed (or gone): the next round sends it.
                Err(UploadError::Changed { .. }) => return Ok(None),
                Err(UploadError::Local { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(None)
                }
                Err(UploadError::Local { path, source }) => return Err(SyncError::io(path, source)),
                Err(e @ UploadError::TooLarge { .. }) => {
                    let why = format!("larger than the server accepts: {e}");
                    return Ok(Some(self.refuse_because(path, &file, why)));
                }
                Err(UploadError::Server(e)) if is_permanent(&e) => return Ok(Some(self.refuse(path, &file, &e))),
                Err(UploadError::Server(e)) => return Err(e.into()),
            }
        }
        let base_version = base.map(|(_, v)| v).filter(|v| *v > 0);
        let request = CommitRequest {
            path: ws_path(&path)?,
            base_version,
            hash: hash.clone(),
            kind: Some(if file.symlink {
                NodeKind::Symlink
            } else {
                NodeKind::File
            }),
            mode: (mode_changed && !file.symlink).then_some(file.mode),
            agent_id: self.agent_id.clone(),
            message: None,
            idempotency_key: Some(self.commit_key(&path, base, &hash, file.mode)),
            node: base.map(|(node, _)| node),
            content_base64: inline.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            mtime: (!file.symlink).then(|| format_file_time(file.stat.mtime_ns)),
            atime: None,
        };
        match self.client.commit(self.project(), &request).await {
            Ok(version) => {
                self.state.refused.remove(&path);
                let outcome = self.adopt(&path, &version, &hash, &file, base).await?;
                Ok(Some(FileOutcome { path, outcome }))
            }
            Err(e) if base.is_some() && e.has_code(ErrorCode::NodeMismatch) => {
                // Another node took the path (or ours moved away on the
                // server): keep these bytes as a file of their own.
                self.state.files.remove(&path);
                Box::pin(self.send_write(path, None, hash, file, true)).await
            }
            Err(e) if e.has_code(ErrorCode::BlobMissing) || e.has_code(ErrorCode::HashMismatch) => Ok(None),
            Err(e) if is_permanent(&e) => Ok(Some(self.refuse(path, &file, &e))),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a refusal so the file is not sent again until it changes.
    fn refuse(&mut self, path: String, file: &LocalFile, e: &ClientError) -> FileOutcome {
        self.refuse_because(path, file, reason(e))
    }

    fn refuse_because(&mut self, path: String, file: &LocalFile, why: String) -> FileOutcome {
        self.state.refused.insert(
            path.clone(),
            Refused {
                reason: why.clone(),
                stat: file.stat,
            },
        );
        self.skipped.insert(path.clone(), why.clone());
        FileOutcome {
            path,
            outcome: Outcome::Skipped(why),
        }
    }

    /// The server's limits, asked once (and again after it was unreachable);
    /// `None` when it does not say or cannot be asked now.
    async fn upload_limits(&mut self) -> Option<Limits> {
        if self.limits.is_none() {
            match self.client.health().await {
                Ok(health) => self.limits = Some(health.limits),
                Err(e) => tracing::debug!(error = %e, "cannot ask the server for its limits"),
            }
        }
        self.limits.flatten()
    }

    /// Stable for one logical commit (this folder, path, base, bytes, mode),
    /// so a retry after a lost answer never writes a second version.
    fn commit_key(&self, path: &str, base: Option<(i64, i64)>, hash: &BlobHash, mode: u32) -> String {
        let what = format!("{}|{path}|{base:?}|{hash}|{mode}", self.state.folder_id);
        let digest = blake3::hash(what.as_bytes()).to_hex();
        format!("sync-{}", &digest[..40])
    }

    /// Takes the server's answer for the bytes read from `path`: records the
    /// new version, and when the server holds other bytes (a merge, or the
    /// change was already there), writes them into the file — only if it did
    /// not change since it was read. If it did, the state keeps the old base
    /// so the next commit merges against the right ancestor.
    async fn adopt(
        &mut self,
        path: &str,
        version: &VersionInfo,
        sent: &BlobHash,
        file: &LocalFile,
        base: Option<(i64, i64)>,
    ) -> SyncResult<Outcome> {
        let outcome = Outcome::from_status(version.status);
        if &version.hash == sent {
            self.state.files.insert(
                path.to_string(),
                Entry {
                    node: version.node,
                    version: version.version,
                    hash: version.hash.clone(),
                    symlink: file.symlink,
                    mode: file.mode,
                    stat: file.stat,
                },
            );
            return Ok(outcome);
        }
        let placed = self
            .place(path, version_content(version), Expect::Unchanged(file.stat))
            .await?;
        match placed {
            Placed::Done { stat, .. } => {
                let mode = local_mode_of(&self.root.join(path)).unwrap_or(version.mode);
                self.state.files.insert(
                    path.to_string(),
                    Entry {
                        node: version.node,
                        version: version.version,
                        hash: version.hash.clone(),
                        symlink: version.kind == NodeKind::Symlink,
                        mode,
                        stat,
                    },
                );
            }
            Placed::LocalChanged => {
                let previous = self.state.files.get(path).cloned();
                let (old_version, old_hash) = match (&previous, base) {
                    (Some(entry), Some(_)) => (entry.version, entry.hash.clone()),
                    _ => (0, BlobHash::of(b"")),
                };
                self.state.files.insert(
                    path.to_string(),
                    Entry {
                        node: version.node,
                        version: old_version,
                        hash: old_hash,
                        symlink: file.symlink,
                        mode: file.mode,
                        stat: previous.map(|e| e.stat).unwrap_or_default(),
                    },
                );
            }
        }
        Ok(outcome)
    }

    async fn send_move(
        &mut self,
        from: String,
        to: String,
        node: i64,
        version: i64,
        file: LocalFile,
    ) -> SyncResult<Option<FileOutcome>> {
        let request = RenameRequest {
            from: ws_path(&from)?,
            to: ws_path(&to)?,
            replace: false,
            base_version: None,
            agent_id: self.agent_id.clone(),
            message: None,
            node: Some(node),
        };
        match self.client.rename(self.project(), &request).await {
            Ok(moved) => {
                let Some(mut entry) = self.state.files.remove(&from) else {
                    return Ok(None);
                };
                entry.stat = file.stat;
                entry.mode = file.mode;
                if moved.hash == entry.hash {
                    entry.version = moved.version;
                    self.state.files.insert(to.clone(), entry);
                } else {
                    // Edited elsewhere before the move: bring those bytes.
                    let sent = entry.hash.clone();
                    self.state.files.insert(to.clone(), entry);
                    self.adopt(&to, &moved, &sent, &file, Some((node, version))).await?;
                }
                Ok(Some(FileOutcome {
                    path: to,
                    outcome: Outcome::Moved(from),
                }))
            }
            Err(e) if !is_permanent(&e) => Err(e.into()),
            Err(e) => {
                // The node moved or went away on the server too (renamed
                // differently elsewhere): keep both names — this one as a
                // file of its own — and let the old path's deletion follow
                // its base-version rule.
                tracing::info!(%from, %to, error = %e, "move refused; sending it as a new file");
                let hash = scan::hash_local(&self.root.join(&to), file.symlink).map_err(|e| SyncError::io(&to, e))?;
                let deleted = self.send_delete(from, node, version).await?;
                let written = self.send_write(to, None, hash, file, true).await?;
                Ok(written.or(deleted))
            }
        }
    }

    async fn send_delete(&mut self, path: String, node: i64, version: i64) -> SyncResult<Option<FileOutcome>> {
        let request = DeleteRequest {
            path: ws_path(&path)?,
            base_version: (version > 0).then_some(version),
            recursive: false,
            agent_id: self.agent_id.clone(),
            message: None,
            node: Some(node),
        };
        match self.client.delete(self.project(), &request).await {
            Ok(_) => {
                self.state.files.remove(&path);
                Ok(Some(FileOutcome {
                    path,
                    outcome: Outcome::Deleted,
                }))
            }
            Err(ClientError::Api {
                code: ErrorCode::BaseVersionStale,
                head: Some(head),
                ..
            }) => {
                // Someone edited it since this folder's version: it stays,
                // and comes back here.
                self.state.files.remove(&path);
                self.restore(&head).await?;
                Ok(Some(FileOutcome {
                    path: head.path.clone(),
                    outcome: Outcome::Restored,
                }))
            }
            Err(e) if !is_permanent(&e) => Err(e.into()),
            // Already gone, or another node lives there now: nothing of
            // ours to delete.
            Err(_) => {
                self.state.files.remove(&path);
                Ok(None)
            }
        }
    }

    /// Writes a server version into the folder where nothing is (a deletion
    /// that lost to an edit made elsewhere).
    async fn restore(&mut self, head: &VersionInfo) -> SyncResult<()> {
        if head.deleted || head.kind == NodeKind::Dir || self.rules.is_ignored(&head.path, false) {
            return Ok(());
        }
        let placed = self.place(&head.path, version_content(head), Expect::Absent).await?;
        if let Placed::Done { stat, .. } = placed {
            let mode = local_mode_of(&self.root.join(&head.path)).unwrap_or(head.mode);
            self.state.files.insert(
                head.path.clone(),
                Entry {
                    node: head.node,
                    version: head.version,
                    hash: head.hash.clone(),
                    symlink: head.kind == NodeKind::Symlink,
                    mode,
                    stat,
                },
            );
        }
        Ok(())
    }
}

fn version_content(version: &VersionInfo) -> Content {
    Content::new(&version.hash, version.mode, Some(version.modified_at()), version.kind)
}

fn change_path(change: &Change) -> &str {
    match change {
        Change::Write { path, .. }
        | Change::Delete { path, .. }
        | Change::Mkdir { path }
        | Change::Rmdir { path, .. }
        | Change::Restat { path, .. } => path,
        Change::Move { to, .. } => to,
    }
}

pub(crate) fn local_mode_of(abs: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(abs).ok()?;
    Some(if meta.file_type().is_symlink() {
        0o777
    } else {
        meta.mode() & 0o7777
    })
}

fn ws_path(path: &str) -> SyncResult<WsPath> {
    WsPath::parse(path).map_err(|e| SyncError::BadState {
        path: path.into(),
        detail: e.to_string(),
    })
}

/// A refusal of this request for good. The server being unreachable or
/// failing, or refusing the token (fixed by the user, then retried), is not.
pub(crate) fn is_permanent(e: &ClientError) -> bool {
    !e.is_transient() && !matches!(e.status().map(|s| s.as_u16()), Some(401 | 403))
}

fn is_transient(e: &SyncError) -> bool {
    match e {
        SyncError::Client(c) => !is_permanent(c),
        other => other.is_transient(),
    }
}

/// The user-facing reason for a refusal.
fn reason(e: &ClientError) -> String {
    match e {
        ClientError::Api {
            code: ErrorCode::TooLarge,
            message,
            ..
        } => format!("larger than the server accepts: {message}"),
        ClientError::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
