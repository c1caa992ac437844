//! The node's side: answers the control plane's calls on a connection the node dialled,
//! with its own [`NodeApi`] (a `LocalNode`).

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use hearth_node::{NodeApi, NodeError, Progress};
use hearth_proto::client::ExecSession;
use hearth_proto::{AgentMsg, ClientMsg, Event, FrameBuf, Message as _};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::{self, Reader, Sender, ARGS, ERR, OK, PROGRESS};
use crate::call::{Call, WireError, WireMetrics, WithData};
use crate::Limits;

/// Answers calls on `io` until the connection ends (the control plane went away or
/// stopped answering pings). Image archives sent to the node wait in `limits.scratch`
/// (on the node's data filesystem) while they load.
pub async fn serve<I>(io: I, node: Arc<dyn NodeApi>, limits: Limits) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let keepalive = limits.keepalive;
    let limits = Arc::new(limits);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (node, limits) = (node.clone(), limits.clone());
        async move {
            let (tx, body) = body::channel();
            tokio::spawn(answer(node, limits, Reader::new(req.into_body()), tx));
            Ok::<_, Infallible>(hyper::Response::new(body))
        }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive)
        .adaptive_window(true)
        .max_send_buf_size(body::CHUNK * 4)
        .serve_connection(TokioIo::new(io), service)
        .await
}

type In = Reader<Incoming>;

/// Runs one call and writes its answer; the call runs to its end even if the control
/// plane stops listening (a half-done create is worse than a finished one nobody reads).
async fn answer(node: Arc<dyn NodeApi>, limits: Arc<Limits>, mut rd: In, tx: Sender) {
    let call = match rd.head(limits.max_args).await {
        Ok(Some((ARGS, payload))) => match serde_json::from_slice::<Call>(&payload) {
            Ok(c) => c,
            Err(e) => {
                let e = NodeError::Invalid(format!("unknown or malformed call: {e}"));
                let _ = tx.json(ERR, &WireError::from(&e)).await;
                return;
            }
        },
        Ok(_) => {
            let e = NodeError::Invalid("a call must start with its arguments".into());
            let _ = tx.json(ERR, &WireError::from(&e)).await;
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "unreadable call");
            return;
        }
    };
    let method = call.name();
    match run(&*node, &limits, call, &mut rd, &tx).await {
        Ok(Then::Done) => {}
        // The sender moves along: the answer ends when the stream's data does.
        Ok(Then::Connect(sock)) => body::pump(sock, rd, tx).await,
        Ok(Then::Exec(session)) => relay_exec(session, rd, tx).await,
        Err(e) => {
            tracing::debug!(call = method, error = %e, "node call failed");
            let _ = tx.json(ERR, &WireError::from(&e)).await;
        }
    }
}

/// What follows a call's result on its stream.
enum Then {
    Done,
    Connect(tokio::net::TcpStream),
    Exec(ExecSession),
}

async fn ok<T: Serialize>(tx: &Sender, v: &T) -> Result<Then, NodeError> {
    // A closed stream means the caller is gone: nothing left to tell.
    let _ = tx.json(OK, v).await;
    Ok(Then::Done)
}

/// Runs `f` while its progress lines go out as they come.
async fn with_progress<T, F: Future<Output = T>>(tx: &Sender, f: impl FnOnce(Progress) -> F) -> T {
    let (p, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let fut = f(p);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => {
                while let Ok(line) = lines.try_recv() {
                    let _ = tx.frame(PROGRESS, line.as_bytes()).await;
                }
                return out;
            }
            Some(line) = lines.recv() => {
                let _ = tx.frame(PROGRESS, line.as_bytes()).await;
            }
        }
    }
}

async fn run(
    node: &dyn NodeApi,
    limits: &Limits,
    call: Call,
    rd: &mut In,
    tx: &Sender,
) -> Result<Then, NodeError> {
    match call {
        Call::LoadImage { name, size } => {
            let path = receive(limits, rd, size).await?;
            node.check_load(&path, name.as_deref()).await?;
            let summary =
                with_progress(tx, |p| node.load_image(path.to_path_buf(), name, p)).await?;
            ok(tx, &summary).await
        }
        Call::PullImage { reference, auth } => {
            let plan = node.check_pull(&reference, auth).await?;
            let summary = with_progress(tx, |p| node.pull_image(plan, p)).await?;
            ok(tx, &summary).await
        }
        Call::Images => ok(tx, &node.images().await?).await,
        Call::Capacity => ok(tx, &node.capacity().await?).await,
        Call::FeatureContext { req } => ok(tx, &node.feature_context(req).await?).await,
        Call::CheckCreate { source, limits: l } => {
            ok(tx, &node.check_create(&source, &l).await?).await
        }
        Call::DevcontainerConfig {
            source,
            branch,
            name,
        } => {
            let c = node
                .devcontainer_config(&source, branch.as_deref(), name.as_deref())
                .await?;
            ok(tx, &c).await
        }
        Call::BuildInputs {
            source,
            branch,
            commit,
            dockerfile,
            context,
        } => {
            let i = node
                .build_inputs(&source, branch.as_deref(), &commit, &dockerfile, &context)
                .await?;
            ok(tx, &i).await
        }
        Call::UpdateBundle {
            source,
            branch,
            commit,
            bases,
            max,
        } => {
            let b = node
                .update_bundle(&source, branch.as_deref(), &commit, &bases, max)
                .await?;
            let (base, bundle) = match b {
                Some((base, bundle)) => (Some(base), bundle),
                None => (None, Vec::new()),
            };
            send_bytes(tx, base, bundle).await
        }
        Call::DotfilesArchive { spec, url } => {
            let tar = node.dotfiles_archive(&spec, &url).await?;
            send_bytes(tx, (), tar).await
        }
        Call::RepoArchive { source, commit } => {
            let f = node.repo_archive(&source, &commit).await?;
            send_file(tx, f).await
        }
        Call::ExportImage { reference, name } => {
            let f = node.export_image(&reference, &name).await?;
            send_file(tx, f).await
        }
        Call::CheckPull { reference, auth } => {
            node.check_pull(&reference, auth).await?;
            ok(tx, &()).await
        }
        Call::ResolveImage { reference } => ok(tx, &node.resolve_image(&reference).await?).await,
        Call::RemoveImage { reference, in_use } => {
            ok(tx, &node.remove_image(&reference, &in_use).await?).await
        }
        Call::Create { spec, rev } => {
            with_progress(tx, |p| node.create_at(&spec, &rev, p)).await?;
            ok(tx, &()).await
        }
        Call::Start { spec } => ok(tx, &node.start(&spec).await?).await,
        Call::Stop { spec } => ok(tx, &node.stop(&spec).await?).await,
        Call::Remove { spec } => ok(tx, &node.remove(&spec).await?).await,
        Call::Status { spec } => ok(tx, &node.status(&spec).await?).await,
        Call::Statuses { specs } => {
            let v: Vec<Result<_, WireError>> = node
                .statuses(&specs)
                .await
                .into_iter()
                .map(|r| r.map_err(|e| WireError::from(&e)))
                .collect();
            ok(tx, &v).await
        }
        Call::SetEgress { spec } => ok(tx, &node.set_egress(&spec).await?).await,
        Call::SetLimits { spec } => ok(tx, &node.set_limits(&spec).await?).await,
        Call::Inspect { spec } => ok(tx, &node.inspect(&spec).await?).await,
        Call::Metrics { specs } => {
            let v: Vec<_> = node
                .metrics(&specs)
                .await
                .iter()
                .map(|(id, m)| (id.clone(), WireMetrics::from(m)))
                .collect();
            ok(tx, &v).await
        }
        Call::Exec { spec, req } => {
            let session = node.exec(&spec, req).await?;
            ok(tx, &session.pid()).await?;
            Ok(Then::Exec(session))
        }
        Call::Logs { spec } => {
            let log = node.logs(&spec).await?;
            send_bytes(tx, (), log).await
        }
        Call::LogsSince { spec, cursor } => {
            let (log, cursor) = node.logs_since(&spec, cursor).await?;
            send_bytes(tx, cursor, log).await
        }
        Call::ConsoleNote { spec, line } => ok(tx, &node.console_note(&spec, &line).await?).await,
        Call::Connect { spec, addr } => {
            let sock = node.connect(&spec, addr).await?;
            ok(tx, &()).await?;
            Ok(Then::Connect(sock))
        }
        Call::ListeningPorts { spec } => ok(tx, &node.listening_ports(&spec).await?).await,
        Call::Reconcile { known } => ok(tx, &node.reconcile(&known).await?).await,
        Call::Teardown => ok(tx, &node.teardown().await?).await,
        Call::Snapshot { spec } => ok(tx, &node.snapshot(&spec).await?).await,
        Call::SnapshotIfChanged { spec } => ok(tx, &node.snapshot_if_changed(&spec).await?).await,
        Call::Snapshots { spec } => ok(tx, &node.snapshots(&spec).await?).await,
        Call::Restore { spec, id } => ok(tx, &node.restore(&spec, &id).await?).await,
        Call::StoreFsck => ok(tx, &node.store_fsck().await?).await,
        Call::StoreGc { keep } => ok(tx, &node.store_gc(keep).await?).await,
        Call::ForgetSnapshots { spec, keep } => {
            ok(tx, &node.forget_snapshots(&spec, keep).await?).await
        }
        Call::StoreUsage { spec } => ok(tx, &node.store_usage(&spec).await?).await,
        Call::Servers { mut servers } => {
            servers.truncate(crate::MAX_SERVERS);
            if let Some(w) = &limits.servers {
                w.send_if_modified(|v| {
                    let changed = *v != servers;
                    *v = servers;
                    changed
                });
            }
            ok(tx, &()).await
        }
    }
}

/// Writes an archive the control plane sends into a temporary file in the scratch dir:
/// exactly `size` bytes, or an error (and no file).
async fn receive(limits: &Limits, rd: &mut In, size: u64) -> Result<tempfile::TempPath, NodeError> {
    let scratch = &limits.scratch;
    let tmp = tempfile::Builder::new()
        .prefix(".load-")
        .tempfile_in(scratch)
        .map_err(NodeError::io("create a temporary file in", scratch))?;
    let (file, path) = tmp.into_parts();
    let mut out = tokio::fs::File::from_std(file);
    let mut got = 0u64;
    let lost = |e: std::io::Error| {
        NodeError::Unavailable(format!("the image archive did not arrive whole: {e}"))
    };
    while let Some(b) = rd.data().await.map_err(lost)? {
        got += b.len() as u64;
        if got > size {
            return Err(NodeError::Invalid(format!(
                "the image archive is longer than the announced {size} bytes"
            )));
        }
        out.write_all(&b)
            .await
            .map_err(NodeError::io("write", path.to_path_buf()))?;
    }
    if got != size {
        return Err(lost(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{got} of {size} bytes"),
        )));
    }
    out.flush()
        .await
        .map_err(NodeError::io("write", path.to_path_buf()))?;
    Ok(path)
}

async fn send_bytes<T: Serialize>(tx: &Sender, value: T, data: Vec<u8>) -> Result<Then, NodeError> {
    let head = WithData {
        size: data.len() as u64,
        value,
    };
    ok(tx, &head).await?;
    for chunk in data.chunks(body::CHUNK) {
        if tx.data(Bytes::copy_from_slice(chunk)).await.is_err() {
            break;
        }
    }
    Ok(Then::Done)
}

async fn send_file(tx: &Sender, f: std::fs::File) -> Result<Then, NodeError> {
    let what = PathBuf::from("(archive)");
    let size = f.metadata().map_err(NodeError::io("stat", &what))?.len();
    ok(tx, &WithData { size, value: () }).await?;
    let mut f = tokio::fs::File::from_std(f);
    let mut buf = vec![0u8; body::CHUNK];
    let mut sent = 0u64;
    while sent < size {
        let want = (size - sent).min(buf.len() as u64) as usize;
        match f.read(&mut buf[..want]).await {
            Ok(0) => {
                tx.fail(std::io::Error::other(
                    "the archive shrank while it was sent",
                ))
                .await;
                break;
            }
            Ok(n) => {
                sent += n as u64;
                if tx.data(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tx.fail(e).await;
                break;
            }
        }
    }
    Ok(Then::Done)
}

/// Carries an exec session: its output as agent frames to the control plane, the agent
/// frames it sends (stdin, resize, signals) into the session. Ends with the session's
/// exit; the control plane hanging up ends nothing but the input.
async fn relay_exec(session: ExecSession, mut rd: In, tx: Sender) {
    let (mut w, mut r) = session.split();
    let out = async {
        loop {
            let msg = match r.next_event().await {
                Ok(Event::Stdout(d)) => AgentMsg::Stdout(d),
                Ok(Event::Stderr(d)) => AgentMsg::Stderr(d),
                Ok(Event::Exit(code)) => {
                    if let Some(sig) = r.exit_signal() {
                        send_msg(&tx, &AgentMsg::ExitSignal(sig)).await;
                    }
                    send_msg(&tx, &AgentMsg::Exit(code)).await;
                    return;
                }
                Err(e) => {
                    send_msg(&tx, &AgentMsg::Error(e.to_string())).await;
                    return;
                }
            };
            if !send_msg(&tx, &msg).await {
                return;
            }
        }
    };
    let input = async {
        let mut frames = FrameBuf::new();
        'input: while let Ok(Some(chunk)) = rd.data().await {
            frames.extend(&chunk);
            loop {
                let msg = match frames.next_msg::<ClientMsg>() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "bad exec frame from the control plane");
                        break 'input;
                    }
                };
                let r = match msg {
                    ClientMsg::Stdin(d) => w.write_stdin(&d).await,
                    ClientMsg::StdinEof => w.close_stdin().await,
                    ClientMsg::Resize { rows, cols } => w.resize(rows, cols).await,
                    ClientMsg::Signal(s) => w.signal(s).await,
                    // The agent client's opening request; the node already opened the session.
                    ClientMsg::Request(_) => Ok(()),
                };
                if r.is_err() {
                    break 'input;
                }
            }
        }
        // Input is over; the output goes on until the exit.
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = out => {}
        () = input => {}
    }
}

async fn send_msg(tx: &Sender, msg: &AgentMsg) -> bool {
    match msg.encode() {
        Ok(frame) => tx.data(Bytes::from(frame)).await.is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "unencodable agent message");
            false
        }
    }
}
