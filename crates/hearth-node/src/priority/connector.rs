//! The exec listener: the kernel's proc connector (netlink `NETLINK_CONNECTOR`,
//! `CN_IDX_PROC`) reports every `execve` on the host; a program a rule names, running in
//! one of this node's workspace cgroups, gets its class right then. No sweep: a process
//! is looked at once, when it starts its program.
//!
//! The connector only answers in the initial user and network namespace, which is where
//! the node runs. Since Linux 6.6 the subscription asks the kernel for exec and rename
//! (comm) events only; older kernels send every fork and exit too, dropped here unread.
//! Renames count because busybox starts its applets as `/proc/self/exe` and names them
//! after exec.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{netlink, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use super::rules::PriorityRules;

/// `struct nlmsghdr`, then `struct cn_msg`, then the `struct proc_event` payload.
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;
const EVENT: usize = NLMSG_HDR + CN_MSG;
/// Offsets in `struct proc_event`: `what`, then `exec.process_tgid` after the 16-byte head.
const WHAT: usize = EVENT;
const EXEC_TGID: usize = EVENT + 20;
/// `comm.process_pid`, `comm.process_tgid`, `comm.comm[16]` after the same head.
const COMM_PID: usize = EVENT + 16;
const COMM_NAME: usize = EVENT + 24;
const NLMSG_DONE: u16 = 3;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
const PROC_EVENT_COMM: u32 = 0x200;
/// Bursts of thousands of execs a second must fit while the thread is descheduled.
const RECV_BUFFER: usize = 4 << 20;
/// How often the thread looks whether its node is gone.
const STOP_POLL: Duration = Duration::from_millis(500);

/// What the listener did, for the benchmark and `hearth bench cpu`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PriorityStats {
    /// Exec events read.
    pub events: u64,
    /// Programs in a workspace that a rule named and that got their class.
    pub applied: u64,
    /// Events the kernel dropped because the socket's buffer was full (ENOBUFS).
    pub lost: u64,
    /// CPU time of the listener thread.
    pub cpu_ns: u64,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    applied: AtomicU64,
    lost: AtomicU64,
    cpu_ns: AtomicU64,
}

/// The running listener; dropping it ends the thread within [`STOP_POLL`].
pub struct ExecListener {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Drop for ExecListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl ExecListener {
    /// Subscribes to exec events and starts the thread that classifies processes of the
    /// workspace cgroups under `cgroup_parent`.
    pub fn start(rules: Arc<PriorityRules>, cgroup_parent: &str) -> io::Result<Self> {
        let sock = subscribe()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut worker = Worker {
            rules,
            needle: format!(":/{}/", cgroup_parent.trim_matches('/')),
            counters: counters.clone(),
            buf: Vec::with_capacity(4096),
        };
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("hearth-prio".into())
            .spawn(move || worker.run(&sock, &stop2))?;
        Ok(ExecListener { stop, counters })
    }

    pub fn stats(&self) -> PriorityStats {
        let c = &self.counters;
        PriorityStats {
            events: c.events.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            cpu_ns: c.cpu_ns.load(Ordering::Relaxed),
        }
    }
}

fn subscribe() -> io::Result<OwnedFd> {
    let sock = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::CONNECTOR),
    )?;
    // Port 0: the kernel picks a unique one (several nodes may share a process in tests).
    rustix::net::bind(
        &sock,
        &netlink::SocketAddrNetlink::new(0, libc::CN_IDX_PROC),
    )?;
    // Root may go past rmem_max; an unprivileged run keeps the default.
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&sock, RECV_BUFFER).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&sock, RECV_BUFFER);
    }
    rustix::net::sockopt::set_socket_timeout(
        &sock,
        rustix::net::sockopt::Timeout::Recv,
        Some(STOP_POLL),
    )?;
    let filtered = kernel_at_least(6, 6);
    // struct proc_input { mcast_op; event_type } since 6.6, the bare op before.
    let data: &[u32] = if filtered {
        &[PROC_CN_MCAST_LISTEN, PROC_EVENT_EXEC | PROC_EVENT_COMM]
    } else {
        &[PROC_CN_MCAST_LISTEN]
    };
    let len = NLMSG_HDR + CN_MSG + 4 * data.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it in
    msg.extend_from_slice(&libc::CN_IDX_PROC.to_ne_bytes());
    msg.extend_from_slice(&libc::CN_VAL_PROC.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
    msg.extend_from_slice(&((4 * data.len()) as u16).to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    for d in data {
        msg.extend_from_slice(&d.to_ne_bytes());
    }
    rustix::net::send(&sock, &msg, SendFlags::empty())?;
    tracing::debug!(filtered, "listening for exec events");
    Ok(sock)
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let got = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    got >= (major, minor)
}

struct Worker {
    rules: Arc<PriorityRules>,
    /// `:/<parent>/` as it appears in `/proc/PID/cgroup` for a workspace process.
    needle: String,
    counters: Arc<Counters>,
    buf: Vec<u8>,
}

impl Worker {
    fn run(&mut self, sock: &OwnedFd, stop: &AtomicBool) {
        let mut msg = [0u8; 4096];
        let mut since_cpu = 0u32;
        let mut lost_logged = 0u64;
        let mut next_report = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match rustix::net::recv(sock, &mut msg[..], RecvFlags::empty()) {
                Ok((n, _)) => {
                    for ev in events(&msg[..n]) {
                        self.counters.events.fetch_add(1, Ordering::Relaxed);
                        match ev {
                            Event::Exec(tgid) => self.classify(tgid),
                            Event::Comm(tgid, comm) => self.renamed(tgid, &comm),
                        }
                    }
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::NOBUFS) => {
                    // The kernel dropped events while we were behind: those programs keep
                    // the class they inherited. Say so, rarely, and go on.
                    let lost = self.counters.lost.fetch_add(1, Ordering::Relaxed) + 1;
                    if lost >= lost_logged * 2 {
                        tracing::warn!(
                            lost,
                            "exec events lost (socket buffer full); some programs keep their inherited priority"
                        );
                        lost_logged = lost;
                    }
                }
                Err(e) => {
                    tracing::error!("exec listener stopped: {e}");
                    return;
                }
            }
            since_cpu += 1;
            if since_cpu >= 64 {
                since_cpu = 0;
                self.update_cpu();
                let events = self.counters.events.load(Ordering::Relaxed);
                if events >= next_report {
                    next_report = events + 10_000;
                    tracing::debug!(
                        events,
                        applied = self.counters.applied.load(Ordering::Relaxed),
                        lost = self.counters.lost.load(Ordering::Relaxed),
                        cpu_ms = self.counters.cpu_ns.load(Ordering::Relaxed) / 1_000_000,
                        "exec listener"
                    );
                }
            }
        }
        self.update_cpu();
    }

    fn update_cpu(&self) {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        let ns = t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
        self.counters.cpu_ns.store(ns, Ordering::Relaxed);
    }

    /// Cheapest test first: the executable's name (a readlink, cheaper than opening
    /// `comm` here), then `comm`, then the cgroup only for a match.
    fn classify(&mut self, tgid: i32) {
        use std::os::unix::ffi::OsStrExt;
        let Ok(exe) = std::fs::read_link(format!("/proc/{tgid}/exe")) else {
            return; // already gone, or a kernel thread
        };
        let by_file = exe
            .file_name()
            .and_then(|b| self.rules.for_file(b.as_bytes()));
        let class = match by_file {
            Some((_, c)) => c,
            None => {
                if !self.read(tgid, "comm") {
                    return;
                }
                let comm = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
                match self.rules.for_comm(comm) {
                    Some((_, c)) => c,
                    None => return,
                }
            }
        };
        self.apply(tgid, class);
    }

    /// A process that names itself after exec: busybox runs its applets by exec'ing
    /// `/proc/self/exe` (comm `exe`) and then sets comm to the applet's name.
    fn renamed(&mut self, tgid: i32, comm: &[u8]) {
        if let Some((_, class)) = self.rules.for_comm(comm) {
            self.apply(tgid, class);
        }
    }

    /// Sets the class if the process is in one of our workspaces.
    fn apply(&mut self, tgid: i32, class: super::rules::Class) {
        if !self.read(tgid, "cgroup") || !contains(&self.buf, &self.needle) {
            return;
        }
        match super::apply::set_class(tgid, class) {
            Ok(()) => {
                self.counters.applied.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(
                    pid = tgid,
                    nice = class.nice,
                    policy = class.policy.name(),
                    "priority class set"
                );
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => tracing::warn!(pid = tgid, "set priority class: {e}"),
        }
    }

    /// Reads `/proc/<tgid>/<file>` into the buffer; false if the process is gone.
    fn read(&mut self, tgid: i32, file: &str) -> bool {
        self.buf.clear();
        std::fs::File::open(format!("/proc/{tgid}/{file}"))
            .and_then(|mut f| f.read_to_end(&mut self.buf))
            .is_ok()
    }
}

/// `/proc/PID/cgroup` is ASCII: std's substring search (optimised even in debug builds).
fn contains(hay: &[u8], needle: &str) -> bool {
    std::str::from_utf8(hay).is_ok_and(|h| h.contains(needle))
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A process (tgid) started a program.
    Exec(i32),
    /// A process's main thread changed its name (threads naming themselves are skipped).
    Comm(i32, Vec<u8>),
}

/// The exec and process-rename events in one datagram (other events are skipped).
fn events(mut d: &[u8]) -> impl Iterator<Item = Event> + '_ {
    std::iter::from_fn(move || loop {
        let len = u32_at(d, 0)? as usize;
        if len < NLMSG_HDR || len > d.len() {
            return None;
        }
        let (m, rest) = d.split_at(len);
        // Messages are padded to 4 bytes.
        d = rest.get((4 - len % 4) % 4..).unwrap_or(&[]);
        if u32_at(m, NLMSG_HDR) != Some(libc::CN_IDX_PROC)
            || u32_at(m, NLMSG_HDR + 4) != Some(libc::CN_VAL_PROC)
        {
            continue;
        }
        match u32_at(m, WHAT) {
            Some(PROC_EVENT_EXEC) => {
                if let Some(tgid) = u32_at(m, EXEC_TGID) {
                    return Some(Event::Exec(tgid as i32));
                }
            }
            Some(PROC_EVENT_COMM) => {
                let (Some(pid), Some(tgid), Some(name)) = (
                    u32_at(m, COMM_PID),
                    u32_at(m, COMM_PID + 4),
                    m.get(COMM_NAME..COMM_NAME + 16),
                ) else {
                    continue;
                };
                if pid == tgid {
                    let len = name.iter().position(|b| *b == 0).unwrap_or(16);
                    return Some(Event::Comm(tgid as i32, name[..len].to_vec()));
                }
            }
            _ => {}
        }
    })
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    d.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: u32, pid: u32, tgid: u32, comm: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        let len = (EVENT + 40) as u32;
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&libc::CN_IDX_PROC.to_ne_bytes());
        m.extend_from_slice(&libc::CN_VAL_PROC.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&40u16.to_ne_bytes());
        m.extend_from_slice(&[0; 2]);
        m.extend_from_slice(&what.to_ne_bytes());
        m.extend_from_slice(&[0; 12]); // cpu, timestamp
        m.extend_from_slice(&pid.to_ne_bytes());
        m.extend_from_slice(&tgid.to_ne_bytes());
        let mut name = [0u8; 16];
        name[..comm.len()].copy_from_slice(comm);
        m.extend_from_slice(&name);
        m
    }

    #[test]
    fn parses_exec_and_rename_events_and_skips_the_rest() {
        let mut d = event(PROC_EVENT_EXEC, 42, 42, b"");
        d.extend(event(1, 7, 7, b"")); // fork
        d.extend(event(PROC_EVENT_COMM, 44, 44, b"sleep"));
        d.extend(event(PROC_EVENT_COMM, 46, 45, b"worker")); // a thread
        d.extend(event(PROC_EVENT_EXEC, 43, 43, b""));
        assert_eq!(
            events(&d).collect::<Vec<_>>(),
            vec![
                Event::Exec(42),
                Event::Comm(44, b"sleep".to_vec()),
                Event::Exec(43)
            ]
        );
        // Truncated or garbage input ends the walk without a panic.
        assert_eq!(events(&d[..d.len() - 3]).count(), 2);
        assert_eq!(events(&[0xff; 7]).count(), 0);
        assert_eq!(events(&[0; 64]).count(), 0);
    }
}
