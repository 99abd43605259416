//! Blobs in S3-compatible object storage: `PREFIX/blobs/ab/abcdef…`.
//!
//! Nothing unverified ever appears under a hash:
//!
//! - Bodies up to [`SMALL_BODY`] are buffered in memory, hashed, checked and
//!   only then PUT to their final key.
//! - Larger bodies with an expected hash (every client upload) stream into a
//!   multipart upload *at the final key*, hashing on the way. S3 shows a
//!   multipart object only once it is completed, and it is completed only
//!   after the last byte hashed to the expected value; otherwise it is aborted.
//! - Larger bodies without an expected hash (one-call `PUT .../files/...`)
//!   stream into a multipart upload at `PREFIX/tmp/<random>`; once hashed the
//!   temporary object is copied under its hash and deleted.
//!
//! A process killed mid-upload leaves at most an incomplete multipart upload
//! (invisible; a bucket lifecycle rule reclaims it) or a `tmp/` object, which
//! [`S3BlobStore::open`] removes once it is a day old (other instances may
//! still be writing younger ones).
//!
//! Keys are written before any metadata refers to them: the service uploads
//! first and commits after.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

use super::{BlobError, BlobStore, ByteStream, Deletion, StoredBlob};
use crate::model::BlobHash;

/// Bodies up to this size are verified in memory and PUT in one request.
pub const SMALL_BODY: usize = 8 << 20;
/// Already stored blobs up to this size are written again on upload, which
/// refreshes their time for garbage collection.
const REFRESH_BELOW: usize = 1 << 20;
/// Multipart part size (S3 wants at least 5 MiB for every part but the last).
const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once (memory per upload ≈ (1 + this) × PART_SIZE).
const PARTS_IN_FLIGHT: usize = 2;
/// `tmp/` objects older than this are leftovers of crashed uploads.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);
/// Longest wait for one S3 request (a HEAD, a small PUT, the headers of a
/// GET, a copy). The HTTP client itself has no overall timeout, because a
/// blob streamed to a slow reader may take as long as the reader needs;
/// TCP keepalive notices a peer that went away.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// `fut`, or a timeout error after [`REQUEST_TIMEOUT`].
async fn bounded<T>(fut: impl std::future::Future<Output = object_store::Result<T>>) -> object_store::Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(object_store::Error::Generic {
            store: "S3",
            source: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()).into(),
        }),
    }
}

/// Where the blobs live: parsed from `s3://bucket[/prefix]` plus endpoint and region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket root.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket` or `s3://bucket/some/prefix`.
    pub fn parse(url: &str) -> Result<Self, BlobError> {
        let bad = |why: &str| {
            BlobError::Io(format!(
                "{url:?} is not an S3 location ({why}); expected s3://bucket[/prefix]"
            ))
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3-63 lowercase letters, digits, '-' or '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
        let segment_ok =
            |s: &&str| *s != "." && *s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !segments.iter().all(segment_ok) {
            return Err(bad("prefix segments may hold only letters, digits, '-', '_' and '.'"));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: segments.join("/"),
        })
    }

    fn key(&self, rest: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rest)
        } else {
            ObjectPath::from(format!("{}/{rest}", self.prefix))
        }
    }

    /// `PREFIX/blobs/ab/<hash>`
    pub fn blob_key(&self, hash: &BlobHash) -> ObjectPath {
        let hex = hash.as_str();
        self.key(&format!("blobs/{}/{hex}", &hex[..2]))
    }

    /// `PREFIX/blobs`
    pub fn blobs_dir(&self) -> ObjectPath {
        self.key("blobs")
    }

    /// `PREFIX/tmp`
    pub fn tmp_dir(&self) -> ObjectPath {
        self.key("tmp")
    }

    fn tmp_key(&self) -> ObjectPath {
        self.key(&format!("tmp/upload-{}", hex::encode(rand::random::<[u8; 12]>())))
    }
}

/// Connection settings for [`S3BlobStore::open`].
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// `http(s)://host:port` of a non-AWS service (MinIO, Garage, moto, ...).
    /// Requests then use path-style addressing (`endpoint/bucket/key`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// Builds a client for `location`: credentials (and anything else `AWS_*`)
/// from the environment, endpoint and region from `settings`.
pub fn client(location: &S3Location, settings: &S3Settings) -> Result<AmazonS3, BlobError> {
    let options = object_store::ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(10));
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&location.bucket)
        .with_client_options(options);
    if let Some(region) = &settings.region {
        builder = builder.with_region(region);
    }
    if let Some(endpoint) = &settings.endpoint {
        builder = builder
            .with_endpoint(endpoint.trim_end_matches('/'))
            .with_virtual_hosted_style_request(false)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    builder
        .build()
        .map_err(|e| BlobError::Io(format!("cannot configure S3 for bucket {}: {e}", location.bucket)))
}

pub struct S3BlobStore {
    store: Arc<dyn ObjectStore>,
    location: S3Location,
}

fn s3_err(what: &str, key: &ObjectPath, e: object_store::Error) -> BlobError {
    BlobError::Io(format!("S3 {what} {key}: {e}"))
}

impl S3BlobStore {
    /// Opens `s3://bucket[/prefix]` and checks that the bucket answers (a
    /// wrong bucket, endpoint or credential fails here, not on first upload).
    /// Stale `tmp/` leftovers are removed in the background.
    pub fn open(url: &str, settings: &S3Settings) -> Result<Self, BlobError> {
        let location = S3Location::parse(url)?;
        let store: Arc<dyn ObjectStore> = Arc::new(client(&location, settings)?);
        let this = Self { store, location };
        this.check_reachable(settings)?;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = this.store.clone();
            let tmp = this.location.tmp_dir();
            handle.spawn(async move {
                if let Err(e) = remove_stale_tmp(store, tmp).await {
                    tracing::warn!(error = %e, "cannot clean up stale S3 upload leftovers");
                }
            });
        }
        Ok(this)
    }

    /// The parsed bucket and prefix.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// One LIST request on a throwaway client and runtime, on its own thread,
    /// so this works from sync code inside or outside any runtime.
    fn check_reachable(&self, settings: &S3Settings) -> Result<(), BlobError> {
        let location = self.location.clone();
        let settings = settings.clone();
        std::thread::spawn(move || -> Result<(), BlobError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| BlobError::Io(format!("cannot start a runtime: {e}")))?;
            rt.block_on(async {
                let store = client(&location, &settings)?;
                let dir = location.blobs_dir();
                tokio::time::timeout(Duration::from_secs(60), store.list_with_delimiter(Some(&dir)))
                    .await
                    .map_err(|_| BlobError::Io(format!("S3 bucket {} did not answer within 60 s", location.bucket)))?
                    .map_err(|e| BlobError::Io(format!("cannot list s3://{}/{dir}: {e}", location.bucket)))?;
                Ok(())
            })
        })
        .join()
        .map_err(|_| BlobError::Io("the S3 check thread panicked".into()))?
    }

    async fn exists(&self, key: &ObjectPath) -> Result<bool, BlobError> {
        match bounded(self.store.head(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(s3_err("HEAD", key, e)),
        }
    }

    /// Small body, already verified: PUT it under its hash unless present.
    async fn put_small(&self, hash: &BlobHash, parts: Vec<Bytes>) -> Result<bool, BlobError> {
        let key = self.location.blob_key(hash);
        let existed = self.exists(&key).await?;
        let size: usize = parts.iter().map(Bytes::len).sum();
        if existed && size > REFRESH_BELOW {
            return Ok(false);
        }
        // A small blob that is already stored is written again: the new
        // object time tells garbage collection it was just uploaded (S3 has
        // no cheaper way to touch an object), so it is not deleted under the
        // commit that follows.
        bounded(self.store.put(&key, PutPayload::from_iter(parts)))
            .await
            .map_err(|e| s3_err("PUT", &key, e))?;
        Ok(!existed)
    }
}

async fn remove_stale_tmp(store: Arc<dyn ObjectStore>, tmp: ObjectPath) -> Result<(), object_store::Error> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(STALE_TMP).unwrap_or_default();
    let mut listing = store.list(Some(&tmp));
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        if meta.last_modified < cutoff {
            store.delete(&meta.location).await?;
            tracing::info!(key = %meta.location, "removed a stale S3 upload leftover");
        }
    }
    Ok(())
}

/// Hashes and counts a body while it streams, enforcing the size limit.
struct Meter {
    hasher: blake3::Hasher,
    size: u64,
    limit: u64,
}

impl Meter {
    fn feed(&mut self, chunk: &Result<Bytes, std::io::Error>) -> Result<(), BlobError> {
        let chunk = chunk.as_ref().map_err(|e| BlobError::Upload(e.to_string()))?;
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    fn check(&self, expected: Option<&BlobHash>) -> Result<BlobHash, BlobError> {
        let actual = BlobHash::from_blake3(self.hasher.finalize());
        match expected {
            Some(expected) if *expected != actual => Err(BlobError::HashMismatch {
                expected: expected.clone(),
                actual,
            }),
            _ => Ok(actual),
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn size(&self, hash: &BlobHash) -> Result<Option<u64>, BlobError> {
        let key = self.location.blob_key(hash);
        match bounded(self.store.head(&key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err("HEAD", &key, e)),
        }
    }

    async fn put_stream(
        &self,
        expected: Option<&BlobHash>,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<(BlobHash, u64, bool), BlobError> {
        let mut meter = Meter {
            hasher: blake3::Hasher::new(),
            size: 0,
            limit,
        };
        // 1. Buffer up to SMALL_BODY; most blobs end here.
        let mut head: Vec<Bytes> = Vec::new();
        let mut overflow = false;
        while let Some(chunk) = body.next().await {
            meter.feed(&chunk)?;
            head.push(chunk.map_err(|e| BlobError::Upload(e.to_string()))?);
            if meter.size > SMALL_BODY as u64 {
                overflow = true;
                break;
            }
        }
        if !overflow {
            let hash = meter.check(expected)?;
            let created = self.put_small(&hash, head).await?;
            return Ok((hash, meter.size, created));
        }

        // Already stored under the hash it claims: read and verify the rest
        // without sending it anywhere.
        if let Some(claimed) = expected {
            if self.exists(&self.location.blob_key(claimed)).await? {
                while let Some(chunk) = body.next().await {
                    meter.feed(&chunk)?;
                }
                let hash = meter.check(expected)?;
                return Ok((hash, meter.size, false));
            }
        }

        // 2. Stream the rest into a multipart upload: at the final key when the
        //    hash is known (completed only once verified), else at a temp key.
        let target = match expected {
            Some(hash) => self.location.blob_key(hash),
            None => self.location.tmp_key(),
        };
        let upload = self
            .store
            .put_multipart(&target)
            .await
            .map_err(|e| s3_err("starting a multipart upload to", &target, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        for part in head {
            writer.put(part);
        }
        let streamed: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                meter.feed(&chunk)?;
                bounded(writer.wait_for_capacity(PARTS_IN_FLIGHT))
                    .await
                    .map_err(|e| s3_err("uploading a part of", &target, e))?;
                writer.put(chunk.map_err(|e| BlobError::Upload(e.to_string()))?);
            }
            // Every part but the last has landed before anything is verified.
            bounded(writer.wait_for_capacity(1))
                .await
                .map_err(|e| s3_err("uploading a part of", &target, e))?;
            Ok(())
        }
        .await;
        let verified = streamed.and_then(|()| meter.check(expected));
        let hash = match verified {
            Ok(hash) => hash,
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key = %target, error = %abort, "cannot abort a failed multipart upload");
                }
                return Err(e);
            }
        };
        let final_key = self.location.blob_key(&hash);
        let existed = self.exists(&final_key).await?;
        if expected.is_some() {
            if existed {
                // Same bytes are already there: don't rewrite them.
                let _ = writer.abort().await;
            } else {
                bounded(writer.finish())
                    .await
                    .map_err(|e| s3_err("completing the multipart upload of", &final_key, e))?;
            }
            return Ok((hash, meter.size, !existed));
        }
        let finished = bounded(writer.finish())
            .await
            .map_err(|e| s3_err("completing the multipart upload of", &target, e));
        let published = match finished {
            Ok(_) if existed => Ok(()),
            Ok(_) => bounded(self.store.copy(&target, &final_key))
                .await
                .map_err(|e| s3_err("copying the verified upload to", &final_key, e)),
            Err(e) => Err(e),
        };
        if let Err(e) = bounded(self.store.delete(&target)).await {
            if !matches!(e, object_store::Error::NotFound { .. }) {
                tracing::warn!(key = %target, error = %e, "cannot delete a temporary upload");
            }
        }
        published?;
        Ok((hash, meter.size, !existed))
    }

    async fn put_bytes(&self, bytes: Bytes) -> Result<BlobHash, BlobError> {
        let hash = BlobHash::of(&bytes);
        let len = bytes.len() as u64;
        let stream: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(bytes) }));
        let (hash, _, _) = self.put_stream(Some(&hash), stream, len).await?;
        Ok(hash)
    }

    async fn get(&self, hash: &BlobHash) -> Result<(u64, ByteStream), BlobError> {
        let key = self.location.blob_key(hash);
        let got = match bounded(self.store.get(&key)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound(hash.clone())),
            Err(e) => return Err(s3_err("GET", &key, e)),
        };
        let size = got.meta.size;
        let stream = got
            .into_stream()
            .map_err(move |e| std::io::Error::other(format!("S3 GET {key}: {e}")));
        Ok((size, Box::pin(stream)))
    }

    async fn get_range(&self, hash: &BlobHash, offset: u64, len: u64) -> Result<ByteStream, BlobError> {
        if len == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let key = self.location.blob_key(hash);
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(offset..offset + len)),
            ..Default::default()
        };
        let got = match bounded(self.store.get_opts(&key, options)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound(hash.clone())),
            Err(e) => return Err(s3_err("GET (range)", &key, e)),
        };
        let stream = got
            .into_stream()
            .map_err(move |e| std::io::Error::other(format!("S3 GET {key} (range): {e}")));
        Ok(Box::pin(stream))
    }

    async fn read_all(&self, hash: &BlobHash, limit: u64) -> Result<Vec<u8>, BlobError> {
        let key = self.location.blob_key(hash);
        let got = match bounded(self.store.get(&key)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound(hash.clone())),
            Err(e) => return Err(s3_err("GET", &key, e)),
        };
        if got.meta.size > limit {
            return Err(BlobError::TooLarge { limit });
        }
        let bytes = bounded(got.bytes()).await.map_err(|e| s3_err("GET", &key, e))?;
        Ok(bytes.to_vec())
    }

    async fn list(&self) -> Result<Vec<StoredBlob>, BlobError> {
        let dir = self.location.blobs_dir();
        let strip = format!("{dir}/");
        let mut listing = self.store.list(Some(&dir));
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| s3_err("LIST", &dir, e))?;
            let name = meta.location.to_string();
            let name = name.strip_prefix(&strip).unwrap_or(&name).to_string();
            let hash = match name.split_once('/') {
                Some((shard, file)) => BlobHash::parse(file).ok().filter(|h| h.as_str().starts_with(shard)),
                None => None,
            };
            found.push(StoredBlob {
                name,
                hash,
                size: meta.size,
                modified: meta.last_modified.into(),
            });
        }
        Ok(found)
    }

    /// S3 has no rename to decide on atomically: the object's time is read
    /// right before the delete, which leaves a window of one round trip
    /// (docs/OPERATIONS.md).
    async fn delete_if_idle(&self, hash: &BlobHash, cutoff: SystemTime) -> Result<Deletion, BlobError> {
        let key = self.location.blob_key(hash);
        let meta = match bounded(self.store.head(&key)).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Ok(Deletion::Missing),
            Err(e) => return Err(s3_err("HEAD", &key, e)),
        };
        if SystemTime::from(meta.last_modified) >= cutoff {
            return Ok(Deletion::Recent);
        }
        match bounded(self.store.delete(&key)).await {
            Ok(()) => Ok(Deletion::Deleted { size: meta.size }),
            Err(object_store::Error::NotFound { .. }) => Ok(Deletion::Missing),
            Err(e) => Err(s3_err("DELETE", &key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let l = S3Location::parse("s3://my-bucket").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", ""));
        let l = S3Location::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", "a/b"));
        let hash = BlobHash::of(b"x");
        let key = l.blob_key(&hash).to_string();
        assert_eq!(key, format!("a/b/blobs/{}/{}", &hash.as_str()[..2], hash.as_str()));
        let root = S3Location::parse("s3://bkt").unwrap();
        assert!(root.blob_key(&hash).to_string().starts_with("blobs/"));
        for bad in [
            "http://b/x",
            "s3://",
            "s3://UPPER",
            "s3://ok-bucket/../x",
            "s3://ok-bucket/a b",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
