//! Per-workspace cgroups on v1 (including hybrid hosts) and v2.
//!
//! Every workspace gets `<hierarchy>/<parent>/<id>` in each hierarchy we use. The node
//! writes a forked child into [`Cgroups::procs_files`] before exec so the container and
//! everything it forks inherit the groups.

mod counters;
mod cpu;
mod layout;
mod memory;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

pub use hearth_types::WorkspaceId;

pub use counters::CpuCounters;
pub use cpu::{CpuGroup, CpuKnobs, CpuSample, NodePressure, SampleWhat, DEFAULT_PERIOD_US};
pub use layout::{Layout, V1Layout};
pub use memory::{memory_high, MemoryStats};

/// How long [`Cgroups::kill_all`] waits for the group to empty; SIGKILL is not delayed by
/// anything a process does, so only uninterruptible sleeps (D state) can take this long.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Controllers whose limits we write on v2.
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup parent {parent:?}: {reason}")]
    InvalidParent {
        parent: String,
        reason: &'static str,
    },
    #[error("invalid limits for cgroup {id}: {reason}")]
    InvalidLimits { id: String, reason: String },
    #[error("no cgroup hierarchy found in {path}")]
    NotMounted { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {content:?}")]
    Parse { path: PathBuf, content: String },
    #[error("cgroup {id} still has processes {pids:?}")]
    Busy { id: String, pids: Vec<u32> },
    #[error("processes {pids:?} of cgroup {id} still alive after {waited:?}")]
    KillTimeout {
        id: String,
        pids: Vec<u32>,
        waited: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Resource limits of one workspace. A zero memory or pids limit means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// cgroup v2 semantics: 1..=10000, 100 is the default share.
    pub cpu_weight: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 0,
            pids: 0,
            cpu_weight: 100,
        }
    }
}

/// Usage counters; `None` where the controller is not available on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub memory_bytes: Option<u64>,
    pub pids: u64,
    pub cpu_usage_ns: Option<u64>,
}

/// The detected cgroup backend plus the parent group all workspaces live under.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    parent: PathBuf,
    /// v2 only: controllers enabled for the workspace groups.
    v2_controllers: Vec<&'static str>,
}

impl Cgroups {
    /// Detects the hierarchies from `/proc/self/mountinfo` and creates the parent groups.
    /// `parent` may be nested (`a/b`); on v2 the controllers are enabled along the chain.
    pub fn open(parent: &str) -> Result<Self, CgroupError> {
        Self::open_with(Layout::detect()?, parent)
    }

    /// Like [`Cgroups::open`] with a given layout (tests point it at a tempdir).
    pub fn open_with(layout: Layout, parent: &str) -> Result<Self, CgroupError> {
        let parent_path = validate_parent(parent)?;
        let mut cg = Cgroups {
            layout,
            parent: parent_path,
            v2_controllers: Vec::new(),
        };
        match &cg.layout {
            Layout::V1(v1) => {
                for root in cg.roots() {
                    mkdir_all(&root.join(&cg.parent))?;
                }
                for (name, mount) in [("memory", &v1.memory), ("pids", &v1.pids), ("cpu", &v1.cpu)]
                {
                    if mount.is_none() {
                        tracing::warn!(
                            controller = name,
                            "cgroup v1 controller not mounted, its limit is skipped"
                        );
                    }
                }
            }
            Layout::V2 { root } => {
                let root = root.clone();
                cg.v2_controllers = enable_v2_chain(&root, &cg.parent)?;
                for name in V2_CONTROLLERS {
                    if !cg.v2_controllers.contains(&name) {
                        tracing::warn!(controller = name, root = %root.display(), "cgroup v2 controller not available, its limit is skipped");
                    }
                }
            }
        }
        tracing::debug!(layout = ?cg.layout, parent = %cg.parent.display(), "cgroups opened");
        Ok(cg)
    }

    pub fn version(&self) -> Version {
        match self.layout {
            Layout::V1(_) => Version::V1,
            Layout::V2 { .. } => Version::V2,
        }
    }

    /// Creates the workspace group(s) and writes the limits; rewrites them if the group exists.
    pub fn create(&self, id: &WorkspaceId, limits: &Limits) -> Result<(), CgroupError> {
        check_limits(id, limits)?;
        for dir in self.group_dirs(id) {
            mkdir_all(&dir)?;
        }
        self.write_limits(id, limits)?;
        tracing::debug!(%id, ?limits, "cgroup created");
        Ok(())
    }

    /// Changes the limits of an existing group (a running workspace), the memory reclaim
    /// threshold ([`memory_high`]) with them. Lowering memory below what the group uses
    /// makes the kernel reclaim first (v1 refuses with EBUSY if it cannot).
    pub fn set_limits(&self, id: &WorkspaceId, limits: &Limits) -> Result<(), CgroupError> {
        check_limits(id, limits)?;
        self.write_limits(id, limits)?;
        tracing::debug!(%id, ?limits, "cgroup limits changed");
        Ok(())
    }

    fn write_limits(&self, id: &str, limits: &Limits) -> Result<(), CgroupError> {
        let unlimited_or = |v: u64, max: &str| {
            if v == 0 {
                max.to_owned()
            } else {
                v.to_string()
            }
        };
        match &self.layout {
            Layout::V1(v1) => {
                if let Some(dir) = self.memory_dir(id) {
                    self.write_memory(&dir, limits.memory_bytes)?;
                }
                if let Some(p) = &v1.pids {
                    let dir = p.join(&self.parent).join(id);
                    write(&dir.join("pids.max"), &unlimited_or(limits.pids, "max"))?;
                }
                if let Some(c) = &v1.cpu {
                    let dir = c.join(&self.parent).join(id);
                    // The CPU controller owns an idle group's weight (a write is EINVAL).
                    if !cpu::is_idle(&dir) {
                        write(
                            &dir.join("cpu.shares"),
                            &weight_to_shares(limits.cpu_weight).to_string(),
                        )?;
                    }
                }
            }
            Layout::V2 { root } => {
                let dir = root.join(&self.parent).join(id);
                if let Some(dir) = self.memory_dir(id) {
                    self.write_memory(&dir, limits.memory_bytes)?;
                }
                if self.v2_controllers.contains(&"pids") {
                    write(&dir.join("pids.max"), &unlimited_or(limits.pids, "max"))?;
                }
                if self.v2_controllers.contains(&"cpu") && !cpu::is_idle(&dir) {
                    write(&dir.join("cpu.weight"), &limits.cpu_weight.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files of the existing group directories (one per v1 hierarchy
    /// plus the hybrid cgroup2 one, or one on v2). Empty for an unknown id.
    pub fn procs_files(&self, id: &WorkspaceId) -> Vec<PathBuf> {
        self.group_dirs(id)
            .into_iter()
            .filter(|d| d.is_dir())
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Pids in the group and its descendants, across all hierarchies; empty if it does not exist.
    pub fn pids(&self, id: &WorkspaceId) -> Result<Vec<u32>, CgroupError> {
        let mut pids = BTreeSet::new();
        for dir in self.group_dirs(id) {
            collect_pids(&dir, &mut pids)?;
        }
        Ok(pids.into_iter().collect())
    }

    /// SIGKILLs everything in the group and waits until it is empty.
    pub fn kill_all(&self, id: &WorkspaceId) -> Result<(), CgroupError> {
        let freezer = match &self.layout {
            Layout::V1(v1) => v1
                .freezer
                .as_ref()
                .map(|f| f.join(&self.parent).join(id))
                .filter(|d| d.is_dir()),
            Layout::V2 { .. } => None,
        };
        // cgroup.kill (v2, and the hybrid cgroup2 group on v1) kills atomically, forks included.
        let kill_file = self
            .group_dirs(id)
            .into_iter()
            .map(|d| d.join("cgroup.kill"))
            .find(|f| f.exists());
        if let Some(kill_file) = &kill_file {
            write(kill_file, "1")?;
        }
        if let Some(freezer) = &freezer {
            let pids = self.pids(id)?;
            if !pids.is_empty() {
                // Frozen processes cannot fork while we signal them one by one.
                freeze(freezer)?;
                sigkill_all(&pids);
                let again = self.pids(id).map(|pids| sigkill_all(&pids));
                write(&freezer.join("freezer.state"), "THAWED")?;
                again?;
            }
        }
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let pids = self.pids(id)?;
            if pids.is_empty() {
                tracing::debug!(%id, "cgroup emptied");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::KillTimeout {
                    id: id.to_string(),
                    pids,
                    waited: KILL_WAIT,
                });
            }
            sigkill_all(&pids);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Freezes every process of the group (v1 freezer, else v2 `cgroup.freeze`) so a
    /// snapshot sees a consistent tree. Returns whether a freezer was found; pair with
    /// [`Cgroups::thaw`].
    pub fn freeze(&self, id: &WorkspaceId) -> Result<bool, CgroupError> {
        if let Some(dir) = self.v1_freezer(id) {
            freeze(&dir)?;
            return Ok(true);
        }
        let Some(file) = self.v2_freeze_file(id) else {
            return Ok(false);
        };
        write(&file, "1")?;
        let events = file.with_file_name("cgroup.events");
        if !wait_until(FREEZE_WAIT, || {
            Ok(read(&events)?.lines().any(|l| l.trim() == "frozen 1"))
        })? {
            tracing::warn!(path = %events.display(), "cgroup did not report frozen in time");
        }
        Ok(true)
    }

    /// Undoes [`Cgroups::freeze`]; a missing group is fine.
    pub fn thaw(&self, id: &WorkspaceId) -> Result<(), CgroupError> {
        if let Some(dir) = self.v1_freezer(id) {
            return write(&dir.join("freezer.state"), "THAWED");
        }
        if let Some(file) = self.v2_freeze_file(id) {
            return write(&file, "0");
        }
        Ok(())
    }

    fn v1_freezer(&self, id: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1(v1) => v1
                .freezer
                .as_ref()
                .map(|f| f.join(&self.parent).join(id))
                .filter(|d| d.is_dir()),
            Layout::V2 { .. } => None,
        }
    }

    fn v2_freeze_file(&self, id: &str) -> Option<PathBuf> {
        self.group_dirs(id)
            .into_iter()
            .map(|d| d.join("cgroup.freeze"))
            .find(|f| f.exists())
    }

    /// Removes the group(s), children first; missing groups are fine.
    pub fn remove(&self, id: &WorkspaceId) -> Result<(), CgroupError> {
        let pids = self.pids(id)?;
        if !pids.is_empty() {
            return Err(CgroupError::Busy {
                id: id.to_string(),
                pids,
            });
        }
        for dir in self.group_dirs(id) {
            remove_tree(&dir)?;
        }
        tracing::debug!(%id, "cgroup removed");
        Ok(())
    }

    /// Workspace ids with a group under the parent in any hierarchy.
    pub fn list(&self) -> Result<Vec<WorkspaceId>, CgroupError> {
        let mut ids = BTreeSet::new();
        for root in self.roots() {
            let dir = root.join(&self.parent);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(io_err("read dir", &dir, source)),
            };
            for entry in entries {
                let entry = entry.map_err(|source| io_err("read dir", &dir, source))?;
                let is_dir = entry
                    .file_type()
                    .map_err(|source| io_err("stat", &entry.path(), source))?
                    .is_dir();
                let id = entry.file_name().to_str().map(WorkspaceId::new);
                if let (true, Some(Ok(id))) = (is_dir, id) {
                    ids.insert(id);
                }
            }
        }
        Ok(ids.into_iter().collect())
    }

    pub fn stats(&self, id: &WorkspaceId) -> Result<Stats, CgroupError> {
        let group = |root: &Option<PathBuf>| {
            root.as_ref()
                .map(|r| r.join(&self.parent).join(id))
                .filter(|d| d.is_dir())
        };
        let count = || self.pids(id).map(|p| p.len() as u64);
        match &self.layout {
            Layout::V1(v1) => Ok(Stats {
                memory_bytes: group(&v1.memory)
                    .map(|d| read_u64(&d.join("memory.usage_in_bytes")))
                    .transpose()?,
                pids: match group(&v1.pids) {
                    Some(d) => read_u64(&d.join("pids.current"))?,
                    None => count()?,
                },
                cpu_usage_ns: group(&v1.cpuacct)
                    .map(|d| read_u64(&d.join("cpuacct.usage")))
                    .transpose()?,
            }),
            Layout::V2 { root } => {
                let dir = root.join(&self.parent).join(id);
                let has = |c: &str| self.v2_controllers.contains(&c) && dir.is_dir();
                let stat_path = dir.join("cpu.stat");
                let cpu_usage_ns = if dir.is_dir() {
                    let text = read(&stat_path)?;
                    let usec = text
                        .lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .ok_or_else(|| CgroupError::Parse {
                            path: stat_path.clone(),
                            content: text.clone(),
                        })?;
                    Some(usec.saturating_mul(1000))
                } else {
                    None
                };
                Ok(Stats {
                    memory_bytes: if has("memory") {
                        Some(read_u64(&dir.join("memory.current"))?)
                    } else {
                        None
                    },
                    pids: if has("pids") {
                        read_u64(&dir.join("pids.current"))?
                    } else {
                        count()?
                    },
                    cpu_usage_ns,
                })
            }
        }
    }

    /// Removes the parent group (its last path component) in every hierarchy when empty.
    pub fn remove_parent(&self) -> Result<(), CgroupError> {
        for root in self.roots() {
            let dir = root.join(&self.parent);
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(io_err("remove dir", &dir, source)),
            }
        }
        Ok(())
    }

    /// Distinct hierarchy mount points we use (co-mounted controllers share one).
    fn roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = Vec::new();
        match &self.layout {
            Layout::V1(v1) => {
                for r in [
                    &v1.memory,
                    &v1.pids,
                    &v1.cpu,
                    &v1.cpuacct,
                    &v1.freezer,
                    &v1.unified,
                ]
                .into_iter()
                .flatten()
                {
                    if !roots.contains(r) {
                        roots.push(r.clone());
                    }
                }
            }
            Layout::V2 { root } => roots.push(root.clone()),
        }
        roots
    }

    fn group_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.roots()
            .into_iter()
            .map(|r| r.join(&self.parent).join(id))
            .collect()
    }
}

/// v1 cpu.shares default is 1024 for the v2 default weight 100; the kernel minimum is 2.
fn weight_to_shares(weight: u64) -> u64 {
    (weight * 1024 / 100).max(2)
}

/// Ids name directories under the parent, so only a plain charset is allowed (no `/`, `..`).
fn check_limits(id: &str, limits: &Limits) -> Result<(), CgroupError> {
    if !(1..=10000).contains(&limits.cpu_weight) {
        return Err(CgroupError::InvalidLimits {
            id: id.to_string(),
            reason: format!("cpu weight {} outside 1..=10000", limits.cpu_weight),
        });
    }
    Ok(())
}

fn validate_parent(parent: &str) -> Result<PathBuf, CgroupError> {
    let err = |reason| CgroupError::InvalidParent {
        parent: parent.to_owned(),
        reason,
    };
    if parent.is_empty() {
        return Err(err("empty"));
    }
    let path = Path::new(parent);
    for c in path.components() {
        match c {
            Component::Normal(s)
                if s.to_str().is_some_and(|s| {
                    s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                }) => {}
            _ => return Err(err("components must be plain names of A-Z a-z 0-9 - _ .")),
        }
    }
    Ok(path.to_owned())
}

/// Enables our controllers in `subtree_control` from the root down to the parent so the
/// workspace groups get them; returns those that ended up available.
fn enable_v2_chain(root: &Path, parent: &Path) -> Result<Vec<&'static str>, CgroupError> {
    let mut active: Vec<&'static str> = V2_CONTROLLERS.to_vec();
    let mut dir = root.to_path_buf();
    let mut chain = vec![dir.clone()];
    for c in parent.components() {
        dir = dir.join(c);
        chain.push(dir.clone());
    }
    for dir in chain {
        mkdir_all(&dir)?;
        let available = read(&dir.join("cgroup.controllers"))?;
        let available: Vec<&str> = available.split_whitespace().collect();
        active.retain(|c| available.contains(c));
        let control = dir.join("cgroup.subtree_control");
        let enabled = match fs::read_to_string(&control) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(io_err("read", &control, source)),
        };
        let enabled: Vec<&str> = enabled
            .split_whitespace()
            .map(|c| c.trim_start_matches('+'))
            .collect();
        let missing: Vec<String> = active
            .iter()
            .filter(|c| !enabled.contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            write(&control, &missing.join(" "))?;
        }
    }
    Ok(active)
}

/// How long a freeze may take before we go on anyway (a kill proceeds either way; a
/// snapshot then sees a tree that may still change, which its walk tolerates).
const FREEZE_WAIT: Duration = Duration::from_millis(500);

/// Polls `done` until it holds or `limit` passes; returns whether it held. Starts at
/// 50 µs and doubles up to 5 ms: a freeze usually settles in well under a millisecond,
/// and a snapshot's pause is the workspace's pause, so a coarse first sleep would be
/// most of it.
fn wait_until(
    limit: Duration,
    mut done: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let deadline = Instant::now() + limit;
    let mut nap = Duration::from_micros(50);
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(5));
    }
}

fn freeze(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    write(&state, "FROZEN")?;
    // FREEZING is transient; a bounded wait is enough, kill proceeds either way.
    if !wait_until(FREEZE_WAIT, || Ok(read(&state)?.trim() == "FROZEN"))? {
        tracing::warn!(path = %state.display(), "freezer did not reach FROZEN, going on");
    }
    Ok(())
}

fn sigkill_all(pids: &[u32]) {
    for &pid in pids {
        let Some(p) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        match rustix::process::kill_process(p, rustix::process::Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => tracing::warn!(pid, error = %e, "sigkill failed"),
        }
    }
}

fn collect_pids(dir: &Path, out: &mut BTreeSet<u32>) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    let text = match fs::read_to_string(&procs) {
        Ok(t) => t,
        // The group (or a child) vanished or never existed.
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(io_err("read", &procs, source)),
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pid = line.parse::<u32>().map_err(|_| CgroupError::Parse {
            path: procs.clone(),
            content: line.to_owned(),
        })?;
        out.insert(pid);
    }
    for sub in subdirs(dir)? {
        collect_pids(&sub, out)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_err("read dir", dir, source)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| io_err("read dir", dir, source))?;
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.push(entry.path()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_err("stat", &entry.path(), source)),
        }
    }
    Ok(out)
}

/// cgroupfs directories are removed with rmdir (their control files cannot be unlinked).
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for sub in subdirs(dir)? {
        remove_tree(&sub)?;
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_err("remove dir", dir, source)),
    }
}

fn mkdir_all(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(|source| io_err("create dir", dir, source))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| io_err("write", path, source))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| io_err("read", path, source))
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read(path)?;
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        content: text,
    })
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
