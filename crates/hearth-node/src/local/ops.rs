//! The seam between the node's lifecycle logic and the host: what a start sets up,
//! what cleanup and reconcile tear down.
//!
//! Narrow on purpose (one method per thing the lifecycle does, not per syscall), so the
//! order of a start, its undo on failure, and reconcile's choices are unit-tested with a
//! fake host without root (`local/tests.rs`). The real implementation is the cgroups,
//! network, runtime, mount and disk code.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_cgroups::Cgroups;
use hearth_net::Network;
use hearth_runtime::bundle::{self, BundleSpec};
use hearth_runtime::mount;
use hearth_runtime::oci::{OciRuntime, State};

use super::agent;
use crate::{EgressRule, NodeError, WorkspaceId, ID_RANGE};

pub(super) trait HostOps: Send + Sync {
    // The OCI runtime and the agent it starts.
    fn container_state(&self, id: &WorkspaceId) -> Result<Option<State>, NodeError>;
    fn containers(&self) -> Result<Vec<WorkspaceId>, NodeError>;
    fn write_bundle(&self, dir: &Path, spec: &BundleSpec) -> Result<(), NodeError>;
    /// Starts the container from `bundle` in the workspace's cgroup, handing PID 1 the
    /// agent's listening socket.
    fn run_container(
        &self,
        id: &WorkspaceId,
        bundle: &Path,
        listener: BorrowedFd<'_>,
        console: OwnedFd,
    ) -> Result<(), NodeError>;
    fn signal_container(&self, id: &WorkspaceId, signal: &str) -> Result<(), NodeError>;
    /// Deletes the container (killing it); an unknown one is fine.
    fn delete_container(&self, id: &WorkspaceId) -> Result<(), NodeError>;
    fn wait_agent(&self, socket: &Path, console: &Path) -> Result<(), NodeError>;

    // Cgroups.
    fn create_cgroup(
        &self,
        id: &WorkspaceId,
        limits: &hearth_cgroups::Limits,
    ) -> Result<(), NodeError>;
    fn cgroups(&self) -> Result<Vec<WorkspaceId>, NodeError>;
    /// SIGKILLs what is left in the workspace's cgroup; a missing one is fine.
    fn kill_cgroup(&self, id: &WorkspaceId) -> Result<(), NodeError>;
    /// Removes the (empty) cgroup; a missing one is fine.
    fn remove_cgroup(&self, id: &WorkspaceId) -> Result<(), NodeError>;

    // Network.
    /// Makes the netns and veth unless they exist and puts the egress policy `deny` in
    /// force; returns the netns path.
    fn ensure_network(
        &self,
        id: &WorkspaceId,
        slot: u32,
        deny: &[EgressRule],
    ) -> Result<PathBuf, NodeError>;
    fn apply_egress(
        &self,
        id: &WorkspaceId,
        slot: u32,
        deny: &[EgressRule],
    ) -> Result<(), NodeError>;
    /// [`HostOps::apply_egress`] for many workspaces (one nft run on the real host);
    /// returns the ones that failed.
    fn apply_egress_many(
        &self,
        ws: &[(&WorkspaceId, u32, &[EgressRule])],
    ) -> Vec<(WorkspaceId, NodeError)> {
        ws.iter()
            .filter_map(|&(id, slot, deny)| {
                self.apply_egress(id, slot, deny)
                    .err()
                    .map(|e| (id.clone(), e))
            })
            .collect()
    }
    fn networks(&self) -> Result<Vec<WorkspaceId>, NodeError>;
    /// Removes the veth, netns and egress rules; whatever is gone already is fine.
    fn remove_network(&self, id: &WorkspaceId) -> Result<(), NodeError>;

    // Mounts and disks.
    fn is_mounted(&self, path: &Path) -> Result<bool, NodeError>;
    /// Mounts the workspace's overlay root: the image's layers shown through the
    /// workspace's id mapping, `upper`/`work` as its writable layer, and `containers` (a
    /// builder's, see `Paths::containers`) bound over its `/var/lib/containers`.
    fn mount_rootfs(
        &self,
        layers: &[PathBuf],
        uid_base: u32,
        upper: &Path,
        work: &Path,
        rootfs: &Path,
        containers: Option<&Path>,
    ) -> Result<(), NodeError>;
    /// Mounts the disk image at `dir` unless it is mounted.
    fn open_disk(&self, image: &Path, dir: &Path) -> Result<(), NodeError>;
    fn mounts_under(&self, dir: &Path) -> Result<Vec<PathBuf>, NodeError>;
    fn unmount(&self, path: &Path) -> Result<(), NodeError>;

    // Processes
    /// Gives every thread of host process `pid` a priority class.
    fn set_priority(&self, pid: u32, class: crate::priority::Class) -> std::io::Result<()>;
    /// Keeps the OOM killer off host process `pid` (a workspace's agent).
    fn shield_from_oom(&self, pid: u32) -> std::io::Result<()>;
}

/// Where a builder's nested container storage is bound inside (podman's graph root's
/// parent, so its default storage.conf applies).
pub(super) const CONTAINERS_DEST: [&str; 3] = ["var", "lib", "containers"];

/// The host itself.
pub(super) struct RealHost {
    pub(super) cgroups: Arc<Cgroups>,
    pub(super) net: Arc<Network>,
    pub(super) runtime: OciRuntime,
}

impl HostOps for RealHost {
    fn container_state(&self, id: &WorkspaceId) -> Result<Option<State>, NodeError> {
        self.runtime.state(id).map_err(NodeError::from)
    }

    fn containers(&self) -> Result<Vec<WorkspaceId>, NodeError> {
        // Containers of other tools in the same runtime root are not ours.
        let names = self.runtime.list()?;
        Ok(names
            .into_iter()
            .filter_map(|n| WorkspaceId::new(n).ok())
            .collect())
    }

    fn write_bundle(&self, dir: &Path, spec: &BundleSpec) -> Result<(), NodeError> {
        bundle::write(dir, spec).map_err(NodeError::from)
    }

    fn run_container(
        &self,
        id: &WorkspaceId,
        bundle: &Path,
        listener: BorrowedFd<'_>,
        console: OwnedFd,
    ) -> Result<(), NodeError> {
        self.runtime
            .run_detached(id, bundle, listener, console, &self.cgroups.procs_files(id))
            .map_err(NodeError::from)
    }

    fn signal_container(&self, id: &WorkspaceId, signal: &str) -> Result<(), NodeError> {
        self.runtime.kill(id, signal).map_err(NodeError::from)
    }

    fn delete_container(&self, id: &WorkspaceId) -> Result<(), NodeError> {
        self.runtime.delete(id).map_err(NodeError::from)
    }

    fn wait_agent(&self, socket: &Path, console: &Path) -> Result<(), NodeError> {
        agent::wait_ready(socket, console)
    }

    fn create_cgroup(
        &self,
        id: &WorkspaceId,
        limits: &hearth_cgroups::Limits,
    ) -> Result<(), NodeError> {
        self.cgroups.create(id, limits).map_err(NodeError::from)
    }

    fn cgroups(&self) -> Result<Vec<WorkspaceId>, NodeError> {
        self.cgroups.list().map_err(NodeError::from)
    }

    fn kill_cgroup(&self, id: &WorkspaceId) -> Result<(), NodeError> {
        let exists = self
            .cgroups
            .list()
            .map(|l| l.iter().any(|g| g == id))
            .unwrap_or(true);
        if exists {
            self.cgroups.kill_all(id)?;
        }
        Ok(())
    }

    fn remove_cgroup(&self, id: &WorkspaceId) -> Result<(), NodeError> {
        self.cgroups.remove(id).map_err(NodeError::from)
    }

    fn ensure_network(
        &self,
        id: &WorkspaceId,
        slot: u32,
        deny: &[EgressRule],
    ) -> Result<PathBuf, NodeError> {
        self.net
            .ensure(id, slot, deny)
            .map(|n| n.netns_path)
            .map_err(NodeError::from)
    }

    fn apply_egress(
        &self,
        id: &WorkspaceId,
        slot: u32,
        deny: &[EgressRule],
    ) -> Result<(), NodeError> {
        Ok(self.net.apply_egress(id, slot, deny)?)
    }

    fn apply_egress_many(
        &self,
        ws: &[(&WorkspaceId, u32, &[EgressRule])],
    ) -> Vec<(WorkspaceId, NodeError)> {
        self.net
            .apply_egress_many(ws)
            .into_iter()
            .map(|(id, e)| (id, NodeError::from(e)))
            .collect()
    }

    fn networks(&self) -> Result<Vec<WorkspaceId>, NodeError> {
        self.net.list().map_err(NodeError::from)
    }

    fn remove_network(&self, id: &WorkspaceId) -> Result<(), NodeError> {
        self.net.teardown(id).map_err(NodeError::from)
    }

    fn is_mounted(&self, path: &Path) -> Result<bool, NodeError> {
        mount::is_mounted(path).map_err(NodeError::from)
    }

    fn mount_rootfs(
        &self,
        layers: &[PathBuf],
        uid_base: u32,
        upper: &Path,
        work: &Path,
        rootfs: &Path,
        containers: Option<&Path>,
    ) -> Result<(), NodeError> {
        let ns = hearth_runtime::userns::userns_fd(uid_base, ID_RANGE)?;
        mount::mount_overlay(layers, &ns, upper, work, rootfs)?;
        if let Some(dir) = containers {
            let bound = mount::bind_beneath(dir, rootfs, &CONTAINERS_DEST, uid_base);
            if let Err(e) = bound {
                let _ = mount::unmount(rootfs);
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn open_disk(&self, image: &Path, dir: &Path) -> Result<(), NodeError> {
        if !mount::is_mounted(dir)? {
            hearth_disk::mount(image, dir)?;
        } else if let Err(e) = hearth_disk::limit_dirty(dir, hearth_disk::DIRTY_MAX) {
            // Mounted by an older node; the limit only bounds what the reserve must hold.
            tracing::warn!(disk = %dir.display(), "cannot bound its dirty page cache: {e}");
        }
        Ok(())
    }

    fn mounts_under(&self, dir: &Path) -> Result<Vec<PathBuf>, NodeError> {
        mount::mounts_under(dir).map_err(NodeError::from)
    }

    fn unmount(&self, path: &Path) -> Result<(), NodeError> {
        mount::unmount(path).map_err(NodeError::from)
    }

    fn set_priority(&self, pid: u32, class: crate::priority::Class) -> std::io::Result<()> {
        let pid = i32::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
        crate::priority::set_class(pid, class)
    }

    fn shield_from_oom(&self, pid: u32) -> std::io::Result<()> {
        super::oom::shield_from_oom(pid)
    }
}
