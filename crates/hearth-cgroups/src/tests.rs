//! Backends against a tempdir laid out like cgroupfs.

use super::*;

fn read_trim(p: &Path) -> String {
    fs::read_to_string(p).unwrap().trim().to_owned()
}

fn fake_v1(tmp: &Path) -> Layout {
    for d in ["memory", "pids", "cpu,cpuacct", "freezer", "unified"] {
        fs::create_dir_all(tmp.join(d)).unwrap();
    }
    Layout::V1(V1Layout {
        memory: Some(tmp.join("memory")),
        pids: Some(tmp.join("pids")),
        cpu: Some(tmp.join("cpu,cpuacct")),
        cpuacct: Some(tmp.join("cpu,cpuacct")),
        freezer: Some(tmp.join("freezer")),
        unified: Some(tmp.join("unified")),
    })
}

#[test]
fn v1_create_writes_limits_in_each_hierarchy() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cg = Cgroups::open_with(fake_v1(t), "hearth").unwrap();
    assert_eq!(cg.version(), Version::V1);
    for d in ["memory", "pids", "cpu,cpuacct", "freezer", "unified"] {
        assert!(t.join(d).join("hearth").is_dir(), "{d}");
    }
    let limits = Limits {
        memory_bytes: 1 << 30,
        pids: 512,
        cpu_weight: 200,
    };
    cg.create(&WorkspaceId::new("abc123").unwrap(), &limits)
        .unwrap();
    assert_eq!(
        read_trim(&t.join("memory/hearth/abc123/memory.limit_in_bytes")),
        "1073741824"
    );
    assert_eq!(read_trim(&t.join("pids/hearth/abc123/pids.max")), "512");
    assert_eq!(
        read_trim(&t.join("cpu,cpuacct/hearth/abc123/cpu.shares")),
        "2048"
    );
    assert!(t.join("unified/hearth/abc123").is_dir());

    // Idempotent: limits are rewritten, 0 means unlimited.
    cg.create(&WorkspaceId::new("abc123").unwrap(), &Limits::default())
        .unwrap();
    assert_eq!(
        read_trim(&t.join("memory/hearth/abc123/memory.limit_in_bytes")),
        "-1"
    );
    assert_eq!(read_trim(&t.join("pids/hearth/abc123/pids.max")), "max");
    assert_eq!(
        read_trim(&t.join("cpu,cpuacct/hearth/abc123/cpu.shares")),
        "1024"
    );

    // Co-mounted cpu,cpuacct yields one procs file, not two.
    let mut procs = cg.procs_files(&WorkspaceId::new("abc123").unwrap());
    procs.sort();
    let mut want: Vec<PathBuf> = ["cpu,cpuacct", "freezer", "memory", "pids", "unified"]
        .iter()
        .map(|d| t.join(d).join("hearth/abc123/cgroup.procs"))
        .collect();
    want.sort();
    assert_eq!(procs, want);
    assert!(cg.procs_files(&WorkspaceId::new("0de").unwrap()).is_empty());
    assert_eq!(
        cg.list().unwrap(),
        vec![WorkspaceId::new("abc123").unwrap()]
    );
}

#[test]
fn pids_are_collected_across_hierarchies_and_children() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cg = Cgroups::open_with(fake_v1(t), "hearth").unwrap();
    cg.create(&WorkspaceId::new("a51").unwrap(), &Limits::default())
        .unwrap();
    fs::write(t.join("memory/hearth/a51/cgroup.procs"), "10\n20\n").unwrap();
    fs::create_dir_all(t.join("pids/hearth/a51/child")).unwrap();
    fs::write(t.join("pids/hearth/a51/child/cgroup.procs"), "30\n10\n").unwrap();
    assert_eq!(
        cg.pids(&WorkspaceId::new("a51").unwrap()).unwrap(),
        vec![10, 20, 30]
    );
    assert!(cg
        .pids(&WorkspaceId::new("0dd").unwrap())
        .unwrap()
        .is_empty());
    assert!(matches!(
        cg.remove(&WorkspaceId::new("a51").unwrap()),
        Err(CgroupError::Busy { ref id, ref pids }) if id == "a51" && pids == &[10, 20, 30]
    ));

    fs::write(t.join("memory/hearth/a51/cgroup.procs"), "x\n").unwrap();
    let err = cg.pids(&WorkspaceId::new("a51").unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("memory/hearth/a51/cgroup.procs"),
        "{err}"
    );
}

#[test]
fn v1_stats_read_the_right_files() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cg = Cgroups::open_with(fake_v1(t), "hearth").unwrap();
    cg.create(&WorkspaceId::new("a51").unwrap(), &Limits::default())
        .unwrap();
    fs::write(t.join("memory/hearth/a51/memory.usage_in_bytes"), "4096\n").unwrap();
    fs::write(t.join("pids/hearth/a51/pids.current"), "3\n").unwrap();
    fs::write(t.join("cpu,cpuacct/hearth/a51/cpuacct.usage"), "123456\n").unwrap();
    assert_eq!(
        cg.stats(&WorkspaceId::new("a51").unwrap()).unwrap(),
        Stats {
            memory_bytes: Some(4096),
            pids: 3,
            cpu_usage_ns: Some(123456)
        }
    );
}

#[test]
fn v1_missing_controllers_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fs::create_dir_all(t.join("memory")).unwrap();
    let layout = Layout::V1(V1Layout {
        memory: Some(t.join("memory")),
        ..V1Layout::default()
    });
    let cg = Cgroups::open_with(layout, "hearth").unwrap();
    cg.create(&WorkspaceId::new("a51").unwrap(), &Limits::default())
        .unwrap();
    assert_eq!(
        cg.procs_files(&WorkspaceId::new("a51").unwrap()),
        vec![t.join("memory/hearth/a51/cgroup.procs")]
    );
    fs::write(t.join("memory/hearth/a51/cgroup.procs"), "7\n").unwrap();
    fs::write(t.join("memory/hearth/a51/memory.usage_in_bytes"), "1").unwrap();
    let stats = cg.stats(&WorkspaceId::new("a51").unwrap()).unwrap();
    assert_eq!(stats.pids, 1);
    assert_eq!(stats.cpu_usage_ns, None);
}

fn fake_v2(t: &Path, root_controllers: &str, parent: &str) -> Layout {
    fs::write(t.join("cgroup.controllers"), root_controllers).unwrap();
    fs::write(t.join("cgroup.subtree_control"), "").unwrap();
    // The kernel fills these in for new directories; the fake has to pre-create them.
    let mut dir = t.to_path_buf();
    for c in Path::new(parent).components() {
        dir = dir.join(c);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.controllers"), root_controllers).unwrap();
    }
    Layout::V2 { root: t.to_owned() }
}

#[test]
fn v2_enables_controllers_along_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cg = Cgroups::open_with(fake_v2(t, "cpuset cpu io memory pids", "a/b"), "a/b").unwrap();
    assert_eq!(cg.version(), Version::V2);
    for d in ["", "a", "a/b"] {
        assert_eq!(
            read_trim(&t.join(d).join("cgroup.subtree_control")),
            "+cpu +memory +pids",
            "{d}"
        );
    }
    cg.create(
        &WorkspaceId::new("a5").unwrap(),
        &Limits {
            memory_bytes: 1000,
            pids: 10,
            cpu_weight: 50,
        },
    )
    .unwrap();
    let ws = t.join("a/b/a5");
    assert_eq!(read_trim(&ws.join("memory.max")), "1000");
    assert_eq!(read_trim(&ws.join("pids.max")), "10");
    assert_eq!(read_trim(&ws.join("cpu.weight")), "50");
    assert_eq!(
        cg.procs_files(&WorkspaceId::new("a5").unwrap()),
        vec![ws.join("cgroup.procs")]
    );

    fs::write(ws.join("memory.current"), "99\n").unwrap();
    fs::write(ws.join("pids.current"), "2\n").unwrap();
    fs::write(ws.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
    assert_eq!(
        cg.stats(&WorkspaceId::new("a5").unwrap()).unwrap(),
        Stats {
            memory_bytes: Some(99),
            pids: 2,
            cpu_usage_ns: Some(1_500_000)
        }
    );

    // Already enabled controllers are not written again.
    fs::write(t.join("cgroup.subtree_control"), "cpu memory pids").unwrap();
    Cgroups::open_with(Layout::V2 { root: t.to_owned() }, "a/b").unwrap();
    assert_eq!(
        read_trim(&t.join("cgroup.subtree_control")),
        "cpu memory pids"
    );
}

#[test]
fn v2_unavailable_controller_is_not_written() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cg = Cgroups::open_with(fake_v2(t, "cpu pids", "hearth"), "hearth").unwrap();
    assert_eq!(read_trim(&t.join("cgroup.subtree_control")), "+cpu +pids");
    cg.create(&WorkspaceId::new("a5").unwrap(), &Limits::default())
        .unwrap();
    assert!(!t.join("hearth/a5/memory.max").exists());
    assert_eq!(read_trim(&t.join("hearth/a5/pids.max")), "max");
}

#[test]
fn parents_cannot_escape() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = Cgroups::open_with(fake_v1(tmp.path()), "hearth").unwrap();
    // Ids are checked where they are made (`hearth_types::WorkspaceId`); parents here.
    for bad in ["", "..", "/abs", "a/../b", "a b"] {
        assert!(
            matches!(
                Cgroups::open_with(fake_v1(tmp.path()), bad),
                Err(CgroupError::InvalidParent { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        cg.create(
            &WorkspaceId::new("0c").unwrap(),
            &Limits {
                cpu_weight: 0,
                ..Limits::default()
            }
        ),
        Err(CgroupError::InvalidLimits { .. })
    ));
}

#[test]
fn shares_mapping() {
    assert_eq!(weight_to_shares(100), 1024);
    assert_eq!(weight_to_shares(1), 10);
    assert_eq!(weight_to_shares(10000), 102400);
}

#[test]
fn freeze_and_thaw_use_the_freezer_then_cgroup_freeze() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cg = Cgroups::open_with(fake_v1(t), "hearth").unwrap();
    cg.create(&WorkspaceId::new("abc123").unwrap(), &Limits::default())
        .unwrap();
    let state = t.join("freezer/hearth/abc123/freezer.state");
    assert!(cg.freeze(&WorkspaceId::new("abc123").unwrap()).unwrap());
    assert_eq!(read_trim(&state), "FROZEN");
    cg.thaw(&WorkspaceId::new("abc123").unwrap()).unwrap();
    assert_eq!(read_trim(&state), "THAWED");

    let tmp2 = tempfile::tempdir().unwrap();
    let t2 = tmp2.path();
    let cg2 = Cgroups::open_with(fake_v2(t2, "cpu memory pids", "hearth"), "hearth").unwrap();
    cg2.create(&WorkspaceId::new("abc123").unwrap(), &Limits::default())
        .unwrap();
    let dir = t2.join("hearth/abc123");
    // Without cgroup.freeze there is nothing to freeze.
    assert!(!cg2.freeze(&WorkspaceId::new("abc123").unwrap()).unwrap());
    fs::write(dir.join("cgroup.freeze"), "0").unwrap();
    fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
    assert!(cg2.freeze(&WorkspaceId::new("abc123").unwrap()).unwrap());
    assert_eq!(read_trim(&dir.join("cgroup.freeze")), "1");
    cg2.thaw(&WorkspaceId::new("abc123").unwrap()).unwrap();
    assert_eq!(read_trim(&dir.join("cgroup.freeze")), "0");
}

#[test]
fn memory_high_sits_a_tenth_below_the_limit_page_aligned() {
    assert_eq!(memory_high(0), 0);
    assert_eq!(memory_high(64 << 20), 60_395_520); // 57.6 MiB, page aligned
    assert_eq!(memory_high(4 << 30), 3_865_468_928);
    assert_eq!(memory_high(1000) % 4096, 0);
}

#[test]
fn memory_threshold_follows_the_limit_on_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let id = WorkspaceId::new("a51").unwrap();
    let cg = Cgroups::open_with(fake_v1(t), "hearth").unwrap();
    let lim = |memory_bytes| Limits {
        memory_bytes,
        ..Limits::default()
    };
    cg.create(&id, &lim(64 << 20)).unwrap();
    let m = t.join("memory/hearth/a51");
    assert_eq!(read_trim(&m.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read_trim(&m.join("memory.soft_limit_in_bytes")), "60395520");
    cg.set_limits(&id, &lim(0)).unwrap();
    assert_eq!(read_trim(&m.join("memory.soft_limit_in_bytes")), "-1");

    // What the kernel shows back: unlimited is a huge number on v1.
    fs::write(m.join("memory.usage_in_bytes"), "4096\n").unwrap();
    fs::write(m.join("memory.limit_in_bytes"), "67108864\n").unwrap();
    fs::write(
        m.join("memory.soft_limit_in_bytes"),
        "9223372036854771712\n",
    )
    .unwrap();
    fs::write(
        m.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    .unwrap();
    assert_eq!(
        cg.memory(&id).unwrap(),
        MemoryStats {
            usage_bytes: Some(4096),
            limit_bytes: Some(64 << 20),
            high_bytes: None,
            oom_kills: Some(3),
        }
    );

    let tmp2 = tempfile::tempdir().unwrap();
    let t2 = tmp2.path();
    let cg = Cgroups::open_with(fake_v2(t2, "cpu memory pids", "hearth"), "hearth").unwrap();
    cg.create(&id, &lim(64 << 20)).unwrap();
    let d = t2.join("hearth/a51");
    assert_eq!(read_trim(&d.join("memory.max")), "67108864");
    assert_eq!(read_trim(&d.join("memory.high")), "60395520");
    cg.set_limits(&id, &lim(128 << 20)).unwrap();
    assert_eq!(read_trim(&d.join("memory.high")), "120795136");
    fs::write(d.join("memory.current"), "8192\n").unwrap();
    fs::write(
        d.join("memory.events"),
        "low 0\nhigh 12\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
    )
    .unwrap();
    assert_eq!(
        cg.memory(&id).unwrap(),
        MemoryStats {
            usage_bytes: Some(8192),
            limit_bytes: Some(128 << 20),
            high_bytes: Some(120_795_136),
            oom_kills: Some(1),
        }
    );
    cg.set_limits(&id, &lim(0)).unwrap();
    assert_eq!(read_trim(&d.join("memory.high")), "max");
    assert_eq!(cg.memory(&id).unwrap().limit_bytes, None);
}

#[test]
fn kernel_memcg_paths_map_to_workspaces_under_the_parent_only() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = Cgroups::open_with(fake_v1(tmp.path()), "hearth-t/ws").unwrap();
    let id = |s: &str| Some(WorkspaceId::new(s).unwrap());
    assert_eq!(cg.workspace_of("/hearth-t/ws/ab12"), id("ab12"));
    assert_eq!(cg.workspace_of("/hearth-t/ws/ab12/nested/x"), id("ab12"));
    assert_eq!(cg.workspace_of("/hearth-t/ws"), None);
    assert_eq!(cg.workspace_of("/hearth-t/wsx/ab12"), None);
    assert_eq!(cg.workspace_of("/other/ab12"), None);
    assert_eq!(cg.workspace_of("/hearth-t/ws/../ab12"), None);
    assert_eq!(cg.workspace_of("/hearth-t/ws/NOTHEX"), None);
    assert_eq!(cg.workspace_of("hearth-t/ws/ab12"), None);
    assert_eq!(cg.workspace_of("/"), None);
}

#[test]
fn cpu_counters_read_throttling_and_pressure_in_microseconds() {
    let id = WorkspaceId::new("a51").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cg = Cgroups::open_with(fake_v1(t), "hearth").unwrap();
    assert_eq!(cg.cpu_counters(&id).unwrap(), CpuCounters::default());
    cg.create(&id, &Limits::default()).unwrap();
    fs::write(
        t.join("cpu,cpuacct/hearth/a51/cpu.stat"),
        "nr_periods 10\nnr_throttled 4\nthrottled_time 2500000\nnr_bursts 0\nburst_time 0\n",
    )
    .unwrap();
    fs::write(
        t.join("unified/hearth/a51/cpu.pressure"),
        "some avg10=1.00 avg60=0.50 avg300=0.10 total=777\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
    )
    .unwrap();
    assert_eq!(
        cg.cpu_counters(&id).unwrap(),
        CpuCounters {
            throttled_periods: Some(4),
            throttled_us: Some(2500),
            pressure_some_us: Some(777),
        }
    );

    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cg = Cgroups::open_with(fake_v2(t, "cpu memory pids", "hearth"), "hearth").unwrap();
    cg.create(&id, &Limits::default()).unwrap();
    fs::write(
        t.join("hearth/a51/cpu.stat"),
        "usage_usec 9\nnr_periods 3\nnr_throttled 2\nthrottled_usec 1234\n",
    )
    .unwrap();
    assert_eq!(
        cg.cpu_counters(&id).unwrap(),
        CpuCounters {
            throttled_periods: Some(2),
            throttled_us: Some(1234),
            pressure_some_us: None,
        }
    );
}
