//! Per-workspace networking: a host bridge with NAT, one netns + veth per workspace.
//!
//! Shells out to iproute2 (`ip`, `bridge`) and `iptables`/`iptables-restore` so the state
//! is inspectable with the usual tools. Isolation model:
//! - bridge ports are `isolated`, so workspaces cannot reach each other at L2;
//! - `HEARTH-<bridge>-FWD` drops bridge->bridge routing, link-local destinations (cloud
//!   metadata endpoints) and unsolicited inbound traffic;
//! - `HEARTH-<bridge>-IN` drops every new connection from the bridge to the host itself;
//! - IPv6 is disabled on the bridge and host veths so link-local addresses cannot bypass that;
//! - an nftables `bridge` table `hearth-<bridge>` pins every port to its workspace's MAC and
//!   IPv4 address (Ethernet source, ARP sender, IP source) and drops other ethertypes, so
//!   a workspace cannot spoof another's address or poison the gateway's ARP cache.
//!
//! - an nftables `ip` table `hearth-<bridge>` holds the egress policy: node-wide denials,
//!   per-workspace deny chains and connection meters (see [`egress`]).
//!
//! The host may still connect to workspaces (the port proxy does).
//!
//! Modules: `bridge` (the host bridge), `netns` (per-workspace netns and veth),
//! `firewall` (iptables chains, port pins, the egress table), [`egress`] (policy rules and
//! their nft scripts) and `cmd` (the command runner).

mod bridge;
mod cmd;
pub mod egress;
mod firewall;
mod netns;

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

pub use egress::{Cidr, ConnLimits, EgressConfig, EgressRule, Protocol, MAX_EGRESS_RULES};
pub use firewall::{host_ipv4_addrs, mac_for};
pub use hearth_types::WorkspaceId;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid bridge name {name:?}: {reason}")]
    InvalidBridge { name: String, reason: &'static str },
    #[error("invalid subnet {subnet:?}: {reason}")]
    InvalidSubnet {
        subnet: String,
        reason: &'static str,
    },
    #[error("invalid egress rule {rule:?}: {reason}")]
    InvalidEgressRule { rule: String, reason: String },
    #[error("too many egress rules: {count} (at most {max})")]
    TooManyEgressRules { count: usize, max: usize },
    #[error("invalid connection limits: {reason}")]
    InvalidLimits { reason: &'static str },
    #[error("slot {slot} is outside subnet {subnet}")]
    SlotOutOfRange { slot: u32, subnet: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Bridge interface name (at most 15 characters); also names the netns and chains.
    pub bridge: String,
    /// IPv4 subnet such as `10.88.0.0/16`; the gateway takes the first host address.
    pub subnet: String,
    /// Node-wide egress denials and connection limits.
    pub egress: EgressConfig,
}

/// What [`Network::setup`] made for one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceNet {
    /// Bind-mounted netns file to hand to the OCI runtime.
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub host_veth: String,
}

#[derive(Debug, Clone)]
pub struct Network {
    bridge: String,
    /// The bridge's subnet, host bits clear.
    net: Ipv4Net,
    egress: EgressConfig,
    /// Per workspace id: the egress script this process last applied. Starting a
    /// stopped workspace whose policy has not changed then costs no `nft` run (~10 ms of
    /// a ~50 ms start); like the bridge pins, a host-wide `nft flush ruleset` while the
    /// node runs is repaired at the node's next start, not here.
    applied: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    /// Held while the probe netns is checked or made, so concurrent clones make it once.
    probe: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Network {
    pub fn new(cfg: NetConfig) -> Result<Self, NetError> {
        validate_bridge(&cfg.bridge)?;
        let net = parse_subnet(&cfg.subnet)?;
        cfg.egress.limits.validate()?;
        Ok(Network {
            bridge: cfg.bridge,
            net,
            egress: cfg.egress,
            applied: Default::default(),
            probe: Default::default(),
        })
    }

    /// Connection limits every workspace gets.
    pub fn conn_limits(&self) -> ConnLimits {
        self.egress.limits
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn gateway(&self) -> Ipv4Addr {
        // parse_subnet refuses prefixes over 29, so there are always six hosts.
        self.net.hosts().next().unwrap_or(self.net.network())
    }

    /// The bridge's fixed MAC, derived like a workspace's from its address (the gateway's
    /// is no workspace's), so it never changes while the node runs.
    pub fn gateway_mac(&self) -> String {
        firewall::mac_for(self.gateway())
    }

    pub fn prefix_len(&self) -> u8 {
        self.net.prefix_len()
    }

    /// The probe netns' address (see [`Network::ensure_probe`]): the subnet's last host
    /// address, which [`Network::address`] gives no slot.
    pub fn probe_address(&self) -> Ipv4Addr {
        // parse_subnet refuses prefixes over 29, so the broadcast address is above it.
        Ipv4Addr::from(u32::from(self.net.broadcast()).saturating_sub(1))
    }

    /// The subnet in CIDR notation.
    pub fn subnet(&self) -> String {
        self.net.to_string()
    }

    /// Address for a slot: the gateway plus one plus the slot. The subnet's last host
    /// address is no slot's: it is the probe netns' ([`Network::probe_address`]).
    pub fn address(&self, slot: u32) -> Result<Ipv4Addr, NetError> {
        // Host 0 is the gateway; `hosts` leaves out the broadcast address.
        usize::try_from(slot)
            .ok()
            .and_then(|s| self.net.hosts().nth(s.checked_add(1)?))
            .filter(|ip| *ip != self.probe_address())
            .ok_or_else(|| NetError::SlotOutOfRange {
                slot,
                subnet: self.subnet(),
            })
    }
}

fn validate_bridge(name: &str) -> Result<(), NetError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 characters")
    } else if name.starts_with('-') || name.starts_with("hv") {
        Some("must not start with - or hv")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Some("only A-Z, a-z, 0-9, - and _ are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetError::InvalidBridge {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The subnet as written; host bits must be zero.
fn parse_subnet(subnet: &str) -> Result<Ipv4Net, NetError> {
    let err = |reason| NetError::InvalidSubnet {
        subnet: subnet.to_owned(),
        reason,
    };
    let (addr, prefix) = subnet
        .split_once('/')
        .ok_or_else(|| err("expected address/prefix"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| err("bad IPv4 address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| err("bad prefix length"))?;
    // At least the gateway, one workspace and the probe netns.
    if !(8..=29).contains(&prefix) {
        return Err(err("prefix length must be 8..=29"));
    }
    let net = Ipv4Net::new(addr, prefix).map_err(|_| err("bad prefix length"))?;
    if net.trunc() != net {
        return Err(err("host bits are set"));
    }
    Ok(net)
}

pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(|source| io_err("write", path, source))
}

pub(crate) fn io_err(op: &'static str, path: &Path, source: io::Error) -> NetError {
    NetError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn net(bridge: &str, subnet: &str) -> Network {
        Network::new(NetConfig {
            bridge: bridge.into(),
            subnet: subnet.into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn addresses_follow_slots() {
        let n = net("hearth0", "10.88.0.0/16");
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(n.address(0).unwrap(), Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(n.address(300).unwrap(), Ipv4Addr::new(10, 88, 1, 46));
        assert_eq!(n.address(65531).unwrap(), Ipv4Addr::new(10, 88, 255, 253));
        // The last host address is the probe netns', no slot's.
        assert_eq!(n.probe_address(), Ipv4Addr::new(10, 88, 255, 254));
        assert!(matches!(
            n.address(65532),
            Err(NetError::SlotOutOfRange { slot: 65532, .. })
        ));
        assert!(n.address(u32::MAX).is_err());

        let small = net("b", "192.168.5.0/29");
        assert_eq!(small.address(0).unwrap(), Ipv4Addr::new(192, 168, 5, 2));
        assert_eq!(small.address(3).unwrap(), Ipv4Addr::new(192, 168, 5, 5));
        assert_eq!(small.probe_address(), Ipv4Addr::new(192, 168, 5, 6));
        assert!(small.address(4).is_err());
        assert_eq!(small.subnet(), "192.168.5.0/29");
    }

    #[test]
    fn config_is_validated() {
        let bad = |bridge: &str, subnet: &str| {
            Network::new(NetConfig {
                bridge: bridge.into(),
                subnet: subnet.into(),
                ..Default::default()
            })
            .unwrap_err()
        };
        assert!(matches!(
            bad("", "10.0.0.0/8"),
            NetError::InvalidBridge { .. }
        ));
        assert!(matches!(
            bad("abcdefghijklmnop", "10.0.0.0/8"),
            NetError::InvalidBridge { .. }
        ));
        assert!(matches!(
            bad("a b", "10.0.0.0/8"),
            NetError::InvalidBridge { .. }
        ));
        assert!(matches!(
            bad("hvx", "10.0.0.0/8"),
            NetError::InvalidBridge { .. }
        ));
        for subnet in [
            "10.0.0.0",
            "10.0.0.1/24",
            "10.0.0.0/31",
            "10.0.0.0/30",
            "10.0.0.0/4",
            "x/24",
            "10.0.0.0/x",
        ] {
            assert!(
                matches!(bad("br", subnet), NetError::InvalidSubnet { .. }),
                "{subnet}"
            );
        }
        net("abcdefghijklmno", "10.0.0.0/8");
    }

    #[test]
    fn bad_limits_are_refused() {
        let err = Network::new(NetConfig {
            bridge: "br".into(),
            subnet: "10.0.0.0/8".into(),
            egress: EgressConfig {
                limits: ConnLimits {
                    rate: 0,
                    ..Default::default()
                },
                ..Default::default()
            },
        })
        .unwrap_err();
        assert!(matches!(err, NetError::InvalidLimits { .. }), "{err}");
    }
}
