//! The workspace agent: installing the static binary workspaces run as PID 1, and
//! waiting for it to answer.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::NodeError;

/// How long a start may take until the agent answers.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Copies the agent next to the data so a rebuild of the source tree never changes a
/// running workspace's binary underneath it (rename gives a new inode).
pub(super) fn install_agent(src: &Path, dsts: &[&Path]) -> Result<(), NodeError> {
    let bytes = std::fs::read(src).map_err(|e| {
        NodeError::Invalid(format!(
            "agent binary {}: {e} (build it with scripts/build.sh or pass --agent)",
            src.display()
        ))
    })?;
    if has_interpreter(&bytes) {
        return Err(NodeError::Invalid(format!(
            "agent binary {} is dynamically linked and would not run in every image: \
             build it with scripts/build.sh (static) or pass --agent",
            src.display()
        )));
    }
    for dst in dsts {
        if std::fs::read(dst).ok().as_deref() == Some(&bytes[..]) {
            continue;
        }
        // A new inode: running workspaces keep executing the old one.
        let tmp = dst.with_extension("tmp");
        std::fs::write(&tmp, &bytes).map_err(NodeError::io("write", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(NodeError::io("chmod", &tmp))?;
        std::fs::rename(&tmp, dst).map_err(NodeError::io("install", *dst))?;
    }
    Ok(())
}

/// Whether an ELF64 executable asks for a dynamic loader (a PT_INTERP program header).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .and_then(|v| usize::try_from(v).ok())
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).any(|i| {
        let off = phoff.saturating_add(i.saturating_mul(phentsize));
        elf.get(off..off + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            == Some(PT_INTERP)
    })
}

/// Waits until the agent answers a ping; its console tail explains a failure. Plain
/// blocking socket calls: this runs on a blocking thread, with no async runtime.
///
/// The node made the listening socket before the runtime ran, so the connection queues
/// in its backlog until the agent accepts it: one ping waits exactly as long as the
/// agent takes to come up (no polling), and fails at once if the container is gone.
pub(super) fn wait_ready(socket: &Path, console: &Path) -> Result<(), NodeError> {
    ping(socket, READY_TIMEOUT).map_err(|e| {
        NodeError::Internal(format!(
            "workspace agent did not become ready: {e}; console: {}",
            crate::console::tail_text(console, 1024)
        ))
    })
}

fn ping(socket: &Path, timeout: Duration) -> std::io::Result<()> {
    use hearth_proto::{AgentMsg, ClientMsg, Message, Request};
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&ClientMsg::Request(Request::Ping).encode()?)?;
    let (kind, payload) = hearth_proto::read_frame(&mut s)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection",
        )
    })?;
    match AgentMsg::decode(kind, &payload)? {
        AgentMsg::Pong { .. } => Ok(()),
        AgentMsg::Error(m) => Err(std::io::Error::other(m)),
        other => Err(std::io::Error::other(format!(
            "unexpected answer to a ping: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn detects_dynamic_binaries() {
        let dynamic = std::fs::read("/bin/sh").unwrap();
        assert!(super::has_interpreter(&dynamic));
        let st = std::fs::read("/bin/busybox").unwrap();
        assert!(
            !super::has_interpreter(&st),
            "busybox-static has no interpreter"
        );
        assert!(!super::has_interpreter(b"not an elf"));
    }
}
