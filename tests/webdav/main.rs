//! WebDAV at `/dav/{project}/` (issue 14) against a real `contextfs serve`,
//! one file per concern:
//!
//! - `protocol`: sign-in, PUT/GET/ranges/PROPFIND, If-Match merges, MOVE,
//!   COPY, DELETE, file times;
//! - `refusals`: every refusal, with its status, and nothing changed;
//! - `locks`: LOCK/UNLOCK, refresh, expiry, and locks shared by two
//!   instances on one PostgreSQL (`CONTEXTFS_TEST_DATABASE`);
//! - `props`: dead properties (PROPPATCH) stored per node;
//! - `clients`: real clients from Debian's packages: rclone's webdav
//!   backend, a davfs2 mount, cadaver;
//! - `database_outage`: PostgreSQL unreachable under a lock and under
//!   REST and WebDAV writes (503, nothing lost, the lock kept).

#[path = "../common/mod.rs"]
mod common;

mod chunked;
mod clients;
mod database_outage;
mod locks;
mod props;
mod protocol;
mod refusals;

use common::*;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};

const PROJECT: &str = "notes";

/// A WebDAV view of one project with one token (sent as the Basic password).
pub struct Dav {
    http: reqwest::Client,
    root: String,
    token: String,
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).expect("valid method name")
}

impl Dav {
    fn new(s: &TestServer, project: &str, token: &str) -> Dav {
        Dav {
            http: new_http_client(),
            root: format!("{}/dav/{project}", s.base),
            token: token.to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.root, encode_path(path))
    }

    fn req(&self, m: &str, path: &str) -> RequestBuilder {
        self.http
            .request(method(m), self.url(path))
            .basic_auth("tester", Some(&self.token))
    }

    async fn send(&self, rb: RequestBuilder) -> (StatusCode, HeaderMap, Vec<u8>) {
        let resp = rb.send().await.expect("request reaches the server");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("response body").to_vec();
        (status, headers, body)
    }

    async fn status(&self, rb: RequestBuilder) -> StatusCode {
        self.send(rb).await.0
    }

    async fn put(&self, path: &str, body: &[u8]) -> (StatusCode, HeaderMap) {
        let (status, headers, _) = self.send(self.req("PUT", path).body(body.to_vec())).await;
        (status, headers)
    }

    async fn propfind(&self, path: &str, depth: &str) -> (StatusCode, String) {
        let (status, _, body) = self.send(self.req("PROPFIND", path).header("depth", depth)).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn etag(headers: &HeaderMap) -> String {
    headers
        .get("etag")
        .expect("response has an ETag")
        .to_str()
        .expect("ASCII etag")
        .to_string()
}

async fn setup() -> (TestServer, String) {
    setup_with(&[]).await
}

async fn setup_with(args: &[&str]) -> (TestServer, String) {
    let s = TestServer::start_with(args).await;
    let token = s.project_with_token(PROJECT).await;
    (s, token)
}

const LOCK_BODY: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>test</D:owner></D:lockinfo>"#;
