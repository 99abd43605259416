//! Request paths and `Destination` headers: `/dav/{project}/{path}` split
//! and checked before anything reaches the WebDAV handler, so a bad name is a
//! 400 that names the problem, never a lookup.

use percent_encoding::percent_decode;

use crate::model::WsPath;

/// The prefix every WebDAV URL starts with.
pub const DAV_ROOT: &str = "/dav/";

/// Why a request path was refused (always 400).
#[derive(Debug, thiserror::Error)]
pub enum DavPathError {
    #[error("the URL is not under /dav/{{project}}/")]
    NotDav,
    #[error("a path segment is not UTF-8 once percent-decoded")]
    NotUtf8,
    #[error("a path segment contains an encoded '/' (%2F)")]
    EncodedSlash,
    #[error("the Destination header is not a URL under /dav/{0}/")]
    OtherDestination(String),
    #[error("{0}")]
    Invalid(String),
}

/// A parsed `/dav/{project}/{path}` URL path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DavTarget {
    pub project: String,
    /// `None` is the project's root.
    pub path: Option<WsPath>,
}

/// Splits and checks the (still percent-encoded) URL path of a request.
pub fn parse_request_path(raw: &str) -> Result<DavTarget, DavPathError> {
    let rest = raw
        .strip_prefix(DAV_ROOT)
        .or_else(|| (raw == "/dav").then_some(""))
        .ok_or(DavPathError::NotDav)?;
    let (project, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let project = decode_segment(project)?;
    Ok(DavTarget {
        project,
        path: parse_ws_path(rest)?,
    })
}

/// The workspace path of a `Destination` header (an absolute URL or an
/// absolute path), which must point into the same project.
pub fn parse_destination(header: &str, project: &str) -> Result<Option<WsPath>, DavPathError> {
    let path = match header.find("://") {
        // Absolute URL: drop scheme and authority.
        Some(i) => {
            let after = &header[i + 3..];
            after.find('/').map(|j| &after[j..]).unwrap_or("/")
        }
        None => header,
    };
    // A query or fragment is not part of the resource path.
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let target = parse_request_path(path).map_err(|e| match e {
        DavPathError::NotDav => DavPathError::OtherDestination(project.to_string()),
        other => other,
    })?;
    if target.project != project {
        return Err(DavPathError::OtherDestination(project.to_string()));
    }
    Ok(target.path)
}

fn decode_segment(segment: &str) -> Result<String, DavPathError> {
    let decoded = percent_decode(segment.as_bytes())
        .decode_utf8()
        .map_err(|_| DavPathError::NotUtf8)?;
    if decoded.contains('/') {
        return Err(DavPathError::EncodedSlash);
    }
    Ok(decoded.into_owned())
}

/// `a/b/` or `a/b` → `a/b`; `` → the root. Segments are decoded one by one so
/// an encoded `/` cannot smuggle a separator in.
fn parse_ws_path(rest: &str) -> Result<Option<WsPath>, DavPathError> {
    let trimmed = rest.strip_suffix('/').unwrap_or(rest);
    if trimmed.is_empty() {
        return Ok(None);
    }
    let segments = trimmed.split('/').map(decode_segment).collect::<Result<Vec<_>, _>>()?;
    WsPath::parse(&segments.join("/"))
        .map(Some)
        .map_err(|e| DavPathError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(p: &str) -> Option<WsPath> {
        Some(WsPath::parse(p).expect("valid test path"))
    }

    #[test]
    fn splits_project_and_path() {
        let t = parse_request_path("/dav/notes/docs/a%20b.md").expect("valid");
        assert_eq!(t.project, "notes");
        assert_eq!(t.path, ws("docs/a b.md"));
        assert_eq!(parse_request_path("/dav/notes/").expect("root").path, None);
        assert_eq!(parse_request_path("/dav/notes").expect("root").path, None);
        assert_eq!(parse_request_path("/dav/notes/dir/").expect("dir").path, ws("dir"));
    }

    #[test]
    fn refuses_dot_dot_nul_slash_and_bad_utf8() {
        for bad in [
            "/dav/notes/a/../b",
            "/dav/notes/a/%2E%2E/b",
            "/dav/notes/a%00b",
            "/dav/notes/a%2Fb",
            "/dav/notes/a%FFb",
            "/dav/notes/a//b",
            "/dav/notes/./b",
        ] {
            assert!(parse_request_path(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn destination_must_stay_in_the_project() {
        assert_eq!(
            parse_destination("http://127.0.0.1:9/dav/notes/x/y.md", "notes").expect("same project"),
            ws("x/y.md")
        );
        assert_eq!(
            parse_destination("/dav/notes/x", "notes").expect("absolute path"),
            ws("x")
        );
        assert!(parse_destination("http://h/dav/other/x", "notes").is_err());
        assert!(parse_destination("http://h/api/v1/x", "notes").is_err());
        assert!(parse_destination("http://h/dav/notes/../x", "notes").is_err());
    }
}
