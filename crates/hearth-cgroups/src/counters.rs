//! CPU counters of a workspace's groups as `/metrics` reports them: throttling and CPU
//! pressure (usage is in [`crate::Stats`]). Read once per scrape, so plain reads; the
//! CPU controller's own sampler keeps its files open instead.

use std::path::Path;

use crate::{read, CgroupError, Cgroups, Layout, WorkspaceId};

/// `None` where the host lacks the file (no cpu controller, no PSI).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuCounters {
    /// CFS periods in which the group's quota ran out.
    pub throttled_periods: Option<u64>,
    /// Time the group spent throttled, microseconds.
    pub throttled_us: Option<u64>,
    /// PSI `some` total: time at least one of its tasks waited for a CPU, microseconds.
    pub pressure_some_us: Option<u64>,
}

impl Cgroups {
    pub fn cpu_counters(&self, id: &WorkspaceId) -> Result<CpuCounters, CgroupError> {
        let (stat_dir, psi_dir, v1) = match &self.layout {
            Layout::V1(v1) => (
                v1.cpu.as_ref().map(|c| c.join(&self.parent).join(id)),
                v1.unified.as_ref().map(|u| u.join(&self.parent).join(id)),
                true,
            ),
            Layout::V2 { root } => {
                let dir = root.join(&self.parent).join(id);
                (Some(dir.clone()), Some(dir), false)
            }
        };
        let mut c = CpuCounters::default();
        if let Some(text) = stat_dir.map(|d| d.join("cpu.stat")).map(|p| read_opt(&p)) {
            if let Some(text) = text? {
                let field = |k: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(k)?.strip_prefix(' '))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                c.throttled_periods = field("nr_throttled");
                c.throttled_us = if v1 {
                    field("throttled_time").map(|ns| ns / 1000)
                } else {
                    field("throttled_usec")
                };
            }
        }
        if let Some(text) = psi_dir
            .map(|d| d.join("cpu.pressure"))
            .map(|p| read_opt(&p))
        {
            c.pressure_some_us = text?.and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("some "))?
                    .split(' ')
                    .find_map(|f| f.strip_prefix("total="))?
                    .trim()
                    .parse()
                    .ok()
            });
        }
        Ok(c)
    }
}

/// The file's text, `None` if it (or its group) does not exist.
fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    if !path.exists() {
        return Ok(None);
    }
    read(path).map(Some)
}
