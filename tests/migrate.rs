//! `contextfs migrate`: a data directory with real history is copied into a
//! fresh target (SQLite data directory + S3 blobs on a local S3 server), and
//! a server on the target answers every API question exactly as the source
//! did: projects, tokens, every file's full history and bytes, the change
//! feed, the audit log, the skills and WebDAV dead properties.

mod common;
use common::s3_support;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use contextfs::api::*;
use contextfs::model::BlobHash;
use reqwest::{Method, StatusCode};
use s3_support::{blob_key, AWS_ENV};
use serde_json::{json, Value};

fn migrate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_contextfs"))
        .arg("migrate")
        .args(args)
        .envs(AWS_ENV.iter().copied())
        .env("CONTEXTFS_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run contextfs migrate")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `migrate --from FROM --to TO --blobs s3://... --s3-endpoint ...` plus
/// `extra`; TO is a data directory or a database URL.
fn migrate_to_s3(from: &Path, to: impl AsRef<OsStr>, prefix: &str, extra: &[&str]) -> Output {
    let blob_args = s3_support::blob_args(prefix);
    let mut args: Vec<&str> = vec!["--from", from.to_str().unwrap(), "--to", to.as_ref().to_str().unwrap()];
    args.extend(blob_args.iter().map(String::as_str));
    args.extend_from_slice(extra);
    migrate(&args)
}

/// A server on the embedded defaults in `dir/data` (whatever
/// `CONTEXTFS_TEST_DATABASE` says: a migration source is a data directory).
async fn embedded_server(dir: &tempfile::TempDir) -> TestServer {
    TestServer::start_on(dir.path().join("data"), Vec::new()).await
}

/// A server on `dir/data` with its blobs under `prefix` and `extra` flags.
async fn s3_server(dir: &tempfile::TempDir, prefix: &str, extra: &[&str]) -> TestServer {
    let mut args = s3_support::blob_args(prefix);
    args.extend(extra.iter().map(|s| s.to_string()));
    TestServer::start_on_with_env(dir.path().join("data"), args, AWS_ENV).await
}

/// Commit with agent, message and idempotency key.
async fn commit_as(
    s: &TestServer,
    project: &str,
    token: &str,
    path: &str,
    base: Option<i64>,
    bytes: &[u8],
    agent: &str,
) -> VersionInfo {
    let hash = s.upload(project, token, bytes).await;
    let mut req = commit_request(path, base, hash);
    req.agent_id = Some(agent.to_string());
    req.message = Some(format!("{agent} writes {path}"));
    req.idempotency_key = Some(format!("{agent}-{path}-{}", rand::random::<u32>()));
    s.commit_req(project, token, &req)
        .await
        .unwrap_or_else(|e| panic!("commit {path}: {e:?}"))
}

struct Tokens {
    alpha_rw: String,
    alpha_ro: String,
    alpha_revoked: String,
    beta_rw: String,
}

/// Two projects with history of every kind: edits, a markdown merge, a JSON
/// merge, a last-writer-wins conflict, rollbacks, renames, deletes (file and
/// recursive), a restore, a binary file, tokens (one revoked) and skills.
async fn build_source(s: &TestServer) -> Tokens {
    let alpha_rw = s.project_with_token("alpha").await;
    let alpha_ro = s.token("alpha", Access::Read).await.token;
    let revoked = s.token("alpha", Access::ReadWrite).await;
    let beta_rw = s.project_with_token("beta").await;
    let t = &alpha_rw;

    let base = "# Plan\n\n- one\n\nmiddle\n\n- three\n";
    commit_as(s, "alpha", t, "notes/plan.md", None, base.as_bytes(), "agent-a").await;
    let a = base.replace("- one", "- one (A)");
    let b = base.replace("- three", "- three (B)");
    commit_as(s, "alpha", t, "notes/plan.md", Some(1), a.as_bytes(), "agent-a").await;
    let merged = commit_as(s, "alpha", t, "notes/plan.md", Some(1), b.as_bytes(), "agent-b").await;
    assert_eq!(merged.status, VersionStatus::Merged);
    // a true conflict on the same line: last writer wins, the loser stays in history
    let c = base.replace("middle", "middle (C)");
    let d = base.replace("middle", "middle (D)");
    commit_as(s, "alpha", t, "notes/plan.md", Some(3), c.as_bytes(), "agent-c").await;
    let lww = commit_as(s, "alpha", t, "notes/plan.md", Some(3), d.as_bytes(), "agent-d").await;
    assert_eq!(lww.status, VersionStatus::Lww);
    let rb: VersionInfo = send(s.post(
        &s.purl("alpha", "/rollback"),
        t,
        &json!({"path": "notes/plan.md", "version": 2, "agent_id": "undo"}),
    ))
    .await
    .unwrap();
    assert_eq!(rb.op, VersionOp::Rollback);

    commit_as(
        s,
        "alpha",
        t,
        "data/config.json",
        None,
        br#"{"a":1,"b":2,"c":3}"#,
        "cfg",
    )
    .await;
    commit_as(
        s,
        "alpha",
        t,
        "data/config.json",
        Some(1),
        br#"{"a":10,"b":2,"c":3}"#,
        "cfg",
    )
    .await;
    let j = commit_as(
        s,
        "alpha",
        t,
        "data/config.json",
        Some(1),
        br#"{"a":1,"b":20,"c":3}"#,
        "cfg2",
    )
    .await;
    assert_eq!(j.status, VersionStatus::Merged);

    // a binary file of several MiB (several read chunks)
    let binary: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    commit_as(s, "alpha", t, "data/blob.bin", None, &binary, "bin").await;

    // rename, delete of a file, recursive delete of a directory, restore
    commit_as(s, "alpha", t, "drafts/x.md", None, b"x one\n", "mover").await;
    send::<VersionInfo>(s.post(
        &s.purl("alpha", "/rename"),
        t,
        &json!({"from": "drafts/x.md", "to": "final/x.md", "agent_id": "mover"}),
    ))
    .await
    .unwrap();
    commit_as(s, "alpha", t, "old/gone.md", None, b"soon gone\n", "cleaner").await;
    send::<DeleteResponse>(s.post(&s.purl("alpha", "/delete"), t, &json!({"path": "old/gone.md"})))
        .await
        .unwrap();
    commit_as(s, "alpha", t, "trash/a.txt", None, b"a\n", "cleaner").await;
    commit_as(s, "alpha", t, "trash/sub/b.txt", None, b"b\n", "cleaner").await;
    send::<DeleteResponse>(s.post(
        &s.purl("alpha", "/delete"),
        t,
        &json!({"path": "trash", "recursive": true}),
    ))
    .await
    .unwrap();
    commit_as(s, "alpha", t, "phoenix.md", None, b"first life\n", "p").await;
    send::<DeleteResponse>(s.post(&s.purl("alpha", "/delete"), t, &json!({"path": "phoenix.md"})))
        .await
        .unwrap();
    let reborn = commit_as(s, "alpha", t, "phoenix.md", Some(1), b"second life\n", "p").await;
    assert_eq!(reborn.version, 3);
    send::<VersionInfo>(s.post(&s.purl("alpha", "/mkdir"), t, &json!({"path": "empty/dir"})))
        .await
        .unwrap();

    commit_as(s, "beta", &beta_rw, "readme.md", None, b"beta\n", "b").await;
    commit_as(s, "beta", &beta_rw, "readme.md", Some(1), b"beta two\n", "b").await;
    // a WebDAV dead property (PROPPATCH) of beta's readme
    let patch = r#"<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:example:migrate"><D:set><D:prop><Z:note>kept by migrate</Z:note></D:prop></D:set></D:propertyupdate>"#;
    let resp = s
        .http
        .request(
            Method::from_bytes(b"PROPPATCH").unwrap(),
            format!("{}/dav/beta/readme.md", s.base),
        )
        .basic_auth("b", Some(&beta_rw))
        .body(patch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MULTI_STATUS);
    assert!(dav_note(s, &beta_rw).await, "the dead property is stored");
    // a blob uploaded but never committed is still the project's
    s.upload("beta", &beta_rw, b"uploaded, not committed").await;

    // skills
    let md = b"---\nname: pdf\ndescription: Read PDFs\n---\n# pdf\n".to_vec();
    let script = b"#!/bin/sh\necho hi\n".to_vec();
    for bytes in [&md, &script] {
        send::<BlobReceipt>(
            s.req(
                Method::PUT,
                &s.url(&format!("/skills/blobs/{}", BlobHash::of(bytes))),
                Some(&s.admin),
            )
            .body(bytes.clone()),
        )
        .await
        .unwrap();
    }
    send::<SkillsListing>(s.post(
        &s.url("/skills"),
        &s.admin,
        &json!({"files": [
            {"path": "pdf/SKILL.md", "hash": BlobHash::of(&md), "size": md.len()},
            {"path": "pdf/run.sh", "hash": BlobHash::of(&script), "size": script.len(), "mode": 0o755},
        ]}),
    ))
    .await
    .unwrap();

    let resp = s
        .req(
            Method::DELETE,
            &s.url(&format!("/tokens/{}", revoked.info.id)),
            Some(&s.admin),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    Tokens {
        alpha_rw,
        alpha_ro,
        alpha_revoked: revoked.token,
        beta_rw,
    }
}

/// Whether beta's readme carries the dead property `build_source` set.
async fn dav_note(s: &TestServer, token: &str) -> bool {
    let body = s
        .http
        .request(
            Method::from_bytes(b"PROPFIND").unwrap(),
            format!("{}/dav/beta/readme.md", s.base),
        )
        .basic_auth("b", Some(token))
        .header("depth", "0")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.contains(">kept by migrate<")
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

/// Everything the API says about the deployment, as one JSON value.
async fn snapshot(s: &TestServer, tokens: &Tokens) -> (Value, BTreeSet<BlobHash>) {
    let mut blobs = BTreeSet::new();
    let mut out = serde_json::Map::new();
    let projects: Vec<ProjectInfo> = send(s.get(&s.url("/projects"), &s.admin)).await.unwrap();
    out.insert("projects".into(), to_json(&projects));
    for p in &projects {
        let name = p.name.as_str();
        let mut proj = serde_json::Map::new();
        let toks: Vec<TokenInfo> = send(s.get(&s.purl(name, "/tokens"), &s.admin)).await.unwrap();
        proj.insert("tokens".into(), to_json(&toks));
        proj.insert("tree".into(), to_json(&s.tree(name, &s.admin, &[]).await.unwrap()));

        // the whole change feed
        let mut events = Vec::new();
        let mut since = 0;
        loop {
            let page = s.changes(name, &s.admin, since, 0).await.unwrap();
            let more = page.events.last().map(|e| e.seq);
            events.extend(page.events);
            match more {
                Some(seq) => since = seq,
                None => break,
            }
        }
        assert!(!events.is_empty());
        // the whole audit log
        let mut audit = Vec::new();
        let mut since = 0i64;
        loop {
            let page: AuditPage = send(
                s.get(&s.purl(name, "/audit"), &s.admin)
                    .query(&[("since", since.to_string())]),
            )
            .await
            .unwrap();
            audit.extend(page.entries.into_iter().map(|e| to_json(&e)));
            match page.next_since {
                Some(n) => since = n,
                None => break,
            }
        }
        proj.insert("audit".into(), Value::Array(audit));

        // every path that ever existed: full history, and every version's bytes
        let paths: BTreeSet<String> = events
            .iter()
            .flat_map(|e| std::iter::once(e.path.clone()).chain(e.old_path.clone()))
            .collect();
        let mut files = serde_json::Map::new();
        for path in &paths {
            // a path a node was renamed away from has no history of its own
            if let Err(e) = s.history_page(name, &s.admin, path, None, Some(1)).await {
                assert_eq!(e.code, "not_found", "{path}: {e:?}");
                files.insert(path.clone(), Value::Null);
                continue;
            }
            let hist = s.history(name, &s.admin, path).await;
            let mut versions = Vec::new();
            for v in &hist {
                let mut entry = to_json(v);
                if v.kind == NodeKind::File {
                    let co = s
                        .read(name, &s.admin, path, Some(v.version))
                        .await
                        .map(|c| BlobHash::of(&c.bytes).to_string())
                        .unwrap_or_else(|e| format!("error {}", e.code));
                    let bytes = s
                        .get_blob(name, &s.admin, v.hash.as_str())
                        .await
                        .unwrap_or_else(|e| panic!("{name}/{path} v{}: blob {} unreadable: {e:?}", v.version, v.hash));
                    assert_eq!(BlobHash::of(&bytes), v.hash, "{name}/{path} v{}", v.version);
                    entry["checkout"] = Value::String(co);
                    blobs.insert(v.hash.clone());
                }
                versions.push(entry);
            }
            files.insert(path.clone(), Value::Array(versions));
        }
        proj.insert("files".into(), Value::Object(files));
        proj.insert("events".into(), to_json(&events));
        out.insert(format!("project {name}"), Value::Object(proj));
    }
    let skills: SkillsListing = send(s.get(&s.url("/skills"), &s.admin)).await.unwrap();
    for f in skills.skills.iter().flat_map(|k| &k.files) {
        let resp = s
            .get(&s.url(&format!("/skills/blobs/{}", f.hash)), &tokens.beta_rw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(BlobHash::of(&resp.bytes().await.unwrap()), f.hash);
        blobs.insert(f.hash.clone());
    }
    out.insert("skills".into(), to_json(&skills));

    // tokens: the same secrets work with the same scope; the revoked one does not
    let mut who = Vec::new();
    for secret in [&tokens.alpha_rw, &tokens.alpha_ro, &tokens.beta_rw] {
        let me: WhoAmI = send(s.get(&s.url("/whoami"), secret)).await.unwrap();
        who.push(to_json(&me));
    }
    let revoked = s.get(&s.url("/whoami"), &tokens.alpha_revoked).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
    out.insert("whoami".into(), Value::Array(who));
    out.insert("dav_note".into(), Value::Bool(dav_note(s, &tokens.beta_rw).await));
    // the uploaded-but-uncommitted blob is still beta's
    let stray = BlobHash::of(b"uploaded, not committed");
    assert_eq!(
        s.get_blob("beta", &tokens.beta_rw, stray.as_str()).await.unwrap(),
        b"uploaded, not committed"
    );
    blobs.insert(stray);
    (Value::Object(out), blobs)
}

/// The first difference between two JSON values, for a readable failure.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let here = format!("{at}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => {
                        if let Some(d) = first_difference(p, q, &here) {
                            return Some(d);
                        }
                    }
                    _ => return Some(format!("{here}: only on one side")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{at}: {a} != {b}")),
    }
}

/// Panics with the first difference (`what differs: ...`) unless `after`
/// tells the same story as `before`.
fn assert_no_difference(before: &Value, after: &Value, what: &str) {
    if let Some(diff) = first_difference(before, after, "") {
        panic!("{what} differs: {diff}");
    }
}

/// Writes a new version of alpha's notes/plan.md on the migrated `target`:
/// it must get the next version number of the same node. Returns the head
/// it was written on.
async fn assert_a_new_version_continues_the_numbering(target: &TestServer, tokens: &Tokens) -> Checkout {
    let head = target
        .read("alpha", &tokens.alpha_rw, "notes/plan.md", None)
        .await
        .unwrap();
    let next = target
        .commit(
            "alpha",
            &tokens.alpha_rw,
            "notes/plan.md",
            Some(head.version),
            b"after the move\n",
        )
        .await
        .unwrap();
    assert_eq!(
        (next.node, next.version),
        (head.node, head.version + 1),
        "a new version of notes/plan.md after the migration"
    );
    head
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_sqlite_dir_to_sqlite_plus_s3_keeps_everything() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut source = embedded_server(&source_dir).await;
    let tokens = build_source(&source).await;
    let (before, blobs) = snapshot(&source, &tokens).await;
    source.stop().await;

    let prefix = s3_support::fresh_prefix("migrate");
    // the target server creates its (empty) database, then steps aside
    let mut target = s3_server(&target_dir, &prefix, &[]).await;
    target.stop().await;

    let started = std::time::Instant::now();
    let out = migrate_to_s3(&source.data_dir, &target.data_dir, &prefix, &[]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("migrate took {:?}\n{}", started.elapsed(), text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 projects") && stdout.contains("4 tokens"), "{stdout}");
    assert!(stdout.contains(", 0 already there"), "{stdout}");

    // every blob the source references is in the bucket under its hash
    let keys: BTreeSet<String> = s3_support::list(&prefix).await.into_iter().map(|(k, _)| k).collect();
    for hash in &blobs {
        assert!(keys.contains(&blob_key(hash)), "blob {hash} missing from S3: {keys:?}");
    }
    assert!(keys.iter().all(|k| k.starts_with("blobs/")), "{keys:?}");

    // a server on the target tells the same story
    target.restart().await;
    let (after, _) = snapshot(&target, &tokens).await;
    assert_no_difference(&before, &after, "the migrated deployment");
    assert_eq!(before, after);
    // and it keeps working: new versions continue the numbering
    assert_a_new_version_continues_the_numbering(&target, &tokens).await;
    let p = target.project_with_token("gamma").await;
    target.commit("gamma", &p, "new.md", None, b"new\n").await.unwrap();
    target.stop().await;

    // the target is not empty any more: refused without --force...
    let again = migrate_to_s3(&source.data_dir, &target.data_dir, &prefix, &[]);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("--force"), "{}", text(&again));
    // ...and with --force the metadata is replaced while every blob is reused
    let forced = migrate_to_s3(&source.data_dir, &target.data_dir, &prefix, &["--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    let stdout = String::from_utf8_lossy(&forced.stdout);
    assert!(stdout.contains("; 0 copied"), "{stdout}");
    target.restart().await;
    let (replaced, _) = snapshot(&target, &tokens).await;
    assert_eq!(before, replaced, "--force replaces the target with the source");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_verifies_every_blob_and_restarts_where_it_stopped() {
    let source_dir = tempfile::tempdir().unwrap();
    let mut source = embedded_server(&source_dir).await;
    let t = source.project_with_token("p").await;
    let mut hashes = Vec::new();
    for i in 0..12 {
        let bytes = format!("file {i}\n").repeat(1000 + i * 100);
        let v = source
            .commit("p", &t, &format!("f{i}.txt"), None, bytes.as_bytes())
            .await
            .unwrap();
        hashes.push(v.hash);
    }
    source.stop().await;

    // damage one blob in the source folder
    let victim = hashes[7].clone();
    let file = source
        .data_dir
        .join("blobs")
        .join(&victim.as_str()[..2])
        .join(victim.as_str());
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    bad[10] ^= 0x55;
    std::fs::write(&file, &bad).unwrap();

    // (the test servers take the admin token from the environment; a real
    // data directory has it in a file, which migrate carries over)
    std::fs::write(source.data_dir.join("admin-token"), "cfs_admin_from_the_old_dir\n").unwrap();
    let prefix = s3_support::fresh_prefix("restart");
    let target = tempfile::tempdir().unwrap();
    let to = target.path().join("data");
    let out = migrate_to_s3(&source.data_dir, &to, &prefix, &["--jobs", "2"]);
    assert!(!out.status.success(), "a damaged blob must stop the migration");
    assert!(
        text(&out).contains("damaged") && text(&out).contains(victim.as_str()),
        "{}",
        text(&out)
    );
    // nothing unverified under the victim's hash; others may have been copied
    let first_run: Vec<String> = s3_support::list(&prefix).await.into_iter().map(|(k, _)| k).collect();
    assert!(!first_run.contains(&blob_key(&victim)), "{first_run:?}");

    // repair the source; the target's metadata is still empty (no --force
    // needed) and only the missing blobs are copied
    std::fs::write(&file, &good).unwrap();
    let out = migrate_to_s3(&source.data_dir, &to, &prefix, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 12 files at the root, no directories: 12 blobs
    let want = format!("blobs: 12 referenced; {} copied", 12 - first_run.len());
    assert!(stdout.contains(&want), "want {want:?} in {stdout}");
    assert!(
        stdout.contains(&format!("{} already there", first_run.len())),
        "{stdout}"
    );
    assert_eq!(s3_support::list(&prefix).await.len(), 12);
    // the admin token came along into the new data directory
    assert_eq!(
        std::fs::read_to_string(to.join("admin-token")).unwrap(),
        "cfs_admin_from_the_old_dir\n"
    );

    // misuse is refused with a reason
    let same = migrate(&[
        "--from",
        source.data_dir.to_str().unwrap(),
        "--to",
        source.data_dir.to_str().unwrap(),
    ]);
    assert!(
        !same.status.success() && text(&same).contains("--from directory"),
        "{}",
        text(&same)
    );
    let pg_without_blobs = migrate(&[
        "--from",
        source.data_dir.to_str().unwrap(),
        "--to",
        "postgres://u:p@127.0.0.1:1/db",
    ]);
    assert!(
        !pg_without_blobs.status.success() && text(&pg_without_blobs).contains("--blobs"),
        "{}",
        text(&pg_without_blobs)
    );
    let not_a_dir = migrate(&["--from", "/nonexistent/contextfs", "--to", to.to_str().unwrap()]);
    assert!(
        !not_a_dir.status.success() && text(&not_a_dir).contains("not a contextfs data directory"),
        "{}",
        text(&not_a_dir)
    );
}

/// The same history into PostgreSQL + S3. Runs when `CONTEXTFS_TEST_DATABASE`
/// names a PostgreSQL server (scripts/test runs it so); skipped otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_sqlite_dir_to_postgres_plus_s3_keeps_everything() {
    let Some(database) = fresh_test_database().await else {
        eprintln!("skipped: {TEST_DATABASE_ENV} is not set (scripts/test sets it)");
        return;
    };
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut source = embedded_server(&source_dir).await;
    let tokens = build_source(&source).await;
    let (before, _) = snapshot(&source, &tokens).await;
    source.stop().await;

    let prefix = s3_support::fresh_prefix("migrate-pg");
    let out = migrate_to_s3(&source.data_dir, &database, &prefix, &[]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("{}", text(&out));

    let mut target = s3_server(&target_dir, &prefix, &["--database", &database]).await;
    let (after, _) = snapshot(&target, &tokens).await;
    assert_no_difference(&before, &after, "the migrated deployment");
    // ids, version numbers, audit and feed sequences continue after the imported rows
    let head = assert_a_new_version_continues_the_numbering(&target, &tokens).await;
    let fresh = target
        .commit("alpha", &tokens.alpha_rw, "brand/new.md", None, b"new\n")
        .await
        .unwrap();
    assert!(fresh.node > head.node, "new node ids continue after the imported ones");
    let gamma = target.create_project("gamma").await;
    let projects: Vec<ProjectInfo> = send(target.get(&target.url("/projects"), &target.admin)).await.unwrap();
    assert_eq!(projects.len(), 3, "{gamma:?}");
    let audit: AuditPage = send(target.get(&target.purl("alpha", "/audit"), &target.admin))
        .await
        .unwrap();
    let seqs: Vec<i64> = audit.entries.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "audit stays ordered: {seqs:?}");
    let (mut since, mut last) = (0, None);
    loop {
        let page = target.changes("alpha", &tokens.alpha_rw, since, 0).await.unwrap();
        match page.events.last() {
            Some(e) => since = e.seq,
            None => break,
        }
        last = page.events.last().cloned();
    }
    assert_eq!(
        last.map(|e| e.path),
        Some("brand/new.md".to_string()),
        "the feed continues after the imported events"
    );
    target.stop().await;

    // not empty any more: refused, then replaced with --force
    let again = migrate_to_s3(&source.data_dir, &database, &prefix, &[]);
    assert!(
        !again.status.success() && text(&again).contains("--force"),
        "{}",
        text(&again)
    );
    let forced = migrate_to_s3(&source.data_dir, &database, &prefix, &["--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    target.restart().await;
    let (replaced, _) = snapshot(&target, &tokens).await;
    assert_eq!(before, replaced);
    target.stop().await;

    // and back: PostgreSQL + S3 into a new data directory (SQLite + blob folder)
    let back_dir = tempfile::tempdir().unwrap();
    let back_data = back_dir.path().join("data");
    let s3 = s3_support::server();
    let blobs = s3_support::blobs_url(&prefix);
    let out = migrate(&[
        "--from",
        &database,
        "--from-blobs",
        &blobs,
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-region",
        s3_support::REGION,
        "--to",
        back_data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let back = embedded_server(&back_dir).await;
    let (round_trip, _) = snapshot(&back, &tokens).await;
    assert_no_difference(&before, &round_trip, "SQLite -> PostgreSQL -> SQLite");
}

/// A file stored as chunks has no blob of its own: migrate copies its
/// chunks (each verified) and carries its manifest, and the target serves
/// it whole and in ranges, with the manifest the source had.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_carries_chunked_files() {
    use contextfs::chunks::manifest_of;
    use contextfs::client::Client;

    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut source = embedded_server(&source_dir).await;
    let token = source.project_with_token("big").await;
    let mut bytes = vec![0u8; 20 << 20];
    blake3::Hasher::new()
        .update(b"migrate chunks")
        .finalize_xof()
        .fill(&mut bytes);
    let file = source_dir.path().join("big.bin");
    std::fs::write(&file, &bytes).unwrap();
    let hash = hash_of(&bytes);
    let manifest = manifest_of(&bytes[..]).unwrap();
    let client = Client::new(&source.base, Some(token.clone())).unwrap();
    client.upload_file("big", &hash, &file).await.expect("upload by chunks");
    source
        .commit_req("big", &token, &commit_request("big.bin", None, hash.clone()))
        .await
        .expect("commit");
    source.stop().await;

    let prefix = s3_support::fresh_prefix("migrate-chunks");
    let mut target = s3_server(&target_dir, &prefix, &[]).await;
    target.stop().await;
    let out = migrate_to_s3(&source.data_dir, &target.data_dir, &prefix, &[]);
    assert!(out.status.success(), "{}", text(&out));

    let keys: BTreeSet<String> = s3_support::list(&prefix).await.into_iter().map(|(k, _)| k).collect();
    for chunk in &manifest.chunks {
        assert!(
            keys.contains(&blob_key(&chunk.hash)),
            "chunk {} missing from S3",
            chunk.hash
        );
    }
    assert!(
        !keys.contains(&blob_key(&hash)),
        "a chunked file is stored as its chunks only"
    );

    target.restart().await;
    assert!(
        target.read_bytes("big", &token, "big.bin").await == bytes,
        "read back whole"
    );
    let moved = Client::new(&target.base, Some(token.clone())).unwrap();
    assert_eq!(moved.get_manifest("big", &hash).await.unwrap(), Some(manifest.clone()));
    let part = moved
        .blob_range_response("big", &hash, 5 << 20, 100)
        .await
        .expect("a range");
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert!(part.bytes().await.unwrap() == bytes[5 << 20..(5 << 20) + 100]);
    let chunks: Vec<BlobHash> = manifest.chunks.iter().map(|c| c.hash.clone()).collect();
    assert!(
        moved.missing_blobs("big", &chunks).await.unwrap().is_empty(),
        "the project still holds its chunks (an append resumes from them)"
    );
    let report: GcReport = send(target.post(&target.url("/gc"), &target.admin, &GcRequest { dry_run: true }))
        .await
        .unwrap();
    assert!(
        report.missing.is_empty() && report.blobs_deleted == 0 && report.manifests_deleted == 0,
        "{report:?}"
    );
    target.stop().await;

    // Into PostgreSQL + S3 as well, when a test database is at hand.
    let Some(database) = fresh_test_database().await else {
        return;
    };
    let pg_prefix = s3_support::fresh_prefix("migrate-chunks-pg");
    let out = migrate_to_s3(&source.data_dir, &database, &pg_prefix, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let pg_dir = tempfile::tempdir().unwrap();
    let on_pg = s3_server(&pg_dir, &pg_prefix, &["--database", &database]).await;
    assert!(
        on_pg.read_bytes("big", &token, "big.bin").await == bytes,
        "read back from PostgreSQL + S3"
    );
    let pg_client = Client::new(&on_pg.base, Some(token.clone())).unwrap();
    assert_eq!(pg_client.get_manifest("big", &hash).await.unwrap(), Some(manifest));
    assert!(pg_client.missing_blobs("big", &chunks).await.unwrap().is_empty());
}
