//! The hidden tools of `hearth bench cpu`, run directly on the host: they print what the
//! bench parses, within physical bounds (no timing claims; those stay in the bench).

use std::process::Command;

fn tool(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth-agent"))
        .args(args)
        .output()
        .expect("run hearth-agent");
    assert!(
        out.status.success(),
        "hearth-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn probe_prints_one_latency_per_iteration_each_at_least_the_work() {
    let out = tool(&[
        "probe",
        "--iterations",
        "20",
        "--sleep-ms",
        "1",
        "--work-us",
        "500",
    ]);
    let lat: Vec<u64> = out.lines().map(|l| l.parse().expect("µs")).collect();
    assert_eq!(lat.len(), 20, "{out}");
    // Latency counts from the wake-up to the end of 500 µs of CPU work.
    assert!(lat.iter().all(|&l| l >= 500), "{lat:?}");
}

#[test]
fn spin_reports_cpu_within_threads_times_wall() {
    let out = tool(&[
        "spin",
        "--threads",
        "2",
        "--ms",
        "300",
        "--marks",
        "100,300",
        "--every-ms",
        "100",
    ]);
    let field = |prefix: &str| -> Vec<f64> {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {out}"));
        line.split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect()
    };
    let m100 = field("mark 100 ")[0];
    let m300 = field("mark 300 ")[0];
    let total = field("total ");
    let (wall, cpu) = (total[0], total[1]);
    assert!(m100 > 0.0 && m100 <= m300, "{out}");
    // A thread reads its clock at the first check past a mark: a few µs over at most.
    assert!(m100 <= 2.0 * 100.0 + 2.0, "{out}");
    assert!(m300 <= 2.0 * 300.0 + 2.0, "{out}");
    assert!(wall >= 300.0, "{out}");
    // Two spinning threads plus the reporting main thread.
    assert!(cpu > 0.0 && cpu <= 3.0 * wall, "{out}");
    let at: Vec<_> = out.lines().filter(|l| l.starts_with("at ")).collect();
    assert_eq!(at.len(), 3, "one CPU report every 100 ms: {out}");
}

#[test]
fn tools_refuse_unknown_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth-agent"))
        .args(["spin", "--bogus", "1"])
        .output()
        .expect("run hearth-agent");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
}
