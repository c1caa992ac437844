//! The node's disk reserve: a host filesystem filling up must never cost a workspace its
//! files (its btrfs would get write errors from the loop device and go read-only).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hearth_node::{NodeApi, NodeError};

/// A small ext4 filesystem standing in for the node's disk; unmounted and deleted on drop.
struct HostFs {
    /// Holds the image; removed after the unmount in `drop`.
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl HostFs {
    fn new(size: u64) -> HostFs {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let img = dir.path().join("host.img");
        let mnt = dir.path().join("host");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        HostFs { _dir: dir, mnt }
    }
}

impl Drop for HostFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

fn free(p: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    st.blocks_available() * st.fragment_size()
}

const MIB: u64 = 1 << 20;

/// `RESERVE_TEST_CONTROL=1` runs it with the guard off, to show what it prevents: the
/// writer fills the host and its workspace's filesystem goes read-only mid-write.
#[tokio::test(flavor = "multi_thread")]
async fn a_filling_host_freezes_the_writer_and_loses_nothing() {
    let host = HostFs::new(4 << 30);
    let reserve = 512 * MIB;
    let data = host.mnt.join("data");
    let mut e = common::env_config(std::env::var("HEARTH_RUNTIME").ok(), |c| {
        c.data_dir = data.clone();
        c.disk_reserve = Some(
            std::env::var("RESERVE_TEST_CONTROL")
                .map(|_| 0)
                .unwrap_or(reserve),
        );
    })
    .await;
    let ws = common::busybox_workspaces(
        &mut e,
        &[("d15c0001", "filler", 1), ("d15c0003", "idle", 3)],
    )
    .await;
    let spec = ws[0].0.clone();
    let idle = ws[1].0.clone();
    // Everything the idle one wrote (its clone) on disk now: from here on it grows not.
    assert_eq!(common::run(&e.node, &idle, "sync").await.0, 0);
    // Its disk (20 GiB, sparse) is far larger than the host: the overcommit this is about.
    // Ballast leaves room for ~1 GiB of writes above the reserve; the writer wants 512 MiB
    // more than the host has, so without the guard the host would fill.
    let ballast = host.mnt.join("ballast");
    let f = free(&host.mnt);
    let ballast_len = f - reserve - 1024 * MIB;
    let st = Command::new("fallocate")
        .args(["-l", &ballast_len.to_string()])
        .arg(&ballast)
        .status()
        .unwrap();
    assert!(st.success());
    let want_mib = (free(&host.mnt) + 512 * MIB) / MIB;
    let writer = {
        let node = e.node.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            common::run(
                &node,
                &spec,
                // head, not dd: a freeze interrupts reads of /dev/zero (a short read, as
                // any signal would), which dd writes out as a partial block.
                &format!(
                    "head -c {} /dev/zero > /workspace/big && sync && echo written",
                    want_mib * MIB
                ),
            )
            .await
        })
    };

    // The guard freezes the writer before the host fills.
    let deadline = Instant::now() + Duration::from_secs(120);
    let paused = loop {
        let d = e.node.inspect(&spec).await.unwrap();
        if let Some(p) = d.paused {
            break p;
        }
        assert!(
            !writer.is_finished(),
            "writer ended unfrozen: {:?}",
            writer.await
        );
        assert!(
            Instant::now() < deadline,
            "never frozen; free {}",
            free(&host.mnt)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(paused.contains("reserve"), "{paused}");
    let st = e.node.status(&spec).await.unwrap();
    assert_eq!(
        st.paused.as_deref(),
        Some(paused.as_str()),
        "status says why too"
    );
    // Give writeback time to land: the host keeps room. What still lands after the freeze
    // is bounded by the disk's dirty limit plus one check interval of writes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let low = free(&host.mnt);
    assert!(
        low > reserve - hearth_disk::DIRTY_MAX - 128 * MIB,
        "host too full while frozen: {low}"
    );
    // Only the writer is frozen; a workspace that does not grow goes on, and can be
    // stopped and started (that takes no space) while the node is under its reserve.
    let d = e.node.inspect(&idle).await.unwrap();
    assert!(d.paused.is_none(), "idle workspace frozen: {:?}", d.paused);
    assert_eq!(common::run(&e.node, &idle, "echo hi").await.1, "hi\n");
    e.node.stop(&idle).await.unwrap();
    // (Not exec'd into afterwards: anything the new start writes would grow its disk,
    // and then the guard rightly freezes it too.)
    let st = e.node.start(&idle).await.unwrap();
    assert_eq!(st.state, hearth_node::RunState::Running);
    assert!(
        !writer.is_finished(),
        "a frozen writer made progress to the end"
    );
    // Work that needs space is refused while under the reserve, with a clear reason.
    let mut other = spec.clone();
    other.id = hearth_node::WorkspaceId::new("d15c0002").unwrap();
    other.name = "refused".into();
    other.slot = 2;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    match e.node.create(&other, tx).await {
        Err(NodeError::Conflict(m)) => assert!(m.contains("reserve"), "{m}"),
        r => panic!("create under the reserve: {r:?}"),
    }
    assert!(!data.join("workspaces/d15c0002").exists());
    match e.node.snapshot(&spec).await {
        Err(NodeError::Conflict(m)) => assert!(m.contains("local store"), "{m}"),
        r => panic!("local snapshot under the reserve: {r:?}"),
    }

    // Space comes back: the writer resumes and finishes; every byte is there.
    std::fs::remove_file(&ballast).unwrap();
    let (code, out, err) = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("writer resumes")
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("written"), "{out}");
    assert!(e.node.inspect(&spec).await.unwrap().paused.is_none());
    let (code, out, _) = common::run(
        &e.node,
        &spec,
        "wc -c < /workspace/big && echo more > /workspace/after && cat /workspace/after",
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!("{}\nmore\n", want_mib * MIB),
        "filesystem intact"
    );
    assert_eq!(common::run(&e.node, &spec, "rm /workspace/big").await.0, 0);
    e.node
        .snapshot(&spec)
        .await
        .expect("snapshot once there is room");
}
