//! hearth-snapshot: "never lose work" snapshots of a workspace's overlay upper directory.
//!
//! A snapshot is a flat tree of entries (owners stored as seen inside the workspace) plus
//! content-defined chunks (FastCDC, BLAKE3 ids, zstd, optional XChaCha20-Poly1305) kept once
//! per store, so snapshots dedupe across time and across workspaces. Small files are bundled
//! several to a chunk; chunks are stored many to a pack object, located through the store
//! index (see `pack.rs`). Stores are a local directory or an S3 bucket behind [`Backend`]. Restores treat the snapshot as hostile: every
//! path is created with `*at` calls beneath the target without following symlinks.
//!
//! The API is synchronous and uses rayon for chunking/upload; the S3 backend drives its own
//! small tokio runtime, so do not call into it from inside an async task (use
//! `spawn_blocking`).

mod backend;
mod fence;
mod format;
mod maint;
mod pack;
mod restore;
mod snap;
mod tree;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use backend::{Backend, BackendError, LocalBackend, ObjectInfo, S3Backend, S3Config};
pub use fence::{drop_fence, fence, raise_fence};
pub use format::{ChunkId, Key};
pub use maint::{
    chronological, forget, fsck, gc, list, retention, usage, FsckProblem, FsckReport, GcReport,
    Retention, Usage,
};
pub use restore::{pending, restore, restore_lazy, Lazy, Placeholder, LAZY_MIN, PENDING_XATTR};
pub use snap::snapshot;

use format::{Config, Keys};
use pack::Index;
use tree::ChunkRef;

/// Version 2: packs and an index instead of one object per chunk, bundled small files.
const STORE_FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt object {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A chunk is missing or fails verification; `files` are the tree entries that need it.
    #[error("chunk {chunk} is {problem}; affected files: {}", files.join(", "))]
    Chunk {
        chunk: String,
        problem: String,
        files: Vec<String>,
    },
    #[error("snapshot {0} not found")]
    NotFound(String),
    #[error("snapshot {id} is invalid: {reason}")]
    Invalid { id: String, reason: String },
    #[error("store {location} is busy: {reason}")]
    Busy { location: String, reason: String },
    #[error("key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("store {location}: {reason}")]
    Store { location: String, reason: String },
    #[error(
        "store {location} uses format 1 (one object per chunk), which this version no longer \
         reads; restore what you need with the previous release, then start a new store"
    )]
    OldFormat { location: String },
    #[error("restore target {0} must be an empty directory")]
    TargetNotEmpty(PathBuf),
    #[error("invalid workspace id {0:?}")]
    BadWorkspace(String),
    #[error("invalid snapshot id {0:?}")]
    BadId(String),
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.into();
    move |source| SnapshotError::Io { path, source }
}

pub(crate) fn rio_err(path: impl Into<PathBuf>) -> impl FnOnce(rustix::io::Errno) -> SnapshotError {
    let path = path.into();
    move |e| SnapshotError::Io {
        path,
        source: e.into(),
    }
}

/// The snapshot record, stored at `snapshots/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub workspace: String,
    /// Unix seconds.
    pub time: i64,
    /// The sub-second part of `time`: two snapshots of a workspace can be a second apart or
    /// less, and retention must know which is the newest. 0 in records written before it.
    #[serde(default)]
    pub nanos: u32,
    pub parent: Option<String>,
    /// Sum of regular file sizes.
    pub size: u64,
    pub files: u64,
    /// Stored bytes of the chunks this snapshot had to upload.
    pub new_bytes: u64,
    /// Chunks of the encoded tree, in order.
    pub(crate) tree: Vec<ChunkRef>,
    pub(crate) tree_len: u64,
}

/// Counters a caller can poll from another thread while a snapshot or restore runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

/// A snapshot store. Cheap to share across threads.
#[derive(Debug)]
pub struct Store {
    backend: Arc<dyn Backend>,
    keys: Option<Keys>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Store {
    pub(crate) fn pool(&self) -> &'static rayon::ThreadPool {
        pool(self.backend.is_remote())
    }

    pub fn open_local(path: &Path, key: Option<Key>) -> Result<Store, SnapshotError> {
        Store::open(Arc::new(LocalBackend::open(path)?), key)
    }

    pub fn open_s3(cfg: S3Config, key: Option<Key>) -> Result<Store, SnapshotError> {
        Store::open(Arc::new(S3Backend::open(cfg)?), key)
    }

    /// Opens (or initialises) the store on `backend`. An encrypted store refuses a missing or
    /// wrong key, and a plain store refuses a key, rather than mixing the two.
    pub fn open(backend: Arc<dyn Backend>, key: Option<Key>) -> Result<Store, SnapshotError> {
        let keys = key.map(|k| k.derive());
        let location = backend.location();
        let serr = |reason: String| SnapshotError::Store {
            location: location.clone(),
            reason,
        };
        let check = keys
            .as_ref()
            .map(|k| hex::encode(blake3::hash(&k.check).as_bytes()));
        match backend.get("config", format::MAX_SMALL_OBJECT as u64) {
            Ok(obj) => {
                // Format 1 wrote every object, the config included, with envelope version 1.
                if obj.get(..4) == Some(&format::MAGIC[..]) && obj.get(4) == Some(&1) {
                    return Err(SnapshotError::OldFormat { location });
                }
                let raw = format::decode("config", format::Kind::Config, None, &obj)?;
                let cfg: Config =
                    serde_json::from_slice(&raw).map_err(|e| serr(format!("bad config: {e}")))?;
                if cfg.format == 1 {
                    return Err(SnapshotError::OldFormat { location });
                }
                if cfg.format != STORE_FORMAT {
                    return Err(serr(format!("unsupported store format {}", cfg.format)));
                }
                if (cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max)
                    != (format::CHUNK_MIN, format::CHUNK_AVG, format::CHUNK_MAX)
                {
                    return Err(serr("store uses different chunking parameters".into()));
                }
                match (cfg.encrypted, &check) {
                    (true, None) => {
                        return Err(serr("store is encrypted and no key was given".into()))
                    }
                    (false, Some(_)) => {
                        return Err(serr("store is not encrypted but a key was given".into()))
                    }
                    (true, Some(c)) if cfg.key_check.as_ref() != Some(c) => {
                        return Err(serr("wrong key for this store".into()))
                    }
                    _ => {}
                }
            }
            Err(BackendError::NotFound { .. }) => {
                let cfg = Config {
                    format: STORE_FORMAT,
                    chunk_min: format::CHUNK_MIN,
                    chunk_avg: format::CHUNK_AVG,
                    chunk_max: format::CHUNK_MAX,
                    encrypted: keys.is_some(),
                    key_check: check,
                };
                let raw = serde_json::to_vec(&cfg).map_err(|e| serr(e.to_string()))?;
                backend.put(
                    "config",
                    format::encode(format::Kind::Config, None, &raw).into(),
                )?;
                backend.sync()?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Store { backend, keys })
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Fetches and fully verifies a chunk, trying each location the index knows. The error is
    /// a short problem description.
    pub(crate) fn get_chunk(&self, index: &Index, r: &ChunkRef) -> Result<Vec<u8>, String> {
        let mut problem = None;
        for loc in index.locations(&r.id) {
            let key = index.pack_key(&loc);
            let res = self
                .backend
                .get_range(&key, u64::from(loc.off), u64::from(loc.len))
                .map_err(|e| pack::read_problem(&key, &e))
                .and_then(|obj| {
                    pack::open_blob(self.keys.as_ref(), r, &obj)
                        .map_err(|p| format!("{p} in {key}"))
                });
            match res {
                Ok(plain) => return Ok(plain),
                Err(p) => {
                    tracing::warn!(chunk = %r.id, pack = %key, problem = %p, "bad chunk copy");
                    problem.get_or_insert(p);
                }
            }
        }
        Err(problem.unwrap_or_else(|| "missing (in no pack of the store index)".into()))
    }

    pub(crate) fn put_record(&self, info: &SnapshotInfo) -> Result<(), SnapshotError> {
        let raw = serde_json::to_vec(info).map_err(|e| SnapshotError::Store {
            location: self.location(),
            reason: e.to_string(),
        })?;
        let obj = format::encode(format::Kind::Record, self.keys.as_ref(), &raw);
        self.backend
            .put(&format!("snapshots/{}", info.id), obj.into())?;
        Ok(())
    }

    /// The record of snapshot `id` (size, files, time...), without its tree.
    pub fn get_record(&self, id: &str) -> Result<SnapshotInfo, SnapshotError> {
        check_id(id)?;
        let key = format!("snapshots/{id}");
        let obj = match self.backend.get(&key, format::MAX_SMALL_OBJECT as u64) {
            Ok(o) => o,
            Err(BackendError::NotFound { .. }) => {
                return Err(SnapshotError::NotFound(id.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let raw = format::decode(&key, format::Kind::Record, self.keys.as_ref(), &obj)?;
        let info: SnapshotInfo =
            serde_json::from_slice(&raw).map_err(|e| SnapshotError::Corrupt {
                key: key.clone(),
                reason: format!("bad record: {e}"),
            })?;
        if info.id != id {
            return Err(SnapshotError::Corrupt {
                key,
                reason: "record id does not match its name".into(),
            });
        }
        Ok(info)
    }

    /// Loads and decodes a snapshot's tree; every chunk is verified.
    pub(crate) fn get_tree(
        &self,
        info: &SnapshotInfo,
        index: &Index,
    ) -> Result<tree::Tree, SnapshotError> {
        let invalid = |reason: String| SnapshotError::Invalid {
            id: info.id.clone(),
            reason,
        };
        if info.tree_len > format::MAX_TREE_LEN {
            return Err(invalid(format!(
                "tree of {} bytes exceeds the limit",
                info.tree_len
            )));
        }
        let sum: u64 = info.tree.iter().map(|c| u64::from(c.len)).sum();
        if sum != info.tree_len || info.tree.iter().any(|c| c.len > format::CHUNK_MAX) {
            return Err(invalid("tree chunk lengths do not add up".into()));
        }
        use rayon::prelude::*;
        let parts: Vec<Vec<u8>> = self.pool().install(|| {
            info.tree
                .par_iter()
                .map(|c| {
                    self.get_chunk(index, c)
                        .map_err(|problem| SnapshotError::Chunk {
                            chunk: c.id.hex(),
                            problem,
                            files: vec![format!("<tree of snapshot {}>", info.id)],
                        })
                })
                .collect::<Result<_, _>>()
        })?;
        let buf = parts.concat();
        tree::decode(&buf).map_err(invalid)
    }
}

/// Worker threads for a store: one per core for a local store (more only contend, e.g. on a
/// btrfs target's tree locks: measured 20 % slower restores with 3 per core), three per core
/// (at least 6) for a remote one, so CPUs stay busy while requests wait on the network.
/// `HEARTH_SNAPSHOT_THREADS` overrides both.
pub(crate) fn pool(remote: bool) -> &'static rayon::ThreadPool {
    static LOCAL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    static REMOTE: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    let cell = if remote { &REMOTE } else { &LOCAL };
    cell.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let threads = std::env::var("HEARTH_SNAPSHOT_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if remote { (n * 3).max(6) } else { n });
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hearth-snapshot-{i}"))
            .build()
            .unwrap_or_else(|_| {
                rayon::ThreadPoolBuilder::new()
                    .build()
                    .unwrap_or_else(|e| panic!("no thread pool: {e}"))
            })
    })
}

pub(crate) fn check_id(id: &str) -> Result<(), SnapshotError> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(SnapshotError::BadId(id.to_string()))
    }
}

pub(crate) fn check_workspace(ws: &str) -> Result<(), SnapshotError> {
    let ok = !ws.is_empty()
        && ws.len() <= 128
        && ws
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && ws != "."
        && ws != "..";
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::BadWorkspace(ws.to_string()))
    }
}
