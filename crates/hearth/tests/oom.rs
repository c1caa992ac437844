//! Memory at the limit, with a real server and a busybox workspace: the reclaim threshold
//! sits under the hard limit, a memory bomb is OOM-killed and the user is told which
//! process, when and at what limit (API, `hearth inspect`, `hearth logs`), while the
//! workspace's agent lives on.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(60);
const LIMIT: u64 = 64 << 20;

fn inspect(s: &TestServer, name: &str) -> Value {
    serde_json::from_str(&s.ok(&["inspect", name, "--json"])).unwrap()
}

/// Whether this process (root, like the server it started) has CAP_SYS_RESOURCE, which
/// lowering an OOM score needs.
fn has_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap();
    const CAP_SYS_RESOURCE: u32 = 24;
    eff & (1 << CAP_SYS_RESOURCE) != 0
}

#[test]
fn an_oom_kill_is_reported_and_the_workspace_lives_on() {
    let s = TestServer::start();
    s.load_busybox();
    let repo = common::git_repo(s.data_dir(), "bomb");
    s.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--memory",
        "64M",
    ]);
    let before = inspect(&s, "bomb");
    let agent = before["pid"].as_u64().unwrap();

    // The reclaim threshold is 90% of the limit (v1 soft limit here, memory.high on v2).
    let memcg = before["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| std::path::PathBuf::from(c.as_str().unwrap()))
        .find(|c| c.join("memory.soft_limit_in_bytes").exists() || c.join("memory.high").exists())
        .expect("a memory cgroup");
    let high = ["memory.soft_limit_in_bytes", "memory.high"]
        .iter()
        .find_map(|f| std::fs::read_to_string(memcg.join(f)).ok())
        .unwrap();
    assert_eq!(high.trim(), "60395520", "{}", memcg.display());
    assert_eq!(before["usage"]["memory_high_bytes"], 60395520);

    // The agent is off the OOM killer's list when the node may lower scores (it needs
    // CAP_SYS_RESOURCE; without it the node says so), and what it runs is back at 0.
    let agent_adj = std::fs::read_to_string(format!("/proc/{agent}/oom_score_adj")).unwrap();
    if has_sys_resource() {
        assert_eq!(agent_adj.trim(), "-1000");
    } else {
        assert_eq!(agent_adj.trim(), "0");
        assert!(
            s.server_log()
                .contains("cannot keep the OOM killer off workspace agents"),
            "{}",
            s.server_log()
        );
    }
    assert_eq!(
        s.exec("bomb", &["cat", "/proc/self/oom_score_adj"]).trim(),
        "0"
    );

    // tail keeps every byte of a file without newlines; /dev/zero never ends.
    let out = s.hearth(&["exec", "bomb", "--", "tail", "/dev/zero"]);
    assert_eq!(
        out.status.code(),
        Some(128 + 9),
        "the bomb should die of SIGKILL: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The kernel log is read as it comes; give the node a moment.
    let deadline = Instant::now() + BOUND;
    let after = loop {
        let i = inspect(&s, "bomb");
        if !i["oom_kills"].as_array().unwrap().is_empty() {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no OOM kill reported after {BOUND:?}: {i}\nserver log:\n{}",
            s.server_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let kills = after["oom_kills"].as_array().unwrap();
    let k = kills.last().unwrap();
    assert_eq!(k["process"], "tail", "{k}");
    assert_eq!(k["limit_bytes"], LIMIT, "{k}");
    assert!(k["host_pid"].as_u64().unwrap() > 1, "{k}");
    assert_ne!(
        k["host_pid"].as_u64(),
        Some(agent),
        "the agent was the victim: {k}"
    );
    assert!(
        k["at"].as_str().unwrap().starts_with("20"),
        "an RFC 3339 time: {k}"
    );
    assert!(after["usage"]["oom_kill_count"].as_u64().unwrap() >= 1);

    let text = s.ok(&["inspect", "bomb"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("killed (oom):"))
        .unwrap_or_else(|| panic!("no oom line in:\n{text}"));
    assert!(
        line.contains(" tail (") && line.contains("limit 64.0 MiB"),
        "{line}"
    );
    assert!(text.contains("reclaim above 57.6 MiB"), "{text}");

    let logs = s.ok(&["logs", "bomb"]);
    assert!(
        logs.lines()
            .any(|l| l.contains("out of memory: killed tail")
                && l.contains("memory limit of 64 MiB")),
        "{logs}"
    );

    // Same agent, still answering.
    assert_eq!(after["pid"].as_u64(), Some(agent));
    assert_eq!(after["workspace"]["state"], "running");
    assert_eq!(s.exec("bomb", &["echo", "alive"]).trim(), "alive");
}
