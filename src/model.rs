//! Validated names shared by the service, the client and the mount.
//!
//! Every path that crosses the API is checked here once, so the store and the
//! blob layer can trust what they are handed.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest single path component, as on ext4 and most POSIX filesystems.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest whole path inside a project: four times Linux's PATH_MAX. Linux
/// limits each syscall's path argument to PATH_MAX (4,096 bytes with the
/// NUL), not a file's distance from the root, so a relative path of that
/// length must work from any directory inside the mount: from any directory
/// whose own path is up to 12 KiB.
pub const MAX_PATH_BYTES: usize = 16 * 1024;
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

/// A file time as the API carries it: RFC 3339 in UTC with nanoseconds
/// (`2001-02-03T04:05:06.123456789Z`), so `rsync` and `make` compare exactly.
pub fn format_file_time(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not a time: use RFC 3339 (2001-02-03T04:05:06.5Z) or Unix seconds (981173106.5)")]
pub struct TimeError(pub String);

/// A file time from the API: RFC 3339 with any offset, or Unix seconds with
/// an optional fraction (the form of WebDAV's `X-OC-Mtime`). Nanoseconds
/// since the epoch; years 1678 to 2261, the range that fits.
pub fn parse_file_time(raw: &str) -> Result<i64, TimeError> {
    let bad = || TimeError(raw.chars().take(64).collect());
    let raw_trimmed = raw.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw_trimmed) {
        return t.timestamp_nanos_opt().ok_or_else(bad);
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = match raw_trimmed.split_once('.') {
        Some((whole, fraction)) if digits(fraction) => (whole, fraction),
        Some(_) => return Err(bad()),
        None => (raw_trimmed, ""),
    };
    let negative = whole.starts_with('-');
    let whole_digits = whole.strip_prefix('-').unwrap_or(whole);
    if !digits(whole_digits) || fraction.len() > 9 {
        return Err(bad());
    }
    let seconds: i64 = whole_digits.parse().map_err(|_| bad())?;
    let nanos: i64 = format!("{fraction:0<9}").parse().map_err(|_| bad())?;
    let total = seconds
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(nanos))
        .ok_or_else(bad)?;
    Ok(if negative { -total } else { total })
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
        let long = vec!["d".repeat(200); 82].join("/");
        assert!(long.len() > MAX_PATH_BYTES);
        assert!(matches!(WsPath::parse(&long), Err(PathError::PathTooLong(_))));
        let longest = vec!["d".repeat(255); 64].join("/");
        assert!(longest.len() <= MAX_PATH_BYTES && longest.len() > 4 * 4000);
        assert!(WsPath::parse(&longest).is_ok());
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

    #[test]
    fn file_times_round_trip_with_nanoseconds() {
        let t = parse_file_time("2001-02-03T04:05:06.123456789Z").unwrap();
        assert_eq!(t, 981_173_106_123_456_789);
        assert_eq!(format_file_time(t), "2001-02-03T04:05:06.123456789Z");
        assert_eq!(
            parse_file_time("2001-02-03T05:05:06.5+01:00").unwrap(),
            981_173_106_500_000_000
        );
        assert_eq!(parse_file_time("981173106").unwrap(), 981_173_106_000_000_000);
        assert_eq!(parse_file_time("981173106.25").unwrap(), 981_173_106_250_000_000);
        assert_eq!(parse_file_time("-1.5").unwrap(), -1_500_000_000);
    }

    #[test]
    fn malformed_file_times_are_refused() {
        for bad in [
            "",
            "yesterday",
            "2001-02-30T00:00:00Z",
            "12.",
            ".5",
            "1.1234567890",
            "1e9",
            "99999999999999999999",
        ] {
            assert!(parse_file_time(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
