//! Commits: create, update, idempotent retries.

use super::*;

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
