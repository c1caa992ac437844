//! Taking a snapshot: a race-safe walk of the source with directory fds, then parallel
//! chunking/upload of the files whose (size, mtime, ctime, inode) differ from the parent.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::format::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
use crate::tree::{self, ChunkRef, Entry, Kind, Tree, Xattrs, ID_RANGE};
use crate::{
    check_workspace, io_err, rio_err, Known, Progress, SnapshotError, SnapshotInfo, Store,
};

/// Files up to this size are read whole and chunked in memory; larger ones are streamed.
const READ_WHOLE: u64 = 32 * 1024 * 1024;
const NOBODY: u32 = 65534;

/// Snapshots `src` (a workspace's upper dir, owned by host ids `uid_base..uid_base+65536`) for
/// `workspace`. With `parent`, files unchanged since the parent are not read again.
pub fn snapshot(
    store: &Store,
    workspace: &str,
    src: &Path,
    uid_base: u32,
    parent: Option<&str>,
    progress: Option<&Progress>,
) -> Result<SnapshotInfo, SnapshotError> {
    check_workspace(workspace)?;
    let started = std::time::Instant::now();
    let _lease = crate::maint::Lease::acquire_for_snapshot(store)?;
    let known = Known::default();
    let parent_tree = match parent {
        Some(pid) => {
            let info = store.get_record(pid)?;
            let t = store.get_tree(&info)?;
            // The parent's chunks exist: gc cannot run while our lease is held.
            for c in &info.tree {
                known.insert(c.id);
            }
            for e in &t.entries {
                if let Kind::File { chunks, .. } = &e.kind {
                    chunks.iter().for_each(|c| known.insert(c.id));
                }
            }
            Some(t)
        }
        None => None,
    };
    let parent_map: HashMap<&[u8], &Entry> = parent_tree
        .iter()
        .flat_map(|t| t.entries.iter().map(|e| (e.path.as_slice(), e)))
        .collect();

    let root = rustix::fs::open(
        src,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(rio_err(src))?;
    let mut w = Walker {
        src,
        base: uid_base,
        parent: parent_map,
        entries: Vec::new(),
        jobs: Vec::new(),
        links: HashMap::new(),
        xbuf: vec![0; 65536],
        vbuf: vec![0; 65536],
    };
    let st = rustix::fs::fstat(&root).map_err(rio_err(src))?;
    let st = St::from(&st);
    let xattrs = w.xattrs_fd(root.as_fd())?;
    w.entries.push(Entry {
        path: Vec::new(),
        kind: Kind::Dir,
        mode: st.mode & 0o7777,
        uid: w.map_id(st.uid, b""),
        gid: w.map_id(st.gid, b""),
        mtime: st.mtime,
        xattrs,
        ino: st.ino,
        ctime: st.ctime,
    });
    w.walk(root.as_fd(), &[])?;
    let Walker {
        mut entries, jobs, ..
    } = w;

    // Content: the expensive part, spread over all cores.
    let results: Vec<(usize, ChunkedFile, u64)> = crate::pool().install(|| {
        jobs.par_iter()
            .map(|&i| {
                let path = &entries[i].path;
                let (res, added) = chunk_file(store, root.as_fd(), src, path, &known, progress)?;
                Ok((i, res, added))
            })
            .collect::<Result<_, SnapshotError>>()
    })?;
    tracing::debug!(elapsed = ?started.elapsed(), "content done");
    let mut new_bytes = 0;
    let mut vanished = Vec::new();
    for (i, res, added) in results {
        new_bytes += added;
        match res {
            Some((kind, st)) => {
                let e = &mut entries[i];
                e.kind = kind;
                e.mtime = st.mtime;
                e.ctime = st.ctime;
                e.ino = st.ino;
            }
            None => vanished.push(i),
        }
    }
    if !vanished.is_empty() {
        let gone: std::collections::HashSet<usize> = vanished.into_iter().collect();
        let removed: std::collections::HashSet<Vec<u8>> =
            gone.iter().map(|&i| entries[i].path.clone()).collect();
        let mut idx = 0;
        entries.retain(|e| {
            let keep = !gone.contains(&idx)
                && !matches!(&e.kind, Kind::Hardlink { target } if removed.contains(target));
            idx += 1;
            keep
        });
    }

    let mut size = 0;
    let mut files = 0;
    for e in &entries {
        if let Kind::File { size: s, .. } = e.kind {
            size += s;
            files += 1;
        }
    }
    let tree_bytes = tree::encode(&Tree {
        version: tree::TREE_VERSION,
        entries,
    });
    let mut tree_refs = Vec::new();
    for c in fastcdc::v2020::FastCDC::new(&tree_bytes, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
        let (r, added) = store.put_chunk(&tree_bytes[c.offset..c.offset + c.length], &known)?;
        new_bytes += added;
        tree_refs.push(r);
    }
    let mut rnd = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut rnd);
    let info = SnapshotInfo {
        id: hex::encode(rnd),
        workspace: workspace.to_string(),
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        parent: parent.map(str::to_string),
        size,
        files,
        new_bytes,
        tree: tree_refs,
        tree_len: tree_bytes.len() as u64,
    };
    tracing::debug!(elapsed = ?started.elapsed(), "tree stored");
    // The record is the commit point: everything it references must be durable first.
    store.backend.sync()?;
    tracing::debug!(elapsed = ?started.elapsed(), "store synced");
    store.put_record(&info)?;
    store.backend.sync()?;
    tracing::info!(snapshot = %info.id, workspace, size, files, new_bytes, "snapshot taken");
    Ok(info)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct St {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub rdev: u64,
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl From<&rustix::fs::Stat> for St {
    #[allow(clippy::unnecessary_cast)]
    fn from(s: &rustix::fs::Stat) -> St {
        St {
            mode: s.st_mode as u32,
            uid: s.st_uid as u32,
            gid: s.st_gid as u32,
            ino: s.st_ino as u64,
            dev: s.st_dev as u64,
            nlink: s.st_nlink as u64,
            rdev: s.st_rdev as u64,
            size: s.st_size as u64,
            mtime: (s.st_mtime as i64, s.st_mtime_nsec as u32),
            ctime: (s.st_ctime as i64, s.st_ctime_nsec as u32),
        }
    }
}

struct Walker<'a> {
    src: &'a Path,
    base: u32,
    parent: HashMap<&'a [u8], &'a Entry>,
    entries: Vec<Entry>,
    /// Indices of file entries whose content must be read.
    jobs: Vec<usize>,
    /// (dev, ino) of multiply-linked files already seen, to their first path.
    links: HashMap<(u64, u64), Vec<u8>>,
    xbuf: Vec<u8>,
    vbuf: Vec<u8>,
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        p.extend_from_slice(prefix);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Walker<'_> {
    fn shown(&self, rel: &[u8]) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        self.src.join(std::ffi::OsStr::from_bytes(rel))
    }

    fn map_id(&self, host: u32, rel: &[u8]) -> u32 {
        match host.checked_sub(self.base) {
            Some(n) if n < ID_RANGE => n,
            _ => {
                tracing::warn!(path = %self.shown(rel).display(), host_id = host, base = self.base, "owner outside the workspace id range, stored as nobody");
                NOBODY
            }
        }
    }

    fn walk(&mut self, dir: BorrowedFd<'_>, prefix: &[u8]) -> Result<(), SnapshotError> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut rd = rustix::fs::Dir::read_from(dir).map_err(rio_err(self.shown(prefix)))?;
        while let Some(ent) = rd.read() {
            let ent = ent.map_err(rio_err(self.shown(prefix)))?;
            let name = ent.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        drop(rd);
        names.sort_unstable();
        for name in names {
            let rel = join(prefix, &name);
            let st = match rustix::fs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(s) => St::from(&s),
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(rio_err(self.shown(&rel))(e)),
            };
            let ft = FileType::from_raw_mode(st.mode);
            if ft == FileType::Directory {
                let sub = match rustix::fs::openat(
                    dir,
                    name.as_slice(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    // Replaced or removed since the stat: the workspace is live, skip it.
                    Err(
                        rustix::io::Errno::NOENT
                        | rustix::io::Errno::LOOP
                        | rustix::io::Errno::NOTDIR,
                    ) => continue,
                    Err(e) => return Err(rio_err(self.shown(&rel))(e)),
                };
                let st = St::from(&rustix::fs::fstat(&sub).map_err(rio_err(self.shown(&rel)))?);
                let xattrs = self.xattrs_reuse(&rel, &st, Some(sub.as_fd()), dir, &name)?;
                self.push(rel.clone(), Kind::Dir, &st, xattrs);
                self.walk(sub.as_fd(), &rel)?;
                continue;
            }
            if ft != FileType::Directory && st.nlink > 1 {
                if let Some(first) = self.links.get(&(st.dev, st.ino)) {
                    let target = first.clone();
                    self.push(rel, Kind::Hardlink { target }, &st, Vec::new());
                    continue;
                }
                self.links.insert((st.dev, st.ino), rel.clone());
            }
            let kind = match ft {
                FileType::RegularFile => {
                    if let Some(p) = self.unchanged(&rel, &st) {
                        if let Kind::File { .. } = p.kind {
                            let (kind, xattrs) = (p.kind.clone(), p.xattrs.clone());
                            self.push(rel, kind, &st, xattrs);
                            continue;
                        }
                    }
                    self.jobs.push(self.entries.len());
                    Kind::File {
                        size: st.size,
                        chunks: Vec::new(),
                    }
                }
                FileType::Symlink => match rustix::fs::readlinkat(dir, name.as_slice(), Vec::new())
                {
                    Ok(t) => Kind::Symlink {
                        target: t.into_bytes(),
                    },
                    Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL) => continue,
                    Err(e) => return Err(rio_err(self.shown(&rel))(e)),
                },
                FileType::Fifo => Kind::Fifo,
                FileType::CharacterDevice => Kind::CharDev { rdev: st.rdev },
                FileType::BlockDevice => Kind::BlockDev { rdev: st.rdev },
                _ => {
                    tracing::debug!(path = %self.shown(&rel).display(), "skipping socket");
                    continue;
                }
            };
            let xattrs = self.xattrs_reuse(&rel, &st, None, dir, &name)?;
            self.push(rel, kind, &st, xattrs);
        }
        Ok(())
    }

    fn unchanged(&self, rel: &[u8], st: &St) -> Option<&Entry> {
        let p = self.parent.get(rel)?;
        let size_ok = match p.kind {
            Kind::File { size, .. } => size == st.size,
            _ => true,
        };
        (p.ino == st.ino && p.ctime == st.ctime && p.mtime == st.mtime && size_ok).then_some(*p)
    }

    /// xattrs only change with the ctime, so an unchanged entry reuses the parent's.
    fn xattrs_reuse(
        &mut self,
        rel: &[u8],
        st: &St,
        fd: Option<BorrowedFd<'_>>,
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> Result<Xattrs, SnapshotError> {
        if let Some(p) = self.unchanged(rel, st) {
            return Ok(p.xattrs.clone());
        }
        match fd {
            Some(fd) => self.xattrs_fd(fd),
            None => {
                let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
                path.extend_from_slice(name);
                self.xattrs_path(&path, rel)
            }
        }
    }

    fn xattrs_fd(&mut self, fd: BorrowedFd<'_>) -> Result<Xattrs, SnapshotError> {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
        // Following the magic link is fine: it names this very (directory) fd.
        let n = match rustix::fs::listxattr(path.as_slice(), &mut self.xbuf[..]) {
            Ok(n) => n,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(rio_err(self.shown(b""))(e)),
        };
        let names: Vec<Vec<u8>> = self.xbuf[..n]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let mut out = Vec::new();
        for name in names {
            match rustix::fs::getxattr(path.as_slice(), name.as_slice(), &mut self.vbuf[..]) {
                Ok(len) => out.push((name, self.vbuf[..len].to_vec())),
                Err(rustix::io::Errno::NODATA) => {}
                Err(e) => return Err(rio_err(self.shown(b""))(e)),
            }
        }
        Ok(out)
    }

    /// `path` is `/proc/self/fd/<dirfd>/<name>`: resolution is pinned to the directory we
    /// opened and the final component is never followed.
    fn xattrs_path(&mut self, path: &[u8], rel: &[u8]) -> Result<Xattrs, SnapshotError> {
        let n = match rustix::fs::llistxattr(path, &mut self.xbuf[..]) {
            Ok(n) => n,
            Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::NOENT) => return Ok(Vec::new()),
            Err(e) => return Err(rio_err(self.shown(rel))(e)),
        };
        let names: Vec<Vec<u8>> = self.xbuf[..n]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let mut out = Vec::new();
        for name in names {
            match rustix::fs::lgetxattr(path, name.as_slice(), &mut self.vbuf[..]) {
                Ok(len) => out.push((name, self.vbuf[..len].to_vec())),
                Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(rio_err(self.shown(rel))(e)),
            }
        }
        Ok(out)
    }

    fn push(&mut self, path: Vec<u8>, kind: Kind, st: &St, xattrs: Xattrs) {
        let uid = self.map_id(st.uid, &path);
        let gid = self.map_id(st.gid, &path);
        self.entries.push(Entry {
            path,
            kind,
            mode: st.mode & 0o7777,
            uid,
            gid,
            mtime: st.mtime,
            xattrs,
            ino: st.ino,
            ctime: st.ctime,
        });
    }
}

/// New content and the stat it was read under; `None` when the file went away.
type ChunkedFile = Option<(Kind, St)>;

/// Reads, chunks and stores one file. `None` when it vanished or stopped being a regular file.
fn chunk_file(
    store: &Store,
    root: BorrowedFd<'_>,
    src: &Path,
    rel: &[u8],
    known: &Known,
    progress: Option<&Progress>,
) -> Result<(ChunkedFile, u64), SnapshotError> {
    use std::os::unix::ffi::OsStrExt;
    let shown = src.join(std::ffi::OsStr::from_bytes(rel));
    let fd: OwnedFd = match rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOATIME,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
            tracing::warn!(path = %shown.display(), "file vanished during snapshot, skipped");
            return Ok((None, 0));
        }
        Err(e) => return Err(rio_err(&shown)(e)),
    };
    let st = St::from(&rustix::fs::fstat(&fd).map_err(rio_err(&shown))?);
    if FileType::from_raw_mode(st.mode) != FileType::RegularFile {
        tracing::warn!(path = %shown.display(), "file changed type during snapshot, skipped");
        return Ok((None, 0));
    }
    let mut file = File::from(fd);
    let mut chunks = Vec::new();
    let mut added = 0;
    let mut size = 0u64;
    let mut push = |data: &[u8], chunks: &mut Vec<ChunkRef>| -> Result<(), SnapshotError> {
        let (r, a) = store.put_chunk(data, known)?;
        added += a;
        size += data.len() as u64;
        if let Some(p) = progress {
            p.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        chunks.push(r);
        Ok(())
    };
    if st.size <= READ_WHOLE {
        let mut buf = Vec::with_capacity(st.size as usize);
        file.by_ref()
            .take(READ_WHOLE)
            .read_to_end(&mut buf)
            .map_err(io_err(&shown))?;
        if buf.len() as u64 == READ_WHOLE {
            // Grew past the in-memory limit while we read: stream it instead.
            return chunk_stream(file, &shown, st, store, known, progress);
        }
        for c in fastcdc::v2020::FastCDC::new(&buf, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
            push(&buf[c.offset..c.offset + c.length], &mut chunks)?;
        }
    } else {
        return chunk_stream(file, &shown, st, store, known, progress);
    }
    if let Some(p) = progress {
        p.files.fetch_add(1, Ordering::Relaxed);
    }
    Ok((Some((Kind::File { size, chunks }, st)), added))
}

fn chunk_stream(
    mut file: File,
    shown: &Path,
    st: St,
    store: &Store,
    known: &Known,
    progress: Option<&Progress>,
) -> Result<(ChunkedFile, u64), SnapshotError> {
    use std::io::Seek;
    file.rewind().map_err(io_err(shown))?;
    let mut chunks = Vec::new();
    let mut added = 0;
    let mut size = 0u64;
    for c in fastcdc::v2020::StreamCDC::new(file, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
        let c = c.map_err(|e| SnapshotError::Io {
            path: shown.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let (r, a) = store.put_chunk(&c.data, known)?;
        added += a;
        size += c.length as u64;
        if let Some(p) = progress {
            p.bytes.fetch_add(c.length as u64, Ordering::Relaxed);
        }
        chunks.push(r);
    }
    if let Some(p) = progress {
        p.files.fetch_add(1, Ordering::Relaxed);
    }
    Ok((Some((Kind::File { size, chunks }, st)), added))
}
