//! Browser sessions over the API: token sign-in, the cookie's attributes, CSRF on every
//! mutating request, the WebSocket origin rule, logout, expiry, removal, CLI tokens.

use super::users::add_user;
use super::*;
use axum::http::HeaderMap;

on_both_backends!(
    a_session_signs_in_reads_and_needs_csrf_to_change,
    logout_ends_the_session_and_clears_the_cookie,
    expired_and_removed_users_sessions_are_refused,
    tokens_for_the_cli_are_made_from_a_session,
    pending_sign_ins_are_capped_and_expired_ones_make_room,
);

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: serde_json::Value,
}

/// Sends a request with optional session cookie, CSRF token and more headers.
/// POST `uri` with no body as the session `cookie`, with `csrf` as its CSRF header.
async fn post_with(h: &Harness, uri: &str, cookie: &str, csrf: Option<&str>) -> Answer {
    send(h, Method::POST, uri, Some(cookie), csrf, &[], None).await
}

async fn send(
    h: &Harness,
    method: Method,
    uri: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> Answer {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("other=1; hearth_session={c}"));
    }
    if let Some(t) = csrf {
        b = b.header("x-csrf-token", t);
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let req = match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    };
    let resp = h.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn set_cookie(a: &Answer) -> String {
    a.headers
        .get(header::SET_COOKIE)
        .expect("a Set-Cookie header")
        .to_str()
        .unwrap()
        .to_string()
}

/// Signs in with `token`; answers the cookie's value and the session.
async fn sign_in(h: &Harness, token: &str) -> (String, SessionInfo) {
    let a = send(
        h,
        Method::POST,
        "/v1/session",
        None,
        None,
        &[],
        Some(serde_json::json!({ "token": token })),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let c = set_cookie(&a);
    let value = c
        .strip_prefix("hearth_session=")
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string();
    assert_eq!(value.len(), 64, "{c}");
    (value, serde_json::from_value(a.body).unwrap())
}

async fn a_session_signs_in_reads_and_needs_csrf_to_change(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    let m = send(&h, Method::GET, "/v1/auth", None, None, &[], None).await;
    assert_eq!(
        m.body,
        serde_json::json!({"token": true, "oidc_login": null})
    );

    // A wrong token signs nobody in and sets no cookie.
    let bad = send(
        &h,
        Method::POST,
        "/v1/session",
        None,
        None,
        &[],
        Some(serde_json::json!({"token": "nope"})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.headers.get(header::SET_COOKIE).is_none());

    let a = send(
        &h,
        Method::POST,
        "/v1/session",
        None,
        None,
        &[],
        Some(serde_json::json!({ "token": TOKEN })),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let c = set_cookie(&a);
    for attr in [
        "; Path=/",
        "; HttpOnly",
        "; SameSite=Lax",
        "; Max-Age=604800",
    ] {
        assert!(c.contains(attr), "{attr} missing from {c}");
    }
    // Plain http: a Secure cookie would never come back.
    assert!(!c.contains("Secure"), "{c}");
    let (cookie, info) = sign_in(&h, TOKEN).await;
    assert_eq!((info.user.name.as_str(), info.user.admin), ("admin", true));
    assert_eq!(info.csrf_token.len(), 64);

    // Reads need no CSRF token; the session is what GET /v1/session says.
    let me = send(&h, Method::GET, "/v1/me", Some(&cookie), None, &[], None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["name"], "admin");
    let s = send(
        &h,
        Method::GET,
        "/v1/session",
        Some(&cookie),
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(s.body["csrf_token"], info.csrf_token.as_str());
    assert_eq!(s.body["expires_at"], info.expires_at.as_str());

    // A change without the CSRF token, or with another session's, changes nothing.
    let (_, other) = sign_in(&h, TOKEN).await;
    let add = |csrf: Option<String>, name: &'static str| {
        let cookie = cookie.clone();
        let h = &h;
        async move {
            send(
                h,
                Method::POST,
                "/v1/users",
                Some(&cookie),
                csrf.as_deref(),
                &[],
                Some(serde_json::json!({ "name": name })),
            )
            .await
        }
    };
    let a = add(None, "bob").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing X-CSRF-Token"),
        "{}",
        a.body
    );
    let a = add(Some(other.csrf_token.clone()), "bob").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("wrong X-CSRF-Token"));
    let users = h.manager.users().await.unwrap();
    assert_eq!(users.len(), 1, "{users:?}");
    let a = add(Some(info.csrf_token.clone()), "bob").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);

    // A bearer token needs no CSRF token, and wins over a cookie.
    let (s, _) = h
        .call(
            Method::POST,
            "/v1/users",
            Some(TOKEN),
            Some(r#"{"name":"carol"}"#.into()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let a = send(
        &h,
        Method::GET,
        "/v1/me",
        Some(&cookie),
        None,
        &[("authorization", "Bearer wrong")],
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // A WebSocket handshake (a GET that runs commands) with the cookie must come from
    // the server's own origin.
    let ws = |origin: &'static str| {
        let cookie = cookie.clone();
        let h = &h;
        async move {
            send(
                h,
                Method::GET,
                "/v1/workspaces/nope/exec",
                Some(&cookie),
                None,
                &[
                    ("host", "hearth.test:7070"),
                    ("origin", origin),
                    ("upgrade", "websocket"),
                    ("connection", "upgrade"),
                ],
                None,
            )
            .await
        }
    };
    let a = ws("http://evil.test").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Origin"));
    // Past the check: refused only for what it is (no real upgrade here, no workspace).
    let a = ws("http://hearth.test:7070").await;
    assert_ne!(a.status, StatusCode::FORBIDDEN, "{}", a.body);

    // Behind an https proxy, or with an https public URL, the cookie is Secure.
    let a = send(
        &h,
        Method::POST,
        "/v1/session",
        None,
        None,
        &[("x-forwarded-proto", "https")],
        Some(serde_json::json!({ "token": TOKEN })),
    )
    .await;
    assert!(set_cookie(&a).ends_with("; Secure"), "{}", set_cookie(&a));
    let mut settings = h.auth.settings();
    settings.https = true;
    h.auth.set_settings(settings.clone());
    let (_, _) = sign_in(&h, TOKEN).await;
    let a = send(
        &h,
        Method::POST,
        "/v1/session",
        None,
        None,
        &[],
        Some(serde_json::json!({ "token": TOKEN })),
    )
    .await;
    assert!(set_cookie(&a).contains("; Secure"));

    // With token sign-in off (a server with an identity provider), tokens sign no
    // browser in.
    settings.token_login = false;
    h.auth.set_settings(settings);
    let a = send(
        &h,
        Method::POST,
        "/v1/session",
        None,
        None,
        &[],
        Some(serde_json::json!({ "token": TOKEN })),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.headers.get(header::SET_COOKIE).is_none());
    let m = send(&h, Method::GET, "/v1/auth", None, None, &[], None).await;
    assert_eq!(m.body["token"], false);
}

async fn logout_ends_the_session_and_clears_the_cookie(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    let (cookie, info) = sign_in(&h, TOKEN).await;
    let (other, _) = sign_in(&h, TOKEN).await;
    // Logging out is a change too: a forged logout is refused.
    assert_eq!(
        post_with(&h, "/v1/session/logout", &cookie, None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let a = post_with(&h, "/v1/session/logout", &cookie, Some(&info.csrf_token)).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let c = set_cookie(&a);
    assert!(
        c.starts_with("hearth_session=;") && c.contains("Max-Age=0"),
        "{c}"
    );
    // The cookie is dead even if the browser kept it; the answer tells it to forget it.
    let a = send(&h, Method::GET, "/v1/me", Some(&cookie), None, &[], None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&a).contains("Max-Age=0"));
    // Only that session ended.
    let a = send(&h, Method::GET, "/v1/me", Some(&other), None, &[], None).await;
    assert_eq!(a.status, StatusCode::OK);
    // A token caller has no session to show or end.
    let (s, _) = h.call(Method::GET, "/v1/session", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .call(Method::POST, "/v1/session/logout", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // No credential at all.
    let a = send(&h, Method::GET, "/v1/me", None, None, &[], None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

async fn expired_and_removed_users_sessions_are_refused(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    let bob = add_user(&h, "bob", false).await;
    let (cookie, _) = sign_in(&h, &bob).await;
    let a = send(&h, Method::GET, "/v1/me", Some(&cookie), None, &[], None).await;
    assert_eq!(a.body["name"], "bob");
    let (s, _) = h
        .call(Method::DELETE, "/v1/users/bob", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let a = send(&h, Method::GET, "/v1/me", Some(&cookie), None, &[], None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // A new bob does not inherit the old one's sessions.
    add_user(&h, "bob", false).await;
    let a = send(&h, Method::GET, "/v1/me", Some(&cookie), None, &[], None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // A session past its end is refused (a zero lifetime ends it as it starts).
    let mut settings = h.auth.settings();
    settings.ttl = std::time::Duration::ZERO;
    h.auth.set_settings(settings);
    let (cookie, _) = sign_in(&h, TOKEN).await;
    let a = send(&h, Method::GET, "/v1/me", Some(&cookie), None, &[], None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

async fn tokens_for_the_cli_are_made_from_a_session(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    let old = add_user(&h, "dana", false).await;
    let (cookie, info) = sign_in(&h, &old).await;
    assert_eq!(
        post_with(&h, "/v1/me/token", &cookie, None).await.status,
        StatusCode::FORBIDDEN
    );
    let a = post_with(&h, "/v1/me/token", &cookie, Some(&info.csrf_token)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let new: NewToken = serde_json::from_value(a.body).unwrap();
    let (s, b) = h.call(Method::GET, "/v1/me", Some(&new.token), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&b).contains("dana"));
    // The old token stopped working; the session goes on.
    let (s, _) = h.call(Method::GET, "/v1/me", Some(&old), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let a = send(&h, Method::GET, "/v1/me", Some(&cookie), None, &[], None).await;
    assert_eq!(a.status, StatusCode::OK);
    // admin's token is the token file's.
    let (s, _) = h
        .call(Method::POST, "/v1/me/token", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = h.call(Method::GET, "/v1/me", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
}

/// Anyone may start a sign-in, so the table of those in progress has a ceiling; expired
/// ones are dropped before counting, and a refused one leaves nothing behind.
async fn pending_sign_ins_are_capped_and_expired_ones_make_room(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    let store = h.manager.store();
    let login = |n: u32| crate::db::OidcLogin {
        nonce: format!("n{n}"),
        pkce_verifier: "v".into(),
        return_to: "/".into(),
    };
    let now = 1_000_000;
    let insert = |n: u32, at: i64, expires: i64| {
        let l = login(n);
        async move {
            store
                .insert_oidc_login(&format!("s{n}"), &l, at, expires, 3)
                .await
                .unwrap()
        }
    };
    assert!(insert(0, now, now + 1).await);
    assert!(insert(1, now, now + 1).await);
    assert!(insert(2, now, now + 600).await);
    assert!(!insert(3, now, now + 600).await, "a fourth is over the cap");
    // Two have expired a second later: room for two more, not three.
    assert!(insert(4, now + 1, now + 600).await);
    assert!(insert(5, now + 1, now + 600).await);
    assert!(!insert(6, now + 1, now + 600).await);
    assert!(store
        .take_oidc_login("s3", now + 1)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .take_oidc_login("s6", now + 1)
        .await
        .unwrap()
        .is_none());
    let kept = store.take_oidc_login("s2", now + 1).await.unwrap().unwrap();
    assert_eq!(kept.nonce, "n2");
}
