//! Where the cgroup hierarchies are mounted, read from mountinfo so nothing about
//! the host layout (hybrid, co-mounted `cpu,cpuacct`, ...) is assumed.

use std::path::{Path, PathBuf};

use crate::CgroupError;

/// Mount points of the v1 hierarchies we use; `None` when a controller is not mounted.
/// Co-mounted controllers (`cpu,cpuacct`) simply share a path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1Layout {
    pub memory: Option<PathBuf>,
    pub pids: Option<PathBuf>,
    pub cpu: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
    pub freezer: Option<PathBuf>,
    /// The cgroup2 mount of a hybrid host; groups there get no controllers but give PSI
    /// and `cgroup.kill`.
    pub unified: Option<PathBuf>,
}

/// The host's cgroup setup. Injectable so the backends can run against a tempdir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V1(V1Layout),
    V2 { root: PathBuf },
}

impl Layout {
    /// Reads `/proc/self/mountinfo`.
    pub fn detect() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        })?;
        Self::from_mountinfo(&text).ok_or_else(|| CgroupError::NotMounted {
            path: path.to_owned(),
        })
    }

    /// v1 wins as soon as one of the controllers we limit is on a v1 hierarchy, because
    /// then it cannot be enabled on cgroup2 (hybrid hosts).
    pub fn from_mountinfo(text: &str) -> Option<Self> {
        let mut v1 = V1Layout::default();
        let mut cgroup2: Vec<PathBuf> = Vec::new();
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = pre.split(' ').nth(4) else {
                continue;
            };
            let mut post = post.split(' ');
            let (Some(fstype), Some(_source), Some(super_opts)) =
                (post.next(), post.next(), post.next())
            else {
                continue;
            };
            let mount_point = PathBuf::from(unescape(mount_point));
            match fstype {
                "cgroup2" => cgroup2.push(mount_point),
                "cgroup" => {
                    for opt in super_opts.split(',') {
                        let slot = match opt {
                            "memory" => &mut v1.memory,
                            "pids" => &mut v1.pids,
                            "cpu" => &mut v1.cpu,
                            "cpuacct" => &mut v1.cpuacct,
                            "freezer" => &mut v1.freezer,
                            _ => continue,
                        };
                        if slot.is_none() {
                            *slot = Some(mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        let preferred = |mounts: &[PathBuf]| {
            mounts
                .iter()
                .find(|p| p.as_path() == Path::new("/sys/fs/cgroup"))
                .or_else(|| mounts.first())
                .cloned()
        };
        if v1.memory.is_some() || v1.pids.is_some() || v1.cpu.is_some() {
            v1.unified = preferred(&cgroup2);
            Some(Layout::V1(v1))
        } else {
            preferred(&cgroup2).map(|root| Layout::V2 { root })
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_separate_cpu_mounts() {
        let Some(Layout::V1(v1)) = Layout::from_mountinfo(HYBRID) else {
            panic!("expected v1");
        };
        assert_eq!(v1.cpu.as_deref(), Some(Path::new("/sys/fs/cgroup/cpu")));
        assert_eq!(
            v1.cpuacct.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpuacct"))
        );
        assert_eq!(
            v1.memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(v1.pids.as_deref(), Some(Path::new("/sys/fs/cgroup/pids")));
        assert_eq!(
            v1.freezer.as_deref(),
            Some(Path::new("/sys/fs/cgroup/freezer"))
        );
        assert_eq!(
            v1.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn comounted_cpu_cpuacct_share_a_path() {
        let text = "\
25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
26 24 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let Some(Layout::V1(v1)) = Layout::from_mountinfo(text) else {
            panic!("expected v1");
        };
        assert_eq!(v1.cpu, v1.cpuacct);
        assert_eq!(
            v1.cpu.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(v1.pids, None);
        assert_eq!(v1.unified, None);
    }

    #[test]
    fn pure_v2_and_escapes() {
        let text = "\
30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 24 0:27 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            Layout::from_mountinfo(text),
            Some(Layout::V2 {
                root: PathBuf::from("/sys/fs/cgroup")
            })
        );
        let only_escaped = "31 24 0:27 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Layout::from_mountinfo(only_escaped),
            Some(Layout::V2 {
                root: PathBuf::from("/mnt/my cg")
            })
        );
    }

    #[test]
    fn nothing_mounted() {
        assert_eq!(
            Layout::from_mountinfo("22 1 0:5 / /proc rw - proc proc rw\n"),
            None
        );
    }
}
