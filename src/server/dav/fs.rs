//! `DavFileSystem` over the service: one value per request, bound to the
//! caller and the project. Every write goes through the same service calls
//! as the REST API (mkdir, rename, delete, commit), so it is versioned,
//! merged, audited and in the change feed like any other write.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, DavProp, FsError, FsFuture, FsResult, FsStream, OpenOptions,
    ReadDirMeta,
};
use futures_util::FutureExt;

use super::file::{ReadFile, WriteFile};
use super::skills::{SkillNode, SkillsView};
use crate::api::{CommitRequest, DeleteRequest, ErrorCode, MkdirRequest, NodeKind, RenameRequest, VersionInfo};
use crate::model::{BlobHash, WsPath};
use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::service::{PutFileOptions, Service};
use crate::server::store::ProjectRow;

/// The project as the WebDAV handler sees it, for one request.
#[derive(Clone)]
pub struct ProjectFs {
    pub service: Arc<Service>,
    pub caller: Caller,
    pub project: ProjectRow,
    /// `agent_id` of the versions this request writes.
    pub agent: Option<String>,
    /// The published skills, shown read-only under `skills/` unless the
    /// project has its own `skills` entry (as in a mount).
    pub skills: Option<Arc<SkillsView>>,
    /// Nodes and dead properties this request has read (see `props`).
    pub props: Arc<super::props::PropCache>,
}

/// A service refusal as the closest file-system error.
pub fn fs_error(e: ApiError) -> FsError {
    match e.status.as_u16() {
        404 => FsError::NotFound,
        403 | 400 => FsError::Forbidden,
        413 => FsError::TooLarge,
        409 => match e.code {
            ErrorCode::Exists | ErrorCode::NotEmpty => FsError::Exists,
            _ => FsError::Forbidden,
        },
        _ => {
            tracing::warn!(code = e.code.as_str(), message = ?e.message, "webdav: service call failed");
            FsError::GeneralFailure
        }
    }
}

/// What PROPFIND and GET report about a node.
#[derive(Debug, Clone)]
pub struct Meta {
    pub len: u64,
    pub modified: SystemTime,
    pub dir: bool,
    pub etag: String,
    pub executable: bool,
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.len
    }
    fn modified(&self) -> FsResult<SystemTime> {
        Ok(self.modified)
    }
    fn is_dir(&self) -> bool {
        self.dir
    }
    fn etag(&self) -> Option<String> {
        Some(self.etag.clone())
    }
    fn executable(&self) -> FsResult<bool> {
        Ok(self.executable)
    }
}

/// RFC 3339 server time → `SystemTime` (the epoch if it does not parse).
pub fn system_time(rfc3339: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

impl Meta {
    /// The project's root, dated when the project was created.
    pub fn root(created_at_ms: i64) -> Self {
        Self {
            len: 0,
            modified: UNIX_EPOCH + Duration::from_millis(u64::try_from(created_at_ms).unwrap_or(0)),
            dir: true,
            etag: "root".into(),
            executable: false,
        }
    }

    /// Files: the etag is the content hash, which is what a client sends
    /// back in `If-Match` and what PUT resolves to a base version.
    pub fn of_version(v: &VersionInfo) -> Self {
        let dir = v.kind == NodeKind::Dir;
        Self {
            len: if dir { 0 } else { v.size },
            modified: super::mtime::version_time(v),
            dir,
            etag: if dir {
                format!("d{}-{}", v.node, v.version)
            } else {
                v.hash.to_string()
            },
            executable: v.mode & 0o111 != 0,
        }
    }

    pub fn of_skill(node: &SkillNode, published: SystemTime) -> Self {
        match node {
            SkillNode::Dir => Self {
                len: 0,
                modified: published,
                dir: true,
                etag: "skills".into(),
                executable: false,
            },
            SkillNode::File { hash, size, mode } => Self {
                len: *size,
                modified: published,
                dir: false,
                etag: hash.to_string(),
                executable: mode & 0o111 != 0,
            },
        }
    }
}

struct DirEntry {
    name: String,
    meta: Meta,
}

impl DavDirEntry for DirEntry {
    fn name(&self) -> Vec<u8> {
        self.name.as_bytes().to_vec()
    }
    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        async move { Ok(meta) }.boxed()
    }
}

/// A `DavPath` (already stripped of `/dav/{project}`) as a workspace path;
/// `None` is the root. The request gate has refused bad names already.
pub fn ws_path(path: &DavPath) -> FsResult<Option<WsPath>> {
    let text = std::str::from_utf8(path.as_bytes()).map_err(|_| FsError::Forbidden)?;
    let trimmed = text.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    WsPath::parse(trimmed).map(Some).map_err(|_| FsError::Forbidden)
}

/// Where a path leads: the project's own tree or the published skills.
pub enum Resolved {
    Root,
    Skill(SkillNode),
    Node(VersionInfo),
    Missing,
}

impl ProjectFs {
    fn skill_rel<'p>(&self, path: &'p WsPath) -> Option<&'p str> {
        self.skills.as_ref()?;
        let p = path.as_str();
        if p == super::skills::SKILLS_DIR {
            Some("")
        } else {
            p.strip_prefix(super::skills::SKILLS_DIR)?.strip_prefix('/')
        }
    }

    /// True when `path` is inside the read-only published skills.
    pub fn in_skills(&self, path: &WsPath) -> bool {
        self.skill_rel(path).is_some()
    }

    pub async fn resolve(&self, path: &Option<WsPath>) -> FsResult<Resolved> {
        let Some(path) = path else {
            return Ok(Resolved::Root);
        };
        if let (Some(rel), Some(view)) = (self.skill_rel(path), self.skills.as_ref()) {
            return Ok(view.node(rel).map(Resolved::Skill).unwrap_or(Resolved::Missing));
        }
        match self
            .service
            .store
            .node_at(self.project.id, path)
            .await
            .map_err(|e| fs_error(e.into()))?
        {
            Some(n) if !n.deleted => Ok(Resolved::Node(n.head)),
            _ => Ok(Resolved::Missing),
        }
    }

    /// When the skills were published (the project's creation before any).
    fn published(&self) -> SystemTime {
        match self.skills.as_ref().map(|s| s.published) {
            Some(t) if t != UNIX_EPOCH => t,
            _ => Meta::root(self.project.created_at).modified,
        }
    }

    async fn head(&self, path: &WsPath) -> FsResult<Option<VersionInfo>> {
        match self.resolve(&Some(path.clone())).await? {
            Resolved::Node(v) => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    fn writable(&self, path: &WsPath) -> FsResult<()> {
        if self.in_skills(path) {
            Err(FsError::Forbidden)
        } else {
            Ok(())
        }
    }

    fn project(&self) -> &str {
        &self.project.name
    }

    async fn metadata_of(&self, path: &DavPath) -> FsResult<Box<dyn DavMetaData>> {
        let meta = match self.resolve(&ws_path(path)?).await? {
            Resolved::Root => Meta::root(self.project.created_at),
            Resolved::Skill(node) => Meta::of_skill(&node, self.published()),
            Resolved::Node(v) => {
                self.props.remember_node(v.path.as_str(), v.node);
                Meta::of_version(&v)
            }
            Resolved::Missing => return Err(FsError::NotFound),
        };
        Ok(Box::new(meta))
    }

    async fn list(&self, path: &DavPath) -> FsResult<Vec<DirEntry>> {
        let ws = ws_path(path)?;
        if let (Some(rel), Some(view)) = (ws.as_ref().and_then(|p| self.skill_rel(p)), self.skills.as_ref()) {
            let published = view.published;
            return Ok(view
                .children(rel)
                .into_iter()
                .map(|(name, node)| DirEntry {
                    meta: Meta::of_skill(&node, published),
                    name,
                })
                .collect());
        }
        let listing = self
            .service
            .tree(&self.caller, self.project(), ws.as_ref(), false)
            .await
            .map_err(fs_error)?;
        for e in &listing.entries {
            self.props.remember_node(&e.path, e.id);
        }
        self.prefetch_props(listing.entries.iter().map(|e| e.id).collect())
            .await?;
        let mut entries: Vec<DirEntry> = listing
            .entries
            .into_iter()
            .map(|e| {
                let dir = e.kind == NodeKind::Dir;
                DirEntry {
                    name: e.path.rsplit('/').next().unwrap_or(&e.path).to_string(),
                    meta: Meta {
                        len: if dir { 0 } else { e.size },
                        modified: system_time(&e.modified_at),
                        dir,
                        etag: if dir {
                            format!("d{}-{}", e.id, e.version)
                        } else {
                            e.hash.to_string()
                        },
                        executable: e.mode & 0o111 != 0,
                    },
                }
            })
            .collect();
        if ws.is_none() && self.skills.is_some() {
            entries.push(DirEntry {
                name: super::skills::SKILLS_DIR.to_string(),
                meta: Meta::of_skill(&SkillNode::Dir, self.published()),
            });
        }
        Ok(entries)
    }

    async fn open_file(&self, path: &DavPath, options: OpenOptions) -> FsResult<Box<dyn DavFile>> {
        let ws = ws_path(path)?.ok_or(FsError::Forbidden)?;
        let resolved = self.resolve(&Some(ws.clone())).await?;
        if !options.write {
            let (hash, meta) = match resolved {
                Resolved::Skill(node @ SkillNode::File { .. }) => {
                    let meta = Meta::of_skill(&node, self.published());
                    match node {
                        SkillNode::File { hash, .. } => (hash, meta),
                        SkillNode::Dir => return Err(FsError::Forbidden),
                    }
                }
                Resolved::Node(v) if v.kind != NodeKind::Dir => (v.hash.clone(), Meta::of_version(&v)),
                Resolved::Missing => return Err(FsError::NotFound),
                _ => return Err(FsError::Forbidden),
            };
            return Ok(Box::new(ReadFile::new(self.service.clone(), hash, meta)));
        }
        self.writable(&ws)?;
        let base = match resolved {
            Resolved::Node(v) if v.kind == NodeKind::Dir => return Err(FsError::Forbidden),
            Resolved::Node(_) if options.create_new => return Err(FsError::Exists),
            Resolved::Node(v) => Some(v),
            Resolved::Missing if !options.create => return Err(FsError::NotFound),
            Resolved::Missing => {
                // LOCK on an unmapped URL opens without writing: the empty
                // file must exist from here on, as on a disk.
                self.require_parent(&ws).await?;
                Some(self.commit_bytes(&ws, None, bytes::Bytes::new()).await?)
            }
            _ => return Err(FsError::Forbidden),
        };
        Ok(Box::new(WriteFile::new(self.clone(), ws, base)))
    }

    /// RFC 4918: a new resource needs an existing parent collection (409).
    pub async fn require_parent(&self, path: &WsPath) -> FsResult<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        match self.head(&parent).await? {
            Some(v) if v.kind == NodeKind::Dir => Ok(()),
            _ => Err(FsError::NotFound),
        }
    }

    /// Commits `bytes` as the content of `path` on top of `base`.
    pub async fn commit_bytes(&self, path: &WsPath, base: Option<i64>, bytes: bytes::Bytes) -> FsResult<VersionInfo> {
        let len = bytes.len() as u64;
        let body: crate::server::blobs::ByteStream =
            Box::pin(futures_util::stream::once(
                async move { Ok::<_, std::io::Error>(bytes) },
            ));
        self.commit_stream(path, base, body, len).await
    }

    /// Commits the `len` bytes of `body` as the content of `path` on top of
    /// `base`, streamed (chunked when large).
    pub async fn commit_stream(
        &self,
        path: &WsPath,
        base: Option<i64>,
        body: crate::server::blobs::ByteStream,
        len: u64,
    ) -> FsResult<VersionInfo> {
        self.service
            .put_file(
                &self.caller,
                self.project(),
                path.clone(),
                PutFileOptions {
                    base_version: base,
                    agent_id: self.agent.clone(),
                    message: None,
                    mtime: None,
                    atime: None,
                    content_length: Some(len),
                },
                body,
            )
            .await
            .map_err(fs_error)
    }

    async fn create_collection(&self, path: &DavPath) -> FsResult<()> {
        let ws = ws_path(path)?.ok_or(FsError::Exists)?;
        self.writable(&ws)?;
        if self.head(&ws).await?.is_some() {
            return Err(FsError::Exists);
        }
        self.require_parent(&ws).await?;
        let (_, created) = self
            .service
            .mkdir(
                &self.caller,
                self.project(),
                MkdirRequest {
                    path: ws,
                    mode: None,
                    agent_id: self.agent.clone(),
                    message: None,
                },
            )
            .await
            .map_err(fs_error)?;
        // The store's mkdir is idempotent: when concurrent MKCOLs of one
        // path (rclone's transfers each make the parent of their file)
        // pass the check above together, only the one that made the folder
        // answers 201, the others 405 (RFC 4918 §9.3.1).
        if !created {
            return Err(FsError::Exists);
        }
        Ok(())
    }

    async fn remove(&self, path: &DavPath, recursive: bool) -> FsResult<()> {
        let ws = ws_path(path)?.ok_or(FsError::Forbidden)?;
        self.writable(&ws)?;
        let deleted = self
            .service
            .delete(
                &self.caller,
                self.project(),
                DeleteRequest {
                    path: ws,
                    base_version: None,
                    recursive,
                    agent_id: self.agent.clone(),
                    message: None,
                    node: None,
                },
            )
            .await
            .map_err(fs_error)?;
        // The deletion is done: a failure here leaves properties nobody
        // sees until the node is restored, so it is logged, not answered.
        if let Err(e) = self
            .forget_props(deleted.deleted.iter().map(|v| v.node).collect())
            .await
        {
            tracing::warn!(error = ?e, "webdav: cannot drop the properties of deleted nodes");
        }
        Ok(())
    }

    async fn rename_node(&self, from: &DavPath, to: &DavPath) -> FsResult<()> {
        let from = ws_path(from)?.ok_or(FsError::Forbidden)?;
        let to = ws_path(to)?.ok_or(FsError::Forbidden)?;
        self.writable(&from)?;
        self.writable(&to)?;
        self.require_parent(&to).await?;
        // The handler has already removed an existing destination when the
        // client allowed overwriting; `replace` stays false so a destination
        // that appeared meanwhile is not clobbered.
        self.service
            .rename(
                &self.caller,
                self.project(),
                RenameRequest {
                    from,
                    to,
                    replace: false,
                    base_version: None,
                    agent_id: self.agent.clone(),
                    message: None,
                    node: None,
                },
            )
            .await
            .map_err(fs_error)?;
        Ok(())
    }

    /// COPY of one file: the destination commits the source's blob, so no
    /// byte is read or uploaded again.
    async fn copy_file(&self, from: &DavPath, to: &DavPath) -> FsResult<()> {
        let from_ws = ws_path(from)?.ok_or(FsError::Forbidden)?;
        let to = ws_path(to)?.ok_or(FsError::Forbidden)?;
        self.writable(&to)?;
        self.require_parent(&to).await?;
        let (hash, kind, mode, source): (BlobHash, NodeKind, u32, i64) = match self.resolve(&Some(from_ws)).await? {
            Resolved::Node(v) if v.kind != NodeKind::Dir => (v.hash, v.kind, v.mode, v.node),
            // Skill blobs are not the project's: copy their bytes in.
            Resolved::Skill(SkillNode::File { hash, .. }) => {
                let bytes = self
                    .service
                    .blobs
                    .read_all(&hash, self.service.limits.max_blob_bytes)
                    .await
                    .map_err(|e| fs_error(e.into()))?;
                let base = self.head(&to).await?.map(|v| v.version);
                self.commit_bytes(&to, base, bytes.into()).await?;
                return Ok(());
            }
            Resolved::Missing => return Err(FsError::NotFound),
            _ => return Err(FsError::Forbidden),
        };
        let base = self.head(&to).await?.map(|v| v.version);
        let copy = self
            .service
            .commit(
                &self.caller,
                self.project(),
                CommitRequest {
                    path: to,
                    base_version: base,
                    hash,
                    kind: Some(kind),
                    mode: Some(mode),
                    agent_id: self.agent.clone(),
                    message: None,
                    idempotency_key: None,
                    node: None,
                    content_base64: None,
                    // A copy is a new file: it is dated now, as `cp` does.
                    mtime: None,
                    atime: None,
                },
            )
            .await
            .map_err(fs_error)?;
        // RFC 4918 §9.8.2: the copy carries the source's dead properties.
        self.copy_props(source, copy.node).await
    }
}

impl DavFileSystem for ProjectFs {
    fn open<'a>(&'a self, path: &'a DavPath, options: OpenOptions) -> FsFuture<'a, Box<dyn DavFile>> {
        self.open_file(path, options).boxed()
    }

    fn read_dir<'a>(&'a self, path: &'a DavPath, _meta: ReadDirMeta) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let entries = self.list(path).await?;
            let stream: FsStream<Box<dyn DavDirEntry>> = Box::pin(futures_util::stream::iter(
                entries.into_iter().map(|e| Ok(Box::new(e) as Box<dyn DavDirEntry>)),
            ));
            Ok(stream)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        self.metadata_of(path).boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        self.create_collection(path).boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        // The handler deletes the children first; `recursive` covers any
        // that appeared meanwhile rather than failing half-way.
        self.remove(path, true).boxed()
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        self.remove(path, false).boxed()
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        self.rename_node(from, to).boxed()
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        self.copy_file(from, to).boxed()
    }

    fn have_props<'a>(
        &'a self,
        path: &'a DavPath,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        let may = self.may_have_props(path);
        async move { may }.boxed()
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsFuture<'a, Vec<(axum::http::StatusCode, DavProp)>> {
        self.patch_dead_props(path, patch).boxed()
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool) -> FsFuture<'a, Vec<DavProp>> {
        self.dead_props(path, do_content).boxed()
    }

    fn get_prop<'a>(&'a self, _path: &'a DavPath, _prop: DavProp) -> FsFuture<'a, Vec<u8>> {
        // dav-server 0.11 adds every dead property (`get_props`) to each
        // PROPFIND answer, and drops what this call does not find: answering
        // here would list a property asked for by name twice.
        async { Err(FsError::NotFound) }.boxed()
    }

    fn get_quota(&self) -> FsFuture<'_, (u64, Option<u64>)> {
        async { Err(FsError::NotImplemented) }.boxed()
    }
}
