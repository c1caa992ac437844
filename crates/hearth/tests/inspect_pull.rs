//! End-to-end: `hearth inspect` against the real host, and registry pulls (`hearth image
//! pull`, pull on `hearth up`) from a real registry on loopback.
//! Needs root, crun, skopeo, docker-registry and a built hearth-agent.

mod common;

use std::path::Path;

use common::registry::Registry;
use common::{git_repo, uid_base, TestServer};

fn inspect(srv: &TestServer, name: &str) -> serde_json::Value {
    serde_json::from_str(&srv.ok(&["inspect", name, "--json"])).unwrap()
}

#[test]
fn inspect_shows_host_resources_and_usage() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "insp");
    let r = repo.to_str().unwrap();
    // Bad limits are refused before anything is made.
    for (args, want) in [
        (&["--disk", "1M"][..], "disk_bytes 1048576 is out of range"),
        (&["--memory", "1K"][..], "memory_bytes 1024 is out of range"),
        (&["--pids", "2"][..], "pids 2 is out of range"),
    ] {
        let mut a = vec!["up", r, "--image", "busybox"];
        a.extend_from_slice(args);
        let err = srv.fails(&a);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = srv.hearth(&["up", r, "--image", "busybox", "--disk", "12Q"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown unit"),
        "{err}"
    );
    assert!(srv.workspace_names().is_empty());
    srv.ok(&[
        "up", r, "--image", "busybox", "--memory", "512M", "--disk", "1G", "--pids", "300",
    ]);
    let limits = &inspect(&srv, "insp")["workspace"]["limits"];
    assert_eq!(limits["memory_bytes"], 512u64 << 20, "{limits}");
    assert_eq!(limits["disk_bytes"], 1u64 << 30, "{limits}");
    assert_eq!(limits["pids"], 300, "{limits}");
    // Enforced: the disk is 1 GiB from inside, the cgroup holds the memory limit.
    let df = srv.exec("insp", &["df", "-k", "/"]);
    let kb: u64 = df
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("df: {df}"));
    assert!(
        kb <= 1 << 20 && kb > 1 << 19,
        "root fs of {kb} KiB for a 1 GiB disk"
    );

    let i = inspect(&srv, "insp");
    let map = srv.exec("insp", &["cat", "/proc/self/uid_map"]);
    assert_eq!(i["uid_range"]["first"].as_u64().unwrap(), uid_base(&map));
    assert_eq!(
        i["uid_range"]["last"].as_u64().unwrap(),
        uid_base(&map) + 65535
    );
    assert_eq!(i["workspace"]["state"], "running");
    let pid = i["pid"].as_u64().expect("a running workspace has a pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let cgroups = i["cgroups"].as_array().unwrap();
    assert!(!cgroups.is_empty(), "{i}");
    for c in cgroups {
        let dir = Path::new(c.as_str().unwrap());
        assert!(dir.is_dir(), "{} does not exist", dir.display());
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "agent {pid} not in {}",
            dir.display()
        );
    }
    let u = &i["usage"];
    assert!(u["memory_bytes"].as_u64().unwrap() > 0, "{u}");
    assert!(u["pids"].as_u64().unwrap() >= 1, "{u}");
    assert!(u["cpu_ns"].as_u64().is_some(), "{u}");
    assert!(u["cpu_percent"].as_f64().is_some(), "{u}");
    let (used, size) = (
        u["disk_bytes"].as_u64().unwrap(),
        u["disk_size"].as_u64().unwrap(),
    );
    assert!(used > 0 && used < size, "{u}");
    let limit = i["workspace"]["limits"]["disk_bytes"].as_u64().unwrap();
    assert!(
        size <= limit && size > limit / 2,
        "disk size {size} vs limit {limit}"
    );
    let net = &i["network"];
    let ip = net["ip"].as_str().unwrap();
    assert_eq!(Some(ip), i["workspace"]["ip"].as_str());
    assert!(Path::new(net["netns"].as_str().unwrap()).exists(), "{net}");
    let veth = net["host_veth"].as_str().expect("host veth on the bridge");
    assert!(Path::new("/sys/class/net").join(veth).exists());
    let inside = srv.exec("insp", &["ip", "route"]);
    assert!(
        inside.contains(&format!("default via {}", net["gateway"].as_str().unwrap())),
        "{inside}"
    );

    // Writing 5 MB inside grows the writable layer by about that much.
    let before = u["disk_bytes"].as_u64().unwrap();
    srv.exec(
        "insp",
        &["dd", "if=/dev/zero", "of=/root/five", "bs=1M", "count=5"],
    );
    let after = inspect(&srv, "insp")["usage"]["disk_bytes"]
        .as_u64()
        .unwrap();
    assert!(after >= before + (5 << 20), "{before} -> {after}");

    let text = srv.ok(&["inspect", "insp"]);
    for label in [
        "uid/gid range:",
        "cgroups:",
        "memory:",
        "disk:",
        "host veth:",
    ] {
        assert!(text.contains(label), "{label} missing from:\n{text}");
    }

    srv.ok(&["stop", "insp"]);
    let i = inspect(&srv, "insp");
    assert_eq!(i["workspace"]["state"], "stopped");
    assert!(i["pid"].is_null(), "{i}");
    assert!(i["usage"]["pids"].is_null(), "{i}");
    assert!(i["cgroups"].as_array().unwrap().is_empty(), "{i}");
    assert!(i["usage"]["disk_bytes"].as_u64().unwrap() >= 5 << 20);
    assert!(srv.ok(&["inspect", "insp"]).contains("pid:"));

    let err = srv.fails(&["inspect", "nope"]);
    assert_eq!(
        err,
        "error: workspace nope not found (hearth ls lists workspaces)"
    );
}

#[test]
fn pulls_from_a_registry_on_the_cli_and_on_up() {
    let srv = TestServer::start();
    let reg = Registry::start();
    let layout = common::images::busybox_image(srv.data_dir());
    reg.push(&layout, "busybox:latest", "busybox:latest");
    reg.push(&layout, "busybox:latest", "other:1");
    let addr = reg.addr();

    let reference = format!("{addr}/busybox:latest");
    let out = srv.hearth(&["image", "pull", &reference]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", srv.server_log());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sha256:"));
    // Not a terminal: one line per update, each layer reported.
    assert!(!stderr.contains('\r'), "{stderr}");
    assert!(stderr.contains("layer 1/2"), "{stderr}");
    assert!(stderr.contains("layer 2/2"), "{stderr}");
    let images = srv.ok(&["image", "ls", "--json"]);
    assert!(images.contains(&reference), "{images}");

    // Pull on up: the workspace runs the pulled image.
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "pulled");
    let other = format!("{addr}/other:1");
    let out = srv.hearth(&["up", repo.to_str().unwrap(), "--image", &other]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", srv.server_log());
    assert!(stderr.contains(&format!("pulling {other}")), "{stderr}");
    assert_eq!(srv.exec("pulled", &["id", "-u"]).trim(), "0");
    // Same content as the first pull: one image, now under both names.
    let images: Vec<serde_json::Value> =
        serde_json::from_str(&srv.ok(&["image", "ls", "--json"])).unwrap();
    let img = images
        .iter()
        .find(|i| i["names"].as_array().unwrap().iter().any(|n| n == &other))
        .unwrap_or_else(|| panic!("{other} not named: {images:?}"));
    assert_eq!(srv.workspaces()[0]["image"], img["id"]);

    // A missing image, or one in no registry, is one clear line and leaves nothing.
    let missing = format!("{addr}/nosuch:1");
    let err = srv.fails(&["image", "pull", &missing]);
    assert!(
        err.starts_with(&format!("error: image {missing} not found in its registry")),
        "{err}"
    );
    let err = srv.fails(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        &missing,
        "--name",
        "gone",
    ]);
    assert!(err.contains("not found in its registry"), "{err}");
    let err = srv.fails(&["image", "pull", "Not A Reference"]);
    assert!(err.contains("invalid"), "{err}");
    assert_eq!(srv.workspace_names(), vec!["pulled"]);
    let dirs: Vec<_> = std::fs::read_dir(srv.data_dir().join("workspaces"))
        .unwrap()
        .collect();
    assert_eq!(dirs.len(), 1, "a failed up left files: {dirs:?}");
    srv.ok(&["rm", "pulled"]);
}

/// KiB of the root filesystem as `df` sees it inside the workspace.
fn df_kib(srv: &TestServer, name: &str) -> u64 {
    let df = srv.exec(name, &["df", "-k", "/"]);
    df.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("df: {df}"))
}

/// The value of the first of `files` found in the workspace's group of the hierarchy whose
/// path contains `controller` (v1), else in the unified group (v2).
fn cgroup_value(i: &serde_json::Value, controller: &str, files: &[&str]) -> String {
    let dirs: Vec<&str> = i["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    let has = |d: &&&str| files.iter().any(|f| Path::new(d).join(f).exists());
    let dir = dirs
        .iter()
        .find(|d| d.contains(&format!("/{controller}/")) && has(d))
        .or_else(|| dirs.iter().find(|d| has(d)))
        .unwrap_or_else(|| panic!("none of {files:?} in {dirs:?}"));
    let file = files
        .iter()
        .find(|f| Path::new(dir).join(f).exists())
        .unwrap_or(&files[0]);
    std::fs::read_to_string(Path::new(dir).join(file))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn update_changes_limits_live_and_grows_the_disk_in_place() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "grow");
    srv.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--disk",
        "512M",
        "--memory",
        "256M",
    ]);
    srv.exec("grow", &["sh", "-c", "echo kept > /workspace/kept"]);
    let pid = inspect(&srv, "grow")["pid"].as_u64().unwrap();
    let small = df_kib(&srv, "grow");
    assert!(small <= 512 << 10, "{small} KiB");

    // Running: the disk grows under the workspace, memory changes at once.
    let out = srv.ok(&["update", "grow", "--disk", "1G", "--memory", "512M"]);
    assert!(out.contains("disk 1.0 GiB"), "{out}");
    let i = inspect(&srv, "grow");
    assert_eq!(
        i["pid"].as_u64(),
        Some(pid),
        "the workspace was not restarted"
    );
    assert_eq!(i["workspace"]["limits"]["disk_bytes"], 1u64 << 30);
    assert_eq!(i["workspace"]["limits"]["memory_bytes"], 512u64 << 20);
    let memory = cgroup_value(&i, "memory", &["memory.limit_in_bytes", "memory.max"]);
    assert_eq!(memory, (512u64 << 20).to_string());
    let grown = df_kib(&srv, "grow");
    assert!(grown > small + (400 << 10), "{small} -> {grown} KiB");
    // The new space is usable: more than the old disk held.
    srv.exec(
        "grow",
        &["dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=600"],
    );
    assert_eq!(srv.exec("grow", &["cat", "/workspace/kept"]), "kept\n");

    // Refused with a reason, nothing changed.
    let err = srv.fails(&["update", "grow", "--disk", "600M"]);
    assert!(err.contains("disks only grow"), "{err}");
    let err = srv.fails(&["update", "grow", "--pids", "3"]);
    assert!(err.contains("pids 3 is out of range"), "{err}");
    let err = srv.fails(&["update", "grow"]);
    assert!(err.contains("nothing to change"), "{err}");
    let err = srv.fails(&["update", "nosuch", "--pids", "100"]);
    assert!(err.contains("not found"), "{err}");
    let i = inspect(&srv, "grow");
    assert_eq!(i["workspace"]["limits"]["disk_bytes"], 1u64 << 30);
    assert_eq!(i["workspace"]["limits"]["pids"], 4096);

    // Stopped: the disk grows now, the cgroup limits apply at the next start.
    srv.ok(&["stop", "grow"]);
    srv.ok(&["update", "grow", "--disk", "2G", "--pids", "100"]);
    srv.ok(&["start", "grow"]);
    let i = inspect(&srv, "grow");
    assert_eq!(cgroup_value(&i, "pids", &["pids.max"]), "100");
    assert!(df_kib(&srv, "grow") > 3 << 19, "disk did not reach ~2 GiB");
    assert_eq!(srv.exec("grow", &["cat", "/workspace/kept"]), "kept\n");
    srv.ok(&["rm", "grow"]);
}
