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
    move |e| backend(format!("{what}: {}", describe(&e)))
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
        TxError::Store(backend(format!("no database connection: {e}")))
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
            TxError::Pg(e) => backend(describe(&e)),
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
