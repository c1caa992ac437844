//! What happens to a workspace's snapshots: each workspace's store use shown, and
//! removed workspaces kept for a grace period, listed, restored, purged and collected.
//! Needs root, crun and a built hearth-agent.

mod common;

use common::{git_repo, TestServer};

fn json(srv: &TestServer, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&srv.ok(args)).unwrap()
}

/// `hearth up` of a fresh repository named `name`.
fn up(srv: &TestServer, src: &std::path::Path, name: &str) {
    let repo = git_repo(src, name);
    srv.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        name,
    ]);
}

/// Writes `bytes` of random (incompressible) data to `path` inside the workspace.
fn write_random(srv: &TestServer, name: &str, path: &str, bytes: usize) {
    srv.exec(
        name,
        &[
            "sh",
            "-c",
            &format!("head -c {bytes} /dev/urandom > {path} && sync"),
        ],
    );
}

#[test]
fn store_use_is_shown_per_workspace() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    up(&srv, src.path(), "use");
    let i = json(&srv, &["inspect", "use", "--json"]);
    assert_eq!(i["store"]["snapshots"], 0, "{i}");
    assert_eq!(i["store"]["referenced_bytes"], 0, "{i}");

    write_random(&srv, "use", "/root/big", 400_000);
    srv.ok(&["snapshot", "use"]);
    let i = json(&srv, &["inspect", "use", "--json"]);
    let s = &i["store"];
    assert_eq!(s["snapshots"], 1, "{i}");
    // Random data does not compress: at least the file's size is stored, all of it ours.
    let referenced = s["referenced_bytes"].as_u64().unwrap();
    assert!(referenced >= 400_000, "{i}");
    assert_eq!(s["unique_bytes"].as_u64().unwrap(), referenced, "{i}");
    let text = srv.ok(&["inspect", "use"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("snapshots:") && l.contains("1 in the store")),
        "{text}"
    );
    let table = srv.ok(&["snapshots", "use"]);
    let total = table.lines().last().unwrap();
    assert!(total.starts_with("total: 1 snapshot,"), "{table}");

    // A fork shares the chunks: the source's own share drops to nothing.
    let id = json(&srv, &["snapshots", "use", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    srv.ok(&["fork", "use", "--snapshot", &id, "--name", "use2"]);
    srv.ok(&["snapshot", "use2"]);
    let s = json(&srv, &["inspect", "use", "--json"])["store"].clone();
    assert_eq!(s["referenced_bytes"].as_u64().unwrap(), referenced, "{s}");
    assert!(s["unique_bytes"].as_u64().unwrap() < 100_000, "{s}");
    let table = srv.ok(&["snapshots", "use2"]);
    assert!(
        table
            .lines()
            .last()
            .unwrap()
            .starts_with("total: 1 snapshot,"),
        "{table}"
    );
}
