//! Nodes on other hosts joining the control plane: `/v1/nodes/join-tokens` (admins) and
//! `/v1/nodes/join` (a node with a join token).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Default life of a join token.
pub const JOIN_TOKEN_TTL: u64 = 3600;
/// Longest life of a join token: a week.
pub const MAX_JOIN_TOKEN_TTL: u64 = 7 * 24 * 3600;

/// Body of `POST /v1/nodes/join-tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    /// Seconds until the token expires (default 3600, at most a week).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    pub ttl_seconds: Option<u64>,
    /// Only this node may join with it, replacing its credential if it joined before (a
    /// node whose data dir was lost); without it, only a node of a new name may.
    #[serde(default)]
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub node: Option<String>,
}

/// Answer of `POST /v1/nodes/join-tokens`: the token, shown this once (the server keeps
/// only a hash). It joins one node, once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinToken {
    pub token: String,
    /// RFC 3339 time from which it is refused.
    pub expires_at: String,
    pub node: Option<String>,
}

/// Body of `POST /v1/nodes/join`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinNode {
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    pub token: String,
}

/// Answer of `POST /v1/nodes/join`: the node's credential, shown this once; the node
/// presents it on every connection (`GET /v1/nodes/connect`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeCredential {
    pub name: String,
    pub credential: String,
}
