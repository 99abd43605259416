//! Open files of the WebDAV handler: reads stream the version's blob (a seek
//! for a range request restarts the stream at that offset); writes, used
//! only when a client writes through LOCK-created files or the handler's own
//! fallbacks, are held (in memory up to 1 MiB, then in an unnamed temp file)
//! and streamed into a commit on flush, so up to `--max-file-bytes`. PUT has
//! its own path (`put.rs`), which streams.

use std::io::SeekFrom;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use dav_server::fs::{DavFile, DavMetaData, FsError, FsFuture};
use futures_util::{FutureExt, StreamExt};

use super::fs::{fs_error, Meta, ProjectFs};
use crate::api::VersionInfo;
use crate::model::{BlobHash, WsPath};
use crate::server::blobs::ByteStream;
use crate::server::service::Service;

/// A blob being read from `offset`; `pending` holds bytes already received.
struct BlobCursor {
    /// In a mutex only to be `Sync`, as `DavFile` requires; reached with
    /// `get_mut`, never locked.
    stream: std::sync::Mutex<ByteStream>,
    pending: Bytes,
    /// Offset of `pending`'s first byte.
    offset: u64,
}

pub struct ReadFile {
    service: Arc<Service>,
    hash: BlobHash,
    meta: Meta,
    pos: u64,
    cursor: Option<BlobCursor>,
}

impl std::fmt::Debug for ReadFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFile")
            .field("hash", &self.hash)
            .field("pos", &self.pos)
            .finish()
    }
}

impl ReadFile {
    pub fn new(service: Arc<Service>, hash: BlobHash, meta: Meta) -> Self {
        Self {
            service,
            hash,
            meta,
            pos: 0,
            cursor: None,
        }
    }

    async fn cursor_at_pos(&mut self) -> Result<&mut BlobCursor, FsError> {
        let usable = self.cursor.as_ref().is_some_and(|c| c.offset == self.pos);
        if !usable {
            // From the start: the whole blob, verified as it streams; from
            // elsewhere (a range request): only the bytes from there on (for a
            // chunked file, only the chunks that hold them).
            let stream = if self.pos == 0 {
                self.service.blobs.get(&self.hash).await.map(|(_, s)| s)
            } else {
                let len = self.meta.len.saturating_sub(self.pos);
                self.service.blobs.get_range(&self.hash, self.pos, len).await
            }
            .map_err(|e| fs_error(e.into()))?;
            let cursor = BlobCursor {
                stream: std::sync::Mutex::new(stream),
                pending: Bytes::new(),
                offset: self.pos,
            };
            self.cursor = Some(cursor);
        }
        self.cursor.as_mut().ok_or(FsError::GeneralFailure)
    }

    async fn read_up_to(&mut self, count: usize) -> Result<Bytes, FsError> {
        let cursor = self.cursor_at_pos().await?;
        if cursor.pending.is_empty() {
            match stream_of(&mut cursor.stream).next().await {
                Some(Ok(chunk)) => cursor.pending = chunk,
                Some(Err(_)) => return Err(FsError::GeneralFailure),
                None => return Ok(Bytes::new()),
            }
        }
        let take = count.min(cursor.pending.len());
        let out = cursor.pending.split_to(take);
        cursor.offset += take as u64;
        self.pos = cursor.offset;
        Ok(out)
    }
}

fn stream_of(m: &mut std::sync::Mutex<ByteStream>) -> &mut ByteStream {
    m.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn seek_target(pos: SeekFrom, current: u64, len: u64) -> Result<u64, FsError> {
    let target = match pos {
        SeekFrom::Start(n) => Some(n),
        SeekFrom::End(d) => len.checked_add_signed(d),
        SeekFrom::Current(d) => current.checked_add_signed(d),
    };
    target.ok_or(FsError::GeneralFailure)
}

impl DavFile for ReadFile {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        async move { Ok(meta) }.boxed()
    }
    fn write_buf(&mut self, _buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async { Err(FsError::Forbidden) }.boxed()
    }
    fn write_bytes(&mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        async { Err(FsError::Forbidden) }.boxed()
    }
    fn read_bytes(&mut self, count: usize) -> FsFuture<'_, Bytes> {
        self.read_up_to(count).boxed()
    }
    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            self.pos = seek_target(pos, self.pos, self.meta.len)?;
            Ok(self.pos)
        }
        .boxed()
    }
    fn flush(&mut self) -> FsFuture<'_, ()> {
        async { Ok(()) }.boxed()
    }
}

/// Bytes of a written file held in memory; past this the content moves to
/// an unnamed temp file, so a large write never sits in memory.
const SPILL_AT: u64 = 1 << 20;
/// Read size when a spilled file streams into its commit.
const SPILL_READ: usize = 256 * 1024;

/// The new content of a file opened for writing.
enum Written {
    Memory(BytesMut),
    /// In an unnamed temp file (gone when the handle closes), `len` bytes.
    Spilled {
        file: Arc<std::fs::File>,
        len: u64,
    },
}

impl Written {
    fn len(&self) -> u64 {
        match self {
            Written::Memory(buffer) => buffer.len() as u64,
            Written::Spilled { len, .. } => *len,
        }
    }
}

fn spill_error(what: &str, e: impl std::fmt::Display) -> FsError {
    tracing::error!(error = %e, "webdav write: cannot {what} the temp file");
    FsError::GeneralFailure
}

/// A file opened for writing: the whole new content, committed on flush
/// with the version it was opened at as the base (so edits merge).
pub struct WriteFile {
    fs: ProjectFs,
    path: WsPath,
    base: Option<VersionInfo>,
    content: Written,
    pos: u64,
    dirty: bool,
}

impl std::fmt::Debug for WriteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFile")
            .field("path", &self.path)
            .field("len", &self.content.len())
            .finish()
    }
}

impl WriteFile {
    pub fn new(fs: ProjectFs, path: WsPath, base: Option<VersionInfo>) -> Self {
        Self {
            fs,
            path,
            base,
            content: Written::Memory(BytesMut::new()),
            pos: 0,
            dirty: false,
        }
    }

    async fn write_at_pos(&mut self, data: Bytes) -> Result<(), FsError> {
        let end = self.pos + data.len() as u64;
        if end > self.fs.service.limits.max_file_bytes {
            return Err(FsError::TooLarge);
        }
        if end > SPILL_AT {
            self.spill().await?;
        }
        match &mut self.content {
            Written::Memory(buffer) => {
                let (at, end) = (self.pos as usize, end as usize);
                if end > buffer.len() {
                    buffer.resize(end, 0);
                }
                buffer[at..end].copy_from_slice(&data);
            }
            Written::Spilled { file, len } => {
                let (file, at) = (file.clone(), self.pos);
                tokio::task::spawn_blocking(move || std::os::unix::fs::FileExt::write_all_at(&*file, &data, at))
                    .await
                    .map_err(|e| spill_error("write", e))?
                    .map_err(|e| spill_error("write", e))?;
                *len = (*len).max(end);
            }
        }
        self.pos = end;
        self.dirty = true;
        Ok(())
    }

    /// Moves the content from memory to an unnamed temp file (once).
    async fn spill(&mut self) -> Result<(), FsError> {
        let Written::Memory(buffer) = &mut self.content else {
            return Ok(());
        };
        let held = std::mem::take(buffer).freeze();
        let len = held.len() as u64;
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = tempfile::tempfile()?;
            std::os::unix::fs::FileExt::write_all_at(&file, &held, 0)?;
            Ok(file)
        })
        .await
        .map_err(|e| spill_error("create", e))?
        .map_err(|e| spill_error("create", e))?;
        self.content = Written::Spilled {
            file: Arc::new(file),
            len,
        };
        Ok(())
    }

    async fn commit(&mut self) -> Result<VersionInfo, FsError> {
        let base = self.base.as_ref().map(|v| v.version);
        match &self.content {
            Written::Memory(buffer) => {
                let bytes = buffer.clone().freeze();
                self.fs.commit_bytes(&self.path, base, bytes).await
            }
            Written::Spilled { file, len } => {
                // Its own descriptor, read from the start (writes use
                // pwrite, so the shared offset is this reader's alone).
                let mut reader = tokio::fs::File::from_std(file.try_clone().map_err(|e| spill_error("reopen", e))?);
                tokio::io::AsyncSeekExt::seek(&mut reader, SeekFrom::Start(0))
                    .await
                    .map_err(|e| spill_error("read", e))?;
                let body: ByteStream = Box::pin(tokio_util::io::ReaderStream::with_capacity(
                    tokio::io::AsyncReadExt::take(reader, *len),
                    SPILL_READ,
                ));
                self.fs.commit_stream(&self.path, base, body, *len).await
            }
        }
    }
}

impl DavFile for WriteFile {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let mut meta = self
            .base
            .as_ref()
            .map(Meta::of_version)
            .unwrap_or_else(|| Meta::root(self.fs.project.created_at));
        meta.dir = false;
        meta.len = self.content.len();
        let meta: Box<dyn DavMetaData> = Box::new(meta);
        async move { Ok(meta) }.boxed()
    }
    fn write_buf(&mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async move {
            while buf.has_remaining() {
                let chunk = Bytes::copy_from_slice(buf.chunk());
                let n = chunk.len();
                self.write_at_pos(chunk).await?;
                buf.advance(n);
            }
            Ok(())
        }
        .boxed()
    }
    fn write_bytes(&mut self, buf: Bytes) -> FsFuture<'_, ()> {
        self.write_at_pos(buf).boxed()
    }
    fn read_bytes(&mut self, _count: usize) -> FsFuture<'_, Bytes> {
        async { Err(FsError::Forbidden) }.boxed()
    }
    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            self.pos = seek_target(pos, self.pos, self.content.len())?;
            Ok(self.pos)
        }
        .boxed()
    }
    fn flush(&mut self) -> FsFuture<'_, ()> {
        async move {
            if !self.dirty {
                return Ok(());
            }
            let written = self.commit().await?;
            self.base = Some(written);
            self.dirty = false;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Access, CreateProjectRequest};
    use crate::server::auth::Caller;
    use crate::server::blobs::dir::DirBlobStore;
    use crate::server::service::Limits;
    use crate::server::store::sqlite::SqliteStore;

    async fn project_fs(dir: &std::path::Path) -> ProjectFs {
        let store = Arc::new(SqliteStore::open(&dir.join("meta.db")).expect("sqlite"));
        let blobs = Arc::new(DirBlobStore::open(dir).expect("blob folder"));
        let limits = Limits {
            max_blob_bytes: 8 << 20,
            ..Limits::default()
        };
        let service = Arc::new(Service::new(store, blobs, "admin-secret", limits));
        let caller = Caller {
            token_id: "admin".into(),
            admin: true,
            project: None,
            access: Access::ReadWrite,
        };
        let request = CreateProjectRequest { name: "p".into() };
        service.create_project(&caller, request).await.expect("project");
        let project = service.project_for(&caller, "p", true).await.expect("row");
        ProjectFs {
            service,
            caller,
            project,
            agent: None,
            skills: None,
            props: Default::default(),
        }
    }

    /// A write far over `--max-blob-bytes` goes to a temp file, not memory,
    /// and commits as chunks; seeks and overwrites land where they should.
    #[tokio::test]
    async fn a_large_write_spills_to_disk_and_commits_as_chunks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fs = project_fs(dir.path()).await;
        let mut expected = vec![0u8; 20 << 20];
        blake3::Hasher::new()
            .update(b"spill")
            .finalize_xof()
            .fill(&mut expected);
        let mut file = WriteFile::new(fs.clone(), WsPath::parse("big.bin").expect("path"), None);
        for piece in expected.chunks(64 << 10) {
            file.write_bytes(Bytes::copy_from_slice(piece)).await.expect("write");
        }
        assert!(
            matches!(file.content, Written::Spilled { .. }),
            "spilled past {SPILL_AT} bytes"
        );
        file.seek(SeekFrom::Start(5 << 20)).await.expect("seek");
        file.write_bytes(Bytes::from_static(b"overwritten"))
            .await
            .expect("overwrite");
        expected[5 << 20..(5 << 20) + 11].copy_from_slice(b"overwritten");
        file.flush().await.expect("flush commits");

        let version = file.base.clone().expect("committed");
        assert_eq!(
            (version.hash.clone(), version.size),
            (BlobHash::of(&expected), expected.len() as u64)
        );
        let manifest = fs.service.store.manifest(&version.hash).await.expect("store");
        assert!(manifest.is_some_and(|m| m.chunks.len() > 1), "stored as chunks");
        let (_, mut stream) = fs.service.blobs.get(&version.hash).await.expect("read back");
        let mut back = Vec::new();
        while let Some(piece) = stream.next().await {
            back.extend_from_slice(&piece.expect("piece"));
        }
        assert!(back == expected, "the bytes read back");
    }
}
