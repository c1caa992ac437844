//! Browser sessions, pending OpenID Connect sign-ins and the identities they map to users.
//! Expiry times are unix seconds; every read compares them with the caller's `now`.

use super::{now, with_pool, DbRow, Dialect, Store, StoreError, UserRecord};

/// A live session and its user as the user stands now (removing a user ends its sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub user: UserRecord,
    pub csrf_token: String,
    pub expires_at: i64,
}

/// A sign-in started at `/auth/login`, taken back at `/auth/callback`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcLogin {
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
}

fn session(row: &impl DbRow) -> Result<SessionRecord, StoreError> {
    let get = |c: &str| row.try_get::<String>(c).map_err(StoreError::Users);
    Ok(SessionRecord {
        user: UserRecord {
            name: get("name")?,
            admin: row.try_get("admin").map_err(StoreError::Users)?,
            created_at: get("user_created_at")?,
        },
        csrf_token: get("csrf_token")?,
        expires_at: row.try_get("expires_at").map_err(StoreError::Users)?,
    })
}

impl Store {
    /// Records a session (and drops expired sessions and sign-ins, so neither table grows).
    pub async fn insert_session(
        &self,
        id_hash: &str,
        user: &str,
        csrf_token: &str,
        now_secs: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => {
            for table in ["sessions", "oidc_logins"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE expires_at <= $1"))
                    .bind(now_secs)
                    .execute(p)
                    .await
                    .map_err(StoreError::Users)?;
            }
            sqlx::query(
                "INSERT INTO sessions (id_hash, user_name, csrf_token, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id_hash)
            .bind(user)
            .bind(csrf_token)
            .bind(now())
            .bind(expires_at)
            .execute(p)
            .await
            .map_err(StoreError::Users)?;
        });
        Ok(())
    }

    /// The unexpired session whose id hashes to `id_hash`, with its user.
    pub async fn session(
        &self,
        id_hash: &str,
        now_secs: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        with_pool!(self, p => {
            let row = sqlx::query(
                "SELECT u.name, u.admin, u.created_at AS user_created_at, s.csrf_token, \
                 s.expires_at FROM sessions s JOIN users u ON u.name = s.user_name \
                 WHERE s.id_hash = $1 AND s.expires_at > $2",
            )
            .bind(id_hash)
            .bind(now_secs)
            .fetch_optional(p)
            .await
            .map_err(StoreError::Users)?;
            row.as_ref().map(session).transpose()
        })
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(p)
                .await
                .map_err(StoreError::Users)?;
        });
        Ok(())
    }

    /// Records a sign-in in progress unless `max_pending` unexpired ones exist (`false`):
    /// anyone may start one, so the table must not grow with a flood. Expired ones go
    /// first.
    pub async fn insert_oidc_login(
        &self,
        state_hash: &str,
        login: &OidcLogin,
        now_secs: i64,
        expires_at: i64,
        max_pending: i64,
    ) -> Result<bool, StoreError> {
        with_pool!(self, p => {
            sqlx::query("DELETE FROM oidc_logins WHERE expires_at <= $1")
                .bind(now_secs)
                .execute(p)
                .await
                .map_err(StoreError::Users)?;
            let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oidc_logins")
                .fetch_one(p)
                .await
                .map_err(StoreError::Users)?;
            if pending >= max_pending {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO oidc_logins (state_hash, nonce, pkce_verifier, return_to, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(state_hash)
            .bind(&login.nonce)
            .bind(&login.pkce_verifier)
            .bind(&login.return_to)
            .bind(expires_at)
            .execute(p)
            .await
            .map_err(StoreError::Users)?;
        });
        Ok(true)
    }

    /// Takes (deletes and returns) the unexpired sign-in of `state_hash`: a state works once.
    pub async fn take_oidc_login(
        &self,
        state_hash: &str,
        now_secs: i64,
    ) -> Result<Option<OidcLogin>, StoreError> {
        with_pool!(self, p => {
            let row = sqlx::query(
                "DELETE FROM oidc_logins WHERE state_hash = $1 \
                 RETURNING nonce, pkce_verifier, return_to, expires_at",
            )
            .bind(state_hash)
            .fetch_optional(p)
            .await
            .map_err(StoreError::Users)?;
            let Some(row) = row else { return Ok(None) };
            let expires_at: i64 = row.try_get("expires_at").map_err(StoreError::Users)?;
            if expires_at <= now_secs {
                return Ok(None);
            }
            let get = |c: &str| row.try_get::<String>(c).map_err(StoreError::Users);
            Ok(Some(OidcLogin {
                nonce: get("nonce")?,
                pkce_verifier: get("pkce_verifier")?,
                return_to: get("return_to")?,
            }))
        })
    }

    /// The user `subject` of `issuer` signs in as, if it signed in before (and the user
    /// was not removed since).
    pub async fn oidc_user(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        with_pool!(self, p => {
            let row = sqlx::query(
                "SELECT u.name, u.admin, u.created_at FROM oidc_identities i \
                 JOIN users u ON u.name = i.user_name WHERE i.issuer = $1 AND i.subject = $2",
            )
            .bind(issuer)
            .bind(subject)
            .fetch_optional(p)
            .await
            .map_err(StoreError::Users)?;
            row.as_ref().map(super::users::user).transpose()
        })
    }

    /// Makes the user of a first sign-in: the first free name of `names`, with a token
    /// hash nobody holds a token for (the user makes one from the dashboard), linked to
    /// `subject` in one transaction. `None` if every name is taken. A racing first
    /// sign-in of the same subject makes one user: the loser answers the winner's.
    pub async fn insert_oidc_user(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        names: &[String],
        token_hash: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let created_at = now();
        let made = with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(StoreError::Users)?;
            let mut made = None;
            for name in names {
                let row = sqlx::query(
                    "INSERT INTO users (name, admin, token_hash, created_at) \
                     VALUES ($1, FALSE, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING name",
                )
                .bind(name)
                .bind(token_hash)
                .bind(&created_at)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::Users)?;
                if row.is_some() {
                    made = Some(name.clone());
                    break;
                }
            }
            let Some(name) = made else { return Ok(None) };
            let linked = sqlx::query(
                "INSERT INTO oidc_identities (issuer, subject, user_name, email, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (issuer, subject) DO NOTHING",
            )
            .bind(issuer)
            .bind(subject)
            .bind(&name)
            .bind(email)
            .bind(&created_at)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Users)?
            .rows_affected();
            if linked == 0 {
                tx.rollback().await.map_err(StoreError::Users)?;
                None
            } else {
                tx.commit().await.map_err(StoreError::Users)?;
                Some(UserRecord {
                    name,
                    admin: false,
                    created_at: created_at.clone(),
                })
            }
        });
        match made {
            Some(u) => Ok(Some(u)),
            None => self.oidc_user(issuer, subject).await,
        }
    }
}

impl Store {
    /// Replaces user `name`'s token hash; false if there is no such user.
    pub async fn set_token_hash(&self, name: &str, token_hash: &str) -> Result<bool, StoreError> {
        with_pool!(self, p => {
            let n = sqlx::query("UPDATE users SET token_hash = $1 WHERE name = $2")
                .bind(token_hash)
                .bind(name)
                .execute(p)
                .await
                .map_err(StoreError::Users)?
                .rows_affected();
            Ok(n > 0)
        })
    }
}
