//! Write transactions that lost a race run again: [`TxError`] tells a final
//! failure from a lost race, and [`write_tx!`] retries the whole transaction.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::server::store::{backend, StoreError};

/// How often a transaction that lost a race is run again before giving up
/// with `HeadMoved`.
pub(super) const MAX_TX_ATTEMPTS: u32 = 12;

/// A database error with the server's message and SQLSTATE when there is one.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// A database error as a store error that says what was being done.
pub(super) fn pg_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError + Copy {
    move |e| store_error(&e, format!("{what}: {}", describe(&e)))
}

/// Whether `e` means PostgreSQL could not be reached (connection refused or
/// lost, the server shutting down or starting) rather than that it refused a
/// statement: SQLSTATE class 08 (connection exception) and 57P (operator
/// intervention: shutdown, crash, cannot connect now), or an I/O error.
pub(super) fn unreachable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return code.code().starts_with("08") || code.code().starts_with("57P");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// `message` as the store error `e` calls for: `Unavailable` when the
/// database was unreachable (the request may succeed later), else `Backend`.
pub(super) fn store_error(e: &tokio_postgres::Error, message: String) -> StoreError {
    if unreachable(e) {
        StoreError::Unavailable(message)
    } else {
        backend(message)
    }
}

/// No connection could be had from the pool (the database refused or did
/// not answer in time).
pub(super) fn no_connection(e: deadpool_postgres::PoolError) -> StoreError {
    let why = match &e {
        // "error connecting to server: Connection refused (os error 111)"
        deadpool_postgres::PoolError::Backend(pg) => describe(pg),
        _ => e.to_string(),
    };
    StoreError::Unavailable(format!("no database connection: {why}"))
}

/// Why a transaction attempt failed: a final store error, or a database
/// error that may only mean it lost a race.
pub(super) enum TxError {
    Store(StoreError),
    Pg(tokio_postgres::Error),
    /// A compare-and-set inside the transaction found the row changed.
    Raced,
}

pub(super) type TxResult<T> = Result<T, TxError>;

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        TxError::Pg(e)
    }
}

impl From<deadpool_postgres::PoolError> for TxError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        TxError::Store(no_connection(e))
    }
}

impl TxError {
    /// Running the transaction again may succeed (or answer differently).
    pub(super) fn retryable(&self) -> bool {
        match self {
            TxError::Raced => true,
            TxError::Pg(e) => e.code().is_some_and(|c| {
                *c == SqlState::UNIQUE_VIOLATION
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
            }),
            TxError::Store(_) => false,
        }
    }

    pub(super) fn reason(&self) -> String {
        match self {
            TxError::Store(e) => e.to_string(),
            TxError::Pg(e) => describe(e),
            TxError::Raced => "a compare-and-set found the row changed".into(),
        }
    }

    pub(super) fn into_store(self) -> StoreError {
        if self.retryable() {
            return StoreError::HeadMoved;
        }
        match self {
            TxError::Store(e) => e,
            TxError::Pg(e) => store_error(&e, describe(&e)),
            TxError::Raced => StoreError::HeadMoved,
        }
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        e.into_store()
    }
}

/// Runs `$body` in a READ COMMITTED transaction bound to `$tx`, commits, and
/// runs the whole thing again when it lost a race (see [`TxError::retryable`]).
/// `$body` is an expression that may use `.await` and `?` (into [`TxError`]).
macro_rules! write_tx {
    // Without `mut`: the same, for bodies that take no savepoints.
    ($store:expr, |$tx:ident| $body:expr) => {
        $crate::server::store::postgres::retry::write_tx!($store, |mut $tx| $body)
    };
    // `mut`: the body may take savepoints (`tx.savepoint(..)` borrows it mutably).
    ($store:expr, |mut $tx:ident| $body:expr) => {{
        let mut attempt: u32 = 0;
        loop {
            let outcome: $crate::server::store::postgres::retry::TxResult<_> = async {
                let mut client = $store.pool.get().await?;
                #[allow(unused_mut)]
                let mut $tx = client.transaction().await?;
                let value = $body;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match outcome {
                Ok(value) => break Ok(value),
                Err(e) if e.retryable() && attempt + 1 < $crate::server::store::postgres::retry::MAX_TX_ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(attempt, reason = %e.reason(), "transaction lost a race; running it again");
                    $crate::server::store::postgres::retry::backoff(attempt).await;
                }
                Err(e) => break Err(e.into_store()),
            }
        }
    }};
}
pub(super) use write_tx;

/// A short, jittered, growing pause before running a transaction again.
pub(super) async fn backoff(attempt: u32) {
    let cap_ms = 2u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(1 + rand::random::<u64>() % cap_ms)).await;
}
