//! Hidden load and probe tools for `hearth bench cpu` (and `http` for `hearth bench
//! --proxy`): the agent binary is in every workspace (`/.hearth/agent`), so the benchmark
//! needs nothing from the image.
//!
//! - `probe`: an interactive task (sleep, then a little CPU work, repeated); prints each
//!   iteration's latency from the intended wake-up to the end of its work, in µs.
//! - `spin`: CPU-bound threads; prints the CPU they got by given wall-clock marks (from
//!   the threads' own CPU clocks) and, for fairness runs, the process's CPU over time.
//! - `membomb`: allocates and touches memory until it holds the asked amount (or is
//!   killed), then keeps touching it.
//! - `http`: answers HTTP/1.1 requests with a 6-byte body on kept-alive connections, so
//!   the proxy's own cost per request shows without a connection's.
//!
//! Results are printed at the end (or in small lines), never while measuring.

use std::io::Write;
use std::time::Duration;

/// Nanoseconds on `clock`.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec passed; the clocks used here exist
    // on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Sleeps until CLOCK_MONOTONIC reaches `at_ns` (absolute, so the intended wake-up is
/// exact whatever the sleep call costs).
fn sleep_until(at_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: plain syscall on a valid timespec; EINTR just returns early and the loop
    // below sleeps again.
    while unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    } == libc::EINTR
    {}
}

/// Burns this thread's CPU until it has used `ns` more of it.
fn work(ns: u64) {
    let until = thread_cpu_ns() + ns;
    let mut x = 1u64;
    while thread_cpu_ns() < until {
        for _ in 0..64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// `--name value` options; every value is a number or a comma-separated list of them.
struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(
        args: impl Iterator<Item = std::ffi::OsString>,
        known: &[&str],
    ) -> Result<Opts, String> {
        let mut out = Vec::new();
        let mut args = args.map(|a| a.to_string_lossy().into_owned());
        while let Some(a) = args.next() {
            let name = a
                .strip_prefix("--")
                .filter(|n| known.contains(n))
                .ok_or_else(|| {
                    format!("unknown argument {a:?} (options: --{})", known.join(" --"))
                })?;
            let v = args
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            out.push((name.to_string(), v));
        }
        Ok(Opts(out))
    }

    fn num(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.0.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => v
                .parse()
                .map_err(|_| format!("--{name} wants a number, got {v:?}")),
            None => Ok(default),
        }
    }

    fn list(&self, name: &str) -> Result<Vec<u64>, String> {
        match self.0.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .map_err(|_| format!("--{name} wants numbers, got {v:?}"))
                })
                .collect(),
            None => Ok(Vec::new()),
        }
    }
}

/// `probe --iterations N --sleep-ms S --work-us W`: N times, sleep S ms (absolute
/// deadline), then W µs of CPU; prints one latency per line (µs from the intended
/// wake-up to the end of the work), after the last iteration.
pub fn probe(args: impl Iterator<Item = std::ffi::OsString>) -> Result<(), String> {
    let o = Opts::parse(args, &["iterations", "sleep-ms", "work-us"])?;
    let n = o.num("iterations", 500)? as usize;
    let sleep = o.num("sleep-ms", 10)? * 1_000_000;
    let work_ns = o.num("work-us", 1000)? * 1000;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let wake = mono_ns() + sleep;
        sleep_until(wake);
        work(work_ns);
        lat.push(mono_ns().saturating_sub(wake) / 1000);
    }
    let mut out = String::with_capacity(n * 8);
    for l in lat {
        out.push_str(&l.to_string());
        out.push('\n');
    }
    write_out(&out)
}

/// `spin --threads T --ms D [--marks 100,500] [--every-ms E]`: T threads spin for D ms
/// of wall time (0: until killed). Prints `mark MS CPU_MS` for each mark (the threads'
/// summed CPU clocks when wall time since the start passed MS), with `--every-ms` an
/// `at MONO_MS CPU_MS` line every E ms (CLOCK_MONOTONIC, the process's CPU clock), and
/// finally `total WALL_MS CPU_MS`.
pub fn spin(args: impl Iterator<Item = std::ffi::OsString>) -> Result<(), String> {
    let o = Opts::parse(args, &["threads", "ms", "marks", "every-ms"])?;
    let threads = o.num("threads", 2)?.max(1) as usize;
    let ms = o.num("ms", 0)?;
    let marks = o.list("marks")?;
    let every = o.num("every-ms", 0)?;
    let t0 = mono_ns();
    let cpu0 = process_cpu_ns();
    let end = (ms > 0).then(|| t0 + ms * 1_000_000);
    let mut handles = Vec::with_capacity(threads);
    for _ in 0..threads {
        let marks = marks.clone();
        let h = std::thread::Builder::new()
            .name("spin".into())
            .spawn(move || spin_thread(t0, end, &marks))
            .map_err(|e| format!("start spin thread: {e}"))?;
        handles.push(h);
    }
    if every > 0 {
        let mut next = t0;
        loop {
            next += every * 1_000_000;
            if end.is_some_and(|e| next > e) {
                break;
            }
            sleep_until(next);
            let line = format!(
                "at {} {:.1}\n",
                mono_ns() / 1_000_000,
                ms_of(process_cpu_ns() - cpu0)
            );
            write_out(&line)?;
        }
    }
    let mut at_marks = vec![0u64; marks.len()];
    for h in handles {
        let got = h.join().map_err(|_| "spin thread panicked".to_string())?;
        for (sum, v) in at_marks.iter_mut().zip(got) {
            *sum += v;
        }
    }
    let mut out = String::new();
    for (m, cpu) in marks.iter().zip(at_marks) {
        out.push_str(&format!("mark {m} {:.1}\n", ms_of(cpu)));
    }
    out.push_str(&format!(
        "total {:.1} {:.1}\n",
        ms_of(mono_ns() - t0),
        ms_of(process_cpu_ns() - cpu0)
    ));
    write_out(&out)
}

/// Spins until `end`; returns this thread's CPU time (ns) at each wall-clock mark (ms
/// after `t0`). A mark passed while the thread was off the CPU is read when it runs
/// again, which is the same CPU time.
fn spin_thread(t0: u64, end: Option<u64>, marks: &[u64]) -> Vec<u64> {
    let cpu0 = thread_cpu_ns();
    let mut got = vec![0u64; marks.len()];
    let mut next = 0;
    let mut x = 1u64;
    loop {
        let now = mono_ns();
        while next < marks.len() && now >= t0 + marks[next] * 1_000_000 {
            got[next] = thread_cpu_ns() - cpu0;
            next += 1;
        }
        if end.is_some_and(|e| now >= e) {
            // Marks after the end report everything the thread got.
            let total = thread_cpu_ns() - cpu0;
            for g in &mut got[next..] {
                *g = total;
            }
            return got;
        }
        for _ in 0..256 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// `membomb --mb N`: allocates and writes N MiB (0: without end) in 16 MiB steps, then
/// keeps rewriting it; inside a memory limit the kernel reclaims and finally OOM-kills it.
pub fn membomb(args: impl Iterator<Item = std::ffi::OsString>) -> Result<(), String> {
    const STEP: usize = 16 << 20;
    const PAGE: usize = 4096;
    let o = Opts::parse(args, &["mb"])?;
    let want = o.num("mb", 0)? as usize * (1 << 20);
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut round = 1u8;
    loop {
        if want == 0 || held.len() * STEP < want {
            let mut v = vec![0u8; STEP];
            for p in (0..STEP).step_by(PAGE) {
                v[p] = round;
            }
            held.push(v);
        } else {
            round = round.wrapping_add(1);
            for v in &mut held {
                for p in (0..STEP).step_by(PAGE) {
                    v[p] = round;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn ms_of(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// `http --port P`: listens on all addresses at P and answers every request (its head;
/// a body is not expected) with `200` and `hello\n`, keeping each connection open until
/// the client closes it; a thread per connection. Runs until killed.
pub fn http(args: impl Iterator<Item = std::ffi::OsString>) -> Result<(), String> {
    let o = Opts::parse(args, &["port"])?;
    let port = u16::try_from(o.num("port", 8081)?).map_err(|_| "--port: 1 to 65535")?;
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| format!("listen on port {port}: {e}"))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                match buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    Some(end) => {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n";
                        if conn.write_all(answer).is_err() {
                            return;
                        }
                    }
                    None => match std::io::Read::read(&mut conn, &mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) if buf.len() + n > 64 * 1024 => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    },
                }
            }
        });
    }
    Ok(())
}

fn write_out(s: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("write stdout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> impl Iterator<Item = std::ffi::OsString> {
        a.iter()
            .map(std::ffi::OsString::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn options_parse_numbers_and_lists() {
        let o = Opts::parse(
            args(&["--ms", "50", "--marks", "100,500"]),
            &["ms", "marks"],
        )
        .unwrap();
        assert_eq!(o.num("ms", 0).unwrap(), 50);
        assert_eq!(o.num("missing", 7).unwrap(), 7);
        assert_eq!(o.list("marks").unwrap(), vec![100, 500]);
        assert!(Opts::parse(args(&["--bogus", "1"]), &["ms"]).is_err());
        assert!(Opts::parse(args(&["--ms"]), &["ms"]).is_err());
        let o = Opts::parse(args(&["--ms", "x"]), &["ms"]).unwrap();
        assert!(o.num("ms", 0).is_err());
    }

    #[test]
    fn work_uses_at_least_the_cpu_asked_for() {
        let c0 = thread_cpu_ns();
        work(2_000_000);
        assert!(thread_cpu_ns() - c0 >= 2_000_000);
    }
}
