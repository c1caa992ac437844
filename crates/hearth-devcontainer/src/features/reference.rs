//! Feature references: `<registry>/<namespace>/<id>[:<tag>|@sha256:<hex>]`, parsed as the
//! reference CLI parses them (lowercased; `latest` when no version is given).

use std::fmt;

use crate::Error;

/// A feature in an OCI registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciRef {
    /// `ghcr.io`, `localhost:5000`.
    pub registry: String,
    /// `devcontainers/features`.
    pub namespace: String,
    /// `go`.
    pub id: String,
    /// `1`, `1.2.3`, `latest`; `None` when a digest pins it.
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

impl OciRef {
    /// Parses `input` (any case); local (`./x`), tarball URL (`https://...`) and
    /// pre-OCI (`owner/repo/feature@v1`) references are refused with what to do instead.
    pub fn parse(input: &str) -> Result<OciRef, Error> {
        let bad = |message: String| Error::Feature {
            feature: input.to_string(),
            message,
        };
        let s = input.to_lowercase();
        if s.starts_with("./") || s.starts_with("../") || s.starts_with('/') {
            return Err(bad("local features (a path in the repository) are not supported yet: publish the feature to a registry and name it there".into()));
        }
        if s.starts_with("https://") || s.starts_with("http://") {
            return Err(bad("features from tarball URLs are not supported: name the feature by its OCI reference (registry/namespace/id:version)".into()));
        }
        let (resource, tag, digest) = match s.rfind('@') {
            Some(at) => {
                let d = &s[at + 1..];
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad(format!("digest {d:?} must be sha256:<64 hex digits>")))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(format!("digest {d:?} must be sha256:<64 hex digits>")));
                }
                (&s[..at], None, Some(d.to_string()))
            }
            None => match s.rfind(':') {
                Some(c) if c > s.rfind('/').unwrap_or(0) => {
                    (&s[..c], Some(s[c + 1..].to_string()), None)
                }
                _ => (s.as_str(), Some("latest".to_string()), None),
            },
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes().enumerate().all(|(i, b)| {
                    b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
                });
            if !ok {
                return Err(bad(format!("version tag {t:?} is not a valid OCI tag")));
            }
        }
        let parts: Vec<&str> = resource.split('/').collect();
        let [registry, middle @ .., id] = parts.as_slice() else {
            return Err(bad("expected registry/namespace/id".into()));
        };
        if middle.is_empty() {
            return Err(bad("expected registry/namespace/id".into()));
        }
        if !registry.contains('.') && !registry.starts_with("localhost") {
            return Err(bad(format!(
                "{registry:?} is not a registry host; features are named registry/namespace/id (the owner/repo/feature form of old features is not supported)"
            )));
        }
        if !registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(bad(format!("registry {registry:?} is not a host[:port]")));
        }
        for part in middle.iter().chain(std::iter::once(id)) {
            if !path_component(part) {
                return Err(bad(format!(
                    "path component {part:?} must be lowercase letters and digits separated by '.', '_' or '-'"
                )));
            }
        }
        Ok(OciRef {
            registry: registry.to_string(),
            namespace: middle.join("/"),
            id: id.to_string(),
            tag,
            digest,
        })
    }

    /// `registry/namespace/id`: the feature without its version.
    pub fn resource(&self) -> String {
        format!("{}/{}/{}", self.registry, self.namespace, self.id)
    }

    /// What to pull: the resource with its tag or digest.
    pub fn pull_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.resource()),
            (None, Some(t)) => format!("{}:{t}", self.resource()),
            (None, None) => format!("{}:latest", self.resource()),
        }
    }
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pull_reference())
    }
}

/// The OCI distribution spec's path component: `[a-z0-9]+([._-][a-z0-9]+)*` (with `__`
/// and runs of `-` as separators too).
fn path_component(p: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !p.starts_with(alnum) || !p.ends_with(alnum) {
        return false;
    }
    p.split(alnum)
        .filter(|sep| !sep.is_empty())
        .all(|sep| matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_reference_cli() {
        let r = OciRef::parse("ghcr.io/devcontainers/features/go:1").unwrap();
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.namespace, "devcontainers/features");
        assert_eq!(r.id, "go");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.resource(), "ghcr.io/devcontainers/features/go");

        let r = OciRef::parse("LOCALHOST:5000/Team/Tool").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.pull_reference(), "localhost:5000/team/tool:latest");

        let d = format!("sha256:{}", "ab".repeat(32));
        let r = OciRef::parse(&format!("127.0.0.1:5000/a/b/c@{d}")).unwrap();
        assert_eq!(r.namespace, "a/b");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/a/b/c@{d}"));
    }

    #[test]
    fn refuses_what_it_cannot_fetch() {
        for (input, says) in [
            ("./local-feature", "local features"),
            (
                "https://example.com/devcontainer-feature-go.tgz",
                "tarball URLs",
            ),
            ("owner/repo/feature@v1", "digest"),
            ("owner/repo/feature", "not a registry host"),
            ("ghcr.io/go", "registry/namespace/id"),
            ("ghcr.io/a/b:bad tag", "not a valid OCI tag"),
            ("ghcr.io/a/../b", "path component"),
            ("ghcr.io/a/b@sha256:1234", "64 hex digits"),
        ] {
            let e = OciRef::parse(input).unwrap_err().to_string();
            assert!(e.contains(says), "{input}: {e}");
            assert!(e.contains(input), "{input}: {e}");
        }
    }
}
