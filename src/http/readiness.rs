//! Whether this process should get traffic: the one answer `/readyz` and the
//! console's operations panel share.

use super::AppState;

/// Why a process is or is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Stop was asked: the server no longer takes new work.
    Stopping,
    /// The database did not answer (the error it gave).
    DatabaseUnavailable(String),
}

impl Readiness {
    /// Asks the database only when not stopping.
    pub async fn of(state: &AppState) -> Self {
        if state.closing.is_cancelled() || state.engine.is_stopping() {
            return Self::Stopping;
        }
        match state.engine.ping_database().await {
            Ok(()) => Self::Ready,
            Err(e) => Self::DatabaseUnavailable(e.to_string()),
        }
    }

    pub fn is_ready(&self) -> bool {
        *self == Self::Ready
    }

    /// A short reason for an operator, `None` when ready.
    pub fn reason(&self) -> Option<String> {
        match self {
            Self::Ready => None,
            Self::Stopping => Some("stopping".into()),
            Self::DatabaseUnavailable(e) => Some(format!("database unavailable: {e}")),
        }
    }
}
