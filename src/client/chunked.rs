//! Client calls for chunked content (`crate::chunks`): which blobs a project
//! lacks, manifests, byte ranges, and uploading a large file by chunks.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::{Method, Response, StatusCode};
use tracing::debug;

use super::{Client, ClientError, ClientResult};
use crate::api::*;
use crate::chunks::{manifest_of, Manifest, CHUNKED_MIN};
use crate::model::BlobHash;

/// Chunk uploads in flight at once.
const PARALLEL_UPLOADS: usize = 4;
/// Hashes per `blobs/missing` request.
const MISSING_BATCH: usize = 1000;

impl Client {
    /// The subset of `hashes` this project has not uploaded yet, in order.
    pub async fn missing_blobs(&self, project: &str, hashes: &[BlobHash]) -> ClientResult<Vec<BlobHash>> {
        let mut missing = Vec::new();
        for batch in hashes.chunks(MISSING_BATCH) {
            let answer: MissingBlobsResponse = self
                .post(
                    &Self::project_route(project, "/blobs/missing"),
                    &MissingBlobsRequest {
                        hashes: batch.to_vec(),
                    },
                )
                .await?;
            missing.extend(answer.missing);
        }
        Ok(missing)
    }

    /// Registers a chunked blob: every chunk must be uploaded to the project
    /// already; the server checks they hash, together, to `manifest.hash`.
    pub async fn put_manifest(&self, project: &str, manifest: &Manifest) -> ClientResult<BlobReceipt> {
        self.json(
            self.request(
                Method::PUT,
                &Self::project_route(project, &format!("/manifests/{}", manifest.hash)),
            )
            .json(manifest),
        )
        .await
    }

    /// The manifest of a chunked blob; `None` when the blob is stored whole
    /// (or not at all: a plain blob GET tells which).
    pub async fn get_manifest(&self, project: &str, hash: &BlobHash) -> ClientResult<Option<Manifest>> {
        match self
            .json(self.request(Method::GET, &Self::project_route(project, &format!("/manifests/{hash}"))))
            .await
        {
            Ok(manifest) => Ok(Some(manifest)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts a download of `len` bytes of a blob from `offset` (a `Range`
    /// request: 206 with exactly those bytes). The caller verifies them.
    pub async fn blob_range_response(
        &self,
        project: &str,
        hash: &BlobHash,
        offset: u64,
        len: u64,
    ) -> ClientResult<Response> {
        let last = offset + len.max(1) - 1;
        self.send(
            self.request(Method::GET, &Self::project_route(project, &format!("/blobs/{hash}")))
                .header(reqwest::header::RANGE, format!("bytes={offset}-{last}")),
        )
        .await
    }

    /// Uploads a local file whose content hashes to `hash`: as one blob below
    /// [`CHUNKED_MIN`] bytes, else by chunks, sending only the chunks the
    /// project lacks (so a retry after a crash resumes), then the manifest.
    pub async fn upload_file(&self, project: &str, hash: &BlobHash, path: &Path) -> ClientResult<BlobReceipt> {
        let size = tokio::fs::metadata(path).await.map_err(|e| local_error(path, e))?.len();
        if size < CHUNKED_MIN {
            return self.put_blob_file(project, hash, path).await;
        }
        let file = Arc::new(std::fs::File::open(path).map_err(|e| local_error(path, e))?);
        let manifest = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || manifest_of(std::io::BufReader::with_capacity(1 << 20, &*file)))
                .await
                .map_err(|e| local_error(path, std::io::Error::other(e)))?
                .map_err(|e| local_error(path, e))?
        };
        if manifest.hash != *hash {
            return Err(ClientError::Protocol {
                url: path.display().to_string(),
                detail: format!(
                    "the file changed while it was uploaded: it hashes to {}, not {hash}",
                    manifest.hash
                ),
            });
        }
        let hashes: Vec<BlobHash> = manifest.chunks.iter().map(|c| c.hash.clone()).collect();
        let missing: std::collections::HashSet<BlobHash> =
            self.missing_blobs(project, &hashes).await?.into_iter().collect();
        debug!(%hash, chunks = hashes.len(), missing = missing.len(), "uploading by chunks");
        let mut sent = std::collections::HashSet::new();
        let todo: Vec<(u64, u64, BlobHash)> = manifest
            .spans()
            .into_iter()
            .map(|s| (s.offset, s.size, manifest.chunks[s.index].hash.clone()))
            .filter(|(_, _, h)| missing.contains(h) && sent.insert(h.clone()))
            .collect();
        futures_util::stream::iter(todo.into_iter().map(|(offset, size, chunk)| {
            let file = file.clone();
            async move {
                let bytes = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; size as usize];
                    file.read_exact_at(&mut buf, offset).map(|_| buf)
                })
                .await
                .map_err(|e| local_error(path, std::io::Error::other(e)))?
                .map_err(|e| local_error(path, e))?;
                let bytes = Bytes::from(bytes);
                if BlobHash::of(&bytes) != chunk {
                    return Err(ClientError::Protocol {
                        url: path.display().to_string(),
                        detail: format!("the file changed while it was uploaded (chunk at {offset})"),
                    });
                }
                self.put_blob(project, bytes).await.map(|_| ())
            }
        }))
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_collect::<Vec<()>>()
        .await?;
        self.put_manifest(project, &manifest).await
    }
}

fn local_error(path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Protocol {
        url: path.display().to_string(),
        detail: format!("cannot read the content to upload: {e}"),
    }
}
