//! Health, identity, projects and tokens.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn health_whoami_projects_and_tokens() {
    let s = TestServer::start().await;

    // health needs no token
    let health: Health = send(s.http.get(s.url("/health"))).await.expect("health");
    assert_eq!(health.status, "ok");
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));

    let me: WhoAmI = send(s.get(&s.url("/whoami"), &s.admin)).await.expect("whoami admin");
    assert!(me.admin);
    assert_eq!(me.project, None);
    assert_eq!(me.access, Access::ReadWrite);
    assert_eq!(me.token_id, "admin");

    // projects: create (201), duplicate (409 exists), bad name (400), list, get
    let alpha = s.create_project("alpha").await;
    assert_eq!(alpha.cursor, 0);
    s.create_project("beta").await;
    expect_error(
        s.post(&s.url("/projects"), &s.admin, &json!({"name": "alpha"})),
        StatusCode::CONFLICT,
        "exists",
    )
    .await;
    expect_error(
        s.post(&s.url("/projects"), &s.admin, &json!({"name": "Bad Name"})),
        StatusCode::BAD_REQUEST,
        "invalid_name",
    )
    .await;
    let list: Vec<ProjectInfo> = send(s.get(&s.url("/projects"), &s.admin)).await.unwrap();
    assert_eq!(
        list.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    let got: ProjectInfo = send(s.get(&s.purl("alpha", ""), &s.admin)).await.unwrap();
    assert_eq!(
        (got.name.as_str(), got.created_at.as_str()),
        ("alpha", alpha.created_at.as_str())
    );
    expect_error(
        s.get(&s.purl("gamma", ""), &s.admin),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // tokens: create (201), whoami as the token, list, revoke, revoked -> 401
    let rw = s.token("alpha", Access::ReadWrite).await;
    let ro = s.token("alpha", Access::Read).await;
    assert!(rw.token.starts_with("cfs_"));
    assert_ne!(rw.token, ro.token);
    assert!(!rw.info.revoked);
    let me: WhoAmI = send(s.get(&s.url("/whoami"), &ro.token)).await.unwrap();
    assert_eq!(
        (me.project.as_deref(), me.access, me.admin, me.token_id.as_str()),
        (Some("alpha"), Access::Read, false, ro.info.id.as_str())
    );

    // a project token sees only its own project
    let list: Vec<ProjectInfo> = send(s.get(&s.url("/projects"), &rw.token)).await.unwrap();
    assert_eq!(list.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["alpha"]);
    // only the admin manages tokens and projects
    expect_error(
        s.get(&s.purl("alpha", "/tokens"), &rw.token),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        s.post(&s.url("/projects"), &rw.token, &json!({"name": "mine"})),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        s.req(
            Method::DELETE,
            &s.url(&format!("/tokens/{}", ro.info.id)),
            Some(&rw.token),
        ),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let tokens: Vec<TokenInfo> = send(s.get(&s.purl("alpha", "/tokens"), &s.admin)).await.unwrap();
    let ids: Vec<&str> = tokens.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(tokens.len(), 2);
    assert!(ids.contains(&rw.info.id.as_str()) && ids.contains(&ro.info.id.as_str()));
    assert!(tokens.iter().all(|t| !t.revoked && t.project == "alpha"));
    assert!(
        !serde_json::to_string(&tokens).unwrap().contains(&rw.token),
        "token list must not leak secrets"
    );

    let revoke = || {
        s.req(
            Method::DELETE,
            &s.url(&format!("/tokens/{}", rw.info.id)),
            Some(&s.admin),
        )
        .send()
    };
    assert_eq!(revoke().await.unwrap().status(), StatusCode::NO_CONTENT);
    let err = expect_error(
        s.get(&s.url("/whoami"), &rw.token),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert!(err.message.contains("revoked"), "{err:?}");
    expect_error(
        s.get(&s.purl("alpha", "/tree"), &rw.token),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    // Revoking again changes nothing and records nothing new.
    assert_eq!(revoke().await.unwrap().status(), StatusCode::NO_CONTENT);
    let audit: AuditPage = send(s.get(&s.purl("alpha", "/audit"), &s.admin)).await.unwrap();
    let revokes = audit
        .entries
        .iter()
        .filter(|e| e.action == "revoke_token" && e.detail.as_deref() == Some(rw.info.id.as_str()))
        .count();
    assert_eq!(revokes, 1, "{:?}", audit.entries);
    let tokens: Vec<TokenInfo> = send(s.get(&s.purl("alpha", "/tokens"), &s.admin)).await.unwrap();
    assert!(tokens.iter().find(|t| t.id == rw.info.id).unwrap().revoked);
    assert!(!tokens.iter().find(|t| t.id == ro.info.id).unwrap().revoked);
    // the other token still works
    send::<WhoAmI>(s.get(&s.url("/whoami"), &ro.token))
        .await
        .expect("unrevoked token still works");
    expect_error(
        s.req(Method::DELETE, &s.url("/tokens/tok_nonexistent"), Some(&s.admin)),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}
