//! The node's disk reserve, and who holds a workspace frozen.
//!
//! Workspace disks are sparse images whose sizes may add up to more than the host has. If
//! the host filesystem filled, a workspace's btrfs would get write errors from its loop
//! device and go read-only, losing whatever it had not committed. So the node keeps a
//! reserve of free space: work that grows its disk (create, start, restore, local
//! snapshots) is refused below it, and a running workspace whose disk grows while free
//! space is under it is frozen, its processes stopped with nothing lost, until space is
//! freed. The reserve has to hold what frozen workspaces still write back: each disk's
//! dirty page cache is bounded ([`hearth_disk::DIRTY_MAX`]) and the check runs every
//! [`TICK`].

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use hearth_cgroups::{CgroupError, Cgroups};

use super::Inner;
use crate::{NodeError, WorkspaceId};

/// How often free space is checked: a workspace writing flat out uses about this much
/// time's worth of its disk bandwidth of the reserve before it is frozen.
pub(super) const TICK: Duration = Duration::from_millis(100);
/// Default reserve: this share of the node's filesystem, within [`MIN_RESERVE`, `MAX_RESERVE`].
const RESERVE_PERCENT: u64 = 5;
const MIN_RESERVE: u64 = 1 << 30;
const MAX_RESERVE: u64 = 20 << 30;
/// How much a workspace's disk may grow under the reserve before it is frozen: its console
/// lines and btrfs metadata, not real writes.
const GROWTH_SLACK: u64 = 8 << 20;

bitflags::bitflags! {
    /// Why a workspace is frozen. It thaws only when no reason is left, so a snapshot never
    /// thaws a workspace the disk guard froze, nor the reverse.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub(super) struct Hold: u8 {
        const SNAPSHOT = 1;
        const DISK = 1 << 1;
    }
}

/// What the node records about one workspace's freezer.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    reasons: Hold,
    /// Not a reason to freeze: the workspace is stopping, and the disk guard leaves it
    /// alone (a frozen agent could not act on TERM) until its next start.
    stopping: bool,
}

/// Freeze reasons per workspace. Every change to a group's freezer state happens under
/// this lock, so the map and the kernel agree.
#[derive(Debug, Default)]
pub(super) struct Freezes(Mutex<HashMap<WorkspaceId, Entry>>);

impl Freezes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<WorkspaceId, Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Freezes `id` for `why` unless it is frozen already. Returns false, recording
    /// nothing, if the workspace has no cgroup to freeze (not running) or is stopping
    /// (for the disk guard).
    pub(super) fn hold(
        &self,
        cg: &Cgroups,
        id: &WorkspaceId,
        why: Hold,
    ) -> Result<bool, CgroupError> {
        let mut m = self.map();
        let cur = m.get(id).copied().unwrap_or_default();
        if why.contains(Hold::DISK) && cur.stopping {
            return Ok(false);
        }
        if cur.reasons.is_empty() && !cg.freeze(id)? {
            return Ok(false);
        }
        m.insert(
            id.clone(),
            Entry {
                reasons: cur.reasons | why,
                ..cur
            },
        );
        Ok(true)
    }

    /// Drops `why`; thaws when it was the last reason. A failed thaw keeps the record, so
    /// the workspace is still known to be frozen (the guard retries its own).
    pub(super) fn release(
        &self,
        cg: &Cgroups,
        id: &WorkspaceId,
        why: Hold,
    ) -> Result<(), CgroupError> {
        let mut m = self.map();
        let Some(cur) = m.get(id).copied() else {
            return Ok(());
        };
        let left = cur.reasons - why;
        if !cur.reasons.is_empty() && left.is_empty() {
            cg.thaw(id)?;
        }
        if left.is_empty() && !cur.stopping {
            m.remove(id);
        } else {
            m.insert(
                id.clone(),
                Entry {
                    reasons: left,
                    ..cur
                },
            );
        }
        Ok(())
    }

    /// Thaws `id` whatever holds it and forgets the reasons; `stopping` keeps the disk
    /// guard off it until [`Freezes::forget`] (its next start).
    pub(super) fn clear(
        &self,
        cg: &Cgroups,
        id: &WorkspaceId,
        stopping: bool,
    ) -> Result<(), CgroupError> {
        let mut m = self.map();
        let res = cg.thaw(id);
        if stopping {
            m.insert(
                id.clone(),
                Entry {
                    reasons: Hold::empty(),
                    stopping: true,
                },
            );
        } else {
            m.remove(id);
        }
        res
    }

    /// Forgets `id` (a new start: fresh cgroups, nothing frozen).
    pub(super) fn forget(&self, id: &WorkspaceId) {
        self.map().remove(id);
    }

    pub(super) fn held(&self, id: &WorkspaceId, why: Hold) -> bool {
        self.map()
            .get(id)
            .is_some_and(|e| e.reasons.intersects(why))
    }

    fn held_for(&self, why: Hold) -> Vec<WorkspaceId> {
        self.map()
            .iter()
            .filter(|(_, e)| e.reasons.intersects(why))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Free space the node keeps on its data dir's filesystem.
#[derive(Debug)]
pub(super) struct DiskGuard {
    /// Bytes; 0 turns the guard off.
    pub(super) reserve: u64,
    /// Allocated bytes of each workspace's disk image at the last tick with room, or when
    /// it was first seen under the reserve.
    seen: Mutex<HashMap<WorkspaceId, u64>>,
}

/// Bytes an unprivileged writer could still allocate on `dir`'s filesystem. Workspace
/// images are written by root, but root's extra blocks are no margin to plan on.
pub(super) fn free_bytes(dir: &Path) -> Result<u64, NodeError> {
    let st =
        nix::sys::statvfs::statvfs(dir).map_err(|e| NodeError::io("statvfs", dir)(e.into()))?;
    Ok(st.blocks_available() * st.fragment_size())
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
}

impl DiskGuard {
    /// `reserve` as configured, else [`RESERVE_PERCENT`] of the filesystem, clamped.
    pub(super) fn new(dir: &Path, reserve: Option<u64>) -> Result<Self, NodeError> {
        let reserve = match reserve {
            Some(r) => r,
            None => {
                let st = nix::sys::statvfs::statvfs(dir)
                    .map_err(|e| NodeError::io("statvfs", dir)(e.into()))?;
                (st.blocks() * st.fragment_size() / 100 * RESERVE_PERCENT)
                    .clamp(MIN_RESERVE, MAX_RESERVE)
            }
        };
        Ok(DiskGuard {
            reserve,
            seen: Mutex::default(),
        })
    }
}

impl Inner {
    /// Refuses to `what` (something that takes disk space) while free space is under the
    /// reserve.
    pub(super) fn check_reserve(&self, what: &str) -> Result<(), NodeError> {
        self.check_reserve_for(what, 0)
    }

    /// Refuses to `what`, which writes about `need` bytes, unless they fit above the
    /// reserve.
    pub(super) fn check_reserve_for(&self, what: &str, need: u64) -> Result<(), NodeError> {
        let reserve = self.guard.reserve;
        if reserve == 0 {
            return Ok(());
        }
        let free = free_bytes(&self.cfg.data_dir)?;
        if free < reserve.saturating_add(need) {
            let needs = if need > 0 {
                format!(" for the {} it needs", gib(need))
            } else {
                String::new()
            };
            return Err(NodeError::Conflict(format!(
                "cannot {what}: the node's disk has {} free at {}, too little above its \
                 reserve of {}{needs} (free space there, or lower the server's --disk-reserve)",
                gib(free),
                self.cfg.data_dir.display(),
                gib(reserve)
            )));
        }
        Ok(())
    }

    /// Why the node holds `id` frozen, if it does (shown by inspect).
    pub(super) fn paused_reason(&self, id: &WorkspaceId) -> Option<String> {
        self.freezes.held(id, Hold::DISK).then(|| {
            format!(
                "frozen: the node's disk is under its {} reserve; free space at {} and it resumes",
                gib(self.guard.reserve),
                self.cfg.data_dir.display()
            )
        })
    }

    /// One look at free space: freezes workspaces whose disk grew while under the
    /// reserve, thaws them once free space is a quarter above it again.
    fn guard_tick(&self) {
        let reserve = self.guard.reserve;
        if reserve == 0 {
            return;
        }
        let free = match free_bytes(&self.cfg.data_dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("disk guard: {e}");
                return;
            }
        };
        if free >= reserve + reserve / 4 {
            for id in self.freezes.held_for(Hold::DISK) {
                match self.freezes.release(&self.cgroups, &id, Hold::DISK) {
                    Ok(()) => {
                        tracing::warn!(%id, free = %gib(free), "node disk has room again: workspace thawed")
                    }
                    Err(e) => tracing::error!(%id, "disk guard thaw: {e}"),
                }
            }
        }
        let now = self.disk_allocations();
        let mut seen = self.guard.seen.lock().unwrap_or_else(|e| e.into_inner());
        if free < reserve {
            // Growth is counted from when the node went under its reserve, with a little
            // slack: a workspace's own console lines (kept on its disk) and btrfs metadata
            // must not freeze one that does not write, while the slack bounds what any
            // workspace can still add.
            for (id, &alloc) in &now {
                let grew = seen
                    .get(id)
                    .is_some_and(|&before| alloc > before + GROWTH_SLACK);
                if !grew || self.freezes.held(id, Hold::DISK) {
                    continue;
                }
                match self.freezes.hold(&self.cgroups, id, Hold::DISK) {
                    Ok(true) => tracing::error!(
                        %id,
                        free = %gib(free),
                        reserve = %gib(reserve),
                        dir = %self.cfg.data_dir.display(),
                        "node disk under its reserve: workspace frozen until space is freed"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::error!(%id, "disk guard freeze: {e}"),
                }
            }
        }
        if free >= reserve {
            *seen = now;
        } else {
            seen.retain(|id, _| now.contains_key(id));
            for (id, alloc) in now {
                seen.entry(id).or_insert(alloc);
            }
        }
    }

    /// Bytes allocated on the host by each workspace's disk image.
    fn disk_allocations(&self) -> HashMap<WorkspaceId, u64> {
        let Ok(rd) = std::fs::read_dir(&self.ws_root) else {
            return HashMap::new();
        };
        rd.flatten()
            .filter_map(|e| {
                // Skips `.restore-*` and anything else that is not a workspace.
                let id = WorkspaceId::new(e.file_name().into_string().ok()?).ok()?;
                let md = std::fs::symlink_metadata(self.paths(&id).image).ok()?;
                Some((id, md.blocks() * 512))
            })
            .collect()
    }
}

/// Runs the guard until the node is dropped.
pub(super) fn spawn(inner: Weak<Inner>) {
    let res = std::thread::Builder::new()
        .name("hearth-disk-guard".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            let Some(i) = inner.upgrade() else { return };
            i.guard_tick();
        });
    if let Err(e) = res {
        tracing::error!("cannot start the disk guard: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real cgroup with one `sleep` in it; removed (with its parent) on drop.
    struct Group {
        cg: Cgroups,
        child: std::process::Child,
    }

    static ID: std::sync::LazyLock<WorkspaceId> =
        std::sync::LazyLock::new(|| WorkspaceId::new("f7ee2e").unwrap());

    impl Group {
        fn new() -> Group {
            let parent = format!("hearth-guardtest-{}", rand::random::<u32>());
            let cg = Cgroups::open(&parent).unwrap();
            cg.create(&ID, &hearth_cgroups::Limits::default()).unwrap();
            let child = std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap();
            for f in cg.procs_files(&ID) {
                std::fs::write(f, child.id().to_string()).unwrap();
            }
            Group { cg, child }
        }

        /// Whether the kernel has the group frozen (v1 freezer, else v2 cgroup.events).
        fn frozen(&self) -> bool {
            let dirs: Vec<_> = self
                .cg
                .procs_files(&ID)
                .into_iter()
                .filter_map(|f| f.parent().map(Path::to_path_buf))
                .collect();
            for d in &dirs {
                if let Ok(s) = std::fs::read_to_string(d.join("freezer.state")) {
                    return s.trim() != "THAWED";
                }
            }
            dirs.iter().any(|d| {
                std::fs::read_to_string(d.join("cgroup.events"))
                    .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1"))
            })
        }
    }

    impl Drop for Group {
        fn drop(&mut self) {
            let _ = self.cg.thaw(&ID);
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = self.cg.remove(&ID);
            let _ = self.cg.remove_parent();
        }
    }

    #[test]
    fn a_workspace_thaws_only_when_no_reason_is_left() {
        let g = Group::new();
        let f = Freezes::default();
        assert!(!g.frozen());
        // The guard freezes; a snapshot comes and goes: still frozen for the disk.
        assert!(f.hold(&g.cg, &ID, Hold::DISK).unwrap());
        assert!(g.frozen());
        assert!(f.hold(&g.cg, &ID, Hold::SNAPSHOT).unwrap());
        f.release(&g.cg, &ID, Hold::SNAPSHOT).unwrap();
        assert!(g.frozen(), "a snapshot thawed what the disk guard froze");
        assert!(f.held(&ID, Hold::DISK));
        f.release(&g.cg, &ID, Hold::DISK).unwrap();
        assert!(!g.frozen());
        // And the other way round.
        f.hold(&g.cg, &ID, Hold::SNAPSHOT).unwrap();
        f.hold(&g.cg, &ID, Hold::DISK).unwrap();
        f.release(&g.cg, &ID, Hold::DISK).unwrap();
        assert!(g.frozen(), "the guard thawed a workspace mid-snapshot");
        f.release(&g.cg, &ID, Hold::SNAPSHOT).unwrap();
        assert!(!g.frozen());
        // Stopping: thawed, and the guard leaves it alone until the next start.
        f.hold(&g.cg, &ID, Hold::DISK).unwrap();
        f.clear(&g.cg, &ID, true).unwrap();
        assert!(!g.frozen());
        assert!(!f.hold(&g.cg, &ID, Hold::DISK).unwrap());
        assert!(!g.frozen(), "the guard froze a stopping workspace");
        // A snapshot of a stopping workspace still freezes and thaws it.
        assert!(f.hold(&g.cg, &ID, Hold::SNAPSHOT).unwrap());
        assert!(g.frozen());
        f.release(&g.cg, &ID, Hold::SNAPSHOT).unwrap();
        assert!(!g.frozen());
        f.forget(&ID);
        assert!(f.hold(&g.cg, &ID, Hold::DISK).unwrap());
        assert!(g.frozen());
        f.clear(&g.cg, &ID, false).unwrap();
        assert!(!g.frozen() && !f.held(&ID, Hold::DISK));
        // No cgroup (not running): nothing recorded.
        let other = WorkspaceId::new("0ddba11").unwrap();
        assert!(!f.hold(&g.cg, &other, Hold::DISK).unwrap());
        assert!(!f.held(&other, Hold::DISK));
    }
}
