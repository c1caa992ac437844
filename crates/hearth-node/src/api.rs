use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use hearth_proto::client::ExecSession;
pub use hearth_proto::ExecRequest;
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
    /// Stable id, 12 lowercase hex characters; names host resources (netns, cgroups, dirs).
    pub id: String,
    pub name: String,
    /// Image id (config digest, `sha256:...`), resolved by the control plane at create.
    pub image: String,
    /// Git URL or local repository path, cloned at create.
    pub source: String,
    /// Slot number, unique per node: uid base is `ID_BASE + slot * ID_RANGE` and the
    /// network address is derived from it.
    pub slot: u32,
    pub limits: Limits,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 4 << 30,
            pids: 4096,
            cpu_weight: 100,
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
}

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
    async fn images(&self) -> Result<Vec<ImageSummary>, NodeError>;
    /// By name (`busybox`, `busybox:latest`) or id / unique id prefix.
    async fn resolve_image(&self, reference: &str) -> Result<ImageSummary, NodeError>;
    /// `in_use` lists image ids of existing workspaces; removing one of those is a conflict.
    async fn remove_image(&self, reference: &str, in_use: &[String]) -> Result<(), NodeError>;

    /// Prepares local storage and clones the source; on error leaves nothing behind.
    async fn create(&self, spec: &WorkspaceSpec, progress: Progress) -> Result<(), NodeError>;
    /// Starts the workspace and returns once its agent answers.
    async fn start(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError>;
    async fn stop(&self, spec: &WorkspaceSpec) -> Result<(), NodeError>;
    /// Removes every trace: processes, mounts, cgroups, netns, veth, files.
    async fn remove(&self, spec: &WorkspaceSpec) -> Result<(), NodeError>;
    async fn status(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError>;
    async fn exec(&self, spec: &WorkspaceSpec, req: ExecRequest) -> Result<ExecSession, NodeError>;
    /// The agent's console output (stdout/stderr of PID 1), newest last.
    async fn logs(&self, spec: &WorkspaceSpec) -> Result<Vec<u8>, NodeError>;
    /// Brings the host in line with `known` after a restart or crash: cleans half-done
    /// starts and stops, removes resources of workspaces not in `known`, never deletes
    /// data of a workspace in `known`. Returns each known workspace's status.
    async fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(String, WorkspaceStatus)>, NodeError>;
    /// Removes host-wide resources (bridge, firewall chains) after all workspaces are
    /// stopped; used by `hearth node teardown` and tests.
    async fn teardown(&self) -> Result<(), NodeError>;
}
