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

/// The CPU files a v2 kernel makes in a new group, at their defaults.
fn fake_v2_cpu_files(dir: &Path) {
    for (file, text) in [
        ("cpu.weight", "100\n"),
        ("cpu.max", "max 100000\n"),
        ("cpu.max.burst", "0\n"),
        ("cpu.idle", "0\n"),
        ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
    ] {
        fs::write(dir.join(file), text).unwrap();
    }
}

#[test]
fn v2_cpu_knobs_are_written_to_their_files_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let id = WorkspaceId::new("c2").unwrap();
    let cg = Cgroups::open_with(fake_v2(t, "cpu memory pids", "hearth"), "hearth").unwrap();
    assert!(cg.cpu_group(&id).is_err(), "no group yet");
    cg.create(
        &id,
        &Limits {
            memory_bytes: 64 << 20,
            ..Limits::default()
        },
    )
    .unwrap();
    let dir = t.join("hearth/c2");
    assert_eq!(read_trim(&dir.join("memory.high")), "60395520");
    fake_v2_cpu_files(&dir);
    let mut g = cg.cpu_group(&id).unwrap();
    let batch = CpuKnobs {
        weight: 150,
        quota_us: Some(50_000),
        period_us: 100_000,
        burst_us: 50_000,
        idle: true,
    };
    g.apply(&batch).unwrap();
    let file = |f: &str| read_trim(&dir.join(f));
    assert_eq!(
        ["cpu.weight", "cpu.max", "cpu.max.burst", "cpu.idle"].map(file),
        ["150", "50000 100000", "50000", "1"]
    );
    assert_eq!(cg.cpu_knobs(&id).unwrap(), batch);
    assert_eq!(g.apply(&batch).unwrap(), 0, "nothing changed");
    let interactive = CpuKnobs {
        weight: 200,
        ..CpuKnobs::default()
    };
    assert_eq!(g.apply(&interactive).unwrap(), 4);
    assert_eq!(
        ["cpu.weight", "cpu.max", "cpu.max.burst", "cpu.idle"].map(file),
        ["200", "max 100000", "0", "0"]
    );
    assert_eq!(cg.cpu_knobs(&id).unwrap(), interactive);
    // A limits rewrite leaves an idle group's weight to the controller.
    g.apply(&batch).unwrap();
    cg.set_limits(&id, &Limits::default()).unwrap();
    assert_eq!(file("cpu.weight"), "150");
    g.apply(&interactive).unwrap();
    cg.set_limits(&id, &Limits::default()).unwrap();
    assert_eq!(file("cpu.weight"), "100");

    // A kernel without cpu.idle and burst files (before 5.14): plain knobs still apply,
    // asking for idle fails and the next apply writes everything again.
    fs::remove_file(dir.join("cpu.idle")).unwrap();
    fs::remove_file(dir.join("cpu.max.burst")).unwrap();
    let mut g = cg.cpu_group(&id).unwrap();
    g.apply(&interactive).unwrap();
    let err = g.apply(&batch).unwrap_err();
    assert!(err.to_string().contains("cpu.idle"), "{err}");
    assert_eq!(g.last(), None);
    assert!(
        !dir.join("cpu.idle").exists(),
        "control files are never created"
    );
    assert_eq!(g.apply(&interactive).unwrap(), 5);
}

#[test]
fn v2_cpu_samples_parse_stat_and_pressure() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let id = WorkspaceId::new("c2").unwrap();
    let cg = Cgroups::open_with(fake_v2(t, "cpu memory pids", "hearth"), "hearth").unwrap();
    cg.create(&id, &Limits::default()).unwrap();
    let dir = t.join("hearth/c2");
    fake_v2_cpu_files(&dir);
    fs::write(t.join("hearth/cpu.stat"), "usage_usec 42\n").unwrap();
    let mut g = cg.cpu_group(&id).unwrap();
    let all = SampleWhat {
        throttling: true,
        pressure: true,
    };
    // No PSI in this kernel: no pressure, no error.
    assert_eq!(g.sample(all).unwrap(), CpuSample::default());

    let stat = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\n\
                nr_throttled 3\nthrottled_usec 777\nnr_bursts 1\nburst_usec 20\n";
    fs::write(dir.join("cpu.stat"), stat).unwrap();
    fs::write(
        dir.join("cpu.pressure"),
        "some avg10=2.50 avg60=1.00 avg300=0.20 total=4242\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=9\n",
    )
    .unwrap();
    // Opened after PSI appeared, so the handle has it.
    let mut g = cg.cpu_group(&id).unwrap();
    let want = CpuSample {
        usage_ns: 1_500_000,
        nr_throttled: 3,
        throttled_us: 777,
        pressure_some_us: Some(4242),
    };
    assert_eq!(g.sample(all).unwrap(), want);
    // `/metrics` reads the same files its own way.
    assert_eq!(
        cg.cpu_counters(&id).unwrap(),
        CpuCounters {
            throttled_periods: Some(3),
            throttled_us: Some(777),
            pressure_some_us: Some(4242),
        }
    );
    let usage_only = SampleWhat {
        throttling: false,
        pressure: false,
    };
    // v2 keeps usage and throttling in one file: both come with it; PSI only when asked.
    assert_eq!(
        g.sample(usage_only).unwrap(),
        CpuSample {
            pressure_some_us: None,
            ..want
        }
    );
    // The files stay open: a rewrite is seen, however long (past the first buffer).
    let long = format!("{}usage_usec 99\n", "padding_usec 0\n".repeat(100));
    fs::write(dir.join("cpu.stat"), long).unwrap();
    assert_eq!(g.sample(usage_only).unwrap().usage_ns, 99_000);
    // A group whose PSI is switched off reads no pressure rather than failing.
    fs::write(dir.join("cpu.pressure"), "").unwrap();
    assert_eq!(g.sample(all).unwrap().pressure_some_us, None);

    let mut parent = cg.cpu_parent_group().unwrap();
    assert_eq!(parent.sample(usage_only).unwrap().usage_ns, 42_000);

    // Forks refused at the pids limit: `max` of pids.events (v2 adds `max.imposed`).
    assert_eq!(
        g.pids_refused().unwrap(),
        None,
        "opened before the file existed"
    );
    fs::write(dir.join("pids.events"), "max 17\nmax.imposed 17\n").unwrap();
    let mut g = cg.cpu_group(&id).unwrap();
    assert_eq!(g.pids_refused().unwrap(), Some(17));
    fs::write(dir.join("pids.events"), "max 20\n").unwrap();
    assert_eq!(g.pids_refused().unwrap(), Some(20));
}
