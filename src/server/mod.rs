//! `contextfs serve`: the workspace service.

pub mod auth;
pub mod blobs;
pub mod chunk_routes;
pub mod dav;
pub mod error;
pub mod feed;
pub mod gc;
pub mod listen;
pub mod metrics;
pub mod ops_routes;
pub mod ranges;
pub mod routes;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

pub use service::{Limits, Service};

/// Environment variable that fixes the admin token instead of a generated one.
pub const ADMIN_TOKEN_ENV: &str = "CONTEXTFS_ADMIN_TOKEN";

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub backends: Backends,
    /// Timeouts and the connection cap of the HTTP listener.
    pub conn: listen::ConnLimits,
    /// Retention default, garbage collection and metrics settings.
    pub ops: gc::OpsConfig,
}

/// Where metadata and blobs live. `None` means the embedded default under
/// the data directory (SQLite, blob folder).
#[derive(Debug, Clone, Default)]
pub struct Backends {
    /// `postgres://user:pass@host:port/db`
    pub database: Option<String>,
    /// `s3://bucket[/prefix]`
    pub blobs: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the metadata database: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot open blob storage: {0}")]
    Blobs(#[from] blobs::BlobError),
    #[error("cannot listen on {addr}: {source} (is another server using that port?)")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot restore the blobs a crash left unsynced: {0}")]
    Recovery(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Where the admin token came from, for the start-up message.
pub enum AdminToken {
    FromEnv(String),
    FromFile {
        token: String,
        path: PathBuf,
        created: bool,
    },
}

impl AdminToken {
    pub fn secret(&self) -> &str {
        match self {
            AdminToken::FromEnv(t) => t,
            AdminToken::FromFile { token, .. } => token,
        }
    }
}

/// Shortest admin secret `serve` accepts: anything shorter can be guessed.
pub const MIN_ADMIN_SECRET: usize = 16;

fn check_secret_length(token: &str, from: &str) -> Result<(), ServeError> {
    if token.chars().count() < MIN_ADMIN_SECRET {
        return Err(ServeError::Unsupported(format!(
            "the admin secret from {from} is {} characters; it needs at least {MIN_ADMIN_SECRET} \
             (it grants every project): use e.g. `openssl rand -hex 24`",
            token.chars().count()
        )));
    }
    Ok(())
}

/// `CONTEXTFS_ADMIN_TOKEN` when set, else DIR/admin-token, generated (mode
/// 0600) on first start. A file holding a secret that other users may read
/// is refused; an empty one is filled and its mode fixed to 0600.
pub fn admin_token(data_dir: &Path) -> Result<AdminToken, ServeError> {
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
        if !token.trim().is_empty() {
            check_secret_length(token.trim(), &format!("${ADMIN_TOKEN_ENV}"))?;
            return Ok(AdminToken::FromEnv(token.trim().to_string()));
        }
    }
    let path = data_dir.join("admin-token");
    let io = |source| ServeError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(ServeError::Unsupported(format!(
                    "{} holds the admin secret but has mode {:03o}: other users can read it; \
                     run `chmod 600 {}` (and consider the secret leaked if they could)",
                    path.display(),
                    mode & 0o777,
                    path.display()
                )));
            }
            check_secret_length(token.trim(), &path.display().to_string())?;
            return Ok(AdminToken::FromFile {
                token: token.trim().to_string(),
                path,
                created: false,
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let token = format!("cfs_admin_{}", hex::encode(rand::random::<[u8; 24]>()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    // `mode` applies only to a new file; an existing (empty) one keeps its
    // own until fixed here, before the secret goes in.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(AdminToken::FromFile {
        token,
        path,
        created: true,
    })
}

/// Opens the data directory and builds the service on the embedded defaults.
/// The directory is created 0700; with the umask `serve` sets, the database
/// and blob files in it are created 0600.
pub fn open_embedded(config: &ServeConfig) -> Result<(Arc<Service>, AdminToken), ServeError> {
    let data_dir_err = |source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(data_dir_err)?;
    let mode = std::fs::metadata(&config.data_dir)
        .map_err(data_dir_err)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        eprintln!(
            "warning: data directory {} has mode {:03o}: other users may read its database and blobs; \
             `chmod 700` it unless that is intended",
            config.data_dir.display(),
            mode & 0o777
        );
    }
    let token = admin_token(&config.data_dir)?;
    let (store, blobs) = open_backends(config)?;
    let service = Service::new(store, blobs, token.secret(), config.limits.clone())
        .with_ops(config.ops.clone())
        .with_deferred_sync(service::deferred_sync_interval());
    Ok((Arc::new(service), token))
}

/// The metadata store and the blob store a service runs on.
pub type OpenedBackends = (Arc<dyn store::MetadataStore>, Arc<dyn blobs::BlobStore>);

/// Opens the metadata store and blob store that `config.backends` names.
pub fn open_backends(config: &ServeConfig) -> Result<OpenedBackends, ServeError> {
    let store: Arc<dyn store::MetadataStore> = match &config.backends.database {
        None => Arc::new(store::sqlite::SqliteStore::open(
            &config.data_dir.join("metadata.sqlite3"),
        )?),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Arc::new(store::postgres::PostgresStore::open_blocking(url)?)
        }
        // Not echoed: a database URL may hold a password.
        Some(_) => {
            return Err(ServeError::Unsupported(
                "--database: expected postgres://user:password@host:port/database".to_string(),
            ))
        }
    };
    let blobs: Arc<dyn blobs::BlobStore> = match &config.backends.blobs {
        None => Arc::new(blobs::dir::DirBlobStore::open(&config.data_dir)?),
        Some(url) if url.starts_with("s3://") => Arc::new(blobs::s3::S3BlobStore::open(
            url,
            &blobs::s3::S3Settings {
                endpoint: config.backends.s3_endpoint.clone(),
                region: config.backends.s3_region.clone(),
            },
        )?),
        Some(url) => {
            return Err(ServeError::Unsupported(format!(
                "--blobs {url}: expected s3://bucket[/prefix]"
            )))
        }
    };
    Ok((store, blobs))
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    // Everything this process creates (database, WAL, blobs, directories) is
    // for its own user only: files 0600, directories 0700.
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let (service, token) = open_embedded(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    match &token {
        AdminToken::FromEnv(_) => println!("admin token: from ${ADMIN_TOKEN_ENV}"),
        AdminToken::FromFile {
            path, created: true, ..
        } => println!("admin token: generated and written to {}", path.display()),
        AdminToken::FromFile { path, .. } => println!("admin token: read from {}", path.display()),
    }
    println!("data: {}", config.data_dir.display());
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {addr} without TLS: tokens and data cross the network in clear text; \
             put a TLS-terminating reverse proxy in front (docs/DEPLOY.md) or listen on 127.0.0.1"
        );
    }
    if config.backends.database.is_some() {
        println!("metadata: PostgreSQL (shared; every instance needs the same ${ADMIN_TOKEN_ENV})");
        if !matches!(token, AdminToken::FromEnv(_)) {
            eprintln!(
                "warning: with --database, set ${ADMIN_TOKEN_ENV} to the same secret on every instance; \
                 the admin-token file is per data directory"
            );
        }
    }
    // Changes committed through other instances sharing the store wake this
    // instance's change-feed long-polls.
    if let Some(mut wakes) = service.store.subscribe() {
        let service = service.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(wake) = wakes.next().await {
                match wake {
                    store::Wake::Project(id) => service.feed.notify(id),
                    store::Wake::All => service.feed.notify_all(),
                }
            }
        });
    }
    // Blobs a crash left unsynced are restored before the first request.
    match service.restore_deferred_blobs().await {
        Ok(0) => {}
        Ok(n) => println!("restored {n} blob(s) that were not on disk after a crash"),
        Err(e) => return Err(ServeError::Recovery(e.to_string())),
    }
    // The interval the service was opened with: the variable is read once.
    if let Some(interval) = service.deferred_sync() {
        service::spawn_deferred_sync(service.clone(), interval);
    }
    if let Some(interval) = config.ops.gc_interval {
        gc::spawn_schedule(service.clone(), interval);
    }
    if let Some(metrics_addr) = config.ops.metrics_listen {
        let metrics_listener =
            tokio::net::TcpListener::bind(metrics_addr)
                .await
                .map_err(|source| ServeError::Listen {
                    addr: metrics_addr,
                    source,
                })?;
        let bound = metrics_listener.local_addr().map_err(ServeError::Serve)?;
        println!("metrics on http://{bound}/metrics");
        let router = metrics::dedicated_router(service.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics_listener, router).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    // Scripts and tests wait for this exact line.
    println!("listening on http://{addr}");
    let app = routes::router(service.clone());
    let stopping = service.clone();
    listen::serve(listener, app, config.conn.clone(), async move {
        shutdown_signal().await;
        // Long-polls answer now instead of holding the shutdown for their timeout.
        stopping.begin_shutdown();
    })
    .await
    .map_err(ServeError::Serve)?;
    // What was committed last is on disk before the process ends.
    if let Err(e) = service.sync_deferred_blobs().await {
        tracing::error!(error = %e, "cannot sync deferred blobs at shutdown; the next start restores them");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutting down");
}
