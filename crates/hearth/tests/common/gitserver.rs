//! A git server workspaces can reach: `git daemon` serving a directory from a network
//! namespace of its own, behind a veth with a random `10.x.y.0/30` routed from the host.
//! Non-admins may not create from server paths, and a node's fetches run inside the
//! bridge's network, which reaches neither the host's loopback nor its addresses; this
//! is a host of its own as far as a workspace is concerned. Removed on drop (a panic too).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

pub struct GitServer {
    base: PathBuf,
    ns: String,
    veth: String,
    ip: Ipv4Addr,
    daemon: Option<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `git-daemon` itself: `git daemon` would run it as a child, which killing `git` leaves
/// running (`ip netns exec` execs, so the child we hold is the daemon).
pub fn git_daemon() -> PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git --exec-path");
    Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("git-daemon")
}

impl GitServer {
    /// Serves every repository under `base` (`git://IP/<path under base>`).
    pub fn start(base: &Path) -> GitServer {
        let mut rng = rand::thread_rng();
        let tag: String = (0..8)
            .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap())
            .collect();
        let net = [
            10,
            rng.gen_range(60..=79),
            rng.gen(),
            rng.gen::<u8>() & 0xfc,
        ];
        let host = Ipv4Addr::new(net[0], net[1], net[2], net[3] + 1);
        let mut s = GitServer {
            base: base.to_path_buf(),
            ns: format!("hgit-{tag}"),
            veth: format!("hg{tag}"),
            ip: Ipv4Addr::new(net[0], net[1], net[2], net[3] + 2),
            daemon: None,
        };
        // Each step is undone by drop, whichever failed.
        ip(&["netns", "add", &s.ns]);
        ip(&[
            "link", "add", &s.veth, "type", "veth", "peer", "name", "eth0", "netns", &s.ns,
        ]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &s.veth]);
        ip(&["link", "set", &s.veth, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", s.ns.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{}/30", s.ip), "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &host.to_string()]);
        let base_arg = format!("--base-path={}", base.display());
        let listen = format!("--listen={}", s.ip);
        s.daemon = Some(
            Command::new("ip")
                .args(["netns", "exec", &s.ns])
                .arg(git_daemon())
                .args([
                    "--export-all",
                    "--reuseaddr",
                    "--informative-errors",
                    &base_arg,
                    &listen,
                ])
                .arg(base)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run git daemon"),
        );
        let addr = SocketAddr::from((s.ip, 9418));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "git daemon on {addr} did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// The `git://` URL of `repo`, a directory under the served base.
    pub fn url(&self, repo: &Path) -> String {
        let rel = repo
            .strip_prefix(&self.base)
            .unwrap_or_else(|_| panic!("{} is not under {}", repo.display(), self.base.display()));
        format!("git://{}/{}", self.ip, rel.display())
    }

    /// The server's address (not the host's).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        // Deleting the netns takes its end of the veth, and so the pair, with it.
        for args in [
            ["link", "del", self.veth.as_str()],
            ["netns", "del", self.ns.as_str()],
        ] {
            let _ = Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
