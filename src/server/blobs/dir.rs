//! Blobs as files under a local directory: `blobs/ab/abcdef…`.
//!
//! Uploads stream into `tmp/`, are hashed on the way, fsynced, renamed into
//! place and the directory entry is fsynced too, so an acknowledged blob
//! survives a crash and a torn upload never appears under a hash.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{BlobError, BlobStore, ByteStream, Deletion, StoredBlob};
use crate::model::BlobHash;

pub struct DirBlobStore {
    root: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> BlobError {
    BlobError::Io(format!("{what} {}: {e}", path.display()))
}

impl DirBlobStore {
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        for sub in ["blobs", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        }
        // Every `blobs/ab/` exists (and is durable in `blobs/`) before the first
        // upload, so publishing a blob only ever has to fsync its own directory.
        let blobs = root.join("blobs");
        for prefix in 0..=255u8 {
            let dir = blobs.join(format!("{prefix:02x}"));
            std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        }
        std::fs::File::open(&blobs)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("cannot fsync", &blobs, e))?;
        // Leftovers of uploads interrupted by a crash are never referenced.
        // Only old ones go: another instance sharing this folder may be
        // uploading right now.
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for entry in entries.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(3600));
                if stale {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path_of(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.as_str();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    fn temp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("upload-{:016x}", rand::random::<u64>()))
    }

    /// Moves a written and fsynced temp file under its hash and fsyncs the
    /// directory; false (and the temp file removed) when the blob was there.
    fn publish_blocking(temp: &Path, target: &Path) -> Result<bool, BlobError> {
        if touch_durably(target) {
            let _ = std::fs::remove_file(temp);
            return Ok(false);
        }
        Self::move_into_place_durably(temp, target)?;
        Ok(true)
    }

    /// Writes `bytes` to the temp file `temp`, fsynced when `sync`; the temp
    /// file is removed if that fails.
    fn write_temp(temp: &Path, bytes: &[u8], sync: bool) -> Result<(), BlobError> {
        let written = std::fs::File::create(temp).and_then(|mut file| {
            std::io::Write::write_all(&mut file, bytes)?;
            if sync {
                file.sync_all()?;
            }
            Ok(())
        });
        written.map_err(|e| {
            let _ = std::fs::remove_file(temp);
            io_err("cannot write", temp, e)
        })
    }

    /// [`Self::move_into_place`], then fsyncs the directory entry.
    fn move_into_place_durably(temp: &Path, target: &Path) -> Result<(), BlobError> {
        Self::move_into_place(temp, target)?;
        fsync_parent(target).map_err(|e| io_err("cannot fsync the directory of", target, e))
    }

    /// Renames a written temp file to `target` (the temp file removed if
    /// that fails). `open` made every `blobs/ab/`: no mkdir per blob, unless
    /// someone removed the directory since.
    fn move_into_place(temp: &Path, target: &Path) -> Result<(), BlobError> {
        let mut moved = std::fs::rename(temp, target);
        if moved.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) && temp.exists() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_err("cannot create", parent, e))?;
            }
            moved = std::fs::rename(temp, target);
        }
        moved.map_err(|e| {
            let _ = std::fs::remove_file(temp);
            io_err("cannot move blob to", target, e)
        })
    }

    async fn publish(&self, temp: PathBuf, hash: &BlobHash) -> Result<bool, BlobError> {
        let target = self.path_of(hash);
        tokio::task::spawn_blocking(move || Self::publish_blocking(&temp, &target))
            .await
            .map_err(|e| BlobError::Io(format!("blob writer task failed: {e}")))?
    }
}

/// Marks an existing blob as just uploaded, so garbage collection keeps it
/// for the commit that follows; false when it does not exist (any more).
fn touch(target: &Path) -> bool {
    std::fs::OpenOptions::new()
        .append(true)
        .open(target)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .is_ok()
}

/// [`touch`], for a write that must be durable when it returns: the blob
/// found may be a deferred one (`put_bytes_deferred`) not synced yet, so it
/// is fsynced, with its directory entry. (Cheap when it was synced already.)
fn touch_durably(target: &Path) -> bool {
    let synced = std::fs::OpenOptions::new().append(true).open(target).and_then(|f| {
        f.set_modified(SystemTime::now())?;
        f.sync_all()
    });
    // Should the directory fail to sync, writing the blob again will do.
    synced.is_ok() && fsync_parent(target).is_ok()
}

/// fsync of the directory that holds `path`.
fn fsync_parent(path: &Path) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(parent).and_then(|d| d.sync_all())
}

/// `blobs/ab/<hash>` files, and anything else found under `blobs/`.
fn list_blocking(blobs: &Path) -> Result<Vec<StoredBlob>, BlobError> {
    let mut found = Vec::new();
    let read_dir = |dir: &Path| std::fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e));
    for shard in read_dir(blobs)? {
        let shard = shard.map_err(|e| io_err("cannot list", blobs, e))?;
        let shard_name = shard.file_name().to_string_lossy().into_owned();
        let meta = shard.metadata().map_err(|e| io_err("cannot stat", &shard.path(), e))?;
        if !meta.is_dir() {
            found.push(StoredBlob {
                name: shard_name,
                hash: None,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
            continue;
        }
        for entry in read_dir(&shard.path())? {
            let entry = entry.map_err(|e| io_err("cannot list", &shard.path(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Deleted since the listing began (another collector).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("cannot stat", &entry.path(), e)),
            };
            let hash = BlobHash::parse(&name)
                .ok()
                .filter(|h| meta.is_file() && h.as_str().starts_with(&shard_name));
            found.push(StoredBlob {
                name: format!("{shard_name}/{name}"),
                hash,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(found)
}

/// Moves the blob aside first, then decides on the moved file's time: an
/// upload that touched it before the move is seen and the blob goes back;
/// one after the move finds no blob and writes a fresh one.
fn delete_if_idle_blocking(target: &Path, aside: &Path, cutoff: SystemTime) -> Result<Deletion, BlobError> {
    match std::fs::rename(target, aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Deletion::Missing),
        Err(e) => return Err(io_err("cannot move aside", target, e)),
    }
    let meta = std::fs::metadata(aside).map_err(|e| io_err("cannot stat", aside, e))?;
    let recent = meta.modified().map(|m| m >= cutoff).unwrap_or(true);
    if recent {
        // A fresh upload may have published the same bytes meanwhile: either copy will do.
        std::fs::rename(aside, target).map_err(|e| io_err("cannot move back", target, e))?;
        return Ok(Deletion::Recent);
    }
    std::fs::remove_file(aside).map_err(|e| io_err("cannot delete", aside, e))?;
    Ok(Deletion::Deleted { size: meta.len() })
}

#[async_trait]
impl BlobStore for DirBlobStore {
    async fn size(&self, hash: &BlobHash) -> Result<Option<u64>, BlobError> {
        match tokio::fs::metadata(self.path_of(hash)).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot stat", &self.path_of(hash), e)),
        }
    }

    async fn put_stream(
        &self,
        expected: Option<&BlobHash>,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<(BlobHash, u64, bool), BlobError> {
        let temp = self.temp_path();
        let mut file = tokio::fs::File::create(&temp)
            .await
            .map_err(|e| io_err("cannot create", &temp, e))?;
        let mut hasher = blake3::Hasher::new();
        let mut size: u64 = 0;
        let outcome: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Upload(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(|e| io_err("cannot write", &temp, e))?;
            }
            file.sync_all().await.map_err(|e| io_err("cannot fsync", &temp, e))?;
            Ok(())
        }
        .await;
        drop(file);
        let actual = BlobHash::from_blake3(hasher.finalize());
        let verified = outcome.and_then(|()| match expected {
            Some(expected) if *expected != actual => Err(BlobError::HashMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            }),
            _ => Ok(()),
        });
        if let Err(e) = verified {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
        let created = self.publish(temp, &actual).await?;
        Ok((actual, size, created))
    }

    /// Small contents (inline commits, merge results) are already in memory:
    /// one blocking task does it all, instead of a thread hop per file call.
    async fn put_bytes(&self, bytes: Bytes) -> Result<BlobHash, BlobError> {
        let hash = BlobHash::of(&bytes);
        let target = self.path_of(&hash);
        let temp = self.temp_path();
        tokio::task::spawn_blocking(move || -> Result<(), BlobError> {
            if touch_durably(&target) {
                return Ok(()); // content-addressed: already stored, and durable
            }
            Self::write_temp(&temp, &bytes, true)?;
            Self::publish_blocking(&temp, &target).map(drop)
        })
        .await
        .map_err(|e| BlobError::Io(format!("blob writer task failed: {e}")))??;
        Ok(hash)
    }

    async fn put_bytes_deferred(&self, bytes: Bytes) -> Result<Option<BlobHash>, BlobError> {
        let hash = BlobHash::of(&bytes);
        let target = self.path_of(&hash);
        let temp = self.temp_path();
        tokio::task::spawn_blocking(move || -> Result<(), BlobError> {
            if touch(&target) {
                return Ok(());
            }
            Self::write_temp(&temp, &bytes, false)?;
            Self::move_into_place(&temp, &target)
        })
        .await
        .map_err(|e| BlobError::Io(format!("blob writer task failed: {e}")))??;
        Ok(Some(hash))
    }

    /// One `syncfs` for every deferred blob since the last: the file
    /// system writes them back together, instead of two fsyncs per blob.
    async fn sync_deferred(&self) -> Result<(), BlobError> {
        let blobs = self.root.join("blobs");
        tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            let dir = std::fs::File::open(&blobs).map_err(|e| io_err("cannot open", &blobs, e))?;
            // SAFETY: syncfs on a descriptor this closure owns.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                return Err(io_err("cannot syncfs", &blobs, std::io::Error::last_os_error()));
            }
            Ok(())
        })
        .await
        .map_err(|e| BlobError::Io(format!("blob sync task failed: {e}")))?
    }

    async fn restore(&self, bytes: Bytes) -> Result<BlobHash, BlobError> {
        let hash = BlobHash::of(&bytes);
        let target = self.path_of(&hash);
        let temp = self.temp_path();
        tokio::task::spawn_blocking(move || -> Result<(), BlobError> {
            Self::write_temp(&temp, &bytes, true)?;
            // Over whatever is there: a torn copy is replaced, a good one
            // by the same bytes.
            Self::move_into_place_durably(&temp, &target)
        })
        .await
        .map_err(|e| BlobError::Io(format!("blob writer task failed: {e}")))??;
        Ok(hash)
    }

    async fn get(&self, hash: &BlobHash) -> Result<(u64, ByteStream), BlobError> {
        let path = self.path_of(hash);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound(hash.clone())),
            Err(e) => return Err(io_err("cannot open", &path, e)),
        };
        let size = file
            .metadata()
            .await
            .map_err(|e| io_err("cannot stat", &path, e))?
            .len();
        Ok((
            size,
            Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)),
        ))
    }

    async fn get_range(&self, hash: &BlobHash, offset: u64, len: u64) -> Result<ByteStream, BlobError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path_of(hash);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound(hash.clone())),
            Err(e) => return Err(io_err("cannot open", &path, e)),
        };
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| io_err("cannot seek in", &path, e))?;
        let capacity = len.clamp(1, 256 * 1024) as usize;
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            file.take(len),
            capacity,
        )))
    }

    async fn read_all(&self, hash: &BlobHash, limit: u64) -> Result<Vec<u8>, BlobError> {
        let path = self.path_of(hash);
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.len() > limit => return Err(BlobError::TooLarge { limit }),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound(hash.clone())),
            Err(e) => return Err(io_err("cannot stat", &path, e)),
        }
        tokio::fs::read(&path)
            .await
            .map_err(|e| io_err("cannot read", &path, e))
    }

    async fn list(&self) -> Result<Vec<StoredBlob>, BlobError> {
        let blobs = self.root.join("blobs");
        tokio::task::spawn_blocking(move || list_blocking(&blobs))
            .await
            .map_err(|e| BlobError::Io(format!("blob listing task failed: {e}")))?
    }

    async fn delete_if_idle(&self, hash: &BlobHash, cutoff: SystemTime) -> Result<Deletion, BlobError> {
        let target = self.path_of(hash);
        let aside = self.root.join("tmp").join(format!("gc-{hash}"));
        tokio::task::spawn_blocking(move || delete_if_idle_blocking(&target, &aside, cutoff))
            .await
            .map_err(|e| BlobError::Io(format!("blob deletion task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_lands_even_when_its_shard_directory_was_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirBlobStore::open(dir.path()).expect("open");
        let first = store.put_bytes(Bytes::from_static(b"first")).await.expect("put");
        let shard = store.path_of(&first).parent().expect("shard").to_path_buf();
        // Someone cleans up the blob folder by hand under a running server.
        std::fs::remove_dir_all(&shard).expect("remove shard");
        let again = store.put_bytes(Bytes::from_static(b"first")).await.expect("put again");
        assert_eq!(again, first);
        assert_eq!(store.read_all(&first, 1 << 20).await.expect("read"), b"first");
        let listed = std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count();
        assert_eq!(listed, 0, "no temp file left behind");
    }
}
