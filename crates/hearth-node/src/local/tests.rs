//! The lifecycle against a fake host: the order of a start, its undo when a step fails,
//! and what reconcile cleans. No root, no containers; the real host is covered by the
//! integration tests (`tests/node.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hearth_cgroups::{Cgroups, Layout};
use hearth_image::{Image, ImageStore};
use hearth_net::{NetConfig, Network};
use hearth_runtime::bundle::BundleSpec;
use hearth_runtime::oci::{ContainerState, State};

use super::ops::HostOps;
use super::{guard, Inner};
use crate::{EgressRule, Limits, NodeConfig, NodeError, RunState, WorkspaceId, WorkspaceSpec};

#[derive(Default)]
struct World {
    /// Changes made to the host, in order: `op target`.
    calls: Vec<String>,
    /// Ops that fail (after being recorded).
    fail: Vec<&'static str>,
    containers: BTreeMap<WorkspaceId, ContainerState>,
    cgroups: BTreeSet<WorkspaceId>,
    networks: BTreeSet<WorkspaceId>,
    mounts: BTreeSet<PathBuf>,
}

/// Records every change it is asked to make and keeps the resulting host state, so tests
/// see both the order of calls and what is left.
#[derive(Clone)]
struct FakeHost {
    world: Arc<Mutex<World>>,
    ws_root: PathBuf,
}

impl FakeHost {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// Records `op` on `target` (a path is shown relative to the workspaces dir); fails
    /// if asked to, else applies `change`.
    fn op(
        &self,
        op: &'static str,
        target: &str,
        change: impl FnOnce(&mut World),
    ) -> Result<(), NodeError> {
        let mut w = self.world();
        w.calls.push(format!("{op} {target}"));
        if w.fail.contains(&op) {
            return Err(NodeError::Internal(format!("{op} failed (fake)")));
        }
        change(&mut w);
        Ok(())
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.ws_root)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    fn calls(&self) -> Vec<String> {
        self.world().calls.clone()
    }
}

impl HostOps for FakeHost {
    fn container_state(&self, id: &WorkspaceId) -> Result<Option<State>, NodeError> {
        Ok(self.world().containers.get(id).map(|s| State {
            status: *s,
            pid: Some(4242),
        }))
    }
    fn containers(&self) -> Result<Vec<WorkspaceId>, NodeError> {
        Ok(self.world().containers.keys().cloned().collect())
    }
    fn write_bundle(&self, dir: &Path, _: &BundleSpec) -> Result<(), NodeError> {
        self.op("write_bundle", &self.rel(dir), |_| {})
    }
    fn run_container(
        &self,
        id: &WorkspaceId,
        _: &Path,
        _: BorrowedFd<'_>,
        _: std::os::fd::OwnedFd,
    ) -> Result<(), NodeError> {
        self.op("run_container", id, |w| {
            w.containers.insert(id.clone(), ContainerState::Running);
        })
    }
    fn signal_container(&self, id: &WorkspaceId, signal: &str) -> Result<(), NodeError> {
        self.op("signal_container", &format!("{id} {signal}"), |_| {})
    }
    fn delete_container(&self, id: &WorkspaceId) -> Result<(), NodeError> {
        self.op("delete_container", id, |w| {
            w.containers.remove(id);
        })
    }
    fn wait_agent(&self, socket: &Path, _: &Path) -> Result<(), NodeError> {
        self.op("wait_agent", &self.rel(socket), |_| {})
    }
    fn create_cgroup(&self, id: &WorkspaceId, _: &hearth_cgroups::Limits) -> Result<(), NodeError> {
        self.op("create_cgroup", id, |w| {
            w.cgroups.insert(id.clone());
        })
    }
    fn cgroups(&self) -> Result<Vec<WorkspaceId>, NodeError> {
        Ok(self.world().cgroups.iter().cloned().collect())
    }
    fn kill_cgroup(&self, id: &WorkspaceId) -> Result<(), NodeError> {
        self.op("kill_cgroup", id, |_| {})
    }
    fn remove_cgroup(&self, id: &WorkspaceId) -> Result<(), NodeError> {
        self.op("remove_cgroup", id, |w| {
            w.cgroups.remove(id);
        })
    }
    fn ensure_network(
        &self,
        id: &WorkspaceId,
        _: u32,
        _: &[EgressRule],
    ) -> Result<PathBuf, NodeError> {
        self.op("ensure_network", id, |w| {
            w.networks.insert(id.clone());
        })?;
        Ok(PathBuf::from("/run/netns/fake"))
    }
    fn apply_egress(&self, id: &WorkspaceId, _: u32, _: &[EgressRule]) -> Result<(), NodeError> {
        self.op("apply_egress", id, |_| {})
    }
    fn networks(&self) -> Result<Vec<WorkspaceId>, NodeError> {
        Ok(self.world().networks.iter().cloned().collect())
    }
    fn remove_network(&self, id: &WorkspaceId) -> Result<(), NodeError> {
        self.op("remove_network", id, |w| {
            w.networks.remove(id);
        })
    }
    fn is_mounted(&self, path: &Path) -> Result<bool, NodeError> {
        Ok(self.world().mounts.contains(path))
    }
    fn mount_rootfs(
        &self,
        _: &[PathBuf],
        _: u32,
        _: &Path,
        _: &Path,
        rootfs: &Path,
        _: Option<&Path>,
    ) -> Result<(), NodeError> {
        self.op("mount_rootfs", &self.rel(rootfs), |w| {
            w.mounts.insert(rootfs.into());
        })
    }
    fn open_disk(&self, _: &Path, dir: &Path) -> Result<(), NodeError> {
        self.op("open_disk", &self.rel(dir), |w| {
            w.mounts.insert(dir.into());
        })
    }
    fn mounts_under(&self, dir: &Path) -> Result<Vec<PathBuf>, NodeError> {
        Ok(self
            .world()
            .mounts
            .iter()
            .filter(|m| m.starts_with(dir))
            .cloned()
            .collect())
    }
    fn unmount(&self, path: &Path) -> Result<(), NodeError> {
        self.op("unmount", &self.rel(path), |w| {
            w.mounts.remove(path);
        })
    }

    /// The pid is made up: never touch a real process.
    fn set_priority(&self, _pid: u32, _class: crate::priority::Class) -> std::io::Result<()> {
        Ok(())
    }

    fn shield_from_oom(&self, _pid: u32) -> std::io::Result<()> {
        Ok(())
    }
}

/// A node on a tempdir with `FakeHost` as its host (cgroups for freezing on a fake v2
/// tree in the tempdir).
fn node() -> (tempfile::TempDir, Inner, FakeHost) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().to_path_buf();
    let ws_root = data.join("workspaces");
    std::fs::create_dir_all(&ws_root).unwrap();
    let cg_root = data.join("cgroup");
    std::fs::create_dir_all(cg_root.join("hearth-test")).unwrap();
    for d in [cg_root.clone(), cg_root.join("hearth-test")] {
        std::fs::write(d.join("cgroup.controllers"), "cpu memory pids").unwrap();
        std::fs::write(d.join("cgroup.subtree_control"), "").unwrap();
    }
    let cgroups = Cgroups::open_with(Layout::V2 { root: cg_root }, "hearth-test").unwrap();
    let cfg = NodeConfig {
        data_dir: data.clone(),
        bridge: "hfake0".into(),
        subnet: "10.250.0.0/24".into(),
        cgroup_parent: "hearth-test".into(),
        runtime: None,
        agent_binary: data.join("agent"),
        snapshots: Default::default(),
        egress: Default::default(),
        disk_reserve: Some(0),
        console: Default::default(),
        priority: Default::default(),
        cpu_control: Default::default(),
        cpu_interval: crate::DEFAULT_CPU_INTERVAL,
    };
    let net = Network::new(NetConfig {
        bridge: cfg.bridge.clone(),
        subnet: cfg.subnet.clone(),
        egress: Default::default(),
    })
    .unwrap();
    let host = FakeHost {
        world: Default::default(),
        ws_root: ws_root.clone(),
    };
    let inner = Inner {
        images: ImageStore::open(&data.join("images")).unwrap(),
        host: Box::new(host.clone()),
        cgroups: Arc::new(cgroups),
        net: Arc::new(net),
        ws_root,
        share: data.join("share"),
        agent: data.join("agent"),
        gitconfig: data.join("gitconfig"),
        fetch_resolv: None,
        nofile_hard: 1024,
        phases: Default::default(),
        snap: Default::default(),
        hydrations: Default::default(),
        freezes: Default::default(),
        guard: guard::DiskGuard::new(&data, Some(0)).unwrap(),
        max_file: u64::MAX,
        consoles: Default::default(),
        live: Default::default(),
        ooms: Default::default(),
        exec_listener: None,
        cpu: None,
        cfg,
    };
    (tmp, inner, host)
}

fn spec(id: &str) -> WorkspaceSpec {
    WorkspaceSpec {
        id: WorkspaceId::new(id).unwrap(),
        name: format!("ws-{id}"),
        image: "sha256:00".into(),
        source: "/src/repo".into(),
        slot: 3,
        limits: Limits {
            memory_bytes: 1 << 30,
            pids: 100,
            cpu_weight: 100,
            disk_bytes: 1 << 30,
            cpus_milli: 0,
        },
        egress: Default::default(),
        generation: 0,
    }
}

fn image() -> Image {
    Image {
        id: "sha256:00".into(),
        names: vec![],
        diff_ids: vec!["sha256:aa".into()],
        size: 0,
        loaded_at: String::new(),
        config: Default::default(),
    }
}

fn wid(s: &str) -> WorkspaceId {
    WorkspaceId::new(s).unwrap()
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// Every change a start makes, in order.
const START: [&str; 7] = [
    "create_cgroup ab12",
    "ensure_network ab12",
    "mount_rootfs ab12/rootfs",
    "write_bundle ab12/bundle",
    "delete_container ab12",
    "run_container ab12",
    "wait_agent ab12/agent.sock",
];

fn start(inner: &Inner) -> Result<(), NodeError> {
    let s = spec("ab12");
    let p = inner.paths(&s.id);
    std::fs::create_dir_all(&p.dir).unwrap();
    inner.start_inner(&s, &image(), &p)
}

#[test]
fn a_start_that_succeeds_keeps_everything_it_made() {
    let (_tmp, inner, host) = node();
    start(&inner).unwrap();
    assert_eq!(host.calls(), strings(&START));
    let w = host.world();
    assert_eq!(w.containers.get("ab12"), Some(&ContainerState::Running));
    assert!(w.cgroups.contains("ab12") && w.networks.contains("ab12"));
    assert!(w.mounts.contains(&inner.paths("ab12").rootfs));
    assert!(inner.paths("ab12").socket.exists());
}

#[test]
fn a_failed_start_undoes_what_it_did_in_reverse_order() {
    // Per failing step: the undo that follows it. A step that can fail half way (cgroup,
    // network, container) is undone too.
    let cgroup: &[&str] = &["kill_cgroup ab12", "remove_cgroup ab12"];
    let net: &[&str] = &[
        "remove_network ab12",
        "kill_cgroup ab12",
        "remove_cgroup ab12",
    ];
    let rootfs: &[&str] = &[
        "unmount ab12/rootfs",
        "remove_network ab12",
        "kill_cgroup ab12",
        "remove_cgroup ab12",
    ];
    let container: &[&str] = &[
        "delete_container ab12",
        "unmount ab12/rootfs",
        "remove_network ab12",
        "kill_cgroup ab12",
        "remove_cgroup ab12",
    ];
    let cases: [(&str, &[&str]); 7] = [
        ("create_cgroup", cgroup),
        ("ensure_network", net),
        ("mount_rootfs", net),
        ("write_bundle", rootfs),
        ("delete_container", rootfs),
        ("run_container", container),
        ("wait_agent", container),
    ];
    for (i, (op, undo)) in cases.iter().enumerate() {
        let (_tmp, inner, host) = node();
        host.world().fail.push(op);
        let err = start(&inner).unwrap_err();
        assert_eq!(err.to_string(), format!("{op} failed (fake)"));
        let mut want = strings(&START[..=i]);
        want.extend(strings(undo));
        assert_eq!(host.calls(), want, "start failing at {op}");
        let w = host.world();
        assert!(
            w.containers.is_empty()
                && w.cgroups.is_empty()
                && w.networks.is_empty()
                && w.mounts.is_empty(),
            "failing at {op} left host state behind"
        );
        assert!(
            !inner.paths("ab12").socket.exists(),
            "failing at {op} left the agent socket"
        );
    }
}

#[test]
fn a_failing_undo_step_does_not_stop_the_others() {
    let (_tmp, inner, host) = node();
    host.world().fail.extend(["wait_agent", "unmount"]);
    start(&inner).unwrap_err();
    let mut want = strings(&START);
    want.extend(strings(&[
        "delete_container ab12",
        "unmount ab12/rootfs",
        "remove_network ab12",
        "kill_cgroup ab12",
        "remove_cgroup ab12",
    ]));
    assert_eq!(host.calls(), want);
}

#[test]
fn reconcile_resolves_states_cleans_unknown_ids_and_keeps_their_files() {
    let (_tmp, inner, host) = node();
    let root = inner.ws_root.clone();
    let disk_of = |id: &str| {
        std::fs::create_dir_all(root.join(id).join("disk/data/upper")).unwrap();
        std::fs::write(root.join(id).join("disk.img"), b"").unwrap();
    };
    // aa01 runs; bb02 crashed mid-start (container created, root mounted); cc03 has no
    // data here but a cgroup left; dd04 is unknown to the control plane.
    disk_of("aa01");
    disk_of("bb02");
    disk_of("dd04");
    std::fs::create_dir_all(root.join("Not-An-Id")).unwrap();
    std::fs::create_dir_all(root.join(".restore-77/disk")).unwrap();
    {
        let mut w = host.world();
        w.containers.insert(wid("aa01"), ContainerState::Running);
        w.containers.insert(wid("bb02"), ContainerState::Created);
        w.containers.insert(wid("dd04"), ContainerState::Running);
        w.cgroups.extend(["aa01", "bb02", "cc03", "dd04"].map(wid));
        // "aa0": a known id's veth name, cut short.
        w.networks.extend(["aa01", "aa0", "bb02", "dd04"].map(wid));
        for m in [
            "aa01/disk",
            "aa01/rootfs",
            "bb02/disk",
            "bb02/rootfs",
            "dd04/disk",
            "dd04/rootfs",
            ".restore-77/disk",
        ] {
            w.mounts.insert(root.join(m));
        }
    }
    let known = [spec("aa01"), spec("bb02"), spec("cc03")];
    let got = inner.reconcile(&known).unwrap();
    let states: Vec<(&str, RunState, Option<u32>)> = got
        .iter()
        .map(|(id, st)| (id.as_str(), st.state, st.pid))
        .collect();
    assert_eq!(
        states,
        [
            ("aa01", RunState::Running, Some(4242)),
            ("bb02", RunState::Stopped, None),
            ("cc03", RunState::Missing, None),
        ]
    );
    assert_eq!(got[0].1.ip, Some("10.250.0.5".parse().unwrap()), "slot 3");
    // Known workspaces are reconciled in parallel: the order holds per workspace, and
    // every known one is done before egress is repaired and strays are cleaned.
    let calls = host.calls();
    let of = |id: &str| -> Vec<String> {
        calls
            .iter()
            .filter(|c| {
                c.split(' ')
                    .nth(1)
                    .is_some_and(|a| a.split('/').next() == Some(id))
            })
            .cloned()
            .collect()
    };
    // Running: its disk is opened, its egress rules repaired, nothing removed.
    assert_eq!(
        of("aa01"),
        strings(&["open_disk aa01/disk", "apply_egress aa01"])
    );
    // Stopped: runtime resources go, the disk and network stay for the next start.
    assert_eq!(
        of("bb02"),
        strings(&[
            "open_disk bb02/disk",
            "delete_container bb02",
            "kill_cgroup bb02",
            "unmount bb02/rootfs",
            "remove_cgroup bb02",
        ])
    );
    // Missing: whatever is left of its runtime goes.
    assert_eq!(
        of("cc03"),
        strings(&[
            "delete_container cc03",
            "kill_cgroup cc03",
            "remove_cgroup cc03"
        ])
    );
    let known_done = calls
        .iter()
        .rposition(|c| c.contains("bb02") || c.contains("cc03") || c == "open_disk aa01/disk")
        .unwrap();
    assert_eq!(
        calls[known_done + 1..],
        strings(&[
            "apply_egress aa01",
            // A partial restore is unmounted (and deleted).
            "unmount .restore-77/disk",
            // Unknown: every runtime resource goes, deepest mount first.
            "delete_container dd04",
            "kill_cgroup dd04",
            "unmount dd04/rootfs",
            "unmount dd04/disk",
            "remove_network dd04",
            "remove_cgroup dd04",
        ])
    );
    let w = host.world();
    assert_eq!(w.containers.keys().collect::<Vec<_>>(), ["aa01"]);
    assert_eq!(w.cgroups.iter().collect::<Vec<_>>(), ["aa01"]);
    assert_eq!(
        w.networks.iter().collect::<Vec<_>>(),
        ["aa0", "aa01", "bb02"]
    );
    // The unknown workspace's files stay: deleting data needs a record saying so.
    assert!(root.join("dd04/disk.img").exists());
    assert!(root.join("Not-An-Id").exists());
    assert!(!root.join(".restore-77").exists());
}
