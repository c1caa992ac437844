//! Sockets inside a workspace's network namespace.
//!
//! A socket belongs to the netns of the thread that made it, for life. So a short-lived
//! thread enters the namespace, makes the socket and exits (a pool thread must never be
//! left in a workspace's namespace); connect, bind and listen then happen anywhere.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::{NetnsConn, NetnsSocket, NodeError};

/// Backlog of listeners made for `-R` forwards and the like.
const BACKLOG: u32 = 128;

/// Makes a non-blocking TCP socket inside the netns at `ns`.
async fn socket_in(ns: PathBuf, v4: bool) -> Result<OwnedFd, NodeError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ns2 = ns.clone();
    std::thread::Builder::new()
        .name("hearth-netns".into())
        .spawn(move || {
            let _ = tx.send(make_socket(&ns2, v4));
        })
        .map_err(NodeError::io("spawn a thread for", &ns))?;
    rx.await
        .map_err(|_| NodeError::Internal("netns socket thread died".into()))?
        .map_err(NodeError::io("make a socket in", &ns))
}

fn make_socket(ns: &Path, v4: bool) -> std::io::Result<OwnedFd> {
    let f = std::fs::File::open(ns)?;
    setns(&f, CloneFlags::CLONE_NEWNET)?;
    let family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    Ok(socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

pub(super) async fn open(ns: PathBuf, what: NetnsSocket) -> Result<NetnsConn, NodeError> {
    let addr = match what {
        NetnsSocket::Connect(a) | NetnsSocket::Listen(a) => a,
    };
    let fd = socket_in(ns, addr.is_ipv4()).await?;
    let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    let fail = |op: &'static str, a: SocketAddr| NodeError::io(op, a.to_string());
    match what {
        NetnsSocket::Connect(a) => {
            let s = sock
                .connect(a)
                .await
                .map_err(fail("connect inside the workspace to", a))?;
            let _ = s.set_nodelay(true);
            Ok(NetnsConn::Stream(s))
        }
        NetnsSocket::Listen(a) => {
            sock.set_reuseaddr(true)
                .map_err(fail("set SO_REUSEADDR for", a))?;
            sock.bind(a)
                .map_err(fail("bind inside the workspace to", a))?;
            let l = sock
                .listen(BACKLOG)
                .map_err(fail("listen inside the workspace on", a))?;
            Ok(NetnsConn::Listener(l))
        }
    }
}
