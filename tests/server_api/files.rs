//! File times, the tree listing, blobs, checkout and the one-call PUT.

use super::*;

/// File times are metadata of a version: `PUT` sets them by header, a
/// commit by field; checkout, the tree, history and the change feed show
/// them; renames keep them; new times alone make a version (`touch`); and a
/// malformed time is refused before anything is stored.
#[tokio::test(flavor = "multi_thread")]
async fn file_times_are_stored_per_version() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let url = s.file_url("p", "notes/t.md");
    let v1: VersionInfo = send(
        s.req(Method::PUT, &url, Some(&t))
            .header(HEADER_MTIME, "2001-02-03T04:05:06.5+01:00")
            .header(HEADER_ATIME, "1000000000.25")
            .body("one\n"),
    )
    .await
    .unwrap();
    assert_eq!(v1.mtime.as_deref(), Some("2001-02-03T03:05:06.500000000Z"));
    assert_eq!(v1.atime.as_deref(), Some("2001-09-09T01:46:40.250000000Z"));
    let head = s.read("p", &t, "notes/t.md", None).await.unwrap();
    assert_eq!(head.mtime, "2001-02-03T03:05:06.500000000Z");
    assert_eq!(head.atime.as_deref(), Some("2001-09-09T01:46:40.250000000Z"));
    let entry = |tree: &TreeListing| tree.entries.iter().find(|e| e.path == "notes/t.md").cloned();
    let listed = entry(&s.tree("p", &t, &[("recursive", "true")]).await.unwrap()).expect("listed");
    assert_eq!(listed.modified_at, "2001-02-03T03:05:06.500000000Z");

    // Malformed times: 400 and nothing stored, by header and by field.
    for bad in ["yesterday", "2001-02-30T00:00:00Z", "12."] {
        expect_error(
            s.req(Method::PUT, &url, Some(&t))
                .header(HEADER_MTIME, bad)
                .body("two\n"),
            StatusCode::BAD_REQUEST,
            "invalid_header",
        )
        .await;
    }
    let hash = s.upload("p", &t, b"three\n").await;
    let mut req = commit_request("notes/t.md", Some(1), hash);
    req.mtime = Some("last tuesday".into());
    let refused = s.commit_req("p", &t, &req).await.unwrap_err();
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );
    assert_eq!(
        s.history("p", &t, "notes/t.md").await.len(),
        1,
        "a refused time stored a version"
    );

    // The same bytes with new times are a new version (touch); without
    // times, the same bytes are no change at all.
    let same = s.upload("p", &t, b"one\n").await;
    let mut touch = commit_request("notes/t.md", Some(1), same.clone());
    touch.mtime = Some("2020-01-01T00:00:00Z".into());
    let v2 = s.commit_req("p", &t, &touch).await.unwrap();
    assert_eq!(
        (v2.version, v2.mtime.as_deref()),
        (2, Some("2020-01-01T00:00:00.000000000Z"))
    );
    let again = s
        .commit_req("p", &t, &commit_request("notes/t.md", Some(2), same))
        .await
        .unwrap();
    assert_eq!(again.version, 2, "same bytes, no times: nothing new");

    // A rename keeps the file's times; so does the change feed's event.
    let moved: VersionInfo = send(s.post(
        &s.purl("p", "/rename"),
        &t,
        &json!({"from": "notes/t.md", "to": "notes/u.md"}),
    ))
    .await
    .unwrap();
    assert_eq!(moved.mtime, v2.mtime);
    let feed = s.changes("p", &t, 0, 0).await.unwrap();
    let last = feed.events.last().expect("events");
    assert_eq!(
        (last.path.as_str(), last.mtime.as_deref()),
        ("notes/u.md", v2.mtime.as_deref())
    );

    // Without times, the commit time stands in (as for versions written
    // before times were kept).
    let plain: VersionInfo = send(s.req(Method::PUT, &s.file_url("p", "plain.md"), Some(&t)).body("x"))
        .await
        .unwrap();
    assert_eq!(plain.mtime, None);
    let plain_head = s.read("p", &t, "plain.md", None).await.unwrap();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&plain_head.mtime).unwrap(),
        chrono::DateTime::parse_from_rfc3339(&plain.created_at).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tree_listing_prefix_recursion_and_cursor() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let empty = s.tree("p", &t, &[]).await.unwrap();
    assert!(empty.entries.is_empty());
    assert_eq!(empty.cursor, 0);

    s.commit("p", &t, "docs/a.md", None, b"a").await.unwrap();
    s.commit("p", &t, "docs/sub/b.md", None, b"bb").await.unwrap();
    s.commit("p", &t, "top.txt", None, b"top").await.unwrap();

    let paths = |l: &TreeListing| l.entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
    let all = s.tree("p", &t, &[]).await.unwrap();
    assert_eq!(
        paths(&all),
        ["docs", "docs/a.md", "docs/sub", "docs/sub/b.md", "top.txt"]
    );
    let b = all.entries.iter().find(|e| e.path == "docs/sub/b.md").unwrap();
    assert_eq!(
        (b.kind, b.size, b.version, &b.hash),
        (NodeKind::File, 2, 1, &BlobHash::of(b"bb"))
    );
    assert_eq!(b.mode, 0o644);
    assert_eq!(
        all.entries.iter().find(|e| e.path == "docs").unwrap().kind,
        NodeKind::Dir
    );

    let top = s.tree("p", &t, &[("recursive", "false")]).await.unwrap();
    assert_eq!(paths(&top), ["docs", "top.txt"]);
    let docs = s.tree("p", &t, &[("prefix", "docs")]).await.unwrap();
    assert_eq!(paths(&docs), ["docs/a.md", "docs/sub", "docs/sub/b.md"]);
    let docs_flat = s
        .tree("p", &t, &[("prefix", "docs"), ("recursive", "false")])
        .await
        .unwrap();
    assert_eq!(paths(&docs_flat), ["docs/a.md", "docs/sub"]);
    assert_err(
        s.tree("p", &t, &[("prefix", "top.txt")]).await,
        StatusCode::CONFLICT,
        "not_a_directory",
    );
    assert_err(
        s.tree("p", &t, &[("prefix", "nope")]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // the cursor: applying the feed after it yields exactly the later changes
    let before = all.cursor;
    assert!(before > 0);
    let v = s.commit("p", &t, "docs/a.md", Some(1), b"a2").await.unwrap();
    let after = s.tree("p", &t, &[]).await.unwrap();
    assert_eq!(after.cursor, before + 1);
    let feed = s.changes("p", &t, before, 0).await.unwrap();
    assert_eq!(feed.events.len(), 1);
    assert_eq!(
        (feed.events[0].path.as_str(), feed.events[0].version, feed.events[0].op),
        ("docs/a.md", v.version, VersionOp::Write)
    );
    assert_eq!(feed.cursor, after.cursor);
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_put_get_head() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let other = s.project_with_token("q").await;
    let bytes = b"hello blobs\n".to_vec();
    let hash = BlobHash::of(&bytes);
    let url = s.purl("p", &format!("/blobs/{hash}"));

    let (status, receipt) = s.put_blob("p", &t, &hash, bytes.clone()).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert!(receipt.created);
    assert_eq!((receipt.hash.clone(), receipt.size), (hash.clone(), bytes.len() as u64));
    let (status, receipt) = s.put_blob("p", &t, &hash, bytes.clone()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(!receipt.created);

    let resp = s.get(&url, &t).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[HEADER_HASH], hash.as_str());
    assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let head = s.req(Method::HEAD, &url, Some(&t)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[reqwest::header::CONTENT_LENGTH],
        bytes.len().to_string().as_str()
    );
    assert!(head.bytes().await.unwrap().is_empty());

    let unknown = BlobHash::of(b"never uploaded");
    let missing = s
        .req(Method::HEAD, &s.purl("p", &format!("/blobs/{unknown}")), Some(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_err(
        s.get_blob("p", &t, unknown.as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // another project cannot read p's blob by guessing its hash
    assert_err(
        s.get_blob("q", &other, hash.as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // ... until it uploads the same bytes itself; the receipt says "created"
    // (new to q) and so does not reveal that p stored them already
    let (status, receipt): (_, BlobReceipt) = send_with_status(
        s.req(Method::PUT, &s.purl("q", &format!("/blobs/{hash}")), Some(&other))
            .body(bytes.clone()),
    )
    .await
    .unwrap();
    assert_eq!((status, receipt.created), (StatusCode::CREATED, true));
    assert_eq!(s.get_blob("q", &other, hash.as_str()).await.unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_checkout_and_one_call_put() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let url = s.file_url("p", "notes/plan.md");

    // PUT without a base version creates the file (and its parent directory)
    let v1: VersionInfo = send(
        s.req(Method::PUT, &url, Some(&t))
            .header(HEADER_AGENT, "pipeline-1")
            .body("v1\n"),
    )
    .await
    .unwrap();
    assert_eq!(
        (v1.version, v1.op, v1.status, v1.parent),
        (1, VersionOp::Create, VersionStatus::Clean, None)
    );
    assert_eq!(v1.agent_id.as_deref(), Some("pipeline-1"));
    assert_eq!(v1.hash, BlobHash::of(b"v1\n"));
    let dir = s.tree("p", &t, &[]).await.unwrap();
    assert_eq!(
        dir.entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind))
            .collect::<Vec<_>>(),
        [("notes", NodeKind::Dir), ("notes/plan.md", NodeKind::File)]
    );

    // PUT with the head as base version: a clean write
    let v2: VersionInfo = send(
        s.req(Method::PUT, &url, Some(&t))
            .header(HEADER_BASE_VERSION, "1")
            .header(HEADER_MESSAGE, "second")
            .body("v2\n"),
    )
    .await
    .unwrap();
    assert_eq!(
        (v2.version, v2.op, v2.status, v2.parent),
        (2, VersionOp::Write, VersionStatus::Clean, Some(1))
    );
    assert_eq!(v2.message.as_deref(), Some("second"));
    assert_eq!(v2.node, v1.node);
    // PUT without a base version overwrites whatever the head is now
    let v3: VersionInfo = send(s.req(Method::PUT, &url, Some(&t)).body("v3\n")).await.unwrap();
    assert_eq!((v3.version, v3.status), (3, VersionStatus::Clean));
    // a non-numeric base version header is a 400
    expect_error(
        s.req(Method::PUT, &url, Some(&t))
            .header(HEADER_BASE_VERSION, "three")
            .body("x"),
        StatusCode::BAD_REQUEST,
        "invalid_header",
    )
    .await;

    // GET: the head with its headers, or any version with ?version=N
    let head = s.read("p", &t, "notes/plan.md", None).await.unwrap();
    assert_eq!(head.bytes, b"v3\n");
    assert_eq!(
        (head.version, head.node, head.hash.as_str(), head.status.as_str()),
        (3, v1.node, v3.hash.as_str(), "clean")
    );
    for (n, want) in [(1, "v1\n"), (2, "v2\n"), (3, "v3\n")] {
        let old = s.read("p", &t, "notes/plan.md", Some(n)).await.unwrap();
        assert_eq!((old.bytes.as_slice(), old.version), (want.as_bytes(), n));
        assert_eq!(old.hash, BlobHash::of(want.as_bytes()).to_string());
    }
    assert_err(
        s.read("p", &t, "notes/plan.md", Some(9)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_err(
        s.read("p", &t, "notes/none.md", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_err(
        s.read("p", &t, "notes", None).await,
        StatusCode::CONFLICT,
        "is_a_directory",
    );
    // A PUT the commit refuses (onto a directory) leaves no readable blob behind.
    let refused = b"meant for a directory".to_vec();
    expect_error(
        s.req(Method::PUT, &s.purl("p", "/files/notes"), Some(&t))
            .body(refused.clone()),
        StatusCode::CONFLICT,
        "is_a_directory",
    )
    .await;
    assert_err(
        s.get_blob("p", &t, BlobHash::of(&refused).as_str()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(s.history("p", &t, "notes/plan.md").await.len(), 3);
}
