//! One synced folder: its state, lock, ignore rules, client and blob cache,
//! and the rounds every command is made of — checkout (provision), push
//! (collect and send local changes), pull (apply the change feed).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinSet;

use super::ignore::IgnoreRules;
use super::materialise::{Content, Expect, Materialiser, Placed, Placement};
use super::scan::{self, Scan};
use super::state::{Entry, FolderLock, SyncState};
use super::{FileOutcome, Outcome, SyncError, SyncResult};
use crate::api::{NodeKind, TreeEntry};
use crate::cache::BlobCache;
use crate::client::Client;

/// Downloads running at once during a checkout.
const PARALLEL_DOWNLOADS: usize = 16;
/// Outcomes kept for `sync status`.
const RECENT_OUTCOMES: usize = 200;

#[derive(Debug, Clone)]
pub struct FolderConfig {
    pub root: PathBuf,
    pub server: String,
    pub project: String,
    pub token: Option<String>,
    pub agent_id: Option<String>,
    pub cache_dir: PathBuf,
    pub cache_size: u64,
}

pub struct Folder {
    pub root: PathBuf,
    pub state: SyncState,
    pub client: Client,
    pub rules: IgnoreRules,
    pub materialiser: Materialiser,
    pub agent_id: Option<String>,
    /// Paths the last scan could not sync, with why.
    pub skipped: BTreeMap<String, String>,
    /// Local changes not on the server yet (the last round failed on them).
    pub pending: BTreeMap<String, String>,
    pub recent: VecDeque<FileOutcome>,
    /// What the server accepts (`GET /health`), once asked: how large files
    /// are uploaded (by chunks); asked again after the server was away.
    pub limits: Option<Option<crate::api::Limits>>,
    _lock: FolderLock,
}

impl Folder {
    /// Opens (and locks) a synced folder. With `create`, a folder that was
    /// never synced gets a fresh state for `config.project`; without it,
    /// such a folder is an error.
    pub fn open(config: &FolderConfig, create: bool) -> SyncResult<Self> {
        std::fs::create_dir_all(&config.root).map_err(|e| SyncError::io(&config.root, e))?;
        let root = config.root.canonicalize().map_err(|e| SyncError::io(&config.root, e))?;
        let lock = FolderLock::take(&root)?;
        // Staged downloads of a process that died: nobody else uses them.
        let _ = std::fs::remove_dir_all(SyncState::dir(&root).join("tmp"));
        let state = if SyncState::exists(&root) || !create {
            let state = SyncState::load(&root)?;
            if !config.project.is_empty() && state.project != config.project {
                return Err(SyncError::OtherProject {
                    path: root,
                    synced: state.project,
                    server: state.server,
                    wanted: config.project.clone(),
                });
            }
            state
        } else {
            SyncState::new(&config.server, &config.project)
        };
        let client = Client::new(&config.server, config.token.clone())?;
        let cache = Arc::new(BlobCache::open(&config.cache_dir, config.cache_size)?);
        let materialiser = Materialiser {
            cache,
            client: client.clone(),
            project: state.project.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        Ok(Folder {
            rules: IgnoreRules::load(&root),
            root,
            state,
            client,
            materialiser,
            agent_id: config.agent_id.clone(),
            skipped: BTreeMap::new(),
            pending: BTreeMap::new(),
            recent: VecDeque::new(),
            limits: None,
            _lock: lock,
        })
    }

    pub fn project(&self) -> &str {
        &self.state.project
    }

    pub fn save(&self) -> SyncResult<()> {
        self.state.save(&self.root)
    }

    pub fn note(&mut self, outcomes: &[FileOutcome]) {
        for outcome in outcomes {
            self.recent.push_back(outcome.clone());
            if self.recent.len() > RECENT_OUTCOMES {
                self.recent.pop_front();
            }
        }
    }

    pub fn count_placement(&mut self, how: Placement) {
        match how {
            Placement::Clone => self.state.clones += 1,
            Placement::Copy => self.state.copies += 1,
            Placement::Symlink => {}
        }
    }

    /// Walks the folder (stat only).
    pub fn scan(&mut self) -> SyncResult<Scan> {
        self.rules = IgnoreRules::load(&self.root);
        let scan = scan::scan_folder(&self.root, &self.rules).map_err(|e| SyncError::io(&self.root, e))?;
        self.skipped = scan.skipped.iter().cloned().collect();
        for (path, refused) in &self.state.refused {
            self.skipped.insert(path.clone(), refused.reason.clone());
        }
        Ok(scan)
    }

    /// Provision: downloads every file of the project this folder lacks, in
    /// parallel, with a progress bar on a terminal. Files already here with
    /// the right bytes are adopted, not downloaded; a local file with other
    /// bytes is left for the next push to merge. Paths and nodes the state
    /// already knows are left to pull and push (a known file that is absent
    /// was deleted here). The `first` checkout of a folder also takes the
    /// listing's cursor; a later one (after a pull: whatever is missing, such
    /// as a download that failed) leaves the cursor to the pull.
    pub async fn checkout(&mut self, progress: bool, first: bool) -> SyncResult<Vec<FileOutcome>> {
        let listing = self.client.tree(&self.state.project.clone(), None, true).await?;
        let mut outcomes = Vec::new();
        let mut to_fetch: Vec<TreeEntry> = Vec::new();
        let known_nodes: std::collections::HashSet<i64> = self.state.files.values().map(|e| e.node).collect();
        for entry in listing.entries {
            if self.rules.is_ignored(&entry.path, entry.kind == NodeKind::Dir) {
                continue;
            }
            match entry.kind {
                NodeKind::Dir if self.state.dirs.contains_key(&entry.path) => {}
                NodeKind::File | NodeKind::Symlink
                    if self.state.files.contains_key(&entry.path) || known_nodes.contains(&entry.id) => {}
                NodeKind::Dir => {
                    let abs = self.root.join(&entry.path);
                    if std::fs::create_dir_all(&abs).is_ok() {
                        self.state.dirs.insert(entry.path.clone(), entry.id);
                    }
                }
                NodeKind::File | NodeKind::Symlink => {
                    if !self.adopt_if_present(&entry) {
                        to_fetch.push(entry);
                    }
                }
            }
        }
        let bar = progress_bar(progress, to_fetch.len() as u64);
        let mut running = JoinSet::new();
        let mut queue = to_fetch.into_iter();
        loop {
            while running.len() < PARALLEL_DOWNLOADS {
                let Some(entry) = queue.next() else { break };
                let materialiser = self.materialiser.clone();
                let root = self.root.clone();
                running.spawn_blocking(move || {
                    let content = Content::new(&entry.hash, entry.mode, Some(&entry.modified_at), entry.kind);
                    let placed = materialiser.place(&root, &entry.path, &content, Expect::Absent);
                    (entry, placed)
                });
            }
            let Some(done) = running.join_next().await else { break };
            let (entry, placed) = done.map_err(|e| SyncError::Watch(format!("a download task failed: {e}")))?;
            if let Some(bar) = &bar {
                bar.inc(1);
            }
            match placed {
                Ok(Placed::Done { stat, how }) => {
                    self.count_placement(how);
                    self.state.files.insert(
                        entry.path.clone(),
                        Entry {
                            node: entry.id,
                            version: entry.version,
                            hash: entry.hash.clone(),
                            symlink: entry.kind == NodeKind::Symlink,
                            mode: local_mode(&self.root.join(&entry.path), entry.mode),
                            stat,
                        },
                    );
                    outcomes.push(FileOutcome {
                        path: entry.path,
                        outcome: Outcome::Updated,
                    });
                }
                // Appeared locally meanwhile: the next push merges it.
                Ok(Placed::LocalChanged) => {}
                Err(e) if e.is_transient() => {
                    // Not saved: the next start checks out again, adopting
                    // (by hash, without a download) what is already here.
                    running.abort_all();
                    return Err(e);
                }
                Err(e) => outcomes.push(FileOutcome {
                    path: entry.path,
                    outcome: Outcome::Failed(e.to_string()),
                }),
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        // Events after the listing's cursor are news; older ones are in it.
        if first && self.state.cursor < listing.cursor {
            self.state.cursor = listing.cursor;
        }
        self.save()?;
        self.note(&outcomes);
        Ok(outcomes)
    }

    /// A tree entry whose bytes are already at its path (a restart, or a
    /// folder seeded by hand): recorded without a download.
    fn adopt_if_present(&mut self, entry: &TreeEntry) -> bool {
        let abs = self.root.join(&entry.path);
        let Ok(meta) = std::fs::symlink_metadata(&abs) else {
            return false;
        };
        let symlink = meta.file_type().is_symlink();
        if symlink != (entry.kind == NodeKind::Symlink) {
            return true;
        }
        if scan::hash_local(&abs, symlink).ok().as_ref() == Some(&entry.hash) {
            use std::os::unix::fs::MetadataExt;
            self.state.files.insert(
                entry.path.clone(),
                Entry {
                    node: entry.id,
                    version: entry.version,
                    hash: entry.hash.clone(),
                    symlink,
                    mode: if symlink { 0o777 } else { meta.mode() & 0o7777 },
                    stat: super::state::Stat::of(&meta),
                },
            );
        }
        // Present with other bytes: left for the push to merge.
        true
    }

    /// Places `hash` at `rel` from a blocking thread, if the target is as
    /// expected. Counts how it was placed.
    pub async fn place(&mut self, rel: &str, content: Content, expect: Expect) -> SyncResult<Placed> {
        let materialiser = self.materialiser.clone();
        let root = self.root.clone();
        let rel_owned = rel.to_string();
        let placed = tokio::task::spawn_blocking(move || materialiser.place(&root, &rel_owned, &content, expect))
            .await
            .map_err(|e| SyncError::Watch(format!("a download task failed: {e}")))??;
        if let Placed::Done { how, .. } = &placed {
            self.count_placement(*how);
        }
        Ok(placed)
    }
}

/// The mode a placed file has here (the server's, as set by the placement).
fn local_mode(abs: &Path, fallback: u32) -> u32 {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(abs) {
        Ok(meta) if meta.file_type().is_symlink() => 0o777,
        Ok(meta) => meta.mode() & 0o7777,
        Err(_) => fallback,
    }
}

fn progress_bar(wanted: bool, total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !wanted || total == 0 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} files ({eta})") {
        bar.set_style(style);
    }
    bar.set_message("downloading");
    Some(bar)
}
