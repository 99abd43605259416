//! mkdir, rename and delete; history and rollback.

use super::*;

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
