//! Object stores: a local directory and S3-compatible services.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object {key} not found in {location}")]
    NotFound { location: String, key: String },
    #[error("object {key} in {location} is {size} bytes, over the {limit} byte limit")]
    TooLarge {
        location: String,
        key: String,
        size: u64,
        limit: u64,
    },
    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("s3 error on {location}/{key}: {source}")]
    S3 {
        location: String,
        key: String,
        source: Box<object_store::Error>,
    },
    #[error("invalid object key {0:?}")]
    BadKey(String),
    #[error("object {key} in {location} ends before byte {end}")]
    Truncated {
        location: String,
        key: String,
        end: u64,
    },
}

#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// Minimal object store. Objects are immutable once written; `put` is atomic (a reader sees the
/// whole object or nothing) and `sync` makes all earlier puts durable.
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn location(&self) -> String;
    /// Whether requests wait on a network: then more threads than cores keep the CPUs busy.
    fn is_remote(&self) -> bool {
        false
    }
    /// Reads an object, refusing ones larger than `limit` before reading them.
    fn get(&self, key: &str, limit: u64) -> Result<Bytes, BackendError>;
    /// Reads exactly `len` bytes at `offset` (a chunk or a run of chunks in a pack); a shorter
    /// object is [`BackendError::Truncated`]. Callers bound `len`.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, BackendError>;
    fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError>;
    fn exists(&self, key: &str) -> Result<bool, BackendError>;
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError>;
    /// Deleting a missing object is not an error.
    fn delete(&self, key: &str) -> Result<(), BackendError>;
    fn sync(&self) -> Result<(), BackendError>;
}

fn check_key(key: &str) -> Result<(), BackendError> {
    let ok = !key.is_empty()
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BackendError::BadKey(key.to_string()))
    }
}

/// A directory store. Objects are written to `tmp/` and renamed into place. [`Backend::sync`]
/// fsyncs exactly the objects written since the last sync (and their directories) rather than
/// `syncfs`, which on a shared host would also wait for everyone else's dirty data; packs
/// start their writeback as soon as they are written, so that final wait is short.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    dirty: std::sync::Mutex<Vec<PathBuf>>,
}

impl LocalBackend {
    /// Opens object `key` for reading; a missing one is `NotFound`, not an I/O error.
    fn open_object(&self, key: &str) -> Result<(PathBuf, fs::File), BackendError> {
        let path = self.path(key)?;
        match fs::File::open(&path) {
            Ok(f) => Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BackendError::NotFound {
                location: self.location(),
                key: key.to_string(),
            }),
            Err(e) => Err(BackendError::Io { path, source: e }),
        }
    }

    pub fn open(root: &Path) -> Result<LocalBackend, BackendError> {
        let io_err = |path: &Path, source| BackendError::Io {
            path: path.to_path_buf(),
            source,
        };
        fs::create_dir_all(root.join("tmp")).map_err(|e| io_err(root, e))?;
        fs::create_dir_all(root.join("snapshots")).map_err(|e| io_err(root, e))?;
        fs::create_dir_all(root.join("locks")).map_err(|e| io_err(root, e))?;
        fs::create_dir_all(root.join("packs")).map_err(|e| io_err(root, e))?;
        fs::create_dir_all(root.join("index")).map_err(|e| io_err(root, e))?;
        Ok(LocalBackend {
            root: root.to_path_buf(),
            dirty: Default::default(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BackendError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, key: &str, limit: u64) -> Result<Bytes, BackendError> {
        let (path, mut f) = self.open_object(key)?;
        let size = f
            .metadata()
            .map_err(|e| BackendError::Io {
                path: path.clone(),
                source: e,
            })?
            .len();
        if size > limit {
            return Err(BackendError::TooLarge {
                location: self.location(),
                key: key.into(),
                size,
                limit,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        Read::by_ref(&mut f)
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| BackendError::Io {
                path: path.clone(),
                source: e,
            })?;
        Ok(Bytes::from(buf))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        use std::io::Seek;
        let (path, f) = self.open_object(key)?;
        let truncated = || BackendError::Truncated {
            location: self.location(),
            key: key.to_string(),
            end: offset.saturating_add(len),
        };
        let size = f
            .metadata()
            .map_err(|e| BackendError::Io {
                path: path.clone(),
                source: e,
            })?
            .len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(truncated());
        }
        // Read into uninitialised capacity: no memset of up to tens of MB per call.
        let mut buf = Vec::with_capacity(len as usize);
        let mut f = f;
        f.seek(io::SeekFrom::Start(offset))
            .and_then(|_| Read::by_ref(&mut f).take(len).read_to_end(&mut buf))
            .map_err(|e| BackendError::Io {
                path: path.clone(),
                source: e,
            })?;
        if buf.len() as u64 != len {
            return Err(truncated());
        }
        Ok(Bytes::from(buf))
    }

    fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let mut rnd = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut rnd);
        let tmp = self.root.join("tmp").join(hex::encode(rnd));
        let io_err = |p: &Path, source| BackendError::Io {
            path: p.to_path_buf(),
            source,
        };
        let res = (|| {
            let mut f = fs::File::create_new(&tmp).map_err(|e| io_err(&tmp, e))?;
            f.write_all(&data).map_err(|e| io_err(&tmp, e))?;
            if data.len() >= 1024 * 1024 {
                // Start writeback now; `sync` then mostly finds it done.
                // SAFETY: plain syscall on an fd we own.
                unsafe {
                    libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
                }
            }
            drop(f);
            match fs::rename(&tmp, &path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                    }
                    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))
                }
                r => r.map_err(|e| io_err(&path, e)),
            }
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        } else if !key.starts_with("locks/") {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(path);
        }
        res
    }

    fn exists(&self, key: &str) -> Result<bool, BackendError> {
        let path = self.path(key)?;
        match fs::symlink_metadata(&path) {
            // A crash before `sync` can leave a renamed but empty object: not trusted.
            Ok(m) => Ok(m.is_file() && m.len() >= crate::format::MIN_OBJECT_LEN as u64),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BackendError::Io { path, source: e }),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let mut out = Vec::new();
        let prefix = prefix.trim_end_matches('/');
        let dir = self.path(prefix)?;
        fn walk(dir: &Path, key: &str, out: &mut Vec<ObjectInfo>) -> Result<(), BackendError> {
            let rd = match fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    return Err(BackendError::Io {
                        path: dir.to_path_buf(),
                        source: e,
                    })
                }
            };
            for ent in rd {
                let ent = ent.map_err(|e| BackendError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                })?;
                let name = ent.file_name().to_string_lossy().into_owned();
                let sub = format!("{key}/{name}");
                let meta = ent.metadata().map_err(|e| BackendError::Io {
                    path: ent.path(),
                    source: e,
                })?;
                if meta.is_dir() {
                    walk(&ent.path(), &sub, out)?;
                } else if meta.is_file() {
                    out.push(ObjectInfo {
                        key: sub,
                        size: meta.len(),
                        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
            Ok(())
        }
        walk(&dir, prefix, &mut out)?;
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(BackendError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    fn sync(&self) -> Result<(), BackendError> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        let mut dirs: Vec<PathBuf> = dirty
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        let fsync = |p: &Path| -> Result<(), BackendError> {
            match fs::File::open(p).and_then(|f| f.sync_all()) {
                // Deleted since (a lease, a gc'd object): nothing to make durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r.map_err(|source| BackendError::Io {
                    path: p.to_path_buf(),
                    source,
                }),
            }
        };
        let res = dirty.iter().try_for_each(|p| fsync(p));
        let res = res.and_then(|()| dirs.iter().try_for_each(|p| fsync(p)));
        if res.is_err() {
            // Keep them for the next attempt.
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(dirty);
        }
        res
    }
}

/// Where and how to reach an S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:5000`; `None` means AWS.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Key prefix inside the bucket, so several stores can share one.
    pub prefix: String,
    /// Objects at least this large go up as multipart uploads.
    pub multipart_threshold: usize,
    pub part_size: usize,
    pub max_retries: usize,
    pub request_timeout: Duration,
}

impl S3Config {
    pub fn new(
        endpoint: Option<String>,
        bucket: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Self {
        S3Config {
            endpoint,
            bucket: bucket.to_string(),
            region: "us-east-1".into(),
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            prefix: String::new(),
            multipart_threshold: 8 * 1024 * 1024,
            part_size: 5 * 1024 * 1024,
            max_retries: 8,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// S3 via `object_store`, driven by a small private tokio runtime so callers stay synchronous.
#[derive(Debug)]
pub struct S3Backend {
    store: Arc<AmazonS3>,
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    cfg: S3Config,
}

impl Drop for S3Backend {
    /// The last owner may be an async task (a node dropping its repository): a runtime
    /// dropped there panics, because a normal drop waits for its blocking threads.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl S3Backend {
    pub fn open(cfg: S3Config) -> Result<S3Backend, BackendError> {
        let location = format!("s3://{}", cfg.bucket);
        let s3err = |source| BackendError::S3 {
            location: location.clone(),
            key: String::new(),
            source: Box::new(source),
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(&cfg.secret_access_key)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: cfg.max_retries,
                retry_timeout: Duration::from_secs(120),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(cfg.request_timeout)
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_allow_http(true),
            );
        if let Some(ep) = &cfg.endpoint {
            b = b
                .with_endpoint(ep)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(s3err)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hearth-snapshot-s3")
            .enable_all()
            .build()
            .map_err(|e| BackendError::Io {
                path: PathBuf::from(&location),
                source: e,
            })?;
        Ok(S3Backend {
            store: Arc::new(store),
            rt: Some(rt),
            cfg,
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.rt {
            Some(rt) => rt.handle(),
            None => unreachable!("the runtime is taken only in drop"),
        }
    }

    fn obj_path(&self, key: &str) -> Result<ObjPath, BackendError> {
        check_key(key)?;
        Ok(if self.cfg.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{}", self.cfg.prefix.trim_matches('/'), key))
        })
    }

    fn err(&self, key: &str, e: object_store::Error) -> BackendError {
        match e {
            object_store::Error::NotFound { .. } => BackendError::NotFound {
                location: self.location(),
                key: key.into(),
            },
            e => BackendError::S3 {
                location: self.location(),
                key: key.into(),
                source: Box::new(e),
            },
        }
    }
}

impl Backend for S3Backend {
    fn is_remote(&self) -> bool {
        true
    }

    fn location(&self) -> String {
        match &self.cfg.endpoint {
            Some(ep) => format!("{}/{}/{}", ep, self.cfg.bucket, self.cfg.prefix),
            None => format!("s3://{}/{}", self.cfg.bucket, self.cfg.prefix),
        }
    }

    fn get(&self, key: &str, limit: u64) -> Result<Bytes, BackendError> {
        let path = self.obj_path(key)?;
        self.handle().block_on(async {
            let res = self.store.get(&path).await.map_err(|e| self.err(key, e))?;
            if res.meta.size > limit {
                return Err(BackendError::TooLarge {
                    location: self.location(),
                    key: key.into(),
                    size: res.meta.size,
                    limit,
                });
            }
            res.bytes().await.map_err(|e| self.err(key, e))
        })
    }

    fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        let path = self.obj_path(key)?;
        self.handle().block_on(async {
            if data.len() >= self.cfg.multipart_threshold {
                let mut upload = self
                    .store
                    .put_multipart(&path)
                    .await
                    .map_err(|e| self.err(key, e))?;
                let mut parts = Vec::new();
                let mut off = 0;
                while off < data.len() {
                    let end = (off + self.cfg.part_size).min(data.len());
                    parts.push(upload.put_part(data.slice(off..end).into()));
                    off = end;
                }
                let res = match futures_util::future::try_join_all(parts).await {
                    Ok(_) => upload.complete().await.map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = res {
                    // Never leave parts behind; an incomplete upload is invisible to readers.
                    if let Err(abort) = upload.abort().await {
                        tracing::warn!(key, error = %abort, "aborting multipart upload failed");
                    }
                    return Err(self.err(key, e));
                }
                Ok(())
            } else {
                self.store
                    .put(&path, data.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| self.err(key, e))
            }
        })
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        let path = self.obj_path(key)?;
        let end = offset.saturating_add(len);
        let got = self.handle().block_on(async {
            self.store
                .get_range(&path, offset..end)
                .await
                .map_err(|e| match e {
                    object_store::Error::NotFound { .. } => self.err(key, e),
                    // A range past the end is a short object, not an outage.
                    e if e.to_string().contains("Range") || e.to_string().contains("range") => {
                        BackendError::Truncated {
                            location: self.location(),
                            key: key.into(),
                            end,
                        }
                    }
                    e => self.err(key, e),
                })
        })?;
        if got.len() as u64 != len {
            return Err(BackendError::Truncated {
                location: self.location(),
                key: key.into(),
                end,
            });
        }
        Ok(got)
    }

    fn exists(&self, key: &str) -> Result<bool, BackendError> {
        let path = self.obj_path(key)?;
        self.handle().block_on(async {
            match self.store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.err(key, e)),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        use futures_util::TryStreamExt;
        let path = self.obj_path(prefix.trim_end_matches('/'))?;
        let strip = if self.cfg.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.cfg.prefix.trim_matches('/'))
        };
        self.handle().block_on(async {
            let metas: Vec<object_store::ObjectMeta> = self
                .store
                .list(Some(&path))
                .try_collect()
                .await
                .map_err(|e| self.err(prefix, e))?;
            Ok(metas
                .into_iter()
                .filter_map(|m| {
                    let full = m.location.to_string();
                    let key = full.strip_prefix(&strip)?.to_string();
                    Some(ObjectInfo {
                        key,
                        size: m.size,
                        modified: m.last_modified.into(),
                    })
                })
                .collect())
        })
    }

    fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.obj_path(key)?;
        self.handle().block_on(async {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err(key, e)),
            }
        })
    }

    fn sync(&self) -> Result<(), BackendError> {
        // A completed S3 PUT is durable.
        Ok(())
    }
}
