//! `[timers]`: how due conversation timers are found and claimed.

use serde::{Deserialize, Serialize};

/// `[timers]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimerSettings {
    /// Pause between looks for due timers: a timer fires at most this much
    /// after its due time, plus its conversation's queue.
    pub poll_interval_ms: u64,
    /// Due timers claimed at once (of many conversations; each is applied
    /// in its conversation's actor).
    pub batch: i64,
    /// A claimed timer not applied within this is claimed again (its process died).
    pub lease_ms: i64,
}

impl Default for TimerSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 200,
            batch: 1000,
            lease_ms: 30_000,
        }
    }
}
