//! Request rate limits: a token bucket per [`Caller`] on the API, so one client cannot
//! starve the server, and one per peer address on the routes anyone may call (sign-in,
//! node join, webhooks), which have no caller yet; over either a request gets 429 with
//! `Retry-After`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::manager::Manager;

/// Requests per second per caller, sustained, and how many more may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// 0 turns the limit off.
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    /// Far above what the CLI or a dashboard sends, low enough that a loop cannot hog
    /// the server.
    fn default() -> Self {
        RateLimit {
            per_second: 100,
            burst: 500,
        }
    }
}

impl RateLimit {
    /// For the routes anyone may call, per peer address: a sign-in is two requests and a
    /// forge sends a webhook per push, so this is far above honest use, and it bounds
    /// token guessing and sign-in records per address. Behind a reverse proxy not named
    /// by `--trusted-proxy`, every client shares the proxy's address.
    pub const PUBLIC: RateLimit = RateLimit {
        per_second: 10,
        burst: 100,
    };

    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

/// The limiter's state; keys are caller ids (user names), so it holds one entry per user.
#[derive(Clone)]
pub struct Limiter(Option<Arc<DefaultKeyedRateLimiter<Arc<str>>>>);

impl Limiter {
    pub fn new(cfg: RateLimit) -> Limiter {
        Limiter(
            cfg.quota()
                .map(|q| Arc::new(DefaultKeyedRateLimiter::keyed(q))),
        )
    }
}

/// Per peer address, for routes without a caller.
#[derive(Clone)]
pub struct PeerLimiter(Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>);

/// Addresses tracked before those whose bucket is full again (they would pass anyway) are
/// dropped, so a scan from many addresses does not keep memory.
const PEERS_KEPT: usize = 10_000;

impl PeerLimiter {
    pub fn new(cfg: RateLimit) -> PeerLimiter {
        PeerLimiter(
            cfg.quota()
                .map(|q| Arc::new(DefaultKeyedRateLimiter::keyed(q))),
        )
    }
}

/// Limits by the client's address (the peer's, or with `--trusted-proxy` the one its
/// `X-Forwarded-For` names); a request without a peer (served in-process, as tests do)
/// passes.
pub async fn limit_peer(
    State((lim, manager)): State<(PeerLimiter, Arc<Manager>)>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client = manager.audit_settings().client_ip(peer, req.headers());
    let (Some(l), Some(ip)) = (lim.0.as_ref(), client) else {
        return next.run(req).await;
    };
    if l.len() >= PEERS_KEPT {
        l.retain_recent();
    }
    match l.check_key(&ip) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            tracing::debug!(client = %ip, "rate limited");
            too_many(not_until.wait_time_from(DefaultClock::default().now()))
        }
    }
}

/// 429 with `Retry-After` in whole seconds (at least 1).
fn too_many(wait: std::time::Duration) -> Response {
    let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let mut resp = ApiError::too_many(format!(
        "too many requests from this client; retry in {secs} s"
    ))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Runs after the token check, which put the [`Caller`] in the request.
pub async fn limit(State(lim): State<Limiter>, req: Request, next: Next) -> Response {
    let (Some(lim), Some(caller)) = (lim.0.as_ref(), req.extensions().get::<Caller>()) else {
        return next.run(req).await;
    };
    match lim.check_key(&caller.id) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            tracing::debug!(caller = %caller.id, "rate limited");
            too_many(not_until.wait_time_from(DefaultClock::default().now()))
        }
    }
}
