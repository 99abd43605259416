//! `contextfs migrate`: copy a data directory (embedded SQLite + blob folder)
//! into PostgreSQL + S3, or into another data directory.
//!
//! 1. Refuse a target that already holds metadata, unless `--force`
//!    (which replaces it).
//! 2. Copy every blob the source's metadata refers to. The target store
//!    hashes each one as it arrives and refuses bytes that do not match their
//!    name, so a damaged source blob stops the migration. Blobs the target
//!    already holds are skipped: re-running after an interruption only copies
//!    what is missing.
//! 3. Stream every metadata row (projects, token hashes, nodes, every
//!    version, events, audit, skills) from one snapshot of the source into
//!    ONE target transaction. Rows keep their ids, version numbers, sequence
//!    numbers, authors, agent ids and times. A row naming a blob that was not
//!    copied in step 2 (the source changed meanwhile) gets it copied before the
//!    import can commit, so target metadata never points at a missing blob.
//!    Any failure rolls the whole import back: the target stays empty and the
//!    next run starts over (skipping the blobs already copied).
//!
//! A chunked blob (`crate::chunks`) has no object of its own: copying it
//! copies its chunks (each verified like any blob), and its manifest travels
//! with the metadata.
//!
//! Stop the server using the source directory first: the copy is of one
//! consistent snapshot, and writes made after it are not carried over.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Args;
use futures_util::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model::BlobHash;
use crate::server::blobs::{BlobError, BlobStore, ByteStream};
use crate::server::store::records::{ImportCounts, RecordBatch};
use crate::server::store::MetadataStore;
use crate::server::{open_backends, Backends, Limits, ServeConfig};

#[derive(Args, Debug, Clone)]
#[command(
    long_about = "Copies everything in a data directory (the embedded SQLite metadata and the blob folder) \
into PostgreSQL + S3-compatible storage, or into another data directory.\n\n\
Every project, token (as its hash: existing tokens keep working), node and version (same ids and numbers, \
statuses, authors, agent ids, times), the change feed, the audit log and the published skills are copied, and \
every blob they refer to, each verified against its hash on the way.\n\n\
The target's metadata must be empty (--force replaces it). Metadata is imported in one transaction, so an \
interrupted migration leaves the target empty; running it again skips the blobs already copied.\n\n\
With --from postgres://... --from-blobs s3://... it copies such a deployment back into a data directory.\n\n\
Stop the server that uses --from first. The admin token is not part of the metadata: give every new instance \
the same CONTEXTFS_ADMIN_TOKEN (the old one is in FROM/admin-token)."
)]
pub struct MigrateArgs {
    /// The data directory to copy (its server stopped); or postgres://... with --from-blobs
    /// to copy a PostgreSQL + S3 deployment back into a data directory
    #[arg(long)]
    pub from: String,
    /// Where the source's blobs are when --from is postgres://...: s3://bucket[/prefix]
    /// (same --s3-endpoint and --s3-region as the target)
    #[arg(long)]
    pub from_blobs: Option<String>,
    /// Where the metadata goes: postgres://user:pass@host:port/db, or a data directory (SQLite)
    #[arg(long)]
    pub to: String,
    /// Where the blobs go: s3://bucket[/prefix] [default: the --to data directory's blob folder]
    #[arg(long)]
    pub blobs: Option<String>,
    /// S3 endpoint URL for non-AWS storage (MinIO, Garage, moto, ...)
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    /// Replace whatever metadata the target already holds
    #[arg(long)]
    pub force: bool,
    /// Blobs copied at once
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
}

/// What a migration did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Rows imported per table.
    pub rows: ImportCounts,
    /// Distinct blobs the metadata refers to.
    pub blobs_referenced: u64,
    /// Blobs copied (and verified) by this run.
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    /// Blobs the target already held.
    pub blobs_present: u64,
    /// The admin token file copied to a data-directory target, if any.
    pub admin_token_copied: Option<PathBuf>,
}

impl Summary {
    pub fn describe(&self) -> String {
        let r = |t: &str| self.rows.get(t);
        format!(
            "metadata: {} projects, {} tokens, {} nodes, {} versions, {} events, {} audit rows, {} skills ({} files)\n\
             blobs: {} referenced; {} copied ({}), {} already there; every copied blob verified against its hash",
            r("projects"),
            r("tokens"),
            r("nodes"),
            r("versions"),
            r("events"),
            r("audit"),
            r("skills"),
            r("skill_files"),
            self.blobs_referenced,
            self.blobs_copied,
            indicatif::HumanBytes(self.bytes_copied),
            self.blobs_present,
        )
    }
}

/// The CLI entry point.
pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let summary = migrate(&args).await?;
    println!("{}", summary.describe());
    match &summary.admin_token_copied {
        Some(path) => eprintln!("admin token: copied to {}", path.display()),
        None => eprintln!(
            "admin token: not part of the metadata; start every instance with the same \
             CONTEXTFS_ADMIN_TOKEN (the old one: {})",
            Path::new(&args.from).join("admin-token").display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn config(data_dir: PathBuf, backends: Backends) -> ServeConfig {
    ServeConfig {
        conn: Default::default(),
        data_dir,
        listen: ([127, 0, 0, 1], 0).into(),
        limits: Limits::default(),
        backends,
        ops: Default::default(),
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

type Stores = (Arc<dyn MetadataStore>, Arc<dyn BlobStore>);

fn open_source(args: &MigrateArgs) -> anyhow::Result<Stores> {
    if is_postgres(&args.from) {
        let Some(blobs) = &args.from_blobs else {
            bail!("--from postgres://... needs --from-blobs s3://bucket[/prefix]");
        };
        let backends = Backends {
            database: Some(args.from.clone()),
            blobs: Some(blobs.clone()),
            s3_endpoint: args.s3_endpoint.clone(),
            s3_region: args.s3_region.clone(),
        };
        return open_backends(&config(std::env::temp_dir(), backends)).context("cannot open the source");
    }
    let from = Path::new(&args.from);
    if !from.join("metadata.sqlite3").is_file() {
        bail!(
            "{} is not a contextfs data directory (it has no metadata.sqlite3)",
            from.display()
        );
    }
    open_backends(&config(from.to_path_buf(), Backends::default()))
        .with_context(|| format!("cannot open the source {}", from.display()))
}

fn open_target(args: &MigrateArgs) -> anyhow::Result<(Stores, Option<PathBuf>)> {
    let s3 = |blobs: &Option<String>| Backends {
        database: None,
        blobs: blobs.clone(),
        s3_endpoint: args.s3_endpoint.clone(),
        s3_region: args.s3_region.clone(),
    };
    if is_postgres(&args.to) {
        if args.to == args.from {
            bail!("--to is the --from database; migrate into a new one");
        }
        let Some(blobs) = &args.blobs else {
            bail!("--to postgres://... needs --blobs s3://bucket[/prefix]: instances sharing a database share blob storage");
        };
        let backends = Backends {
            database: Some(args.to.clone()),
            ..s3(&Some(blobs.clone()))
        };
        // The data directory is not used when both backends are remote.
        let stores = open_backends(&config(std::env::temp_dir(), backends)).context("cannot open the target")?;
        return Ok((stores, None));
    }
    let dir = PathBuf::from(&args.to);
    if same_dir(&dir, Path::new(&args.from)) {
        bail!("--to is the --from directory; migrate into a new one");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stores = open_backends(&config(dir.clone(), s3(&args.blobs)))
        .with_context(|| format!("cannot open the target {}", dir.display()))?;
    Ok((stores, Some(dir)))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

/// Runs the migration `args` describes.
pub async fn migrate(args: &MigrateArgs) -> anyhow::Result<Summary> {
    let (source_store, source_blobs) = open_source(args)?;
    // A source a crash stopped may hold small blobs not yet on disk.
    crate::server::service::restore_deferred_blobs(source_store.as_ref(), source_blobs.as_ref())
        .await
        .context("cannot restore the source's unsynced blobs")?;
    let ((target_store, target_blobs), target_dir) = open_target(args)?;
    if !target_store.is_empty().await.context("cannot inspect the target")? && !args.force {
        bail!(
            "the target already holds metadata; pass --force to replace it (blobs already there are kept and reused)"
        );
    }

    let mut summary = Summary::default();
    let copier = Copier {
        source: source_blobs,
        source_store: source_store.clone(),
        target: target_blobs,
        from: args.from.clone(),
    };

    // 1. Every blob the metadata refers to, before any metadata refers to it.
    let hashes = source_store
        .referenced_hashes()
        .await
        .context("cannot list the source's blobs")?;
    let mut total = 0u64;
    for hash in &hashes {
        total += copier.content_size(hash).await?;
    }
    let blob_bar = bar(
        total,
        "blobs    {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    );
    let mut copied: HashSet<String> = HashSet::with_capacity(hashes.len());
    let mut failed: Option<anyhow::Error> = None;
    {
        // After a failure nothing new starts, but copies under way finish, so
        // the next run finds them done.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut results = futures_util::stream::iter(hashes.iter().cloned())
            .map(|hash| {
                let (copier, blob_bar, stop) = (&copier, &blob_bar, &stop);
                async move {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return None;
                    }
                    Some(copier.copy(&hash, blob_bar).await.map(|o| (hash, o)))
                }
            })
            .buffer_unordered(args.jobs.max(1));
        while let Some(result) = results.next().await {
            match result {
                None => {}
                Some(Ok((hash, outcome))) => {
                    summary.record(outcome);
                    copied.insert(hash.to_string());
                    blob_bar.set_message(format!("{}/{} blobs", copied.len(), hashes.len()));
                }
                Some(Err(e)) => {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    failed.get_or_insert(e);
                }
            }
        }
    }
    if let Some(e) = failed {
        blob_bar.abandon();
        return Err(e.context(format!(
            "blob copy stopped after {} of {} blobs (the target's metadata was not touched; run again to resume)",
            copied.len(),
            hashes.len()
        )));
    }
    blob_bar.finish_and_clear();

    // 2. The metadata, streamed from one source snapshot into one target transaction.
    let rows_bar = ProgressBar::new_spinner();
    rows_bar.set_style(
        ProgressStyle::with_template("metadata {spinner} {pos} rows {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let (export_tx, mut export_rx) = tokio::sync::mpsc::channel::<RecordBatch>(4);
    let (import_tx, import_rx) = tokio::sync::mpsc::channel::<RecordBatch>(4);
    let export = tokio::spawn({
        let store = source_store.clone();
        async move { store.export_records(export_tx).await }
    });
    let replace = args.force;
    let import = tokio::spawn({
        let store = target_store.clone();
        async move { store.import_records(import_rx, replace).await }
    });
    let mut exported = ImportCounts::default();
    let forwarded: anyhow::Result<()> = async {
        while let Some(batch) = export_rx.recv().await {
            for raw in batch.hashes() {
                if copied.contains(raw) {
                    continue;
                }
                // Written after the blob pass: copy it before the import commits.
                let hash = BlobHash::parse(raw).map_err(|e| anyhow!("the source names an invalid blob hash: {e}"))?;
                let outcome = copier.copy(&hash, &blob_bar).await?;
                summary.record(outcome);
                copied.insert(raw.to_string());
            }
            exported.add(&batch);
            rows_bar.inc(batch.len() as u64);
            rows_bar.set_message(batch.table());
            if import_tx.send(batch).await.is_err() {
                break; // the import failed; its error is reported below
            }
        }
        Ok(())
    }
    .await;
    // Closing the channel without `End` (after a failure) rolls the import back.
    drop(import_tx);
    drop(export_rx);
    let exported_ok = export.await.map_err(|e| anyhow!("the export task failed: {e}"))?;
    let imported = import.await.map_err(|e| anyhow!("the import task failed: {e}"))?;
    rows_bar.finish_and_clear();
    forwarded?;
    exported_ok.context("cannot read the source's metadata")?;
    let imported = imported.context("cannot write the target's metadata (nothing was imported)")?;
    if imported != exported {
        bail!("the target imported {imported:?} rows but the source exported {exported:?}");
    }
    summary.rows = imported;
    summary.blobs_referenced = copied.len() as u64;

    // The admin token lives beside the metadata in a data directory.
    if let Some(dir) = target_dir {
        let (from, to) = (Path::new(&args.from).join("admin-token"), dir.join("admin-token"));
        if from.is_file() && !to.exists() {
            std::fs::copy(&from, &to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
            summary.admin_token_copied = Some(to);
        }
    }
    Ok(summary)
}

enum Copied {
    Copied(u64),
    Present,
}

impl Summary {
    fn record(&mut self, outcome: Copied) {
        match outcome {
            Copied::Copied(bytes) => {
                self.blobs_copied += 1;
                self.bytes_copied += bytes;
            }
            Copied::Present => self.blobs_present += 1,
        }
    }
}

struct Copier {
    source: Arc<dyn BlobStore>,
    /// The source's metadata: manifests of chunked blobs.
    source_store: Arc<dyn MetadataStore>,
    target: Arc<dyn BlobStore>,
    /// The source, for messages.
    from: String,
}

impl Copier {
    fn source_blobs_name(&self) -> String {
        if is_postgres(&self.from) {
            "the --from-blobs bucket".to_string()
        } else {
            Path::new(&self.from).join("blobs").display().to_string()
        }
    }

    /// The bytes a hash stands for: its blob's, or its manifest's size.
    async fn content_size(&self, hash: &BlobHash) -> anyhow::Result<u64> {
        if let Some(size) = self.source.size(hash).await? {
            return Ok(size);
        }
        Ok(self.source_store.manifest(hash).await?.map_or(0, |m| m.size))
    }

    /// Copies one blob unless the target has it, or each chunk of a chunked
    /// blob; the target verifies every hash.
    async fn copy(&self, hash: &BlobHash, bar: &ProgressBar) -> anyhow::Result<Copied> {
        if self.source.size(hash).await?.is_none() {
            if let Some(manifest) = self.source_store.manifest(hash).await? {
                let mut copied = 0;
                for chunk in crate::server::store::manifests::distinct_chunks(&manifest) {
                    if let Copied::Copied(bytes) = self
                        .copy_blob(&chunk, bar)
                        .await
                        .with_context(|| format!("chunk {chunk} of {hash}"))?
                    {
                        copied += bytes;
                    }
                }
                return Ok(if copied > 0 {
                    Copied::Copied(copied)
                } else {
                    Copied::Present
                });
            }
        }
        self.copy_blob(hash, bar).await
    }

    /// Copies one stored blob unless the target has it.
    async fn copy_blob(&self, hash: &BlobHash, bar: &ProgressBar) -> anyhow::Result<Copied> {
        let source_size = self.source.size(hash).await?;
        if let Some(size) = self.target.size(hash).await? {
            if let Some(expected) = source_size.filter(|s| *s != size) {
                bail!("blob {hash} is {size} bytes in the target but {expected} in the source");
            }
            bar.inc(size);
            return Ok(Copied::Present);
        }
        let (size, stream) = match self.source.get(hash).await {
            Ok(found) => found,
            // Directories carry the empty hash without an empty blob stored.
            Err(BlobError::NotFound(_)) if *hash == BlobHash::of(b"") => {
                self.target.put_bytes(Bytes::new()).await?;
                return Ok(Copied::Copied(0));
            }
            Err(BlobError::NotFound(_)) => bail!(
                "blob {hash} is referenced by the source's metadata but missing from its blob storage ({})",
                self.source_blobs_name()
            ),
            Err(e) => return Err(anyhow!("cannot read blob {hash}: {e}")),
        };
        let counting = bar.clone();
        let stream: ByteStream = Box::pin(stream.inspect_ok(move |chunk| counting.inc(chunk.len() as u64)));
        let (_, written, _) = self
            .target
            .put_stream(Some(hash), stream, u64::MAX)
            .await
            .map_err(|e| match e {
                BlobError::HashMismatch { actual, .. } => anyhow!(
                    "source blob {hash} is damaged: its bytes hash to {actual}; restore it (in {}) and run again",
                    self.source_blobs_name()
                ),
                e => anyhow!("cannot copy blob {hash}: {e}"),
            })?;
        if written != size {
            bail!("blob {hash}: copied {written} bytes of {size}");
        }
        Ok(Copied::Copied(written))
    }
}
