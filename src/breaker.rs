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
//!   re-opens the breaker *and resets every counter* (the seed-004 bug);
//!   `half_open_successes` successes close it.
//!
//! Time comes from a [`Clock`], so tests and property tests move it by hand.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::config::BreakerSettings;

/// Source of time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock moved by hand (tests).
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: Instant,
    offset_ns: Arc<AtomicU64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            offset_ns: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.offset_ns.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.offset_ns.load(Ordering::SeqCst))
    }
}

/// The breaker's state, as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Success,
    /// An error or a timeout.
    Failure,
}

/// Counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BreakerCounters {
    pub calls: u64,
    pub successes: u64,
    pub failures: u64,
    pub slow_calls: u64,
    pub rejected: u64,
    pub opened: u64,
    pub half_opened: u64,
    pub closed: u64,
}

/// A snapshot for `/metrics` and the operations panel.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerSnapshot {
    pub name: String,
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub window_calls: usize,
    pub counters: BreakerCounters,
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{0}` is open")]
pub struct Rejected(pub &'static str);

#[derive(Debug)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        probes: Vec<(u64, Instant)>,
        successes: u32,
    },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    consecutive_failures: u32,
    /// Last calls: (failed, slow).
    window: VecDeque<(bool, bool)>,
    /// Re-opens since the last close; grows the open period.
    reopen_count: u32,
    next_probe_id: u64,
    counters: BreakerCounters,
}

/// Called on every state change (from inside the breaker: keep it quick).
pub type Observer = Box<dyn Fn(&'static str, BreakerState) + Send + Sync>;

/// A circuit breaker. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct CircuitBreaker {
    name: &'static str,
    settings: Arc<BreakerSettings>,
    clock: Arc<dyn Clock>,
    inner: Arc<Mutex<Inner>>,
    observer: Arc<std::sync::OnceLock<Observer>>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish()
    }
}

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

impl CircuitBreaker {
    pub fn new(name: &'static str, settings: BreakerSettings) -> Self {
        Self::with_clock(name, settings, Arc::new(SystemClock))
    }

    pub fn with_clock(name: &'static str, settings: BreakerSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            name,
            settings: Arc::new(settings),
            clock,
            inner: Arc::new(Mutex::new(Inner {
                phase: Phase::Closed,
                consecutive_failures: 0,
                window: VecDeque::new(),
                reopen_count: 0,
                next_probe_id: 0,
                counters: BreakerCounters::default(),
            })),
            observer: Arc::new(std::sync::OnceLock::new()),
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
        let probe = match &mut inner.phase {
            Phase::Closed => None,
            Phase::Open { .. } => {
                inner.counters.rejected += 1;
                return Err(Rejected(self.name));
            }
            Phase::HalfOpen { probes, .. } => {
                if probes.len() as u32 >= self.settings.half_open_probes.max(1) {
                    inner.counters.rejected += 1;
                    return Err(Rejected(self.name));
                }
                let id = inner.next_probe_id;
                inner.next_probe_id += 1;
                let deadline = now + Duration::from_millis(self.settings.probe_deadline_ms);
                if let Phase::HalfOpen { probes, .. } = &mut inner.phase {
                    probes.push((id, deadline));
                }
                Some(id)
            }
        };
        inner.counters.calls += 1;
        Ok(Permit {
            breaker: self.clone(),
            started: now,
            probe,
            reported: false,
        })
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

    /// Time-driven transitions: open → half-open when the period ends;
    /// half-open probes past their deadline fail.
    fn advance(&self, inner: &mut Inner, now: Instant) {
        if let Phase::Open { until } = inner.phase {
            if now >= until {
                inner.phase = Phase::HalfOpen {
                    probes: Vec::new(),
                    successes: 0,
                };
                inner.counters.half_opened += 1;
                tracing::info!(breaker = self.name, "circuit breaker half-open");
                self.notify(BreakerState::HalfOpen);
            }
        }
        let expired = match &inner.phase {
            Phase::HalfOpen { probes, .. } => probes.iter().any(|(_, deadline)| now >= *deadline),
            _ => false,
        };
        if expired {
            inner.counters.failures += 1;
            self.open(inner, now, "probe deadline passed");
        }
    }

    fn on_result(&self, probe: Option<u64>, result: CallResult, elapsed: Duration) {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let slow = elapsed >= Duration::from_millis(self.settings.slow_call_ms);
        let failed = result == CallResult::Failure;
        match result {
            CallResult::Success => inner.counters.successes += 1,
            CallResult::Failure => inner.counters.failures += 1,
        }
        if slow {
            inner.counters.slow_calls += 1;
        }
        match &mut inner.phase {
            Phase::Closed => {
                // Permits from an earlier half-open phase report here too;
                // they count like any closed-state call.
                inner.consecutive_failures = if failed { inner.consecutive_failures + 1 } else { 0 };
                inner.window.push_back((failed, slow));
                while inner.window.len() > self.settings.window.max(1) as usize {
                    inner.window.pop_front();
                }
                if let Some(reason) = self.should_open(&inner) {
                    self.open(&mut inner, now, reason);
                }
            }
            Phase::Open { .. } => {} // a late report from before the open; ignore
            Phase::HalfOpen { probes, successes } => {
                let Some(id) = probe else { return };
                let Some(pos) = probes.iter().position(|(p, _)| *p == id) else {
                    return; // a probe of an earlier half-open phase
                };
                probes.remove(pos);
                if failed {
                    self.open(&mut inner, now, "half-open probe failed");
                } else {
                    *successes += 1;
                    if *successes >= self.settings.half_open_successes.max(1) {
                        self.close(&mut inner, "probes succeeded");
                    }
                }
            }
        }
    }

    fn should_open(&self, inner: &Inner) -> Option<&'static str> {
        let s = &self.settings;
        if inner.consecutive_failures >= s.failure_threshold.max(1) {
            return Some("consecutive failures");
        }
        let n = inner.window.len();
        if n < s.min_calls.max(1) as usize {
            return None;
        }
        let failures = inner.window.iter().filter(|(f, _)| *f).count();
        let slow = inner.window.iter().filter(|(_, s)| *s).count();
        if failures as f64 / n as f64 >= s.failure_rate {
            return Some("failure rate");
        }
        if slow as f64 / n as f64 >= s.slow_call_rate {
            return Some("slow-call rate");
        }
        None
    }

    /// → Open, with every counter reset; the period grows per re-open.
    fn open(&self, inner: &mut Inner, now: Instant, reason: &'static str) {
        let was_half_open = matches!(inner.phase, Phase::HalfOpen { .. });
        if was_half_open {
            inner.reopen_count = inner.reopen_count.saturating_add(1);
        }
        let base = self.settings.open_ms.max(1);
        let grown = base.saturating_mul(1u64 << inner.reopen_count.min(20));
        let max = self.settings.max_open_ms.max(base);
        let capped = grown.min(max);
        // Up to 10% jitter, so breakers of several processes do not probe in step.
        let jitter = rand::random_range(0..=capped / 10);
        let period = Duration::from_millis(capped.saturating_add(jitter).min(max));
        inner.phase = Phase::Open { until: now + period };
        inner.consecutive_failures = 0;
        inner.window.clear();
        inner.counters.opened += 1;
        tracing::warn!(
            breaker = self.name,
            reason,
            open_ms = period.as_millis() as u64,
            "circuit breaker opened"
        );
        self.notify(BreakerState::Open);
    }

    fn close(&self, inner: &mut Inner, reason: &'static str) {
        inner.phase = Phase::Closed;
        inner.consecutive_failures = 0;
        inner.window.clear();
        inner.reopen_count = 0;
        inner.counters.closed += 1;
        tracing::info!(breaker = self.name, reason, "circuit breaker closed");
        self.notify(BreakerState::Closed);
    }
}

fn phase_state(phase: &Phase) -> BreakerState {
    match phase {
        Phase::Closed => BreakerState::Closed,
        Phase::Open { .. } => BreakerState::Open,
        Phase::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}
