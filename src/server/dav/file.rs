//! Open files of the WebDAV handler: reads stream the version's blob (a seek
//! for a range request restarts the stream at that offset); writes, used
//! only when a client writes through LOCK-created files or the handler's own
//! fallbacks, are buffered and committed on flush. PUT has its own path
//! (`put.rs`), which streams.

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

/// A file opened for writing: the whole new content, committed on flush
/// with the version it was opened at as the base (so edits merge).
pub struct WriteFile {
    fs: ProjectFs,
    path: WsPath,
    base: Option<VersionInfo>,
    buffer: BytesMut,
    pos: usize,
    dirty: bool,
}

impl std::fmt::Debug for WriteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFile")
            .field("path", &self.path)
            .field("len", &self.buffer.len())
            .finish()
    }
}

impl WriteFile {
    pub fn new(fs: ProjectFs, path: WsPath, base: Option<VersionInfo>) -> Self {
        Self {
            fs,
            path,
            base,
            buffer: BytesMut::new(),
            pos: 0,
            dirty: false,
        }
    }

    fn write_at_pos(&mut self, data: &[u8]) -> Result<(), FsError> {
        let end = self.pos + data.len();
        if end as u64 > self.fs.service.limits.max_blob_bytes {
            return Err(FsError::TooLarge);
        }
        if end > self.buffer.len() {
            self.buffer.resize(end, 0);
        }
        self.buffer[self.pos..end].copy_from_slice(data);
        self.pos = end;
        self.dirty = true;
        Ok(())
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
        meta.len = self.buffer.len() as u64;
        let meta: Box<dyn DavMetaData> = Box::new(meta);
        async move { Ok(meta) }.boxed()
    }
    fn write_buf(&mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async move {
            while buf.has_remaining() {
                let chunk = buf.chunk().to_vec();
                self.write_at_pos(&chunk)?;
                buf.advance(chunk.len());
            }
            Ok(())
        }
        .boxed()
    }
    fn write_bytes(&mut self, buf: Bytes) -> FsFuture<'_, ()> {
        async move { self.write_at_pos(&buf) }.boxed()
    }
    fn read_bytes(&mut self, _count: usize) -> FsFuture<'_, Bytes> {
        async { Err(FsError::Forbidden) }.boxed()
    }
    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            let target = seek_target(pos, self.pos as u64, self.buffer.len() as u64)?;
            self.pos = usize::try_from(target).map_err(|_| FsError::TooLarge)?;
            Ok(target)
        }
        .boxed()
    }
    fn flush(&mut self) -> FsFuture<'_, ()> {
        async move {
            if !self.dirty {
                return Ok(());
            }
            let base = self.base.as_ref().map(|v| v.version);
            let bytes = self.buffer.clone().freeze();
            let written = self.fs.commit_bytes(&self.path, base, bytes).await?;
            self.base = Some(written);
            self.dirty = false;
            Ok(())
        }
        .boxed()
    }
}
