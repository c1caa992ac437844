//! `hearth bench scheduler`: the time of one placement decision (`scheduler::place`) over
//! simulated nodes, the pure function alone (the fleet's in-memory view and the database
//! read of what is placed where are outside it), against the 1 ms target.

use std::time::{Duration, Instant};

use hearth_node::{Limits, NodeCapacity};
use hearth_server::fleet::Labels;
use hearth_server::scheduler::{place, Candidate, Placed};

const TARGET: Duration = Duration::from_millis(1);

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `decisions` placements at each fleet size, placing as it goes (every fifth node
/// labelled `zone=x`, every tenth decision selecting it).
pub fn run(sizes: &[usize], decisions: usize) {
    println!(
        "scheduler: {decisions} decisions per fleet size (simulated nodes, target <= {} ms each)",
        TARGET.as_millis()
    );
    println!(
        "{:>6} {:>12} {:>12} {:>12}",
        "nodes", "p50 µs", "p99 µs", "max µs"
    );
    for &n in sizes {
        let names: Vec<String> = (0..n).map(|i| format!("node-{i:04}")).collect();
        let zone: Labels = [("zone".to_string(), "x".to_string())].into();
        let none = Labels::new();
        let caps: Vec<NodeCapacity> = (0..n)
            .map(|i| NodeCapacity {
                cpus: 16 + (i % 4) as u32 * 16,
                memory_total: (64u64 << 30) * (1 + (i % 3) as u64),
                memory_available: (48u64 << 30) - (((i % 7) as u64) << 30),
                disk_total: 2 << 40,
                disk_free: (1 << 40) + (((i % 11) as u64) << 30),
                disk_reserve: 20 << 30,
                workspaces: 0,
                running: 0,
            })
            .collect();
        let mut nodes: Vec<Candidate<'_>> = (0..n)
            .map(|i| Candidate {
                name: &names[i],
                ready: i % 50 != 0,
                labels: if i % 5 == 0 { &zone } else { &none },
                capacity: Some(&caps[i]),
                placed: Placed::default(),
            })
            .collect();
        let limits = Limits::default();
        let mut times = Vec::with_capacity(decisions);
        for d in 0..decisions {
            let selector = if d % 10 == 0 { &zone } else { &none };
            let t = Instant::now();
            let chosen = place(&nodes, &limits, selector, None);
            times.push(t.elapsed());
            if let Ok(name) = chosen {
                if let Some(c) = nodes.iter_mut().find(|c| c.name == name) {
                    c.placed.add(&limits, true);
                }
            }
        }
        times.sort();
        let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
        println!(
            "{n:>6} {:>12} {:>12} {:>12}",
            us(pct(&times, 0.5)),
            us(pct(&times, 0.99)),
            us(*times.last().unwrap_or(&Duration::ZERO))
        );
    }
}
