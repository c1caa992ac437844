//! Browser sessions: made from an API token or an OpenID Connect sign-in, found by the
//! SHA-256 of the cookie's random id (only hashes are stored), ended by logout, expiry or
//! the user's removal.

use super::*;
use crate::auth::{self, FIRST_ADMIN};
use crate::db::{OidcLogin, SessionRecord};
use hearth_api::{NewToken, SessionInfo, User};

/// Sign-ins in progress (started, not yet back from the provider) a server keeps at once:
/// far above a real crowd within their ten minutes, and it bounds the table anyone can
/// write to by calling `/auth/login` (from many addresses, past the per-address limit).
pub const MAX_PENDING_SIGN_INS: i64 = 10_000;

/// A session as the auth check found it, put in request extensions beside the [`Caller`].
#[derive(Debug, Clone)]
pub struct Session {
    pub id_hash: String,
    pub csrf_token: String,
    pub expires_at: i64,
    pub user: User,
}

impl Session {
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            user: self.user.clone(),
            csrf_token: self.csrf_token.clone(),
            expires_at: rfc3339(self.expires_at),
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn caller_of(r: &SessionRecord) -> Caller {
    Caller {
        id: r.user.name.as_str().into(),
        admin: r.user.admin,
    }
}

impl Manager {
    /// Starts a session for `caller` lasting `ttl`; answers the cookie's id (given to the
    /// browser only) and the session.
    pub async fn create_session(
        &self,
        caller: &Caller,
        ttl: std::time::Duration,
    ) -> Result<(String, Session), ApiError> {
        let user = self.me(caller).await?;
        let id = auth::new_token();
        let csrf_token = auth::new_token();
        let now = unix_now();
        let expires_at = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let id_hash = auth::token_hash(&id);
        self.store
            .insert_session(&id_hash, &user.name, &csrf_token, now, expires_at)
            .await?;
        tracing::info!(user = user.name, "session started");
        Ok((
            id,
            Session {
                id_hash,
                csrf_token,
                expires_at,
                user,
            },
        ))
    }

    /// The caller and session a session cookie's id belongs to, if it is live.
    pub async fn session(&self, id: &str) -> Result<Option<(Caller, Session)>, ApiError> {
        let id_hash = auth::token_hash(id);
        let Some(r) = self.store.session(&id_hash, unix_now()).await? else {
            return Ok(None);
        };
        let caller = caller_of(&r);
        Ok(Some((
            caller,
            Session {
                id_hash,
                csrf_token: r.csrf_token,
                expires_at: r.expires_at,
                user: User {
                    name: r.user.name,
                    admin: r.user.admin,
                    created_at: r.user.created_at,
                },
            },
        )))
    }

    pub async fn end_session(&self, session: &Session) -> Result<(), ApiError> {
        self.store.delete_session(&session.id_hash).await?;
        tracing::info!(user = session.user.name, "session ended");
        Ok(())
    }

    /// Gives the caller a new API token, which is answered this once; the old one stops
    /// working at once. The first-start admin's token is the token file's and stays so.
    pub async fn new_token(&self, caller: &Caller) -> Result<NewToken, ApiError> {
        if *caller.id == *FIRST_ADMIN {
            return Err(ApiError::conflict(format!(
                "user {FIRST_ADMIN}'s token is the server's token file (delete that file and \
                 restart the server to change it)"
            )));
        }
        let token = auth::new_token();
        let res = self
            .store
            .set_token_hash(&caller.id, &auth::token_hash(&token))
            .await;
        // The old token must not live on in the cache.
        self.tokens.invalidate();
        if !res? {
            return Err(ApiError::unauthorized("invalid token"));
        }
        tracing::info!(user = %caller.id, "new API token");
        Ok(NewToken { token })
    }

    /// Records a sign-in started at `/auth/login`, for `ttl`.
    pub async fn begin_oidc_login(
        &self,
        state: &str,
        login: &OidcLogin,
        ttl: std::time::Duration,
    ) -> Result<(), ApiError> {
        let now = unix_now();
        let expires = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(0));
        let recorded = self
            .store
            .insert_oidc_login(
                &auth::token_hash(state),
                login,
                now,
                expires,
                MAX_PENDING_SIGN_INS,
            )
            .await?;
        if !recorded {
            tracing::warn!(
                max = MAX_PENDING_SIGN_INS,
                "sign-in refused: too many sign-ins in progress"
            );
            return Err(ApiError::unavailable(
                "too many sign-ins are in progress on this server; try again in a few minutes",
            ));
        }
        Ok(())
    }

    /// The sign-in of `state`, once: a second callback with it finds nothing.
    pub async fn take_oidc_login(&self, state: &str) -> Result<Option<OidcLogin>, ApiError> {
        Ok(self
            .store
            .take_oidc_login(&auth::token_hash(state), unix_now())
            .await?)
    }

    /// The caller `subject` of `issuer` signs in as, making the user at its first sign-in
    /// under the first free name of `names`.
    pub async fn oidc_caller(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        names: &[String],
    ) -> Result<Caller, ApiError> {
        let rec = match self.store.oidc_user(issuer, subject).await? {
            Some(u) => u,
            None => {
                // A hash of a token nobody is given: until the user makes one from the
                // dashboard, only sessions authenticate them.
                let unusable = auth::token_hash(&auth::new_token());
                let made = self
                    .store
                    .insert_oidc_user(issuer, subject, email, names, &unusable)
                    .await?;
                let Some(u) = made else {
                    return Err(ApiError::conflict(
                        "every user name made from this identity is taken: ask an admin",
                    ));
                };
                tracing::info!(user = u.name, issuer, "user added at first sign-in");
                u
            }
        };
        Ok(Caller {
            id: rec.name.into(),
            admin: rec.admin,
        })
    }
}
