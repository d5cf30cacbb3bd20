//! The AI actor: every model call gets a timeout, a fallback, a place in the
//! bulkhead and a pass through the circuit breaker. Calls run concurrently
//! (the handler returns a future; the actor never waits on one call).
//!
//! Model calls never run inside a transaction or while a pooled connection
//! is held: the session actor asks here first and writes afterwards.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::ai::{rules, AiSettings, IntentCandidate, IntentRequest, Model, ModelError, SlotRequest};
use crate::breaker::{CallResult, CircuitBreaker};
use crate::flow::Understanding;

/// Understand one message: detect an intent among `intents`; unless the
/// intent found is one of the first `global_count` (global intents are
/// commands), extract `slot`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Understood")]
pub struct Understand {
    /// The asking step's span (see [`crate::telemetry::trace`]).
    pub trace: Option<String>,
    pub text: String,
    pub intents: Vec<IntentCandidate>,
    pub global_count: usize,
    pub slot: Option<SlotRequest>,
}

/// The answer, and whether a fallback produced any part of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Understood {
    pub understanding: Understanding,
    pub fallback_used: bool,
}

const BUCKETS: usize = 11;

/// Upper bounds (seconds) of the model call duration histogram's buckets.
/// Calls range from a few milliseconds (rules, a local model) to the
/// timeouts of seconds (3 s and 4 s by default): 10 s keeps a timed-out call
/// in a finite bucket unless the timeouts are raised past it.
pub const CALL_DURATION_BUCKETS: [f64; BUCKETS] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Model call figures.
#[derive(Debug, Default)]
pub struct AiStats {
    /// Calls admitted by the breaker; atomic: counted by the calls, read from any thread.
    pub calls: AtomicU64,
    /// Calls over their timeout; atomic: counted by the calls, read from any thread.
    pub timeouts: AtomicU64,
    /// Calls that failed or panicked; atomic: counted by the calls, read from any thread.
    pub errors: AtomicU64,
    /// Calls refused by the open breaker; atomic: counted by the calls, read from any thread.
    pub rejected: AtomicU64,
    /// Answers the fallback gave; atomic: counted by the calls, read from any thread.
    pub fallbacks: AtomicU64,
    /// A mutex: the calls record into it while the engine handle snapshots
    /// it from another thread, and a snapshot's buckets, count and sum must agree.
    latency: Mutex<Latency>,
}

/// Durations of finished calls: exact percentiles and histogram buckets,
/// under one lock so a snapshot's buckets, count and sum agree.
#[derive(Debug, Default)]
struct Latency {
    /// Microseconds; created on the first call.
    hdr: Option<Histogram<u64>>,
    /// Calls per bucket of [`CALL_DURATION_BUCKETS`] (not cumulative).
    buckets: [u64; BUCKETS],
    count: u64,
    sum_ns: u64,
}

/// A snapshot of [`AiStats`].
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct AiStatsSnapshot {
    pub calls: u64,
    pub timeouts: u64,
    pub errors: u64,
    pub rejected: u64,
    pub fallbacks: u64,
    /// Exact percentiles of the call durations, microseconds, for tests and
    /// tools; `/metrics` exports [`Self::call_duration`] (a histogram can be
    /// summed over processes, percentiles cannot).
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    pub call_duration: CallDurations,
}

/// Durations of the calls finished, in the shape of a Prometheus histogram.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CallDurations {
    /// Calls that took at most `CALL_DURATION_BUCKETS[i]` seconds.
    pub cumulative: [u64; BUCKETS],
    /// Every call (the `+Inf` bucket).
    pub count: u64,
    /// Their durations added up, nanoseconds (an integer keeps the snapshot `Eq`).
    pub sum_ns: u64,
}

impl AiStats {
    fn record_latency(&self, d: Duration) {
        let mut l = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        if l.hdr.is_none() {
            l.hdr = Histogram::new_with_bounds(1, 600_000_000, 3).ok();
        }
        if let Some(h) = l.hdr.as_mut() {
            let _ = h.record((d.as_micros() as u64).max(1));
        }
        let seconds = d.as_secs_f64();
        if let Some(i) = CALL_DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            l.buckets[i] += 1;
        }
        l.count += 1;
        l.sum_ns = l.sum_ns.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn snapshot(&self) -> AiStatsSnapshot {
        let l = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let q = |f: f64| l.hdr.as_ref().map(|h| h.value_at_quantile(f)).unwrap_or(0);
        let mut call_duration = CallDurations {
            count: l.count,
            sum_ns: l.sum_ns,
            ..CallDurations::default()
        };
        let mut below = 0;
        for (c, n) in call_duration.cumulative.iter_mut().zip(l.buckets) {
            below += n;
            *c = below;
        }
        AiStatsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            latency_p50_us: q(0.5),
            latency_p99_us: q(0.99),
            latency_max_us: l.hdr.as_ref().map(|h| h.max()).unwrap_or(0),
            call_duration,
        }
    }
}

/// Wraps one model provider.
pub struct AiActor {
    /// An `Arc<dyn>`: cloned into each call's future, which runs outside the actor.
    model: Arc<dyn Model>,
    /// The AI breaker; a clone, sharing its state with the supervisor's.
    breaker: CircuitBreaker,
    /// `max_concurrent` permits; an `Arc`, as each call takes an owned one.
    bulkhead: Arc<Semaphore>,
    intent_timeout: Duration,
    extract_timeout: Duration,
    fallback_to_rules: bool,
    /// Shared with the engine handle, which reads it for `/metrics`.
    stats: Arc<AiStats>,
}

impl AiActor {
    pub fn new(model: Arc<dyn Model>, settings: &AiSettings, breaker: CircuitBreaker, stats: Arc<AiStats>) -> Self {
        Self {
            model,
            breaker,
            bulkhead: Arc::new(Semaphore::new(settings.max_concurrent.max(1) as usize)),
            intent_timeout: Duration::from_millis(settings.intent_timeout_ms),
            extract_timeout: Duration::from_millis(settings.extract_timeout_ms),
            fallback_to_rules: settings.fallback_to_rules,
            stats,
        }
    }
}

impl Actor for AiActor {
    type Context = Context<Self>;
}

/// Everything one call needs, detached from the actor so calls run concurrently.
#[derive(Clone)]
struct Caller {
    /// The actor's breaker (clones share state).
    breaker: CircuitBreaker,
    /// The actor's bulkhead, shared by every call in flight.
    bulkhead: Arc<Semaphore>,
    /// The actor's figures, shared with the engine handle.
    stats: Arc<AiStats>,
}

impl Caller {
    /// Runs `call` within `timeout` (bulkhead wait included) through the
    /// breaker. `None` means "use the fallback".
    async fn call<T>(&self, timeout: Duration, call: impl Future<Output = Result<T, ModelError>> + Send) -> Option<T> {
        let permit = match self.breaker.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let bulkhead = self.bulkhead.clone();
        // A panicking provider is a failed call, not a dead arbiter.
        let guarded = async move {
            let _slot = bulkhead.acquire_owned().await;
            std::panic::AssertUnwindSafe(call).catch_unwind().await
        };
        let result = tokio::time::timeout(timeout, guarded).await;
        self.stats.record_latency(started.elapsed());
        match result {
            Ok(Ok(Ok(v))) => {
                permit.record(CallResult::Success);
                Some(v)
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "model call failed; using the fallback");
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                permit.record(CallResult::Failure);
                None
            }
            Ok(Err(_panic)) => {
                tracing::error!("model provider panicked; using the fallback");
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                permit.record(CallResult::Failure);
                None
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = timeout.as_millis() as u64,
                    "model call timed out; using the fallback"
                );
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                permit.record(CallResult::Failure);
                None
            }
        }
    }
}

impl Handler<Understand> for AiActor {
    type Result = ResponseFuture<Understood>;

    fn handle(&mut self, msg: Understand, _: &mut Context<Self>) -> Self::Result {
        let caller = Caller {
            breaker: self.breaker.clone(),
            bulkhead: self.bulkhead.clone(),
            stats: self.stats.clone(),
        };
        let model = self.model.clone();
        let (intent_timeout, extract_timeout) = (self.intent_timeout, self.extract_timeout);
        let fallback_to_rules = self.fallback_to_rules;
        let span = tracing::info_span!(target: crate::telemetry::TARGET, "model", provider = model.name());
        crate::telemetry::continue_from(&span, msg.trace.as_deref());
        let understood = async move {
            let mut out = Understood::default();
            let req = Arc::new(IntentRequest {
                text: msg.text.clone(),
                candidates: msg.intents,
            });
            if !req.candidates.is_empty() {
                let answer = caller.call(intent_timeout, model.detect_intent(req.clone())).await;
                out.understanding.intent = match answer {
                    // Only a candidate counts, whatever the provider says.
                    Some(found) => found.filter(|i| req.candidates.iter().any(|c| &c.name == i)),
                    None => {
                        out.fallback_used = true;
                        fallback_to_rules.then(|| rules::detect(&req)).flatten()
                    }
                };
            }
            let global = out.understanding.intent.as_ref().is_some_and(|i| {
                req.candidates[..msg.global_count.min(req.candidates.len())]
                    .iter()
                    .any(|c| &c.name == i)
            });
            if let (Some(slot), false) = (msg.slot, global) {
                let slot = Arc::new(slot);
                let answer = caller.call(extract_timeout, model.extract_slot(slot.clone())).await;
                out.understanding.slot_value = match answer {
                    Some(v) => v,
                    None => {
                        out.fallback_used = true;
                        fallback_to_rules.then(|| rules::extract(&slot)).flatten()
                    }
                };
            }
            if out.fallback_used {
                caller.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
            }
            out
        };
        Box::pin(understood.instrument(span))
    }
}
