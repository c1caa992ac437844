//! The host bridge: its link, gateway address and forwarding, with the firewall around it.

use std::path::Path;

use crate::cmd::run;
use crate::{write_file, NetError, Network};

pub(crate) const SYS_NET: &str = "/sys/class/net";

impl Network {
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
