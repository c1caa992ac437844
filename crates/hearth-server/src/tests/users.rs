//! Users and ownership over the API, against the in-memory node: the one rule
//! ([`Manager::owned`]) on every per-workspace route, 401/403, user removal.

use super::*;

on_both_backends!(
    someone_elses_workspace_is_a_missing_one,
    tokens_admin_routes_and_user_removal,
    the_token_file_token_is_admins_at_every_start,
    rate_limit_is_per_user,
    an_admin_makes_a_user_an_admin_and_back,
);

/// Adds a user through the API with the admin token; returns its token.
pub(super) async fn add_user(h: &Harness, name: &str, admin: bool) -> String {
    let body = serde_json::json!({ "name": name, "admin": admin }).to_string();
    let (s, b) = h
        .call(Method::POST, "/v1/users", Some(TOKEN), Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let u: NewUser = serde_json::from_slice(&b).unwrap();
    assert_eq!((u.user.name.as_str(), u.user.admin), (name, admin));
    u.token
}

/// Asks for workspace `name` (busybox, a git URL: a path is admins' only) as the holder
/// of `token`.
pub(super) async fn post_workspace(h: &Harness, token: &str, name: &str) -> (StatusCode, Vec<u8>) {
    let body =
        serde_json::json!({"source": "https://git.example/x", "image": "busybox", "name": name});
    h.call(
        Method::POST,
        "/v1/workspaces",
        Some(token),
        Some(body.to_string()),
    )
    .await
}

/// Creates workspace `name` as the holder of `token`.
pub(super) async fn create_as(h: &Harness, token: &str, name: &str) {
    let (s, b) = post_workspace(h, token, name).await;
    assert_eq!(s, StatusCode::OK);
    let last = b.split(|c| *c == b'\n').rfind(|l| !l.is_empty()).unwrap();
    let line: StreamLine<Workspace> = serde_json::from_slice(last).unwrap();
    assert!(matches!(line, StreamLine::Result(_)), "{line:?}");
}

async fn listed(h: &Harness, token: &str) -> Vec<(String, String)> {
    let (s, b) = h
        .call(Method::GET, "/v1/workspaces", Some(token), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let v: Vec<Workspace> = serde_json::from_slice(&b).unwrap();
    v.into_iter().map(|w| (w.name, w.owner)).collect()
}

/// Every route that reaches a workspace by name, with a body it accepts (so the request
/// gets as far as the ownership rule).
fn workspace_routes(name: &str) -> Vec<(Method, String, Option<String>)> {
    let u = |s: &str| format!("/v1/workspaces/{name}{s}");
    vec![
        (Method::GET, u(""), None),
        (Method::GET, u("/inspect"), None),
        (Method::POST, u("/start"), None),
        (Method::POST, u("/stop"), None),
        (Method::GET, u("/logs"), None),
        (
            Method::PUT,
            u("/egress"),
            Some(r#"{"deny":["10.0.0.0/8"]}"#.into()),
        ),
        (
            Method::PATCH,
            u("/egress"),
            Some(r#"{"allow_all":true}"#.into()),
        ),
        (Method::PATCH, u("/limits"), Some(r#"{"pids":100}"#.into())),
        (Method::PATCH, u(""), Some(r#"{"idle_timeout":60}"#.into())),
        (Method::GET, u("/snapshots"), None),
        (Method::POST, u("/snapshots"), None),
        (Method::GET, u("/store-usage"), None),
        (Method::POST, u("/move"), Some("{}".into())),
        (Method::GET, u("/ports"), None),
        (
            Method::PUT,
            u("/ports/8080"),
            Some(r#"{"visibility":"public"}"#.into()),
        ),
        (Method::POST, u("/ports/8080/login"), None),
        (
            Method::POST,
            u("/fork"),
            Some(r#"{"snapshot":"0123456789abcdef0123456789abcdef","name":"copy"}"#.into()),
        ),
        (Method::DELETE, u(""), None),
        // A removed workspace of that name (someone else's is a missing one too).
        (
            Method::POST,
            format!("/v1/deleted-workspaces/{name}/restore"),
            Some("{}".into()),
        ),
    ]
}

async fn someone_elses_workspace_is_a_missing_one(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("busybox")).await;
    let alice = add_user(&h, "alice", false).await;
    let bob = add_user(&h, "bob", false).await;
    create_as(&h, &alice, "wa").await;
    create_as(&h, &bob, "wb").await;
    assert_eq!(listed(&h, &alice).await, [("wa".into(), "alice".into())]);
    assert_eq!(listed(&h, &bob).await, [("wb".into(), "bob".into())]);
    assert_eq!(
        listed(&h, TOKEN).await,
        [("wa".into(), "alice".into()), ("wb".into(), "bob".into())]
    );

    let routes = workspace_routes("wa")
        .into_iter()
        .zip(workspace_routes("zz"));
    for ((m, uri, body), (_, missing_uri, _)) in routes {
        let (s, theirs) = h.call(m.clone(), &uri, Some(&bob), body.clone()).await;
        let (s2, missing) = h.call(m.clone(), &missing_uri, Some(&bob), body).await;
        assert_eq!(
            (s, s2),
            (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND),
            "{m} {uri}"
        );
        let theirs = String::from_utf8(theirs).unwrap();
        assert_eq!(
            theirs.replace("wa", "zz"),
            String::from_utf8(missing).unwrap(),
            "{m} {uri}"
        );
    }
    // The list above is every documented route that takes a workspace name (exec and
    // port-forward, WebSockets, are checked end to end in crates/hearth/tests): a new route
    // must join it, and so meets this check too.
    let (_, b) = h.call(Method::GET, "/v1/openapi.json", None, None).await;
    let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.contains("{name}") || path.ends_with("/exec") || path.ends_with("/forward") {
            continue;
        }
        for m in item.as_object().unwrap().keys() {
            documented.push(format!(
                "{} {}",
                m.to_uppercase(),
                path.replace("{name}", "wa").replace("{port}", "8080")
            ));
        }
    }
    let mut listed_routes: Vec<String> = workspace_routes("wa")
        .into_iter()
        .map(|(m, uri, _)| format!("{m} {uri}"))
        .collect();
    documented.sort();
    listed_routes.sort();
    assert_eq!(documented, listed_routes);

    // Nothing happened to it: running, no policy, not removed, no fork.
    let w = h
        .manager
        .get(&crate::auth::Caller::admin(), "wa")
        .await
        .unwrap();
    assert_eq!((w.state, w.egress.deny.len()), (WorkspaceState::Running, 0));
    assert!(h.node.st().removed.is_empty());
    assert_eq!(h.manager.lock_count(), 0);

    // Its owner and an admin get past the rule on every route (the fake node has no
    // snapshot store, so those routes answer 400 after it). Port login links need the
    // port proxy's URLs and key, as a server with a proxy has them.
    let key_dir = tempfile::tempdir().unwrap();
    h.manager.set_port_urls(
        crate::manager::ports::PortUrls {
            https: false,
            domain: "localhost".into(),
            port: 7080,
        },
        crate::proxy::login::CookieKey::load(key_dir.path()).unwrap(),
    );
    for token in [alice.as_str(), TOKEN] {
        for (m, uri, body) in workspace_routes("wa") {
            if m == Method::DELETE
                || uri.ends_with("/fork")
                || uri.ends_with("/restore")
                || uri.ends_with("/move")
            {
                continue;
            }
            let (s, b) = h.call(m.clone(), &uri, Some(token), body).await;
            let b = String::from_utf8_lossy(&b);
            assert!(
                s != StatusCode::NOT_FOUND && s != StatusCode::FORBIDDEN,
                "{m} {uri}: {s} {b}"
            );
            if !uri.contains("/snapshots") && !uri.ends_with("/store-usage") {
                assert!(s.is_success(), "{m} {uri}: {s} {b}");
            }
        }
    }
    // Moves are for admins, even of one's own workspace; with one node there is
    // nowhere to go.
    let mv = |token: String| {
        let h = &h;
        async move {
            h.call(
                Method::POST,
                "/v1/workspaces/wa/move",
                Some(&token),
                Some("{}".into()),
            )
            .await
            .0
        }
    };
    assert_eq!(mv(alice.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(mv(TOKEN.to_string()).await, StatusCode::CONFLICT);
    // Names are global.
    let (s, _) = post_workspace(&h, &bob, "wa").await;
    assert_eq!(s, StatusCode::CONFLICT);
}

async fn tokens_admin_routes_and_user_removal(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("busybox")).await;
    let alice = add_user(&h, "alice", false).await;
    let carol = add_user(&h, "carol", true).await;

    // Who am I.
    for (token, name, admin) in [(&alice, "alice", false), (&carol, "carol", true)] {
        let (s, b) = h.call(Method::GET, "/v1/me", Some(token), None).await;
        assert_eq!(s, StatusCode::OK);
        let me: User = serde_json::from_slice(&b).unwrap();
        assert_eq!((me.name.as_str(), me.admin), (name, admin));
    }
    // Wrong tokens, including a prefix of a real one.
    for tok in [None, Some("wrong"), Some(&alice[..63])] {
        let (s, _) = h.call(Method::GET, "/v1/me", tok, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Admin routes: 403 for alice, fine for carol (another admin).
    let admin_routes = [
        (Method::GET, "/v1/users", None),
        (Method::POST, "/v1/users", Some(r#"{"name":"dave"}"#)),
        (Method::POST, "/v1/store/fsck", None),
        (Method::POST, "/v1/store/gc", Some("{}")),
        (Method::DELETE, "/v1/images/busybox", None),
        (
            Method::POST,
            "/v1/images/load",
            Some(r#"{"path":"/x.tar"}"#),
        ),
    ];
    for (m, uri, body) in &admin_routes {
        let (s, b) = h
            .call(m.clone(), uri, Some(&alice), body.map(String::from))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {uri}");
        let e: ErrorBody = serde_json::from_slice(&b).unwrap();
        assert_eq!(e.error.code, "forbidden");
    }
    let (s, _) = h.call(Method::GET, "/v1/users", Some(&carol), None).await;
    assert_eq!(s, StatusCode::OK);
    // Bad names.
    for bad in ["Alice", "a_b", &"a".repeat(33), ""] {
        let body = serde_json::json!({ "name": bad }).to_string();
        let (s, _) = h
            .call(Method::POST, "/v1/users", Some(TOKEN), Some(body))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (s, _) = h
        .call(
            Method::POST,
            "/v1/users",
            Some(TOKEN),
            Some(r#"{"name":"alice"}"#.into()),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Removal: refused while alice owns a workspace, for oneself and for admin.
    create_as(&h, &alice, "wa").await;
    for (uri, token, want) in [
        ("/v1/users/alice", TOKEN, StatusCode::CONFLICT),
        ("/v1/users/carol", carol.as_str(), StatusCode::CONFLICT),
        ("/v1/users/admin", carol.as_str(), StatusCode::CONFLICT),
        (
            "/v1/users/alice?reassign_to=alice",
            TOKEN,
            StatusCode::CONFLICT,
        ),
        (
            "/v1/users/alice?reassign_to=nobody",
            TOKEN,
            StatusCode::NOT_FOUND,
        ),
        ("/v1/users/nobody", TOKEN, StatusCode::NOT_FOUND),
        ("/v1/users/Bad", TOKEN, StatusCode::BAD_REQUEST),
    ] {
        let (s, b) = h.call(Method::DELETE, uri, Some(token), None).await;
        assert_eq!(s, want, "{uri}: {}", String::from_utf8_lossy(&b));
    }
    assert_eq!(listed(&h, &alice).await, [("wa".into(), "alice".into())]);
    let (s, _) = h
        .call(
            Method::DELETE,
            "/v1/users/alice?reassign_to=carol",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h
        .call(Method::GET, "/v1/workspaces", Some(&alice), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.manager
            .owned(
                &crate::auth::Caller {
                    id: "carol".into(),
                    admin: false
                },
                "wa"
            )
            .await
            .unwrap()
            .owner,
        "carol"
    );
    // Callers by name (an SSH key's owner): current flags, none once removed.
    let carol_caller = crate::auth::Caller {
        id: "carol".into(),
        admin: true,
    };
    assert_eq!(h.manager.caller("carol").await.unwrap(), Some(carol_caller));
    assert_eq!(h.manager.caller("alice").await.unwrap(), None);
}

async fn an_admin_makes_a_user_an_admin_and_back(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    let alice = add_user(&h, "alice", false).await;
    let carol = add_user(&h, "carol", true).await;
    let set = |uri: &'static str, token: String, admin: bool| {
        let h = &h;
        async move {
            let body = serde_json::json!({ "admin": admin }).to_string();
            h.call(Method::PATCH, uri, Some(&token), Some(body)).await
        }
    };
    // The status of an admin-only route for the holder of `token`.
    let admin_route = |token: String| {
        let h = &h;
        async move { h.call(Method::GET, "/v1/users", Some(&token), None).await.0 }
    };
    // alice's token is in the token cache as a plain user's: 403 on an admin route.
    assert_eq!(admin_route(alice.clone()).await, StatusCode::FORBIDDEN);
    // Only admins change roles.
    let (s, _) = set("/v1/users/carol", alice.clone(), false).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = set("/v1/users/alice", carol.clone(), true).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let u: User = serde_json::from_slice(&b).unwrap();
    assert_eq!((u.name.as_str(), u.admin), ("alice", true));
    // At once, though her token was cached.
    assert_eq!(admin_route(alice.clone()).await, StatusCode::OK);
    // Not oneself, not the token file's admin, not a missing user, not a bad body.
    for (uri, token, want) in [
        ("/v1/users/carol", carol.clone(), StatusCode::CONFLICT),
        ("/v1/users/admin", carol.clone(), StatusCode::CONFLICT),
        ("/v1/users/nobody", carol.clone(), StatusCode::NOT_FOUND),
        ("/v1/users/Bad", carol.clone(), StatusCode::BAD_REQUEST),
    ] {
        let (s, b) = set(uri, token, false).await;
        assert_eq!(s, want, "{uri}: {}", String::from_utf8_lossy(&b));
    }
    let (s, _) = h
        .call(
            Method::PATCH,
            "/v1/users/alice",
            Some(TOKEN),
            Some(r#"{"admin":true,"name":"x"}"#.into()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // And back: alice makes carol a plain user, carol loses the admin routes.
    let (s, _) = set("/v1/users/carol", alice.clone(), false).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(admin_route(carol.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(
        h.manager.caller("carol").await.unwrap().map(|c| c.admin),
        Some(false)
    );
}

async fn the_token_file_token_is_admins_at_every_start(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    let (s, _) = h.call(Method::GET, "/v1/me", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    // A rotated token file: the old token stops working (though it was just used, so
    // known to the token cache), the new one is admin's.
    h.manager.ensure_first_admin("new-token").await.unwrap();
    let (s, _) = h.call(Method::GET, "/v1/me", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = h.call(Method::GET, "/v1/me", Some("new-token"), None).await;
    assert_eq!(s, StatusCode::OK);
    let me: User = serde_json::from_slice(&b).unwrap();
    assert_eq!((me.name.as_str(), me.admin), ("admin", true));
}

async fn rate_limit_is_per_user(b: Backend) {
    let rate = crate::ratelimit::RateLimit {
        per_second: 1,
        burst: 3,
    };
    let h = harness_with(b, FakeNode::default(), rate).await;
    let alice = h
        .manager
        .create_user(CreateUser {
            name: "alice".into(),
            admin: false,
        })
        .await
        .unwrap()
        .token;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(h.call(Method::GET, "/v1/me", Some(TOKEN), None).await.0);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let (s, _) = h.call(Method::GET, "/v1/me", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn removing_a_user_removes_their_builder_workspace() {
    let h = harness(FakeNode::with_image("busybox")).await;
    let dave = add_user(&h, "dave", false).await;
    create_as(&h, &dave, "wd").await;
    let mut builder = record("0000000000bd", "builder-dave", 900, WorkspaceState::Stopped);
    builder.owner = "dave".into();
    h.manager.store().insert(&builder).await.unwrap();

    // Refused for the workspace dave still owns: the builder stays with it.
    let (s, _) = h
        .call(Method::DELETE, "/v1/users/dave", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(h
        .manager
        .store()
        .get("builder-dave")
        .await
        .unwrap()
        .is_some());

    // Handed over: the workspace goes to the heir, the builder (a cache) is removed, not
    // handed over, so a later user dave gets a builder of their own.
    let (s, b) = h
        .call(
            Method::DELETE,
            "/v1/users/dave?reassign_to=admin",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
    assert!(h
        .manager
        .store()
        .get("builder-dave")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        h.manager.store().get("wd").await.unwrap().unwrap().owner,
        "admin"
    );
}
