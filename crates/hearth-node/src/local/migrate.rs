//! Moving a workspace made before workspaces had their own disk onto one.

use super::{mkdir, Inner, Paths, LEGACY_UPPER};
use crate::{NodeError, WorkspaceSpec};

impl Inner {
    /// Moves the files of a workspace made before workspaces had disks (its upper dir
    /// directly in the workspace dir) onto a new disk. The old dir is kept, renamed, until
    /// the operator deletes it: nothing local is deleted by an upgrade.
    pub(super) fn migrate_legacy(&self, spec: &WorkspaceSpec, p: &Paths) -> Result<(), NodeError> {
        let legacy = p.dir.join(LEGACY_UPPER);
        if p.image.exists() || !legacy.is_dir() {
            return Ok(());
        }
        if self.host.is_mounted(&p.rootfs)? {
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
                .map_err(NodeError::io("run", "cp"))?;
            if !out.status.success() {
                return Err(NodeError::Internal(format!(
                    "copying {} onto the workspace disk: {}",
                    legacy.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let fs = std::fs::File::open(&p.upper).map_err(NodeError::io("open", &p.upper))?;
            rustix::fs::syncfs(&fs).map_err(|e| NodeError::io("syncfs", &p.upper)(e.into()))
        })();
        if let Err(e) = res {
            // Back to the old layout, untouched.
            if let Err(e2) = self.unmount_all(&p.disk).and_then(|()| {
                let _ = std::fs::remove_dir(&p.disk);
                std::fs::remove_file(&p.image).map_err(NodeError::io("remove", &p.image))
            }) {
                tracing::error!(id = %spec.id, "undoing a failed disk migration: {e2}");
            }
            return Err(e);
        }
        let kept = p.dir.join("upper.pre-disk");
        std::fs::rename(&legacy, &kept).map_err(NodeError::io("rename", &legacy))?;
        let _ = std::fs::remove_dir_all(p.dir.join("work"));
        tracing::warn!(id = %spec.id, kept = %kept.display(), "workspace moved onto its disk; the old copy can be deleted");
        Ok(())
    }
}
