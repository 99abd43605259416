//! Dead properties: what clients PROPPATCH is stored per node, listed by
//! PROPFIND, follows MOVE, is copied by COPY and vanishes on DELETE.

use super::*;
use contextfs::api::Access;

const COLOR_NS: &str = "urn:example:contextfs-test";

/// A PROPPATCH body that sets `color` (and whatever else `more` holds).
fn set_color(value: &str, more: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<D:propertyupdate xmlns:D="DAV:" xmlns:Z="{COLOR_NS}"><D:set><D:prop><Z:color>{value}</Z:color>{more}</D:prop></D:set></D:propertyupdate>"#
    )
}

fn remove_color() -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<D:propertyupdate xmlns:D="DAV:" xmlns:Z="{COLOR_NS}"><D:remove><D:prop><Z:color/></D:prop></D:remove></D:propertyupdate>"#
    )
}

/// PROPFIND asking for `color` by name.
async fn color_of(dav: &Dav, path: &str, depth: &str) -> (StatusCode, String) {
    let body = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<D:propfind xmlns:D="DAV:" xmlns:Z="{COLOR_NS}"><D:prop><Z:color/><D:getetag/></D:prop></D:propfind>"#
    );
    let (status, _, body) = dav
        .send(dav.req("PROPFIND", path).header("depth", depth).body(body))
        .await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn proppatch(dav: &Dav, path: &str, body: String) -> (StatusCode, String) {
    let (status, _, body) = dav.send(dav.req("PROPPATCH", path).body(body)).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_properties_are_stored_follow_move_and_vanish_on_delete() {
    let (s, token) = setup().await;
    let dav = Dav::new(&s, PROJECT, &token);
    assert_eq!(dav.status(dav.req("MKCOL", "docs")).await, StatusCode::CREATED);
    dav.put("docs/a.md", b"a\n").await;
    dav.put("docs/plain.md", b"plain\n").await;
    let (_, before) = color_of(&dav, "docs/a.md", "0").await;
    assert!(!before.contains("blue"), "{before}");

    // Set: 207 with 200 for the property; PROPFIND by name, of everything
    // (no body) and of the folder's listing shows it on that file only.
    let (status, answer) = proppatch(&dav, "docs/a.md", set_color("blue", "")).await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert!(answer.contains("200 OK"), "{answer}");
    let (status, found) = color_of(&dav, "docs/a.md", "0").await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert!(found.contains(">blue<"), "{found}");
    assert_eq!(found.matches(">blue<").count(), 1, "listed once: {found}");
    assert!(dav.propfind("docs/a.md", "0").await.1.contains(">blue<"));
    let (_, listing) = color_of(&dav, "docs", "1").await;
    assert_eq!(listing.matches(">blue<").count(), 1, "{listing}");
    assert!(!color_of(&dav, "docs/plain.md", "0").await.1.contains("blue"));
    // A new version of the file keeps its properties (same node).
    dav.put("docs/a.md", b"a2\n").await;
    assert!(color_of(&dav, "docs/a.md", "0").await.1.contains(">blue<"));

    // Folders take them too (and a root listing shows them), and so does
    // DAV:displayname, which dav-server leaves to the store.
    let named = set_color("yellow", "<D:displayname>Documents</D:displayname>");
    let (status, answer) = proppatch(&dav, "docs", named).await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert!(!answer.contains("403") && !answer.contains("424"), "{answer}");
    let (_, root) = color_of(&dav, "", "1").await;
    assert_eq!(root.matches(">yellow<").count(), 1, "{root}");
    let (_, all) = dav.propfind("docs", "0").await;
    assert!(all.contains(">yellow<") && all.contains(">Documents<"), "{all}");

    // Replace, then remove.
    proppatch(&dav, "docs/a.md", set_color("green", "")).await;
    let (_, found) = color_of(&dav, "docs/a.md", "0").await;
    assert!(found.contains(">green<") && !found.contains("blue"), "{found}");
    let (status, _) = proppatch(&dav, "docs/a.md", remove_color()).await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert!(!color_of(&dav, "docs/a.md", "0").await.1.contains("green"));

    // A PROPPATCH with a property the server refuses (getlastmodified is
    // live: 403, as before) stores nothing of it (424 for the rest), and
    // the file's time stays what its writer set.
    let mtime_before = s.history(PROJECT, &token, "docs/a.md").await[0].mtime.clone();
    let refused = set_color(
        "red",
        "<D:getlastmodified>Thu, 01 Jan 2015 00:00:00 GMT</D:getlastmodified>",
    );
    let (status, answer) = proppatch(&dav, "docs/a.md", refused).await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert!(
        answer.contains("403 Forbidden") && answer.contains("424 Failed Dependency"),
        "{answer}"
    );
    assert!(!color_of(&dav, "docs/a.md", "0").await.1.contains("red"));
    assert_eq!(s.history(PROJECT, &token, "docs/a.md").await[0].mtime, mtime_before);

    // MOVE: the properties follow the node; COPY copies them.
    proppatch(&dav, "docs/a.md", set_color("blue", "")).await;
    let moved = dav
        .status(dav.req("MOVE", "docs/a.md").header("destination", dav.url("docs/b.md")))
        .await;
    assert_eq!(moved, StatusCode::CREATED);
    assert!(color_of(&dav, "docs/b.md", "0").await.1.contains(">blue<"));
    let copied = dav
        .status(dav.req("COPY", "docs/b.md").header("destination", dav.url("docs/c.md")))
        .await;
    assert_eq!(copied, StatusCode::CREATED);
    assert!(color_of(&dav, "docs/c.md", "0").await.1.contains(">blue<"));
    let copied = dav
        .status(dav.req("COPY", "docs").header("destination", dav.url("copy")))
        .await;
    assert_eq!(copied, StatusCode::CREATED);
    assert!(color_of(&dav, "copy/c.md", "0").await.1.contains(">blue<"));
    assert!(
        !color_of(&dav, "copy", "0").await.1.contains("yellow"),
        "a folder's own are not copied"
    );

    // DELETE: gone, also when a new file appears at the same path, or the
    // deleted node comes back through a MOVE onto a fresh name.
    assert_eq!(dav.status(dav.req("DELETE", "docs/b.md")).await, StatusCode::NO_CONTENT);
    assert_eq!(color_of(&dav, "docs/b.md", "0").await.0, StatusCode::NOT_FOUND);
    dav.put("docs/b.md", b"new b\n").await;
    assert!(!color_of(&dav, "docs/b.md", "0").await.1.contains("blue"));
    assert_eq!(dav.status(dav.req("DELETE", "docs")).await, StatusCode::NO_CONTENT);
    assert_eq!(dav.status(dav.req("MKCOL", "docs")).await, StatusCode::CREATED);
    assert!(!dav.propfind("docs", "0").await.1.contains("Documents"));
    dav.put("docs/c.md", b"c again\n").await;
    assert!(!color_of(&dav, "docs/c.md", "0").await.1.contains("blue"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_properties_outlive_a_restart_and_refusals_store_none() {
    let (mut s, token) = setup().await;
    let dav = Dav::new(&s, PROJECT, &token);
    dav.put("a.md", b"a\n").await;
    proppatch(&dav, "a.md", set_color("blue", "")).await;

    // Refused: a missing file (404), a read-only token (403), a locked
    // file without its token (423), the published skills (403).
    assert_eq!(
        proppatch(&dav, "missing.md", set_color("red", "")).await.0,
        StatusCode::NOT_FOUND
    );
    let reader = Dav::new(&s, PROJECT, &s.token(PROJECT, Access::Read).await.token);
    assert_eq!(
        proppatch(&reader, "a.md", set_color("red", "")).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, _, _) = dav
        .send(dav.req("LOCK", "a.md").header("timeout", "Second-600").body(LOCK_BODY))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        proppatch(&dav, "a.md", set_color("red", "")).await.0,
        StatusCode::LOCKED
    );
    assert_eq!(
        proppatch(&dav, "skills", set_color("red", "")).await.0,
        StatusCode::FORBIDDEN
    );

    // The database keeps them (and the lock) across a restart.
    s.restart().await;
    let dav = Dav::new(&s, PROJECT, &token);
    let (_, found) = color_of(&dav, "a.md", "0").await;
    assert!(found.contains(">blue<") && !found.contains("red"), "{found}");
    assert_eq!(dav.put("a.md", b"after restart\n").await.0, StatusCode::LOCKED);
}
