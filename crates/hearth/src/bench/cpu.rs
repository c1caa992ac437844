//! `hearth bench cpu`: how the node shares CPU between and inside workspaces, one node
//! per CPU policy, side by side in one table with the targets of issue 11.
//!
//! Every mode runs the same script on a fresh node of its own (own data dir, bridge,
//! cgroup parent) with two busybox workspaces A and B. The load and probe tools are hidden
//! `hearth-agent` subcommands (`/.hearth/agent` is in every workspace):
//!
//! - burst: A, idle for 5 s, runs `spin --threads 2`; CPU-ms by 100 and 500 ms of wall
//!   time, from the threads' own CPU clocks. Once on a quiet node, once after B has spun
//!   on both cores for 30 s.
//! - neighbour: `probe` in A (500 x {sleep 10 ms, 1 ms of CPU}; latency from the intended
//!   wake-up to done) with B quiet, then while B runs a 2-thread hog, a fork bomb (busybox
//!   sh, held at B's pids limit) and a memory bomb (two `membomb` loops past B's memory
//!   limit, OOM-killed and restarted). Each load runs [`Durations::lead`] before the
//!   probe starts. B is stopped and started between loads, so each starts from scratch.
//! - inside: the probe from an exec session with a PTY in A, quiet and while A runs a
//!   build-like load: two lanes starting a copy of the agent named `cc1` (classified
//!   as batch by the default priority rules) again and again for 200 ms of CPU each.
//! - fairness: A and B freshly started; A spins on 2 threads, B joins 5 s later; over
//!   the next 60 s, 1 s windows of both shares. Converged = from that window on, every
//!   window has both shares within 10 % of equal (0.45..0.55); Jain's index of the two
//!   totals over the 60 s.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hearth_node::{CpuControl, ExecRequest, Limits, LocalNode, NodeApi, WorkspaceSpec};
use hearth_proto::Event;

use super::Series;

/// Where the agent binary is inside every workspace.
const AGENT: &str = "/.hearth/agent";
/// Threads of the burst and the hogs (the machine the targets were set on has 2 cores).
const THREADS: usize = 2;
const PROBE_ITERATIONS: usize = 500;
/// How long A is idle before a burst.
const IDLE_BEFORE_BURST: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fixed weights, no control loop (what the node did before the controller).
    Off,
    /// A CFS quota per workspace, as Kubernetes limits do.
    Static,
    /// A 15 s loop with budgets counted from first seen, like Gitpod's ws-daemon.
    Gitpod,
    /// Hearth's controller.
    Hearth,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode> {
        Ok(match s {
            "off" => Mode::Off,
            "static" => Mode::Static,
            "gitpod" => Mode::Gitpod,
            "hearth" => Mode::Hearth,
            _ => bail!("unknown CPU mode {s:?}: use off, static, gitpod or hearth"),
        })
    }

    fn control(self) -> CpuControl {
        match self {
            Mode::Off => CpuControl::Off,
            Mode::Static => CpuControl::Static,
            Mode::Gitpod => CpuControl::Gitpod,
            Mode::Hearth => CpuControl::Hearth,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Static => "static",
            Mode::Gitpod => "gitpod",
            Mode::Hearth => "hearth",
        }
    }
}

/// The parts of the script; `--scenarios` runs a subset (all by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Burst from idle, alone and after B hogged.
    Burst,
    /// A's probe while B runs a 2-thread hog (with the quiet probe as its baseline).
    Hog,
    /// ... while B runs a fork bomb.
    ForkBomb,
    /// ... while B runs a memory bomb.
    MemBomb,
    /// The probe from a tty in A beside A's own build.
    Inside,
    /// Two hogs of equal class.
    Fairness,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Burst,
        Scenario::Hog,
        Scenario::ForkBomb,
        Scenario::MemBomb,
        Scenario::Inside,
        Scenario::Fairness,
    ];

    pub fn parse(s: &str) -> Result<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .with_context(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|c| c.name()).collect();
                format!("unknown CPU bench scenario {s:?}: use {}", names.join(", "))
            })
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Burst => "burst",
            Scenario::Hog => "hog",
            Scenario::ForkBomb => "forkbomb",
            Scenario::MemBomb => "membomb",
            Scenario::Inside => "inside",
            Scenario::Fairness => "fairness",
        }
    }
}

pub struct CpuArgs {
    pub image: PathBuf,
    pub agent: PathBuf,
    pub runtime: Option<String>,
    pub modes: Vec<Mode>,
    /// What to run (every scenario when empty).
    pub scenarios: Vec<Scenario>,
    /// Shorter loads and fairness run, for a smoke run.
    pub quick: bool,
    /// Also measure the controller's own cost with this many idle workspaces.
    pub loop_cost: Option<usize>,
}

/// How long the loads run; `--quick` shortens them all.
struct Durations {
    /// B's load runs this long before A's probe starts.
    lead: Duration,
    /// B spins this long before A's burst.
    hog_before_burst: Duration,
    /// The build-like load runs this long before the in-workspace probe starts.
    build_lead: Duration,
    /// B joins A's hog this much later.
    fair_lag: Duration,
    /// Fairness is measured over this long after B joins.
    fair_run: Duration,
}

impl Durations {
    fn new(quick: bool) -> Durations {
        let s = Duration::from_secs;
        if quick {
            Durations {
                lead: s(3),
                hog_before_burst: s(10),
                build_lead: s(2),
                fair_lag: s(2),
                fair_run: s(15),
            }
        } else {
            Durations {
                lead: s(10),
                hog_before_burst: s(30),
                build_lead: s(5),
                fair_lag: s(5),
                fair_run: s(60),
            }
        }
    }
}

/// What one mode measured; `None` for a scenario not run.
#[derive(Default)]
struct Outcome {
    burst_alone: Option<(f64, f64)>,
    burst_hogged: Option<(f64, f64)>,
    quiet: Option<Series>,
    hog: Option<Series>,
    fork: Option<Series>,
    mem: Option<Series>,
    quiet_tty: Option<Series>,
    build: Option<Series>,
    fairness: Option<Fairness>,
    load_before: String,
    load_after: String,
    /// The controller's CPU over the mode's run, % of one core; `None` without one.
    ctl_cost: Option<f64>,
}

/// Two hogs of equal class, B joining A late.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fairness {
    /// Seconds after B joined from which every 5 s average of the shares is within
    /// 0.45..0.55; `None`: not in the run.
    converged: Option<f64>,
    /// Jain's index of the two totals over the run.
    jain: f64,
}

pub async fn run(args: CpuArgs) -> Result<()> {
    if args.modes.is_empty() && args.loop_cost.is_none() {
        bail!("--modes wants at least one of off, static, gitpod, hearth (none: only --loop-cost)");
    }
    let d = Durations::new(args.quick);
    let mut results = Vec::new();
    for &mode in &args.modes {
        eprintln!("== mode {}", mode.name());
        results.push((mode, one_mode(mode, &args, &d).await?));
    }
    if !results.is_empty() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        print!("{}", table(args.quick, &d, cores, &results));
    }
    if let Some(n) = args.loop_cost {
        loop_cost(&args, n).await?;
    }
    Ok(())
}

async fn one_mode(mode: Mode, args: &CpuArgs, d: &Durations) -> Result<Outcome> {
    let sb = super::Sandbox::new(
        "hearth-bench-cpu",
        "hbcpu",
        |tag| format!("10.79.{}.0/24", tag % 250),
        &args.agent,
        args.runtime.clone(),
    )?;
    let mut cfg = sb.cfg.clone();
    cfg.cpu_control = mode.control();
    // Two sparse 1 GiB disks: the reserve (for nodes running real work) would only keep
    // a shared build machine's fuller disk from running a CPU bench.
    cfg.disk_reserve = Some(0);
    let node = LocalNode::open(cfg).await?;
    let res = scenarios(&node, sb.path(), args, d).await;
    super::teardown(&node, "cpu bench").await;
    res.with_context(|| format!("cpu bench, mode {}", mode.name()))
}

/// The 1, 5 and 15 min load averages as one cell (`0.52/0.30/0.21`): joined with spaces
/// they read as three columns of the table.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg_cell(&text)
}

fn loadavg_cell(proc_loadavg: &str) -> String {
    let v: Vec<&str> = proc_loadavg.split_whitespace().take(3).collect();
    if v.len() == 3 {
        v.join("/")
    } else {
        "?".into()
    }
}

async fn scenarios(node: &LocalNode, tmp: &Path, args: &CpuArgs, d: &Durations) -> Result<Outcome> {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let image = super::load_image(node, &args.image).await?.id;
    let repo = super::git_repo(tmp)?;
    let spec = |id: &str, name: &str, slot: u32, limits: Limits| WorkspaceSpec {
        id: hearth_node::WorkspaceId::new(id).expect("hex id"),
        name: name.into(),
        image: image.clone(),
        source: repo.display().to_string(),
        slot,
        limits,
        egress: Default::default(),
        generation: 0,
    };
    let small = Limits {
        disk_bytes: 1 << 30,
        ..Limits::default()
    };
    let a = spec("cb00000000aa", "a", 0, small);
    // B's bombs end at its limits: 1 GiB of memory, 1024 tasks.
    let b = spec(
        "cb00000000bb",
        "b",
        1,
        Limits {
            memory_bytes: 1 << 30,
            pids: 1024,
            ..small
        },
    );
    for s in [&a, &b] {
        node.create(s, tx.clone()).await?;
        node.start(s).await?;
    }
    let mut o = Outcome {
        load_before: loadavg(),
        ..Default::default()
    };
    let cost = ControllerCost::start(node);
    let runs = |c: Scenario| args.scenarios.is_empty() || args.scenarios.contains(&c);

    if runs(Scenario::Burst) {
        eprintln!("burst from idle, quiet node...");
        tokio::time::sleep(IDLE_BEFORE_BURST).await;
        o.burst_alone = Some(burst(node, &a).await?);
    }

    let spin_forever = format!("exec {AGENT} spin --threads {THREADS} --ms 0");
    let bombs = [
        (Scenario::Hog, "2-thread hog", spin_forever.clone()),
        (
            Scenario::ForkBomb,
            "fork bomb",
            "b() { while :; do b & done; }; b".to_string(),
        ),
        (
            Scenario::MemBomb,
            "memory bomb",
            format!("for i in 1 2; do (while :; do {AGENT} membomb --mb 2048; done) & done; wait"),
        ),
    ];
    if bombs.iter().any(|(c, ..)| runs(*c)) {
        eprintln!("probe in A, B quiet...");
        o.quiet = Some(probe(node, &a, false).await?);
    }
    for (scenario, what, script) in bombs {
        if !runs(scenario) {
            continue;
        }
        eprintln!(
            "probe in A while B runs a {what} ({} s ahead)...",
            d.lead.as_secs()
        );
        let load = Load::start(node, &b, &script).await?;
        tokio::time::sleep(d.lead).await;
        let p = probe(node, &a, false).await;
        load.stop().await;
        // A fresh B for the next load (and the only sure end of a fork bomb).
        node.stop(&b).await?;
        node.start(&b).await?;
        let p = Some(p?);
        match scenario {
            Scenario::Hog => o.hog = p,
            Scenario::ForkBomb => o.fork = p,
            _ => o.mem = p,
        }
    }

    if runs(Scenario::Burst) {
        eprintln!(
            "burst from idle after B has spun on both cores for {} s...",
            d.hog_before_burst.as_secs()
        );
        let load = Load::start(node, &b, &spin_forever).await?;
        tokio::time::sleep(d.hog_before_burst).await;
        let r = burst(node, &a).await;
        load.stop().await;
        o.burst_hogged = Some(r?);
    }

    if runs(Scenario::Inside) {
        eprintln!("probe from a tty in A, quiet...");
        o.quiet_tty = Some(probe(node, &a, true).await?);
        eprintln!("probe from a tty in A while A runs a 2-lane build of `cc1`s...");
        let build = format!(
            "cp {AGENT} /tmp/cc1 && for lane in 1 2; do \
             (while :; do /tmp/cc1 spin --threads 1 --ms 200 >/dev/null; done) & done; wait"
        );
        let load = Load::start(node, &a, &build).await?;
        tokio::time::sleep(d.build_lead).await;
        let p = probe(node, &a, true).await;
        load.stop().await;
        o.build = Some(p?);
    }

    if runs(Scenario::Fairness) {
        eprintln!(
            "fairness: A spins, B joins {} s later, {} s measured...",
            d.fair_lag.as_secs(),
            d.fair_run.as_secs()
        );
        for s in [&a, &b] {
            node.stop(s).await?;
            node.start(s).await?;
        }
        o.fairness = Some(fairness(node, &a, &b, d).await?);
    }
    o.load_after = loadavg();
    o.ctl_cost = cost.percent(node);
    Ok(o)
}

/// The controller's own CPU between two points, from its stats.
struct ControllerCost {
    cpu_ns: Option<u64>,
    at: std::time::Instant,
}

impl ControllerCost {
    fn start(node: &LocalNode) -> ControllerCost {
        ControllerCost {
            cpu_ns: node.cpu_controller_stats().map(|s| s.cpu_ns),
            at: std::time::Instant::now(),
        }
    }

    /// % of one core since `start`; `None` when the node runs no controller.
    fn percent(&self, node: &LocalNode) -> Option<f64> {
        let now = node.cpu_controller_stats()?.cpu_ns;
        let used = now.saturating_sub(self.cpu_ns?);
        Some(used as f64 / self.at.elapsed().as_nanos().max(1) as f64 * 100.0)
    }
}

/// `--loop-cost N`: the hearth controller's CPU with N running busybox workspaces (full
/// workspaces: 64 MiB, smallest disk), quiet and while one of them spins on 2 threads
/// (then the loop reads every workspace on every tick).
async fn loop_cost(args: &CpuArgs, n: usize) -> Result<()> {
    let mut sb = super::Sandbox::new(
        "hearth-bench-cpucost",
        "hbcost",
        // A /20 for up to 4094 workspaces, clear of the test suites' /24s.
        |tag| format!("10.{}.{}.0/20", 150 + tag % 50, (tag / 50 % 16) * 16),
        &args.agent,
        args.runtime.clone(),
    )?;
    sb.cfg.disk_reserve = Some(0);
    sb.cfg.cpu_control = CpuControl::Hearth;
    let node = LocalNode::open(sb.cfg.clone()).await?;
    let res = loop_cost_on(&node, sb.path(), args, n).await;
    eprintln!("removing the {n} workspaces...");
    super::teardown(&node, "cpu loop-cost bench").await;
    res
}

async fn loop_cost_on(node: &LocalNode, tmp: &Path, args: &CpuArgs, n: usize) -> Result<()> {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let image = super::load_image(node, &args.image).await?.id;
    let repo = super::git_repo(tmp)?;
    let specs: Vec<WorkspaceSpec> = (0..n)
        .map(|i| WorkspaceSpec {
            id: hearth_node::WorkspaceId::new(format!("{:012x}", 0xcc_0000_0000u64 + i as u64))
                .expect("hex id"),
            name: format!("cost{i}"),
            image: image.clone(),
            source: repo.display().to_string(),
            slot: i as u32,
            limits: Limits {
                memory_bytes: 64 << 20,
                disk_bytes: hearth_node::MIN_DISK_BYTES,
                ..Limits::default()
            },
            egress: Default::default(),
            generation: 0,
        })
        .collect();
    eprintln!("starting {n} workspaces for --loop-cost...");
    for chunk in specs.chunks(4) {
        let mut tasks = tokio::task::JoinSet::new();
        for s in chunk {
            let (node, s, tx) = (node.clone(), s.clone(), tx.clone());
            tasks.spawn(async move {
                node.create(&s, tx).await?;
                node.start(&s).await?;
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
    }
    let window = Duration::from_secs(20);
    let registered = node.cpu_controller_stats().map_or(0, |s| s.workspaces);
    eprintln!(
        "measuring the controller, quiet ({} s)...",
        window.as_secs()
    );
    let c = ControllerCost::start(node);
    tokio::time::sleep(window).await;
    let quiet = c.percent(node);
    eprintln!(
        "measuring the controller, one workspace spinning ({} s)...",
        window.as_secs()
    );
    let load = Load::start(
        node,
        &specs[0],
        &format!("exec {AGENT} spin --threads {THREADS} --ms 0"),
    )
    .await?;
    let c = ControllerCost::start(node);
    tokio::time::sleep(window).await;
    let busy = c.percent(node);
    load.stop().await;
    let cell = |p: Option<f64>| match p {
        Some(p) => format!("{p:.2}% {}", if p < 1.0 { "ok" } else { "MISS" }),
        None => "no controller".into(),
    };
    println!(
        "\ncontroller cost at {n} running workspaces ({registered} registered; full busybox \
         workspaces), % of one core over {} s; target < 1%   load 1/5/15 min {}",
        window.as_secs(),
        loadavg()
    );
    println!("  {:<40} {:>14}", "all quiet", cell(quiet));
    println!("  {:<40} {:>14}", "one spinning on 2 threads", cell(busy));
    Ok(())
}

/// A command running in a workspace until stopped (SIGKILL to its process group).
struct Load {
    writer: hearth_proto::client::ExecWriter,
    task: tokio::task::JoinHandle<Result<(i32, String)>>,
}

impl Load {
    async fn start(node: &LocalNode, ws: &WorkspaceSpec, script: &str) -> Result<Load> {
        let s = node
            .exec(
                ws,
                ExecRequest {
                    argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    ..Default::default()
                },
            )
            .await?;
        let (writer, reader) = s.split();
        let task = tokio::spawn(collect(reader));
        Ok(Load { writer, task })
    }

    /// Kills it and returns what it printed; a failure to end is printed, not returned.
    async fn stop(mut self) -> String {
        let _ = self.writer.signal(libc::SIGKILL).await;
        match tokio::time::timeout(Duration::from_secs(20), self.task).await {
            Ok(Ok(Ok((_, out)))) => out,
            Ok(Ok(Err(e))) => {
                eprintln!("cpu bench: load session: {e}");
                String::new()
            }
            Ok(Err(e)) => {
                eprintln!("cpu bench: load session: {e}");
                String::new()
            }
            Err(_) => {
                eprintln!("cpu bench: a load did not end 20 s after SIGKILL");
                String::new()
            }
        }
    }
}

/// Everything a session prints (stdout and stderr) and its exit code.
async fn collect(mut r: hearth_proto::client::ExecReader) -> Result<(i32, String)> {
    let mut out = Vec::new();
    loop {
        match r.next_event().await? {
            Event::Stdout(b) | Event::Stderr(b) => out.extend(b),
            Event::Exit(c) => return Ok((c, String::from_utf8_lossy(&out).into_owned())),
        }
    }
}

/// Runs `argv` in `ws` to the end; fails unless it exits 0.
async fn run_tool(
    node: &LocalNode,
    ws: &WorkspaceSpec,
    argv: &[String],
    tty: bool,
) -> Result<String> {
    let s = node
        .exec(
            ws,
            ExecRequest {
                argv: argv.to_vec(),
                tty,
                rows: 24,
                cols: 80,
                ..Default::default()
            },
        )
        .await?;
    let (mut w, r) = s.split();
    if !tty {
        w.close_stdin().await?;
    }
    let (code, out) = collect(r).await?;
    if code != 0 {
        bail!("{} exited {code}: {}", argv.join(" "), out.trim());
    }
    Ok(out)
}

fn agent_argv(args: &str) -> Vec<String> {
    std::iter::once(AGENT.to_string())
        .chain(args.split_whitespace().map(str::to_string))
        .collect()
}

/// The 2-thread spinner's CPU-ms by 100 and 500 ms.
async fn burst(node: &LocalNode, ws: &WorkspaceSpec) -> Result<(f64, f64)> {
    let out = run_tool(
        node,
        ws,
        &agent_argv(&format!(
            "spin --threads {THREADS} --ms 500 --marks 100,500"
        )),
        false,
    )
    .await?;
    let mark = |m: &str| -> Result<f64> {
        out.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("mark {m} "))
                    .map(str::to_string)
            })
            .context(format!("spin printed no mark {m}: {out}"))?
            .parse()
            .context("spin mark")
    };
    Ok((mark("100")?, mark("500")?))
}

async fn probe(node: &LocalNode, ws: &WorkspaceSpec, tty: bool) -> Result<Series> {
    let out = run_tool(
        node,
        ws,
        &agent_argv(&format!(
            "probe --iterations {PROBE_ITERATIONS} --sleep-ms 10 --work-us 1000"
        )),
        tty,
    )
    .await?;
    let mut s = Series::new("probe", None);
    for l in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let us: u64 = l.parse().with_context(|| format!("probe printed {l:?}"))?;
        s.samples.push(Duration::from_micros(us));
    }
    if s.samples.len() != PROBE_ITERATIONS {
        bail!(
            "probe printed {} latencies, not {PROBE_ITERATIONS}",
            s.samples.len()
        );
    }
    Ok(s)
}

/// (CLOCK_MONOTONIC ms, CPU ms) points a spinner printed with `--every-ms`.
fn cpu_series(out: &str) -> Vec<(f64, f64)> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.trim().strip_prefix("at ")?.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

/// CPU ms at monotonic time `t` (ms), linear between points; `None` outside them.
fn cpu_at(series: &[(f64, f64)], t: f64) -> Option<f64> {
    let i = series.iter().position(|&(x, _)| x >= t)?;
    if i == 0 {
        return (series[0].0 == t).then_some(series[0].1);
    }
    let ((x0, y0), (x1, y1)) = (series[i - 1], series[i]);
    Some(y0 + (y1 - y0) * (t - x0) / (x1 - x0))
}

/// CLOCK_MONOTONIC in ms, the clock the spinners in the workspaces report on (they
/// share it: workspaces get no time namespace).
fn mono_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

async fn fairness(
    node: &LocalNode,
    a: &WorkspaceSpec,
    b: &WorkspaceSpec,
    d: &Durations,
) -> Result<Fairness> {
    // Both spin until killed after the last window: an exec that starts late under load
    // must not leave a short last window that looks unfair.
    let hog = format!("exec {AGENT} spin --threads {THREADS} --ms 0 --every-ms 100");
    let la = Load::start(node, a, &hog).await?;
    tokio::time::sleep(d.fair_lag).await;
    let joined = mono_ms();
    let lb = Load::start(node, b, &hog).await?;
    tokio::time::sleep(d.fair_run + Duration::from_secs(1)).await;
    let (oa, ob) = (la.stop().await, lb.stop().await);
    let (sa, sb) = (cpu_series(&oa), cpu_series(&ob));
    let windows = fairness_windows(&sa, &sb, joined, d.fair_run.as_secs() as usize);
    if windows.len() < d.fair_run.as_secs() as usize / 2 {
        bail!(
            "fairness: the hogs reported too little ({} windows)\nA: {}\nB: {}",
            windows.len(),
            oa.lines().last().unwrap_or(""),
            ob.lines().last().unwrap_or("")
        );
    }
    Ok(converged(&windows))
}

/// Each 1 s window's CPU ms of A and B, from `start` (monotonic ms).
fn fairness_windows(sa: &[(f64, f64)], sb: &[(f64, f64)], start: f64, n: usize) -> Vec<(f64, f64)> {
    let mut w = Vec::new();
    for k in 0..n {
        let (t0, t1) = (start + k as f64 * 1e3, start + (k + 1) as f64 * 1e3);
        let d = |s: &[(f64, f64)]| Some(cpu_at(s, t1)? - cpu_at(s, t0).unwrap_or(0.0));
        // B's series starts a little after `start` (its exec): before it, B had nothing.
        match (d(sa), d(sb)) {
            (Some(x), Some(y)) => w.push((x, y)),
            _ => break,
        }
    }
    w
}

/// Windows (1 s each) the shares are averaged over to judge convergence: single 1 s
/// windows of two SCHED_IDLE groups wander by more than 5 % without either being favoured.
const FAIR_AVG_WINDOWS: usize = 5;

/// When the shares converged: the first 1 s window from which every later
/// [`FAIR_AVG_WINDOWS`]-window average of A's share is within 0.45..0.55 (A's and B's
/// CPU summed over the span, so a quiet second weighs less). `None` if that never
/// holds or the run is shorter than one average. Also Jain's index over the totals.
fn converged(windows: &[(f64, f64)]) -> Fairness {
    let fair = |span: &[(f64, f64)]| {
        let (x, y) = span
            .iter()
            .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
        x + y > 0.0 && (x / (x + y) - 0.5).abs() <= 0.05
    };
    let spans: Vec<bool> = windows.windows(FAIR_AVG_WINDOWS).map(fair).collect();
    let unfair_after = spans.iter().rposition(|&f| !f);
    let converged = match unfair_after {
        _ if spans.is_empty() => None,
        None => Some(0.0),
        Some(k) if k + 1 < spans.len() => Some((k + 1) as f64),
        Some(_) => None,
    };
    let (ta, tb) = windows
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let jain = if ta + tb > 0.0 {
        (ta + tb).powi(2) / (2.0 * (ta * ta + tb * tb))
    } else {
        f64::NAN
    };
    Fairness { converged, jain }
}

/// The results table: a column per mode, the target last; rows of scenarios not run
/// are left out, a cell of a scenario a mode did not run reads `-`.
fn table(quick: bool, d: &Durations, cores: usize, results: &[(Mode, Outcome)]) -> String {
    let node_ms = |ms: f64| cores.min(THREADS) as f64 * ms;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nhearth bench cpu{}   {cores} cores   probe: {PROBE_ITERATIONS} x (sleep 10 ms, 1 ms CPU), \
         ms from intended wake-up to done   B's load runs {} s before the probe",
        if quick { " --quick" } else { "" },
        d.lead.as_secs()
    );
    let w = 17;
    let _ = write!(out, "{:<40}", "scenario");
    for (m, _) in results {
        let _ = write!(out, " {:>w$}", m.name());
    }
    let _ = writeln!(out, "  target");
    // One row: `cell` of every mode, unless no mode has one.
    let row =
        |out: &mut String, name: &str, cell: &dyn Fn(&Outcome) -> Option<String>, target: &str| {
            let cells: Vec<Option<String>> = results.iter().map(|(_, o)| cell(o)).collect();
            if cells.iter().all(Option::is_none) {
                return;
            }
            let _ = write!(out, "{name:<40}");
            for c in cells {
                let _ = write!(out, " {:>w$}", c.as_deref().unwrap_or("-"));
            }
            let _ = writeln!(out, "  {target}");
        };
    let ok = |pass: bool| if pass { "ok" } else { "MISS" };
    let burst_row =
        |out: &mut String, name: &str, f: &dyn Fn(&Outcome) -> Option<f64>, want: f64, pct: u32| {
            row(
                out,
                name,
                &|o| f(o).map(|v| format!("{v:.0} {}", ok(v >= want))),
                &format!(">= {want:.0} ({pct}% of {cores}x100 ms)"),
            );
        };
    burst_row(
        &mut out,
        "burst alone: CPU-ms in first 100 ms",
        &|o| o.burst_alone.map(|b| b.0),
        0.9 * node_ms(100.0),
        90,
    );
    row(
        &mut out,
        "burst alone: CPU-ms in first 500 ms",
        &|o| o.burst_alone.map(|b| format!("{:.0}", b.1)),
        "",
    );
    let hogged = d.hog_before_burst.as_secs();
    burst_row(
        &mut out,
        &format!("burst, B hogged {hogged} s: first 100 ms"),
        &|o| o.burst_hogged.map(|b| b.0),
        0.75 * node_ms(100.0),
        75,
    );
    row(
        &mut out,
        &format!("burst, B hogged {hogged} s: first 500 ms"),
        &|o| o.burst_hogged.map(|b| format!("{:.0}", b.1)),
        "",
    );
    let pp = |s: &Series| format!("{:.2}/{:.2}", s.pct(50.0), s.pct(99.0));
    let probe_row = |out: &mut String,
                     name: &str,
                     f: &dyn Fn(&Outcome) -> Option<&Series>,
                     base: &dyn Fn(&Outcome) -> Option<&Series>| {
        row(
            out,
            name,
            &|o| {
                let (s, b) = (f(o)?, base(o)?);
                Some(format!(
                    "{} {}",
                    pp(s),
                    ok(s.pct(99.0) <= 1.5 * b.pct(99.0))
                ))
            },
            "p99 <= 1.5x quiet p99",
        );
    };
    row(
        &mut out,
        "probe in A, B quiet: p50/p99 ms",
        &|o| o.quiet.as_ref().map(pp),
        "",
    );
    probe_row(
        &mut out,
        "  B runs a 2-thread hog",
        &|o| o.hog.as_ref(),
        &|o| o.quiet.as_ref(),
    );
    probe_row(
        &mut out,
        "  B runs a fork bomb",
        &|o| o.fork.as_ref(),
        &|o| o.quiet.as_ref(),
    );
    probe_row(
        &mut out,
        "  B runs a memory bomb",
        &|o| o.mem.as_ref(),
        &|o| o.quiet.as_ref(),
    );
    row(
        &mut out,
        "probe in A's tty, A quiet: p50/p99 ms",
        &|o| o.quiet_tty.as_ref().map(pp),
        "",
    );
    probe_row(
        &mut out,
        "  A runs a 2-lane cc1 build",
        &|o| o.build.as_ref(),
        &|o| o.quiet_tty.as_ref(),
    );
    row(
        &mut out,
        &format!(
            "fairness: converged ({} s run, {FAIR_AVG_WINDOWS} s avg)",
            d.fair_run.as_secs()
        ),
        &|o| {
            o.fairness.map(|f| match f.converged {
                Some(s) => format!("{s:.0} s {}", ok(s <= 10.0)),
                None => "never MISS".into(),
            })
        },
        "<= 10 s",
    );
    row(
        &mut out,
        "fairness: Jain's index",
        &|o| o.fairness.map(|f| format!("{:.3}", f.jain)),
        "",
    );
    row(
        &mut out,
        "controller CPU, % of a core (this run)",
        &|o| {
            Some(
                o.ctl_cost
                    .map_or("-".into(), |p| format!("{p:.2}% {}", ok(p < 1.0))),
            )
        },
        "< 1%",
    );
    row(
        &mut out,
        "load average 1/5/15 min at start",
        &|o| Some(o.load_before.clone()),
        "",
    );
    row(
        &mut out,
        "load average 1/5/15 min at end",
        &|o| Some(o.load_after.clone()),
        "",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_converge_when_their_5s_average_stays_fair() {
        let unfair = (900.0, 100.0);
        let mut w = vec![unfair; 3];
        w.extend([(500.0, 500.0); 10]);
        let f = converged(&w);
        // The first average that is all fair windows starts at window 3.
        assert_eq!(f.converged, Some(3.0));
        assert!(f.jain > 0.9 && f.jain < 1.0, "{}", f.jain);
        // Seconds that wander past 0.45..0.55 either way but even out are fair.
        let noisy: Vec<_> = (0..12)
            .map(|i| {
                if i % 2 == 0 {
                    (560.0, 440.0)
                } else {
                    (440.0, 560.0)
                }
            })
            .collect();
        assert_eq!(converged(&noisy).converged, Some(0.0));
        // Fair, then unfair at the end: not converged.
        let mut w = vec![(500.0, 500.0); 10];
        w.extend([unfair; 5]);
        assert_eq!(converged(&w).converged, None);
        // Shorter than one average: cannot tell.
        let f = converged(&[(500.0, 500.0); 4]);
        assert_eq!(f.converged, None);
        assert!((f.jain - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_table_keeps_its_columns() {
        let quiet = || {
            let mut s = Series::new("probe", None);
            s.samples = vec![Duration::from_micros(1200); 10];
            s
        };
        let full = Outcome {
            burst_alone: Some((190.0, 960.0)),
            quiet: Some(quiet()),
            hog: Some(quiet()),
            fairness: Some(Fairness {
                converged: Some(4.0),
                jain: 0.99,
            }),
            load_before: loadavg_cell("10.52 10.30 10.21 3/411 999\n"),
            load_after: loadavg_cell(""),
            ctl_cost: Some(0.31),
            ..Outcome::default()
        };
        let off = Outcome {
            burst_alone: Some((195.0, 980.0)),
            load_before: "0.10/0.20/0.30".into(),
            ..Outcome::default()
        };
        let results = [(Mode::Hearth, full), (Mode::Off, off)];
        let text = table(false, &Durations::new(false), 2, &results);
        let lines: Vec<&str> = text.lines().skip(2).collect();
        let cells = |line: &str| -> Vec<String> {
            assert!(line.len() >= 40 + 2 * 18, "{line:?}");
            assert_eq!(&line[39..40], " ", "the name runs into the cells: {line:?}");
            (0..2)
                .map(|k| {
                    let c = &line[40 + k * 18..40 + (k + 1) * 18];
                    assert!(c.starts_with(' '), "cell {k} overflows: {line:?}");
                    c.trim().to_owned()
                })
                .collect()
        };
        let row = |name: &str| {
            let line = lines
                .iter()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name:?} in\n{text}"));
            cells(line)
        };
        for line in &lines {
            cells(line);
        }
        assert_eq!(
            row("burst alone: CPU-ms in first 100 ms"),
            ["190 ok", "195 ok"]
        );
        assert_eq!(row("  B runs a 2-thread hog"), ["1.20/1.20 ok", "-"]);
        assert_eq!(row("fairness: converged"), ["4 s ok", "-"]);
        assert_eq!(row("controller CPU"), ["0.31% ok", "-"]);
        assert_eq!(
            row("load average 1/5/15 min at start"),
            ["10.52/10.30/10.21", "0.10/0.20/0.30"]
        );
        assert_eq!(row("load average 1/5/15 min at end"), ["?", ""]);
        // Scenarios nobody ran have no rows.
        for gone in [
            "  B runs a fork bomb",
            "burst, B hogged",
            "probe in A's tty",
        ] {
            assert!(!text.contains(gone), "{gone:?} in\n{text}");
        }
    }

    #[test]
    fn cpu_is_interpolated_between_reports() {
        let s = [(1000.0, 0.0), (1100.0, 200.0), (1200.0, 300.0)];
        assert_eq!(cpu_at(&s, 1050.0), Some(100.0));
        assert_eq!(cpu_at(&s, 1200.0), Some(300.0));
        assert_eq!(cpu_at(&s, 1300.0), None);
        assert_eq!(cpu_at(&s, 900.0), None);
        let w = fairness_windows(&s, &s, 1000.0, 5);
        assert!(
            w.is_empty(),
            "a window past the reports is not counted: {w:?}"
        );
    }
}
