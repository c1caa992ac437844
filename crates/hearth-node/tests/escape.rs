//! The escape suite: root inside a workspace attacks the host, the node and another
//! workspace. Every attack must fail with the refusal expected of it (errno or message, so
//! a missing tool or a typo cannot pass for a block), the tools it runs must be in the
//! image, a control runs the same operation where it is allowed (a namespace the
//! workspace owns, a path or address it may use) and must succeed, and the workspace must
//! keep answering afterwards. Targets are found on this host (its disk, its masked /proc
//! files), not assumed.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Child, Command};

use common::{env, git_repo, host_ipv4_addrs, run, run_in, test_image, Outside};
use hearth_node::{Limits, LocalNode, NodeApi, WorkspaceSpec};

// Refusals as the tools print them (strerror, or the tool's own words).
const EPERM: &str = "Operation not permitted";
const EACCES: &str = "Permission denied";
const ENOENT: &str = "No such file or directory";
const ESRCH: &str = "No such process";
const ECONNREFUSED: &str = "Connection refused";
const EROFS: &str = "Read-only file system";
const EXDEV: &str = "Invalid cross-device link";
/// What [`tcp`] prints when nothing answered before its timeout (a firewall DROP).
const DROPPED: &str = "no answer (dropped)";

/// A write to `/proc/sys` that root inside may make: a net sysctl of a network namespace
/// of its own. Shows the write path works, so a refused host-wide one is the kernel's no.
const SYSCTL_CONTROL: &str =
    "unshare -n sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward && grep -qx 1 /proc/sys/net/ipv4/ip_forward'";

/// One attack, run as root inside. It counts as blocked only when every tool it runs is in
/// the image, its control (the same operation where it is allowed) succeeded, and it failed
/// with one of the expected refusals; any other failure is a broken test, not a block.
struct Attack {
    name: String,
    tools: Vec<&'static str>,
    cmd: String,
    refusal: Vec<String>,
    control: Option<String>,
}

fn attack(name: impl Into<String>, tools: &[&'static str], cmd: impl Into<String>) -> Attack {
    Attack {
        name: name.into(),
        tools: tools.to_vec(),
        cmd: cmd.into(),
        refusal: Vec::new(),
        control: None,
    }
}

impl Attack {
    /// Output that shows the expected refusal (any one of them).
    fn refused(mut self, any_of: &[&str]) -> Self {
        self.refusal = any_of.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The same operation where it is allowed; must exit 0.
    fn control(mut self, cmd: impl Into<String>) -> Self {
        self.control = Some(cmd.into());
        self
    }
}

/// One row of the printed table.
struct Row {
    attack: String,
    ok: bool,
    verdict: &'static str,
    detail: String,
}

struct Suite<'a> {
    node: &'a LocalNode,
    rows: Vec<Row>,
    /// Host secret: an attack whose output holds it escaped, whatever its exit code.
    secret: String,
}

/// Shell prefix that fails (exit 127, named) when a program is not in the image.
fn need(tools: &[&str]) -> String {
    if tools.is_empty() {
        return String::new();
    }
    format!(
        "for t in {}; do command -v \"$t\" >/dev/null || {{ echo \"hearth-test: $t missing from the image\" >&2; exit 127; }}; done; ",
        tools.join(" ")
    )
}

impl Suite<'_> {
    /// Runs `a`'s control, then the attack, in `ws`; the workspace must answer afterwards.
    async fn attack(&mut self, ws: &WorkspaceSpec, a: Attack) -> (i32, String) {
        assert!(!a.refusal.is_empty(), "{}: no expected refusal", a.name);
        let need = need(&a.tools);
        if let Some(control) = &a.control {
            let (code, out, err) = run(self.node, ws, &format!("{need}{control}")).await;
            self.rows.push(Row {
                attack: format!("control: {}", a.name),
                ok: code == 0,
                verdict: if code == 0 { "OK" } else { "FAILED" },
                detail: format!("exit {code}; {}", first_line(&err, &out)),
            });
        }
        let (code, out, err) = run(self.node, ws, &format!("{need}{}", a.cmd)).await;
        self.alive(ws, &a.name).await;
        let all = format!("{out}{err}");
        let (ok, verdict) = if all.contains("hearth-test: ") {
            (false, "NO TOOL")
        } else if code == 0 || all.contains(&self.secret) {
            (false, "ESCAPED")
        } else if a.refusal.iter().any(|r| all.contains(r.as_str())) {
            (true, "BLOCKED")
        } else {
            (false, "UNEXPECTED")
        };
        let shown = a
            .refusal
            .iter()
            .find_map(|r| all.lines().find(|l| l.contains(r.as_str())))
            .map(|l| l.chars().take(90).collect())
            .unwrap_or_else(|| first_line(&err, &out));
        self.rows.push(Row {
            attack: a.name,
            ok,
            verdict,
            detail: format!("exit {code}; {shown}"),
        });
        (code, out)
    }

    /// Raw syscall through perl; blocked means EPERM (seccomp or a capability check), so
    /// a wrong argument (EFAULT/EINVAL) cannot pass for a block.
    async fn syscall(&mut self, ws: &WorkspaceSpec, name: &str, args: &str) {
        self.syscall_errno(ws, name, args, &[libc::EPERM]).await
    }

    /// Like [`Suite::syscall`], blocked when the errno is one of `ok`.
    async fn syscall_errno(&mut self, ws: &WorkspaceSpec, name: &str, args: &str, ok: &[i32]) {
        let refusal: Vec<String> = ok.iter().map(|e| format!("errno={e} ")).collect();
        let refusal: Vec<&str> = refusal.iter().map(String::as_str).collect();
        self.attack(
            ws,
            attack(name, &["perl"], perl_syscall(args)).refused(&refusal),
        )
        .await;
    }

    /// A check made on the host (or a control): `ok` is the verdict.
    fn record(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        let control = name.starts_with("control");
        self.rows.push(Row {
            attack: name.into(),
            ok,
            verdict: match (control, ok) {
                (true, true) => "OK",
                (true, false) => "FAILED",
                (false, true) => "BLOCKED",
                (false, false) => "ESCAPED",
            },
            detail: detail.into(),
        });
    }

    async fn alive(&self, ws: &WorkspaceSpec, after: &str) {
        let (code, out, _) = run(self.node, ws, "echo alive").await;
        assert_eq!(
            (code, out.as_str()),
            (0, "alive\n"),
            "workspace dead after {after}"
        );
    }
}

/// `syscall(args)` through perl, printing `errno=N name` when it fails.
fn perl_syscall(args: &str) -> String {
    // syscall() needs writable scalars for pointer arguments.
    format!(
        "perl -e 'my ($E, $U, $X, $Y, $K, $R, $M, $A, $T) = (\"\", \"user\", \"x\", \"y\", \"/tmp/x.ko\", \"/\", \"ext4\", \"/tmp/acct\", pack(\"q2\", 0, 0)); my $r = syscall({args}); if ($r == -1) {{ print \"errno=\", $!+0, \" $!\\n\"; exit 1 }} exit 0'"
    )
}

/// `perl /root/tun.pl NAME FLAGS`: opens /dev/net/tun and makes device NAME (TUNSETIFF),
/// kept after exit with [`PERSIST`] (TUNSETPERSIST).
const TUN_PL: &str = r#"my ($name, $flags) = @ARGV;
open(my $f, "+<", "/dev/net/tun") or die "open: $!\n";
ioctl($f, 0x400454ca, pack("a16 s x22", $name, $flags & 0xffff)) or die "TUNSETIFF: $!\n";
if ($flags & 0x10000) { ioctl($f, 0x400454cb, 1) or die "TUNSETPERSIST: $!\n" }
"#;
/// IFF_TUN | IFF_NO_PI
const TUN: u32 = 0x1001;
/// IFF_TAP | IFF_NO_PI
const TAP: u32 = 0x1002;
const PERSIST: u32 = 0x10000;

fn tun(name: &str, flags: u32) -> String {
    format!("perl /root/tun.pl {name} {flags}")
}

/// Connects to `ip:port` from bash; prints [`DROPPED`] when nothing answered in 3 s.
fn tcp(ip: &str, port: u16) -> String {
    format!(
        "timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{port}'; rc=$?; [ $rc = 124 ] && echo '{DROPPED}'; exit $rc"
    )
}

fn first_line(err: &str, out: &str) -> String {
    let s = if err.trim().is_empty() { out } else { err };
    s.lines().next().unwrap_or("").chars().take(90).collect()
}

/// The host's disk: the block device under `/`, else the first disk in /sys/block. Found,
/// not assumed (`/dev/vda` on one VM is `/dev/sda` or `/dev/nvme0n1` elsewhere).
fn host_disk() -> (String, u32, u32) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
        .and_then(|f| {
            let (maj, min) = f.get(2)?.split_once(':')?;
            Some((maj.parse::<u32>().ok()?, min.parse::<u32>().ok()?))
        });
    let name_of = |maj: u32, min: u32| {
        let uevent = std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/uevent")).ok()?;
        uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .map(str::to_string)
    };
    if let Some((maj, min)) = root.filter(|(maj, _)| *maj != 0) {
        if let Some(name) = name_of(maj, min) {
            return (name, maj, min);
        }
    }
    let mut disks: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .filter_map(|d| d.ok()?.file_name().into_string().ok())
        .filter(|n| {
            !["loop", "ram", "zram", "nbd", "dm-"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    disks.sort();
    let name = disks
        .into_iter()
        .next()
        .expect("the host has no disk in /sys/block to attack");
    let dev = std::fs::read_to_string(format!("/sys/block/{name}/dev")).unwrap();
    let (maj, min) = dev.trim().split_once(':').unwrap();
    (name, maj.parse().unwrap(), min.parse().unwrap())
}

/// Kills and reaps the host process on drop.
struct Victim(Child);

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Puts a host sysctl back if an attack changed it (it must not; this limits the damage).
struct Restore(&'static str, String);

impl Drop for Restore {
    fn drop(&mut self) {
        if std::fs::read_to_string(self.0).ok().as_deref() != Some(self.1.as_str()) {
            let _ = std::fs::write(self.0, self.1.trim_end());
        }
    }
}

/// Deletes a host tun device on drop.
struct TunGuard(String);

impl Drop for TunGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["tuntap", "del", "dev", &self.0, "mode", "tun"])
            .status();
    }
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

/// The node hands `path` in when the host has it; the suite checks it, so the host must.
fn require_host_device(path: &str, module: &str) {
    assert!(
        Path::new(path).exists(),
        "host has no {path}: load its module (modprobe {module}) before running the escape suite"
    );
}

fn digest(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn root_inside_cannot_escape() {
    let tar = test_image("HEARTH_TEST_DEBIAN", "debian");
    let _core = Restore(
        "/proc/sys/kernel/core_pattern",
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
    );
    let mut e = env().await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let img = e.node.load_image(tar, None, tx.clone()).await.unwrap();
    let repo = git_repo(e.dir.path());
    let limits = Limits {
        memory_bytes: 512 << 20,
        pids: 1000,
        ..Limits::default()
    };
    let mk = |id: &str, name: &str, slot: u32| WorkspaceSpec {
        id: hearth_node::WorkspaceId::new(id).unwrap(),
        name: name.into(),
        image: img.id.clone(),
        source: repo.display().to_string(),
        slot,
        limits,
        egress: Default::default(),
        generation: 0,
    };
    // Host veth names keep 11 characters of the id: the ids must differ early.
    let a = mk("e1eeeeeeeeee", "a", 21);
    let b = mk("e2eeeeeeeeee", "b", 22);
    e.specs = vec![a.clone(), b.clone()];
    let mut ips = Vec::new();
    for s in [&a, &b] {
        e.node.create(s, tx.clone()).await.unwrap();
        ips.push(e.node.start(s).await.unwrap().ip.unwrap());
        let bb = std::fs::read("/bin/busybox").unwrap();
        let (code, _, err) = run_in(
            &e.node,
            s,
            "cat > /usr/local/bin/busybox && chmod 755 /usr/local/bin/busybox",
            &bb,
        )
        .await;
        assert_eq!(code, 0, "copy busybox: {err}");
        let (code, _, err) = run_in(&e.node, s, "cat > /root/tun.pl", TUN_PL.as_bytes()).await;
        assert_eq!(code, 0, "copy tun.pl: {err}");
    }
    let (a_ip, b_ip) = (ips[0].to_string(), ips[1].to_string());
    let gw = {
        let o = a_ip.rsplit_once('.').unwrap().0;
        format!("{o}.1")
    };
    let node = e.node.clone();
    // Host fixtures: a root-only secret, a process, a listener on every address, and "the
    // internet" (a netns routed from the host) with a listener a workspace may reach.
    let secret_dir = e.dir.path().join("host-secret");
    std::fs::create_dir(&secret_dir).unwrap();
    let secret = secret_dir.join("secret.txt");
    let token = format!("hearth-secret-{}", rand::random::<u64>());
    std::fs::write(&secret, &token).unwrap();
    let sp = secret.display().to_string();
    let victim = Victim(Command::new("sleep").arg("600").spawn().unwrap());
    let vpid = victim.0.id();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let outside = Outside::new((rand::random::<u32>() % 250) as u8);
    let outside_port = outside.serve();
    let agent_before = digest(&e.cfg.agent_binary);
    let mut s = Suite {
        node: &node,
        rows: Vec::new(),
        secret: token.clone(),
    };

    // --- host files through /proc, paths and mounts ---
    s.record(
        "control: host reads its secret",
        std::fs::read_to_string(&secret).unwrap() == token,
        "",
    );
    s.attack(
        &a,
        attack(
            "read host file via /proc/*/root",
            &["cat"],
            format!("for d in /proc/[0-9]*/root; do cat \"$d{sp}\"; done"),
        )
        .refused(&[ENOENT])
        .control(
            "echo seen > /root/visible && \
             for d in /proc/[0-9]*/root; do cat \"$d/root/visible\"; done 2>/dev/null | grep -q seen",
        ),
    )
    .await;
    s.attack(
        &a,
        attack(
            "read host file by its host path",
            &["cat"],
            format!("cat {sp}"),
        )
        .refused(&[&format!("{sp}: {ENOENT}")])
        .control("cat /etc/debian_version"),
    )
    .await;
    let dd = e.cfg.data_dir.display().to_string();
    s.attack(
        &a,
        attack(
            "find a host path in mountinfo (upperdir, data dir)",
            &["grep"],
            format!(
                "grep -F '{dd}' /proc/self/mountinfo; rc=$?; [ $rc = 0 ] && exit 0; \
                 echo \"no host path (grep exit $rc)\"; exit 1"
            ),
        )
        .refused(&["no host path (grep exit 1)"])
        .control("grep -q ' / / .* - overlay ' /proc/self/mountinfo"),
    )
    .await;
    s.attack(
        &a,
        attack(
            "follow the upperdir mountinfo shows",
            &["grep", "cut", "head"],
            "up=$(grep -o 'upperdir=[^,]*' /proc/self/mountinfo | head -1 | cut -d= -f2); \
             case \"$up\" in /proc/self/fd/*) [ -d \"$up\" ] && exit 0; \
             echo \"upperdir by fd, closed here: $up\"; exit 1;; esac; echo \"upperdir=$up\"; \
             [ -d \"$up\" ]",
        )
        .refused(&["upperdir by fd, closed here"]),
    )
    .await;
    // The OCI masked paths this host has (kernels differ): each reads empty inside, and
    // lifting the mask (root inside may unmount it) finds a file only host root may read.
    let masked: Vec<&str> = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
    ]
    .into_iter()
    .filter(|p| Path::new(p).exists())
    .collect();
    assert!(
        !masked.is_empty(),
        "the host has none of the masked /proc files"
    );
    for p in &masked {
        s.attack(
            &a,
            attack(
                format!("read masked {p}"),
                &["head", "wc"],
                format!(
                    "n=$(head -c 64 {p} | wc -c); [ \"$n\" -gt 0 ] && exit 0; echo \"{p}: read $n bytes\"; exit 1"
                ),
            )
            .refused(&[&format!("{p}: read 0 bytes")])
            .control("[ $(head -c 64 /proc/self/stat | wc -c) -gt 0 ]"),
        )
        .await;
    }
    let root_only: Vec<&str> = masked
        .iter()
        .copied()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.mode() & 0o044 == 0))
        .collect();
    assert!(
        !root_only.is_empty(),
        "no root-only masked file on the host"
    );
    for p in &root_only {
        s.attack(
            &a,
            attack(
                format!("unmount the mask over {p}, read it"),
                &["umount", "head"],
                format!("umount {p} && head -c 64 {p} >/dev/null"),
            )
            .refused(&[&format!("{p}' for reading: {EACCES}")]),
        )
        .await;
    }
    // Read-only proc paths: remounted rw (allowed: the runtime's mounts are not locked),
    // the files are still the host root's. The value written back is the current one.
    let ro_write = if Path::new("/proc/sysrq-trigger").exists() {
        (
            "/proc/sysrq-trigger",
            "/proc/sysrq-trigger",
            "h".to_string(),
        )
    } else {
        let f = "/proc/irq/default_smp_affinity";
        (
            "/proc/irq",
            f,
            std::fs::read_to_string(f).unwrap().trim().to_string(),
        )
    };
    s.attack(
        &a,
        attack(
            format!("remount read-only {} rw, write {}", ro_write.0, ro_write.1),
            &["mount"],
            format!(
                "mount -o remount,bind,rw {} && echo {} > {}",
                ro_write.0, ro_write.2, ro_write.1
            ),
        )
        .refused(&[&format!("{}: {EACCES}", ro_write.1)])
        .control("echo hearth > /tmp/ro-control"),
    )
    .await;
    let core = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    s.attack(
        &a,
        attack(
            "write kernel.core_pattern",
            &[],
            "echo '|/bin/false-hearth' > /proc/sys/kernel/core_pattern",
        )
        .refused(&[&format!("core_pattern: {EACCES}")])
        .control(SYSCTL_CONTROL),
    )
    .await;
    s.attack(
        &a,
        attack(
            "fresh procfs mount, write core_pattern",
            &["mount", "mkdir"],
            "mkdir -p /tmp/p && mount -t proc proc /tmp/p && \
             echo '|/bin/false-hearth' > /tmp/p/sys/kernel/core_pattern",
        )
        .refused(&[&format!("/tmp/p/sys/kernel/core_pattern: {EACCES}")])
        .control("mkdir -p /tmp/pc && mount -t proc proc /tmp/pc && grep -q . /tmp/pc/sys/kernel/core_pattern && umount /tmp/pc"),
    )
    .await;
    let core_after = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    s.record(
        "host core_pattern unchanged",
        core == core_after,
        core_after.trim(),
    );
    s.attack(
        &a,
        attack(
            "write vm.drop_caches",
            &[],
            "echo 3 > /proc/sys/vm/drop_caches",
        )
        .refused(&[&format!("drop_caches: {EACCES}")])
        .control(SYSCTL_CONTROL),
    )
    .await;
    let fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    s.attack(
        &a,
        attack(
            "write net.ipv4.ip_forward of the node-made netns",
            &[],
            "echo 0 > /proc/sys/net/ipv4/ip_forward",
        )
        .refused(&[&format!("ip_forward: {EACCES}")])
        .control(SYSCTL_CONTROL),
    )
    .await;
    s.record(
        "host ip_forward unchanged",
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap() == fwd,
        fwd.trim(),
    );
    s.attack(
        &a,
        attack(
            "remount /sys rw, write to it",
            &["mount", "touch"],
            "mount -o remount,bind,rw /sys && touch /sys/hearth-escape",
        )
        .refused(&[&format!("'/sys/hearth-escape': {EACCES}")])
        .control("touch /tmp/hearth-escape"),
    )
    .await;
    s.attack(
        &a,
        attack(
            "mount a fresh sysfs",
            &["mount", "mkdir"],
            "mkdir -p /tmp/s && mount -t sysfs sysfs /tmp/s",
        )
        // util-linux words EPERM so.
        .refused(&["mount: /tmp/s: permission denied"])
        .control("mkdir -p /tmp/sc && mount -t tmpfs none /tmp/sc && umount /tmp/sc"),
    )
    .await;

    // --- devices ---
    let (disk, maj, min) = host_disk();
    s.record(
        &format!("control: host has its disk /dev/{disk} ({maj}:{min})"),
        std::fs::metadata(format!("/dev/{disk}"))
            .is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == libc::makedev(maj, min)),
        "",
    );
    s.attack(
        &a,
        attack(
            format!("mknod the host disk ({maj}:{min}) and read it"),
            &["mknod", "dd"],
            format!(
                "mknod /root/disk b {maj} {min} && dd if=/root/disk of=/dev/null bs=512 count=1"
            ),
        )
        .refused(&[&format!("/root/disk: {EPERM}")])
        .control("mknod /root/fifo p && rm /root/fifo"),
    )
    .await;
    s.attack(
        &a,
        attack(
            format!("mount the host disk /dev/{disk}"),
            &["mount"],
            format!("mount -o ro /dev/{disk} /mnt"),
        )
        // util-linux words EPERM so: block-device filesystems are not mountable there.
        .refused(&["mount: /mnt: permission denied"])
        .control("mount -o ro -t tmpfs none /mnt && umount /mnt"),
    )
    .await;
    s.attack(
        &a,
        attack(
            "open /dev/kvm (mknod 10:232)",
            &["mknod"],
            "[ -e /dev/kvm ] && { echo '/dev/kvm is inside'; exit 0; }; \
             mknod /root/kvm c 10 232 && exec 3<>/root/kvm",
        )
        .refused(&[&format!("/root/kvm: {EPERM}")])
        .control("mknod /root/fifo p && rm /root/fifo"),
    )
    .await;
    // FUSE is a feature: the node hands a usable /dev/fuse in when the host has one.
    require_host_device("/dev/fuse", "fuse");
    let (code, _, err) = run(&node, &a, "exec 3<>/dev/fuse").await;
    s.record("control: /dev/fuse opens inside", code == 0, err);
    // So is /dev/net/tun (slirp4netns for nested containers), for network namespaces root
    // inside makes; never in the node-made one, where eth0 and the host's devices are.
    require_host_device("/dev/net/tun", "tun");
    let host_tun = format!("htun{}", rand::random::<u32>() % 100_000);
    let _guard = TunGuard(host_tun.clone());
    s.record(
        "control: host makes a persistent tun device",
        sh(&format!("ip tuntap add dev {host_tun} mode tun")),
        host_tun.clone(),
    );
    for (what, name) in [
        ("tun device in the workspace's netns", "hx0"),
        ("attach to the host's tun device", host_tun.as_str()),
    ] {
        s.attack(
            &a,
            attack(what, &["perl"], tun(name, TUN))
                .refused(&[&format!("TUNSETIFF: {EPERM}")])
                .control(format!("unshare -n {}", tun(name, TUN))),
        )
        .await;
    }
    s.record(
        "host tun device still there",
        sh(&format!("ip -o link show {host_tun} >/dev/null")),
        "",
    );

    // --- cgroups: the workspace's own, where a raised limit would count ---
    let cgroups = node.inspect(&a).await.unwrap().cgroups;
    let limit_file = |names: &[&str]| {
        cgroups
            .iter()
            .flat_map(|d| names.iter().map(move |n| d.join(n)))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {names:?} in {cgroups:?}"))
    };
    let cg_mem = limit_file(&["memory.limit_in_bytes", "memory.max"]);
    let cg_pids = limit_file(&["pids.max"]);
    let mem_before = std::fs::read_to_string(&cg_mem).unwrap();
    let pids_before = std::fs::read_to_string(&cg_pids).unwrap();
    // Mountable inside (the workspace owns its cgroup namespace), showing its own group.
    let (mount_mem, mem_file) = if cg_mem.ends_with("memory.max") {
        ("mount -t cgroup2 none", "memory.max")
    } else {
        ("mount -t cgroup -o memory cg", "memory.limit_in_bytes")
    };
    s.attack(
        &a,
        attack(
            "mount the memory cgroup, raise the limit",
            &["mount", "mkdir"],
            format!("mkdir -p /tmp/cg && {mount_mem} /tmp/cg && echo -1 > /tmp/cg/{mem_file}"),
        )
        .refused(&[&format!("/tmp/cg/{mem_file}: {EACCES}")])
        .control(format!(
            "mkdir -p /tmp/cgc && {mount_mem} /tmp/cgc && grep -qx {} /tmp/cgc/{mem_file} && umount /tmp/cgc",
            mem_before.trim()
        )),
    )
    .await;
    let visible = [
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory.max",
    ]
    .iter()
    .map(|p| format!("[ -f {p} ] && f={p}; "))
    .collect::<String>();
    s.attack(
        &a,
        attack(
            "write the memory limit in the visible /sys/fs/cgroup",
            &["cat"],
            format!("{visible}echo -1 > $f"),
        )
        .refused(&[&format!(
            "memory{}: {EACCES}",
            if mem_file == "memory.max" {
                ".max"
            } else {
                ".limit_in_bytes"
            }
        )])
        .control(format!("{visible}grep -qx {} $f", mem_before.trim())),
    )
    .await;
    s.attack(
        &a,
        attack(
            "mount cgroup2, make a cgroup",
            &["mount", "mkdir"],
            "mkdir -p /tmp/cg2 && mount -t cgroup2 none /tmp/cg2 && mkdir /tmp/cg2/hx",
        )
        .refused(&[&format!("'/tmp/cg2/hx': {EACCES}")])
        .control("mkdir -p /tmp/cg2c && mount -t cgroup2 none /tmp/cg2c && [ -f /tmp/cg2c/cgroup.procs ] && umount /tmp/cg2c"),
    )
    .await;
    s.record(
        "host cgroup limits unchanged",
        std::fs::read_to_string(&cg_mem).unwrap() == mem_before
            && std::fs::read_to_string(&cg_pids).unwrap() == pids_before,
        format!("memory {} pids {}", mem_before.trim(), pids_before.trim()),
    );

    // --- syscalls reaching host-wide kernel state ---
    let (code, out, err) = run(&node, &a, &perl_syscall("434, $$ + 0, 0")).await;
    s.record(
        "control: perl syscall() reaches the kernel (pidfd_open self)",
        code == 0,
        first_line(&err, &out),
    );
    s.attack(
        &a,
        attack(
            "busybox insmod",
            &["busybox"],
            "printf '\\177ELF' > /tmp/x.ko && busybox insmod /tmp/x.ko",
        )
        .refused(&[&format!("insmod: can't insert '/tmp/x.ko': {EPERM}")]),
    )
    .await;
    for (name, args) in [
        ("init_module", "175, 0, 0, $E"),
        ("finit_module", "313, 0, $E, 0"),
        ("delete_module", "176, $M, 0"),
        ("kexec_load", "246, 0, 0, 0, 0"),
        ("kexec_file_load", "320, 0, 0, 0, $E, 0"),
        ("bpf (map create)", "321, 0, 0, 0"),
        ("perf_event_open", "298, 0, 0, -1, -1, 0"),
        ("open_by_handle_at (shocker)", "304, 0, 0, 0"),
        ("name_to_handle_at", "303, -100, $R, 0, 0, 0"),
        ("userfaultfd", "323, 0"),
        ("iopl(3)", "172, 3"),
        ("ioperm", "173, 0, 1024, 1"),
        ("syslog (read kernel log)", "103, 3, 0, 0"),
        ("clock_settime", "227, 0, $T"),
        ("settimeofday", "164, $T, 0"),
        ("swapon", "167, $K, 0"),
        ("acct", "163, $A"),
        ("reboot", "169, 0xfee1dead, 672274793, 0x1234567, 0"),
    ] {
        s.syscall(&a, name, args).await;
    }
    // The keyring calls answer ENOSYS (nested OCI runtimes treat that as "no keyrings");
    // this kernel has keyrings, so ENOSYS can only come from the filter.
    for (name, args) in [
        ("keyctl (host keyring)", "250, 0, -4, 0"),
        ("add_key", "248, $U, $X, $Y, 1, -4"),
        ("request_key", "249, $U, $X, 0, 0"),
    ] {
        s.syscall_errno(&a, name, args, &[libc::ENOSYS]).await;
    }
    // CAP_AUDIT_WRITE is granted (nested dockerd needs it in its set) but must not reach
    // the host's audit log: the kernel refuses senders outside the initial user namespace
    // (ack error -111, ECONNREFUSED). The ack itself shows the message reached the kernel.
    s.attack(
        &a,
        attack(
            "audit: send an AUDIT_USER message",
            &["perl"],
            "perl -e 'socket(my $s, 16, 3, 9) or die \"socket: $!\\n\"; \
             my $m = \"hearth-escape-test\\0\"; \
             send($s, pack(\"LSSLL\", 16 + length($m), 1005, 5, 1, 0) . $m, 0) or die \"send: $!\\n\"; \
             defined(recv($s, my $ack, 4096, 0)) or die \"recv: $!\\n\"; \
             my $err = unpack(\"l\", substr($ack, 16, 4)); print \"ack error $err\\n\"; exit($err == 0 ? 0 : 1)'",
        )
        .refused(&["ack error -111"]),
    )
    .await;
    s.attack(
        &a,
        attack("dmesg", &["dmesg"], "dmesg")
            .refused(&[&format!("read kernel buffer failed: {EPERM}")]),
    )
    .await;

    // --- processes outside ---
    s.record(
        "control: host victim alive",
        Path::new(&format!("/proc/{vpid}")).exists(),
        format!("pid {vpid}"),
    );
    s.attack(
        &a,
        attack("kill -9 host pid", &["sleep"], format!("kill -9 {vpid}"))
            .refused(&[&format!("kill: {ESRCH}")])
            .control("sleep 60 & kill -9 $!"),
    )
    .await;
    for (name, args) in [
        ("pidfd_open host pid", format!("434, {vpid}, 0")),
        ("ptrace attach host pid", format!("101, 16, {vpid}, 0, 0")),
    ] {
        s.syscall_errno(&a, name, &args, &[libc::ESRCH]).await;
    }
    s.record(
        "host victim survived",
        Path::new(&format!("/proc/{vpid}")).exists(),
        "",
    );

    // --- network ---
    s.record(
        "control: host reaches its listener",
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        format!("port {port}"),
    );
    // 127.0.0.1 inside is the workspace's own loopback: refused, as the same connect to a
    // listener there shows.
    s.attack(
        &a,
        attack(
            "reach host 127.0.0.1 listener",
            &["timeout", "bash"],
            tcp("127.0.0.1", port),
        )
        .refused(&[&format!("connect: {ECONNREFUSED}")])
        .control(format!(
            "setsid busybox nc -l -p {port} -e true >/dev/null 2>&1 & sleep 0.3; {}",
            tcp("127.0.0.1", port)
        )),
    )
    .await;
    // The node's own addresses drop new connections from the bridge; the same connect to
    // an address outside the node goes through.
    let out_ip = outside.ip(2).to_string();
    s.attack(
        &a,
        attack(
            "reach host listener via gateway",
            &["timeout", "bash"],
            tcp(&gw, port),
        )
        .refused(&[DROPPED])
        .control(tcp(&out_ip, outside_port)),
    )
    .await;
    for ip in host_ipv4_addrs() {
        // Another test's bridge may go away meanwhile: then nothing routes there.
        let refusal: &[&str] = if ip.starts_with("127.") {
            &[ECONNREFUSED]
        } else {
            &[DROPPED, "No route to host"]
        };
        s.attack(
            &a,
            attack(
                format!("reach host listener on host address {ip}"),
                &["timeout", "bash"],
                tcp(&ip, port),
            )
            .refused(refusal),
        )
        .await;
    }
    let (code, _, _) = run(
        &node,
        &b,
        "setsid busybox nc -ll -p 7777 -e echo hi >/dev/null 2>&1 & sleep 0.3",
    )
    .await;
    assert_eq!(code, 0);
    let mut ok = false;
    for _ in 0..20 {
        if std::net::TcpStream::connect((ips[1], 7777)).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    s.record("control: host reaches b's listener", ok, b_ip.clone());
    let (code, _, err) = run(&node, &b, &tcp(&b_ip, 7777)).await;
    s.record(
        "control: b reaches its own listener on its address",
        code == 0,
        first_line(&err, ""),
    );
    s.attack(
        &a,
        attack(
            "reach another workspace's listener",
            &["timeout", "bash"],
            tcp(&b_ip, 7777),
        )
        .refused(&[DROPPED])
        .control(tcp(&out_ip, outside_port)),
    )
    .await;
    // NET_ADMIN and NET_RAW hold over network namespaces root inside makes, not over the
    // node-made one: the controls run the same commands on a tap device of a nested one.
    let tap = format!(
        "{} && busybox ip link set hx0 up",
        tun("hx0", TAP | PERSIST)
    );
    s.attack(
        &a,
        attack(
            "take another workspace's IP (ip addr add)",
            &["busybox"],
            format!("busybox ip addr add {b_ip}/32 dev eth0"),
        )
        .refused(&[&format!("RTNETLINK answers: {EPERM}")])
        .control(format!(
            "unshare -n sh -c '{tap} && busybox ip addr add {b_ip}/32 dev hx0'"
        )),
    )
    .await;
    s.attack(
        &a,
        attack(
            "change own MAC",
            &["busybox"],
            "busybox ip link set dev eth0 address 02:00:00:00:00:01",
        )
        .refused(&[EPERM])
        .control(format!(
            "unshare -n sh -c '{tap} && busybox ip link set dev hx0 address 02:00:00:00:00:01'"
        )),
    )
    .await;
    s.attack(
        &a,
        attack(
            "gratuitous ARP claiming b's IP (arping)",
            &["busybox"],
            format!("busybox arping -c 1 -U -s {b_ip} -I eth0 {gw}"),
        )
        .refused(&[&format!("arping: socket: {EPERM}")])
        .control(format!(
            "unshare -n sh -c '{tap} && busybox ip addr add 10.9.9.1/24 dev hx0 && \
             busybox arping -c 1 -U -s 10.9.9.1 -I hx0 10.9.9.2'"
        )),
    )
    .await;
    // The bridge pin, for an attacker who got NET_ADMIN over eth0 anyway: host root does
    // what root inside cannot, in a's netns.
    let ns = format!("{}-{}", e.cfg.bridge, a.id);
    let spoof = {
        let o = a_ip.rsplit_once('.').unwrap().0;
        format!("{o}.250")
    };
    let (code, _, _) = run(
        &node,
        &a,
        "setsid busybox nc -ll -p 7778 -e echo hi >/dev/null 2>&1 & sleep 0.3",
    )
    .await;
    assert_eq!(code, 0);
    // TCP from the host to a's listener: the reply's source IP and MAC are what is pinned.
    let ping = |ip: &str| {
        let addr: std::net::SocketAddr = format!("{ip}:7778").parse().unwrap();
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok()
    };
    s.record(
        "control: host reaches a's listener",
        ping(&a_ip),
        a_ip.clone(),
    );
    let added = sh(&format!(
        "ip netns exec {ns} ip addr add {spoof}/32 dev eth0"
    ));
    s.record(
        "bridge pin: reply from spoofed IP (simulated NET_ADMIN)",
        added && !ping(&spoof),
        format!("added {spoof}: {added}"),
    );
    sh(&format!(
        "ip netns exec {ns} ip addr del {spoof}/32 dev eth0"
    ));
    let br = &e.cfg.bridge;
    let mac_set = sh(&format!(
        "ip netns exec {ns} ip link set dev eth0 address 02:00:00:00:00:77 && ip neigh flush dev {br}"
    ));
    s.record(
        "bridge pin: spoofed MAC (simulated NET_ADMIN)",
        mac_set && !ping(&a_ip),
        format!("mac changed: {mac_set}"),
    );
    sh(&format!(
        "ip netns exec {ns} ip link set dev eth0 address {} && ip neigh flush dev {br}",
        hearth_net::mac_for(ips[0])
    ));
    s.record("control: host reaches a after restore", ping(&a_ip), "");

    // --- shared image layer, agent binary, links ---
    let layers = e.cfg.data_dir.join("images/layers");
    let deb_version: Vec<_> = std::fs::read_dir(&layers)
        .unwrap()
        .filter_map(|d| {
            let p = d.ok()?.path().join("etc/debian_version");
            p.exists().then_some(p)
        })
        .collect();
    let layer_before: Vec<_> = deb_version.iter().map(|p| digest(p)).collect();
    // Writing is allowed (copy-up); the verdict is whether the layer or b changed.
    let (code, out, _) = run(
        &node,
        &a,
        "echo pwned >> /etc/debian_version && grep -q pwned /etc/debian_version && echo copied-up",
    )
    .await;
    let (_, b_view, _) = run(&node, &b, "cat /etc/debian_version").await;
    let layer_after: Vec<_> = deb_version.iter().map(|p| digest(p)).collect();
    s.record(
        "write a file of the shared image layer",
        code == 0
            && !deb_version.is_empty()
            && layer_before == layer_after
            && !b_view.contains("pwned"),
        format!("a exit {code} {}; b sees {}", out.trim(), b_view.trim()),
    );
    s.attack(
        &a,
        attack(
            "overwrite agent via /proc/1/exe",
            &[],
            "echo x >> /proc/1/exe",
        )
        .refused(&[&format!("/proc/1/exe: {EACCES}")])
        .control("cp /bin/true /root/own-exe && echo x >> /root/own-exe"),
    )
    .await;
    s.attack(
        &a,
        attack(
            "overwrite agent at /.hearth/agent",
            &["cp"],
            "cp /bin/true /.hearth/agent",
        )
        .refused(&[&format!("'/.hearth/agent': {EROFS}")])
        .control("cp /bin/true /root/agent-copy"),
    )
    .await;
    // The runtime's mounts are not locked: root inside may make the bind rw. The file is
    // still the host root's.
    s.attack(
        &a,
        attack(
            "remount /.hearth/agent rw, overwrite it",
            &["mount"],
            "mount -o remount,bind,rw /.hearth/agent && echo x >> /.hearth/agent",
        )
        .refused(&[&format!("/.hearth/agent: {EACCES}")])
        .control("echo x >> /root/agent-copy"),
    )
    .await;
    s.attack(
        &a,
        attack(
            "hardlink host-owned agent binary",
            &["ln"],
            "ln /.hearth/agent /root/agent-link",
        )
        .refused(&[EXDEV])
        .control("ln /root/agent-copy /root/agent-copy-link"),
    )
    .await;
    s.attack(
        &a,
        attack(
            "hardlink via /proc/self/fd (linkat follow)",
            &["ln"],
            "exec 3</.hearth/agent; ln -L /proc/self/fd/3 /root/agent-link2",
        )
        .refused(&[EXDEV])
        .control("exec 3</root/agent-copy; ln -L /proc/self/fd/3 /root/agent-copy-link2"),
    )
    .await;
    s.record(
        "host agent binary unchanged",
        digest(&e.cfg.agent_binary) == agent_before,
        "",
    );

    // --- nested user namespaces regain nothing outside ---
    let (code, _, err) = run(
        &node,
        &a,
        "unshare -U -r -n sh -c 'busybox ip link set lo up && busybox ip addr add 10.9.9.9/32 dev lo'",
    )
    .await;
    s.record(
        "control: nested userns + netns work",
        code == 0,
        first_line(&err, ""),
    );
    s.attack(
        &a,
        attack(
            "nested userns: read host file via /proc/*/root",
            &["unshare", "cat"],
            format!("unshare -U -r sh -c 'for d in /proc/[0-9]*/root; do cat $d{sp}; done'"),
        )
        .refused(&[ENOENT])
        .control(
            "echo seen > /root/visible && unshare -U -r sh -c \
             'for d in /proc/[0-9]*/root; do cat $d/root/visible; done 2>/dev/null | grep -q seen'",
        ),
    )
    .await;
    s.attack(
        &a,
        attack(
            "nested userns: write core_pattern",
            &["unshare"],
            "unshare -U -r sh -c \"echo '|/bin/false-hearth' > /proc/sys/kernel/core_pattern\"",
        )
        .refused(&[&format!("core_pattern: {EACCES}")])
        .control(format!("unshare -U -r {SYSCTL_CONTROL}")),
    )
    .await;
    s.attack(
        &a,
        attack(
            "nested userns+mntns: mount cgroup v1 memory",
            &["unshare", "mount"],
            "unshare -U -r -m sh -c 'mkdir -p /tmp/cgn && mount -t cgroup -o memory x /tmp/cgn'",
        )
        .refused(&["mount: /tmp/cgn: permission denied"])
        .control("unshare -U -r -m sh -c 'mkdir -p /tmp/cgn && mount -t tmpfs x /tmp/cgn'"),
    )
    .await;
    s.attack(
        &a,
        attack(
            "nested userns: mknod the host disk",
            &["unshare", "mknod"],
            format!("unshare -U -r sh -c 'mknod /tmp/diskn b {maj} {min}'"),
        )
        .refused(&[&format!("/tmp/diskn: {EPERM}")])
        .control("unshare -U -r sh -c 'mknod /tmp/fifon p && rm /tmp/fifon'"),
    )
    .await;
    for (name, args) in [("bpf", "321, 0, 0, 0"), ("init_module", "175, 0, 0, $E")] {
        s.attack(
            &a,
            attack(
                format!("nested userns: {name}"),
                &["unshare", "perl"],
                format!("unshare -U -r {}", perl_syscall(args)),
            )
            .refused(&[&format!("errno={} ", libc::EPERM)]),
        )
        .await;
    }

    // --- symlinks planted for host-side operations ---
    let resolv_target = secret_dir.join("resolv-target");
    std::fs::write(&resolv_target, "host content\n").unwrap();
    let rt = resolv_target.display().to_string();
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    let (code, out, err) = run(
        &node,
        &a,
        &format!(
            "umount /etc/resolv.conf; rm -f /etc/resolv.conf && ln -s {rt} /etc/resolv.conf && \
             ln -s {sd} /root/hostdir && ln -s {sp} /root/hostfile && ln -s /etc/resolv.conf /root/resolv && echo planted",
            sd = secret_dir.display()
        ),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "planted\n"), "{err}");
    e.node.stop(&a).await.unwrap();
    e.node.start(&a).await.unwrap();
    let (code, inside, _) = run(&node, &a, "cat /etc/resolv.conf").await;
    s.record(
        "symlinked /etc/resolv.conf across stop/start",
        code == 0
            && std::fs::read_to_string(&resolv_target).unwrap() == "host content\n"
            && std::fs::read("/etc/resolv.conf").ok() == host_resolv
            && inside.contains("nameserver"),
        format!("inside: {}", inside.lines().next().unwrap_or("")),
    );
    s.alive(&a, "restart").await;

    drop(listener);
    // Removing a workspace must not follow the symlinks it planted.
    e.node.remove(&a).await.unwrap();
    e.specs.retain(|x| x.id != a.id);
    s.record(
        "remove does not follow planted symlinks",
        std::fs::read_to_string(&secret).ok().as_deref() == Some(token.as_str())
            && resolv_target.exists(),
        "",
    );

    let mut failed = Vec::new();
    eprintln!("\n{:<58} {:<10} detail", "attack", "result");
    for r in &s.rows {
        eprintln!("{:<58} {:<10} {}", r.attack, r.verdict, r.detail);
        if !r.ok {
            failed.push(format!("{} ({})", r.attack, r.verdict));
        }
    }
    let attacks = s
        .rows
        .iter()
        .filter(|r| !r.attack.starts_with("control") && !r.attack.starts_with("host "))
        .count();
    eprintln!("{attacks} attacks, {} rows", s.rows.len());
    assert!(attacks >= 25, "only {attacks} attacks");
    assert!(
        failed.is_empty(),
        "escaped, refused otherwise or control failed: {failed:?}"
    );
    drop(victim);
}
