//! `hearth bench`: workspace lifecycle latency on this host, beside the floor (the OCI
//! runtime alone running `true` in the same root filesystem) and podman when installed.
//!
//! It drives the node directly, in-process, with its own data dir, bridge and cgroup
//! parent, so it measures the platform's work and never touches a running server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hearth_node::{ExecRequest, Limits, LocalNode, NodeApi, NodeConfig, WorkspaceSpec};
use hearth_proto::Event;

mod access;
mod api;
mod build;
mod cpu;
mod moves;
mod prebuild;
mod scale;
mod scheduler;
pub use access::{run as run_access, AccessArgs};
pub use api::{run as run_api, ApiArgs};
pub use build::{run as run_build, BuildArgs};
pub use cpu::{run as run_cpu, CpuArgs, Mode as CpuMode, Scenario as CpuScenario};
pub use moves::{run as run_move, MoveArgs};
pub use prebuild::{run as run_prebuild, PrebuildArgs};
pub use scale::{run as run_scale, ScaleArgs};
pub use scheduler::run as run_scheduler;

pub struct BenchArgs {
    pub runs: usize,
    /// Image archive or OCI layout to run (what `hearth image load` takes).
    pub image: PathBuf,
    pub agent: PathBuf,
    pub runtime: Option<String>,
    pub podman: bool,
}

struct Series {
    name: &'static str,
    target: Option<f64>,
    samples: Vec<Duration>,
}

impl Series {
    fn new(name: &'static str, target: Option<f64>) -> Self {
        Series {
            name,
            target,
            samples: Vec::new(),
        }
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v: Vec<f64> = self.samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        // Nearest rank.
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1]
    }
}

/// Loads the bench image into `node`.
async fn load_image(node: &LocalNode, path: &Path) -> Result<hearth_node::ImageSummary> {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    node.load_image(path.to_path_buf(), None, tx)
        .await
        .with_context(|| format!("cannot load bench image {}", path.display()))
}

fn git_repo(dir: &Path) -> Result<PathBuf> {
    let repo = dir.join("bench-repo");
    std::fs::create_dir_all(repo.join("src"))?;
    for i in 0..20 {
        std::fs::write(
            repo.join(format!("src/file{i}.rs")),
            format!("fn f{i}() {{}}\n").repeat(50),
        )?;
    }
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &["commit", "-qm", "bench"],
    ] {
        git(&repo, args)?;
    }
    Ok(repo)
}

/// `git ARGS` in `repo`, with a committer.
fn git(repo: &Path, args: &[&str]) -> Result<()> {
    let st = Command::new("git")
        .args(["-c", "user.email=bench@hearth", "-c", "user.name=bench"])
        .args(args)
        .current_dir(repo)
        .status()
        .context("running git")?;
    if !st.success() {
        bail!("git {args:?} failed");
    }
    Ok(())
}

async fn exec_true(node: &LocalNode, spec: &WorkspaceSpec) -> Result<()> {
    let s = node
        .exec(
            spec,
            ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            },
        )
        .await?;
    let (mut w, mut r) = s.split();
    w.close_stdin().await?;
    loop {
        if let Event::Exit(c) = r.next_event().await? {
            if c != 0 {
                bail!("true exited {c}");
            }
            return Ok(());
        }
    }
}

/// A bench's own node settings: a temp data dir in /var/tmp and a bridge, subnet and
/// cgroup parent tagged at random, so a bench never touches a running server or another
/// bench; everything else is the node's default.
pub(crate) struct Sandbox {
    /// Holds the data dir; removed when dropped (after the node's teardown).
    pub dir: tempfile::TempDir,
    pub cfg: NodeConfig,
}

impl Sandbox {
    /// `name` prefixes the temp dir and cgroup parent, `bridge` the bridge name (at most
    /// 10 bytes, the tag adds up to 4); `subnet` makes the subnet from the random tag.
    pub(crate) fn new(
        name: &str,
        bridge: &str,
        subnet: impl FnOnce(u16) -> String,
        agent: &Path,
        runtime: Option<String>,
    ) -> Result<Sandbox> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in("/var/tmp")
            .context("temp dir in /var/tmp")?;
        let tag = rand::random::<u16>();
        let cfg = NodeConfig {
            data_dir: dir.path().join("data"),
            bridge: format!("{bridge}{}", tag % 10000),
            subnet: subnet(tag),
            cgroup_parent: format!("{name}-{tag}"),
            runtime,
            agent_binary: agent.to_path_buf(),
            snapshots: Default::default(),
            egress: Default::default(),
            disk_reserve: None,
            console: Default::default(),
            priority: Default::default(),
            cpu_control: Default::default(),
            cpu_interval: hearth_node::DEFAULT_CPU_INTERVAL,
        };
        Ok(Sandbox { dir, cfg })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Stops and removes everything the bench's node made; a failure is printed, not
/// returned, so it never hides the bench's own result.
pub(crate) async fn teardown(node: &LocalNode, what: &str) {
    if let Err(e) = node.teardown().await {
        eprintln!("{what} teardown: {e}");
    }
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let sb = Sandbox::new(
        "hearth-bench",
        "hbench",
        |tag| format!("10.77.{}.0/24", tag % 250),
        &args.agent,
        args.runtime.clone(),
    )?;
    let node = LocalNode::open(sb.cfg.clone()).await?;
    let result = bench(&node, sb.path(), &args).await;
    teardown(&node, "bench").await;
    result
}

async fn bench(node: &LocalNode, tmp: &Path, args: &BenchArgs) -> Result<()> {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let img = load_image(node, &args.image).await?;
    let repo = git_repo(tmp)?;

    let mut create = Series::new("create (cached image, small repo)", Some(150.0));
    let mut first = Series::new("first start (after create)", None);
    let mut start = Series::new("start (stopped -> agent ready)", Some(50.0));
    let mut exec = Series::new("exec round trip (`true`)", Some(10.0));
    let mut stop = Series::new("stop", None);
    // Floor: the OCI runtime alone, `true` in the same root filesystem (no user
    // namespace, network, cgroups or agent).
    let mut floor = Series::new("floor: oci runtime run `true`", None);
    let mut phases: Phases = Vec::new();
    let mut first_phases: Phases = Vec::new();
    eprintln!("running {} create/start/exec/stop cycles...", args.runs);
    for i in 0..args.runs {
        let spec = WorkspaceSpec {
            id: hearth_node::WorkspaceId::new(format!("{:012x}", 0xbe_0000_0000u64 + i as u64))
                .expect("hex id"),
            name: format!("bench{i}"),
            image: img.id.clone(),
            source: repo.display().to_string(),
            slot: i as u32,
            limits: Limits::default(),
            egress: Default::default(),
            generation: 0,
        };
        let r = async {
            let t = Instant::now();
            node.create(&spec, tx.clone()).await?;
            create.samples.push(t.elapsed());
            let t = Instant::now();
            node.start(&spec).await?;
            first.samples.push(t.elapsed());
            add_phases(&mut first_phases, node.start_phases(&spec.id));
            let t = Instant::now();
            node.stop(&spec).await?;
            stop.samples.push(t.elapsed());
            // A floor run beside each start, so both see the same load on the host.
            floor
                .samples
                .extend(node.runtime_floor(&img.id, 1).await?.1);
            let t = Instant::now();
            node.start(&spec).await?;
            start.samples.push(t.elapsed());
            add_phases(&mut phases, node.start_phases(&spec.id));
            for _ in 0..5 {
                let t = Instant::now();
                exec_true(node, &spec).await?;
                exec.samples.push(t.elapsed());
            }
            anyhow::Ok(())
        }
        .await;
        let rm = node.remove(&spec).await;
        r?;
        rm?;
    }

    let (pause, snap) = snapshot_pauses(node, &img.id, &repo, args.runs).await?;

    // More floor runs (they are cheap), and the runtime's path.
    let (runtime, samples) = node.runtime_floor(&img.id, args.runs.max(20)).await?;
    floor.samples.extend(samples);

    let mut podman = Series::new("podman --runtime runc run --rm", None);
    if args.podman && Command::new("podman").arg("--version").output().is_ok() {
        let tar = tmp.join("bb.tar");
        let copied = Command::new("skopeo")
            .arg("copy")
            .arg(skopeo_source(&args.image))
            .arg(format!(
                "oci-archive:{}:hearth-bench/busybox:latest",
                tar.display()
            ))
            .output();
        let loaded = match copied {
            Ok(o) if o.status.success() => {
                match Command::new("podman")
                    .args(["load", "-q", "-i"])
                    .arg(&tar)
                    .output()
                {
                    Ok(o) if o.status.success() => true,
                    Ok(o) => {
                        eprintln!(
                            "podman load failed: {}",
                            String::from_utf8_lossy(&o.stderr).trim()
                        );
                        false
                    }
                    Err(e) => {
                        eprintln!("podman not available: {e}");
                        false
                    }
                }
            }
            Ok(o) => {
                eprintln!(
                    "skopeo copy failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                false
            }
            Err(e) => {
                eprintln!("skopeo not available: {e}");
                false
            }
        };
        if loaded {
            for _ in 0..args.runs.min(20) {
                let t = Instant::now();
                let o = Command::new("podman")
                    .args([
                        "--runtime",
                        "runc",
                        "run",
                        "--rm",
                        "--ulimit",
                        "nofile=1024:1024",
                        "--ulimit",
                        "nproc=1024:1024",
                        "hearth-bench/busybox:latest",
                        "/bin/true",
                    ])
                    .output()?;
                if !o.status.success() {
                    eprintln!(
                        "podman run failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                    break;
                }
                podman.samples.push(t.elapsed());
            }
            let _ = Command::new("podman")
                .args(["rmi", "-f", "hearth-bench/busybox:latest"])
                .output();
        } else {
            eprintln!("podman comparison skipped");
        }
    }

    println!();
    println!(
        "runtime: {}   runs: {}   (times in ms)",
        runtime.display(),
        args.runs
    );
    println!(
        "{:<36} {:>6} {:>8} {:>8} {:>8}",
        "operation", "n", "p50", "p99", "target"
    );
    for s in [
        &create, &first, &start, &exec, &stop, &pause, &snap, &floor, &podman,
    ] {
        if s.samples.is_empty() {
            continue;
        }
        let target = s.target.map(|t| format!("<= {t:.0}")).unwrap_or_default();
        println!(
            "{:<36} {:>6} {:>8.1} {:>8.1} {:>8}",
            s.name,
            s.samples.len(),
            s.pct(50.0),
            s.pct(99.0),
            target
        );
    }
    println!();
    print_start_ratios(&floor, &start, &first);
    println!();
    println!("start phases, ms (p50 / p99):");
    println!("  {:<24} {:>17} {:>17}", "", "first start", "start");
    let cell = |s: Option<&(&'static str, Vec<Duration>)>| {
        s.map(|(name, samples)| {
            let s = Series {
                name,
                target: None,
                samples: samples.clone(),
            };
            format!("{:.1} / {:.1}", s.pct(50.0), s.pct(99.0))
        })
        .unwrap_or_default()
    };
    for (i, (name, _)) in phases.iter().enumerate() {
        println!(
            "  {:<24} {:>17} {:>17}",
            name,
            cell(first_phases.iter().find(|(n, _)| n == name)),
            cell(phases.get(i))
        );
    }
    Ok(())
}

/// Each start phase's samples, in the order a start passes them.
type Phases = Vec<(&'static str, Vec<Duration>)>;

fn add_phases(into: &mut Phases, start: Vec<(&'static str, Duration)>) {
    for (name, d) in start {
        match into.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(d),
            None => into.push((name, vec![d])),
        }
    }
}

/// Starts against the floor measured in the same run (p50 over p50): the machine's load
/// moves both, so the ratio is what compares across runs and hosts.
fn print_start_ratios(floor: &Series, start: &Series, first: &Series) {
    let base = floor.pct(50.0);
    println!("start against the floor (p50 / floor p50, this run):");
    println!(
        "  {:<34} {:>8} {:>8} {:>8}",
        "", "p50 ms", "ratio", "target"
    );
    println!("  {:<34} {:>8.1} {:>8} {:>8}", floor.name, base, "1.0x", "");
    for (s, target) in [(start, 2.0), (first, 3.0)] {
        let ratio = s.pct(50.0) / base;
        println!(
            "  {:<34} {:>8.1} {:>7.1}x {:>8} {}",
            s.name,
            s.pct(50.0),
            ratio,
            format!("<= {target:.0}x"),
            if ratio <= target { "ok" } else { "over" }
        );
    }
}

/// How skopeo names `path`: an OCI layout directory, or a docker or OCI archive.
fn skopeo_source(path: &Path) -> String {
    if path.is_dir() {
        return format!("oci:{}", path.display());
    }
    let docker = std::fs::File::open(path)
        .ok()
        .and_then(|f| {
            tar::Archive::new(f).entries().ok().map(|mut es| {
                es.any(|e| {
                    e.ok()
                        .and_then(|e| e.path().ok().map(|p| p.as_os_str() == "manifest.json"))
                        .unwrap_or(false)
                })
            })
        })
        .unwrap_or(false);
    let kind = if docker {
        "docker-archive"
    } else {
        "oci-archive"
    };
    format!("{kind}:{}", path.display())
}

/// Snapshots of a running workspace while it writes: how long each froze it (the
/// workspace-visible cost) and how long the whole snapshot took.
async fn snapshot_pauses(
    node: &LocalNode,
    image: &str,
    repo: &Path,
    runs: usize,
) -> Result<(Series, Series)> {
    let mut pause = Series::new("snapshot pause (running, writing)", Some(5.0));
    let mut total = Series::new("snapshot total (incremental)", None);
    let spec = WorkspaceSpec {
        id: hearth_node::WorkspaceId::new("be00000000ff").expect("hex id"),
        name: "benchsnap".into(),
        image: image.into(),
        source: repo.display().to_string(),
        // The cycles above removed their workspaces: their slots are free.
        slot: 0,
        limits: Limits::default(),
        egress: Default::default(),
        generation: 0,
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    eprintln!("taking {runs} snapshots of a running workspace while it writes...");
    let r = async {
        node.create(&spec, tx).await?;
        node.start(&spec).await?;
        // 64 MiB of data, then a writer that keeps changing files during the snapshots.
        let writer = {
            let (node, spec) = (node.clone(), spec.clone());
            tokio::spawn(async move {
                let req = ExecRequest {
                    argv: vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        "mkdir -p /root/w && dd if=/dev/urandom of=/root/w/base bs=1M count=64 \
                         2>/dev/null && touch /root/w/ready && i=0 && while :; do \
                         dd if=/dev/urandom of=/root/w/f$((i % 50)) bs=64k count=4 2>/dev/null; \
                         i=$((i+1)); done"
                            .into(),
                    ],
                    ..Default::default()
                };
                let s = node.exec(&spec, req).await?;
                let (_w, mut r) = s.split();
                while !matches!(r.next_event().await?, Event::Exit(_)) {}
                anyhow::Ok(())
            })
        };
        let ready = ExecRequest {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "test -e /root/w/ready".into(),
            ],
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = node.exec(&spec, ready.clone()).await?;
            let (_w, mut r) = s.split();
            let code = loop {
                if let Event::Exit(c) = r.next_event().await? {
                    break c;
                }
            };
            if code == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("snapshot bench: writer did not start");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for _ in 0..runs {
            let t = Instant::now();
            node.snapshot(&spec).await?;
            total.samples.push(t.elapsed());
            pause.samples.push(
                node.last_snapshot_pause(&spec.id)
                    .context("no pause recorded")?,
            );
        }
        writer.abort();
        anyhow::Ok(())
    }
    .await;
    let rm = node.remove(&spec).await;
    r?;
    rm?;
    Ok((pause, total))
}
