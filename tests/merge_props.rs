//! Property tests for the three-way merge engine.

use contextfs::merge::{merge, ConflictReason, MergeOutcome};
use proptest::prelude::*;
use proptest::sample::select;
use serde::Serialize;
use serde_json::ser::{PrettyFormatter, Serializer};
use serde_json::{json, Map, Value};

/// Paths covering every content kind, so each identity is checked per kind.
fn any_path() -> impl Strategy<Value = &'static str> {
    select(vec![
        "blob.bin",
        "data.json",
        "DATA.JSON",
        "notes.md",
        "plain",
        "events.jsonl",
    ])
}

/// Paths merged line by line: text, Markdown and JSON Lines.
fn line_path() -> impl Strategy<Value = &'static str> {
    select(vec!["log.md", "notes.txt", "plain", "events.jsonl", "events.NDJSON"])
}

/// Base text of whole lines (every line terminated) over a tiny alphabet,
/// ending in `eol`.
fn base_lines(eol: &'static str) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(select(vec!["a", "b", "c", "", "- item", "é", "{\"n\":1}"]), 0..12)
        .prop_map(move |lines| lines.into_iter().map(|l| format!("{l}{eol}")).collect())
}

/// `count` lines that one side adds, unique to that side and never equal to
/// a base line (a JSON object per line, as a `.jsonl` log would hold).
fn added_lines(tag: &str, count: usize, eol: &str) -> Vec<String> {
    (0..count)
        .map(|k| format!("{{\"by\":\"{tag}\",\"n\":{k}}}{eol}"))
        .collect()
}

/// Checks the union rule on a merge of sides that both only inserted at
/// base line `point`: every line of both sides is there exactly once,
/// head's before new's, with the base's lines around them in order.
fn check_union(
    merged: &str,
    base: &[String],
    point: usize,
    head_added: &[String],
    new_added: &[String],
) -> Result<(), TestCaseError> {
    let lines: Vec<&str> = merged.split_inclusive('\n').collect();
    for line in head_added.iter().chain(new_added) {
        let count = lines.iter().filter(|l| **l == line.as_str()).count();
        prop_assert_eq!(count, 1, "{:?} is not in the merge exactly once: {:?}", line, merged);
    }
    let position = |line: &String| lines.iter().position(|l| *l == line.as_str());
    let last_head = head_added.last().and_then(position);
    let first_new = new_added.first().and_then(position);
    prop_assert!(last_head < first_new, "head's lines come first: {:?}", merged);
    let kept_base: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !head_added.iter().chain(new_added).any(|a| a == l))
        .collect();
    prop_assert_eq!(kept_base, base.iter().map(String::as_str).collect::<Vec<_>>());
    let expected: String = base[..point]
        .iter()
        .chain(head_added)
        .chain(new_added)
        .chain(&base[point..])
        .map(String::as_str)
        .collect();
    prop_assert_eq!(merged, expected.as_str());
    Ok(())
}

/// The distinct lines of a merge without their line endings, sorted: equal
/// for two merges that differ only in how a union ordered its lines (and, as
/// lines common to both insertions are written once, which of two equally
/// long common runs it kept).
fn sorted_lines(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<String> = text
        .split_inclusive('\n')
        .map(|l| {
            l.strip_suffix('\n')
                .map_or(l, |l| l.strip_suffix('\r').unwrap_or(l))
                .to_owned()
        })
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

/// Text over a tiny alphabet of lines, so the sides share lines and real
/// line merges (and conflicts) happen often.
fn small_text() -> impl Strategy<Value = String> {
    let line = select(vec!["a\n", "b\n", "c\n", "a\r\n", "d", "\n", "- item\n", "é\n"]);
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.concat())
}

fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(Value::from),
        "[a-z\"\\\\/\n ]{0,6}".prop_map(Value::String),
    ]
}

/// JSON values with keys drawn from a small set so sides collide on keys.
fn json_value() -> impl Strategy<Value = Value> {
    json_scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec((select(vec!["a", "b", "c", "d", "a/b", "~"]), inner), 0..5)
                .prop_map(|entries| { Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),) }),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((select(vec!["a", "b", "c", "d"]), json_value()), 0..5)
        .prop_map(|entries| Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// Deterministically edits `value` driven by `seeds`: keeps, deletes,
/// replaces or recurses into keys, and sometimes adds one.
fn mutate(value: &Value, seeds: &mut impl Iterator<Item = u8>) -> Value {
    let Value::Object(map) = value else {
        return match seeds.next().unwrap_or(0) % 3 {
            0 => json!(seeds.next().unwrap_or(0)),
            _ => value.clone(),
        };
    };
    let mut out = Map::new();
    for (key, child) in map {
        match seeds.next().unwrap_or(0) % 6 {
            0 => {}
            1 => {
                out.insert(key.clone(), json!(["edited", seeds.next().unwrap_or(0)]));
            }
            2 => {
                out.insert(key.clone(), mutate(child, seeds));
            }
            _ => {
                out.insert(key.clone(), child.clone());
            }
        }
    }
    if seeds.next().unwrap_or(0) < 64 {
        out.insert(format!("added{}", seeds.next().unwrap_or(0) % 3), json!({"x": 1}));
    }
    Value::Object(out)
}

/// Serializes in one of the layouts agents and editors produce.
fn render(value: &Value, layout: u8) -> Vec<u8> {
    let pretty = |indent: &[u8]| {
        let mut out = Vec::new();
        let mut serializer = Serializer::with_formatter(&mut out, PrettyFormatter::with_indent(indent));
        // Writing a `Value` into memory cannot fail.
        let _ = value.serialize(&mut serializer);
        out
    };
    match layout % 5 {
        0 => value.to_string().into_bytes(),
        1 => format!("{value}\n").into_bytes(),
        2 => pretty(b"  "),
        3 => [pretty(b"    "), b"\n".to_vec()].concat(),
        // JSON strings escape newlines, so every raw one is structural.
        _ => String::from_utf8_lossy(&pretty(b"\t"))
            .replace('\n', "\r\n")
            .into_bytes(),
    }
}

fn parse(bytes: &[u8]) -> Result<Value, TestCaseError> {
    serde_json::from_slice(bytes).map_err(|err| {
        TestCaseError::fail(format!(
            "merged JSON does not parse: {err}: {}",
            String::from_utf8_lossy(bytes)
        ))
    })
}

fn expect_merged(outcome: MergeOutcome) -> Result<Vec<u8>, TestCaseError> {
    match outcome {
        MergeOutcome::Merged(bytes) => Ok(bytes),
        MergeOutcome::Conflict(reason) => Err(TestCaseError::fail(format!("unexpected conflict: {reason}"))),
    }
}

/// Who changes a base line in the disjoint-edit test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Nobody,
    Head,
    New,
}

/// One line's planned edit: its owner, whether the original line survives,
/// and how many fresh lines are added (before or after it).
#[derive(Debug, Clone)]
struct LinePlan {
    owner: Owner,
    keep_original: bool,
    added: usize,
    add_before: bool,
}

fn line_plans() -> impl Strategy<Value = Vec<LinePlan>> {
    let plan = (
        select(vec![Owner::Nobody, Owner::Nobody, Owner::Head, Owner::New]),
        any::<bool>(),
        0usize..3,
        any::<bool>(),
    )
        .prop_map(|(owner, keep_original, added, add_before)| LinePlan {
            owner,
            keep_original,
            added,
            add_before,
        });
    prop::collection::vec(plan, 1..30).prop_map(|mut plans| {
        // Keep at least one unchanged line between the two sides' edits.
        for index in 1..plans.len() {
            let previous = plans[index - 1].owner;
            if previous != Owner::Nobody && plans[index].owner != previous {
                plans[index].owner = Owner::Nobody;
            }
        }
        plans
    })
}

/// Builds base, head, new and the expected merge from per-line plans.
fn disjoint_texts(plans: &[LinePlan], eol: &str, final_eol: bool) -> [String; 4] {
    let mut texts: [String; 4] = Default::default();
    let [base, head, new, expected] = &mut texts;
    for (index, plan) in plans.iter().enumerate() {
        let is_last = index + 1 == plans.len();
        let terminator = if is_last && !final_eol { "" } else { eol };
        let original = format!("line {index}{terminator}");
        let tag = if plan.owner == Owner::Head { "head" } else { "new" };
        let fresh: String = (0..plan.added).map(|k| format!("{tag} {index}.{k}{eol}")).collect();
        let edited = match (plan.keep_original, plan.add_before) {
            (true, true) => format!("{fresh}{original}"),
            (true, false) => format!("{original}{fresh}"),
            (false, _) => fresh,
        };
        base.push_str(&original);
        let (head_line, new_line) = match plan.owner {
            Owner::Nobody => (&original, &original),
            Owner::Head => (&edited, &original),
            Owner::New => (&original, &edited),
        };
        head.push_str(head_line);
        new.push_str(new_line);
        expected.push_str(if plan.owner == Owner::Nobody {
            &original
        } else {
            &edited
        });
    }
    texts
}

proptest! {
    #[test]
    fn unchanged_new_keeps_head(path in any_path(), base in any_bytes(), head in any_bytes()) {
        prop_assert_eq!(merge(path, &base, &head, &base), MergeOutcome::Merged(head));
    }

    #[test]
    fn unchanged_head_takes_new(path in any_path(), base in any_bytes(), new in any_bytes()) {
        prop_assert_eq!(merge(path, &base, &base, &new), MergeOutcome::Merged(new));
    }

    #[test]
    fn same_change_on_both_sides_is_that_change(path in any_path(), base in any_bytes(), both in any_bytes()) {
        prop_assert_eq!(merge(path, &base, &both, &both), MergeOutcome::Merged(both));
    }

    #[test]
    fn identities_hold_for_generated_text(base in small_text(), a in small_text(), c in small_text()) {
        let (base, a, c) = (base.as_bytes(), a.as_bytes(), c.as_bytes());
        prop_assert_eq!(merge("notes.md", base, a, base), MergeOutcome::Merged(a.to_vec()));
        prop_assert_eq!(merge("notes.md", base, base, c), MergeOutcome::Merged(c.to_vec()));
        prop_assert_eq!(merge("notes.md", base, c, c), MergeOutcome::Merged(c.to_vec()));
    }

    #[test]
    fn identities_hold_for_generated_json(base in json_value(), a in json_value(), layouts in any::<[u8; 2]>()) {
        let (base, a) = (render(&base, layouts[0]), render(&a, layouts[1]));
        prop_assert_eq!(merge("d.json", &base, &a, &base), MergeOutcome::Merged(a.clone()));
        prop_assert_eq!(merge("d.json", &base, &base, &a), MergeOutcome::Merged(a.clone()));
        prop_assert_eq!(merge("d.json", &base, &a, &a), MergeOutcome::Merged(a.clone()));
    }

    #[test]
    fn disjoint_line_edits_merge_exactly(
        plans in line_plans(),
        crlf in any::<bool>(),
        final_eol in any::<bool>(),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let [base, head, new, expected] = disjoint_texts(&plans, eol, final_eol);
        let merged = expect_merged(merge("notes.md", base.as_bytes(), head.as_bytes(), new.as_bytes()))?;
        prop_assert_eq!(String::from_utf8_lossy(&merged), expected.as_str());
        // The rules treat both sides alike.
        let swapped = expect_merged(merge("notes.md", base.as_bytes(), new.as_bytes(), head.as_bytes()))?;
        prop_assert_eq!(swapped, merged);
    }

    /// Formerly "text merge is symmetric": since same-point insertions are a
    /// union in commit order, swapping head and new may reorder those lines,
    /// but nothing else changes: the same outcome, the same distinct lines.
    #[test]
    fn text_merge_is_symmetric_up_to_union_order(base in small_text(), head in small_text(), new in small_text()) {
        let forward = merge("notes.md", base.as_bytes(), head.as_bytes(), new.as_bytes());
        let backward = merge("notes.md", base.as_bytes(), new.as_bytes(), head.as_bytes());
        match (&forward, &backward) {
            (MergeOutcome::Merged(f), MergeOutcome::Merged(b)) => prop_assert_eq!(sorted_lines(f), sorted_lines(b)),
            _ => prop_assert_eq!(forward, backward),
        }
    }

    #[test]
    fn appends_on_both_sides_are_all_kept_head_first(
        path in line_path(),
        crlf in any::<bool>(),
        base in base_lines("\n"),
        head_count in 1usize..6,
        new_count in 1usize..6,
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let base: Vec<String> = base.iter().map(|l| l.replace('\n', eol)).collect();
        let head_added = added_lines("head", head_count, eol);
        let new_added = added_lines("new", new_count, eol);
        let base_text = base.concat();
        let head = format!("{base_text}{}", head_added.concat());
        let new = format!("{base_text}{}", new_added.concat());
        let merged = expect_merged(merge(path, base_text.as_bytes(), head.as_bytes(), new.as_bytes()))?;
        check_union(&String::from_utf8_lossy(&merged), &base, base.len(), &head_added, &new_added)?;
    }

    #[test]
    fn insertions_at_one_point_are_all_kept_head_first(
        path in line_path(),
        base in base_lines("\n"),
        point in any::<prop::sample::Index>(),
        head_count in 1usize..6,
        new_count in 1usize..6,
    ) {
        let point = point.index(base.len() + 1);
        let head_added = added_lines("head", head_count, "\n");
        let new_added = added_lines("new", new_count, "\n");
        let with = |added: &[String]| -> String {
            base[..point].iter().chain(added).chain(&base[point..]).map(String::as_str).collect()
        };
        let base_text = base.concat();
        let merged = expect_merged(merge(
            path,
            base_text.as_bytes(),
            with(&head_added).as_bytes(),
            with(&new_added).as_bytes(),
        ))?;
        check_union(&String::from_utf8_lossy(&merged), &base, point, &head_added, &new_added)?;
    }

    #[test]
    fn identical_insertions_at_one_point_are_kept_once(
        path in line_path(),
        base in base_lines("\n"),
        point in any::<prop::sample::Index>(),
        count in 1usize..6,
        head_edits_first in any::<bool>(),
    ) {
        // Both insert the same lines; head also edits the first line, so the
        // merge is not one of the trivial cases. Base lines are unique here:
        // with repeated lines the diff may align head's edit so that its
        // insertion lands next to, not at, new's point (a property of line
        // diffs, not of the union).
        let base: Vec<String> = base.iter().enumerate().map(|(i, l)| format!("{i} {l}")).collect();
        let point = point.index(base.len() + 1);
        let added = added_lines("both", count, "\n");
        let mut head: Vec<String> = base[..point].iter().chain(&added).chain(&base[point..]).cloned().collect();
        let new = head.concat();
        let mut expected = head.clone();
        if head_edits_first && point > 1 {
            head[0] = "edited by head\n".to_owned();
            expected[0] = head[0].clone();
        }
        let merged = expect_merged(merge(path, base.concat().as_bytes(), head.concat().as_bytes(), new.as_bytes()))?;
        prop_assert_eq!(String::from_utf8_lossy(&merged), expected.concat());
    }

    #[test]
    fn merged_json_always_parses(
        base in json_object(),
        head_seeds in prop::collection::vec(any::<u8>(), 0..32),
        new_seeds in prop::collection::vec(any::<u8>(), 0..32),
        layouts in any::<[u8; 3]>(),
    ) {
        let head = mutate(&base, &mut head_seeds.into_iter());
        let new = mutate(&base, &mut new_seeds.into_iter());
        let outcome = merge(
            "d.json",
            &render(&base, layouts[0]),
            &render(&head, layouts[1]),
            &render(&new, layouts[2]),
        );
        match outcome {
            MergeOutcome::Merged(bytes) => {
                parse(&bytes)?;
            }
            MergeOutcome::Conflict(reason) => {
                prop_assert!(matches!(reason, ConflictReason::JsonKey { .. }), "{reason}");
            }
        }
    }

    #[test]
    fn json_merge_is_symmetric_in_content(
        base in json_object(),
        head_seeds in prop::collection::vec(any::<u8>(), 0..32),
        new_seeds in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let [base, head, new] = [
            base.clone(),
            mutate(&base, &mut head_seeds.into_iter()),
            mutate(&base, &mut new_seeds.into_iter()),
        ]
        .map(|value| render(&value, 0));
        match (merge("d.json", &base, &head, &new), merge("d.json", &base, &new, &head)) {
            (MergeOutcome::Merged(forward), MergeOutcome::Merged(backward)) => {
                prop_assert_eq!(parse(&forward)?, parse(&backward)?);
            }
            (MergeOutcome::Conflict(_), MergeOutcome::Conflict(_)) => {}
            (forward, backward) => prop_assert!(false, "{forward:?} vs {backward:?}"),
        }
    }

    #[test]
    fn json_edits_to_disjoint_keys_are_both_kept(
        values in prop::collection::vec(json_value(), 2..8),
        head_picks in prop::collection::vec(any::<bool>(), 8),
        edit_kinds in prop::collection::vec(0u8..3, 8),
        layouts in any::<[u8; 3]>(),
    ) {
        // Key i belongs to head when head_picks[i], else to new; each owner
        // edits, deletes or keeps its keys, and each side adds its own key.
        let base: Map<String, Value> =
            values.iter().enumerate().map(|(i, v)| (format!("k{i}"), v.clone())).collect();
        let mut head = base.clone();
        let mut new = base.clone();
        for (i, key) in base.keys().enumerate() {
            let side = if head_picks[i] { &mut head } else { &mut new };
            match edit_kinds[i] {
                0 => { side.insert(key.clone(), json!({"edited": i})); }
                1 => { side.remove(key); }
                _ => {}
            }
        }
        head.insert("head_only".into(), json!("h"));
        new.insert("new_only".into(), json!([1, 2]));

        // Expected: head's keys in head's order with new's edits applied,
        // then keys only new added.
        let mut expected = Map::new();
        for (key, head_value) in &head {
            match (base.get(key), new.get(key)) {
                (Some(_), None) => {}
                (Some(base_value), Some(new_value)) if new_value != base_value => {
                    expected.insert(key.clone(), new_value.clone());
                }
                _ => { expected.insert(key.clone(), head_value.clone()); }
            }
        }
        expected.insert("new_only".into(), json!([1, 2]));

        let merged = expect_merged(merge(
            "d.json",
            &render(&Value::Object(base), layouts[0]),
            &render(&Value::Object(head), layouts[1]),
            &render(&Value::Object(new), layouts[2]),
        ))?;
        let merged = parse(&merged)?;
        let merged_keys: Vec<&String> = merged.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        let expected_keys: Vec<&String> = expected.keys().collect();
        prop_assert_eq!(merged_keys, expected_keys);
        prop_assert_eq!(merged, Value::Object(expected));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(
        path in any_path(),
        base in any_bytes(),
        head in any_bytes(),
        new in any_bytes(),
    ) {
        let _ = merge(path, &base, &head, &new);
    }

    #[test]
    fn never_panics_on_text_like_inputs(
        path in any_path(),
        base in small_text(),
        head in small_text(),
        new in small_text(),
    ) {
        let _ = merge(path, base.as_bytes(), head.as_bytes(), new.as_bytes());
    }

    #[test]
    fn never_panics_on_json_like_inputs(
        base in json_value(),
        head in json_value(),
        new in json_value(),
        layouts in any::<[u8; 3]>(),
        blank_base in any::<bool>(),
    ) {
        let base = if blank_base { Vec::new() } else { render(&base, layouts[0]) };
        let outcome = merge("d.json", &base, &render(&head, layouts[1]), &render(&new, layouts[2]));
        if let MergeOutcome::Merged(bytes) = outcome {
            parse(&bytes)?;
        }
    }
}
