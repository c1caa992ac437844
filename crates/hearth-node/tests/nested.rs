//! Containers inside a workspace: podman and dockerd from the `debian-containers` image
//! (`scripts/make-image.sh debian-containers`) run containers as root inside, and root in
//! those containers is still the workspace's unprivileged base uid on the host.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{env, git_repo, run, run_in, test_image};
use hearth_node::{Limits, LocalNode, NodeApi, WorkspaceSpec};

/// Runs `cmd` inside and returns its stdout, failing the test with everything on error.
async fn ok(node: &LocalNode, ws: &WorkspaceSpec, what: &str, cmd: &str) -> String {
    let (code, out, err) = run(node, ws, cmd).await;
    assert_eq!(code, 0, "{what}: exit {code}\nstdout: {out}\nstderr: {err}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_and_dockerd_run_containers_inside() {
    let tar = test_image("HEARTH_TEST_DEBIAN_CONTAINERS", "debian-containers");
    let mut e = env().await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let img = e.node.load_image(tar, None, tx.clone()).await.unwrap();
    let ws = WorkspaceSpec {
        id: hearth_node::WorkspaceId::new("c1cccccccccc").unwrap(),
        name: "containers".into(),
        image: img.id.clone(),
        source: git_repo(e.dir.path()).display().to_string(),
        slot: 31,
        limits: Limits {
            memory_bytes: 2 << 30,
            ..Limits::default()
        },
        egress: Default::default(),
        generation: 0,
    };
    e.specs.push(ws.clone());
    e.node.create(&ws, tx.clone()).await.unwrap();
    e.node.start(&ws).await.unwrap();
    let node = e.node.clone();
    let base = ws.uid_base();
    let upper = e
        .cfg
        .data_dir
        .join("workspaces")
        .join(&ws.id)
        .join("disk/data/upper");
    // The workspace's own map, as root in a container that shares its user namespace sees it.
    let ws_map = format!("0 {base} 65536");

    // No registry here: the nested image is a busybox root filesystem from a file.
    let rootfs = hearth_image::testutil::busybox_rootfs_layer().unwrap();
    let (code, _, err) = run_in(&node, &ws, "cat > /root/busybox-rootfs.tar", &rootfs).await;
    assert_eq!(code, 0, "copy busybox rootfs: {err}");
    ok(&node, &ws, "mkdir", "mkdir -p /root/shared").await;

    // --- podman, with its defaults plus the image's containers.conf ---
    ok(
        &node,
        &ws,
        "podman import",
        "podman import -q /root/busybox-rootfs.tar localhost/busybox",
    )
    .await;
    let out = ok(
        &node,
        &ws,
        "podman run",
        "podman run --rm -v /root/shared:/shared localhost/busybox \
         sh -c 'echo hi from podman; cat /proc/self/uid_map; touch /shared/podman-made; \
         ip -o -4 addr show tap0'",
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"hi from podman"), "{out}");
    assert_eq!(squash(lines.get(1).unwrap_or(&"")), ws_map, "{out}");
    // Its own network namespace with slirp4netns behind /dev/net/tun.
    assert!(
        out.contains("10.0.2.100/24"),
        "no slirp4netns address: {out}"
    );
    let made = std::fs::metadata(upper.join("root/shared/podman-made")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (base, base),
        "podman's root on the host"
    );

    // --- dockerd, started by the image's hearth-dockerd ---
    ok(
        &node,
        &ws,
        "start dockerd",
        "setsid hearth-dockerd >/var/log/dockerd.log 2>&1 </dev/null &",
    )
    .await;
    ok(
        &node,
        &ws,
        "dockerd ready",
        "for i in $(seq 150); do docker info >/dev/null 2>&1 && exit 0; sleep 0.2; done; \
         tail -30 /var/log/dockerd.log; exit 1",
    )
    .await;
    ok(
        &node,
        &ws,
        "docker import",
        "docker import /root/busybox-rootfs.tar busybox",
    )
    .await;
    let out = ok(
        &node,
        &ws,
        "docker run",
        "docker run --rm -v /root/shared:/shared busybox \
         sh -c 'echo hi from docker; cat /proc/self/uid_map; touch /shared/docker-made; \
         ip -o -4 addr show eth0'",
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"hi from docker"), "{out}");
    assert_eq!(squash(lines.get(1).unwrap_or(&"")), ws_map, "{out}");
    // Docker's default bridge network works in dockerd's own network namespace.
    assert!(out.contains("inet 172.17."), "not on docker0: {out}");
    let made = std::fs::metadata(upper.join("root/shared/docker-made")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (base, base),
        "docker's root on the host"
    );

    // Nested images and containers are ordinary files of the writable layer: they are
    // snapshotted and survive a stop and start.
    let snap = e
        .node
        .snapshot(&ws)
        .await
        .expect("snapshot with nested storage");
    eprintln!("snapshot of the workspace with nested storage: {snap:?}");
    e.node.stop(&ws).await.unwrap();
    e.node.start(&ws).await.unwrap();
    let out = ok(
        &node,
        &ws,
        "podman run after restart",
        "podman run --rm localhost/busybox echo podman again",
    )
    .await;
    assert_eq!(out, "podman again\n");
    let out = ok(
        &node,
        &ws,
        "docker run after restart",
        "setsid hearth-dockerd >/var/log/dockerd.log 2>&1 </dev/null & \
         for i in $(seq 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done; \
         docker run --rm busybox echo docker again",
    )
    .await;
    assert_eq!(out, "docker again\n");
}

/// `/proc/self/uid_map` columns with single spaces.
fn squash(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}
