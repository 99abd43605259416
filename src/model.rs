//! Validated names shared by the service, the client and the mount.
//!
//! Every path that crosses the API is checked here once, so the store and the
//! blob layer can trust what they are handed.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest single path component, as on ext4 and most POSIX filesystems.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest whole path, matching Linux's PATH_MAX.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest project name.
pub const MAX_PROJECT_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} has an empty component (leading, trailing or doubled '/')")]
    EmptyComponent(String),
    #[error("path {0:?} contains a '.' or '..' component")]
    DotComponent(String),
    #[error("path component {component:?} is {len} bytes; the limit is {MAX_NAME_BYTES}")]
    NameTooLong { component: String, len: usize },
    #[error("path is {0} bytes; the limit is {MAX_PATH_BYTES}")]
    PathTooLong(usize),
    #[error("path {0:?} contains a control character (U+0001-U+001F, U+007F-U+009F: newline, tab, ESC, DEL, ...); new names may not")]
    ControlChar(String),
}

/// True for the characters a new name may not contain: C0 controls, DEL and
/// C1 controls (Unicode category Cc). They would let a name forge log lines
/// or send terminal escape sequences to whoever lists the directory.
pub fn is_forbidden_in_name(c: char) -> bool {
    c.is_control()
}

/// A relative, normalised path inside a project: `dir/sub/file.md`.
///
/// No leading or trailing slash, no empty, `.` or `..` components, no NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct WsPath(String);

impl WsPath {
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::PathTooLong(raw.len()));
        }
        if raw.contains('\0') {
            return Err(PathError::Nul(raw.replace('\0', "\\0")));
        }
        for component in raw.split('/') {
            if component.is_empty() {
                return Err(PathError::EmptyComponent(raw.to_string()));
            }
            if component == "." || component == ".." {
                return Err(PathError::DotComponent(raw.to_string()));
            }
            if component.len() > MAX_NAME_BYTES {
                return Err(PathError::NameTooLong {
                    component: component.chars().take(32).collect::<String>() + "…",
                    len: component.len(),
                });
            }
        }
        Ok(Self(raw.to_string()))
    }

    /// The extra rule for a name being created or renamed to: no control
    /// characters. [`WsPath::parse`] does not apply it, so names stored
    /// before the rule existed stay readable, listable, deletable and can be
    /// renamed to a clean name.
    pub fn check_new(&self) -> Result<(), PathError> {
        if self.0.chars().any(is_forbidden_in_name) {
            Err(PathError::ControlChar(self.0.clone()))
        } else {
            Ok(())
        }
    }

    /// [`WsPath::parse`] plus [`WsPath::check_new`].
    pub fn parse_new(raw: &str) -> Result<Self, PathError> {
        let path = Self::parse(raw)?;
        path.check_new()?;
        Ok(path)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent directory, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<WsPath> {
        self.0.rsplit_once('/').map(|(parent, _)| WsPath(parent.to_string()))
    }

    /// Every ancestor directory, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> Vec<WsPath> {
        let mut out = Vec::new();
        let mut end = 0;
        while let Some(pos) = self.0[end..].find('/') {
            end += pos;
            out.push(WsPath(self.0[..end].to_string()));
            end += 1;
        }
        out
    }

    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// True when `self` is `other` or lies beneath it.
    pub fn starts_with(&self, other: &WsPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'/')
    }

    pub fn join(&self, name: &str) -> Result<WsPath, PathError> {
        WsPath::parse(&format!("{}/{}", self.0, name))
    }
}

impl fmt::Display for WsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WsPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        WsPath::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("project name {0:?} is invalid: use 1-64 characters from a-z, 0-9, '-', '_' and '.', starting with a letter or digit")]
pub struct ProjectNameError(pub String);

/// Project names appear in URLs and on disk, so they are kept to a safe alphabet.
pub fn validate_project_name(name: &str) -> Result<(), ProjectNameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PROJECT_NAME
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ProjectNameError(name.to_string()))
    }
}

/// A blake3 content hash in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct BlobHash(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not a blake3 hash (64 lowercase hex characters)")]
pub struct HashError(pub String);

impl BlobHash {
    pub fn parse(raw: &str) -> Result<Self, HashError> {
        if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(raw.to_string()))
        } else {
            Err(HashError(raw.chars().take(80).collect()))
        }
    }

    pub fn of(bytes: &[u8]) -> Self {
        Self(blake3::hash(bytes).to_hex().to_string())
    }

    pub fn from_blake3(hash: blake3::Hash) -> Self {
        Self(hash.to_hex().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        BlobHash::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn control_characters_are_refused_in_new_names_only() {
        for bad in ["a\nb", "a\tb", "x/\u{1b}[31m", "del\u{7f}", "c1\u{85}", "c1\u{9f}"] {
            let parsed = WsPath::parse(bad).expect("stored names stay readable");
            assert!(matches!(parsed.check_new(), Err(PathError::ControlChar(_))), "{bad:?}");
            assert!(WsPath::parse_new(bad).is_err(), "{bad:?}");
        }
        for good in ["a b", "ünïcödé/文件", "\u{a0}nbsp", "emoji😀"] {
            WsPath::parse_new(good).expect(good);
        }
    }

    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["a", "a/b.md", "dir/sub/.hidden", "x..y", "名前/ファイル.txt"] {
            assert!(WsPath::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_escapes_and_junk() {
        assert_eq!(WsPath::parse(""), Err(PathError::Empty));
        assert!(matches!(
            WsPath::parse("../etc/passwd"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(WsPath::parse("a/./b"), Err(PathError::DotComponent(_))));
        assert!(matches!(WsPath::parse("/abs"), Err(PathError::EmptyComponent(_))));
        assert!(matches!(WsPath::parse("a//b"), Err(PathError::EmptyComponent(_))));
        assert!(matches!(WsPath::parse("a/"), Err(PathError::EmptyComponent(_))));
        assert!(matches!(WsPath::parse("a\0b"), Err(PathError::Nul(_))));
        assert!(matches!(
            WsPath::parse(&"n".repeat(256)),
            Err(PathError::NameTooLong { .. })
        ));
        assert!(WsPath::parse(&"n".repeat(255)).is_ok());
        let long = vec!["d".repeat(200); 21].join("/");
        assert!(matches!(WsPath::parse(&long), Err(PathError::PathTooLong(_))));
    }

    #[test]
    fn ancestors_and_prefixes() {
        let p = WsPath::parse("a/b/c").unwrap();
        let names: Vec<_> = p.ancestors().iter().map(|a| a.to_string()).collect();
        assert_eq!(names, ["a", "a/b"]);
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert!(p.starts_with(&WsPath::parse("a/b").unwrap()));
        assert!(!WsPath::parse("a/bc")
            .unwrap()
            .starts_with(&WsPath::parse("a/b").unwrap()));
        assert_eq!(p.file_name(), "c");
    }

    #[test]
    fn project_names() {
        assert!(validate_project_name("team-notes_2").is_ok());
        for bad in ["", "Upper", "-lead", "has space", "a/b", &"x".repeat(65)] {
            assert!(validate_project_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes() {
        let h = BlobHash::of(b"hello");
        assert!(BlobHash::parse(h.as_str()).is_ok());
        assert!(BlobHash::parse("ABC").is_err());
        assert!(BlobHash::parse(&"G".repeat(64)).is_err());
    }
}
