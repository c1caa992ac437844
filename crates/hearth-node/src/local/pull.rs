//! Registry pulls for [`super::LocalNode`]: progress throttling and error mapping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hearth_image::{BlobState, Credentials, ImageError, PullProgress};

use super::{image_err, summary, Inner};
use crate::{ImageSummary, NodeError, Progress, PullPlan, RegistryAuth};

/// Fastest rate of progress lines per blob; the first and last line of a blob always go.
const LINE_EVERY: Duration = Duration::from_millis(100);

/// Drops download lines that come faster than [`LINE_EVERY`] for the same blob.
pub(super) struct Throttle {
    last: HashMap<String, Instant>,
}

impl Throttle {
    pub(super) fn new() -> Self {
        Throttle {
            last: HashMap::new(),
        }
    }

    /// The line to show for `p`, if any.
    pub(super) fn line(&mut self, p: &PullProgress, now: Instant) -> Option<String> {
        match p {
            PullProgress::Resolved {
                reference,
                manifest,
                layers,
            } => Some(format!(
                "resolved {reference} to {manifest} ({layers} layers)"
            )),
            PullProgress::Step(s) => Some(s.clone()),
            PullProgress::Blob(b) => {
                let finished = b.state != BlobState::Downloading || b.done >= b.total;
                let due = self
                    .last
                    .get(&b.digest)
                    .is_none_or(|t| now.duration_since(*t) >= LINE_EVERY);
                if finished {
                    self.last.remove(&b.digest);
                    Some(b.to_string())
                } else if due {
                    self.last.insert(b.digest.clone(), now);
                    Some(b.to_string())
                } else {
                    None
                }
            }
        }
    }
}

/// Maps pull failures so callers can tell a bad reference or credentials (invalid), an image
/// the registry lacks (not found) and a broken registry or network (internal) apart.
pub(super) fn pull_err(reference: &str, e: ImageError) -> NodeError {
    match e {
        ImageError::Unauthorized { .. }
        | ImageError::InsecureRegistry { .. }
        | ImageError::InvalidName { .. } => NodeError::Invalid(e.to_string()),
        ImageError::Registry {
            ref url,
            ref reason,
        } if reason.starts_with("status 404") => NodeError::NotFound(format!(
            "image {reference} not found in its registry ({url} answered 404)"
        )),
        ImageError::Registry { .. } | ImageError::Interrupted { .. } => NodeError::Pull {
            reference: reference.to_string(),
            source: e,
        },
        other => image_err(other),
    }
}

pub(super) fn credentials(a: &RegistryAuth) -> Credentials {
    Credentials {
        username: a.username.clone(),
        password: a.password.clone(),
    }
}

/// Pulls a checked plan; resolves it first when the check did not.
pub(super) fn pull(
    inner: &Inner,
    plan: PullPlan,
    progress: &Progress,
) -> Result<ImageSummary, NodeError> {
    inner.check_reserve("pull an image")?;
    let reference = plan.reference().to_string();
    let reference = reference.as_str();
    let mut throttle = Throttle::new();
    let mut cb = |p: &PullProgress| {
        if let Some(line) = throttle.line(p, Instant::now()) {
            let _ = progress.send(line);
        }
    };
    let _ = progress.send(format!("pulling {reference}"));
    let resolved = match plan.resolved {
        Some(r) => *r,
        None => {
            let creds = plan.auth().map(credentials);
            hearth_image::resolve_pull(reference, creds.as_ref())
                .map_err(|e| pull_err(reference, e))?
        }
    };
    let img = inner
        .images
        .pull_resolved(resolved, &mut cb)
        .map_err(|e| pull_err(reference, e))?;
    tracing::info!(reference, id = %img.id, "pulled image");
    Ok(summary(&img))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_image::BlobProgress;

    fn blob(done: u64, state: BlobState) -> PullProgress {
        PullProgress::Blob(BlobProgress {
            what: "layer 1/1".into(),
            digest: "sha256:00ff".into(),
            done,
            total: 100,
            bytes_per_sec: 10,
            state,
        })
    }

    #[test]
    fn throttle_keeps_first_and_last_lines() {
        let mut t = Throttle::new();
        let t0 = Instant::now();
        assert!(t.line(&blob(0, BlobState::Downloading), t0).is_some());
        assert!(t.line(&blob(10, BlobState::Downloading), t0).is_none());
        let later = t0 + LINE_EVERY;
        assert!(t.line(&blob(20, BlobState::Downloading), later).is_some());
        assert!(t.line(&blob(30, BlobState::Downloading), later).is_none());
        let last = t.line(&blob(100, BlobState::Downloading), later);
        assert!(last.is_some_and(|l| l.contains("100 B / 100 B")));
        assert!(t.line(&blob(100, BlobState::Done), later).is_some());
    }

    #[test]
    fn pull_errors_map_to_kinds() {
        let nf = pull_err(
            "r",
            ImageError::Registry {
                url: "http://h/v2/x/manifests/1".into(),
                reason: "status 404: MANIFEST_UNKNOWN".into(),
            },
        );
        assert!(
            matches!(&nf, NodeError::NotFound(m) if m.contains("http://h/v2/x/manifests/1")),
            "{nf:?}"
        );
        let net = pull_err(
            "r",
            ImageError::Registry {
                url: "http://h/v2/".into(),
                reason: "connection refused".into(),
            },
        );
        assert!(
            net.kind() == crate::ErrorKind::Internal && net.to_string().contains("http://h/v2/"),
            "{net:?}"
        );
        let denied = pull_err(
            "r",
            ImageError::Unauthorized {
                registry: "h".into(),
                repository: "x".into(),
                reason: "credentials required".into(),
            },
        );
        assert!(matches!(denied, NodeError::Invalid(_)));
        let insecure = pull_err(
            "r",
            ImageError::InsecureRegistry {
                registry: "h".into(),
            },
        );
        assert!(matches!(insecure, NodeError::Invalid(_)));
    }
}
