//! Per-user quotas: setting them, reading them, and checking a change against them.
//!
//! The binding check is in the transaction that makes the change (`db::quotas`); the one
//! here runs before a create streams progress, so a refusal is a plain 403, not the
//! stream's last line.

use super::*;
use crate::auth;
use crate::db::quotas::{self as q, DEFAULT_QUOTA};
use crate::db::{QuotaLimits, QuotaUsage};
use hearth_api::{Quota, QuotaSource, Quotas, UserQuota};

fn quota(l: QuotaLimits) -> Quota {
    Quota {
        max_workspaces: l.max_workspaces,
        max_running: l.max_running,
        memory_bytes: l.memory_bytes,
        disk_bytes: l.disk_bytes,
    }
}

fn limits(q: &Quota) -> QuotaLimits {
    QuotaLimits {
        max_workspaces: q.max_workspaces,
        max_running: q.max_running,
        memory_bytes: q.memory_bytes,
        disk_bytes: q.disk_bytes,
    }
}

fn usage(u: QuotaUsage) -> hearth_api::QuotaUsage {
    hearth_api::QuotaUsage {
        workspaces: u.workspaces,
        running: u.running,
        memory_bytes: u.memory_bytes,
        disk_bytes: u.disk_bytes,
    }
}

/// Largest quota value: well inside what the database holds (a BIGINT), as documented.
const MAX_QUOTA: u64 = 1 << 62;

fn check_quota(req: &Quota) -> Result<(), ApiError> {
    for (field, v) in [
        ("max_workspaces", req.max_workspaces),
        ("max_running", req.max_running),
        ("memory_bytes", req.memory_bytes),
        ("disk_bytes", req.disk_bytes),
    ] {
        if v.is_some_and(|v| v > MAX_QUOTA) {
            return Err(ApiError::invalid(format!(
                "{field} is too large (at most {MAX_QUOTA})"
            )));
        }
    }
    Ok(())
}

fn check_user_name(name: &str) -> Result<(), ApiError> {
    if !auth::is_valid_user_name(name) {
        return Err(ApiError::invalid(auth::invalid_user_name_message(name)));
    }
    Ok(())
}

fn no_such_user(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "user {name} not found (hearth user ls lists users)"
    ))
}

impl Manager {
    /// `user`'s quota in force and their use of it. Admins ask of anyone, users of
    /// themselves only (anyone else is answered as missing).
    pub async fn user_quota(&self, caller: &Caller, user: &str) -> Result<UserQuota, ApiError> {
        check_user_name(user)?;
        if !caller.may_use(user) || self.store.user(user).await?.is_none() {
            return Err(no_such_user(user));
        }
        self.quota_view(user).await
    }

    async fn quota_view(&self, user: &str) -> Result<UserQuota, ApiError> {
        let (l, own) = self.store.quota_of(user).await?;
        Ok(UserQuota {
            user: user.to_string(),
            source: if own {
                QuotaSource::User
            } else {
                QuotaSource::Default
            },
            quota: quota(l),
            usage: usage(self.store.usage(user).await?),
        })
    }

    /// The default and every user's quota (admins only: the route checks).
    pub async fn quotas(&self) -> Result<Quotas, ApiError> {
        let rows = self.store.quotas().await?;
        let default = rows
            .iter()
            .find(|(who, _)| who == DEFAULT_QUOTA)
            .map(|(_, l)| quota(*l))
            .unwrap_or_default();
        let mut users = Vec::new();
        for u in self.store.users().await? {
            users.push(self.quota_view(&u.name).await?);
        }
        Ok(Quotas { default, users })
    }

    /// Replaces `user`'s own quota (admins only: the route checks). Usage above the new
    /// limits stays; only what would grow it is refused from now on.
    pub async fn set_user_quota(&self, user: &str, req: &Quota) -> Result<UserQuota, ApiError> {
        check_user_name(user)?;
        check_quota(req)?;
        if !self.store.set_quota(user, &limits(req)).await? {
            return Err(no_such_user(user));
        }
        tracing::info!(user, quota = ?req, "quota set");
        self.quota_view(user).await
    }

    /// Drops `user`'s own quota: the default applies again.
    pub async fn reset_user_quota(&self, user: &str) -> Result<UserQuota, ApiError> {
        check_user_name(user)?;
        if self.store.user(user).await?.is_none() {
            return Err(no_such_user(user));
        }
        self.store.delete_quota(user).await?;
        tracing::info!(user, "quota reset to the default");
        self.quota_view(user).await
    }

    /// Replaces the default quota, which holds for users without one of their own.
    pub async fn set_default_quota(&self, req: &Quota) -> Result<Quota, ApiError> {
        check_quota(req)?;
        self.store.set_quota(DEFAULT_QUOTA, &limits(req)).await?;
        tracing::info!(quota = ?req, "default quota set");
        Ok(*req)
    }

    /// Refuses up front what the transaction would refuse now (it checks again, under
    /// the owner's lock).
    pub(super) async fn precheck_quota(
        &self,
        owner: &str,
        charge: &QuotaUsage,
    ) -> Result<(), ApiError> {
        let (l, _) = self.store.quota_of(owner).await?;
        if l.is_unlimited() {
            return Ok(());
        }
        let used = self.store.usage(owner).await?;
        l.check(owner, &used, charge)
            .map_err(|e| ApiError::quota(e.to_string()))
    }

    /// Sets a stopped workspace starting, if its owner's quota allows it to run.
    pub(super) async fn set_starting(
        &self,
        rec: &WorkspaceRecord,
        state: WorkspaceState,
    ) -> Result<(), ApiError> {
        if !q::is_counted(&rec.spec.name) {
            return self.claim(rec, state).await;
        }
        let claimed = self
            .store
            .set_state_charged(
                rec.spec.id.as_str(),
                &rec.owner,
                rec.state,
                state,
                &QuotaUsage::start(&rec.spec.limits),
            )
            .await?;
        if !claimed {
            return Err(super::changed_meanwhile(&rec.spec.name));
        }
        Ok(())
    }

    /// Records `spec`'s new limits, if its owner's quota allows the growth.
    pub(super) async fn record_limits(
        &self,
        rec: &WorkspaceRecord,
        spec: &WorkspaceSpec,
    ) -> Result<(), ApiError> {
        if !q::is_counted(&rec.spec.name) {
            self.store.set_limits(spec).await?;
            return Ok(());
        }
        let running = rec.state == WorkspaceState::Running;
        let charge = QuotaUsage::resize(&rec.spec.limits, &spec.limits, running);
        self.store
            .set_limits_charged(spec.id.as_str(), &rec.owner, &spec.limits, &charge)
            .await?;
        Ok(())
    }
}
