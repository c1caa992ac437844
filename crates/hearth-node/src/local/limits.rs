//! Changing a workspace's limits in place: cgroup limits and disk size.

use super::lifecycle::cgroup_limits;
use super::{internal, Inner};
use crate::{NodeError, RunState, WorkspaceSpec};

impl Inner {
    /// Applies `spec.limits`: cgroup limits first (a running workspace), then the disk
    /// grows to the asked size. Never shrinks: a smaller size than the disk has (the
    /// database behind after a crash) keeps the disk. Growing to the current size again
    /// finishes a resize a crash cut short. A workspace with no local disk (its data is
    /// only in the store) gets the size at its restore.
    pub(super) fn set_limits(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        self.check_disk_size(spec.limits.disk_bytes)?;
        let p = self.paths(&spec.id);
        if self.status(spec)?.state == RunState::Running {
            self.set_cgroup_limits(spec)?;
            if let Some(cpu) = &self.cpu {
                cpu.register(&spec.id, &spec.limits);
            }
        }
        let len = match std::fs::metadata(&p.image) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(NodeError::io("stat", &p.image)(e)),
        };
        let want = spec.limits.disk_bytes;
        if want >= len {
            self.open_disk(&p)?;
            hearth_disk::grow(&p.image, &p.disk, want)?;
            if want > len {
                tracing::info!(id = %spec.id, from = len, to = want, "disk grown");
            }
        }
        Ok(())
    }

    /// New cgroup limits for a running workspace. Memory is never set below what the
    /// workspace uses now (file cache included): on cgroup v2 that would OOM-kill inside
    /// rather than fail, and its PID 1 could be the victim.
    pub(super) fn set_cgroup_limits(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
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
                e => e.into(),
            })
    }
}
