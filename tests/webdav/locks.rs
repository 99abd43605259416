//! LOCK and UNLOCK: a locked file takes writes only with its token, on one
//! instance (SQLite, or PostgreSQL under `scripts/test`) and across two
//! instances sharing one PostgreSQL database.

use super::*;

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

/// The `Lock-Token` of a LOCK answer, with its angle brackets.
pub(super) fn lock_token(headers: &HeaderMap) -> String {
    headers
        .get("lock-token")
        .expect("a Lock-Token header")
        .to_str()
        .expect("ascii")
        .to_string()
}

/// LOCKs `path` (exclusive unless `shared`, `Depth` as given) for `seconds`.
pub(super) async fn lock(
    dav: &Dav,
    path: &str,
    depth: &str,
    shared: bool,
    seconds: u64,
) -> (StatusCode, HeaderMap, String) {
    let body = if shared {
        LOCK_BODY.replace("<D:exclusive/>", "<D:shared/>")
    } else {
        LOCK_BODY.to_string()
    };
    let (status, headers, body) = dav
        .send(
            dav.req("LOCK", path)
                .header("depth", depth)
                .header("timeout", format!("Second-{seconds}"))
                .body(body),
        )
        .await;
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A PUT that sends `token` in its `If` header.
pub(super) async fn put_with(dav: &Dav, path: &str, token: &str, body: &str) -> StatusCode {
    dav.status(
        dav.req("PUT", path)
            .header("if", format!("({token})"))
            .body(body.to_string()),
    )
    .await
}

/// A LOCK refresh: no body, the lock's token in `If`, a new timeout.
async fn refresh(dav: &Dav, path: &str, token: &str, seconds: u64) -> (StatusCode, String) {
    let (status, _, body) = dav
        .send(
            dav.req("LOCK", path)
                .header("if", format!("({token})"))
                .header("timeout", format!("Second-{seconds}")),
        )
        .await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn locks_conflict_refresh_expire_and_cover_folders_deeply() {
    let (s, token) = setup().await;
    let dav = Dav::new(&s, PROJECT, &token);
    assert_eq!(dav.status(dav.req("MKCOL", "dir")).await, StatusCode::CREATED);
    dav.put("dir/a.md", b"a\n").await;
    dav.put("short.md", b"short\n").await;
    dav.put("shared.md", b"shared\n").await;

    // A second exclusive lock of a locked file: 423; two shared locks share.
    let (status, headers, _) = lock(&dav, "dir/a.md", "0", false, 600).await;
    assert_eq!(status, StatusCode::OK);
    let file_lock = lock_token(&headers);
    assert_eq!(lock(&dav, "dir/a.md", "0", false, 600).await.0, StatusCode::LOCKED);
    assert_eq!(lock(&dav, "dir/a.md", "0", true, 600).await.0, StatusCode::LOCKED);
    let (first, h1, _) = lock(&dav, "shared.md", "0", true, 600).await;
    let (second, h2, _) = lock(&dav, "shared.md", "0", true, 600).await;
    assert_eq!((first, second), (StatusCode::OK, StatusCode::OK));
    assert_ne!(lock_token(&h1), lock_token(&h2));
    assert_eq!(lock(&dav, "shared.md", "0", false, 600).await.0, StatusCode::LOCKED);
    assert_eq!(dav.put("shared.md", b"nobody\n").await.0, StatusCode::LOCKED);
    assert_eq!(
        put_with(&dav, "shared.md", &lock_token(&h2), "holder\n").await,
        StatusCode::NO_CONTENT
    );

    // A deep lock of the folder meets the file's lock; after UNLOCK it is
    // granted and covers the files inside, and a MOVE of the folder.
    assert_eq!(lock(&dav, "dir", "infinity", false, 600).await.0, StatusCode::LOCKED);
    let status = dav
        .status(dav.req("UNLOCK", "dir/a.md").header("lock-token", &file_lock))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, headers, _) = lock(&dav, "dir", "infinity", false, 600).await;
    assert_eq!(status, StatusCode::OK);
    let dir_lock = lock_token(&headers);
    assert_eq!(dav.put("dir/a.md", b"intruder\n").await.0, StatusCode::LOCKED);
    assert_eq!(dav.put("dir/new.md", b"intruder\n").await.0, StatusCode::LOCKED);
    let moved = dav
        .status(dav.req("MOVE", "dir").header("destination", dav.url("elsewhere")))
        .await;
    assert_eq!(moved, StatusCode::LOCKED);
    assert_eq!(
        put_with(&dav, "dir/a.md", &dir_lock, "mine\n").await,
        StatusCode::NO_CONTENT
    );
    // PROPFIND shows the lock on what it covers.
    let (_, props) = dav.propfind("dir/a.md", "0").await;
    assert!(
        props.contains(dir_lock.trim_matches(|c| c == '<' || c == '>')),
        "{props}"
    );

    // A lock asked for one second, refreshed to ten minutes, outlives the
    // second; one that is not refreshed expires and the file is free.
    let (status, headers, _) = lock(&dav, "short.md", "0", false, 1).await;
    assert_eq!(status, StatusCode::OK);
    let short_lock = lock_token(&headers);
    let (status, body) = refresh(&dav, "dir/a.md", &dir_lock, 600).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Second-600"), "{body}");
    // A token the path is not covered by cannot be refreshed there.
    assert_eq!(
        refresh(&dav, "short.md", &dir_lock, 600).await.0,
        StatusCode::PRECONDITION_FAILED
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(dav.put("short.md", b"free again\n").await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        refresh(&dav, "short.md", &short_lock, 600).await.0,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(dav.put("dir/a.md", b"still locked\n").await.0, StatusCode::LOCKED);

    // DELETE with the token removes the folder and its lock: the path is
    // free for anyone afterwards.
    let deleted = dav
        .status(dav.req("DELETE", "dir").header("if", format!("({dir_lock})")))
        .await;
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(dav.status(dav.req("MKCOL", "dir")).await, StatusCode::CREATED);
    assert_eq!(dav.put("dir/a.md", b"anyone\n").await.0, StatusCode::CREATED);
    assert_eq!(s.read_bytes(PROJECT, &token, "dir/a.md").await, b"anyone\n");
}

/// Two instances sharing one database and one data directory, or `None`
/// (the test then says it was skipped) without `CONTEXTFS_TEST_DATABASE`.
async fn two_instances(test: &str) -> Option<(Vec<TestServer>, tempfile::TempDir)> {
    let Some(database) = fresh_test_database().await else {
        eprintln!("{test}: skipped: set {TEST_DATABASE_ENV} to a PostgreSQL URL (scripts/test does, via scripts/pg)");
        return None;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().join("data");
    let args = vec!["--database".to_string(), database];
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(TestServer::start_on(dir.clone(), args.clone()).await);
    }
    Some((servers, data))
}

#[tokio::test(flavor = "multi_thread")]
async fn locks_are_shared_by_instances_on_one_postgresql() {
    let Some((servers, _data)) = two_instances("locks_are_shared_by_instances_on_one_postgresql").await else {
        return;
    };
    let token = servers[0].project_with_token(PROJECT).await;
    let a = Dav::new(&servers[0], PROJECT, &token);
    let b = Dav::new(&servers[1], PROJECT, &token);
    a.put("doc.md", b"v1\n").await;
    a.put("other.md", b"other\n").await;

    // Locked through A: B refuses writes without the token, and shows the lock.
    let (status, headers, _) = lock(&a, "doc.md", "0", false, 600).await;
    assert_eq!(status, StatusCode::OK);
    let held = lock_token(&headers);
    assert_eq!(b.put("doc.md", b"intruder\n").await.0, StatusCode::LOCKED);
    assert_eq!(b.status(b.req("DELETE", "doc.md")).await, StatusCode::LOCKED);
    let moved = b
        .status(b.req("MOVE", "doc.md").header("destination", b.url("moved.md")))
        .await;
    assert_eq!(moved, StatusCode::LOCKED);
    let overwrite = b
        .status(
            b.req("MOVE", "other.md")
                .header("destination", b.url("doc.md"))
                .header("overwrite", "T"),
        )
        .await;
    assert_eq!(overwrite, StatusCode::LOCKED);
    assert_eq!(lock(&b, "doc.md", "0", false, 600).await.0, StatusCode::LOCKED);
    assert_eq!(lock(&b, "", "infinity", true, 600).await.0, StatusCode::LOCKED);
    let (_, props) = b.propfind("doc.md", "0").await;
    assert!(props.contains(held.trim_matches(|c| c == '<' || c == '>')), "{props}");
    assert_eq!(s_history_len(&servers[1], &token, "doc.md").await, 1);

    // With the token, B writes; B refreshes A's lock; B's UNLOCK frees it for A.
    assert_eq!(put_with(&b, "doc.md", &held, "v2\n").await, StatusCode::NO_CONTENT);
    let (status, body) = refresh(&b, "doc.md", &held, 300).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Second-300"), "{body}");
    let status = b.status(b.req("UNLOCK", "doc.md").header("lock-token", &held)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(a.put("doc.md", b"v3\n").await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        b.status(b.req("UNLOCK", "doc.md").header("lock-token", &held)).await,
        StatusCode::CONFLICT,
        "a lock is released once"
    );

    // A lock taken through B that is not refreshed expires for A too.
    let (status, _, _) = lock(&b, "other.md", "0", false, 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a.put("other.md", b"early\n").await.0, StatusCode::LOCKED);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(a.put("other.md", b"late\n").await.0, StatusCode::NO_CONTENT);

    // Sixteen clients lock one path at once through both instances:
    // exactly one gets it, round after round.
    for round in 0..25 {
        let path = format!("race-{round}.md");
        a.put(&path, b"race\n").await;
        let attempts = (0..16).map(|i| {
            let (dav, path) = (if i % 2 == 0 { &a } else { &b }, path.clone());
            async move { lock(dav, &path, "0", false, 600).await.0 }
        });
        let statuses = futures_util::future::join_all(attempts).await;
        let granted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let refused = statuses.iter().filter(|s| **s == StatusCode::LOCKED).count();
        assert_eq!((granted, refused), (1, 15), "round {round}: {statuses:?}");
    }
    assert_eq!(servers[0].read_bytes(PROJECT, &token, "doc.md").await, b"v3\n");
}

async fn s_history_len(s: &TestServer, token: &str, path: &str) -> usize {
    s.history(PROJECT, token, path).await.len()
}
