//! What users keep in the database besides workspaces (secrets, dotfiles, SSH keys, port
//! visibility), over the API, on both backends.

use super::users::{add_user, create_as};
use super::*;

on_both_backends!(
    secrets_and_dotfiles_are_per_user,
    ssh_keys_are_unique_across_users,
    port_visibility_is_kept_per_workspace,
);

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAX17WC2Ld5MhQLHoSvMQ8tbba1kw9+WexF553xO58SZ me@laptop";

async fn send(
    h: &Harness,
    method: Method,
    uri: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let (s, b) = h
        .call(method, uri, Some(token), body.map(|v| v.to_string()))
        .await;
    let v = if b.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&b).unwrap()
    };
    (s, v)
}

async fn secrets_and_dotfiles_are_per_user(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    h.manager
        .set_secret_box(crate::secrets::SecretBox::from_key(&[7; 32]));
    let alice = add_user(&h, "alice", false).await;
    let put = |token: &str, key: &str, value: &str, repo: Option<&str>| {
        let body = serde_json::json!({ "value": value, "repo": repo });
        let (h, token, uri) = (&h, token.to_string(), format!("/v1/secrets/{key}"));
        async move { send(h, Method::PUT, &uri, &token, Some(body)).await }
    };
    assert_eq!(put(&alice, "B_KEY", "1", None).await.0, StatusCode::OK);
    assert_eq!(put(&alice, "A_KEY", "2", None).await.0, StatusCode::OK);
    assert_eq!(
        put(&alice, "A_KEY", "3", Some("/r")).await.0,
        StatusCode::OK
    );
    // Replacing keeps one row.
    assert_eq!(put(&alice, "B_KEY", "4", None).await.0, StatusCode::OK);
    assert_eq!(put(TOKEN, "B_KEY", "5", None).await.0, StatusCode::OK);
    let (s, v) = send(&h, Method::GET, "/v1/secrets", &alice, None).await;
    assert_eq!(s, StatusCode::OK);
    let listed: Vec<(String, Option<String>)> = serde_json::from_value::<Vec<Secret>>(v)
        .unwrap()
        .into_iter()
        .map(|s| (s.key, s.repo))
        .collect();
    assert_eq!(
        listed,
        [
            ("A_KEY".into(), None),
            ("A_KEY".into(), Some("/r".into())),
            ("B_KEY".into(), None)
        ]
    );
    let (s, v) = send(&h, Method::GET, "/v1/secrets", TOKEN, None).await;
    assert_eq!((s, v.as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    let (s, _) = send(&h, Method::DELETE, "/v1/secrets/B_KEY", &alice, None).await;
    assert!(s.is_success(), "{s}");
    let (s, _) = send(&h, Method::DELETE, "/v1/secrets/B_KEY", &alice, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(h.manager.store().secret_count().await.unwrap(), 3);

    let dot = serde_json::json!({ "url": "https://example.com/alice/dotfiles" });
    let (s, _) = send(&h, Method::PUT, "/v1/me/dotfiles", &alice, Some(dot)).await;
    assert!(s.is_success(), "{s}");
    let (_, v) = send(&h, Method::GET, "/v1/me/dotfiles", &alice, None).await;
    assert_eq!(v["url"], "https://example.com/alice/dotfiles");
    let (_, v) = send(&h, Method::GET, "/v1/me/dotfiles", TOKEN, None).await;
    assert!(v["url"].is_null(), "{v}");
    // The user's secrets go with them.
    let (s, _) = send(&h, Method::DELETE, "/v1/users/alice", TOKEN, None).await;
    assert!(s.is_success(), "{s}");
    assert_eq!(h.manager.store().secret_count().await.unwrap(), 1);
}

async fn ssh_keys_are_unique_across_users(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    let alice = add_user(&h, "alice", false).await;
    let bob = add_user(&h, "bob", false).await;
    let add = |token: &str| {
        let body = serde_json::json!({ "public_key": KEY });
        let (h, token) = (&h, token.to_string());
        async move { send(h, Method::POST, "/v1/ssh-keys", &token, Some(body)).await }
    };
    let (s, k) = add(&alice).await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    // A key authenticates one user: nobody registers it again, its owner included.
    assert_eq!(add(&alice).await.0, StatusCode::CONFLICT);
    assert_eq!(add(&bob).await.0, StatusCode::CONFLICT);
    let (_, v) = send(&h, Method::GET, "/v1/ssh-keys", &bob, None).await;
    assert_eq!(v, serde_json::json!([]));
    let (_, v) = send(&h, Method::GET, "/v1/ssh-keys", &alice, None).await;
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    let fp = k["fingerprint"].as_str().unwrap().to_string();
    let (owner, _) = h.manager.store().ssh_key_owner(&fp).await.unwrap().unwrap();
    assert_eq!(owner, "alice");
    // Bob cannot remove it; once alice is removed, bob may register it.
    let uri = format!("/v1/ssh-keys/{}", k["id"].as_str().unwrap());
    assert_eq!(
        send(&h, Method::DELETE, &uri, &bob, None).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, _) = send(&h, Method::DELETE, "/v1/users/alice", TOKEN, None).await;
    assert!(s.is_success(), "{s}");
    assert!(h
        .manager
        .store()
        .ssh_key_owner(&fp)
        .await
        .unwrap()
        .is_none());
    assert_eq!(add(&bob).await.0, StatusCode::CREATED);
    let uri = format!("/v1/ssh-keys/{fp}");
    assert!(send(&h, Method::DELETE, &uri, &bob, None)
        .await
        .0
        .is_success());
    assert!(h
        .manager
        .store()
        .ssh_key_owner(&fp)
        .await
        .unwrap()
        .is_none());
}

async fn port_visibility_is_kept_per_workspace(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("busybox")).await;
    create_as(&h, TOKEN, "w").await;
    create_as(&h, TOKEN, "v").await;
    for (name, port, vis) in [
        ("w", 8080, "public"),
        ("w", 3000, "public"),
        ("w", 3000, "private"),
        ("v", 9000, "public"),
    ] {
        let (s, v) = h
            .json(
                Method::PUT,
                &format!("/v1/workspaces/{name}/ports/{port}"),
                Some(serde_json::json!({ "visibility": vis })),
            )
            .await;
        assert_eq!((s, v["visibility"].as_str()), (StatusCode::OK, Some(vis)));
    }
    // Stopped, so the listing is what the database holds.
    let (s, _) = h.json(Method::POST, "/v1/workspaces/w/stop", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h.json(Method::GET, "/v1/workspaces/w/ports", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ports: Vec<Port> = serde_json::from_value(v).unwrap();
    let ports: Vec<(u16, PortVisibility)> =
        ports.into_iter().map(|p| (p.port, p.visibility)).collect();
    assert_eq!(ports, [(8080, PortVisibility::Public)]);
    // Removing the workspace (its row moves to the removed ones) removes its ports' rows.
    let id = h.manager.store().get("v").await.unwrap().unwrap().spec.id;
    let (s, _) = h.json(Method::DELETE, "/v1/workspaces/v", None).await;
    assert!(s.is_success(), "{s}");
    assert!(h
        .manager
        .store()
        .ports(id.as_str())
        .await
        .unwrap()
        .is_empty());
}
