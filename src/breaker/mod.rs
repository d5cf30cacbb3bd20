//! A circuit breaker, shared by the model provider and the outbound sender.
//!
//! - **Closed**: calls pass. It opens when consecutive failures reach
//!   `failure_threshold`, or when, over the last `window` calls (at least
//!   `min_calls` of them), the failure rate or the slow-call rate reaches its
//!   threshold. A success resets the consecutive count.
//! - **Open**: calls fail fast until the open period ends. Each re-open
//!   doubles the period (with jitter) up to `max_open`.
//! - **Half-open**: at most `half_open_probes` probes run at once, each with a
//!   deadline (a probe that never reports counts as failed). Any probe failure
//!   re-opens the breaker *and resets every counter* (counts left over would
//!   re-open it on the first failure after it closes);
//!   `half_open_successes` successes close it.
//!
//! Time comes from a [`Clock`], so tests and property tests move it by hand.
//!
//! Code map: `transitions` (the state machine), `window` (the sliding window),
//! `clock`, `permit` (one call's admission and report), `snapshot` (what is published).

mod clock;
mod permit;
mod snapshot;
mod transitions;
mod window;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub use clock::{Clock, ManualClock, SystemClock};
pub use permit::{CallResult, Permit, Rejected};
pub use snapshot::{BreakerCounters, BreakerSnapshot, BreakerState};

pub use crate::config::BreakerSettings;

use transitions::{phase_state, Inner};

/// Called on every state change (from inside the breaker: keep it quick).
pub type Observer = Box<dyn Fn(&'static str, BreakerState) + Send + Sync>;

/// A circuit breaker. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct CircuitBreaker {
    name: &'static str,
    /// An `Arc`: every clone (and each permit's) shares one copy; never written.
    settings: Arc<BreakerSettings>,
    /// An `Arc`: a trait object (the real clock or a test's), shared by every clone.
    clock: Arc<dyn Clock>,
    /// One lock over all mutable state: every transition reads and writes
    /// several fields at once, and each holds it only for a few assignments.
    inner: Arc<Mutex<Inner>>,
    /// Set at most once, after construction (the engine wires events in later);
    /// read lock-free on every state change.
    observer: Arc<OnceLock<Observer>>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    pub fn new(name: &'static str, settings: BreakerSettings) -> Self {
        Self::with_clock(name, settings, Arc::new(SystemClock))
    }

    pub fn with_clock(name: &'static str, settings: BreakerSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            name,
            settings: Arc::new(settings),
            clock,
            inner: Arc::new(Mutex::new(Inner::new())),
            observer: Arc::new(OnceLock::new()),
        }
    }

    /// Sets the function told of every state change (once; later calls are ignored).
    pub fn observe(&self, f: Observer) {
        let _ = self.observer.set(f);
    }

    fn notify(&self, state: BreakerState) {
        if let Some(f) = self.observer.get() {
            f(self.name, state);
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a few assignments); keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks to make a call.
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let probe = self.admit(&mut inner, now)?;
        inner.counters.calls += 1;
        Ok(Permit::new(self.clone(), now, probe))
    }

    /// The state now (an open breaker whose period ended reads half-open).
    pub fn state(&self) -> BreakerState {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        phase_state(&inner.phase)
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        BreakerSnapshot {
            name: self.name.to_string(),
            state: phase_state(&inner.phase),
            consecutive_failures: inner.consecutive_failures,
            window_calls: inner.window.len(),
            counters: inner.counters,
        }
    }

    /// Opens the breaker now (operator action), for one open period.
    pub fn force_open(&self) {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.open(&mut inner, now, "forced");
    }

    /// Closes the breaker now (operator action), clearing its counters.
    pub fn force_close(&self) {
        let mut inner = self.lock();
        self.close(&mut inner, "forced");
    }
}
