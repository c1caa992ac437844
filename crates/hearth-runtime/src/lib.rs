//! Turns a prepared workspace into a running container: user-namespace fds, idmapped
//! layer mounts, the overlay root, the OCI bundle, and the OCI runtime process.
//!
//! Nothing here knows about workspaces' names, the API or the database; the node crate
//! decides *what* to run and this crate knows *how*. It is the only crate that runs the
//! OCI runtime binary or calls mount(2).

#![deny(unsafe_code)]

pub mod bundle;
#[allow(unsafe_code)]
pub mod mount;
#[allow(unsafe_code)]
pub mod oci;
#[allow(unsafe_code)]
pub mod userns;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("oci runtime {runtime} {op} {id} failed: {message}")]
    Runtime {
        runtime: String,
        op: &'static str,
        id: String,
        message: String,
    },
    #[error("bundle: {0}")]
    Bundle(String),
}

impl RuntimeError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            op,
            path: path.into(),
            source,
        }
    }
    pub(crate) fn sys(op: &'static str, source: impl Into<std::io::Error>) -> Self {
        RuntimeError::Sys {
            op,
            source: source.into(),
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
