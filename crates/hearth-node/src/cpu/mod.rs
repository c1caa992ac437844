//! The node's CPU controller: one thread that samples every running workspace's CPU
//! counters at `cpu_interval` (10 Hz) and writes the knobs its policy (`policy.rs`)
//! decides, only when they change.
//!
//! Cost: counters are re-read with `pread` on files kept open; a workspace's throttling
//! counter is read only while it has a quota and its PSI only when the node's PSI moved
//! (nobody waited otherwise): every tick while batch, once a second while its budget
//! refills, else every 10 s for the view. A
//! workspace is sampled only as often as its class could change ([`Policy::sample_gap`]:
//! a batch one or one near the end of its budget every tick, one with budget to spare
//! once a second), so with one busy workspace among 200 a tick reads ~21 groups, not 200.
//! While the parent group of all workspaces used less than the light rate since the last
//! tick, no workspace can be above it, so none is read (at most 1 s in a row; the budgets
//! catch up from the longer interval).

pub(crate) mod policy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use hearth_cgroups::{Cgroups, CpuGroup, CpuKnobs, NodePressure, SampleWhat};

use crate::{CpuClass, CpuControl, CpuControllerStats, CpuView, Limits, WorkspaceId};
use policy::{Observation, Policy, WsLimits, WsState};

/// How often the PSI of a workspace with its budget whole is read, for `hearth inspect`
/// (each read costs several times a usage read).
const VIEW_PRESSURE_EVERY: Duration = Duration::from_secs(10);

/// Longest run of ticks that skip reading workspaces on a quiet node.
const MAX_SKIP: u32 = 10;

/// Owned by `LocalNode`; stops its thread when dropped.
pub(crate) struct CpuController {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    cgroups: Arc<Cgroups>,
    policy: Policy,
    interval: Duration,
    epoch: Instant,
    ws: Mutex<HashMap<WorkspaceId, Entry>>,
    stop: Mutex<bool>,
    wake: Condvar,
    ticks: AtomicU64,
    cpu_ns: AtomicU64,
    writes: AtomicU64,
}

struct Entry {
    st: WsState,
    /// Opened by the loop on the first tick after registration.
    group: Option<CpuGroup>,
    knobs: CpuKnobs,
    /// Set when opening or writing failed, so the log says it once.
    failed: bool,
    /// Not sampled before this (loop time); see [`Policy::sample_gap`].
    due: Duration,
    /// The node's PSI total at the last sample: unchanged since, nobody waited.
    node_pressure: Option<u64>,
    /// When the group's PSI was last read.
    pressure_at: Option<Duration>,
}

impl CpuController {
    /// Starts the loop; `None` for [`CpuControl::Off`] (nothing to do: the cgroup keeps
    /// the weight it was made with).
    pub(crate) fn start(
        cgroups: Arc<Cgroups>,
        control: CpuControl,
        interval: Duration,
    ) -> Option<CpuController> {
        if control == CpuControl::Off {
            return None;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let interval = match control {
            CpuControl::Gitpod => policy::GITPOD_PERIOD,
            _ => interval.max(Duration::from_millis(1)),
        };
        let shared = Arc::new(Shared {
            cgroups,
            policy: Policy::new(control, cores),
            interval,
            epoch: Instant::now(),
            ws: Mutex::new(HashMap::new()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            ticks: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hearth-cpu".into())
            .spawn(move || s.run())
            .map_err(|e| tracing::error!("cannot start the cpu controller: {e}"))
            .ok()?;
        tracing::info!(policy = %control, interval_ms = interval.as_millis() as u64, cores, "cpu controller started");
        Some(CpuController {
            shared,
            thread: Some(thread),
        })
    }

    /// Puts a running workspace under control, or updates its limits.
    pub(crate) fn register(&self, id: &WorkspaceId, limits: &Limits) {
        let wl = WsLimits {
            weight: limits.cpu_weight,
            cpus_milli: limits.cpus_milli,
        };
        let mut ws = lock(&self.shared.ws);
        match ws.get_mut(id) {
            Some(e) => {
                e.st.limits = wl;
                // New limits may mean new knobs: at the next tick.
                e.due = Duration::ZERO;
            }
            None => {
                let s = &self.shared;
                let st = WsState::new(wl, s.policy.control, &s.policy.params, s.now());
                ws.insert(
                    id.clone(),
                    Entry {
                        knobs: s.policy.knobs(&st),
                        st,
                        group: None,
                        failed: false,
                        due: Duration::ZERO,
                        node_pressure: None,
                        pressure_at: None,
                    },
                );
            }
        }
    }

    /// An OOM kill happened in the workspace (the node's kernel-log watcher saw it).
    pub(crate) fn oom_killed(&self, id: &WorkspaceId) {
        let s = &self.shared;
        if let Some(e) = lock(&s.ws).get_mut(id) {
            s.policy.hit_limit(&mut e.st, s.now());
            e.due = Duration::ZERO;
        }
    }

    /// Forgets a workspace (stopped or removed); its open files are closed.
    pub(crate) fn unregister(&self, id: &WorkspaceId) {
        lock(&self.shared.ws).remove(id);
    }

    pub(crate) fn view(&self, id: &WorkspaceId) -> Option<CpuView> {
        let ws = lock(&self.shared.ws);
        ws.get(id).map(|e| self.shared.view(e))
    }

    pub(crate) fn views(&self) -> Vec<(WorkspaceId, CpuView)> {
        let ws = lock(&self.shared.ws);
        let mut v: Vec<_> = ws
            .iter()
            .map(|(id, e)| (id.clone(), self.shared.view(e)))
            .collect();
        v.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        v
    }

    pub(crate) fn stats(&self) -> CpuControllerStats {
        let s = &self.shared;
        CpuControllerStats {
            policy: s.policy.control,
            interval_ms: s.interval.as_millis() as u64,
            ticks: s.ticks.load(Ordering::Relaxed),
            cpu_ns: s.cpu_ns.load(Ordering::Relaxed),
            workspaces: lock(&s.ws).len(),
            writes: s.writes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for CpuController {
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CPU time this thread used, user + system.
fn thread_cpu_ns() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0, |u| {
        let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
        (us(u.user_time()) + us(u.system_time())) * 1000
    })
}

/// What the loop keeps between ticks about the node as a whole.
struct NodeGate {
    parent: Option<CpuGroup>,
    parent_usage: Option<(Duration, u64)>,
    pressure: Option<NodePressure>,
    skipped: u32,
}

impl Shared {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn run(self: Arc<Self>) {
        let mut gate = NodeGate {
            parent: self.cgroups.cpu_parent_group().ok(),
            parent_usage: None,
            pressure: NodePressure::open(),
            skipped: 0,
        };
        let mut next = Instant::now();
        loop {
            next += self.interval;
            {
                let mut stop = lock(&self.stop);
                loop {
                    if *stop {
                        return;
                    }
                    let now = Instant::now();
                    if now >= next {
                        break;
                    }
                    stop = self
                        .wake
                        .wait_timeout(stop, next - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
            self.tick(&mut gate);
            self.ticks.fetch_add(1, Ordering::Relaxed);
            self.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
            // Late (a stalled host): carry on from now rather than tick in a burst.
            let now = Instant::now();
            if next + self.interval < now {
                next = now;
            }
        }
    }

    fn tick(&self, gate: &mut NodeGate) {
        let now = self.now();
        let busy = self.parent_busy(gate, now);
        let mut ws = lock(&self.ws);
        let has_new = ws.values().any(|e| e.group.is_none() && !e.failed);
        if !busy && !has_new && gate.skipped < MAX_SKIP {
            gate.skipped += 1;
            return;
        }
        gate.skipped = 0;
        let pressure_total = gate.pressure.as_mut().and_then(NodePressure::some_total_us);
        let mut writes = 0;
        for (id, e) in ws.iter_mut() {
            if e.group.is_none() {
                if e.failed {
                    continue;
                }
                match self.cgroups.cpu_group(id) {
                    Ok(g) => e.group = Some(g),
                    Err(err) => {
                        tracing::warn!(%id, "cpu controller cannot open the workspace's cgroup: {err}");
                        e.failed = true;
                        continue;
                    }
                }
            }
            let Some(group) = e.group.as_mut() else {
                continue;
            };
            // Half a tick early: ticks jitter, and a gap of n ticks should not become n + 1.
            if now + self.interval / 2 < e.due {
                continue;
            }
            // Did anybody on the node wait for a CPU since this workspace's last sample?
            let node_waited = pressure_total.is_none() || pressure_total != e.node_pressure;
            e.node_pressure = pressure_total;
            // PSI decides a batch workspace's promotion and an interactive one's refill
            // (waiting is not quiet); with its budget whole it is only for the view.
            let pressure_every = match e.st.class {
                CpuClass::Batch => Duration::ZERO,
                _ if e.st.budget_ns < self.policy.params.budget_ns => policy::MAX_GAP,
                _ => VIEW_PRESSURE_EVERY,
            };
            let what = SampleWhat {
                throttling: e.knobs.quota_us.is_some() || e.st.throttled_us > 0,
                pressure: node_waited
                    && e.pressure_at
                        .is_none_or(|at| now.saturating_sub(at) >= pressure_every),
            };
            let sample = match group.sample(what) {
                Ok(s) => s,
                Err(err) => {
                    // The group went away under us (a stop racing the tick); the stop
                    // unregisters it.
                    tracing::debug!(%id, "cpu sample failed: {err}");
                    continue;
                }
            };
            // A batch workspace may be a fork bomb at its pids limit (one more read, for
            // the few that are batch).
            let pids_refused = if e.st.class == CpuClass::Batch {
                group.pids_refused().unwrap_or(None)
            } else {
                None
            };
            let obs = Observation {
                at: now,
                usage_ns: sample.usage_ns,
                throttled_us: if what.throttling {
                    sample.throttled_us
                } else {
                    e.st.throttled_us
                },
                pressure_us: sample.pressure_some_us,
                nobody_waited: !node_waited,
                pids_refused,
            };
            if sample.pressure_some_us.is_some() {
                e.pressure_at = Some(now);
            }
            let want = self.policy.observe(&mut e.st, obs);
            e.due = now + self.policy.sample_gap(&e.st);
            if group.last() != Some(want) {
                match group.apply(&want) {
                    Ok(n) => {
                        writes += n as u64;
                        if want != e.knobs {
                            tracing::debug!(%id, class = e.st.class.as_str(), ?want, "cpu knobs changed");
                        }
                        e.knobs = want;
                        e.failed = false;
                    }
                    Err(err) if !e.failed => {
                        tracing::warn!(%id, "cpu controller cannot write the workspace's knobs: {err}");
                        e.failed = true;
                    }
                    Err(_) => {}
                }
            }
        }
        self.writes.fetch_add(writes, Ordering::Relaxed);
    }

    /// Whether the workspaces together used more than the light rate since the last tick
    /// (or that cannot be told).
    fn parent_busy(&self, gate: &mut NodeGate, now: Duration) -> bool {
        let Some(parent) = gate.parent.as_mut() else {
            return true;
        };
        let nothing = SampleWhat {
            throttling: false,
            pressure: false,
        };
        let Ok(s) = parent.sample(nothing) else {
            return true;
        };
        let before = gate.parent_usage.replace((now, s.usage_ns));
        let Some((at, usage)) = before else {
            return true;
        };
        let dt_ns = now.saturating_sub(at).as_nanos() as u64;
        let light_ns = self.policy.params.light_milli * dt_ns / 1000;
        s.usage_ns.saturating_sub(usage) > light_ns
    }

    fn view(&self, e: &Entry) -> CpuView {
        let k = &e.knobs;
        let ago = self.now().saturating_sub(e.st.since);
        let since = SystemTime::now()
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        CpuView {
            class: e.st.class,
            weight: k.weight,
            quota_millicores: k.quota_us.map(|q| q * 1000 / k.period_us.max(1)),
            idle: k.idle,
            usage_millicores: e.st.usage_milli.round().max(0.0) as u64,
            budget_ms: e.st.budget_ns / 1_000_000,
            throttled_us_total: e.st.throttled_us,
            pressure_some_avg10: e.st.pressure_pct.map(|p| (p * 100.0).round() / 100.0),
            since: time::OffsetDateTime::from(since)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        }
    }
}
