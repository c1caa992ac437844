//! Ports of a workspace: listing, visibility, and reaching them (the port proxy and
//! port-forward both come through [`Manager::port_target`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hearth_api::{Port, PortLogin, PortProtocol, PortVisibility, WorkspaceState};
use hearth_devcontainer::{Config, PortAttributes};
use hearth_node::{NodeError, WorkspaceSpec};

use super::{node_err, Manager};
use crate::auth::Caller;
use crate::db::WorkspaceRecord;
use crate::error::ApiError;

/// How long a connection inside a workspace may take (loopback: instant unless the
/// workspace is frozen or overloaded).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How port URLs are built: `{scheme}://{port}-{name}.{domain}{:port}/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortUrls {
    pub https: bool,
    pub domain: String,
    /// The proxy's port; left out of URLs when it is the scheme's default.
    pub port: u16,
}

impl PortUrls {
    pub fn host(&self, name: &str, port: u16) -> String {
        format!("{port}-{name}.{}", self.domain)
    }

    pub fn url(&self, name: &str, port: u16) -> String {
        let (scheme, default) = if self.https {
            ("https", 443)
        } else {
            ("http", 80)
        };
        let host = self.host(name, port);
        if self.port == default {
            format!("{scheme}://{host}/")
        } else {
            format!("{scheme}://{host}:{}/", self.port)
        }
    }
}

/// A port number from a path: 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, ApiError> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ApiError::invalid(format!(
            "invalid port {:?}: use a number from 1 to 65535",
            s.chars().take(16).collect::<String>()
        ))),
    }
}

/// What a workspace's devcontainer.json says about its ports (`forwardPorts`,
/// `portsAttributes`, `otherPortsAttributes`); nothing for a workspace made without one.
#[derive(Debug, Default)]
pub struct PortPolicy {
    /// Only the port settings of the file (the port proxy keeps a policy per workspace).
    config: Option<Config>,
    /// `forwardPorts` of the workspace itself, read once (every listed port asks).
    forwarded: Vec<u16>,
}

impl PortPolicy {
    pub fn attributes(&self, port: u16) -> PortAttributes {
        self.config
            .as_ref()
            .map(|c| c.port_attributes(port))
            .unwrap_or_default()
    }

    /// `forwardPorts` of the workspace itself.
    pub fn forwarded(&self) -> &[u16] {
        &self.forwarded
    }

    /// `onAutoForward: ignore` and not in `forwardPorts`: left out of listings, and the
    /// port proxy answers 404 for it (as Codespaces neither shows nor forwards it; an
    /// explicit `hearth port-forward` still reaches it, like a manual forward there).
    pub fn hidden(&self, port: u16) -> bool {
        self.attributes(port).ignored() && !self.forwarded().contains(&port)
    }

    /// `protocol: https`: the proxy speaks TLS to the port.
    pub fn https(&self, port: u16) -> bool {
        self.attributes(port).https()
    }

    /// Fills in `p`'s label and protocol.
    fn describe(&self, p: &mut Port) {
        let a = self.attributes(p.port);
        p.protocol = if a.https() {
            PortProtocol::Https
        } else {
            PortProtocol::Http
        };
        p.label = a.label;
    }
}

impl Manager {
    /// The port settings of the devcontainer.json workspace `spec` was made from.
    pub async fn port_policy(&self, spec: &WorkspaceSpec) -> Result<PortPolicy, ApiError> {
        let Some((dc, _)) = self.devcontainer(spec).await? else {
            return Ok(PortPolicy::default());
        };
        let forwarded = dc.config.forwarded_ports();
        let config = Config {
            ports_attributes: dc.config.ports_attributes,
            other_ports_attributes: dc.config.other_ports_attributes,
            ..Config::default()
        };
        Ok(PortPolicy {
            config: Some(config),
            forwarded,
        })
    }

    /// Called once the port proxy listens, so listings carry URLs and browsers can be
    /// given login links.
    pub fn set_port_urls(&self, urls: PortUrls, key: crate::proxy::login::CookieKey) {
        let _ = self.port_urls.set(urls);
        let _ = self.port_key.set(key);
    }

    /// A link that logs the browser that opens it in to `port` of `name` as `caller`
    /// (good for a minute; see [`crate::proxy::login`]), for the dashboard: its users may
    /// have no API token to give the proxy's login form.
    pub async fn port_login(
        &self,
        caller: &Caller,
        name: &str,
        port: u16,
    ) -> Result<PortLogin, ApiError> {
        self.owned(caller, name).await?;
        let (Some(urls), Some(key)) = (self.port_urls(), self.port_key.get()) else {
            return Err(ApiError::conflict(
                "this server runs no port proxy (hearth server --proxy-listen)",
            ));
        };
        let ticket = key.ticket(&urls.host(name, port), &caller.id);
        Ok(PortLogin {
            url: format!("{}_hearth/ticket?t={ticket}", urls.url(name, port)),
        })
    }

    pub fn port_urls(&self) -> Option<&PortUrls> {
        self.port_urls.get()
    }

    /// A port entry with nothing known about it yet.
    fn port_entry(&self, name: &str, port: u16) -> Port {
        Port {
            port,
            visibility: PortVisibility::Private,
            listening: false,
            forwarded: false,
            label: None,
            protocol: PortProtocol::Http,
            addresses: Vec::new(),
            url: self.port_urls().map(|u| u.url(name, port)),
        }
    }

    /// Ports listening inside `name` now, ports its devcontainer.json forwards, and
    /// ports given a visibility; without those its `portsAttributes` ignore.
    pub async fn ports(&self, caller: &Caller, name: &str) -> Result<Vec<Port>, ApiError> {
        let rec = self.owned(caller, name).await?;
        let policy = self.port_policy(&rec.spec).await?;
        let mut ports: BTreeMap<u16, Port> = BTreeMap::new();
        let entry = |port: u16| self.port_entry(name, port);
        for &port in policy.forwarded() {
            let mut p = entry(port);
            p.forwarded = true;
            ports.insert(port, p);
        }
        for (port, public) in self.store.ports(&rec.spec.id).await? {
            let p = ports.entry(port).or_insert_with(|| entry(port));
            if public {
                p.visibility = PortVisibility::Public;
            }
        }
        if rec.state == WorkspaceState::Running {
            let listening = self
                .node
                .listening_ports(&rec.spec)
                .await
                .map_err(|e| node_err("ports", name, e))?;
            for l in listening {
                let p = ports.entry(l.port).or_insert_with(|| entry(l.port));
                p.listening = true;
                p.addresses.push(l.address.to_string());
            }
        }
        ports.retain(|port, _| !policy.hidden(*port));
        for p in ports.values_mut() {
            policy.describe(p);
        }
        Ok(ports.into_values().collect())
    }

    /// Makes `port` of `name` public or private.
    pub async fn set_port(
        &self,
        caller: &Caller,
        name: &str,
        port: u16,
        visibility: PortVisibility,
    ) -> Result<Port, ApiError> {
        let _guard = self.lock(name).await;
        let rec = self.owned(caller, name).await?;
        let policy = self.port_policy(&rec.spec).await?;
        if policy.hidden(port) {
            return Err(ApiError::invalid(format!(
                "port {port} of {name} is ignored by its devcontainer.json \
                 (portsAttributes onAutoForward \"ignore\"): it is not listed or proxied"
            )));
        }
        let public = visibility == PortVisibility::Public;
        self.store
            .set_port_public(&rec.spec.id, port, public)
            .await?;
        tracing::info!(workspace = name, port, %visibility, "port visibility set");
        let mut listening = Vec::new();
        if rec.state == WorkspaceState::Running {
            if let Ok(l) = self.node.listening_ports(&rec.spec).await {
                listening = l;
            }
        }
        let addresses: Vec<String> = listening
            .iter()
            .filter(|l| l.port == port)
            .map(|l| l.address.to_string())
            .collect();
        let mut p = self.port_entry(name, port);
        p.visibility = visibility;
        p.listening = !addresses.is_empty();
        p.addresses = addresses;
        p.forwarded = policy.forwarded().contains(&port);
        policy.describe(&mut p);
        Ok(p)
    }

    /// Opens a TCP connection to `port` inside the running workspace `rec`: its IPv4
    /// loopback first (which also reaches services on all addresses), then its IPv6
    /// loopback (dev servers that bind `localhost` often take `::1`).
    pub async fn connect_port(
        &self,
        spec: &WorkspaceSpec,
        port: u16,
    ) -> Result<tokio::net::TcpStream, NodeError> {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let attempt = |addr| async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, self.node.connect(spec, addr)).await {
                Ok(r) => r,
                Err(_) => Err(NodeError::Connect {
                    workspace: spec.name.clone(),
                    addr,
                    source: std::io::ErrorKind::TimedOut.into(),
                }),
            }
        };
        match attempt(v4).await {
            Err(NodeError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                match attempt(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await {
                    // Report the IPv4 refusal: IPv6 may just be off inside.
                    Err(NodeError::Connect { .. }) => Err(NodeError::Connect {
                        workspace: spec.name.clone(),
                        addr: v4,
                        source,
                    }),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// The record of `name` for a port-forward by `caller`: owned and running.
    pub async fn forward_target(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<WorkspaceRecord, ApiError> {
        let rec = self.owned(caller, name).await?;
        if rec.state != WorkspaceState::Running {
            return Err(ApiError::conflict(format!(
                "workspace {name} is {} (hearth start {name} starts it)",
                rec.state
            )));
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_leave_out_default_ports() {
        let u = PortUrls {
            https: false,
            domain: "localhost".into(),
            port: 7080,
        };
        assert_eq!(u.url("web", 8080), "http://8080-web.localhost:7080/");
        let u = PortUrls {
            https: true,
            domain: "dev.example.com".into(),
            port: 443,
        };
        assert_eq!(u.url("web", 3000), "https://3000-web.dev.example.com/");
    }

    #[test]
    fn ports_parse() {
        assert_eq!(parse_port("8080").unwrap(), 8080);
        for bad in ["0", "65536", "-1", "x", ""] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }
}
