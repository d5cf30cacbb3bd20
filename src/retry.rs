//! Retrying transient failures: exponential backoff with full jitter.
//!
//! The n-th retry sleeps a uniformly random time in `[0, min(max, base·2ⁿ)]`
//! ("full jitter"), so clients that failed together do not retry together.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::config::RetrySettings;

/// How many times and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        (&RetrySettings::default()).into()
    }
}

impl From<&RetrySettings> for RetryPolicy {
    fn from(s: &RetrySettings) -> Self {
        Self {
            max_attempts: s.max_attempts.max(1),
            base_delay: Duration::from_millis(s.base_delay_ms),
            max_delay: Duration::from_millis(s.max_delay_ms),
        }
    }
}

impl RetryPolicy {
    /// Never retries.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };

    /// The upper bound of the backoff before retry number `retry` (0-based):
    /// `min(max_delay, base_delay · 2^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// A full-jitter delay for retry number `retry`.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(retry);
        if ceiling.is_zero() {
            return ceiling;
        }
        Duration::from_nanos(rng.random_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64))
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or has
    /// used `max_attempts`. The last error is returned as it was.
    pub async fn run<T, E, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, E>
    where
        E: Retryable + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            let failed = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match self.after(what, attempt, failed) {
                Ok(delay) => tokio::time::sleep(delay).await,
                Err(e) => return Err(e),
            }
            attempt += 1;
        }
    }

    /// The pause before retrying attempt number `attempt` (1-based) that
    /// failed with `e`, or `e` back when it is not worth retrying. Logs both.
    pub fn after<E: Retryable + std::fmt::Display>(
        &self,
        what: &'static str,
        attempt: u32,
        e: E,
    ) -> Result<Duration, E> {
        if e.is_retryable() && attempt < self.max_attempts {
            let delay = self.delay(attempt - 1, &mut rand::rng());
            tracing::warn!(
                operation = what,
                attempt,
                max_attempts = self.max_attempts,
                delay_ms = delay.as_millis() as u64,
                error = %e,
                "retrying after a transient error"
            );
            return Ok(delay);
        }
        if e.is_retryable() {
            tracing::error!(operation = what, attempts = attempt, error = %e, "giving up after retries");
        }
        Err(e)
    }
}

/// An error that knows whether trying again can help.
pub trait Retryable {
    fn is_retryable(&self) -> bool;
}
