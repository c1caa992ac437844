//! Runs the real agent binary on a socket in a tempdir and drives it with the proto client.

use hearth_proto::client::{self, ExecReader};
use hearth_proto::{Event, ExecRequest};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

struct Agent {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    async fn start() -> Self {
        Self::start_env(&[]).await
    }

    /// Starts with exactly `env` as its environment, like a container would.
    async fn start_env(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let log = dir.path().join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_hearth-agent"))
            .arg("--listen")
            .arg(&sock)
            .env_clear()
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let agent = Agent {
            child,
            sock,
            log,
            _dir: dir,
        };
        let start = Instant::now();
        while client::ping(&agent.sock).await.is_err() {
            assert!(start.elapsed() < DEADLINE, "agent never answered ping");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        agent
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Waits for the agent to exit on its own; returns its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(start.elapsed() < DEADLINE, "agent did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM makes the agent stop everything it started.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while let Ok(None) = self.child.try_wait() {
                if start.elapsed() > DEADLINE {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

struct Output {
    stdout: String,
    stderr: String,
    code: i32,
}

async fn collect(mut r: ExecReader) -> Output {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match r.next_event().await.unwrap() {
            Event::Stdout(d) => stdout.extend(d),
            Event::Stderr(d) => stderr.extend(d),
            Event::Exit(code) => {
                return Output {
                    stdout: String::from_utf8_lossy(&stdout).into(),
                    stderr: String::from_utf8_lossy(&stderr).into(),
                    code,
                }
            }
        }
    }
}

async fn run(sock: &Path, r: ExecRequest) -> Output {
    let (_w, rd) = client::exec(sock, &r).await.unwrap().split();
    collect(rd).await
}

/// Process state letter from /proc/PID/stat, and its parent; `None` once it is gone.
fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    Some((state, f.next()?.parse().ok()?))
}

fn wait_gone(pid: i32) {
    let start = Instant::now();
    while proc_state(pid).is_some() {
        assert!(
            start.elapsed() < DEADLINE,
            "process {pid} still there: {:?}",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn zombie_children(ppid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(proc_state(*pid), Some(('Z', p)) if p == ppid))
        .collect()
}

#[tokio::test]
async fn ping_reports_version() {
    let a = Agent::start().await;
    assert_eq!(
        client::ping_version(&a.sock).await.unwrap(),
        hearth_proto::VERSION
    );
    assert!(a.log().contains("ready"), "{}", a.log());
}

#[tokio::test]
async fn echo_and_exit_codes() {
    let a = Agent::start().await;
    let out = run(&a.sock, req(&["echo", "hello", "world"])).await;
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.code),
        ("hello world\n", "", 0)
    );
    assert_eq!(run(&a.sock, req(&["sh", "-c", "exit 7"])).await.code, 7);
    assert_eq!(
        run(&a.sock, req(&["sh", "-c", "kill -9 $$"])).await.code,
        137
    );
    let log = a.log();
    assert!(log.contains("started cmd=\"echo\""), "{log}");
    assert!(log.contains("exited code=7"), "{log}");
}

#[tokio::test]
async fn stderr_is_separate() {
    let a = Agent::start().await;
    let out = run(
        &a.sock,
        req(&["sh", "-c", "echo out; echo err >&2; echo out2"]),
    )
    .await;
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.code),
        ("out\nout2\n", "err\n", 0)
    );
}

#[tokio::test]
async fn stdin_is_streamed_to_cat() {
    let a = Agent::start().await;
    let (mut w, r) = client::exec(&a.sock, &req(&["cat"])).await.unwrap().split();
    w.write_stdin(b"abc\n").await.unwrap();
    w.write_stdin(b"def").await.unwrap();
    w.close_stdin().await.unwrap();
    let out = collect(r).await;
    assert_eq!((out.stdout.as_str(), out.code), ("abc\ndef", 0));

    // More than pipe buffers and the frame limit, written while output is read, so a
    // blocking agent would deadlock.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut w, mut r) = client::exec(&a.sock, &req(&["cat"])).await.unwrap().split();
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        w.write_stdin(&data).await.unwrap();
        w.close_stdin().await.unwrap();
        w
    });
    let mut got = Vec::new();
    let code = loop {
        match r.next_event().await.unwrap() {
            Event::Stdout(d) => got.extend(d),
            Event::Stderr(d) => panic!("stderr: {}", String::from_utf8_lossy(&d)),
            Event::Exit(c) => break c,
        }
    };
    let _w = writer.await.unwrap();
    assert_eq!(code, 0);
    assert!(
        got == expect,
        "got {} bytes, want {}",
        got.len(),
        expect.len()
    );
}

#[tokio::test]
async fn dropping_the_writer_closes_stdin() {
    let a = Agent::start().await;
    let (mut w, r) = client::exec(&a.sock, &req(&["wc", "-c"]))
        .await
        .unwrap()
        .split();
    w.write_stdin(b"12345").await.unwrap();
    drop(w);
    let out = collect(r).await;
    assert_eq!((out.stdout.trim(), out.code), ("5", 0));
}

#[tokio::test]
async fn tty_session_and_resize() {
    let a = Agent::start().await;
    let mut r = req(&["tty"]);
    r.tty = true;
    let out = run(&a.sock, r).await;
    assert!(out.stdout.starts_with("/dev/pts/"), "{:?}", out.stdout);
    assert_eq!((out.stderr.as_str(), out.code), ("", 0));

    let mut r = req(&[
        "sh",
        "-c",
        "stty size; echo TERM=$TERM; read x; stty size; echo bad >&2; exit 3",
    ]);
    r.tty = true;
    r.rows = 24;
    r.cols = 80;
    let (mut w, mut rd) = client::exec(&a.sock, &r).await.unwrap().split();
    // Resize only once the first `stty size` has run, so it sees the initial size.
    let mut first = Vec::new();
    while !String::from_utf8_lossy(&first).contains("TERM=") {
        match rd.next_event().await.unwrap() {
            Event::Stdout(d) => first.extend(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    let first = String::from_utf8(first).unwrap();
    assert!(
        first.starts_with("24 80\r\nTERM=xterm-256color"),
        "{first:?}"
    );
    w.resize(50, 132).await.unwrap();
    w.write_stdin(b"\n").await.unwrap();
    let out = collect(rd).await;
    assert_eq!(out.code, 3);
    // One stream: stderr arrives on stdout; the pty turns \n into \r\n.
    assert_eq!(out.stderr, "");
    assert!(out.stdout.contains("50 132\r\nbad"), "{:?}", out.stdout);
}

#[tokio::test]
async fn exec_failures_give_shell_codes() {
    let a = Agent::start().await;
    let out = run(&a.sock, req(&["definitely-not-a-command", "x"])).await;
    assert_eq!(out.code, 127);
    assert_eq!(
        out.stderr,
        "hearth-agent: definitely-not-a-command: not found\n"
    );
    assert_eq!(out.stdout, "");

    let out = run(&a.sock, req(&["/nonexistent/bin/tool"])).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (127, "hearth-agent: /nonexistent/bin/tool: not found\n")
    );

    let script = a._dir.path().join("noexec.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let out = run(&a.sock, req(&[script.to_str().unwrap()])).await;
    assert_eq!(out.code, 126);
    assert!(
        out.stderr.ends_with("noexec.sh: permission denied\n"),
        "{}",
        out.stderr
    );

    let mut r = req(&["true"]);
    r.cwd = Some("/nonexistent-dir".into());
    let out = run(&a.sock, r).await;
    assert_eq!(out.code, 126);
    assert!(
        out.stderr
            .starts_with("hearth-agent: chdir /nonexistent-dir: "),
        "{}",
        out.stderr
    );

    let err = client::exec(&a.sock, &ExecRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "empty argv");
}

#[tokio::test]
async fn users_env_and_cwd() {
    let a = Agent::start_env(&[
        ("FOO", "image"),
        ("BAR", "image"),
        ("HEARTH_DEFAULT_CWD", "/tmp"),
        ("HEARTH_DEFAULT_USER", "nobody"),
        ("HEARTH_WORKSPACE", "ws1"),
        // What crun/runc add for the agent itself; must not leak into sessions.
        ("HOME", "/root"),
    ])
    .await;
    let script = r#"echo "$FOO|$BAR|$HOME|$USER|$PWD|$PATH|$HEARTH_DEFAULT_USER"; id -u; id -g"#;
    let mut r = req(&["sh", "-c", script]);
    r.env = vec![("BAR".into(), "req".into())];
    let out = run(&a.sock, r).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "image|req|/nonexistent|nobody|/tmp|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|\n65534\n65534\n"
    );

    let mut r = req(&["sh", "-c", "id -u; id -g; echo $HOME; pwd"]);
    r.user = Some("0:4242".into());
    r.cwd = Some("/".into());
    let out = run(&a.sock, r).await;
    assert_eq!(out.stdout, "0\n4242\n/root\n/\n");

    let mut r = req(&["id"]);
    r.user = Some("nobody2".into());
    let err = client::exec(&a.sock, &r).await.unwrap_err();
    assert_eq!(err.to_string(), "user nobody2 not found");
}

#[tokio::test]
async fn signal_is_delivered_to_the_session() {
    let a = Agent::start().await;
    let s = client::exec(&a.sock, &req(&["sh", "-c", "sleep 100; echo not reached"]))
        .await
        .unwrap();
    let pid = s.pid() as i32;
    let (mut w, r) = s.split();
    assert!(proc_state(pid).is_some());
    w.signal(libc::SIGTERM).await.unwrap();
    let out = collect(r).await;
    assert_eq!((out.stdout.as_str(), out.code), ("", 143));
}

#[tokio::test]
async fn orphans_are_reaped() {
    let a = Agent::start().await;
    // The shell exits at once; its background sleep is orphaned onto the agent.
    let out = run(
        &a.sock,
        req(&["sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"]),
    )
    .await;
    assert_eq!(out.code, 0);
    let orphan: i32 = out.stdout.trim().parse().unwrap();
    if let Some((state, ppid)) = proc_state(orphan) {
        assert!(
            ppid == a.pid() || state == 'Z',
            "orphan parent {ppid}, agent {}",
            a.pid()
        );
    }
    wait_gone(orphan);
    // A parent that never waits: `exec sleep` inherits the exited `true` child.
    let out = run(&a.sock, req(&["sh", "-c", "true & exec sleep 0.1"])).await;
    assert_eq!(out.code, 0);
    assert_eq!(zombie_children(a.pid()), Vec::<i32>::new());
}

#[tokio::test]
async fn disconnecting_hangs_up_the_session() {
    let a = Agent::start().await;
    let s = client::exec(&a.sock, &req(&["sleep", "100"]))
        .await
        .unwrap();
    let pid = s.pid() as i32;
    assert!(proc_state(pid).is_some());
    drop(s);
    wait_gone(pid);
}

#[tokio::test]
async fn many_concurrent_sessions() {
    let a = Agent::start().await;
    let sock = a.sock.clone();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let sock = sock.clone();
            tokio::spawn(async move {
                let mut r = req(&["sh", "-c", "read x; echo $x-$0; exit $(( $0 % 50 ))"]);
                r.argv.push(i.to_string());
                let (mut w, rd) = client::exec(&sock, &r).await.unwrap().split();
                w.write_stdin(format!("in{i}\n").as_bytes()).await.unwrap();
                let out = collect(rd).await;
                assert_eq!(out.stdout, format!("in{i}-{i}\n"));
                assert_eq!(out.code, i % 50);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(zombie_children(a.pid()), Vec::<i32>::new());
}

#[tokio::test]
async fn sigterm_stops_sessions_and_exits_zero() {
    let mut a = Agent::start().await;
    let s = client::exec(&a.sock, &req(&["sleep", "100"]))
        .await
        .unwrap();
    let pid = s.pid() as i32;
    let (_w, r) = s.split();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(a.pid(), libc::SIGTERM) };
    let out = collect(r).await;
    assert_eq!(out.code, 143);
    assert_eq!(a.wait_exit(), Some(0));
    assert!(proc_state(pid).is_none());
    assert!(a.log().contains("stopped"), "{}", a.log());
}

#[tokio::test]
async fn garbage_gets_an_error_not_a_crash() {
    use std::io::{Read, Write};
    let a = Agent::start().await;
    let mut s = std::os::unix::net::UnixStream::connect(&a.sock).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let (k, payload) = hearth_proto::read_frame(&mut &reply[..]).unwrap().unwrap();
    assert_eq!(k, hearth_proto::kind::ERROR);
    assert!(String::from_utf8_lossy(&payload).contains("unknown frame kind"));
    client::ping(&a.sock).await.unwrap();
}
