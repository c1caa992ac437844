//! Builders for tests across the project: small layers and OCI layouts made on the spot, so no
//! test needs a registry or a prebuilt image.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::ImageConfig;

/// How `write_oci_layout_with` stores each layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    Gzip,
    Zstd,
    None,
}

/// Writes an OCI image layout (gzip layers) whose index.json names the image `name` through the
/// `org.opencontainers.image.ref.name` annotation.
pub fn write_oci_layout(
    dir: &Path,
    name: &str,
    layers: &[Vec<u8>],
    config: &ImageConfig,
) -> io::Result<()> {
    write_oci_layout_with(dir, name, layers, config, LayerCompression::Gzip).map(|_| ())
}

/// Like [`write_oci_layout`] with a choice of compression; returns the config digest
/// (`sha256:<hex>`, i.e. the image id the store will assign).
pub fn write_oci_layout_with(
    dir: &Path,
    name: &str,
    layers: &[Vec<u8>],
    config: &ImageConfig,
    compression: LayerCompression,
) -> io::Result<String> {
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        diff_ids.push(format!("sha256:{}", sha256(tar)));
        let (blob, media_type) = match compression {
            LayerCompression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(tar)?;
                (enc.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
            }
            LayerCompression::Zstd => (
                zstd::encode_all(tar.as_slice(), 3)?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            LayerCompression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
        };
        layer_descs.push(write_blob(dir, &blob, media_type)?);
    }
    let config_json = serde_json::to_vec(&config_document(config, &diff_ids))?;
    let config_desc = write_blob(
        dir,
        &config_json,
        "application/vnd.oci.image.config.v1+json",
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layer_descs,
    });
    let mut manifest_desc = write_blob(
        dir,
        &serde_json::to_vec(&manifest)?,
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    manifest_desc["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
    let index = json!({ "schemaVersion": 2, "manifests": [manifest_desc] });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(format!("sha256:{}", sha256(&config_json)))
}

/// An OCI image config document (linux/amd64) for `config` and the given diff_ids.
pub fn config_document(config: &ImageConfig, diff_ids: &[String]) -> serde_json::Value {
    let mut c = json!({
        "Env": config.env,
        "Entrypoint": config.entrypoint,
        "Cmd": config.cmd,
    });
    if let Some(w) = &config.working_dir {
        c["WorkingDir"] = json!(w);
    }
    if let Some(u) = &config.user {
        c["User"] = json!(u);
    }
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": c,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
}

/// An uncompressed layer tar of regular files `(path, contents, mode)` owned by root, with
/// parent directories added.
pub fn layer_tar(files: &[(&str, &[u8], u32)]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in files {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            prefix.push_str(part);
            prefix.push('/');
            if dirs.insert(prefix.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                builder.append_data(&mut h, &prefix, io::empty())?;
            }
        }
    }
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, path, *data)?;
    }
    builder.into_inner()
}

/// A layer with the host's static busybox as /bin/busybox plus /bin/sh -> busybox, enough to
/// run commands in a test container.
pub fn busybox_layer() -> io::Result<Vec<u8>> {
    let busybox = fs::read("/bin/busybox")?;
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["bin/", "tmp/", "etc/", "root/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if dir == "tmp/" { 0o1777 } else { 0o755 });
        h.set_size(0);
        builder.append_data(&mut h, dir, io::empty())?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    builder.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    builder.append_link(&mut h, "bin/sh", "busybox")?;
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    builder.append_data(&mut h, "etc/passwd", passwd.as_slice())?;
    builder.into_inner()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write_blob(dir: &Path, blob: &[u8], media_type: &str) -> io::Result<serde_json::Value> {
    let hex = sha256(blob);
    fs::write(dir.join("blobs/sha256").join(&hex), blob)?;
    Ok(json!({
        "mediaType": media_type,
        "digest": format!("sha256:{hex}"),
        "size": blob.len(),
    }))
}

/// A usable busybox root filesystem layer: Debian's static busybox, a symlink for every
/// applet at its usual place, and minimal passwd/group files (root, nobody, a user).
pub fn busybox_rootfs_layer() -> io::Result<Vec<u8>> {
    let busybox = fs::read("/bin/busybox")?;
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list-full")
        .output()?;
    let applets = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32| -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, p, io::empty())
    };
    for d in [
        "bin/",
        "sbin/",
        "usr/",
        "usr/bin/",
        "usr/sbin/",
        "usr/local/",
        "usr/local/bin/",
        "etc/",
        "home/",
        "var/",
        "dev/",
        "proc/",
        "sys/",
        "run/",
    ] {
        dir(&mut b, d, 0o755)?;
    }
    dir(&mut b, "root/", 0o700)?;
    dir(&mut b, "tmp/", 0o1777)?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "bin/busybox")
    {
        let depth = a.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, a, target)?;
    }
    for (p, body) in [
        (
            "etc/passwd",
            &b"root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000:dev:/home/dev:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"[..],
        ),
        ("etc/group", b"root:x:0:\ndev:x:1000:\nnogroup:x:65534:\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        b.append_data(&mut h, p, body)?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_size(0);
    b.append_data(&mut h, "home/dev/", io::empty())?;
    b.into_inner()
}
