//! Client calls for chunked content (`crate::chunks`): which blobs a project
//! lacks, manifests, byte ranges, and uploading a large file by chunks.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::{Method, Response, StatusCode};
use thiserror::Error;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::{Client, ClientError, ClientResult};
use crate::api::*;
use crate::chunks::{manifest_of, Manifest, CHUNKED_MIN};
use crate::model::BlobHash;

/// Chunk uploads in flight at once for one file.
const PARALLEL_UPLOADS: usize = 4;
/// Chunk uploads in flight at once in this process: the mount uploads many
/// files concurrently, and each chunk in flight holds up to 8 MiB.
static CHUNKS_IN_FLIGHT: Semaphore = Semaphore::const_new(8);
/// Hashes per `blobs/missing` request.
const MISSING_BATCH: usize = 1000;
/// Manifest PUTs answered `blob_missing` (a chunk collected between the
/// check and the manifest) before giving up.
const MANIFEST_ATTEMPTS: usize = 3;

/// Why [`Client::upload_file_within`] failed.
#[derive(Debug, Error)]
pub enum UploadError {
    /// The server could not be reached, or refused a request.
    #[error(transparent)]
    Server(#[from] ClientError),
    /// The local file could not be read.
    #[error("cannot read the content to upload from {}: {source}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The local file's bytes are not the content named by the hash: it
    /// changed, or it is damaged. Nothing was committed with them.
    #[error("{} does not hold the content to upload ({detail})", path.display())]
    Changed { path: PathBuf, detail: String },
    /// Over the server's `--max-file-bytes`: no chunk was sent.
    #[error("{} has {size} bytes; the server stores files of at most {limit} bytes (--max-file-bytes)", path.display())]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
}

impl UploadError {
    /// Worth retrying as it is: the server was unreachable or failed on its side.
    pub fn is_transient(&self) -> bool {
        matches!(self, UploadError::Server(e) if e.is_transient())
    }

    fn local(path: &Path, source: std::io::Error) -> Self {
        UploadError::Local {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// For callers that speak [`ClientError`] only; local problems become
/// `Protocol` errors naming the file.
impl From<UploadError> for ClientError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Server(e) => e,
            other => {
                let url = match &other {
                    UploadError::Local { path, .. }
                    | UploadError::Changed { path, .. }
                    | UploadError::TooLarge { path, .. } => path.display().to_string(),
                    UploadError::Server(_) => String::new(),
                };
                ClientError::Protocol {
                    url,
                    detail: other.to_string(),
                }
            }
        }
    }
}

/// Files of at least this many bytes go up by chunks: the server's
/// `chunked_min`, or its `max_blob_bytes` when that is smaller (one PUT
/// could not carry the file); [`CHUNKED_MIN`] when the server did not say.
pub fn chunked_threshold(limits: Option<&Limits>) -> u64 {
    match limits {
        Some(l) => l.chunked_min.min(l.max_blob_bytes.saturating_add(1)).max(1),
        None => CHUNKED_MIN,
    }
}

/// A server that predates chunked content answers 404 `no such route`.
fn is_missing_route(e: &ClientError) -> bool {
    e.status() == Some(StatusCode::NOT_FOUND)
        && e.has_code(ErrorCode::NotFound)
        && e.to_string().contains("no such route")
}

impl Client {
    /// The subset of `hashes` this project has not uploaded yet, in order.
    pub async fn missing_blobs(&self, project: &str, hashes: &[BlobHash]) -> ClientResult<Vec<BlobHash>> {
        let mut missing = Vec::new();
        for batch in hashes.chunks(MISSING_BATCH) {
            let answer: MissingBlobsResponse = self
                .post(
                    &Self::project_route(project, "/blobs/missing"),
                    &MissingBlobsRequest { hashes: batch.to_vec() },
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
            .json(self.request(
                Method::GET,
                &Self::project_route(project, &format!("/manifests/{hash}")),
            ))
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

    /// [`Client::upload_file_within`] without knowing the server's limits:
    /// by chunks from [`CHUNKED_MIN`] bytes.
    pub async fn upload_file(&self, project: &str, hash: &BlobHash, path: &Path) -> ClientResult<BlobReceipt> {
        Ok(self.upload_file_within(project, hash, path, None).await?)
    }

    /// Uploads a local file whose content hashes to `hash`: as one blob
    /// below [`chunked_threshold`] bytes, else by chunks, sending only the
    /// chunks the project lacks (so a retry after a crash or a server
    /// restart resumes), then the manifest, which alone makes `hash` usable
    /// in a commit. Bytes that do not hash to `hash` are never registered
    /// under it ([`UploadError::Changed`]).
    pub async fn upload_file_within(
        &self,
        project: &str,
        hash: &BlobHash,
        path: &Path,
        limits: Option<&Limits>,
    ) -> Result<BlobReceipt, UploadError> {
        let file = std::fs::File::open(path).map_err(|e| UploadError::local(path, e))?;
        let size = file.metadata().map_err(|e| UploadError::local(path, e))?.len();
        if let Some(limit) = limits.map(|l| l.max_file_bytes).filter(|limit| size > *limit) {
            return Err(UploadError::TooLarge {
                path: path.to_path_buf(),
                size,
                limit,
            });
        }
        if size < chunked_threshold(limits) {
            return self.upload_whole(project, hash, path).await;
        }
        let file = Arc::new(file);
        let manifest = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || manifest_of(std::io::BufReader::with_capacity(1 << 20, &*file)))
                .await
                .map_err(|e| UploadError::local(path, std::io::Error::other(e)))?
                .map_err(|e| UploadError::local(path, e))?
        };
        if manifest.hash != *hash {
            return Err(UploadError::Changed {
                path: path.to_path_buf(),
                detail: format!("it hashes to {}, not {hash}", manifest.hash),
            });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = match self.upload_missing_chunks(project, &manifest, &file, path).await {
                Err(UploadError::Server(e)) if is_missing_route(&e) => {
                    // A server without chunked content: one PUT, as before.
                    return self.upload_whole(project, hash, path).await;
                }
                other => other?,
            };
            match self.put_manifest(project, &manifest).await {
                Ok(receipt) => {
                    info!(%hash, size = manifest.size, chunks = manifest.chunks.len(), sent, "uploaded by chunks");
                    return Ok(receipt);
                }
                // A chunk went missing since the check (collected as
                // garbage before the manifest referred to it): again.
                Err(e) if e.has_code(ErrorCode::BlobMissing) && attempt < MANIFEST_ATTEMPTS => {
                    debug!(%hash, error = %e, "a chunk went missing before the manifest; checking again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One PUT of the whole file; the server checks the hash.
    async fn upload_whole(&self, project: &str, hash: &BlobHash, path: &Path) -> Result<BlobReceipt, UploadError> {
        match self.put_blob_file(project, hash, path).await {
            Ok(receipt) => Ok(receipt),
            Err(e) if e.has_code(ErrorCode::HashMismatch) => Err(UploadError::Changed {
                path: path.to_path_buf(),
                detail: format!("the server found it does not hash to {hash}"),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Uploads the chunks of `manifest` the project lacks, reading each from
    /// `file` and checking it still hashes to its name. Returns how many
    /// were sent.
    async fn upload_missing_chunks(
        &self,
        project: &str,
        manifest: &Manifest,
        file: &Arc<std::fs::File>,
        path: &Path,
    ) -> Result<usize, UploadError> {
        let hashes: Vec<BlobHash> = manifest.chunks.iter().map(|c| c.hash.clone()).collect();
        let missing: HashSet<BlobHash> = self.missing_blobs(project, &hashes).await?.into_iter().collect();
        let mut queued = HashSet::new();
        let todo: Vec<(u64, u64, BlobHash)> = manifest
            .spans()
            .into_iter()
            .map(|s| (s.offset, s.size, manifest.chunks[s.index].hash.clone()))
            .filter(|(_, _, h)| missing.contains(h) && queued.insert(h.clone()))
            .collect();
        debug!(hash = %manifest.hash, chunks = hashes.len(), missing = todo.len(), "uploading by chunks");
        let count = todo.len();
        let sent = std::sync::atomic::AtomicUsize::new(0);
        let sent = &sent;
        let uploaded = futures_util::stream::iter(todo.into_iter().map(|(offset, size, chunk)| async move {
            let _permit = CHUNKS_IN_FLIGHT
                .acquire()
                .await
                .map_err(|e| UploadError::local(path, std::io::Error::other(e)))?;
            let file = file.clone();
            let bytes = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; size as usize];
                file.read_exact_at(&mut buf, offset).map(|_| buf)
            })
            .await
            .map_err(|e| UploadError::local(path, std::io::Error::other(e)))?
            .map_err(|e| UploadError::local(path, e))?;
            let bytes = Bytes::from(bytes);
            if BlobHash::of(&bytes) != chunk {
                return Err(UploadError::Changed {
                    path: path.to_path_buf(),
                    detail: format!("it changed while it was uploaded (the chunk at byte {offset})"),
                });
            }
            self.put_blob(project, bytes).await?;
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }))
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_collect::<Vec<()>>()
        .await;
        if let Err(e) = uploaded {
            let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
            warn!(hash = %manifest.hash, sent, missing = count, error = %e, "chunked upload interrupted; a retry sends only the chunks still missing");
            return Err(e);
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_file_bytes: u64, max_blob_bytes: u64, chunked_min: u64) -> Limits {
        Limits {
            max_file_bytes,
            max_blob_bytes,
            chunked_min,
        }
    }

    #[test]
    fn the_threshold_is_the_servers_unless_one_put_could_not_carry_the_file() {
        assert_eq!(chunked_threshold(None), CHUNKED_MIN);
        assert_eq!(chunked_threshold(Some(&limits(1 << 40, 1 << 30, 16 << 20))), 16 << 20);
        // A file of exactly max_blob_bytes still fits one PUT; one more byte does not.
        assert_eq!(chunked_threshold(Some(&limits(1 << 40, 4096, 16 << 20))), 4097);
        assert_eq!(chunked_threshold(Some(&limits(1 << 40, 0, 0))), 1);
    }

    #[tokio::test]
    async fn a_file_over_the_servers_file_limit_is_refused_before_any_request() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big");
        std::fs::write(&path, vec![7u8; 5000]).expect("write");
        // Nothing listens there: any request would fail as unreachable.
        let client = Client::new("http://127.0.0.1:9", None).expect("client");
        let hash = BlobHash::of(&[7u8; 5000]);
        let err = client
            .upload_file_within("p", &hash, &path, Some(&limits(4096, 1 << 20, 1 << 20)))
            .await
            .expect_err("over the limit");
        assert!(
            matches!(
                err,
                UploadError::TooLarge {
                    size: 5000,
                    limit: 4096,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn bytes_that_do_not_hash_to_the_name_are_refused_before_any_chunk_is_sent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("changed");
        std::fs::write(&path, vec![1u8; 3 << 20]).expect("write");
        let client = Client::new("http://127.0.0.1:9", None).expect("client");
        let err = client
            .upload_file_within(
                "p",
                &BlobHash::of(b"other bytes"),
                &path,
                Some(&limits(1 << 40, 1 << 20, 1 << 20)),
            )
            .await
            .expect_err("the hash does not match");
        assert!(matches!(err, UploadError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("does not hold the content"), "{err}");
    }

    #[tokio::test]
    async fn an_unreadable_file_is_a_local_error_and_an_unreachable_server_a_transient_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let client = Client::new("http://127.0.0.1:9", None).expect("client");
        let gone = dir.path().join("gone");
        let err = client
            .upload_file_within("p", &BlobHash::of(b""), &gone, None)
            .await
            .expect_err("no such file");
        assert!(matches!(err, UploadError::Local { .. }) && !err.is_transient(), "{err}");
        let path = dir.path().join("small");
        std::fs::write(&path, b"hello").expect("write");
        let err = client
            .upload_file_within("p", &BlobHash::of(b"hello"), &path, None)
            .await
            .expect_err("nothing listens");
        assert!(err.is_transient(), "{err}");
    }
}
