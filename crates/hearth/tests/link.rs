//! Nodes on other hosts, as processes on this one: a `hearth server` and `hearth node`
//! processes, each with its own data dir, bridge, subnet and cgroup parent, joining
//! over loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{agent_binary, TestServer, HEARTH};
use rand::Rng;

/// A `hearth node` process and its data dir; killed and torn down on drop.
struct TestNode {
    dir: tempfile::TempDir,
    name: String,
    bridge: String,
    subnet: String,
    cgroup_parent: String,
    labels: Vec<String>,
    /// More `hearth node` flags.
    extra: Vec<String>,
    child: Option<Child>,
}

impl TestNode {
    fn new(name: &str) -> TestNode {
        let mut rng = rand::thread_rng();
        let tag: String = (0..8)
            .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap())
            .collect();
        TestNode {
            dir: tempfile::Builder::new()
                .prefix("hearth-node-")
                .tempdir()
                .unwrap(),
            name: name.to_string(),
            bridge: format!("hn{tag}"),
            subnet: format!(
                "10.{}.{}.0/24",
                rng.gen_range(100..=250),
                rng.gen_range(0..=255)
            ),
            cgroup_parent: format!("hearth-node-test-{tag}"),
            labels: Vec::new(),
            extra: Vec::new(),
            child: None,
        }
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("node.log")).unwrap_or_default()
    }

    fn credential_file(&self) -> PathBuf {
        self.data_dir().join("node-credential.json")
    }

    /// Starts `hearth node` against `server` (with `token` if given).
    fn spawn(&mut self, server: &TestServer, token: Option<&str>) {
        assert!(self.child.is_none(), "node already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir().join("node.log"))
            .unwrap();
        let mut cmd = Command::new(HEARTH);
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .args([
                "node",
                "--server",
                &server_url(server),
                "--name",
                &self.name,
            ])
            .args(["--bridge", &self.bridge, "--subnet", &self.subnet])
            .args(["--cgroup-parent", &self.cgroup_parent])
            .arg("--agent")
            .arg(agent_binary())
            .args(["--disk-reserve", "256M"])
            .env("RUST_LOG", "info")
            .env_remove("HEARTH_JOIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for l in &self.labels {
            cmd.args(["--label", l]);
        }
        cmd.args(&self.extra);
        if let Some(t) = token {
            cmd.args(["--join-token", t]);
        }
        self.child = Some(cmd.spawn().expect("spawn hearth node"));
    }

    /// Waits for the node process to exit by itself; returns its log.
    fn exits(&mut self) -> String {
        let mut c = self.child.take().expect("node not running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert!(!st.success(), "node exited with success:\n{}", self.log());
                return self.log();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("node did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
        let out = Command::new(HEARTH)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["admin", "teardown", "--purge"])
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "teardown of node {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn server_url(server: &TestServer) -> String {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(server.data_dir().join("server.json")).unwrap())
            .unwrap();
    info["url"].as_str().unwrap().to_string()
}

/// How many times the server logged `what` for node `name`.
fn logged(server: &TestServer, what: &str, name: &str) -> usize {
    server
        .server_log()
        .lines()
        .filter(|l| l.contains(what) && l.contains(&format!("node=\"{name}\"")))
        .count()
}

/// Waits until the server logged `what` for node `name` `n` times.
fn wait_logged(server: &TestServer, node: &TestNode, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while logged(server, what, &node.name) < n {
        assert!(
            Instant::now() < deadline,
            "server did not log {what:?} {n} times for node {}:\nserver:\n{}\nnode:\n{}",
            node.name,
            server.server_log(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn token(server: &TestServer, args: &[&str]) -> String {
    let mut a = vec!["node", "token"];
    a.extend_from_slice(args);
    server.ok(&a).trim().to_string()
}

#[test]
fn nodes_join_once_and_come_back_after_a_kill() {
    let server = TestServer::start();
    let t = token(&server, &[]);
    assert_eq!(t.len(), 64, "{t}");

    let mut a = TestNode::new("node-a");
    a.spawn(&server, Some(&t));
    wait_logged(&server, &a, "node connected", 1);
    let meta = std::fs::metadata(a.credential_file()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let kept = std::fs::read_to_string(a.credential_file()).unwrap();
    assert!(!kept.contains(&t), "the join token is kept on the node");

    // A used token, an expired one, one made for another name: refused, clearly.
    let mut b = TestNode::new("node-b");
    b.spawn(&server, Some(&t));
    let log = b.exits();
    assert!(
        log.contains("join token is unknown, used or expired"),
        "{log}"
    );
    assert!(!b.credential_file().exists());
    let short = token(&server, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    b.spawn(&server, Some(&short));
    let log = b.exits();
    assert!(
        log.contains("join token is unknown, used or expired"),
        "{log}"
    );
    let other = token(&server, &["--node", "node-c"]);
    b.spawn(&server, Some(&other));
    let log = b.exits();
    assert!(
        log.contains("this join token is for node node-c, not node-b"),
        "{log}"
    );
    // A second node of a joined name is refused even with a fresh token.
    let fresh = token(&server, &[]);
    let mut a2 = TestNode::new("node-a");
    a2.spawn(&server, Some(&fresh));
    let log = a2.exits();
    assert!(log.contains("node node-a has joined already"), "{log}");

    // A wrong credential, and a credential of another name, are refused at connect.
    std::fs::write(
        a2.credential_file(),
        r#"{"name":"node-a","credential":"0000000000000000000000000000000000000000000000000000000000000000"}"#,
    )
    .unwrap();
    a2.spawn(&server, None);
    let log = a2.exits();
    assert!(log.contains("wrong credential for node node-a"), "{log}");
    // The right credential while node-a is connected: refused, and it keeps trying.
    std::fs::copy(a.credential_file(), a2.credential_file()).unwrap();
    a2.spawn(&server, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a2.log().contains("node node-a is already connected") {
        assert!(Instant::now() < deadline, "{}", a2.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    a2.kill();
    assert_eq!(logged(&server, "node connected", "node-a"), 1);

    // kill -9: the server sees the connection go; restarted, the node dials again with
    // the credential it kept.
    a.kill();
    wait_logged(&server, &a, "node disconnected", 1);
    a.spawn(&server, None);
    wait_logged(&server, &a, "node connected", 2);
}

/// Node `name` as `hearth node ls --json` shows it.
fn node_row(server: &TestServer, name: &str) -> Option<serde_json::Value> {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&server.ok(&["node", "ls", "--json"])).unwrap();
    rows.into_iter().find(|r| r["name"] == name)
}

fn wait_ready(server: &TestServer, node: &TestNode) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = node_row(server, &node.name) {
            if r["connected"] == true && r["state"] == "ready" && !r["capacity"].is_null() {
                return r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} not ready:\nserver:\n{}\nnode:\n{}",
            node.name,
            server.server_log(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// curl through the port proxy with the admin's token: (status, body).
/// Serves `text` with busybox httpd on port 8080 in workspace `ws` and reads it back
/// through `srv`'s port proxy (and so through the node's connect).
fn serve_page(srv: &TestServer, ws: &str, text: &str) {
    srv.exec(
        ws,
        &[
            "sh",
            "-c",
            &format!("mkdir -p /www && echo {text} > /www/index.html && httpd -p 8080 -h /www"),
        ],
    );
    let (status, body) = proxy_get(srv, &format!("8080-{ws}.localhost"));
    assert_eq!((status, body.trim()), (200, text));
}

fn proxy_get(server: &TestServer, host: &str) -> (u16, String) {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(server.data_dir().join("server.json")).unwrap())
            .unwrap();
    let port: u16 = info["proxy"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let token = std::fs::read_to_string(server.data_dir().join("token")).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .arg(format!("http://{host}:{port}/"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn a_workspace_lives_on_a_remote_node() {
    let server = TestServer::start();
    server.load_busybox();
    let mut far = TestNode::new("far");
    far.labels = vec!["pool=far".into()];
    far.spawn(&server, Some(&token(&server, &[])));
    let row = wait_ready(&server, &far);
    assert_eq!(row["embedded"], false, "{row}");
    assert_eq!(row["labels"]["pool"], "far", "{row}");

    // Placed on the remote node by its label; the image follows it there over the wire.
    let repo = common::git_repo(server.data_dir(), "proj");
    server.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        "rw",
        "--node-selector",
        "pool=far",
    ]);
    let ws = server.workspaces();
    let rw = ws.iter().find(|w| w["name"] == "rw").unwrap();
    assert_eq!(rw["node"], "far", "{rw}");
    assert!(
        std::fs::read_dir(far.data_dir().join("workspaces"))
            .unwrap()
            .count()
            == 1,
        "the workspace's files are not in the remote node's data dir"
    );

    // Exec: output and exit code cross both hops.
    let out = server.hearth(&[
        "exec",
        "rw",
        "--",
        "sh",
        "-c",
        "cat /workspace/proj/README.md; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello from the repo"),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "{out:?}"
    );

    // A port inside, through the port proxy and the node's connect.
    serve_page(&server, "rw", "far-away");

    server.ok(&["stop", "rw"]);
    server.ok(&["start", "rw"]);
    assert_eq!(
        server.exec("rw", &["cat", "/www/index.html"]).trim(),
        "far-away"
    );

    // The node dies: its workspace's calls fail as unavailable; it comes back on restart.
    far.kill();
    wait_logged(&server, &far, "node disconnected", 1);
    let err = server.fails(&["exec", "rw", "--", "true"]);
    assert!(err.contains("far"), "{err}");
    far.spawn(&server, None);
    wait_ready(&server, &far);
    assert_eq!(
        server.exec("rw", &["cat", "/www/index.html"]).trim(),
        "far-away"
    );

    server.ok(&["rm", "rw"]);
    assert_eq!(
        std::fs::read_dir(far.data_dir().join("workspaces"))
            .unwrap()
            .count(),
        0,
        "rm left the workspace on the node"
    );
}

/// Waits until `what` holds (the server's view changes within a few heartbeats).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn workspace(server: &TestServer, name: &str) -> serde_json::Value {
    server
        .workspaces()
        .into_iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no workspace {name}"))
}

fn snapshot_count(server: &TestServer, name: &str) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&server.ok(&["snapshots", name, "--json"])).unwrap();
    v.as_array().expect("a list of snapshots").len()
}

/// kill -9 of a node process: its workspace shows `lost` with its last snapshot, starts
/// on another node from that snapshot (what was written after it is lost, nothing else),
/// and the node, restarted, learns the workspace moved and drops its copy without
/// writing a snapshot over the newer history.
#[test]
fn a_killed_node_is_fenced_when_it_comes_back() {
    // moto takes any credentials; server and nodes read them from the environment.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let (_moto, s3) = common::s3::bucket();
    let server = TestServer::start_with(&["--snapshot-s3", &s3, "--node-lost-after", "3s"]);
    server.load_busybox();
    let mut a = TestNode::new("node-a");
    a.labels = vec!["pool=a".into()];
    a.extra = vec!["--snapshot-s3".into(), s3.clone()];
    a.spawn(&server, Some(&token(&server, &[])));
    wait_ready(&server, &a);

    let repo = common::git_repo(server.data_dir(), "proj");
    server.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        "w",
        "--node-selector",
        "pool=a",
    ]);
    assert_eq!(workspace(&server, "w")["node"], "node-a");
    server.exec("w", &["sh", "-c", "echo before > /workspace/f && sync"]);
    server.ok(&["snapshot", "w"]);
    server.exec("w", &["sh", "-c", "echo after > /workspace/f && sync"]);
    let snaps = snapshot_count(&server, "w");
    assert!(snaps >= 1, "no snapshot listed");

    a.kill();
    wait_until("w shows lost", || {
        workspace(&server, "w")["state"] == "lost"
    });
    let lost = workspace(&server, "w");
    assert!(lost["last_snapshot_at"].is_string(), "{lost}");

    // Only node-a carries pool=a: give the embedded node the label so w can go there.
    let nodes: Vec<serde_json::Value> =
        serde_json::from_str(&server.ok(&["node", "ls", "--json"])).unwrap();
    let local = nodes
        .iter()
        .find(|n| n["embedded"] == true)
        .and_then(|n| n["name"].as_str())
        .expect("the embedded node")
        .to_string();
    server.ok(&["node", "label", &local, "pool=a"]);
    server.ok(&["start", "w"]);
    let w = workspace(&server, "w");
    assert_eq!(
        (&w["state"], &w["node"]),
        (&"running".into(), &local.clone().into())
    );
    assert_eq!(server.exec("w", &["cat", "/workspace/f"]).trim(), "before");
    let snaps = snapshot_count(&server, "w");

    // node-a comes back with its stale copy: it drops it, and writes no snapshot.
    assert_eq!(
        std::fs::read_dir(a.data_dir().join("workspaces"))
            .unwrap()
            .count(),
        1,
        "node-a lost its copy before it came back"
    );
    a.spawn(&server, None);
    wait_ready(&server, &a);
    wait_until("node-a dropped its copy of w", || {
        std::fs::read_dir(a.data_dir().join("workspaces"))
            .map(|d| d.count() == 0)
            .unwrap_or(false)
    });
    assert_eq!(
        snapshot_count(&server, "w"),
        snaps,
        "node-a wrote a snapshot"
    );
    let w = workspace(&server, "w");
    assert_eq!(
        (&w["state"], &w["node"]),
        (&"running".into(), &local.into())
    );
    assert_eq!(server.exec("w", &["cat", "/workspace/f"]).trim(), "before");
    server.ok(&["rm", "w"]);
}

/// Lines of `server`'s log containing `what`.
fn log_count(server: &TestServer, what: &str) -> usize {
    server
        .server_log()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

fn workspace_dirs(node: &TestNode) -> usize {
    std::fs::read_dir(node.data_dir().join("workspaces"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Two `hearth server` processes on one PostgreSQL database serve one fleet: a node that
/// joined through server A links to B too (A tells it of B), so B answers for the
/// workspace A created (exec, port proxy). A is killed with SIGKILL in the middle of a
/// stop: B takes the leader lease, takes the stop over once A's heartbeat is stale,
/// finishes it with its final snapshot, and runs the periodic snapshots from then on;
/// the workspace has one copy, on its node, and starts again through B. A, restarted,
/// serves it again without taking anything over.
#[test]
fn two_servers_serve_one_fleet_and_survive_a_kill() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let (_moto, s3) = common::s3::bucket();
    let db = hearth_server::db::scratch::ScratchDb::new()
        .expect("a scratch PostgreSQL server (scripts/install-deps.sh --test installs it)");
    let url = db.url();
    let shared = [
        "--database",
        url.as_str(),
        "--no-local-node",
        "--snapshot-interval",
        "3",
    ];
    let mut a = TestServer::prepare(&shared);
    a.spawn();
    // One admin token for both (each server records its data dir's token as admin's).
    let mut b = TestServer::prepare(&shared);
    std::fs::copy(a.data_dir().join("token"), b.data_dir().join("token")).unwrap();
    b.spawn();
    wait_until("A holds the leader lease", || {
        log_count(&a, "leader: running the background jobs") == 1
    });

    let mut n = TestNode::new("n1");
    n.extra = vec!["--snapshot-s3".into(), s3.clone()];
    n.spawn(&a, Some(&token(&a, &[])));
    wait_ready(&a, &n);
    // A told the node of B; the node linked to B with its credential.
    wait_ready(&b, &n);
    assert!(
        n.log()
            .contains("linking to another server of the control plane"),
        "{}",
        n.log()
    );

    // Created through A, used through B: exec and the port proxy go over B's own link.
    // (A remote node loads archives: the image directory goes as a tar.)
    let image = common::images::busybox_image(a.data_dir());
    let tar = a.data_dir().join("busybox.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&image)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar {}", image.display());
    a.ok(&["image", "load", tar.to_str().unwrap(), "--name", "busybox"]);
    let repo = common::git_repo(a.data_dir(), "proj");
    a.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        "w",
    ]);
    assert!(
        b.exec("w", &["cat", "/workspace/proj/README.md"])
            .contains("hello from the repo"),
        "B does not reach the workspace A made"
    );
    serve_page(&b, "w", "from-b");

    // A process that ignores TERM holds the stop for the node's grace period, so A can be
    // killed while the workspace is `stopping`.
    b.exec("w", &["sh", "-c", "echo kept > /workspace/f && sync"]);
    b.exec(
        "w",
        &[
            "sh",
            "-c",
            "(trap '' TERM; while true; do sleep 1; done) </dev/null >/dev/null 2>&1 &",
        ],
    );
    let mut stop = a.spawn_cli(&["stop", "w"]);
    wait_until("w is stopping", || b.workspace("w")["state"] == "stopping");
    let killed = Instant::now();
    a.kill();
    let _ = stop.kill();
    let _ = stop.wait();

    // B takes the lease (A's expires), then A's stop (A's heartbeat is stale).
    wait_until("B holds the leader lease", || {
        log_count(&b, "leader: running the background jobs") == 1
    });
    let leader_after = killed.elapsed();
    wait_until("the stop is taken over and finished", || {
        b.workspace("w")["state"] == "stopped"
    });
    let settled_after = killed.elapsed();
    println!(
        "takeover after SIGKILL of server A: B leader after {:.1} s, A's stop finished by B \
         after {:.1} s",
        leader_after.as_secs_f64(),
        settled_after.as_secs_f64()
    );
    assert_eq!(
        log_count(&b, "taking over an operation whose server is gone"),
        1,
        "{}",
        b.server_log()
    );
    // Its final snapshot follows, as after any stop.
    wait_until("the final snapshot is recorded", || {
        b.workspace("w")["last_snapshot_at"].is_string()
    });
    let w = b.workspace("w");
    assert!(w["error"].is_null(), "{w}");
    assert!(w["snapshot_error"].is_null(), "{w}");
    assert_eq!(workspace_dirs(&n), 1, "one copy of w on its node");
    assert_eq!(b.workspace_names(), ["w"]);

    // Nothing lost: it starts again through B with its files; B runs the periodic
    // snapshots now (nobody asks for this one).
    b.ok(&["start", "w"]);
    assert_eq!(b.exec("w", &["cat", "/workspace/f"]).trim(), "kept");
    let before = snapshot_count(&b, "w");
    b.exec("w", &["sh", "-c", "echo later > /workspace/g && sync"]);
    wait_until("B takes a periodic snapshot", || {
        snapshot_count(&b, "w") > before
    });

    // A comes back: the node links to it again and it serves w, while B keeps the lease
    // and A's start changes nothing of B's.
    a.spawn();
    wait_ready(&a, &n);
    assert_eq!(a.exec("w", &["cat", "/workspace/g"]).trim(), "later");
    assert_eq!(a.workspace("w")["state"], "running");
    assert_eq!(
        log_count(&a, "leader: running the background jobs"),
        1,
        "A took the lease back from B"
    );
    b.ok(&["rm", "w"]);
    assert_eq!(workspace_dirs(&n), 0, "rm left the workspace on the node");
}
