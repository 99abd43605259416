//! Every refusal answers its status and leaves the history unchanged.

use super::*;

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

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_mkcols_of_one_folder_create_it_once() {
    // rclone's transfers each MKCOL the parent of their file, at once: one
    // makes the folder (201), the others find it made (405, RFC 4918 §9.3.1).
    let (s, token) = setup().await;
    let dav = Dav::new(&s, PROJECT, &token);
    for round in 0..5 {
        let folder = format!("docs{round}");
        let statuses = futures_util::future::join_all((0..8).map(|_| dav.status(dav.req("MKCOL", &folder)))).await;
        let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
        let exists = statuses
            .iter()
            .filter(|s| **s == StatusCode::METHOD_NOT_ALLOWED)
            .count();
        assert_eq!((created, exists), (1, 7), "{folder}: {statuses:?}");
    }
}
