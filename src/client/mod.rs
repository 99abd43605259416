//! Typed REST client for `/api/v1`, shared by the CLI, the mount and sandboxes.

use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

mod chunked;
pub use chunked::{chunked_threshold, UploadError};
mod ops;
pub use ops::ActivityQuery;

use crate::api::*;
use crate::model::BlobHash;

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[derive(Debug, Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: StatusCode,
        code: ErrorCode,
        message: String,
        head: Option<Box<VersionInfo>>,
    },
    #[error("cannot reach the server at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("unexpected answer from {url}: {detail}")]
    Protocol { url: String, detail: String },
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(code.clone()),
            _ => None,
        }
    }

    /// Whether the server answered with `code`.
    pub fn has_code(&self, code: ErrorCode) -> bool {
        matches!(self, ClientError::Api { code: c, .. } if *c == code)
    }

    /// Worth retrying later: the server was unreachable or failed on its side.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
            ClientError::Protocol { .. } => false,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// A file's bytes and the version they belong to.
#[derive(Debug, Clone)]
pub struct FileContent {
    pub node: i64,
    pub version: i64,
    pub hash: BlobHash,
    pub kind: NodeKind,
    pub mode: u32,
    pub status: VersionStatus,
    pub bytes: Bytes,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    api: String,
    token: Option<String>,
    /// Bound on a commit, batch, mkdir, rename or delete (see [`WRITE_TIMEOUT`]).
    write_timeout: Duration,
}

/// How long a commit, batch, mkdir, rename or delete may wait for its
/// answer. Their bodies are small (contents go before, in blob uploads,
/// which the 600 s total bound covers), so a server that takes longer is
/// stuck, or the connection is half-open (a pooled connection a NAT or a
/// sleeping laptop dropped silently): the request fails as unreachable, the
/// change stays queued, and its idempotency key makes the retry safe.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

impl Client {
    /// `server` is the base URL, e.g. `http://127.0.0.1:8420`.
    pub fn new(server: &str, token: Option<String>) -> ClientResult<Self> {
        let server = server.trim_end_matches('/');
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(ClientError::Protocol {
                url: server.to_string(),
                detail: "the server URL must start with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Long enough for large blobs; per-request timeouts tighten it where it matters.
            .timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(64)
            // The server closes a connection idle for its header timeout
            // (5 s by default): drop ours first, so a request never goes out
            // on a connection the server is closing.
            .pool_idle_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ClientError::Protocol {
                url: server.to_string(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            http,
            api: format!("{server}{API_PREFIX}"),
            token,
            write_timeout: WRITE_TIMEOUT,
        })
    }

    /// Bounds commits, batches, mkdirs, renames and deletes by `timeout`
    /// instead of [`WRITE_TIMEOUT`].
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    pub fn server_url(&self) -> &str {
        self.api.trim_end_matches(API_PREFIX)
    }

    fn request(&self, method: Method, route: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}{route}", self.api));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    fn project_route(project: &str, rest: &str) -> String {
        format!("/projects/{}{rest}", utf8_percent_encode(project, SEGMENT))
    }

    async fn send(&self, builder: RequestBuilder) -> ClientResult<Response> {
        let request = builder.build().map_err(|e| ClientError::Protocol {
            url: self.api.clone(),
            detail: e.to_string(),
        })?;
        let url = request.url().to_string();
        let response = self.http.execute(request).await.map_err(|e| ClientError::Unreachable {
            url: self.server_url().to_string(),
            detail: if e.is_timeout() {
                format!("no answer in time: {}", describe(&e))
            } else {
                describe(&e)
            },
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(ClientError::Api {
                status,
                code: body.error.code,
                message: body.error.message,
                head: body.error.head.map(Box::new),
            }),
            Err(_) => Err(ClientError::Protocol {
                url,
                detail: format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()),
            }),
        }
    }

    async fn json<T: DeserializeOwned>(&self, builder: RequestBuilder) -> ClientResult<T> {
        let response = self.send(builder).await?;
        let url = response.url().to_string();
        response.json::<T>().await.map_err(|e| ClientError::Protocol {
            url,
            detail: e.to_string(),
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, route: &str, body: &B) -> ClientResult<T> {
        self.json(self.request(Method::POST, route).json(body)).await
    }

    /// A POST of a change, bounded by the write timeout.
    async fn post_change<B: Serialize, T: DeserializeOwned>(&self, route: &str, body: &B) -> ClientResult<T> {
        let request = self.request(Method::POST, route).json(body).timeout(self.write_timeout);
        self.json(request).await
    }

    pub async fn health(&self) -> ClientResult<Health> {
        self.json(self.request(Method::GET, "/health")).await
    }

    pub async fn whoami(&self) -> ClientResult<WhoAmI> {
        self.json(self.request(Method::GET, "/whoami")).await
    }

    pub async fn create_project(&self, name: &str) -> ClientResult<ProjectInfo> {
        self.post("/projects", &CreateProjectRequest { name: name.to_string() })
            .await
    }

    pub async fn projects(&self) -> ClientResult<Vec<ProjectInfo>> {
        self.json(self.request(Method::GET, "/projects")).await
    }

    pub async fn create_token(
        &self,
        project: &str,
        access: Access,
        label: Option<String>,
    ) -> ClientResult<CreatedToken> {
        self.post(
            &Self::project_route(project, "/tokens"),
            &CreateTokenRequest { access, label },
        )
        .await
    }

    pub async fn tokens(&self, project: &str) -> ClientResult<Vec<TokenInfo>> {
        self.json(self.request(Method::GET, &Self::project_route(project, "/tokens")))
            .await
    }

    pub async fn revoke_token(&self, id: &str) -> ClientResult<()> {
        self.send(self.request(Method::DELETE, &format!("/tokens/{}", utf8_percent_encode(id, SEGMENT))))
            .await?;
        Ok(())
    }

    pub async fn tree(&self, project: &str, prefix: Option<&str>, recursive: bool) -> ClientResult<TreeListing> {
        let mut builder = self.request(Method::GET, &Self::project_route(project, "/tree"));
        if let Some(prefix) = prefix {
            builder = builder.query(&[("prefix", prefix)]);
        }
        self.json(builder.query(&[("recursive", recursive)])).await
    }

    /// Uploads bytes (the hash is computed here and verified by the server).
    pub async fn put_blob(&self, project: &str, bytes: Bytes) -> ClientResult<BlobReceipt> {
        let hash = BlobHash::of(&bytes);
        self.json(
            self.request(Method::PUT, &Self::project_route(project, &format!("/blobs/{hash}")))
                .body(bytes),
        )
        .await
    }

    pub async fn get_blob(&self, project: &str, hash: &BlobHash) -> ClientResult<Bytes> {
        let response = self
            .send(self.request(Method::GET, &Self::project_route(project, &format!("/blobs/{hash}"))))
            .await?;
        self.verified_body(response, hash).await
    }

    /// Starts a blob download; the caller reads chunks with `Response::chunk`
    /// and must verify the hash itself (the mount's cache does).
    pub async fn blob_response(&self, project: &str, hash: &BlobHash) -> ClientResult<Response> {
        self.send(self.request(Method::GET, &Self::project_route(project, &format!("/blobs/{hash}"))))
            .await
    }

    /// Uploads a local file as a blob without reading it all into memory.
    pub async fn put_blob_file(
        &self,
        project: &str,
        hash: &BlobHash,
        path: &std::path::Path,
    ) -> ClientResult<BlobReceipt> {
        let file = tokio::fs::File::open(path).await.map_err(|e| ClientError::Protocol {
            url: path.display().to_string(),
            detail: format!("cannot open the content to upload: {e}"),
        })?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
        self.json(
            self.request(Method::PUT, &Self::project_route(project, &format!("/blobs/{hash}")))
                .body(body),
        )
        .await
    }

    async fn verified_body(&self, response: Response, hash: &BlobHash) -> ClientResult<Bytes> {
        let url = response.url().to_string();
        let bytes = response.bytes().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            detail: describe(&e),
        })?;
        if BlobHash::of(&bytes) != *hash {
            return Err(ClientError::Protocol {
                url,
                detail: format!("downloaded bytes do not hash to {hash}"),
            });
        }
        Ok(bytes)
    }

    /// A file's head (or `version`) with its bytes.
    pub async fn checkout(&self, project: &str, path: &str, version: Option<i64>) -> ClientResult<FileContent> {
        let mut builder = self.request(
            Method::GET,
            &Self::project_route(project, &format!("/files/{}", encode_path(path))),
        );
        if let Some(v) = version {
            builder = builder.query(&[("version", v)]);
        }
        let response = self.send(builder).await?;
        let url = response.url().to_string();
        let header = |name: &str| -> ClientResult<String> {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| ClientError::Protocol {
                    url: url.clone(),
                    detail: format!("missing header {name}"),
                })
        };
        let number = |name: &str| -> ClientResult<i64> {
            header(name)?.parse().map_err(|_| ClientError::Protocol {
                url: url.clone(),
                detail: format!("bad header {name}"),
            })
        };
        let bad = |name: &str| ClientError::Protocol {
            url: url.clone(),
            detail: format!("bad header {name}"),
        };
        let hash = BlobHash::parse(&header(HEADER_HASH)?).map_err(|_| bad(HEADER_HASH))?;
        let node = number(HEADER_NODE)?;
        let version = number(HEADER_VERSION)?;
        let mode = number(HEADER_MODE)? as u32;
        let kind = NodeKind::parse(&header(HEADER_KIND)?).ok_or_else(|| bad(HEADER_KIND))?;
        let status = VersionStatus::parse(&header(HEADER_STATUS)?).ok_or_else(|| bad(HEADER_STATUS))?;
        let bytes = self.verified_body(response, &hash).await?;
        Ok(FileContent {
            node,
            version,
            hash,
            kind,
            mode,
            status,
            bytes,
        })
    }

    pub async fn commit(&self, project: &str, request: &CommitRequest) -> ClientResult<VersionInfo> {
        self.post_change(&Self::project_route(project, "/commit"), request)
            .await
    }

    /// Many commits in one request and one server transaction; the outcome
    /// of each, in order. The outer error means none was committed.
    pub async fn commit_batch(
        &self,
        project: &str,
        requests: &[CommitRequest],
    ) -> ClientResult<Vec<ClientResult<VersionInfo>>> {
        #[derive(Serialize)]
        struct Batch<'a> {
            commits: &'a [CommitRequest],
        }
        let answer: BatchCommitResponse = self
            .post_change(
                &Self::project_route(project, "/commit/batch"),
                &Batch { commits: requests },
            )
            .await?;
        if answer.results.len() != requests.len() {
            return Err(ClientError::Protocol {
                url: Self::project_route(project, "/commit/batch"),
                detail: format!("{} results for {} commits", answer.results.len(), requests.len()),
            });
        }
        Ok(answer
            .results
            .into_iter()
            .map(|r| match (r.version, r.error) {
                (Some(v), _) => Ok(v),
                (None, Some(e)) => Err(ClientError::Api {
                    status: StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    code: e.detail.code,
                    message: e.detail.message,
                    head: e.detail.head.map(Box::new),
                }),
                (None, None) => Err(ClientError::Protocol {
                    url: "commit/batch".into(),
                    detail: "an entry without a version or an error".into(),
                }),
            })
            .collect())
    }

    pub async fn mkdir(&self, project: &str, request: &MkdirRequest) -> ClientResult<VersionInfo> {
        self.post_change(&Self::project_route(project, "/mkdir"), request).await
    }

    pub async fn rename(&self, project: &str, request: &RenameRequest) -> ClientResult<VersionInfo> {
        self.post_change(&Self::project_route(project, "/rename"), request)
            .await
    }

    pub async fn delete(&self, project: &str, request: &DeleteRequest) -> ClientResult<DeleteResponse> {
        self.post_change(&Self::project_route(project, "/delete"), request)
            .await
    }

    pub async fn history(
        &self,
        project: &str,
        path: &str,
        before: Option<i64>,
        limit: u32,
    ) -> ClientResult<HistoryPage> {
        let mut builder = self
            .request(Method::GET, &Self::project_route(project, "/history"))
            .query(&[("path", path)])
            .query(&[("limit", limit)]);
        if let Some(before) = before {
            builder = builder.query(&[("before", before)]);
        }
        self.json(builder).await
    }

    pub async fn rollback(&self, project: &str, request: &RollbackRequest) -> ClientResult<VersionInfo> {
        self.post(&Self::project_route(project, "/rollback"), request).await
    }

    /// Events after `since`; waits up to `wait` for the first one.
    pub async fn changes(&self, project: &str, since: i64, wait: Duration) -> ClientResult<ChangesPage> {
        let builder = self
            .request(Method::GET, &Self::project_route(project, "/changes"))
            .query(&[("since", since), ("timeout_ms", wait.as_millis() as i64)])
            .timeout(wait + Duration::from_secs(30));
        self.json(builder).await
    }

    pub async fn audit(&self, project: &str, since: i64, limit: u32) -> ClientResult<AuditPage> {
        self.json(
            self.request(Method::GET, &Self::project_route(project, "/audit"))
                .query(&[("since", since), ("limit", limit as i64)]),
        )
        .await
    }

    pub async fn skills(&self) -> ClientResult<SkillsListing> {
        self.json(self.request(Method::GET, "/skills")).await
    }

    pub async fn put_skill_blob(&self, bytes: Bytes) -> ClientResult<BlobReceipt> {
        let hash = BlobHash::of(&bytes);
        self.json(self.request(Method::PUT, &format!("/skills/blobs/{hash}")).body(bytes))
            .await
    }

    pub async fn get_skill_blob(&self, hash: &BlobHash) -> ClientResult<Bytes> {
        let response = self
            .send(self.request(Method::GET, &format!("/skills/blobs/{hash}")))
            .await?;
        self.verified_body(response, hash).await
    }

    pub async fn publish_skills(&self, files: Vec<SkillFile>) -> ClientResult<SkillsListing> {
        self.post("/skills", &PublishSkillsRequest { files }).await
    }
}

/// reqwest's Display hides the cause ("error sending request"); walk the chain.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::encode_path;

    #[test]
    fn paths_are_encoded_per_segment() {
        assert_eq!(encode_path("a b/c#d.md"), "a%20b/c%23d.md");
        assert_eq!(encode_path("notes/ünï.md"), "notes/%C3%BCn%C3%AF.md");
    }
}
