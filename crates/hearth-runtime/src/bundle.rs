//! The OCI runtime config (`config.json`) for a workspace container.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResources, LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder,
    LinuxSyscallBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
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
    /// Where the device nodes bound in (see [`DEVICES`]) are made.
    pub devices_dir: PathBuf,
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
/// they grant nothing but would widen what a kernel bug could reach: `IPC_LOCK` and
/// `SYS_RESOURCE` (mlock and rlimit overrides use `capable()`; memory and pids are bounded
/// by the cgroup anyway).
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
    // Grants nothing here: audit netlink refuses every message from outside the initial
    // user namespace (ECONNREFUSED) before it checks the capability, which it checks
    // against the initial user namespace anyway. It is in Docker's default set, and runc
    // refuses to start a container with capabilities outside its own bounding set, so
    // nested dockerd needs it.
    Capability::AuditWrite,
];

/// Syscalls refused (EPERM, or ENOSYS for [`ENOSYS_SYSCALLS`]). A deny-list over
/// default-allow keeps every new syscall a developer tool may use working; these are the
/// ones that reach state the kernel does not namespace, or wide attack surface no
/// workspace needs:
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

/// The [`BLOCKED_SYSCALLS`] refused with ENOSYS rather than EPERM: the keyring calls.
/// OCI runtimes (crun, runc) join a fresh session keyring for every container they start
/// and give up on any error but ENOSYS ("kernel without keyrings"), so EPERM would break
/// nested containers (podman, docker) while ENOSYS blocks the keyring just the same.
pub const ENOSYS_SYSCALLS: &[&str] = &["add_key", "keyctl", "request_key"];

/// Default-allow filter with [`BLOCKED_SYSCALLS`] returning EPERM ([`ENOSYS_SYSCALLS`]
/// ENOSYS). All three x86 ABIs are listed: a filter without the i386 ABI would let
/// `int 0x80` callers skip the list.
pub fn seccomp() -> Result<LinuxSeccomp> {
    let b = |e: oci_spec::OciSpecError| RuntimeError::Bundle(e.to_string());
    let rule = |names: Vec<String>, errno: i32| {
        LinuxSyscallBuilder::default()
            .names(names)
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(errno as u32)
            .build()
            .map_err(b)
    };
    let (nosys, perm): (Vec<String>, Vec<String>) = BLOCKED_SYSCALLS
        .iter()
        .map(|s| s.to_string())
        .partition(|s| ENOSYS_SYSCALLS.contains(&s.as_str()));
    let deny = rule(perm, libc::EPERM)?;
    let nosys = rule(nosys, libc::ENOSYS)?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(vec![deny, nosys])
        .build()
        .map_err(b)
}

/// Host character devices handed to every workspace as `(host path, node name in the
/// bundle)`; the node is bound over the same path inside. Both are built for unprivileged
/// users and act only on namespaces the workspace owns:
/// - `/dev/fuse`: mounting a FUSE filesystem needs the workspace's own mount namespace
///   (fuse-overlayfs, sshfs, rootless storage drivers);
/// - `/dev/net/tun`: `TUNSETIFF` needs `CAP_NET_ADMIN` over the network namespace the fd
///   was opened in, so a tun/tap device can only be made in a network namespace root
///   inside creates itself (slirp4netns and pasta networking for nested containers),
///   never in the node-made one and never on the host.
pub const DEVICES: &[(&str, &str)] = &[("/dev/fuse", "fuse"), ("/dev/net/tun", "tun")];

/// A host device handed in: the 0666 node in the bundle, its path inside, its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub node: PathBuf,
    pub dest: String,
    pub rdev: libc::dev_t,
}

/// `path`'s device number when it is a character device on the host.
fn host_chardev(path: &str) -> Option<libc::dev_t> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    md.file_type().is_char_device().then(|| md.rdev())
}

/// Makes `<dir>/<name>`, a 0666 node of the host device `host`, when the host has one: a
/// user namespace cannot mknod devices, and binding the host's own node would carry its
/// mode (often 0600 root, unusable inside).
fn device_node(dir: &Path, host: &str, name: &str) -> Result<Option<DeviceNode>> {
    let Some(dev) = host_chardev(host) else {
        return Ok(None);
    };
    let node = dir.join(name);
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
    Ok(Some(DeviceNode {
        node,
        dest: host.to_string(),
        rdev: dev,
    }))
}

/// The [`DEVICES`] this host has, with their nodes made in `dir`.
fn device_nodes(dir: &Path) -> Result<Vec<DeviceNode>> {
    let mut out = Vec::new();
    for (host, name) in DEVICES {
        out.extend(device_node(dir, host, name)?);
    }
    Ok(out)
}

/// Device cgroup rules: deny all, allow `devices`. runc enforces them (adding its
/// defaults: null, zero, tty, ptmx...), so without the allow rules `/dev/fuse` and
/// `/dev/net/tun` would be bound in but refuse to open; crun with
/// `--cgroup-manager=disabled` skips them.
fn device_rules(devices: &[DeviceNode]) -> Result<LinuxResources> {
    let b = |e: oci_spec::OciSpecError| RuntimeError::Bundle(e.to_string());
    let mut rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(b)?];
    for d in devices {
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(libc::major(d.rdev) as i64)
                .minor(libc::minor(d.rdev) as i64)
                .access("rwm")
                .build()
                .map_err(b)?,
        );
    }
    LinuxResourcesBuilder::default()
        .devices(rules)
        .build()
        .map_err(b)
}

/// The OCI default read-only paths except `/proc/sys`, plus the cgroup tmpfs.
///
/// In a user namespace the kernel already refuses every sysctl write but those for
/// namespaces the workspace owns (`test_perm` wants the global root uid; net sysctls want
/// `CAP_NET_ADMIN` over the netns, and the node-made one belongs to the host), so a
/// read-only `/proc/sys` only blocked what nested containers need: OCI runtimes write net
/// sysctls (`ping_group_range`) of the network namespaces they make through it.
///
/// The runtime makes `/sys/fs/cgroup` a tmpfs owned by root inside; read-only, nothing
/// can pose as a cgroup file there.
fn readonly_paths() -> Vec<String> {
    oci_spec::runtime::get_default_readonly_paths()
        .into_iter()
        .filter(|p| p != "/proc/sys")
        .chain(["/sys/fs/cgroup".to_string()])
        .collect()
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

/// The config for `spec`; `devices` are bound in (see [`DEVICES`]).
pub fn build(spec: &BundleSpec, devices: &[DeviceNode]) -> Result<Spec> {
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
        // The workspace's own cgroups (its cgroup namespace), read-only: nested OCI
        // runtimes read the layout here (crun refuses to start without it), and tools
        // read their limits. Files belong to the host's root, so no limit can be raised.
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
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
    for d in devices {
        mounts.push(mount(
            &d.dest,
            "none",
            &path_str(&d.node)?,
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
        .readonly_paths(readonly_paths())
        .seccomp(seccomp()?)
        .resources(device_rules(devices)?)
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

/// Writes `config.json` into `dir` atomically, after the device nodes it binds.
pub fn write(dir: &Path, spec: &BundleSpec) -> Result<()> {
    let devices = device_nodes(&spec.devices_dir)?;
    let cfg = build(spec, &devices)?;
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
            devices_dir: "/d".into(),
            env: vec![],
        }
    }

    #[test]
    fn seccomp_denies_host_wide_syscalls_for_every_x86_abi() {
        let cfg = build(&spec(), &[]).unwrap();
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
        // Keyring calls say ENOSYS, which nested OCI runtimes accept; the rest EPERM.
        let errno_of = |name: &str| {
            rules
                .iter()
                .find(|r| r.names().iter().any(|n| n == name))
                .and_then(|r| r.errno_ret())
        };
        assert_eq!(errno_of("keyctl"), Some(libc::ENOSYS as u32));
        assert_eq!(errno_of("add_key"), Some(libc::ENOSYS as u32));
        assert_eq!(errno_of("bpf"), Some(libc::EPERM as u32));
    }

    #[test]
    fn proc_sys_is_writable_and_cgroups_read_only() {
        let cfg = build(&spec(), &[]).unwrap();
        let ro = cfg
            .linux()
            .as_ref()
            .unwrap()
            .readonly_paths()
            .clone()
            .unwrap();
        assert!(!ro.iter().any(|p| p == "/proc/sys"), "{ro:?}");
        assert!(ro.iter().any(|p| p == "/proc/sysrq-trigger"), "{ro:?}");
        assert!(ro.iter().any(|p| p == "/sys/fs/cgroup"), "{ro:?}");
        let cg = cfg
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys/fs/cgroup"))
            .expect("cgroup mount");
        assert_eq!(cg.typ().as_deref(), Some("cgroup"));
        assert!(cg.options().as_ref().unwrap().iter().any(|o| o == "ro"));
    }

    #[test]
    fn capabilities_exclude_host_wide_ones() {
        let cfg = build(&spec(), &[]).unwrap();
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
            Capability::SysResource,
            Capability::Bpf,
        ] {
            assert!(!bounding.contains(&c), "{c:?}");
        }
    }

    /// The expectation is the host's own `/dev`, stat-ed here: fuse and tun have fixed
    /// misc numbers (10:229, 10:200; the kernel's devices.txt).
    #[test]
    fn device_nodes_are_bound_when_the_host_has_them() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let expected: Vec<(&str, libc::dev_t)> = [
            ("/dev/fuse", libc::makedev(10, 229)),
            ("/dev/net/tun", libc::makedev(10, 200)),
        ]
        .into_iter()
        .filter(|(path, rdev)| {
            std::fs::metadata(path)
                .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == *rdev)
        })
        .collect();
        let dir = tempfile::tempdir().unwrap();
        let nodes = device_nodes(dir.path()).unwrap();
        let got: Vec<(&str, libc::dev_t)> =
            nodes.iter().map(|d| (d.dest.as_str(), d.rdev)).collect();
        assert_eq!(got, expected);
        for d in &nodes {
            let md = std::fs::metadata(&d.node).unwrap();
            assert!(md.file_type().is_char_device(), "{}", d.node.display());
            assert_eq!(md.rdev(), d.rdev, "{}", d.node.display());
        }
        let cfg = build(&spec(), &nodes).unwrap();
        let linux = cfg.linux().as_ref().unwrap();
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(
            !rules[0].allow() && rules[0].major().is_none(),
            "deny all first"
        );
        for d in &nodes {
            let bound = cfg
                .mounts()
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.destination() == Path::new(&d.dest));
            assert!(bound, "{}", d.dest);
            let major = libc::major(d.rdev) as i64;
            let minor = libc::minor(d.rdev) as i64;
            assert!(
                rules
                    .iter()
                    .any(|r| r.allow() && r.major() == Some(major) && r.minor() == Some(minor)),
                "{} not allowed",
                d.dest
            );
            let mode = std::fs::metadata(&d.node).unwrap().mode();
            assert_eq!(mode & 0o7777, 0o666);
        }
        // Idempotent: a second write keeps the nodes.
        assert_eq!(device_nodes(dir.path()).unwrap(), nodes);
    }
}
