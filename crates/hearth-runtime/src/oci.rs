//! Driving the OCI runtime binary (crun by default, runc otherwise).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Result, RuntimeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Crun,
    Runc,
}

#[derive(Debug, Clone)]
pub struct OciRuntime {
    binary: PathBuf,
    kind: Kind,
    /// Runtime state directory, ours alone so `list` never shows foreign containers.
    root: PathBuf,
    /// Debian 12's crun refuses a hybrid cgroup layout; hiding the cgroup2 mount in a
    /// private mount namespace for the runtime process gets past that.
    hide_unified: bool,
}

pub use oci_spec::runtime::ContainerState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub status: ContainerState,
    pub pid: Option<u32>,
}

impl State {
    /// The container's process exists (it may be frozen).
    pub fn is_running(&self) -> bool {
        self.status == ContainerState::Running
    }
}

const UNIFIED: &str = "/sys/fs/cgroup/unified";

impl OciRuntime {
    /// `choice`: "crun", "runc" or a path; `None` prefers crun and falls back to runc.
    pub fn new(choice: Option<&str>, state_root: &Path) -> Result<Self> {
        let find = |name: &str| -> Option<PathBuf> {
            if name.contains('/') {
                let p = PathBuf::from(name);
                return p.is_file().then_some(p);
            }
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        };
        let binary = match choice {
            Some(c) => find(c).ok_or_else(|| RuntimeError::Runtime {
                runtime: c.to_string(),
                op: "find",
                id: String::new(),
                message: "not found in PATH (install crun or runc, or pass --runtime PATH)".into(),
            })?,
            None => find("crun")
                .or_else(|| find("runc"))
                .ok_or_else(|| RuntimeError::Runtime {
                    runtime: "crun".into(),
                    op: "find",
                    id: String::new(),
                    message: "neither crun nor runc found in PATH: apt-get install crun".into(),
                })?,
        };
        let kind = if binary
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"runc"))
        {
            Kind::Runc
        } else {
            Kind::Crun
        };
        std::fs::create_dir_all(state_root)
            .map_err(|e| RuntimeError::io("mkdir", state_root, e))?;
        let hide_unified = kind == Kind::Crun
            && crate::mount::is_mounted(Path::new(UNIFIED))?
            && Path::new("/sys/fs/cgroup/memory").exists();
        Ok(OciRuntime {
            binary,
            kind,
            root: state_root.to_path_buf(),
            hide_unified,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        if self.kind == Kind::Crun {
            // The node places the process in its cgroups before exec; crun must not move it.
            c.arg("--cgroup-manager=disabled");
        }
        c
    }

    /// Starts the container detached. `listen` becomes fd 3 inside (the agent's socket);
    /// the runtime's and container's stdout/stderr go to `console` (the node's console
    /// pipe); the runtime process is moved into `cgroup_procs` before exec, so the
    /// container starts inside them. A failure's message is the runtime's log; what the
    /// runtime printed is in the console.
    pub fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        listen: BorrowedFd<'_>,
        console: OwnedFd,
        cgroup_procs: &[PathBuf],
    ) -> Result<()> {
        let err_log = console
            .try_clone()
            .map_err(|e| RuntimeError::io("dup", Path::new("console"), e))?;
        let procs: Vec<CString> = cgroup_procs
            .iter()
            .map(|p| CString::new(p.as_os_str().as_bytes()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| RuntimeError::Bundle("cgroup path contains NUL".into()))?;
        let listen_raw = listen.as_raw_fd();
        let hide = self.hide_unified;
        let runtime_log = bundle.join("runtime.log");
        let _ = std::fs::remove_file(&runtime_log);
        let mut cmd = self.cmd();
        cmd.arg("--log")
            .arg(&runtime_log)
            .args(["run", "--detach", "--preserve-fds", "1", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(err_log);
        // SAFETY: the closure runs between fork and exec and only makes raw syscalls on
        // data prepared before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if rc < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if listen_raw == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                } else if libc::dup2(listen_raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if hide {
                    hide_unified_mount()?;
                }
                Ok(())
            });
        }
        let status = cmd
            .status()
            .map_err(|e| RuntimeError::io("spawn", &self.binary, e))?;
        if status.success() {
            return Ok(());
        }
        let message = std::fs::read_to_string(&runtime_log).unwrap_or_default();
        Err(self.err("run", id, format!("{status}: {}", message.trim())))
    }

    /// Runs a container in the foreground and waits for it (benchmark floor: the runtime
    /// alone, no network, cgroup or agent work).
    pub fn run_foreground(&self, id: &str, bundle: &Path) -> Result<std::process::ExitStatus> {
        let hide = self.hide_unified;
        let mut cmd = self.cmd();
        cmd.args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: only raw syscalls between fork and exec, see `hide_unified_mount`.
        unsafe {
            cmd.pre_exec(move || if hide { hide_unified_mount() } else { Ok(()) });
        }
        cmd.status()
            .map_err(|e| RuntimeError::io("spawn", &self.binary, e))
    }

    /// Runs `/bin/true` in `rootfs` once with the runtime alone (its default spec: no user
    /// namespace, network, cgroups or agent) and says how long it took: the floor
    /// `hearth bench` sets workspace starts against. `bundle` is made if needed.
    pub fn floor_run(&self, id: &str, bundle: &Path, rootfs: &Path) -> Result<std::time::Duration> {
        if !bundle.join("config.json").exists() {
            write_floor_bundle(bundle, rootfs)?;
        }
        let t = std::time::Instant::now();
        let st = self.run_foreground(id, bundle)?;
        let took = t.elapsed();
        if !st.success() {
            return Err(RuntimeError::Runtime {
                runtime: self.binary.display().to_string(),
                op: "run",
                id: id.to_string(),
                message: format!("/bin/true {st}"),
            });
        }
        Ok(took)
    }

    /// `None` when the runtime does not know the container.
    ///
    /// Answered from the state file the runtime keeps under `--root` (crun's `status`,
    /// runc's `state.json`) and `/proc`: the init pid is alive only if its start time is
    /// the one the runtime recorded, so a reused pid cannot pass for the container. No
    /// runtime process is run, unless the file is in a form this does not know.
    pub fn state(&self, id: &str) -> Result<Option<State>> {
        match self.state_on_disk(id) {
            Ok(st) => Ok(st),
            Err(why) => {
                tracing::debug!(id, why, "runtime state file unreadable; asking the runtime");
                self.state_cmd(id)
            }
        }
    }

    fn state_on_disk(&self, id: &str) -> std::result::Result<Option<State>, &'static str> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err("not a plain container id");
        }
        let dir = self.root.join(id);
        let file = match self.kind {
            Kind::Crun => "status",
            Kind::Runc => "state.json",
        };
        let bytes = match std::fs::read(dir.join(file)) {
            Ok(b) => b,
            // No dir: never created or deleted. A dir without the file is a create in
            // progress (or cut short), which only the runtime can judge.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => return Ok(None),
            Err(_) => return Err("state file missing or unreadable"),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| "state file is not json")?;
        let (pid_key, start_key) = match self.kind {
            Kind::Crun => ("pid", "process-start-time"),
            Kind::Runc => ("init_process_pid", "init_process_start"),
        };
        let pid = v[pid_key]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or("no init pid in state file")?;
        let start = v[start_key]
            .as_u64()
            .or_else(|| v[start_key].as_str().and_then(|s| s.parse().ok()))
            .ok_or("no init start time in state file")?;
        let alive = proc_start_time(pid).is_some_and(|t| t == start);
        let status = if !alive {
            ContainerState::Stopped
        } else if dir.join("exec.fifo").exists() {
            // Created, not yet started: both runtimes remove the fifo at start.
            ContainerState::Created
        } else {
            ContainerState::Running
        };
        Ok(Some(State {
            status,
            pid: alive.then_some(pid),
        }))
    }

    /// `<runtime> state`: one process per call.
    fn state_cmd(&self, id: &str) -> Result<Option<State>> {
        let out = self
            .cmd()
            .args(["state", id])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RuntimeError::io("spawn", &self.binary, e))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            if msg.contains("does not exist")
                || msg.contains("not exist")
                || msg.contains("No such file")
            {
                return Ok(None);
            }
            return Err(self.err("state", id, msg.trim().to_string()));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| self.err("state", id, format!("bad state json: {e}")))?;
        let status = match v["status"].as_str() {
            // The OCI states plus runc's and crun's `paused`: frozen, its processes still there.
            Some("paused") => ContainerState::Running,
            Some(s) => serde_json::from_value(s.into())
                .map_err(|_| self.err("state", id, format!("unknown container status {s:?}")))?,
            None => return Err(self.err("state", id, "state json has no status".into())),
        };
        let pid = v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        Ok(Some(State { status, pid }))
    }

    pub fn kill(&self, id: &str, signal: &str) -> Result<()> {
        self.simple(&["kill", id, signal], "kill", id)
    }

    /// Forgets the container (killing it if needed); unknown ids are fine, and cost no
    /// runtime process.
    pub fn delete(&self, id: &str) -> Result<()> {
        if !id.is_empty() && !id.contains('/') && !self.root.join(id).exists() {
            return Ok(());
        }
        match self.simple(&["delete", "--force", id], "delete", id) {
            Ok(()) => Ok(()),
            Err(RuntimeError::Runtime { message, .. })
                if message.contains("not exist") || message.contains("No such file") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Container ids in our state directory.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(RuntimeError::io("readdir", &self.root, e)),
        };
        for e in rd.flatten() {
            if e.path().is_dir() {
                if let Some(n) = e.file_name().to_str() {
                    ids.push(n.to_string());
                }
            }
        }
        Ok(ids)
    }

    fn simple(&self, args: &[&str], op: &'static str, id: &str) -> Result<()> {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RuntimeError::io("spawn", &self.binary, e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.err(
                op,
                id,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }

    fn err(&self, op: &'static str, id: &str, message: String) -> RuntimeError {
        RuntimeError::Runtime {
            runtime: self.binary.display().to_string(),
            op,
            id: id.to_string(),
            message,
        }
    }
}

/// Gives the calling (just forked) process a private mount namespace without the
/// cgroup2 mount. Only raw syscalls: safe between fork and exec.
fn hide_unified_mount() -> std::io::Result<()> {
    // SAFETY: plain syscalls on static C strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Start time of process `pid` (field 22 of `/proc/<pid>/stat`, clock ticks since boot),
/// `None` when it is gone or a zombie.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields restart after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); field 22 is 19 further on.
    fields.nth(18)?.parse().ok()
}

/// Last `max` bytes of a file, lossy; for error messages.
pub fn tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b[b.len().saturating_sub(max)..]).into_owned(),
        Err(_) => String::new(),
    }
}

/// The runtime's default spec running `/bin/true` read-only in `rootfs`, without the
/// cgroup mount (the floor must not need the host's cgroup layout).
fn write_floor_bundle(bundle: &Path, rootfs: &Path) -> Result<()> {
    let bad = |e: oci_spec::OciSpecError| RuntimeError::Bundle(e.to_string());
    std::fs::create_dir_all(bundle).map_err(|e| RuntimeError::io("mkdir", bundle, e))?;
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| RuntimeError::Bundle("default spec has no process".into()))?;
    process.set_args(Some(vec!["/bin/true".into()]));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    spec.set_root(Some(
        oci_spec::runtime::RootBuilder::default()
            .path(rootfs)
            .readonly(true)
            .build()
            .map_err(bad)?,
    ));
    let mounts: Vec<_> = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.typ().as_deref() != Some("cgroup"))
        .collect();
    spec.set_mounts(Some(mounts));
    spec.save(bundle.join("config.json")).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(root: &Path) -> OciRuntime {
        OciRuntime {
            binary: PathBuf::from("/nonexistent/crun"),
            kind: Kind::Crun,
            root: root.to_path_buf(),
            hide_unified: false,
        }
    }

    fn write_status(root: &Path, id: &str, pid: u32, start: u64) {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("status"),
            format!(r#"{{"pid": {pid}, "process-start-time": {start}, "bundle": "/b"}}"#),
        )
        .unwrap();
    }

    #[test]
    fn state_comes_from_the_state_file_and_proc() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = runtime(tmp.path());
        // Unknown: no dir, and no runtime binary needed to say so.
        assert_eq!(rt.state("nope").unwrap(), None);

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = proc_start_time(pid).expect("a live child has a start time");
        // Started after us, and not in the future.
        let ours = proc_start_time(std::process::id()).unwrap();
        assert!(start >= ours, "{start} < {ours}");

        write_status(tmp.path(), "a", pid, start);
        let st = rt.state("a").unwrap().unwrap();
        assert_eq!(st.status, ContainerState::Running);
        assert_eq!(st.pid, Some(pid));

        // Same pid, another start time: a reused pid is not the container.
        write_status(tmp.path(), "b", pid, start + 1);
        let st = rt.state("b").unwrap().unwrap();
        assert_eq!(st.status, ContainerState::Stopped);
        assert_eq!(st.pid, None);

        // Created, not started yet.
        write_status(tmp.path(), "c", pid, start);
        std::fs::write(tmp.path().join("c/exec.fifo"), "").unwrap();
        assert_eq!(
            rt.state("c").unwrap().unwrap().status,
            ContainerState::Created
        );

        child.kill().unwrap();
        // A zombie is not running either.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while proc_start_time(pid).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(proc_start_time(pid), None, "zombie counted as alive");
        assert_eq!(
            rt.state("a").unwrap().unwrap().status,
            ContainerState::Stopped
        );
        child.wait().unwrap();
        assert_eq!(
            rt.state("a").unwrap().unwrap().status,
            ContainerState::Stopped
        );

        // Deleting an unknown container needs no runtime process (the binary is bogus).
        rt.delete("nope").unwrap();
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let tmp = tempfile::tempdir().unwrap();
        let odd = tmp.path().join("a) b (c");
        std::os::unix::fs::symlink("/bin/sleep", &odd).unwrap();
        let mut child = std::process::Command::new(&odd).arg("30").spawn().unwrap();
        // spawn() returns before the child has exec'd: until then it has our name.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let comm = loop {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
            if comm.trim() == "a) b (c" || std::time::Instant::now() > deadline {
                break comm;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        assert_eq!(comm.trim(), "a) b (c");
        let t = proc_start_time(child.id());
        let ours = proc_start_time(std::process::id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(t.is_some_and(|t| t >= ours), "{t:?} vs {ours}");
    }
}
