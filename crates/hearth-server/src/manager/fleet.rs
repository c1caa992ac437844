//! Placement and moves across the fleet: where a new workspace goes, `hearth move`,
//! `hearth node drain|undrain|label|rm`, and images following workspaces to their node.
//!
//! A move never loses the only copy: the workspace stops on its node, a final snapshot is
//! taken there, the target restores it under the next generation and must report it, and
//! only then does the record point at the target and the old copy go. A crash in between
//! leaves the record on the old node with its copy; the target's partial copy is a stray
//! its next reconcile removes.

use std::collections::HashMap;

use hearth_api::{DrainReport, MoveFailure, Moved, Node};

use super::*;
use crate::fleet::{AdminState, Labels, NodeState};
use crate::scheduler::{self, Candidate, Placed};

fn capacity_view(c: &hearth_node::NodeCapacity) -> hearth_api::NodeCapacity {
    hearth_api::NodeCapacity {
        cpus: c.cpus,
        memory_total: c.memory_total,
        memory_available: c.memory_available,
        disk_total: c.disk_total,
        disk_free: c.disk_free,
        disk_reserve: c.disk_reserve,
        workspaces: c.workspaces,
        running: c.running,
    }
}

/// How old the scheduler's view of what is placed where may get before it is read again
/// from the database (in the background: decisions meanwhile use the older view).
pub const PLACEMENT_VIEW_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2);

/// The scheduler's view of what the control plane has put on each node, so a decision
/// does not read every workspace row (at 10,000 workspaces that read alone is several
/// milliseconds). It is this server's own placements added at once over a database read
/// at most [`PLACEMENT_VIEW_MAX_AGE`] old: other servers' placements and state changes
/// show up within that, and the node's own checks at create still guard its capacity.
#[derive(Default)]
pub(super) struct PlacementView {
    /// When read, and the sums.
    view: std::sync::Mutex<Option<(std::time::Instant, HashMap<String, Placed>)>>,
    refreshing: std::sync::atomic::AtomicBool,
}

impl PlacementView {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<(std::time::Instant, HashMap<String, Placed>)>> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Manager {
    /// What the control plane has put on each node, read from the database now.
    async fn placed(&self) -> Result<HashMap<String, Placed>, ApiError> {
        let mut out: HashMap<String, Placed> = HashMap::new();
        for (node, state, limits) in self.store.placement_rows().await? {
            // A row whose limits do not parse is reported by every other read of it.
            let limits: Limits = serde_json::from_str(&limits).unwrap_or_default();
            let running = matches!(
                WorkspaceState::parse(&state),
                Some(WorkspaceState::Running | WorkspaceState::Starting)
            );
            out.entry(node).or_default().add(&limits, running);
        }
        Ok(out)
    }

    /// [`Manager::placed`] through the [`PlacementView`]: a view too old is read again
    /// in the background (in line only when there is none yet, or no shared manager).
    async fn placed_view(&self) -> Result<HashMap<String, Placed>, ApiError> {
        use std::sync::atomic::Ordering;
        let (have, stale) = match &*self.placement.lock() {
            Some((at, v)) => (Some(v.clone()), at.elapsed() > PLACEMENT_VIEW_MAX_AGE),
            None => (None, true),
        };
        let me = self.me.upgrade();
        match (have, me) {
            (Some(v), Some(me)) => {
                if stale && !self.placement.refreshing.swap(true, Ordering::AcqRel) {
                    tokio::spawn(async move {
                        match me.placed().await {
                            Ok(fresh) => {
                                *me.placement.lock() = Some((std::time::Instant::now(), fresh))
                            }
                            Err(e) => {
                                tracing::warn!(error = %e.message, "cannot read placements")
                            }
                        }
                        me.placement.refreshing.store(false, Ordering::Release);
                    });
                }
                Ok(v)
            }
            (Some(v), None) if !stale => Ok(v),
            _ => {
                let fresh = self.placed().await?;
                *self.placement.lock() = Some((std::time::Instant::now(), fresh.clone()));
                Ok(fresh)
            }
        }
    }

    /// Counts a workspace this server just placed on `node` in the view at once.
    fn assume_placed(&self, node: &str, limits: &Limits) {
        if let Some((_, v)) = &mut *self.placement.lock() {
            v.entry(node.to_string()).or_default().add(limits, true);
        }
    }

    /// The node a workspace with `limits` and `selector` goes to, never `exclude`. A fleet
    /// of one node (the all-in-one server) places there without asking.
    pub async fn choose_node(
        &self,
        limits: &Limits,
        selector: &Labels,
        exclude: Option<&str>,
    ) -> Result<String, ApiError> {
        if selector.is_empty() && exclude.is_none() && self.fleet.only().is_some() {
            if let Some(n) = self.fleet.nodes().into_iter().next() {
                return Ok(n.name);
            }
        }
        let nodes = self.fleet.nodes();
        let placed = self.placed_view().await?;
        let candidates: Vec<Candidate<'_>> = nodes
            .iter()
            .map(|n| Candidate {
                name: &n.name,
                ready: n.connected && n.state == NodeState::Ready,
                labels: &n.labels,
                capacity: n.capacity.as_ref(),
                placed: placed.get(&n.name).copied().unwrap_or_default(),
            })
            .collect();
        let chosen = scheduler::place(&candidates, limits, selector, exclude)
            .map(str::to_string)
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        self.assume_placed(&chosen, limits);
        Ok(chosen)
    }

    /// Every node (admins only: `hearth node ls`).
    pub async fn nodes(&self) -> Result<Vec<Node>, ApiError> {
        let placed = self.placed().await?;
        Ok(self
            .fleet
            .nodes()
            .into_iter()
            .map(|n| Node {
                workspaces: placed.get(&n.name).map_or(0, |p| p.workspaces),
                state: n.state.as_str().to_string(),
                connected: n.connected,
                embedded: n.embedded,
                capacity: n.capacity.as_ref().map(capacity_view),
                last_seen: n.last_seen,
                labels: n.labels,
                name: n.name,
            })
            .collect())
    }

    async fn node_view(&self, name: &str) -> Result<Node, ApiError> {
        self.nodes()
            .await?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| crate::fleet::FleetError::NotFound(name.to_string()).into())
    }

    /// Replaces a node's labels.
    pub async fn set_node_labels(&self, name: &str, labels: Labels) -> Result<Node, ApiError> {
        if labels.len() > hearth_api::MAX_NODE_LABELS {
            return Err(ApiError::invalid(format!(
                "{} labels: a node carries at most {}",
                labels.len(),
                hearth_api::MAX_NODE_LABELS
            )));
        }
        for (k, v) in &labels {
            crate::fleet::parse_label(&format!("{k}={v}"))?;
        }
        self.fleet.set_labels(name, labels).await?;
        self.node_view(name).await
    }

    /// Takes a drained node back: new workspaces may go there again.
    pub async fn undrain_node(&self, name: &str) -> Result<Node, ApiError> {
        self.fleet.set_admin(name, AdminState::Ready).await?;
        tracing::info!(node = name, "node ready again");
        self.node_view(name).await
    }

    /// Marks a node draining (nothing new goes there) and moves each of its workspaces
    /// to where the scheduler puts it. One that cannot move stays and is reported; the
    /// node stays draining either way.
    pub async fn drain_node(&self, name: &str) -> Result<DrainReport, ApiError> {
        self.fleet.set_admin(name, AdminState::Draining).await?;
        tracing::info!(node = name, "draining");
        let mut report = DrainReport::default();
        let on_node: Vec<WorkspaceRecord> = self
            .store
            .list()
            .await?
            .into_iter()
            .filter(|r| r.node == name)
            .collect();
        for rec in on_node {
            let ws = rec.spec.name.clone();
            match self.move_named(&ws, None, Some(name)).await {
                Ok(to) => report.moved.push(Moved {
                    workspace: ws,
                    node: to,
                }),
                Err(e) => report.failed.push(MoveFailure {
                    workspace: ws,
                    error: e.message,
                }),
            }
        }
        Ok(report)
    }

    /// Forgets a node that holds no workspace.
    pub async fn remove_node(&self, name: &str) -> Result<(), ApiError> {
        Ok(self.fleet.remove(name).await?)
    }

    /// `hearth move NAME [--node N]` (admins only).
    pub async fn move_workspace(
        &self,
        caller: &Caller,
        name: &str,
        to: Option<&str>,
    ) -> Result<Workspace, ApiError> {
        // Someone else's workspace is a missing one, as on every route; then admins only.
        self.owned(caller, name).await?;
        if !caller.admin {
            return Err(ApiError::forbidden(
                "moving workspaces between nodes is for admins",
            ));
        }
        self.move_named(name, to, None).await?;
        self.get(caller, name).await
    }

    /// Moves workspace `name` to `to` (or where the scheduler puts it), if it is still on
    /// `only_from` when given (a drain). Returns the node it went to.
    async fn move_named(
        &self,
        name: &str,
        to: Option<&str>,
        only_from: Option<&str>,
    ) -> Result<String, ApiError> {
        let _guard = self.lock(name).await;
        let rec = self
            .store
            .get(name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("workspace {name} not found")))?;
        if only_from.is_some_and(|n| n != rec.node) {
            return Ok(rec.node);
        }
        if rec.state.is_transitional() {
            return Err(ApiError::conflict(format!(
                "workspace {name} is {}; try again when it is done",
                rec.state
            )));
        }
        let target = match to {
            Some(t) => {
                match self.fleet.state(t) {
                    None => return Err(crate::fleet::FleetError::NotFound(t.to_string()).into()),
                    Some(NodeState::Ready) => {}
                    Some(s) => {
                        return Err(ApiError::conflict(format!(
                            "node {t} is {s}: it takes no workspaces"
                        )))
                    }
                }
                t.to_string()
            }
            None => {
                self.choose_node(&rec.spec.limits, &rec.node_selector, Some(&rec.node))
                    .await?
            }
        };
        if target == rec.node {
            return Err(ApiError::conflict(format!(
                "workspace {name} is on node {target} already"
            )));
        }
        self.move_locked(&rec, &target).await?;
        Ok(target)
    }

    /// The move itself; `rec`'s name lock is held.
    async fn move_locked(&self, rec: &WorkspaceRecord, target: &str) -> Result<(), ApiError> {
        let name = &rec.spec.name;
        let from = rec.node.as_str();
        let src = self.fleet.api(from)?;
        let dst = self.fleet.api(target)?;
        tracing::info!(workspace = name, from, to = target, "moving");
        let was_running = rec.state == WorkspaceState::Running;
        if was_running {
            self.set(rec, WorkspaceState::Stopping, None).await?;
            if let Err(e) = src.stop(&rec.spec).await {
                let e = node_err("stop", name, e);
                self.set(rec, WorkspaceState::Failed, Some(&e.message))
                    .await?;
                return Err(e);
            }
            self.stopped(rec, &format!("moving to node {target}")).await;
            self.set(rec, WorkspaceState::Stopped, None).await?;
        }
        let snap = src.snapshot(&rec.spec).await;
        snapshots::note(&self.store, &rec.spec, &snap).await;
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                let e = node_err("snapshot", name, e);
                return self.undo_move(rec, &src, was_running, e).await;
            }
        };
        if let Err(e) = self.ensure_image(target, &dst, &rec.spec.image).await {
            return self.undo_move(rec, &src, was_running, e).await;
        }
        let mut spec = rec.spec.clone();
        spec.generation += 1;
        let restored = async {
            dst.restore(&spec, &snap.id)
                .await
                .map_err(|e| node_err("restore", name, e))?;
            match dst.status(&spec).await {
                Ok(st) if st.state == RunState::Stopped => Ok(()),
                Ok(st) => Err(ApiError::internal(format!(
                    "workspace {name}: node {target} reports the restored copy {:?}",
                    st.state
                ))),
                Err(e) => Err(node_err("status", name, e)),
            }
        }
        .await;
        if let Err(e) = restored {
            if let Err(re) = dst.remove(&spec).await {
                tracing::error!(workspace = name, node = target, error = %re, "removing a failed move's copy failed");
            }
            // The target may have raised the store's fence to the new generation: the
            // copy that stays takes a newer one, or its snapshots would be refused.
            self.store.place(&rec.spec.id, from).await?;
            let rec = self
                .store
                .get(name)
                .await?
                .ok_or_else(|| ApiError::internal(format!("workspace {name} vanished")))?;
            return self.undo_move(&rec, &src, was_running, e).await;
        }
        let generation = self.store.place(&rec.spec.id, target).await?;
        if generation != spec.generation {
            tracing::warn!(
                workspace = name,
                generation,
                expected = spec.generation,
                "generation moved on meanwhile"
            );
        }
        tracing::info!(workspace = name, from, to = target, generation, "moved");
        // The old copy goes only now; if its node fails here, its reconcile at the next
        // attach removes it (the record no longer lists it there).
        if let Err(e) = src.remove(&rec.spec).await {
            tracing::warn!(workspace = name, node = from, error = %e, "removing the old copy failed; its node drops it when it attaches again");
            self.store.add_eviction(from, &rec.spec).await?;
        }
        if was_running {
            let rec = self
                .store
                .get(name)
                .await?
                .ok_or_else(|| ApiError::internal(format!("workspace {name} vanished")))?;
            self.set(&rec, WorkspaceState::Starting, None).await?;
            match dst.start(&rec.spec).await {
                Ok(_) => {
                    self.set(&rec, WorkspaceState::Running, None).await?;
                    self.started(&rec).await?;
                }
                Err(e) => {
                    let e = node_err("start", name, e);
                    self.set(&rec, WorkspaceState::Failed, Some(&e.message))
                        .await?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Puts a workspace whose move failed back as it was on its node, and answers `e`.
    async fn undo_move(
        &self,
        rec: &WorkspaceRecord,
        src: &Arc<dyn NodeApi>,
        was_running: bool,
        e: ApiError,
    ) -> Result<(), ApiError> {
        if was_running {
            self.set(rec, WorkspaceState::Starting, None).await?;
            match src.start(&rec.spec).await {
                Ok(_) => self.set(rec, WorkspaceState::Running, None).await?,
                Err(se) => {
                    let m = format!("restart after a failed move: {se}");
                    self.set(rec, WorkspaceState::Failed, Some(&m)).await?;
                }
            }
        }
        Err(e)
    }

    /// Makes sure node `target` has image `id`: copied from a node that has it (an
    /// oci-archive export, loaded on the target) when it does not.
    pub(super) async fn ensure_image(
        &self,
        target: &str,
        dst: &Arc<dyn NodeApi>,
        id: &str,
    ) -> Result<(), ApiError> {
        match dst.resolve_image(id).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(node_err("resolve_image", id, e)),
        }
        let mut from = None;
        for api in self.fleet.connected() {
            if let Ok(img) = api.resolve_image(id).await {
                from = Some((api, img));
                break;
            }
        }
        let Some((src, img)) = from else {
            return Err(ApiError::conflict(format!(
                "image {id} is on no connected node: load or pull it again"
            )));
        };
        let label = img.names.first().cloned();
        tracing::info!(image = id, node = target, "copying image");
        // An empty name: the config as stored, so the id stays the same.
        let mut file = src
            .export_image(id, "")
            .await
            .map_err(|e| node_err("export_image", id, e))?;
        let dir = self.scratch_dir();
        let tmp = tokio::task::spawn_blocking(move || -> std::io::Result<tempfile::TempPath> {
            std::fs::create_dir_all(&dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
            std::io::copy(&mut file, &mut tmp)?;
            Ok(tmp.into_temp_path())
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("copying image {id}: {e}")))?;
        let (progress, _unread) = tokio::sync::mpsc::unbounded_channel();
        let loaded = dst
            .load_image(tmp.to_path_buf(), label, progress)
            .await
            .map_err(|e| node_err("load_image", id, e))?;
        if loaded.id != id {
            return Err(ApiError::internal(format!(
                "image {id} copied to node {target} came out as {}",
                loaded.id
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::fleet::AttachHook for Manager {
    async fn attached(&self, node: &str, api: &Arc<dyn NodeApi>) -> Result<(), String> {
        self.fence_node(node, api).await.map_err(|e| e.message)
    }
}

impl Manager {
    /// Drops `node`'s copies of workspaces placed elsewhere since it had them (without a
    /// snapshot: the newer history is elsewhere), then reconciles it with the workspaces
    /// placed on it and records what it reports.
    pub(super) async fn fence_node(
        &self,
        node: &str,
        api: &Arc<dyn NodeApi>,
    ) -> Result<(), ApiError> {
        self.drop_evicted(node, api).await?;
        let recs: Vec<WorkspaceRecord> = self
            .store
            .list()
            .await?
            .into_iter()
            .filter(|r| r.node == node)
            .collect();
        let specs: Vec<WorkspaceSpec> = recs.iter().map(|r| r.spec.clone()).collect();
        let statuses = api
            .reconcile(&specs)
            .await
            .map_err(|e| node_err("reconcile", node, e))?;
        for rec in recs {
            // An operation under way owns the row.
            if rec.state.is_transitional() {
                continue;
            }
            let actual = statuses
                .iter()
                .find(|(id, _)| *id == rec.spec.id)
                .map(|(_, s)| s.state);
            if let Some(state) = reconciled_state(rec.state, actual) {
                if state != rec.state {
                    tracing::info!(workspace = rec.spec.name, node, from = %rec.state, to = %state, "reconciled at attach");
                    let error = (state == WorkspaceState::Failed)
                        .then_some("the node has no data for this workspace");
                    self.store.set_state(&rec.spec.id, state, error).await?;
                }
            }
        }
        Ok(())
    }

    /// Removes the copies `node` holds of workspaces placed elsewhere since.
    pub(super) async fn drop_evicted(
        &self,
        node: &str,
        api: &Arc<dyn NodeApi>,
    ) -> Result<(), ApiError> {
        for spec in self.store.evictions(node).await? {
            api.remove(&spec)
                .await
                .map_err(|e| node_err("remove", &spec.name, e))?;
            tracing::info!(
                node,
                workspace = spec.name,
                generation = spec.generation,
                "dropped the copy of a workspace placed elsewhere"
            );
            self.store.remove_eviction(node, &spec.id).await?;
        }
        Ok(())
    }

    /// Whether `rec`'s node is lost (its workspaces show `lost`).
    pub(super) fn on_lost_node(&self, rec: &WorkspaceRecord) -> bool {
        self.fleet.state(&rec.node) == Some(NodeState::Lost)
    }

    /// `hearth start` of a workspace whose node is lost: restored on another node from
    /// its last snapshot under the next generation and started there. The lost node's
    /// copy is fenced off and dropped when it attaches again. The name lock is held.
    pub(super) async fn recover_lost(&self, rec: &WorkspaceRecord) -> Result<(), ApiError> {
        let name = &rec.spec.name;
        let Some(snap) = rec.last_snapshot.clone() else {
            return Err(ApiError::conflict(format!(
                "workspace {name} is on lost node {} and has no snapshot to come back from",
                rec.node
            )));
        };
        let target = self
            .choose_node(&rec.spec.limits, &rec.node_selector, Some(&rec.node))
            .await?;
        let dst = self.fleet.api(&target)?;
        self.ensure_image(&target, &dst, &rec.spec.image).await?;
        tracing::info!(
            workspace = name,
            lost = rec.node,
            to = target,
            snapshot = snap,
            "bringing back from the last snapshot"
        );
        let mut spec = rec.spec.clone();
        spec.generation += 1;
        if let Err(e) = dst.restore(&spec, &snap).await {
            if let Err(re) = dst.remove(&spec).await {
                tracing::error!(workspace = name, node = target, error = %re, "removing a failed restore failed");
            }
            return Err(node_err("restore", name, e));
        }
        // The record moves first: a crash before the eviction is recorded leaves the old
        // copy's files on the lost node (its runtime is cleaned as a stray), never an
        // eviction of the copy still placed.
        let old_node = rec.node.clone();
        let generation = self.store.place(&rec.spec.id, &target).await?;
        self.store.add_eviction(&old_node, &rec.spec).await?;
        tracing::info!(
            workspace = name,
            node = target,
            generation,
            "placed after node loss"
        );
        let rec = self
            .store
            .get(name)
            .await?
            .ok_or_else(|| ApiError::internal(format!("workspace {name} vanished")))?;
        self.set(&rec, WorkspaceState::Starting, None).await?;
        match dst.start(&rec.spec).await {
            Ok(_) => {
                self.set(&rec, WorkspaceState::Running, None).await?;
                self.started(&rec).await?;
                Ok(())
            }
            Err(e) => {
                let e = node_err("start", name, e);
                self.set(&rec, WorkspaceState::Failed, Some(&e.message))
                    .await?;
                Err(e)
            }
        }
    }
}
