//! `inspect` for [`super::LocalNode`]: host resources and current usage of a workspace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{internal, Inner};
use crate::{
    EgressDetails, NetworkDetails, NodeError, RunState, Usage, WorkspaceDetails, WorkspaceId,
    WorkspaceMetrics, WorkspaceSpec, ID_RANGE,
};

/// CPU use is measured over at least this long.
const CPU_SAMPLE: Duration = Duration::from_millis(200);
/// The bridge port of workspace `id`: the veth named after a prefix of its id.
fn host_veth(bridge: &str, id: &str) -> Option<String> {
    let rd = std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif")).ok()?;
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| {
            n.strip_prefix("hv")
                .is_some_and(|p| !p.is_empty() && id.starts_with(p))
        })
}

pub(super) fn inspect(inner: &Inner, spec: &WorkspaceSpec) -> Result<WorkspaceDetails, NodeError> {
    let status = inner.status(spec)?;
    if status.state == RunState::Missing {
        return Err(NodeError::NotFound(format!(
            "workspace {} has no data on this node",
            spec.name
        )));
    }
    let p = inner.paths(&spec.id);
    let cgroups: Vec<PathBuf> = inner
        .cgroups
        .procs_files(&spec.id)
        .into_iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let netns = inner.net.netns_path(&spec.id);
    let network = if netns.exists() {
        Some(NetworkDetails {
            ip: inner.net.address(spec.slot)?,
            prefix_len: inner.net.prefix_len(),
            gateway: inner.net.gateway(),
            bridge: inner.net.bridge().to_string(),
            host_veth: host_veth(inner.net.bridge(), &spec.id),
            netns,
        })
    } else {
        None
    };

    let t0 = Instant::now();
    let running = status.state == RunState::Running && !cgroups.is_empty();
    let stats0 = if running {
        Some(inner.cgroups.stats(&spec.id)?)
    } else {
        None
    };
    inner.open_disk(&p)?;
    // btrfs allocates at writeback: without a flush, fresh writes would not show.
    if let Err(e) =
        std::fs::File::open(&p.disk).and_then(|f| rustix::fs::syncfs(&f).map_err(Into::into))
    {
        tracing::warn!(id = %spec.id, "sync before disk usage: {e}");
    }
    let disk = hearth_disk::usage(&p.disk)?;
    let mut usage = Usage {
        disk_bytes: disk.used,
        disk_size: disk.size,
        ..Usage::default()
    };
    if let Some(s0) = stats0 {
        if let Some(rest) = CPU_SAMPLE.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
        let s1 = inner.cgroups.stats(&spec.id)?;
        let secs = t0.elapsed().as_secs_f64();
        usage.cpu_ns = s1.cpu_usage_ns;
        usage.cpu_percent = match (s0.cpu_usage_ns, s1.cpu_usage_ns) {
            (Some(a), Some(b)) if secs > 0.0 => {
                Some(b.saturating_sub(a) as f64 / 1e9 / secs * 100.0)
            }
            _ => None,
        };
        usage.memory_bytes = s1.memory_bytes;
        usage.pids = Some(s1.pids);
        let m = inner.cgroups.memory(&spec.id)?;
        usage.memory_high_bytes = m.high_bytes;
        usage.oom_kill_count = m.oom_kills;
    }
    let limits = inner.net.conn_limits();
    let egress = EgressDetails {
        deny: spec.egress.deny_strings(),
        node_deny: inner
            .net
            .node_deny()
            .map_err(internal)?
            .iter()
            .map(ToString::to_string)
            .collect(),
        rate: limits.rate,
        burst: limits.burst,
        max_conns: limits.max_conns,
    };
    Ok(WorkspaceDetails {
        egress,
        state: status.state,
        pid: status.pid,
        uid_base: spec.uid_base(),
        id_count: ID_RANGE,
        cgroups,
        limits: spec.limits,
        network,
        usage,
        paused: inner.paused_reason(&spec.id),
        oom_kills: inner.ooms.kills(&spec.id),
        cpu: inner.cpu.as_ref().and_then(|c| c.view(&spec.id)),
        hydration: inner.hydration_status(spec),
    })
}

/// [`crate::NodeApi::metrics`]: a few small reads per workspace whose cgroup exists; a
/// workspace whose files cannot be read is left out (and logged), not the scrape.
pub(super) fn metrics(inner: &Inner, ids: &[WorkspaceId]) -> Vec<(WorkspaceId, WorkspaceMetrics)> {
    let one = |id: &WorkspaceId| -> Result<WorkspaceMetrics, NodeError> {
        let s = inner.cgroups.stats(id)?;
        Ok(WorkspaceMetrics {
            cpu_usage_ns: s.cpu_usage_ns,
            cpu: inner.cgroups.cpu_counters(id)?,
            memory: inner.cgroups.memory(id)?,
            pids: Some(s.pids),
        })
    };
    ids.iter()
        .filter(|id| !inner.cgroups.procs_files(id).is_empty())
        .filter_map(|id| match one(id) {
            Ok(m) => Some((id.clone(), m)),
            Err(e) => {
                tracing::warn!(%id, "metrics: {e}");
                None
            }
        })
        .collect()
}
