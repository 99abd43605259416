//! Reads: the tree, checkout of a version, history, the change feed, the
//! audit log, and a project's blobs.

use std::time::Duration;

use super::chunked::Served;
use super::Service;
use crate::api::*;
use crate::model::{BlobHash, WsPath};
use crate::server::auth::Caller;
use crate::server::blobs::ByteStream;
use crate::server::error::ApiError;
use crate::server::ranges::ByteRange;

/// The versions retention removed around a page of history (newest first):
/// version numbers are never reused, so every gap is a pruned stretch. The
/// stretch below the oldest version shows only on the last page.
fn pruned_gaps(versions: &[VersionInfo], last_page: bool) -> Vec<PrunedGap> {
    let mut gaps: Vec<PrunedGap> = versions
        .windows(2)
        .filter(|pair| pair[0].version - pair[1].version > 1)
        .map(|pair| PrunedGap {
            before: pair[0].version,
            count: pair[0].version - pair[1].version - 1,
        })
        .collect();
    if let Some(oldest) = versions.last().filter(|v| last_page && v.version > 1) {
        gaps.push(PrunedGap {
            before: oldest.version,
            count: oldest.version - 1,
        });
    }
    gaps
}

impl Service {
    pub async fn tree(
        &self,
        caller: &Caller,
        project: &str,
        prefix: Option<&WsPath>,
        recursive: bool,
    ) -> Result<TreeListing, ApiError> {
        let project = self.project_for(caller, project, false).await?;
        if let Some(prefix) = prefix {
            match self.store.node_at(project.id, prefix).await? {
                Some(n) if !n.deleted && n.kind == NodeKind::Dir => {}
                Some(n) if !n.deleted => {
                    return Err(ApiError::conflict(
                        ErrorCode::NotADirectory,
                        format!("{prefix} is a {}", n.kind.as_str()),
                    ))
                }
                _ => return Err(ApiError::not_found(format!("{prefix} does not exist"))),
            }
        }
        Ok(self.store.tree(project.id, prefix, recursive).await?)
    }

    /// The version of `path` to read: its head, or `version` when given.
    pub async fn checkout(
        &self,
        caller: &Caller,
        project: &str,
        path: &WsPath,
        version: Option<i64>,
        range: Option<ByteRange>,
    ) -> Result<(VersionInfo, Served), ApiError> {
        let project = self.project_for(caller, project, false).await?;
        let node = self.store.node_at(project.id, path).await?;
        let info = match (node, version) {
            (Some(n), None) if !n.deleted => n.head,
            (Some(n), None) => {
                return Err(ApiError::not_found(format!(
                    "{path} was deleted in version {}; read an older version or roll it back",
                    n.head.version
                )))
            }
            (Some(n), Some(v)) => self.store.version(n.node, v).await?.ok_or_else(|| {
                // Numbers are never reused: a missing one below the head was pruned.
                if (1..n.head.version).contains(&v) {
                    ApiError::not_found(format!(
                        "version {v} of {path} was pruned by the project's retention policy (head is {})",
                        n.head.version
                    ))
                } else {
                    ApiError::not_found(format!("{path} has no version {v} (head is {})", n.head.version))
                }
            })?,
            (None, _) => return Err(ApiError::not_found(format!("{path} does not exist"))),
        };
        if info.deleted {
            return Err(ApiError::not_found(format!(
                "version {} of {path} is a deletion",
                info.version
            )));
        }
        if info.kind == NodeKind::Dir {
            return Err(ApiError::conflict(
                ErrorCode::IsADirectory,
                format!("{path} is a directory; list it with the tree route"),
            ));
        }
        let served = self.serve_content(&info.hash, Some(info.size), range).await?;
        Ok((info, served))
    }

    pub async fn history(
        &self,
        caller: &Caller,
        project: &str,
        path: &WsPath,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ApiError> {
        let project = self.project_for(caller, project, false).await?;
        let node = self
            .store
            .node_at(project.id, path)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("{path} has no history")))?;
        let limit = limit.unwrap_or(100).clamp(1, 1000);
        let versions = self.store.history(node.node, before, limit).await?;
        let next_before = match versions.last() {
            Some(v) if versions.len() as u32 == limit && v.version > 1 => Some(v.version),
            _ => None,
        };
        let mut pruned = pruned_gaps(&versions, next_before.is_none());
        // A page that starts below a pruned stretch holds nothing; say why.
        if let (true, Some(before)) = (versions.is_empty(), before.filter(|b| *b > 1)) {
            pruned.push(PrunedGap {
                before,
                count: before - 1,
            });
        }
        Ok(HistoryPage {
            node: node.node,
            path: node.path,
            versions,
            next_before,
            pruned,
        })
    }

    pub async fn changes(
        &self,
        caller: &Caller,
        project: &str,
        since: i64,
        timeout: Duration,
        limit: Option<u32>,
    ) -> Result<ChangesPage, ApiError> {
        let project = self.project_for(caller, project, false).await?;
        let limit = limit.unwrap_or(1000).clamp(1, 10_000);
        let deadline = tokio::time::Instant::now() + timeout.min(self.limits.max_poll);
        let notify = self.feed.handle(project.id);
        loop {
            // Register for wake-ups before reading, so a commit landing in
            // between cannot be missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (events, more) = self.store.changes(project.id, since, limit).await?;
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                let cursor = events.last().map(|e| e.seq).unwrap_or(since);
                return Ok(ChangesPage { cursor, events, more });
            }
            let mut stopping = self.stopping.subscribe();
            let _waiting = self.metrics.feed_waiter();
            let woken = tokio::select! {
                woken = tokio::time::timeout_at(deadline, notified) => woken.is_ok(),
                _ = stopping.wait_for(|stop| *stop) => false,
            };
            if !woken {
                let cursor = since;
                return Ok(ChangesPage {
                    cursor,
                    events: Vec::new(),
                    more: false,
                });
            }
        }
    }

    pub async fn audit(
        &self,
        caller: &Caller,
        project: &str,
        since: i64,
        limit: Option<u32>,
    ) -> Result<AuditPage, ApiError> {
        let project = self.project_for(caller, project, false).await?;
        Ok(self
            .store
            .audit(project.id, since, limit.unwrap_or(100).clamp(1, 1000))
            .await?)
    }

    // ----- blobs -----

    pub async fn put_blob(
        &self,
        caller: &Caller,
        project: &str,
        hash: &BlobHash,
        body: ByteStream,
    ) -> Result<BlobReceipt, ApiError> {
        let project = self.project_for(caller, project, true).await?;
        // `created` means new to *this project*: whether the store already
        // held the bytes for another project must not show (that would tell
        // a caller what others have stored).
        let already_here = self.store.project_has_blob(project.id, hash).await?;
        let (hash, size, new_to_the_store) = self
            .blobs
            .put_stream(Some(hash), body, self.limits.max_blob_bytes)
            .await?;
        self.store.record_blob(project.id, &hash).await?;
        if new_to_the_store {
            self.metrics.blob_stored(size);
        }
        Ok(BlobReceipt {
            hash,
            size,
            created: !already_here,
        })
    }

    /// A project may read blobs it uploaded or refers to, and published
    /// skills: whole, or the one range asked for.
    pub async fn get_blob(
        &self,
        caller: &Caller,
        project: &str,
        hash: &BlobHash,
        range: Option<ByteRange>,
    ) -> Result<Served, ApiError> {
        let project = self.project_for(caller, project, false).await?;
        if !self.store.project_has_blob(project.id, hash).await? && !self.store.skill_has_blob(hash).await? {
            return Err(ApiError::not_found(format!(
                "blob {hash} not found in project {}",
                project.name
            )));
        }
        self.serve_content(hash, None, range).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(number: i64) -> VersionInfo {
        serde_json::from_value(serde_json::json!({
            "node": 1, "version": number, "path": "a", "kind": "file", "mode": 420,
            "hash": crate::model::BlobHash::of(b"").as_str(), "size": 0, "op": "write",
            "status": "clean", "deleted": false, "parent": null, "author": "admin",
            "agent_id": null, "message": null, "created_at": "2026-01-01T00:00:00.000Z"
        }))
        .expect("a version")
    }

    #[test]
    fn gaps_in_version_numbers_are_pruned_stretches() {
        let page: Vec<VersionInfo> = [9, 8, 5, 3].into_iter().map(version).collect();
        let gap = |before, count| PrunedGap { before, count };
        assert_eq!(pruned_gaps(&page, false), [gap(8, 2), gap(5, 1)]);
        assert_eq!(pruned_gaps(&page, true), [gap(8, 2), gap(5, 1), gap(3, 2)]);
        let whole: Vec<VersionInfo> = [3, 2, 1].into_iter().map(version).collect();
        assert!(pruned_gaps(&whole, true).is_empty());
    }
}
