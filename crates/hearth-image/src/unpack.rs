//! Unpacking of untrusted layer tarballs into a directory that becomes an overlay lowerdir.
//!
//! Layers come from anywhere, and the store runs as host root, so nothing in a layer may write
//! outside its directory: every parent directory is resolved with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` relative to the layer directory (symlinks,
//! absolute or with `..`, stay inside it), and the last component is created with `*at` calls that
//! never follow a symlink. Paths with a `..` component are refused outright.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

use crate::ImageError;

/// Longest entry path (or link target) accepted, in bytes (PATH_MAX).
pub const MAX_PATH: usize = 4096;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What an unpack wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Sum of regular file sizes.
    pub bytes: u64,
    pub entries: u64,
}

/// Unpacks an uncompressed layer tar from `reader` into the existing directory `dest`.
///
/// `layer` names the layer in errors. Whiteouts become overlayfs whiteouts (`.wh.name` is a 0:0
/// char device `name`, `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory). Device
/// nodes are skipped (the runtime provides /dev). Stops at the tar end-of-archive marker; the
/// caller drains whatever follows if it hashes the stream.
pub fn unpack_layer<R: Read>(
    reader: R,
    dest: &Path,
    layer: &str,
) -> Result<UnpackStats, ImageError> {
    let root = rfs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::Io {
        path: dest.to_path_buf(),
        source: e.into(),
    })?;
    let mut unpacker = Unpacker {
        root: root.as_fd(),
        layer,
        stats: UnpackStats::default(),
        dir_times: Vec::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| unpacker.err("<archive>", format!("cannot read tar: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| unpacker.err("<archive>", format!("cannot read tar: {e}")))?;
        unpacker.entry(&mut entry)?;
        unpacker.stats.entries += 1;
    }
    unpacker.finish();
    Ok(unpacker.stats)
}

struct Unpacker<'a> {
    root: BorrowedFd<'a>,
    layer: &'a str,
    stats: UnpackStats,
    /// Directory mtimes, applied at the end because creating children changes them.
    dir_times: Vec<(Vec<OsString>, i64)>,
}

/// Owner, mode, time and xattrs of one entry, after PAX overrides.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl<'a> Unpacker<'a> {
    fn err(&self, entry: impl Into<String>, reason: impl Into<String>) -> ImageError {
        ImageError::Entry {
            layer: self.layer.to_string(),
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let comps = sanitize(&raw_path).map_err(|reason| self.err(&name, reason))?;
        let kind = entry.header().entry_type();
        let meta = self.meta(entry).map_err(|reason| self.err(&name, reason))?;

        let Some((last, parents)) = comps.split_last() else {
            // The layer root itself ("./"): only a directory entry makes sense.
            if kind == EntryType::Directory {
                self.apply_meta(self.root, &meta)
                    .map_err(|e| self.err(&name, format!("cannot set metadata: {e}")))?;
                self.dir_times.push((Vec::new(), meta.mtime));
                return Ok(());
            }
            return Err(self.err(&name, "entry has an empty path"));
        };

        let parent = open_dir(self.root, parents, true).map_err(|e| {
            self.err(
                &name,
                format!("parent directory does not resolve to a directory inside the layer: {e}"),
            )
        })?;
        let last_bytes = last.as_bytes();

        if last_bytes == OPAQUE_WHITEOUT {
            return rfs::fsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| self.err(&name, format!("cannot mark directory opaque: {e}")));
        }
        if let Some(hidden) = last_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(self.err(&name, "whiteout of an invalid name"));
            }
            let hidden = OsStr::from_bytes(hidden);
            return self
                .whiteout(&parent, hidden, &meta)
                .map_err(|e| self.err(&name, format!("cannot create whiteout: {e}")));
        }

        match kind {
            EntryType::Directory => {
                self.directory(&parent, last, &meta)
                    .map_err(|e| self.err(&name, format!("cannot create directory: {e}")))?;
                self.dir_times.push((comps.clone(), meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                let expected = entry.header().entry_size().unwrap_or(0);
                let written = self
                    .regular(&parent, last, entry, &meta)
                    .map_err(|e| self.err(&name, format!("cannot create file: {e}")))?;
                if written != expected {
                    return Err(self.err(
                        &name,
                        format!("truncated: header claims {expected} bytes, stream held {written}"),
                    ));
                }
                self.stats.bytes += written;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.err(&name, "symlink without a target"))?;
                if target.len() > MAX_PATH {
                    return Err(self.err(&name, "symlink target longer than 4096 bytes"));
                }
                self.symlink(&parent, last, &target, &meta)
                    .map_err(|e| self.err(&name, format!("cannot create symlink: {e}")))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| self.err(&name, "hardlink without a target"))?;
                let target_name = String::from_utf8_lossy(&target).into_owned();
                let tcomps = sanitize(&target).map_err(|reason| {
                    self.err(&name, format!("hardlink target {target_name:?}: {reason}"))
                })?;
                self.hardlink(&parent, last, &comps, &tcomps)
                    .map_err(|reason| {
                        self.err(&name, format!("hardlink to {target_name:?}: {reason}"))
                    })?;
            }
            EntryType::Fifo => {
                self.fifo(&parent, last, &meta)
                    .map_err(|e| self.err(&name, format!("cannot create fifo: {e}")))?;
            }
            EntryType::Char | EntryType::Block => {
                tracing::warn!(layer = self.layer, entry = %name, "skipping device node");
            }
            other => {
                tracing::warn!(layer = self.layer, entry = %name, kind = ?other, "skipping unsupported tar entry");
            }
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Meta, String> {
        let header = entry.header();
        let old = header.as_old();
        let mut uid = numeric(&old.uid, header.uid()).map_err(|e| format!("bad uid: {e}"))?;
        let mut gid = numeric(&old.gid, header.gid()).map_err(|e| format!("bad gid: {e}"))?;
        let mode = numeric(&old.mode, header.mode().map(u64::from))
            .map_err(|e| format!("bad mode: {e}"))? as u32
            & 0o7777;
        let mut mtime = numeric(&old.mtime, header.mtime())
            .map_err(|e| format!("bad mtime: {e}"))
            .map(|t| i64::try_from(t).unwrap_or(0))?;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| format!("bad pax header: {e}"))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| format!("bad pax header: {e}"))?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let number = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.split('.').next())
                        .and_then(|v| v.parse::<i64>().ok())
                };
                match key {
                    "uid" => uid = number().and_then(|v| u64::try_from(v).ok()).unwrap_or(uid),
                    "gid" => gid = number().and_then(|v| u64::try_from(v).ok()).unwrap_or(gid),
                    "mtime" => mtime = number().unwrap_or(mtime),
                    _ => {
                        if let Some(xattr) = key.strip_prefix("SCHILY.xattr.") {
                            if xattr_allowed(xattr) {
                                xattrs.push((xattr.to_string(), value.to_vec()));
                            } else {
                                tracing::debug!(xattr, "skipping xattr");
                            }
                        }
                    }
                }
            }
        }
        let id = |v: u64, what: &str| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| format!("{what} {v} out of range"))
        };
        Ok(Meta {
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            mode,
            mtime,
            xattrs,
        })
    }

    /// Owner first: chown clears setuid/setgid bits, so the mode comes after it.
    fn apply_meta(&self, fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(meta.uid)),
            Some(rfs::Gid::from_raw(meta.gid)),
        )?;
        rfs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
        for (name, value) in &meta.xattrs {
            if let Err(e) = rfs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()) {
                tracing::warn!(layer = self.layer, xattr = %name, error = %e, "cannot set xattr");
            }
        }
        Ok(())
    }

    fn directory(&self, parent: &OwnedFd, name: &OsStr, meta: &Meta) -> io::Result<()> {
        match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    rfs::unlinkat(parent, name, AtFlags::empty())?;
                    rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        let fd = rfs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        self.apply_meta(fd.as_fd(), meta)
    }

    fn regular<R: Read>(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        data: &mut R,
        meta: &Meta,
    ) -> io::Result<u64> {
        clear(parent, name)?;
        let fd = rfs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut file = File::from(fd);
        let written = io::copy(data, &mut file)?;
        self.apply_meta(file.as_fd(), meta)?;
        rfs::futimens(&file, &times(meta.mtime))?;
        Ok(written)
    }

    fn symlink(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        target: &[u8],
        meta: &Meta,
    ) -> io::Result<()> {
        clear(parent, name)?;
        rfs::symlinkat(OsStr::from_bytes(target), parent, name)?;
        self.chown_at(parent, name, meta)?;
        rfs::utimensat(parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    fn fifo(&self, parent: &OwnedFd, name: &OsStr, meta: &Meta) -> io::Result<()> {
        clear(parent, name)?;
        rfs::mknodat(parent, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
        self.chown_at(parent, name, meta)?;
        // The layer dir is private to the store, so nothing can swap the fifo for a symlink here.
        rfs::chmodat(
            parent,
            name,
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )?;
        rfs::utimensat(parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    fn whiteout(&self, parent: &OwnedFd, name: &OsStr, meta: &Meta) -> io::Result<()> {
        clear(parent, name)?;
        rfs::mknodat(
            parent,
            name,
            FileType::CharacterDevice,
            Mode::empty(),
            rfs::makedev(0, 0),
        )?;
        self.chown_at(parent, name, meta)
    }

    fn chown_at(&self, parent: &OwnedFd, name: &OsStr, meta: &Meta) -> io::Result<()> {
        rfs::chownat(
            parent,
            name,
            Some(rfs::Uid::from_raw(meta.uid)),
            Some(rfs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    fn hardlink(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        comps: &[OsString],
        target: &[OsString],
    ) -> Result<(), String> {
        let Some((tlast, tparents)) = target.split_last() else {
            return Err("empty target".to_string());
        };
        if target == comps {
            return Ok(());
        }
        let tparent = open_dir(self.root, tparents, false)
            .map_err(|e| format!("target does not resolve inside the layer: {e}"))?;
        // Check the target before removing whatever the entry replaces.
        rfs::statat(&tparent, tlast.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| format!("target does not exist inside the layer: {e}"))?;
        clear(parent, name).map_err(|e| format!("cannot replace existing entry: {e}"))?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never what it points to.
        rfs::linkat(&tparent, tlast.as_os_str(), parent, name, AtFlags::empty())
            .map_err(|e| format!("cannot link: {e}"))
    }

    fn finish(&mut self) {
        for (comps, mtime) in self.dir_times.iter().rev() {
            let res = open_dir(self.root, comps, false)
                .and_then(|fd| Ok(rfs::futimens(&fd, &times(*mtime))?));
            if let Err(e) = res {
                tracing::debug!(layer = self.layer, error = %e, "cannot set directory mtime");
            }
        }
    }
}

/// A header number; an all-blank field (tar writers that leave it unset) reads as 0.
fn numeric(raw: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    if raw.iter().all(|b| *b == 0 || *b == b' ') {
        return Ok(0);
    }
    parsed
}

/// Splits an entry path into components: leading `/` and `.` components are dropped, `..` is
/// refused, and so is anything longer than [`MAX_PATH`].
pub fn sanitize(raw: &[u8]) -> Result<Vec<OsString>, String> {
    if raw.len() > MAX_PATH {
        return Err(format!("path longer than {MAX_PATH} bytes"));
    }
    let mut comps = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains a '..' component".to_string()),
            c => comps.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(comps)
}

/// xattrs a layer may carry: file capabilities, ACLs and user attributes. Other `security.*`
/// (SELinux labels) and every `trusted.*` (overlayfs' own metadata!) are refused.
fn xattr_allowed(name: &str) -> bool {
    name == "security.capability"
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
        || name.starts_with("user.")
}

/// Removes a non-directory (or an empty directory) so an entry can take its place.
fn clear(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match rfs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => Ok(rfs::unlinkat(parent, name, AtFlags::REMOVEDIR)?),
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory at `comps` resolved inside `root` (symlinks cannot leave it). With
/// `create`, missing directories are made (root-owned, 0755), as tar does for implicit parents.
fn open_dir(root: BorrowedFd<'_>, comps: &[OsString], create: bool) -> io::Result<OwnedFd> {
    let path: PathBuf = if comps.is_empty() {
        PathBuf::from(".")
    } else {
        comps.iter().collect()
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let open = || {
        // EAGAIN only happens on a concurrent rename somewhere in the filesystem: retry a bit.
        let mut tries = 0;
        loop {
            match rfs::openat2(root, &path, flags, Mode::empty(), resolve) {
                Err(Errno::AGAIN) if tries < 16 => tries += 1,
                other => return other,
            }
        }
    };
    match open() {
        Ok(fd) => Ok(fd),
        Err(Errno::NOENT) if create => {
            let Some((last, parents)) = comps.split_last() else {
                return Err(Errno::NOENT.into());
            };
            let parent = open_dir(root, parents, true)?;
            match rfs::mkdirat(&parent, last.as_os_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                // Something (a dangling symlink) is there but does not resolve to a directory.
                Err(Errno::EXIST) => return Err(Errno::NOTDIR.into()),
                Err(e) => return Err(e.into()),
            }
            Ok(open()?)
        }
        Err(e) => Err(e.into()),
    }
}

fn times(mtime: i64) -> Timestamps {
    let ts = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_and_refuses() {
        assert_eq!(
            sanitize(b"./a//b/./c/").unwrap(),
            vec![
                OsString::from("a"),
                OsString::from("b"),
                OsString::from("c")
            ]
        );
        assert_eq!(sanitize(b"/etc/passwd").unwrap().len(), 2);
        assert!(sanitize(b"./").unwrap().is_empty());
        assert!(sanitize(b"a/../b").is_err());
        assert!(sanitize(b"..").is_err());
        assert!(sanitize(&vec![b'a'; MAX_PATH + 1]).is_err());
    }

    #[test]
    fn xattr_policy() {
        assert!(xattr_allowed("security.capability"));
        assert!(xattr_allowed("user.foo"));
        assert!(!xattr_allowed("security.selinux"));
        assert!(!xattr_allowed("trusted.overlay.opaque"));
        assert!(!xattr_allowed("trusted.overlay.redirect"));
    }
}
