//! Where a workspace goes: a pure function of the nodes' reported capacity, what the
//! control plane has already put on them, and what the workspace asks for.
//!
//! Hard rules filter: the node is ready (connected, not draining, not lost), carries every
//! label of the selector, could hold the workspace at all (its memory and CPU limits fit
//! the host, its disk is above the reserve) and is not out of memory now (at least
//! [`MIN_AVAILABLE`] or the limit available). Among the rest the least allocated wins
//! (spread), as Kubernetes' default scoring: the average of the free shares of memory
//! (limits of the running workspaces placed there), CPU (their CPU limits, a core for one
//! without) and disk (free space above the reserve). Scoring on what the control plane
//! placed, not on measured use, keeps decisions stable between heartbeats. Ties go to the
//! node with fewer workspaces, then by name, so a decision is reproducible.

use hearth_node::{Limits, NodeCapacity};

use crate::fleet::Labels;

/// What a running workspace without a CPU limit counts for, thousandths of a core.
const UNLIMITED_CPU_MILLI: u64 = 1000;

/// Memory a node must have available now to take a workspace (or its limit, if smaller).
pub const MIN_AVAILABLE: u64 = 256 << 20;

/// One node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub name: &'a str,
    /// Connected, not draining, not lost.
    pub ready: bool,
    pub labels: &'a Labels,
    /// `None` before its first heartbeat: placed on only when nothing else fits.
    pub capacity: Option<&'a NodeCapacity>,
    /// What the control plane has put there.
    pub placed: Placed,
}

/// Sums over the workspaces recorded on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placed {
    pub workspaces: u32,
    /// Memory limits of the running (and starting) ones.
    pub memory_bytes: u64,
    /// Their CPU limits, thousandths of a core (unlimited ones count a core).
    pub cpus_milli: u64,
}

impl Placed {
    /// Adds a workspace with `limits`, running or not.
    pub fn add(&mut self, limits: &Limits, running: bool) {
        self.workspaces += 1;
        if running {
            self.memory_bytes = self.memory_bytes.saturating_add(limits.memory_bytes);
            self.cpus_milli = self.cpus_milli.saturating_add(cpu_of(limits));
        }
    }
}

fn cpu_of(limits: &Limits) -> u64 {
    match limits.cpus_milli {
        0 => UNLIMITED_CPU_MILLI,
        m => m,
    }
}

/// Why no node took a workspace, for the error the user sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFit {
    /// One line per node: its name and why not.
    pub reasons: Vec<String>,
}

impl std::fmt::Display for NoFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reasons.is_empty() {
            return f.write_str("no node is registered (hearth node ls)");
        }
        write!(f, "no node can take it: {}", self.reasons.join("; "))
    }
}

/// Why `c` cannot take `limits` at all, if it cannot.
fn refusal(c: &Candidate<'_>, limits: &Limits, selector: &Labels) -> Option<String> {
    if !c.ready {
        return Some("not ready".into());
    }
    if let Some((k, v)) = selector
        .iter()
        .find(|(k, v)| c.labels.get(k.as_str()) != Some(*v))
    {
        return Some(format!("no label {k}={v}"));
    }
    let cap = c.capacity?;
    if limits.memory_bytes > cap.memory_total {
        return Some(format!(
            "memory limit above its {} MiB",
            cap.memory_total >> 20
        ));
    }
    if limits.cpus_milli > u64::from(cap.cpus) * 1000 {
        return Some(format!("CPU limit above its {} CPUs", cap.cpus));
    }
    if cap.disk_free <= cap.disk_reserve {
        return Some("disk under its reserve".into());
    }
    if cap.memory_available < limits.memory_bytes.min(MIN_AVAILABLE) {
        return Some(format!(
            "only {} MiB of memory available",
            cap.memory_available >> 20
        ));
    }
    None
}

/// The average free share of memory, CPU and disk once `limits` runs there (a share is
/// negative when overcommitted).
fn room(cap: &NodeCapacity, placed: &Placed, limits: &Limits) -> f64 {
    let total_mem = cap.memory_total.max(1) as f64;
    let mem = 1.0 - (placed.memory_bytes as f64 + limits.memory_bytes as f64) / total_mem;
    let cores = (u64::from(cap.cpus).max(1) * 1000) as f64;
    let cpu = 1.0 - (placed.cpus_milli + cpu_of(limits)) as f64 / cores;
    let disk = cap.disk_free.saturating_sub(cap.disk_reserve) as f64 / cap.disk_total.max(1) as f64;
    (mem + cpu + disk) / 3.0
}

/// The node to place a workspace with `limits` and `selector` on, never `exclude` (the
/// node it leaves on a move).
pub fn place<'a>(
    nodes: &[Candidate<'a>],
    limits: &Limits,
    selector: &Labels,
    exclude: Option<&str>,
) -> Result<&'a str, NoFit> {
    // (has capacity, room, fewer workspaces, earlier name): the greatest wins.
    type Key<'a> = (
        bool,
        f64,
        std::cmp::Reverse<u32>,
        std::cmp::Reverse<&'a str>,
    );
    let cmp = |a: &Key<'a>, b: &Key<'a>| {
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    };
    let mut best: Option<Key<'a>> = None;
    let mut reasons = Vec::new();
    for c in nodes {
        if Some(c.name) == exclude {
            reasons.push(format!("{}: the node it leaves", c.name));
            continue;
        }
        if let Some(why) = refusal(c, limits, selector) {
            reasons.push(format!("{}: {why}", c.name));
            continue;
        }
        let key = (
            c.capacity.is_some(),
            c.capacity.map_or(0.0, |cap| room(cap, &c.placed, limits)),
            std::cmp::Reverse(c.placed.workspaces),
            std::cmp::Reverse(c.name),
        );
        if best
            .as_ref()
            .is_none_or(|b| cmp(&key, b) == std::cmp::Ordering::Greater)
        {
            best = Some(key);
        }
    }
    match best {
        Some((_, _, _, std::cmp::Reverse(name))) => Ok(name),
        None => Err(NoFit { reasons }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn cap(mem_gib: u64, avail_gib: u64, cpus: u32, disk_free_gib: u64) -> NodeCapacity {
        NodeCapacity {
            cpus,
            memory_total: mem_gib * GIB,
            memory_available: avail_gib * GIB,
            disk_total: 1000 * GIB,
            disk_free: disk_free_gib * GIB,
            disk_reserve: 10 * GIB,
            workspaces: 0,
            running: 0,
        }
    }

    fn limits(mem_gib: u64) -> Limits {
        Limits {
            memory_bytes: mem_gib * GIB,
            ..Limits::default()
        }
    }

    fn node<'a>(name: &'a str, labels: &'a Labels, capacity: &'a NodeCapacity) -> Candidate<'a> {
        Candidate {
            name,
            ready: true,
            labels,
            capacity: Some(capacity),
            placed: Placed::default(),
        }
    }

    #[test]
    fn spreads_to_the_node_with_most_room() {
        let none = Labels::new();
        let (a, b) = (cap(64, 60, 16, 900), cap(64, 60, 16, 900));
        let mut nodes = vec![node("a", &none, &a), node("b", &none, &b)];
        // Equal nodes: the one with fewer workspaces, then the first name.
        assert_eq!(place(&nodes, &limits(4), &none, None), Ok("a"));
        nodes[0].placed.add(&limits(4), true);
        assert_eq!(place(&nodes, &limits(4), &none, None), Ok("b"));
        // Placing one by one alternates.
        let mut got = Vec::new();
        for _ in 0..6 {
            let n = place(&nodes, &limits(4), &none, None).unwrap();
            got.push(n);
            let i = nodes.iter().position(|c| c.name == n).unwrap();
            nodes[i].placed.add(&limits(4), true);
        }
        assert_eq!(got, ["b", "a", "b", "a", "b", "a"]);
    }

    #[test]
    fn the_least_allocated_wins_and_memory_must_be_there() {
        let none = Labels::new();
        // Lots of memory but almost no disk above the reserve, against a balanced node
        // with more disk and some memory placed.
        let full_disk = cap(64, 60, 16, 12);
        let balanced = cap(64, 50, 16, 500);
        let mut nodes = [
            node("big", &none, &full_disk),
            node("mid", &none, &balanced),
        ];
        nodes[1].placed.add(&limits(8), true);
        assert_eq!(place(&nodes, &limits(4), &none, None), Ok("mid"));
        // A host out of memory now takes nothing, however little is placed there.
        let starved = cap(64, 0, 16, 900);
        let nodes = [node("a", &none, &starved), node("b", &none, &balanced)];
        assert_eq!(place(&nodes, &limits(4), &none, None), Ok("b"));
        let e = place(&nodes[..1], &limits(4), &none, None).unwrap_err();
        assert_eq!(e.reasons, ["a: only 0 MiB of memory available"]);
    }

    #[test]
    fn hard_limits_and_state_refuse() {
        let none = Labels::new();
        let small = cap(8, 8, 2, 100);
        let under_reserve = cap(64, 64, 16, 10);
        let mut draining = node("d", &none, &small);
        draining.ready = false;
        let nodes = [
            node("small", &none, &small),
            node("full", &none, &under_reserve),
            draining,
        ];
        let e = place(&nodes, &limits(16), &none, None).unwrap_err();
        assert_eq!(
            e.reasons,
            [
                "small: memory limit above its 8192 MiB",
                "full: disk under its reserve",
                "d: not ready"
            ]
        );
        assert!(
            e.to_string().starts_with("no node can take it: small:"),
            "{e}"
        );
        let cpu = Limits {
            cpus_milli: 3000,
            ..limits(1)
        };
        assert!(place(&nodes[..1], &cpu, &none, None).is_err());
        assert_eq!(place(&nodes, &limits(1), &none, None), Ok("small"));
        assert_eq!(
            place(&[], &limits(1), &none, None).unwrap_err().to_string(),
            "no node is registered (hearth node ls)"
        );
    }

    #[test]
    fn a_selector_pins_and_exclude_skips() {
        let none = Labels::new();
        let gpu: Labels = [("gpu".to_string(), "true".to_string())].into();
        let roomy = cap(256, 250, 64, 900);
        let tight = cap(16, 10, 4, 100);
        let nodes = [node("roomy", &none, &roomy), node("gpu1", &gpu, &tight)];
        assert_eq!(place(&nodes, &limits(1), &none, None), Ok("roomy"));
        assert_eq!(place(&nodes, &limits(1), &gpu, None), Ok("gpu1"));
        let e = place(&nodes, &limits(1), &gpu, Some("gpu1")).unwrap_err();
        assert_eq!(
            e.reasons,
            ["roomy: no label gpu=true", "gpu1: the node it leaves"]
        );
        assert_eq!(place(&nodes, &limits(1), &none, Some("roomy")), Ok("gpu1"));
    }

    #[test]
    fn nodes_without_a_report_come_last() {
        let none = Labels::new();
        let c = cap(64, 60, 16, 900);
        let mut fresh = node("a-fresh", &none, &c);
        fresh.capacity = None;
        let nodes = [fresh.clone(), node("b", &none, &c)];
        assert_eq!(place(&nodes, &limits(1), &none, None), Ok("b"));
        assert_eq!(place(&[fresh], &limits(1), &none, None), Ok("a-fresh"));
    }
}
