//! `hearth node --server URL`: a node on its own host, serving the control plane over a
//! connection it dials (see `hearth_link`), and `hearth node token`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use hearth_node::NodeApi;
use hearth_server::DataDirLock;
use serde::{Deserialize, Serialize};

use crate::server::{init_tracing, open_node, shutdown_signal, NodeFlags};

/// Where a joined node keeps its credential (0600).
pub const CREDENTIAL_FILE: &str = "node-credential.json";
/// Where archives the control plane sends wait while they load.
const SCRATCH_DIR: &str = "link-scratch";
/// The control-plane servers this node last heard of (it links to each; see
/// `hearth_link::run_node`).
const SERVERS_FILE: &str = "servers.json";

#[derive(Args, Debug)]
pub struct NodeDaemonArgs {
    /// The control plane's API URL (http://HOST:PORT): the node dials it, so only the
    /// server's API port must be reachable, from the node to the server.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// A join token (`hearth node token` on the server), exchanged once for this node's
    /// credential, which is kept in <data-dir>/node-credential.json and used from then on.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "HEARTH_JOIN_TOKEN",
        hide_env_values = true
    )]
    join_token: Option<String>,
    /// The node's name on the control plane (lowercase letters, digits, '-'); default:
    /// the host name.
    #[arg(long)]
    name: Option<String>,
    /// KEY=VALUE labels `hearth up --node-selector` matches (repeatable); they replace
    /// the node's labels each time it connects.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    #[command(flatten)]
    node: NodeFlags,
}

/// What `node-credential.json` holds.
#[derive(Serialize, Deserialize)]
struct Credential {
    name: String,
    credential: String,
}

fn host_name() -> Option<String> {
    let h = nix::unistd::gethostname().ok()?.into_string().ok()?;
    let h = h.split('.').next()?.to_ascii_lowercase();
    (!h.is_empty()).then_some(h)
}

fn read_credential(path: &Path) -> anyhow::Result<Option<Credential>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("cannot parse {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_credential(path: &Path, c: &Credential) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(c)?)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The node's credential: the one it keeps, else one got with the join token.
async fn credential(
    data_dir: &Path,
    url: &str,
    name: &str,
    token: Option<&str>,
) -> anyhow::Result<String> {
    let path = data_dir.join(CREDENTIAL_FILE);
    if let Some(c) = read_credential(&path)? {
        if c.name != name {
            bail!(
                "{} is node {}'s credential, not {name}'s: run with --name {} (or remove the \
                 file and join again with a join token)",
                path.display(),
                c.name,
                c.name
            );
        }
        if token.is_some() {
            tracing::info!(file = %path.display(), "this node has joined already: its credential is used, the join token is not");
        }
        return Ok(c.credential);
    }
    let Some(token) = token else {
        bail!(
            "node {name} has not joined yet ({} does not exist): pass --join-token (an admin \
             makes one with `hearth node token`)",
            path.display()
        );
    };
    let api = hearth_api::client::Client::new(data_dir, Some(url), Some(""))?;
    let got = api
        .join_node(&hearth_api::JoinNode {
            name: name.to_string(),
            token: token.to_string(),
        })
        .await
        .with_context(|| format!("cannot join {url} as node {name}"))?;
    let c = Credential {
        name: got.name,
        credential: got.credential,
    };
    write_credential(&path, &c)?;
    tracing::info!(node = name, server = url, "joined the control plane");
    Ok(c.credential)
}

/// Clears what a killed node left in its scratch dir and returns it.
fn scratch(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join(SCRATCH_DIR);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot clear {}", dir.display())),
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

pub async fn run(data_dir: &Path, args: &NodeDaemonArgs) -> anyhow::Result<()> {
    init_tracing("info");
    let Some(url) = args.server.as_deref() else {
        bail!("hearth node needs --server URL (the control plane's API), or a subcommand");
    };
    let url = url.trim_end_matches('/');
    if let Some(bad) = args
        .labels
        .iter()
        .find(|l| l.contains(',') || !l.contains('='))
    {
        bail!("--label {bad:?}: use KEY=VALUE (one label per --label)");
    }
    let name = match args.name.clone().or_else(host_name) {
        Some(n) if hearth_server::names::is_valid_name(&n) => n,
        Some(n) => bail!(
            "{}: pass --name",
            hearth_server::names::invalid_name_message(&n)
        ),
        None => bail!("cannot read the host name: pass --name"),
    };
    // One process per data dir, server or node.
    let _lock = DataDirLock::acquire(data_dir)?;
    let credential = credential(data_dir, url, &name, args.join_token.as_deref()).await?;
    let node: Arc<dyn NodeApi> = Arc::new(open_node(data_dir, &args.node, None).await?);
    let limits = hearth_link::Limits::new(scratch(data_dir)?);
    let known = data_dir.join(SERVERS_FILE);
    tokio::select! {
        r = hearth_link::run_node(url, &name, &args.labels, &credential, node, limits, Some(&known)) => {
            r.with_context(|| format!("node {name} cannot serve {url}"))?;
            bail!("node {name} stopped serving {url}")
        }
        () = shutdown_signal() => Ok(()),
    }
}
