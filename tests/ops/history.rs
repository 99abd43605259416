//! Project history (`log` without a path, `diff --since`) and the
//! machine-readable CLI (`--json`, completions, man pages).

use super::*;

// ----- project history -----

async fn commit_as(
    server: &TestServer,
    project: &str,
    token: &str,
    path: &str,
    agent: &str,
    bytes: &[u8],
) -> VersionInfo {
    let hash = server.upload(project, token, bytes).await;
    let mut req = commit_request(path, None, hash);
    req.agent_id = Some(agent.to_string());
    if let Ok(head) = server.history_page(project, token, path, None, Some(1)).await {
        req.base_version = head.versions.first().filter(|v| !v.deleted).map(|v| v.version);
    }
    server.commit_req(project, token, &req).await.expect("commit")
}

/// `GET .../activity` and `contextfs log` without a path: every version of
/// the project newest first, filtered by agent, time and path prefix, paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_history_shows_who_changed_what() {
    let server = TestServer::start().await;
    let token = server.project_with_token("hist").await;
    commit_as(&server, "hist", &token, "docs/a.md", "alice", b"a1\n").await;
    commit_as(&server, "hist", &token, "src/main.rs", "bob", b"fn main() {}\n").await;
    commit_as(&server, "hist", &token, "docs/a.md", "alice", b"a2\n").await;
    commit_as(&server, "hist", &token, "docs-old.md", "bob", b"not below docs/\n").await;
    let activity = |query: Vec<(&'static str, String)>| {
        let server = &server;
        let token = token.clone();
        async move {
            send::<ActivityPage>(server.get(&server.purl("hist", "/activity"), &token).query(&query))
                .await
                .expect("activity")
        }
    };

    let all = activity(vec![]).await;
    let seen: Vec<(String, i64, Option<String>)> = all
        .entries
        .iter()
        .filter(|e| e.op != VersionOp::Mkdir)
        .map(|e| (e.path.clone(), e.version, e.agent_id.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("docs-old.md".to_string(), 1, Some("bob".to_string())),
            ("docs/a.md".to_string(), 2, Some("alice".to_string())),
            ("src/main.rs".to_string(), 1, Some("bob".to_string())),
            ("docs/a.md".to_string(), 1, Some("alice".to_string())),
        ],
        "newest first"
    );
    let alice = activity(vec![("agent", "alice".into())]).await;
    assert!(alice.entries.iter().all(|e| e.agent_id.as_deref() == Some("alice")));
    // Her two writes, and the `docs` directory her first write created.
    let ops: Vec<VersionOp> = alice.entries.iter().map(|e| e.op).collect();
    assert_eq!(ops, [VersionOp::Write, VersionOp::Create, VersionOp::Mkdir]);
    let docs = activity(vec![("path_prefix", "docs".into())]).await;
    let paths: Vec<&str> = docs.entries.iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.iter().all(|p| *p == "docs" || p.starts_with("docs/")),
        "{paths:?}"
    );
    assert!(paths.contains(&"docs/a.md"));
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert!(activity(vec![("since", future)]).await.entries.is_empty());
    let bad = expect_error(
        server
            .get(&server.purl("hist", "/activity"), &token)
            .query(&[("since", "yesterday")]),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert!(bad.message.contains("RFC 3339"), "{bad:?}");

    // Pages of two cover everything once.
    let mut paged = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut q = vec![("limit", "2".to_string())];
        if let Some(b) = before {
            q.push(("before", b.to_string()));
        }
        let page = activity(q).await;
        paged.extend(page.entries.iter().map(|e| e.seq));
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(paged, all.entries.iter().map(|e| e.seq).collect::<Vec<_>>());

    // The CLI: a table, and --json with the route's entries.
    let table = cli_ok(&server, &token, "hist", &["log", "--agent", "bob"]);
    assert!(
        table.contains("src/main.rs") && table.contains("docs-old.md"),
        "{table}"
    );
    assert!(!table.contains("docs/a.md"), "{table}");
    let listed: Vec<ActivityEntry> = json_of(&cli_ok(
        &server,
        &token,
        "hist",
        &["log", "--json", "--since", "1h", "--path-prefix", "/docs/"],
    ));
    assert_eq!(
        listed
            .iter()
            .filter(|e| e.path == "docs/a.md")
            .map(|e| e.version)
            .collect::<Vec<_>>(),
        vec![2, 1]
    );
}

/// `contextfs diff --since T`: one line (or JSON object) per changed file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_since_summarises_each_changed_file() {
    let server = TestServer::start().await;
    let token = server.project_with_token("sum").await;
    commit_as(&server, "sum", &token, "old.txt", "setup", b"before the window\n").await;
    commit_as(&server, "sum", &token, "gone.txt", "setup", b"to delete\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    commit_as(&server, "sum", &token, "old.txt", "carol", b"edited in the window\n").await;
    commit_as(&server, "sum", &token, "old.txt", "dave", b"edited twice\n").await;
    commit_as(&server, "sum", &token, "new.txt", "carol", b"brand new\n").await;
    let out = cli_ok(&server, &token, "sum", &["rm", "gone.txt"]);
    assert!(!out.is_empty());

    let text = cli_ok(&server, &token, "sum", &["diff", "--since", &since]);
    assert!(
        text.contains("M old.txt  v1..v3, 2 version(s), clean by carol, dave"),
        "{text}"
    );
    assert!(text.contains("A new.txt  v1, 1 version(s), clean by carol"), "{text}");
    assert!(text.contains("D gone.txt"), "{text}");
    let changes: Vec<serde_json::Value> =
        json_of(&cli_ok(&server, &token, "sum", &["diff", "--since", &since, "--json"]));
    let kinds: Vec<(String, String)> = changes
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap_or("").to_string(),
                c["change"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("gone.txt".to_string(), "deleted".to_string()),
            ("new.txt".to_string(), "added".to_string()),
            ("old.txt".to_string(), "modified".to_string()),
        ]
    );
}

// ----- machine-readable CLI -----

/// `--json` on the listing commands prints the documented shapes;
/// completions come out for bash, zsh and fish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_print_json_and_completions_cover_the_commands() {
    let server = TestServer::start().await;
    let token = server.project_with_token("shapes").await;
    server
        .commit("shapes", &token, "dir/file.txt", None, b"x")
        .await
        .expect("commit");
    let projects: Vec<ProjectInfo> = json_of(&cli_ok(
        &server,
        &server.admin,
        "shapes",
        &["project", "list", "--json"],
    ));
    assert_eq!(projects.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["shapes"]);
    let tokens: Vec<TokenInfo> = json_of(&cli_ok(&server, &server.admin, "shapes", &["token", "list", "--json"]));
    assert_eq!(tokens.len(), 1);
    let listing: TreeListing = json_of(&cli_ok(&server, &token, "shapes", &["ls", "-r", "--json"]));
    let paths: Vec<&str> = listing.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["dir", "dir/file.txt"]);
    let history: HistoryPage = json_of(&cli_ok(&server, &token, "shapes", &["log", "dir/file.txt", "--json"]));
    assert_eq!(history.versions.len(), 1);
    let skills: SkillsListing = json_of(&cli_ok(&server, &token, "shapes", &["skills", "list", "--json"]));
    assert!(skills.skills.is_empty());

    // Sandbox records hold tokens: `list --json` shows what identifies a sandbox, no secret.
    let home = tempfile::tempdir().expect("temp dir");
    let state = home.path().join("state/contextfs/daytona");
    std::fs::create_dir_all(&state).expect("state dir");
    for (id, provider) in [("sb-daytona-1", "daytona"), ("sb-e2b-1", "e2b")] {
        let record = serde_json::json!({
            "id": id, "provider": provider, "api_url": "http://127.0.0.1:9", "endpoint": null,
            "access_token": "envd-secret-access", "project": "shapes", "server": server.base,
            "sandbox_server": server.base, "token": "cfs_sandbox_secret_token", "token_id": "tok_1",
            "mode": "sync", "binary": "/usr/local/bin/contextfs", "created_at": "2026-12-06T00:00:00Z"
        });
        std::fs::write(state.join(format!("{id}.json")), record.to_string()).expect("record");
    }
    let env = ClientEnv {
        root: home.path(),
        server: &server.base,
        token: &token,
        project: "shapes",
    };
    for (provider, id) in [("daytona", "sb-daytona-1"), ("e2b", "sb-e2b-1")] {
        let out = isolated_command(env!("CARGO_BIN_EXE_contextfs"), &env)
            .args([provider, "list", "--json"])
            .output()
            .expect("list");
        assert!(out.status.success(), "{}", both(&out));
        let text = stdout(&out);
        let listed: Vec<serde_json::Value> = json_of(&text);
        assert_eq!(listed.len(), 1, "{text}");
        assert_eq!(
            (listed[0]["id"].as_str(), listed[0]["mode"].as_str()),
            (Some(id), Some("sync"))
        );
        assert!(!text.contains("secret"), "{text}");
    }

    let bash = cli_ok(&server, &token, "shapes", &["completions", "bash"]);
    assert!(
        bash.contains("_contextfs()") && bash.contains("gc") && bash.contains("--keep-days"),
        "bash"
    );
    let zsh = cli_ok(&server, &token, "shapes", &["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef contextfs"), "{}", &zsh[..zsh.len().min(200)]);
    let fish = cli_ok(&server, &token, "shapes", &["completions", "fish"]);
    assert!(fish.contains("complete -c contextfs"), "fish");
    let man = tempfile::tempdir().expect("temp dir");
    cli_ok(&server, &token, "shapes", &["man", &man.path().display().to_string()]);
    let page = std::fs::read_to_string(man.path().join("contextfs-gc.1")).expect("contextfs-gc.1");
    assert!(page.contains(".TH") && page.contains("dry"), "{page}");
}
