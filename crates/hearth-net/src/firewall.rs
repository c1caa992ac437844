//! The node's packet filters: iptables chains that isolate the bridge, the nftables
//! `bridge` table that pins each port to its workspace's MAC and address, and the egress
//! table (its scripts are built in [`crate::egress`]).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::cmd::{run, run_stdin};
use crate::egress::{self, Cidr, EgressRule};
use crate::{NetError, Network, WorkspaceId};

impl Network {
    /// Writes our iptables chains and their jumps, the bridge table and the egress table.
    pub(crate) fn install_firewall(&self) -> Result<(), NetError> {
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
        let script =
            egress::host_script(&self.nft_table(), &self.bridge, &deny, &self.egress.limits);
        run_stdin("nft", &["-f", "-"], &script)?;
        Ok(())
    }

    /// Removes our jump rules and chains, the bridge table and the egress table.
    pub(crate) fn remove_firewall(&self) -> Result<(), NetError> {
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
        Ok(())
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
    pub fn apply_egress(
        &self,
        id: &WorkspaceId,
        slot: u32,
        rules: &[EgressRule],
    ) -> Result<(), NetError> {
        egress::check_count(rules.len())?;
        let ip = self.address(slot)?;
        let script = egress::workspace_script(&self.nft_table(), id, ip, rules);
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if applied.get(id.as_str()) == Some(&script) {
            return Ok(());
        }
        // Forget first: a failed run may have changed nothing or everything.
        applied.remove(id.as_str());
        run_stdin("nft", &["-f", "-"], &script)?;
        applied.insert(id.to_string(), script);
        tracing::debug!(%id, ip = %ip, rules = rules.len(), "egress policy applied");
        Ok(())
    }

    /// Records that the kernel holds `script` for `id` (applied as part of another run).
    pub(crate) fn remember_egress(&self, id: &WorkspaceId, script: String) {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), script);
    }

    /// [`Network::apply_egress`] for many workspaces in one nft transaction: a node
    /// restart repairs every running workspace's rules with one nft run, not one each.
    /// If the batch is refused, each workspace is applied on its own so one bad entry
    /// holds back no other; the errors come back per id.
    pub fn apply_egress_many(
        &self,
        workspaces: &[(&WorkspaceId, u32, &[EgressRule])],
    ) -> Vec<(WorkspaceId, NetError)> {
        let mut errors = Vec::new();
        let mut scripts = Vec::new();
        for &(id, slot, rules) in workspaces {
            let script = egress::check_count(rules.len())
                .and_then(|()| self.address(slot))
                .map(|ip| egress::workspace_script(&self.nft_table(), id, ip, rules));
            match script {
                Ok(s) => scripts.push((id, slot, rules, s)),
                Err(e) => errors.push((id.clone(), e)),
            }
        }
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        scripts.retain(|(id, _, _, s)| applied.get(id.as_str()) != Some(s));
        if scripts.is_empty() {
            return errors;
        }
        for (id, ..) in &scripts {
            applied.remove(id.as_str());
        }
        let all: String = scripts.iter().map(|(.., s)| s.as_str()).collect();
        match run_stdin("nft", &["-f", "-"], &all) {
            Ok(_) => {
                for (id, _, _, s) in scripts {
                    applied.insert(id.to_string(), s);
                }
            }
            Err(e) => {
                drop(applied);
                tracing::warn!(error = %e, "batched egress apply refused; applying one by one");
                for (id, slot, rules, _) in scripts {
                    if let Err(e) = self.apply_egress(id, slot, rules) {
                        errors.push((id.clone(), e));
                    }
                }
            }
        }
        errors
    }

    /// Removes workspace `id`'s deny chain and map entries; a missing table is fine.
    pub(crate) fn remove_egress(&self, id: &str) -> Result<(), NetError> {
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
    pub(crate) fn egress_listing(&self) -> Result<Option<String>, NetError> {
        let t = self.nft_table();
        let tables = run("nft", &["list", "tables", egress::TABLE_FAMILY])?;
        let decl = format!("table {} {t}", egress::TABLE_FAMILY);
        if !tables.lines().any(|l| l.trim() == decl) {
            return Ok(None);
        }
        run("nft", &["list", "table", egress::TABLE_FAMILY, &t]).map(Some)
    }

    /// Removes a port's pin; a missing table (host already torn down) is fine.
    pub(crate) fn unpin_port(&self, hv: &str) -> Result<(), NetError> {
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

    pub(crate) fn nft_table(&self) -> String {
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
    pub(crate) fn port_rules(&self, hv: &str, ip: Ipv4Addr) -> String {
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

fn chain_exists(table: &str, chain: &str) -> Result<bool, NetError> {
    // `iptables -S <missing chain>` fails with misleading messages on the nft backend, so
    // look for the declaration in the full table listing.
    let out = run("iptables", &["-w", "-t", table, "-S"])?;
    let decl = format!("-N {chain}");
    Ok(out.lines().any(|l| l.trim() == decl))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::net;

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
}
