//! Bringing the host in line with the control plane's records after a restart or crash.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::Inner;
use crate::{NodeError, RunState, WorkspaceId, WorkspaceSpec, WorkspaceStatus};

/// Workspaces re-attached at once after a restart: the work is small file reads and
/// syscalls (a cleanup after a crash mid-start runs a few `ip`/`nft`), so a few threads
/// keep both cores busy without crowding the host.
const RECONCILE_WORKERS: usize = 8;

/// `f` over `items` on up to `workers` threads; results in input order.
pub(super) fn par_map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

impl Inner {
    /// Re-attaches to one known workspace: a running one keeps running (only a freeze a
    /// crash left behind is lifted); anything else has its half-done runtime state
    /// cleared.
    fn reconcile_one(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        let st = self.status(spec)?;
        self.ooms.register(&spec.id, spec.uid_base());
        let p = self.paths(&spec.id);
        if st.state != RunState::Missing && self.open_disk(&p).is_ok() {
            self.drop_stale_views(&p);
            // A running workspace's fills go on at once (opens of what is left wait).
            if st.state == RunState::Running {
                if let Err(e) = self.ensure_hydration(spec) {
                    tracing::error!(id = %spec.id, "resuming its hydration: {e}");
                }
            }
        }
        if st.state == RunState::Running {
            if let Some(cpu) = &self.cpu {
                cpu.register(&spec.id, &spec.limits);
            }
            // The agent keeps its class across our restarts; this repairs one reset by hand.
            if let Some(pid) = st.pid {
                self.reprioritize_agent(&spec.id, pid);
            }
            // A crash mid-snapshot leaves the workspace frozen; nothing else thaws it.
            // (The disk guard freezes it again if it grows while under the reserve.)
            if let Err(e) = self.freezes.clear(&self.cgroups, &spec.id, false) {
                tracing::warn!(id = %spec.id, "reconcile thaw: {e}");
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
        Ok(st)
    }

    pub(super) fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(WorkspaceId, WorkspaceStatus)>, NodeError> {
        let known_ids: std::collections::HashSet<&str> =
            known.iter().map(|s| s.id.as_str()).collect();
        // Each workspace is independent: re-attach them in parallel.
        let statuses = par_map(known, RECONCILE_WORKERS, |spec| self.reconcile_one(spec));
        let mut out = Vec::with_capacity(known.len());
        let mut running = Vec::new();
        for (spec, st) in known.iter().zip(statuses) {
            let st = st?;
            if st.state == RunState::Running {
                running.push((&spec.id, spec.slot, &spec.egress.deny[..]));
            }
            out.push((spec.id.clone(), st));
        }
        // The kernel keeps the rules across our restarts; this repairs a policy changed
        // while we were down or rules someone flushed, for all of them at once.
        for (id, e) in self.host.apply_egress_many(&running) {
            tracing::warn!(%id, "reconcile egress: {e}");
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
