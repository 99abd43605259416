//! Plain rows of every metadata table, for `contextfs migrate`.
//!
//! A store exports its rows as [`RecordBatch`]es from one consistent snapshot
//! ([`MetadataStore::export_records`](super::MetadataStore::export_records)),
//! and another store imports them verbatim — same ids, version numbers,
//! sequence numbers and times — in one transaction
//! ([`MetadataStore::import_records`](super::MetadataStore::import_records)).
//!
//! Batches arrive table by table in this order, so references always point
//! backwards: meta, projects, tokens, nodes, versions, events, audit,
//! project_blobs, skills, skill_files, retention, dav_props, manifests; then
//! one [`RecordBatch::End`]. (`manifest_chunks` is not carried: an import
//! derives it from the manifests.) An
//! import commits only after `End`: a channel that closes without it (the
//! exporter or the copier in between failed) rolls the import back.
//!
//! Enum-like columns (`access`, `kind`, `op`, `status`) hold the strings the
//! API uses (`Access::as_str`, `NodeKind::as_str`, ...); times are Unix
//! milliseconds.

use thiserror::Error;

use crate::api::{Access, NodeKind, VersionOp, VersionStatus};
use crate::model::BlobHash;

/// Rows per batch that exporters aim for.
pub const BATCH_ROWS: usize = 2000;

/// A `meta` key other than the schema version (e.g. `skills_published_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRecord {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    /// The change-feed cursor (the last event's `seq`).
    pub cursor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    /// The blake3 hash of the secret; secrets themselves are never stored.
    pub secret_hash: String,
    pub project_id: i64,
    pub access: String,
    pub label: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: i64,
    pub project_id: i64,
    pub path: String,
    pub kind: String,
    pub deleted: bool,
    pub head: i64,
    pub deleted_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub node_id: i64,
    pub number: i64,
    pub project_id: i64,
    pub path: String,
    pub kind: String,
    pub mode: i64,
    pub hash: String,
    pub size: i64,
    pub op: String,
    pub status: String,
    pub deleted: bool,
    pub parent: Option<i64>,
    pub author: String,
    pub agent_id: Option<String>,
    pub message: Option<String>,
    pub created_at: i64,
    pub idempotency_key: Option<String>,
    /// File times in nanoseconds (`None`: the commit time).
    pub mtime: Option<i64>,
    pub atime: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub project_id: i64,
    pub seq: i64,
    pub node_id: i64,
    pub version: i64,
    pub old_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Global row id, in insertion order.
    pub id: i64,
    pub project_id: Option<i64>,
    /// The number the audit API pages by within the project (`AuditEntry::seq`).
    /// SQLite uses the global id for it; a store with per-project numbers
    /// keeps its own. `None` for rows outside any project.
    pub seq: Option<i64>,
    pub created_at: i64,
    pub actor: String,
    pub agent_id: Option<String>,
    pub action: String,
    pub path: Option<String>,
    pub version: Option<i64>,
    pub status: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectBlobRecord {
    pub project_id: i64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillRecord {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillFileRecord {
    pub path: String,
    pub skill: String,
    pub hash: String,
    pub size: i64,
    pub mode: i64,
}

/// A project's retention policy (`contextfs project set`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRecord {
    pub project_id: i64,
    pub keep_days: Option<i64>,
    pub keep_versions: Option<i64>,
}

/// A WebDAV dead property of a node (`PROPPATCH`). WebDAV locks are not
/// carried: they last minutes and name the instance's clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DavPropRecord {
    pub node_id: i64,
    pub namespace: String,
    pub name: String,
    pub prefix: Option<String>,
    pub xml: Vec<u8>,
}

/// A chunked blob's manifest (`crate::chunks`), its chunk list as stored
/// ([`encode_chunks`](super::manifests::encode_chunks)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    pub hash: String,
    pub size: i64,
    pub chunks: Vec<u8>,
    pub created_at: i64,
}

impl ManifestRecord {
    /// The distinct chunk hashes, for `manifest_chunks` (validated rows only).
    pub fn chunk_hashes(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        super::manifests::decode_chunks(&self.chunks)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.hash.as_str().to_string())
            .filter(|h| seen.insert(h.clone()))
            .collect()
    }
}

/// Some rows of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBatch {
    Meta(Vec<MetaRecord>),
    Projects(Vec<ProjectRecord>),
    Tokens(Vec<TokenRecord>),
    Nodes(Vec<NodeRecord>),
    Versions(Vec<VersionRecord>),
    Events(Vec<EventRecord>),
    Audit(Vec<AuditRecord>),
    ProjectBlobs(Vec<ProjectBlobRecord>),
    Skills(Vec<SkillRecord>),
    SkillFiles(Vec<SkillFileRecord>),
    Retention(Vec<RetentionRecord>),
    DavProps(Vec<DavPropRecord>),
    Manifests(Vec<ManifestRecord>),
    /// The export is complete: the importer may commit.
    End,
}

/// The tables in import order, as [`RecordBatch::table`] names them.
pub const TABLES: [&str; 13] = [
    "meta",
    "projects",
    "tokens",
    "nodes",
    "versions",
    "events",
    "audit",
    "project_blobs",
    "skills",
    "skill_files",
    "retention",
    "dav_props",
    "manifests",
];

impl RecordBatch {
    pub fn table(&self) -> &'static str {
        match self {
            RecordBatch::Meta(_) => "meta",
            RecordBatch::Projects(_) => "projects",
            RecordBatch::Tokens(_) => "tokens",
            RecordBatch::Nodes(_) => "nodes",
            RecordBatch::Versions(_) => "versions",
            RecordBatch::Events(_) => "events",
            RecordBatch::Audit(_) => "audit",
            RecordBatch::ProjectBlobs(_) => "project_blobs",
            RecordBatch::Skills(_) => "skills",
            RecordBatch::SkillFiles(_) => "skill_files",
            RecordBatch::Retention(_) => "retention",
            RecordBatch::DavProps(_) => "dav_props",
            RecordBatch::Manifests(_) => "manifests",
            RecordBatch::End => "end",
        }
    }

    pub fn len(&self) -> usize {
        match self {
            RecordBatch::Meta(v) => v.len(),
            RecordBatch::Projects(v) => v.len(),
            RecordBatch::Tokens(v) => v.len(),
            RecordBatch::Nodes(v) => v.len(),
            RecordBatch::Versions(v) => v.len(),
            RecordBatch::Events(v) => v.len(),
            RecordBatch::Audit(v) => v.len(),
            RecordBatch::ProjectBlobs(v) => v.len(),
            RecordBatch::Skills(v) => v.len(),
            RecordBatch::SkillFiles(v) => v.len(),
            RecordBatch::Retention(v) => v.len(),
            RecordBatch::DavProps(v) => v.len(),
            RecordBatch::Manifests(v) => v.len(),
            RecordBatch::End => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The blob hashes these rows refer to.
    pub fn hashes(&self) -> Vec<&str> {
        match self {
            RecordBatch::Versions(v) => v.iter().map(|r| r.hash.as_str()).collect(),
            RecordBatch::ProjectBlobs(v) => v.iter().map(|r| r.hash.as_str()).collect(),
            RecordBatch::SkillFiles(v) => v.iter().map(|r| r.hash.as_str()).collect(),
            // A chunked blob: copying it copies its chunks.
            RecordBatch::Manifests(v) => v.iter().map(|r| r.hash.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

/// A row an import refuses: a column that holds one of the API's names (or a
/// blob hash) holds something else, so no store could read the row back.
#[derive(Debug, Error)]
#[error("cannot import: invalid {what} {value:?}")]
pub struct InvalidRecord {
    pub what: &'static str,
    pub value: String,
}

impl RecordBatch {
    /// Checks the enum-like and hash columns of every row (both stores run
    /// this before they write a batch).
    pub fn validate(&self) -> Result<(), InvalidRecord> {
        match self {
            RecordBatch::Tokens(rows) => rows
                .iter()
                .try_for_each(|r| check(Access::parse(&r.access).is_some(), "token access", &r.access)),
            RecordBatch::Nodes(rows) => rows
                .iter()
                .try_for_each(|r| check(NodeKind::parse(&r.kind).is_some(), "node kind", &r.kind)),
            RecordBatch::Versions(rows) => rows.iter().try_for_each(|r| {
                check(NodeKind::parse(&r.kind).is_some(), "version kind", &r.kind)?;
                check(VersionOp::parse(&r.op).is_some(), "version op", &r.op)?;
                check(VersionStatus::parse(&r.status).is_some(), "version status", &r.status)?;
                check_hash(&r.hash)
            }),
            RecordBatch::ProjectBlobs(rows) => rows.iter().try_for_each(|r| check_hash(&r.hash)),
            RecordBatch::SkillFiles(rows) => rows.iter().try_for_each(|r| check_hash(&r.hash)),
            RecordBatch::Manifests(rows) => rows.iter().try_for_each(|r| {
                check_hash(&r.hash)?;
                check(
                    super::manifests::decode_chunks(&r.chunks).is_some_and(|c| !c.is_empty()),
                    "manifest chunk list of",
                    &r.hash,
                )
            }),
            RecordBatch::Meta(_)
            | RecordBatch::Projects(_)
            | RecordBatch::Events(_)
            | RecordBatch::Audit(_)
            | RecordBatch::Skills(_)
            | RecordBatch::Retention(_)
            | RecordBatch::DavProps(_)
            | RecordBatch::End => Ok(()),
        }
    }
}

fn check(ok: bool, what: &'static str, value: &str) -> Result<(), InvalidRecord> {
    if ok {
        return Ok(());
    }
    Err(InvalidRecord {
        what,
        value: value.to_string(),
    })
}

fn check_hash(hash: &str) -> Result<(), InvalidRecord> {
    check(BlobHash::parse(hash).is_ok(), "blob hash", hash)
}

/// Rows per table that an import wrote, in [`TABLES`] order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub rows: [u64; 13],
}

impl ImportCounts {
    pub fn add(&mut self, batch: &RecordBatch) {
        if let Some(i) = TABLES.iter().position(|t| *t == batch.table()) {
            self.rows[i] += batch.len() as u64;
        }
    }

    pub fn get(&self, table: &str) -> u64 {
        TABLES
            .iter()
            .position(|t| *t == table)
            .map(|i| self.rows[i])
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(kind: &str, op: &str, status: &str, hash: &str) -> VersionRecord {
        VersionRecord {
            node_id: 1,
            number: 1,
            project_id: 1,
            path: "a".into(),
            kind: kind.into(),
            mode: 0o644,
            hash: hash.into(),
            size: 0,
            op: op.into(),
            status: status.into(),
            deleted: false,
            parent: None,
            author: "admin".into(),
            agent_id: None,
            message: None,
            created_at: 0,
            idempotency_key: None,
            mtime: None,
            atime: None,
        }
    }

    #[test]
    fn validate_names_the_first_invalid_column() {
        let hash = BlobHash::of(b"").as_str().to_string();
        let good = version(
            NodeKind::File.as_str(),
            VersionOp::Write.as_str(),
            VersionStatus::Clean.as_str(),
            &hash,
        );
        assert!(RecordBatch::Versions(vec![good.clone()]).validate().is_ok());
        let bad_op = VersionRecord {
            op: "explode".into(),
            ..good.clone()
        };
        let err = RecordBatch::Versions(vec![good, bad_op]).validate().unwrap_err();
        assert_eq!(err.to_string(), "cannot import: invalid version op \"explode\"");
        let blob = ProjectBlobRecord {
            project_id: 1,
            hash: "nope".into(),
        };
        let err = RecordBatch::ProjectBlobs(vec![blob]).validate().unwrap_err();
        assert_eq!(err.to_string(), "cannot import: invalid blob hash \"nope\"");
        assert!(RecordBatch::End.validate().is_ok());
    }
}
