//! The log's frames: `len (u32 LE) | blake3(json)[..8] | json`, and reading
//! them back past torn or corrupt stretches.

use serde::{Deserialize, Serialize};

use super::Record;
use crate::vfs::VfsError;

/// One frame of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Entry {
    Put(Box<Record>),
    Remove(u64),
}

/// `len (u32 LE) | blake3(json)[..8] | json`
pub(super) fn encode(entry: &Entry, out: &mut Vec<u8>) -> Result<(), VfsError> {
    let json = serde_json::to_vec(entry).map_err(|e| VfsError::new(libc::EIO, format!("journal: {e}")))?;
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&blake3::hash(&json).as_bytes()[..8]);
    out.extend_from_slice(&json);
    Ok(())
}

/// A frame longer than this is taken for garbage while resynchronising.
const MAX_FRAME: usize = 64 << 20;

/// The frame starting at `pos`, and where it ends, if it is complete and intact.
fn frame_at(bytes: &[u8], pos: usize) -> Option<(Entry, usize)> {
    let header = bytes.get(pos..pos + 12)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let json = bytes.get(pos + 12..pos + 12 + len)?;
    if json.first() != Some(&b'{') || blake3::hash(json).as_bytes()[..8] != header[4..12] {
        return None;
    }
    let entry = serde_json::from_slice::<Entry>(json).ok()?;
    Some((entry, pos + 12 + len))
}

/// A stretch of the log that held no valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Skipped {
    pub(super) offset: usize,
    pub(super) len: usize,
}

/// Every intact frame, resynchronising after a torn or corrupt one on the
/// next offset where an intact frame starts; and the stretches skipped.
pub(super) fn decode(bytes: &[u8]) -> (Vec<Entry>, Vec<Skipped>) {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        if let Some((entry, end)) = frame_at(bytes, pos) {
            entries.push(entry);
            pos = end;
            continue;
        }
        let next = (pos + 1..bytes.len())
            .find(|&p| frame_at(bytes, p).is_some())
            .unwrap_or(bytes.len());
        skipped.push(Skipped {
            offset: pos,
            len: next - pos,
        });
        pos = next;
    }
    (entries, skipped)
}
