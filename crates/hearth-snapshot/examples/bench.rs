//! Side-by-side benchmark: hearth-snapshot vs restic vs `tar | zstd -1 -T0`.
//!
//! Run (as root, needs `restic`, `zstd`, `tar`, ~4 GB free):
//!   cargo run --release -p hearth-snapshot --example bench -- [WORKDIR]
//! The source tree (>= 600 MB, >= 60k files) is copied once from ~/.cargo/registry/src,
//! /usr/include and the Python site-packages into WORKDIR/src (default
//! /var/tmp/hearth-snapshot-bench) and reused on later runs. Outputs are removed at the end
//! (`BENCH_KEEP=1` keeps them); `BENCH_ONLY_HEARTH=1` / `BENCH_SNAPSHOT_ONLY=1` skip the other
//! tools.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hearth_snapshot::{restore, snapshot, Store};

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "command failed: {cmd}");
}

fn timed(f: impl FnOnce()) -> f64 {
    sh("sync");
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// CPU seconds (user + system) this process has used so far.
fn cpu() -> f64 {
    // SAFETY: rusage is plain integers; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn du(p: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(p).output().expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let work = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/var/tmp/hearth-snapshot-bench".into()),
    );
    let src = work.join("src");
    // Restore targets; `BENCH_RESTORE_DIR=/dev/shm/x` takes the disk's inode allocator out of
    // the comparison (ext4 without a journal is very slow to create files after mass deletes).
    let rdir = std::env::var("BENCH_RESTORE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| work.clone());
    std::fs::create_dir_all(&rdir).expect("restore dir");
    if !src.exists() {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let site = String::from_utf8(
            Command::new("python3")
                .args(["-c", "import site; print(site.getsitepackages()[0])"])
                .output()
                .expect("python3")
                .stdout,
        )
        .expect("utf8");
        std::fs::create_dir_all(&src).expect("mkdir");
        for (from, to) in [
            (format!("{home}/.cargo/registry/src"), "cargo"),
            ("/usr/include".to_string(), "include"),
            (site.trim().to_string(), "site-packages"),
        ] {
            sh(&format!("cp -a '{from}' '{}/{to}'", src.display()));
        }
    }
    let all = files(&src);
    let bytes: u64 = all
        .iter()
        .map(|p| std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let mb = bytes as f64 / 1e6;
    println!(
        "source: {} files, {:.0} MB in {}",
        all.len(),
        mb,
        src.display()
    );
    if all.len() < 60_000 || mb < 600.0 {
        println!("WARNING: source tree is smaller than the 600 MB / 60k-file target");
    }
    let outputs = [
        "hearth-store",
        "hearth-restore",
        "restic-repo",
        "restic-restore",
        "tar-restore",
        "tree.tar.zst",
    ];
    let cleanup = || {
        let mut any = false;
        for d in outputs {
            for base in [&work, &rdir] {
                let p = base.join(d);
                any |= std::fs::remove_dir_all(&p).is_ok() || std::fs::remove_file(&p).is_ok();
            }
        }
        any
    };
    if cleanup() {
        // ext4 without a journal skips inodes freed in the last minutes when allocating, which
        // makes every restore right after deleting ~200k files several times slower.
        println!(
            "removed outputs of an earlier run; waiting 5 min so inode allocation is not skewed"
        );
        std::thread::sleep(std::time::Duration::from_secs(
            std::env::var("BENCH_SETTLE_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(300),
        ));
    }

    if std::env::var_os("BENCH_SNAPSHOT_ONLY").is_some() {
        let store = Store::open_local(&work.join("hearth-store"), None).expect("store");
        let mut full = None;
        let c0 = cpu();
        let f = timed(|| {
            full = Some(snapshot(&store, "bench", &src, 0, None, None).expect("snapshot"))
        });
        let full = full.expect("full");
        let c1 = cpu();
        let i = timed(|| {
            snapshot(&store, "bench", &src, 0, Some(&full.id), None).expect("incremental");
        });
        println!(
            "cpu: full {:.2}s, unchanged incr {:.2}s",
            c1 - c0,
            cpu() - c1
        );
        println!(
            "hearth full {f:.2}s ({:.0} MB/s) unchanged incr {i:.2}s store {:.0} MB",
            mb / f,
            du(&work.join("hearth-store")) as f64 / 1e6
        );
        if std::env::var_os("BENCH_KEEP_STORE").is_some() {
            println!("kept as hearth-store-keep; full snapshot {}", full.id);
            let _ = std::fs::remove_dir_all(work.join("hearth-store-keep"));
            std::fs::rename(work.join("hearth-store"), work.join("hearth-store-keep"))
                .expect("keep store");
        }
        cleanup();
        return;
    }

    if let Ok(id) = std::env::var("BENCH_RESTORE_ONLY") {
        let store = Store::open_local(&work.join("hearth-store-keep"), None).expect("store");
        let c0 = cpu();
        let r = timed(|| {
            restore(&store, &id, &rdir.join("hearth-restore-only"), 0, None).expect("restore")
        });
        println!(
            "restore {r:.2}s ({:.0} MB/s), cpu {:.2}s",
            mb / r,
            cpu() - c0
        );
        let _ = std::fs::remove_dir_all(rdir.join("hearth-restore-only"));
        return;
    }
    // Full snapshots.
    let store = Store::open_local(&work.join("hearth-store"), None).expect("store");
    let mut full = None;
    let h_full =
        timed(|| full = Some(snapshot(&store, "bench", &src, 0, None, None).expect("snapshot")));
    let full = full.expect("full");
    if std::env::var_os("BENCH_ONLY_HEARTH").is_some() {
        use std::io::Write;
        for p in all.iter().step_by(100) {
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .and_then(|mut f| f.write_all(b"\n// changed\n"))
                .expect("append");
        }
        let i = timed(|| {
            snapshot(&store, "bench", &src, 0, Some(&full.id), None).expect("incremental");
        });
        let r = timed(|| {
            restore(&store, &full.id, &rdir.join("hearth-restore"), 0, None).expect("restore")
        });
        println!("hearth full {h_full:.2}s ({:.0} MB/s) incr {i:.2}s restore {r:.2}s ({:.0} MB/s) store {:.0} MB", mb / h_full, mb / r, du(&work.join("hearth-store")) as f64 / 1e6);
        cleanup();
        return;
    }
    let repo = work.join("restic-repo");
    let restic = |args: &str| {
        format!(
            "RESTIC_PASSWORD=x restic -q --repo '{}' {args}",
            repo.display()
        )
    };
    sh(&restic("init >/dev/null"));
    let r_full = timed(|| sh(&restic(&format!("backup '{}' >/dev/null", src.display()))));
    let tarball = work.join("tree.tar.zst");
    let t_full = timed(|| {
        sh(&format!(
            "tar -C '{}' -cf - . | zstd -q -1 -T0 -o '{}'",
            src.display(),
            tarball.display()
        ))
    });

    // Append to 1% of the files, then incremental snapshots.
    use std::io::Write;
    for p in all.iter().step_by(100) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(p)
            .and_then(|mut f| f.write_all(b"\n// changed\n"))
            .expect("append");
    }
    let mut incr = None;
    let h_incr = timed(|| {
        incr = Some(snapshot(&store, "bench", &src, 0, Some(&full.id), None).expect("incremental"))
    });
    let incr = incr.expect("incr");
    let r_incr = timed(|| sh(&restic(&format!("backup '{}' >/dev/null", src.display()))));

    // Restores of the latest snapshot.
    let h_restore = timed(|| {
        restore(&store, &incr.id, &rdir.join("hearth-restore"), 0, None).expect("restore")
    });
    let r_restore = timed(|| {
        sh(&restic(&format!(
            "restore latest --target '{}' >/dev/null",
            rdir.join("restic-restore").display()
        )))
    });
    let tdst = rdir.join("tar-restore");
    std::fs::create_dir_all(&tdst).expect("mkdir");
    let t_restore = timed(|| {
        sh(&format!(
            "zstd -q -dc '{}' | tar -C '{}' -xf -",
            tarball.display(),
            tdst.display()
        ))
    });
    sh(&format!(
        "diff -r --no-dereference '{}' '{}'",
        src.display(),
        rdir.join("hearth-restore").display()
    ));

    let h_store = du(&work.join("hearth-store"));
    let r_store = du(&repo);
    let t_store = du(&tarball);
    println!();
    println!(
        "{:<16} {:>8} {:>10} {:>9} {:>10} {:>13} {:>9}",
        "tool", "full s", "full MB/s", "incr s", "restore s", "restore MB/s", "store MB"
    );
    let row = |name: &str, f: f64, i: Option<f64>, r: f64, s: u64| {
        println!(
            "{:<16} {:>8.2} {:>10.0} {:>9} {:>10.2} {:>13.0} {:>9.0}",
            name,
            f,
            mb / f,
            i.map(|i| format!("{i:.2}")).unwrap_or_else(|| "-".into()),
            r,
            mb / r,
            s as f64 / 1e6
        )
    };
    row("hearth-snapshot", h_full, Some(h_incr), h_restore, h_store);
    row("restic", r_full, Some(r_incr), r_restore, r_store);
    row("tar|zstd -1", t_full, None, t_restore, t_store);
    println!(
        "(hearth incremental uploaded {} bytes; restore verified with diff -r)",
        incr.new_bytes
    );
    if std::env::var_os("BENCH_KEEP").is_none() {
        cleanup();
    }
}
