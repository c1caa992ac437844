//! `hearth-agent ssh-agent-relay`: the workspace side of SSH agent forwarding.
//!
//! Listens on a fresh unix socket (`/tmp/hearth-ssh-*/agent.sock`, directory 0700, owned by
//! the session's user) and carries every connection to it over stdin/stdout, where the SSH
//! gateway opens an agent channel to the client per connection. Frames both ways:
//! `[kind u8][connection id u32 BE][length u32 BE][payload]`; kinds are `L` (listening,
//! payload = socket path; first frame out), `O` (a connection opened), `D` (data) and `C`
//! (closed). Ends, removing the socket, when stdin closes or on SIGHUP/SIGTERM/SIGINT.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Largest payload accepted from the gateway (agent messages are far smaller).
const MAX_FRAME: usize = 256 * 1024;
/// Connections at once; a client holding more waits in the listen backlog.
const MAX_CONNS: usize = 64;

type Out = Arc<Mutex<io::Stdout>>;
type Conns = Arc<Mutex<HashMap<u32, UnixStream>>>;

fn send(out: &Out, kind: u8, id: u32, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let mut o = out
        .lock()
        .map_err(|_| io::Error::other("stdout lock poisoned"))?;
    o.write_all(&frame)?;
    o.flush()
}

fn random_hex() -> io::Result<String> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub fn serve() -> Result<(), String> {
    let dir = PathBuf::from(format!(
        "/tmp/hearth-ssh-{}",
        random_hex().map_err(|e| format!("agent relay: random name: {e}"))?
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("agent relay: mkdir {}: {e}", dir.display()))?;
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("agent relay: bind {}: {e}", path.display()))?;
    // A hang-up or kill request (the session ended) removes the socket too: the signals
    // are blocked here, before any thread exists, and taken by one waiting thread.
    let signals: nix::sys::signal::SigSet = [
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ]
    .into_iter()
    .collect();
    signals
        .thread_block()
        .map_err(|e| format!("agent relay: block signals: {e}"))?;
    {
        let (path, dir) = (path.clone(), dir.clone());
        std::thread::spawn(move || {
            let _ = signals.wait();
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir(&dir);
            std::process::exit(0);
        });
    }
    let out: Out = Arc::new(Mutex::new(io::stdout()));
    let conns: Conns = Arc::new(Mutex::new(HashMap::new()));
    send(&out, b'L', 0, path.to_string_lossy().as_bytes())
        .map_err(|e| format!("agent relay: {e}"))?;

    {
        let (out, conns) = (out.clone(), conns.clone());
        std::thread::spawn(move || accept(listener, out, conns));
    }
    let res = from_gateway(&conns);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    res
}

fn accept(listener: UnixListener, out: Out, conns: Conns) {
    let mut next: u32 = 0;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let full = conns.lock().map(|c| c.len() >= MAX_CONNS).unwrap_or(true);
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        if full {
            continue;
        }
        next = next.wrapping_add(1);
        let id = next;
        if let Ok(mut c) = conns.lock() {
            c.insert(id, stream);
        }
        if send(&out, b'O', id, &[]).is_err() {
            return;
        }
        let (out, conns) = (out.clone(), conns.clone());
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if send(&out, b'D', id, &buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            if conns
                .lock()
                .map(|mut c| c.remove(&id).is_some())
                .unwrap_or(false)
            {
                let _ = send(&out, b'C', id, &[]);
            }
        });
    }
}

/// Delivers the gateway's frames to their connections until stdin closes.
fn from_gateway(conns: &Conns) -> Result<(), String> {
    let mut input = io::stdin().lock();
    loop {
        let mut head = [0u8; 9];
        match input.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("agent relay: read: {e}")),
        }
        let id = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if len > MAX_FRAME {
            return Err(format!("agent relay: frame of {len} bytes refused"));
        }
        let mut payload = vec![0u8; len];
        input
            .read_exact(&mut payload)
            .map_err(|e| format!("agent relay: read: {e}"))?;
        let Ok(mut c) = conns.lock() else {
            return Err("agent relay: lock poisoned".into());
        };
        match head[0] {
            b'D' => {
                if let Some(s) = c.get_mut(&id) {
                    if s.write_all(&payload).is_err() {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
            b'C' => {
                if let Some(s) = c.remove(&id) {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            }
            _ => {}
        }
    }
}
