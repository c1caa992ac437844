//! The nodes of the fleet: the admin-only `/v1/nodes` routes and `hearth move`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A node, as `GET /v1/nodes` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub name: String,
    /// `ready` (takes new workspaces), `draining` (takes none; `drain` moves its
    /// workspaces off) or `lost` (no heartbeat for the server's --node-lost-after).
    pub state: String,
    /// Whether its connection is up now.
    pub connected: bool,
    /// The server's own node (`hearth server` without --no-local-node).
    pub embedded: bool,
    pub labels: BTreeMap<String, String>,
    /// Workspaces placed on it.
    pub workspaces: u32,
    /// What it reported last; absent before its first heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<NodeCapacity>,
    /// RFC 3339 time of its last heartbeat or attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
}

/// What a node has room for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeCapacity {
    pub cpus: u32,
    pub memory_total: u64,
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_free: u64,
    /// Free space the node keeps; creates are refused below it.
    pub disk_reserve: u64,
    /// Workspaces with local data on it, and how many run.
    pub workspaces: u32,
    pub running: u32,
}

/// Body of `PUT /v1/nodes/{node}/labels`: the node's labels from now on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeLabels {
    /// Each key and value 1-63 of a-z, A-Z, 0-9, '.', '_', '-'; at most
    /// [`MAX_NODE_LABELS`].
    #[schema(schema_with = label_map)]
    pub labels: BTreeMap<String, String>,
}

/// Labels one node may carry: selectors match a handful; more is a mistake or abuse.
pub const MAX_NODE_LABELS: usize = 64;

/// A label key or value, as the server's parser takes it.
const LABEL_PATTERN: &str = "^[A-Za-z0-9._-]{1,63}$";

fn label_map() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let part = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(LABEL_PATTERN))
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(part().build()))
        .additional_properties(Some(part()))
        .max_properties(Some(MAX_NODE_LABELS))
        .build()
}

/// Body of `POST /v1/workspaces/{name}/move`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveWorkspace {
    /// The node to move it to (default: the scheduler picks one, never its current node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What `POST /v1/nodes/{node}/drain` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrainReport {
    /// Workspaces moved off, with the node each went to.
    pub moved: Vec<Moved>,
    /// Workspaces that could not be moved, and why; the node stays draining and a second
    /// drain tries them again.
    pub failed: Vec<MoveFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Moved {
    pub workspace: String,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MoveFailure {
    pub workspace: String,
    pub error: String,
}
