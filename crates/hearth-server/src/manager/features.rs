//! Dev container features on top of a workspace's image: the node fetches and orders them
//! and makes the build context (`NodeApi::feature_context`), the caller's builder
//! workspace builds it (`Manager::build_image`), and the workspace runs the result. The
//! image is named after the context's digest, so the same features on the same image are
//! built once and reused.

use hearth_node::features::FeatureRequest;
use hearth_node::{ImageSummary, Progress};
use sha2::{Digest, Sha256};

use super::build::{BuildContext, BuildRequest};
use super::devcontainer::Devcontainer;
use super::{node_err, say, Manager};
use crate::auth::Caller;
use crate::error::ApiError;

impl Manager {
    /// Installs `dc`'s features on `base` and returns the image with them; their
    /// lifecycle commands are kept in `dc` to run before the configuration's own.
    pub(super) async fn install_features(
        &self,
        owner: &Caller,
        workspace: &str,
        dc: &mut Devcontainer,
        base: hearth_node::ImageSummary,
        progress: &Progress,
    ) -> Result<ImageSummary, ApiError> {
        let base_ref = base
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| base.id.clone());
        say(
            progress,
            format!(
                "resolving {} feature(s) from {}",
                dc.config.features.len(),
                dc.config.file
            ),
        );
        let req = FeatureRequest {
            features: dc.config.features.clone(),
            override_order: dc.config.override_feature_install_order.clone(),
            base_image: base_ref.clone(),
            container_user: dc.config.container_user.clone(),
            remote_user: dc.config.remote_user.clone(),
        };
        let plan = self
            .node
            .feature_context(req)
            .await
            .map_err(|e| node_err("features", workspace, e))?;
        for note in &plan.notes {
            say(progress, note.clone());
        }
        dc.feature_lifecycle = plan.lifecycle.clone();
        // The base's id too: its name may point at another image later.
        let mut h = Sha256::new();
        h.update(base.id.as_bytes());
        h.update(&plan.context);
        let digest = hex::encode(h.finalize());
        let name = format!("devcontainer/features:{}", &digest[..16]);
        if let Ok(img) = self.node.resolve_image(&name).await {
            say(
                progress,
                format!("features already built on {base_ref}: using {name}"),
            );
            return Ok(img);
        }
        say(
            progress,
            format!(
                "installing {} feature(s) on {base_ref}",
                plan.installs.len()
            ),
        );
        self.build_image(
            owner,
            BuildRequest {
                context: BuildContext::Tar(plan.context),
                dockerfile: "Dockerfile".into(),
                context_dir: ".".into(),
                args: Default::default(),
                target: None,
                name,
            },
            progress,
        )
        .await
    }
}
