//! Workspace lifecycle: the control plane's bookkeeping around node calls.
//!
//! Every state change is persisted before the node is asked to act (the transitional
//! state) and after it answers (the final state), so a crash in between is visible at
//! the next start and [`Manager::reconcile`] can finish or undo the operation.

use std::sync::Arc;

use hearth_node::{
    EgressPolicy, ErrorKind, ExecRequest, ExecSession, Limits, NodeApi, NodeError, Progress,
    PullPlan, RegistryAuth, RunState, WorkspaceId, WorkspaceSpec, WorkspaceStatus,
};
use rand::RngCore;

use crate::auth::Caller;
use crate::convert;
use crate::db::{now, Store, WorkspaceRecord};
use crate::error::ApiError;
use crate::names;
use hearth_api::{
    CreateWorkspace, Egress, EgressEdit, Image, LimitsRequest, PullImage, Workspace,
    WorkspaceInspect, WorkspaceState,
};

pub mod build;
pub mod devcontainer;
mod features;
mod fleet;
pub(crate) mod follow;
pub mod idle;
mod locks;
pub mod ports;
mod prebuilds;
pub(crate) use prebuilds::PREBUILD_PREFIX;
mod quotas;
mod secrets;
pub mod sessions;
mod snapshots;
mod takeover;
mod trash;
mod users;

use locks::{NameGuard, NameLocks};
pub use prebuilds::PrebuildPlan;

/// A create that passed every check that can be made before it streams; it holds the
/// name's lock until it is run.
pub struct CreatePlan {
    _guard: NameGuard,
    owner: Caller,
    name: String,
    source: String,
    limits: Limits,
    egress: EgressPolicy,
    image: PlannedImage,
    idle_timeout: Option<u64>,
    /// The repository's devcontainer.json, when it has one.
    devcontainer: Option<devcontainer::Devcontainer>,
    /// What the clone checks out: the commit the devcontainer.json was read from.
    rev: hearth_node::Revision,
    /// The workspace id to use (a prebuild's series); a fresh one when `None`.
    id: Option<WorkspaceId>,
    /// A prebuild run: create-time steps through [`prebuilds::PREBUILD_UNTIL`] only.
    prebuild: bool,
    /// The prebuild `up` starts from instead of a clone.
    from: Option<prebuilds::PrebuildUse>,
    /// Labels its node must carry.
    node_selector: crate::fleet::Labels,
    /// A Dockerfile build's key for prebuilds ([`Manager::base_key`]), when one was
    /// looked for or is made.
    base_key: Option<String>,
}

impl CreatePlan {
    /// The workspace's name (given, or made from the source).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What a create made besides the workspace: what a prebuild of it records.
pub(super) struct Made {
    /// What its image was made from ([`Manager::base_key`]; for an image named by
    /// reference, its id before features).
    base_key: Option<String>,
    /// Its features' lifecycle commands.
    feature_lifecycle: prebuilds::FeatureLifecycle,
}

/// How a create differs from `up`'s (a prebuild's).
#[derive(Default)]
struct CreateOpts {
    branch: Option<String>,
    id: Option<WorkspaceId>,
    prebuild: bool,
}

enum PlannedImage {
    Loaded(hearth_node::ImageSummary),
    /// A registry image that is not here yet (its registry has it): pulled as the
    /// create's first step.
    Pull(PullPlan),
    /// The repository's Dockerfile (devcontainer.json `build`), built as the first step.
    Build(Box<build::BuildRequest>),
}

/// Image used when `up` names none and the repository has no devcontainer.json
/// (`hearth server --default-image` changes it).
pub const DEFAULT_IMAGE: &str = "debian";

/// The most a node answers a console read with: an answer this long means more is
/// waiting, read again at once.
const FOLLOW_BATCH: usize = 1 << 20;

/// States after which a console follower ends (once it has read what was written).
fn follow_done(state: WorkspaceState) -> bool {
    matches!(
        state,
        WorkspaceState::Stopped | WorkspaceState::Failed | WorkspaceState::Removing
    )
}

/// A workspace's console, followed (`hearth logs -f`).
struct Console {
    manager: Arc<Manager>,
    name: String,
    id: WorkspaceId,
    cursor: hearth_node::LogCursor,
    /// Stopped (or failed, or removing) at a read before: the next read is the last.
    done: bool,
}

impl follow::Source for Console {
    async fn read(&mut self) -> Option<follow::Read> {
        // The state before the read: output up to a stop is read after it.
        let spec = match self.manager.store.get(&self.name).await {
            Ok(Some(r)) if r.spec.id == self.id => {
                self.done |= follow_done(r.state);
                r.spec
            }
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(workspace = self.name, error = %e, "logs follow: lookup failed");
                return None;
            }
        };
        match self.manager.node.logs_since(&spec, Some(self.cursor)).await {
            Ok((chunk, c)) => {
                self.cursor = c;
                Some(follow::Read {
                    more: chunk.len() >= FOLLOW_BATCH,
                    chunk,
                    done: self.done,
                })
            }
            Err(e) => {
                tracing::debug!(workspace = self.name, error = %e, "logs follow: read failed");
                None
            }
        }
    }
}

pub struct Manager {
    store: Store,
    /// The fleet as one node ([`crate::fleet::Router`]): a workspace's calls go to the node
    /// in its record, the others to the embedded node (or any connected one).
    node: Arc<dyn NodeApi>,
    /// Every node, the embedded one included (see [`crate::fleet`]).
    fleet: Arc<crate::fleet::Fleet>,
    /// One async lock per workspace name so start/stop/rm of one workspace never interleave.
    locks: NameLocks,
    /// Serializes slot allocation and insertion.
    alloc: tokio::sync::Mutex<()>,
    /// Callers by token hash (see [`crate::auth::TokenCache`]).
    tokens: crate::auth::TokenCache,
    /// How long a removed workspace's snapshots are kept, seconds (0: forgotten at once).
    deleted_retention: std::sync::atomic::AtomicU64,
    /// Last activity and open sessions per workspace (idle auto-stop reads it).
    activity: Arc<crate::activity::Activity>,
    /// How port URLs look, once the port proxy listens.
    port_urls: std::sync::OnceLock<ports::PortUrls>,
    /// The port proxy's cookie key, which signs the dashboard's login tickets too.
    port_key: std::sync::OnceLock<crate::proxy::login::CookieKey>,
    /// Idle auto-stop's settings and what was last written to the database.
    idle: idle::IdleState,
    /// See [`Manager::set_default_image`].
    default_image: std::sync::RwLock<String>,
    /// Seals users' secrets (see [`crate::secrets`]); set once at server start.
    secret_box: std::sync::OnceLock<crate::secrets::SecretBox>,
    /// The secret push webhooks must carry (`None`: webhooks are off).
    webhook_secret: std::sync::RwLock<Option<Arc<[u8]>>>,
    /// This manager, for work that outlives a request (lifecycle steps after `waitFor`,
    /// `postAttachCommand`); empty unless made by [`Manager::shared`].
    me: std::sync::Weak<Manager>,
    /// Dockerfile build settings (`manager/build.rs`).
    builds: build::Builds,
    /// What the scheduler reads of each node's placed workspaces (`manager/fleet.rs`).
    placement: fleet::PlacementView,
    /// Trusted proxies and retention of the audit log ([`crate::audit`]).
    audit: crate::audit::AuditSettings,
}

/// A fresh workspace id: 12 random hex digits. Ids enter here (and are checked again
/// when a record is read back).
fn new_id() -> WorkspaceId {
    let mut b = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    WorkspaceId::new(hex).expect("hex digits are a valid workspace id")
}

fn say(progress: &Progress, line: impl Into<String>) {
    // The receiver may be gone (client hung up); the operation goes on regardless.
    let _ = progress.send(line.into());
}

/// Logs a node error with the workspace it concerns and turns it into an API error.
fn node_err(op: &str, name: &str, e: NodeError) -> ApiError {
    tracing::warn!(workspace = name, op, error = ?e.to_string(), "node call failed");
    ApiError::from(e)
}

/// Another server started an operation on workspace `name` since it was read.
fn changed_meanwhile(name: &str) -> ApiError {
    ApiError::conflict(format!(
        "workspace {name} changed meanwhile (another server is operating on it); try again"
    ))
}

/// Validates a requested policy: a bad rule or too many is an `invalid` error.
fn egress_policy(req: Egress) -> Result<EgressPolicy, ApiError> {
    EgressPolicy::parse(&req.deny).map_err(ApiError::from)
}

/// What an operation may do from a given state; `Ok(None)` means nothing to do.
pub fn plan_start(state: WorkspaceState) -> Result<Option<WorkspaceState>, String> {
    match state {
        WorkspaceState::Running => Ok(None),
        WorkspaceState::Stopped | WorkspaceState::Failed => Ok(Some(WorkspaceState::Starting)),
        other => Err(format!("cannot start a workspace that is {other}")),
    }
}

pub fn plan_stop(state: WorkspaceState) -> Result<Option<WorkspaceState>, String> {
    match state {
        WorkspaceState::Stopped => Ok(None),
        WorkspaceState::Running | WorkspaceState::Failed => Ok(Some(WorkspaceState::Stopping)),
        other => Err(format!("cannot stop a workspace that is {other}")),
    }
}

pub fn plan_remove(state: WorkspaceState) -> Result<WorkspaceState, String> {
    match state {
        WorkspaceState::Running
        | WorkspaceState::Stopped
        | WorkspaceState::Failed
        | WorkspaceState::Removing => Ok(WorkspaceState::Removing),
        other => Err(format!("cannot remove a workspace that is {other}")),
    }
}

/// Final state of a row after a restart, from what the node reports; `None` removes the row.
pub fn reconciled_state(
    recorded: WorkspaceState,
    actual: Option<RunState>,
) -> Option<WorkspaceState> {
    match recorded {
        // No user data exists yet, and a half-done remove must be finished.
        WorkspaceState::Creating | WorkspaceState::Removing => None,
        _ => Some(match actual {
            Some(RunState::Running) => WorkspaceState::Running,
            Some(RunState::Stopped) if recorded == WorkspaceState::Failed => WorkspaceState::Failed,
            Some(RunState::Stopped) => WorkspaceState::Stopped,
            Some(RunState::Missing) | None => WorkspaceState::Failed,
        }),
    }
}

/// Names a non-admin's upload or build may give an image: only under their own name
/// (`alice/tools:1`). The store points a name at whatever was loaded last, so a name
/// outside it could replace an image other users' workspaces and builds start from (the
/// default or builder image, a registry name before anyone pulls it, a built features
/// image) and run theirs with those users' secrets.
pub fn check_own_image_name(caller: &Caller, name: Option<&str>) -> Result<(), ApiError> {
    if caller.admin {
        return Ok(());
    }
    let own = format!("{}/", caller.id);
    match name {
        Some(n) if n.starts_with(&own) && n.len() > own.len() => Ok(()),
        Some(n) => Err(ApiError::forbidden(format!(
            "image name {n}: only admins name images outside their own; use {own}{}",
            n.rsplit('/').next().unwrap_or(n)
        ))),
        None => Err(ApiError::forbidden(format!(
            "only admins load images under the names in the archive: give it a name of \
             your own ({own}NAME[:TAG])"
        ))),
    }
}

impl Manager {
    /// A manager whose fleet is the embedded node `node`, named `local`.
    pub fn new(store: Store, node: Arc<dyn NodeApi>) -> Manager {
        let local = (crate::fleet::DEFAULT_LOCAL_NODE.to_string(), node);
        let fleet = Arc::new(crate::fleet::Fleet::new(store.clone(), Some(local)));
        Manager::with_fleet(store, fleet)
    }

    /// A manager over `fleet` (its embedded node, if any, and the nodes that attach).
    pub fn with_fleet(store: Store, fleet: Arc<crate::fleet::Fleet>) -> Manager {
        Manager {
            node: Arc::new(crate::fleet::Router::new(fleet.clone())),
            fleet,
            store,
            locks: NameLocks::default(),
            alloc: tokio::sync::Mutex::new(()),
            tokens: Default::default(),
            deleted_retention: trash::DEFAULT_RETENTION.as_secs().into(),
            activity: Default::default(),
            port_urls: Default::default(),
            port_key: Default::default(),
            idle: Default::default(),
            default_image: std::sync::RwLock::new(DEFAULT_IMAGE.to_string()),
            secret_box: Default::default(),
            webhook_secret: Default::default(),
            me: std::sync::Weak::new(),
            builds: Default::default(),
            placement: Default::default(),
            audit: Default::default(),
        }
    }

    /// A manager that can run work past a request's end (what `new` makes runs it in line).
    pub fn shared(store: Store, node: Arc<dyn NodeApi>) -> Arc<Manager> {
        let local = (crate::fleet::DEFAULT_LOCAL_NODE.to_string(), node);
        let fleet = Arc::new(crate::fleet::Fleet::new(store.clone(), Some(local)));
        Manager::shared_fleet(store, fleet)
    }

    /// [`Manager::shared`] over a fleet.
    pub fn shared_fleet(store: Store, fleet: Arc<crate::fleet::Fleet>) -> Arc<Manager> {
        Arc::new_cyclic(|me: &std::sync::Weak<Manager>| {
            let hook: std::sync::Weak<dyn crate::fleet::AttachHook> = me.clone();
            fleet.set_hook(hook);
            Manager {
                me: me.clone(),
                ..Manager::with_fleet(store, fleet)
            }
        })
    }

    pub fn activity(&self) -> &Arc<crate::activity::Activity> {
        &self.activity
    }

    /// The fleet as one node (see [`crate::fleet::Router`]).
    pub fn node(&self) -> &Arc<dyn NodeApi> {
        &self.node
    }

    /// The node registry: remote nodes' connections attach, heartbeat and detach here.
    pub fn fleet(&self) -> &Arc<crate::fleet::Fleet> {
        &self.fleet
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn audit_settings(&self) -> &crate::audit::AuditSettings {
        &self.audit
    }

    async fn lock(&self, name: &str) -> NameGuard {
        self.locks.lock(name).await
    }

    /// Names whose operation lock is held or awaited now (tests check it returns to 0).
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// Locks `name` and returns its record, unless an operation on it is under way.
    async fn settled(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(NameGuard, WorkspaceRecord), ApiError> {
        let guard = self.lock(name).await;
        let rec = self.owned(caller, name).await?;
        if rec.state.is_transitional() {
            return Err(ApiError::conflict(format!(
                "workspace {name} is {}; try again when it is done",
                rec.state
            )));
        }
        Ok((guard, rec))
    }

    /// The record of workspace `name` if `caller` may use it (its owner, or an admin).
    ///
    /// The one ownership rule: every route, the SSH gateway and the port proxy reach a
    /// workspace by name through here. Someone else's workspace is answered exactly like
    /// a missing one (404, same message), so its existence is not revealed.
    pub async fn owned(&self, caller: &Caller, name: &str) -> Result<WorkspaceRecord, ApiError> {
        match self.store.get(name).await? {
            Some(rec) if caller.may_use(&rec.owner) => Ok(rec),
            _ => Err(ApiError::not_found(format!(
                "workspace {name} not found (hearth ls lists workspaces)"
            ))),
        }
    }

    async fn set(
        &self,
        rec: &WorkspaceRecord,
        state: WorkspaceState,
        error: Option<&str>,
    ) -> Result<(), ApiError> {
        self.store.set_state(&rec.spec.id, state, error).await?;
        Ok(())
    }

    /// Starts an operation: `rec` goes to transitional `state` for this server, if no
    /// other server changed it since it was read (name locks hold within one process
    /// only; this is the one that holds across servers sharing a database).
    async fn claim(&self, rec: &WorkspaceRecord, state: WorkspaceState) -> Result<(), ApiError> {
        if !self.store.claim(&rec.spec.id, rec.state, state).await? {
            return Err(changed_meanwhile(&rec.spec.name));
        }
        Ok(())
    }

    /// Renders a record with what the node reports about it (`status`: address, pause).
    fn view(
        &self,
        rec: WorkspaceRecord,
        images: &[Image],
        status: Option<&WorkspaceStatus>,
    ) -> Workspace {
        let (mut ip, mut paused) = (None, None);
        if let Some(st) = status.filter(|_| rec.state == WorkspaceState::Running) {
            ip = st.ip.map(|a| a.to_string());
            paused = st.paused.clone();
        }
        let image_name = images
            .iter()
            .find(|i| i.id == rec.spec.image)
            .and_then(|i| i.names.first().cloned());
        let idle_timeout = self.idle_timeout_of(&rec);
        let last_active = self.last_active_of(&rec);
        let state = if !rec.state.is_transitional() && self.on_lost_node(&rec) {
            WorkspaceState::Lost
        } else {
            rec.state
        };
        Workspace {
            idle_timeout,
            last_active,
            stop_reason: rec.idle.stop_reason,
            owner: rec.owner,
            last_snapshot: rec.last_snapshot,
            snapshot_error: rec.snapshot_error,
            last_snapshot_at: rec.last_snapshot_at,
            node: Some(rec.node),
            uid_base: rec.spec.uid_base(),
            id: rec.spec.id.to_string(),
            name: rec.spec.name,
            image: rec.spec.image,
            image_name,
            source: rec.spec.source,
            slot: rec.spec.slot,
            state,
            error: rec.error,
            ip,
            paused,
            limits: convert::limits(rec.spec.limits),
            egress: Egress {
                deny: rec.spec.egress.deny_strings(),
            },
            created_at: rec.created_at,
            updated_at: rec.updated_at,
        }
    }

    /// Renders a record, asking the node for its status if it is running.
    async fn view_now(&self, rec: WorkspaceRecord, images: &[Image]) -> Workspace {
        let mut status = None;
        if rec.state == WorkspaceState::Running {
            match self.node.status(&rec.spec).await {
                Ok(st) => status = Some(st),
                Err(e) => {
                    tracing::warn!(workspace = rec.spec.name, error = ?e.to_string(), "status failed")
                }
            }
        }
        self.view(rec, images, status.as_ref())
    }

    async fn images_or_empty(&self) -> Vec<Image> {
        match self.node.images().await {
            Ok(v) => v.into_iter().map(convert::image).collect(),
            Err(e) => {
                tracing::warn!(error = ?e.to_string(), "listing images failed");
                Vec::new()
            }
        }
    }

    /// The workspaces `caller` may use (their own, or all for an admin): records plus one
    /// batched liveness check of the running ones (no process per workspace). `page`: at
    /// most that many names after the one given.
    pub async fn list(
        &self,
        caller: &Caller,
        page: Option<(Option<String>, u32)>,
    ) -> Result<Vec<Workspace>, ApiError> {
        let recs = async {
            match &page {
                None => self.store.list().await,
                Some((after, limit)) => {
                    let owner = (!caller.admin).then_some(&*caller.id);
                    self.store
                        .list_page(owner, after.as_deref(), *limit, build::BUILDER_PREFIX)
                        .await
                }
            }
        };
        let (images, recs) = tokio::join!(self.images_or_empty(), recs);
        let mut recs = recs?;
        // Builder workspaces are reached by name (logs, rm), not listed.
        recs.retain(|r| caller.may_use(&r.owner) && !build::is_builder_name(&r.spec.name));
        let running: Vec<WorkspaceSpec> = recs
            .iter()
            .filter(|r| r.state == WorkspaceState::Running && !self.on_lost_node(r))
            .map(|r| r.spec.clone())
            .collect();
        let mut statuses: std::collections::HashMap<WorkspaceId, WorkspaceStatus> =
            std::collections::HashMap::new();
        for (spec, st) in running.iter().zip(self.node.statuses(&running).await) {
            match st {
                Ok(st) => {
                    statuses.insert(spec.id.clone(), st);
                }
                Err(e) => {
                    tracing::warn!(workspace = spec.name, error = ?e.to_string(), "status failed")
                }
            }
        }
        Ok(recs
            .into_iter()
            .map(|rec| {
                let st = statuses.get(&rec.spec.id);
                self.view(rec, &images, st)
            })
            .collect())
    }

    pub async fn get(&self, caller: &Caller, name: &str) -> Result<Workspace, ApiError> {
        let rec = self.owned(caller, name).await?;
        let images = self.images_or_empty().await;
        Ok(self.view_now(rec, &images).await)
    }

    pub async fn images(&self) -> Result<Vec<Image>, ApiError> {
        let v = self
            .node
            .images()
            .await
            .map_err(|e| node_err("images", "-", e))?;
        Ok(v.into_iter().map(convert::image).collect())
    }

    /// Refuses an image load from a server path before it starts: the caller's right to
    /// read server files, an absolute path to a regular file or directory, a valid name,
    /// room on the node.
    pub async fn check_load(
        &self,
        caller: &Caller,
        path: &str,
        name: Option<&str>,
    ) -> Result<(), ApiError> {
        if !caller.may_read_server_paths() {
            return Err(ApiError::forbidden(
                "loading from a server path needs an admin token: upload the archive instead \
                 (POST /v1/images/upload)",
            ));
        }
        if !path.starts_with('/') {
            return Err(ApiError::invalid(format!(
                "image path {path} must be absolute (it is read on the server host)"
            )));
        }
        self.node
            .check_load(std::path::Path::new(path), name)
            .await
            .map_err(|e| node_err("load_image", path, e))
    }

    /// Loads an image; [`Manager::check_load`] has passed.
    pub async fn load_image(
        &self,
        path: std::path::PathBuf,
        name: Option<String>,
        progress: Progress,
    ) -> Result<Image, ApiError> {
        let shown = path.display().to_string();
        let s = self
            .node
            .load_image(path, name, progress)
            .await
            .map_err(|e| node_err("load_image", &shown, e))?;
        Ok(convert::image(s))
    }

    /// Loads an uploaded archive (a temporary file) to the end; errors name "the upload",
    /// not the temporary path.
    pub async fn load_upload(
        &self,
        path: &std::path::Path,
        name: Option<String>,
    ) -> Result<Image, ApiError> {
        let shown = path.display().to_string();
        let rename = |mut e: ApiError| {
            e.message = e.message.replace(&shown, "the upload");
            e
        };
        self.node
            .check_load(path, name.as_deref())
            .await
            .map_err(|e| rename(node_err("load_image", "upload", e)))?;
        // Nobody reads the progress of a load answered in one piece (a few lines).
        let (progress, _unread) = tokio::sync::mpsc::unbounded_channel();
        self.load_image(path.to_path_buf(), name, progress)
            .await
            .map_err(rename)
    }

    /// Validates a pull before it starts: the request, then the node's check, which asks
    /// the registry for the manifest (a missing image is a 404 here, not in the stream).
    pub async fn check_pull(&self, req: PullImage) -> Result<PullPlan, ApiError> {
        let reference = req.reference.trim().to_string();
        if reference.is_empty() {
            return Err(ApiError::invalid("reference must not be empty"));
        }
        let auth = match (req.username, req.password) {
            (Some(username), Some(password)) => Some(RegistryAuth { username, password }),
            (None, None) => None,
            _ => {
                return Err(ApiError::invalid(
                    "username and password go together: give both or neither",
                ))
            }
        };
        self.node
            .check_pull(&reference, auth)
            .await
            .map_err(|e| node_err("pull_image", &reference, e))
    }

    pub async fn pull_image(&self, req: PullImage, progress: Progress) -> Result<Image, ApiError> {
        let plan = self.check_pull(req).await?;
        self.pull_checked(plan, progress).await
    }

    /// Pulls; [`Manager::check_pull`] has passed.
    pub async fn pull_checked(
        &self,
        plan: PullPlan,
        progress: Progress,
    ) -> Result<Image, ApiError> {
        let reference = plan.reference().to_string();
        let s = self
            .node
            .pull_image(plan, progress)
            .await
            .map_err(|e| node_err("pull_image", &reference, e))?;
        Ok(convert::image(s))
    }

    pub async fn inspect(&self, caller: &Caller, name: &str) -> Result<WorkspaceInspect, ApiError> {
        let rec = self.owned(caller, name).await?;
        // The store use reads the store's snapshot list; it runs beside the node's CPU
        // sample. A store that cannot be read leaves it out rather than failing inspect.
        let (details, store) = tokio::join!(
            self.node.inspect(&rec.spec),
            self.node.store_usage(&rec.spec)
        );
        let details = details.map_err(|e| node_err("inspect", name, e))?;
        let store = store
            .inspect_err(|e| tracing::warn!(workspace = name, error = %e, "store use unknown"))
            .ok();
        let images = self.images_or_empty().await;
        let devcontainer = self.devcontainer(&rec.spec).await?.map(|(dc, _)| dc.info());
        let ws = self.view_now(rec, &images).await;
        let mut view = convert::inspect(ws, details, store);
        view.devcontainer = devcontainer;
        Ok(view)
    }

    pub async fn remove_image(&self, reference: &str) -> Result<(), ApiError> {
        let in_use: Vec<String> = self
            .store
            .list()
            .await?
            .into_iter()
            .map(|r| r.spec.image)
            .collect();
        // Removed workspaces in their grace period need theirs to be restored.
        let deleted = self.store.deleted().await?;
        if let Ok(img) = self.node.resolve_image(reference).await {
            let holders: Vec<String> = deleted
                .iter()
                .filter(|d| d.spec.image == img.id)
                .map(|d| d.spec.name.clone())
                .collect();
            if !holders.is_empty() && !in_use.contains(&img.id) {
                return Err(ApiError::conflict(format!(
                    "image {reference} is kept for removed workspace(s) {} until their grace \
                     period ends (hearth rm --purge NAME forgets one now)",
                    holders.join(", ")
                )));
            }
            // `up` starts from a prebuild on the very image it ran on.
            let prebuilds: Vec<String> = self
                .prebuild_images()
                .await?
                .into_iter()
                .filter(|(id, _)| *id == img.id)
                .map(|(_, p)| format!("{} ({})", p.snapshot, secrets::redact_userinfo(&p.source)))
                .collect();
            if !prebuilds.is_empty() && !in_use.contains(&img.id) {
                return Err(ApiError::conflict(format!(
                    "image {reference} is kept for prebuild(s) {} until the snapshot retention \
                     drops them (hearth prebuilds lists them)",
                    prebuilds.join(", ")
                )));
            }
        }
        self.node
            .remove_image(reference, &in_use)
            .await
            .map_err(|e| node_err("remove_image", reference, e))
    }

    /// Creates and starts a workspace; on any failure nothing is left behind.
    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateWorkspace,
        progress: Progress,
    ) -> Result<Workspace, ApiError> {
        let plan = self.plan_create(caller, req).await?;
        self.run_create(plan, progress).await
    }

    /// Everything a create can be refused for before it streams progress: the request,
    /// the name (locked, and free), the image, and what the node can tell up front (disk
    /// size, free space, source).
    /// Names are global: a name another user's workspace has is refused with 409 too,
    /// since SSH (`ssh NAME@host`) and port URLs reach workspaces by name alone.
    pub async fn plan_create(
        &self,
        caller: &Caller,
        req: CreateWorkspace,
    ) -> Result<CreatePlan, ApiError> {
        let opts = CreateOpts {
            branch: req.branch.clone(),
            ..Default::default()
        };
        self.plan_create_with(caller, req, opts).await
    }

    async fn plan_create_with(
        &self,
        caller: &Caller,
        req: CreateWorkspace,
        mut opts: CreateOpts,
    ) -> Result<CreatePlan, ApiError> {
        opts.branch = opts.branch.filter(|b| !b.is_empty());
        if let Some(b) = &opts.branch {
            hearth_node::validate_branch(b).map_err(ApiError::from)?;
        }
        let source = req.source.trim().to_string();
        if source.is_empty() {
            return Err(ApiError::invalid("source must not be empty"));
        }
        caller.check_source("source", &source)?;
        let limits = convert::resolve_limits(&req.limits).map_err(ApiError::invalid)?;
        let name = match req.name {
            Some(n) => n,
            None => names::default_name(&source),
        };
        if !names::is_valid_name(&name) {
            return Err(ApiError::invalid(names::invalid_name_message(&name)));
        }
        build::check_not_builder_name(&name)?;
        if !opts.prebuild {
            prebuilds::check_not_prebuild_name(&name)?;
        }
        let egress = egress_policy(req.egress.unwrap_or_default())?;
        let idle_timeout = req.idle_timeout.map(idle::check_timeout).transpose()?;
        let node_selector = req.node_selector.clone().unwrap_or_default();
        for (k, v) in &node_selector {
            crate::fleet::parse_label(&format!("{k}={v}"))?;
        }
        self.node
            .check_create(&source, &limits)
            .await
            .map_err(|e| node_err("create", &name, e))?;
        let guard = self.lock(&name).await;
        if self.store.get(&name).await?.is_some() {
            return Err(ApiError::conflict(format!(
                "workspace {name} already exists (pick another with --name, or hearth rm {name})"
            )));
        }
        if !opts.prebuild {
            self.precheck_quota(&caller.id, &crate::db::QuotaUsage::new_workspace(&limits))
                .await?;
        }
        let devcontainer = self
            .plan_devcontainer(
                &name,
                &source,
                opts.branch.as_deref(),
                req.devcontainer_config.as_deref(),
                req.image.is_some(),
                &limits,
            )
            .await?;
        let image_ref = req
            .image
            .clone()
            .or_else(|| devcontainer.as_ref().and_then(|d| d.config.image.clone()));
        let build = devcontainer
            .as_ref()
            .filter(|_| req.image.is_none())
            .and_then(|d| d.build_request(&source, &name));
        let image = if let Some(b) = build {
            PlannedImage::Build(Box::new(b))
        } else {
            match image_ref.as_deref() {
                Some(r) => match self.node.resolve_image(r).await {
                    Ok(i) => PlannedImage::Loaded(i),
                    Err(e)
                        if e.kind() == ErrorKind::NotFound
                            && hearth_node::is_registry_reference(r) =>
                    {
                        PlannedImage::Pull(
                            self.node
                                .check_pull(r, None)
                                .await
                                .map_err(|e| node_err("pull_image", &name, e))?,
                        )
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        return Err(ApiError::not_found(format!(
                            "image {r} not found (hearth image ls lists loaded images)"
                        )))
                    }
                    Err(other) => return Err(node_err("resolve_image", &name, other)),
                },
                None => {
                    let default = self.default_image();
                    PlannedImage::Loaded(self.node.resolve_image(&default).await.map_err(|e| {
                        match e.kind() {
                            ErrorKind::NotFound => ApiError::invalid(format!(
                                "no image given, the repository has no devcontainer.json, and the \
                             default image {default} is not loaded: pass --image (hearth image \
                             ls lists loaded images)"
                            )),
                            _ => node_err("resolve_image", &name, e),
                        }
                    })?)
                }
            }
        };
        let rev = hearth_node::Revision {
            branch: opts.branch.clone(),
            commit: devcontainer.as_ref().map(|d| d.commit.clone()),
        };
        let branch = opts.branch.as_deref();
        // A build's key costs a look at the repository: only for a prebuild, or when
        // there is a prebuild of the source to match.
        let base_key = match (&devcontainer, &image) {
            (Some(dc), PlannedImage::Build(b)) if opts.prebuild => {
                Some(self.base_key(&source, branch, dc, b).await?)
            }
            (Some(dc), PlannedImage::Build(b))
                if !self.store.prebuilds(Some(&source)).await?.is_empty() =>
            {
                match self.base_key(&source, branch, dc, b).await {
                    Ok(k) => Some(k),
                    Err(e) => {
                        tracing::warn!(source, error = %e.message, "cannot read the build's inputs; building");
                        None
                    }
                }
            }
            _ => None,
        };
        let from = match (&devcontainer, &image, &base_key) {
            (Some(_), _, _) if opts.prebuild => None,
            (Some(dc), PlannedImage::Loaded(img), _) => {
                self.find_prebuild(caller, &source, branch, dc, &img.id)
                    .await?
            }
            (Some(dc), PlannedImage::Build(_), Some(key)) => {
                self.find_prebuild(caller, &source, branch, dc, key).await?
            }
            _ => None,
        };
        // The prebuild's image is the one its files were made on: no build, no features.
        let image = match &from {
            Some(p) => PlannedImage::Loaded(p.image.clone()),
            None => image,
        };
        Ok(CreatePlan {
            _guard: guard,
            owner: caller.clone(),
            name,
            source,
            limits,
            egress,
            image,
            idle_timeout,
            devcontainer,
            rev,
            id: opts.id,
            prebuild: opts.prebuild,
            from,
            node_selector,
            base_key,
        })
    }

    /// The streamed part of a create: pull (if planned), make, start.
    pub async fn run_create(
        &self,
        plan: CreatePlan,
        progress: Progress,
    ) -> Result<Workspace, ApiError> {
        self.run_create_made(plan, progress).await.map(|(w, _)| w)
    }

    /// [`Manager::run_create`], with what a prebuild records of it.
    async fn run_create_made(
        &self,
        plan: CreatePlan,
        progress: Progress,
    ) -> Result<(Workspace, Made), ApiError> {
        let CreatePlan {
            _guard,
            owner,
            name,
            source,
            limits,
            egress,
            image,
            idle_timeout,
            devcontainer,
            rev,
            id,
            prebuild,
            from,
            node_selector,
            base_key,
        } = plan;
        if let Some(dc) = &devcontainer {
            say(
                &progress,
                format!(
                    "using {} (commit {})",
                    dc.config.file,
                    &dc.commit[..dc.commit.len().min(12)]
                ),
            );
            for w in &dc.config.warnings {
                say(&progress, format!("warning: {w}"));
            }
        }
        // A build's (and features') output goes to the workspace's log too, once the
        // workspace runs; `up` streams it meanwhile.
        let builds = matches!(image, PlannedImage::Build(_))
            || (from.is_none()
                && devcontainer
                    .as_ref()
                    .is_some_and(|dc| !dc.config.features.is_empty()));
        let (build_progress, build_log) = match builds {
            true => {
                let (p, log) = build::BuildLog::tee(&progress);
                (p, Some(log))
            }
            false => (progress.clone(), None),
        };
        let (image, base_key) = match image {
            PlannedImage::Loaded(i) => {
                let id = i.id.clone();
                (i, Some(id))
            }
            // Pulled before the record exists: a failed pull leaves nothing behind.
            PlannedImage::Pull(plan) => {
                let i = self
                    .node
                    .pull_image(plan, progress.clone())
                    .await
                    .map_err(|e| node_err("pull_image", &name, e))?;
                let id = i.id.clone();
                (i, Some(id))
            }
            // Likewise a build.
            PlannedImage::Build(req) => (
                self.build_image(&owner, *req, &build_progress).await?,
                base_key,
            ),
        };
        // Features go on whatever image the workspace gets, built before its record
        // exists (like a pull): a failure leaves nothing behind. A prebuild's image has
        // them already.
        let (image, devcontainer) = match (devcontainer, &from) {
            (Some(mut dc), Some(p)) => {
                if dc.config.build.is_some() || !dc.config.features.is_empty() {
                    say(
                        &progress,
                        format!(
                            "using the prebuild's image {} (nothing to build)",
                            image.names.first().unwrap_or(&image.id)
                        ),
                    );
                }
                dc.feature_lifecycle = p.feature_lifecycle.clone();
                (image, Some(dc))
            }
            (Some(mut dc), None) if !dc.config.features.is_empty() => {
                let img = self
                    .install_features(&owner, &name, &mut dc, image, &build_progress)
                    .await?;
                (img, Some(dc))
            }
            (other, _) => (image, other),
        };
        drop(build_progress);
        let made = Made {
            base_key,
            feature_lifecycle: devcontainer
                .as_ref()
                .map(|d| d.feature_lifecycle.clone())
                .unwrap_or_default(),
        };

        let rec = self
            .insert_creating_as(
                id,
                &owner,
                &name,
                image.id.clone(),
                source,
                limits,
                egress,
                &node_selector,
            )
            .await?;
        if idle_timeout.is_some() {
            self.store
                .set_idle_timeout(&rec.spec.id, idle_timeout)
                .await?;
        }
        // A local dotfiles path set while the owner was an admin is not read once they
        // are not.
        if let Some(url) = self.store.user_dotfiles(&owner.id).await? {
            match owner.check_source("dotfiles repository", &url) {
                Ok(()) => {
                    self.store
                        .set_workspace_dotfiles(&rec.spec.id, &url)
                        .await?
                }
                Err(e) => say(
                    &progress,
                    format!("warning: dotfiles not installed: {}", e.message),
                ),
            }
        }
        match &devcontainer {
            Some(dc) => self.record_devcontainer(&rec.spec, dc).await?,
            // Sessions run as the image's user: the clone is to be theirs.
            None if !rec.spec.source.is_empty()
                && !devcontainer::is_root_user(image.user.as_deref()) =>
            {
                self.store.set_handover(rec.spec.id.as_str()).await?
            }
            None => {}
        }
        tracing::info!(
            workspace = name,
            id = %rec.spec.id,
            owner = %owner.id,
            slot = rec.spec.slot,
            "creating"
        );
        say(&progress, format!("creating workspace {name}"));

        let result = async {
            if let Some(p) = &from {
                match self.start_from_prebuild(&rec, p, &progress).await {
                    Ok(st) => return Ok(st),
                    Err(e) => {
                        // The prebuild is an optimisation: the clone still works.
                        say(
                            &progress,
                            format!(
                                "cannot start from the prebuild ({}): cloning instead",
                                e.message
                            ),
                        );
                        self.node
                            .remove(&rec.spec)
                            .await
                            .map_err(|e| node_err("remove", &name, e))?;
                        self.set(&rec, WorkspaceState::Creating, None).await?;
                        if let Some(dc) = &devcontainer {
                            // From the start: the clone runs every step.
                            self.record_devcontainer(&rec.spec, dc).await?;
                        }
                    }
                }
            }
            self.node
                .create_at(&rec.spec, &rev, progress.clone())
                .await
                .map_err(|e| node_err("create", &name, e))?;
            self.set(&rec, WorkspaceState::Starting, None).await?;
            say(&progress, format!("starting workspace {name}"));
            self.node
                .start(&rec.spec)
                .await
                .map_err(|e| node_err("start", &name, e))
        }
        .await;
        match result {
            Ok(st) => {
                self.set(&rec, WorkspaceState::Running, None).await?;
                tracing::info!(workspace = name, "running");
                if let Some(log) = build_log {
                    self.replay_build_log(&rec.spec, log).await;
                }
                // A failed command leaves the workspace (and its console log) for a look:
                // failed, and the next start runs the steps not done yet.
                if prebuild {
                    self.run_until(&rec.spec, &progress, prebuilds::PREBUILD_UNTIL)
                        .await?;
                } else {
                    self.up_lifecycle(&rec, &progress, _guard).await?;
                }
                // What the start answered, with the image already resolved: no more
                // node round trips.
                let rec = self.owned(&owner, &name).await?;
                Ok((self.view(rec, &[convert::image(image)], Some(&st)), made))
            }
            Err(e) => {
                say(&progress, format!("cleaning up workspace {name}"));
                if let Err(re) = self.node.remove(&rec.spec).await {
                    tracing::error!(workspace = name, error = ?re.to_string(), "cleanup after failed create failed");
                }
                if let Err(de) = self.store.delete(&rec.spec.id).await {
                    tracing::error!(workspace = name, error = ?de.to_string(), "deleting record failed");
                }
                Err(e)
            }
        }
    }

    pub async fn start(&self, caller: &Caller, name: &str) -> Result<Workspace, ApiError> {
        let _guard = self.lock(name).await;
        let rec = self.owned(caller, name).await?;
        if !rec.state.is_transitional() && self.on_lost_node(&rec) {
            self.recover_lost(&rec).await?;
            let rec = self.owned(caller, name).await?;
            self.run_lifecycle(&rec.spec, None, false).await?;
            return self.get(caller, name).await;
        }
        let mut started = None;
        if let Some(st) = plan_start(rec.state).map_err(ApiError::conflict)? {
            self.set_starting(&rec, st).await?;
            match self.node.start(&rec.spec).await {
                Ok(status) => {
                    self.set(&rec, WorkspaceState::Running, None).await?;
                    self.started(&rec).await?;
                    // Running either way; a failed command is this call's answer.
                    self.run_lifecycle(&rec.spec, None, false).await?;
                    started = Some(status);
                }
                // Refused before anything was done (e.g. the node's disk is under its
                // reserve for a restore): the workspace is as it was.
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    let e = node_err("start", name, e);
                    self.set(&rec, rec.state, rec.error.as_deref()).await?;
                    return Err(e);
                }
                Err(e) => {
                    let e = node_err("start", name, e);
                    self.set(&rec, WorkspaceState::Failed, Some(&e.message))
                        .await?;
                    return Err(e);
                }
            }
        }
        match started {
            Some(st) => {
                let rec = self.owned(caller, name).await?;
                let images = self.images_or_empty().await;
                Ok(self.view(rec, &images, Some(&st)))
            }
            None => self.get(caller, name).await,
        }
    }

    pub async fn stop(&self, caller: &Caller, name: &str) -> Result<Workspace, ApiError> {
        let _guard = self.lock(name).await;
        let rec = self.owned(caller, name).await?;
        self.stop_locked(&rec, &format!("stopped by {} (hearth stop)", caller.id))
            .await?;
        self.get(caller, name).await
    }

    /// Stops `rec` (its name's lock is held), recording `reason` in its console log and
    /// its record; the final snapshot follows as for every stop.
    async fn stop_locked(&self, rec: &WorkspaceRecord, reason: &str) -> Result<(), ApiError> {
        let name = &rec.spec.name;
        if self.on_lost_node(rec) {
            return Err(ApiError::conflict(format!(
                "workspace {name} is on lost node {}: hearth start {name} brings it up on \
                 another node from its last snapshot ({}), hearth rm {name} removes it",
                rec.node,
                rec.last_snapshot_at.as_deref().unwrap_or("none")
            )));
        }
        if let Some(st) = plan_stop(rec.state).map_err(ApiError::conflict)? {
            if rec.state == WorkspaceState::Running {
                // Before the stop, while its console is drained: the line lands in order.
                if let Err(e) = self.node.console_note(&rec.spec, reason).await {
                    tracing::warn!(workspace = name, error = %e, "cannot note the stop in the console log");
                }
            }
            self.claim(rec, st).await?;
            match self.node.stop(&rec.spec).await {
                Ok(()) => {
                    // The reason first: whoever sees the state stopped sees why.
                    self.stopped(rec, reason).await;
                    self.set(rec, WorkspaceState::Stopped, None).await?;
                    self.final_snapshot(rec).await;
                }
                Err(e) => {
                    let e = node_err("stop", name, e);
                    self.set(rec, WorkspaceState::Failed, Some(&e.message))
                        .await?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Removes the workspace from the node. Its snapshots are kept for the grace period
    /// (a deleted-workspace record, see `manager/trash.rs`), or forgotten at once with
    /// `purge` (or a retention of 0): then the next store gc frees their chunks.
    pub async fn remove(&self, caller: &Caller, name: &str, purge: bool) -> Result<(), ApiError> {
        let _guard = self.lock(name).await;
        let rec = match self.owned(caller, name).await {
            // `rm --purge` of a removed workspace forgets what its grace period keeps.
            Err(e) if purge && e.status == axum::http::StatusCode::NOT_FOUND => {
                return match self.purge_deleted(caller, name).await? {
                    0 => Err(e),
                    _ => Ok(()),
                };
            }
            other => other?,
        };
        let st = plan_remove(rec.state).map_err(ApiError::conflict)?;
        let purge = purge || self.deleted_retention().is_zero();
        if purge {
            // First, so a store that cannot forget leaves the workspace as it was.
            self.node
                .forget_snapshots(&rec.spec, None)
                .await
                .map_err(|e| node_err("forget_snapshots", name, e))?;
        }
        self.claim(&rec, st).await?;
        // A lost node drops its copy when it attaches again.
        let removed = if self.on_lost_node(&rec) {
            self.store.add_eviction(&rec.node, &rec.spec).await?;
            Ok(())
        } else {
            self.node.remove(&rec.spec).await
        };
        match removed {
            Ok(()) => {
                // Nothing to keep without snapshots (a store that cannot say keeps).
                if purge || !self.has_snapshots(&rec.spec).await {
                    self.store.delete(&rec.spec.id).await?;
                } else {
                    self.retire(&rec).await?;
                }
                self.forget_activity(&rec.spec.id);
                tracing::info!(workspace = name, purge, "removed");
                Ok(())
            }
            Err(e) => {
                let e = node_err("remove", name, e);
                self.set(&rec, WorkspaceState::Failed, Some(&e.message))
                    .await?;
                Err(e)
            }
        }
    }

    /// Replaces a workspace's egress policy: persisted, then applied to its network at
    /// once (a stopped workspace gets it at its next start). Bad input changes nothing;
    /// a failed apply puts the old policy back.
    pub async fn set_egress(
        &self,
        caller: &Caller,
        name: &str,
        req: Egress,
    ) -> Result<Workspace, ApiError> {
        let policy = egress_policy(req)?;
        self.change_egress(caller, name, |_| Ok(policy)).await
    }

    /// Edits the deny list under the workspace's lock: two edits at once both land.
    pub async fn edit_egress(
        &self,
        caller: &Caller,
        name: &str,
        edit: EgressEdit,
    ) -> Result<Workspace, ApiError> {
        self.change_egress(caller, name, |current| {
            let deny = convert::apply_egress_edit(&edit, &current.deny_strings())
                .map_err(ApiError::invalid)?;
            egress_policy(Egress { deny })
        })
        .await
    }

    async fn change_egress(
        &self,
        caller: &Caller,
        name: &str,
        policy: impl FnOnce(&EgressPolicy) -> Result<EgressPolicy, ApiError>,
    ) -> Result<Workspace, ApiError> {
        let (_guard, rec) = self.settled(caller, name).await?;
        let policy = policy(&rec.spec.egress)?;
        let mut spec = rec.spec.clone();
        spec.egress = policy;
        self.store.set_egress(&spec).await?;
        if let Err(e) = self.node.set_egress(&spec).await {
            let e = node_err("set_egress", name, e);
            if let Err(re) = self.store.set_egress(&rec.spec).await {
                tracing::error!(workspace = name, error = ?re.to_string(), "restoring the old egress policy failed");
            }
            return Err(e);
        }
        tracing::info!(workspace = name, deny = ?spec.egress.deny_strings(), "egress policy replaced");
        self.get(caller, name).await
    }

    /// Changes the fields of the workspace's limits that `req` sets, live where the node
    /// can (disk growth, cgroup limits of a running workspace). Disks never shrink.
    pub async fn set_limits(
        &self,
        caller: &Caller,
        name: &str,
        req: LimitsRequest,
    ) -> Result<Workspace, ApiError> {
        let (_guard, rec) = self.settled(caller, name).await?;
        let limits = convert::apply_limits(&req, rec.spec.limits).map_err(ApiError::invalid)?;
        if limits.disk_bytes < rec.spec.limits.disk_bytes {
            let gib = |b: u64| format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30));
            return Err(ApiError::invalid(format!(
                "disks only grow: workspace {name} has {}, asked for {}",
                gib(rec.spec.limits.disk_bytes),
                gib(limits.disk_bytes)
            )));
        }
        let mut spec = rec.spec.clone();
        spec.limits = limits;
        // Recorded first: if we crash before the node is done, its next start finishes
        // growing the disk. A refused change puts the old limits back.
        self.record_limits(&rec, &spec).await?;
        if let Err(e) = self.node.set_limits(&spec).await {
            if let Err(re) = self.store.set_limits(&rec.spec).await {
                tracing::error!(workspace = name, error = ?re.to_string(), "restoring the old limits failed");
            }
            return Err(node_err("set_limits", name, e));
        }
        tracing::info!(workspace = name, limits = ?spec.limits, "limits changed");
        self.get(caller, name).await
    }

    pub async fn logs(&self, caller: &Caller, name: &str) -> Result<Vec<u8>, ApiError> {
        let rec = self.owned(caller, name).await?;
        self.node
            .logs(&rec.spec)
            .await
            .map_err(|e| node_err("logs", name, e))
    }

    /// `hearth logs -f`: the console's tail, then what is written after it, polled (see
    /// [`follow`]) from whichever node runs the workspace, until the workspace is stopped,
    /// failed or removed (a last read after that), or the client goes away. Not activity:
    /// a follower does not keep a workspace up.
    pub async fn follow_logs(
        self: Arc<Self>,
        caller: &Caller,
        name: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<bytes::Bytes>, ApiError> {
        let rec = self.owned(caller, name).await?;
        let (first, cursor) = self
            .node
            .logs_since(&rec.spec, None)
            .await
            .map_err(|e| node_err("logs", name, e))?;
        let done = follow_done(rec.state);
        let first = follow::Read {
            more: first.len() >= FOLLOW_BATCH,
            chunk: first,
            done,
        };
        let console = Console {
            manager: self,
            name: name.to_string(),
            id: rec.spec.id,
            cursor,
            done,
        };
        Ok(follow::follow(first, console))
    }

    /// Checks the workspace can take an exec before a WebSocket is upgraded.
    pub async fn exec_target(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<WorkspaceSpec, ApiError> {
        let rec = self.owned(caller, name).await?;
        if rec.state != WorkspaceState::Running {
            return Err(ApiError::conflict(format!(
                "workspace {name} is {} (hearth start {name} starts it)",
                rec.state
            )));
        }
        Ok(rec.spec)
    }

    pub async fn exec(
        &self,
        spec: &WorkspaceSpec,
        mut req: ExecRequest,
    ) -> Result<ExecSession, ApiError> {
        if req.argv.is_empty() {
            return Err(ApiError::invalid("exec needs a command"));
        }
        // The user's secrets under what the request sets, over the devcontainer's env.
        let secrets = self.secrets_for(spec).await?;
        req.env = secrets::overlay(secrets, std::mem::take(&mut req.env));
        self.apply_devcontainer(spec, &mut req).await?;
        let attach = req.tty;
        let session = self
            .node
            .exec(spec, req)
            .await
            .map_err(|e| node_err("exec", &spec.name, e))?;
        if attach {
            // A terminal session (`hearth shell`, SSH with a pty) is an attach.
            self.attached(spec);
        }
        Ok(session)
    }

    /// Resolves every transitional row left by a crash, using what the node reports.
    /// Records a new workspace in `creating` with the lowest free slot; the allocation
    /// lock keeps two creates from taking the same slot.
    pub(crate) async fn insert_creating(
        &self,
        owner: &Caller,
        name: &str,
        image: String,
        source: String,
        limits: Limits,
        egress: EgressPolicy,
    ) -> Result<WorkspaceRecord, ApiError> {
        let any = crate::fleet::Labels::new();
        self.insert_creating_as(None, owner, name, image, source, limits, egress, &any)
            .await
    }

    /// [`Manager::insert_creating`] under a given id (a prebuild's series), else a new one,
    /// on the node the scheduler picks for `limits` and `selector` (which gets the image
    /// first if it lacks it).
    #[allow(clippy::too_many_arguments)]
    async fn insert_creating_as(
        &self,
        id: Option<WorkspaceId>,
        owner: &Caller,
        name: &str,
        image: String,
        source: String,
        limits: Limits,
        egress: EgressPolicy,
        selector: &crate::fleet::Labels,
    ) -> Result<WorkspaceRecord, ApiError> {
        let node = self.choose_node(&limits, selector, None).await?;
        if self.fleet.only().is_none() {
            let api = self.fleet.api(&node)?;
            self.ensure_image(&node, &api, &image).await?;
        }
        let _alloc = self.alloc.lock().await;
        let t = now();
        // A record under an id used before (a prebuild series) starts above any
        // generation an earlier one reached, so the store's fence never refuses it.
        let generation = match &id {
            Some(_) => time::OffsetDateTime::now_utc().unix_timestamp().max(1) as u64,
            None => 1,
        };
        let mut rec = WorkspaceRecord {
            spec: WorkspaceSpec {
                generation,
                id: id.unwrap_or_else(new_id),
                name: name.to_string(),
                image,
                source,
                slot: 0,
                limits,
                egress,
            },
            state: WorkspaceState::Creating,
            error: None,
            created_at: t.clone(),
            updated_at: t,
            last_snapshot: None,
            snapshot_error: None,
            owner: owner.id.to_string(),
            node,
            node_selector: selector.clone(),
            last_snapshot_at: None,
            idle: Default::default(),
        };
        self.insert_at_free_slot(&mut rec, false).await?;
        // Making a workspace is using it: its idle time starts now.
        self.activity.touch(rec.spec.id.as_str());
        Ok(rec)
    }

    /// Records `rec` (new, or `revive`d from `deleted_workspaces`) at the lowest free slot.
    /// The caller holds the allocation lock, so only another server sharing the database
    /// (PostgreSQL) can take that slot first: then the next free one is tried.
    pub(crate) async fn insert_at_free_slot(
        &self,
        rec: &mut WorkspaceRecord,
        revive: bool,
    ) -> Result<(), crate::db::StoreError> {
        let mut tries = 0;
        loop {
            rec.spec.slot = self.store.free_slot().await?;
            let res = if revive {
                self.store.revive(rec).await
            } else {
                self.store.insert(rec).await
            };
            match res {
                Err(crate::db::StoreError::SlotTaken(slot)) if tries < 100 => {
                    tracing::debug!(slot, workspace = rec.spec.name, "slot taken meanwhile");
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Brings the rows of workspaces on connected nodes in line with what the nodes
    /// report (at server start). Idempotent, and it leaves alone operations another live
    /// server is running (servers sharing a database start while others work): those
    /// are theirs to finish, and a server's own operations from before a restart are
    /// finished here or, on nodes not connected yet, by the leader's takeover job.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        self.fleet.load().await?;
        for n in self.fleet.nodes() {
            if let Ok(api) = self.fleet.api(&n.name) {
                if let Err(e) = self.drop_evicted(&n.name, &api).await {
                    tracing::warn!(node = n.name, error = %e, "cannot drop copies of moved workspaces yet");
                }
            }
        }
        let mut recs = self.store.list().await?;
        // A node that is not connected is reconciled when it attaches: until then
        // nothing is known about its workspaces.
        if self.fleet.only().is_none() {
            recs.retain(|r| self.fleet.api(&r.node).is_ok());
        }
        let busy = self.operations_elsewhere().await?;
        recs.retain(|r| !busy.contains(&r.spec.name));
        let specs: Vec<WorkspaceSpec> = recs.iter().map(|r| r.spec.clone()).collect();
        let statuses = self.node.reconcile(&specs).await?;
        let status_of = |spec: &WorkspaceSpec| -> Option<WorkspaceStatus> {
            statuses
                .iter()
                .find(|(k, _)| *k == spec.id)
                .map(|(_, s)| s.clone())
        };
        for rec in recs {
            let actual = status_of(&rec.spec).map(|s| s.state);
            self.settle(&rec, actual).await?;
        }
        Ok(())
    }

    /// Settles `rec` (its operation interrupted, or its row behind its node) from what
    /// its node reports: a create or removal cut short is removed, the rest take the
    /// state the node reports.
    async fn settle(&self, rec: &WorkspaceRecord, actual: Option<RunState>) -> anyhow::Result<()> {
        let name = &rec.spec.name;
        match reconciled_state(rec.state, actual) {
            None => {
                tracing::info!(workspace = name, state = %rec.state, "finishing interrupted removal");
                match self.node.remove(&rec.spec).await {
                    // A removal keeps the snapshots for the grace period (it may have
                    // been a purge; keeping is the side that loses nothing).
                    // So may a restore (a create with snapshots) cut short.
                    Ok(())
                        if rec.state == WorkspaceState::Removing
                            || self.has_snapshots(&rec.spec).await =>
                    {
                        self.retire(rec).await?
                    }
                    Ok(()) => self.store.delete(&rec.spec.id).await?,
                    Err(e) => {
                        // Keep the row so `hearth rm` can retry; never leave it transitional.
                        tracing::error!(workspace = name, error = ?e.to_string(), "remove failed");
                        let msg = format!("interrupted operation could not be undone: {e}");
                        self.store
                            .set_state(&rec.spec.id, WorkspaceState::Failed, Some(&msg))
                            .await?;
                    }
                }
            }
            Some(state) => {
                let error = match (state, actual) {
                    (WorkspaceState::Failed, Some(RunState::Missing) | None) => {
                        Some("the node has no data for this workspace".to_string())
                    }
                    (WorkspaceState::Failed, _) => rec.error.clone(),
                    _ => None,
                };
                if state != rec.state || error != rec.error {
                    tracing::info!(workspace = name, from = %rec.state, to = %state, "reconciled");
                    self.store
                        .set_state(&rec.spec.id, state, error.as_deref())
                        .await?;
                }
                if state == WorkspaceState::Stopped && rec.snapshot_error.is_some() {
                    tracing::info!(
                        workspace = name,
                        "resuming retries of a failed final snapshot"
                    );
                    self.retry_final_snapshot(rec);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WorkspaceState::*;

    #[test]
    fn start_and_stop_plans() {
        assert_eq!(plan_start(Running), Ok(None));
        assert_eq!(plan_start(Stopped), Ok(Some(Starting)));
        assert_eq!(plan_start(Failed), Ok(Some(Starting)));
        for s in [Creating, Starting, Stopping, Removing] {
            assert!(plan_start(s).is_err(), "{s}");
            assert!(plan_stop(s).is_err(), "{s}");
        }
        assert_eq!(plan_stop(Stopped), Ok(None));
        assert_eq!(plan_stop(Running), Ok(Some(Stopping)));
        assert_eq!(plan_remove(Running), Ok(Removing));
        assert!(plan_remove(Creating).is_err());
    }

    #[test]
    fn reconcile_leaves_nothing_transitional() {
        let actuals = [
            None,
            Some(RunState::Running),
            Some(RunState::Stopped),
            Some(RunState::Missing),
        ];
        for s in WorkspaceState::ALL {
            for a in actuals {
                if let Some(out) = reconciled_state(s, a) {
                    assert!(!out.is_transitional(), "{s} {a:?} -> {out}");
                }
            }
        }
        assert_eq!(reconciled_state(Creating, Some(RunState::Running)), None);
        assert_eq!(reconciled_state(Removing, Some(RunState::Stopped)), None);
        assert_eq!(
            reconciled_state(Starting, Some(RunState::Running)),
            Some(Running)
        );
        assert_eq!(
            reconciled_state(Stopping, Some(RunState::Stopped)),
            Some(Stopped)
        );
        assert_eq!(
            reconciled_state(Running, Some(RunState::Stopped)),
            Some(Stopped)
        );
        assert_eq!(
            reconciled_state(Running, Some(RunState::Missing)),
            Some(Failed)
        );
        assert_eq!(
            reconciled_state(Failed, Some(RunState::Stopped)),
            Some(Failed)
        );
    }
}
