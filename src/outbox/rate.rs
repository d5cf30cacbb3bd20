//! The send rate of a business number.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// Spaces sends at `1/rate` seconds.
pub(super) struct RateLimit {
    /// A tokio mutex: held only to book the next slot, but shared by every
    /// send of the process.
    next: Mutex<Instant>,
    every: Duration,
}

impl RateLimit {
    pub(super) fn new(rate: u32) -> Self {
        Self {
            next: Mutex::new(Instant::now()),
            every: Duration::from_secs_f64(1.0 / f64::from(rate.max(1))),
        }
    }

    pub(super) async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + self.every;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Each business number's rate (numbers without a rate of their own, and
/// conversations of an unconfigured number, share the default).
pub(super) struct Rates {
    default: RateLimit,
    own: std::collections::HashMap<String, RateLimit>,
}

impl Rates {
    pub(super) fn new(default: u32, numbers: &crate::numbers::Numbers) -> Self {
        Self {
            default: RateLimit::new(default),
            own: numbers
                .all()
                .iter()
                .map(|n| (n.id.clone(), RateLimit::new(n.rate_per_s)))
                .collect(),
        }
    }

    pub(super) fn of(&self, number: Option<&str>) -> &RateLimit {
        number.and_then(|n| self.own.get(n)).unwrap_or(&self.default)
    }
}
