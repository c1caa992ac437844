//! The runtime floor for `hearth bench`: the OCI runtime alone running `/bin/true` in an
//! image's root filesystem, so workspace starts can be read against it.

use std::path::PathBuf;
use std::time::Duration;

use hearth_runtime::oci::OciRuntime;

use super::{image_err, internal, LocalNode};
use crate::NodeError;

impl LocalNode {
    /// Runs `/bin/true` `runs` times with the node's OCI runtime alone (no user namespace,
    /// network, cgroups or agent) in the first layer of `image` that has it (a one-layer
    /// image such as busybox is a whole root filesystem). Returns the runtime binary and
    /// the time of each run.
    pub async fn runtime_floor(
        &self,
        image: &str,
        runs: usize,
    ) -> Result<(PathBuf, Vec<Duration>), NodeError> {
        let image = image.to_string();
        self.blocking(move |inner| {
            let img = inner.images.get(&image).map_err(image_err)?;
            let rootfs = inner
                .images
                .layer_dirs(&img)
                .into_iter()
                .find(|l| l.join("bin/true").symlink_metadata().is_ok())
                .ok_or_else(|| {
                    NodeError::Invalid(format!("image {image} has no layer with /bin/true"))
                })?;
            let work = inner.cfg.data_dir.join("run/floor");
            let _ = std::fs::remove_dir_all(&work);
            let rt = OciRuntime::new(inner.cfg.runtime.as_deref(), &work.join("state"))
                .map_err(internal)?;
            let bundle = work.join("bundle");
            let res = (0..runs)
                .map(|i| rt.floor_run(&format!("floor{i}"), &bundle, &rootfs))
                .collect::<Result<Vec<_>, _>>()
                .map_err(internal);
            let _ = std::fs::remove_dir_all(&work);
            Ok((rt.binary().to_path_buf(), res?))
        })
        .await
    }
}
