//! A [`NodeApi`] over the whole fleet: each call about a workspace goes to the node it is
//! placed on (its row's `node`), calls about no workspace to [`Fleet::any`]. The manager
//! holds one, so its lifecycle code is the same for one node or many; moves, which talk
//! to two nodes about one workspace, use [`Fleet::api`] directly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth_node::{
    CpuControllerStats, CpuView, ExecRequest, ExecSession, ImageSummary, Limits, ListeningPort,
    NodeApi, NodeCapacity, NodeError, Progress, PullPlan, RegistryAuth, Revision, WorkspaceDetails,
    WorkspaceId, WorkspaceMetrics, WorkspaceSpec, WorkspaceStatus,
};

use super::{Fleet, FleetError};

/// Most workspaces whose nodes are looked up by id (bound parameters, well under both
/// backends' limits); more read every row's node.
const MAX_PLACEMENTS_OF: usize = 500;

pub struct Router {
    fleet: Arc<Fleet>,
}

fn unreachable(e: FleetError) -> NodeError {
    NodeError::Conflict(e.to_string())
}

impl Router {
    pub fn new(fleet: Arc<Fleet>) -> Router {
        Router { fleet }
    }

    fn any(&self) -> Result<Arc<dyn NodeApi>, NodeError> {
        self.fleet
            .any()
            .map(|(_, a)| a)
            .ok_or_else(|| NodeError::Conflict("no node is connected (hearth node ls)".into()))
    }

    /// The node of workspace `spec`; one without a row (a create's checks, a prebuild
    /// series' snapshots) goes to [`Fleet::any`].
    async fn of(&self, spec: &WorkspaceSpec) -> Result<Arc<dyn NodeApi>, NodeError> {
        if let Some(only) = self.fleet.only() {
            return Ok(only);
        }
        let node = self
            .fleet
            .store
            .node_of(&spec.id)
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        match node {
            Some(n) => self.fleet.api(&n).map_err(|e| {
                NodeError::Conflict(format!("workspace {}: {}", spec.name, unreachable(e)))
            }),
            None => self.any(),
        }
    }

    /// For calls that only read or change the shared snapshot store: the workspace's node,
    /// else any (a workspace on a lost node still lists its snapshots).
    async fn store_of(&self, spec: &WorkspaceSpec) -> Result<Arc<dyn NodeApi>, NodeError> {
        match self.of(spec).await {
            Ok(n) => Ok(n),
            Err(_) => self.any(),
        }
    }

    /// `specs` grouped by their node, with each one's position in `specs`.
    async fn grouped(
        &self,
        specs: &[WorkspaceSpec],
    ) -> Vec<(Result<Arc<dyn NodeApi>, NodeError>, Vec<usize>)> {
        if let Some(only) = self.fleet.only() {
            return vec![(Ok(only), (0..specs.len()).collect())];
        }
        // A page of workspaces asks for its own rows; a whole list reads the table once.
        let placements = if specs.len() <= MAX_PLACEMENTS_OF {
            let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
            self.fleet.store.placements_of(&ids).await
        } else {
            self.fleet.store.placements().await
        };
        let placements = match placements {
            Ok(p) => p,
            Err(e) => {
                let e = e.to_string();
                return vec![(Err(NodeError::Internal(e)), (0..specs.len()).collect())];
            }
        };
        let mut groups: HashMap<Option<&String>, Vec<usize>> = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            groups
                .entry(placements.get(s.id.as_str()))
                .or_default()
                .push(i);
        }
        groups
            .into_iter()
            .map(|(node, idx)| {
                let api = match node {
                    Some(n) => self.fleet.api(n).map_err(unreachable),
                    None => self.any(),
                };
                (api, idx)
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl NodeApi for Router {
    async fn load_image(
        &self,
        path: PathBuf,
        name: Option<String>,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        self.any()?.load_image(path, name, progress).await
    }
    async fn pull_image(
        &self,
        plan: PullPlan,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        self.any()?.pull_image(plan, progress).await
    }
    async fn images(&self) -> Result<Vec<ImageSummary>, NodeError> {
        self.any()?.images().await
    }
    async fn known_layers(&self, diff_ids: &[String]) -> Result<Vec<String>, NodeError> {
        self.any()?.known_layers(diff_ids).await
    }
    async fn capacity(&self) -> Result<NodeCapacity, NodeError> {
        self.any()?.capacity().await
    }
    async fn feature_context(
        &self,
        req: hearth_node::features::FeatureRequest,
    ) -> Result<hearth_node::features::FeaturePlan, NodeError> {
        self.any()?.feature_context(req).await
    }
    async fn check_load(&self, path: &Path, name: Option<&str>) -> Result<(), NodeError> {
        self.any()?.check_load(path, name).await
    }
    async fn check_create(&self, source: &str, limits: &Limits) -> Result<(), NodeError> {
        self.any()?.check_create(source, limits).await
    }
    async fn devcontainer_config(
        &self,
        source: &str,
        branch: Option<&str>,
        name: Option<&str>,
    ) -> Result<Option<hearth_node::RepoConfig>, NodeError> {
        self.any()?.devcontainer_config(source, branch, name).await
    }
    async fn update_bundle(
        &self,
        source: &str,
        branch: Option<&str>,
        commit: &str,
        bases: &[String],
        max: u64,
    ) -> Result<Option<(String, Vec<u8>)>, NodeError> {
        self.any()?
            .update_bundle(source, branch, commit, bases, max)
            .await
    }
    async fn build_inputs(
        &self,
        source: &str,
        branch: Option<&str>,
        commit: &str,
        dockerfile: &str,
        context: &str,
    ) -> Result<hearth_node::BuildInputs, NodeError> {
        self.any()?
            .build_inputs(source, branch, commit, dockerfile, context)
            .await
    }
    async fn dotfiles_archive(
        &self,
        spec: &WorkspaceSpec,
        url: &str,
    ) -> Result<Vec<u8>, NodeError> {
        self.of(spec).await?.dotfiles_archive(spec, url).await
    }
    async fn repo_archive(&self, source: &str, commit: &str) -> Result<std::fs::File, NodeError> {
        self.any()?.repo_archive(source, commit).await
    }
    async fn export_image(&self, reference: &str, name: &str) -> Result<std::fs::File, NodeError> {
        self.any()?.export_image(reference, name).await
    }
    async fn check_pull(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<PullPlan, NodeError> {
        self.any()?.check_pull(reference, auth).await
    }
    async fn resolve_image(&self, reference: &str) -> Result<ImageSummary, NodeError> {
        self.any()?.resolve_image(reference).await
    }
    async fn remove_image(&self, reference: &str, in_use: &[String]) -> Result<(), NodeError> {
        self.any()?.remove_image(reference, in_use).await
    }
    async fn create(&self, spec: &WorkspaceSpec, progress: Progress) -> Result<(), NodeError> {
        self.of(spec).await?.create(spec, progress).await
    }
    async fn create_at(
        &self,
        spec: &WorkspaceSpec,
        rev: &Revision,
        progress: Progress,
    ) -> Result<(), NodeError> {
        self.of(spec).await?.create_at(spec, rev, progress).await
    }
    async fn start(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        self.of(spec).await?.start(spec).await
    }
    async fn stop(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        self.of(spec).await?.stop(spec).await
    }
    async fn remove(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        self.of(spec).await?.remove(spec).await
    }
    async fn status(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        self.of(spec).await?.status(spec).await
    }
    async fn statuses(&self, specs: &[WorkspaceSpec]) -> Vec<Result<WorkspaceStatus, NodeError>> {
        let mut out: Vec<Option<Result<WorkspaceStatus, NodeError>>> =
            specs.iter().map(|_| None).collect();
        for (api, idx) in self.grouped(specs).await {
            match api {
                Ok(api) => {
                    let mine: Vec<WorkspaceSpec> = idx.iter().map(|&i| specs[i].clone()).collect();
                    for (i, st) in idx.into_iter().zip(api.statuses(&mine).await) {
                        out[i] = Some(st);
                    }
                }
                Err(e) => {
                    for i in idx {
                        out[i] = Some(Err(NodeError::Conflict(e.to_string())));
                    }
                }
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(NodeError::Internal("no status".into()))))
            .collect()
    }
    async fn set_egress(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        self.of(spec).await?.set_egress(spec).await
    }
    async fn set_limits(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        self.of(spec).await?.set_limits(spec).await
    }
    async fn inspect(&self, spec: &WorkspaceSpec) -> Result<WorkspaceDetails, NodeError> {
        self.of(spec).await?.inspect(spec).await
    }
    async fn metrics(&self, specs: &[WorkspaceSpec]) -> Vec<(WorkspaceId, WorkspaceMetrics)> {
        let mut out = Vec::new();
        for (api, idx) in self.grouped(specs).await {
            if let Ok(api) = api {
                let mine: Vec<WorkspaceSpec> = idx.iter().map(|&i| specs[i].clone()).collect();
                out.extend(api.metrics(&mine).await);
            }
        }
        out
    }
    fn cpu_views(&self) -> Vec<(WorkspaceId, CpuView)> {
        self.fleet
            .connected()
            .iter()
            .flat_map(|a| a.cpu_views())
            .collect()
    }
    fn cpu_controller_stats(&self) -> Option<CpuControllerStats> {
        self.any().ok()?.cpu_controller_stats()
    }
    async fn exec(&self, spec: &WorkspaceSpec, req: ExecRequest) -> Result<ExecSession, NodeError> {
        self.of(spec).await?.exec(spec, req).await
    }
    async fn logs(&self, spec: &WorkspaceSpec) -> Result<Vec<u8>, NodeError> {
        self.of(spec).await?.logs(spec).await
    }
    async fn logs_since(
        &self,
        spec: &WorkspaceSpec,
        cursor: Option<hearth_node::LogCursor>,
    ) -> Result<(Vec<u8>, hearth_node::LogCursor), NodeError> {
        self.of(spec).await?.logs_since(spec, cursor).await
    }
    async fn console_note(&self, spec: &WorkspaceSpec, line: &str) -> Result<(), NodeError> {
        self.of(spec).await?.console_note(spec, line).await
    }
    async fn connect(
        &self,
        spec: &WorkspaceSpec,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, NodeError> {
        self.of(spec).await?.connect(spec, addr).await
    }
    async fn listening_ports(&self, spec: &WorkspaceSpec) -> Result<Vec<ListeningPort>, NodeError> {
        self.of(spec).await?.listening_ports(spec).await
    }
    async fn listen(
        &self,
        spec: &WorkspaceSpec,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpListener, NodeError> {
        self.of(spec).await?.listen(spec, addr).await
    }
    /// Each connected node with the workspaces placed on it; a node that is not
    /// connected is reconciled when it attaches.
    async fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(WorkspaceId, WorkspaceStatus)>, NodeError> {
        let mut out = Vec::new();
        for (api, idx) in self.grouped(known).await {
            let Ok(api) = api else { continue };
            let mine: Vec<WorkspaceSpec> = idx.iter().map(|&i| known[i].clone()).collect();
            out.extend(api.reconcile(&mine).await?);
        }
        Ok(out)
    }
    async fn teardown(&self) -> Result<(), NodeError> {
        self.any()?.teardown().await
    }
    async fn snapshot(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<hearth_node::SnapshotSummary, NodeError> {
        self.of(spec).await?.snapshot(spec).await
    }
    async fn snapshot_if_changed(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Option<hearth_node::SnapshotSummary>, NodeError> {
        self.of(spec).await?.snapshot_if_changed(spec).await
    }
    async fn snapshots(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Vec<hearth_node::SnapshotSummary>, NodeError> {
        self.store_of(spec).await?.snapshots(spec).await
    }
    async fn restore(&self, spec: &WorkspaceSpec, id: &str) -> Result<(), NodeError> {
        self.of(spec).await?.restore(spec, id).await
    }
    async fn store_fsck(&self) -> Result<hearth_node::StoreCheck, NodeError> {
        self.any()?.store_fsck().await
    }
    async fn store_gc(
        &self,
        keep: Option<hearth_node::Retention>,
    ) -> Result<hearth_node::StoreGcReport, NodeError> {
        self.any()?.store_gc(keep).await
    }
    async fn forget_snapshots(
        &self,
        spec: &WorkspaceSpec,
        keep: Option<hearth_node::Retention>,
    ) -> Result<Vec<String>, NodeError> {
        self.store_of(spec)
            .await?
            .forget_snapshots(spec, keep)
            .await
    }
    async fn store_usage(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<hearth_node::StoreUsage, NodeError> {
        self.store_of(spec).await?.store_usage(spec).await
    }
}
