//! Per-caller request rate limit: a token bucket per [`Caller`], so one client cannot
//! starve the server; over it a request gets 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::auth::Caller;
use crate::error::ApiError;

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

/// The limiter's state; keys are caller ids (user names), so it holds one entry per user.
#[derive(Clone)]
pub struct Limiter(Option<Arc<DefaultKeyedRateLimiter<Arc<str>>>>);

impl Limiter {
    pub fn new(cfg: RateLimit) -> Limiter {
        let Some(rate) = NonZeroU32::new(cfg.per_second) else {
            return Limiter(None);
        };
        let burst = NonZeroU32::new(cfg.burst).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Limiter(Some(Arc::new(DefaultKeyedRateLimiter::keyed(quota))))
    }
}

/// Runs after the token check, which put the [`Caller`] in the request.
pub async fn limit(State(lim): State<Limiter>, req: Request, next: Next) -> Response {
    let (Some(lim), Some(caller)) = (lim.0.as_ref(), req.extensions().get::<Caller>()) else {
        return next.run(req).await;
    };
    match lim.check_key(&caller.id) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let secs = secs.max(1);
            tracing::debug!(caller = %caller.id, retry_after = secs, "rate limited");
            let mut resp = ApiError::too_many(format!(
                "too many requests from this client; retry in {secs} s"
            ))
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
    }
}
