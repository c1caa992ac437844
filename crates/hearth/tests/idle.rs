//! Idle auto-stop with a real server and busybox workspaces: tiny timeouts and a fast
//! check interval (`--idle-check-interval`), every state change awaited with a generous
//! bound, never timed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(120);

fn workspace(s: &TestServer, name: &str) -> Value {
    s.workspaces()
        .into_iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no workspace {name}"))
}

/// Waits until workspace `name` is stopped and its final snapshot is recorded.
fn wait_stopped(s: &TestServer, name: &str) -> Value {
    let deadline = Instant::now() + BOUND;
    loop {
        let w = workspace(s, name);
        if w["state"] == "stopped"
            && !(w["last_snapshot"].is_null() && w["snapshot_error"].is_null())
        {
            return w;
        }
        assert!(
            Instant::now() < deadline,
            "{name} has not stopped after {BOUND:?}: {w}\nserver log:\n{}",
            s.server_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An exec session left open (`sleep`), once its first output line has arrived (so the
/// server holds its WebSocket).
struct OpenSession(Child);

impl OpenSession {
    fn open(s: &TestServer, name: &str) -> OpenSession {
        let mut child = Command::new(common::HEARTH)
            .arg("--data-dir")
            .arg(s.data_dir())
            .args(["exec", name, "--", "sh", "-c", "echo open; exec sleep 600"])
            .env_remove("HEARTH_URL")
            .env_remove("HEARTH_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run hearth exec");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "open\n", "exec session did not start");
        OpenSession(child)
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn idle_workspaces_stop_and_open_sessions_keep_theirs_running() {
    let s = TestServer::start_with(&["--idle-timeout", "2s", "--idle-check-interval", "200ms"]);
    s.load_busybox();
    let repo = common::git_repo(s.data_dir(), "repo");
    let repo = repo.to_str().unwrap();
    let up = |name: &str, extra: &[&str]| {
        let mut args = vec!["up", repo, "--image", "busybox", "--name", name];
        args.extend_from_slice(extra);
        s.ok(&args);
    };
    // A session opens on `busy` while its timeout is long, then the timeout drops to the
    // server's 2 s: only the open session keeps it running from here on.
    up("busy", &["--idle-timeout", "1h"]);
    let session = OpenSession::open(&s, "busy");
    let out = s.ok(&["update", "busy", "--idle-timeout", "2s"]);
    assert!(out.contains("idle timeout 2s"), "{out}");
    up("never", &["--idle-timeout", "0"]);
    up("long", &["--idle-timeout", "1h"]);
    up("quiet", &[]);
    let w = workspace(&s, "quiet");
    assert_eq!(w["idle_timeout"], 2, "server default: {w}");
    assert!(w["last_active"].is_string(), "a create is activity: {w}");
    assert_eq!(workspace(&s, "never")["idle_timeout"], 0);
    assert_eq!(workspace(&s, "long")["idle_timeout"], 3600);

    // `quiet` stops by itself, with its final snapshot and the reason in the API and in
    // its console log.
    let w = wait_stopped(&s, "quiet");
    let reason = w["stop_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("stopped as idle") && reason.contains("idle timeout 2s"),
        "{w}"
    );
    assert!(w["last_snapshot"].is_string(), "no final snapshot: {w}");
    let snaps: Vec<Value> = serde_json::from_str(&s.ok(&["snapshots", "quiet", "--json"])).unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let logs = s.ok(&["logs", "quiet"]);
    assert!(
        logs.lines()
            .any(|l| l.starts_with("[hearth ") && l.contains("stopped as idle")),
        "{logs}"
    );
    // Every other workspace has been idle longer than `quiet` was (each was touched last
    // before `quiet` was made): the one with a session, timeout 0 and the longer own
    // timeout are running.
    for name in ["busy", "never", "long"] {
        let w = workspace(&s, name);
        assert_eq!(w["state"], "running", "{w}");
        assert!(w["stop_reason"].is_null(), "{w}");
    }
    let table = s.ok(&["ls"]);
    assert!(table.contains("LAST ACTIVE"), "{table}");
    let quiet_row = table.lines().find(|l| l.starts_with("quiet ")).unwrap();
    assert!(quiet_row.contains("s ago"), "{table}");

    // The session closes: `busy` is idle from then on and stops.
    drop(session);
    let w = wait_stopped(&s, "busy");
    assert!(
        w["stop_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("stopped as idle")),
        "{w}"
    );

    // A start clears the reason and is activity; a user's stop has its own reason.
    s.ok(&["update", "quiet", "--idle-timeout", "1h"]);
    s.ok(&["start", "quiet"]);
    let w = workspace(&s, "quiet");
    assert!(w["stop_reason"].is_null(), "{w}");
    s.ok(&["stop", "quiet"]);
    let w = workspace(&s, "quiet");
    assert_eq!(w["stop_reason"], "stopped by admin (hearth stop)", "{w}");
    for name in ["never", "long"] {
        assert_eq!(workspace(&s, name)["state"], "running");
    }
}

#[test]
fn last_activity_survives_a_restart() {
    // The server's default is never: only a workspace's own timeout stops it.
    let mut s = TestServer::start_with(&["--idle-timeout", "0", "--idle-check-interval", "200ms"]);
    s.load_busybox();
    let repo = common::git_repo(s.data_dir(), "repo");
    s.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        "ws",
    ]);
    s.exec("ws", &["true"]);
    // The end of the exec session is recorded once the client has gone, so the value can
    // still move just after `exec` returns: read it once it holds still.
    let mut before = workspace(&s, "ws");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let again = workspace(&s, "ws");
        if again["last_active"] == before["last_active"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last_active keeps moving: {again}"
        );
        before = again;
    }
    let last = before["last_active"].as_str().unwrap().to_string();
    assert_eq!(before["idle_timeout"], 0, "{before}");

    s.stop();
    s.spawn();
    let after = workspace(&s, "ws");
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["last_active"], last.as_str(), "{after}");
    let table = s.ok(&["ls"]);
    let row = table.lines().find(|l| l.starts_with("ws ")).unwrap();
    assert!(row.contains(" ago"), "{table}");

    // Its own timeout beats the server's never.
    s.ok(&["update", "ws", "--idle-timeout", "1"]);
    let w = wait_stopped(&s, "ws");
    assert!(
        w["stop_reason"]
            .as_str()
            .is_some_and(|r| r.contains("idle timeout 1s")),
        "{w}"
    );
}

#[test]
fn bad_idle_timeouts_are_refused() {
    let s = TestServer::start();
    let out = s.hearth(&["update", "nope", "--idle-timeout", "soon"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {e}");
    assert!(e.contains("not a duration"), "{e}");
    s.load_busybox();
    let repo = common::git_repo(s.data_dir(), "repo");
    let e = s.fails(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--idle-timeout",
        "400d",
    ]);
    assert!(e.contains("over the limit"), "{e}");
    assert!(s.workspace_names().is_empty());
}
