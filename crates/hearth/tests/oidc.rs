//! OpenID Connect sign-in against a real provider: npm's `oidc-provider` (see
//! tests/common/oidc.rs). A browser is played by reqwest with a cookie jar, following every
//! redirect and submitting the provider's login form.
//!
//! The provider issues correct ID tokens; for the wrong-audience, expired and bad-signature
//! cases its script re-signs the token its token endpoint answers (see the script), so
//! hearth gets them through the real flow.

mod common;

use common::oidc::OidcServer;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{StatusCode, Url};

/// A provider and a hearth server signing in through it (example.com and example.org
/// emails in group `staff` are let in).
fn setup() -> OidcServer {
    OidcServer::start(&[])
}

/// A browser: a cookie jar, no automatic redirects (each is followed here).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// What hearth's `/auth/callback` answered at the end of a sign-in.
struct Landing {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
    /// The callback URL the provider sent the browser to.
    callback: Url,
}

/// Signs in as `email` from `/auth/login?next=/dash`: follows redirects, fills in the
/// provider's login form, and stops at hearth's answer to the callback.
async fn sign_in(s: &OidcServer, b: &reqwest::Client, email: &str) -> Landing {
    let mut url = Url::parse(&format!("{}/auth/login?next=/dash", s.base)).unwrap();
    let mut form: Option<Vec<(String, String)>> = None;
    for _ in 0..20 {
        let req = match form.take() {
            Some(f) => b.post(url.clone()).form(&f),
            None => b.get(url.clone()),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap();
        if url
            .as_str()
            .starts_with(&format!("{}/auth/callback", s.base))
        {
            return Landing {
                status,
                headers,
                body,
                callback: url,
            };
        }
        if status.is_redirection() {
            let loc = headers[LOCATION].to_str().unwrap();
            url = url.join(loc).unwrap();
            continue;
        }
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        // The provider's login form: any login, any password.
        let action = body
            .split("action=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no form at {url}: {body}"))
            .replace("&#x2F;", "/")
            .replace("&#47;", "/")
            .replace("&amp;", "&");
        assert!(body.contains("name=\"login\""), "{body}");
        url = url.join(&action).unwrap();
        form = Some(vec![
            ("prompt".into(), "login".into()),
            ("login".into(), email.into()),
            ("password".into(), "anything".into()),
        ]);
    }
    panic!("the sign-in of {email} never came back to hearth");
}

async fn get_json(b: &reqwest::Client, url: &str) -> (StatusCode, serde_json::Value) {
    let resp = b.get(url).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn users(s: &OidcServer) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&s.server.ok(&["user", "ls", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_sign_in_makes_a_user_and_a_session_with_csrf() {
    let s = setup();
    let b = browser();
    let (st, methods) = get_json(&b, &format!("{}/v1/auth", s.base)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        methods,
        serde_json::json!({"token": false, "oidc_login": "/auth/login"})
    );

    let landing = sign_in(&s, &b, "Jane.Doe@example.com").await;
    assert_eq!(landing.status, StatusCode::SEE_OTHER, "{}", landing.body);
    assert_eq!(landing.headers[LOCATION], "/dash");
    let cookies: Vec<&str> = landing
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("hearth_session="))
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax"));
    // The sign-in's state cookie is cleared.
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("hearth_oidc=;") && c.contains("Max-Age=0")),
        "{cookies:?}"
    );

    // The first sign-in made the user, named from preferred_username.
    let (st, info) = get_json(&b, &format!("{}/v1/session", s.base)).await;
    assert_eq!(st, StatusCode::OK, "{info}");
    assert_eq!(info["user"]["name"], "jane-doe");
    assert_eq!(info["user"]["admin"], false);
    let csrf = info["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(users(&s), ["admin", "jane-doe"]);

    // A change without the CSRF token, or with a wrong one, is refused.
    let create = serde_json::json!({"source": "/nonexistent", "name": "w1"});
    for token in [None, Some("0".repeat(64))] {
        let mut req = b.post(format!("{}/v1/workspaces", s.base)).json(&create);
        if let Some(t) = &token {
            req = req.header("X-CSRF-Token", t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{token:?}");
        assert!(resp.text().await.unwrap().contains("X-CSRF-Token"));
    }
    // With it, a token for the CLI.
    let resp = b
        .post(format!("{}/v1/me/token", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = b
        .post(format!("{}/v1/me/token", s.base))
        .header("X-CSRF-Token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let token: serde_json::Value = resp.json().await.unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    let me: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/me", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "jane-doe");

    // Signing in again (another browser) is the same user.
    let b2 = browser();
    let landing = sign_in(&s, &b2, "Jane.Doe@example.com").await;
    assert_eq!(landing.status, StatusCode::SEE_OTHER, "{}", landing.body);
    let (_, info2) = get_json(&b2, &format!("{}/v1/session", s.base)).await;
    assert_eq!(info2["user"]["name"], "jane-doe");
    assert_ne!(info2["csrf_token"], info["csrf_token"]);
    assert_eq!(users(&s), ["admin", "jane-doe"]);
    // A callback is good once: replaying it (state cookie gone, sign-in taken) is refused.
    let resp = b2.get(landing.callback.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Another person whose name is taken gets the next free one.
    let b3 = browser();
    let landing = sign_in(&s, &b3, "jane.doe@example.org").await;
    assert_eq!(landing.status, StatusCode::SEE_OTHER, "{}", landing.body);
    let (_, info3) = get_json(&b3, &format!("{}/v1/session", s.base)).await;
    assert_eq!(info3["user"]["name"], "jane-doe-2");

    // With an identity provider, API tokens sign no browser in.
    let admin_token = std::fs::read_to_string(s.server.data_dir().join("token")).unwrap();
    let resp = browser()
        .post(format!("{}/v1/session", s.base))
        .json(&serde_json::json!({"token": admin_token.trim()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // Logout needs the CSRF token, ends this session only, and clears the cookie.
    let logout = |csrf: Option<String>| {
        let mut req = b.post(format!("{}/v1/session/logout", s.base));
        if let Some(c) = csrf {
            req = req.header("X-CSRF-Token", c);
        }
        req.send()
    };
    assert_eq!(logout(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    let resp = logout(Some(csrf.clone())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (st, _) = get_json(&b, &format!("{}/v1/me", s.base)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = get_json(&b2, &format!("{}/v1/me", s.base)).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_refuses_bad_tokens_and_outsiders() {
    let s = setup();
    for (email, status, says) in [
        (
            "wrong-aud@example.com",
            StatusCode::UNAUTHORIZED,
            "another client",
        ),
        ("expired@example.com", StatusCode::UNAUTHORIZED, "expired"),
        (
            "bad-sig@example.com",
            StatusCode::UNAUTHORIZED,
            "signature does not verify",
        ),
        ("eve@evil.test", StatusCode::FORBIDDEN, "email domain"),
        ("nogroup@example.com", StatusCode::FORBIDDEN, "groups"),
    ] {
        let b = browser();
        let landing = sign_in(&s, &b, email).await;
        assert_eq!(landing.status, status, "{email}: {}", landing.body);
        assert!(landing.body.contains(says), "{email}: {}", landing.body);
        assert!(
            !landing
                .headers
                .get_all(SET_COOKIE)
                .iter()
                .any(|c| c.to_str().unwrap().starts_with("hearth_session=")),
            "{email} got a session"
        );
        let (st, _) = get_json(&b, &format!("{}/v1/me", s.base)).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{email}");
    }
    // Nobody was let in, so nobody was made.
    assert_eq!(users(&s), ["admin"]);

    // A callback in a browser that did not start the sign-in (a forged link) is refused.
    let b = browser();
    let resp = b
        .get(format!("{}/auth/callback?code=abc&state=def", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("not started in this browser"));
    // The provider's own refusal is shown, not a session.
    let resp = b
        .get(format!(
            "{}/auth/callback?error=access_denied&error_description=nope",
            s.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}
