//! `RemoteNode` against `serve` over a loopback TCP connection, with a real `LocalNode`
//! and real containers behind it.

#[path = "../../hearth-node/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use hearth_link::{Limits, RemoteNode};
use hearth_node::{ErrorKind, ExecRequest, NodeApi, RunState, WorkspaceId, WorkspaceSpec};
use hearth_proto::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A connected pair: the node side serves `node` in a task of its own (aborting it is
/// the node process dying), the server side is a `RemoteNode`.
async fn link(
    node: Arc<dyn NodeApi>,
    scratch: &std::path::Path,
) -> (RemoteNode, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let limits = Limits::new(scratch);
    let node_side = tokio::spawn({
        let limits = limits.clone();
        async move {
            let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = hearth_link::serve(sock, node, limits).await;
        }
    });
    let (sock, _) = l.accept().await.unwrap();
    let remote = RemoteNode::handshake("n1", sock, limits).await.unwrap();
    (remote, node_side)
}

async fn run(
    node: &dyn NodeApi,
    spec: &WorkspaceSpec,
    cmd: &str,
    stdin: &[u8],
) -> (i32, Option<i32>, String, String) {
    let s = node
        .exec(
            spec,
            ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let (mut w, mut r) = s.split();
    w.write_stdin(stdin).await.unwrap();
    w.close_stdin().await.unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match r.next_event().await.unwrap() {
            Event::Stdout(b) => out.extend(b),
            Event::Stderr(b) => err.extend(b),
            Event::Exit(c) => {
                return (
                    c,
                    r.exit_signal(),
                    String::from_utf8_lossy(&out).into(),
                    String::from_utf8_lossy(&err).into(),
                )
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_lives_its_life_through_a_remote_node() {
    let mut e = common::env().await;
    let scratch = e.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let (remote, node_side) = link(Arc::new(e.node.clone()), &scratch).await;

    // The image archive travels to the node (the server's path means nothing there).
    let tar = common::test_image("HEARTH_TEST_BUSYBOX", "busybox");
    remote.check_load(&tar, Some("bb")).await.unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let img = remote
        .load_image(tar.clone(), Some("bb".into()), tx)
        .await
        .unwrap();
    assert_eq!(e.node.resolve_image("bb").await.unwrap().id, img.id);
    let dir = remote.check_load(e.dir.path(), None).await.unwrap_err();
    assert_eq!(dir.kind(), ErrorKind::Invalid, "{dir}");
    assert!(
        std::fs::read_dir(&scratch).unwrap().next().is_none(),
        "the upload is left in scratch"
    );

    // Errors keep their kind and message.
    let missing = remote.resolve_image("no-such-image").await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");
    assert!(missing.to_string().contains("no-such-image"), "{missing}");

    let repo = common::git_repo(e.dir.path());
    let spec = WorkspaceSpec {
        id: WorkspaceId::new("a1b2c3d4e5f6").unwrap(),
        name: "remote".into(),
        image: img.id.clone(),
        source: repo.display().to_string(),
        slot: 3,
        limits: hearth_node::Limits::default(),
        egress: Default::default(),
        generation: 1,
    };
    e.specs.push(spec.clone());
    let (tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    remote.create(&spec, tx).await.unwrap();
    let mut lines = Vec::new();
    while let Ok(l) = progress.try_recv() {
        lines.push(l);
    }
    assert!(!lines.is_empty(), "create sent no progress");
    let st = remote.start(&spec).await.unwrap();
    assert_eq!(st.state, RunState::Running);
    assert_eq!(
        remote.status(&spec).await.unwrap(),
        e.node.status(&spec).await.unwrap()
    );
    let cap = remote.capacity().await.unwrap();
    let local = e.node.capacity().await.unwrap();
    assert_eq!((cap.cpus, cap.workspaces, cap.running), (local.cpus, 1, 1));

    // Exec: output of both streams, stdin, exit code, and a signal's death.
    let (code, sig, out, err) = run(
        &remote,
        &spec,
        "cat; echo oops >&2; exit 7",
        b"from stdin\n",
    )
    .await;
    assert_eq!(
        (code, sig, out.as_str(), err.as_str()),
        (7, None, "from stdin\n", "oops\n")
    );
    let (code, sig, _, _) = run(&remote, &spec, "kill -TERM $$", b"").await;
    assert_eq!((code, sig), (128 + 15, Some(15)));
    // A megabyte each way crosses intact.
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let (code, _, out, _) = run(&remote, &spec, "wc -c", &big).await;
    assert_eq!((code, out.trim()), (0, "1048576"));

    // A port inside the workspace, reached through the node's connect.
    let (code, ..) = run(
        &remote,
        &spec,
        "mkdir -p /tmp/www && echo served-inside > /tmp/www/index.html && httpd -p 8080 -h /tmp/www",
        b"",
    )
    .await;
    assert_eq!(code, 0);
    let mut ports = Vec::new();
    for _ in 0..50 {
        ports = remote.listening_ports(&spec).await.unwrap();
        if ports.iter().any(|p| p.port == 8080) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ports.iter().any(|p| p.port == 8080), "{ports:?}");
    let mut conn = remote
        .connect(&spec, "127.0.0.1:8080".parse().unwrap())
        .await
        .unwrap();
    conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains("served-inside"),
        "{answer}"
    );
    let refused = remote
        .connect(&spec, "127.0.0.1:9".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict, "{refused}");

    // Data answers: the console log, an exported image as a file.
    remote
        .console_note(&spec, "note over the wire")
        .await
        .unwrap();
    let log = remote.logs(&spec).await.unwrap();
    assert_eq!(log, e.node.logs(&spec).await.unwrap());
    assert!(String::from_utf8_lossy(&log).contains("note over the wire"));
    // Following: the tail and a cursor, then only what was written after it.
    let (tail, cursor) = remote.logs_since(&spec, None).await.unwrap();
    assert_eq!(tail, log);
    remote.console_note(&spec, "followed").await.unwrap();
    let (more, after) = remote.logs_since(&spec, Some(cursor)).await.unwrap();
    let more = String::from_utf8_lossy(&more).into_owned();
    assert!(
        more.starts_with("[hearth ") && more.ends_with("] followed\n"),
        "{more:?}"
    );
    assert!(after.offset > cursor.offset);
    assert!(remote
        .logs_since(&spec, Some(after))
        .await
        .unwrap()
        .0
        .is_empty());
    let mut exported = remote.export_image(&img.id, "bb:export").await.unwrap();
    let mut direct = e.node.export_image(&img.id, "bb:export").await.unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    std::io::Read::read_to_end(&mut exported, &mut a).unwrap();
    std::io::Read::read_to_end(&mut direct, &mut b).unwrap();
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len());

    let details = remote.inspect(&spec).await.unwrap();
    assert_eq!(details.state, RunState::Running);
    let statuses = remote.statuses(std::slice::from_ref(&spec)).await;
    assert_eq!(statuses[0].as_ref().unwrap().state, RunState::Running);

    remote.stop(&spec).await.unwrap();
    assert_eq!(remote.status(&spec).await.unwrap().state, RunState::Stopped);
    remote.start(&spec).await.unwrap();
    let (code, _, out, _) = run(&remote, &spec, "cat /workspace/myrepo/README", b"").await;
    assert_eq!((code, out.as_str()), (0, "hello from git\n"));

    // The node dies with a session open: the session fails, later calls fail at once as
    // unavailable, and nothing hangs.
    let s = remote
        .exec(
            &spec,
            ExecRequest {
                argv: vec!["sleep".into(), "600".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (_w, mut r) = s.split();
    node_side.abort();
    let _ = node_side.await;
    assert!(
        r.next_event().await.is_err(),
        "a session outlived its connection"
    );
    remote.closed().await;
    let gone = remote.status(&spec).await.unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::Unavailable, "{gone}");
    assert!(
        gone.to_string().contains("node n1 is unavailable"),
        "{gone}"
    );

    // A new connection serves the same node: remove goes through it.
    let (remote, _node_side) = link(Arc::new(e.node.clone()), &scratch).await;
    remote.remove(&spec).await.unwrap();
    assert_eq!(remote.status(&spec).await.unwrap().state, RunState::Missing);
}
