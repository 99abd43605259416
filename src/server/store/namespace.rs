//! The namespace rules both stores enforce, as decisions over node rows a
//! store has already read (and, in PostgreSQL, locked).
//!
//! The queries, their locks and their order stay in each store; what an
//! operation may do given those rows is decided here once, so both stores
//! answer a request with the same conflict.

use super::{NodeGuard, NodeHead, StoreError, StoreResult};
use crate::api::{NodeKind, VersionInfo};
use crate::model::WsPath;

/// A `nodes` row as both stores select it: `id, path, kind, deleted, head`.
pub(crate) struct NodeRow {
    pub id: i64,
    pub path: String,
    pub kind: NodeKind,
    pub deleted: bool,
    pub head: i64,
}

impl NodeRow {
    /// The node as `node_at` answers it, with its head version.
    pub fn into_head(self, head: VersionInfo) -> NodeHead {
        NodeHead {
            node: self.id,
            path: self.path,
            kind: self.kind,
            deleted: self.deleted,
            head,
        }
    }

    /// The guard's preconditions: the node at the path is the expected one
    /// (`node_mismatch`) and its head is still the base version (`HeadMoved`).
    pub fn check_guard(&self, guard: &NodeGuard) -> StoreResult<()> {
        if guard.node.is_some_and(|n| n != self.id) {
            return Err(StoreError::Conflict {
                code: "node_mismatch",
                message: format!(
                    "{} is node {}, not node {}",
                    self.path,
                    self.id,
                    guard.node.unwrap_or_default()
                ),
            });
        }
        match guard.base_version {
            Some(base) if base != self.head => Err(StoreError::HeadMoved),
            _ => Ok(()),
        }
    }

    /// This live node stands where a directory is needed (`mkdir -p`).
    pub fn not_a_directory(&self) -> StoreError {
        StoreError::Conflict {
            code: "not_a_directory",
            message: format!("{} is a {}, not a directory", self.path, self.kind.as_str()),
        }
    }

    /// A content write to a live node must keep its kind.
    pub fn check_write_kind(&self, kind: NodeKind) -> StoreResult<()> {
        if self.kind == kind {
            return Ok(());
        }
        Err(StoreError::Conflict {
            code: "kind_mismatch",
            message: format!(
                "{} is a {}; delete it before writing a {}",
                self.path,
                self.kind.as_str(),
                kind.as_str()
            ),
        })
    }

    /// This deleted node cannot be restored: `other` now lives at its path.
    pub fn restore_blocked_by(&self, other: &NodeRow) -> StoreError {
        StoreError::Conflict {
            code: "path_occupied",
            message: format!(
                "{} was deleted and another {} now lives at that path; rename it first",
                self.path,
                other.kind.as_str()
            ),
        }
    }
}

/// A rename's checks on its source node, before the destination is read.
pub(crate) fn check_rename_source(source: &NodeRow, guard: &NodeGuard, from: &WsPath, to: &WsPath) -> StoreResult<()> {
    source.check_guard(guard)?;
    if source.kind == NodeKind::Dir && to.starts_with(from) && to != from {
        return Err(StoreError::Conflict {
            code: "invalid_rename",
            message: format!("cannot move directory {from} into itself ({to})"),
        });
    }
    Ok(())
}

/// Whether the live `target` at `to` may be replaced by `source`. A directory
/// target must also be empty: the caller checks that (it takes a query) and
/// answers [`rename_target_not_empty`].
pub(crate) fn check_rename_target(
    source: &NodeRow,
    target: &NodeRow,
    replace: bool,
    from: &WsPath,
    to: &WsPath,
) -> StoreResult<()> {
    if !replace {
        return Err(StoreError::Conflict {
            code: "exists",
            message: format!("{to} already exists; pass replace=true to overwrite it"),
        });
    }
    match (source.kind == NodeKind::Dir, target.kind == NodeKind::Dir) {
        (false, true) => Err(StoreError::Conflict {
            code: "is_a_directory",
            message: format!("{to} is a directory and {from} is not"),
        }),
        (true, false) => Err(StoreError::Conflict {
            code: "not_a_directory",
            message: format!("{to} is not a directory and {from} is one"),
        }),
        _ => Ok(()),
    }
}

/// The directory a rename would replace still has live descendants.
pub(crate) fn rename_target_not_empty(to: &WsPath) -> StoreError {
    StoreError::Conflict {
        code: "not_empty",
        message: format!("directory {to} is not empty"),
    }
}

/// A directory with live descendants is only deleted with `recursive`.
pub(crate) fn check_delete_contents(path: &WsPath, has_descendants: bool, recursive: bool) -> StoreResult<()> {
    if !has_descendants || recursive {
        return Ok(());
    }
    Err(StoreError::Conflict {
        code: "not_empty",
        message: format!("directory {path} is not empty; pass recursive=true to delete it and its contents"),
    })
}

/// The bounds of the paths strictly below `dir`, as `path >= lower AND path
/// < upper`: '0' sorts right after '/' (bytewise), so nothing but
/// descendants falls in between.
pub(crate) fn descendant_range(dir: &str) -> (String, String) {
    (format!("{dir}/"), format!("{dir}0"))
}

/// Where a descendant at `path` of a directory moved from `from` to `to` now
/// lives (children keep their ids; only their path moves).
pub(crate) fn moved_path(path: &str, from: &WsPath, to: &WsPath) -> String {
    format!("{}{}", to.as_str(), &path[from.as_str().len()..])
}

/// Whether a tree listing below a prefix (`path[prefix_len..]` is the part
/// below it) shows `path`: everything when recursive, else direct children.
pub(crate) fn tree_lists(path: &str, prefix_len: usize, recursive: bool) -> bool {
    recursive || !path[prefix_len..].contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(path: &str, kind: NodeKind) -> NodeRow {
        NodeRow {
            id: 7,
            path: path.into(),
            kind,
            deleted: false,
            head: 3,
        }
    }

    fn ws(path: &str) -> WsPath {
        WsPath::parse(path).expect("a valid test path")
    }

    fn conflict_code(result: StoreResult<()>) -> &'static str {
        match result {
            Err(StoreError::Conflict { code, .. }) => code,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn guard_checks_node_before_head() {
        let node = row("a", NodeKind::File);
        assert!(node.check_guard(&NodeGuard::default()).is_ok());
        let wrong_node = NodeGuard {
            base_version: Some(1),
            node: Some(8),
        };
        assert_eq!(conflict_code(node.check_guard(&wrong_node)), "node_mismatch");
        let moved = NodeGuard {
            base_version: Some(2),
            node: Some(7),
        };
        assert!(matches!(node.check_guard(&moved), Err(StoreError::HeadMoved)));
    }

    #[test]
    fn rename_rules() {
        let (dir, file) = (row("d", NodeKind::Dir), row("f", NodeKind::File));
        let guard = NodeGuard::default();
        assert_eq!(
            conflict_code(check_rename_source(&dir, &guard, &ws("d"), &ws("d/e"))),
            "invalid_rename"
        );
        assert!(check_rename_source(&dir, &guard, &ws("d"), &ws("d")).is_ok());
        assert!(check_rename_source(&dir, &guard, &ws("d"), &ws("de")).is_ok());
        let (from, to) = (ws("x"), ws("y"));
        assert_eq!(
            conflict_code(check_rename_target(&file, &file, false, &from, &to)),
            "exists"
        );
        assert_eq!(
            conflict_code(check_rename_target(&file, &dir, true, &from, &to)),
            "is_a_directory"
        );
        assert_eq!(
            conflict_code(check_rename_target(&dir, &file, true, &from, &to)),
            "not_a_directory"
        );
        assert!(check_rename_target(&dir, &dir, true, &from, &to).is_ok());
        assert_eq!(moved_path("a/b/c", &ws("a/b"), &ws("z")), "z/c");
    }

    #[test]
    fn paths_below_a_directory() {
        let (lower, upper) = descendant_range("a/b");
        for inside in ["a/b/c", "a/b/c/d", "a/b/~"] {
            assert!(lower.as_str() <= inside && inside < upper.as_str(), "{inside}");
        }
        for outside in ["a/b", "a/b-c", "a/b.c", "a/b0", "a/c"] {
            assert!(!(lower.as_str() <= outside && outside < upper.as_str()), "{outside}");
        }
        assert!(tree_lists("a/b/c", 4, false));
        assert!(!tree_lists("a/b/c/d", 4, false));
        assert!(tree_lists("a/b/c/d", 4, true));
    }

    #[test]
    fn delete_of_a_full_directory_needs_recursive() {
        let path = ws("d");
        assert!(check_delete_contents(&path, false, false).is_ok());
        assert!(check_delete_contents(&path, true, true).is_ok());
        assert_eq!(conflict_code(check_delete_contents(&path, true, false)), "not_empty");
    }
}
