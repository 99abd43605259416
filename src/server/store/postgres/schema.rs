//! The PostgreSQL schema: SQL migrations embedded in the binary and applied
//! on start.

use tokio_postgres::NoTls;

use super::retry::{describe, pg_error};
use crate::server::store::{backend, StoreResult};

/// The SQL migrations, in order. Version N is `MIGRATIONS[N - 1]`; never edit
/// one that shipped: add the next file instead.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../../migrations/postgres/0001_initial.sql")),
    (2, include_str!("../../../../migrations/postgres/0002_file_times.sql")),
    (3, include_str!("../../../../migrations/postgres/0003_long_paths.sql")),
    (4, include_str!("../../../../migrations/postgres/0004_operations.sql")),
    (5, include_str!("../../../../migrations/postgres/0005_webdav.sql")),
    (6, include_str!("../../../../migrations/postgres/0006_manifests.sql")),
];

/// Key of the advisory lock that serialises migrations between instances.
const MIGRATION_LOCK: i64 = 0x636f_6e74_6578_7401; // "context" + 1

/// Opens one connection outside the pool; its driver runs on this runtime
/// until the client is dropped.
pub(super) async fn connect(config: &tokio_postgres::Config) -> StoreResult<tokio_postgres::Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| backend(format!("cannot connect to PostgreSQL: {}", describe(&e))))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "database connection closed");
        }
    });
    Ok(client)
}

/// Applies the migrations this database lacks, all in one transaction under
/// an advisory lock: instances starting together wait for each other, and
/// the second finds nothing left to do.
pub(super) async fn migrate(config: &tokio_postgres::Config) -> StoreResult<()> {
    let mut client = connect(config).await?;
    let pg = pg_error("cannot migrate the database schema");
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg)?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(pg)?
        .get(0);
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(backend(format!(
            "database schema version {current} is newer than this build supports ({latest}); upgrade contextfs"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| backend(format!("migration {version} failed: {}", describe(&e))))?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[version])
            .await
            .map_err(pg)?;
        tracing::info!(version, "applied database migration");
    }
    tx.commit().await.map_err(pg)?;
    Ok(())
}
