//! API errors: every failure leaves as `{"error": {"code", "message"}}` with
//! the HTTP status that tells a client what kind of mistake it was.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::blobs::BlobError;
use super::store::StoreError;
use crate::api::{BatchEntryError, ErrorBody, ErrorCode, ErrorDetail, VersionInfo};

/// What a 503 asks clients to wait, in seconds.
const RETRY_AFTER_SECONDS: &str = "2";

/// Adds `Retry-After` to a 503 (REST and WebDAV alike): clients and proxies
/// that honour it wait before trying again.
pub fn with_retry_after(mut response: Response) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
    }
    response
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub head: Option<Box<VersionInfo>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            head: None,
        }
    }
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }
    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, message)
    }
    /// 503 with `Retry-After`: a dependency is down, the request changed nothing.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, message)
    }
    pub fn with_head(mut self, head: Option<VersionInfo>) -> Self {
        self.head = head.map(Box::new);
        self
    }
}

impl ApiError {
    /// This error as one entry of a batch's answer (logged like a response).
    pub fn into_batch_entry(self) -> BatchEntryError {
        if self.status.is_server_error() {
            tracing::error!(code = self.code.as_str(), message = ?self.message, "a batch entry failed");
        }
        BatchEntryError {
            status: self.status.as_u16(),
            detail: ErrorDetail {
                code: self.code,
                message: self.message,
                head: self.head.map(|h| *h),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code.as_str(), message = ?self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                head: self.head.map(|h| *h),
            },
        };
        with_retry_after((self.status, Json(body)).into_response())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::AlreadyExists(m) => ApiError::conflict(ErrorCode::Exists, m),
            StoreError::HeadMoved => ApiError::conflict(
                ErrorCode::BaseVersionStale,
                "the node changed meanwhile; fetch its head and retry",
            ),
            // The store names its codes as strings; they become ErrorCodes here.
            StoreError::Conflict { code, message } => ApiError::conflict(ErrorCode::from(code), message),
            StoreError::Backend(m) => ApiError::internal(m),
            StoreError::Unavailable(m) => ApiError::unavailable(format!(
                "the metadata database is unreachable ({m}); nothing was changed; retry later"
            )),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match &e {
            BlobError::HashMismatch { .. } => ApiError::bad_request(ErrorCode::HashMismatch, e.to_string()),
            BlobError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, e.to_string())
            }
            BlobError::NotFound(_) => ApiError::not_found(e.to_string()),
            BlobError::Upload(_) => ApiError::bad_request(ErrorCode::UploadFailed, e.to_string()),
            BlobError::Io(_) | BlobError::Corrupt { .. } => ApiError::internal(e.to_string()),
        }
    }
}
