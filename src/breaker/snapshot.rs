//! What a breaker publishes: its state and counters, for metrics and the operations panel.

use serde::Serialize;

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
