//! Process priorities in real workspaces, read from the host's /proc: the agent above its
//! sessions, sessions at their class, compilers batch when they start.

use std::time::{Duration, Instant};

use hearth_node::{ExecRequest, ExecSession, NodeApi, PriorityRules, WorkspaceSpec};

mod common;

use common::{busybox_workspaces, env, env_config, run, Env};

/// (nice, scheduling policy) of host thread `pid` from /proc/PID/stat (fields 19 and 41).
fn sched(pid: u32) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    Some((f.get(16)?.parse().ok()?, f.get(38)?.parse().ok()?))
}

/// Host pids in workspace `spec`'s cgroups whose comm is `comm`.
fn pids_named(e: &Env, spec: &WorkspaceSpec, comm: &str) -> Vec<u32> {
    let needle = format!(":/{}/{}", e.cfg.cgroup_parent, spec.id);
    let mut out = Vec::new();
    for d in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if c.trim_end() != comm {
            continue;
        }
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cg.lines().any(|l| l.contains(&needle)) {
            out.push(pid);
        }
    }
    out
}

/// Waits (bounded) until workspace `spec` has a process `comm` whose (nice, policy) is
/// `want`; returns what the last one seen had.
fn wait_class(e: &Env, spec: &WorkspaceSpec, comm: &str, want: (i32, i32)) -> Option<(i32, i32)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        for pid in pids_named(e, spec, comm) {
            last = sched(pid);
            if last == Some(want) {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    last
}

/// A session left running (the caller drops it at the end).
async fn start(e: &Env, spec: &WorkspaceSpec, cmd: &str, tty: bool) -> ExecSession {
    e.node
        .exec(
            spec,
            ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
                tty,
                rows: 24,
                cols: 80,
                ..Default::default()
            },
        )
        .await
        .expect("exec")
}

/// A long-running process whose executable is named `cc1`: a copy of the agent (what
/// `hearth bench cpu` runs as its build load), started from a shell, not exec'd by it.
const CC1: &str = "cp /.hearth/agent /tmp/cc1 && /tmp/cc1 --listen /tmp/cc1.sock; true";

#[tokio::test(flavor = "multi_thread")]
async fn agent_above_sessions_and_compilers_batch() {
    let mut e = env().await;
    let ws = busybox_workspaces(&mut e, &[("dddddddd0f01", "p", 0)]).await;
    let (spec, st) = &ws[0];
    let rules = PriorityRules::default();
    let other = libc::SCHED_OTHER;
    let batch = (rules.for_exe(b"cc1", None).unwrap().1.nice, {
        rules.for_exe(b"cc1", None).unwrap().1.policy.as_raw()
    });
    assert_ne!(
        batch,
        (0, other),
        "the built-in batch class is below normal"
    );

    // The agent (PID 1) and every one of its threads run at the agent class.
    let agent = st.pid.expect("agent pid");
    let tasks: Vec<u32> = std::fs::read_dir(format!("/proc/{agent}/task"))
        .unwrap()
        .flatten()
        .filter_map(|d| d.file_name().to_str()?.parse().ok())
        .collect();
    assert!(tasks.len() > 1, "the agent has threads: {tasks:?}");
    for t in tasks {
        assert_eq!(sched(t), Some((-10, other)), "agent thread {t}");
    }

    // A re-attach (a restarted server) puts it back if something changed it.
    // SAFETY: setpriority on a pid with a valid nice value.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, agent, 0) };
    assert_eq!(r, 0);
    assert_eq!(sched(agent), Some((0, other)));
    e.node.reconcile(std::slice::from_ref(spec)).await.unwrap();
    assert_eq!(sched(agent), Some((-10, other)), "after reconcile");

    // Sessions do not inherit it: with a terminal, without, and what they start.
    let tty = start(&e, spec, "exec sleep 301", true).await;
    assert_eq!(wait_class(&e, spec, "sleep", (0, other)), Some((0, other)));
    let (code, out, _) = run(&e.node, spec, "cut -d' ' -f19 /proc/self/stat").await;
    assert_eq!((code, out.trim()), (0, "0"), "a session without a terminal");

    // A compiler started from a shell gets the batch class when it starts, found by its
    // name (comm) ...
    let build = start(&e, spec, CC1, false).await;
    assert_eq!(wait_class(&e, spec, "cc1", batch), Some(batch));
    // ... or by its executable when it runs under another name (a symlink).
    let alias = start(
        &e,
        spec,
        "while [ ! -x /tmp/cc1 ]; do sleep 0.05; done; ln -sf /tmp/cc1 /tmp/compile && \
         /tmp/compile --listen /tmp/compile.sock; true",
        false,
    )
    .await;
    assert_eq!(wait_class(&e, spec, "compile", batch), Some(batch));
    // The shell that started it stays where it was.
    let shells: Vec<_> = pids_named(&e, spec, "sh")
        .into_iter()
        .filter_map(sched)
        .collect();
    assert!(!shells.is_empty());
    assert!(shells.iter().all(|s| *s == (0, other)), "{shells:?}");

    // The node's own process is outside the workspaces' parent group, whose CPU weight
    // is one ordinary task's: all workspaces together weigh as much as one node thread.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    assert!(
        !own.contains(&format!(":/{}/", e.cfg.cgroup_parent)),
        "{own}"
    );
    let v1 = std::path::Path::new("/sys/fs/cgroup/cpu").join(&e.cfg.cgroup_parent);
    let v2 = std::path::Path::new("/sys/fs/cgroup").join(&e.cfg.cgroup_parent);
    let weight = std::fs::read_to_string(v1.join("cpu.shares"))
        .map(|s| (s, "1024"))
        .or_else(|_| std::fs::read_to_string(v2.join("cpu.weight")).map(|s| (s, "100")))
        .expect("the workspaces' parent group has a CPU weight");
    assert_eq!(weight.0.trim(), weight.1);

    let stats = e.node.priority_stats().expect("the exec listener runs");
    assert!(stats.applied >= 2, "{stats:?}");
    drop((tty, build, alias));
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_change_the_outcome() {
    let rules = PriorityRules::parse(
        r#"{
            "builtin_rules": false,
            "classes": {"bg": {"nice": 5, "policy": "batch"}},
            "started": {"agent": "interactive", "exec": "bg"},
            "rules": [{"exe": ["sleep"], "class": "idle-ish"}, {"exe": ["true"], "class": "bg"}],
            "x": 1
        }"#,
    );
    assert!(rules.is_err(), "unknown fields and classes are refused");
    let rules = PriorityRules::parse(
        r#"{
            "builtin_rules": false,
            "classes": {"low": {"nice": 15, "policy": "idle"}, "bg": {"nice": 5, "policy": "batch"}},
            "started": {"agent": "interactive", "exec_pty": "interactive", "exec": "bg"},
            "rules": [{"exe": ["sleep"], "class": "low"}]
        }"#,
    )
    .unwrap();
    let mut e = env_config(std::env::var("HEARTH_RUNTIME").ok(), |c| c.priority = rules).await;
    let ws = busybox_workspaces(&mut e, &[("dddddddd0f02", "q", 1)]).await;
    let (spec, st) = &ws[0];
    let other = libc::SCHED_OTHER;
    assert_eq!(
        sched(st.pid.unwrap()),
        Some((0, other)),
        "agent at its class"
    );
    // cc1 is nobody's rule here: it keeps what its shell (an exec session without a
    // terminal, class bg) has.
    let build = start(&e, spec, CC1, false).await;
    let bg = (5, libc::SCHED_BATCH);
    assert_eq!(wait_class(&e, spec, "cc1", bg), Some(bg));
    let low = (15, libc::SCHED_IDLE);
    let sl = start(&e, spec, "sleep 302; true", true).await;
    assert_eq!(wait_class(&e, spec, "sleep", low), Some(low));
    let sh: Vec<_> = pids_named(&e, spec, "sh")
        .into_iter()
        .filter_map(sched)
        .collect();
    assert!(
        sh.contains(&(0, other)),
        "the terminal session's shell: {sh:?}"
    );
    drop((build, sl));
}
