//! Which server runs the background work when several share one PostgreSQL database.
//!
//! Every server registers in `servers` and heartbeats there; the one holding the `leader`
//! lease (`leases` table) runs the periodic jobs (snapshots, retries of failed final
//! snapshots at start, idle stops, store gc), the others skip their ticks. The holder
//! renews every [`RENEW_EVERY`] for [`LEASE_TTL`]; a server that stops cleanly gives the
//! lease up, a killed one's lease expires, and the next server to renew takes it: work
//! moves within [`LEASE_TTL`] + [`RENEW_EVERY`]. A server counts itself leader only until
//! [`LEASE_TTL`] minus [`RENEW_EVERY`] after the renewal began, so it stops starting jobs
//! before anyone else may take the lease (clocks are assumed in step within that margin,
//! as NTP keeps them). A job already running when its server loses the lease runs to its
//! end; what jobs do is safe to repeat (a snapshot of an unchanged workspace is skipped,
//! an idle stop of a stopped workspace is a no-op), and node calls are fenced by
//! generation numbers. On SQLite a server is alone and always leader.
//!
//! Besides the periodic jobs, the leader takes over operations whose server is gone
//! (`manager/takeover.rs`). Everything else that runs at a server's start is safe on any
//! number of servers: the startup reconcile leaves operations of other live servers alone
//! and is idempotent, and each server fences a node when the node links to it.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::RngCore;

use crate::db::{ServerRow, Store, StoreError};

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the holder renews (and every server heartbeats).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// The lease of the background jobs.
pub const LEADER: &str = "leader";

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "server {other} ({url}) shares this database{node}: a server's embedded node belongs \
         to one host, so servers sharing a database run without one (hearth server \
         --no-local-node; nodes join with hearth node --server URL)"
    )]
    EmbeddedShared {
        other: String,
        url: String,
        node: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn unix_ms() -> i64 {
    let t = time::OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Servers seen since this time (unix ms) are live: they heartbeat every [`RENEW_EVERY`],
/// and one silent for [`LEASE_TTL`] is gone (its leases expire, its operations are
/// taken over, nodes drop their links to it).
pub(crate) fn live_since() -> i64 {
    unix_ms() - i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX)
}

/// File in the data dir holding the server's id in `servers` and `leases`.
pub const ID_FILE: &str = "server.id";

/// This server's id (16 hex digits), made on first use and kept in the data dir.
pub fn server_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() == 16 && s.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Ok(s.trim().to_string())
        }
        Ok(_) => tracing::warn!(path = %path.display(), "server id unreadable; making a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// This server's registration and its view of the leader lease.
pub struct Leadership {
    id: String,
    url: String,
    embedded: Option<String>,
    store: Store,
    /// Until when this server may start leader work (`None`: not leader).
    until: Mutex<Option<Instant>>,
}

impl Leadership {
    /// Registers this server. Refused when it has an embedded node and another live
    /// server shares the database, or another live one has an embedded node.
    /// `id`: this server's ([`server_id`]), the same across its restarts, so a server
    /// restarted at once is not taken for another.
    pub async fn join(
        store: Store,
        id: &str,
        url: &str,
        embedded: Option<&str>,
    ) -> Result<Leadership, LeaderError> {
        let id = id.to_string();
        let now = unix_ms();
        let since = now - i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX);
        let others: Vec<ServerRow> = store.live_servers(since).await?;
        if let Some(o) = others
            .iter()
            .filter(|o| o.id != id)
            .find(|o| embedded.is_some() || o.embedded_node.is_some())
        {
            let node = match (&o.embedded_node, embedded) {
                (Some(n), _) => format!(" and runs embedded node {n}"),
                (None, Some(n)) => format!(", and this server would run embedded node {n}"),
                (None, None) => String::new(),
            };
            return Err(LeaderError::EmbeddedShared {
                other: o.id.clone(),
                url: o.url.clone(),
                node,
            });
        }
        store.register_server(&id, url, embedded, now).await?;
        let me = Leadership {
            id,
            url: url.to_string(),
            embedded: embedded.map(str::to_string),
            store,
            until: Mutex::new(None),
        };
        me.renew().await;
        Ok(me)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this server may start leader work now.
    pub fn is_leader(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|u| Instant::now() < u)
    }

    /// Heartbeats and takes or renews the lease; a database error counts as not leader.
    pub async fn renew(&self) -> bool {
        let began = Instant::now();
        let now = unix_ms();
        let ttl = i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX);
        if let Err(e) = self
            .store
            .register_server(&self.id, &self.url, self.embedded.as_deref(), now)
            .await
        {
            tracing::warn!(error = %e, "server heartbeat not recorded");
        }
        let held = match self
            .store
            .take_lease(LEADER, &self.id, now, now + ttl)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader lease");
                false
            }
        };
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let was = until.is_some_and(|u| Instant::now() < u);
        *until = held.then(|| began + LEASE_TTL.saturating_sub(RENEW_EVERY));
        if held != was {
            if held {
                tracing::info!(server = self.id, "leader: running the background jobs");
            } else {
                tracing::info!(
                    server = self.id,
                    "not leader: another server runs the background jobs"
                );
            }
        }
        held
    }

    /// Gives the lease up and forgets this server (a clean stop).
    pub async fn leave(&self) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(e) = self.store.remove_server(&self.id, unix_ms()).await {
            tracing::warn!(error = %e, "cannot unregister the server");
        }
    }
}
