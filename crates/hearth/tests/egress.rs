//! End-to-end egress policy through the CLI: `hearth up --deny-egress`, `hearth egress`,
//! bad input, persistence over stop/start and a server restart.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use common::{git_repo, TestServer};

fn must(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A netns behind a veth routed from the host (the "internet"): host end
/// `10.216.<third>.1/24`, far end `.2` and `.3`, each serving TCP that closes at once.
struct Outside {
    ns: String,
    third: u8,
}

impl Outside {
    fn new() -> Outside {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let o = Outside {
            ns: format!("hxe{tag}"),
            third: (rand::random::<u32>() % 250) as u8,
        };
        must(&["ip", "netns", "add", &o.ns]);
        must(&[
            "ip", "link", "add", "name", &o.ns, "type", "veth", "peer", "name", "eth0", "netns",
            &o.ns,
        ]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", o.ip(1)),
            "dev",
            &o.ns,
        ]);
        must(&["ip", "link", "set", "dev", &o.ns, "up"]);
        for n in [2, 3] {
            let a = format!("{}/24", o.ip(n));
            must(&["ip", "-n", &o.ns, "addr", "add", &a, "dev", "eth0"]);
        }
        must(&["ip", "-n", &o.ns, "link", "set", "dev", "eth0", "up"]);
        o
    }

    fn ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 216, self.third, n)
    }

    /// Port of a listener on every address that accepts and closes (so `nc` exits 0).
    fn serve(&self) -> u16 {
        let file = std::fs::File::open(Path::new("/run/netns").join(&self.ns)).unwrap();
        let l = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap()
        })
        .join()
        .unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        });
        port
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.ns])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Whether workspace `name` can open a TCP connection to `ip:port`.
fn reaches(srv: &TestServer, name: &str, ip: Ipv4Addr, port: u16) -> bool {
    let cmd = format!("timeout 3 nc {ip} {port} </dev/null");
    srv.hearth(&["exec", name, "--", "sh", "-c", &cmd])
        .status
        .success()
}

fn deny_list(srv: &TestServer) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&srv.ok(&["egress", "w", "--json"])).unwrap();
    v["deny"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn egress_flags_command_and_persistence() {
    let out = Outside::new();
    let port = out.serve();
    let (two, three) = (out.ip(2), out.ip(3));
    let mut srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "w");
    let repo = repo.to_str().unwrap();

    // Bad input at create: one clear line, nothing made.
    let err = srv.fails(&[
        "up",
        repo,
        "--image",
        "busybox",
        "--deny-egress",
        "10.0.0.1/8",
    ]);
    assert!(err.contains("did you mean 10.0.0.0/8"), "{err}");
    let err = srv.fails(&["up", repo, "--image", "busybox", "--deny-egress", "x:80"]);
    assert!(err.contains("invalid egress rule \"x:80\""), "{err}");
    assert!(srv.workspaces().is_empty());

    let deny3 = format!("{three}");
    srv.ok(&["up", repo, "--image", "busybox", "--deny-egress", &deny3]);
    assert!(reaches(&srv, "w", two, port), "control: allowed address");
    assert!(!reaches(&srv, "w", three, port), "denied at create");
    assert_eq!(deny_list(&srv), vec![format!("{three}/32")]);
    let shown = srv.ok(&["egress", "w"]);
    assert!(
        shown.contains(&format!("egress deny: {three}/32")),
        "{shown}"
    );
    assert!(shown.contains("169.254.0.0/16"), "{shown}");
    assert!(shown.contains("new/s"), "{shown}");
    let inspect = srv.ok(&["inspect", "w"]);
    assert!(inspect.contains(&format!("{three}/32")), "{inspect}");
    assert!(inspect.contains("node deny:"), "{inspect}");

    // Live change: swap the denied address for one port of the other.
    let deny2 = format!("{two}:{port}/tcp");
    let said = srv.ok(&["egress", "w", "--deny", &deny2, "--undeny", &deny3]);
    assert!(said.contains(&format!("{two}/32:{port}/tcp")), "{said}");
    assert!(!reaches(&srv, "w", two, port), "port rule not live");
    assert!(reaches(&srv, "w", three, port), "undeny not live");

    // Bad edits say why and change nothing.
    let before = deny_list(&srv);
    let err = srv.fails(&["egress", "w", "--deny", "300.1.1.1"]);
    assert!(err.contains("300.1.1.1"), "{err}");
    let err = srv.fails(&["egress", "w", "--undeny", "192.0.2.1"]);
    assert!(err.contains("not in the deny list"), "{err}");
    let many: Vec<String> = (0..70).map(|i| format!("10.9.{i}.0/24")).collect();
    let mut args = vec!["egress", "w"];
    for r in &many {
        args.extend(["--deny", r.as_str()]);
    }
    let err = srv.fails(&args);
    assert!(err.contains("too many egress rules"), "{err}");
    let err = srv.fails(&["egress", "nope", "--allow-all"]);
    assert!(err.contains("workspace nope not found"), "{err}");
    assert_eq!(deny_list(&srv), before);
    assert!(!reaches(&srv, "w", two, port));

    // Edits from several clients at once all land (the server edits under a lock).
    let added: Vec<String> = (0..8).map(|i| format!("10.77.{i}.0/24")).collect();
    std::thread::scope(|s| {
        for r in &added {
            let srv = &srv;
            s.spawn(move || srv.ok(&["egress", "w", "--deny", r]));
        }
    });
    let now = deny_list(&srv);
    for r in &added {
        assert!(now.contains(r), "{r} lost: {now:?}");
    }
    std::thread::scope(|s| {
        for r in &added {
            let srv = &srv;
            s.spawn(move || srv.ok(&["egress", "w", "--undeny", r]));
        }
    });
    assert_eq!(deny_list(&srv), before);

    // Kept over stop/start and a server crash + restart, and in force afterwards.
    srv.ok(&["stop", "w"]);
    srv.ok(&["start", "w"]);
    assert!(!reaches(&srv, "w", two, port), "lost over stop/start");
    srv.kill();
    srv.spawn();
    assert_eq!(
        srv.workspaces()[0]["egress"]["deny"],
        serde_json::json!([format!("{two}/32:{port}/tcp")])
    );
    assert!(!reaches(&srv, "w", two, port), "lost over a server restart");

    // Allow all: the outside is open again, the node's addresses are not.
    let said = srv.ok(&["egress", "w", "--allow-all"]);
    assert!(said.contains("all egress allowed"), "{said}");
    assert!(deny_list(&srv).is_empty());
    assert!(reaches(&srv, "w", two, port));
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    assert!(
        !reaches(&srv, "w", out.ip(1), host_port),
        "allow-all reached the node"
    );
    srv.ok(&["rm", "w"]);
}
