//! hearth-image: the node's image store.
//!
//! Images arrive as OCI layouts, oci-archives or docker-archives. Every blob is kept once under
//! `blobs/sha256/<hex>` after its digest is verified, and every layer is unpacked once into
//! `layers/<diff-id-hex>/` (shared by all images that use it), ready to be an overlay lowerdir.
//! Unpacking treats layers as hostile: see [`unpack`].

mod manifest;
mod pull;
mod source;
mod store;
/// Test builders; behind the `testutil` feature so they never ship in the binary.
#[cfg(feature = "testutil")]
pub mod testutil;
pub mod unpack;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use pull::{
    fetch_artifact, resolve_pull, Artifact, ArtifactLayer, BlobProgress, BlobState, Credentials,
    PullProgress, Reference, ResolvedPull,
};
pub use source::open_user_file;
pub use store::ImageStore;

/// A loaded image. `names` is derived from the store's name map when read, so it always reflects
/// the current names (a name re-pointed by a later load disappears from the old image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<hex>` of the image config blob.
    pub id: String,
    pub names: Vec<String>,
    /// `sha256:<hex>` of each uncompressed layer, bottom first.
    pub diff_ids: Vec<String>,
    /// Unpacked bytes (sum of regular file sizes over all layers).
    pub size: u64,
    /// RFC 3339.
    pub loaded_at: String,
    pub config: ImageConfig,
}

/// The parts of the OCI image config the runtime needs to start a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image not found: {0}")]
    NotFound(String),
    #[error("image reference {reference} is ambiguous: it matches {count} images")]
    Ambiguous { reference: String, count: usize },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// The archive or one of its documents is malformed or unsupported.
    #[error("invalid image archive {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("digest mismatch for {what} in {path}: expected {expected}, got {actual}")]
    DigestMismatch {
        path: PathBuf,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {what} in {path}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        path: PathBuf,
        what: String,
        expected: u64,
        actual: u64,
    },
    /// A layer entry that was refused (hostile path, link escaping the layer, ...) or failed.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Entry {
        layer: String,
        entry: String,
        reason: String,
    },
    /// A registry request failed (network, unexpected status, malformed answer).
    #[error("registry request {url} failed: {reason}")]
    Registry { url: String, reason: String },
    /// The registry wants credentials, or rejected the ones given.
    #[error("registry {registry} denied access to {repository}: {reason}")]
    Unauthorized {
        registry: String,
        repository: String,
        reason: String,
    },
    /// Plain http was asked for a registry that is not on a loopback address.
    #[error("refusing plain http to registry {registry}: only loopback registries may be reached without tls")]
    InsecureRegistry { registry: String },
    /// A blob download stopped early; what arrived is kept and the next pull resumes from it.
    #[error("download of {digest} from {url} interrupted after {done} of {total} bytes: {reason}")]
    Interrupted {
        url: String,
        digest: String,
        done: u64,
        total: u64,
        reason: String,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt store metadata {path}: {source}")]
    Metadata {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> ImageError {
        ImageError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Normalizes a user-given image name: a name without a tag or digest gets `:latest`.
pub fn normalize_name(name: &str) -> Result<String, ImageError> {
    let bad = |reason: &str| ImageError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > 255 {
        return Err(bad("longer than 255 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
    {
        return Err(bad("contains whitespace, control or quote characters"));
    }
    if name.starts_with("sha256:") {
        return Err(bad("looks like an image id"));
    }
    if name.ends_with(':') || name.ends_with('/') || name.starts_with(':') {
        return Err(bad("empty name component"));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.contains('@') || last.contains(':') {
        Ok(name.to_string())
    } else {
        Ok(format!("{name}:latest"))
    }
}

/// "12.3 MB"-style sizes for progress lines.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_latest_only_when_untagged() {
        assert_eq!(normalize_name("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalize_name("busybox:1.36").unwrap(), "busybox:1.36");
        assert_eq!(
            normalize_name("localhost:5000/team/img").unwrap(),
            "localhost:5000/team/img:latest"
        );
        assert_eq!(
            normalize_name("docker.io/library/alpine:3").unwrap(),
            "docker.io/library/alpine:3"
        );
        assert!(normalize_name("").is_err());
        assert!(normalize_name("has space").is_err());
        assert!(normalize_name("img:").is_err());
        assert!(normalize_name("sha256:abcd").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(12_300_000), "12.3 MB");
        assert_eq!(human_size(1_500), "1.5 kB");
    }
}
