//! The SSH gateway with the real OpenSSH client (`ssh`, `scp`, `sftp`): keys, exec, PTY
//! and window changes, env, file transfer, `-L`/`-R`, start on connect, a stable host key,
//! and the refusals. Every client run uses a temporary HOME, key and known_hosts (`-F
//! /dev/null`, `IdentitiesOnly`), so the real ~/.ssh is never read or written.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::gitserver::GitServer;
use common::{git_repo, TestServer};
use common::{keygen, sh};

/// A temporary client side: HOME, one registered key, and known_hosts.
struct Client {
    home: tempfile::TempDir,
    key: PathBuf,
    port: u16,
}

/// `GET path` on the API with the server's token: status and body.
fn api_get(srv: &TestServer, path: &str) -> (u16, String) {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(srv.data_dir().join("server.json")).unwrap())
            .unwrap();
    let addr = info["url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://")
        .unwrap()
        .to_string();
    let token = std::fs::read_to_string(srv.data_dir().join("token")).unwrap();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out.split_once("\r\n\r\n").unwrap().1.to_string())
}

fn gateway_port(srv: &TestServer) -> u16 {
    let (status, body) = api_get(srv, "/v1/ssh");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["port"].as_u64().expect("gateway port") as u16
}

impl Client {
    /// Makes a key and registers it with the server through the CLI.
    fn new(srv: &TestServer) -> Client {
        let home = tempfile::tempdir().unwrap();
        let key = keygen(home.path(), "id_ed25519");
        let pubkey = key.with_extension("pub");
        let out = srv.ok(&["ssh-key", "add", pubkey.to_str().unwrap()]);
        assert!(out.contains("added ssh-ed25519 key SHA256:"), "{out}");
        Client {
            home,
            key,
            port: gateway_port(srv),
        }
    }

    fn known_hosts(&self) -> PathBuf {
        self.home.path().join("known_hosts")
    }

    /// Options every client run gets; `strict` is `StrictHostKeyChecking`'s value.
    fn opts(&self, key: &Path, strict: &str) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
            "-o",
            &format!("StrictHostKeyChecking={strict}"),
            "-o",
            &format!("UserKnownHostsFile={}", self.known_hosts().display()),
            "-i",
            key.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `ssh -p PORT user@127.0.0.1 ARGS...` with the registered key.
    fn ssh(&self, user: &str, args: &[&str]) -> Command {
        self.ssh_with_key(&self.key, user, args)
    }

    fn ssh_with_key(&self, key: &Path, user: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.env("HOME", self.home.path())
            .args(self.opts(key, "accept-new"))
            .args(["-p", &self.port.to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .args(args);
        c
    }

    /// Runs `cmd` in the workspace over ssh; asserts success, returns stdout.
    fn run(&self, ws: &str, cmd: &str) -> String {
        let out = sh(&mut self.ssh(ws, &[cmd]));
        assert!(
            out.status.success(),
            "ssh {ws} {cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `scp` or `sftp` with the registered key (they take `-P` for the port).
    fn file_tool(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.env("HOME", self.home.path())
            .args(self.opts(&self.key, "accept-new"))
            .args(["-P", &self.port.to_string()]);
        c
    }
}

fn workspace(srv: &TestServer, parent: &Path, name: &str) -> String {
    let repo = git_repo(parent, name);
    srv.ok(&["up", repo.to_str().unwrap(), "--image", "busybox"]);
    name.to_string()
}

fn assert_refused(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(255), "{what} was let in: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Permission denied (publickey)"),
        "{what}: {err}"
    );
}

/// A terminal the test drives: ssh runs on its slave side as its controlling tty.
struct Pty {
    master: OwnedFd,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn spawn(mut cmd: Command, rows: u16, cols: u16) -> (Pty, std::process::Child) {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let p = nix::pty::openpty(Some(&ws), None).unwrap();
        let slave = p.slave;
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave.try_clone().unwrap());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(slave);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = std::fs::File::from(p.master.try_clone().unwrap());
        let s2 = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s2.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        (
            Pty {
                master: p.master,
                seen,
            },
            child,
        )
    }

    fn send(&self, s: &str) {
        let mut f = std::fs::File::from(self.master.try_clone().unwrap());
        f.write_all(s.as_bytes()).unwrap();
    }

    /// Waits until the output holds `needle`; then forgets what was read so far.
    fn expect(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let mut seen = self.seen.lock().unwrap();
                let n = needle.as_bytes();
                if let Some(i) = seen.windows(n.len()).position(|w| w == n) {
                    seen.drain(..i + n.len());
                    return;
                }
                let text = String::from_utf8_lossy(&seen).into_owned();
                assert!(
                    Instant::now() < deadline,
                    "no {needle:?} on the terminal; got {text:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
        let r = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ssh did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keys_exec_pty_env_and_refusals() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let ws = workspace(&srv, src.path(), "box");
    let c = Client::new(&srv);

    // Keys: listed with ssh-keygen's fingerprint; duplicates, junk and private keys refused.
    let pubkey = c.key.with_extension("pub");
    let fp_out = sh(Command::new("ssh-keygen").arg("-lf").arg(&pubkey));
    let fp = String::from_utf8(fp_out.stdout).unwrap();
    let fp = fp.split_whitespace().nth(1).unwrap().to_string();
    assert!(srv.ok(&["ssh-key", "ls"]).contains(&fp));
    let err = srv.fails(&["ssh-key", "add", pubkey.to_str().unwrap()]);
    assert!(err.contains("already registered"), "{err}");
    let junk = src.path().join("junk.pub");
    std::fs::write(&junk, "ssh-ed25519 this-is-not-base64 x\n").unwrap();
    let err = srv.fails(&["ssh-key", "add", junk.to_str().unwrap()]);
    assert!(err.contains("not an OpenSSH public key"), "{err}");
    let err = srv.fails(&["ssh-key", "add", c.key.to_str().unwrap()]);
    assert!(err.contains("private key"), "{err}");

    // Exec: output streams apart, the exit status comes back.
    let out = sh(&mut c.ssh(&ws, &["echo out; echo err >&2; exit 7"]));
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // A signal's death is an exit-signal (ssh exits 255, as with sshd), not an exit 143.
    let out = sh(&mut c.ssh(&ws, &["kill -TERM $$"]));
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let out = sh(&mut c.ssh(&ws, &["exit 143"]));
    assert_eq!(out.status.code(), Some(143), "{out:?}");
    // Stdin reaches the command and its end is seen.
    let mut child = c
        .ssh(&ws, &["wc -c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&[b'x'; 100_000])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100000");

    // Env requests.
    let out = sh(&mut c.ssh(&ws, &["-o", "SetEnv=HEARTH_T=hello", "echo $HEARTH_T"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{out:?}");
    // The owner's secrets are in SSH sessions too, under what the client sets.
    let set = srv.hearth_stdin(&["secret", "set", "SSH_SECRET"], b"from-secret\n");
    assert!(set.status.success(), "{set:?}");
    let out = sh(&mut c.ssh(&ws, &["echo $SSH_SECRET"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from-secret\n",
        "{out:?}"
    );
    let out = sh(&mut c.ssh(&ws, &["-o", "SetEnv=SSH_SECRET=mine", "echo $SSH_SECRET"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mine\n", "{out:?}");

    // A PTY of the client's size, then a window change, then the shell's exit status.
    let mut cmd = c.ssh(&ws, &["-tt"]);
    cmd.env("TERM", "xterm");
    let (pty, mut child) = Pty::spawn(cmd, 33, 101);
    pty.send("stty size; tty; echo TERM=$TERM\n");
    pty.expect("33 101");
    pty.expect("/dev/pts/");
    pty.expect("TERM=xterm");
    pty.resize(40, 120);
    // The client sends the change when it sees SIGWINCH; ask until the shell agrees.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        pty.send("stty size\n");
        std::thread::sleep(Duration::from_millis(300));
        let text = String::from_utf8_lossy(&pty.seen.lock().unwrap()).into_owned();
        if text.contains("40 120") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "window change not seen: {text:?}"
        );
    }
    pty.send("exit 5\n");
    assert_eq!(wait_exit(&mut child).code(), Some(5));

    // Refusals all look alike: unknown key, unknown workspace, invalid name.
    let stranger = keygen(c.home.path(), "stranger");
    assert_refused(
        &sh(&mut c.ssh_with_key(&stranger, &ws, &["true"])),
        "an unknown key",
    );
    assert_refused(&sh(&mut c.ssh("nosuch", &["true"])), "a missing workspace");
    assert_refused(&sh(&mut c.ssh("Bad_Name", &["true"])), "an invalid name");

    // A removed key no longer gets in; `ls` by fingerprint is gone.
    srv.ok(&["ssh-key", "rm", &fp]);
    assert!(!srv.ok(&["ssh-key", "ls"]).contains(&fp));
    assert_refused(&sh(&mut c.ssh(&ws, &["true"])), "a removed key");
}

/// Sha256 of a file as `sha256sum` prints it.
fn sha256(path: &Path) -> String {
    let out = sh(Command::new("sha256sum").arg(path));
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn scp_sftp_and_port_forwarding() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let ws = workspace(&srv, src.path(), "files");
    let c = Client::new(&srv);

    // 100 MB both ways with scp (the sftp protocol underneath) and with sftp.
    let big = src.path().join("big");
    let out = sh(Command::new("head")
        .args(["-c", "100000000", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).unwrap()));
    assert!(out.status.success());
    let want = sha256(&big);
    let dest = format!("{ws}@127.0.0.1:/tmp/up.bin");
    let out = sh(c.file_tool("scp").arg(&big).arg(&dest));
    assert!(out.status.success(), "scp up: {out:?}");
    assert_eq!(&c.run(&ws, "sha256sum /tmp/up.bin")[..64], want);
    let back = src.path().join("back");
    let out = sh(c.file_tool("scp").arg(&dest).arg(&back));
    assert!(out.status.success(), "scp down: {out:?}");
    assert_eq!(sha256(&back), want);

    let batch = src.path().join("batch");
    let back2 = src.path().join("back2");
    std::fs::write(
        &batch,
        format!(
            "mkdir d\nput {} d/x\nrename d/x d/y\nls d\nget d/y {}\nsymlink d/y d/link\nrm d/y\nrm d/link\nrmdir d\n",
            big.display(),
            back2.display()
        ),
    )
    .unwrap();
    let out = sh(c
        .file_tool("sftp")
        .arg("-b")
        .arg(&batch)
        .arg(format!("{ws}@127.0.0.1")));
    assert!(out.status.success(), "sftp: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("d/y"),
        "{out:?}"
    );
    assert_eq!(sha256(&back2), want);
    // Relative sftp paths were in the home directory, and everything was removed again.
    assert_eq!(c.run(&ws, "ls -a ~ | grep -c '^d$' || true").trim(), "0");

    // -L: a server bound to 127.0.0.1 inside the workspace, reached from here.
    c.run(
        &ws,
        "mkdir -p /www && echo hello-from-inside > /www/index.html && httpd -p 127.0.0.1:8080 -h /www",
    );
    let local = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut fwd = c
        .ssh(
            &ws,
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("{local}:127.0.0.1:8080"),
            ],
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let body = http_get_retrying(local);
    let _ = fwd.kill();
    let _ = fwd.wait();
    assert!(body.contains("hello-from-inside"), "{body}");

    // -R: a server on this host, reached from inside the workspace.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = host.accept().unwrap();
        s.write_all(b"hello-from-host\n").unwrap();
    });
    let mut rev = c
        .ssh(
            &ws,
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &format!("9000:127.0.0.1:{host_port}"),
            ],
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let out = srv.hearth(&[
            "exec",
            &ws,
            "--",
            "sh",
            "-c",
            "nc 127.0.0.1 9000 </dev/null",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("hello-from-host") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = rev.kill();
    let _ = rev.wait();
    assert!(got.contains("hello-from-host"), "{got:?}");
    server.join().unwrap();
}

/// GET / through a local forward, retrying while ssh sets it up.
fn http_get_retrying(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.contains("200") {
                return out;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no answer through the -L forward"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn starts_a_stopped_workspace_and_keeps_its_host_key() {
    // A fixed port, so known_hosts names the same host after the restart.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut srv = TestServer::start_with(&["--ssh-listen", &listen]);
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let ws = workspace(&srv, src.path(), "sleepy");
    let c = Client::new(&srv);
    assert_eq!(c.port, port);

    srv.ok(&["stop", &ws]);
    assert_eq!(srv.workspaces()[0]["state"], "stopped");
    assert_eq!(
        c.run(&ws, "cat /workspace/sleepy/README.md"),
        "hello from the repo\n"
    );
    assert_eq!(srv.workspaces()[0]["state"], "running");

    let key_file = srv.data_dir().join("ssh_host_ed25519_key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let known = std::fs::read_to_string(c.known_hosts()).unwrap();
    assert!(
        known.contains(&format!("[127.0.0.1]:{port} ssh-ed25519 ")),
        "{known}"
    );

    srv.kill();
    srv.spawn();
    // Strict checking against what the first connection recorded.
    let mut cmd = Command::new("ssh");
    cmd.env("HOME", c.home.path())
        .args(c.opts(&c.key, "yes"))
        .args(["-p", &port.to_string()])
        .arg(format!("{ws}@127.0.0.1"))
        .arg("echo same-key");
    let out = sh(&mut cmd);
    assert!(
        out.status.success(),
        "host key changed across a restart: {out:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "same-key\n");
}

#[test]
fn hearth_ssh_and_config_ssh() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let a = workspace(&srv, src.path(), "alpha");
    let b = workspace(&srv, src.path(), "beta");
    let c = Client::new(&srv);
    let home = c.home.path();
    let ssh_dir = home.join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let mine = "Host github.com\n    User git\n";
    std::fs::write(ssh_dir.join("config"), mine).unwrap();

    let cli = |args: &[&str]| -> Output {
        let mut cmd = Command::new(common::HEARTH);
        cmd.arg("--data-dir")
            .arg(srv.data_dir())
            .args(args)
            .env("HOME", home)
            .env_remove("SSH_AUTH_SOCK");
        sh(&mut cmd)
    };
    let out = cli(&["config-ssh"]);
    assert!(out.status.success(), "{out:?}");
    let first = std::fs::read_to_string(ssh_dir.join("config")).unwrap();
    assert!(first.starts_with(mine), "{first}");
    assert!(first.contains("Host hearth.alpha\n") && first.contains("Host hearth.beta\n"));
    // Idempotent.
    let out = cli(&["config-ssh"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(ssh_dir.join("config")).unwrap(),
        first
    );

    // The entry works as written, host key included (strict checking, hearth's known_hosts).
    let out = sh(Command::new("ssh")
        .env("HOME", home)
        .arg("-F")
        .arg(ssh_dir.join("config"))
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(&c.key)
        .args([&format!("hearth.{a}"), "echo via-config"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-config\n");

    // A removed workspace disappears, the user's own entry stays.
    srv.ok(&["rm", &b]);
    assert!(cli(&["config-ssh"]).status.success());
    let after = std::fs::read_to_string(ssh_dir.join("config")).unwrap();
    assert!(
        after.starts_with(mine) && after.contains("hearth.alpha") && !after.contains("hearth.beta")
    );

    // `hearth ssh NAME -- cmd` runs the system ssh; the key comes from an agent here.
    let agent_sock = home.join("agent.sock");
    let out = sh(Command::new("ssh-agent").arg("-a").arg(&agent_sock));
    assert!(out.status.success(), "ssh-agent: {out:?}");
    let agent_pid = String::from_utf8_lossy(&out.stdout)
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse::<i32>().ok())
        .expect("agent pid");
    let added = sh(Command::new("ssh-add")
        .arg(&c.key)
        .env("SSH_AUTH_SOCK", &agent_sock));
    let out = {
        let mut cmd = Command::new(common::HEARTH);
        cmd.arg("--data-dir")
            .arg(srv.data_dir())
            .args(["ssh", &a, "--", "echo", "via-hearth-ssh"])
            .env("HOME", home)
            .env("SSH_AUTH_SOCK", &agent_sock);
        sh(&mut cmd)
    };
    // SAFETY: plain kill(2) of the agent this test started.
    unsafe { libc::kill(agent_pid, libc::SIGTERM) };
    assert!(added.status.success(), "ssh-add: {added:?}");
    assert!(out.status.success(), "hearth ssh: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-hearth-ssh\n");
}

#[test]
fn each_user_reaches_only_their_own_workspaces() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let admins = workspace(&srv, src.path(), "admins");
    let admin = Client::new(&srv);

    // Bob: his own token, key and workspace.
    let bob_token = srv.ok(&["user", "add", "bob"]).trim().to_string();
    let as_bob = |args: &[&str]| {
        let mut all = vec!["--token", bob_token.as_str()];
        all.extend_from_slice(args);
        srv.ok(&all)
    };
    // Bob is no admin: his source is a git server's URL.
    let git = GitServer::start(src.path());
    let repo = git.url(&git_repo(src.path(), "bobs"));
    as_bob(&["up", &repo, "--image", "busybox"]);
    let bob_home = tempfile::tempdir().unwrap();
    let bob_key = keygen(bob_home.path(), "bob");
    let out = as_bob(&[
        "ssh-key",
        "add",
        bob_key.with_extension("pub").to_str().unwrap(),
    ]);
    assert!(out.contains("for user bob"), "{out}");
    // Keys are per user: bob sees only his.
    let listed = as_bob(&["ssh-key", "ls"]);
    assert!(
        listed.contains("bob") && !listed.contains("id_ed25519"),
        "{listed}"
    );

    assert_eq!(admin.run("bobs", "echo admin-in-bobs"), "admin-in-bobs\n");
    let out = sh(&mut admin.ssh_with_key(&bob_key, "bobs", &["echo bob-in-bobs"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bob-in-bobs\n",
        "{out:?}"
    );
    // Bob's key on the admin's workspace is refused like a workspace that does not exist.
    assert_refused(
        &sh(&mut admin.ssh_with_key(&bob_key, &admins, &["true"])),
        "another user's workspace",
    );

    // A removed user's keys go with them.
    srv.ok(&["rm", "bobs"]);
    srv.ok(&["user", "rm", "bob"]);
    let repo = git_repo(src.path(), "bobs2");
    srv.ok(&["up", repo.to_str().unwrap(), "--image", "busybox"]);
    assert_refused(
        &sh(&mut admin.ssh_with_key(&bob_key, "bobs2", &["true"])),
        "a removed user's key",
    );
}

/// Asks the agent at `$SSH_AUTH_SOCK` for its identities (SSH2_AGENTC_REQUEST_IDENTITIES)
/// and prints the answer's type and key count; the Debian image has perl, not ssh-add.
const AGENT_QUERY: &str = r#"perl <<'EOF'
use IO::Socket::UNIX;
my $s = IO::Socket::UNIX->new(Peer => $ENV{SSH_AUTH_SOCK}) or die "connect: $!";
print $s pack("NC", 1, 11);
read($s, my $h, 4) == 4 or die "short answer";
read($s, my $b, unpack("N", $h));
my ($type, $n) = unpack("CN", $b);
print "type=$type keys=$n\n";
EOF"#;

#[test]
fn agent_forwarding_and_sftp_on_an_image_without_sshd() {
    let image = std::env::var_os("HEARTH_TEST_DEBIAN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hearth-images/test/debian.tar"));
    assert!(
        image.is_file(),
        "{} missing: set HEARTH_TEST_DEBIAN or run scripts/test.sh",
        image.display()
    );
    let srv = TestServer::start();
    srv.ok(&["image", "load", image.to_str().unwrap(), "--name", "debian"]);
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "deb");
    srv.ok(&["up", repo.to_str().unwrap(), "--image", "debian"]);
    let c = Client::new(&srv);
    assert_eq!(
        c.run(
            "deb",
            "command -v sftp-server /usr/lib/openssh/sftp-server || echo none"
        ),
        "none\n"
    );

    let sock = c.home.path().join("agent.sock");
    let out = sh(Command::new("ssh-agent").arg("-a").arg(&sock));
    assert!(out.status.success(), "ssh-agent: {out:?}");
    let agent_pid = String::from_utf8_lossy(&out.stdout)
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse::<i32>().ok())
        .expect("agent pid");
    let added = sh(Command::new("ssh-add")
        .arg(&c.key)
        .env("SSH_AUTH_SOCK", &sock));
    let forwarded = sh(c
        .ssh("deb", &["-A", AGENT_QUERY])
        .env("SSH_AUTH_SOCK", &sock));
    let plain = sh(&mut c.ssh("deb", &["echo \"sock=$SSH_AUTH_SOCK\""]));
    // SAFETY: plain kill(2) of the agent this test started.
    unsafe { libc::kill(agent_pid, libc::SIGTERM) };
    assert!(added.status.success(), "ssh-add: {added:?}");
    assert_eq!(
        String::from_utf8_lossy(&forwarded.stdout),
        "type=12 keys=1\n",
        "{forwarded:?}"
    );
    // Without -A there is no socket; the relay removes its own once the session is over.
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        "sock=\n",
        "{plain:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while srv.exec("deb", &["sh", "-c", "ls /tmp | grep -c hearth-ssh || true"]) != "0\n" {
        assert!(
            Instant::now() < deadline,
            "the relay's socket stayed after the session"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // sftp works on an image that has no sftp-server of its own.
    let file = src.path().join("f");
    std::fs::write(&file, b"over sftp\n").unwrap();
    let batch = src.path().join("batch");
    std::fs::write(&batch, format!("put {} /tmp/f\n", file.display())).unwrap();
    let out = sh(c
        .file_tool("sftp")
        .arg("-b")
        .arg(&batch)
        .arg("deb@127.0.0.1"));
    assert!(out.status.success(), "sftp: {out:?}");
    assert_eq!(c.run("deb", "cat /tmp/f"), "over sftp\n");
}

/// State of workspace `name` as the API lists it.
fn state_of(srv: &TestServer, name: &str) -> serde_json::Value {
    srv.workspaces()
        .into_iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no workspace {name}"))
}

/// Waits (bounded, never timed) until `name` is stopped; its stop reason is there by
/// then (it is recorded before the state).
fn wait_stopped(srv: &TestServer, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let w = state_of(srv, name);
        if w["state"] == "stopped" {
            assert!(!w["stop_reason"].is_null(), "stopped without a reason: {w}");
            return w;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not stop: {w}\n{}",
            srv.server_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_open_ssh_connection_keeps_its_workspace_from_idle_stop() {
    let srv = TestServer::start_with(&["--idle-timeout", "2s", "--idle-check-interval", "200ms"]);
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let held = workspace(&srv, src.path(), "held");
    let c = Client::new(&srv);
    // A connection that sits there, as an editor's does between keystrokes.
    let mut conn = c
        .ssh(&held, &["echo open; exec sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ssh");
    let mut first = [0u8; 5];
    conn.stdout.take().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"open\n");
    // Made after the connection opened, so it was last active later than `held`: once it
    // has stopped as idle, `held` has been idle past its timeout too, and only the open
    // connection keeps it running.
    let quiet = workspace(&srv, src.path(), "quiet");
    let w = wait_stopped(&srv, &quiet);
    assert!(
        w["stop_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("stopped as idle")),
        "{w}"
    );
    let w = state_of(&srv, &held);
    assert_eq!(
        w["state"], "running",
        "stopped under an open ssh connection: {w}"
    );

    let _ = conn.kill();
    let _ = conn.wait();
    let w = wait_stopped(&srv, &held);
    assert!(
        w["stop_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("stopped as idle")),
        "{w}"
    );
}
