//! Taking a snapshot: a race-safe walk of the source with directory fds, then parallel
//! chunking/packing of the files whose (size, mtime, ctime, inode) differ from the parent.
//! Unchanged files reuse the parent's entry (chunks and xattrs) and are not opened at all.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::format::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
use crate::pack::{Index, Packer};
use crate::tree::{self, ChunkRef, Entry, Kind, Tree, Xattrs, ID_RANGE};
use crate::{check_workspace, io_err, rio_err, Progress, SnapshotError, SnapshotInfo, Store};

/// Files up to this size are read whole and chunked in memory; larger ones are streamed.
const READ_WHOLE: u64 = 32 * 1024 * 1024;
/// Files smaller than this are bundled with their neighbours (in walk order) into one chunk.
/// Below FastCDC's minimum a file would be a single chunk anyway; bundling gives zstd context
/// and costs one index entry and one read per bundle instead of per file.
const SMALL: u64 = CHUNK_MIN as u64;
/// A bundle ends after a file whose path hash hits 1 in [`BUNDLE_CUT`] once it holds at least
/// [`BUNDLE_MIN`] bytes, and always at [`BUNDLE_MAX`]. Cutting on the path (not on the running
/// size alone) lets bundles after an inserted or removed file line up again, so two copies of
/// a tree still share most bundles.
const BUNDLE_MIN: u64 = 512 * 1024;
const BUNDLE_MAX: u64 = 2 * 1024 * 1024;
const BUNDLE_CUT: u8 = 16;
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
    // Chunks in the index exist: gc cannot run while our lease is held.
    let (index, bad) = Index::load(store)?;
    for (key, e) in bad {
        tracing::warn!(index = %key, error = %e, "unreadable index object; its chunks are stored again");
    }
    tracing::debug!(elapsed = ?started.elapsed(), chunks = index.packs.len(), "index loaded");
    let parent_tree = match parent {
        Some(pid) => {
            let info = store.get_record(pid)?;
            Some(store.get_tree(&info, &index)?)
        }
        None => None,
    };
    tracing::debug!(elapsed = ?started.elapsed(), "parent loaded");
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
    let w = Walker {
        src,
        base: uid_base,
        parent: parent_map,
        pool: store.pool(),
    };
    let st = rustix::fs::fstat(&root).map_err(rio_err(src))?;
    let st = St::from(&st);
    let xattrs = fd_xattrs(root.as_fd()).map_err(rio_err(src))?;
    let first = w.entry(Vec::new(), Kind::Dir, &st, xattrs);
    let (mut entries, jobs) = w.run(root.as_fd(), first)?;
    drop(w);
    tracing::debug!(elapsed = ?started.elapsed(), entries = entries.len(), jobs = jobs.len(), "walk done");

    // Content: the expensive part, spread over all cores.
    let groups = plan(&entries, &jobs);
    let packer = Packer::new(store, &index);
    let ctx = Ctx {
        root: root.as_fd(),
        src,
        packer: &packer,
        progress,
    };
    let results: Vec<Vec<(usize, ChunkedFile)>> = store.pool().install(|| {
        groups
            .par_iter()
            .map(|g| match g {
                Group::Large(i) => Ok(vec![(*i, ctx.large(&entries[*i].path)?)]),
                Group::Small(ix) => ctx.bundle(&entries, ix),
            })
            .collect::<Result<_, SnapshotError>>()
    })?;
    tracing::debug!(elapsed = ?started.elapsed(), "content done");
    let mut vanished = Vec::new();
    for (i, res) in results.into_iter().flatten() {
        match res {
            Some((kind, st, xattrs)) => {
                let e = &mut entries[i];
                e.kind = kind;
                e.mtime = st.mtime;
                e.ctime = st.ctime;
                e.ino = st.ino;
                e.mode = st.mode & 0o7777;
                e.xattrs = xattrs;
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
    let tree_refs = store.pool().install(|| {
        let cuts: Vec<_> =
            fastcdc::v2020::FastCDC::new(&tree_bytes, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX).collect();
        cuts.par_iter()
            .map(|c| packer.add(&tree_bytes[c.offset..c.offset + c.length]))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let (new_bytes, _, _) = packer.finish()?;
    let mut rnd = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut rnd);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let info = SnapshotInfo {
        id: hex::encode(rnd),
        workspace: workspace.to_string(),
        time: now.as_secs() as i64,
        nanos: now.subsec_nanos(),
        parent: parent.map(str::to_string),
        size,
        files,
        new_bytes,
        tree: tree_refs,
        tree_len: tree_bytes.len() as u64,
    };
    tracing::debug!(elapsed = ?started.elapsed(), "tree stored");
    // The record is the commit point: packs and index it needs must be durable first.
    store.backend.sync()?;
    tracing::debug!(elapsed = ?started.elapsed(), "store synced");
    store.put_record(&info)?;
    store.backend.sync()?;
    tracing::info!(snapshot = %info.id, workspace, size, files, new_bytes, "snapshot taken");
    Ok(info)
}

/// A unit of content work: one large file, or a run of small files stored as one bundle.
enum Group {
    Large(usize),
    Small(Vec<usize>),
}

/// Splits the files to read into groups, in walk order (see [`BUNDLE_MIN`]).
fn plan(entries: &[Entry], jobs: &[usize]) -> Vec<Group> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut acc = 0u64;
    for &i in jobs {
        let e = &entries[i];
        let size = match e.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        };
        if size >= SMALL {
            out.push(Group::Large(i));
            continue;
        }
        cur.push(i);
        acc += size;
        if acc >= BUNDLE_MAX || (acc >= BUNDLE_MIN && path_cut(&e.path)) {
            out.push(Group::Small(std::mem::take(&mut cur)));
            acc = 0;
        }
    }
    if !cur.is_empty() {
        out.push(Group::Small(cur));
    }
    out
}

fn path_cut(path: &[u8]) -> bool {
    blake3::hash(path).as_bytes()[0].is_multiple_of(BUNDLE_CUT)
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

/// The walk of the source. Directories are walked in parallel (each opens its own fd from its
/// parent's, so at most threads x depth fds are open); the result is the same pre-order list a
/// sequential walk would give, names sorted within each directory.
struct Walker<'a> {
    src: &'a Path,
    base: u32,
    parent: HashMap<&'a [u8], &'a Entry>,
    pool: &'static rayon::ThreadPool,
}

/// One walked entry: whether its content must be read, and its (dev, ino) if it may be one of
/// several names of a file (hardlinks are resolved afterwards, in order).
struct Walked {
    entry: Entry,
    read: bool,
    link: Option<(u64, u64)>,
}

enum Item {
    One(Walked),
    Dir(Vec<u8>, Vec<u8>),
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

    fn entry(&self, path: Vec<u8>, kind: Kind, st: &St, xattrs: Xattrs) -> Entry {
        let uid = self.map_id(st.uid, &path);
        let gid = self.map_id(st.gid, &path);
        Entry {
            path,
            kind,
            mode: st.mode & 0o7777,
            uid,
            gid,
            mtime: st.mtime,
            xattrs,
            ino: st.ino,
            ctime: st.ctime,
        }
    }

    /// Walks the whole tree below `root` (whose own entry the caller made), then resolves
    /// hardlinks: the first name in walk order keeps the content, later ones point to it.
    fn run(
        &self,
        root: BorrowedFd<'_>,
        first: Entry,
    ) -> Result<(Vec<Entry>, Vec<usize>), SnapshotError> {
        let walked = self.pool.install(|| self.children(root, &[]))?;
        let mut entries = Vec::with_capacity(walked.len() + 1);
        let mut jobs = Vec::new();
        let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        entries.push(first);
        for mut w in walked {
            if let Some(k) = w.link {
                match links.get(&k) {
                    Some(target) => {
                        w.entry.kind = Kind::Hardlink {
                            target: target.clone(),
                        };
                        w.entry.xattrs = Vec::new();
                        w.read = false;
                    }
                    None => {
                        links.insert(k, w.entry.path.clone());
                    }
                }
            }
            if w.read {
                jobs.push(entries.len());
            }
            entries.push(w.entry);
        }
        Ok((entries, jobs))
    }

    /// A subdirectory: opened (never through a symlink) and described from its own fd.
    fn subdir(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        rel: Vec<u8>,
    ) -> Result<Vec<Walked>, SnapshotError> {
        let sub = match rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Replaced or removed since the stat: the workspace is live, skip it.
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(rio_err(self.shown(&rel))(e)),
        };
        let st = St::from(&rustix::fs::fstat(&sub).map_err(rio_err(self.shown(&rel)))?);
        // xattrs only change with the ctime, so an unchanged entry reuses the parent's.
        let xattrs = match self.unchanged(&rel, &st) {
            Some(p) => p.xattrs.clone(),
            None => fd_xattrs(sub.as_fd()).map_err(rio_err(self.shown(&rel)))?,
        };
        let mut out = vec![Walked {
            entry: self.entry(rel.clone(), Kind::Dir, &st, xattrs),
            read: false,
            link: None,
        }];
        out.extend(self.children(sub.as_fd(), &rel)?);
        Ok(out)
    }

    fn children(&self, dir: BorrowedFd<'_>, prefix: &[u8]) -> Result<Vec<Walked>, SnapshotError> {
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
        let mut items = Vec::with_capacity(names.len());
        let mut dirs = 0;
        for name in names {
            let rel = join(prefix, &name);
            let st = match rustix::fs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(s) => St::from(&s),
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(rio_err(self.shown(&rel))(e)),
            };
            let ft = FileType::from_raw_mode(st.mode);
            if ft == FileType::Directory {
                dirs += 1;
                items.push(Item::Dir(name, rel));
                continue;
            }
            let link = (st.nlink > 1).then_some((st.dev, st.ino));
            let kind = match ft {
                FileType::RegularFile => {
                    if let Some(p) = self.unchanged(&rel, &st) {
                        if let Kind::File { .. } = p.kind {
                            let e = self.entry(rel, p.kind.clone(), &st, p.xattrs.clone());
                            items.push(Item::One(Walked {
                                entry: e,
                                read: false,
                                link,
                            }));
                            continue;
                        }
                    }
                    // Content and xattrs are read by the job, from the file's own fd.
                    let kind = Kind::File {
                        size: st.size,
                        chunks: Vec::new(),
                        start: 0,
                    };
                    items.push(Item::One(Walked {
                        entry: self.entry(rel, kind, &st, Vec::new()),
                        read: true,
                        link,
                    }));
                    continue;
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
            let xattrs = match self.unchanged(&rel, &st) {
                Some(p) => p.xattrs.clone(),
                None => {
                    // `/proc/self/fd/<dirfd>/<name>`: resolution is pinned to the directory we
                    // opened and the final component is never followed.
                    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
                    path.extend_from_slice(&name);
                    path_xattrs(&path).map_err(rio_err(self.shown(&rel)))?
                }
            };
            items.push(Item::One(Walked {
                entry: self.entry(rel, kind, &st, xattrs),
                read: false,
                link,
            }));
        }
        // Only subdirectories become parallel tasks; files stay inline.
        let subdirs: Vec<(&[u8], &[u8])> = items
            .iter()
            .filter_map(|it| match it {
                Item::Dir(name, rel) => Some((name.as_slice(), rel.as_slice())),
                Item::One(_) => None,
            })
            .collect();
        let walk_sub = |(name, rel): &(&[u8], &[u8])| self.subdir(dir, name, rel.to_vec());
        let mut subtrees: Vec<Vec<Walked>> = if dirs < 2 {
            subdirs
                .iter()
                .map(walk_sub)
                .collect::<Result<Vec<_>, SnapshotError>>()?
        } else {
            subdirs
                .par_iter()
                .map(walk_sub)
                .collect::<Result<Vec<_>, SnapshotError>>()?
        }
        .into_iter()
        .rev()
        .collect();
        let mut out =
            Vec::with_capacity(items.len() + subtrees.iter().map(Vec::len).sum::<usize>());
        for it in items {
            match it {
                Item::One(w) => out.push(w),
                Item::Dir(..) => out.extend(subtrees.pop().unwrap_or_default()),
            }
        }
        Ok(out)
    }

    fn unchanged(&self, rel: &[u8], st: &St) -> Option<&Entry> {
        if self.parent.is_empty() {
            return None;
        }
        let p = self.parent.get(rel)?;
        let size_ok = match p.kind {
            Kind::File { size, .. } => size == st.size,
            _ => true,
        };
        (p.ino == st.ino && p.ctime == st.ctime && p.mtime == st.mtime && size_ok).then_some(*p)
    }
}

/// xattrs of a path without following its final component.
fn path_xattrs(path: &[u8]) -> rustix::io::Result<Xattrs> {
    read_xattrs(
        || rustix::fs::llistxattr_query(path),
        |buf| rustix::fs::llistxattr(path, buf),
        |name, buf| rustix::fs::lgetxattr(path, name, buf),
    )
}

/// Lists then reads every xattr through `list_len`/`list`/`get` (the path or fd flavour of
/// the syscalls). A file or attribute that vanished meanwhile is skipped, not an error.
fn read_xattrs(
    list_len: impl Fn() -> rustix::io::Result<usize>,
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&[u8], &mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Xattrs> {
    use rustix::io::Errno;
    let mut names;
    loop {
        let need = match list_len() {
            Ok(0) | Err(Errno::NOTSUP | Errno::NOENT) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(e) => return Err(e),
        };
        names = vec![0u8; need];
        match list(&mut names[..]) {
            Ok(n) => {
                names.truncate(n);
                break;
            }
            // Grew in between: ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    let mut out = Vec::new();
    let mut val = vec![0u8; 65536];
    // A restore's placeholder marker is the node's bookkeeping, never the user's data.
    let ours = crate::PENDING_XATTR.as_bytes();
    for name in names
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty() && *s != ours)
    {
        match get(name, &mut val[..]) {
            Ok(len) => out.push((name.to_vec(), val[..len].to_vec())),
            Err(Errno::NODATA | Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// New content, the stat it was read under and its xattrs; `None` when the file went away.
type ChunkedFile = Option<(Kind, St, Xattrs)>;

struct Ctx<'a> {
    root: BorrowedFd<'a>,
    src: &'a Path,
    packer: &'a Packer<'a>,
    progress: Option<&'a Progress>,
}

impl Ctx<'_> {
    fn shown(&self, rel: &[u8]) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        self.src.join(std::ffi::OsStr::from_bytes(rel))
    }

    /// Opens a file to snapshot beneath the root; `None` when it vanished or stopped being a
    /// regular file.
    fn open(&self, rel: &[u8]) -> Result<Option<(File, St, Xattrs)>, SnapshotError> {
        let fd: OwnedFd = match rustix::fs::openat2(
            self.root,
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOATIME,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
                tracing::warn!(path = %self.shown(rel).display(), "file vanished during snapshot, skipped");
                return Ok(None);
            }
            Err(e) => return Err(rio_err(self.shown(rel))(e)),
        };
        let st = St::from(&rustix::fs::fstat(&fd).map_err(rio_err(self.shown(rel)))?);
        if FileType::from_raw_mode(st.mode) != FileType::RegularFile {
            tracing::warn!(path = %self.shown(rel).display(), "file changed type during snapshot, skipped");
            return Ok(None);
        }
        let xattrs = fd_xattrs(fd.as_fd()).map_err(rio_err(self.shown(rel)))?;
        Ok(Some((File::from(fd), st, xattrs)))
    }

    fn done_file(&self) {
        if let Some(p) = self.progress {
            p.files.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count(&self, n: usize) {
        if let Some(p) = self.progress {
            p.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Reads a run of small files into one bundle chunk; a file that grew past [`SMALL`]
    /// since the walk is chunked on its own instead.
    fn bundle(
        &self,
        entries: &[Entry],
        ix: &[usize],
    ) -> Result<Vec<(usize, ChunkedFile)>, SnapshotError> {
        let mut out = Vec::with_capacity(ix.len());
        let mut buf: Vec<u8> = Vec::new();
        // (entry, start, len, st, xattrs) of files in `buf`.
        let mut parts: Vec<(usize, usize, usize, St, Xattrs)> = Vec::new();
        let flush = |buf: &mut Vec<u8>,
                     parts: &mut Vec<(usize, usize, usize, St, Xattrs)>,
                     out: &mut Vec<(usize, ChunkedFile)>|
         -> Result<(), SnapshotError> {
            let r = if buf.is_empty() {
                None
            } else {
                Some(self.packer.add(buf)?)
            };
            for (i, start, len, st, xattrs) in parts.drain(..) {
                let kind = match (r, len) {
                    (Some(r), 1..) => Kind::File {
                        size: len as u64,
                        chunks: vec![r],
                        start: start as u32,
                    },
                    _ => Kind::File {
                        size: 0,
                        chunks: Vec::new(),
                        start: 0,
                    },
                };
                out.push((i, Some((kind, st, xattrs))));
            }
            buf.clear();
            Ok(())
        };
        for &i in ix {
            let rel = &entries[i].path;
            let Some((mut file, st, xattrs)) = self.open(rel)? else {
                out.push((i, None));
                continue;
            };
            if st.size >= SMALL {
                out.push((i, self.chunk_open(file, rel, st, xattrs)?));
                continue;
            }
            // Exactly the size fstat reported: no extra read to find EOF. Bytes appended
            // after the fstat are newer than the stored stat and are picked up next time,
            // since such a write also moves the ctime.
            let start = buf.len();
            buf.resize(start + st.size as usize, 0);
            let mut got = 0;
            while got < st.size as usize {
                match file.read(&mut buf[start + got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err(self.shown(rel))(e)),
                }
            }
            buf.truncate(start + got);
            let len = got;
            self.count(len);
            self.done_file();
            parts.push((i, start, len, st, xattrs));
            if buf.len() as u64 >= BUNDLE_MAX {
                flush(&mut buf, &mut parts, &mut out)?;
            }
        }
        flush(&mut buf, &mut parts, &mut out)?;
        Ok(out)
    }

    fn large(&self, rel: &[u8]) -> Result<ChunkedFile, SnapshotError> {
        match self.open(rel)? {
            Some((file, st, xattrs)) => self.chunk_open(file, rel, st, xattrs),
            None => Ok(None),
        }
    }

    /// Chunks one file with FastCDC, in memory up to [`READ_WHOLE`], streamed beyond.
    fn chunk_open(
        &self,
        mut file: File,
        rel: &[u8],
        st: St,
        xattrs: Xattrs,
    ) -> Result<ChunkedFile, SnapshotError> {
        use std::io::Seek;
        let shown = self.shown(rel);
        file.rewind().map_err(io_err(&shown))?;
        let mut chunks: Vec<ChunkRef> = Vec::new();
        let mut size = 0u64;
        let mut buf = Vec::with_capacity(st.size.min(READ_WHOLE) as usize);
        file.by_ref()
            .take(READ_WHOLE)
            .read_to_end(&mut buf)
            .map_err(io_err(&shown))?;
        if (buf.len() as u64) < READ_WHOLE {
            for c in fastcdc::v2020::FastCDC::new(&buf, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
                chunks.push(self.packer.add(&buf[c.offset..c.offset + c.length])?);
                size += c.length as u64;
                self.count(c.length);
            }
        } else {
            drop(buf);
            file.rewind().map_err(io_err(&shown))?;
            for c in fastcdc::v2020::StreamCDC::new(file, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
                let c = c.map_err(|e| SnapshotError::Io {
                    path: shown.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                chunks.push(self.packer.add(&c.data)?);
                size += c.length as u64;
                self.count(c.length);
            }
        }
        self.done_file();
        Ok(Some((
            Kind::File {
                size,
                chunks,
                start: 0,
            },
            st,
            xattrs,
        )))
    }
}

/// xattrs of an open file: one syscall when it has none (the common case).
fn fd_xattrs(fd: BorrowedFd<'_>) -> rustix::io::Result<Xattrs> {
    read_xattrs(
        || rustix::fs::flistxattr_query(fd),
        |buf| rustix::fs::flistxattr(fd, buf),
        |name, buf| rustix::fs::fgetxattr(fd, name, buf),
    )
}
