//! Memory below and at the hard limit: the reclaim threshold under it, and what a
//! workspace's memory group reports (use, limits, OOM kills).
//!
//! v2 `memory.high` makes the kernel reclaim and then throttle allocations of a group
//! above it, so a workspace growing towards its limit slows down before the OOM killer
//! acts. v1 has no such knob: `memory.soft_limit_in_bytes` only steers reclaim when the
//! whole host is short of memory. Without swap (hosts like this one) reclaim can only
//! drop page cache; anonymous memory cannot go anywhere, so on v2 a group past `high`
//! with mostly anon memory is throttled (allocations sleep), and on v1 it runs until the
//! hard limit.

use std::path::{Path, PathBuf};

use crate::{read, read_u64, write, CgroupError, Cgroups, Layout, WorkspaceId};

/// The reclaim threshold as a share of the hard limit, in tenths. 90 % is what
/// Kubernetes' MemoryQoS uses for `memory.high` (its default throttling factor 0.9):
/// near enough to the limit that a workspace keeps nearly all of it at full speed, far
/// enough that reclaim and throttling start while there is still room (6 MiB at the
/// smallest 64 MiB limit, 400 MiB at the default 4 GiB) for the user to notice.
const HIGH_TENTHS: u64 = 9;
const PAGE: u64 = 4096;
/// v1 reports "no limit" as the largest page-aligned `i64`; anything this large is none.
const V1_UNLIMITED: u64 = 1 << 62;

/// The reclaim threshold for hard limit `max` (0: unlimited, and so is the threshold).
pub fn memory_high(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    (max / 10 * HIGH_TENTHS) & !(PAGE - 1)
}

/// A workspace's memory group; `None` where the host lacks the controller or the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub usage_bytes: Option<u64>,
    /// Hard limit (`memory.max` / `memory.limit_in_bytes`); `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// Reclaim threshold (`memory.high` / `memory.soft_limit_in_bytes`); `None` when unset.
    pub high_bytes: Option<u64>,
    /// Processes the OOM killer killed in the group since it was made (`oom_kill` of
    /// `memory.events` / `memory.oom_control`; the v1 field needs Linux 4.13).
    pub oom_kills: Option<u64>,
}

impl Cgroups {
    /// The workspace's memory group directory, if the host has the controller.
    pub(crate) fn memory_dir(&self, id: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1(v1) => v1.memory.as_ref().map(|m| m.join(&self.parent).join(id)),
            Layout::V2 { root } => self
                .v2_controllers
                .contains(&"memory")
                .then(|| root.join(&self.parent).join(id)),
        }
    }

    /// Writes the hard limit and the reclaim threshold under it into `dir`.
    pub(crate) fn write_memory(&self, dir: &Path, max: u64) -> Result<(), CgroupError> {
        let (v1, unlimited) = match self.layout {
            Layout::V1(_) => (true, "-1"),
            Layout::V2 { .. } => (false, "max"),
        };
        let value = |v: u64| {
            if v == 0 {
                unlimited.to_owned()
            } else {
                v.to_string()
            }
        };
        let (max_file, high_file) = if v1 {
            ("memory.limit_in_bytes", "memory.soft_limit_in_bytes")
        } else {
            ("memory.max", "memory.high")
        };
        // The threshold may sit above the limit for a moment in either order; the kernel
        // takes both, so the limit goes first: lowering it is what can fail (v1, EBUSY).
        write(&dir.join(max_file), &value(max))?;
        write(&dir.join(high_file), &value(memory_high(max)))
    }

    /// What the workspace's memory group reports; all `None` without a memory controller
    /// or group.
    pub fn memory(&self, id: &WorkspaceId) -> Result<MemoryStats, CgroupError> {
        let Some(dir) = self.memory_dir(id).filter(|d| d.is_dir()) else {
            return Ok(MemoryStats::default());
        };
        let limit = |v: Option<u64>| v.filter(|&v| v < V1_UNLIMITED);
        Ok(match self.layout {
            Layout::V1(_) => MemoryStats {
                usage_bytes: Some(read_u64(&dir.join("memory.usage_in_bytes"))?),
                limit_bytes: limit(Some(read_u64(&dir.join("memory.limit_in_bytes"))?)),
                high_bytes: limit(Some(read_u64(&dir.join("memory.soft_limit_in_bytes"))?)),
                oom_kills: keyed(&dir.join("memory.oom_control"), "oom_kill")?,
            },
            Layout::V2 { .. } => MemoryStats {
                usage_bytes: Some(read_u64(&dir.join("memory.current"))?),
                limit_bytes: max_or_none(&dir.join("memory.max"))?,
                high_bytes: max_or_none(&dir.join("memory.high"))?,
                oom_kills: keyed(&dir.join("memory.events"), "oom_kill")?,
            },
        })
    }

    /// The workspace a memory cgroup path belongs to, as the kernel prints it (relative
    /// to the hierarchy's root: `/<parent>/<id>[/...]`); `None` for groups not ours.
    pub fn workspace_of(&self, memcg: &str) -> Option<WorkspaceId> {
        let rest = Path::new(memcg.strip_prefix('/')?)
            .strip_prefix(&self.parent)
            .ok()?;
        let first = rest.components().next()?;
        WorkspaceId::new(first.as_os_str().to_str()?).ok()
    }
}

/// A `max`-or-number file; a missing file (an older kernel) is `None` too.
fn max_or_none(path: &Path) -> Result<Option<u64>, CgroupError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read(path)?;
    match text.trim() {
        "max" => Ok(None),
        v => v.parse().map(Some).map_err(|_| CgroupError::Parse {
            path: path.to_owned(),
            content: text.clone(),
        }),
    }
}

/// The value of `key` in a flat-keyed file (`key value` lines); `None` if the file or
/// the key is missing.
fn keyed(path: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read(path)?;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(' ') {
            if k == key {
                return v.trim().parse().map(Some).map_err(|_| CgroupError::Parse {
                    path: path.to_owned(),
                    content: line.to_owned(),
                });
            }
        }
    }
    Ok(None)
}
