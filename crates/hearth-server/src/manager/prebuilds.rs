//! Prebuilds: a repository's workspace made ahead of time. `hearth prebuild` (or a push
//! webhook) creates a workspace from the repository's devcontainer.json like `up` does,
//! runs `onCreateCommand` and `updateContentCommand`, stops it (its final snapshot is the
//! prebuild), removes it and records (repository, branch, commit, config hash, snapshot).
//! `up` of that repository then restores the newest matching snapshot instead of cloning
//! and running those steps, and goes on with `postCreateCommand`.
//!
//! Every prebuild of one (owner, source, branch) runs under the same workspace id (the
//! series, 32 hex digits, so never a workspace's 12): its snapshots chain in the store
//! (incremental), the store's retention applies across them, and two prebuilds of the
//! same series cannot run at once (the node refuses the second create).
//!
//! Who may start from one: its owner, or everyone when an admin made it. A prebuild
//! holds what its commands wrote; a user's prebuild never reaches another user.
//!
//! A configuration that builds its image (`build.dockerfile`, `features`) is matched by
//! what `up` can learn before building ([`Manager::base_key`]): the build's inputs (the
//! Dockerfile, the context directory's git tree, the stored base images) or, for features
//! on a named image, that image's id; the features and their options are in the settings.
//! `up` then runs on the prebuild's image with its features' lifecycle commands, and
//! builds nothing. The row keeps that image from removal (see [`Manager::remove_image`]).

use sha2::{Digest, Sha256};

use super::devcontainer::Devcontainer;
use super::follow;
use super::secrets::redact_userinfo;
use super::*;
use crate::db::{PrebuildRecord, PrebuildRunRecord};
use hearth_api::{
    CreatePrebuild, Prebuild, PrebuildRun, PrebuildRunLog, PrebuildRunState, PrebuildTrigger,
    StreamLine, WebhookResult,
};
use hearth_devcontainer::LifecycleStep;

/// The last create-time step a prebuild runs (`up` from it runs the ones after).
pub(super) const PREBUILD_UNTIL: LifecycleStep = LifecycleStep::UpdateContent;

/// A prebuild that passed its checks; holds its workspace name's lock until run.
pub struct PrebuildPlan {
    create: CreatePlan,
    branch: Option<String>,
}

/// Largest update (a git bundle of the commits since a prebuild's) `up` carries into a
/// restored prebuild; a bigger one clones instead.
const MAX_UPDATE: u64 = 256 << 20;

/// What `up` starts from instead of a clone.
pub(super) struct PrebuildUse {
    pub snapshot: String,
    /// The prebuild's commit.
    pub commit: String,
    /// Commits from `commit` to the one `up` reads, when they differ (a git bundle).
    pub update: Option<Vec<u8>>,
    /// The image it ran on (built, features installed): the workspace's, no build.
    pub image: hearth_node::ImageSummary,
    /// Its features' lifecycle commands, run before the configuration's own.
    pub feature_lifecycle: FeatureLifecycle,
}

/// Features' lifecycle commands, labelled, in installation order.
pub(super) type FeatureLifecycle = Vec<(String, hearth_devcontainer::Lifecycle)>;

/// What decides whether a prebuild fits a workspace: the devcontainer settings after the
/// first substitution pass (which names the workspace folder, config file and features
/// with their options) and `base`, what the image is made from ([`Manager::base_key`]).
/// The commit is matched apart (an older prebuild is brought up to date).
pub(super) fn config_hash(dc: &Devcontainer, base: &str) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&dc.config).unwrap_or_default());
    h.update(b"\0");
    h.update(base.as_bytes());
    hex::encode(h.finalize())
}

/// A Dockerfile build's key: its text, its context's tree, and the id of each base image
/// it names that the store has (those are handed to the builder; others it pulls itself,
/// named by reference as their `FROM` line says). Build args and target are in the settings.
fn build_key(inputs: &hearth_node::BuildInputs, bases: &[(String, Option<String>)]) -> String {
    let mut h = Sha256::new();
    for part in ["dockerfile-build", &inputs.dockerfile, &inputs.context_tree] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    for (name, id) in bases {
        h.update(name.as_bytes());
        h.update(b"=");
        h.update(id.as_deref().unwrap_or("-").as_bytes());
        h.update(b"\0");
    }
    format!("build:{}", hex::encode(h.finalize()))
}

/// The workspace id of (owner, source, branch)'s prebuilds.
fn series_id(owner: &str, source: &str, branch: Option<&str>) -> WorkspaceId {
    let mut h = Sha256::new();
    for part in ["prebuild", owner, source, branch.unwrap_or("")] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    let hex = hex::encode(h.finalize());
    WorkspaceId::new(&hex[..32]).expect("32 hex digits are a valid workspace id")
}

/// The name of a series' prebuild workspace.
fn prebuild_name(series: &WorkspaceId) -> String {
    format!("{PREBUILD_PREFIX}{}", &series.as_str()[..12])
}

pub(crate) const PREBUILD_PREFIX: &str = "prebuild-";

/// Refuses a user-chosen workspace name a prebuild would take (`prebuild-` and 12 hex
/// digits): a series' name follows from its owner and repository, so anyone could
/// otherwise hold it and make that user's prebuilds fail.
pub fn check_not_prebuild_name(name: &str) -> Result<(), ApiError> {
    let taken = name
        .strip_prefix(PREBUILD_PREFIX)
        .is_some_and(|rest| rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
    if taken {
        return Err(ApiError::invalid(format!(
            "workspace names of the form {PREBUILD_PREFIX}<12 hex digits> are reserved for \
             prebuilds: pick another name for {name}"
        )));
    }
    Ok(())
}

/// Whether `spec` is a prebuild's workspace (its id is a series', never a workspace's).
pub(super) fn is_prebuild(spec: &WorkspaceSpec) -> bool {
    spec.id.as_str().len() == 32
}

/// A spec that names a series' snapshots (listing them needs only its id).
fn series_spec(p: &PrebuildRecord) -> Result<WorkspaceSpec, ApiError> {
    Ok(WorkspaceSpec {
        id: WorkspaceId::new(&p.series).map_err(|e| {
            ApiError::internal(format!("prebuild {} has a bad series id: {e}", p.snapshot))
        })?,
        name: format!("prebuild of {}", p.source),
        image: p.image.clone(),
        source: p.source.clone(),
        slot: 0,
        limits: Limits::default(),
        egress: Default::default(),
        generation: 0,
    })
}

/// `p` as `caller` sees it: credentials in the source URL (`https://user:token@...`) are
/// its maker's, shown to nobody else.
fn view(caller: &Caller, p: PrebuildRecord) -> Prebuild {
    let source = match caller.may_use(&p.owner) {
        true => p.source,
        false => redact_userinfo(&p.source),
    };
    Prebuild {
        snapshot: p.snapshot,
        source,
        branch: p.branch,
        commit: p.commit,
        config_file: p.config_file,
        config_hash: p.config_hash,
        image: p.image,
        owner: p.owner,
        shared: p.shared,
        created_at: p.created_at,
    }
}

/// Lines of a run's output kept for `hearth prebuild logs` (the newest), and their
/// most bytes: the tail is what explains a failure.
const RUN_LOG_LINES: usize = 500;
const RUN_LOG_BYTES: usize = 64 << 10;
/// Longest line kept whole.
const RUN_LOG_LINE: usize = 2000;
/// How soon a line of a running prebuild is in its record (`hearth prebuild logs`): the
/// log is written at most this often while lines come.
const RUN_LOG_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

/// The newest lines of a run's output, bounded as above, and how many it wrote in all.
#[derive(Debug, Default)]
struct Tail {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
    total: i64,
}

impl Tail {
    /// Keeps `line` (each line of it: the record is newline-separated), shortened.
    fn push(&mut self, line: &str) {
        for part in line.split('\n') {
            let mut keep = part.to_string();
            if keep.len() > RUN_LOG_LINE {
                let mut end = RUN_LOG_LINE;
                while !keep.is_char_boundary(end) {
                    end -= 1;
                }
                keep.truncate(end);
                keep.push_str(" [...]");
            }
            self.bytes += keep.len();
            self.total += 1;
            self.lines.push_back(keep);
            while self.lines.len() > RUN_LOG_LINES || self.bytes > RUN_LOG_BYTES {
                match self.lines.pop_front() {
                    Some(old) => self.bytes -= old.len(),
                    None => break,
                }
            }
        }
    }

    /// The record's `log` and `log_lines`.
    fn record(&self) -> (String, i64) {
        let lines: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        (lines.join("\n"), self.total)
    }
}

/// The lines of a run record's log, numbered: the first one's number (from 1) with them.
fn record_lines(r: &PrebuildRunRecord) -> (i64, Vec<&str>) {
    let lines: Vec<&str> = match r.log.as_deref() {
        None => Vec::new(),
        // An empty log is no line, unless the run counted one (an empty line).
        Some("") if r.log_lines == 0 => Vec::new(),
        Some(l) => l.split('\n').collect(),
    };
    // Rows from before `log_lines` count 0: their log is all there is.
    let n = i64::try_from(lines.len()).unwrap_or(i64::MAX);
    (r.log_lines.max(n) - n + 1, lines)
}

/// The tail of a run's progress, kept while the lines go on to whoever reads them, and
/// written to its record as they come (at most every [`RUN_LOG_FLUSH`]).
struct RunLog {
    tail: Arc<std::sync::Mutex<Tail>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunLog {
    /// A progress sender that passes lines on to `to` and keeps the last of them, written
    /// to run `record`'s row (when it has one) as the run goes.
    fn tee(to: Progress, record: Option<(Store, String)>) -> (Progress, RunLog) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let tail: Arc<std::sync::Mutex<Tail>> = Default::default();
        let kept = tail.clone();
        let task = tokio::spawn(async move {
            let mut due: Option<tokio::time::Instant> = None;
            let mut warned = false;
            loop {
                let line = match due {
                    None => rx.recv().await,
                    Some(at) => tokio::select! {
                        line = rx.recv() => line,
                        _ = tokio::time::sleep_until(at) => {
                            due = None;
                            let Some((store, id)) = &record else { continue };
                            let (log, n) = kept.lock().unwrap_or_else(|p| p.into_inner()).record();
                            if let Err(e) = store.set_prebuild_run_log(id, &log, n).await {
                                if !std::mem::replace(&mut warned, true) {
                                    tracing::warn!(run = id, error = %e, "cannot write a running prebuild's log");
                                }
                            }
                            continue;
                        }
                    },
                };
                let Some(line) = line else { break };
                kept.lock().unwrap_or_else(|p| p.into_inner()).push(&line);
                let _ = to.send(line);
                if due.is_none() && record.is_some() {
                    due = Some(tokio::time::Instant::now() + RUN_LOG_FLUSH);
                }
            }
        });
        (tx, RunLog { tail, task })
    }

    /// The log to record (see [`Tail::record`]), once the senders are gone (or after a
    /// moment: a clone of the sender held by a task that outlives the run does not hold
    /// up its record).
    async fn finish(self) -> (String, i64) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.task).await;
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        t.record()
    }
}

/// A prebuild run's output, followed (`hearth prebuild logs -f`): its record read again
/// at each poll, the lines numbered past the last sent as ndjson progress lines, and the
/// run as the result line once it ended.
struct RunOutput {
    store: Store,
    id: String,
    /// The number of the last line sent.
    sent: i64,
}

impl RunOutput {
    fn next(&mut self, r: PrebuildRunRecord) -> follow::Read {
        let (first, lines) = record_lines(&r);
        let mut chunk = Vec::new();
        let mut progress = |line: String| chunk.extend(StreamLine::<()>::Progress(line).encode());
        // More lines came between two reads than the record keeps.
        if self.sent > 0 && first > self.sent + 1 {
            progress(format!("[{} lines not kept]", first - self.sent - 1));
        }
        let last = first + i64::try_from(lines.len()).unwrap_or(i64::MAX) - 1;
        let skip = usize::try_from((self.sent + 1 - first).max(0)).unwrap_or(usize::MAX);
        for line in lines.into_iter().skip(skip) {
            progress(line.to_string());
        }
        self.sent = self.sent.max(last);
        let done = r.state != "running";
        if done {
            chunk.extend(StreamLine::Result(run_view(r)).encode());
        }
        follow::Read {
            chunk,
            done,
            more: false,
        }
    }
}

impl follow::Source for RunOutput {
    async fn read(&mut self) -> Option<follow::Read> {
        let gone = |e: ApiError| follow::Read {
            chunk: StreamLine::<()>::Error(e.info()).encode(),
            done: true,
            more: false,
        };
        Some(match self.store.prebuild_run(&self.id).await {
            Ok(Some(r)) => self.next(r),
            Ok(None) => gone(ApiError::not_found(format!(
                "prebuild run {} is gone (its owner was removed?)",
                self.id
            ))),
            Err(e) => {
                tracing::warn!(run = self.id, error = %e, "prebuild logs follow: read failed");
                gone(e.into())
            }
        })
    }
}

fn trigger_name(t: PrebuildTrigger) -> &'static str {
    match t {
        PrebuildTrigger::Cli => "cli",
        PrebuildTrigger::Webhook => "webhook",
    }
}

fn run_view(r: PrebuildRunRecord) -> PrebuildRun {
    PrebuildRun {
        id: r.id,
        source: r.source,
        branch: r.branch,
        config_file: r.config_file,
        commit: r.commit,
        trigger: match r.trigger.as_str() {
            "webhook" => PrebuildTrigger::Webhook,
            _ => PrebuildTrigger::Cli,
        },
        state: match r.state.as_str() {
            "running" => PrebuildRunState::Running,
            "ready" => PrebuildRunState::Ready,
            _ => PrebuildRunState::Failed,
        },
        error: r.error,
        snapshot: r.snapshot,
        owner: r.owner,
        started_at: r.started_at,
        finished_at: r.finished_at,
    }
}

/// What a run is of: its series and what it builds, as far as known when it starts.
struct RunOf {
    series: String,
    owner: String,
    source: String,
    branch: Option<String>,
    config_file: Option<String>,
    commit: Option<String>,
}

impl Manager {
    /// Checks a prebuild before it streams: the source, branch and devcontainer.json (it
    /// must have one), the image, the series' name free.
    pub async fn plan_prebuild(
        &self,
        caller: &Caller,
        req: CreatePrebuild,
    ) -> Result<PrebuildPlan, ApiError> {
        let source = req.source.trim().to_string();
        let branch = req.branch.filter(|b| !b.is_empty());
        if let Some(b) = &branch {
            hearth_node::validate_branch(b).map_err(ApiError::from)?;
        }
        let series = series_id(&caller.id, &source, branch.as_deref());
        let name = prebuild_name(&series);
        let create = CreateWorkspace {
            source: source.clone(),
            image: None,
            name: Some(name),
            limits: Default::default(),
            egress: None,
            idle_timeout: Some(0),
            devcontainer_config: req.devcontainer_config,
            branch: branch.clone(),
            node_selector: None,
        };
        let opts = CreateOpts {
            branch: branch.clone(),
            id: Some(series),
            prebuild: true,
        };
        let create = self.plan_create_with(caller, create, opts).await?;
        if create.devcontainer.is_none() {
            return Err(ApiError::invalid(format!(
                "{source} has no devcontainer.json: a prebuild runs its onCreateCommand and \
                 updateContentCommand, so there is nothing to prebuild"
            )));
        }
        Ok(PrebuildPlan { create, branch })
    }

    /// Runs a planned prebuild, recorded as a run (`prebuild_runs`) from start to end with
    /// the last lines of its output, so its outcome is seen by its owner however it was
    /// started (a webhook's has nobody reading its progress).
    pub async fn run_prebuild(
        &self,
        plan: PrebuildPlan,
        progress: Progress,
        trigger: PrebuildTrigger,
    ) -> Result<Prebuild, ApiError> {
        let dc = plan.create.devcontainer.as_ref();
        let run = self.new_run(
            RunOf {
                series: plan
                    .create
                    .id
                    .as_ref()
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                owner: plan.create.owner.id.to_string(),
                source: plan.create.source.clone(),
                branch: plan.branch.clone(),
                config_file: dc.map(|d| d.config.file.clone()),
                commit: dc.map(|d| d.commit.clone()),
            },
            trigger,
        );
        let recorded = self.record_run(&run).await;
        self.run_recorded(plan, progress, recorded).await
    }

    /// A run record, `running` from now on this server.
    fn new_run(&self, of: RunOf, trigger: PrebuildTrigger) -> PrebuildRunRecord {
        PrebuildRunRecord {
            id: new_id().to_string(),
            series: of.series,
            owner: of.owner,
            source: of.source,
            branch: of.branch,
            config_file: of.config_file,
            commit: of.commit,
            trigger: trigger_name(trigger).into(),
            state: "running".into(),
            error: None,
            log: None,
            log_lines: 0,
            snapshot: None,
            server: self.server_id().map(str::to_string),
            started_at: crate::db::now_precise(),
            finished_at: None,
        }
    }

    /// Inserts `run`; its id, or `None` when it could not be (the run goes on unrecorded).
    async fn record_run(&self, run: &PrebuildRunRecord) -> Option<String> {
        match self.store.insert_prebuild_run(run).await {
            Ok(()) => Some(run.id.clone()),
            Err(e) => {
                tracing::warn!(source = run.source, error = %e, "cannot record a prebuild run");
                None
            }
        }
    }

    /// Runs `plan` as recorded run `run` (if recorded): its log written as it goes, its
    /// end with the prebuild made or why none was.
    async fn run_recorded(
        &self,
        plan: PrebuildPlan,
        progress: Progress,
        run: Option<String>,
    ) -> Result<Prebuild, ApiError> {
        let source = plan.create.source.clone();
        let writes = run.clone().map(|id| (self.store.clone(), id));
        let (tee, log) = RunLog::tee(progress, writes);
        let res = self.run_prebuild_steps(plan, tee).await;
        let (log, lines) = log.finish().await;
        if let Some(id) = run {
            let (state, error, snapshot) = match &res {
                Ok(p) => ("ready", None, Some(p.snapshot.as_str())),
                Err(e) => ("failed", Some(e.message.as_str()), None),
            };
            if let Err(e) = self
                .store
                .finish_prebuild_run(&id, state, error, (&log, lines), snapshot)
                .await
            {
                tracing::warn!(source, run = id, error = %e, "cannot record a prebuild run's end");
            }
        }
        res
    }

    /// The prebuild runs `caller` may see (their own; an admin's: all), newest first.
    pub async fn prebuild_runs(&self, caller: &Caller) -> Result<Vec<PrebuildRun>, ApiError> {
        Ok(self
            .store
            .prebuild_runs()
            .await?
            .into_iter()
            .filter(|r| caller.may_use(&r.owner))
            .map(run_view)
            .collect())
    }

    /// Prebuild run `id` with its log, if `caller` may see it.
    pub async fn prebuild_run(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<PrebuildRunLog, ApiError> {
        match self.store.prebuild_run(id).await? {
            Some(r) if caller.may_use(&r.owner) => {
                let log = record_lines(&r).1.into_iter().map(str::to_string).collect();
                Ok(PrebuildRunLog {
                    run: run_view(r),
                    log,
                })
            }
            _ => Err(ApiError::not_found(format!(
                "no prebuild run {id} (hearth prebuilds lists them)"
            ))),
        }
    }

    /// `hearth prebuild logs -f`: prebuild run `id`'s output so far, then as its record
    /// gets more (whichever server runs it), as ndjson progress lines, and the run once it
    /// ended as the result line; if `caller` may see it.
    pub async fn follow_prebuild_run(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<bytes::Bytes>, ApiError> {
        let r = match self.store.prebuild_run(id).await? {
            Some(r) if caller.may_use(&r.owner) => r,
            _ => {
                return Err(ApiError::not_found(format!(
                    "no prebuild run {id} (hearth prebuilds lists them)"
                )))
            }
        };
        let mut out = RunOutput {
            store: self.store.clone(),
            id: id.to_string(),
            sent: 0,
        };
        let first = out.next(r);
        Ok(follow::follow(first, out))
    }

    /// Marks runs whose server is gone failed (a leader job beside the operations'
    /// takeover): nothing else would end them.
    pub(super) async fn fail_orphan_prebuild_runs(
        &self,
        live: &std::collections::HashSet<String>,
    ) -> Result<(), ApiError> {
        let gone: Vec<String> = self
            .store
            .prebuild_run_servers()
            .await?
            .into_iter()
            .filter(|s| !live.contains(s))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let n = self
            .store
            .fail_prebuild_runs_of(&gone, "its server stopped while it ran")
            .await?;
        if n > 0 {
            tracing::info!(runs = n, "prebuild runs of gone servers marked failed");
        }
        Ok(())
    }

    /// The prebuild itself: the workspace through [`PREBUILD_UNTIL`], its final
    /// snapshot, its removal (the snapshot stays), the record. A failed step fails the
    /// prebuild with its output, and the workspace goes too.
    async fn run_prebuild_steps(
        &self,
        plan: PrebuildPlan,
        progress: Progress,
    ) -> Result<Prebuild, ApiError> {
        let PrebuildPlan { create, branch } = plan;
        let (owner, name) = (create.owner.clone(), create.name.clone());
        let Some(dc) = create.devcontainer.clone() else {
            return Err(ApiError::internal("prebuild planned without devcontainer"));
        };
        let res = self.run_create_made(create, progress.clone()).await;
        let _guard = self.lock(&name).await;
        let Some(rec) = self.store.get(&name).await? else {
            // The create cleaned up after itself.
            return Err(res.err().unwrap_or_else(|| {
                ApiError::conflict(format!("prebuild workspace {name} went away"))
            }));
        };
        let out = async {
            let (_, made) = res?;
            say(
                &progress,
                "stopping the prebuild workspace for its snapshot",
            );
            self.stop_locked(&rec, "prebuild done: its snapshot is the prebuild")
                .await?;
            let done = self.store.get(&name).await?;
            match done.map(|r| (r.last_snapshot, r.snapshot_error)) {
                Some((Some(s), None)) => Ok((s, made)),
                Some((_, Some(e))) => Err(ApiError::conflict(format!(
                    "the prebuild's snapshot failed: {e}"
                ))),
                _ => Err(ApiError::internal(
                    "the prebuild's snapshot is not recorded",
                )),
            }
        }
        .await;
        // The workspace goes either way; the series' snapshots stay.
        if let Err(e) = self.node.remove(&rec.spec).await {
            tracing::warn!(workspace = name, error = %e, "cannot remove a prebuild workspace");
        }
        self.store.delete(&rec.spec.id).await?;
        self.forget_activity(rec.spec.id.as_str());
        let (snapshot, made) = out?;
        let Some(base) = made.base_key else {
            return Err(ApiError::internal("the prebuild's image has no key"));
        };
        let feature_lifecycle =
            match made.feature_lifecycle.is_empty() {
                true => None,
                false => Some(serde_json::to_string(&made.feature_lifecycle).map_err(|e| {
                    ApiError::internal(format!("features' lifecycle commands: {e}"))
                })?),
            };
        let record = PrebuildRecord {
            snapshot,
            series: rec.spec.id.to_string(),
            owner: owner.id.to_string(),
            shared: owner.admin,
            source: rec.spec.source.clone(),
            branch,
            commit: dc.commit.clone(),
            config_hash: config_hash(&dc, &base),
            image: rec.spec.image.clone(),
            config_file: dc.config.file.clone(),
            created_at: crate::db::now_precise(),
            feature_lifecycle,
        };
        self.store.insert_prebuild(&record).await?;
        self.prune_prebuilds(&record).await;
        say(
            &progress,
            format!(
                "prebuild {} of {} at {}",
                record.snapshot,
                record.source,
                &record.commit[..record.commit.len().min(12)]
            ),
        );
        tracing::info!(
            source = record.source,
            snapshot = record.snapshot,
            commit = record.commit,
            "prebuild recorded"
        );
        Ok(view(&owner, record))
    }

    /// Forgets the rows of `p`'s series whose snapshots the store's retention dropped.
    async fn prune_prebuilds(&self, p: &PrebuildRecord) {
        let Ok(spec) = series_spec(p) else { return };
        let have = match self.node.snapshots(&spec).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(source = p.source, error = %e, "cannot list a prebuild series");
                return;
            }
        };
        let gone: Vec<String> = match self.store.prebuilds(Some(&p.source)).await {
            Ok(rows) => rows
                .into_iter()
                .filter(|r| r.series == p.series && !have.iter().any(|s| s.id == r.snapshot))
                .map(|r| r.snapshot)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list prebuilds");
                return;
            }
        };
        if let Err(e) = self.store.forget_prebuilds(&gone).await {
            tracing::warn!(error = %e, "cannot forget expired prebuilds");
        }
    }

    /// The prebuilds `caller`'s `up` may start from, newest first.
    pub async fn prebuilds(&self, caller: &Caller) -> Result<Vec<Prebuild>, ApiError> {
        Ok(self
            .store
            .prebuilds(None)
            .await?
            .into_iter()
            .filter(|p| p.shared || caller.may_use(&p.owner))
            .map(|p| view(caller, p))
            .collect())
    }

    /// Removes the prebuild with snapshot `snapshot`: its owner may, or an admin. When
    /// it was its series' last, the series' snapshots are forgotten too (unless a
    /// prebuild of the series is running: its snapshot is to come).
    pub async fn remove_prebuild(&self, caller: &Caller, snapshot: &str) -> Result<(), ApiError> {
        let rows = self.store.prebuilds(None).await?;
        let Some(p) = rows
            .iter()
            .find(|p| p.snapshot == snapshot && (p.shared || caller.may_use(&p.owner)))
        else {
            return Err(ApiError::not_found(format!(
                "no prebuild {snapshot} (hearth prebuilds lists them)"
            )));
        };
        if !caller.may_use(&p.owner) {
            return Err(ApiError::forbidden(format!(
                "prebuild {snapshot} is {}'s: only they or an admin may remove it",
                p.owner
            )));
        }
        // One series at a time: a prebuild of it holds this lock while it runs.
        let spec = series_spec(p)?;
        let name = prebuild_name(&spec.id);
        let _guard = self.lock(&name).await;
        self.store
            .forget_prebuilds(std::slice::from_ref(&p.snapshot))
            .await?;
        tracing::info!(source = p.source, snapshot, by = %caller.id, "prebuild removed");
        let others = self
            .store
            .prebuilds(Some(&p.source))
            .await?
            .into_iter()
            .any(|r| r.series == p.series);
        if others || self.store.get(&name).await?.is_some() {
            return Ok(());
        }
        match self.node.forget_snapshots(&spec, None).await {
            Ok(ids) => {
                tracing::info!(
                    source = p.source,
                    forgotten = ids.len(),
                    "prebuild series forgotten"
                )
            }
            // The row is gone either way; the store gc's retention still applies.
            Err(e) => {
                tracing::warn!(source = p.source, error = %e, "cannot forget a prebuild series' snapshots")
            }
        }
        Ok(())
    }

    /// The newest prebuild `up` of `source`'s `branch` (default: `None`) can start from: one that
    /// `caller` may use, whose config hash matches, still in the store, and whose commit
    /// is the one `up` reads or (with the commits since as a bundle) an ancestor of it.
    pub(super) async fn find_prebuild(
        &self,
        caller: &Caller,
        source: &str,
        branch: Option<&str>,
        dc: &Devcontainer,
        base: &str,
    ) -> Result<Option<PrebuildUse>, ApiError> {
        let hash = config_hash(dc, base);
        let rows: Vec<PrebuildRecord> = self
            .store
            .prebuilds(Some(source))
            .await?
            .into_iter()
            .filter(|p| {
                p.config_hash == hash
                    && p.branch.as_deref() == branch
                    && (p.shared || caller.may_use(&p.owner))
            })
            .collect();
        let rows = match self.live_prebuilds(rows).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(source, error = %e.message, "cannot list a prebuild series; cloning instead");
                return Ok(None);
            }
        };
        // Each with the image it ran on, which must still be here.
        let mut fits: Vec<(PrebuildRecord, hearth_node::ImageSummary)> = Vec::new();
        for p in rows {
            match self.node.resolve_image(&p.image).await {
                Ok(img) => fits.push((p, img)),
                Err(e) => {
                    tracing::info!(source, snapshot = p.snapshot, error = %e, "a prebuild's image is gone; not using it")
                }
            }
        }
        let use_of = |p: PrebuildRecord, image, update| -> Result<PrebuildUse, ApiError> {
            let feature_lifecycle = match &p.feature_lifecycle {
                None => Vec::new(),
                Some(json) => serde_json::from_str(json).map_err(|e| {
                    ApiError::internal(format!(
                        "prebuild {}: unreadable features' lifecycle commands: {e}",
                        p.snapshot
                    ))
                })?,
            };
            Ok(PrebuildUse {
                snapshot: p.snapshot,
                commit: p.commit,
                update,
                image,
                feature_lifecycle,
            })
        };
        if let Some(i) = fits.iter().position(|(p, _)| p.commit == dc.commit) {
            let (p, img) = fits.swap_remove(i);
            return use_of(p, img, None).map(Some);
        }
        if fits.is_empty() {
            return Ok(None);
        }
        let mut bases: Vec<String> = Vec::new();
        for (p, _) in &fits {
            if !bases.contains(&p.commit) {
                bases.push(p.commit.clone());
            }
        }
        let found = match self
            .node
            .update_bundle(source, branch, &dc.commit, &bases, MAX_UPDATE)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(source, error = %e, "cannot compare prebuild commits; cloning instead");
                return Ok(None);
            }
        };
        let Some((base, bundle)) = found else {
            return Ok(None);
        };
        match fits.into_iter().find(|(p, _)| p.commit == base) {
            Some((p, img)) => use_of(p, img, Some(bundle)).map(Some),
            None => Ok(None),
        }
    }

    /// `rows` whose snapshots the store still has; the others (dropped by retention or
    /// a store gc since) are forgotten.
    async fn live_prebuilds(
        &self,
        rows: Vec<PrebuildRecord>,
    ) -> Result<Vec<PrebuildRecord>, ApiError> {
        let mut kept: std::collections::HashMap<String, Vec<String>> = Default::default();
        let mut live = Vec::new();
        for p in rows {
            if !kept.contains_key(&p.series) {
                let have = self
                    .node
                    .snapshots(&series_spec(&p)?)
                    .await
                    .map_err(|e| node_err("snapshots", &p.series, e))?;
                kept.insert(p.series.clone(), have.into_iter().map(|s| s.id).collect());
            }
            if kept.get(&p.series).is_some_and(|v| v.contains(&p.snapshot)) {
                live.push(p);
            } else {
                self.store
                    .forget_prebuilds(std::slice::from_ref(&p.snapshot))
                    .await?;
            }
        }
        Ok(live)
    }

    /// The images live prebuilds ran on, each with a prebuild of it: kept from removal,
    /// since `up` starts from the prebuild on that very image.
    pub(crate) async fn prebuild_images(&self) -> Result<Vec<(String, PrebuildRecord)>, ApiError> {
        let rows = self
            .live_prebuilds(self.store.prebuilds(None).await?)
            .await?;
        Ok(rows.into_iter().map(|p| (p.image.clone(), p)).collect())
    }

    /// What `up` can learn of the image of `dc` before making it: for a Dockerfile build,
    /// its inputs at the commit ([`build_key`]); else the id of the image it names (the
    /// features, if any, go on that one).
    pub(super) async fn base_key(
        &self,
        source: &str,
        branch: Option<&str>,
        dc: &Devcontainer,
        build: &super::build::BuildRequest,
    ) -> Result<String, ApiError> {
        let inputs = self
            .node
            .build_inputs(
                source,
                branch,
                &dc.commit,
                &build.dockerfile,
                &build.context_dir,
            )
            .await
            .map_err(|e| node_err("build_inputs", source, e))?;
        let mut bases = Vec::new();
        for name in super::build::base_images(&inputs.dockerfile, &build.args) {
            let id = self.node.resolve_image(&name).await.ok().map(|i| i.id);
            bases.push((name, id));
        }
        Ok(build_key(&inputs, &bases))
    }

    /// Makes `rec`'s workspace from prebuild `p` and starts it: restore, then (when the
    /// prebuild's commit is older) the commits since fetched from a bundle and merged
    /// fast-forward in the workspace (by its own git, as root inside, never by the host's
    /// over files the prebuild's commands could have changed), and `updateContentCommand`
    /// due again.
    pub(super) async fn start_from_prebuild(
        &self,
        rec: &WorkspaceRecord,
        p: &PrebuildUse,
        progress: &Progress,
    ) -> Result<WorkspaceStatus, ApiError> {
        let name = &rec.spec.name;
        say(
            progress,
            format!(
                "starting from prebuild {} (commit {})",
                p.snapshot,
                &p.commit[..p.commit.len().min(12)]
            ),
        );
        self.node
            .restore(&rec.spec, &p.snapshot)
            .await
            .map_err(|e| node_err("restore", name, e))?;
        let done = match p.update {
            Some(_) => LifecycleStep::OnCreate,
            None => PREBUILD_UNTIL,
        };
        self.store
            .set_devcontainer_done(&rec.spec.id, done.property())
            .await?;
        self.set(rec, WorkspaceState::Starting, None).await?;
        say(progress, format!("starting workspace {name}"));
        let st = self
            .node
            .start(&rec.spec)
            .await
            .map_err(|e| node_err("start", name, e))?;
        if let Some(bundle) = &p.update {
            say(progress, "fetching the commits since the prebuild");
            let folder = super::devcontainer::clone_folder(&rec.spec.source);
            // As the repository's owner (the remote user it was handed to): git refuses
            // a repository another user owns, and new files must be the owner's too.
            let user = self
                .devcontainer(&rec.spec)
                .await?
                .and_then(|(dc, _)| dc.config.exec_user().map(str::to_string));
            let script = "set -e; b=$(mktemp); trap 'rm -f \"$b\"' EXIT; cat > \"$b\"; \
                          git -C \"$1\" fetch -q \"$b\" \"$2\"; git -C \"$1\" merge -q --ff-only FETCH_HEAD";
            let req = ExecRequest {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    script.into(),
                    "sh".into(),
                    folder,
                    hearth_node::UPDATE_REF.into(),
                ],
                env: Vec::new(),
                cwd: None,
                user,
                tty: false,
                rows: 0,
                cols: 0,
            };
            let (code, tail) = self
                .run_capture_input(&rec.spec, req, Some(progress), "update", bundle)
                .await?;
            if code != 0 {
                return Err(ApiError::conflict(format!(
                    "bringing the prebuild's clone to the new commit failed with exit code \
                     {code} (does the image have git?): {}",
                    tail.join(" / ")
                )));
            }
        }
        Ok(st)
    }
}

impl Manager {
    /// Sets the secret push webhooks must carry; `None` turns them off.
    pub fn set_webhook_secret(&self, secret: Option<Vec<u8>>) {
        *self
            .webhook_secret
            .write()
            .unwrap_or_else(|p| p.into_inner()) = secret.map(Into::into);
    }

    pub fn webhook_secret(&self) -> Option<Arc<[u8]>> {
        self.webhook_secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts, in the background, a new prebuild of every series of the pushed
    /// repository and branch (the default branch's series when the push is to it), as
    /// the series' owner. Returns what was started, with the runs' ids: each is recorded
    /// before this returns, so the forge's delivery log names it.
    pub async fn prebuild_push(
        &self,
        push: &crate::prebuilds::Push,
    ) -> Result<WebhookResult, ApiError> {
        let all = self.store.prebuilds(None).await?;
        // Series prebuilt at the pushed commit already: a delivery sent again (or replayed
        // by someone who saw it) starts nothing.
        let built: Vec<(&str, &str)> = all
            .iter()
            .filter(|p| push.after.as_deref() == Some(p.commit.as_str()))
            .map(|p| (p.series.as_str(), p.config_file.as_str()))
            .collect();
        let mut series: Vec<PrebuildRecord> = Vec::new();
        for p in all.iter() {
            let branch_matches = match &p.branch {
                Some(b) => *b == push.branch,
                None => push.default_branch.as_deref() == Some(push.branch.as_str()),
            };
            if branch_matches
                && push.urls.contains(&p.source)
                && !built.contains(&(p.series.as_str(), p.config_file.as_str()))
                && !series
                    .iter()
                    .any(|s| s.series == p.series && s.config_file == p.config_file)
            {
                series.push(p.clone());
            }
        }
        let Some(me) = self.me.upgrade() else {
            return Err(ApiError::internal(
                "prebuilds from webhooks need a shared manager",
            ));
        };
        let mut result = WebhookResult {
            started: Vec::new(),
            runs: Vec::new(),
        };
        for p in series {
            // As the owner is now: a removed user's series stop, a demoted admin's are
            // rebuilt as the user they are.
            let Some(owner) = self.store.user(&p.owner).await? else {
                tracing::info!(
                    source = p.source,
                    owner = p.owner,
                    "webhook: the prebuild's owner is gone"
                );
                continue;
            };
            // The answer goes to the forge (its delivery log): no credentials in it.
            let what = match &p.branch {
                Some(b) => format!("{}@{b}", redact_userinfo(&p.source)),
                None => redact_userinfo(&p.source),
            };
            // `.devcontainer/NAME/devcontainer.json` was chosen with --config NAME.
            let parts: Vec<&str> = p.config_file.split('/').collect();
            let config = match parts.as_slice() {
                [".devcontainer", name, "devcontainer.json"] => Some(name.to_string()),
                _ => None,
            };
            let caller = Caller {
                id: owner.name.as_str().into(),
                admin: owner.admin,
            };
            let req = CreatePrebuild {
                source: p.source.clone(),
                branch: p.branch.clone(),
                devcontainer_config: config,
            };
            // Recorded now with the pushed commit; its plan (which may wait for a run of
            // the series under way) and steps follow in the background.
            let run = self.new_run(
                RunOf {
                    series: p.series.clone(),
                    owner: p.owner.clone(),
                    source: p.source.clone(),
                    branch: p.branch.clone(),
                    config_file: Some(p.config_file.clone()),
                    commit: push.after.clone(),
                },
                PrebuildTrigger::Webhook,
            );
            let run = self.record_run(&run).await;
            let me = me.clone();
            let what2 = what.clone();
            let id = run.clone();
            tokio::spawn(async move {
                let (progress, _unread) = tokio::sync::mpsc::unbounded_channel();
                // Nobody reads the progress: the run's record keeps the outcome and log.
                let res = match me.plan_prebuild(&caller, req).await {
                    Ok(plan) => me.run_recorded(plan, progress, id).await,
                    Err(e) => {
                        // Refused before it ran: nobody else would see why.
                        if let Some(id) = &id {
                            if let Err(re) = me
                                .store
                                .finish_prebuild_run(id, "failed", Some(&e.message), ("", 0), None)
                                .await
                            {
                                tracing::warn!(run = id, error = %re, "cannot record a prebuild run's end");
                            }
                        }
                        Err(e)
                    }
                };
                match res {
                    Ok(p) => tracing::info!(
                        source = what2,
                        snapshot = p.snapshot,
                        "webhook prebuild done"
                    ),
                    Err(e) => {
                        tracing::warn!(source = what2, error = %e.message, "webhook prebuild failed")
                    }
                }
            });
            result.started.push(what);
            result.runs.extend(run);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_tail_is_bounded_and_numbered() {
        let mut t = Tail::default();
        for i in 0..RUN_LOG_LINES + 100 {
            t.push(&format!("line {i}"));
        }
        let (log, n) = t.record();
        assert_eq!(n, i64::try_from(RUN_LOG_LINES + 100).unwrap());
        assert_eq!(log.split('\n').count(), RUN_LOG_LINES);
        assert!(log.starts_with("line 100\n") && log.ends_with("\nline 599"));
        // Long lines are cut (at a character boundary), and the bytes bounded.
        let mut t = Tail::default();
        for _ in 0..100 {
            t.push(&"\u{e9}".repeat(RUN_LOG_LINE));
        }
        let (log, n) = t.record();
        assert_eq!(n, 100);
        assert!(log.len() <= RUN_LOG_BYTES, "{}", log.len());
        assert!(log
            .split('\n')
            .all(|l| l.ends_with(" [...]") && l.len() <= RUN_LOG_LINE + 6));
        // A line holding newlines is that many lines, as the record will read.
        let mut t = Tail::default();
        t.push("a\nb");
        t.push("");
        let (log, n) = t.record();
        assert_eq!((log.as_str(), n), ("a\nb\n", 3));
        let r = PrebuildRunRecord {
            log: Some(log),
            log_lines: n,
            ..sample_run()
        };
        assert_eq!(record_lines(&r), (1, vec!["a", "b", ""]));
    }

    fn sample_run() -> PrebuildRunRecord {
        PrebuildRunRecord {
            id: "000000000001".into(),
            series: "1".repeat(32),
            owner: "admin".into(),
            source: "/r".into(),
            branch: None,
            config_file: None,
            commit: None,
            trigger: "cli".into(),
            state: "running".into(),
            error: None,
            log: None,
            log_lines: 0,
            snapshot: None,
            server: None,
            started_at: crate::db::now_precise(),
            finished_at: None,
        }
    }

    #[test]
    fn record_lines_number_the_kept_tail() {
        let with = |log: Option<&str>, n| PrebuildRunRecord {
            log: log.map(str::to_string),
            log_lines: n,
            ..sample_run()
        };
        assert_eq!(record_lines(&with(None, 0)), (1, vec![]));
        assert_eq!(record_lines(&with(Some(""), 0)), (1, vec![]));
        // One empty line is a line.
        assert_eq!(record_lines(&with(Some(""), 1)), (1, vec![""]));
        assert_eq!(record_lines(&with(Some("y\nz"), 26)), (25, vec!["y", "z"]));
        // A row from before the count: its log is all its lines.
        assert_eq!(record_lines(&with(Some("a\nb"), 0)), (1, vec!["a", "b"]));
    }

    /// The tee passes every line on at once and writes the run's record as lines come,
    /// not only at the end; an ended run's record is not written over.
    #[tokio::test]
    async fn a_running_prebuilds_log_reaches_its_record_while_it_runs() {
        let db = crate::db::testdb::TestDb::new(crate::db::testdb::Backend::Sqlite);
        let store = db.store().await;
        let run = sample_run();
        store.insert_prebuild_run(&run).await.unwrap();
        let (to, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let (tee, log) = RunLog::tee(to, Some((store.clone(), run.id.clone())));
        tee.send("onCreateCommand: started".into()).unwrap();
        assert_eq!(
            seen.recv().await.as_deref(),
            Some("onCreateCommand: started")
        );
        // (The bound only keeps a broken tee from hanging the test.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let r = store.prebuild_run(&run.id).await.unwrap().unwrap();
            if r.log.is_some() {
                assert_eq!(r.log.as_deref(), Some("onCreateCommand: started"));
                assert_eq!((r.log_lines, r.state.as_str()), (1, "running"));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the log was never written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tee.send("done".into()).unwrap();
        drop(tee);
        let (text, n) = log.finish().await;
        assert_eq!((text.as_str(), n), ("onCreateCommand: started\ndone", 2));
        store
            .finish_prebuild_run(&run.id, "ready", None, (&text, n), Some("s"))
            .await
            .unwrap();
        store
            .set_prebuild_run_log(&run.id, "late", 3)
            .await
            .unwrap();
        let r = store.prebuild_run(&run.id).await.unwrap().unwrap();
        assert_eq!((r.log.as_deref(), r.log_lines), (Some(text.as_str()), 2));
    }

    #[test]
    fn series_ids_are_per_owner_source_and_branch_and_never_a_workspace_id() {
        let a = series_id("alice", "/r", None);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(a, series_id("alice", "/r", None));
        assert_ne!(a, series_id("bob", "/r", None));
        assert_ne!(a, series_id("alice", "/r", Some("dev")));
        assert_ne!(a, series_id("alice", "/r2", None));
        // The separator keeps parts from running together.
        assert_ne!(series_id("a", "b/r", None), series_id("ab", "/r", None));
        assert_ne!(a.as_str().len(), new_id().as_str().len());
    }

    #[test]
    fn build_keys_change_with_each_input_of_the_build() {
        let inputs = |df: &str, tree: &str| hearth_node::BuildInputs {
            dockerfile: df.into(),
            context_tree: tree.into(),
        };
        let base = |id: Option<&str>| vec![("busybox".to_string(), id.map(str::to_string))];
        let k = build_key(&inputs("FROM busybox\n", "t1"), &base(Some("sha256:a")));
        assert!(k.starts_with("build:"), "{k}");
        assert_eq!(
            k,
            build_key(&inputs("FROM busybox\n", "t1"), &base(Some("sha256:a")))
        );
        for other in [
            build_key(
                &inputs("FROM busybox\nRUN x\n", "t1"),
                &base(Some("sha256:a")),
            ),
            build_key(&inputs("FROM busybox\n", "t2"), &base(Some("sha256:a"))),
            build_key(&inputs("FROM busybox\n", "t1"), &base(Some("sha256:b"))),
            build_key(&inputs("FROM busybox\n", "t1"), &base(None)),
        ] {
            assert_ne!(k, other);
        }
        // Parts cannot run together.
        assert_ne!(
            build_key(&inputs("ab", "c"), &[]),
            build_key(&inputs("a", "bc"), &[])
        );
    }
}
