//! The Hearth control plane: workspace records, lifecycle and the REST/WebSocket API.
//!
//! It talks to the node only through [`hearth_node::NodeApi`]. Files in the data dir:
//! `hearth.db` (SQLite, unless `--database` names PostgreSQL; see [`db`]), `token` (the first-start admin's API
//! token, 0600, for the CLI on the same machine), `server.json` (where the running server
//! listens, for that CLI), `server.lock` (one server per dir) and `secrets.key` (0600, the
//! key users' secrets are encrypted with, see [`secrets`]).

pub mod activity;
pub mod api;
pub mod audit;
pub mod auth;
pub mod contract;
pub mod convert;
pub mod db;
pub mod error;
pub mod fleet;
pub mod leader;
pub mod links;
pub mod manager;
pub mod metrics;
pub mod names;
pub mod ndjson;
pub mod nodes;
pub mod oidc;
pub mod ports;
pub mod prebuilds;
pub mod proxy;
pub mod ratelimit;
pub mod scheduler;
pub mod secrets;
pub mod sessions;
pub mod snapshots;
pub mod ssh;
pub mod ssh_keys;
pub mod state;
pub mod uploads;
pub mod users;
pub mod web;

use std::fs::{File, OpenOptions, TryLockError};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use hearth_node::NodeApi;

use crate::db::Store;
use crate::manager::Manager;

pub const DB_FILE: &str = "hearth.db";
pub use hearth_api::{ServerInfo, SERVER_FILE, TOKEN_FILE};
pub const LOCK_FILE: &str = "server.lock";

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Requests per caller; see [`ratelimit`].
    pub rate: ratelimit::RateLimit,
    /// Requests per peer address on the routes anyone may call; see [`ratelimit`].
    pub public_rate: ratelimit::RateLimit,
    /// Largest image upload, bytes.
    pub upload_max: u64,
    /// Where the SSH gateway listens; `None` runs without one.
    pub ssh_listen: Option<SocketAddr>,
    /// Where the state lives; `None`: `hearth.db` (SQLite) in the data dir.
    pub database: Option<db::Database>,
    /// The URL nodes reach this server's API at, as it tells them and the other servers
    /// (`hearth server --node-url`); `None`: the bound address's.
    pub node_url: Option<String>,
}

impl ServerConfig {
    /// The database this configuration names.
    pub fn database(&self) -> db::Database {
        self.database
            .clone()
            .unwrap_or_else(|| db::Database::Sqlite(self.data_dir.join(DB_FILE)))
    }
}

/// Exclusive hold on a data dir; released when dropped (the kernel drops it if we die).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    dir: PathBuf,
}

impl DataDirLock {
    /// Creates the data dir if needed and takes `server.lock`, failing if another process has it.
    pub fn acquire(data_dir: &Path) -> anyhow::Result<DataDirLock> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock {
                _file: file,
                dir: data_dir.to_path_buf(),
            }),
            Err(TryLockError::WouldBlock) => anyhow::bail!(
                "another hearth server is using data dir {} ({} is locked)",
                data_dir.display(),
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads the first-start admin's API token, creating a random one (mode 0600) on first use.
pub fn ensure_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = auth::new_token();
    let tmp = data_dir.join(format!("{TOKEN_FILE}.tmp"));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(token.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// A bound, reconciled server, ready to serve.
pub struct Server {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: axum::Router,
    store: Store,
    lock: DataDirLock,
    manager: Arc<Manager>,
    ssh: Option<ssh::Gateway>,
    info: ServerInfo,
    proxy: Option<proxy::Proxy>,
    auth: Arc<auth::AuthState>,
    /// This server's registration in the database and its hold on the background jobs.
    leader: Arc<leader::Leadership>,
    /// Heartbeats, renews the lease and syncs the fleet; stopped with the server.
    renewer: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Locks the data dir, opens the database, reconciles with the node, binds the socket
    /// and writes `server.json`.
    pub async fn bind(cfg: ServerConfig, node: Arc<dyn NodeApi>) -> anyhow::Result<Server> {
        let lock = DataDirLock::acquire(&cfg.data_dir)?;
        Server::bind_locked(lock, cfg, node).await
    }

    /// Like [`Server::bind`] with the data dir already locked, so the caller can hold the
    /// lock before opening the node.
    pub async fn bind_locked(
        lock: DataDirLock,
        cfg: ServerConfig,
        node: Arc<dyn NodeApi>,
    ) -> anyhow::Result<Server> {
        Server::bind_fleet(lock, cfg, Some(node)).await
    }

    /// Like [`Server::bind_locked`]; `node`: the embedded node, if the server runs one
    /// (servers sharing a PostgreSQL database run none: their nodes join over the wire).
    pub async fn bind_fleet(
        lock: DataDirLock,
        cfg: ServerConfig,
        node: Option<Arc<dyn NodeApi>>,
    ) -> anyhow::Result<Server> {
        let token = ensure_token(&cfg.data_dir)?;
        let database = cfg.database();
        let store = Store::connect(&database).await?;
        tracing::info!(database = database.display(), "database open");
        // Bound before anything else is done, so the registration names where it serves.
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("cannot read address bound for {}", cfg.listen))?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        let info = ServerInfo {
            url: format!("http://{host}:{}", addr.port()),
            proxy: None,
        };
        let embedded = node.as_ref().map(|_| fleet::DEFAULT_LOCAL_NODE);
        let id = leader::server_id(&cfg.data_dir)?;
        // What nodes dial to link to this server (servers tell their nodes of each other).
        let node_url = cfg.node_url.clone().unwrap_or_else(|| info.url.clone());
        let leader = Arc::new(
            leader::Leadership::join(store.clone(), &id, &node_url, embedded)
                .await
                .context("cannot register the server")?,
        );
        store.set_operator(&id);
        // Operations this server ran before a restart are nobody's now: the reconcile
        // below, or the leader's takeover once their node attaches, settles them.
        let orphaned = store
            .orphan_own(&id)
            .await
            .context("cannot read this server's unfinished operations")?;
        if orphaned > 0 {
            tracing::info!(
                operations = orphaned,
                "unfinished operations from before the restart"
            );
        }
        // Its prebuild runs of before ended with it.
        let runs = store
            .fail_prebuild_runs_of(
                std::slice::from_ref(&id),
                "the server restarted while it ran",
            )
            .await
            .context("cannot read this server's unfinished prebuild runs")?;
        if runs > 0 {
            tracing::info!(runs, "prebuild runs cut short by the restart marked failed");
        }
        let manager = match node {
            Some(node) => Manager::shared(store.clone(), node),
            None => Manager::shared_fleet(
                store.clone(),
                Arc::new(fleet::Fleet::new(store.clone(), None)),
            ),
        };
        let sealed = store
            .secret_count()
            .await
            .context("cannot count the stored secrets")?;
        manager.set_secret_box(
            secrets::SecretBox::open_or_create(&cfg.data_dir, sealed)
                .context("cannot open the secrets key")?,
        );
        manager.set_build_scratch(cfg.data_dir.join("uploads"), cfg.upload_max);
        manager
            .ensure_first_admin(&token)
            .await
            .context("cannot record the admin's token")?;
        manager
            .reconcile()
            .await
            .context("cannot reconcile workspaces with the node")?;
        if let Some(local) = manager.fleet().local_name() {
            if let Ok(api) = manager.fleet().api(local) {
                manager.fleet().pump(local, api, fleet::HEARTBEAT_EVERY);
            }
        }
        let renewer = {
            // Weak: a server dropped without serving (a failed start) stops it too.
            let (leader, fleet, shared) = (
                Arc::downgrade(&leader),
                Arc::downgrade(manager.fleet()),
                store.is_postgres(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(leader::RENEW_EVERY).await;
                    let Some(leader) = leader.upgrade() else {
                        return;
                    };
                    leader.renew().await;
                    drop(leader);
                    let Some(fleet) = fleet.upgrade() else { return };
                    if shared {
                        if let Err(e) = fleet.sync().await {
                            tracing::warn!(error = %e, "cannot read the nodes other servers see");
                        }
                    }
                }
            })
        };
        let (ssh, ssh_info) = match cfg.ssh_listen {
            Some(listen) => {
                let key = ssh::host_key(&cfg.data_dir)?;
                let public = ssh::public_line(&key);
                let gw = ssh::Gateway::bind(listen, key, manager.clone()).await?;
                let bound = gw
                    .local_addr()
                    .with_context(|| format!("cannot read address bound for {listen}"))?;
                tracing::info!(addr = %bound, "ssh gateway listening");
                let info = hearth_api::SshInfo {
                    port: Some(bound.port()),
                    address: Some(bound.ip().to_string()),
                    host_key: Some(public),
                };
                (Some(gw), info)
            }
            None => (None, hearth_api::SshInfo::default()),
        };
        let path = cfg.data_dir.join(SERVER_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(&info)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let links = Arc::new(links::Links::new(cfg.data_dir.join("uploads")));
        let auth = Arc::new(auth::AuthState::default());
        let app = api::router(state::AppState {
            manager: manager.clone(),
            public_rate: cfg.public_rate,
            rate: cfg.rate,
            uploads: uploads::Uploads {
                dir: cfg.data_dir.join("uploads"),
                max: cfg.upload_max,
            },
            ssh: Arc::new(ssh_info),
            metrics: Default::default(),
            links: links.clone(),
            auth: auth.clone(),
        });
        tracing::info!(url = info.url, id, data_dir = %cfg.data_dir.display(), "hearth server listening");
        let server = Server {
            listener,
            addr,
            app,
            store,
            lock,
            manager,
            ssh,
            info,
            proxy: None,
            auth,
            leader,
            renewer,
        };
        server.spawn_every(leader::RENEW_EVERY, |m| async move {
            m.take_over_orphans().await
        });
        Ok(server)
    }

    /// Binds the port proxy (see [`proxy`]); port listings carry its URLs from now on and
    /// `server.json` says where it listens. It serves along with the API.
    pub async fn bind_proxy(&mut self, cfg: &proxy::ProxyConfig) -> anyhow::Result<SocketAddr> {
        let p = proxy::Proxy::bind(cfg, self.manager.clone(), self.lock.dir()).await?;
        let addr = p.local_addr();
        let urls = p.urls().clone();
        let scheme = if urls.https { "https" } else { "http" };
        self.info.proxy = Some(format!("{scheme}://{addr}"));
        let path = self.lock.dir().join(SERVER_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(&self.info)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!(listen = %addr, domain = urls.domain, https = urls.https, "port proxy listening");
        self.manager.set_port_urls(urls, p.cookie_key().clone());
        self.proxy = Some(p);
        Ok(addr)
    }

    /// Snapshots running workspaces that changed every `every`, until the process ends.
    pub fn spawn_periodic_snapshots(&self, every: std::time::Duration) {
        self.spawn_every(every, |m| async move { m.periodic_snapshots().await });
    }

    /// How long a removed workspace's snapshots are kept before the store gc forgets them
    /// (zero: `rm` forgets them at once).
    pub fn set_deleted_retention(&self, keep: std::time::Duration) {
        self.manager.set_deleted_retention(keep);
    }

    /// How long audit log entries are kept (zero: forever); the background gc prunes.
    pub fn set_audit_retention(&self, keep: std::time::Duration) {
        self.manager.audit_settings().set_retention(keep);
    }

    /// Proxies whose `X-Forwarded-For` names the client in the audit log.
    pub fn set_trusted_proxies(&self, nets: Vec<ipnet::IpNet>) {
        self.manager.audit_settings().set_trusted_proxies(nets);
    }

    /// How long a node may go without a heartbeat before it is lost.
    pub fn set_node_lost_after(&self, d: std::time::Duration) {
        self.manager.fleet().set_lost_after(d);
    }

    /// Signs browsers in through the OpenID Connect provider `cfg` names: discovers it
    /// now (failing if it cannot be reached) and serves `/auth/login` and `/auth/callback`.
    pub async fn set_oidc(&self, cfg: oidc::OidcConfig) -> anyhow::Result<()> {
        let issuer = cfg.issuer.clone();
        let provider = oidc::Oidc::discover(cfg)
            .await
            .with_context(|| format!("cannot use the identity provider {issuer}"))?;
        self.auth.set_oidc(Arc::new(provider));
        Ok(())
    }

    /// How browser sessions behave (see [`auth`]).
    pub fn set_session_settings(&self, s: auth::SessionSettings) {
        self.auth.set_settings(s);
    }

    /// The secret push webhooks (`/v1/hooks/{forge}`) must carry; `None`: they are off.
    pub fn set_webhook_secret(&self, secret: Option<Vec<u8>>) {
        self.manager.set_webhook_secret(secret);
    }

    /// The image `up` uses when neither the request nor a devcontainer.json names one.
    pub fn set_default_image(&self, image: String) {
        self.manager.set_default_image(image);
    }

    /// The image builder workspaces are made from (`manager::build`).
    pub fn set_builder_image(&self, image: String) {
        self.manager.set_builder_image(image);
    }

    /// Deletes store chunks that no snapshot needs any more every `every`: retention and
    /// removed workspaces only forget snapshots, the space comes back here.
    pub fn spawn_store_gc(&self, every: std::time::Duration) {
        self.spawn_every(every, |m| async move { m.background_gc().await });
    }

    /// Stops workspaces idle for their timeout (`default` for those without one of their
    /// own; zero never) and records last activity, checking every `every`, until the
    /// process ends. See [`manager::idle`].
    pub fn spawn_idle_stop(&self, default: std::time::Duration, every: std::time::Duration) {
        self.manager.set_default_idle_timeout(default);
        self.spawn_every(every, |m| async move { m.idle_check().await });
    }

    /// Runs `job` every `every` (first after one period; a slow run delays the next rather
    /// than bunching them up), until the process ends.
    fn spawn_every<F, Fut>(&self, every: std::time::Duration, job: F)
    where
        F: Fn(Arc<Manager>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (manager, leader) = (self.manager.clone(), self.leader.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Servers sharing a database: only the lease holder (see [`leader`]).
                if leader.is_leader() {
                    job(manager.clone()).await;
                }
            }
        });
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This server's registration and lease (see [`leader`]).
    pub fn leadership(&self) -> &Arc<leader::Leadership> {
        &self.leader
    }

    /// The manager behind the API (`hearth bench api` attaches simulated nodes to its
    /// fleet and times its placement).
    pub fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }

    /// Serves until `shutdown` resolves; workspaces keep running afterwards.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let gateway = self.ssh.map(|gw| tokio::spawn(gw.serve()));
        let proxy = self.proxy.map(|p| tokio::spawn(p.serve()));
        let app = self.app.into_make_service_with_connect_info::<SocketAddr>();
        let res = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("http server failed");
        if let Some(gw) = gateway {
            gw.abort();
        }
        if let Some(p) = proxy {
            p.abort();
        }
        self.manager.flush_activity().await;
        self.renewer.abort();
        self.leader.leave().await;
        let _ = std::fs::remove_file(self.lock.dir().join(SERVER_FILE));
        self.store.close().await;
        tracing::info!("hearth server stopped");
        res
    }
}

/// Binds and serves until `shutdown` resolves.
pub async fn run(
    cfg: ServerConfig,
    node: Arc<dyn NodeApi>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::bind(cfg, node).await?.serve(shutdown).await
}

/// Offline cleanup for `hearth admin teardown`: stops every workspace and removes host-wide
/// resources; with `purge` also removes every workspace, forgets the snapshots of every
/// workspace the database knows (live or removed) and collects their chunks, and deletes
/// the database.
///
/// Takes `lock` so it cannot run under a live server. `database`: the server's
/// `--database` (`None`: the data dir's SQLite file); a purge leaves a PostgreSQL database
/// itself in place (only its rows go).
pub async fn teardown(
    lock: &DataDirLock,
    database: Option<&db::Database>,
    node: &dyn NodeApi,
    purge: bool,
) -> anyhow::Result<()> {
    let database = database
        .cloned()
        .unwrap_or_else(|| db::Database::Sqlite(lock.dir().join(DB_FILE)));
    let sqlite_file = match &database {
        db::Database::Sqlite(path) => Some(path.clone()),
        db::Database::Postgres(_) => None,
    };
    let mut failures = Vec::new();
    if sqlite_file.as_ref().is_none_or(|p| p.exists()) {
        let store = Store::connect(&database).await?;
        let mut forgot = false;
        for rec in store.list().await? {
            let name = rec.spec.name.clone();
            if purge {
                let forget = node.forget_snapshots(&rec.spec, None).await;
                if let Err(e) = &forget {
                    failures.push(format!("forget the snapshots of {name}: {e}"));
                }
                forgot |= forget.is_ok();
                match node.remove(&rec.spec).await {
                    Ok(()) if forget.is_ok() => store.delete(&rec.spec.id).await?,
                    // Its snapshots are still there: a record that a rerun purges.
                    Ok(()) => store.retire(&rec, &db::now_precise(), &db::now()).await?,
                    Err(e) => failures.push(format!("remove {name}: {e}")),
                }
            } else {
                match node.stop(&rec.spec).await {
                    Ok(()) => {
                        store
                            .set_state(&rec.spec.id, hearth_api::WorkspaceState::Stopped, None)
                            .await?
                    }
                    Err(e) => failures.push(format!("stop {name}: {e}")),
                }
            }
        }
        if purge {
            for d in store.deleted().await? {
                match node.forget_snapshots(&d.spec, None).await {
                    Ok(_) => {
                        forgot = true;
                        store.forget_deleted(d.spec.id.as_str()).await?;
                    }
                    Err(e) => failures.push(format!(
                        "forget the snapshots of removed workspace {}: {e}",
                        d.spec.name
                    )),
                }
            }
            if forgot {
                if let Err(e) = node.store_gc(None).await {
                    failures.push(format!("snapshot store gc: {e}"));
                }
            }
        }
        store.close().await;
    }
    if let Err(e) = node.teardown().await {
        failures.push(format!("node teardown: {e}"));
    }
    if !failures.is_empty() {
        anyhow::bail!("teardown incomplete: {}", failures.join("; "));
    }
    if let (true, Some(file)) = (purge, sqlite_file) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = file.clone().into_os_string();
            p.push(suffix);
            let p = PathBuf::from(p);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
