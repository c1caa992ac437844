//! Reading files out of what the user hands to `load`: a directory, or a tarball (possibly
//! compressed) holding an OCI layout or a docker-archive.

use std::collections::HashMap;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// What a non-file is called in errors.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a fifo"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file or directory"
    }
}

/// Opens a path the user named, refusing at once anything but a regular file or a
/// directory: opening or reading a fifo or device could block forever (with the store
/// locked) or have side effects. `O_NONBLOCK` keeps the open itself from waiting, and the
/// type is checked again on the open file, so a path swapped in between gains nothing.
pub fn open_user_file(path: &Path) -> Result<(File, Metadata), ImageError> {
    let refuse = |meta: &Metadata| {
        ImageError::invalid(
            path,
            format!(
                "it is {}: give a regular file (an archive) or a directory (an OCI layout)",
                kind_of(meta)
            ),
        )
    };
    let ok = |m: &Metadata| m.is_file() || m.is_dir();
    let before = std::fs::metadata(path).map_err(ImageError::io(path))?;
    if !ok(&before) {
        return Err(refuse(&before));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ImageError::io(path))?;
    let meta = file.metadata().map_err(ImageError::io(path))?;
    if !ok(&meta) {
        return Err(refuse(&meta));
    }
    Ok((file, meta))
}

/// Reads `file[pos..end]` with positional reads, so several readers share one open file.
struct Slice {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

/// Files of an image archive, by their path inside it ("index.json", "blobs/sha256/<hex>").
pub(crate) enum Source {
    Dir(PathBuf),
    Tar {
        archive: PathBuf,
        /// Open once and checked; never reopened by path.
        file: Arc<File>,
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
        let (file, meta) = open_user_file(path)?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let file = Arc::new(file);
        let mut reader = BufReader::new(Slice {
            file: file.clone(),
            pos: 0,
            end: meta.len(),
        });
        let (archive, file) = match detect_compression(&mut reader).map_err(ImageError::io(path))? {
            Compression::None => (path.to_path_buf(), file),
            _ => {
                // Blobs are read at offsets into the tar, so it must be uncompressed on disk.
                let mut out = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(tmp_file)
                    .map_err(ImageError::io(tmp_file))?;
                let mut dec = decompress(reader).map_err(ImageError::io(path))?;
                io::copy(&mut dec, &mut out).map_err(|e| {
                    ImageError::invalid(path, format!("cannot decompress: {}", io_reason(&e)))
                })?;
                (tmp_file.to_path_buf(), Arc::new(out))
            }
        };
        let (files, links) = index_tar(&archive, &file)?;
        Ok(Source::Tar {
            archive,
            file,
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
                let (file, meta) = open_user_file(&path).map_err(|e| match e {
                    ImageError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                        missing()
                    }
                    other => other,
                })?;
                if !meta.is_file() {
                    return Err(ImageError::invalid(
                        self.path(),
                        format!("{name} is not a regular file"),
                    ));
                }
                Ok((Box::new(file), meta.len()))
            }
            Source::Tar {
                file, files, links, ..
            } => {
                let (offset, size) = resolve(files, links, &norm).ok_or_else(missing)?;
                let slice = Slice {
                    file: file.clone(),
                    pos: offset,
                    end: offset.saturating_add(size),
                };
                Ok((Box::new(slice), size))
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
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::invalid(self.path(), format!("{name}: {}", json_reason(&e)))
        })?;
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

/// Why a JSON document was refused, without quoting it: the input may be any file on the
/// server, and serde's messages can carry its text.
pub(crate) fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "cannot be read",
        Category::Syntax => "is not JSON",
        Category::Eof => "ends early",
        Category::Data => "has an unexpected shape",
    };
    let msg = e.to_string();
    // Serde's "missing field `x`" names the schema's field, not the input.
    let detail = if msg.starts_with("missing field") {
        format!(": {}", msg.split(" at line").next().unwrap_or(&msg))
    } else {
        String::new()
    };
    format!("{what} (line {}, column {}){detail}", e.line(), e.column())
}

/// Why a tar or compressed stream could not be read, without the parser's message (the tar
/// crate quotes header fields, i.e. the first bytes of whatever file it was given).
fn io_reason(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "it ends early (truncated?)",
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::Other => {
            "it is corrupt or not in the expected format"
        }
        _ => "read error",
    }
}

/// Records where each regular file's data sits in the (uncompressed) tarball, and its links.
fn index_tar(archive: &Path, file: &Arc<File>) -> Result<TarIndex, ImageError> {
    let len = file.metadata().map_err(ImageError::io(archive))?.len();
    let mut tar = tar::Archive::new(BufReader::new(Slice {
        file: file.clone(),
        pos: 0,
        end: len,
    }));
    let bad = |e: io::Error| {
        ImageError::invalid(archive, format!("not a readable tar: {}", io_reason(&e)))
    };
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
