//! What travels in head frames: the calls (one per [`NodeApi`](hearth_node::NodeApi)
//! method) and failures. JSON: every argument and result type already has its serde
//! form (tagged enums, defaults for older fields), which a schema-less binary encoding
//! like postcard cannot carry, and these frames are small next to the data that follows.

use std::net::SocketAddr;

use hearth_node::features::FeatureRequest;
use hearth_node::{
    ErrorKind, ExecRequest, Limits, NodeError, RegistryAuth, Retention, Revision, WorkspaceId,
    WorkspaceMetrics, WorkspaceSpec,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub(crate) enum Call {
    /// The archive follows raw, `size` bytes.
    LoadImage {
        name: Option<String>,
        size: u64,
    },
    PullImage {
        reference: String,
        auth: Option<RegistryAuth>,
    },
    Images,
    Capacity,
    FeatureContext {
        req: FeatureRequest,
    },
    CheckCreate {
        source: String,
        limits: Limits,
    },
    DevcontainerConfig {
        source: String,
        branch: Option<String>,
        name: Option<String>,
    },
    BuildInputs {
        source: String,
        branch: Option<String>,
        commit: String,
        dockerfile: String,
        context: String,
    },
    UpdateBundle {
        source: String,
        branch: Option<String>,
        commit: String,
        bases: Vec<String>,
        max: u64,
    },
    DotfilesArchive {
        spec: WorkspaceSpec,
        url: String,
    },
    RepoArchive {
        source: String,
        commit: String,
    },
    ExportImage {
        reference: String,
        name: String,
    },
    CheckPull {
        reference: String,
        auth: Option<RegistryAuth>,
    },
    ResolveImage {
        reference: String,
    },
    RemoveImage {
        reference: String,
        in_use: Vec<String>,
    },
    Create {
        spec: WorkspaceSpec,
        rev: Revision,
    },
    Start {
        spec: WorkspaceSpec,
    },
    Stop {
        spec: WorkspaceSpec,
    },
    Remove {
        spec: WorkspaceSpec,
    },
    Status {
        spec: WorkspaceSpec,
    },
    Statuses {
        specs: Vec<WorkspaceSpec>,
    },
    SetEgress {
        spec: WorkspaceSpec,
    },
    SetLimits {
        spec: WorkspaceSpec,
    },
    Inspect {
        spec: WorkspaceSpec,
    },
    Metrics {
        specs: Vec<WorkspaceSpec>,
    },
    /// Agent protocol frames follow raw in both directions.
    Exec {
        spec: WorkspaceSpec,
        req: ExecRequest,
    },
    Logs {
        spec: WorkspaceSpec,
    },
    /// Answered with the new cursor, then the bytes as data.
    LogsSince {
        spec: WorkspaceSpec,
        cursor: Option<hearth_node::LogCursor>,
    },
    ConsoleNote {
        spec: WorkspaceSpec,
        line: String,
    },
    /// The connection's bytes follow raw in both directions.
    Connect {
        spec: WorkspaceSpec,
        addr: SocketAddr,
    },
    ListeningPorts {
        spec: WorkspaceSpec,
    },
    Reconcile {
        known: Vec<WorkspaceSpec>,
    },
    Teardown,
    Snapshot {
        spec: WorkspaceSpec,
    },
    SnapshotIfChanged {
        spec: WorkspaceSpec,
    },
    Snapshots {
        spec: WorkspaceSpec,
    },
    Restore {
        spec: WorkspaceSpec,
        id: String,
    },
    StoreFsck,
    StoreGc {
        keep: Option<Retention>,
    },
    ForgetSnapshots {
        spec: WorkspaceSpec,
        keep: Option<Retention>,
    },
    StoreUsage {
        spec: WorkspaceSpec,
    },
    /// The control-plane servers sharing the database now (the caller included): the
    /// node keeps a link to each (answered by the link itself, not the node's API).
    Servers {
        servers: Vec<crate::ServerAddr>,
    },
}

impl Call {
    /// The method's name, for errors and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Call::LoadImage { .. } => "load_image",
            Call::PullImage { .. } => "pull_image",
            Call::Images => "images",
            Call::Capacity => "capacity",
            Call::FeatureContext { .. } => "feature_context",
            Call::CheckCreate { .. } => "check_create",
            Call::DevcontainerConfig { .. } => "devcontainer_config",
            Call::BuildInputs { .. } => "build_inputs",
            Call::UpdateBundle { .. } => "update_bundle",
            Call::DotfilesArchive { .. } => "dotfiles_archive",
            Call::RepoArchive { .. } => "repo_archive",
            Call::ExportImage { .. } => "export_image",
            Call::CheckPull { .. } => "check_pull",
            Call::ResolveImage { .. } => "resolve_image",
            Call::RemoveImage { .. } => "remove_image",
            Call::Create { .. } => "create",
            Call::Start { .. } => "start",
            Call::Stop { .. } => "stop",
            Call::Remove { .. } => "remove",
            Call::Status { .. } => "status",
            Call::Statuses { .. } => "statuses",
            Call::SetEgress { .. } => "set_egress",
            Call::SetLimits { .. } => "set_limits",
            Call::Inspect { .. } => "inspect",
            Call::Metrics { .. } => "metrics",
            Call::Exec { .. } => "exec",
            Call::Logs { .. } => "logs",
            Call::LogsSince { .. } => "logs_since",
            Call::ConsoleNote { .. } => "console_note",
            Call::Connect { .. } => "connect",
            Call::ListeningPorts { .. } => "listening_ports",
            Call::Reconcile { .. } => "reconcile",
            Call::Teardown => "teardown",
            Call::Snapshot { .. } => "snapshot",
            Call::SnapshotIfChanged { .. } => "snapshot_if_changed",
            Call::Snapshots { .. } => "snapshots",
            Call::Restore { .. } => "restore",
            Call::StoreFsck => "store_fsck",
            Call::StoreGc { .. } => "store_gc",
            Call::ForgetSnapshots { .. } => "forget_snapshots",
            Call::StoreUsage { .. } => "store_usage",
            Call::Servers { .. } => "servers",
        }
    }
}

/// A [`NodeError`] on the wire: its kind and its message. The source chain stays on the
/// node (in its log); the control plane needs only what it maps to a status and shows.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireError {
    kind: String,
    message: String,
}

impl From<&NodeError> for WireError {
    fn from(e: &NodeError) -> WireError {
        let kind = match e.kind() {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        };
        WireError {
            kind: kind.into(),
            message: e.to_string(),
        }
    }
}

impl WireError {
    /// An unknown kind from a newer node is internal: nothing the caller can act on.
    pub(crate) fn into_error(self, node: &str) -> NodeError {
        let m = self.message;
        match self.kind.as_str() {
            "not_found" => NodeError::NotFound(m),
            "invalid" => NodeError::Invalid(m),
            "conflict" => NodeError::Conflict(m),
            "unavailable" => NodeError::Unavailable(m),
            _ => NodeError::Internal(format!("node {node}: {m}")),
        }
    }
}

/// One status of [`Call::Statuses`].
pub(crate) type WireResult<T> = Result<T, WireError>;

/// [`WorkspaceMetrics`] on the wire (the cgroup counter types have no serde form).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct WireMetrics {
    cpu_usage_ns: Option<u64>,
    throttled_periods: Option<u64>,
    throttled_us: Option<u64>,
    pressure_some_us: Option<u64>,
    memory_usage_bytes: Option<u64>,
    memory_limit_bytes: Option<u64>,
    memory_high_bytes: Option<u64>,
    oom_kills: Option<u64>,
    pids: Option<u64>,
}

impl From<&WorkspaceMetrics> for WireMetrics {
    fn from(m: &WorkspaceMetrics) -> WireMetrics {
        WireMetrics {
            cpu_usage_ns: m.cpu_usage_ns,
            throttled_periods: m.cpu.throttled_periods,
            throttled_us: m.cpu.throttled_us,
            pressure_some_us: m.cpu.pressure_some_us,
            memory_usage_bytes: m.memory.usage_bytes,
            memory_limit_bytes: m.memory.limit_bytes,
            memory_high_bytes: m.memory.high_bytes,
            oom_kills: m.memory.oom_kills,
            pids: m.pids,
        }
    }
}

impl From<WireMetrics> for WorkspaceMetrics {
    fn from(w: WireMetrics) -> WorkspaceMetrics {
        let mut m = WorkspaceMetrics {
            cpu_usage_ns: w.cpu_usage_ns,
            pids: w.pids,
            ..Default::default()
        };
        m.cpu.throttled_periods = w.throttled_periods;
        m.cpu.throttled_us = w.throttled_us;
        m.cpu.pressure_some_us = w.pressure_some_us;
        m.memory.usage_bytes = w.memory_usage_bytes;
        m.memory.limit_bytes = w.memory_limit_bytes;
        m.memory.high_bytes = w.memory_high_bytes;
        m.memory.oom_kills = w.oom_kills;
        m
    }
}

/// The head of a call answered with data: how many bytes follow.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WithData<T> {
    pub(crate) size: u64,
    pub(crate) value: T,
}

pub(crate) type Metrics = Vec<(WorkspaceId, WireMetrics)>;
