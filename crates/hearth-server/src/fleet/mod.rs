//! The nodes the control plane places workspaces on.
//!
//! A node is a name, the [`NodeApi`] its calls go through (the embedded node's own
//! object, or a connection the node dialled in), labels for `--node-selector`, the
//! capacity it last reported and when. Admin state (ready or draining) and labels are
//! kept in the `nodes` table; liveness is this process's view: a node whose heartbeats
//! stop for [`Fleet::lost_after`] is lost. The embedded node shares the server's process
//! and is never lost.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hearth_node::{NodeApi, NodeCapacity};

use crate::db::{now, Store, StoreError};

mod router;
pub use router::Router;

/// Name of the embedded node unless `hearth server --node-name` says otherwise (rows
/// written before the fleet existed name it).
pub const DEFAULT_LOCAL_NODE: &str = "local";

/// How long a node may go without a heartbeat before it is lost.
pub const DEFAULT_LOST_AFTER: Duration = Duration::from_secs(30);

/// How often in-process nodes report their capacity (remote nodes choose their own pace,
/// well under [`DEFAULT_LOST_AFTER`]).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Labels a node carries, matched by node selectors.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("node {0} not found (hearth node ls lists nodes)")]
    NotFound(String),
    #[error("node {0} is not connected")]
    Unreachable(String),
    #[error("node {name} still holds workspaces: {names} (hearth node drain {name} moves them)")]
    NotEmpty { name: String, names: String },
    #[error(
        "invalid node name {0:?}: use 1-63 of a-z, 0-9 and -, starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("invalid node label {0:?}: use KEY=VALUE, each 1-63 of a-z, A-Z, 0-9, '.', '_', '-'")]
    InvalidLabel(String),
    #[error("node {0} cannot be fenced: {1}")]
    Fence(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an admin set for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Takes new workspaces.
    Ready,
    /// Takes none; `hearth node drain` moves its workspaces elsewhere.
    Draining,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Draining => "draining",
        }
    }

    fn parse(s: &str) -> AdminState {
        match s {
            "draining" => AdminState::Draining,
            _ => AdminState::Ready,
        }
    }
}

/// A node's state as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Ready,
    Draining,
    /// No heartbeat for [`Fleet::lost_after`]: its workspaces can be brought up elsewhere
    /// from their last snapshots, and it is fenced off if it returns.
    Lost,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Lost => "lost",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

struct Entry {
    /// `None` while the node is not connected.
    api: Option<Arc<dyn NodeApi>>,
    labels: Labels,
    admin: AdminState,
    capacity: Option<NodeCapacity>,
    /// Last attach or heartbeat seen by this process.
    seen: Option<Instant>,
    /// The same as RFC 3339 (also from the database, for nodes not seen since a restart).
    last_seen: Option<String>,
    /// Runs in this process: never lost.
    embedded: bool,
}

/// One node as [`Fleet::nodes`] reports it.
#[derive(Clone)]
pub struct NodeInfo {
    pub name: String,
    pub state: NodeState,
    pub connected: bool,
    pub labels: Labels,
    pub capacity: Option<NodeCapacity>,
    pub last_seen: Option<String>,
    pub embedded: bool,
}

impl std::fmt::Debug for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeInfo")
            .field("name", &self.name)
            .field("state", &self.state)
            .field("connected", &self.connected)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// What runs when a node attaches, before any call is routed to it: the manager drops
/// its copies of workspaces that moved meanwhile and reconciles the rest.
#[async_trait::async_trait]
pub trait AttachHook: Send + Sync {
    async fn attached(&self, node: &str, api: &Arc<dyn NodeApi>) -> Result<(), String>;
}

/// The registry of nodes; shared by the manager, the API and the node connections.
pub struct Fleet {
    hook: std::sync::OnceLock<std::sync::Weak<dyn AttachHook>>,
    pub(crate) store: Store,
    nodes: RwLock<BTreeMap<String, Entry>>,
    lost_after: RwLock<Duration>,
    /// The embedded node's name, if the server runs one.
    local: Option<String>,
}

/// Node names go into URLs, logs and the database: DNS-label rules.
pub fn check_node_name(name: &str) -> Result<(), FleetError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(FleetError::InvalidName(name.to_string()))
    }
}

fn label_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses `KEY=VALUE` (a label, or a selector's term).
pub fn parse_label(s: &str) -> Result<(String, String), FleetError> {
    match s.split_once('=') {
        Some((k, v)) if label_part_ok(k) && label_part_ok(v) => Ok((k.to_string(), v.to_string())),
        _ => Err(FleetError::InvalidLabel(s.to_string())),
    }
}

/// Parses a list of `KEY=VALUE` terms; a key given twice keeps its last value.
pub fn parse_labels<S: AsRef<str>>(terms: &[S]) -> Result<Labels, FleetError> {
    terms.iter().map(|t| parse_label(t.as_ref())).collect()
}

impl Fleet {
    /// A fleet whose embedded node `api` is named `local` (when given).
    pub fn new(store: Store, local: Option<(String, Arc<dyn NodeApi>)>) -> Fleet {
        let mut nodes = BTreeMap::new();
        let local = local.map(|(name, api)| {
            nodes.insert(
                name.clone(),
                Entry {
                    api: Some(api),
                    labels: Labels::new(),
                    admin: AdminState::Ready,
                    capacity: None,
                    seen: Some(Instant::now()),
                    last_seen: Some(now()),
                    embedded: true,
                },
            );
            name
        });
        Fleet {
            hook: Default::default(),
            store,
            nodes: RwLock::new(nodes),
            lost_after: RwLock::new(DEFAULT_LOST_AFTER),
            local,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.nodes.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lost_after(&self) -> Duration {
        *self.lost_after.read().unwrap_or_else(|e| e.into_inner())
    }

    /// `hearth server --node-lost-after`.
    pub fn set_lost_after(&self, d: Duration) {
        *self.lost_after.write().unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// The embedded node's name, if there is one.
    pub fn local_name(&self) -> Option<&str> {
        self.local.as_deref()
    }

    /// Reads the nodes the database knows (admin state, labels, last seen) and records
    /// the embedded node there. Called once at server start.
    pub async fn load(&self) -> Result<(), FleetError> {
        if let Some(local) = &self.local {
            let labels = self.read().get(local).map(|e| e.labels.clone());
            self.store
                .attach_node(local, &labels.unwrap_or_default())
                .await?;
        }
        let rows = self.store.nodes().await?;
        let mut nodes = self.write();
        for r in rows {
            let admin = AdminState::parse(&r.state);
            match nodes.get_mut(&r.name) {
                Some(e) => {
                    e.admin = admin;
                    // The embedded node's labels are the ones it was set to last.
                    e.labels = r.labels;
                }
                None => {
                    nodes.insert(
                        r.name,
                        Entry {
                            api: None,
                            labels: r.labels,
                            admin,
                            capacity: None,
                            seen: None,
                            last_seen: r.last_seen,
                            embedded: false,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Takes what other servers sharing the database recorded of the nodes connected to
    /// them (PostgreSQL): nodes that joined there, admin state and labels, and last seen,
    /// so a node alive on another server is not lost here. Nodes connected to this server
    /// keep this process's own view.
    pub async fn sync(&self) -> Result<(), FleetError> {
        let rows = self.store.nodes().await?;
        let now = time::OffsetDateTime::now_utc();
        let mut nodes = self.write();
        for r in rows {
            let age = r
                .last_seen
                .as_deref()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|t| Duration::try_from(now - t).unwrap_or(Duration::ZERO));
            let e = nodes.entry(r.name).or_insert_with(|| Entry {
                api: None,
                labels: Labels::new(),
                admin: AdminState::Ready,
                capacity: None,
                seen: None,
                last_seen: None,
                embedded: false,
            });
            e.admin = AdminState::parse(&r.state);
            e.labels = r.labels;
            if e.api.is_none() && !e.embedded {
                e.seen = age.and_then(|a| Instant::now().checked_sub(a));
                e.last_seen = r.last_seen;
            }
        }
        Ok(())
    }

    /// Sets what runs at each attach (the manager does, once).
    pub fn set_hook(&self, hook: std::sync::Weak<dyn AttachHook>) {
        let _ = self.hook.set(hook);
    }

    /// Registers a node that connected (or reconnected) with `labels`, its calls going
    /// through `api`. A known node keeps its admin state (a draining node stays
    /// draining). Before any call is routed to it, the attach hook fences it: a node that
    /// was lost may hold copies of workspaces that moved meanwhile, which it drops
    /// without a snapshot. A failed fence refuses the attach.
    pub async fn attach(
        &self,
        name: &str,
        labels: Labels,
        api: Arc<dyn NodeApi>,
    ) -> Result<(), FleetError> {
        check_node_name(name)?;
        if self.local.as_deref() == Some(name) {
            return Err(FleetError::InvalidName(format!(
                "{name} (the server's embedded node has that name)"
            )));
        }
        self.store.attach_node(name, &labels).await?;
        if let Some(hook) = self.hook.get().and_then(std::sync::Weak::upgrade) {
            hook.attached(name, &api)
                .await
                .map_err(|e| FleetError::Fence(name.to_string(), e))?;
        }
        let admin = self
            .store
            .nodes()
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .map_or(AdminState::Ready, |r| AdminState::parse(&r.state));
        let mut nodes = self.write();
        let e = nodes.entry(name.to_string()).or_insert_with(|| Entry {
            api: None,
            labels: Labels::new(),
            admin,
            capacity: None,
            seen: None,
            last_seen: None,
            embedded: false,
        });
        e.api = Some(api);
        e.labels = labels;
        e.admin = admin;
        e.seen = Some(Instant::now());
        e.last_seen = Some(now());
        tracing::info!(node = name, "node attached");
        Ok(())
    }

    /// Records a heartbeat: the node is alive and has `capacity`.
    pub async fn heartbeat(&self, name: &str, capacity: NodeCapacity) -> Result<(), FleetError> {
        let t = now();
        {
            let mut nodes = self.write();
            let e = nodes
                .get_mut(name)
                .ok_or_else(|| FleetError::NotFound(name.to_string()))?;
            e.capacity = Some(capacity);
            e.seen = Some(Instant::now());
            e.last_seen = Some(t.clone());
        }
        self.store.set_node_seen(name, &t).await?;
        Ok(())
    }

    /// The node's connection is gone: its calls fail until it attaches again, and it is
    /// lost once [`Fleet::lost_after`] has passed since its last heartbeat.
    pub fn detach(&self, name: &str) {
        if let Some(e) = self.write().get_mut(name) {
            e.api = None;
            tracing::warn!(node = name, "node detached");
        }
    }

    fn state_of(&self, e: &Entry, lost_after: Duration) -> NodeState {
        let alive = e.embedded || e.seen.is_some_and(|t| t.elapsed() < lost_after);
        match (alive, e.admin) {
            (false, _) => NodeState::Lost,
            (true, AdminState::Ready) => NodeState::Ready,
            (true, AdminState::Draining) => NodeState::Draining,
        }
    }

    /// The node's state now, if it exists.
    pub fn state(&self, name: &str) -> Option<NodeState> {
        let lost_after = self.lost_after();
        self.read().get(name).map(|e| self.state_of(e, lost_after))
    }

    /// The API of node `name`, if it is connected.
    pub fn api(&self, name: &str) -> Result<Arc<dyn NodeApi>, FleetError> {
        match self.read().get(name) {
            None => Err(FleetError::NotFound(name.to_string())),
            Some(Entry { api: None, .. }) => Err(FleetError::Unreachable(name.to_string())),
            Some(Entry { api: Some(a), .. }) => Ok(a.clone()),
        }
    }

    /// The node for calls that concern no workspace (image listing, store checks, reading
    /// a repository's devcontainer.json): the embedded node, else the first connected
    /// ready node by name.
    pub fn any(&self) -> Option<(String, Arc<dyn NodeApi>)> {
        if let Some(l) = &self.local {
            if let Ok(a) = self.api(l) {
                return Some((l.clone(), a));
            }
        }
        let lost_after = self.lost_after();
        self.read()
            .iter()
            .filter(|(_, e)| self.state_of(e, lost_after) == NodeState::Ready)
            .find_map(|(n, e)| e.api.clone().map(|a| (n.clone(), a)))
    }

    /// The single node, connected, of a fleet of one (the all-in-one server): every call
    /// goes there without asking the database where a workspace is.
    pub fn only(&self) -> Option<Arc<dyn NodeApi>> {
        let nodes = self.read();
        match nodes.values().next() {
            Some(e) if nodes.len() == 1 => e.api.clone(),
            _ => None,
        }
    }

    /// The APIs of every connected node.
    pub fn connected(&self) -> Vec<Arc<dyn NodeApi>> {
        self.read().values().filter_map(|e| e.api.clone()).collect()
    }

    /// Every node, by name.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let lost_after = self.lost_after();
        self.read()
            .iter()
            .map(|(name, e)| NodeInfo {
                name: name.clone(),
                state: self.state_of(e, lost_after),
                connected: e.api.is_some(),
                labels: e.labels.clone(),
                capacity: e.capacity.clone(),
                last_seen: e.last_seen.clone(),
                embedded: e.embedded,
            })
            .collect()
    }

    /// Sets a node's admin state (drain, or back to ready).
    pub async fn set_admin(&self, name: &str, admin: AdminState) -> Result<(), FleetError> {
        if !self.read().contains_key(name) {
            return Err(FleetError::NotFound(name.to_string()));
        }
        self.store.set_node_state(name, admin.as_str()).await?;
        if let Some(e) = self.write().get_mut(name) {
            e.admin = admin;
        }
        Ok(())
    }

    /// Replaces a node's labels.
    pub async fn set_labels(&self, name: &str, labels: Labels) -> Result<(), FleetError> {
        if !self.read().contains_key(name) {
            return Err(FleetError::NotFound(name.to_string()));
        }
        self.store.set_node_labels(name, &labels).await?;
        if let Some(e) = self.write().get_mut(name) {
            e.labels = labels;
        }
        Ok(())
    }

    /// Forgets a node that holds no workspace (the database checks, in one statement).
    /// Its connection, if any, is dropped; the embedded node cannot be removed.
    pub async fn remove(&self, name: &str) -> Result<(), FleetError> {
        if !self.read().contains_key(name) {
            return Err(FleetError::NotFound(name.to_string()));
        }
        if self.local.as_deref() == Some(name) {
            return Err(FleetError::NotEmpty {
                name: name.to_string(),
                names: "(the server's embedded node is never removed)".into(),
            });
        }
        if !self.store.delete_node(name).await? {
            let names: Vec<String> = self
                .store
                .list()
                .await?
                .into_iter()
                .filter(|r| r.node == name)
                .map(|r| r.spec.name)
                .collect();
            return Err(FleetError::NotEmpty {
                name: name.to_string(),
                names: names.join(", "),
            });
        }
        self.write().remove(name);
        tracing::info!(node = name, "node removed");
        Ok(())
    }

    /// Keeps an in-process node's capacity fresh (the embedded node, or nodes a test runs
    /// in its own process): a heartbeat every `every` ([`HEARTBEAT_EVERY`] in the server)
    /// while `api` is still the node's connection and the fleet exists.
    pub fn pump(self: &Arc<Self>, name: &str, api: Arc<dyn NodeApi>, every: Duration) {
        let (fleet, name) = (Arc::downgrade(self), name.to_string());
        tokio::spawn(async move {
            loop {
                let cap = api.capacity().await;
                let Some(f) = fleet.upgrade() else { return };
                let current = f.api(&name).ok();
                if !current.is_some_and(|c| Arc::ptr_eq(&c, &api)) {
                    return;
                }
                match cap {
                    Ok(cap) => {
                        if let Err(e) = f.heartbeat(&name, cap).await {
                            tracing::warn!(node = name, error = %e, "heartbeat not recorded");
                        }
                    }
                    Err(e) => tracing::warn!(node = name, error = %e, "node capacity unknown"),
                }
                drop(f);
                tokio::time::sleep(every).await;
            }
        });
    }
}

impl From<FleetError> for crate::error::ApiError {
    fn from(e: FleetError) -> Self {
        use crate::error::ApiError;
        let m = e.to_string();
        match e {
            FleetError::NotFound(_) => ApiError::not_found(m),
            FleetError::InvalidName(_) | FleetError::InvalidLabel(_) => ApiError::invalid(m),
            FleetError::NotEmpty { .. } => ApiError::conflict(m),
            FleetError::Fence(..) => ApiError::internal(m),
            FleetError::Unreachable(_) => ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                m,
            ),
            FleetError::Store(s) => s.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_checked() {
        for ok in ["local", "node-1", "a", "0abc"] {
            assert!(check_node_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a/b", "../x", &"x".repeat(64)] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_labels(&["zone=eu-1", "gpu=true", "zone=eu-2"]).unwrap(),
            Labels::from([
                ("gpu".into(), "true".into()),
                ("zone".into(), "eu-2".into())
            ])
        );
        for bad in ["zone", "=x", "x=", "a=b=c", "k=v w", "k=\u{e9}"] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
    }
}
