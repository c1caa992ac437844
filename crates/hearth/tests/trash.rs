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

/// Snapshot records in the local store (`<data>/snapshots/snapshots/*`).
fn stored_snapshots(srv: &TestServer) -> usize {
    std::fs::read_dir(srv.data_dir().join("snapshots/snapshots"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Bytes in the local store's packs: what the chunks take.
fn pack_bytes(srv: &TestServer) -> u64 {
    std::fs::read_dir(srv.data_dir().join("snapshots/packs"))
        .map(|d| d.flatten().map(|e| e.metadata().unwrap().len()).sum())
        .unwrap_or(0)
}

fn snapshot_ids(srv: &TestServer, name: &str) -> Vec<String> {
    json(srv, &["snapshots", name, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn deleted(srv: &TestServer) -> Vec<serde_json::Value> {
    json(srv, &["snapshots", "--deleted", "--json"])
        .as_array()
        .unwrap()
        .clone()
}

/// Polls `cond` for up to `secs` seconds.
fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn rm_keeps_snapshots_to_restore_and_a_reused_name_keeps_its_own() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    up(&srv, src.path(), "proj");
    srv.exec("proj", &["sh", "-c", "echo first > /root/a && sync"]);
    srv.ok(&["snapshot", "proj"]);
    let first = snapshot_ids(&srv, "proj");
    assert_eq!(first.len(), 1);
    let old_id = srv.workspaces()[0]["id"].as_str().unwrap().to_string();

    let out = srv.ok(&["rm", "proj"]);
    assert!(out.contains("kept until"), "{out}");
    assert!(srv.workspace_names().is_empty());
    let d = deleted(&srv);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (&d[0]["name"], &d[0]["id"]),
        (&"proj".into(), &old_id.clone().into())
    );
    assert_eq!(d[0]["snapshots"][0]["id"], first[0].as_str());
    let table = srv.ok(&["snapshots", "--deleted"]);
    assert!(
        table.contains(&old_id) && table.contains(&first[0]),
        "{table}"
    );

    // The name again: a new workspace with its own, separate history.
    srv.ok(&[
        "up",
        src.path().join("proj").to_str().unwrap(),
        "--image",
        "busybox",
    ]);
    srv.exec("proj", &["sh", "-c", "echo second > /root/a && sync"]);
    srv.ok(&["snapshot", "proj"]);
    let second = snapshot_ids(&srv, "proj");
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first);
    assert_eq!(deleted(&srv)[0]["snapshots"].as_array().unwrap().len(), 1);

    // Restoring over a live name is refused; under another name it brings the files back.
    let out = srv.hearth(&["restore", "proj"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already exists"),
        "{err}"
    );
    srv.ok(&["restore", "proj", "--as", "old"]);
    assert_eq!(srv.exec("old", &["cat", "/root/a"]).trim(), "first");
    assert_eq!(srv.exec("proj", &["cat", "/root/a"]).trim(), "second");
    // It is the removed workspace again, history included; the trash is empty.
    let old = srv
        .workspaces()
        .into_iter()
        .find(|w| w["name"] == "old")
        .unwrap();
    assert_eq!(old["id"], old_id.as_str());
    assert_eq!(snapshot_ids(&srv, "old"), first);
    assert_eq!(snapshot_ids(&srv, "proj"), second);
    assert!(deleted(&srv).is_empty());
    let err = srv.fails(&["restore", "proj"]);
    assert!(err.contains("no removed workspace proj"), "{err}");

    // Two removals of one name: --snapshot picks which.
    srv.ok(&["rm", "proj"]);
    srv.ok(&["snapshot", "old"]);
    srv.ok(&["rm", "old"]);
    assert_eq!(deleted(&srv).len(), 2);
    srv.ok(&["restore", "proj", "--snapshot", &second[0], "--as", "again"]);
    assert_eq!(srv.exec("again", &["cat", "/root/a"]).trim(), "second");
    let err = srv.fails(&["restore", "old", "--snapshot", &second[0]]);
    assert!(err.contains("has no snapshot"), "{err}");

    // A removed workspace's image stays for its restore; rm --purge of it lets it go.
    srv.ok(&["rm", "again"]);
    srv.ok(&["rm", "--purge", "again"]);
    let err = srv.fails(&["image", "rm", "busybox"]);
    assert!(err.contains("kept for removed workspace(s) old"), "{err}");
    srv.ok(&["rm", "--purge", "old"]);
    assert!(deleted(&srv).is_empty());
    assert_eq!(stored_snapshots(&srv), 0);
    srv.ok(&["image", "rm", "busybox"]);
    let err = srv.fails(&["rm", "--purge", "old"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn purge_frees_at_once_and_the_grace_period_ends_in_the_gc() {
    let srv = TestServer::start_with(&["--deleted-retention", "6s", "--store-gc-interval", "1"]);
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    for name in ["gone", "kept"] {
        up(&srv, src.path(), name);
        write_random(&srv, name, "/root/big", 600_000);
        srv.ok(&["snapshot", name]);
    }
    let full = pack_bytes(&srv);
    assert!(full >= 1_200_000, "{full}");
    assert_eq!(stored_snapshots(&srv), 2);

    let out = srv.ok(&["rm", "--purge", "gone"]);
    assert!(out.contains("snapshots too"), "{out}");
    assert!(
        deleted(&srv).is_empty(),
        "a purged workspace is not restorable"
    );
    assert_eq!(stored_snapshots(&srv), 1);
    let err = srv.fails(&["restore", "gone"]);
    assert!(err.contains("no removed workspace"), "{err}");
    eventually(30, "the purged chunks freed", || {
        pack_bytes(&srv) <= full - 550_000
    });

    srv.ok(&["rm", "kept"]);
    let d = deleted(&srv);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["snapshots"].as_array().unwrap().len(), 1, "{d:?}");
    assert!(
        d[0]["store"]["unique_bytes"].as_u64().unwrap() >= 600_000,
        "{d:?}"
    );
    let before = pack_bytes(&srv);
    eventually(40, "the grace period to end", || deleted(&srv).is_empty());
    assert_eq!(stored_snapshots(&srv), 0);
    eventually(30, "the expired chunks freed", || {
        pack_bytes(&srv) <= before - 550_000
    });
    assert!(srv.server_log().contains("grace period over"));
}

#[test]
fn zero_retention_forgets_on_rm() {
    let srv = TestServer::start_with(&["--deleted-retention", "0"]);
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    up(&srv, src.path(), "w");
    srv.ok(&["snapshot", "w"]);
    assert_eq!(stored_snapshots(&srv), 1);
    let out = srv.ok(&["rm", "w"]);
    assert!(out.contains("snapshots too"), "{out}");
    assert!(deleted(&srv).is_empty());
    assert_eq!(stored_snapshots(&srv), 0);
}

#[test]
fn teardown_purge_leaves_no_snapshots() {
    let mut srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    for name in ["live", "removed"] {
        up(&srv, src.path(), name);
        write_random(&srv, name, "/root/big", 300_000);
        srv.ok(&["snapshot", name]);
    }
    srv.ok(&["rm", "removed"]);
    assert_eq!(stored_snapshots(&srv), 2);
    srv.kill();
    let out = srv.hearth(&["admin", "teardown", "--purge"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored_snapshots(&srv), 0);
    assert!(pack_bytes(&srv) < 100_000, "{}", pack_bytes(&srv));
    assert!(!srv.data_dir().join("hearth.db").exists());
}
