//! # switchboard
//!
//! An actor-based, concurrent message-processing engine for chatbots. Inbound
//! messages (WhatsApp webhooks, agent replies) go in; ordered, durable,
//! exactly-once conversation transitions, replies and events come out.
//!
//! Components (see `ARCHITECTURE.md` for the map and the invariants):
//!
//! - [`config`]: the typed settings tree, loaded from one TOML file with
//!   `SWITCHBOARD__SECTION__KEY` overrides; secrets never print.
//! - [`db`]: PostgreSQL — the embedded cluster ([`db::embedded`]), the one
//!   pool per process ([`db::pool`]), embedded migrations
//!   ([`db::migrations`]), the versioned session write ([`db::sessions`]) and
//!   the atomic delivery dedupe ([`db::inbox`]).
//! - [`error`]: the boundary error type; every variant says if it is retryable.
//! - [`retry`]: exponential backoff with full jitter for transient errors.
//! - [`phone`]: the conversation key — validation and masking for logs.
//! - [`startup`]: builds the application and stops it in order.
//! - [`lifecycle`]: the one cancellation token and task tracker of a process.
//! - [`events`]: the realtime events every part publishes.
//! - [`actions`]: flow actions, the calls states make to the team's backend.
//! - [`telemetry`]: logs, and traces over OTLP.
//! - [`cli`]: the `switchboard` command line.

pub mod actions;
pub mod actors;
pub mod ai;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod db;
pub mod engine;
pub mod error;
pub mod events;
pub mod flow;
pub mod fuzzing;
pub mod http;
pub mod lifecycle;
pub mod load;
pub mod media;
pub mod numbers;
pub mod outbox;
pub mod phone;
pub mod retry;
pub mod startup;
pub mod telemetry;
pub mod webhooks;
pub mod whatsapp;

pub use engine::{Engine, InboundMessage};
pub use error::{Error, Result};
