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

/// Bind-mounts the directory `src` at `dest` (components below `root`, e.g. `["var",
/// "lib", "containers"]`) inside the mounted overlay `root`, creating missing components
/// owned by `owner` (the workspace's root). The path inside belongs to the workspace, so
/// it is walked one component at a time refusing symlinks and `..`
/// (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`), and the mount is attached to the
/// directory fd that walk returned: a link the workspace planted never moves the mount
/// out of its root. `src` is the node's own path.
pub fn bind_beneath(src: &Path, root: &Path, dest: &[&str], owner: u32) -> Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let open = |dir: &OwnedFd, name: &str| {
        rustix::fs::openat2(
            dir,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    };
    let mut at = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RuntimeError::io("open", root, e.into()))?;
    let mut path = root.to_path_buf();
    for name in dest {
        if name.is_empty() || *name == "." || *name == ".." || name.contains('/') {
            return Err(RuntimeError::Bundle(format!(
                "bad mount path component {name:?}"
            )));
        }
        path.push(name);
        let next = match open(&at, name) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                // A directory fd opened with O_PATH cannot create entries: reopen it.
                let parent = rustix::fs::openat(
                    &at,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| RuntimeError::io("open", &path, e.into()))?;
                match rustix::fs::mkdirat(&parent, *name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(RuntimeError::io("mkdir", &path, e.into())),
                }
                let fd = open(&at, name).map_err(|e| RuntimeError::io("open", &path, e.into()))?;
                rustix::fs::chownat(
                    &fd,
                    "",
                    Some(rustix::fs::Uid::from_raw(owner)),
                    Some(rustix::fs::Gid::from_raw(owner)),
                    rustix::fs::AtFlags::EMPTY_PATH,
                )
                .map_err(|e| RuntimeError::io("chown", &path, e.into()))?;
                fd
            }
            Err(e) => return Err(RuntimeError::io("open (no symlinks)", &path, e.into())),
        };
        at = next;
    }
    let tree = open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| RuntimeError::io("open_tree", src, e.into()))?;
    rustix::mount::move_mount(
        &tree,
        "",
        &at,
        "",
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
            | rustix::mount::MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| RuntimeError::io("move_mount", &path, e.into()))
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

    /// The bind lands at the path inside the root, with missing directories made for
    /// the given owner; a symlink anywhere on the path (the workspace's doing) fails the
    /// mount instead of following it out of the root.
    #[test]
    fn bind_beneath_stays_in_the_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (bind mounts, chown): run the tests as root, as scripts/test.sh does"
        );
        let t = tempfile::tempdir().unwrap();
        let (src, root) = (t.path().join("src"), t.path().join("root"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("marker"), b"cache").unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = unmount(&self.0);
            }
        }
        let dest = root.join("var/lib/containers");
        let guard = Unmount(dest.clone());
        bind_beneath(&src, &root, &["var", "lib", "containers"], 4242).unwrap();
        assert!(is_mounted(&dest).unwrap());
        assert_eq!(std::fs::read(dest.join("marker")).unwrap(), b"cache");
        drop(guard);
        assert!(!is_mounted(&dest).unwrap());
        // Made by the bind (var existed): the workspace's root owns them.
        for made in [root.join("var/lib"), dest.clone()] {
            assert_eq!(std::fs::metadata(&made).unwrap().uid(), 4242);
        }
        assert_eq!(std::fs::metadata(root.join("var")).unwrap().uid(), 0);

        // var/lib replaced by a link to the host's /var/lib (or a relative escape).
        let outside = t.path().join("outside");
        std::fs::create_dir_all(outside.join("containers")).unwrap();
        std::fs::remove_dir_all(root.join("var/lib")).unwrap();
        for link in [outside.clone(), PathBuf::from("../../outside")] {
            let _ = std::fs::remove_file(root.join("var/lib"));
            std::os::unix::fs::symlink(&link, root.join("var/lib")).unwrap();
            let _guard = Unmount(outside.join("containers"));
            let e = bind_beneath(&src, &root, &["var", "lib", "containers"], 4242);
            assert!(e.is_err(), "followed {}", link.display());
            assert!(!is_mounted(&outside.join("containers")).unwrap());
            assert!(!outside.join("containers/marker").exists());
        }
        assert!(bind_beneath(&src, &root, &["var", "..", "x"], 0).is_err());
    }
}
