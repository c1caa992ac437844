//! Wire protocol between the node and the in-workspace agent (`hearth-agent`).
//!
//! The agent side is synchronous std code (it must build static and stay small); the
//! async client used by the node lives behind the `client` feature. Both sides share the
//! framing code here so they cannot drift apart.
//!
//! A frame is `[u8 kind][u32 big-endian payload length][payload]`. Payloads are raw bytes
//! for stream data, fixed-size big-endian integers for control messages, and JSON only
//! for the request that opens a connection (so new request fields stay compatible).

use serde::{Deserialize, Serialize};
use std::io;

/// Largest payload a frame may carry; bounds the memory a peer can make us buffer.
pub const MAX_FRAME: usize = 1 << 20;
/// Bytes before the payload: kind + length.
pub const HEADER_LEN: usize = 5;
/// Protocol/agent version reported in `Pong`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Frame kind bytes. Client->agent kinds have the high bit clear, agent->client set.
pub mod kind {
    pub const REQUEST: u8 = 0x01;
    pub const STDIN: u8 = 0x02;
    pub const STDIN_EOF: u8 = 0x03;
    pub const RESIZE: u8 = 0x04;
    pub const SIGNAL: u8 = 0x05;
    pub const PONG: u8 = 0x81;
    pub const STARTED: u8 = 0x82;
    pub const STDOUT: u8 = 0x83;
    pub const STDERR: u8 = 0x84;
    pub const EXIT: u8 = 0x85;
    pub const ERROR: u8 = 0x86;
    pub const EXIT_SIGNAL: u8 = 0x87;
}

/// Human name of a frame kind, for error messages.
pub fn kind_name(k: u8) -> &'static str {
    match k {
        kind::REQUEST => "request",
        kind::STDIN => "stdin",
        kind::STDIN_EOF => "stdin-eof",
        kind::RESIZE => "resize",
        kind::SIGNAL => "signal",
        kind::PONG => "pong",
        kind::STARTED => "started",
        kind::STDOUT => "stdout",
        kind::STDERR => "stderr",
        kind::EXIT => "exit",
        kind::ERROR => "error",
        kind::EXIT_SIGNAL => "exit-signal",
        _ => "unknown",
    }
}

/// What a caller asks the agent to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ExecRequest {
    /// argv; argv[0] is looked up in PATH when it has no slash.
    pub argv: Vec<String>,
    /// Extra environment on top of the workspace's default environment.
    pub env: Vec<(String, String)>,
    /// Working directory; the image's WorkingDir (or /) when `None`.
    pub cwd: Option<String>,
    /// User name or uid[:gid]; the image's User (or root) when `None`.
    pub user: Option<String>,
    /// Allocate a PTY (stdout and stderr are then one stream).
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
}

/// Output of a running session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Exit code; 128+signal when killed by a signal.
    Exit(i32),
}

/// The first frame of a connection says what the connection is for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Exec(ExecRequest),
}

/// Frames the client sends to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    Request(Request),
    Stdin(Vec<u8>),
    StdinEof,
    Resize { rows: u16, cols: u16 },
    Signal(i32),
}

/// Frames the agent sends to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMsg {
    Pong {
        version: String,
    },
    Started {
        pid: u32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
    /// Sent just before `Exit` when a signal killed the process (its number), so a client
    /// can tell `kill -TERM` from `exit 143`.
    ExitSignal(i32),
    /// The request failed; the session (if any) is over.
    Error(String),
}

/// A malformed or unreadable frame; after one the stream cannot be resynchronised.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("{} frame of {len} bytes is over the {MAX_FRAME} byte limit", kind_name(*kind))]
    TooLarge { kind: u8, len: usize },
    #[error("bad {} frame: {reason}", kind_name(*kind))]
    BadPayload { kind: u8, reason: String },
    #[error("{} frame sent in the wrong direction", kind_name(*kind))]
    WrongDirection { kind: u8 },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("frame i/o: {0}")]
    Io(#[from] io::Error),
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => e,
            FrameError::Truncated => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// A message that travels in one frame.
pub trait Message: Sized {
    /// Builds the message from a frame whose header was already validated.
    fn decode(kind: u8, payload: &[u8]) -> Result<Self, FrameError>;
    /// Kind byte and payload of the message.
    fn to_parts(&self) -> Result<(u8, Vec<u8>), FrameError>;

    /// The whole frame, header included, ready to write in one call.
    fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let (k, payload) = self.to_parts()?;
        encode_frame(k, &payload)
    }
}

/// Builds a frame; fails rather than produce one the peer would reject.
pub fn encode_frame(k: u8, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            kind: k,
            len: payload.len(),
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(k);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Validates a header so garbage is rejected before its payload is buffered.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(u8, usize), FrameError> {
    let k = h[0];
    if kind_name(k) == "unknown" {
        return Err(FrameError::UnknownKind(k));
    }
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { kind: k, len });
    }
    Ok((k, len))
}

/// Reads one frame from a blocking reader; `None` on a clean end of stream.
pub fn read_frame<R: io::Read>(r: &mut R) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (k, len) = parse_header(&h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(Some((k, payload)))
}

/// Reassembles frames from bytes read in arbitrary chunks (non-blocking or async reads).
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// True when bytes of an incomplete frame are buffered (EOF now means truncation).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
        let Some(h) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let (k, len) = parse_header(h)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some((k, payload)))
    }

    /// The next complete message, if one is buffered.
    pub fn next_msg<M: Message>(&mut self) -> Result<Option<M>, FrameError> {
        match self.next_frame()? {
            Some((k, payload)) => M::decode(k, &payload).map(Some),
            None => Ok(None),
        }
    }
}

fn fixed<const N: usize>(k: u8, payload: &[u8]) -> Result<[u8; N], FrameError> {
    payload.try_into().map_err(|_| FrameError::BadPayload {
        kind: k,
        reason: format!("want {N} bytes, got {}", payload.len()),
    })
}

fn utf8(k: u8, payload: &[u8]) -> Result<String, FrameError> {
    String::from_utf8(payload.to_vec()).map_err(|e| FrameError::BadPayload {
        kind: k,
        reason: e.to_string(),
    })
}

impl Message for ClientMsg {
    fn decode(k: u8, payload: &[u8]) -> Result<Self, FrameError> {
        Ok(match k {
            kind::REQUEST => ClientMsg::Request(serde_json::from_slice(payload).map_err(|e| {
                FrameError::BadPayload {
                    kind: k,
                    reason: e.to_string(),
                }
            })?),
            kind::STDIN => ClientMsg::Stdin(payload.to_vec()),
            kind::STDIN_EOF => {
                fixed::<0>(k, payload)?;
                ClientMsg::StdinEof
            }
            kind::RESIZE => {
                let b = fixed::<4>(k, payload)?;
                ClientMsg::Resize {
                    rows: u16::from_be_bytes([b[0], b[1]]),
                    cols: u16::from_be_bytes([b[2], b[3]]),
                }
            }
            kind::SIGNAL => ClientMsg::Signal(i32::from_be_bytes(fixed::<4>(k, payload)?)),
            k if kind_name(k) == "unknown" => return Err(FrameError::UnknownKind(k)),
            k => return Err(FrameError::WrongDirection { kind: k }),
        })
    }

    fn to_parts(&self) -> Result<(u8, Vec<u8>), FrameError> {
        Ok(match self {
            ClientMsg::Request(r) => (
                kind::REQUEST,
                serde_json::to_vec(r).map_err(|e| FrameError::BadPayload {
                    kind: kind::REQUEST,
                    reason: e.to_string(),
                })?,
            ),
            ClientMsg::Stdin(d) => (kind::STDIN, d.clone()),
            ClientMsg::StdinEof => (kind::STDIN_EOF, Vec::new()),
            ClientMsg::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                (kind::RESIZE, p)
            }
            ClientMsg::Signal(s) => (kind::SIGNAL, s.to_be_bytes().to_vec()),
        })
    }
}

impl Message for AgentMsg {
    fn decode(k: u8, payload: &[u8]) -> Result<Self, FrameError> {
        Ok(match k {
            kind::PONG => AgentMsg::Pong {
                version: utf8(k, payload)?,
            },
            kind::STARTED => AgentMsg::Started {
                pid: u32::from_be_bytes(fixed::<4>(k, payload)?),
            },
            kind::STDOUT => AgentMsg::Stdout(payload.to_vec()),
            kind::STDERR => AgentMsg::Stderr(payload.to_vec()),
            kind::EXIT => AgentMsg::Exit(i32::from_be_bytes(fixed::<4>(k, payload)?)),
            kind::EXIT_SIGNAL => AgentMsg::ExitSignal(i32::from_be_bytes(fixed::<4>(k, payload)?)),
            kind::ERROR => AgentMsg::Error(utf8(k, payload)?),
            k if kind_name(k) == "unknown" => return Err(FrameError::UnknownKind(k)),
            k => return Err(FrameError::WrongDirection { kind: k }),
        })
    }

    fn to_parts(&self) -> Result<(u8, Vec<u8>), FrameError> {
        Ok(match self {
            AgentMsg::Pong { version } => (kind::PONG, version.as_bytes().to_vec()),
            AgentMsg::Started { pid } => (kind::STARTED, pid.to_be_bytes().to_vec()),
            AgentMsg::Stdout(d) => (kind::STDOUT, d.clone()),
            AgentMsg::Stderr(d) => (kind::STDERR, d.clone()),
            AgentMsg::Exit(c) => (kind::EXIT, c.to_be_bytes().to_vec()),
            AgentMsg::ExitSignal(n) => (kind::EXIT_SIGNAL, n.to_be_bytes().to_vec()),
            AgentMsg::Error(m) => (kind::ERROR, m.as_bytes().to_vec()),
        })
    }
}

#[cfg(feature = "client")]
pub mod client {
    //! Async client for the node side.
    use super::{AgentMsg, ClientMsg, Event, ExecRequest, FrameBuf, Message, Request, MAX_FRAME};
    use std::io;
    use std::path::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::UnixStream;

    async fn connect(socket: &Path) -> io::Result<UnixStream> {
        UnixStream::connect(socket).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("connect to agent {}: {e}", socket.display()),
            )
        })
    }

    async fn send<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &ClientMsg) -> io::Result<()> {
        w.write_all(&msg.encode()?).await
    }

    /// Input to a session whose process already ended is dropped, not an error: the agent
    /// closes the connection after the exit status, which can beat the caller's next write;
    /// the reader still delivers every byte of output and the exit code.
    async fn send_input<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &ClientMsg) -> io::Result<()> {
        match send(w, msg).await {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Connects to an agent socket and checks it answers.
    pub async fn ping(socket: &Path) -> io::Result<()> {
        ping_version(socket).await.map(|_| ())
    }

    /// Like [`ping`], returning the agent's version.
    pub async fn ping_version(socket: &Path) -> io::Result<String> {
        let stream = connect(socket).await?;
        let (rd, mut wr) = stream.into_split();
        send(&mut wr, &ClientMsg::Request(Request::Ping)).await?;
        let mut reader = ExecReader::new(rd);
        match reader.next_msg().await? {
            AgentMsg::Pong { version } => Ok(version),
            AgentMsg::Error(m) => Err(io::Error::other(m)),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts a session.
    pub async fn exec(socket: &Path, req: &ExecRequest) -> io::Result<ExecSession> {
        exec_on(connect(socket).await?, req).await
    }

    /// Connects through an already-open socket (the node opens the path safely itself).
    pub async fn exec_on(
        stream: tokio::net::UnixStream,
        req: &ExecRequest,
    ) -> io::Result<ExecSession> {
        let (rd, mut wr) = stream.into_split();
        send(&mut wr, &ClientMsg::Request(Request::Exec(req.clone()))).await?;
        let mut reader = ExecReader::new(rd);
        match reader.next_msg().await? {
            AgentMsg::Started { pid } => Ok(ExecSession {
                pid,
                writer: ExecWriter { wr },
                reader,
            }),
            AgentMsg::Error(m) => Err(io::Error::other(m)),
            other => Err(unexpected(&other)),
        }
    }

    fn unexpected(msg: &AgentMsg) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected agent message {msg:?}"),
        )
    }

    #[derive(Debug)]
    pub struct ExecSession {
        pid: u32,
        writer: ExecWriter,
        reader: ExecReader,
    }
    impl ExecSession {
        /// Pid of the session's process, as seen inside the workspace.
        pub fn pid(&self) -> u32 {
            self.pid
        }

        pub fn split(self) -> (ExecWriter, ExecReader) {
            (self.writer, self.reader)
        }
    }

    /// Input side of a session. Its methods are not cancel-safe (a frame may be half sent).
    #[derive(Debug)]
    pub struct ExecWriter {
        wr: OwnedWriteHalf,
    }
    impl ExecWriter {
        pub async fn write_stdin(&mut self, data: &[u8]) -> io::Result<()> {
            for chunk in data.chunks(MAX_FRAME) {
                send_input(&mut self.wr, &ClientMsg::Stdin(chunk.to_vec())).await?;
            }
            Ok(())
        }
        /// Closes the process's stdin (on a tty: sends the EOF character).
        pub async fn close_stdin(&mut self) -> io::Result<()> {
            send_input(&mut self.wr, &ClientMsg::StdinEof).await
        }
        pub async fn resize(&mut self, rows: u16, cols: u16) -> io::Result<()> {
            send_input(&mut self.wr, &ClientMsg::Resize { rows, cols }).await
        }
        /// Sends `sig` to the session's process group.
        pub async fn signal(&mut self, sig: i32) -> io::Result<()> {
            send_input(&mut self.wr, &ClientMsg::Signal(sig)).await
        }
    }

    /// Output side of a session.
    #[derive(Debug)]
    pub struct ExecReader {
        rd: OwnedReadHalf,
        buf: FrameBuf,
        done: bool,
        signal: Option<i32>,
    }
    impl ExecReader {
        fn new(rd: OwnedReadHalf) -> Self {
            Self {
                rd,
                buf: FrameBuf::new(),
                done: false,
                signal: None,
            }
        }

        /// After `Event::Exit`: the signal that killed the process, if one did.
        pub fn exit_signal(&self) -> Option<i32> {
            self.signal
        }

        /// Cancel-safe: bytes read are kept in the buffer if the future is dropped.
        async fn next_msg(&mut self) -> io::Result<AgentMsg> {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                if let Some(msg) = self.buf.next_msg::<AgentMsg>()? {
                    return Ok(msg);
                }
                let n = self.rd.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "agent closed the connection before the session exited",
                    ));
                }
                self.buf.extend(&chunk[..n]);
            }
        }

        /// Next output; after `Event::Exit` the session is over. Cancel-safe.
        pub async fn next_event(&mut self) -> io::Result<Event> {
            if self.done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "session already exited",
                ));
            }
            let mut msg = self.next_msg().await?;
            if let AgentMsg::ExitSignal(n) = msg {
                self.signal = Some(n);
                msg = self.next_msg().await?;
            }
            match msg {
                AgentMsg::Stdout(d) => Ok(Event::Stdout(d)),
                AgentMsg::Stderr(d) => Ok(Event::Stderr(d)),
                AgentMsg::Exit(c) => {
                    self.done = true;
                    Ok(Event::Exit(c))
                }
                AgentMsg::Error(m) => {
                    self.done = true;
                    Err(io::Error::other(m))
                }
                other => Err(unexpected(&other)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_client(m: ClientMsg) {
        let bytes = m.encode().unwrap();
        let mut fb = FrameBuf::new();
        // Feed byte by byte to exercise reassembly.
        for (i, b) in bytes.iter().enumerate() {
            assert!(
                fb.next_msg::<ClientMsg>().unwrap().is_none(),
                "frame complete early at {i}"
            );
            fb.extend(&[*b]);
        }
        assert_eq!(fb.next_msg::<ClientMsg>().unwrap(), Some(m.clone()));
        assert!(!fb.has_partial());
        let (k, p) = read_frame(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(ClientMsg::decode(k, &p).unwrap(), m);
    }

    fn roundtrip_agent(m: AgentMsg) {
        let bytes = m.encode().unwrap();
        let mut fb = FrameBuf::new();
        fb.extend(&bytes);
        fb.extend(&bytes);
        assert_eq!(fb.next_msg::<AgentMsg>().unwrap(), Some(m.clone()));
        assert_eq!(fb.next_msg::<AgentMsg>().unwrap(), Some(m));
        assert_eq!(fb.next_msg::<AgentMsg>().unwrap(), None);
    }

    #[test]
    fn client_messages_round_trip() {
        roundtrip_client(ClientMsg::Request(Request::Ping));
        roundtrip_client(ClientMsg::Request(Request::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b=c".into())],
            cwd: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            tty: true,
            rows: 24,
            cols: 80,
        })));
        roundtrip_client(ClientMsg::Stdin(b"\x00\xffdata".to_vec()));
        roundtrip_client(ClientMsg::Stdin(Vec::new()));
        roundtrip_client(ClientMsg::StdinEof);
        roundtrip_client(ClientMsg::Resize {
            rows: 65535,
            cols: 1,
        });
        roundtrip_client(ClientMsg::Signal(-3));
    }

    #[test]
    fn agent_messages_round_trip() {
        roundtrip_agent(AgentMsg::Pong {
            version: VERSION.into(),
        });
        roundtrip_agent(AgentMsg::Started { pid: u32::MAX });
        roundtrip_agent(AgentMsg::Stdout(vec![1, 2, 3]));
        roundtrip_agent(AgentMsg::Stderr(vec![0; MAX_FRAME]));
        roundtrip_agent(AgentMsg::Exit(137));
        roundtrip_agent(AgentMsg::ExitSignal(15));
        roundtrip_agent(AgentMsg::Error("user nobody2 not found".into()));
    }

    #[test]
    fn request_json_is_tagged_and_lenient() {
        let ping = serde_json::to_string(&Request::Ping).unwrap();
        assert_eq!(ping, r#"{"op":"ping"}"#);
        let r: Request = serde_json::from_str(r#"{"op":"exec","argv":["true"]}"#).unwrap();
        assert_eq!(
            r,
            Request::Exec(ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            })
        );
    }

    #[test]
    fn oversize_frames_are_rejected_from_the_header() {
        let mut fb = FrameBuf::new();
        let mut h = vec![kind::STDOUT];
        h.extend_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
        fb.extend(&h);
        let err = fb.next_frame().unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { kind: kind::STDOUT, len } if len == MAX_FRAME + 1)
        );
        assert!(err.to_string().contains("stdout frame"), "{err}");
        assert!(matches!(
            encode_frame(kind::STDIN, &vec![0; MAX_FRAME + 1]),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            read_frame(&mut &h[..]),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        // Unknown kind.
        let mut fb = FrameBuf::new();
        fb.extend(b"GET / HTTP/1.1\r\n");
        assert!(matches!(
            fb.next_frame(),
            Err(FrameError::UnknownKind(b'G'))
        ));
        // Wrong direction.
        let exit = AgentMsg::Exit(0).encode().unwrap();
        let mut fb = FrameBuf::new();
        fb.extend(&exit);
        assert!(matches!(
            fb.next_msg::<ClientMsg>(),
            Err(FrameError::WrongDirection { kind: kind::EXIT })
        ));
        // Wrong payload sizes and contents.
        for (k, p) in [
            (kind::RESIZE, &b"\x00\x01\x02"[..]),
            (kind::SIGNAL, &b""[..]),
            (kind::STDIN_EOF, &b"x"[..]),
            (kind::REQUEST, &b"{not json"[..]),
            (kind::REQUEST, &br#"{"op":"format_disk"}"#[..]),
        ] {
            let err = ClientMsg::decode(k, p).unwrap_err();
            assert!(
                matches!(err, FrameError::BadPayload { .. }),
                "{k:#x}: {err}"
            );
        }
        for (k, p) in [
            (kind::EXIT, &b"\x00"[..]),
            (kind::STARTED, &b"12345"[..]),
            (kind::ERROR, &b"\xff\xfe"[..]),
        ] {
            assert!(matches!(
                AgentMsg::decode(k, p),
                Err(FrameError::BadPayload { .. })
            ));
        }
        // Pseudo-random garbage never panics.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut fb = FrameBuf::new();
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            fb.extend(&bytes);
            while let Ok(Some(_)) = fb.next_msg::<AgentMsg>() {}
            let _ = read_frame(&mut &bytes[..]);
        }
    }

    #[test]
    fn truncated_stream_is_an_error_but_clean_eof_is_not() {
        let bytes = ClientMsg::Signal(9).encode().unwrap();
        assert!(read_frame(&mut &b""[..]).unwrap().is_none());
        assert!(matches!(
            read_frame(&mut &bytes[..3]),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &bytes[..7]),
            Err(FrameError::Truncated)
        ));
        let mut fb = FrameBuf::new();
        fb.extend(&bytes[..7]);
        assert!(fb.next_frame().unwrap().is_none());
        assert!(fb.has_partial());
    }

    #[cfg(feature = "client")]
    #[tokio::test]
    async fn client_surfaces_agent_error_as_io_error() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("hearth-proto-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _c = Cleanup(dir.clone());
        let sock = dir.join("a.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let (k, p) = read_frame(&mut s).unwrap().unwrap();
            let req = ClientMsg::decode(k, &p).unwrap();
            s.write_all(
                &AgentMsg::Error("user nobody2 not found".into())
                    .encode()
                    .unwrap(),
            )
            .unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            req
        });
        let req = ExecRequest {
            argv: vec!["id".into()],
            user: Some("nobody2".into()),
            ..Default::default()
        };
        let err = client::exec(&sock, &req).await.unwrap_err();
        assert_eq!(err.to_string(), "user nobody2 not found");
        assert_eq!(
            server.join().unwrap(),
            ClientMsg::Request(Request::Exec(req))
        );
    }
}
