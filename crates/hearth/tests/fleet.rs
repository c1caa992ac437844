//! A fleet of three real nodes in one process, each with its own data dir, bridge, subnet
//! and cgroup parent, sharing one snapshot store (a local dir every node's `snapshots`
//! points at, or a bucket of the S3 test server, moto): placement spreads, a selector pins,
//! images follow workspaces, a move keeps the files, drain empties a node, and a lost
//! node's workspace comes back elsewhere from its last snapshot while the node, attaching
//! again, drops its copy and adds no snapshot.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hearth_api::{CreateWorkspace, LimitsRequest, WorkspaceState};
use hearth_node::{ExecRequest, LocalNode, NodeApi, NodeConfig, WorkspaceSpec};
use hearth_proto::Event;
use hearth_server::auth::Caller;
use hearth_server::db::Store;
use hearth_server::fleet::{Fleet, Labels, NodeState};
use hearth_server::manager::Manager;

use common::s3::Moto;

const PUMP: Duration = Duration::from_millis(200);

struct TestFleet {
    _moto: Option<Moto>,
    dir: tempfile::TempDir,
    nodes: Vec<(String, LocalNode)>,
    fleet: Arc<Fleet>,
    manager: Arc<Manager>,
    repo: std::path::PathBuf,
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        let nodes = self.nodes.clone();
        let store = self.manager.store().clone();
        // Drop may run inside the test's runtime: clean up from a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let specs: Vec<WorkspaceSpec> = store
                    .list()
                    .await
                    .map(|v| v.into_iter().map(|r| r.spec).collect())
                    .unwrap_or_default();
                // Any node may hold a copy (a failed test can stop anywhere).
                for (name, node) in &nodes {
                    for s in &specs {
                        if let Err(e) = node.remove(s).await {
                            eprintln!("cleanup {} on {name}: {e}", s.name);
                        }
                    }
                    if let Err(e) = node.teardown().await {
                        eprintln!("teardown {name}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

async fn node_in(root: &Path, name: &str, store: &Path, s3: Option<&str>) -> LocalNode {
    let data = root.join(name).join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Every node's local store is the shared one.
    if s3.is_none() {
        std::os::unix::fs::symlink(store, data.join("snapshots")).unwrap();
    }
    let tag: u32 = rand::random::<u32>() % 100_000;
    let cfg = NodeConfig {
        data_dir: data,
        bridge: format!("hf{tag}"),
        subnet: format!("10.{}.{}.0/24", 150 + tag % 50, tag % 250),
        cgroup_parent: format!("hearth-fleettest-{tag}"),
        runtime: std::env::var("HEARTH_RUNTIME").ok(),
        agent_binary: common::agent_binary(),
        snapshots: hearth_node::SnapshotSettings {
            s3: s3.map(str::to_string),
            ..Default::default()
        },
        egress: Default::default(),
        disk_reserve: Some(256 << 20),
        console: Default::default(),
        priority: Default::default(),
        cpu_control: Default::default(),
        cpu_interval: hearth_node::DEFAULT_CPU_INTERVAL,
    };
    LocalNode::open(cfg).await.expect("open node")
}

/// Three nodes `a`, `b`, `c` (`c` labelled zone=x), busybox loaded on `a` only, sharing a
/// local dir store, or an S3 bucket with `s3`.
async fn fleet(s3: bool) -> TestFleet {
    let (moto, url) = match s3 {
        true => {
            // moto takes any credentials; the node reads them from the environment.
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
            let (m, u) = common::s3::bucket();
            (Some(m), Some(u))
        }
        false => (None, None),
    };
    let dir = tempfile::Builder::new()
        .prefix("hearth-fleet-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let shared = dir.path().join("store");
    std::fs::create_dir_all(&shared).unwrap();
    let store = Store::open(&dir.path().join("hearth.db")).await.unwrap();
    let fleet = Arc::new(Fleet::new(store.clone(), None));
    let manager = Manager::shared_fleet(store, fleet.clone());
    manager.set_build_scratch(dir.path().join("scratch"), 1 << 30);
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push((
            name.to_string(),
            node_in(dir.path(), name, &shared, url.as_deref()).await,
        ));
    }
    let t = TestFleet {
        _moto: moto,
        repo: common::git_repo(dir.path(), "repo"),
        dir,
        nodes,
        fleet,
        manager,
    };
    for (name, node) in &t.nodes {
        t.attach(name, node).await;
    }
    t.manager.reconcile().await.unwrap();
    let (progress, _unread) = tokio::sync::mpsc::unbounded_channel();
    let image = common::images::busybox_image(t.dir.path());
    t.nodes[0]
        .1
        .load_image(image, Some("busybox".into()), progress)
        .await
        .unwrap();
    t
}

impl TestFleet {
    async fn attach(&self, name: &str, node: &LocalNode) {
        let labels: Labels = if name == "c" {
            [("zone".to_string(), "x".to_string())].into()
        } else {
            Labels::new()
        };
        let api: Arc<dyn NodeApi> = Arc::new(node.clone());
        self.fleet.attach(name, labels, api.clone()).await.unwrap();
        self.fleet.pump(name, api, PUMP);
        // Placement ranks nodes that have reported; wait for the first report.
        while self
            .fleet
            .nodes()
            .iter()
            .any(|n| n.name == name && n.capacity.is_none())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn node(&self, name: &str) -> &LocalNode {
        &self.nodes.iter().find(|(n, _)| n == name).unwrap().1
    }

    async fn up(&self, name: &str, selector: Option<Labels>) -> hearth_api::Workspace {
        let req = CreateWorkspace {
            source: self.repo.display().to_string(),
            image: Some("busybox".into()),
            name: Some(name.into()),
            limits: LimitsRequest {
                memory_bytes: Some(256 << 20),
                disk_bytes: Some(512 << 20),
                ..Default::default()
            },
            egress: None,
            idle_timeout: None,
            devcontainer_config: None,
            branch: None,
            node_selector: selector,
        };
        let (progress, _unread) = tokio::sync::mpsc::unbounded_channel();
        self.manager
            .create(&Caller::admin(), req, progress)
            .await
            .unwrap()
    }

    async fn get(&self, name: &str) -> hearth_api::Workspace {
        self.manager.get(&Caller::admin(), name).await.unwrap()
    }

    async fn spec(&self, name: &str) -> WorkspaceSpec {
        self.manager.store().get(name).await.unwrap().unwrap().spec
    }

    /// Runs `cmd` in workspace `name` through the manager's routing; its stdout.
    async fn sh(&self, name: &str, cmd: &str) -> String {
        let spec = self.spec(name).await;
        let s = self
            .manager
            .node()
            .exec(
                &spec,
                ExecRequest {
                    argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let (mut w, mut r) = s.split();
        w.close_stdin().await.unwrap();
        let mut out = Vec::new();
        loop {
            match r.next_event().await.unwrap() {
                Event::Stdout(b) => out.extend(b),
                Event::Exit(c) => {
                    assert_eq!(c, 0, "{cmd}: {}", String::from_utf8_lossy(&out));
                    return String::from_utf8_lossy(&out).into();
                }
                _ => {}
            }
        }
    }

    /// Whether node `node` has local data of workspace `spec`.
    fn has_copy(&self, node: &str, spec: &WorkspaceSpec) -> bool {
        self.dir
            .path()
            .join(node)
            .join("data/workspaces")
            .join(spec.id.as_str())
            .exists()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_move_and_drain() {
    let t = fleet(false).await;
    // Spread: equal nodes take one workspace each; the selector pins to c.
    let w1 = t.up("w1", None).await;
    let w2 = t.up("w2", None).await;
    assert_ne!(w1.node, w2.node, "two workspaces on equal nodes spread");
    let w3 = t.up("w3", Some([("zone".into(), "x".into())].into())).await;
    assert_eq!(w3.node.as_deref(), Some("c"));
    // The image was copied to nodes that lacked it; each runs on its node.
    for w in [&w1, &w2, &w3] {
        assert_eq!(w.state, WorkspaceState::Running, "{}", w.name);
        let spec = t.spec(&w.name).await;
        let node = w.node.as_deref().unwrap();
        assert!(t.has_copy(node, &spec), "{} on {node}", w.name);
    }

    // Move keeps the files, the old copy goes, the workspace runs again.
    t.sh("w1", "echo kept > /workspace/marker && sync").await;
    let from = w1.node.clone().unwrap();
    let before = t.spec("w1").await;
    let moved = t
        .manager
        .move_workspace(&Caller::admin(), "w1", None)
        .await
        .unwrap();
    let to = moved.node.clone().unwrap();
    assert_ne!(to, from);
    assert_eq!(moved.state, WorkspaceState::Running);
    assert_eq!(t.sh("w1", "cat /workspace/marker").await, "kept\n");
    let after = t.spec("w1").await;
    assert_eq!(after.generation, before.generation + 1);
    assert!(t.has_copy(&to, &after) && !t.has_copy(&from, &before));
    // A selector keeps holding on a move: w3 has nowhere else to go.
    let e = t
        .manager
        .move_workspace(&Caller::admin(), "w3", None)
        .await
        .unwrap_err();
    assert!(e.message.contains("no label zone=x"), "{}", e.message);

    // Drain: everything leaves the node, nothing new goes there, rm then works. The
    // node drained is one holding a workspace other than c (whose w3 is pinned there).
    let _ = to;
    let holding = |views: &[hearth_api::Workspace]| {
        views
            .iter()
            .filter_map(|w| w.node.clone())
            .find(|n| n != "c")
    };
    let mut target = holding(&t.manager.list(&Caller::admin(), None).await.unwrap());
    if target.is_none() {
        t.manager
            .move_workspace(&Caller::admin(), "w1", Some("b"))
            .await
            .unwrap();
        target = Some("b".to_string());
    }
    let target = target.unwrap();
    let report = t.manager.drain_node(&target).await.unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(!report.moved.is_empty());
    let views = t.manager.list(&Caller::admin(), None).await.unwrap();
    assert!(views
        .iter()
        .all(|w| w.node.as_deref() != Some(target.as_str())));
    assert_eq!(t.sh("w1", "cat /workspace/marker").await, "kept\n");
    assert_eq!(t.fleet.state(&target), Some(NodeState::Draining));
    let w4 = t.up("w4", None).await;
    assert_ne!(w4.node.as_deref(), Some(target.as_str()));
    t.manager.remove_node(&target).await.unwrap();
    assert!(t.fleet.state(&target).is_none());
    // A node with workspaces is refused.
    let busy = w4.node.unwrap();
    let e = t.manager.remove_node(&busy).await.unwrap_err();
    assert_eq!(e.status.as_u16(), 409, "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_node_is_fenced_when_it_returns_over_s3() {
    let t = fleet(true).await;
    t.fleet.set_lost_after(Duration::from_secs(1));
    let w = t.up("w", Some([("zone".into(), "x".into())].into())).await;
    assert_eq!(w.node.as_deref(), Some("c"));
    t.sh("w", "echo before > /workspace/f && sync").await;
    t.manager.snapshot(&Caller::admin(), "w").await.unwrap();
    let old = t.spec("w").await;
    // Written after the last snapshot: lost with the node.
    t.sh("w", "echo after > /workspace/f && sync").await;

    // c stops answering: it is lost, and so is its workspace.
    t.fleet.detach("c");
    while t.fleet.state("c") != Some(NodeState::Lost) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lost = t.get("w").await;
    assert_eq!(lost.state, WorkspaceState::Lost);
    assert!(lost.last_snapshot_at.is_some());
    // Only c carries zone=x: relabel b so the workspace has somewhere to go.
    t.manager
        .set_node_labels("b", [("zone".into(), "x".into())].into())
        .await
        .unwrap();
    let back = t.manager.start(&Caller::admin(), "w").await.unwrap();
    assert_eq!(
        (back.state, back.node.as_deref()),
        (WorkspaceState::Running, Some("b"))
    );
    assert_eq!(t.sh("w", "cat /workspace/f").await, "before\n");
    let new = t.spec("w").await;
    assert_eq!(new.generation, old.generation + 1);

    // c's copy never snapshots again, even if something asks it directly.
    let c = t.node("c").clone();
    let snaps_before = t.manager.node().snapshots(&new).await.unwrap().len();
    let e = c.snapshot(&old).await.unwrap_err();
    assert!(e.to_string().contains("placed elsewhere"), "{e}");
    assert_eq!(
        t.manager.node().snapshots(&new).await.unwrap().len(),
        snaps_before
    );

    // c comes back: it learns w moved and drops its copy, without a snapshot.
    assert!(t.has_copy("c", &old));
    t.attach("c", &c).await;
    assert!(!t.has_copy("c", &old), "c still holds the moved workspace");
    assert_eq!(
        t.manager.node().snapshots(&new).await.unwrap().len(),
        snaps_before
    );
    let w = t.get("w").await;
    assert_eq!(
        (w.state, w.node.as_deref()),
        (WorkspaceState::Running, Some("b"))
    );
    assert_eq!(t.fleet.state("c"), Some(NodeState::Ready));
}
