//! Bad input: the status, the code, and nothing changed.

use super::*;

/// Paths up to `MAX_PATH_BYTES` (16 KiB) that do not compress work on every
/// route and in both stores (PostgreSQL indexes such a path by prefix and
/// hash: a B-tree entry holds at most about 2.7 KB).
#[tokio::test(flavor = "multi_thread")]
async fn long_paths_that_do_not_compress_work_everywhere() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    // Distinct pseudo-random components: nothing for a compressor to share.
    let component = |i: usize| -> String {
        let seed = blake3::hash(format!("component {i}").as_bytes()).to_hex().to_string();
        seed.repeat(4)[..250].to_string()
    };
    let dir: String = (0..60).map(component).collect::<Vec<_>>().join("/");
    let path = format!("{dir}/{}", "f".repeat(200));
    assert!(path.len() > 15_000 && path.len() <= contextfs::model::MAX_PATH_BYTES);
    let v1 = s.commit("p", &t, &path, None, b"one\n").await.unwrap();
    assert_eq!(s.read_bytes("p", &t, &path).await, b"one\n");
    let v2 = s.commit("p", &t, &path, Some(1), b"two\n").await.unwrap();
    assert_eq!((v2.node, v2.version), (v1.node, 2));
    let below = s.tree("p", &t, &[("prefix", dir.as_str())]).await.unwrap();
    assert_eq!(
        below.entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        [path.as_str()]
    );
    let renamed = format!("{dir}/{}", "g".repeat(200));
    let moved: VersionInfo = send(s.post(&s.purl("p", "/rename"), &t, &json!({"from": path, "to": renamed})))
        .await
        .unwrap();
    assert_eq!(moved.node, v1.node);
    // A second file beside it, then the whole directory deleted and listed.
    s.commit("p", &t, &format!("{dir}/other"), None, b"x").await.unwrap();
    let top = component(0);
    let _: DeleteResponse = send(s.post(&s.purl("p", "/delete"), &t, &json!({"path": top, "recursive": true})))
        .await
        .unwrap();
    assert!(s.tree("p", &t, &[]).await.unwrap().entries.is_empty());
    // The same long path again: a new node where the old one was deleted.
    let again = s.commit("p", &t, &renamed, None, b"again\n").await.unwrap();
    assert_ne!(again.node, v1.node);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_paths_are_400() {
    let s = TestServer::start().await;
    let (t, _) = seeded(&s).await;
    let hash = s.upload("p", &t, b"content").await;
    let before = s.snapshot("p").await;
    let long_component = "n".repeat(256);
    let long_path = vec!["d".repeat(200); 82].join("/");
    assert!(long_path.len() > contextfs::model::MAX_PATH_BYTES);
    let bad = [
        "..",
        "../escape.md",
        "a/../b",
        "a/./b",
        "a\0b",
        "a//b",
        "/abs",
        "trailing/",
        "",
        long_component.as_str(),
        long_path.as_str(),
    ];

    // in JSON bodies of every write route
    for path in bad {
        for (route, field, body) in [
            (
                "/commit",
                "path",
                json!({"path": path, "base_version": null, "hash": hash}),
            ),
            ("/mkdir", "path", json!({"path": path})),
            ("/rename", "to", json!({"from": "docs/keep.md", "to": path})),
            ("/rename", "from", json!({"from": path, "to": "docs/x.md"})),
            ("/delete", "path", json!({"path": path})),
            ("/rollback", "path", json!({"path": path, "version": 1})),
        ] {
            let err = expect_error(
                s.post(&s.purl("p", route), &t, &body),
                StatusCode::BAD_REQUEST,
                "invalid_body",
            )
            .await;
            assert!(
                err.message.contains(&format!("{field}: ")),
                "{route} {path:?}: the message names `{field}`: {err:?}"
            );
        }
    }
    // in query strings
    for path in bad.iter().filter(|p| !p.is_empty()) {
        expect_error(
            s.get(&s.purl("p", "/history"), &t).query(&[("path", path)]),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        )
        .await;
        expect_error(
            s.get(&s.purl("p", "/tree"), &t).query(&[("prefix", path)]),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        )
        .await;
    }
    // in the files/{path} URL, GET and PUT; `..` must dodge URL normalisation
    let files = s.purl("p", "/files/");
    let url_cases = [
        format!("{files}a%2F..%2Fb"),
        format!("{files}a%00b"),
        format!("{files}a//b"),
        format!("{files}/abs"),
        format!("{files}dir/"),
        format!("{files}{long_component}"),
        format!("{files}{long_path}"),
    ];
    for url in &url_cases {
        expect_error(s.get(url, &t), StatusCode::BAD_REQUEST, "invalid_path").await;
        expect_error(
            s.req(Method::PUT, url, Some(&t)).body("x"),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        )
        .await;
    }
    for target in [
        "/api/v1/projects/p/files/%2E%2E/escape.md",
        "/api/v1/projects/p/files/docs/%2e%2e/%2e%2e/etc",
        "/api/v1/projects/p/files/docs/../keep.md",
        "/api/v1/projects/p/files/./keep.md",
    ] {
        for method in ["GET", "PUT"] {
            let (status, ct, body) = s.raw(method, target, Some(&t), b"x").await;
            let err = decode_error(status, ct.as_deref(), &body);
            assert_eq!(
                (err.status, err.code.as_str()),
                (StatusCode::BAD_REQUEST, "invalid_path"),
                "{method} {target}: {err:?}"
            );
        }
    }
    // a path that is not UTF-8 is also a JSON 400
    for method in ["GET", "PUT"] {
        let (status, ct, body) = s
            .raw(method, "/api/v1/projects/p/files/bad%FFname", Some(&t), b"x")
            .await;
        let err = decode_error(status, ct.as_deref(), &body);
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{method}: {err:?}");
    }
    assert_eq!(s.snapshot("p").await, before, "rejected paths changed the tree");
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_mismatch_and_missing_blobs_are_400() {
    let s = TestServer::start().await;
    let (t, _) = seeded(&s).await;
    let before = s.snapshot("p").await;
    let claimed = BlobHash::of(b"what I said I would send");
    let sent = b"what I actually sent".to_vec();
    s.put_blob_expecting_hash_mismatch("p", &t, &claimed, sent.clone())
        .await;
    assert_err(
        s.get_blob("p", &t, claimed.as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_err(
        s.get_blob("p", &t, BlobHash::of(&sent).as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // committing the claimed hash fails: it was never stored
    let err = assert_err(
        s.commit_req("p", &t, &commit_request("docs/keep.md", Some(1), claimed.clone()))
            .await,
        StatusCode::BAD_REQUEST,
        "blob_missing",
    );
    assert!(err.message.contains(claimed.as_str()));
    assert_err(
        s.commit_req("p", &t, &commit_request("docs/new.md", None, claimed))
            .await,
        StatusCode::BAD_REQUEST,
        "blob_missing",
    );
    // a blob uploaded only by another project is missing here too
    let other = s.project_with_token("other").await;
    let theirs = s.upload("other", &other, b"their bytes").await;
    assert_err(
        s.commit_req("p", &t, &commit_request("docs/new.md", None, theirs))
            .await,
        StatusCode::BAD_REQUEST,
        "blob_missing",
    );
    // a malformed hash in the URL
    expect_error(
        s.req(Method::PUT, &s.purl("p", "/blobs/not-a-hash"), Some(&t))
            .body("x"),
        StatusCode::BAD_REQUEST,
        "invalid_hash",
    )
    .await;
    expect_error(
        s.get(&s.purl("p", &format!("/blobs/{}", "A".repeat(64))), &t),
        StatusCode::BAD_REQUEST,
        "invalid_hash",
    )
    .await;
    assert_eq!(s.snapshot("p").await, before);
}

/// Small files commit in one request: the content rides in the commit.
#[tokio::test(flavor = "multi_thread")]
async fn commit_with_inline_content_stores_the_blob_and_refuses_bad_content() {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;

    let bytes = b"# notes\ninline content\n";
    let mut req = commit_request("notes.md", None, BlobHash::of(bytes));
    req.content_base64 = Some(b64(bytes));
    req.idempotency_key = Some("inline-1".into());
    let v1 = s.commit_req("p", &t, &req).await.unwrap();
    assert_eq!(
        (v1.version, v1.size, v1.status),
        (1, bytes.len() as u64, VersionStatus::Clean)
    );
    assert_eq!(s.read_bytes("p", &t, "notes.md").await, bytes);
    assert_eq!(
        s.get_blob("p", &t, v1.hash.as_str()).await.unwrap(),
        bytes.to_vec(),
        "the blob is the project's now"
    );
    assert_eq!(s.commit_req("p", &t, &req).await.unwrap(), v1, "a retry writes nothing");

    // An inline edit on a moved-on base merges like any commit.
    s.commit("p", &t, "notes.md", Some(1), b"# notes\ninline content\nremote line\n")
        .await
        .unwrap();
    let edited = b"# NOTES\ninline content\n";
    let mut req = commit_request("notes.md", Some(1), BlobHash::of(edited));
    req.content_base64 = Some(b64(edited));
    let merged = s.commit_req("p", &t, &req).await.unwrap();
    assert_eq!(merged.status, VersionStatus::Merged);
    assert_eq!(
        s.read_bytes("p", &t, "notes.md").await,
        b"# NOTES\ninline content\nremote line\n"
    );

    // Content that does not hash to `hash`.
    let mut bad = commit_request("other.md", None, BlobHash::of(b"claimed"));
    bad.content_base64 = Some(b64(b"something else"));
    assert_err(
        s.commit_req("p", &t, &bad).await,
        StatusCode::BAD_REQUEST,
        "hash_mismatch",
    );
    assert_err(
        s.get_blob("p", &t, BlobHash::of(b"something else").as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // A refused commit (onto a directory) leaves its content invisible.
    let _: VersionInfo = send(s.post(&s.purl("p", "/mkdir"), &t, &json!({"path": "dir"})))
        .await
        .unwrap();
    let orphan = b"meant for a directory";
    let mut bad_target = commit_request("dir", None, BlobHash::of(orphan));
    bad_target.content_base64 = Some(b64(orphan));
    assert_err(
        s.commit_req("p", &t, &bad_target).await,
        StatusCode::CONFLICT,
        "is_a_directory",
    );
    assert_err(
        s.get_blob("p", &t, BlobHash::of(orphan).as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Not base64.
    bad.content_base64 = Some("not base64 at all!".into());
    let err = assert_err(
        s.commit_req("p", &t, &bad).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    );
    assert!(err.message.contains("content_base64"), "{err:?}");
    // Over the inline limit: upload it as a blob instead.
    let big = vec![b'x'; MAX_INLINE_CONTENT + 1];
    let mut bad = commit_request("big.bin", None, BlobHash::of(&big));
    bad.content_base64 = Some(b64(&big));
    let err = assert_err(
        s.commit_req("p", &t, &bad).await,
        StatusCode::BAD_REQUEST,
        "content_too_large",
    );
    assert!(err.message.contains("/blobs/"), "{err:?}");
    let before = s.snapshot("p").await;
    // A read-only token cannot sneak content in either.
    let ro = s.token("p", Access::Read).await.token;
    let mut req = commit_request("ro.md", None, BlobHash::of(b"ro"));
    req.content_base64 = Some(b64(b"ro"));
    assert_err(s.commit_req("p", &ro, &req).await, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(s.snapshot("p").await, before, "refused commits changed the tree");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limits_are_413() {
    let s = TestServer::start_with(&["--max-blob-bytes", "1024", "--max-request-bytes", "4096"]).await;
    let (t, _) = seeded(&s).await;
    let before = s.snapshot("p").await;

    let big = vec![b'x'; 2048];
    let big_hash = BlobHash::of(&big);
    expect_error(
        s.put_blob_request("p", &t, &big_hash, big.clone()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    )
    .await;
    assert_err(
        s.get_blob("p", &t, big_hash.as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        s.req(Method::PUT, &s.file_url("p", "docs/big.md"), Some(&t))
            .body(big.clone()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    )
    .await;
    assert_err(
        s.read("p", &t, "docs/big.md", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        s.req(
            Method::PUT,
            &s.url(&format!("/skills/blobs/{big_hash}")),
            Some(&s.admin),
        )
        .body(big.clone()),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    )
    .await;
    // a JSON body over --max-request-bytes
    let small = s.upload("p", &t, b"small").await;
    let body = json!({"path": "docs/keep.md", "base_version": 1, "hash": small, "message": "m".repeat(5000)});
    expect_error(
        s.post(&s.purl("p", "/commit"), &t, &body),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    )
    .await;
    // inline content is a blob too: the same limit
    use base64::Engine;
    let mut inline = commit_request("docs/inline-big.md", None, big_hash.clone());
    inline.content_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&big));
    assert_err(
        s.commit_req("p", &t, &inline).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    assert_eq!(s.snapshot("p").await, before);

    // exactly at the limit is fine
    let edge = vec![b'y'; 1024];
    s.upload("p", &t, &edge).await;
    let v = s.commit("p", &t, "docs/edge.bin", None, &edge).await.unwrap();
    assert_eq!(v.size, 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_base_version_is_409_with_the_head() {
    let s = TestServer::start().await;
    let (t, v1) = seeded(&s).await;
    let v2 = s
        .commit("p", &t, "docs/keep.md", Some(1), b"keep me v2\n")
        .await
        .unwrap();
    let hash = s.upload("p", &t, b"from the future").await;
    let before = s.snapshot("p").await;

    for base in [3, 99, 0, -1] {
        let err = refused_as_unknown_base(&s, &t, "docs/keep.md", base, &hash).await;
        assert_eq!(
            err.head.as_ref(),
            Some(&v2),
            "base {base}: error.head is the current head"
        );
    }
    // the one-call PUT honours the header the same way
    let err = expect_error(
        s.req(Method::PUT, &s.file_url("p", "docs/keep.md"), Some(&t))
            .header(HEADER_BASE_VERSION, "7")
            .body("x"),
        StatusCode::CONFLICT,
        "base_version_unknown",
    )
    .await;
    assert_eq!(err.head.as_ref(), Some(&v2));
    // a base version for a path that does not exist: no head to report
    let err = refused_as_unknown_base(&s, &t, "docs/absent.md", 1, &hash).await;
    assert_eq!(err.head, None);
    assert_eq!(s.snapshot("p").await, before);
    assert_eq!(s.read("p", &t, "docs/keep.md", None).await.unwrap().version, 2);
    assert_eq!(v1.node, v2.node);

    // stale base on rename/delete: 409 base_version_stale with the head
    let err = expect_error(
        s.post(
            &s.purl("p", "/delete"),
            &t,
            &json!({"path": "docs/keep.md", "base_version": 1}),
        ),
        StatusCode::CONFLICT,
        "base_version_stale",
    )
    .await;
    assert_eq!(err.head.as_ref(), Some(&v2));
    let err = expect_error(
        s.post(
            &s.purl("p", "/rename"),
            &t,
            &json!({"from": "docs/keep.md", "to": "x.md", "base_version": 1}),
        ),
        StatusCode::CONFLICT,
        "base_version_stale",
    )
    .await;
    assert_eq!(err.head.as_ref(), Some(&v2));
    assert_eq!(s.snapshot("p").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_400_naming_the_problem() {
    let s = TestServer::start().await;
    let (t, _) = seeded(&s).await;
    let hash = s.upload("p", &t, b"content").await;
    let before = s.snapshot("p").await;
    let commit_url = s.purl("p", "/commit");

    let err = expect_error(
        s.post(
            &commit_url,
            &t,
            &json!({"path": "docs/keep.md", "base_version": "one", "hash": hash}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    assert!(err.message.contains("base_version"), "{err:?}");
    let err = expect_error(
        s.post(&commit_url, &t, &json!({"path": "docs/keep.md", "base_version": 1})),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    assert!(err.message.contains("hash"), "{err:?}");
    let err = expect_error(
        s.post(
            &commit_url,
            &t,
            &json!({"path": "docs/keep.md", "base_version": 1, "hash": "xyz"}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    assert!(err.message.contains("hash"), "{err:?}");
    let err = expect_error(
        s.post(
            &commit_url,
            &t,
            &json!({"path": "docs/keep.md", "hash": hash, "kind": "folder"}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    assert!(err.message.contains("kind"), "{err:?}");
    let err = expect_error(
        s.post(
            &commit_url,
            &t,
            &json!({"path": "docs/keep.md", "base_version": 1, "hash": hash, "mode": 0o17777}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert!(err.message.contains("mode"), "{err:?}");
    // not JSON at all, and JSON without the content type
    expect_error(
        s.req(Method::POST, &commit_url, Some(&t))
            .header("content-type", "application/json")
            .body("{\"path\": "),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    expect_error(
        s.req(Method::POST, &commit_url, Some(&t))
            .body(json!({"path": "a", "hash": hash}).to_string()),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    let err = expect_error(
        s.post(
            &s.purl("p", "/rollback"),
            &t,
            &json!({"path": "docs/keep.md", "version": "latest"}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    assert!(err.message.contains("version"), "{err:?}");
    let err = expect_error(
        s.post(&s.url("/projects/p/tokens"), &s.admin, &json!({"access": "write"})),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    assert!(err.message.contains("access"), "{err:?}");
    // bad query parameters
    let err = expect_error(
        s.get(&s.purl("p", "/changes"), &t).query(&[("since", "yesterday")]),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert!(err.message.contains("since"), "{err:?}");
    expect_error(
        s.get(&s.file_url("p", "docs/keep.md"), &t)
            .query(&[("version", "latest")]),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    expect_error(
        s.get(&s.purl("p", "/history"), &t),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    // unknown routes and methods still answer with an error body
    expect_error(s.get(&s.url("/no/such/route"), &t), StatusCode::NOT_FOUND, "not_found").await;
    let (status, ct, body) = s.raw("DELETE", "/api/v1/projects", Some(&s.admin), b"").await;
    let err = decode_error(status, ct.as_deref(), &body);
    assert_eq!(err.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(s.snapshot("p").await, before);
}

/// A client that names the node it means (the mount does) never writes to,
/// moves or deletes a different node that took over the path.
#[tokio::test(flavor = "multi_thread")]
async fn node_guard_refuses_a_different_node_at_the_path() {
    let s = TestServer::start().await;
    let (t, v1) = seeded(&s).await;
    let other = v1.node + 1000;
    let hash = s.upload("p", &t, b"new bytes\n").await;
    let before = s.snapshot("p").await;

    let mut commit = commit_request("docs/keep.md", Some(v1.version), hash.clone());
    commit.node = Some(other);
    let err = assert_err(
        s.commit_req("p", &t, &commit).await,
        StatusCode::CONFLICT,
        "node_mismatch",
    );
    assert_eq!(err.head.as_ref(), Some(&v1), "error.head is the node actually there");
    let rename = json!({"from": "docs/keep.md", "to": "docs/moved.md", "node": other});
    expect_error(
        s.post(&s.purl("p", "/rename"), &t, &rename),
        StatusCode::CONFLICT,
        "node_mismatch",
    )
    .await;
    let delete = json!({"path": "docs/keep.md", "node": other});
    expect_error(
        s.post(&s.purl("p", "/delete"), &t, &delete),
        StatusCode::CONFLICT,
        "node_mismatch",
    )
    .await;
    assert_eq!(s.snapshot("p").await, before, "nothing changed");

    // Naming the right node works.
    commit.node = Some(v1.node);
    let v2 = s.commit_req("p", &t, &commit).await.unwrap();
    assert_eq!((v2.node, v2.version), (v1.node, 2));
    let delete = json!({"path": "docs/keep.md", "node": v1.node});
    let deleted: DeleteResponse = send(s.post(&s.purl("p", "/delete"), &t, &delete)).await.unwrap();
    assert_eq!(deleted.deleted[0].node, v1.node);
}

/// A base version that never existed cannot restore a deleted file, and a
/// skills upload naming one file twice is a 400, not a database error.
#[tokio::test(flavor = "multi_thread")]
async fn impossible_base_on_a_deleted_file_and_duplicate_skill_files_are_refused() {
    let s = TestServer::start().await;
    let (t, v1) = seeded(&s).await;
    let delete = json!({"path": "docs/keep.md"});
    let _: DeleteResponse = send(s.post(&s.purl("p", "/delete"), &t, &delete)).await.unwrap();
    let hash = s.upload("p", &t, b"resurrected\n").await;
    let before = s.snapshot("p").await;
    for base in [0, -5, 7] {
        refused_as_unknown_base(&s, &t, "docs/keep.md", base, &hash).await;
    }
    // Building on the tombstone itself: refused, saying why and what to do.
    let err = refused_as_unknown_base(&s, &t, "docs/keep.md", 2, &hash).await;
    assert!(
        err.message.contains("deletion") && err.message.contains("without a base"),
        "{err:?}"
    );
    assert_eq!(s.snapshot("p").await, before, "nothing was restored");
    // Base 1 existed before the deletion: the edit restores the file (lww).
    let v = s
        .commit_req("p", &t, &commit_request("docs/keep.md", Some(1), hash.clone()))
        .await
        .unwrap();
    assert_eq!((v.node, v.status, v.deleted), (v1.node, VersionStatus::Lww, false));

    let admin = s.admin.clone();
    let manifest = b"---\nname: dup\ndescription: twice\n---\n";
    let mhash = hash_of(manifest);
    let put = s
        .req(Method::PUT, &s.url(&format!("/skills/blobs/{mhash}")), Some(&admin))
        .body(manifest.to_vec())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let file = json!({"path": "dup/SKILL.md", "hash": mhash, "size": manifest.len()});
    let body = json!({"files": [file, file]});
    let err = expect_error(
        s.post(&s.url("/skills"), &admin, &body),
        StatusCode::BAD_REQUEST,
        "invalid_skill",
    )
    .await;
    assert!(err.message.contains("dup/SKILL.md"), "{}", err.message);
}
