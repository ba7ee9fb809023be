//! The one error type of walletd-history: what failed at the boundary (PostgreSQL, the journal,
//! the schema), with a message a person can act on. A reconciliation that finds a difference
//! is not an error: it is a report (`reconcile::Report`) with a non-zero exit.

use walletd_replay::{Position, ReplayError};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(String),
    #[error("the journal: {0}")]
    Replay(#[from] ReplayError),
    #[error(
        "the database's history schema is at version {found}, newer than this walletd knows ({known}): run a walletd \
         at least as new as the one that migrated it"
    )]
    SchemaTooNew { found: i32, known: i32 },
    #[error("the database's history schema is not one this walletd wrote: {reason}")]
    SchemaUnknown { reason: String },
    #[error(
        "the database's projection is at {found}, but this writer expected {expected}: another projection is writing \
         to the same database, or it was projected from another journal"
    )]
    PositionConflict { expected: Position, found: Position },
    #[error("the database disagrees with the journal while projecting: {reason}")]
    Inconsistent { reason: String },
    #[error("{0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<deadpool_postgres::PoolError> for HistoryError {
    fn from(error: deadpool_postgres::PoolError) -> HistoryError {
        match error {
            deadpool_postgres::PoolError::Backend(error) => HistoryError::Postgres(error),
            other => HistoryError::Pool(other.to_string()),
        }
    }
}

impl HistoryError {
    /// Whether waiting and reconnecting can cure it: the connection or the server went away
    /// (PostgreSQL stopped, restarted, or a network error), as opposed to a refused statement.
    pub fn is_transient(&self) -> bool {
        match self {
            HistoryError::Postgres(error) => postgres_is_transient(error),
            HistoryError::Pool(_) | HistoryError::Io(_) => true,
            _ => false,
        }
    }
}

fn postgres_is_transient(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        // Class 08 (connection exception), 57P01..57P03 (shutting down, cannot connect now),
        // 53 (insufficient resources).
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || code.starts_with("57P") || code.starts_with("53")
        }
        // No SQLSTATE: an I/O or protocol error on the socket (refused, reset, closed).
        None => true,
    }
}
