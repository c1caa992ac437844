//! The one owner of `waitpid(-1)`, and the shutdown sequence.
//!
//! As PID 1 (or a subreaper in tests) the agent inherits every orphan; reaping in one
//! place means no session's wait can steal another's status. Sessions register their pid
//! (while holding the lock across fork, so a fast exit cannot be missed) with the write
//! end of a pipe; the reaper writes the exit code into it, which the session polls.

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long processes get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

pub struct Reaper {
    waiters: Mutex<HashMap<i32, OwnedFd>>,
    is_pid1: bool,
    stopping: AtomicBool,
    /// Connections still running, so shutdown can let them send their Exit.
    pub active: AtomicUsize,
}

/// Signals the reaper thread takes with sigwait; blocked in every agent thread.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// What the reaper tells a session: the exit code, then the killing signal (0 if none),
/// each 4 bytes big-endian (one pipe write, so it arrives whole).
pub fn exit_record(status: WaitStatus) -> [u8; 8] {
    let signal = match status {
        WaitStatus::Signaled(_, sig, _) => sig as i32,
        _ => 0,
    };
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&exit_code(status).to_be_bytes());
    b[4..].copy_from_slice(&signal.to_be_bytes());
    b
}

/// Exit code as a shell reports it.
pub fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 255,
    }
}

impl Reaper {
    pub fn new(is_pid1: bool) -> Self {
        Self {
            waiters: Mutex::new(HashMap::new()),
            is_pid1,
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Lock to hold across fork until the child's pid is registered.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<i32, OwnedFd>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs forever on the signal thread; the agent exits from here on shutdown.
    pub fn run(&self) -> ! {
        let set = handled_signals();
        loop {
            match set.wait() {
                Ok(Signal::SIGCHLD) => {
                    self.reap();
                }
                Ok(sig) => self.shutdown(sig),
                Err(e) => {
                    eprintln!("hearth-agent: sigwait: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Collects every exited child; returns whether any children remain.
    pub fn reap(&self) -> bool {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return true,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    if let Some(fd) = self.lock().remove(&pid.as_raw()) {
                        // The pipe is empty so this cannot block, and EPIPE (session gone)
                        // is harmless.
                        let _ = nix::unistd::write(&fd, &exit_record(status));
                    }
                }
                Err(Errno::EINTR) => continue,
                // ECHILD: no children left.
                Err(_) => return false,
            }
        }
    }

    /// Sends `sig` to everything the agent is responsible for.
    fn kill_all(&self, sig: Signal) {
        if self.is_pid1 {
            // As PID 1 of the workspace's pid namespace, -1 means every process in the
            // workspace but us.
            let _ = kill(Pid::from_raw(-1), sig);
            return;
        }
        // Outside a container kill(-1) would hit the whole host: target our children and
        // their process groups instead (orphans are reparented to us as subreaper).
        let me = std::process::id() as i32;
        for pid in children_of(me) {
            let _ = killpg(Pid::from_raw(pid), sig);
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    fn shutdown(&self, sig: Signal) -> ! {
        eprintln!("hearth-agent: got {sig}, stopping all processes");
        self.stopping.store(true, Ordering::SeqCst);
        self.kill_all(Signal::SIGTERM);
        let deadline = Instant::now() + GRACE;
        let mut left = self.reap();
        while left && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            left = self.reap();
        }
        if left {
            eprintln!("hearth-agent: processes still running after {GRACE:?}, killing them");
            let deadline = Instant::now() + Duration::from_secs(2);
            while left && Instant::now() < deadline {
                self.kill_all(Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(20));
                left = self.reap();
            }
        }
        // Let sessions send their Exit frames before the process goes away.
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        nix::unistd::sync();
        eprintln!("hearth-agent: stopped");
        crate::console::flush();
        std::process::exit(0);
    }
}

/// Pids whose parent is `ppid`, from /proc.
fn children_of(ppid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The comm field may contain spaces and parens: fields resume after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let parent: i32 = rest.split(' ').nth(1)?.parse().ok()?;
        (parent == ppid).then_some(pid)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_shell_convention() {
        // Raw wait statuses as the kernel encodes them.
        let code = |raw| exit_code(WaitStatus::from_raw(Pid::from_raw(1), raw).unwrap());
        assert_eq!(code(7 << 8), 7);
        assert_eq!(code(libc::SIGKILL), 137);
        assert_eq!(code(0), 0);
    }

    #[test]
    fn children_of_finds_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        struct Kill<'a>(&'a mut std::process::Child);
        impl Drop for Kill<'_> {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let pid = child.id() as i32;
        let _g = Kill(&mut child);
        assert!(children_of(std::process::id() as i32).contains(&pid));
        assert!(!children_of(std::process::id() as i32).contains(&1));
    }
}
