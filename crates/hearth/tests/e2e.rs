//! End-to-end: the real `hearth` binary, server and node, on this machine's kernel.
//! Needs root, crun and a built hearth-agent (see `common::agent_binary`).

mod common;

use common::{git_repo, uid_base, TestServer};

#[test]
fn up_exec_streams_and_isolates() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "demo-repo");

    let out = srv.ok(&["up", repo.to_str().unwrap(), "--image", "busybox"]);
    assert!(out.contains("hearth shell demo-repo"), "{out}");
    assert_eq!(srv.workspace_names(), vec!["demo-repo"]);
    assert_eq!(srv.workspaces()[0]["state"], "running");

    assert_eq!(srv.exec("demo-repo", &["id", "-u"]).trim(), "0");
    let map1 = srv.exec("demo-repo", &["cat", "/proc/self/uid_map"]);
    assert_ne!(
        uid_base(&map1),
        0,
        "root inside must not be host root: {map1}"
    );
    assert_eq!(
        srv.exec("demo-repo", &["cat", "/workspace/demo-repo/README.md"]),
        "hello from the repo\n"
    );

    // Exit codes propagate, stdout and stderr stay apart.
    let out = srv.hearth(&[
        "exec",
        "demo-repo",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // Stdin is streamed and its end is delivered.
    let input: Vec<u8> = (0..20000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let out = srv.hearth_stdin(&["exec", "demo-repo", "--", "cat"], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdin came back changed");
    let out = srv.hearth_stdin(&["exec", "demo-repo", "--", "wc", "-l"], b"a\nb\nc\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");

    // Options reach the process.
    let out = srv.ok(&[
        "exec",
        "demo-repo",
        "-e",
        "GREETING=hi",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $GREETING $PWD",
    ]);
    assert_eq!(out.trim(), "hi /tmp");

    // A second workspace of the same repo gets its own id range.
    srv.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--name",
        "second",
    ]);
    let map2 = srv.exec("second", &["cat", "/proc/self/uid_map"]);
    assert_ne!(uid_base(&map1), uid_base(&map2));
    assert_eq!(srv.exec("second", &["id", "-u"]).trim(), "0");

    let table = srv.ok(&["ls"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("second") && table.contains("running"),
        "{table}"
    );

    srv.ok(&["rm", "second"]);
    assert_eq!(srv.workspace_names(), vec!["demo-repo"]);
    let err = srv.fails(&["exec", "second", "--", "true"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn stop_start_and_server_restart_keep_state() {
    let mut srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "keep");
    srv.ok(&["up", repo.to_str().unwrap(), "--image", "busybox"]);
    srv.exec(
        "keep",
        &[
            "sh",
            "-c",
            "echo w > /workspace/keep/new.txt && echo r > /root/r.txt && echo u > /usr/local/u.txt",
        ],
    );

    srv.ok(&["stop", "keep"]);
    assert_eq!(srv.workspaces()[0]["state"], "stopped");
    let err = srv.fails(&["exec", "keep", "--", "true"]);
    assert!(err.contains("stopped"), "{err}");
    srv.ok(&["start", "keep"]);
    assert_eq!(srv.workspaces()[0]["state"], "running");
    let files = "cat /workspace/keep/new.txt /root/r.txt /usr/local/u.txt";
    assert_eq!(srv.exec("keep", &["sh", "-c", files]), "w\nr\nu\n");

    // A crashed server leaves the workspace running; the next one picks it up.
    let before = srv.exec("keep", &["cat", "/proc/1/stat"]);
    srv.kill();
    srv.fails(&["ls"]);
    srv.spawn();
    let ws = srv.workspaces();
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0]["state"], "running");
    assert_eq!(
        srv.exec("keep", &["cat", "/proc/1/stat"])
            .split_whitespace()
            .nth(21),
        before.split_whitespace().nth(21),
        "PID 1 was restarted"
    );
    assert_eq!(srv.exec("keep", &["sh", "-c", files]), "w\nr\nu\n");

    // The restarted server drains the console again (it is a pipe the old one read).
    srv.exec("keep", &["sh", "-c", "echo after-restart >/proc/1/fd/1"]);
    let logs = srv.hearth(&["logs", "keep"]);
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.contains("ready (workspace keep") && text.contains("after-restart"),
        "{text}"
    );
}

#[test]
fn errors_are_one_clear_line_and_leave_nothing_behind() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "errs");
    let repo = repo.to_str().unwrap();

    let err = srv.fails(&["up", repo, "--image", "nosuch"]);
    assert_eq!(
        err,
        "error: image nosuch not found (hearth image ls lists loaded images)"
    );
    let missing = src.path().join("no-such-repo");
    let err = srv.fails(&["up", missing.to_str().unwrap(), "--image", "busybox"]);
    assert!(err.contains("no-such-repo"), "{err}");
    let err = srv.fails(&["up", repo, "--image", "busybox", "--name", "Bad_Name"]);
    assert!(err.contains("invalid workspace name"), "{err}");
    let err = srv.fails(&["up", repo]);
    assert!(err.contains("--image"), "{err}");
    assert!(srv.workspaces().is_empty(), "{:?}", srv.workspaces());

    srv.ok(&["up", repo, "--image", "busybox"]);
    let err = srv.fails(&["up", repo, "--image", "busybox"]);
    assert!(err.contains("errs already exists"), "{err}");
    assert_eq!(srv.workspace_names(), vec!["errs"]);

    let err = srv.fails(&["image", "rm", "busybox"]);
    assert!(err.contains("use"), "{err}");
    let err = srv.fails(&["stop", "nope"]);
    assert_eq!(
        err,
        "error: workspace nope not found (hearth ls lists workspaces)"
    );

    srv.ok(&["rm", "errs"]);
    assert!(srv.workspaces().is_empty());
    srv.ok(&["image", "rm", "busybox"]);
    assert_eq!(srv.ok(&["image", "ls", "--json"]).trim(), "[]");
}

#[test]
fn cli_without_server_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::HEARTH)
        .args(["--url", "http://127.0.0.1:9", "--token", "x", "ls"])
        .env("HEARTH_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: cannot reach hearth server at http://127.0.0.1:9: is `hearth server` running?"
    );
}

/// A node whose disk is under its reserve refuses new workspaces, saying why, and makes
/// nothing (the reserve is larger than any disk here).
#[test]
fn a_node_under_its_disk_reserve_refuses_new_workspaces() {
    let mut srv = TestServer::start();
    srv.load_busybox();
    // The same node, restarted with a reserve larger than its disk.
    srv.kill();
    srv.server_args
        .extend(["--disk-reserve".to_string(), "100T".to_string()]);
    srv.spawn();
    // A real image (an OCI layout directory, loaded by server path): refused for the
    // reserve, not for what it is.
    let img_dir = tempfile::tempdir().unwrap();
    let img = common::images::busybox_image(img_dir.path());
    let err = srv.fails(&["image", "load", img.to_str().unwrap(), "--name", "x"]);
    assert!(err.contains("cannot load an image"), "{err}");
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "full");
    let err = srv.fails(&["up", repo.to_str().unwrap(), "--image", "busybox"]);
    assert!(
        err.contains("cannot create a workspace") && err.contains("reserve of 102400.0 GiB"),
        "{err}"
    );
    assert!(err.contains("--disk-reserve"), "{err}");
    assert!(srv.workspaces().is_empty(), "{:?}", srv.workspaces());
    let ws = srv.data_dir().join("workspaces");
    assert_eq!(
        std::fs::read_dir(&ws).unwrap().count(),
        0,
        "made files in {ws:?}"
    );
    let err = srv.hearth(&["server", "--disk-reserve", "lots"]);
    assert_eq!(err.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&err.stderr).contains("not a size"));
}
