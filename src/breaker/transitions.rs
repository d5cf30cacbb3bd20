//! The state machine: closed → open → half-open → closed (or open again),
//! driven by call results and by time.

use std::time::{Duration, Instant};

use super::window::Window;
use super::{BreakerCounters, BreakerState, CallResult, CircuitBreaker, Rejected};

#[derive(Debug)]
pub(super) enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        probes: Vec<(u64, Instant)>,
        successes: u32,
    },
}

/// Everything that changes, behind the breaker's one lock.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) phase: Phase,
    pub(super) consecutive_failures: u32,
    pub(super) window: Window,
    /// Re-opens since the last close; grows the open period.
    reopen_count: u32,
    next_probe_id: u64,
    pub(super) counters: BreakerCounters,
}

impl Inner {
    pub(super) fn new() -> Self {
        Self {
            phase: Phase::Closed,
            consecutive_failures: 0,
            window: Window::default(),
            reopen_count: 0,
            next_probe_id: 0,
            counters: BreakerCounters::default(),
        }
    }
}

impl CircuitBreaker {
    /// Admits a call in the current phase; `Some(id)` when it is a half-open probe.
    pub(super) fn admit(&self, inner: &mut Inner, now: Instant) -> Result<Option<u64>, Rejected> {
        match &mut inner.phase {
            Phase::Closed => Ok(None),
            Phase::Open { .. } => {
                inner.counters.rejected += 1;
                Err(Rejected(self.name))
            }
            Phase::HalfOpen { probes, .. } => {
                if probes.len() as u32 >= self.settings.half_open_probes.max(1) {
                    inner.counters.rejected += 1;
                    return Err(Rejected(self.name));
                }
                let id = inner.next_probe_id;
                inner.next_probe_id += 1;
                probes.push((id, now + Duration::from_millis(self.settings.probe_deadline_ms)));
                Ok(Some(id))
            }
        }
    }

    /// Time-driven transitions: open → half-open when the period ends;
    /// half-open probes past their deadline fail.
    pub(super) fn advance(&self, inner: &mut Inner, now: Instant) {
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

    /// A permit's report: counted, then judged by the phase the breaker is in now.
    pub(super) fn on_result(&self, probe: Option<u64>, result: CallResult, elapsed: Duration) {
        let now = self.clock.now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        self.advance(inner, now);
        let slow = elapsed >= Duration::from_millis(self.settings.slow_call_ms);
        let failed = result == CallResult::Failure;
        match result {
            CallResult::Success => inner.counters.successes += 1,
            CallResult::Failure => inner.counters.failures += 1,
        }
        if slow {
            inner.counters.slow_calls += 1;
        }
        match inner.phase {
            Phase::Closed => self.closed_call(inner, failed, slow, now),
            Phase::Open { .. } => {} // a late report from before the open; ignore
            Phase::HalfOpen { .. } => self.probe_ended(inner, probe, failed, now),
        }
    }

    /// A closed-state call feeds the counts that may open the breaker.
    fn closed_call(&self, inner: &mut Inner, failed: bool, slow: bool, now: Instant) {
        // Permits from an earlier half-open phase report here too;
        // they count like any closed-state call.
        inner.consecutive_failures = if failed { inner.consecutive_failures + 1 } else { 0 };
        inner.window.push(failed, slow, self.settings.window);
        if let Some(reason) = self.should_open(inner) {
            self.open(inner, now, reason);
        }
    }

    /// A half-open probe's end: one failure re-opens, enough successes close.
    fn probe_ended(&self, inner: &mut Inner, probe: Option<u64>, failed: bool, now: Instant) {
        let Phase::HalfOpen { probes, successes } = &mut inner.phase else {
            return;
        };
        let Some(id) = probe else { return };
        let Some(pos) = probes.iter().position(|(p, _)| *p == id) else {
            return; // a probe of an earlier half-open phase
        };
        probes.remove(pos);
        if failed {
            self.open(inner, now, "half-open probe failed");
        } else {
            *successes += 1;
            if *successes >= self.settings.half_open_successes.max(1) {
                self.close(inner, "probes succeeded");
            }
        }
    }

    /// Why a closed breaker should open: a run of failures, or a rate over the window.
    fn should_open(&self, inner: &Inner) -> Option<&'static str> {
        if inner.consecutive_failures >= self.settings.failure_threshold.max(1) {
            return Some("consecutive failures");
        }
        inner.window.tripped(&self.settings)
    }

    /// → Open, with every counter reset; the period grows per re-open.
    pub(super) fn open(&self, inner: &mut Inner, now: Instant, reason: &'static str) {
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

    /// → Closed, with the counts and the re-open growth reset.
    pub(super) fn close(&self, inner: &mut Inner, reason: &'static str) {
        inner.phase = Phase::Closed;
        inner.consecutive_failures = 0;
        inner.window.clear();
        inner.reopen_count = 0;
        inner.counters.closed += 1;
        tracing::info!(breaker = self.name, reason, "circuit breaker closed");
        self.notify(BreakerState::Closed);
    }
}

pub(super) fn phase_state(phase: &Phase) -> BreakerState {
    match phase {
        Phase::Closed => BreakerState::Closed,
        Phase::Open { .. } => BreakerState::Open,
        Phase::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}
