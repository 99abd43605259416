//! The change feed (long-poll) and the audit log.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn changes_feed_and_long_poll() {
    let s = TestServer::start().await;
    let t = s.project_with_token("p").await;
    let a = s.commit("p", &t, "a.md", None, b"a").await.unwrap();
    let b = s.commit("p", &t, "b.md", None, b"b").await.unwrap();

    let all = s.changes("p", &t, 0, 0).await.unwrap();
    assert_eq!(
        all.events
            .iter()
            .map(|e| (e.path.as_str(), e.version, e.op))
            .collect::<Vec<_>>(),
        [("a.md", 1, VersionOp::Create), ("b.md", 1, VersionOp::Create)]
    );
    assert_eq!((all.events[0].node, all.events[1].node), (a.node, b.node));
    assert!(!all.more);
    let cursor = all.cursor;
    assert_eq!(cursor, all.events[1].seq);
    let limited: ChangesPage = send(
        s.get(&s.purl("p", "/changes"), &t)
            .query(&[("since", "0"), ("limit", "1")]),
    )
    .await
    .unwrap();
    assert_eq!(
        (limited.events.len(), limited.more, limited.cursor),
        (1, true, all.events[0].seq)
    );
    // a caught-up reader with no timeout gets nothing, cursor unchanged
    let none = s.changes("p", &t, cursor, 0).await.unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.cursor, cursor);
    // a short long-poll with nothing new times out empty-handed
    let none = s.changes("p", &t, cursor, 200).await.unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.cursor, cursor);

    // a long-poll started before a commit returns with that commit's event
    let poller = s.with_own_client();
    let mut poll = tokio::spawn(async move { poller.changes("p", &poller.admin, cursor, 5000).await });
    // the poll has nothing to return yet: it must still be waiting
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut poll)
            .await
            .is_err(),
        "the long-poll returned before any change"
    );
    let v = s.commit("p", &t, "a.md", Some(1), b"a2").await.unwrap();
    let page = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("long-poll did not finish")
        .expect("poll task")
        .expect("poll response");
    // the timeout path returns no events, so an event here means it was woken
    assert_eq!(
        page.events.len(),
        1,
        "the long-poll must return the commit, not time out: {page:?}"
    );
    let ev = &page.events[0];
    assert_eq!(
        (ev.node, ev.version, ev.path.as_str(), &ev.hash, ev.deleted),
        (a.node, v.version, "a.md", &v.hash, false)
    );
    assert_eq!(page.cursor, ev.seq);
    assert_eq!(s.snapshot("p").await.0, page.cursor);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_records_writes_with_actor_and_agent() {
    let s = TestServer::start().await;
    s.create_project("p").await;
    let tok = s.token("p", Access::ReadWrite).await;
    let t = tok.token.clone();
    let hash = s.upload("p", &t, b"audited").await;
    let mut req = commit_request("log.md", None, hash);
    req.agent_id = Some("agent-7".into());
    let v1 = s.commit_req("p", &t, &req).await.unwrap();
    send::<VersionInfo>(
        s.req(Method::PUT, &s.file_url("p", "log.md"), Some(&t))
            .header(HEADER_AGENT, "agent-8")
            .body("second"),
    )
    .await
    .unwrap();
    send::<DeleteResponse>(s.post(
        &s.purl("p", "/delete"),
        &s.admin,
        &json!({"path": "log.md", "agent_id": "janitor"}),
    ))
    .await
    .unwrap();

    let page: AuditPage = send(s.get(&s.purl("p", "/audit"), &t)).await.unwrap();
    let e = &page.entries;
    assert!(e.windows(2).all(|w| w[0].seq < w[1].seq));
    let create_token = e
        .iter()
        .find(|a| a.action == "create_token")
        .expect("token creation is audited");
    assert_eq!(
        (create_token.actor.as_str(), create_token.detail.as_deref()),
        ("admin", Some(tok.info.id.as_str()))
    );
    let writes: Vec<_> = e.iter().filter(|a| a.path.as_deref() == Some("log.md")).collect();
    let got: Vec<_> = writes
        .iter()
        .map(|a| (a.action.as_str(), a.actor.as_str(), a.agent_id.as_deref(), a.version))
        .collect();
    assert_eq!(
        got,
        [
            ("create", tok.info.id.as_str(), Some("agent-7"), Some(1)),
            ("write", tok.info.id.as_str(), Some("agent-8"), Some(2)),
            ("delete", "admin", Some("janitor"), Some(3)),
        ]
    );
    assert_eq!(writes[0].status.as_deref(), Some("clean"));
    assert_eq!(v1.author, tok.info.id);
    // paging with since / next_since
    let first: AuditPage = send(s.get(&s.purl("p", "/audit"), &t).query(&[("limit", "1")]))
        .await
        .unwrap();
    assert_eq!(first.entries.len(), 1);
    let since = first.next_since.expect("more entries follow");
    let rest: AuditPage = send(s.get(&s.purl("p", "/audit"), &t).query(&[("since", since)]))
        .await
        .unwrap();
    assert_eq!(rest.entries.len(), e.len() - 1);
    assert_eq!(rest.next_since, None);
}
