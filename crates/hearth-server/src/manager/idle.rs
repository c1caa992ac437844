//! Idle auto-stop: a running workspace with no open session and no activity for its idle
//! timeout is stopped by the server, with the normal stop's final snapshot.
//!
//! Activity is what the server sees ([`crate::activity`]): SSH sessions, exec/shell
//! WebSockets, proxied requests and port-forwards, and a create or start. Work inside
//! the workspace that no session watches (a build left running after the SSH session
//! closed) does not count: CPU use would keep a workspace with a runaway process or an
//! idle language server up forever, which is what idle stop is for. Such work keeps a
//! session open or sets the workspace's timeout to 0.
//!
//! Last activity is flushed to the database at each check (so at most once per check
//! interval per workspace), on stop and at server shutdown, for listings after a restart.
//! The idle clock itself is in memory: after a restart every workspace has a full
//! timeout from the server's start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use hearth_api::{WorkspaceState, IDLE_TIMEOUT_MAX};

use super::Manager;
use crate::db::WorkspaceRecord;
use crate::error::ApiError;

/// The server's `--idle-timeout` when not given: 30 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub(super) struct IdleState {
    /// Seconds; 0 never stops workspaces that have no timeout of their own.
    default_secs: AtomicU64,
    /// Last activity written to the database, per workspace id.
    flushed: Mutex<HashMap<String, SystemTime>>,
}

impl Default for IdleState {
    fn default() -> Self {
        IdleState {
            default_secs: AtomicU64::new(DEFAULT_IDLE_TIMEOUT.as_secs()),
            flushed: Mutex::default(),
        }
    }
}

/// Checks an idle timeout asked for in a request.
pub(super) fn check_timeout(secs: u64) -> Result<u64, ApiError> {
    if secs > IDLE_TIMEOUT_MAX {
        return Err(ApiError::invalid(format!(
            "idle timeout {secs} s is over the limit of {IDLE_TIMEOUT_MAX} s (366 days); \
             0 turns idle stop off"
        )));
    }
    Ok(secs)
}

/// RFC 3339 UTC, second precision (as the database's other times).
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `30m`, `1h 30m`, `2s`: whole seconds.
fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

impl Manager {
    /// Sets the idle timeout of workspaces that have none of their own (zero: never).
    pub fn set_default_idle_timeout(&self, d: Duration) {
        self.idle.default_secs.store(d.as_secs(), Ordering::Relaxed);
    }

    /// Seconds without activity after which `rec` is stopped (0: never).
    pub(super) fn idle_timeout_of(&self, rec: &WorkspaceRecord) -> u64 {
        rec.idle
            .timeout
            .unwrap_or_else(|| self.idle.default_secs.load(Ordering::Relaxed))
    }

    /// Last activity: this run's, else what an earlier run flushed.
    pub(super) fn last_active_of(&self, rec: &WorkspaceRecord) -> Option<String> {
        self.activity
            .last_active(rec.spec.id.as_str())
            .map(rfc3339)
            .or_else(|| rec.idle.last_active.clone())
    }

    /// Bookkeeping of a start: it is activity, and the last stop's reason is over.
    pub(super) async fn started(&self, rec: &WorkspaceRecord) -> Result<(), ApiError> {
        self.activity.touch(rec.spec.id.as_str());
        if rec.idle.stop_reason.is_some() {
            self.store.set_stop_reason(&rec.spec.id, None).await?;
        }
        Ok(())
    }

    /// Bookkeeping of a stop: its reason and the last activity go to the database. Called
    /// before the state is set to stopped, so no reader sees a stop without its reason.
    pub(super) async fn stopped(&self, rec: &WorkspaceRecord, reason: &str) {
        if let Err(e) = self.store.set_stop_reason(&rec.spec.id, Some(reason)).await {
            tracing::warn!(workspace = rec.spec.name, error = %e, "cannot record the stop reason");
        }
        self.flush_one(rec).await;
    }

    pub(super) fn forget_activity(&self, id: &str) {
        self.activity.forget(id);
        self.flushed().remove(id);
    }

    fn flushed(&self) -> std::sync::MutexGuard<'_, HashMap<String, SystemTime>> {
        self.idle.flushed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `rec`'s last activity to the database if it changed since the last write.
    async fn flush_one(&self, rec: &WorkspaceRecord) {
        let id = rec.spec.id.as_str();
        let Some(t) = self.activity.last_active(id) else {
            return;
        };
        if self.flushed().get(id) == Some(&t) {
            return;
        }
        match self.store.set_last_active(id, &rfc3339(t)).await {
            Ok(()) => {
                self.flushed().insert(id.to_string(), t);
            }
            Err(e) => {
                tracing::warn!(workspace = rec.spec.name, error = %e, "cannot record last activity")
            }
        }
    }

    /// Writes every workspace's changed last activity (at shutdown).
    pub async fn flush_activity(&self) {
        match self.store.list().await {
            Ok(recs) => {
                for rec in &recs {
                    self.flush_one(rec).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list workspaces to record activity"),
        }
    }

    /// How long `rec` has been idle and its timeout, if it is to be stopped now.
    fn idle_verdict(&self, rec: &WorkspaceRecord) -> Option<(Duration, Duration)> {
        let timeout = Duration::from_secs(self.idle_timeout_of(rec));
        let id = rec.spec.id.as_str();
        if rec.state != WorkspaceState::Running
            || timeout.is_zero()
            || self.activity.open_sessions(id) > 0
        {
            return None;
        }
        let idle = self.activity.idle_for(id);
        (idle >= timeout).then_some((idle, timeout))
    }

    /// One pass of the idle loop: flushes last activity, stops idle workspaces.
    pub async fn idle_check(&self) {
        let recs = match self.store.list().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "idle check cannot list workspaces");
                return;
            }
        };
        for rec in recs {
            self.flush_one(&rec).await;
            if self.idle_verdict(&rec).is_none() {
                continue;
            }
            let name = rec.spec.name.clone();
            let _guard = self.lock(&name).await;
            // Again under the lock: a session may have opened, a user may have acted.
            let rec = match self.store.get(&name).await {
                Ok(Some(r)) if r.spec.id == rec.spec.id => r,
                _ => continue,
            };
            let Some((idle, timeout)) = self.idle_verdict(&rec) else {
                continue;
            };
            let reason = format!(
                "stopped as idle: no session or request for {} (idle timeout {})",
                human(idle),
                human(timeout)
            );
            tracing::info!(workspace = name, idle = %human(idle), timeout = %human(timeout), "stopping idle workspace");
            if let Err(e) = self.stop_locked(&rec, &reason).await {
                tracing::warn!(workspace = name, error = %e.message, "idle stop failed");
            }
        }
    }

    /// Changes what `req` sets of a workspace's settings (now: its idle timeout).
    pub async fn update(
        &self,
        caller: &crate::auth::Caller,
        name: &str,
        req: hearth_api::WorkspaceUpdate,
    ) -> Result<hearth_api::Workspace, ApiError> {
        let (guard, rec) = self.settled(caller, name).await?;
        if let Some(secs) = req.idle_timeout {
            let secs = check_timeout(secs)?;
            self.store
                .set_idle_timeout(&rec.spec.id, Some(secs))
                .await?;
            // A new timeout counts from now, not from the last activity.
            self.activity.touch(rec.spec.id.as_str());
            tracing::info!(
                workspace = name,
                idle_timeout = secs,
                "idle timeout changed"
            );
        }
        drop(guard);
        self.get(caller, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded_and_rendered_whole() {
        assert_eq!(check_timeout(0).unwrap(), 0);
        assert_eq!(check_timeout(IDLE_TIMEOUT_MAX).unwrap(), IDLE_TIMEOUT_MAX);
        assert!(check_timeout(IDLE_TIMEOUT_MAX + 1).is_err());
        assert_eq!(human(Duration::from_millis(1_800_400)), "30m");
        assert_eq!(human(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
            "1970-01-01T00:00:01Z"
        );
    }
}
