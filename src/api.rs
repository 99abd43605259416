//! Wire types of the REST API (`/api/v1`), shared by the service and the client
//! so both sides serialise exactly the same shapes. docs/HTTP_API.md shows them
//! on the wire.

use serde::{Deserialize, Serialize};

pub use crate::api_ops::*;
use crate::model::{BlobHash, WsPath};

pub const API_PREFIX: &str = "/api/v1";

/// Response headers of a file checkout (`GET .../files/{path}`).
pub const HEADER_NODE: &str = "x-contextfs-node";
pub const HEADER_VERSION: &str = "x-contextfs-version";
pub const HEADER_HASH: &str = "x-contextfs-hash";
pub const HEADER_KIND: &str = "x-contextfs-kind";
pub const HEADER_MODE: &str = "x-contextfs-mode";
pub const HEADER_STATUS: &str = "x-contextfs-status";
/// Request headers of the one-call upload-and-commit (`PUT .../files/{path}`).
pub const HEADER_BASE_VERSION: &str = "x-contextfs-base-version";
pub const HEADER_AGENT: &str = "x-contextfs-agent";
pub const HEADER_MESSAGE: &str = "x-contextfs-message";
/// A file's mtime / atime: sent on `GET files` (the mtime always, the atime
/// when set), accepted on `PUT files` (RFC 3339 or Unix seconds).
pub const HEADER_MTIME: &str = "x-contextfs-mtime";
pub const HEADER_ATIME: &str = "x-contextfs-atime";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::File => "file",
            NodeKind::Dir => "dir",
            NodeKind::Symlink => "symlink",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "file" => Some(NodeKind::File),
            "dir" => Some(NodeKind::Dir),
            "symlink" => Some(NodeKind::Symlink),
            _ => None,
        }
    }
}

/// How a version came to be: written as sent, three-way merged, or the
/// writer's bytes won a true conflict (the loser stays in history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    Clean,
    Merged,
    Lww,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Clean => "clean",
            VersionStatus::Merged => "merged",
            VersionStatus::Lww => "lww",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "clean" => Some(VersionStatus::Clean),
            "merged" => Some(VersionStatus::Merged),
            "lww" => Some(VersionStatus::Lww),
            _ => None,
        }
    }
}

/// What a version did to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionOp {
    Create,
    Write,
    Mkdir,
    Rename,
    Delete,
    Rollback,
}

impl VersionOp {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionOp::Create => "create",
            VersionOp::Write => "write",
            VersionOp::Mkdir => "mkdir",
            VersionOp::Rename => "rename",
            VersionOp::Delete => "delete",
            VersionOp::Rollback => "rollback",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "create" => VersionOp::Create,
            "write" => VersionOp::Write,
            "mkdir" => VersionOp::Mkdir,
            "rename" => VersionOp::Rename,
            "delete" => VersionOp::Delete,
            "rollback" => VersionOp::Rollback,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Read,
    ReadWrite,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::ReadWrite => "read-write",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "read" => Some(Access::Read),
            "read-write" => Some(Access::ReadWrite),
            _ => None,
        }
    }
}

/// The `code` of an error response: what kind of failure it was, stable
/// across versions (docs/HTTP_API.md §14 says when each one is sent). On the
/// wire it is the snake_case name, e.g. `base_version_unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the JSON body is missing its content type, unparsable, or a field is missing or wrong.
    InvalidBody,
    /// 400: a query parameter does not parse.
    InvalidQuery,
    /// 400: a workspace path in the URL or query breaks the path rules.
    InvalidPath,
    /// 400: a hash in the URL is not 64 lowercase hex characters.
    InvalidHash,
    /// 400: an `x-contextfs-*` header does not parse.
    InvalidHeader,
    /// 400: a project name breaks the naming rule.
    InvalidName,
    /// 400: a field of the request is out of its limits.
    InvalidField,
    /// 400: a published skill is malformed.
    InvalidSkill,
    /// 400: a commit or skill names a blob the server does not have for it.
    BlobMissing,
    /// 400: bytes do not hash to the hash they were sent under.
    HashMismatch,
    /// 400: a commit's inline content is over its limit.
    ContentTooLarge,
    /// 400: the request body broke during an upload.
    UploadFailed,
    /// 401: no token, or an unknown or revoked one.
    Unauthorized,
    /// 403: the token may not do this.
    Forbidden,
    /// 404: no such route, project, path, version, blob or token.
    NotFound,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 409: the name or path is taken.
    Exists,
    /// 409: the `base_version` is no longer the head.
    BaseVersionStale,
    /// 409: the node has no such `base_version`.
    BaseVersionUnknown,
    /// 409: the `node` guard names another node than the one at the path.
    NodeMismatch,
    /// 409: the path is a directory.
    IsADirectory,
    /// 409: the path or a parent is not a directory.
    NotADirectory,
    /// 409: the directory is not empty.
    NotEmpty,
    /// 409: the commit would change a live node's kind.
    KindMismatch,
    /// 409: a directory would move into itself.
    InvalidRename,
    /// 409: another live node took the path of a node being restored.
    PathOccupied,
    /// 413: an upload or request body is over the server's limit.
    TooLarge,
    /// 416: a `Range` asks for bytes past the end of the content.
    RangeNotSatisfiable,
    /// 500: the server failed (database or blob storage).
    Internal,
    /// 503: the node changes too fast to commit; retry.
    Busy,
    /// 503: the server cannot reach its database (or storage) now; nothing
    /// was changed; retry (the answer carries `Retry-After`).
    Unavailable,
    /// A code this build does not know (e.g. sent by a newer server), as sent.
    #[serde(untagged)]
    Other(String),
}

impl ErrorCode {
    /// Every code this build knows (all but [`ErrorCode::Other`]).
    pub const KNOWN: &'static [ErrorCode] = &[
        ErrorCode::InvalidBody,
        ErrorCode::InvalidQuery,
        ErrorCode::InvalidPath,
        ErrorCode::InvalidHash,
        ErrorCode::InvalidHeader,
        ErrorCode::InvalidName,
        ErrorCode::InvalidField,
        ErrorCode::InvalidSkill,
        ErrorCode::BlobMissing,
        ErrorCode::HashMismatch,
        ErrorCode::ContentTooLarge,
        ErrorCode::UploadFailed,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Exists,
        ErrorCode::BaseVersionStale,
        ErrorCode::BaseVersionUnknown,
        ErrorCode::NodeMismatch,
        ErrorCode::IsADirectory,
        ErrorCode::NotADirectory,
        ErrorCode::NotEmpty,
        ErrorCode::KindMismatch,
        ErrorCode::InvalidRename,
        ErrorCode::PathOccupied,
        ErrorCode::TooLarge,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::Internal,
        ErrorCode::Busy,
        ErrorCode::Unavailable,
    ];

    /// The name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::InvalidHash => "invalid_hash",
            ErrorCode::InvalidHeader => "invalid_header",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidSkill => "invalid_skill",
            ErrorCode::BlobMissing => "blob_missing",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::ContentTooLarge => "content_too_large",
            ErrorCode::UploadFailed => "upload_failed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Exists => "exists",
            ErrorCode::BaseVersionStale => "base_version_stale",
            ErrorCode::BaseVersionUnknown => "base_version_unknown",
            ErrorCode::NodeMismatch => "node_mismatch",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::NotEmpty => "not_empty",
            ErrorCode::KindMismatch => "kind_mismatch",
            ErrorCode::InvalidRename => "invalid_rename",
            ErrorCode::PathOccupied => "path_occupied",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::Internal => "internal",
            ErrorCode::Busy => "busy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Other(code) => code,
        }
    }
}

impl From<&str> for ErrorCode {
    /// The code named `code`; [`ErrorCode::Other`] when it is not known.
    fn from(code: &str) -> Self {
        ErrorCode::KNOWN
            .iter()
            .find(|known| known.as_str() == code)
            .cloned()
            .unwrap_or_else(|| ErrorCode::Other(code.to_string()))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `base_version_unknown`.
    pub code: ErrorCode,
    pub message: String,
    /// For conflicts on a node: what the server holds now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<VersionInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// Absent from servers older than chunked content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// What the server accepts, so clients can refuse early (the mount answers
/// `EFBIG` at the write that passes `max_file_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest file (`--max-file-bytes`): a manifest's `size`.
    pub max_file_bytes: u64,
    /// The largest single upload (`--max-blob-bytes`): one blob or file PUT.
    pub max_blob_bytes: u64,
    /// Files of at least this many bytes are uploaded as chunks.
    pub chunked_min: u64,
}

/// `POST .../blobs/missing`: which of these blobs the project still has to upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingBlobsRequest {
    pub hashes: Vec<BlobHash>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingBlobsResponse {
    /// The subset of the request's hashes not yet uploaded to this project,
    /// in request order.
    pub missing: Vec<BlobHash>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    /// `None` for the admin token.
    pub project: Option<String>,
    pub access: Access,
    pub admin: bool,
    pub token_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateProjectRequest {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectInfo {
    pub name: String,
    pub created_at: String,
    /// The project's change-feed cursor: the sequence number of its latest change.
    pub cursor: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateTokenRequest {
    pub access: Access,
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub project: String,
    pub access: Access,
    pub label: Option<String>,
    pub created_at: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The secret: shown once, stored only as a hash.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// One live node of a project tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeEntry {
    pub path: String,
    pub id: i64,
    pub kind: NodeKind,
    pub mode: u32,
    pub size: u64,
    pub hash: BlobHash,
    pub version: i64,
    /// The file's mtime: the one its writer set (RFC 3339, nanoseconds), or
    /// the commit time for a version written without one.
    pub modified_at: String,
    /// The atime its writer set; `None` means the same as `modified_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessed_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeListing {
    /// Apply change-feed events after this cursor to keep the listing current.
    pub cursor: i64,
    pub entries: Vec<TreeEntry>,
}

/// One version of one node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    pub node: i64,
    pub version: i64,
    pub path: String,
    pub kind: NodeKind,
    pub mode: u32,
    pub hash: BlobHash,
    pub size: u64,
    pub op: VersionOp,
    pub status: VersionStatus,
    pub deleted: bool,
    /// The head this version was written over (`None` for the first version).
    pub parent: Option<i64>,
    /// Id of the token that wrote it (`admin` for the admin token).
    pub author: String,
    pub agent_id: Option<String>,
    pub message: Option<String>,
    /// When the server wrote this version (RFC 3339, UTC).
    pub created_at: String,
    /// The file's modification time as its writer set it (RFC 3339 with
    /// nanoseconds); `None` for versions written without one, whose mtime is
    /// `created_at`.
    #[serde(default)]
    pub mtime: Option<String>,
    /// The file's access time as its writer set it; `None`: same as the mtime.
    #[serde(default)]
    pub atime: Option<String>,
}

impl VersionInfo {
    /// The file's mtime: the writer's, else the commit time.
    pub fn modified_at(&self) -> &str {
        self.mtime.as_deref().unwrap_or(&self.created_at)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRequest {
    pub path: WsPath,
    /// The version the writer started from; `None` when creating a new file.
    #[serde(default)]
    pub base_version: Option<i64>,
    /// Hash of the content: uploaded beforehand with `PUT .../blobs/{hash}`,
    /// or sent along in `content_base64`.
    pub hash: BlobHash,
    #[serde(default)]
    pub kind: Option<NodeKind>,
    /// Permission bits (e.g. 0o755 = 493); `None` keeps the current mode.
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// A retried commit with the same key returns the first result instead of
    /// writing a second version.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// When set, fails with 409 `node_mismatch` unless this node is the one
    /// at the path (so a client never writes to a node that replaced its own).
    #[serde(default)]
    pub node: Option<i64>,
    /// Small content (at most [`MAX_INLINE_CONTENT`] bytes) sent with the
    /// commit, base64 with the standard alphabet: the server checks it hashes
    /// to `hash`, stores it, and commits, all in this one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// The file's mtime to store with the version (RFC 3339 or Unix seconds);
    /// `None`: the commit time. Renames and deletions keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    /// The file's atime to store with the version; `None`: the mtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<String>,
}

/// `POST .../commit/batch`: many commits, each treated as `POST .../commit`
/// would treat it, written in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchCommitRequest {
    pub commits: Vec<CommitRequest>,
}

/// The outcome of every commit of a batch, in the request's order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchCommitResponse {
    pub results: Vec<BatchCommitResult>,
}

/// One entry's outcome: its version, or the error (with the HTTP status) a
/// single commit would have answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchCommitResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BatchEntryError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchEntryError {
    /// The status `POST .../commit` would have answered (400, 409, 503...).
    pub status: u16,
    #[serde(flatten)]
    pub detail: ErrorDetail,
}

/// The most content a commit may carry inline (`content_base64`, decoded).
pub const MAX_INLINE_CONTENT: usize = 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MkdirRequest {
    pub path: WsPath,
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenameRequest {
    pub from: WsPath,
    pub to: WsPath,
    /// Replace an existing `to` (it becomes a restorable deletion).
    #[serde(default)]
    pub replace: bool,
    /// When set, the rename fails with 409 if `from` moved past this version.
    #[serde(default)]
    pub base_version: Option<i64>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// When set, fails with 409 `node_mismatch` unless this node is the one
    /// at the path (so a client never writes to a node that replaced its own).
    #[serde(default)]
    pub node: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub path: WsPath,
    #[serde(default)]
    pub base_version: Option<i64>,
    /// Required to delete a non-empty directory.
    #[serde(default)]
    pub recursive: bool,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// When set, fails with 409 `node_mismatch` unless this node is the one
    /// at the path (so a client never writes to a node that replaced its own).
    #[serde(default)]
    pub node: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// One tombstone version per deleted node, the named path first.
    pub deleted: Vec<VersionInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub path: WsPath,
    pub version: i64,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryPage {
    pub node: i64,
    pub path: String,
    /// Newest first.
    pub versions: Vec<VersionInfo>,
    /// Pass as `before` to get the next (older) page; `None` at the first version.
    pub next_before: Option<i64>,
    /// Versions retention removed between (or below) the versions of this
    /// page: shown as `pruned before version N`, never silently.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<PrunedGap>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeEvent {
    pub seq: i64,
    pub node: i64,
    pub path: String,
    /// For renames: where the node was before.
    pub old_path: Option<String>,
    pub op: VersionOp,
    pub version: i64,
    pub kind: NodeKind,
    pub hash: BlobHash,
    pub size: u64,
    pub mode: u32,
    pub deleted: bool,
    pub agent_id: Option<String>,
    pub at: String,
    /// The version's file times as its writer set them (see [`VersionInfo`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesPage {
    /// Pass as `since` on the next call.
    pub cursor: i64,
    pub events: Vec<ChangeEvent>,
    /// True when more events are waiting beyond `limit`.
    pub more: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    /// Token id, or `admin`.
    pub actor: String,
    pub agent_id: Option<String>,
    pub action: String,
    pub path: Option<String>,
    pub version: Option<i64>,
    pub status: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next_since: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobReceipt {
    pub hash: BlobHash,
    pub size: u64,
    /// False when the server already had these bytes.
    pub created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SkillFile {
    /// Path relative to the skills root: `skill-name/SKILL.md`, `skill-name/scripts/x.sh`.
    pub path: WsPath,
    pub hash: BlobHash,
    pub size: u64,
    #[serde(default = "default_file_mode")]
    pub mode: u32,
}

fn default_file_mode() -> u32 {
    0o644
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishSkillsRequest {
    pub files: Vec<SkillFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SkillInfo {
    pub name: String,
    pub description: String,
    pub files: Vec<SkillFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkillsListing {
    pub published_at: Option<String>,
    pub skills: Vec<SkillInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_keep_their_wire_names() {
        for code in ErrorCode::KNOWN {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()), "{code:?}");
            assert_eq!(&serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert_eq!(&ErrorCode::from(code.as_str()), code);
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(ErrorCode::KNOWN.len(), 31);
        assert_eq!(ErrorCode::BaseVersionUnknown.as_str(), "base_version_unknown");
        assert_eq!(ErrorCode::IsADirectory.as_str(), "is_a_directory");
    }

    #[test]
    fn an_unknown_error_code_still_decodes() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"quota_exceeded","message":"over quota"}}"#).unwrap();
        assert_eq!(body.error.code, ErrorCode::Other("quota_exceeded".into()));
        assert_eq!(body.error.code.as_str(), "quota_exceeded");
        assert_eq!(ErrorCode::from("quota_exceeded"), body.error.code);
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"quota_exceeded","message":"over quota"}}"#
        );
    }
}
