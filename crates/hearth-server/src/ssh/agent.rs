//! Agent forwarding (`ssh -A`): `hearth-agent ssh-agent-relay` listens on a unix socket
//! inside the workspace and carries its connections over an exec session; here each one
//! becomes an `auth-agent@openssh.com` channel to the client. Frame format: see the
//! relay (`crates/hearth-agent/src/agent_relay.rs`).

use std::collections::HashMap;

use hearth_node::{ExecRequest, WorkspaceSpec};
use hearth_proto::client::ExecReader;
use hearth_proto::Event;
use russh::server::Handle;
use russh::ChannelMsg;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::session::AGENT;
use crate::manager::Manager;

/// Largest frame the relay may send (it reads 16 KiB at a time).
const MAX_FRAME: usize = 256 * 1024;

/// A running relay; dropping it stops the relay (its stdin closes) and its connections.
pub struct Relay {
    /// `SSH_AUTH_SOCK` for the session's program.
    pub path: String,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn frame(kind: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.push(kind);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Splits the relay's stdout into frames.
struct Frames {
    reader: ExecReader,
    buf: Vec<u8>,
}

impl Frames {
    async fn next(&mut self) -> Option<(u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let id = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let len = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                    as usize;
                if len > MAX_FRAME {
                    return None;
                }
                if self.buf.len() >= 9 + len {
                    let kind = self.buf[0];
                    let payload = self.buf[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    return Some((kind, id, payload));
                }
            }
            match self.reader.next_event().await {
                Ok(Event::Stdout(d)) => self.buf.extend_from_slice(&d),
                Ok(Event::Stderr(d)) => {
                    tracing::debug!(msg = %String::from_utf8_lossy(&d).trim(), "ssh agent relay");
                }
                Ok(Event::Exit(_)) | Err(_) => return None,
            }
        }
    }
}

/// Starts the relay in the workspace, as the session's user; returns once it listens.
pub async fn start(
    manager: &Manager,
    spec: &WorkspaceSpec,
    client: Handle,
) -> Result<Relay, String> {
    let req = ExecRequest {
        argv: vec![AGENT.into(), "ssh-agent-relay".into()],
        ..Default::default()
    };
    let (mut writer, reader) = manager
        .exec(spec, req)
        .await
        .map_err(|e| e.message)?
        .split();
    let mut frames = Frames {
        reader,
        buf: Vec::new(),
    };
    let path = match frames.next().await {
        Some((b'L', _, p)) => String::from_utf8_lossy(&p).into_owned(),
        _ => return Err("the agent forwarding relay did not start".into()),
    };
    // Everything for the relay's stdin goes through one task (writes are not cancel-safe).
    let (to_relay, mut stdin_rx) = mpsc::channel::<Vec<u8>>(64);
    let task = tokio::spawn(async move {
        let stdin = tokio::spawn(async move {
            while let Some(f) = stdin_rx.recv().await {
                if writer.write_stdin(&f).await.is_err() {
                    break;
                }
            }
            let _ = writer.close_stdin().await;
        });
        let mut conns: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
        while let Some((kind, id, payload)) = frames.next().await {
            match kind {
                b'O' => {
                    let (tx, rx) = mpsc::channel(64);
                    conns.insert(id, tx);
                    tokio::spawn(connection(client.clone(), id, rx, to_relay.clone()));
                }
                b'D' => {
                    if let Some(tx) = conns.get(&id) {
                        let _ = tx.send(Some(payload)).await;
                    }
                }
                b'C' => {
                    if let Some(tx) = conns.remove(&id) {
                        let _ = tx.send(None).await;
                    }
                }
                _ => {}
            }
        }
        drop(to_relay);
        let _ = stdin.await;
    });
    Ok(Relay { path, task })
}

/// One connection to the socket inside: an agent channel to the client, both ways.
async fn connection(
    client: Handle,
    id: u32,
    mut from_relay: mpsc::Receiver<Option<Vec<u8>>>,
    to_relay: mpsc::Sender<Vec<u8>>,
) {
    let channel = match client.channel_open_agent().await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "client refused an agent channel");
            let _ = to_relay.send(frame(b'C', id, &[])).await;
            return;
        }
    };
    let (mut rd, wr) = channel.split();
    let up = async {
        while let Some(Some(data)) = from_relay.recv().await {
            if wr.data(&data[..]).await.is_err() {
                break;
            }
        }
        let _ = wr.eof().await;
        let _ = wr.close().await;
    };
    let down = async {
        while let Some(msg) = rd.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    for chunk in data.chunks(MAX_FRAME) {
                        if to_relay.send(frame(b'D', id, chunk)).await.is_err() {
                            return;
                        }
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = to_relay.send(frame(b'C', id, &[])).await;
    };
    // Whichever side ends first ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
