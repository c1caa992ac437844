//! Host-wide setup and teardown: fs.file-max, RLIMIT_NOFILE, the share tmpfs, the git
//! config for clones, and what workspaces learn from the host (resolv.conf).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hearth_runtime::mount;

use super::{mkdir, Inner};
use crate::NodeError;

/// Raises fs.file-max to the kernel's maximum (as systemd does at boot). The default,
/// about RAM/10 KiB, is one table for the whole host: a workspace opening files within
/// its memory limit could fill it, and then every other workspace gets ENFILE. Lifted,
/// open files are bounded per workspace by its memory cgroup, which is charged for them.
pub(super) fn lift_file_max() {
    const PATH: &str = "/proc/sys/fs/file-max";
    const MAX: u64 = i64::MAX as u64;
    match std::fs::read_to_string(PATH).map(|s| s.trim().parse::<u64>()) {
        Ok(Ok(v)) if v >= MAX => {}
        Ok(Ok(v)) => match std::fs::write(PATH, MAX.to_string()) {
            Ok(()) => tracing::info!(from = v, "raised fs.file-max"),
            Err(e) => tracing::warn!("cannot raise fs.file-max from {v}: {e}"),
        },
        other => tracing::warn!("cannot read fs.file-max: {other:?}"),
    }
}

/// Workspaces get `NOFILE_HARD` as their hard limit, but the runtime sets it from inside
/// their user namespace, where it cannot go above what it inherited: raise ours first.
/// Returns the hard limit workspaces can have (lower where we lack CAP_SYS_RESOURCE).
///
/// Our own soft limit goes up too (to at most `OWN_NOFILE`): the node holds a few fds per
/// running workspace (console pipe and file, init pidfd), so a shell's 1024 would run out
/// at a few hundred. Workspaces are unaffected: their bundle sets their limits.
pub(super) fn raise_nofile_hard() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const OWN_NOFILE: u64 = 1 << 16;
    let want = hearth_runtime::bundle::NOFILE_HARD;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return hearth_runtime::bundle::NOFILE_SOFT;
    };
    let (hard, ours) = if hard >= want {
        (want, hard)
    } else {
        match setrlimit(Resource::RLIMIT_NOFILE, soft.min(want), want) {
            Ok(()) => (want, want),
            Err(e) => {
                tracing::warn!("cannot raise RLIMIT_NOFILE to {want} ({e}): workspaces get {hard}");
                (hard, hard)
            }
        }
    };
    let own = soft.max(OWN_NOFILE.min(ours));
    if own > soft {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, own, ours) {
            tracing::warn!("cannot raise our soft RLIMIT_NOFILE to {own}: {e}");
        }
    }
    hard
}

/// Mounts the node's share tmpfs at `dir` unless it is there (it outlives node restarts:
/// running workspaces keep using its files). Not `nodev`: device nodes are bound in from
/// it; `nosuid`, small, and 0711 so workspace uids reach only the names they are given.
pub(super) fn mount_share(dir: &Path) -> Result<(), NodeError> {
    mkdir(dir, 0o711)?;
    if mount::is_mounted(dir)? {
        return Ok(());
    }
    nix::mount::mount(
        Some("hearth-share"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID,
        Some("mode=0711,size=64m"),
    )
    .map_err(|e| NodeError::io("mount tmpfs on", dir)(e.into()))
}

pub(super) fn resolv_conf() -> String {
    for f in ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"] {
        if let Ok(s) = std::fs::read_to_string(f) {
            let usable: Vec<&str> = s
                .lines()
                .filter(|l| {
                    !l.trim_start().starts_with("nameserver 127.") && !l.contains("nameserver ::1")
                })
                .collect();
            if usable
                .iter()
                .any(|l| l.trim_start().starts_with("nameserver"))
            {
                return usable.join("\n") + "\n";
            }
        }
    }
    "nameserver 1.1.1.1\n".into()
}

/// resolv.conf for fetches run in a netns (see [`crate::clone::NetJail`]): `None` when
/// the host's `/etc/resolv.conf` works there as it is (no loopback nameserver, which
/// would be the netns' own loopback), else [`resolv_conf`] written to the data dir.
pub(super) fn fetch_resolv(data: &Path) -> Result<Option<std::path::PathBuf>, NodeError> {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<&str> = host
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    let loopback = |s: &&str| s.starts_with("127.") || *s == "::1";
    if !servers.is_empty() && !servers.iter().any(loopback) {
        return Ok(None);
    }
    let path = data.join("fetch-resolv.conf");
    std::fs::write(&path, resolv_conf()).map_err(NodeError::io("write", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .map_err(NodeError::io("chmod", &path))?;
    Ok(Some(path))
}

/// Global config for clones: they run as a different uid than the source's owner, and
/// must never use command-running transports.
pub(super) fn write_gitconfig(path: &Path) -> Result<(), NodeError> {
    std::fs::write(
        path,
        "[safe]\n\tdirectory = *\n[protocol \"ext\"]\n\tallow = never\n[core]\n\thooksPath = /dev/null\n",
    )
    .map_err(NodeError::io("write", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(NodeError::io("chmod", path))
}

impl Inner {
    /// Stops every workspace and removes everything the node set up on the host; files stay.
    pub(super) fn teardown(&self) -> Result<(), NodeError> {
        let mut errors = Vec::new();
        for id in self.host.containers().unwrap_or_default() {
            if let Err(e) = self.stop(&id, false) {
                errors.push(e.to_string());
            }
        }
        // Stopped workspaces keep their disk mounted and their network; both go.
        if let Ok(rd) = std::fs::read_dir(&self.ws_root) {
            for e in rd.flatten() {
                self.hydrations.stop(&e.file_name().to_string_lossy());
                super::hydrate::release_keeper(&e.path().join(super::hydrate::KEEPER_FILE));
                if let Err(e) = self.unmount_all(&e.path()) {
                    errors.push(e.to_string());
                }
            }
        }
        for id in self.host.networks().unwrap_or_default() {
            if let Err(e) = self.host.remove_network(&id) {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = self.net.remove_probe() {
            errors.push(e.to_string());
        }
        if let Err(e) = self.net.teardown_host() {
            errors.push(e.to_string());
        }
        if let Err(e) = self.cgroups.remove_parent() {
            errors.push(e.to_string());
        }
        if let Err(e) = mount::unmount(&self.share) {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NodeError::Internal(errors.join("; ")))
        }
    }
}
