//! The node on real containers: crun, idmapped overlay roots, netns, cgroups.

use std::path::{Path, PathBuf};
use std::process::Command;

use hearth_image::testutil;
use hearth_node::{ExecRequest, Limits, LocalNode, NodeApi, NodeConfig, RunState, WorkspaceSpec};
use hearth_proto::Event;

fn agent() -> PathBuf {
    if let Some(p) = std::env::var_os("HEARTH_AGENT") {
        return p.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/x86_64-unknown-linux-gnu/agent/hearth-agent")
}

struct Env {
    dir: tempfile::TempDir,
    node: LocalNode,
    specs: Vec<WorkspaceSpec>,
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
            std::mem::forget(std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()));
        }
    }
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let tag: u32 = rand::random::<u32>() % 100_000;
    let cfg = NodeConfig {
        data_dir: dir.path().join("data"),
        bridge: format!("hn{tag}"),
        subnet: format!("10.{}.{}.0/24", 150 + tag % 50, tag % 250),
        cgroup_parent: format!("hearth-nodetest-{tag}"),
        runtime: std::env::var("HEARTH_RUNTIME").ok(),
        agent_binary: agent(),
    };
    let node = LocalNode::open(cfg).await.expect("open node");
    Env { dir, node, specs: vec![] }
}

fn git_repo(dir: &Path) -> PathBuf {
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

async fn run(node: &LocalNode, spec: &WorkspaceSpec, cmd: &str) -> (i32, String, String) {
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
    w.close_stdin().await.unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match r.next_event().await.unwrap() {
            Event::Stdout(b) => out.extend(b),
            Event::Stderr(b) => err.extend(b),
            Event::Exit(c) => {
                return (c, String::from_utf8_lossy(&out).into(), String::from_utf8_lossy(&err).into())
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_on_real_containers() {
    let mut e = env().await;
    let img_dir = e.dir.path().join("img");
    testutil::write_oci_layout(
        &img_dir,
        "busybox:latest",
        &[testutil::busybox_rootfs_layer().unwrap()],
        &Default::default(),
    )
    .unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let img = e.node.load_image(img_dir, None, tx.clone()).await.unwrap();
    let repo = git_repo(e.dir.path());
    let mk = |id: &str, name: &str, slot: u32| WorkspaceSpec {
        id: id.into(),
        name: name.into(),
        image: img.id.clone(),
        source: repo.display().to_string(),
        slot,
        limits: Limits::default(),
    };
    let a = mk("aaaaaaaaaaa1", "a", 0);
    let b = mk("bbbbbbbbbbb2", "b", 1);
    e.specs = vec![a.clone(), b.clone()];
    for s in [&a, &b] {
        e.node.create(s, tx.clone()).await.unwrap();
        let st = e.node.start(s).await.unwrap();
        assert_eq!(st.state, RunState::Running);
    }
    let (code, out, _) = run(&e.node, &a, "id -u; cat /proc/self/uid_map; cat /workspace/myrepo/README").await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0");
    let map_a: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map_a, ["0", &a.uid_base().to_string(), "65536"]);
    assert_eq!(lines[2], "hello from git");
    let (_, out_b, _) = run(&e.node, &b, "cat /proc/self/uid_map").await;
    assert_ne!(out_b.split_whitespace().nth(1), Some(map_a[1]), "distinct host ranges");

    let (code, _, _) = run(&e.node, &a, "echo x > /root/r; mkdir -p /usr/local/bin; echo y > /usr/local/bin/tool; echo z >> /workspace/myrepo/README; exit 3").await;
    assert_eq!(code, 3);
    e.node.stop(&a).await.unwrap();
    assert_eq!(e.node.status(&a).await.unwrap().state, RunState::Stopped);
    e.node.start(&a).await.unwrap();
    let (code, out, _) = run(&e.node, &a, "cat /root/r /usr/local/bin/tool; tail -1 /workspace/myrepo/README").await;
    assert_eq!(code, 0);
    assert_eq!(out, "x\ny\nz\n");
    // b cannot see a's processes or files
    let (_, out, _) = run(&e.node, &b, "ls /root; ps -o pid,args | wc -l").await;
    assert!(!out.contains('r'), "b sees a's /root: {out}");
}
