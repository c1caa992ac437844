//! Hearth's API as data: the request and response types of the REST API (with their
//! OpenAPI schemas), the ndjson stream lines and the exec WebSocket frames. The server, the
//! `hearth` CLI and any other client share them, so the spec and the code cannot drift.
//! With the `client` feature, [`client::Client`] speaks the API over HTTP.
//!
//! This crate depends on no other Hearth crate: the server converts between these types
//! and the node's.
//!
//! Long operations answer `application/x-ndjson`: zero or more `{"progress":"..."}` lines,
//! then exactly one `{"result":{...}}` or `{"error":{"code":..,"message":..}}` line.
//!
//! Exec runs over a WebSocket. The first client message is the JSON [`ExecRequest`] (text or
//! binary); after that every message is binary with a 1-byte tag, see [`ClientFrame`] and
//! [`ServerFrame`]. The server closes the socket after `exit` or `error`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[cfg(feature = "client")]
pub mod client;
mod join;
mod nodes;
mod ports;
mod prebuilds;
mod quotas;
mod secrets;
mod snapshots;
mod ssh;
mod users;

pub use join::*;
pub use nodes::*;
pub use ports::*;
pub use prebuilds::*;
pub use quotas::*;
pub use secrets::*;
pub use snapshots::*;
pub use ssh::*;
pub use users::*;

/// File in the server's data dir holding the API token (mode 0600).
pub const TOKEN_FILE: &str = "token";
/// File in the server's data dir saying where the running server listens ([`ServerInfo`]).
pub const SERVER_FILE: &str = "server.json";

/// Contents of `server.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerInfo {
    pub url: String,
    /// Where the port proxy listens (`http(s)://host:port`), when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

/// First message of an exec session: what to run (the agent protocol's own request, so
/// the server hands it on unchanged).
pub use hearth_proto::ExecRequest;

/// Media type of streamed long operations.
pub const NDJSON: &str = "application/x-ndjson";

/// Lifecycle state of a workspace as the control plane records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceState {
    Creating,
    Starting,
    Running,
    Stopping,
    Stopped,
    Removing,
    Failed,
    /// Its node stopped answering (no heartbeat for the server's --node-lost-after); shown,
    /// never stored. `start` brings it up on another node from its last snapshot.
    Lost,
}

impl WorkspaceState {
    pub const ALL: [WorkspaceState; 8] = [
        WorkspaceState::Creating,
        WorkspaceState::Starting,
        WorkspaceState::Running,
        WorkspaceState::Stopping,
        WorkspaceState::Stopped,
        WorkspaceState::Removing,
        WorkspaceState::Failed,
        WorkspaceState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceState::Creating => "creating",
            WorkspaceState::Starting => "starting",
            WorkspaceState::Running => "running",
            WorkspaceState::Stopping => "stopping",
            WorkspaceState::Stopped => "stopped",
            WorkspaceState::Removing => "removing",
            WorkspaceState::Failed => "failed",
            WorkspaceState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<WorkspaceState> {
        WorkspaceState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// States that only exist while an operation runs; startup reconcile resolves them.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            WorkspaceState::Creating
                | WorkspaceState::Starting
                | WorkspaceState::Stopping
                | WorkspaceState::Removing
        )
    }
}

impl std::fmt::Display for WorkspaceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The syntax of an egress rule, `CIDR[:PORT[-PORT][/tcp|/udp]]`, exactly as the server
/// parses it; host bits set or a backwards port range are refused with 400 after it.
pub const EGRESS_RULE_PATTERN: &str = "^[ \\t]*(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}(/(3[0-2]|[12]?[0-9]))?(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})(-(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?(/(tcp|udp))?)?[ \\t]*$";

fn egress_rules() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(EGRESS_RULE_PATTERN)),
        )
        .build()
}

/// `GET /v1/workspaces` paging: without `limit` the whole list (what older clients ask).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListWorkspaces {
    /// At most this many workspaces, 1 to [`MAX_PAGE`]; a shorter page is the last.
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only names after this one (byte order, as the list is sorted): the last name of
    /// the previous page. Without `limit`, the page is [`MAX_PAGE`] long.
    #[serde(default)]
    pub after: Option<String>,
}

/// Largest `limit` of [`ListWorkspaces`].
pub const MAX_PAGE: u32 = 1000;

/// Body of `POST /v1/workspaces`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Git URL, or (admins only) absolute path of a repository on the server host.
    #[schema(min_length = 1, pattern = "^(?!-)(?!.*::)(/|[^/:]+:)")]
    pub source: String,
    /// Image name or id; when absent, the repository's devcontainer.json `image`, else the
    /// server's `--default-image` (`debian` unless set).
    #[serde(default)]
    pub image: Option<String>,
    /// Workspace name; derived from the source's repository name when absent.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: Option<String>,
    /// Resource limits; each absent one takes the node's default.
    #[serde(default)]
    pub limits: LimitsRequest,
    /// Outbound policy; everything is allowed when absent.
    #[serde(default)]
    pub egress: Option<Egress>,
    /// Seconds without a session or request after which the server stops the workspace
    /// (0: never); the server's `--idle-timeout` when absent.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 31622400)]
    pub idle_timeout: Option<u64>,
    /// Which `.devcontainer/<NAME>/devcontainer.json` of the repository to use, when it
    /// has several; without it `.devcontainer/devcontainer.json`, `.devcontainer.json` or
    /// the only named one.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = "^[^/]+$")]
    pub devcontainer_config: Option<String>,
    /// Branch to clone and check out (its devcontainer.json is read from its tip, and
    /// prebuilds of it apply); the repository's default branch when absent.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = "^[^-]")]
    pub branch: Option<String>,
    /// Labels the node it runs on must carry (`hearth node label`), e.g.
    /// `{"gpu":"true"}`; kept for moves and recoveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<std::collections::BTreeMap<String, String>>,
}

/// Longest idle timeout (366 days); 0 turns idle auto-stop off instead.
pub const IDLE_TIMEOUT_MAX: u64 = 31_622_400;

/// Body of `PATCH /v1/workspaces/{name}`: the settings it sets change, the rest stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceUpdate {
    /// Seconds without a session or request after which the server stops the workspace
    /// (0: never).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 31622400)]
    pub idle_timeout: Option<u64>,
}

/// A workspace's outbound policy: everything is allowed except `deny`. Body of
/// `PUT /v1/workspaces/{name}/egress`, which replaces the whole list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Denied destinations, `CIDR[:PORT[-PORT][/tcp|/udp]]`: `10.0.0.0/8`, `192.0.2.7`,
    /// `192.0.2.0/24:5432/tcp`, `192.0.2.7:8000-9000`. Ports without a protocol cover TCP
    /// and UDP. At most 64; duplicates are dropped; answers hold the canonical form.
    #[serde(default)]
    #[schema(schema_with = egress_rules)]
    pub deny: Vec<String>,
}

/// Body of `PATCH /v1/workspaces/{name}/egress`: an edit of the deny list, applied by the
/// server under the workspace's lock so concurrent edits never lose one another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressEdit {
    /// Rules to add.
    #[serde(default)]
    #[schema(schema_with = egress_rules)]
    pub deny: Vec<String>,
    /// Rules to remove (each must be in the list, compared in canonical form).
    #[serde(default)]
    #[schema(schema_with = egress_rules)]
    pub undeny: Vec<String>,
    /// Clear the list first (then add `deny`).
    #[serde(default)]
    pub allow_all: bool,
}

impl EgressEdit {
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.undeny.is_empty() && !self.allow_all
    }
}

/// Limits asked for at create (absent: the default) or in an update (absent: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Memory limit in bytes (at least 64 MiB).
    #[serde(default)]
    #[schema(minimum = 67108864, maximum = 1125899906842624_f64)]
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes and threads (16..=1000000).
    #[serde(default)]
    #[schema(minimum = 16, maximum = 1000000)]
    pub pids: Option<u64>,
    /// CPU weight relative to other workspaces (1..=10000, default 100).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub cpu_weight: Option<u64>,
    /// Size of the workspace's private disk in bytes (256 MiB..=64 TiB).
    #[serde(default)]
    #[schema(minimum = 268435456, maximum = 70368744177664_f64)]
    pub disk_bytes: Option<u64>,
    /// Class limit in thousandths of a core (1500 = 1.5 cores; 10..=1000000), held over
    /// the long run; 0 removes it.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000000)]
    pub cpus_milli: Option<u64>,
}

/// Body of `POST /v1/images/load`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadImage {
    /// Absolute path on the server host of an OCI layout directory or archive.
    #[schema(min_length = 1, pattern = "^/")]
    pub path: String,
    /// Name to give the image, e.g. `busybox:latest`.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub name: Option<String>,
}

/// Query of `POST /v1/images/build` (the body is the build context as a tar).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BuildImage {
    /// Name the built image gets, e.g. `team/app:1`.
    #[schema(min_length = 1)]
    #[param(min_length = 1)]
    pub name: String,
    /// The Dockerfile's path in the context (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// The stage to build (`--target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Build args as a JSON object of strings, e.g. `{"VERSION":"1"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<String>,
}

/// Body of `POST /v1/images/pull`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    /// Registry reference, e.g. `registry.example.com/team/img:1` or
    /// `127.0.0.1:5000/busybox` (loopback registries are reached over plain http).
    #[schema(min_length = 1)]
    pub reference: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for PullImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullImage")
            .field("reference", &self.reference)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// `sha256:<hex>` of the image config.
    pub id: String,
    pub names: Vec<String>,
    /// Sum of unpacked layer sizes, bytes.
    pub size: u64,
    pub layers: usize,
    /// RFC 3339 time of the load.
    pub loaded_at: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceLimits {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_weight: u64,
    pub disk_bytes: u64,
    /// Class limit in thousandths of a core; 0 = none.
    #[serde(default)]
    pub cpus_milli: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    /// The user it belongs to.
    pub owner: String,
    /// Image id (`sha256:...`).
    pub image: String,
    /// First name of the image, when it still has one.
    pub image_name: Option<String>,
    pub source: String,
    pub slot: u32,
    /// Host uid that root inside the workspace maps to.
    pub uid_base: u32,
    pub state: WorkspaceState,
    /// Why the last operation failed, for `failed` workspaces.
    pub error: Option<String>,
    /// Address on the node's bridge while running.
    pub ip: Option<String>,
    /// Why the node holds a running workspace frozen (its disk is under the reserve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    pub limits: WorkspaceLimits,
    /// The workspace's own outbound denials (the node's apply on top, see inspect).
    #[serde(default)]
    pub egress: Egress,
    /// Id of the newest snapshot this server took (this run), if any.
    #[serde(default)]
    pub last_snapshot: Option<String>,
    /// Why the last snapshot attempt failed; cleared by the next success.
    #[serde(default)]
    pub snapshot_error: Option<String>,
    /// RFC 3339 time of `last_snapshot`: what a `lost` workspace comes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_at: Option<String>,
    /// The node it is placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Seconds without a session (SSH, exec, shell, port-forward) or proxied request after
    /// which the server stops it (0: never).
    #[serde(default)]
    pub idle_timeout: u64,
    /// RFC 3339 time of its last session or proxied request; absent if none was seen.
    #[serde(default)]
    pub last_active: Option<String>,
    /// Why it stopped (e.g. the server stopped it as idle), until it starts again.
    #[serde(default)]
    pub stop_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /v1/workspaces/{name}/inspect`: the record plus what the node sees on the host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceInspect {
    pub workspace: Workspace,
    /// Host pid of the workspace's PID 1 (the agent) while running.
    pub pid: Option<u32>,
    /// Host uids/gids `first..=last` are the workspace's ids `0..=65535`.
    pub uid_range: IdRange,
    /// Group directory of the workspace in every cgroup hierarchy; empty while stopped.
    pub cgroups: Vec<String>,
    pub network: Option<NetworkInfo>,
    pub usage: UsageInfo,
    /// What its snapshots hold in the snapshot store; absent when the store could not be
    /// read (the server log says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreUse>,
    pub egress: EgressInfo,
    /// Why the node holds the workspace frozen (its disk is under the reserve); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Processes the kernel's OOM killer killed in the workspace while the node ran,
    /// newest last (the last 16; `usage.oom_kill_count` counts all since its start).
    #[serde(default)]
    pub oom_kills: Vec<OomKillInfo>,
    /// The node CPU controller's view, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuInfo>,
    /// Large files of a restore (restore, fork, a move) still being fetched from the
    /// snapshot; absent once all are there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydration: Option<HydrationInfo>,
    /// What the workspace's devcontainer.json says for tools; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devcontainer: Option<DevcontainerInfo>,
}

/// A workspace's devcontainer.json as an editor integration needs it: hearth installs no
/// editor extensions itself, so it hands over what `customizations.vscode` asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DevcontainerInfo {
    /// Repository-relative path of the file.
    pub file: String,
    /// Where sessions and lifecycle commands start (the repository is there).
    pub workspace_folder: String,
    /// Default user of sessions (`remoteUser`, else `containerUser`); absent: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `customizations.vscode.extensions`.
    #[serde(default)]
    pub vscode_extensions: Vec<String>,
    /// `customizations.vscode.settings`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vscode_settings: serde_json::Map<String, serde_json::Value>,
}

/// A restored workspace runs while its large files are fetched: opening one not fetched
/// yet waits for it, and snapshots wait for all of them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HydrationInfo {
    /// The snapshot being restored.
    pub snapshot: String,
    /// Whether the node is fetching now (false: it resumes when the workspace starts).
    pub active: bool,
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Fetches that failed; each is retried.
    pub failures: u64,
    pub last_error: Option<String>,
}

/// One process killed for lack of memory.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OomKillInfo {
    /// RFC 3339 time the node saw the kill.
    pub at: String,
    /// Its pid inside the workspace, when the node could still read it.
    pub pid: Option<u32>,
    /// Its pid on the host.
    pub host_pid: u32,
    /// Its command name (at most 15 bytes, as the kernel keeps it).
    pub process: String,
    /// The memory limit that was reached, usually the workspace's; null when the whole
    /// host ran out of memory.
    pub limit_bytes: Option<u64>,
}

/// What the node's CPU controller made of a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CpuClass {
    /// Light lately: its weight, no quota; a burst gets the node's free CPU at once.
    Interactive,
    /// Saturated cores until its budget ran out: runs on CPU nobody else wants
    /// (`cpu.idle`), held to its `cpus_milli` if set; recovers while quiet.
    Batch,
    /// A fixed quota from a baseline policy (`--cpu-control static|gitpod`).
    Limited,
    /// The controller is off (`--cpu-control off`): the fixed weight.
    Unmanaged,
}

/// The node CPU controller's current view of a running workspace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CpuInfo {
    pub class: CpuClass,
    /// CPU weight in force (cgroup v2 scale).
    pub weight: u64,
    /// CFS quota in force, thousandths of a core; absent = no quota.
    pub quota_millicores: Option<u64>,
    /// Whether the workspace runs only on CPU nobody else wants (`cpu.idle`).
    pub idle: bool,
    /// CPU use over about the last second, thousandths of a core.
    pub usage_millicores: u64,
    /// CPU-ms left before demotion (interactive), or recovered so far (batch).
    pub budget_ms: u64,
    /// Time throttled by the quota since start, microseconds.
    pub throttled_us_total: u64,
    /// Percent of the last ~10 s in which some task waited for a CPU; absent without PSI.
    pub pressure_some_avg10: Option<f64>,
    /// RFC 3339 time of the last class change.
    pub since: String,
}

/// The outbound policy in force: the workspace's rules, the node's, and the limits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EgressInfo {
    /// The workspace's own denied destinations.
    pub deny: Vec<String>,
    /// Destinations no workspace on the node can reach (its own addresses, loopback,
    /// link-local/metadata, operator additions); a workspace policy cannot lift these.
    pub node_deny: Vec<String>,
    /// New outbound connections per second; more are dropped.
    pub rate: u32,
    /// New connections allowed at once above `rate`.
    pub burst: u32,
    /// Concurrently tracked outbound connections; more are dropped.
    pub max_conns: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkInfo {
    pub ip: String,
    pub prefix_len: u8,
    pub gateway: String,
    pub bridge: String,
    pub host_veth: Option<String>,
    /// Bind-mounted network namespace file.
    pub netns: String,
}

/// Current use; cgroup counters are null while stopped.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageInfo {
    pub cpu_ns: Option<u64>,
    /// Over a short sample; 100 means one core busy.
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Where the kernel starts reclaiming its memory, 90% of the limit (cgroup v2
    /// `memory.high`, which also throttles; v1 `memory.soft_limit_in_bytes`).
    #[serde(default)]
    pub memory_high_bytes: Option<u64>,
    /// OOM kills since it started, as its memory cgroup counts them.
    #[serde(default)]
    pub oom_kill_count: Option<u64>,
    pub pids: Option<u64>,
    /// Used bytes of the workspace's disk (everything it changed, plus metadata).
    pub disk_bytes: u64,
    /// Size of the disk as its filesystem reports it (the limit, less metadata space).
    pub disk_size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    /// `not_found`, `invalid`, `conflict`, `unauthorized`, `forbidden`, `too_large`,
    /// `too_many_requests` or `internal`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

/// One line of an ndjson stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamLine<T> {
    Progress(String),
    Result(T),
    Error(ErrorInfo),
}

impl<T: Serialize> StreamLine<T> {
    /// The line as sent: JSON and a trailing newline.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain data types cannot fail; fall back to an error line anyway.
        let mut out = serde_json::to_vec(self).unwrap_or_else(|e| {
            format!(r#"{{"error":{{"code":"internal","message":"cannot encode reply: {e}"}}}}"#)
                .into_bytes()
        });
        out.push(b'\n');
        out
    }
}

/// Tags of client-to-server exec frames.
pub mod client_tag {
    pub const STDIN: u8 = 0;
    pub const STDIN_EOF: u8 = 1;
    /// Followed by rows and cols, u16 big-endian each.
    pub const RESIZE: u8 = 2;
    /// Followed by the signal number, i32 big-endian.
    pub const SIGNAL: u8 = 3;
}

/// Tags of server-to-client exec frames.
pub mod server_tag {
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// Followed by the exit code, i32 big-endian; the last frame of a session.
    pub const EXIT: u8 = 3;
    /// Followed by a UTF-8 message; the session failed and is over.
    pub const ERROR: u8 = 4;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Stdin(Vec<u8>),
    StdinEof,
    Resize { rows: u16, cols: u16 },
    Signal(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty exec frame")]
    Empty,
    #[error("unknown exec frame tag {0}")]
    UnknownTag(u8),
    #[error("exec frame with tag {tag} has {len} payload bytes, expected {expected}")]
    BadLength {
        tag: u8,
        len: usize,
        expected: usize,
    },
    #[error("exec error frame is not utf-8")]
    NotUtf8,
}

fn tagged(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 1);
    out.push(tag);
    out.extend_from_slice(payload);
    out
}

fn fixed<const N: usize>(tag: u8, payload: &[u8]) -> Result<[u8; N], FrameError> {
    payload.try_into().map_err(|_| FrameError::BadLength {
        tag,
        len: payload.len(),
        expected: N,
    })
}

impl ClientFrame {
    pub fn encode(&self) -> Vec<u8> {
        use client_tag::*;
        match self {
            ClientFrame::Stdin(data) => tagged(STDIN, data),
            ClientFrame::StdinEof => vec![STDIN_EOF],
            ClientFrame::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                tagged(RESIZE, &p)
            }
            ClientFrame::Signal(sig) => tagged(SIGNAL, &sig.to_be_bytes()),
        }
    }

    pub fn decode(frame: &[u8]) -> Result<ClientFrame, FrameError> {
        use client_tag::*;
        let (&tag, payload) = frame.split_first().ok_or(FrameError::Empty)?;
        match tag {
            STDIN => Ok(ClientFrame::Stdin(payload.to_vec())),
            STDIN_EOF => {
                fixed::<0>(tag, payload)?;
                Ok(ClientFrame::StdinEof)
            }
            RESIZE => {
                let b = fixed::<4>(tag, payload)?;
                Ok(ClientFrame::Resize {
                    rows: u16::from_be_bytes([b[0], b[1]]),
                    cols: u16::from_be_bytes([b[2], b[3]]),
                })
            }
            SIGNAL => Ok(ClientFrame::Signal(i32::from_be_bytes(fixed::<4>(
                tag, payload,
            )?))),
            other => Err(FrameError::UnknownTag(other)),
        }
    }
}

impl ServerFrame {
    pub fn encode(&self) -> Vec<u8> {
        use server_tag::*;
        match self {
            ServerFrame::Stdout(data) => tagged(STDOUT, data),
            ServerFrame::Stderr(data) => tagged(STDERR, data),
            ServerFrame::Exit(code) => tagged(EXIT, &code.to_be_bytes()),
            ServerFrame::Error(msg) => tagged(ERROR, msg.as_bytes()),
        }
    }

    pub fn decode(frame: &[u8]) -> Result<ServerFrame, FrameError> {
        use server_tag::*;
        let (&tag, payload) = frame.split_first().ok_or(FrameError::Empty)?;
        match tag {
            STDOUT => Ok(ServerFrame::Stdout(payload.to_vec())),
            STDERR => Ok(ServerFrame::Stderr(payload.to_vec())),
            EXIT => Ok(ServerFrame::Exit(i32::from_be_bytes(fixed::<4>(
                tag, payload,
            )?))),
            ERROR => Ok(ServerFrame::Error(
                String::from_utf8(payload.to_vec()).map_err(|_| FrameError::NotUtf8)?,
            )),
            other => Err(FrameError::UnknownTag(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_round_trip() {
        for f in [
            ClientFrame::Stdin(b"hello\n".to_vec()),
            ClientFrame::Stdin(Vec::new()),
            ClientFrame::StdinEof,
            ClientFrame::Resize {
                rows: 40,
                cols: 300,
            },
            ClientFrame::Signal(15),
        ] {
            assert_eq!(ClientFrame::decode(&f.encode()).unwrap(), f);
        }
        assert_eq!(
            ClientFrame::Resize { rows: 1, cols: 258 }.encode(),
            vec![2, 0, 1, 1, 2]
        );
    }

    #[test]
    fn server_frames_round_trip() {
        for f in [
            ServerFrame::Stdout(b"out".to_vec()),
            ServerFrame::Stderr(b"err".to_vec()),
            ServerFrame::Exit(-1),
            ServerFrame::Exit(137),
            ServerFrame::Error("agent gone".into()),
        ] {
            assert_eq!(ServerFrame::decode(&f.encode()).unwrap(), f);
        }
        assert_eq!(ServerFrame::Exit(3).encode(), vec![3, 0, 0, 0, 3]);
    }

    #[test]
    fn bad_frames_are_rejected() {
        assert_eq!(ClientFrame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(ClientFrame::decode(&[9]), Err(FrameError::UnknownTag(9)));
        assert!(matches!(
            ClientFrame::decode(&[client_tag::RESIZE, 0, 1]),
            Err(FrameError::BadLength {
                expected: 4,
                len: 2,
                ..
            })
        ));
        assert!(matches!(
            ClientFrame::decode(&[client_tag::STDIN_EOF, 0]),
            Err(FrameError::BadLength { expected: 0, .. })
        ));
        assert_eq!(
            ServerFrame::decode(&[server_tag::ERROR, 0xff]),
            Err(FrameError::NotUtf8)
        );
        assert!(ServerFrame::decode(&[server_tag::EXIT]).is_err());
    }

    #[test]
    fn stream_lines_have_the_documented_shape() {
        let p: StreamLine<()> = StreamLine::Progress("cloning".into());
        assert_eq!(p.encode(), b"{\"progress\":\"cloning\"}\n");
        let r = StreamLine::Result(serde_json::json!({"a": 1}));
        assert_eq!(r.encode(), b"{\"result\":{\"a\":1}}\n");
        let e: StreamLine<()> = StreamLine::Error(ErrorInfo {
            code: "conflict".into(),
            message: "x".into(),
        });
        assert_eq!(
            e.encode(),
            b"{\"error\":{\"code\":\"conflict\",\"message\":\"x\"}}\n"
        );
    }

    #[test]
    fn state_names_round_trip() {
        for s in WorkspaceState::ALL {
            assert_eq!(WorkspaceState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(WorkspaceState::parse("bogus"), None);
    }
}
