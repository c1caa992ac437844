//! `hearth bench build`: a Dockerfile build, then rebuilds after a one-line change,
//! through Hearth (`hearth image build`: the context uploaded, podman in the builder
//! workspace, the image saved and loaded into the store) beside `podman build` alone on
//! the host with the same context and base image (its own storage under the bench's temp
//! dir, so the host's podman state is untouched).
//!
//! It runs a real server in this process, like `--scale`, and talks to it over HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hearth_api::client::Client;
use hearth_api::BuildImage;
use hearth_node::NodeApi;

use super::Series;

pub struct BuildArgs {
    /// Base image archive the Dockerfile builds on (what `hearth image load` takes).
    pub base: PathBuf,
    /// Builder image archive (`scripts/make-image.sh builder`).
    pub builder: PathBuf,
    /// Rebuilds after a one-line change.
    pub runs: usize,
    pub agent: PathBuf,
    pub runtime: Option<String>,
}

/// The Dockerfile: a base, a slow-ish step, the sources, and a last line that changes.
fn dockerfile(rev: usize) -> String {
    format!(
        "FROM bench-base\n\
         RUN head -c 50000000 /dev/urandom > /blob && echo blob made\n\
         COPY src /src\n\
         RUN echo rev {rev} > /rev\n"
    )
}

fn write_context(dir: &Path, rev: usize) -> Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    for i in 0..200 {
        std::fs::write(
            dir.join(format!("src/file{i}.rs")),
            format!("fn f{i}() {{}}\n").repeat(40),
        )?;
    }
    std::fs::write(dir.join("Dockerfile"), dockerfile(rev))?;
    Ok(())
}

pub async fn run(args: BuildArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut sb = super::Sandbox::new(
        "hearth-build-bench",
        "hbld",
        |tag| format!("10.78.{}.0/24", tag % 250),
        &args.agent,
        args.runtime.clone(),
    )?;
    sb.cfg.disk_reserve = Some(0);
    let cfg = sb.cfg.clone();
    let (node, server) = super::scale::open(&cfg, u64::MAX >> 1).await?;
    let res = bench(&node, &cfg.data_dir, sb.path(), &server.url, &args).await;
    if let Err(e) = server.shutdown().await {
        eprintln!("build bench: stopping the server: {e}");
    }
    eprintln!("removing the bench's builder workspace...");
    super::teardown(&node, "build bench").await;
    res
}

async fn upload(api: &Client, path: &Path, name: &str) -> Result<()> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().await?.len();
    api.upload_image(file, len, Some(name))
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    Ok(())
}

/// One `hearth image build` of `ctx`, timed from the tar to the image in the store, with
/// the server's split of it (its last progress line, "built NAME (ID) in ...").
async fn hearth_build(
    api: &Client,
    ctx: &Path,
    name: &str,
) -> Result<(std::time::Duration, String)> {
    let t0 = Instant::now();
    let tar = crate::commands::tar_dir(ctx).await?;
    let len = tar.metadata()?.len();
    let req = BuildImage {
        name: name.to_string(),
        ..Default::default()
    };
    let mut last = Vec::new();
    let res = api
        .build_image(tokio::fs::File::from_std(tar), len, &req, |l| {
            last.push(l.to_string())
        })
        .await;
    if let Err(e) = res {
        bail!("hearth build {name}: {e}\n{}", last.join("\n"));
    }
    let took = t0.elapsed();
    let split = last
        .iter()
        .rev()
        .find_map(|l| l.split_once(") in ").map(|(_, s)| s.to_string()))
        .unwrap_or_default();
    Ok((took, split))
}

/// `podman` with the bench's own storage.
fn podman(root: &Path) -> Command {
    let mut c = Command::new("podman");
    // runc: Debian 12's crun refuses this host's hybrid cgroup layout (BASELINES.md).
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"));
    c
}

fn podman_ok(mut c: Command, what: &str) -> Result<()> {
    let out = c.output().with_context(|| format!("run podman ({what})"))?;
    if !out.status.success() {
        bail!(
            "podman {what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn podman_build(root: &Path, ctx: &Path, tag: &str) -> Result<std::time::Duration> {
    let mut c = podman(root);
    c.args(["build", "--layers", "-q", "-t", tag]).arg(ctx);
    let t0 = Instant::now();
    podman_ok(c, "build")?;
    Ok(t0.elapsed())
}

async fn bench(
    node: &hearth_node::LocalNode,
    data_dir: &Path,
    tmp: &Path,
    url: &str,
    args: &BuildArgs,
) -> Result<()> {
    let api = Client::new(data_dir, Some(url), None)?;
    eprintln!("loading the base and builder images...");
    upload(&api, &args.base, "bench-base").await?;
    upload(&api, &args.builder, "hearth-builder").await?;
    let ctx = tmp.join("ctx");
    write_context(&ctx, 0)?;

    let mut h_first = Series::new("first build (new builder, no cache)", None);
    let mut h_re = Series::new("rebuild, last line changed", None);
    let mut splits = Vec::new();
    eprintln!("hearth: first build...");
    let (took, split) = hearth_build(&api, &ctx, "bench:0").await?;
    h_first.samples.push(took);
    splits.push(format!("first build: {split}"));
    for i in 1..=args.runs {
        eprintln!("hearth: rebuild {i}/{}...", args.runs);
        std::fs::write(ctx.join("Dockerfile"), dockerfile(i))?;
        let (took, split) = hearth_build(&api, &ctx, &format!("bench:{i}")).await?;
        h_re.samples.push(took);
        splits.push(format!("rebuild {i}: {split}"));
    }

    let mut p_first = Series::new("first build", None);
    let mut p_re = Series::new("rebuild", None);
    let proot = tmp.join("podman");
    match Command::new("podman").arg("--version").output() {
        Ok(o) if o.status.success() => {
            // The base as Hearth hands it to its builder (with the per-layer history
            // buildah wants), so both build on the same image.
            let base = tmp.join("base-export.tar");
            let mut f = node.export_image("bench-base", "bench-base").await?;
            std::io::copy(&mut f, &mut std::fs::File::create(&base)?)?;
            if let Err(e) = podman_series(&proot, &ctx, &base, args.runs, &mut p_first, &mut p_re) {
                eprintln!("podman baseline failed: {e:#}");
            }
            let mut rm = podman(&proot);
            rm.args(["system", "reset", "-f"]);
            if let Err(e) = podman_ok(rm, "system reset") {
                eprintln!("{e}");
            }
        }
        _ => eprintln!(
            "podman not installed on the host: the baseline column is empty \
             (scripts/install-deps.sh --bench installs it)"
        ),
    }
    print_table(args, &h_first, &h_re, &p_first, &p_re);
    println!("hearth's split (server side, from its last progress line):");
    for s in &splits {
        println!("  {s}");
    }
    Ok(())
}

/// The same first build and rebuilds with `podman build` on the host.
fn podman_series(
    proot: &Path,
    ctx: &Path,
    base: &Path,
    runs: usize,
    p_first: &mut Series,
    p_re: &mut Series,
) -> Result<()> {
    std::fs::write(ctx.join("Dockerfile"), dockerfile(0))?;
    let mut load = podman(proot);
    load.args(["load", "-q", "-i"]).arg(base);
    podman_ok(load, "load")?;
    // The archive's own name, whatever it is, becomes bench-base.
    let mut ids = podman(proot);
    ids.args(["images", "-q", "--no-trunc"]);
    let out = ids.output()?;
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let mut tag = podman(proot);
    tag.args(["tag", &id, "bench-base"]);
    podman_ok(tag, "tag")?;
    eprintln!("podman: first build...");
    p_first.samples.push(podman_build(proot, ctx, "bench:0")?);
    for i in 1..=runs {
        eprintln!("podman: rebuild {i}/{runs}...");
        std::fs::write(ctx.join("Dockerfile"), dockerfile(i))?;
        p_re.samples
            .push(podman_build(proot, ctx, &format!("bench:{i}"))?);
    }
    Ok(())
}

fn print_table(args: &BuildArgs, h_first: &Series, h_re: &Series, p_first: &Series, p_re: &Series) {
    println!();
    println!(
        "Dockerfile build: FROM {} + 50 MB RUN + 200 files COPY + one RUN; {} rebuilds, \
         each after changing the last line (times in s, p50)",
        args.base.display(),
        args.runs
    );
    println!(
        "{:<40} {:>10} {:>16} {:>8} {:>8}",
        "", "hearth", "podman (host)", "ratio", "target"
    );
    let row = |name: &str, h: &Series, p: &Series, target: &str| {
        let (hs, ps) = (h.pct(50.0) / 1e3, p.pct(50.0) / 1e3);
        let ratio = if p.samples.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}x", hs / ps)
        };
        let pcell = if p.samples.is_empty() {
            "-".to_string()
        } else {
            format!("{ps:.2}")
        };
        println!("{name:<40} {hs:>10.2} {pcell:>16} {ratio:>8} {target:>8}");
    };
    row(h_first.name, h_first, p_first, "");
    row(h_re.name, h_re, p_re, "<= 1.5x");
}
