//! Where a workspace's files live under the node's data dir.

use std::path::{Path, PathBuf};

use super::Inner;

pub(super) struct Paths {
    pub(super) dir: PathBuf,
    /// The workspace's disk: a sparse btrfs image, the only place its writes go.
    pub(super) image: PathBuf,
    /// Where the disk is mounted (while the workspace has local data).
    pub(super) disk: PathBuf,
    /// The subvolume holding `upper` and `work`: overlay renames from work into upper,
    /// which fails across subvolumes, and snapshots copy this one.
    pub(super) vol: PathBuf,
    /// The overlay's upper dir (`/workspace` included).
    pub(super) upper: PathBuf,
    pub(super) work: PathBuf,
    /// A builder's nested container storage (podman's layers and cache), bound at its
    /// `/var/lib/containers`: on the disk but outside the overlay, so podman's overlay
    /// driver runs natively (overlayfs refuses an overlayfs upper dir; fuse-overlayfs
    /// and its whole-tree diff of every layer made a cached rebuild ~5x slower), and
    /// outside what snapshots copy (a cache, remade by the next build).
    pub(super) containers: PathBuf,
    pub(super) rootfs: PathBuf,
    pub(super) bundle: PathBuf,
    pub(super) socket: PathBuf,
    /// Rotated console files, on the workspace's disk (outside what snapshots copy), so
    /// they count against its disk limit.
    pub(super) console: PathBuf,
    /// The pipe the container's stdout/stderr are (see `crate::console`).
    pub(super) console_fifo: PathBuf,
    /// The unbounded console file of workspaces started by an older node.
    pub(super) legacy_console: PathBuf,
}

impl Inner {
    pub(super) fn paths(&self, id: &str) -> Paths {
        self.paths_in(&self.ws_root.join(id))
    }

    /// The layout of a workspace dir at `dir` (the real one, or a restore being built).
    pub(super) fn paths_in(&self, dir: &Path) -> Paths {
        let dir = dir.to_path_buf();
        Paths {
            image: dir.join("disk.img"),
            disk: dir.join("disk"),
            vol: dir.join("disk/data"),
            upper: dir.join("disk/data/upper"),
            work: dir.join("disk/data/work"),
            containers: dir.join("disk/containers"),
            rootfs: dir.join("rootfs"),
            bundle: dir.join("bundle"),
            socket: dir.join("agent.sock"),
            console: dir.join("disk/console"),
            console_fifo: dir.join("console.fifo"),
            legacy_console: dir.join("console.log"),
            dir,
        }
    }
}
