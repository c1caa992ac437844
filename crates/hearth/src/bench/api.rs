//! `hearth bench api`: the control plane's API latency with thousands of workspaces on
//! simulated nodes, SQLite and PostgreSQL side by side.
//!
//! Each backend gets a real server in this process (its own data dir; PostgreSQL is a
//! scratch server the bench starts, as the tests do) reached over HTTP on 127.0.0.1 like
//! the CLI reaches it. Its fleet is simulated nodes: a [`NodeApi`] that answers at once
//! from memory, so the numbers are the control plane's own work (routing, auth, the
//! database, placement, JSON). The workspace rows are seeded through the store, then
//! list, create, start, stop and inspect are timed one request at a time, and the
//! scheduler's decision (`Manager::choose_node`: the database read of what is placed
//! where, and the pure placement) is timed in-process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hearth_api::client::Client;
use hearth_api::{CreateWorkspace, LimitsRequest, WorkspaceState};
use hearth_node::{
    ExecRequest, ExecSession, ImageSummary, Limits, NodeApi, NodeCapacity, NodeError, Progress,
    RunState, SnapshotSummary, WorkspaceDetails, WorkspaceId, WorkspaceSpec, WorkspaceStatus,
};
use hearth_server::db::scratch::ScratchPostgres;
use hearth_server::db::{Database, WorkspaceRecord};
use hearth_server::{Server, ServerConfig};

use super::Series;

const TARGET_API_MS: f64 = 50.0;
const TARGET_SCHEDULER_MS: f64 = 1.0;
const IMAGE: &str = "bench/sim:latest";

pub struct ApiArgs {
    /// Workspaces recorded before timing (half of them running).
    pub workspaces: usize,
    /// Simulated nodes they spread over.
    pub nodes: usize,
    /// Timed requests per operation.
    pub samples: usize,
    /// Backends to measure: "sqlite", "postgres".
    pub backends: Vec<String>,
}

/// A node that runs nothing: it remembers which workspaces it holds and whether they
/// run, and answers every call at once.
struct SimNode {
    image: ImageSummary,
    /// id -> running?
    held: Mutex<HashMap<String, bool>>,
}

impl SimNode {
    fn new() -> SimNode {
        SimNode {
            image: ImageSummary {
                id: format!("sha256:{}", "5e".repeat(32)),
                names: vec![IMAGE.to_string()],
                size: 1 << 20,
                layers: 1,
                loaded_at: hearth_server::db::now(),
                user: None,
            },
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status_of(&self, spec: &WorkspaceSpec) -> WorkspaceStatus {
        let state = match self.held().get(spec.id.as_str()) {
            Some(true) => RunState::Running,
            Some(false) => RunState::Stopped,
            None => RunState::Missing,
        };
        WorkspaceStatus {
            pid: (state == RunState::Running).then_some(1),
            ip: (state == RunState::Running)
                .then(|| std::net::Ipv4Addr::from(0x0a40_0000 + spec.slot)),
            state,
            paused: None,
        }
    }
}

#[async_trait::async_trait]
impl NodeApi for SimNode {
    async fn load_image(
        &self,
        _path: PathBuf,
        _name: Option<String>,
        _progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        Ok(self.image.clone())
    }
    async fn pull_image(
        &self,
        _plan: hearth_node::PullPlan,
        _progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        Ok(self.image.clone())
    }
    async fn images(&self) -> Result<Vec<ImageSummary>, NodeError> {
        Ok(vec![self.image.clone()])
    }
    async fn capacity(&self) -> Result<NodeCapacity, NodeError> {
        let held = self.held();
        Ok(sim_capacity(
            u32::try_from(held.len()).unwrap_or(u32::MAX),
            u32::try_from(held.values().filter(|r| **r).count()).unwrap_or(u32::MAX),
        ))
    }
    async fn resolve_image(&self, reference: &str) -> Result<ImageSummary, NodeError> {
        if reference == self.image.id || self.image.names.iter().any(|n| n == reference) {
            Ok(self.image.clone())
        } else {
            Err(NodeError::NotFound(format!("image {reference} not found")))
        }
    }
    async fn remove_image(&self, reference: &str, _in_use: &[String]) -> Result<(), NodeError> {
        Err(NodeError::Conflict(format!(
            "image {reference}: a simulated node keeps its image"
        )))
    }
    async fn create(&self, spec: &WorkspaceSpec, _progress: Progress) -> Result<(), NodeError> {
        self.held().insert(spec.id.to_string(), false);
        Ok(())
    }
    async fn start(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        match self.held().get_mut(spec.id.as_str()) {
            Some(r) => *r = true,
            None => return Err(NodeError::NotFound(format!("workspace {}", spec.name))),
        }
        Ok(self.status_of(spec))
    }
    async fn stop(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        if let Some(r) = self.held().get_mut(spec.id.as_str()) {
            *r = false;
        }
        Ok(())
    }
    async fn remove(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        self.held().remove(spec.id.as_str());
        Ok(())
    }
    async fn status(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        Ok(self.status_of(spec))
    }
    async fn set_egress(&self, _spec: &WorkspaceSpec) -> Result<(), NodeError> {
        Ok(())
    }
    async fn set_limits(&self, _spec: &WorkspaceSpec) -> Result<(), NodeError> {
        Ok(())
    }
    async fn inspect(&self, spec: &WorkspaceSpec) -> Result<WorkspaceDetails, NodeError> {
        let st = self.status_of(spec);
        Ok(WorkspaceDetails {
            state: st.state,
            pid: st.pid,
            uid_base: 100_000 + spec.slot * 65536,
            id_count: 65536,
            cgroups: Vec::new(),
            limits: spec.limits,
            network: None,
            usage: Default::default(),
            egress: Default::default(),
            paused: None,
            oom_kills: Vec::new(),
            cpu: None,
            hydration: None,
        })
    }
    async fn exec(
        &self,
        spec: &WorkspaceSpec,
        _req: ExecRequest,
    ) -> Result<ExecSession, NodeError> {
        Err(NodeError::Invalid(format!(
            "workspace {}: a simulated node runs no processes",
            spec.name
        )))
    }
    async fn logs(&self, _spec: &WorkspaceSpec) -> Result<Vec<u8>, NodeError> {
        Ok(Vec::new())
    }
    async fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(WorkspaceId, WorkspaceStatus)>, NodeError> {
        Ok(known
            .iter()
            .map(|s| (s.id.clone(), self.status_of(s)))
            .collect())
    }
    async fn teardown(&self) -> Result<(), NodeError> {
        Ok(())
    }
    async fn snapshot(&self, spec: &WorkspaceSpec) -> Result<SnapshotSummary, NodeError> {
        Ok(SnapshotSummary {
            id: format!("{:032x}", rand::random::<u128>()),
            workspace: spec.id.to_string(),
            time: time::OffsetDateTime::now_utc().unix_timestamp(),
            parent: None,
            size: 0,
            files: 0,
            new_bytes: 0,
        })
    }
    async fn snapshots(&self, _spec: &WorkspaceSpec) -> Result<Vec<SnapshotSummary>, NodeError> {
        Ok(Vec::new())
    }
}

/// Every simulated node is the same host: 64 cores, 256 GiB, 4 TiB.
fn sim_capacity(workspaces: u32, running: u32) -> NodeCapacity {
    NodeCapacity {
        cpus: 64,
        memory_total: 256 << 30,
        memory_available: (256u64 << 30).saturating_sub(u64::from(running) << 30),
        disk_total: 4 << 40,
        disk_free: (4u64 << 40).saturating_sub(u64::from(workspaces) << 30),
        disk_reserve: 20 << 30,
        workspaces,
        running,
    }
}

/// One backend's samples, per operation.
struct Measured {
    backend: &'static str,
    series: Vec<Series>,
}

pub async fn run(args: ApiArgs) -> Result<()> {
    anyhow::ensure!(args.nodes > 0, "--nodes must be at least 1");
    anyhow::ensure!(args.samples > 0, "--samples must be at least 1");
    let mut results = Vec::new();
    for b in &args.backends {
        let m = match b.as_str() {
            "sqlite" => measure("sqlite", None, &args).await?,
            "postgres" => {
                let pg = ScratchPostgres::shared().context("cannot start a scratch PostgreSQL")?;
                let db = pg.database().context("cannot make a scratch database")?;
                measure("postgres", Some(db.database()), &args).await?
            }
            other => anyhow::bail!("unknown backend {other:?}: use sqlite, postgres"),
        };
        results.push(m);
    }
    print_table(&args, &results);
    Ok(())
}

fn print_table(args: &ApiArgs, results: &[Measured]) {
    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    println!(
        "api: {} workspaces on {} simulated nodes, {} timed requests per operation, one at a \
         time over HTTP on 127.0.0.1 ({build})",
        args.workspaces, args.nodes, args.samples
    );
    print!("{:<24}", "operation");
    for m in results {
        print!(
            " {:>11} {:>11}",
            format!("{} p50", m.backend),
            format!("{} p99", m.backend)
        );
    }
    println!(" {:>10}", "target p99");
    let Some(first) = results.first() else { return };
    for (i, s) in first.series.iter().enumerate() {
        print!("{:<24}", s.name);
        for m in results {
            let s = &m.series[i];
            print!(" {:>11.2} {:>11.2}", s.pct(50.0), s.pct(99.0));
        }
        match s.target {
            Some(t) => println!(" {:>7} ms", t),
            None => println!(" {:>10}", "-"),
        }
    }
    println!("(milliseconds)");
}

async fn measure(
    backend: &'static str,
    database: Option<Database>,
    args: &ApiArgs,
) -> Result<Measured> {
    let dir = tempfile::Builder::new()
        .prefix("hearth-bench-api-")
        .tempdir_in("/var/tmp")
        .context("temp dir in /var/tmp")?;
    let data_dir = dir.path().join("data");
    let local = Arc::new(SimNode::new());
    let server = Server::bind(
        ServerConfig {
            data_dir: data_dir.clone(),
            listen: "127.0.0.1:0".parse()?,
            public_rate: hearth_server::ratelimit::RateLimit::default(),
            rate: hearth_server::ratelimit::RateLimit {
                per_second: 0,
                burst: 0,
            },
            upload_max: 0,
            ssh_listen: None,
            database,
            node_url: None,
        },
        local.clone() as Arc<dyn NodeApi>,
    )
    .await
    .with_context(|| format!("cannot start a server on {backend}"))?;
    // Simulated nodes send no heartbeats of their own: never lost while seeding.
    server.set_node_lost_after(Duration::from_secs(24 * 3600));
    let manager = server.manager().clone();
    let url = format!("http://{}", server.local_addr());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    let res = async {
        let fleet = manager.fleet();
        let mut nodes: Vec<(String, Arc<SimNode>)> = vec![(
            hearth_server::fleet::DEFAULT_LOCAL_NODE.to_string(),
            local.clone(),
        )];
        for i in 1..args.nodes {
            let name = format!("sim-{i:04}");
            let node = Arc::new(SimNode::new());
            fleet
                .attach(&name, Default::default(), node.clone() as Arc<dyn NodeApi>)
                .await?;
            nodes.push((name, node));
        }
        eprintln!(
            "{backend}: recording {} workspaces on {} simulated nodes...",
            args.workspaces, args.nodes
        );
        seed(manager.store(), &nodes, args.workspaces).await?;
        for (name, node) in &nodes {
            fleet.heartbeat(name, node.capacity().await?).await?;
        }
        let api = Client::new(&data_dir, Some(&url), None)?;
        time_ops(&api, &manager, args).await
    }
    .await;
    let _ = stop.send(());
    match task.await {
        Ok(Err(e)) => eprintln!("{backend}: stopping the server: {e:#}"),
        Err(e) => eprintln!("{backend}: the server task failed: {e}"),
        Ok(Ok(())) => {}
    }
    Ok(Measured {
        backend,
        series: res?,
    })
}

fn ws_name(i: usize) -> String {
    format!("w{i:05}")
}

/// Records `n` workspaces straight into the store, round robin over `nodes`, every
/// other one running (the node holds them all), four inserts at a time.
async fn seed(
    store: &hearth_server::db::Store,
    nodes: &[(String, Arc<SimNode>)],
    n: usize,
) -> Result<()> {
    let image = nodes
        .first()
        .map(|(_, node)| node.image.id.clone())
        .unwrap_or_default();
    let t = hearth_server::db::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (node_name, node) = &nodes[i % nodes.len()];
        let running = i % 2 == 0;
        let rec = WorkspaceRecord {
            spec: WorkspaceSpec {
                id: WorkspaceId::new(format!("{:012x}", 0xbe00_0000_0000u64 + i as u64))?,
                name: ws_name(i),
                image: image.clone(),
                source: "https://example.com/bench/repo.git".into(),
                slot: u32::try_from(i)?,
                limits: Limits {
                    memory_bytes: 1 << 30,
                    cpus_milli: 1000,
                    ..Default::default()
                },
                egress: Default::default(),
                generation: 1,
            },
            state: if running {
                WorkspaceState::Running
            } else {
                WorkspaceState::Stopped
            },
            error: None,
            created_at: t.clone(),
            updated_at: t.clone(),
            last_snapshot: None,
            snapshot_error: None,
            owner: hearth_server::auth::FIRST_ADMIN.to_string(),
            node: node_name.clone(),
            node_selector: Default::default(),
            last_snapshot_at: None,
            idle: Default::default(),
        };
        node.held().insert(rec.spec.id.to_string(), running);
        let store = store.clone();
        tasks.spawn(async move { store.insert(&rec).await });
        if tasks.len() >= 4 {
            if let Some(r) = tasks.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

async fn timed<T>(
    series: &mut Series,
    f: impl std::future::Future<Output = hearth_api::client::Result<T>>,
) -> Result<T> {
    let t = Instant::now();
    let out = f.await;
    series.samples.push(t.elapsed());
    Ok(out?)
}

async fn time_ops(
    api: &Client,
    manager: &Arc<hearth_server::manager::Manager>,
    args: &ApiArgs,
) -> Result<Vec<Series>> {
    let mut list = Series::new("list (all)", Some(TARGET_API_MS));
    let mut page = Series::new("list (page of 100)", Some(TARGET_API_MS));
    let mut create = Series::new("create", Some(TARGET_API_MS));
    let mut start = Series::new("start", Some(TARGET_API_MS));
    let mut stop = Series::new("stop", Some(TARGET_API_MS));
    let mut inspect = Series::new("inspect", Some(TARGET_API_MS));
    let mut place = Series::new("scheduler decision", Some(TARGET_SCHEDULER_MS));
    let limits = Limits {
        memory_bytes: 1 << 30,
        cpus_milli: 1000,
        ..Default::default()
    };
    let any = hearth_server::fleet::Labels::new();
    // Warm up connections and the scheduler's view (not timed).
    api.workspaces_page(None, 1).await?;
    manager
        .choose_node(&limits, &any, None)
        .await
        .map_err(|e| anyhow::anyhow!("placement: {}", e.message))?;
    let n = args.workspaces.max(1);
    for k in 0..args.samples {
        let t = Instant::now();
        manager
            .choose_node(&limits, &any, None)
            .await
            .map_err(|e| anyhow::anyhow!("placement: {}", e.message))?;
        place.samples.push(t.elapsed());
        // Running ones are even, stopped ones odd: stop a running one, start a stopped
        // one, inspect a third, spread over the whole table.
        let i = (k * 7919) % n;
        let running = ws_name(i - i % 2);
        let stopped = ws_name((i | 1).min(n - 1));
        timed(&mut stop, api.stop(&running)).await?;
        timed(&mut start, api.start(&stopped)).await?;
        timed(&mut inspect, api.inspect(&ws_name((i + n / 2) % n))).await?;
        let req = CreateWorkspace {
            source: "https://example.com/bench/repo.git".into(),
            image: Some(IMAGE.into()),
            name: Some(format!("new-{k:05}")),
            limits: LimitsRequest {
                memory_bytes: Some(1 << 30),
                cpus_milli: Some(1000),
                ..Default::default()
            },
            egress: None,
            idle_timeout: None,
            devcontainer_config: None,
            branch: None,
            node_selector: None,
        };
        timed(&mut create, api.create(&req, |_| {})).await?;
        let after = ws_name((i + n / 3) % n);
        timed(&mut page, api.workspaces_page(Some(&after), 100)).await?;
        // The whole list is slow in a debug build: a tenth as many samples.
        if k % 10 == 0 {
            timed(&mut list, api.workspaces()).await?;
        }
        // Put them back, so the table keeps its shape.
        api.start(&running).await?;
        api.stop(&stopped).await?;
    }
    Ok(vec![page, list, create, start, stop, inspect, place])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sim_node_tracks_what_it_holds() {
        let node = SimNode::new();
        let spec = WorkspaceSpec {
            id: WorkspaceId::new("0123456789ab").unwrap(),
            name: "w".into(),
            image: node.image.id.clone(),
            source: "x".into(),
            slot: 3,
            limits: Default::default(),
            egress: Default::default(),
            generation: 1,
        };
        assert_eq!(node.status(&spec).await.unwrap().state, RunState::Missing);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        node.create(&spec, tx).await.unwrap();
        assert_eq!(node.status(&spec).await.unwrap().state, RunState::Stopped);
        let st = node.start(&spec).await.unwrap();
        assert_eq!(st.state, RunState::Running);
        assert!(st.ip.is_some());
        assert_eq!(node.capacity().await.unwrap().running, 1);
        node.stop(&spec).await.unwrap();
        node.remove(&spec).await.unwrap();
        assert_eq!(node.status(&spec).await.unwrap().state, RunState::Missing);
    }
}
