//! The engine handle: what an application embeds.
//!
//! [`Engine::builder`] starts the actor system on its own thread (actix
//! arbiters), so the handle works from a plain `#[tokio::main]` program as
//! well as inside actix-web. The handle is `Clone + Send + Sync`.
//!
//! - `builder` / `actor_thread`: the wiring, and the actix system it runs;
//! - `inbound`: accepting a webhook's message (durable, then queued in order);
//! - `conversations`: agent messages, hand-offs, reads, delivery statuses;
//! - `mailbox`: the per-phone line into a session actor's mailbox;
//! - `reads`: lists, histories and dead letters for the HTTP layer;
//! - `resume`: picking up accepted messages not yet applied;
//! - `timers`: claiming due timers and handing each to its conversation;
//! - `stats` and `shutdown`.

mod actor_thread;
mod builder;
mod contacts;
mod conversations;
mod erasure;
mod feed;
mod inbound;
mod mailbox;
pub mod presence;
mod reads;
mod resume;
mod retention;
mod rounds;
mod shutdown;
mod stats;
mod timers;

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch, Semaphore};

pub use crate::actors::ai::{CallDurations, CALL_DURATION_BUCKETS};
pub use crate::actors::middleware::Middleware;
pub use crate::actors::stats::EngineStats;
pub use crate::config::EngineSettings;
pub use crate::db::dead_letters::{DeadLetter, NewUnusable};
pub use crate::db::read::{ConversationSummary, ListFilter, MessageRow};
pub use crate::events::{inbound_text, BreakerEvent, DeliveryEvent, Event, EventKind, EventMessage, EVENT_BUFFER};
pub use builder::EngineBuilder;
pub use stats::StatsSnapshot;

use crate::actors::ai::AiStats;
use crate::actors::db_writer::{DbWriter, WriterStats};
use crate::actors::registry::Registry;
use crate::actors::supervisor::{ForceBreaker, GetBreakers, Supervisor, SupervisorStats};
use crate::breaker::{BreakerSnapshot, CircuitBreaker};
use crate::config::Settings;
use crate::db::Database;
use crate::error::Result;
use crate::flow::{Flow, Flows};
use crate::lifecycle::Lifecycle;
use crate::media::MediaStats;
use crate::numbers::Numbers;
use crate::outbox::Dispatcher;

/// An inbound message to accept.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// The sender's phone (E.164 digits; a leading `+` is accepted), or,
    /// for a contact known only by its business-scoped user ID, the BSUID.
    pub phone: String,
    /// The sender's BSUID when the provider gives one besides the phone
    /// (every WhatsApp delivery since 2026): either finds the conversation.
    pub user_id: Option<String>,
    /// The business number it was sent to (`metadata.phone_number_id`);
    /// `None`: the home number. With the contact, it makes the conversation.
    pub business_number: Option<String>,
    /// The provider's message id (WhatsApp `wamid`): the dedupe key.
    pub provider_message_id: String,
    /// The provider's message object, stored as received.
    pub payload: Value,
    /// The sender's profile name, when the provider gives one.
    pub contact_name: Option<String>,
    /// The sender's WhatsApp username, when the provider gives one.
    pub contact_username: Option<String>,
}

/// The answer to [`Engine::submit_inbound`]: the message is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub inbox_id: i64,
    /// False for a redelivery of a message already accepted.
    pub first: bool,
    pub delivery_count: i32,
    /// The message had already been applied; nothing more will happen.
    pub already_processed: bool,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    /// An `Arc`: the HTTP workers, the background tasks and the embedder
    /// each hold a clone of one engine.
    inner: Arc<Inner>,
}

struct Inner {
    /// This engine instance (see [`crate::db::inbox::Lease`]).
    instance: i64,
    db: Database,
    /// The engine opened the database, so it closes it at shutdown.
    owns_db: bool,
    /// Shared with every session actor (through their deps); never written.
    flows: Arc<Flows>,
    /// The business numbers served; never written.
    numbers: Arc<Numbers>,
    /// The team's webhooks (the statuses' rows are written here).
    webhooks: Arc<crate::webhooks::Webhooks>,
    /// Counted by the retention job.
    retention: Arc<retention::RetentionStats>,
    /// The flows' backend calls (their figures are read here).
    actions: Arc<crate::actions::Actions>,
    settings: Settings,
    /// Contact identifier → conversation key, each as its own link is stored
    /// in the database. A sharded map read on every inbound message without
    /// a lock; stored links never change, so any copy is current.
    contacts: dashmap::DashMap<String, String>,
    /// Phone → live actor; a clone of the map the actors passivate themselves from.
    registry: Registry,
    /// The supervisor's mailbox: the handle reaches the actor thread's
    /// singleton from any thread (breakers read and forced there).
    supervisor: Addr<Supervisor>,
    /// The writer's mailbox (registrations go through it); the session
    /// actors hold it too.
    writer: Addr<DbWriter>,
    /// Best-effort fan-out: a slow subscriber lags and loses events; it
    /// never slows a step.
    events: broadcast::Sender<Event>,
    /// `engine.max_queued` permits: accepted messages not yet applied,
    /// engine-wide (waiting for one is how overload turns into 503s). An
    /// `Arc`, as each message carries an owned permit until it is applied.
    queue: Arc<Semaphore>,
    /// Messages accepted and not yet applied, plus agent actions running: a
    /// watch, so [`Engine::wait_idle`] and the dispatcher's stop can wait
    /// for zero without polling.
    in_flight: watch::Sender<usize>,
    /// Stop for every background task this engine runs, and their join.
    life: Lifecycle,
    /// The actix system on its own thread, joined at shutdown.
    actors: actor_thread::ActorThread,
    /// Shared with the session actors, which count into it (as the handle does).
    stats: Arc<EngineStats>,
    /// Shared with the writer, which counts into it.
    writer_stats: Arc<WriterStats>,
    /// Shared with the AI actor, which counts into it.
    ai_stats: Arc<AiStats>,
    /// Shared with the supervisor, which counts into it.
    supervisor_stats: Arc<SupervisorStats>,
    /// A clone of the AI breaker (clones share state): its snapshot when the
    /// supervisor cannot answer.
    ai_breaker: CircuitBreaker,
    dispatcher: Dispatcher,
    /// Shared with the session actors, which mark messages read through it.
    receipts: Arc<crate::whatsapp::read_receipts::ReadReceipts>,
    /// Shared with the media fetcher, which counts into it.
    media: Arc<MediaStats>,
    /// The templates each conversation may send; shared with the session actors.
    templates: Arc<crate::whatsapp::templates::Templates>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("flow", &self.inner.flows.default_flow().name)
            .finish()
    }
}

impl Engine {
    pub fn builder(settings: Settings) -> EngineBuilder {
        EngineBuilder::new(settings)
    }

    /// Starts an engine with everything taken from `settings`.
    pub async fn start(settings: Settings) -> Result<Engine> {
        Self::builder(settings).start().await
    }

    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The default flow (a number may run its own; see [`Flows`]).
    pub fn flow(&self) -> &Flow {
        self.inner.flows.default_flow()
    }

    /// The business numbers this engine serves.
    pub fn numbers(&self) -> &Numbers {
        &self.inner.numbers
    }

    /// Whether the engine is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.inner.life.is_cancelled()
    }

    /// The outbox dispatcher (backlog, wait until drained, its breaker).
    pub fn outbox(&self) -> &Dispatcher {
        &self.inner.dispatcher
    }

    /// Read receipts sent and failed.
    pub fn read_receipts(&self) -> &crate::whatsapp::read_receipts::ReadReceipts {
        &self.inner.receipts
    }

    /// The media fetcher's counters.
    pub fn media_stats(&self) -> &MediaStats {
        &self.inner.media
    }

    /// Realtime events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Waits until every accepted message has been applied (or quarantined)
    /// and no agent action is running. For tests and orderly shutdown.
    pub async fn wait_idle(&self) {
        let mut rx = self.inner.in_flight.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Messages accepted and not yet applied, plus running agent actions.
    pub fn in_flight(&self) -> usize {
        *self.inner.in_flight.borrow()
    }

    /// Every circuit breaker's state.
    pub async fn breakers(&self) -> Vec<BreakerSnapshot> {
        self.inner
            .supervisor
            .send(GetBreakers)
            .await
            .unwrap_or_else(|_| vec![self.inner.ai_breaker.snapshot()])
    }

    /// Each flow action's calls so far.
    pub fn action_figures(&self) -> Vec<crate::actions::ActionFigures> {
        self.inner.actions.figures()
    }

    /// Forces a breaker open or closed; false if no breaker has that name.
    pub async fn force_breaker(&self, name: &str, open: bool) -> bool {
        self.inner
            .supervisor
            .send(ForceBreaker {
                name: name.to_string(),
                open,
            })
            .await
            .unwrap_or(false)
    }

    /// The lifecycle of the engine's background tasks: the HTTP server
    /// takes a child token from it (it stops accepting first).
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.inner.life
    }
}
