//! The node on real containers: crun, idmapped overlay roots, netns, cgroups.

use hearth_node::{Limits, NodeApi, RunState, WorkspaceSpec};

mod common;

use common::{busybox_workspaces, env, env_with, git_repo, host_ipv4_addrs, run, test_image, Env};

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_on_real_containers() {
    lifecycle(env().await).await;
}

/// runc is the fallback where crun is missing or refuses the host; same behaviour.
#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_with_runc() {
    lifecycle(env_with(Some("runc".into())).await).await;
}

async fn lifecycle(mut e: Env) {
    let ws = busybox_workspaces(
        &mut e,
        &[("aaaaaaaaaaa1", "a", 0), ("bbbbbbbbbbb2", "b", 1)],
    )
    .await;
    for (_, st) in &ws {
        assert_eq!(st.state, RunState::Running);
    }
    let (a, b) = (ws[0].0.clone(), ws[1].0.clone());
    let (code, out, _) = run(
        &e.node,
        &a,
        "id -u; cat /proc/self/uid_map; cat /workspace/myrepo/README",
    )
    .await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0");
    let map_a: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map_a, ["0", &a.uid_base().to_string(), "65536"]);
    assert_eq!(lines[2], "hello from git");
    let (_, out_b, _) = run(&e.node, &b, "cat /proc/self/uid_map").await;
    assert_ne!(
        out_b.split_whitespace().nth(1),
        Some(map_a[1]),
        "distinct host ranges"
    );

    let (code, _, _) = run(&e.node, &a, "echo x > /root/r; mkdir -p /usr/local/bin; echo y > /usr/local/bin/tool; echo z >> /workspace/myrepo/README; exit 3").await;
    assert_eq!(code, 3);
    e.node.stop(&a).await.unwrap();
    assert_eq!(e.node.status(&a).await.unwrap().state, RunState::Stopped);
    e.node.start(&a).await.unwrap();
    let (code, out, _) = run(
        &e.node,
        &a,
        "cat /root/r /usr/local/bin/tool; tail -1 /workspace/myrepo/README",
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(out, "x\ny\nz\n");
    // b cannot see a's processes or files
    let (_, out, _) = run(&e.node, &b, "ls /root; ps -o pid,args | wc -l").await;
    assert!(!out.contains('r'), "b sees a's /root: {out}");
}

/// A Debian (glibc, debootstrap minbase) image loaded from a docker-archive: the agent
/// runs there too, and installed software under /usr/local and /etc survives a restart.
#[tokio::test(flavor = "multi_thread")]
async fn debian_image_from_docker_archive() {
    let tar = test_image("HEARTH_TEST_DEBIAN", "debian");
    let mut e = env().await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let img = e.node.load_image(tar, None, tx.clone()).await.unwrap();
    assert!(
        img.names.iter().any(|n| n.starts_with("debian")),
        "{:?}",
        img.names
    );
    let repo = git_repo(e.dir.path());
    let spec = WorkspaceSpec {
        id: hearth_node::WorkspaceId::new("dddddddddd01").unwrap(),
        name: "deb".into(),
        image: img.id.clone(),
        source: repo.display().to_string(),
        slot: 3,
        limits: Limits::default(),
        egress: Default::default(),
        generation: 0,
    };
    e.specs = vec![spec.clone()];
    e.node.create(&spec, tx).await.unwrap();
    e.node.start(&spec).await.unwrap();
    let (code, out, err) = run(
        &e.node,
        &spec,
        "cat /etc/debian_version && id -un && git -C /workspace/myrepo log --oneline | wc -l \
         && printf '#!/bin/sh\\necho tool\\n' > /usr/local/bin/tool && chmod +x /usr/local/bin/tool \
         && echo 'export X=1' >> /etc/profile",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("12"), "{out}");
    assert_eq!(lines[1], "root");
    assert_eq!(lines[2], "1");
    e.node.stop(&spec).await.unwrap();
    e.node.start(&spec).await.unwrap();
    let (code, out, _) = run(&e.node, &spec, "tool; tail -1 /etc/profile").await;
    assert_eq!(code, 0);
    assert_eq!(out, "tool\nexport X=1\n");
}

/// Root in one workspace attacks: the host's services on every host address, the other
/// workspace's processes, files and listener. Each attempt must fail while a control
/// (the host reaching the workspace) succeeds, so the test can tell a block from a
/// broken network.
#[tokio::test(flavor = "multi_thread")]
async fn workspaces_are_isolated_from_host_and_each_other() {
    let mut e = env().await;
    let ws = busybox_workspaces(
        &mut e,
        &[("aaaaaaaaaa51", "a", 5), ("bbbbbbbbbb52", "b", 6)],
    )
    .await;
    let (a, b) = (ws[0].0.clone(), ws[1].0.clone());
    let ips: Vec<_> = ws.iter().map(|(_, st)| st.ip.unwrap()).collect();

    // Host service on all addresses.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut targets = host_ipv4_addrs();
    targets.push("127.0.0.1".into());
    assert!(targets.len() >= 2, "{targets:?}");
    // Refused the expected way: loopback inside is the workspace's own, the node's
    // addresses drop new connections from the bridge (busybox nc's words).
    for t in &targets {
        let (code, _, err) = run(&e.node, &a, &format!("nc -w 2 {t} {port} </dev/null")).await;
        assert_ne!(code, 0, "workspace reached host service at {t}:{port}");
        // Another test's bridge may go away meanwhile: then nothing routes there.
        let want: &[&str] = if t.starts_with("127.") {
            &["Connection refused"]
        } else {
            &["nc: timed out", "No route to host"]
        };
        assert!(
            want.iter().any(|w| err.contains(w)),
            "{t}:{port}: not {want:?}: {err}"
        );
    }

    // b listens; the host can reach it (control), a cannot.
    let (code, _, _) = run(
        &e.node,
        &b,
        "setsid nc -ll -p 7777 -e echo hi >/dev/null 2>&1 & sleep 0.3",
    )
    .await;
    assert_eq!(code, 0);
    let mut ok = false;
    // Generous: on a loaded machine the listener can take a while to come up.
    for _ in 0..100 {
        if std::net::TcpStream::connect((ips[1], 7777)).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if !ok {
        let br = &e.cfg.bridge;
        for cmd in [
            format!("nft list table bridge hearth-{br}"),
            format!("ip -n {br}-{} addr", b.id),
            format!("ip -n {br}-{} route", b.id),
            "ip -br link".to_string(),
            format!("ip netns exec {br}-{} cat /proc/net/tcp", b.id),
        ] {
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .output()
                .unwrap();
            eprintln!(
                "$ {cmd}\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let (_, o, _) = run(&e.node, &b, "ps -o args; netstat -ltn").await;
        eprintln!("b: {o}");
    }
    assert!(ok, "control: host cannot reach b's listener at {}", ips[1]);
    let (code, _, err) = run(&e.node, &a, &format!("nc -w 2 {} 7777 </dev/null", ips[1])).await;
    assert_ne!(code, 0, "a reached b's listener");
    assert!(err.contains("nc: timed out"), "a to b not dropped: {err}");

    // Processes and files.
    let (code, _, _) = run(
        &e.node,
        &a,
        "setsid sleep 4242 >/dev/null 2>&1 & echo secret > /root/a-secret",
    )
    .await;
    assert_eq!(code, 0);
    let (_, out, _) = run(&e.node, &b, "ps -o args").await;
    assert!(!out.contains("4242"), "b sees a's process: {out}");
    let (_, out, _) = run(
        &e.node,
        &b,
        "ls /root; find / -xdev -name 'a-sec*' 2>/dev/null",
    )
    .await;
    assert!(!out.contains("a-secret"), "b sees a's file: {out}");
    let (_, out, _) = run(&e.node, &a, "find / -xdev -name 'a-sec*' 2>/dev/null").await;
    assert!(
        out.contains("/root/a-secret"),
        "control: a finds its own file: {out}"
    );
    let (_, out, _) = run(&e.node, &a, "ps -o args").await;
    assert!(
        out.contains("sleep 4242"),
        "control: a sees its own process: {out}"
    );
    drop(listener);
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_from_before_disks_moves_onto_a_disk() {
    let mut e = env().await;
    let ws = busybox_workspaces(&mut e, &[("d1dddddddddd", "legacy", 41)]).await;
    let spec = ws[0].0.clone();
    let (code, _, err) = run(
        &e.node,
        &spec,
        "mkdir -p /root/d && echo kept > /root/d/f && ln /root/d/f /root/hard && rm /bin/ls && sync",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    e.node.stop(&spec).await.unwrap();
    // Rebuild the old layout: the upper dir directly in the workspace dir.
    let dir = e.cfg.data_dir.join("workspaces").join(&spec.id);
    let sh = |cmd: &str| {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
    };
    sh("cp -a disk/data/upper upper && mkdir work && umount disk && rm -r disk disk.img");
    assert_eq!(
        e.node.status(&spec).await.unwrap().state,
        RunState::Stopped,
        "old-layout data is still data"
    );
    e.node.start(&spec).await.unwrap();
    let (code, out, err) = run(
        &e.node,
        &spec,
        "cat /root/d/f; stat -c %h /root/hard; ls /bin/ls 2>&1; df -k / | tail -1",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("kept\n2\n"), "{out}");
    assert!(out.contains("No such file"), "whiteout lost: {out}");
    assert!(dir.join("disk.img").exists());
    assert!(
        dir.join("upper.pre-disk/root/d/f").exists(),
        "old copy kept"
    );
    assert!(!dir.join("upper").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_snapshot_store_is_kept_aside_and_replaced() {
    let mut e = env().await;
    let ws = busybox_workspaces(&mut e, &[("f1ffffffffff", "oldstore", 42)]).await;
    let spec = ws[0].0.clone();
    // What an earlier Hearth left: a store whose objects use envelope version 1.
    let store = e.cfg.data_dir.join("snapshots");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("config"), b"HSNP\x01\x05old config").unwrap();
    let snap = e
        .node
        .snapshot(&spec)
        .await
        .expect("snapshot into a new store");
    assert_eq!(e.node.snapshots(&spec).await.unwrap()[0].id, snap.id);
    let aside = e.cfg.data_dir.join("snapshots.format1.1");
    assert_eq!(
        std::fs::read(aside.join("config")).unwrap(),
        b"HSNP\x01\x05old config",
        "the old store is kept, untouched"
    );
}

/// A clone is of the branch asked for, reset to the commit asked for (the one the control
/// plane read the devcontainer.json from), not to the branch's tip; the devcontainer.json
/// of a branch is read from that branch's tip.
#[tokio::test(flavor = "multi_thread")]
async fn clone_is_at_the_branch_and_commit_asked_for() {
    let mut e = env().await;
    let repo = git_repo(e.dir.path());
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.email=t@t", "-c", "user.name=t"])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["checkout", "-qb", "feature"]);
    std::fs::write(repo.join("v"), "1\n").unwrap();
    std::fs::write(repo.join(".devcontainer.json"), r#"{"image": "busybox"}"#).unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-qm", "one"]);
    let one = git(&["rev-parse", "HEAD"]);
    std::fs::write(repo.join("v"), "2\n").unwrap();
    git(&["commit", "-qam", "two"]);
    let two = git(&["rev-parse", "HEAD"]);
    git(&["checkout", "-q", "-"]);

    let source = repo.display().to_string();
    let found = e
        .node
        .devcontainer_config(&source, Some("feature"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.path.as_str(), found.commit.as_str()),
        (".devcontainer.json", two.as_str())
    );
    assert!(e
        .node
        .devcontainer_config(&source, None, None)
        .await
        .unwrap()
        .is_none());
    let bad = e
        .node
        .devcontainer_config(&source, Some("--upload-pack=touch /tmp/x"), None)
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("invalid branch name"), "{bad}");

    let img = common::busybox_image(&e).await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = WorkspaceSpec {
        id: hearth_node::WorkspaceId::new("cccccccccc61").unwrap(),
        name: "pinned".into(),
        image: img.id.clone(),
        source: source.clone(),
        slot: 11,
        limits: Limits::default(),
        egress: Default::default(),
        generation: 0,
    };
    e.specs.push(spec.clone());

    // A commit the branch does not have: refused, nothing left behind.
    let missing = hearth_node::Revision {
        branch: Some("feature".into()),
        commit: Some("0".repeat(40)),
    };
    let err = e
        .node
        .create_at(&spec, &missing, tx.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no longer has commit"), "{err}");
    assert_eq!(e.node.status(&spec).await.unwrap().state, RunState::Missing);

    let rev = hearth_node::Revision {
        branch: Some("feature".into()),
        commit: Some(one.clone()),
    };
    e.node.create_at(&spec, &rev, tx).await.unwrap();
    e.node.start(&spec).await.unwrap();
    let (code, out, err) = run(&e.node, &spec, "cd /workspace/myrepo && cat v .git/HEAD").await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["1", "ref: refs/heads/feature"], "{out}");
    let (code, out, _) = run(
        &e.node,
        &spec,
        "cat /workspace/myrepo/.git/refs/heads/feature",
    )
    .await;
    assert_eq!((code, out.trim()), (0, one.as_str()));
}
