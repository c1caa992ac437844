//! `hearth bench prebuild`: `hearth up` of a repository whose `onCreateCommand` takes
//! long (60 s by default), without a prebuild and from one. Each run is timed from the
//! request until the workspace runs and a file of the repository reads back through an
//! exec session (what a user waits for before working). Runs a real server in this
//! process on a sandboxed node, like `--scale`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hearth_api::client::Client;
use hearth_api::{ClientFrame, CreatePrebuild, CreateWorkspace, ExecRequest, ServerFrame};

use super::Series;

pub struct PrebuildArgs {
    /// Image archive or OCI layout the repository's devcontainer.json names (by id).
    pub image: PathBuf,
    pub agent: PathBuf,
    pub runtime: Option<String>,
    /// Seconds the repository's `onCreateCommand` sleeps.
    pub on_create: u64,
    /// Timed `up`s from the prebuild.
    pub runs: usize,
}

/// The target for `up` from a prebuild to a running workspace with the repository's files.
const TARGET_MS: f64 = 1500.0;

pub async fn run(args: PrebuildArgs) -> Result<()> {
    let mut sb = super::Sandbox::new(
        "hearth-prebuild",
        "hpb",
        |tag| format!("10.78.{}.0/24", tag % 250),
        &args.agent,
        args.runtime.clone(),
    )?;
    sb.cfg.disk_reserve = Some(0);
    let (node, server) = super::scale::open(&sb.cfg, 0).await?;
    let res = async {
        let image = super::load_image(&node, &args.image).await?.id;
        let repo = repo(sb.path(), &image, args.on_create)?;
        let api = Client::new(&sb.cfg.data_dir, Some(&server.url), None)?;
        bench(&api, &repo, &args).await
    }
    .await;
    if let Err(e) = server.shutdown().await {
        eprintln!("prebuild bench: stopping the server: {e}");
    }
    eprintln!("stopping and removing the bench's workspaces...");
    super::teardown(&node, "prebuild bench").await;
    res
}

/// The bench repository with a devcontainer.json whose `onCreateCommand` sleeps.
fn repo(tmp: &Path, image: &str, on_create: u64) -> Result<PathBuf> {
    let repo = super::git_repo(tmp)?;
    let config = serde_json::json!({
        "image": image,
        "onCreateCommand": format!("sleep {on_create}; echo built > /opt-built"),
        "postCreateCommand": "echo ready",
    });
    std::fs::write(repo.join(".devcontainer.json"), config.to_string())?;
    super::git(&repo, &["add", "."])?;
    super::git(&repo, &["commit", "-qm", "devcontainer"])?;
    Ok(repo)
}

/// `up` of `repo` as `name`, until a file of the repository and the file
/// `onCreateCommand` made read back.
async fn up(api: &Client, repo: &Path, name: &str) -> Result<Duration> {
    let t = Instant::now();
    let req = CreateWorkspace {
        source: repo.display().to_string(),
        image: None,
        name: Some(name.to_string()),
        limits: Default::default(),
        egress: None,
        idle_timeout: None,
        devcontainer_config: None,
        branch: None,
        node_selector: None,
    };
    api.create(&req, |_| {})
        .await
        .with_context(|| format!("up {name}"))?;
    let out = exec(api, name, "cat src/file0.rs /opt-built").await?;
    let took = t.elapsed();
    if !out.ends_with("built\n") || !out.starts_with("fn f0") {
        bail!("{name}: unexpected files: {out:?}");
    }
    Ok(took)
}

/// Runs `sh -c cmd` in the workspace folder; its stdout, or an error with its code.
async fn exec(api: &Client, name: &str, cmd: &str) -> Result<String> {
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), cmd.into()],
        ..Default::default()
    };
    let (mut input, mut output) = api.exec(name, &req).await?;
    input.send(&ClientFrame::StdinEof).await?;
    let mut out = Vec::new();
    while let Some(frame) = output.next().await {
        match frame? {
            ServerFrame::Stdout(d) => out.extend_from_slice(&d),
            ServerFrame::Stderr(_) => {}
            ServerFrame::Exit(0) => return Ok(String::from_utf8_lossy(&out).into_owned()),
            ServerFrame::Exit(c) => bail!("{cmd:?} in {name} exited with {c}"),
            ServerFrame::Error(e) => bail!("exec in {name}: {e}"),
        }
    }
    bail!("exec in {name}: the session ended without an exit code")
}

async fn bench(api: &Client, repo: &Path, args: &PrebuildArgs) -> Result<()> {
    let mut cold = Series::new("up, no prebuild (onCreateCommand runs)", None);
    let mut build = Series::new("hearth prebuild", None);
    let mut warm = Series::new("up from the prebuild", Some(TARGET_MS));
    eprintln!(
        "up without a prebuild ({} s onCreateCommand)...",
        args.on_create
    );
    cold.samples.push(up(api, repo, "cold").await?);
    api.remove("cold", true).await?;
    eprintln!("prebuild...");
    let t = Instant::now();
    let req = CreatePrebuild {
        source: repo.display().to_string(),
        branch: None,
        devcontainer_config: None,
    };
    api.prebuild(&req, |_| {}).await.context("prebuild")?;
    build.samples.push(t.elapsed());
    eprintln!("{} ups from the prebuild...", args.runs);
    for i in 0..args.runs {
        let name = format!("warm{i}");
        warm.samples.push(up(api, repo, &name).await?);
        api.remove(&name, true).await?;
    }
    println!(
        "hearth bench prebuild: up of a repository whose onCreateCommand takes {} s, \
         until a repository file reads back in the running workspace",
        args.on_create
    );
    println!(
        "{:<42} {:>5} {:>10} {:>10} {:>10}",
        "", "runs", "p50 ms", "max ms", "target"
    );
    for s in [&cold, &build, &warm] {
        println!(
            "{:<42} {:>5} {:>10.0} {:>10.0} {:>10}",
            s.name,
            s.samples.len(),
            s.pct(50.0),
            s.pct(100.0),
            s.target
                .map_or_else(|| "-".into(), |t| format!("<= {t:.0}"))
        );
    }
    println!(
        "from a prebuild: {:.1}x faster than without (p50)",
        cold.pct(50.0) / warm.pct(50.0)
    );
    Ok(())
}
