//! WebDAV credentials: HTTP Basic with the token as the password (what
//! Finder, Explorer, davfs2 and rclone send), or a Bearer token.

use axum::http::{header, HeaderMap};
use base64::Engine;

/// The secret and the user name a request carries; the user name is only a
/// label (it becomes the versions' `agent_id`), the token decides access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DavCredentials {
    pub user: Option<String>,
    pub secret: String,
}

pub const REALM_CHALLENGE: &str = "Basic realm=\"contextfs\", charset=\"UTF-8\"";

/// `None` when the request carries no usable credentials.
pub fn credentials(headers: &HeaderMap) -> Option<DavCredentials> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| DavCredentials {
            user: None,
            secret: rest.to_string(),
        });
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    if password.is_empty() {
        return None;
    }
    Some(DavCredentials {
        user: (!user.is_empty()).then(|| user.to_string()),
        secret: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("ascii"));
        h
    }

    #[test]
    fn basic_password_is_the_token() {
        // "alice:cfs_x" in base64
        let c = credentials(&with_auth("Basic YWxpY2U6Y2ZzX3g=")).expect("parsed");
        assert_eq!(c.user.as_deref(), Some("alice"));
        assert_eq!(c.secret, "cfs_x");
        assert_eq!(credentials(&with_auth("Bearer tok")).expect("bearer").secret, "tok");
    }

    #[test]
    fn empty_or_garbled_credentials_are_none() {
        assert_eq!(credentials(&HeaderMap::new()), None);
        // "alice:" (no password)
        assert_eq!(credentials(&with_auth("Basic YWxpY2U6")), None);
        assert_eq!(credentials(&with_auth("Basic !!!")), None);
        assert_eq!(credentials(&with_auth("Digest x")), None);
    }
}
