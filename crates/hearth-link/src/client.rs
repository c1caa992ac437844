//! The control plane's side: [`RemoteNode`], a [`NodeApi`] whose every call is an h2
//! stream on the connection a node dialled in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use hearth_node::features::{FeaturePlan, FeatureRequest};
use hearth_node::{
    ExecRequest, ExecSession, ImageSummary, Limits, ListeningPort, NodeApi, NodeCapacity,
    NodeError, Progress, PullPlan, RegistryAuth, RepoConfig, Retention, Revision, SnapshotSummary,
    StoreCheck, StoreGcReport, StoreUsage, WorkspaceDetails, WorkspaceId, WorkspaceMetrics,
    WorkspaceSpec, WorkspaceStatus,
};
use hearth_proto::Message as _;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::body::{self, ChannelBody, Reader, Sender, ARGS, ERR, OK, PROGRESS};
use crate::call::{Call, Metrics, WireError, WireResult, WithData};
use crate::Limits as LinkLimits;

/// A node on another host, reached over the connection it dialled in. Cheap to share;
/// once the connection is gone every call fails with [`NodeError::Unavailable`] (a new
/// connection makes a new `RemoteNode`).
pub struct RemoteNode {
    name: String,
    send: SendRequest<ChannelBody>,
    closed: CancellationToken,
    limits: LinkLimits,
}

impl std::fmt::Debug for RemoteNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNode")
            .field("name", &self.name)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl RemoteNode {
    /// Starts HTTP/2 (as its client) on `io`, a connection node `name` made to us, and
    /// keeps it alive with pings: a peer that stops answering them is dropped within
    /// [`LinkLimits::keepalive`] twice, failing what was in flight.
    pub async fn handshake<I>(
        name: &str,
        io: I,
        limits: LinkLimits,
    ) -> Result<RemoteNode, NodeError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.keepalive)
            .keep_alive_timeout(limits.keepalive)
            .keep_alive_while_idle(true)
            .adaptive_window(true)
            .max_send_buf_size(body::CHUNK * 4)
            .handshake::<_, ChannelBody>(TokioIo::new(io))
            .await
            .map_err(|e| unavailable(name, &format!("handshake failed: {e}")))?;
        let closed = CancellationToken::new();
        let token = closed.clone();
        let shown = name.to_string();
        tokio::spawn(async move {
            tokio::select! {
                r = conn => match r {
                    Ok(()) => tracing::info!(node = shown, "node connection closed"),
                    Err(e) => tracing::warn!(node = shown, error = %e, "node connection lost"),
                },
                _ = token.cancelled() => tracing::info!(node = shown, "node connection dropped"),
            }
            token.cancel();
        });
        Ok(RemoteNode {
            name: name.to_string(),
            send,
            closed,
            limits,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_connected(&self) -> bool {
        !self.closed.is_cancelled()
    }

    /// Resolves once the connection is gone.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Drops the connection (the node will dial again).
    pub fn disconnect(&self) {
        self.closed.cancel()
    }

    fn unavailable(&self, what: &str) -> NodeError {
        unavailable(&self.name, what)
    }

    /// Tells the node which servers share the database now, so it links to each (see
    /// [`crate::run_node`]). A node too old to know the call answers `Invalid`.
    pub async fn tell_servers(&self, servers: &[crate::ServerAddr]) -> Result<(), NodeError> {
        self.call(Call::Servers {
            servers: servers.to_vec(),
        })
        .await
    }

    /// Opens a call's stream: its arguments sent, the response's head not read yet.
    /// `stream` keeps the request body open for data after the arguments.
    async fn open(
        &self,
        call: &Call,
        stream: bool,
    ) -> Result<(Reader<Incoming>, Option<Sender>), NodeError> {
        if !self.is_connected() {
            return Err(self.unavailable("not connected"));
        }
        let (tx, body) = body::channel();
        tx.json(ARGS, call)
            .await
            .map_err(|_| self.unavailable("cannot queue a call"))?;
        let req = hyper::Request::post(format!("http://node/call/{}", call.name()))
            .body(body)
            .map_err(|e| NodeError::Internal(format!("node call {}: {e}", call.name())))?;
        let mut send = self.send.clone();
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| self.unavailable(&format!("{} failed: {e}", call.name())))?;
        if !resp.status().is_success() {
            return Err(NodeError::Internal(format!(
                "node {}: {} answered {}",
                self.name,
                call.name(),
                resp.status()
            )));
        }
        Ok((Reader::new(resp.into_body()), stream.then_some(tx)))
    }

    /// Reads head frames up to the result, passing progress lines on.
    async fn result<T: DeserializeOwned>(
        &self,
        method: &str,
        reader: &mut Reader<Incoming>,
        progress: Option<&Progress>,
    ) -> Result<T, NodeError> {
        loop {
            let frame = reader
                .head(self.limits.max_head)
                .await
                .map_err(|e| self.unavailable(&format!("{method}: {e}")))?;
            let Some((kind, payload)) = frame else {
                return Err(self.unavailable(&format!("{method}: the answer ended early")));
            };
            match kind {
                PROGRESS => {
                    if let Some(p) = progress {
                        let _ = p.send(String::from_utf8_lossy(&payload).into_owned());
                    }
                }
                OK => {
                    return serde_json::from_slice(&payload).map_err(|e| {
                        NodeError::Internal(format!(
                            "node {}: unreadable answer to {method}: {e}",
                            self.name
                        ))
                    })
                }
                ERR => {
                    let w: WireError = serde_json::from_slice(&payload).map_err(|e| {
                        NodeError::Internal(format!(
                            "node {}: unreadable error from {method}: {e}",
                            self.name
                        ))
                    })?;
                    return Err(w.into_error(&self.name));
                }
                k => {
                    return Err(NodeError::Internal(format!(
                        "node {}: unexpected frame {k} in the answer to {method}",
                        self.name
                    )))
                }
            }
        }
    }

    async fn timed<T>(
        &self,
        method: &str,
        limit: Option<Duration>,
        fut: impl std::future::Future<Output = Result<T, NodeError>>,
    ) -> Result<T, NodeError> {
        let closed = self.closed.cancelled();
        let run = async {
            tokio::select! {
                r = fut => r,
                _ = closed => Err(self.unavailable(&format!("connection lost during {method}"))),
            }
        };
        match limit {
            None => run.await,
            Some(d) => tokio::time::timeout(d, run).await.unwrap_or_else(|_| {
                Err(self.unavailable(&format!("no answer to {method} within {} s", d.as_secs())))
            }),
        }
    }

    /// A call with a short answer, bounded by [`LinkLimits::call_timeout`].
    async fn call<T: DeserializeOwned>(&self, call: Call) -> Result<T, NodeError> {
        self.call_for(call, Some(self.limits.call_timeout), None)
            .await
    }

    /// A long call (a clone, a snapshot): bounded by the connection's liveness only, its
    /// progress passed on.
    async fn long<T: DeserializeOwned>(
        &self,
        call: Call,
        progress: Option<&Progress>,
    ) -> Result<T, NodeError> {
        self.call_for(call, None, progress).await
    }

    async fn call_for<T: DeserializeOwned>(
        &self,
        call: Call,
        limit: Option<Duration>,
        progress: Option<&Progress>,
    ) -> Result<T, NodeError> {
        let method = call.name();
        self.timed(method, limit, async {
            let (mut reader, _) = self.open(&call, false).await?;
            self.result(method, &mut reader, progress).await
        })
        .await
    }

    /// A call whose result is followed by up to `max` bytes of data, read into memory.
    async fn bytes<T: DeserializeOwned>(
        &self,
        call: Call,
        max: u64,
    ) -> Result<(T, Vec<u8>), NodeError> {
        let method = call.name();
        self.timed(method, None, async {
            let (mut reader, _) = self.open(&call, false).await?;
            let head: WithData<T> = self.result(method, &mut reader, None).await?;
            self.check_size(method, head.size, max)?;
            let mut out = Vec::with_capacity(head.size.min(16 << 20) as usize);
            let mut got = 0u64;
            while let Some(b) = self
                .next_data(method, &mut reader, head.size, &mut got)
                .await?
            {
                out.extend_from_slice(&b);
            }
            Ok((head.value, out))
        })
        .await
    }

    /// A call answered with a file: streamed into an unlinked temporary file in the
    /// scratch dir (never whole in memory), read from its start.
    async fn file(&self, call: Call) -> Result<std::fs::File, NodeError> {
        use std::io::Seek;
        let method = call.name();
        self.timed(method, None, async {
            let (mut reader, _) = self.open(&call, false).await?;
            let head: WithData<()> = self.result(method, &mut reader, None).await?;
            self.check_size(method, head.size, self.limits.max_file)?;
            let scratch = &self.limits.scratch;
            let file = tempfile::tempfile_in(scratch)
                .map_err(NodeError::io("create a temporary file in", scratch))?;
            let mut out = tokio::fs::File::from_std(file);
            let mut got = 0u64;
            while let Some(b) = self
                .next_data(method, &mut reader, head.size, &mut got)
                .await?
            {
                out.write_all(&b)
                    .await
                    .map_err(NodeError::io("write a temporary file in", scratch))?;
            }
            out.flush()
                .await
                .map_err(NodeError::io("write a temporary file in", scratch))?;
            let mut file = out.into_std().await;
            file.rewind()
                .map_err(NodeError::io("rewind a temporary file in", scratch))?;
            Ok(file)
        })
        .await
    }

    fn check_size(&self, method: &str, size: u64, max: u64) -> Result<(), NodeError> {
        if size > max {
            return Err(NodeError::Internal(format!(
                "node {}: {method} answered {size} bytes, over the limit of {max}",
                self.name
            )));
        }
        Ok(())
    }

    /// The next piece of the `size` bytes of data after the head, `None` after the
    /// last; more or fewer bytes than announced fail.
    async fn next_data(
        &self,
        method: &str,
        reader: &mut Reader<Incoming>,
        size: u64,
        got: &mut u64,
    ) -> Result<Option<Bytes>, NodeError> {
        match reader
            .data()
            .await
            .map_err(|e| self.unavailable(&format!("{method}: {e}")))?
        {
            Some(b) => {
                *got += b.len() as u64;
                if *got > size {
                    return Err(self.short(method, size, *got));
                }
                Ok(Some(b))
            }
            None if *got != size => Err(self.short(method, size, *got)),
            None => Ok(None),
        }
    }

    fn short(&self, method: &str, size: u64, got: u64) -> NodeError {
        NodeError::Internal(format!(
            "node {}: {method} announced {size} bytes and sent {got}{}",
            self.name,
            if got > size { " or more" } else { "" }
        ))
    }
}

fn unavailable(node: &str, what: &str) -> NodeError {
    NodeError::Unavailable(format!("node {node} is unavailable: {what}"))
}

/// Two ends of a loopback TCP connection; `connect` must hand its caller a real
/// `TcpStream`. The accepted end is checked to be ours (another local process could
/// connect to the listener in the meantime).
async fn loopback_pair() -> std::io::Result<(tokio::net::TcpStream, tokio::net::TcpStream)> {
    let l = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let ours = tokio::net::TcpStream::connect(l.local_addr()?).await?;
    let want = ours.local_addr()?;
    loop {
        let (theirs, peer) = l.accept().await?;
        if peer == want {
            return Ok((ours, theirs));
        }
    }
}

#[async_trait::async_trait]
impl NodeApi for RemoteNode {
    async fn load_image(
        &self,
        path: PathBuf,
        name: Option<String>,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(NodeError::io("open", &path))?;
        let meta = file
            .metadata()
            .await
            .map_err(NodeError::io("stat", &path))?;
        if !meta.is_file() {
            return Err(not_a_file(&path));
        }
        let size = meta.len();
        let call = Call::LoadImage { name, size };
        self.timed("load_image", None, async {
            let (mut reader, tx) = self.open(&call, true).await?;
            let tx = tx.ok_or_else(|| NodeError::Internal("load_image: no request body".into()))?;
            let upload = async move {
                let mut buf = vec![0u8; body::CHUNK];
                let mut sent = 0u64;
                while sent < size {
                    let want = (size - sent).min(buf.len() as u64) as usize;
                    match file.read(&mut buf[..want]).await {
                        Ok(0) => {
                            tx.fail(std::io::Error::other(
                                "the archive shrank while it was sent",
                            ))
                            .await;
                            return;
                        }
                        Ok(n) => {
                            sent += n as u64;
                            if tx.data(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tx.fail(e).await;
                            return;
                        }
                    }
                }
            };
            let answer = self.result("load_image", &mut reader, Some(&progress));
            // The answer may come before the upload ends (a refusal): stop sending then.
            tokio::pin!(answer);
            tokio::select! {
                r = &mut answer => r,
                () = upload => answer.await,
            }
        })
        .await
    }

    async fn check_load(&self, path: &Path, name: Option<&str>) -> Result<(), NodeError> {
        // The file is on this host and travels to the node; the node checks its room
        // when the load starts.
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(NodeError::io("stat", path))?;
        if !meta.is_file() {
            return Err(not_a_file(path));
        }
        if let Some(n) = name {
            hearth_node::check_image_name(n)?;
        }
        Ok(())
    }

    async fn pull_image(
        &self,
        plan: PullPlan,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        let call = Call::PullImage {
            reference: plan.reference().to_string(),
            auth: plan.auth().cloned(),
        };
        self.long(call, Some(&progress)).await
    }

    async fn images(&self) -> Result<Vec<ImageSummary>, NodeError> {
        self.call(Call::Images).await
    }

    async fn capacity(&self) -> Result<NodeCapacity, NodeError> {
        self.call(Call::Capacity).await
    }

    async fn feature_context(&self, req: FeatureRequest) -> Result<FeaturePlan, NodeError> {
        self.long(Call::FeatureContext { req }, None).await
    }

    async fn check_create(&self, source: &str, limits: &Limits) -> Result<(), NodeError> {
        self.call(Call::CheckCreate {
            source: source.into(),
            limits: *limits,
        })
        .await
    }

    async fn devcontainer_config(
        &self,
        source: &str,
        branch: Option<&str>,
        name: Option<&str>,
    ) -> Result<Option<RepoConfig>, NodeError> {
        let call = Call::DevcontainerConfig {
            source: source.into(),
            branch: branch.map(Into::into),
            name: name.map(Into::into),
        };
        self.long(call, None).await
    }

    async fn build_inputs(
        &self,
        source: &str,
        branch: Option<&str>,
        commit: &str,
        dockerfile: &str,
        context: &str,
    ) -> Result<hearth_node::BuildInputs, NodeError> {
        let call = Call::BuildInputs {
            source: source.into(),
            branch: branch.map(Into::into),
            commit: commit.into(),
            dockerfile: dockerfile.into(),
            context: context.into(),
        };
        self.long(call, None).await
    }

    async fn update_bundle(
        &self,
        source: &str,
        branch: Option<&str>,
        commit: &str,
        bases: &[String],
        max: u64,
    ) -> Result<Option<(String, Vec<u8>)>, NodeError> {
        let call = Call::UpdateBundle {
            source: source.into(),
            branch: branch.map(Into::into),
            commit: commit.into(),
            bases: bases.to_vec(),
            max,
        };
        let (base, bundle): (Option<String>, Vec<u8>) = self.bytes(call, max).await?;
        Ok(base.map(|b| (b, bundle)))
    }

    async fn dotfiles_archive(
        &self,
        spec: &WorkspaceSpec,
        url: &str,
    ) -> Result<Vec<u8>, NodeError> {
        let call = Call::DotfilesArchive {
            spec: spec.clone(),
            url: url.into(),
        };
        let ((), tar) = self.bytes(call, crate::MAX_DOTFILES).await?;
        Ok(tar)
    }

    async fn repo_archive(&self, source: &str, commit: &str) -> Result<std::fs::File, NodeError> {
        self.file(Call::RepoArchive {
            source: source.into(),
            commit: commit.into(),
        })
        .await
    }

    async fn export_image(&self, reference: &str, name: &str) -> Result<std::fs::File, NodeError> {
        self.file(Call::ExportImage {
            reference: reference.into(),
            name: name.into(),
        })
        .await
    }

    async fn check_pull(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<PullPlan, NodeError> {
        let call = Call::CheckPull {
            reference: reference.into(),
            auth: auth.clone(),
        };
        self.call::<()>(call).await?;
        // What the node resolved stays there; its pull resolves again.
        Ok(PullPlan::new(reference, auth))
    }

    async fn resolve_image(&self, reference: &str) -> Result<ImageSummary, NodeError> {
        self.call(Call::ResolveImage {
            reference: reference.into(),
        })
        .await
    }

    async fn remove_image(&self, reference: &str, in_use: &[String]) -> Result<(), NodeError> {
        self.call(Call::RemoveImage {
            reference: reference.into(),
            in_use: in_use.to_vec(),
        })
        .await
    }

    async fn create(&self, spec: &WorkspaceSpec, progress: Progress) -> Result<(), NodeError> {
        self.create_at(spec, &Revision::default(), progress).await
    }

    async fn create_at(
        &self,
        spec: &WorkspaceSpec,
        rev: &Revision,
        progress: Progress,
    ) -> Result<(), NodeError> {
        let call = Call::Create {
            spec: spec.clone(),
            rev: rev.clone(),
        };
        self.long(call, Some(&progress)).await
    }

    async fn start(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        let call = Call::Start { spec: spec.clone() };
        self.call_for(call, Some(self.limits.lifecycle_timeout), None)
            .await
    }

    async fn stop(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let call = Call::Stop { spec: spec.clone() };
        self.call_for(call, Some(self.limits.lifecycle_timeout), None)
            .await
    }

    async fn remove(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let call = Call::Remove { spec: spec.clone() };
        self.call_for(call, Some(self.limits.lifecycle_timeout), None)
            .await
    }

    async fn status(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        self.call(Call::Status { spec: spec.clone() }).await
    }

    async fn statuses(&self, specs: &[WorkspaceSpec]) -> Vec<Result<WorkspaceStatus, NodeError>> {
        let call = Call::Statuses {
            specs: specs.to_vec(),
        };
        match self.call::<Vec<WireResult<WorkspaceStatus>>>(call).await {
            Ok(v) if v.len() == specs.len() => v
                .into_iter()
                .map(|r| r.map_err(|e| e.into_error(&self.name)))
                .collect(),
            Ok(v) => {
                let m = format!(
                    "node {}: statuses answered {} of {} workspaces",
                    self.name,
                    v.len(),
                    specs.len()
                );
                specs
                    .iter()
                    .map(|_| Err(NodeError::Internal(m.clone())))
                    .collect()
            }
            Err(e) => {
                let (kind, m) = (e.kind(), e.to_string());
                specs
                    .iter()
                    .map(|_| {
                        Err(match kind {
                            hearth_node::ErrorKind::Unavailable => {
                                NodeError::Unavailable(m.clone())
                            }
                            _ => NodeError::Internal(m.clone()),
                        })
                    })
                    .collect()
            }
        }
    }

    async fn set_egress(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        self.call(Call::SetEgress { spec: spec.clone() }).await
    }

    async fn set_limits(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        self.call(Call::SetLimits { spec: spec.clone() }).await
    }

    async fn inspect(&self, spec: &WorkspaceSpec) -> Result<WorkspaceDetails, NodeError> {
        self.call(Call::Inspect { spec: spec.clone() }).await
    }

    async fn metrics(&self, specs: &[WorkspaceSpec]) -> Vec<(WorkspaceId, WorkspaceMetrics)> {
        let call = Call::Metrics {
            specs: specs.to_vec(),
        };
        match self.call::<Metrics>(call).await {
            Ok(v) => v.into_iter().map(|(id, m)| (id, m.into())).collect(),
            Err(e) => {
                tracing::debug!(node = self.name, error = %e, "no metrics from node");
                Vec::new()
            }
        }
    }

    async fn exec(&self, spec: &WorkspaceSpec, req: ExecRequest) -> Result<ExecSession, NodeError> {
        let call = Call::Exec {
            spec: spec.clone(),
            req: req.clone(),
        };
        let (reader, tx, pid) = self
            .timed("exec", Some(self.limits.call_timeout), async {
                let (mut reader, tx) = self.open(&call, true).await?;
                let pid: u32 = self.result("exec", &mut reader, None).await?;
                Ok((reader, tx, pid))
            })
            .await?;
        let tx = tx.ok_or_else(|| NodeError::Internal("exec: no request body".into()))?;
        // The session object is the agent client's own, over one end of a socket pair;
        // the other end is copied to and from the node. The node's agent frames go
        // through unchanged, after the `Started` that the node's answer stands for.
        let (ours, mut theirs) =
            tokio::net::UnixStream::pair().map_err(NodeError::io("socketpair", "exec"))?;
        let started = hearth_proto::AgentMsg::Started { pid }
            .encode()
            .map_err(|e| NodeError::Internal(format!("exec: {e}")))?;
        theirs
            .write_all(&started)
            .await
            .map_err(NodeError::io("write", "exec socket"))?;
        tokio::spawn(body::pump(theirs, reader, tx));
        hearth_proto::client::exec_on(ours, &req)
            .await
            .map_err(|e| NodeError::Internal(format!("workspace {}: exec: {e}", spec.name)))
    }

    async fn logs(&self, spec: &WorkspaceSpec) -> Result<Vec<u8>, NodeError> {
        let ((), log) = self
            .bytes(Call::Logs { spec: spec.clone() }, crate::MAX_LOGS)
            .await?;
        Ok(log)
    }

    async fn logs_since(
        &self,
        spec: &WorkspaceSpec,
        cursor: Option<hearth_node::LogCursor>,
    ) -> Result<(Vec<u8>, hearth_node::LogCursor), NodeError> {
        let (cursor, log) = self
            .bytes(
                Call::LogsSince {
                    spec: spec.clone(),
                    cursor,
                },
                crate::MAX_LOGS,
            )
            .await?;
        Ok((log, cursor))
    }

    async fn console_note(&self, spec: &WorkspaceSpec, line: &str) -> Result<(), NodeError> {
        self.call(Call::ConsoleNote {
            spec: spec.clone(),
            line: line.into(),
        })
        .await
    }

    async fn connect(
        &self,
        spec: &WorkspaceSpec,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, NodeError> {
        let call = Call::Connect {
            spec: spec.clone(),
            addr,
        };
        let (reader, tx) = self
            .timed("connect", Some(self.limits.call_timeout), async {
                let (mut reader, tx) = self.open(&call, true).await?;
                self.result::<()>("connect", &mut reader, None).await?;
                Ok((reader, tx))
            })
            .await?;
        let tx = tx.ok_or_else(|| NodeError::Internal("connect: no request body".into()))?;
        let (ours, theirs) = loopback_pair()
            .await
            .map_err(NodeError::io("make a loopback connection for", "connect"))?;
        tokio::spawn(body::pump(theirs, reader, tx));
        Ok(ours)
    }

    async fn listening_ports(&self, spec: &WorkspaceSpec) -> Result<Vec<ListeningPort>, NodeError> {
        self.call(Call::ListeningPorts { spec: spec.clone() }).await
    }

    async fn listen(
        &self,
        spec: &WorkspaceSpec,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpListener, NodeError> {
        let _ = addr;
        Err(NodeError::Invalid(format!(
            "workspace {}: remote forwards (ssh -R) are not supported on remote node {}",
            spec.name, self.name
        )))
    }

    async fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(WorkspaceId, WorkspaceStatus)>, NodeError> {
        let call = Call::Reconcile {
            known: known.to_vec(),
        };
        self.long(call, None).await
    }

    async fn teardown(&self) -> Result<(), NodeError> {
        self.long(Call::Teardown, None).await
    }

    async fn snapshot(&self, spec: &WorkspaceSpec) -> Result<SnapshotSummary, NodeError> {
        self.long(Call::Snapshot { spec: spec.clone() }, None).await
    }

    async fn snapshot_if_changed(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Option<SnapshotSummary>, NodeError> {
        self.long(Call::SnapshotIfChanged { spec: spec.clone() }, None)
            .await
    }

    async fn snapshots(&self, spec: &WorkspaceSpec) -> Result<Vec<SnapshotSummary>, NodeError> {
        self.call(Call::Snapshots { spec: spec.clone() }).await
    }

    async fn restore(&self, spec: &WorkspaceSpec, id: &str) -> Result<(), NodeError> {
        let call = Call::Restore {
            spec: spec.clone(),
            id: id.into(),
        };
        self.long(call, None).await
    }

    async fn store_fsck(&self) -> Result<StoreCheck, NodeError> {
        self.long(Call::StoreFsck, None).await
    }

    async fn store_gc(&self, keep: Option<Retention>) -> Result<StoreGcReport, NodeError> {
        self.long(Call::StoreGc { keep }, None).await
    }

    async fn forget_snapshots(
        &self,
        spec: &WorkspaceSpec,
        keep: Option<Retention>,
    ) -> Result<Vec<String>, NodeError> {
        let call = Call::ForgetSnapshots {
            spec: spec.clone(),
            keep,
        };
        self.long(call, None).await
    }

    async fn store_usage(&self, spec: &WorkspaceSpec) -> Result<StoreUsage, NodeError> {
        self.call(Call::StoreUsage { spec: spec.clone() }).await
    }
}

fn not_a_file(path: &Path) -> NodeError {
    NodeError::Invalid(format!(
        "{} is not a regular file: a remote node loads image archives only (pack a \
         directory with tar first)",
        path.display()
    ))
}
