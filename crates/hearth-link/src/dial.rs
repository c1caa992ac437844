//! The node dials the control plane (every server of it), and dials again whenever a
//! connection ends.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_node::NodeApi;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use tokio::sync::watch;

use crate::{
    Limits, ServerAddr, CONNECT_PATH, LABELS_HEADER, NODE_HEADER, SERVER_ID_HEADER, UPGRADE,
};

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("server URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach the server at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the server refused the node: {0}")]
    Refused(Refusal),
}

/// The server's answer to a refused connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status)
    }
}

impl Refusal {
    /// A wrong or revoked credential: dialling again cannot help. Other refusals (the
    /// name is still connected, the server is busy) can pass.
    pub fn is_final(&self) -> bool {
        matches!(self.status, 400 | 401 | 403 | 404)
    }
}

/// `http://host[:port]` split for a TCP connect and a Host header.
fn parse_url(url: &str) -> Result<(String, u16, String), DialError> {
    let bad = |reason: &str| DialError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("must start with http:// (the API's own scheme)"));
    }
    let auth = uri.authority().ok_or_else(|| bad("has no host"))?;
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    Ok((
        host.to_string(),
        auth.port_u16().unwrap_or(80),
        auth.as_str().to_string(),
    ))
}

/// Connects to the control plane at `url` as node `name` with its credential and returns
/// the upgraded connection, ready for [`crate::serve`], with the id the server gave
/// ([`crate::SERVER_ID_HEADER`]; `None` from a server that names none).
pub async fn dial(
    url: &str,
    name: &str,
    labels: &[String],
    credential: &str,
) -> Result<(TokioIo<Upgraded>, Option<String>), DialError> {
    let (host, port, authority) = parse_url(url)?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| DialError::Connect {
            url: url.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let http = |source| DialError::Http {
        url: url.to_string(),
        source,
    };
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .map_err(http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "node dial connection ended");
        }
    });
    let req = hyper::Request::get(CONNECT_PATH)
        .header(header::HOST, authority)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, UPGRADE)
        .header(header::AUTHORIZATION, format!("Bearer {credential}"))
        .header(NODE_HEADER, name)
        .header(LABELS_HEADER, labels.join(","))
        .body(Empty::<Bytes>::new())
        .map_err(|e| DialError::Url {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    let resp = send.send_request(req).await.map_err(http)?;
    if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
        let server = resp
            .headers()
            .get(SERVER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_server_id(v))
            .map(str::to_string);
        let up = hyper::upgrade::on(resp).await.map_err(http)?;
        return Ok((TokioIo::new(up), server));
    }
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 64 << 10)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Err(DialError::Refused(Refusal {
        status,
        message: error_message(&body),
    }))
}

/// Server ids are 1-64 of `[0-9a-zA-Z-]` (the server makes 16 hex digits).
fn is_server_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The message of the API's `{"error":{"code","message"}}`, else the body as text.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// What a node links with: its name, labels, credential and the API it serves.
struct Link {
    name: String,
    labels: Vec<String>,
    credential: String,
    node: Arc<dyn NodeApi>,
    limits: Limits,
}

/// How the link to the `--server` URL fares: whether it was tried yet, the id of the
/// server it last reached, and whether it is connected now (that server then needs no
/// second link; while it is not, the server is linked at the URL it advertises, which
/// may have changed).
#[derive(Debug, Clone, Default)]
struct Primary {
    tried: bool,
    server: Option<String>,
    connected: bool,
}

/// Dials `url`, answers calls until the connection ends, dials again after a backoff (1 s
/// doubling to 30 s; back to 1 s after a connection that lasted a minute). Returns only
/// when the server refuses the node for good (a wrong or revoked credential).
async fn link_loop(
    link: Arc<Link>,
    url: String,
    primary: Option<watch::Sender<Primary>>,
) -> Result<(), DialError> {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);
    let mut backoff = FIRST;
    loop {
        let dialled = dial(&url, &link.name, &link.labels, &link.credential).await;
        if let Some(p) = &primary {
            p.send_modify(|p| {
                p.tried = true;
                if let Ok((_, id)) = &dialled {
                    p.connected = true;
                    if id.is_some() {
                        p.server = id.clone();
                    }
                }
            });
        }
        match dialled {
            Ok((io, server)) => {
                tracing::info!(
                    server = url,
                    id = server.as_deref().unwrap_or("?"),
                    node = link.name,
                    "connected to the control plane"
                );
                let since = Instant::now();
                match crate::serve(io, link.node.clone(), link.limits.clone()).await {
                    Ok(()) => tracing::warn!(server = url, "control plane closed the connection"),
                    Err(e) => {
                        tracing::warn!(server = url, error = %e, "connection to the control plane lost")
                    }
                }
                if let Some(p) = &primary {
                    p.send_modify(|p| p.connected = false);
                }
                if since.elapsed() > Duration::from_secs(60) {
                    backoff = FIRST;
                }
            }
            Err(DialError::Refused(r)) if r.is_final() => return Err(DialError::Refused(r)),
            Err(e) => {
                tracing::warn!(server = url, error = %e, retry_in = ?backoff, "cannot connect to the control plane")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX);
    }
}

/// The server list kept in `path` (none if it is missing or unreadable).
fn read_known(path: &Path) -> Vec<ServerAddr> {
    let mut v: Vec<ServerAddr> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    v.truncate(crate::MAX_SERVERS);
    v
}

fn write_known(path: &Path, servers: &[ServerAddr]) {
    let tmp = path.with_extension("tmp");
    let res = serde_json::to_vec_pretty(servers)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        tracing::warn!(path = %path.display(), error = %e, "cannot keep the server list");
    }
}

/// Serves `node` to the control plane at `url` for as long as the process runs, and to
/// every other server sharing its database: each server tells the node over its link
/// which servers are live ([`crate::ServerAddr`]), and the node keeps one link to each
/// (dialled like `url`, with the same credential), dropping links to servers no longer
/// listed. The last list is kept in `known` (if given) so a node restarted while the
/// `url` server is down still finds the others. Returns only when the `url` server
/// refuses the node for good (a wrong or revoked credential).
pub async fn run_node(
    url: &str,
    name: &str,
    labels: &[String],
    credential: &str,
    node: Arc<dyn NodeApi>,
    mut limits: Limits,
    known: Option<&Path>,
) -> Result<(), DialError> {
    let (list_tx, mut list) = watch::channel(known.map(read_known).unwrap_or_default());
    limits.servers = Some(Arc::new(list_tx));
    let link = Arc::new(Link {
        name: name.to_string(),
        labels: labels.to_vec(),
        credential: credential.to_string(),
        node,
        limits,
    });
    let (primary_tx, mut primary) = watch::channel(Primary::default());
    let main = link_loop(link.clone(), url.to_string(), Some(primary_tx));
    let others = async {
        // Aborted with this future (the tasks die with the set).
        let mut tasks = tokio::task::JoinSet::new();
        let mut links: HashMap<String, (String, tokio::task::AbortHandle)> = HashMap::new();
        let mut kept: Option<Vec<ServerAddr>> = None;
        loop {
            let servers = list.borrow_and_update().clone();
            let p = primary.borrow_and_update().clone();
            if let Some(path) = known {
                if kept.as_ref() != Some(&servers) {
                    write_known(path, &servers);
                    kept = Some(servers.clone());
                }
            }
            // Until the `url` server was tried, it may be one of the list: wait. While the
            // `url` link is up, its server needs no other (a second would be refused).
            let want: HashMap<String, String> = servers
                .into_iter()
                .filter(|s| p.tried && !(p.connected && p.server.as_ref() == Some(&s.id)))
                .filter(|s| is_server_id(&s.id) && parse_url(&s.url).is_ok())
                .map(|s| (s.id, s.url))
                .collect();
            links.retain(|id, (url, h)| {
                let keep = want.get(id) == Some(url) && !h.is_finished();
                if !keep {
                    tracing::info!(
                        server = url.as_str(),
                        id = id.as_str(),
                        "dropping the link to a server no longer listed"
                    );
                    h.abort();
                }
                keep
            });
            for (id, url) in want {
                if links.contains_key(&id) {
                    continue;
                }
                tracing::info!(
                    server = url,
                    id,
                    "linking to another server of the control plane"
                );
                let (l, u) = (link.clone(), url.clone());
                let h = tasks.spawn(async move {
                    if let Err(e) = link_loop(l, u.clone(), None).await {
                        tracing::warn!(server = u, error = %e, "link to a server refused for good");
                    }
                });
                links.insert(id, (url, h));
            }
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                r = list.changed() => if r.is_err() { std::future::pending::<()>().await },
                r = primary.changed() => if r.is_err() { std::future::pending::<()>().await },
            }
        }
    };
    tokio::select! {
        r = main => r,
        () = others => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_http_with_a_host() {
        assert_eq!(
            parse_url("http://127.0.0.1:7070").unwrap(),
            ("127.0.0.1".into(), 7070, "127.0.0.1:7070".into())
        );
        assert_eq!(
            parse_url("http://[::1]:7").unwrap(),
            ("::1".into(), 7, "[::1]:7".into())
        );
        assert_eq!(parse_url("http://cp.example").unwrap().1, 80);
        for bad in ["https://x", "127.0.0.1:7070", "http://", "ftp://x"] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("server URL {bad}")), "{e}");
        }
    }

    #[test]
    fn refusal_messages_come_from_the_api_error_body() {
        let body = br#"{"error":{"code":"unauthorized","message":"unknown node credential"}}"#;
        assert_eq!(error_message(body), "unknown node credential");
        assert_eq!(error_message(b" plain text\n"), "plain text");
        let r = Refusal {
            status: 409,
            message: "node a is already connected".into(),
        };
        assert!(!r.is_final());
        assert!(Refusal { status: 401, ..r }.is_final());
    }
}
