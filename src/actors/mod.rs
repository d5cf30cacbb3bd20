//! The actors of the engine (actix):
//!
//! - [`session`]: one per phone; serializes that conversation's steps.
//! - [`registry`]: at most one live session actor per phone; passivation
//!   and LRU eviction that never drop a queued message.
//! - [`db_writer`]: the DB actor; versioned step writes with group commit.
//! - [`ai`]: the AI actor; timeouts, fallbacks, bulkhead, circuit breaker.
//! - [`supervisor`]: crash decisions (restart or quarantine) and the breakers.
//! - [`middleware`]: the application's hook before each step.
//! - [`stats`]: the message and step counters.

pub mod ai;
pub mod db_writer;
pub mod middleware;
pub(crate) mod registry;
pub mod session;
pub mod stats;
pub mod supervisor;
