//! devcontainer.json (containers.dev): finding the file in a repository, parsing it as
//! JSONC with positions, a typed model of what Hearth uses, warnings for what it does
//! not, and the spec's variable substitution as the reference CLI (`@devcontainers/cli`)
//! performs it.
//!
//! The repository is reached only through [`Repo`]: a checkout ([`DirRepo`], every open
//! resolved beneath its root) or a git object database ([`GitRepo`], symlinks resolved
//! in the tree), so a hostile config never makes the reader leave the repository.

mod error;
pub mod features;
mod find;
mod model;
mod parse;
mod repo;
pub mod vars;

pub use error::{Error, Warning};
pub use find::{find, Found, CANDIDATES};
pub use model::{
    Build, Command, Config, ForwardPort, HostRequirements, Lifecycle, LifecycleStep, Mount,
    PortAttributes,
};
pub use parse::Document;
pub use repo::{normalize, DirRepo, GitCommand, GitRepo, Repo};

/// Largest devcontainer.json read (the reference schema's own examples are a few KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 64;

/// A configuration read, substituted (first pass) and modelled.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub doc: Document,
    /// The whole configuration after the first substitution pass.
    pub value: serde_json::Value,
    pub config: Config,
    /// `${containerWorkspaceFolder}`: the substituted `workspaceFolder`, or the default.
    pub container_workspace_folder: String,
}

/// Parses `found` and substitutes what is known when reading it: `local_folder` is
/// `${localWorkspaceFolder}`, `default_folder` the workspace folder when the file names
/// none, `env` answers `${localEnv:NAME}`.
pub fn load(
    found: &Found,
    local_folder: Option<&str>,
    default_folder: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Error> {
    let doc = Document::parse(&found.path, &found.text)?;
    let ctx = vars::Local {
        local_workspace_folder: local_folder,
        container_workspace_folder: Some(vars::container_workspace_folder(
            &doc.value,
            default_folder,
        )),
        env,
        file: &found.path,
        doc: Some(&doc),
    };
    let value = vars::substitute_local(&doc.value, &ctx)?;
    let config = Config::from_value(&doc, &value)?;
    let container_workspace_folder = match &config.workspace_folder {
        Some(f) => f.clone(),
        None => default_folder.to_string(),
    };
    Ok(Loaded {
        doc,
        value,
        config,
        container_workspace_folder,
    })
}
