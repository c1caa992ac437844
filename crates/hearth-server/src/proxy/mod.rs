//! The port proxy: `http(s)://{port}-{name}.{domain}/` reaches `port` inside workspace
//! `name`, connected inside its network namespace (so services bound to its loopback
//! work), with WebSocket and other upgrades and bodies streamed both ways.
//!
//! Per request: the host names the workspace and port (anything else is 404); private
//! ports (the default) need the owner's or an admin's credentials (see [`login`]), public
//! ones none; Hearth's credentials are removed before forwarding. Anonymous requests to a
//! port that is not public get 401 whether the workspace exists or not, and a signed-in
//! user gets 404 for a workspace that is not theirs, so neither learns what exists. A
//! stopped workspace is started for its owner (the request waits for it) and answered
//! 503 for everyone else; a port nothing listens on is 502. Each request is activity on
//! the workspace, and an upgraded connection or a streaming response is an open session
//! until it ends.
//!
//! The workspace's devcontainer.json has its say per port: `onAutoForward: ignore` (unless
//! `forwardPorts` names the port) is 404 like an unknown host, and `protocol: https`
//! makes the proxy speak TLS to the port (see [`Upstream`]).

pub mod login;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use bytes::Bytes;
use hearth_api::WorkspaceState;
use hearth_node::{NodeError, WorkspaceSpec};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::activity::Session;
use crate::auth::Caller;
use crate::db::WorkspaceRecord;
use crate::error::ApiError;
use crate::manager::ports::{PortPolicy, PortUrls};
use crate::manager::Manager;
use crate::names;
use login::CookieKey;

/// Longest wait for a client's request head (slow-loris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the workspace's app to answer with its response head: generous, dev
/// servers compile on first request.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
/// Idle pooled connections to workspace ports are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Largest login form body.
const LOGIN_MAX: usize = 8 * 1024;
/// Longest wait for starting a stopped workspace on request.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Workspaces whose port settings the proxy keeps parsed; past it they start over.
const POLICIES_MAX: usize = 4096;

/// What `hearth server` asks of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// URLs are `{port}-{name}.{domain}`; `localhost` works in browsers without DNS.
    pub domain: String,
    /// PEM certificate chain and key (a wildcard for `*.{domain}`): serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A bound proxy, ready to serve.
pub struct Proxy {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<ProxyState>,
}

struct ProxyState {
    manager: Arc<Manager>,
    urls: PortUrls,
    key: CookieKey,
    client: Client<Connector, Body>,
    /// Workspaces the pool's connector may be asked to connect to, by id.
    targets: Arc<Mutex<std::collections::HashMap<String, WorkspaceSpec>>>,
    /// Port settings by workspace id, with the `created_at` of the row they were read
    /// for (see [`ProxyState::policy`]).
    policies: Mutex<std::collections::HashMap<String, (String, Arc<PortPolicy>)>>,
}

impl Proxy {
    /// Binds the proxy's socket and loads its TLS certificate and cookie key.
    pub async fn bind(
        cfg: &ProxyConfig,
        manager: Arc<Manager>,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Proxy> {
        let domain = cfg.domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty()
            || !domain
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && names::is_valid_name(l))
        {
            anyhow::bail!(
                "invalid --domain {:?}: use a DNS name such as localhost or dev.example.com",
                cfg.domain
            );
        }
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {} for the port proxy", cfg.listen))?;
        let addr = listener
            .local_addr()
            .context("cannot read the proxy's address")?;
        let urls = PortUrls {
            https: tls.is_some(),
            domain,
            port: addr.port(),
        };
        let targets: Arc<Mutex<std::collections::HashMap<String, WorkspaceSpec>>> =
            Default::default();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(Connector {
                manager: manager.clone(),
                targets: targets.clone(),
                tls: upstream_tls()?,
            });
        let state = Arc::new(ProxyState {
            key: CookieKey::load(data_dir)?,
            manager,
            urls,
            client,
            targets,
            policies: Mutex::default(),
        });
        Ok(Proxy {
            listener,
            addr,
            tls,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key its login cookies and the dashboard's login tickets are signed with.
    pub fn cookie_key(&self) -> &CookieKey {
        &self.state.key
    }

    pub fn urls(&self) -> &PortUrls {
        &self.state.urls
    }

    /// Serves until the task is dropped.
    pub async fn serve(self) {
        let Proxy {
            listener,
            tls,
            state,
            ..
        } = self;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of fds and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "port proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (state, tls) = (state.clone(), tls.clone());
            tokio::spawn(async move {
                let https = tls.is_some();
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.handle(req, peer, https).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                let res = match tls {
                    Some(acceptor) => {
                        let tls_stream = match tokio::time::timeout(
                            TLS_HANDSHAKE_TIMEOUT,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "port proxy tls handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(tls_stream), svc)
                            .await
                    }
                    None => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .await
                    }
                };
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "port proxy connection ended");
                }
            });
        }
    }
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "no certificate in {} (a PEM file is needed)",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not go together")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Makes the pool's connections: inside the workspace named by the URI's host (its id).
#[derive(Clone)]
struct Connector {
    manager: Arc<Manager>,
    targets: Arc<Mutex<std::collections::HashMap<String, WorkspaceSpec>>>,
    tls: tokio_rustls::TlsConnector,
}

/// A connection to a workspace port: plain, or TLS for a port whose `portsAttributes`
/// say `protocol: https` (the pool asks for `https://` URIs then, so the two never mix).
enum Upstream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl hyper_util::client::legacy::connect::Connection for Upstream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

/// Accepts any certificate of a workspace port (dev servers' are self-signed): the
/// connection is made inside the workspace's own network namespace to its loopback, so
/// where it goes is already certain and a certificate could add nothing. Handshake
/// signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client for `protocol: https` ports: HTTP/1.1 only, as the proxy forwards.
fn upstream_tls() -> anyhow::Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS to workspace ports")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Upstream>;
    type Error = NodeError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, NodeError>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), NodeError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let id = uri.host().unwrap_or_default();
            let port = uri.port_u16().unwrap_or(80);
            let spec = this
                .targets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .cloned()
                .ok_or_else(|| NodeError::Internal(format!("no proxy target {id}")))?;
            let stream = this.manager.connect_port(&spec, port).await?;
            if uri.scheme_str() != Some("https") {
                return Ok(TokioIo::new(Upstream::Plain(stream)));
            }
            // The name is only for SNI: the certificate is not checked (`AnyCertificate`).
            let name = rustls_pki_types::ServerName::try_from("localhost")
                .map_err(|e| NodeError::Internal(format!("tls name: {e}")))?;
            let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, this.tls.connect(name, stream))
                .await
                .map_err(|_| {
                    NodeError::Internal(format!(
                        "port {port} of workspace {} did not finish a TLS handshake \
                         (portsAttributes says protocol https)",
                        spec.name
                    ))
                })?
                .map_err(|e| {
                    NodeError::Internal(format!(
                        "TLS to port {port} of workspace {} failed (portsAttributes says \
                         protocol https): {e}",
                        spec.name
                    ))
                })?;
            Ok(TokioIo::new(Upstream::Tls(Box::new(tls))))
        })
    }
}

/// `{port}-{name}` from a request's host, if it is one of ours.
fn parse_host<'a>(host: &'a str, domain: &str) -> Option<(u16, &'a str)> {
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    let (port, name) = label.split_once('-')?;
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) || port.starts_with('0') {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    names::is_valid_name(name).then_some((port, name))
}

/// The request's host without its port, lowercased (`Host`, or the authority in HTTP/2).
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))?;
    let host = match raw.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw.as_str(),
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto;padding:0 1em\">\
         <main><h1>{t}</h1><p>{m}</p><p><small>Hearth port proxy</small></p></main>\
         </body></html>\n",
        t = esc(title),
        m = esc(text)
    );
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn not_found() -> Response<Body> {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        "No workspace port is served at this address (hearth ports NAME lists a workspace's port URLs).",
    )
}

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers; an upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// A response body that holds an activity session until it is done.
struct Tracked {
    inner: Incoming,
    _session: Session,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl ProxyState {
    /// `rec`'s port settings, read and parsed once per workspace row instead of at every
    /// request. A create records them before the first start, so a running workspace's
    /// are there (a creating one's are read each time, uncached); what the proxy decides
    /// by (`forwardPorts` numbers, `portsAttributes` keys, their `protocol` and
    /// `onAutoForward`, which parsing restricts to fixed words) stays as it is: the one
    /// later rewrite, the `${containerEnv:X}` pass at the first start, changes only free
    /// text such as labels (which the API's port listings read afresh). A workspace made
    /// again, even under its id (a prebuild series), is a new row with its own
    /// `created_at`, which an entry must match.
    async fn policy(&self, rec: &WorkspaceRecord) -> Result<Arc<PortPolicy>, ApiError> {
        let id = rec.spec.id.as_str();
        let cached = self
            .policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|(created, _)| *created == rec.created_at)
            .map(|(_, p)| p.clone());
        if let Some(p) = cached {
            return Ok(p);
        }
        let p = Arc::new(self.manager.port_policy(&rec.spec).await?);
        if rec.state != WorkspaceState::Running {
            return Ok(p);
        }
        let mut policies = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        if policies.len() >= POLICIES_MAX {
            policies.clear();
        }
        policies.insert(id.to_string(), (rec.created_at.clone(), p.clone()));
        Ok(p)
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        https: bool,
    ) -> Response<Body> {
        let Some(host) = request_host(&req) else {
            return not_found();
        };
        let Some((port, name)) = parse_host(&host, &self.urls.domain) else {
            return not_found();
        };
        let name = name.to_string();
        match req.uri().path() {
            "/_hearth/login" => return self.login(req, &host, &name, port, https).await,
            "/_hearth/ticket" if req.method() == Method::GET => {
                return self.ticket(req, &host, &name, port, https).await
            }
            "/_hearth/logout" if req.method() == Method::POST => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::SEE_OTHER;
                r.headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/"));
                if let Ok(v) = HeaderValue::from_str(&login::set_cookie(None, https)) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                return r;
            }
            _ => {}
        }
        let (mut parts, body) = req.into_parts();
        let store = self.manager.store();
        let creds =
            login::take_credentials(&self.manager, &self.key, &host, &mut parts.headers).await;
        let rec = match store.get(&name).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(workspace = name, error = %e, "port proxy lookup failed");
                return page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error",
                    "cannot look up the workspace",
                );
            }
        };
        let public = match &rec {
            Some(r) => store.port_public(&r.spec.id, port).await.unwrap_or(false),
            None => false,
        };
        let owner_ok = match (&creds.caller, &rec) {
            (Some(c), Some(r)) => c.may_use(&r.owner),
            _ => false,
        };
        if !public && !owner_ok {
            if creds.caller.is_some() {
                return not_found();
            }
            return unauthorized(&parts, &name, port, creds.presented);
        }
        let Some(mut rec) = rec else {
            return not_found();
        };
        let policy = match self.policy(&rec).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(workspace = name, error = %e.message, "port proxy: devcontainer settings");
                return page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error",
                    "cannot read the workspace's port settings",
                );
            }
        };
        if policy.hidden(port) {
            return not_found();
        }
        if rec.state != WorkspaceState::Running {
            let stopped = matches!(rec.state, WorkspaceState::Stopped | WorkspaceState::Failed);
            match &creds.caller {
                Some(caller) if owner_ok && stopped => {
                    tracing::info!(
                        workspace = name,
                        port,
                        "starting workspace for a proxied request"
                    );
                    match tokio::time::timeout(START_TIMEOUT, self.manager.start(caller, &name))
                        .await
                    {
                        Ok(Ok(_)) => match store.get(&name).await {
                            Ok(Some(r)) => rec = r,
                            _ => return not_found(),
                        },
                        Ok(Err(e)) => {
                            return page(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "Workspace did not start",
                                &format!("workspace {name} could not be started: {}", e.message),
                            )
                        }
                        Err(_) => {
                            return retry_later(&format!(
                                "workspace {name} is still starting; reload in a moment"
                            ))
                        }
                    }
                }
                _ => {
                    return retry_later(&format!(
                        "workspace {name} is {}; its owner can start it (hearth start {name})",
                        rec.state
                    ))
                }
            }
        }
        let id = rec.spec.id.to_string();
        let activity = self.manager.activity().clone();
        activity.touch(&id);
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), rec.spec.clone());

        let upgrade = is_upgrade(&parts.headers);
        strip_hop_by_hop(&mut parts.headers, upgrade);
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(&host) {
                parts.headers.insert(header::HOST, v);
            }
        }
        let forwarded_for = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        let xff = [
            ("x-forwarded-for", forwarded_for),
            (
                "x-forwarded-proto",
                if https { "https" } else { "http" }.to_string(),
            ),
            ("x-forwarded-host", host.clone()),
        ];
        for (k, v) in xff {
            if let Ok(v) = HeaderValue::from_str(&v) {
                parts.headers.insert(k, v);
            }
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let scheme = if policy.https(port) { "https" } else { "http" };
        parts.uri = match format!("{scheme}://{id}:{port}{path}").parse() {
            Ok(u) => u,
            Err(_) => {
                return page(
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    "the request target is not valid",
                )
            }
        };
        parts.version = Version::HTTP_11;
        // The client's side of an upgrade, taken before the request is sent on.
        let downstream = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        let req = Request::from_parts(parts, Body::new(body));
        let mut resp = match tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(req)).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return upstream_error(&name, port, &e),
            Err(_) => {
                return page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Gateway timeout",
                    &format!(
                        "port {port} of workspace {name} did not answer within {} s",
                        RESPONSE_TIMEOUT.as_secs()
                    ),
                )
            }
        };
        if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut resp);
            let session = activity.session(&id);
            let (ws, p) = (name.clone(), port);
            tokio::spawn(async move {
                let _session = session;
                let (Some(down), Ok(up)) = (downstream, upstream.await) else {
                    tracing::debug!(workspace = ws, port = p, "upgrade not completed");
                    return;
                };
                let Ok(down) = down.await else { return };
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    tracing::debug!(workspace = ws, port = p, error = %e, "upgraded connection ended");
                }
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, Body::empty());
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let body = Tracked {
            inner: body,
            _session: activity.session(&id),
        };
        Response::from_parts(parts, Body::new(body))
    }

    /// `GET` shows the login form, `POST` checks the token and sets the cookie.
    async fn login(
        &self,
        req: Request<Incoming>,
        host: &str,
        name: &str,
        port: u16,
        https: bool,
    ) -> Response<Body> {
        if req.method() == Method::GET {
            let next = req
                .uri()
                .query()
                .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
                .and_then(|q| q.into_iter().find(|(k, _)| k == "next").map(|(_, v)| v));
            return html(
                StatusCode::OK,
                login::login_page(name, port, &login::safe_next(next.as_deref()), None),
            );
        }
        if req.method() != Method::POST {
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "use GET or POST",
            );
        }
        // Login CSRF: a browser always says where a form post comes from.
        let scheme = if https { "https" } else { "http" };
        let origin_ok = match req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
        {
            None => true,
            Some(o) => o
                .strip_prefix(scheme)
                .and_then(|o| o.strip_prefix("://"))
                .and_then(|o| o.split(':').next())
                .is_some_and(|h| h.eq_ignore_ascii_case(host)),
        };
        let site_ok = req
            .headers()
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v == "same-origin" || v == "none");
        if !origin_ok || !site_ok {
            return page(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "the login form must be posted from this port's own page",
            );
        }
        let body = match http_body_util::Limited::new(req.into_body(), LOGIN_MAX)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Too large",
                    "the login form is too large",
                )
            }
        };
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let next = login::safe_next(field("next"));
        let caller = match field("token") {
            Some(t) => self.manager.authenticate(t).await.ok().flatten(),
            None => None,
        };
        let Some(caller) = caller else {
            return html(
                StatusCode::UNAUTHORIZED,
                login::login_page(name, port, &next, Some("That token is not valid.")),
            );
        };
        self.logged_in(host, name, &caller, &next, https).await
    }

    /// `GET /_hearth/ticket?t=TICKET`: the dashboard's login link (see [`login`]); logs
    /// the browser in as the ticket's user and goes to the app's `/`.
    async fn ticket(
        &self,
        req: Request<Incoming>,
        host: &str,
        name: &str,
        port: u16,
        https: bool,
    ) -> Response<Body> {
        let ticket = req
            .uri()
            .query()
            .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
            .and_then(|q| q.into_iter().find(|(k, _)| k == "t").map(|(_, v)| v));
        let user = ticket.and_then(|t| self.key.verify_ticket(host, &t));
        let caller = match user {
            Some(u) => self.manager.caller(&u).await.ok().flatten(),
            None => None,
        };
        let Some(caller) = caller else {
            return html(
                StatusCode::UNAUTHORIZED,
                login::login_page(
                    name,
                    port,
                    "/",
                    Some(
                        "That link has expired or is not for this port: open the port again \
                         from the dashboard, or log in with your API token.",
                    ),
                ),
            );
        };
        let mut r = self.logged_in(host, name, &caller, "/", https).await;
        // The ticket is in this URL: not to be passed on.
        r.headers_mut()
            .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        r
    }

    /// The answer to a login as `caller`: the cookie and a redirect to `next`.
    async fn logged_in(
        &self,
        host: &str,
        name: &str,
        caller: &Caller,
        next: &str,
        https: bool,
    ) -> Response<Body> {
        // The cookie is only worth having for a workspace the user may open; else the
        // answer is the same 404 as for a workspace that does not exist.
        if self.manager.owned(caller, name).await.is_err() {
            return not_found();
        }
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::SEE_OTHER;
        if let Ok(v) = HeaderValue::from_str(next) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        let cookie = login::set_cookie(Some(&self.key.issue(host, &caller.id)), https);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn retry_later(text: &str) -> Response<Body> {
    let mut r = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Workspace not running",
        text,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

/// 401: a login form for a browser, a plain answer for anything else.
fn unauthorized(
    parts: &hyper::http::request::Parts,
    name: &str,
    port: u16,
    presented: bool,
) -> Response<Body> {
    let mut r = if wants_html(&parts.headers) && parts.method == Method::GET {
        let next = login::safe_next(parts.uri.path_and_query().map(|p| p.as_str()));
        let msg = presented.then_some("Your login has expired or is not valid here.");
        html(
            StatusCode::UNAUTHORIZED,
            login::login_page(name, port, &next, msg),
        )
    } else {
        let mut r = Response::new(Body::from(
            "this port is private: send Authorization: Bearer <hearth token>, or log in at /_hearth/login\n",
        ));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"hearth\""),
    );
    r
}

/// 502 when nothing listens, 503 when the workspace went away, else 502 with the cause.
fn upstream_error(name: &str, port: u16, e: &hyper_util::client::legacy::Error) -> Response<Body> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(n) = c.downcast_ref::<NodeError>() {
            return match n {
                NodeError::Connect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused => page(
                    StatusCode::BAD_GATEWAY,
                    "Nothing listens on this port",
                    &format!("nothing listens on port {port} in workspace {name} (yet); start the server there, then reload"),
                ),
                NodeError::Conflict(m) => retry_later(m),
                other => page(StatusCode::BAD_GATEWAY, "Bad gateway", &other.to_string()),
            };
        }
        cause = c.source();
    }
    tracing::debug!(workspace = name, port, error = %e, "proxied request failed");
    page(
        StatusCode::BAD_GATEWAY,
        "Bad gateway",
        &format!("port {port} of workspace {name} closed the connection without an answer"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_a_port_and_a_workspace() {
        assert_eq!(
            parse_host("8080-web.localhost", "localhost"),
            Some((8080, "web"))
        );
        assert_eq!(
            parse_host("3000-my-app.dev.example.com", "dev.example.com"),
            Some((3000, "my-app"))
        );
        for bad in [
            "localhost",
            "8080.localhost",
            "web.localhost",
            "0-web.localhost",
            "08080-web.localhost",
            "65536-web.localhost",
            "8080-.localhost",
            "8080-Web.localhost",
            "8080-web.localhostx",
            "8080-webxlocalhost",
            "8080-a.b.localhost",
        ] {
            assert_eq!(parse_host(bad, "localhost"), None, "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1);
        assert!(plain.contains_key("x-app"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }
}
