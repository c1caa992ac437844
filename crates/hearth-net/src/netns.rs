//! One network namespace and veth pair per workspace, its port on the bridge, and finding
//! what is left of them after a crash.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::bridge::{disable_ipv6, link_exists, SYS_NET};
use crate::cmd::{run, run_stdin};
use crate::egress;
use crate::firewall::mac_for;
use crate::{io_err, NetError, Network, WorkspaceId, WorkspaceNet};

const NETNS_DIR: &str = "/run/netns";
/// Host-side veth names are `hv` + this many characters of the id: 15 is the kernel's limit,
/// and 13 keeps the control plane's 12-hex ids whole so no two workspaces share a veth.
const VETH_ID_CHARS: usize = 13;

impl Network {
    /// Whether workspace `id` has a network (netns) to apply a policy to.
    pub fn has_network(&self, id: &WorkspaceId) -> bool {
        self.netns_path(id).exists()
    }

    /// Like [`Network::setup`], but keeps a workspace's network that is already in place
    /// (netns bound, host veth on our bridge): a stopped workspace keeps its network so a
    /// start costs no `ip` invocations.
    pub fn ensure(&self, id: &WorkspaceId, slot: u32) -> Result<WorkspaceNet, NetError> {
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
                prefix_len: self.prefix_len(),
                gateway: self.gateway(),
                host_veth: hv,
            });
        }
        self.setup(id, slot)
    }

    /// Creates the netns and veth of a workspace; leftovers from a crash are replaced.
    pub fn setup(&self, id: &WorkspaceId, slot: u32) -> Result<WorkspaceNet, NetError> {
        let ip = self.address(slot)?;
        self.teardown(id)?;
        let net = WorkspaceNet {
            netns_path: self.netns_path(id),
            ip,
            prefix_len: self.prefix_len(),
            gateway: self.gateway(),
            host_veth: host_veth(id),
        };
        if let Err(e) = self.setup_steps(id, &net) {
            if let Err(cleanup) = self.teardown(id) {
                tracing::warn!(%id, error = %cleanup, "cleanup after failed network setup");
            }
            return Err(e);
        }
        tracing::debug!(%id, ip = %ip, veth = net.host_veth, "workspace network ready");
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

    pub fn netns_path(&self, id: &WorkspaceId) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns_name(id))
    }

    /// Removes the veth and the netns; whatever is already gone is fine.
    pub fn teardown(&self, id: &WorkspaceId) -> Result<(), NetError> {
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
