//! Pulls against a real registry (Debian's `docker-registry`) on loopback, images pushed with
//! skopeo from OCI layouts written on the spot.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hearth_image::testutil::{layer_tar, write_oci_layout_with, LayerCompression};
use hearth_image::{BlobState, Credentials, ImageConfig, ImageError, ImageStore, PullProgress};
use serde_json::json;
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Incompressible bytes, so a gzip layer is about as large as its content.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(format!("{seed}{i}").as_bytes()));
        i += 1;
    }
    out.truncate(len);
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry` process with filesystem storage in a tempdir; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
    creds: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Anonymous, or basic auth against an htpasswd file holding `creds`.
    fn start(creds: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut auth = String::new();
        if let Some((user, pass)) = creds {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .unwrap();
            assert!(out.status.success());
            let file = dir.path().join("htpasswd");
            fs::write(&file, &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: hearth-test\n    path: {}\n",
                file.display()
            );
        }
        Self::spawn(dir, &auth, creds)
    }

    /// Bearer token auth: the registry sends clients to `tokens` and trusts the tokens it signs.
    fn start_with_token(tokens: &TokenServer) -> Self {
        let auth = format!(
            "auth:\n  token:\n    realm: \"{}\"\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            tokens.realm(),
            TokenServer::SERVICE,
            TokenServer::ISSUER,
            tokens.root_cert().display()
        );
        let user = tokens.user.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        Self::spawn(tempfile::tempdir().unwrap(), &auth, user)
    }

    fn spawn(dir: tempfile::TempDir, auth: &str, creds: Option<(&str, &str)>) -> Self {
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).unwrap();
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let mut registry = Self {
            child,
            port,
            storage,
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("registry exited with {status}: {}", registry.log());
            }
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// What the registry wrote to stderr so far (for failure messages).
    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes `layout` (its image named `tag` in index.json) as `repo:tag`.
    fn push(&self, layout: &Path, tag: &str, repo: &str, all: bool) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo: {}\nregistry log: {}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn blob_data(&self, hex: &str) -> PathBuf {
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the token server answers a request it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenMode {
    /// `{"token": ...}` granting the requested access.
    Token,
    /// `{"access_token": ...}` only (the OAuth2 spelling).
    AccessToken,
    /// A token whose `exp` lies an hour back (well past the registry's 60 s leeway).
    Expired,
    /// Signed by a key the registry does not trust, the trusted certificate still in `x5c`.
    WrongKey,
    /// A valid token that grants nothing.
    NoAccess,
}

/// One request the token server saw.
#[derive(Debug, Clone)]
struct TokenRequest {
    service: Option<String>,
    /// Every `scope` parameter, decoded.
    scopes: Vec<String>,
    /// Other query parameters, decoded.
    other: Vec<(String, String)>,
    /// The basic-auth user name, when one was sent.
    user: Option<String>,
    status: u16,
}

/// Keys and state the serving thread needs.
struct TokenState {
    dir: PathBuf,
    user: Option<(String, String)>,
    /// Standard base64 of the trusted certificate's DER, for `x5c`.
    cert_b64: String,
    mode: Mutex<TokenMode>,
    requests: Mutex<Vec<TokenRequest>>,
}

/// A token service on loopback issuing RS256 JWTs the way distribution's token auth expects:
/// signed with an `openssl`-made key whose self-signed certificate is the registry's
/// `rootcertbundle` and travels in the header's `x5c`. Stopped and joined on drop.
struct TokenServer {
    port: u16,
    /// Appended to the realm's path (`?...`), to check clients keep it.
    realm_query: String,
    user: Option<(String, String)>,
    state: Arc<TokenState>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `%XX` and `+` decoding of one query component.
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

impl TokenServer {
    const SERVICE: &'static str = "hearth-test-registry";
    const ISSUER: &'static str = "hearth-test-issuer";

    /// `user`: the only credentials accepted; without one every client is served anonymously.
    fn start(user: Option<(&str, &str)>, realm_query: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=hearth test token issuer",
            ],
            dir.path(),
        );
        openssl(
            &[
                "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
            ],
            dir.path(),
        );
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "rogue.pem",
            ],
            dir.path(),
        );
        let cert_b64 = base64::engine::general_purpose::STANDARD
            .encode(fs::read(dir.path().join("cert.der")).unwrap());
        let user = user.map(|(u, p)| (u.to_string(), p.to_string()));
        let state = Arc::new(TokenState {
            dir: dir.path().to_path_buf(),
            user: user.clone(),
            cert_b64,
            mode: Mutex::new(TokenMode::Token),
            requests: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        // One connection at a time: clients here ask for one token at a time.
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    st.serve(conn);
                }
            }
        });
        Self {
            port,
            realm_query: realm_query.to_string(),
            user,
            state,
            stop,
            accept: Some(accept),
            _dir: dir,
        }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token{}", self.port, self.realm_query)
    }

    fn root_cert(&self) -> PathBuf {
        self.state.dir.join("cert.pem")
    }

    fn set_mode(&self, mode: TokenMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// The requests seen since the last call.
    fn take_requests(&self) -> Vec<TokenRequest> {
        std::mem::take(&mut *self.state.requests.lock().unwrap())
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl TokenState {
    /// Answers one HTTP/1.1 request and closes the connection.
    fn serve(&self, mut conn: TcpStream) {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.len() > 64 * 1024 {
                return;
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let target = request_line.split(' ').nth(1).unwrap_or_default();
        let basic = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.trim().strip_prefix("Basic ").map(str::to_string))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            });
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut req = TokenRequest {
            service: None,
            scopes: Vec::new(),
            other: Vec::new(),
            user: basic.as_ref().map(|(u, _)| u.clone()),
            status: 200,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (url_decode(k), url_decode(v));
            match k.as_str() {
                "service" => req.service = Some(v),
                "scope" => req.scopes.push(v),
                _ => req.other.push((k, v)),
            }
        }
        let (status, body) = if path != "/token" {
            (404, r#"{"details":"no such endpoint"}"#.to_string())
        } else if self.user.is_some() && basic != self.user {
            (
                401,
                r#"{"details":"incorrect username or password"}"#.to_string(),
            )
        } else {
            (200, self.issue(&req))
        };
        req.status = status;
        self.requests.lock().unwrap().push(req);
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let mut answer = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if status == 401 {
            answer.push_str("WWW-Authenticate: Basic realm=\"hearth-test-tokens\"\r\n");
        }
        answer.push_str("\r\n");
        answer.push_str(&body);
        let _ = conn.write_all(answer.as_bytes());
        let _ = conn.shutdown(Shutdown::Both);
    }

    /// The JSON answer: a JWT granting exactly the requested scopes (or less, by mode).
    fn issue(&self, req: &TokenRequest) -> String {
        let mode = *self.mode.lock().unwrap();
        let access: Vec<serde_json::Value> = if mode == TokenMode::NoAccess {
            Vec::new()
        } else {
            req.scopes
                .iter()
                .filter_map(|scope| {
                    // type:name:actions; names hold no ':' but may hold '/'.
                    let (kind, rest) = scope.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    Some(json!({
                        "type": kind,
                        "name": name,
                        "actions": actions.split(',').collect::<Vec<_>>(),
                    }))
                })
                .collect()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let (nbf, exp) = match mode {
            TokenMode::Expired => (now - 7200, now - 3600),
            _ => (now - 10, now + 300),
        };
        let header = json!({ "typ": "JWT", "alg": "RS256", "x5c": [self.cert_b64] });
        let claims = json!({
            "iss": TokenServer::ISSUER,
            "sub": req.user.clone().unwrap_or_default(),
            "aud": TokenServer::SERVICE,
            "exp": exp,
            "nbf": nbf,
            "iat": nbf,
            "jti": format!("{now}-{}", self.requests.lock().unwrap().len()),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let key = if mode == TokenMode::WrongKey {
            "rogue.pem"
        } else {
            "key.pem"
        };
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign", key])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "openssl dgst: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let jwt = format!("{input}.{}", b64url(&out.stdout));
        let field = if mode == TokenMode::AccessToken {
            "access_token"
        } else {
            "token"
        };
        json!({ field: jwt, "expires_in": 300 }).to_string()
    }
}

/// A TCP proxy that counts the bytes sent back to the client and can cut every connection
/// once a byte budget is spent.
struct Proxy {
    port: u16,
    /// (bytes sent to clients, budget)
    state: Arc<Mutex<(u64, u64)>>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new((0u64, u64::MAX)));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(Shutdown::Write);
                });
                let st = st.clone();
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let allowed = {
                            let mut s = st.lock().unwrap();
                            let allowed = (n as u64).min(s.1.saturating_sub(s.0)) as usize;
                            s.0 += allowed as u64;
                            allowed
                        };
                        if client.write_all(&buf[..allowed]).is_err() || allowed < n {
                            break;
                        }
                    }
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                });
            }
        });
        Self {
            port,
            state,
            stop,
            accept: Some(accept),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn sent(&self) -> u64 {
        self.state.lock().unwrap().0
    }

    /// Resets the count; `budget` bytes may pass from now on before connections are cut.
    fn reset(&self, budget: u64) {
        *self.state.lock().unwrap() = (0, budget);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    store: ImageStore,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("images");
        let work = tmp.path().join("work");
        fs::create_dir(&work).unwrap();
        let store = ImageStore::open(&root).unwrap();
        Self {
            _tmp: tmp,
            root,
            work,
            store,
        }
    }

    /// An OCI layout at `work/<dir>` with one layer per file; returns (layout, image id).
    fn layout(&self, dir: &str, tag: &str, files: &[(&str, &[u8])]) -> (PathBuf, String) {
        let path = self.work.join(dir);
        let layers: Vec<Vec<u8>> = files
            .iter()
            .map(|(p, data)| layer_tar(&[(p, data, 0o644)]).unwrap())
            .collect();
        let config = ImageConfig {
            cmd: vec!["/bin/sh".into()],
            ..Default::default()
        };
        let id =
            write_oci_layout_with(&path, tag, &layers, &config, LayerCompression::Gzip).unwrap();
        (path, id)
    }

    fn pull(
        &self,
        reference: &str,
        auth: Option<&Credentials>,
    ) -> (Result<hearth_image::Image, ImageError>, Vec<PullProgress>) {
        let mut events = Vec::new();
        let result = self
            .store
            .pull(reference, auth, &mut |p| events.push(p.clone()));
        (result, events)
    }

    fn read_layer_file(&self, image: &hearth_image::Image, path: &str) -> Vec<u8> {
        self.store
            .layer_dirs(image)
            .iter()
            .find_map(|d| fs::read(d.join(path)).ok())
            .unwrap_or_else(|| panic!("{path} in no layer"))
    }

    fn files_under(&self, sub: &str) -> Vec<String> {
        match fs::read_dir(self.root.join(sub)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Blob hexes of the single image manifest in `layout` (config first).
fn layout_blobs(layout: &Path) -> Vec<(String, u64)> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap())
            .unwrap();
    std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().unwrap())
        .map(|d| {
            (
                d["digest"].as_str().unwrap()[7..].to_string(),
                d["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn blob_states(events: &[PullProgress]) -> Vec<(String, BlobState)> {
    let mut out: Vec<(String, BlobState)> = Vec::new();
    for e in events {
        if let PullProgress::Blob(b) = e {
            if b.state != BlobState::Downloading {
                out.push((b.what.clone(), b.state));
            }
        }
    }
    out
}

#[test]
fn anonymous_pull_then_repull_skips_everything() {
    let registry = Registry::start(None);
    let fx = Fixture::new();
    let (layout, id) = fx.layout(
        "app",
        "v1",
        &[("etc/base", b"base layer"), ("app/data", b"app layer")],
    );
    registry.push(&layout, "v1", "team/app", false);

    let reference = format!("{}/team/app:v1", registry.addr());
    let (image, events) = fx.pull(&reference, None);
    let image = image.unwrap();
    assert_eq!(image.id, id);
    assert_eq!(image.names, vec![reference.clone()]);
    assert_eq!(image.config.cmd, vec!["/bin/sh".to_string()]);
    assert_eq!(fx.read_layer_file(&image, "app/data"), b"app layer");
    assert_eq!(fx.store.get(&reference).unwrap().id, id);
    assert!(matches!(
        &events[0],
        PullProgress::Resolved { layers: 2, .. }
    ));
    assert_eq!(
        blob_states(&events),
        vec![
            ("config".to_string(), BlobState::Done),
            ("layer 1/2".to_string(), BlobState::Done),
            ("layer 2/2".to_string(), BlobState::Done),
        ]
    );
    // Final byte counts match the manifest's sizes.
    let sizes = layout_blobs(&layout);
    let last_done: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            PullProgress::Blob(b) if b.state == BlobState::Done => Some(b.done),
            _ => None,
        })
        .collect();
    assert_eq!(last_done, sizes.iter().map(|s| s.1).collect::<Vec<_>>());
    // Nothing left behind in the download area.
    assert_eq!(fx.files_under("downloads"), Vec::<String>::new());

    let (again, events) = fx.pull(&reference, None);
    assert_eq!(again.unwrap().id, id);
    assert!(blob_states(&events)
        .iter()
        .all(|(_, s)| *s == BlobState::Present));
}

#[test]
fn basic_auth_pull_and_wrong_credentials() {
    let registry = Registry::start(Some(("alice", "s3cret")));
    let fx = Fixture::new();
    let (layout, id) = fx.layout("priv", "v1", &[("secret", b"classified")]);
    registry.push(&layout, "v1", "private", false);
    let reference = format!("{}/private:v1", registry.addr());

    let (res, _) = fx.pull(&reference, None);
    match res {
        Err(ImageError::Unauthorized { reason, .. }) => {
            assert!(reason.contains("credentials required"), "{reason}")
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
    let wrong = Credentials {
        username: "alice".into(),
        password: "guess".into(),
    };
    let (res, _) = fx.pull(&reference, Some(&wrong));
    match res {
        Err(ImageError::Unauthorized { reason, .. }) => {
            assert!(reason.contains("credentials rejected"), "{reason}")
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
    assert!(fx.store.list().unwrap().is_empty());

    let right = Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    let (image, _) = fx.pull(&reference, Some(&right));
    let image = image.unwrap();
    assert_eq!(image.id, id);
    assert_eq!(fx.read_layer_file(&image, "secret"), b"classified");
}

#[test]
fn index_pull_picks_linux_amd64() {
    let registry = Registry::start(None);
    let fx = Fixture::new();
    let (amd, amd_id) = fx.layout("amd", "amd", &[("arch", b"amd64")]);
    let (arm, arm_id) = fx.layout("arm", "arm", &[("arch", b"arm64")]);
    assert_ne!(amd_id, arm_id);
    // One layout holding both images behind an index (arm64 listed first).
    for entry in fs::read_dir(arm.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(
            entry.path(),
            amd.join("blobs/sha256").join(entry.file_name()),
        )
        .unwrap();
    }
    let desc = |layout: &Path, arch: &str| {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mut d = index["manifests"][0].clone();
        d.as_object_mut().unwrap().remove("annotations");
        d["platform"] = json!({ "os": "linux", "architecture": arch });
        d
    };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [desc(&arm, "arm64"), desc(&amd, "amd64")],
    }))
    .unwrap();
    let index_hex = sha256(&index);
    fs::write(amd.join("blobs/sha256").join(&index_hex), &index).unwrap();
    let top = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{index_hex}"),
            "size": index.len(),
            "annotations": { "org.opencontainers.image.ref.name": "multi" },
        }],
    });
    fs::write(amd.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    registry.push(&amd, "multi", "multi", true);

    let (image, _) = fx.pull(&format!("{}/multi:multi", registry.addr()), None);
    let image = image.unwrap();
    assert_eq!(image.id, amd_id);
    assert_eq!(fx.read_layer_file(&image, "arch"), b"amd64");

    // By digest of the index too: the digest is verified and amd64 is still picked.
    let by_digest = format!("{}/multi@sha256:{index_hex}", registry.addr());
    let (image, _) = fx.pull(&by_digest, None);
    assert_eq!(image.unwrap().id, amd_id);
}

#[test]
fn tampered_blob_is_rejected_and_nothing_kept() {
    let registry = Registry::start(None);
    let fx = Fixture::new();
    let (layout, _) = fx.layout("bad", "v1", &[("file", &noise("tamper", 64 * 1024))]);
    registry.push(&layout, "v1", "bad", false);
    let (layer_hex, _) = layout_blobs(&layout)[1].clone();
    let data = registry.blob_data(&layer_hex);
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let (res, _) = fx.pull(&format!("{}/bad:v1", registry.addr()), None);
    match res {
        Err(ImageError::DigestMismatch { expected, .. }) => {
            assert_eq!(expected, format!("sha256:{layer_hex}"))
        }
        other => panic!("expected digest mismatch, got {other:?}"),
    }
    assert!(fx.store.list().unwrap().is_empty());
    assert!(!fx.files_under("blobs/sha256").contains(&layer_hex));
    assert!(
        !fx.files_under("downloads")
            .iter()
            .any(|f| f.starts_with(&layer_hex)),
        "{:?}",
        fx.files_under("downloads")
    );
    assert!(fx.files_under("layers").is_empty());
}

#[test]
fn interrupted_pull_resumes_with_only_the_missing_bytes() {
    let registry = Registry::start(None);
    let proxy = Proxy::start(registry.port);
    let fx = Fixture::new();
    let payload = noise("resume", 3 << 20);
    let (layout, id) = fx.layout("big", "v1", &[("big", &payload)]);
    registry.push(&layout, "v1", "big", false);
    let (layer_hex, layer_size) = layout_blobs(&layout)[1].clone();
    let reference = format!("{}/big:v1", proxy.addr());

    proxy.reset(layer_size / 2);
    let (res, _) = fx.pull(&reference, None);
    assert!(
        matches!(res, Err(ImageError::Interrupted { .. })),
        "expected an interruption, got {res:?}"
    );
    let partial = fx
        .root
        .join("downloads")
        .join(format!("{layer_hex}.partial"));
    let kept = fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < layer_size, "kept {kept} of {layer_size}");

    proxy.reset(u64::MAX);
    let (image, events) = fx.pull(&reference, None);
    let image = image.unwrap();
    assert_eq!(image.id, id);
    assert_eq!(fx.read_layer_file(&image, "big"), payload);
    let sent = proxy.sent();
    let remainder = layer_size - kept;
    // Manifest, config and headers are a few kB; the layer's first part is not sent again.
    assert!(sent >= remainder, "sent {sent}, remainder {remainder}");
    assert!(
        sent < remainder + 32 * 1024,
        "sent {sent} but only {remainder} were missing"
    );
    let first = events
        .iter()
        .find_map(|e| match e {
            PullProgress::Blob(b) if b.what == "layer 1/1" && b.state == BlobState::Downloading => {
                Some(b.done)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(first, kept, "progress starts at the resumed offset");
    assert!(!partial.exists());
}

#[test]
fn concurrent_pulls_download_each_layer_once() {
    let registry = Registry::start(None);
    let proxy = Proxy::start(registry.port);
    let fx = Fixture::new();
    let (layout, id) = fx.layout(
        "shared",
        "v1",
        &[
            ("one", &noise("one", 1 << 20)),
            ("two", &noise("two", 1 << 20)),
        ],
    );
    registry.push(&layout, "v1", "shared", false);
    let blob_total: u64 = layout_blobs(&layout).iter().map(|b| b.1).sum();
    let reference = format!("{}/shared:v1", proxy.addr());
    proxy.reset(u64::MAX);

    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| fx.store.pull(&reference, None, &mut |_| {}).unwrap().id))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|i| *i == id));
    let sent = proxy.sent();
    // Four manifests and some headers on top of one copy of each blob; a second copy of
    // either layer alone would add 1 MiB.
    assert!(sent >= blob_total, "sent {sent}, blobs {blob_total}");
    assert!(
        sent < blob_total + 64 * 1024,
        "sent {sent} for {blob_total} bytes of blobs"
    );
    assert_eq!(fx.store.list().unwrap().len(), 1);
    assert_eq!(fx.files_under("downloads"), Vec::<String>::new());
}

#[test]
fn plain_http_refused_for_remote_registries_before_any_io() {
    let fx = Fixture::new();
    for reference in [
        "http://registry.example.com/team/app:1",
        "http://10.1.2.3:5000/app",
    ] {
        let (res, events) = fx.pull(reference, None);
        assert!(
            matches!(res, Err(ImageError::InsecureRegistry { .. })),
            "{reference}: {res:?}"
        );
        assert!(events.is_empty());
    }
    assert!(fx.files_under("downloads").is_empty());
}

fn unauthorized_reason(res: Result<hearth_image::Image, ImageError>) -> String {
    match res {
        Err(e @ ImageError::Unauthorized { .. }) => e.to_string(),
        other => panic!("expected unauthorized, got {other:?}"),
    }
}

#[test]
fn bearer_token_pull_with_credentials() {
    let tokens = TokenServer::start(Some(("bob", "hunter2")), "");
    let registry = Registry::start_with_token(&tokens);
    let fx = Fixture::new();
    let (layout, id) = fx.layout(
        "tok",
        "v1",
        &[
            ("etc/base", b"base layer"),
            ("app/data", &noise("tok", 200_000)),
        ],
    );
    registry.push(&layout, "v1", "team/tok", false);
    // skopeo went through the token service for push access.
    let pushed = tokens.take_requests();
    assert!(
        pushed.iter().any(|r| r.status == 200
            && r.scopes
                .iter()
                .any(|s| s.starts_with("repository:team/tok:") && s.contains("push"))),
        "{pushed:?}"
    );

    let reference = format!("{}/team/tok:v1", registry.addr());
    let right = Credentials {
        username: "bob".into(),
        password: "hunter2".into(),
    };
    let (image, events) = fx.pull(&reference, Some(&right));
    let image = image.unwrap_or_else(|e| panic!("{e}\nregistry log: {}", registry.log()));
    assert_eq!(image.id, id);
    assert_eq!(fx.read_layer_file(&image, "etc/base"), b"base layer");
    assert_eq!(
        fx.read_layer_file(&image, "app/data"),
        noise("tok", 200_000)
    );
    assert_eq!(
        blob_states(&events),
        vec![
            ("config".to_string(), BlobState::Done),
            ("layer 1/2".to_string(), BlobState::Done),
            ("layer 2/2".to_string(), BlobState::Done),
        ]
    );
    // One token for the whole pull, asked for with the registry's service and exactly the
    // pull scope of this repository.
    let seen = tokens.take_requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].status, 200);
    assert_eq!(seen[0].service.as_deref(), Some(TokenServer::SERVICE));
    assert_eq!(seen[0].scopes, vec!["repository:team/tok:pull".to_string()]);
    assert_eq!(seen[0].user.as_deref(), Some("bob"));

    // Without credentials or with wrong ones, in a fresh store: the token service says no.
    let fx2 = Fixture::new();
    let realm = tokens.realm();
    let (res, _) = fx2.pull(&reference, None);
    let reason = unauthorized_reason(res);
    assert!(reason.contains(&realm), "{reason}");
    assert!(reason.contains("requires credentials"), "{reason}");
    let wrong = Credentials {
        username: "bob".into(),
        password: "guess".into(),
    };
    let (res, _) = fx2.pull(&reference, Some(&wrong));
    let reason = unauthorized_reason(res);
    assert!(reason.contains(&realm), "{reason}");
    assert!(reason.contains("rejected the credentials"), "{reason}");
    assert!(
        reason.contains("incorrect username or password"),
        "{reason}"
    );
    let seen = tokens.take_requests();
    assert_eq!(
        seen.iter()
            .map(|r| (r.user.clone(), r.status))
            .collect::<Vec<_>>(),
        vec![(None, 401), (Some("bob".to_string()), 401)]
    );
    assert!(fx2.store.list().unwrap().is_empty());
}

#[test]
fn bearer_token_anonymous_with_access_token_field() {
    // An anonymous token service (like Docker Hub's for public images) whose realm carries a
    // query of its own, answering in the OAuth2 spelling.
    let tokens = TokenServer::start(None, "?client=hearth-test");
    let registry = Registry::start_with_token(&tokens);
    let fx = Fixture::new();
    let (layout, id) = fx.layout("anon", "v2", &[("hello", b"world")]);
    registry.push(&layout, "v2", "library/anon", false);
    tokens.take_requests();
    tokens.set_mode(TokenMode::AccessToken);

    let reference = format!("{}/library/anon:v2", registry.addr());
    let (image, _) = fx.pull(&reference, None);
    let image = image.unwrap_or_else(|e| panic!("{e}\nregistry log: {}", registry.log()));
    assert_eq!(image.id, id);
    assert_eq!(fx.read_layer_file(&image, "hello"), b"world");
    let seen = tokens.take_requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].user, None);
    assert_eq!(seen[0].service.as_deref(), Some(TokenServer::SERVICE));
    assert_eq!(
        seen[0].scopes,
        vec!["repository:library/anon:pull".to_string()]
    );
    assert_eq!(
        seen[0].other,
        vec![("client".to_string(), "hearth-test".to_string())]
    );
}

#[test]
fn bearer_tokens_the_registry_refuses_are_reported() {
    let tokens = TokenServer::start(Some(("carol", "pw")), "");
    let registry = Registry::start_with_token(&tokens);
    let fx = Fixture::new();
    let (layout, _) = fx.layout("refuse", "v1", &[("f", b"data")]);
    registry.push(&layout, "v1", "refuse", false);
    let reference = format!("{}/refuse:v1", registry.addr());
    let creds = Credentials {
        username: "carol".into(),
        password: "pw".into(),
    };
    let realm = tokens.realm();
    for (mode, expect) in [
        (TokenMode::Expired, "invalid_token"),
        (TokenMode::WrongKey, "invalid_token"),
        (TokenMode::NoAccess, "insufficient_scope"),
    ] {
        tokens.set_mode(mode);
        tokens.take_requests();
        let (res, events) = fx.pull(&reference, Some(&creds));
        let reason = unauthorized_reason(res);
        assert!(reason.contains(&realm), "{mode:?}: {reason}");
        assert!(reason.contains(expect), "{mode:?}: {reason}");
        assert!(!reason.contains("credentials"), "{mode:?}: {reason}");
        assert!(events.is_empty(), "{mode:?}: {events:?}");
        // The token was fetched once and not asked for again in a loop.
        let seen = tokens.take_requests();
        assert_eq!(seen.len(), 1, "{mode:?}: {seen:?}");
        assert_eq!(seen[0].status, 200);
    }
    assert!(fx.store.list().unwrap().is_empty());

    tokens.set_mode(TokenMode::Token);
    let (image, _) = fx.pull(&reference, Some(&creds));
    assert_eq!(fx.read_layer_file(&image.unwrap(), "f"), b"data");
}
