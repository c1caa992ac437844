//! The `users` table: names, admin flags and token hashes (never tokens).

use super::{is_unique_violation, now, with_pool, DbRow, Dialect, Store, StoreError};

/// One row of `users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub admin: bool,
    pub created_at: String,
}

pub(super) fn user(row: &impl DbRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        name: row.try_get("name").map_err(StoreError::Users)?,
        admin: row.try_get("admin").map_err(StoreError::Users)?,
        created_at: row.try_get("created_at").map_err(StoreError::Users)?,
    })
}

impl Store {
    /// The user whose token hashes to `token_hash`.
    pub async fn user_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        with_pool!(self, p => {
            let row =
                sqlx::query("SELECT name, admin, created_at FROM users WHERE token_hash = $1")
                    .bind(token_hash)
                    .fetch_optional(p)
                    .await
                    .map_err(StoreError::Users)?;
            row.as_ref().map(user).transpose()
        })
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        with_pool!(self, p => {
            let row = sqlx::query("SELECT name, admin, created_at FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(p)
                .await
                .map_err(StoreError::Users)?;
            row.as_ref().map(user).transpose()
        })
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT name, admin, created_at FROM users ORDER BY name{}",
                p.bytewise()
            ))
            .fetch_all(p)
            .await
            .map_err(StoreError::Users)?;
            rows.iter().map(user).collect()
        })
    }

    /// Adds a user; a taken name is [`StoreError::UserTaken`].
    pub async fn insert_user(
        &self,
        name: &str,
        admin: bool,
        token_hash: &str,
    ) -> Result<UserRecord, StoreError> {
        let rec = UserRecord {
            name: name.to_string(),
            admin,
            created_at: now(),
        };
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO users (name, admin, token_hash, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&rec.name)
            .bind(rec.admin)
            .bind(token_hash)
            .bind(&rec.created_at)
            .execute(p)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::UserTaken(name.to_string())
                } else {
                    StoreError::Users(e)
                }
            })?;
        });
        Ok(rec)
    }

    /// Makes `name` an admin or a plain user; `None` when there is no such user.
    pub async fn set_user_admin(
        &self,
        name: &str,
        admin: bool,
    ) -> Result<Option<UserRecord>, StoreError> {
        with_pool!(self, p => {
            sqlx::query("UPDATE users SET admin = $1 WHERE name = $2")
                .bind(admin)
                .bind(name)
                .execute(p)
                .await
                .map_err(StoreError::Users)?;
        });
        self.user(name).await
    }

    /// Makes `name` an admin whose token hashes to `token_hash`, creating the user if
    /// needed (the first-start admin, whose token is the data dir's token file).
    pub async fn upsert_admin(&self, name: &str, token_hash: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO users (name, admin, token_hash, created_at) \
                 VALUES ($1, TRUE, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET admin = TRUE, token_hash = excluded.token_hash",
            )
            .bind(name)
            .bind(token_hash)
            .bind(now())
            .execute(p)
            .await
            .map_err(StoreError::Users)?;
        });
        Ok(())
    }

    /// Deletes user `name`, first handing its workspaces to `heir` if given, in one
    /// transaction; while it owns workspaces and no heir is given, deletes nothing.
    ///
    /// The user's row is locked first, and everything that adds a row owned by a user
    /// (workspaces, SSH keys, secrets) locks it shared, so none is added meanwhile that
    /// would outlive its user.
    pub async fn delete_user(&self, name: &str, heir: Option<&str>) -> Result<Removal, StoreError> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(StoreError::Users)?;
            let exists = sqlx::query(&format!(
                "SELECT name FROM users WHERE name = $1{}",
                p.for_update()
            ))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::Users)?
            .is_some();
            if !exists {
                return Ok(Removal::NoSuchUser);
            }
            if let Some(heir) = heir {
                let heir_exists = sqlx::query(&format!(
                    "SELECT name FROM users WHERE name = $1{}",
                    p.for_share()
                ))
                .bind(heir)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::Users)?
                .is_some();
                if !heir_exists {
                    return Ok(Removal::NoSuchHeir);
                }
                sqlx::query("UPDATE workspaces SET owner = $1, updated_at = $2 WHERE owner = $3")
                    .bind(heir)
                    .bind(now())
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::Users)?;
            } else {
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM workspaces WHERE owner = $1")
                        .bind(name)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(StoreError::Users)?;
                if n > 0 {
                    return Ok(Removal::Owns(u64::try_from(n).unwrap_or(0)));
                }
            }
            // Their SSH keys (ssh_keys.rs), secrets and prebuilds (whose snapshots hold what
            // their commands wrote) go with them, or they would outlive their user (and a
            // later user of the same name would get them); so do their browser sessions
            // and the identity-provider subjects that signed in as them.
            for (table, column) in [
                ("ssh_keys", "user_name"),
                ("secrets", "user_name"),
                ("prebuilds", "owner"),
                ("prebuild_runs", "owner"),
                ("sessions", "user_name"),
                ("oidc_identities", "user_name"),
                ("quotas", "user_name"),
            ] {
                sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::Users)?;
            }
            sqlx::query("DELETE FROM users WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Users)?;
            tx.commit().await.map_err(StoreError::Users)?;
        });
        Ok(Removal::Removed)
    }
}

/// Outcome of [`Store::delete_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    NoSuchUser,
    NoSuchHeir,
    /// Not removed: the user still owns this many workspaces.
    Owns(u64),
}
