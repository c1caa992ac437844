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

pub mod egress;

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use egress::{Cidr, ConnLimits, EgressConfig, EgressRule, Protocol, MAX_EGRESS_RULES};

const NETNS_DIR: &str = "/run/netns";
const SYS_NET: &str = "/sys/class/net";
/// Host-side veth names are `hv` + this many characters of the id: 15 is the kernel's limit,
/// and 13 keeps the control plane's 12-hex ids whole so no two workspaces share a veth.
const VETH_ID_CHARS: usize = 13;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid bridge name {name:?}: {reason}")]
    InvalidBridge { name: String, reason: &'static str },
    #[error("invalid subnet {subnet:?}: {reason}")]
    InvalidSubnet {
        subnet: String,
        reason: &'static str,
    },
    #[error("invalid workspace id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
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
    network: u32,
    prefix_len: u8,
    egress: EgressConfig,
    /// Per workspace id: the egress script this process last applied. Starting a
    /// stopped workspace whose policy has not changed then costs no `nft` run (~10 ms of
    /// a ~50 ms start); like the bridge pins, a host-wide `nft flush ruleset` while the
    /// node runs is repaired at the node's next start, not here.
    applied: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

impl Network {
    pub fn new(cfg: NetConfig) -> Result<Self, NetError> {
        validate_bridge(&cfg.bridge)?;
        let (network, prefix_len) = parse_subnet(&cfg.subnet)?;
        cfg.egress.limits.validate()?;
        Ok(Network {
            bridge: cfg.bridge,
            network,
            prefix_len,
            egress: cfg.egress,
            applied: Default::default(),
        })
    }

    /// Connection limits every workspace gets.
    pub fn conn_limits(&self) -> ConnLimits {
        self.egress.limits
    }

    /// Destinations no workspace can reach: built-ins, operator extras and the node's
    /// current addresses (the INPUT chain covers addresses added later as well).
    pub fn node_deny(&self) -> Result<Vec<Cidr>, NetError> {
        let mut all: BTreeSet<Cidr> = egress::BUILTIN_DENY
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        all.extend(self.egress.always_deny.iter().copied());
        all.extend(host_ipv4_addrs()?.into_iter().map(Cidr::host));
        Ok(all.into_iter().collect())
    }

    /// Makes workspace `id`'s deny rules exactly `rules`, atomically; the connection
    /// meters apply to it whether or not this ran.
    pub fn apply_egress(&self, id: &str, slot: u32, rules: &[EgressRule]) -> Result<(), NetError> {
        validate_id(id)?;
        egress::check_count(rules.len())?;
        let ip = self.address(slot)?;
        let script = egress::workspace_script(&self.nft_table(), id, ip, rules);
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if applied.get(id) == Some(&script) {
            return Ok(());
        }
        // Forget first: a failed run may have changed nothing or everything.
        applied.remove(id);
        run_stdin("nft", &["-f", "-"], &script)?;
        applied.insert(id.to_string(), script);
        tracing::debug!(id, ip = %ip, rules = rules.len(), "egress policy applied");
        Ok(())
    }

    /// Whether workspace `id` has a network (netns) to apply a policy to.
    pub fn has_network(&self, id: &str) -> bool {
        validate_id(id).is_ok() && self.netns_path(id).exists()
    }

    /// Removes workspace `id`'s deny chain and map entries; a missing table is fine.
    fn remove_egress(&self, id: &str) -> Result<(), NetError> {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let Some(listing) = self.egress_listing()? else {
            return Ok(());
        };
        let t = self.nft_table();
        if !egress::chain_ids(&listing).iter().any(|c| c == id)
            && egress::map_keys_for(&listing, &egress::ws_chain(id)).is_empty()
        {
            return Ok(());
        }
        let script = egress::remove_workspace_script(&t, id, &listing);
        run_stdin("nft", &["-f", "-"], &script).map(drop)
    }

    /// `nft list table` of the egress table, `None` when it does not exist.
    fn egress_listing(&self) -> Result<Option<String>, NetError> {
        let t = self.nft_table();
        let tables = run("nft", &["list", "tables", egress::TABLE_FAMILY])?;
        let decl = format!("table {} {t}", egress::TABLE_FAMILY);
        if !tables.lines().any(|l| l.trim() == decl) {
            return Ok(None);
        }
        run("nft", &["list", "table", egress::TABLE_FAMILY, &t]).map(Some)
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The subnet in CIDR notation.
    pub fn subnet(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.network), self.prefix_len)
    }

    /// Creates or repairs the bridge, enables forwarding and (re)writes our firewall chains.
    pub fn ensure_host(&self) -> Result<(), NetError> {
        let br = self.bridge.as_str();
        if !link_exists(br) {
            if let Err(e) = run("ip", &["link", "add", "name", br, "type", "bridge"]) {
                // Lost a race with a concurrent ensure_host: fine if it exists now.
                if !link_exists(br) {
                    return Err(e);
                }
            }
        }
        disable_ipv6(br)?;
        let gw = format!("{}/{}", self.gateway(), self.prefix_len);
        run("ip", &["addr", "replace", &gw, "dev", br])?;
        run("ip", &["link", "set", "dev", br, "up"])?;
        write_file(Path::new("/proc/sys/net/ipv4/ip_forward"), "1")?;
        // One iptables-restore transaction flushes and refills our chains atomically, so
        // rerunning never leaves a window without the DROP rules.
        run_stdin(
            "iptables-restore",
            &["-w", "--noflush"],
            &self.chain_rules(),
        )?;
        for (table, chain, spec) in self.jumps() {
            let mut check = vec!["-w", "-t", table, "-C", chain];
            check.extend(spec.iter().map(String::as_str));
            if run("iptables", &check).is_err() {
                let mut insert = vec!["-w", "-t", table, "-I", chain, "1"];
                insert.extend(spec.iter().map(String::as_str));
                run("iptables", &insert)?;
            }
        }
        run_stdin("nft", &["-f", "-"], &self.bridge_table())?;
        let deny = self.node_deny()?;
        let script = egress::host_script(&self.nft_table(), br, &deny, &self.egress.limits);
        run_stdin("nft", &["-f", "-"], &script)?;
        tracing::info!(bridge = br, gateway = %gw, "host network ready");
        Ok(())
    }

    /// Address for a slot: the gateway plus one plus the slot.
    pub fn address(&self, slot: u32) -> Result<Ipv4Addr, NetError> {
        let host_bits = 32 - u32::from(self.prefix_len);
        // Last usable host index; the all-ones one is broadcast.
        let last = (1u64 << host_bits) - 2;
        let index = u64::from(slot) + 2;
        if index > last {
            return Err(NetError::SlotOutOfRange {
                slot,
                subnet: self.subnet(),
            });
        }
        // index < 2^host_bits, so the sum stays inside the subnet.
        Ok(Ipv4Addr::from(self.network + index as u32))
    }

    /// Like [`Network::setup`], but keeps a workspace's network that is already in place
    /// (netns bound, host veth on our bridge): a stopped workspace keeps its network so a
    /// start costs no `ip` invocations.
    pub fn ensure(&self, id: &str, slot: u32) -> Result<WorkspaceNet, NetError> {
        validate_id(id)?;
        let ip = self.address(slot)?;
        let hv = host_veth(id);
        let master = std::fs::read_link(Path::new("/sys/class/net").join(&hv).join("master"));
        let on_bridge =
            master.is_ok_and(|m| m.file_name().is_some_and(|n| n == self.bridge.as_str()));
        if on_bridge && self.netns_path(id).exists() {
            // The pin made by `setup` stays with the port while it exists; re-applying it
            // here would cost an nft run (~10 ms) on every start.
            return Ok(WorkspaceNet {
                netns_path: self.netns_path(id),
                ip,
                prefix_len: self.prefix_len,
                gateway: self.gateway(),
                host_veth: hv,
            });
        }
        self.setup(id, slot)
    }

    /// Creates the netns and veth of a workspace; leftovers from a crash are replaced.
    pub fn setup(&self, id: &str, slot: u32) -> Result<WorkspaceNet, NetError> {
        validate_id(id)?;
        let ip = self.address(slot)?;
        self.teardown(id)?;
        let net = WorkspaceNet {
            netns_path: self.netns_path(id),
            ip,
            prefix_len: self.prefix_len,
            gateway: self.gateway(),
            host_veth: host_veth(id),
        };
        if let Err(e) = self.setup_steps(id, &net) {
            if let Err(cleanup) = self.teardown(id) {
                tracing::warn!(id, error = %cleanup, "cleanup after failed network setup");
            }
            return Err(e);
        }
        tracing::debug!(id, ip = %ip, veth = net.host_veth, "workspace network ready");
        Ok(net)
    }

    fn setup_steps(&self, id: &str, net: &WorkspaceNet) -> Result<(), NetError> {
        let ns = self.netns_name(id);
        let hv = net.host_veth.as_str();
        let addr = format!("{}/{}", net.ip, net.prefix_len);
        let gw = net.gateway.to_string();
        let mac = mac_for(net.ip);
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &[
                "link", "add", "name", hv, "type", "veth", "peer", "name", "eth0", "address", &mac,
                "netns", &ns,
            ],
        )?;
        disable_ipv6(hv)?;
        // Pinned before the port joins the bridge, so no frame passes unchecked.
        run_stdin("nft", &["-f", "-"], &self.port_rules(hv, net.ip))?;
        run("ip", &["link", "set", "dev", hv, "master", &self.bridge])?;
        run("bridge", &["link", "set", "dev", hv, "isolated", "on"])?;
        run("ip", &["link", "set", "dev", hv, "up"])?;
        run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "dev", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "dev", "lo", "up"])?;
        run("ip", &["-n", &ns, "route", "add", "default", "via", &gw])?;
        Ok(())
    }

    pub fn netns_path(&self, id: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns_name(id))
    }

    /// Removes the veth and the netns; whatever is already gone is fine.
    pub fn teardown(&self, id: &str) -> Result<(), NetError> {
        validate_id(id)?;
        let hv = host_veth(id);
        if link_exists(&hv) {
            if let Err(e) = run("ip", &["link", "del", "dev", &hv]) {
                if link_exists(&hv) {
                    return Err(e);
                }
            }
        }
        let ns = self.netns_name(id);
        if Path::new(NETNS_DIR).join(&ns).exists() {
            run("ip", &["netns", "del", &ns])?;
        }
        self.unpin_port(&hv)?;
        self.remove_egress(id)
    }

    /// Removes a port's pin; a missing table (host already torn down) is fine.
    fn unpin_port(&self, hv: &str) -> Result<(), NetError> {
        let t = self.nft_table();
        // Adding first makes the deletes succeed whether or not the port was pinned.
        let script = format!(
            "add chain bridge {t} port-{hv}\n\
             add element bridge {t} ports {{ \"{hv}\" : jump port-{hv} }}\n\
             delete element bridge {t} ports {{ \"{hv}\" }}\n\
             delete chain bridge {t} port-{hv}\n"
        );
        match run_stdin("nft", &["-f", "-"], &script) {
            Err(NetError::Command { stderr, .. })
                if stderr.contains("No such file or directory") && !self.nft_table_exists()? =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    fn nft_table(&self) -> String {
        format!("hearth-{}", self.bridge)
    }

    fn nft_table_exists(&self) -> Result<bool, NetError> {
        let out = run("nft", &["list", "tables", "bridge"])?;
        let decl = format!("table bridge {}", self.nft_table());
        Ok(out.lines().any(|l| l.trim() == decl))
    }

    /// The bridge table: ports listed in `ports` jump to their pin chain. The map and the
    /// port chains are declared, not flushed, so rerunning keeps running workspaces pinned.
    fn bridge_table(&self) -> String {
        let t = self.nft_table();
        format!(
            "table bridge {t} {{\n\
             \tmap ports {{ type ifname : verdict; }}\n\
             \tchain pre {{ type filter hook prerouting priority -300; policy accept; }}\n\
             }}\n\
             flush chain bridge {t} pre\n\
             add rule bridge {t} pre iifname vmap @ports\n"
        )
    }

    /// A port may send only from its workspace's MAC and IPv4 address, IPv4 and ARP only.
    fn port_rules(&self, hv: &str, ip: Ipv4Addr) -> String {
        let t = self.nft_table();
        let mac = mac_for(ip);
        let c = format!("port-{hv}");
        format!(
            "add chain bridge {t} {c}\n\
             flush chain bridge {t} {c}\n\
             add rule bridge {t} {c} ether saddr != {mac} drop\n\
             add rule bridge {t} {c} ether type arp arp saddr ether != {mac} drop\n\
             add rule bridge {t} {c} ether type arp arp saddr ip != {ip} drop\n\
             add rule bridge {t} {c} ether type ip ip saddr != {ip} drop\n\
             add rule bridge {t} {c} ether type {{ ip, arp }} accept\n\
             add rule bridge {t} {c} drop\n\
             add element bridge {t} ports {{ \"{hv}\" : jump {c} }}\n"
        )
    }

    /// Ids with a netns of this bridge, plus the `hv` suffix of any port on our bridge
    /// without one (a truncated id; [`Network::teardown`] accepts it and removes the veth),
    /// plus ids that still have an egress chain.
    pub fn list(&self) -> Result<Vec<String>, NetError> {
        let prefix = format!("{}-", self.bridge);
        let mut ids = BTreeSet::new();
        for name in dir_names(Path::new(NETNS_DIR))? {
            if let Some(id) = name.strip_prefix(&prefix) {
                if validate_id(id).is_ok() {
                    ids.insert(id.to_owned());
                }
            }
        }
        let brif = Path::new(SYS_NET).join(&self.bridge).join("brif");
        let mut orphans = Vec::new();
        for port in dir_names(&brif)? {
            if let Some(frag) = port.strip_prefix("hv") {
                if validate_id(frag).is_ok() && !ids.iter().any(|id| host_veth(id) == port) {
                    orphans.push(frag.to_owned());
                }
            }
        }
        ids.extend(orphans);
        if let Some(listing) = self.egress_listing()? {
            ids.extend(
                egress::chain_ids(&listing)
                    .into_iter()
                    .filter(|id| validate_id(id).is_ok()),
            );
        }
        Ok(ids.into_iter().collect())
    }

    /// Removes our jump rules, chains and the bridge; whatever is already gone is fine.
    pub fn teardown_host(&self) -> Result<(), NetError> {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for (table, chain, spec) in self.jumps() {
            // Bounded: a rule inserted twice by racing ensure_host calls is deleted twice.
            for _ in 0..8 {
                let mut check = vec!["-w", "-t", table, "-C", chain];
                check.extend(spec.iter().map(String::as_str));
                if run("iptables", &check).is_err() {
                    break;
                }
                let mut delete = vec!["-w", "-t", table, "-D", chain];
                delete.extend(spec.iter().map(String::as_str));
                run("iptables", &delete)?;
            }
        }
        for (table, chain) in self.chains() {
            if chain_exists(table, &chain)? {
                run("iptables", &["-w", "-t", table, "-F", &chain])?;
                run("iptables", &["-w", "-t", table, "-X", &chain])?;
            }
        }
        if self.nft_table_exists()? {
            run("nft", &["delete", "table", "bridge", &self.nft_table()])?;
        }
        if self.egress_listing()?.is_some() {
            run(
                "nft",
                &["delete", "table", egress::TABLE_FAMILY, &self.nft_table()],
            )?;
        }
        if link_exists(&self.bridge) {
            if let Err(e) = run("ip", &["link", "del", "dev", &self.bridge]) {
                if link_exists(&self.bridge) {
                    return Err(e);
                }
            }
        }
        tracing::info!(bridge = self.bridge, "host network removed");
        Ok(())
    }

    fn netns_name(&self, id: &str) -> String {
        format!("{}-{id}", self.bridge)
    }

    fn chain(&self, suffix: &str) -> String {
        format!("HEARTH-{}-{suffix}", self.bridge)
    }

    fn chains(&self) -> [(&'static str, String); 3] {
        [
            ("filter", self.chain("IN")),
            ("filter", self.chain("FWD")),
            ("nat", self.chain("NAT")),
        ]
    }

    /// Contents of our chains, as `iptables-restore` input.
    fn chain_rules(&self) -> String {
        let br = &self.bridge;
        let subnet = self.subnet();
        let (input, fwd, nat) = (self.chain("IN"), self.chain("FWD"), self.chain("NAT"));
        format!(
            "*filter\n\
             :{input} - [0:0]\n\
             :{fwd} - [0:0]\n\
             -A {input} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A {input} -j DROP\n\
             -A {fwd} -i {br} ! -s {subnet} -j DROP\n\
             -A {fwd} -i {br} -o {br} -j DROP\n\
             -A {fwd} -i {br} -d 169.254.0.0/16 -j DROP\n\
             -A {fwd} -i {br} -j ACCEPT\n\
             -A {fwd} -o {br} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A {fwd} -j DROP\n\
             COMMIT\n\
             *nat\n\
             :{nat} - [0:0]\n\
             -A {nat} ! -o {br} -j MASQUERADE\n\
             COMMIT\n"
        )
    }

    /// (table, built-in chain, rule spec) of the jumps into our chains.
    fn jumps(&self) -> Vec<(&'static str, &'static str, Vec<String>)> {
        let br = self.bridge.clone();
        let spec = |parts: &[&str]| parts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        vec![
            (
                "filter",
                "INPUT",
                spec(&["-i", &br, "-j", &self.chain("IN")]),
            ),
            (
                "filter",
                "FORWARD",
                spec(&["-i", &br, "-j", &self.chain("FWD")]),
            ),
            (
                "filter",
                "FORWARD",
                spec(&["-o", &br, "-j", &self.chain("FWD")]),
            ),
            (
                "nat",
                "POSTROUTING",
                spec(&["-s", &self.subnet(), "-j", &self.chain("NAT")]),
            ),
        ]
    }
}

/// The workspace's MAC: locally administered (02), "H" (0x48), then its IPv4 address, so
/// it is unique per node and known without asking the netns.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:48:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn host_veth(id: &str) -> String {
    let n = id.len().min(VETH_ID_CHARS);
    format!("hv{}", &id[..n])
}

/// Ids end up in interface, netns and file names, so only a plain charset is allowed.
fn validate_id(id: &str) -> Result<(), NetError> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id.len() > 64 {
        Some("longer than 64 characters")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("only a-z, 0-9 and - are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetError::InvalidId {
            id: id.to_owned(),
            reason,
        }),
        None => Ok(()),
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

/// Returns the network address and prefix length; host bits must be zero.
fn parse_subnet(subnet: &str) -> Result<(u32, u8), NetError> {
    let err = |reason| NetError::InvalidSubnet {
        subnet: subnet.to_owned(),
        reason,
    };
    let (addr, prefix) = subnet
        .split_once('/')
        .ok_or_else(|| err("expected address/prefix"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| err("bad IPv4 address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| err("bad prefix length"))?;
    if !(8..=30).contains(&prefix) {
        return Err(err("prefix length must be 8..=30"));
    }
    let mask = u32::MAX << (32 - prefix);
    let addr = u32::from(addr);
    if addr & !mask != 0 {
        return Err(err("host bits are set"));
    }
    Ok((addr, prefix))
}

/// Every IPv4 address on the host's interfaces (loopback included).
pub fn host_ipv4_addrs() -> Result<Vec<Ipv4Addr>, NetError> {
    let out = run("ip", &["-4", "-o", "addr", "show"])?;
    Ok(parse_ip_addr_show(&out))
}

fn parse_ip_addr_show(out: &str) -> Vec<Ipv4Addr> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.nth(2)? == "inet").then_some(())?;
            f.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

fn link_exists(name: &str) -> bool {
    Path::new(SYS_NET).join(name).exists()
}

/// Missing directory = no entries.
fn dir_names(dir: &Path) -> Result<Vec<String>, NetError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_err("read dir", dir, source)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| io_err("read dir", dir, source))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Without IPv6 on the host side, a workspace cannot reach the host over link-local addresses.
fn disable_ipv6(iface: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys/net/ipv6/conf")
        .join(iface)
        .join("disable_ipv6");
    if !Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    write_file(&path, "1")
}

fn chain_exists(table: &str, chain: &str) -> Result<bool, NetError> {
    // `iptables -S <missing chain>` fails with misleading messages on the nft backend, so
    // look for the declaration in the full table listing.
    let out = run("iptables", &["-w", "-t", table, "-S"])?;
    let decl = format!("-N {chain}");
    Ok(out.lines().any(|l| l.trim() == decl))
}

fn write_file(path: &Path, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(|source| io_err("write", path, source))
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> NetError {
    NetError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

struct CommandLine<'a>(&'a str, &'a [&'a str]);

impl fmt::Display for CommandLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        for a in self.1 {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    run_inner(program, args, None)
}

fn run_stdin(program: &str, args: &[&str], stdin: &str) -> Result<String, NetError> {
    run_inner(program, args, Some(stdin))
}

/// iptables exit status 4 means a resource problem (a concurrent nft transaction); retried.
const IPTABLES_RETRIES: usize = 5;

fn run_inner(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let command = CommandLine(program, args).to_string();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| NetError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            tracing::trace!(command, "ok");
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let is_iptables = program.starts_with("iptables");
        if is_iptables && out.status.code() == Some(4) && attempt < IPTABLES_RETRIES {
            std::thread::sleep(std::time::Duration::from_millis(50 * attempt as u64));
            continue;
        }
        return Err(NetError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, subnet: &str) -> Network {
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
        assert_eq!(n.address(65532).unwrap(), Ipv4Addr::new(10, 88, 255, 254));
        assert!(matches!(
            n.address(65533),
            Err(NetError::SlotOutOfRange { slot: 65533, .. })
        ));
        assert!(n.address(u32::MAX).is_err());

        let small = net("b", "192.168.5.0/30");
        assert_eq!(small.address(0).unwrap(), Ipv4Addr::new(192, 168, 5, 2));
        assert!(small.address(1).is_err());
        assert_eq!(small.subnet(), "192.168.5.0/30");
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
    fn names_are_derived_from_id_and_bridge() {
        let n = net("hearth0", "10.88.0.0/16");
        assert_eq!(host_veth("0123456789ab"), "hv0123456789ab");
        assert_eq!(host_veth("0123456789abcdef"), "hv0123456789abc");
        assert_eq!(host_veth("abc"), "hvabc");
        assert_eq!(
            n.netns_path("0123456789ab"),
            PathBuf::from("/run/netns/hearth0-0123456789ab")
        );
        for bad in ["", "../x", "A", "a/b", "a b"] {
            assert!(
                matches!(n.setup(bad, 0), Err(NetError::InvalidId { .. })),
                "{bad:?}"
            );
            assert!(n.teardown(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chain_rules_are_scoped_to_the_bridge() {
        let n = net("br7", "10.1.0.0/16");
        let rules = n.chain_rules();
        assert!(rules.contains(":HEARTH-br7-IN - [0:0]\n"));
        assert!(rules.contains("-A HEARTH-br7-IN -j DROP\n"));
        assert!(rules.contains("-A HEARTH-br7-FWD -i br7 -o br7 -j DROP\n"));
        assert!(rules.contains("-A HEARTH-br7-NAT ! -o br7 -j MASQUERADE\n"));
        assert!(rules.contains("-A HEARTH-br7-FWD -i br7 -d 169.254.0.0/16 -j DROP\n"));
        assert!(rules.contains("-A HEARTH-br7-FWD -i br7 ! -s 10.1.0.0/16 -j DROP\n"));
        assert_eq!(rules.matches("COMMIT").count(), 2);
        let jumps = n.jumps();
        assert_eq!(jumps.len(), 4);
        assert!(jumps
            .iter()
            .all(|(_, _, spec)| spec.iter().any(|s| s.starts_with("HEARTH-br7-"))));
    }

    #[test]
    fn ports_are_pinned_to_their_mac_and_ip() {
        let n = net("br7", "10.1.0.0/16");
        let ip = Ipv4Addr::new(10, 1, 0, 9);
        assert_eq!(mac_for(ip), "02:48:0a:01:00:09");
        let rules = n.port_rules("hvabc", ip);
        assert!(rules.contains("port-hvabc ether saddr != 02:48:0a:01:00:09 drop"));
        assert!(rules.contains("arp saddr ip != 10.1.0.9 drop"));
        assert!(rules.contains("ip saddr != 10.1.0.9 drop"));
        assert!(rules.ends_with("ports { \"hvabc\" : jump port-hvabc }\n"));
        assert!(n.bridge_table().contains("table bridge hearth-br7 {"));
    }

    #[test]
    fn host_addresses_are_parsed_from_ip_output() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                   4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\ x\n\
                   5: br0    inet6 fe80::1/64 scope link\n";
        assert_eq!(
            parse_ip_addr_show(out),
            vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(192, 0, 2, 2)]
        );
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

    #[test]
    fn command_failures_carry_stderr() {
        let err = run("ip", &["link", "show", "dev", "hnosuch0"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ip link show dev hnosuch0"), "{msg}");
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(matches!(
            run("hearth-no-such-binary", &[]),
            Err(NetError::Spawn { .. })
        ));
    }
}
