//! `hearth ssh-key add|ls|rm`, `hearth ssh` and `hearth config-ssh`.
//!
//! The OpenSSH client does the connecting; hearth only tells it where the gateway is and
//! which host key to expect (kept in `~/.ssh/hearth_known_hosts`, from the API, so the first
//! connection needs no trust-on-first-use prompt).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hearth_api::{AddSshKey, SshInfo};

use super::{print_table, Commands};

pub const BEGIN: &str =
    "# --- BEGIN HEARTH (written by `hearth config-ssh`; edits here are replaced) ---";
pub const END: &str = "# --- END HEARTH ---";
/// Host key file hearth writes beside the user's own `known_hosts`.
const KNOWN_HOSTS: &str = "hearth_known_hosts";

/// The gateway's host and port as the client should dial them.
struct Gateway {
    host: String,
    port: u16,
    host_key: String,
}

fn ssh_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set: cannot find ~/.ssh")?;
    Ok(PathBuf::from(home).join(".ssh"))
}

/// Writes `data` to `path` through a temporary file and a rename, so a crash leaves the
/// old file or the new one, never half of either.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("path has no parent")?;
    let tmp = dir.join(format!(
        ".{}.hearth-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

fn ensure_ssh_dir() -> anyhow::Result<PathBuf> {
    let dir = ssh_dir()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// `known_hosts` name of the gateway: `[host]:port`, as ssh looks it up.
fn known_host_name(g: &Gateway) -> String {
    if g.port == 22 {
        g.host.clone()
    } else {
        format!("[{}]:{}", g.host, g.port)
    }
}

/// Puts the gateway's current host key in `~/.ssh/hearth_known_hosts` (other lines kept).
fn write_known_host(g: &Gateway) -> anyhow::Result<PathBuf> {
    let dir = ensure_ssh_dir()?;
    let path = dir.join(KNOWN_HOSTS);
    let name = known_host_name(g);
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(name.as_str()))
        .map(str::to_string)
        .collect();
    lines.push(format!("{name} {}", g.host_key));
    let new = lines.join("\n") + "\n";
    if new != old {
        write_atomic(&path, new.as_bytes(), 0o600)?;
    }
    Ok(path)
}

/// Replaces hearth's block in an ssh config (or appends one), leaving every other line as
/// it was. An empty `block` removes hearth's block.
pub fn replace_block(config: &str, block: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut inside = false;
    let mut placed = false;
    for line in config.lines() {
        if line.trim() == BEGIN {
            if inside {
                bail!("ssh config has two `{BEGIN}` lines without an end marker between them: fix it by hand");
            }
            inside = true;
            if !placed && !block.is_empty() {
                out.push_str(block);
                placed = true;
            }
            continue;
        }
        if line.trim() == END {
            if !inside {
                bail!("ssh config has `{END}` without its begin marker: fix it by hand");
            }
            inside = false;
            continue;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    if inside {
        bail!("ssh config has `{BEGIN}` without its end marker: fix it by hand");
    }
    if !placed && !block.is_empty() {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(block);
    }
    Ok(out)
}

impl Commands {
    async fn gateway(&self) -> anyhow::Result<Gateway> {
        let SshInfo {
            port,
            address,
            host_key,
        } = self.api.ssh_info().await?;
        let (Some(port), Some(address), Some(host_key)) = (port, address, host_key) else {
            bail!("the server runs without an ssh gateway (start it with --ssh-listen ADDR)");
        };
        let unspecified = address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_unspecified());
        // A gateway on all addresses is reached where the API is.
        let host = if unspecified {
            url_host(self.api.base()).unwrap_or_else(|| "127.0.0.1".into())
        } else {
            address
        };
        Ok(Gateway {
            host,
            port,
            host_key,
        })
    }

    pub async fn ssh_key_add(&self, file: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let key = self
            .api
            .add_ssh_key(&AddSshKey {
                public_key: text.trim().to_string(),
            })
            .await?;
        println!(
            "added {} key {} ({}) for user {}",
            key.algorithm, key.fingerprint, key.id, key.user
        );
        Ok(())
    }

    pub async fn ssh_key_ls(&self, json: bool) -> anyhow::Result<()> {
        let keys = self.api.ssh_keys().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&keys)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = keys
            .into_iter()
            .map(|k| vec![k.id, k.algorithm, k.fingerprint, k.comment, k.created_at])
            .collect();
        print_table(&["ID", "TYPE", "FINGERPRINT", "COMMENT", "ADDED"], &rows);
        Ok(())
    }

    pub async fn ssh_key_rm(&self, key: &str) -> anyhow::Result<()> {
        self.api.remove_ssh_key(key).await?;
        println!("removed ssh key {key}");
        Ok(())
    }

    /// Replaces this process with `ssh` to the workspace; returns only on failure.
    pub async fn ssh(&self, name: &str, command: &[String]) -> anyhow::Result<i32> {
        use std::os::unix::process::CommandExt;
        // Fails early with the API's message for a workspace that does not exist.
        self.api.workspace(name).await?;
        let g = self.gateway().await?;
        let known = write_known_host(&g)?;
        let mut cmd = std::process::Command::new("ssh");
        cmd.arg("-p")
            .arg(g.port.to_string())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .arg("-o")
            .arg("StrictHostKeyChecking=yes")
            .arg(format!("{name}@{}", g.host));
        if !command.is_empty() {
            cmd.arg("--").args(command);
        }
        let e = cmd.exec();
        bail!("cannot run ssh: {e} (install the OpenSSH client)")
    }

    /// Writes a `Host hearth.NAME` entry per workspace into `~/.ssh/config`.
    pub async fn config_ssh(&self) -> anyhow::Result<()> {
        let g = self.gateway().await?;
        let known = write_known_host(&g)?;
        let mut names: Vec<String> = self
            .api
            .workspaces()
            .await?
            .into_iter()
            .map(|w| w.name)
            .collect();
        names.sort();
        let mut block = format!("{BEGIN}\n");
        for n in &names {
            block.push_str(&format!(
                "Host hearth.{n}\n    HostName {}\n    Port {}\n    User {n}\n    UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n",
                g.host,
                g.port,
                known.display()
            ));
        }
        block.push_str(END);
        block.push('\n');
        let dir = ensure_ssh_dir()?;
        let path = dir.join("config");
        let old = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let new = replace_block(&old, &block)?;
        if new == old {
            println!(
                "{} is up to date ({} workspaces)",
                path.display(),
                names.len()
            );
            return Ok(());
        }
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o600);
        write_atomic(&path, new.as_bytes(), mode)?;
        println!(
            "wrote {} workspaces to {} (connect with: ssh hearth.NAME)",
            names.len(),
            path.display()
        );
        Ok(())
    }
}

/// Host part of a base URL such as `http://10.0.0.5:7070`.
fn url_host(base: &str) -> Option<String> {
    let rest = base.split_once("://")?.1;
    let hostport = rest.split('/').next()?;
    if let Some(v6) = hostport.strip_prefix('[') {
        return Some(v6.split(']').next()?.to_string());
    }
    Some(hostport.split(':').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(hosts: &[&str]) -> String {
        let mut b = format!("{BEGIN}\n");
        for h in hosts {
            b.push_str(&format!("Host hearth.{h}\n    Port 2222\n"));
        }
        b + END + "\n"
    }

    #[test]
    fn the_block_is_appended_then_replaced_in_place_and_other_lines_stay() {
        let user = "Host github.com\n    User git\n";
        let once = replace_block(user, &block(&["a", "b"])).unwrap();
        assert!(once.starts_with(user));
        assert!(once.contains("Host hearth.a\n") && once.contains("Host hearth.b\n"));
        // Idempotent: the same block again changes nothing.
        assert_eq!(replace_block(&once, &block(&["a", "b"])).unwrap(), once);
        // A removed workspace disappears; text after the block stays after it.
        let with_tail = format!("{once}Host other\n    Port 1\n");
        let next = replace_block(&with_tail, &block(&["a"])).unwrap();
        assert!(!next.contains("hearth.b"));
        assert!(next.starts_with(user));
        assert!(next.ends_with("Host other\n    Port 1\n"));
        assert_eq!(next.matches(BEGIN).count(), 1);
    }

    #[test]
    fn broken_markers_are_refused_not_guessed() {
        assert!(replace_block(&format!("{BEGIN}\nHost x\n"), &block(&["a"])).is_err());
        assert!(replace_block(&format!("Host x\n{END}\n"), &block(&["a"])).is_err());
    }

    #[test]
    fn api_host_is_taken_from_the_url() {
        assert_eq!(
            url_host("http://10.1.2.3:7070").as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(url_host("http://[::1]:7070/").as_deref(), Some("::1"));
    }
}
