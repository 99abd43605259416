//! PUT: streams the body into a commit. `If-Match: "<etag>"` (an etag is a
//! content hash) names the version the client edited, which becomes the
//! commit's base so the three-way merge applies; without it the head is
//! the base. A stale `If-Match` whose change cannot be merged (binary, or
//! conflicting lines) answers 412 and stores nothing in the history.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

use dav_server::ls::DavLockSystem;

use super::fs::Resolved;
use super::{DavRefusal, DavRequest};
use crate::api::{NodeKind, VersionInfo, HEADER_STATUS, HEADER_VERSION};
use crate::merge::{merge, MergeOutcome};
use crate::model::{BlobHash, WsPath};
use crate::server::blobs::{BlobError, ByteStream};
use crate::server::service::{PutFileOptions, StoredUpload, MAX_MERGE_BYTES};

/// How many versions back an `If-Match` etag is looked for.
const MAX_IF_MATCH_HISTORY: u32 = 10_000;
const HISTORY_PAGE: u32 = 1000;

enum IfMatch {
    Any,
    Tags(Vec<String>),
}

fn if_match(headers: &HeaderMap) -> Option<IfMatch> {
    let value = headers.get(header::IF_MATCH)?.to_str().ok()?;
    if value.trim() == "*" {
        return Some(IfMatch::Any);
    }
    Some(IfMatch::Tags(
        value
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/").trim_matches('"').to_string())
            .filter(|t| !t.is_empty())
            .collect(),
    ))
}

fn if_none_match_any(headers: &HeaderMap) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*")
}

fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

fn precondition_failed(message: impl Into<String>) -> DavRefusal {
    DavRefusal::new(StatusCode::PRECONDITION_FAILED, message)
}

/// The version whose content hashes to `etag`, newest first.
async fn version_with_hash(ctx: &DavRequest, path: &WsPath, etag: &str) -> Result<Option<VersionInfo>, DavRefusal> {
    let mut before = None;
    let mut seen = 0;
    while seen < MAX_IF_MATCH_HISTORY {
        let page = ctx
            .fs
            .service
            .history(&ctx.fs.caller, &ctx.fs.project.name, path, before, Some(HISTORY_PAGE))
            .await?;
        seen += HISTORY_PAGE;
        if let Some(v) = page
            .versions
            .into_iter()
            .find(|v| !v.deleted && v.hash.as_str() == etag)
        {
            return Ok(Some(v));
        }
        match page.next_before {
            Some(b) => before = Some(b),
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// 412 unless the edit of `base` into the upload merges cleanly with `head`.
/// A chunked upload (16 MiB or more) is past the merge limit: refused
/// without reading it.
async fn refuse_unmergeable(
    ctx: &DavRequest,
    path: &WsPath,
    base: &BlobHash,
    head: &BlobHash,
    new: &StoredUpload,
) -> Result<(), DavRefusal> {
    let too_large = || precondition_failed("the file changed since the If-Match version and is too large to merge");
    if matches!(new, StoredUpload::Chunked(_)) || new.size() > MAX_MERGE_BYTES {
        return Err(too_large());
    }
    let blobs = &ctx.fs.service.blobs;
    let mut inputs = Vec::with_capacity(3);
    for hash in [base, head, new.hash()] {
        match blobs.read_all(hash, MAX_MERGE_BYTES).await {
            Ok(bytes) => inputs.push(bytes),
            Err(BlobError::TooLarge { .. }) => return Err(too_large()),
            Err(e) => return Err(crate::server::error::ApiError::from(e).into()),
        }
    }
    match merge(path.as_str(), &inputs[0], &inputs[1], &inputs[2]) {
        MergeOutcome::Merged(_) => Ok(()),
        MergeOutcome::Conflict(reason) => Err(precondition_failed(format!(
            "the file changed since the If-Match version and the change cannot be merged ({reason}); \
             nothing was stored: GET it again and redo the edit"
        ))),
    }
}

/// Refuses with 423 when `path` is locked and the request does not submit
/// the lock's token in its `If` header.
async fn check_lock(ctx: &DavRequest, path: &WsPath, headers: &HeaderMap) -> Result<(), DavRefusal> {
    let tokens: Vec<String> = headers
        .get_all("if")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split('<')
                .skip(1)
                .filter_map(|s| s.split_once('>').map(|(t, _)| t.to_string()))
        })
        .collect();
    let encoded = path
        .as_str()
        .split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string())
        .collect::<Vec<_>>()
        .join("/");
    let dav_path = dav_server::davpath::DavPath::new(&format!("/{encoded}"))
        .map_err(|_| DavRefusal::new(StatusCode::BAD_REQUEST, "the path cannot be checked for locks"))?;
    ctx.locks
        .check(&dav_path, Some(&ctx.principal), false, false, &tokens)
        .await
        .map_err(|_| DavRefusal::new(StatusCode::LOCKED, format!("{path} is locked; send its lock token")))
}

/// The commit's base from `If-Match`: `(base version, the If-Match version
/// when it is not the head)`. No `If-Match`: no base (the head, as it is
/// when the upload is stored).
async fn base_of(
    ctx: &DavRequest,
    path: &WsPath,
    headers: &HeaderMap,
    head: Option<&VersionInfo>,
) -> Result<(Option<i64>, Option<VersionInfo>), DavRefusal> {
    match (if_match(headers), head) {
        (None, _) => Ok((None, None)),
        (Some(_), None) => Err(precondition_failed(format!("{path} does not exist (If-Match)"))),
        (Some(IfMatch::Any), Some(h)) => Ok((Some(h.version), None)),
        (Some(IfMatch::Tags(tags)), Some(h)) if tags.iter().any(|t| t == h.hash.as_str()) => {
            Ok((Some(h.version), None))
        }
        (Some(IfMatch::Tags(tags)), Some(_)) => {
            for tag in &tags {
                if let Some(old) = version_with_hash(ctx, path, tag).await? {
                    return Ok((Some(old.version), Some(old)));
                }
            }
            Err(precondition_failed(format!("no version of {path} has that etag")))
        }
    }
}

pub async fn put(ctx: &DavRequest, path: WsPath, req: Request) -> Result<Response, DavRefusal> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let service = &ctx.fs.service;
    if headers.contains_key(header::CONTENT_RANGE) {
        return Err(DavRefusal::new(
            StatusCode::NOT_IMPLEMENTED,
            "partial PUT (Content-Range) is not supported; send the whole file",
        ));
    }
    // A body over --max-file-bytes is refused (413) before it is read.
    let declared = crate::server::routes::declared_length(headers);
    let mtime = super::mtime::requested(headers)?;
    check_lock(ctx, &path, headers).await?;
    let head = match ctx.fs.resolve(&Some(path.clone())).await.map_err(DavRefusal::from_fs)? {
        Resolved::Node(v) if v.kind == NodeKind::Dir => {
            return Err(DavRefusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} is a directory"),
            ))
        }
        Resolved::Node(v) => Some(v),
        Resolved::Missing => None,
        Resolved::Root | Resolved::Skill(_) => {
            return Err(DavRefusal::new(StatusCode::FORBIDDEN, "this path is read-only"))
        }
    };
    if head.is_none() {
        ctx.fs.require_parent(&path).await.map_err(|_| {
            DavRefusal::new(
                StatusCode::CONFLICT,
                format!("the parent folder of {path} does not exist"),
            )
        })?;
    }
    if if_none_match_any(headers) && head.is_some() {
        return Err(precondition_failed(format!("{path} exists (If-None-Match: *)")));
    }
    let (base, stale) = base_of(ctx, &path, headers, head.as_ref()).await?;
    let options = PutFileOptions {
        base_version: base,
        agent_id: ctx.fs.agent.clone(),
        message: None,
        mtime: mtime.clone(),
        atime: None,
        content_length: declared,
    };
    // Stored (one blob or chunks, streamed) before anything is decided;
    // committed only once a stale base is known to merge.
    let stored = service
        .store_upload(&ctx.fs.project, body_stream(body), declared)
        .await?;
    if let (Some(old), Some(h)) = (&stale, &head) {
        refuse_unmergeable(ctx, &path, &old.hash, &h.hash, &stored).await?;
    }
    let written = service
        .commit_upload(&ctx.fs.caller, &ctx.fs.project, path, options, stored)
        .await?;
    let mut response = if head.is_none() {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", written.hash)) {
        h.insert(header::ETAG, v);
    }
    h.insert(HEADER_VERSION, HeaderValue::from(written.version));
    h.insert(HEADER_STATUS, HeaderValue::from_static(written.status.as_str()));
    if mtime.is_some() {
        // rclone reads this to know the server kept the time it sent.
        h.insert(super::mtime::HEADER_OC_MTIME, HeaderValue::from_static("accepted"));
    }
    Ok(response)
}
