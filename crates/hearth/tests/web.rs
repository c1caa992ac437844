//! The web dashboard in a real browser: headless Chromium (Debian's `chromium`) driven
//! through `chromedriver` by a WebDriver client, against a real `hearth server` running
//! real workspaces and signing people in through a real OpenID provider (npm's
//! `oidc-provider`, tests/common/oidc.rs).
//!
//! A new user signs in through the provider's own login form in the browser (someone from
//! a domain that is not allowed is refused), makes a CLI token, creates a workspace from a
//! repository, types `echo hello` into the browser terminal and reads it back, resizes it,
//! toggles a port public and private, opens the private port from the dashboard (logged in
//! to it by a login link) while another user in another browser is refused, takes a
//! snapshot and forks it, stops, starts and removes the workspace; the admin makes the new
//! user an admin and sees the users, quotas, images and audit log pages. Every page is
//! checked with axe-core (no serious or critical violations) and saved as a screenshot
//! under `target/web-screenshots/` (the paths are printed).
//!
//! Needs the dashboard built into the binary (`scripts/build.sh` runs npm), `chromium`,
//! `chromium-driver` and the oidc-provider modules (`scripts/install-deps.sh --test`).

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use common::gitserver::GitServer;
use common::oidc::OidcServer;
use common::{git_repo, TestServer, HEARTH};

/// How long a step may take before the test fails (creating a workspace is the slowest).
const STEP: Duration = Duration::from_secs(90);

fn chromedriver() -> String {
    std::env::var("HEARTH_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into())
}

fn chromium() -> String {
    std::env::var("HEARTH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// `web/` of the source tree: axe-core comes from its node_modules (npm ci).
fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

/// `target/web-screenshots`, beside the hearth binary's profile dir.
fn screenshot_dir() -> PathBuf {
    let target = Path::new(HEARTH)
        .parent()
        .and_then(Path::parent)
        .expect("the hearth binary lives in target/<profile>/");
    let dir = target.join("web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A chromedriver on a free port, killed (with its browsers) on drop.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so drop can end chromium's helpers with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (scripts/install-deps.sh --test installs chromium-driver)",
                    chromedriver()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            port,
            _profile: profile,
        }
    }

    async fn browser(&self) -> Client {
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": [
                    "--headless=new",
                    // Tests run as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", self._profile.path().display()),
                ],
            }
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| panic!("cannot start headless {}: {e}", chromium()))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The browser session and where its evidence goes.
struct Page {
    c: Client,
    /// The dashboard's URL.
    base: String,
    /// The identity provider's URL.
    issuer: String,
    shots: PathBuf,
    axe: String,
}

impl Page {
    async fn goto(&self, hash: &str) {
        self.c.goto(&format!("{}/{hash}", self.base)).await.unwrap();
    }

    async fn url(&self) -> String {
        self.c.current_url().await.unwrap().to_string()
    }

    /// The HTTP status the page in the window was answered with.
    async fn status(&self) -> u64 {
        self.js("return performance.getEntriesByType('navigation')[0].responseStatus")
            .await
            .as_u64()
            .expect("the browser reports the navigation's status")
    }

    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` (a JS expression) is truthy; fails with a screenshot and
    /// the page's text otherwise.
    async fn until(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let v = self
                .c
                .execute(&format!("return ({script});"), vec![])
                .await
                .unwrap();
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            if Instant::now() > deadline {
                let shot = self
                    .shot(&format!("failed-{}", what.replace(' ', "-")))
                    .await;
                let text = self.js("return document.body.innerText").await;
                panic!(
                    "timed out waiting for {what}; screenshot {}; the page says:\n{}",
                    shot.display(),
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text_appears(&self, what: &str, text: &str) {
        let script = format!("document.body.innerText.includes({})", json!(text));
        self.until(what, &script).await;
    }

    async fn fill(&self, css: &str, value: &str) {
        let el = self.c.find(Locator::Css(css)).await.unwrap();
        el.clear().await.unwrap();
        el.send_keys(value).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// The button whose text is `label` (buttons carry no ids: they are found as a user
    /// finds them).
    async fn click_button(&self, label: &str) {
        let xpath = format!("//button[normalize-space(.)={}]", json!(label));
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(b) = self.c.find(Locator::XPath(&xpath)).await {
                if b.is_enabled().await.unwrap_or(false) {
                    b.click().await.unwrap();
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no enabled button {label:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The link whose text is `label`.
    async fn click_link(&self, label: &str) {
        let xpath = format!("//a[normalize-space(.)={}]", json!(label));
        self.c
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no link {label:?}: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn shot(&self, name: &str) -> PathBuf {
        let png = self.c.screenshot().await.unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    /// axe-core on the page as it is now: no serious or critical violation.
    async fn accessible(&self, page: &str) {
        // WebDriver scripts run outside the page's CSP, so the local file can be injected.
        self.c.execute(&self.axe, vec![]).await.unwrap();
        let found = self
            .c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                   .then(r => done(r.violations
                     .filter(v => v.impact === 'serious' || v.impact === 'critical')
                     .map(v => `${v.impact} ${v.id}: ${v.help} (${v.nodes.map(n => n.target.join(' ')).join('; ')})`)))
                   .catch(e => done(['axe failed: ' + e]));",
                vec![],
            )
            .await
            .unwrap();
        let found: Vec<String> = serde_json::from_value(found).unwrap();
        assert!(
            found.is_empty(),
            "accessibility violations on the {page} page:\n{}",
            found.join("\n")
        );
    }

    /// Both: the evidence for one page.
    async fn check(&self, name: &str) {
        self.shot(name).await;
        self.accessible(name).await;
    }

    /// Types into whatever has focus (the terminal's hidden input) as a user would.
    async fn type_keys(&self, text: &str) {
        let mut keys = KeyActions::new("keyboard".into());
        for ch in text.chars() {
            let ch = if ch == '\n' { '\u{E007}' } else { ch };
            keys = keys
                .then(KeyAction::Down { value: ch })
                .then(KeyAction::Up { value: ch });
        }
        self.c.perform_actions(keys).await.unwrap();
    }

    /// The terminal's rows as text, trailing blanks trimmed.
    async fn terminal_lines(&self) -> Vec<String> {
        let v = self
            .js(
                "return Array.from(document.querySelectorAll('.xterm-rows > div'))
                   .map(d => d.textContent.replace(/\\u00a0/g, ' ').trimEnd());",
            )
            .await;
        serde_json::from_value(v).unwrap()
    }

    /// Runs `cmd` in the terminal and returns the output line after the command's own.
    async fn run_in_terminal(&self, cmd: &str, marker: &str) -> String {
        self.type_keys(&format!("{cmd}\n")).await;
        let deadline = Instant::now() + STEP;
        loop {
            let lines = self.terminal_lines().await;
            if let Some(i) = lines.iter().rposition(|l| l.ends_with(marker)) {
                if let Some(next) = lines.get(i + 1).filter(|l| !l.is_empty()) {
                    return next.clone();
                }
            }
            if Instant::now() > deadline {
                let shot = self.shot("failed-terminal").await;
                panic!(
                    "no output of {cmd:?} in the terminal (screenshot {}):\n{}",
                    shot.display(),
                    lines.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn server_url(s: &TestServer) -> String {
    let info = std::fs::read_to_string(s.data_dir().join("server.json")).unwrap();
    let info: Value = serde_json::from_str(&info).unwrap();
    info["url"].as_str().unwrap().to_string()
}

/// The repository a workspace is created from, as the create form takes it: jane is no
/// admin, so a git server's URL, never a path on the server. The server lives as long as
/// the returned handle.
fn repo_source(parent: &Path) -> (GitServer, String) {
    let git = GitServer::start(parent);
    let url = git.url(&git_repo(parent, "webproj"));
    (git, url)
}

async fn sign_in(p: &Page, token: &str, who: &str) {
    p.goto("").await;
    p.until("the sign-in form", "document.getElementById('token')")
        .await;
    p.fill("#token", token).await;
    p.click("form button[type=submit]").await;
    p.until(
        "the signed-in header",
        &format!(
            "document.querySelector('.who') && document.querySelector('.who').innerText.includes({})",
            json!(who)
        ),
    )
    .await;
}

/// From the dashboard's sign-in page through the identity provider's own pages, as a
/// person does it: the link, the provider's login form (any password), its consent page
/// if it shows one. Returns once the browser is back at hearth (signed in or not).
async fn sign_in_through_provider(p: &Page, email: &str, shot: Option<&str>) {
    p.goto("").await;
    let link = p
        .until(
            "the identity provider's link",
            "Array.from(document.querySelectorAll('a')).find(a => a.innerText.includes('Sign in with your identity provider'))",
        )
        .await;
    assert!(link.is_object(), "{link}");
    p.click_link("Sign in with your identity provider").await;
    p.until(
        "the provider's login form",
        "document.querySelector('input[name=login]')",
    )
    .await;
    assert!(
        p.url().await.starts_with(&format!("{}/", p.issuer)),
        "the login form is not the provider's: {}",
        p.url().await
    );
    if let Some(name) = shot {
        p.shot(name).await;
    }
    p.fill("input[name=login]", email).await;
    p.fill("input[name=password]", "any password").await;
    p.click("button[type=submit]").await;
    // Back at hearth, or the provider asks for consent first.
    let deadline = Instant::now() + STEP;
    loop {
        let url = p.url().await;
        if url.starts_with(&format!("{}/", p.base)) {
            return;
        }
        if url.starts_with(&format!("{}/", p.issuer)) {
            if let Ok(b) =
                p.c.find(Locator::XPath("//button[normalize-space(.)='Continue']"))
                    .await
            {
                let _ = b.click().await;
            }
        }
        assert!(Instant::now() < deadline, "the sign-in stays at {url}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sign_out(p: &Page) {
    p.click_button("Sign out").await;
    p.until("the sign-in page", "document.querySelector('main.signin')")
        .await;
}

/// Makes a CLI token on the account page; returns it.
async fn new_token(p: &Page) -> String {
    let shown = "document.querySelector('pre.cmd') && document.querySelector('pre.cmd').innerText";
    p.goto("#/account").await;
    p.until("the account page", "document.querySelector('main h1')")
        .await;
    // What the page showed before, so the last token is not taken for the new one.
    let old = p.js(&format!("return {shown}")).await;
    p.click_button("Make a new token").await;
    p.c.accept_alert().await.unwrap();
    let line = p
        .until(
            "the new token",
            &format!("({shown}) !== {old} && ({shown})"),
        )
        .await;
    line.as_str()
        .unwrap()
        .split("HEARTH_TOKEN=")
        .nth(1)
        .expect("the export line names the token")
        .trim()
        .to_string()
}

/// Who a token belongs to: the status and the body of GET /v1/me.
fn me(base: &str, token: &str) -> (u16, String) {
    match ureq::get(&format!("{base}/v1/me"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET /v1/me: {e}"),
    }
}

/// The status of a plain GET of a port URL with an optional bearer token, as a client
/// that is not a browser sees the proxy (curl: it resolves `*.localhost` as browsers do
/// only when told).
fn status_of(url: &str, token: Option<&str>) -> u16 {
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("a URL with a host");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "Accept: text/html", "--resolve"])
        .arg(format!("{authority}:127.0.0.1"));
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().expect("run curl");
    assert!(out.status.success(), "curl {url}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A port's visibility as `hearth ports --json` reports it.
fn visibility(s: &TestServer, ws: &str, port: u16) -> String {
    let ports: Value = serde_json::from_str(&s.ok(&["ports", ws, "--json"])).unwrap();
    ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port)
        .unwrap_or_else(|| panic!("no port {port} in {ports}"))["visibility"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The page a workspace serves on port 8080 (busybox httpd, its loopback only).
const APP_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
    <title>webproj app</title></head><body><main><h1>Hello from webws</h1></main></body></html>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let axe_file = web_dir().join("node_modules/axe-core/axe.min.js");
    let axe = std::fs::read_to_string(&axe_file).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (scripts/build.sh runs npm ci in web/)",
            axe_file.display()
        )
    });
    // People sign in through the identity provider; --token-login keeps API tokens
    // working in the browser for the admin (the data dir's token).
    let o = OidcServer::start(&["--token-login"]);
    let s = &o.server;
    s.load_busybox();
    let base = server_url(s);
    assert_eq!(base, o.base);
    // The binary must embed the built dashboard, not the "not built" page.
    let index = ureq::get(&format!("{base}/")).call().unwrap();
    let csp = index
        .header("content-security-policy")
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = index.into_string().unwrap();
    assert!(
        html.contains("/assets/main-"),
        "hearth was built without the dashboard (run scripts/build.sh):\n{html}"
    );
    let admin_token = std::fs::read_to_string(s.data_dir().join("token")).unwrap();
    s.ok(&["user", "add", "alice"]);
    let bob_token = s.ok(&["user", "add", "bob"]).trim().to_string();
    let repo_parent = tempfile::tempdir().unwrap();
    let (_git, source) = repo_source(repo_parent.path());

    let driver = Driver::start();
    let p = Page {
        c: driver.browser().await,
        base: base.clone(),
        issuer: o.issuer().to_string(),
        shots: screenshot_dir(),
        axe: axe.clone(),
    };

    // The sign-in page offers the identity provider and tokens; a wrong token is refused
    // in words.
    p.goto("").await;
    p.until("the sign-in form", "document.getElementById('token')")
        .await;
    p.text_appears("the provider's link", "Sign in with your identity provider")
        .await;
    p.check("sign-in").await;
    p.fill("#token", "not-a-token").await;
    p.click("form button[type=submit]").await;
    p.text_appears("the refusal", "Signing in failed: invalid token")
        .await;

    // Someone the provider knows but hearth does not let in: refused in words, no user.
    sign_in_through_provider(&p, "eve@evil.test", None).await;
    p.text_appears("the sign-in refusal", "Sign-in failed")
        .await;
    p.text_appears("the reason", "email domain").await;
    p.check("sign-in-refused").await;
    let users: Value = serde_json::from_str(&s.ok(&["user", "ls", "--json"])).unwrap();
    assert!(
        !users.to_string().contains("eve"),
        "a refused person was made a user: {users}"
    );
    // Another person at this browser: nothing of eve's provider session stays.
    p.c.delete_all_cookies().await.unwrap();

    // A new user signs in through the provider in the browser and lands on the dashboard
    // as herself (made at this first sign-in, not an admin).
    sign_in_through_provider(&p, "jane@example.com", Some("oidc-provider-login")).await;
    p.until(
        "the signed-in header",
        "document.querySelector('.who') && document.querySelector('.who').innerText.includes('jane')",
    )
    .await;
    let who = p
        .js("return document.querySelector('.who').innerText")
        .await;
    assert!(!who.as_str().unwrap_or_default().contains("admin"), "{who}");
    let users: Value = serde_json::from_str(&s.ok(&["user", "ls", "--json"])).unwrap();
    let jane = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "jane")
        .unwrap_or_else(|| panic!("the sign-in made no user jane: {users}"));
    assert_eq!(jane["admin"], false, "{jane}");
    // A session: the page keeps no credential where scripts can read it.
    let kept = p
        .js("return JSON.stringify(sessionStorage) + JSON.stringify(localStorage) + document.cookie")
        .await;
    assert!(
        !kept.as_str().unwrap_or_default().contains("hearth_session"),
        "the page can read the session: {kept}"
    );
    p.text_appears("the empty list", "No workspaces yet").await;
    p.check("workspaces-empty").await;

    // She makes a CLI token; a second one replaces the first.
    let first = new_token(&p).await;
    let token = new_token(&p).await;
    assert_ne!(first, token);
    p.check("account").await;
    let (status, body) = me(&base, &token);
    assert_eq!(status, 200, "{body}");
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(who["name"], "jane");
    let (status, body) = me(&base, &first);
    assert_eq!(status, 401, "the replaced token still works: {body}");

    // She creates a workspace from a repository with an image.
    p.goto("#/new").await;
    p.until("the create form", "document.getElementById('source')")
        .await;
    p.fill("#source", &source).await;
    p.fill("#name", "webws").await;
    p.click("#env-image").await;
    p.until(
        "the image list",
        "document.querySelectorAll('#image option').length > 1",
    )
    .await;
    p.c.find(Locator::Css("#image"))
        .await
        .unwrap()
        .select_by_index(1)
        .await
        .unwrap();
    p.fill("#memory", "0.5").await;
    p.fill("#idle", "30").await;
    p.check("create-form").await;
    p.click("form.create button[type=submit]").await;
    p.text_appears("the workspace created", "Workspace created and running")
        .await;
    let log = p
        .js("return document.querySelector('pre.log').innerText")
        .await;
    assert!(
        !log.as_str().unwrap_or_default().trim().is_empty(),
        "the creation log streamed nothing"
    );
    p.check("create-done").await;
    let ws = s.workspace("webws");
    assert_eq!(ws["state"], "running", "{ws}");
    assert_eq!(ws["owner"], "jane", "{ws}");
    assert_eq!(ws["idle_timeout"], 1800, "{ws}");
    assert_eq!(ws["limits"]["memory_bytes"], 512 * 1024 * 1024, "{ws}");

    // The list shows it live, with its usage.
    p.goto("#/").await;
    p.until(
        "the running workspace in the list",
        "document.querySelector('tr[data-workspace=webws] .state-running')",
    )
    .await;
    p.check("workspaces").await;

    // The browser terminal: the PTY session `hearth shell` uses.
    p.goto("#/w/webws/terminal").await;
    p.text_appears("the terminal connected", "connected").await;
    p.until("the shell prompt", "document.querySelector('.xterm-rows') && document.querySelector('.xterm-rows').innerText.trim().length > 0").await;
    p.click(".xterm-screen").await;
    let out = p.run_in_terminal("echo hello", "echo hello").await;
    assert_eq!(out.trim(), "hello");
    let before = p.run_in_terminal("stty size", "stty size").await;
    p.check("terminal").await;
    // A smaller window: the terminal refits and the PTY follows (resize frames).
    p.c.set_window_size(800, 600).await.unwrap();
    let deadline = Instant::now() + STEP;
    let after = loop {
        let after = p.run_in_terminal("stty size", "stty size").await;
        if after != before || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let size = |s: &str| -> (u32, u32) {
        let mut it = s.split_whitespace().map(|n| n.parse::<u32>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    let (r0, c0) = size(&before);
    let (r1, c1) = size(&after);
    assert!(
        r1 < r0 && c1 < c0,
        "the PTY did not follow the window: {before} then {after}"
    );
    p.c.set_window_size(1280, 900).await.unwrap();

    // The workspace page: how to connect.
    p.goto("#/w/webws").await;
    p.until(
        "the workspace page",
        "document.querySelector('.state-running')",
    )
    .await;
    p.text_appears("the SSH instructions", "ssh -p").await;
    let vscode = p
        .js("return Array.from(document.querySelectorAll('a')).map(a => a.href).find(h => h.startsWith('vscode://'))")
        .await;
    assert_eq!(
        vscode.as_str().unwrap_or_default(),
        "vscode://vscode-remote/ssh-remote+hearth.webws/workspace/webproj"
    );
    p.check("workspace").await;

    // Ports: an app in the workspace shows up, private, with its URL; the toggle makes it
    // public and private again.
    s.exec(
        "webws",
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /tmp/www && printf '%s' '{}' > /tmp/www/index.html && \
                 httpd -p 127.0.0.1:8080 -h /tmp/www",
                APP_PAGE
            ),
        ],
    );
    let port_row = "Array.from(document.querySelectorAll('ul.ports li')).find(li => li.querySelector('.port').innerText.trim() === '8080')";
    p.until(
        "port 8080 listed as private",
        &format!("{port_row} && {port_row}.querySelector('.vis-private')"),
    )
    .await;
    p.check("workspace-ports").await;
    p.click_button("Make public").await;
    p.text_appears("the port made public", "Port 8080 is public")
        .await;
    p.until(
        "port 8080 shown public",
        &format!("{port_row} && {port_row}.querySelector('.vis-public')"),
    )
    .await;
    assert_eq!(visibility(s, "webws", 8080), "public");
    p.click_button("Make private").await;
    p.text_appears("the port made private", "Port 8080 is private")
        .await;
    p.until(
        "port 8080 shown private",
        &format!("{port_row} && {port_row}.querySelector('.vis-private')"),
    )
    .await;
    assert_eq!(visibility(s, "webws", 8080), "private");
    let port_url = p
        .js(&format!("return {port_row}.querySelector('a').href"))
        .await
        .as_str()
        .expect("port 8080 has a link")
        .to_string();
    assert!(
        port_url.starts_with("http://8080-webws.localhost:"),
        "{port_url}"
    );

    // The owner opens the private port from the dashboard: a new tab, logged in to the
    // port by the server's one-minute link (she is asked for no token), shows the app.
    let dashboard = p.c.window().await.unwrap();
    let before = p.c.windows().await.unwrap();
    p.c.find(Locator::XPath(
        "//ul[contains(@class,'ports')]//a[normalize-space(.)='8080']",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    p.text_appears("the port opened", "Port 8080 opened in a new tab")
        .await;
    let deadline = Instant::now() + STEP;
    let tab = loop {
        let now = p.c.windows().await.unwrap();
        if let Some(w) = now.into_iter().find(|w| !before.contains(w)) {
            break w;
        }
        assert!(Instant::now() < deadline, "no new tab for the port");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    p.c.switch_to_window(tab).await.unwrap();
    p.text_appears("the app's page", "Hello from webws").await;
    assert_eq!(p.status().await, 200);
    assert_eq!(
        p.url().await,
        port_url,
        "the login link went on to the app's /"
    );
    let opener = p.js("return window.opener === null").await;
    assert_eq!(opener, json!(true), "the app can reach the dashboard's tab");
    p.check("port-owner").await;
    p.c.close_window().await.unwrap();
    p.c.switch_to_window(dashboard).await.unwrap();
    // Outside a browser: no credentials 401, her token 200, bob's 404.
    assert_eq!(status_of(&port_url, None), 401);
    assert_eq!(status_of(&port_url, Some(&token)), 200);
    assert_eq!(status_of(&port_url, Some(&bob_token)), 404);

    // Another user, in another browser: the proxy asks who he is (a forged or stale
    // login link does not do), and refuses him with the same answer as for a port that
    // does not exist.
    let driver2 = Driver::start();
    let bob = Page {
        c: driver2.browser().await,
        base: base.clone(),
        issuer: o.issuer().to_string(),
        shots: screenshot_dir(),
        axe,
    };
    bob.c.goto(&port_url).await.unwrap();
    bob.text_appears(
        "the proxy's login page",
        "Port 8080 of workspace webws is private",
    )
    .await;
    assert_eq!(bob.status().await, 401);
    bob.check("port-login").await;
    bob.c
        .goto(&format!("{port_url}_hearth/ticket?t=t1.jane.1.00"))
        .await
        .unwrap();
    bob.text_appears("the stale link refused", "That link has expired")
        .await;
    assert_eq!(bob.status().await, 401);
    bob.fill("#token", &bob_token).await;
    bob.click("button[type=submit]").await;
    bob.text_appears("the refusal", "Not found").await;
    assert_eq!(bob.status().await, 404);
    let body = bob.js("return document.body.innerText").await;
    assert!(
        !body
            .as_str()
            .unwrap_or_default()
            .contains("Hello from webws"),
        "bob sees the app: {body}"
    );
    bob.check("port-refused").await;
    bob.c.clone().close().await.unwrap();
    drop(driver2);

    // Snapshots: take one, see it listed, fork it into a new workspace, remove the fork.
    p.goto("#/w/webws").await;
    p.until(
        "the workspace page",
        "document.querySelector('.state-running')",
    )
    .await;
    p.click_button("Take a snapshot").await;
    p.text_appears("the snapshot taken", "Snapshot taken").await;
    p.until(
        "the snapshot listed",
        "document.querySelector('ul.snapshots li')",
    )
    .await;
    let listed: Value = serde_json::from_str(&s.ok(&["snapshots", "webws", "--json"])).unwrap();
    assert!(
        !listed.as_array().unwrap().is_empty(),
        "no snapshot: {listed}"
    );
    p.click("ul.snapshots li button").await;
    p.fill("#fork-name", "webfork").await;
    p.check("workspace-snapshots").await;
    p.click("form:has(#fork-name) button[type=submit]").await;
    p.until(
        "the fork's page",
        "location.hash === '#/w/webfork' && document.querySelector('h1 .state-running')",
    )
    .await;
    let fork = s.workspace("webfork");
    assert_eq!(fork["state"], "running", "{fork}");
    assert_eq!(fork["owner"], "jane", "{fork}");
    p.check("workspace-fork").await;
    p.click_button("Remove").await;
    p.c.accept_alert().await.unwrap();
    p.until(
        "the list without the fork",
        "document.querySelector('tr[data-workspace=webws]') && !document.querySelector('tr[data-workspace=webfork]')",
    )
    .await;
    assert!(!s.workspace_names().contains(&"webfork".to_string()));

    // Stop and start from the workspace page.
    p.goto("#/w/webws").await;
    p.until(
        "the workspace page",
        "document.querySelector('.state-running')",
    )
    .await;
    p.click_button("Stop").await;
    p.text_appears("the stop done", "webws is stopped").await;
    p.until(
        "the stopped badge",
        "document.querySelector('h1 .state-stopped')",
    )
    .await;
    assert_eq!(s.workspace("webws")["state"], "stopped");
    p.check("workspace-stopped").await;
    p.click_button("Start").await;
    p.text_appears("the start done", "webws is running").await;
    assert_eq!(s.workspace("webws")["state"], "running");

    // Phone-sized: nothing wider than the screen.
    p.c.set_window_size(390, 844).await.unwrap();
    p.goto("#/").await;
    p.until(
        "the list",
        "document.querySelector('tr[data-workspace=webws]')",
    )
    .await;
    let wide = p
        .js("return document.documentElement.scrollWidth > window.innerWidth")
        .await;
    assert_eq!(wide, json!(false), "the list scrolls sideways on a phone");
    p.check("workspaces-phone").await;
    p.goto("#/w/webws").await;
    p.until(
        "the workspace page",
        "document.querySelector('.state-running')",
    )
    .await;
    let wide = p
        .js("return document.documentElement.scrollWidth > window.innerWidth")
        .await;
    assert_eq!(
        wide,
        json!(false),
        "the workspace page scrolls sideways on a phone"
    );
    p.check("workspace-phone").await;
    p.c.set_window_size(1280, 900).await.unwrap();

    // Remove, confirmed in the browser's dialog.
    p.click_button("Remove").await;
    p.c.accept_alert().await.unwrap();
    p.text_appears("the empty list again", "No workspaces yet")
        .await;
    assert!(
        !s.workspace_names().contains(&"webws".to_string()),
        "webws is still there"
    );
    sign_out(&p).await;

    // The admin (token sign-in): users, quotas, images, and the audit log of what jane
    // did from the browser.
    sign_in(&p, admin_token.trim(), "admin").await;
    p.goto("#/admin/users").await;
    p.text_appears("jane in the user list", "jane").await;
    p.check("admin-users").await;
    // Signed in through the provider, jane started as a plain user: the admin makes her
    // one of them.
    p.click_button("Make jane an admin").await;
    p.text_appears("the role changed", "jane is now an admin")
        .await;
    p.until(
        "jane's new role in the list",
        "Array.from(document.querySelectorAll('tbody tr')).some(r => r.innerText.includes('jane') && r.querySelector('td[data-label=Role]').innerText === 'admin')",
    )
    .await;
    let users: Value = serde_json::from_str(&s.ok(&["user", "ls", "--json"])).unwrap();
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "jane" && u["admin"] == true),
        "{users}"
    );
    // Quotas: alice gets one of her own, saved through the form.
    p.click_button("Edit alice's quota").await;
    p.fill("#q-alice-ws", "3").await;
    p.fill("#q-alice-mem", "2").await;
    p.click("form[aria-label=\"alice's quota\"] button[type=submit]")
        .await;
    p.text_appears("the quota saved", "alice's quota saved")
        .await;
    p.text_appears("alice's own quota", "alice (own quota)")
        .await;
    let q: Value = serde_json::from_str(&s.ok(&["user", "quota", "alice", "--json"])).unwrap();
    assert_eq!(q["quota"]["max_workspaces"], 3, "{q}");
    assert_eq!(q["quota"]["memory_bytes"], 2u64 << 30, "{q}");
    p.check("admin-users-quota").await;
    p.goto("#/admin/images").await;
    p.text_appears("the busybox image", "busybox").await;
    p.check("admin-images").await;
    p.goto("#/audit").await;
    p.fill("#audit-user", "jane").await;
    p.click_button("Filter").await;
    p.until(
        "jane's removal in the audit log",
        "Array.from(document.querySelectorAll('tbody tr')).some(r => r.innerText.includes('DELETE') && r.innerText.includes('webws') && r.innerText.includes('127.0.0.1'))",
    )
    .await;
    // Her port visibility changes and the port login link are there too.
    let rows = p
        .js("return Array.from(document.querySelectorAll('tbody tr')).map(r => r.innerText)")
        .await;
    let rows: Vec<String> = serde_json::from_value(rows).unwrap();
    let has = |what: &str| {
        rows.iter()
            .filter(|r| r.contains(what) && r.contains("webws/8080"))
            .count()
    };
    assert_eq!(
        has("PUT /v1/workspaces/{name}/ports/{port}"),
        2,
        "{rows:#?}"
    );
    assert_eq!(
        has("POST /v1/workspaces/{name}/ports/{port}/login"),
        1,
        "{rows:#?}"
    );
    p.check("audit").await;

    p.c.clone().close().await.unwrap();
}
