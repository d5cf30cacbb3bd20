//! Everything the engine counts, at one moment.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::Engine;
use crate::actors::ai::AiStatsSnapshot;
use crate::db::replica::ReadStats;
use crate::db::PoolStats;

/// Everything measurable, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub live_sessions: usize,
    pub activations: u64,
    pub passivations: u64,
    pub evictions: u64,
    pub mailbox_depth: usize,
    pub in_flight: usize,
    pub accepted: u64,
    pub redeliveries: u64,
    pub processed: u64,
    pub already_applied: u64,
    /// Times a step went back for an earlier unapplied message.
    pub waited_behind: u64,
    pub conflicts: u64,
    pub retries: u64,
    /// Delivery items kept as dead letters because they cannot be applied.
    pub unusable: u64,
    /// Due timers applied; of those, late (over a second after due); and
    /// those found cancelled or fired when their step committed.
    pub timers_fired: u64,
    pub timers_late: u64,
    pub timers_moot: u64,
    pub batches: u64,
    pub batched_writes: u64,
    pub largest_batch: u64,
    pub failed_batches: u64,
    pub registration_batches: u64,
    pub registrations: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub quarantined: u64,
    pub ai: AiStatsSnapshot,
    pub pool: PoolStats,
    /// Where conversation reads went, when a read replica is configured.
    pub replica: Option<ReadStats>,
}

impl Engine {
    pub fn stats(&self) -> StatsSnapshot {
        let i = &self.inner;
        let r = i.registry.stats();
        let w = &i.writer_stats;
        let s = &i.supervisor_stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            live_sessions: i.registry.live(),
            activations: l(&r.activations),
            passivations: l(&r.passivations),
            evictions: l(&r.evictions),
            mailbox_depth: i.registry.mailbox_depth(),
            in_flight: self.in_flight(),
            accepted: l(&i.stats.accepted),
            redeliveries: l(&i.stats.redeliveries),
            processed: l(&i.stats.processed),
            already_applied: l(&i.stats.already_applied),
            waited_behind: l(&i.stats.waited_behind),
            conflicts: l(&i.stats.conflicts),
            retries: l(&i.stats.retries),
            unusable: l(&i.stats.unusable),
            timers_fired: l(&i.stats.timers_fired),
            timers_late: l(&i.stats.timers_late),
            timers_moot: l(&i.stats.timers_moot),
            batches: l(&w.batches),
            batched_writes: l(&w.writes),
            largest_batch: l(&w.largest_batch),
            failed_batches: l(&w.failed_batches),
            registration_batches: l(&w.registration_batches),
            registrations: l(&w.registrations),
            crashes: l(&s.crashes),
            restarts: l(&s.restarts),
            quarantined: l(&s.quarantined),
            ai: i.ai_stats.snapshot(),
            pool: i.db.stats(),
            replica: i.db.replica().map(|r| r.stats()),
        }
    }
}
