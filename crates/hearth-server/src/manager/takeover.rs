//! Operations whose server is gone. Every transitional state names the server running
//! its operation (`workspaces.op_server`); when that server stops heartbeating (killed,
//! or restarted: its old operations are marked `''` at its start), the leader takes the
//! operation over once the workspace's node is connected to it, and finishes or undoes
//! it as a restart's reconcile would: a stop is finished (with its final snapshot), a
//! create or removal cut short is removed, a start takes the state the node reports.

use std::collections::HashSet;

use hearth_api::WorkspaceState;
use hearth_node::{ErrorKind, RunState};

use super::Manager;
use crate::db::WorkspaceRecord;
use crate::error::ApiError;

impl Manager {
    /// This server's id among the servers sharing the database, once the server set it.
    pub fn server_id(&self) -> Option<&str> {
        self.store.operator()
    }

    /// Ids of the servers live now (heartbeat within the leader lease's length).
    async fn live_servers(&self) -> Result<HashSet<String>, ApiError> {
        let since = crate::leader::live_since();
        Ok(self
            .store
            .live_servers(since)
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect())
    }

    /// Names of workspaces whose operation another live server runs now.
    pub(super) async fn operations_elsewhere(&self) -> Result<HashSet<String>, ApiError> {
        let ops = self.store.operations().await?;
        if ops.is_empty() {
            return Ok(HashSet::new());
        }
        let live = self.live_servers().await?;
        let me = self.server_id();
        Ok(ops
            .into_iter()
            .filter(|(_, op)| live.contains(op) && Some(op.as_str()) != me)
            .map(|(name, _)| name)
            .collect())
    }

    /// Takes over and settles the operations of servers that are gone (a leader job,
    /// every few seconds); errors are logged and the next run tries again.
    pub async fn take_over_orphans(&self) {
        if let Err(e) = self.take_over_once().await {
            tracing::warn!(error = %e.message, "cannot take over operations of gone servers yet");
        }
        let failed = match self.live_servers().await {
            Ok(live) => self.fail_orphan_prebuild_runs(&live).await,
            Err(e) => Err(e),
        };
        if let Err(e) = failed {
            tracing::warn!(error = %e.message, "cannot settle prebuild runs of gone servers yet");
        }
    }

    async fn take_over_once(&self) -> Result<(), ApiError> {
        let ops = self.store.operations().await?;
        if ops.is_empty() {
            return Ok(());
        }
        let live = self.live_servers().await?;
        for (name, old) in ops.into_iter().filter(|(_, op)| !live.contains(op)) {
            let _guard = self.lock(&name).await;
            let Some(rec) = self.store.get(&name).await? else {
                continue;
            };
            if !rec.state.is_transitional() {
                continue;
            }
            // Its node answers another server, or none: later, or when it attaches.
            if self.fleet.only().is_none() && self.fleet.api(&rec.node).is_err() {
                continue;
            }
            if !self.store.adopt(&rec.spec.id, rec.state, &old).await? {
                continue;
            }
            let gone = if old.is_empty() {
                "(this server, before a restart)"
            } else {
                old.as_str()
            };
            tracing::info!(
                workspace = name,
                state = %rec.state,
                server = gone,
                "taking over an operation whose server is gone"
            );
            self.settle_orphan(&rec)
                .await
                .map_err(|e| ApiError::internal(format!("workspace {name}: {e:#}")))?;
        }
        Ok(())
    }

    /// Finishes or undoes `rec`'s operation (its name lock is held, the row adopted).
    async fn settle_orphan(&self, rec: &WorkspaceRecord) -> anyhow::Result<()> {
        let name = &rec.spec.name;
        match rec.state {
            // The node may still be stopping it: stopping again waits for the end.
            WorkspaceState::Stopping => match self.node.stop(&rec.spec).await {
                Ok(()) => {
                    self.stopped(rec, "stopped (finished by another server)")
                        .await;
                    self.set(rec, WorkspaceState::Stopped, None).await?;
                    tracing::info!(workspace = name, "stop finished after its server went away");
                    self.final_snapshot(rec).await;
                }
                Err(e) => {
                    let e = super::node_err("stop", name, e);
                    self.set(rec, WorkspaceState::Failed, Some(&e.message))
                        .await?;
                }
            },
            WorkspaceState::Starting => {
                let actual = match self.node.status(&rec.spec).await {
                    Ok(st) => Some(st.state),
                    Err(e) if e.kind() == ErrorKind::NotFound => Some(RunState::Missing),
                    Err(e) => return Err(e.into()),
                };
                self.settle(rec, actual).await?;
            }
            // A create or removal cut short is removed (settle knows how).
            _ => self.settle(rec, None).await?,
        }
        Ok(())
    }
}
