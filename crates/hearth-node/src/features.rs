//! Dev container features for the control plane: fetched with the image store's registry
//! client, ordered and turned into a build context by `hearth_devcontainer::features`.
//! The context is made in memory; the build that runs it happens in a builder workspace.

use std::collections::BTreeMap;

use hearth_devcontainer::features::{
    self, BuildContext, FeatureSource, Fetched, OciRef, CONFIG_MEDIA_TYPE, MAX_ARTIFACT_BYTES,
};
use hearth_devcontainer::Lifecycle;
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// The layer media type of a feature's tarball.
const LAYER_MEDIA_TYPE: &str = "application/vnd.devcontainers.layer.v1+tar";

/// What [`crate::NodeApi::feature_context`] is asked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureRequest {
    /// devcontainer.json's `features`: reference -> options as written.
    pub features: BTreeMap<String, serde_json::Value>,
    /// `overrideFeatureInstallOrder`.
    pub override_order: Vec<String>,
    /// The image the features go on: a name the image store has.
    pub base_image: String,
    /// `containerUser` / `remoteUser`; the image's user when not given.
    pub container_user: Option<String>,
    pub remote_user: Option<String>,
}

/// A build context installing features, and what the caller needs besides the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeaturePlan {
    /// Each feature installed, as `registry/namespace/id@sha256:...`, in order.
    pub installs: Vec<String>,
    /// A tar holding `Dockerfile` and what it copies.
    pub context: Vec<u8>,
    pub dockerfile: String,
    /// The features' `containerEnv` (also `ENV` in the image).
    pub container_env: BTreeMap<String, String>,
    /// The features' lifecycle commands, in installation order.
    pub lifecycle: Vec<(String, Lifecycle)>,
    /// Lines for the user: each feature with its options, and warnings.
    pub notes: Vec<String>,
}

/// Fetches features from their registries, anonymously.
pub struct RegistrySource;

impl FeatureSource for RegistrySource {
    fn fetch(&mut self, r: &OciRef) -> Result<Fetched, hearth_devcontainer::Error> {
        let err = |message: String| hearth_devcontainer::Error::Feature {
            feature: r.to_string(),
            message,
        };
        let a = hearth_image::fetch_artifact(&r.pull_reference(), None, MAX_ARTIFACT_BYTES)
            .map_err(|e| err(e.to_string()))?;
        if a.config_media_type != CONFIG_MEDIA_TYPE {
            return Err(err(format!(
                "it is not a devcontainer feature: its config media type is {:?}, not {CONFIG_MEDIA_TYPE}",
                a.config_media_type
            )));
        }
        let mut layers = a.layers.into_iter();
        let layer = match (layers.next(), layers.next()) {
            (Some(l), None) => l,
            _ => return Err(err("a feature artifact must have exactly one layer".into())),
        };
        if layer.media_type != LAYER_MEDIA_TYPE {
            tracing::debug!(feature = %r, media_type = layer.media_type, "unexpected feature layer media type");
        }
        Ok(Fetched {
            manifest_digest: a.manifest_digest,
            tarball: layer.data,
        })
    }
}

/// Resolves and orders `req.features` through `source` and makes the build context that
/// installs them on `req.base_image`, whose user `image_user` is (`None`: root).
pub fn plan(
    req: &FeatureRequest,
    image_user: Option<&str>,
    source: &mut dyn FeatureSource,
) -> Result<FeaturePlan, NodeError> {
    let invalid = |e: hearth_devcontainer::Error| NodeError::Invalid(e.to_string());
    let installs =
        features::resolve(&req.features, &req.override_order, source).map_err(invalid)?;
    let image_user = image_user.filter(|u| !u.is_empty()).unwrap_or("root");
    // "user:group" runs as that user; features are told its name.
    let image_user_name = image_user.split(':').next().unwrap_or(image_user);
    let container_user = req.container_user.as_deref().unwrap_or(image_user_name);
    let remote_user = req.remote_user.as_deref().unwrap_or(container_user);
    let ctx = BuildContext::new(
        &req.base_image,
        &installs,
        container_user,
        remote_user,
        image_user,
    )
    .map_err(invalid)?;
    Ok(FeaturePlan {
        installs: installs.iter().map(|i| i.canonical()).collect(),
        context: ctx.tar,
        dockerfile: ctx.dockerfile,
        container_env: ctx.container_env,
        lifecycle: ctx.lifecycle,
        notes: ctx.notes,
    })
}
