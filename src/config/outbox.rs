//! `[outbox]`: how replies are delivered.

use serde::{Deserialize, Serialize};

use super::breaker::BreakerSettings;

/// `[outbox]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSettings {
    /// Longest pause between looks at the outbox when nothing wakes the dispatcher.
    pub poll_interval_ms: u64,
    /// Rows claimed at once; also the accepted sends that share a `sent`
    /// mark without waiting out its few milliseconds of gathering.
    pub batch: i64,
    /// Sends in flight at once (of different conversations). Sends per
    /// second are at most this over the API's answer time: keep it above
    /// `rate_per_s` × that time.
    pub concurrency: usize,
    /// Attempts before a row goes to dead letters.
    pub max_attempts: i32,
    /// Retry backoff: ceiling doubles from `base_delay_ms` up to `max_delay_ms`, full jitter.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// A claimed row not recorded within this is claimed again (its process died).
    pub lease_ms: i64,
    /// Sends per second per business number (WhatsApp's default tier is 80).
    pub rate_per_s: u32,
    pub breaker: BreakerSettings,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 500,
            batch: 32,
            concurrency: 32,
            max_attempts: 8,
            base_delay_ms: 1_000,
            // WhatsApp retries its own webhooks for days; five minutes between
            // our send attempts keeps a long outage cheap.
            max_delay_ms: 300_000,
            lease_ms: 30_000,
            rate_per_s: 80,
            breaker: BreakerSettings::default(),
        }
    }
}
