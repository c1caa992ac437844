//! `node_join_tokens` and `node_credentials`: who may join as a node, and each joined
//! node's credential (hashes only).

use super::{now, with_pool, DbRow, Dialect, Store, StoreError};

/// Why a join was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinRefusal {
    /// Unknown, already used or expired (one answer for all three, so a caller learns
    /// nothing about which tokens exist).
    BadToken,
    /// The token was made for another node name.
    OtherName(String),
    /// A node of that name has joined already (a token made for that name replaces it).
    Taken,
}

fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::Nodes(e)
}

impl Store {
    pub async fn insert_join_token(
        &self,
        token_hash: &str,
        node: Option<&str>,
        created_by: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO node_join_tokens (token_hash, node, created_by, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(token_hash)
            .bind(node)
            .bind(created_by)
            .bind(now())
            .bind(expires_at)
            .execute(p)
            .await
            .map_err(db_err)?;
        });
        Ok(())
    }

    /// Uses join token `token_hash` for node `name` in one transaction: the token is
    /// deleted and the node's credential recorded. A refused name leaves the token for
    /// another try; expired tokens are swept on the way.
    pub async fn join_node(
        &self,
        token_hash: &str,
        name: &str,
        credential_hash: &str,
        now_unix: i64,
    ) -> Result<Result<(), JoinRefusal>, StoreError> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(db_err)?;
            sqlx::query("DELETE FROM node_join_tokens WHERE expires_at <= $1")
                .bind(now_unix)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            // Locked, so two joins with one token cannot both use it.
            let sql = format!(
                "SELECT node FROM node_join_tokens WHERE token_hash = $1{}",
                p.for_update()
            );
            let row = sqlx::query(&sql)
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            let Some(row) = row else {
                tx.commit().await.map_err(db_err)?;
                return Ok(Err(JoinRefusal::BadToken));
            };
            let bound: Option<String> = DbRow::try_get(&row, "node").map_err(db_err)?;
            if let Some(b) = &bound {
                if b != name {
                    tx.commit().await.map_err(db_err)?;
                    return Ok(Err(JoinRefusal::OtherName(b.clone())));
                }
            }
            let taken = sqlx::query("SELECT 1 FROM node_credentials WHERE node = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .is_some();
            if taken && bound.is_none() {
                tx.commit().await.map_err(db_err)?;
                return Ok(Err(JoinRefusal::Taken));
            }
            let used = sqlx::query("DELETE FROM node_join_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            if used != 1 {
                tx.rollback().await.map_err(db_err)?;
                return Ok(Err(JoinRefusal::BadToken));
            }
            sqlx::query(
                "INSERT INTO node_credentials (node, credential_hash, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (node) DO UPDATE SET credential_hash = excluded.credential_hash, \
                 created_at = excluded.created_at",
            )
            .bind(name)
            .bind(credential_hash)
            .bind(now())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        });
        Ok(Ok(()))
    }

    /// The hash of node `name`'s credential, if it has joined.
    pub async fn node_credential_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        with_pool!(self, p => {
            sqlx::query_scalar("SELECT credential_hash FROM node_credentials WHERE node = $1")
                .bind(name)
                .fetch_optional(p)
                .await
                .map_err(db_err)
        })
    }

    /// Forgets node `name`'s credential (it must join again); false if it had none.
    pub async fn delete_node_credential(&self, name: &str) -> Result<bool, StoreError> {
        let n = with_pool!(self, p => {
            sqlx::query("DELETE FROM node_credentials WHERE node = $1")
                .bind(name)
                .execute(p)
                .await
                .map_err(db_err)?
                .rows_affected()
        });
        Ok(n > 0)
    }
}
