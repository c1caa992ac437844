//! The web dashboard in a real browser: headless Chromium (Debian's `chromium`) driven
//! through `chromedriver` by a WebDriver client, against a real `hearth server` running
//! real workspaces. A user signs in (a session), makes a CLI token, creates a workspace from a git server, types
//! `echo hello` into the browser terminal and reads it back, resizes it, stops, starts and
//! removes the workspace; an admin sees the users and images pages. Every page is checked
//! with axe-core (no serious or critical violations) and saved as a screenshot under
//! `target/web-screenshots/` (the paths are printed).
//!
//! Needs the dashboard built into the binary (`scripts/build.sh` runs npm), `chromium`
//! and `chromium-driver` (`scripts/install-deps.sh --test`).

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
    base: String,
    shots: PathBuf,
    axe: String,
}

impl Page {
    async fn goto(&self, hash: &str) {
        self.c.goto(&format!("{}/{hash}", self.base)).await.unwrap();
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

async fn sign_out(p: &Page) {
    p.click_button("Sign out").await;
    p.until("the sign-in form", "document.getElementById('token')")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let axe_file = web_dir().join("node_modules/axe-core/axe.min.js");
    let axe = std::fs::read_to_string(&axe_file).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (scripts/build.sh runs npm ci in web/)",
            axe_file.display()
        )
    });
    let s = TestServer::start();
    s.load_busybox();
    let base = server_url(&s);
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
    let alice_token = s.ok(&["user", "add", "alice"]).trim().to_string();
    let repo_parent = tempfile::tempdir().unwrap();
    // Alice is no admin: her source is a git server's URL, never a path on the server.
    let git = GitServer::start(repo_parent.path());
    let repo = git.url(&git_repo(repo_parent.path(), "webproj"));

    let driver = Driver::start();
    let p = Page {
        c: driver.browser().await,
        base,
        shots: screenshot_dir(),
        axe,
    };

    // Signing in: a wrong token is refused in words, the admin's is taken.
    p.goto("").await;
    p.until("the sign-in form", "document.getElementById('token')")
        .await;
    p.check("sign-in").await;
    p.fill("#token", "not-a-token").await;
    p.click("form button[type=submit]").await;
    p.text_appears("the refusal", "Signing in failed: invalid token")
        .await;
    sign_in(&p, admin_token.trim(), "admin").await;

    // Admin pages.
    p.goto("#/admin/users").await;
    p.text_appears("alice in the user list", "alice").await;
    p.check("admin-users").await;
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
    sign_out(&p).await;

    // A user signs in (a session: the page keeps no token) and makes a CLI token, which
    // replaces the one she signed in with.
    sign_in(&p, &alice_token, "alice").await;
    let kept = p
        .js("return JSON.stringify(sessionStorage) + JSON.stringify(localStorage) + document.cookie")
        .await;
    assert!(
        !kept.as_str().unwrap_or_default().contains(&alice_token),
        "the page kept the token: {kept}"
    );
    p.goto("#/account").await;
    p.click_button("Make a new token").await;
    p.c.accept_alert().await.unwrap();
    let line = p
        .until(
            "the new token",
            "document.querySelector('pre.cmd') && document.querySelector('pre.cmd').innerText",
        )
        .await;
    let new_token = line
        .as_str()
        .unwrap()
        .split("HEARTH_TOKEN=")
        .nth(1)
        .expect("the export line names the token")
        .trim()
        .to_string();
    p.check("account").await;
    // Who a token belongs to: the status and the body of GET /v1/me.
    let me = |token: &str| -> (u16, String) {
        match ureq::get(&format!("{}/v1/me", p.base))
            .set("Authorization", &format!("Bearer {token}"))
            .call()
        {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("GET /v1/me: {e}"),
        }
    };
    let (status, body) = me(&new_token);
    assert_eq!(status, 200, "{body}");
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(who["name"], "alice");
    let (status, body) = me(&alice_token);
    assert_eq!(status, 401, "the replaced token still works: {body}");

    // She creates a workspace from a repository on a git server, with an image.
    p.goto("#/").await;
    p.text_appears("the empty list", "No workspaces yet").await;
    p.check("workspaces-empty").await;
    p.goto("#/new").await;
    p.until("the create form", "document.getElementById('source')")
        .await;
    p.fill("#source", &repo).await;
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
    assert_eq!(ws["owner"], "alice", "{ws}");
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

    // Stop and start from the workspace page.
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

    // The audit log names what alice did from the browser, and where from.
    sign_out(&p).await;
    sign_in(&p, admin_token.trim(), "admin").await;
    p.goto("#/audit").await;
    p.fill("#audit-user", "alice").await;
    p.click_button("Filter").await;
    p.until(
        "alice's removal in the audit log",
        "Array.from(document.querySelectorAll('tbody tr')).some(r => r.innerText.includes('DELETE') && r.innerText.includes('webws') && r.innerText.includes('127.0.0.1'))",
    )
    .await;
    p.check("audit").await;

    p.c.clone().close().await.unwrap();
}
