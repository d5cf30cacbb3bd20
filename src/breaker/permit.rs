//! One call through the breaker: admitted (a [`Permit`]) or refused ([`Rejected`]),
//! and how it ended ([`CallResult`]).

use std::time::Instant;

use super::CircuitBreaker;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Success,
    /// An error or a timeout.
    Failure,
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{0}` is open")]
pub struct Rejected(pub &'static str);

/// Admission to make one call. Report its end with [`Permit::record`];
/// a permit dropped without a report counts as a failure.
#[must_use = "report the call's result with Permit::record"]
pub struct Permit {
    breaker: CircuitBreaker,
    started: Instant,
    probe: Option<u64>,
    reported: bool,
}

impl Permit {
    /// A permit for a call starting at `started`; `probe` names a half-open probe.
    pub(super) fn new(breaker: CircuitBreaker, started: Instant, probe: Option<u64>) -> Self {
        Self {
            breaker,
            started,
            probe,
            reported: false,
        }
    }

    pub fn record(mut self, result: CallResult) {
        self.reported = true;
        let elapsed = self.breaker.clock.now().saturating_duration_since(self.started);
        self.breaker.on_result(self.probe, result, elapsed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            let elapsed = self.breaker.clock.now().saturating_duration_since(self.started);
            self.breaker.on_result(self.probe, CallResult::Failure, elapsed);
        }
    }
}
