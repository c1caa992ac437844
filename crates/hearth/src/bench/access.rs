//! `hearth bench --ssh` / `--proxy`: the ways in beside the direct path on the same machine.
//!
//! A real server runs in this process (its own data dir, bridge, subnet and cgroup parent,
//! the API, the gateway and the port proxy on free ports of 127.0.0.1) with one workspace.
//!
//! `--ssh`: a private sshd runs as a child on another free port with a temporary host key
//! and authorized_keys. The real OpenSSH client does the same two things against both:
//! streams 1 GiB into `cat > /dev/null` (wall time from the first byte to the exit, so the
//! handshake is not counted) and echoes one byte at a time through a long-lived `cat`.
//!
//! `--proxy`: busybox httpd in the workspace serves a 200 MiB and a 6-byte file; the same
//! HTTP/1.0 client fetches them through the proxy (`PORT-NAME.localhost`, bearer token) and
//! straight from the workspace's address on the bridge, one new connection per request.
//! Then the agent's `http` tool (a kept-alive HTTP/1.1 answer of 6 bytes) takes serial
//! requests over one open connection each way: the proxy's own cost per request, without
//! a connection's. The repository has a devcontainer.json of the usual size with port
//! settings ([`DEVCONTAINER`]), which the proxy consults for every request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hearth_api::client::Client;
use hearth_api::{AddSshKey, CreateWorkspace, LimitsRequest};
use hearth_node::{LocalNode, NodeApi, NodeConfig};
use hearth_server::{Server, ServerConfig};

use super::Series;

pub struct AccessArgs {
    /// Image archive or OCI layout the workspace runs (it needs `sh`, `cat`; `--proxy`
    /// needs busybox's `httpd`).
    pub image: PathBuf,
    pub agent: PathBuf,
    pub runtime: Option<String>,
    /// Compare the SSH gateway with sshd.
    pub ssh: bool,
    /// Compare the port proxy with direct HTTP.
    pub proxy: bool,
}

/// Bytes streamed per throughput run.
const BULK: u64 = 1 << 30;
/// Throughput runs per side; the median is reported.
const BULK_RUNS: usize = 3;
/// Echo round trips per side (after a few untimed ones).
const ECHOES: usize = 200;
const WORKSPACE: &str = "benchssh";
/// The large file httpd serves, per throughput run.
const HTTP_BULK: u64 = 200 << 20;
/// Small requests per side (after a few untimed ones).
const HTTP_SMALL: usize = 200;
const HTTP_PORT: u16 = 8080;
/// Where the agent's kept-alive `http` tool listens (a port the devcontainer.json names).
const KEEP_ALIVE_PORT: u16 = 5173;
/// Serial requests per side over one kept-alive connection (after a few untimed ones).
const KEEP_ALIVE_REQUESTS: usize = 2000;

/// The bench repository's devcontainer.json: a web app's usual one (ports with labels and
/// auto-forward rules, editor customizations), nothing busybox cannot run.
const DEVCONTAINER: &str = r#"{
  "name": "shop-web",
  "containerEnv": {"NODE_ENV": "development", "DATABASE_URL": "postgres://app:app@localhost:5432/app"},
  "remoteEnv": {"PATH": "${containerEnv:PATH}:/workspace/bench-repo/node_modules/.bin"},
  "forwardPorts": [8080, 5173, 5432, 6379],
  "portsAttributes": {
    "8080": {"label": "API", "onAutoForward": "notify", "protocol": "http"},
    "5173": {"label": "Vite dev server", "onAutoForward": "openBrowser"},
    "5432": {"label": "PostgreSQL", "onAutoForward": "ignore"},
    "6379": {"label": "Redis", "onAutoForward": "silent"},
    "9229-9230": {"label": "Node inspector", "onAutoForward": "silent"}
  },
  "otherPortsAttributes": {"onAutoForward": "notify"},
  "customizations": {
    "vscode": {
      "extensions": [
        "dbaeumer.vscode-eslint", "esbenp.prettier-vscode", "bradlc.vscode-tailwindcss",
        "ms-azuretools.vscode-docker", "mtxr.sqltools", "mtxr.sqltools-driver-pg",
        "eamodio.gitlens", "streetsidesoftware.code-spell-checker", "vitest.explorer"
      ],
      "settings": {
        "editor.formatOnSave": true,
        "editor.defaultFormatter": "esbenp.prettier-vscode",
        "editor.codeActionsOnSave": {"source.fixAll.eslint": "explicit"},
        "typescript.tsdk": "node_modules/typescript/lib",
        "files.exclude": {"**/node_modules": true, "**/dist": true},
        "sqltools.connections": [{"name": "local", "driver": "PostgreSQL", "server": "localhost", "port": 5432, "database": "app"}]
      }
    }
  },
  "postCreateCommand": "true"
}
"#;

/// A child process killed and reaped when dropped, so no path leaves one behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How to reach one SSH server with the real client.
struct Target {
    user: String,
    port: u16,
    key: PathBuf,
}

impl Target {
    /// `ssh` with a throwaway config: no ~/.ssh is read or written.
    fn ssh(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-T"])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30"])
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .arg(format!("{}@127.0.0.1", self.user))
            .arg(remote);
        c
    }

    /// Runs `remote`; fails with ssh's stderr unless it exits 0.
    fn check(&self, remote: &str) -> Result<()> {
        let out = self
            .ssh(remote)
            .stdin(Stdio::null())
            .output()
            .context("running ssh (install openssh-client)")?;
        if !out.status.success() {
            bail!(
                "ssh -p {} {}@127.0.0.1 {remote:?}: {}: {}",
                self.port,
                self.user,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts `ssh TARGET 'echo ready; exec REMOTE'` and waits for the `ready` line, so
    /// what follows is timed on an open session.
    fn session(&self, remote: &str) -> Result<(Reaped, ChildStdin, BufReader<ChildStdout>)> {
        let mut child = Reaped(
            self.ssh(&format!("echo ready; exec {remote}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("running ssh (install openssh-client)")?,
        );
        let stdin = child.0.stdin.take().context("ssh stdin")?;
        let mut stdout = BufReader::new(child.0.stdout.take().context("ssh stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!(
                "ssh -p {} {}@127.0.0.1: session did not start (got {line:?})",
                self.port,
                self.user
            );
        }
        Ok((child, stdin, stdout))
    }

    /// Streams [`BULK`] bytes into `cat > /dev/null`: MB/s (10^6 bytes) over the wall time
    /// from the first byte to ssh's exit.
    fn throughput(&self) -> Result<f64> {
        let (mut child, mut stdin, _stdout) = self.session("cat > /dev/null")?;
        let buf = vec![0u8; 1 << 20];
        let t = Instant::now();
        let mut left = BULK;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            stdin.write_all(&buf[..n]).context("streaming into ssh")?;
            left -= n as u64;
        }
        drop(stdin);
        let st = child.0.wait()?;
        let secs = t.elapsed().as_secs_f64();
        if !st.success() {
            bail!("ssh -p {} 'cat > /dev/null' exited {st}", self.port);
        }
        Ok(BULK as f64 / 1e6 / secs)
    }

    /// One byte out and back through a remote `cat`, [`ECHOES`] times.
    fn echo(&self, name: &'static str) -> Result<Series> {
        let (_child, mut stdin, mut stdout) = self.session("cat")?;
        let mut s = Series::new(name, None);
        let mut b = [0u8; 1];
        for i in 0..ECHOES + 10 {
            let t = Instant::now();
            stdin.write_all(b"x")?;
            stdin.flush()?;
            stdout.read_exact(&mut b).context("reading the echo")?;
            if i >= 10 {
                s.samples.push(t.elapsed());
            }
            if b[0] != b'x' {
                bail!("echo returned {:?}", b[0] as char);
            }
        }
        Ok(s)
    }
}

fn keygen(path: &Path, comment: &str) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen (install openssh-client)")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn sshd_binary() -> Result<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("sshd"))
        .find(|p| p.is_file());
    found.context(
        "sshd not found: the comparison runs OpenSSH's own server; install it with \
         `apt-get install openssh-server` (or scripts/install-deps.sh --bench) and run again",
    )
}

/// A private sshd on 127.0.0.1 (its own port, host key and authorized_keys, no PAM),
/// for the current user.
fn start_sshd(dir: &Path, client_pub: &Path) -> Result<(Reaped, u16)> {
    let sshd = sshd_binary()?;
    // sshd refuses to start without its privilege separation directory.
    std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
    let host_key = dir.join("ssh_host_ed25519_key");
    keygen(&host_key, "bench-sshd")?;
    let auth = dir.join("authorized_keys");
    std::fs::copy(client_pub, &auth)?;
    let port = free_port()?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nUsePAM no\nPermitRootLogin yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nStrictModes no\nUseDNS no\n",
            host_key.display(),
            auth.display(),
            dir.join("sshd.pid").display()
        ),
    )?;
    let child = Reaped(
        Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("sshd.log"))?))
            .spawn()
            .with_context(|| format!("starting {}", sshd.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "sshd did not listen on 127.0.0.1:{port}: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, port))
}

fn user_name() -> Result<String> {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .context("running id")?;
    let name = String::from_utf8(out.stdout)?.trim().to_string();
    if name.is_empty() {
        bail!("cannot tell the current user's name");
    }
    Ok(name)
}

pub async fn run(args: AccessArgs) -> Result<()> {
    // Fail before building anything when the comparison cannot run.
    if args.ssh {
        sshd_binary()?;
    }
    let sb = super::Sandbox::new(
        "hearth-bench-ssh",
        "hbssh",
        |tag| format!("10.78.{}.0/24", tag % 250),
        &args.agent,
        args.runtime.clone(),
    )?;
    let cfg = sb.cfg.clone();
    let node = LocalNode::open(cfg.clone()).await?;
    let server = Server::bind(
        ServerConfig {
            data_dir: cfg.data_dir.clone(),
            listen: "127.0.0.1:0".parse()?,
            public_rate: hearth_server::ratelimit::RateLimit::default(),
            rate: hearth_server::ratelimit::RateLimit {
                per_second: 0,
                burst: 0,
            },
            upload_max: 0,
            ssh_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            database: None,
            node_url: None,
        },
        Arc::new(node.clone()) as Arc<dyn NodeApi>,
    )
    .await;
    let res = match server {
        Ok(mut server) => {
            let proxy = if args.proxy {
                server
                    .bind_proxy(&hearth_server::proxy::ProxyConfig {
                        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                        domain: "localhost".into(),
                        tls: None,
                    })
                    .await
                    .map(Some)
            } else {
                Ok(None)
            };
            let url = format!("http://{}", server.local_addr());
            let (stop, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(server.serve(async {
                let _ = rx.await;
            }));
            let res = match proxy {
                Ok(proxy) => bench(&node, &cfg, &url, proxy, sb.path(), &args).await,
                Err(e) => Err(e),
            };
            let _ = stop.send(());
            match task.await {
                Ok(Err(e)) => eprintln!("ssh bench: stopping the server: {e}"),
                Err(e) => eprintln!("ssh bench: stopping the server: {e}"),
                Ok(Ok(())) => {}
            }
            res
        }
        Err(e) => Err(e),
    };
    super::teardown(&node, "ssh bench").await;
    res
}

async fn bench(
    node: &LocalNode,
    cfg: &NodeConfig,
    url: &str,
    proxy: Option<SocketAddr>,
    tmp: &Path,
    args: &AccessArgs,
) -> Result<()> {
    let image = super::load_image(node, &args.image).await?.id;
    let repo = super::git_repo(tmp)?;
    std::fs::write(repo.join(".devcontainer.json"), DEVCONTAINER)?;
    super::git(&repo, &["add", "."])?;
    super::git(&repo, &["commit", "-qm", "devcontainer"])?;
    let api = Client::new(&cfg.data_dir, Some(url), None)?;
    eprintln!("creating a workspace...");
    api.create(
        &CreateWorkspace {
            source: repo.display().to_string(),
            image: Some(image),
            name: Some(WORKSPACE.into()),
            limits: LimitsRequest::default(),
            egress: None,
            // Direct HTTP is not activity: never stop it as idle mid-run.
            idle_timeout: Some(0),
            devcontainer_config: None,
            branch: None,
            node_selector: None,
        },
        |_| {},
    )
    .await
    .context("creating the bench workspace")?;
    let client = tmp.join("client");
    std::fs::create_dir_all(&client)?;
    let key = client.join("id_ed25519");
    keygen(&key, "hearth-bench")?;
    let public = key.with_extension("pub");
    api.add_ssh_key(&AddSshKey {
        public_key: std::fs::read_to_string(&public)?,
    })
    .await
    .context("registering the bench's ssh key")?;
    let port = api
        .ssh_info()
        .await?
        .port
        .context("the server runs without its ssh gateway")?;
    let gateway = Target {
        user: WORKSPACE.into(),
        port,
        key: key.clone(),
    };
    let ip = api
        .inspect(WORKSPACE)
        .await?
        .workspace
        .ip
        .context("the bench workspace has no address")?;
    let token = std::fs::read_to_string(cfg.data_dir.join("token"))?
        .trim()
        .to_string();
    let sshd_dir = tmp.join("sshd");
    std::fs::create_dir_all(&sshd_dir)?;
    let ssh = args.ssh;

    // The client side is blocking I/O; keep it off the runtime that serves the gateway.
    tokio::task::spawn_blocking(move || -> Result<()> {
        gateway.check("cat /dev/null")?;
        if ssh {
            bench_ssh(&gateway, &sshd_dir, &public, &key)?;
        }
        if let Some(proxy) = proxy {
            let direct = SocketAddr::new(ip.parse().context("workspace address")?, HTTP_PORT);
            bench_proxy(&gateway, proxy, direct, &token)?;
        }
        Ok(())
    })
    .await?
}

fn bench_ssh(gateway: &Target, sshd_dir: &Path, public: &Path, key: &Path) -> Result<()> {
    let (_sshd, sshd_port) = start_sshd(sshd_dir, public)?;
    let sshd = Target {
        user: user_name()?,
        port: sshd_port,
        key: key.to_path_buf(),
    };
    sshd.check("cat /dev/null")?;
    let mut bulk = [Vec::new(), Vec::new()];
    eprintln!(
        "streaming {} x {} MiB through each...",
        BULK_RUNS,
        BULK >> 20
    );
    // Alternate, so load on the shared host hits both alike.
    for _ in 0..BULK_RUNS {
        bulk[0].push(gateway.throughput()?);
        bulk[1].push(sshd.throughput()?);
    }
    eprintln!("echoing {ECHOES} single bytes through each...");
    let echo_gw = gateway.echo("gateway")?;
    let echo_sshd = sshd.echo("sshd")?;
    print_table(&bulk, &echo_gw, &echo_sshd);
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn print_table(bulk: &[Vec<f64>; 2], gw: &Series, sshd: &Series) {
    let (tg, ts) = (median(&bulk[0]), median(&bulk[1]));
    let ratio = tg / ts;
    println!();
    println!(
        "ssh: hearth gateway vs OpenSSH sshd, same client, 127.0.0.1 ({} MiB x {} runs, \
         median; {} echo round trips)",
        BULK >> 20,
        BULK_RUNS,
        ECHOES
    );
    println!(
        "{:<28} {:>15} {:>10} {:>12} {:>16}",
        "metric", "hearth gateway", "sshd", "ratio", "target"
    );
    println!(
        "{:<28} {:>15.0} {:>10.0} {:>11.0}% {:>16} {}",
        "throughput, MB/s",
        tg,
        ts,
        ratio * 100.0,
        ">= 50% of sshd",
        if ratio >= 0.5 { "ok" } else { "over" }
    );
    for p in [50.0, 99.0] {
        let added = gw.pct(p) - sshd.pct(p);
        println!(
            "{:<28} {:>15.3} {:>10.3} {:>+9.3} ms {:>16} {}",
            format!("echo round trip p{p:.0}, ms"),
            gw.pct(p),
            sshd.pct(p),
            added,
            if p == 50.0 { "<= +1 ms" } else { "" },
            if p != 50.0 {
                ""
            } else if added <= 1.0 {
                "ok"
            } else {
                "over"
            }
        );
    }
}

/// One `GET` over a new connection (HTTP/1.0, so the body ends with the connection on
/// both paths): the time to the end of the body and the body's length.
fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(Duration, u64)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nhost: {host}\r\n{auth}\r\n")?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut status = String::new();
    r.read_line(&mut status)?;
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("GET http://{host}{path} via {addr}: {}", status.trim());
    }
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("GET http://{host}{path}: the response ended in its head");
        }
        if line == "\r\n" {
            break;
        }
    }
    let n = std::io::copy(&mut r, &mut std::io::sink())?;
    Ok((t.elapsed(), n))
}

/// `n` serial `GET /` over one kept-alive HTTP/1.1 connection to `addr`: each one's time
/// to the end of its body, which must be `hello\n` with a `content-length`.
fn keep_alive_gets(
    addr: SocketAddr,
    host: &str,
    token: Option<&str>,
    n: usize,
) -> Result<Vec<Duration>> {
    let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\n{auth}\r\n");
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        w.write_all(request.as_bytes())?;
        let mut status = String::new();
        r.read_line(&mut status)?;
        if status.split_whitespace().nth(1) != Some("200") {
            bail!("GET http://{host}/ via {addr}: {:?}", status.trim());
        }
        let mut len = None;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                bail!("GET http://{host}/ via {addr}: the connection ended in the head");
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0u8; len.context("an answer without content-length")?];
        r.read_exact(&mut body)?;
        if body != b"hello\n" {
            bail!("GET http://{host}/ via {addr}: unexpected body {body:?}");
        }
        out.push(t.elapsed());
    }
    Ok(out)
}

fn bench_proxy(gateway: &Target, proxy: SocketAddr, direct: SocketAddr, token: &str) -> Result<()> {
    gateway.check(&format!(
        "mkdir -p /tmp/www && head -c {HTTP_BULK} /dev/zero > /tmp/www/big && \
         echo hello > /tmp/www/small"
    ))?;
    // The session keeps httpd in the foreground; dropping it ends both.
    let (_httpd, _stdin, _stdout) =
        gateway.session(&format!("busybox httpd -f -p {HTTP_PORT} -h /tmp/www"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(direct).is_err() {
        if Instant::now() > deadline {
            bail!("busybox httpd did not listen on {direct} in the workspace (the image needs busybox with httpd)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let direct_host = direct.to_string();
    let proxy_host = format!("{HTTP_PORT}-{WORKSPACE}.localhost:{}", proxy.port());
    let via_proxy = |path: &str| http_get(proxy, &proxy_host, path, Some(token));
    let via_direct = |path: &str| http_get(direct, &direct_host, path, None);
    let mb_s = |(d, n): (Duration, u64)| -> Result<f64> {
        if n != HTTP_BULK {
            bail!("got {n} bytes of {HTTP_BULK}");
        }
        Ok(n as f64 / 1e6 / d.as_secs_f64())
    };
    eprintln!(
        "fetching {} x {} MiB and {HTTP_SMALL} small files each way...",
        BULK_RUNS,
        HTTP_BULK >> 20
    );
    let mut bulk = [Vec::new(), Vec::new()];
    // Alternate, so load on the shared host hits both alike.
    for _ in 0..BULK_RUNS {
        bulk[0].push(mb_s(via_proxy("/big")?)?);
        bulk[1].push(mb_s(via_direct("/big")?)?);
    }
    let mut small = [Series::new("proxy", None), Series::new("direct", None)];
    for i in 0..HTTP_SMALL + 10 {
        let p = via_proxy("/small")?;
        let d = via_direct("/small")?;
        if p.1 != 6 || d.1 != 6 {
            bail!("small file: got {} and {} bytes, not 6", p.1, d.1);
        }
        if i >= 10 {
            small[0].samples.push(p.0);
            small[1].samples.push(d.0);
        }
    }
    // Kept alive: the agent's `http` tool, serial requests over one connection each way.
    let (_http, _http_stdin, _http_stdout) =
        gateway.session(&format!("/.hearth/agent http --port {KEEP_ALIVE_PORT}"))?;
    let direct_ka = SocketAddr::new(direct.ip(), KEEP_ALIVE_PORT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(direct_ka).is_err() {
        if Instant::now() > deadline {
            bail!("the agent's http tool did not listen on {direct_ka} in the workspace");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{KEEP_ALIVE_REQUESTS} kept-alive requests each way...");
    let ka_host = format!("{KEEP_ALIVE_PORT}-{WORKSPACE}.localhost:{}", proxy.port());
    let mut kept = [Series::new("proxy", None), Series::new("direct", None)];
    // Halves alternate, so load on the shared host hits both alike; the first 10 untimed.
    for _ in 0..2 {
        let p = keep_alive_gets(proxy, &ka_host, Some(token), KEEP_ALIVE_REQUESTS / 2 + 10)?;
        let d = keep_alive_gets(
            direct_ka,
            &direct_ka.to_string(),
            None,
            KEEP_ALIVE_REQUESTS / 2 + 10,
        )?;
        kept[0].samples.extend_from_slice(&p[10..]);
        kept[1].samples.extend_from_slice(&d[10..]);
    }
    let (tp, td) = (median(&bulk[0]), median(&bulk[1]));
    let ratio = tp / td;
    println!();
    println!(
        "port proxy vs direct to the workspace's address, busybox httpd, one connection per \
         request ({} MiB x {} runs, median; {HTTP_SMALL} small requests)",
        HTTP_BULK >> 20,
        BULK_RUNS
    );
    println!(
        "{:<28} {:>15} {:>10} {:>12} {:>16}",
        "metric", "proxy", "direct", "ratio", "target"
    );
    println!(
        "{:<28} {:>15.0} {:>10.0} {:>11.0}% {:>16} {}",
        "throughput, MB/s",
        tp,
        td,
        ratio * 100.0,
        ">= 80% of direct",
        if ratio >= 0.8 { "ok" } else { "over" }
    );
    // One request after the other: what a client waiting for each answer gets.
    let rate =
        |s: &Series| s.samples.len() as f64 / s.samples.iter().sum::<Duration>().as_secs_f64();
    println!(
        "{:<28} {:>15.0} {:>10.0} {:>11.0}%",
        "small requests/s, serial",
        rate(&small[0]),
        rate(&small[1]),
        rate(&small[0]) / rate(&small[1]) * 100.0
    );
    println!(
        "{:<28} {:>15.0} {:>10.0} {:>11.0}%",
        "kept alive: requests/s",
        rate(&kept[0]),
        rate(&kept[1]),
        rate(&kept[0]) / rate(&kept[1]) * 100.0
    );
    for p in [50.0, 99.0] {
        println!(
            "{:<28} {:>15.3} {:>10.3} {:>+9.3} ms",
            format!("kept alive: p{p:.0}, ms"),
            kept[0].pct(p),
            kept[1].pct(p),
            kept[0].pct(p) - kept[1].pct(p)
        );
    }
    for p in [50.0, 99.0] {
        let added = small[0].pct(p) - small[1].pct(p);
        println!(
            "{:<28} {:>15.3} {:>10.3} {:>+9.3} ms {:>16} {}",
            format!("small request p{p:.0}, ms"),
            small[0].pct(p),
            small[1].pct(p),
            added,
            if p == 50.0 { "<= +0.2 ms" } else { "" },
            if p != 50.0 {
                ""
            } else if added <= 0.2 {
                "ok"
            } else {
                "over"
            }
        );
    }
    Ok(())
}
