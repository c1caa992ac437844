//! Pulls from registries speaking the OCI distribution protocol.
//!
//! Blobs download into `downloads/` outside the store lock, so pulls of different images run
//! side by side: `<hex>.partial` grows as bytes arrive and survives a dropped connection or a
//! crash (the next pull continues it with a range request), and becomes `<hex>` once its digest
//! checks out. Recording the image (under the store lock) moves it into `blobs/`. `gc` never
//! looks at `downloads/`, so a failed load elsewhere cannot sweep a finished download before its
//! pull records it. One download per digest at a time: an in-process set (threads wait on a
//! condvar) plus an `flock` on `downloads/<hex>.lock` against other processes.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::manifest::{
    is_index_media_type, is_manifest_media_type, manifest_accept, pick, BlobRef, Plan,
};
use crate::source::MAX_JSON;
use crate::store::{mkdir_private, sha256_hex, short, BlobWriter};
use crate::{human_size, normalize_name, Image, ImageError, ImageStore};

/// How often a download reports progress at most.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Registry credentials (basic auth, also sent to a token service).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a pull reports as it goes; the caller decides how to print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// The reference resolved to this image manifest (`sha256:<hex>`).
    Resolved {
        reference: String,
        manifest: String,
        layers: usize,
    },
    Blob(BlobProgress),
    /// A step after the downloads (unpacking, naming): the same lines `load` prints.
    Step(String),
}

/// Progress of one blob (the config or a layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProgress {
    /// "config" or "layer 2/5".
    pub what: String,
    /// `sha256:<hex>` of the (compressed) blob.
    pub digest: String,
    /// Bytes on disk, resumed ones included.
    pub done: u64,
    pub total: u64,
    /// Average over this transfer (resumed bytes excluded); 0 when nothing was transferred.
    pub bytes_per_sec: u64,
    pub state: BlobState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    /// Already in the store (or its layer is already unpacked): not downloaded.
    Present,
    /// Another pull (thread or process) is downloading it; this one waits for it.
    Waiting,
    /// Bytes are arriving; `done` started above 0 when an earlier partial download was resumed.
    Downloading,
    /// Downloaded and verified.
    Done,
}

impl fmt::Display for BlobProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.digest.strip_prefix("sha256:").unwrap_or(&self.digest);
        write!(f, "{} sha256:{}: ", self.what, short(hex))?;
        match self.state {
            BlobState::Present => write!(f, "already present"),
            BlobState::Waiting => write!(f, "waiting for another download"),
            BlobState::Downloading => write!(
                f,
                "{} / {} ({}/s)",
                human_size(self.done),
                human_size(self.total),
                human_size(self.bytes_per_sec)
            ),
            BlobState::Done => write!(f, "done ({})", human_size(self.total)),
        }
    }
}

/// An image reference, normalized like docker does: `busybox` is
/// `docker.io/library/busybox:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// As written in names: "docker.io", "127.0.0.1:5000".
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`; when set it is what gets pulled (the tag is informative).
    pub digest: Option<String>,
    /// Only ever true for registries on loopback addresses.
    pub plain_http: bool,
}

impl Reference {
    /// An `http://` or `https://` prefix forces the scheme; without one, loopback registries
    /// (127.0.0.0/8, ::1, localhost) get plain http and all others https. Plain http to any other
    /// registry is refused here, before anything touches the network.
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let (scheme, rest) = split_scheme(reference);
        let parsed: oci_spec::distribution::Reference =
            rest.parse().map_err(|e| ImageError::InvalidName {
                name: reference.to_string(),
                reason: format!("{e}"),
            })?;
        let digest = parsed.digest().map(str::to_string);
        if let Some(d) = &digest {
            if sha256_hex(d).is_none() {
                return Err(ImageError::InvalidName {
                    name: reference.to_string(),
                    reason: "only sha256 digests are supported".to_string(),
                });
            }
        }
        let registry = parsed.registry().to_string();
        let loopback = is_loopback(&registry);
        let plain_http = match scheme {
            Some("http") if !loopback => return Err(ImageError::InsecureRegistry { registry }),
            Some("http") => true,
            Some(_) => false,
            None => loopback,
        };
        Ok(Self {
            registry,
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_string),
            digest,
            plain_http,
        })
    }

    /// Where requests go: Docker Hub's API lives on another host than its name.
    pub fn endpoint(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" => "registry-1.docker.io",
            r => r,
        }
    }

    fn repo_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", self.endpoint(), self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn split_scheme(reference: &str) -> (Option<&'static str>, &str) {
    if let Some(rest) = reference.strip_prefix("http://") {
        (Some("http"), rest)
    } else if let Some(rest) = reference.strip_prefix("https://") {
        (Some("https"), rest)
    } else {
        (None, reference)
    }
}

/// `host`, `host:port`, `[v6]:port` or `v6` on a loopback address.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if registry.matches(':').count() == 1 {
        registry.split(':').next().unwrap_or(registry)
    } else {
        registry
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `Bearer realm="...",service="..."` => ("bearer", params).
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, mut rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().to_ascii_lowercase();
        let mut value = String::new();
        if let Some(quoted) = after.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            value.push(next);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end..];
        } else {
            let end = after.find(',').unwrap_or(after.len());
            value = after[..end].trim().to_string();
            rest = &after[end..];
        }
        params.insert(key, value);
    }
    (scheme.to_ascii_lowercase(), params)
}

fn basic(credentials: &Credentials) -> String {
    let raw = format!("{}:{}", credentials.username, credentials.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The start of an error body, for messages.
fn body_snippet(resp: ureq::Response) -> String {
    let mut text = String::new();
    let _ = resp.into_reader().take(512).read_to_string(&mut text);
    text.trim().chars().filter(|c| !c.is_control()).collect()
}

/// A negotiated `Authorization` value.
struct Auth {
    header: String,
    /// The token service a bearer token came from; `None` for basic auth.
    realm: Option<String>,
}

/// One pull's connection to its registry; remembers the negotiated `Authorization` value.
struct Client<'a> {
    agent: ureq::Agent,
    reference: &'a Reference,
    credentials: Option<&'a Credentials>,
    authorization: Mutex<Option<Auth>>,
}

impl<'a> Client<'a> {
    fn new(reference: &'a Reference, credentials: Option<&'a Credentials>) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(60))
            .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent,
            reference,
            credentials,
            authorization: Mutex::new(None),
        }
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/{tail}", self.reference.repo_url())
    }

    fn authorization(&self) -> MutexGuard<'_, Option<Auth>> {
        self.authorization.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unauthorized(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Unauthorized {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            reason: reason.into(),
        }
    }

    /// GET with the registry's auth dance: on a 401, answer its challenge once and retry.
    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<ureq::Response, ImageError> {
        let mut answered = false;
        loop {
            let mut req = self.agent.get(url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(auth) = self.authorization().as_ref() {
                req = req.set("Authorization", &auth.header);
            }
            match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if !answered => {
                    let challenge = resp.header("www-authenticate").unwrap_or("").to_string();
                    let auth = self.answer(&challenge)?;
                    *self.authorization() = Some(auth);
                    answered = true;
                }
                Err(ureq::Error::Status(code @ (401 | 403), resp)) => {
                    return Err(self.refused(code, resp));
                }
                Err(ureq::Error::Status(code, resp)) => {
                    return Err(ImageError::Registry {
                        url: url.to_string(),
                        reason: format!("status {code}: {}", body_snippet(resp)),
                    })
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(ImageError::Registry {
                        url: url.to_string(),
                        reason: t.to_string(),
                    })
                }
            }
        }
    }

    /// The error for a 401 or 403 that answering the challenge did not (or cannot) fix. A
    /// registry refusing a bearer token says why in its challenge's `error` parameter (RFC 6750:
    /// `invalid_token` for an expired or untrusted token, `insufficient_scope` when the token
    /// does not grant the access); the message names the token service that issued it, since
    /// that is where the problem lies, not with the credentials.
    fn refused(&self, code: u16, resp: ureq::Response) -> ImageError {
        let params = resp
            .header("www-authenticate")
            .map(|c| parse_challenge(c).1)
            .unwrap_or_default();
        let body = body_snippet(resp);
        let realm = self.authorization().as_ref().and_then(|a| a.realm.clone());
        let Some(realm) = realm else {
            let what = if self.credentials.is_some() {
                "credentials rejected"
            } else {
                "credentials required"
            };
            return self.unauthorized(format!("{what} (status {code}: {body})"));
        };
        let error = params.get("error").map(String::as_str);
        let detail = params
            .get("error_description")
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        let reason = match error {
            Some("invalid_token") => format!(
                "the registry refused the token from token service {realm} as invalid_token{detail} \
                 (expired, not yet valid, for another service or issuer, or signed by a key the \
                 registry does not trust)"
            ),
            Some("insufficient_scope") => format!(
                "token service {realm} did not grant {} (insufficient_scope{detail})",
                params.get("scope").map_or("the access needed", String::as_str)
            ),
            Some(other) => format!(
                "the registry refused the token from token service {realm} ({other}{detail}; \
                 status {code}: {body})"
            ),
            None => format!(
                "the registry refused the token from token service {realm} (status {code}: {body})"
            ),
        };
        self.unauthorized(reason)
    }

    /// The `Authorization` value answering a `WWW-Authenticate` challenge.
    fn answer(&self, challenge: &str) -> Result<Auth, ImageError> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.as_str() {
            "basic" => match self.credentials {
                Some(c) => Ok(Auth {
                    header: basic(c),
                    realm: None,
                }),
                None => Err(self.unauthorized("credentials required")),
            },
            "bearer" => self.token(&params),
            _ => Err(self.unauthorized(format!("unsupported auth challenge {challenge:?}"))),
        }
    }

    fn token(&self, params: &HashMap<String, String>) -> Result<Auth, ImageError> {
        let realm = params
            .get("realm")
            .ok_or_else(|| self.unauthorized("bearer challenge without a realm"))?;
        if let Some(rest) = realm.strip_prefix("http://") {
            let host = rest.split('/').next().unwrap_or(rest);
            if !is_loopback(host) {
                return Err(ImageError::InsecureRegistry {
                    registry: host.to_string(),
                });
            }
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        let mut req = self.agent.get(realm).query("scope", &scope);
        if let Some(service) = params.get("service") {
            req = req.query("service", service);
        }
        if let Some(c) = self.credentials {
            req = req.set("Authorization", &basic(c));
        }
        let resp = match req.call() {
            Ok(resp) => resp,
            Err(ureq::Error::Status(code @ (401 | 403), resp)) => {
                let what = if self.credentials.is_some() {
                    "rejected the credentials"
                } else {
                    "requires credentials"
                };
                return Err(self.unauthorized(format!(
                    "token service {realm} {what} (status {code}: {})",
                    body_snippet(resp)
                )));
            }
            Err(e) => {
                return Err(ImageError::Registry {
                    url: realm.clone(),
                    reason: e.to_string(),
                })
            }
        };
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token =
            serde_json::from_reader(resp.into_reader().take(MAX_JSON)).map_err(|e| {
                ImageError::Registry {
                    url: realm.clone(),
                    reason: format!("bad token answer: {e}"),
                }
            })?;
        token
            .token
            .or(token.access_token)
            .filter(|t| !t.is_empty())
            .map(|t| Auth {
                header: format!("Bearer {t}"),
                realm: Some(realm.clone()),
            })
            .ok_or_else(|| ImageError::Registry {
                url: realm.clone(),
                reason: "token answer holds no token".to_string(),
            })
    }

    /// Fetches a manifest or index by tag or digest; returns (hex, bytes, media type). With an
    /// expected digest (and size) the document must match it.
    fn manifest(
        &self,
        reference: &str,
        expected: Option<(&str, Option<u64>)>,
    ) -> Result<(String, Vec<u8>, String), ImageError> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self.get(&url, &[("Accept", &manifest_accept())])?;
        let content_type = resp.content_type().to_string();
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::Registry {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if bytes.len() as u64 > MAX_JSON {
            return Err(ImageError::Registry {
                url,
                reason: "manifest is too large".to_string(),
            });
        }
        let hex = hex::encode(Sha256::digest(&bytes));
        if let Some((want, size)) = expected {
            if let Some(size) = size.filter(|s| *s != bytes.len() as u64) {
                return Err(ImageError::SizeMismatch {
                    path: PathBuf::from(&url),
                    what: "manifest".to_string(),
                    expected: size,
                    actual: bytes.len() as u64,
                });
            }
            if want != hex {
                return Err(ImageError::DigestMismatch {
                    path: PathBuf::from(&url),
                    what: "manifest".to_string(),
                    expected: format!("sha256:{want}"),
                    actual: format!("sha256:{hex}"),
                });
            }
        }
        #[derive(Deserialize)]
        struct Typed {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        let media_type = serde_json::from_slice::<Typed>(&bytes)
            .ok()
            .and_then(|t| t.media_type)
            .unwrap_or(content_type);
        Ok((hex, bytes, media_type))
    }

    /// Follows indexes (picking linux/amd64) down to an image manifest; returns every document
    /// on the way (to keep as blobs) and the manifest with its hex.
    fn resolve(&self) -> Result<Resolved, ImageError> {
        let origin = PathBuf::from(self.reference.repo_url());
        let mut documents = Vec::new();
        let first = self
            .reference
            .digest
            .clone()
            .or_else(|| self.reference.tag.clone())
            .unwrap_or_else(|| "latest".to_string());
        let mut expected: Option<(String, Option<u64>)> = self
            .reference
            .digest
            .as_deref()
            .and_then(sha256_hex)
            .map(|h| (h.to_string(), None));
        let mut next = first;
        for _ in 0..4 {
            let (hex, bytes, media_type) =
                self.manifest(&next, expected.as_ref().map(|(h, s)| (h.as_str(), *s)))?;
            documents.push((hex.clone(), bytes));
            let bytes = &documents[documents.len() - 1].1;
            if is_index_media_type(&media_type) {
                let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| {
                    ImageError::invalid(&origin, format!("index sha256:{hex}: {e}"))
                })?;
                let desc = pick(&origin, index.manifests(), None)?;
                let digest = desc.digest().to_string();
                let want = sha256_hex(&digest).ok_or_else(|| {
                    ImageError::invalid(&origin, format!("unsupported digest {digest}"))
                })?;
                expected = Some((want.to_string(), Some(desc.size())));
                next = digest;
                continue;
            }
            if !is_manifest_media_type(&media_type) {
                return Err(ImageError::invalid(
                    &origin,
                    format!("unsupported manifest media type {media_type:?}"),
                ));
            }
            let manifest: ImageManifest = serde_json::from_slice(bytes)
                .map_err(|e| ImageError::invalid(&origin, format!("manifest sha256:{hex}: {e}")))?;
            return Ok((documents, manifest, hex));
        }
        Err(ImageError::invalid(&origin, "indexes nested too deeply"))
    }
}

/// Documents met on the way (hex, bytes), the image manifest and its hex.
type Resolved = (Vec<(String, Vec<u8>)>, ImageManifest, String);

/// A registry image resolved down to its manifest, not downloaded yet: what a pull can be
/// refused for (a bad reference, credentials, an image the registry does not have) has
/// been decided. See [`resolve_pull`] and [`ImageStore::pull_resolved`].
pub struct ResolvedPull {
    reference: Reference,
    name: String,
    credentials: Option<Credentials>,
    auth: Option<Auth>,
    documents: Vec<(String, Vec<u8>)>,
    manifest: ImageManifest,
    manifest_hex: String,
}

impl fmt::Debug for ResolvedPull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedPull")
            .field("reference", &self.reference)
            .field("manifest", &self.manifest_hex)
            .finish_non_exhaustive()
    }
}

impl ResolvedPull {
    /// `sha256:<hex>` of the image manifest.
    pub fn manifest_digest(&self) -> String {
        format!("sha256:{}", self.manifest_hex)
    }
}

/// Parses `reference` and fetches its manifest (through any index) from the registry, so a
/// missing image or refused credentials are known before anything is downloaded.
pub fn resolve_pull(
    reference: &str,
    auth: Option<&Credentials>,
) -> Result<ResolvedPull, ImageError> {
    let parsed = Reference::parse(reference)?;
    let name = normalize_name(split_scheme(reference).1)?;
    let client = Client::new(&parsed, auth);
    let (documents, manifest, manifest_hex) = client.resolve()?;
    let negotiated = client.authorization().take();
    Ok(ResolvedPull {
        name,
        credentials: auth.cloned(),
        auth: negotiated,
        documents,
        manifest,
        manifest_hex,
        reference: parsed,
    })
}

/// An OCI artifact that is not an image (a devcontainer feature, say): its manifest and
/// every layer, held in memory and verified against their digests.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The reference as parsed, e.g. `ghcr.io/devcontainers/features/go:1`.
    pub reference: Reference,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// The manifest's config media type (`application/vnd.devcontainers` for features).
    pub config_media_type: String,
    pub annotations: HashMap<String, String>,
    pub layers: Vec<ArtifactLayer>,
}

/// One layer of an [`Artifact`].
#[derive(Debug, Clone)]
pub struct ArtifactLayer {
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub data: Vec<u8>,
}

/// Fetches the artifact `reference` names (a tag or digest of a single manifest, not an
/// index) with all its layers, refusing one whose layers together exceed `max_bytes`
/// before downloading them. Nothing is written to disk: artifacts are small, and their
/// consumer decides what, if anything, to unpack.
pub fn fetch_artifact(
    reference: &str,
    auth: Option<&Credentials>,
    max_bytes: u64,
) -> Result<Artifact, ImageError> {
    let parsed = Reference::parse(reference)?;
    let client = Client::new(&parsed, auth);
    let origin = PathBuf::from(parsed.repo_url());
    let first = parsed
        .digest
        .clone()
        .or_else(|| parsed.tag.clone())
        .unwrap_or_else(|| "latest".to_string());
    let expected = parsed
        .digest
        .as_deref()
        .and_then(sha256_hex)
        .map(|h| (h, None));
    let (hex, bytes, media_type) = client.manifest(&first, expected)?;
    if !is_manifest_media_type(&media_type) {
        return Err(ImageError::invalid(
            &origin,
            format!("{reference} is a {media_type:?}, not a single OCI manifest"),
        ));
    }
    let manifest: ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::invalid(&origin, format!("manifest sha256:{hex}: {e}")))?;
    let total: u64 = manifest
        .layers()
        .iter()
        .fold(0u64, |a, l| a.saturating_add(l.size()));
    if total > max_bytes {
        return Err(ImageError::invalid(
            &origin,
            format!("{reference} has {total} bytes of layers, more than the {max_bytes} allowed"),
        ));
    }
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for desc in manifest.layers() {
        let digest = desc.digest().to_string();
        let want = sha256_hex(&digest)
            .ok_or_else(|| ImageError::invalid(&origin, format!("unsupported digest {digest}")))?;
        let url = client.url(&format!("blobs/{digest}"));
        let mut data = Vec::new();
        client
            .get(&url, &[])?
            .into_reader()
            .take(desc.size() + 1)
            .read_to_end(&mut data)
            .map_err(|e| ImageError::Registry {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if data.len() as u64 != desc.size() {
            return Err(ImageError::SizeMismatch {
                path: PathBuf::from(&url),
                what: "layer".to_string(),
                expected: desc.size(),
                actual: data.len() as u64,
            });
        }
        let actual = hex::encode(Sha256::digest(&data));
        if actual != want {
            return Err(ImageError::DigestMismatch {
                path: PathBuf::from(&url),
                what: "layer".to_string(),
                expected: digest,
                actual: format!("sha256:{actual}"),
            });
        }
        layers.push(ArtifactLayer {
            media_type: desc.media_type().to_string(),
            digest,
            data,
        });
    }
    Ok(Artifact {
        config_media_type: manifest.config().media_type().to_string(),
        annotations: manifest.annotations().clone().unwrap_or_default(),
        manifest_digest: format!("sha256:{hex}"),
        reference: parsed,
        layers,
    })
}

/// Marks a digest as being downloaded in this process; waiters block until it is dropped.
struct Inflight<'a> {
    store: &'a ImageStore,
    hex: String,
}

impl<'a> Inflight<'a> {
    fn acquire(store: &'a ImageStore, hex: &str, on_wait: &mut dyn FnMut()) -> Self {
        // A poisoned set only means a download panicked; the set itself is still consistent.
        let mut set = store.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if set.contains(hex) {
            on_wait();
            while set.contains(hex) {
                set = store
                    .inflight_done
                    .wait(set)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        set.insert(hex.to_string());
        Self {
            store,
            hex: hex.to_string(),
        }
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut set = self
            .store
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        set.remove(&self.hex);
        self.store.inflight_done.notify_all();
    }
}

/// An `flock` on `downloads/<hex>.lock` against other processes. The holder unlinks the file
/// when done, so a waiter that got the lock on an unlinked file tries again.
struct DigestLock {
    path: PathBuf,
    _file: File,
}

impl DigestLock {
    fn acquire(path: &Path, on_wait: &mut dyn FnMut()) -> Result<Self, ImageError> {
        use rustix::fs::{flock, fstat, stat, FlockOperation};
        let io_err = |e: rustix::io::Errno| ImageError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        };
        loop {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(ImageError::io(path))?;
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    on_wait();
                    flock(&file, FlockOperation::LockExclusive).map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            }
            let held = fstat(&file).map_err(io_err)?;
            match stat(path) {
                Ok(st) if st.st_ino == held.st_ino && st.st_dev == held.st_dev => {
                    return Ok(Self {
                        path: path.to_path_buf(),
                        _file: file,
                    })
                }
                Ok(_) | Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(io_err(e)),
            }
        }
    }
}

impl Drop for DigestLock {
    fn drop(&mut self) {
        // Unlinked while still locked; the lock goes when the file closes right after.
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove lock file");
            }
        }
    }
}

/// One blob to download.
struct Want<'a> {
    hex: &'a str,
    size: u64,
    what: &'a str,
}

impl Want<'_> {
    fn report(&self, state: BlobState, done: u64, bytes_per_sec: u64) -> PullProgress {
        PullProgress::Blob(BlobProgress {
            what: self.what.to_string(),
            digest: format!("sha256:{}", self.hex),
            done,
            total: self.size,
            bytes_per_sec,
            state,
        })
    }
}

impl ImageStore {
    /// Pulls `reference` (see [`Reference::parse`]) and records it under that name, normalized
    /// as `load` does (`busybox` => `busybox:latest`). Blobs and layers already in the store are
    /// not downloaded again, an interrupted download is continued, and concurrent pulls of the
    /// same blob download it once.
    pub fn pull(
        &self,
        reference: &str,
        auth: Option<&Credentials>,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<Image, ImageError> {
        self.pull_resolved(resolve_pull(reference, auth)?, progress)
    }

    /// Downloads and records an image [`resolve_pull`] found; the credentials (and token)
    /// it negotiated are used again.
    pub fn pull_resolved(
        &self,
        resolved: ResolvedPull,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<Image, ImageError> {
        let ResolvedPull {
            reference: parsed,
            name,
            credentials,
            auth,
            documents,
            manifest,
            manifest_hex,
        } = resolved;
        mkdir_private(&self.downloads_dir())?;
        let client = Client::new(&parsed, credentials.as_ref());
        *client.authorization() = auth;
        let origin = PathBuf::from(parsed.repo_url());
        let blob_ref = |d: &Descriptor| -> Result<BlobRef, ImageError> {
            let digest = d.digest().to_string();
            let hex = sha256_hex(&digest).ok_or_else(|| {
                ImageError::invalid(&origin, format!("unsupported digest {digest}"))
            })?;
            Ok(BlobRef {
                path: format!("blobs/{digest}"),
                digest: Some(hex.to_string()),
                size: Some(d.size()),
                media_type: d.media_type().to_string(),
            })
        };
        let config = blob_ref(manifest.config())?;
        let layers = manifest
            .layers()
            .iter()
            .map(blob_ref)
            .collect::<Result<Vec<_>, _>>()?;
        progress(&PullProgress::Resolved {
            reference: parsed.to_string(),
            manifest: format!("sha256:{manifest_hex}"),
            layers: layers.len(),
        });

        let want = |b: &'_ BlobRef, what: &'_ str| -> (String, u64, String) {
            (
                b.digest.clone().unwrap_or_default(),
                b.size.unwrap_or(0),
                what.to_string(),
            )
        };
        let (config_hex, config_size, _) = want(&config, "config");
        self.download(
            &client,
            &Want {
                hex: &config_hex,
                size: config_size,
                what: "config",
            },
            progress,
        )?;
        let diff_ids = self.read_config(&config_hex, &origin)?;
        if diff_ids.len() != layers.len() {
            return Err(ImageError::invalid(
                &origin,
                format!(
                    "config lists {} diff_ids but the manifest has {} layers",
                    diff_ids.len(),
                    layers.len()
                ),
            ));
        }
        let count = layers.len();
        for (i, (layer, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
            let (hex, size, what) = want(layer, &format!("layer {}/{count}", i + 1));
            let job = Want {
                hex: &hex,
                size,
                what: &what,
            };
            if sha256_hex(diff_id).is_some_and(|d| self.layer_path(d).is_dir()) {
                progress(&job.report(BlobState::Present, size, 0));
                continue;
            }
            self.download(&client, &job, progress)?;
        }

        let _guard = self.lock()?;
        let scratch = self.tmp_dir("pull")?;
        let plan = Plan {
            documents,
            config,
            layers,
            names: Vec::new(),
        };
        let result = self.import(
            &origin,
            &plan,
            std::slice::from_ref(&name),
            &mut |blob, what| self.adopt(&client, blob, what),
            &mut |line| progress(&PullProgress::Step(line.to_string())),
            &scratch.0,
        );
        match &result {
            Ok(_) => {
                // Downloads of layers another pull unpacked meanwhile are not needed any more.
                for blob in std::iter::once(&plan.config).chain(&plan.layers) {
                    if let Some(hex) = blob.digest.as_deref() {
                        let path = self.downloads_dir().join(hex);
                        if let Err(e) = fs::remove_file(&path) {
                            if e.kind() != io::ErrorKind::NotFound {
                                tracing::warn!(path = %path.display(), error = %e, "cannot remove download");
                            }
                        }
                    }
                }
            }
            Err(_) => {
                // Verified downloads stay in downloads/ for the next try; blobs/ holds nothing
                // of ours an image does not reference.
                if let Err(e) = self.gc() {
                    tracing::warn!(error = %e, "cannot clean up after failed pull");
                }
            }
        }
        result
    }

    fn downloads_dir(&self) -> PathBuf {
        self.root.join("downloads")
    }

    fn have_blob(&self, hex: &str) -> bool {
        self.blob_path(hex).is_file() || self.downloads_dir().join(hex).is_file()
    }

    /// The diff_ids of a downloaded config (which may have moved to `blobs/` meanwhile).
    fn read_config(&self, hex: &str, origin: &Path) -> Result<Vec<String>, ImageError> {
        let download = self.downloads_dir().join(hex);
        let blob = self.blob_path(hex);
        let (path, file) = match File::open(&download) {
            Ok(f) => (download, f),
            Err(_) => (
                blob.clone(),
                File::open(&blob).map_err(ImageError::io(&blob))?,
            ),
        };
        let config: ImageConfiguration =
            serde_json::from_reader(io::BufReader::new(file.take(MAX_JSON))).map_err(|e| {
                ImageError::invalid(origin, format!("image config {}: {e}", path.display()))
            })?;
        Ok(config.rootfs().diff_ids().clone())
    }

    /// Moves a finished download into `blobs/` (under the store lock, from `import`). Should a
    /// concurrent pull's cleanup have taken it, it is downloaded again.
    fn adopt(&self, client: &Client, blob: &BlobRef, what: &str) -> Result<String, ImageError> {
        let hex = blob
            .digest
            .clone()
            .ok_or_else(|| ImageError::invalid(&blob.path, "blob without digest"))?;
        for attempt in 0..2 {
            if self.blob_path(&hex).is_file() {
                return Ok(hex);
            }
            let download = self.downloads_dir().join(&hex);
            match fs::rename(&download, self.blob_path(&hex)) {
                Ok(()) => return Ok(hex),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 0 => {
                    let job = Want {
                        hex: &hex,
                        size: blob.size.unwrap_or(0),
                        what,
                    };
                    self.download(client, &job, &mut |_| {})?;
                }
                Err(e) => {
                    return Err(ImageError::Io {
                        path: download,
                        source: e,
                    })
                }
            }
        }
        Err(ImageError::invalid(
            &blob.path,
            "downloaded blob vanished before it was recorded",
        ))
    }

    /// Makes sure `downloads/<hex>` (or `blobs/`) holds the verified blob.
    fn download(
        &self,
        client: &Client,
        job: &Want,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<(), ImageError> {
        if self.have_blob(job.hex) {
            progress(&job.report(BlobState::Present, job.size, 0));
            return Ok(());
        }
        let mut waited = false;
        let mut on_wait = || {
            if !waited {
                waited = true;
                progress(&job.report(BlobState::Waiting, 0, 0));
            }
        };
        let _inflight = Inflight::acquire(self, job.hex, &mut on_wait);
        let dir = self.downloads_dir();
        let _lock = DigestLock::acquire(&dir.join(format!("{}.lock", job.hex)), &mut on_wait)?;
        if self.have_blob(job.hex) {
            progress(&job.report(BlobState::Present, job.size, 0));
            return Ok(());
        }
        let partial = dir.join(format!("{}.partial", job.hex));
        let mut writer = BlobWriter::resume(&partial)?;
        if writer.len() > job.size {
            writer.restart(&partial)?;
        }
        let url = client.url(&format!("blobs/sha256:{}", job.hex));
        if writer.len() < job.size {
            self.transfer(client, &url, job, &mut writer, &partial, progress)?;
        }
        match writer.finish(Some(job.hex), Some(job.size), Path::new(&url), job.what) {
            Ok(_) => {
                let done = dir.join(job.hex);
                fs::rename(&partial, &done).map_err(ImageError::io(&done))?;
                progress(&job.report(BlobState::Done, job.size, 0));
                Ok(())
            }
            Err(e) => {
                // A blob that does not match its digest is useless to resume: drop it.
                if let Err(rm) = fs::remove_file(&partial) {
                    tracing::warn!(path = %partial.display(), error = %rm, "cannot remove bad download");
                }
                Err(e)
            }
        }
    }

    /// Streams the rest of a blob into `writer`, continuing after what it already holds.
    fn transfer(
        &self,
        client: &Client,
        url: &str,
        job: &Want,
        writer: &mut BlobWriter,
        partial: &Path,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<(), ImageError> {
        let start = writer.len();
        let range = format!("bytes={start}-");
        let headers: Vec<(&str, &str)> = if start > 0 {
            vec![("Range", range.as_str())]
        } else {
            Vec::new()
        };
        let resp = client.get(url, &headers)?;
        if start > 0 {
            let resumed = resp.status() == 206
                && resp
                    .header("content-range")
                    .is_some_and(|r| r.starts_with(&format!("bytes {start}-")));
            if resp.status() == 206 && !resumed {
                writer.restart(partial)?;
                return Err(ImageError::Registry {
                    url: url.to_string(),
                    reason: format!("unexpected content-range for a request from byte {start}"),
                });
            }
            if !resumed {
                // The registry ignored the range and sends the whole blob.
                writer.restart(partial)?;
            } else {
                tracing::debug!(url, start, "resuming download");
            }
        }
        let base = writer.len();
        // One byte past the expected size is enough to tell a longer blob.
        let mut body = resp.into_reader().take(job.size - base + 1);
        let mut buf = vec![0u8; 64 * 1024];
        let started = Instant::now();
        let mut last = started;
        let rate = |done: u64| {
            let secs = started.elapsed().as_secs_f64();
            if secs > 0.0 {
                ((done - base) as f64 / secs) as u64
            } else {
                0
            }
        };
        progress(&job.report(BlobState::Downloading, base, 0));
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ImageError::Interrupted {
                        url: url.to_string(),
                        digest: format!("sha256:{}", job.hex),
                        done: writer.len(),
                        total: job.size,
                        reason: e.to_string(),
                    })
                }
            };
            writer
                .write_all(&buf[..n])
                .map_err(ImageError::io(partial))?;
            if last.elapsed() >= REPORT_EVERY {
                last = Instant::now();
                progress(&job.report(BlobState::Downloading, writer.len(), rate(writer.len())));
            }
        }
        if writer.len() < job.size {
            return Err(ImageError::Interrupted {
                url: url.to_string(),
                digest: format!("sha256:{}", job.hex),
                done: writer.len(),
                total: job.size,
                reason: "connection closed early".to_string(),
            });
        }
        progress(&job.report(BlobState::Downloading, writer.len(), rate(writer.len())));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.endpoint(), "registry-1.docker.io");
        assert!(!r.plain_http);

        let r = Reference::parse("127.0.0.1:5000/team/img:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/img");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.plain_http);

        let digest = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("localhost:5000/img@{digest}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(r.tag, None);
        assert!(r.plain_http);

        let r = Reference::parse("ghcr.io/o/r:1").unwrap();
        assert_eq!(r.endpoint(), "ghcr.io");
        assert!(!r.plain_http);
        assert!(
            !Reference::parse("https://127.0.0.1:5000/x")
                .unwrap()
                .plain_http
        );

        assert!(matches!(
            Reference::parse("http://example.com:5000/x"),
            Err(ImageError::InsecureRegistry { registry }) if registry == "example.com:5000"
        ));
        assert!(matches!(
            Reference::parse("Bad Name"),
            Err(ImageError::InvalidName { .. })
        ));
    }

    #[test]
    fn loopback_hosts() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.9.8.7:80",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "example.com",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[2001:db8::1]:5000",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn challenges_parse() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (scheme, p) = parse_challenge(r#"Basic realm="a \"quoted\", realm", charset=UTF-8"#);
        assert_eq!(scheme, "basic");
        assert_eq!(p["realm"], r#"a "quoted", realm"#);
        assert_eq!(p["charset"], "UTF-8");
    }

    #[test]
    fn digest_lock_excludes_other_opens_and_removes_its_file() {
        use rustix::fs::{flock, FlockOperation};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = DigestLock::acquire(&path, &mut || {}).unwrap();
        // A separate open file description stands for another process.
        let other = File::open(&path).unwrap();
        assert_eq!(
            flock(&other, FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::WOULDBLOCK)
        );
        drop(held);
        assert!(!path.exists());
        // The stale open file is lockable now but no longer the lock: acquire makes a new one.
        flock(&other, FlockOperation::NonBlockingLockExclusive).unwrap();
        let again = DigestLock::acquire(&path, &mut || panic!("nobody holds the new file"));
        assert!(again.is_ok());
        assert!(path.exists());
    }

    #[test]
    fn progress_lines() {
        let p = BlobProgress {
            what: "layer 1/2".into(),
            digest: format!("sha256:{}", "cd".repeat(32)),
            done: 1_500_000,
            total: 3_000_000,
            bytes_per_sec: 250_000,
            state: BlobState::Downloading,
        };
        assert_eq!(
            p.to_string(),
            "layer 1/2 sha256:cdcdcdcdcdcd: 1.5 MB / 3.0 MB (250.0 kB/s)"
        );
    }
}
