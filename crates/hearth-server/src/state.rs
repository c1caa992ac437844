//! What every handler shares: the application state and the JSON body extractor.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;
use crate::manager::Manager;
use crate::names;
use crate::ratelimit::RateLimit;

/// Largest accepted request body; requests are small JSON documents.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub rate: RateLimit,
    /// Per peer address, on the routes anyone may call.
    pub public_rate: RateLimit,
    pub uploads: crate::uploads::Uploads,
    /// What `GET /v1/ssh` answers.
    pub ssh: Arc<hearth_api::SshInfo>,
    /// Request latencies for `/metrics`.
    pub metrics: Arc<crate::metrics::HttpMetrics>,
    /// Nodes on other hosts connected now.
    pub links: Arc<crate::links::Links>,
    /// Browser sessions and the identity provider (see [`crate::auth`]).
    pub auth: Arc<crate::auth::AuthState>,
}

/// A workspace name from the path, checked before any state is touched: nothing is
/// looked up, locked or logged for a name that could never exist.
pub struct WsName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for WsName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rej| ApiError::invalid(rej.body_text()))?;
        if !names::is_valid_name(&name) {
            return Err(ApiError::invalid(names::invalid_name_message(&name)));
        }
        Ok(WsName(name))
    }
}

/// JSON body extractor whose rejections use the API's error format. Bodies are JSON
/// objects only (serde's derive would also read a struct from an array, which the schema
/// does not allow), and a number with a zero fraction (`5.0`) is the integer JSON Schema
/// says it is.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let mut v = match Json::<Value>::from_request(req, state).await {
            Ok(Json(v)) => v,
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::too_large(format!(
                    "request body is larger than {BODY_LIMIT} bytes"
                )))
            }
            Err(rej) => return Err(ApiError::invalid(rej.body_text())),
        };
        if !v.is_object() {
            return Err(ApiError::invalid("request body must be a JSON object"));
        }
        integral_floats_to_integers(&mut v);
        serde_json::from_value(v)
            .map(ApiJson)
            .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
    }
}

/// Rewrites every float with a zero fraction that fits an i64 or u64 as that integer.
fn integral_floats_to_integers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let Some(f) = n.as_f64() else { return };
            if f.fract() != 0.0 {
                return;
            }
            // Bounds are exclusive at the top: 2^64 and 2^63 are representable floats
            // that the casts below would saturate.
            if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                *v = Value::from(f as u64);
            } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(o) => o.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}
