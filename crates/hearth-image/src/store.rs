//! The on-disk store: `blobs/sha256/<hex>`, `layers/<diff-hex>/`, `images/<id-hex>.json`,
//! `names.json` and a `tmp/` scratch area cleared on open.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use oci_spec::image::{Arch, ImageConfiguration, Os};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::manifest::{docker_plan, media_type_compression, oci_plan, BlobRef, Plan};
use crate::source::{self, json_reason, Source, MAX_JSON};
use crate::unpack;
use crate::{human_size, normalize_name, Image, ImageConfig, ImageError};

/// The image store. Methods may be called from several threads; loads and removes are
/// serialized (in-process mutex plus an `flock` on `root/lock` against other processes).
/// Open one store per root per process: `open` clears `tmp/`.
pub struct ImageStore {
    pub(crate) root: PathBuf,
    lock: Mutex<File>,
    /// Digests being downloaded by a pull in this process, and their waiters (see `pull`).
    pub(crate) inflight: Mutex<HashSet<String>>,
    pub(crate) inflight_done: Condvar,
}

/// What `images/<hex>.json` holds: the image (names live in `names.json`) plus what it pins.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    image: Image,
    /// Unpacked bytes of each layer, parallel to `diff_ids`.
    layer_sizes: Vec<u64>,
    /// Hex digests of every blob (manifest, config, layers) this image keeps alive.
    blobs: Vec<String>,
}

pub(crate) struct LockGuard<'a> {
    file: MutexGuard<'a, File>,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = rustix::fs::flock(&*self.file, rustix::fs::FlockOperation::Unlock) {
            tracing::warn!(error = %e, "cannot unlock image store");
        }
    }
}

/// A scratch directory under `root/tmp`, removed on drop (success or not).
pub(crate) struct TmpDir(pub(crate) PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "cannot remove scratch dir");
            }
        }
    }
}

/// Hashes (and counts) everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Streams a blob into a file while hashing it. Archive loads and registry pulls both write
/// blobs through it, so both check sizes and digests the same way.
pub(crate) struct BlobWriter {
    file: File,
    hasher: Sha256,
    count: u64,
}

impl BlobWriter {
    pub(crate) fn create(path: &Path) -> Result<Self, ImageError> {
        let file = File::create(path).map_err(ImageError::io(path))?;
        Ok(Self {
            file,
            hasher: Sha256::new(),
            count: 0,
        })
    }

    /// Continues a partial file: hashes what it already holds and appends after that.
    pub(crate) fn resume(path: &Path) -> Result<Self, ImageError> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(ImageError::io(path))?;
        let mut hashing = HashingReader::new(&mut file);
        io::copy(&mut hashing, &mut io::sink()).map_err(ImageError::io(path))?;
        let (hasher, count) = (hashing.hasher, hashing.count);
        Ok(Self {
            file,
            hasher,
            count,
        })
    }

    /// Bytes written so far, resumed ones included.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// Forgets everything written (for a server that ignored a range request).
    pub(crate) fn restart(&mut self, path: &Path) -> Result<(), ImageError> {
        self.file.set_len(0).map_err(ImageError::io(path))?;
        self.hasher = Sha256::new();
        self.count = 0;
        Ok(())
    }

    /// Syncs, then checks the expected size and digest; returns the hex digest. `origin` and
    /// `what` name the blob in errors.
    pub(crate) fn finish(
        self,
        expected_hex: Option<&str>,
        expected_size: Option<u64>,
        origin: &Path,
        what: &str,
    ) -> Result<String, ImageError> {
        self.file.sync_all().map_err(ImageError::io(origin))?;
        let hex = hex::encode(self.hasher.finalize());
        if let Some(size) = expected_size {
            if self.count != size {
                return Err(ImageError::SizeMismatch {
                    path: origin.to_path_buf(),
                    what: what.to_string(),
                    expected: size,
                    actual: self.count,
                });
            }
        }
        if let Some(expected) = expected_hex {
            if expected != hex {
                return Err(ImageError::DigestMismatch {
                    path: origin.to_path_buf(),
                    what: what.to_string(),
                    expected: format!("sha256:{expected}"),
                    actual: format!("sha256:{hex}"),
                });
            }
        }
        Ok(hex)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// "sha256:<hex>" => "<hex>" when well-formed.
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| is_sha256_hex(h))
}

pub(crate) fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

pub(crate) fn mkdir_private(path: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(path).map_err(ImageError::io(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(ImageError::io(path))
}

/// Writes `bytes` to `path` via a sibling temp file and rename, so readers never see half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension(unique_name("tmp"));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(ImageError::io(path))
}

/// Sum of regular file sizes under `dir`, for layers whose unpack stats were lost.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The image an archive or layout describes, whichever of the two formats it is.
fn plan_of(source: &Source, path: &Path, name: Option<&str>) -> Result<Plan, ImageError> {
    if source.exists("manifest.json") {
        docker_plan(source, name)
    } else if source.exists("index.json") {
        oci_plan(source, name)
    } else {
        Err(ImageError::invalid(
            path,
            "neither an OCI layout (index.json) nor a docker archive (manifest.json)",
        ))
    }
}

impl ImageStore {
    /// Creates the layout (all 0700: layers hold setuid files owned by host root that no host
    /// user may reach) and clears scratch left by a crash mid-load.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        mkdir_private(root)?;
        for sub in ["blobs/sha256", "layers", "images", "tmp"] {
            mkdir_private(&root.join(sub))?;
        }
        mkdir_private(&root.join("blobs"))?;
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(ImageError::io(&tmp))? {
            let entry = entry.map_err(ImageError::io(&tmp))?;
            let path = entry.path();
            let res = match entry.file_type() {
                Ok(ft) if ft.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            res.map_err(ImageError::io(&path))?;
        }
        let lock_path = root.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(ImageError::io(&lock_path))?;
        Ok(Self {
            root: root.to_path_buf(),
            lock: Mutex::new(lock),
            inflight: Mutex::new(HashSet::new()),
            inflight_done: Condvar::new(),
        })
    }

    pub(crate) fn lock(&self) -> Result<LockGuard<'_>, ImageError> {
        // A poisoned mutex only means another load panicked; the on-disk state is still sound.
        let file = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        rustix::fs::flock(&*file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            ImageError::Io {
                path: self.root.join("lock"),
                source: e.into(),
            }
        })?;
        Ok(LockGuard { file })
    }

    pub(crate) fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    pub(crate) fn layer_path(&self, hex: &str) -> PathBuf {
        self.root.join("layers").join(hex)
    }

    fn record_path(&self, hex: &str) -> PathBuf {
        self.root.join("images").join(format!("{hex}.json"))
    }

    fn names_path(&self) -> PathBuf {
        self.root.join("names.json")
    }

    pub(crate) fn tmp_dir(&self, prefix: &str) -> Result<TmpDir, ImageError> {
        let path = self.root.join("tmp").join(unique_name(prefix));
        fs::create_dir(&path).map_err(ImageError::io(&path))?;
        Ok(TmpDir(path))
    }

    /// See the crate docs. A given `name` replaces the names found in the archive.
    pub fn load(
        &self,
        path: &Path,
        name: Option<&str>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Image, ImageError> {
        let name = name.map(normalize_name).transpose()?;
        let _guard = self.lock()?;
        let result = self.load_locked(path, name, progress);
        if result.is_err() {
            // Nothing the failed load stored is referenced by an image: sweep it.
            if let Err(e) = self.gc() {
                tracing::warn!(error = %e, "cannot clean up after failed load");
            }
        }
        result
    }

    /// What [`ImageStore::load`] would refuse before storing anything, checked without the
    /// store's lock: the path is a regular file or directory, and an OCI layout or an
    /// uncompressed archive lists an image (a compressed one is only checked in the load,
    /// which decompresses it once). Writes nothing.
    pub fn check(&self, path: &Path, name: Option<&str>) -> Result<(), ImageError> {
        let name = name.map(normalize_name).transpose()?;
        let (file, meta) = source::open_user_file(path)?;
        if meta.is_file() {
            let mut head = io::BufReader::new(file);
            let compressed = source::detect_compression(&mut head).map_err(ImageError::io(path))?;
            if compressed != source::Compression::None {
                return Ok(());
            }
        }
        // Never written to: the source is a directory or an uncompressed tarball.
        let unused = self.root.join("tmp").join(unique_name("check"));
        let source = Source::open(path, &unused)?;
        plan_of(&source, path, name.as_deref()).map(|_| ())
    }

    fn load_locked(
        &self,
        path: &Path,
        name: Option<String>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Image, ImageError> {
        let scratch = self.tmp_dir("load")?;
        let source = Source::open(path, &scratch.0.join("archive.tar"))?;
        let plan = plan_of(&source, path, name.as_deref())?;
        let names = match name {
            Some(n) => vec![n],
            None => plan
                .names
                .iter()
                .filter_map(|n| match normalize_name(n) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring image name from archive");
                        None
                    }
                })
                .collect(),
        };
        self.import(
            source.path(),
            &plan,
            &names,
            &mut |blob, what| self.store_blob(&source, blob, what, &scratch.0),
            progress,
            &scratch.0,
        )
    }

    /// Records an image once its plan is known: stores the documents, gets each blob through
    /// `fetch` (which returns its hex once it is in `blobs/`), unpacks new layers and names the
    /// image. The caller holds the lock; `origin` names the archive or registry in errors.
    pub(crate) fn import(
        &self,
        origin: &Path,
        plan: &Plan,
        names: &[String],
        fetch: &mut dyn FnMut(&BlobRef, &str) -> Result<String, ImageError>,
        progress: &mut dyn FnMut(&str),
        scratch: &Path,
    ) -> Result<Image, ImageError> {
        let mut blobs = Vec::new();
        for (hex, bytes) in &plan.documents {
            self.store_bytes(hex, bytes)?;
            blobs.push(hex.clone());
        }
        let config_hex = fetch(&plan.config, "config")?;
        blobs.push(config_hex.clone());
        let config_path = self.blob_path(&config_hex);
        let config_file = File::open(&config_path).map_err(ImageError::io(&config_path))?;
        let config: ImageConfiguration =
            serde_json::from_reader(BufReader::new(config_file.take(MAX_JSON))).map_err(|e| {
                ImageError::invalid(origin, format!("image config: {}", json_reason(&e)))
            })?;
        if *config.os() != Os::Linux || *config.architecture() != Arch::Amd64 {
            tracing::warn!(os = %config.os(), arch = %config.architecture(), "image is not linux/amd64");
        }
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != plan.layers.len() {
            return Err(ImageError::invalid(
                origin,
                format!(
                    "config lists {} diff_ids but the manifest has {} layers",
                    diff_ids.len(),
                    plan.layers.len()
                ),
            ));
        }
        let id = format!("sha256:{config_hex}");

        let mut layer_sizes = Vec::with_capacity(plan.layers.len());
        let total = plan.layers.len();
        for (i, (layer, diff_id)) in plan.layers.iter().zip(&diff_ids).enumerate() {
            let diff_hex = sha256_hex(diff_id)
                .ok_or_else(|| ImageError::invalid(origin, format!("bad diff_id {diff_id:?}")))?;
            let label = format!("layer {}/{total} sha256:{}", i + 1, short(diff_hex));
            if self.layer_path(diff_hex).is_dir() {
                // Shared with another image: neither the blob nor the unpack is needed again.
                if let Some(hex) = layer.digest.as_deref() {
                    if self.blob_path(hex).is_file() {
                        blobs.push(hex.to_string());
                    }
                }
                layer_sizes.push(self.known_layer_size(diff_hex));
                progress(&format!("{label} already present"));
                continue;
            }
            let blob_hex = fetch(layer, &format!("layer {}", i + 1))?;
            blobs.push(blob_hex.clone());
            let size = self.unpack(&blob_hex, &layer.media_type, diff_hex, scratch)?;
            layer_sizes.push(size);
            progress(&format!("{label} unpacked ({})", human_size(size)));
        }

        let c = config.config().clone().unwrap_or_default();
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let image = Image {
            id: id.clone(),
            names: Vec::new(),
            diff_ids,
            size: layer_sizes.iter().sum(),
            loaded_at: now_rfc3339(),
            config: ImageConfig {
                env: c.env().clone().unwrap_or_default(),
                working_dir: non_empty(c.working_dir()),
                user: non_empty(c.user()),
                entrypoint: c.entrypoint().clone().unwrap_or_default(),
                cmd: c.cmd().clone().unwrap_or_default(),
            },
        };
        blobs.sort();
        blobs.dedup();
        let record_path = self.record_path(&config_hex);
        let record = Record {
            image,
            layer_sizes,
            blobs,
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| ImageError::Metadata {
            path: record_path.clone(),
            source: e,
        })?;
        write_atomic(&record_path, &bytes)?;

        let mut map = self.read_names()?;
        for n in names {
            map.insert(n.clone(), id.clone());
        }
        self.write_names(&map)?;
        progress(&format!(
            "loaded {} {}",
            short(&config_hex),
            if names.is_empty() {
                "(no name)".to_string()
            } else {
                names.join(", ")
            }
        ));
        self.by_hex(&config_hex)
    }

    /// Size of a layer already on disk, from any image that recorded it.
    fn known_layer_size(&self, diff_hex: &str) -> u64 {
        let diff_id = format!("sha256:{diff_hex}");
        if let Ok(records) = self.records() {
            for r in records {
                if let Some(i) = r.image.diff_ids.iter().position(|d| *d == diff_id) {
                    if let Some(size) = r.layer_sizes.get(i) {
                        return *size;
                    }
                }
            }
        }
        dir_size(&self.layer_path(diff_hex))
    }

    fn store_bytes(&self, hex: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let path = self.blob_path(hex);
        if path.is_file() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    /// Copies a blob into the store, verifying size and digest on the way; returns its hex.
    /// Blobs without a known digest (docker-archive layers) are stored under the computed one.
    fn store_blob(
        &self,
        source: &Source,
        blob: &BlobRef,
        what: &str,
        scratch: &Path,
    ) -> Result<String, ImageError> {
        if let Some(hex) = blob.digest.as_deref() {
            if self.blob_path(hex).is_file() {
                return Ok(hex.to_string());
            }
        }
        let (reader, _) = source.read(&blob.path)?;
        // One byte past the expected size is enough to tell a longer blob.
        let limit = blob.size.map_or(u64::MAX, |s| s.saturating_add(1));
        let tmp = scratch.join(unique_name("blob"));
        let mut out = BlobWriter::create(&tmp)?;
        io::copy(&mut reader.take(limit), &mut out).map_err(ImageError::io(source.path()))?;
        let hex = out.finish(
            blob.digest.as_deref(),
            blob.size,
            source.path(),
            &format!("{what} ({})", blob.path),
        )?;
        let dest = self.blob_path(&hex);
        fs::rename(&tmp, &dest).map_err(ImageError::io(&dest))?;
        Ok(hex)
    }

    /// Unpacks a stored layer blob into `layers/<diff_hex>` via a scratch dir and an atomic
    /// rename, checking the uncompressed stream against the diff_id; returns unpacked bytes.
    fn unpack(
        &self,
        blob_hex: &str,
        media_type: &str,
        diff_hex: &str,
        scratch: &Path,
    ) -> Result<u64, ImageError> {
        let blob_path = self.blob_path(blob_hex);
        let file = File::open(&blob_path).map_err(ImageError::io(&blob_path))?;
        let mut buffered = BufReader::new(file);
        let magic =
            source::detect_compression(&mut buffered).map_err(ImageError::io(&blob_path))?;
        if let Some(declared) = media_type_compression(media_type) {
            if declared != magic {
                tracing::warn!(
                    media_type,
                    ?magic,
                    "layer media type disagrees with its content; trusting the content"
                );
            }
        }
        let decompressed = source::decompress(buffered).map_err(ImageError::io(&blob_path))?;
        let mut hashing = HashingReader::new(decompressed);
        let dir = scratch.join(unique_name("layer"));
        fs::create_dir(&dir).map_err(ImageError::io(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io(&dir))?;
        let label = format!("sha256:{}", short(diff_hex));
        let stats = unpack::unpack_layer(&mut hashing, &dir, &label)?;
        // The diff_id covers the whole stream, including padding after the end-of-archive marker.
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| ImageError::Entry {
            layer: label.clone(),
            entry: "<archive>".to_string(),
            reason: format!("cannot read layer: {e}"),
        })?;
        let (actual, _) = hashing.finish();
        if actual != diff_hex {
            return Err(ImageError::DigestMismatch {
                path: blob_path,
                what: "layer diff_id".to_string(),
                expected: format!("sha256:{diff_hex}"),
                actual: format!("sha256:{actual}"),
            });
        }
        let dest = self.layer_path(diff_hex);
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &dir,
            rustix::fs::CWD,
            &dest,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            // Another process unpacked the same layer meanwhile: keep theirs.
            Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {}
            Err(e) => {
                return Err(ImageError::Io {
                    path: dest,
                    source: e.into(),
                })
            }
        }
        Ok(stats.bytes)
    }

    fn read_names(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.names_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| ImageError::Metadata { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(ImageError::Io { path, source }),
        }
    }

    fn write_names(&self, map: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let path = self.names_path();
        let bytes = serde_json::to_vec_pretty(map).map_err(|source| ImageError::Metadata {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)
    }

    fn read_record(&self, hex: &str) -> Result<Option<Record>, ImageError> {
        let path = self.record_path(hex);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ImageError::Metadata { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ImageError::Io { path, source }),
        }
    }

    fn record_hexes(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(ImageError::io(&dir))? {
            let entry = entry.map_err(ImageError::io(&dir))?;
            let name = entry.file_name();
            if let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                if is_sha256_hex(hex) {
                    out.push(hex.to_string());
                }
            }
        }
        Ok(out)
    }

    fn records(&self) -> Result<Vec<Record>, ImageError> {
        let mut out = Vec::new();
        for hex in self.record_hexes()? {
            if let Some(r) = self.read_record(&hex)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn with_names(mut image: Image, names: &BTreeMap<String, String>) -> Image {
        image.names = names
            .iter()
            .filter(|(_, id)| **id == image.id)
            .map(|(n, _)| n.clone())
            .collect();
        image
    }

    fn by_hex(&self, hex: &str) -> Result<Image, ImageError> {
        let record = self
            .read_record(hex)?
            .ok_or_else(|| ImageError::NotFound(format!("sha256:{hex}")))?;
        Ok(Self::with_names(record.image, &self.read_names()?))
    }

    /// Images sorted by load time, oldest first.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let names = self.read_names()?;
        let mut images: Vec<Image> = self
            .records()?
            .into_iter()
            .map(|r| Self::with_names(r.image, &names))
            .collect();
        images.sort_by(|a, b| a.loaded_at.cmp(&b.loaded_at).then(a.id.cmp(&b.id)));
        Ok(images)
    }

    /// By name ("busybox" == "busybox:latest"), full id "sha256:<hex>", or a unique hex prefix
    /// (at least 4 characters) of the id.
    pub fn get(&self, reference: &str) -> Result<Image, ImageError> {
        let not_found = || ImageError::NotFound(reference.to_string());
        if let Some(rest) = reference.strip_prefix("sha256:") {
            if !is_sha256_hex(rest) {
                return Err(not_found());
            }
            return match self.read_record(rest)? {
                Some(r) => Ok(Self::with_names(r.image, &self.read_names()?)),
                None => Err(not_found()),
            };
        }
        let names = self.read_names()?;
        if let Ok(name) = normalize_name(reference) {
            if let Some(id) = names.get(&name) {
                let hex = sha256_hex(id).ok_or_else(|| ImageError::Metadata {
                    path: self.names_path(),
                    source: serde::de::Error::custom(format!("bad image id {id:?}")),
                })?;
                return self.by_hex(hex);
            }
        }
        let is_prefix = reference.len() >= 4
            && reference.len() <= 64
            && reference
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if is_prefix {
            let matches: Vec<String> = self
                .record_hexes()?
                .into_iter()
                .filter(|h| h.starts_with(reference))
                .collect();
            match matches.len() {
                0 => {}
                1 => return self.by_hex(&matches[0]),
                count => {
                    return Err(ImageError::Ambiguous {
                        reference: reference.to_string(),
                        count,
                    })
                }
            }
        }
        Err(not_found())
    }

    /// Removes the image (all its names) and every layer and blob no remaining image uses.
    /// The caller makes sure no workspace still runs on it.
    pub fn remove(&self, reference: &str) -> Result<Image, ImageError> {
        let _guard = self.lock()?;
        let image = self.get(reference)?;
        let mut names = self.read_names()?;
        names.retain(|_, id| *id != image.id);
        self.write_names(&names)?;
        if let Some(hex) = sha256_hex(&image.id) {
            let path = self.record_path(hex);
            fs::remove_file(&path).map_err(ImageError::io(&path))?;
        }
        self.gc()?;
        Ok(image)
    }

    /// Deletes layers and blobs that no image record references. Callers hold the lock.
    pub(crate) fn gc(&self) -> Result<(), ImageError> {
        let records = self.records()?;
        let mut layers = HashSet::new();
        let mut blobs = HashSet::new();
        for r in &records {
            for d in &r.image.diff_ids {
                if let Some(hex) = sha256_hex(d) {
                    layers.insert(hex.to_string());
                }
            }
            blobs.extend(r.blobs.iter().cloned());
        }
        let sweep = |dir: PathBuf, keep: &HashSet<String>| -> Result<(), ImageError> {
            for entry in fs::read_dir(&dir).map_err(ImageError::io(&dir))? {
                let entry = entry.map_err(ImageError::io(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let path = entry.path();
                let res = match entry.file_type() {
                    Ok(ft) if ft.is_dir() => fs::remove_dir_all(&path),
                    _ => fs::remove_file(&path),
                };
                res.map_err(ImageError::io(&path))?;
                tracing::debug!(path = %path.display(), "removed unused");
            }
            Ok(())
        };
        sweep(self.root.join("layers"), &layers)?;
        sweep(self.root.join("blobs/sha256"), &blobs)?;
        Ok(())
    }

    /// Whether the layer `diff_id` (`sha256:<hex>`) is unpacked here: a load of an image
    /// with it needs neither its blob nor an unpack.
    pub fn has_layer(&self, diff_id: &str) -> bool {
        sha256_hex(diff_id).is_some_and(|hex| self.layer_path(hex).is_dir())
    }

    /// Unpacked layer directories, bottom first (overlay wants top first: the caller reverses).
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .diff_ids
            .iter()
            .map(|d| self.layer_path(d.strip_prefix("sha256:").unwrap_or(d)))
            .collect()
    }
}

/// Media type of an uncompressed layer in an export.
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Largest blob looked at as a possible manifest when an export needs one.
const MANIFEST_MAX: u64 = 4 << 20;

impl ImageStore {
    /// Writes `reference` as an oci-archive (an OCI layout in a tar, what `podman load`
    /// takes) to `out`, from the blobs the load or pull kept: the config as it was, each
    /// layer as stored (a manifest the image came with gives its compressed blobs), a new
    /// manifest, and `index.json` naming it after the image's first name. Used to hand a
    /// stored image to a builder (`FROM` it) without a registry.
    ///
    /// `name` (default: the image's first name) is the `org.opencontainers.image.ref.name`
    /// podman names it by. A config whose `history` does not list one non-empty entry per
    /// layer (images made by hand, e.g. `scripts/make-image.sh`) gets one entry per layer
    /// instead, since buildah refuses to build on such a base: the export then has a config
    /// (and an id) of its own.
    pub fn export_oci_archive(
        &self,
        reference: &str,
        name: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<Image, ImageError> {
        self.export_oci(reference, name, out, true)
    }

    /// [`ImageStore::export_oci_archive`] with the config exactly as stored, so loading the
    /// archive elsewhere gives the same image id: how an image follows a workspace to
    /// another node.
    pub fn export_oci_archive_exact(
        &self,
        reference: &str,
        out: &mut dyn Write,
    ) -> Result<Image, ImageError> {
        self.export_oci(reference, None, out, false)
    }

    fn export_oci(
        &self,
        reference: &str,
        name: Option<&str>,
        out: &mut dyn Write,
        for_builder: bool,
    ) -> Result<Image, ImageError> {
        let _guard = self.lock()?;
        let image = self.get(reference)?;
        let config_hex = sha256_hex(&image.id)
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))?
            .to_string();
        // Each layer's blob: kept as a plain tar under its diff_id, or named by a manifest
        // kept by this image or another one that shares the layer.
        let records = self.records()?;
        let mut manifests: BTreeMap<String, Vec<(String, u64, String)>> = BTreeMap::new();
        let mut layers = Vec::with_capacity(image.diff_ids.len());
        for (i, diff_id) in image.diff_ids.iter().enumerate() {
            let diff_hex = sha256_hex(diff_id).ok_or_else(|| ImageError::Metadata {
                path: self.record_path(&config_hex),
                source: serde::de::Error::custom(format!("bad diff_id {diff_id:?}")),
            })?;
            if let Ok(meta) = fs::metadata(self.blob_path(diff_hex)) {
                layers.push((diff_hex.to_string(), meta.len(), LAYER_TAR.to_string()));
                continue;
            }
            let found = records.iter().find_map(|r| {
                let at = r.image.diff_ids.iter().position(|d| d == diff_id)?;
                let m = manifests.entry(r.image.id.clone()).or_insert_with(|| {
                    self.kept_manifest_layers(r, &r.image.id)
                        .unwrap_or_default()
                });
                m.get(at)
                    .filter(|l| self.blob_path(&l.0).is_file())
                    .cloned()
            });
            match found {
                Some(l) => layers.push(l),
                None => {
                    return Err(ImageError::invalid(
                        &self.root,
                        format!(
                            "image {reference} cannot be exported: the blob of layer {} is not \
                             kept (load or pull the image again)",
                            i + 1
                        ),
                    ))
                }
            }
        }
        let config_path = self.blob_path(&config_hex);
        let mut config = Vec::new();
        File::open(&config_path)
            .and_then(|f| f.take(MAX_JSON).read_to_end(&mut config))
            .map_err(ImageError::io(&config_path))?;
        let config = if for_builder {
            with_layer_history(config, image.diff_ids.len())
        } else {
            config
        };
        let export_hex = hex::encode(Sha256::digest(&config));
        let config_size = config.len();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{export_hex}"),
                "size": config_size,
            },
            "layers": layers.iter().map(|(hex, size, mt)| serde_json::json!({
                "mediaType": mt, "digest": format!("sha256:{hex}"), "size": size,
            })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).map_err(|source| ImageError::Metadata {
            path: self.record_path(&config_hex),
            source,
        })?;
        let manifest_hex = hex::encode(Sha256::digest(&manifest));
        let mut desc = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_hex}"),
            "size": manifest.len(),
        });
        if let Some(name) = name.or(image.names.first().map(String::as_str)) {
            desc["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": name });
        }
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [desc] });
        let index = serde_json::to_vec(&index).map_err(|source| ImageError::Metadata {
            path: self.record_path(&config_hex),
            source,
        })?;

        let err = |e: io::Error| ImageError::Io {
            path: PathBuf::from("<export>"),
            source: e,
        };
        let mut tar = tar::Builder::new(out);
        let bytes = |tar: &mut tar::Builder<&mut dyn Write>, name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, data).map_err(err)
        };
        bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        bytes(&mut tar, &format!("blobs/sha256/{manifest_hex}"), &manifest)?;
        bytes(&mut tar, &format!("blobs/sha256/{export_hex}"), &config)?;
        let mut blob_hexes: Vec<String> = layers.iter().map(|l| l.0.clone()).collect();
        blob_hexes.sort();
        blob_hexes.dedup();
        for hex in &blob_hexes {
            let path = self.blob_path(hex);
            let mut f = File::open(&path).map_err(ImageError::io(&path))?;
            let len = f.metadata().map_err(ImageError::io(&path))?.len();
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(len);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, format!("blobs/sha256/{hex}"), (&mut f).take(len))
                .map_err(err)?;
        }
        bytes(&mut tar, "index.json", &index)?;
        tar.into_inner().map_err(err)?.flush().map_err(err)?;
        Ok(image)
    }

    /// Layers (blob hex, size, media type) of a manifest among `record`'s blobs whose
    /// config is `id`.
    fn kept_manifest_layers(
        &self,
        record: &Record,
        id: &str,
    ) -> Option<Vec<(String, u64, String)>> {
        for hex in &record.blobs {
            let path = self.blob_path(hex);
            if fs::metadata(&path).map_or(true, |m| m.len() > MANIFEST_MAX) {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(m) = serde_json::from_slice::<oci_spec::image::ImageManifest>(&bytes) else {
                continue;
            };
            if m.config().digest().to_string() != id {
                continue;
            }
            return m
                .layers()
                .iter()
                .map(|d| {
                    let mt = match media_type_compression(d.media_type().as_ref()) {
                        Some(source::Compression::Gzip) => {
                            "application/vnd.oci.image.layer.v1.tar+gzip"
                        }
                        Some(source::Compression::Zstd) => {
                            "application/vnd.oci.image.layer.v1.tar+zstd"
                        }
                        _ => LAYER_TAR,
                    };
                    sha256_hex(d.digest().as_ref())
                        .map(|h| (h.to_string(), d.size(), mt.to_string()))
                })
                .collect();
        }
        None
    }
}

/// `config` with one non-empty `history` entry per layer when it does not have exactly
/// that (see [`ImageStore::export_oci_archive`]); unchanged (same bytes) otherwise or when
/// it is not a JSON object.
fn with_layer_history(config: Vec<u8>, layers: usize) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&config) else {
        return config;
    };
    let non_empty = v
        .get("history")
        .and_then(|h| h.as_array())
        .map(|h| {
            h.iter()
                .filter(|e| e.get("empty_layer").and_then(|b| b.as_bool()) != Some(true))
                .count()
        })
        .unwrap_or(0);
    if non_empty == layers {
        return config;
    }
    let Some(obj) = v.as_object_mut() else {
        return config;
    };
    let history: Vec<serde_json::Value> = (1..=layers)
        .map(|i| serde_json::json!({ "created_by": format!("layer {i} (history filled in by hearth)") }))
        .collect();
    obj.insert("history".into(), serde_json::Value::Array(history));
    serde_json::to_vec(&v).unwrap_or(config)
}
