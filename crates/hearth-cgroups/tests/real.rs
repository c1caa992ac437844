//! Against the real kernel: needs root and cgroupfs.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use hearth_cgroups::{Cgroups, Layout, Limits, V1Layout, Version, WorkspaceId};

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Kills and removes everything the test made, even when an assertion failed.
struct Guard {
    cg: Cgroups,
    id: WorkspaceId,
    child: Option<Child>,
    remove_parent: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.cg.kill_all(&self.id);
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.cg.remove(&self.id);
        if self.remove_parent {
            let _ = self.cg.remove_parent();
        }
    }
}

/// Spawns `sh -c script`, moved into the groups before exec the way the node does it, so
/// its forks inherit the groups.
fn spawn_in(procs: &[PathBuf], script: &str) -> Child {
    let paths: Vec<CString> = procs
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()).unwrap())
        .collect();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script]);
    // SAFETY: the closure only calls async-signal-safe functions (open, write, close) on
    // memory allocated before fork.
    unsafe {
        cmd.pre_exec(move || {
            for p in &paths {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            Ok(())
        })
    };
    cmd.spawn().unwrap()
}

/// Waits (bounded) until the shell has forked both sleeps.
fn wait_for_pids(cg: &Cgroups, id: &WorkspaceId, n: usize) -> Vec<u32> {
    for _ in 0..500 {
        let pids = cg.pids(id).unwrap();
        if pids.len() >= n {
            return pids;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    cg.pids(id).unwrap()
}

fn check_lifecycle(cg: Cgroups, expected_procs: usize) {
    let id = WorkspaceId::new("0123456789ab").unwrap();
    let mut guard = Guard {
        cg,
        id: id.clone(),
        child: None,
        remove_parent: true,
    };
    let cg = &guard.cg;
    cg.create(
        &id,
        &Limits {
            memory_bytes: 256 << 20,
            pids: 64,
            cpu_weight: 50,
        },
    )
    .unwrap();
    let procs = cg.procs_files(&id);
    assert_eq!(procs.len(), expected_procs, "{procs:?}");
    assert_eq!(cg.list().unwrap(), vec![id.clone()]);

    let child = spawn_in(&procs, "sleep 600 & sleep 600 & wait");
    let child_pid = child.id();
    guard.child = Some(child);
    let cg = &guard.cg;
    let pids = wait_for_pids(cg, &id, 3);
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(pids.contains(&child_pid));
    for file in &procs {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.lines().any(|l| l == child_pid.to_string()),
            "{file:?}: {text}"
        );
    }
    let stats = cg.stats(&id).unwrap();
    assert_eq!(stats.pids, 3);
    assert!(matches!(
        cg.remove(&id),
        Err(hearth_cgroups::CgroupError::Busy { .. })
    ));

    cg.kill_all(&id).unwrap();
    assert!(cg.pids(&id).unwrap().is_empty());
    let status = guard.child.as_mut().unwrap().wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    guard.child = None;

    let cg = &guard.cg;
    cg.remove(&id).unwrap();
    cg.remove(&id).unwrap();
    assert!(cg.list().unwrap().is_empty());
    for file in &procs {
        assert!(!file.parent().unwrap().exists(), "{file:?}");
    }
    cg.remove_parent().unwrap();
    for file in &procs {
        assert!(
            !file.parent().unwrap().parent().unwrap().exists(),
            "{file:?}"
        );
    }
}

fn read_trim(p: PathBuf) -> String {
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{p:?}: {e}"))
        .trim()
        .to_owned()
}

#[test]
fn host_layout_lifecycle() {
    let layout = Layout::detect().unwrap();
    let parent = unique("hearth-test");
    let cg = Cgroups::open(&parent).unwrap();
    let expected = match &layout {
        Layout::V1(v1) => {
            let mut roots: Vec<_> = [
                &v1.memory,
                &v1.pids,
                &v1.cpu,
                &v1.cpuacct,
                &v1.freezer,
                &v1.unified,
            ]
            .into_iter()
            .flatten()
            .collect();
            roots.sort();
            roots.dedup();
            roots.len()
        }
        Layout::V2 { .. } => 1,
    };
    // Limits written where the controller lives.
    {
        let guard = Guard {
            cg: cg.clone(),
            id: WorkspaceId::new("11a175").unwrap(),
            child: None,
            remove_parent: false,
        };
        guard
            .cg
            .create(
                &WorkspaceId::new("11a175").unwrap(),
                &Limits {
                    memory_bytes: 256 << 20,
                    pids: 64,
                    cpu_weight: 50,
                },
            )
            .unwrap();
        match &layout {
            Layout::V1(v1) => {
                assert_eq!(cg.version(), Version::V1);
                let g = |r: &Option<PathBuf>, f: &str| {
                    read_trim(r.as_ref().unwrap().join(&parent).join("11a175").join(f))
                };
                assert_eq!(g(&v1.memory, "memory.limit_in_bytes"), "268435456");
                assert_eq!(g(&v1.pids, "pids.max"), "64");
                assert_eq!(g(&v1.cpu, "cpu.shares"), "512");
            }
            Layout::V2 { root } => {
                assert_eq!(cg.version(), Version::V2);
                let dir = root.join(&parent).join("11a175");
                assert_eq!(read_trim(dir.join("memory.max")), "268435456");
                assert_eq!(read_trim(dir.join("pids.max")), "64");
                assert_eq!(read_trim(dir.join("cpu.weight")), "50");
            }
        }
    }
    check_lifecycle(cg, expected);
}

/// A cgroup hierarchy this test mounted itself (the host has none of that kind);
/// unmounted on drop, after the groups in it are gone.
struct OwnMount(tempfile::TempDir);

impl OwnMount {
    fn new(fstype: &str, options: &str) -> OwnMount {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", fstype, "-o", options, "hearth-test"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this host has no {fstype} ({options}) hierarchy and cannot mount one (booted with \
             cgroup_no_v1?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        OwnMount(dir)
    }
}

impl Drop for OwnMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// The v2 backend on this host's cgroup2 mount (the hybrid `unified` one on v1 hosts, or
/// one of its own on a v1 host without it), which exercises `cgroup.kill`.
#[test]
fn v2_backend_on_cgroup2_mount() {
    let mut own = None;
    let root = match Layout::detect().unwrap() {
        Layout::V2 { root } => root,
        Layout::V1(v1) => v1.unified.unwrap_or_else(|| {
            own.insert(OwnMount::new("cgroup2", "rw"))
                .0
                .path()
                .to_owned()
        }),
    };
    let parent = unique("hearth-test-v2");
    let cg = Cgroups::open_with(Layout::V2 { root }, &parent).unwrap();
    check_lifecycle(cg, 1);
}

/// v1 without the hybrid cgroup2 group: kill_all must go through freeze, kill, thaw. A
/// host without a v1 freezer (cgroup v2 hosts) gets one mounted for the test: the v1
/// freezer is no v2 controller, so it stays free to mount there.
#[test]
fn v1_freezer_kill_path() {
    let mut own = None;
    let mut v1 = match Layout::detect().unwrap() {
        Layout::V1(v1) if v1.freezer.is_some() => v1,
        _ => V1Layout {
            freezer: Some(
                own.insert(OwnMount::new("cgroup", "freezer"))
                    .0
                    .path()
                    .to_owned(),
            ),
            ..V1Layout::default()
        },
    };
    v1.unified = None;
    let mut roots: Vec<_> = [&v1.memory, &v1.pids, &v1.cpu, &v1.cpuacct, &v1.freezer]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    roots.sort();
    roots.dedup();
    let parent = unique("hearth-test-v1");
    let cg = Cgroups::open_with(Layout::V1(v1), &parent).unwrap();
    check_lifecycle(cg, roots.len());
}

/// The CPU knobs on the host's real hierarchy (v1 here: shares, cfs quota/burst, idle;
/// PSI from the hybrid cgroup2 group): the kernel's ordering rules (no weight write while
/// idle, burst never above the quota) hold through every transition, only changed knobs
/// are written, and the counters move for a busy group.
#[test]
fn cpu_knobs_and_counters_on_the_real_hierarchy() {
    use hearth_cgroups::{CpuKnobs, SampleWhat};
    let parent = unique("hearth-cputest");
    let cg = Cgroups::open(&parent).unwrap();
    let id = WorkspaceId::new("c0c0c0c0c0c0").unwrap();
    let mut guard = Guard {
        cg,
        id: id.clone(),
        child: None,
        remove_parent: true,
    };
    guard.cg.create(&id, &Limits::default()).unwrap();
    let mut g = guard.cg.cpu_group(&id).unwrap();
    let interactive = CpuKnobs {
        weight: 200,
        ..CpuKnobs::default()
    };
    let batch = CpuKnobs {
        idle: true,
        quota_us: Some(50_000),
        burst_us: 50_000,
        ..interactive
    };
    let wide = CpuKnobs {
        quota_us: Some(200_000),
        burst_us: 150_000,
        ..batch
    };
    for want in [interactive, batch, wide, batch, interactive] {
        g.apply(&want).unwrap();
        let got = guard.cg.cpu_knobs(&id).unwrap();
        // An idle group shows the kernel's idle weight; it gets ours back on leaving.
        let expect = if want.idle {
            CpuKnobs { weight: 1, ..want }
        } else {
            want
        };
        assert_eq!(got, expect);
    }
    assert_eq!(
        g.apply(&interactive).unwrap(),
        0,
        "nothing changed, nothing written"
    );
    // A limits rewrite (hearth limits) on an idle group leaves the weight to the controller.
    g.apply(&batch).unwrap();
    guard.cg.set_limits(&id, &Limits::default()).unwrap();
    assert!(guard.cg.cpu_knobs(&id).unwrap().idle);
    g.apply(&interactive).unwrap();

    // A busy loop in the group: usage grows between two samples.
    let procs = guard.cg.procs_files(&id);
    guard.child = Some(spawn_in(&procs, "while :; do :; done"));
    let what = SampleWhat {
        throttling: true,
        pressure: true,
    };
    let first = g.sample(what).unwrap();
    // Polled, not one fixed sleep: on a loaded machine the loop may wait for a CPU.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let second = loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let s = g.sample(what).unwrap();
        if s.usage_ns > first.usage_ns || std::time::Instant::now() > deadline {
            break s;
        }
    };
    assert!(second.usage_ns > first.usage_ns, "{first:?} {second:?}");
    assert_eq!(g.pids_refused().unwrap(), Some(0), "no fork refused yet");
    if guard.cg.version() == Version::V1 && Path::new("/sys/fs/cgroup/unified").is_dir() {
        assert!(
            second.pressure_some_us.is_some(),
            "hybrid host: PSI from cgroup2"
        );
    }
}
