//! The host bridge: its link, gateway address and forwarding, with the firewall around it.

use std::path::Path;

use crate::cmd::run;
use crate::{write_file, NetError, Network};

pub(crate) const SYS_NET: &str = "/sys/class/net";

impl Network {
    /// Creates or repairs the bridge, enables forwarding and (re)writes our firewall chains.
    pub fn ensure_host(&self) -> Result<(), NetError> {
        let br = self.bridge.as_str();
        let mac = self.gateway_mac();
        if !link_exists(br) {
            let add = ["link", "add", "name", br, "address", &mac, "type", "bridge"];
            if let Err(e) = run("ip", &add) {
                // Lost a race with a concurrent ensure_host: fine if it exists now.
                if !link_exists(br) {
                    return Err(e);
                }
            }
        }
        // A bridge whose address was never set takes its lowest port's, so it changes as
        // workspaces come and go; every netns on it then holds the gateway's old MAC until
        // its ARP entry fails, and its traffic stalls for up to two minutes meanwhile. A set
        // address stays (a bridge made by an older node gets it here).
        if !bridge_mac_is(br, &mac) {
            run("ip", &["link", "set", "dev", br, "address", &mac])?;
        }
        disable_ipv6(br)?;
        let gw = format!("{}/{}", self.gateway(), self.prefix_len());
        run("ip", &["addr", "replace", &gw, "dev", br])?;
        run("ip", &["link", "set", "dev", br, "up"])?;
        write_file(Path::new("/proc/sys/net/ipv4/ip_forward"), "1")?;
        self.install_firewall()?;
        tracing::info!(bridge = br, gateway = %gw, "host network ready");
        Ok(())
    }

    /// Removes our jump rules, chains and the bridge; whatever is already gone is fine.
    pub fn teardown_host(&self) -> Result<(), NetError> {
        self.remove_firewall()?;
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
}

/// Whether `br`'s address is `mac` and was set rather than inherited from a port
/// (`addr_assign_type` 3 is NET_ADDR_SET).
fn bridge_mac_is(br: &str, mac: &str) -> bool {
    let read = |f: &str| std::fs::read_to_string(Path::new(SYS_NET).join(br).join(f));
    read("address").is_ok_and(|a| a.trim().eq_ignore_ascii_case(mac))
        && read("addr_assign_type").is_ok_and(|t| t.trim() == "3")
}

pub(crate) fn link_exists(name: &str) -> bool {
    Path::new(SYS_NET).join(name).exists()
}

/// Without IPv6 on the host side, a workspace cannot reach the host over link-local addresses.
pub(crate) fn disable_ipv6(iface: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys/net/ipv6/conf")
        .join(iface)
        .join("disable_ipv6");
    if !Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    write_file(&path, "1")
}
