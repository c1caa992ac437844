//! A lazy restore outlives its node: the server is killed while a restored workspace's
//! large file cannot be fetched yet and a process in it waits to read that file; the next
//! server takes the hydration over and the process reads the real bytes, never zeros.

mod common;

use std::time::{Duration, Instant};

use common::{git_repo, pack_holding_only, TestServer};

fn inspect(srv: &TestServer, name: &str) -> serde_json::Value {
    serde_json::from_str(&srv.ok(&["inspect", name, "--json"])).unwrap()
}

#[test]
fn server_killed_mid_hydration_loses_nothing() {
    let mut srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "lazy");
    srv.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        "lazy",
    ]);
    srv.exec(
        "lazy",
        &[
            "sh",
            "-c",
            "head -c 64000000 /dev/urandom > /root/big && sync",
        ],
    );
    let want = srv.exec("lazy", &["sha256sum", "/root/big"]);
    // Big enough to fill whole packs of its own (~16 MiB each), so one can be held back
    // without the tree or the small files the start needs.
    let big = std::fs::read(srv.ws_dir("lazy").join("disk/data/upper/root/big")).unwrap();
    // Stop takes the final snapshot; then the local copy is lost (a move to a new node).
    srv.ok(&["stop", "lazy"]);
    let dir = srv.ws_dir("lazy");
    common::lose_local_data(&dir);
    let pack = pack_holding_only(&srv.data_dir().join("snapshots"), &big);
    drop(big);
    let aside = srv.data_dir().join("pack-aside");
    std::fs::rename(&pack, &aside).unwrap();

    // The start restores the tree and runs at once; the big file cannot be fetched.
    srv.ok(&["start", "lazy"]);
    srv.exec(
        "lazy",
        &[
            "sh",
            "-c",
            "setsid sh -c 'sha256sum /root/big > /root/sum.tmp 2>&1; mv /root/sum.tmp /root/sum' \
             </dev/null >/dev/null 2>&1 &",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = &inspect(&srv, "lazy")["hydration"];
        if h["failures"].as_u64().unwrap_or(0) > 0 {
            assert!(h["active"].as_bool().unwrap(), "{h}");
            assert!(
                h["last_error"].as_str().unwrap().contains("root/big"),
                "{h}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no failed fetch reported: {h}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = srv.ok(&["inspect", "lazy"]);
    assert!(table.contains("hydrating"), "{table}");

    srv.kill();
    let sum = dir.join("disk/data/upper/root/sum");
    // Not read here: with no node running every open in the workspace's disk waits.
    assert!(!sum.exists(), "the reader finished without the data");
    std::fs::rename(&aside, &pack).unwrap();
    srv.spawn();

    // The new server takes over: the reader gets the real bytes.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !sum.exists() {
        assert!(
            Instant::now() < deadline,
            "the reader never finished:\n{}",
            srv.server_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(&sum).unwrap(), want);
    assert_eq!(srv.exec("lazy", &["sha256sum", "/root/big"]), want);
    assert!(inspect(&srv, "lazy")["hydration"].is_null());
    assert!(!dir.join("hydrate.keeper").exists());
}
