//! One network namespace and veth pair per workspace, its port on the bridge, and finding
//! what is left of them after a crash.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::bridge::{disable_ipv6, link_exists, SYS_NET};
use crate::cmd::{run, run_stdin};
use crate::egress::{self, EgressRule};
use crate::firewall::mac_for;
use crate::{io_err, NetError, Network, WorkspaceId, WorkspaceNet};

const NETNS_DIR: &str = "/run/netns";
/// Host-side veth names are `hv` + this many characters of the id: 15 is the kernel's limit,
/// and 13 keeps the control plane's 12-hex ids whole so no two workspaces share a veth.
const VETH_ID_CHARS: usize = 13;
/// Suffix of the probe netns' name (`<bridge>-probe`): not hex, so never a workspace id,
/// and [`Network::list`] (hence reconcile) leaves it alone.
const PROBE: &str = "probe";

impl Network {
    /// Whether workspace `id` has a network (netns) to apply a policy to.
    pub fn has_network(&self, id: &WorkspaceId) -> bool {
        self.netns_path(id).exists()
    }

    /// Like [`Network::setup`], but keeps a workspace's network that is already in place
    /// (netns bound, host veth on our bridge): a stopped workspace keeps its network so a
    /// start costs no `ip` invocations. Either way the egress policy `deny` is in force
    /// when this returns; a new network gets its port pin and policy in one nft run.
    pub fn ensure(
        &self,
        id: &WorkspaceId,
        slot: u32,
        deny: &[EgressRule],
    ) -> Result<WorkspaceNet, NetError> {
        let ip = self.address(slot)?;
        let hv = host_veth(id);
        let master = std::fs::read_link(Path::new("/sys/class/net").join(&hv).join("master"));
        let on_bridge =
            master.is_ok_and(|m| m.file_name().is_some_and(|n| n == self.bridge.as_str()));
        if on_bridge && self.netns_path(id).exists() {
            // The pin made by `setup` stays with the port while it exists; re-applying it
            // here would cost an nft run (~10 ms) on every start.
            self.apply_egress(id, slot, deny)?;
            return Ok(WorkspaceNet {
                netns_path: self.netns_path(id),
                ip,
                prefix_len: self.prefix_len(),
                gateway: self.gateway(),
                host_veth: hv,
            });
        }
        egress::check_count(deny.len())?;
        // A half-made network (a crash mid-setup) goes; its firewall entries need no
        // listing (an nft run each): the script below replaces the port's pin chain and
        // the workspace's egress chain and map element whole.
        self.remove_links(id)?;
        let script = egress::workspace_script(&self.nft_table(), id, ip, deny);
        let net = self.create(id, ip, Some(&script))?;
        self.remember_egress(id, script);
        Ok(net)
    }

    /// Creates the netns and veth of a workspace; leftovers from a crash are replaced.
    pub fn setup(&self, id: &WorkspaceId, slot: u32) -> Result<WorkspaceNet, NetError> {
        let ip = self.address(slot)?;
        self.teardown(id)?;
        self.create(id, ip, None)
    }

    /// Makes the netns and veth (`extra_nft` goes in the same nft run as the port pin);
    /// on failure whatever was made is removed.
    fn create(
        &self,
        id: &WorkspaceId,
        ip: Ipv4Addr,
        extra_nft: Option<&str>,
    ) -> Result<WorkspaceNet, NetError> {
        let net = WorkspaceNet {
            netns_path: self.netns_path(id),
            ip,
            prefix_len: self.prefix_len(),
            gateway: self.gateway(),
            host_veth: host_veth(id),
        };
        if let Err(e) = self.setup_steps(id, &net, extra_nft) {
            if let Err(cleanup) = self.teardown(id) {
                tracing::warn!(%id, error = %cleanup, "cleanup after failed network setup");
            }
            return Err(e);
        }
        tracing::debug!(%id, ip = %ip, veth = net.host_veth, "workspace network ready");
        Ok(net)
    }

    /// Three `ip` batches and one nft run (each process costs milliseconds; this is most
    /// of a workspace's first start).
    fn setup_steps(
        &self,
        id: &str,
        net: &WorkspaceNet,
        extra_nft: Option<&str>,
    ) -> Result<(), NetError> {
        let ns = self.netns_name(id);
        let hv = net.host_veth.as_str();
        let mac = mac_for(net.ip);
        // Pinned before the port exists (the map is keyed by name), so no frame passes
        // unchecked once it joins the bridge.
        let mut nft = self.port_rules(hv, net.ip);
        nft.push_str(extra_nft.unwrap_or_default());
        run_stdin("nft", &["-f", "-"], &nft)?;
        run_stdin(
            "ip",
            &["-batch", "-"],
            &format!(
                "netns add {ns}
                 link add name {hv} type veth peer name eth0 address {mac} netns {ns}
"
            ),
        )?;
        disable_ipv6(hv)?;
        run_stdin(
            "ip",
            &["-batch", "-"],
            &format!(
                "link set dev {hv} master {br}
                 link set dev {hv} type bridge_slave isolated on
                 link set dev {hv} up
",
                br = self.bridge
            ),
        )?;
        run_stdin(
            "ip",
            &["-n", &ns, "-batch", "-"],
            &format!(
                "addr add {ip}/{len} dev eth0
                 link set dev eth0 up
                 link set dev lo up
                 route add default via {gw}
",
                ip = net.ip,
                len = net.prefix_len,
                gw = net.gateway
            ),
        )?;
        Ok(())
    }

    /// Removes the veth and netns if they exist (no firewall work).
    fn remove_links(&self, id: &WorkspaceId) -> Result<(), NetError> {
        self.remove_pair(&host_veth(id), id)
    }

    /// Removes host veth `hv` and netns `<bridge>-<name>` if they exist.
    fn remove_pair(&self, hv: &str, name: &str) -> Result<(), NetError> {
        if link_exists(hv) {
            if let Err(e) = run("ip", &["link", "del", "dev", hv]) {
                if link_exists(hv) {
                    return Err(e);
                }
            }
        }
        let ns = self.netns_name(name);
        if Path::new(NETNS_DIR).join(&ns).exists() {
            run("ip", &["netns", "del", &ns])?;
        }
        Ok(())
    }

    /// The probe netns: a port on the bridge that belongs to no workspace, where the node
    /// runs network fetches made for users before (or without) a workspace, such as the
    /// devcontainer.json read of a create. Its traffic crosses the bridge's firewall and
    /// egress table like a workspace's (no loopback, no link-local, no node address, no
    /// denied CIDR), so it reaches what every workspace may reach and nothing more.
    /// Made on first use and kept; replaced if half of it is missing.
    pub fn ensure_probe(&self) -> Result<PathBuf, NetError> {
        let _made_once = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        let path = Path::new(NETNS_DIR).join(self.netns_name(PROBE));
        let hv = self.probe_veth();
        let master = std::fs::read_link(Path::new(SYS_NET).join(&hv).join("master"));
        if master.is_ok_and(|m| m.file_name().is_some_and(|n| n == self.bridge.as_str()))
            && path.exists()
        {
            return Ok(path);
        }
        self.remove_probe_links()?;
        let net = WorkspaceNet {
            netns_path: path.clone(),
            ip: self.probe_address(),
            prefix_len: self.prefix_len(),
            gateway: self.gateway(),
            host_veth: hv,
        };
        if let Err(e) = self.setup_steps(PROBE, &net, None) {
            if let Err(cleanup) = self.remove_probe() {
                tracing::warn!(error = %cleanup, "cleanup after failed probe netns setup");
            }
            return Err(e);
        }
        tracing::info!(ip = %net.ip, "probe netns ready");
        Ok(path)
    }

    /// Removes the probe netns, its veth and its port pin; whatever is gone is fine.
    pub fn remove_probe(&self) -> Result<(), NetError> {
        self.remove_probe_links()?;
        self.unpin_port(&self.probe_veth())
    }

    fn remove_probe_links(&self) -> Result<(), NetError> {
        self.remove_pair(&self.probe_veth(), PROBE)
    }

    /// The probe's host veth: `hp` and the bridge's name (cut to the kernel's 15), so
    /// nodes on one host with different bridges have their own, and no workspace's `hv`
    /// port is ever taken for it.
    fn probe_veth(&self) -> String {
        let n = self.bridge.len().min(13);
        format!("hp{}", &self.bridge[..n])
    }

    pub fn netns_path(&self, id: &WorkspaceId) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns_name(id))
    }

    /// Removes the veth and the netns; whatever is already gone is fine.
    pub fn teardown(&self, id: &WorkspaceId) -> Result<(), NetError> {
        self.remove_links(id)?;
        self.unpin_port(&host_veth(id))?;
        self.remove_egress(id)
    }

    /// Ids with a netns of this bridge, plus the `hv` suffix of any port on our bridge
    /// without one (a truncated id; [`Network::teardown`] accepts it and removes the veth),
    /// plus ids that still have an egress chain.
    pub fn list(&self) -> Result<Vec<WorkspaceId>, NetError> {
        let prefix = format!("{}-", self.bridge);
        let mut ids = BTreeSet::new();
        for name in dir_names(Path::new(NETNS_DIR))? {
            if let Some(id) = name.strip_prefix(&prefix) {
                if let Ok(id) = WorkspaceId::new(id) {
                    ids.insert(id);
                }
            }
        }
        let brif = Path::new(SYS_NET).join(&self.bridge).join("brif");
        let mut orphans = Vec::new();
        for port in dir_names(&brif)? {
            if let Some(frag) = port.strip_prefix("hv") {
                if let Ok(frag) = WorkspaceId::new(frag) {
                    if !ids.iter().any(|id| host_veth(id) == port) {
                        orphans.push(frag);
                    }
                }
            }
        }
        ids.extend(orphans);
        if let Some(listing) = self.egress_listing()? {
            ids.extend(
                egress::chain_ids(&listing)
                    .into_iter()
                    .filter_map(|id| WorkspaceId::new(id).ok()),
            );
        }
        Ok(ids.into_iter().collect())
    }

    /// A non-blocking, close-on-exec TCP socket (IPv6 when `ipv6`) made inside workspace
    /// `id`'s netns, for connecting to or listening on its ports (its loopback included).
    ///
    /// A socket belongs to the netns it was made in, whoever uses it later. It is made on
    /// a thread of its own that joins the netns and then ends, so no thread of ours is
    /// ever left in a workspace's namespace.
    pub fn tcp_socket(&self, id: &WorkspaceId, ipv6: bool) -> Result<OwnedFd, NetError> {
        use nix::sched::{setns, CloneFlags};
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

        let path = self.netns_path(id);
        let ns = std::fs::File::open(&path).map_err(|source| io_err("open", &path, source))?;
        let family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let made = std::thread::Builder::new()
            .name("netns-socket".into())
            .spawn(move || -> io::Result<OwnedFd> {
                setns(&ns, CloneFlags::CLONE_NEWNET)?;
                Ok(socket(
                    family,
                    SockType::Stream,
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                    None,
                )?)
            })
            .map_err(|source| io_err("spawn thread for a socket in", &path, source))?
            .join()
            .map_err(|_| {
                io_err(
                    "make a socket in",
                    &path,
                    io::Error::other("the thread panicked"),
                )
            })?;
        made.map_err(|source| io_err("make a socket in", &path, source))
    }

    fn netns_name(&self, id: &str) -> String {
        format!("{}-{id}", self.bridge)
    }
}

pub(crate) fn host_veth(id: &str) -> String {
    let n = id.len().min(VETH_ID_CHARS);
    format!("hv{}", &id[..n])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::net;

    #[test]
    fn names_are_derived_from_id_and_bridge() {
        let n = net("hearth0", "10.88.0.0/16");
        assert_eq!(host_veth("0123456789ab"), "hv0123456789ab");
        assert_eq!(host_veth("0123456789abcdef"), "hv0123456789abc");
        assert_eq!(host_veth("abc"), "hvabc");
        assert_eq!(
            n.netns_path(&WorkspaceId::new("0123456789ab").unwrap()),
            PathBuf::from("/run/netns/hearth0-0123456789ab")
        );
    }
}
