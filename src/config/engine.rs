//! `[engine]`: the actor runtime's limits and timings.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Messages a session actor's mailbox holds before senders wait.
    pub mailbox_capacity: usize,
    /// Seconds without a message before a session actor is passivated.
    pub idle_ttl_s: u64,
    /// Live session actors kept; above it the least recently used idle one
    /// is evicted (a busy actor never is).
    pub max_live_sessions: usize,
    /// Times a transition is re-run after version conflicts before the
    /// message counts as a crash.
    pub conflict_retries: u32,
    /// Crashes on one message before it goes to dead letters.
    pub max_crashes: u32,
    /// Accepted messages waiting to be applied, engine-wide; above it new
    /// messages wait up to `enqueue_timeout_ms`, then get "overloaded" (503).
    pub max_queued: usize,
    /// Also bounds a webhook message's wait for its place in its
    /// conversation's line: with being stored, at most this plus one
    /// database answer (statement timeout + answer grace); then 503 — a message
    /// stored meanwhile keeps its place and is applied in order.
    pub enqueue_timeout_ms: u64,
    /// Threads (actix arbiters) running session actors; 0 = one per core.
    pub arbiters: usize,
    /// Seconds between sweeps that resume inbox rows left unprocessed by a
    /// failure (database outage, crash); 0 disables the sweep.
    pub resume_interval_s: u64,
    /// Milliseconds an accepted message stays reserved for the process that
    /// accepted it: other processes on the same database resume it only
    /// after that (the process died or fell far behind).
    pub inbox_lease_ms: u64,
    /// Relay realtime events through PostgreSQL (`NOTIFY`/`LISTEN`) so a
    /// subscriber connected to any of several processes on one database
    /// sees every conversation's events. Off for a single process.
    pub share_events: bool,
    pub group_commit: GroupCommitSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            mailbox_capacity: 256,
            // Akka Cluster Sharding passivates after 120 s; chat turns are
            // minutes apart, so keep a conversation warm for 5 minutes.
            idle_ttl_s: 300,
            max_live_sessions: 10_000,
            conflict_retries: 5,
            max_crashes: 3,
            max_queued: 100_000,
            enqueue_timeout_ms: 1_000,
            arbiters: 0,
            resume_interval_s: 10,
            inbox_lease_ms: 30_000,
            share_events: false,
            group_commit: GroupCommitSettings::default(),
        }
    }
}

/// Group-commit tuning (`[engine.group_commit]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupCommitSettings {
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Batches committing at once (each holds one pooled connection).
    pub max_in_flight: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        Self {
            // 64 rows per multi-row statement carry ~14k msg/s on one client;
            // 4 batches in flight keep the disk busy while one waits for its flush.
            max_batch: 64,
            max_in_flight: 4,
        }
    }
}
