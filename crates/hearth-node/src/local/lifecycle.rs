//! Workspace lifecycle on this host: create, start, stop, status, and the cleanup of
//! what a running workspace holds.

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hearth_image::Image;
use hearth_runtime::bundle::BundleSpec;

use super::host::resolv_conf;
use super::ops::HostOps;
use super::{image_err, internal, mkdir, Inner, Paths, LEGACY_UPPER};
use crate::{
    clone, Limits, NodeError, Progress, Revision, RunState, WorkspaceId, WorkspaceSpec,
    WorkspaceStatus, ID_RANGE,
};

/// How long PID 1 gets to end its processes on stop before everything is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Records how long each phase of a start took.
struct Phases {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Self {
        Phases {
            last: Instant::now(),
            done: Vec::new(),
        }
    }
    fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.done.push((phase, now - self.last));
        self.last = now;
    }
}

/// What a start has set up so far. Dropped before [`Undo::commit`] (the start failed),
/// it undoes each step in reverse order. Steps that can fail half way (a cgroup made in
/// some hierarchies, a netns without its veth, a container crun created but could not
/// start) are recorded before they run, so their remains go too; every undo is
/// idempotent.
pub(super) struct Undo<'a> {
    host: &'a dyn HostOps,
    id: &'a WorkspaceId,
    done: Vec<Step>,
}

#[derive(Debug)]
enum Step {
    Cgroup,
    Network,
    Rootfs(PathBuf),
    /// The agent's socket: its presence tells `exec` the workspace runs.
    Socket(PathBuf),
    Container,
}

impl<'a> Undo<'a> {
    fn new(host: &'a dyn HostOps, id: &'a WorkspaceId) -> Self {
        Undo {
            host,
            id,
            done: Vec::new(),
        }
    }

    fn push(&mut self, step: Step) {
        self.done.push(step);
    }

    /// The start succeeded: keep everything.
    fn commit(mut self) {
        self.done.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        let id = self.id;
        while let Some(step) = self.done.pop() {
            let res = match &step {
                Step::Container => self.host.delete_container(id),
                Step::Rootfs(p) => self.host.unmount(p),
                Step::Socket(p) => match std::fs::remove_file(p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(NodeError::io("remove", p)(e))
                    }
                    _ => Ok(()),
                },
                Step::Network => self.host.remove_network(id),
                Step::Cgroup => self
                    .host
                    .kill_cgroup(id)
                    .and_then(|()| self.host.remove_cgroup(id)),
            };
            if let Err(e) = res {
                tracing::error!(%id, ?step, "undoing a failed start: {e}");
            }
        }
    }
}

pub(super) fn cgroup_limits(spec: &WorkspaceSpec) -> hearth_cgroups::Limits {
    hearth_cgroups::Limits {
        memory_bytes: spec.limits.memory_bytes,
        pids: spec.limits.pids,
        cpu_weight: spec.limits.cpu_weight,
    }
}

impl Inner {
    /// What a create can be refused for before it starts (see [`NodeApi::check_create`]).
    /// An empty source is a workspace without a repository (a builder).
    pub(super) fn check_create(&self, source: &str, limits: &Limits) -> Result<(), NodeError> {
        if !source.is_empty() {
            clone::validate_source(source)?;
        }
        self.check_disk_size(limits.disk_bytes)?;
        self.check_reserve("create a workspace")
    }

    pub(super) fn create(
        &self,
        spec: &WorkspaceSpec,
        rev: &Revision,
        progress: &Progress,
    ) -> Result<(), NodeError> {
        self.check_create(&spec.source, &spec.limits)?;
        self.images.get(&spec.image).map_err(image_err)?;
        let p = self.paths(&spec.id);
        if p.dir.exists() {
            return Err(NodeError::Conflict(format!(
                "workspace {} already exists on this node",
                spec.id
            )));
        }
        // The network is made now, beside the disk (it is mostly waiting on `ip` and
        // `nft`), so the first start finds it in place as every later one does; the clone
        // waits for it, since a network source is fetched from inside it.
        let (res, net) = std::thread::scope(|s| {
            let net = s.spawn(|| {
                self.host
                    .ensure_network(&spec.id, spec.slot, &spec.egress.deny)
            });
            let res = self.create_files(spec, &p);
            let net = net
                .join()
                .unwrap_or_else(|_| Err(internal("network setup panicked")));
            (res, net)
        });
        let res = res
            .and(net)
            .and_then(|netns| self.clone_source(spec, rev, &p, &netns, progress));
        if let Err(e) = res {
            if let Err(e2) = self.host.remove_network(&spec.id) {
                tracing::error!(id = %spec.id, "network cleanup after failed create: {e2}");
            }
            if let Err(e2) = self
                .unmount_all(&p.dir)
                .and_then(|()| self.remove_files(&spec.id))
            {
                tracing::error!(id = %spec.id, "cleanup after failed create: {e2}");
            }
            return Err(e);
        }
        Ok(())
    }

    /// The workspace's dir, disk and spec.
    fn create_files(&self, spec: &WorkspaceSpec, p: &Paths) -> Result<(), NodeError> {
        mkdir(&p.dir, 0o711)?;
        let base = spec.uid_base();
        self.make_disk(p, spec.limits.disk_bytes)?;
        mkdir(&p.upper, 0o755)?;
        std::os::unix::fs::chown(&p.upper, Some(base), Some(base))
            .map_err(NodeError::io("chown", &p.upper))?;
        mkdir(&p.rootfs, 0o755)?;
        mkdir(&p.bundle, 0o700)?;
        let ws = p.upper.join("workspace");
        mkdir(&ws, 0o755)?;
        std::os::unix::fs::chown(&ws, Some(base), Some(base))
            .map_err(NodeError::io("chown", &ws))?;
        let json = serde_json::to_vec_pretty(spec).map_err(internal)?;
        let spec_file = p.dir.join("spec.json");
        std::fs::write(&spec_file, json).map_err(NodeError::io("write", &spec_file))?;
        Ok(())
    }

    /// The workspace's clone, fetched from inside its network `netns` (its egress policy
    /// and the node's denials apply) unless the source is local.
    fn clone_source(
        &self,
        spec: &WorkspaceSpec,
        rev: &Revision,
        p: &Paths,
        netns: &Path,
        progress: &Progress,
    ) -> Result<(), NodeError> {
        if spec.source.is_empty() {
            return Ok(());
        }
        let jail = self.fetch_jail(&spec.source, Some(netns))?;
        let _ = progress.send(format!("cloning {}", spec.source));
        clone::clone(
            &spec.source,
            rev,
            &clone::dest_for(&p.upper, &spec.source),
            spec.uid_base(),
            spec.uid_base(),
            &crate::clone::GitEnv {
                gitconfig: &self.gitconfig,
                jail: jail.as_ref(),
            },
            progress,
        )
    }

    pub(super) fn start(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        let p = self.paths(&spec.id);
        // Already running: nothing to do (and a running workspace is never migrated).
        if let Some(st) = self.host.container_state(&spec.id)? {
            if st.is_running() {
                return Ok(self.running_status(spec, st.pid));
            }
        }
        // No reserve check here: starting takes no space (a restore checks its own), and
        // the guard freezes the workspace if it then grows while under the reserve.
        self.freezes.forget(&spec.id);
        self.ooms.register(&spec.id, spec.uid_base());
        self.migrate_legacy(spec, &p)?;
        // Local data lost (or the workspace moved here): bring back its latest snapshot.
        if !p.image.exists() && (p.dir.exists() || !self.restore_latest(spec)?) {
            return Err(NodeError::NotFound(format!(
                "workspace {} has no data on this node",
                spec.name
            )));
        }
        self.open_disk(&p)?;
        // Before anything in the workspace can open a placeholder.
        self.ensure_hydration(spec)?;
        // An update recorded but cut short by a crash: finish growing the disk.
        if std::fs::metadata(&p.image).is_ok_and(|m| m.len() < spec.limits.disk_bytes) {
            hearth_disk::grow(&p.image, &p.disk, spec.limits.disk_bytes)?;
        }
        let image = self.images.get(&spec.image).map_err(image_err)?;
        let t0 = Instant::now();
        self.start_inner(spec, &image, &p)?;
        tracing::info!(id = %spec.id, name = spec.name.as_str(), ms = t0.elapsed().as_millis() as u64, "started");
        // What the caller gets back, from one read of the runtime's state file.
        match self.host.container_state(&spec.id)? {
            Some(st) if st.is_running() => {
                self.track_live(&spec.id, st.pid);
                if let Some(cpu) = &self.cpu {
                    cpu.register(&spec.id, &spec.limits);
                }
                if let Some(pid) = st.pid {
                    super::oom::protect_agent(self.host.as_ref(), &spec.id, pid);
                    self.prioritize_agent(&spec.id, pid);
                }
                Ok(self.running_status(spec, st.pid))
            }
            _ => Err(NodeError::Internal(format!(
                "workspace {} stopped right after its agent answered (hearth logs {} shows why)",
                spec.name, spec.name
            ))),
        }
    }

    fn running_status(&self, spec: &WorkspaceSpec, pid: Option<u32>) -> WorkspaceStatus {
        WorkspaceStatus {
            state: RunState::Running,
            pid,
            ip: self.net.address(spec.slot).ok(),
            paused: self.paused_reason(&spec.id),
        }
    }

    /// Sets up the workspace's cgroup, network, root and container, and waits for its
    /// agent. A failure undoes what this start did (see [`Undo`]); the disk stays mounted,
    /// as after a stop.
    pub(super) fn start_inner(
        &self,
        spec: &WorkspaceSpec,
        image: &Image,
        p: &Paths,
    ) -> Result<(), NodeError> {
        let id = &spec.id;
        let host = &*self.host;
        let mut undo = Undo::new(host, id);
        let mut ph = Phases::new();
        undo.push(Step::Cgroup);
        host.create_cgroup(id, &cgroup_limits(spec))?;
        ph.mark("cgroups");
        undo.push(Step::Network);
        // Egress too: before the container exists, so it never runs without its deny rules.
        let netns = host.ensure_network(id, spec.slot, &spec.egress.deny)?;
        ph.mark("network");
        if !host.is_mounted(&p.rootfs)? {
            let layers = self.images.layer_dirs(image);
            // A workspace without a repository is a builder (the control plane makes no
            // other): its nested container storage gets a directory of its own.
            let containers = match spec.source.is_empty() {
                true => {
                    mkdir(&p.containers, 0o700)?;
                    std::os::unix::fs::chown(
                        &p.containers,
                        Some(spec.uid_base()),
                        Some(spec.uid_base()),
                    )
                    .map_err(NodeError::io("chown", &p.containers))?;
                    Some(p.containers.as_path())
                }
                false => None,
            };
            host.mount_rootfs(
                &layers,
                spec.uid_base(),
                &p.upper,
                &p.work,
                &p.rootfs,
                containers,
            )?;
            undo.push(Step::Rootfs(p.rootfs.clone()));
        }
        ph.mark("rootfs");
        let share = self.share.join(id);
        mkdir(&share, 0o711)?;
        let resolv = share.join("resolv.conf");
        std::fs::write(&resolv, resolv_conf()).map_err(NodeError::io("write", &resolv))?;

        // A workspace without a repository (a builder) has only `/workspace` to start in.
        let repo_dir = if spec.source.is_empty() {
            "/workspace".to_string()
        } else {
            format!("/workspace/{}", clone::repo_name(&spec.source))
        };
        let cwd = image
            .config
            .working_dir
            .clone()
            .filter(|d| !d.is_empty() && d != "/")
            .unwrap_or(repo_dir);
        let mut env = image.config.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        env.push(format!(
            "HEARTH_DEFAULT_USER={}",
            image.config.user.clone().unwrap_or_default()
        ));
        env.push(format!("HEARTH_DEFAULT_CWD={cwd}"));
        env.push(format!("HEARTH_WORKSPACE={}", spec.name));
        env.extend(self.priority_env());
        host.write_bundle(
            &p.bundle,
            &BundleSpec {
                hostname: spec.name.clone(),
                rootfs: p.rootfs.clone(),
                uid_base: spec.uid_base(),
                id_range: ID_RANGE,
                netns,
                agent: self.agent.clone(),
                files: vec![(resolv, "/etc/resolv.conf".into())],
                devices_dir: share,
                env,
                nofile_hard: self.nofile_hard,
            },
        )?;
        ph.mark("bundle");

        let _ = std::fs::remove_file(&p.socket);
        let listener = std::os::unix::net::UnixListener::bind(&p.socket)
            .map_err(NodeError::io("bind", &p.socket))?;
        undo.push(Step::Socket(p.socket.clone()));
        std::fs::set_permissions(&p.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(NodeError::io("chmod", &p.socket))?;
        host.delete_container(id)?;
        undo.push(Step::Container);
        // An older node's console file grew without bound; this start's goes to the disk.
        let _ = std::fs::remove_file(&p.legacy_console);
        let console = self
            .consoles
            .start(id, &p.console_fifo, &p.console, self.cfg.console)?;
        let ran = host
            .run_container(id, &p.bundle, listener.as_fd(), console)
            .map_err(|e| {
                // What the runtime printed explains its failure.
                self.consoles.flush(id, Duration::from_millis(200));
                match crate::console::tail_text(&p.console, 2048) {
                    out if out.is_empty() => e,
                    out => NodeError::Internal(format!("{e}; console: {out}")),
                }
            });
        drop(listener);
        ran?;
        ph.mark("runtime");
        host.wait_agent(&p.socket, &p.console)?;
        ph.mark("agent ready");
        undo.commit();
        tracing::debug!(%id, phases = ?ph.done, "start phases");
        if let Ok(mut m) = self.phases.lock() {
            m.insert(id.to_string(), ph.done);
        }
        Ok(())
    }

    pub(super) fn status(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        let p = self.paths(&spec.id);
        if !p.image.exists() && !p.dir.join(LEGACY_UPPER).is_dir() {
            return Ok(WorkspaceStatus {
                state: RunState::Missing,
                pid: None,
                ip: None,
                paused: None,
            });
        }
        match self.host.container_state(&spec.id)? {
            Some(st) if st.is_running() => {
                self.track_live(&spec.id, st.pid);
                Ok(self.running_status(spec, st.pid))
            }
            _ => Ok(WorkspaceStatus {
                state: RunState::Stopped,
                pid: None,
                ip: None,
                paused: None,
            }),
        }
    }

    /// [`Inner::status`] of many, in `specs` order: those whose init is known alive (one
    /// poll over their pidfds) from memory, the rest from state files, in parallel.
    pub(super) fn statuses(
        &self,
        specs: &[WorkspaceSpec],
    ) -> Vec<Result<WorkspaceStatus, NodeError>> {
        let alive = self.live.alive(specs.iter().map(|s| &s.id));
        let unknown: Vec<&WorkspaceSpec> = specs
            .iter()
            .zip(&alive)
            .filter(|(_, a)| a.is_none())
            .map(|(s, _)| s)
            .collect();
        // Each is a few small file reads (the runtime's state file, /proc): no process.
        let mut read = super::reconcile::par_map(&unknown, 4, |s| self.status(s)).into_iter();
        specs
            .iter()
            .zip(alive)
            .map(|(spec, a)| match a {
                Some(pid) => Ok(self.running_status(spec, Some(pid))),
                None => read.next().unwrap_or_else(|| {
                    Err(NodeError::Internal("status read came back short".into()))
                }),
            })
            .collect()
    }

    /// Remembers a running container's init for [`Inner::statuses`], once its state file
    /// confirms the pid again with the pidfd open.
    fn track_live(&self, id: &WorkspaceId, pid: Option<u32>) {
        let Some(pid) = pid else { return };
        self.live.track(id, pid, || {
            matches!(self.host.container_state(id), Ok(Some(st)) if st.is_running() && st.pid == Some(pid))
        });
    }

    pub(super) fn stop(&self, id: &WorkspaceId, keep: bool) -> Result<(), NodeError> {
        if let Some(st) = self.host.container_state(id)? {
            if st.is_running() {
                // A frozen workspace (snapshot in progress, disk reserve, or one cut short
                // by a crash) could not act on TERM; the disk guard leaves it alone now.
                if let Err(e) = self.freezes.clear(&self.cgroups, id, true) {
                    tracing::warn!(%id, "thaw before stop: {e}");
                }
                // PID 1 (the agent) forwards TERM to everything and exits when done.
                if let Err(e) = self.host.signal_container(id, "TERM") {
                    tracing::warn!(%id, "TERM: {e}");
                }
                let deadline = Instant::now() + STOP_GRACE;
                while Instant::now() < deadline {
                    match self.host.container_state(id)? {
                        Some(s) if s.is_running() => std::thread::sleep(Duration::from_millis(20)),
                        _ => break,
                    }
                }
            }
        }
        self.cleanup_runtime(id, keep)
    }

    /// Tears down everything a running workspace holds on the host except its files.
    /// Idempotent; goes on after errors and reports them all.
    ///
    /// `keep` leaves the netns, veth and mounted disk in place for the next start (stop);
    /// remove and stray cleanup drop them too.
    pub(super) fn cleanup_runtime(&self, id: &WorkspaceId, keep: bool) -> Result<(), NodeError> {
        self.live.forget(id);
        if let Some(cpu) = &self.cpu {
            cpu.unregister(id);
        }
        let p = self.paths(id);
        let mut errors = Vec::new();
        let host = &*self.host;
        if !keep {
            // The disk goes: nothing is left to fill (nor for a dead node's keeper).
            self.hydrations.stop(id);
            super::hydrate::release_keeper(&p.dir.join(super::hydrate::KEEPER_FILE));
        }
        if let Err(e) = host.delete_container(id) {
            errors.push(e.to_string());
        }
        if let Err(e) = host.kill_cgroup(id) {
            errors.push(e.to_string());
        }
        // Its processes are gone: the pipe ends, and the files close before the disk
        // may be unmounted.
        self.consoles.close(id, Duration::from_secs(2));
        match host.mounts_under(&p.dir) {
            Ok(mut ms) => {
                ms.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
                for m in ms.into_iter().filter(|m| !keep || *m != p.disk) {
                    if let Err(e) = host.unmount(&m) {
                        errors.push(e.to_string());
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        if !keep {
            if let Err(e) = host.remove_network(id) {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = host.remove_cgroup(id) {
            errors.push(e.to_string());
        }
        let _ = std::fs::remove_file(&p.socket);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NodeError::Internal(errors.join("; ")))
        }
    }

    /// Deletes a workspace's files; refuses while anything is mounted below it.
    pub(super) fn remove_files(&self, id: &WorkspaceId) -> Result<(), NodeError> {
        self.ooms.forget(id);
        let p = self.paths(id);
        let mounted = self.host.mounts_under(&p.dir)?;
        if !mounted.is_empty() {
            return Err(NodeError::Internal(format!(
                "refusing to delete {}: still mounted at {}",
                p.dir.display(),
                mounted[0].display()
            )));
        }
        if let Err(e) = std::fs::remove_dir_all(self.share.join(id)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%id, "removing its shared files: {e}");
            }
        }
        match std::fs::remove_dir_all(&p.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NodeError::io("remove", &p.dir)(e)),
        }
    }
}
