//! Publishing and reading skills.

use super::*;

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
