//! Snapshot bookkeeping: on demand, after every stop (retried in the background),
//! periodically, and forks of a snapshot into a new workspace.

use std::time::Duration;

use super::*;
use hearth_api::{ForkWorkspace, Snapshot, StoreCheck, StoreGc, StoreGcReport, StoreUse};

/// Background retries of a failed final snapshot: 1s, 2s, 4s, ... this many times.
const RETRIES: u32 = 5;

/// Records the outcome of a snapshot attempt with the workspace, where `hearth ls` shows
/// it and a restarted server finds a failure to retry; not if the workspace was placed
/// anew meanwhile (the attempt was of an older copy). A database error here only loses
/// the bookkeeping, never a snapshot, so it is logged.
pub(super) async fn note(
    store: &crate::db::Store,
    spec: &WorkspaceSpec,
    res: &Result<SnapshotSummary, NodeError>,
) {
    let id = spec.id.as_str();
    let msg;
    let r = match res {
        Ok(s) => Ok(s.id.as_str()),
        Err(e) => {
            msg = e.to_string();
            Err(msg.as_str())
        }
    };
    if let Err(e) = store.set_snapshot_result(id, spec.generation, r).await {
        tracing::error!(id, error = ?e.to_string(), "recording the snapshot result failed");
    }
}

use hearth_node::SnapshotSummary;

impl Manager {
    /// Fills a new record's disk from `snapshot` and starts it (fork and restore share
    /// this); the caller owns cleanup when it fails.
    pub(super) async fn restore_then_start(
        &self,
        rec: &WorkspaceRecord,
        snapshot: &str,
        new: &str,
    ) -> Result<(), ApiError> {
        self.node
            .restore(&rec.spec, snapshot)
            .await
            .map_err(|e| node_err("restore", new, e))?;
        self.set(rec, WorkspaceState::Starting, None).await?;
        self.node
            .start(&rec.spec)
            .await
            .map(|_| ())
            .map_err(|e| node_err("start", new, e))
    }

    /// Takes a snapshot of a running or stopped workspace now.
    pub async fn snapshot(&self, caller: &Caller, name: &str) -> Result<Snapshot, ApiError> {
        let _guard = self.lock(name).await;
        let rec = self.owned(caller, name).await?;
        if !matches!(
            rec.state,
            WorkspaceState::Running | WorkspaceState::Stopped | WorkspaceState::Failed
        ) {
            return Err(ApiError::conflict(format!(
                "cannot snapshot a workspace that is {}",
                rec.state
            )));
        }
        let res = self.node.snapshot(&rec.spec).await;
        note(&self.store, &rec.spec, &res).await;
        Ok(convert::snapshot(
            res.map_err(|e| node_err("snapshot", name, e))?,
        ))
    }

    pub async fn snapshots(&self, caller: &Caller, name: &str) -> Result<Vec<Snapshot>, ApiError> {
        let rec = self.owned(caller, name).await?;
        let v = self
            .node
            .snapshots(&rec.spec)
            .await
            .map_err(|e| node_err("snapshots", name, e))?;
        Ok(v.into_iter().map(convert::snapshot).collect())
    }

    /// What the workspace's snapshots hold in the store.
    pub async fn store_use(&self, caller: &Caller, name: &str) -> Result<StoreUse, ApiError> {
        let rec = self.owned(caller, name).await?;
        let u = self
            .node
            .store_usage(&rec.spec)
            .await
            .map_err(|e| node_err("store_usage", name, e))?;
        Ok(convert::store_use(u))
    }

    /// Final snapshot after a stop. A failure keeps the local data (nothing is deleted on
    /// stop) and is retried in the background with backoff.
    pub(super) async fn final_snapshot(&self, rec: &WorkspaceRecord) {
        let res = self.node.snapshot(&rec.spec).await;
        note(&self.store, &rec.spec, &res).await;
        let Err(e) = res else { return };
        tracing::warn!(workspace = rec.spec.name, error = ?e.to_string(), "final snapshot failed; retrying in the background");
        self.retry_final_snapshot(rec);
    }

    /// Retries a stopped workspace's failed final snapshot in the background: 1 s, 2 s,
    /// 4 s, ... Also resumed at server start for failures recorded before a restart.
    /// Each attempt holds the workspace's lock, as the periodic round's does: without it
    /// the two could snapshot at once and record their results in either order, leaving
    /// `last_snapshot` on the older one.
    pub(super) fn retry_final_snapshot(&self, rec: &WorkspaceRecord) {
        let node = self.node.clone();
        let store = self.store.clone();
        let locks = self.locks.clone();
        let spec = rec.spec.clone();
        tokio::spawn(async move {
            for attempt in 0..RETRIES {
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                let _guard = locks.lock(&spec.name).await;
                // Started (a new final snapshot comes with its stop), removed, or
                // snapshotted by someone else (the periodic round) meanwhile.
                match store.get(&spec.name).await {
                    Ok(Some(r))
                        if r.spec.id == spec.id
                            && r.state == WorkspaceState::Stopped
                            && r.snapshot_error.is_some() => {}
                    _ => return,
                }
                let res = node.snapshot(&spec).await;
                note(&store, &spec, &res).await;
                match res {
                    Ok(s) => {
                        tracing::info!(
                            workspace = spec.name,
                            snapshot = s.id,
                            "final snapshot taken on retry"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(workspace = spec.name, attempt = attempt + 1, error = ?e.to_string(), "final snapshot retry failed")
                    }
                }
            }
        });
    }

    /// One round of periodic snapshots: every running workspace that changed, and the
    /// final snapshot of every stopped one whose last attempt failed (after the quick
    /// retries, e.g. the store was down for longer, this keeps trying every round).
    pub async fn periodic_snapshots(&self) {
        let recs = match self.store.list().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = ?e.to_string(), "periodic snapshots: cannot list workspaces");
                return;
            }
        };
        for rec in recs {
            if rec.state == WorkspaceState::Stopped && rec.snapshot_error.is_some() {
                let _guard = self.lock(&rec.spec.name).await;
                match self.store.get(&rec.spec.name).await {
                    Ok(Some(r))
                        if r.spec.id == rec.spec.id
                            && r.state == WorkspaceState::Stopped
                            && r.snapshot_error.is_some() => {}
                    _ => continue,
                }
                let res = self.node.snapshot(&rec.spec).await;
                note(&self.store, &rec.spec, &res).await;
                match res {
                    Ok(s) => tracing::info!(
                        workspace = rec.spec.name,
                        snapshot = s.id,
                        "final snapshot taken"
                    ),
                    Err(e) => {
                        tracing::warn!(workspace = rec.spec.name, error = ?e.to_string(), "final snapshot still failing")
                    }
                }
                continue;
            }
            // A node that is not connected takes no snapshots (its last one is what a
            // lost workspace comes back to).
            if rec.state != WorkspaceState::Running || self.fleet.api(&rec.node).is_err() {
                continue;
            }
            let name = rec.spec.name.clone();
            let _guard = self.lock(&name).await;
            // State may have changed while waiting for the lock.
            match self.store.get(&name).await {
                Ok(Some(r)) if r.state == WorkspaceState::Running => {}
                _ => continue,
            }
            match self.node.snapshot_if_changed(&rec.spec).await {
                Ok(None) => tracing::debug!(workspace = name, "unchanged, no snapshot"),
                Ok(Some(s)) => note(&self.store, &rec.spec, &Ok(s)).await,
                Err(e) => {
                    tracing::warn!(workspace = name, error = ?e.to_string(), "periodic snapshot failed");
                    note(&self.store, &rec.spec, &Err(e)).await;
                }
            }
        }
    }

    /// Creates workspace `req.name` from a snapshot of `name` (new id, slot and uid range)
    /// and starts it; on failure nothing is left behind.
    pub async fn fork(
        &self,
        caller: &Caller,
        name: &str,
        req: ForkWorkspace,
    ) -> Result<Workspace, ApiError> {
        let new = req.name;
        if !names::is_valid_name(&new) {
            return Err(ApiError::invalid(names::invalid_name_message(&new)));
        }
        super::build::check_not_builder_name(&new)?;
        super::prebuilds::check_not_prebuild_name(&new)?;
        let src = self.owned(caller, name).await?;
        let snaps = self
            .node
            .snapshots(&src.spec)
            .await
            .map_err(|e| node_err("snapshots", name, e))?;
        if !snaps.iter().any(|s| s.id == req.snapshot) {
            return Err(ApiError::not_found(format!(
                "workspace {name} has no snapshot {} (hearth snapshots {name} lists them)",
                req.snapshot
            )));
        }
        let _guard = self.lock(&new).await;
        if self.store.get(&new).await?.is_some() {
            return Err(ApiError::conflict(format!(
                "workspace {new} already exists (pick another with --name, or hearth rm {new})"
            )));
        }
        let rec = self
            .insert_creating(
                caller,
                &new,
                src.spec.image.clone(),
                src.spec.source.clone(),
                src.spec.limits,
                // A fork keeps its source's restrictions.
                src.spec.egress.clone(),
            )
            .await?;
        tracing::info!(
            workspace = new,
            from = name,
            snapshot = req.snapshot,
            "forking"
        );
        // Without its source's devcontainer settings a fork would lose `remoteUser`, its
        // environment and `workspaceFolder`: sessions would run as the image's user.
        let result = match self
            .store
            .copy_devcontainer(src.spec.id.as_str(), rec.spec.id.as_str())
            .await
        {
            Ok(()) => self.restore_then_start(&rec, &req.snapshot, &new).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(_) => {
                self.set(&rec, WorkspaceState::Running, None).await?;
                self.get(caller, &new).await
            }
            Err(e) => {
                if let Err(re) = self.node.remove(&rec.spec).await {
                    tracing::error!(workspace = new, error = ?re.to_string(), "cleanup after failed fork failed");
                }
                if let Err(de) = self.store.delete(&rec.spec.id).await {
                    tracing::error!(workspace = new, error = ?de.to_string(), "deleting record failed");
                }
                Err(e)
            }
        }
    }

    /// One round of background gc. A snapshot in progress holds the store (gc would wait
    /// for nothing and then be refused): this round is skipped, the next one runs.
    pub async fn background_gc(&self) {
        self.expire_deleted().await;
        self.prune_audit().await;
        self.gc_build_images().await;
        match self.node.store_gc(None).await {
            Ok(r) => tracing::info!(
                deleted_chunks = r.deleted_chunks,
                deleted_bytes = r.deleted_bytes,
                "background store gc"
            ),
            Err(e) if e.kind() == hearth_node::ErrorKind::Conflict => {
                tracing::info!(error = %e, "store busy; gc at the next interval")
            }
            Err(e) => tracing::warn!(error = %e, "background store gc failed"),
        }
    }

    pub async fn store_fsck(&self) -> Result<StoreCheck, ApiError> {
        let c = self
            .node
            .store_fsck()
            .await
            .map_err(|e| node_err("store_fsck", "-", e))?;
        Ok(StoreCheck {
            location: c.location,
            ok: c.problems.is_empty(),
            snapshots: c.snapshots,
            chunks: c.chunks,
            problems: c.problems,
        })
    }

    pub async fn store_gc(&self, req: StoreGc) -> Result<StoreGcReport, ApiError> {
        let keep =
            (req.keep_last.is_some() || req.keep_daily.is_some()).then(|| hearth_node::Retention {
                keep_last: req.keep_last.unwrap_or(0),
                keep_daily: req.keep_daily.unwrap_or(0),
            });
        if keep.is_some_and(|k| k.keep_last == 0 && k.keep_daily == 0) {
            return Err(ApiError::invalid(
                "a retention policy that keeps nothing would forget every snapshot",
            ));
        }
        // Removed workspaces past their grace period go first, so their chunks go now.
        self.expire_deleted().await;
        let r = self
            .node
            .store_gc(keep)
            .await
            .map_err(|e| node_err("store_gc", "-", e))?;
        Ok(StoreGcReport {
            forgotten: r.forgotten,
            deleted_chunks: r.deleted_chunks,
            deleted_bytes: r.deleted_bytes,
        })
    }
}
