//! A workspace's console (its PID 1's stdout/stderr), bounded on the host.
//!
//! The container's stdout/stderr is a FIFO the node made, handed over opened read-write, so
//! the pipe always has a reader: nothing in the workspace ever gets SIGPIPE, even while the
//! node is down. A node thread drains it into `console.log` on the workspace's own disk,
//! rotating at [`ConsoleLimits::max_bytes`] and keeping [`ConsoleLimits::files`] files, so a
//! workspace flooding its console costs at most `max_bytes * files` of its own disk, which
//! its disk limit and the node's disk reserve already see. While the node is down the pipe's
//! buffer fills and further writes wait (the agent relays its own lines through a thread
//! and drops them rather than block); a restarted node re-opens the FIFO by path and drains
//! on.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::LogCursor;

use nix::errno::Errno;
use nix::sys::stat::Mode;

use crate::NodeError;

/// How much console output the node keeps per workspace (like a container log driver's
/// `max-size` and `max-file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleLimits {
    /// Size at which `console.log` is rotated.
    pub max_bytes: u64,
    /// Files kept: `console.log` and `console.log.1` ... `console.log.<files-1>`.
    pub files: u32,
}

impl Default for ConsoleLimits {
    fn default() -> Self {
        ConsoleLimits {
            max_bytes: 10 << 20,
            files: 2,
        }
    }
}

impl ConsoleLimits {
    /// The smallest rotation size: one pipe read must not rotate more than once.
    pub const MIN_BYTES: u64 = 64 << 10;

    pub fn validate(&self) -> Result<(), String> {
        if self.max_bytes < Self::MIN_BYTES {
            return Err(format!(
                "console max size must be at least {} KiB",
                Self::MIN_BYTES >> 10
            ));
        }
        if !(1..=100).contains(&self.files) {
            return Err("console files must be 1..100".into());
        }
        Ok(())
    }
}

const NAME: &str = "console.log";
const READ_BUF: usize = 64 << 10;
/// How often a pump looks at its stop flag while the pipe is quiet.
const POLL_MS: u16 = 250;

fn io_err<'a>(op: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NodeError + 'a {
    move |e| NodeError::Internal(format!("{op} {}: {e}", path.display()))
}

/// The running pumps, one per workspace whose console the node drains.
#[derive(Default)]
pub(crate) struct Consoles {
    pumps: Mutex<HashMap<String, Pump>>,
}

struct Pump {
    fifo: Arc<File>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Consoles {
    /// Makes a fresh FIFO at `fifo`, starts draining it into `dir` and returns the end to
    /// give the container as stdout and stderr.
    pub(crate) fn start(
        &self,
        id: &str,
        fifo: &Path,
        dir: &Path,
        limits: ConsoleLimits,
    ) -> Result<OwnedFd, NodeError> {
        self.close(id, Duration::from_secs(1));
        match std::fs::remove_file(fifo) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", fifo)(e)),
        }
        nix::unistd::mkfifo(fifo, Mode::from_bits_truncate(0o600))
            .map_err(|e| io_err("mkfifo", fifo)(e.into()))?;
        let reader = open_fifo(fifo, false)?;
        // Read-write: the container's end is a reader too, so its writes never see EPIPE.
        let writer = open_fifo(fifo, true)?;
        self.spawn(id, reader, dir, limits)?;
        Ok(writer.into())
    }

    /// Drains an existing FIFO again (a restarted node, a running workspace). A workspace
    /// started by an older node has none; its console stays as it was.
    pub(crate) fn attach(
        &self,
        id: &str,
        fifo: &Path,
        dir: &Path,
        limits: ConsoleLimits,
    ) -> Result<(), NodeError> {
        if self.lock().get(id).is_some_and(|p| !p.handle.is_finished()) {
            return Ok(());
        }
        if !fifo.exists() {
            return Ok(());
        }
        let reader = open_fifo(fifo, false)?;
        self.spawn(id, reader, dir, limits)
    }

    fn spawn(
        &self,
        id: &str,
        reader: File,
        dir: &Path,
        limits: ConsoleLimits,
    ) -> Result<(), NodeError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(io_err("mkdir", dir))?;
        let fifo = Arc::new(reader);
        let stop = Arc::new(AtomicBool::new(false));
        let mut out = Rotator::new(dir, limits);
        let (f, s) = (fifo.clone(), stop.clone());
        let tid = id.to_string();
        let handle = std::thread::Builder::new()
            .name(format!("console-{id}"))
            .stack_size(128 << 10)
            .spawn(move || pump(&tid, &f, &mut out, &s))
            .map_err(|e| NodeError::Internal(format!("start console thread: {e}")))?;
        let old = self
            .lock()
            .insert(id.to_string(), Pump { fifo, stop, handle });
        if let Some(old) = old {
            old.stop.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Waits (up to `wait`) until everything written so far is in the files.
    pub(crate) fn flush(&self, id: &str, wait: Duration) {
        let fifo = match self.lock().get(id) {
            Some(p) => p.fifo.clone(),
            None => return,
        };
        let deadline = Instant::now() + wait;
        while rustix::io::ioctl_fionread(fifo.as_fd()).unwrap_or(0) > 0 && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The last read may still be on its way to the file.
        std::thread::sleep(Duration::from_millis(5));
    }

    /// Stops draining `id`'s console once the workspace's processes are gone: waits up to
    /// `wait` for the pipe's end of file (what is still in it is kept), then stops the pump
    /// regardless. Its files are closed when this returns, so the disk can be unmounted.
    pub(crate) fn close(&self, id: &str, wait: Duration) {
        let Some(p) = self.lock().remove(id) else {
            return;
        };
        let deadline = Instant::now() + wait;
        while !p.handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        p.stop.store(true, Ordering::SeqCst);
        if p.handle.join().is_err() {
            tracing::error!(%id, "console thread panicked");
        }
    }

    /// Adds `[hearth TIME] LINE` to `id`'s console: through its pipe while a pump drains
    /// it (so it lands in order with the workspace's output), else straight into the
    /// files in `dir` if the disk holding them is there.
    pub(crate) fn note(
        &self,
        id: &str,
        fifo: &Path,
        dir: &Path,
        limits: ConsoleLimits,
        line: &str,
    ) -> Result<(), NodeError> {
        let text = note_line(std::time::SystemTime::now(), line);
        let draining = self.lock().get(id).is_some_and(|p| !p.handle.is_finished());
        if draining {
            // One write under PIPE_BUF is atomic; a full pipe drops the line rather than
            // block on a workspace that floods its console.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo)
                .map_err(io_err("open", fifo))?;
            return f.write_all(text.as_bytes()).map_err(io_err("write", fifo));
        }
        if dir.is_dir() {
            Rotator::new(dir, limits).write(id, text.as_bytes());
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pump>> {
        self.pumps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The read end (non-blocking), or the container's end (read-write, blocking).
fn open_fifo(path: &Path, container_end: bool) -> Result<File, NodeError> {
    let mut o = std::fs::OpenOptions::new();
    if container_end {
        o.read(true).write(true);
    } else {
        o.read(true).custom_flags(libc::O_NONBLOCK);
    }
    o.open(path).map_err(io_err("open", path))
}

/// Copies the pipe into the rotated files until end of file (no process holds the
/// container's end any more) or `stop`.
fn pump(id: &str, fifo: &File, out: &mut Rotator, stop: &AtomicBool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(POLL_MS)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!(%id, error = %e, "console poll failed; no more console output is kept");
                return;
            }
        }
        loop {
            match (&*fifo).read(&mut buf) {
                Ok(0) => return,
                Ok(n) => out.write(id, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(%id, error = %e, "console read failed; no more console output is kept");
                    return;
                }
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// `console.log` with size-based rotation.
struct Rotator {
    dir: PathBuf,
    limits: ConsoleLimits,
    file: Option<(File, u64)>,
    /// Whether a write error was logged already (one line per pump, not per write).
    warned: bool,
}

impl Rotator {
    fn new(dir: &Path, limits: ConsoleLimits) -> Self {
        Rotator {
            dir: dir.to_path_buf(),
            limits,
            file: None,
            warned: false,
        }
    }

    fn write(&mut self, id: &str, mut buf: &[u8]) {
        while !buf.is_empty() {
            match self.write_some(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) => {
                    // A full workspace disk: the output is dropped, the workspace goes on.
                    if !self.warned {
                        tracing::warn!(%id, dir = %self.dir.display(), error = %e, "console output dropped");
                        self.warned = true;
                    }
                    self.file = None;
                    return;
                }
            }
        }
    }

    fn write_some(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let max = self.limits.max_bytes.max(1);
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(self.dir.join(NAME))?;
            let len = f.metadata()?.len();
            self.file = Some((f, len));
        }
        if self.file.as_ref().is_some_and(|(_, len)| *len >= max) {
            self.rotate()?;
            return Ok(0);
        }
        let Some((f, len)) = self.file.as_mut() else {
            return Ok(0);
        };
        let room = usize::try_from(max - *len).unwrap_or(usize::MAX);
        let n = buf.len().min(room);
        f.write_all(&buf[..n])?;
        *len += n as u64;
        Ok(n)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let path = |i: u32| rotated(&self.dir, i);
        if self.limits.files <= 1 {
            File::create(path(0))?;
            return Ok(());
        }
        for i in (1..self.limits.files).rev() {
            match std::fs::rename(path(i - 1), path(i)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `at` in RFC 3339, whole seconds, UTC.
pub(crate) fn rfc3339(at: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A control-plane line for the console: one line, short enough for one atomic pipe write.
fn note_line(at: std::time::SystemTime, line: &str) -> String {
    let at = rfc3339(at);
    let mut line: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut cut = line.len().min(1024);
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    line.truncate(cut);
    format!("[hearth {at}] {line}\n")
}

/// `console.log` (0) or `console.log.<i>`.
fn rotated(dir: &Path, i: u32) -> PathBuf {
    if i == 0 {
        dir.join(NAME)
    } else {
        dir.join(format!("{NAME}.{i}"))
    }
}

/// The last `max` bytes of the console kept in `dir`, across rotated files, oldest first.
/// `None` when `dir` holds no console files.
pub(crate) fn tail(dir: &Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut need = max;
    let mut found = false;
    for i in 0..1000 {
        if need == 0 {
            break;
        }
        let mut f = match File::open(rotated(dir, i)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        };
        found = true;
        let len = f.metadata()?.len();
        let take = len.min(need as u64);
        f.seek(SeekFrom::Start(len - take))?;
        let mut b = Vec::with_capacity(take as usize);
        f.take(take).read_to_end(&mut b)?;
        need -= b.len();
        parts.push(b);
    }
    if !found {
        return Ok(None);
    }
    parts.reverse();
    Ok(Some(parts.concat()))
}

/// Console output after `cursor` (a [`LogCursor`] an earlier call returned; `None`: the
/// last `max` bytes, as [`tail`]), at most `max` bytes, oldest first, and the cursor just
/// after it. A cursor names a file by inode, so it survives rotation (the file it named is
/// read on under its new name, then the newer ones); when that file was rotated away, the
/// oldest kept file is read from its start (output in between is lost, as with `tail -F`).
pub(crate) fn since(
    dir: &Path,
    cursor: Option<LogCursor>,
    max: usize,
) -> std::io::Result<(Vec<u8>, LogCursor)> {
    use std::os::unix::fs::MetadataExt;
    // Newest first, each once: a rotation between two opens may show a file twice.
    let mut files: Vec<(File, u64, u64)> = Vec::new();
    for i in 0..1000 {
        let f = match File::open(rotated(dir, i)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        };
        let m = f.metadata()?;
        if files.iter().all(|(_, ino, _)| *ino != m.ino()) {
            files.push((f, m.ino(), m.len()));
        }
    }
    let Some(cursor) = cursor else {
        let end = files
            .first()
            .map_or(LogCursor::default(), |(_, inode, len)| LogCursor {
                inode: *inode,
                offset: *len,
            });
        return Ok((tail(dir, max)?.unwrap_or_default(), end));
    };
    // Where to go on: the cursor's file at its offset (from 0 if it shrank: a lone file
    // is truncated in place at rotation), else the oldest file from its start.
    let (start, offset) = match files.iter().position(|(_, ino, _)| *ino == cursor.inode) {
        Some(i) if cursor.offset <= files[i].2 => (i, cursor.offset),
        Some(i) => (i, 0),
        None if files.is_empty() => return Ok((Vec::new(), cursor)),
        None => (files.len() - 1, 0),
    };
    let mut out = Vec::new();
    let mut at = LogCursor {
        inode: files[start].1,
        offset,
    };
    for i in (0..=start).rev() {
        let (f, inode, len) = &mut files[i];
        let from = if i == start { offset } else { 0 };
        let take = (*len - from).min((max - out.len()) as u64);
        f.seek(SeekFrom::Start(from))?;
        let got = f.take(take).read_to_end(&mut out)?;
        at = LogCursor {
            inode: *inode,
            offset: from + got as u64,
        };
        if out.len() >= max {
            break;
        }
    }
    Ok((out, at))
}

/// [`tail`] as text for error messages; empty when there is none.
pub(crate) fn tail_text(dir: &Path, max: usize) -> String {
    match tail(dir, max) {
        Ok(Some(b)) => String::from_utf8_lossy(&b).trim().to_string(),
        _ => String::new(),
    }
}

/// Total bytes of console files in `dir` (for tests and inspection).
pub fn kept_bytes(dir: &Path) -> u64 {
    (0..1000)
        .map_while(|i| std::fs::metadata(rotated(dir, i)).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: u64, files: u32) -> ConsoleLimits {
        ConsoleLimits { max_bytes, files }
    }

    #[test]
    fn rotation_keeps_the_newest_bytes_within_the_cap() {
        let t = tempfile::tempdir().unwrap();
        let mut r = Rotator::new(t.path(), limits(100, 3));
        let data: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for chunk in data.chunks(37) {
            r.write("t", chunk);
        }
        let sizes: Vec<u64> = (0..4)
            .map(|i| std::fs::metadata(rotated(t.path(), i)).map_or(0, |m| m.len()))
            .collect();
        assert_eq!(sizes, [100, 100, 100, 0], "three full files, no fourth");
        assert_eq!(kept_bytes(t.path()), 300);
        let all = tail(t.path(), usize::MAX).unwrap().unwrap();
        assert_eq!(all, &data[700..], "oldest first, the newest 300 bytes");
        let last = tail(t.path(), 150).unwrap().unwrap();
        assert_eq!(last, &data[850..]);
    }

    #[test]
    fn one_file_is_truncated_at_the_cap() {
        let t = tempfile::tempdir().unwrap();
        let mut r = Rotator::new(t.path(), limits(64, 1));
        r.write("t", &[b'x'; 64]);
        r.write("t", b"new");
        assert_eq!(tail(t.path(), 1000).unwrap().unwrap(), b"new");
        assert!(!rotated(t.path(), 1).exists());
    }

    #[test]
    fn since_follows_across_rotation() {
        let t = tempfile::tempdir().unwrap();
        let mut r = Rotator::new(t.path(), limits(10, 3));
        r.write("t", b"abcd");
        let (b, c) = since(t.path(), None, 1 << 20).unwrap();
        assert_eq!(b, b"abcd");
        let (b, c) = since(t.path(), Some(c), 1 << 20).unwrap();
        assert!(b.is_empty());
        // 0123456789 fills console.log (rotated at 10 bytes), the rest goes on in a new one.
        r.write("t", b"0123456789xyz");
        let (b, c) = since(t.path(), Some(c), 4).unwrap();
        assert_eq!(b, b"0123");
        let (b, c) = since(t.path(), Some(c), 1 << 20).unwrap();
        assert_eq!(b, b"456789xyz");
        r.write("t", b"!");
        assert_eq!(since(t.path(), Some(c), 1 << 20).unwrap().0, b"!");
        // A cursor whose file was rotated away reads the oldest kept from its start.
        let gone = LogCursor {
            inode: u64::MAX,
            offset: 3,
        };
        let (b, _) = since(t.path(), Some(gone), 1 << 20).unwrap();
        assert_eq!(b, b"abcd0123456789xyz!");
    }

    #[test]
    fn no_files_is_none() {
        let t = tempfile::tempdir().unwrap();
        assert!(tail(t.path(), 10).unwrap().is_none());
        assert!(limits(1, 2).validate().is_err());
        assert!(limits(1 << 20, 0).validate().is_err());
        assert!(ConsoleLimits::default().validate().is_ok());
    }

    /// A writer that outlives the pump's reader keeps writing without SIGPIPE or EPIPE
    /// until the buffer is full, and a new reader gets what was buffered.
    #[test]
    fn pipe_survives_a_dead_reader() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("c.fifo");
        let out = t.path().join("out");
        let c = Consoles::default();
        let w = c.start("w", &fifo, &out, limits(1 << 20, 2)).unwrap();
        let mut wf = File::from(w);
        wf.write_all(b"one\n").unwrap();
        c.flush("w", Duration::from_secs(5));
        c.close("w", Duration::ZERO);
        // No reader now but the writer itself: still no EPIPE.
        wf.write_all(b"two\n").unwrap();
        c.attach("w", &fifo, &out, limits(1 << 20, 2)).unwrap();
        drop(wf);
        c.close("w", Duration::from_secs(5));
        assert_eq!(tail(&out, 100).unwrap().unwrap(), b"one\ntwo\n");
    }
}
