//! Integration tests of `contextfs serve` through its REST API: every route,
//! merges, concurrent writers, crash safety and bad input.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use contextfs::api::*;
use contextfs::model::BlobHash;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// 1. Every route with a realistic flow
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn health_whoami_projects_and_tokens() {
    let s = TestServer::start().await;

    // health needs no token
    let health: Health = send(s.http.get(s.url("/health"))).await.expect("health");
    assert_eq!(health.status, "ok");
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));

    let me: WhoAmI = send(s.get(&s.url("/whoami"), &s.admin)).await.expect("whoami admin");
    assert!(me.admin);
    assert_eq!(me.project, None);
    assert_eq!(me.access, Access::ReadWrite);
    assert_eq!(me.token_id, "admin");

    // projects: create (201), duplicate (409 exists), bad name (400), list, get
    let alpha = s.create_project("alpha").await;
    assert_eq!(alpha.cursor, 0);
    s.create_project("beta").await;
    expect_error(
        s.post(&s.url("/projects"), &s.admin, &json!({"name": "alpha"})),
        StatusCode::CONFLICT,
        "exists",
    )
    .await;
    expect_error(
        s.post(&s.url("/projects"), &s.admin, &json!({"name": "Bad Name"})),
        StatusCode::BAD_REQUEST,
        "invalid_name",
    )
    .await;
    let list: Vec<ProjectInfo> = send(s.get(&s.url("/projects"), &s.admin)).await.unwrap();
    assert_eq!(
        list.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    let got: ProjectInfo = send(s.get(&s.purl("alpha", ""), &s.admin)).await.unwrap();
    assert_eq!(
        (got.name.as_str(), got.created_at.as_str()),
        ("alpha", alpha.created_at.as_str())
    );
    expect_error(
        s.get(&s.purl("gamma", ""), &s.admin),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // tokens: create (201), whoami as the token, list, revoke, revoked -> 401
    let rw = s.token("alpha", Access::ReadWrite).await;
    let ro = s.token("alpha", Access::Read).await;
    assert!(rw.token.starts_with("cfs_"));
    assert_ne!(rw.token, ro.token);
    assert!(!rw.info.revoked);
    let me: WhoAmI = send(s.get(&s.url("/whoami"), &ro.token)).await.unwrap();
    assert_eq!(
        (me.project.as_deref(), me.access, me.admin, me.token_id.as_str()),
        (Some("alpha"), Access::Read, false, ro.info.id.as_str())
    );

    // a project token sees only its own project
    let list: Vec<ProjectInfo> = send(s.get(&s.url("/projects"), &rw.token)).await.unwrap();
    assert_eq!(list.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["alpha"]);
    // only the admin manages tokens and projects
    expect_error(
        s.get(&s.purl("alpha", "/tokens"), &rw.token),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        s.post(&s.url("/projects"), &rw.token, &json!({"name": "mine"})),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        s.req(
            Method::DELETE,
            &s.url(&format!("/tokens/{}", ro.info.id)),
            Some(&rw.token),
        ),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let tokens: Vec<TokenInfo> = send(s.get(&s.purl("alpha", "/tokens"), &s.admin)).await.unwrap();
    let ids: Vec<&str> = tokens.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(tokens.len(), 2);
    assert!(ids.contains(&rw.info.id.as_str()) && ids.contains(&ro.info.id.as_str()));
    assert!(tokens.iter().all(|t| !t.revoked && t.project == "alpha"));
    assert!(
        !serde_json::to_string(&tokens).unwrap().contains(&rw.token),
        "token list must not leak secrets"
    );

    let revoke = || {
        s.req(
            Method::DELETE,
            &s.url(&format!("/tokens/{}", rw.info.id)),
            Some(&s.admin),
        )
        .send()
    };
    assert_eq!(revoke().await.unwrap().status(), StatusCode::NO_CONTENT);
    let err = expect_error(
        s.get(&s.url("/whoami"), &rw.token),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert!(err.message.contains("revoked"), "{err:?}");
    expect_error(
        s.get(&s.purl("alpha", "/tree"), &rw.token),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    // Revoking again changes nothing and records nothing new.
    assert_eq!(revoke().await.unwrap().status(), StatusCode::NO_CONTENT);
    let audit: AuditPage = send(s.get(&s.purl("alpha", "/audit"), &s.admin)).await.unwrap();
    let revokes = audit
        .entries
        .iter()
        .filter(|e| e.action == "revoke_token" && e.detail.as_deref() == Some(rw.info.id.as_str()))
        .count();
    assert_eq!(revokes, 1, "{:?}", audit.entries);
    let tokens: Vec<TokenInfo> = send(s.get(&s.purl("alpha", "/tokens"), &s.admin)).await.unwrap();
    assert!(tokens.iter().find(|t| t.id == rw.info.id).unwrap().revoked);
    assert!(!tokens.iter().find(|t| t.id == ro.info.id).unwrap().revoked);
    // the other token still works
    send::<WhoAmI>(s.get(&s.url("/whoami"), &ro.token))
        .await
        .expect("unrevoked token still works");
    expect_error(
        s.req(Method::DELETE, &s.url("/tokens/tok_nonexistent"), Some(&s.admin)),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

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

#[tokio::test(flavor = "multi_thread")]
async fn commit_create_update_and_idempotent_retry() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;

    let hash1 = s.upload("p", &t, b"first\n").await;
    // create: base_version null
    let req = json!({"path": "a.md", "base_version": null, "hash": hash1, "agent_id": "agent-a", "message": "create"});
    let v1: VersionInfo = send(s.post(&s.purl("p", "/commit"), &t, &req)).await.unwrap();
    assert_eq!(
        (v1.version, v1.op, v1.status, v1.parent, v1.deleted),
        (1, VersionOp::Create, VersionStatus::Clean, None, false)
    );
    assert_eq!(
        (v1.path.as_str(), v1.kind, v1.mode, v1.size),
        ("a.md", NodeKind::File, 0o644, 6)
    );
    assert_eq!(
        (v1.agent_id.as_deref(), v1.message.as_deref()),
        (Some("agent-a"), Some("create"))
    );
    // committing exactly what the head already holds writes nothing
    let same = s
        .commit_req("p", &t, &commit_request("a.md", Some(1), hash1.clone()))
        .await
        .unwrap();
    assert_eq!(same.version, 1, "re-committing the head's bytes writes nothing");

    // update with base == head: clean
    let v2 = s.commit("p", &t, "a.md", Some(1), b"second\n").await.unwrap();
    assert_eq!(
        (v2.version, v2.status, v2.op, v2.parent),
        (2, VersionStatus::Clean, VersionOp::Write, Some(1))
    );
    assert_eq!(s.read_bytes("p", &t, "a.md").await, b"second\n");

    // mode change travels with the commit
    let hash3 = s.upload("p", &t, b"#!/bin/sh\n").await;
    let mut req3 = commit_request("a.md", Some(2), hash3.clone());
    req3.mode = Some(0o755);
    req3.idempotency_key = Some("retry-key-1".into());
    let v3 = s.commit_req("p", &t, &req3).await.unwrap();
    assert_eq!((v3.version, v3.mode), (3, 0o755));
    // the retry (e.g. after a lost response) returns the same version, writes nothing
    let again = s.commit_req("p", &t, &req3).await.unwrap();
    assert_eq!(again, v3);
    // even after someone else moved the file on: without the key this stale
    // commit would be merged into a fifth version
    let v4 = s
        .commit("p", &t, "a.md", Some(3), b"#!/bin/sh\necho other writer\n")
        .await
        .unwrap();
    assert_eq!(v4.version, 4);
    let cursor = s.snapshot("p").await.0;
    let again = s.commit_req("p", &t, &req3).await.unwrap();
    assert_eq!(again, v3);
    assert_eq!(
        s.snapshot("p").await.0,
        cursor,
        "a retried commit must not move the cursor"
    );
    let hist = s.history("p", &t, "a.md").await;
    assert_eq!(hist.iter().map(|v| v.version).collect::<Vec<_>>(), [4, 3, 2, 1]);
    let co = s.read("p", &t, "a.md", None).await.unwrap();
    assert_eq!(
        (co.version, co.bytes.as_slice()),
        (4, b"#!/bin/sh\necho other writer\n".as_slice())
    );
    assert_eq!(s.read("p", &t, "a.md", Some(3)).await.unwrap().bytes, b"#!/bin/sh\n");
    // a directory kind cannot be committed
    let mut dir = commit_request("d", None, hash3);
    dir.kind = Some(NodeKind::Dir);
    assert_err(
        s.commit_req("p", &t, &dir).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mkdir_rename_and_delete() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let mkdir = |path: &str| s.post(&s.purl("p", "/mkdir"), &t, &json!({"path": path}));

    // mkdir creates parents: 201, then 200 for the existing directory
    let (status, made): (_, VersionInfo) = send_with_status(mkdir("a/b/c")).await.unwrap();
    assert_eq!(
        (status, made.kind, made.op, made.path.as_str()),
        (StatusCode::CREATED, NodeKind::Dir, VersionOp::Mkdir, "a/b/c")
    );
    let (status, again): (_, VersionInfo) = send_with_status(mkdir("a/b/c")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, made);
    let tree = s.tree("p", &t, &[]).await.unwrap();
    assert_eq!(
        tree.entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind))
            .collect::<Vec<_>>(),
        [("a", NodeKind::Dir), ("a/b", NodeKind::Dir), ("a/b/c", NodeKind::Dir)]
    );
    s.commit("p", &t, "file.txt", None, b"f").await.unwrap();
    expect_error(mkdir("file.txt/sub"), StatusCode::CONFLICT, "not_a_directory").await;

    // rename a file: the node id survives and its history continues
    let rename = |body: Value| s.post(&s.purl("p", "/rename"), &t, &body);
    let x1 = s.commit("p", &t, "notes/x.md", None, b"x one\n").await.unwrap();
    s.commit("p", &t, "notes/x.md", Some(1), b"x two\n").await.unwrap();
    let moved: VersionInfo = send(rename(
        json!({"from": "notes/x.md", "to": "notes/y.md", "agent_id": "mover"}),
    ))
    .await
    .unwrap();
    assert_eq!(
        (moved.node, moved.version, moved.op, moved.path.as_str()),
        (x1.node, 3, VersionOp::Rename, "notes/y.md")
    );
    assert_eq!(moved.hash, BlobHash::of(b"x two\n"));
    assert_err(
        s.read("p", &t, "notes/x.md", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let y = s.read("p", &t, "notes/y.md", None).await.unwrap();
    assert_eq!(
        (y.bytes.as_slice(), y.node, y.version),
        (b"x two\n".as_slice(), x1.node, 3)
    );
    let hist = s.history("p", &t, "notes/y.md").await;
    assert_eq!(
        hist.iter().map(|v| (v.version, v.node)).collect::<Vec<_>>(),
        [(3, x1.node), (2, x1.node), (1, x1.node)]
    );
    assert_eq!(s.read("p", &t, "notes/y.md", Some(1)).await.unwrap().bytes, b"x one\n");
    let v4 = s.commit("p", &t, "notes/y.md", Some(3), b"y four\n").await.unwrap();
    assert_eq!((v4.node, v4.version), (x1.node, 4));

    // rename onto an existing file: 409 `exists` without replace, nothing changes
    let z = s.commit("p", &t, "notes/z.md", None, b"zzz\n").await.unwrap();
    let before = s.snapshot("p").await;
    expect_error(
        rename(json!({"from": "notes/y.md", "to": "notes/z.md"})),
        StatusCode::CONFLICT,
        "exists",
    )
    .await;
    assert_eq!(s.snapshot("p").await, before);
    assert_eq!(s.read_bytes("p", &t, "notes/z.md").await, b"zzz\n");
    // with replace=true the target is tombstoned and the source takes its path
    let replaced: VersionInfo = send(rename(
        json!({"from": "notes/y.md", "to": "notes/z.md", "replace": true}),
    ))
    .await
    .unwrap();
    assert_eq!((replaced.node, replaced.path.as_str()), (x1.node, "notes/z.md"));
    let zz = s.read("p", &t, "notes/z.md", None).await.unwrap();
    assert_eq!((zz.bytes.as_slice(), zz.node), (b"y four\n".as_slice(), x1.node));
    let feed = s.changes("p", &t, before.0, 0).await.unwrap();
    let tomb = feed
        .events
        .iter()
        .find(|e| e.node == z.node)
        .expect("the replaced node has a change event");
    assert!(tomb.deleted);
    assert_eq!((tomb.op, tomb.version), (VersionOp::Delete, 2));

    // rename a directory: its children move along, keeping their ids
    let c1 = s.commit("p", &t, "dir1/c1.md", None, b"c1").await.unwrap();
    let c2 = s.commit("p", &t, "dir1/sub/c2.md", None, b"c2").await.unwrap();
    let d: VersionInfo = send(rename(json!({"from": "dir1", "to": "moved/dir2"}))).await.unwrap();
    assert_eq!((d.kind, d.path.as_str()), (NodeKind::Dir, "moved/dir2"));
    let under = s.tree("p", &t, &[("prefix", "moved/dir2")]).await.unwrap();
    assert_eq!(
        under
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.id))
            .filter(|(p, _)| p.ends_with(".md"))
            .collect::<Vec<_>>(),
        [("moved/dir2/c1.md", c1.node), ("moved/dir2/sub/c2.md", c2.node)]
    );
    assert_err(
        s.tree("p", &t, &[("prefix", "dir1")]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(s.read_bytes("p", &t, "moved/dir2/sub/c2.md").await, b"c2");
    let c2v2 = s
        .commit("p", &t, "moved/dir2/sub/c2.md", Some(1), b"c2 again")
        .await
        .unwrap();
    assert_eq!((c2v2.node, c2v2.version), (c2.node, 2));
    expect_error(
        rename(json!({"from": "moved", "to": "moved/dir2/inside"})),
        StatusCode::CONFLICT,
        "invalid_rename",
    )
    .await;
    expect_error(
        rename(json!({"from": "nope.md", "to": "other.md"})),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // delete a file: a tombstone version; reads 404; history keeps everything
    let del = |body: Value| s.post(&s.purl("p", "/delete"), &t, &body);
    let gone: DeleteResponse = send(del(json!({"path": "file.txt"}))).await.unwrap();
    assert_eq!(gone.deleted.len(), 1);
    let tomb = &gone.deleted[0];
    assert_eq!(
        (tomb.path.as_str(), tomb.deleted, tomb.op, tomb.version),
        ("file.txt", true, VersionOp::Delete, 2)
    );
    assert_err(
        s.read("p", &t, "file.txt", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(s.read("p", &t, "file.txt", Some(1)).await.unwrap().bytes, b"f");
    assert!(s
        .tree("p", &t, &[])
        .await
        .unwrap()
        .entries
        .iter()
        .all(|e| e.path != "file.txt"));
    assert_eq!(
        s.history("p", &t, "file.txt")
            .await
            .iter()
            .map(|v| v.deleted)
            .collect::<Vec<_>>(),
        [true, false]
    );
    expect_error(del(json!({"path": "file.txt"})), StatusCode::NOT_FOUND, "not_found").await;

    // a non-empty directory needs recursive=true
    let before = s.snapshot("p").await;
    expect_error(del(json!({"path": "moved"})), StatusCode::CONFLICT, "not_empty").await;
    assert_eq!(s.snapshot("p").await, before);
    let gone: DeleteResponse = send(del(json!({"path": "moved", "recursive": true}))).await.unwrap();
    assert_eq!(gone.deleted[0].path, "moved", "the named path comes first");
    let mut paths: Vec<&str> = gone.deleted.iter().map(|v| v.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "moved",
            "moved/dir2",
            "moved/dir2/c1.md",
            "moved/dir2/sub",
            "moved/dir2/sub/c2.md"
        ]
    );
    assert!(gone.deleted.iter().all(|v| v.deleted && v.op == VersionOp::Delete));
    let left = s.tree("p", &t, &[]).await.unwrap();
    assert!(
        left.entries.iter().all(|e| !e.path.starts_with("moved")),
        "{:?}",
        left.entries
    );
    // an empty directory goes without recursive
    let gone: DeleteResponse = send(del(json!({"path": "a/b/c"}))).await.unwrap();
    assert_eq!(gone.deleted.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn history_paging_and_rollback() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let texts = ["one\n", "two\n", "three\n", "four\n", "five\n"];
    let mut hashes = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let base = if i == 0 { None } else { Some(i as i64) };
        let v = s.commit("p", &t, "h.md", base, text.as_bytes()).await.unwrap();
        assert_eq!(v.version, i as i64 + 1);
        hashes.push(v.hash);
    }

    // newest first, paged by before/next_before
    let page = s.history_page("p", &t, "h.md", None, Some(2)).await.unwrap();
    assert_eq!(page.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [5, 4]);
    assert_eq!(page.next_before, Some(4));
    assert_eq!(page.path, "h.md");
    let page = s
        .history_page("p", &t, "h.md", page.next_before, Some(2))
        .await
        .unwrap();
    assert_eq!(page.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [3, 2]);
    assert_eq!(page.next_before, Some(2));
    let page = s
        .history_page("p", &t, "h.md", page.next_before, Some(2))
        .await
        .unwrap();
    assert_eq!(page.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
    assert_eq!(page.next_before, None);
    let full = s.history_page("p", &t, "h.md", None, None).await.unwrap();
    assert_eq!(
        full.versions.iter().map(|v| &v.hash).collect::<Vec<_>>(),
        hashes.iter().rev().collect::<Vec<_>>()
    );
    assert_eq!(full.next_before, None);
    assert!(full.versions.windows(2).all(|w| w[0].parent == Some(w[1].version)));
    assert_err(
        s.history_page("p", &t, "nothing.md", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // rollback: a new version whose hash equals the old one
    let rollback = |path: &str, version: i64| {
        s.post(
            &s.purl("p", "/rollback"),
            &t,
            &json!({"path": path, "version": version, "agent_id": "undo"}),
        )
    };
    let rb: VersionInfo = send(rollback("h.md", 2)).await.unwrap();
    assert_eq!(
        (rb.version, rb.op, rb.parent, &rb.hash),
        (6, VersionOp::Rollback, Some(5), &hashes[1])
    );
    assert_eq!(s.read_bytes("p", &t, "h.md").await, b"two\n");
    expect_error(rollback("h.md", 99), StatusCode::NOT_FOUND, "not_found").await;

    // restoring a deleted file by rolling back to a pre-delete version
    let gone: DeleteResponse = send(s.post(&s.purl("p", "/delete"), &t, &json!({"path": "h.md"})))
        .await
        .unwrap();
    assert_eq!(gone.deleted[0].version, 7);
    assert_err(s.read("p", &t, "h.md", None).await, StatusCode::NOT_FOUND, "not_found");
    expect_error(rollback("h.md", 7), StatusCode::BAD_REQUEST, "invalid_field").await;
    let restored: VersionInfo = send(rollback("h.md", 4)).await.unwrap();
    assert_eq!(
        (restored.version, restored.deleted, &restored.hash),
        (8, false, &hashes[3])
    );
    let co = s.read("p", &t, "h.md", None).await.unwrap();
    assert_eq!(
        (co.bytes.as_slice(), co.version, co.node),
        (b"four\n".as_slice(), 8, restored.node)
    );
    assert!(s
        .tree("p", &t, &[])
        .await
        .unwrap()
        .entries
        .iter()
        .any(|e| e.path == "h.md" && e.version == 8));
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_feed_and_long_poll() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let a = s.commit("p", &t, "a.md", None, b"a").await.unwrap();
    let b = s.commit("p", &t, "b.md", None, b"b").await.unwrap();

    let all = s.changes("p", &t, 0, 0).await.unwrap();
    assert_eq!(
        all.events
            .iter()
            .map(|e| (e.path.as_str(), e.version, e.op))
            .collect::<Vec<_>>(),
        [("a.md", 1, VersionOp::Create), ("b.md", 1, VersionOp::Create)]
    );
    assert_eq!((all.events[0].node, all.events[1].node), (a.node, b.node));
    assert!(!all.more);
    let cursor = all.cursor;
    assert_eq!(cursor, all.events[1].seq);
    let limited: ChangesPage = send(
        s.get(&s.purl("p", "/changes"), &t)
            .query(&[("since", "0"), ("limit", "1")]),
    )
    .await
    .unwrap();
    assert_eq!(
        (limited.events.len(), limited.more, limited.cursor),
        (1, true, all.events[0].seq)
    );
    // a caught-up reader with no timeout gets nothing, cursor unchanged
    let none = s.changes("p", &t, cursor, 0).await.unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.cursor, cursor);
    // a short long-poll with nothing new times out empty-handed
    let none = s.changes("p", &t, cursor, 200).await.unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.cursor, cursor);

    // a long-poll started before a commit returns with that commit's event
    let poller = s.with_own_client();
    let mut poll = tokio::spawn(async move { poller.changes("p", &poller.admin, cursor, 5000).await });
    // the poll has nothing to return yet: it must still be waiting
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut poll)
            .await
            .is_err(),
        "the long-poll returned before any change"
    );
    let v = s.commit("p", &t, "a.md", Some(1), b"a2").await.unwrap();
    let page = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("long-poll did not finish")
        .expect("poll task")
        .expect("poll response");
    // the timeout path returns no events, so an event here means it was woken
    assert_eq!(
        page.events.len(),
        1,
        "the long-poll must return the commit, not time out: {page:?}"
    );
    let ev = &page.events[0];
    assert_eq!(
        (ev.node, ev.version, ev.path.as_str(), &ev.hash, ev.deleted),
        (a.node, v.version, "a.md", &v.hash, false)
    );
    assert_eq!(page.cursor, ev.seq);
    assert_eq!(s.snapshot("p").await.0, page.cursor);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_records_writes_with_actor_and_agent() {
    let s = TestServer::start().await;
    s.create_project("p").await;
    let tok = s.token("p", Access::ReadWrite).await;
    let t = tok.token.clone();
    let hash = s.upload("p", &t, b"audited").await;
    let mut req = commit_request("log.md", None, hash);
    req.agent_id = Some("agent-7".into());
    let v1 = s.commit_req("p", &t, &req).await.unwrap();
    send::<VersionInfo>(
        s.req(Method::PUT, &s.file_url("p", "log.md"), Some(&t))
            .header(HEADER_AGENT, "agent-8")
            .body("second"),
    )
    .await
    .unwrap();
    send::<DeleteResponse>(s.post(
        &s.purl("p", "/delete"),
        &s.admin,
        &json!({"path": "log.md", "agent_id": "janitor"}),
    ))
    .await
    .unwrap();

    let page: AuditPage = send(s.get(&s.purl("p", "/audit"), &t)).await.unwrap();
    let e = &page.entries;
    assert!(e.windows(2).all(|w| w[0].seq < w[1].seq));
    let create_token = e
        .iter()
        .find(|a| a.action == "create_token")
        .expect("token creation is audited");
    assert_eq!(
        (create_token.actor.as_str(), create_token.detail.as_deref()),
        ("admin", Some(tok.info.id.as_str()))
    );
    let writes: Vec<_> = e.iter().filter(|a| a.path.as_deref() == Some("log.md")).collect();
    let got: Vec<_> = writes
        .iter()
        .map(|a| (a.action.as_str(), a.actor.as_str(), a.agent_id.as_deref(), a.version))
        .collect();
    assert_eq!(
        got,
        [
            ("create", tok.info.id.as_str(), Some("agent-7"), Some(1)),
            ("write", tok.info.id.as_str(), Some("agent-8"), Some(2)),
            ("delete", "admin", Some("janitor"), Some(3)),
        ]
    );
    assert_eq!(writes[0].status.as_deref(), Some("clean"));
    assert_eq!(v1.author, tok.info.id);
    // paging with since / next_since
    let first: AuditPage = send(s.get(&s.purl("p", "/audit"), &t).query(&[("limit", "1")]))
        .await
        .unwrap();
    assert_eq!(first.entries.len(), 1);
    let since = first.next_since.expect("more entries follow");
    let rest: AuditPage = send(s.get(&s.purl("p", "/audit"), &t).query(&[("since", since)]))
        .await
        .unwrap();
    assert_eq!(rest.entries.len(), e.len() - 1);
    assert_eq!(rest.next_since, None);
}

fn skill_md(name: &str, description: &str) -> Vec<u8> {
    format!("---\nname: {name}\ndescription: {description}\n---\n# {name}\n\nUse it well.\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn skills_publish_list_and_read() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let put_skill_blob = |token: &str, bytes: &[u8]| {
        s.req(
            Method::PUT,
            &s.url(&format!("/skills/blobs/{}", BlobHash::of(bytes))),
            Some(token),
        )
        .body(bytes.to_vec())
    };
    let file = |path: &str, bytes: &[u8]| json!({"path": path, "hash": BlobHash::of(bytes), "size": bytes.len()});
    let pdf = skill_md("pdf", "Read and fill PDF forms");
    let script = b"#!/bin/sh\necho extracting\n".to_vec();
    let notes = skill_md("notes", "Keep meeting notes tidy");
    for bytes in [&pdf, &script, &notes] {
        let (status, receipt): (_, BlobReceipt) = send_with_status(put_skill_blob(&s.admin, bytes)).await.unwrap();
        assert_eq!((status, receipt.created), (StatusCode::CREATED, true));
    }
    // a project token can neither upload skill blobs nor publish
    expect_error(put_skill_blob(&t, b"sneaky"), StatusCode::FORBIDDEN, "forbidden").await;
    let valid = json!({"files": [file("pdf/SKILL.md", &pdf), {"path": "pdf/scripts/extract.sh", "hash": BlobHash::of(&script), "size": script.len(), "mode": 0o755}, file("notes/SKILL.md", &notes)]});
    expect_error(
        s.post(&s.url("/skills"), &t, &valid),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let empty: SkillsListing = send(s.get(&s.url("/skills"), &t)).await.unwrap();
    assert!(empty.skills.is_empty() && empty.published_at.is_none());

    let listing: SkillsListing = send(s.post(&s.url("/skills"), &s.admin, &valid)).await.unwrap();
    assert!(listing.published_at.is_some());
    let names: Vec<(&str, &str)> = listing
        .skills
        .iter()
        .map(|k| (k.name.as_str(), k.description.as_str()))
        .collect();
    assert_eq!(
        names,
        [("notes", "Keep meeting notes tidy"), ("pdf", "Read and fill PDF forms")]
    );
    let pdf_files: Vec<(&str, u32)> = listing.skills[1]
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.mode))
        .collect();
    assert_eq!(pdf_files, [("pdf/SKILL.md", 0o644), ("pdf/scripts/extract.sh", 0o755)]);

    // a project token lists them and reads their blobs via both routes
    let seen: SkillsListing = send(s.get(&s.url("/skills"), &t)).await.unwrap();
    assert_eq!(seen.skills, listing.skills);
    let resp = s
        .get(&s.url(&format!("/skills/blobs/{}", BlobHash::of(&script))), &t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), script.as_slice());
    assert_eq!(s.get_blob("p", &t, BlobHash::of(&pdf).as_str()).await.unwrap(), pdf);
    // a blob that is not part of the published skills is not served there
    let stray = s.upload("p", &t, b"project-only").await;
    expect_error(
        s.get(&s.url(&format!("/skills/blobs/{stray}")), &t),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // SKILL.md missing: 400 naming the skill; nothing is replaced
    let no_manifest = json!({"files": [file("broken/README.md", &script)]});
    let err = expect_error(
        s.post(&s.url("/skills"), &s.admin, &no_manifest),
        StatusCode::BAD_REQUEST,
        "invalid_skill",
    )
    .await;
    assert!(
        err.message.contains("broken") && err.message.contains("SKILL.md"),
        "{err:?}"
    );
    // malformed front matter: 400 naming the skill and the problem
    let bad_yaml = b"---\nname: [unclosed\ndescription: x\n---\n".to_vec();
    let no_desc = b"---\nname: lazy\n---\nbody\n".to_vec();
    for bytes in [&bad_yaml, &no_desc] {
        send::<BlobReceipt>(put_skill_blob(&s.admin, bytes)).await.unwrap();
    }
    let body = json!({"files": [file("weird/SKILL.md", &bad_yaml)]});
    let err = expect_error(
        s.post(&s.url("/skills"), &s.admin, &body),
        StatusCode::BAD_REQUEST,
        "invalid_skill",
    )
    .await;
    assert!(err.message.contains("weird") && err.message.contains("YAML"), "{err:?}");
    let body = json!({"files": [file("lazy/SKILL.md", &no_desc)]});
    let err = expect_error(
        s.post(&s.url("/skills"), &s.admin, &body),
        StatusCode::BAD_REQUEST,
        "invalid_skill",
    )
    .await;
    assert!(
        err.message.contains("lazy") && err.message.contains("description"),
        "{err:?}"
    );
    // a file whose blob was never uploaded
    let body = json!({"files": [file("pdf/SKILL.md", &pdf), file("pdf/extra.txt", b"never uploaded")]});
    expect_error(
        s.post(&s.url("/skills"), &s.admin, &body),
        StatusCode::BAD_REQUEST,
        "blob_missing",
    )
    .await;
    let still: SkillsListing = send(s.get(&s.url("/skills"), &t)).await.unwrap();
    assert_eq!(
        still.skills, listing.skills,
        "failed publishes must leave the published skills alone"
    );
}

// ---------------------------------------------------------------------------
// 2. Merges through the real server
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn merge_markdown_edits_on_different_lines() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let base = "# Plan\n\n- step one\n\nmiddle text\n\n- step three\n";
    s.commit("p", &t, "plan.md", None, base.as_bytes()).await.unwrap();
    let first = base.replace("- step one", "- step one (done by A)");
    let second = base.replace("- step three", "- step three (claimed by B)");
    let v2 = s.commit("p", &t, "plan.md", Some(1), first.as_bytes()).await.unwrap();
    assert_eq!(v2.status, VersionStatus::Clean);
    let v3 = s.commit("p", &t, "plan.md", Some(1), second.as_bytes()).await.unwrap();
    assert_eq!((v3.version, v3.status, v3.parent), (3, VersionStatus::Merged, Some(2)));
    let want = "# Plan\n\n- step one (done by A)\n\nmiddle text\n\n- step three (claimed by B)\n";
    let head = s.read("p", &t, "plan.md", None).await.unwrap();
    assert_eq!(String::from_utf8(head.bytes).unwrap(), want);
    assert_eq!(
        (head.hash, head.status.as_str()),
        (BlobHash::of(want.as_bytes()).to_string(), "merged")
    );
    assert_eq!(v3.hash, BlobHash::of(want.as_bytes()));
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_json_edits_on_different_keys() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let base = json!({"name": "svc", "replicas": 1, "image": "svc:1", "env": {"LOG": "info"}});
    let bytes = |v: &Value| serde_json::to_vec_pretty(v).unwrap();
    s.commit("p", &t, "config.json", None, &bytes(&base)).await.unwrap();
    let mut a = base.clone();
    a["replicas"] = json!(3);
    let mut b = base.clone();
    b["env"]["LOG"] = json!("debug");
    b["owner"] = json!("team-b");
    assert_eq!(
        s.commit("p", &t, "config.json", Some(1), &bytes(&a))
            .await
            .unwrap()
            .status,
        VersionStatus::Clean
    );
    let v3 = s.commit("p", &t, "config.json", Some(1), &bytes(&b)).await.unwrap();
    assert_eq!(v3.status, VersionStatus::Merged);
    let merged: Value =
        serde_json::from_slice(&s.read_bytes("p", &t, "config.json").await).expect("merged file is valid JSON");
    assert_eq!(
        merged,
        json!({"name": "svc", "replicas": 3, "image": "svc:1", "env": {"LOG": "debug"}, "owner": "team-b"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn true_conflict_is_last_writer_wins_and_loser_stays_in_history() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let base = b"title\nlimit = 10\nfooter\n";
    let loser = b"title\nlimit = 20\nfooter\n";
    let winner = b"title\nlimit = 30\nfooter\n";
    s.commit("p", &t, "settings.txt", None, base).await.unwrap();
    let v2 = s.commit("p", &t, "settings.txt", Some(1), loser).await.unwrap();
    let v3 = s.commit("p", &t, "settings.txt", Some(1), winner).await.unwrap();
    assert_eq!((v3.version, v3.status, v3.parent), (3, VersionStatus::Lww, Some(2)));
    let head = s.read("p", &t, "settings.txt", None).await.unwrap();
    assert_eq!(
        (head.bytes.as_slice(), head.status.as_str(), head.version),
        (winner.as_slice(), "lww", 3)
    );
    let hist = s.history("p", &t, "settings.txt").await;
    assert_eq!(
        hist.iter().map(|v| (v.version, v.status)).collect::<Vec<_>>(),
        [
            (3, VersionStatus::Lww),
            (2, VersionStatus::Clean),
            (1, VersionStatus::Clean)
        ]
    );
    assert_eq!(hist[1].hash, v2.hash);
    let lost = s.read("p", &t, "settings.txt", Some(2)).await.unwrap();
    assert_eq!(lost.bytes, loser);
}

// ---------------------------------------------------------------------------
// 3. Sixteen concurrent writers from the same stale base
// ---------------------------------------------------------------------------

const WRITERS: usize = 16;

fn md_base() -> String {
    let mut s = String::from("# Shared board\n");
    for i in 0..WRITERS {
        s.push_str(&format!("<!-- section {i} -->\nslot {i}: open\n"));
    }
    s.push_str("<!-- end -->\n");
    s
}

fn md_edit(i: usize) -> String {
    md_base().replace(
        &format!("slot {i}: open\n"),
        &format!("slot {i}: taken by writer {i}\n"),
    )
}

fn json_base() -> serde_json::Map<String, Value> {
    (0..WRITERS).map(|i| (format!("key{i:02}"), json!("base"))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_concurrent_writers_merge_every_edit() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    s.commit("p", &t, "board.md", None, md_base().as_bytes()).await.unwrap();
    let json_bytes = |m: &serde_json::Map<String, Value>| serde_json::to_vec_pretty(m).unwrap();
    s.commit("p", &t, "state.json", None, &json_bytes(&json_base()))
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let api = s.with_own_client();
        let t = t.clone();
        let mut mine = json_base();
        mine.insert(format!("key{i:02}"), json!(format!("writer {i}")));
        let json_edit = json_bytes(&mine);
        tasks.push(tokio::spawn(async move {
            let md_text = md_edit(i);
            let md = api.commit("p", &t, "board.md", Some(1), md_text.as_bytes());
            let js = api.commit("p", &t, "state.json", Some(1), &json_edit);
            let (md, js) = tokio::join!(md, js);
            (md.expect("markdown commit"), js.expect("json commit"))
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("writer task"));
    }

    for (file, versions) in [
        ("board.md", results.iter().map(|r| &r.0).collect::<Vec<_>>()),
        ("state.json", results.iter().map(|r| &r.1).collect()),
    ] {
        let mut numbers: Vec<i64> = versions.iter().map(|v| v.version).collect();
        numbers.sort();
        assert_eq!(
            numbers,
            (2..=17).collect::<Vec<_>>(),
            "{file}: every writer got its own version"
        );
        let clean = versions.iter().filter(|v| v.status == VersionStatus::Clean).count();
        let merged = versions.iter().filter(|v| v.status == VersionStatus::Merged).count();
        assert_eq!(
            (clean, merged),
            (1, WRITERS - 1),
            "{file}: the first writer is clean, all others merge"
        );
        let hist = s.history("p", &t, file).await;
        assert_eq!(
            hist.iter().map(|v| v.version).collect::<Vec<_>>(),
            (1..=17).rev().collect::<Vec<_>>(),
            "{file}: exactly 17 versions"
        );
        for v in &hist {
            let co = s.read("p", &t, file, Some(v.version)).await.unwrap();
            assert_eq!(co.version, v.version);
            assert_eq!(
                BlobHash::of(&co.bytes),
                v.hash,
                "{file} v{}: bytes hash to the version's hash",
                v.version
            );
            assert_eq!(co.bytes.len() as u64, v.size);
        }
    }

    let md = String::from_utf8(s.read_bytes("p", &t, "board.md").await).unwrap();
    let mut want = md_base();
    for i in 0..WRITERS {
        want = want.replace(
            &format!("slot {i}: open\n"),
            &format!("slot {i}: taken by writer {i}\n"),
        );
    }
    assert_eq!(md, want, "the Markdown head holds all 16 edits");
    let js: serde_json::Map<String, Value> =
        serde_json::from_slice(&s.read_bytes("p", &t, "state.json").await).expect("valid JSON");
    let want: serde_json::Map<String, Value> = (0..WRITERS)
        .map(|i| (format!("key{i:02}"), json!(format!("writer {i}"))))
        .collect();
    assert_eq!(js, want, "the JSON head holds all 16 edits");
}

// ---------------------------------------------------------------------------
// 4. Crash safety
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_keeps_every_acknowledged_commit() {
    const TASKS: usize = 4;
    const KILL_AFTER: usize = 60;
    let mut s = TestServer::start().await;
    let t = s.project_with_token("p").await;

    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let api = s.with_own_client();
        let t = t.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut heads: HashMap<String, i64> = HashMap::new();
            let mut done: Vec<(String, i64, BlobHash)> = Vec::new();
            for iter in 0..10_000usize {
                let path = format!("w{task}/file{}.txt", iter % 5);
                let base = heads.get(&path).copied();
                let bytes = format!("task {task} iteration {iter}\n")
                    .repeat(1 + iter % 50)
                    .into_bytes();
                let key = format!("t{task}-i{iter}");
                let Some(v) = api.try_commit("p", &t, &path, base, &bytes, &key).await else {
                    break;
                };
                assert_eq!(v.hash, BlobHash::of(&bytes), "own files never merge");
                heads.insert(path.clone(), v.version);
                done.push((path, v.version, v.hash));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            done
        }));
    }
    // bounded wait until enough commits were acknowledged, then pull the plug
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writers made no progress; log:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.kill_9();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.expect("writer task"));
    }
    assert!(acknowledged.len() >= KILL_AFTER);

    // restart on the same data directory: it opens cleanly (integrity check)
    s.restart().await;
    assert!(!s.log().contains("integrity"), "{}", s.log());
    let health: Health = send(s.http.get(s.url("/health"))).await.expect("health after restart");
    assert_eq!(health.status, "ok");

    for (path, version, hash) in &acknowledged {
        let co = s
            .read("p", &t, path, Some(*version))
            .await
            .unwrap_or_else(|e| panic!("acknowledged {path} v{version} is gone after kill -9: {e:?}"));
        assert_eq!((co.version, &co.hash), (*version, &hash.to_string()));
        assert_eq!(&BlobHash::of(&co.bytes), hash, "{path} v{version} bytes");
    }
    // every version of every file points at a stored, intact blob
    let tree = s.tree("p", &t, &[]).await.unwrap();
    let mut checked = 0;
    for entry in tree.entries.iter().filter(|e| e.kind == NodeKind::File) {
        let hist = s.history("p", &t, &entry.path).await;
        assert_eq!(hist.first().map(|v| v.version), Some(entry.version));
        for v in hist.iter().filter(|v| !v.deleted) {
            let bytes = s
                .get_blob("p", &t, v.hash.as_str())
                .await
                .unwrap_or_else(|e| panic!("{} v{} points at missing blob {}: {e:?}", entry.path, v.version, v.hash));
            assert_eq!(BlobHash::of(&bytes), v.hash);
            checked += 1;
        }
    }
    assert!(checked >= acknowledged.len());
    // and the server keeps working on top of what survived
    let last = tree.entries.iter().find(|e| e.kind == NodeKind::File).unwrap();
    let next = s
        .commit("p", &t, &last.path, Some(last.version), b"after the crash\n")
        .await
        .unwrap();
    assert_eq!((next.version, next.status), (last.version + 1, VersionStatus::Clean));
    // a graceful restart keeps that too
    s.restart().await;
    assert_eq!(s.read_bytes("p", &t, &last.path).await, b"after the crash\n");
}

// ---------------------------------------------------------------------------
// 5. Bad input: status, code, and nothing changed
// ---------------------------------------------------------------------------

/// A small project with one file, for the bad-input tests.
async fn seeded(s: &TestServer) -> (String, VersionInfo) {
    let t = s.project_with_token("p").await;
    let v = s.commit("p", &t, "docs/keep.md", None, b"keep me\n").await.unwrap();
    (t, v)
}

/// Commits `hash` to `path` of project `p` on top of `base`, which the server
/// must refuse with 409 `base_version_unknown`; the error.
async fn refused_as_unknown_base(s: &TestServer, token: &str, path: &str, base: i64, hash: &BlobHash) -> ApiErr {
    let result = s
        .commit_req("p", token, &commit_request(path, Some(base), hash.clone()))
        .await;
    match result {
        Ok(v) => panic!("a commit to {path} on base {base} succeeded: {v:?}"),
        Err(e) => {
            assert_eq!(
                (e.status, e.code.as_str()),
                (StatusCode::CONFLICT, "base_version_unknown"),
                "a commit to {path} on base {base}: {e:?}"
            );
            e
        }
    }
}

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
