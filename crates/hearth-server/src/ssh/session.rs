//! One SSH connection: authentication, then its channels.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hearth_api::WorkspaceState;
use hearth_node::{ExecRequest, WorkspaceSpec};
use hearth_proto::client::{ExecReader, ExecWriter};
use hearth_proto::Event;
use russh::keys::PublicKey;
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelWriteHalf, Sig};
use tokio::task::JoinHandle;

use crate::auth::Caller;
use crate::manager::Manager;
use crate::names;
use crate::ssh_keys::fingerprint;

/// Starts bash as a login shell when the image has it, else sh (as `hearth shell` does).
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";
/// The in-workspace path of the agent binary, which serves sftp and agent forwarding.
pub(super) const AGENT: &str = "/.hearth/agent";
/// Environment variables a client may set per channel, and their total size.
const MAX_ENV: usize = 64;
const MAX_ENV_BYTES: usize = 32 << 10;
/// How long a `-L` connect inside the workspace may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// How long a connection waits for its workspace to leave a transitional state.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Per-connection state shared with the channel tasks.
struct Ctx {
    manager: Arc<Manager>,
    /// The workspace, running; or why it could not be made so (told to the client).
    spec: Result<WorkspaceSpec, String>,
    /// For opening channels to the client (agent forwarding).
    client: russh::server::Handle,
}

pub struct Conn {
    manager: Arc<Manager>,
    peer: SocketAddr,
    /// Workspace and user, once a key was verified.
    login: Option<(String, Caller)>,
    /// A refused login of this connection is in the audit log already.
    refusal_audited: bool,
    ctx: Option<Arc<Ctx>>,
    /// `-R` listeners by (address, port) as the client named them.
    forwards: HashMap<(String, u32), JoinHandle<()>>,
    /// Holds the workspace in use (no idle stop) while the connection is open: an editor
    /// attached over SSH is a user at work even when nothing is typed.
    in_use: Option<crate::activity::Session>,
}

impl Conn {
    pub fn new(manager: Arc<Manager>, peer: SocketAddr) -> Conn {
        Conn {
            manager,
            peer,
            login: None,
            refusal_audited: false,
            ctx: None,
            forwards: HashMap::new(),
            in_use: None,
        }
    }

    /// Records a login to workspace `workspace` in the audit log: `caller` when it was
    /// accepted, else a refusal (whose key's owner, if any, is not told apart).
    async fn audit_login(&self, workspace: &str, caller: Option<&Caller>) {
        let mut e = crate::db::audit::AuditRecord::new("ssh.login");
        e.user = caller.map(|c| c.id.to_string());
        // What the client sent as its user name; kept short and printable.
        e.target = Some(
            workspace
                .chars()
                .take(64)
                .filter(|c| !c.is_control())
                .collect(),
        );
        e.peer = Some(self.peer.ip().to_string());
        e.ok = caller.is_some();
        if caller.is_none() {
            e.error = Some("no key of a user who may use this workspace".into());
        }
        self.manager.audit(e).await;
    }

    /// The user the key belongs to, if that user may use workspace `user` (the same
    /// ownership rule as the API, `Manager::owned`). Every refusal is the same `None`, so
    /// a client learns nothing about which check failed.
    async fn authorize(&self, user: &str, key: &PublicKey) -> Option<Caller> {
        if !names::is_valid_name(user) {
            return None;
        }
        let store = self.manager.store();
        let looked_up = async {
            let Some((owner, _)) = store.ssh_key_owner(&fingerprint(key)).await? else {
                return Ok(None);
            };
            store.user(&owner).await
        };
        let owner = match looked_up.await {
            Ok(Some(u)) => u,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "ssh key lookup failed");
                return None;
            }
        };
        let caller = Caller {
            id: owner.name.into(),
            admin: owner.admin,
        };
        self.manager.owned(&caller, user).await.ok()?;
        Some(caller)
    }

    fn ctx(&self) -> Option<Arc<Ctx>> {
        self.ctx.clone()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for (_, t) in self.forwards.drain() {
            t.abort();
        }
    }
}

/// Brings the workspace to running, starting it when it is stopped; waits out a start or
/// stop someone else is doing.
async fn ensure_running(
    manager: &Manager,
    caller: &Caller,
    name: &str,
) -> Result<WorkspaceSpec, String> {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        let ws = manager.get(caller, name).await.map_err(|e| e.message)?;
        match ws.state {
            WorkspaceState::Running => {
                return manager
                    .exec_target(caller, name)
                    .await
                    .map_err(|e| e.message)
            }
            WorkspaceState::Stopped | WorkspaceState::Failed => {
                tracing::info!(workspace = name, "starting workspace for ssh");
                match manager.start(caller, name).await {
                    Ok(_) => continue,
                    // Someone else started or stopped it meanwhile: look again.
                    Err(e) if e.status == axum::http::StatusCode::CONFLICT => {}
                    Err(e) => return Err(format!("cannot start workspace {name}: {}", e.message)),
                }
            }
            WorkspaceState::Starting | WorkspaceState::Stopping | WorkspaceState::Creating => {}
            other => return Err(format!("workspace {name} is {other}")),
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("workspace {name} did not become ready in time"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn signal_number(s: &Sig) -> Option<i32> {
    Some(match s {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(n) if n == "USR2" => 12,
        Sig::Custom(_) => return None,
    })
}

fn valid_env_name(n: &str) -> bool {
    !n.is_empty() && !n.contains('=') && !n.contains('\0')
}

/// Where a `-L` target or `-R` bind address points, as seen inside the workspace.
async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if host == "localhost" {
        return Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    }
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}

fn bind_addr(address: &str, port: u16) -> Option<SocketAddr> {
    let ip: IpAddr = match address {
        "" | "*" | "0.0.0.0" => Ipv4Addr::UNSPECIFIED.into(),
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        a => a.trim_matches(['[', ']']).parse().ok()?,
    };
    Some(SocketAddr::new(ip, port))
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.authorize(user, offer.public_key).await {
            Some(_) => Auth::Accept,
            None => {
                // A client offers its keys in turn: one entry per connection, not per key.
                if !self.refusal_audited {
                    self.refusal_audited = true;
                    self.audit_login(user, None).await;
                }
                Auth::reject()
            }
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.authorize(user, key.public_key).await {
            Some(caller) => {
                tracing::info!(peer = %self.peer, workspace = user, user = %caller.id, "ssh login");
                self.audit_login(user, Some(&caller)).await;
                self.login = Some((user.to_string(), caller));
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(peer = %self.peer, workspace = user, "ssh login refused");
                if !self.refusal_audited {
                    self.refusal_audited = true;
                    self.audit_login(user, None).await;
                }
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let Some((name, caller)) = &self.login else {
            return Ok(());
        };
        let spec = ensure_running(&self.manager, caller, name).await;
        if let Ok(spec) = &spec {
            self.in_use = Some(self.manager.activity().session(spec.id.as_str()));
        }
        if let Err(e) = &spec {
            tracing::warn!(
                workspace = name,
                error = e,
                "ssh session without a running workspace"
            );
        }
        self.ctx = Some(Arc::new(Ctx {
            manager: self.manager.clone(),
            spec,
            client: session.handle(),
        }));
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(ctx) = self.ctx() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(run_session(ctx, channel));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(ctx), Ok(port)) = (self.ctx(), u16::try_from(port_to_connect)) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let host = host_to_connect.to_string();
        // Connecting may take a while; the connection's other channels go on meanwhile.
        tokio::spawn(async move {
            let Ok(spec) = &ctx.spec else {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            };
            let Some(addr) = resolve(&host, port).await else {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            };
            let connect = ctx.manager.node().connect(spec, addr);
            // A dropped SYN would wait for the kernel's timeout; ssh's own is shorter.
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(mut tcp)) => {
                    reply.accept().await;
                    let mut ch = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut ch, &mut tcp).await;
                }
                Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
                Ok(Err(e)) => {
                    tracing::debug!(workspace = spec.name, %addr, error = %e, "ssh -L connect failed");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if valid_env_name(name) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.ctx.as_ref().is_some_and(|c| c.spec.is_ok()))
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(ctx) = self.ctx() else {
            return Ok(false);
        };
        let Ok(spec) = &ctx.spec else {
            return Ok(false);
        };
        let Some(bind) = u16::try_from(*port)
            .ok()
            .and_then(|p| bind_addr(address, p))
        else {
            return Ok(false);
        };
        let listener = match ctx.manager.node().listen(spec, bind).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(workspace = spec.name, %bind, error = %e, "ssh -R listen failed");
                return Ok(false);
            }
        };
        let bound = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        if *port == 0 {
            *port = u32::from(bound);
        }
        let handle = session.handle();
        let (address_told, port_told) = (address.to_string(), *port);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, peer)) = listener.accept().await else {
                    break;
                };
                let handle = handle.clone();
                let address = address_told.clone();
                tokio::spawn(async move {
                    let ch = handle
                        .channel_open_forwarded_tcpip(
                            address,
                            port_told,
                            peer.ip().to_string(),
                            u32::from(peer.port()),
                        )
                        .await;
                    if let Ok(ch) = ch {
                        let mut ch = ch.into_stream();
                        let _ = tokio::io::copy_bidirectional(&mut ch, &mut sock).await;
                    }
                });
            }
        });
        if let Some(old) = self.forwards.insert((address.to_string(), *port), task) {
            old.abort();
        }
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        match self.forwards.remove(&(address.to_string(), port)) {
            Some(t) => {
                t.abort();
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// What a session channel runs once the client asks for it.
enum Program {
    Shell,
    Command(String),
    Sftp,
}

/// Serves one session channel: collects pty and env requests, runs the program through
/// the agent, relays input, window changes and signals to it.
async fn run_session(ctx: Arc<Ctx>, channel: Channel<Msg>) {
    let (mut rd, wr) = channel.split();
    let mut wr = Some(wr);
    let mut tty: Option<(u16, u16)> = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let mut env_bytes = 0usize;
    let mut input: Option<ExecWriter> = None;
    let mut output: Option<JoinHandle<()>> = None;
    let mut forward_agent = false;
    // Lives as long as the channel: the relay stops when it is dropped.
    let mut _relay: Option<super::agent::Relay> = None;
    while let Some(msg) = rd.wait().await {
        let program = match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            } => {
                tty = Some(size(row_height, col_width));
                env.push(("TERM".into(), term));
                continue;
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                env_bytes += variable_name.len() + variable_value.len();
                if valid_env_name(&variable_name)
                    && env.len() < MAX_ENV
                    && env_bytes <= MAX_ENV_BYTES
                {
                    env.push((variable_name, variable_value));
                }
                continue;
            }
            ChannelMsg::RequestShell { .. } => Program::Shell,
            ChannelMsg::Exec { command, .. } => {
                Program::Command(String::from_utf8_lossy(&command).into_owned())
            }
            ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => Program::Sftp,
            ChannelMsg::Data { data } => {
                if let Some(w) = input.as_mut() {
                    if let Err(e) = w.write_stdin(&data).await {
                        tracing::debug!(error = %e, "ssh stdin to a finished process");
                    }
                }
                continue;
            }
            ChannelMsg::Eof => {
                if let Some(w) = input.as_mut() {
                    let _ = w.close_stdin().await;
                }
                continue;
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(w) = input.as_mut() {
                    let (rows, cols) = size(row_height, col_width);
                    let _ = w.resize(rows, cols).await;
                }
                continue;
            }
            ChannelMsg::Signal { signal } => {
                if let (Some(w), Some(n)) = (input.as_mut(), signal_number(&signal)) {
                    let _ = w.signal(n).await;
                }
                continue;
            }
            ChannelMsg::AgentForward { .. } => {
                forward_agent = true;
                continue;
            }
            ChannelMsg::Close => break,
            _ => continue,
        };
        // One program per channel; a second request is ignored (the client was told
        // success already, as for the first).
        let Some(w) = wr.take() else { continue };
        if let (true, Ok(spec)) = (forward_agent, &ctx.spec) {
            match super::agent::start(&ctx.manager, spec, ctx.client.clone()).await {
                Ok(relay) => {
                    env.push(("SSH_AUTH_SOCK".into(), relay.path.clone()));
                    _relay = Some(relay);
                }
                Err(e) => {
                    tracing::warn!(
                        workspace = spec.name,
                        error = e,
                        "ssh agent forwarding failed"
                    )
                }
            }
        }
        match start(&ctx, program, tty, std::mem::take(&mut env)).await {
            Ok((writer, reader)) => {
                input = Some(writer);
                output = Some(tokio::spawn(pump_output(reader, w, ctx.client.clone())));
            }
            Err(msg) => {
                let _ = w
                    .extended_data(1, format!("hearth: {msg}\r\n").as_bytes())
                    .await;
                let _ = w.exit_status(1).await;
                let _ = w.eof().await;
                let _ = w.close().await;
            }
        }
    }
    // The client closed the channel (or the connection went): hang up on the program as
    // a terminal would, unless it already ended.
    if let (Some(mut w), Some(out)) = (input, output) {
        if !out.is_finished() {
            let _ = w.signal(1).await;
        }
    }
}

fn size(rows: u32, cols: u32) -> (u16, u16) {
    let clamp = |v: u32, default: u16| match u16::try_from(v) {
        Ok(0) | Err(_) => default,
        Ok(v) => v,
    };
    (clamp(rows, 24), clamp(cols, 80))
}

async fn start(
    ctx: &Ctx,
    program: Program,
    tty: Option<(u16, u16)>,
    env: Vec<(String, String)>,
) -> Result<(ExecWriter, ExecReader), String> {
    let spec = ctx.spec.as_ref().map_err(Clone::clone)?;
    let argv: Vec<String> = match program {
        Program::Shell => vec!["/bin/sh".into(), "-c".into(), SHELL.into()],
        Program::Command(c) => vec!["/bin/sh".into(), "-c".into(), c],
        Program::Sftp => vec![AGENT.into(), "sftp-server".into()],
    };
    let (rows, cols) = tty.unwrap_or((0, 0));
    let req = ExecRequest {
        argv,
        env,
        cwd: None,
        user: None,
        tty: tty.is_some(),
        rows,
        cols,
    };
    let session = ctx.manager.exec(spec, req).await.map_err(|e| e.message)?;
    Ok(session.split())
}

/// The SSH name of a signal number (RFC 4254 names, without `SIG`).
fn signal_name(n: i32) -> Option<Sig> {
    Some(match n {
        1 => Sig::HUP,
        2 => Sig::INT,
        3 => Sig::QUIT,
        4 => Sig::ILL,
        6 => Sig::ABRT,
        8 => Sig::FPE,
        9 => Sig::KILL,
        10 => Sig::USR1,
        11 => Sig::SEGV,
        12 => Sig::Custom("USR2".into()),
        13 => Sig::PIPE,
        14 => Sig::ALRM,
        15 => Sig::TERM,
        _ => return None,
    })
}

/// Relays the program's output to the channel, then how it ended (`exit-signal` when a
/// signal killed it, as sshd does, else `exit-status`), and closes the channel.
async fn pump_output(
    mut reader: ExecReader,
    wr: ChannelWriteHalf<Msg>,
    client: russh::server::Handle,
) {
    let status = loop {
        match reader.next_event().await {
            Ok(Event::Stdout(d)) => {
                if wr.data(&d[..]).await.is_err() {
                    return;
                }
            }
            Ok(Event::Stderr(d)) => {
                if wr.extended_data(1, &d[..]).await.is_err() {
                    return;
                }
            }
            Ok(Event::Exit(code)) => break code,
            Err(e) => {
                let _ = wr
                    .extended_data(1, format!("hearth: session failed: {e}\r\n").as_bytes())
                    .await;
                break 255;
            }
        }
    };
    match reader.exit_signal().and_then(signal_name) {
        Some(sig) => {
            let _ = client
                .exit_signal_request(wr.id(), sig, false, String::new(), "en-US".into())
                .await;
        }
        None => {
            let _ = wr.exit_status(u32::try_from(status).unwrap_or(255)).await;
        }
    }
    let _ = wr.eof().await;
    let _ = wr.close().await;
}
