//! A feature's tarball read into memory as checked files: only regular files and
//! directories, relative paths that stay inside the feature, bounded count and size. No
//! entry is ever written to a filesystem here; the build context is made from these.

use std::collections::BTreeMap;
use std::io::Read;

use crate::Error;

/// Most entries a feature may hold.
pub const MAX_ENTRIES: usize = 10_000;
/// Most bytes a feature may unpack to (files' contents together).
pub const MAX_UNPACKED_BYTES: u64 = 128 << 20;
/// Longest path inside a feature.
const MAX_PATH: usize = 1024;

/// A regular file of a feature (directories are implied by paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Relative, `/`-separated, no `.` or `..` components.
    pub path: String,
    /// Whether any execute bit was set.
    pub executable: bool,
    pub data: Vec<u8>,
}

/// Reads a feature tarball (`.tgz` or plain tar, told apart by content): every entry must
/// be a regular file or a directory with a relative path inside the feature; links,
/// devices, absolute or climbing paths, repeated paths, and more than [`MAX_ENTRIES`]
/// entries or [`MAX_UNPACKED_BYTES`] bytes are refused, naming the entry.
pub fn unpack(feature: &str, tarball: &[u8]) -> Result<Vec<File>, Error> {
    let err = |message: String| Error::Feature {
        feature: feature.to_string(),
        message,
    };
    let reader: Box<dyn Read + '_> = if tarball.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(tarball))
    } else {
        Box::new(tarball)
    };
    // One byte past the limit tells a tarball that unpacks to more (headers included).
    let mut archive =
        tar::Archive::new(reader.take(MAX_UNPACKED_BYTES + (MAX_ENTRIES as u64 + 2) * 1024));
    let mut files: BTreeMap<String, File> = BTreeMap::new();
    let mut total = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| err(format!("its tarball cannot be read: {e}")))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(err(format!(
                "its tarball has more than {MAX_ENTRIES} entries"
            )));
        }
        let mut entry = entry.map_err(|e| err(format!("its tarball cannot be read: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let path = clean_path(&raw).map_err(|why| err(format!("tarball entry {shown:?} {why}")))?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if path.is_empty() {
                    continue;
                }
                if files.contains_key(&path) {
                    return Err(err(format!(
                        "tarball entry {shown:?} is both a file and a directory"
                    )));
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if path.is_empty() {
                    return Err(err(format!(
                        "tarball entry {shown:?} is a file without a name"
                    )));
                }
                let size = entry
                    .header()
                    .size()
                    .map_err(|e| err(format!("tarball entry {shown:?}: {e}")))?;
                total = total.saturating_add(size);
                if total > MAX_UNPACKED_BYTES {
                    return Err(err(format!(
                        "its tarball unpacks to more than {MAX_UNPACKED_BYTES} bytes"
                    )));
                }
                let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
                (&mut entry)
                    .take(size + 1)
                    .read_to_end(&mut data)
                    .map_err(|e| err(format!("tarball entry {shown:?} cannot be read: {e}")))?;
                if data.len() as u64 != size {
                    return Err(err(format!(
                        "tarball entry {shown:?} is shorter or longer than its header says"
                    )));
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                if files.contains_key(&path) {
                    return Err(err(format!("tarball entry {shown:?} appears twice")));
                }
                let file = File {
                    path: path.clone(),
                    executable: mode & 0o111 != 0,
                    data,
                };
                files.insert(path, file);
            }
            other => {
                let what = match other {
                    tar::EntryType::Symlink => "a symlink",
                    tar::EntryType::Link => "a hard link",
                    tar::EntryType::Char | tar::EntryType::Block => "a device",
                    tar::EntryType::Fifo => "a fifo",
                    _ => "not a regular file or directory",
                };
                return Err(err(format!(
                    "tarball entry {shown:?} is {what}: a feature may hold only regular files and directories"
                )));
            }
        }
    }
    // A file that is also a parent of another path would make the context ambiguous.
    for path in files.keys() {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if files.contains_key(parent) {
                return Err(err(format!(
                    "tarball entry {parent:?} is a file and a directory"
                )));
            }
            p = parent;
        }
    }
    if !files.contains_key("devcontainer-feature.json") {
        return Err(err(
            "its tarball has no devcontainer-feature.json at the top".into(),
        ));
    }
    if !files.contains_key("install.sh") {
        return Err(err("its tarball has no install.sh at the top".into()));
    }
    Ok(files.into_values().collect())
}

/// The entry's path made relative and checked: UTF-8, no absolute path, no `..`, no NUL,
/// bounded length. `./` prefixes and `.` components go; "" is the top directory.
fn clean_path(raw: &[u8]) -> Result<String, &'static str> {
    if raw.len() > MAX_PATH {
        return Err("has too long a path");
    }
    let s = std::str::from_utf8(raw).map_err(|_| "has a path that is not UTF-8")?;
    if s.starts_with('/') {
        return Err("has an absolute path");
    }
    let mut out: Vec<&str> = Vec::new();
    for part in s.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("climbs out of the feature (..)"),
            p if p.chars().any(char::is_control) => {
                return Err("has control characters in its path")
            }
            p => out.push(p),
        }
    }
    Ok(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with raw names (the tar crate's builder refuses `..` and absolute paths).
    fn tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_ustar();
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(if path.ends_with(".sh") { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            if *kind == tar::EntryType::Symlink {
                h.set_size(0);
                h.as_old_mut().linkname[..4].copy_from_slice(b"/etc");
            }
            h.set_cksum();
            let data: &[u8] = if *kind == tar::EntryType::Symlink {
                b""
            } else {
                data
            };
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    const META: &[u8] = br#"{"id":"x","version":"1.0.0","name":"X"}"#;

    #[test]
    fn reads_a_feature_gzipped_or_not() {
        let plain = tar(&[
            ("./", tar::EntryType::Directory, b""),
            ("./devcontainer-feature.json", tar::EntryType::Regular, META),
            (
                "./install.sh",
                tar::EntryType::Regular,
                b"#!/bin/sh\necho hi\n",
            ),
            ("./lib/", tar::EntryType::Directory, b""),
            ("./lib/helper.txt", tar::EntryType::Regular, b"help"),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        for bytes in [plain, gz] {
            let files = unpack("f", &bytes).unwrap();
            let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(
                paths,
                ["devcontainer-feature.json", "install.sh", "lib/helper.txt"]
            );
            assert!(files[1].executable);
            assert!(!files[2].executable);
            assert_eq!(files[2].data, b"help");
        }
    }

    #[test]
    fn refuses_hostile_tarballs() {
        let base = [
            ("devcontainer-feature.json", tar::EntryType::Regular, META),
            ("install.sh", tar::EntryType::Regular, &b"x"[..]),
        ];
        for (extra, says) in [
            (
                ("../../etc/passwd", tar::EntryType::Regular, &b"x"[..]),
                "climbs out",
            ),
            (
                ("/etc/passwd", tar::EntryType::Regular, &b"x"[..]),
                "absolute path",
            ),
            (
                ("a/../../b", tar::EntryType::Regular, &b"x"[..]),
                "climbs out",
            ),
            (("link", tar::EntryType::Symlink, &b""[..]), "a symlink"),
            (("hard", tar::EntryType::Link, &b""[..]), "a hard link"),
            (("dev", tar::EntryType::Char, &b""[..]), "a device"),
            (
                ("install.sh", tar::EntryType::Regular, &b"again"[..]),
                "appears twice",
            ),
            (
                ("install.sh/x", tar::EntryType::Regular, &b"y"[..]),
                "a file and a directory",
            ),
            (
                ("bad\nname", tar::EntryType::Regular, &b"y"[..]),
                "control characters",
            ),
        ] {
            let mut all = base.to_vec();
            all.push(extra);
            let e = unpack("hostile", &tar(&all)).unwrap_err().to_string();
            assert!(e.contains(says), "{}: {e}", extra.0);
            assert!(e.starts_with("feature hostile: "), "{e}");
        }
        let e = unpack("f", &tar(&base[..1])).unwrap_err().to_string();
        assert!(e.contains("no install.sh"), "{e}");
        let e = unpack(
            "f",
            b"not a tarball at all, just text that is long enough to be a header? no",
        )
        .unwrap_err();
        assert!(matches!(e, Error::Feature { .. }), "{e}");
    }

    #[test]
    fn refuses_a_tarball_that_unpacks_too_large() {
        // A gzip bomb: megabytes of zeros in a few kilobytes; the header lies about nothing.
        let big = vec![0u8; (MAX_UNPACKED_BYTES + 1) as usize];
        let plain = tar(&[
            ("devcontainer-feature.json", tar::EntryType::Regular, META),
            ("install.sh", tar::EntryType::Regular, b"x"),
            ("zeros", tar::EntryType::Regular, &big),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 1 << 20);
        let e = unpack("bomb", &gz).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
    }
}
