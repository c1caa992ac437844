//! [`LocalNode`]: the node running in this process, on this host.

use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_cgroups::Cgroups;
use hearth_image::{Image, ImageError, ImageStore};
use hearth_net::{NetConfig, Network};
use hearth_runtime::bundle::{self, BundleSpec};
use hearth_runtime::mount;
use hearth_runtime::oci::OciRuntime;

use crate::clone;

mod guard;
mod inspect;
mod pull;
mod snapshot;
use crate::{
    ExecRequest, ExecSession, ImageSummary, NodeApi, NodeConfig, NodeError, Progress, RunState,
    WorkspaceSpec, WorkspaceStatus, ID_RANGE,
};

/// How long PID 1 gets to end its processes on stop before everything is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a start may take until the agent answers.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const LOG_MAX: usize = 1 << 20;
/// Where a workspace's upper dir lived before workspaces had their own disk.
const LEGACY_UPPER: &str = "upper";

#[derive(Clone)]
pub struct LocalNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNode")
            .field("data_dir", &self.inner.cfg.data_dir)
            .finish()
    }
}

struct Inner {
    cfg: NodeConfig,
    images: ImageStore,
    cgroups: Cgroups,
    net: Network,
    runtime: OciRuntime,
    ws_root: PathBuf,
    /// A node-wide tmpfs holding what is bind-mounted into workspaces (the agent, and
    /// per workspace its resolv.conf and device nodes). Bind mounts show their source's
    /// path within its filesystem in the workspace's mountinfo: from here that names no
    /// host path.
    share: PathBuf,
    agent: PathBuf,
    gitconfig: PathBuf,
    /// Hard RLIMIT_NOFILE of workspaces.
    nofile_hard: u64,
    /// Per-phase durations of each workspace's last start (for `hearth bench`).
    phases: std::sync::Mutex<std::collections::HashMap<String, Vec<(&'static str, Duration)>>>,
    snap: snapshot::SnapState,
    /// Why workspaces are frozen (snapshot, disk reserve).
    freezes: guard::Freezes,
    guard: guard::DiskGuard,
}

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

fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(e.to_string())
}

fn disk_err(e: hearth_disk::DiskError) -> NodeError {
    NodeError::Internal(format!("workspace disk: {e}"))
}

fn image_err(e: ImageError) -> NodeError {
    match e {
        ImageError::NotFound(r) => NodeError::NotFound(format!(
            "image {r} not found (hearth image ls lists loaded images)"
        )),
        ImageError::Ambiguous { .. } | ImageError::InvalidName { .. } => {
            NodeError::Invalid(e.to_string())
        }
        ImageError::Invalid { .. }
        | ImageError::DigestMismatch { .. }
        | ImageError::SizeMismatch { .. }
        | ImageError::Entry { .. } => NodeError::Invalid(e.to_string()),
        other => NodeError::Internal(other.to_string()),
    }
}

fn summary(i: &Image) -> ImageSummary {
    ImageSummary {
        id: i.id.clone(),
        names: i.names.clone(),
        size: i.size,
        layers: i.diff_ids.len(),
        loaded_at: i.loaded_at.clone(),
    }
}

fn valid_id(id: &str) -> Result<(), NodeError> {
    if id.is_empty()
        || id.len() > 32
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(NodeError::Invalid(format!("invalid workspace id {id:?}")));
    }
    Ok(())
}

fn mkdir(path: &Path, mode: u32) -> Result<(), NodeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| NodeError::Internal(format!("mkdir {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| NodeError::Internal(format!("chmod {}: {e}", path.display())))
}

impl LocalNode {
    /// Opens (or initialises) the node's state under `cfg.data_dir` and sets up the
    /// host network. Running workspaces are left alone.
    pub async fn open(cfg: NodeConfig) -> Result<LocalNode, NodeError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(cfg))
            .await
            .map_err(internal)?
    }

    fn open_blocking(cfg: NodeConfig) -> Result<LocalNode, NodeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(NodeError::Invalid("hearth node must run as root".into()));
        }
        let data = &cfg.data_dir;
        // 0711: workspace containers (unprivileged host uids) must traverse to their rootfs.
        mkdir(data, 0o711)?;
        let ws_root = data.join("workspaces");
        mkdir(&ws_root, 0o711)?;
        mkdir(&data.join("bin"), 0o755)?;
        mkdir(&data.join("run"), 0o700)?;
        let images = ImageStore::open(&data.join("images")).map_err(image_err)?;
        // Checks that can fail on bad input come before anything touches host-wide state
        // (cgroup parents, the bridge, firewall chains), so a refused start leaks nothing.
        let runtime =
            OciRuntime::new(cfg.runtime.as_deref(), &data.join("run/oci")).map_err(internal)?;
        let share = data.join("share");
        mount_share(&share)?;
        let agent = share.join("hearth-agent");
        // Workspaces bind the share's copy; the one in bin/ outlives a reboot, for an
        // offline teardown that was given no agent.
        install_agent(&cfg.agent_binary, &[&data.join("bin/hearth-agent"), &agent])?;
        let net = Network::new(NetConfig {
            bridge: cfg.bridge.clone(),
            subnet: cfg.subnet.clone(),
            egress: cfg.egress.clone(),
        })
        .map_err(|e| NodeError::Invalid(e.to_string()))?;
        hearth_disk::check_tools().map_err(|e| NodeError::Invalid(e.to_string()))?;
        let guard = guard::DiskGuard::new(data, cfg.disk_reserve)?;
        let cgroups = Cgroups::open(&cfg.cgroup_parent).map_err(internal)?;
        lift_file_max();
        let nofile_hard = raise_nofile_hard();
        net.ensure_host().map_err(internal)?;
        let gitconfig = data.join("gitconfig");
        // Global config for clones: they run as a different uid than the source's owner,
        // and must never use command-running transports.
        std::fs::write(
            &gitconfig,
            "[safe]\n\tdirectory = *\n[protocol \"ext\"]\n\tallow = never\n[core]\n\thooksPath = /dev/null\n",
        )
        .map_err(|e| NodeError::Internal(format!("write {}: {e}", gitconfig.display())))?;
        std::fs::set_permissions(&gitconfig, std::fs::Permissions::from_mode(0o644))
            .map_err(internal)?;
        tracing::info!(runtime = %runtime.binary().display(), cgroups = ?cgroups.version(), disk_reserve = guard.reserve, "node ready");
        let inner = Arc::new(Inner {
            cfg,
            images,
            cgroups,
            net,
            runtime,
            ws_root,
            share,
            agent,
            gitconfig,
            nofile_hard,
            phases: Default::default(),
            snap: Default::default(),
            freezes: Default::default(),
            guard,
        });
        guard::spawn(Arc::downgrade(&inner));
        Ok(LocalNode { inner })
    }

    /// How long the last snapshot of workspace `id` kept it frozen.
    pub fn last_snapshot_pause(&self, id: &str) -> Option<Duration> {
        self.inner.snap.pauses.lock().ok()?.get(id).copied()
    }

    /// Phases of the last start of workspace `id`, in order.
    pub fn start_phases(&self, id: &str) -> Vec<(&'static str, Duration)> {
        self.inner
            .phases
            .lock()
            .map(|m| m.get(id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(internal)?
    }
}

fn cgroup_limits(spec: &WorkspaceSpec) -> hearth_cgroups::Limits {
    hearth_cgroups::Limits {
        memory_bytes: spec.limits.memory_bytes,
        pids: spec.limits.pids,
        cpu_weight: spec.limits.cpu_weight,
    }
}

/// Raises fs.file-max to the kernel's maximum (as systemd does at boot). The default,
/// about RAM/10 KiB, is one table for the whole host: a workspace opening files within
/// its memory limit could fill it, and then every other workspace gets ENFILE. Lifted,
/// open files are bounded per workspace by its memory cgroup, which is charged for them.
fn lift_file_max() {
    const PATH: &str = "/proc/sys/fs/file-max";
    const MAX: u64 = i64::MAX as u64;
    match std::fs::read_to_string(PATH).map(|s| s.trim().parse::<u64>()) {
        Ok(Ok(v)) if v >= MAX => {}
        Ok(Ok(v)) => match std::fs::write(PATH, MAX.to_string()) {
            Ok(()) => tracing::info!(from = v, "raised fs.file-max"),
            Err(e) => tracing::warn!("cannot raise fs.file-max from {v}: {e}"),
        },
        other => tracing::warn!("cannot read fs.file-max: {other:?}"),
    }
}

/// Workspaces get `NOFILE_HARD` as their hard limit, but the runtime sets it from inside
/// their user namespace, where it cannot go above what it inherited: raise ours first.
/// Returns the hard limit workspaces can have (lower where we lack CAP_SYS_RESOURCE).
fn raise_nofile_hard() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = hearth_runtime::bundle::NOFILE_HARD;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return hearth_runtime::bundle::NOFILE_SOFT;
    };
    if hard >= want {
        return want;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, soft.min(want), want) {
        Ok(()) => want,
        Err(e) => {
            tracing::warn!("cannot raise RLIMIT_NOFILE to {want} ({e}): workspaces get {hard}");
            hard
        }
    }
}

/// Copies the agent next to the data so a rebuild of the source tree never changes a
/// running workspace's binary underneath it (rename gives a new inode).
fn install_agent(src: &Path, dsts: &[&Path]) -> Result<(), NodeError> {
    let bytes = std::fs::read(src).map_err(|e| {
        NodeError::Invalid(format!(
            "agent binary {}: {e} (build it with scripts/build.sh or pass --agent)",
            src.display()
        ))
    })?;
    if has_interpreter(&bytes) {
        return Err(NodeError::Invalid(format!(
            "agent binary {} is dynamically linked and would not run in every image: \
             build it with scripts/build.sh (static) or pass --agent",
            src.display()
        )));
    }
    for dst in dsts {
        if std::fs::read(dst).ok().as_deref() == Some(&bytes[..]) {
            continue;
        }
        // A new inode: running workspaces keep executing the old one.
        let tmp = dst.with_extension("tmp");
        std::fs::write(&tmp, &bytes)
            .map_err(|e| NodeError::Internal(format!("write {}: {e}", tmp.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(internal)?;
        std::fs::rename(&tmp, dst)
            .map_err(|e| NodeError::Internal(format!("install {}: {e}", dst.display())))?;
    }
    Ok(())
}

/// Mounts the node's share tmpfs at `dir` unless it is there (it outlives node restarts:
/// running workspaces keep using its files). Not `nodev`: device nodes are bound in from
/// it; `nosuid`, small, and 0711 so workspace uids reach only the names they are given.
fn mount_share(dir: &Path) -> Result<(), NodeError> {
    mkdir(dir, 0o711)?;
    if mount::is_mounted(dir).map_err(internal)? {
        return Ok(());
    }
    nix::mount::mount(
        Some("hearth-share"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID,
        Some("mode=0711,size=64m"),
    )
    .map_err(|e| NodeError::Internal(format!("mount tmpfs on {}: {e}", dir.display())))
}

/// Whether an ELF64 executable asks for a dynamic loader (a PT_INTERP program header).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .and_then(|v| usize::try_from(v).ok())
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).any(|i| {
        let off = phoff.saturating_add(i.saturating_mul(phentsize));
        elf.get(off..off + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            == Some(PT_INTERP)
    })
}

struct Paths {
    dir: PathBuf,
    /// The workspace's disk: a sparse btrfs image, the only place its writes go.
    image: PathBuf,
    /// Where the disk is mounted (while the workspace has local data).
    disk: PathBuf,
    /// The subvolume holding `upper` and `work`: overlay renames from work into upper,
    /// which fails across subvolumes, and snapshots copy this one.
    vol: PathBuf,
    /// The overlay's upper dir (`/workspace` included).
    upper: PathBuf,
    work: PathBuf,
    rootfs: PathBuf,
    bundle: PathBuf,
    socket: PathBuf,
    console: PathBuf,
}

impl Inner {
    fn paths(&self, id: &str) -> Paths {
        self.paths_in(&self.ws_root.join(id))
    }

    /// The layout of a workspace dir at `dir` (the real one, or a restore being built).
    fn paths_in(&self, dir: &Path) -> Paths {
        let dir = dir.to_path_buf();
        Paths {
            image: dir.join("disk.img"),
            disk: dir.join("disk"),
            vol: dir.join("disk/data"),
            upper: dir.join("disk/data/upper"),
            work: dir.join("disk/data/work"),
            rootfs: dir.join("rootfs"),
            bundle: dir.join("bundle"),
            socket: dir.join("agent.sock"),
            console: dir.join("console.log"),
            dir,
        }
    }

    fn create(&self, spec: &WorkspaceSpec, progress: &Progress) -> Result<(), NodeError> {
        valid_id(&spec.id)?;
        clone::validate_source(&spec.source)?;
        self.images.get(&spec.image).map_err(image_err)?;
        self.check_reserve("create a workspace")?;
        let p = self.paths(&spec.id);
        if p.dir.exists() {
            return Err(NodeError::Conflict(format!(
                "workspace {} already exists on this node",
                spec.id
            )));
        }
        let res = (|| {
            mkdir(&p.dir, 0o711)?;
            let base = spec.uid_base();
            self.make_disk(&p, spec.limits.disk_bytes)?;
            mkdir(&p.upper, 0o755)?;
            std::os::unix::fs::chown(&p.upper, Some(base), Some(base)).map_err(internal)?;
            mkdir(&p.rootfs, 0o755)?;
            mkdir(&p.bundle, 0o700)?;
            let ws = p.upper.join("workspace");
            mkdir(&ws, 0o755)?;
            std::os::unix::fs::chown(&ws, Some(base), Some(base)).map_err(internal)?;
            let json = serde_json::to_vec_pretty(spec).map_err(internal)?;
            std::fs::write(p.dir.join("spec.json"), json).map_err(internal)?;
            let _ = progress.send(format!("cloning {}", spec.source));
            clone::clone(
                &spec.source,
                &clone::dest_for(&p.upper, &spec.source),
                base,
                base,
                &self.gitconfig,
                progress,
            )
        })();
        if let Err(e) = res {
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

    /// Makes and mounts a new disk image at `p.image` / `p.disk`, with the overlay's work
    /// dir (which must share the upper's filesystem).
    fn make_disk(&self, p: &Paths, size: u64) -> Result<(), NodeError> {
        hearth_disk::create(&p.image, size).map_err(|e| match e {
            hearth_disk::DiskError::Size { .. } => NodeError::Invalid(e.to_string()),
            e => disk_err(e),
        })?;
        mkdir(&p.disk, 0o700)?;
        hearth_disk::mount(&p.image, &p.disk).map_err(disk_err)?;
        hearth_disk::create_subvolume(&p.disk, "data").map_err(disk_err)?;
        mkdir(&p.work, 0o700)
    }

    /// Moves the files of a workspace made before workspaces had disks (its upper dir
    /// directly in the workspace dir) onto a new disk. The old dir is kept, renamed, until
    /// the operator deletes it: nothing local is deleted by an upgrade.
    fn migrate_legacy(&self, spec: &WorkspaceSpec, p: &Paths) -> Result<(), NodeError> {
        let legacy = p.dir.join(LEGACY_UPPER);
        if p.image.exists() || !legacy.is_dir() {
            return Ok(());
        }
        if mount::is_mounted(&p.rootfs).map_err(internal)? {
            self.unmount_all(&p.rootfs)?;
        }
        self.check_reserve("move the workspace onto its own disk")?;
        tracing::info!(id = %spec.id, "moving the workspace's files onto its own disk");
        let res = (|| {
            self.make_disk(p, spec.limits.disk_bytes)?;
            mkdir(&p.upper, 0o755)?;
            // cp -a keeps owners, modes, times, hard links, device nodes (overlay
            // whiteouts) and xattrs (opaque markers); run as root it fails loudly on any.
            let out = std::process::Command::new("cp")
                .arg("-a")
                .arg("--no-target-directory")
                .arg(&legacy)
                .arg(&p.upper)
                .output()
                .map_err(|e| NodeError::Internal(format!("run cp: {e}")))?;
            if !out.status.success() {
                return Err(NodeError::Internal(format!(
                    "copying {} onto the workspace disk: {}",
                    legacy.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let fs = std::fs::File::open(&p.upper).map_err(internal)?;
            rustix::fs::syncfs(&fs).map_err(internal)
        })();
        if let Err(e) = res {
            // Back to the old layout, untouched.
            if let Err(e2) = self.unmount_all(&p.disk).and_then(|()| {
                let _ = std::fs::remove_dir(&p.disk);
                std::fs::remove_file(&p.image).map_err(internal)
            }) {
                tracing::error!(id = %spec.id, "undoing a failed disk migration: {e2}");
            }
            return Err(e);
        }
        let kept = p.dir.join("upper.pre-disk");
        std::fs::rename(&legacy, &kept).map_err(internal)?;
        let _ = std::fs::remove_dir_all(p.dir.join("work"));
        tracing::warn!(id = %spec.id, kept = %kept.display(), "workspace moved onto its disk; the old copy can be deleted");
        Ok(())
    }

    /// Mounts the workspace's disk if it is not (after a host reboot or a `rm` cut short).
    fn open_disk(&self, p: &Paths) -> Result<(), NodeError> {
        if !mount::is_mounted(&p.disk).map_err(internal)? {
            hearth_disk::mount(&p.image, &p.disk).map_err(disk_err)?;
        } else if let Err(e) = hearth_disk::limit_dirty(&p.disk, hearth_disk::DIRTY_MAX) {
            // Mounted by an older node; the limit only bounds what the reserve must hold.
            tracing::warn!(disk = %p.disk.display(), "cannot bound its dirty page cache: {e}");
        }
        if !p.upper.is_dir() {
            return Err(NodeError::Internal(format!(
                "disk {} has no upper dir",
                p.image.display()
            )));
        }
        Ok(())
    }

    /// Unmounts everything below `dir`, deepest first.
    fn unmount_all(&self, dir: &Path) -> Result<(), NodeError> {
        let mut ms = mount::mounts_under(dir).map_err(internal)?;
        ms.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in ms {
            mount::unmount(&m).map_err(internal)?;
        }
        Ok(())
    }

    fn start(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        valid_id(&spec.id)?;
        let p = self.paths(&spec.id);
        // Already running: nothing to do (and a running workspace is never migrated).
        if let Some(st) = self.runtime.state(&spec.id).map_err(internal)? {
            if st.status == "running" {
                return self.status(spec);
            }
        }
        // No reserve check here: starting takes no space (a restore checks its own), and
        // the guard freezes the workspace if it then grows while under the reserve.
        self.freezes.forget(&spec.id);
        self.migrate_legacy(spec, &p)?;
        // Local data lost (or the workspace moved here): bring back its latest snapshot.
        if !p.image.exists() && (p.dir.exists() || !self.restore_latest(spec)?) {
            return Err(NodeError::NotFound(format!(
                "workspace {} has no data on this node",
                spec.name
            )));
        }
        self.open_disk(&p)?;
        // An update recorded but cut short by a crash: finish growing the disk.
        if std::fs::metadata(&p.image).is_ok_and(|m| m.len() < spec.limits.disk_bytes) {
            hearth_disk::grow(&p.image, &p.disk, spec.limits.disk_bytes).map_err(disk_err)?;
        }
        let image = self.images.get(&spec.image).map_err(image_err)?;
        let t0 = Instant::now();
        match self.start_inner(spec, &image, &p) {
            Ok(()) => {
                tracing::info!(id = %spec.id, name = %spec.name, ms = t0.elapsed().as_millis() as u64, "started");
                self.status(spec)
            }
            Err(e) => {
                if let Err(e2) = self.cleanup_runtime(&spec.id, false) {
                    tracing::error!(id = %spec.id, "cleanup after failed start: {e2}");
                }
                Err(e)
            }
        }
    }

    fn start_inner(&self, spec: &WorkspaceSpec, image: &Image, p: &Paths) -> Result<(), NodeError> {
        let id = &spec.id;
        let mut ph = Phases::new();
        self.cgroups
            .create(id, &cgroup_limits(spec))
            .map_err(internal)?;
        ph.mark("cgroups");
        let wnet = self.net.ensure(id, spec.slot).map_err(internal)?;
        // Before the container exists, so it never runs without its deny rules.
        self.net
            .apply_egress(id, spec.slot, &spec.egress.deny)
            .map_err(internal)?;
        ph.mark("network");
        if !mount::is_mounted(&p.rootfs).map_err(internal)? {
            let ns =
                hearth_runtime::userns::userns_fd(spec.uid_base(), ID_RANGE).map_err(internal)?;
            let layers = self.images.layer_dirs(image);
            mount::mount_overlay(&layers, &ns, &p.upper, &p.work, &p.rootfs).map_err(internal)?;
        }
        ph.mark("rootfs");
        let share = self.share.join(id);
        mkdir(&share, 0o711)?;
        let resolv = share.join("resolv.conf");
        std::fs::write(&resolv, resolv_conf()).map_err(internal)?;

        let repo_dir = format!("/workspace/{}", clone::repo_name(&spec.source));
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
        bundle::write(
            &p.bundle,
            &BundleSpec {
                hostname: spec.name.clone(),
                rootfs: p.rootfs.clone(),
                uid_base: spec.uid_base(),
                id_range: ID_RANGE,
                netns: wnet.netns_path.clone(),
                agent: self.agent.clone(),
                files: vec![(resolv, "/etc/resolv.conf".into())],
                devices_dir: share,
                env,
                nofile_hard: self.nofile_hard,
            },
        )
        .map_err(internal)?;
        ph.mark("bundle");

        let _ = std::fs::remove_file(&p.socket);
        let listener = std::os::unix::net::UnixListener::bind(&p.socket)
            .map_err(|e| NodeError::Internal(format!("bind {}: {e}", p.socket.display())))?;
        std::fs::set_permissions(&p.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(internal)?;
        self.runtime.delete(id).map_err(internal)?;
        self.runtime
            .run_detached(
                id,
                &p.bundle,
                listener.as_fd(),
                &p.console,
                &self.cgroups.procs_files(id),
            )
            .map_err(internal)?;
        drop(listener);
        ph.mark("runtime");
        wait_ready(&p.socket, &p.console)?;
        ph.mark("agent ready");
        tracing::debug!(%id, phases = ?ph.done, "start phases");
        if let Ok(mut m) = self.phases.lock() {
            m.insert(id.clone(), ph.done);
        }
        Ok(())
    }

    /// Applies `spec.limits`: cgroup limits first (a running workspace), then the disk
    /// grows to the asked size. Never shrinks: a smaller size than the disk has (the
    /// database behind after a crash) keeps the disk. Growing to the current size again
    /// finishes a resize a crash cut short. A workspace with no local disk (its data is
    /// only in the store) gets the size at its restore.
    fn set_limits(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        valid_id(&spec.id)?;
        let p = self.paths(&spec.id);
        if self.status(spec)?.state == RunState::Running {
            self.set_cgroup_limits(spec)?;
        }
        let len = match std::fs::metadata(&p.image) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(internal(format!("stat {}: {e}", p.image.display()))),
        };
        let want = spec.limits.disk_bytes;
        if want >= len {
            self.open_disk(&p)?;
            hearth_disk::grow(&p.image, &p.disk, want).map_err(disk_err)?;
            if want > len {
                tracing::info!(id = %spec.id, from = len, to = want, "disk grown");
            }
        }
        Ok(())
    }

    /// New cgroup limits for a running workspace. Memory is never set below what the
    /// workspace uses now (file cache included): on cgroup v2 that would OOM-kill inside
    /// rather than fail, and its PID 1 could be the victim.
    fn set_cgroup_limits(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let want = spec.limits.memory_bytes;
        if want > 0 {
            let used = self
                .cgroups
                .stats(&spec.id)
                .map_err(internal)?
                .memory_bytes
                .unwrap_or(0);
            if used > want {
                return Err(NodeError::Conflict(format!(
                    "workspace {} uses {used} bytes of memory now (file cache included), more \
                     than {want}: pick at least that, or lower it while the workspace is stopped",
                    spec.name
                )));
            }
        }
        self.cgroups
            .set_limits(&spec.id, &cgroup_limits(spec))
            .map_err(|e| match e {
                // v1 refuses a memory limit below what it cannot reclaim.
                hearth_cgroups::CgroupError::Io { ref source, .. }
                    if source.raw_os_error() == Some(libc::EBUSY) =>
                {
                    NodeError::Conflict(format!(
                        "workspace {} uses more memory than {want} bytes and the kernel could \
                         not reclaim it: pick more, or lower it while the workspace is stopped",
                        spec.name
                    ))
                }
                e => internal(e),
            })
    }

    fn status(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        let p = self.paths(&spec.id);
        if !p.image.exists() && !p.dir.join(LEGACY_UPPER).is_dir() {
            return Ok(WorkspaceStatus {
                state: RunState::Missing,
                pid: None,
                ip: None,
                paused: None,
            });
        }
        match self.runtime.state(&spec.id).map_err(internal)? {
            Some(st) if st.status == "running" => Ok(WorkspaceStatus {
                state: RunState::Running,
                pid: st.pid,
                ip: self.net.address(spec.slot).ok(),
                paused: self.paused_reason(&spec.id),
            }),
            _ => Ok(WorkspaceStatus {
                state: RunState::Stopped,
                pid: None,
                ip: None,
                paused: None,
            }),
        }
    }

    fn stop(&self, id: &str, keep: bool) -> Result<(), NodeError> {
        valid_id(id)?;
        if let Some(st) = self.runtime.state(id).map_err(internal)? {
            if st.status == "running" {
                // A frozen workspace (snapshot in progress, disk reserve, or one cut short
                // by a crash) could not act on TERM; the disk guard leaves it alone now.
                if let Err(e) = self.freezes.clear(&self.cgroups, id, true) {
                    tracing::warn!(%id, "thaw before stop: {e}");
                }
                // PID 1 (the agent) forwards TERM to everything and exits when done.
                if let Err(e) = self.runtime.kill(id, "TERM") {
                    tracing::warn!(%id, "TERM: {e}");
                }
                let deadline = Instant::now() + STOP_GRACE;
                while Instant::now() < deadline {
                    match self.runtime.state(id).map_err(internal)? {
                        Some(s) if s.status == "running" => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
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
    fn cleanup_runtime(&self, id: &str, keep: bool) -> Result<(), NodeError> {
        let p = self.paths(id);
        let mut errors = Vec::new();
        if let Err(e) = self.runtime.delete(id) {
            errors.push(e.to_string());
        }
        if self
            .cgroups
            .list()
            .map(|l| l.iter().any(|g| g == id))
            .unwrap_or(true)
        {
            if let Err(e) = self.cgroups.kill_all(id) {
                errors.push(e.to_string());
            }
        }
        match mount::mounts_under(&p.dir) {
            Ok(mut ms) => {
                ms.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
                for m in ms.into_iter().filter(|m| !keep || *m != p.disk) {
                    if let Err(e) = mount::unmount(&m) {
                        errors.push(e.to_string());
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        if !keep {
            if let Err(e) = self.net.teardown(id) {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = self.cgroups.remove(id) {
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
    fn remove_files(&self, id: &str) -> Result<(), NodeError> {
        valid_id(id)?;
        let p = self.paths(id);
        let mounted = mount::mounts_under(&p.dir).map_err(internal)?;
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
            Err(e) => Err(NodeError::Internal(format!(
                "remove {}: {e}",
                p.dir.display()
            ))),
        }
    }

    fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(String, WorkspaceStatus)>, NodeError> {
        let mut out = Vec::new();
        let known_ids: std::collections::HashSet<&str> =
            known.iter().map(|s| s.id.as_str()).collect();
        for spec in known {
            if valid_id(&spec.id).is_err() {
                continue;
            }
            let st = self.status(spec)?;
            let p = self.paths(&spec.id);
            if st.state != RunState::Missing && self.open_disk(&p).is_ok() {
                self.drop_stale_views(&p);
            }
            if st.state == RunState::Running {
                // A crash mid-snapshot leaves the workspace frozen; nothing else thaws it.
                // (The disk guard freezes it again if it grows while under the reserve.)
                if let Err(e) = self.freezes.clear(&self.cgroups, &spec.id, false) {
                    tracing::warn!(id = %spec.id, "reconcile thaw: {e}");
                }
                // The kernel keeps the rules across our restarts; this repairs a policy
                // changed while we were down or rules someone flushed.
                if let Err(e) = self
                    .net
                    .apply_egress(&spec.id, spec.slot, &spec.egress.deny)
                {
                    tracing::warn!(id = %spec.id, "reconcile egress: {e}");
                }
            } else {
                // A crash mid-start or mid-stop leaves mounts, netns or cgroups: clear them.
                if let Err(e) = self.cleanup_runtime(&spec.id, true) {
                    tracing::warn!(id = %spec.id, "reconcile cleanup: {e}");
                }
            }
            out.push((spec.id.clone(), st));
        }
        // Resources of workspaces the control plane no longer knows.
        let mut strays: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        strays.extend(self.runtime.list().unwrap_or_default());
        strays.extend(self.cgroups.list().unwrap_or_default());
        strays.extend(self.net.list().unwrap_or_default());
        if let Ok(rd) = std::fs::read_dir(&self.ws_root) {
            for e in rd.flatten() {
                let Some(n) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if n.starts_with(".restore-") {
                    // A restore cut short by a crash: its snapshot is still in the store,
                    // so the partial copy holds nothing that exists only here.
                    if let Err(err) = self
                        .unmount_all(&e.path())
                        .and_then(|()| std::fs::remove_dir_all(e.path()).map_err(internal))
                    {
                        tracing::warn!(dir = %e.path().display(), "removing partial restore: {err}");
                    }
                    continue;
                }
                strays.insert(n);
            }
        }
        for id in strays {
            // Known, or the truncated veth name of a known one.
            if known_ids.iter().any(|k| k.starts_with(id.as_str())) || valid_id(&id).is_err() {
                continue;
            }
            tracing::warn!(%id, "cleaning up resources of an unknown workspace");
            if let Err(e) = self.cleanup_runtime(&id, false) {
                tracing::warn!(%id, "stray cleanup: {e}");
            }
            // Its files stay: deleting data needs a record that says it is garbage.
        }
        Ok(out)
    }
}

fn resolv_conf() -> String {
    for f in ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"] {
        if let Ok(s) = std::fs::read_to_string(f) {
            let usable: Vec<&str> = s
                .lines()
                .filter(|l| {
                    !l.trim_start().starts_with("nameserver 127.") && !l.contains("nameserver ::1")
                })
                .collect();
            if usable
                .iter()
                .any(|l| l.trim_start().starts_with("nameserver"))
            {
                return usable.join("\n") + "\n";
            }
        }
    }
    "nameserver 1.1.1.1\n".into()
}

/// Polls the agent until it answers a ping; its console tail explains a failure.
fn wait_ready(socket: &Path, console: &Path) -> Result<(), NodeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(internal)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut delay = Duration::from_micros(200);
    loop {
        match rt.block_on(hearth_proto::client::ping(socket)) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(NodeError::Internal(format!(
                    "workspace agent did not become ready: {e}; console: {}",
                    hearth_runtime::oci::tail(console, 1024).trim()
                )))
            }
            Err(_) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(20));
            }
        }
    }
}

#[async_trait::async_trait]
impl NodeApi for LocalNode {
    async fn load_image(
        &self,
        path: PathBuf,
        name: Option<String>,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        self.blocking(move |i| {
            i.check_reserve("load an image")?;
            let mut cb = |s: &str| {
                let _ = progress.send(s.to_string());
            };
            i.images
                .load(&path, name.as_deref(), &mut cb)
                .map(|img| summary(&img))
                .map_err(image_err)
        })
        .await
    }

    async fn pull_image(
        &self,
        reference: &str,
        auth: Option<crate::RegistryAuth>,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        let r = reference.to_string();
        self.blocking(move |i| pull::pull(i, &r, auth, &progress))
            .await
    }

    async fn images(&self) -> Result<Vec<ImageSummary>, NodeError> {
        self.blocking(|i| {
            Ok(i.images
                .list()
                .map_err(image_err)?
                .iter()
                .map(summary)
                .collect())
        })
        .await
    }

    async fn resolve_image(&self, reference: &str) -> Result<ImageSummary, NodeError> {
        let r = reference.to_string();
        self.blocking(move |i| i.images.get(&r).map(|x| summary(&x)).map_err(image_err))
            .await
    }

    async fn remove_image(&self, reference: &str, in_use: &[String]) -> Result<(), NodeError> {
        let r = reference.to_string();
        let in_use = in_use.to_vec();
        self.blocking(move |i| {
            let img = i.images.get(&r).map_err(image_err)?;
            if in_use.contains(&img.id) {
                return Err(NodeError::Conflict(format!(
                    "image {r} is used by a workspace; remove the workspace first"
                )));
            }
            i.images.remove(&img.id).map(|_| ()).map_err(image_err)
        })
        .await
    }

    async fn create(&self, spec: &WorkspaceSpec, progress: Progress) -> Result<(), NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.create(&spec, &progress)).await
    }

    async fn start(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.start(&spec)).await
    }

    async fn stop(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let id = spec.id.clone();
        self.blocking(move |i| i.stop(&id, true)).await
    }

    async fn remove(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let id = spec.id.clone();
        self.blocking(move |i| {
            i.stop(&id, false)?;
            i.remove_files(&id)
        })
        .await
    }

    async fn status(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.status(&spec)).await
    }

    async fn set_egress(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| {
            valid_id(&spec.id)?;
            if !i.net.has_network(&spec.id) {
                return Ok(());
            }
            i.net
                .apply_egress(&spec.id, spec.slot, &spec.egress.deny)
                .map_err(|e| match e {
                    hearth_net::NetError::TooManyEgressRules { .. }
                    | hearth_net::NetError::InvalidEgressRule { .. } => {
                        NodeError::Invalid(e.to_string())
                    }
                    other => internal(other),
                })?;
            tracing::info!(id = %spec.id, name = %spec.name, rules = spec.egress.deny.len(), "egress policy set");
            Ok(())
        })
        .await
    }

    async fn set_limits(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.set_limits(&spec)).await
    }

    async fn inspect(&self, spec: &WorkspaceSpec) -> Result<crate::WorkspaceDetails, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| inspect::inspect(i, &spec)).await
    }

    async fn exec(&self, spec: &WorkspaceSpec, req: ExecRequest) -> Result<ExecSession, NodeError> {
        valid_id(&spec.id)?;
        if req.argv.is_empty() {
            return Err(NodeError::Invalid("no command given".into()));
        }
        let socket = self.inner.paths(&spec.id).socket;
        if !socket.exists() {
            return Err(NodeError::Conflict(format!(
                "workspace {} is not running (hearth start {})",
                spec.name, spec.name
            )));
        }
        hearth_proto::client::exec(&socket, &req)
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::Other {
                    NodeError::Invalid(e.to_string())
                } else {
                    NodeError::Internal(format!("workspace {} agent: {e}", spec.name))
                }
            })
    }

    async fn logs(&self, spec: &WorkspaceSpec) -> Result<Vec<u8>, NodeError> {
        let id = spec.id.clone();
        self.blocking(move |i| {
            valid_id(&id)?;
            let console = i.paths(&id).console;
            match std::fs::read(&console) {
                Ok(b) => Ok(b[b.len().saturating_sub(LOG_MAX)..].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(NodeError::Internal(format!(
                    "read {}: {e}",
                    console.display()
                ))),
            }
        })
        .await
    }

    async fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(String, WorkspaceStatus)>, NodeError> {
        let known = known.to_vec();
        self.blocking(move |i| i.reconcile(&known)).await
    }

    async fn snapshot(&self, spec: &WorkspaceSpec) -> Result<crate::SnapshotSummary, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| {
            i.snapshot(&spec, false)?
                .ok_or_else(|| NodeError::Internal("snapshot was skipped".into()))
        })
        .await
    }

    async fn snapshot_if_changed(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Option<crate::SnapshotSummary>, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.snapshot(&spec, true)).await
    }

    async fn snapshots(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Vec<crate::SnapshotSummary>, NodeError> {
        let spec = spec.clone();
        self.blocking(move |i| i.snapshots(&spec)).await
    }

    async fn restore(&self, spec: &WorkspaceSpec, id: &str) -> Result<(), NodeError> {
        let spec = spec.clone();
        let id = id.to_string();
        self.blocking(move |i| i.restore(&spec, &id)).await
    }

    async fn store_fsck(&self) -> Result<crate::StoreCheck, NodeError> {
        self.blocking(|i| i.store_fsck()).await
    }

    async fn store_gc(
        &self,
        keep: Option<crate::Retention>,
    ) -> Result<crate::StoreGcReport, NodeError> {
        self.blocking(move |i| i.store_gc(keep)).await
    }

    async fn teardown(&self) -> Result<(), NodeError> {
        self.blocking(|i| {
            let mut errors = Vec::new();
            for id in i.runtime.list().unwrap_or_default() {
                if let Err(e) = i.stop(&id, false) {
                    errors.push(e.to_string());
                }
            }
            // Stopped workspaces keep their disk mounted and their network; both go.
            if let Ok(rd) = std::fs::read_dir(&i.ws_root) {
                for e in rd.flatten() {
                    if let Err(e) = i.unmount_all(&e.path()) {
                        errors.push(e.to_string());
                    }
                }
            }
            for id in i.net.list().unwrap_or_default() {
                if let Err(e) = i.net.teardown(&id) {
                    errors.push(e.to_string());
                }
            }
            if let Err(e) = i.net.teardown_host() {
                errors.push(e.to_string());
            }
            if let Err(e) = i.cgroups.remove_parent() {
                errors.push(e.to_string());
            }
            if let Err(e) = mount::unmount(&i.share) {
                errors.push(e.to_string());
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(NodeError::Internal(errors.join("; ")))
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn detects_dynamic_binaries() {
        let dynamic = std::fs::read("/bin/sh").unwrap();
        assert!(super::has_interpreter(&dynamic));
        let st = std::fs::read("/bin/busybox").unwrap();
        assert!(
            !super::has_interpreter(&st),
            "busybox-static has no interpreter"
        );
        assert!(!super::has_interpreter(b"not an elf"));
    }
}
