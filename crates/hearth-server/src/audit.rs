//! The audit log: every mutating API call, SSH login and port visibility change, with
//! who, what, on what, when, from where and the result.
//!
//! API calls are recorded in one place, [`record`], a layer around every route; the SSH
//! gateway calls [`Manager::audit`] for its logins. Nothing records request bodies or
//! headers: an entry holds the route (`PUT /v1/secrets/{key}`), the path's parameters and
//! the error message, never a token or a secret's value.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use ipnet::IpNet;

use crate::auth::Caller;
use crate::db::audit::AuditRecord;
use crate::db::fixed_time;
use crate::manager::Manager;
use crate::state::AppState;

/// Default of `hearth server --audit-retention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 86400);

/// Entries `GET /v1/audit` answers when no limit is given, and at most.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// The error message of a refused call, put in its response by `ApiError`.
#[derive(Debug, Clone)]
pub struct AuditError(pub String);

/// What a call acted on when its path does not say (a create names it in the body): set
/// by the handler in its response.
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

/// The server's audit settings.
#[derive(Debug)]
pub struct AuditSettings {
    /// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxy`).
    trusted: std::sync::RwLock<Vec<IpNet>>,
    /// Entries older than this go at the background gc (zero: kept forever).
    retention_secs: std::sync::atomic::AtomicU64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            trusted: Default::default(),
            retention_secs: DEFAULT_RETENTION.as_secs().into(),
        }
    }
}

impl AuditSettings {
    pub fn set_trusted_proxies(&self, nets: Vec<IpNet>) {
        *self.trusted.write().unwrap_or_else(|e| e.into_inner()) = nets;
    }

    pub fn set_retention(&self, d: Duration) {
        self.retention_secs
            .store(d.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(
            self.retention_secs
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Where a call came from: the peer, or when the peer is a trusted proxy, the
    /// right-most address of `X-Forwarded-For` that is not one (what the proxies
    /// nearest us saw; anything left of it the client could have written).
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<String> {
        self.client_ip(peer, headers).map(|ip| ip.to_string())
    }

    /// [`AuditSettings::client_address`] as an address.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = self.trusted.read().unwrap_or_else(|e| e.into_inner());
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
        if !is_trusted(&peer) {
            return Some(peer);
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            let Ok(v) = v.to_str() else {
                return Some(peer);
            };
            for part in v.split(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(ip),
                    // A malformed list says nothing reliable.
                    Err(_) => return Some(peer),
                }
            }
        }
        Some(
            hops.into_iter()
                .rev()
                .find(|ip| !is_trusted(ip))
                .unwrap_or(peer),
        )
    }
}

/// Whether a call is recorded: every method that changes something, and the GET routes
/// that open a session into a workspace (a shell, a port forward).
fn is_audited(method: &Method, route: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || route.ends_with("/exec")
        || route.ends_with("/forward")
}

/// Copies the authenticated caller into the response, for [`record`] outside the token
/// check. Sits inside `require_token`.
pub async fn note_caller(req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().cloned();
    let mut resp = next.run(req).await;
    if let Some(c) = caller {
        resp.extensions_mut().insert(c);
    }
    resp
}

/// Records mutating API calls (see [`is_audited`]) once they are answered; a streamed
/// answer (ndjson) once its last line is out, with the outcome that line tells.
pub async fn record(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
    else {
        return next.run(req).await;
    };
    let method = req.method().clone();
    if !is_audited(&method, &route) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let target = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok()
        .map(|p| p.iter().map(|(_, v)| v.to_string()).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .map(|v| v.join("/"));
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let peer = st
        .manager
        .audit_settings()
        .client_address(peer, &parts.headers);
    let resp = next.run(Request::from_parts(parts, body)).await;
    let mut entry = AuditRecord::new(format!("{method} {route}"));
    entry.user = resp.extensions().get::<Caller>().map(|c| c.id.to_string());
    entry.target = resp
        .extensions()
        .get::<AuditTarget>()
        .map(|t| t.0.clone())
        .or(target);
    entry.peer = peer;
    entry.status = Some(resp.status().as_u16());
    entry.ok = resp.status().is_success() || resp.status().is_informational();
    entry.error = resp.extensions().get::<AuditError>().map(|e| e.0.clone());
    let streamed = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(hearth_api::NDJSON.as_bytes()));
    if !streamed || !entry.ok {
        st.manager.audit(entry).await;
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let pending = Arc::new(Mutex::new(Pending {
        entry: Some(entry),
        manager: st.manager.clone(),
        last: Vec::new(),
        ended: false,
    }));
    let seen = pending.clone();
    let stream = body.into_data_stream().map(move |chunk| {
        if let Ok(b) = &chunk {
            seen.lock().unwrap_or_else(|e| e.into_inner()).saw(b);
        }
        chunk
    });
    let done = pending.clone();
    let stream = stream.chain(futures_util::stream::once(async move {
        done.lock().unwrap_or_else(|e| e.into_inner()).ended = true;
        Ok::<Bytes, axum::Error>(Bytes::new())
    }));
    // `seen`, held by the body, keeps the entry until the body ends or the client leaves.
    drop(pending);
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// A streamed call's entry, written when its body goes.
struct Pending {
    entry: Option<AuditRecord>,
    manager: Arc<Manager>,
    /// The last line so far (lines are short; a long one keeps its first 64 KiB).
    last: Vec<u8>,
    ended: bool,
}

impl Pending {
    fn saw(&mut self, b: &[u8]) {
        for line in b.split_inclusive(|c| *c == b'\n') {
            if self.last.ends_with(b"\n") {
                self.last.clear();
            }
            if self.last.len() < 64 * 1024 {
                self.last.extend_from_slice(line);
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        match serde_json::from_slice::<hearth_api::StreamLine<serde_json::Value>>(
            self.last.trim_ascii_end(),
        ) {
            Ok(hearth_api::StreamLine::Error(e)) => {
                entry.ok = false;
                entry.error = Some(e.message);
            }
            Ok(hearth_api::StreamLine::Result(_)) => {}
            _ if !self.ended => {
                // The operation goes on without its client: its outcome is not seen here.
                entry.error = Some("the client left before the outcome".into());
            }
            _ => {}
        }
        let manager = self.manager.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { manager.audit(entry).await });
        }
    }
}

impl Manager {
    /// Writes an audit entry; a failure to is logged, never the caller's failure.
    pub async fn audit(&self, entry: AuditRecord) {
        if let Err(e) = self.store().insert_audit(entry.clone()).await {
            tracing::error!(action = entry.action, user = entry.user, error = %e, "cannot write the audit log");
        }
    }

    /// Deletes entries past the retention (the background gc).
    pub async fn prune_audit(&self) {
        let keep = self.audit_settings().retention();
        if keep.is_zero() {
            return;
        }
        let cutoff = time::OffsetDateTime::now_utc()
            - time::Duration::seconds(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX / 2));
        let cutoff = fixed_time(cutoff);
        match self.store().prune_audit(&cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, before = cutoff, "audit log pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the audit log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let s = AuditSettings::default();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap());
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        // Not configured: the header is anyone's to write.
        assert_eq!(s.client_address(Some(proxy), &h).unwrap(), "10.0.0.5");
        s.set_trusted_proxies(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(s.client_address(Some(proxy), &h).unwrap(), "203.0.113.9");
        // From elsewhere, still ignored.
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(s.client_address(Some(other), &h).unwrap(), "198.51.100.1");
        // Garbage: the proxy itself.
        h.insert("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(s.client_address(Some(proxy), &h).unwrap(), "10.0.0.5");
    }

    #[test]
    fn reads_and_sessions_are_not_confused() {
        assert!(!is_audited(&Method::GET, "/v1/workspaces"));
        assert!(is_audited(&Method::GET, "/v1/workspaces/{name}/exec"));
        assert!(is_audited(&Method::POST, "/v1/workspaces"));
        assert!(is_audited(&Method::DELETE, "/v1/users/{user}"));
    }
}

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/audit", axum::routing::get(list_audit))
}

/// Query of `GET /v1/audit`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only this user's entries (a non-admin may name only themselves).
    #[param(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 32
    )]
    pub user: Option<String>,
    /// Only entries at or after this RFC 3339 time.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Only entries before this entry id (the next page: the last id of the previous).
    #[param(max_length = 128)]
    pub before: Option<String>,
    /// How many, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Audit log entries, newest first: admins see everyone's, other users their own.
#[utoipa::path(get, path = "/v1/audit", params(AuditParams),
    responses((status = 200, body = Vec<hearth_api::AuditEntry>),
        (status = 400, body = hearth_api::ErrorBody),
        (status = 403, description = "a non-admin asked for another user's entries",
            body = hearth_api::ErrorBody)))]
pub(crate) async fn list_audit(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    query: Result<axum::extract::Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Vec<hearth_api::AuditEntry>>, crate::error::ApiError> {
    use crate::error::ApiError;
    let axum::extract::Query(q) = query.map_err(|rej| ApiError::invalid(rej.body_text()))?;
    if let Some(u) = &q.user {
        if !crate::auth::is_valid_user_name(u) {
            return Err(ApiError::invalid(crate::auth::invalid_user_name_message(u)));
        }
    }
    let user = match (caller.admin, q.user) {
        (true, u) => u,
        (false, Some(u)) if *u != *caller.id => {
            return Err(ApiError::forbidden(
                "users see only their own audit entries (an admin sees everyone's)",
            ))
        }
        (false, _) => Some(caller.id.to_string()),
    };
    let since = q
        .since
        .map(|s| {
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map(fixed_time)
                .map_err(|e| {
                    ApiError::invalid(format!(
                        "since {s:?} is not an RFC 3339 time (2026-01-31T12:00:00Z): {e}"
                    ))
                })
        })
        .transpose()?;
    if q.before.as_ref().is_some_and(|b| b.len() > 128) {
        return Err(ApiError::invalid(
            "before is an entry id: at most 128 bytes",
        ));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {MAX_LIMIT}, not {limit}"
        )));
    }
    let rows = st
        .manager
        .store()
        .audit(&crate::db::audit::AuditQuery {
            user,
            since,
            before: q.before,
            limit,
        })
        .await?;
    Ok(axum::Json(
        rows.into_iter()
            .map(|r| hearth_api::AuditEntry {
                id: r.id,
                at: r.at,
                user: r.user,
                action: r.action,
                target: r.target,
                peer: r.peer,
                status: r.status,
                ok: r.ok,
                error: r.error,
            })
            .collect(),
    ))
}
