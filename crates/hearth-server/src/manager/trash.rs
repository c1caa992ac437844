//! Removed workspaces: their snapshots are kept for a grace period (a row in
//! `deleted_workspaces`, keyed by the old workspace id, which keys the snapshots in the
//! store too), listed, restored under the same id, and forgotten when the grace period
//! ends, by the background store gc (or `hearth store gc`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::db::DeletedRecord;
use hearth_api::{DeletedWorkspace, RestoreWorkspace};

/// Grace period of a removed workspace's snapshots unless the server is told otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Whether the record's grace period is over at `now`; an unreadable time counts as over
/// (it was written by us, so only a hand-edited database gets here).
fn expired(d: &DeletedRecord, now: time::OffsetDateTime) -> bool {
    time::OffsetDateTime::parse(
        &d.expires_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map_or(true, |t| t <= now)
}

/// Lock key of a removed workspace (names never hold a `/`, so it meets no workspace's).
fn trash_key(id: &str) -> String {
    format!("deleted/{id}")
}

impl Manager {
    /// Sets how long removed workspaces' snapshots are kept (zero: `rm` always purges).
    pub fn set_deleted_retention(&self, d: Duration) {
        self.deleted_retention.store(d.as_secs(), Ordering::Relaxed);
    }

    pub fn deleted_retention(&self) -> Duration {
        Duration::from_secs(self.deleted_retention.load(Ordering::Relaxed))
    }

    /// Moves a removed workspace's row to the deleted records, expiring after the grace
    /// period.
    pub(super) async fn retire(&self, rec: &WorkspaceRecord) -> Result<(), ApiError> {
        let now = time::OffsetDateTime::now_utc();
        let until = now
            .checked_add(time::Duration::seconds(
                i64::try_from(self.deleted_retention().as_secs()).unwrap_or(i64::MAX),
            ))
            .unwrap_or(time::OffsetDateTime::new_utc(
                time::Date::MAX,
                time::Time::MIDNIGHT,
            ));
        // Nanoseconds, fixed width: two removals of a name can fall in one second, and a
        // `restore` without `--snapshot` takes the newest.
        self.store
            .retire(rec, &crate::db::fixed_time(now), &rfc3339(until))
            .await?;
        Ok(())
    }

    /// Whether the store holds snapshots of `spec` (an unreadable store counts as yes:
    /// the caller then keeps rather than forgets).
    pub(super) async fn has_snapshots(&self, spec: &WorkspaceSpec) -> bool {
        self.node
            .snapshots(spec)
            .await
            .map_or(true, |v| !v.is_empty())
    }

    /// Removed workspaces the caller may see (their own; admins see all), newest first,
    /// with their snapshots.
    pub async fn deleted(&self, caller: &Caller) -> Result<Vec<DeletedWorkspace>, ApiError> {
        let mut out = Vec::new();
        for d in self.store.deleted().await? {
            if !caller.may_use(&d.owner) {
                continue;
            }
            let snapshots = self
                .node
                .snapshots(&d.spec)
                .await
                .map_err(|e| node_err("snapshots", &d.spec.name, e))?;
            let store = self
                .node
                .store_usage(&d.spec)
                .await
                .inspect_err(
                    |e| tracing::warn!(workspace = d.spec.name, error = %e, "store use unknown"),
                )
                .ok();
            out.push(DeletedWorkspace {
                name: d.spec.name.clone(),
                id: d.spec.id.to_string(),
                owner: d.owner,
                deleted_at: d.deleted_at,
                expires_at: d.expires_at,
                snapshots: snapshots.into_iter().map(convert::snapshot).collect(),
                store: store.map(convert::store_use),
            });
        }
        Ok(out)
    }

    /// Recreates removed workspace `name` (the caller's, or anyone's for an admin) from its
    /// newest or the given snapshot, under its old id (its snapshots are its own again) and
    /// a new slot, as `req.name` or its old name, and starts it. On failure it is a removed
    /// workspace again, as before.
    pub async fn restore(
        &self,
        caller: &Caller,
        name: &str,
        req: RestoreWorkspace,
    ) -> Result<Workspace, ApiError> {
        let new = req.name.unwrap_or_else(|| name.to_string());
        if !names::is_valid_name(&new) {
            return Err(ApiError::invalid(names::invalid_name_message(&new)));
        }
        super::build::check_not_builder_name(&new)?;
        super::prebuilds::check_not_prebuild_name(&new)?;
        let not_found = || {
            ApiError::not_found(format!(
                "no removed workspace {name} (hearth snapshots --deleted lists them)"
            ))
        };
        // Newest removal first; a snapshot id picks the removal it belongs to.
        let candidates: Vec<DeletedRecord> = self
            .store
            .deleted()
            .await?
            .into_iter()
            .filter(|d| d.spec.name == name && caller.may_use(&d.owner))
            .collect();
        if candidates.is_empty() {
            return Err(not_found());
        }
        let mut chosen = None;
        for d in candidates {
            let snaps = self
                .node
                .snapshots(&d.spec)
                .await
                .map_err(|e| node_err("snapshots", name, e))?;
            let pick = match &req.snapshot {
                Some(want) => snaps.into_iter().find(|s| &s.id == want),
                None => snaps.into_iter().last(),
            };
            if let Some(s) = pick {
                chosen = Some((d, s.id));
                break;
            }
            if req.snapshot.is_none() {
                return Err(ApiError::not_found(format!(
                    "removed workspace {name} has no snapshot to restore"
                )));
            }
        }
        let Some((d, snapshot)) = chosen else {
            return Err(ApiError::not_found(format!(
                "removed workspace {name} has no snapshot {} (hearth snapshots --deleted lists them)",
                req.snapshot.unwrap_or_default()
            )));
        };
        let _trash = self.lock(&trash_key(d.spec.id.as_str())).await;
        let _guard = self.lock(&new).await;
        if self.store.get(&new).await?.is_some() {
            return Err(ApiError::conflict(format!(
                "workspace {new} already exists (restore under another name with --as NAME)"
            )));
        }
        // Gone meanwhile (restored, or expired) under the lock?
        if !self
            .store
            .deleted()
            .await?
            .iter()
            .any(|x| x.spec.id == d.spec.id)
        {
            return Err(not_found());
        }
        let rec = {
            let _alloc = self.alloc.lock().await;
            let t = now();
            let mut spec = d.spec.clone();
            spec.name = new.clone();
            // A placement like any other: the removed copy's node is fenced off.
            spec.generation += 1;
            let node = self
                .choose_node(&spec.limits, &Default::default(), None)
                .await?;
            if self.fleet.only().is_none() {
                let api = self.fleet.api(&node)?;
                self.ensure_image(&node, &api, &spec.image).await?;
            }
            let mut rec = WorkspaceRecord {
                spec,
                state: WorkspaceState::Creating,
                error: None,
                created_at: t.clone(),
                updated_at: t,
                last_snapshot: Some(snapshot.clone()),
                snapshot_error: None,
                owner: d.owner.clone(),
                node,
                node_selector: Default::default(),
                last_snapshot_at: None,
                idle: Default::default(),
            };
            self.insert_at_free_slot(&mut rec, true).await?;
            rec
        };
        tracing::info!(workspace = new, from = name, id = %rec.spec.id, snapshot, "restoring");
        let result = self.restore_then_start(&rec, &snapshot, &new).await;
        match result {
            Ok(_) => {
                self.set(&rec, WorkspaceState::Running, None).await?;
                self.activity.touch(rec.spec.id.as_str());
                self.get(caller, &new).await
            }
            Err(e) => {
                if let Err(re) = self.node.remove(&rec.spec).await {
                    tracing::error!(workspace = new, error = ?re.to_string(), "cleanup after failed restore failed");
                }
                let mut back = rec.clone();
                back.spec.name = d.spec.name.clone();
                if let Err(de) = self.store.retire(&back, &d.deleted_at, &d.expires_at).await {
                    tracing::error!(workspace = new, error = ?de.to_string(), "putting the removed record back failed");
                }
                Err(e)
            }
        }
    }

    /// Forgets the kept snapshots of the caller's removed workspaces named `name` now, and
    /// their records (`rm --purge` of a removed workspace). Returns how many there were.
    pub(super) async fn purge_deleted(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<usize, ApiError> {
        let recs: Vec<DeletedRecord> = self
            .store
            .deleted()
            .await?
            .into_iter()
            .filter(|d| d.spec.name == name && caller.may_use(&d.owner))
            .collect();
        for d in &recs {
            let _trash = self.lock(&trash_key(d.spec.id.as_str())).await;
            self.node
                .forget_snapshots(&d.spec, None)
                .await
                .map_err(|e| node_err("forget_snapshots", name, e))?;
            self.store.forget_deleted(d.spec.id.as_str()).await?;
            tracing::info!(workspace = name, id = %d.spec.id, "removed workspace purged");
        }
        Ok(recs.len())
    }

    /// Forgets the snapshots of removed workspaces whose grace period is over, then their
    /// records. One that cannot be forgotten now (store down) is tried again next time.
    pub async fn expire_deleted(&self) {
        let recs = match self.store.deleted().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list removed workspaces");
                return;
            }
        };
        let now = time::OffsetDateTime::now_utc();
        for d in recs.into_iter().filter(|d| expired(d, now)) {
            let _trash = self.lock(&trash_key(d.spec.id.as_str())).await;
            // Restored meanwhile: its snapshots belong to a live workspace again.
            match self.store.deleted().await {
                Ok(v) if v.iter().any(|x| x.spec.id == d.spec.id) => {}
                _ => continue,
            }
            match self.node.forget_snapshots(&d.spec, None).await {
                Ok(ids) => {
                    if let Err(e) = self.store.forget_deleted(d.spec.id.as_str()).await {
                        tracing::warn!(workspace = d.spec.name, error = %e, "cannot drop the removed record");
                        continue;
                    }
                    tracing::info!(
                        workspace = d.spec.name,
                        id = %d.spec.id,
                        forgotten = ids.len(),
                        "grace period over: snapshots of a removed workspace forgotten"
                    );
                }
                Err(e) => {
                    tracing::warn!(workspace = d.spec.name, error = %e, "cannot forget a removed workspace's snapshots; next gc tries again")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testdb::{rec, Backend, TestDb};

    /// A name removed twice within one second: the later removal is the newest (what a
    /// `restore` without `--snapshot` takes), whatever the random ids' order.
    #[tokio::test]
    async fn removals_within_one_second_keep_their_order() {
        let db = TestDb::new(Backend::Sqlite);
        let store = db.store().await;
        let second = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let until = rfc3339(second + time::Duration::days(7));
        // The older removal's id sorts first, as a tie would be broken.
        let (older, newer) = (
            rec("aaaaaaaaaaaa", "proj", 0),
            rec("bbbbbbbbbbbb", "proj", 0),
        );
        for (rec, ms) in [(&older, 100), (&newer, 900)] {
            store.insert(rec).await.unwrap();
            let at = crate::db::fixed_time(second + time::Duration::milliseconds(ms));
            store.retire(rec, &at, &until).await.unwrap();
        }
        let ids: Vec<String> = store
            .deleted()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.spec.id.to_string())
            .collect();
        assert_eq!(ids, ["bbbbbbbbbbbb", "aaaaaaaaaaaa"]);
    }
}
