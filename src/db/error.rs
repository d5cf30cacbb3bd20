//! What can go wrong in the persistence layer, and whether trying again can
//! help ([`DbError::is_retryable`]). The engine wraps it in
//! [`crate::Error::Database`] (a missing row becomes
//! [`crate::Error::NotFound`]); the server answers a retryable one with 503.

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Errors of the pool, the statements, migrations and the embedded cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
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
    /// copy of the cause (`retryable` as the cause was).
    #[error("database write failed: {message}")]
    WriteFailed { retryable: bool, message: String },
    /// The row asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Migrations could not be applied or reverted.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The embedded PostgreSQL cluster could not be prepared, started or stopped.
    #[error("embedded PostgreSQL: {0}")]
    Embedded(String),
    /// A guarantee of this layer did not hold (a locked row that would not
    /// update): nothing was committed. A fault of ours, never the caller's.
    #[error("database invariant broken: {0}")]
    Invariant(String),
}

/// Results of the persistence layer.
pub type Result<T, E = DbError> = std::result::Result<T, E>;

impl DbError {
    /// A copy of this error for each of several callers that shared one
    /// operation (the cause itself cannot be cloned): its text and whether
    /// it is retryable.
    pub fn shared(&self) -> DbError {
        DbError::WriteFailed {
            retryable: self.is_retryable(),
            message: self.to_string(),
        }
    }

    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::PoolTimeout(_) | DbError::Connection(_) => true,
            DbError::Database { retryable, .. } | DbError::WriteFailed { retryable, .. } => *retryable,
            DbError::NotFound(_) | DbError::Migration(_) | DbError::Embedded(_) | DbError::Invariant(_) => false,
        }
    }
}

impl crate::retry::Retryable for DbError {
    fn is_retryable(&self) -> bool {
        DbError::is_retryable(self)
    }
}

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
    // A full disk (an insert could not extend its table): space may return.
    ("No space left on device", "disk full"),
];

impl From<DieselError> for DbError {
    fn from(e: DieselError) -> Self {
        let (kind, retryable) = match &e {
            DieselError::NotFound => return DbError::NotFound("row".into()),
            DieselError::DatabaseError(kind, info) => match kind {
                DatabaseErrorKind::SerializationFailure => ("serialization failure", true),
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => {
                    return DbError::Connection(info.message().to_string())
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
            DieselError::BrokenTransactionManager => return DbError::Connection("broken transaction manager".into()),
            DieselError::DeserializationError(_) | DieselError::SerializationError(_) => ("data mapping", false),
            _ => ("database", false),
        };
        DbError::Database {
            kind,
            retryable,
            source: e,
        }
    }
}

impl From<diesel::ConnectionError> for DbError {
    fn from(e: diesel::ConnectionError) -> Self {
        DbError::Connection(e.to_string())
    }
}

impl From<bb8::RunError<diesel_async::pooled_connection::PoolError>> for DbError {
    fn from(e: bb8::RunError<diesel_async::pooled_connection::PoolError>) -> Self {
        match e {
            // bb8 does not say how long it waited; the pool wrapper fills it in.
            bb8::RunError::TimedOut => DbError::PoolTimeout(Duration::ZERO),
            bb8::RunError::User(e) => match e {
                diesel_async::pooled_connection::PoolError::ConnectionError(c) => c.into(),
                diesel_async::pooled_connection::PoolError::QueryError(q) => q.into(),
            },
        }
    }
}
