use std::path::PathBuf;

/// Why a configuration cannot be used; positions are 1-based, in the named file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "the repository has several devcontainer configurations ({}): choose one with --config NAME",
        names.join(", ")
    )]
    Ambiguous { names: Vec<String> },
    #[error("{}", no_such_config(name, available))]
    NoSuchConfig {
        name: String,
        available: Vec<String>,
    },
    #[error("{path} is larger than {max} bytes")]
    TooLarge { path: String, max: u64 },
    #[error("{path}: {reason}")]
    Path { path: String, reason: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("git {op}: {message}")]
    Git { op: String, message: String },
    /// A feature that cannot be fetched, read or installed; `feature` is its reference.
    #[error("feature {feature}: {message}")]
    Feature { feature: String, message: String },
}

fn no_such_config(name: &str, available: &[String]) -> String {
    if available.is_empty() {
        format!("no devcontainer configuration named {name}: the repository has no .devcontainer/<name>/devcontainer.json")
    } else {
        format!(
            "no devcontainer configuration named {name} (the repository has: {})",
            available.join(", ")
        )
    }
}

/// Something in the configuration Hearth does not act on; shown to the user, never
/// dropped silently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}
