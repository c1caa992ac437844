//! The escape suite: root inside a workspace attacks the host, the node and another
//! workspace. Every attack must fail, the workspace must keep answering afterwards, and
//! where it matters a control shows the target is real (the host can read the file, reach
//! the listener, see the process).

mod common;

use std::path::Path;
use std::process::{Child, Command};

use common::{env, git_repo, host_ipv4_addrs, run, run_in, test_image};
use hearth_node::{Limits, LocalNode, NodeApi, WorkspaceSpec};

/// One row of the printed table.
struct Row {
    attack: String,
    blocked: bool,
    detail: String,
}

struct Suite<'a> {
    node: &'a LocalNode,
    rows: Vec<Row>,
}

impl Suite<'_> {
    /// Runs `cmd` in `ws`; it exits 0 only if the attack worked. A control exec must still
    /// succeed afterwards.
    async fn attack(&mut self, ws: &WorkspaceSpec, name: &str, cmd: &str) -> (i32, String) {
        let (code, out, err) = run(self.node, ws, cmd).await;
        let detail = format!("exit {code}; {}", first_line(&err, &out));
        self.alive(ws, name).await;
        self.rows.push(Row {
            attack: name.into(),
            blocked: code != 0,
            detail,
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
        // syscall() needs writable scalars for pointer arguments.
        let cmd = format!(
            "perl -e 'my ($E, $U, $X, $Y, $K, $R, $M, $A, $T) = (\"\", \"user\", \"x\", \"y\", \"/tmp/x.ko\", \"/\", \"ext4\", \"/tmp/acct\", pack(\"q2\", 0, 0)); my $r = syscall({args}); if ($r == -1) {{ print \"errno=\", $!+0, \" $!\\n\"; exit 1 }} exit 0'"
        );
        let (code, out, err) = run(self.node, ws, &cmd).await;
        self.alive(ws, name).await;
        self.rows.push(Row {
            attack: name.into(),
            blocked: code != 0 && ok.iter().any(|e| out.starts_with(&format!("errno={e} "))),
            detail: format!("exit {code}; {}", first_line(&err, &out)),
        });
    }

    /// A check made on the host (or a control): `blocked` is the verdict.
    fn record(&mut self, name: &str, blocked: bool, detail: impl Into<String>) {
        self.rows.push(Row {
            attack: name.into(),
            blocked,
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

fn first_line(err: &str, out: &str) -> String {
    let s = if err.trim().is_empty() { out } else { err };
    s.lines().next().unwrap_or("").chars().take(90).collect()
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
        id: id.into(),
        name: name.into(),
        image: img.id.clone(),
        source: repo.display().to_string(),
        slot,
        limits,
        egress: Default::default(),
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
    }
    let (a_ip, b_ip) = (ips[0].to_string(), ips[1].to_string());
    let gw = {
        let o = a_ip.rsplit_once('.').unwrap().0;
        format!("{o}.1")
    };
    let node = e.node.clone();
    let mut s = Suite {
        node: &node,
        rows: Vec::new(),
    };

    // Host fixtures: a root-only secret, a process, a listener on every address.
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
    let agent_before = digest(&e.cfg.agent_binary);

    // --- host files through /proc, paths and mounts ---
    s.record(
        "control: host reads its secret",
        std::fs::read_to_string(&secret).unwrap() == token,
        "",
    );
    s.attack(
        &a,
        "read host file via /proc/*/root",
        &format!(
            "for f in /proc/[0-9]*/root{sp}; do cat \"$f\"; done 2>/dev/null | grep -q {token}"
        ),
    )
    .await;
    s.attack(&a, "read host file by its host path", &format!("cat {sp}"))
        .await;
    s.attack(
        &a,
        "follow host upperdir path leaked by mountinfo",
        "up=$(grep -o 'upperdir=[^,]*' /proc/self/mountinfo | head -1 | cut -d= -f2); \
         echo \"upperdir=$up\"; [ -n \"$up\" ] && [ -d \"$up\" ]",
    )
    .await;
    s.attack(
        &a,
        "learn the node's data dir from mountinfo",
        &format!(
            "grep -F '{}' /proc/self/mountinfo",
            e.cfg.data_dir.display()
        ),
    )
    .await;
    s.attack(
        &a,
        "read /proc/kcore",
        "[ $(head -c 16 /proc/kcore 2>/dev/null | wc -c) -gt 0 ]",
    )
    .await;
    s.attack(
        &a,
        "write /proc/sysrq-trigger",
        "echo h > /proc/sysrq-trigger",
    )
    .await;
    let core = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    s.attack(
        &a,
        "write kernel.core_pattern",
        "echo '|/bin/false-hearth' > /proc/sys/kernel/core_pattern",
    )
    .await;
    s.attack(
        &a,
        "remount /proc/sys rw, write core_pattern",
        "mount -o remount,rw /proc/sys && echo '|/bin/false-hearth' > /proc/sys/kernel/core_pattern",
    )
    .await;
    s.attack(
        &a,
        "fresh procfs mount, write core_pattern",
        "mkdir -p /tmp/p && mount -t proc proc /tmp/p && echo '|/bin/false-hearth' > /tmp/p/sys/kernel/core_pattern",
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
        "write vm.drop_caches",
        "echo 3 > /proc/sys/vm/drop_caches",
    )
    .await;
    let fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    s.attack(
        &a,
        "write net.ipv4.ip_forward",
        "echo 0 > /proc/sys/net/ipv4/ip_forward",
    )
    .await;
    s.record(
        "host ip_forward unchanged",
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap() == fwd,
        fwd.trim(),
    );
    s.attack(
        &a,
        "remount /sys rw",
        "mount -o remount,bind,rw /sys && touch /sys/hearth-escape",
    )
    .await;
    s.attack(
        &a,
        "mount a fresh sysfs",
        "mkdir -p /tmp/s && mount -t sysfs sysfs /tmp/s",
    )
    .await;

    // --- devices ---
    s.record(
        "control: host has /dev/vda",
        Path::new("/dev/vda").exists(),
        "",
    );
    s.attack(
        &a,
        "mknod block device 254:0 and read it",
        "mknod /root/vda b 254 0 && dd if=/root/vda of=/dev/null bs=512 count=1",
    )
    .await;
    s.attack(
        &a,
        "mount host block device",
        "for d in /dev/vda /dev/sda /dev/nvme0n1; do mount -o ro $d /mnt 2>/dev/null && exit 0; done; exit 1",
    )
    .await;
    s.attack(
        &a,
        "open /dev/kvm (mknod 10:232)",
        "if [ -e /dev/kvm ]; then exec 3<>/dev/kvm; else mknod /root/kvm c 10 232 && exec 3<>/root/kvm; fi",
    )
    .await;
    // FUSE is a feature: the node hands a usable /dev/fuse in when the host has one.
    require_host_device("/dev/fuse", "fuse");
    let (code, _, err) = run(&node, &a, "exec 3<>/dev/fuse").await;
    s.record("control: /dev/fuse opens inside", code == 0, err);
    // So is /dev/net/tun (slirp4netns for nested containers), for network namespaces root
    // inside makes; never in the node-made one, where eth0 and the host's devices are.
    require_host_device("/dev/net/tun", "tun");
    let tun = |name: &str| {
        format!(
            "perl -e 'open(my $f, \"+<\", \"/dev/net/tun\") or die \"open: $!\\n\"; \
             my $r = pack(\"a16 s x22\", \"{name}\", 0x1001); \
             ioctl($f, 0x400454ca, $r) or die \"TUNSETIFF: $!\\n\"; exit 0'"
        )
    };
    let (code, _, err) = run(&node, &a, &format!("unshare -n {}", tun("nested0"))).await;
    s.record("control: tun device in a nested netns", code == 0, err);
    s.attack(&a, "tun device in the workspace's netns", &tun("hx0"))
        .await;
    let host_tun = format!("htun{}", rand::random::<u32>() % 100_000);
    let _guard = TunGuard(host_tun.clone());
    s.record(
        "control: host makes a persistent tun device",
        sh(&format!("ip tuntap add dev {host_tun} mode tun")),
        host_tun.clone(),
    );
    s.attack(&a, "attach to the host's tun device", &tun(&host_tun))
        .await;
    s.record(
        "host tun device still there",
        sh(&format!("ip -o link show {host_tun} >/dev/null")),
        "",
    );

    // --- cgroups ---
    let cg_mem = Path::new("/sys/fs/cgroup/memory")
        .join(&e.cfg.cgroup_parent)
        .join(&a.id)
        .join("memory.limit_in_bytes");
    let cg_pids = Path::new("/sys/fs/cgroup/pids")
        .join(&e.cfg.cgroup_parent)
        .join(&a.id)
        .join("pids.max");
    let mem_before = std::fs::read_to_string(&cg_mem).ok();
    let pids_before = std::fs::read_to_string(&cg_pids).ok();
    s.attack(
        &a,
        "mount cgroup v1 memory, raise limit",
        "mkdir -p /tmp/cg && mount -t cgroup -o memory cg /tmp/cg && echo -1 > /tmp/cg/memory.limit_in_bytes",
    )
    .await;
    s.attack(
        &a,
        "write pids.max via visible cgroupfs",
        "for f in /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max; do echo max > $f 2>/dev/null && exit 0; done; exit 1",
    )
    .await;
    s.attack(
        &a,
        "mount cgroup2, make a cgroup",
        "mkdir -p /tmp/cg2 && mount -t cgroup2 none /tmp/cg2 && mkdir /tmp/cg2/hx && rmdir /tmp/cg2/hx",
    )
    .await;
    s.record(
        "host cgroup limits unchanged",
        mem_before.is_some()
            && std::fs::read_to_string(&cg_mem).ok() == mem_before
            && std::fs::read_to_string(&cg_pids).ok() == pids_before,
        format!(
            "memory {:?} pids {:?}",
            mem_before.as_deref().map(str::trim),
            pids_before.as_deref().map(str::trim)
        ),
    );

    // --- syscalls reaching host-wide kernel state ---
    s.attack(
        &a,
        "busybox insmod",
        "printf '\\177ELF' > /tmp/x.ko && busybox insmod /tmp/x.ko",
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
    // (ack error -111, ECONNREFUSED).
    s.attack(
        &a,
        "audit: send an AUDIT_USER message",
        "perl -e 'socket(my $s, 16, 3, 9) or die \"socket: $!\\n\"; \
         my $m = \"hearth-escape-test\\0\"; \
         send($s, pack(\"LSSLL\", 16 + length($m), 1005, 5, 1, 0) . $m, 0) or die \"send: $!\\n\"; \
         defined(recv($s, my $ack, 4096, 0)) or die \"recv: $!\\n\"; \
         my $err = unpack(\"l\", substr($ack, 16, 4)); print \"ack error $err\\n\"; exit($err == 0 ? 0 : 1)'",
    )
    .await;
    s.attack(&a, "dmesg", "dmesg").await;

    // --- processes outside ---
    s.record(
        "control: host victim alive",
        Path::new(&format!("/proc/{vpid}")).exists(),
        format!("pid {vpid}"),
    );
    s.attack(
        &a,
        "kill -9 host pid",
        &format!("kill -9 {vpid} && ! kill -0 {vpid} 2>/dev/null"),
    )
    .await;
    s.syscall_errno(
        &a,
        "pidfd_open host pid",
        &format!("434, {vpid}, 0"),
        &[libc::EPERM, libc::ESRCH],
    )
    .await;
    s.syscall_errno(
        &a,
        "ptrace attach host pid",
        &format!("101, 16, {vpid}, 0, 0"),
        &[libc::EPERM, libc::ESRCH],
    )
    .await;
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
    let tcp = |ip: &str, p: u16| format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{p}'");
    s.attack(&a, "reach host 127.0.0.1 listener", &tcp("127.0.0.1", port))
        .await;
    s.attack(&a, "reach host listener via gateway", &tcp(&gw, port))
        .await;
    let all: Vec<String> = host_ipv4_addrs()
        .iter()
        .map(|ip| format!("{} && exit 0;", tcp(ip, port)))
        .collect();
    s.attack(
        &a,
        "reach host listener on any host address",
        &format!("{} exit 1", all.join(" ")),
    )
    .await;
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
    s.attack(&a, "reach another workspace's listener", &tcp(&b_ip, 7777))
        .await;
    s.attack(
        &a,
        "take another workspace's IP (ip addr add)",
        &format!("busybox ip addr add {b_ip}/32 dev eth0"),
    )
    .await;
    s.attack(
        &a,
        "change own MAC",
        "busybox ip link set dev eth0 address 02:00:00:00:00:01",
    )
    .await;
    s.attack(
        &a,
        "gratuitous ARP claiming b's IP (arping)",
        &format!("busybox arping -c 1 -U -s {b_ip} -I eth0 {gw}"),
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
    let (code, out) = s
        .attack(
            &a,
            "write a file of the shared image layer",
            "echo pwned >> /etc/debian_version && grep -q pwned /etc/debian_version && echo copied-up",
        )
        .await;
    // Writing is allowed (copy-up); the verdict is whether the layer or b changed.
    s.rows.pop();
    let (_, b_view, _) = run(&node, &b, "cat /etc/debian_version").await;
    let layer_after: Vec<_> = deb_version.iter().map(|p| digest(p)).collect();
    s.record(
        "write a file of the shared image layer",
        !deb_version.is_empty() && layer_before == layer_after && !b_view.contains("pwned"),
        format!("a exit {code} {}; b sees {}", out.trim(), b_view.trim()),
    );
    s.attack(
        &a,
        "overwrite agent via /proc/1/exe",
        "echo x >> /proc/1/exe",
    )
    .await;
    s.attack(
        &a,
        "overwrite agent at /.hearth/agent",
        "cp /bin/true /.hearth/agent",
    )
    .await;
    s.attack(
        &a,
        "hardlink host-owned agent binary",
        "ln /.hearth/agent /root/agent-link",
    )
    .await;
    s.attack(
        &a,
        "hardlink via /proc/self/fd (linkat follow)",
        "exec 3</.hearth/agent; ln -L /proc/self/fd/3 /root/agent-link2",
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
        "nested userns: read host file via /proc/*/root",
        &format!("unshare -U -r sh -c 'for f in /proc/[0-9]*/root{sp}; do cat $f; done 2>/dev/null | grep -q {token}'"),
    )
    .await;
    s.attack(
        &a,
        "nested userns: write core_pattern",
        "unshare -U -r sh -c \"echo '|/bin/false-hearth' > /proc/sys/kernel/core_pattern\"",
    )
    .await;
    s.attack(
        &a,
        "nested userns+mntns: mount cgroup v1 memory",
        "unshare -U -r -m sh -c 'mkdir -p /tmp/cgn && mount -t cgroup -o memory x /tmp/cgn && echo -1 > /tmp/cgn/memory.limit_in_bytes'",
    )
    .await;
    s.attack(
        &a,
        "nested userns: mknod block device",
        "unshare -U -r sh -c 'mknod /tmp/vdan b 254 0'",
    )
    .await;
    s.attack(
        &a,
        "nested userns: bpf / init_module",
        "unshare -U -r perl -e 'exit((syscall(321,0,0,0) == -1 && syscall(175,0,0,my $e = \"\") == -1) ? 1 : 0)'",
    )
    .await;

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
    eprintln!("\n{:<58} {:<8} detail", "attack", "result");
    for r in &s.rows {
        eprintln!(
            "{:<58} {:<8} {}",
            r.attack,
            if r.blocked { "BLOCKED" } else { "ESCAPED" },
            r.detail
        );
        if !r.blocked {
            failed.push(r.attack.clone());
        }
    }
    let attacks = s
        .rows
        .iter()
        .filter(|r| !r.attack.starts_with("control") && !r.attack.starts_with("host "))
        .count();
    eprintln!("{attacks} attacks, {} rows", s.rows.len());
    assert!(attacks >= 25, "only {attacks} attacks");
    assert!(failed.is_empty(), "escaped or control failed: {failed:?}");
    drop(victim);
}
