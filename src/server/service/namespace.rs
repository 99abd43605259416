//! Namespace operations: mkdir, rename, delete (with the stale-base answer
//! they share) and rollback.

use super::{check_mode, check_new_path, meta, Service, MAX_COMMIT_ATTEMPTS};
use crate::api::*;
use crate::model::WsPath;
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::store::{ContentWrite, NodeGuard, ProjectRow, StoreError, WriteTarget};

impl Service {
    pub async fn mkdir(
        &self,
        caller: &Caller,
        project: &str,
        req: MkdirRequest,
    ) -> Result<(VersionInfo, bool), ApiError> {
        check_new_path(&req.path)?;
        let project = self.project_for(caller, project, true).await?;
        check_mode(req.mode)?;
        let meta = meta(caller, req.agent_id, req.message)?;
        let applied = self
            .store
            .mkdir(project.id, &req.path, req.mode.unwrap_or(0o755), meta)
            .await?;
        self.feed.notify(project.id);
        Ok(applied.value)
    }

    pub async fn rename(&self, caller: &Caller, project: &str, req: RenameRequest) -> Result<VersionInfo, ApiError> {
        // Only the new name: an old one with control characters may be renamed away.
        check_new_path(&req.to)?;
        let project = self.project_for(caller, project, true).await?;
        let meta = meta(caller, req.agent_id, req.message)?;
        match self
            .store
            .rename(
                project.id,
                &req.from,
                &req.to,
                req.replace,
                NodeGuard {
                    base_version: req.base_version,
                    node: req.node,
                },
                meta,
            )
            .await
        {
            Ok(applied) => {
                self.feed.notify(project.id);
                Ok(applied.value.moved)
            }
            Err(StoreError::HeadMoved) => Err(self.stale(&project, &req.from).await),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, caller: &Caller, project: &str, req: DeleteRequest) -> Result<DeleteResponse, ApiError> {
        let project = self.project_for(caller, project, true).await?;
        let meta = meta(caller, req.agent_id, req.message)?;
        match self
            .store
            .delete(
                project.id,
                &req.path,
                NodeGuard {
                    base_version: req.base_version,
                    node: req.node,
                },
                req.recursive,
                meta,
            )
            .await
        {
            Ok(applied) => {
                self.feed.notify(project.id);
                Ok(DeleteResponse { deleted: applied.value })
            }
            Err(StoreError::HeadMoved) => Err(self.stale(&project, &req.path).await),
            Err(e) => Err(e.into()),
        }
    }

    async fn stale(&self, project: &ProjectRow, path: &WsPath) -> ApiError {
        let head = self
            .store
            .node_at(project.id, path)
            .await
            .ok()
            .flatten()
            .map(|n| n.head);
        ApiError::conflict(
            ErrorCode::BaseVersionStale,
            format!("{path} changed since the given base version; re-read it and retry"),
        )
        .with_head(head)
    }

    pub async fn rollback(
        &self,
        caller: &Caller,
        project: &str,
        req: RollbackRequest,
    ) -> Result<VersionInfo, ApiError> {
        let project = self.project_for(caller, project, true).await?;
        let meta = meta(caller, req.agent_id, req.message)?;
        let _serialised = self.path_lock(project.id, &req.path).lock().await;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let node = self
                .store
                .node_at(project.id, &req.path)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("{} has no history", req.path)))?;
            let target = self.store.version(node.node, req.version).await?.ok_or_else(|| {
                ApiError::not_found(format!(
                    "{} has no version {} (head is {})",
                    req.path, req.version, node.head.version
                ))
            })?;
            if target.deleted {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidField,
                    format!(
                        "version {} of {} is a deletion; use the delete route to delete",
                        req.version, req.path
                    ),
                ));
            }
            let write = ContentWrite {
                target: WriteTarget::Existing {
                    node: node.node,
                    expected_head: node.head.version,
                },
                kind: target.kind,
                mode: target.mode,
                hash: target.hash,
                size: target.size,
                op: VersionOp::Rollback,
                status: VersionStatus::Clean,
                idempotency_key: None,
                record_blob: None,
                unsynced_copy: None,
                // Restored bytes are a new change: the commit time is their mtime.
                times: Default::default(),
            };
            match self.store.write_content(project.id, write, meta.clone()).await {
                Ok(applied) => {
                    self.feed.notify(project.id);
                    return Ok(applied.value);
                }
                Err(StoreError::HeadMoved) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Busy,
            format!("{} is changing too fast; retry", req.path),
        ))
    }
}
