//! The actors of the engine (actix):
//!
//! - [`session`]: one per phone; serializes that conversation's steps.
//! - [`registry`]: at most one live session actor per phone; passivation
//!   and LRU eviction that never drop a queued message.
//! - [`db_writer`]: the DB actor; versioned step writes with group commit.
//! - [`ai`]: the AI actor; timeouts, fallbacks, bulkhead, circuit breaker.
//! - [`supervisor`]: crash decisions (restart or quarantine) and the breakers.

pub mod ai;
pub mod db_writer;
pub(crate) mod registry;
pub mod session;
pub mod supervisor;
