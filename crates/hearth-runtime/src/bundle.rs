//! The OCI runtime config (`config.json`) for a workspace container.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxIdMappingBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompBuilder, LinuxSyscallBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::{Result, RuntimeError};

/// Where the agent binary appears inside every workspace.
pub const AGENT_PATH: &str = "/.hearth/agent";

/// What varies between workspace containers.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub hostname: String,
    pub rootfs: PathBuf,
    pub uid_base: u32,
    pub id_range: u32,
    /// Network namespace to join (made by the node before start).
    pub netns: PathBuf,
    /// Host path of the static agent binary, bind-mounted read-only.
    pub agent: PathBuf,
    /// Files bind-mounted read-only over the same path inside (resolv.conf, hostname).
    pub files: Vec<(PathBuf, String)>,
    /// Environment of PID 1 (image Env plus HEARTH_* settings).
    pub env: Vec<String>,
    /// Hard RLIMIT_NOFILE (at most what the runtime inherits: it is set from inside the
    /// user namespace); the soft limit is `NOFILE_SOFT` or this, if lower.
    pub nofile_hard: u64,
}

/// Capabilities of root inside. They act only on what the workspace's user namespace
/// owns (its mount, pid, uts, ipc and cgroup namespaces, files in its id range, and any
/// network namespace it makes itself), so developers keep mount, ptrace and network
/// administration of their own box and of nested containers.
///
/// Left out because the kernel checks them against the initial user namespace, so inside
/// they grant nothing but would widen what a kernel bug could reach: `AUDIT_WRITE` (audit
/// netlink refuses non-initial user namespaces), `IPC_LOCK` and `SYS_RESOURCE` (mlock and
/// rlimit overrides use `capable()`; memory and pids are bounded by the cgroup anyway).
/// Never granted: `SYS_MODULE`, `SYS_RAWIO`, `SYS_BOOT`, `SYS_TIME`, `SYSLOG`, `MAC_*`,
/// `BPF`, `PERFMON`, `CHECKPOINT_RESTORE`, `SYS_PACCT`, `SYS_NICE`, `LEASE`,
/// `LINUX_IMMUTABLE`, `WAKE_ALARM`, `BLOCK_SUSPEND`, `SYS_TTY_CONFIG`, `NET_BROADCAST`,
/// `AUDIT_CONTROL`, `AUDIT_READ`, `IPC_OWNER`.
pub const CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    // Dropping capabilities from the bounding set (capsh, systemd units, sandboxes).
    Capability::Setpcap,
    Capability::NetBindService,
    // Both act only on network namespaces the workspace creates: the node-made one is
    // owned by the host's user namespace, so eth0, its addresses and raw sockets on it
    // stay out of reach.
    Capability::NetRaw,
    Capability::NetAdmin,
    Capability::SysChroot,
    // Debugging processes of other users inside; other workspaces are in other pid and
    // user namespaces.
    Capability::SysPtrace,
    // Mounts in the workspace's own mount namespace; the kernel refuses block devices and
    // non-userns filesystem types to a user namespace.
    Capability::SysAdmin,
    // Only whiteouts (0:0) can be made in a user namespace: nested overlay users need them.
    Capability::Mknod,
    // File capabilities written by package scripts (`setcap` in postinst) of the image.
    Capability::Setfcap,
];

/// Syscalls refused with EPERM. A deny-list over default-allow keeps every new syscall a
/// developer tool may use working; these are the ones that reach state the kernel does
/// not namespace, or wide attack surface no workspace needs:
/// - module, kexec, swap, accounting, quota, clock and syslog calls act on the whole host
///   (the capability checks already fail; this removes the code path);
/// - `bpf` and `perf_event_open`: unprivileged use is off on this class of host
///   (`unprivileged_bpf_disabled`, `perf_event_paranoid`), both are large attack surface;
/// - `keyctl`, `add_key`, `request_key`: the kernel keyring is not namespaced;
/// - `open_by_handle_at` / `name_to_handle_at`: file handles bypass the mount tree
///   (the shocker escape);
/// - `userfaultfd`: a classic tool for widening kernel race windows;
/// - `io_uring_*`: ops run without seccomp checks and have a long CVE history (Docker
///   blocks it too);
/// - `reboot`: in a pid namespace it only kills the workspace; `hearth stop` is the way;
/// - `iopl`, `ioperm`, `vm86*`, `uselib`, `nfsservctl`, `lookup_dcookie`, `_sysctl`:
///   hardware or obsolete interfaces.
///
/// Kept on purpose: `unshare`/`clone` with `CLONE_NEWUSER` (nested containers, sandboxes),
/// `mount` and the new mount API (own namespaces only), `ptrace` (debuggers; seccomp
/// cannot be bypassed through it since Linux 4.8), `setns`, `pivot_root`.
pub const BLOCKED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "adjtimex",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "syslog",
    "uselib",
    "userfaultfd",
    "vm86",
    "vm86old",
];

/// Default-allow filter with [`BLOCKED_SYSCALLS`] returning EPERM. All three x86 ABIs are
/// listed: a filter without the i386 ABI would let `int 0x80` callers skip the list.
pub fn seccomp() -> Result<LinuxSeccomp> {
    let b = |e: oci_spec::OciSpecError| RuntimeError::Bundle(e.to_string());
    let deny = LinuxSyscallBuilder::default()
        .names(
            BLOCKED_SYSCALLS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()
        .map_err(b)?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(vec![deny])
        .build()
        .map_err(b)
}

/// Host FUSE device, as (major, minor), when the host has one.
fn host_fuse() -> Option<(u64, u64)> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata("/dev/fuse").ok()?;
    if !md.file_type().is_char_device() {
        return None;
    }
    let rdev = md.rdev();
    Some((libc::major(rdev) as u64, libc::minor(rdev) as u64))
}

/// Makes `<bundle>/fuse`, a 0666 node of the host's FUSE device, for a bind mount over
/// `/dev/fuse`: a user namespace cannot mknod devices, and binding the host's own node
/// would carry its mode (often 0600 root, unusable inside). FUSE is built for
/// unprivileged users, and mounting it needs the workspace's own mount namespace.
fn fuse_node(dir: &Path) -> Result<Option<PathBuf>> {
    let Some((major, minor)) = host_fuse() else {
        return Ok(None);
    };
    let node = dir.join("fuse");
    let dev = libc::makedev(major as u32, minor as u32);
    match nix::sys::stat::stat(&node) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == dev => {}
        _ => {
            let _ = std::fs::remove_file(&node);
            nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                dev,
            )
            .map_err(|e| RuntimeError::io("mknod", &node, e.into()))?;
        }
    }
    // mknod honours the umask; the mode must be exact.
    std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .map_err(|e| RuntimeError::io("chmod", &node, e))?;
    Ok(Some(node))
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| RuntimeError::Bundle(e.to_string()))
}

pub const NOFILE_SOFT: u64 = 1024;
pub const NOFILE_HARD: u64 = 1 << 19;

/// The config for `spec`; `fuse` is a device node to bind over `/dev/fuse`.
pub fn build(spec: &BundleSpec, fuse: Option<&Path>) -> Result<Spec> {
    let b = |e: oci_spec::OciSpecError| RuntimeError::Bundle(e.to_string());
    let caps: std::collections::HashSet<Capability> = CAPS.iter().copied().collect();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(b)?,
        )
        .args(vec![AGENT_PATH.to_string()])
        // systemd's default for services: 1024 for select()-era programs, and up to
        // 2^19 for the tools that ask. The node lifts fs.file-max, so open files are
        // bounded by each workspace's memory cgroup (struct file is charged to it).
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(NOFILE_SOFT.min(spec.nofile_hard))
            .hard(spec.nofile_hard)
            .build()
            .map_err(b)?])
        .env(spec.env.clone())
        .cwd("/")
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps.clone())
                .inheritable(std::collections::HashSet::new())
                .ambient(std::collections::HashSet::new())
                .build()
                .map_err(b)?,
        )
        .no_new_privileges(false)
        .build()
        .map_err(b)?;

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        // The workspace's user namespace does not own the network namespace the node made,
        // so a fresh sysfs cannot be mounted; a read-only view is what rootless engines use.
        mount(
            "/sys",
            "none",
            "/sys",
            // rbind: inside a user namespace a plain bind of /sys would reveal what its
            // locked submounts cover, which the kernel refuses (runc fails with EINVAL).
            &["rbind", "nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/run",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=755", "size=65536k"],
        )?,
        mount(
            AGENT_PATH,
            "none",
            &path_str(&spec.agent)?,
            &["bind", "ro", "nosuid", "nodev"],
        )?,
    ];
    if let Some(node) = fuse {
        mounts.push(mount(
            "/dev/fuse",
            "none",
            &path_str(node)?,
            &["bind", "nosuid", "noexec"],
        )?);
    }
    for (host, dest) in &spec.files {
        mounts.push(mount(
            dest,
            "none",
            &path_str(host)?,
            &["bind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }

    let ns = |t: LinuxNamespaceType, path: Option<&Path>| {
        let mut nb = LinuxNamespaceBuilder::default().typ(t);
        if let Some(p) = path {
            nb = nb.path(p);
        }
        nb.build().map_err(b)
    };
    let map = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(spec.uid_base)
        .size(spec.id_range)
        .build()
        .map_err(b)?;
    let linux = LinuxBuilder::default()
        .namespaces(vec![
            ns(LinuxNamespaceType::Pid, None)?,
            ns(LinuxNamespaceType::Ipc, None)?,
            ns(LinuxNamespaceType::Uts, None)?,
            ns(LinuxNamespaceType::Mount, None)?,
            ns(LinuxNamespaceType::Cgroup, None)?,
            ns(LinuxNamespaceType::User, None)?,
            ns(LinuxNamespaceType::Network, Some(&spec.netns))?,
        ])
        .uid_mappings(vec![map])
        .gid_mappings(vec![map])
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .seccomp(seccomp()?)
        .build()
        .map_err(b)?;

    SpecBuilder::default()
        .version("1.0.2")
        .hostname(spec.hostname.clone())
        .root(
            RootBuilder::default()
                .path(&spec.rootfs)
                .readonly(false)
                .build()
                .map_err(b)?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(b)
}

/// Writes `config.json` (and the FUSE node it binds) into `dir` atomically.
pub fn write(dir: &Path, spec: &BundleSpec) -> Result<()> {
    let fuse = fuse_node(dir)?;
    let cfg = build(spec, fuse.as_deref())?;
    let json = serde_json::to_vec_pretty(&cfg).map_err(|e| RuntimeError::Bundle(e.to_string()))?;
    let tmp = dir.join("config.json.tmp");
    std::fs::write(&tmp, json).map_err(|e| RuntimeError::io("write", &tmp, e))?;
    let dst = dir.join("config.json");
    std::fs::rename(&tmp, &dst).map_err(|e| RuntimeError::io("rename", &dst, e))
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| RuntimeError::Bundle(format!("path {} is not UTF-8", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BundleSpec {
        BundleSpec {
            nofile_hard: NOFILE_HARD,
            hostname: "h".into(),
            rootfs: "/r".into(),
            uid_base: 1 << 20,
            id_range: 65536,
            netns: "/run/netns/x".into(),
            agent: "/a".into(),
            files: vec![],
            env: vec![],
        }
    }

    #[test]
    fn seccomp_denies_host_wide_syscalls_for_every_x86_abi() {
        let cfg = build(&spec(), None).unwrap();
        let sc = cfg.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActAllow);
        let arches = sc.architectures().as_ref().unwrap();
        assert!(arches.contains(&Arch::ScmpArchX86), "{arches:?}");
        let rules = sc.syscalls().as_ref().unwrap();
        let denied: Vec<&String> = rules
            .iter()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActErrno)
            .flat_map(|r| r.names())
            .collect();
        for name in [
            "kexec_load",
            "init_module",
            "bpf",
            "keyctl",
            "open_by_handle_at",
        ] {
            assert!(denied.iter().any(|d| *d == name), "{name} not denied");
        }
        for name in ["unshare", "mount", "ptrace", "clone", "clone3", "setns"] {
            assert!(!denied.iter().any(|d| *d == name), "{name} denied");
        }
    }

    #[test]
    fn capabilities_exclude_host_wide_ones() {
        let cfg = build(&spec(), None).unwrap();
        let caps = cfg
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert!(bounding.contains(&Capability::SysAdmin));
        for c in [
            Capability::SysModule,
            Capability::SysRawio,
            Capability::SysBoot,
            Capability::SysTime,
            Capability::AuditWrite,
            Capability::SysResource,
            Capability::Bpf,
        ] {
            assert!(!bounding.contains(&c), "{c:?}");
        }
    }

    #[test]
    fn fuse_node_is_bound_when_the_host_has_fuse() {
        let dir = tempfile::tempdir().unwrap();
        let node = fuse_node(dir.path()).unwrap();
        assert_eq!(node.is_some(), host_fuse().is_some());
        let cfg = build(&spec(), node.as_deref()).unwrap();
        let bound = cfg
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination() == Path::new("/dev/fuse"));
        assert_eq!(bound, node.is_some());
        if let Some(n) = node {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&n).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o666);
            // Idempotent: a second write keeps the node.
            assert_eq!(fuse_node(dir.path()).unwrap(), Some(n));
        }
    }
}
