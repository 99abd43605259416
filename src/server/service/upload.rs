//! Storing a file sent whole in one request (`PUT .../files/{path}`, WebDAV
//! PUT), of any size up to `--max-file-bytes`.
//!
//! A body below the chunked threshold (`CHUNKED_MIN`, or less when
//! `--max-blob-bytes` is smaller: the rule clients follow) is one blob, as
//! before. A larger one is cut while it arrives, by the clients' own FastCDC
//! cutter (`crate::chunks::Chunker`, so a client and the server store the
//! same bytes as the same chunks), each chunk stored as an ordinary blob and
//! recorded as the project's, the whole-file hash computed on the way. Memory
//! stays bounded: a few body pieces, the cutter's 8 MiB window and at most
//! [`CHUNKS_IN_MEMORY`] chunks (cut, waiting or being stored), never the body.
//!
//! Nothing here registers a manifest or commits: [`StoredUpload`] says what
//! was stored and `commit_upload` (commit.rs) registers and commits it. A
//! body that fails (cut off, over a limit, storage error) returns an error
//! before that, so it leaves only chunks no manifest lists: ordinary
//! unreferenced blobs that garbage collection removes after the grace period,
//! like the chunks of a client upload that never sent its manifest.

use std::io::{self, Read};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::Service;
use crate::api::ErrorCode;
use crate::chunks::{ChunkRef, Chunker, CutChunk, Manifest, CHUNKED_MIN, CHUNK_MAX};
use crate::model::BlobHash;
use crate::server::blobs::{BlobError, ByteStream};
use crate::server::error::ApiError;
use crate::server::store::ProjectRow;

/// Body pieces queued for the cutter (hyper's pieces are at most a few
/// hundred KiB each).
const PIECES_IN_FLIGHT: usize = 4;
/// Chunks held at once, from the cut to the end of their store: two let one
/// be written (S3 latency) while the next is cut. Each is at most 8 MiB.
const CHUNKS_IN_MEMORY: usize = 2;
/// A chunk goes to blob storage in pieces of this size (slices, no copy).
const STORE_PIECE: usize = 1 << 20;

/// What an upload left in blob storage, not yet committed.
#[derive(Debug, Clone)]
pub enum StoredUpload {
    /// One blob, as any small file.
    Whole { hash: BlobHash, size: u64 },
    /// Chunks the server cut and stored; the manifest is not registered yet.
    Chunked(Manifest),
}

impl StoredUpload {
    pub fn hash(&self) -> &BlobHash {
        match self {
            StoredUpload::Whole { hash, .. } => hash,
            StoredUpload::Chunked(m) => &m.hash,
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            StoredUpload::Whole { size, .. } => *size,
            StoredUpload::Chunked(m) => m.size,
        }
    }
}

/// Why feeding the body to the cutter stopped early.
enum FeedStop {
    /// The body failed or broke a limit: the answer to the client.
    Refused(ApiError),
    /// The cutter is gone: the chunk side failed and says why.
    CutterGone,
}

impl From<ApiError> for FeedStop {
    fn from(e: ApiError) -> Self {
        FeedStop::Refused(e)
    }
}

impl Service {
    /// Files of at least this many bytes are stored as chunks: what clients
    /// do (`client::chunked::chunked_threshold`), so a blob never has to be
    /// larger than `--max-blob-bytes`.
    pub fn chunked_threshold(&self) -> u64 {
        CHUNKED_MIN.min(self.limits.max_blob_bytes.saturating_add(1)).max(1)
    }

    fn file_too_large(&self, what: String) -> ApiError {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!(
                "the file is {what}, over the server's limit of {} bytes per file (--max-file-bytes); nothing was stored",
                self.limits.max_file_bytes
            ),
        )
    }

    /// Stores `body` (of `declared_len` bytes when the request said so):
    /// whole below the chunked threshold, else as chunks cut on the way.
    pub async fn store_upload(
        &self,
        project: &ProjectRow,
        body: ByteStream,
        declared_len: Option<u64>,
    ) -> Result<StoredUpload, ApiError> {
        if let Some(len) = declared_len.filter(|len| *len > self.limits.max_file_bytes) {
            // Refused before a byte is read (and before `100 Continue`).
            return Err(self.file_too_large(format!("{len} bytes")));
        }
        let threshold = self.chunked_threshold();
        match declared_len {
            Some(len) if len < threshold => self.store_whole(body).await,
            Some(_) => self.store_chunked(project, Vec::new(), body).await,
            // No length (chunked transfer encoding): hold up to the
            // threshold in memory to learn which kind of file it is.
            None => match peek(body, threshold).await? {
                (head, None) => {
                    self.store_whole(Box::pin(futures_util::stream::iter(head.into_iter().map(Ok))))
                        .await
                }
                (head, Some(rest)) => self.store_chunked(project, head, rest).await,
            },
        }
    }

    async fn store_whole(&self, body: ByteStream) -> Result<StoredUpload, ApiError> {
        let limit = self.limits.max_blob_bytes.min(self.limits.max_file_bytes);
        match self.blobs.put_stream(None, body, limit).await {
            Ok((hash, size, _)) => Ok(StoredUpload::Whole { hash, size }),
            Err(BlobError::TooLarge { .. }) if limit == self.limits.max_file_bytes => {
                Err(self.file_too_large(format!("more than {limit} bytes")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Cuts `head` then `rest` into chunks on a blocking thread while this
    /// task feeds it the body and stores the chunks it cuts.
    async fn store_chunked(
        &self,
        project: &ProjectRow,
        head: Vec<Bytes>,
        rest: ByteStream,
    ) -> Result<StoredUpload, ApiError> {
        let (piece_tx, piece_rx) = mpsc::channel(PIECES_IN_FLIGHT);
        let (chunk_tx, chunk_rx) = mpsc::channel(CHUNKS_IN_MEMORY);
        // One credit per chunk the cutter may hold: taken before a cut,
        // given back when that chunk is stored.
        let (credit_tx, credit_rx) = mpsc::channel(CHUNKS_IN_MEMORY);
        for _ in 0..CHUNKS_IN_MEMORY {
            let _ = credit_tx.try_send(());
        }
        let cutter = tokio::task::spawn_blocking(move || cut_chunks(PieceReader::new(piece_rx), credit_rx, chunk_tx));
        let (fed, stored) = tokio::join!(
            self.feed_cutter(head, rest, piece_tx),
            self.store_chunks(project, chunk_rx, credit_tx)
        );
        let cut = cutter
            .await
            .map_err(|e| ApiError::internal(format!("the chunking task failed: {e}")));
        // The first cause wins: the body (cut off, too large), then storage,
        // then the cutter itself.
        match fed {
            Err(FeedStop::Refused(e)) => return Err(e),
            Err(FeedStop::CutterGone) | Ok(_) => {}
        }
        let chunks = stored?;
        let (hash, size) =
            cut?.map_err(|e| ApiError::internal(format!("cutting the upload into chunks failed: {e}")))?;
        let fed_size = fed.map_err(|_| ApiError::internal("the chunker stopped before the end of the upload"))?;
        let manifest = Manifest { hash, size, chunks };
        if fed_size != size || manifest.check_shape().is_err() {
            return Err(ApiError::internal(format!(
                "the upload's chunks do not add up ({size} bytes cut, {fed_size} received)"
            )));
        }
        tracing::debug!(hash = %manifest.hash, size, chunks = manifest.chunks.len(), project = %project.name, "upload stored as chunks");
        Ok(StoredUpload::Chunked(manifest))
    }

    /// Sends the body to the cutter, counting it against `--max-file-bytes`;
    /// the total. A failure is sent on too, so the cutter never takes a cut
    /// body for a whole one.
    async fn feed_cutter(
        &self,
        head: Vec<Bytes>,
        mut rest: ByteStream,
        pieces: mpsc::Sender<io::Result<Bytes>>,
    ) -> Result<u64, FeedStop> {
        let limit = self.limits.max_file_bytes;
        let mut total: u64 = 0;
        let mut head = head.into_iter();
        loop {
            let piece = match head.next() {
                Some(piece) => piece,
                None => match rest.next().await {
                    None => return Ok(total),
                    Some(Ok(piece)) => piece,
                    Some(Err(e)) => {
                        let _ = pieces.send(Err(io::Error::other("the upload was cut off"))).await;
                        tracing::info!(received = total, error = %e, "an upload ended before its body did");
                        return Err(ApiError::from(BlobError::Upload(e.to_string())).into());
                    }
                },
            };
            total += piece.len() as u64;
            if total > limit {
                let _ = pieces
                    .send(Err(io::Error::other("the upload is over the file limit")))
                    .await;
                return Err(self.file_too_large(format!("more than {limit} bytes")).into());
            }
            pieces.send(Ok(piece)).await.map_err(|_| FeedStop::CutterGone)?;
        }
    }

    /// Stores each cut chunk as a blob the project holds, a few at once, in
    /// order: the manifest's chunk list.
    async fn store_chunks(
        &self,
        project: &ProjectRow,
        chunks: mpsc::Receiver<CutChunk>,
        credits: mpsc::Sender<()>,
    ) -> Result<Vec<ChunkRef>, ApiError> {
        let cut = futures_util::stream::unfold(chunks, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        cut.map(|chunk| {
            let credits = credits.clone();
            async move {
                let stored = self.store_chunk(project, chunk).await;
                // The chunk's bytes are dropped: the cutter may cut another.
                let _ = credits.try_send(());
                stored
            }
        })
        .buffered(CHUNKS_IN_MEMORY)
        .try_collect()
        .await
    }

    async fn store_chunk(&self, project: &ProjectRow, chunk: CutChunk) -> Result<ChunkRef, ApiError> {
        let size = chunk.data.len() as u64;
        if size > self.limits.max_blob_bytes {
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                format!(
                    "the chunk at byte {} is {size} bytes, over --max-blob-bytes ({}): files of {} bytes and more are \
                     stored as chunks of up to {CHUNK_MAX} bytes, so this server (--max-blob-bytes below {CHUNK_MAX}) \
                     cannot store them; nothing was committed",
                    chunk.offset,
                    self.limits.max_blob_bytes,
                    self.chunked_threshold()
                ),
            ));
        }
        let data = Bytes::from(chunk.data);
        let pieces: Vec<io::Result<Bytes>> = (0..data.len())
            .step_by(STORE_PIECE)
            .map(|at| Ok(data.slice(at..(at + STORE_PIECE).min(data.len()))))
            .collect();
        let (hash, size, new_to_the_store) = self
            .blobs
            .put_stream(
                Some(&chunk.hash),
                Box::pin(futures_util::stream::iter(pieces)),
                self.limits.max_blob_bytes,
            )
            .await?;
        // Like a client's chunk upload: the project's, so the manifest may
        // list it; garbage collection keeps it for the grace period.
        self.store.record_blob(project.id, &hash).await?;
        if new_to_the_store {
            self.metrics.blob_stored(size);
        }
        Ok(ChunkRef { hash, size })
    }
}

/// Reads the body until `threshold` bytes: the pieces read, and the rest of
/// the body when it goes on (`None`: it ended before).
async fn peek(mut body: ByteStream, threshold: u64) -> Result<(Vec<Bytes>, Option<ByteStream>), ApiError> {
    let mut head = Vec::new();
    let mut held: u64 = 0;
    while held < threshold {
        match body.next().await {
            None => return Ok((head, None)),
            Some(Ok(piece)) => {
                held += piece.len() as u64;
                head.push(piece);
            }
            Some(Err(e)) => return Err(BlobError::Upload(e.to_string()).into()),
        }
    }
    Ok((head, Some(body)))
}

/// On a blocking thread: cuts the body into chunks, each once the storing
/// side has room for it (a credit), and hands them over; the whole body's
/// hash and size.
fn cut_chunks(
    body: PieceReader,
    mut credits: mpsc::Receiver<()>,
    chunks: mpsc::Sender<CutChunk>,
) -> io::Result<(BlobHash, u64)> {
    let storage_stopped = || io::Error::other("chunk storage stopped");
    let mut chunker = Chunker::new(body);
    loop {
        credits.blocking_recv().ok_or_else(storage_stopped)?;
        match chunker.next() {
            None => return Ok(chunker.whole()),
            Some(chunk) => chunks.blocking_send(chunk?).map_err(|_| storage_stopped())?,
        }
    }
}

/// The body pieces from the feeding task as a `Read`, for the cutter.
struct PieceReader {
    pieces: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl PieceReader {
    fn new(pieces: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            pieces,
            current: Bytes::new(),
        }
    }
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.pieces.blocking_recv() {
                Some(piece) => self.current = piece?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
