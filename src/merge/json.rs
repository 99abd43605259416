//! Key-level, recursive three-way merge of JSON documents.
//!
//! Rules, applied at every value with `b`/`h`/`n` the base, head and new
//! values (`None` when the key, or the whole document, is absent):
//!
//! * `h == n` → `h`; `h == b` → `n`; `n == b` → `h`. So a key deleted on one
//!   side and untouched on the other stays deleted.
//! * All three are objects → merge key by key, recursively.
//! * `h` and `n` are objects and `b` is absent → both sides added the value
//!   (or created the whole file) concurrently; merge them key by key against
//!   an empty base, so disjoint keys are kept and keys added by both sides
//!   must agree.
//! * Anything else (arrays, scalars, type changes, deleted vs changed) →
//!   [`ConflictReason::JsonKey`] naming the JSON pointer of the value.
//!   Arrays are compared as whole values because element identity is unknown:
//!   merging them by index would silently interleave unrelated edits.
//!
//! An empty or whitespace-only input means "no document" (for example a file
//! that did not exist at `base`). When the merged document is absent the
//! result is empty bytes; otherwise the result is always valid JSON.
//!
//! Output key order is head's keys in head's order, then the keys only `new`
//! added, in new's order, so a head reader sees minimal churn. Formatting
//! follows head (or `new` when head is absent): compact when it is a single
//! line (ignoring a trailing newline, as `jq -c` output has), else
//! pretty-printed with its indentation unit (spaces or tab, taken from the
//! first indented line; two spaces by default). Its line ending (`\n` or
//! `\r\n`) is kept, and a trailing newline iff it had one. When the merged
//! value equals head's value, head's bytes are returned unchanged.

use serde::Serialize;
use serde_json::ser::{PrettyFormatter, Serializer};
use serde_json::{Map, Value};

use super::ConflictReason;

/// Merges three JSON documents given as bytes; see the module docs.
pub fn merge_documents(base: &[u8], head: &[u8], new: &[u8]) -> Result<Vec<u8>, ConflictReason> {
    let base_value = parse(base, "base")?;
    let head_value = parse(head, "head")?;
    let new_value = parse(new, "new")?;
    let merged = merge_values(base_value.as_ref(), head_value.as_ref(), new_value.as_ref())?;
    if merged == head_value {
        return Ok(head.to_vec());
    }
    let Some(merged) = merged else {
        return Ok(Vec::new());
    };
    let style_source = if head_value.is_some() { head } else { new };
    render(&merged, &Style::detect(style_source))
}

/// Parses one input; blank input is an absent document, not an error.
fn parse(bytes: &[u8], which: &'static str) -> Result<Option<Value>, ConflictReason> {
    if bytes.trim_ascii().is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|_| ConflictReason::UnparsableJson { which })
}

/// Three-way merges JSON values; `None` means absent (deleted or never there).
///
/// Conflicts name the JSON pointer of the contested value, with `""` for the
/// root.
pub fn merge_values(
    base: Option<&Value>,
    head: Option<&Value>,
    new: Option<&Value>,
) -> Result<Option<Value>, ConflictReason> {
    merge_at(&mut String::new(), base, head, new)
}

/// `pointer` is the JSON pointer of the values being merged; it is extended
/// and restored while descending so no per-key allocation is needed.
fn merge_at(
    pointer: &mut String,
    base: Option<&Value>,
    head: Option<&Value>,
    new: Option<&Value>,
) -> Result<Option<Value>, ConflictReason> {
    if head == new || new == base {
        return Ok(head.cloned());
    }
    if head == base {
        return Ok(new.cloned());
    }
    let conflict = || ConflictReason::JsonKey { path: pointer.clone() };
    let (Some(Value::Object(head)), Some(Value::Object(new))) = (head, new) else {
        return Err(conflict());
    };
    let empty = Map::new();
    let base = match base {
        Some(Value::Object(base)) => base,
        None => &empty,
        Some(_) => return Err(conflict()),
    };
    merge_objects(pointer, base, head, new).map(|map| Some(Value::Object(map)))
}

fn merge_objects(
    pointer: &mut String,
    base: &Map<String, Value>,
    head: &Map<String, Value>,
    new: &Map<String, Value>,
) -> Result<Map<String, Value>, ConflictReason> {
    let mut merged = Map::new();
    let head_entries = head.iter().map(|(key, value)| (key, Some(value), new.get(key)));
    let added_by_new = new
        .iter()
        .filter(|(key, _)| !head.contains_key(*key))
        .map(|(key, value)| (key, None, Some(value)));
    for (key, head_value, new_value) in head_entries.chain(added_by_new) {
        let parent_len = pointer.len();
        push_pointer_token(pointer, key);
        let value = merge_at(pointer, base.get(key), head_value, new_value)?;
        pointer.truncate(parent_len);
        if let Some(value) = value {
            merged.insert(key.clone(), value);
        }
    }
    Ok(merged)
}

/// Appends `/key` with RFC 6901 escaping (`~` → `~0`, `/` → `~1`).
fn push_pointer_token(pointer: &mut String, key: &str) {
    pointer.push('/');
    for ch in key.chars() {
        match ch {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            other => pointer.push(other),
        }
    }
}

/// How the reference document was laid out, so the merge keeps its look.
#[derive(Debug, PartialEq, Eq)]
struct Style {
    /// `None` for compact output.
    indent: Option<Vec<u8>>,
    crlf: bool,
    trailing_newline: bool,
}

impl Style {
    const DEFAULT_INDENT: &'static [u8] = b"  ";
    /// Longer runs are more likely nested content than one indent unit.
    const MAX_INDENT: usize = 8;

    fn detect(text: &[u8]) -> Style {
        let first_newline = text.iter().position(|&byte| byte == b'\n');
        // A compact document followed by a newline is still single-line.
        let multiline = text.trim_ascii_end().contains(&b'\n');
        let indent = multiline.then(|| Self::detect_indent(text));
        Style {
            indent,
            crlf: first_newline.is_some_and(|at| at > 0 && text.get(at - 1) == Some(&b'\r')),
            trailing_newline: text.ends_with(b"\n"),
        }
    }

    /// The indentation of the first indented line is one unit, since JSON
    /// strings cannot span lines and pretty printers open one level at a time.
    fn detect_indent(text: &[u8]) -> Vec<u8> {
        text.split(|&byte| byte == b'\n')
            .skip(1)
            .find_map(|line| {
                let unit = *line.first().filter(|byte| matches!(byte, b' ' | b'\t'))?;
                let run = line.iter().take_while(|&&byte| byte == unit).count();
                let run = if unit == b'\t' { 1 } else { run.min(Self::MAX_INDENT) };
                Some(vec![unit; run])
            })
            .unwrap_or_else(|| Self::DEFAULT_INDENT.to_vec())
    }
}

fn render(value: &Value, style: &Style) -> Result<Vec<u8>, ConflictReason> {
    let mut out = Vec::new();
    let written = match &style.indent {
        None => serde_json::to_writer(&mut out, value),
        Some(indent) => {
            let mut serializer = Serializer::with_formatter(&mut out, PrettyFormatter::with_indent(indent));
            value.serialize(&mut serializer)
        }
    };
    // Serializing a `Value` into memory cannot fail; if it ever did, refusing
    // to merge is safer than writing a broken file.
    written.map_err(|_| ConflictReason::UnparsableJson { which: "merged" })?;
    if style.trailing_newline {
        out.push(b'\n');
    }
    if style.crlf {
        // Raw newlines in JSON text are always structural (strings escape
        // them), so converting every one is safe.
        let mut converted = Vec::with_capacity(out.len() + out.len() / 8);
        for byte in out {
            if byte == b'\n' {
                converted.push(b'\r');
            }
            converted.push(byte);
        }
        out = converted;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(base: &str, head: &str, new: &str) -> String {
        match merge_documents(base.as_bytes(), head.as_bytes(), new.as_bytes()) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(reason) => panic!("unexpected conflict: {reason}"),
        }
    }

    fn conflict(base: &str, head: &str, new: &str) -> ConflictReason {
        match merge_documents(base.as_bytes(), head.as_bytes(), new.as_bytes()) {
            Ok(bytes) => panic!("expected a conflict, merged {}", String::from_utf8_lossy(&bytes)),
            Err(reason) => reason,
        }
    }

    fn key_conflict(path: &str) -> ConflictReason {
        ConflictReason::JsonKey { path: path.to_owned() }
    }

    #[test]
    fn disjoint_keys_merge_in_head_order_then_new_additions() {
        let base = r#"{"a":1,"b":2}"#;
        let head = r#"{"b":20,"a":1,"h":true}"#;
        let new = r#"{"a":10,"b":2,"n":null}"#;
        assert_eq!(merged(base, head, new), r#"{"b":20,"a":10,"h":true,"n":null}"#);
    }

    #[test]
    fn key_deleted_and_unchanged_is_deleted() {
        assert_eq!(
            merged(r#"{"a":1,"b":2}"#, r#"{"b":2}"#, r#"{"a":1,"b":3}"#),
            r#"{"b":3}"#
        );
    }

    #[test]
    fn key_deleted_and_changed_conflicts() {
        assert_eq!(
            conflict(r#"{"a":1,"b":2}"#, r#"{"b":2}"#, r#"{"a":5,"b":2}"#),
            key_conflict("/a")
        );
    }

    #[test]
    fn nested_objects_merge_recursively() {
        let base = r#"{"cfg":{"x":1,"y":{"z":1}},"k":0}"#;
        let head = r#"{"cfg":{"x":2,"y":{"z":1}},"k":0}"#;
        let new = r#"{"cfg":{"x":1,"y":{"z":1,"w":2}},"k":0}"#;
        assert_eq!(merged(base, head, new), r#"{"cfg":{"x":2,"y":{"z":1,"w":2}},"k":0}"#);
        let new = r#"{"cfg":{"x":3,"y":{"z":1}},"k":0}"#;
        assert_eq!(conflict(base, head, new), key_conflict("/cfg/x"));
    }

    #[test]
    fn arrays_are_whole_values() {
        let base = r#"{"list":[1,2,3]}"#;
        assert_eq!(
            conflict(base, r#"{"list":[0,1,2,3]}"#, r#"{"list":[1,2,3,4]}"#),
            key_conflict("/list")
        );
        assert_eq!(
            merged(base, r#"{"list":[1,2,3]}"#, r#"{"list":[3]}"#),
            r#"{"list":[3]}"#
        );
        assert_eq!(
            merged(base, r#"{"list":[9],"o":1}"#, r#"{"list":[9]}"#),
            r#"{"list":[9],"o":1}"#
        );
    }

    #[test]
    fn type_change_against_edit_conflicts() {
        assert_eq!(
            conflict(r#"{"a":{"x":1}}"#, r#"{"a":{"x":2}}"#, r#"{"a":"flat"}"#),
            key_conflict("/a")
        );
    }

    #[test]
    fn root_scalars_conflict_at_root_pointer() {
        assert_eq!(conflict("1", "2", "3"), key_conflict(""));
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(
            conflict(r#"{"a/b~":1}"#, r#"{"a/b~":2}"#, r#"{"a/b~":3}"#),
            key_conflict("/a~1b~0")
        );
    }

    #[test]
    fn absent_base_merges_objects_created_on_both_sides() {
        assert_eq!(merged("", r#"{"a":1}"#, r#"{"b":2}"#), r#"{"a":1,"b":2}"#);
        assert_eq!(conflict("", r#"{"a":1}"#, r#"{"a":2}"#), key_conflict("/a"));
        assert_eq!(
            merged(r#"{}"#, r#"{"c":{"a":1}}"#, r#"{"c":{"b":2}}"#),
            r#"{"c":{"a":1,"b":2}}"#
        );
    }

    #[test]
    fn unparsable_input_is_named() {
        let unparsable = |which| ConflictReason::UnparsableJson { which };
        assert_eq!(conflict("{", "{}", "[]"), unparsable("base"));
        assert_eq!(conflict("{}", "nope", "[]"), unparsable("head"));
        assert_eq!(conflict("{}", "[]", "{\"a\":}"), unparsable("new"));
    }

    #[test]
    fn pretty_output_keeps_head_indentation_and_trailing_newline() {
        let base = "{\n    \"a\": 1,\n    \"b\": 1\n}\n";
        let head = "{\n    \"a\": 2,\n    \"b\": 1\n}\n";
        let new = "{\"a\":1,\"b\":[1,2]}";
        assert_eq!(
            merged(base, head, new),
            "{\n    \"a\": 2,\n    \"b\": [\n        1,\n        2\n    ]\n}\n"
        );
    }

    #[test]
    fn pretty_output_keeps_tabs_crlf_and_no_trailing_newline() {
        let base = r#"{"a":1,"b":1}"#;
        let head = "{\r\n\t\"a\": 2,\r\n\t\"b\": 1\r\n}";
        let new = r#"{"a":1,"b":3}"#;
        assert_eq!(merged(base, head, new), "{\r\n\t\"a\": 2,\r\n\t\"b\": 3\r\n}");
    }

    #[test]
    fn compact_head_with_trailing_newline_stays_compact() {
        let merged = merged(r#"{"a":1,"b":1}"#, "{\"a\":2,\"b\":1}\n", r#"{"a":1,"b":2}"#);
        assert_eq!(merged, "{\"a\":2,\"b\":2}\n");
    }

    #[test]
    fn merged_value_equal_to_head_keeps_head_bytes() {
        let head = "{ \"a\" : 2 }";
        assert_eq!(merged(r#"{"a":1}"#, head, r#"{"a":2 }"#), head);
    }

    #[test]
    fn style_detection_defaults_to_two_spaces() {
        let style = Style::detect(b"{\n\"a\": 1}\n");
        assert_eq!(style.indent.as_deref(), Some(&b"  "[..]));
        assert!(style.trailing_newline);
        assert_eq!(Style::detect(b"{}").indent, None);
        let compact_line = Style::detect(b"{\"a\":1}\r\n");
        assert_eq!(compact_line.indent, None);
        assert!(compact_line.crlf && compact_line.trailing_newline);
    }

    #[test]
    fn merge_values_helper_reports_deletions() {
        let base = json!({"a": 1});
        assert_eq!(merge_values(Some(&base), None, Some(&base)), Ok(None));
        assert_eq!(merge_values(None, None, Some(&base)), Ok(Some(base.clone())));
    }
}
