//! Quotas and the audit log.

use super::{enc, Client, Result};
use crate::{AuditEntry, Quota, Quotas, UserQuota};

/// Filters of `GET /v1/audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user: Option<String>,
    /// RFC 3339: entries at or after it.
    pub since: Option<String>,
    /// An entry id: entries before it (the next page).
    pub before: Option<String>,
    pub limit: Option<u32>,
}

impl Client {
    /// The default quota and every user's (admins only).
    pub async fn quotas(&self) -> Result<Quotas> {
        self.get("/v1/quotas").await
    }

    /// `user`'s quota and usage (admins, or the user themselves).
    pub async fn user_quota(&self, user: &str) -> Result<UserQuota> {
        self.get(&format!("/v1/users/{}/quota", enc(user))).await
    }

    /// Replaces `user`'s own quota.
    pub async fn set_user_quota(&self, user: &str, q: &Quota) -> Result<UserQuota> {
        let url = self.url(&format!("/v1/users/{}/quota", enc(user)));
        Self::json(self.send(self.http.put(url).json(q)).await?).await
    }

    /// Drops `user`'s own quota: the default applies to them again.
    pub async fn reset_user_quota(&self, user: &str) -> Result<UserQuota> {
        let url = self.url(&format!("/v1/users/{}/quota", enc(user)));
        Self::json(self.send(self.http.delete(url)).await?).await
    }

    /// Replaces the default quota (of users without one of their own).
    pub async fn set_default_quota(&self, q: &Quota) -> Result<Quota> {
        let url = self.url("/v1/quotas/default");
        Self::json(self.send(self.http.put(url).json(q)).await?).await
    }

    /// Audit log entries, newest first (admins see everyone's, users their own).
    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(u) = &f.user {
            q.push(("user", u.clone()));
        }
        if let Some(s) = &f.since {
            q.push(("since", s.clone()));
        }
        if let Some(b) = &f.before {
            q.push(("before", b.clone()));
        }
        if let Some(l) = f.limit {
            q.push(("limit", l.to_string()));
        }
        let req = self.http.get(self.url("/v1/audit")).query(&q);
        Self::json(self.send(req).await?).await
    }
}
