//! A repository's devcontainer.json applied to its workspace: read at plan time (before
//! anything is made, so its image and its errors come first), kept by workspace id, its
//! lifecycle commands run on the spec's occasions, its environment, user and folder the
//! defaults of every exec session.
//!
//! The file is read by the node from git objects of the source's default branch tip as an
//! unprivileged uid ([`hearth_node::NodeApi::devcontainer_config`]): the server never
//! opens a path a request names. `${localWorkspaceFolder}` is where the repository is
//! cloned inside the workspace (there is no other "local" folder), and `${localEnv:X}`
//! sees an empty environment: the server's own must not leak into users' workspaces.

use std::collections::BTreeMap;

use hearth_devcontainer::{Command, Config, LifecycleStep};
use hearth_node::{ExecRequest, Limits, Progress, WorkspaceSpec};
use serde::{Deserialize, Serialize};

use super::{node_err, say, Manager, NameGuard};
use crate::db::WorkspaceRecord;
use crate::error::ApiError;
use hearth_api::WorkspaceState;

/// Output lines of a failed command quoted in its error.
const TAIL_LINES: usize = 20;

/// What a workspace keeps from its devcontainer.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Devcontainer {
    /// The model after the first substitution pass.
    pub config: Config,
    /// The commit the file was read from.
    pub commit: String,
    /// `${containerWorkspaceFolder}`: the working directory of sessions and commands.
    pub workspace_folder: String,
    /// Lifecycle commands of its features (labelled, in installation order): each step
    /// runs these before the configuration's own, as the spec says.
    #[serde(default)]
    pub feature_lifecycle: Vec<(String, hearth_devcontainer::Lifecycle)>,
}

impl Devcontainer {
    /// The build of `build.dockerfile` from the commit the file was read from, named
    /// `devcontainer/<workspace>:<commit>`; `None` without `build`.
    pub(super) fn build_request(
        &self,
        source: &str,
        workspace: &str,
    ) -> Option<super::build::BuildRequest> {
        let b = self.config.build.as_ref()?;
        Some(super::build::BuildRequest {
            context: super::build::BuildContext::Repo {
                source: source.to_string(),
                commit: self.commit.clone(),
            },
            dockerfile: b.dockerfile.clone(),
            context_dir: b.context.clone(),
            args: b.args.clone(),
            target: b.target.clone(),
            name: format!(
                "devcontainer/{workspace}:{}",
                &self.commit[..self.commit.len().min(12)]
            ),
        })
    }

    /// What `inspect` and the API show of it, for editor integrations.
    pub(super) fn info(&self) -> hearth_api::DevcontainerInfo {
        hearth_api::DevcontainerInfo {
            file: self.config.file.clone(),
            workspace_folder: self.workspace_folder.clone(),
            user: self.config.exec_user().map(str::to_string),
            vscode_extensions: self.config.vscode_extensions(),
            vscode_settings: self.config.vscode_settings().cloned().unwrap_or_default(),
        }
    }

    /// `containerEnv` then `remoteEnv` (an unset `remoteEnv` entry drops the variable), as
    /// every session and lifecycle command gets them under what the request sets.
    pub(super) fn env(&self) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = self.config.container_env.clone();
        for (k, v) in &self.config.remote_env {
            match v {
                Some(v) => {
                    env.insert(k.clone(), v.clone());
                }
                None => {
                    env.remove(k);
                }
            }
        }
        env.into_iter().collect()
    }
}

/// The create-time steps, run once (resumed after the last one that finished).
const CREATE_STEPS: [LifecycleStep; 3] = [
    LifecycleStep::OnCreate,
    LifecycleStep::UpdateContent,
    LifecycleStep::PostCreate,
];

/// `/workspace/<repo>`: where the node clones `source`.
pub fn clone_folder(source: &str) -> String {
    format!("/workspace/{}", hearth_node::repo_name(source))
}

/// Whether an image's `User` is root: unset, or uid 0 or `root`, whatever the group.
pub(super) fn is_root_user(user: Option<&str>) -> bool {
    let name = user.unwrap_or_default();
    let name = name.split_once(':').map_or(name, |(u, _)| u);
    name.is_empty() || name == "root" || name.parse::<u32>() == Ok(0)
}

impl Manager {
    /// The image `up` uses when neither `--image` nor a devcontainer.json names one.
    pub fn set_default_image(&self, image: String) {
        *self
            .default_image
            .write()
            .unwrap_or_else(|p| p.into_inner()) = image;
    }

    pub fn default_image(&self) -> String {
        self.default_image
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads and checks `source`'s devcontainer.json for a create: parse errors, what is
    /// not supported yet, `hostRequirements` against `limits`. Returns it with the
    /// warnings to show; `None` when the repository has none.
    pub(super) async fn plan_devcontainer(
        &self,
        name: &str,
        source: &str,
        branch: Option<&str>,
        config_name: Option<&str>,
        image_given: bool,
        limits: &Limits,
    ) -> Result<Option<Devcontainer>, ApiError> {
        let Some(found) = self
            .node
            .devcontainer_config(source, branch, config_name)
            .await
            .map_err(|e| node_err("devcontainer", name, e))?
        else {
            return match config_name {
                Some(c) => Err(ApiError::invalid(format!(
                    "--config {c}: the repository has no devcontainer configuration"
                ))),
                None => Ok(None),
            };
        };
        let folder = clone_folder(source);
        let file = hearth_devcontainer::Found {
            path: found.path,
            text: found.text,
        };
        let loaded = hearth_devcontainer::load(&file, Some(&folder), &folder, &|_| None)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        // The CLI's second pass, with the labels it would give the container: the local
        // folder and the config file's path in it.
        let config_path = format!("{folder}/{}", file.path);
        let id = hearth_devcontainer::vars::devcontainer_id(&hearth_devcontainer::vars::id_labels(
            &folder,
            &config_path,
        ));
        let value = hearth_devcontainer::vars::substitute_devcontainer_id(&loaded.value, &id);
        let config = hearth_devcontainer::Config::from_value(&loaded.doc, &value)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let f = &config.file;
        if config.compose {
            return Err(ApiError::invalid(format!(
                "{f} uses Docker Compose (dockerComposeFile), which hearth does not support: \
                 give an image in it, or pass --image"
            )));
        }
        if !image_given && config.image.is_none() && config.build.is_none() {
            return Err(ApiError::invalid(format!(
                "{f} names no image: add \"image\" (or \"build\") to it, or pass --image"
            )));
        }
        // The node is asked only when its cores decide (a round trip to a remote one).
        let cores = match (limits.cpus_milli, config.host_requirements.cpus) {
            (0, Some(_)) => self
                .node
                .capacity()
                .await
                .map_err(|e| node_err("capacity", name, e))?
                .cpus
                .into(),
            _ => 0,
        };
        check_host_requirements(&loaded.doc, &config, limits, cores)?;
        let dc = Devcontainer {
            config,
            commit: found.commit,
            workspace_folder: loaded.container_workspace_folder,
            feature_lifecycle: Vec::new(),
        };
        Ok(Some(dc))
    }

    /// Records the settings a workspace is made from, no lifecycle step done yet.
    pub(super) async fn record_devcontainer(
        &self,
        spec: &WorkspaceSpec,
        dc: &Devcontainer,
    ) -> Result<(), ApiError> {
        let json = serde_json::to_string(dc)
            .map_err(|e| ApiError::internal(format!("devcontainer settings: {e}")))?;
        self.store.set_devcontainer(spec.id.as_str(), &json).await?;
        Ok(())
    }

    /// The workspace's devcontainer settings, if it was made from one.
    pub(super) async fn devcontainer(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Option<(Devcontainer, Option<LifecycleStep>)>, ApiError> {
        let Some((json, done)) = self.store.devcontainer(&spec.id).await? else {
            return Ok(None);
        };
        let dc: Devcontainer = serde_json::from_str(&json).map_err(|e| {
            ApiError::internal(format!(
                "stored devcontainer settings of {} are unreadable: {e}",
                spec.name
            ))
        })?;
        let done = done.and_then(|d| LifecycleStep::ALL.into_iter().find(|s| s.property() == d));
        Ok(Some((dc, done)))
    }

    /// Exec defaults from the workspace's devcontainer.json: its environment under the
    /// request's, `remoteUser`, the workspace folder.
    pub(super) async fn apply_devcontainer(
        &self,
        spec: &WorkspaceSpec,
        req: &mut ExecRequest,
    ) -> Result<(), ApiError> {
        let Some((dc, _)) = self.devcontainer(spec).await? else {
            return Ok(());
        };
        let mut env = dc.env();
        env.retain(|(k, _)| !req.env.iter().any(|(rk, _)| rk == k));
        env.append(&mut req.env);
        req.env = env;
        if req.user.is_none() {
            req.user = dc.config.exec_user().map(str::to_string);
        }
        if req.cwd.is_none() {
            req.cwd = Some(dc.workspace_folder.clone());
        }
        Ok(())
    }

    /// The lifecycle commands due at a start, in order: the create-time ones not done
    /// yet, then `postStartCommand`, then (`attach`) `postAttachCommand`; with the
    /// settings after the `${containerEnv:X}` pass.
    async fn due_steps(
        &self,
        spec: &WorkspaceSpec,
        attach: bool,
    ) -> Result<Option<(Devcontainer, Vec<LifecycleStep>)>, ApiError> {
        let Some((dc, done)) = self.devcontainer(spec).await? else {
            return Ok(None);
        };
        let dc = self.container_env_pass(spec, dc).await?;
        let mut steps: Vec<LifecycleStep> = CREATE_STEPS
            .into_iter()
            .filter(|s| done.is_none_or(|d| *s > d))
            .collect();
        steps.push(LifecycleStep::PostStart);
        if attach {
            steps.push(LifecycleStep::PostAttach);
        }
        Ok(Some((dc, steps)))
    }

    /// Runs the lifecycle commands due at a start (see [`Manager::due_steps`]). Output
    /// goes to the console log (`hearth logs`) and to `progress` when given; the first
    /// failure stops the run with the command's exit code and last lines.
    pub(super) async fn run_lifecycle(
        &self,
        spec: &WorkspaceSpec,
        progress: Option<&Progress>,
        attach: bool,
    ) -> Result<(), ApiError> {
        let Some((dc, steps)) = self.due_steps(spec, attach).await? else {
            return self.plain_start(spec, progress).await;
        };
        self.run_steps(spec, &dc, &steps, progress).await
    }

    /// A prebuild's lifecycle: the due create-time steps through `until`, output in
    /// `progress`; the first failure is the answer.
    pub(super) async fn run_until(
        &self,
        spec: &WorkspaceSpec,
        progress: &Progress,
        until: LifecycleStep,
    ) -> Result<(), ApiError> {
        let Some((dc, mut steps)) = self.due_steps(spec, false).await? else {
            return Ok(());
        };
        steps.retain(|s| *s <= until);
        self.run_steps(spec, &dc, &steps, Some(progress)).await
    }

    /// `up`'s lifecycle (postAttachCommand included, as the reference CLI's `up` runs it):
    /// the steps through `waitFor` in `progress`, when the file sets it; the rest go on
    /// in the background holding the name's lock (so a stop waits for them), their
    /// output in the console log. Without `waitFor`, `up` waits for every step, as
    /// `devcontainer up` does. A failure marks the workspace failed (kept for a look;
    /// the next start runs the steps not done yet).
    pub(super) async fn up_lifecycle(
        &self,
        rec: &WorkspaceRecord,
        progress: &Progress,
        guard: NameGuard,
    ) -> Result<(), ApiError> {
        let spec = &rec.spec;
        let res = async {
            let Some((dc, steps)) = self.due_steps(spec, true).await? else {
                self.plain_start(spec, Some(progress)).await?;
                return Ok(None);
            };
            let now = match dc.config.lifecycle.wait_for {
                Some(w) => steps.iter().take_while(|s| **s <= w).count(),
                None => steps.len(),
            };
            self.run_steps(spec, &dc, &steps[..now], Some(progress))
                .await?;
            Ok::<_, ApiError>(Some((dc, steps[now..].to_vec())))
        }
        .await;
        let (dc, later) = match res {
            Ok(Some((dc, later))) if !later.is_empty() => (dc, later),
            Ok(_) => return Ok(()),
            Err(e) => {
                self.set(rec, WorkspaceState::Failed, Some(&e.message))
                    .await?;
                return Err(e);
            }
        };
        let Some(me) = self.me.upgrade() else {
            let res = self.run_steps(spec, &dc, &later, Some(progress)).await;
            if let Err(e) = &res {
                self.set(rec, WorkspaceState::Failed, Some(&e.message))
                    .await?;
            }
            return res;
        };
        let names: Vec<&str> = later.iter().map(|s| s.property()).collect();
        say(
            progress,
            format!(
                "waitFor reached: {} go on in the background (hearth logs {})",
                names.join(", "),
                spec.name
            ),
        );
        let rec = rec.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = me.run_steps(&rec.spec, &dc, &later, None).await {
                if let Err(se) = me.set(&rec, WorkspaceState::Failed, Some(&e.message)).await {
                    tracing::error!(workspace = rec.spec.name, error = %se.message, "cannot record a failed lifecycle step");
                }
            }
        });
        Ok(())
    }

    /// A terminal session attached (`hearth shell`, SSH with a pty): `postAttachCommand`
    /// runs beside it, its output in the console log; a failure is logged there, the
    /// session goes on.
    pub(super) fn attached(&self, spec: &WorkspaceSpec) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let spec = spec.clone();
        tokio::spawn(async move {
            let dc = match me.devcontainer(&spec).await {
                Ok(Some((dc, _)))
                    if dc.config.lifecycle.get(LifecycleStep::PostAttach).is_some()
                        || dc
                            .feature_lifecycle
                            .iter()
                            .any(|(_, l)| l.get(LifecycleStep::PostAttach).is_some()) =>
                {
                    dc
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(workspace = spec.name, error = %e.message, "postAttachCommand: cannot read the settings");
                    return;
                }
            };
            let res = match me.container_env_pass(&spec, dc).await {
                Ok(dc) => {
                    me.run_steps(&spec, &dc, &[LifecycleStep::PostAttach], None)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                tracing::info!(workspace = spec.name, error = %e.message, "postAttachCommand failed");
            }
        });
    }

    /// Runs `steps` in order, recording each create-time one as done.
    async fn run_steps(
        &self,
        spec: &WorkspaceSpec,
        dc: &Devcontainer,
        steps: &[LifecycleStep],
        progress: Option<&Progress>,
    ) -> Result<(), ApiError> {
        for &step in steps {
            if step == LifecycleStep::OnCreate {
                // Before the first command: the repository where the file says, and the
                // remote user's.
                let user = dc.config.exec_user();
                self.prepare_folder(spec, user, &dc.workspace_folder, progress)
                    .await?;
            }
            if step == LifecycleStep::PostStart {
                // The owner's dotfiles, once: after the create-time steps, as the
                // reference CLI does.
                self.install_dotfiles(spec, Some(dc), progress).await?;
            }
            for (feature, lifecycle) in &dc.feature_lifecycle {
                if let Some(cmd) = lifecycle.get(step) {
                    let label = format!("{} ({feature})", step.property());
                    self.run_step(spec, dc, &label, cmd, progress).await?;
                }
            }
            if let Some(cmd) = dc.config.lifecycle.get(step) {
                self.run_step(spec, dc, step.property(), cmd, progress)
                    .await?;
            }
            if CREATE_STEPS.contains(&step) {
                self.store
                    .set_devcontainer_done(&spec.id, step.property())
                    .await?;
            }
        }
        Ok(())
    }

    /// Without a devcontainer.json, at the first start (before the dotfiles): hands the
    /// clone to the image's non-root `USER` when the create recorded that it runs as one
    /// (`workspace_handovers`), as [`Manager::prepare_folder`] does for `remoteUser`.
    /// Kept until it succeeds, so a start after a failure tries again.
    async fn hand_over_clone(
        &self,
        spec: &WorkspaceSpec,
        progress: Option<&Progress>,
    ) -> Result<(), ApiError> {
        if !self.store.handover(spec.id.as_str()).await? {
            return Ok(());
        }
        let repo = clone_folder(&spec.source);
        self.prepare_folder(spec, None, &repo, progress).await?;
        self.store.forget_handover(spec.id.as_str()).await?;
        Ok(())
    }

    /// A start without a devcontainer.json: the new workspace's clone handed over, then
    /// the owner's dotfiles (each once).
    async fn plain_start(
        &self,
        spec: &WorkspaceSpec,
        progress: Option<&Progress>,
    ) -> Result<(), ApiError> {
        self.hand_over_clone(spec, progress).await?;
        self.install_dotfiles(spec, None, progress).await
    }

    /// Once, before `onCreateCommand` (a prebuild's snapshot keeps the result): hands the
    /// clone to the user sessions run as (`user`: `remoteUser`, else `containerUser`;
    /// `None`: the image's; resolved by the agent from the image's /etc/passwd, as
    /// sessions are), so it can write its repository as with the reference CLI's bind
    /// mount; and makes the repository appear at `folder` (`workspaceFolder`) when that
    /// is elsewhere: a symlink in the workspace's own filesystem, which stop/start,
    /// snapshots, moves and prebuilds keep.
    async fn prepare_folder(
        &self,
        spec: &WorkspaceSpec,
        user: Option<&str>,
        folder: &str,
        progress: Option<&Progress>,
    ) -> Result<(), ApiError> {
        let repo = clone_folder(&spec.source);
        if spec.source.is_empty() {
            return Ok(());
        }
        let probe = ExecRequest {
            argv: vec!["cat".into(), "/proc/self/status".into()],
            cwd: Some("/".into()),
            user: user.map(str::to_string),
            ..Default::default()
        };
        let (code, status) = self.run_capture(spec, probe, None, "").await?;
        let id = |key: &str| {
            status
                .iter()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u32>().ok())
        };
        let owner = match (code, id("Uid:"), id("Gid:")) {
            (0, Some(0), _) => String::new(),
            (0, Some(uid), Some(gid)) => format!("{uid}:{gid}"),
            _ => {
                return Err(ApiError::conflict(format!(
                    "cannot tell the uid of the workspace's user {} (cat /proc/self/status exited with {code})",
                    user.unwrap_or("(the image's)")
                )))
            }
        };
        let folder = folder.trim_end_matches('/');
        let inside = folder == repo || folder.starts_with(&format!("{repo}/"));
        if owner.is_empty() && inside {
            return Ok(());
        }
        // `-h`: a symlink in the repository is changed itself, never what it points at.
        let script = r#"set -e
repo=$1 folder=$2 owner=$3
if [ -n "$owner" ]; then chown -R -h "$owner" "$repo"; fi
case "$folder" in "$repo"|"$repo"/*) exit 0 ;; esac
if [ -L "$folder" ]; then
  rm -f "$folder"
elif [ -d "$folder" ]; then
  rmdir "$folder" 2>/dev/null || { echo "workspaceFolder $folder is a directory of the image that is not empty: hearth puts the repository there; choose another folder" >&2; exit 1; }
elif [ -e "$folder" ]; then
  echo "workspaceFolder $folder is a file of the image: choose another folder" >&2; exit 1
fi
mkdir -p "$(dirname "$folder")"
ln -s "$repo" "$folder"
"#;
        let req = ExecRequest {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                script.into(),
                "sh".into(),
                repo.clone(),
                folder.to_string(),
                owner.clone(),
            ],
            cwd: Some("/".into()),
            user: Some("0".into()),
            ..Default::default()
        };
        let mut what = Vec::new();
        if !owner.is_empty() {
            what.push(format!("handing {repo} to uid {owner}"));
        }
        if !inside {
            what.push(format!("linking {folder} to {repo}"));
        }
        self.note(spec, progress, &what.join("; ")).await;
        let (code, tail) = self
            .run_capture(spec, req, progress, "workspaceFolder")
            .await?;
        if code != 0 {
            return Err(ApiError::conflict(format!(
                "preparing the workspace folder failed with exit code {code}: {}",
                tail.join(" / ")
            )));
        }
        Ok(())
    }

    /// The reference CLI's last pass: `${containerEnv:X}` from the environment a session
    /// sees (the image's and `containerEnv`), asked of the workspace only when used.
    async fn container_env_pass(
        &self,
        spec: &WorkspaceSpec,
        dc: Devcontainer,
    ) -> Result<Devcontainer, ApiError> {
        let value = serde_json::to_value(&dc)
            .map_err(|e| ApiError::internal(format!("devcontainer settings: {e}")))?;
        if !value.to_string().contains("${containerEnv:") {
            return Ok(dc);
        }
        // Once per workspace: the result is stored, so sessions get it too.
        let req = ExecRequest {
            argv: vec!["env".into()],
            env: dc.config.container_env.clone().into_iter().collect(),
            cwd: None,
            user: dc.config.exec_user().map(str::to_string),
            tty: false,
            rows: 0,
            cols: 0,
        };
        let (code, out) = self.run_capture(spec, req, None, "").await?;
        if code != 0 {
            return Err(ApiError::conflict(format!(
                "cannot read the workspace's environment for ${{containerEnv:...}} (env exited with {code})"
            )));
        }
        let env: BTreeMap<String, String> = out
            .iter()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let value = hearth_devcontainer::vars::substitute_container_env(
            &value,
            &|k| env.get(k).cloned(),
            &dc.config.file,
        )
        .map_err(|e| ApiError::invalid(e.to_string()))?;
        let json = value.to_string();
        let dc = serde_json::from_value(value)
            .map_err(|e| ApiError::internal(format!("devcontainer settings: {e}")))?;
        self.store
            .update_devcontainer(spec.id.as_str(), &json)
            .await?;
        Ok(dc)
    }

    async fn run_step(
        &self,
        spec: &WorkspaceSpec,
        dc: &Devcontainer,
        prop: &str,
        cmd: &Command,
        progress: Option<&Progress>,
    ) -> Result<(), ApiError> {
        // A prebuild is shared beyond its maker's sessions: no user's secrets go into it.
        let secrets = match super::prebuilds::is_prebuild(spec) {
            true => Vec::new(),
            false => self.secrets_for(spec).await?,
        };
        let env = super::secrets::overlay(dc.env(), secrets);
        let request = |argv: Vec<String>| ExecRequest {
            argv,
            env: env.clone(),
            cwd: Some(dc.workspace_folder.clone()),
            user: dc.config.exec_user().map(str::to_string),
            tty: false,
            rows: 0,
            cols: 0,
        };
        let jobs: Vec<(String, Vec<String>)> = match cmd {
            Command::Parallel(all) => all
                .iter()
                .filter_map(|(name, c)| c.argv().map(|a| (format!("{prop} {name}"), a)))
                .collect(),
            other => other
                .argv()
                .map(|a| vec![(prop.to_string(), a)])
                .unwrap_or_default(),
        };
        self.note(spec, progress, &format!("running {prop}")).await;
        // The object form's commands run at the same time; every one must succeed.
        let request = &request;
        let runs = jobs.iter().map(|(label, argv)| async move {
            let (code, tail) = self
                .run_capture(spec, request(argv.clone()), progress, label)
                .await?;
            Ok::<_, ApiError>((label, code, tail))
        });
        for r in futures_util::future::join_all(runs).await {
            let (label, code, tail) = r?;
            if code != 0 {
                let msg = format!(
                    "{label} failed with exit code {code}{}",
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", tail.join(" / "))
                    }
                );
                self.note(spec, None, &msg).await;
                return Err(ApiError::conflict(msg));
            }
        }
        Ok(())
    }

    /// Runs `req`, sending each output line (prefixed by `label`) to the console and
    /// `progress` unless `label` is empty; returns the exit code and the last lines.
    async fn run_capture(
        &self,
        spec: &WorkspaceSpec,
        req: ExecRequest,
        progress: Option<&Progress>,
        label: &str,
    ) -> Result<(i32, Vec<String>), ApiError> {
        self.run_capture_input(spec, req, progress, label, &[])
            .await
    }

    /// [`Manager::run_capture`] with `input` on the command's stdin (then end of file),
    /// written while its output is read.
    pub(super) async fn run_capture_input(
        &self,
        spec: &WorkspaceSpec,
        req: ExecRequest,
        progress: Option<&Progress>,
        label: &str,
        input: &[u8],
    ) -> Result<(i32, Vec<String>), ApiError> {
        let argv0 = req.argv.first().cloned().unwrap_or_default();
        let session = self
            .node
            .exec(spec, req)
            .await
            .map_err(|e| node_err("exec", &spec.name, e))?;
        let (mut w, mut r) = session.split();
        let feed = async move {
            for chunk in input.chunks(64 << 10) {
                // The command may exit without reading it all; its exit code says why.
                if w.write_stdin(chunk).await.is_err() {
                    break;
                }
            }
            let _ = w.close_stdin().await;
        };
        let read = async {
            let mut lines = OutputLines::default();
            let mut tail: std::collections::VecDeque<String> = Default::default();
            let mut all = Vec::new();
            loop {
                let ev = r.next_event().await.map_err(|e| {
                    ApiError::conflict(format!("{label} ({argv0}) did not finish: {e}"))
                })?;
                let (i, data) = match ev {
                    hearth_proto::Event::Stdout(d) => (0, d),
                    hearth_proto::Event::Stderr(d) => (1, d),
                    hearth_proto::Event::Exit(code) => {
                        for line in lines.finish() {
                            self.line(spec, progress, label, &line, &mut tail, &mut all)
                                .await;
                        }
                        return Ok::<_, ApiError>((
                            code,
                            if label.is_empty() { all } else { tail.into() },
                        ));
                    }
                };
                for line in lines.push(i, &data) {
                    self.line(spec, progress, label, &line, &mut tail, &mut all)
                        .await;
                }
            }
        };
        // Output decides the end: a command that exits without reading all its input
        // leaves the rest unwritten.
        let (mut feed, mut read) = (std::pin::pin!(feed), std::pin::pin!(read));
        let mut fed = false;
        loop {
            tokio::select! {
                () = &mut feed, if !fed => fed = true,
                res = &mut read => break res,
            }
        }
    }

    async fn line(
        &self,
        spec: &WorkspaceSpec,
        progress: Option<&Progress>,
        label: &str,
        line: &str,
        tail: &mut std::collections::VecDeque<String>,
        all: &mut Vec<String>,
    ) {
        if label.is_empty() {
            // Captured, not shown (the environment probe); bounded like any output.
            if all.len() < 10_000 {
                all.push(line.to_string());
            }
            return;
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
        self.note(spec, progress, &format!("{label}: {line}")).await;
    }

    /// A line for `hearth up`'s progress (when streaming) and the console log.
    pub(super) async fn note(&self, spec: &WorkspaceSpec, progress: Option<&Progress>, line: &str) {
        if let Some(p) = progress {
            say(p, line);
        }
        if let Err(e) = self.node.console_note(spec, line).await {
            tracing::warn!(workspace = spec.name.as_str(), error = %e, "cannot write a lifecycle line to the console log");
        }
    }
}

/// A session's stdout and stderr as [`clean`] lines, each stream split on its own (a line
/// may arrive in several chunks).
#[derive(Default)]
pub(super) struct OutputLines {
    partial: [Vec<u8>; 2],
}

impl OutputLines {
    /// Appends `data` to stream `i` (0 stdout, 1 stderr); returns the lines it completed.
    pub(super) fn push(&mut self, i: usize, data: &[u8]) -> Vec<String> {
        let buf = &mut self.partial[i];
        buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            out.push(clean(&line[..line.len() - 1]));
        }
        out
    }

    /// The unterminated last lines, once the process has exited.
    pub(super) fn finish(&mut self) -> Vec<String> {
        self.partial
            .iter_mut()
            .filter(|b| !b.is_empty())
            .map(|b| clean(&std::mem::take(b)))
            .collect()
    }
}

/// A line of command output as text, without control characters (it reaches terminals).
pub(super) fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\r')
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// `hostRequirements` against what the workspace gets: memory and disk are its limits,
/// CPUs its `--cpus` (`limits.cpus_milli`) or, without one, the node's `cores` (a
/// workspace without a limit may use them all). Errors point at the requirement.
fn check_host_requirements(
    doc: &hearth_devcontainer::Document,
    config: &Config,
    limits: &Limits,
    cores: u64,
) -> Result<(), ApiError> {
    let h = &config.host_requirements;
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    let refuse = |ptr: &str, msg: String| ApiError::invalid(doc.invalid(ptr, msg).to_string());
    if let Some(m) = h.memory_bytes {
        if m > limits.memory_bytes {
            return Err(refuse(
                "/hostRequirements/memory",
                format!(
                    "needs {} of memory (hostRequirements.memory) but the workspace would get {}: pass --memory {}M",
                    gib(m),
                    gib(limits.memory_bytes),
                    m.div_ceil(1 << 20)
                ),
            ));
        }
    }
    if let Some(s) = h.storage_bytes {
        if s > limits.disk_bytes {
            return Err(refuse(
                "/hostRequirements/storage",
                format!(
                    "needs {} of storage (hostRequirements.storage) but the workspace disk would be {}: pass --disk {}M",
                    gib(s),
                    gib(limits.disk_bytes),
                    s.div_ceil(1 << 20)
                ),
            ));
        }
    }
    if let Some(c) = h.cpus {
        let (have, what) = match limits.cpus_milli {
            0 => (cores * 1000, format!("the node has {cores} CPUs")),
            m => (m, format!("the workspace would get {} (--cpus)", cpus(m))),
        };
        if c * 1000 > have {
            return Err(refuse(
                "/hostRequirements/cpus",
                format!("needs {c} CPUs (hostRequirements.cpus) but {what}: pass --cpus {c}"),
            ));
        }
    }
    Ok(())
}

/// Thousandths of a core as `--cpus` takes them (`1.5`).
fn cpus(milli: u64) -> String {
    let s = format!("{}.{:03}", milli / 1000, milli % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::{is_root_user, OutputLines};

    #[test]
    fn root_users_of_an_image_config() {
        for root in [
            None,
            Some(""),
            Some("0"),
            Some("root"),
            Some("00"),
            Some("0:1000"),
            Some("root:wheel"),
        ] {
            assert!(is_root_user(root), "{root:?}");
        }
        for other in [Some("dev"), Some("1000"), Some("1000:0"), Some("rooty")] {
            assert!(!is_root_user(other), "{other:?}");
        }
    }

    #[test]
    fn output_lines_split_each_stream_on_its_own() {
        let mut l = OutputLines::default();
        assert_eq!(l.push(0, b"one\r\ntw"), ["one"]);
        assert_eq!(l.push(1, b"err\x1b[0m"), Vec::<String>::new());
        assert_eq!(l.push(0, b"o\nthree"), ["two"]);
        assert_eq!(l.finish(), ["three", "err [0m"]);
        assert_eq!(l.finish(), Vec::<String>::new());
    }
}
