//! The one error type handlers return; it renders as `{"error":{"code","message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_node::{ErrorKind, NodeError};

use hearth_api::{ErrorBody, ErrorInfo};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m)
    }
    pub fn too_many(m: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", m)
    }
    /// A change that would take its owner past their quota (`hearth user quota`).
    pub fn quota(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "quota_exceeded", m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
    }

    pub fn info(&self) -> ErrorInfo {
        ErrorInfo {
            code: self.code.to_string(),
            message: self.message.clone(),
        }
    }
}

impl From<NodeError> for ApiError {
    /// The HTTP status of each node error kind is decided here, and only here.
    fn from(e: NodeError) -> Self {
        let m = e.to_string();
        match e.kind() {
            ErrorKind::NotFound => ApiError::not_found(m),
            ErrorKind::Invalid => ApiError::invalid(m),
            ErrorKind::Conflict => ApiError::conflict(m),
            ErrorKind::Internal => ApiError::internal(m),
            ErrorKind::Unavailable => ApiError::unavailable(m),
        }
    }
}

impl From<crate::db::StoreError> for ApiError {
    fn from(e: crate::db::StoreError) -> Self {
        match e {
            crate::db::StoreError::NameTaken(name) => ApiError::conflict(format!(
                "workspace {name} already exists (hearth ls lists workspaces)"
            )),
            crate::db::StoreError::Quota(q) => ApiError::quota(q.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.info() };
        let mut resp = (self.status, Json(body)).into_response();
        resp.extensions_mut()
            .insert(crate::audit::AuditError(self.message));
        resp
    }
}
