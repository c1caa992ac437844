//! Idmapped layer mounts and the overlay root.
//!
//! Image layers are unpacked once, owned by host ids 0..65535, and shared by every
//! workspace. Each workspace sees them through an idmapped mount that shifts those ids
//! into its own range, so nothing is chowned per workspace. Overlayfs takes private
//! clones of its lower mounts when it is mounted, so the detached idmapped trees only
//! have to live until the overlay mount call returns.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::mount::{open_tree, OpenTreeFlags};

use crate::{Result, RuntimeError};

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached, idmapped clone of `src` (not attached anywhere in the mount tree).
pub fn idmapped_tree(src: &Path, userns: &OwnedFd) -> Result<OwnedFd> {
    let tree = open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| RuntimeError::io("open_tree", src, e.into()))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: mount_setattr reads `attr` (size passed) and the empty path; both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(RuntimeError::io(
            "mount_setattr(idmap)",
            src,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(tree)
}

/// Mounts overlayfs at `target` with `lowers` (bottom layer first) shown through
/// `userns`'s mapping, and `upper`/`work` as the writable layer.
pub fn mount_overlay(
    lowers_bottom_first: &[PathBuf],
    userns: &OwnedFd,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<()> {
    let mut trees = Vec::with_capacity(lowers_bottom_first.len());
    for l in lowers_bottom_first {
        trees.push(idmapped_tree(l, userns)?);
    }
    // Overlay lists the top layer first. /proc/self/fd/N resolves to the detached tree.
    let lower: Vec<String> = trees
        .iter()
        .rev()
        .map(|t| format!("/proc/self/fd/{}", t.as_raw_fd()))
        .collect();
    // Upper and work dirs by fd too, so the workspace's mountinfo (which shows these
    // strings) does not name host paths.
    let open = |p: &Path| {
        rustix::fs::open(
            p,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| RuntimeError::io("open", p, e.into()))
    };
    let (upper_fd, work_fd) = (open(upper)?, open(work)?);
    let mut data = format!(
        "lowerdir={},upperdir=/proc/self/fd/{},workdir=/proc/self/fd/{}",
        lower.join(":"),
        upper_fd.as_raw_fd(),
        work_fd.as_raw_fd()
    );
    if lowers_bottom_first.is_empty() {
        return Err(RuntimeError::Bundle("image has no layers".into()));
    }
    // Exposed inode numbers stay stable across remounts (git and build tools notice changes).
    data.push_str(",xino=auto");
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| RuntimeError::io("mount overlay", target, e.into()))?;
    drop((trees, upper_fd, work_fd));
    Ok(())
}

/// Detaches whatever is mounted at `target`; not mounted is fine.
pub fn unmount(target: &Path) -> Result<()> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(RuntimeError::io("umount", target, e.into())),
    }
}

/// Whether `path` is a mount point: its mount id differs from its parent's (two statx
/// calls; reading mountinfo instead costs O(mounts), which is O(workspaces) per call).
/// Falls back to /proc/self/mountinfo where statx cannot say.
pub fn is_mounted(path: &Path) -> Result<bool> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let mnt_id = |p: &Path| {
        statx(CWD, p, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID)
            .map(|s| (s.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(s.stx_mnt_id))
    };
    match (mnt_id(path), path.parent().map(mnt_id)) {
        (Err(rustix::io::Errno::NOENT), _) => return Ok(false),
        (Ok(Some(a)), Some(Ok(Some(b)))) => return Ok(a != b),
        _ => {}
    }
    Ok(mounts_under(path)?.iter().any(|m| m == path))
}

/// Mount points at or below `prefix` (deepest last), from /proc/self/mountinfo.
pub fn mounts_under(prefix: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read("/proc/self/mountinfo")
        .map_err(|e| RuntimeError::io("read", "/proc/self/mountinfo", e))?;
    let mut out = Vec::new();
    for line in info.split(|b| *b == b'\n') {
        let Some(mp) = line.split(|b| *b == b' ').nth(4) else {
            continue;
        };
        let p = PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(mp)));
        if p.starts_with(prefix) {
            out.push(p);
        }
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The statx check agrees with mountinfo: a mount of another filesystem, a bind
    /// mount of a dir onto itself (same filesystem), a plain dir, a missing path.
    #[test]
    fn mount_points_by_mount_id() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (mounts a tmpfs and a bind mount)"
        );
        let t = tempfile::tempdir().unwrap();
        let (fs, bind, plain) = (
            t.path().join("fs"),
            t.path().join("bind"),
            t.path().join("plain"),
        );
        for d in [&fs, &bind, &plain] {
            std::fs::create_dir(d).unwrap();
        }
        nix::mount::mount(
            Some("tmpfs"),
            &fs,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let bound = nix::mount::mount(
            Some(&bind),
            &bind,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
        let checks = (|| {
            bound.map_err(|e| format!("bind: {e}"))?;
            for (p, want) in [(&fs, true), (&bind, true), (&plain, false)] {
                let from_info = mounts_under(p).unwrap().iter().any(|m| m == p);
                assert_eq!(from_info, want, "mountinfo for {}", p.display());
                assert_eq!(is_mounted(p).unwrap(), want, "{}", p.display());
            }
            assert!(!is_mounted(&t.path().join("missing")).unwrap());
            assert!(is_mounted(Path::new("/")).unwrap());
            Ok::<(), String>(())
        })();
        let _ = unmount(&bind);
        let _ = unmount(&fs);
        checks.unwrap();
    }

    #[test]
    fn unescape_mountinfo() {
        assert_eq!(unescape(br"/a\040b"), b"/a b");
        assert_eq!(unescape(br"/a\\"), br"/a\\");
    }

    /// Two workspaces over one shared layer see it with their own owners, and writes
    /// land in their own upper dirs only.
    #[test]
    fn overlay_over_idmapped_layers() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (idmapped and overlay mounts): run the tests as root, as scripts/test.sh does"
        );
        let t = tempfile::tempdir().unwrap();
        let layer = t.path().join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(layer.join("etc/file"), b"shared").unwrap();
        struct Unmount(Vec<PathBuf>);
        impl Drop for Unmount {
            fn drop(&mut self) {
                for p in &self.0 {
                    let _ = unmount(p);
                }
            }
        }
        let mut guard = Unmount(vec![]);
        for (i, base) in [(0, 1_100_000u32), (1, 1_200_000)] {
            let d = t.path().join(format!("ws{i}"));
            for s in ["upper", "work", "rootfs"] {
                std::fs::create_dir_all(d.join(s)).unwrap();
            }
            std::os::unix::fs::chown(d.join("upper"), Some(base), Some(base)).unwrap();
            let ns = crate::userns::userns_fd(base, 65536).unwrap();
            guard.0.push(d.join("rootfs"));
            mount_overlay(
                std::slice::from_ref(&layer),
                &ns,
                &d.join("upper"),
                &d.join("work"),
                &d.join("rootfs"),
            )
            .unwrap();
            assert!(is_mounted(&d.join("rootfs")).unwrap());
            let m = std::fs::metadata(d.join("rootfs/etc/file")).unwrap();
            assert_eq!(m.uid(), base, "layer file owned by the workspace's root");
            std::fs::write(d.join("rootfs/new"), b"x").unwrap();
            assert!(d.join("upper/new").exists());
        }
        assert!(!layer.join("new").exists(), "shared layer untouched");
        drop(guard);
        assert!(!is_mounted(&t.path().join("ws0/rootfs")).unwrap());
    }
}
