//! `hearth bench --scale 10,100,500`: how listing, inspecting, creating and restarting the
//! server behave as idle workspaces pile up on one node.
//!
//! It runs a real server in this process (its own data dir, bridge, subnet and cgroup
//! parent, a free port on 127.0.0.1) and talks to it over HTTP like the CLI does. At each
//! tier it fills the node up to that many running busybox workspaces (64 MiB memory,
//! 256 MiB sparse disks), then times `GET /v1/workspaces` (ls), `GET .../inspect`, a few
//! creates, and restarts: the server and node are dropped and opened again, timed until
//! the API lists every workspace as running again (the containers never stop).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hearth_api::client::Client;
use hearth_api::{CreateWorkspace, LimitsRequest, WorkspaceState};
use hearth_node::{LocalNode, NodeApi, NodeConfig};
use hearth_server::{Server, ServerConfig};

use super::Series;

pub struct ScaleArgs {
    /// Workspace counts to measure at, ascending.
    pub tiers: Vec<usize>,
    /// Image archive or OCI layout every workspace runs (busybox keeps them small).
    pub image: PathBuf,
    pub agent: PathBuf,
    pub runtime: Option<String>,
}

/// Workspaces created at once while filling a tier (not timed).
const FILL_CONCURRENCY: usize = 4;
const MEMORY: u64 = 64 << 20;
const DISK: u64 = 256 << 20;

/// A server running in this process.
pub(super) struct Running {
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// A node and a server on it, in this process; `upload_max` bounds uploads (0: none).
pub(super) async fn open(cfg: &NodeConfig, upload_max: u64) -> Result<(LocalNode, Running)> {
    let node = LocalNode::open(cfg.clone()).await?;
    let server = Server::bind(
        ServerConfig {
            data_dir: cfg.data_dir.clone(),
            listen: "127.0.0.1:0".parse()?,
            // The bench is the server's only caller; it measures, not polices.
            public_rate: hearth_server::ratelimit::RateLimit::default(),
            rate: hearth_server::ratelimit::RateLimit {
                per_second: 0,
                burst: 0,
            },
            upload_max,
            ssh_listen: None,
            database: None,
            node_url: None,
        },
        Arc::new(node.clone()) as Arc<dyn NodeApi>,
    )
    .await?;
    let url = format!("http://{}", server.local_addr());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    Ok((node, Running { url, stop, task }))
}

impl Running {
    pub(super) async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// Creates (and starts) a workspace through the API.
async fn create_one(api: &Client, name: &str, repo: &Path, image: &str) -> Result<()> {
    let req = CreateWorkspace {
        source: repo.display().to_string(),
        image: Some(image.to_string()),
        name: Some(name.to_string()),
        limits: LimitsRequest {
            memory_bytes: Some(MEMORY),
            disk_bytes: Some(DISK),
            ..Default::default()
        },
        egress: None,
        idle_timeout: None,
        devcontainer_config: None,
        branch: None,
        node_selector: None,
    };
    api.create(&req, |_| {})
        .await
        .with_context(|| format!("create {name}"))?;
    Ok(())
}

/// Workspaces the API lists as running, with an address.
async fn running(api: &Client) -> Result<usize> {
    Ok(api
        .workspaces()
        .await?
        .iter()
        .filter(|w| w.state == WorkspaceState::Running && w.ip.is_some())
        .count())
}

fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb << 10)
}

/// Bytes allocated on the host by every workspace's disk image.
fn disk_allocated(ws_root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(ws_root)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::metadata(e.path().join("disk.img")).ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

pub async fn run(args: ScaleArgs) -> Result<()> {
    let mut tiers = args.tiers.clone();
    tiers.sort_unstable();
    tiers.dedup();
    if tiers.is_empty() || tiers[0] == 0 {
        bail!("--scale wants positive workspace counts, e.g. --scale 10,100,500");
    }
    let mut sb = super::Sandbox::new(
        "hearth-scale",
        "hscl",
        // A /20 holds 4094 workspaces; 10.100-149 stays clear of the test suites' /24s.
        |tag| format!("10.{}.{}.0/20", 100 + tag % 50, (tag / 50 % 16) * 16),
        &args.agent,
        args.runtime.clone(),
    )?;
    sb.cfg.disk_reserve = Some(0);
    let cfg = sb.cfg.clone();
    let (node, server) = open(&cfg, 0).await?;
    let mut state = Some((node, server));
    let res = scale(&cfg, sb.path(), &tiers, &args, &mut state).await;
    let node = match state.take() {
        Some((node, server)) => {
            if let Err(e) = server.shutdown().await {
                eprintln!("scale bench: stopping the server: {e}");
            }
            Some(node)
        }
        None => LocalNode::open(cfg.clone()).await.ok(),
    };
    if let Some(node) = node {
        eprintln!("stopping and removing the bench's workspaces...");
        super::teardown(&node, "scale bench").await;
    }
    res
}

async fn scale(
    cfg: &NodeConfig,
    tmp: &Path,
    tiers: &[usize],
    args: &ScaleArgs,
    state: &mut Option<(LocalNode, Running)>,
) -> Result<()> {
    let Some((node, server)) = state.as_ref() else {
        bail!("no server");
    };
    let image = super::load_image(node, &args.image).await?.id;
    let repo = super::git_repo(tmp)?;
    let client = |url: &str| Client::new(&cfg.data_dir, Some(url), None);
    let mut api = client(&server.url)?;
    let mem0 = mem_available();
    let mut made = 0usize;
    let mut rows = Vec::new();
    for &n in tiers {
        // Timed creates (one at a time) are the last few of the tier.
        let timed = 5.min(n - made);
        let fill = n - made - timed;
        if fill > 0 {
            eprintln!("filling the node to {} workspaces...", n - timed);
        }
        let mut next = made;
        while next < made + fill {
            let batch: Vec<usize> = (next..(made + fill).min(next + FILL_CONCURRENCY)).collect();
            let mut tasks = tokio::task::JoinSet::new();
            for &i in &batch {
                let (api, repo, image) = (client(api.base())?, repo.clone(), image.clone());
                tasks.spawn(async move { create_one(&api, &format!("w{i}"), &repo, &image).await });
            }
            while let Some(r) = tasks.join_next().await {
                r??;
            }
            next += batch.len();
        }
        let mut create = Series::new("create", None);
        for i in next..next + timed {
            let t = Instant::now();
            create_one(&api, &format!("w{i}"), &repo, &image).await?;
            create.samples.push(t.elapsed());
        }
        made = n;

        let mut ls = Series::new("ls", None);
        for _ in 0..20 {
            let t = Instant::now();
            let count = api.workspaces().await?.len();
            ls.samples.push(t.elapsed());
            if count != n {
                bail!("ls listed {count} workspaces, expected {n}");
            }
        }
        let mut inspect = Series::new("inspect", None);
        let mut mem = Vec::new();
        for i in 0..5 {
            let t = Instant::now();
            let v = api.inspect(&format!("w{}", i * n / 5)).await?;
            inspect.samples.push(t.elapsed());
            mem.extend(v.usage.memory_bytes);
        }
        let mem = (!mem.is_empty()).then(|| mem.iter().sum::<u64>() / mem.len() as u64);
        let mut restart = Series::new("restart", None);
        for _ in 0..3 {
            let (node, server) = state.take().context("no server")?;
            server.shutdown().await?;
            drop(node);
            let t = Instant::now();
            let (node, server) = open(cfg, 0).await?;
            api = client(&server.url)?;
            *state = Some((node, server));
            let running = running(&api).await?;
            restart.samples.push(t.elapsed());
            if running != n {
                bail!("after a restart {running} of {n} workspaces are running");
            }
        }
        let host = mem0
            .zip(mem_available())
            .map(|(a, b)| (a as f64 - b as f64) / n as f64);
        let disk = disk_allocated(&cfg.data_dir.join("workspaces")) / n as u64;
        rows.push((n, ls, inspect, create, restart, mem, host, disk));
    }

    println!();
    println!("idle busybox workspaces, all running; times in ms (p50 / p99)");
    println!(
        "{:>6} {:>17} {:>17} {:>17} {:>19} {:>8} {:>9} {:>8}",
        "n", "ls", "inspect", "create", "restart-to-ready", "cgroup", "host mem", "disk"
    );
    let mib = |b: u64| format!("{:.1}M", b as f64 / f64::from(1u32 << 20));
    for (n, ls, inspect, create, restart, mem, host, disk) in &rows {
        let cell = |s: &Series| format!("{:.1} / {:.1}", s.pct(50.0), s.pct(99.0));
        println!(
            "{:>6} {:>17} {:>17} {:>17} {:>19} {:>8} {:>9} {:>8}",
            n,
            cell(ls),
            cell(inspect),
            cell(create),
            cell(restart),
            mem.map(mib).unwrap_or_default(),
            host.map(|h| format!("{:.1}M", h / f64::from(1u32 << 20)))
                .unwrap_or_default(),
            mib(*disk)
        );
    }
    println!(
        "targets at 500: ls p50 <= 20 ms, restart-to-ready <= 1000 ms; inspect includes its \
         200 ms CPU sample; per workspace: cgroup = its memory use (inspect), host mem = the \
         drop in the host's MemAvailable (noisy on a shared host), disk = host blocks of \
         its sparse disk image"
    );
    Ok(())
}
