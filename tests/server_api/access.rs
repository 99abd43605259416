//! Tokens that may not do what they ask: 401, 404 for other projects, 403 for read-only.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn authentication_failures_are_401() {
    let s = TestServer::start().await;
    let (_t, v) = seeded(&s).await;
    let hash = BlobHash::of(b"keep me\n");
    let commit = json!({"path": "docs/keep.md", "base_version": 1, "hash": hash});
    let before = s.snapshot("p").await;

    let cases: Vec<(&str, Option<&str>)> = vec![
        ("missing", None),
        (
            "wrong token",
            Some("Bearer cfs_000000000000000000000000000000000000000000000000"),
        ),
        ("basic auth", Some("Basic dXNlcjpwYXNz")),
        ("no scheme", Some(ADMIN_TOKEN)),
        ("empty bearer", Some("Bearer ")),
        ("scheme only", Some("Bearer")),
        ("no space", Some("Bearercfs_x")),
    ];
    for (what, header) in cases {
        for rb in [
            s.http.get(s.purl("p", "/tree")),
            s.http.post(s.purl("p", "/commit")).json(&commit),
            s.http.put(s.file_url("p", "docs/keep.md")).body("overwrite"),
            s.http.get(s.url("/whoami")),
            s.http.get(s.url("/skills")),
        ] {
            let rb = match header {
                Some(h) => rb.header(reqwest::header::AUTHORIZATION, h),
                None => rb,
            };
            let err = expect_error(rb, StatusCode::UNAUTHORIZED, "unauthorized").await;
            assert!(!err.message.is_empty(), "{what}");
        }
    }
    assert_eq!(s.snapshot("p").await, before, "rejected requests changed the tree");
    assert_eq!(s.read_bytes("p", &s.admin, "docs/keep.md").await, b"keep me\n");
    assert_eq!(v.version, 1);
    // the scheme is case-insensitive (RFC 9110), so this is well-formed
    let me: WhoAmI = send(
        s.http
            .get(s.url("/whoami"))
            .header(reqwest::header::AUTHORIZATION, format!("bearer {ADMIN_TOKEN}")),
    )
    .await
    .unwrap();
    assert!(me.admin);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_projects_token_sees_404_like_a_missing_project() {
    let s = TestServer::start().await;
    let (_t, _) = seeded(&s).await;
    let foreign = s.project_with_token("other").await;
    let before = s.snapshot("p").await;
    let hash = s.upload("other", &foreign, b"foreign bytes").await;

    let err = expect_error(
        s.get(&s.purl("p", "/tree"), &foreign),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let missing = expect_error(
        s.get(&s.purl("nosuchproject", "/tree"), &foreign),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // the same message as for a project that does not exist, up to the name
    assert_eq!(
        err.message,
        missing.message.replace("nosuchproject", "p"),
        "a foreign token must not reveal that p exists"
    );
    let admin_missing = expect_error(
        s.get(&s.purl("nosuchproject", "/tree"), &s.admin),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(admin_missing.message, missing.message);

    for rb in [
        s.get(&s.purl("p", ""), &foreign),
        s.get(&s.file_url("p", "docs/keep.md"), &foreign),
        s.get(&s.purl("p", "/history"), &foreign)
            .query(&[("path", "docs/keep.md")]),
        s.get(&s.purl("p", "/changes"), &foreign),
        s.get(&s.purl("p", "/audit"), &foreign),
        s.post(
            &s.purl("p", "/commit"),
            &foreign,
            &json!({"path": "docs/keep.md", "base_version": 1, "hash": hash}),
        ),
        s.req(Method::PUT, &s.file_url("p", "docs/new.md"), Some(&foreign))
            .body("x"),
        s.post(&s.purl("p", "/delete"), &foreign, &json!({"path": "docs/keep.md"})),
        s.put_blob_request("p", &foreign, &hash, "foreign bytes"),
    ] {
        let e = expect_error(rb, StatusCode::NOT_FOUND, "not_found").await;
        assert_eq!(e.message, err.message);
    }
    let list: Vec<ProjectInfo> = send(s.get(&s.url("/projects"), &foreign)).await.unwrap();
    assert_eq!(list.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["other"]);
    assert_eq!(s.snapshot("p").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_token_cannot_write() {
    let s = TestServer::start().await;
    let (t, _) = seeded(&s).await;
    let ro = s.token("p", Access::Read).await.token;
    let new_bytes = b"read-only writer was here".to_vec();
    let new_hash = BlobHash::of(&new_bytes);
    // an existing blob, so commit would otherwise be valid
    let known = s.upload("p", &t, b"uploaded by the writer").await;
    let before = s.snapshot("p").await;

    let cases = [
        (
            "commit",
            s.post(
                &s.purl("p", "/commit"),
                &ro,
                &json!({"path": "docs/keep.md", "base_version": 1, "hash": known}),
            ),
        ),
        ("blob put", s.put_blob_request("p", &ro, &new_hash, new_bytes.clone())),
        (
            "file put",
            s.req(Method::PUT, &s.file_url("p", "docs/keep.md"), Some(&ro))
                .body(new_bytes.clone()),
        ),
        ("mkdir", s.post(&s.purl("p", "/mkdir"), &ro, &json!({"path": "newdir"}))),
        (
            "rename",
            s.post(
                &s.purl("p", "/rename"),
                &ro,
                &json!({"from": "docs/keep.md", "to": "docs/moved.md"}),
            ),
        ),
        (
            "delete",
            s.post(&s.purl("p", "/delete"), &ro, &json!({"path": "docs/keep.md"})),
        ),
        (
            "rollback",
            s.post(
                &s.purl("p", "/rollback"),
                &ro,
                &json!({"path": "docs/keep.md", "version": 1}),
            ),
        ),
    ];
    for (what, rb) in cases {
        let err = expect_error(rb, StatusCode::FORBIDDEN, "forbidden").await;
        assert!(err.message.contains("read-only"), "{what}: {err:?}");
    }
    assert_eq!(s.snapshot("p").await, before, "read-only requests changed the tree");
    assert_err(
        s.get_blob("p", &s.admin, new_hash.as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // reading is fine
    assert_eq!(s.read_bytes("p", &ro, "docs/keep.md").await, b"keep me\n");
    assert_eq!(s.history("p", &ro, "docs/keep.md").await.len(), 1);
}
