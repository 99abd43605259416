//! Readahead decisions for one handle on a chunked file, kept pure so the
//! policy is tested without threads or a server (in spirit like
//! mountpoint-s3's prefetcher: a sequential reader gets a window of chunks
//! fetched ahead that grows with the run; a random reader gets exactly the
//! chunk it asked for).

use std::ops::Range;

use crate::chunks::ChunkSpan;

/// How far past the end of the run a read may start, or how far before it
/// a read may end, and still count as sequential: the kernel's readahead
/// requests arrive on several FUSE threads and may land slightly out of order.
pub const SEQUENTIAL_SLACK: u64 = 1024 * 1024;
/// Bytes a run must have read in order (more than this) before anything is
/// fetched ahead. A one-off read and the kernel's own readahead around it
/// (at most its 1 MiB window) stay within it, so a random read costs one
/// chunk.
pub const RUN_TRIGGER: u64 = 1024 * 1024;
/// The most bytes fetched ahead of a reader (fewer when the cache is small).
pub const MAX_AHEAD_BYTES: u64 = 16 * 1024 * 1024;
/// The most chunks fetched ahead of a reader, whatever their size.
pub const MAX_AHEAD_CHUNKS: usize = 8;

/// One handle's reading pattern so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readahead {
    /// The furthest byte the current run has read up to.
    run_end: u64,
    /// Bytes read by the current run (0 before the first read).
    run_len: u64,
    /// Chunks before this index were already asked for by this run.
    requested_until: usize,
}

impl Readahead {
    /// Records a read of `[offset, end)` and returns the chunks (indices in
    /// `spans`) to fetch ahead of it now, never more than `max_ahead` bytes
    /// past `end` nor [`MAX_AHEAD_CHUNKS`] chunks past the one holding
    /// `end - 1`, and never a chunk this run asked for already.
    pub fn on_read(&mut self, spans: &[ChunkSpan], offset: u64, end: u64, max_ahead: u64) -> Range<usize> {
        if end <= offset {
            return 0..0;
        }
        let sequential = self.run_len > 0
            && offset <= self.run_end.saturating_add(SEQUENTIAL_SLACK)
            && end.saturating_add(SEQUENTIAL_SLACK) >= self.run_end;
        if sequential {
            // Requests answered out of order count too (the total is what matters).
            self.run_len = self.run_len.saturating_add(end - offset);
            self.run_end = self.run_end.max(end);
        } else {
            self.run_len = end - offset;
            self.run_end = end;
            self.requested_until = 0;
        }
        if self.run_len <= RUN_TRIGGER || spans.is_empty() {
            return 0..0;
        }
        // The window grows with the run: a short run risks little.
        let ahead = max_ahead.min(self.run_len);
        let horizon = self.run_end.saturating_add(ahead);
        let current = spans.partition_point(|s| s.offset + s.size < self.run_end);
        let first = (current + 1).max(self.requested_until);
        let mut stop = first;
        while stop < spans.len() && spans[stop].offset < horizon && stop <= current + MAX_AHEAD_CHUNKS {
            stop += 1;
        }
        if stop <= first {
            return 0..0;
        }
        self.requested_until = stop;
        first..stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// `count` chunks of `size` bytes each.
    fn even_spans(count: usize, size: u64) -> Vec<ChunkSpan> {
        (0..count)
            .map(|index| ChunkSpan {
                index,
                offset: index as u64 * size,
                size,
            })
            .collect()
    }

    /// Reads the file in order, `step` bytes at a time, and returns every
    /// chunk asked for ahead, in the order asked.
    fn stream(spans: &[ChunkSpan], step: u64, max_ahead: u64) -> Vec<usize> {
        let total = spans.last().map(|s| s.offset + s.size).unwrap_or(0);
        let mut ra = Readahead::default();
        let mut asked = Vec::new();
        let mut offset = 0;
        while offset < total {
            let end = (offset + step).min(total);
            asked.extend(ra.on_read(spans, offset, end, max_ahead));
            offset = end;
        }
        asked
    }

    #[test]
    fn a_single_small_read_fetches_nothing_ahead() {
        let spans = even_spans(100, 2 * MIB);
        let mut ra = Readahead::default();
        assert_eq!(ra.on_read(&spans, 0, 100, MAX_AHEAD_BYTES), 0..0);
        // The kernel's own readahead around it stays under the trigger.
        assert_eq!(ra.on_read(&spans, 4096, 128 * 1024, MAX_AHEAD_BYTES), 0..0);
    }

    #[test]
    fn random_reads_never_fetch_ahead() {
        let spans = even_spans(1000, 2 * MIB);
        let mut ra = Readahead::default();
        for i in 0..200u64 {
            // Far apart, scattered over the file, 4 KiB each (plus 128 KiB of kernel readahead).
            let offset = (i * 7919 * MIB) % (1999 * MIB);
            assert_eq!(ra.on_read(&spans, offset, offset + 4096, MAX_AHEAD_BYTES), 0..0);
            assert_eq!(
                ra.on_read(&spans, offset + 4096, offset + 128 * 1024, MAX_AHEAD_BYTES),
                0..0
            );
        }
    }

    #[test]
    fn a_sequential_reader_gets_every_later_chunk_once_in_order() {
        let spans = even_spans(50, 2 * MIB);
        let asked = stream(&spans, 128 * 1024, MAX_AHEAD_BYTES);
        // Every chunk after the first is fetched ahead exactly once, in order.
        assert_eq!(asked, (1..50).collect::<Vec<_>>());
    }

    #[test]
    fn the_window_grows_with_the_run_and_stays_bounded() {
        let spans = even_spans(200, 2 * MIB);
        let mut ra = Readahead::default();
        let mut offset = 0;
        let step = 256 * 1024;
        let mut widest_bytes = 0;
        let mut widest_chunks = 0;
        let mut first_window = None;
        while offset < 100 * MIB {
            let end = offset + step;
            let asked = ra.on_read(&spans, offset, end, MAX_AHEAD_BYTES);
            if let Some(last) = asked.clone().last() {
                first_window.get_or_insert(asked.clone());
                let current = (end - 1) / (2 * MIB);
                widest_chunks = widest_chunks.max(last - current as usize);
                widest_bytes = widest_bytes.max(spans[last].offset - end);
            }
            offset = end;
        }
        // It starts with one chunk once the run reaches the trigger...
        assert_eq!(first_window, Some(1..2));
        // ...and never reaches further than the byte and chunk bounds.
        assert!(widest_bytes < MAX_AHEAD_BYTES, "{widest_bytes}");
        assert!(widest_chunks <= MAX_AHEAD_CHUNKS, "{widest_chunks}");
        assert!(widest_chunks >= 7, "the window opened up: {widest_chunks}");
    }

    #[test]
    fn small_chunks_are_bounded_by_count_and_a_small_cache_by_bytes() {
        let spans = even_spans(400, 512 * 1024);
        let mut ra = Readahead::default();
        let mut offset = 0;
        while offset < 40 * MIB {
            let asked = ra.on_read(&spans, offset, offset + MIB, MAX_AHEAD_BYTES);
            let current = ((offset + MIB - 1) / (512 * 1024)) as usize;
            assert!(asked.end <= current + MAX_AHEAD_CHUNKS + 1, "{asked:?} at {current}");
            offset += MIB;
        }
        let spans = even_spans(100, 2 * MIB);
        let mut ra = Readahead::default();
        let mut offset = 0;
        while offset < 60 * MIB {
            let end = offset + MIB;
            let asked = ra.on_read(&spans, offset, end, 4 * MIB);
            if let Some(last) = asked.clone().last() {
                assert!(spans[last].offset < end + 4 * MIB, "{asked:?} at {end}");
            }
            offset = end;
        }
    }

    #[test]
    fn reordered_kernel_requests_keep_the_run_and_a_seek_restarts_it() {
        let spans = even_spans(100, 2 * MIB);
        let mut ra = Readahead::default();
        // Two threads answer 1 MiB requests out of order; one request
        // alone is not a run yet.
        assert_eq!(ra.on_read(&spans, MIB, 2 * MIB, MAX_AHEAD_BYTES), 0..0);
        assert_eq!(ra.on_read(&spans, 0, MIB, MAX_AHEAD_BYTES), 1..2);
        let next = ra.on_read(&spans, 3 * MIB, 4 * MIB, MAX_AHEAD_BYTES);
        assert_eq!(next.start, 2, "{next:?}");
        // A jump far ahead is a new run: nothing until it has read enough.
        assert_eq!(ra.on_read(&spans, 150 * MIB, 150 * MIB + 4096, MAX_AHEAD_BYTES), 0..0);
        let restarted = ra.on_read(&spans, 150 * MIB + 4096, 151 * MIB + 4096, MAX_AHEAD_BYTES);
        assert_eq!(restarted.start, 76, "the run restarts ahead of the new position");
    }

    #[test]
    fn reads_past_the_last_chunk_ask_for_nothing() {
        let spans = even_spans(3, 2 * MIB);
        let asked = stream(&spans, MIB, MAX_AHEAD_BYTES);
        assert_eq!(asked, vec![1, 2]);
        let mut ra = Readahead::default();
        assert_eq!(ra.on_read(&spans, 5 * MIB, 6 * MIB, MAX_AHEAD_BYTES), 0..0);
        assert_eq!(ra.on_read(&spans, 6 * MIB, 6 * MIB, MAX_AHEAD_BYTES), 0..0);
        assert_eq!(ra.on_read(&[], 0, MIB, MAX_AHEAD_BYTES), 0..0);
    }
}
