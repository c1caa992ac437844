//! User-namespace file descriptors for idmapped mounts.
//!
//! An idmapped mount needs a user namespace that carries the workspace's mapping before
//! the container exists. We make one with a short-lived child that unshares
//! CLONE_NEWUSER and waits; the parent writes its maps, keeps an fd to the namespace and
//! lets the child go. The fd keeps the namespace alive after the child exits.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{Result, RuntimeError};

/// Returns an fd of a new user namespace mapping ids 0..len to base..base+len (uid and gid).
pub fn userns_fd(base: u32, len: u32) -> Result<OwnedFd> {
    // Close-on-exec: a process another thread spawns while this one runs must not keep
    // `wr` open, or the child below never sees EOF. (Seen as a deadlock with parallel
    // creates: an `nft -f -` inherited `wr` while the child held nft's stdin.)
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("pipe", e))?;
    let rd_raw = rd.as_raw_fd();
    // SAFETY: the child only calls async-signal-safe functions (close_range, close,
    // unshare, read, _exit) before exiting; it never returns into Rust code that could
    // take locks.
    let pid = match unsafe { libc::fork() } {
        -1 => return Err(RuntimeError::sys("fork", std::io::Error::last_os_error())),
        0 => {
            // SAFETY: raw syscalls in the forked child; see above.
            unsafe {
                // Every fd but our read end goes: a fork inherits them all, close-on-exec
                // or not, so two of these made at once on two threads would each hold
                // the other's write end and neither would see EOF (a deadlock seen with
                // parallel creates). Our own write end goes with them.
                close_all_but(rd_raw);
                if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    libc::_exit(1);
                }
                let mut b = [0u8; 1];
                // Wait until the parent has opened our namespace (or died: EOF).
                libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        pid => pid,
    };
    drop(rd);
    let res = (|| -> Result<OwnedFd> {
        // The child may not have unshared yet: wait for /proc/pid/ns/user to differ from ours.
        let own = std::fs::metadata("/proc/self/ns/user")
            .map_err(|e| RuntimeError::io("stat", "/proc/self/ns/user", e))?;
        let ns_path = format!("/proc/{pid}/ns/user");
        let mut tries = 0;
        loop {
            use std::os::unix::fs::MetadataExt;
            let m =
                std::fs::metadata(&ns_path).map_err(|e| RuntimeError::io("stat", &ns_path, e))?;
            if m.ino() != own.ino() {
                break;
            }
            tries += 1;
            if tries > 20000 {
                return Err(RuntimeError::sys(
                    "unshare user namespace",
                    std::io::Error::other("child did not enter a new user namespace"),
                ));
            }
            std::thread::yield_now();
        }
        let map = format!("0 {base} {len}\n");
        for f in ["uid_map", "gid_map"] {
            let p = format!("/proc/{pid}/{f}");
            File::options()
                .write(true)
                .open(&p)
                .and_then(|mut fh| fh.write_all(map.as_bytes()))
                .map_err(|e| RuntimeError::io("write", &p, e))?;
        }
        let fd = File::open(&ns_path).map_err(|e| RuntimeError::io("open", &ns_path, e))?;
        Ok(OwnedFd::from(fd))
    })();
    drop(wr);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    res
}

/// Closes every fd of this process except `keep`; only raw syscalls, so it is safe in a
/// forked child of a threaded process.
///
/// # Safety
/// Invalidates every other fd: call only in a child that is about to exit or exec.
unsafe fn close_all_but(keep: i32) {
    let ranges = [(0, keep - 1), (keep + 1, i32::MAX)];
    for (first, last) in ranges.into_iter().filter(|(f, l)| f <= l) {
        // SAFETY: close_range takes plain integers; the caller accepts the closed fds.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) };
        if r != 0 {
            // No close_range (before Linux 5.9): the low fds, one by one.
            for fd in first..=last.min(65535) {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Duplicates a raw fd into an [`OwnedFd`]; used by tests.
#[doc(hidden)]
pub fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    // SAFETY: dup on a valid fd returns a new fd we own exclusively.
    let n = unsafe { libc::dup(fd.as_raw_fd()) };
    if n < 0 {
        return Err(RuntimeError::sys("dup", std::io::Error::last_os_error()));
    }
    // SAFETY: n is a fresh fd from dup.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Many at once on several threads: each child must let go of the others' pipes (it
    /// did not, and two children could wait on each other forever).
    #[test]
    fn parallel_user_namespaces_do_not_wait_on_each_other() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (writes uid maps): run the tests as root, as scripts/test.sh does"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        for t in 0..8u32 {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..25u32 {
                    let base = 1_300_000 + (t * 25 + i) * 65536;
                    let r = super::userns_fd(base, 65536).map(drop);
                    if tx.send(r.map_err(|e| e.to_string())).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for n in 0..200 {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(r) => r.unwrap(),
                Err(e) => panic!("only {n} of 200 user namespaces were made: {e}"),
            }
        }
    }
}
