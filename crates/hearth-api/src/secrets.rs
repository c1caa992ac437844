//! Users' secrets and dotfiles: `/v1/secrets` and `/v1/me/dotfiles`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a secret's name must look like: an environment variable name.
pub const SECRET_KEY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
/// Longest secret name.
pub const MAX_SECRET_KEY: usize = 128;
/// Longest secret value, in characters: 64 of them fit the agent's 1 MiB request frame.
pub const MAX_SECRET_VALUE: usize = 4096;
/// Longest repository URL a secret or a dotfiles setting takes.
pub const MAX_REPO_URL: usize = 4096;

/// A secret as listed: never its value, which the API does not give back once set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Secret {
    /// The environment variable it sets.
    pub key: String,
    /// The repository it is limited to (as normalised: no trailing `/` or `.git`); `null`
    /// for every workspace of its user. A repository's secret wins over an unscoped one
    /// of the same key.
    pub repo: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub updated_at: String,
}

/// Body of `PUT /v1/secrets/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    /// The value, stored encrypted; no NUL (it becomes an environment variable).
    #[schema(max_length = 4096, pattern = "^[^\\u0000]*$")]
    pub value: String,
    /// Limit the secret to workspaces of this repository (the source given to `up`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 4096)]
    pub repo: Option<String>,
}

/// A user's dotfiles repository (`GET` and `PUT /v1/me/dotfiles`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dotfiles {
    /// Git URL, or (admins only) absolute path of a repository on the server host; `null`:
    /// none. New
    /// workspaces clone it to `~/dotfiles` and run its install script.
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = "^(?!-)(?!.*::)(/|[^/:]+:)"
    )]
    pub url: Option<String>,
}
