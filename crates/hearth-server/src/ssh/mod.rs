//! The SSH gateway: `ssh -p 2222 WORKSPACE@HOST` reaches a workspace with no sshd in it.
//!
//! russh speaks the protocol; every channel is mapped onto what the node already offers:
//! shells, commands and the sftp subsystem (`hearth-agent sftp-server`) run through the
//! agent's exec sessions, `-L`/`-R` use `NodeApi::connect`/`listen` inside the
//! workspace's network namespace. Login is by public key only: the key's owner (see
//! `ssh_keys.rs`) must be allowed to see the workspace named as the SSH user; every
//! refusal looks the same to the client.

mod agent;
mod session;

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;
use russh::{MethodKind, MethodSet};

use crate::manager::Manager;

/// The host key file in the data dir (OpenSSH private key format, 0600).
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// Default `--ssh-listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2222";
/// A silent client is probed this often, and dropped after three unanswered probes.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Reads the host key, creating it on first use; the same key across restarts is what
/// lets clients keep `StrictHostKeyChecking` on.
pub fn host_key(data_dir: &Path) -> anyhow::Result<PrivateKey> {
    let path = data_dir.join(HOST_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            return PrivateKey::from_openssh(&s).with_context(|| {
                format!(
                    "cannot parse ssh host key {} (delete it to make a new one; clients will then warn once)",
                    path.display()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key
        .to_openssh(LineEnding::LF)
        .context("cannot encode the new ssh host key")?;
    let tmp = data_dir.join(format!("{HOST_KEY_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "made a new ssh host key");
    Ok(key)
}

/// The host key as a `known_hosts` line without the host field.
pub fn public_line(key: &PrivateKey) -> String {
    key.public_key()
        .to_openssh()
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A bound gateway, ready to serve.
pub struct Gateway {
    listener: tokio::net::TcpListener,
    config: Arc<russh::server::Config>,
    manager: Arc<Manager>,
}

impl Gateway {
    pub async fn bind(
        listen: SocketAddr,
        key: PrivateKey,
        manager: Arc<Manager>,
    ) -> anyhow::Result<Gateway> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for ssh on {listen} (--ssh-listen off turns the gateway off)"
                )
            })?;
        let config = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-hearth".into()),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![key],
            // Editors keep idle sessions open for hours: no inactivity limit, but dead
            // peers are found by keepalives.
            inactivity_timeout: None,
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: 3,
            nodelay: true,
            window_size: 8 << 20,
            maximum_packet_size: 64 << 10,
            ..Default::default()
        };
        Ok(Gateway {
            listener,
            config: Arc::new(config),
            manager,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "ssh accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let config = self.config.clone();
            let handler = session::Conn::new(self.manager.clone(), peer);
            tokio::spawn(async move {
                match russh::server::run_stream(config, stream, handler).await {
                    Ok(running) => {
                        if let Err(e) = running.await {
                            tracing::debug!(%peer, error = %e, "ssh connection ended");
                        }
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "ssh handshake failed"),
                }
            });
        }
    }
}
