//! The snapshot tree: one flat, pre-ordered list of entries (parents before children).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::format::{ChunkId, CHUNK_MAX};

/// 2: files may be a slice of a shared chunk (`start`).
pub(crate) const TREE_VERSION: u32 = 2;
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;
const MAX_XATTRS: usize = 256;
const MAX_XATTR_NAME: usize = 255;
const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Ids inside a workspace's user namespace.
pub(crate) const ID_RANGE: u32 = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Dir,
    /// Content is bytes `start..start + size` of the concatenated `chunks`. Small files are
    /// bundled, several to a chunk, so they get compression context and cost one index entry
    /// per bundle instead of one per file.
    File {
        size: u64,
        chunks: Vec<ChunkRef>,
        start: u32,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Another name for the earlier regular-file entry at `target`; metadata lives there.
    Hardlink {
        target: Vec<u8>,
    },
    Fifo,
    /// Only 0:0 (an overlay whiteout) is restored; other devices are kept but skipped.
    CharDev {
        rdev: u64,
    },
    BlockDev {
        rdev: u64,
    },
}

/// Extended attributes as (name, value) pairs, in listing order.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Relative, `/`-separated; empty for the root.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner as seen inside the workspace.
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    pub xattrs: Xattrs,
    /// Change-detection key for the next incremental snapshot; not restored.
    pub ino: u64,
    pub ctime: (i64, u32),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Tree {
    pub version: u32,
    pub entries: Vec<Entry>,
}

pub(crate) fn encode(tree: &Tree) -> Vec<u8> {
    postcard::to_stdvec(tree).unwrap_or_default()
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Tree, String> {
    let tree: Tree =
        postcard::from_bytes(bytes).map_err(|e| format!("tree does not decode: {e}"))?;
    if tree.version != TREE_VERSION {
        return Err(format!("unsupported tree version {}", tree.version));
    }
    Ok(tree)
}

pub(crate) fn display(path: &[u8]) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

pub(crate) fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Rejects anything that could make a restore leave the target or behave ambiguously: bad
/// path components, entries whose parent is not an earlier directory (this is what stops
/// "through a symlink" entries), duplicates, dangling or non-file hardlinks, impossible sizes.
pub(crate) fn validate(tree: &Tree) -> Result<(), String> {
    let mut seen: HashMap<&[u8], usize> = HashMap::with_capacity(tree.entries.len());
    for (i, e) in tree.entries.iter().enumerate() {
        let shown = display(&e.path);
        if i == 0 {
            if !e.path.is_empty() || e.kind != Kind::Dir {
                return Err("first entry must be the root directory".into());
            }
        } else {
            check_path(&e.path).map_err(|r| format!("entry {shown:?}: {r}"))?;
            let (parent, _) = split_parent(&e.path);
            match seen.get(parent) {
                Some(&pi) if tree.entries[pi].kind == Kind::Dir => {}
                Some(_) => return Err(format!("entry {shown:?}: parent is not a directory")),
                None => return Err(format!("entry {shown:?}: parent does not precede it")),
            }
        }
        if seen.insert(&e.path, i).is_some() {
            return Err(format!("duplicate entry {shown:?}"));
        }
        if e.uid >= ID_RANGE || e.gid >= ID_RANGE {
            return Err(format!(
                "entry {shown:?}: owner {}:{} outside the workspace range",
                e.uid, e.gid
            ));
        }
        if e.mode & !0o7777 != 0 {
            return Err(format!("entry {shown:?}: bad mode {:o}", e.mode));
        }
        if e.xattrs.len() > MAX_XATTRS
            || e.xattrs.iter().any(|(n, v)| {
                n.is_empty()
                    || n.len() > MAX_XATTR_NAME
                    || n.contains(&0)
                    || v.len() > MAX_XATTR_VALUE
            })
        {
            return Err(format!("entry {shown:?}: bad extended attributes"));
        }
        match &e.kind {
            Kind::File {
                size,
                chunks,
                start,
            } => {
                let mut sum = 0u64;
                for c in chunks {
                    if c.len == 0 || c.len > CHUNK_MAX {
                        return Err(format!("entry {shown:?}: bad chunk length {}", c.len));
                    }
                    sum += u64::from(c.len);
                }
                // Exactly the chunks the slice needs: none unused at either end.
                let end = u64::from(*start) + size;
                let ok = match (chunks.first(), chunks.last()) {
                    (Some(first), Some(last)) => {
                        *start < first.len && end <= sum && sum - u64::from(last.len) < end
                    }
                    _ => *size == 0 && *start == 0,
                };
                if !ok {
                    return Err(format!(
                        "entry {shown:?}: size {size} at {start} does not match its chunks ({sum})"
                    ));
                }
            }
            Kind::Symlink { target } => {
                if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
                    return Err(format!("entry {shown:?}: bad symlink target"));
                }
            }
            Kind::Hardlink { target } => match seen.get(target.as_slice()) {
                Some(&ti) if ti < i && matches!(tree.entries[ti].kind, Kind::File { .. }) => {}
                _ => {
                    return Err(format!(
                        "entry {shown:?}: hardlink target is not an earlier regular file"
                    ))
                }
            },
            Kind::Dir | Kind::Fifo | Kind::CharDev { .. } | Kind::BlockDev { .. } => {}
        }
    }
    Ok(())
}

fn check_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > MAX_PATH {
        return Err("bad path length");
    }
    if path.contains(&0) {
        return Err("nul in path");
    }
    for c in path.split(|&b| b == b'/') {
        if c.is_empty() {
            return Err("empty component or absolute path");
        }
        if c == b"." || c == b".." {
            return Err("dot component");
        }
        if c.len() > MAX_NAME {
            return Err("component too long");
        }
    }
    Ok(())
}
