//! Line-level three-way merge of text (diff3 style).
//!
//! Lines are split after each `\n` with the terminator kept, so `\r\n` files
//! and a last line without a newline come back byte-exact; untouched regions
//! are copied verbatim from the base.
//!
//! Each side is diffed against the base (Myers, via `similar`) and every run
//! of changes between two unchanged lines becomes a hunk: a half-open range of
//! base lines `[start, end)` plus the lines that replace it. An empty range is
//! a pure insertion before base line `start`. The hunks of both sides are then
//! walked in base order, and a pair of hunks from different sides:
//!
//! 1. that is identical (same base range, same replacement) is applied once;
//! 2. conflicts when both replace non-empty ranges that share at least one
//!    base line;
//! 3. when both insert different lines at the same point, keeps both (a
//!    union, like git's `merge=union`), so agents appending different lines
//!    to one file (a log, a `.jsonl` file) all keep their lines. The two
//!    insertions are diffed against each other: lines common to both, in
//!    order, are written once, and where they differ head's lines go first,
//!    then new's. With an empty base (a file both sides created) the whole of
//!    both files is such an insertion;
//! 4. conflicts when one inserts strictly inside a range the other replaces
//!    (`start < point < end`), since the insertion's context is gone;
//! 5. otherwise merges, in base order. In particular an insertion at the
//!    edge of a replaced range is kept: at `start` it goes before the
//!    replacement, at `end` after it.
//!
//! Writing common lines once is what keeps a writer that commits twice from
//! a stale base (its second commit still names the base of its first, whose
//! lines are now in head) from duplicating its own lines; the price is that
//! a line both sides inserted independently at that point (a blank line, a
//! `---`) is kept once. Distinct lines are all kept, each exactly once. The
//! union is not symmetric: swapping head and new swaps the order of the
//! lines that differ. The union never runs two lines together: if a
//! line without a final newline ends up followed by another line, a line
//! ending is added to it (`\r\n` if the nearest line ending before it is one,
//! or with none before it, if the next line has one; else `\n`).
//!
//! Rule 5 also keeps changes to adjacent but non-overlapping ranges (one side
//! edits line 3, the other line 4), which git's diff3 would reject. This is
//! deliberate: agents often edit neighbouring items of a Markdown list or
//! neighbouring lines of a note, and each such edit is self-contained, so
//! rejecting them would force needless last-writer-wins losses.
//!
//! Diffs have a time budget so huge, very different files cannot stall the
//! server; past it `similar` returns a coarser but still correct diff, which
//! can only turn a merge into a conflict, never produce a wrong merge.

use std::ops::Range;
use std::time::{Duration, Instant};

use similar::{capture_diff_slices_deadline, Algorithm, DiffTag};

use super::ConflictReason;

/// Per-diff time budget; see the module docs.
const DIFF_TIME_BUDGET: Duration = Duration::from_millis(500);

/// Three-way merges `head` and `new`, both derived from `base`; see the module
/// docs for the rules.
pub fn merge_lines(base: &str, head: &str, new: &str) -> Result<String, ConflictReason> {
    let base_lines = split_lines(base);
    let head_side = Side::new(&base_lines, head);
    let new_side = Side::new(&base_lines, new);
    let mut out = Output {
        base: &base_lines,
        text: String::with_capacity(head.len().max(new.len())),
        cursor: 0,
    };
    let (mut head_index, mut new_index) = (0, 0);
    loop {
        match (head_side.hunks.get(head_index), new_side.hunks.get(new_index)) {
            (None, None) => break,
            (Some(hunk), None) => {
                out.apply(hunk, &head_side.lines)?;
                head_index += 1;
            }
            (None, Some(hunk)) => {
                out.apply(hunk, &new_side.lines)?;
                new_index += 1;
            }
            (Some(head_hunk), Some(new_hunk)) => {
                if head_hunk.base == new_hunk.base && head_side.replacement(head_hunk) == new_side.replacement(new_hunk)
                {
                    out.apply(head_hunk, &head_side.lines)?;
                    head_index += 1;
                    new_index += 1;
                } else if head_hunk.base.is_empty() && head_hunk.base == new_hunk.base {
                    // Rule 3: both sides inserted here.
                    let (Some(head_lines), Some(new_lines)) =
                        (head_side.replacement(head_hunk), new_side.replacement(new_hunk))
                    else {
                        return Err(lines_conflict(&head_hunk.base, &new_hunk.base));
                    };
                    out.apply_union(head_hunk.base.start, head_lines, new_lines)?;
                    head_index += 1;
                    new_index += 1;
                } else if clash(&head_hunk.base, &new_hunk.base) {
                    return Err(lines_conflict(&head_hunk.base, &new_hunk.base));
                } else if (head_hunk.base.start, head_hunk.base.end) <= (new_hunk.base.start, new_hunk.base.end) {
                    // Ordering by (start, end) puts an insertion at a range's
                    // start before it and one at its end after it.
                    out.apply(head_hunk, &head_side.lines)?;
                    head_index += 1;
                } else {
                    out.apply(new_hunk, &new_side.lines)?;
                    new_index += 1;
                }
            }
        }
    }
    out.finish()
}

/// Splits after each `\n`, keeping terminators so joining is byte-exact.
fn split_lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// A run of changed base lines and what one side put in their place.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hunk {
    /// Replaced base lines; empty for a pure insertion before `base.start`.
    base: Range<usize>,
    /// The replacement, as a range of the side's lines.
    side: Range<usize>,
}

/// One side (head or new) with its changes relative to the base.
struct Side<'a> {
    lines: Vec<&'a str>,
    hunks: Vec<Hunk>,
}

impl<'a> Side<'a> {
    fn new(base_lines: &[&str], text: &'a str) -> Side<'a> {
        let lines = split_lines(text);
        let hunks = diff_hunks(base_lines, &lines);
        Side { lines, hunks }
    }

    fn replacement(&self, hunk: &Hunk) -> Option<&[&'a str]> {
        self.lines.get(hunk.side.clone())
    }
}

/// Groups the diff into hunks separated by at least one unchanged line, so
/// a side never has two hunks touching the same base position.
fn diff_hunks(base: &[&str], side: &[&str]) -> Vec<Hunk> {
    let deadline = Instant::now().checked_add(DIFF_TIME_BUDGET);
    let ops = capture_diff_slices_deadline(Algorithm::Myers, base, side, deadline);
    let mut hunks = Vec::new();
    let mut current: Option<Hunk> = None;
    for op in ops {
        let (tag, base_range, side_range) = op.as_tag_tuple();
        if tag == DiffTag::Equal {
            if !base_range.is_empty() {
                hunks.extend(current.take());
            }
            continue;
        }
        current = Some(match current {
            None => Hunk {
                base: base_range,
                side: side_range,
            },
            Some(open) => Hunk {
                base: open.base.start.min(base_range.start)..open.base.end.max(base_range.end),
                side: open.side.start.min(side_range.start)..open.side.end.max(side_range.end),
            },
        });
    }
    hunks.extend(current);
    hunks
}

/// Whether hunks over these base ranges, from different sides and not
/// identical, cannot both be applied (rules 2 and 4 of the module docs; two
/// insertions never clash, rule 3).
fn clash(a: &Range<usize>, b: &Range<usize>) -> bool {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => false,
        (true, false) => b.start < a.start && a.start < b.end,
        (false, true) => a.start < b.start && b.start < a.end,
        (false, false) => a.start < b.end && b.start < a.end,
    }
}

/// Reports the union of two clashing ranges as 1-based, half-open lines.
fn lines_conflict(a: &Range<usize>, b: &Range<usize>) -> ConflictReason {
    ConflictReason::Lines {
        start: a.start.min(b.start).saturating_add(1),
        end: a.end.max(b.end).saturating_add(1),
    }
}

/// The merged text being built, with how far into the base it has got.
struct Output<'a> {
    base: &'a [&'a str],
    text: String,
    /// Base lines before this index have been copied or replaced.
    cursor: usize,
}

impl Output<'_> {
    /// Copies unchanged base lines up to the hunk, then its replacement.
    ///
    /// The walk keeps hunks ordered, so the lookups cannot miss; should that
    /// invariant ever break, a conflict is safer than a panic or a wrong merge.
    fn apply(&mut self, hunk: &Hunk, side_lines: &[&str]) -> Result<(), ConflictReason> {
        let (Some(unchanged), Some(replacement)) = (
            self.base.get(self.cursor..hunk.base.start),
            side_lines.get(hunk.side.clone()),
        ) else {
            return Err(lines_conflict(&hunk.base, &hunk.base));
        };
        for line in unchanged.iter().chain(replacement) {
            self.push(line);
        }
        self.cursor = hunk.base.end;
        Ok(())
    }

    /// Copies unchanged base lines up to `point`, then the union of two
    /// insertions there (rule 3): the insertions are diffed against each
    /// other; lines they have in common (in order) are written once, and
    /// where they differ head's lines go before new's.
    fn apply_union(&mut self, point: usize, head: &[&str], new: &[&str]) -> Result<(), ConflictReason> {
        let Some(unchanged) = self.base.get(self.cursor..point) else {
            return Err(lines_conflict(&(point..point), &(point..point)));
        };
        for line in unchanged {
            self.push(line);
        }
        let deadline = Instant::now().checked_add(DIFF_TIME_BUDGET);
        for op in capture_diff_slices_deadline(Algorithm::Myers, head, new, deadline) {
            let (tag, head_range, new_range) = op.as_tag_tuple();
            let new_part = if tag == DiffTag::Equal {
                &[][..]
            } else {
                new.get(new_range).unwrap_or_default()
            };
            for line in head.get(head_range).unwrap_or_default().iter().chain(new_part) {
                self.push(line);
            }
        }
        self.cursor = point;
        Ok(())
    }

    fn finish(mut self) -> Result<String, ConflictReason> {
        let rest = self.base.get(self.cursor..).unwrap_or_default();
        for line in rest {
            self.push(line);
        }
        Ok(self.text)
    }

    /// Appends one line, first ending the previous one if it has no line
    /// ending (only a union can put a side's last line before another line).
    fn push(&mut self, line: &str) {
        if !self.text.is_empty() && !self.text.ends_with('\n') {
            let crlf = match self.text.rfind('\n') {
                Some(at) => self.text.get(..at).is_some_and(|before| before.ends_with('\r')),
                None => line.ends_with("\r\n"),
            };
            self.text.push_str(if crlf { "\r\n" } else { "\n" });
        }
        self.text.push_str(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(base: &str, head: &str, new: &str) -> String {
        match merge_lines(base, head, new) {
            Ok(text) => text,
            Err(reason) => panic!("unexpected conflict: {reason}"),
        }
    }

    fn conflict(base: &str, head: &str, new: &str) -> ConflictReason {
        match merge_lines(base, head, new) {
            Ok(text) => panic!("expected a conflict, merged {text:?}"),
            Err(reason) => reason,
        }
    }

    #[test]
    fn adjacent_line_edits_are_both_kept() {
        let base = "- one\n- two\n- three\n- four\n";
        let head = "- one\n- TWO\n- three\n- four\n";
        let new = "- one\n- two\n- THREE\n- four\n";
        assert_eq!(merged(base, head, new), "- one\n- TWO\n- THREE\n- four\n");
    }

    #[test]
    fn overlapping_edits_conflict_with_one_based_range() {
        let base = "a\nb\nc\nd\n";
        let head = "a\nB\nC\nd\n";
        let new = "a\nb\nX\nd\n";
        assert_eq!(conflict(base, head, new), ConflictReason::Lines { start: 2, end: 4 });
    }

    #[test]
    fn identical_edits_are_taken_once() {
        let base = "a\nb\nc\nd\n";
        let head = "a\nB\nc\nd\n";
        let new = "a\nB\nc\nD\n";
        assert_eq!(merged(base, head, new), "a\nB\nc\nD\n");
    }

    #[test]
    fn two_different_appends_at_the_end_are_both_kept_head_first() {
        let base = "a\nb\n";
        assert_eq!(merged(base, "a\nb\nh1\nh2\n", "a\nb\nn1\n"), "a\nb\nh1\nh2\nn1\n");
        assert_eq!(merged(base, "a\nb\nn1\n", "a\nb\nh1\nh2\n"), "a\nb\nn1\nh1\nh2\n");
    }

    #[test]
    fn different_insertions_at_one_inner_point_are_both_kept() {
        let base = "# Log\n\n## Done\n";
        let head = "# Log\n- a\n\n## Done\n";
        let new = "# Log\n- b\n- c\n\n## Done\n";
        assert_eq!(merged(base, head, new), "# Log\n- a\n- b\n- c\n\n## Done\n");
    }

    #[test]
    fn union_next_to_other_edits_merges_all() {
        let base = "a\nb\nc\n";
        // Head edits a and appends; new appends and edits nothing else.
        let head = "A\nb\nc\nh\n";
        let new = "a\nb\nc\nn\n";
        assert_eq!(merged(base, head, new), "A\nb\nc\nh\nn\n");
    }

    #[test]
    fn lines_common_to_both_insertions_are_kept_once() {
        assert_eq!(merged("a\n", "a\n---\nh\n", "a\n---\nn\n"), "a\n---\nh\nn\n");
    }

    #[test]
    fn a_stale_base_commit_does_not_duplicate_its_own_lines() {
        // The writer committed "x" on base "a" (now in head, after another
        // writer's "o"), then commits "x" plus "y", still on base "a".
        let base = "a\n";
        let head = "a\no\nx\np\n";
        let new = "a\nx\ny\n";
        assert_eq!(merged(base, head, new), "a\no\nx\np\ny\n");
    }

    #[test]
    fn union_ends_an_unterminated_head_line_before_new_lines() {
        assert_eq!(merged("a\n", "a\nh", "a\nn\n"), "a\nh\nn\n");
        assert_eq!(merged("a\r\n", "a\r\nh", "a\r\nn"), "a\r\nh\r\nn");
        assert_eq!(merged("", "h", "n\r\n"), "h\r\nn\r\n");
        // New's unterminated last line stays the file's unterminated end.
        assert_eq!(merged("a\n", "a\nh\n", "a\nn"), "a\nh\nn");
    }

    #[test]
    fn appends_after_an_unterminated_last_line_still_conflict() {
        // Both sides rewrite the base's last line "b" (it gains a newline).
        assert_eq!(
            conflict("a\nb", "a\nb\nh\n", "a\nb\nn\n"),
            ConflictReason::Lines { start: 2, end: 3 }
        );
    }

    #[test]
    fn same_append_on_both_sides_is_taken_once() {
        let base = "a\nb\n";
        let head = "A\nb\nsame\n";
        let new = "a\nb\nsame\n";
        assert_eq!(merged(base, head, new), "A\nb\nsame\n");
    }

    #[test]
    fn insertion_at_edges_of_a_replaced_range_is_kept() {
        let base = "a\nb\nc\nd\n";
        // Head replaces b..c; new inserts right before b and right after c.
        let head = "a\nB\nC\nd\n";
        let new = "a\nbefore\nb\nc\nafter\nd\n";
        assert_eq!(merged(base, head, new), "a\nbefore\nB\nC\nafter\nd\n");
    }

    #[test]
    fn insertion_inside_a_replaced_range_conflicts() {
        let base = "a\nb\nc\nd\n";
        let head = "a\nB\nC\nd\n";
        let new = "a\nb\ninside\nc\nd\n";
        assert_eq!(conflict(base, head, new), ConflictReason::Lines { start: 2, end: 4 });
    }

    #[test]
    fn deletion_and_neighbouring_edit_merge() {
        let base = "a\nb\nc\nd\n";
        let head = "a\nc\nd\n";
        let new = "a\nb\nC\nd\n";
        assert_eq!(merged(base, head, new), "a\nC\nd\n");
    }

    #[test]
    fn crlf_survives_byte_exact() {
        let base = "a\r\nb\r\nc\r\nd\r\n";
        let head = "A\r\nb\r\nc\r\nd\r\n";
        let new = "a\r\nb\r\nc\r\nD\r\n";
        assert_eq!(merged(base, head, new), "A\r\nb\r\nc\r\nD\r\n");
    }

    #[test]
    fn missing_final_newline_survives() {
        let base = "a\nb\nc";
        let head = "A\nb\nc";
        let new = "a\nb\nC";
        assert_eq!(merged(base, head, new), "A\nb\nC");
        // Appending to a file without a final newline rewrites its last line.
        assert_eq!(merged(base, "a\nb\nc\nd", "X\nb\nc"), "X\nb\nc\nd");
    }

    #[test]
    fn empty_base_with_different_contents_concatenates() {
        assert_eq!(merged("", "x\n", "y\n"), "x\ny\n");
    }

    #[test]
    fn replacements_of_one_range_still_conflict_with_insertions_around() {
        let base = "a\nb\nc\n";
        let head = "a\nB\nh\nc\n";
        let new = "a\nX\nc\n";
        assert_eq!(conflict(base, head, new), ConflictReason::Lines { start: 2, end: 3 });
    }

    #[test]
    fn one_side_only_reproduces_that_side() {
        assert_eq!(merged("a\nb\n", "a\nb\n", "z\n"), "z\n");
        assert_eq!(merged("a\nb\n", "q\r\nb", "a\nb\n"), "q\r\nb");
    }
}
