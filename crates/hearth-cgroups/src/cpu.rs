//! CPU knobs and a cheap sampler for the node's CPU controller.
//!
//! The controller runs at 10 Hz over every workspace, so reads go through files that stay
//! open ([`CpuGroup`]) and are re-read with `pread`: one syscall per counter instead of
//! open + read + close. Writes happen only for the knobs that changed since the last
//! write through the same handle.
//!
//! Kernel rules the write order follows (the same on v1 and v2, one scheduler underneath):
//! - a group with `cpu.idle=1` refuses a shares/weight write (EINVAL), and leaving idle
//!   resets the weight to the default, so weight is written before going idle and again
//!   after leaving it;
//! - the burst must not exceed the quota (EINVAL), so a shrinking quota takes its new burst
//!   first and a growing one its quota first.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{io_err, CgroupError, Cgroups, Layout, WorkspaceId};

/// The CFS period the kernel uses by default, and ours.
pub const DEFAULT_PERIOD_US: u64 = 100_000;

/// What the controller decides for one workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuKnobs {
    /// v2 semantics, 1..=10000 (100 = default); `cpu.shares` on v1 (x 10.24).
    pub weight: u64,
    /// CPU time per period; `None` = no quota.
    pub quota_us: Option<u64>,
    pub period_us: u64,
    /// Unused quota that may carry over into later periods (at most the quota).
    pub burst_us: u64,
    /// SCHED_IDLE for the whole group: it runs only when nobody else wants the CPU.
    pub idle: bool,
}

impl Default for CpuKnobs {
    fn default() -> Self {
        CpuKnobs {
            weight: 100,
            quota_us: None,
            period_us: DEFAULT_PERIOD_US,
            burst_us: 0,
            idle: false,
        }
    }
}

impl CpuKnobs {
    fn check(&self, id: &str) -> Result<(), CgroupError> {
        let bad = |reason: String| {
            Err(CgroupError::InvalidLimits {
                id: id.to_owned(),
                reason,
            })
        };
        if !(1..=10000).contains(&self.weight) {
            return bad(format!("cpu weight {} outside 1..=10000", self.weight));
        }
        if !(1000..=1_000_000).contains(&self.period_us) {
            return bad(format!(
                "cpu period {} us outside 1000..=1000000",
                self.period_us
            ));
        }
        if let Some(q) = self.quota_us {
            if q < 1000 {
                return bad(format!("cpu quota {q} us below 1000"));
            }
            if self.burst_us > q {
                return bad(format!(
                    "cpu burst {} us above the quota {q} us",
                    self.burst_us
                ));
            }
        }
        Ok(())
    }
}

/// Cumulative counters of one group; deltas between two samples give rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// CPU time used by the group since it was made.
    pub usage_ns: u64,
    /// Periods in which the quota ran out.
    pub nr_throttled: u64,
    /// Time the group spent throttled.
    pub throttled_us: u64,
    /// PSI `some` total: time at least one task of the group waited for a CPU. `None`
    /// where the kernel has no PSI for the group (or was not asked).
    pub pressure_some_us: Option<u64>,
}

/// Which counters a [`CpuGroup::sample`] reads; each is one `pread`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleWhat {
    pub throttling: bool,
    pub pressure: bool,
}

/// One workspace's CPU files, kept open, plus the knobs last written through it.
#[derive(Debug)]
pub struct CpuGroup {
    id: String,
    version: crate::Version,
    /// v1: `cpu` hierarchy group; v2: the group.
    cpu_dir: PathBuf,
    /// v1: `cpuacct.usage`; v2: `cpu.stat` (usage, throttling in one file).
    usage: Option<File>,
    /// v1 only: `cpu.stat` of the cpu hierarchy.
    stat: Option<File>,
    /// `cpu.pressure` (v2 group, or the hybrid cgroup2 group on v1).
    pressure: Option<File>,
    /// `pids.events` (the v1 pids hierarchy's group, or the v2 group).
    pids_events: Option<File>,
    last: Option<CpuKnobs>,
    buf: Vec<u8>,
}

impl Cgroups {
    /// Opens the CPU files of an existing workspace group. Missing counters (no cpuacct,
    /// no PSI) are `None` in the samples rather than errors.
    pub fn cpu_group(&self, id: &WorkspaceId) -> Result<CpuGroup, CgroupError> {
        self.cpu_group_at(&self.parent.join(id.as_str()), id.as_str())
    }

    /// The parent group of all workspaces, for its usage: while it barely moves, no
    /// workspace needs a closer look.
    pub fn cpu_parent_group(&self) -> Result<CpuGroup, CgroupError> {
        let name = self.parent.to_string_lossy().into_owned();
        self.cpu_group_at(&self.parent.clone(), &name)
    }

    fn cpu_group_at(&self, rel: &Path, name: &str) -> Result<CpuGroup, CgroupError> {
        let open = |p: PathBuf| match File::open(&p) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_err("open", &p, source)),
        };
        let (cpu_dir, usage, stat, pressure, pids_events) = match &self.layout {
            Layout::V1(v1) => {
                let Some(cpu) = &v1.cpu else {
                    return Err(CgroupError::NotMounted {
                        path: PathBuf::from("cpu"),
                    });
                };
                let cpu_dir = cpu.join(rel);
                if !cpu_dir.is_dir() {
                    return Err(io_err(
                        "open",
                        &cpu_dir,
                        io::Error::from(io::ErrorKind::NotFound),
                    ));
                }
                let usage = match &v1.cpuacct {
                    Some(a) => open(a.join(rel).join("cpuacct.usage"))?,
                    None => None,
                };
                let pressure = match &v1.unified {
                    Some(u) => open(u.join(rel).join("cpu.pressure"))?,
                    None => None,
                };
                let stat = open(cpu_dir.join("cpu.stat"))?;
                let pids_events = match &v1.pids {
                    Some(p) => open(p.join(rel).join("pids.events"))?,
                    None => None,
                };
                (cpu_dir, usage, stat, pressure, pids_events)
            }
            Layout::V2 { root } => {
                let dir = root.join(rel);
                let usage = Some(
                    File::open(dir.join("cpu.stat"))
                        .map_err(|source| io_err("open", &dir.join("cpu.stat"), source))?,
                );
                let pressure = open(dir.join("cpu.pressure"))?;
                let pids_events = open(dir.join("pids.events"))?;
                (dir, usage, None, pressure, pids_events)
            }
        };
        Ok(CpuGroup {
            id: name.to_owned(),
            version: self.version(),
            cpu_dir,
            usage,
            stat,
            pressure,
            pids_events,
            last: None,
            buf: Vec::with_capacity(512),
        })
    }

    /// Writes every CPU knob of a group (no memory of earlier writes); see
    /// [`CpuGroup::apply`] for the incremental form.
    pub fn set_cpu(&self, id: &WorkspaceId, knobs: &CpuKnobs) -> Result<(), CgroupError> {
        self.cpu_group(id)?.apply(knobs).map(drop)
    }

    /// Reads the knobs back from the group's files (tests). An idle group reads weight 1:
    /// the kernel shows its idle weight until the group leaves idle.
    pub fn cpu_knobs(&self, id: &WorkspaceId) -> Result<CpuKnobs, CgroupError> {
        let g = self.cpu_group(id)?;
        let read = |name: &str| crate::read(&g.cpu_dir.join(name));
        let parse = |name: &str, text: &str| {
            text.trim().parse::<i64>().map_err(|_| CgroupError::Parse {
                path: g.cpu_dir.join(name),
                content: text.to_owned(),
            })
        };
        let idle = match read("cpu.idle") {
            Ok(t) => parse("cpu.idle", &t)? == 1,
            Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                false
            }
            Err(e) => return Err(e),
        };
        let burst_of = |name: &str| match read(name) {
            Ok(t) => parse(name, &t).map(|v| v.max(0) as u64),
            Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(0)
            }
            Err(e) => Err(e),
        };
        match g.version {
            crate::Version::V1 => {
                let shares = parse("cpu.shares", &read("cpu.shares")?)?.max(2) as u64;
                let quota = parse("cpu.cfs_quota_us", &read("cpu.cfs_quota_us")?)?;
                Ok(CpuKnobs {
                    weight: shares_to_weight(shares),
                    quota_us: u64::try_from(quota).ok(),
                    period_us: parse("cpu.cfs_period_us", &read("cpu.cfs_period_us")?)? as u64,
                    burst_us: burst_of("cpu.cfs_burst_us")?,
                    idle,
                })
            }
            crate::Version::V2 => {
                let weight = parse("cpu.weight", &read("cpu.weight")?)? as u64;
                let max = read("cpu.max")?;
                let (quota, period) = parse_cpu_max(&g.cpu_dir.join("cpu.max"), &max)?;
                Ok(CpuKnobs {
                    weight,
                    quota_us: quota,
                    period_us: period,
                    burst_us: burst_of("cpu.max.burst")?,
                    idle,
                })
            }
        }
    }
}

impl CpuGroup {
    /// Writes the knobs that differ from what this handle wrote last (all of them the
    /// first time). Returns how many files were written.
    pub fn apply(&mut self, want: &CpuKnobs) -> Result<usize, CgroupError> {
        want.check(&self.id)?;
        let plan = plan_writes(self.version, self.last, want);
        // Forget what we wrote if a write fails half way: the next apply writes everything.
        self.last = None;
        for w in &plan {
            let path = self.cpu_dir.join(w.file);
            match (write_existing(&path, &w.value), w.unless) {
                (Ok(()), _) | (Err(_), Unless::Fails) => {}
                (Err(CgroupError::Io { source, .. }), Unless::Missing)
                    if source.kind() == io::ErrorKind::NotFound => {}
                (Err(e), _) => return Err(e),
            }
        }
        self.last = Some(*want);
        Ok(plan.len())
    }

    /// The knobs last written through this handle.
    pub fn last(&self) -> Option<CpuKnobs> {
        self.last
    }

    /// Re-reads the counters asked for (usage always) with `pread` on the open files.
    pub fn sample(&mut self, what: SampleWhat) -> Result<CpuSample, CgroupError> {
        let mut s = CpuSample::default();
        match self.version {
            crate::Version::V1 => {
                if let Some(f) = &self.usage {
                    let text = pread_all(f, &mut self.buf)
                        .map_err(|e| io_err("read", &self.cpu_dir.join("cpuacct.usage"), e))?;
                    s.usage_ns = parse_num(text).ok_or_else(|| parse_err(&self.cpu_dir, text))?;
                }
                if what.throttling {
                    if let Some(f) = &self.stat {
                        let text = pread_all(f, &mut self.buf)
                            .map_err(|e| io_err("read", &self.cpu_dir.join("cpu.stat"), e))?;
                        for line in text.split(|&b| b == b'\n') {
                            if let Some(v) = line.strip_prefix(b"nr_throttled ") {
                                s.nr_throttled = parse_num(v).unwrap_or(0);
                            } else if let Some(v) = line.strip_prefix(b"throttled_time ") {
                                s.throttled_us = parse_num(v).unwrap_or(0) / 1000;
                            }
                        }
                    }
                }
            }
            crate::Version::V2 => {
                if let Some(f) = &self.usage {
                    let text = pread_all(f, &mut self.buf)
                        .map_err(|e| io_err("read", &self.cpu_dir.join("cpu.stat"), e))?;
                    for line in text.split(|&b| b == b'\n') {
                        if let Some(v) = line.strip_prefix(b"usage_usec ") {
                            s.usage_ns = parse_num(v).unwrap_or(0).saturating_mul(1000);
                        } else if let Some(v) = line.strip_prefix(b"nr_throttled ") {
                            s.nr_throttled = parse_num(v).unwrap_or(0);
                        } else if let Some(v) = line.strip_prefix(b"throttled_usec ") {
                            s.throttled_us = parse_num(v).unwrap_or(0);
                        }
                    }
                }
            }
        }
        if what.pressure {
            if let Some(f) = &self.pressure {
                // A group whose PSI is off (`cgroup.pressure` 0) reads EOPNOTSUPP.
                if let Ok(text) = pread_all(f, &mut self.buf) {
                    s.pressure_some_us = parse_pressure_some_total(text);
                }
            }
        }
        Ok(s)
    }
}

impl CpuGroup {
    /// Forks the group's pids limit refused since the group was made (`max` in
    /// `pids.events`); `None` without the file (no pids controller).
    pub fn pids_refused(&mut self) -> Result<Option<u64>, CgroupError> {
        let Some(f) = &self.pids_events else {
            return Ok(None);
        };
        let text = pread_all(f, &mut self.buf)
            .map_err(|e| io_err("read", &self.cpu_dir.join("pids.events"), e))?;
        Ok(text
            .split(|&b| b == b'\n')
            .find_map(|l| l.strip_prefix(b"max "))
            .and_then(parse_num))
    }
}

/// The node-wide `/proc/pressure/cpu`, kept open.
#[derive(Debug)]
pub struct NodePressure {
    file: File,
    buf: Vec<u8>,
}

impl NodePressure {
    /// `None` when the kernel has no PSI.
    pub fn open() -> Option<NodePressure> {
        File::open("/proc/pressure/cpu")
            .ok()
            .map(|file| NodePressure {
                file,
                buf: Vec::with_capacity(256),
            })
    }

    /// PSI `some` total (µs): time at least one runnable task waited for a CPU.
    pub fn some_total_us(&mut self) -> Option<u64> {
        pread_all(&self.file, &mut self.buf)
            .ok()
            .and_then(parse_pressure_some_total)
    }
}

/// One control-file write of [`CpuGroup::apply`], in the order the kernel needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KnobWrite {
    file: &'static str,
    value: String,
    /// A failure of this write that is not one.
    unless: Unless,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unless {
    /// Every failure counts.
    Never,
    /// Best effort: the group's state is unknown and the write may be refused.
    Fails,
    /// The file may be missing when the write turns its feature off: there is nothing to
    /// turn off then (`cpu.idle` came in Linux 5.15, the burst files in 5.14).
    Missing,
}

/// The writes that take a group from `last` (what this handle wrote; `None`: unknown,
/// write everything) to `want`, following the order rules in the module docs.
fn plan_writes(version: crate::Version, last: Option<CpuKnobs>, want: &CpuKnobs) -> Vec<KnobWrite> {
    let mut out = Vec::new();
    let mut w = |file: &'static str, value: String, unless: Unless| {
        out.push(KnobWrite {
            file,
            value,
            unless,
        })
    };
    let (weight_file, weight) = match version {
        crate::Version::V1 => ("cpu.shares", crate::weight_to_shares(want.weight)),
        crate::Version::V2 => ("cpu.weight", want.weight),
    };
    let changed = |f: fn(&CpuKnobs) -> u64| last.is_none_or(|l| f(&l) != f(want));
    let was_idle = last.map(|l| l.idle);
    if want.idle {
        if was_idle != Some(true) {
            if was_idle.is_none() {
                // Unknown state: the group may be idle already, where a weight write fails.
                w("cpu.idle", "0".into(), Unless::Fails);
            }
            // Written before going idle, so leaving idle later finds it (see below).
            w(weight_file, weight.to_string(), Unless::Never);
            w("cpu.idle", "1".into(), Unless::Never);
        }
    } else {
        if was_idle != Some(false) {
            w("cpu.idle", "0".into(), Unless::Missing);
        }
        // Leaving idle resets the weight to the default, so it is rewritten then.
        if was_idle != Some(false) || changed(|k| k.weight) {
            w(weight_file, weight.to_string(), Unless::Never);
        }
    }
    let bandwidth_changed = changed(|k| k.quota_us.unwrap_or(u64::MAX))
        || changed(|k| k.period_us)
        || changed(|k| k.burst_us);
    if !bandwidth_changed {
        return out;
    }
    let old_limit = last.and_then(|l| l.quota_us).unwrap_or(u64::MAX);
    // Burst first when it fits under the old quota, else after the new quota. An unknown
    // old quota is lifted first so any burst fits.
    let burst_first = want.burst_us <= old_limit || last.is_none();
    let burst = want.burst_us.to_string();
    let (burst_file, quota_file, quota) = match version {
        crate::Version::V1 => (
            "cpu.cfs_burst_us",
            "cpu.cfs_quota_us",
            want.quota_us.map_or("-1".to_owned(), |q| q.to_string()),
        ),
        crate::Version::V2 => (
            "cpu.max.burst",
            "cpu.max",
            match want.quota_us {
                Some(q) => format!("{q} {}", want.period_us),
                None => format!("max {}", want.period_us),
            },
        ),
    };
    let burst_unless = if want.burst_us == 0 {
        Unless::Missing
    } else {
        Unless::Never
    };
    // An unchanged burst fits under the new quota: `want` passed `check`.
    let burst_changed = changed(|k| k.burst_us);
    if burst_first && burst_changed {
        if last.is_none() {
            let lifted = match version {
                crate::Version::V1 => "-1".to_owned(),
                crate::Version::V2 => format!("max {}", want.period_us),
            };
            w(quota_file, lifted, Unless::Never);
        }
        w(burst_file, burst.clone(), burst_unless);
    }
    // v2 sets the period with the quota; v1 has a file of its own.
    if version == crate::Version::V1 && changed(|k| k.period_us) {
        w(
            "cpu.cfs_period_us",
            want.period_us.to_string(),
            Unless::Never,
        );
    }
    w(quota_file, quota, Unless::Never);
    if !burst_first && burst_changed {
        w(burst_file, burst, burst_unless);
    }
    out
}

/// Whether the group in `dir` is SCHED_IDLE (`cpu.idle` reads 1); false where the file
/// is missing (kernels before 5.15) or unreadable.
pub(crate) fn is_idle(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cpu.idle")).is_ok_and(|s| s.trim() == "1")
}

/// A write to a control file that must exist (no create, unlike `fs::write`).
fn write_existing(path: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|f| f.write_at(value.as_bytes(), 0).map(drop))
        .map_err(|source| io_err("write", path, source))
}

/// Reads the whole file from offset 0 into `buf`, which keeps its length between calls
/// (no zeroing per read: the loop reads hundreds of files a second).
fn pread_all<'a>(f: &File, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
    if buf.len() < 256 {
        buf.resize(buf.capacity().max(256), 0);
    }
    loop {
        let n = f.read_at(buf, 0)?;
        if n < buf.len() {
            return Ok(&buf[..n]);
        }
        // Filled the buffer: the file may be longer, read it again whole.
        let len = buf.len() * 2;
        buf.resize(len, 0);
    }
}

fn parse_num(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

fn parse_err(dir: &Path, text: &[u8]) -> CgroupError {
    CgroupError::Parse {
        path: dir.to_owned(),
        content: String::from_utf8_lossy(text).into_owned(),
    }
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=123` -> 123.
fn parse_pressure_some_total(text: &[u8]) -> Option<u64> {
    let line = text
        .split(|&b| b == b'\n')
        .find(|l| l.starts_with(b"some "))?;
    let at = line.windows(6).position(|w| w == b"total=")?;
    parse_num(&line[at + 6..])
}

fn parse_cpu_max(path: &Path, text: &str) -> Result<(Option<u64>, u64), CgroupError> {
    let err = || CgroupError::Parse {
        path: path.to_owned(),
        content: text.to_owned(),
    };
    let mut it = text.split_whitespace();
    let quota = match it.next().ok_or_else(err)? {
        "max" => None,
        q => Some(q.parse().map_err(|_| err())?),
    };
    let period = it
        .next()
        .map_or(Ok(DEFAULT_PERIOD_US), |p| p.parse().map_err(|_| err()))?;
    Ok((quota, period))
}

/// Inverse of `weight_to_shares` (rounded), for reading v1 groups back.
fn shares_to_weight(shares: u64) -> u64 {
    ((shares * 100 + 512) / 1024).clamp(1, 10000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_total_is_read_from_the_some_line() {
        let text = b"some avg10=1.00 avg60=0.50 avg300=0.10 total=98765\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n";
        assert_eq!(parse_pressure_some_total(text), Some(98765));
        assert_eq!(parse_pressure_some_total(b"full total=5\n"), None);
    }

    #[test]
    fn cpu_max_parses_both_forms() {
        let p = Path::new("cpu.max");
        assert_eq!(parse_cpu_max(p, "max 100000\n").unwrap(), (None, 100000));
        assert_eq!(
            parse_cpu_max(p, "50000 100000\n").unwrap(),
            (Some(50000), 100000)
        );
        assert!(parse_cpu_max(p, "lots 1").is_err());
    }

    #[test]
    fn shares_round_trip_through_weights() {
        for w in [1, 50, 100, 150, 1000, 10000] {
            assert_eq!(shares_to_weight(crate::weight_to_shares(w)), w, "{w}");
        }
    }

    /// The kernel's side of the CPU files as far as the order rules go
    /// (`kernel/sched/core.c`: `tg_set_cfs_bandwidth`, `sched_group_set_idle`,
    /// `sched_group_set_shares`): what `plan_writes` has to get right on both versions.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Kernel {
        version: crate::Version,
        /// `cpu.shares` on v1, `cpu.weight` on v2.
        weight: u64,
        idle: bool,
        quota: Option<u64>,
        period: u64,
        burst: u64,
        /// Linux before 5.14/5.15: no burst files, no `cpu.idle`.
        old: bool,
    }

    const ENOENT: &str = "ENOENT";

    impl Kernel {
        fn new(version: crate::Version, k: &CpuKnobs, old: bool) -> Kernel {
            let mut kernel = Kernel {
                version,
                weight: 0,
                idle: k.idle,
                quota: k.quota_us,
                period: k.period_us,
                burst: k.burst_us,
                old,
            };
            kernel.weight = kernel.weight_of(k.weight);
            kernel
        }

        fn default_weight(&self) -> u64 {
            self.weight_of(100)
        }

        fn weight_of(&self, w: u64) -> u64 {
            match self.version {
                crate::Version::V1 => crate::weight_to_shares(w),
                crate::Version::V2 => w,
            }
        }

        /// What the group runs with; an idle group's own weight does not matter (it is
        /// reset when it leaves idle).
        fn knobs(&self) -> CpuKnobs {
            let weight = match self.version {
                crate::Version::V1 => shares_to_weight(self.weight),
                crate::Version::V2 => self.weight,
            };
            CpuKnobs {
                weight: if self.idle { 0 } else { weight },
                quota_us: self.quota,
                period_us: self.period,
                burst_us: self.burst,
                idle: self.idle,
            }
        }

        fn bandwidth(
            &mut self,
            quota: Option<u64>,
            period: u64,
            burst: u64,
        ) -> Result<(), &'static str> {
            if quota.is_some_and(|q| q < 1000 || burst > q) || !(1000..=1_000_000).contains(&period)
            {
                return Err("EINVAL");
            }
            (self.quota, self.period, self.burst) = (quota, period, burst);
            Ok(())
        }

        fn write(&mut self, file: &str, value: &str) -> Result<(), &'static str> {
            let num = |v: &str| v.parse::<i64>().map_err(|_| "EINVAL");
            let v1 = self.version == crate::Version::V1;
            match file {
                "cpu.idle" if !self.old => {
                    let idle = num(value)? == 1;
                    if idle != self.idle {
                        self.idle = idle;
                        if !idle {
                            self.weight = self.default_weight();
                        }
                    }
                    Ok(())
                }
                "cpu.shares" if v1 => self.set_weight(num(value)? as u64),
                "cpu.weight" if !v1 => self.set_weight(num(value)? as u64),
                "cpu.cfs_quota_us" if v1 => {
                    let q = u64::try_from(num(value)?).ok();
                    self.bandwidth(q, self.period, self.burst)
                }
                "cpu.cfs_period_us" if v1 => {
                    self.bandwidth(self.quota, num(value)? as u64, self.burst)
                }
                "cpu.max" if !v1 => {
                    let (q, p) = parse_cpu_max(Path::new(file), value).map_err(|_| "EINVAL")?;
                    self.bandwidth(q, p, self.burst)
                }
                "cpu.cfs_burst_us" if v1 && !self.old => {
                    self.bandwidth(self.quota, self.period, num(value)? as u64)
                }
                "cpu.max.burst" if !v1 && !self.old => {
                    self.bandwidth(self.quota, self.period, num(value)? as u64)
                }
                _ => Err(ENOENT),
            }
        }

        fn set_weight(&mut self, w: u64) -> Result<(), &'static str> {
            if self.idle {
                return Err("EINVAL");
            }
            self.weight = w;
            Ok(())
        }

        /// Runs a plan the way `apply` does; panics where `apply` would fail.
        fn run(&mut self, plan: &[KnobWrite]) {
            for (i, w) in plan.iter().enumerate() {
                match (self.write(w.file, &w.value), w.unless) {
                    (Ok(()), _) | (Err(_), Unless::Fails) | (Err(ENOENT), Unless::Missing) => {}
                    (Err(e), _) => panic!("step {i} of {plan:#?} on {self:?}: {e}"),
                }
            }
        }
    }

    /// Knob sets the controller moves between, and a few more.
    fn states() -> Vec<CpuKnobs> {
        let d = CpuKnobs::default();
        let batch = CpuKnobs {
            idle: true,
            quota_us: Some(50_000),
            burst_us: 50_000,
            ..d
        };
        vec![
            d,
            CpuKnobs { weight: 250, ..d },
            CpuKnobs { idle: true, ..d },
            // Leaves idle to its own weight, not the default the kernel resets it to.
            CpuKnobs {
                weight: 250,
                idle: true,
                ..d
            },
            batch,
            CpuKnobs {
                weight: 40,
                ..batch
            },
            CpuKnobs {
                quota_us: Some(200_000),
                burst_us: 150_000,
                idle: false,
                ..batch
            },
            CpuKnobs {
                quota_us: Some(20_000),
                period_us: 50_000,
                ..d
            },
            CpuKnobs {
                quota_us: Some(1000),
                burst_us: 1000,
                period_us: 1_000_000,
                ..batch
            },
            CpuKnobs {
                burst_us: 30_000,
                ..d
            },
        ]
    }

    fn masked(k: &CpuKnobs) -> CpuKnobs {
        CpuKnobs {
            weight: if k.idle { 0 } else { k.weight },
            ..*k
        }
    }

    #[test]
    fn every_transition_follows_the_kernels_order_rules() {
        for version in [crate::Version::V1, crate::Version::V2] {
            for from in states() {
                for to in states() {
                    // Known state: this handle wrote `from`.
                    let mut k = Kernel::new(version, &from, false);
                    let plan = plan_writes(version, Some(from), &to);
                    k.run(&plan);
                    assert_eq!(
                        k.knobs(),
                        masked(&to),
                        "{version:?} {from:?} -> {to:?}: {plan:#?}"
                    );
                    if from == to {
                        assert!(plan.is_empty(), "{plan:?}");
                    }
                    // Unknown state (a new handle on a group somebody set before).
                    let mut k = Kernel::new(version, &from, false);
                    let plan = plan_writes(version, None, &to);
                    k.run(&plan);
                    assert_eq!(
                        k.knobs(),
                        masked(&to),
                        "{version:?} ? ({from:?}) -> {to:?}: {plan:#?}"
                    );
                }
            }
        }
    }

    #[test]
    fn kernels_without_idle_or_burst_files_take_what_they_have() {
        let plain = CpuKnobs {
            weight: 300,
            quota_us: Some(80_000),
            ..CpuKnobs::default()
        };
        for version in [crate::Version::V1, crate::Version::V2] {
            for to in [CpuKnobs::default(), plain] {
                let mut k = Kernel::new(version, &CpuKnobs::default(), true);
                k.run(&plan_writes(version, None, &to));
                assert_eq!(k.knobs(), to, "{version:?}");
                k.run(&plan_writes(version, Some(to), &CpuKnobs::default()));
                assert_eq!(k.knobs(), CpuKnobs::default(), "{version:?}");
            }
            // Asking for what the kernel lacks fails rather than passing silently.
            let idle = plan_writes(
                version,
                None,
                &CpuKnobs {
                    idle: true,
                    ..plain
                },
            );
            let mut k = Kernel::new(version, &CpuKnobs::default(), true);
            let missing: Vec<_> = idle
                .iter()
                .filter(|w| k.write(w.file, &w.value) == Err(ENOENT) && w.unless == Unless::Never)
                .map(|w| w.file)
                .collect();
            assert_eq!(missing, ["cpu.idle"], "{version:?}");
        }
    }

    #[test]
    fn only_changed_knobs_are_written() {
        let d = CpuKnobs::default();
        let files = |v, from, to: CpuKnobs| -> Vec<&str> {
            plan_writes(v, Some(from), &to)
                .iter()
                .map(|w| w.file)
                .collect()
        };
        let v1 = crate::Version::V1;
        let v2 = crate::Version::V2;
        assert_eq!(files(v1, d, CpuKnobs { weight: 7, ..d }), ["cpu.shares"]);
        assert_eq!(files(v2, d, CpuKnobs { weight: 7, ..d }), ["cpu.weight"]);
        let q = CpuKnobs {
            quota_us: Some(30_000),
            ..d
        };
        assert_eq!(files(v1, d, q), ["cpu.cfs_quota_us"]);
        assert_eq!(files(v2, d, q), ["cpu.max"]);
        let qb = CpuKnobs {
            burst_us: 30_000,
            ..q
        };
        // A burst above the old quota waits for the new one; one below goes first.
        assert_eq!(files(v1, d, qb), ["cpu.cfs_burst_us", "cpu.cfs_quota_us"]);
        let wide = CpuKnobs {
            quota_us: Some(60_000),
            burst_us: 50_000,
            ..d
        };
        assert_eq!(files(v1, q, wide), ["cpu.cfs_quota_us", "cpu.cfs_burst_us"]);
        assert_eq!(files(v2, wide, q), ["cpu.max.burst", "cpu.max"]);
        // Going idle writes the weight first; a weight change while idle waits for the
        // way out.
        let idle = CpuKnobs { idle: true, ..d };
        assert_eq!(files(v2, d, idle), ["cpu.weight", "cpu.idle"]);
        assert!(files(v2, idle, CpuKnobs { weight: 9, ..idle }).is_empty());
        assert_eq!(files(v2, idle, d), ["cpu.idle", "cpu.weight"]);
        assert_eq!(
            plan_writes(v2, None, &d)
                .iter()
                .map(|w| (w.file, w.value.as_str()))
                .collect::<Vec<_>>(),
            [
                ("cpu.idle", "0"),
                ("cpu.weight", "100"),
                ("cpu.max", "max 100000"),
                ("cpu.max.burst", "0"),
                ("cpu.max", "max 100000"),
            ]
        );
    }

    #[test]
    fn knobs_are_checked() {
        let ok = CpuKnobs {
            quota_us: Some(50_000),
            burst_us: 50_000,
            ..CpuKnobs::default()
        };
        assert!(ok.check("a").is_ok());
        for bad in [
            CpuKnobs {
                burst_us: 60_000,
                ..ok
            },
            CpuKnobs { weight: 0, ..ok },
            CpuKnobs {
                quota_us: Some(10),
                burst_us: 0,
                ..ok
            },
            CpuKnobs {
                period_us: 10,
                ..ok
            },
        ] {
            assert!(bad.check("a").is_err(), "{bad:?}");
        }
    }
}
