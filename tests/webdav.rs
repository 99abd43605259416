//! WebDAV at `/dav/{project}/` (issue 14) against a real `contextfs serve`:
//! raw HTTP for the protocol and the refusals, then real clients from
//! Debian's packages: rclone's webdav backend and a davfs2 mount.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use contextfs::api::*;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};

const PROJECT: &str = "notes";

/// A WebDAV view of one project with one token (sent as the Basic password).
struct Dav {
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

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_takes_the_project_token_and_refuses_others_with_a_challenge() {
    let (s, token) = setup().await;
    s.create_project("other").await;
    let other_token = s.token("other", Access::ReadWrite).await.token;
    let read_only = s.token(PROJECT, Access::Read).await.token;
    s.commit(PROJECT, &token, "a.md", None, b"hello\n")
        .await
        .expect("commit");

    // No credentials, a wrong token: 401 with a Basic challenge.
    let anonymous = reqwest::Client::new()
        .request(method("PROPFIND"), format!("{}/dav/{PROJECT}/", s.base))
        .header("depth", "0")
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = anonymous.headers().get("www-authenticate").expect("a challenge");
    assert!(challenge.to_str().expect("ascii").starts_with("Basic realm="));
    let wrong = Dav::new(&s, PROJECT, "cfs_000000000000000000000000000000000000000000000000");
    assert_eq!(wrong.status(wrong.req("GET", "a.md")).await, StatusCode::UNAUTHORIZED);

    // The project's token, the admin token: both read.
    for t in [&token, &s.admin] {
        let dav = Dav::new(&s, PROJECT, t);
        let (status, _, body) = dav.send(dav.req("GET", "a.md")).await;
        assert_eq!((status, body.as_slice()), (StatusCode::OK, b"hello\n".as_slice()));
    }
    // Another project's token sees no such project, as in the REST API.
    let stranger = Dav::new(&s, PROJECT, &other_token);
    assert_eq!(
        stranger.status(stranger.req("GET", "a.md")).await,
        StatusCode::NOT_FOUND
    );
    // A read-only token reads but cannot write.
    let reader = Dav::new(&s, PROJECT, &read_only);
    assert_eq!(reader.status(reader.req("GET", "a.md")).await, StatusCode::OK);
    assert_eq!(reader.put("b.md", b"x").await.0, StatusCode::FORBIDDEN);
    assert_eq!(reader.status(reader.req("DELETE", "a.md")).await, StatusCode::FORBIDDEN);
    assert_eq!(s.history(PROJECT, &token, "a.md").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_ranges_head_and_propfind_show_the_versions() {
    let (s, token) = setup().await;
    let dav = Dav::new(&s, PROJECT, &token);
    assert_eq!(dav.status(dav.req("MKCOL", "docs")).await, StatusCode::CREATED);
    let (status, headers) = dav.put("docs/plan.md", b"0123456789\n").await;
    assert_eq!(status, StatusCode::CREATED);
    let first = s.read(PROJECT, &token, "docs/plan.md", None).await.expect("committed");
    assert_eq!(first.bytes, b"0123456789\n");
    assert_eq!(etag(&headers), format!("\"{}\"", first.hash));

    let (status, _, body) = dav
        .send(dav.req("GET", "docs/plan.md").header("range", "bytes=2-5"))
        .await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, b"2345".as_slice())
    );
    let (status, headers, body) = dav.send(dav.req("HEAD", "docs/plan.md")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(
        headers.get("content-length").expect("length").to_str().expect("ascii"),
        "11"
    );
    assert!(headers.contains_key("last-modified"));

    // A second PUT is a second version of the same node.
    assert_eq!(dav.put("docs/plan.md", b"changed\n").await.0, StatusCode::NO_CONTENT);
    let history = s.history(PROJECT, &token, "docs/plan.md").await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].node, first.node);

    let (status, listing) = dav.propfind("", "1").await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert!(listing.contains("/dav/notes/docs/"), "{listing}");
    assert!(listing.contains("getlastmodified"), "{listing}");
    let (status, one) = dav.propfind("docs/plan.md", "0").await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert!(one.contains("<D:getcontentlength>8</D:getcontentlength>"), "{one}");
    assert!(one.contains(&history[0].hash.to_string()), "{one}");
    assert_eq!(dav.propfind("nope.md", "0").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn if_match_is_the_merge_base_and_a_stale_binary_edit_is_412() {
    let (s, token) = setup().await;
    let dav = Dav::new(&s, PROJECT, &token);
    let (_, headers) = dav.put("log.md", b"# Log\n- start\n").await;
    let v1 = etag(&headers);

    // Two clients edit v1; the second sends v1 as If-Match and merges.
    let (status, _) = dav
        .send(
            dav.req("PUT", "log.md")
                .header("if-match", &v1)
                .body("# Log\n- start\n- a: tests pass\n"),
        )
        .await
        .into_status_and_headers();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, headers) = dav
        .send(
            dav.req("PUT", "log.md")
                .header("if-match", &v1)
                .body("# Log\n- start\n- b: docs\n"),
        )
        .await
        .into_status_and_headers();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers.get(HEADER_STATUS).expect("status header"), "merged");
    assert_eq!(
        s.read_bytes(PROJECT, &token, "log.md").await,
        b"# Log\n- start\n- a: tests pass\n- b: docs\n"
    );

    // Binary content: a stale If-Match cannot merge, so 412 and no version.
    let (_, headers) = dav.put("img.bin", &[0u8, 1, 2, 3]).await;
    let old = etag(&headers);
    assert_eq!(dav.put("img.bin", &[0u8, 9, 9, 9]).await.0, StatusCode::NO_CONTENT);
    let before = s.snapshot(PROJECT).await;
    let (status, _, _) = dav
        .send(
            dav.req("PUT", "img.bin")
                .header("if-match", &old)
                .body(vec![0u8, 7, 7, 7]),
        )
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    // An etag the file never had, If-Match on a missing file: 412 too.
    let (status, _, _) = dav
        .send(dav.req("PUT", "img.bin").header("if-match", "\"abc\"").body(vec![1u8]))
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _, _) = dav
        .send(dav.req("PUT", "missing.bin").header("if-match", &old).body(vec![1u8]))
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(s.snapshot(PROJECT).await, before, "a refused PUT changed the project");
    assert_eq!(s.read_bytes(PROJECT, &token, "img.bin").await, vec![0u8, 9, 9, 9]);
    // If-Match of the current head is a plain write.
    let head = format!("\"{}\"", hash_of(&[0u8, 9, 9, 9]));
    let (status, _, _) = dav
        .send(dav.req("PUT", "img.bin").header("if-match", &head).body(vec![5u8]))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

trait StatusAndHeaders {
    fn into_status_and_headers(self) -> (StatusCode, HeaderMap);
}

impl StatusAndHeaders for (StatusCode, HeaderMap, Vec<u8>) {
    fn into_status_and_headers(self) -> (StatusCode, HeaderMap) {
        (self.0, self.1)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn move_keeps_the_node_copy_duplicates_and_delete_is_restorable() {
    let (s, token) = setup().await;
    let dav = Dav::new(&s, PROJECT, &token);
    dav.status(dav.req("MKCOL", "a")).await;
    dav.put("a/one.md", b"one\n").await;
    dav.put("a/two.md", b"two\n").await;
    let node = s.read(PROJECT, &token, "a/one.md", None).await.expect("one").node;

    // MOVE renames: same node, its history goes on.
    let dest = dav.url("a/uno.md");
    let status = dav
        .status(dav.req("MOVE", "a/one.md").header("destination", &dest))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let moved = s.read(PROJECT, &token, "a/uno.md", None).await.expect("moved");
    assert_eq!((moved.node, moved.bytes.as_slice()), (node, b"one\n".as_slice()));
    assert_eq!(s.history(PROJECT, &token, "a/uno.md").await[0].op, VersionOp::Rename);

    // Onto an existing file without `Overwrite: T`: 412, nothing changes.
    let before = s.snapshot(PROJECT).await;
    for overwrite in [None, Some("F")] {
        let mut rb = dav.req("MOVE", "a/uno.md").header("destination", dav.url("a/two.md"));
        if let Some(o) = overwrite {
            rb = rb.header("overwrite", o);
        }
        assert_eq!(dav.status(rb).await, StatusCode::PRECONDITION_FAILED);
    }
    assert_eq!(s.snapshot(PROJECT).await, before);
    // With it, the old `two.md` becomes a restorable deletion.
    let status = dav
        .status(
            dav.req("MOVE", "a/uno.md")
                .header("destination", dav.url("a/two.md"))
                .header("overwrite", "T"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(s.read_bytes(PROJECT, &token, "a/two.md").await, b"one\n");

    // COPY of a file and of a folder.
    let status = dav
        .status(dav.req("COPY", "a/two.md").header("destination", dav.url("b.md")))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(s.read_bytes(PROJECT, &token, "b.md").await, b"one\n");
    let status = dav
        .status(dav.req("COPY", "a").header("destination", dav.url("a2")))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(s.read_bytes(PROJECT, &token, "a2/two.md").await, b"one\n");
    assert_ne!(
        s.read(PROJECT, &token, "a2/two.md", None).await.expect("copy").node,
        node,
        "a copy is a new node"
    );

    // DELETE of a folder: everything in it is a deletion that rollback undoes.
    assert_eq!(dav.status(dav.req("DELETE", "a")).await, StatusCode::NO_CONTENT);
    assert_eq!(dav.status(dav.req("GET", "a/two.md")).await, StatusCode::NOT_FOUND);
    let history = s.history(PROJECT, &token, "a/two.md").await;
    assert!(history[0].deleted);
    let restored: VersionInfo = send(s.post(
        &s.purl(PROJECT, "/rollback"),
        &token,
        &serde_json::json!({"path": "a/two.md", "version": history[1].version}),
    ))
    .await
    .expect("rollback");
    assert!(!restored.deleted);
    assert_eq!(s.read_bytes(PROJECT, &token, "a/two.md").await, b"one\n");
}

const LOCK_BODY: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype><D:owner>test</D:owner></D:lockinfo>"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_file_takes_writes_only_with_its_token() {
    let (s, token) = setup().await;
    let dav = Dav::new(&s, PROJECT, &token);
    dav.put("doc.md", b"v1\n").await;

    let (status, headers, _) = dav
        .send(
            dav.req("LOCK", "doc.md")
                .header("timeout", "Second-600")
                .body(LOCK_BODY),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let lock_token = headers
        .get("lock-token")
        .expect("a Lock-Token header")
        .to_str()
        .expect("ascii")
        .to_string();

    // Without the token: 423, nothing written (also for DELETE and MOVE).
    assert_eq!(dav.put("doc.md", b"intruder\n").await.0, StatusCode::LOCKED);
    assert_eq!(dav.status(dav.req("DELETE", "doc.md")).await, StatusCode::LOCKED);
    assert_eq!(s.history(PROJECT, &token, "doc.md").await.len(), 1);
    // With it: written.
    let status = dav
        .status(
            dav.req("PUT", "doc.md")
                .header("if", format!("({lock_token})"))
                .body("v2\n"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(s.read_bytes(PROJECT, &token, "doc.md").await, b"v2\n");
    // UNLOCK, then anyone writes again.
    let status = dav
        .status(dav.req("UNLOCK", "doc.md").header("lock-token", &lock_token))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(dav.put("doc.md", b"v3\n").await.0, StatusCode::NO_CONTENT);

    // LOCK of a path that does not exist creates an empty file (Finder, Office).
    let (status, _, _) = dav.send(dav.req("LOCK", "new.md").body(LOCK_BODY)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(s.read_bytes(PROJECT, &token, "new.md").await, b"");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_leaves_history_unchanged() {
    let (s, token) = setup_with(&["--max-blob-bytes", "4096", "--max-request-bytes", "65536"]).await;
    let dav = Dav::new(&s, PROJECT, &token);
    dav.status(dav.req("MKCOL", "docs")).await;
    dav.put("docs/keep.md", b"keep\n").await;
    dav.put("other.md", b"other\n").await;
    let skills = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(skills.path().join("pdf")).expect("skill dir");
    std::fs::write(
        skills.path().join("pdf/SKILL.md"),
        "---\nname: pdf\ndescription: Read PDFs\n---\nbody\n",
    )
    .expect("SKILL.md");
    s.publish_skills(skills.path());
    let before = s.snapshot(PROJECT).await;

    // Oversized bodies: 413, with or without a declared length.
    assert_eq!(
        dav.put("big.bin", &vec![7u8; 5000]).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let chunks = futures_util::stream::iter((0..5).map(|_| Ok::<_, std::io::Error>(vec![7u8; 1000])));
    let status = dav
        .status(dav.req("PUT", "big.bin").body(reqwest::Body::wrap_stream(chunks)))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // An XML body (PROPFIND, LOCK) over --max-request-bytes: 413.
    let huge_xml = format!(
        "<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\"><D:prop>{}</D:prop></D:propfind>",
        "<D:getetag/>".repeat(7000)
    );
    let status = dav
        .status(dav.req("PROPFIND", "").header("depth", "1").body(huge_xml.clone()))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        dav.status(dav.req("LOCK", "other.md").body(huge_xml)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // `..`, NUL, an encoded slash, names that are not UTF-8: 400 (raw requests,
    // so nothing normalises them on the way).
    for target in [
        "/dav/notes/docs/%2E%2E/other.md",
        "/dav/notes/docs/../other.md",
        "/dav/notes/a%00b.md",
        "/dav/notes/a%2Fb.md",
        "/dav/notes/a%FFb.md",
    ] {
        for m in ["PUT", "GET", "DELETE"] {
            let (status, _, _) = s.raw(m, target, Some(&token), b"x").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{m} {target}");
        }
    }
    let status = dav
        .status(
            dav.req("MOVE", "other.md")
                .header("destination", format!("{}/dav/notes/docs/../x.md", s.base)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let status = dav
        .status(
            dav.req("COPY", "other.md")
                .header("destination", format!("{}/dav/elsewhere/x.md", s.base)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // PROPFIND of infinite depth (or no Depth, which means infinity): 403.
    assert_eq!(dav.propfind("", "infinity").await.0, StatusCode::FORBIDDEN);
    assert_eq!(dav.status(dav.req("PROPFIND", "")).await, StatusCode::FORBIDDEN);

    // The published skills are readable and read-only.
    let (status, _, body) = dav.send(dav.req("GET", "skills/pdf/SKILL.md")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(b"---\nname: pdf"));
    assert_eq!(dav.put("skills/pdf/SKILL.md", b"mine").await.0, StatusCode::FORBIDDEN);
    assert_eq!(dav.put("skills/new.md", b"mine").await.0, StatusCode::FORBIDDEN);
    assert_eq!(dav.status(dav.req("DELETE", "skills/pdf")).await, StatusCode::FORBIDDEN);
    assert_eq!(dav.status(dav.req("MKCOL", "skills/x")).await, StatusCode::FORBIDDEN);
    let status = dav
        .status(
            dav.req("MOVE", "other.md")
                .header("destination", dav.url("skills/other.md")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let status = dav
        .status(dav.req("MOVE", "skills/pdf").header("destination", dav.url("pdf")))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // PUT into a folder that does not exist: 409 (RFC 4918), MKCOL on an
    // existing folder: 405, PUT onto a folder: 405, PATCH: 405.
    assert_eq!(dav.put("nowhere/x.md", b"x").await.0, StatusCode::CONFLICT);
    assert_eq!(
        dav.status(dav.req("MKCOL", "docs")).await,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        dav.status(dav.req("MKCOL", "no/such/parent")).await,
        StatusCode::CONFLICT
    );
    assert_eq!(dav.put("docs", b"x").await.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        dav.status(dav.req("PATCH", "other.md").body("x")).await,
        StatusCode::METHOD_NOT_ALLOWED
    );

    assert_eq!(
        s.snapshot(PROJECT).await,
        before,
        "a refused request changed the project"
    );
    assert_eq!(s.history(PROJECT, &token, "other.md").await.len(), 1);
}

// ---------------------------------------------------------------------------
// Real clients
// ---------------------------------------------------------------------------

fn require_tool(program: &str, package: &str) {
    assert!(
        Command::new(program).arg("--version").output().is_ok() || Command::new(program).arg("-V").output().is_ok(),
        "{program} is missing: install the Debian package {package} (scripts/test does). \
         Not skipping: a skipped client test proves nothing."
    );
}

/// A tree of text and binary files, nested, with a name that needs encoding.
fn write_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 4)).join(format!("sub {}", i % 3));
        std::fs::create_dir_all(&dir).expect("mkdir");
        if i % 2 == 0 {
            std::fs::write(dir.join(format!("note-{i}.md")), format!("# note {i}\nline\n")).expect("write");
        } else {
            let bytes: Vec<u8> = (0..(i * 97 % 5000)).map(|b| (b * 31 + i) as u8).collect();
            std::fs::write(dir.join(format!("blob-{i}.bin")), bytes).expect("write");
        }
    }
}

/// Every file below `root`, by relative path, with its bytes.
fn read_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .expect("below root")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).expect("read")));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

struct Rclone {
    remote: String,
}

impl Rclone {
    fn new(s: &TestServer, token: &str) -> Rclone {
        Self::with_vendor(s, token, "other")
    }

    /// `owncloud` makes rclone send `X-OC-Mtime` and trust the server's times.
    fn with_vendor(s: &TestServer, token: &str, vendor: &str) -> Rclone {
        require_tool("rclone", "rclone");
        let out = Command::new("rclone")
            .args(["obscure", token])
            .output()
            .expect("rclone obscure");
        assert!(out.status.success(), "rclone obscure: {}", both(&out));
        let pass = stdout(&out).trim().to_string();
        Rclone {
            remote: format!(
                ":webdav,url='{}/dav/{PROJECT}',vendor={vendor},user=tester,pass='{pass}':",
                s.base
            ),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("rclone")
            .args(args)
            .env("RCLONE_CONFIG", "/dev/null")
            .output()
            .expect("run rclone");
        assert!(out.status.success(), "rclone {args:?}: {}", both(&out));
        both(&out)
    }

    fn path(&self, rel: &str) -> String {
        format!("{}{rel}", self.remote)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rclone_copy_and_sync_round_trip_byte_for_byte() {
    let (s, token) = setup().await;
    let rclone = Rclone::new(&s, &token);
    let work = tempfile::tempdir().expect("tempdir");
    let local = work.path().join("local");
    write_tree(&local, 60);
    let local_str = local.to_str().expect("utf-8 path");

    rclone.run(&["copy", local_str, &rclone.path("tree")]);
    // What the server holds, read through the REST API, is the local tree.
    for (rel, bytes) in read_tree(&local) {
        assert_eq!(
            s.read_bytes(PROJECT, &token, &format!("tree/{rel}")).await,
            bytes,
            "tree/{rel}"
        );
    }
    let back = work.path().join("back");
    rclone.run(&["copy", &rclone.path("tree"), back.to_str().expect("utf-8")]);
    assert_eq!(read_tree(&back), read_tree(&local));

    // Change the local tree and sync: edits, deletions, new files, a new folder.
    std::fs::write(local.join("d0/sub 0/note-0.md"), "# note 0\nedited\n").expect("edit");
    std::fs::remove_file(local.join("d1/sub 1/blob-1.bin")).expect("rm");
    std::fs::remove_dir_all(local.join("d3")).expect("rm -r");
    std::fs::create_dir_all(local.join("fresh/deep")).expect("mkdir");
    std::fs::write(local.join("fresh/deep/new.bin"), vec![0u8, 255, 1, 254]).expect("new");
    rclone.run(&["sync", local_str, &rclone.path("tree")]);
    let back2 = work.path().join("back2");
    rclone.run(&["copy", &rclone.path("tree"), back2.to_str().expect("utf-8")]);
    assert_eq!(read_tree(&back2), read_tree(&local));
    // The deleted file is a deletion in its history, not gone.
    assert!(s.history(PROJECT, &token, "tree/d1/sub 1/blob-1.bin").await[0].deleted);
    assert_eq!(s.history(PROJECT, &token, "tree/d0/sub 0/note-0.md").await.len(), 2);
}

/// A davfs2 mount of the project, unmounted (which uploads) on drop.
struct DavfsMount {
    dir: tempfile::TempDir,
    mountpoint: PathBuf,
    mounted: bool,
}

impl DavfsMount {
    fn mount(s: &TestServer, token: &str) -> DavfsMount {
        require_fuse();
        require_tool("mount.davfs", "davfs2");
        let dir = tempfile::tempdir().expect("tempdir");
        // mount.davfs drops to the davfs2 user: it needs to reach its cache.
        let cache = dir.path().join("cache");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir_all(&cache).expect("cache dir");
        std::fs::create_dir_all(&mountpoint).expect("mountpoint");
        set_mode(dir.path(), 0o755);
        set_mode(&cache, 0o777);
        let url = format!("{}/dav/{PROJECT}/", s.base);
        let secrets = dir.path().join("secrets");
        std::fs::write(&secrets, format!("{url} tester {token}\n")).expect("secrets");
        set_mode(&secrets, 0o600);
        let conf = dir.path().join("davfs2.conf");
        std::fs::write(
            &conf,
            format!(
                "cache_dir {}\nsecrets {}\nuse_locks 1\ndelay_upload 0\n\
                 # Linux >= 6.16 refuses davfs2's directory reads with smaller buffers.\nbuf_size 64\n",
                cache.display(),
                secrets.display()
            ),
        )
        .expect("davfs2.conf");
        let out = Command::new("mount.davfs")
            .arg("-o")
            .arg(format!("conf={}", conf.display()))
            .arg(&url)
            .arg(&mountpoint)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run mount.davfs");
        assert!(out.status.success(), "mount.davfs: {}", both(&out));
        DavfsMount {
            dir,
            mountpoint,
            mounted: true,
        }
    }

    fn sh(&self, script: &str) {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&self.mountpoint)
            .output()
            .expect("run sh");
        assert!(out.status.success(), "{script}: {}", both(&out));
    }

    /// Unmounts; davfs2 uploads what is still dirty before it returns.
    fn unmount(&mut self) {
        if self.mounted {
            let out = Command::new("umount").arg(&self.mountpoint).output().expect("umount");
            assert!(out.status.success(), "umount: {}", both(&out));
            self.mounted = false;
        }
    }
}

impl Drop for DavfsMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).output();
        }
        let _ = self.dir.path();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread")]
async fn davfs2_mount_creates_edits_renames_deletes_and_copies_a_tree() {
    let (s, token) = setup().await;
    s.commit(PROJECT, &token, "existing.md", None, b"first line\n")
        .await
        .expect("commit");
    s.commit(PROJECT, &token, "old.md", None, b"to be removed\n")
        .await
        .expect("commit");
    s.commit(PROJECT, &token, "move-me.md", None, b"moving\n")
        .await
        .expect("commit");
    let moved_node = s.read(PROJECT, &token, "move-me.md", None).await.expect("read").node;
    let source = tempfile::tempdir().expect("tempdir");
    write_tree(source.path(), 24);

    let mut mount = DavfsMount::mount(&s, &token);
    mount.sh("test \"$(cat existing.md)\" = 'first line'");
    mount.sh("printf 'created\\n' > created.md");
    mount.sh("printf 'second line\\n' >> existing.md");
    mount.sh("mv move-me.md moved.md");
    mount.sh("rm old.md");
    mount.sh("mkdir folder");
    mount.sh(&format!("cp -r '{}' folder/tree", source.path().display()));
    mount.unmount();

    assert_eq!(s.read_bytes(PROJECT, &token, "created.md").await, b"created\n");
    assert_eq!(
        s.read_bytes(PROJECT, &token, "existing.md").await,
        b"first line\nsecond line\n"
    );
    let moved = s.read(PROJECT, &token, "moved.md", None).await.expect("moved");
    assert_eq!(
        (moved.node, moved.bytes.as_slice()),
        (moved_node, b"moving\n".as_slice())
    );
    assert!(s.history(PROJECT, &token, "old.md").await[0].deleted);
    for (rel, bytes) in read_tree(source.path()) {
        assert_eq!(
            s.read_bytes(PROJECT, &token, &format!("folder/tree/{rel}")).await,
            bytes,
            "folder/tree/{rel}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cadaver_locks_edits_moves_and_others_get_423() {
    let (s, token) = setup().await;
    require_tool("cadaver", "cadaver");
    let home = tempfile::tempdir().expect("tempdir");
    // cadaver reads its credentials from ~/.netrc.
    let netrc = home.path().join(".netrc");
    std::fs::write(&netrc, format!("machine 127.0.0.1\nlogin tester\npassword {token}\n")).expect(".netrc");
    set_mode(&netrc, 0o600);
    let local = home.path().join("local.txt");
    std::fs::write(&local, "from cadaver\n").expect("local file");
    let script = format!(
        "mkcol cad\nput {l} cad/file.txt\nmove cad/file.txt cad/moved.txt\nlock cad/moved.txt\nput {l} cad/moved.txt\nls cad\nquit\n",
        l = local.display()
    );
    let mut child = Command::new("cadaver")
        .arg(format!("{}/dav/{PROJECT}/", s.base))
        .env("HOME", home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cadaver");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), script.as_bytes()).expect("script");
    let out = child.wait_with_output().expect("cadaver finishes");
    let text = both(&out);
    assert!(!text.contains("failed"), "a cadaver command failed: {text}");
    assert!(text.contains("moved.txt"), "{text}");

    assert_eq!(s.read_bytes(PROJECT, &token, "cad/moved.txt").await, b"from cadaver\n");
    let history = s.history(PROJECT, &token, "cad/moved.txt").await;
    assert_eq!(
        history.iter().map(|v| v.op).collect::<Vec<_>>(),
        vec![VersionOp::Rename, VersionOp::Create],
        "the second PUT of the same bytes is no new version"
    );
    // cadaver quit holding its lock: a writer without the token is refused.
    let dav = Dav::new(&s, PROJECT, &token);
    assert_eq!(dav.put("cad/moved.txt", b"intruder\n").await.0, StatusCode::LOCKED);
    let (_, lock_info) = dav.propfind("cad/moved.txt", "0").await;
    assert!(
        lock_info.contains("Second-"),
        "locks are capped, never infinite: {lock_info}"
    );
    assert_eq!(s.read_bytes(PROJECT, &token, "cad/moved.txt").await, b"from cadaver\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn x_oc_mtime_is_the_versions_file_time_and_getlastmodified() {
    let (s, token) = setup().await;
    let dav = Dav::new(&s, PROJECT, &token);
    let (status, headers, _) = dav
        .send(
            dav.req("PUT", "old.md")
                .header("x-oc-mtime", "1577934245")
                .body("old\n"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers.get("x-oc-mtime").expect("acknowledged"), "accepted");
    let head = &s.history(PROJECT, &token, "old.md").await[0];
    assert_eq!(head.mtime.as_deref(), Some("2020-01-02T03:04:05.000000000Z"));
    let (_, props) = dav.propfind("old.md", "0").await;
    assert!(props.contains("Thu, 02 Jan 2020 03:04:05 GMT"), "{props}");
    let (_, headers, _) = dav.send(dav.req("HEAD", "old.md")).await;
    assert_eq!(
        headers.get("last-modified").expect("Last-Modified"),
        "Thu, 02 Jan 2020 03:04:05 GMT"
    );

    // A malformed time is refused before anything is stored.
    let before = s.snapshot(PROJECT).await;
    let (status, _, _) = dav
        .send(dav.req("PUT", "old.md").header("x-oc-mtime", "yesterday").body("new\n"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(s.snapshot(PROJECT).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn rclone_keeps_file_times_and_a_second_sync_transfers_nothing() {
    let (s, token) = setup().await;
    let rclone = Rclone::with_vendor(&s, &token, "owncloud");
    let work = tempfile::tempdir().expect("tempdir");
    let local = work.path().join("local");
    write_tree(&local, 12);
    let dated = local.join("d0/sub 0/note-0.md");
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_934_245);
    std::fs::File::options()
        .write(true)
        .open(&dated)
        .expect("open")
        .set_modified(when)
        .expect("set mtime");
    let local_str = local.to_str().expect("utf-8 path");
    rclone.run(&["sync", local_str, &rclone.path("tree")]);
    let head = &s.history(PROJECT, &token, "tree/d0/sub 0/note-0.md").await[0];
    assert_eq!(head.mtime.as_deref(), Some("2020-01-02T03:04:05.000000000Z"));
    let cursor = s.snapshot(PROJECT).await.0;
    let log = rclone.run(&["sync", "-v", local_str, &rclone.path("tree")]);
    assert!(!log.contains("Copied"), "the second sync uploaded again: {log}");
    assert_eq!(s.snapshot(PROJECT).await.0, cursor, "the second sync wrote versions");
}
