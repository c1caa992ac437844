//! Which TCP ports listen inside a workspace, read from its PID 1's
//! `/proc/<pid>/net/tcp{,6}`: the kernel's socket table of the workspace's netns.
//!
//! Read on demand from the host instead of asked of the agent: it is one small file read
//! (no protocol, no agent round trip), current at the moment of the call, and cannot be
//! faked by a process inside.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Inner;
use crate::{ListeningPort, NodeError, RunState, WorkspaceSpec};

/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

impl Inner {
    pub(super) fn listening_ports(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Vec<ListeningPort>, NodeError> {
        let st = self.status(spec)?;
        let pid = match (st.state, st.pid) {
            (RunState::Running, Some(pid)) => pid,
            _ => {
                return Err(NodeError::Conflict(format!(
                    "workspace {} is not running (hearth start {})",
                    spec.name, spec.name
                )))
            }
        };
        let mut out = Vec::new();
        for file in ["tcp", "tcp6"] {
            let path = format!("/proc/{pid}/net/{file}");
            match std::fs::read_to_string(&path) {
                Ok(table) => out.extend(parse_listening(&table)),
                // No IPv6 in the workspace's kernel config: nothing listens there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && file == "tcp6" => {}
                Err(e) => return Err(NodeError::io("read", path)(e)),
            }
        }
        out.sort_by_key(|p| (p.port, p.address.is_ipv6(), p.address));
        out.dedup();
        Ok(out)
    }
}

/// The listening sockets of a `/proc/net/tcp` or `tcp6` table; lines that do not parse are
/// skipped (the format is the kernel's, stable for decades).
pub(crate) fn parse_listening(table: &str) -> Vec<ListeningPort> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if state != TCP_LISTEN {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            Some(ListeningPort {
                port: u16::from_str_radix(port, 16).ok()?,
                address: parse_addr(addr)?,
            })
        })
        .collect()
}

/// An address as the kernel prints it: the bytes of each 32-bit word in host (little
/// endian) order, in hex.
fn parse_addr(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::swap_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&hex[i * 8..i * 8 + 8])?.to_be_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_from_proc_net_tables() {
        // Lines as a kernel wrote them: 127.0.0.1:8080 and 0.0.0.0:22 listening, one
        // established connection (st 01) that must not count.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 1236 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(
            parse_listening(v4),
            [
                ListeningPort {
                    port: 8080,
                    address: "127.0.0.1".parse().unwrap()
                },
                ListeningPort {
                    port: 22,
                    address: "0.0.0.0".parse().unwrap()
                },
            ]
        );
        // [::1]:3000 and [::]:5173.
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000000000000000000000000000:1435 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
";
        assert_eq!(
            parse_listening(v6),
            [
                ListeningPort {
                    port: 3000,
                    address: "::1".parse().unwrap()
                },
                ListeningPort {
                    port: 5173,
                    address: "::".parse().unwrap()
                },
            ]
        );
        assert!(parse_listening("header\n   0: garbage\n").is_empty());
    }
}
