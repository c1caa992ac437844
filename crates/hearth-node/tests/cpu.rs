//! The CPU controller on real workspaces, asserted on the cgroup files from the host:
//! a spinning workspace is demoted (cpu.idle) within a bounded number of ticks and
//! promoted after it goes quiet, a `--cpus 0.5` one gets quota 50000/100000, a memory
//! bomb or a fork bomb at its limit is held to a tenth of a core, `off` leaves the knobs
//! alone, and a stopped workspace is forgotten.

mod common;

use std::path::PathBuf;

use common::{busybox_workspaces, env_config, run};
use hearth_node::{CpuClass, CpuControl, LocalNode, NodeApi, WorkspaceSpec};

/// Ticks to wait at most for a class change: the hearth budget drains in ~35 ticks on an
/// idle 2-core host; a shared test machine gives the spinner less CPU, so allow plenty.
const MAX_TICKS: u64 = 1200;

fn cpu_dir(e: &common::Env, spec: &WorkspaceSpec) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup/cpu")
        .join(&e.cfg.cgroup_parent)
        .join(spec.id.as_str())
}

fn read(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_owned()
}

/// Starts `n` busy loops in the workspace (their pids in /tmp/spin).
async fn spin(node: &LocalNode, spec: &WorkspaceSpec, n: usize) {
    let cmd = "(while :; do :; done) >/dev/null 2>&1 & echo $! >> /tmp/spin; ".repeat(n);
    let (code, _, err) = run(node, spec, &cmd).await;
    assert_eq!(code, 0, "{err}");
}

async fn unspin(node: &LocalNode, spec: &WorkspaceSpec) {
    let (code, _, err) = run(node, spec, "kill $(cat /tmp/spin) && rm /tmp/spin").await;
    assert_eq!(code, 0, "{err}");
}

/// Waits until `done` holds, at most `MAX_TICKS` controller ticks; returns the ticks taken.
async fn within_ticks(node: &LocalNode, what: &str, mut done: impl FnMut() -> bool) -> u64 {
    let start = node.cpu_stats().expect("controller runs").ticks;
    loop {
        if done() {
            return node.cpu_stats().unwrap().ticks - start;
        }
        let now = node.cpu_stats().unwrap().ticks;
        assert!(
            now - start < MAX_TICKS,
            "{what}: not within {MAX_TICKS} ticks"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_spinner_is_demoted_then_promoted_and_its_cpus_hold_as_quota() {
    let mut e = env_config(std::env::var("HEARTH_RUNTIME").ok(), |_| {}).await;
    let ws = busybox_workspaces(&mut e, &[("c9a000000001", "spinner", 61)]).await;
    let spec = ws[0].0.clone();
    let dir = cpu_dir(&e, &spec);
    let node = e.node.clone();
    assert_eq!(read(&dir, "cpu.idle"), "0");
    let view = node.cpu_views();
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].1.class, CpuClass::Interactive);

    spin(&node, &spec, 2).await;
    let n = within_ticks(&node, "demotion", || read(&dir, "cpu.idle") == "1").await;
    eprintln!("demoted after {n} ticks");
    assert_eq!(read(&dir, "cpu.cfs_quota_us"), "-1", "no --cpus, no quota");
    let i = node.inspect(&spec).await.unwrap();
    assert_eq!(i.cpu.as_ref().map(|c| c.class), Some(CpuClass::Batch));

    unspin(&node, &spec).await;
    let n = within_ticks(&node, "promotion", || read(&dir, "cpu.idle") == "0").await;
    eprintln!("promoted after {n} ticks");
    assert_eq!(read(&dir, "cpu.shares"), "1024", "the weight is back");

    // A class limit: 0.5 cores holds once demoted.
    let mut limited = spec.clone();
    limited.limits.cpus_milli = 500;
    node.set_limits(&limited).await.unwrap();
    spin(&node, &spec, 2).await;
    within_ticks(&node, "quota", || read(&dir, "cpu.cfs_quota_us") == "50000").await;
    assert_eq!(read(&dir, "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&dir, "cpu.cfs_burst_us"), "50000");

    // Stopped: forgotten.
    node.stop(&spec).await.unwrap();
    assert!(node.cpu_views().is_empty());
    assert_eq!(node.cpu_stats().unwrap().workspaces, 0);
}

/// A memory bomb at its limit (OOM-killed and restarted) is held to a tenth of a core:
/// the kernel-log watcher tells the controller of each kill. Released when the kills stop.
#[tokio::test]
async fn oom_kills_in_a_row_hold_the_workspace_to_a_tenth_of_a_core() {
    let mut e = env_config(std::env::var("HEARTH_RUNTIME").ok(), |_| {}).await;
    let ws = busybox_workspaces(&mut e, &[("c9a000000003", "thrasher", 63)]).await;
    let mut spec = ws[0].0.clone();
    spec.limits.memory_bytes = 64 << 20;
    let dir = cpu_dir(&e, &spec);
    let node = e.node.clone();
    node.set_limits(&spec).await.unwrap();
    assert_eq!(read(&dir, "cpu.cfs_quota_us"), "-1");
    let (code, _, err) = run(
        &node,
        &spec,
        "(while :; do /.hearth/agent membomb --mb 128; done) >/dev/null 2>&1 & echo $! > /tmp/bomb",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let n = within_ticks(&node, "held", || {
        read(&dir, "cpu.cfs_quota_us") == "10000" && read(&dir, "cpu.idle") == "1"
    })
    .await;
    eprintln!("held after {n} ticks");
    let view = node.inspect(&spec).await.unwrap().cpu.unwrap();
    assert_eq!(
        (view.class, view.quota_millicores),
        (CpuClass::Batch, Some(100))
    );
    assert!(node.inspect(&spec).await.unwrap().oom_kills.len() >= 2);

    let (code, _, err) = run(&node, &spec, "kill $(cat /tmp/bomb)").await;
    assert_eq!(code, 0, "{err}");
    let n = within_ticks(&node, "released", || read(&dir, "cpu.cfs_quota_us") == "-1").await;
    eprintln!("released after {n} ticks");
    assert!(
        n >= 50,
        "held for THRASH_HOLD after the last kill: {n} ticks"
    );
}

/// A fork bomb at its pids limit is demoted (it burns CPU) and then held to a tenth of a
/// core, since forks keep being refused.
#[tokio::test]
async fn a_fork_bomb_at_its_pids_limit_is_held_to_a_tenth_of_a_core() {
    let mut e = env_config(std::env::var("HEARTH_RUNTIME").ok(), |_| {}).await;
    let ws = busybox_workspaces(&mut e, &[("c9a000000004", "forker", 64)]).await;
    let mut spec = ws[0].0.clone();
    spec.limits.pids = 128;
    let dir = cpu_dir(&e, &spec);
    let node = e.node.clone();
    node.set_limits(&spec).await.unwrap();
    let (code, _, err) = run(
        &node,
        &spec,
        // A bomb whose every task failed to fork has died out (ash exits on a failed
        // fork): the outer loop starts it again.
        "(while :; do (b() { while :; do b & done; }; b); done) >/dev/null 2>&1 &",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let n = within_ticks(&node, "held", || read(&dir, "cpu.cfs_quota_us") == "10000").await;
    eprintln!("held after {n} ticks");
    assert_eq!(read(&dir, "cpu.idle"), "1");
    // Stopped (the only sure end of a fork bomb): forgotten.
    node.stop(&spec).await.unwrap();
    assert!(node.cpu_views().is_empty());
}

#[tokio::test]
async fn off_leaves_the_knobs_alone() {
    let mut e = env_config(std::env::var("HEARTH_RUNTIME").ok(), |c| {
        c.cpu_control = CpuControl::Off
    })
    .await;
    let ws = busybox_workspaces(&mut e, &[("c9a000000002", "unmanaged", 62)]).await;
    let spec = ws[0].0.clone();
    let dir = cpu_dir(&e, &spec);
    let node = e.node.clone();
    assert!(node.cpu_stats().is_none(), "no loop runs");
    spin(&node, &spec, 2).await;
    // Longer than the hearth policy needs to demote a spinner on this host.
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    assert_eq!(read(&dir, "cpu.idle"), "0");
    assert_eq!(read(&dir, "cpu.cfs_quota_us"), "-1");
    assert_eq!(read(&dir, "cpu.shares"), "1024");
    assert!(node.cpu_views().is_empty());
    assert!(node.inspect(&spec).await.unwrap().cpu.is_none());
    unspin(&node, &spec).await;
}
