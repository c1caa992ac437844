//! Reaching ports inside a workspace from the host: `NodeApi::connect` and `listen` make
//! their sockets in the workspace's netns, so its loopback-only services are reachable.

use std::net::SocketAddr;
use std::time::Duration;

use hearth_node::{NodeApi, NodeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{busybox_workspaces, env, run};

#[tokio::test(flavor = "multi_thread")]
async fn connect_and_listen_inside_the_workspace_netns() {
    let mut e = env().await;
    let ws = busybox_workspaces(&mut e, &[("cccccccccc01", "ports", 0)]).await;
    let spec = ws[0].0.clone();
    let ip = ws[0].1.ip.expect("running workspace has an address");

    // A server bound to the workspace's loopback only: unreachable from the host's own
    // network, reachable through the node.
    let (code, _, err) = run(
        &e.node,
        &spec,
        "mkdir -p /tmp/www && echo pong > /tmp/www/index.html && httpd -p 127.0.0.1:9001 -h /tmp/www",
    )
    .await;
    assert_eq!(code, 0, "httpd: {err}");
    let inside: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let mut stream = e.node.connect(&spec, inside).await.expect("connect inside");
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.") && reply.ends_with("pong\n"),
        "{reply}"
    );
    let direct = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((ip, 9001)),
    )
    .await;
    assert!(
        !matches!(direct, Ok(Ok(_))),
        "a loopback-only service answered on the workspace address"
    );

    // Nothing listens: a Connect error carrying the refusal.
    match e
        .node
        .connect(&spec, "127.0.0.1:9002".parse().unwrap())
        .await
    {
        Err(NodeError::Connect { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected a refused connect, got {other:?}"),
    }

    // A listener inside: a client in the workspace reaches it on its loopback.
    let listener = e
        .node
        .listen(&spec, "127.0.0.1:9003".parse().unwrap())
        .await
        .expect("listen inside");
    let client = tokio::spawn({
        let (node, spec) = (e.node.clone(), spec.clone());
        async move { run(&node, &spec, "echo hello-from-inside | nc 127.0.0.1 9003").await }
    });
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("accept in time")
        .unwrap();
    let mut got = [0u8; 18];
    conn.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello-from-inside\n");
    drop(conn);
    assert_eq!(client.await.unwrap().0, 0);
    drop(listener);

    // A stopped workspace has no ports to reach.
    e.node.stop(&spec).await.unwrap();
    match e.node.connect(&spec, inside).await {
        Err(e @ NodeError::Conflict(_)) => assert!(e.to_string().contains("not running"), "{e}"),
        other => panic!("expected not running, got {other:?}"),
    }
}
