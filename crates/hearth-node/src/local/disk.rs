//! A workspace's disk: making, mounting and unmounting it.

use std::path::Path;

use super::{mkdir, Inner, Paths};
use crate::NodeError;

impl Inner {
    /// Makes and mounts a new disk image at `p.image` / `p.disk`, with the overlay's work
    /// dir (which must share the upper's filesystem).
    pub(super) fn make_disk(&self, p: &Paths, size: u64) -> Result<(), NodeError> {
        hearth_disk::create(&p.image, size).map_err(|e| match e {
            hearth_disk::DiskError::Size { .. } => NodeError::Invalid(e.to_string()),
            e => e.into(),
        })?;
        mkdir(&p.disk, 0o700)?;
        hearth_disk::mount(&p.image, &p.disk)?;
        hearth_disk::create_subvolume(&p.disk, "data")?;
        mkdir(&p.work, 0o700)
    }

    /// Mounts the workspace's disk if it is not (after a host reboot or a `rm` cut short).
    pub(super) fn open_disk(&self, p: &Paths) -> Result<(), NodeError> {
        self.host.open_disk(&p.image, &p.disk)?;
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
        let mut ms = self.host.mounts_under(dir)?;
        ms.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in ms {
            self.host.unmount(&m)?;
        }
        Ok(())
    }
}
