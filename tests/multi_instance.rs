//! Several stateless `contextfs serve` instances on one PostgreSQL: no lost
//! updates between instances, one linear history per file, a gap-free change
//! feed, cross-instance long-poll wake-ups, and fail-over after `kill -9`.
//!
//! Needs `CONTEXTFS_TEST_DATABASE` (a PostgreSQL URL that may create
//! databases; `scripts/test` starts one with `scripts/pg`). Without it every
//! test here says so and passes without running.
//!
//! The instances share one `--data` directory for blobs: `DirBlobStore`
//! publishes a blob by renaming a verified, fsynced temp file into place, so
//! concurrent writers of the same hash are safe.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use contextfs::api::*;
use contextfs::model::BlobHash;
use serde_json::{json, Value};

/// Instances sharing one fresh database and one data directory.
struct Cluster {
    servers: Vec<TestServer>,
    database: String,
    // Dropped last: the servers are killed before their data goes away.
    _data: tempfile::TempDir,
}

impl Cluster {
    /// `n` instances started at the same time on a fresh database (so their
    /// migrations race), or `None` when no test database is configured.
    async fn start(test: &str, n: usize) -> Option<Cluster> {
        let Some(database) = fresh_test_database().await else {
            eprintln!(
                "{test}: skipped: set {TEST_DATABASE_ENV} to a PostgreSQL URL (scripts/test does, via scripts/pg)"
            );
            return None;
        };
        let data = tempfile::tempdir().expect("temp dir");
        let dir: PathBuf = data.path().join("data");
        let args = vec!["--database".to_string(), database.clone()];
        let starts = (0..n).map(|_| TestServer::start_on(dir.clone(), args.clone()));
        let servers = futures_util::future::join_all(starts).await;
        Some(Cluster {
            servers,
            database,
            _data: data,
        })
    }

    async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.database, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }
}

/// Every event of a project, following `more`.
async fn all_changes(api: &Api, project: &str, token: &str) -> Vec<ChangeEvent> {
    let mut events = Vec::new();
    let mut since = 0;
    loop {
        let page = api.changes(project, token, since, 0).await.expect("changes");
        events.extend(page.events);
        since = page.cursor;
        if !page.more {
            return events;
        }
    }
}

/// Versions 1..=N, each the child of the one before: one linear history.
fn assert_linear(file: &str, history: &[VersionInfo]) {
    let mut numbers: Vec<i64> = history.iter().map(|v| v.version).collect();
    numbers.reverse();
    assert_eq!(
        numbers,
        (1..=history.len() as i64).collect::<Vec<_>>(),
        "{file}: versions are 1..N without gaps or duplicates"
    );
    for v in history {
        let want = if v.version == 1 { None } else { Some(v.version - 1) };
        assert_eq!(v.parent, want, "{file} v{}: parent is the version before", v.version);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_starting_together_migrate_once() {
    let Some(cluster) = Cluster::start("instances_starting_together_migrate_once", 3).await else {
        return;
    };
    for s in &cluster.servers {
        let health: Health = send(s.http.get(s.url("/health"))).await.expect("health");
        assert_eq!(health.status, "ok");
    }
    let sql = cluster.sql().await;
    let rows = sql
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .await
        .expect("schema_version");
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    // 1 initial, 2 file times, 3 long paths, 4 operations, 5 WebDAV,
    // 6 chunked content: each applied exactly once.
    assert_eq!(versions, [1, 2, 3, 4, 5, 6], "each migration is applied exactly once");
    // a project made through one instance is there for the others
    let a = &cluster.servers[0];
    a.create_project("shared").await;
    for s in &cluster.servers[1..] {
        let got: ProjectInfo = send(s.get(&s.purl("shared", ""), &s.admin)).await.expect("project");
        assert_eq!(got.name, "shared");
    }
}

const WRITERS: usize = 16;
const ROUNDS: usize = 4;

fn board(lines: &BTreeMap<usize, String>) -> String {
    let mut s = String::from("# Shared board\n");
    for i in 0..WRITERS {
        s.push_str(&format!("<!-- section {i} -->\n"));
        s.push_str(lines.get(&i).map(String::as_str).unwrap_or("open"));
        s.push('\n');
    }
    s.push_str("<!-- end -->\n");
    s
}

/// Writer `i`'s line of a board, by position.
fn line_of(text: &str, i: usize) -> &str {
    text.lines().nth(2 + 2 * i).expect("board line")
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_writers_on_two_instances_lose_no_update() {
    let Some(cluster) = Cluster::start("sixteen_writers_on_two_instances_lose_no_update", 2).await else {
        return;
    };
    let a = &cluster.servers[0];
    let t = a.project_with_token("p").await;
    a.commit("p", &t, "board.md", None, board(&BTreeMap::new()).as_bytes())
        .await
        .unwrap();
    let base_json: serde_json::Map<String, Value> =
        (0..WRITERS).map(|i| (format!("key{i:02}"), json!("base"))).collect();
    a.commit(
        "p",
        &t,
        "state.json",
        None,
        &serde_json::to_vec_pretty(&base_json).unwrap(),
    )
    .await
    .unwrap();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        // writers alternate between the instances
        let api = cluster.servers[i % 2].with_own_client();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(String, i64, usize)> = Vec::new();
            for round in 0..ROUNDS {
                let mine = format!("writer {i} round {round}");
                // Markdown: read the head, change only my line, commit on top of it
                let co = api.read("p", &t, "board.md", None).await.expect("read board");
                let text = String::from_utf8(co.bytes).unwrap();
                let mut lines: Vec<&str> = text.lines().collect();
                lines[2 + 2 * i] = &mine;
                let edited = lines.join("\n") + "\n";
                let v = api
                    .commit("p", &t, "board.md", Some(co.version), edited.as_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("writer {i} round {round} board: {e:?}"));
                acked.push(("board.md".into(), v.version, round));
                // JSON: my key only
                let co = api.read("p", &t, "state.json", None).await.expect("read state");
                let mut state: serde_json::Map<String, Value> = serde_json::from_slice(&co.bytes).unwrap();
                state.insert(format!("key{i:02}"), json!(mine));
                let v = api
                    .commit(
                        "p",
                        &t,
                        "state.json",
                        Some(co.version),
                        &serde_json::to_vec_pretty(&state).unwrap(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("writer {i} round {round} state: {e:?}"));
                acked.push(("state.json".into(), v.version, round));
            }
            (i, acked)
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.push(task.await.expect("writer task"));
    }
    eprintln!(
        "{} commits by {WRITERS} writers on 2 instances in {:?}",
        WRITERS * ROUNDS * 2,
        started.elapsed()
    );

    // every file: one linear history with exactly one version per acknowledged commit
    for file in ["board.md", "state.json"] {
        let hist = a.history("p", &t, file).await;
        assert_linear(file, &hist);
        let mut numbers: Vec<i64> = acked
            .iter()
            .flat_map(|(_, commits)| commits.iter().filter(|c| c.0 == file).map(|c| c.1))
            .collect();
        numbers.sort();
        assert_eq!(
            numbers,
            (2..=(1 + WRITERS * ROUNDS) as i64).collect::<Vec<_>>(),
            "{file}: every acknowledged commit has a version of its own"
        );
    }
    // every acknowledged commit's edit is in the version it was acknowledged with
    let b = &cluster.servers[1];
    for (i, commits) in &acked {
        for (file, version, round) in commits {
            let co = b.read("p", &t, file, Some(*version)).await.unwrap();
            let mine = format!("writer {i} round {round}");
            if file == "board.md" {
                let text = String::from_utf8(co.bytes).unwrap();
                assert_eq!(line_of(&text, *i), mine, "{file} v{version}");
            } else {
                let state: serde_json::Map<String, Value> = serde_json::from_slice(&co.bytes).unwrap();
                assert_eq!(state[&format!("key{i:02}")], json!(mine), "{file} v{version}");
            }
        }
    }
    // and the heads, read through either instance, hold every writer's last edit
    for s in &cluster.servers {
        let text = String::from_utf8(s.read_bytes("p", &t, "board.md").await).unwrap();
        let last: BTreeMap<usize, String> = (0..WRITERS)
            .map(|i| (i, format!("writer {i} round {}", ROUNDS - 1)))
            .collect();
        assert_eq!(text, board(&last), "the Markdown head holds all edits");
        let state: serde_json::Map<String, Value> =
            serde_json::from_slice(&s.read_bytes("p", &t, "state.json").await).unwrap();
        let want: serde_json::Map<String, Value> = (0..WRITERS)
            .map(|i| (format!("key{i:02}"), json!(format!("writer {i} round {}", ROUNDS - 1))))
            .collect();
        assert_eq!(state, want, "the JSON head holds all edits");
    }
    // the change feed: seq 1..N without gaps, one event per version
    let events = all_changes(a, "p", &t).await;
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "event seqs are gap-free and ordered"
    );
    assert_eq!(events.len(), 2 * (1 + WRITERS * ROUNDS), "one event per version");
    let mut per_node: HashMap<i64, Vec<i64>> = HashMap::new();
    for e in &events {
        per_node.entry(e.node).or_default().push(e.version);
    }
    for (node, versions) in per_node {
        assert_eq!(
            versions,
            (1..=versions.len() as i64).collect::<Vec<_>>(),
            "node {node}: its events come in version order"
        );
    }
    let (cursor_a, _) = a.snapshot("p").await;
    let (cursor_b, _) = b.snapshot("p").await;
    assert_eq!((cursor_a, cursor_b), (events.len() as i64, events.len() as i64));
}

#[tokio::test(flavor = "multi_thread")]
async fn long_poll_on_one_instance_sees_commits_through_the_other() {
    const DEADLINE: Duration = Duration::from_secs(1);
    let Some(cluster) = Cluster::start("long_poll_on_one_instance_sees_commits_through_the_other", 2).await else {
        return;
    };
    let t = cluster.servers[0].project_with_token("p").await;
    let mut cursor = cluster.servers[0].changes("p", &t, 0, 0).await.unwrap().cursor;
    let mut worst = Duration::ZERO;
    for round in 0..6 {
        // alternate: poll A / commit through B, then poll B / commit through A
        let (poll_on, commit_on) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
        let poller = cluster.servers[poll_on].with_own_client();
        let t2 = t.clone();
        let mut poll = tokio::spawn(async move { poller.changes("p", &t2, cursor, 20_000).await });
        // the mount's long-poll is waiting: nothing to return yet
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut poll)
                .await
                .is_err(),
            "the long-poll returned before any change"
        );
        let writer = &cluster.servers[commit_on];
        let v = writer
            .commit(
                "p",
                &t,
                &format!("f{round}.md"),
                None,
                format!("round {round}\n").as_bytes(),
            )
            .await
            .unwrap();
        let acked = Instant::now();
        let page = tokio::time::timeout(Duration::from_secs(10), poll)
            .await
            .expect("the long-poll never returned")
            .expect("poll task")
            .expect("poll response");
        let latency = acked.elapsed();
        worst = worst.max(latency);
        assert!(
            page.events.iter().any(|e| e.node == v.node && e.version == v.version),
            "round {round}: the long-poll must return the commit made through the other instance: {page:?}"
        );
        assert!(
            latency < DEADLINE,
            "round {round}: woken {latency:?} after the commit (deadline {DEADLINE:?})"
        );
        cursor = page.cursor;
    }
    eprintln!("cross-instance wake-up: worst {worst:?}");

    // the listeners lose their connections: they reconnect, and a commit made
    // meanwhile still wakes the long-poll (everyone is woken after a reconnect)
    let sql = cluster.sql().await;
    let poller = cluster.servers[0].with_own_client();
    let t2 = t.clone();
    let mut poll = tokio::spawn(async move { poller.changes("p", &t2, cursor, 20_000).await });
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut poll)
        .await
        .is_err());
    let killed = sql
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
            &[&contextfs::server::store::postgres::LISTENER_NAME],
        )
        .await
        .expect("terminate the listeners");
    assert_eq!(killed.len(), 2, "one listener per instance");
    let v = cluster.servers[1]
        .commit("p", &t, "after-reconnect.md", None, b"x\n")
        .await
        .unwrap();
    let acked = Instant::now();
    let page = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long-poll never returned after the listener reconnected")
        .expect("poll task")
        .expect("poll response");
    assert!(
        page.events.iter().any(|e| e.node == v.node),
        "the long-poll must return the commit: {page:?}"
    );
    assert!(
        acked.elapsed() < Duration::from_secs(3),
        "woken {:?} after the commit",
        acked.elapsed()
    );
}

/// One commit with an idempotency key, tried on each instance in turn until
/// one acknowledges it. `None` if none did within the attempts.
async fn commit_anywhere(
    apis: &[Api],
    prefer: usize,
    token: &str,
    path: &str,
    base: Option<i64>,
    bytes: &[u8],
    key: &str,
) -> Option<VersionInfo> {
    for attempt in 0..20 {
        let api = &apis[(prefer + attempt) % apis.len()];
        if let Some(v) = api.try_commit("p", token, path, base, bytes, key).await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The head of `path` from whichever instance answers.
async fn read_anywhere(apis: &[Api], prefer: usize, token: &str, path: &str) -> Checkout {
    for attempt in 0..20 {
        let api = &apis[(prefer + attempt) % apis.len()];
        let url = api.file_url("p", path);
        if let Ok(resp) = api.get(&url, token).send().await {
            if resp.status().is_success() {
                let version = resp.headers()[HEADER_VERSION].to_str().unwrap().parse().unwrap();
                let node = resp.headers()[HEADER_NODE].to_str().unwrap().parse().unwrap();
                let hash = resp.headers()[HEADER_HASH].to_str().unwrap().to_string();
                let status = resp.headers()[HEADER_STATUS].to_str().unwrap().to_string();
                let mtime = resp.headers()[HEADER_MTIME].to_str().unwrap().to_string();
                let atime = resp
                    .headers()
                    .get(HEADER_ATIME)
                    .map(|v| v.to_str().unwrap().to_string());
                if let Ok(bytes) = resp.bytes().await {
                    return Checkout {
                        bytes: bytes.to_vec(),
                        node,
                        version,
                        hash,
                        status,
                        mtime,
                        atime,
                    };
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no instance could read {path}");
}

fn task_board(tasks: usize) -> String {
    (0..tasks).map(|k| format!("task {k}: -\n")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_one_instance_loses_no_acknowledged_commit() {
    const TASKS: usize = 6;
    const COMMITS_PER_TASK: usize = 40;
    const KILL_AFTER: usize = 60;
    let Some(mut cluster) = Cluster::start("kill_9_of_one_instance_loses_no_acknowledged_commit", 2).await else {
        return;
    };
    let t = cluster.servers[0].project_with_token("p").await;
    cluster.servers[0]
        .commit("p", &t, "shared/board.txt", None, task_board(TASKS).as_bytes())
        .await
        .unwrap();
    let apis: Vec<Api> = cluster.servers.iter().map(|s| s.with_own_client()).collect();
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let apis: Vec<Api> = apis.iter().map(Api::with_own_client).collect();
        let t = t.clone();
        let acked = acked.clone();
        // half the tasks prefer the instance that will be killed
        let prefer = task % 2;
        tasks.push(tokio::spawn(async move {
            let mut heads: HashMap<String, i64> = HashMap::new();
            let mut own: Vec<(String, i64, BlobHash)> = Vec::new();
            let mut shared: Vec<(i64, usize)> = Vec::new();
            for iter in 0..COMMITS_PER_TASK {
                let key = format!("t{task}-i{iter}");
                if iter % 4 == 3 {
                    // a file every task edits: only my line, on top of the head I read
                    let co = read_anywhere(&apis, prefer, &t, "shared/board.txt").await;
                    let text = String::from_utf8(co.bytes).unwrap();
                    let edited: String = text
                        .lines()
                        .map(|l| {
                            if l.starts_with(&format!("task {task}:")) {
                                format!("task {task}: iteration {iter}\n")
                            } else {
                                format!("{l}\n")
                            }
                        })
                        .collect();
                    let v = commit_anywhere(
                        &apis,
                        prefer,
                        &t,
                        "shared/board.txt",
                        Some(co.version),
                        edited.as_bytes(),
                        &key,
                    )
                    .await
                    .unwrap_or_else(|| panic!("task {task} commit {iter} was never acknowledged"));
                    shared.push((v.version, iter));
                } else {
                    let path = format!("w{task}/file{}.txt", iter % 3);
                    let bytes = format!("task {task} iteration {iter}\n")
                        .repeat(1 + iter % 20)
                        .into_bytes();
                    let base = heads.get(&path).copied();
                    let v = commit_anywhere(&apis, prefer, &t, &path, base, &bytes, &key)
                        .await
                        .unwrap_or_else(|| panic!("task {task} commit {iter} was never acknowledged"));
                    assert_eq!(v.hash, BlobHash::of(&bytes), "own files never merge");
                    heads.insert(path.clone(), v.version);
                    own.push((path, v.version, v.hash));
                }
                acked.fetch_add(1, Ordering::SeqCst);
            }
            (task, own, shared)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.servers[1].kill_9();
    let killed_at = acked.load(Ordering::SeqCst);
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("writer task"));
    }
    let total: usize = results.iter().map(|(_, own, shared)| own.len() + shared.len()).sum();
    assert_eq!(total, TASKS * COMMITS_PER_TASK);
    assert!(killed_at < total, "some commits must be acknowledged after the kill");

    // everything acknowledged, by either instance, is readable through the survivor
    let a = &cluster.servers[0];
    let mut by_path: HashMap<String, Vec<i64>> = HashMap::new();
    for (_, own, _) in &results {
        for (path, version, hash) in own {
            let co = a
                .read("p", &t, path, Some(*version))
                .await
                .unwrap_or_else(|e| panic!("acknowledged {path} v{version} is gone: {e:?}"));
            assert_eq!(co.hash, hash.to_string(), "{path} v{version}");
            assert_eq!(&BlobHash::of(&co.bytes), hash, "{path} v{version} bytes");
            by_path.entry(path.clone()).or_default().push(*version);
        }
    }
    // a retried commit (same idempotency key) never made a second version
    for (path, mut versions) in by_path {
        let hist = a.history("p", &t, &path).await;
        assert_linear(&path, &hist);
        versions.sort();
        assert_eq!(
            versions,
            (1..=hist.len() as i64).collect::<Vec<_>>(),
            "{path}: exactly one version per acknowledged commit"
        );
    }
    // the shared file: each acknowledged edit is in its version, the last ones in the head
    let hist = a.history("p", &t, "shared/board.txt").await;
    assert_linear("shared/board.txt", &hist);
    let mut shared_versions = Vec::new();
    let mut last = BTreeMap::new();
    for (task, _, shared) in &results {
        for (version, iter) in shared {
            let co = a.read("p", &t, "shared/board.txt", Some(*version)).await.unwrap();
            let text = String::from_utf8(co.bytes).unwrap();
            assert!(
                text.contains(&format!("task {task}: iteration {iter}\n")),
                "shared/board.txt v{version} lacks task {task}'s edit {iter}:\n{text}"
            );
            shared_versions.push(*version);
            last.insert(*task, *iter);
        }
    }
    shared_versions.sort();
    assert_eq!(
        shared_versions,
        (2..=hist.len() as i64).collect::<Vec<_>>(),
        "shared/board.txt: exactly one version per acknowledged commit"
    );
    let head = String::from_utf8(a.read_bytes("p", &t, "shared/board.txt").await).unwrap();
    let want: String = (0..TASKS)
        .map(|k| format!("task {k}: iteration {}\n", last[&k]))
        .collect();
    assert_eq!(head, want, "the shared head holds every task's last edit");
    let events = all_changes(a, "p", &t).await;
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "event seqs are gap-free after the crash"
    );
}

/// Every live entry's parent directory is live: no file outlives (or escapes)
/// a directory that was renamed or deleted at the same moment.
fn assert_tree_whole(entries: &[TreeEntry]) {
    let dirs: std::collections::HashSet<&str> = entries
        .iter()
        .filter(|e| e.kind == NodeKind::Dir)
        .map(|e| e.path.as_str())
        .collect();
    for e in entries {
        if let Some((parent, _)) = e.path.rsplit_once('/') {
            assert!(
                dirs.contains(parent),
                "{} is live but its parent {parent} is not",
                e.path
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_races_between_instances_keep_the_tree_whole() {
    const FILES: usize = 30;
    let Some(cluster) = Cluster::start("namespace_races_between_instances_keep_the_tree_whole", 2).await else {
        return;
    };
    let (a, b) = (&cluster.servers[0], &cluster.servers[1]);
    let t = a.project_with_token("p").await;
    a.commit("p", &t, "d/seed.txt", None, b"seed\n").await.unwrap();

    // files created under d/ through both instances while B keeps moving d away
    let mut creators = Vec::new();
    for k in 0..2 {
        let api = cluster.servers[k].with_own_client();
        let t = t.clone();
        creators.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0..FILES {
                let path = format!("d/sub{k}/f{i}.txt");
                let v = api
                    .commit("p", &t, &path, None, format!("{k} {i}\n").as_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("create {path}: {e:?}"));
                made.push((v.node, format!("/sub{k}/f{i}.txt")));
            }
            made
        }));
    }
    let renamer = {
        let api = b.with_own_client();
        let t = t.clone();
        tokio::spawn(async move {
            let mut moved = 0;
            for round in 0..40 {
                let (from, to) = ("d".to_string(), format!("e{round}"));
                let resp = api
                    .post(&api.purl("p", "/rename"), &t, &json!({"from": from, "to": to}))
                    .send()
                    .await
                    .expect("rename request");
                if resp.status().is_success() {
                    moved += 1;
                } else {
                    // `not_found`: the creators have not made d again yet
                    let err = error_of(resp).await;
                    assert_eq!(err.code, "not_found", "rename {from} -> {to}: {err:?}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            moved
        })
    };
    // the same mkdir -p from 8 tasks on both instances: one creates, all succeed
    let mut mkdirs = Vec::new();
    for k in 0..8 {
        let api = cluster.servers[k % 2].with_own_client();
        let t = t.clone();
        mkdirs.push(tokio::spawn(async move {
            let (status, v): (_, VersionInfo) =
                send_with_status(api.post(&api.purl("p", "/mkdir"), &t, &json!({"path": "x/y/z"})))
                    .await
                    .unwrap_or_else(|e| panic!("mkdir: {e:?}"));
            (status, v.node)
        }));
    }
    // a directory deleted recursively through B while A creates files in it
    let deleter = {
        let api = b.with_own_client();
        let t = t.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                let resp = api
                    .post(&api.purl("p", "/delete"), &t, &json!({"path": "g", "recursive": true}))
                    .send()
                    .await
                    .expect("delete request");
                if !resp.status().is_success() {
                    let err = error_of(resp).await;
                    assert_eq!(err.code, "not_found", "delete g: {err:?}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut g_files = Vec::new();
    for i in 0..FILES {
        let path = format!("g/f{i}.txt");
        let v = a
            .commit("p", &t, &path, None, format!("g {i}\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("create {path}: {e:?}"));
        g_files.push((path, v.node));
    }

    let mut made = Vec::new();
    for c in creators {
        made.extend(c.await.expect("creator"));
    }
    let moved = renamer.await.expect("renamer");
    deleter.await.expect("deleter");
    let mut statuses = Vec::new();
    for m in mkdirs {
        statuses.push(m.await.expect("mkdir task"));
    }
    eprintln!("{} files created while d moved {moved} times", made.len());
    assert!(moved >= 2, "the renames must race the creates");

    let tree = a.tree("p", &t, &[("recursive", "true")]).await.unwrap();
    assert_tree_whole(&tree.entries);
    let live: HashMap<i64, &TreeEntry> = tree.entries.iter().map(|e| (e.id, e)).collect();
    for (node, suffix) in &made {
        let entry = live
            .get(node)
            .unwrap_or_else(|| panic!("created node {node} (…{suffix}) is not live"));
        let top = entry.path.strip_suffix(suffix.as_str()).unwrap_or("?");
        assert!(
            top == "d" || (top.starts_with('e') && top[1..].parse::<u32>().is_ok()),
            "node {node} ended up at {}",
            entry.path
        );
    }
    for (path, node) in &g_files {
        let hist = a.history("p", &t, path).await;
        assert_eq!(hist[0].node, *node, "{path}");
        assert_linear(path, &hist);
        if !hist[0].deleted {
            assert!(live.contains_key(node), "{path} is not deleted, so it is live");
        }
    }
    let nodes: std::collections::HashSet<i64> = statuses.iter().map(|s| s.1).collect();
    assert_eq!(nodes.len(), 1, "every mkdir names the same directory: {statuses:?}");
    let created = statuses.iter().filter(|s| s.0 == reqwest::StatusCode::CREATED).count();
    assert_eq!(created, 1, "exactly one mkdir created x/y/z: {statuses:?}");
    let events = all_changes(a, "p", &t).await;
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "event seqs are gap-free"
    );
}
