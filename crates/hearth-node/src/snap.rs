//! Snapshot types of the node contract; the work happens in `local/snapshot.rs`.

use serde::{Deserialize, Serialize};

/// Where the node keeps snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotSettings {
    /// `http://host:port/bucket[/prefix]`; credentials come from `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`. `None` keeps snapshots in `<data>/snapshots`.
    pub s3: Option<String>,
    /// Encrypt with the key in `<data>/snapshot.key` (created on first use).
    pub encrypt: bool,
    /// Applied to a workspace's snapshots after each new one; `None` keeps them all.
    pub retention: Option<Retention>,
    /// Restore every file before a restored workspace may start, instead of starting it
    /// at once and filling large files on first open and in the background.
    pub eager_restore: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// 32 hex characters.
    pub id: String,
    /// Id of the workspace the snapshot was taken of.
    pub workspace: String,
    /// Unix seconds.
    pub time: i64,
    pub parent: Option<String>,
    /// Sum of regular file sizes.
    pub size: u64,
    pub files: u64,
    /// Stored bytes this snapshot added to the store.
    pub new_bytes: u64,
}

/// Result of a store check; `problems` is empty when every object verified.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreCheck {
    pub location: String,
    pub snapshots: usize,
    pub chunks: usize,
    /// One line per problem: the object, what is wrong, and what it affects.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: usize,
    pub keep_daily: usize,
}

/// Store use of one workspace's snapshots, in stored (compressed) bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreUsage {
    pub snapshots: usize,
    /// Distinct chunks its snapshots reference; chunks shared with other workspaces count
    /// in full.
    pub referenced_bytes: u64,
    /// Chunks only its snapshots reference: what forgetting them all frees at the next gc.
    pub unique_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreGcReport {
    /// Snapshots forgotten by the retention policy.
    pub forgotten: Vec<String>,
    pub deleted_chunks: usize,
    pub deleted_bytes: u64,
}

/// Splits `http://host:port/bucket[/prefix]` into endpoint, bucket and prefix.
pub(crate) fn parse_s3_url(url: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (host, path) = rest.split_once('/')?;
    let path = path.trim_matches('/');
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if host.is_empty() || bucket.is_empty() {
        return None;
    }
    Some((
        format!("{scheme}://{host}"),
        bucket.to_string(),
        prefix.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        assert_eq!(
            parse_s3_url("http://127.0.0.1:9000/snaps"),
            Some(("http://127.0.0.1:9000".into(), "snaps".into(), "".into()))
        );
        assert_eq!(
            parse_s3_url("https://s3.example.com/b/team/a/"),
            Some(("https://s3.example.com".into(), "b".into(), "team/a".into()))
        );
        assert_eq!(parse_s3_url("http://host:1/"), None);
        assert_eq!(parse_s3_url("ftp://host/b"), None);
        assert_eq!(parse_s3_url("host/b"), None);
    }
}
