//! `hearth bench move`: time to a shell after a workspace is restored on a node without a
//! local copy (what a move, a start elsewhere, `hearth restore` and fork do), with an eager
//! restore beside the default lazy one, for workspaces of the sizes asked for.
//!
//! Each size: a workspace is filled with 2,000 small files (about 1% of the size) and large
//! incompressible ones, snapshotted into the node's local store and removed; then the
//! snapshot is restored under a new id, started, and timed until `true` ran in it (the
//! shell), once by a node with `eager_restore` and once by a default node, and for the lazy
//! one also until the last file is fetched.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hearth_node::{
    ExecRequest, Limits, LocalNode, NodeApi, NodeConfig, WorkspaceId, WorkspaceSpec,
};
use hearth_proto::Event;

use super::{exec_true, git_repo, load_image, teardown, Sandbox};

pub struct MoveArgs {
    /// Workspace sizes in GB.
    pub sizes: Vec<u64>,
    pub image: PathBuf,
    pub agent: PathBuf,
    pub runtime: Option<String>,
}

const SMALL_FILES: u64 = 2000;
/// Target of issue 13.6: a shell within this after a 5 GB restore.
const TARGET: Duration = Duration::from_secs(2);

struct Row {
    gb: u64,
    files: u64,
    eager: Duration,
    lazy: Duration,
    hydrated: Duration,
}

pub async fn run(args: MoveArgs) -> Result<()> {
    if args.sizes.is_empty() {
        bail!("hearth bench move needs at least one size");
    }
    let sb = Sandbox::new(
        "hearth-bench-move",
        "hbmove",
        |tag| format!("10.78.{}.0/24", tag % 250),
        &args.agent,
        args.runtime.clone(),
    )?;
    let repo = git_repo(sb.path())?;
    let mut rows = Vec::new();
    for &gb in &args.sizes {
        rows.push(one_size(&sb, &args, &repo, gb).await?);
    }
    println!(
        "\ntime to a shell after a restore from the node's local store (target <= {:.1} s for 5 GB)",
        TARGET.as_secs_f64()
    );
    println!(
        "{:>6} {:>7} {:>14} {:>14} {:>20}",
        "size", "files", "eager shell", "lazy shell", "lazy all fetched"
    );
    for r in rows {
        println!(
            "{:>4} GB {:>7} {:>12.2} s {:>12.2} s {:>18.2} s",
            r.gb,
            r.files,
            r.eager.as_secs_f64(),
            r.lazy.as_secs_f64(),
            r.hydrated.as_secs_f64()
        );
    }
    Ok(())
}

fn config(sb: &Sandbox, eager: bool) -> NodeConfig {
    let mut cfg = sb.cfg.clone();
    cfg.snapshots.eager_restore = eager;
    cfg
}

async fn one_size(sb: &Sandbox, args: &MoveArgs, repo: &std::path::Path, gb: u64) -> Result<Row> {
    let bytes = gb << 30;
    let limits = Limits {
        disk_bytes: bytes * 2 + (2 << 30),
        ..Limits::default()
    };
    let small = bytes / 100 / SMALL_FILES;
    let big_files = (gb * 4).max(4);
    let big = (bytes - small * SMALL_FILES) / big_files;
    let node = LocalNode::open(config(sb, false)).await?;
    // Every node is torn down, failed or not (teardown removes what the node set up).
    let made = async {
        let img = load_image(&node, &args.image).await?;
        let src = spec(&img.id, repo, limits, &format!("{:08x}", 0xb0_0000 + gb))?;
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        eprintln!("{gb} GB: filling a workspace");
        node.create(&src, tx).await?;
        node.start(&src).await?;
        let fill = format!(
            "set -e; mkdir -p /root/small /root/big; i=0; while [ $i -lt {SMALL_FILES} ]; do \
             head -c {small} /dev/urandom > /root/small/f$i; i=$((i + 1)); done; i=0; \
             while [ $i -lt {big_files} ]; do head -c {big} /dev/urandom > /root/big/f$i; \
             i=$((i + 1)); done; sync"
        );
        sh(&node, &src, &fill).await?;
        eprintln!("{gb} GB: snapshot");
        let snap = node.snapshot(&src).await?;
        node.stop(&src).await?;
        node.remove(&src).await?;
        anyhow::Ok((img.id, snap.id))
    }
    .await;
    teardown(&node, "bench move").await;
    drop(node);
    let (image, snap) = made?;

    let mut times = Vec::new();
    for eager in [true, false] {
        let node = LocalNode::open(config(sb, eager)).await?;
        let timed = async {
            let id = format!("{:08x}", 0xb1_0000 + gb * 2 + u64::from(eager));
            let dst = spec(&image, repo, limits, &id)?;
            eprintln!("{gb} GB: {} restore", if eager { "eager" } else { "lazy" });
            let t0 = Instant::now();
            node.restore(&dst, &snap).await?;
            node.start(&dst).await?;
            exec_true(&node, &dst).await?;
            let shell = t0.elapsed();
            let mut all = shell;
            if !eager {
                while node.inspect(&dst).await?.hydration.is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                all = t0.elapsed();
            }
            node.remove(&dst).await?;
            anyhow::Ok((shell, all))
        }
        .await;
        teardown(&node, "bench move").await;
        times.push(timed?);
    }
    // The store goes with the size's data, so the next size starts from an empty disk.
    let store = sb.cfg.data_dir.join("snapshots");
    std::fs::remove_dir_all(&store).with_context(|| format!("remove {}", store.display()))?;
    Ok(Row {
        gb,
        files: SMALL_FILES + big_files,
        eager: times[0].0,
        lazy: times[1].0,
        hydrated: times[1].1,
    })
}

/// A workspace `id` (hex) of the bench repository; slot 1 (one runs at a time per node).
fn spec(image: &str, repo: &std::path::Path, limits: Limits, id: &str) -> Result<WorkspaceSpec> {
    Ok(WorkspaceSpec {
        id: WorkspaceId::new(id)?,
        name: id.into(),
        image: image.to_string(),
        source: repo.display().to_string(),
        slot: 1,
        limits,
        egress: Default::default(),
        generation: 0,
    })
}

async fn sh(node: &LocalNode, spec: &WorkspaceSpec, cmd: &str) -> Result<()> {
    let s = node
        .exec(
            spec,
            ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
                ..Default::default()
            },
        )
        .await?;
    let (mut w, mut r) = s.split();
    w.close_stdin().await?;
    let mut err = Vec::new();
    loop {
        match r.next_event().await? {
            Event::Stderr(b) => err.extend(b),
            Event::Exit(0) => return Ok(()),
            Event::Exit(c) => bail!("{cmd} exited {c}: {}", String::from_utf8_lossy(&err)),
            Event::Stdout(_) => {}
        }
    }
}
