//! [`LocalNode`]: the node running in this process, on this host.
//!
//! One job per file: `lifecycle` (create, start, stop, status, cleanup), `limits`,
//! `disk`, `migrate` (pre-disk workspaces), `reconcile`, `host` (host-wide setup and
//! teardown), `agent` (install and readiness), `paths`, and the snapshot, disk guard,
//! inspect and pull parts. This file opens the node and implements [`NodeApi`] by
//! handing each call to a blocking thread.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hearth_cgroups::Cgroups;
use hearth_image::{Image, ImageError, ImageStore};
use hearth_net::{NetConfig, Network};
use hearth_runtime::oci::OciRuntime;

mod agent;
mod capacity;
mod disk;
mod floor;
mod guard;
mod host;
mod hydrate;
mod inspect;
mod lifecycle;
mod limits;
mod live;
mod migrate;
mod oom;
mod ops;
mod paths;
mod ports;
mod prio;
mod pull;
mod reconcile;
mod snapshot;
#[cfg(test)]
mod tests;

use paths::Paths;

use crate::{
    ExecRequest, ExecSession, ImageSummary, LogCursor, NodeApi, NodeConfig, NodeError, Progress,
    WorkspaceId, WorkspaceSpec, WorkspaceStatus,
};

const LOG_MAX: usize = 1 << 20;
/// Where a workspace's upper dir lived before workspaces had their own disk.
const LEGACY_UPPER: &str = "upper";

#[derive(Clone)]
pub struct LocalNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNode")
            .field("data_dir", &self.inner.cfg.data_dir)
            .finish()
    }
}

struct Inner {
    cfg: NodeConfig,
    images: ImageStore,
    /// Cgroups, network, runtime, mounts and disks as the lifecycle uses them.
    host: Box<dyn ops::HostOps>,
    /// The same cgroups and network, for freezing, stats and addresses.
    cgroups: Arc<Cgroups>,
    net: Arc<Network>,
    ws_root: PathBuf,
    /// A node-wide tmpfs holding what is bind-mounted into workspaces (the agent, and
    /// per workspace its resolv.conf and device nodes). Bind mounts show their source's
    /// path within its filesystem in the workspace's mountinfo: from here that names no
    /// host path.
    share: PathBuf,
    agent: PathBuf,
    gitconfig: PathBuf,
    /// resolv.conf for fetches in a netns, when the host's names a loopback resolver.
    fetch_resolv: Option<PathBuf>,
    /// Hard RLIMIT_NOFILE of workspaces.
    nofile_hard: u64,
    /// Per-phase durations of each workspace's last start (for `hearth bench`).
    phases: std::sync::Mutex<std::collections::HashMap<String, Vec<(&'static str, Duration)>>>,
    snap: snapshot::SnapState,
    /// Restored workspaces whose large files are still being fetched.
    hydrations: hydrate::Hydrations,
    /// Why workspaces are frozen (snapshot, disk reserve).
    freezes: guard::Freezes,
    guard: guard::DiskGuard,
    /// Largest file the workspaces' filesystem takes, i.e. the largest disk; probed at open.
    max_file: u64,
    /// Threads draining workspace consoles into their capped files.
    consoles: crate::console::Consoles,
    /// Pidfds of running workspaces' inits: a listing's liveness check.
    live: live::Liveness,
    /// The CPU control loop; `None` with `--cpu-control off`.
    cpu: Option<crate::cpu::CpuController>,
    /// OOM kills read from the kernel log, per workspace.
    ooms: oom::OomLog,
    /// Gives programs their priority class when they start; `None` without exec rules
    /// or where the kernel's proc connector cannot be used.
    exec_listener: Option<crate::priority::ExecListener>,
}

/// A failure with no typed cause (a panicked blocking task, a composed report).
fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(e.to_string())
}

impl Inner {
    /// Where a fetch of `source` runs: on the host for a local path (only an admin's gets
    /// past the control plane), else in `netns` (a workspace's) or the probe netns.
    fn fetch_jail(
        &self,
        source: &str,
        netns: Option<&Path>,
    ) -> Result<Option<Arc<crate::clone::NetJail>>, NodeError> {
        if crate::clone::is_local_source(source) {
            return Ok(None);
        }
        let probe;
        let netns = match netns {
            Some(p) => p,
            None => {
                probe = self.net.ensure_probe()?;
                &probe
            }
        };
        crate::clone::NetJail::open(netns, self.fetch_resolv.as_deref()).map(Some)
    }

    /// Refuses a disk the data dir's filesystem cannot hold, before anything is made: the
    /// sparse file would fail with EFBIG half way through.
    fn check_disk_size(&self, bytes: u64) -> Result<(), NodeError> {
        if bytes > self.max_file {
            let tib = |b: u64| format!("{:.1} TiB", b as f64 / (1u64 << 40) as f64);
            return Err(NodeError::Invalid(format!(
                "a {} disk does not fit: the filesystem of {} holds files of at most {} \
                 (pick a smaller disk, or a data dir on btrfs or xfs)",
                tib(bytes),
                self.ws_root.display(),
                tib(self.max_file)
            )));
        }
        Ok(())
    }
}

/// An image error, with a hint for the one users cause most.
fn image_err(e: ImageError) -> NodeError {
    match e {
        ImageError::NotFound(r) => NodeError::NotFound(format!(
            "image {r} not found (hearth image ls lists loaded images)"
        )),
        other => NodeError::Image(other),
    }
}

fn summary(i: &Image) -> ImageSummary {
    ImageSummary {
        id: i.id.clone(),
        names: i.names.clone(),
        size: i.size,
        layers: i.diff_ids.len(),
        loaded_at: i.loaded_at.clone(),
        user: i.config.user.clone().filter(|u| !u.is_empty()),
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), NodeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(NodeError::io("mkdir", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(NodeError::io("chmod", path))
}

/// The exec listener, when there are executable rules; the node runs without it (and
/// says so) where the kernel's proc connector is unavailable.
fn start_exec_listener(cfg: &NodeConfig) -> Option<crate::priority::ExecListener> {
    if !cfg.priority.has_exe_rules() {
        return None;
    }
    match crate::priority::ExecListener::start(Arc::new(cfg.priority.clone()), &cfg.cgroup_parent) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(
                "programs keep the priority they inherit: cannot listen for exec events on \
                 the kernel's proc connector (needs CONFIG_PROC_EVENTS and the host's \
                 namespaces): {e}"
            );
            None
        }
    }
}

impl LocalNode {
    /// Opens (or initialises) the node's state under `cfg.data_dir` and sets up the
    /// host network. Running workspaces are left alone.
    pub async fn open(cfg: NodeConfig) -> Result<LocalNode, NodeError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(cfg))
            .await
            .map_err(internal)?
    }

    fn open_blocking(cfg: NodeConfig) -> Result<LocalNode, NodeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(NodeError::Invalid("hearth node must run as root".into()));
        }
        let data = &cfg.data_dir;
        // 0711: workspace containers (unprivileged host uids) must traverse to their rootfs.
        mkdir(data, 0o711)?;
        let ws_root = data.join("workspaces");
        mkdir(&ws_root, 0o711)?;
        mkdir(&data.join("bin"), 0o755)?;
        mkdir(&data.join("run"), 0o700)?;
        let images = ImageStore::open(&data.join("images")).map_err(image_err)?;
        // Checks that can fail on bad input come before anything touches host-wide state
        // (cgroup parents, the bridge, firewall chains), so a refused start leaks nothing.
        let runtime = OciRuntime::new(cfg.runtime.as_deref(), &data.join("run/oci"))?;
        let share = data.join("share");
        host::mount_share(&share)?;
        let agent = share.join("hearth-agent");
        // Workspaces bind the share's copy; the one in bin/ outlives a reboot, for an
        // offline teardown that was given no agent.
        agent::install_agent(&cfg.agent_binary, &[&data.join("bin/hearth-agent"), &agent])?;
        let net = Network::new(NetConfig {
            bridge: cfg.bridge.clone(),
            subnet: cfg.subnet.clone(),
            egress: cfg.egress.clone(),
        })?;
        hearth_disk::check_tools().map_err(|e| NodeError::Invalid(e.to_string()))?;
        let guard = guard::DiskGuard::new(data, cfg.disk_reserve)?;
        let max_file = hearth_disk::max_file_size(&ws_root)?;
        let cgroups = Cgroups::open(&cfg.cgroup_parent)?;
        let exec_listener = start_exec_listener(&cfg);
        host::lift_file_max();
        let nofile_hard = host::raise_nofile_hard();
        net.ensure_host()?;
        let gitconfig = data.join("gitconfig");
        host::write_gitconfig(&gitconfig)?;
        let fetch_resolv = host::fetch_resolv(data)?;
        tracing::info!(runtime = %runtime.binary().display(), cgroups = ?cgroups.version(), disk_reserve = guard.reserve, "node ready");
        let (cgroups, net) = (Arc::new(cgroups), Arc::new(net));
        let host = Box::new(ops::RealHost {
            cgroups: cgroups.clone(),
            net: net.clone(),
            runtime,
        });
        let (cpu_control, cpu_interval) = (cfg.cpu_control, cfg.cpu_interval);
        let cgroups_for_cpu = cgroups.clone();
        let inner = Arc::new(Inner {
            cfg,
            images,
            host,
            cgroups,
            net,
            ws_root,
            share,
            agent,
            gitconfig,
            fetch_resolv,
            nofile_hard,
            phases: Default::default(),
            snap: Default::default(),
            hydrations: Default::default(),
            freezes: Default::default(),
            guard,
            max_file,
            consoles: Default::default(),
            live: Default::default(),
            ooms: Default::default(),
            exec_listener,
            cpu: crate::cpu::CpuController::start(cgroups_for_cpu, cpu_control, cpu_interval),
        });
        guard::spawn(Arc::downgrade(&inner));
        oom::spawn(Arc::downgrade(&inner));
        Ok(LocalNode { inner })
    }

    /// How long the last snapshot of workspace `id` kept it frozen.
    pub fn last_snapshot_pause(&self, id: &str) -> Option<Duration> {
        self.inner.snap.pauses.lock().ok()?.get(id).copied()
    }

    /// The CPU controller's own cost so far; `None` with `--cpu-control off`.
    pub fn cpu_stats(&self) -> Option<crate::CpuControllerStats> {
        self.inner.cpu.as_ref().map(|c| c.stats())
    }

    /// What the exec listener did so far; `None` when it does not run.
    pub fn priority_stats(&self) -> Option<crate::PriorityStats> {
        self.inner.exec_listener.as_ref().map(|l| l.stats())
    }

    /// Phases of the last start of workspace `id`, in order.
    pub fn start_phases(&self, id: &str) -> Vec<(&'static str, Duration)> {
        self.inner
            .phases
            .lock()
            .map(|m| m.get(id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// A TCP socket for `addr`'s family inside the running workspace's netns.
    async fn netns_socket(
        &self,
        spec: &WorkspaceSpec,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpSocket, NodeError> {
        let id = spec.id.clone();
        let name = spec.name.clone();
        self.blocking(move |i| {
            // The agent socket exists exactly while the workspace runs; a stopped one
            // keeps its netns (cheap restarts), with nothing listening in it.
            if !i.paths(&id).socket.exists() || !i.net.has_network(&id) {
                return Err(NodeError::Conflict(format!(
                    "workspace {name} is not running (hearth start {name})"
                )));
            }
            let fd = i.net.tcp_socket(&id, addr.is_ipv6())?;
            Ok(tokio::net::TcpSocket::from_std_stream(
                std::net::TcpStream::from(fd),
            ))
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(internal)?
    }
}

#[async_trait::async_trait]
impl NodeApi for LocalNode {
    async fn check_load(&self, path: &Path, name: Option<&str>) -> Result<(), NodeError> {
        let path = path.to_path_buf();
        let name = name.map(str::to_string);
        self.blocking(move |i| {
            i.images
                .check(&path, name.as_deref())
                .map_err(|e| match e {
                    ImageError::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        NodeError::NotFound(format!(
                            "{} does not exist on the server",
                            path.display()
                        ))
                    }
                    ImageError::Io { source, .. } => NodeError::Invalid(format!(
                        "cannot read {} on the server: {source}",
                        path.display()
                    )),
                    other => image_err(other),
                })?;
            i.check_reserve("load an image")
        })
        .await
    }

    async fn check_create(&self, source: &str, limits: &crate::Limits) -> Result<(), NodeError> {
        let (source, limits) = (source.to_string(), *limits);
        self.blocking(move |i| i.check_create(&source, &limits))
            .await
    }

    async fn devcontainer_config(
        &self,
        source: &str,
        branch: Option<&str>,
        name: Option<&str>,
    ) -> Result<Option<crate::RepoConfig>, NodeError> {
        let (source, name) = (source.to_string(), name.map(str::to_string));
        let branch = branch.map(str::to_string);
        self.blocking(move |i| {
            crate::clone::validate_source(&source)?;
            crate::clone::read_devcontainer(
                &source,
                branch.as_deref(),
                name.as_deref(),
                &crate::clone::GitEnv {
                    gitconfig: &i.gitconfig,
                    jail: i.fetch_jail(&source, None)?.as_ref(),
                },
                &i.cfg.data_dir,
            )
        })
        .await
    }

    async fn update_bundle(
        &self,
        source: &str,
        branch: Option<&str>,
        commit: &str,
        bases: &[String],
        max: u64,
    ) -> Result<Option<(String, Vec<u8>)>, NodeError> {
        let (source, branch) = (source.to_string(), branch.map(str::to_string));
        let (commit, bases) = (commit.to_string(), bases.to_vec());
        self.blocking(move |i| {
            crate::clone::validate_source(&source)?;
            crate::clone::update_bundle(
                &source,
                branch.as_deref(),
                &commit,
                &bases,
                max,
                &crate::clone::GitEnv {
                    gitconfig: &i.gitconfig,
                    jail: i.fetch_jail(&source, None)?.as_ref(),
                },
                &i.cfg.data_dir,
            )
        })
        .await
    }

    async fn build_inputs(
        &self,
        source: &str,
        branch: Option<&str>,
        commit: &str,
        dockerfile: &str,
        context: &str,
    ) -> Result<crate::BuildInputs, NodeError> {
        let (source, branch) = (source.to_string(), branch.map(str::to_string));
        let (commit, dockerfile, context) = (
            commit.to_string(),
            dockerfile.to_string(),
            context.to_string(),
        );
        self.blocking(move |i| {
            crate::clone::validate_source(&source)?;
            crate::clone::build_inputs(
                &source,
                branch.as_deref(),
                &commit,
                &dockerfile,
                &context,
                &crate::clone::GitEnv {
                    gitconfig: &i.gitconfig,
                    jail: i.fetch_jail(&source, None)?.as_ref(),
                },
                &i.cfg.data_dir,
            )
        })
        .await
    }

    async fn dotfiles_archive(
        &self,
        spec: &WorkspaceSpec,
        url: &str,
    ) -> Result<Vec<u8>, NodeError> {
        let (id, uid, url) = (spec.id.clone(), spec.uid_base(), url.to_string());
        self.blocking(move |i| {
            let p = i.paths(&id);
            crate::clone::validate_source(&url)?;
            // The workspace's own network: its egress policy applies too.
            let jail = i.fetch_jail(&url, Some(&i.net.netns_path(&id)))?;
            let git_env = crate::clone::GitEnv {
                gitconfig: &i.gitconfig,
                jail: jail.as_ref(),
            };
            crate::clone::dotfiles_archive(&url, uid, &git_env, &p.disk)
        })
        .await
    }

    async fn repo_archive(&self, source: &str, commit: &str) -> Result<std::fs::File, NodeError> {
        let (source, commit) = (source.to_string(), commit.to_string());
        self.blocking(move |i| {
            crate::clone::validate_source(&source)?;
            let jail = i.fetch_jail(&source, None)?;
            crate::clone::archive(
                &source,
                &commit,
                &crate::clone::GitEnv {
                    gitconfig: &i.gitconfig,
                    jail: jail.as_ref(),
                },
                &i.cfg.data_dir,
            )
        })
        .await
    }

    async fn export_image(&self, reference: &str, name: &str) -> Result<std::fs::File, NodeError> {
        let (reference, name) = (reference.to_string(), name.to_string());
        self.blocking(move |i| {
            let dir = &i.cfg.data_dir;
            let mut f = tempfile::tempfile_in(dir).map_err(NodeError::io("create", dir))?;
            let mut w = std::io::BufWriter::new(&mut f);
            if name.is_empty() {
                i.images
                    .export_oci_archive_exact(&reference, &mut w)
                    .map_err(image_err)?;
            } else {
                i.images
                    .export_oci_archive(&reference, Some(&name), &mut w)
                    .map_err(image_err)?;
            }
            w.into_inner()
                .map_err(|e| NodeError::io("write", dir)(e.into_error()))?;
            use std::io::Seek;
            f.rewind().map_err(NodeError::io("seek", dir))?;
            Ok(f)
        })
        .await
    }

    async fn check_pull(
        &self,
        reference: &str,
        auth: Option<crate::RegistryAuth>,
    ) -> Result<crate::PullPlan, NodeError> {
        hearth_image::Reference::parse(reference).map_err(|e| pull::pull_err(reference, e))?;
        self.blocking(|i| i.check_reserve("pull an image")).await?;
        let mut plan = crate::PullPlan::new(reference, auth);
        let (r, creds) = (reference.to_string(), plan.auth().map(pull::credentials));
        let resolved = tokio::task::spawn_blocking(move || {
            hearth_image::resolve_pull(&r, creds.as_ref()).map_err(|e| pull::pull_err(&r, e))
        })
        .await
        .map_err(internal)?;
        match resolved {
            Ok(r) => plan.resolved = Some(Box::new(r)),
            // A registry that does not answer (or answers 5xx) is no verdict on the
            // request: the pull tries again and reports what happens in its stream.
            Err(e) if e.kind() == crate::ErrorKind::Internal => {
                tracing::info!(reference, error = %e, "registry not reachable at check; the pull retries");
            }
            Err(e) => return Err(e),
        }
        Ok(plan)
    }

    async fn load_image(
        &self,
        path: PathBuf,
        name: Option<String>,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        self.blocking(move |i| {
            i.check_reserve("load an image")?;
            let mut cb = |s: &str| {
                let _ = progress.send(s.to_string());
            };
            i.images
                .load(&path, name.as_deref(), &mut cb)
                .map(|img| summary(&img))
                .map_err(image_err)
        })
        .await
    }

    async fn pull_image(
        &self,
        plan: crate::PullPlan,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        self.blocking(move |i| pull::pull(i, plan, &progress)).await
    }

    async fn capacity(&self) -> Result<crate::NodeCapacity, NodeError> {
        self.blocking(|i| i.capacity()).await
    }

    async fn images(&self) -> Result<Vec<ImageSummary>, NodeError> {
        self.blocking(|i| {
            Ok(i.images
                .list()
                .map_err(image_err)?
                .iter()
                .map(summary)
                .collect())
        })
        .await
    }

    async fn known_layers(&self, diff_ids: &[String]) -> Result<Vec<String>, NodeError> {
        let diff_ids = diff_ids.to_vec();
        self.blocking(move |i| {
            Ok(diff_ids
                .into_iter()
                .filter(|d| i.images.has_layer(d))
                .collect())
        })
        .await
    }

    async fn feature_context(
        &self,
        req: crate::features::FeatureRequest,
    ) -> Result<crate::features::FeaturePlan, NodeError> {
        self.blocking(move |i| {
            let base = i.images.get(&req.base_image).map_err(image_err)?;
            crate::features::plan(
                &req,
                base.config.user.as_deref(),
                &mut crate::features::RegistrySource,
            )
        })
        .await
    }

    async fn resolve_image(&self, reference: &str) -> Result<ImageSummary, NodeError> {
        let r = reference.to_string();
        self.blocking(move |i| i.images.get(&r).map(|x| summary(&x)).map_err(image_err))
            .await
    }

    async fn remove_image(&self, reference: &str, in_use: &[String]) -> Result<(), NodeError> {
        let r = reference.to_string();
        let in_use = in_use.to_vec();
        self.blocking(move |i| {
            let img = i.images.get(&r).map_err(image_err)?;
            if in_use.contains(&img.id) {
                return Err(NodeError::Conflict(format!(
                    "image {r} is used by a workspace; remove the workspace first"
                )));
            }
            i.images.remove(&img.id).map(|_| ()).map_err(image_err)
        })
        .await
    }

    async fn create(&self, spec: &WorkspaceSpec, progress: Progress) -> Result<(), NodeError> {
        self.create_at(spec, &crate::Revision::default(), progress)
            .await
    }

    async fn create_at(
        &self,
        spec: &WorkspaceSpec,
        rev: &crate::Revision,
        progress: Progress,
    ) -> Result<(), NodeError> {
        let (spec, rev) = (spec.clone(), rev.clone());
        self.blocking(move |i| i.create(&spec, &rev, &progress))
            .await
    }

    async fn start(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.start(&spec)).await
    }

    async fn stop(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let id = spec.id.clone();
        self.blocking(move |i| i.stop(&id, true)).await
    }

    async fn remove(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let id = spec.id.clone();
        self.blocking(move |i| {
            i.stop(&id, false)?;
            i.remove_files(&id)
        })
        .await
    }

    async fn status(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.status(&spec)).await
    }

    async fn statuses(&self, specs: &[WorkspaceSpec]) -> Vec<Result<WorkspaceStatus, NodeError>> {
        let specs = specs.to_vec();
        let n = specs.len();
        match self.blocking(move |i| Ok(i.statuses(&specs))).await {
            Ok(v) => v,
            Err(e) => (0..n)
                .map(|_| Err(NodeError::Internal(e.to_string())))
                .collect(),
        }
    }

    async fn set_egress(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| {
            if !i.net.has_network(&spec.id) {
                return Ok(());
            }
            i.host
                .apply_egress(&spec.id, spec.slot, &spec.egress.deny)?;
            tracing::info!(id = %spec.id, name = spec.name.as_str(), rules = spec.egress.deny.len(), "egress policy set");
            Ok(())
        })
        .await
    }

    async fn set_limits(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.set_limits(&spec)).await
    }

    fn cpu_views(&self) -> Vec<(WorkspaceId, crate::CpuView)> {
        self.inner
            .cpu
            .as_ref()
            .map(|c| c.views())
            .unwrap_or_default()
    }

    fn cpu_controller_stats(&self) -> Option<crate::CpuControllerStats> {
        self.cpu_stats()
    }

    async fn inspect(&self, spec: &WorkspaceSpec) -> Result<crate::WorkspaceDetails, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| inspect::inspect(i, &spec)).await
    }

    async fn metrics(
        &self,
        specs: &[WorkspaceSpec],
    ) -> Vec<(WorkspaceId, crate::WorkspaceMetrics)> {
        let ids: Vec<WorkspaceId> = specs.iter().map(|s| s.id.clone()).collect();
        self.blocking(move |i| Ok(inspect::metrics(i, &ids)))
            .await
            .unwrap_or_default()
    }

    async fn exec(&self, spec: &WorkspaceSpec, req: ExecRequest) -> Result<ExecSession, NodeError> {
        if req.argv.is_empty() {
            return Err(NodeError::Invalid("no command given".into()));
        }
        let socket = self.inner.paths(&spec.id).socket;
        if !socket.exists() {
            return Err(NodeError::Conflict(format!(
                "workspace {} is not running (hearth start {})",
                spec.name, spec.name
            )));
        }
        hearth_proto::client::exec(&socket, &req)
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::Other {
                    NodeError::Invalid(e.to_string())
                } else {
                    NodeError::Internal(format!("workspace {} agent: {e}", spec.name))
                }
            })
    }

    async fn logs(&self, spec: &WorkspaceSpec) -> Result<Vec<u8>, NodeError> {
        let id = spec.id.clone();
        self.blocking(move |i| {
            let p = i.paths(&id);
            i.consoles.flush(&id, Duration::from_millis(100));
            if let Some(b) = crate::console::tail(&p.console, LOG_MAX)
                .map_err(NodeError::io("read", &p.console))?
            {
                return Ok(b);
            }
            match std::fs::read(&p.legacy_console) {
                Ok(b) => Ok(b[b.len().saturating_sub(LOG_MAX)..].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(NodeError::io("read", &p.legacy_console)(e)),
            }
        })
        .await
    }

    async fn logs_since(
        &self,
        spec: &WorkspaceSpec,
        cursor: Option<LogCursor>,
    ) -> Result<(Vec<u8>, LogCursor), NodeError> {
        let id = spec.id.clone();
        self.blocking(move |i| {
            let p = i.paths(&id);
            i.consoles.flush(&id, Duration::from_millis(100));
            crate::console::since(&p.console, cursor, LOG_MAX)
                .map_err(NodeError::io("read", &p.console))
        })
        .await
    }

    async fn console_note(&self, spec: &WorkspaceSpec, line: &str) -> Result<(), NodeError> {
        let id = spec.id.clone();
        let line = line.to_string();
        self.blocking(move |i| {
            let p = i.paths(&id);
            i.consoles
                .note(&id, &p.console_fifo, &p.console, i.cfg.console, &line)
        })
        .await
    }

    async fn connect(
        &self,
        spec: &WorkspaceSpec,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, NodeError> {
        let socket = self.netns_socket(spec, addr).await?;
        let stream = socket
            .connect(addr)
            .await
            .map_err(|source| NodeError::Connect {
                workspace: spec.name.clone(),
                addr,
                source,
            })?;
        // Proxied traffic is mostly small request/response exchanges.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn listening_ports(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Vec<crate::ListeningPort>, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.listening_ports(&spec)).await
    }

    async fn listen(
        &self,
        spec: &WorkspaceSpec,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpListener, NodeError> {
        let socket = self.netns_socket(spec, addr).await?;
        let bind_err = |source| NodeError::Connect {
            workspace: spec.name.clone(),
            addr,
            source,
        };
        socket.set_reuseaddr(true).map_err(bind_err)?;
        socket.bind(addr).map_err(bind_err)?;
        socket.listen(1024).map_err(bind_err)
    }

    async fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(WorkspaceId, WorkspaceStatus)>, NodeError> {
        let known = known.to_vec();
        self.blocking(move |i| i.reconcile(&known)).await
    }

    async fn snapshot(&self, spec: &WorkspaceSpec) -> Result<crate::SnapshotSummary, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| {
            i.snapshot(&spec, false)?
                .ok_or_else(|| NodeError::Internal("snapshot was skipped".into()))
        })
        .await
    }

    async fn snapshot_if_changed(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Option<crate::SnapshotSummary>, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.snapshot(&spec, true)).await
    }

    async fn snapshots(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Vec<crate::SnapshotSummary>, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.snapshots(&spec)).await
    }

    async fn restore(&self, spec: &WorkspaceSpec, id: &str) -> Result<(), NodeError> {
        let spec = spec.clone();
        let id = id.to_string();
        self.blocking(move |i| i.restore(&spec, &id)).await
    }

    async fn store_fsck(&self) -> Result<crate::StoreCheck, NodeError> {
        self.blocking(|i| i.store_fsck()).await
    }

    async fn store_gc(
        &self,
        keep: Option<crate::Retention>,
    ) -> Result<crate::StoreGcReport, NodeError> {
        self.blocking(move |i| i.store_gc(keep)).await
    }

    async fn forget_snapshots(
        &self,
        spec: &WorkspaceSpec,
        keep: Option<crate::Retention>,
    ) -> Result<Vec<String>, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.forget_snapshots(&spec, keep))
            .await
    }

    async fn store_usage(&self, spec: &WorkspaceSpec) -> Result<crate::StoreUsage, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.store_usage(&spec)).await
    }

    async fn teardown(&self) -> Result<(), NodeError> {
        self.blocking(|i| i.teardown()).await
    }
}
