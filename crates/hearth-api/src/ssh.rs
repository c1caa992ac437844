//! SSH gateway types: users' public keys and where the gateway listens.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A public key registered for SSH access to its owner's workspaces.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SshKey {
    /// 16 hex characters.
    pub id: String,
    /// Name of the user the key logs in as.
    pub user: String,
    /// e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// `SHA256:` and unpadded base64, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key's comment (from the file, or as given).
    pub comment: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSshKey {
    /// One line in OpenSSH's `authorized_keys` format, e.g. the contents of
    /// `~/.ssh/id_ed25519.pub`: `ssh-ed25519 AAAA... comment`.
    #[schema(max_length = 16384)]
    pub public_key: String,
}

/// Where the server's SSH gateway listens and the host key it presents.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SshInfo {
    /// Port of the gateway; `null` when the server runs without one.
    pub port: Option<u16>,
    /// Address the gateway is bound to (`0.0.0.0` means all).
    pub address: Option<String>,
    /// The host's public key, one `known_hosts` style line without the host field.
    pub host_key: Option<String>,
}
