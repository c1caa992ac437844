//! Lazy hydration: a restored workspace starts before its large files are fetched.
//!
//! A restore writes directories, small files and metadata, and leaves every file of at least
//! [`hearth_snapshot::LAZY_MIN`] bytes as a placeholder (final size, no content, marked with
//! [`hearth_snapshot::PENDING_XATTR`]). Before the workspace can open anything, the node
//! puts a fanotify `FAN_OPEN_PERM` mark on the workspace's btrfs: every open of a file on
//! it waits for our answer, and an open of a placeholder is answered only once the file
//! is filled (or denied with `EPERM` if its chunks cannot be fetched, never let through
//! to zeros). Open, not read: the kernel's pre-content events (`FAN_PRE_ACCESS`) do not
//! fire for an mmap through overlayfs (measured on 6.18), while the lower file's open
//! does, and every read, write and mmap needs an open. Background threads fill the rest
//! in tree order; the mark goes when nothing is left.
//!
//! Crashes: the group's fd is also held by a `sleep` keeper process, so when the node
//! dies, opens of placeholders keep waiting instead of seeing zeros; the next node takes
//! the group back (`pidfd_getfd`), and the opens the dead node had read are released when
//! the group closes, i.e. after the last file is filled. Placeholders are found again by
//! their marker, which a fill removes only after the content is synced.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hearth_snapshot::{Lazy, Store};
use serde::{Deserialize, Serialize};

use super::Inner;
use crate::{HydrationStatus, NodeError, WorkspaceSpec};
use NodeError as E;

/// In the workspace dir while placeholders may be left: the snapshot they come from.
pub(super) const STATE_FILE: &str = "hydrate.json";
/// The keeper's pid, beside the state file.
pub(super) const KEEPER_FILE: &str = "hydrate.keeper";
/// Threads filling what was opened first / everything else.
const OPEN_WORKERS: usize = 2;
const BACKGROUND_WORKERS: usize = 2;
/// A fill for a waiting open is retried for this long before the open is denied
/// (`EPERM`): long enough to ride out a store hiccup or a node restart.
const OPEN_PATIENCE: Duration = Duration::from_secs(30);
/// A snapshot waiting for hydration gives up when no file got filled for this long
/// while fills fail.
const STALL: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct State {
    snapshot: String,
}

/// Hydrations in progress, by workspace id, and trees a restore just loaded.
#[derive(Default)]
pub(super) struct Hydrations {
    active: Arc<Mutex<HashMap<String, Arc<Hydration>>>>,
    fresh: Mutex<HashMap<String, Lazy>>,
    /// Held while one is armed, so two callers never arm two groups.
    arming: Mutex<()>,
}

enum FileState {
    Pending {
        entry: usize,
        path: PathBuf,
    },
    /// Being filled; the opens waiting for it.
    Filling {
        entry: usize,
        path: PathBuf,
        waiters: Vec<OwnedFd>,
    },
}

struct Files {
    by_ino: HashMap<u64, FileState>,
    /// Background order (tree order).
    queue: VecDeque<u64>,
}

struct Hydration {
    id: String,
    /// Closed when the last thread lets go of the hydration, so no late answer can go to
    /// a reused fd number.
    fan: OwnedFd,
    lazy: Lazy,
    store: Arc<Store>,
    upper: PathBuf,
    dev: u64,
    files: Mutex<Files>,
    changed: Condvar,
    total_files: u64,
    total_bytes: u64,
    done_files: AtomicU64,
    done_bytes: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_fill: Mutex<Instant>,
    stop: AtomicBool,
    done: AtomicBool,
    keeper: Mutex<Option<Keeper>>,
    jobs: Mutex<Option<mpsc::Sender<u64>>>,
}

enum Keeper {
    Child(std::process::Child),
    Adopted(OwnedFd),
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Records that `dir` (a workspace dir being built) has placeholders from `snapshot`.
pub(super) fn write_state(dir: &Path, snapshot: &str) -> Result<(), NodeError> {
    let path = state_path(dir);
    let json = serde_json::to_vec(&State {
        snapshot: snapshot.to_string(),
    })
    .map_err(super::internal)?;
    std::fs::write(&path, json).map_err(E::io("write", &path))
}

impl Hydrations {
    pub(super) fn keep_fresh(&self, id: &str, lazy: Lazy) {
        if let Ok(mut m) = self.fresh.lock() {
            m.insert(id.to_string(), lazy);
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Hydration>> {
        self.active.lock().ok()?.get(id).cloned()
    }

    /// Stops the workspace's hydration (it is being removed): waiting opens are denied.
    pub(super) fn stop(&self, id: &str) {
        let h = self.active.lock().ok().and_then(|mut m| m.remove(id));
        if let Ok(mut m) = self.fresh.lock() {
            m.remove(id);
        }
        if let Some(h) = h {
            h.stop.store(true, Ordering::SeqCst);
            h.close();
        }
    }
}

impl Inner {
    /// Arms hydration of the workspace's placeholders if it has any and none is running:
    /// must run with its disk mounted and before anything in it starts.
    pub(super) fn ensure_hydration(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let p = self.paths(&spec.id);
        let sp = state_path(&p.dir);
        let _arming = self
            .hydrations
            .arming
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !sp.exists() || self.hydrations.get(&spec.id).is_some() {
            return Ok(());
        }
        let raw = std::fs::read(&sp).map_err(E::io("read", &sp))?;
        let state: State = serde_json::from_slice(&raw)
            .map_err(|e| NodeError::Internal(format!("{}: {e}", sp.display())))?;
        let placeholders =
            hearth_snapshot::pending(&p.upper).map_err(|source| NodeError::Snapshot {
                context: format!("workspace {}: cannot list its placeholders", spec.name),
                source,
            })?;
        let keeper_file = p.dir.join(KEEPER_FILE);
        if placeholders.is_empty() {
            // Finished before a crash cut the bookkeeping short.
            release_keeper(&keeper_file);
            let _ = std::fs::remove_file(&sp);
            return Ok(());
        }
        let store = self.snap_store()?;
        let fresh = self
            .hydrations
            .fresh
            .lock()
            .ok()
            .and_then(|mut m| m.remove(spec.id.as_str()))
            .filter(|l| l.snapshot() == state.snapshot);
        let lazy = match fresh {
            Some(l) => l,
            None => Lazy::open(&store, &state.snapshot).map_err(|source| NodeError::Snapshot {
                context: format!(
                    "workspace {}: cannot load snapshot {} to fill its files",
                    spec.name, state.snapshot
                ),
                source,
            })?,
        };
        let dev = std::fs::metadata(&p.upper)
            .map_err(E::io("stat", &p.upper))?
            .dev();
        // The group of a node that died, still held by its keeper: its marks are in place
        // and the opens it was answering are still waiting in it.
        let (fan, keeper) = match adopt_keeper(&keeper_file) {
            Some((fan, pidfd)) => (fan, Keeper::Adopted(pidfd)),
            None => {
                release_keeper(&keeper_file);
                let fan = fanotify_group(&p.disk)?;
                let child = spawn_keeper(&fan, &keeper_file)?;
                (fan, Keeper::Child(child))
            }
        };
        let mut by_ino = HashMap::new();
        let mut order: Vec<(usize, u64)> = Vec::new();
        let mut total_bytes = 0;
        for ph in placeholders {
            total_bytes += lazy.size(ph.entry).unwrap_or(0);
            order.push((ph.entry, ph.ino));
            by_ino.insert(
                ph.ino,
                FileState::Pending {
                    entry: ph.entry,
                    path: ph.path,
                },
            );
        }
        order.sort_unstable();
        let total_files = by_ino.len() as u64;
        let (tx, rx) = mpsc::channel();
        let h = Arc::new(Hydration {
            id: spec.id.to_string(),
            fan,
            lazy,
            store,
            upper: p.upper.clone(),
            dev,
            files: Mutex::new(Files {
                by_ino,
                queue: order.into_iter().map(|(_, ino)| ino).collect(),
            }),
            changed: Condvar::new(),
            total_files,
            total_bytes,
            done_files: AtomicU64::new(0),
            done_bytes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_fill: Mutex::new(Instant::now()),
            stop: AtomicBool::new(false),
            done: AtomicBool::new(false),
            keeper: Mutex::new(Some(keeper)),
            jobs: Mutex::new(Some(tx)),
        });
        if let Ok(mut m) = self.hydrations.active.lock() {
            m.insert(spec.id.to_string(), h.clone());
        }
        tracing::info!(id = %spec.id, snapshot = %state.snapshot, files = total_files, bytes = total_bytes, "hydrating");
        let rx = Arc::new(Mutex::new(rx));
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(E::io("spawn a hydration thread", &p.dir))
        };
        {
            let h = h.clone();
            let sp = sp.clone();
            let kf = keeper_file.clone();
            let active = Arc::downgrade(&self.hydrations.active);
            spawn(
                "hydrate-events",
                Box::new(move || {
                    h.dispatch();
                    h.finish(&sp, &kf);
                    if let Some(a) = active.upgrade() {
                        if let Ok(mut m) = a.lock() {
                            if m.get(&h.id).is_some_and(|x| Arc::ptr_eq(x, &h)) {
                                m.remove(&h.id);
                            }
                        }
                    }
                }),
            )?;
        }
        for _ in 0..OPEN_WORKERS {
            let (h, rx) = (h.clone(), rx.clone());
            spawn("hydrate-open", Box::new(move || h.open_worker(&rx)))?;
        }
        for _ in 0..BACKGROUND_WORKERS {
            let h = h.clone();
            spawn("hydrate-bg", Box::new(move || h.background()))?;
        }
        Ok(())
    }

    /// Waits until the workspace has no placeholders left (a snapshot must never store
    /// one as if it were the data); fails when fills keep failing with no progress.
    pub(super) fn wait_hydrated(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        self.ensure_hydration(spec)?;
        let Some(h) = self.hydrations.get(&spec.id) else {
            return Ok(());
        };
        let mut files = h.files.lock().unwrap_or_else(|p| p.into_inner());
        while !h.done.load(Ordering::SeqCst) {
            if h.stop.load(Ordering::SeqCst) {
                return Err(NodeError::Conflict(format!(
                    "workspace {}: its hydration was stopped",
                    spec.name
                )));
            }
            let stalled = h
                .last_fill
                .lock()
                .map(|t| t.elapsed() > STALL)
                .unwrap_or(false);
            if stalled && h.failures.load(Ordering::Relaxed) > 0 {
                let err = h.last_error.lock().ok().and_then(|e| e.clone());
                return Err(NodeError::Internal(format!(
                    "workspace {}: {} files are still being fetched from its snapshot and \
                     fetching fails ({}); it is retried in the background",
                    spec.name,
                    files.by_ino.len(),
                    err.unwrap_or_default()
                )));
            }
            files = h
                .changed
                .wait_timeout(files, Duration::from_millis(500))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(())
    }

    /// Progress for `inspect`: `None` when nothing is left to fetch.
    pub(super) fn hydration_status(&self, spec: &WorkspaceSpec) -> Option<HydrationStatus> {
        if let Some(h) = self.hydrations.get(&spec.id) {
            return Some(HydrationStatus {
                snapshot: h.lazy.snapshot().to_string(),
                files_total: h.total_files,
                files_done: h.done_files.load(Ordering::Relaxed),
                bytes_total: h.total_bytes,
                bytes_done: h.done_bytes.load(Ordering::Relaxed),
                failures: h.failures.load(Ordering::Relaxed),
                last_error: h.last_error.lock().ok().and_then(|e| e.clone()),
                active: true,
            });
        }
        let sp = state_path(&self.paths(&spec.id).dir);
        let state: State = serde_json::from_slice(&std::fs::read(sp).ok()?).ok()?;
        Some(HydrationStatus {
            snapshot: state.snapshot,
            active: false,
            ..HydrationStatus::default()
        })
    }
}

impl Hydration {
    fn respond(&self, fd: &OwnedFd, allow: bool) {
        let r = libc::fanotify_response {
            fd: fd.as_raw_fd(),
            response: if allow {
                libc::FAN_ALLOW
            } else {
                libc::FAN_DENY
            },
        };
        // SAFETY: writes a plain struct of the declared size to our fanotify fd.
        let n = unsafe {
            libc::write(
                self.fan.as_raw_fd(),
                (&r as *const libc::fanotify_response).cast(),
                std::mem::size_of::<libc::fanotify_response>(),
            )
        };
        if n < 0 {
            tracing::warn!(id = %self.id, "fanotify response: {}", std::io::Error::last_os_error());
        }
    }

    /// Reads open events until every placeholder is filled (or the hydration is stopped):
    /// opens of anything else are allowed at once, opens of a placeholder wait for its fill.
    fn dispatch(&self) {
        let me = std::process::id() as i32;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut pfd = libc::pollfd {
                fd: self.fan.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
            if ready <= 0 {
                if self.stop.load(Ordering::SeqCst) || self.all_done() {
                    break;
                }
                continue;
            }
            // SAFETY: reads into our buffer of the given length.
            let n = unsafe { libc::read(self.fan.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                continue;
            }
            let n = n as usize;
            let meta_len = std::mem::size_of::<libc::fanotify_event_metadata>();
            let mut off = 0;
            while off + meta_len <= n {
                // SAFETY: the kernel wrote whole event records; read_unaligned copes with
                // the byte buffer's alignment.
                let m: libc::fanotify_event_metadata =
                    unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let len = m.event_len as usize;
                if len < meta_len {
                    break;
                }
                off += len;
                if m.fd < 0 {
                    continue;
                }
                // SAFETY: the kernel gave us this fd with the event; we own it now.
                let fd = unsafe { OwnedFd::from_raw_fd(m.fd) };
                self.event(fd, m.pid == me);
            }
        }
    }

    fn event(&self, fd: OwnedFd, own: bool) {
        let ino = match rustix::fs::fstat(&fd) {
            Ok(st) if !own && st.st_dev == self.dev => st.st_ino,
            _ => return self.respond(&fd, true),
        };
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        match files.by_ino.remove(&ino) {
            None => {
                drop(files);
                self.respond(&fd, true)
            }
            Some(FileState::Pending { entry, path }) => {
                files.by_ino.insert(
                    ino,
                    FileState::Filling {
                        entry,
                        path,
                        waiters: vec![fd],
                    },
                );
                drop(files);
                if let Some(tx) = self.jobs.lock().ok().and_then(|j| j.clone()) {
                    let _ = tx.send(ino);
                }
            }
            Some(FileState::Filling {
                entry,
                path,
                mut waiters,
            }) => {
                waiters.push(fd);
                files.by_ino.insert(
                    ino,
                    FileState::Filling {
                        entry,
                        path,
                        waiters,
                    },
                );
            }
        }
    }

    fn all_done(&self) -> bool {
        self.files
            .lock()
            .map(|f| f.by_ino.is_empty())
            .unwrap_or(false)
    }

    /// Fills files some open is waiting for, through the event's own fd (which raises no
    /// event), retrying a few times before the opens are denied.
    fn open_worker(&self, rx: &Mutex<mpsc::Receiver<u64>>) {
        loop {
            let ino = {
                let Ok(rx) = rx.lock() else { return };
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(i) => i,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if self.stop.load(Ordering::SeqCst) || self.done.load(Ordering::SeqCst) {
                            return;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            let target = {
                let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
                match files.by_ino.get(&ino) {
                    Some(FileState::Filling {
                        entry,
                        waiters,
                        path,
                    }) => waiters.first().map(|w| {
                        (
                            *entry,
                            format!("/proc/self/fd/{}", w.as_raw_fd()),
                            path.display().to_string(),
                        )
                    }),
                    _ => None,
                }
            };
            let Some((entry, via, shown)) = target else {
                continue;
            };
            // The event's fd is read-only; this reopen is our own open, which the
            // dispatcher lets through.
            let done = match std::fs::OpenOptions::new().write(true).open(&via) {
                Err(e) => Err(format!("reopen for writing: {e}")),
                Ok(file) => {
                    let deadline = Instant::now() + OPEN_PATIENCE;
                    let mut pause = Duration::from_millis(200);
                    loop {
                        let r = self.fill(entry, &file);
                        let Err(e) = &r else { break r };
                        if Instant::now() + pause > deadline || self.stop.load(Ordering::SeqCst) {
                            break r;
                        }
                        self.failed(&shown, e);
                        self.nap(pause);
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            };
            self.settle(ino, done, false);
        }
    }

    /// Fills the rest in tree order; a file that fails goes to the back of the queue and
    /// is tried again after a pause, for as long as the hydration lives.
    fn background(&self) {
        let mut pause = Duration::from_millis(500);
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let next = {
                let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
                let mut found = None;
                while let Some(ino) = files.queue.pop_front() {
                    match files.by_ino.remove(&ino) {
                        Some(FileState::Pending { entry, path }) => {
                            files.by_ino.insert(
                                ino,
                                FileState::Filling {
                                    entry,
                                    path: path.clone(),
                                    waiters: Vec::new(),
                                },
                            );
                            found = Some((ino, entry, path));
                            break;
                        }
                        Some(other) => {
                            // Being filled for an open: it settles there.
                            files.by_ino.insert(ino, other);
                        }
                        None => {}
                    }
                }
                found
            };
            let Some((ino, entry, path)) = next else {
                return;
            };
            let res = self.open_placeholder(&path, ino).and_then(|f| match f {
                Some(f) => self.fill(entry, &f),
                // Renamed (a rename opens nothing) or gone: look for it by its marker.
                None => match self.find(ino)? {
                    Some(moved) => match self.open_placeholder(&moved, ino)? {
                        Some(f) => self.fill(entry, &f),
                        None => Err(format!("{} moved while being filled", moved.display())),
                    },
                    None => Ok(()),
                },
            });
            let failed = res.is_err();
            self.settle(ino, res, true);
            if failed {
                self.nap(pause);
                pause = (pause * 2).min(Duration::from_secs(30));
            } else {
                pause = Duration::from_millis(500);
            }
        }
    }

    /// Opens a placeholder by its path if it is still the same inode (our own open: the
    /// dispatcher lets it through).
    fn open_placeholder(&self, rel: &Path, ino: u64) -> Result<Option<File>, String> {
        let path = self.upper.join(rel);
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => match f.metadata() {
                Ok(m) if m.ino() == ino && m.dev() == self.dev => Ok(Some(f)),
                Ok(_) => Ok(None),
                Err(e) => Err(format!("{}: {e}", path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Where placeholder `ino` is now; `None` once it is gone (deleted or replaced).
    fn find(&self, ino: u64) -> Result<Option<PathBuf>, String> {
        let all = hearth_snapshot::pending(&self.upper).map_err(|e| e.to_string())?;
        Ok(all.into_iter().find(|p| p.ino == ino).map(|p| p.path))
    }

    fn fill(&self, entry: usize, file: &File) -> Result<(), String> {
        let n = self
            .lazy
            .fill(&self.store, entry, file)
            .map_err(|e| e.to_string())?;
        self.done_bytes.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Ends a fill: answers the opens waiting for it (allowed once filled, denied if it
    /// failed, so nobody reads a placeholder) and records the outcome. A failed background
    /// fill that opens joined while it ran hands them to an open worker instead, so they
    /// get the same patience (`OPEN_PATIENCE`) as an open that started the fill itself.
    fn settle(&self, ino: u64, res: Result<(), String>, from_background: bool) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let Some(FileState::Filling {
            entry,
            path,
            waiters,
        }) = files.by_ino.remove(&ino)
        else {
            return;
        };
        let (entry, path, waiters) = match (&res, from_background, waiters.is_empty()) {
            (Err(e), true, false) => {
                let tx = self.jobs.lock().ok().and_then(|j| j.clone());
                // Sent under the lock, so the worker finds the state in place.
                if tx.is_some_and(|tx| tx.send(ino).is_ok()) {
                    self.failed(&path.display().to_string(), e);
                    files.by_ino.insert(
                        ino,
                        FileState::Filling {
                            entry,
                            path,
                            waiters,
                        },
                    );
                    return;
                }
                (entry, path, waiters)
            }
            _ => (entry, path, waiters),
        };
        match &res {
            Ok(()) => {
                self.done_files.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut t) = self.last_fill.lock() {
                    *t = Instant::now();
                }
            }
            Err(e) => {
                self.failed(&path.display().to_string(), e);
                files.by_ino.insert(ino, FileState::Pending { entry, path });
                files.queue.push_back(ino);
            }
        }
        drop(files);
        for w in &waiters {
            self.respond(w, res.is_ok());
        }
        self.changed.notify_all();
    }

    /// Sleeps up to `d`, less once the hydration is stopped.
    fn nap(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stop.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Records a failed fetch, for `inspect` and the log.
    fn failed(&self, what: &str, e: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(id = %self.id, file = what, "hydration: {e}");
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(format!("{what}: {e}"));
        }
    }

    /// After the last fill: syncs, drops the bookkeeping and the keeper; the group closes
    /// when the workers are gone, which lets through any open a dead node had read but
    /// not answered, now that all is filled.
    fn finish(&self, state: &Path, keeper_file: &Path) {
        if let Ok(mut j) = self.jobs.lock() {
            j.take();
        }
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(f) = File::open(&self.upper) {
            if let Err(e) = rustix::fs::syncfs(&f) {
                tracing::warn!(id = %self.id, "sync after hydration: {e}");
            }
        }
        let _ = std::fs::remove_file(state);
        self.close();
        let _ = std::fs::remove_file(keeper_file);
        self.done.store(true, Ordering::SeqCst);
        tracing::info!(id = %self.id, files = self.total_files, bytes = self.total_bytes, "hydrated");
        self.changed.notify_all();
    }

    /// Ends the keeper; our own fd of the group closes with the last reference.
    fn close(&self) {
        if let Some(k) = self.keeper.lock().ok().and_then(|mut k| k.take()) {
            match k {
                Keeper::Child(mut c) => {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Keeper::Adopted(pidfd) => {
                    let _ =
                        rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

/// A fanotify group with an open-permission mark on the whole filesystem at `disk`
/// (overlayfs opens the upper file through its own private mount, so a mount mark would
/// miss it).
fn fanotify_group(disk: &Path) -> Result<OwnedFd, NodeError> {
    let err = |op: &'static str| {
        let e = std::io::Error::last_os_error();
        NodeError::Internal(format!(
            "{op} on {}: {e} (lazy restore needs fanotify permission events: \
             CONFIG_FANOTIFY_ACCESS_PERMISSIONS)",
            disk.display()
        ))
    };
    // SAFETY: plain syscall, no pointers.
    let fd = unsafe {
        libc::fanotify_init(
            // Unlimited: an event that overflows a bounded queue is allowed unanswered.
            libc::FAN_CLASS_CONTENT
                | libc::FAN_CLOEXEC
                | libc::FAN_NONBLOCK
                | libc::FAN_UNLIMITED_QUEUE,
            // Read-only: the kernel opens this for every open on the disk, and a
            // read-write one would fail (and so deny) the exec of a running binary.
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )
    };
    if fd < 0 {
        return Err(err("fanotify_init"));
    }
    // SAFETY: a fresh fd we own from here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = std::ffi::CString::new(disk.as_os_str().as_encoded_bytes())
        .map_err(|_| NodeError::Invalid(format!("{}: NUL in path", disk.display())))?;
    // SAFETY: valid fd and NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(
            fd.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_OPEN_PERM,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 {
        return Err(err("fanotify_mark"));
    }
    Ok(fd)
}

/// A `sleep infinity` holding the group as its stdin, so it outlives this process.
fn spawn_keeper(fan: &OwnedFd, file: &Path) -> Result<std::process::Child, NodeError> {
    let dup = fan
        .as_fd()
        .try_clone_to_owned()
        .map_err(E::io("dup", file))?;
    let child = std::process::Command::new("sleep")
        .arg("infinity")
        .stdin(std::process::Stdio::from(dup))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(E::io("spawn sleep (the hydration keeper)", file))?;
    std::fs::write(file, child.id().to_string()).map_err(E::io("write", file))?;
    Ok(child)
}

/// The group a previous node's keeper holds, with the keeper's pidfd.
fn adopt_keeper(file: &Path) -> Option<(OwnedFd, OwnedFd)> {
    let pid: i32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let pid = rustix::process::Pid::from_raw(pid)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    // Checked after the pidfd is open, so a reused pid cannot slip in between.
    let cmd = std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).ok()?;
    let link = std::fs::read_link(format!("/proc/{}/fd/0", pid.as_raw_nonzero())).ok()?;
    if cmd != b"sleep\0infinity\0" || link.as_os_str() != "anon_inode:[fanotify]" {
        return None;
    }
    let fan =
        rustix::process::pidfd_getfd(&pidfd, 0, rustix::process::PidfdGetfdFlags::empty()).ok()?;
    tracing::info!(
        pid = pid.as_raw_nonzero(),
        "took over a hydration left by a previous node"
    );
    Some((fan, pidfd))
}

/// Ends a keeper that is not adopted (its group's opens are then let through: only done
/// when the caller knows there is nothing left to fill, or holds a new group).
pub(super) fn release_keeper(file: &Path) {
    if let Some((_, pidfd)) = adopt_keeper(file) {
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    }
    let _ = std::fs::remove_file(file);
}
