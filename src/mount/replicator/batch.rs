//! The contents phase of a drain round: commits go to the server in
//! batches (`POST .../commit/batch`), many per request and per server
//! transaction, instead of one request each. Large contents are uploaded
//! first, concurrently; each entry's answer is applied exactly as a single
//! commit's would be.

use std::sync::atomic::Ordering;

use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;

use super::{classify, Outcome, Replicator, COMMIT_CONCURRENCY};
use crate::api::{CommitRequest, ErrorCode};
use crate::client::ClientError;
use crate::vfs::drain::{ContentSource, DrainItem, DrainOp};

/// Commits per batch request.
const BATCH_COMMITS: usize = 256;
/// Inline content per batch (decoded), well under the server's 8 MiB JSON
/// limit once base64 has grown it by a third.
const BATCH_INLINE_BYTES: usize = 4 << 20;
/// Batch requests in flight at once.
const BATCH_CONCURRENCY: usize = 4;

/// A server that predates the batch route answers 404 with this message.
fn is_missing_route(e: &ClientError) -> bool {
    e.status() == Some(StatusCode::NOT_FOUND)
        && e.has_code(ErrorCode::NotFound)
        && e.to_string().contains("no such route")
}

impl Replicator {
    /// Commits `items` (all `Commit`s): uploads, then batches. Returns every
    /// item with its outcome.
    pub(super) async fn commit_phase(&self, items: Vec<DrainItem>) -> Vec<(DrainItem, Outcome)> {
        let (items, others): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|item| matches!(item.op, DrainOp::Commit { .. }));
        if self.batch_unsupported.load(Ordering::Relaxed) || !others.is_empty() {
            let mut out = self.execute_concurrently(others).await;
            out.extend(self.execute_concurrently(items).await);
            return out;
        }
        // Large contents first, concurrently: a batch carries small ones inline
        // and names the rest by hash.
        let uploaded: Vec<(DrainItem, Option<Outcome>)> = stream::iter(items)
            .map(|item| async move {
                if !self.vfs.has_record(item.uid) {
                    return (item, Some(Outcome::Done));
                }
                let failed = self.upload_content(&item).await;
                (item, failed)
            })
            .buffer_unordered(COMMIT_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::new();
        let mut batches: Vec<Vec<DrainItem>> = Vec::new();
        let mut inline_bytes = 0;
        for (item, failed) in uploaded {
            if let Some(outcome) = failed {
                out.push((item, outcome));
                continue;
            }
            let size = match &item.op {
                DrainOp::Commit {
                    source: ContentSource::Inline(bytes),
                    ..
                } => bytes.len(),
                _ => 0,
            };
            match batches.last_mut() {
                Some(b) if b.len() < BATCH_COMMITS && inline_bytes + size <= BATCH_INLINE_BYTES => {
                    inline_bytes += size;
                    b.push(item);
                }
                _ => {
                    inline_bytes = size;
                    batches.push(vec![item]);
                }
            }
        }
        let answered: Vec<Vec<(DrainItem, Outcome)>> = stream::iter(batches)
            .map(|batch| self.send_batch(batch))
            .buffer_unordered(BATCH_CONCURRENCY)
            .collect()
            .await;
        out.extend(answered.into_iter().flatten());
        out
    }

    pub(super) async fn send_batch(&self, batch: Vec<DrainItem>) -> Vec<(DrainItem, Outcome)> {
        // A file removed after the plan was made (rm -rf right after a burst
        // of creates) has no record any more: there is nothing of it to
        // send, and sending it would make the server create a file only to
        // delete it. Batches wait for a free slot, so this is looked at
        // just before each one goes.
        let (gone, batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(|item| !self.vfs.has_record(item.uid));
        let mut out: Vec<(DrainItem, Outcome)> = gone.into_iter().map(|item| (item, Outcome::Done)).collect();
        if batch.is_empty() {
            return out;
        }
        out.extend(self.send_current_batch(batch).await);
        out
    }

    async fn send_current_batch(&self, batch: Vec<DrainItem>) -> Vec<(DrainItem, Outcome)> {
        // Until its answer is applied, the feed's echo of a create waits.
        let in_flight: Vec<_> = batch.iter().map(|item| self.vfs.sending(item)).collect();
        let requests: Vec<CommitRequest> = batch.iter().filter_map(|item| self.commit_request(item)).collect();
        let answer = self.remote.commit_batch(&self.project, &requests).await;
        let outcomes = match answer {
            Ok(results) => batch
                .iter()
                .zip(results)
                .map(|(item, result)| match &item.op {
                    DrainOp::Commit { hash, .. } => self.commit_answered(item, hash, result),
                    _ => Outcome::Done,
                })
                .collect(),
            Err(e) if is_missing_route(&e) => {
                tracing::info!("the server has no batch route; committing one by one");
                self.batch_unsupported.store(true, Ordering::Relaxed);
                drop(in_flight);
                return self.execute_concurrently(batch).await;
            }
            Err(e) => {
                let outcome = classify(e);
                batch.iter().map(|_| outcome.clone()).collect::<Vec<_>>()
            }
        };
        drop(in_flight);
        batch.into_iter().zip(outcomes).collect()
    }
}
