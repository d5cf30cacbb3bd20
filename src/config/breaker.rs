//! Circuit breaker tuning, shared by the model provider and the sender.

use serde::{Deserialize, Serialize};

/// Breaker tuning. Defaults follow Akka/resilience4j practice, sized for a
/// chat model provider (see `REFERENCES.md` in shared/).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// Sliding window (in calls) for the rate thresholds.
    pub window: u32,
    /// Calls the window needs before rates are judged.
    pub min_calls: u32,
    /// Failure rate (0..=1) over the window that opens the breaker.
    pub failure_rate: f64,
    /// Slow-call rate (0..=1) over the window that opens the breaker.
    pub slow_call_rate: f64,
    /// A call slower than this counts as slow (even when it succeeds).
    pub slow_call_ms: u64,
    /// First open period.
    pub open_ms: u64,
    /// Open periods double per re-open, up to this.
    pub max_open_ms: u64,
    /// Probes admitted at once while half-open.
    pub half_open_probes: u32,
    /// Probe successes that close the breaker.
    pub half_open_successes: u32,
    /// A probe that has not reported after this counts as failed.
    pub probe_deadline_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            slow_call_rate: 0.8,
            slow_call_ms: 2_000,
            open_ms: 5_000,
            max_open_ms: 60_000,
            half_open_probes: 1,
            half_open_successes: 1,
            probe_deadline_ms: 5_000,
        }
    }
}
