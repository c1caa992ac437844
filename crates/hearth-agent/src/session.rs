//! One connection: a ping, or one exec session pumped with poll(2).
//!
//! A single poll loop per session (instead of a thread per stream) lets the agent stop
//! reading the moment the process has exited and its buffered output is drained, even if
//! a background process still holds the pipe open.

use crate::reaper::Reaper;
use crate::spawn::{self, ChildStdio, Prepared};
use crate::users;
use hearth_proto::{AgentMsg, ClientMsg, ExecRequest, FrameBuf, Message, Request, VERSION};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;

const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Stop reading stdin from the client while this much is waiting for the process.
const STDIN_HIGH_WATER: usize = 1 << 20;
const READ_CHUNK: usize = 32 * 1024;

/// Environment as raw bytes, in order; images may carry non-UTF-8 values.
pub type EnvVars = Vec<(Vec<u8>, Vec<u8>)>;

/// What every session inherits from the agent's start.
pub struct Ctx {
    /// The image's Env (the agent's environment minus the HEARTH_DEFAULT_* knobs).
    pub image_env: EnvVars,
    pub default_user: String,
    pub default_cwd: String,
    /// Sessions' priority classes, from the node.
    pub priorities: crate::priority::SessionClasses,
    pub reaper: Reaper,
}

struct Conn {
    stream: UnixStream,
    buf: FrameBuf,
}

impl Conn {
    fn send(&mut self, msg: &AgentMsg) -> io::Result<()> {
        self.stream.write_all(&msg.encode()?)
    }

    /// Blocking read of the next message; `None` when the client hung up.
    fn recv(&mut self) -> io::Result<Option<ClientMsg>> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(m) = self.buf.next_msg()? {
                return Ok(Some(m));
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return if self.buf.has_partial() {
                    Err(hearth_proto::FrameError::Truncated.into())
                } else {
                    Ok(None)
                };
            }
            self.buf.extend(&chunk[..n]);
        }
    }
}

/// Keeps the shutdown path informed of live connections.
struct Active<'a>(&'a Reaper);
impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn handle(stream: UnixStream, ctx: &Ctx) {
    ctx.reaper.active.fetch_add(1, Ordering::SeqCst);
    let _active = Active(&ctx.reaper);
    let mut conn = Conn {
        stream,
        buf: FrameBuf::new(),
    };
    loop {
        let msg = match conn.recv() {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                let _ = conn.send(&AgentMsg::Error(format!("bad request: {e}")));
                return;
            }
        };
        let res = match msg {
            ClientMsg::Request(Request::Ping) => conn.send(&AgentMsg::Pong {
                version: VERSION.into(),
            }),
            ClientMsg::Request(Request::Exec(req)) => return run_session(conn, &req, ctx),
            other => {
                let _ = conn.send(&AgentMsg::Error(format!(
                    "expected a request, got {}",
                    hearth_proto::kind_name(other.to_parts().map(|p| p.0).unwrap_or(0))
                )));
                return;
            }
        };
        if res.is_err() {
            return;
        }
    }
}

/// Ordered environment where later settings replace earlier ones in place.
#[derive(Default)]
struct Env(EnvVars);
impl Env {
    fn set(&mut self, k: &[u8], v: &[u8]) {
        match self.0.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.to_vec(),
            None => self.0.push((k.to_vec(), v.to_vec())),
        }
    }
}

fn session_env(
    ctx: &Ctx,
    user: &users::ExecUser,
    req: &ExecRequest,
    cwd: &str,
) -> Result<EnvVars, String> {
    let mut env = Env::default();
    env.set(b"PATH", DEFAULT_PATH);
    env.set(b"HOME", user.home.as_bytes());
    env.set(b"USER", user.name.as_bytes());
    if req.tty {
        env.set(b"TERM", b"xterm-256color");
    }
    for (k, v) in &ctx.image_env {
        // crun/runc put HOME (of the agent's user) into the agent's environment when the
        // image has none, so the inherited value is not the session user's home.
        if k != b"HOME" {
            env.set(k, v);
        }
    }
    // Shells keep the directory as named (a workspace folder may be a symlink to the
    // clone) when PWD names the directory they start in.
    if cwd.starts_with('/') {
        env.set(b"PWD", cwd.as_bytes());
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(format!("invalid environment variable name {k:?}"));
        }
        env.set(k.as_bytes(), v.as_bytes());
    }
    Ok(env.0)
}

fn prepare(req: &ExecRequest, ctx: &Ctx) -> Result<Prepared, String> {
    if req.argv.is_empty() {
        return Err("empty argv".into());
    }
    let spec = req.user.as_deref().unwrap_or(&ctx.default_user);
    let passwd = users::read_db(Path::new("/etc/passwd"))?;
    let group = users::read_db(Path::new("/etc/group"))?;
    let user = users::resolve(spec, &passwd, &group)?;
    let cwd = match req.cwd.as_deref() {
        Some(c) if !c.is_empty() => c,
        _ if !ctx.default_cwd.is_empty() => &ctx.default_cwd,
        _ => "/",
    };
    let env = session_env(ctx, &user, req, cwd)?;
    let class = if req.tty {
        ctx.priorities.pty
    } else {
        ctx.priorities.pipes
    };
    Prepared::new(&req.argv, &env, cwd, &user).map(|p| p.with_priority(class))
}

/// The agent's side of the session's stdio.
struct Io {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// pty master, for resizes.
    tty: Option<OwnedFd>,
}

fn make_stdio(req: &ExecRequest) -> io::Result<(ChildStdio, Io)> {
    if req.tty {
        let (master, slave) = spawn::open_pty(req.rows, req.cols)?;
        set_nonblocking(master.as_raw_fd())?;
        let io = Io {
            stdin: Some(master.try_clone()?),
            stdout: Some(master.try_clone()?),
            stderr: None,
            tty: Some(master),
        };
        return Ok((ChildStdio::Pty { slave }, io));
    }
    let (in_r, in_w) = spawn::pipe()?;
    let (out_r, out_w) = spawn::pipe()?;
    let (err_r, err_w) = spawn::pipe()?;
    set_nonblocking(in_w.as_raw_fd())?;
    Ok((
        ChildStdio::Pipes {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
        Io {
            stdin: Some(in_w),
            stdout: Some(out_r),
            stderr: Some(err_r),
            tty: None,
        },
    ))
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let fl = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn run_session(mut conn: Conn, req: &ExecRequest, ctx: &Ctx) {
    if ctx.reaper.stopping() {
        let _ = conn.send(&AgentMsg::Error("agent is shutting down".into()));
        return;
    }
    let prep = match prepare(req, ctx) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("hearth-agent: exec {:?} refused: {msg}", req.argv.first());
            let _ = conn.send(&AgentMsg::Error(msg));
            return;
        }
    };
    let spawned = make_stdio(req)
        .and_then(|(child, io)| spawn::spawn(&prep, child, &ctx.reaper).map(|s| (s, io)));
    let (spawned, io) = match spawned {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("start {}: {e}", prep.name);
            eprintln!("hearth-agent: {msg}");
            let _ = conn.send(&AgentMsg::Error(msg));
            return;
        }
    };
    let pid = spawned.pid;
    eprintln!(
        "hearth-agent: session pid={pid} started cmd={:?} user={} tty={}",
        prep.name,
        req.user.as_deref().unwrap_or(&ctx.default_user),
        req.tty
    );
    let mut pump = Pump {
        conn,
        client_open: true,
        client_reading: true,
        io,
        pending: Vec::new(),
        eof_wanted: false,
        pid,
        exit_rx: spawned.exit_rx,
        tty: req.tty,
    };
    if pump
        .conn
        .send(&AgentMsg::Started { pid: pid as u32 })
        .is_err()
    {
        pump.client_gone();
    }
    if let Some(f) = &spawned.failure {
        let data = f.message.clone().into_bytes();
        let msg = if req.tty {
            AgentMsg::Stdout(data)
        } else {
            AgentMsg::Stderr(data)
        };
        pump.send(&msg);
    }
    let code = pump.run();
    eprintln!("hearth-agent: session pid={pid} exited code={code}");
}

enum Chunk {
    Data(Vec<u8>),
    Eof,
    Nothing,
}

fn read_chunk(fd: &OwnedFd) -> Chunk {
    let mut buf = vec![0u8; READ_CHUNK];
    match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
        Ok(0) => Chunk::Eof,
        Ok(n) => {
            buf.truncate(n);
            Chunk::Data(buf)
        }
        Err(Errno::EINTR | Errno::EAGAIN) => Chunk::Nothing,
        // EIO is how a pty master says every slave fd is closed.
        Err(_) => Chunk::Eof,
    }
}

/// Raw `poll`: the slots stay fixed, with fd -1 for a closed stream, which nix's `PollFd`
/// (a borrowed fd) cannot express.
fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    loop {
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

const READABLE: libc::c_short = libc::POLLIN | libc::POLLHUP | libc::POLLERR;

struct Pump {
    conn: Conn,
    /// The client can still receive output.
    client_open: bool,
    /// The client may still send input.
    client_reading: bool,
    io: Io,
    /// Stdin bytes accepted from the client but not yet taken by the process.
    pending: Vec<u8>,
    eof_wanted: bool,
    pid: i32,
    exit_rx: OwnedFd,
    tty: bool,
}

impl Pump {
    fn send(&mut self, msg: &AgentMsg) {
        if self.client_open && self.conn.send(msg).is_err() {
            self.client_gone();
        }
    }

    /// The client is gone: hang up the process like a closed terminal would.
    fn client_gone(&mut self) {
        if !self.client_open {
            return;
        }
        self.client_open = false;
        self.client_reading = false;
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGHUP);
        self.io.stdin = None;
        self.pending.clear();
    }

    /// Runs until the process exits; returns its exit code.
    fn run(&mut self) -> i32 {
        let (code, signal) = loop {
            // Fixed slots: 0 exit, 1 client, 2 stdout, 3 stderr, 4 stdin.
            let mut fds = [pollfd(self.exit_rx.as_raw_fd(), libc::POLLIN); 5];
            // With no events requested poll still reports POLLHUP, which on a unix socket
            // means the client closed both directions (a half-close only gives EOF).
            let want_client = self.client_reading && self.pending.len() < STDIN_HIGH_WATER;
            fds[1] = pollfd(
                if self.client_open {
                    self.conn.stream.as_raw_fd()
                } else {
                    -1
                },
                if want_client { libc::POLLIN } else { 0 },
            );
            fds[2] = pollfd(
                self.io.stdout.as_ref().map_or(-1, |f| f.as_raw_fd()),
                libc::POLLIN,
            );
            fds[3] = pollfd(
                self.io.stderr.as_ref().map_or(-1, |f| f.as_raw_fd()),
                libc::POLLIN,
            );
            let want_in = !self.pending.is_empty();
            fds[4] = pollfd(
                self.io
                    .stdin
                    .as_ref()
                    .filter(|_| want_in)
                    .map_or(-1, |f| f.as_raw_fd()),
                libc::POLLOUT,
            );
            if let Err(e) = poll(&mut fds, -1) {
                eprintln!("hearth-agent: session pid={} poll: {e}", self.pid);
                break self.wait_exit();
            }
            if fds[0].revents != 0 {
                break self.wait_exit();
            }
            if fds[2].revents & READABLE != 0 {
                self.forward_output(false);
            }
            if fds[3].revents & READABLE != 0 {
                self.forward_output(true);
            }
            if fds[4].revents != 0 {
                self.flush_stdin();
            }
            if fds[1].revents != 0 {
                if want_client {
                    self.read_client();
                } else {
                    self.client_gone();
                }
            }
        };
        self.drain();
        if signal != 0 {
            self.send(&AgentMsg::ExitSignal(signal));
        }
        self.send(&AgentMsg::Exit(code));
        code
    }

    /// Blocks for the exit code and killing signal (0: none) the reaper sends.
    fn wait_exit(&mut self) -> (i32, i32) {
        let mut b = [0u8; 8];
        let mut f = std::fs::File::from(match self.exit_rx.try_clone() {
            Ok(fd) => fd,
            Err(_) => return (255, 0),
        });
        match f.read_exact(&mut b) {
            Ok(()) => (
                i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ),
            Err(_) => (255, 0),
        }
    }

    /// Sends what the process left in its output buffers; never waits for more.
    fn drain(&mut self) {
        // Bounded, in case a leftover background process keeps writing.
        for _ in 0..1024 {
            let mut fds = [
                pollfd(
                    self.io.stdout.as_ref().map_or(-1, |f| f.as_raw_fd()),
                    libc::POLLIN,
                ),
                pollfd(
                    self.io.stderr.as_ref().map_or(-1, |f| f.as_raw_fd()),
                    libc::POLLIN,
                ),
            ];
            if fds.iter().all(|f| f.fd < 0) || !matches!(poll(&mut fds, 0), Ok(n) if n > 0) {
                return;
            }
            if fds[0].revents & READABLE != 0 {
                self.forward_output(false);
            }
            if fds[1].revents & READABLE != 0 {
                self.forward_output(true);
            }
        }
    }

    fn forward_output(&mut self, is_err: bool) {
        let slot = if is_err {
            &mut self.io.stderr
        } else {
            &mut self.io.stdout
        };
        let Some(fd) = slot.as_ref() else { return };
        match read_chunk(fd) {
            Chunk::Data(d) => {
                let msg = if is_err {
                    AgentMsg::Stderr(d)
                } else {
                    AgentMsg::Stdout(d)
                };
                self.send(&msg);
            }
            Chunk::Eof => *slot = None,
            Chunk::Nothing => {}
        }
    }

    fn flush_stdin(&mut self) {
        if let Some(fd) = &self.io.stdin {
            while !self.pending.is_empty() {
                match nix::unistd::write(fd, &self.pending) {
                    Ok(0) | Err(Errno::EAGAIN) => return,
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(Errno::EINTR) => {}
                    // EPIPE: the process closed its stdin; drop what it will never read.
                    Err(_) => {
                        self.pending.clear();
                        self.io.stdin = None;
                        return;
                    }
                }
            }
        }
        if self.eof_wanted && self.pending.is_empty() {
            self.io.stdin = None;
        }
    }

    fn read_client(&mut self) {
        let mut chunk = [0u8; 64 * 1024];
        let n = match self.conn.stream.read(&mut chunk) {
            // Half-close (e.g. the client dropped its writer): no more input, but it may
            // still want the output.
            Ok(0) => {
                self.client_reading = false;
                if !self.tty {
                    self.eof_wanted = true;
                }
                return self.flush_stdin();
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => return self.client_gone(),
        };
        self.conn.buf.extend(&chunk[..n]);
        loop {
            match self.conn.buf.next_msg::<ClientMsg>() {
                Ok(Some(m)) => self.on_client_msg(m),
                Ok(None) => break,
                Err(e) => {
                    eprintln!("hearth-agent: session pid={}: bad frame: {e}", self.pid);
                    self.send(&AgentMsg::Error(format!("bad frame: {e}")));
                    return self.client_gone();
                }
            }
        }
        self.flush_stdin();
    }

    fn on_client_msg(&mut self, m: ClientMsg) {
        match m {
            ClientMsg::Stdin(d) => {
                if self.io.stdin.is_some() && !self.eof_wanted {
                    self.pending.extend_from_slice(&d);
                }
            }
            ClientMsg::StdinEof if self.tty => {
                // A terminal has no half-close; the EOF character is what a user would type.
                if self.io.stdin.is_some() {
                    self.pending.push(0x04);
                }
            }
            ClientMsg::StdinEof => self.eof_wanted = true,
            ClientMsg::Resize { rows, cols } => {
                if let Some(fd) = &self.io.tty {
                    if let Err(e) = spawn::set_winsize(fd, rows, cols) {
                        eprintln!("hearth-agent: session pid={} resize: {e}", self.pid);
                    }
                }
            }
            ClientMsg::Signal(sig) => self.signal(sig),
            ClientMsg::Request(_) => {
                eprintln!(
                    "hearth-agent: session pid={}: ignoring a second request",
                    self.pid
                );
            }
        }
    }

    /// Signals the whole process group, so `sh -c` wrappers do not shield their children.
    fn signal(&mut self, sig: i32) {
        if !(1..=64).contains(&sig) {
            eprintln!(
                "hearth-agent: session pid={}: ignoring invalid signal {sig}",
                self.pid
            );
            return;
        }
        // Raw kill: realtime signals are valid here and nix's `Signal` has no variant for
        // them.
        // SAFETY: plain syscalls on the session's process group / process.
        unsafe {
            if libc::kill(-self.pid, sig) < 0 {
                libc::kill(self.pid, sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_layers_defaults_image_and_request() {
        let ctx = Ctx {
            image_env: vec![
                (b"PATH".to_vec(), b"/opt/bin".to_vec()),
                (b"LANG".to_vec(), b"C.UTF-8".to_vec()),
                (b"HOME".to_vec(), b"/agent-home".to_vec()),
            ],
            default_user: String::new(),
            default_cwd: String::new(),
            priorities: Default::default(),
            reaper: Reaper::new(false),
        };
        let user = users::resolve("0", "root:x:0:0::/root:/bin/sh\n", "").unwrap();
        let req = ExecRequest {
            env: vec![("LANG".into(), "de_DE".into()), ("X".into(), "1".into())],
            tty: true,
            ..Default::default()
        };
        let env = session_env(&ctx, &user, &req, "/w").unwrap();
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k.as_bytes())
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("PATH").unwrap(), b"/opt/bin");
        assert_eq!(get("HOME").unwrap(), b"/root");
        assert_eq!(get("USER").unwrap(), b"root");
        assert_eq!(get("TERM").unwrap(), b"xterm-256color");
        assert_eq!(get("LANG").unwrap(), b"de_DE");
        assert_eq!(get("X").unwrap(), b"1");
        assert_eq!(env.iter().filter(|(k, _)| k == b"LANG").count(), 1);
        // The session's directory as named, for shells (a symlink stays one).
        assert_eq!(get("PWD").unwrap(), b"/w");

        let bad = ExecRequest {
            env: vec![("A=B".into(), "1".into())],
            ..Default::default()
        };
        assert!(session_env(&ctx, &user, &bad, "/w")
            .unwrap_err()
            .contains("A=B"));
    }
}
