//! What the node reports to the scheduler: the host's CPUs, memory and disk, and the
//! workspaces it holds.

use super::Inner;
use crate::{NodeCapacity, NodeError, WorkspaceId};

/// `MemTotal` and `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib = rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
            kib.checked_mul(1024)
        })
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

impl Inner {
    pub(super) fn capacity(&self) -> Result<NodeCapacity, NodeError> {
        let text = std::fs::read_to_string("/proc/meminfo")
            .map_err(NodeError::io("read", "/proc/meminfo"))?;
        let (memory_total, memory_available) = meminfo(&text).ok_or_else(|| {
            NodeError::Internal("/proc/meminfo has no MemTotal or MemAvailable".into())
        })?;
        let dir = &self.cfg.data_dir;
        let st =
            nix::sys::statvfs::statvfs(dir).map_err(|e| NodeError::io("statvfs", dir)(e.into()))?;
        let (mut workspaces, mut running) = (0u32, 0u32);
        let rd = std::fs::read_dir(&self.ws_root).map_err(NodeError::io("read", &self.ws_root))?;
        for e in rd.flatten() {
            // Partial restores (`.restore-*`) and anything else not named by an id are
            // not workspaces.
            let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|n| WorkspaceId::new(n).ok())
            else {
                continue;
            };
            workspaces += 1;
            // The agent socket exists exactly while the workspace runs.
            if self.paths(&id).socket.exists() {
                running += 1;
            }
        }
        Ok(NodeCapacity {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_total,
            memory_available,
            disk_total: st.blocks() * st.fragment_size(),
            disk_free: super::guard::free_bytes(dir)?,
            disk_reserve: self.guard.reserve,
            workspaces,
            running,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::meminfo;

    #[test]
    fn meminfo_reads_total_and_available() {
        let text = "MemTotal:       16303744 kB\nMemFree:         1234 kB\n\
                    MemAvailable:    8000000 kB\nBuffers: 1 kB\n";
        assert_eq!(meminfo(text), Some((16303744 * 1024, 8000000 * 1024)));
        // Old kernels without MemAvailable, and garbage, give nothing.
        assert_eq!(meminfo("MemTotal: 10 kB\nMemFree: 5 kB\n"), None);
        assert_eq!(meminfo("MemTotal: x kB\nMemAvailable: 1 kB\n"), None);
        // A prefix of another field's name is not the field.
        assert_eq!(meminfo("MemTotalX: 1 kB\nMemAvailable: 1 kB\n"), None);
    }
}
