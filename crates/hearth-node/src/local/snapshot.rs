//! Snapshots of a workspace's upper dir into the node's store, and restores from it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hearth_snapshot::{Key, S3Config, SnapshotError, SnapshotInfo, Store};

use super::guard::Hold;
use super::{internal, mkdir, Inner};
use crate::snap::parse_s3_url;
use crate::{
    NodeError, Retention, SnapshotSummary, StoreCheck, StoreGcReport, StoreUsage, WorkspaceId,
    WorkspaceSpec,
};

/// Changes younger than this may share a timestamp tick with the marker, so a marker this
/// fresh never proves "unchanged" (git's racy-clean rule).
const RACY_NS: i128 = 2_000_000_000;

/// The store, opened on first use so an unreachable S3 endpoint does not stop the node.
#[derive(Default)]
pub(super) struct SnapState {
    store: Mutex<Option<Arc<Store>>>,
    /// Per workspace id: the change marker of the upper tree at its last snapshot.
    markers: Mutex<HashMap<String, Marker>>,
    /// Per workspace id: how long its last snapshot kept it frozen (for `hearth bench`).
    pub(super) pauses: Mutex<HashMap<String, Duration>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marker {
    entries: u64,
    max_ctime_ns: i128,
    taken_ns: i128,
}

fn snap_err(context: String) -> impl FnOnce(SnapshotError) -> NodeError {
    move |source| NodeError::Snapshot { context, source }
}

fn summary(s: &SnapshotInfo) -> SnapshotSummary {
    SnapshotSummary {
        id: s.id.clone(),
        workspace: s.workspace.clone(),
        time: s.time,
        parent: s.parent.clone(),
        size: s.size,
        files: s.files,
        new_bytes: s.new_bytes,
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl Inner {
    pub(super) fn snap_store(&self) -> Result<Arc<Store>, NodeError> {
        let mut g = self.snap.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_ref() {
            return Ok(s.clone());
        }
        let data = &self.cfg.data_dir;
        let cfg = &self.cfg.snapshots;
        let key = if cfg.encrypt {
            let path = data.join("snapshot.key");
            Some(Key::load_or_create(&path).map_err(snap_err("snapshot key".into()))?)
        } else {
            None
        };
        let store = match &cfg.s3 {
            None => {
                let dir = data.join("snapshots");
                mkdir(&dir, 0o700)?;
                match Store::open_local(&dir, key.clone()) {
                    // The default store of an older Hearth: keep it aside (nothing is
                    // deleted) and start a new one, so snapshots work again.
                    Err(SnapshotError::OldFormat { .. }) => {
                        let aside = (1..)
                            .map(|n| data.join(format!("snapshots.format1.{n}")))
                            .find(|p| !p.exists())
                            .unwrap_or_else(|| data.join("snapshots.format1"));
                        std::fs::rename(&dir, &aside)
                            .map_err(NodeError::io("move aside", &dir))?;
                        tracing::warn!(
                            old = %aside.display(),
                            "the snapshot store was in an older format: kept it aside and started a new one"
                        );
                        mkdir(&dir, 0o700)?;
                        Store::open_local(&dir, key)
                    }
                    other => other,
                }
            }
            Some(url) => {
                let (endpoint, bucket, prefix) = parse_s3_url(url).ok_or_else(|| {
                    NodeError::Invalid(format!(
                        "snapshot store {url}: expected http://host:port/bucket[/prefix]"
                    ))
                })?;
                let var = |k: &str| std::env::var(k).unwrap_or_default();
                let mut s3 = S3Config::new(
                    Some(endpoint),
                    &bucket,
                    &var("AWS_ACCESS_KEY_ID"),
                    &var("AWS_SECRET_ACCESS_KEY"),
                );
                s3.prefix = prefix;
                Store::open_s3(s3, key)
            }
        }
        .map_err(snap_err("cannot open the snapshot store".into()))?;
        let store = Arc::new(store);
        *g = Some(store.clone());
        Ok(store)
    }

    fn snap_list(&self, spec: &WorkspaceSpec) -> Result<Vec<SnapshotInfo>, NodeError> {
        let store = self.snap_store()?;
        let v = hearth_snapshot::list(&store, Some(&spec.id)).map_err(snap_err(format!(
            "workspace {}: cannot list snapshots",
            spec.name
        )))?;
        Ok(v)
    }

    pub(super) fn snapshots(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Vec<SnapshotSummary>, NodeError> {
        Ok(self.snap_list(spec)?.iter().map(summary).collect())
    }

    /// Takes a snapshot; with `only_if_changed`, returns `None` when the tree has not
    /// changed since this node's last snapshot of it.
    pub(super) fn snapshot(
        &self,
        spec: &WorkspaceSpec,
        only_if_changed: bool,
    ) -> Result<Option<SnapshotSummary>, NodeError> {
        let p = self.paths(&spec.id);
        if !p.image.exists() {
            return Err(NodeError::NotFound(format!(
                "workspace {} has no data on this node",
                spec.name
            )));
        }
        self.open_disk(&p)?;
        // A placeholder must never be stored as if it were the file.
        self.wait_hydrated(spec)?;
        let store = self.snap_store()?;
        check_fence(&store, spec)?;
        let parent = self.snap_list(spec)?.pop().map(|s| s.id);
        let running = self
            .host
            .container_state(&spec.id)?
            .is_some_and(|s| s.is_running());
        // Write back the bulk of dirty data while the workspace runs, so the pause below
        // only covers what it wrote in the meantime.
        sync_fs(&p.upper)?;
        let view = FrozenView::take(self, &p, &spec.id, running)?;
        if let Ok(mut m) = self.snap.pauses.lock() {
            m.insert(spec.id.to_string(), view.pause);
        }
        let marker = change_marker(&view.path)?;
        if only_if_changed && parent.is_some() {
            let last = self
                .snap
                .markers
                .lock()
                .map(|m| m.get(spec.id.as_str()).copied())
                .unwrap_or(None);
            if let Some(last) = last {
                if last.entries == marker.entries
                    && last.max_ctime_ns == marker.max_ctime_ns
                    && last.taken_ns - last.max_ctime_ns > RACY_NS
                {
                    tracing::debug!(id = %spec.id, "unchanged since the last snapshot");
                    return Ok(None);
                }
            }
        }
        if self.cfg.snapshots.s3.is_none() {
            // The local store shares the node's disk (checked after the unchanged test, so
            // idle workspaces do not record errors while the node is low).
            self.check_reserve("take a snapshot into the local store")?;
        }
        let info = hearth_snapshot::snapshot(
            &store,
            &spec.id,
            &view.path,
            spec.uid_base(),
            parent.as_deref(),
            None,
        )
        .map_err(snap_err(format!(
            "workspace {}: snapshot failed",
            spec.name
        )))?;
        // Placed elsewhere while it was taken: it must not join the newer history.
        if let Err(e) = check_fence(&store, spec) {
            if let Err(fe) = hearth_snapshot::forget(&store, std::slice::from_ref(&info.id)) {
                tracing::error!(id = %spec.id, snapshot = %info.id, error = %fe, "cannot forget a fenced snapshot");
            }
            return Err(e);
        }
        if let Ok(mut m) = self.snap.markers.lock() {
            m.insert(spec.id.to_string(), marker);
        }
        tracing::info!(
            id = %spec.id,
            snapshot = %info.id,
            new_bytes = info.new_bytes,
            pause_us = view.pause.as_micros() as u64,
            "snapshot taken"
        );
        // Without a bound, a workspace rewriting its files adds up to its disk size to the
        // store at every snapshot, for ever. A failure here loses nothing; the next
        // snapshot tries again.
        if let Some(keep) = self.cfg.snapshots.retention {
            if let Err(e) = self.forget_snapshots(spec, Some(keep)) {
                tracing::warn!(id = %spec.id, error = %e, "snapshot retention failed");
            }
        }
        Ok(Some(summary(&info)))
    }

    /// Forgets the workspace's snapshots outside `keep`, or all of them without one.
    /// Their chunks go at the next gc.
    pub(super) fn forget_snapshots(
        &self,
        spec: &WorkspaceSpec,
        keep: Option<Retention>,
    ) -> Result<Vec<String>, NodeError> {
        let store = self.snap_store()?;
        let mine = self.snap_list(spec)?;
        let ids = match keep {
            None => mine.iter().map(|s| s.id.clone()).collect(),
            Some(k) => hearth_snapshot::retention(
                &mine,
                hearth_snapshot::Retention {
                    keep_last: k.keep_last,
                    keep_daily: k.keep_daily,
                },
            ),
        };
        hearth_snapshot::forget(&store, &ids).map_err(snap_err(format!(
            "workspace {}: cannot forget snapshots",
            spec.name
        )))?;
        if !ids.is_empty() {
            tracing::info!(id = %spec.id, forgotten = ids.len(), purge = keep.is_none(), "snapshots forgotten");
        }
        Ok(ids)
    }

    pub(super) fn store_usage(&self, spec: &WorkspaceSpec) -> Result<StoreUsage, NodeError> {
        let store = self.snap_store()?;
        let u = hearth_snapshot::usage(&store, &spec.id).map_err(snap_err(format!(
            "workspace {}: cannot read its store use",
            spec.name
        )))?;
        Ok(StoreUsage {
            snapshots: u.snapshots,
            referenced_bytes: u.referenced_bytes,
            unique_bytes: u.unique_bytes,
        })
    }

    /// Restores the workspace's latest snapshot when it has no local data. Returns
    /// whether there was one.
    pub(super) fn restore_latest(&self, spec: &WorkspaceSpec) -> Result<bool, NodeError> {
        let Some(last) = self.snap_list(spec)?.pop() else {
            return Ok(false);
        };
        self.restore(spec, &last.id)?;
        Ok(true)
    }

    /// Builds the workspace dir beside the real one and renames it into place, so a
    /// failed restore leaves nothing half-made.
    pub(super) fn restore(&self, spec: &WorkspaceSpec, id: &str) -> Result<(), NodeError> {
        let p = self.paths(&spec.id);
        if p.dir.exists() {
            return Err(NodeError::Conflict(format!(
                "workspace {} already has data on this node ({})",
                spec.name,
                p.dir.display()
            )));
        }
        let store = self.snap_store()?;
        // From here on a node holding an older placement of it writes no snapshot of it.
        if spec.generation > 0 {
            hearth_snapshot::raise_fence(&store, &spec.id, spec.generation).map_err(snap_err(
                format!("workspace {}: cannot fence older copies", spec.name),
            ))?;
        }
        // Its files must fit beside the reserve; a bad id fails in the restore below.
        let need = store.get_record(id).map(|i| i.size).unwrap_or(0);
        self.check_reserve_for("restore a snapshot", need)?;
        let tmp = self.ws_root.join(format!(".restore-{}", spec.id));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(NodeError::io("remove", &tmp))?;
        }
        let tp = self.paths_in(&tmp);
        let res = (|| {
            mkdir(&tmp, 0o711)?;
            self.make_disk(&tp, spec.limits.disk_bytes)?;
            let context = || format!("workspace {}: cannot restore snapshot {id}", spec.name);
            if self.cfg.snapshots.eager_restore {
                hearth_snapshot::restore(&store, id, &tp.upper, spec.uid_base(), None)
                    .map_err(snap_err(context()))?;
            } else {
                // Large files are placeholders, filled once the workspace's disk is
                // mounted for good (see hydrate.rs); the state file says so.
                let lazy = hearth_snapshot::restore_lazy(&store, id, &tp.upper, spec.uid_base())
                    .map_err(snap_err(context()))?;
                super::hydrate::write_state(&tmp, id)?;
                self.hydrations.keep_fresh(&spec.id, lazy);
            }
            sync_fs(&tp.upper)?;
            // Renaming the dir with the disk mounted below it would work, but a clean
            // unmount first means a crash from here on leaves only unmounted files.
            self.unmount_all(&tmp)?;
            for (d, mode) in [("rootfs", 0o755), ("bundle", 0o700)] {
                mkdir(&tmp.join(d), mode)?;
            }
            let json = serde_json::to_vec_pretty(spec).map_err(internal)?;
            let spec_file = tmp.join("spec.json");
            std::fs::write(&spec_file, json).map_err(NodeError::io("write", &spec_file))?;
            std::fs::rename(&tmp, &p.dir).map_err(|e| {
                NodeError::Internal(format!(
                    "rename {} to {}: {e}",
                    tmp.display(),
                    p.dir.display()
                ))
            })
        })();
        if res.is_err() {
            if let Err(e) = self
                .unmount_all(&tmp)
                .and_then(|()| std::fs::remove_dir_all(&tmp).map_err(internal))
            {
                tracing::error!(path = %tmp.display(), "cleanup after failed restore: {e}");
            }
        } else {
            tracing::info!(id = %spec.id, snapshot = id, "workspace restored");
        }
        res
    }

    pub(super) fn store_fsck(&self) -> Result<StoreCheck, NodeError> {
        let store = self.snap_store()?;
        let r = hearth_snapshot::fsck(&store)
            .map_err(snap_err(format!("store {}: fsck failed", store.location())))?;
        Ok(StoreCheck {
            location: store.location(),
            snapshots: r.snapshots,
            chunks: r.chunks,
            problems: r
                .problems
                .iter()
                .map(|p| {
                    let mut s = format!("{}: {}", p.object, p.problem);
                    if !p.snapshots.is_empty() {
                        s += &format!("; snapshots: {}", p.snapshots.join(", "));
                    }
                    if !p.files.is_empty() {
                        s += &format!("; files: {}", p.files.join(", "));
                    }
                    s
                })
                .collect(),
        })
    }

    pub(super) fn store_gc(&self, keep: Option<Retention>) -> Result<StoreGcReport, NodeError> {
        let store = self.snap_store()?;
        let what = || format!("store {}: gc failed", store.location());
        let mut forgotten = Vec::new();
        if let Some(k) = keep {
            let all = hearth_snapshot::list(&store, None).map_err(snap_err(what()))?;
            forgotten = hearth_snapshot::retention(
                &all,
                hearth_snapshot::Retention {
                    keep_last: k.keep_last,
                    keep_daily: k.keep_daily,
                },
            );
            hearth_snapshot::forget(&store, &forgotten).map_err(snap_err(what()))?;
        }
        let r = hearth_snapshot::gc(&store).map_err(snap_err(what()))?;
        Ok(StoreGcReport {
            forgotten,
            deleted_chunks: r.deleted_chunks,
            deleted_bytes: r.deleted_bytes,
        })
    }
}

/// Name prefix of the read-only subvolumes snapshots read from; any left on a disk
/// are leftovers of a crash (see [`Inner::drop_stale_views`]).
const VIEW_PREFIX: &str = ".hearth-view-";

/// A read-only point-in-time copy of a workspace's upper dir (`path`), taken with the workspace
/// frozen for only as long as the btrfs snapshot takes. Deleted on drop.
struct FrozenView {
    disk: PathBuf,
    name: String,
    path: PathBuf,
    /// How long the workspace was frozen.
    pause: Duration,
}

impl FrozenView {
    fn take(
        inner: &Inner,
        p: &super::Paths,
        id: &WorkspaceId,
        running: bool,
    ) -> Result<Self, NodeError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{VIEW_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let t0 = Instant::now();
        if running {
            inner
                .freezes
                .hold(&inner.cgroups, id, Hold::SNAPSHOT)
                .map_err(|e| NodeError::Internal(format!("freeze workspace {id}: {e}")))?;
        }
        let res = hearth_disk::snapshot_readonly(&p.vol, &p.disk, &name);
        if running {
            // Thaw whatever happened (unless the disk guard holds it too); a failed thaw
            // must not hide the snapshot's outcome.
            if let Err(e) = inner.freezes.release(&inner.cgroups, id, Hold::SNAPSHOT) {
                tracing::error!(%id, "thaw after snapshot failed: {e}");
            }
        }
        let pause = t0.elapsed();
        res?;
        Ok(FrozenView {
            path: p.disk.join(&name).join("upper"),
            disk: p.disk.clone(),
            name,
            pause,
        })
    }
}

impl Drop for FrozenView {
    fn drop(&mut self) {
        if let Err(e) = hearth_disk::delete_subvolume(&self.disk, &self.name) {
            tracing::error!(view = %self.path.display(), "deleting snapshot view: {e}");
        }
    }
}

impl Inner {
    /// Deletes snapshot views a crash left on a workspace's disk.
    pub(super) fn drop_stale_views(&self, p: &super::Paths) {
        let Ok(rd) = std::fs::read_dir(&p.disk) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(VIEW_PREFIX) {
                if let Err(err) = hearth_disk::delete_subvolume(&p.disk, &name) {
                    tracing::warn!(view = %e.path().display(), "deleting stale snapshot view: {err}");
                }
            }
        }
    }
}

fn sync_fs(dir: &Path) -> Result<(), NodeError> {
    let f = std::fs::File::open(dir).map_err(NodeError::io("sync", dir))?;
    rustix::fs::syncfs(&f).map_err(|e| NodeError::io("sync", dir)(e.into()))
}

/// Entry count and newest ctime of the tree: any create, write, chmod, rename or delete
/// below `dir` changes one of them.
fn change_marker(dir: &Path) -> Result<Marker, NodeError> {
    let taken_ns = now_ns();
    let mut m = Marker {
        entries: 0,
        max_ctime_ns: 0,
        taken_ns,
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = std::fs::symlink_metadata(&d).map_err(NodeError::io("stat", &d))?;
        note(&mut m, &md);
        let rd = std::fs::read_dir(&d).map_err(NodeError::io("read", &d))?;
        for e in rd {
            let e = e.map_err(NodeError::io("read", &d))?;
            let md = e.metadata().map_err(NodeError::io("stat", e.path()))?;
            if md.is_dir() {
                stack.push(e.path());
            } else {
                note(&mut m, &md);
            }
        }
    }
    Ok(m)
}

fn note(m: &mut Marker, md: &std::fs::Metadata) {
    m.entries += 1;
    let ns = i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec());
    m.max_ctime_ns = m.max_ctime_ns.max(ns);
}

/// Refuses to snapshot a copy placed under an older generation than the store's fence:
/// the workspace was placed on another node since (see `hearth_snapshot::fence`).
fn check_fence(store: &Store, spec: &WorkspaceSpec) -> Result<(), NodeError> {
    let fence = hearth_snapshot::fence(store, &spec.id).map_err(snap_err(format!(
        "workspace {}: cannot read its fence",
        spec.name
    )))?;
    if spec.generation < fence {
        return Err(NodeError::Conflict(format!(
            "workspace {}: this copy (generation {}) was placed elsewhere since \
             (generation {fence}); its snapshots are refused",
            spec.name, spec.generation
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_sees_changes() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), "1").unwrap();
        let a = change_marker(t.path()).unwrap();
        assert_eq!(a.entries, 3);
        std::fs::remove_file(t.path().join("d/f")).unwrap();
        let b = change_marker(t.path()).unwrap();
        assert_eq!(b.entries, 2);
        assert!(b.max_ctime_ns >= a.max_ctime_ns);
    }
}
