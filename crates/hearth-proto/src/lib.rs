//! Wire protocol between the node and the in-workspace agent (`hearth-agent`).
//!
//! The agent side is synchronous std code (it must build static and stay small); the
//! async client used by the node lives behind the `client` feature.
//!
//! PLACEHOLDER: the framing and messages are filled in by the proto/agent work; the
//! client API below is the contract the node and server code against.

use serde::{Deserialize, Serialize};

/// What a caller asks the agent to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
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

#[cfg(feature = "client")]
pub mod client {
    //! Async client for the node side.
    use super::{Event, ExecRequest};
    use std::io;
    use std::path::Path;

    /// Connects to an agent socket and checks it answers.
    pub async fn ping(_socket: &Path) -> io::Result<()> {
        todo!()
    }

    /// Starts a session.
    pub async fn exec(_socket: &Path, _req: &ExecRequest) -> io::Result<ExecSession> {
        todo!()
    }

    /// Connects through an already-open socket (the node opens the path safely itself).
    pub async fn exec_on(_stream: tokio::net::UnixStream, _req: &ExecRequest) -> io::Result<ExecSession> {
        todo!()
    }

    #[derive(Debug)]
    pub struct ExecSession;
    impl ExecSession {
        pub fn split(self) -> (ExecWriter, ExecReader) {
            todo!()
        }
    }
    #[derive(Debug)]
    pub struct ExecWriter;
    impl ExecWriter {
        pub async fn write_stdin(&mut self, _data: &[u8]) -> io::Result<()> {
            todo!()
        }
        pub async fn close_stdin(&mut self) -> io::Result<()> {
            todo!()
        }
        pub async fn resize(&mut self, _rows: u16, _cols: u16) -> io::Result<()> {
            todo!()
        }
        pub async fn signal(&mut self, _sig: i32) -> io::Result<()> {
            todo!()
        }
    }
    #[derive(Debug)]
    pub struct ExecReader;
    impl ExecReader {
        /// Next output; after `Event::Exit` the session is over.
        pub async fn next_event(&mut self) -> io::Result<Event> {
            todo!()
        }
    }
}
