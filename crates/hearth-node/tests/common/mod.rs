//! Helpers for tests on real containers: a node in a temp dir that removes what it made.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hearth_node::{ExecRequest, LocalNode, NodeApi, NodeConfig, WorkspaceSpec};
use hearth_proto::Event;

pub fn agent() -> PathBuf {
    if let Some(p) = std::env::var_os("HEARTH_AGENT") {
        return p.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/agent/hearth-agent")
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub node: LocalNode,
    pub specs: Vec<WorkspaceSpec>,
    pub cfg: NodeConfig,
}

impl Drop for Env {
    fn drop(&mut self) {
        let node = self.node.clone();
        let specs = self.specs.clone();
        // Drop may run inside the test's runtime: clean up from a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                for s in &specs {
                    if let Err(e) = node.remove(s).await {
                        eprintln!("cleanup {}: {e}", s.id);
                    }
                }
                if let Err(e) = node.teardown().await {
                    eprintln!("teardown: {e}");
                }
            });
        })
        .join();
        if std::env::var_os("HEARTH_KEEP").is_some() {
            eprintln!("kept {}", self.dir.path().display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap(),
            ));
        }
    }
}

pub async fn env() -> Env {
    env_with(std::env::var("HEARTH_RUNTIME").ok()).await
}

/// A node using OCI runtime `runtime` (crun or runc; `None` picks).
pub async fn env_with(runtime: Option<String>) -> Env {
    env_config(runtime, |_| {}).await
}

/// A node whose config `tweak` adjusts first.
pub async fn env_config(runtime: Option<String>, tweak: impl FnOnce(&mut NodeConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let tag: u32 = rand::random::<u32>() % 100_000;
    let mut cfg = NodeConfig {
        data_dir: dir.path().join("data"),
        bridge: format!("hn{tag}"),
        subnet: format!("10.{}.{}.0/24", 150 + tag % 50, tag % 250),
        cgroup_parent: format!("hearth-nodetest-{tag}"),
        runtime,
        agent_binary: agent(),
        snapshots: Default::default(),
        egress: Default::default(),
        // Small, so tests run on a nearly full CI disk; the guard's own test sets its own.
        disk_reserve: Some(256 << 20),
        console: Default::default(),
        priority: Default::default(),
        cpu_control: Default::default(),
        cpu_interval: hearth_node::DEFAULT_CPU_INTERVAL,
    };
    tweak(&mut cfg);
    let node = LocalNode::open(cfg.clone()).await.expect("open node");
    Env {
        dir,
        node,
        specs: vec![],
        cfg,
    }
}

pub fn git_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("myrepo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("README"), "hello from git\n").unwrap();
    let git = |args: &[&str]| {
        let st = Command::new("git")
            .args(["-c", "user.email=t@t", "-c", "user.name=t"])
            .args(args)
            .current_dir(&repo)
            .status()
            .unwrap();
        assert!(st.success());
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "init"]);
    repo
}

/// Runs `sh -c cmd` as root inside with `stdin`; returns (exit code, stdout, stderr).
pub async fn run_in(
    node: &LocalNode,
    spec: &WorkspaceSpec,
    cmd: &str,
    stdin: &[u8],
) -> (i32, String, String) {
    let s = node
        .exec(
            spec,
            ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let (mut w, mut r) = s.split();
    for chunk in stdin.chunks(64 * 1024) {
        w.write_stdin(chunk).await.unwrap();
    }
    w.close_stdin().await.unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match r.next_event().await.unwrap() {
            Event::Stdout(b) => out.extend(b),
            Event::Stderr(b) => err.extend(b),
            Event::Exit(c) => {
                return (
                    c,
                    String::from_utf8_lossy(&out).into(),
                    String::from_utf8_lossy(&err).into(),
                )
            }
        }
    }
}

pub async fn run(node: &LocalNode, spec: &WorkspaceSpec, cmd: &str) -> (i32, String, String) {
    run_in(node, spec, cmd, &[]).await
}

pub fn host_ipv4_addrs() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .collect()
}

/// Builds the busybox test image and loads it into `e`'s node.
pub async fn busybox_image(e: &Env) -> hearth_node::ImageSummary {
    let img_dir = e.dir.path().join("img");
    hearth_image::testutil::write_oci_layout(
        &img_dir,
        "busybox:latest",
        &[hearth_image::testutil::busybox_rootfs_layer().unwrap()],
        &Default::default(),
    )
    .unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    e.node.load_image(img_dir, None, tx).await.unwrap()
}

/// Loads the busybox test image into `e`'s node, then creates and starts one workspace
/// per `(id, name, slot)` from a fresh git repo; they are removed when `e` drops.
pub async fn busybox_workspaces(
    e: &mut Env,
    ws: &[(&str, &str, u32)],
) -> Vec<(WorkspaceSpec, hearth_node::WorkspaceStatus)> {
    let img = busybox_image(e).await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let repo = git_repo(e.dir.path());
    let mut out = Vec::new();
    for (id, name, slot) in ws {
        let spec = WorkspaceSpec {
            id: hearth_node::WorkspaceId::new(*id).unwrap(),
            name: (*name).into(),
            image: img.id.clone(),
            source: repo.display().to_string(),
            slot: *slot,
            limits: hearth_node::Limits::default(),
            egress: Default::default(),
            generation: 0,
        };
        e.specs.push(spec.clone());
        e.node.create(&spec, tx.clone()).await.unwrap();
        let st = e.node.start(&spec).await.unwrap();
        out.push((spec, st));
    }
    out
}

/// Where `scripts/test.sh` keeps the test images it makes.
const IMAGE_CACHE: &str = "/var/cache/hearth-images/test";

/// A test image tar: `$var`, else `<cache>/<kind>.tar`. Tests never skip: a missing image
/// fails the test, saying how to make it.
pub fn test_image(var: &str, kind: &str) -> PathBuf {
    let path = match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => Path::new(IMAGE_CACHE).join(format!("{kind}.tar")),
    };
    assert!(
        path.is_file(),
        "test image {} missing ({var} unset or wrong): run scripts/test.sh, or \
         scripts/make-image.sh {kind} {} and set {var}",
        path.display(),
        path.display()
    );
    path
}

/// Loads the Debian test image (see [`test_image`]) into `e`'s node; returns its id.
pub async fn debian_image(e: &Env) -> String {
    let tar = test_image("HEARTH_TEST_DEBIAN", "debian");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    e.node.load_image(tar, None, tx).await.unwrap().id
}

fn must(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// "The internet" for egress tests: a netns behind a veth routed from the host, so traffic
/// to it takes the forward + NAT path. The host end is `10.215.<third>.1/24`; the far end
/// holds `.2`, `.3` and link-local `169.254.215.<third>` (routed there from the host like a
/// metadata endpoint). `.9` is unassigned: SYNs to it are tracked and never answered.
/// Removed on drop, with its route.
pub struct Outside {
    pub ns: String,
    veth: String,
    third: u8,
}

impl Outside {
    pub fn new(third: u8) -> Outside {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let o = Outside {
            ns: format!("hxn{tag}"),
            veth: format!("hxn{tag}"),
            third,
        };
        must(&["ip", "netns", "add", &o.ns]);
        must(&[
            "ip", "link", "add", "name", &o.veth, "type", "veth", "peer", "name", "eth0", "netns",
            &o.ns,
        ]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", o.ip(1)),
            "dev",
            &o.veth,
        ]);
        must(&["ip", "link", "set", "dev", &o.veth, "up"]);
        for n in [2, 3] {
            let a = format!("{}/24", o.ip(n));
            must(&["ip", "-n", &o.ns, "addr", "add", &a, "dev", "eth0"]);
        }
        let md = format!("{}/32", o.metadata());
        must(&["ip", "-n", &o.ns, "addr", "add", &md, "dev", "eth0"]);
        must(&["ip", "-n", &o.ns, "link", "set", "dev", "eth0", "up"]);
        must(&["ip", "-n", &o.ns, "link", "set", "dev", "lo", "up"]);
        let via = o.ip(2).to_string();
        must(&["ip", "route", "add", &md, "via", &via, "dev", &o.veth]);
        o
    }

    pub fn ip(&self, n: u8) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 215, self.third, n)
    }

    pub fn metadata(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(169, 254, 215, self.third)
    }

    /// A TCP listener on every address of the netns that accepts and closes at once (so
    /// `nc` exits 0); it serves until the process ends.
    pub fn serve(&self) -> u16 {
        let file = std::fs::File::open(Path::new("/run/netns").join(&self.ns)).unwrap();
        let l = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).unwrap()
        })
        .join()
        .unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        });
        port
    }
}

impl Outside {
    /// `git daemon` serving the repositories under `base` on every address of the netns
    /// (`git://<ip>/<path under base>`); stopped when the guard drops.
    pub fn git_daemon(&self, base: &Path) -> GitDaemon {
        // `git-daemon` itself: `git daemon` would run it as a child, which killing `git`
        // leaves running (`ip netns exec` execs, so the child we hold is the daemon).
        let out = Command::new("git").arg("--exec-path").output().unwrap();
        assert!(out.status.success(), "git --exec-path");
        let daemon = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("git-daemon");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(daemon)
            .arg("--export-all")
            .args(["--reuseaddr", "--informative-errors"])
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let guard = GitDaemon(child);
        let addr = std::net::SocketAddr::from((self.ip(2), 9418));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1))
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "git daemon on {addr} did not come up"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        guard
    }
}

/// A `git daemon` of [`Outside::git_daemon`], killed on drop.
pub struct GitDaemon(std::process::Child);

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.veth])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Conntrack entries (host netns) whose original direction is `src` -> `dst`.
pub fn conntrack_entries(src: &str, dst: &str) -> usize {
    let table = std::fs::read_to_string("/proc/net/nf_conntrack").unwrap();
    // The first src=/dst= pair of a line is the original direction.
    let want = format!("src={src} dst={dst} ");
    table
        .lines()
        .filter(|l| l.find("src=").is_some_and(|i| l[i..].starts_with(&want)))
        .count()
}
