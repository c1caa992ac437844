//! fork + execve done by hand.
//!
//! std's `Command` waits for its child itself when exec fails, which would race the
//! reaper; so everything the child needs is prepared before fork and the child makes only
//! async-signal-safe calls (raw syscalls, dup2, execve, _exit).

use crate::reaper::Reaper;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, Winsize};
use nix::sys::stat::Mode;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Setup steps the child reports a failure of, with the errno.
const STAGE_STDIO: u8 = 1;
const STAGE_USER: u8 = 2;
const STAGE_CHDIR: u8 = 3;
const STAGE_EXEC: u8 = 4;

/// Everything the child needs, built before fork so the child never allocates.
pub struct Prepared {
    /// argv[0] as requested, for messages.
    pub name: String,
    /// Resolved executable; `None` when PATH lookup found nothing.
    path: Option<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    priority: crate::priority::Class,
}

fn cstring(what: &str, b: &[u8]) -> Result<CString, String> {
    CString::new(b).map_err(|_| format!("{what} contains a NUL byte"))
}

impl Prepared {
    pub fn new(
        argv: &[String],
        env: &[(Vec<u8>, Vec<u8>)],
        cwd: &str,
        user: &crate::users::ExecUser,
    ) -> Result<Self, String> {
        let name = argv.first().ok_or("empty argv")?.clone();
        if name.is_empty() {
            return Err("empty command name".into());
        }
        let path_var = env
            .iter()
            .rev()
            .find(|(k, _)| k == b"PATH")
            .map(|(_, v)| v.as_slice())
            .unwrap_or(b"");
        let path = resolve_command(&name, path_var)
            .map(|p| cstring("command path", p.as_os_str().as_bytes()))
            .transpose()?;
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push(b'=');
                kv.extend_from_slice(v);
                cstring("environment", &kv)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path,
            argv: argv
                .iter()
                .map(|a| cstring("argv", a.as_bytes()))
                .collect::<Result<_, _>>()?,
            envp,
            cwd: cstring("cwd", cwd.as_bytes())?,
            uid: user.uid,
            gid: user.gid,
            groups: user.groups.clone(),
            name,
            priority: crate::priority::DEFAULT,
        })
    }

    /// The class the child takes before exec, instead of the agent's own.
    pub fn with_priority(mut self, class: crate::priority::Class) -> Self {
        self.priority = class;
        self
    }
}

/// Finds the executable the way a shell would: names with a slash are used as is;
/// otherwise the first executable file in PATH, else the first non-executable match (so
/// execve reports permission denied), else nothing.
pub fn resolve_command(name: &str, path_var: &[u8]) -> Option<std::path::PathBuf> {
    if name.contains('/') {
        return Some(name.into());
    }
    let mut fallback = None;
    for dir in path_var.split(|b| *b == b':') {
        // An empty entry would mean the agent's cwd, not the session's: skip it.
        if dir.is_empty() {
            continue;
        }
        let cand = Path::new(OsStr::from_bytes(dir)).join(name);
        let Ok(meta) = std::fs::metadata(&cand) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if meta.permissions().mode() & 0o111 != 0 {
            return Some(cand);
        }
        fallback.get_or_insert(cand);
    }
    fallback
}

/// The child's side of its stdio.
pub enum ChildStdio {
    Pty {
        slave: OwnedFd,
    },
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
}

/// Why the child never reached the new program; it exits with 127 (not found) or 126.
pub struct ExecFailure {
    pub message: String,
}

pub struct Spawned {
    pub pid: i32,
    /// Readable once the reaper has the exit code (4 bytes, big-endian).
    pub exit_rx: OwnedFd,
    pub failure: Option<ExecFailure>,
}

/// A pipe whose both ends close on exec, so no other session's child inherits them.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

nix::ioctl_write_int_bad!(tiocgptpeer, libc::TIOCGPTPEER);
nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, Winsize);

/// Opens a pty pair (both ends close-on-exec) with the given window size.
pub fn open_pty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let m = posix_openpt(flags)?;
    grantpt(&m)?;
    unlockpt(&m)?;
    // TIOCGPTPEER opens the peer without a path lookup (right even with several devpts).
    // SAFETY: the ioctl takes the open flags by value and returns a new fd.
    let s = match unsafe { tiocgptpeer(m.as_raw_fd(), flags.bits()) } {
        Ok(s) => s,
        Err(_) => open(ptsname_r(&m)?.as_str(), flags, Mode::empty())?,
    };
    // SAFETY: both fds are fresh and owned by nobody else.
    let (master, slave) = unsafe {
        (
            OwnedFd::from_raw_fd(m.into_raw_fd()),
            OwnedFd::from_raw_fd(s),
        )
    };
    set_winsize(&master, rows, cols)?;
    Ok((master, slave))
}

/// Sets the terminal size; the kernel sends SIGWINCH to the foreground group.
pub fn set_winsize(fd: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we own.
    unsafe { tiocswinsz(fd.as_raw_fd(), &ws) }?;
    Ok(())
}

/// Forks and execs; the pid is registered with the reaper before anyone can reap it.
pub fn spawn(prep: &Prepared, stdio: ChildStdio, reaper: &Reaper) -> io::Result<Spawned> {
    let (exit_rx, exit_tx) = pipe()?;
    let (err_rx, err_tx) = pipe()?;
    let mut argv: Vec<*const libc::c_char> = prep.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prep.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let (fd_in, fd_out, fd_err, ctty) = match &stdio {
        ChildStdio::Pty { slave } => {
            let s = slave.as_raw_fd();
            (s, s, s, true)
        }
        ChildStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => (
            stdin.as_raw_fd(),
            stdout.as_raw_fd(),
            stderr.as_raw_fd(),
            false,
        ),
    };
    let ctx = ChildCtx {
        path: prep.path.as_ref().map(|p| p.as_ptr()),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: prep.cwd.as_ptr(),
        uid: prep.uid,
        gid: prep.gid,
        groups: &prep.groups,
        priority: prep.priority,
        fds: [fd_in, fd_out, fd_err],
        ctty,
        err_fd: err_tx.as_raw_fd(),
    };

    let mut waiters = reaper.lock();
    // SAFETY: the child only runs `child_main`, which makes async-signal-safe calls on
    // data prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked child.
        unsafe { child_main(&ctx) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    waiters.insert(pid, exit_tx);
    drop(waiters);
    drop(stdio);
    drop(err_tx);

    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        match nix::unistd::read(err_rx.as_raw_fd(), &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    let failure = (got == report.len()).then(|| {
        let errno = i32::from_be_bytes([report[1], report[2], report[3], report[4]]);
        describe_failure(prep, report[0], errno)
    });
    Ok(Spawned {
        pid,
        exit_rx,
        failure,
    })
}

fn failure_code(stage: u8, errno: i32) -> i32 {
    if stage == STAGE_EXEC && errno == libc::ENOENT {
        127
    } else {
        126
    }
}

fn describe_failure(prep: &Prepared, stage: u8, errno: i32) -> ExecFailure {
    let err = io::Error::from_raw_os_error(errno);
    let what = match stage {
        STAGE_EXEC if errno == libc::ENOENT => format!("{}: not found", prep.name),
        STAGE_EXEC if errno == libc::EACCES => format!("{}: permission denied", prep.name),
        STAGE_EXEC => format!("{}: {err}", prep.name),
        STAGE_CHDIR => format!("chdir {}: {err}", prep.cwd.to_string_lossy()),
        STAGE_USER => format!("switch to user {}:{}: {err}", prep.uid, prep.gid),
        _ => format!("set up stdio: {err}"),
    };
    ExecFailure {
        message: format!("hearth-agent: {what}\n"),
    }
}

struct ChildCtx<'a> {
    path: Option<*const libc::c_char>,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    uid: u32,
    gid: u32,
    groups: &'a [libc::gid_t],
    priority: crate::priority::Class,
    fds: [RawFd; 3],
    ctty: bool,
    err_fd: RawFd,
}

/// Reports the failed stage and errno through the CLOEXEC pipe, then exits.
///
/// # Safety
/// Only to be called in the forked child.
unsafe fn child_fail(ctx: &ChildCtx, stage: u8, errno: i32) -> ! {
    let e = errno.to_be_bytes();
    let buf = [stage, e[0], e[1], e[2], e[3]];
    // SAFETY: write and _exit are async-signal-safe; buf is on our stack.
    unsafe {
        libc::write(ctx.err_fd, buf.as_ptr().cast(), buf.len());
        libc::_exit(failure_code(stage, errno))
    }
}

fn errno() -> i32 {
    // SAFETY: reading the thread's errno location is async-signal-safe.
    unsafe { *libc::__errno_location() }
}

/// # Safety
/// Only to be called in the forked child; every pointer in `ctx` must be valid.
unsafe fn child_main(ctx: &ChildCtx) -> ! {
    // SAFETY: every call below is a raw syscall or async-signal-safe libc function on
    // memory prepared before fork.
    unsafe {
        // The agent blocks signals for sigwait, Rust ignores SIGPIPE, and whatever started
        // the agent may have ignored more (nohup: SIGHUP, which would make a hang-up
        // leave the session running): every process starts with the default for all.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // 64: Linux's last signal. EINVAL for the few libc keeps for itself.
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }

        if libc::setsid() < 0 {
            child_fail(ctx, STAGE_STDIO, errno());
        }
        if ctx.ctty && libc::ioctl(ctx.fds[0], libc::TIOCSCTTY, 0) < 0 {
            child_fail(ctx, STAGE_STDIO, errno());
        }
        // The sources are >= 3 (fds 0-2 are always open in the agent) and CLOEXEC, so
        // the originals vanish at exec while the dup2 copies stay.
        for (target, fd) in ctx.fds.iter().enumerate() {
            if libc::dup2(*fd, target as RawFd) < 0 {
                child_fail(ctx, STAGE_STDIO, errno());
            }
        }
        // The node keeps the OOM killer off the agent (-1000, see hearth-node's
        // `protect_agent`); what it runs is fair game again. Raising needs no privilege;
        // nothing to do if the node could not lower it.
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
        // The agent runs above its sessions (the node set it): take the session's class.
        // Best effort: a class the kernel refuses leaves the child as the agent is.
        let param = libc::sched_param { sched_priority: 0 };
        libc::syscall(libc::SYS_sched_setscheduler, 0, ctx.priority.policy, &param);
        libc::syscall(
            libc::SYS_setpriority,
            libc::PRIO_PROCESS,
            0,
            ctx.priority.nice,
        );
        // Raw syscalls: glibc's wrappers would try to sync threads that do not exist here.
        let r = libc::syscall(libc::SYS_setgroups, ctx.groups.len(), ctx.groups.as_ptr());
        // Some user namespaces forbid setgroups; running with the agent's groups is
        // better than not running at all.
        if r < 0 && errno() != libc::EPERM {
            child_fail(ctx, STAGE_USER, errno());
        }
        if libc::syscall(libc::SYS_setresgid, ctx.gid, ctx.gid, ctx.gid) < 0 {
            child_fail(ctx, STAGE_USER, errno());
        }
        if libc::syscall(libc::SYS_setresuid, ctx.uid, ctx.uid, ctx.uid) < 0 {
            child_fail(ctx, STAGE_USER, errno());
        }
        if libc::chdir(ctx.cwd) < 0 {
            child_fail(ctx, STAGE_CHDIR, errno());
        }
        match ctx.path {
            Some(p) => {
                libc::execve(p, ctx.argv, ctx.envp);
                child_fail(ctx, STAGE_EXEC, errno())
            }
            None => child_fail(ctx, STAGE_EXEC, libc::ENOENT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_command_searches_path_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "").unwrap();
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(
            resolve_command("tool", path.as_bytes()),
            Some(b.join("tool"))
        );
        // Only a non-executable match: returned so execve reports EACCES.
        assert_eq!(
            resolve_command("tool", a.to_str().unwrap().as_bytes()),
            Some(a.join("tool"))
        );
        assert_eq!(resolve_command("missing", path.as_bytes()), None);
        assert_eq!(resolve_command("./x/y", b""), Some("./x/y".into()));
        // Directories are not commands.
        assert_eq!(
            resolve_command("a", dir.path().to_str().unwrap().as_bytes()),
            None
        );
    }
}
