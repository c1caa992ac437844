//! Runs iproute2, iptables and nft, keeping the command line and stderr for errors.

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::NetError;

struct CommandLine<'a>(&'a str, &'a [&'a str]);

impl fmt::Display for CommandLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        for a in self.1 {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    run_inner(program, args, None)
}

pub(crate) fn run_stdin(program: &str, args: &[&str], stdin: &str) -> Result<String, NetError> {
    run_inner(program, args, Some(stdin))
}

/// iptables exit status 4 means a resource problem (a concurrent nft transaction); retried.
const IPTABLES_RETRIES: usize = 5;

fn run_inner(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let command = CommandLine(program, args).to_string();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| NetError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            tracing::trace!(command, "ok");
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let is_iptables = program.starts_with("iptables");
        if is_iptables && out.status.code() == Some(4) && attempt < IPTABLES_RETRIES {
            std::thread::sleep(std::time::Duration::from_millis(50 * attempt as u64));
            continue;
        }
        return Err(NetError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_failures_carry_stderr() {
        let err = run("ip", &["link", "show", "dev", "hnosuch0"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ip link show dev hnosuch0"), "{msg}");
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(matches!(
            run("hearth-no-such-binary", &[]),
            Err(NetError::Spawn { .. })
        ));
    }
}
