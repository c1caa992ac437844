//! The wire between the control plane and nodes on other hosts.
//!
//! A node dials out (NAT-friendly): an HTTP/1.1 `GET /v1/nodes/connect` on the API
//! address with `Upgrade: hearth-node/1` and its credential; after `101` the same TCP
//! connection carries HTTP/2 with the **server as the h2 client** and the node as the h2
//! server, so the control plane calls and the node answers. Every [`NodeApi`] call is one
//! h2 stream (`POST /call/<method>`): the request body starts with the arguments, the
//! answer with progress lines and the result ([`body`] frames); image archives, files,
//! exec sessions and port connections then flow raw on the same stream, under h2's flow
//! control, never whole in memory.
//!
//! Several servers sharing one database serve the same fleet: each tells its nodes which
//! servers are live ([`ServerAddr`], a `servers` call on the link) and a node keeps one
//! link to each ([`run_node`]), so any server reaches every node directly and the loss
//! of one server leaves the others' links standing.
//!
//! What a node sends is hostile input to the server: every frame is bounded before it is
//! buffered, announced sizes are checked against what arrives, and nothing a node says
//! names a path the server opens.
//!
//! [`NodeApi`]: hearth_node::NodeApi

mod body;
mod call;
mod client;
mod dial;
mod serve;

use std::path::PathBuf;
use std::time::Duration;

pub use client::RemoteNode;
pub use dial::{dial, run_node, DialError, Refusal};
pub use serve::serve;

/// The `Upgrade` token of a node connection; its number is the wire's version.
pub const UPGRADE: &str = "hearth-node/1";
/// Where nodes connect on the API address.
pub const CONNECT_PATH: &str = "/v1/nodes/connect";
/// The header a connecting node names itself in (its credential is the bearer token).
pub const NODE_HEADER: &str = "hearth-node";
/// The header a connecting node lists its labels in: `KEY=VALUE[,KEY=VALUE...]` (what
/// `hearth up --node-selector` matches; they replace the node's labels at each connect).
pub const LABELS_HEADER: &str = "hearth-node-labels";

/// The header a server names itself in (its id in the `servers` table) when it accepts a
/// node's connection, so the node links to each server once.
pub const SERVER_ID_HEADER: &str = "hearth-server-id";

/// Most servers a node keeps links to (a longer list from a server is cut).
pub const MAX_SERVERS: usize = 32;

/// A control-plane server as its peers advertise it to nodes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerAddr {
    /// Its id in the `servers` table.
    pub id: String,
    /// Where nodes reach its API (`hearth server --node-url`).
    pub url: String,
}

/// Largest dotfiles archive taken from a node (the node's own cap is 64 MiB).
pub const MAX_DOTFILES: u64 = 65 << 20;
/// Largest console log taken from a node in one `logs` answer.
pub const MAX_LOGS: u64 = 1 << 30;

/// Bounds and timers of one side of a connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Where data that arrives as files is written (unlinked or removed after use): on
    /// the server its upload dir, on a node a dir on its data filesystem.
    pub scratch: PathBuf,
    /// Short calls (status, inspect, exec and connect setup) fail as unavailable after this.
    pub call_timeout: Duration,
    /// Start, stop and remove fail as unavailable after this.
    pub lifecycle_timeout: Duration,
    /// Ping interval; a peer silent for as long again is dropped.
    pub keepalive: Duration,
    /// Largest head frame (a result) taken from a node.
    pub max_head: usize,
    /// Largest call (its arguments) a node takes.
    pub max_args: usize,
    /// Largest file (an exported image, a repository archive) taken from a node.
    pub max_file: u64,
    /// On a node: where server lists that arrive over a link go (see [`run_node`]);
    /// `None` answers them without effect.
    pub servers: Option<std::sync::Arc<tokio::sync::watch::Sender<Vec<ServerAddr>>>>,
}

impl Limits {
    pub fn new(scratch: impl Into<PathBuf>) -> Limits {
        Limits {
            scratch: scratch.into(),
            call_timeout: Duration::from_secs(60),
            lifecycle_timeout: Duration::from_secs(600),
            keepalive: Duration::from_secs(5),
            max_head: 32 << 20,
            max_args: 16 << 20,
            max_file: 256 << 30,
            servers: None,
        }
    }
}
