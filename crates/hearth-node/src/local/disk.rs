//! A workspace's disk: making, mounting and unmounting it.

use std::path::Path;

use hearth_runtime::mount;

use super::{disk_err, internal, mkdir, Inner, Paths};
use crate::NodeError;

impl Inner {
    /// Makes and mounts a new disk image at `p.image` / `p.disk`, with the overlay's work
    /// dir (which must share the upper's filesystem).
    pub(super) fn make_disk(&self, p: &Paths, size: u64) -> Result<(), NodeError> {
        hearth_disk::create(&p.image, size).map_err(|e| match e {
            hearth_disk::DiskError::Size { .. } => NodeError::Invalid(e.to_string()),
            e => disk_err(e),
        })?;
        mkdir(&p.disk, 0o700)?;
        hearth_disk::mount(&p.image, &p.disk).map_err(disk_err)?;
        hearth_disk::create_subvolume(&p.disk, "data").map_err(disk_err)?;
        mkdir(&p.work, 0o700)
    }

    /// Mounts the workspace's disk if it is not (after a host reboot or a `rm` cut short).
    pub(super) fn open_disk(&self, p: &Paths) -> Result<(), NodeError> {
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
    pub(super) fn unmount_all(&self, dir: &Path) -> Result<(), NodeError> {
        let mut ms = mount::mounts_under(dir).map_err(internal)?;
        ms.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in ms {
            mount::unmount(&m).map_err(internal)?;
        }
        Ok(())
    }
}
