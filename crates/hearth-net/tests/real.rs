//! Against the real kernel: needs root, iproute2 and iptables.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hearth_net::{EgressRule, NetConfig, Network, WorkspaceId};
use nix::sched::CloneFlags;

fn random() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

/// Own bridge and subnet per test; `third` keeps concurrently running tests apart.
fn network(third: u8) -> Network {
    let r = random();
    Network::new(NetConfig {
        bridge: format!("htest{:06x}", r & 0xff_ffff),
        subnet: format!("10.213.{third}.0/24"),
        ..Default::default()
    })
    .unwrap()
}

/// Tears everything down even when an assertion failed.
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

/// `nft ARGS` output; the command must succeed.
fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn listen_in(path: &Path, ip: Ipv4Addr) -> TcpListener {
    in_netns(path, move || TcpListener::bind((ip, 0)).unwrap())
}

fn host_ipv4s() -> Vec<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next()?.parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
        .collect()
}

fn iptables_dump() -> String {
    let mut all = String::new();
    for table in ["filter", "nat"] {
        let out = Command::new("iptables")
            .args(["-w", "-t", table, "-S"])
            .output()
            .unwrap();
        assert!(out.status.success());
        all.push_str(&String::from_utf8(out.stdout).unwrap());
    }
    all
}

fn assert_host_clean(net: &Network, netns: &[PathBuf], veths: &[String]) {
    assert!(net.list().unwrap().is_empty());
    for p in netns {
        assert!(!p.exists(), "{p:?}");
    }
    for v in veths {
        assert!(!Path::new("/sys/class/net").join(v).exists(), "{v}");
    }
}

#[test]
fn workspaces_are_isolated_from_host_and_each_other() {
    let net = network(101);
    let (a_id, b_id) = (
        WorkspaceId::new("a1b2c3d4e5f6").unwrap(),
        WorkspaceId::new("0f1e2d3c4b5a").unwrap(),
    );
    let _guard = Guard {
        net: &net,
        ids: vec![a_id.clone(), b_id.clone()],
    };
    let chain_in = format!("HEARTH-{}-IN", net.bridge());

    net.ensure_host().unwrap();
    net.ensure_host().unwrap();
    let dump = iptables_dump();
    assert_eq!(
        dump.matches(&format!("-A INPUT -i {} -j {chain_in}", net.bridge()))
            .count(),
        1,
        "{dump}"
    );
    assert_eq!(
        dump.matches(&format!("-A {chain_in} -j DROP")).count(),
        1,
        "{dump}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );

    let a = net.setup(&a_id, 0).unwrap();
    let b = net.setup(&b_id, 1).unwrap();
    assert_eq!(a.ip, Ipv4Addr::new(10, 213, 101, 2));
    assert_eq!(b.ip, Ipv4Addr::new(10, 213, 101, 3));
    assert_eq!(a.gateway, Ipv4Addr::new(10, 213, 101, 1));
    assert_eq!(a.netns_path, net.netns_path(&a_id));
    assert!(a.netns_path.exists());
    assert_eq!(
        std::fs::read_to_string(format!("/sys/class/net/{}/brport/isolated", a.host_veth))
            .unwrap()
            .trim(),
        "1"
    );
    let mut ids = vec![a_id.clone(), b_id.clone()];
    ids.sort();
    assert_eq!(net.list().unwrap(), ids);

    // Host -> workspace works (and proves the workspace side is wired up).
    let a_listener = listen_in(&a.netns_path, a.ip);
    let b_listener = listen_in(&b.netns_path, b.ip);
    let a_addr = a_listener.local_addr().unwrap();
    let b_addr = b_listener.local_addr().unwrap();
    assert!(connects(a_addr));
    assert!(connects(b_addr));

    // Workspace -> host: no host address is reachable, the gateway included.
    let host = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = host.local_addr().unwrap().port();
    let mut targets: Vec<SocketAddr> = host_ipv4s()
        .into_iter()
        .map(|ip| SocketAddr::from((ip, port)))
        .collect();
    assert!(targets.contains(&SocketAddr::from((a.gateway, port))));
    targets.push(b_addr);
    let reached = in_netns(&a.netns_path, move || {
        targets
            .into_iter()
            .filter(|t| connects(*t))
            .collect::<Vec<_>>()
    });
    assert!(reached.is_empty(), "workspace a reached {reached:?}");
    assert!(!in_netns(&b.netns_path, move || connects(a_addr)));

    // Control: without our INPUT jump the same connection succeeds, and ensure_host repairs it.
    let gw = SocketAddr::from((a.gateway, port));
    let jump = ["-w", "-D", "INPUT", "-i", net.bridge(), "-j", &chain_in];
    assert!(Command::new("iptables")
        .args(jump)
        .status()
        .unwrap()
        .success());
    assert!(in_netns(&a.netns_path, move || connects(gw)));
    net.ensure_host().unwrap();
    assert!(!in_netns(&a.netns_path, move || connects(gw)));

    // A leftover is replaced, keeping the address of its slot.
    let again = net.setup(&a_id, 0).unwrap();
    assert_eq!(again, a);

    net.teardown(&a_id).unwrap();
    net.teardown(&a_id).unwrap();
    assert_eq!(net.list().unwrap(), vec![b_id.clone()]);
    net.teardown(&b_id).unwrap();
    assert_host_clean(
        &net,
        &[a.netns_path, b.netns_path],
        &[a.host_veth, b.host_veth],
    );

    net.teardown_host().unwrap();
    net.teardown_host().unwrap();
    assert!(!Path::new("/sys/class/net").join(net.bridge()).exists());
    let dump = iptables_dump();
    assert!(
        !dump.contains(&format!("HEARTH-{}-", net.bridge())),
        "{dump}"
    );
}

#[test]
fn crash_leftovers_are_listed_and_removed() {
    let net = network(102);
    let id = WorkspaceId::new("deadbeef0001").unwrap();
    let orphan = WorkspaceId::new("cafe0000001").unwrap();
    let _guard = Guard {
        net: &net,
        ids: vec![id.clone(), orphan.clone()],
    };
    net.ensure_host().unwrap();

    // A netns without veth, as if setup crashed half way.
    let ns_name = format!("{}-{id}", net.bridge());
    assert!(Command::new("ip")
        .args(["netns", "add", &ns_name])
        .status()
        .unwrap()
        .success());
    // A veth on our bridge whose netns is gone.
    let hv = format!("hv{orphan}");
    let peer = format!("hp{orphan}");
    let ok = Command::new("ip")
        .args([
            "link", "add", "name", &hv, "type", "veth", "peer", "name", &peer,
        ])
        .status()
        .unwrap()
        .success()
        && Command::new("ip")
            .args(["link", "set", "dev", &hv, "master", net.bridge()])
            .status()
            .unwrap()
            .success();
    assert!(ok);
    let mut want = vec![id.clone(), orphan.clone()];
    want.sort();
    assert_eq!(net.list().unwrap(), want);

    // What a start does: the half-made network is replaced, pinned and its policy in force.
    let deny: Vec<EgressRule> = vec!["10.9.9.9/32".parse().unwrap()];
    let ws = net.ensure(&id, 5, &deny).unwrap();
    assert_eq!(ws.ip, Ipv4Addr::new(10, 213, 102, 7));
    assert!(Path::new("/sys/class/net").join(&ws.host_veth).exists());
    let table = format!("hearth-{}", net.bridge());
    let pin = nft(&[
        "list",
        "chain",
        "bridge",
        &table,
        &format!("port-{}", ws.host_veth),
    ]);
    assert!(
        pin.contains(&format!("ip saddr != {} drop", ws.ip)),
        "{pin}"
    );
    let policy = nft(&["list", "chain", "ip", &table, &format!("ws-{id}")]);
    assert!(policy.contains("10.9.9.9"), "{policy}");
    let listener = listen_in(&ws.netns_path, ws.ip);
    assert!(connects(listener.local_addr().unwrap()));
    // In place: kept as it is.
    assert_eq!(net.ensure(&id, 5, &deny).unwrap(), ws);
    assert!(connects(listener.local_addr().unwrap()));
    drop(listener);

    net.teardown(&orphan).unwrap();
    net.teardown(&id).unwrap();
    assert_host_clean(&net, &[ws.netns_path], &[ws.host_veth, hv, peer]);
    net.teardown_host().unwrap();
    assert!(!Path::new("/sys/class/net").join(net.bridge()).exists());
}
