//! Version lists for `.contextfs/history` from the server's history route,
//! asked from FUSE threads with a deadline (there is no FUSE_INTERRUPT).

use std::sync::Arc;
use std::time::Duration;

use crate::api::VersionInfo;
use crate::client::{Client, ClientError};
use crate::model::WsPath;
use crate::vfs::history::{History, HistoryError, VersionSource, META_DIR};
use crate::vfs::Vfs;

/// The longest a version list may take, all pages together.
const LIST_DEADLINE: Duration = Duration::from_secs(10);
/// Versions per request (the route's largest page).
const PAGE: u32 = 1000;
/// Pages at most: 100,000 versions of one file.
const MAX_PAGES: usize = 100;

struct ServerVersions {
    client: Client,
    project: String,
    runtime: tokio::runtime::Handle,
}

impl ServerVersions {
    async fn all(&self, path: &WsPath) -> Result<Option<Vec<VersionInfo>>, ClientError> {
        let mut out = Vec::new();
        let mut before = None;
        for _ in 0..MAX_PAGES {
            let page = match self.client.history(&self.project, path.as_str(), before, PAGE).await {
                Ok(page) => page,
                Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => return Ok(None),
                Err(e) => return Err(e),
            };
            out.extend(page.versions);
            match page.next_before {
                Some(next) => before = Some(next),
                None => return Ok(Some(out)),
            }
        }
        tracing::warn!(path = ?path.as_str(), "history has more than {} versions; showing the newest", PAGE as usize * MAX_PAGES);
        Ok(Some(out))
    }
}

impl VersionSource for ServerVersions {
    fn versions(&self, path: &WsPath) -> Result<Option<Vec<VersionInfo>>, HistoryError> {
        self.runtime.block_on(async {
            tokio::time::timeout(LIST_DEADLINE, self.all(path))
                .await
                .map_err(|_| HistoryError::Timeout(LIST_DEADLINE))?
                .map_err(|e| HistoryError::Server(e.to_string()))
        })
    }
}

/// The `.contextfs/history` view of a project mount (hidden when the
/// project has a top-level `.contextfs` of its own: the project's data wins).
pub fn history_view(vfs: Arc<Vfs>, client: Client, project: String, runtime: tokio::runtime::Handle) -> History {
    if vfs.lookup(crate::vfs::ROOT_INO, META_DIR).is_ok() {
        tracing::warn!(
            "the project has its own top-level `{META_DIR}` entry; past versions are not shown at {META_DIR}/history"
        );
    }
    History::new(
        vfs,
        Arc::new(ServerVersions {
            client,
            project,
            runtime,
        }),
    )
}
