//! Snapshot, fork and store upkeep types.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Snapshot {
    /// 32 hex characters.
    pub id: String,
    /// Unix seconds.
    pub time: i64,
    pub parent: Option<String>,
    /// Sum of regular file sizes, bytes.
    pub size: u64,
    pub files: u64,
    /// Stored bytes this snapshot added (0 when everything deduplicated).
    pub new_bytes: u64,
}

/// What a workspace's snapshots hold in the store, in stored (compressed) bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct StoreUse {
    pub snapshots: usize,
    /// Distinct chunks its snapshots reference; chunks shared with other workspaces
    /// count in full.
    pub referenced_bytes: u64,
    /// Chunks only its snapshots reference: what forgetting them all frees at the next gc.
    pub unique_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkWorkspace {
    /// Snapshot of the source workspace to start from.
    pub snapshot: String,
    /// Name of the new workspace.
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoreCheck {
    pub location: String,
    pub ok: bool,
    pub snapshots: usize,
    pub chunks: usize,
    /// One line per problem: the object, what is wrong, what it affects.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreGc {
    /// With either bound set, forget snapshots outside the policy before collecting.
    pub keep_last: Option<usize>,
    pub keep_daily: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoreGcReport {
    pub forgotten: Vec<String>,
    pub deleted_chunks: usize,
    pub deleted_bytes: u64,
}

/// A removed workspace whose snapshots the store still keeps (`hearth snapshots
/// --deleted`); `hearth restore` brings it back until `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeletedWorkspace {
    pub name: String,
    /// The removed workspace's id, under which its snapshots are stored. A new workspace
    /// of the same name has another id and its own snapshots.
    pub id: String,
    pub owner: String,
    /// RFC 3339.
    pub deleted_at: String,
    /// When the background store gc forgets its snapshots (RFC 3339).
    pub expires_at: String,
    /// Oldest first.
    pub snapshots: Vec<Snapshot>,
    /// Absent when the store could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreUse>,
}

/// `POST /v1/deleted-workspaces/{name}/restore`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreWorkspace {
    /// Snapshot to restore (default: the newest). It also picks which removed workspace
    /// of that name, when there are several.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Name for the restored workspace (default: its old name).
    #[serde(default)]
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: Option<String>,
}

/// `GET /v1/workspaces/{name}/logs` options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsOptions {
    /// After the log so far, keep the response open and send what the workspace writes
    /// (lifecycle steps running in the background included) as it comes, until the
    /// workspace is stopped, failed or removed; a stopped workspace's log ends at once.
    #[serde(default)]
    pub follow: bool,
}

/// `DELETE /v1/workspaces/{name}` options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveOptions {
    /// Forget the workspace's snapshots at once instead of keeping them for the grace
    /// period (their chunks are freed by the next store gc).
    #[serde(default)]
    pub purge: bool,
}
