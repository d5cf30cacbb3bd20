//! The error type at the library's boundary. Every variant knows whether
//! trying again can help ([`Error::is_retryable`]).

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Errors of the persistence layer and the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No pooled connection became free within the acquire timeout.
    #[error("database pool timed out after {0:?} waiting for a connection")]
    PoolTimeout(Duration),
    /// Could not open a connection, or it broke mid-operation.
    #[error("database connection unavailable: {0}")]
    Connection(String),
    /// The server refused the operation; `retryable` says whether the
    /// cause is transient (serialization failure, deadlock, shutdown, timeout).
    #[error("database error ({kind}): {source}")]
    Database {
        kind: &'static str,
        retryable: bool,
        #[source]
        source: DieselError,
    },
    /// A group-committed write failed; every write of its batch gets this
    /// copy of the cause (`retryable` as the cause was). A server fault,
    /// never the caller's.
    #[error("database write failed: {message}")]
    WriteFailed { retryable: bool, message: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Migrations could not be applied or reverted.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The embedded PostgreSQL cluster could not be prepared, started or stopped.
    #[error("embedded PostgreSQL: {0}")]
    Embedded(String),
    /// The engine has too much queued work; try again later (HTTP 503).
    #[error("engine overloaded: {0}")]
    Overloaded(String),
    /// The engine is stopping or a part of it is gone.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A message could not be processed (it is retried, then quarantined).
    #[error("processing failed: {0}")]
    Processing(String),
    /// The HTTP server could not be set up (bind address in use, …).
    #[error("server: {0}")]
    Server(String),
    /// The flow file is invalid.
    #[error(transparent)]
    Flow(#[from] crate::flow::FlowError),
}

impl Error {
    /// A copy of this error for each of several callers that shared one
    /// operation (the cause itself cannot be cloned): its text and whether
    /// it is retryable.
    pub fn shared(&self) -> Error {
        Error::WriteFailed {
            retryable: self.is_retryable(),
            message: self.to_string(),
        }
    }

    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::PoolTimeout(_) | Error::Connection(_) | Error::Overloaded(_) | Error::Unavailable(_) => true,
            Error::Database { retryable, .. } | Error::WriteFailed { retryable, .. } => *retryable,
            Error::NotFound(_)
            | Error::InvalidInput(_)
            | Error::Migration(_)
            | Error::Embedded(_)
            | Error::Processing(_)
            | Error::Server(_)
            | Error::Flow(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Messages of errors that diesel-async reports as `Unknown` (it keeps no
/// SQLSTATE for them) but that are transient. The embedded cluster runs with
/// `lc_messages = C`, so these are the English texts.
const TRANSIENT_MESSAGES: &[(&str, &str)] = &[
    ("deadlock detected", "deadlock"),
    ("terminating connection", "connection terminated"),
    ("the database system is", "server unavailable"),
    ("canceling statement due to statement timeout", "statement timeout"),
    ("canceling statement due to lock timeout", "lock timeout"),
    ("server closed the connection", "connection terminated"),
    ("connection closed", "connection terminated"),
    ("could not serialize access", "serialization failure"),
];

impl From<DieselError> for Error {
    fn from(e: DieselError) -> Self {
        let (kind, retryable) = match &e {
            DieselError::NotFound => return Error::NotFound("row".into()),
            DieselError::DatabaseError(kind, info) => match kind {
                DatabaseErrorKind::SerializationFailure => ("serialization failure", true),
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => {
                    return Error::Connection(info.message().to_string())
                }
                // A read-only server (failover, maintenance) is transient.
                DatabaseErrorKind::ReadOnlyTransaction => ("read-only transaction", true),
                DatabaseErrorKind::UniqueViolation => ("unique violation", false),
                DatabaseErrorKind::ForeignKeyViolation => ("foreign key violation", false),
                DatabaseErrorKind::NotNullViolation => ("not-null violation", false),
                DatabaseErrorKind::CheckViolation => ("check violation", false),
                _ => TRANSIENT_MESSAGES
                    .iter()
                    .find(|(needle, _)| info.message().contains(needle))
                    .map(|(_, kind)| (*kind, true))
                    .unwrap_or(("database", false)),
            },
            DieselError::BrokenTransactionManager => return Error::Connection("broken transaction manager".into()),
            DieselError::DeserializationError(_) | DieselError::SerializationError(_) => ("data mapping", false),
            _ => ("database", false),
        };
        Error::Database {
            kind,
            retryable,
            source: e,
        }
    }
}

impl From<diesel::ConnectionError> for Error {
    fn from(e: diesel::ConnectionError) -> Self {
        Error::Connection(e.to_string())
    }
}

impl From<bb8::RunError<diesel_async::pooled_connection::PoolError>> for Error {
    fn from(e: bb8::RunError<diesel_async::pooled_connection::PoolError>) -> Self {
        match e {
            // bb8 does not say how long it waited; the pool wrapper fills it in.
            bb8::RunError::TimedOut => Error::PoolTimeout(Duration::ZERO),
            bb8::RunError::User(e) => match e {
                diesel_async::pooled_connection::PoolError::ConnectionError(c) => c.into(),
                diesel_async::pooled_connection::PoolError::QueryError(q) => q.into(),
            },
        }
    }
}
