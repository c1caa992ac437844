//! hearth-agent: PID 1 of every workspace container.
//!
//! Serves the hearth-proto protocol on a unix socket (fd 3 from the node, or `--listen
//! PATH` for tests), runs sessions, reaps every zombie and stops the workspace cleanly on
//! SIGTERM. Built static, so it depends on nothing inside the image.

mod agent_relay;
mod bench_tools;
mod console;
mod priority;
mod reaper;
mod session;
mod sftp;
mod spawn;
mod users;

use nix::fcntl::{fcntl, open, FcntlArg, FdFlag, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use reaper::{handled_signals, Reaper};
use session::Ctx;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

/// fd the node passes with `crun run --preserve-fds 1`.
const LISTEN_FD: i32 = 3;

fn main() {
    if let Err(e) = run() {
        eprintln!("hearth-agent: {e}");
        console::flush();
        std::process::exit(1);
    }
}

fn usage() -> String {
    "usage: hearth-agent [--listen PATH] (without --listen, fd 3 must be a listening unix socket)"
        .into()
}

fn run() -> Result<(), String> {
    let mut listen = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--listen") => listen = Some(args.next().ok_or_else(usage)?),
            // Run by the SSH gateway for the sftp subsystem (see sftp.rs).
            Some("sftp-server") => return sftp::serve(),
            // Run by the SSH gateway for agent forwarding (see agent_relay.rs).
            Some("ssh-agent-relay") => return agent_relay::serve(),
            // Hidden load and probe tools for `hearth bench` (see bench_tools.rs).
            Some("probe") => return bench_tools::probe(args),
            Some("spin") => return bench_tools::spin(args),
            Some("membomb") => return bench_tools::membomb(args),
            Some("http") => return bench_tools::http(args),
            Some("--version") => {
                println!("hearth-agent {}", hearth_proto::VERSION);
                return Ok(());
            }
            _ => return Err(format!("unknown argument {a:?}\n{}", usage())),
        }
    }
    ensure_std_fds();

    let listener = match &listen {
        Some(path) => UnixListener::bind(path)
            .map_err(|e| format!("listen on {}: {e}", std::path::Path::new(path).display()))?,
        None => inherited_listener()?,
    };

    // Block the handled signals before any thread exists so every thread inherits the
    // mask and only the reaper's sigwait sees them (blocked signals also reach PID 1).
    handled_signals()
        .thread_block()
        .map_err(|e| format!("block signals: {e}"))?;
    let is_pid1 = std::process::id() == 1;
    if is_pid1 {
        console::relay()?;
    } else {
        // Outside a container orphans would go to the host's init; keep them ours.
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("become child subreaper: {e}"))?;
    }

    let mut image_env = Vec::new();
    let mut default_user = String::new();
    let mut default_cwd = String::new();
    let mut priorities = priority::SessionClasses::default();
    for (k, v) in std::env::vars_os() {
        match k.to_str() {
            Some("HEARTH_DEFAULT_USER") => default_user = v.to_string_lossy().into_owned(),
            Some("HEARTH_DEFAULT_CWD") => default_cwd = v.to_string_lossy().into_owned(),
            Some(priority::ENV_EXEC_PTY) => priorities.pty = priority::parse(&v.to_string_lossy())?,
            Some(priority::ENV_EXEC) => priorities.pipes = priority::parse(&v.to_string_lossy())?,
            _ => image_env.push((k.into_vec(), v.into_vec())),
        }
    }
    let ctx = Arc::new(Ctx {
        image_env,
        default_user,
        default_cwd,
        priorities,
        reaper: Reaper::new(is_pid1),
    });

    let rctx = ctx.clone();
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || rctx.reaper.run())
        .map_err(|e| format!("start reaper thread: {e}"))?;

    eprintln!(
        "hearth-agent {} ready (workspace {}, pid {})",
        hearth_proto::VERSION,
        std::env::var("HEARTH_WORKSPACE").unwrap_or_default(),
        std::process::id()
    );
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let c = ctx.clone();
                let spawned = std::thread::Builder::new()
                    .name("session".into())
                    .stack_size(256 * 1024)
                    .spawn(move || session::handle(stream, &c));
                if let Err(e) = spawned {
                    eprintln!("hearth-agent: start session thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("hearth-agent: accept: {e}");
                // EMFILE and friends: back off instead of spinning.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

/// Takes over fd 3 after checking it really is a socket.
fn inherited_listener() -> Result<UnixListener, String> {
    // fd 3 may be closed, which fstat reports.
    let is_socket = fstat(LISTEN_FD)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK);
    if !is_socket {
        return Err(format!(
            "fd {LISTEN_FD} is not a listening unix socket\n{}",
            usage()
        ));
    }
    // SAFETY: fd 3 is an open socket handed to us by the runtime and used nowhere else.
    let listener = unsafe { UnixListener::from_raw_fd(LISTEN_FD) };
    // Sessions must not inherit the listening socket.
    fcntl(listener.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("set close-on-exec on fd {LISTEN_FD}: {e}"))?;
    Ok(listener)
}

/// Opens /dev/null on closed fds 0-2, so no pipe or pty ever lands there (the child's
/// dup2 onto 0-2 relies on its sources being other fds).
fn ensure_std_fds() {
    for fd in 0..3 {
        if fcntl(fd, FcntlArg::F_GETFD).is_ok() {
            continue;
        }
        // Lowest free fd first: when this is `fd` itself, it stays open as is.
        if let Ok(null) = open("/dev/null", OFlag::O_RDWR, Mode::empty()) {
            if null != fd {
                let _ = nix::unistd::dup2(null, fd);
                let _ = nix::unistd::close(null);
            }
        }
    }
}
