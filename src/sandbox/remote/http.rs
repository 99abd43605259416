//! HTTP to a sandbox provider, with the retry policy every provider shares:
//! a throttled request (429) is sent again after a backoff, and so is one
//! that failed in passing (5xx, no connection) when sending it twice does no
//! harm. Bounded — at most [`ATTEMPTS`] tries, a few seconds in all — so a
//! failing provider gives a clear error instead of a hang. Each client turns
//! the final [`Failure`] into its own error, worded for its service.

use std::time::Duration;

use reqwest::{RequestBuilder, Response};

/// A provider's API base URL (trimmed, no trailing slash) and the HTTP
/// client every provider uses. `Err((url, detail))` for a URL that is not
/// http(s) (named by `variable`, its environment variable) or a client that
/// cannot be built; each provider wraps it in its own error.
pub fn api_client(api_url: &str, variable: &str) -> Result<(String, reqwest::Client), (String, String)> {
    let api = api_url.trim().trim_end_matches('/').to_string();
    if !(api.starts_with("http://") || api.starts_with("https://")) {
        return Err((api, format!("{variable} must start with http:// or https://")));
    }
    match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
    {
        Ok(http) => Ok((api, http)),
        Err(e) => Err((api, e.to_string())),
    }
}

/// How many times a request is tried before its failure is reported.
pub const ATTEMPTS: u32 = 4;

/// Whether a request that failed in passing may be sent again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Retry {
    /// Sending it twice does no harm (reads, deletes, start, writes of the same bytes).
    Idempotent,
    /// Only when the provider said it did not take it (429).
    OnlyThrottled,
}

/// Why a request did not succeed, after its last try.
#[derive(Debug)]
pub enum Failure {
    /// No answer: no connection, or none in time (`timed_out`).
    Transport {
        url: String,
        detail: String,
        timed_out: bool,
    },
    /// An answer with an error status.
    Status {
        status: u16,
        retry_after: Option<u64>,
        body: String,
        attempts: u32,
    },
}

/// What an error answer means, the same for every provider; each maps it
/// into its own error type (with its own wording).
pub enum Refusal {
    /// 401 or 403: the key.
    Unauthorized {
        status: u16,
        message: String,
    },
    NotFound {
        message: String,
    },
    /// 429 after the retries (with Retry-After, if the provider sent one).
    Throttled {
        message: String,
        attempts: u32,
    },
    /// 5xx after the retries.
    Server {
        status: u16,
        message: String,
        attempts: u32,
    },
    /// Any other 4xx: the request itself.
    Rejected {
        status: u16,
        message: String,
    },
}

impl Refusal {
    /// The meaning of a `Failure::Status` answer.
    pub fn of(status: u16, retry_after: Option<u64>, body: &str, attempts: u32) -> Refusal {
        let message = error_message(body, status);
        match status {
            401 | 403 => Refusal::Unauthorized { status, message },
            404 => Refusal::NotFound { message },
            429 => Refusal::Throttled {
                message: match retry_after {
                    Some(s) => format!("{message}; Retry-After {s} s"),
                    None => message,
                },
                attempts,
            },
            s if s >= 500 => Refusal::Server {
                status: s,
                message,
                attempts,
            },
            s => Refusal::Rejected { status: s, message },
        }
    }
}

/// Sends the request with the shared retry policy (see the module doc).
pub async fn send(what: &str, retry: Retry, builder: RequestBuilder) -> Result<Response, Failure> {
    let mut attempt = 1;
    loop {
        // Every body sent here is in memory, so the request can be cloned.
        let Some(request) = builder.try_clone() else {
            return send_once(attempt, builder).await;
        };
        let result = send_once(attempt, request).await;
        let (again, retry_after) = match &result {
            Err(Failure::Status {
                status: 429,
                retry_after,
                ..
            }) => (true, *retry_after),
            Err(Failure::Status { status, .. }) if *status >= 500 => (retry == Retry::Idempotent, None),
            // A request that got no answer in time is not sent again: that could hang for long.
            Err(Failure::Transport { timed_out, .. }) => (!timed_out && retry == Retry::Idempotent, None),
            _ => (false, None),
        };
        match result {
            Err(f) if again && attempt < ATTEMPTS => {
                let delay = backoff(attempt, retry_after);
                tracing::warn!("{what}: {}; trying again in {delay:?}", describe_failure(&f));
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn send_once(attempt: u32, builder: RequestBuilder) -> Result<Response, Failure> {
    let response = builder.send().await.map_err(|e| Failure::Transport {
        url: e.url().map(|u| u.to_string()).unwrap_or_default(),
        detail: if e.is_timeout() {
            "no answer in time".to_string()
        } else {
            cause(&e)
        },
        timed_out: e.is_timeout(),
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = response.text().await.unwrap_or_default();
    Err(Failure::Status {
        status: status.as_u16(),
        retry_after,
        body,
        attempts: attempt,
    })
}

fn describe_failure(f: &Failure) -> String {
    match f {
        Failure::Transport { url, detail, .. } => format!("no answer from {url}: {detail}"),
        Failure::Status { status, body, .. } => {
            format!("HTTP {status}: {}", body.chars().take(200).collect::<String>())
        }
    }
}

/// 250 ms, 500 ms, 1 s, … or what Retry-After asked for (at most 10 s).
fn backoff(attempt: u32, retry_after: Option<u64>) -> Duration {
    match retry_after {
        Some(s) => Duration::from_secs(s.min(10)),
        None => Duration::from_millis(250 << (attempt - 1).min(4)),
    }
}

/// reqwest's Display hides the cause; walk the chain.
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The causes of a transport error, without reqwest's "error sending request for url (...)".
fn cause(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// The human part of a JSON error body: its `message` (a string, or a list
/// of them), else its `error`, else the text itself.
pub fn error_message(text: &str, status: u16) -> String {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        match value.get("message") {
            Some(serde_json::Value::String(m)) if !m.is_empty() => return m.clone(),
            Some(serde_json::Value::Array(items)) if !items.is_empty() => {
                return items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            _ => {}
        }
        if let Some(e) = value.get("error").and_then(|e| e.as_str()) {
            return e.to_string();
        }
    }
    let text = text.trim();
    if text.is_empty() {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_string()
    } else {
        text.chars().take(200).collect()
    }
}

/// A multipart/form-data body: (field name, filename, bytes) per part.
pub fn multipart_body(parts: &[(String, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    use std::io::Write;
    let boundary = format!("contextfs-{}", hex::encode(rand::random::<[u8; 12]>()));
    let size: usize = parts.iter().map(|(_, _, b)| b.len() + 160).sum();
    let mut body = Vec::with_capacity(size + 64);
    for (name, filename, bytes) in parts {
        write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").expect("write to a Vec");
        if let Some(f) = filename {
            let f = f.replace(['"', '\r', '\n'], "_");
            write!(body, "; filename=\"{f}\"\r\nContent-Type: application/octet-stream").expect("write to a Vec");
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").expect("write to a Vec");
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_read() {
        let body = r#"{"path":"/api/sandbox","timestamp":"x","statusCode":401,"error":"Unauthorized","message":"Invalid API key"}"#;
        assert_eq!(error_message(body, 401), "Invalid API key");
        assert_eq!(error_message(r#"{"message":["a","b"]}"#, 400), "a; b");
        assert_eq!(error_message(r#"{"code":401,"message":"bad key"}"#, 401), "bad key");
        assert_eq!(error_message("", 502), "Bad Gateway");
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        assert_eq!(backoff(1, None), Duration::from_millis(250));
        assert_eq!(backoff(3, None), Duration::from_secs(1));
        assert_eq!(backoff(1, Some(3)), Duration::from_secs(3));
        assert_eq!(backoff(1, Some(600)), Duration::from_secs(10));
    }
}
