//! The protocol against one server: sign-in, PUT/GET/ranges/HEAD/PROPFIND,
//! If-Match as the merge base, MOVE/COPY/DELETE, file times.

use super::*;
use contextfs::api::*;

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
