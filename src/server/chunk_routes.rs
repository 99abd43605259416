//! HTTP routes of chunked content: `POST .../blobs/missing`,
//! `PUT|GET .../manifests/{hash}`, and the byte-range answers of blob and
//! file GETs (docs/HTTP_API.md, "Chunked content" and "Byte ranges").

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Caller;
use super::error::ApiError;
use super::ranges::{self, ByteRange};
use super::routes::{ApiJson, ApiPath};
use super::service::{Limits, Served, Service};
use crate::api::*;
use crate::chunks::{Manifest, CHUNK_MIN};
use crate::model::BlobHash;

type Shared = State<Arc<Service>>;

/// JSON bytes per chunk a manifest body may take (`{"hash":"…","size":N},`
/// is about 90).
const MANIFEST_BYTES_PER_CHUNK: u64 = 128;
/// The largest manifest body, whatever `--max-file-bytes` says.
const MANIFEST_BODY_CEILING: u64 = 256 << 20;

/// A manifest of the largest file allowed, cut into the smallest chunks,
/// fits in the body (at least `--max-request-bytes`).
pub fn manifest_body_limit(limits: &Limits) -> usize {
    let most_chunks = limits.max_file_bytes.div_ceil(u64::from(CHUNK_MIN));
    let bytes = most_chunks
        .saturating_mul(MANIFEST_BYTES_PER_CHUNK)
        .min(MANIFEST_BODY_CEILING);
    (bytes as usize).max(limits.max_request_bytes)
}

fn blob_hash(raw: &str) -> Result<BlobHash, ApiError> {
    BlobHash::parse(raw).map_err(|e| ApiError::bad_request(ErrorCode::InvalidHash, e.to_string()))
}

pub async fn missing_blobs(
    State(s): Shared,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(req): ApiJson<MissingBlobsRequest>,
) -> Result<Json<MissingBlobsResponse>, ApiError> {
    Ok(Json(s.missing_blobs(&caller, &project, req.hashes).await?))
}

pub async fn put_manifest(
    State(s): Shared,
    caller: Caller,
    ApiPath((project, hash)): ApiPath<(String, String)>,
    ApiJson(manifest): ApiJson<Manifest>,
) -> Result<impl IntoResponse, ApiError> {
    let hash = blob_hash(&hash)?;
    let receipt = s.put_manifest(&caller, &project, &hash, manifest).await?;
    let status = if receipt.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(receipt)))
}

pub async fn get_manifest(
    State(s): Shared,
    caller: Caller,
    ApiPath((project, hash)): ApiPath<(String, String)>,
) -> Result<Json<Manifest>, ApiError> {
    let hash = blob_hash(&hash)?;
    Ok(Json(s.get_manifest(&caller, &project, &hash).await?))
}

/// The one byte range a request's `Range` header asks for, if any.
pub fn requested_range(headers: &HeaderMap) -> Option<ByteRange> {
    ranges::parse(headers.get(header::RANGE).and_then(|v| v.to_str().ok()))
}

/// 200 with the whole content, 206 with one range of it, or 416; every
/// answer says ranges are welcome.
pub fn served_response(served: Served, mut headers: HeaderMap) -> Response {
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let content_range = |value: String| HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("bytes */0"));
    match served {
        Served::Whole { size, stream } => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            (headers, Body::from_stream(stream)).into_response()
        }
        Served::Part {
            offset,
            len,
            size,
            stream,
        } => {
            let last = offset + len.max(1) - 1;
            headers.insert(
                header::CONTENT_RANGE,
                content_range(format!("bytes {offset}-{last}/{size}")),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            (StatusCode::PARTIAL_CONTENT, headers, Body::from_stream(stream)).into_response()
        }
        Served::Unsatisfiable { size } => {
            let mut answer = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeNotSatisfiable,
                format!("the range asks for bytes past the end of the content ({size} bytes)"),
            )
            .into_response();
            let h = answer.headers_mut();
            h.insert(header::CONTENT_RANGE, content_range(format!("bytes */{size}")));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            answer
        }
    }
}
