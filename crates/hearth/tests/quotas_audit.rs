//! Per-user quotas and the audit log against a real server with real workspaces: the
//! `hearth user quota` and `hearth audit` verbs, refusals on create, fork, start and
//! resize, SSH logins with the real OpenSSH client, and the client address behind a
//! trusted proxy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::gitserver::GitServer;
use common::{git_repo, TestServer};
use common::{keygen, sh};

fn base_addr(s: &TestServer) -> String {
    let info = std::fs::read_to_string(s.data_dir().join("server.json")).unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info["url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://")
        .unwrap()
        .to_string()
}

/// One request with extra header lines; the status.
fn raw_request(s: &TestServer, method: &str, path: &str, token: &str, extra: &str) -> u16 {
    let addr = base_addr(s);
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n{extra}\
         content-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out[9..12].parse().unwrap()
}

/// `ssh` with only `key`, a throwaway HOME and known_hosts.
fn ssh(home: &Path, key: &Path, port: u16, user: &str, cmd: &str) -> Output {
    sh(Command::new("ssh")
        .env("HOME", home)
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"])
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            home.join("known_hosts").display()
        ))
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .arg(cmd))
}

fn audit(srv: &TestServer, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&srv.ok(&all)).unwrap()
}

fn find(
    entries: &[serde_json::Value],
    pred: impl Fn(&serde_json::Value) -> bool,
) -> &serde_json::Value {
    entries.iter().find(|e| pred(e)).unwrap_or_else(|| {
        panic!(
            "no such entry in {}",
            serde_json::to_string_pretty(entries).unwrap()
        )
    })
}

#[test]
fn quotas_refuse_growth_and_every_change_is_audited() {
    let srv = TestServer::start_with(&["--trusted-proxy", "127.0.0.1"]);
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let bob = srv.ok(&["user", "add", "bob"]).trim().to_string();
    let as_bob = |args: &[&str]| {
        let mut all = vec!["--token", bob.as_str()];
        all.extend_from_slice(args);
        all.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run_bob = |args: &[&str]| {
        let a = as_bob(args);
        srv.ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let fail_bob = |args: &[&str]| {
        let a = as_bob(args);
        srv.fails(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // The default holds for bob until he has his own.
    srv.ok(&["user", "quota", "--default", "--max-workspaces", "5"]);
    let q: serde_json::Value =
        serde_json::from_str(&srv.ok(&["user", "quota", "bob", "--json"])).unwrap();
    assert_eq!(q["source"], "default");
    assert_eq!(q["quota"]["max_workspaces"], 5);
    srv.ok(&[
        "user",
        "quota",
        "bob",
        "--max-workspaces",
        "1",
        "--memory",
        "1G",
    ]);
    let q: serde_json::Value =
        serde_json::from_str(&run_bob(&["user", "quota", "--json"])).unwrap();
    assert_eq!(q["source"], "user");
    assert_eq!(q["quota"]["memory_bytes"], 1u64 << 30);
    // Fields not given kept what held before.
    assert_eq!(q["quota"]["max_workspaces"], 1);

    // Bob is no admin: his sources are a git server's URLs.
    let git = GitServer::start(src.path());
    let one = git.url(&git_repo(src.path(), "one"));
    let two = git.url(&git_repo(src.path(), "two"));
    let memory_err = fail_bob(&["up", one.as_str(), "--image", "busybox", "--memory", "2G"]);
    assert!(
        memory_err
            .contains("memory quota of user bob exceeded: 0 GiB in use + 2 GiB requested > 1 GiB"),
        "{memory_err}"
    );
    run_bob(&["up", one.as_str(), "--image", "busybox", "--memory", "512M"]);
    let e = fail_bob(&["up", two.as_str(), "--image", "busybox"]);
    assert!(
        e.contains("workspace quota of user bob exceeded: 1 in use + 1 requested > 1"),
        "{e}"
    );
    // A fork is a new workspace too.
    run_bob(&["snapshot", "one"]);
    let snap_id = srv.workspace("one")["last_snapshot"]
        .as_str()
        .expect("a snapshot")
        .to_string();
    let e = fail_bob(&["fork", "one", "--snapshot", &snap_id, "--name", "one-b"]);
    assert!(e.contains("workspace quota of user bob exceeded"), "{e}");
    // Resize: memory of a running workspace counts.
    let e = fail_bob(&["update", "one", "--memory", "2G"]);
    assert!(
        e.contains("memory quota of user bob exceeded: 512 MiB in use + 1.5 GiB requested > 1 GiB"),
        "{e}"
    );
    run_bob(&["update", "one", "--memory", "1G"]);
    // Start: no running workspace allowed now.
    run_bob(&["stop", "one"]);
    srv.ok(&["user", "quota", "bob", "--max-running", "0"]);
    let e = fail_bob(&["start", "one"]);
    assert!(
        e.contains("running workspace quota of user bob exceeded: 0 in use + 1 requested > 0"),
        "{e}"
    );
    let ls = srv.ok(&["user", "ls"]);
    let row = ls.lines().find(|l| l.starts_with("bob ")).unwrap();
    assert!(
        row.contains("1/1") && row.contains("0/0") && row.contains("user"),
        "{ls}"
    );
    srv.ok(&["user", "quota", "bob", "--reset"]);
    run_bob(&["start", "one"]);

    // SSH: one accepted login, one refused (a key nobody registered).
    let home = tempfile::tempdir().unwrap();
    let key = keygen(home.path(), "bob");
    run_bob(&[
        "ssh-key",
        "add",
        key.with_extension("pub").to_str().unwrap(),
    ]);
    let stranger = keygen(home.path(), "stranger");
    let port = gateway_port(&srv, &bob);
    let out = ssh(home.path(), &key, port, "one", "echo in");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\n", "{out:?}");
    let out = ssh(home.path(), &stranger, port, "one", "true");
    assert_eq!(out.status.code(), Some(255), "{out:?}");

    // A port made public, a refused token, and a call through the trusted proxy.
    run_bob(&["port", "one", "8080", "--public"]);
    assert_eq!(
        raw_request(&srv, "POST", "/v1/workspaces/one/stop", "not-a-token", ""),
        401
    );
    assert_eq!(
        raw_request(
            &srv,
            "POST",
            "/v1/workspaces/nope/start",
            &bob,
            "x-forwarded-for: 6.6.6.6, 203.0.113.7\r\n"
        ),
        404
    );

    let all = audit(&srv, &["--limit", "1000"]);
    let e = find(&all, |e| {
        e["action"] == "POST /v1/workspaces" && e["status"] == 403 && e["user"] == "bob"
    });
    assert_eq!(e["ok"], false);
    assert_eq!(e["target"], "two");
    assert_eq!(e["peer"], "127.0.0.1");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("workspace quota of user bob exceeded"),
        "{e}"
    );
    let e = find(&all, |e| {
        e["action"] == "POST /v1/workspaces" && e["ok"] == true && e["user"] == "bob"
    });
    assert_eq!(e["target"], "one");
    let e = find(&all, |e| e["action"] == "PUT /v1/users/{user}/quota");
    assert_eq!((&e["user"], &e["target"]), (&"admin".into(), &"bob".into()));
    let e = find(&all, |e| e["action"] == "ssh.login" && e["ok"] == true);
    assert_eq!((&e["user"], &e["target"]), (&"bob".into(), &"one".into()));
    assert_eq!(e["peer"], "127.0.0.1");
    let e = find(&all, |e| e["action"] == "ssh.login" && e["ok"] == false);
    assert!(e["user"].is_null(), "{e}");
    let e = find(&all, |e| {
        e["action"] == "PUT /v1/workspaces/{name}/ports/{port}"
    });
    assert_eq!((&e["target"], &e["ok"]), (&"one/8080".into(), &true.into()));
    let e = find(&all, |e| e["status"] == 401);
    assert!(e["user"].is_null() && e["target"] == "one", "{e}");
    let e = find(&all, |e| e["target"] == "nope");
    assert_eq!(e["peer"], "203.0.113.7");
    assert_eq!(e["status"], 404);
    // Reads are not recorded, and no entry holds a token.
    assert!(all.iter().all(|e| e["action"] != "GET /v1/workspaces"));
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(&bob), "a token in the audit log");

    // Bob sees his own entries only, and may not ask for others'.
    let mine: Vec<serde_json::Value> =
        serde_json::from_str(&run_bob(&["audit", "--json"])).unwrap();
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|e| e["user"] == "bob"), "{mine:?}");
    let e = fail_bob(&["audit", "--user", "admin"]);
    assert!(e.contains("only their own"), "{e}");
    // Filters: by user, and by time.
    let admins = audit(&srv, &["--user", "admin"]);
    assert!(admins.iter().all(|e| e["user"] == "admin"));
    assert!(audit(&srv, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    run_bob(&["rm", "one"]);
}

/// The SSH gateway's port, from `GET /v1/ssh`.
fn gateway_port(srv: &TestServer, token: &str) -> u16 {
    let addr = base_addr(srv);
    let mut c = TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "GET /v1/ssh HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap();
    v["port"].as_u64().expect("gateway port") as u16
}
