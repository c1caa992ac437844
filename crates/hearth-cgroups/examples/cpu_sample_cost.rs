//! What one CPU-controller pass over 200 workspaces costs in reads: makes 200 real groups
//! under a temporary parent, samples them all (usage only, then usage + throttling +
//! PSI), and prints the CPU time per pass and per second at 10 Hz. Needs root.
//! `cargo run --release -p hearth-cgroups --example cpu_sample_cost`

use std::time::Instant;

use hearth_cgroups::{Cgroups, Limits, SampleWhat, WorkspaceId};

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let parent = format!("hearth-samplecost-{}", std::process::id());
    let cg = Cgroups::open(&parent).expect("open cgroups (root?)");
    let ids: Vec<WorkspaceId> = (0..200)
        .map(|i| WorkspaceId::new(format!("{i:012x}")).unwrap())
        .collect();
    for id in &ids {
        cg.create(id, &Limits::default()).unwrap();
    }
    let mut groups: Vec<_> = ids.iter().map(|id| cg.cpu_group(id).unwrap()).collect();
    for (label, what) in [
        (
            "usage only",
            SampleWhat {
                throttling: false,
                pressure: false,
            },
        ),
        (
            "usage + throttling + PSI",
            SampleWhat {
                throttling: true,
                pressure: true,
            },
        ),
    ] {
        let passes = 200;
        let (t0, c0) = (Instant::now(), thread_cpu_ns());
        for _ in 0..passes {
            for g in &mut groups {
                g.sample(what).unwrap();
            }
        }
        let cpu = (thread_cpu_ns() - c0) / passes;
        println!(
            "{label}: {:.1} us CPU per pass over 200 workspaces ({:.1} us wall), {:.2}% of a core at 10 Hz",
            cpu as f64 / 1e3,
            t0.elapsed().as_nanos() as f64 / passes as f64 / 1e3,
            cpu as f64 * 10.0 / 1e9 * 100.0
        );
    }
    drop(groups);
    for id in &ids {
        cg.remove(id).unwrap();
    }
    cg.remove_parent().unwrap();
}
