//! Ports of a workspace: what listens inside, who may reach it through the port proxy,
//! and the port-forward WebSocket.
//!
//! Port-forward (`GET /v1/workspaces/{name}/ports/{port}/forward`, a WebSocket): one
//! socket per forwarded TCP connection. Binary messages carry the connection's bytes in
//! both directions; an empty binary message says the sender will write no more (TCP
//! half-close); a close frame ends the connection.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Who may open a port's URL through the port proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortVisibility {
    /// Only the workspace's owner and admins, with their API token (a bearer header or
    /// the proxy's login cookie).
    #[default]
    Private,
    /// Anyone who can reach the proxy, without credentials.
    Public,
}

impl std::fmt::Display for PortVisibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortVisibility::Private => "private",
            PortVisibility::Public => "public",
        })
    }
}

/// Answer of `POST /v1/workspaces/{name}/ports/{port}/login`: a link that logs the
/// browser opening it in to the port's URL (within a minute) and goes on to the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortLogin {
    pub url: String,
}

/// What the port proxy speaks to a workspace port (devcontainer.json `portsAttributes`
/// `protocol`); browsers reach the proxy the same way either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Http,
    /// TLS to the port (its certificate is not checked: the connection never leaves the
    /// workspace's own network namespace).
    Https,
}

/// A port of a workspace: listening inside now, named by the workspace's devcontainer.json
/// `forwardPorts`, or given a visibility (a port its `portsAttributes` say to ignore is
/// left out unless `forwardPorts` names it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Port {
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    pub visibility: PortVisibility,
    /// Whether something listens on it inside the workspace now.
    pub listening: bool,
    /// Named by the devcontainer.json's `forwardPorts`: listed even while nothing listens.
    #[serde(default)]
    pub forwarded: bool,
    /// Its `portsAttributes` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default)]
    pub protocol: PortProtocol,
    /// Addresses it is bound to inside (`127.0.0.1`, `0.0.0.0`, `::`, ...).
    pub addresses: Vec<String>,
    /// Its URL through the port proxy; absent when the server runs no proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Body of `PUT /v1/workspaces/{name}/ports/{port}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPort {
    pub visibility: PortVisibility,
}
