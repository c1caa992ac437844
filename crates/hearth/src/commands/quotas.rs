//! `hearth user quota` and `hearth audit`.

use hearth_api::client::AuditFilter;
use hearth_api::{Quota, QuotaSource, UserQuota};

use super::{human_size, print_table, Commands};

/// One limit given on the command line: a value, or none (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaValue(pub Option<u64>);

/// What `hearth user quota` changes; `None` fields stay as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotaChange {
    pub max_workspaces: Option<QuotaValue>,
    pub max_running: Option<QuotaValue>,
    pub memory: Option<QuotaValue>,
    pub disk: Option<QuotaValue>,
}

impl QuotaChange {
    pub fn is_empty(&self) -> bool {
        self.max_workspaces.is_none()
            && self.max_running.is_none()
            && self.memory.is_none()
            && self.disk.is_none()
    }

    fn apply(&self, mut q: Quota) -> Quota {
        let set = |v: Option<QuotaValue>, old: Option<u64>| v.map_or(old, |v| v.0);
        q.max_workspaces = set(self.max_workspaces, q.max_workspaces);
        q.max_running = set(self.max_running, q.max_running);
        q.memory_bytes = set(self.memory, q.memory_bytes);
        q.disk_bytes = set(self.disk, q.disk_bytes);
        q
    }
}

fn count(used: u64, limit: Option<u64>) -> String {
    match limit {
        Some(l) => format!("{used}/{l}"),
        None => format!("{used}/-"),
    }
}

fn size(used: u64, limit: Option<u64>) -> String {
    match limit {
        Some(l) => format!("{}/{}", human_size(used), human_size(l)),
        None => format!("{}/-", human_size(used)),
    }
}

/// The columns `hearth user ls` and `hearth user quota` show: used/limit ("-": none).
pub(super) fn quota_columns(q: &UserQuota) -> Vec<String> {
    vec![
        count(q.usage.workspaces, q.quota.max_workspaces),
        count(q.usage.running, q.quota.max_running),
        size(q.usage.memory_bytes, q.quota.memory_bytes),
        size(q.usage.disk_bytes, q.quota.disk_bytes),
        match q.source {
            QuotaSource::User => "user",
            QuotaSource::Default => "default",
        }
        .to_string(),
    ]
}

pub(super) const QUOTA_HEADER: [&str; 5] = ["WORKSPACES", "RUNNING", "MEMORY", "DISK", "QUOTA"];

fn show_limit(v: Option<u64>, bytes: bool) -> String {
    match (v, bytes) {
        (None, _) => "none".into(),
        (Some(v), true) => human_size(v),
        (Some(v), false) => v.to_string(),
    }
}

impl Commands {
    /// Shows, changes or resets a user's quota (no user: the caller's own).
    pub async fn user_quota(
        &self,
        user: Option<&str>,
        change: QuotaChange,
        reset: bool,
        json: bool,
    ) -> anyhow::Result<()> {
        let user = match user {
            Some(u) => u.to_string(),
            None => self.api.me().await?.name,
        };
        let q = if reset {
            self.api.reset_user_quota(&user).await?
        } else if change.is_empty() {
            self.api.user_quota(&user).await?
        } else {
            // Fields not given keep what holds now (the default's, the first time).
            let now = self.api.user_quota(&user).await?;
            self.api
                .set_user_quota(&user, &change.apply(now.quota))
                .await?
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&q)?);
            return Ok(());
        }
        let mut header = vec!["USER"];
        header.extend(QUOTA_HEADER);
        let mut row = vec![q.user.clone()];
        row.extend(quota_columns(&q));
        print_table(&header, &[row]);
        Ok(())
    }

    /// Shows or changes the default quota, for users without one of their own.
    pub async fn default_quota(&self, change: QuotaChange, json: bool) -> anyhow::Result<()> {
        let now = self.api.quotas().await?.default;
        let q = if change.is_empty() {
            now
        } else {
            self.api.set_default_quota(&change.apply(now)).await?
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&q)?);
            return Ok(());
        }
        print_table(
            &["MAX-WORKSPACES", "MAX-RUNNING", "MEMORY", "DISK"],
            &[vec![
                show_limit(q.max_workspaces, false),
                show_limit(q.max_running, false),
                show_limit(q.memory_bytes, true),
                show_limit(q.disk_bytes, true),
            ]],
        );
        Ok(())
    }

    /// Prints audit log entries, newest first.
    pub async fn audit(&self, filter: &AuditFilter, json: bool) -> anyhow::Result<()> {
        let entries = self.api.audit(filter).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&entries)?);
            return Ok(());
        }
        let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                let result = match (e.ok, e.status) {
                    (true, Some(s)) => s.to_string(),
                    (true, None) => "ok".into(),
                    (false, Some(s)) => format!("{s}: {}", dash(&e.error)),
                    (false, None) => format!("refused: {}", dash(&e.error)),
                };
                vec![
                    e.at.clone(),
                    dash(&e.user),
                    e.action.clone(),
                    dash(&e.target),
                    dash(&e.peer),
                    result,
                ]
            })
            .collect();
        print_table(
            &["TIME", "USER", "ACTION", "TARGET", "FROM", "RESULT"],
            &rows,
        );
        Ok(())
    }
}
