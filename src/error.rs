//! The error type at the library's boundary: what the engine answers its
//! callers (the HTTP server, an embedding application). Every variant knows
//! whether trying again can help ([`Error::is_retryable`]); the layers below
//! have their own ([`crate::db::DbError`], [`crate::flow::FlowError`]).

use crate::db::DbError;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed (a server fault: 503 when retryable, else 500).
    #[error(transparent)]
    Database(DbError),
    /// What was asked for does not exist (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller's input is wrong (400); retrying it cannot help.
    #[error("invalid input: {0}")]
    InvalidInput(String),
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
    /// A free-form message outside the 24-hour customer-service window (409).
    #[error("{}", .0.closed_reason())]
    OutsideWindow(crate::whatsapp::window::Window),
    /// A valid request the conversation's or the provider's state refuses
    /// now (409): a template WhatsApp paused or disabled.
    #[error("{0}")]
    Refused(String),
}

impl Error {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(e) => e.is_retryable(),
            Error::Overloaded(_) | Error::Unavailable(_) => true,
            Error::NotFound(_)
            | Error::InvalidInput(_)
            | Error::Processing(_)
            | Error::Server(_)
            | Error::Flow(_)
            | Error::OutsideWindow(_)
            | Error::Refused(_) => false,
        }
    }
}

/// A missing row is the caller's "not found"; anything else stays a
/// database fault.
impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound(what) => Error::NotFound(what),
            e => Error::Database(e),
        }
    }
}

impl crate::retry::Retryable for Error {
    fn is_retryable(&self) -> bool {
        Error::is_retryable(self)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Statements run outside the persistence layer (the load harness's
/// checker) fail as the layer's would.
impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        DbError::from(e).into()
    }
}

impl From<diesel::ConnectionError> for Error {
    fn from(e: diesel::ConnectionError) -> Self {
        DbError::from(e).into()
    }
}
