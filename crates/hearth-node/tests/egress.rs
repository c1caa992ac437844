//! Egress policy on real containers: deny lists applied live and across stop/start, node
//! denials a policy cannot lift, and a connection flood capped for the flooder only.

mod common;

use std::time::{Duration, Instant};

use common::{
    busybox_image, busybox_workspaces, conntrack_entries, env_config, git_repo, host_ipv4_addrs,
    run, Outside,
};
use hearth_node::{Cidr, ConnLimits, EgressPolicy, NodeApi, WorkspaceSpec};

/// How a TCP connect from inside `ws` ends: [`CONNECTED`] (the listener closes at once),
/// [`DROPPED`] (no answer in 3 s) or busybox nc's error line, so a refusal is told from a
/// broken command.
async fn nc(node: &hearth_node::LocalNode, ws: &WorkspaceSpec, ip: &str, port: u16) -> String {
    let (code, out, err) = run(node, ws, &format!("timeout 3 nc {ip} {port} </dev/null")).await;
    match code {
        0 => CONNECTED.into(),
        // busybox timeout: killed by its SIGTERM.
        143 => DROPPED.into(),
        _ => format!("exit {code}: {}{}", out.trim(), err.trim()),
    }
}

const CONNECTED: &str = "connected";
const DROPPED: &str = "dropped";
/// A deny rule's ICMP admin-prohibited, as connect(2) reports it.
const REJECTED: &str = "No route to host";

fn rejected(how: &str) -> bool {
    how.ends_with(REJECTED)
}

fn policy(rules: &[String]) -> EgressPolicy {
    EgressPolicy::parse(rules).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_policy_on_running_and_restarted_workspaces() {
    let third = (rand::random::<u32>() % 250) as u8;
    let out = Outside::new(third);
    let extra = out.ip(3);
    let max_conns = 64;
    let mut e = env_config(std::env::var("HEARTH_RUNTIME").ok(), |c| {
        c.egress.always_deny = vec![Cidr::host(out.metadata()), Cidr::host(out.ip(250))];
        c.egress.limits = ConnLimits {
            rate: 2000,
            burst: 2000,
            max_conns,
        };
    })
    .await;
    let ws = busybox_workspaces(
        &mut e,
        &[("eaeaeaeaea01", "a", 41), ("ebebebebeb02", "b", 42)],
    )
    .await;
    let (mut a, b) = (ws[0].0.clone(), ws[1].0.clone());
    let (a_ip, b_ip) = (ws[0].1.ip.unwrap(), ws[1].1.ip.unwrap());
    let node = e.node.clone();
    let port = out.serve();
    let (two, three) = (out.ip(2).to_string(), out.ip(3).to_string());
    let _ = extra;

    // Control: both outside addresses answer.
    assert_eq!(
        nc(&node, &a, &two, port).await,
        CONNECTED,
        "control: a reaches .2"
    );
    assert_eq!(
        nc(&node, &a, &three, port).await,
        CONNECTED,
        "control: a reaches .3"
    );

    // (a) Deny .3 on the running workspace: refused at once, .2 still fine, b unaffected.
    a.egress = policy(&[format!("{three}/32")]);
    node.set_egress(&a).await.unwrap();
    // Refused at once: nc reports the reject's ICMP answer (a dropped connect would be
    // killed by `timeout` without it). No time bound: the exec round trip alone can take
    // seconds on a loaded machine.
    let (code, _, err) = run(
        &node,
        &a,
        &format!("timeout 3 nc {three} {port} </dev/null"),
    )
    .await;
    assert_ne!(code, 0, "denied address reached");
    assert!(err.contains(REJECTED), "denied, not rejected: {err}");
    assert_eq!(nc(&node, &a, &two, port).await, CONNECTED);
    assert_eq!(
        nc(&node, &b, &three, port).await,
        CONNECTED,
        "neighbour lost .3"
    );

    // ... and after stop/start (the node re-applies the spec it is given).
    node.stop(&a).await.unwrap();
    node.start(&a).await.unwrap();
    let how = nc(&node, &a, &three, port).await;
    assert!(rejected(&how), "deny lost over stop/start: {how}");
    assert_eq!(nc(&node, &a, &two, port).await, CONNECTED);

    // Changed while stopped: in force at the next start.
    node.stop(&a).await.unwrap();
    a.egress = policy(&[format!("{two}/32:{port}/tcp")]);
    node.set_egress(&a).await.unwrap();
    node.start(&a).await.unwrap();
    let how = nc(&node, &a, &two, port).await;
    assert!(rejected(&how), "port rule not applied at start: {how}");
    assert_eq!(
        nc(&node, &a, &three, port).await,
        CONNECTED,
        "old rule still applied"
    );

    // (b) Allow-all cannot lift the node's denials: its addresses, link-local, extras.
    a.egress = EgressPolicy::default();
    node.set_egress(&a).await.unwrap();
    assert_eq!(nc(&node, &a, &two, port).await, CONNECTED);
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let metadata = out.metadata().to_string();
    assert!(
        std::net::TcpStream::connect((out.metadata(), port)).is_ok(),
        "control: the host reaches the link-local address"
    );
    // The node's own addresses and link-local are dropped; loopback inside is the
    // workspace's own. Another test's bridge may go away meanwhile: nothing routes there.
    for ip in host_ipv4_addrs() {
        let how = nc(&node, &a, &ip, host_port).await;
        let ok = if ip.starts_with("127.") {
            how.ends_with("Connection refused")
        } else {
            how == DROPPED || rejected(&how)
        };
        assert!(ok, "host {ip}: {how}");
    }
    assert_eq!(nc(&node, &a, &metadata, port).await, DROPPED, "link-local");
    let details = node.inspect(&a).await.unwrap();
    assert!(details.egress.deny.is_empty());
    for c in ["127.0.0.0/8", "169.254.0.0/16", &format!("{metadata}/32")] {
        assert!(
            details.egress.node_deny.iter().any(|d| d == c),
            "{c} not in {:?}",
            details.egress.node_deny
        );
    }
    assert_eq!(details.egress.max_conns, max_conns);

    // (c) A SYN flood to an address that never answers: a's tracked connections stay at
    // the cap while the flood runs, and b still connects.
    let blackhole = out.ip(9).to_string();
    let flood_cmd = format!(
        "for i in $(seq 1 400); do timeout 4 nc {blackhole} $((20000 + i)) </dev/null \
         >/dev/null 2>&1 & done; wait"
    );
    let flood = {
        let (node, a) = (node.clone(), a.clone());
        tokio::spawn(async move { run(&node, &a, &flood_cmd).await })
    };
    let mut peak = 0;
    let mut b_ok = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        peak = peak.max(conntrack_entries(&a_ip.to_string(), &blackhole));
        if nc(&node, &b, &two, port).await == CONNECTED {
            b_ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Over the cap, new connections are dropped before conntrack.
    let flooder_blocked = nc(&node, &a, &two, port).await == DROPPED;
    let b_entries = conntrack_entries(&b_ip.to_string(), &two);
    flood.await.unwrap();
    eprintln!(
        "flood: peak {peak} conntrack entries from a (cap {max_conns}); neighbour connected \
         {b_ok} times ({b_entries} entries); flooder blocked while over cap: {flooder_blocked}"
    );
    assert!(peak <= max_conns as usize, "{peak} > cap {max_conns}");
    assert!(
        peak >= max_conns as usize / 2,
        "the flood made only {peak} entries"
    );
    assert!(
        b_ok >= 5,
        "neighbour connected only {b_ok} times during the flood"
    );
    assert!(
        flooder_blocked,
        "the flooder opened a connection over its cap"
    );
}

/// The node's own fetches for users run in the bridge's network, never the host's: a
/// devcontainer read (the probe netns), a workspace's clone (its netns, under its policy)
/// and a dotfiles clone reach a git server outside, and neither the host's loopback (a
/// listener there must see no connection) nor an address the workspace's policy denies.
#[tokio::test(flavor = "multi_thread")]
async fn fetches_reach_only_what_the_workspace_may() {
    let third = (rand::random::<u32>() % 250) as u8;
    let out = Outside::new(third);
    let mut e = env_config(std::env::var("HEARTH_RUNTIME").ok(), |_| {}).await;
    let img = busybox_image(&e).await;
    let served = e.dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    git_repo(&served);
    let _daemon = out.git_daemon(&served);
    let url = |n: u8| format!("git://{}/myrepo", out.ip(n));
    let watch = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    watch.set_nonblocking(true).unwrap();
    let lo = format!(
        "git://127.0.0.1:{}/myrepo",
        watch.local_addr().unwrap().port()
    );
    // git's own words (a devcontainer read reports only its first line); that nothing
    // reached the host's loopback is the listener's to show, at the end.
    let refused = |what: &str, err: &str| {
        assert!(
            err.contains("Connection refused") || err.contains("unable to connect to 127.0.0.1"),
            "{what}: {err}"
        );
    };

    // Before a workspace exists: the probe netns.
    let none = e.node.devcontainer_config(&url(2), None, None).await;
    assert!(matches!(none, Ok(None)), "control: {none:?}");
    let err = e
        .node
        .devcontainer_config(&lo, None, None)
        .await
        .unwrap_err();
    refused("devcontainer read of the host's loopback", &err.to_string());

    // A workspace's clone: its own network and egress policy (.3 denied).
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = |id: &str, slot: u32, source: String| WorkspaceSpec {
        id: hearth_node::WorkspaceId::new(id).unwrap(),
        name: format!("f{slot}"),
        image: img.id.clone(),
        source,
        slot,
        limits: hearth_node::Limits::default(),
        egress: policy(&[format!("{}/32", out.ip(3))]),
        generation: 0,
    };
    let ok = spec("fefefefefe01", 51, url(2));
    e.specs.push(ok.clone());
    e.node.create(&ok, tx.clone()).await.unwrap();
    e.node.start(&ok).await.unwrap();
    let (code, text, err) = run(&e.node, &ok, "cat /workspace/myrepo/README").await;
    assert_eq!((code, text.as_str()), (0, "hello from git\n"), "{err}");
    for (id, slot, source, why) in [
        ("fefefefefe02", 52, url(3), "an address its policy denies"),
        ("fefefefefe03", 53, lo.clone(), "the host's loopback"),
    ] {
        let s = spec(id, slot, source);
        e.specs.push(s.clone());
        let err = e.node.create(&s, tx.clone()).await.unwrap_err().to_string();
        if slot == 52 {
            assert!(err.contains(REJECTED), "clone of {why}: {err}");
        } else {
            refused(why, &err);
        }
    }

    // Dotfiles: cloned in the workspace's network too.
    let tar = e.node.dotfiles_archive(&ok, &url(2)).await.unwrap();
    assert!(!tar.is_empty());
    let err = e.node.dotfiles_archive(&ok, &lo).await.unwrap_err();
    refused("dotfiles from the host's loopback", &err.to_string());

    match watch.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a fetch reached the host's loopback: {other:?}"),
    }
}
