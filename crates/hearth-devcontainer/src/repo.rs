//! Reading files of a repository without ever leaving it.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::Error;

/// Symlinks followed while resolving one path in a git tree (Linux's own limit).
const MAX_LINK_HOPS: usize = 40;

/// A repository's files by repository-relative, `/`-separated path.
pub trait Repo {
    /// The file at `path` (see [`normalize`]), `None` when there is none; a file larger
    /// than `max` bytes, a directory, or a path that resolves outside the repository is
    /// an error.
    fn read(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, Error>;
    /// Names of the directories directly in `path` (empty when `path` is not one).
    fn subdirs(&self, path: &str) -> Result<Vec<String>, Error>;
}

/// `rel` taken relative to the repository directory `base` ("" is the root), with `.` and
/// `..` resolved: an absolute path, or one that climbs above the root, is refused.
pub fn normalize(base: &str, rel: &str) -> Result<String, Error> {
    if rel.starts_with('/') {
        return Err(Error::Path {
            path: rel.to_string(),
            reason: "is an absolute path; give a path inside the repository".into(),
        });
    }
    let mut out: Vec<&str> = Vec::new();
    for part in base.split('/').chain(rel.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(Error::Path {
                        path: rel.to_string(),
                        reason: "leaves the repository".into(),
                    });
                }
            }
            p => out.push(p),
        }
    }
    Ok(out.join("/"))
}

/// A checked-out repository: every open is resolved beneath its root by the kernel
/// (`openat2` with `RESOLVE_BENEATH`), so `..` and symlinks that point outside fail.
#[derive(Debug)]
pub struct DirRepo {
    root: OwnedFd,
    path: PathBuf,
}

impl DirRepo {
    pub fn open(root: &Path) -> Result<DirRepo, Error> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Io {
            op: "open",
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        Ok(DirRepo {
            root: fd,
            path: root.to_path_buf(),
        })
    }

    fn open_beneath(&self, path: &str, flags: OFlags) -> Result<Option<OwnedFd>, Error> {
        let rel = if path.is_empty() { "." } else { path };
        match rustix::fs::openat2(
            &self.root,
            rel,
            flags | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => Ok(None),
            Err(rustix::io::Errno::XDEV) | Err(rustix::io::Errno::LOOP) => Err(Error::Path {
                path: path.to_string(),
                reason: "resolves outside the repository (a symlink or ..)".into(),
            }),
            Err(e) => Err(Error::Io {
                op: "open",
                path: self.path.join(path),
                source: e.into(),
            }),
        }
    }
}

impl Repo for DirRepo {
    fn read(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, Error> {
        let Some(fd) = self.open_beneath(path, OFlags::RDONLY | OFlags::NONBLOCK)? else {
            return Ok(None);
        };
        let io = |e: std::io::Error| Error::Io {
            op: "read",
            path: self.path.join(path),
            source: e,
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io(e.into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(Error::Path {
                path: path.to_string(),
                reason: "is not a regular file".into(),
            });
        }
        if st.st_size as u64 > max {
            return Err(Error::TooLarge {
                path: path.to_string(),
                max,
            });
        }
        let mut buf = Vec::new();
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
        if buf.len() as u64 > max {
            return Err(Error::TooLarge {
                path: path.to_string(),
                max,
            });
        }
        Ok(Some(buf))
    }

    fn subdirs(&self, path: &str) -> Result<Vec<String>, Error> {
        let Some(fd) = self.open_beneath(path, OFlags::RDONLY | OFlags::DIRECTORY)? else {
            return Ok(Vec::new());
        };
        let io = |e: rustix::io::Errno| Error::Io {
            op: "list",
            path: self.path.join(path),
            source: e.into(),
        };
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                rustix::fs::FileType::Directory => true,
                rustix::fs::FileType::Unknown => rustix::fs::statat(
                    &fd,
                    entry.file_name(),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode)
                        == rustix::fs::FileType::Directory
                })
                .unwrap_or(false),
                _ => false,
            };
            if is_dir {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Makes a `git` command: the caller decides the user it runs as and its environment.
pub type GitCommand = Box<dyn Fn() -> Command + Send + Sync>;

/// A commit in a git object database (a bare, possibly shallow and partial, clone):
/// files are read with `git cat-file`, symlinks in the tree are followed here and must
/// stay inside the tree.
pub struct GitRepo {
    git_dir: PathBuf,
    rev: String,
    git: GitCommand,
}

impl std::fmt::Debug for GitRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitRepo")
            .field("git_dir", &self.git_dir)
            .field("rev", &self.rev)
            .finish()
    }
}

/// One entry of a tree: its mode, type and object id.
struct Entry {
    mode: String,
    kind: String,
    oid: String,
}

impl GitRepo {
    /// `rev` (a commit) of the object database at `git_dir`.
    pub fn new(git_dir: PathBuf, rev: String, git: GitCommand) -> GitRepo {
        GitRepo { git_dir, rev, git }
    }

    /// Clones the default branch's newest commit of `source` into `dest` (which must not
    /// exist): bare, depth 1, blobs fetched only when read. The repository's own
    /// transport rules (allowed protocols, credentials) are the `git` command's.
    pub fn clone_tip(source: &str, dest: &Path, git: GitCommand) -> Result<GitRepo, Error> {
        GitRepo::clone_branch(source, None, dest, git)
    }

    /// [`GitRepo::clone_tip`] of `branch` (the default branch when `None`); the caller
    /// has checked the name (it is passed after `--branch`, never as an option).
    pub fn clone_branch(
        source: &str,
        branch: Option<&str>,
        dest: &Path,
        git: GitCommand,
    ) -> Result<GitRepo, Error> {
        let mut cmd = git();
        cmd.args([
            "clone",
            "--quiet",
            "--bare",
            "--no-local",
            "--depth",
            "1",
            "--filter=blob:none",
            "--single-branch",
        ]);
        if let Some(b) = branch {
            cmd.arg(format!("--branch={b}"));
        }
        cmd.arg("--").arg(source).arg(dest);
        run(cmd, "clone", 1 << 16)?;
        let repo = GitRepo::new(dest.to_path_buf(), "HEAD".into(), git);
        let commit = repo.git(&["rev-parse", "--verify", "HEAD^{commit}"], 1 << 10)?;
        let commit = String::from_utf8_lossy(&commit).trim().to_string();
        Ok(GitRepo {
            rev: commit,
            ..repo
        })
    }

    /// The commit read from.
    pub fn commit(&self) -> &str {
        &self.rev
    }

    /// The object id of the directory `path` (symlinks followed inside the tree; "" or
    /// "." is the root): a digest of everything under it, read without fetching a blob.
    /// `None` when no directory is there.
    pub fn tree_id(&self, path: &str) -> Result<Option<String>, Error> {
        if normalize("", path)?.is_empty() {
            let out = self.git(
                &["rev-parse", "--verify", &format!("{}^{{tree}}", self.rev)],
                1 << 10,
            )?;
            return Ok(Some(String::from_utf8_lossy(&out).trim().to_string()));
        }
        Ok(match self.resolve(path)? {
            Some((_, e)) if e.kind == "tree" => Some(e.oid),
            _ => None,
        })
    }

    fn git(&self, args: &[&str], max: usize) -> Result<Vec<u8>, Error> {
        let mut cmd = (self.git)();
        cmd.arg("--git-dir")
            .arg(&self.git_dir)
            .arg("--literal-pathspecs")
            .args(args);
        run(cmd, args.first().copied().unwrap_or("git"), max)
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>, Error> {
        let out = self.git(&["ls-tree", "-z", &self.rev, "--", path], 1 << 16)?;
        for rec in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let rec = String::from_utf8_lossy(rec);
            let Some((meta, name)) = rec.split_once('\t') else {
                continue;
            };
            if name != path {
                continue;
            }
            let mut m = meta.split(' ');
            if let (Some(mode), Some(kind), Some(oid)) = (m.next(), m.next(), m.next()) {
                return Ok(Some(Entry {
                    mode: mode.into(),
                    kind: kind.into(),
                    oid: oid.into(),
                }));
            }
        }
        Ok(None)
    }

    fn blob(&self, path: &str, oid: &str, max: u64) -> Result<Vec<u8>, Error> {
        let size = self.git(&["cat-file", "-s", oid], 64)?;
        let size: u64 = String::from_utf8_lossy(&size)
            .trim()
            .parse()
            .map_err(|_| Error::Git {
                op: "cat-file".into(),
                message: format!("unexpected size of {path}"),
            })?;
        if size > max {
            return Err(Error::TooLarge {
                path: path.to_string(),
                max,
            });
        }
        self.git(&["cat-file", "blob", oid], max as usize)
    }

    /// Follows `path` through the tree, symlinks included; `None` when nothing is there.
    fn resolve(&self, path: &str) -> Result<Option<(String, Entry)>, Error> {
        let mut todo: VecDeque<String> = normalize("", path)?
            .split('/')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = todo.pop_front() {
            let here = if done.is_empty() {
                part.clone()
            } else {
                format!("{}/{part}", done.join("/"))
            };
            let Some(entry) = self.entry(&here)? else {
                return Ok(None);
            };
            if entry.mode == "120000" {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(Error::Path {
                        path: path.to_string(),
                        reason: "has too many levels of symlinks".into(),
                    });
                }
                let target = self.blob(&here, &entry.oid, 4096)?;
                let target = String::from_utf8(target).map_err(|_| Error::Path {
                    path: here.clone(),
                    reason: "is a symlink whose target is not UTF-8".into(),
                })?;
                let resolved = normalize(&done.join("/"), &target).map_err(|_| Error::Path {
                    path: here.clone(),
                    reason: format!("is a symlink to {target}, outside the repository"),
                })?;
                let mut next: VecDeque<String> = resolved
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect();
                next.extend(todo);
                todo = next;
                done.clear();
                continue;
            }
            if todo.is_empty() {
                return Ok(Some((here, entry)));
            }
            if entry.kind != "tree" {
                return Ok(None);
            }
            done.push(part);
        }
        Ok(None)
    }
}

impl Repo for GitRepo {
    fn read(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, Error> {
        let Some((here, entry)) = self.resolve(path)? else {
            return Ok(None);
        };
        if entry.kind != "blob" {
            return Err(Error::Path {
                path: here,
                reason: "is not a regular file".into(),
            });
        }
        self.blob(&here, &entry.oid, max).map(Some)
    }

    fn subdirs(&self, path: &str) -> Result<Vec<String>, Error> {
        let oid = if normalize("", path)?.is_empty() {
            format!("{}^{{tree}}", self.rev)
        } else {
            match self.resolve(path)? {
                Some((_, e)) if e.kind == "tree" => e.oid,
                _ => return Ok(Vec::new()),
            }
        };
        let out = self.git(&["ls-tree", "-z", &oid], 1 << 20)?;
        let mut names: Vec<String> = out
            .split(|b| *b == 0)
            .filter_map(|rec| {
                let rec = String::from_utf8_lossy(rec);
                let (meta, name) = rec.split_once('\t')?;
                (meta.split(' ').nth(1) == Some("tree")).then(|| name.to_string())
            })
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Runs a git command, returning at most `max` bytes of its stdout; a failure carries
/// git's own message.
fn run(mut cmd: Command, op: &str, max: usize) -> Result<Vec<u8>, Error> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Git {
            op: op.to_string(),
            message: format!("cannot run git: {e} (apt-get install git)"),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("fatal:") || l.starts_with("error:"))
            .collect();
        let msg = if msg.is_empty() {
            err.lines().last().unwrap_or("failed").to_string()
        } else {
            msg.join("; ")
        };
        return Err(Error::Git {
            op: op.to_string(),
            message: msg,
        });
    }
    if out.stdout.len() > max {
        return Err(Error::Git {
            op: op.to_string(),
            message: format!("more than {max} bytes of output"),
        });
    }
    Ok(out.stdout)
}
