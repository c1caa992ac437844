//! `hearth prebuild`, `hearth prebuild rm|runs|logs` and `hearth prebuilds`.

use std::io::IsTerminal;

use hearth_api::{CreatePrebuild, PrebuildRun, PrebuildRunState, PrebuildTrigger};

use super::{absolute_source, print_table, Commands, ProgressView};

impl Commands {
    /// Builds a prebuild of a repository (`req.source` as given on the command line).
    pub async fn prebuild(&self, mut req: CreatePrebuild) -> anyhow::Result<()> {
        req.source = absolute_source(&req.source)?;
        let mut view = ProgressView::new(std::io::stderr().is_terminal());
        let res = self.api.prebuild(&req, view.printer()).await;
        view.done();
        let p = res?;
        println!(
            "prebuild {} of {} at commit {}",
            p.snapshot,
            p.source,
            &p.commit[..p.commit.len().min(12)]
        );
        Ok(())
    }

    pub async fn prebuild_remove(&self, snapshot: &str) -> anyhow::Result<()> {
        self.api.remove_prebuild(snapshot).await?;
        println!("prebuild {snapshot} removed");
        Ok(())
    }

    pub async fn prebuilds(&self, json: bool) -> anyhow::Result<()> {
        let v = self.api.prebuilds().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = v
            .iter()
            .map(|p| {
                vec![
                    p.source.clone(),
                    p.branch.clone().unwrap_or_else(|| "(default)".into()),
                    p.commit[..p.commit.len().min(12)].to_string(),
                    p.config_file.clone(),
                    p.snapshot.clone(),
                    p.owner.clone(),
                    p.created_at.clone(),
                ]
            })
            .collect();
        print_table(
            &[
                "SOURCE", "BRANCH", "COMMIT", "CONFIG", "SNAPSHOT", "OWNER", "CREATED",
            ],
            &rows,
        );
        // The latest run of each repository and branch: a failed one (a webhook's, say)
        // shows here, not only in the server log.
        let runs = self.api.prebuild_runs().await?;
        let mut latest: Vec<&PrebuildRun> = Vec::new();
        for r in &runs {
            let same = |l: &&PrebuildRun| {
                l.owner == r.owner
                    && l.source == r.source
                    && l.branch == r.branch
                    && l.config_file == r.config_file
            };
            if !latest.iter().any(same) {
                latest.push(r);
            }
        }
        if !latest.is_empty() {
            println!("\nlatest runs (hearth prebuild runs lists all, hearth prebuild logs ID shows one):");
            print_runs(&latest);
        }
        Ok(())
    }

    pub async fn prebuild_runs(&self, json: bool) -> anyhow::Result<()> {
        let runs = self.api.prebuild_runs().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&runs)?);
            return Ok(());
        }
        print_runs(&runs.iter().collect::<Vec<_>>());
        Ok(())
    }

    /// A run and its log; with `follow`, the log as it is written, until the run ends,
    /// then how it ended.
    pub async fn prebuild_logs(&self, id: &str, json: bool, follow: bool) -> anyhow::Result<()> {
        let r = self.api.prebuild_run(id).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&r)?);
            return Ok(());
        }
        let run = &r.run;
        println!(
            "prebuild run {} of {}{} ({}), {}",
            run.id,
            run.source,
            run.branch
                .as_deref()
                .map(|b| format!("@{b}"))
                .unwrap_or_default(),
            trigger(run.trigger),
            state(run.state)
        );
        if let Some(c) = &run.commit {
            println!("commit {c}");
        }
        if follow {
            println!("started {}", run.started_at);
            let end = self
                .api
                .follow_prebuild_run(id, |line| println!("{line}"))
                .await?;
            println!(
                "prebuild run {} {}{}",
                end.id,
                state(end.state),
                end.finished_at
                    .as_deref()
                    .map(|f| format!(", finished {f}"))
                    .unwrap_or_default()
            );
            print_outcome(&end);
            return Ok(());
        }
        println!(
            "started {}{}",
            run.started_at,
            run.finished_at
                .as_deref()
                .map(|f| format!(", finished {f}"))
                .unwrap_or_default()
        );
        if let Some(s) = &run.snapshot {
            println!("prebuild {s}");
        }
        for line in &r.log {
            println!("{line}");
        }
        if let Some(e) = &run.error {
            println!("error: {e}");
        }
        Ok(())
    }
}

/// A finished run's prebuild or why it failed.
fn print_outcome(run: &PrebuildRun) {
    if let Some(s) = &run.snapshot {
        println!("prebuild {s}");
    }
    if let Some(e) = &run.error {
        println!("error: {e}");
    }
}

fn trigger(t: PrebuildTrigger) -> &'static str {
    match t {
        PrebuildTrigger::Cli => "cli",
        PrebuildTrigger::Webhook => "webhook",
    }
}

fn state(s: PrebuildRunState) -> &'static str {
    match s {
        PrebuildRunState::Running => "running",
        PrebuildRunState::Ready => "ready",
        PrebuildRunState::Failed => "failed",
    }
}

/// Runs as a table; RESULT is a ready run's prebuild or a failed one's reason.
fn print_runs(runs: &[&PrebuildRun]) {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let result = match r.state {
                PrebuildRunState::Ready => r.snapshot.clone().unwrap_or_default(),
                _ => r.error.clone().unwrap_or_default(),
            };
            vec![
                r.id.clone(),
                r.source.clone(),
                r.branch.clone().unwrap_or_else(|| "(default)".into()),
                r.commit
                    .as_deref()
                    .map(|c| c.chars().take(12).collect())
                    .unwrap_or_else(|| "-".into()),
                trigger(r.trigger).into(),
                state(r.state).into(),
                r.started_at.clone(),
                result,
            ]
        })
        .collect();
    print_table(
        &[
            "RUN", "SOURCE", "BRANCH", "COMMIT", "TRIGGER", "STATE", "STARTED", "RESULT",
        ],
        &rows,
    );
}
