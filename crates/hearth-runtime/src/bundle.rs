//! The OCI runtime config (`config.json`) for a workspace container.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxIdMappingBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
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
}

/// Capabilities of root inside. They act only on what the workspace's user namespace
/// owns, so developers keep mount, ptrace and network administration of their own box.
const CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::NetRaw,
    Capability::NetAdmin,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysAdmin,
    Capability::Mknod,
    Capability::AuditWrite,
    Capability::Setfcap,
    Capability::IpcLock,
    Capability::SysResource,
];

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| RuntimeError::Bundle(e.to_string()))
}

pub fn build(spec: &BundleSpec) -> Result<Spec> {
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

/// Writes `config.json` into `dir` atomically.
pub fn write(dir: &Path, spec: &BundleSpec) -> Result<()> {
    let cfg = build(spec)?;
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
