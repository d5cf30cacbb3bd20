//! Counters the session actors and the engine façade keep.

use std::sync::atomic::AtomicU64;

/// Engine-wide counters of messages and steps. Atomics, written with
/// `Relaxed` from every actor thread and the HTTP workers: each is a count
/// on its own, read for `/metrics`, never used to order anything.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Inbound messages stored for the first time.
    pub accepted: AtomicU64,
    /// Deliveries of a message already stored (provider retries).
    pub redeliveries: AtomicU64,
    /// Steps committed.
    pub processed: AtomicU64,
    /// Steps skipped because their message had been applied already.
    pub already_applied: AtomicU64,
    /// Times a message's step found an earlier one of its conversation
    /// still unapplied (accepted by another process) and went back to
    /// apply it, or wait for it, first.
    pub waited_behind: AtomicU64,
    /// Writes refused for a stale version (then re-run on fresh state).
    pub conflicts: AtomicU64,
    /// Re-runs after a conflict or a retryable error.
    pub retries: AtomicU64,
    /// Items of deliveries that could not be applied, kept as dead letters
    /// (first time each).
    pub unusable: AtomicU64,
    /// Due timers applied (their steps committed).
    pub timers_fired: AtomicU64,
    /// Of those, applied over a second after their due time (a process was
    /// down, or the engine was behind): late, not lost.
    pub timers_late: AtomicU64,
    /// Due timers found cancelled or fired when their step committed.
    pub timers_moot: AtomicU64,
}
