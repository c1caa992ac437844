//! OOM kills inside workspaces, told to their users: a thread follows the kernel log
//! (`/dev/kmsg`), maps each kill's memory cgroup to a workspace, and keeps the newest
//! few per workspace for `inspect` plus a console line for `logs`.
//!
//! The kernel rate-limits the detailed report (10 per 5 s host-wide, shared with every
//! other memory cgroup), but prints `Killed process PID (NAME) ... UID:N` for every
//! kill: a kill without its report is mapped by the victim's host uid, which names the
//! workspace's id range. The cgroup's own `oom_kill` counter (inspect's usage) counts
//! every kill, including any this thread missed (the log overran, the node was down).

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, Weak};
use std::time::SystemTime;

use super::Inner;
use crate::kmsg::{self, OomLine, OomSummary};
use crate::{OomKill, WorkspaceId, ID_BASE, ID_RANGE};

/// Kills kept per workspace (newest last).
pub(crate) const KEEP: usize = 16;
/// Records between a kill's `memory: usage` line and its summary: the report lists every
/// task of the group in between, at most its pids limit.
const USAGE_WINDOW: u64 = 1_100_000;
/// How often the thread looks whether its node is gone while the log is quiet.
const POLL_MS: u16 = 1000;

/// The kills seen per workspace, and which workspace owns each uid range.
#[derive(Default)]
pub(super) struct OomLog {
    kills: Mutex<HashMap<WorkspaceId, VecDeque<OomKill>>>,
    /// uid base -> workspace, for kills whose detailed report the kernel left out.
    ranges: Mutex<HashMap<u32, WorkspaceId>>,
}

impl OomLog {
    /// Remembers whose uid range starts at `uid_base` (start, reconcile).
    pub(super) fn register(&self, id: &WorkspaceId, uid_base: u32) {
        lock(&self.ranges).insert(uid_base, id.clone());
    }

    pub(super) fn kills(&self, id: &WorkspaceId) -> Vec<OomKill> {
        lock(&self.kills)
            .get(id)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a removed workspace.
    pub(super) fn forget(&self, id: &WorkspaceId) {
        lock(&self.kills).remove(id);
        lock(&self.ranges).retain(|_, v| v != id);
    }

    fn push(&self, id: &WorkspaceId, kill: OomKill) {
        let mut m = lock(&self.kills);
        let q = m.entry(id.clone()).or_default();
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(kill);
    }

    fn owner_of_uid(&self, uid: u32) -> Option<WorkspaceId> {
        let base = uid.checked_sub(ID_BASE)? / ID_RANGE * ID_RANGE + ID_BASE;
        lock(&self.ranges).get(&base).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the thread; it ends when the node is dropped.
pub(super) fn spawn(inner: Weak<Inner>) {
    let res = std::thread::Builder::new()
        .name("oom-watch".into())
        .stack_size(256 << 10)
        .spawn(move || follow(&inner));
    if let Err(e) = res {
        tracing::warn!("cannot start the OOM watcher: {e}; OOM kills are only counted");
    }
}

/// What one report has said so far.
#[derive(Default)]
struct Reading {
    /// `(seq, limit)` of the last `memory: usage` line.
    usage: Option<(u64, u64)>,
    /// Host pids whose kill was reported with a summary, waiting for their
    /// `Killed process` line (bounded: a summary without one is dropped).
    reported: VecDeque<u32>,
}

fn follow(node: &Weak<Inner>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut kmsg = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(
                "cannot read the kernel log /dev/kmsg ({e}): OOM kills in workspaces are \
                 counted but not reported by process"
            );
            return;
        }
    };
    // Only kills from now on: older ones were reported by the node that saw them.
    if let Err(e) = rustix::fs::seek(&kmsg, rustix::fs::SeekFrom::End(0)) {
        tracing::warn!("seek /dev/kmsg: {e}");
    }
    let mut buf = vec![0u8; 8192];
    let mut reading = Reading::default();
    loop {
        let mut fds = [PollFd::new(kmsg.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(POLL_MS)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!("poll /dev/kmsg: {e}; OOM kills are no longer reported");
                return;
            }
        }
        let Some(inner) = node.upgrade() else { return };
        loop {
            // One record per read.
            match kmsg.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(r) = kmsg::record(&buf[..n]) {
                        handle(&inner, &mut reading, &r);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The ring buffer overran us: records were lost, reading goes on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    tracing::debug!("kernel log records lost before they were read");
                }
                Err(e) => {
                    tracing::warn!("read /dev/kmsg: {e}; OOM kills are no longer reported");
                    return;
                }
            }
        }
    }
}

fn handle(inner: &Inner, reading: &mut Reading, r: &kmsg::Record<'_>) {
    match kmsg::oom_line(r.text) {
        Some(OomLine::Usage { limit_bytes }) => reading.usage = Some((r.seq, limit_bytes)),
        Some(OomLine::Kill(s)) => {
            let usage = reading.usage.take();
            let Some(id) = inner.cgroups.workspace_of(&s.task_memcg) else {
                return;
            };
            let limit = match usage {
                Some((seq, l)) if memcg(&s) && r.seq.saturating_sub(seq) < USAGE_WINDOW => Some(l),
                _ if memcg(&s) => current_limit(inner, &id),
                _ => None,
            };
            if reading.reported.len() >= 64 {
                reading.reported.pop_front();
            }
            reading.reported.push_back(s.pid);
            record(inner, &id, s.pid, s.task, limit);
        }
        Some(OomLine::Killed { pid, name, uid }) => {
            if let Some(i) = reading.reported.iter().position(|&p| p == pid) {
                reading.reported.remove(i);
                return;
            }
            // The kernel left this kill's report out (rate limit): the uid says whose.
            let Some(id) = uid.and_then(|u| inner.ooms.owner_of_uid(u)) else {
                return;
            };
            let limit = current_limit(inner, &id);
            record(inner, &id, pid, name, limit);
        }
        None => {}
    }
}

fn memcg(s: &OomSummary) -> bool {
    s.constraint == "CONSTRAINT_MEMCG"
}

fn current_limit(inner: &Inner, id: &WorkspaceId) -> Option<u64> {
    inner.cgroups.memory(id).ok().and_then(|m| m.limit_bytes)
}

fn record(inner: &Inner, id: &WorkspaceId, host_pid: u32, process: String, limit: Option<u64>) {
    let kill = OomKill {
        at: crate::console::rfc3339(SystemTime::now()),
        pid: pid_inside(id, host_pid),
        host_pid,
        process,
        limit_bytes: limit,
    };
    tracing::warn!(%id, host_pid, pid = ?kill.pid, process = kill.process.as_str(), limit_bytes = ?limit, "OOM kill in workspace");
    if let Some(cpu) = &inner.cpu {
        cpu.oom_killed(id);
    }
    let p = inner.paths(id);
    if let Err(e) = inner.consoles.note(
        id,
        &p.console_fifo,
        &p.console,
        inner.cfg.console,
        &note_text(&kill),
    ) {
        tracing::warn!(%id, "console note of an OOM kill: {e}");
    }
    inner.ooms.push(id, kill);
}

/// Keeps the OOM killer off a workspace's agent (its PID 1, host pid `pid`): without it
/// the workspace is gone, whatever it was running. Written from the host, as only a
/// process with CAP_SYS_RESOURCE may lower a score; the agent puts its children back to
/// 0 before they exec (`hearth-agent/src/spawn.rs`).
///
/// Through the legacy `oom_adj` file (-17 is the same -1000): a write to `oom_score_adj`
/// by a privileged process also sets the floor the process and its children may lower
/// themselves to without privilege, so every workspace process could then make itself
/// unkillable, and a host short of memory would kill host services instead. The legacy
/// file leaves that floor at 0.
pub(super) fn shield_from_oom(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/oom_adj"), "-17")
}

/// [`shield_from_oom`] through the node's host seam (the fake host of the unit tests has
/// made-up pids), warning once when the node lacks the privilege.
pub(super) fn protect_agent(host: &dyn super::ops::HostOps, id: &WorkspaceId, pid: u32) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match host.shield_from_oom(pid) {
        Ok(()) => tracing::debug!(%id, pid, "agent shielded from the OOM killer"),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "cannot keep the OOM killer off workspace agents: the node lacks \
                     CAP_SYS_RESOURCE ({e}); an agent is then killed only if it is the \
                     largest process of a workspace out of memory"
                );
            }
        }
        Err(e) => tracing::warn!(%id, pid, "shield the agent from the OOM killer: {e}"),
    }
}

/// The console line `hearth logs` shows.
pub(crate) fn note_text(k: &OomKill) -> String {
    let who = match k.pid {
        Some(p) => format!("{} (pid {p}, host pid {})", k.process, k.host_pid),
        None => format!("{} (host pid {})", k.process, k.host_pid),
    };
    match k.limit_bytes {
        Some(l) => format!(
            "out of memory: killed {who}: the workspace reached its memory limit of {}",
            mib(l)
        ),
        None => format!("out of memory: killed {who}: the host ran out of memory"),
    }
}

fn mib(b: u64) -> String {
    let m = b as f64 / (1u64 << 20) as f64;
    if m >= 1024.0 {
        format!("{:.1} GiB", m / 1024.0)
    } else {
        format!("{m:.0} MiB")
    }
}

/// The victim's pid in the workspace's pid namespace, if it is still there to ask (it is
/// dying): the last `NSpid` entry, once `/proc/PID/cgroup` confirms the workspace owns
/// the pid (not a new process that took it).
fn pid_inside(id: &WorkspaceId, host_pid: u32) -> Option<u32> {
    let dir = std::path::Path::new("/proc").join(host_pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok()?;
    let ours = cgroup
        .lines()
        .any(|l| l.split('/').any(|c| c == id.as_str()));
    if !ours {
        return None;
    }
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_name_the_process_and_the_limit() {
        let k = OomKill {
            at: "2026-12-06T20:00:00Z".into(),
            pid: Some(12),
            host_pid: 34567,
            process: "tail".into(),
            limit_bytes: Some(64 << 20),
        };
        assert_eq!(
            note_text(&k),
            "out of memory: killed tail (pid 12, host pid 34567): the workspace reached its \
             memory limit of 64 MiB"
        );
        let k = OomKill {
            pid: None,
            limit_bytes: None,
            ..k
        };
        assert_eq!(
            note_text(&k),
            "out of memory: killed tail (host pid 34567): the host ran out of memory"
        );
    }

    #[test]
    fn uid_ranges_name_their_workspace_and_the_log_is_bounded() {
        let log = OomLog::default();
        let a = WorkspaceId::new("aa").unwrap();
        log.register(&a, ID_BASE + 3 * ID_RANGE);
        assert_eq!(log.owner_of_uid(ID_BASE + 3 * ID_RANGE), Some(a.clone()));
        assert_eq!(
            log.owner_of_uid(ID_BASE + 4 * ID_RANGE - 1),
            Some(a.clone())
        );
        assert_eq!(log.owner_of_uid(ID_BASE + 4 * ID_RANGE), None);
        assert_eq!(log.owner_of_uid(1000), None);
        for n in 0..KEEP as u32 + 3 {
            log.push(
                &a,
                OomKill {
                    at: String::new(),
                    pid: None,
                    host_pid: n,
                    process: "x".into(),
                    limit_bytes: None,
                },
            );
        }
        let kills = log.kills(&a);
        assert_eq!(kills.len(), KEEP);
        assert_eq!(kills.last().map(|k| k.host_pid), Some(KEEP as u32 + 2));
        log.forget(&a);
        assert!(log.kills(&a).is_empty());
        assert_eq!(log.owner_of_uid(ID_BASE + 3 * ID_RANGE), None);
    }
}
