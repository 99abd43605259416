//! API errors: every failure leaves as `{"error": {"code", "message"}}` with
//! the HTTP status that tells a client what kind of mistake it was.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::blobs::BlobError;
use super::store::StoreError;
use crate::api::{ErrorBody, ErrorDetail, VersionInfo};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub head: Option<Box<VersionInfo>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            head: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn with_head(mut self, head: Option<VersionInfo>) -> Self {
        self.head = head.map(Box::new);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                head: self.head.map(|h| *h),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::AlreadyExists(m) => ApiError::conflict("exists", m),
            StoreError::HeadMoved => ApiError::conflict(
                "base_version_stale",
                "the node changed meanwhile; fetch its head and retry",
            ),
            StoreError::Conflict { code, message } => ApiError::conflict(code, message),
            StoreError::Backend(m) => ApiError::internal(m),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match &e {
            BlobError::HashMismatch { .. } => ApiError::bad_request("hash_mismatch", e.to_string()),
            BlobError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
            BlobError::NotFound(_) => ApiError::not_found(e.to_string()),
            BlobError::Upload(_) => ApiError::bad_request("upload_failed", e.to_string()),
            BlobError::Io(_) => ApiError::internal(e.to_string()),
        }
    }
}
