//! The `audit_log` table: who did what, to what, from where, with what result.

use rand::RngCore;

use super::{now_precise, with_pool, DbRow, Store, StoreError};

/// One row of `audit_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// [`AuditRecord::new`] makes it: the time, then a random suffix.
    pub id: String,
    pub at: String,
    pub user: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub peer: Option<String>,
    pub status: Option<u16>,
    pub ok: bool,
    pub error: Option<String>,
}

/// Longest text kept of an error, target or action (they can echo input back).
const MAX_TEXT: usize = 1024;

fn clip(s: String) -> String {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl AuditRecord {
    /// An entry of now, its id made of the time and 8 random bytes.
    pub fn new(action: impl Into<String>) -> AuditRecord {
        let at = now_precise();
        let mut r = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut r);
        AuditRecord {
            id: format!("{at}-{}", hex::encode(r)),
            at,
            user: None,
            action: action.into(),
            target: None,
            peer: None,
            status: None,
            ok: true,
            error: None,
        }
    }
}

/// Which entries [`Store::audit`] answers, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub user: Option<String>,
    /// At or after this RFC 3339 time.
    pub since: Option<String>,
    /// Ids below this one (the next page).
    pub before: Option<String>,
    pub limit: u32,
}

fn audit_row(row: &impl DbRow) -> Result<AuditRecord, StoreError> {
    let status: Option<i64> = row.try_get("status").map_err(StoreError::Users)?;
    Ok(AuditRecord {
        id: row.try_get("id").map_err(StoreError::Users)?,
        at: row.try_get("at").map_err(StoreError::Users)?,
        user: row.try_get("user_name").map_err(StoreError::Users)?,
        action: row.try_get("action").map_err(StoreError::Users)?,
        target: row.try_get("target").map_err(StoreError::Users)?,
        peer: row.try_get("peer").map_err(StoreError::Users)?,
        status: status.and_then(|s| u16::try_from(s).ok()),
        ok: row.try_get("ok").map_err(StoreError::Users)?,
        error: row.try_get("error").map_err(StoreError::Users)?,
    })
}

impl Store {
    pub async fn insert_audit(&self, r: AuditRecord) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO audit_log \
                 (id, at, user_name, action, target, peer, status, ok, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&r.id)
            .bind(&r.at)
            .bind(&r.user)
            .bind(clip(r.action.clone()))
            .bind(r.target.clone().map(clip))
            .bind(&r.peer)
            .bind(r.status.map(i64::from))
            .bind(r.ok)
            .bind(r.error.clone().map(clip))
            .execute(p)
            .await
            .map_err(StoreError::Users)?;
        });
        Ok(())
    }

    /// Entries matching `q`, newest first.
    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        // Fixed text with a placeholder per filter, each filter off when its value is
        // NULL: one statement whatever is asked.
        with_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT id, at, user_name, action, target, peer, status, ok, error \
                 FROM audit_log \
                 WHERE ($1 IS NULL OR user_name = $1) AND ($2 IS NULL OR at >= $2) \
                 AND ($3 IS NULL OR id < $3) \
                 ORDER BY id DESC LIMIT $4",
            )
            .bind(&q.user)
            .bind(&q.since)
            .bind(&q.before)
            .bind(i64::from(q.limit))
            .fetch_all(p)
            .await
            .map_err(StoreError::Users)?;
            rows.iter().map(audit_row).collect()
        })
    }

    /// Deletes entries from before `before` (RFC 3339); how many went.
    pub async fn prune_audit(&self, before: &str) -> Result<u64, StoreError> {
        let n = with_pool!(self, p => {
            sqlx::query("DELETE FROM audit_log WHERE at < $1")
                .bind(before)
                .execute(p)
                .await
                .map_err(StoreError::Users)?
                .rows_affected()
        });
        Ok(n)
    }
}
