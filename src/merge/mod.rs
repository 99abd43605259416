//! Pure three-way merge of file contents.
//!
//! When a writer commits `new` on top of `base` but the server meanwhile moved
//! on to `head`, [`merge`] tries to combine both sides' changes so that neither
//! agent's work is silently lost. Whenever it cannot do so safely it reports a
//! [`ConflictReason`] and the caller falls back to last-writer-wins.
//!
//! The engine is a pure function of its byte inputs: no I/O, no global state,
//! and no panics on any input.
//!
//! * Trivial cases are decided on raw bytes for every kind of content, so
//!   `merge(b, a, b) == a`, `merge(b, b, c) == c` and `merge(b, x, x) == x`
//!   hold even for binary data or broken JSON.
//! * JSON documents (`.json`) merge key by key, see [`json`].
//! * Other UTF-8 text merges line by line (diff3 style), see [`text`]; this
//!   includes JSON Lines (`.jsonl`, `.ndjson`: one JSON value per line), so
//!   records appended on both sides are all kept.
//! * Anything else is [`ConflictReason::Binary`].

pub mod json;
pub mod text;

/// What kind of content a merge treats the three inputs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    /// Merged structurally, key by key.
    Json,
    /// Merged line by line.
    Text,
    /// Never merged automatically.
    Binary,
}

/// Decides how to merge a file.
///
/// The `.json` extension (case-insensitive) wins over content sniffing so a
/// broken JSON file is reported as unparsable rather than merged as text,
/// which could silently produce invalid JSON. Only that exact extension is
/// whole-document JSON: JSON Lines files (`.jsonl`, `.ndjson`) hold one value
/// per line and are text, merged by line. Otherwise the content is text
/// when every sample is valid UTF-8 without NUL bytes (NUL is the classic
/// marker of binary formats that happen to be valid UTF-8).
pub fn classify(path: &str, samples: &[&[u8]]) -> ContentKind {
    if has_json_extension(path) {
        ContentKind::Json
    } else if samples
        .iter()
        .all(|sample| !sample.contains(&0) && std::str::from_utf8(sample).is_ok())
    {
        ContentKind::Text
    } else {
        ContentKind::Binary
    }
}

fn has_json_extension(path: &str) -> bool {
    const EXTENSION: &str = ".json";
    // `get` instead of slicing: the cut may fall inside a multi-byte char.
    path.len() >= EXTENSION.len()
        && path
            .get(path.len() - EXTENSION.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(EXTENSION))
}

/// Result of a three-way merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The merged bytes (may equal head or new in the trivial cases).
    Merged(Vec<u8>),
    /// No automatic merge: the caller falls back to last-writer-wins.
    Conflict(ConflictReason),
}

/// Why a merge could not be done automatically.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConflictReason {
    /// Both sides changed a file that is not text.
    #[error("binary content cannot be merged")]
    Binary,
    /// One input of a `.json` file does not parse; `which` is `"base"`,
    /// `"head"` or `"new"` (or `"merged"` should serializing the result ever
    /// fail, which cannot happen for in-memory JSON values).
    #[error("{which} is not valid JSON")]
    UnparsableJson {
        /// Which input failed to parse.
        which: &'static str,
    },
    /// Both sides changed the same JSON value differently. `path` is an
    /// RFC 6901 JSON pointer such as `/a/b`; the empty string is the root.
    #[error("both sides changed JSON key {path}")]
    JsonKey {
        /// JSON pointer of the contested value.
        path: String,
    },
    /// Both sides changed overlapping lines of the base differently.
    ///
    /// The range is 1-based and half-open like a Rust range: `start..end`
    /// covers base lines `start` up to but excluding `end`, so lines 3 and 4
    /// are `3..5`. Insertions by both sides at one point are merged, never a
    /// conflict, so the range is not empty (an insertion strictly inside a
    /// range the other side replaced reports that range).
    #[error("both sides changed lines {start}..{end} of the base")]
    Lines {
        /// First contested base line, 1-based.
        start: usize,
        /// One past the last contested base line, 1-based.
        end: usize,
    },
}

/// Three-way merges one file.
///
/// `base` is the version the writer started from, `head` what the server
/// holds now and `new` what the writer commits.
pub fn merge(path: &str, base: &[u8], head: &[u8], new: &[u8]) -> MergeOutcome {
    if head == new || new == base {
        return MergeOutcome::Merged(head.to_vec());
    }
    if head == base {
        return MergeOutcome::Merged(new.to_vec());
    }
    match classify(path, &[base, head, new]) {
        ContentKind::Binary => MergeOutcome::Conflict(ConflictReason::Binary),
        ContentKind::Json => into_outcome(json::merge_documents(base, head, new)),
        ContentKind::Text => match (
            std::str::from_utf8(base),
            std::str::from_utf8(head),
            std::str::from_utf8(new),
        ) {
            (Ok(base), Ok(head), Ok(new)) => into_outcome(text::merge_lines(base, head, new).map(String::into_bytes)),
            // Unreachable after `classify`, but bytes that are not UTF-8 are binary.
            _ => MergeOutcome::Conflict(ConflictReason::Binary),
        },
    }
}

fn into_outcome(result: Result<Vec<u8>, ConflictReason>) -> MergeOutcome {
    match result {
        Ok(bytes) => MergeOutcome::Merged(bytes),
        Err(reason) => MergeOutcome::Conflict(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_extension_then_content() {
        assert_eq!(classify("a/b.JSON", &[b"\0"]), ContentKind::Json);
        assert_eq!(classify("notes.md", &[b"hi\n", b""]), ContentKind::Text);
        assert_eq!(classify("x.bin", &[b"ok", b"a\0b"]), ContentKind::Binary);
        assert_eq!(classify("x.txt", &[&[0xff, 0xfe]]), ContentKind::Binary);
        assert_eq!(classify("json", &[b"{}"]), ContentKind::Text);
        assert_eq!(classify("é", &[b"{}"]), ContentKind::Text);
        for lines in ["log.jsonl", "events.NDJSON", "x.json.bak", "x.jsonc"] {
            assert_eq!(classify(lines, &[b"{\"a\":1}\n"]), ContentKind::Text, "{lines}");
        }
    }

    #[test]
    fn json_lines_appended_on_both_sides_are_all_kept() {
        let base = b"{\"n\":1}\n";
        let head = b"{\"n\":1}\n{\"n\":2,\"by\":\"h\"}\n";
        let new = b"{\"n\":1}\n{\"n\":2,\"by\":\"n\"}\n";
        let want = b"{\"n\":1}\n{\"n\":2,\"by\":\"h\"}\n{\"n\":2,\"by\":\"n\"}\n".to_vec();
        for path in ["events.jsonl", "events.ndjson"] {
            assert_eq!(
                merge(path, base, head, new),
                MergeOutcome::Merged(want.clone()),
                "{path}"
            );
        }
        // The same bytes as one `.json` document do not parse.
        assert_eq!(
            merge("events.json", base, head, new),
            MergeOutcome::Conflict(ConflictReason::UnparsableJson { which: "head" })
        );
    }

    #[test]
    fn markdown_appends_on_both_sides_merge() {
        assert_eq!(
            merge("log.md", b"# Log\n", b"# Log\nw1 line 1\n", b"# Log\nw2 line 1\n"),
            MergeOutcome::Merged(b"# Log\nw1 line 1\nw2 line 1\n".to_vec())
        );
    }

    #[test]
    fn trivial_cases_hold_for_binary_and_broken_json() {
        let (b, x) = (&[0u8, 1, 2][..], &[0u8, 9][..]);
        assert_eq!(merge("f.bin", b, x, b), MergeOutcome::Merged(x.to_vec()));
        assert_eq!(merge("f.bin", b, b, x), MergeOutcome::Merged(x.to_vec()));
        assert_eq!(merge("f.json", b"{", b"[", b"["), MergeOutcome::Merged(b"[".to_vec()));
    }

    #[test]
    fn binary_changed_on_both_sides_conflicts() {
        assert_eq!(
            merge("f.bin", b"\0a", b"\0b", b"\0c"),
            MergeOutcome::Conflict(ConflictReason::Binary)
        );
    }

    #[test]
    fn dispatches_json_and_text() {
        assert_eq!(
            merge("f.json", br#"{"a":1,"b":1}"#, br#"{"a":2,"b":1}"#, br#"{"a":1,"b":2}"#),
            MergeOutcome::Merged(br#"{"a":2,"b":2}"#.to_vec())
        );
        assert_eq!(
            merge("f.md", b"a\nb\nc\n", b"A\nb\nc\n", b"a\nb\nC\n"),
            MergeOutcome::Merged(b"A\nb\nC\n".to_vec())
        );
        assert_eq!(
            merge("f.json", b"{}", b"{\"a\":1}", b"{"),
            MergeOutcome::Conflict(ConflictReason::UnparsableJson { which: "new" })
        );
    }
}
