//! Chunked content (`crate::chunks`): which blobs a project still has to
//! upload, registering a chunked blob by its manifest, reading manifests,
//! and serving whole contents or one byte range of them.
//!
//! A manifest PUT is the only way a chunked blob's hash enters a project,
//! and only after the server has read every chunk from storage and checked
//! that together they hash to it; so a commit naming that hash (which needs
//! it in the project, as for any blob) can never point at content that is
//! not all there.

use futures_util::StreamExt;

use super::Service;
use crate::api::*;
use crate::chunks::Manifest;
use crate::model::BlobHash;
use crate::server::auth::Caller;
use crate::server::blobs::{BlobError, ByteStream};
use crate::server::error::ApiError;
use crate::server::ranges::ByteRange;
use crate::server::store::manifests::ManifestPut;
use crate::server::store::ProjectRow;

/// Most hashes one `blobs/missing` request may ask about.
pub const MAX_MISSING_QUERY: usize = 10_000;

/// What a GET sends: the whole content, one range of it, or a 416.
pub enum Served {
    Whole {
        size: u64,
        stream: ByteStream,
    },
    Part {
        offset: u64,
        len: u64,
        size: u64,
        stream: ByteStream,
    },
    Unsatisfiable {
        size: u64,
    },
}

impl Service {
    /// The subset of `hashes` the project has not uploaded, in request
    /// order, each once.
    pub async fn missing_blobs(
        &self,
        caller: &Caller,
        project: &str,
        hashes: Vec<BlobHash>,
    ) -> Result<MissingBlobsResponse, ApiError> {
        let project = self.project_for(caller, project, true).await?;
        if hashes.len() > MAX_MISSING_QUERY {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidField,
                format!(
                    "hashes lists {} blobs; ask about at most {MAX_MISSING_QUERY} per request",
                    hashes.len()
                ),
            ));
        }
        let held = self.store.project_blobs_among(project.id, hashes.clone()).await?;
        let mut seen = std::collections::HashSet::new();
        let missing = hashes
            .into_iter()
            .filter(|h| !held.contains(h) && seen.insert(h.clone()))
            .collect();
        Ok(MissingBlobsResponse { missing })
    }

    /// Registers a chunked blob in the project once its chunks, read back
    /// from storage, hash to `hash`. Answers whether it is new to the project.
    pub async fn put_manifest(
        &self,
        caller: &Caller,
        project: &str,
        hash: &BlobHash,
        manifest: Manifest,
    ) -> Result<BlobReceipt, ApiError> {
        let project = self.project_for(caller, project, true).await?;
        if manifest.hash != *hash {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidField,
                format!(
                    "the manifest is for {}, but the URL names {hash}; they must be the same",
                    manifest.hash
                ),
            ));
        }
        manifest
            .check_shape()
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidField, format!("the manifest of {hash}: {e}")))?;
        if manifest.size > self.limits.max_file_bytes {
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                format!(
                    "the file is {} bytes, over the server's limit of {} bytes per file (--max-file-bytes)",
                    manifest.size, self.limits.max_file_bytes
                ),
            ));
        }
        let chunks = crate::server::store::manifests::distinct_chunks(&manifest);
        let held = self.store.project_blobs_among(project.id, chunks.clone()).await?;
        if let Some(absent) = chunks.iter().find(|c| !held.contains(*c)) {
            return Err(chunk_missing(&manifest, absent));
        }
        // A manifest already verified (by this project or another) need not
        // be read again: this project has just shown it holds every chunk.
        if self.store.manifest(hash).await?.as_ref() != Some(&manifest) {
            self.verify_chunks(project.id, &manifest).await?;
        }
        match self.store.put_manifest(project.id, &manifest).await? {
            ManifestPut::Recorded { new_to_project } => {
                tracing::info!(%hash, size = manifest.size, chunks = manifest.chunks.len(), project = %project.name, new_to_project, "chunked blob registered");
                Ok(BlobReceipt {
                    hash: hash.clone(),
                    size: manifest.size,
                    created: new_to_project,
                })
            }
            ManifestPut::ChunkGone(chunk) => Err(chunk_missing(&manifest, &chunk)),
        }
    }

    /// Registers a manifest THIS SERVER produced (`upload.rs` cut the body
    /// and hashed every chunk and the whole itself), so unlike
    /// [`Service::put_manifest`] it does not read the chunks back: a client's
    /// manifest is a claim to check, this one is the server's own
    /// computation. Never call it with a manifest that came in a request.
    pub(super) async fn register_manifest_cut_by_server(
        &self,
        project: &ProjectRow,
        manifest: &Manifest,
    ) -> Result<(), ApiError> {
        manifest
            .check_shape()
            .map_err(|e| ApiError::internal(format!("the server cut a bad manifest of {}: {e}", manifest.hash)))?;
        match self.store.put_manifest(project.id, manifest).await? {
            ManifestPut::Recorded { new_to_project } => {
                tracing::info!(hash = %manifest.hash, size = manifest.size, chunks = manifest.chunks.len(), project = %project.name, new_to_project, "chunked upload registered");
                Ok(())
            }
            // The upload outlasted the grace period and garbage collection
            // released a chunk stored at its start.
            ManifestPut::ChunkGone(chunk) => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Busy,
                format!(
                    "chunk {chunk} of the upload was removed by garbage collection before the upload ended; nothing was committed: send the file again"
                ),
            )),
        }
    }

    /// Reads every chunk back from storage, in order: each must be its
    /// listed size, and together they must hash to the manifest's hash.
    async fn verify_chunks(&self, project_id: i64, manifest: &Manifest) -> Result<(), ApiError> {
        let mut whole = blake3::Hasher::new();
        for (index, chunk) in manifest.chunks.iter().enumerate() {
            let (size, mut stream) = match self.blobs.get(&chunk.hash).await {
                Ok(opened) => opened,
                Err(BlobError::NotFound(_)) => {
                    // The project's record outlived the blob (lost from
                    // storage): forget it, so `blobs/missing` asks for it
                    // and the client's retry uploads it again.
                    tracing::warn!(chunk = %chunk.hash, manifest = %manifest.hash, "a chunk the project uploaded is not in blob storage");
                    self.store.forget_project_blob(project_id, &chunk.hash).await?;
                    return Err(chunk_missing(manifest, &chunk.hash));
                }
                Err(e) => return Err(e.into()),
            };
            if size != chunk.size {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidField,
                    format!(
                        "chunk {index} ({}) is {size} bytes, but the manifest says {}",
                        chunk.hash, chunk.size
                    ),
                ));
            }
            // `blobs.get` checks each chunk against its own hash as it streams.
            while let Some(piece) = stream.next().await {
                let piece = piece
                    .map_err(|e| ApiError::internal(format!("cannot read chunk {index} ({}) back: {e}", chunk.hash)))?;
                whole.update(&piece);
            }
        }
        let actual = BlobHash::from_blake3(whole.finalize());
        if actual != manifest.hash {
            return Err(ApiError::bad_request(
                ErrorCode::HashMismatch,
                format!(
                    "the chunks, in the manifest's order, hash to {actual}, not {}",
                    manifest.hash
                ),
            ));
        }
        Ok(())
    }

    /// The manifest of a chunked blob the project holds.
    pub async fn get_manifest(&self, caller: &Caller, project: &str, hash: &BlobHash) -> Result<Manifest, ApiError> {
        let project = self.project_for(caller, project, false).await?;
        let not_found = || {
            ApiError::not_found(format!(
                "no chunked blob {hash} in project {} (it may be stored whole: GET the blob)",
                project.name
            ))
        };
        if !self.store.project_has_blob(project.id, hash).await? && !self.store.skill_has_blob(hash).await? {
            return Err(not_found());
        }
        self.store.manifest(hash).await?.ok_or_else(not_found)
    }

    /// The content under `hash` (of `size` bytes when the caller knows),
    /// whole or the one range asked for.
    pub(crate) async fn serve_content(
        &self,
        hash: &BlobHash,
        size: Option<u64>,
        range: Option<ByteRange>,
    ) -> Result<Served, ApiError> {
        let Some(range) = range else {
            let (size, stream) = self.blobs.get(hash).await?;
            return Ok(Served::Whole { size, stream });
        };
        let size = match size {
            Some(size) => size,
            None => self
                .blobs
                .size(hash)
                .await?
                .ok_or_else(|| ApiError::from(BlobError::NotFound(hash.clone())))?,
        };
        match range.resolve(size) {
            Err(_) => Ok(Served::Unsatisfiable { size }),
            Ok((0, len)) if len == size => {
                let (size, stream) = self.blobs.get(hash).await?;
                Ok(Served::Part {
                    offset: 0,
                    len: size,
                    size,
                    stream,
                })
            }
            Ok((offset, len)) => Ok(Served::Part {
                offset,
                len,
                size,
                stream: self.blobs.get_range(hash, offset, len).await?,
            }),
        }
    }
}

fn chunk_missing(manifest: &Manifest, chunk: &BlobHash) -> ApiError {
    let index = manifest.chunks.iter().position(|c| c.hash == *chunk).unwrap_or(0);
    ApiError::bad_request(
        ErrorCode::BlobMissing,
        format!(
            "chunk {index} ({chunk}) of {} is not uploaded to this project; upload it (PUT .../blobs/{chunk}) and send the manifest again",
            manifest.hash
        ),
    )
}
