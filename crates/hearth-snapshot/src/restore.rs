//! Restoring a snapshot into an empty directory, treating the snapshot as hostile.
//!
//! The tree is validated first (see [`tree::validate`]); then every object is created with
//! `*at` calls on a parent fd obtained by `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! from the target, with `O_EXCL`/`O_NOFOLLOW` on the final component. Even a tree that slipped
//! past validation cannot write outside the target or through a symlink.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::format::ChunkId;
use crate::pack::{self, Index, Loc};
use crate::tree::{self, ChunkRef, Entry, Kind};
use crate::{rio_err, Progress, SnapshotError, Store};

/// Restores snapshot `id` into `target` (created if missing, else it must be empty), shifting
/// owners to `uid_base`. Every chunk is verified; a bad chunk fails the restore naming the files
/// that need it, and the partially written file is removed.
pub fn restore(
    store: &Store,
    id: &str,
    target: &Path,
    uid_base: u32,
    progress: Option<&Progress>,
) -> Result<(), SnapshotError> {
    let (tree, index) = load(store, id)?;
    restore_tree(store, id, &tree, &index, target, uid_base, progress, None)
}

/// Files of at least this size are restored as placeholders by [`restore_lazy`]: such a
/// file owns its chunks (smaller ones share bundles), so filling one never fetches another
/// file's bytes, and the small files that make up most entries but few bytes come eagerly.
pub const LAZY_MIN: u64 = 256 * 1024;

/// Marks a placeholder: its value is the decimal index of its tree entry. Removed (after
/// the content is on disk) by [`Lazy::fill`]; snapshots never copy it.
pub const PENDING_XATTR: &str = "trusted.hearth.pending";

/// A snapshot's tree, loaded to fill the placeholders [`restore_lazy`] made.
pub struct Lazy {
    id: String,
    entries: Vec<Entry>,
    index: Index,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy").field("id", &self.id).finish()
    }
}

/// A placeholder found by [`pending`].
#[derive(Debug, Clone)]
pub struct Placeholder {
    /// Relative to the restore target.
    pub path: PathBuf,
    pub ino: u64,
    pub entry: usize,
}

/// Like [`restore`], but every regular file of at least [`LAZY_MIN`] bytes is created at its
/// final size, owner, mode and times with no content, marked with [`PENDING_XATTR`]; the
/// caller must keep them from being read until [`Lazy::fill`] filled them.
pub fn restore_lazy(
    store: &Store,
    id: &str,
    target: &Path,
    uid_base: u32,
) -> Result<Lazy, SnapshotError> {
    let (tree, index) = load(store, id)?;
    restore_tree(
        store,
        id,
        &tree,
        &index,
        target,
        uid_base,
        None,
        Some(LAZY_MIN),
    )?;
    Ok(Lazy {
        id: id.to_string(),
        entries: tree.entries,
        index,
    })
}

/// The placeholders left below `target` (after a crash, or to resume), without opening any
/// file: reads the marker with `lgetxattr`.
pub fn pending(target: &Path) -> Result<Vec<Placeholder>, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let dir = target.join(&rel);
        for ent in std::fs::read_dir(&dir).map_err(crate::io_err(&dir))? {
            let ent = ent.map_err(crate::io_err(&dir))?;
            let ft = ent.file_type().map_err(crate::io_err(ent.path()))?;
            let r = rel.join(ent.file_name());
            if ft.is_dir() {
                dirs.push(r);
            } else if ft.is_file() {
                let mut buf = [0u8; 24];
                let path = ent.path();
                match rustix::fs::lgetxattr(&path, PENDING_XATTR, &mut buf[..]) {
                    Ok(n) => {
                        let entry = std::str::from_utf8(&buf[..n])
                            .ok()
                            .and_then(|s| s.parse().ok());
                        let Some(entry) = entry else {
                            return Err(SnapshotError::Corrupt {
                                key: path.display().to_string(),
                                reason: format!("bad {PENDING_XATTR} value"),
                            });
                        };
                        let md = ent.metadata().map_err(crate::io_err(&path))?;
                        out.push(Placeholder {
                            path: r,
                            ino: md.ino(),
                            entry,
                        });
                    }
                    Err(rustix::io::Errno::NODATA) => {}
                    Err(e) => return Err(rio_err(path)(e)),
                }
            }
        }
    }
    Ok(out)
}

impl Lazy {
    /// Loads snapshot `id`'s tree again (to resume after a restart).
    pub fn open(store: &Store, id: &str) -> Result<Lazy, SnapshotError> {
        let (tree, index) = load(store, id)?;
        Ok(Lazy {
            id: id.to_string(),
            entries: tree.entries,
            index,
        })
    }

    pub fn snapshot(&self) -> &str {
        &self.id
    }

    /// The size entry `i` has in the snapshot (`None` if it is no regular file).
    pub fn size(&self, i: usize) -> Option<u64> {
        match self.entries.get(i).map(|e| &e.kind) {
            Some(Kind::File { size, .. }) => Some(*size),
            _ => None,
        }
    }

    /// Writes entry `i`'s content into the placeholder `file` (opened for writing), puts
    /// back the times, set-id bits and file capabilities a write clears, syncs, and only
    /// then removes the marker, so a crash at any point leaves a placeholder, never a
    /// half-filled file that looks done. A file truncated meanwhile (a path `truncate`,
    /// which opens nothing) gets the snapshot's bytes up to its new size, as if the
    /// truncate had come after the content. Returns the bytes written.
    pub fn fill(&self, store: &Store, i: usize, file: &File) -> Result<u64, SnapshotError> {
        let shown = |e: &Entry| PathBuf::from(tree::display(&e.path));
        let e = self.entries.get(i).ok_or_else(|| SnapshotError::Invalid {
            id: self.id.clone(),
            reason: format!("placeholder names entry {i}, which the tree does not have"),
        })?;
        let Kind::File {
            size,
            chunks,
            start,
        } = &e.kind
        else {
            return Err(SnapshotError::Invalid {
                id: self.id.clone(),
                reason: format!("placeholder names entry {i}, which is no regular file"),
            });
        };
        let st = rustix::fs::fstat(file).map_err(rio_err(shown(e)))?;
        let now_len = u64::try_from(st.st_size).unwrap_or(0);
        let r = Restorer {
            store,
            index: &self.index,
            root: file.as_fd(),
            target: Path::new(""),
            base: 0,
            progress: None,
            plain_umask: None,
        };
        let mut cache = HashMap::new();
        r.prefetch(&[i], &self.entries, &mut cache, None);
        let (lo, hi) = (u64::from(*start), u64::from(*start) + (*size).min(now_len));
        let mut pos = 0u64;
        let mut written = 0u64;
        for c in chunks {
            if pos >= hi {
                break;
            }
            let data = r.chunk(c, &self.entries, &cache)?;
            let (a, b) = (lo.max(pos), hi.min(pos + data.len() as u64));
            if a < b {
                let part = &data[(a - pos) as usize..(b - pos) as usize];
                write_sparse(file, part, a - lo).map_err(crate::io_err(shown(e)))?;
                written += part.len() as u64;
            }
            pos += data.len() as u64;
        }
        // A write clears set-id bits and security.capability, and moves the mtime.
        if st.st_mode & 0o6000 != 0 {
            rustix::fs::fchmod(file, Mode::from_raw_mode(st.st_mode & 0o7777))
                .map_err(rio_err(shown(e)))?;
        }
        for (n, v) in e.xattrs.iter().filter(|(n, _)| n == b"security.capability") {
            rustix::fs::fsetxattr(file, n.as_slice(), v, XattrFlags::empty())
                .map_err(rio_err(shown(e)))?;
        }
        let ts = |s: i64, ns: i64| Timespec {
            tv_sec: s,
            tv_nsec: ns as _,
        };
        let times = Timestamps {
            last_access: ts(st.st_atime, st.st_atime_nsec as i64),
            last_modification: ts(st.st_mtime, st.st_mtime_nsec as i64),
        };
        rustix::fs::futimens(file, &times).map_err(rio_err(shown(e)))?;
        file.sync_data().map_err(crate::io_err(shown(e)))?;
        match rustix::fs::fremovexattr(file, PENDING_XATTR) {
            Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(written),
            Err(err) => Err(rio_err(shown(e))(err)),
        }
    }
}

fn load(store: &Store, id: &str) -> Result<(tree::Tree, Index), SnapshotError> {
    let info = store.get_record(id)?;
    let (index, bad) = Index::load(store)?;
    for (key, e) in bad {
        tracing::warn!(index = %key, error = %e, "unreadable index object");
    }
    let tree = store.get_tree(&info, &index)?;
    tree::validate(&tree).map_err(|reason| SnapshotError::Invalid {
        id: id.to_string(),
        reason,
    })?;
    Ok((tree, index))
}

#[allow(clippy::too_many_arguments)]
fn restore_tree(
    store: &Store,
    id: &str,
    tree: &tree::Tree,
    index: &Index,
    target: &Path,
    uid_base: u32,
    progress: Option<&Progress>,
    lazy_min: Option<u64>,
) -> Result<(), SnapshotError> {
    let started = std::time::Instant::now();
    if uid_base.checked_add(tree::ID_RANGE).is_none() {
        return Err(SnapshotError::Invalid {
            id: id.to_string(),
            reason: format!("uid base {uid_base} too large"),
        });
    }

    match std::fs::create_dir(target) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(crate::io_err(target)(e))
        }
        _ => {}
    }
    let root = rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(rio_err(target))?;
    {
        let mut rd = rustix::fs::Dir::read_from(&root).map_err(rio_err(target))?;
        while let Some(ent) = rd.read() {
            let ent = ent.map_err(rio_err(target))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                return Err(SnapshotError::TargetNotEmpty(target.to_path_buf()));
            }
        }
    }
    let r = Restorer {
        store,
        index,
        root: root.as_fd(),
        target,
        base: uid_base,
        progress,
        plain_umask: plain_umask(root.as_fd()),
    };

    tracing::debug!(elapsed = ?started.elapsed(), "tree loaded");
    // Directories by depth: each level in parallel, parents before children (mkdir) or
    // children before parents (metadata, so creating children does not bump mtimes).
    let mut levels: Vec<Vec<&Entry>> = Vec::new();
    for e in tree.entries.iter().skip(1).filter(|e| e.kind == Kind::Dir) {
        let depth = e.path.iter().filter(|&&b| b == b'/').count();
        if levels.len() <= depth {
            levels.resize_with(depth + 1, Vec::new);
        }
        levels[depth].push(e);
    }
    // 1. directories, parents first.
    store.pool().install(|| {
        levels
            .iter()
            .try_for_each(|l| l.par_iter().try_for_each(|e| r.mkdir(e)))
    })?;
    // 2. file contents, in parallel units of neighbouring files (which share bundles and
    // packs, so each unit reads its packs in a few large ranged reads).
    tracing::debug!(elapsed = ?started.elapsed(), "directories made");
    let units = units(&tree.entries);
    store.pool().install(|| {
        units
            .par_iter()
            .try_for_each(|u| r.unit(u, &tree.entries, lazy_min))
    })?;
    tracing::debug!(elapsed = ?started.elapsed(), "files written");
    // 3. everything else; hardlinks point at files made in step 2.
    store.pool().install(|| {
        tree.entries
            .par_iter()
            .skip(1)
            .filter(|e| !matches!(e.kind, Kind::Dir | Kind::File { .. }))
            .try_for_each(|e| r.other(e))
    })?;
    tracing::debug!(elapsed = ?started.elapsed(), "others made");
    // 4. directory metadata last and deepest first, so creating children does not bump mtimes.
    let dir_meta = |e: &Entry| -> Result<(), SnapshotError> {
        let fd = r.open_beneath(&e.path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let fd = fd.as_ref().map(|f| f.as_fd()).unwrap_or(r.root);
        r.meta_fd(fd, e, true)
    };
    store.pool().install(|| {
        levels
            .iter()
            .rev()
            .try_for_each(|l| l.par_iter().try_for_each(|e| dir_meta(e)))
    })?;
    dir_meta(&tree.entries[0])?;
    tracing::info!(snapshot = id, target = %target.display(), "snapshot restored");
    Ok(())
}

/// Files are restored in units of about this much content.
const UNIT_BYTES: u64 = 8 * 1024 * 1024;
/// Chunks of a unit in the same pack are fetched in one read when the gap between them is at
/// most this, and a read stays under [`MAX_READ`].
const READ_GAP: u64 = 1024 * 1024;
const MAX_READ: u64 = 32 * 1024 * 1024;

/// Groups the file entries, in tree order, into units; a large file is a unit of its own. A
/// unit is not cut between two files of the same bundle, so no bundle is decoded twice.
fn units(entries: &[Entry]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut acc = 0u64;
    let mut last: Option<ChunkId> = None;
    for (i, e) in entries.iter().enumerate() {
        let Kind::File { size, chunks, .. } = &e.kind else {
            continue;
        };
        if *size > UNIT_BYTES {
            out.push(vec![i]);
            continue;
        }
        let first = chunks.first().map(|c| c.id);
        if acc >= UNIT_BYTES && (first.is_none() || first != last) {
            out.push(std::mem::take(&mut cur));
            acc = 0;
        }
        cur.push(i);
        acc += size;
        if let Some(c) = chunks.last() {
            last = Some(c.id);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub(crate) struct Restorer<'a> {
    store: &'a Store,
    index: &'a Index,
    root: BorrowedFd<'a>,
    target: &'a Path,
    base: u32,
    progress: Option<&'a Progress>,
    /// The process umask, when new files in the target get exactly `mode & !umask` (no
    /// default ACL on the target).
    plain_umask: Option<u32>,
}

impl Restorer<'_> {
    fn shown(&self, rel: &[u8]) -> PathBuf {
        self.target.join(std::ffi::OsStr::from_bytes(rel))
    }

    /// Opens `rel` beneath the target without following any symlink; `None` means the root.
    fn open_beneath(&self, rel: &[u8], flags: OFlags) -> Result<Option<OwnedFd>, SnapshotError> {
        if rel.is_empty() {
            return Ok(None);
        }
        rustix::fs::openat2(
            self.root,
            rel,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        )
        .map(Some)
        .map_err(rio_err(self.shown(rel)))
    }

    /// Runs `f(parent_fd, leaf_name)` for `rel`.
    fn at<T>(
        &self,
        rel: &[u8],
        f: impl FnOnce(BorrowedFd<'_>, &[u8]) -> rustix::io::Result<T>,
    ) -> Result<T, SnapshotError> {
        let (parent, name) = tree::split_parent(rel);
        let pfd = self.open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        let pfd = pfd.as_ref().map(|f| f.as_fd()).unwrap_or(self.root);
        f(pfd, name).map_err(rio_err(self.shown(rel)))
    }

    fn mkdir(&self, e: &Entry) -> Result<(), SnapshotError> {
        self.at(&e.path, |p, name| {
            rustix::fs::mkdirat(p, name, Mode::from_raw_mode(0o700))
        })
    }

    /// Restores the files `ix`: prefetches the chunks of small files with coalesced pack
    /// reads, then writes each file. Chunks that fail to prefetch are fetched again one by one
    /// (trying every copy), which yields the error naming the files.
    fn unit(
        &self,
        ix: &[usize],
        all: &[Entry],
        lazy_min: Option<u64>,
    ) -> Result<(), SnapshotError> {
        let mut cache: HashMap<ChunkId, Arc<Vec<u8>>> = HashMap::new();
        let small = ix.len() > 1
            || ix.first().is_some_and(
                |&i| matches!(all[i].kind, Kind::File { size, .. } if size <= UNIT_BYTES),
            );
        if small {
            self.prefetch(ix, all, &mut cache, lazy_min);
        }
        let mut parent: Option<(Vec<u8>, Option<OwnedFd>)> = None;
        for &i in ix {
            let e = &all[i];
            let (p, _) = tree::split_parent(&e.path);
            if parent.as_ref().is_none_or(|(cp, _)| cp.as_slice() != p) {
                let fd = self.open_beneath(p, OFlags::PATH | OFlags::DIRECTORY)?;
                parent = Some((p.to_vec(), fd));
            }
            let pfd = parent
                .as_ref()
                .and_then(|(_, fd)| fd.as_ref().map(|f| f.as_fd()))
                .unwrap_or(self.root);
            match (&e.kind, lazy_min) {
                (Kind::File { size, .. }, Some(min)) if *size >= min => {
                    self.placeholder_in(pfd, e, i)?
                }
                _ => self.file_in(pfd, e, all, &cache)?,
            }
        }
        Ok(())
    }

    /// Fetches the chunks of files `ix` (those below `lazy_min`, when given).
    fn prefetch(
        &self,
        ix: &[usize],
        all: &[Entry],
        cache: &mut HashMap<ChunkId, Arc<Vec<u8>>>,
        lazy_min: Option<u64>,
    ) {
        let mut want: Vec<(Loc, ChunkRef)> = Vec::new();
        let mut seen = HashSet::new();
        for &i in ix {
            if let Kind::File { chunks, size, .. } = &all[i].kind {
                if lazy_min.is_some_and(|m| *size >= m) {
                    continue;
                }
                for c in chunks {
                    if seen.insert(c.id) {
                        if let Some(l) = self.index.get(&c.id) {
                            want.push((l, *c));
                        }
                    }
                }
            }
        }
        want.sort_by_key(|(l, _)| (l.pack, l.off));
        let mut k = 0;
        while k < want.len() {
            let (first, _) = want[k];
            let mut end = u64::from(first.off) + u64::from(first.len);
            let mut n = k + 1;
            while n < want.len() {
                let (l, _) = want[n];
                let l_end = u64::from(l.off) + u64::from(l.len);
                if l.pack != first.pack
                    || u64::from(l.off) > end + READ_GAP
                    || l_end.max(end) - u64::from(first.off) > MAX_READ
                {
                    break;
                }
                end = end.max(l_end);
                n += 1;
            }
            let key = self.index.pack_key(&first);
            let base = u64::from(first.off);
            // Failures are left for the per-chunk fetch, which reports them properly.
            if let Ok(data) = self.store.backend.get_range(&key, base, end - base) {
                for (l, c) in &want[k..n] {
                    let lo = (u64::from(l.off) - base) as usize;
                    let obj = &data[lo..lo + l.len as usize];
                    if let Ok(plain) = pack::open_blob(self.store.keys.as_ref(), c, obj) {
                        cache.insert(c.id, Arc::new(plain));
                    }
                }
            }
            k = n;
        }
    }

    fn chunk(
        &self,
        c: &ChunkRef,
        all: &[Entry],
        cache: &HashMap<ChunkId, Arc<Vec<u8>>>,
    ) -> Result<Arc<Vec<u8>>, SnapshotError> {
        if let Some(d) = cache.get(&c.id) {
            return Ok(d.clone());
        }
        self.store
            .get_chunk(self.index, c)
            .map(Arc::new)
            .map_err(|problem| SnapshotError::Chunk {
                chunk: c.id.hex(),
                problem,
                files: files_using(all, c),
            })
    }

    fn file_in(
        &self,
        pfd: BorrowedFd<'_>,
        e: &Entry,
        all: &[Entry],
        cache: &HashMap<ChunkId, Arc<Vec<u8>>>,
    ) -> Result<(), SnapshotError> {
        let Kind::File {
            size,
            chunks,
            start,
        } = &e.kind
        else {
            return Ok(());
        };
        let (_, name) = tree::split_parent(&e.path);
        // Created with its final mode when the umask leaves it intact (no ACLs can interfere:
        // directories get theirs only after the files), which saves an fchmod per file.
        let exact = self.plain_umask.is_some_and(|m| e.mode & (0o7000 | m) == 0);
        let fd = rustix::fs::openat(
            pfd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(if exact { e.mode } else { 0o600 }),
        )
        .map_err(rio_err(self.shown(&e.path)))?;
        let file = File::from(fd);
        let res = (|| {
            // The file is bytes start..start+size of the concatenated chunks.
            let (lo, hi) = (u64::from(*start), u64::from(*start) + size);
            let mut pos = 0u64;
            let mut hole_at_end = false;
            for c in chunks {
                let data = self.chunk(c, all, cache)?;
                let (a, b) = (lo.max(pos), hi.min(pos + data.len() as u64));
                if a < b {
                    let part = &data[(a - pos) as usize..(b - pos) as usize];
                    hole_at_end = write_sparse(&file, part, a - lo)
                        .map_err(crate::io_err(self.shown(&e.path)))?;
                    if let Some(p) = self.progress {
                        p.bytes.fetch_add(part.len() as u64, Ordering::Relaxed);
                    }
                }
                pos += data.len() as u64;
            }
            if hole_at_end {
                file.set_len(*size)
                    .map_err(crate::io_err(self.shown(&e.path)))?;
            }
            self.meta_fd(file.as_fd(), e, !exact)
        })();
        if res.is_err() {
            // Never leave a file with wrong content behind.
            let _ = rustix::fs::unlinkat(pfd, name, AtFlags::empty());
        }
        if let Some(p) = self.progress {
            p.files.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// A placeholder: final size (sparse), owner, mode, xattrs and times, no content.
    fn placeholder_in(
        &self,
        pfd: BorrowedFd<'_>,
        e: &Entry,
        i: usize,
    ) -> Result<(), SnapshotError> {
        let Kind::File { size, .. } = &e.kind else {
            return Ok(());
        };
        let (_, name) = tree::split_parent(&e.path);
        let fd = rustix::fs::openat(
            pfd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(rio_err(self.shown(&e.path)))?;
        let res = (|| {
            rustix::fs::ftruncate(&fd, *size).map_err(rio_err(self.shown(&e.path)))?;
            rustix::fs::fsetxattr(
                &fd,
                PENDING_XATTR,
                i.to_string().as_bytes(),
                XattrFlags::empty(),
            )
            .map_err(rio_err(self.shown(&e.path)))?;
            self.meta_fd(fd.as_fd(), e, true)
        })();
        if res.is_err() {
            let _ = rustix::fs::unlinkat(pfd, name, AtFlags::empty());
        }
        res
    }

    fn times(e: &Entry) -> Timestamps {
        let t = Timespec {
            tv_sec: e.mtime.0,
            tv_nsec: i64::from(e.mtime.1.min(999_999_999)) as _,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }

    /// Owner, then mode (chown clears setuid), xattrs, then times.
    fn meta_fd(&self, fd: BorrowedFd<'_>, e: &Entry, chmod: bool) -> Result<(), SnapshotError> {
        let err = rio_err(self.shown(&e.path));
        let (uid, gid) = self.ids(e);
        rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(rio_err(self.shown(&e.path)))?;
        if chmod {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode))
                .map_err(rio_err(self.shown(&e.path)))?;
        }
        for (n, v) in &e.xattrs {
            rustix::fs::fsetxattr(fd, n.as_slice(), v, XattrFlags::empty())
                .map_err(rio_err(self.shown(&e.path)))?;
        }
        rustix::fs::futimens(fd, &Self::times(e)).map_err(err)
    }

    fn ids(&self, e: &Entry) -> (rustix::fs::Uid, rustix::fs::Gid) {
        // validate() bounded both below ID_RANGE and restore() checked base + range fits.
        (
            rustix::fs::Uid::from_raw(self.base + e.uid),
            rustix::fs::Gid::from_raw(self.base + e.gid),
        )
    }

    fn other(&self, e: &Entry) -> Result<(), SnapshotError> {
        let (parent, name) = tree::split_parent(&e.path);
        let pfd_owned = self.open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        let pfd = pfd_owned.as_ref().map(|f| f.as_fd()).unwrap_or(self.root);
        let err = || rio_err(self.shown(&e.path));
        match &e.kind {
            Kind::Dir | Kind::File { .. } => return Ok(()),
            Kind::Hardlink { target } => {
                let (tp, tn) = tree::split_parent(target);
                let tfd = self.open_beneath(tp, OFlags::PATH | OFlags::DIRECTORY)?;
                let tfd = tfd.as_ref().map(|f| f.as_fd()).unwrap_or(self.root);
                // No AT_SYMLINK_FOLLOW: links the named object itself, never what it points to.
                return rustix::fs::linkat(tfd, tn, pfd, name, AtFlags::empty()).map_err(err());
            }
            Kind::Symlink { target } => {
                rustix::fs::symlinkat(target.as_slice(), pfd, name).map_err(err())?
            }
            Kind::Fifo => {
                rustix::fs::mknodat(pfd, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(err())?
            }
            Kind::CharDev { rdev: 0 } => {
                rustix::fs::mknodat(pfd, name, FileType::CharacterDevice, Mode::empty(), 0)
                    .map_err(err())?
            }
            Kind::CharDev { rdev } | Kind::BlockDev { rdev } => {
                tracing::warn!(path = %self.shown(&e.path).display(), rdev, "device node not restored");
                return Ok(());
            }
        }
        let (uid, gid) = self.ids(e);
        rustix::fs::chownat(pfd, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(err())?;
        if !matches!(e.kind, Kind::Symlink { .. }) {
            // We just created this non-symlink in a directory only we write to.
            rustix::fs::chmodat(pfd, name, Mode::from_raw_mode(e.mode), AtFlags::empty())
                .map_err(err())?;
        }
        if !e.xattrs.is_empty() {
            let mut path = format!("/proc/self/fd/{}/", pfd.as_raw_fd()).into_bytes();
            path.extend_from_slice(name);
            for (n, v) in &e.xattrs {
                rustix::fs::lsetxattr(path.as_slice(), n.as_slice(), v, XattrFlags::empty())
                    .map_err(err())?;
            }
        }
        rustix::fs::utimensat(pfd, name, &Self::times(e), AtFlags::SYMLINK_NOFOLLOW).map_err(err())
    }
}

/// The umask, read without changing it (`umask(2)` can only set it, racing other threads), if
/// `dir` has no default ACL (which would replace the umask for files made below it).
fn plain_umask(dir: BorrowedFd<'_>) -> Option<u32> {
    match rustix::fs::fgetxattr(dir, "system.posix_acl_default", &mut [0u8; 0][..]) {
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => {}
        _ => return None,
    }
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Writes `data` at `off`, leaving 4 KiB blocks of zeros as holes. Returns whether the data
/// ended in a hole (the caller then extends the file with `set_len`).
fn write_sparse(file: &File, data: &[u8], off: u64) -> std::io::Result<bool> {
    const BLOCK: usize = 4096;
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + BLOCK).min(data.len());
        let zero = data[pos..end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(s)) => {
                file.write_all_at(&data[s..pos], off + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
        pos = end;
    }
    match run_start {
        Some(s) => {
            file.write_all_at(&data[s..], off + s as u64)?;
            Ok(false)
        }
        None => Ok(!data.is_empty()),
    }
}

fn files_using(all: &[Entry], c: &tree::ChunkRef) -> Vec<String> {
    all.iter()
        .filter(
            |e| matches!(&e.kind, Kind::File { chunks, .. } if chunks.iter().any(|x| x.id == c.id)),
        )
        .map(|e| tree::display(&e.path))
        .collect()
}

#[cfg(test)]
impl<'a> Restorer<'a> {
    pub(crate) fn for_test(
        store: &'a Store,
        index: &'a Index,
        root: BorrowedFd<'a>,
        target: &'a Path,
    ) -> Self {
        Restorer {
            store,
            index,
            root,
            target,
            base: 0,
            progress: None,
            plain_umask: None,
        }
    }
    pub(crate) fn file_for_test(&self, e: &Entry) -> Result<(), SnapshotError> {
        self.unit(&[0], std::slice::from_ref(e), None)
    }
    pub(crate) fn mkdir_for_test(&self, e: &Entry) -> Result<(), SnapshotError> {
        self.mkdir(e)
    }
    pub(crate) fn other_for_test(&self, e: &Entry) -> Result<(), SnapshotError> {
        self.other(e)
    }
}
