//! `inspect` for [`super::LocalNode`]: host resources and current usage of a workspace.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{internal, valid_id, Inner};
use crate::{
    EgressDetails, NetworkDetails, NodeError, RunState, Usage, WorkspaceDetails, WorkspaceSpec,
    ID_RANGE,
};

/// CPU use is measured over at least this long.
const CPU_SAMPLE: Duration = Duration::from_millis(200);
/// The writable-layer walk stops after this many entries or this long, whichever is first,
/// so inspect stays cheap on a huge tree.
const DU_MAX_ENTRIES: u64 = 200_000;
const DU_MAX_TIME: Duration = Duration::from_secs(2);

/// Disk use of a tree: allocated bytes, hard links counted once, symlinks not followed,
/// other filesystems not entered. Returns (bytes, complete).
pub(super) fn disk_usage(root: &Path, max_entries: u64, max_time: Duration) -> (u64, bool) {
    let deadline = Instant::now() + max_time;
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        return (0, true);
    };
    let dev = meta.dev();
    let mut total = meta.blocks() * 512;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    let mut entries = 0u64;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            entries += 1;
            if entries > max_entries || Instant::now() > deadline {
                return (total, false);
            }
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (total, true)
}

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
    valid_id(&spec.id)?;
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
            ip: inner.net.address(spec.slot).map_err(internal)?,
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
        Some(inner.cgroups.stats(&spec.id).map_err(internal)?)
    } else {
        None
    };
    let (disk_bytes, disk_complete) = disk_usage(&p.upper, DU_MAX_ENTRIES, DU_MAX_TIME);
    let mut usage = Usage {
        disk_bytes,
        disk_complete,
        ..Usage::default()
    };
    if let Some(s0) = stats0 {
        if let Some(rest) = CPU_SAMPLE.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
        let s1 = inner.cgroups.stats(&spec.id).map_err(internal)?;
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_blocks_once_and_stops_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, complete) = disk_usage(dir.path(), 1000, Duration::from_secs(10));
        assert!(complete);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let data = vec![7u8; 1 << 20];
        std::fs::write(dir.path().join("sub/big"), &data).unwrap();
        std::fs::hard_link(dir.path().join("sub/big"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("usr")).unwrap();
        let (used, complete) = disk_usage(dir.path(), 1000, Duration::from_secs(10));
        assert!(complete);
        assert!(used >= empty + (1 << 20), "{used}");
        assert!(used < empty + (2 << 20), "hard link counted twice: {used}");
        let (_, complete) = disk_usage(dir.path(), 2, Duration::from_secs(10));
        assert!(!complete);
        let (none, complete) = disk_usage(&dir.path().join("missing"), 10, Duration::from_secs(1));
        assert_eq!((none, complete), (0, true));
    }
}
