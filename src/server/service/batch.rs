//! Many commits in one request (`POST .../commit/batch`): what a mount sends
//! when thousands of small files close at once (an untar, `npm install`).
//!
//! Each entry is still its own commit: its own checks, base version, merge,
//! status and idempotency key, exactly as `POST .../commit` would treat it.
//! What the batch saves is the round trips and the transactions: every entry
//! is planned under its path lock, then all planned writes go to the store in
//! one transaction, each in its own savepoint, so an entry the database
//! refuses fails alone and leaves no trace. An entry whose head moved between
//! its plan and the write (another writer got there first) is then committed
//! alone, through the same merge loop a single commit runs.

use std::collections::HashSet;

use futures_util::stream::{self, StreamExt};

use super::commit::{Checked, Lookup, Prepared};
use super::{check_new_path, Service};
use crate::api::*;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::store::{ProjectRow, StoreError};

/// The most commits one batch may carry.
pub const MAX_BATCH_COMMITS: usize = 1000;
/// Entries of one batch checked and stored at once.
const PREPARE_CONCURRENCY: usize = 16;

impl Service {
    /// Commits every entry of `reqs`; the outcome of each, in order. The
    /// outer error (bad token, unknown project, an empty or oversized batch,
    /// the database down) means nothing was committed.
    pub async fn commit_batch(
        &self,
        caller: &Caller,
        project: &str,
        reqs: Vec<CommitRequest>,
    ) -> Result<Vec<Result<VersionInfo, ApiError>>, ApiError> {
        if reqs.is_empty() || reqs.len() > MAX_BATCH_COMMITS {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidField,
                format!(
                    "commits: a batch carries 1 to {MAX_BATCH_COMMITS} commits, this one {}",
                    reqs.len()
                ),
            ));
        }
        let project = self.project_for(caller, project, true).await?;
        let mut results: Vec<Option<Result<VersionInfo, ApiError>>> = Vec::with_capacity(reqs.len());
        let mut ready: Vec<(usize, Prepared)> = Vec::new();
        // A path named twice: the later entries commit alone, after the rest,
        // so each sees the one before it as its head.
        let mut alone: Vec<(usize, Prepared)> = Vec::new();
        let mut paths = HashSet::new();
        // Checks and inline contents (each blob fsynced) run concurrently:
        // the disk's journal commits concurrent fsyncs together.
        // Looked up together: one database round trip, not one per entry.
        let keys = reqs.iter().map(|r| r.idempotency_key.clone()).collect();
        let done = self.store.find_idempotent_many(project.id, keys).await?;
        let prepared: Vec<_> = stream::iter(reqs.into_iter().zip(done))
            .map(|(req, done)| {
                let project = &project;
                async move {
                    check_new_path(&req.path)?;
                    self.prepare_commit(caller, project, req, None, Lookup::Found(done))
                        .await
                }
            })
            .buffered(PREPARE_CONCURRENCY)
            .collect()
            .await;
        for (i, checked) in prepared.into_iter().enumerate() {
            match checked {
                Err(e) => results.push(Some(Err(e))),
                Ok(Checked::Done(v)) => results.push(Some(Ok(v))),
                Ok(Checked::Ready(p)) => {
                    results.push(None);
                    if paths.insert(p.req.path.clone()) {
                        ready.push((i, p));
                    } else {
                        alone.push((i, p));
                    }
                }
            }
        }
        let retry = self.write_together(&project, ready, &mut results).await?;
        for (i, p) in retry.into_iter().chain(alone) {
            results[i] = Some(self.commit_prepared(&project, p).await);
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ApiError::internal("a batch entry was never committed"))))
            .collect())
    }

    /// Plans every entry under its path lock and writes all planned ones in
    /// one store transaction. Fills `results`; returns the entries whose
    /// head moved before the write.
    async fn write_together(
        &self,
        project: &ProjectRow,
        ready: Vec<(usize, Prepared)>,
        results: &mut [Option<Result<VersionInfo, ApiError>>],
    ) -> Result<Vec<(usize, Prepared)>, ApiError> {
        // Stripes are taken in ascending order (a single commit holds one):
        // two batches never wait for each other in a cycle.
        let mut stripes: Vec<usize> = ready
            .iter()
            .map(|(_, p)| self.path_lock_index(project.id, &p.req.path))
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.path_locks[stripe].lock().await);
        }
        let mut planned = Vec::new();
        let mut writes = Vec::new();
        let paths = ready.iter().map(|(_, p)| p.req.path.clone()).collect();
        let heads = self.store.nodes_at(project.id, paths).await?;
        for ((i, p), head) in ready.into_iter().zip(heads) {
            match self.plan_prepared(project, &p, Lookup::Found(head)).await {
                Err(e) => results[i] = Some(Err(e)),
                Ok(Err(already_there)) => results[i] = Some(Ok(already_there)),
                Ok(Ok(write)) => {
                    writes.push((write, p.meta.clone()));
                    planned.push((i, p));
                }
            }
        }
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = self.store.write_contents(project.id, writes).await?;
        drop(guards);
        let mut retry = Vec::new();
        let mut committed = false;
        for ((i, p), outcome) in planned.into_iter().zip(outcomes) {
            match outcome {
                Ok(applied) => {
                    self.metrics.commit(applied.value.status);
                    p.log_committed(project, &applied.value);
                    results[i] = Some(Ok(applied.value));
                    committed = true;
                }
                Err(StoreError::HeadMoved) => retry.push((i, p)),
                Err(e) => results[i] = Some(Err(e.into())),
            }
        }
        if committed {
            self.feed.notify(project.id);
        }
        Ok(retry)
    }
}
