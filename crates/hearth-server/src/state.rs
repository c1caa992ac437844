//! What every handler shares: the application state and the JSON body extractor.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;

use crate::error::ApiError;
use crate::manager::Manager;
use crate::names;
use crate::ratelimit::RateLimit;

/// Largest accepted request body; requests are small JSON documents.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub token: Arc<str>,
    pub rate: RateLimit,
    pub uploads: crate::uploads::Uploads,
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

/// JSON body extractor whose rejections use the API's error format.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::too_large(
                format!("request body is larger than {BODY_LIMIT} bytes"),
            )),
            Err(rej) => Err(ApiError::invalid(rej.body_text())),
        }
    }
}
