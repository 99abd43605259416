//! WebDAV locks in the metadata database (`dav_locks`), so that every
//! instance on one PostgreSQL sees the locks any of them granted: a
//! `DavLockSystem` for dav-server over [`DavStore`]. The conflict rules
//! are in [`store::dav`](crate::server::store::dav); a LOCK checks and
//! inserts in one transaction.
//!
//! The lock system has no error channel: when the database fails, a LOCK
//! or a write check answers "locked" (423), never "free".

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use dav_server::davpath::DavPath;
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use futures_util::FutureExt;
use xmltree::Element;

use crate::server::store::dav::{check_conflict, covers, expires_at, DavLockRow};
use crate::server::store::{now_millis, MetadataStore};

/// The longest lock a client gets: it renews it (LOCK refresh) to keep it.
pub const MAX_LOCK_SECONDS: u64 = 3600;

/// One project's locks, for one request.
#[derive(Clone)]
pub struct DbLocks {
    store: Arc<dyn MetadataStore>,
    project_id: i64,
    /// `/dav/{project}`: the prefix of the hrefs in lock answers.
    prefix: String,
}

impl std::fmt::Debug for DbLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbLocks").field("project_id", &self.project_id).finish()
    }
}

/// A request path as stored: the project path without slashes at the ends.
pub fn stored_path(path: &DavPath) -> String {
    String::from_utf8_lossy(path.as_bytes()).trim_matches('/').to_string()
}

fn encode(path: &str) -> String {
    path.split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn owner_xml(owner: &Element) -> Option<String> {
    let mut out = Vec::new();
    let config = xmltree::EmitterConfig::new().write_document_declaration(false);
    owner.write_with_config(&mut out, config).ok()?;
    String::from_utf8(out).ok()
}

fn seconds(timeout: Option<Duration>) -> u64 {
    timeout
        .map(|d| d.as_secs().clamp(1, MAX_LOCK_SECONDS))
        .unwrap_or(MAX_LOCK_SECONDS)
}

impl DbLocks {
    pub fn new(store: Arc<dyn MetadataStore>, project_id: i64, project: &str) -> Self {
        Self {
            store,
            project_id,
            prefix: format!("/dav/{project}"),
        }
    }

    fn dav_path(&self, stored: &str) -> DavPath {
        DavPath::new(&format!("{}/{}", encode(&self.prefix), encode(stored)))
            .and_then(|mut p| p.set_prefix(&self.prefix).map(|()| p))
            .unwrap_or_else(|_| DavPath::new("/").unwrap_or_else(|_| unreachable!("/ is a valid path")))
    }

    fn to_dav(&self, row: DavLockRow) -> DavLock {
        DavLock {
            path: Box::new(self.dav_path(&row.path)),
            principal: row.principal,
            owner: row
                .owner_xml
                .and_then(|x| Element::parse(x.as_bytes()).ok())
                .map(Box::new),
            timeout_at: Some(UNIX_EPOCH + Duration::from_millis(row.expires_at.max(0) as u64)),
            timeout: Some(Duration::from_secs(row.timeout_secs)),
            shared: row.shared,
            deep: row.deep,
            token: row.token,
        }
    }

    /// Stands for a lock the database could not confirm or rule out.
    fn unavailable(&self, path: &DavPath) -> DavLock {
        DavLock {
            token: "urn:uuid:00000000-0000-0000-0000-000000000000".into(),
            path: Box::new(path.clone()),
            principal: None,
            owner: None,
            timeout_at: None,
            timeout: None,
            shared: false,
            deep: false,
        }
    }

    async fn live(&self) -> Result<Vec<DavLockRow>, ()> {
        self.store
            .dav_locks(self.project_id, now_millis())
            .await
            .map_err(|e| tracing::error!(error = %e, "webdav: cannot read the lock table"))
    }

    /// The unexpired lock `token` when it applies to `path`.
    async fn find(&self, path: &DavPath, token: &str) -> Result<Option<DavLockRow>, ()> {
        let at = stored_path(path);
        Ok(self
            .live()
            .await?
            .into_iter()
            .find(|l| l.token == token && covers(l, &at)))
    }
}

impl DavLockSystem for DbLocks {
    fn lock(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        owner: Option<&Element>,
        timeout: Option<Duration>,
        shared: bool,
        deep: bool,
    ) -> LsFuture<'_, Result<DavLock, DavLock>> {
        let secs = seconds(timeout);
        let now = now_millis();
        let row = DavLockRow {
            token: new_token(),
            path: stored_path(path),
            principal: principal.map(str::to_string),
            owner_xml: owner.and_then(owner_xml),
            deep,
            shared,
            timeout_secs: secs,
            expires_at: expires_at(now, secs),
        };
        let path = path.clone();
        async move {
            match self.store.dav_lock(self.project_id, row, now).await {
                Ok(Ok(granted)) => Ok(self.to_dav(granted)),
                Ok(Err(conflict)) => Err(self.to_dav(conflict)),
                Err(e) => {
                    tracing::error!(error = %e, "webdav: cannot take a lock");
                    Err(self.unavailable(&path))
                }
            }
        }
        .boxed()
    }

    fn unlock(&'_ self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        let (path, token) = (path.clone(), token.to_string());
        async move {
            if self.find(&path, &token).await?.is_none() {
                return Err(());
            }
            match self.store.dav_unlock(self.project_id, vec![token]).await {
                Ok(1) => Ok(()),
                Ok(_) => Err(()),
                Err(e) => {
                    tracing::error!(error = %e, "webdav: cannot remove a lock");
                    Err(())
                }
            }
        }
        .boxed()
    }

    fn refresh(&'_ self, path: &DavPath, token: &str, timeout: Option<Duration>) -> LsFuture<'_, Result<DavLock, ()>> {
        let (path, token) = (path.clone(), token.to_string());
        async move {
            if self.find(&path, &token).await?.is_none() {
                return Err(());
            }
            match self
                .store
                .dav_refresh(self.project_id, &token, seconds(timeout), now_millis())
                .await
            {
                Ok(Some(row)) => Ok(self.to_dav(row)),
                Ok(None) => Err(()),
                Err(e) => {
                    tracing::error!(error = %e, "webdav: cannot refresh a lock");
                    Err(())
                }
            }
        }
        .boxed()
    }

    fn check(
        &'_ self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        submitted_tokens: &[String],
    ) -> LsFuture<'_, Result<(), DavLock>> {
        let (path, principal, tokens) = (path.clone(), principal.map(str::to_string), submitted_tokens.to_vec());
        async move {
            let Ok(locks) = self.live().await else {
                return Err(self.unavailable(&path));
            };
            let at = stored_path(&path);
            match check_conflict(&locks, &at, principal.as_deref(), ignore_principal, deep, &tokens) {
                Some(conflict) => Err(self.to_dav(conflict.clone())),
                None => Ok(()),
            }
        }
        .boxed()
    }

    fn discover(&'_ self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        let at = stored_path(path);
        async move {
            self.live()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|l| covers(l, &at))
                .map(|l| self.to_dav(l))
                .collect()
        }
        .boxed()
    }

    fn delete(&'_ self, path: &DavPath) -> LsFuture<'_, Result<(), ()>> {
        let at = stored_path(path);
        async move {
            let tokens: Vec<String> = self
                .live()
                .await?
                .into_iter()
                .filter(|l| at.is_empty() || l.path == at || l.path.starts_with(&format!("{at}/")))
                .map(|l| l.token)
                .collect();
            if tokens.is_empty() {
                return Ok(());
            }
            self.store
                .dav_unlock(self.project_id, tokens)
                .await
                .map(|_| ())
                .map_err(|e| tracing::error!(error = %e, "webdav: cannot remove the locks of a deleted path"))
        }
        .boxed()
    }
}

/// A new lock token: a random (version 4) UUID as a URN.
fn new_token() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
