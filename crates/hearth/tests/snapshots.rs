//! Snapshots end to end: on demand and on stop, restore after the local data is lost,
//! fork into a new uid range, and a corrupt chunk reported by start and by fsck.

mod common;

use std::path::Path;

use common::{git_repo, largest_pack, TestServer};

/// Files in the places users keep work: home, /usr/local, a symlink and a hard link.
const WRITE: &str = "set -e; mkdir -p /root/d /usr/local/share/x; echo secret > /root/d/a; \
    head -c 300000 /dev/urandom > /usr/local/share/x/big; ln -s d/a /root/link; \
    ln /root/d/a /root/hard; chown 1000:1000 /usr/local/share/x/big; chmod 640 /root/d/a; sync";

/// Checksums and metadata of everything WRITE made.
const DIGEST: &str =
    "md5sum /root/d/a /usr/local/share/x/big /root/hard /workspace/snapme/README.md; \
    readlink /root/link; \
    stat -c '%n %u %g %a %h %s %Y' /root/d/a /usr/local/share/x/big /root/hard";

fn snapshots(srv: &TestServer, name: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&srv.ok(&["snapshots", name, "--json"])).unwrap()
}

#[test]
fn snapshot_restore_fork_and_corruption() {
    let mut srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "snapme");
    srv.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        "snapme",
    ]);
    srv.exec("snapme", &["sh", "-c", WRITE]);
    let before = srv.exec("snapme", &["sh", "-c", DIGEST]);
    assert!(
        before.contains("secret") || before.contains("/root/d/a"),
        "{before}"
    );

    // On demand, while running.
    let out = srv.ok(&["snapshot", "snapme"]);
    assert!(out.starts_with("snapshot "), "{out}");
    let list = snapshots(&srv, "snapme");
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0]["size"].as_u64().unwrap() >= 300_000, "{list:?}");
    assert!(list[0]["new_bytes"].as_u64().unwrap() > 0, "{list:?}");
    let table = srv.ok(&["snapshots", "snapme"]);
    assert!(table.contains(list[0]["id"].as_str().unwrap()), "{table}");
    // The workspace still runs after its freeze.
    assert_eq!(srv.exec("snapme", &["echo", "alive"]).trim(), "alive");

    // Stop takes a final snapshot, incremental on the first.
    srv.ok(&["stop", "snapme"]);
    let list = snapshots(&srv, "snapme");
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[1]["parent"], list[0]["id"]);
    let last = list[1]["id"].as_str().unwrap().to_string();
    let w = srv.workspace("snapme");
    assert_eq!(w["last_snapshot"], last.as_str(), "{w}");
    assert!(w["snapshot_error"].is_null(), "{w}");

    // Local data lost: start restores the latest snapshot.
    common::lose_local_data(&srv.ws_dir("snapme"));
    srv.ok(&["start", "snapme"]);
    assert_eq!(srv.exec("snapme", &["sh", "-c", DIGEST]), before);

    // Fork: a new uid range, owners mapped into it.
    srv.ok(&["fork", "snapme", "--snapshot", &last, "--name", "forked"]);
    assert_eq!(srv.exec("forked", &["id", "-u"]).trim(), "0");
    assert_eq!(
        srv.exec("forked", &["stat", "-c", "%u", "/root/d/a"])
            .trim(),
        "0"
    );
    assert_eq!(srv.exec("forked", &["sh", "-c", DIGEST]), before);
    let (a, b) = (srv.workspace("snapme"), srv.workspace("forked"));
    assert_ne!(a["uid_base"], b["uid_base"]);
    let forked_file = srv
        .ws_dir("forked")
        .join("disk/data/upper/usr/local/share/x/big");
    let host_uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&forked_file).unwrap());
    assert_eq!(u64::from(host_uid), b["uid_base"].as_u64().unwrap() + 1000);
    let err = srv.fails(&[
        "fork",
        "snapme",
        "--snapshot",
        "00000000000000000000000000000000",
        "--name",
        "nope",
    ]);
    assert!(err.contains("no snapshot"), "{err}");
    assert!(!srv.workspace_names().contains(&"nope".to_string()));

    // fsck: clean, then a corrupt chunk is reported and blocks a restore.
    let out = srv.ok(&["store", "fsck"]);
    assert!(out.contains("OK"), "{out}");
    // A lazy restore (the default, used above) starts and then denies opening the file
    // whose chunk is bad (see hydrate tests); an eager one fails the start, checked here.
    srv.stop();
    srv.server_args.push("--eager-restore".into());
    srv.spawn();
    srv.ok(&["stop", "snapme"]);
    let dir = srv.ws_dir("snapme");
    common::lose_local_data(&dir);
    let store = srv.data_dir().join("snapshots");
    let chunk = largest_pack(&store);
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&chunk, &bytes).unwrap();

    let err = srv.fails(&["start", "snapme"]);
    assert!(err.contains("corrupt"), "{err}");
    assert!(err.contains("usr/local/share/x/big"), "{err}");
    assert!(!dir.exists(), "a failed restore left {}", dir.display());
    let leftovers: Vec<_> = std::fs::read_dir(srv.data_dir().join("workspaces"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        std::fs::read(&chunk).unwrap(),
        bytes,
        "the store was changed"
    );
    assert_eq!(snapshots(&srv, "snapme").len(), 3);

    let err = srv.fails(&["store", "fsck"]);
    assert!(err.contains("problem"), "{err}");
    let out = srv.hearth(&["store", "fsck"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("problem:") && stdout.contains("corrupt"),
        "{stdout}"
    );
    assert!(stdout.contains("usr/local/share/x/big"), "{stdout}");
}

#[test]
fn failed_final_snapshot_survives_a_restart_and_is_retried() {
    let mut srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "retry");
    srv.ok(&["up", repo.to_str().unwrap(), "--image", "busybox"]);
    srv.exec("retry", &["sh", "-c", "echo keep > /root/k && sync"]);
    // The store cannot be opened: a file where its directory should be.
    let store = srv.data_dir().join("snapshots");
    assert!(!store.exists(), "no snapshot was taken yet");
    std::fs::write(&store, "in the way").unwrap();
    let out = srv.hearth(&["stop", "retry"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("final snapshot failed"), "{err}");
    let out = srv.hearth(&["ls"]);
    let (table, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(table.contains("FAILED"), "{table}");
    assert!(err.contains("retry: last snapshot failed"), "{err}");
    let w = srv.workspace("retry");
    assert_eq!(w["state"], "stopped");
    assert!(w["snapshot_error"].is_string(), "{w}");
    assert!(w["last_snapshot"].is_null(), "{w}");

    // The failure outlives the server; the next one resumes the retries, which succeed
    // once the store is usable.
    srv.kill();
    std::fs::remove_file(&store).unwrap();
    srv.spawn();
    assert!(srv.workspace("retry")["snapshot_error"].is_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let w = loop {
        let w = srv.workspace("retry");
        if w["snapshot_error"].is_null() || std::time::Instant::now() > deadline {
            break w;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(w["snapshot_error"].is_null(), "retry did not succeed: {w}");
    let list = snapshots(&srv, "retry");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(w["last_snapshot"], list[0]["id"], "{w}");
}

/// Lines of the server log with `what` about workspace `name`.
fn logged(srv: &TestServer, what: &str, name: &str) -> usize {
    let ws = format!("workspace=\"{name}\"");
    srv.server_log()
        .lines()
        .filter(|l| l.contains(what) && l.contains(&ws))
        .count()
}

/// Waits (up to 2 minutes) until the server logged `what` about `name` `n` times.
fn wait_logged(srv: &TestServer, what: &str, name: &str, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while logged(srv, what, name) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{what:?} not logged {n} times for {name}:\n{}",
            srv.server_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn periodic_snapshots_follow_changes_only() {
    let mut srv = TestServer::prepare(&["--snapshot-interval", "1"]);
    // The periodic round's "unchanged" line is a debug one.
    srv.log_filter = "info,hearth_server::manager::snapshots=debug".into();
    srv.spawn();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "tick");
    srv.ok(&["up", repo.to_str().unwrap(), "--image", "busybox"]);
    let wait_for = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let list = snapshots(&srv, "tick");
            if list.len() >= n || std::time::Instant::now() > deadline {
                return list;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let first = wait_for(1);
    assert!(!first.is_empty(), "no periodic snapshot of a new workspace");
    // Changes can share a timestamp tick with a snapshot, which never counts as unchanged,
    // so a few more may follow (as long as the machine takes). Once a round found it
    // unchanged, every later round does: from then on the count holds. (Rounds, not
    // seconds: a loaded machine makes them slower, not fewer.)
    const UNCHANGED: &str = "unchanged, no snapshot";
    wait_logged(&srv, UNCHANGED, "tick", 1);
    let settled = snapshots(&srv, "tick").len();
    let skipped = logged(&srv, UNCHANGED, "tick");
    wait_logged(&srv, UNCHANGED, "tick", skipped + 3);
    assert_eq!(
        snapshots(&srv, "tick").len(),
        settled,
        "snapshots of an unchanged workspace"
    );
    srv.exec("tick", &["sh", "-c", "echo new > /root/new && sync"]);
    assert!(
        wait_for(settled + 1).len() > settled,
        "a change was not snapshotted"
    );
    // Settled again (the change is as young as the snapshot: more of the same tick may
    // follow): the first snapshot since holds the change, any after it nothing new.
    let skipped = logged(&srv, UNCHANGED, "tick");
    wait_logged(&srv, UNCHANGED, "tick", skipped + 1);
    let list = snapshots(&srv, "tick");
    assert!(list[settled]["new_bytes"].as_u64().unwrap() > 0, "{list:?}");
    assert!(
        list[settled + 1..].iter().all(|s| s["new_bytes"] == 0),
        "{list:?}"
    );
    assert_eq!(
        srv.workspace("tick")["last_snapshot"],
        list.last().unwrap()["id"]
    );

    // A final snapshot that keeps failing past the quick retries (1+2+4+8+16 s) is
    // retried every round until the store is back.
    srv.exec("tick", &["sh", "-c", "echo last > /root/last && sync"]);
    let store = srv.data_dir().join("snapshots");
    let away = srv.data_dir().join("snapshots.away");
    std::fs::rename(&store, &away).unwrap();
    std::fs::write(&store, "in the way").unwrap();
    let out = srv.hearth(&["stop", "tick"]);
    assert!(out.status.success());
    // The last quick retry failed, then a round after it.
    wait_logged(&srv, "final snapshot retry failed", "tick", 5);
    let rounds = logged(&srv, "final snapshot still failing", "tick");
    wait_logged(&srv, "final snapshot still failing", "tick", rounds + 1);
    assert!(srv.workspace("tick")["snapshot_error"].is_string());
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&away, &store).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while srv.workspace("tick")["snapshot_error"].is_string() {
        assert!(
            std::time::Instant::now() < deadline,
            "never retried: {}",
            srv.workspace("tick")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let list = snapshots(&srv, "tick");
    assert_eq!(
        srv.workspace("tick")["last_snapshot"],
        list.last().unwrap()["id"]
    );
    let log = srv.server_log();
    assert!(
        log.lines()
            .any(|l| l.contains("final snapshot taken") && !l.contains("on retry")),
        "the round took it:\n{log}"
    );
}

/// Bytes of every file below `dir`.
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

/// Abuse: a workspace rewriting 4 MB of incompressible data before each of 8 snapshots
/// would add 32 MB to the store. With the default retention applied after each snapshot
/// (here: keep the last 2) and background gc, the store holds its last 2 snapshots only.
#[test]
fn retention_and_background_gc_bound_a_rewriting_workspace() {
    const FILE: u64 = 4_000_000;
    let srv = TestServer::start_with(&[
        "--snapshot-keep-last",
        "2",
        "--snapshot-keep-daily",
        "0",
        "--store-gc-interval",
        "1",
    ]);
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "churn");
    srv.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        "churn",
    ]);
    for _ in 0..8 {
        srv.exec(
            "churn",
            &[
                "sh",
                "-c",
                "head -c 4000000 /dev/urandom > /root/big && sync",
            ],
        );
        srv.ok(&["snapshot", "churn"]);
        assert!(snapshots(&srv, "churn").len() <= 2);
    }
    assert_eq!(snapshots(&srv, "churn").len(), 2);
    let store = srv.data_dir().join("snapshots");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut size = tree_size(&store);
    while size > 3 * FILE && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
        size = tree_size(&store);
    }
    assert!(
        size > 2 * FILE && size <= 3 * FILE,
        "store holds {size} bytes for 2 snapshots of a {FILE}-byte file"
    );
}
