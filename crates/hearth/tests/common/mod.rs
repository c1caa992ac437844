//! Harness for end-to-end tests: a real `hearth server` with its own data dir, bridge,
//! subnet and cgroup parent, torn down (`hearth admin teardown --purge`) on drop.

#![allow(dead_code)]

pub mod gitserver;
pub mod images;
pub mod oidc;
pub mod registry;
pub mod s3;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

pub const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");

/// The agent binary: `HEARTH_AGENT`, else next to the hearth binary.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HEARTH_AGENT") {
        return PathBuf::from(p);
    }
    let p = Path::new(HEARTH).with_file_name("hearth-agent");
    assert!(
        p.is_file(),
        "no hearth-agent at {}: build it (scripts/build.sh) or set HEARTH_AGENT",
        p.display()
    );
    p
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub bridge: String,
    pub subnet: String,
    pub cgroup_parent: String,
    /// More `hearth server` flags, used on every spawn.
    pub server_args: Vec<String>,
    /// The server's RUST_LOG (`info`); a test that waits for a debug line sets more.
    pub log_filter: String,
    child: Option<Child>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    /// A server started with more `hearth server` flags.
    pub fn start_with(server_args: &[&str]) -> TestServer {
        let mut s = Self::prepare(server_args);
        s.spawn();
        s
    }

    /// A server with more `hearth server` flags, its data dir made but not started yet
    /// ([`TestServer::spawn`] starts it).
    pub fn prepare(server_args: &[&str]) -> TestServer {
        let mut rng = rand::thread_rng();
        let tag: String = (0..8)
            .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap())
            .collect();
        TestServer {
            dir: tempfile::Builder::new()
                .prefix("hearth-e2e-")
                .tempdir()
                .unwrap(),
            bridge: format!("ht{tag}"),
            subnet: format!(
                "10.{}.{}.0/24",
                rng.gen_range(100..=250),
                rng.gen_range(0..=255)
            ),
            cgroup_parent: format!("hearth-test-{tag}"),
            server_args: server_args.iter().map(|a| a.to_string()).collect(),
            log_filter: "info".into(),
            child: None,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server process and waits until it wrote server.json and answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let info = self.data_dir().join("server.json");
        let _ = std::fs::remove_file(&info);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir().join("server.log"))
            .unwrap();
        let child = Command::new(HEARTH)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--bridge",
                &self.bridge,
            ])
            .args([
                "--subnet",
                &self.subnet,
                "--cgroup-parent",
                &self.cgroup_parent,
            ])
            .arg("--agent")
            .arg(agent_binary())
            // Small, so tests run on a nearly full CI disk (tests may pass their own).
            .args(["--disk-reserve", "256M"])
            // Tests run side by side: the SSH gateway on a free port unless a test picks one.
            .args(if self.server_args.iter().any(|a| a == "--ssh-listen") {
                &[][..]
            } else {
                &["--ssh-listen", "127.0.0.1:0"][..]
            })
            // Never the host's default proxy port: tests run side by side.
            .args(["--proxy-listen", "127.0.0.1:0"])
            .args(&self.server_args)
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn hearth server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("hearth server exited with {st}:\n{}", self.server_log());
            }
            // Without a node of its own, image calls wait for a node to join.
            let probe: &[&str] = if self.server_args.iter().any(|a| a == "--no-local-node") {
                &["node", "ls"]
            } else {
                &["image", "ls"]
            };
            if info.exists() && self.hearth(probe).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hearth server did not come up:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server with SIGKILL, as a crash would; workspaces keep running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM, as an operator would, and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(st.success(), "kill -TERM {pid}");
            let st = c.wait().unwrap();
            assert!(
                st.success(),
                "server exited with {st}:\n{}",
                self.server_log()
            );
        }
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("server.log")).unwrap_or_default()
    }

    /// The CLI as a `Command` against this server, to run as the caller likes.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(HEARTH);
        c.arg("--data-dir").arg(self.data_dir()).args(args);
        c.env_remove("HEARTH_URL").env_remove("HEARTH_TOKEN");
        c
    }

    /// Starts the CLI in the background (output discarded), for killing the server under it.
    pub fn spawn_cli(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run hearth")
    }

    /// Runs the CLI with stdin closed.
    pub fn hearth(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run hearth")
    }

    /// Runs the CLI feeding `input` on stdin.
    pub fn hearth_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hearth");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// Runs the CLI, asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.hearth(args);
        assert!(
            out.status.success(),
            "hearth {args:?} failed ({}):\nstdout: {}\nstderr: {}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.server_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI, asserts it failed with exit code 1 and one `error: ` line; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.hearth(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "hearth {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        let last = stderr.lines().last().unwrap_or_default().to_string();
        assert!(
            last.starts_with("error: "),
            "hearth {args:?} stderr: {stderr}"
        );
        assert!(!last.contains("panicked"), "{stderr}");
        last
    }

    /// Output of a command run in a workspace.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", name, "--"];
        args.extend_from_slice(cmd);
        self.ok(&args)
    }

    pub fn load_busybox(&self) {
        let img = images::busybox_image(self.data_dir());
        self.ok(&["image", "load", img.to_str().unwrap(), "--name", "busybox"]);
    }

    /// Loads busybox with `USER dev` (uid 1000) as `busybox-dev`.
    pub fn load_busybox_dev(&self) {
        let img = images::busybox_dev_image(self.data_dir());
        self.ok(&[
            "image",
            "load",
            img.to_str().unwrap(),
            "--name",
            "busybox-dev",
        ]);
    }

    /// Loads the Debian test image (`HEARTH_TEST_DEBIAN`, which scripts/test.sh sets) as
    /// `debian`.
    pub fn load_debian(&self) {
        let path = std::env::var("HEARTH_TEST_DEBIAN").expect(
            "HEARTH_TEST_DEBIAN must name the Debian test image (scripts/test.sh builds it)",
        );
        self.ok(&["image", "load", &path, "--name", "debian"]);
    }

    /// Loads the builder image (`HEARTH_TEST_BUILDER`, else scripts/test.sh's cache) as
    /// `hearth-builder`, the server's default; a missing one fails, saying how to make it.
    pub fn load_builder(&self) {
        let path = std::env::var_os("HEARTH_TEST_BUILDER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/hearth-images/test/builder.tar"));
        assert!(
            path.is_file(),
            "builder image {} missing: run scripts/test.sh, or scripts/make-image.sh builder \
             FILE and set HEARTH_TEST_BUILDER",
            path.display()
        );
        self.ok(&[
            "image",
            "load",
            path.to_str().unwrap(),
            "--name",
            "hearth-builder",
        ]);
    }

    /// Workspaces as `hearth ls --json` reports them.
    pub fn workspaces(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ls", "--json"])).unwrap()
    }

    /// Workspace `name`'s row in `hearth ls --json`.
    pub fn workspace(&self, name: &str) -> serde_json::Value {
        self.workspaces()
            .into_iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("no workspace {name}"))
    }

    /// Workspace `name`'s directory on the node (`<data>/workspaces/<id>`).
    pub fn ws_dir(&self, name: &str) -> PathBuf {
        let id = self.workspace(name)["id"].as_str().unwrap().to_string();
        self.data_dir().join("workspaces").join(id)
    }

    pub fn workspace_names(&self) -> Vec<String> {
        self.workspaces()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        // Without an embedded node there is nothing on this host to tear down.
        if self.server_args.iter().any(|a| a == "--no-local-node") {
            return;
        }
        let out = self.hearth(&["admin", "teardown", "--purge"]);
        if !out.status.success() {
            eprintln!(
                "teardown of {} failed: {}",
                self.data_dir().display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Runs `cmd` with no stdin, collecting its output.
pub fn sh(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run command")
}

/// A new passphrase-less ed25519 key `dir/name` (and `.pub`), made by OpenSSH's ssh-keygen.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let out = sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key));
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    key
}

/// A git repository with one commit holding `README.md`, in `parent/name`.
pub fn git_repo(parent: &Path, name: &str) -> PathBuf {
    let repo = parent.join(name);
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("README.md"), "hello from the repo\n").unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "README.md"]);
    git(&["commit", "-q", "-m", "init"]);
    repo
}

/// A git repository `parent/name` with `files` (path, text) committed.
pub fn repo_with(parent: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let repo = git_repo(parent, name);
    commit_files(&repo, files);
    repo
}

/// Writes `files` (path, text) into `repo` and commits them; returns the commit.
pub fn commit_files(repo: &Path, files: &[(&str, &str)]) -> String {
    for (path, text) in files {
        let p = repo.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "devcontainer"]);
    git(&["rev-parse", "HEAD"])
}

/// The host uid that root inside maps to (second field of uid_map's first line).
pub fn uid_base(uid_map: &str) -> u64 {
    uid_map
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad uid_map {uid_map:?}"))
}

/// Simulates losing a stopped workspace's local copy (a dead disk, a move to a new node):
/// unmounts its disk and deletes its directory.
pub fn lose_local_data(ws_dir: &Path) {
    let disk = ws_dir.join("disk");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if info.lines().any(|l| l.split(' ').nth(4) == disk.to_str()) {
        let st = Command::new("umount").arg(&disk).status().unwrap();
        assert!(st.success(), "umount {}", disk.display());
    }
    std::fs::remove_dir_all(ws_dir).unwrap();
}

/// The largest pack in a local snapshot store: mostly the incompressible content of the
/// big file a test wrote, so moving or corrupting it reaches that file's chunks.
/// The largest pack in `store` (unencrypted) whose every object is a stored-raw chunk
/// of `data`'s bytes: moving it aside holds back part of `data` and nothing else (no tree,
/// no small files). Panics when there is none, naming what was found.
///
/// An object is `HSNP`, version, kind, flags, 0, plain length and body length (u32 LE
/// each), the body, a 32-byte checksum (see hearth-snapshot's format.rs); incompressible
/// data is stored raw (flags 0), so its body is a slice of `data`.
pub fn pack_holding_only(store: &Path, data: &[u8]) -> PathBuf {
    let finder = |body: &[u8]| memchr::memmem::find(data, body).is_some();
    let mut best: Option<(usize, PathBuf)> = None;
    let mut seen = Vec::new();
    for f in std::fs::read_dir(store.join("packs")).unwrap().flatten() {
        let pack = std::fs::read(f.path()).unwrap();
        let (mut at, mut pure) = (0usize, true);
        while pure && at < pack.len() {
            let head = &pack[at..(at + 16).min(pack.len())];
            pure = head.len() == 16 && &head[..4] == b"HSNP" && head[5] == 1 && head[6] == 0;
            if !pure {
                break;
            }
            let body_len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
            let body = &pack[(at + 16).min(pack.len())..(at + 16 + body_len).min(pack.len())];
            pure = body.len() == body_len && finder(body);
            at += 16 + body_len + 32;
        }
        seen.push((pack.len(), pure));
        if pure && best.as_ref().is_none_or(|(l, _)| pack.len() > *l) {
            best = Some((pack.len(), f.path()));
        }
    }
    match best {
        Some((_, p)) => p,
        None => panic!("no pack holds only the data's chunks (pack sizes, pure): {seen:?}"),
    }
}

pub fn largest_pack(store: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    for f in std::fs::read_dir(store.join("packs")).unwrap().flatten() {
        let len = f.metadata().unwrap().len();
        if best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, f.path()));
        }
    }
    best.unwrap().1
}
