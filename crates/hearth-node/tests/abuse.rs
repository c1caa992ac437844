//! Abuse containment: root in one workspace runs a CPU hog, a memory bomb, an fd bomb, a
//! disk filler and a fork bomb. Each must stay inside that workspace's limits while a
//! neighbour keeps answering exec; the neighbour's exec latency before and during each
//! abuse is printed (timing is reported, not asserted: it belongs to benchmarks).

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::{debian_image, env, git_repo, run};
use hearth_node::{Limits, LocalNode, NodeApi, WorkspaceSpec};

/// Exec round trips of `true` in `ws`; each must finish, and within a bound far above
/// anything normal, so a starved neighbour fails the test instead of hanging it.
async fn exec_latency(node: &LocalNode, ws: &WorkspaceSpec, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (code, _, err) = tokio::time::timeout(Duration::from_secs(20), run(node, ws, "true"))
            .await
            .expect("neighbour exec did not answer within 20 s");
        assert_eq!(code, 0, "neighbour exec failed: {err}");
        v.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    v.sort();
    v
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

struct Report(Vec<(String, f64, f64)>);

impl Report {
    fn add(&mut self, what: &str, v: &[Duration]) {
        self.0.push((what.into(), pct(v, 0.5), pct(v, 0.99)));
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        println!("\nneighbour exec latency (ms)          p50      p99");
        for (w, p50, p99) in &self.0 {
            println!("{w:<34} {p50:>8.1} {p99:>8.1}");
        }
    }
}

/// Runs `cmd` in the abuser while measuring the neighbour; returns the abuser's result.
async fn during(
    node: &LocalNode,
    abuser: &WorkspaceSpec,
    neighbour: &WorkspaceSpec,
    cmd: &str,
    report: &mut Report,
    label: &str,
) -> (i32, String, String) {
    let task = {
        let (node, abuser, cmd) = (node.clone(), abuser.clone(), cmd.to_string());
        tokio::spawn(async move { run(&node, &abuser, &cmd).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lat = exec_latency(node, neighbour, 20).await;
    report.add(label, &lat);
    // A hang guard, not a timing claim: on a loaded 2-core machine the fd bomb alone takes
    // minutes to open the ~4M files its 3 GiB hold.
    tokio::time::timeout(Duration::from_secs(600), task)
        .await
        .expect("abuse did not end")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abuse_stays_inside_its_workspace() {
    let mut e = env().await;
    let image = debian_image(&e).await;
    let repo = git_repo(e.dir.path());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = |id: &str, name: &str, slot: u32, limits: Limits| WorkspaceSpec {
        id: hearth_node::WorkspaceId::new(id).unwrap(),
        name: name.into(),
        image: image.clone(),
        source: repo.display().to_string(),
        slot,
        limits,
        egress: Default::default(),
        generation: 0,
    };
    let abuser = spec(
        "ab1aaaaaaaaa",
        "abuser",
        31,
        Limits {
            memory_bytes: 3 << 30,
            pids: 256,
            disk_bytes: 512 << 20,
            ..Limits::default()
        },
    );
    let neighbour = spec("ab2bbbbbbbbb", "neighbour", 32, Limits::default());
    e.specs = vec![abuser.clone(), neighbour.clone()];
    for s in [&abuser, &neighbour] {
        e.node.create(s, tx.clone()).await.unwrap();
        e.node.start(s).await.unwrap();
    }
    let node = e.node.clone();
    let mut report = Report(Vec::new());
    report.add("before", &exec_latency(&node, &neighbour, 30).await);

    // CPU hog: more spinning processes than the host has cores.
    let (code, _, err) = during(
        &node,
        &abuser,
        &neighbour,
        "for i in 1 2 3 4 5 6 7 8; do timeout 6 sh -c 'while :; do :; done' & done; wait; true",
        &mut report,
        "cpu hog (8 spinners)",
    )
    .await;
    assert_eq!(code, 0, "{err}");

    // Memory bomb: the OOM killer ends it inside the abuser's cgroup, nothing else.
    let agent_pid = node.status(&abuser).await.unwrap().pid;
    let (code, out, err) = during(
        &node,
        &abuser,
        &neighbour,
        "for i in 1 2 3; do perl -e '$x = q(x) x (3 << 30); print length $x' & done; wait; \
         grep -w oom_kill /proc/self/cgroup >/dev/null; true",
        &mut report,
        "memory bomb (3 x 3 GiB, limit 3)",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("3221225472"),
        "a 3 GiB string fit in 1 GiB: {out}"
    );
    let d = node.inspect(&abuser).await.unwrap();
    assert_eq!(
        node.status(&abuser).await.unwrap().pid,
        agent_pid,
        "PID 1 survived"
    );
    let oom_kills = d
        .cgroups
        .iter()
        .find_map(|c| std::fs::read_to_string(c.join("memory.oom_control")).ok())
        .or_else(|| {
            d.cgroups
                .iter()
                .find_map(|c| std::fs::read_to_string(c.join("memory.events")).ok())
        })
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill ").map(|n| n.trim().parse::<u64>()))
        })
        .and_then(Result::ok)
        .expect("oom_kill counter of the abuser's memory cgroup");
    assert!(oom_kills >= 1, "no OOM kill in the abuser's cgroup");
    println!("memory bomb: {oom_kills} OOM kills inside the abuser");

    // Open files: 130 processes raise their soft limit to the hard one and open files
    // until refused. Together they can want more than a host's default fs.file-max (one
    // table for everybody); the node lifts that, so only the abuser's own limits stop
    // them and the neighbour must still open files.
    let (code, _, err) = run(
        &node,
        &abuser,
        "cat > /root/fd.pl <<'EOF'\n\
         my @f; while (open my $h, '<', '/dev/null') { push @f, $h }\n\
         print scalar(@f), \" $!\\n\"; sleep 4;\n\
         EOF",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = during(
        &node,
        &abuser,
        &neighbour,
        "n=$(ulimit -Hn); for i in $(seq 130); do (ulimit -n $n && exec perl /root/fd.pl) & done; \
         wait; true",
        &mut report,
        "fd bomb (130 procs)",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let opened: u64 = out
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(opened > 0, "fd bomb did not run: {out} {err}");
    // Each opener stops at its own limits (EMFILE, or ENOMEM from the memory cgroup that is
    // charged for open files), never at the host's file table (ENFILE).
    let stops: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, why)| why))
        .collect();
    for why in &stops {
        assert!(
            ["Too many open files", "Cannot allocate memory"].contains(why),
            "an opener stopped with {why:?}, not at its own limits: {out}"
        );
    }
    println!(
        "fd bomb: the abuser held up to {opened} open files; fs.file-max now {}",
        std::fs::read_to_string("/proc/sys/fs/file-max")
            .unwrap()
            .trim()
    );
    let (code, _, err) = run(
        &node,
        &neighbour,
        "exec 3</dev/null && exec 4</etc/hostname && cat /etc/hostname >/dev/null",
    )
    .await;
    assert_eq!(
        code, 0,
        "neighbour cannot open files after the fd bomb: {err}"
    );
    assert!(
        std::fs::File::open("/etc/hostname").is_ok(),
        "host cannot open files"
    );

    // Disk filler: ENOSPC at the abuser's disk size; the host and neighbour keep space.
    let img = e
        .cfg
        .data_dir
        .join("workspaces")
        .join(&abuser.id)
        .join("disk.img");
    let (code, _, err) = during(
        &node,
        &abuser,
        &neighbour,
        "dd if=/dev/zero of=/root/fill bs=1M count=4096; rc=$?; sync; exit $rc",
        &mut report,
        "disk filler (4 GiB into 512 MiB)",
    )
    .await;
    assert_ne!(code, 0, "wrote 4 GiB into a 512 MiB disk");
    assert!(err.contains("No space left"), "{err}");
    let allocated = std::fs::metadata(&img).unwrap().blocks() * 512;
    assert!(
        allocated <= 512 << 20,
        "the abuser's disk takes {allocated} bytes on the host"
    );
    println!("disk filler: stopped at ENOSPC, image holds {allocated} bytes on the host");
    let (code, _, err) = run(
        &node,
        &neighbour,
        "dd if=/dev/zero of=/root/ok bs=1M count=64 2>&1 && sync",
    )
    .await;
    assert_eq!(code, 0, "neighbour cannot write: {err}");
    // Deleting frees the space again.
    let (code, _, err) = run(
        &node,
        &abuser,
        "rm /root/fill && sync && dd if=/dev/zero of=/root/again bs=1M count=64 2>&1",
    )
    .await;
    assert_eq!(code, 0, "abuser's disk did not recover: {err}");

    // Fork bomb: every process forks forever, so it stays at the pids limit instead of
    // dying out when forks fail. The limit holds it; stop ends it, start brings the
    // workspace back.
    let t = tokio::spawn({
        let (node, abuser) = (node.clone(), abuser.clone());
        async move { run(&node, &abuser, "b() { while :; do b & done; }; b").await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pids = 0;
    while pids <= 200 && Instant::now() < deadline {
        pids = node.inspect(&abuser).await.unwrap().usage.pids.unwrap();
        assert!(
            pids <= 256,
            "the abuser runs {pids} tasks past its limit of 256"
        );
    }
    assert!(pids > 200, "the fork bomb did not run ({pids} tasks)");
    let lat = exec_latency(&node, &neighbour, 20).await;
    report.add("fork bomb (pids 256)", &lat);
    let pids = node.inspect(&abuser).await.unwrap().usage.pids.unwrap();
    assert!(
        pids <= 256,
        "the abuser runs {pids} tasks past its limit of 256"
    );
    println!("fork bomb: {pids} tasks in the abuser (limit 256)");
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success(),
        "host cannot fork"
    );
    let t0 = Instant::now();
    node.stop(&abuser).await.unwrap();
    println!("fork bomb: stop took {:.1} s", t0.elapsed().as_secs_f64());
    t.abort();
    node.start(&abuser).await.unwrap();
    let (code, out, _) = run(&node, &abuser, "ls /root").await;
    assert_eq!(code, 0);
    assert!(out.contains("again"), "abuser's files after restart: {out}");
    report.add("after", &exec_latency(&node, &neighbour, 20).await);
}

/// Root inside floods PID 1's stdout (`dd` into `/proc/1/fd/1`, the attack that once grew
/// a host file by 300 MB): the console the node keeps stays at its cap, lives on the
/// workspace's own disk rather than the node's data dir, and still shows what comes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_flood_stays_at_its_cap() {
    const MAX: u64 = 1 << 20;
    let mut e = common::env_config(None, |c| {
        c.console = hearth_node::ConsoleLimits {
            max_bytes: MAX,
            files: 2,
        }
    })
    .await;
    let ws = common::busybox_workspaces(&mut e, &[("c0f1aaaaaaaa", "flood", 41)]).await;
    let spec = ws[0].0.clone();
    let dir = e.cfg.data_dir.join("workspaces").join(&spec.id);
    let (code, _, err) = run(
        &e.node,
        &spec,
        "dd if=/dev/zero of=/proc/1/fd/1 bs=1M count=64 && sleep 1 && \
         echo after-the-flood >/proc/1/fd/1 && sleep 1",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("64+0 records out"),
        "dd did not write it all: {err}"
    );
    let console = dir.join("disk/console");
    let kept = hearth_node::console_bytes(&console);
    assert!(
        kept > MAX && kept <= 2 * MAX,
        "console keeps {kept} bytes, want (1, 2] MiB"
    );
    assert!(
        !dir.join("console.log").exists(),
        "no console file on the node's data dir"
    );
    let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(
        dev(&console.join("console.log")),
        dev(&dir),
        "the console is on the workspace's disk"
    );
    let logs = e.node.logs(&spec).await.unwrap();
    assert!(
        logs.len() as u64 <= MAX * 2,
        "logs returned {} bytes",
        logs.len()
    );
    let text = String::from_utf8_lossy(&logs);
    assert!(
        text[text.len().saturating_sub(512)..].contains("\0after-the-flood\n"),
        "newest console line missing: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
}
