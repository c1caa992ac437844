//! Listing, forgetting, retention, garbage collection (with repacking) and verification.
//!
//! gc and snapshots exclude each other through lease objects under `locks/`: each side writes
//! its lease, then lists the others and backs off if it sees a conflicting one. With S3's
//! read-after-write consistency at least one of two racing parties sees the other, so gc never
//! deletes a chunk a running snapshot has decided to reuse. Leases older than [`LEASE_TTL`] are
//! treated as left over from a crash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use serde::Serialize;

use crate::format::{self, ChunkId};
use crate::pack::{pack_key, write_index, Blob, Index, PackBlobs, Packer, MAX_PACK, PACK_TARGET};
use crate::tree::Kind;
use crate::{check_id, check_workspace, SnapshotError, SnapshotInfo, Store};

pub(crate) const LEASE_TTL: Duration = Duration::from_secs(6 * 3600);

pub(crate) struct Lease<'a> {
    store: &'a Store,
    key: String,
}

#[derive(Serialize)]
struct LeaseBody {
    kind: &'static str,
    pid: u32,
    started: u64,
}

impl<'a> Lease<'a> {
    fn try_acquire(
        store: &'a Store,
        kind: &'static str,
        conflicts: &[&str],
    ) -> Result<Lease<'a>, SnapshotError> {
        let mut rnd = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut rnd);
        let key = format!("locks/{kind}-{}", hex::encode(rnd));
        let body = LeaseBody {
            kind,
            pid: std::process::id(),
            started: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let raw = serde_json::to_vec(&body).unwrap_or_default();
        store.backend.put(
            &key,
            format::encode(format::Kind::Lease, store.keys.as_ref(), &raw).into(),
        )?;
        let lease = Lease { store, key };
        let now = SystemTime::now();
        for o in store.backend.list("locks")? {
            if o.key == lease.key {
                continue;
            }
            let name = o.key.rsplit('/').next().unwrap_or("");
            let fresh = now
                .duration_since(o.modified)
                .map(|age| age < LEASE_TTL)
                .unwrap_or(true);
            if conflicts.iter().any(|c| name.starts_with(&format!("{c}-"))) {
                if fresh {
                    return Err(SnapshotError::Busy {
                        location: store.location(),
                        reason: format!("{} is held", o.key),
                    });
                }
                tracing::warn!(lease = %o.key, "ignoring stale lease");
            }
        }
        Ok(lease)
    }

    pub(crate) fn acquire_for_snapshot(store: &'a Store) -> Result<Lease<'a>, SnapshotError> {
        let mut delay = Duration::from_millis(100);
        for _ in 0..5 {
            match Lease::try_acquire(store, "snapshot", &["gc"]) {
                Err(SnapshotError::Busy { .. }) => std::thread::sleep(delay),
                r => return r,
            }
            delay *= 2;
        }
        Lease::try_acquire(store, "snapshot", &["gc"])
    }
}

#[cfg(test)]
impl<'a> Lease<'a> {
    pub(crate) fn try_acquire_gc_for_test(store: &'a Store) -> Lease<'a> {
        Lease::try_acquire(store, "gc", &[]).unwrap()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.store.backend.delete(&self.key) {
            tracing::warn!(lease = %self.key, error = %e, "could not release lease");
        }
    }
}

type Records = (Vec<SnapshotInfo>, Vec<(String, SnapshotError)>);

/// All records; unreadable ones are returned separately so callers can decide.
fn all_records(store: &Store) -> Result<Records, SnapshotError> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for o in store.backend.list("snapshots")? {
        let id = o.key.trim_start_matches("snapshots/");
        if check_id(id).is_err() {
            continue;
        }
        match store.get_record(id) {
            Ok(r) => good.push(r),
            Err(e) => bad.push((id.to_string(), e)),
        }
    }
    Ok((chronological(good), bad))
}

/// Oldest first. Records from before sub-second times can share a time; among those a
/// parent goes before its child, so a workspace's newest snapshot is never taken for an
/// older one (by [`retention`], or by a restore of the latest).
pub fn chronological(mut v: Vec<SnapshotInfo>) -> Vec<SnapshotInfo> {
    v.sort_by(|a, b| (a.time, a.nanos, &a.id).cmp(&(b.time, b.nanos, &b.id)));
    let mut out: Vec<SnapshotInfo> = Vec::with_capacity(v.len());
    while !v.is_empty() {
        let t = (v[0].time, v[0].nanos);
        let tied = v.iter().take_while(|s| (s.time, s.nanos) == t);
        // Among the oldest ties, take one whose parent is not still waiting.
        let pick = tied
            .clone()
            .position(|s| !tied.clone().any(|o| Some(&o.id) == s.parent.as_ref()))
            .unwrap_or(0);
        out.push(v.remove(pick));
    }
    out
}

/// Snapshots, oldest first; all workspaces when `workspace` is `None`.
pub fn list(store: &Store, workspace: Option<&str>) -> Result<Vec<SnapshotInfo>, SnapshotError> {
    if let Some(ws) = workspace {
        check_workspace(ws)?;
    }
    let (good, bad) = all_records(store)?;
    for (id, e) in bad {
        tracing::warn!(snapshot = %id, error = %e, "unreadable snapshot record skipped");
    }
    Ok(good
        .into_iter()
        .filter(|s| workspace.is_none_or(|w| s.workspace == w))
        .collect())
}

/// Deletes snapshot records. Their chunks go at the next [`gc`].
pub fn forget(store: &Store, ids: &[String]) -> Result<(), SnapshotError> {
    for id in ids {
        check_id(id)?;
    }
    for id in ids {
        store.backend.delete(&format!("snapshots/{id}"))?;
    }
    Ok(())
}

/// Which snapshots to keep: the newest `keep_last`, plus the newest of each of the most recent
/// `keep_daily` UTC days that have snapshots. The newest snapshot of a workspace is always kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    pub keep_last: usize,
    pub keep_daily: usize,
}

/// Returns the ids to [`forget`] under `policy`, applied per workspace.
pub fn retention(snapshots: &[SnapshotInfo], policy: Retention) -> Vec<String> {
    let mut by_ws: BTreeMap<&str, Vec<&SnapshotInfo>> = BTreeMap::new();
    for s in snapshots {
        by_ws.entry(&s.workspace).or_default().push(s);
    }
    let mut forget = Vec::new();
    for (_, snaps) in by_ws {
        let snaps = chronological(snaps.into_iter().cloned().collect());
        let mut days = HashSet::new();
        for (i, s) in snaps.iter().rev().enumerate() {
            let day = s.time.div_euclid(86_400);
            let keep_daily = days.len() < policy.keep_daily && !days.contains(&day);
            if keep_daily {
                days.insert(day);
            }
            if !(i == 0 || i < policy.keep_last || keep_daily) {
                forget.push(s.id.clone());
            }
        }
    }
    forget
}

/// What one workspace's snapshots hold in the store, in stored bytes (compressed and, if
/// so configured, encrypted; tree chunks included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub snapshots: usize,
    /// The distinct chunks its snapshots reference; chunks shared with other workspaces
    /// (forks, identical files) count in full.
    pub referenced_bytes: u64,
    /// Of those, the chunks no other workspace's snapshot references: what forgetting all
    /// its snapshots frees at the next [`gc`].
    pub unique_bytes: u64,
}

/// Store use of `workspace`'s snapshots. Reads every snapshot's tree (all workspaces', to
/// tell shared chunks from its own), so it costs about what listing the chunks of the
/// whole store does.
pub fn usage(store: &Store, workspace: &str) -> Result<Usage, SnapshotError> {
    check_workspace(workspace)?;
    let (records, bad) = all_records(store)?;
    for (id, e) in bad {
        tracing::warn!(snapshot = %id, error = %e, "unreadable snapshot record skipped");
    }
    let (index, _) = Index::load(store)?;
    let mut own: HashSet<ChunkId> = HashSet::new();
    let mut others: HashSet<ChunkId> = HashSet::new();
    let mut usage = Usage::default();
    for r in &records {
        let mine = r.workspace == workspace;
        let set = if mine {
            usage.snapshots += 1;
            &mut own
        } else {
            &mut others
        };
        set.extend(r.tree.iter().map(|c| c.id));
        for e in store.get_tree(r, &index)?.entries {
            if let Kind::File { chunks, .. } = e.kind {
                set.extend(chunks.iter().map(|c| c.id));
            }
        }
    }
    for id in &own {
        let len = index.get(id).map_or(0, |l| u64::from(l.len));
        usage.referenced_bytes += len;
        if !others.contains(id) {
            usage.unique_bytes += len;
        }
    }
    Ok(usage)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub referenced_chunks: usize,
    /// Chunk copies dropped from the index (unreferenced, or a duplicate of a kept copy).
    pub deleted_chunks: usize,
    /// Stored bytes freed (deleted packs minus what repacking wrote).
    pub deleted_bytes: u64,
    /// Packs deleted: wholly dead, repacked, or never indexed (a crashed snapshot's).
    pub deleted_packs: usize,
    pub repacked_packs: usize,
}

/// A pack whose live share falls below this is rewritten with only its live chunks.
const REPACK_LIVE_PERCENT: u64 = 80;

/// Deletes chunks no snapshot references. Refuses to run (`Busy`) while a snapshot is in
/// progress, and aborts without deleting anything if any snapshot or index object cannot be
/// read. Packs that are wholly dead are deleted, mostly dead (or small) ones are rewritten,
/// and all index objects are replaced by one consolidated index before any pack goes.
pub fn gc(store: &Store) -> Result<GcReport, SnapshotError> {
    let _lease = Lease::try_acquire(store, "gc", &["snapshot", "gc"])?;
    let (records, bad) = all_records(store)?;
    if let Some((id, e)) = bad.into_iter().next() {
        return Err(SnapshotError::Store {
            location: store.location(),
            reason: format!("gc aborted, snapshot {id} unreadable: {e}"),
        });
    }
    let (index, bad) = Index::load(store)?;
    if let Some((key, e)) = bad.into_iter().next() {
        return Err(SnapshotError::Store {
            location: store.location(),
            reason: format!("gc aborted, index object {key} unreadable: {e}"),
        });
    }
    let mut live: HashSet<ChunkId> = HashSet::new();
    for r in &records {
        live.extend(r.tree.iter().map(|c| c.id));
        for e in store.get_tree(r, &index)?.entries {
            if let Kind::File { chunks, .. } = e.kind {
                live.extend(chunks.iter().map(|c| c.id));
            }
        }
    }
    let mut report = GcReport {
        referenced_chunks: live.len(),
        ..Default::default()
    };

    // Per pack: its keeper blobs (the preferred copy of a live chunk) and its size.
    let sizes: HashMap<String, u64> = store
        .backend
        .list("packs")?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let npacks = index.packs.len();
    let mut keep: Vec<Vec<Blob>> = vec![Vec::new(); npacks];
    let mut listed = 0usize;
    for (id, l) in index.all() {
        listed += 1;
        if live.contains(&id) && index.get(&id) == Some(l) {
            keep[l.pack as usize].push(Blob {
                id,
                off: l.off,
                len: l.len,
            });
        }
    }
    let kept_blobs: usize = keep.iter().map(Vec::len).sum();
    report.deleted_chunks = listed - kept_blobs;
    let size_of = |p: usize| -> Option<u64> { sizes.get(&pack_key(&index.packs[p])).copied() };
    let small = |p: usize| size_of(p).is_some_and(|s| s < (PACK_TARGET / 2) as u64);
    let n_small = (0..npacks)
        .filter(|&p| small(p) && !keep[p].is_empty())
        .count();
    let mut delete: Vec<String> = Vec::new();
    let mut repack: Vec<usize> = Vec::new();
    let mut consolidated: Vec<PackBlobs> = Vec::new();
    for (p, blobs) in keep.iter_mut().enumerate() {
        let key = pack_key(&index.packs[p]);
        let live_bytes: u64 = blobs.iter().map(|b| u64::from(b.len)).sum();
        match size_of(p) {
            // Missing pack: keep its entries so fsck and restores name what is lost.
            None => {}
            Some(_) if blobs.is_empty() => {
                delete.push(key);
                continue;
            }
            Some(size)
                if live_bytes * 100 < size * REPACK_LIVE_PERCENT || (small(p) && n_small > 1) =>
            {
                repack.push(p);
                continue;
            }
            Some(_) => {}
        }
        if !blobs.is_empty() {
            blobs.sort_by_key(|b| b.off);
            consolidated.push(PackBlobs {
                pack: index.packs[p],
                blobs: std::mem::take(blobs),
            });
        }
    }
    // Rewrite the live part of the repack set, copying stored objects as they are.
    let empty = Index::default();
    let packer = Packer::new(store, &empty);
    for &p in &repack {
        let key = pack_key(&index.packs[p]);
        let data = match store.backend.get(&key, MAX_PACK) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(pack = %key, error = %e, "cannot read pack to repack; kept");
                let mut blobs = std::mem::take(&mut keep[p]);
                blobs.sort_by_key(|b| b.off);
                consolidated.push(PackBlobs {
                    pack: index.packs[p],
                    blobs,
                });
                continue;
            }
        };
        for b in &keep[p] {
            let (lo, hi) = (b.off as usize, b.off as usize + b.len as usize);
            match data.get(lo..hi) {
                Some(obj) => packer.add_raw(b.id, obj)?,
                None => {
                    return Err(SnapshotError::Corrupt {
                        key,
                        reason: format!("chunk {} lies beyond the end of the pack", b.id),
                    })
                }
            }
        }
        delete.push(key);
        report.repacked_packs += 1;
    }
    let (written, _, _) = packer.finish()?;
    write_index(store, &consolidated)?;
    // Only once the new index is durable may the old one and the packs go.
    store.backend.sync()?;
    for k in &index.keys {
        store.backend.delete(k)?;
    }
    let indexed: HashSet<String> = index.packs.iter().map(pack_key).collect();
    let now = SystemTime::now();
    // Packs no index names: a crashed snapshot's (no snapshot can be running now).
    for (key, _) in sizes.iter().filter(|(k, _)| !indexed.contains(*k)) {
        delete.push(key.clone());
    }
    let mut freed = 0u64;
    for key in &delete {
        store.backend.delete(key)?;
        freed += sizes.get(key).copied().unwrap_or(0);
        report.deleted_packs += 1;
    }
    report.deleted_bytes = freed.saturating_sub(written);
    // Temp files of crashed local writes.
    for o in store.backend.list("tmp")? {
        if now.duration_since(o.modified).is_ok_and(|a| a > LEASE_TTL) {
            store.backend.delete(&o.key)?;
        }
    }
    tracing::info!(
        deleted = report.deleted_chunks,
        packs = report.deleted_packs,
        repacked = report.repacked_packs,
        bytes = report.deleted_bytes,
        "gc done"
    );
    Ok(report)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckProblem {
    /// Store key of the bad object.
    pub object: String,
    pub problem: String,
    pub snapshots: Vec<String>,
    /// Files (first few) that need the object.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    pub snapshots: usize,
    pub chunks: usize,
    pub problems: Vec<FsckProblem>,
}

impl FsckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads and verifies every object every snapshot references. Packs and index objects nothing
/// references (a crashed snapshot's) are not problems; gc removes them.
pub fn fsck(store: &Store) -> Result<FsckReport, SnapshotError> {
    let (records, bad) = all_records(store)?;
    let mut report = FsckReport {
        snapshots: records.len() + bad.len(),
        ..Default::default()
    };
    for (id, e) in bad {
        report.problems.push(FsckProblem {
            object: format!("snapshots/{id}"),
            problem: e.to_string(),
            snapshots: vec![id],
            files: vec![],
        });
    }
    let (index, bad) = Index::load(store)?;
    for (key, e) in bad {
        report.problems.push(FsckProblem {
            object: key,
            problem: e.to_string(),
            snapshots: vec![],
            files: vec![],
        });
    }
    let mut users: HashMap<crate::tree::ChunkRef, (Vec<String>, Vec<String>)> = HashMap::new();
    for r in &records {
        let t = match store.get_tree(r, &index) {
            Ok(t) => t,
            Err(e) => {
                report.problems.push(FsckProblem {
                    object: format!("tree of {}", r.id),
                    problem: e.to_string(),
                    snapshots: vec![r.id.clone()],
                    files: vec![],
                });
                continue;
            }
        };
        for e in &t.entries {
            if let Kind::File { chunks, .. } = &e.kind {
                for c in chunks {
                    let u = users.entry(*c).or_default();
                    if u.0.last() != Some(&r.id) {
                        u.0.push(r.id.clone());
                    }
                    let name = crate::tree::display(&e.path);
                    if u.1.len() < 8 && !u.1.contains(&name) {
                        u.1.push(name);
                    }
                }
            }
        }
    }
    report.chunks = users.len();
    let mut problems: Vec<FsckProblem> = store.pool().install(|| {
        users
            .par_iter()
            .filter_map(|(c, (snaps, files))| {
                store.get_chunk(&index, c).err().map(|problem| FsckProblem {
                    object: format!("chunk {}", c.id),
                    problem,
                    snapshots: snaps.clone(),
                    files: files.clone(),
                })
            })
            .collect()
    });
    problems.sort_by(|a, b| a.object.cmp(&b.object));
    report.problems.extend(problems);
    Ok(report)
}
