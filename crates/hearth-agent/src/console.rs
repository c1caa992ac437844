//! PID 1's own output, relayed so that writing it never blocks or kills the agent.
//!
//! The agent's stdout/stderr is the node's console pipe, which fills while the node is down
//! (or while a workspace process floods it through `/proc/1/fd/1`). The agent's lines go
//! through a pipe of its own to a thread that passes them on without blocking and drops
//! what does not fit, so no session waits on the console and no `eprintln!` fails.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Read end of the agent's own pipe, for [`flush`]; -1 before [`relay`].
static OWN: AtomicI32 = AtomicI32::new(-1);

/// Points fds 1 and 2 at a pipe drained by a relay thread into the console.
pub fn relay() -> Result<(), String> {
    let err = |what: &str| format!("console relay: {what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain fcntl/pipe2/dup2/close on fds this process owns; nothing else uses them
    // yet (no other thread exists).
    let (console, read) = unsafe {
        let console = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 10);
        if console < 0 {
            return Err(err("dup stderr"));
        }
        let flags = libc::fcntl(console, libc::F_GETFL);
        if flags < 0 || libc::fcntl(console, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(err("make the console non-blocking"));
        }
        let mut p = [0; 2];
        if libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            return Err(err("pipe"));
        }
        if libc::dup2(p[1], 1) < 0 || libc::dup2(p[1], 2) < 0 {
            return Err(err("dup2"));
        }
        libc::close(p[1]);
        (console, p[0])
    };
    OWN.store(read, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("console".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                // SAFETY: reading into our own buffer from the pipe's read end.
                let n = unsafe { libc::read(read, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                if n <= 0 {
                    return;
                }
                // SAFETY: writing bytes we read; EAGAIN (console full) drops them.
                unsafe { libc::write(console, buf.as_ptr().cast(), n as usize) };
            }
        })
        .map_err(|e| format!("console relay: start thread: {e}"))?;
    Ok(())
}

/// Waits briefly until the relay has passed on everything written so far (before exit).
pub fn flush() {
    let fd = OWN.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int we own.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        if rc < 0 || n == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // The last read may still be on its way out.
    std::thread::sleep(Duration::from_millis(2));
}
