//! Lazy restores on real containers: a restored workspace starts with its large files as
//! placeholders, and nothing in it ever reads one (read, exec/mmap, write, truncate), a
//! snapshot taken meanwhile holds the full data, and a failing fetch is reported and
//! retried.

mod common;

use common::{busybox_workspaces, env, run};
use hearth_node::{NodeApi, WorkspaceId, WorkspaceSpec};

/// Many small files (restored eagerly), large ones (placeholders, incompressible), a sparse
/// one, and a setuid copy of busybox (run from a placeholder: exec maps it).
const WRITE: &str = "set -e; mkdir -p /root/many /root/big /root/bin; i=0; \
    while [ $i -lt 150 ]; do head -c $((i * 977 % 30000 + 1)) /dev/urandom > /root/many/f$i; \
    i=$((i + 1)); done; \
    head -c 24000000 /dev/urandom > /root/big/a; head -c 9000000 /dev/urandom > /root/big/b; \
    head -c 3000000 /dev/urandom > /root/big/c; \
    dd if=/dev/zero of=/root/big/sparse bs=1 count=0 seek=5000000 2>/dev/null; \
    printf tail >> /root/big/sparse; cp /bin/busybox /root/bin/busybox; chmod 4755 /root/bin/busybox; \
    touch -d '2020-01-02 03:04:05' /root/big/a; sync";

/// Contents and metadata of everything WRITE made, except big/b and big/c (changed below).
const DIGEST: &str =
    "cd /root && find many big/a big/sparse bin -type f | sort | xargs sha256sum; \
    stat -c '%n %a %s %Y %u' big/a big/sparse bin/busybox";

/// What big/b and big/c hash to after CHANGE.
const EXPECT_CHANGED: &str = "set -e; cp /root/big/b /tmp/b; printf XY | dd of=/tmp/b bs=1 seek=10 \
    conv=notrunc 2>/dev/null; head -c 1000 /root/big/c > /tmp/c; sha256sum /tmp/b /tmp/c | cut -d' ' -f1; \
    rm /tmp/b /tmp/c; sync";
/// A write into one placeholder and a truncate of another, first thing after the start.
const CHANGE: &str =
    "set -e; printf XY | dd of=/root/big/b bs=1 seek=10 conv=notrunc 2>/dev/null; \
    truncate -s 1000 /root/big/c; sha256sum /root/big/b /root/big/c | cut -d' ' -f1";

fn spec_like(src: &WorkspaceSpec, id: &str, name: &str, slot: u32) -> WorkspaceSpec {
    let mut s = src.clone();
    s.id = WorkspaceId::new(id).unwrap();
    s.name = name.into();
    s.slot = slot;
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn restored_workspace_never_sees_a_placeholder() {
    let mut e = env().await;
    let ws = busybox_workspaces(&mut e, &[("aa000001", "hyd-src", 1)]).await;
    let src = ws[0].0.clone();
    let (code, _, err) = run(&e.node, &src, WRITE).await;
    assert_eq!(code, 0, "{err}");
    let (_, digest, _) = run(&e.node, &src, DIGEST).await;
    assert!(
        digest.contains("big/a") && digest.contains("bin/busybox 4755"),
        "{digest}"
    );
    let (code, changed, err) = run(&e.node, &src, EXPECT_CHANGED).await;
    assert_eq!(code, 0, "{err}");
    let snap = e.node.snapshot(&src).await.unwrap();
    e.node.stop(&src).await.unwrap();

    // Restored: the large files are placeholders until the workspace runs.
    let dst = spec_like(&src, "aa000002", "hyd-dst", 2);
    e.specs.push(dst.clone());
    e.node.restore(&dst, &snap.id).await.unwrap();
    let h = e.node.inspect(&dst).await.unwrap().hydration;
    let h = h.expect("a lazy restore reports its hydration");
    assert_eq!(h.snapshot, snap.id);
    assert!(!h.active, "{h:?}");

    e.node.start(&dst).await.unwrap();
    // Exec of a placeholder (the kernel maps it), then writes, then every byte.
    let (code, out, err) = run(&e.node, &dst, "/root/bin/busybox echo ran").await;
    assert_eq!((code, out.trim()), (0, "ran"), "{err}");
    let (code, out, err) = run(&e.node, &dst, CHANGE).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, changed);
    let (_, got, _) = run(&e.node, &dst, DIGEST).await;
    assert_eq!(got, digest);

    // A snapshot now waits for what is left and stores the data, not placeholders.
    let snap2 = e.node.snapshot(&dst).await.unwrap();
    assert!(e.node.inspect(&dst).await.unwrap().hydration.is_none());
    assert_eq!(snap2.size, snap.size - 3_000_000 + 1000);
    let third = spec_like(&src, "aa000003", "hyd-third", 3);
    e.specs.push(third.clone());
    e.node.restore(&third, &snap2.id).await.unwrap();
    e.node.start(&third).await.unwrap();
    let (_, got, _) = run(&e.node, &third, DIGEST).await;
    assert_eq!(got, digest);
    let (_, got, _) = run(
        &e.node,
        &third,
        "sha256sum /root/big/b /root/big/c | cut -d' ' -f1",
    )
    .await;
    assert_eq!(got, changed);
}

/// The largest pack: the incompressible content of the big files.
fn largest_pack(store: &std::path::Path) -> std::path::PathBuf {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    for f in std::fs::read_dir(store.join("packs")).unwrap().flatten() {
        let len = f.metadata().unwrap().len();
        if best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, f.path()));
        }
    }
    best.unwrap().1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_fetch_is_reported_and_retried() {
    let mut e = env().await;
    let ws = busybox_workspaces(&mut e, &[("aa000011", "hyd-fsrc", 1)]).await;
    let src = ws[0].0.clone();
    let (code, _, err) = run(
        &e.node,
        &src,
        "head -c 20000000 /dev/urandom > /root/big && sha256sum /root/big && sync",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (_, want, _) = run(&e.node, &src, "sha256sum /root/big").await;
    let snap = e.node.snapshot(&src).await.unwrap();
    e.node.stop(&src).await.unwrap();

    // The tree restores; the big file's chunks are gone until put back.
    let pack = largest_pack(&e.cfg.data_dir.join("snapshots"));
    let aside = e.dir.path().join("pack-aside");
    let dst = spec_like(&src, "aa000012", "hyd-fdst", 2);
    e.specs.push(dst.clone());
    e.node.restore(&dst, &snap.id).await.unwrap();
    std::fs::rename(&pack, &aside).unwrap();
    e.node.start(&dst).await.unwrap();

    // A reader waits (it is never given the placeholder's zeros) while fetches fail.
    let (code, _, err) = run(
        &e.node,
        &dst,
        "setsid sh -c 'sha256sum /root/big > /root/sum.tmp 2>&1; mv /root/sum.tmp /root/sum' \
         </dev/null >/dev/null 2>&1 &",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let h = loop {
        let h = e.node.inspect(&dst).await.unwrap().hydration.unwrap();
        if h.failures > 0 {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed fetch: {h:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(h.active && h.files_done < h.files_total, "{h:?}");
    let last = h.last_error.unwrap_or_default();
    assert!(last.contains("root/big"), "{last}");
    let (_, ls, _) = run(&e.node, &dst, "ls /root").await;
    assert!(
        !ls.contains("sum\n"),
        "the reader finished on missing data: {ls}"
    );

    std::fs::rename(&aside, &pack).unwrap();
    // The snapshot waits for the retried fill; the reader then gets the real bytes.
    e.node.snapshot(&dst).await.unwrap();
    let (_, got, _) = run(
        &e.node,
        &dst,
        "i=0; while [ ! -e /root/sum ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done; \
         cat /root/sum",
    )
    .await;
    assert_eq!(got, want);
}
