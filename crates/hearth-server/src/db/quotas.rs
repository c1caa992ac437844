//! The `quotas` table and what each user uses of theirs.
//!
//! Every check that lets a workspace grow (a new row, a start, bigger limits) runs in the
//! transaction that makes the change, after locking the owner's `users` row: two
//! concurrent creates of one user queue there, so they cannot both take the last slot
//! (SQLite's write transactions are serial anyway).

use hearth_api::WorkspaceState;
use hearth_node::Limits;

use super::{now, with_pool, DbRow, Dialect, Store, StoreError};

/// The `quotas` row that holds the default (no user name can be `*`).
pub const DEFAULT_QUOTA: &str = "*";

/// Workspaces of these name prefixes are the server's own machinery made for a user (a
/// builder, a prebuild): they count against no quota, and users cannot make such names.
pub(crate) const UNCOUNTED_PREFIXES: [&str; 2] = [
    crate::manager::build::BUILDER_PREFIX,
    crate::manager::PREBUILD_PREFIX,
];

/// One user's (or the default) limits; `None`: no limit on that resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    pub max_workspaces: Option<u64>,
    pub max_running: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
}

/// What a user uses (or what an operation would add): workspaces, running ones, the
/// memory limits of running ones and the disk sizes of all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaUsage {
    pub workspaces: u64,
    pub running: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

impl QuotaUsage {
    /// A new workspace of `limits` that will run (create, fork, restore).
    pub fn new_workspace(limits: &Limits) -> QuotaUsage {
        QuotaUsage {
            workspaces: 1,
            running: 1,
            memory_bytes: limits.memory_bytes,
            disk_bytes: limits.disk_bytes,
        }
    }

    /// A stopped workspace of `limits` starting.
    pub fn start(limits: &Limits) -> QuotaUsage {
        QuotaUsage {
            running: 1,
            memory_bytes: limits.memory_bytes,
            ..QuotaUsage::default()
        }
    }

    /// Limits going from `old` to `new` (memory counts only while it runs).
    pub fn resize(old: &Limits, new: &Limits, running: bool) -> QuotaUsage {
        QuotaUsage {
            memory_bytes: if running {
                new.memory_bytes.saturating_sub(old.memory_bytes)
            } else {
                0
            },
            disk_bytes: new.disk_bytes.saturating_sub(old.disk_bytes),
            ..QuotaUsage::default()
        }
    }

    fn add(&mut self, other: &QuotaUsage) {
        self.workspaces += other.workspaces;
        self.running += other.running;
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        self.disk_bytes = self.disk_bytes.saturating_add(other.disk_bytes);
    }
}

/// Which quota a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaResource {
    Workspaces,
    Running,
    Memory,
    Disk,
}

/// A refused change: `used + requested > limit` of `resource`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct QuotaExceeded {
    pub user: String,
    pub resource: QuotaResource,
    pub used: u64,
    pub requested: u64,
    pub limit: u64,
}

impl QuotaExceeded {
    fn message(&self) -> String {
        let (what, show): (&str, fn(u64) -> String) = match self.resource {
            QuotaResource::Workspaces => ("workspace", |n| n.to_string()),
            QuotaResource::Running => ("running workspace", |n| n.to_string()),
            QuotaResource::Memory => ("memory", gib),
            QuotaResource::Disk => ("disk", gib),
        };
        format!(
            "{what} quota of user {} exceeded: {} in use + {} requested > {} \
             (stop or remove a workspace, or ask an admin: hearth user quota)",
            self.user,
            show(self.used),
            show(self.requested),
            show(self.limit)
        )
    }
}

/// Whole GiB when exact, else one decimal ("6 GiB", "1.5 GiB"; 512 MiB is "0.5 GiB").
pub fn gib(b: u64) -> String {
    if b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b.is_multiple_of(1 << 20) && b < (1 << 30) {
        format!("{} MiB", b >> 20)
    } else {
        format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
    }
}

impl QuotaLimits {
    pub fn is_unlimited(&self) -> bool {
        *self == QuotaLimits::default()
    }

    /// Refuses `charge` on top of `used` where it would pass a limit. What does not grow
    /// is never refused, even over a limit an admin lowered since.
    pub fn check(
        &self,
        user: &str,
        used: &QuotaUsage,
        charge: &QuotaUsage,
    ) -> Result<(), QuotaExceeded> {
        let checks = [
            (
                QuotaResource::Workspaces,
                self.max_workspaces,
                used.workspaces,
                charge.workspaces,
            ),
            (
                QuotaResource::Running,
                self.max_running,
                used.running,
                charge.running,
            ),
            (
                QuotaResource::Memory,
                self.memory_bytes,
                used.memory_bytes,
                charge.memory_bytes,
            ),
            (
                QuotaResource::Disk,
                self.disk_bytes,
                used.disk_bytes,
                charge.disk_bytes,
            ),
        ];
        for (resource, limit, used, requested) in checks {
            if let Some(limit) = limit {
                if requested > 0 && used.saturating_add(requested) > limit {
                    return Err(QuotaExceeded {
                        user: user.to_string(),
                        resource,
                        used,
                        requested,
                        limit,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether workspace `name` counts against its owner's quota.
pub(crate) fn is_counted(name: &str) -> bool {
    !UNCOUNTED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether a workspace in `state` holds its memory (or soon will).
fn holds_memory(state: &str) -> bool {
    [
        WorkspaceState::Creating,
        WorkspaceState::Starting,
        WorkspaceState::Running,
        WorkspaceState::Stopping,
    ]
    .iter()
    .any(|s| s.as_str() == state)
}

fn column(row: &impl DbRow, name: &str) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = row.try_get(name).map_err(StoreError::Users)?;
    Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
}

pub(crate) fn limits_row(row: &impl DbRow) -> Result<QuotaLimits, StoreError> {
    Ok(QuotaLimits {
        max_workspaces: column(row, "max_workspaces")?,
        max_running: column(row, "max_running")?,
        memory_bytes: column(row, "memory_bytes")?,
        disk_bytes: column(row, "disk_bytes")?,
    })
}

/// Sums rows of `name, state, limits` of `workspaces`.
pub(crate) fn usage_of<R: DbRow>(rows: &[R]) -> Result<QuotaUsage, StoreError> {
    let mut u = QuotaUsage::default();
    for row in rows {
        let name: String = row.try_get("name").map_err(StoreError::Users)?;
        if !is_counted(&name) {
            continue;
        }
        let state: String = row.try_get("state").map_err(StoreError::Users)?;
        let limits: String = row.try_get("limits").map_err(StoreError::Users)?;
        let limits: Limits = serde_json::from_str(&limits).map_err(|e| StoreError::Corrupt {
            id: name.clone(),
            message: format!("limits: {e}"),
        })?;
        let running = holds_memory(&state);
        u.add(&QuotaUsage {
            workspaces: 1,
            running: u64::from(running),
            memory_bytes: if running { limits.memory_bytes } else { 0 },
            disk_bytes: limits.disk_bytes,
        });
    }
    Ok(u)
}

/// The user's own row if any, else the default's, else no limits, from rows of `quotas`
/// for the user and [`DEFAULT_QUOTA`]; `bool`: whether it is the user's own.
pub(crate) fn effective<R: DbRow>(
    user: &str,
    rows: &[R],
) -> Result<(QuotaLimits, bool), StoreError> {
    let mut default = QuotaLimits::default();
    for row in rows {
        let who: String = row.try_get("user_name").map_err(StoreError::Users)?;
        if who == user {
            return Ok((limits_row(row)?, true));
        }
        if who == DEFAULT_QUOTA {
            default = limits_row(row)?;
        }
    }
    Ok((default, false))
}

pub(crate) const QUOTA_COLUMNS: &str =
    "user_name, max_workspaces, max_running, memory_bytes, disk_bytes";

/// Locks user `$owner`'s row, then refuses `$charge` (a [`QuotaUsage`]) if it would take
/// them past their quota, inside transaction `$tx` of pool `$p` (within `with_pool!`);
/// evaluates to `Result<(), StoreError>`.
macro_rules! charge_quota {
    ($p:expr, $tx:expr, $owner:expr, $charge:expr) => {{
        use $crate::db::Dialect as _;
        async {
            sqlx::query(&format!(
                "SELECT name FROM users WHERE name = $1{}",
                $p.for_update()
            ))
            .bind($owner)
            .fetch_optional(&mut *$tx)
            .await
            .map_err($crate::db::StoreError::Users)?;
            let rows = sqlx::query(&format!(
                "SELECT {} FROM quotas WHERE user_name = $1 OR user_name = $2",
                $crate::db::quotas::QUOTA_COLUMNS
            ))
            .bind($owner)
            .bind($crate::db::quotas::DEFAULT_QUOTA)
            .fetch_all(&mut *$tx)
            .await
            .map_err($crate::db::StoreError::Users)?;
            let (limits, _) = $crate::db::quotas::effective($owner, &rows)?;
            if limits.is_unlimited() {
                return Ok::<(), $crate::db::StoreError>(());
            }
            let rows = sqlx::query("SELECT name, state, limits FROM workspaces WHERE owner = $1")
                .bind($owner)
                .fetch_all(&mut *$tx)
                .await
                .map_err($crate::db::StoreError::Users)?;
            let used = $crate::db::quotas::usage_of(&rows)?;
            limits
                .check($owner, &used, &$charge)
                .map_err($crate::db::StoreError::Quota)
        }
        .await
    }};
}
pub(crate) use charge_quota;

fn bind_value(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

impl Store {
    /// `user`'s quota (their own, else the default) and whether it is their own.
    pub async fn quota_of(&self, user: &str) -> Result<(QuotaLimits, bool), StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {QUOTA_COLUMNS} FROM quotas WHERE user_name = $1 OR user_name = $2"
            ))
            .bind(user)
            .bind(DEFAULT_QUOTA)
            .fetch_all(p)
            .await
            .map_err(StoreError::Users)?;
            effective(user, &rows)
        })
    }

    /// Every `quotas` row: user name (or [`DEFAULT_QUOTA`]) and limits.
    pub async fn quotas(&self) -> Result<Vec<(String, QuotaLimits)>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!("SELECT {QUOTA_COLUMNS} FROM quotas"))
                .fetch_all(p)
                .await
                .map_err(StoreError::Users)?;
            rows.iter()
                .map(|r| {
                    let who: String = r.try_get("user_name").map_err(StoreError::Users)?;
                    Ok((who, limits_row(r)?))
                })
                .collect()
        })
    }

    /// What `user`'s workspaces use now.
    pub async fn usage(&self, user: &str) -> Result<QuotaUsage, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query("SELECT name, state, limits FROM workspaces WHERE owner = $1")
                .bind(user)
                .fetch_all(p)
                .await
                .map_err(StoreError::Users)?;
            usage_of(&rows)
        })
    }

    /// Sets the quota of `user` (or the default, [`DEFAULT_QUOTA`]); `false` if the user
    /// does not exist (nothing is written then).
    pub async fn set_quota(&self, user: &str, q: &QuotaLimits) -> Result<bool, StoreError> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(StoreError::Users)?;
            if user != DEFAULT_QUOTA {
                // Locked so the user cannot go (users::delete_user) with its quota left.
                let exists = sqlx::query(&format!(
                    "SELECT name FROM users WHERE name = $1{}",
                    p.for_share()
                ))
                .bind(user)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::Users)?
                .is_some();
                if !exists {
                    return Ok(false);
                }
            }
            sqlx::query(
                "INSERT INTO quotas \
                 (user_name, max_workspaces, max_running, memory_bytes, disk_bytes, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (user_name) DO UPDATE SET max_workspaces = excluded.max_workspaces, \
                 max_running = excluded.max_running, memory_bytes = excluded.memory_bytes, \
                 disk_bytes = excluded.disk_bytes, updated_at = excluded.updated_at",
            )
            .bind(user)
            .bind(bind_value(q.max_workspaces))
            .bind(bind_value(q.max_running))
            .bind(bind_value(q.memory_bytes))
            .bind(bind_value(q.disk_bytes))
            .bind(now())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Users)?;
            tx.commit().await.map_err(StoreError::Users)?;
        });
        Ok(true)
    }

    /// Drops `user`'s own quota (the default applies again); whether there was one.
    pub async fn delete_quota(&self, user: &str) -> Result<bool, StoreError> {
        let n = with_pool!(self, p => {
            sqlx::query("DELETE FROM quotas WHERE user_name = $1")
                .bind(user)
                .execute(p)
                .await
                .map_err(StoreError::Users)?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Sets workspace `id` (owned by `owner`) from `from` to `state` if `charge` fits
    /// `owner`'s quota, in one transaction (a start). `false` (nothing changed) when the
    /// workspace is no longer `from` (another server operates on it).
    pub async fn set_state_charged(
        &self,
        id: &str,
        owner: &str,
        from: WorkspaceState,
        state: WorkspaceState,
        charge: &QuotaUsage,
    ) -> Result<bool, StoreError> {
        let n = with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(StoreError::Users)?;
            charge_quota!(p, tx, owner, *charge)?;
            let n = sqlx::query(
                "UPDATE workspaces SET state = $1, error = NULL, updated_at = $2, op_server = $4 \
                 WHERE id = $3 AND state = $5",
            )
            .bind(state.as_str())
            .bind(now())
            .bind(id)
            .bind(self.op_for(state))
            .bind(from.as_str())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Users)?
            .rows_affected();
            if n == 1 {
                tx.commit().await.map_err(StoreError::Users)?;
            }
            n
        });
        Ok(n == 1)
    }

    /// Replaces workspace `id`'s limits with `limits` (JSON) if `charge` fits `owner`'s
    /// quota, in one transaction (a resize).
    pub async fn set_limits_charged(
        &self,
        id: &str,
        owner: &str,
        limits: &Limits,
        charge: &QuotaUsage,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(limits).map_err(|e| StoreError::Corrupt {
            id: id.to_string(),
            message: format!("limits: {e}"),
        })?;
        with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(StoreError::Users)?;
            charge_quota!(p, tx, owner, *charge)?;
            sqlx::query("UPDATE workspaces SET limits = $1, updated_at = $2 WHERE id = $3")
                .bind(&json)
                .bind(now())
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Users)?;
            tx.commit().await.map_err(StoreError::Users)?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_which_quota_and_by_how_much() {
        let q = QuotaLimits {
            memory_bytes: Some(8 << 30),
            max_workspaces: Some(3),
            ..Default::default()
        };
        let used = QuotaUsage {
            workspaces: 2,
            running: 2,
            memory_bytes: 6 << 30,
            disk_bytes: 40 << 30,
        };
        let mut limits = Limits {
            memory_bytes: 4 << 30,
            ..Limits::default()
        };
        let e = q
            .check("alice", &used, &QuotaUsage::new_workspace(&limits))
            .unwrap_err();
        assert_eq!(e.resource, QuotaResource::Memory);
        assert!(
            e.to_string().starts_with(
                "memory quota of user alice exceeded: 6 GiB in use + 4 GiB requested > 8 GiB"
            ),
            "{e}"
        );
        limits.memory_bytes = 2 << 30;
        q.check("alice", &used, &QuotaUsage::new_workspace(&limits))
            .unwrap();
        let full = QuotaUsage {
            workspaces: 3,
            ..used
        };
        let e = q
            .check("alice", &full, &QuotaUsage::new_workspace(&limits))
            .unwrap_err();
        assert_eq!(e.resource, QuotaResource::Workspaces);
        // Over a lowered limit, what does not grow still goes through.
        let over = QuotaUsage {
            memory_bytes: 9 << 30,
            ..used
        };
        q.check("alice", &over, &QuotaUsage::default()).unwrap();
        assert_eq!(gib(512 << 20), "512 MiB");
        assert_eq!(gib(3 << 29), "1.5 GiB");
    }

    #[test]
    fn machinery_names_are_uncounted() {
        assert!(!is_counted("builder-alice"));
        assert!(!is_counted("prebuild-0123456789ab"));
        assert!(is_counted("web"));
    }
}
