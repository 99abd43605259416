//! Large files as content-defined chunks.
//!
//! A file version is always named by the blake3 hash of its whole content
//! (identity, dedupe, etag, the API). A file of at least [`CHUNKED_MIN`]
//! bytes is also cut into chunks by FastCDC (content-defined, so an append or
//! an insert changes only the chunks around it) and stored and moved as those
//! chunks: each chunk is an ordinary blob named by its own hash, and a
//! [`Manifest`] lists them in order. A reader fetches and verifies only the
//! chunks a read needs; a writer uploads only the chunks the server lacks.
//! Smaller files stay single blobs (one request, one cache file, passthrough).
//!
//! Chunking is deterministic: the same bytes always give the same chunks, so
//! an upload interrupted by a crash resumes where it stopped.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use crate::model::BlobHash;

/// Files of at least this many bytes are stored as chunks. Text merges stop
/// at 16 MiB, so the merge engine never needs a chunked file's bytes.
pub const CHUNKED_MIN: u64 = 16 * 1024 * 1024;
/// FastCDC's bounds: no chunk is smaller (except the last) or larger.
pub const CHUNK_MIN: u32 = 512 * 1024;
pub const CHUNK_AVG: u32 = 2 * 1024 * 1024;
pub const CHUNK_MAX: u32 = 8 * 1024 * 1024;
/// The largest chunk a server accepts in a manifest (FastCDC's own ceiling,
/// leaving room for other chunkers).
pub const CHUNK_LIMIT: u64 = 16 * 1024 * 1024;

/// One chunk of a manifest: its blob and its length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: BlobHash,
    pub size: u64,
}

/// A chunked blob: the whole content's hash and size and its chunks in
/// order. The chunks' bytes, concatenated, hash to `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub hash: BlobHash,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

/// A chunk's place in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    pub index: usize,
    pub offset: u64,
    pub size: u64,
}

impl Manifest {
    /// Offsets of every chunk (the manifest keeps sizes only).
    pub fn spans(&self) -> Vec<ChunkSpan> {
        let mut offset = 0;
        self.chunks
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let span = ChunkSpan {
                    index,
                    offset,
                    size: c.size,
                };
                offset += c.size;
                span
            })
            .collect()
    }

    /// Whether the chunk sizes add up to `size` and each is within bounds.
    pub fn check_shape(&self) -> Result<(), String> {
        if self.chunks.is_empty() {
            return Err("a manifest needs at least one chunk".into());
        }
        let mut total: u64 = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            if c.size == 0 || c.size > CHUNK_LIMIT {
                return Err(format!(
                    "chunk {i} has {} bytes; chunks hold 1 to {CHUNK_LIMIT} bytes",
                    c.size
                ));
            }
            total = total.saturating_add(c.size);
        }
        if total != self.size {
            return Err(format!(
                "the chunks add up to {total} bytes, not the size {}",
                self.size
            ));
        }
        Ok(())
    }
}

/// Offsets of chunks in a list of spans: the chunks that hold any byte of
/// `[offset, offset + len)`, in order.
pub fn spans_covering(spans: &[ChunkSpan], offset: u64, len: u64) -> &[ChunkSpan] {
    if len == 0 {
        return &[];
    }
    let end = offset.saturating_add(len);
    let first = spans.partition_point(|s| s.offset + s.size <= offset);
    let last = spans.partition_point(|s| s.offset < end);
    &spans[first..last.max(first)]
}

/// One chunk cut from a stream: its place and its bytes.
pub struct CutChunk {
    pub hash: BlobHash,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Cuts `source` into content-defined chunks, hashing each; also hashes the
/// whole stream so the caller can check it is what it meant to upload.
pub struct Chunker<R: Read> {
    inner: fastcdc::v2020::StreamCDC<R>,
    whole: blake3::Hasher,
    size: u64,
}

impl<R: Read> Chunker<R> {
    pub fn new(source: R) -> Self {
        Self {
            inner: fastcdc::v2020::StreamCDC::new(source, CHUNK_MIN as usize, CHUNK_AVG as usize, CHUNK_MAX as usize),
            whole: blake3::Hasher::new(),
            size: 0,
        }
    }

    /// The hash and size of everything cut so far (the whole stream once the
    /// iterator is exhausted).
    pub fn whole(&self) -> (BlobHash, u64) {
        (BlobHash::from_blake3(self.whole.finalize()), self.size)
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = io::Result<CutChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next()? {
            Ok(chunk) => {
                self.whole.update(&chunk.data);
                self.size += chunk.length as u64;
                Some(Ok(CutChunk {
                    hash: BlobHash::of(&chunk.data),
                    offset: chunk.offset,
                    data: chunk.data,
                }))
            }
            Err(e) => Some(Err(e.into())),
        }
    }
}

/// The manifest of `source` without keeping its bytes.
pub fn manifest_of<R: Read>(source: R) -> io::Result<Manifest> {
    let mut chunker = Chunker::new(source);
    let mut chunks = Vec::new();
    for chunk in chunker.by_ref() {
        let chunk = chunk?;
        chunks.push(ChunkRef {
            hash: chunk.hash,
            size: chunk.data.len() as u64,
        });
    }
    let (hash, size) = chunker.whole();
    Ok(Manifest { hash, size, chunks })
}

#[cfg(test)]
mod tests;
