//! Users and their tokens: `/v1/me` and the admin-only `/v1/users` routes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user, as `GET /v1/me` and `GET /v1/users` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub name: String,
    /// Admins see and touch every workspace and manage users, images and the store.
    pub admin: bool,
    pub created_at: String,
}

/// Body of `POST /v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 32
    )]
    pub name: String,
    #[serde(default)]
    pub admin: bool,
}

/// Body of `PATCH /v1/users/{user}`: the user's role.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// An admin (true) or a plain user (false).
    pub admin: bool,
}

/// Answer of `POST /v1/users`: the new user and its API token, shown this once (the
/// server keeps only a hash).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewUser {
    pub user: User,
    pub token: String,
}

/// Body of `POST /v1/session`: signing in to the dashboard with an API token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    #[schema(min_length = 1, max_length = 256)]
    pub token: String,
}

/// A browser session, as `POST /v1/session` and `GET /v1/session` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    pub user: User,
    /// Send it back in the `X-CSRF-Token` header of every request that changes anything
    /// (every method but GET, HEAD and OPTIONS) made with the session cookie.
    pub csrf_token: String,
    /// When the session ends (RFC 3339); sign in again after that.
    pub expires_at: String,
}

/// How a browser can sign in, as `GET /v1/auth` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthMethods {
    /// `POST /v1/session` with an API token is accepted.
    pub token: bool,
    /// Where a browser goes to sign in through the identity provider (`/auth/login`),
    /// when the server has one.
    pub oidc_login: Option<String>,
}

/// Answer of `POST /v1/me/token`: the caller's new API token, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    pub token: String,
}
