//! `hearth server` and `hearth admin teardown`: the parts that open the local node.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use hearth_node::{
    Cidr, ConnLimits, ConsoleLimits, CpuControl, EgressConfig, LocalNode, NodeApi, NodeConfig,
    Retention,
};
use hearth_server::db::Database;
use hearth_server::ratelimit::RateLimit;
use hearth_server::{DataDirLock, Server, ServerConfig};
use serde::{Deserialize, Serialize};

/// Node settings of the last `hearth server`, so offline teardown uses the same bridge,
/// subnet and cgroups.
const NODE_FILE: &str = "node.json";

#[derive(Args, Debug)]
pub struct ServerArgs {
    #[arg(long, default_value = "127.0.0.1:7070", overrides_with = "listen")]
    listen: std::net::SocketAddr,
    /// Where the server keeps its state: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (an
    /// existing database; several servers may share it), or `sqlite:PATH`. Default: the
    /// data dir's hearth.db. $HEARTH_DATABASE_URL keeps a password out of `ps`.
    #[arg(long, value_name = "URL", env = "HEARTH_DATABASE_URL", hide_env_values = true,
          value_parser = parse_database)]
    database: Option<Database>,
    /// Address of the SSH gateway (`ssh -p PORT WORKSPACE@HOST`), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = hearth_server::ssh::DEFAULT_LISTEN)]
    ssh_listen: SshListen,
    /// Where the port proxy listens (default 127.0.0.1:7080): `http://8080-NAME.DOMAIN:7080/`
    /// reaches port 8080 inside workspace NAME.
    #[arg(long, value_name = "ADDR", overrides_with = "proxy_listen")]
    proxy_listen: Option<std::net::SocketAddr>,
    /// Domain of port URLs; `localhost` works in browsers without DNS. For another domain,
    /// point `*.DOMAIN` at this host.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Run no port proxy.
    #[arg(long, conflicts_with_all = ["proxy_listen", "tls_cert", "tls_key"])]
    no_proxy: bool,
    /// PEM certificate chain for the port proxy (a wildcard for *.DOMAIN): serve HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds between snapshots of running workspaces (0 turns them off); unchanged
    /// workspaces are skipped.
    #[arg(long, default_value_t = 300)]
    snapshot_interval: u64,
    /// API requests per second per client token, sustained (0 turns the limit off); more
    /// are answered 429 with Retry-After.
    #[arg(long, default_value_t = RateLimit::default().per_second)]
    api_rate: u32,
    /// API requests per client token allowed at once above --api-rate.
    #[arg(long, default_value_t = RateLimit::default().burst)]
    api_burst: u32,
    /// Requests per second per client address, sustained, to the routes that need no
    /// token (sign-in, node join, webhooks; 0 turns the limit off). Clients behind a
    /// proxy share its address unless it is a --trusted-proxy.
    #[arg(long, default_value_t = RateLimit::PUBLIC.per_second)]
    public_rate: u32,
    /// Requests per client address allowed at once above --public-rate.
    #[arg(long, default_value_t = RateLimit::PUBLIC.burst)]
    public_burst: u32,
    /// Largest image archive `hearth image load` may upload (e.g. 16G).
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_size,
        default_value_t = hearth_server::uploads::DEFAULT_UPLOAD_MAX)]
    upload_max: u64,
    /// Seconds between deletions of store chunks no snapshot needs any more (0: only by
    /// `hearth store gc`).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    store_gc_interval: u64,
    /// How long `hearth rm` keeps a workspace's snapshots for `hearth restore` (e.g. 7d,
    /// 12h, 30m; 0 forgets them at once); the store gc collects them after that.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "7d")]
    deleted_retention: std::time::Duration,
    /// A node without a heartbeat for this long is lost: its workspaces show `lost` and
    /// `hearth start` brings one up on another node from its last snapshot.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "30s")]
    node_lost_after: std::time::Duration,
    /// Stop a running workspace after this long without a session (SSH, exec, shell,
    /// port-forward) or proxied request, e.g. 30m or 2h; 0 never. A workspace's own
    /// (hearth up/update --idle-timeout) wins.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "30m")]
    idle_timeout: std::time::Duration,
    /// Image `hearth up` uses when neither --image nor the repository's devcontainer.json
    /// names one (an image name or id, loaded or pulled beforehand).
    #[arg(long, value_name = "REF", default_value = hearth_server::manager::DEFAULT_IMAGE)]
    default_image: String,
    /// File holding the secret of push webhooks (`/v1/hooks/github|gitlab|gitea`), which
    /// refresh existing prebuilds; give the forge the same secret. Without it webhooks
    /// are off.
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// How long the audit log (`hearth audit`) keeps entries (e.g. 90d, 12h; 0 keeps
    /// them forever); the background store gc prunes older ones.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "90d")]
    audit_retention: std::time::Duration,
    /// A reverse proxy (address or CIDR; repeatable) whose `X-Forwarded-For` header names
    /// the client in the audit log. From anyone else the header is ignored.
    #[arg(long, value_name = "ADDR", value_parser = parse_net)]
    trusted_proxy: Vec<ipnet::IpNet>,
    /// Image of the builder workspaces Dockerfile builds run in (`scripts/make-image.sh
    /// builder`, loaded beforehand).
    #[arg(long, value_name = "REF", default_value = hearth_server::manager::build::DEFAULT_BUILDER_IMAGE)]
    builder_image: String,
    /// How often idle workspaces are looked for (and last activity is recorded).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "30s", hide = true)]
    idle_check_interval: std::time::Duration,
    /// The URL browsers reach this server's API and dashboard at (e.g.
    /// https://hearth.example.com behind a TLS proxy): an https URL makes session cookies
    /// `Secure`; OIDC sign-ins come back to URL/auth/callback. Default: http://LISTEN.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// How long a browser session lasts from sign-in (e.g. 12h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "7d")]
    session_ttl: std::time::Duration,
    /// Run no embedded node: workspaces go to nodes that join (`hearth node --server`).
    /// Servers sharing one PostgreSQL database must run this way (a local node belongs
    /// to one host); the node flags are then unused.
    #[arg(long)]
    no_local_node: bool,
    /// The URL nodes reach this server's API at (http://HOST:PORT). Servers sharing a
    /// database tell their nodes each other's, and every node links to every server, so
    /// any server reaches every node. Default: http://LISTEN (127.0.0.1 for 0.0.0.0).
    #[arg(long, value_name = "URL")]
    node_url: Option<String>,
    /// Sign browsers in through this OpenID Connect provider (its issuer URL, e.g.
    /// https://accounts.google.com); register PUBLIC_URL/auth/callback as its redirect URI.
    #[arg(long, value_name = "URL", requires_all = ["oidc_client_id", "oidc_client_secret_file"])]
    oidc_issuer: Option<String>,
    /// The client id the provider gave this server.
    #[arg(long, value_name = "ID", requires = "oidc_issuer")]
    oidc_client_id: Option<String>,
    /// File holding the client secret (kept out of `ps` and shell history).
    #[arg(long, value_name = "FILE", requires = "oidc_issuer")]
    oidc_client_secret_file: Option<PathBuf>,
    /// Only emails of these domains may sign in (comma-separated, e.g. a.com,b.com).
    #[arg(
        long,
        value_name = "DOMAINS",
        value_delimiter = ',',
        requires = "oidc_issuer"
    )]
    oidc_allowed_domains: Vec<String>,
    /// Only members of one of these groups (the ID token's `groups` claim) may sign in.
    #[arg(
        long,
        value_name = "GROUPS",
        value_delimiter = ',',
        requires = "oidc_issuer"
    )]
    oidc_allowed_groups: Vec<String>,
    /// With --oidc-issuer, let browsers sign in with an API token too (`POST /v1/session`);
    /// without an identity provider they always can.
    #[arg(long, requires = "oidc_issuer")]
    token_login: bool,
    #[command(flatten)]
    node: NodeFlags,
}

/// How the node runs workspaces: `hearth server` and `hearth node` take the same flags.
#[derive(Args, Debug)]
pub struct NodeFlags {
    /// Restore every file of a snapshot before the workspace starts (restore, fork, a
    /// start elsewhere). By default large files are fetched after it starts: opening one
    /// not fetched yet waits for it.
    #[arg(long)]
    pub eager_restore: bool,
    /// Bridge name (also the prefix of firewall chains).
    #[arg(long, default_value = "hearth0")]
    pub bridge: String,
    #[arg(long, default_value = "10.88.0.0/16")]
    pub subnet: String,
    /// Parent cgroup of all workspaces.
    #[arg(long, default_value = "hearth")]
    pub cgroup_parent: String,
    /// OCI runtime: crun, runc or a path (default: crun if it works).
    #[arg(long)]
    pub runtime: Option<String>,
    /// The static hearth-agent binary (default: next to this executable).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Keep snapshots in S3 at http://host:port/bucket[/prefix] (credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) instead of <data-dir>/snapshots.
    #[arg(long, value_name = "URL")]
    pub snapshot_s3: Option<String>,
    /// Encrypt snapshots with the key in <data-dir>/snapshot.key (created on first use).
    #[arg(long)]
    pub snapshot_encrypt: bool,
    /// Deny every workspace outbound traffic to CIDR, on top of the node's own addresses,
    /// loopback and link-local (repeatable), e.g. the LAN or a remote control plane.
    #[arg(long, value_name = "CIDR")]
    pub egress_deny: Vec<Cidr>,
    /// New outbound connections per second per workspace; more are dropped.
    #[arg(long, default_value_t = ConnLimits::default().rate)]
    pub egress_rate: u32,
    /// New connections per workspace allowed at once above --egress-rate.
    #[arg(long, default_value_t = ConnLimits::default().burst)]
    pub egress_burst: u32,
    /// Concurrently tracked outbound connections per workspace; more are dropped.
    #[arg(long, default_value_t = ConnLimits::default().max_conns)]
    pub egress_max_conns: u32,
    /// Free space to keep on the data dir's filesystem (e.g. 10G; 0 turns it off): below
    /// it workspaces are not created, started or restored, and running ones whose disk
    /// grows are frozen until space is freed, so a full host never costs a workspace its
    /// files. Default: 5% of that filesystem, within 1..20 GiB.
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_size, overrides_with = "disk_reserve")]
    pub disk_reserve: Option<u64>,
    /// Size at which a workspace's console log (PID 1's output, kept on its own disk) is
    /// rotated; at least 64K.
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_size, default_value = "10M")]
    pub console_max_size: u64,
    /// Console log files kept per workspace (the current one included), 1..100.
    #[arg(long, value_name = "N", default_value_t = ConsoleLimits::default().files)]
    pub console_files: u32,
    /// After each snapshot, keep the workspace's newest N snapshots (plus --snapshot-keep-daily);
    /// both 0 keeps every snapshot.
    #[arg(long, value_name = "N", default_value_t = 12)]
    pub snapshot_keep_last: usize,
    /// ... and the newest snapshot of each of its last N days with snapshots.
    #[arg(long, value_name = "N", default_value_t = 7)]
    pub snapshot_keep_daily: usize,
    /// JSON file of process priority rules inside workspaces: classes (nice, policy), the
    /// class of exec sessions with and without a terminal, and executables that get a class
    /// when they start (default: compilers, build tools and test runners are batch).
    #[arg(long, value_name = "FILE")]
    pub priority_rules: Option<PathBuf>,
    /// How the node shares CPU among workspaces. hearth: a 10 Hz loop gives light
    /// workspaces free CPU at once and demotes long hogs (cpu.idle, then their --cpus);
    /// off: fixed weights only. static (every workspace held to its --cpus, or 1 core, as
    /// Kubernetes limits do) and gitpod (Gitpod's 15 s budget loop) exist as baselines
    /// for `hearth bench cpu`.
    #[arg(long, value_name = "POLICY", default_value = "hearth")]
    pub cpu_control: CpuControl,
    /// Time between CPU controller ticks.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "100ms", hide = true)]
    pub cpu_interval: std::time::Duration,
}

/// `--ssh-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct SshListen(Option<std::net::SocketAddr>);

impl std::str::FromStr for SshListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(SshListen(None));
        }
        s.parse()
            .map(|a| SshListen(Some(a)))
            .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:2222 or `off`: {e}"))
    }
}

/// Starts the port proxy as asked. The default address is taken only if it is free (a
/// second server on the host runs without one, with a warning); an address given with
/// `--proxy-listen` must be bound.
async fn bind_proxy(server: &mut Server, args: &ServerArgs) -> anyhow::Result<()> {
    if args.no_proxy {
        return Ok(());
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together: give both, or neither for plain HTTP"),
    };
    let cfg = hearth_server::proxy::ProxyConfig {
        listen: args.proxy_listen.unwrap_or(DEFAULT_PROXY_LISTEN),
        domain: args.domain.clone(),
        tls,
    };
    match server.bind_proxy(&cfg).await {
        Ok(_) => Ok(()),
        Err(e)
            if args.proxy_listen.is_none()
                && e.root_cause()
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse) =>
        {
            tracing::warn!(listen = %cfg.listen, "port proxy not started: its default address is in use (pass --proxy-listen ADDR, or --no-proxy)");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

const DEFAULT_PROXY_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 7080),
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct NodeSettings {
    bridge: String,
    subnet: String,
    cgroup_parent: String,
    runtime: Option<String>,
    /// Agent binary the server was given; teardown opens the node with the same one.
    #[serde(default)]
    agent: Option<PathBuf>,
    #[serde(default)]
    snapshot_s3: Option<String>,
    #[serde(default)]
    snapshot_encrypt: bool,
    #[serde(default)]
    eager_restore: bool,
    /// Node-wide egress denials (CIDR strings) and connection limits.
    #[serde(default)]
    egress_deny: Vec<String>,
    #[serde(default)]
    egress_rate: Option<u32>,
    #[serde(default)]
    egress_burst: Option<u32>,
    #[serde(default)]
    egress_max_conns: Option<u32>,
    #[serde(default)]
    disk_reserve: Option<u64>,
    #[serde(default)]
    console: Option<(u64, u32)>,
    /// keep-last, keep-daily; `None` keeps every snapshot.
    #[serde(default)]
    retention: Option<(usize, usize)>,
    /// The server's `--database` as logs show it (no password), when it was PostgreSQL:
    /// teardown then needs it given again.
    #[serde(default)]
    postgres: Option<String>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            bridge: "hearth0".into(),
            subnet: "10.88.0.0/16".into(),
            cgroup_parent: "hearth".into(),
            runtime: None,
            agent: None,
            snapshot_s3: None,
            snapshot_encrypt: false,
            eager_restore: false,
            egress_deny: Vec::new(),
            egress_rate: None,
            egress_burst: None,
            egress_max_conns: None,
            disk_reserve: None,
            console: None,
            retention: None,
            postgres: None,
        }
    }
}

pub fn parse_database(s: &str) -> Result<Database, String> {
    Database::parse(s)
}

pub fn agent_next_to_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("hearth-agent");
    p.is_file().then_some(p)
}

fn node_config(data_dir: &Path, s: &NodeSettings, agent: PathBuf) -> anyhow::Result<NodeConfig> {
    let always_deny = s
        .egress_deny
        .iter()
        .map(|c| c.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .context("bad egress_deny in node settings")?;
    let d = ConnLimits::default();
    let limits = ConnLimits {
        rate: s.egress_rate.unwrap_or(d.rate),
        burst: s.egress_burst.unwrap_or(d.burst),
        max_conns: s.egress_max_conns.unwrap_or(d.max_conns),
    };
    Ok(NodeConfig {
        data_dir: data_dir.to_path_buf(),
        bridge: s.bridge.clone(),
        subnet: s.subnet.clone(),
        cgroup_parent: s.cgroup_parent.clone(),
        runtime: s.runtime.clone(),
        agent_binary: agent,
        snapshots: hearth_node::SnapshotSettings {
            s3: s.snapshot_s3.clone(),
            encrypt: s.snapshot_encrypt,
            retention: s.retention.map(|(keep_last, keep_daily)| Retention {
                keep_last,
                keep_daily,
            }),
            eager_restore: s.eager_restore,
        },
        egress: EgressConfig {
            always_deny,
            limits,
        },
        disk_reserve: s.disk_reserve,
        console: s
            .console
            .map(|(max_bytes, files)| ConsoleLimits { max_bytes, files })
            .unwrap_or_default(),
        priority: Default::default(),
        // Teardown runs no controller; `serve` sets what it was asked for.
        cpu_control: CpuControl::Off,
        cpu_interval: hearth_node::DEFAULT_CPU_INTERVAL,
    })
}

/// Logs to stderr, filtered by RUST_LOG, else at `default` level; colours only on a
/// terminal, so a log file holds no escape sequences (request data in fields is escaped
/// by Debug formatting, so none can be injected either).
pub fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
    tracing::info!("shutting down; workspaces keep running");
}

/// Opens the node `flags` describe on `data_dir` (whose lock the caller holds), and
/// records its settings for `hearth admin teardown` (with the server's `database` when
/// the node is embedded in a server: teardown then needs it too).
pub async fn open_node(
    data_dir: &Path,
    args: &NodeFlags,
    database: Option<&Database>,
) -> anyhow::Result<LocalNode> {
    let agent = match &args.agent {
        Some(p) if p.is_file() => std::path::absolute(p)
            .with_context(|| format!("cannot make {} absolute", p.display()))?,
        Some(p) => bail!("agent binary {} not found", p.display()),
        None => agent_next_to_exe().context(
            "hearth-agent not found next to the hearth binary: build it with scripts/build.sh \
             or pass --agent PATH",
        )?,
    };
    let priority = match &args.priority_rules {
        Some(p) => hearth_node::PriorityRules::load(p)?,
        None => Default::default(),
    };
    let settings = NodeSettings {
        bridge: args.bridge.clone(),
        subnet: args.subnet.clone(),
        cgroup_parent: args.cgroup_parent.clone(),
        runtime: args.runtime.clone(),
        agent: Some(agent.clone()),
        snapshot_s3: args.snapshot_s3.clone(),
        snapshot_encrypt: args.snapshot_encrypt,
        eager_restore: args.eager_restore,
        egress_deny: args.egress_deny.iter().map(ToString::to_string).collect(),
        egress_rate: Some(args.egress_rate),
        egress_burst: Some(args.egress_burst),
        egress_max_conns: Some(args.egress_max_conns),
        disk_reserve: args.disk_reserve,
        console: Some((args.console_max_size, args.console_files)),
        retention: (args.snapshot_keep_last > 0 || args.snapshot_keep_daily > 0)
            .then_some((args.snapshot_keep_last, args.snapshot_keep_daily)),
        postgres: database.filter(|d| d.is_postgres()).map(Database::display),
    };
    ConsoleLimits {
        max_bytes: args.console_max_size,
        files: args.console_files,
    }
    .validate()
    .map_err(anyhow::Error::msg)?;
    let path = data_dir.join(NODE_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&settings)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if args.cpu_interval.is_zero() {
        bail!("--cpu-interval must be more than 0");
    }
    let mut node_cfg = node_config(data_dir, &settings, agent)?;
    node_cfg.cpu_control = args.cpu_control;
    node_cfg.cpu_interval = args.cpu_interval;
    node_cfg.priority = priority;
    LocalNode::open(node_cfg)
        .await
        .context("cannot open the node")
}

pub async fn serve(data_dir: &Path, args: &ServerArgs) -> anyhow::Result<()> {
    init_tracing("info");
    let lock = DataDirLock::acquire(data_dir)?;
    let node: Option<Arc<dyn NodeApi>> = if args.no_local_node {
        None
    } else {
        Some(Arc::new(
            open_node(data_dir, &args.node, args.database.as_ref()).await?,
        ))
    };
    let cfg = ServerConfig {
        data_dir: data_dir.to_path_buf(),
        listen: args.listen,
        rate: RateLimit {
            per_second: args.api_rate,
            burst: args.api_burst,
        },
        public_rate: RateLimit {
            per_second: args.public_rate,
            burst: args.public_burst,
        },
        upload_max: args.upload_max,
        ssh_listen: args.ssh_listen.0,
        database: args.database.clone(),
        node_url: node_url(args)?,
    };
    let mut server = Server::bind_fleet(lock, cfg, node).await?;
    server.set_deleted_retention(args.deleted_retention);
    server.set_audit_retention(args.audit_retention);
    server.set_trusted_proxies(args.trusted_proxy.clone());
    server.set_node_lost_after(args.node_lost_after);
    server.set_default_image(args.default_image.clone());
    if let Some(f) = &args.webhook_secret_file {
        let secret = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read --webhook-secret-file {}", f.display()))?;
        let secret = secret.trim();
        if secret.len() < 16 {
            bail!(
                "--webhook-secret-file {}: the secret must be at least 16 characters",
                f.display()
            );
        }
        server.set_webhook_secret(Some(secret.as_bytes().to_vec()));
    }
    server.set_builder_image(args.builder_image.clone());
    let public_url = public_url(args)?;
    server.set_session_settings(hearth_server::auth::SessionSettings {
        ttl: args.session_ttl,
        https: public_url.starts_with("https://"),
        token_login: args.oidc_issuer.is_none() || args.token_login,
    });
    if let Some(cfg) = oidc_config(args, &public_url)? {
        server.set_oidc(cfg).await?;
    }
    bind_proxy(&mut server, args).await?;
    if args.snapshot_interval > 0 {
        server.spawn_periodic_snapshots(std::time::Duration::from_secs(args.snapshot_interval));
    }
    if args.idle_check_interval.is_zero() {
        bail!("--idle-check-interval must be more than 0");
    }
    server.spawn_idle_stop(args.idle_timeout, args.idle_check_interval);
    if args.store_gc_interval > 0 {
        server.spawn_store_gc(std::time::Duration::from_secs(args.store_gc_interval));
    }
    server.serve(shutdown_signal()).await
}

/// `--node-url`, checked: nodes dial plain http (the link is HTTP/2 over an upgrade).
fn node_url(args: &ServerArgs) -> anyhow::Result<Option<String>> {
    let Some(url) = &args.node_url else {
        return Ok(None);
    };
    let url = url.trim_end_matches('/');
    let ok = url
        .strip_prefix("http://")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
    if !ok {
        bail!("--node-url {url}: use http://HOST:PORT (what nodes dial)");
    }
    Ok(Some(url.to_string()))
}

/// The `--oidc-*` flags, checked; `None` without --oidc-issuer.
fn oidc_config(
    args: &ServerArgs,
    public_url: &str,
) -> anyhow::Result<Option<hearth_server::oidc::OidcConfig>> {
    let Some(issuer) = &args.oidc_issuer else {
        return Ok(None);
    };
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        bail!("--oidc-issuer {issuer}: use the provider's https:// issuer URL");
    }
    let (Some(client_id), Some(secret_file)) =
        (&args.oidc_client_id, &args.oidc_client_secret_file)
    else {
        bail!("--oidc-issuer needs --oidc-client-id and --oidc-client-secret-file");
    };
    let secret = std::fs::read_to_string(secret_file).with_context(|| {
        format!(
            "cannot read --oidc-client-secret-file {}",
            secret_file.display()
        )
    })?;
    let secret = secret.trim();
    if secret.is_empty() {
        bail!(
            "--oidc-client-secret-file {} is empty",
            secret_file.display()
        );
    }
    let list = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    Ok(Some(hearth_server::oidc::OidcConfig {
        issuer: issuer.clone(),
        client_id: client_id.clone(),
        client_secret: secret.to_string(),
        redirect_url: format!("{public_url}{}", hearth_server::oidc::CALLBACK_PATH),
        allowed_domains: list(&args.oidc_allowed_domains)
            .into_iter()
            .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
            .collect(),
        allowed_groups: list(&args.oidc_allowed_groups),
    }))
}

/// `--public-url` without a trailing slash, checked; default: http://LISTEN.
fn public_url(args: &ServerArgs) -> anyhow::Result<String> {
    let Some(url) = &args.public_url else {
        return Ok(format!("http://{}", args.listen));
    };
    let url = url.trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#']) => Ok(url.to_string()),
        _ => bail!("--public-url {url}: use http(s)://HOST[:PORT], without a path"),
    }
}

pub async fn teardown(
    data_dir: &Path,
    database: Option<&Database>,
    purge: bool,
) -> anyhow::Result<()> {
    init_tracing("warn");
    if !data_dir.exists() {
        bail!("data dir {} does not exist", data_dir.display());
    }
    let lock = DataDirLock::acquire(data_dir)
        .context("a hearth server is running on this data dir: stop it first")?;
    let path = data_dir.join(NODE_FILE);
    let settings: NodeSettings = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("cannot parse {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NodeSettings::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if let (Some(pg), None) = (&settings.postgres, database) {
        bail!("the server kept its state in PostgreSQL ({pg}): pass --database URL");
    }
    // Opening the node installs the agent, so find the one the server used, or the copy
    // the node keeps in its data dir.
    let agent = settings
        .agent
        .clone()
        .filter(|p| p.is_file())
        .or_else(agent_next_to_exe)
        .unwrap_or_else(|| data_dir.join("bin/hearth-agent"));
    let node = LocalNode::open(node_config(data_dir, &settings, agent)?)
        .await
        .context("cannot open the node")?;
    hearth_server::teardown(&lock, database, &node, purge).await?;
    eprintln!(
        "{} {}",
        if purge { "purged" } else { "tore down" },
        data_dir.display()
    );
    Ok(())
}

/// An address (`10.0.0.5`) or a network (`10.0.0.0/8`).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<ipnet::IpNet>() {
        return Ok(n.trunc());
    }
    t.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{s:?} is not an address or CIDR network (10.0.0.5, 10.0.0.0/8)"))
}
