//! The metadata database unreachable while clients write: PostgreSQL stays
//! up, but the server reaches it through a TCP link this test cuts (live
//! connections reset, new ones refused), as a network partition or a
//! database fail-over looks to the server.
//!
//! While the link is down, everything that needs the database answers 503
//! with code `unavailable` and `Retry-After` (not 500: clients and proxies
//! retry a 503), WebDAV included, `GET /health` says so, and nothing is
//! half-written. Once it is back, the same requests succeed, every version
//! acknowledged before the cut is still there, and a WebDAV lock taken
//! before the cut still holds. Needs `CONTEXTFS_TEST_DATABASE`, like the
//! other PostgreSQL tests; without it the test says so and does not run.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::locks::{lock, lock_token, put_with};
use super::*;

/// A TCP forwarder from a local port to PostgreSQL that can be cut and
/// restored on the same port.
struct Link {
    listen: SocketAddr,
    target: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Link {
    async fn open(target: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the link");
        let listen = listener.local_addr().expect("local addr");
        let mut link = Link {
            listen,
            target,
            tasks: Arc::default(),
            acceptor: None,
        };
        link.serve(listener);
        link
    }

    fn serve(&mut self, listener: TcpListener) {
        let (target, tasks) = (self.target, self.tasks.clone());
        self.acceptor = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut db) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut db).await;
                    }
                });
                tasks.lock().unwrap().push(forward);
            }
        }));
    }

    /// Drops every forwarded connection and stops listening: the server's
    /// pooled connections break and new ones are refused.
    fn cut(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    async fn restore(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.listen).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}; retrying", self.listen);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.listen),
            }
        };
        self.serve(listener);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `url` (postgres://user@host:port/db) with its host and port replaced.
fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').expect("a database name");
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}/{path}")
}

fn target_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .expect("resolve the test database")
        .next()
        .expect("an address")
}

/// A 503 `unavailable` answer with `Retry-After`, as every request that
/// needs the database gets while it is unreachable.
fn assert_unavailable(what: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {text}");
    assert!(
        headers.contains_key("retry-after"),
        "{what}: no Retry-After in {headers:?}"
    );
    assert!(
        text.contains("metadata database is unreachable"),
        "{what}: the answer should say why: {text}"
    );
}

async fn raw(rb: RequestBuilder) -> (StatusCode, HeaderMap, Vec<u8>) {
    let resp = rb.send().await.expect("the server answers while its database is away");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.expect("body").to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_answers_503_changes_nothing_and_keeps_locks() {
    let Some(database) = fresh_test_database().await else {
        eprintln!("skipped: set {TEST_DATABASE_ENV} to a PostgreSQL URL (scripts/test does, via scripts/pg)");
        return;
    };
    let mut link = Link::open(target_of(&database)).await;
    let data = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_on(
        data.path().join("data"),
        vec!["--database".into(), through(&database, link.listen)],
    )
    .await;
    let token = s.project_with_token(PROJECT).await;
    let dav = Dav::new(&s, PROJECT, &token);

    // Before the cut: a committed file, and a WebDAV lock on another.
    assert_eq!(dav.put("kept.md", b"acknowledged\n").await.0, StatusCode::CREATED);
    assert_eq!(dav.put("locked.md", b"v1\n").await.0, StatusCode::CREATED);
    let (status, headers, _) = lock(&dav, "locked.md", "0", false, 600).await;
    assert_eq!(status, StatusCode::OK);
    let lock_token = lock_token(&headers);

    link.cut();

    let (status, headers, body) = raw(s.http.get(s.url("/health"))).await;
    assert_unavailable("GET /health", status, &headers, &body);
    let (status, headers, body) = raw(s
        .req(Method::PUT, &s.file_url(PROJECT, "new.md"), Some(&token))
        .body("written during the outage\n"))
    .await;
    assert_unavailable("REST PUT of a new file", status, &headers, &body);
    let (status, headers, body) = raw(s.get(&s.file_url(PROJECT, "kept.md"), &token)).await;
    assert_unavailable("REST GET", status, &headers, &body);
    let (status, headers, body) = dav
        .send(
            dav.req("PUT", "locked.md")
                .header("if", format!("({lock_token})"))
                .body("v2 during the outage\n"),
        )
        .await;
    assert_unavailable("WebDAV PUT with the lock token", status, &headers, &body);
    let (status, headers, body) = dav.send(dav.req("PUT", "dav-new.md").body("x")).await;
    assert_unavailable("WebDAV PUT of a new file", status, &headers, &body);
    assert!(s.is_running(), "the server must ride out the outage");

    link.restore().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = raw(s.http.get(s.url("/health"))).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health still {status} 30 s after the link came back: {}",
            String::from_utf8_lossy(&body)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing acknowledged before the cut is lost; nothing refused was written.
    assert_eq!(s.read_bytes(PROJECT, &token, "kept.md").await, b"acknowledged\n");
    assert_eq!(s.history(PROJECT, &token, "kept.md").await.len(), 1);
    assert_eq!(s.history(PROJECT, &token, "locked.md").await.len(), 1);
    let (status, _, _) = raw(s.get(&s.file_url(PROJECT, "new.md"), &token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a refused PUT left nothing behind");
    let (status, _, _) = dav.send(dav.req("GET", "dav-new.md")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused WebDAV PUT left nothing behind"
    );

    // The same requests succeed now, and the lock still holds.
    let (status, _, body) = raw(s
        .req(Method::PUT, &s.file_url(PROJECT, "new.md"), Some(&token))
        .body("written after the outage\n"))
    .await;
    assert!(
        status.is_success(),
        "REST PUT after the outage: {status} {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(s.history(PROJECT, &token, "new.md").await.len(), 1);
    assert_eq!(dav.put("locked.md", b"intruder\n").await.0, StatusCode::LOCKED);
    assert_eq!(
        put_with(&dav, "locked.md", &lock_token, "v2\n").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(s.read_bytes(PROJECT, &token, "locked.md").await, b"v2\n");
    let status = dav
        .status(dav.req("UNLOCK", "locked.md").header("lock-token", &lock_token))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}
