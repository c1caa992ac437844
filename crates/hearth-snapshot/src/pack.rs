//! Pack objects and the store index.
//!
//! Storing every chunk as its own object cost a file (or a PUT) per chunk. Instead, chunks are
//! appended to a pack of about [`PACK_TARGET`] bytes, stored at `packs/<blake3 of the pack>`:
//! the pack is just the concatenation of chunk objects, each still in the usual envelope (its
//! own checksum, zstd, AEAD), so one chunk is read back with a single ranged read.
//!
//! Index objects (`index/<random>`) say where each chunk is: (chunk id -> pack, offset,
//! length). A snapshot writes one index object for the packs it made, after the packs and
//! before its record, so whatever a record references is indexed. gc replaces all index
//! objects with one consolidated index before it deletes any pack. A pack no index names is
//! the leftover of a crashed snapshot; gc deletes it.
//!
//! Nothing in an index is trusted: lengths are bounded before anything is read, and a blob is
//! accepted only if its envelope checksum and content hash match, so a lying index yields a
//! "corrupt" or "missing" error naming the files, never wrong data.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::BackendError;
use crate::format::{self, ChunkId, Keys, MAX_STORED_OBJECT, MIN_OBJECT_LEN};
use crate::tree::ChunkRef;
use crate::{SnapshotError, Store};

/// Packs are cut once they reach this size: large enough that a snapshot writes few objects,
/// small enough that gc rewriting a partly dead pack stays cheap.
pub(crate) const PACK_TARGET: usize = 16 * 1024 * 1024;
/// Largest pack offset + length an index may name.
pub(crate) const MAX_PACK: u64 = (PACK_TARGET + MAX_STORED_OBJECT) as u64;
/// Blobs per index object, which keeps each well under [`format::MAX_SMALL_OBJECT`].
const INDEX_BATCH: usize = 100_000;
const INDEX_VERSION: u32 = 1;

/// One chunk object inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Blob {
    pub id: ChunkId,
    pub off: u32,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PackBlobs {
    pub pack: ChunkId,
    pub blobs: Vec<Blob>,
}

#[derive(Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    packs: Vec<PackBlobs>,
}

pub(crate) fn pack_key(pack: &ChunkId) -> String {
    format!("packs/{}", pack.hex())
}

/// Where a chunk is: `pack` indexes [`Index::packs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub pack: u32,
    pub off: u32,
    pub len: u32,
}

/// The union of all index objects, loaded once per operation.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub packs: Vec<ChunkId>,
    map: HashMap<ChunkId, Loc>,
    /// Further copies of a chunk (two snapshots racing on the same content), tried in turn.
    extra: HashMap<ChunkId, Vec<Loc>>,
    /// The index objects this was loaded from.
    pub keys: Vec<String>,
}

impl Index {
    /// Loads every readable index object; unreadable ones are returned separately so each
    /// caller decides (a snapshot merely re-stores their chunks, gc must not proceed).
    pub(crate) fn load(
        store: &Store,
    ) -> Result<(Index, Vec<(String, SnapshotError)>), SnapshotError> {
        let mut keys: Vec<String> = store
            .backend
            .list("index")?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| !k.rsplit('/').next().unwrap_or("").starts_with('.'))
            .collect();
        keys.sort();
        let loaded: Vec<(String, Result<Vec<PackBlobs>, SnapshotError>)> =
            store.pool().install(|| {
                keys.into_par_iter()
                    .map(|k| {
                        let r = read_index(store, &k);
                        (k, r)
                    })
                    .collect()
            });
        let mut idx = Index::default();
        let mut pack_no: HashMap<ChunkId, u32> = HashMap::new();
        let mut bad = Vec::new();
        for (key, r) in loaded {
            match r {
                Ok(packs) => {
                    for p in packs {
                        let n = *pack_no.entry(p.pack).or_insert_with(|| {
                            idx.packs.push(p.pack);
                            (idx.packs.len() - 1) as u32
                        });
                        for b in p.blobs {
                            idx.add(
                                b.id,
                                Loc {
                                    pack: n,
                                    off: b.off,
                                    len: b.len,
                                },
                            );
                        }
                    }
                    idx.keys.push(key);
                }
                Err(e) => bad.push((key, e)),
            }
        }
        Ok((idx, bad))
    }

    fn add(&mut self, id: ChunkId, loc: Loc) {
        match self.map.get(&id) {
            None => {
                self.map.insert(id, loc);
            }
            Some(l) if *l == loc => {}
            Some(_) => {
                let v = self.extra.entry(id).or_default();
                if !v.contains(&loc) {
                    v.push(loc);
                }
            }
        }
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.map.contains_key(id)
    }

    pub(crate) fn get(&self, id: &ChunkId) -> Option<Loc> {
        self.map.get(id).copied()
    }

    /// Every known location of `id`, preferred first.
    pub(crate) fn locations(&self, id: &ChunkId) -> Vec<Loc> {
        let mut v: Vec<Loc> = self.map.get(id).copied().into_iter().collect();
        if let Some(x) = self.extra.get(id) {
            v.extend_from_slice(x);
        }
        v
    }

    pub(crate) fn pack_key(&self, loc: &Loc) -> String {
        pack_key(&self.packs[loc.pack as usize])
    }

    /// All (chunk, location) pairs, duplicates included.
    pub(crate) fn all(&self) -> impl Iterator<Item = (ChunkId, Loc)> + '_ {
        self.map.iter().map(|(id, l)| (*id, *l)).chain(
            self.extra
                .iter()
                .flat_map(|(id, v)| v.iter().map(move |l| (*id, *l))),
        )
    }
}

fn read_index(store: &Store, key: &str) -> Result<Vec<PackBlobs>, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let obj = store.backend.get(key, format::MAX_SMALL_OBJECT as u64)?;
    let raw = format::decode(key, format::Kind::Index, store.keys.as_ref(), &obj)?;
    let f: IndexFile =
        postcard::from_bytes(&raw).map_err(|e| corrupt(format!("index does not decode: {e}")))?;
    if f.version != INDEX_VERSION {
        return Err(corrupt(format!("unsupported index version {}", f.version)));
    }
    for p in &f.packs {
        for b in &p.blobs {
            let len = u64::from(b.len);
            if len < MIN_OBJECT_LEN as u64
                || len > MAX_STORED_OBJECT as u64
                || u64::from(b.off) + len > MAX_PACK
            {
                return Err(corrupt(format!(
                    "impossible location {}+{} for chunk {}",
                    b.off, b.len, b.id
                )));
            }
        }
    }
    Ok(f.packs)
}

/// Writes index objects for `packs`; returns their keys.
pub(crate) fn write_index(
    store: &Store,
    packs: &[PackBlobs],
) -> Result<Vec<String>, SnapshotError> {
    let mut keys = Vec::new();
    let mut batch: Vec<PackBlobs> = Vec::new();
    let mut n = 0;
    let mut flush = |batch: &mut Vec<PackBlobs>| -> Result<(), SnapshotError> {
        if batch.is_empty() {
            return Ok(());
        }
        let raw = postcard::to_stdvec(&IndexFile {
            version: INDEX_VERSION,
            packs: std::mem::take(batch),
        })
        .map_err(|e| SnapshotError::Store {
            location: store.location(),
            reason: format!("encoding index: {e}"),
        })?;
        let key = format!("index/{}", hex::encode(rand::random::<[u8; 16]>()));
        let obj = format::encode(format::Kind::Index, store.keys.as_ref(), &raw);
        store.backend.put(&key, obj.into())?;
        keys.push(key);
        Ok(())
    };
    for p in packs {
        if n + p.blobs.len() > INDEX_BATCH {
            flush(&mut batch)?;
            n = 0;
        }
        n += p.blobs.len();
        batch.push(p.clone());
    }
    flush(&mut batch)?;
    Ok(keys)
}

/// Opens one blob read from a pack and checks it is exactly chunk `r`.
pub(crate) fn open_blob(keys: Option<&Keys>, r: &ChunkRef, obj: &[u8]) -> Result<Vec<u8>, String> {
    let plain = format::decode(&format!("chunk {}", r.id), format::Kind::Chunk, keys, obj)
        .map_err(|e| match e {
            SnapshotError::Corrupt { reason, .. } => format!("corrupt ({reason})"),
            e => format!("corrupt ({e})"),
        })?;
    if plain.len() != r.len as usize {
        return Err(format!(
            "corrupt (length {} where {} was expected)",
            plain.len(),
            r.len
        ));
    }
    if format::chunk_id(keys, &plain) != r.id {
        return Err("corrupt (content hash mismatch)".into());
    }
    Ok(plain)
}

/// Describes a failed pack read for a chunk error.
pub(crate) fn read_problem(key: &str, e: &BackendError) -> String {
    match e {
        BackendError::NotFound { .. } => format!("missing (pack {key} not found)"),
        BackendError::Truncated { .. } => format!("missing (pack {key} is truncated)"),
        e => format!("unreadable ({e})"),
    }
}

struct Open {
    buf: Vec<u8>,
    blobs: Vec<Blob>,
}

/// Collects new chunks of one operation into packs. Shared by the worker threads: encoding
/// happens outside any lock, and each pool thread appends to its own open pack. rayon hands
/// each thread contiguous runs of the work, so a pack holds neighbouring files and a restore
/// reads it in long runs.
pub(crate) struct Packer<'a> {
    store: &'a Store,
    index: &'a Index,
    pending: Mutex<HashSet<ChunkId>>,
    open: Vec<Mutex<Open>>,
    done: Mutex<Vec<PackBlobs>>,
    new_bytes: AtomicU64,
}

impl<'a> Packer<'a> {
    pub(crate) fn new(store: &'a Store, index: &'a Index) -> Packer<'a> {
        Packer {
            store,
            index,
            pending: Mutex::default(),
            // One slot per pool thread, plus one for callers outside the pool.
            open: (0..=store.pool().current_num_threads())
                .map(|_| {
                    Mutex::new(Open {
                        buf: Vec::new(),
                        blobs: Vec::new(),
                    })
                })
                .collect(),
            done: Mutex::default(),
            new_bytes: AtomicU64::new(0),
        }
    }

    /// Stores chunk `data` unless the store or this operation already has it.
    pub(crate) fn add(&self, data: &[u8]) -> Result<ChunkRef, SnapshotError> {
        let id = format::chunk_id(self.store.keys.as_ref(), data);
        let r = ChunkRef {
            id,
            len: data.len() as u32,
        };
        if self.index.contains(&id) {
            return Ok(r);
        }
        let fresh = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        if fresh {
            let obj = format::encode(format::Kind::Chunk, self.store.keys.as_ref(), data);
            self.add_raw(id, &obj)?;
        }
        Ok(r)
    }

    /// Appends an already encoded chunk object (gc copies blobs without decoding them).
    pub(crate) fn add_raw(&self, id: ChunkId, obj: &[u8]) -> Result<(), SnapshotError> {
        let slot = self
            .store
            .pool()
            .current_thread_index()
            .map_or(0, |i| (i + 1) % self.open.len());
        let full = {
            let mut open = self.open[slot].lock().unwrap_or_else(|e| e.into_inner());
            if open.buf.is_empty() {
                open.buf.reserve(PACK_TARGET + obj.len());
            }
            let off = open.buf.len() as u32;
            open.buf.extend_from_slice(obj);
            open.blobs.push(Blob {
                id,
                off,
                len: obj.len() as u32,
            });
            if open.buf.len() >= PACK_TARGET {
                Some(std::mem::replace(
                    &mut *open,
                    Open {
                        buf: Vec::new(),
                        blobs: Vec::new(),
                    },
                ))
            } else {
                None
            }
        };
        match full {
            Some(p) => self.flush(p),
            None => Ok(()),
        }
    }

    fn flush(&self, p: Open) -> Result<(), SnapshotError> {
        if p.blobs.is_empty() {
            return Ok(());
        }
        let pack = ChunkId(*blake3::hash(&p.buf).as_bytes());
        let len = p.buf.len() as u64;
        self.store
            .backend
            .put(&pack_key(&pack), Bytes::from(p.buf))?;
        self.new_bytes.fetch_add(len, Ordering::Relaxed);
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PackBlobs {
                pack,
                blobs: p.blobs,
            });
        Ok(())
    }

    /// Stores the last pack and the index of everything written. Returns the stored bytes
    /// added and the index object keys.
    pub(crate) fn finish(self) -> Result<(u64, Vec<PackBlobs>, Vec<String>), SnapshotError> {
        for slot in &self.open {
            let last = std::mem::replace(
                &mut *slot.lock().unwrap_or_else(|e| e.into_inner()),
                Open {
                    buf: Vec::new(),
                    blobs: Vec::new(),
                },
            );
            self.flush(last)?;
        }
        let done = std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()));
        let keys = write_index(self.store, &done)?;
        Ok((self.new_bytes.load(Ordering::Relaxed), done, keys))
    }
}
