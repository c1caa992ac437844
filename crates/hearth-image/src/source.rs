//! Reading files out of what the user hands to `load`: a directory, or a tarball (possibly
//! compressed) holding an OCI layout or a docker-archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::ImageError;

/// Largest JSON document (index, manifest, config) read into memory.
pub(crate) const MAX_JSON: u64 = 16 << 20;

/// Compression of a stream, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Peeks at the magic bytes without consuming them.
pub(crate) fn detect_compression<R: BufRead>(reader: &mut R) -> io::Result<Compression> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// Wraps `reader` in the decompressor its magic bytes call for.
pub(crate) fn decompress<'a, R: BufRead + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match detect_compression(&mut reader)? {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
    })
}

/// Files of an image archive, by their path inside it ("index.json", "blobs/sha256/<hex>").
pub(crate) enum Source {
    Dir(PathBuf),
    Tar {
        archive: PathBuf,
        /// Normalized path => (data offset, size).
        files: HashMap<String, (u64, u64)>,
        /// Normalized path => normalized target, for symlinks and hardlinks (older `docker save`
        /// links a repeated layer.tar to its first copy).
        links: HashMap<String, String>,
    },
}

impl Source {
    /// `tmp_dir` receives the decompressed copy of a compressed tarball; the caller removes it.
    pub(crate) fn open(path: &Path, tmp_file: &Path) -> Result<Source, ImageError> {
        let meta = std::fs::metadata(path).map_err(ImageError::io(path))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let file = File::open(path).map_err(ImageError::io(path))?;
        let mut reader = BufReader::new(file);
        let archive = match detect_compression(&mut reader).map_err(ImageError::io(path))? {
            Compression::None => path.to_path_buf(),
            _ => {
                // Blobs are read by seeking into the tar, so it must be uncompressed on disk.
                let mut out = File::create(tmp_file).map_err(ImageError::io(tmp_file))?;
                let mut dec = decompress(reader).map_err(ImageError::io(path))?;
                io::copy(&mut dec, &mut out).map_err(ImageError::io(path))?;
                tmp_file.to_path_buf()
            }
        };
        let (files, links) = index_tar(&archive)?;
        Ok(Source::Tar {
            archive,
            files,
            links,
        })
    }

    /// What to name in errors.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Source::Dir(p) => p,
            Source::Tar { archive, .. } => archive,
        }
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        let Some(name) = normalize(name) else {
            return false;
        };
        match self {
            Source::Dir(dir) => dir.join(name).is_file(),
            Source::Tar { files, links, .. } => resolve(files, links, &name).is_some(),
        }
    }

    /// Opens one file; `..` paths are refused (names come from untrusted manifests).
    pub(crate) fn read(&self, name: &str) -> Result<(Box<dyn Read>, u64), ImageError> {
        let missing = || ImageError::invalid(self.path(), format!("{name} is missing"));
        let norm = normalize(name).ok_or_else(missing)?;
        match self {
            Source::Dir(dir) => {
                let path = dir.join(&norm);
                let file = File::open(&path).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => missing(),
                    _ => ImageError::Io {
                        path: path.clone(),
                        source: e,
                    },
                })?;
                let size = file.metadata().map_err(ImageError::io(&path))?.len();
                Ok((Box::new(file), size))
            }
            Source::Tar {
                archive,
                files,
                links,
            } => {
                let (offset, size) = resolve(files, links, &norm).ok_or_else(missing)?;
                let mut file = File::open(archive).map_err(ImageError::io(archive))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(ImageError::io(archive))?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }

    pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<(T, Vec<u8>), ImageError> {
        let (reader, size) = self.read(name)?;
        if size > MAX_JSON {
            return Err(ImageError::invalid(
                self.path(),
                format!("{name} is too large ({size} bytes)"),
            ));
        }
        let mut bytes = Vec::new();
        reader
            .take(MAX_JSON)
            .read_to_end(&mut bytes)
            .map_err(ImageError::io(self.path()))?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::invalid(self.path(), format!("{name}: {e}")))?;
        Ok((value, bytes))
    }
}

/// "./a//b" => "a/b"; None for paths with `..` or empty ones.
fn normalize(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Follows archive-internal links (a few hops at most) to a regular file.
fn resolve(
    files: &HashMap<String, (u64, u64)>,
    links: &HashMap<String, String>,
    name: &str,
) -> Option<(u64, u64)> {
    let mut name = name;
    for _ in 0..8 {
        if let Some(found) = files.get(name) {
            return Some(*found);
        }
        name = links.get(name)?;
    }
    None
}

type TarIndex = (HashMap<String, (u64, u64)>, HashMap<String, String>);

/// Records where each regular file's data sits in the (uncompressed) tarball, and its links.
fn index_tar(archive: &Path) -> Result<TarIndex, ImageError> {
    let file = File::open(archive).map_err(ImageError::io(archive))?;
    let mut tar = tar::Archive::new(BufReader::new(file));
    let bad = |e: io::Error| ImageError::invalid(archive, format!("not a readable tar: {e}"));
    let mut files = HashMap::new();
    let mut links = HashMap::new();
    for entry in tar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(name) = normalize(&path) else {
            continue;
        };
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                links.remove(&name);
                files.insert(name, (entry.raw_file_position(), entry.size()));
            }
            // Hardlink targets are archive paths; symlink targets are relative to the link.
            tar::EntryType::Link => {
                if let Some(target) = link().and_then(|l| normalize(&l)) {
                    files.remove(&name);
                    links.insert(name, target);
                }
            }
            tar::EntryType::Symlink => {
                let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                if let Some(target) = link().and_then(|l| normalize_relative(dir, &l)) {
                    files.remove(&name);
                    links.insert(name, target);
                }
            }
            _ => {}
        }
    }
    if files.is_empty() {
        return Err(ImageError::invalid(
            archive,
            "not an image archive (no files)",
        ));
    }
    Ok((files, links))
}

/// Resolves a symlink target against the link's directory, `..` included, within the archive.
fn normalize_relative(dir: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|p| !p.is_empty()).collect()
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(
            normalize("./blobs//sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(
            normalize("/manifest.json").as_deref(),
            Some("manifest.json")
        );
        assert_eq!(normalize("../etc/shadow"), None);
        assert_eq!(normalize("./"), None);
        assert_eq!(
            normalize_relative("abc", "../def/layer.tar").as_deref(),
            Some("def/layer.tar")
        );
        assert_eq!(normalize_relative("abc", "../../x"), None);
    }
}
