//! Retention pruning and blob garbage collection (`contextfs gc`,
//! `POST /api/v1/gc`, `serve --gc-interval`).
//!
//! One run first prunes every project's versions under its retention policy
//! (or the server default), then sweeps blob storage:
//!
//! 1. read which blobs versions and skills refer to and which blobs a
//!    project uploaded within the grace period, then list storage (a failed
//!    listing stops the run: nothing is deleted on a partial view);
//! 2. a blob is a candidate when nothing refers to it, no project uploaded it
//!    within the grace period, and storage shows no write within it either;
//! 3. the metadata store *releases* the candidates in one transaction (it
//!    forgets the projects' upload records of each one nothing holds, seeing
//!    every commit that landed before);
//! 4. right before deleting a released blob the run asks once more whether
//!    anything holds it, and storage deletes it only if nobody uploaded it
//!    again since the cutoff.
//!
//! Chunked blobs (`crate::chunks`) have no object of their own: their hash
//! is held like any blob's, and while it is, the chunks of its manifest
//! count as referenced (chunks of a hash only in its grace period count as
//! in grace). A manifest whose hash nothing holds is dropped first, in the
//! store's transaction; its chunks then go like any unreferenced blob, unless
//! another manifest still lists them (the store checks that when releasing).
//!
//! So a blob uploaded for a commit that has not landed yet is never removed
//! while the commit follows its upload within the grace period (clients
//! upload right before committing). Referenced blobs that are missing or
//! have the wrong size, and objects whose names are not hashes, are
//! reported and never deleted.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::api::{CorruptBlob, GcReport, ProjectPruned, RetentionPolicy};
use crate::model::BlobHash;
use crate::server::blobs::{BlobError, Deletion};
use crate::server::store::{format_time, now_millis, StoreError, WriteMeta};
use crate::server::Service;

/// How many deleted hashes a report lists.
const LISTED_DELETIONS: usize = 1000;
/// Manifests read per store call.
const MANIFESTS_PER_READ: usize = 500;

/// Operations settings of `contextfs serve`.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// A blob stays this long after its last upload even when nothing refers to it.
    pub gc_grace: Duration,
    /// Run GC this often (`None`: only when asked).
    pub gc_interval: Option<Duration>,
    /// The retention policy of projects without one of their own.
    pub default_retention: Option<RetentionPolicy>,
    /// Serve `/metrics` on this address instead of the main listener's loopback.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            gc_grace: Duration::from_secs(3600),
            gc_interval: None,
            default_retention: None,
            metrics_listen: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("garbage collection stopped, nothing more was deleted: {0}")]
    Store(#[from] StoreError),
    #[error("garbage collection stopped, nothing more was deleted: {0}")]
    Blobs(#[from] BlobError),
}

impl From<GcError> for crate::server::error::ApiError {
    fn from(e: GcError) -> Self {
        match e {
            GcError::Store(e) => e.into(),
            GcError::Blobs(e) => e.into(),
        }
    }
}

fn millis_to_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// One GC run: prune, then sweep. Runs of one server take turns.
pub async fn run(service: &Service, dry_run: bool, actor: &str) -> Result<GcReport, GcError> {
    let _one_at_a_time = service.gc_lock.lock().await;
    let started = now_millis();
    let grace = service.ops.gc_grace;
    let mut report = GcReport {
        dry_run,
        started_at: format_time(started),
        grace_seconds: grace.as_secs(),
        ..GcReport::default()
    };
    prune(service, dry_run, actor, started, &mut report).await?;
    sweep(service, dry_run, started - grace.as_millis() as i64, &mut report).await?;
    service.metrics.gc_finished(&report);
    tracing::info!(
        dry_run,
        versions_pruned = report.versions_pruned,
        blobs_deleted = report.blobs_deleted,
        bytes_freed = report.bytes_freed,
        missing = report.missing.len(),
        corrupt = report.corrupt.len(),
        "garbage collection finished"
    );
    if report.has_damage() {
        tracing::error!(
            missing = ?report.missing.iter().take(10).collect::<Vec<_>>(),
            corrupt = report.corrupt.len(),
            "blob storage has lost or damaged blobs that versions refer to"
        );
    }
    Ok(report)
}

async fn prune(service: &Service, dry_run: bool, actor: &str, now: i64, report: &mut GcReport) -> Result<(), GcError> {
    for project in service.store.projects().await? {
        let policy = match service.store.retention(project.id).await? {
            Some(own) => own,
            None => match service.ops.default_retention {
                Some(default) => default,
                None => continue,
            },
        };
        if policy.is_empty() {
            continue;
        }
        let meta = WriteMeta {
            author: actor.to_string(),
            agent_id: None,
            message: None,
            now,
        };
        let versions = service.store.prune_versions(project.id, policy, dry_run, meta).await?;
        if versions > 0 {
            report.versions_pruned += versions;
            report.pruned.push(ProjectPruned {
                project: project.name,
                policy,
                versions,
            });
        }
    }
    Ok(())
}

async fn sweep(service: &Service, dry_run: bool, cutoff_ms: i64, report: &mut GcReport) -> Result<(), GcError> {
    let cutoff = millis_to_time(cutoff_ms);
    // References before the listing: a version's blob exists before the
    // version does, so a referenced blob the listing lacks is really gone
    // (listing first would call a blob committed in between missing).
    let mut referenced: HashMap<BlobHash, u64> = HashMap::new();
    for (hash, size) in service.store.blob_references().await? {
        let entry = referenced.entry(hash).or_insert(size);
        *entry = (*entry).max(size);
    }
    let mut used: HashSet<BlobHash> = service.store.blobs_used_since(cutoff_ms).await?.into_iter().collect();
    let dead_manifests = hold_chunks_of_live_manifests(service, &mut referenced, &mut used).await?;
    let stored = service.blobs.list().await?;
    let mut seen = HashSet::new();
    let mut candidates: Vec<(BlobHash, u64)> = Vec::new();
    for blob in stored {
        report.blobs_scanned += 1;
        report.bytes_scanned += blob.size;
        let Some(hash) = blob.hash else {
            report.unrecognised.push(blob.name);
            continue;
        };
        seen.insert(hash.clone());
        if let Some(&expected) = referenced.get(&hash) {
            report.blobs_referenced += 1;
            if expected != blob.size {
                report.corrupt.push(CorruptBlob {
                    hash,
                    expected_size: expected,
                    stored_size: blob.size,
                });
            }
        } else if used.contains(&hash) || blob.modified >= cutoff {
            report.blobs_in_grace += 1;
        } else {
            candidates.push((hash, blob.size));
        }
    }
    for hash in referenced.into_keys().filter(|h| !seen.contains(h)) {
        // Asked once more: another instance's GC may have removed it after
        // a concurrent pruning, which is no damage.
        if service.blobs.size(&hash).await?.is_none() && service.store.blob_held(&hash).await? {
            report.missing.push(hash);
        }
    }
    report.missing.sort();
    report.unrecognised.sort();
    if dry_run {
        report.manifests_deleted = dead_manifests.len() as u64;
        for (hash, size) in candidates {
            note_deleted(report, hash, size);
        }
        return Ok(());
    }
    // Manifests first: the store keeps every chunk a stored manifest lists.
    let dropped = service.store.release_manifests(dead_manifests, cutoff_ms).await?;
    report.manifests_deleted = dropped.len() as u64;
    let released = service
        .store
        .release_blobs(candidates.into_iter().map(|(h, _)| h).collect(), cutoff_ms)
        .await?;
    for hash in released {
        // Uploaded again (its project record is back) or committed since the release.
        if service.store.blob_held(&hash).await? {
            report.blobs_in_grace += 1;
            continue;
        }
        match service.blobs.delete_if_idle(&hash, cutoff).await? {
            Deletion::Deleted { size } => note_deleted(report, hash, size),
            Deletion::Recent => report.blobs_in_grace += 1,
            Deletion::Missing => {}
        }
    }
    Ok(())
}

/// Adds the chunks of every manifest whose hash is referenced to
/// `referenced` (with their sizes), and those of hashes in their grace
/// period to `used`; returns the manifests nothing holds.
async fn hold_chunks_of_live_manifests(
    service: &Service,
    referenced: &mut HashMap<BlobHash, u64>,
    used: &mut HashSet<BlobHash>,
) -> Result<Vec<BlobHash>, GcError> {
    let all = service.store.manifest_hashes().await?;
    let (live, dead): (Vec<BlobHash>, Vec<BlobHash>) = all
        .into_iter()
        .partition(|h| referenced.contains_key(h) || used.contains(h));
    for batch in live.chunks(MANIFESTS_PER_READ) {
        for manifest in service.store.manifests_among(batch.to_vec()).await? {
            let in_use = referenced.contains_key(&manifest.hash);
            for chunk in manifest.chunks {
                if in_use {
                    let entry = referenced.entry(chunk.hash).or_insert(chunk.size);
                    *entry = (*entry).max(chunk.size);
                } else {
                    used.insert(chunk.hash);
                }
            }
        }
    }
    Ok(dead)
}

fn note_deleted(report: &mut GcReport, hash: BlobHash, size: u64) {
    report.blobs_deleted += 1;
    report.bytes_freed += size;
    if report.deleted.len() < LISTED_DELETIONS {
        report.deleted.push(hash);
    }
}

/// `serve --gc-interval`: a run every `interval`, the first one after a full
/// interval (a restart loop must not turn into a GC loop).
pub fn spawn_schedule(service: Arc<Service>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = run(&service, false, "gc-schedule").await {
                tracing::warn!(error = %e, "scheduled garbage collection failed; it runs again next interval");
            }
        }
    });
}
