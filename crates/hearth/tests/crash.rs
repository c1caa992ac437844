//! Crash hygiene: the server is killed with SIGKILL in the middle of create, start and
//! stop; its next start must leave no workspace transitional, no leaked mounts, cgroups
//! or netns, and no user data lost.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{git_repo, TestServer};
use rand::Rng;

const TRANSITIONAL: &[&str] = &["creating", "starting", "stopping", "removing"];

/// Mount points below `dir`.
fn mounts_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(std::path::PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn dirs(path: &Path) -> Vec<String> {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn server_killed_mid_operation_leaves_nothing_stuck_or_lost() {
    let mut srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "crashy");
    let repo = repo.to_str().unwrap();
    srv.ok(&["up", repo, "--image", "busybox", "--name", "keep"]);
    let mut rng = rand::thread_rng();
    let mut expected = String::new();
    for i in 0..10 {
        let ws = srv.workspaces();
        let keep = ws.iter().find(|w| w["name"] == "keep").expect("keep lost");
        if keep["state"] == "running" {
            // Every round adds data; it must survive whatever comes next.
            let line = format!("round {i}\n");
            srv.exec(
                "keep",
                &[
                    "sh",
                    "-c",
                    &format!("echo 'round {i}' >> /root/journal && sync"),
                ],
            );
            expected.push_str(&line);
        }
        let tmp_name = format!("tmp{i}");
        let args: Vec<&str> = match (i % 3, keep["state"].as_str()) {
            (0, _) => vec!["up", repo, "--image", "busybox", "--name", &tmp_name],
            (_, Some("running")) => vec!["stop", "keep"],
            _ => vec!["start", "keep"],
        };
        let mut cli = srv.spawn_cli(&args);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..150)));
        srv.kill();
        let _ = cli.wait();
        srv.spawn();

        let ws = srv.workspaces();
        for w in &ws {
            let st = w["state"].as_str().unwrap();
            assert!(
                !TRANSITIONAL.contains(&st),
                "round {i} ({args:?}): {} stuck in {st}",
                w["name"]
            );
        }
        let running: Vec<&serde_json::Value> =
            ws.iter().filter(|w| w["state"] == "running").collect();
        let ids: Vec<String> = ws
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect();
        let wsdir = srv.data_dir().join("workspaces");
        let mounts = mounts_under(&wsdir);
        let roots = mounts.iter().filter(|m| m.ends_with("rootfs")).count();
        assert_eq!(
            roots,
            running.len(),
            "round {i} ({args:?}): a root mount per running workspace, no more: {mounts:?}"
        );
        // Besides those, only each known workspace's own disk.
        for m in mounts.iter().filter(|m| !m.ends_with("rootfs")) {
            assert!(
                ids.iter().any(|id| *m == wsdir.join(id).join("disk")),
                "round {i} ({args:?}): unexpected mount {}",
                m.display()
            );
        }
        let cg = dirs(&Path::new("/sys/fs/cgroup/memory").join(&srv.cgroup_parent));
        for g in &cg {
            assert!(
                running.iter().any(|w| w["id"] == g.as_str()),
                "round {i} ({args:?}): leaked cgroup {g}"
            );
        }
        for ns in std::fs::read_dir("/run/netns").unwrap().flatten() {
            let n = ns.file_name().to_string_lossy().into_owned();
            if let Some(id) = n.strip_prefix(&format!("{}-", srv.bridge)) {
                assert!(
                    ids.iter().any(|x| x == id),
                    "round {i} ({args:?}): leaked netns {n}"
                );
            }
        }
        // Workspace dirs on disk belong to known workspaces.
        for d in dirs(&srv.data_dir().join("workspaces")) {
            assert!(
                ids.contains(&d),
                "round {i} ({args:?}): leftover workspace dir {d}"
            );
        }

        // Nothing lost: keep's journal has every line written so far.
        let keep = ws.iter().find(|w| w["name"] == "keep").expect("keep lost");
        if keep["state"] != "running" {
            srv.ok(&["start", "keep"]);
        }
        assert_eq!(
            srv.exec(
                "keep",
                &["sh", "-c", "cat /root/journal 2>/dev/null || true"]
            ),
            expected
        );
        if ws.iter().any(|w| w["name"] == tmp_name.as_str()) {
            srv.ok(&["rm", &tmp_name]);
        }
    }
}

/// The server is SIGKILLed at random points during snapshot, stop, start and restore;
/// after each restart every file is checked by checksum and the store by fsck. The
/// iteration count is `HEARTH_CRASH_ITERATIONS` (CI: 50; `scripts/soak.sh` runs more).
#[test]
fn snapshot_crash_loop_loses_nothing() {
    let iterations: usize = std::env::var("HEARTH_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "snapcrash");
    srv.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        "keep",
    ]);
    let id = srv.workspaces()[0]["id"].as_str().unwrap().to_string();
    let ws_dir = srv.data_dir().join("workspaces").join(&id);
    // Data with checksums recorded inside; each round appends more.
    srv.exec(
        "keep",
        &["sh", "-c", "mkdir -p /root/data && dd if=/dev/urandom of=/root/data/big bs=1M count=4 2>/dev/null \
           && cd /root/data && sha256sum big > /root/SUMS"],
    );
    let mut rng = rand::thread_rng();
    for i in 0..iterations {
        let ws = srv.workspaces();
        let state = ws[0]["state"].as_str().unwrap().to_string();
        if state == "running" {
            srv.exec(
                "keep",
                &["sh", "-c", &format!(
                    "cd /root/data && head -c {} /dev/urandom > f{i} && sha256sum f{i} >> /root/SUMS && sync",
                    1000 + i * 997
                )],
            );
        }
        let op = rng.gen_range(0..4);
        let args: Vec<&str> = match (op, state.as_str()) {
            (0, _) => vec!["snapshot", "keep"],
            (_, "running") => vec!["stop", "keep"],
            (3, _) => {
                // Restore: only once a snapshot taken now holds everything.
                srv.ok(&["snapshot", "keep"]);
                common::lose_local_data(&ws_dir);
                vec!["start", "keep"]
            }
            _ => vec!["start", "keep"],
        };
        let mut cli = srv.spawn_cli(&args);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..120)));
        srv.kill();
        let _ = cli.wait();
        srv.spawn();

        let ws = srv.workspaces();
        let st = ws[0]["state"].as_str().unwrap().to_string();
        assert!(
            !TRANSITIONAL.contains(&st.as_str()),
            "round {i} ({args:?}): stuck in {st}"
        );
        if st != "running" {
            srv.ok(&["start", "keep"]);
        }
        let out = srv.exec(
            "keep",
            &[
                "sh",
                "-c",
                "cd /root/data && sha256sum -c /root/SUMS >/dev/null && echo OK",
            ],
        );
        assert_eq!(out, "OK\n", "round {i} ({args:?}): checksums differ");
        assert!(
            !std::fs::read_dir(srv.data_dir().join("workspaces"))
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".restore-")),
            "round {i}: a half-done restore was left behind"
        );
    }
    let fsck = srv.hearth(&["store", "fsck"]);
    assert!(
        fsck.status.success(),
        "fsck after the crash loop: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// A server killed mid-snapshot leaves the workspace's cgroup frozen (the thaw never
/// ran); the next server start must thaw it, or every exec would hang.
#[test]
fn workspace_frozen_by_a_crash_is_thawed_on_restart() {
    let mut srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "frozen");
    srv.ok(&["up", repo.to_str().unwrap(), "--image", "busybox"]);
    let id = srv.workspaces()[0]["id"].as_str().unwrap().to_string();
    let v1 = Path::new("/sys/fs/cgroup/freezer")
        .join(&srv.cgroup_parent)
        .join(&id);
    let (file, frozen) = if v1.is_dir() {
        (v1.join("freezer.state"), "FROZEN")
    } else {
        (
            Path::new("/sys/fs/cgroup")
                .join(&srv.cgroup_parent)
                .join(&id)
                .join("cgroup.freeze"),
            "1",
        )
    };
    std::fs::write(&file, frozen).unwrap();
    srv.kill();
    srv.spawn();
    let mut cli = srv.spawn_cli(&["exec", "frozen", "--", "true"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = cli.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = cli.kill();
            let _ = std::fs::write(&file, if frozen == "1" { "0" } else { "THAWED" });
            panic!("exec hung: the workspace stayed frozen after the restart");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}
