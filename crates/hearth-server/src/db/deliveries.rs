//! The `webhook_deliveries` table: which forge deliveries were handled, and how they were
//! answered, so a redelivery starts nothing (see `prebuilds.rs`, the routes).

use super::{query_err, with_pool, DbRow, Dialect, Store, StoreError};

/// What [`Store::claim_delivery`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryClaim {
    /// Not seen before (or its earlier claim was abandoned): the caller handles it, then
    /// answers ([`Store::answer_delivery`]) or releases ([`Store::release_delivery`]) it.
    New,
    /// Handled before, answered with this.
    Answered(String),
    /// Being handled now by another request (of this server or another).
    Pending,
    /// Seen before with another body.
    OtherBody,
}

impl Store {
    /// Claims delivery `key` with the body hashed `body_sha256`, atomically across the
    /// servers of the database (the primary key). An unanswered claim made before
    /// `stale_before` (its server died handling it) is taken over.
    pub async fn claim_delivery(
        &self,
        key: &str,
        body_sha256: &str,
        stale_before: &str,
    ) -> Result<DeliveryClaim, StoreError> {
        // Twice at most: a row can go (released, pruned) between the insert and the read.
        for _ in 0..2 {
            let now = super::now_precise();
            let inserted = with_pool!(self, p => {
                sqlx::query(
                    "INSERT INTO webhook_deliveries (id, body_sha256, answer, received_at) \
                     VALUES ($1, $2, NULL, $3) ON CONFLICT (id) DO NOTHING",
                )
                .bind(key)
                .bind(body_sha256)
                .bind(&now)
                .execute(p)
                .await
                .map_err(query_err(key))?
                .rows_affected()
            });
            if inserted == 1 {
                return Ok(DeliveryClaim::New);
            }
            let row: Option<(String, Option<String>, String)> = with_pool!(self, p => {
                let row = sqlx::query(
                    "SELECT body_sha256, answer, received_at FROM webhook_deliveries WHERE id = $1",
                )
                .bind(key)
                .fetch_optional(p)
                .await
                .map_err(query_err(key))?;
                row.map(|r| -> Result<_, sqlx::Error> {
                    Ok((r.try_get("body_sha256")?, r.try_get("answer")?, r.try_get("received_at")?))
                })
                .transpose()
                .map_err(query_err(key))?
            });
            let Some((sha, answer, at)) = row else {
                continue;
            };
            if sha != body_sha256 {
                return Ok(DeliveryClaim::OtherBody);
            }
            if let Some(a) = answer {
                return Ok(DeliveryClaim::Answered(a));
            }
            if at.as_str() >= stale_before {
                return Ok(DeliveryClaim::Pending);
            }
            // Abandoned: taken over by whoever moves its time first.
            let taken = with_pool!(self, p => {
                sqlx::query(
                    "UPDATE webhook_deliveries SET received_at = $3 \
                     WHERE id = $1 AND answer IS NULL AND received_at = $2",
                )
                .bind(key)
                .bind(&at)
                .bind(&now)
                .execute(p)
                .await
                .map_err(query_err(key))?
                .rows_affected()
            });
            return Ok(match taken {
                1 => DeliveryClaim::New,
                _ => DeliveryClaim::Pending,
            });
        }
        Ok(DeliveryClaim::Pending)
    }

    /// Records the answer to claimed delivery `key`, for its redeliveries.
    pub async fn answer_delivery(&self, key: &str, answer: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("UPDATE webhook_deliveries SET answer = $2 WHERE id = $1")
                .bind(key)
                .bind(answer)
                .execute(p)
                .await
                .map_err(query_err(key))?;
        });
        Ok(())
    }

    /// Drops the claim of delivery `key` that failed: a redelivery is handled anew.
    pub async fn release_delivery(&self, key: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("DELETE FROM webhook_deliveries WHERE id = $1 AND answer IS NULL")
                .bind(key)
                .execute(p)
                .await
                .map_err(query_err(key))?;
        });
        Ok(())
    }

    /// Forgets deliveries received before `before`, and all but the newest `keep`. How
    /// many went.
    pub async fn prune_deliveries(&self, before: &str, keep: i64) -> Result<u64, StoreError> {
        let n = with_pool!(self, p => {
            let old = sqlx::query(&format!(
                "DELETE FROM webhook_deliveries WHERE received_at{0} < $1",
                p.bytewise()
            ))
            .bind(before)
            .execute(p)
            .await
            .map_err(query_err("webhook_deliveries"))?
            .rows_affected();
            let over = sqlx::query(&format!(
                "DELETE FROM webhook_deliveries WHERE received_at{0} <= \
                 (SELECT received_at{0} FROM webhook_deliveries \
                  ORDER BY received_at{0} DESC LIMIT 1 OFFSET {keep})",
                p.bytewise()
            ))
            .execute(p)
            .await
            .map_err(query_err("webhook_deliveries"))?
            .rows_affected();
            old + over
        });
        Ok(n)
    }
}
