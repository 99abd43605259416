//! Uploading a commit's content from the journal (by chunks when it is
//! large: only the chunks the server lacks, so a retry after kill -9 or a
//! server restart resumes), and the server's limits that decide how.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{classify, Outcome, Replicator};
use crate::api::Limits;
use crate::client::UploadError;
use crate::model::BlobHash;
use crate::vfs::drain::{ContentSource, DrainItem, DrainOp};
use crate::vfs::DEFAULT_MAX_FILE_BYTES;

/// How long asking the server for its limits may take before a round goes on
/// without them (a frozen server must not hold every round).
const LIMITS_TIMEOUT: Duration = Duration::from_secs(5);

impl Replicator {
    /// What the server accepts, as learned from it (`None`: not known, or a
    /// server that does not say). Sets the mount's largest file size
    /// (`EFBIG` past it; 1 TiB when the server does not say).
    pub fn set_limits(&self, limits: Option<Limits>) {
        self.vfs
            .set_max_file_bytes(limits.map_or(DEFAULT_MAX_FILE_BYTES, |l| l.max_file_bytes));
        if let Ok(mut known) = self.limits.lock() {
            *known = limits;
        }
        self.limits_stale.store(false, Ordering::Relaxed);
    }

    pub fn limits(&self) -> Option<Limits> {
        self.limits.lock().ok().and_then(|l| *l)
    }

    /// Asks the server for its limits when they are not known or it may have
    /// restarted (with other flags) since: before the first round that
    /// reaches it after an unreachable one.
    pub(super) async fn refresh_limits_if_stale(&self) {
        if !self.limits_stale.load(Ordering::Relaxed) {
            return;
        }
        match tokio::time::timeout(LIMITS_TIMEOUT, self.remote.limits()).await {
            Ok(Ok(limits)) => {
                if limits != self.limits() {
                    tracing::info!(?limits, "the server's limits");
                }
                self.set_limits(limits);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot ask the server for its limits yet"),
            Err(_) => tracing::debug!("the server did not say its limits within {LIMITS_TIMEOUT:?}"),
        }
    }

    /// After a round that could not reach the server: ask again next time.
    pub(super) fn limits_may_have_changed(&self) {
        self.limits_stale.store(true, Ordering::Relaxed);
    }

    /// Uploads the content of a `Commit` item when it comes from a journal
    /// file; `Some(outcome)` when that failed (the commit must not be sent).
    pub(super) async fn upload_content(&self, item: &DrainItem) -> Option<Outcome> {
        let DrainOp::Commit {
            source: ContentSource::File(file),
            hash,
            path,
            ..
        } = &item.op
        else {
            return None;
        };
        self.upload_file(path.as_str(), hash, file).await.err()
    }

    async fn upload_file(&self, path: &str, hash: &BlobHash, file: &Path) -> Result<(), Outcome> {
        let limits = self.limits();
        match self
            .remote
            .upload_file(&self.project, hash, file, limits.as_ref())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_transient() => Err(Outcome::Transient(format!("uploading {path}: {e}"))),
            Err(UploadError::Server(e)) => Err(classify(e)),
            // The journal's copy is unreadable or is not what the record
            // names: never commit it; the reason shows in `contextfs status`.
            Err(e @ (UploadError::Local { .. } | UploadError::Changed { .. })) => {
                tracing::error!(%path, error = %e, "the journal's copy of a change cannot be uploaded");
                Err(Outcome::Refused(format!(
                    "the journal's copy of {path} cannot be uploaded: {e}"
                )))
            }
            Err(e @ UploadError::TooLarge { .. }) => Err(Outcome::Refused(e.to_string())),
        }
    }
}
