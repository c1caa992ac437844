//! A workspace's private disk: a sparse file holding a btrfs filesystem, loop-mounted.
//!
//! Why a loop image and not quotas: the size of the file *is* the limit, on any host
//! filesystem (XFS and ext4 project quotas need mount options and kernel support this
//! tool cannot assume), and a full disk fails writes inside that workspace only.
//! Why btrfs inside it: a read-only subvolume snapshot is taken in milliseconds, so a
//! running workspace is paused only for that instant while a consistent copy of its
//! files is read at leisure (see `hearth-snapshot`).
//!
//! `mkfs.btrfs` and `mount` (util-linux) are run as programs; subvolumes use the btrfs
//! ioctls directly because snapshots happen while the workspace is frozen.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Smallest disk: below this btrfs spends most of the space on its own metadata.
pub const MIN_SIZE: u64 = 256 << 20;
/// Largest disk (a sparse file; this only guards against typos like a missing unit).
pub const MAX_SIZE: u64 = 64 << 40;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk size {size} bytes is out of range ({MIN_SIZE}..={MAX_SIZE})")]
    Size { size: u64 },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{program} not found: install btrfs-progs (apt-get install btrfs-progs)")]
    MissingTool { program: &'static str },
    #[error("{cmd} failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("invalid subvolume name {0:?}")]
    Name(String),
    #[error("disks only grow: {size} bytes is less than the current {current}")]
    Shrink { size: u64, current: u64 },
}

type Result<T> = std::result::Result<T, DiskError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn run(program: &'static str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            DiskError::MissingTool { program }
        } else {
            DiskError::Io {
                op: "run",
                path: program.into(),
                source: e,
            }
        }
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(DiskError::Command {
        cmd: format!(
            "{program} {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Checks that the tools are installed, so a node refuses to start rather than failing
/// its first `create`.
pub fn check_tools() -> Result<()> {
    match Command::new("mkfs.btrfs").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DiskError::MissingTool {
            program: "mkfs.btrfs",
        }),
        Err(e) => Err(DiskError::Io {
            op: "run",
            path: "mkfs.btrfs".into(),
            source: e,
        }),
    }
}

/// Makes a new sparse image of `size` bytes with an empty btrfs in it. Never overwrites:
/// an existing file is an error. A failed mkfs leaves no file behind.
pub fn create(image: &Path, size: u64) -> Result<()> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(DiskError::Size { size });
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(image)
        .map_err(io_err("create", image))?;
    let res = f
        .set_len(size)
        .map_err(io_err("truncate", image))
        .and_then(|()| {
            drop(f);
            run(
                "mkfs.btrfs",
                &["-q".as_ref(), "-f".as_ref(), image.as_os_str()],
            )
        });
    if res.is_err() {
        let _ = std::fs::remove_file(image);
    }
    res
}

/// Largest file the filesystem holding `dir` accepts (ext4 with 4 KiB blocks: 16 TiB less
/// a block), found by sizing an unnamed sparse probe file, which allocates nothing. Callers
/// keep the answer: it does not change while the filesystem is mounted.
pub fn max_file_size(dir: &Path) -> Result<u64> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .map_err(io_err("create a probe file in", dir))?;
    let top = i64::MAX as u64;
    if f.set_len(top).is_ok() {
        return Ok(top);
    }
    // `lo` always fits, `hi` never does.
    let (mut lo, mut hi) = (0u64, top);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if f.set_len(mid).is_ok() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Most page cache a disk may hold dirty (see [`limit_dirty`]).
pub const DIRTY_MAX: u64 = 256 << 20;

/// Loop-mounts `image` on `target`, its dirty page cache bounded by [`DIRTY_MAX`]. The loop
/// device is set to auto-clear, so unmounting releases it.
pub fn mount(image: &Path, target: &Path) -> Result<()> {
    mount_only(image, target)?;
    if let Err(e) = limit_dirty(target, DIRTY_MAX) {
        tracing::warn!(disk = %target.display(), "cannot bound its dirty page cache: {e}");
    }
    Ok(())
}

fn mount_only(image: &Path, target: &Path) -> Result<()> {
    run(
        "mount",
        &[
            "-t".as_ref(),
            "btrfs".as_ref(),
            "-o".as_ref(),
            "loop,discard=async,noatime,nodev,nosuid".as_ref(),
            image.as_os_str(),
            target.as_os_str(),
        ],
    )
}

/// Bytes of the filesystem mounted at `mountpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub size: u64,
    pub used: u64,
    pub available: u64,
}

pub fn usage(mountpoint: &Path) -> Result<Usage> {
    let st = nix::sys::statvfs::statvfs(mountpoint)
        .map_err(|e| io_err("statvfs", mountpoint)(e.into()))?;
    let frag = st.fragment_size();
    let size = st.blocks() * frag;
    Ok(Usage {
        size,
        used: size.saturating_sub(st.blocks_free() * frag),
        available: st.blocks_available() * frag,
    })
}

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2` (the union members we use).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

nix::ioctl_write_ptr!(subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
nix::ioctl_write_ptr!(snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
nix::ioctl_write_ptr!(snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);
nix::ioctl_read!(fs_info, BTRFS_IOCTL_MAGIC, 31, FsInfo);
nix::ioctl_write_ptr!(btrfs_resize, BTRFS_IOCTL_MAGIC, 3, VolArgs);
// LOOP_SET_CAPACITY takes no argument.
nix::ioctl_none_bad!(loop_set_capacity, 0x4C07);

/// Grows the disk `image`, mounted at `mountpoint`, to `size` bytes while it is in use:
/// the file is extended (sparse), its loop device told, then btrfs resized to fill it.
/// Disks never shrink (a smaller `size` is an error, not a no-op). Crash-safe: each step
/// leaves a usable disk, and repeating the call finishes the job.
pub fn grow(image: &Path, mountpoint: &Path, size: u64) -> Result<()> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(DiskError::Size { size });
    }
    let f = OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(io_err("open", image))?;
    let len = f.metadata().map_err(io_err("stat", image))?.len();
    if size < len {
        return Err(DiskError::Shrink { size, current: len });
    }
    f.set_len(size).map_err(io_err("truncate", image))?;
    drop(f);
    let dev = loop_device_of(image, mountpoint)?;
    let loopf = OpenOptions::new()
        .read(true)
        .open(&dev)
        .map_err(io_err("open", &dev))?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument; `loopf` is an open loop device.
    unsafe { loop_set_capacity(loopf.as_raw_fd()) }
        .map_err(|e| io_err("LOOP_SET_CAPACITY", &dev)(e.into()))?;
    let dir = open_dir(mountpoint)?;
    let args = VolArgs {
        fd: 0,
        name: entry_name("max")?,
    };
    // SAFETY: `args` is a fully initialised `btrfs_ioctl_vol_args` naming the new size
    // ("max": all of the device) that outlives the call.
    unsafe { btrfs_resize(dir.as_raw_fd(), &args) }
        .map_err(|e| io_err("BTRFS_IOC_RESIZE", mountpoint)(e.into()))?;
    Ok(())
}

/// The loop device (`/dev/loopN`) the btrfs at `mountpoint` sits on, checked to be backed
/// by `image` (a stale loop device of the same file is never the one resized).
fn loop_device_of(image: &Path, mountpoint: &Path) -> Result<PathBuf> {
    let devices = sysfs_dir(mountpoint)?.join("devices");
    let want = image.canonicalize().map_err(io_err("resolve", image))?;
    let rd = std::fs::read_dir(&devices).map_err(io_err("read", &devices))?;
    for e in rd.flatten() {
        let name = e.file_name();
        let backing = Path::new("/sys/block")
            .join(&name)
            .join("loop/backing_file");
        if let Ok(b) = std::fs::read_to_string(&backing) {
            if Path::new(b.trim()) == want {
                return Ok(Path::new("/dev").join(name));
            }
        }
    }
    Err(DiskError::Io {
        op: "find the loop device of",
        path: image.to_path_buf(),
        source: io::Error::other(format!(
            "{} is not on a loop device backed by it",
            mountpoint.display()
        )),
    })
}

/// `struct btrfs_ioctl_fs_info_args` (1024 bytes; we read only `fsid`).
#[repr(C)]
struct FsInfo {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 992],
}

/// `/sys/fs/btrfs/<fsid>` of the btrfs mounted at `mountpoint`.
fn sysfs_dir(mountpoint: &Path) -> Result<PathBuf> {
    let dir = open_dir(mountpoint)?;
    let mut info = FsInfo {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 992],
    };
    // SAFETY: `info` is a writable `btrfs_ioctl_fs_info_args`-sized buffer that outlives
    // the call, and `dir` is an open fd.
    unsafe { fs_info(dir.as_raw_fd(), &mut info) }
        .map_err(|e| io_err("BTRFS_IOC_FS_INFO", mountpoint)(e.into()))?;
    let h: String = info.fsid.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    );
    Ok(Path::new("/sys/fs/btrfs").join(uuid))
}

/// Bounds how much of the filesystem mounted at `mountpoint` may sit dirty in the page
/// cache (its writeback device's `max_bytes`, with `strict_limit` so the bound holds even
/// while the host as a whole is under its dirty thresholds). Data not yet written back
/// is what could still land on the host after the node freezes a workspace for lack of
/// space, so it must be small and known; sequential writes still run at disk speed.
/// Needs Linux 6.2+ (`max_bytes`).
pub fn limit_dirty(mountpoint: &Path, bytes: u64) -> Result<()> {
    let bdi = sysfs_dir(mountpoint)?.join("bdi");
    for (file, value) in [
        ("max_bytes", bytes.to_string()),
        ("strict_limit", "1".into()),
    ] {
        let path = bdi.join(file);
        std::fs::write(&path, value).map_err(io_err("write", &path))?;
    }
    Ok(())
}

/// A name for a new entry directly in `parent`: one component, no NUL.
fn entry_name<const N: usize>(name: &str) -> Result<[u8; N]> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() < N;
    if !ok {
        return Err(DiskError::Name(name.into()));
    }
    let mut buf = [0u8; N];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    Ok(buf)
}

fn open_dir(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("open", path))
}

/// Creates subvolume `parent/name`.
pub fn create_subvolume(parent: &Path, name: &str) -> Result<()> {
    let dir = open_dir(parent)?;
    let args = VolArgs {
        fd: 0,
        name: entry_name(name)?,
    };
    // SAFETY: `args` is a fully initialised `btrfs_ioctl_vol_args` that outlives the call,
    // and `dir` is an open directory fd.
    unsafe { subvol_create(dir.as_raw_fd(), &args) }
        .map_err(|e| io_err("create subvolume in", parent)(e.into()))?;
    Ok(())
}

/// Takes a read-only snapshot of subvolume `src` as `parent/name`. Atomic: the snapshot
/// holds every write that completed before the call.
pub fn snapshot_readonly(src: &Path, parent: &Path, name: &str) -> Result<()> {
    let src_dir = open_dir(src)?;
    let dir = open_dir(parent)?;
    let args = VolArgsV2 {
        fd: i64::from(src_dir.as_raw_fd()),
        transid: 0,
        flags: BTRFS_SUBVOL_RDONLY,
        unused: [0; 4],
        name: entry_name(name)?,
    };
    // SAFETY: `args` is a fully initialised `btrfs_ioctl_vol_args_v2` that outlives the
    // call; both fds are open directories.
    unsafe { snap_create_v2(dir.as_raw_fd(), &args) }
        .map_err(|e| io_err("snapshot", src)(e.into()))?;
    Ok(())
}

/// Deletes subvolume `parent/name` with everything in it. A missing one is not an error.
pub fn delete_subvolume(parent: &Path, name: &str) -> Result<()> {
    let dir = open_dir(parent)?;
    let args = VolArgs {
        fd: 0,
        name: entry_name(name)?,
    };
    // SAFETY: as in `create_subvolume`.
    match unsafe { snap_destroy(dir.as_raw_fd(), &args) } {
        Ok(_) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io_err("delete subvolume", &parent.join(name))(e.into())),
    }
}

/// Whether `path` is the root of a btrfs subvolume (inode 256 on a btrfs).
pub fn is_subvolume(path: &Path) -> bool {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let Ok(fs) = nix::sys::statfs::statfs(c.as_c_str()) else {
        return false;
    };
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    fs.filesystem_type().0 == BTRFS_SUPER_MAGIC && md.ino() == BTRFS_FIRST_FREE_OBJECTID
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components() {
        for bad in ["", ".", "..", "a/b", "/a", "a\0b"] {
            assert!(entry_name::<16>(bad).is_err(), "{bad:?}");
        }
        assert!(entry_name::<4>("abcd").is_err(), "too long for the buffer");
        let b = entry_name::<8>("snap").unwrap();
        assert_eq!(&b[..5], b"snap\0");
    }

    #[test]
    fn sizes_are_bounded() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("d.img");
        assert!(matches!(
            create(&img, MIN_SIZE - 1),
            Err(DiskError::Size { .. })
        ));
        assert!(matches!(
            create(&img, MAX_SIZE + 1),
            Err(DiskError::Size { .. })
        ));
        assert!(!img.exists());
    }
}
