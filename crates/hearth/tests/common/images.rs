//! Test images made on the spot from the host's static busybox.

use std::path::{Path, PathBuf};

use hearth_image::testutil::{busybox_layer, write_oci_layout};
use hearth_image::ImageConfig;

/// Applets linked in /bin besides `sh`; enough for the tests and a usable shell.
fn applets() -> Vec<String> {
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("run /bin/busybox --list (install busybox-static)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "sh" && *a != "busybox")
        .map(String::from)
        .collect()
}

fn dir_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_size(0);
    b.append_data(&mut h, path, std::io::empty()).unwrap();
}

fn file_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

/// Applet symlinks, /etc/group, a fuller /etc/passwd and the usual empty directories.
fn extras_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in [
        "bin/",
        "etc/",
        "usr/",
        "usr/local/",
        "usr/local/bin/",
        "var/",
        "home/",
        "root/",
    ] {
        dir_entry(&mut b, d, 0o755);
    }
    for a in applets() {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    file_entry(
        &mut b,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    file_entry(&mut b, "etc/group", b"root:x:0:\nnogroup:x:65534:\n");
    b.into_inner().unwrap()
}

/// A layer adding user `dev` (uid and gid 1000) with its home.
fn dev_user_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    dir_entry(&mut b, "etc/", 0o755);
    dir_entry(&mut b, "home/", 0o755);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_size(0);
    b.append_data(&mut h, "home/dev/", std::io::empty())
        .unwrap();
    file_entry(
        &mut b,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000:dev:/home/dev:/bin/sh\n\
          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    file_entry(
        &mut b,
        "etc/group",
        b"root:x:0:\ndev:x:1000:\nnogroup:x:65534:\n",
    );
    b.into_inner().unwrap()
}

/// Writes a busybox OCI layout under `dir` and returns its path.
pub fn busybox_image(dir: &Path) -> PathBuf {
    busybox_layout(dir, "busybox-oci", None)
}

/// A busybox OCI layout under `dir` whose `USER` is `dev` (uid 1000), as images that do
/// not run as root have it.
pub fn busybox_dev_image(dir: &Path) -> PathBuf {
    busybox_layout(dir, "busybox-dev-oci", Some("dev"))
}

fn busybox_layout(dir: &Path, name: &str, user: Option<&str>) -> PathBuf {
    let path = dir.join(name);
    let config = ImageConfig {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        working_dir: None,
        user: user.map(str::to_string),
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
    };
    let mut layers = vec![busybox_layer().expect("read /bin/busybox"), extras_layer()];
    if user.is_some() {
        layers.push(dev_user_layer());
    }
    write_oci_layout(&path, "busybox:latest", &layers, &config).expect("write oci layout");
    path
}
