//! Egress policy: what a workspace may reach outside the node, and how fast it may open
//! connections.
//!
//! Everything lives in one nftables table per bridge, `ip hearth-<bridge>`:
//! - set `node_deny`: destinations no workspace may reach (the node's own addresses,
//!   0/8, 127/8, 169.254/16, plus operator extras such as the control plane);
//! - map `ws_chains`: workspace IPv4 address -> `jump ws-<id>`, the user's deny rules. Keying
//!   by source address is sound because the bridge table pins every port to its address;
//! - sets `ws_rate` and `ws_conns`: per-source meters for new connections per second and
//!   concurrently tracked connections;
//! - base chain `outbound` on the forward hook, before iptables' FORWARD: node deny, then
//!   the workspace's chain, then the two meters. It never accepts, so nothing a user sets
//!   can skip a later check (iptables still runs after it).
//!
//! Workspace chains only reject, so a user rule can add denials but never lift the
//! node's. Packets over a meter are dropped in forward, before their conntrack entry is
//! confirmed, so a flood never lands in the node's conntrack table.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

use crate::NetError;

/// Most user rules one workspace may have; each is one nft rule evaluated per packet.
pub const MAX_EGRESS_RULES: usize = 64;

/// Destinations that are never reachable from a workspace, whatever its policy.
pub const BUILTIN_DENY: [&str; 3] = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16"];

/// An IPv4 network with host bits clear, e.g. `10.0.0.0/8`. Parsing differs from
/// [`Ipv4Net`]'s: a bare address is a `/32`, and host bits set is an error, not truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(Ipv4Net);

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        let net = Ipv4Net::new(addr, prefix).ok()?;
        (net.trunc() == net).then_some(Cidr(net))
    }

    pub fn host(addr: Ipv4Addr) -> Cidr {
        Cidr(Ipv4Net::from(addr))
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.0.network()
    }

    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }
}

impl From<Cidr> for Ipv4Net {
    fn from(c: Cidr) -> Ipv4Net {
        c.0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Cidr {
    type Err = NetError;

    /// `a.b.c.d/len` or a bare address (`/32`); host bits must be clear so `10.1.2.3/8`
    /// cannot silently mean something wider than the user wrote.
    fn from_str(s: &str) -> Result<Cidr, NetError> {
        let err = |reason: String| NetError::InvalidEgressRule {
            rule: s.to_owned(),
            reason,
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| err(format!("{addr:?} is not an IPv4 address")))?;
        let net = match prefix {
            None => Ipv4Net::from(addr),
            Some(p) => decimal::<u8>(p)
                .and_then(|len| Ipv4Net::new(addr, len).ok())
                .ok_or_else(|| err(format!("prefix length {p:?} is not 0..=32")))?,
        };
        if net.trunc() != net {
            let (net, len) = (net.network(), net.prefix_len());
            return Err(err(format!(
                "host bits are set (did you mean {net}/{len}?)"
            )));
        }
        Ok(Cidr(net))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A plain decimal: digits only, no sign, no leading zero (what the API pattern states).
fn decimal<T: FromStr>(s: &str) -> Option<T> {
    let plain =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    plain.then(|| s.parse().ok()).flatten()
}

/// One user deny rule: `CIDR[:PORT[-PORT][/tcp|/udp]]`. Ports without a protocol cover
/// both TCP and UDP; no ports means every protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EgressRule {
    pub dest: Cidr,
    /// Inclusive destination port range.
    pub ports: Option<(u16, u16)>,
    pub protocol: Option<Protocol>,
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dest)?;
        match self.ports {
            Some((a, b)) if a == b => write!(f, ":{a}")?,
            Some((a, b)) => write!(f, ":{a}-{b}")?,
            None => {}
        }
        if let Some(p) = self.protocol {
            write!(f, "/{}", p.as_str())?;
        }
        Ok(())
    }
}

impl FromStr for EgressRule {
    type Err = NetError;

    fn from_str(s: &str) -> Result<EgressRule, NetError> {
        let err = |reason: &str| NetError::InvalidEgressRule {
            rule: s.to_owned(),
            reason: reason.to_owned(),
        };
        // Only spaces and tabs are trimmed, so the API's pattern can state the syntax exactly.
        let s = s.trim_matches([' ', '\t']);
        if s.is_empty() {
            return Err(err("empty rule (expected CIDR[:PORT[-PORT][/tcp|/udp]])"));
        }
        let (dest, rest) = match s.split_once(':') {
            Some((d, r)) => (d, Some(r)),
            None => (s, None),
        };
        let dest: Cidr = dest.parse().map_err(|e| match e {
            NetError::InvalidEgressRule { reason, .. } => NetError::InvalidEgressRule {
                rule: s.to_owned(),
                reason,
            },
            other => other,
        })?;
        let Some(rest) = rest else {
            return Ok(EgressRule {
                dest,
                ports: None,
                protocol: None,
            });
        };
        let (ports, protocol) = match rest.split_once('/') {
            Some((p, proto)) => (p, Some(proto)),
            None => (rest, None),
        };
        let port = |p: &str| -> Result<u16, NetError> {
            match decimal::<u16>(p).ok_or(()) {
                Ok(0) | Err(_) => Err(err(&format!("port {p:?} is not 1..=65535"))),
                Ok(n) => Ok(n),
            }
        };
        let ports = match ports.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(err("port range runs backwards"));
                }
                (a, b)
            }
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        let protocol = match protocol {
            None => None,
            Some("tcp") => Some(Protocol::Tcp),
            Some("udp") => Some(Protocol::Udp),
            Some(_) => return Err(err("protocol must be tcp or udp")),
        };
        Ok(EgressRule {
            dest,
            ports: Some(ports),
            protocol,
        })
    }
}

impl EgressRule {
    /// The nft match for this rule (without the verdict).
    fn nft_match(&self) -> String {
        let mut m = format!("ip daddr {}", self.dest);
        if let Some((a, b)) = self.ports {
            let ports = if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            };
            match self.protocol {
                Some(p) => m.push_str(&format!(" {} dport {ports}", p.as_str())),
                None => m.push_str(&format!(" meta l4proto {{ tcp, udp }} th dport {ports}")),
            }
        }
        m
    }
}

/// Parses, de-duplicates and bounds a user's rule list; the error names the first bad rule.
pub fn parse_rules<S: AsRef<str>>(rules: &[S]) -> Result<Vec<EgressRule>, NetError> {
    let mut out: Vec<EgressRule> = Vec::with_capacity(rules.len());
    for r in rules {
        let rule: EgressRule = r.as_ref().parse()?;
        if !out.contains(&rule) {
            out.push(rule);
        }
    }
    check_count(out.len())?;
    Ok(out)
}

pub(crate) fn check_count(n: usize) -> Result<(), NetError> {
    if n > MAX_EGRESS_RULES {
        return Err(NetError::TooManyEgressRules {
            count: n,
            max: MAX_EGRESS_RULES,
        });
    }
    Ok(())
}

/// Per-workspace connection limits; the same for every workspace of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// New outbound connections (TCP, UDP flows, ...) per second, sustained.
    pub rate: u32,
    /// New connections allowed at once above the sustained rate.
    pub burst: u32,
    /// Concurrently tracked outbound connections. Closed TCP connections (TIME_WAIT) are
    /// not counted, so a workspace's share of the conntrack table stays below
    /// `max_conns + rate * 120 s` (the kernel's TIME_WAIT timeout).
    pub max_conns: u32,
}

impl Default for ConnLimits {
    /// Sized so one workspace takes at most ~16k of a 262144-entry conntrack table, while
    /// package installs and test suites (a few hundred connections) never notice.
    fn default() -> Self {
        ConnLimits {
            rate: 100,
            burst: 500,
            max_conns: 4096,
        }
    }
}

impl ConnLimits {
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |reason: &'static str| Err(NetError::InvalidLimits { reason });
        if self.rate == 0 || self.burst == 0 || self.max_conns == 0 {
            return bad("rate, burst and max connections must be at least 1");
        }
        if self.rate > 1_000_000 || self.burst > 1_000_000 || self.max_conns > 1_000_000 {
            return bad("rate, burst and max connections must be at most 1000000");
        }
        Ok(())
    }
}

/// Node-wide egress settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressConfig {
    /// Denied for every workspace in addition to [`BUILTIN_DENY`] and the node's own
    /// addresses (e.g. the control plane on another host, the node's LAN).
    pub always_deny: Vec<Cidr>,
    pub limits: ConnLimits,
}

pub(crate) const TABLE_FAMILY: &str = "ip";

/// Declares the table and its sets (never flushing the workspace chains or the map, so a
/// rerun keeps running workspaces' rules) and refills the node deny set and base chain.
pub(crate) fn host_script(table: &str, bridge: &str, deny: &[Cidr], limits: &ConnLimits) -> String {
    let t = format!("{TABLE_FAMILY} {table}");
    let ConnLimits {
        rate,
        burst,
        max_conns,
    } = limits;
    let elements: Vec<String> = deny.iter().map(Cidr::to_string).collect();
    let mut s = format!(
        "table {t} {{\n\
         \tset node_deny {{ type ipv4_addr; flags interval; auto-merge; }}\n\
         \tmap ws_chains {{ type ipv4_addr : verdict; }}\n\
         \tset ws_rate {{ type ipv4_addr; size 65535; flags dynamic,timeout; timeout 1m; }}\n\
         \tset ws_conns {{ type ipv4_addr; size 65535; flags dynamic; }}\n\
         \tchain outbound {{ type filter hook forward priority filter - 10; policy accept; }}\n\
         }}\n\
         flush chain {t} outbound\n\
         flush set {t} node_deny\n"
    );
    if !elements.is_empty() {
        s.push_str(&format!(
            "add element {t} node_deny {{ {} }}\n",
            elements.join(", ")
        ));
    }
    let i = format!("add rule {t} outbound iifname \"{bridge}\"");
    s.push_str(&format!(
        "{i} ip daddr @node_deny counter drop\n\
         {i} ip saddr vmap @ws_chains\n\
         {i} ct state new update @ws_rate {{ ip saddr limit rate over {rate}/second burst {burst} packets }} counter drop\n\
         {i} ct state new add @ws_conns {{ ip saddr ct count over {max_conns} }} counter drop\n"
    ));
    s
}

pub(crate) fn ws_chain(id: &str) -> String {
    format!("ws-{id}")
}

/// Replaces workspace `id`'s chain and points its address at it, in one transaction.
pub(crate) fn workspace_script(
    table: &str,
    id: &str,
    ip: Ipv4Addr,
    rules: &[EgressRule],
) -> String {
    let t = format!("{TABLE_FAMILY} {table}");
    let c = ws_chain(id);
    let mut s = format!("add chain {t} {c}\nflush chain {t} {c}\n");
    for r in rules {
        s.push_str(&format!(
            "add rule {t} {c} {} counter reject with icmp type admin-prohibited\n",
            r.nft_match()
        ));
    }
    // add+delete+add: the map may already hold this address (a rerun, or a slot reused
    // after a crash) and `add` alone does not replace an element's verdict.
    s.push_str(&format!(
        "add element {t} ws_chains {{ {ip} : jump {c} }}\n\
         delete element {t} ws_chains {{ {ip} }}\n\
         add element {t} ws_chains {{ {ip} : jump {c} }}\n"
    ));
    s
}

/// Removes workspace `id`'s chain and every map element that jumps to it; `listing` is
/// `nft list table` output. The leading add makes the delete succeed when it is gone.
pub(crate) fn remove_workspace_script(table: &str, id: &str, listing: &str) -> String {
    let t = format!("{TABLE_FAMILY} {table}");
    let c = ws_chain(id);
    let mut s = String::new();
    for ip in map_keys_for(listing, &c) {
        s.push_str(&format!("delete element {t} ws_chains {{ {ip} }}\n"));
    }
    s.push_str(&format!("add chain {t} {c}\ndelete chain {t} {c}\n"));
    s
}

/// Addresses mapped to `jump <chain>` in an `nft list` output (elements may wrap lines).
pub(crate) fn map_keys_for(listing: &str, chain: &str) -> Vec<Ipv4Addr> {
    let flat = listing.replace(['\n', '\t'], " ");
    let tokens: Vec<&str> = flat
        .split([' ', ',', '{', '}'])
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = Vec::new();
    for w in tokens.windows(4) {
        if w[1] == ":" && w[2] == "jump" && w[3] == chain {
            if let Ok(ip) = w[0].parse() {
                out.push(ip);
            }
        }
    }
    out
}

/// Ids of workspace chains in an `nft list table` output.
pub(crate) fn chain_ids(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain ws-"))
        .filter_map(|rest| rest.strip_suffix(" {"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> EgressRule {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_print_canonically() {
        for (input, canon) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7/32"),
            (" 0.0.0.0/0 ", "0.0.0.0/0"),
            ("1.2.3.4/32:443", "1.2.3.4/32:443"),
            ("1.2.3.0/24:8000-9000/tcp", "1.2.3.0/24:8000-9000/tcp"),
            ("1.2.3.4:53/udp", "1.2.3.4/32:53/udp"),
            ("1.2.3.4:53-53", "1.2.3.4/32:53"),
        ] {
            assert_eq!(rule(input).to_string(), canon, "{input}");
            assert_eq!(rule(canon), rule(input));
        }
    }

    #[test]
    fn bad_rules_say_why() {
        for (input, why) in [
            ("", "empty"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "prefix length"),
            ("10.0.0/8", "not an IPv4 address"),
            ("fe80::/10", "not an IPv4 address"),
            ("example.com", "not an IPv4 address"),
            ("1.2.3.4:0", "not 1..=65535"),
            ("1.2.3.4:65536", "not 1..=65535"),
            ("1.2.3.4:90-80", "backwards"),
            ("1.2.3.4:80/sctp", "tcp or udp"),
            ("1.2.3.4:/tcp", "not 1..=65535"),
            ("1.2.3.4:+80", "not 1..=65535"),
            ("1.2.3.4:080", "not 1..=65535"),
            ("1.2.3.0/+24", "prefix length"),
            ("1.2.3.0/024", "prefix length"),
        ] {
            let e = input.parse::<EgressRule>().unwrap_err().to_string();
            assert!(e.contains(why), "{input:?}: {e}");
            assert!(e.contains(&format!("{:?}", input.trim())), "{input:?}: {e}");
        }
    }

    #[test]
    fn rule_lists_are_deduplicated_and_bounded() {
        let got = parse_rules(&["10.0.0.0/8", "10.0.0.0/8", "1.2.3.4"]).unwrap();
        assert_eq!(got, vec![rule("10.0.0.0/8"), rule("1.2.3.4/32")]);
        let many: Vec<String> = (0..=MAX_EGRESS_RULES)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        assert!(matches!(
            parse_rules(&many),
            Err(NetError::TooManyEgressRules { .. })
        ));
        assert_eq!(parse_rules(&many[..MAX_EGRESS_RULES]).unwrap().len(), 64);
        assert!(parse_rules(&["10.0.0.0/8", "nope"]).is_err());
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let c: Cidr = "169.254.0.0/16".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(169, 254, 169, 254)));
        assert!(!c.contains(Ipv4Addr::new(169, 255, 0, 1)));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        assert!(Cidr::new(Ipv4Addr::new(10, 0, 0, 1), 8).is_none());
    }

    #[test]
    fn workspace_chain_rejects_only() {
        let rules = parse_rules(&["10.0.0.0/8", "1.2.3.4:443/tcp", "1.2.3.4:50-60"]).unwrap();
        let s = workspace_script("hearth-br7", "abc", Ipv4Addr::new(10, 1, 0, 2), &rules);
        assert!(s.starts_with("add chain ip hearth-br7 ws-abc\nflush chain ip hearth-br7 ws-abc\n"));
        assert!(s.contains(
            "add rule ip hearth-br7 ws-abc ip daddr 10.0.0.0/8 counter reject with icmp type admin-prohibited\n"
        ));
        assert!(s.contains("ip daddr 1.2.3.4/32 tcp dport 443 counter reject"));
        assert!(s.contains(
            "ip daddr 1.2.3.4/32 meta l4proto { tcp, udp } th dport 50-60 counter reject"
        ));
        assert!(!s.contains("accept"), "{s}");
        assert_eq!(s.matches("add rule").count(), 3);
        assert!(s.ends_with(
            "add element ip hearth-br7 ws_chains { 10.1.0.2 : jump ws-abc }\n\
             delete element ip hearth-br7 ws_chains { 10.1.0.2 }\n\
             add element ip hearth-br7 ws_chains { 10.1.0.2 : jump ws-abc }\n"
        ));
        // An empty policy still gets its (empty) chain, so the address maps to this id.
        let empty = workspace_script("t", "abc", Ipv4Addr::new(10, 1, 0, 2), &[]);
        assert_eq!(empty.matches("add rule").count(), 0);
    }

    #[test]
    fn host_script_denies_before_the_user_chain_and_meters_after() {
        let deny = vec![
            "127.0.0.0/8".parse().unwrap(),
            Cidr::host(Ipv4Addr::new(192, 0, 2, 2)),
        ];
        let s = host_script("hearth-br7", "br7", &deny, &ConnLimits::default());
        assert!(s.contains("add element ip hearth-br7 node_deny { 127.0.0.0/8, 192.0.2.2/32 }\n"));
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle}\n{s}"));
        let deny_rule = pos("iifname \"br7\" ip daddr @node_deny counter drop");
        let user = pos("iifname \"br7\" ip saddr vmap @ws_chains");
        let rate = pos("limit rate over 100/second burst 500 packets } counter drop");
        let conns = pos("ct count over 4096 } counter drop");
        assert!(deny_rule < user && user < rate && rate < conns, "{s}");
        assert!(s.contains("flush chain ip hearth-br7 outbound\n"));
        // The map and workspace chains are declared, never flushed.
        assert!(!s.contains("flush map"));
        assert_eq!(
            s.matches("accept").count(),
            1,
            "only the policy accepts: {s}"
        );
    }

    #[test]
    fn removal_finds_every_address_of_a_chain() {
        let listing = "table ip hearth-x {\n\tmap ws_chains {\n\t\ttype ipv4_addr : verdict\n\
             \t\telements = { 10.88.0.2 : jump ws-abc, 10.88.0.3 : jump ws-def,\n\
             \t\t\t     10.88.0.9 : jump ws-abc }\n\t}\n\n\tchain ws-abc {\n\t}\n\n\
             \tchain ws-def {\n\t\tip daddr 1.2.3.4/32 counter packets 0 bytes 0 reject\n\t}\n}\n";
        assert_eq!(
            map_keys_for(listing, "ws-abc"),
            vec![Ipv4Addr::new(10, 88, 0, 2), Ipv4Addr::new(10, 88, 0, 9)]
        );
        assert!(map_keys_for(listing, "ws-ab").is_empty());
        assert_eq!(chain_ids(listing), vec!["abc", "def"]);
        let s = remove_workspace_script("hearth-x", "abc", listing);
        assert_eq!(
            s,
            "delete element ip hearth-x ws_chains { 10.88.0.2 }\n\
             delete element ip hearth-x ws_chains { 10.88.0.9 }\n\
             add chain ip hearth-x ws-abc\ndelete chain ip hearth-x ws-abc\n"
        );
    }

    #[test]
    fn limits_are_validated() {
        ConnLimits::default().validate().unwrap();
        for l in [
            ConnLimits {
                rate: 0,
                ..Default::default()
            },
            ConnLimits {
                max_conns: 0,
                ..Default::default()
            },
            ConnLimits {
                burst: 2_000_000,
                ..Default::default()
            },
        ] {
            assert!(l.validate().is_err(), "{l:?}");
        }
    }
}
