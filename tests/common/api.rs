//! Talking to a test server's REST API: requests, errors as the API sends
//! them, and the [`Api`] handle with a method per route.

use std::process::Command;
use std::time::Duration;

use contextfs::api::*;
use contextfs::model::{BlobHash, WsPath};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::process;

/// Everything but the RFC 3986 unreserved characters is escaped in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes each component of a workspace path, keeping the `/`s.
pub fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|c| utf8_percent_encode(c, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

pub fn hash_of(bytes: &[u8]) -> BlobHash {
    BlobHash::of(bytes)
}

pub fn ws(path: &str) -> WsPath {
    WsPath::parse(path).unwrap_or_else(|e| panic!("test path {path:?} is invalid: {e}"))
}

/// An error response, decoded after checking it has the documented shape.
#[derive(Debug, Clone)]
pub struct ApiErr {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub head: Option<VersionInfo>,
}

/// Checks that `body` is exactly `{"error": {"code", "message"[, "head"]}}` and decodes it.
pub fn decode_error(status: StatusCode, content_type: Option<&str>, body: &[u8]) -> ApiErr {
    let text = String::from_utf8_lossy(body);
    assert!(
        content_type.is_some_and(|ct| ct.starts_with("application/json")),
        "error {status} has content-type {content_type:?}, not JSON: {text}"
    );
    let value: Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("error {status} body is not JSON ({e}): {text}"));
    let top = value
        .as_object()
        .unwrap_or_else(|| panic!("error {status} body is not an object: {text}"));
    assert_eq!(
        top.keys().collect::<Vec<_>>(),
        ["error"],
        "error {status} body must hold only `error`: {text}"
    );
    let detail = top["error"]
        .as_object()
        .unwrap_or_else(|| panic!("`error` is not an object: {text}"));
    assert!(
        detail.get("code").is_some_and(Value::is_string),
        "error.code missing or not a string: {text}"
    );
    assert!(
        detail
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "error.message missing or empty: {text}"
    );
    for key in detail.keys() {
        assert!(
            ["code", "message", "head"].contains(&key.as_str()),
            "unexpected error field {key}: {text}"
        );
    }
    let parsed: ErrorBody =
        serde_json::from_value(value).unwrap_or_else(|e| panic!("error body does not decode ({e}): {text}"));
    ApiErr {
        status,
        code: parsed.error.code.to_string(),
        message: parsed.error.message,
        head: parsed.error.head,
    }
}

pub async fn error_of(resp: reqwest::Response) -> ApiErr {
    let status = resp.status();
    assert!(!status.is_success(), "expected an error, got {status}");
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.bytes().await.expect("read error body");
    decode_error(status, ct.as_deref(), &body)
}

/// Sends a request and decodes a 2xx JSON body as `T`, or the error body.
pub async fn send<T: DeserializeOwned>(rb: RequestBuilder) -> Result<T, ApiErr> {
    let resp = rb.send().await.expect("request failed at the transport level");
    if resp.status().is_success() {
        let status = resp.status();
        let body = resp.bytes().await.expect("read body");
        Ok(serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{status} body does not decode ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        }))
    } else {
        Err(error_of(resp).await)
    }
}

/// Like [`send`] but also returns the success status (201 vs 200).
pub async fn send_with_status<T: DeserializeOwned>(rb: RequestBuilder) -> Result<(StatusCode, T), ApiErr> {
    let resp = rb.send().await.expect("request failed at the transport level");
    let status = resp.status();
    if status.is_success() {
        let body = resp.bytes().await.expect("read body");
        Ok((
            status,
            serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "{status} body does not decode ({e}): {}",
                    String::from_utf8_lossy(&body)
                )
            }),
        ))
    } else {
        Err(error_of(resp).await)
    }
}

/// Sends a request that must fail with `status` and `code`; returns the error.
pub async fn expect_error(rb: RequestBuilder, status: StatusCode, code: &str) -> ApiErr {
    let resp = rb.send().await.expect("request failed at the transport level");
    let err = if resp.status().is_success() {
        let got = resp.status();
        let body = resp.text().await.unwrap_or_default();
        panic!("expected {status} {code}, got {got}: {body}");
    } else {
        error_of(resp).await
    };
    assert_eq!(
        (err.status, err.code.as_str()),
        (status, code),
        "unexpected error: {err:?}"
    );
    err
}

/// Asserts a result is the given error and returns it.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(result: Result<T, ApiErr>, status: StatusCode, code: &str) -> ApiErr {
    match result {
        Ok(v) => panic!("expected {status} {code}, got success: {v:?}"),
        Err(e) => {
            assert_eq!((e.status, e.code.as_str()), (status, code), "unexpected error: {e:?}");
            e
        }
    }
}

/// A checked-out file: its bytes and the version headers.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub bytes: Vec<u8>,
    pub node: i64,
    pub version: i64,
    pub hash: String,
    pub status: String,
    /// The file's mtime header (RFC 3339, nanoseconds).
    pub mtime: String,
    /// The atime header, sent when the writer set one.
    pub atime: Option<String>,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("response lacks header {name}"))
        .to_str()
        .expect("header is ASCII")
        .to_string()
}

/// A handle on one server's HTTP API; cheap to clone into tasks.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub admin: String,
}

pub fn new_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build http client")
}

impl Api {
    /// Another handle with its own connection pool.
    pub fn with_own_client(&self) -> Api {
        Api {
            http: new_http_client(),
            ..self.clone()
        }
    }

    pub fn url(&self, rest: &str) -> String {
        format!("{}{API_PREFIX}{rest}", self.base)
    }

    pub fn purl(&self, project: &str, rest: &str) -> String {
        self.url(&format!("/projects/{project}{rest}"))
    }

    pub fn file_url(&self, project: &str, path: &str) -> String {
        self.purl(project, &format!("/files/{}", encode_path(path)))
    }

    pub fn req(&self, method: Method, url: &str, token: Option<&str>) -> RequestBuilder {
        let rb = self.http.request(method, url);
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub fn get(&self, url: &str, token: &str) -> RequestBuilder {
        self.req(Method::GET, url, Some(token))
    }

    pub fn post<B: Serialize + ?Sized>(&self, url: &str, token: &str, body: &B) -> RequestBuilder {
        self.req(Method::POST, url, Some(token)).json(body)
    }

    // ----- admin -----

    pub async fn create_project(&self, name: &str) -> ProjectInfo {
        let (status, info): (_, ProjectInfo) = send_with_status(self.post(
            &self.url("/projects"),
            &self.admin,
            &CreateProjectRequest { name: name.into() },
        ))
        .await
        .unwrap_or_else(|e| panic!("create project {name}: {e:?}"));
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(info.name, name);
        info
    }

    pub async fn token(&self, project: &str, access: Access) -> CreatedToken {
        let req = CreateTokenRequest {
            access,
            label: Some(format!("test {}", access.as_str())),
        };
        let (status, created): (_, CreatedToken) =
            send_with_status(self.post(&self.purl(project, "/tokens"), &self.admin, &req))
                .await
                .unwrap_or_else(|e| panic!("create token for {project}: {e:?}"));
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!((created.info.project.as_str(), created.info.access), (project, access));
        created
    }

    /// A project with one read-write token; returns the token's secret.
    /// `contextfs skills publish DIR` as admin; panics with its output if it fails.
    pub fn publish_skills(&self, dir: &std::path::Path) {
        let out = Command::new(env!("CARGO_BIN_EXE_contextfs"))
            .args(["skills", "publish"])
            .arg(dir)
            .env("CONTEXTFS_SERVER", &self.base)
            .env("CONTEXTFS_TOKEN", &self.admin)
            .env_remove("CONTEXTFS_PROJECT")
            .output()
            .expect("run contextfs skills publish");
        assert!(out.status.success(), "skills publish: {}", process::both(&out));
    }

    pub async fn project_with_token(&self, name: &str) -> String {
        self.create_project(name).await;
        self.token(name, Access::ReadWrite).await.token
    }

    // ----- content -----

    /// The request `PUT /projects/PROJECT/blobs/HASH` with `body`.
    pub fn put_blob_request(
        &self,
        project: &str,
        token: &str,
        hash: &BlobHash,
        body: impl Into<reqwest::Body>,
    ) -> RequestBuilder {
        let url = self.purl(project, &format!("/blobs/{hash}"));
        self.req(Method::PUT, &url, Some(token)).body(body)
    }

    /// `PUT /projects/PROJECT/blobs/HASH` with `body`: the status and receipt.
    pub async fn put_blob(
        &self,
        project: &str,
        token: &str,
        hash: &BlobHash,
        body: impl Into<reqwest::Body>,
    ) -> Result<(StatusCode, BlobReceipt), ApiErr> {
        send_with_status(self.put_blob_request(project, token, hash, body)).await
    }

    /// A blob PUT of `body` that claims the hash `claimed` (which `body` does
    /// not have): it must fail with 400 `hash_mismatch` naming `claimed`.
    pub async fn put_blob_expecting_hash_mismatch(
        &self,
        project: &str,
        token: &str,
        claimed: &BlobHash,
        body: impl Into<reqwest::Body>,
    ) -> ApiErr {
        let err = expect_error(
            self.put_blob_request(project, token, claimed, body),
            StatusCode::BAD_REQUEST,
            "hash_mismatch",
        )
        .await;
        assert!(
            err.message.contains(claimed.as_str()),
            "hash_mismatch does not name the claimed hash {claimed}: {err:?}"
        );
        err
    }

    pub async fn upload(&self, project: &str, token: &str, bytes: &[u8]) -> BlobHash {
        let hash = BlobHash::of(bytes);
        let (status, receipt) = self
            .put_blob(project, token, &hash, bytes.to_vec())
            .await
            .unwrap_or_else(|e| panic!("upload: {e:?}"));
        assert_eq!(receipt.hash, hash);
        assert_eq!(receipt.size, bytes.len() as u64);
        assert_eq!(
            status == StatusCode::CREATED,
            receipt.created,
            "201 iff created ({status})"
        );
        hash
    }

    pub async fn commit_req(&self, project: &str, token: &str, req: &CommitRequest) -> Result<VersionInfo, ApiErr> {
        send(self.post(&self.purl(project, "/commit"), token, req)).await
    }

    /// Uploads `bytes` and commits them to `path` on top of `base`.
    pub async fn commit(
        &self,
        project: &str,
        token: &str,
        path: &str,
        base: Option<i64>,
        bytes: &[u8],
    ) -> Result<VersionInfo, ApiErr> {
        let hash = self.upload(project, token, bytes).await;
        self.commit_req(project, token, &commit_request(path, base, hash)).await
    }

    /// Like [`Api::commit`] but tolerates the server going away (crash tests):
    /// `None` when any step failed at the transport level or with an error.
    pub async fn try_commit(
        &self,
        project: &str,
        token: &str,
        path: &str,
        base: Option<i64>,
        bytes: &[u8],
        key: &str,
    ) -> Option<VersionInfo> {
        let hash = BlobHash::of(bytes);
        let put = self
            .put_blob_request(project, token, &hash, bytes.to_vec())
            .send()
            .await
            .ok()?;
        if !put.status().is_success() {
            return None;
        }
        let mut req = commit_request(path, base, hash);
        req.idempotency_key = Some(key.to_string());
        let resp = self
            .post(&self.purl(project, "/commit"), token, &req)
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json::<VersionInfo>().await.ok()
    }

    pub async fn read(&self, project: &str, token: &str, path: &str, version: Option<i64>) -> Result<Checkout, ApiErr> {
        let mut rb = self.get(&self.file_url(project, path), token);
        if let Some(v) = version {
            rb = rb.query(&[("version", v)]);
        }
        let resp = rb.send().await.expect("checkout request");
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("checkout body").to_vec();
        Ok(Checkout {
            node: header(&headers, HEADER_NODE).parse().expect("node header is a number"),
            version: header(&headers, HEADER_VERSION)
                .parse()
                .expect("version header is a number"),
            hash: header(&headers, HEADER_HASH),
            status: header(&headers, HEADER_STATUS),
            mtime: header(&headers, HEADER_MTIME),
            atime: headers
                .get(HEADER_ATIME)
                .map(|v| v.to_str().expect("header is ASCII").to_string()),
            bytes,
        })
    }

    /// The head bytes of `path`, panicking on any error.
    pub async fn read_bytes(&self, project: &str, token: &str, path: &str) -> Vec<u8> {
        self.read(project, token, path, None)
            .await
            .unwrap_or_else(|e| panic!("read {path}: {e:?}"))
            .bytes
    }

    pub async fn get_blob(&self, project: &str, token: &str, hash: &str) -> Result<Vec<u8>, ApiErr> {
        let resp = self
            .get(&self.purl(project, &format!("/blobs/{hash}")), token)
            .send()
            .await
            .expect("blob request");
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        Ok(resp.bytes().await.expect("blob body").to_vec())
    }

    pub async fn history_page(
        &self,
        project: &str,
        token: &str,
        path: &str,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ApiErr> {
        let mut rb = self
            .get(&self.purl(project, "/history"), token)
            .query(&[("path", path)]);
        if let Some(b) = before {
            rb = rb.query(&[("before", b)]);
        }
        if let Some(l) = limit {
            rb = rb.query(&[("limit", l)]);
        }
        send(rb).await
    }

    /// Every version of `path`, newest first, following `next_before`.
    pub async fn history(&self, project: &str, token: &str, path: &str) -> Vec<VersionInfo> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .history_page(project, token, path, before, Some(1000))
                .await
                .unwrap_or_else(|e| panic!("history {path}: {e:?}"));
            all.extend(page.versions);
            match page.next_before {
                Some(b) => before = Some(b),
                None => return all,
            }
        }
    }

    pub async fn tree(&self, project: &str, token: &str, query: &[(&str, &str)]) -> Result<TreeListing, ApiErr> {
        send(self.get(&self.purl(project, "/tree"), token).query(query)).await
    }

    /// The whole tree as the admin sees it: used to prove a failed request changed nothing.
    pub async fn snapshot(&self, project: &str) -> (i64, Vec<TreeEntry>) {
        let t = self.tree(project, &self.admin, &[]).await.expect("tree");
        (t.cursor, t.entries)
    }

    pub async fn changes(
        &self,
        project: &str,
        token: &str,
        since: i64,
        timeout_ms: u64,
    ) -> Result<ChangesPage, ApiErr> {
        let q = [("since", since.to_string()), ("timeout_ms", timeout_ms.to_string())];
        send(self.get(&self.purl(project, "/changes"), token).query(&q)).await
    }

    /// Sends one raw HTTP/1.1 request, bypassing URL normalisation (for `%2E%2E`).
    /// Returns the status, the content type and the body.
    pub async fn raw(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (StatusCode, Option<String>, Vec<u8>) {
        let host = self.base.trim_start_matches("http://").to_string();
        let mut stream = tokio::net::TcpStream::connect(&host).await.expect("connect");
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("write request");
        stream.write_all(body).await.expect("write body");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
            .await
            .expect("raw response within 30 s")
            .expect("read response");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response has a header block");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let content_type = head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_string())
        });
        (
            StatusCode::from_u16(status).expect("status"),
            content_type,
            raw[split + 4..].to_vec(),
        )
    }
}

pub fn commit_request(path: &str, base: Option<i64>, hash: BlobHash) -> CommitRequest {
    CommitRequest {
        path: ws(path),
        base_version: base,
        hash,
        kind: None,
        mode: None,
        agent_id: None,
        message: None,
        idempotency_key: None,
        node: None,
        content_base64: None,
        mtime: None,
        atime: None,
    }
}
