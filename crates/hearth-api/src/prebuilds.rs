//! Prebuild types: `hearth prebuild`, `hearth prebuilds`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/prebuilds`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePrebuild {
    /// Git URL, or (admins only) absolute path of a repository on the server host (as
    /// `hearth up` takes).
    #[schema(min_length = 1, pattern = "^(?!-)(?!.*::)(/|[^/:]+:)")]
    pub source: String,
    /// Branch to prebuild; the repository's default branch when absent (the one `hearth
    /// up` uses).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = "^[^-]")]
    pub branch: Option<String>,
    /// Which `.devcontainer/<NAME>/devcontainer.json` to use (as `hearth up --config`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = "^[^/]+$")]
    pub devcontainer_config: Option<String>,
}

/// A prebuild: a repository's workspace after `onCreateCommand` and
/// `updateContentCommand`, kept as a snapshot that `hearth up` starts from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Prebuild {
    /// The snapshot holding its files.
    pub snapshot: String,
    pub source: String,
    /// `None`: the default branch.
    pub branch: Option<String>,
    /// The commit it was built from.
    pub commit: String,
    /// Its devcontainer.json, repository-relative.
    pub config_file: String,
    /// SHA-256 of the devcontainer settings and image id; `up` uses a prebuild only when
    /// its own match.
    pub config_hash: String,
    /// Image id it ran on.
    pub image: String,
    pub owner: String,
    /// Made by an admin: every user's `up` may start from it (else only its owner's).
    pub shared: bool,
    /// RFC 3339.
    pub created_at: String,
}

/// What a push webhook started.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct WebhookResult {
    /// `SOURCE` or `SOURCE@BRANCH` of each prebuild started in the background (an empty
    /// list: the push matched no prebuild, or was no branch push).
    pub started: Vec<String>,
    /// The ids of their runs (`hearth prebuild logs -f ID`), in the same order; one
    /// that could not be recorded is missing.
    #[serde(default)]
    pub runs: Vec<String>,
}

/// What started a prebuild run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrebuildTrigger {
    /// `hearth prebuild` (`POST /v1/prebuilds`).
    Cli,
    /// A forge's push webhook.
    Webhook,
}

/// Where a prebuild run is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrebuildRunState {
    Running,
    /// It made a prebuild (`snapshot`).
    Ready,
    /// It made none: `error` says why.
    Failed,
}

/// One prebuild run: `hearth prebuild` or a push webhook's, under way or finished.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PrebuildRun {
    /// Its id, for `hearth prebuild logs ID`.
    pub id: String,
    pub source: String,
    /// `None`: the default branch.
    pub branch: Option<String>,
    /// Its devcontainer.json, repository-relative, once read.
    pub config_file: Option<String>,
    /// The commit it builds, once known.
    pub commit: Option<String>,
    pub trigger: PrebuildTrigger,
    pub state: PrebuildRunState,
    /// Why it failed: the failing step with its exit code and the tail of its output.
    pub error: Option<String>,
    /// The prebuild it made (its snapshot id), when ready.
    pub snapshot: Option<String>,
    pub owner: String,
    /// RFC 3339.
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// A prebuild run with its log (`GET /v1/prebuild-runs/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PrebuildRunLog {
    #[serde(flatten)]
    pub run: PrebuildRun,
    /// The last lines of its progress and its commands' output (as `hearth prebuild`
    /// prints them), oldest first; written as the run goes (within a second of a line).
    pub log: Vec<String>,
}

/// `GET /v1/prebuild-runs/{id}` options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PrebuildRunOptions {
    /// Instead of the run with its log, stream its output (ndjson progress lines: the
    /// last lines so far, then each as it is written) and, once the run ended, the run
    /// (`PrebuildRun`) as the result line; an ended run's stream ends at once.
    #[serde(default)]
    pub follow: bool,
}
