//! What the sync worker needs from the server, as a trait: the mount uses
//! the HTTP [`Client`]; unit tests use a scripted fake that can fail the Nth
//! call, delay a call or lose an answer (see `replicator/tests.rs`).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::api::{
    BlobReceipt, ChangesPage, CommitRequest, DeleteRequest, DeleteResponse, Limits, MkdirRequest, RenameRequest,
    VersionInfo,
};
use crate::client::{Client, ClientResult, UploadError};
use crate::model::BlobHash;

/// The calls [`super::replicator::Replicator`] makes, with the signatures
/// and errors of [`Client`]'s methods of the same names.
#[async_trait]
pub trait Remote: Send + Sync {
    async fn mkdir(&self, project: &str, request: &MkdirRequest) -> ClientResult<VersionInfo>;
    async fn rename(&self, project: &str, request: &RenameRequest) -> ClientResult<VersionInfo>;
    async fn commit(&self, project: &str, request: &CommitRequest) -> ClientResult<VersionInfo>;
    /// Many commits in one request; a server without the batch route
    /// answers 404 `no such route`. The default sends them one by one.
    async fn commit_batch(
        &self,
        project: &str,
        requests: &[CommitRequest],
    ) -> ClientResult<Vec<ClientResult<VersionInfo>>> {
        let mut out = Vec::with_capacity(requests.len());
        for request in requests {
            out.push(self.commit(project, request).await);
        }
        Ok(out)
    }
    async fn delete(&self, project: &str, request: &DeleteRequest) -> ClientResult<DeleteResponse>;
    /// Uploads bytes; the hash is computed by the callee.
    async fn put_blob(&self, project: &str, bytes: Bytes) -> ClientResult<BlobReceipt>;
    /// Uploads the file at `path`, whose bytes hash to `hash`.
    async fn put_blob_file(&self, project: &str, hash: &BlobHash, path: &Path) -> ClientResult<BlobReceipt>;
    /// Uploads the file at `path`, whose bytes hash to `hash`, by chunks when
    /// it is large (see [`Client::upload_file_within`]). The default sends
    /// it whole.
    async fn upload_file(
        &self,
        project: &str,
        hash: &BlobHash,
        path: &Path,
        _limits: Option<&Limits>,
    ) -> Result<BlobReceipt, UploadError> {
        Ok(self.put_blob_file(project, hash, path).await?)
    }
    /// What the server accepts (`GET /health`); `None` from a server that
    /// does not say.
    async fn limits(&self) -> ClientResult<Option<Limits>> {
        Ok(None)
    }
    /// Events after `since`; waits up to `wait` for the first one.
    async fn changes(&self, project: &str, since: i64, wait: Duration) -> ClientResult<ChangesPage>;
}

#[async_trait]
impl Remote for Client {
    async fn mkdir(&self, project: &str, request: &MkdirRequest) -> ClientResult<VersionInfo> {
        Client::mkdir(self, project, request).await
    }

    async fn rename(&self, project: &str, request: &RenameRequest) -> ClientResult<VersionInfo> {
        Client::rename(self, project, request).await
    }

    async fn commit(&self, project: &str, request: &CommitRequest) -> ClientResult<VersionInfo> {
        Client::commit(self, project, request).await
    }

    async fn commit_batch(
        &self,
        project: &str,
        requests: &[CommitRequest],
    ) -> ClientResult<Vec<ClientResult<VersionInfo>>> {
        Client::commit_batch(self, project, requests).await
    }

    async fn delete(&self, project: &str, request: &DeleteRequest) -> ClientResult<DeleteResponse> {
        Client::delete(self, project, request).await
    }

    async fn put_blob(&self, project: &str, bytes: Bytes) -> ClientResult<BlobReceipt> {
        Client::put_blob(self, project, bytes).await
    }

    async fn put_blob_file(&self, project: &str, hash: &BlobHash, path: &Path) -> ClientResult<BlobReceipt> {
        Client::put_blob_file(self, project, hash, path).await
    }

    async fn upload_file(
        &self,
        project: &str,
        hash: &BlobHash,
        path: &Path,
        limits: Option<&Limits>,
    ) -> Result<BlobReceipt, UploadError> {
        Client::upload_file_within(self, project, hash, path, limits).await
    }

    async fn limits(&self) -> ClientResult<Option<Limits>> {
        Ok(Client::health(self).await?.limits)
    }

    async fn changes(&self, project: &str, since: i64, wait: Duration) -> ClientResult<ChangesPage> {
        Client::changes(self, project, since, wait).await
    }
}
