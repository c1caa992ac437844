//! Side-by-side benchmark: hearth-snapshot vs restic vs `tar | zstd -1 -T0`.
//!
//! Run (as root, needs `restic`, `zstd`, `tar`, `mkfs.ext4`, `mkfs.btrfs`, ~6 GB free):
//!   cargo run --release -p hearth-snapshot --example bench -- [WORKDIR]
//! The source tree (>= 600 MB, >= 60k files) is copied once from ~/.cargo/registry/src,
//! /usr/include and the Python site-packages into WORKDIR/src (default
//! /var/tmp/hearth-snapshot-bench) and reused on later runs.
//!
//! Every output goes to a filesystem made for it in this run (a sparse image, loop-mounted,
//! removed at the end): the stores to one ext4, each restore to its own fresh ext4 and
//! btrfs (btrfs is what a workspace's disk is, so it is where Hearth really restores). A
//! fresh filesystem per output keeps earlier runs out of the numbers: on a long-lived ext4
//! without a journal, creating files right after deleting ~100k others is several times
//! slower (the inode allocator skips recently freed inodes).
//!
//! `BENCH_RESTORE_DIR=/dev/shm/x` restores into that directory instead (tmpfs: no filesystem
//! cost); `BENCH_ONLY_HEARTH=1` skips the other tools; `BENCH_SNAPSHOT_ONLY=1` times only
//! hearth's full and unchanged-incremental snapshots (`BENCH_KEEP_STORE=DIR` keeps that store
//! in DIR); `BENCH_RESTORE_FROM=DIR:ID` times only restores of snapshot ID from the store in
//! DIR (for profiling).

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

/// A filesystem made for one output: a sparse image, loop-mounted at `dir`, gone on drop.
struct Scratch {
    dir: PathBuf,
    img: PathBuf,
}

impl Scratch {
    fn new(work: &Path, name: &str, fs: &str) -> Scratch {
        let dir = work.join(name);
        let img = work.join(format!("{name}.img"));
        let _ = Command::new("umount")
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_file(&img);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = std::fs::File::create(&img).expect("image");
        f.set_len(6 << 30).expect("truncate");
        drop(f);
        let (mkfs, opts) = match fs {
            // The options hearth-disk mounts a workspace's disk with.
            "btrfs" => ("mkfs.btrfs -q -f", "loop,noatime,discard=async"),
            // Inode tables and journal written now: ext4 otherwise zeroes them in the
            // background for minutes, slowing whatever is measured first.
            _ => (
                "mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                "loop,noatime",
            ),
        };
        sh(&format!("{mkfs} '{}' >/dev/null", img.display()));
        sh(&format!(
            "mount -o {opts} '{}' '{}'",
            img.display(),
            dir.display()
        ));
        Scratch { dir, img }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_file(&self.img);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Where restores go: a fresh filesystem of each kind, or `BENCH_RESTORE_DIR`.
fn restore_targets() -> Vec<String> {
    match std::env::var("BENCH_RESTORE_DIR") {
        Ok(d) => vec![d],
        Err(_) => vec!["ext4".into(), "btrfs".into()],
    }
}

/// Runs `f` with an empty directory on target `t` (see [`restore_targets`]) and times it;
/// `check` runs after, untimed.
fn restore_into(
    work: &Path,
    t: &str,
    name: &str,
    f: impl FnOnce(&Path),
    check: impl FnOnce(&Path),
) -> f64 {
    let scratch;
    let dir = match t {
        "ext4" | "btrfs" => {
            scratch = Scratch::new(work, &format!("{name}-{t}"), t);
            scratch.dir.join("r")
        }
        d => {
            let d = Path::new(d).join(name);
            let _ = std::fs::remove_dir_all(&d);
            d
        }
    };
    std::fs::create_dir_all(&dir).expect("mkdir");
    let secs = timed(|| f(&dir));
    check(&dir);
    if !matches!(t, "ext4" | "btrfs") {
        let _ = std::fs::remove_dir_all(&dir);
    }
    secs
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
    if let Ok(from) = std::env::var("BENCH_RESTORE_FROM") {
        let (dir, id) = from.rsplit_once(':').expect("BENCH_RESTORE_FROM=DIR:ID");
        let store = Store::open_local(Path::new(dir), None).expect("store");
        for t in restore_targets() {
            let c0 = cpu();
            let r = restore_into(
                &work,
                &t,
                "hearth-restore",
                |d| restore(&store, id, d, 0, None).expect("restore"),
                |_| {},
            );
            println!(
                "restore to {t}: {r:.2}s ({:.0} MB/s, cpu {:.2}s)",
                mb / r,
                cpu() - c0
            );
        }
        return;
    }
    let out = Scratch::new(&work, "out", "ext4");
    let store = Store::open_local(&out.dir.join("hearth-store"), None).expect("store");

    if std::env::var_os("BENCH_SNAPSHOT_ONLY").is_some() {
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
            "hearth full {f:.2}s ({:.0} MB/s, cpu {:.2}s) unchanged incr {i:.2}s (cpu {:.2}s) store {:.0} MB",
            mb / f,
            c1 - c0,
            cpu() - c1,
            du(&out.dir.join("hearth-store")) as f64 / 1e6
        );
        if let Ok(keep) = std::env::var("BENCH_KEEP_STORE") {
            let _ = std::fs::remove_dir_all(&keep);
            sh(&format!(
                "cp -a '{}' '{keep}'",
                out.dir.join("hearth-store").display()
            ));
            println!("kept in {keep}; full snapshot {}", full.id);
        }
        return;
    }

    // Full snapshots.
    let mut full = None;
    let h_full =
        timed(|| full = Some(snapshot(&store, "bench", &src, 0, None, None).expect("snapshot")));
    let full = full.expect("full");
    let only_hearth = std::env::var_os("BENCH_ONLY_HEARTH").is_some();
    let repo = out.dir.join("restic-repo");
    let restic = |args: &str| {
        format!(
            "RESTIC_PASSWORD=x restic -q --repo '{}' {args}",
            repo.display()
        )
    };
    let tarball = out.dir.join("tree.tar.zst");
    let (mut r_full, mut t_full) = (f64::NAN, f64::NAN);
    if !only_hearth {
        sh(&restic("init >/dev/null"));
        r_full = timed(|| sh(&restic(&format!("backup '{}' >/dev/null", src.display()))));
        t_full = timed(|| {
            sh(&format!(
                "tar -C '{}' -cf - . | zstd -q -1 -T0 -o '{}'",
                src.display(),
                tarball.display()
            ))
        });
    }

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
    let r_incr = if only_hearth {
        f64::NAN
    } else {
        timed(|| sh(&restic(&format!("backup '{}' >/dev/null", src.display()))))
    };

    // Restores of the latest snapshot, each into a fresh filesystem of each kind.
    let targets = restore_targets();
    let mut restores: Vec<[f64; 3]> = Vec::new();
    for t in &targets {
        let h = restore_into(
            &work,
            t,
            "hearth-restore",
            |d| restore(&store, &incr.id, d, 0, None).expect("restore"),
            |d| {
                sh(&format!(
                    "diff -r --no-dereference '{}' '{}'",
                    src.display(),
                    d.display()
                ))
            },
        );
        let (mut r, mut tz) = (f64::NAN, f64::NAN);
        if !only_hearth {
            r = restore_into(
                &work,
                t,
                "restic-restore",
                |d| {
                    sh(&restic(&format!(
                        "restore latest --target '{}' >/dev/null",
                        d.display()
                    )))
                },
                |_| {},
            );
            tz = restore_into(
                &work,
                t,
                "tar-restore",
                |d| {
                    sh(&format!(
                        "zstd -q -dc '{}' | tar -C '{}' -xf -",
                        tarball.display(),
                        d.display()
                    ))
                },
                |_| {},
            );
        }
        restores.push([h, r, tz]);
    }

    let h_store = du(&out.dir.join("hearth-store"));
    let r_store = du(&repo);
    let t_store = du(&tarball);
    println!();
    print!(
        "{:<16} {:>8} {:>10} {:>9}",
        "tool", "full s", "full MB/s", "incr s"
    );
    for t in &targets {
        let t = Path::new(t)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| t.clone());
        print!(" {:>18}", format!("restore {t} s"));
        print!(" {:>6}", "MB/s");
    }
    println!(" {:>9}", "store MB");
    let fmt = |v: f64, p: usize| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.p$}")
        }
    };
    for (k, (name, f, i, s)) in [
        ("hearth-snapshot", h_full, h_incr, h_store),
        ("restic", r_full, r_incr, r_store),
        ("tar|zstd -1", t_full, f64::NAN, t_store),
    ]
    .into_iter()
    .enumerate()
    {
        if only_hearth && k > 0 {
            break;
        }
        print!(
            "{:<16} {:>8} {:>10} {:>9}",
            name,
            fmt(f, 2),
            fmt(mb / f, 0),
            fmt(i, 2)
        );
        for r in &restores {
            print!(" {:>18} {:>6}", fmt(r[k], 2), fmt(mb / r[k], 0));
        }
        println!(" {:>9.0}", s as f64 / 1e6);
    }
    println!(
        "(hearth incremental uploaded {} bytes; each hearth restore verified with diff -r; \
         restores exclude the final writeback, for every tool)",
        incr.new_bytes
    );
}
