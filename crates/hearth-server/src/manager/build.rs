//! Dockerfile builds. An untrusted Dockerfile's `RUN` steps never run on the host: every
//! build runs with podman inside the caller's builder workspace (`builder-<user>`, made
//! on first use from the builder image, kept so podman's layer cache serves the next
//! build). Everything crosses the workspace boundary as exec stdin/stdout: the context
//! goes in as a tar, base images the store has go in as oci-archives (`podman load`, so
//! `FROM` them works offline), and the result comes back as an oci-archive that the
//! store's own load checks like any upload. The server never reads a path a request names.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use hearth_node::{ExecRequest, ImageSummary, Limits, Progress, WorkspaceSpec};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::devcontainer::OutputLines;
use super::{node_err, say, Manager};
use crate::auth::Caller;
use crate::db::WorkspaceRecord;
use crate::error::ApiError;
use hearth_api::WorkspaceState;

/// Builder workspaces are named this plus their owner's name; user-made workspaces may
/// not take such a name (see [`is_builder_name`]).
pub const BUILDER_PREFIX: &str = "builder-";

/// The builder image `hearth server --builder-image` defaults to
/// (`scripts/make-image.sh builder`).
pub const DEFAULT_BUILDER_IMAGE: &str = "hearth-builder";

/// Where build contexts are unpacked inside a builder.
const JOBS: &str = "/var/lib/hearth-build";

/// Names of images builds make on their own (devcontainer builds and features), which
/// [`Manager::gc_build_images`] removes once unused.
pub const BUILD_IMAGE_PREFIX: &str = "devcontainer/";

/// How long an unused build image is kept.
pub const BUILD_IMAGE_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The OCI layout podman writes results to in a builder. It stays between builds, so
/// `podman save` rewrites only layers it does not hold yet.
const LAYOUT: &str = "/var/lib/hearth-build/layout";

/// Largest index, manifest or config read from a builder.
const MAX_DOC: usize = 4 << 20;

/// Largest Dockerfile read (to find its base images).
const MAX_DOCKERFILE: usize = 1 << 20;

/// Output lines of a failed build quoted in its error.
const TAIL: usize = 12;

/// Whether `name` is reserved for builder workspaces.
pub fn is_builder_name(name: &str) -> bool {
    name.starts_with(BUILDER_PREFIX)
}

/// Refuses a user-chosen workspace name that a builder would take.
pub fn check_not_builder_name(name: &str) -> Result<(), ApiError> {
    if is_builder_name(name) {
        return Err(ApiError::invalid(format!(
            "workspace names starting with {BUILDER_PREFIX} are reserved for builder workspaces: \
             pick another name for {name}"
        )));
    }
    Ok(())
}

/// What a build starts from.
#[derive(Debug)]
pub enum BuildContext {
    /// A tar of the context made by the server (e.g. features' generated context).
    Tar(Vec<u8>),
    /// A tar on the server's disk (an upload), read from its start.
    File(std::fs::File),
    /// A repository at a commit, archived by the node (`git archive`).
    Repo { source: String, commit: String },
}

/// One build: a context, a Dockerfile in it, and what `podman build` takes besides.
#[derive(Debug)]
pub struct BuildRequest {
    pub context: BuildContext,
    /// The Dockerfile's path in the context tar (relative).
    pub dockerfile: String,
    /// The build context's directory in the tar (relative; "" or "." is its root).
    pub context_dir: String,
    /// `--build-arg`s.
    pub args: BTreeMap<String, String>,
    /// `--target`: the stage to build.
    pub target: Option<String>,
    /// What the image is called in the store, e.g. `team/app:1`.
    pub name: String,
}

/// Server-wide build settings.
#[derive(Debug)]
pub struct Builds {
    image: std::sync::RwLock<String>,
    /// Where results land before the store loads them, and their largest size.
    scratch: std::sync::OnceLock<(PathBuf, u64)>,
    /// When each builder's old images were last pruned (see [`PRUNE_EVERY`]).
    pruned: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

/// How often a builder's podman storage is pruned (after a build).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Untagged images (build results, the cache of steps no build has used since) older
/// than this go at a prune: `podman image prune --filter until=`.
const CACHE_KEEP: &str = "168h";

impl Default for Builds {
    fn default() -> Self {
        Builds {
            image: std::sync::RwLock::new(DEFAULT_BUILDER_IMAGE.to_string()),
            scratch: Default::default(),
            pruned: Default::default(),
        }
    }
}

/// Checks a context-relative path: relative, no `..`, no NUL.
fn relative_path(what: &str, p: &str) -> Result<String, ApiError> {
    let p = p.trim_start_matches("./");
    let p = if p.is_empty() { "." } else { p };
    let bad = p.starts_with('/')
        || p.contains('\0')
        || p.split('/').any(|c| c == "..")
        || p.starts_with('-');
    if bad {
        return Err(ApiError::invalid(format!(
            "{what} {p:?} must be a path inside the build context"
        )));
    }
    Ok(p.to_string())
}

fn check_args(args: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for k in args.keys() {
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(ApiError::invalid(format!(
                "build arg {k:?}: names are letters, digits and '_'"
            )));
        }
    }
    Ok(())
}

/// The images a Dockerfile builds on: `FROM` lines and `COPY --from=`, minus `scratch`
/// and earlier stages, with `${ARG}`s from `args` and the global `ARG` defaults. Not an
/// interpreter (podman is the builder): only enough to hand the builder the base images
/// Hearth's store has.
pub fn base_images(dockerfile: &str, args: &BTreeMap<String, String>) -> Vec<String> {
    let mut global: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let mut seen_from = false;
    let subst = |s: &str, vars: &BTreeMap<String, String>| -> String {
        let mut r = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            r.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, len) = if let Some(inner) = after.strip_prefix('{') {
                match inner.find('}') {
                    Some(j) => (inner[..j].split(":-").next().unwrap_or(""), j + 2),
                    None => ("", 0),
                }
            } else {
                let n = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..n], n)
            };
            let default = after
                .strip_prefix('{')
                .and_then(|inner| inner.find('}').map(|j| &inner[..j]))
                .and_then(|e| e.split_once(":-").map(|(_, d)| d));
            let value = args
                .get(name)
                .or_else(|| vars.get(name))
                .map(String::as_str)
                .or(default)
                .unwrap_or("");
            r.push_str(value);
            rest = &after[len..];
        }
        r.push_str(rest);
        r
    };
    let add = |image: String, stages: &[String], out: &mut Vec<String>| {
        let lower = image.to_ascii_lowercase();
        if image.is_empty()
            || lower == "scratch"
            || stages.iter().any(|s| s == &lower)
            || image.parse::<usize>().is_ok()
            || out.contains(&image)
        {
            return;
        }
        out.push(image);
    };
    // Continuation lines joined; comments dropped.
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') && cur.is_empty() {
            continue;
        }
        if let Some(stripped) = t.strip_suffix('\\') {
            cur.push_str(stripped);
            cur.push(' ');
        } else {
            cur.push_str(t);
            logical.push(std::mem::take(&mut cur));
        }
    }
    logical.push(cur);
    for line in logical {
        let mut words = line.split_whitespace();
        let Some(instr) = words.next() else { continue };
        match instr.to_ascii_uppercase().as_str() {
            "ARG" if !seen_from => {
                for w in words {
                    let (k, v) = w.split_once('=').unwrap_or((w, ""));
                    global.insert(k.to_string(), v.trim_matches('"').to_string());
                }
            }
            "FROM" => {
                seen_from = true;
                let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
                if let Some(image) = rest.first() {
                    add(subst(image, &global), &stages, &mut out);
                }
                if rest.len() >= 3 && rest[1].eq_ignore_ascii_case("as") {
                    stages.push(rest[2].to_ascii_lowercase());
                }
            }
            "COPY" => {
                for w in words.take_while(|w| w.starts_with("--")) {
                    if let Some(from) = w.strip_prefix("--from=") {
                        add(subst(from, &global), &stages, &mut out);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Where an exec's stdout goes.
enum Stdout<'a> {
    /// Line by line to the progress stream and the builder's console log.
    Lines,
    /// Captured (at most this many bytes), shown nowhere.
    Capture(usize),
    /// Into a file, at most this many bytes (more is an error).
    File(&'a mut tokio::fs::File, u64),
}

/// What an exec in the builder gave back.
struct Ran {
    code: i32,
    /// Captured stdout ([`Stdout::Capture`]).
    out: Vec<u8>,
    /// Last lines shown.
    tail: std::collections::VecDeque<String>,
}

impl Manager {
    /// The image builder workspaces are made from.
    pub fn set_builder_image(&self, image: String) {
        *self.builds.image.write().unwrap_or_else(|p| p.into_inner()) = image;
    }

    /// Where a build's result is written before the store loads it (the uploads dir), and
    /// its largest size (`--upload-max`).
    pub fn set_build_scratch(&self, dir: PathBuf, max: u64) {
        let _ = self.builds.scratch.set((dir, max));
    }

    /// Where large temporary files go (builds, images copied between nodes): the data
    /// dir's uploads, else the system's temporary dir.
    pub(super) fn scratch_dir(&self) -> PathBuf {
        self.builds
            .scratch
            .get()
            .map_or_else(std::env::temp_dir, |(d, _)| d.clone())
    }

    fn builder_image(&self) -> String {
        self.builds
            .image
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What a build can be refused for before it starts (its stream, its upload): paths,
    /// build args, the image name, and a builder image to make the caller's builder from
    /// when they have none yet.
    pub async fn check_build(&self, owner: &Caller, req: &BuildRequest) -> Result<(), ApiError> {
        relative_path("dockerfile", &req.dockerfile)?;
        relative_path("context", &req.context_dir)?;
        check_args(&req.args)?;
        hearth_node::check_image_name(&req.name).map_err(ApiError::from)?;
        let name = format!("{BUILDER_PREFIX}{}", owner.id);
        if self.store.get(&name).await?.is_none() {
            self.resolve_builder_image().await?;
        }
        Ok(())
    }

    /// The builder image, or why a builder cannot be made from it.
    async fn resolve_builder_image(&self) -> Result<ImageSummary, ApiError> {
        let reference = self.builder_image();
        self.node
            .resolve_image(&reference)
            .await
            .map_err(|e| match e.kind() {
                hearth_node::ErrorKind::NotFound => ApiError::invalid(format!(
                    "the builder image {reference} is not loaded: make it with \
                     scripts/make-image.sh builder and load it (hearth image load FILE --name \
                     {reference}), or start the server with --builder-image"
                )),
                _ => node_err("resolve_image", &reference, e),
            })
    }

    /// Builds `req` in `owner`'s builder workspace and loads the result into the image
    /// store under `req.name`. The build's output goes to `progress` and the builder's
    /// console log (`hearth logs builder-<user>`); a failed build is an error quoting its
    /// last lines (and the failing step's exit code, when podman reports one).
    pub async fn build_image(
        &self,
        owner: &Caller,
        req: BuildRequest,
        progress: &Progress,
    ) -> Result<ImageSummary, ApiError> {
        self.check_build(owner, &req).await?;
        let dockerfile = relative_path("dockerfile", &req.dockerfile)?;
        let context_dir = relative_path("context", &req.context_dir)?;
        let name = format!("{BUILDER_PREFIX}{}", owner.id);
        // Builds of one user run one at a time, in one builder.
        let _guard = self.lock(&name).await;
        let builder = self.ready_builder(owner, &name, progress).await?;
        let mut job = [0u8; 6];
        rand::thread_rng().fill_bytes(&mut job);
        let job: String = job.iter().map(|b| format!("{b:02x}")).collect();
        let dir = format!("{JOBS}/{job}");
        say(
            progress,
            format!(
                "building {} in workspace {name} (hearth logs {name})",
                req.name
            ),
        );
        let before = self.node.resolve_image(&req.name).await.ok();
        let res = self
            .build_in(&builder, &dir, &dockerfile, &context_dir, req, progress)
            .await;
        if let (Some(old), Ok(new)) = (&before, &res) {
            self.drop_replaced(old, new).await;
        }
        // The context and the archive go; podman's cache stays, but for what a daily
        // prune drops: untagged images older than CACHE_KEEP and the per-name tags
        // builders of before kept.
        let prune = {
            let mut last = self.builds.pruned.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.get(&name).is_none_or(|t| t.elapsed() >= PRUNE_EVERY);
            if due {
                last.insert(name.clone(), Instant::now());
            }
            due
        };
        let rm = vec![
            "sh".into(),
            "-c".into(),
            "rm -rf -- \"$1\"; [ \"$2\" = prune ] || exit 0; \
             for t in $(podman images --format '{{.Repository}}:{{.Tag}}' \
               --filter reference='localhost/hearth-build:*'); do podman untag \"$t\" \"$t\"; done; \
             podman image prune -f --filter until=\"$3\" >/dev/null"
                .into(),
            "sh".into(),
            dir.clone(),
            if prune { "prune" } else { "keep" }.into(),
            CACHE_KEEP.into(),
        ];
        if let Err(e) = self
            .builder_exec(&builder, rm, None, Stdout::Lines, None, "")
            .await
        {
            tracing::warn!(builder = name, error = %e.message, "cannot clean up a build");
        }
        res
    }

    async fn build_in(
        &self,
        builder: &WorkspaceSpec,
        dir: &str,
        dockerfile: &str,
        context_dir: &str,
        req: BuildRequest,
        progress: &Progress,
    ) -> Result<ImageSummary, ApiError> {
        let sh = |script: &str, args: &[&str]| -> Vec<String> {
            let mut v = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into()];
            v.extend(args.iter().map(|s| s.to_string()));
            v
        };
        let t0 = Instant::now();
        // The context, as a tar on stdin.
        say(progress, "sending the build context");
        let input = match req.context {
            BuildContext::Tar(bytes) => Input::Bytes(bytes),
            BuildContext::File(f) => Input::File(tokio::fs::File::from_std(f)),
            BuildContext::Repo { source, commit } => Input::File(tokio::fs::File::from_std(
                self.node
                    .repo_archive(&source, &commit)
                    .await
                    .map_err(|e| node_err("repo_archive", &source, e))?,
            )),
        };
        // Unpacked, then the Dockerfile read back (to find its bases) in the same session.
        let df = format!("{dir}/ctx/{dockerfile}");
        let max_df = MAX_DOCKERFILE.to_string();
        let ran = self
            .builder_exec(
                builder,
                sh(
                    "mkdir -p \"$1/ctx\" && tar -x --no-same-owner -C \"$1/ctx\" -f - || exit; \
                     [ -f \"$2\" ] || exit 100; head -c \"$3\" -- \"$2\"",
                    &[dir, &df, &max_df],
                ),
                Some(input),
                Stdout::Capture(MAX_DOCKERFILE),
                Some(progress),
                "context",
            )
            .await?;
        match ran.code {
            0 => {}
            100 => {
                return Err(ApiError::invalid(format!(
                    "the build context has no Dockerfile {dockerfile}"
                )))
            }
            _ => return Err(failed("unpacking the build context", &ran)),
        }
        let context_sent = Instant::now();
        let text = String::from_utf8_lossy(&ran.out).into_owned();
        for base in base_images(&text, &req.args) {
            self.hand_base(builder, &base, progress).await?;
        }

        // The result is left untagged (its id in a file): podman keeps it, like the
        // intermediate images, as cache for the next build, and no tag per image name
        // piles up in the builder ([`Manager::prune_builder`] drops old untagged ones).
        let iid = format!("{dir}/iid");
        let mut argv: Vec<String> = vec![
            "podman".into(),
            "build".into(),
            "--layers".into(),
            // RUN steps share the builder's own network namespace (its egress rules
            // apply; it is the host's, so nothing in it can be reconfigured from inside)
            // rather than a slirp4netns stack set up for each step.
            "--network=host".into(),
            "-f".into(),
            df,
            "--iidfile".into(),
            iid.clone(),
        ];
        for (k, v) in &req.args {
            argv.push("--build-arg".into());
            argv.push(format!("{k}={v}"));
        }
        if let Some(t) = &req.target {
            argv.push("--target".into());
            argv.push(t.clone());
        }
        argv.push(format!("{dir}/ctx/{context_dir}"));
        let ran = self
            .builder_exec(builder, argv, None, Stdout::Lines, Some(progress), "build")
            .await?;
        if ran.code != 0 {
            return Err(failed("the build", &ran));
        }

        let built = Instant::now();
        let (image, sent) = self.export(builder, &iid, &req.name, progress).await?;
        let done = Instant::now();
        say(
            progress,
            format!(
                "built {} ({}) in {:.2} s: context {:.2} s, podman build {:.2} s, \
                 export and load {:.2} s ({} sent)",
                req.name,
                image.id,
                (done - t0).as_secs_f64(),
                (context_sent - t0).as_secs_f64(),
                (built - context_sent).as_secs_f64(),
                (done - built).as_secs_f64(),
                human_bytes(sent),
            ),
        );
        Ok(image)
    }

    /// Loads the image whose id podman wrote to `iid` into the store under `name`, sending only the
    /// layers the store lacks: podman writes it as an OCI layout that stays in the builder
    /// between builds (so it rewrites only new layers), the manifest and config come over
    /// first, and then the blobs of the layers the store has no unpack of. The store loads
    /// the partial layout with its usual checks (every digest and size, hostile-tar-safe
    /// unpack); what the builder says is only trusted to pick what to send. Returns the
    /// image and the bytes sent.
    async fn export(
        &self,
        builder: &WorkspaceSpec,
        iid: &str,
        name: &str,
        progress: &Progress,
    ) -> Result<(ImageSummary, u64), ApiError> {
        let (scratch, max) = self
            .builds
            .scratch
            .get()
            .cloned()
            .ok_or_else(|| ApiError::internal("builds have no scratch directory"))?;
        std::fs::create_dir_all(&scratch)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", scratch.display())))?;
        say(progress, "exporting the image");
        // index.json goes first so that it names this image alone; the blobs stay for
        // podman to reuse.
        let ran = self
            .builder_exec(
                builder,
                vec![
                    "sh".into(),
                    "-c".into(),
                    "id=$(cat \"$2\") && mkdir -p \"$1\" && rm -f \"$1/index.json\" && \
                     podman save -q --uncompressed --format oci-dir -o \"$1\" \"${id#sha256:}\" \
                     >&2 && cat \"$1/index.json\""
                        .into(),
                    "sh".into(),
                    LAYOUT.into(),
                    iid.into(),
                ],
                None,
                Stdout::Capture(MAX_DOC),
                Some(progress),
                "save",
            )
            .await?;
        if ran.code != 0 {
            return Err(failed("saving the built image", &ran));
        }
        let index: Index = parse_doc("index.json", &ran.out)?;
        let [desc] = index.manifests.as_slice() else {
            return Err(hostile(format!(
                "index.json lists {} images, not one",
                index.manifests.len()
            )));
        };
        let manifest_bytes = self.fetch_doc(builder, desc, "the manifest").await?;
        let manifest: Manifest = parse_doc("the manifest", &manifest_bytes)?;
        let config_bytes = self
            .fetch_doc(builder, &manifest.config, "the image config")
            .await?;
        let config: Config = parse_doc("the image config", &config_bytes)?;
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(hostile(format!(
                "the config lists {} layers, the manifest {}",
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let known = self
            .node
            .known_layers(&diff_ids)
            .await
            .map_err(|e| node_err("known_layers", name, e))?;
        let missing: Vec<&Descriptor> = manifest
            .layers
            .iter()
            .zip(&diff_ids)
            .filter(|(_, d)| !known.contains(d))
            .map(|(l, _)| l)
            .collect();
        let docs = (manifest_bytes.len() + config_bytes.len()) as u64;
        let total = missing
            .iter()
            .try_fold(docs, |sum, l| sum.checked_add(l.size))
            .filter(|t| *t <= max)
            .ok_or_else(|| {
                ApiError::too_large(format!(
                    "the built image's new layers are larger than the server's limit of {max} \
                     bytes (--upload-max)"
                ))
            })?;
        say(
            progress,
            format!(
                "sending {} of {} layer(s) ({}); {} already in the image store",
                missing.len(),
                diff_ids.len(),
                human_bytes(total - docs),
                diff_ids.len() - missing.len()
            ),
        );

        // The partial layout, in the server's scratch dir, removed whatever happens.
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&scratch)
            .map_err(|e| ApiError::internal(format!("cannot create a scratch dir: {e}")))?;
        let blobs = dir.path().join("blobs/sha256");
        let write = |path: PathBuf, bytes: &[u8]| {
            std::fs::write(&path, bytes)
                .map_err(|e| ApiError::internal(format!("cannot write {}: {e}", path.display())))
        };
        std::fs::create_dir_all(&blobs)
            .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", blobs.display())))?;
        write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": desc.media_type,
                "digest": desc.digest,
                "size": desc.size,
            }],
        });
        write(dir.path().join("index.json"), index.to_string().as_bytes())?;
        write(blobs.join(blob_hex(desc)?), &manifest_bytes)?;
        write(blobs.join(blob_hex(&manifest.config)?), &config_bytes)?;
        for layer in &missing {
            let hex = blob_hex(layer)?;
            let path = blobs.join(hex);
            if path.exists() {
                continue;
            }
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| ApiError::internal(format!("cannot write {}: {e}", path.display())))?;
            let ran = self
                .builder_exec(
                    builder,
                    vec![
                        "cat".into(),
                        "--".into(),
                        format!("{LAYOUT}/blobs/sha256/{hex}"),
                    ],
                    None,
                    Stdout::File(&mut file, layer.size),
                    Some(progress),
                    "save",
                )
                .await?;
            if ran.code != 0 {
                return Err(failed("sending a layer of the built image", &ran));
            }
            file.flush()
                .await
                .map_err(|e| ApiError::internal(format!("cannot write {}: {e}", path.display())))?;
        }
        let path = dir.path().to_path_buf();
        self.node
            .check_load(&path, Some(name))
            .await
            .map_err(|e| node_err("load_image", name, e))?;
        let image = self
            .node
            .load_image(path, Some(name.to_string()), progress.clone())
            .await
            .map_err(|e| node_err("load_image", name, e))?;
        // The layout keeps this image's blobs only: older layers would pile up.
        let mut keep: Vec<String> =
            vec![blob_hex(desc)?.into(), blob_hex(&manifest.config)?.into()];
        for l in &manifest.layers {
            keep.push(blob_hex(l)?.into());
        }
        let mut prune = vec![
            "sh".to_string(),
            "-c".into(),
            "cd \"$1/blobs/sha256\" && shift && for f in *; do \
             case \" $* \" in *\" $f \"*) ;; *) rm -f -- \"$f\" ;; esac; done"
                .into(),
            "sh".into(),
            LAYOUT.into(),
        ];
        prune.extend(keep);
        if let Err(e) = self
            .builder_exec(builder, prune, None, Stdout::Capture(0), None, "")
            .await
        {
            tracing::warn!(builder = builder.name, error = %e.message, "cannot prune the builder's layout");
        }
        Ok((image, total))
    }

    /// A small document blob of the builder's layout, checked against its descriptor.
    async fn fetch_doc(
        &self,
        builder: &WorkspaceSpec,
        desc: &Descriptor,
        what: &str,
    ) -> Result<Vec<u8>, ApiError> {
        let hex = blob_hex(desc)?;
        if desc.size > MAX_DOC as u64 {
            return Err(hostile(format!(
                "{what} is {} bytes, over the limit of {MAX_DOC}",
                desc.size
            )));
        }
        let ran = self
            .builder_exec(
                builder,
                vec![
                    "cat".into(),
                    "--".into(),
                    format!("{LAYOUT}/blobs/sha256/{hex}"),
                ],
                None,
                Stdout::Capture(MAX_DOC + 1),
                None,
                "save",
            )
            .await?;
        if ran.code != 0 {
            return Err(failed(&format!("reading {what} of the built image"), &ran));
        }
        let actual = hex::encode(Sha256::digest(&ran.out));
        if ran.out.len() as u64 != desc.size || actual != hex {
            return Err(hostile(format!(
                "{what} is not the {}-byte blob {} its descriptor names",
                desc.size, desc.digest
            )));
        }
        Ok(ran.out)
    }

    /// Removes the image a build's name pointed at before when the build moved the name
    /// away and nothing else names or uses it: each rebuild would otherwise leave one
    /// nameless image behind.
    async fn drop_replaced(&self, old: &ImageSummary, new: &ImageSummary) {
        if old.id == new.id {
            return;
        }
        match self.node.resolve_image(&old.id).await {
            Ok(now) if now.names.is_empty() => {}
            _ => return,
        }
        match self.remove_image(&old.id).await {
            Ok(()) => tracing::info!(image = old.id, "removed the image a build replaced"),
            // In use by a workspace (or kept for a removed one): it stays.
            Err(e) => tracing::debug!(image = old.id, error = %e.message, "replaced image kept"),
        }
    }

    /// One round of build image gc: images named only by builds (`devcontainer/...`:
    /// a devcontainer.json's Dockerfile per commit, features per base and feature set)
    /// that no workspace, removed workspace in its grace period or prebuild uses, loaded
    /// at least [`BUILD_IMAGE_MIN_AGE`] ago (a create that just built one has not recorded
    /// it yet), are removed. They are remade (from the builder's cache) when needed again.
    pub async fn gc_build_images(&self) {
        let images = match self.node.images().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "build image gc cannot list images");
                return;
            }
        };
        let mut used: std::collections::HashSet<String> = Default::default();
        let listed = async {
            for r in self.store.list().await? {
                used.insert(r.spec.image);
            }
            for d in self.store.deleted().await? {
                used.insert(d.spec.image);
            }
            for p in self.store.prebuilds(None).await? {
                used.insert(p.image);
            }
            Ok::<(), crate::db::StoreError>(())
        };
        if let Err(e) = listed.await {
            tracing::warn!(error = %e, "build image gc cannot list what uses images");
            return;
        }
        let cutoff = time::OffsetDateTime::now_utc() - BUILD_IMAGE_MIN_AGE;
        for img in images {
            let made_by_build = !img.names.is_empty()
                && img.names.iter().all(|n| n.starts_with(BUILD_IMAGE_PREFIX));
            let old = time::OffsetDateTime::parse(
                &img.loaded_at,
                &time::format_description::well_known::Rfc3339,
            )
            .is_ok_and(|t| t < cutoff);
            if !made_by_build || !old || used.contains(&img.id) {
                continue;
            }
            match self.remove_image(&img.id).await {
                Ok(()) => {
                    tracing::info!(image = img.id, names = ?img.names, "removed unused build image")
                }
                Err(e) => tracing::info!(image = img.id, error = %e.message, "build image kept"),
            }
        }
    }

    /// Makes `base` available to podman in the builder when the store has it: loaded
    /// from an export unless podman already holds that exact image, then tagged with
    /// the name the Dockerfile uses. Other bases are podman's to pull.
    async fn hand_base(
        &self,
        builder: &WorkspaceSpec,
        base: &str,
        progress: &Progress,
    ) -> Result<(), ApiError> {
        let Ok(img) = self.node.resolve_image(base).await else {
            say(
                progress,
                format!("{base}: not in Hearth's image store; podman pulls it"),
            );
            return Ok(());
        };
        let hex = img.id.trim_start_matches("sha256:").to_string();
        // The store's image under a name of its own in podman: loaded once per builder.
        let own = format!("localhost/hearth-base:{hex}");
        // Tagged at once when podman has it (one session, one podman run per base on a
        // rebuild).
        let tagged = self
            .builder_exec(
                builder,
                vec![
                    "sh".into(),
                    "-c".into(),
                    // One podman run: tagging fails when it lacks the image.
                    "podman tag \"$1\" \"$2\" 2>/dev/null || exit 100".into(),
                    "sh".into(),
                    own.clone(),
                    base.to_string(),
                ],
                None,
                Stdout::Capture(0),
                Some(progress),
                "load",
            )
            .await?;
        match tagged.code {
            0 => return Ok(()),
            100 => {}
            _ => return Err(failed(&format!("handing {base} to the builder"), &tagged)),
        }
        say(
            progress,
            format!(
                "handing {base} ({}) to the builder",
                &hex[..12.min(hex.len())]
            ),
        );
        let file = self
            .node
            .export_image(&img.id, &own)
            .await
            .map_err(|e| node_err("export_image", base, e))?;
        let input = Some(Input::File(tokio::fs::File::from_std(file)));
        let load = vec![
            "sh".into(),
            "-c".into(),
            "podman load -q >/dev/null && podman tag \"$1\" \"$2\"".into(),
            "sh".into(),
            own,
            base.to_string(),
        ];
        let ran = self
            .builder_exec(builder, load, input, Stdout::Lines, Some(progress), "load")
            .await?;
        if ran.code != 0 {
            return Err(failed(&format!("handing {base} to the builder"), &ran));
        }
        Ok(())
    }

    /// The caller's builder workspace, running: made from the builder image on first use,
    /// started if it was stopped. The caller holds its name's lock.
    async fn ready_builder(
        &self,
        owner: &Caller,
        name: &str,
        progress: &Progress,
    ) -> Result<WorkspaceSpec, ApiError> {
        if let Some(rec) = self.store.get(name).await? {
            if rec.owner != *owner.id {
                return Err(ApiError::conflict(format!(
                    "workspace {name} belongs to someone else; builds of user {} cannot run \
                     until an admin removes it",
                    owner.id
                )));
            }
            return match rec.state {
                WorkspaceState::Running => Ok(rec.spec),
                WorkspaceState::Stopped | WorkspaceState::Failed => {
                    say(progress, format!("starting builder workspace {name}"));
                    self.set(&rec, WorkspaceState::Starting, None).await?;
                    match self.node.start(&rec.spec).await {
                        Ok(_) => {
                            self.set(&rec, WorkspaceState::Running, None).await?;
                            self.started(&rec).await?;
                            Ok(rec.spec)
                        }
                        Err(e) => {
                            let e = node_err("start", name, e);
                            self.set(&rec, WorkspaceState::Failed, Some(&e.message))
                                .await?;
                            Err(e)
                        }
                    }
                }
                other => Err(ApiError::conflict(format!(
                    "builder workspace {name} is {other}; try again when it is done"
                ))),
            };
        }
        let image = self.resolve_builder_image().await?;
        let reference = self.builder_image();
        say(
            progress,
            format!("creating builder workspace {name} from {reference}"),
        );
        let rec = self
            .insert_creating(
                owner,
                name,
                image.id.clone(),
                String::new(),
                Limits::default(),
                Default::default(),
            )
            .await?;
        let made = async {
            self.node
                .create(&rec.spec, progress.clone())
                .await
                .map_err(|e| node_err("create", name, e))?;
            self.set(&rec, WorkspaceState::Starting, None).await?;
            self.node
                .start(&rec.spec)
                .await
                .map_err(|e| node_err("start", name, e))
        }
        .await;
        match made {
            Ok(_) => {
                self.set(&rec, WorkspaceState::Running, None).await?;
                Ok(rec.spec)
            }
            Err(e) => {
                self.discard(&rec).await;
                Err(e)
            }
        }
    }

    /// Removes a half-made workspace and its record (errors are logged: the original
    /// failure is what the caller reports).
    async fn discard(&self, rec: &WorkspaceRecord) {
        if let Err(re) = self.node.remove(&rec.spec).await {
            tracing::error!(workspace = rec.spec.name, error = ?re.to_string(), "cleanup after failed create failed");
        }
        if let Err(de) = self.store.delete(&rec.spec.id).await {
            tracing::error!(workspace = rec.spec.name, error = ?de.to_string(), "deleting record failed");
        }
    }

    /// Runs `argv` as root in the builder at `/`, feeding `input` to its stdin while its
    /// output is read. Stderr (and stdout in [`Stdout::Lines`]) lines are prefixed with
    /// `label` and go to `progress` and the console log when `progress` is given.
    async fn builder_exec(
        &self,
        builder: &WorkspaceSpec,
        argv: Vec<String>,
        input: Option<Input>,
        mut stdout: Stdout<'_>,
        progress: Option<&Progress>,
        label: &str,
    ) -> Result<Ran, ApiError> {
        let req = ExecRequest {
            argv,
            env: Vec::new(),
            cwd: Some("/".into()),
            user: Some("root".into()),
            tty: false,
            rows: 0,
            cols: 0,
        };
        let session = self
            .node
            .exec(builder, req)
            .await
            .map_err(|e| node_err("exec", &builder.name, e))?;
        let (mut w, mut r) = session.split();
        let feed = async move {
            let res = match input {
                None => Ok(()),
                Some(Input::Bytes(b)) => w.write_stdin(&b).await,
                Some(Input::File(mut f)) => {
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        match f.read(&mut buf).await {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                if let Err(e) = w.write_stdin(&buf[..n]).await {
                                    break Err(e);
                                }
                            }
                            Err(e) => break Err(e),
                        }
                    }
                }
            };
            let _ = w.close_stdin().await;
            res
        };
        let mut ran = Ran {
            code: -1,
            out: Vec::new(),
            tail: Default::default(),
        };
        let read = async {
            let mut lines = OutputLines::default();
            let mut written = 0u64;
            loop {
                let ev = r.next_event().await.map_err(|e| {
                    ApiError::conflict(format!("{label} in {} did not finish: {e}", builder.name))
                })?;
                let (i, data) = match ev {
                    hearth_proto::Event::Stdout(d) => (0, d),
                    hearth_proto::Event::Stderr(d) => (1, d),
                    hearth_proto::Event::Exit(code) => {
                        for line in lines.finish() {
                            self.build_line(builder, progress, label, &line, &mut ran.tail)
                                .await;
                        }
                        ran.code = code;
                        return Ok::<(), ApiError>(());
                    }
                };
                if i == 0 {
                    match &mut stdout {
                        Stdout::Lines => {}
                        Stdout::Capture(max) => {
                            let room = max.saturating_sub(ran.out.len());
                            ran.out.extend_from_slice(&data[..data.len().min(room)]);
                            continue;
                        }
                        Stdout::File(f, max) => {
                            written += data.len() as u64;
                            if written > *max {
                                return Err(hostile(format!(
                                    "a layer is longer than the {max} bytes its descriptor says"
                                )));
                            }
                            f.write_all(&data).await.map_err(|e| {
                                ApiError::internal(format!("cannot write the built image: {e}"))
                            })?;
                            continue;
                        }
                    }
                }
                for line in lines.push(i, &data) {
                    self.build_line(builder, progress, label, &line, &mut ran.tail)
                        .await;
                }
            }
        };
        let (fed, read) = tokio::join!(feed, read);
        read?;
        if let Err(e) = fed {
            // The process may end before reading all of its input (a failed tar).
            tracing::info!(builder = builder.name, error = %e, "builder stopped reading its input");
        }
        Ok(ran)
    }

    async fn build_line(
        &self,
        builder: &WorkspaceSpec,
        progress: Option<&Progress>,
        label: &str,
        line: &str,
        tail: &mut std::collections::VecDeque<String>,
    ) {
        if tail.len() == TAIL {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
        if progress.is_some() {
            self.note(builder, progress, &format!("{label}: {line}"))
                .await;
        }
    }
}

/// An OCI descriptor, as far as a build's export reads one.
#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default = "manifest_media_type")]
    media_type: String,
    digest: String,
    size: u64,
}

fn manifest_media_type() -> String {
    "application/vnd.oci.image.manifest.v1+json".into()
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// An error about what a builder sent: its root is the build's, so it is untrusted.
fn hostile(reason: String) -> ApiError {
    ApiError::conflict(format!(
        "the builder workspace sent a malformed image ({reason}); remove the builder \
         workspace (an admin: hearth rm builder-USER) and build again"
    ))
}

fn parse_doc<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| hostile(format!("{what}: {e}")))
}

/// The hex of a descriptor's sha256 digest: the only digests a blob path is made from.
fn blob_hex(d: &Descriptor) -> Result<&str, ApiError> {
    d.digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| hostile(format!("unsupported digest {:?}", d.digest)))
}

/// "12.3 MB"-style sizes.
fn human_bytes(n: u64) -> String {
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in ["kB", "MB", "GB", "TB"] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Lines of a workspace's image build (Dockerfile build, features) kept in memory
/// while they stream: the build runs before the workspace exists, so they are written
/// to its console log (`hearth logs NAME`) once it runs ([`Manager::replay_build_log`]).
pub(super) struct BuildLog {
    lines: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    forward: tokio::task::JoinHandle<()>,
}

/// Most build lines a workspace's console log gets (the last ones).
const BUILD_LOG_LINES: usize = 2000;

impl BuildLog {
    /// A progress sender that forwards every line to `progress` and keeps the last
    /// [`BUILD_LOG_LINES`].
    pub(super) fn tee(progress: &Progress) -> (Progress, BuildLog) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let lines: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>> =
            Default::default();
        let dropped: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let (keep, gone, out) = (lines.clone(), dropped.clone(), progress.clone());
        let forward = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                {
                    let mut k = keep.lock().unwrap_or_else(|p| p.into_inner());
                    if k.len() == BUILD_LOG_LINES {
                        k.pop_front();
                        gone.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    k.push_back(line.clone());
                }
                let _ = out.send(line);
            }
        });
        (
            tx,
            BuildLog {
                lines,
                dropped,
                forward,
            },
        )
    }

    /// The lines kept, once every sender is gone (or after a second: a sender a task
    /// still holds does not hold up the create).
    pub(super) async fn finish(self) -> (Vec<String>, usize) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.forward).await;
        let lines = self
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        (
            lines,
            self.dropped.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

impl Manager {
    /// Writes the lines of `spec`'s image build to its console log, between a header
    /// and a footer that say what they are.
    pub(super) async fn replay_build_log(&self, spec: &WorkspaceSpec, log: BuildLog) {
        let (lines, dropped) = log.finish().await;
        if lines.is_empty() {
            return;
        }
        let head = match dropped {
            0 => format!(
                "how this workspace's image was made ({} lines):",
                lines.len()
            ),
            n => format!(
                "how this workspace's image was made (the last {} lines; {n} before them \
                 are in hearth logs {BUILDER_PREFIX}<user>):",
                lines.len()
            ),
        };
        self.note(spec, None, &head).await;
        for line in &lines {
            self.note(spec, None, &format!("  {line}")).await;
        }
        self.note(spec, None, "end of the image's build log").await;
    }
}

/// What goes to an exec's stdin.
enum Input {
    Bytes(Vec<u8>),
    File(tokio::fs::File),
}

/// The error of a failed step: its exit code (a failing `RUN`'s, when podman names it)
/// and last lines.
fn failed(what: &str, ran: &Ran) -> ApiError {
    let code = ran
        .tail
        .iter()
        .rev()
        .find_map(|l| {
            l.rsplit_once("exit status ")
                .and_then(|(_, n)| n.trim().parse::<i32>().ok())
        })
        .unwrap_or(ran.code);
    let tail: Vec<&str> = ran.tail.iter().map(String::as_str).collect();
    ApiError::conflict(format!(
        "{what} failed with exit code {code}: {}",
        tail.join(" / ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn base_images_skip_stages_and_scratch_and_substitute_args() {
        let df = "# syntax=docker/dockerfile:1\n\
                  ARG BASE=debian:bookworm\n\
                  ARG TOOL\n\
                  FROM --platform=linux/amd64 ${BASE} AS build\n\
                  RUN echo from build\n\
                  FROM scratch AS empty\n\
                  FROM build AS test\n\
                  COPY --from=busybox:latest /bin/busybox /bin/\n\
                  COPY --from=build /x /y\n\
                  COPY --from=0 /x /z\n\
                  FROM \\\n  $TOOL\n\
                  from ${NOPE:-alpine:3}\n";
        assert_eq!(
            base_images(df, &args(&[("TOOL", "tools:1")])),
            vec!["debian:bookworm", "busybox:latest", "tools:1", "alpine:3"]
        );
        // A build arg overrides the global default.
        assert_eq!(
            base_images("ARG BASE=a\nFROM $BASE\n", &args(&[("BASE", "b")])),
            vec!["b"]
        );
    }

    #[test]
    fn paths_must_stay_inside_the_context() {
        assert_eq!(relative_path("f", "Dockerfile").unwrap(), "Dockerfile");
        assert_eq!(
            relative_path("f", "./a/Dockerfile").unwrap(),
            "a/Dockerfile"
        );
        assert_eq!(relative_path("c", "").unwrap(), ".");
        for bad in ["/etc/passwd", "../x", "a/../../b", "-rf", "a\0b"] {
            assert!(relative_path("f", bad).is_err(), "{bad}");
        }
        assert!(check_args(&args(&[("A_1", "x")])).is_ok());
        assert!(check_args(&args(&[("1A", "x")])).is_err());
        assert!(check_args(&args(&[("A=B", "x")])).is_err());
    }

    #[test]
    fn a_failed_run_reports_its_exit_code() {
        let ran = Ran {
            code: 1,
            out: Vec::new(),
            tail: [
                "STEP 2/2: RUN exit 3",
                "Error: building at STEP \"RUN exit 3\": while running runtime: exit status 3",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        };
        let e = failed("the build", &ran);
        assert!(
            e.message
                .starts_with("the build failed with exit code 3: STEP 2/2"),
            "{}",
            e.message
        );
    }
}
