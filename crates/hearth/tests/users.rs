//! Users against a real server: tokens, ownership, 401/403/404, the `hearth user` verbs
//! and the upgrade of a data dir from before users.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::gitserver::GitServer;
use common::{git_repo, repo_with, TestServer, HEARTH};

/// The server's base URL (`http://127.0.0.1:PORT`) from its server.json.
fn base_url(s: &TestServer) -> String {
    let info = std::fs::read_to_string(s.data_dir().join("server.json")).unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info["url"].as_str().unwrap().to_string()
}

/// One HTTP/1.1 request over a fresh connection: status and body. `token` goes in a
/// bearer header; `ws` asks for a WebSocket upgrade (the exec route), whose refusal is a
/// plain answer and whose acceptance is a 101 we do not read further.
fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    ws: bool,
) -> (u16, String) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut conn = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if ws {
        req.push_str(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
    } else {
        req.push_str("Connection: close\r\n");
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    conn.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad answer to {method} {path}: {head:?}"));
    if status == 101 {
        return (status, String::new());
    }
    // Every route called here answers in one piece with a length (an upgrade request
    // keeps the connection open, so reading to the end would wait).
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in the answer to {method} {path}: {head}"));
    let mut rest = vec![0u8; len];
    conn.read_exact(&mut rest).unwrap();
    (status, String::from_utf8_lossy(&rest).into_owned())
}

/// `hearth` as a user on another machine: only HEARTH_URL and HEARTH_TOKEN, and a data
/// dir that does not exist; stdin is empty.
fn remote(url: &str, token: &str, args: &[&str]) -> Output {
    remote_input(url, token, args, "")
}

/// [`remote`] with `input` on stdin.
fn remote_input(url: &str, token: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(HEARTH)
        .args(args)
        .env("HEARTH_DATA_DIR", "/nonexistent/hearth-data-dir")
        .env("HEARTH_URL", url)
        .env("HEARTH_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hearth");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn remote_ok(url: &str, token: &str, args: &[&str]) -> String {
    let out = remote(url, token, args);
    assert!(
        out.status.success(),
        "hearth {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn remote_err(url: &str, token: &str, args: &[&str]) -> String {
    let out = remote(url, token, args);
    assert_eq!(out.status.code(), Some(1), "hearth {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn names(url: &str, token: &str) -> Vec<String> {
    let v: Vec<serde_json::Value> =
        serde_json::from_str(&remote_ok(url, token, &["ls", "--json"])).unwrap();
    v.iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect()
}

/// SHA-256 hex by coreutils' sha256sum, not by the code under test.
fn sha256sum(s: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn admin_token(s: &TestServer) -> String {
    std::fs::read_to_string(s.data_dir().join("token"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn users_see_and_touch_only_their_own_workspaces() {
    let s = TestServer::start();
    s.load_busybox();
    let url = base_url(&s);
    let admin = admin_token(&s);

    // Users through the real CLI on the server host (the token file's admin).
    let alice = s.ok(&["user", "add", "alice"]).trim().to_string();
    let bob = s.ok(&["user", "add", "bob"]).trim().to_string();
    assert_eq!(alice.len(), 64, "{alice}");
    assert_ne!(alice, bob);
    let err = s.fails(&["user", "add", "alice"]);
    assert!(err.contains("already exists"), "{err}");
    let err = s.fails(&["user", "add", "Not_Valid"]);
    assert!(err.contains("invalid user name"), "{err}");
    let ls = s.ok(&["user", "ls"]);
    let rows: Vec<Vec<&str>> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(
        rows,
        vec![vec!["admin", "yes"], vec!["alice", "no"], vec!["bob", "no"]],
        "{ls}"
    );

    // Who am I, from another machine.
    let me: serde_json::Value =
        serde_json::from_str(&http(&url, "GET", "/v1/me", Some(&alice), None, false).1).unwrap();
    assert_eq!(
        (me["name"].as_str(), me["admin"].as_bool()),
        (Some("alice"), Some(false))
    );

    // Each makes a workspace with the CLI on "another machine", from a git server.
    let src = tempfile::tempdir().unwrap();
    let git = GitServer::start(src.path());
    let repo = git.url(&git_repo(src.path(), "proj"));
    let repo = repo.as_str();
    remote_ok(
        &url,
        &alice,
        &["up", repo, "--image", "busybox", "--name", "wa"],
    );
    remote_ok(
        &url,
        &bob,
        &["up", repo, "--image", "busybox", "--name", "wb"],
    );
    assert_eq!(names(&url, &alice), ["wa"]);
    assert_eq!(names(&url, &bob), ["wb"]);
    assert_eq!(names(&url, &admin), ["wa", "wb"]);
    let all: Vec<serde_json::Value> = serde_json::from_str(&s.ok(&["ls", "--json"])).unwrap();
    let owners: Vec<_> = all.iter().map(|w| w["owner"].as_str().unwrap()).collect();
    assert_eq!(owners, ["alice", "bob"]);
    // The OWNER column is for admins.
    let admin_ls = s.ok(&["ls"]);
    assert!(
        admin_ls.lines().next().unwrap().contains("OWNER"),
        "{admin_ls}"
    );
    assert!(
        admin_ls
            .lines()
            .any(|l| l.starts_with("wa ") && l.contains(" alice ")),
        "{admin_ls}"
    );
    let alice_ls = remote_ok(&url, &alice, &["ls"]);
    assert!(!alice_ls.contains("OWNER"), "{alice_ls}");

    // Bob gets exactly what a missing workspace gets on every per-workspace route of
    // Alice's, and nothing changes.
    let routes: &[(&str, &str, Option<&str>, bool)] = &[
        ("GET", "", None, false),
        ("GET", "/inspect", None, false),
        ("POST", "/start", None, false),
        ("POST", "/stop", None, false),
        ("DELETE", "", None, false),
        ("GET", "/logs", None, false),
        ("GET", "/exec", None, true),
        ("PUT", "/egress", Some(r#"{"deny":["10.0.0.0/8"]}"#), false),
        ("PATCH", "/egress", Some(r#"{"allow_all":true}"#), false),
        ("PATCH", "/limits", Some(r#"{"pids":100}"#), false),
        ("GET", "/snapshots", None, false),
        ("POST", "/snapshots", None, false),
        (
            "POST",
            "/fork",
            Some(r#"{"snapshot":"00000000000000000000000000000000","name":"stolen"}"#),
            false,
        ),
    ];
    for (method, suffix, body, ws) in routes {
        let (st, theirs) = http(
            &url,
            method,
            &format!("/v1/workspaces/wa{suffix}"),
            Some(&bob),
            *body,
            *ws,
        );
        let (st_missing, missing) = http(
            &url,
            method,
            &format!("/v1/workspaces/zz{suffix}"),
            Some(&bob),
            *body,
            *ws,
        );
        assert_eq!(
            (st, st_missing),
            (404, 404),
            "{method} {suffix}: {theirs} / {missing}"
        );
        assert_eq!(theirs.replace("wa", "zz"), missing, "{method} {suffix}");
        // An admin gets through (a 101 is the exec upgrade); only reads are tried.
        if *method == "GET" {
            let uri = format!("/v1/workspaces/wa{suffix}");
            let (st, b) = http(&url, method, &uri, Some(&admin), None, *ws);
            assert!(st == 200 || st == 101, "admin {method} {suffix}: {st} {b}");
        }
    }
    let wa: serde_json::Value =
        serde_json::from_str(&http(&url, "GET", "/v1/workspaces/wa", Some(&alice), None, false).1)
            .unwrap();
    assert_eq!(wa["state"], "running", "{wa}");
    assert_eq!(wa["egress"]["deny"], serde_json::json!([]), "{wa}");
    assert_eq!(
        remote_ok(&url, &alice, &["exec", "wa", "--", "echo", "mine"]),
        "mine\n"
    );
    assert_eq!(s.exec("wa", &["echo", "admin"]), "admin\n");
    let err = remote_err(&url, &bob, &["exec", "wa", "--", "true"]);
    assert!(err.contains("workspace wa not found"), "{err}");
    assert!(!names(&url, &admin).contains(&"stolen".to_string()));
    // Names are global: taking another user's name is a conflict.
    let body = format!(r#"{{"source":"{repo}","image":"busybox","name":"wa"}}"#);
    let (st, b) = http(
        &url,
        "POST",
        "/v1/workspaces",
        Some(&bob),
        Some(&body),
        false,
    );
    assert_eq!(st, 409, "{b}");
    // A fork belongs to whoever made it.
    let out = remote_ok(&url, &bob, &["snapshot", "wb"]);
    let snap = out.split_whitespace().nth(1).unwrap().to_string();
    remote_ok(
        &url,
        &bob,
        &["fork", "wb", "--snapshot", &snap, "--name", "wb2"],
    );
    assert_eq!(names(&url, &bob), ["wb", "wb2"]);
    let err = remote_err(
        &url,
        &alice,
        &["fork", "wb", "--snapshot", &snap, "--name", "mine"],
    );
    assert!(err.contains("workspace wb not found"), "{err}");

    // Wrong or missing tokens.
    for (method, path) in [
        ("GET", "/v1/workspaces"),
        ("GET", "/v1/me"),
        ("GET", "/v1/workspaces/wa"),
        ("GET", "/v1/users"),
    ] {
        for tok in [None, Some("wrong"), Some(&alice[1..])] {
            let (st, b) = http(&url, method, path, tok, None, false);
            assert_eq!(st, 401, "{method} {path} {tok:?}: {b}");
        }
    }
    let err = remote_err(&url, "wrong", &["ls"]);
    assert!(err.contains("invalid token"), "{err}");

    // Admin operations are refused to Bob.
    for (method, path, body) in [
        ("GET", "/v1/users", None),
        ("POST", "/v1/users", Some(r#"{"name":"eve","admin":true}"#)),
        ("DELETE", "/v1/users/alice", None),
        ("POST", "/v1/store/gc", Some("{}")),
        ("POST", "/v1/store/fsck", None),
        ("DELETE", "/v1/images/busybox", None),
        ("POST", "/v1/images/load", Some(r#"{"path":"/etc"}"#)),
        // Images are shared: a non-admin's upload or build names only its own images, so
        // it cannot replace one other users' workspaces start from.
        ("POST", "/v1/images/upload?name=busybox", Some("x")),
        ("POST", "/v1/images/upload?name=alice/busybox", Some("x")),
        ("POST", "/v1/images/upload", Some("x")),
        ("POST", "/v1/images/build?name=busybox", Some("x")),
    ] {
        let (st, b) = http(&url, method, path, Some(&bob), body, false);
        assert_eq!(st, 403, "{method} {path}: {b}");
        assert!(b.contains("\"forbidden\""), "{b}");
    }
    let err = remote_err(&url, &bob, &["user", "add", "eve"]);
    assert!(err.contains("needs an admin token"), "{err}");
    let image =
        std::env::var("HEARTH_TEST_BUSYBOX").expect("HEARTH_TEST_BUSYBOX: the busybox test image");
    let err = remote_err(&url, &bob, &["image", "load", &image, "--name", "busybox"]);
    assert!(err.contains("use bob/busybox"), "{err}");
    // Refused before a byte was read, and still the reason arrives, not a broken pipe
    // (the server reads the rest of the upload first): 40 MiB is far beyond what socket
    // buffers hold.
    let big = tempfile::NamedTempFile::new().unwrap();
    big.as_file().set_len(40 << 20).unwrap();
    let big = big.path().to_str().unwrap();
    let err = remote_err(&url, &bob, &["image", "load", big, "--name", "busybox"]);
    assert!(err.contains("use bob/busybox"), "{err}");
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::copy(big, ctx.path().join("filler")).unwrap();
    let err = remote_err(
        &url,
        &bob,
        &[
            "image",
            "build",
            ctx.path().to_str().unwrap(),
            "--name",
            "busybox",
        ],
    );
    assert!(err.contains("use bob/busybox"), "{err}");
    remote_ok(
        &url,
        &bob,
        &["image", "load", &image, "--name", "bob/busybox"],
    );
    let images = s.ok(&["image", "ls"]);
    assert!(images.contains("bob/busybox:latest"), "{images}");
    assert!(!s.ok(&["user", "ls"]).contains("eve"));

    // Roles: bob made an admin may list users at once (though his token was just used,
    // so cached), and made a plain user again may not.
    assert_eq!(
        s.ok(&["user", "admin", "bob"]).trim(),
        "user bob is an admin"
    );
    assert!(remote_ok(&url, &bob, &["user", "ls"]).contains("alice"));
    assert_eq!(
        s.ok(&["user", "admin", "bob", "--revoke"]).trim(),
        "user bob is a plain user"
    );
    let err = remote_err(&url, &bob, &["user", "ls"]);
    assert!(err.contains("needs an admin token"), "{err}");
    let err = s.fails(&["user", "admin", "admin", "--revoke"]);
    assert!(err.contains("it is you"), "{err}");

    // Only hashes are stored: no token appears anywhere in the database files.
    for f in ["hearth.db", "hearth.db-wal"] {
        let p = s.data_dir().join(f);
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        for t in [&alice, &bob, &admin] {
            assert!(
                !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                "{f} holds a token"
            );
        }
    }
    let db = s.data_dir().join("hearth.db");
    let stored = sqlite(&db, "SELECT token_hash FROM users WHERE name = 'alice'");
    assert_eq!(stored.trim(), sha256sum(&alice));

    // Removing a user who owns workspaces needs an heir; the heir gets them.
    let err = s.fails(&["user", "rm", "alice"]);
    assert!(err.contains("owns 1 workspace"), "{err}");
    let err = s.fails(&["user", "rm", "admin"]);
    assert!(err.contains("cannot remove user admin"), "{err}");
    let err = s.fails(&["user", "rm", "nobody"]);
    assert!(err.contains("user nobody not found"), "{err}");
    s.ok(&["user", "rm", "alice", "--reassign-to", "bob"]);
    assert_eq!(
        http(&url, "GET", "/v1/me", Some(&alice), None, false).0,
        401
    );
    assert_eq!(names(&url, &bob), ["wa", "wb", "wb2"]);
    assert_eq!(
        remote_ok(&url, &bob, &["exec", "wa", "--", "echo", "inherited"]),
        "inherited\n"
    );
    remote_ok(&url, &bob, &["rm", "wa"]);
    remote_ok(&url, &bob, &["rm", "wb"]);
    remote_ok(&url, &bob, &["rm", "wb2"]);
    s.ok(&["user", "rm", "bob"]);
    assert_eq!(
        http(&url, "GET", "/v1/workspaces", Some(&bob), None, false).0,
        401
    );
}

#[test]
fn rate_limit_is_per_user() {
    let s = TestServer::start_with(&["--api-rate", "1", "--api-burst", "5"]);
    let url = base_url(&s);
    let alice = s.ok(&["user", "add", "alice"]).trim().to_string();
    let bob = s.ok(&["user", "add", "bob"]).trim().to_string();
    let statuses: Vec<u16> = (0..20)
        .map(|_| http(&url, "GET", "/v1/me", Some(&alice), None, false).0)
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    // Bob's bucket is his own.
    let (st, b) = http(&url, "GET", "/v1/me", Some(&bob), None, false);
    assert_eq!(st, 200, "{b}");
}

/// The routes that need no token (here: signing in with one) are limited per client
/// address, so guessing tokens or flooding sign-ins is slow; callers' own API use is not
/// counted there, and health stays open.
#[test]
fn open_routes_are_limited_per_address() {
    let s = TestServer::start_with(&["--public-rate", "1", "--public-burst", "5"]);
    let url = base_url(&s);
    let alice = s.ok(&["user", "add", "alice"]).trim().to_string();
    let guess = r#"{"token":"not-a-token"}"#;
    let statuses: Vec<u16> = (0..12)
        .map(|_| http(&url, "POST", "/v1/session", None, Some(guess), false).0)
        .collect();
    assert_eq!(statuses[..5], [401; 5], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let (st, b) = http(&url, "GET", "/v1/me", Some(&alice), None, false);
    assert_eq!(st, 200, "{b}");
    assert_eq!(http(&url, "GET", "/v1/health", None, None, false).0, 200);
}

#[test]
fn data_dir_from_before_users_keeps_its_token_and_workspaces() {
    let mut s = TestServer::start();
    s.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "proj");
    s.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        "old",
    ]);
    let token = admin_token(&s);
    s.kill();
    // Turn the database back into what a server before users left: no users table, no
    // owner column, migration 4 not applied. The token file and the workspace stay.
    let db = s.data_dir().join("hearth.db");
    sqlite(
        &db,
        "DROP INDEX workspaces_owner; ALTER TABLE workspaces DROP COLUMN owner; \
         DROP TABLE users; DELETE FROM _sqlx_migrations WHERE version = 4;",
    );
    assert_eq!(
        sqlite(
            &db,
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'users'"
        )
        .trim(),
        "0"
    );
    s.spawn();
    assert_eq!(admin_token(&s), token, "the token file was rewritten");
    // The old token, read from the token file by the CLI on the server host, still works
    // and is the admin's; the workspace is the admin's and still runs.
    let url = base_url(&s);
    let me: serde_json::Value =
        serde_json::from_str(&http(&url, "GET", "/v1/me", Some(&token), None, false).1).unwrap();
    assert_eq!(
        (me["name"].as_str(), me["admin"].as_bool()),
        (Some("admin"), Some(true))
    );
    let ws = s.workspaces();
    assert_eq!(ws.len(), 1);
    assert_eq!(
        (ws[0]["name"].as_str(), ws[0]["owner"].as_str()),
        (Some("old"), Some("admin"))
    );
    assert_eq!(ws[0]["state"], "running");
    assert_eq!(s.exec("old", &["echo", "still"]), "still\n");
    // A new user does not see it.
    let carol = s.ok(&["user", "add", "carol"]).trim().to_string();
    assert!(names(&url, &carol).is_empty());
}

/// Sets a secret through the CLI, the value on stdin.
fn set_secret(url: &str, token: &str, key: &str, repo: Option<&str>, value: &str) {
    let mut args = vec!["secret", "set", key];
    if let Some(r) = repo {
        args.extend(["--repo", r]);
    }
    let out = remote_input(url, token, &args, value);
    assert!(
        out.status.success(),
        "secret set {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a CLI verb that must succeed; its stdout and stderr (progress) together.
fn up_text(url: &str, token: &str, args: &[&str]) -> String {
    let out = remote(url, token, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "hearth {args:?}: {text}");
    text
}

/// `$KEY` in a workspace as `token`'s user: the value, or `None` when unset.
fn printenv(url: &str, token: &str, ws: &str, key: &str) -> Option<String> {
    let script = format!("echo \"${{{key}-<unset>}}\"");
    let out = remote_ok(url, token, &["exec", ws, "--", "sh", "-c", &script]);
    let value = out.strip_suffix('\n').unwrap_or(&out);
    (value != "<unset>").then(|| value.to_string())
}

/// A server with busybox loaded, its URL and the tokens of users alice and bob.
fn busybox_and_two_users() -> (TestServer, String, String, String) {
    let s = TestServer::start();
    s.load_busybox();
    let url = base_url(&s);
    let alice = s.ok(&["user", "add", "alice"]).trim().to_string();
    let bob = s.ok(&["user", "add", "bob"]).trim().to_string();
    (s, url, alice, bob)
}

#[test]
fn secrets_reach_only_their_owners_workspaces_and_are_never_shown() {
    let (s, url, alice, bob) = busybox_and_two_users();
    let src = tempfile::tempdir().unwrap();
    // A lifecycle command sees the secrets too (it writes one where we can look).
    let proj = repo_with(
        src.path(),
        "proj",
        &[(
            ".devcontainer.json",
            r#"{"image": "busybox", "containerEnv": {"TOKEN": "from-devcontainer", "KEEP": "dc"},
                "postCreateCommand": "echo \"$TOKEN\" > /tmp/lifecycle-token"}"#,
        )],
    );
    let git = GitServer::start(src.path());
    let proj = git.url(&proj);
    let proj = proj.as_str();
    let other = git.url(&git_repo(src.path(), "other"));
    let other = other.as_str();

    // Values with a trailing newline (as `echo` gives) and blanks inside.
    set_secret(&url, &alice, "TOKEN", None, "alice-all-7f3\n");
    set_secret(
        &url,
        &alice,
        "TOKEN",
        Some(format!("{proj}.git/").as_str()),
        "alice-proj-9c1",
    );
    set_secret(&url, &alice, "ONLY_ALICE", None, "a b  c");
    set_secret(&url, &bob, "TOKEN", None, "bob-all-42e");
    let err = remote_input(&url, &alice, &["secret", "set", "NOT-A-NAME"], "x");
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("invalid secret name"),
        "{err:?}"
    );

    remote_ok(&url, &alice, &["up", proj, "--name", "wa"]);
    remote_ok(
        &url,
        &alice,
        &["up", other, "--image", "busybox", "--name", "wa2"],
    );
    remote_ok(&url, &bob, &["up", proj, "--name", "wb"]);

    // The repository's own secret over the user-wide one, over the devcontainer's env;
    // a request's own variable over all of them.
    assert_eq!(
        printenv(&url, &alice, "wa", "TOKEN").as_deref(),
        Some("alice-proj-9c1")
    );
    assert_eq!(printenv(&url, &alice, "wa", "KEEP").as_deref(), Some("dc"));
    assert_eq!(
        printenv(&url, &alice, "wa2", "TOKEN").as_deref(),
        Some("alice-all-7f3")
    );
    assert_eq!(
        printenv(&url, &alice, "wa2", "ONLY_ALICE").as_deref(),
        Some("a b  c")
    );
    let env = remote_ok(&url, &alice, &["exec", "wa2", "--", "env"]);
    assert!(env.lines().any(|l| l == "ONLY_ALICE=a b  c"), "{env}");
    assert_eq!(
        remote_ok(
            &url,
            &alice,
            &[
                "exec",
                "-e",
                "TOKEN=mine",
                "wa",
                "--",
                "sh",
                "-c",
                "echo $TOKEN"
            ]
        ),
        "mine\n"
    );
    assert_eq!(
        remote_ok(
            &url,
            &alice,
            &["exec", "wa", "--", "cat", "/tmp/lifecycle-token"]
        ),
        "alice-proj-9c1\n"
    );
    // Bob's workspace of the same repository gets his, and none of Alice's.
    assert_eq!(
        printenv(&url, &bob, "wb", "TOKEN").as_deref(),
        Some("bob-all-42e")
    );
    assert_eq!(printenv(&url, &bob, "wb", "ONLY_ALICE"), None);

    // Listings name secrets, never values; each user sees only their own.
    let listed = remote_ok(&url, &alice, &["secret", "ls", "--json"]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let keys: Vec<(&str, Option<&str>)> = v
        .iter()
        .map(|s| (s["key"].as_str().unwrap(), s["repo"].as_str()))
        .collect();
    assert_eq!(
        keys,
        [("ONLY_ALICE", None), ("TOKEN", None), ("TOKEN", Some(proj))],
        "{listed}"
    );
    let bobs = http(&url, "GET", "/v1/secrets", Some(&bob), None, false).1;
    assert!(!bobs.contains("ONLY_ALICE"), "{bobs}");
    // Bob cannot remove Alice's secret: to him it does not exist.
    let (st, b) = http(
        &url,
        "DELETE",
        "/v1/secrets/ONLY_ALICE",
        Some(&bob),
        None,
        false,
    );
    assert_eq!(st, 404, "{b}");
    assert_eq!(
        printenv(&url, &alice, "wa", "ONLY_ALICE").as_deref(),
        Some("a b  c")
    );

    // Nowhere else: not in the API's answers, inspect, logs, the server log or the
    // database file (encrypted at rest, under a key file only root reads).
    let mut shown = vec![
        listed,
        bobs,
        http(&url, "GET", "/v1/workspaces/wa", Some(&alice), None, false).1,
        remote_ok(&url, &alice, &["inspect", "wa", "--json"]),
        remote_ok(&url, &alice, &["logs", "wa"]),
        remote_ok(&url, &bob, &["logs", "wb"]),
        s.server_log(),
    ];
    for f in ["hearth.db", "hearth.db-wal"] {
        if let Ok(b) = std::fs::read(s.data_dir().join(f)) {
            shown.push(String::from_utf8_lossy(&b).into_owned());
        }
    }
    for text in &shown {
        for value in ["alice-all-7f3", "alice-proj-9c1", "a b  c", "bob-all-42e"] {
            assert!(!text.contains(value), "{value} shown in {text}");
        }
    }
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(s.data_dir().join("secrets.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    // Removing the repository's secret brings back the user-wide one (new sessions).
    remote_ok(&url, &alice, &["secret", "rm", "TOKEN", "--repo", proj]);
    assert_eq!(
        printenv(&url, &alice, "wa", "TOKEN").as_deref(),
        Some("alice-all-7f3")
    );
    let err = remote_err(&url, &alice, &["secret", "rm", "TOKEN", "--repo", proj]);
    assert!(err.contains("no secret TOKEN for"), "{err}");

    // A removed user's secrets go with them: their workspace, handed to Alice, now gets
    // hers, and the rows are gone.
    s.ok(&["user", "rm", "bob", "--reassign-to", "alice"]);
    assert_eq!(
        printenv(&url, &alice, "wb", "TOKEN").as_deref(),
        Some("alice-all-7f3")
    );
    let db = s.data_dir().join("hearth.db");
    assert_eq!(
        sqlite(&db, "SELECT COUNT(*) FROM secrets WHERE user_name = 'bob'").trim(),
        "0"
    );
}

#[test]
fn dotfiles_are_installed_or_linked_in_new_workspaces() {
    let (s, url, alice, bob) = busybox_and_two_users();
    let src = tempfile::tempdir().unwrap();
    let git = GitServer::start(src.path());
    let proj = git.url(&git_repo(src.path(), "proj"));
    let proj = proj.as_str();
    // install.sh is not executable in git: it is made so, as the reference CLI does.
    let with_script = repo_with(
        src.path(),
        "dots",
        &[
            (
                "install.sh",
                "echo install ran\necho \"$MARK\" > \"$HOME/.installed\"\n",
            ),
            (".bashrc", "# not linked: install.sh decides\n"),
        ],
    );
    // A link to a file of the server's host stays a link: inside it points into the
    // workspace, where that file does not exist. (Made before the commit repo_with does.)
    let host_file = src.path().join("host-only-file");
    std::fs::write(&host_file, "host secret\n").unwrap();
    std::fs::create_dir(src.path().join("plain-dots")).unwrap();
    std::os::unix::fs::symlink(&host_file, src.path().join("plain-dots/.hostlink")).unwrap();
    let plain = repo_with(
        src.path(),
        "plain-dots",
        &[
            (".vimrc", "set nocompatible\n"),
            (".profile-extra", "x=1\n"),
        ],
    );
    let failing = repo_with(
        src.path(),
        "bad-dots",
        &[("setup.sh", "echo about to fail\nexit 3\n")],
    );
    let (with_script, plain, failing) = (git.url(&with_script), git.url(&plain), git.url(&failing));
    set_secret(&url, &alice, "MARK", None, "seen-by-install");

    // Set, show, and a repository the server cannot use.
    let out = remote_ok(&url, &alice, &["user", "dotfiles", with_script.as_str()]);
    assert!(out.contains(&with_script), "{out}");
    let shown = remote_ok(&url, &alice, &["user", "dotfiles"]);
    assert_eq!(shown, out);
    for (bad, status) in [
        (r#"{"url":"ext::sh -c touch% /tmp/pwned"}"#, 400),
        // A path on the server is an admin's to name, whether or not it exists.
        (r#"{"url":"/nonexistent/dots"}"#, 403),
    ] {
        let (st, b) = http(
            &url,
            "PUT",
            "/v1/me/dotfiles",
            Some(&alice),
            Some(bad),
            false,
        );
        assert_eq!(st, status, "{bad}: {b}");
    }
    assert_eq!(remote_ok(&url, &alice, &["user", "dotfiles"]), out);

    let up = up_text(
        &url,
        &alice,
        &["up", proj, "--image", "busybox", "--name", "wa"],
    );
    assert!(up.contains("installing dotfiles from"), "{up}");
    assert!(up.contains("dotfiles: install ran"), "{up}");
    assert_eq!(
        remote_ok(
            &url,
            &alice,
            &["exec", "wa", "--", "cat", "/root/.installed"]
        ),
        "seen-by-install\n"
    );
    assert_eq!(
        remote_ok(
            &url,
            &alice,
            &["exec", "wa", "--", "cat", "/root/dotfiles/.bashrc"]
        ),
        "# not linked: install.sh decides\n"
    );
    // A clone, owned by root inside (the workspace's user), history included.
    assert_eq!(
        remote_ok(
            &url,
            &alice,
            &[
                "exec",
                "wa",
                "--",
                "stat",
                "-c",
                "%u %a",
                "/root/dotfiles/install.sh",
                "/root/dotfiles/.git"
            ]
        ),
        "0 755\n0 755\n"
    );
    let logs = remote_ok(&url, &alice, &["logs", "wa"]);
    assert!(logs.contains("dotfiles: install ran"), "{logs}");
    assert!(logs.contains("running ~/dotfiles/install.sh"), "{logs}");

    // Without a script, its dotfiles (not .git) are linked into the home directory.
    remote_ok(&url, &alice, &["user", "dotfiles", plain.as_str()]);
    remote_ok(
        &url,
        &alice,
        &["up", proj, "--image", "busybox", "--name", "wa2"],
    );
    assert_eq!(
        remote_ok(
            &url,
            &alice,
            &[
                "exec",
                "wa2",
                "--",
                "sh",
                "-c",
                "readlink /root/.vimrc; readlink /root/.profile-extra"
            ]
        ),
        "/root/dotfiles/.vimrc\n/root/dotfiles/.profile-extra\n"
    );
    assert_eq!(
        remote_ok(&url, &alice, &["exec", "wa2", "--", "cat", "/root/.vimrc"]),
        "set nocompatible\n"
    );
    let host_path = host_file.to_str().unwrap();
    assert_eq!(
        remote_ok(
            &url,
            &alice,
            &["exec", "wa2", "--", "readlink", "/root/dotfiles/.hostlink"]
        ),
        format!("{host_path}\n")
    );
    let out = remote(
        &url,
        &alice,
        &["exec", "wa2", "--", "cat", "/root/.hostlink"],
    );
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("host secret"));
    assert!(
        remote(
            &url,
            &alice,
            &["exec", "wa2", "--", "test", "-e", "/root/.git"]
        )
        .status
        .code()
            == Some(1)
    );
    // The earlier workspace is left alone.
    assert_eq!(
        remote(
            &url,
            &alice,
            &["exec", "wa", "--", "test", "-e", "/root/.vimrc"]
        )
        .status
        .code(),
        Some(1)
    );

    // The workspace's user is devcontainer.json's remoteUser: a non-root one gets them
    // in its own home, owned by it (the busybox test image has user dev, uid 1000).
    let image = std::env::var("HEARTH_TEST_BUSYBOX").expect(
        "HEARTH_TEST_BUSYBOX must name the busybox test image with user dev \
         (scripts/test.sh builds it)",
    );
    s.ok(&["image", "load", &image, "--name", "busybox-dev"]);
    let devproj = repo_with(
        src.path(),
        "devproj",
        &[(
            ".devcontainer.json",
            r#"{"image": "busybox-dev", "remoteUser": "dev",
                "postCreateCommand": "echo post-create", "postStartCommand": "echo post-start"}"#,
        )],
    );
    remote_ok(&url, &alice, &["user", "dotfiles", &with_script]);
    // Between the create-time commands and postStartCommand, as the reference CLI does.
    let up = up_text(&url, &alice, &["up", &git.url(&devproj), "--name", "wdev"]);
    let at = |needle: &str| {
        up.find(needle)
            .unwrap_or_else(|| panic!("{needle} not in {up}"))
    };
    assert!(
        at("postCreateCommand: post-create") < at("installing dotfiles"),
        "{up}"
    );
    assert!(
        at("dotfiles: install ran") < at("postStartCommand: post-start"),
        "{up}"
    );
    assert_eq!(
        remote_ok(
            &url,
            &alice,
            &[
                "exec",
                "wdev",
                "--",
                "sh",
                "-c",
                "stat -c %u /home/dev/dotfiles/install.sh /home/dev/.installed; cat /home/dev/.installed"
            ]
        ),
        "1000\n1000\nseen-by-install\n"
    );

    // A failing install warns; the workspace is up and running.
    remote_ok(&url, &alice, &["user", "dotfiles", failing.as_str()]);
    let text = up_text(
        &url,
        &alice,
        &["up", proj, "--image", "busybox", "--name", "wa3"],
    );
    assert!(text.contains("dotfiles: about to fail"), "{text}");
    assert!(
        text.contains("warning: dotfiles not installed: exit code 3: running ~/dotfiles/setup.sh / about to fail"),
        "{text}"
    );
    let logs = remote_ok(&url, &alice, &["logs", "wa3"]);
    assert!(
        logs.contains("warning: dotfiles not installed: exit code 3"),
        "{logs}"
    );
    let ws: serde_json::Value =
        serde_json::from_str(&http(&url, "GET", "/v1/workspaces/wa3", Some(&alice), None, false).1)
            .unwrap();
    assert_eq!(ws["state"], "running", "{ws}");
    // It is not retried at the next start.
    remote_ok(&url, &alice, &["stop", "wa3"]);
    remote_ok(&url, &alice, &["start", "wa3"]);
    let logs = remote_ok(&url, &alice, &["logs", "wa3"]);
    assert_eq!(logs.matches("about to fail").count(), 2, "{logs}");

    // Bob has none: his workspace gets none. Unset stops them for Alice's next ones.
    remote_ok(
        &url,
        &bob,
        &["up", proj, "--image", "busybox", "--name", "wb"],
    );
    assert_eq!(
        remote(
            &url,
            &bob,
            &["exec", "wb", "--", "test", "-e", "/root/dotfiles"]
        )
        .status
        .code(),
        Some(1)
    );
    assert_eq!(
        remote_ok(&url, &alice, &["user", "dotfiles", "--unset"]),
        "dotfiles: none\n"
    );
}

/// Nothing a non-admin names makes the server read its own files or reach its own
/// loopback: paths and `file:` URLs are refused (403, the same words whether or not the
/// path exists: no oracle) before anything looks at them, for workspaces, prebuilds and
/// dotfiles alike; a network source is fetched from inside the bridge's network, where
/// 127.0.0.1 is not the host's. A git server of its own is the control.
#[test]
fn non_admin_sources_never_reach_the_servers_files_or_loopback() {
    let (s, url, alice, _bob) = busybox_and_two_users();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "proj");
    let repo = repo.to_str().unwrap();
    let file_url = format!("file://{repo}");
    let refused = |source: &str, err: &str| {
        assert!(
            err.contains("is a path on the server")
                && err.contains("only admins")
                && err.contains("push the repository to a git server"),
            "{source}: {err}"
        );
    };
    for source in [
        "/etc",
        repo,
        "/nonexistent/repo",
        file_url.as_str(),
        "FILE:///etc",
    ] {
        let err = remote_err(
            &url,
            &alice,
            &["up", source, "--image", "busybox", "--name", "evil"],
        );
        refused(source, &err);
        let body = serde_json::json!({ "source": source, "image": "busybox" }).to_string();
        let (st, b) = http(
            &url,
            "POST",
            "/v1/workspaces",
            Some(&alice),
            Some(&body),
            false,
        );
        assert_eq!(st, 403, "{source}: {b}");
        let body = serde_json::json!({ "source": source }).to_string();
        let (st, b) = http(
            &url,
            "POST",
            "/v1/prebuilds",
            Some(&alice),
            Some(&body),
            false,
        );
        assert_eq!(st, 403, "{source}: {b}");
        refused(source, &b);
        let body = serde_json::json!({ "url": source }).to_string();
        let (st, b) = http(
            &url,
            "PUT",
            "/v1/me/dotfiles",
            Some(&alice),
            Some(&body),
            false,
        );
        assert_eq!(st, 403, "{source}: {b}");
        refused(source, &b);
    }
    assert_eq!(
        remote_ok(&url, &alice, &["user", "dotfiles"]),
        "dotfiles: none\n"
    );

    // The host's loopback: the server's own port, and a listener that must never see a
    // connection (the host's git would make one; the bridge's network has its own lo).
    let watch = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    watch.set_nonblocking(true).unwrap();
    let server_port = url.rsplit(':').next().unwrap();
    let watched = format!(
        "http://127.0.0.1:{}/x.git",
        watch.local_addr().unwrap().port()
    );
    for source in [format!("http://127.0.0.1:{server_port}/"), watched.clone()] {
        let err = remote_err(
            &url,
            &alice,
            &["up", &source, "--image", "busybox", "--name", "evil"],
        );
        assert!(
            err.contains("Failed to connect") || err.contains("Couldn't connect"),
            "{source}: {err}"
        );
    }
    let (st, b) = http(
        &url,
        "PUT",
        "/v1/me/dotfiles",
        Some(&alice),
        Some(&serde_json::json!({ "url": watched }).to_string()),
        false,
    );
    assert_eq!(st, 200, "{b}");
    // Only the clone in the workspace's network reads it; the workspace is made, with a
    // warning.
    let git = GitServer::start(src.path());
    let up = up_text(
        &url,
        &alice,
        &[
            "up",
            &git.url(Path::new(repo)),
            "--image",
            "busybox",
            "--name",
            "wa",
        ],
    );
    assert!(up.contains("warning: dotfiles not installed"), "{up}");
    match watch.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a fetch reached the host's loopback: {other:?}"),
    }
    assert_eq!(names(&url, &alice), ["wa"]);
    assert_eq!(
        remote_ok(
            &url,
            &alice,
            &["exec", "wa", "--", "cat", "/workspace/proj/README.md"]
        ),
        "hello from the repo\n"
    );

    // An admin keeps local paths.
    s.ok(&["up", repo, "--image", "busybox", "--name", "mine"]);
}
