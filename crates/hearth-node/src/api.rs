use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub use hearth_net::{Cidr, ConnLimits, EgressConfig, EgressRule, MAX_EGRESS_RULES};
pub use hearth_proto::client::ExecSession;
pub use hearth_proto::ExecRequest;
pub use hearth_types::{InvalidId, WorkspaceId};
use serde::{Deserialize, Serialize};

/// Progress lines for long steps (image load, clone); the receiver shows them as they come.
pub type Progress = tokio::sync::mpsc::UnboundedSender<String>;

/// Width of every workspace's uid/gid range.
pub const ID_RANGE: u32 = 65536;

/// Host uid of slot 0; slots are `ID_RANGE` apart, above any ids a distribution hands out.
pub const ID_BASE: u32 = 1 << 20;

/// Everything the node needs to know about a workspace; the control plane stores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkspaceSpec {
    /// Stable id (12 hex digits from the control plane); names host resources (netns,
    /// cgroups, dirs). Validated when a spec is built or read.
    pub id: WorkspaceId,
    pub name: String,
    /// Image id (config digest, `sha256:...`), resolved by the control plane at create.
    pub image: String,
    /// Git URL or local repository path, cloned at create.
    pub source: String,
    /// Slot number, unique per node: uid base is `ID_BASE + slot * ID_RANGE` and the
    /// network address is derived from it.
    pub slot: u32,
    pub limits: Limits,
    /// Outbound policy; absent in records and `spec.json` files older than it.
    #[serde(default)]
    pub egress: EgressPolicy,
    /// Placement generation: the control plane bumps it each time it places the
    /// workspace on a node (create, move, recovery from a lost node). A node never writes
    /// a snapshot for a generation older than the store's newest one of the workspace, so
    /// a node that was cut off and comes back cannot overwrite the newer history. 0 in
    /// records and `spec.json` files older than it.
    #[serde(default)]
    pub generation: u64,
}

/// A workspace's outbound policy: everything is allowed except `deny`. The node's own
/// denials (its addresses, link-local, operator extras) apply on top and cannot be lifted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Canonical `CIDR[:PORT[-PORT][/tcp|/udp]]` strings on the wire and on disk.
    #[serde(default, with = "rule_strings")]
    pub deny: Vec<EgressRule>,
}

impl EgressPolicy {
    /// Parses user input; duplicates are dropped, and bad rules or more than
    /// [`MAX_EGRESS_RULES`] are an [`NodeError::Invalid`] naming the problem.
    pub fn parse<S: AsRef<str>>(deny: &[S]) -> Result<EgressPolicy, NodeError> {
        hearth_net::egress::parse_rules(deny)
            .map(|deny| EgressPolicy { deny })
            .map_err(|e| NodeError::Invalid(e.to_string()))
    }

    pub fn deny_strings(&self) -> Vec<String> {
        self.deny.iter().map(ToString::to_string).collect()
    }
}

mod rule_strings {
    use hearth_net::EgressRule;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rules: &[EgressRule], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(rules.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EgressRule>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        hearth_net::egress::parse_rules(&raw).map_err(serde::de::Error::custom)
    }
}

impl WorkspaceSpec {
    pub fn uid_base(&self) -> u32 {
        ID_BASE + self.slot * ID_RANGE
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// cgroup v2 semantics (1..=10000, default 100); mapped to shares on v1.
    pub cpu_weight: u64,
    /// Size of the workspace's private disk (everything it writes, `/workspace`
    /// included). Fixed at create.
    #[serde(default = "default_disk_bytes")]
    pub disk_bytes: u64,
    /// Class limit in thousandths of a core (1500 = 1.5 cores) that holds over the long
    /// run (a CFS quota once the CPU controller demotes the workspace, or always under
    /// [`CpuControl::Static`]); 0 = none. Absent in records older than it.
    #[serde(default)]
    pub cpus_milli: u64,
}

pub const DEFAULT_DISK_BYTES: u64 = 20 << 30;
pub const MIN_DISK_BYTES: u64 = hearth_disk::MIN_SIZE;
pub const MAX_DISK_BYTES: u64 = hearth_disk::MAX_SIZE;

fn default_disk_bytes() -> u64 {
    DEFAULT_DISK_BYTES
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 4 << 30,
            pids: 4096,
            cpu_weight: 100,
            disk_bytes: DEFAULT_DISK_BYTES,
            cpus_milli: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
    /// The node has no local data for this workspace.
    Missing,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkspaceStatus {
    pub state: RunState,
    /// Host pid of the agent (PID 1 inside) while running.
    pub pid: Option<u32>,
    pub ip: Option<Ipv4Addr>,
    /// Why the node holds it frozen (its disk is under the reserve), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
}

/// Which revision of its source a workspace's clone checks out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// The branch cloned and checked out; the source's default branch when `None`.
    pub branch: Option<String>,
    /// The commit that branch is reset to in the clone (the one its devcontainer.json was
    /// read from); the branch's tip when `None`.
    pub commit: Option<String>,
}

/// A repository's devcontainer.json, as [`NodeApi::devcontainer_config`] read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoConfig {
    /// Repository-relative path, e.g. `.devcontainer/devcontainer.json`.
    pub path: String,
    pub text: String,
    /// The commit it was read from.
    pub commit: String,
}

/// What a Dockerfile build reads from a repository at a commit, as
/// [`NodeApi::build_inputs`] found it: enough to tell whether an earlier build of it
/// would come out the same, without building.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildInputs {
    /// The Dockerfile's text (its base images are named there).
    pub dockerfile: String,
    /// The git tree id of the build context directory: changes with any file in it.
    pub context_tree: String,
}

/// Where a follower of a workspace's console log is: a console file (by inode, so
/// rotation does not lose it) and an offset in it. Opaque to the control plane.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogCursor {
    pub inode: u64,
    pub offset: u64,
}

/// A TCP socket listening inside a workspace.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListeningPort {
    pub port: u16,
    /// What it is bound to: `127.0.0.1`/`::1` (loopback only), `0.0.0.0`/`::` or an address.
    pub address: std::net::IpAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageSummary {
    /// `sha256:<hex>` of the image config.
    pub id: String,
    pub names: Vec<String>,
    /// Sum of unpacked layer sizes, bytes.
    pub size: u64,
    pub layers: usize,
    /// RFC 3339 time of the load.
    pub loaded_at: String,
    /// The config's `User` (`None`: unset, root): who sessions run as by default.
    #[serde(default)]
    pub user: Option<String>,
}

/// Registry credentials for a pull; the password never shows in debug output.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the node knows about one workspace's host resources, for `hearth inspect`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceDetails {
    pub state: RunState,
    /// Host pid of the agent while running.
    pub pid: Option<u32>,
    /// First host uid/gid of the workspace's range (root inside).
    pub uid_base: u32,
    /// Ids in the range: host ids `uid_base..uid_base + id_count`.
    pub id_count: u32,
    /// The workspace's group directory in every cgroup hierarchy; empty while stopped.
    pub cgroups: Vec<PathBuf>,
    pub limits: Limits,
    /// Present while the workspace has a network namespace (kept across stops).
    pub network: Option<NetworkDetails>,
    pub usage: Usage,
    pub egress: EgressDetails,
    /// Why the node holds the workspace frozen (its disk is under the reserve), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Processes the OOM killer killed in the workspace while this node ran, newest last
    /// (at most 16).
    #[serde(default)]
    pub oom_kills: Vec<OomKill>,
    /// The CPU controller's view, while running and controlled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuView>,
    /// Large files of a restore still being fetched from its snapshot, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydration: Option<HydrationStatus>,
}

/// A restored workspace's files still being fetched: it runs meanwhile, and opening a
/// file not fetched yet waits until it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HydrationStatus {
    /// The snapshot being restored.
    pub snapshot: String,
    /// Whether the node is fetching now (else it resumes at the next start).
    pub active: bool,
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Fetches that failed (each is retried).
    pub failures: u64,
    pub last_error: Option<String>,
}

/// One running workspace's counters for `/metrics`; `None` where the host lacks the
/// controller or file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceMetrics {
    /// CPU time used since start, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    pub cpu: hearth_cgroups::CpuCounters,
    pub memory: hearth_cgroups::MemoryStats,
    pub pids: Option<u64>,
}

/// A process of a workspace the kernel's OOM killer killed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OomKill {
    /// RFC 3339 time the node read the kill from the kernel log.
    pub at: String,
    /// Its pid inside the workspace, when the node could still read it (the process is
    /// dying when the kernel reports it).
    pub pid: Option<u32>,
    /// Its pid on the host, as the kernel reported it.
    pub host_pid: u32,
    /// Its command name (the kernel's `comm`, at most 15 bytes).
    pub process: String,
    /// The memory limit that was hit (a cgroup's, usually the workspace's own); `None`
    /// when the whole host ran out of memory.
    pub limit_bytes: Option<u64>,
}

/// How the node manages the CPU of workspaces (`hearth server --cpu-control`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum CpuControl {
    /// The control loop: light workspaces get free CPU at once, long hogs are demoted.
    #[default]
    Hearth,
    /// Every workspace keeps its fixed weight (what Hearth did before the controller).
    Off,
    /// Baseline for `hearth bench cpu`: a CFS quota of `--cpus` (or one core) for every
    /// workspace, always, as Kubernetes CPU limits do.
    Static,
    /// Baseline for `hearth bench cpu`: Gitpod ws-daemon's 15 s loop of CPU-time budgets
    /// counted from when the workspace was first seen, applied as CFS quota.
    Gitpod,
}

impl CpuControl {
    pub const ALL: [CpuControl; 4] = [
        CpuControl::Hearth,
        CpuControl::Off,
        CpuControl::Static,
        CpuControl::Gitpod,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CpuControl::Hearth => "hearth",
            CpuControl::Off => "off",
            CpuControl::Static => "static",
            CpuControl::Gitpod => "gitpod",
        }
    }
}

impl std::fmt::Display for CpuControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CpuControl {
    type Err = NodeError;
    fn from_str(s: &str) -> Result<Self, NodeError> {
        CpuControl::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                NodeError::Invalid(format!(
                    "unknown cpu control {s:?}: pick hearth, off, static or gitpod"
                ))
            })
    }
}

/// What the CPU controller made of a workspace.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum CpuClass {
    /// Light or idle lately: its weight, no quota, not idle; a burst gets free CPU at once.
    Interactive,
    /// Saturated cores until its budget ran out: `cpu.idle` (runs on CPU nobody else
    /// wants), plus its `--cpus` quota if it has one. Recovers while quiet.
    Batch,
    /// A fixed quota from a baseline policy (static, gitpod).
    Limited,
    /// The controller is off: the fixed weight.
    Unmanaged,
}

impl CpuClass {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuClass::Interactive => "interactive",
            CpuClass::Batch => "batch",
            CpuClass::Limited => "limited",
            CpuClass::Unmanaged => "unmanaged",
        }
    }
}

/// The CPU controller's current view of one running workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuView {
    pub class: CpuClass,
    /// cgroup v2 weight in force (v1: shares / 10.24).
    pub weight: u64,
    /// The CFS quota in force, thousandths of a core; `None` = no quota.
    pub quota_millicores: Option<u64>,
    /// Whether the group is SCHED_IDLE (`cpu.idle=1`).
    pub idle: bool,
    /// Recent CPU use (about the last second), thousandths of a core.
    pub usage_millicores: u64,
    /// CPU-ms the workspace may still use above the light rate before it is demoted
    /// (or, demoted, how far it has recovered).
    pub budget_ms: u64,
    /// Time spent throttled by the quota, since the workspace started.
    pub throttled_us_total: u64,
    /// Share of the last ~10 s in which some task of the workspace waited for a CPU,
    /// percent; `None` where the kernel has no PSI for the group.
    pub pressure_some_avg10: Option<f64>,
    /// RFC 3339 time of the last class change (or of registration).
    pub since: String,
}

/// The controller's own cost and activity, for `hearth bench cpu` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuControllerStats {
    pub policy: CpuControl,
    /// Time between ticks.
    pub interval_ms: u64,
    pub ticks: u64,
    /// CPU time the loop thread used (user + system) since it started.
    pub cpu_ns: u64,
    /// Workspaces under control now.
    pub workspaces: usize,
    /// cgroup files written since start (the loop writes only what changed).
    pub writes: u64,
}

/// The egress policy in force for a workspace, as the node applies it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressDetails {
    /// The workspace's own deny rules.
    pub deny: Vec<String>,
    /// Destinations no workspace on this node can reach, whatever its policy.
    pub node_deny: Vec<String>,
    /// New outbound connections per second, sustained.
    pub rate: u32,
    /// New connections allowed at once above the rate.
    pub burst: u32,
    /// Concurrently tracked outbound connections.
    pub max_conns: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkDetails {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    /// Host end of the veth pair, when it is on the bridge.
    pub host_veth: Option<String>,
    pub netns: PathBuf,
}

/// Current resource use; cgroup counters are `None` while stopped or where the host lacks
/// the controller.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    /// Total CPU time used since start.
    pub cpu_ns: Option<u64>,
    /// CPU use over a short sample, 100 = one core busy.
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Where the kernel starts reclaiming the workspace's memory (and, on cgroup v2,
    /// throttling it): [`hearth_cgroups::memory_high`] of the limit.
    #[serde(default)]
    pub memory_high_bytes: Option<u64>,
    /// OOM kills in the workspace since it started, as its memory cgroup counts them.
    #[serde(default)]
    pub oom_kill_count: Option<u64>,
    pub pids: Option<u64>,
    /// Used bytes of the workspace's disk (its files plus filesystem metadata).
    pub disk_bytes: u64,
    /// Usable size of the disk: writes beyond it fail with ENOSPC inside the workspace.
    pub disk_size: u64,
}

/// What a node has room for, as it reports it to the scheduler (`hearth node ls`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeCapacity {
    /// CPUs this process may run on.
    pub cpus: u32,
    pub memory_total: u64,
    /// The kernel's estimate of memory available without swapping (`MemAvailable`).
    pub memory_available: u64,
    /// Size of the data dir's filesystem.
    pub disk_total: u64,
    /// What an unprivileged writer could still allocate there.
    pub disk_free: u64,
    /// Free space the node keeps (creates and starts are refused below it); 0 = none.
    pub disk_reserve: u64,
    /// Workspaces with local data here, and how many of them run.
    pub workspaces: u32,
    pub running: u32,
}

/// Node configuration; `hearth server` fills it from flags.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// Bridge name, also the prefix of iptables chains; tests use their own.
    pub bridge: String,
    /// IPv4 subnet of the bridge, e.g. 10.88.0.0/16; the gateway takes .1.
    pub subnet: String,
    /// Parent cgroup name under each hierarchy.
    pub cgroup_parent: String,
    /// OCI runtime binary: `crun`, `runc`, or a path; `None` picks crun if it works.
    pub runtime: Option<String>,
    /// The static agent binary to put in workspaces.
    pub agent_binary: PathBuf,
    /// Where snapshots go; the default is a local store under the data dir.
    pub snapshots: crate::SnapshotSettings,
    /// Node-wide egress denials and per-workspace connection limits.
    pub egress: EgressConfig,
    /// Free space to keep on the data dir's filesystem (see `local/guard.rs`); `None` is
    /// 5 % of it within 1..20 GiB, `Some(0)` turns the guard off.
    pub disk_reserve: Option<u64>,
    /// How much of each workspace's console output is kept (on its own disk).
    pub console: crate::ConsoleLimits,
    /// Process priority classes inside workspaces (`--priority-rules`).
    pub priority: crate::PriorityRules,
    /// Which CPU policy runs over the workspaces.
    pub cpu_control: CpuControl,
    /// Time between CPU controller ticks (100 ms by default; Gitpod's loop uses 15 s
    /// whatever this says).
    pub cpu_interval: std::time::Duration,
}

/// The CPU controller's default tick: 10 Hz.
pub const DEFAULT_CPU_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// A node failure. The first five carry a message the node wrote for the user; the rest
/// keep the failing library's error as their source. Callers decide by [`NodeError::kind`]
/// (the server maps it to an HTTP status); `Display` is the one-line message users see.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
    /// The node cannot be reached (a remote node's connection is down or did not answer
    /// in time); the call may or may not have run there.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Runtime(#[from] hearth_runtime::RuntimeError),
    #[error(transparent)]
    Net(#[from] hearth_net::NetError),
    #[error(transparent)]
    Cgroups(#[from] hearth_cgroups::CgroupError),
    #[error("workspace disk: {0}")]
    Disk(#[from] hearth_disk::DiskError),
    #[error(transparent)]
    Image(#[from] hearth_image::ImageError),
    #[error("pull of {reference} failed: {source}")]
    Pull {
        reference: String,
        #[source]
        source: hearth_image::ImageError,
    },
    #[error("{context}: {source}")]
    Snapshot {
        context: String,
        #[source]
        source: hearth_snapshot::SnapshotError,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A connection made inside a workspace failed; most often nothing listens there
    /// (`source` is then `ConnectionRefused`).
    #[error("workspace {workspace}: cannot connect to {addr}: {source}")]
    Connect {
        workspace: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a caller can do about a [`NodeError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named thing does not exist.
    NotFound,
    /// The request itself is wrong; retrying it unchanged fails again.
    Invalid,
    /// The request clashes with the current state (in use, running, too little space).
    Conflict,
    /// The node or host failed.
    Internal,
    /// The node is not reachable now; the same call may succeed once it is back.
    Unavailable,
}

impl NodeError {
    pub fn kind(&self) -> ErrorKind {
        use hearth_disk::DiskError as D;
        use hearth_image::ImageError as I;
        use hearth_net::NetError as N;
        use hearth_snapshot::SnapshotError as S;
        match self {
            NodeError::NotFound(_) => ErrorKind::NotFound,
            NodeError::Invalid(_) => ErrorKind::Invalid,
            NodeError::Conflict(_) | NodeError::Connect { .. } => ErrorKind::Conflict,
            NodeError::Unavailable(_) => ErrorKind::Unavailable,
            NodeError::Internal(_)
            | NodeError::Runtime(_)
            | NodeError::Cgroups(_)
            | NodeError::Pull { .. }
            | NodeError::Io { .. } => ErrorKind::Internal,
            NodeError::Net(e) => match e {
                N::InvalidBridge { .. }
                | N::InvalidSubnet { .. }
                | N::InvalidEgressRule { .. }
                | N::TooManyEgressRules { .. }
                | N::InvalidLimits { .. }
                | N::SlotOutOfRange { .. } => ErrorKind::Invalid,
                _ => ErrorKind::Internal,
            },
            NodeError::Disk(e) => match e {
                D::Size { .. } | D::Shrink { .. } | D::MissingTool { .. } => ErrorKind::Invalid,
                _ => ErrorKind::Internal,
            },
            NodeError::Image(e) => match e {
                I::NotFound(_) => ErrorKind::NotFound,
                I::Ambiguous { .. }
                | I::InvalidName { .. }
                | I::Invalid { .. }
                | I::DigestMismatch { .. }
                | I::SizeMismatch { .. }
                | I::Entry { .. }
                | I::Unauthorized { .. }
                | I::InsecureRegistry { .. } => ErrorKind::Invalid,
                _ => ErrorKind::Internal,
            },
            NodeError::Snapshot { source, .. } => match source {
                S::NotFound(_) | S::BadId(_) => ErrorKind::NotFound,
                S::Busy { .. } => ErrorKind::Conflict,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// For `map_err`: an I/O failure of `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| NodeError::Io { op, path, source }
    }
}

/// A pull [`NodeApi::check_pull`] allowed: the reference, its credentials and, from a
/// node that resolved it, the registry's manifest, so the pull does not ask again.
#[derive(Debug)]
pub struct PullPlan {
    reference: String,
    auth: Option<RegistryAuth>,
    pub(crate) resolved: Option<Box<hearth_image::ResolvedPull>>,
}

impl PullPlan {
    /// A plan nothing was resolved for yet (the pull resolves it itself).
    pub fn new(reference: &str, auth: Option<RegistryAuth>) -> PullPlan {
        PullPlan {
            reference: reference.to_string(),
            auth,
            resolved: None,
        }
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    pub fn auth(&self) -> Option<&RegistryAuth> {
        self.auth.as_ref()
    }
}

/// The contract between the control plane and a node.
///
/// Calls are idempotent where it matters for crash recovery: `stop` on a stopped
/// workspace and `remove` on a missing one succeed.
#[async_trait::async_trait]
pub trait NodeApi: Send + Sync + 'static {
    async fn load_image(
        &self,
        path: PathBuf,
        name: Option<String>,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError>;
    /// Pulls what [`NodeApi::check_pull`] resolved and names the image after its reference.
    async fn pull_image(
        &self,
        plan: PullPlan,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError>;
    async fn images(&self) -> Result<Vec<ImageSummary>, NodeError>;
    /// CPUs, memory and disk of the host, and the workspaces it holds now: what the
    /// control plane places new workspaces by.
    async fn capacity(&self) -> Result<NodeCapacity, NodeError>;
    /// Which of `diff_ids` (`sha256:<hex>`) the image store holds unpacked: a build sends
    /// only the other layers of its result. The default knows none, so everything is sent.
    async fn known_layers(&self, diff_ids: &[String]) -> Result<Vec<String>, NodeError> {
        let _ = diff_ids;
        Ok(Vec::new())
    }
    /// Fetches devcontainer features (and what they depend on) from their registries,
    /// orders them, and makes the build context installing them on `req.base_image`
    /// (see [`crate::features`]). Nothing is written to disk; the build runs elsewhere.
    async fn feature_context(
        &self,
        req: crate::features::FeatureRequest,
    ) -> Result<crate::features::FeaturePlan, NodeError> {
        let _ = req;
        Err(NodeError::Invalid(
            "this node cannot install devcontainer features".into(),
        ))
    }

    /// What a `load_image` of `path` can be refused for before it starts: the path is a
    /// regular file or a directory (opened without blocking), the name is valid, the disk
    /// has room above its reserve. Callers answer with it before streaming progress.
    async fn check_load(&self, path: &Path, name: Option<&str>) -> Result<(), NodeError> {
        let _ = (path, name);
        Ok(())
    }
    /// Likewise for `create`: the source is usable, the disk size fits the data dir's
    /// filesystem, free space is above the reserve.
    async fn check_create(&self, source: &str, limits: &Limits) -> Result<(), NodeError> {
        let _ = (source, limits);
        Ok(())
    }
    /// The devcontainer.json of the tip of `source`'s `branch` (the default branch when
    /// `None`), `name` choosing `.devcontainer/<name>/devcontainer.json`; `None` when it
    /// has none. Read from git objects as an unprivileged uid, never from a checkout on
    /// this host, so a source gives the control plane nothing the workspace's own clone
    /// could not read.
    async fn devcontainer_config(
        &self,
        source: &str,
        branch: Option<&str>,
        name: Option<&str>,
    ) -> Result<Option<RepoConfig>, NodeError> {
        let _ = (source, branch, name);
        Ok(None)
    }
    /// The newest of `bases` (commits, newest first) that is an ancestor of `commit` on
    /// `source`'s `branch`, with a git bundle of what `commit` adds to it (its tip under
    /// `refs/heads/hearth-update`), for bringing a prebuild's clone up to date inside the
    /// workspace; `None` when no base is an ancestor or the bundle is over `max` bytes.
    async fn update_bundle(
        &self,
        source: &str,
        branch: Option<&str>,
        commit: &str,
        bases: &[String],
        max: u64,
    ) -> Result<Option<(String, Vec<u8>)>, NodeError> {
        let _ = (source, branch, commit, bases, max);
        Ok(None)
    }
    /// What building `dockerfile` with context directory `context` (repository-relative)
    /// at `commit` of `source`'s `branch` reads from the repository; fetched from git
    /// objects as an unprivileged uid like [`NodeApi::devcontainer_config`], no blob but
    /// the Dockerfile's.
    async fn build_inputs(
        &self,
        source: &str,
        branch: Option<&str>,
        commit: &str,
        dockerfile: &str,
        context: &str,
    ) -> Result<BuildInputs, NodeError> {
        let _ = (branch, commit, dockerfile, context);
        Err(NodeError::Invalid(format!(
            "this node cannot read the build inputs of {source}"
        )))
    }
    /// The user's dotfiles repository `url` for the running workspace `spec`, cloned by the
    /// node as the workspace's root uid (no git needed in the image) and handed back as a
    /// tar archive (owners and times left out) that the server unpacks inside as the
    /// workspace's user. At most 64 MiB.
    async fn dotfiles_archive(
        &self,
        spec: &WorkspaceSpec,
        url: &str,
    ) -> Result<Vec<u8>, NodeError> {
        let _ = url;
        Err(NodeError::Invalid(format!(
            "workspace {}: this node cannot clone dotfiles",
            spec.name
        )))
    }

    /// `commit` of `source` as a tar of its files (`git archive`, fetched as an unprivileged
    /// uid like [`NodeApi::devcontainer_config`]): a build context that never was a
    /// checkout on this host.
    async fn repo_archive(&self, source: &str, commit: &str) -> Result<std::fs::File, NodeError> {
        let _ = commit;
        Err(NodeError::Invalid(format!(
            "this node cannot archive {source}"
        )))
    }
    /// A stored image as an oci-archive (see `hearth_image::ImageStore::export_oci_archive`)
    /// named `name` in it, in an unlinked temporary file read from the start: how a builder
    /// gets its base images. An empty `name` exports the config exactly as stored
    /// (`export_oci_archive_exact`), so a load elsewhere gives the same image id: how an
    /// image follows a workspace to another node.
    async fn export_image(&self, reference: &str, name: &str) -> Result<std::fs::File, NodeError> {
        let _ = name;
        Err(NodeError::Invalid(format!(
            "this node cannot export image {reference}"
        )))
    }
    /// Likewise for `pull_image`: the reference parses, there is room, and the registry
    /// has the image (its manifest is fetched, so a missing image or refused credentials
    /// are a not-found or invalid error here, not in the middle of the pull).
    async fn check_pull(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<PullPlan, NodeError> {
        Ok(PullPlan::new(reference, auth))
    }
    /// By name (`busybox`, `busybox:latest`) or id / unique id prefix.
    async fn resolve_image(&self, reference: &str) -> Result<ImageSummary, NodeError>;
    /// `in_use` lists image ids of existing workspaces; removing one of those is a conflict.
    async fn remove_image(&self, reference: &str, in_use: &[String]) -> Result<(), NodeError>;

    /// Prepares local storage and clones the source; on error leaves nothing behind.
    async fn create(&self, spec: &WorkspaceSpec, progress: Progress) -> Result<(), NodeError>;
    /// [`NodeApi::create`] with the clone at `rev` (a branch, and the commit the control
    /// plane read the devcontainer.json from).
    async fn create_at(
        &self,
        spec: &WorkspaceSpec,
        rev: &Revision,
        progress: Progress,
    ) -> Result<(), NodeError> {
        let _ = rev;
        self.create(spec, progress).await
    }
    /// Starts the workspace and returns once its agent answers.
    async fn start(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError>;
    async fn stop(&self, spec: &WorkspaceSpec) -> Result<(), NodeError>;
    /// Removes every trace: processes, mounts, cgroups, netns, veth, files.
    async fn remove(&self, spec: &WorkspaceSpec) -> Result<(), NodeError>;
    async fn status(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError>;
    /// [`NodeApi::status`] of many workspaces in one call (a listing), in `specs` order.
    async fn statuses(&self, specs: &[WorkspaceSpec]) -> Vec<Result<WorkspaceStatus, NodeError>> {
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            out.push(self.status(spec).await);
        }
        out
    }
    /// Applies `spec.egress` to the workspace's network now, if it has one (it is applied
    /// on every start anyway). Atomic: on error the previous policy stays in force.
    async fn set_egress(&self, spec: &WorkspaceSpec) -> Result<(), NodeError>;
    /// Applies `spec.limits` now: grows the disk (never shrinks it) and changes the cgroup
    /// limits of a running workspace (a stopped one gets them at its next start).
    async fn set_limits(&self, spec: &WorkspaceSpec) -> Result<(), NodeError>;
    /// Host resources and current usage; takes a short CPU sample while running.
    async fn inspect(&self, spec: &WorkspaceSpec) -> Result<WorkspaceDetails, NodeError>;
    /// Counters of those of `specs` that run here (no sampling wait), for `/metrics`.
    async fn metrics(&self, specs: &[WorkspaceSpec]) -> Vec<(WorkspaceId, WorkspaceMetrics)> {
        let _ = specs;
        Vec::new()
    }
    /// The CPU controller's view of every workspace it controls (for `/metrics`).
    fn cpu_views(&self) -> Vec<(WorkspaceId, CpuView)> {
        Vec::new()
    }
    /// The CPU controller's own cost; `None` where there is no controller.
    fn cpu_controller_stats(&self) -> Option<CpuControllerStats> {
        None
    }
    async fn exec(&self, spec: &WorkspaceSpec, req: ExecRequest) -> Result<ExecSession, NodeError>;
    /// The agent's console output (stdout/stderr of PID 1), newest last.
    async fn logs(&self, spec: &WorkspaceSpec) -> Result<Vec<u8>, NodeError>;
    /// Console output after `cursor` (`None`: the tail [`NodeApi::logs`] gives), at most
    /// 1 MiB, and the cursor after it: what `hearth logs -f` polls.
    async fn logs_since(
        &self,
        spec: &WorkspaceSpec,
        cursor: Option<LogCursor>,
    ) -> Result<(Vec<u8>, LogCursor), NodeError> {
        let _ = cursor;
        Err(NodeError::Unavailable(format!(
            "this node cannot follow the console of workspace {}",
            spec.name
        )))
    }
    /// Adds a line from the control plane (`[hearth TIME] LINE`) to the console log, so
    /// `logs` shows why the server acted on the workspace (an idle stop) among its output.
    /// A workspace without a console log yet gets none.
    async fn console_note(&self, spec: &WorkspaceSpec, line: &str) -> Result<(), NodeError> {
        let _ = (spec, line);
        Ok(())
    }
    /// A TCP connection to `addr` made inside the running workspace's network namespace,
    /// so `127.0.0.1` is the workspace's own loopback: how the SSH gateway's forwards and
    /// the port proxy reach services inside. A failed connect is [`NodeError::Connect`];
    /// callers bound the wait (a dropped SYN waits for the kernel's timeout).
    async fn connect(
        &self,
        spec: &WorkspaceSpec,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, NodeError> {
        let _ = addr;
        Err(no_ports(spec))
    }
    /// The TCP ports listening inside the running workspace (any address: its loopback,
    /// its own address or all), as of now.
    async fn listening_ports(&self, spec: &WorkspaceSpec) -> Result<Vec<ListeningPort>, NodeError> {
        Err(no_ports(spec))
    }
    /// A listener bound to `addr` inside the running workspace's network namespace (for
    /// remote forwards into the workspace's own network).
    async fn listen(
        &self,
        spec: &WorkspaceSpec,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpListener, NodeError> {
        let _ = addr;
        Err(no_ports(spec))
    }
    /// Brings the host in line with `known` after a restart or crash: cleans half-done
    /// starts and stops, removes resources of workspaces not in `known`, never deletes
    /// data of a workspace in `known`. Returns each known workspace's status.
    async fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(WorkspaceId, WorkspaceStatus)>, NodeError>;
    /// Removes host-wide resources (bridge, firewall chains) after all workspaces are
    /// stopped; used by `hearth node teardown` and tests.
    async fn teardown(&self) -> Result<(), NodeError>;

    /// Snapshots the workspace's files (frozen for the duration while running),
    /// incrementally on top of its latest snapshot.
    async fn snapshot(&self, spec: &WorkspaceSpec) -> Result<crate::SnapshotSummary, NodeError> {
        Err(no_snapshots(spec))
    }
    /// Like [`NodeApi::snapshot`], but `None` when nothing changed since the last one.
    async fn snapshot_if_changed(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Option<crate::SnapshotSummary>, NodeError> {
        self.snapshot(spec).await.map(Some)
    }
    /// The workspace's snapshots, oldest first.
    async fn snapshots(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Vec<crate::SnapshotSummary>, NodeError> {
        Err(no_snapshots(spec))
    }
    /// Creates the local data of `spec` (which must have none) from snapshot `id` of any
    /// workspace, with owners mapped into `spec`'s id range.
    async fn restore(&self, spec: &WorkspaceSpec, id: &str) -> Result<(), NodeError> {
        let _ = id;
        Err(no_snapshots(spec))
    }
    /// Verifies every snapshot and chunk in the store.
    async fn store_fsck(&self) -> Result<crate::StoreCheck, NodeError> {
        Err(NodeError::Invalid("this node has no snapshot store".into()))
    }
    /// Forgets snapshots outside `keep` (when given) and deletes unreferenced chunks.
    async fn store_gc(
        &self,
        keep: Option<crate::Retention>,
    ) -> Result<crate::StoreGcReport, NodeError> {
        let _ = keep;
        Err(NodeError::Invalid("this node has no snapshot store".into()))
    }
    /// Forgets the workspace's snapshots: all of them (`keep` `None`: a purge) or those
    /// outside `keep`. Returns the forgotten ids; their chunks go at the next `store_gc`.
    async fn forget_snapshots(
        &self,
        spec: &WorkspaceSpec,
        keep: Option<crate::Retention>,
    ) -> Result<Vec<String>, NodeError> {
        let _ = keep;
        Err(no_snapshots(spec))
    }
    /// What the workspace's snapshots hold in the store.
    async fn store_usage(&self, spec: &WorkspaceSpec) -> Result<crate::StoreUsage, NodeError> {
        Err(no_snapshots(spec))
    }
}

fn no_ports(spec: &WorkspaceSpec) -> NodeError {
    NodeError::Invalid(format!(
        "workspace {}: this node cannot reach workspace ports",
        spec.name
    ))
}

fn no_snapshots(spec: &WorkspaceSpec) -> NodeError {
    NodeError::Invalid(format!(
        "workspace {}: this node has no snapshot store",
        spec.name
    ))
}

/// Checks an image name (`busybox`, `team/app:1`) as the store will take it.
pub fn check_image_name(name: &str) -> Result<(), NodeError> {
    hearth_image::normalize_name(name)
        .map(drop)
        .map_err(NodeError::from)
}

/// Whether an image reference names a registry (`host.tld/...`, `host:port/...`,
/// `localhost/...`), docker's rule; `hearth up` pulls only those when missing, so a typo in
/// a local name never turns into a registry request.
pub fn is_registry_reference(reference: &str) -> bool {
    let r = reference
        .strip_prefix("https://")
        .or_else(|| reference.strip_prefix("http://"))
        .unwrap_or(reference);
    match r.split_once('/') {
        Some((host, rest)) => {
            !rest.is_empty() && (host.contains('.') || host.contains(':') || host == "localhost")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn io_errors_name_op_and_path_and_keep_their_cause() {
        let e = NodeError::io("write", "/data/ws/spec.json")(std::io::Error::from_raw_os_error(
            libc::ENOSPC,
        ));
        assert_eq!(
            e.to_string(),
            "write /data/ws/spec.json: No space left on device (os error 28)"
        );
        assert_eq!(e.kind(), ErrorKind::Internal);
        let src = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(src.and_then(|s| s.raw_os_error()), Some(libc::ENOSPC));
    }

    #[test]
    fn library_errors_keep_their_message_and_get_a_kind() {
        let cases: Vec<(NodeError, ErrorKind, &str)> = vec![
            (
                hearth_net::NetError::TooManyEgressRules { count: 9, max: 8 }.into(),
                ErrorKind::Invalid,
                "too many egress rules: 9 (at most 8)",
            ),
            (
                hearth_disk::DiskError::Shrink {
                    size: 1,
                    current: 2,
                }
                .into(),
                ErrorKind::Invalid,
                "workspace disk: disks only grow: 1 bytes is less than the current 2",
            ),
            (
                hearth_image::ImageError::Ambiguous {
                    reference: "ab".into(),
                    count: 2,
                }
                .into(),
                ErrorKind::Invalid,
                "image reference ab is ambiguous: it matches 2 images",
            ),
            (
                NodeError::Snapshot {
                    context: "store /s".into(),
                    source: hearth_snapshot::SnapshotError::Busy {
                        location: "/s".into(),
                        reason: "gc running".into(),
                    },
                },
                ErrorKind::Conflict,
                "store /s: store /s is busy: gc running",
            ),
            (
                NodeError::Snapshot {
                    context: "workspace w".into(),
                    source: hearth_snapshot::SnapshotError::NotFound("s1".into()),
                },
                ErrorKind::NotFound,
                "workspace w: snapshot s1 not found",
            ),
            (
                hearth_cgroups::CgroupError::Busy {
                    id: "ab".into(),
                    pids: vec![7],
                }
                .into(),
                ErrorKind::Internal,
                "cgroup ab still has processes [7]",
            ),
        ];
        for (e, kind, msg) in cases {
            assert_eq!((e.kind(), e.to_string().as_str()), (kind, msg), "{e:?}");
        }
    }

    #[test]
    fn registry_references_need_a_host() {
        assert!(is_registry_reference("127.0.0.1:5000/busybox:latest"));
        assert!(is_registry_reference("localhost/team/img"));
        assert!(is_registry_reference("docker.io/library/debian:12"));
        assert!(is_registry_reference("http://127.0.0.1:5000/x"));
        assert!(!is_registry_reference("busybox"));
        assert!(!is_registry_reference("busybox:latest"));
        assert!(!is_registry_reference("team/img:1"));
        assert!(!is_registry_reference("sha256:abcd"));
        assert!(!is_registry_reference("example.com/"));
    }

    #[test]
    fn egress_policies_round_trip_as_strings() {
        let p = EgressPolicy::parse(&["10.0.0.0/8", "1.2.3.4:443/tcp", "10.0.0.0/8"]).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"deny":["10.0.0.0/8","1.2.3.4/32:443/tcp"]}"#);
        assert_eq!(serde_json::from_str::<EgressPolicy>(&json).unwrap(), p);
        assert_eq!(
            serde_json::from_str::<EgressPolicy>("{}").unwrap(),
            EgressPolicy::default()
        );
        assert!(serde_json::from_str::<EgressPolicy>(r#"{"deny":["10.0.0.1/8"]}"#).is_err());
        let e = EgressPolicy::parse(&["300.0.0.0/8"]).unwrap_err();
        assert!(
            matches!(e, NodeError::Invalid(ref m) if m.contains("300.0.0.0/8")),
            "{e}"
        );
        // Specs written before egress existed still load.
        let old = r#"{"id":"a","name":"a","image":"i","source":"s","slot":0,
            "limits":{"memory_bytes":1,"pids":1,"cpu_weight":1}}"#;
        let spec: WorkspaceSpec = serde_json::from_str(old).unwrap();
        assert!(spec.egress.deny.is_empty());
    }

    #[test]
    fn registry_auth_hides_the_password() {
        let a = RegistryAuth {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
    }
}
