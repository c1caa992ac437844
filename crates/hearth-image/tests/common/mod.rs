//! Tar builders that can write what `tar::Builder` refuses (`..`, absolute paths, lying sizes).
#![allow(dead_code)]

use std::io::{self, Read};
use std::path::Path;

use hearth_image::testutil::config_document;
use hearth_image::ImageConfig;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// Appends an entry with raw name/link bytes (at most 100 each), bypassing the tar crate's
    /// path checks.
    #[allow(clippy::too_many_arguments)]
    pub fn raw(
        &mut self,
        path: &str,
        kind: EntryType,
        link: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        claimed_size: Option<u64>,
    ) -> &mut Self {
        let mut h = Header::new_ustar();
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        h.set_size(claimed_size.unwrap_or(data.len() as u64));
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.raw(path, EntryType::Directory, "", b"", mode, 0, 0, None)
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.raw(path, EntryType::Regular, "", data, mode, 0, 0, None)
    }

    pub fn owned_file(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        self.raw(path, EntryType::Regular, "", data, mode, uid, gid, None)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, EntryType::Symlink, target, b"", 0o777, 0, 0, None)
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, EntryType::Link, target, b"", 0o644, 0, 0, None)
    }

    /// A PAX extended header applying to the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            // "<len> key=value\n" where len counts itself.
            let body = key.len() + value.len() + 3;
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.raw(
            "PaxHeader",
            EntryType::XHeader,
            "",
            &data,
            0o644,
            0,
            0,
            None,
        )
    }

    /// A regular file with a long path (GNU long-name extension).
    pub fn long_file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        self.builder.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a docker-archive (`docker save` layout: manifest.json, <id>.json, <n>/layer.tar);
/// returns the image id.
pub fn write_docker_archive(
    path: &Path,
    tags: &[&str],
    layers: &[Vec<u8>],
    config: &ImageConfig,
) -> String {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256(l)))
        .collect();
    let config_json = serde_json::to_vec(&config_document(config, &diff_ids)).unwrap();
    let config_hex = sha256(&config_json);
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    add(&format!("{config_hex}.json"), &config_json);
    let mut layer_paths = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let p = format!("{i:064}/layer.tar");
        add(&p, layer);
        layer_paths.push(p);
    }
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": tags,
        "Layers": layer_paths,
    }]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.into_inner().unwrap();
    format!("sha256:{config_hex}")
}

/// Tars a directory (an OCI layout) into an oci-archive.
pub fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap();
}

/// Every path under `dir` (relative), sorted: to assert nothing else appeared.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn read_all(mut r: impl Read) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)?;
    Ok(v)
}
