//! What each `--cpu-control` policy decides for one workspace from its counters. Pure:
//! no files, no clock; the loop (`cpu/mod.rs`) feeds it samples with their times, and the
//! tests feed it synthetic ones with simulated time.
//!
//! The hearth policy is a CPU budget per workspace (a leaky bucket in CPU-ns):
//! - every ns of CPU used above the light rate drains it; while the workspace is quiet
//!   (below the light rate and nothing of it waiting for a CPU) it refills;
//! - with budget left the workspace is `interactive`: its weight, no quota, not idle, so
//!   a burst from idle gets the node's free CPU at once (nothing has to react first);
//! - once the budget is gone it is `batch`: `cpu.idle=1`. A SCHED_IDLE group still gets
//!   every cycle nobody else wants, so demotion costs nothing on a quiet node, and on a
//!   busy one it keeps neighbours' latency at the no-hog level (cpu.idle measured better
//!   than 10x shares or any quota). Two batch hogs are equal SCHED_IDLE entities, so they
//!   share evenly at once. Its `--cpus` (if any) applies as a CFS quota with one period
//!   of burst: the class limit over the long run;
//! - it is promoted back when the budget has refilled to `promote_at`. Refill needs quiet,
//!   not merely low use: a batch workspace starved by busy neighbours uses little CPU but
//!   waits (PSI, throttling), and must not bounce back and forth;
//! - a workspace thrashing at its memory or pids limit (OOM kills or refused forks in a
//!   row, [`THRASH_KILLS`] within [`THRASH_HOLD`] of each other) is batch with at most
//!   [`THRASH_MILLI`] of a core until [`THRASH_HOLD`] passes without one. A fork bomb
//!   at its pids limit spends its CPU in the kernel's fork and exit paths, which this
//!   kernel (PREEMPT_NONE) does not preempt for a neighbour's wake-up; every OOM kill stalls a CPU in the kernel (on
//!   hosts with a serial console, its `Killed process` line alone takes ~4 ms with the
//!   CPU's interrupts off), and a memory bomb restarting at its limit causes 20 kills a
//!   second; held to a tenth of a core it causes about 2. The slowdown is what v2's
//!   `memory.high` does to a group above it, for v1 too.

use std::time::Duration;

use hearth_cgroups::{CpuKnobs, DEFAULT_PERIOD_US};

use crate::{CpuClass, CpuControl};

/// Counters of one workspace at one moment (cumulative, as the kernel keeps them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// Monotonic time of the sample.
    pub at: Duration,
    pub usage_ns: u64,
    pub throttled_us: u64,
    /// PSI `some` total of the group, µs; `None` when not read this time or not
    /// available (the last reading's share of waiting then holds).
    pub pressure_us: Option<u64>,
    /// The node's PSI did not move since the last sample: no task anywhere waited.
    pub nobody_waited: bool,
    /// Forks the pids limit refused so far; `None` when not read this time.
    pub pids_refused: Option<u64>,
}

/// The limits of a workspace the policy works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsLimits {
    pub weight: u64,
    /// 0 = no class limit.
    pub cpus_milli: u64,
}

/// Tuning of the hearth policy; [`Params::for_cores`] gives the defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Use below this rate is light: it neither drains the budget nor keeps it from
    /// refilling.
    pub light_milli: u64,
    /// Budget when full: CPU-ns above the light rate a workspace may use before demotion.
    pub budget_ns: u64,
    /// Refill rate while quiet, thousandths of a core.
    pub refill_milli: u64,
    /// Budget at which a batch workspace is promoted again.
    pub promote_ns: u64,
    /// A workspace waiting for a CPU more than this share of the time is not quiet.
    pub quiet_pressure: f64,
}

impl Params {
    /// A workspace may saturate every core for about 3 s, i.e. `cores x 3` CPU-s (an
    /// editor's indexing, a test run, an incremental build stay interactive; a full
    /// build is demoted, which costs it nothing while the node has idle cores). A quiet
    /// workspace refills at half a core: half the budget is back after `cores x 3` s.
    pub fn for_cores(cores: u32) -> Params {
        let cores = u64::from(cores.max(1));
        let budget_ns = cores * 3_000_000_000;
        Params {
            light_milli: 250,
            budget_ns,
            refill_milli: 500,
            promote_ns: budget_ns / 2,
            quiet_pressure: 0.10,
        }
    }
}

/// Gitpod ws-daemon's budgets, scaled to this node. Gitpod ran "6 cores for 5 min of
/// CPU time, then 4, then 2" on large nodes; here the first bucket is every core of this
/// node, and the later ones keep Gitpod's ratios (2/3 and 1/3 of the cores, at least a
/// tenth of a core). CPU time is counted from when the workspace was first seen; each
/// bucket lasts 5 min of CPU at its own limit, the last one forever.
pub fn gitpod_buckets(cores: u32) -> [(u64, u64); 3] {
    let all = u64::from(cores.max(1)) * 1000;
    let per_limit = |milli: u64| milli * 300 * 1_000_000; // 5 min at `milli` cores, in ns
    let second = (all * 2 / 3).max(100);
    let third = (all / 3).max(100);
    [
        (all, per_limit(all)),
        (second, per_limit(second)),
        (third, u64::MAX),
    ]
}

/// Limit hits in a row (an OOM kill, a sample with forks refused), each within
/// [`THRASH_HOLD`] of the last, that make a workspace thrashing: one kill (a compiler
/// too big for the limit) is not.
pub const THRASH_KILLS: u32 = 2;
/// How long a thrashing workspace stays held after its last OOM kill.
pub const THRASH_HOLD: Duration = Duration::from_secs(10);
/// The CPU a thrashing workspace is held to, thousandths of a core.
pub const THRASH_MILLI: u64 = 100;

/// Gitpod's control period.
pub const GITPOD_PERIOD: Duration = Duration::from_secs(15);

/// Per-workspace state the policy keeps between samples.
#[derive(Debug, Clone)]
pub struct WsState {
    pub limits: WsLimits,
    pub class: CpuClass,
    pub budget_ns: u64,
    last: Option<Observation>,
    /// Recent use (~1 s time constant), thousandths of a core.
    pub usage_milli: f64,
    /// Recent waiting (~10 s time constant), percent; `None` until PSI was read.
    pub pressure_pct: Option<f64>,
    /// The last PSI reading, and the share of time waiting it gave.
    last_pressure: Option<(Duration, u64)>,
    wait_share: f64,
    pub throttled_us: u64,
    /// CPU used since first seen (Gitpod's budget counter).
    pub used_ns: u64,
    /// Limit hits in the current run (see [`THRASH_KILLS`]) and when the last was.
    limit_streak: u32,
    last_hit: Option<Duration>,
    /// The last reading of forks refused at the pids limit.
    pids_refused: Option<u64>,
    /// Held to [`THRASH_MILLI`] for limit hits in a row.
    pub thrashing: bool,
    /// When the class last changed (monotonic).
    pub since: Duration,
}

impl WsState {
    pub fn new(limits: WsLimits, control: CpuControl, params: &Params, at: Duration) -> Self {
        WsState {
            limits,
            class: match control {
                CpuControl::Hearth => CpuClass::Interactive,
                CpuControl::Off => CpuClass::Unmanaged,
                CpuControl::Static | CpuControl::Gitpod => CpuClass::Limited,
            },
            budget_ns: params.budget_ns,
            last: None,
            usage_milli: 0.0,
            pressure_pct: None,
            last_pressure: None,
            wait_share: 0.0,
            throttled_us: 0,
            used_ns: 0,
            limit_streak: 0,
            last_hit: None,
            pids_refused: None,
            thrashing: false,
            since: at,
        }
    }
}

/// One policy over all workspaces of a node.
#[derive(Debug, Clone)]
pub struct Policy {
    pub control: CpuControl,
    pub params: Params,
    pub cores: u32,
}

impl Policy {
    pub fn new(control: CpuControl, cores: u32) -> Policy {
        Policy {
            control,
            params: Params::for_cores(cores),
            cores: cores.max(1),
        }
    }

    /// Takes a sample and returns the knobs the workspace should have now. The first
    /// sample of a workspace only sets the starting point.
    pub fn observe(&self, st: &mut WsState, obs: Observation) -> CpuKnobs {
        if let Some(last) = st.last {
            let dt = obs.at.saturating_sub(last.at);
            if !dt.is_zero() {
                self.account(st, &last, &obs, dt);
            }
        }
        st.last = Some(obs);
        if let Some(total) = obs.pressure_us {
            st.last_pressure = Some((obs.at, total));
        }
        st.throttled_us = obs.throttled_us;
        if let Some(n) = obs.pids_refused {
            if st.pids_refused.is_some_and(|before| n > before) {
                self.hit_limit(st, obs.at);
            }
            st.pids_refused = Some(n);
        }
        st.thrashing = self.control == CpuControl::Hearth
            && st.limit_streak >= THRASH_KILLS
            && st
                .last_hit
                .is_some_and(|t| obs.at.saturating_sub(t) < THRASH_HOLD);
        let class = self.classify(st);
        if class != st.class {
            st.class = class;
            st.since = obs.at;
        }
        self.knobs(st)
    }

    /// Notes that the workspace hit its memory or pids limit at `at` (the loop's clock):
    /// an OOM kill, or forks refused since the last sample. The next sample decides what
    /// it means.
    pub fn hit_limit(&self, st: &mut WsState, at: Duration) {
        st.limit_streak = match st.last_hit {
            Some(t) if at.saturating_sub(t) < THRASH_HOLD => st.limit_streak.saturating_add(1),
            _ => 1,
        };
        st.last_hit = Some(at);
    }

    fn account(&self, st: &mut WsState, last: &Observation, obs: &Observation, dt: Duration) {
        let dt_ns = dt.as_nanos().min(u128::from(u64::MAX)) as u64;
        let used = obs.usage_ns.saturating_sub(last.usage_ns);
        st.used_ns = st.used_ns.saturating_add(used);
        let rate_milli = used as f64 * 1000.0 / dt_ns as f64;
        let ewma = |old: f64, new: f64, tau: f64| {
            let a = 1.0 - (-dt.as_secs_f64() / tau).exp();
            old + a * (new - old)
        };
        st.usage_milli = ewma(st.usage_milli, rate_milli, 1.0);
        // Waiting for a CPU: PSI since its last reading (which may be ticks ago), or
        // throttled by the quota.
        if obs.nobody_waited {
            st.wait_share = 0.0;
        } else if let (Some(total), Some((at, before))) = (obs.pressure_us, st.last_pressure) {
            let span_us = obs.at.saturating_sub(at).as_micros() as f64;
            if span_us > 0.0 {
                st.wait_share = (total.saturating_sub(before) as f64 / span_us).min(1.0);
            }
        }
        let wait_share = st.wait_share;
        let throttled = obs.throttled_us > last.throttled_us;
        if st.last_pressure.is_some() {
            st.pressure_pct = Some(ewma(
                st.pressure_pct.unwrap_or(0.0),
                wait_share * 100.0,
                10.0,
            ));
        }
        let p = &self.params;
        let light_ns = (u128::from(p.light_milli) * u128::from(dt_ns) / 1000) as u64;
        if used > light_ns {
            st.budget_ns = st.budget_ns.saturating_sub(used - light_ns);
        } else if wait_share <= p.quiet_pressure && !throttled {
            let refill = (u128::from(p.refill_milli) * u128::from(dt_ns) / 1000) as u64;
            st.budget_ns = st.budget_ns.saturating_add(refill).min(p.budget_ns);
        }
    }

    fn classify(&self, st: &WsState) -> CpuClass {
        match self.control {
            CpuControl::Off => CpuClass::Unmanaged,
            CpuControl::Static | CpuControl::Gitpod => CpuClass::Limited,
            CpuControl::Hearth => match st.class {
                _ if st.thrashing => CpuClass::Batch,
                CpuClass::Batch if st.budget_ns >= self.params.promote_ns => CpuClass::Interactive,
                CpuClass::Batch => CpuClass::Batch,
                _ if st.budget_ns == 0 => CpuClass::Batch,
                _ => CpuClass::Interactive,
            },
        }
    }

    /// The knobs for the workspace's current class.
    pub fn knobs(&self, st: &WsState) -> CpuKnobs {
        let base = CpuKnobs {
            weight: st.limits.weight,
            ..CpuKnobs::default()
        };
        let quota = |milli: u64| quota_us(milli, DEFAULT_PERIOD_US);
        match self.control {
            CpuControl::Off => base,
            CpuControl::Hearth => match st.class {
                CpuClass::Batch => {
                    let limit = match (st.limits.cpus_milli, st.thrashing) {
                        (0, true) => THRASH_MILLI,
                        (m, true) => m.min(THRASH_MILLI),
                        (m, false) => m,
                    };
                    let q = (limit > 0).then(|| quota(limit));
                    CpuKnobs {
                        idle: true,
                        quota_us: q,
                        burst_us: q.unwrap_or(0),
                        ..base
                    }
                }
                _ => base,
            },
            CpuControl::Static => CpuKnobs {
                quota_us: Some(quota(match st.limits.cpus_milli {
                    0 => 1000,
                    m => m,
                })),
                ..base
            },
            CpuControl::Gitpod => {
                let mut spent = st.used_ns;
                let mut limit = 0;
                for (milli, budget) in gitpod_buckets(self.cores) {
                    limit = milli;
                    if spent < budget {
                        break;
                    }
                    spent -= budget;
                }
                CpuKnobs {
                    quota_us: Some(quota(limit)),
                    ..base
                }
            }
        }
    }
}

/// Longest time the loop leaves a workspace unsampled: how stale its recent use may be
/// in `hearth inspect` and `/metrics`.
pub const MAX_GAP: Duration = Duration::from_secs(1);

impl Policy {
    /// How long the loop may leave the workspace unsampled without its demotion coming
    /// later than with a sample every tick: an interactive workspace cannot use up its
    /// budget faster than with every core busy. A batch one is sampled every tick: a
    /// sample spanning its last busy ticks and its first quiet ones would not refill for
    /// the quiet part, so its promotion would come late. Other policies' knobs change only
    /// with the limits (the loop samples at once then), gitpod's on its own 15 s tick.
    pub fn sample_gap(&self, st: &WsState) -> Duration {
        let p = &self.params;
        let ns = match (self.control, st.class) {
            (CpuControl::Hearth, CpuClass::Batch) | (CpuControl::Gitpod, _) => 0,
            (CpuControl::Hearth, _) => {
                let drain = (u64::from(self.cores) * 1000)
                    .saturating_sub(p.light_milli)
                    .max(1);
                u128::from(st.budget_ns) * 1000 / u128::from(drain)
            }
            (CpuControl::Off | CpuControl::Static, _) => u128::MAX,
        };
        Duration::from_nanos(ns.min(MAX_GAP.as_nanos()) as u64)
    }
}

/// Quota for `milli` thousandths of a core per `period_us` (at least the kernel's 1 ms).
pub fn quota_us(milli: u64, period_us: u64) -> u64 {
    (milli * period_us / 1000).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORES: u32 = 2;
    const TICK: Duration = Duration::from_millis(100);
    const LIMITS: WsLimits = WsLimits {
        weight: 100,
        cpus_milli: 0,
    };

    /// A simulated workspace: cumulative counters advanced per tick.
    struct Sim {
        policy: Policy,
        st: WsState,
        now: Duration,
        usage_ns: u64,
        pressure_us: u64,
        throttled_us: u64,
        pids_refused: Option<u64>,
        knobs: CpuKnobs,
    }

    impl Sim {
        fn new(control: CpuControl, limits: WsLimits) -> Sim {
            let policy = Policy::new(control, CORES);
            let mut st = WsState::new(limits, control, &policy.params, Duration::ZERO);
            let knobs = policy.observe(&mut st, Observation::default());
            Sim {
                policy,
                st,
                now: Duration::ZERO,
                usage_ns: 0,
                pressure_us: 0,
                throttled_us: 0,
                pids_refused: None,
                knobs,
            }
        }

        /// Runs `ticks` ticks using `cores_milli` of CPU and waiting `wait_pct` of the time.
        fn run(&mut self, ticks: u32, cores_milli: u64, wait_pct: u64) {
            for _ in 0..ticks {
                self.now += TICK;
                self.usage_ns += cores_milli * TICK.as_nanos() as u64 / 1000;
                self.pressure_us += wait_pct * TICK.as_micros() as u64 / 100;
                self.knobs = self.policy.observe(
                    &mut self.st,
                    Observation {
                        at: self.now,
                        usage_ns: self.usage_ns,
                        throttled_us: self.throttled_us,
                        pressure_us: Some(self.pressure_us),
                        nobody_waited: false,
                        pids_refused: self.pids_refused,
                    },
                );
            }
        }

        /// Ticks until the class becomes `class`, at most `max`.
        fn ticks_until(&mut self, class: CpuClass, max: u32, milli: u64, wait: u64) -> u32 {
            for n in 1..=max {
                self.run(1, milli, wait);
                if self.st.class == class {
                    return n;
                }
            }
            panic!("still {:?} after {max} ticks", self.st.class);
        }
    }

    #[test]
    fn a_light_workspace_stays_interactive_with_no_quota() {
        let mut s = Sim::new(CpuControl::Hearth, LIMITS);
        // Typing, an LSP: well under the light rate, for ten minutes.
        s.run(6000, 150, 0);
        assert_eq!(s.st.class, CpuClass::Interactive);
        assert_eq!(s.knobs, CpuKnobs::default());
        assert_eq!(s.st.budget_ns, s.policy.params.budget_ns);
    }

    #[test]
    fn short_bursts_stay_interactive() {
        let mut s = Sim::new(CpuControl::Hearth, LIMITS);
        // A 1 s test run on both cores every 20 s.
        for _ in 0..30 {
            s.run(10, 2000, 0);
            assert_eq!(s.st.class, CpuClass::Interactive);
            s.run(190, 20, 0);
        }
    }

    #[test]
    fn a_hog_is_demoted_to_idle_in_bounded_time_and_recovers_when_quiet() {
        let mut s = Sim::new(CpuControl::Hearth, LIMITS);
        // Both cores saturated: budget (6 CPU-s) / drain (1.75 cores) = 3.43 s.
        let n = s.ticks_until(CpuClass::Batch, 1000, 2000, 0);
        assert!((34..=35).contains(&n), "demoted after {n} ticks");
        assert!(s.knobs.idle);
        assert_eq!(s.knobs.quota_us, None, "no class limit, no quota");
        // Keeps hogging on a quiet node (gets both cores at SCHED_IDLE): stays batch.
        s.run(600, 2000, 0);
        assert_eq!(s.st.class, CpuClass::Batch);
        // Goes quiet: half the budget back at half a core = 6 s.
        let n = s.ticks_until(CpuClass::Interactive, 1000, 0, 0);
        assert_eq!(n, 60, "promoted after {n} ticks");
        assert_eq!(s.knobs, CpuKnobs::default());
    }

    #[test]
    fn a_starved_batch_workspace_is_not_promoted_by_its_low_use() {
        let mut s = Sim::new(CpuControl::Hearth, LIMITS);
        s.ticks_until(CpuClass::Batch, 1000, 2000, 0);
        // Busy neighbours: it gets 5 millicores but its tasks wait all the time.
        s.run(3000, 5, 100);
        assert_eq!(s.st.class, CpuClass::Batch);
        assert!(s.st.pressure_pct.unwrap() > 90.0);
        // ... and throttling counts as waiting too.
        s.throttled_us += 1;
        s.run(1, 0, 0);
        assert_eq!(s.st.budget_ns, 0);
    }

    #[test]
    fn the_class_limit_holds_as_quota_with_burst_once_demoted() {
        let mut s = Sim::new(
            CpuControl::Hearth,
            WsLimits {
                weight: 100,
                cpus_milli: 500,
            },
        );
        // A burst may use the whole node first: no quota while interactive.
        s.run(10, 2000, 0);
        assert_eq!(s.knobs.quota_us, None);
        s.ticks_until(CpuClass::Batch, 1000, 2000, 0);
        assert_eq!(
            (
                s.knobs.quota_us,
                s.knobs.period_us,
                s.knobs.burst_us,
                s.knobs.idle
            ),
            (Some(50_000), 100_000, 50_000, true)
        );
    }

    #[test]
    fn two_equal_hogs_end_in_the_same_class_at_the_same_time() {
        let mut a = Sim::new(CpuControl::Hearth, LIMITS);
        let mut b = Sim::new(CpuControl::Hearth, LIMITS);
        // Sharing two cores evenly: one core each.
        let na = a.ticks_until(CpuClass::Batch, 1000, 1000, 50);
        let nb = b.ticks_until(CpuClass::Batch, 1000, 1000, 50);
        assert_eq!(na, nb);
        assert_eq!(a.knobs, b.knobs);
    }

    /// Two 2-thread hogs on a 2-core node, B joining `lag` ticks after A, with the
    /// kernel's split as the classes make it: equal classes share evenly (and their
    /// tasks wait), SCHED_IDLE (batch) yields all but a trickle to the other class. Returns
    /// B's share of each second after it joined, and both final classes.
    fn late_joiner(lag: u32, secs: u32) -> (Vec<f64>, CpuClass, CpuClass) {
        let mut a = Sim::new(CpuControl::Hearth, LIMITS);
        let mut b = Sim::new(CpuControl::Hearth, LIMITS);
        a.run(lag, 2000, 0);
        b.run(lag, 0, 0);
        let mut shares = Vec::new();
        for _ in 0..secs {
            let (mut ua, mut ub) = (0, 0);
            for _ in 0..10 {
                let (ma, mb, wa, wb) = match (a.st.class, b.st.class) {
                    (x, y) if x == y => (1000, 1000, 100, 100),
                    (CpuClass::Batch, _) => (5, 1995, 100, 0),
                    _ => (1995, 5, 0, 100),
                };
                a.run(1, ma, wa);
                b.run(1, mb, wb);
                (ua, ub) = (ua + ma, ub + mb);
            }
            shares.push(ub as f64 / (ua + ub) as f64);
        }
        (shares, a.st.class, b.st.class)
    }

    #[test]
    fn a_late_joiner_and_an_old_hog_share_evenly_once_its_burst_budget_is_spent() {
        // A demoted before B joins (the bench's 5 s lag), and still interactive (2 s).
        for (lag, within) in [(50, 4), (20, 6)] {
            let (shares, ca, cb) = late_joiner(lag, 60);
            let fair_from = shares
                .iter()
                .rposition(|s| (s - 0.5).abs() > 0.05)
                .map_or(0, |k| k + 1);
            assert!(
                fair_from <= within,
                "lag {lag}: fair only from second {fair_from}: {shares:.2?}"
            );
            // Neither starved side bounces back: both stay batch to the end.
            assert_eq!((ca, cb), (CpuClass::Batch, CpuClass::Batch), "lag {lag}");
        }
    }

    #[test]
    fn sparse_samples_account_the_same_as_dense_ones() {
        // The loop skips reading workspaces while the node is quiet; a later sample
        // covering many ticks must refill like the ticks would have.
        let mut dense = Sim::new(CpuControl::Hearth, LIMITS);
        dense.ticks_until(CpuClass::Batch, 1000, 2000, 0);
        let mut sparse = dense.st.clone();
        dense.run(100, 0, 0);
        let obs = Observation {
            at: dense.now,
            usage_ns: dense.usage_ns,
            throttled_us: 0,
            pressure_us: Some(dense.pressure_us),
            nobody_waited: false,
            pids_refused: None,
        };
        dense.policy.observe(&mut sparse, obs);
        assert_eq!(sparse.class, dense.st.class);
        assert_eq!(sparse.budget_ns, dense.st.budget_ns);
    }

    /// Runs `ticks` ticks of `milli` CPU (no waiting) but observes only when
    /// [`Policy::sample_gap`] says so, as the loop does; returns the tick of each class
    /// change.
    fn gapped(s: &mut Sim, ticks: u32, milli: u64, changes: &mut Vec<(u32, CpuClass)>) {
        let mut due = s.now;
        for _ in 0..ticks {
            s.now += TICK;
            s.usage_ns += milli * TICK.as_nanos() as u64 / 1000;
            if s.now + TICK / 2 < due {
                continue;
            }
            let before = s.st.class;
            s.knobs = s.policy.observe(
                &mut s.st,
                Observation {
                    at: s.now,
                    usage_ns: s.usage_ns,
                    pressure_us: Some(0),
                    ..Observation::default()
                },
            );
            due = s.now + s.policy.sample_gap(&s.st);
            if s.st.class != before {
                let n = (s.now.as_millis() / TICK.as_millis()) as u32;
                changes.push((n, s.st.class));
            }
        }
    }

    #[test]
    fn sampling_by_the_gap_changes_class_on_the_same_tick_as_every_tick() {
        let mut dense = Sim::new(CpuControl::Hearth, LIMITS);
        let demoted = dense.ticks_until(CpuClass::Batch, 1000, 2000, 0);
        dense.run(100, 2000, 0);
        let promoted = dense.ticks_until(CpuClass::Interactive, 1000, 0, 0);

        let mut sparse = Sim::new(CpuControl::Hearth, LIMITS);
        let mut changes = Vec::new();
        gapped(&mut sparse, demoted + 100, 2000, &mut changes);
        gapped(&mut sparse, promoted + 20, 0, &mut changes);
        assert_eq!(
            changes,
            [
                (demoted, CpuClass::Batch),
                (demoted + 100 + promoted, CpuClass::Interactive)
            ]
        );
        // Far from a change it is read once a second, close to one every tick, and
        // every tick while batch.
        assert_eq!(sparse.policy.sample_gap(&sparse.st), MAX_GAP);
        sparse.st.budget_ns = 100_000_000;
        assert_eq!(
            sparse.policy.sample_gap(&sparse.st),
            Duration::from_nanos(100_000_000 * 1000 / 1750)
        );
        sparse.st.class = CpuClass::Batch;
        assert_eq!(sparse.policy.sample_gap(&sparse.st), Duration::ZERO);
        for control in [CpuControl::Off, CpuControl::Static] {
            let s = Sim::new(control, LIMITS);
            assert_eq!(s.policy.sample_gap(&s.st), MAX_GAP);
        }
        let g = Sim::new(CpuControl::Gitpod, LIMITS);
        assert_eq!(g.policy.sample_gap(&g.st), Duration::ZERO);
    }

    #[test]
    fn oom_kills_in_a_row_hold_a_workspace_to_a_tenth_of_a_core_until_they_stop() {
        let mut s = Sim::new(CpuControl::Hearth, LIMITS);
        s.run(10, 300, 0);
        // One kill (a compiler too big for the limit) changes nothing.
        s.policy.hit_limit(&mut s.st, s.now);
        s.run(1, 300, 0);
        assert_eq!((s.st.class, s.st.thrashing), (CpuClass::Interactive, false));
        // A second within THRASH_HOLD: held at once, whatever its budget.
        s.run(50, 300, 0);
        s.policy.hit_limit(&mut s.st, s.now);
        s.run(1, 300, 0);
        assert!(s.st.thrashing);
        assert_eq!(s.st.class, CpuClass::Batch);
        assert_eq!(
            (s.knobs.quota_us, s.knobs.burst_us, s.knobs.idle),
            (Some(10_000), 10_000, true)
        );
        // Kills keep coming: still held; then none for THRASH_HOLD: released, and with its
        // budget whole it is interactive again.
        let hold = (THRASH_HOLD.as_millis() / TICK.as_millis()) as u32;
        for _ in 0..3 {
            s.run(hold / 2, 100, 0);
            s.policy.hit_limit(&mut s.st, s.now);
        }
        s.run(hold - 1, 100, 0);
        assert!(s.st.thrashing);
        s.run(1, 100, 0);
        assert!(!s.st.thrashing);
        assert_eq!(s.st.class, CpuClass::Interactive);
        assert_eq!(s.knobs, CpuKnobs::default());
        // A later single kill starts a new run.
        s.policy.hit_limit(&mut s.st, s.now);
        s.run(1, 100, 0);
        assert!(!s.st.thrashing);

        // A fork bomb at its pids limit: refused forks in two samples in a row hold it
        // too; a sample without new ones is no hit.
        let mut s = Sim::new(CpuControl::Hearth, LIMITS);
        s.pids_refused = Some(0);
        s.run(10, 300, 0);
        s.pids_refused = Some(40);
        s.run(1, 300, 0);
        assert!(!s.st.thrashing, "one hit");
        s.run(5, 300, 0);
        assert!(!s.st.thrashing, "no new refusals");
        s.pids_refused = Some(90);
        s.run(1, 300, 0);
        assert!(s.st.thrashing);
        assert_eq!(s.knobs.quota_us, Some(10_000));
        // Not read for a while (None) is no hit either; released after THRASH_HOLD.
        s.pids_refused = None;
        s.run(hold, 300, 0);
        assert!(!s.st.thrashing);

        // A smaller class limit stays; the baselines ignore kills.
        let mut s = Sim::new(
            CpuControl::Hearth,
            WsLimits {
                weight: 100,
                cpus_milli: 50,
            },
        );
        s.policy.hit_limit(&mut s.st, s.now);
        s.policy.hit_limit(&mut s.st, s.now);
        s.run(1, 0, 0);
        assert_eq!(s.knobs.quota_us, Some(5000));
        for control in [CpuControl::Off, CpuControl::Static, CpuControl::Gitpod] {
            let mut s = Sim::new(control, LIMITS);
            let before = s.knobs;
            s.policy.hit_limit(&mut s.st, s.now);
            s.policy.hit_limit(&mut s.st, s.now);
            s.run(1, 0, 0);
            assert_eq!((s.knobs, s.st.thrashing), (before, false), "{control:?}");
        }
    }

    #[test]
    fn static_is_a_fixed_quota_of_cpus_or_one_core() {
        let s = Sim::new(CpuControl::Static, LIMITS);
        assert_eq!(s.knobs.quota_us, Some(100_000));
        assert!(!s.knobs.idle);
        let s = Sim::new(
            CpuControl::Static,
            WsLimits {
                weight: 100,
                cpus_milli: 1500,
            },
        );
        assert_eq!(s.knobs.quota_us, Some(150_000));
        assert_eq!(s.st.class, CpuClass::Limited);
    }

    #[test]
    fn off_writes_the_fixed_weight_only() {
        let mut s = Sim::new(
            CpuControl::Off,
            WsLimits {
                weight: 300,
                cpus_milli: 500,
            },
        );
        s.run(1000, 2000, 0);
        assert_eq!(
            s.knobs,
            CpuKnobs {
                weight: 300,
                ..CpuKnobs::default()
            }
        );
        assert_eq!(s.st.class, CpuClass::Unmanaged);
    }

    #[test]
    fn gitpod_steps_down_by_cpu_time_since_first_seen() {
        assert_eq!(
            gitpod_buckets(2),
            [
                (2000, 600_000_000_000),
                (1333, 399_900_000_000),
                (666, u64::MAX)
            ]
        );
        let mut s = Sim::new(CpuControl::Gitpod, LIMITS);
        assert_eq!(s.knobs.quota_us, Some(200_000));
        // 5 min of both cores is the first bucket; the loop samples every 15 s.
        let tick = GITPOD_PERIOD.as_millis() as u32 / 100;
        s.run(tick * 19, 2000, 0);
        assert_eq!(s.knobs.quota_us, Some(200_000));
        s.run(tick * 2, 2000, 0);
        assert_eq!(s.knobs.quota_us, Some(133_300));
        // 5 min at 1.333 cores later, the last bucket.
        s.run(tick * 20, 1333, 0);
        assert_eq!(s.knobs.quota_us, Some(66_600));
        // Quiet time does not give the budget back.
        s.run(tick * 100, 0, 0);
        assert_eq!(s.knobs.quota_us, Some(66_600));
    }
}
