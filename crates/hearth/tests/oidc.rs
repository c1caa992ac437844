//! OpenID Connect sign-in against a real provider: npm's `oidc-provider` run by
//! tests/data/oidc-provider/provider.mjs (node, with the modules scripts/install-deps.sh
//! --test installs). A browser is played by reqwest with a cookie jar, following every
//! redirect and submitting the provider's login form.
//!
//! The provider issues correct ID tokens; for the wrong-audience, expired and bad-signature
//! cases its script re-signs the token its token endpoint answers (see the script), so
//! hearth gets them through the real flow.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TestServer;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{StatusCode, Url};

const CLIENT_ID: &str = "hearth-test";
const CLIENT_SECRET: &str = "9c0d1e2f-secret-for-tests";

/// Where `oidc-provider` is installed: `HEARTH_OIDC_PROVIDER_MODULES`, else where
/// scripts/install-deps.sh --test puts it.
fn provider_modules() -> PathBuf {
    let dir = std::env::var_os("HEARTH_OIDC_PROVIDER_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/hearth-test-oidc/node_modules"));
    assert!(
        dir.join("oidc-provider").is_dir(),
        "oidc-provider is not installed in {}: run scripts/install-deps.sh --test (or set \
         HEARTH_OIDC_PROVIDER_MODULES)",
        dir.display()
    );
    dir
}

/// The provider process, killed on drop.
struct Provider {
    child: Child,
    issuer: String,
    _dir: tempfile::TempDir,
}

impl Provider {
    fn start(redirect_uri: &str) -> Provider {
        let modules = provider_modules();
        // ESM resolves packages next to the script: run a copy beside a node_modules link.
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/oidc-provider/provider.mjs"
        );
        std::fs::copy(script, dir.path().join("provider.mjs")).unwrap();
        std::os::unix::fs::symlink(&modules, dir.path().join("node_modules")).unwrap();
        let mut child = Command::new("node")
            .arg(dir.path().join("provider.mjs"))
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URI", redirect_uri)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run node (scripts/install-deps.sh --test)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send(first);
            // Drained to the end: a closed pipe would kill the provider at its next write.
            for _ in lines {}
        });
        let mut provider = Provider {
            child,
            issuer: String::new(),
            _dir: dir,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("the OIDC provider did not start");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the OIDC provider printed {line:?}: {e}"));
        provider.issuer = v["issuer"].as_str().unwrap().to_string();
        provider
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A provider and a hearth server that signs in through it (allowed: example.com emails
/// in group `staff`).
struct Setup {
    _provider: Provider,
    server: TestServer,
    base: String,
    _secret: tempfile::TempDir,
}

fn setup() -> Setup {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let provider = Provider::start(&format!("{base}/auth/callback"));
    let secret = tempfile::tempdir().unwrap();
    let secret_file = secret.path().join("client-secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let server = TestServer::start_with(&[
        "--listen",
        &listen,
        "--public-url",
        &base,
        "--oidc-issuer",
        &provider.issuer,
        "--oidc-client-id",
        CLIENT_ID,
        "--oidc-client-secret-file",
        secret_file.to_str().unwrap(),
        "--oidc-allowed-domains",
        "example.com,example.org",
        "--oidc-allowed-groups",
        "staff",
    ]);
    Setup {
        _provider: provider,
        server,
        base,
        _secret: secret,
    }
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
async fn sign_in(s: &Setup, b: &reqwest::Client, email: &str) -> Landing {
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

fn users(s: &Setup) -> Vec<String> {
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
