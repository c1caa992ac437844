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

/// Answer of `POST /v1/users`: the new user and its API token, shown this once (the
/// server keeps only a hash).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewUser {
    pub user: User,
    pub token: String,
}
