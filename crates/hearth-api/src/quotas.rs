//! Per-user quotas (`hearth user quota`) and the audit log (`hearth audit`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Limits of a quota; a missing or null field: no limit on that resource. Body of the
/// `PUT` quota routes, which replace the whole quota. Each is at most 2^62.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Workspaces the user may have.
    #[serde(default)]
    #[schema(maximum = 4611686018427387904_f64)]
    pub max_workspaces: Option<u64>,
    /// Workspaces the user may have running (creating, starting, running or stopping).
    #[serde(default)]
    #[schema(maximum = 4611686018427387904_f64)]
    pub max_running: Option<u64>,
    /// Total memory limit of the user's running workspaces, bytes.
    #[serde(default)]
    #[schema(maximum = 4611686018427387904_f64)]
    pub memory_bytes: Option<u64>,
    /// Total disk size of all the user's workspaces, bytes.
    #[serde(default)]
    #[schema(maximum = 4611686018427387904_f64)]
    pub disk_bytes: Option<u64>,
}

/// What a user's workspaces use of the resources a quota limits. Workspaces the server
/// makes for its own work (`builder-*`, `prebuild-*`) count for nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaUsage {
    pub workspaces: u64,
    pub running: u64,
    /// Sum of the memory limits of the running ones.
    pub memory_bytes: u64,
    /// Sum of the disk sizes of all.
    pub disk_bytes: u64,
}

/// Where a user's quota comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QuotaSource {
    /// Set for this user (`hearth user quota USER ...`).
    User,
    /// The default (`hearth user quota --default ...`).
    Default,
}

/// A user's quota in force and their use of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserQuota {
    pub user: String,
    pub source: QuotaSource,
    pub quota: Quota,
    pub usage: QuotaUsage,
}

/// Answer of `GET /v1/quotas`: the default and every user's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Quotas {
    pub default: Quota,
    pub users: Vec<UserQuota>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Sorts in time order; `before` of `GET /v1/audit` pages with it.
    pub id: String,
    /// RFC 3339 UTC, nanoseconds.
    pub at: String,
    /// The caller; null when not authenticated (a refused token or SSH login).
    pub user: Option<String>,
    /// `METHOD /route/{param}` of an API call, or `ssh.login`, `port.visibility`...
    pub action: String,
    /// What it acted on (a workspace, user, key... name; never a secret value).
    pub target: Option<String>,
    /// Where the call came from: the peer address (or, behind a trusted proxy, the
    /// client it names).
    pub peer: Option<String>,
    /// HTTP status of an API call.
    pub status: Option<u16>,
    pub ok: bool,
    /// Why it failed, when it did.
    pub error: Option<String>,
}
