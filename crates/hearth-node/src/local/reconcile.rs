//! Bringing the host in line with the control plane's records after a restart or crash.

use super::Inner;
use crate::{NodeError, RunState, WorkspaceId, WorkspaceSpec, WorkspaceStatus};

impl Inner {
    pub(super) fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(WorkspaceId, WorkspaceStatus)>, NodeError> {
        let mut out = Vec::new();
        let known_ids: std::collections::HashSet<&str> =
            known.iter().map(|s| s.id.as_str()).collect();
        for spec in known {
            let st = self.status(spec)?;
            let p = self.paths(&spec.id);
            if st.state != RunState::Missing && self.open_disk(&p).is_ok() {
                self.drop_stale_views(&p);
            }
            if st.state == RunState::Running {
                // A crash mid-snapshot leaves the workspace frozen; nothing else thaws it.
                // (The disk guard freezes it again if it grows while under the reserve.)
                if let Err(e) = self.freezes.clear(&self.cgroups, &spec.id, false) {
                    tracing::warn!(id = %spec.id, "reconcile thaw: {e}");
                }
                // The kernel keeps the rules across our restarts; this repairs a policy
                // changed while we were down or rules someone flushed.
                if let Err(e) = self
                    .host
                    .apply_egress(&spec.id, spec.slot, &spec.egress.deny)
                {
                    tracing::warn!(id = %spec.id, "reconcile egress: {e}");
                }
                // Drain its console again (its pipe buffered what came while we were down).
                if let Err(e) =
                    self.consoles
                        .attach(&spec.id, &p.console_fifo, &p.console, self.cfg.console)
                {
                    tracing::warn!(id = %spec.id, "reconcile console: {e}");
                }
            } else {
                // A crash mid-start or mid-stop leaves mounts, netns or cgroups: clear them.
                if let Err(e) = self.cleanup_runtime(&spec.id, true) {
                    tracing::warn!(id = %spec.id, "reconcile cleanup: {e}");
                }
            }
            out.push((spec.id.clone(), st));
        }
        // Resources of workspaces the control plane no longer knows.
        let mut strays: std::collections::BTreeSet<WorkspaceId> = Default::default();
        strays.extend(self.host.containers().unwrap_or_default());
        strays.extend(self.host.cgroups().unwrap_or_default());
        strays.extend(self.host.networks().unwrap_or_default());
        if let Ok(rd) = std::fs::read_dir(&self.ws_root) {
            for e in rd.flatten() {
                let Some(n) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if n.starts_with(".restore-") {
                    // A restore cut short by a crash: its snapshot is still in the store,
                    // so the partial copy holds nothing that exists only here.
                    if let Err(err) = self.unmount_all(&e.path()).and_then(|()| {
                        std::fs::remove_dir_all(e.path()).map_err(NodeError::io("remove", e.path()))
                    }) {
                        tracing::warn!(dir = %e.path().display(), "removing partial restore: {err}");
                    }
                    continue;
                }
                // Anything else that is not an id is not ours to clean.
                if let Ok(id) = WorkspaceId::new(n) {
                    strays.insert(id);
                }
            }
        }
        for id in strays {
            // Known, or the truncated veth name of a known one.
            if known_ids.iter().any(|k| k.starts_with(id.as_str())) {
                continue;
            }
            tracing::warn!(%id, "cleaning up resources of an unknown workspace");
            if let Err(e) = self.cleanup_runtime(&id, false) {
                tracing::warn!(%id, "stray cleanup: {e}");
            }
            // Its files stay: deleting data needs a record that says it is garbage.
        }
        Ok(out)
    }
}
