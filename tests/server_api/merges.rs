//! Merges through the real server, sixteen concurrent writers, and kill -9 of the server keeping every acknowledged commit.

use super::*;

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
