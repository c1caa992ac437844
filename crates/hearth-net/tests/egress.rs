//! Egress policy against the real kernel: needs root, iproute2, iptables and nft.
//!
//! "Outside" is a network namespace behind a veth routed from the host, so workspace
//! traffic to it takes the same path (forward + NAT) as traffic to the internet.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hearth_net::{Cidr, ConnLimits, EgressConfig, EgressRule, NetConfig, Network, WorkspaceId};
use nix::sched::CloneFlags;

fn random() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Own bridge and subnet `10.213.<third>.0/24` per test.
fn network(third: u8, egress: EgressConfig) -> Network {
    Network::new(NetConfig {
        bridge: format!("hteg{:06x}", random() & 0xff_ffff),
        subnet: format!("10.213.{third}.0/24"),
        egress,
    })
    .unwrap()
}

/// Tears the workspaces and host state down even when an assertion failed.
struct Guard<'a> {
    net: &'a Network,
    ids: Vec<WorkspaceId>,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.net.teardown(id);
        }
        let _ = self.net.teardown_host();
    }
}

/// A netns reached from the host through veth `hxo...`: the host end is
/// `10.214.<third>.1/24`, the far end holds `.2`, `.3`, `.4` and link-local
/// 169.254.213.<third> (routed there from the host, like a cloud metadata endpoint; own
/// per test since routes are host-wide). Removed on drop.
struct Outside {
    ns: String,
    veth: String,
    third: u8,
}

impl Outside {
    fn new(third: u8) -> Outside {
        let tag = format!("{:06x}", random() & 0xff_ffff);
        let o = Outside {
            ns: format!("hxo{tag}"),
            veth: format!("hxo{tag}"),
            third,
        };
        sh(&["ip", "netns", "add", &o.ns]);
        sh(&[
            "ip", "link", "add", "name", &o.veth, "type", "veth", "peer", "name", "eth0", "netns",
            &o.ns,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", o.ip(1)),
            "dev",
            &o.veth,
        ]);
        sh(&["ip", "link", "set", "dev", &o.veth, "up"]);
        for n in [2, 3, 4] {
            let a = format!("{}/24", o.ip(n));
            sh(&["ip", "-n", &o.ns, "addr", "add", &a, "dev", "eth0"]);
        }
        let md = format!("{}/32", o.metadata());
        sh(&["ip", "-n", &o.ns, "addr", "add", &md, "dev", "eth0"]);
        sh(&["ip", "-n", &o.ns, "link", "set", "dev", "eth0", "up"]);
        sh(&["ip", "-n", &o.ns, "link", "set", "dev", "lo", "up"]);
        // The route goes with the veth.
        sh(&[
            "ip",
            "route",
            "add",
            &md,
            "via",
            &o.ip(2).to_string(),
            "dev",
            &o.veth,
        ]);
        o
    }

    fn ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 214, self.third, n)
    }

    fn metadata(&self) -> Ipv4Addr {
        Ipv4Addr::new(169, 254, 213, self.third)
    }

    fn path(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.ns)
    }

    /// A TCP listener on every address of the outside netns.
    fn listen(&self) -> (TcpListener, u16) {
        let l = in_netns(&self.path(), || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap()
        });
        let port = l.local_addr().unwrap().port();
        (l, port)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.veth])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Runs `f` on a thread that joined the netns; sockets it creates stay in that netns.
fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Connects from the netns at `path`: Ok(elapsed) or Err((error, elapsed)).
fn connect_from(path: &Path, addr: SocketAddr) -> Result<Duration, (String, Duration)> {
    in_netns(path, move || {
        let t0 = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_millis(700)) {
            Ok(_) => Ok(t0.elapsed()),
            Err(e) => Err((e.to_string(), t0.elapsed())),
        }
    })
}

fn reaches(path: &Path, addr: SocketAddr) -> bool {
    connect_from(path, addr).is_ok()
}

fn host_reaches(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok()
}

fn rules(rs: &[&str]) -> Vec<EgressRule> {
    rs.iter().map(|r| r.parse().unwrap()).collect()
}

fn egress_listing(net: &Network) -> String {
    let out = Command::new("nft")
        .args(["list", "table", "ip", &format!("hearth-{}", net.bridge())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Conntrack entries whose original direction is `src` -> any port in `ports`.
fn conntrack_entries(src: Ipv4Addr, ports: std::ops::Range<u16>) -> usize {
    let table = std::fs::read_to_string("/proc/net/nf_conntrack").unwrap();
    let want = format!("src={src} ");
    table
        .lines()
        .filter(|l| l.contains(&want))
        .filter(|l| {
            // The first dport= is the original direction's.
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("dport="))
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| ports.contains(&p))
        })
        .count()
}

/// Sends one UDP datagram to each port in `ports` of `dest` from the netns at `path`
/// (each a new flow), as fast as it can; returns how long that took.
fn udp_flood(path: &Path, dest: Ipv4Addr, ports: std::ops::Range<u16>) -> Duration {
    in_netns(path, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let t0 = Instant::now();
        for p in ports {
            let _ = s.send_to(b"x", (dest, p));
        }
        t0.elapsed()
    })
}

#[test]
fn deny_rules_apply_live_and_node_denials_cannot_be_lifted() {
    let third = 103;
    let extra = Ipv4Addr::new(10, 214, third, 4);
    let net = network(
        third,
        EgressConfig {
            always_deny: vec![Cidr::host(extra)],
            limits: ConnLimits::default(),
        },
    );
    let id = |s: &str| WorkspaceId::new(s).unwrap();
    let (a_id, b_id, stray) = (
        &id("a0e0a0e0a0e0"),
        &id("b0e0b0e0b0e0"),
        &id("c0e0c0e0c0e0"),
    );
    let _guard = Guard {
        net: &net,
        ids: vec![a_id.clone(), b_id.clone(), stray.clone()],
    };
    net.ensure_host().unwrap();
    let out = Outside::new(third);
    let a = net.setup(a_id, 0).unwrap();
    let b = net.setup(b_id, 1).unwrap();
    net.apply_egress(a_id, 0, &[]).unwrap();
    net.apply_egress(b_id, 1, &[]).unwrap();
    let (_l, port) = out.listen();
    let (_l2, port2) = out.listen();
    let to = |n: u8, p: u16| SocketAddr::from((out.ip(n), p));
    let (ap, bp) = (a.netns_path.as_path(), b.netns_path.as_path());

    // Controls: the outside is reachable through forwarding and NAT.
    assert!(reaches(ap, to(2, port)));
    assert!(reaches(ap, to(3, port)));
    let metadata = SocketAddr::from((out.metadata(), port));
    assert!(
        host_reaches(metadata),
        "control: the host reaches the metadata address"
    );
    assert!(
        host_reaches(to(4, port)),
        "control: the host reaches the extra"
    );

    // Node denials hold with an empty (allow-all) policy.
    let host = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let host_port = host.local_addr().unwrap().port();
    assert!(host_reaches(SocketAddr::from((out.ip(1), host_port))));
    for target in [
        metadata,
        to(4, port),
        SocketAddr::from((out.ip(1), host_port)),
        SocketAddr::from((a.gateway, host_port)),
    ] {
        assert!(!reaches(ap, target), "allow-all workspace reached {target}");
    }
    let deny = net.node_deny().unwrap();
    for c in [
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/8",
        "10.214.103.4/32",
    ] {
        assert!(
            deny.iter().any(|d| d.to_string() == c),
            "{c} not in {deny:?}"
        );
    }
    assert!(
        deny.contains(&Cidr::host(out.ip(1))),
        "host veth address missing"
    );
    // Even a policy that names them cannot open them: workspace chains only reject.
    net.apply_egress(a_id, 0, &rules(&["169.254.0.0/16", "10.214.103.4"]))
        .unwrap();
    assert!(!reaches(ap, metadata));
    let listing = egress_listing(&net);
    assert!(!listing.contains("accept\n") || listing.matches("accept").count() == 1);

    // Deny one address, live: refused at once, the neighbour unaffected.
    net.apply_egress(a_id, 0, &rules(&["10.214.103.3/32"]))
        .unwrap();
    assert!(reaches(ap, to(2, port)), "allowed address still reachable");
    // Refused at once: the reject's ICMP answer, not a dropped connect's timeout (a time
    // bound here would fail on a loaded machine without saying anything more).
    let (err, took) = connect_from(ap, to(3, port)).unwrap_err();
    assert!(
        err.contains("No route to host"),
        "not rejected (after {took:?}): {err}"
    );
    assert!(
        reaches(bp, to(3, port)),
        "the neighbour keeps its own policy"
    );

    // A port rule: only that port of that address.
    net.apply_egress(a_id, 0, &rules(&[&format!("10.214.103.2:{port2}/tcp")]))
        .unwrap();
    assert!(!reaches(ap, to(2, port2)));
    assert!(reaches(ap, to(2, port)));
    assert!(reaches(ap, to(3, port)), "the replaced rule is gone");

    // Deny everything, then allow all again.
    net.apply_egress(a_id, 0, &rules(&["0.0.0.0/0"])).unwrap();
    assert!(!reaches(ap, to(2, port)));
    assert!(!reaches(ap, to(3, port2)));
    net.apply_egress(a_id, 0, &[]).unwrap();
    assert!(reaches(ap, to(2, port2)));
    assert!(!reaches(ap, metadata), "node denials survive allow-all");

    // A stray chain (no netns) is listed and removed like any leftover.
    net.apply_egress(stray, 7, &rules(&["10.0.0.0/8"])).unwrap();
    assert!(net.list().unwrap().contains(stray));
    net.teardown(stray).unwrap();
    assert!(!net.list().unwrap().contains(stray));

    // Teardown removes the chain and its map entry; rerunning is fine.
    net.teardown(a_id).unwrap();
    net.teardown(a_id).unwrap();
    let listing = egress_listing(&net);
    assert!(!listing.contains(&format!("ws-{a_id}")), "{listing}");
    assert!(!listing.contains(&format!("{} :", a.ip)), "{listing}");
    assert!(listing.contains(&format!("ws-{b_id}")), "{listing}");
    // ensure_host keeps the remaining workspace's rules.
    net.ensure_host().unwrap();
    assert!(egress_listing(&net).contains(&format!("{} : jump ws-{b_id}", b.ip)));
    net.teardown(b_id).unwrap();
    net.teardown_host().unwrap();
    assert!(egress_listing(&net).is_empty(), "table left behind");
}

#[test]
fn concurrent_connections_are_capped_per_workspace() {
    let third = 104;
    let cap = 100;
    let net = network(
        third,
        EgressConfig {
            always_deny: vec![],
            limits: ConnLimits {
                rate: 100_000,
                burst: 100_000,
                max_conns: cap,
            },
        },
    );
    let (a_id, b_id) = (
        &WorkspaceId::new("a1e1a1e1a1e1").unwrap(),
        &WorkspaceId::new("b1e1b1e1b1e1").unwrap(),
    );
    let _guard = Guard {
        net: &net,
        ids: vec![a_id.clone(), b_id.clone()],
    };
    net.ensure_host().unwrap();
    let out = Outside::new(third);
    let a = net.setup(a_id, 0).unwrap();
    let b = net.setup(b_id, 1).unwrap();
    let (_l, port) = out.listen();
    let to = SocketAddr::from((out.ip(2), port));
    assert!(reaches(&a.netns_path, to), "control before the flood");

    // Ports unique to this run, so entries of an earlier run cannot be counted.
    let base = 20_000 + (random() % 20_000) as u16;
    let ports = base..base + 3000;
    udp_flood(&a.netns_path, out.ip(2), ports.clone());
    std::thread::sleep(Duration::from_millis(200));
    let tracked = conntrack_entries(a.ip, ports.clone());
    eprintln!("flood of 3000 UDP flows: {tracked} conntrack entries (cap {cap})");
    assert!(
        tracked <= cap as usize,
        "{tracked} entries over the cap {cap}"
    );
    assert!(
        tracked >= cap as usize / 2,
        "the flood made only {tracked} entries"
    );
    // Over its cap, the flooder cannot open more; its neighbour can.
    assert!(
        !reaches(&a.netns_path, to),
        "flooder opened a connection over its cap"
    );
    let t0 = Instant::now();
    let ok = (0..20).filter(|_| reaches(&b.netns_path, to)).count();
    eprintln!("neighbour: {ok}/20 connections in {:?}", t0.elapsed());
    assert_eq!(ok, 20);
}

#[test]
fn new_connections_are_rate_limited_per_workspace() {
    let third = 105;
    let (rate, burst) = (50u32, 50u32);
    let net = network(
        third,
        EgressConfig {
            always_deny: vec![],
            limits: ConnLimits {
                rate,
                burst,
                max_conns: 100_000,
            },
        },
    );
    let (a_id, b_id) = (
        &WorkspaceId::new("a2e2a2e2a2e2").unwrap(),
        &WorkspaceId::new("b2e2b2e2b2e2").unwrap(),
    );
    let _guard = Guard {
        net: &net,
        ids: vec![a_id.clone(), b_id.clone()],
    };
    net.ensure_host().unwrap();
    let out = Outside::new(third);
    let a = net.setup(a_id, 0).unwrap();
    let b = net.setup(b_id, 1).unwrap();
    let (_l, port) = out.listen();
    let base = 20_000 + (random() % 20_000) as u16;
    let ports = base..base + 2000;
    let took = udp_flood(&a.netns_path, out.ip(2), ports.clone());
    let tracked = conntrack_entries(a.ip, ports);
    // Tokens refill at `rate` per second on top of the burst while the flood runs.
    let bound = (burst as f64 + rate as f64 * took.as_secs_f64()).ceil() as usize + 2;
    eprintln!("2000 UDP flows in {took:?}: {tracked} tracked (bound {bound})");
    assert!(tracked <= bound, "{tracked} > {bound}");
    assert!(tracked >= burst as usize / 2, "only {tracked} got through");
    assert!(reaches(&b.netns_path, SocketAddr::from((out.ip(2), port))));
}

/// The gateway's MAC must not follow the bridge's ports: a bridge without a set address
/// takes its lowest port's, and when that port's workspace goes, every other workspace
/// holds a gateway MAC nobody has until its ARP entry fails (a minute or two of lost
/// packets). B's port gets the lowest MAC there is, so the old code fails here.
#[test]
fn the_gateway_keeps_its_mac_when_workspaces_come_and_go() {
    let third = 106;
    let net = network(third, EgressConfig::default());
    let id = |s: &str| WorkspaceId::new(s).unwrap();
    let (a_id, b_id) = (&id("a1e1a1e1a1e1"), &id("b1e1b1e1b1e1"));
    let _guard = Guard {
        net: &net,
        ids: vec![a_id.clone(), b_id.clone()],
    };
    net.ensure_host().unwrap();
    let out = Outside::new(third);
    let (_l, port) = out.listen();
    let to = SocketAddr::from((out.ip(2), port));
    let bridge_mac = || {
        std::fs::read_to_string(format!("/sys/class/net/{}/address", net.bridge()))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(bridge_mac(), net.gateway_mac());

    let b = net.setup(b_id, 1).unwrap();
    sh(&[
        "ip",
        "link",
        "set",
        "dev",
        &b.host_veth,
        "address",
        "02:00:00:00:00:01",
    ]);
    let a = net.setup(a_id, 0).unwrap();
    net.apply_egress(a_id, 0, &[]).unwrap();
    // A learns the gateway's MAC now, with B's port on the bridge.
    assert!(reaches(&a.netns_path, to), "control: A reaches the outside");
    net.teardown(b_id).unwrap();
    assert_eq!(bridge_mac(), net.gateway_mac());
    for i in 0..3 {
        if let Err((e, t)) = connect_from(&a.netns_path, to) {
            panic!("connection {i} from A after B went: {e} after {t:?}");
        }
    }
    // A bridge left by an older node (address inherited from a port) gets the fixed one.
    sh(&[
        "ip",
        "link",
        "set",
        "dev",
        net.bridge(),
        "address",
        "02:00:00:00:00:02",
    ]);
    net.ensure_host().unwrap();
    assert_eq!(bridge_mac(), net.gateway_mac());
}
