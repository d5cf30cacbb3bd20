//! The engine handle: what an application embeds.
//!
//! [`Engine::builder`] starts the actor system on its own thread (actix
//! arbiters), so the handle works from a plain `#[tokio::main]` program as
//! well as inside actix-web. The handle is `Clone + Send + Sync`.

mod events;
pub mod presence;
mod settings;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

pub use events::{inbound_text, BreakerEvent, DeliveryEvent, Event, EventKind, EventMessage, EVENT_BUFFER};
pub use settings::EngineSettings;

use crate::actors::ai::{AiActor, AiStats, AiStatsSnapshot};
use crate::actors::db_writer::{DbWriter, Register, WriterStats};
use crate::actors::registry::{Registry, Slot, Ticket};
use crate::actors::session::{
    AgentAck, AgentSend, Apply, ConversationView, Read, SessionActor, SessionDeps, SetHandoff, Wake,
};
use crate::actors::supervisor::{ForceBreaker, GetBreakers, Supervisor, SupervisorStats};
use crate::ai::Model;
use crate::breaker::{BreakerSnapshot, CircuitBreaker};
use crate::config::Settings;
use crate::db::inbox::OwnedDelivery;
use crate::db::steps::{self, PendingInbound};
use crate::db::{Database, PoolStats};
use crate::error::{Error, Result};
use crate::flow::Flow;
use crate::outbox::{Dispatcher, Handoff};
use crate::phone;
use crate::whatsapp::sender::Sender;

/// Application code run before each step of an inbound message (business
/// validation, enrichment). An `Err` — or a panic — counts as a crash of
/// the session actor on that message: it is retried after a restart and
/// quarantined after `engine.max_crashes`.
pub trait Middleware: Send + Sync + 'static {
    fn before_step(&self, phone: &str, text: &str) -> std::result::Result<(), String>;
}

/// An inbound message to accept.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// The conversation key (E.164 digits; a leading `+` is accepted).
    pub phone: String,
    /// The provider's message id (WhatsApp `wamid`): the dedupe key.
    pub provider_message_id: String,
    /// The provider's message object, stored as received.
    pub payload: Value,
    /// The sender's profile name, when the provider gives one.
    pub contact_name: Option<String>,
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

/// Engine-wide counters.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub accepted: AtomicU64,
    pub redeliveries: AtomicU64,
    pub processed: AtomicU64,
    pub duplicates: AtomicU64,
    pub conflicts: AtomicU64,
    pub retries: AtomicU64,
}

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
    pub duplicates: u64,
    pub conflicts: u64,
    pub retries: u64,
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
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// This engine instance (see [`crate::db::inbox::Lease`]).
    instance: i64,
    db: Database,
    owns_db: bool,
    flow: Arc<Flow>,
    settings: Settings,
    registry: Registry,
    supervisor: Addr<Supervisor>,
    writer: Addr<DbWriter>,
    events: broadcast::Sender<Event>,
    queue: Arc<Semaphore>,
    in_flight: watch::Sender<usize>,
    stopping: AtomicBool,
    system: actix::System,
    main_arbiter: ArbiterHandle,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<EngineStats>,
    writer_stats: Arc<WriterStats>,
    ai_stats: Arc<AiStats>,
    supervisor_stats: Arc<SupervisorStats>,
    ai_breaker: CircuitBreaker,
    dispatcher: Dispatcher,
    /// Ends the presence connection (see [`presence`]).
    presence_stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("flow", &self.inner.flow.name).finish()
    }
}

/// Builds an [`Engine`]; anything not given comes from the settings.
pub struct EngineBuilder {
    settings: Settings,
    db: Option<Database>,
    flow: Option<Flow>,
    model: Option<Arc<dyn Model>>,
    middleware: Option<Arc<dyn Middleware>>,
    sender: Option<Arc<dyn Sender>>,
}

impl EngineBuilder {
    /// Deliver outbound messages with this sender instead of the one the
    /// `[whatsapp]` settings choose.
    pub fn sender(mut self, sender: Arc<dyn Sender>) -> Self {
        self.sender = Some(sender);
        self
    }
    /// Use this database (already migrated) instead of opening one; the
    /// engine then leaves it running at shutdown.
    pub fn database(mut self, db: Database) -> Self {
        self.db = Some(db);
        self
    }
    /// Use this flow instead of loading `flow.path`.
    pub fn flow(mut self, flow: Flow) -> Self {
        self.flow = Some(flow);
        self
    }
    /// Use this model instead of the configured provider.
    pub fn model(mut self, model: Arc<dyn Model>) -> Self {
        self.model = Some(model);
        self
    }
    pub fn middleware(mut self, m: Arc<dyn Middleware>) -> Self {
        self.middleware = Some(m);
        self
    }

    /// Opens what is missing, starts the actors, and resumes any accepted
    /// message left unprocessed by an earlier run.
    pub async fn start(self) -> Result<Engine> {
        let settings = self.settings;
        let flow = Arc::new(match self.flow {
            Some(f) => f,
            None => Flow::load(&settings.flow.path)?,
        });
        let model = match self.model {
            Some(m) => m,
            None => crate::ai::build_model(&settings.ai).map_err(|e| Error::InvalidInput(e.to_string()))?,
        };
        let (db, owns_db) = match self.db {
            Some(db) => (db, false),
            None => (Database::open(&settings.database).await?, true),
        };
        let stats = Arc::new(EngineStats::default());
        let writer_stats = Arc::new(WriterStats::default());
        let ai_stats = Arc::new(AiStats::default());
        let supervisor_stats = Arc::new(SupervisorStats::default());
        let ai_breaker = CircuitBreaker::new("ai", settings.ai.breaker.clone());
        let outbound_breaker = CircuitBreaker::new("outbound", settings.outbox.breaker.clone());
        let handoff = Arc::new(Handoff::new(&settings.outbox));
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        for b in [&ai_breaker, &outbound_breaker] {
            let tx: broadcast::Sender<Event> = events.clone();
            b.observe(Box::new(move |name, state| {
                let _ = tx.send(Event::breaker(name, state));
            }));
        }
        let sender = self
            .sender
            .unwrap_or_else(|| crate::whatsapp::sender::build(&settings.whatsapp));
        let arbiters = match settings.engine.arbiters {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };

        // Random per start, never 0 (the column's default): a restarted
        // process does not inherit the leases of its previous life.
        let instance = (rand::random::<u64>() >> 1).max(1) as i64;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = {
            let db = db.clone();
            let settings = settings.clone();
            let (writer_stats, ai_stats, supervisor_stats, ai_breaker) = (
                writer_stats.clone(),
                ai_stats.clone(),
                supervisor_stats.clone(),
                ai_breaker.clone(),
            );
            let (outbound_breaker, handoff) = (outbound_breaker.clone(), handoff.clone());
            std::thread::Builder::new()
                .name("switchboard-actors".into())
                .spawn(move || {
                    let system = actix::System::new();
                    system.block_on(async move {
                        let handles: Vec<ArbiterHandle> = (0..arbiters).map(|_| Arbiter::new().handle()).collect();
                        let group = settings.engine.group_commit.clone();
                        let lease = crate::db::inbox::Lease {
                            holder: instance,
                            millis: i64::try_from(settings.engine.inbox_lease_ms).unwrap_or(i64::MAX),
                        };
                        let writer = DbWriter::new(db.clone(), group, writer_stats, handoff, lease).start();
                        let ai = AiActor::new(model, &settings.ai, ai_breaker.clone(), ai_stats).start();
                        let breakers = vec![ai_breaker, outbound_breaker];
                        let supervisor =
                            Supervisor::new(db, settings.engine.max_crashes, breakers, supervisor_stats).start();
                        let _ = tx.send((
                            actix::System::current(),
                            Arbiter::current(),
                            handles,
                            writer,
                            ai,
                            supervisor,
                        ));
                    });
                    if let Err(e) = system.run() {
                        tracing::error!(error = %e, "actor system failed");
                    }
                })
                .map_err(|e| Error::Unavailable(format!("cannot start the actor thread: {e}")))?
        };
        let (system, main_arbiter, handles, writer, ai, supervisor) = rx
            .await
            .map_err(|_| Error::Unavailable("the actor system did not start".into()))?;

        let dispatcher = Dispatcher::start(
            db.clone(),
            sender,
            settings.outbox.clone(),
            outbound_breaker,
            handoff,
            |fut| {
                main_arbiter.spawn(fut);
            },
        );
        let (presence_stop, stop_rx) = watch::channel(false);
        main_arbiter.spawn(presence::run(
            db.url().clone(),
            instance,
            events.clone(),
            settings.engine.share_events,
            stop_rx,
        ));
        let registry = Registry::new(handles, settings.engine.max_live_sessions);
        registry.set_deps(Arc::new(SessionDeps {
            db: db.clone(),
            flow: flow.clone(),
            ai,
            writer: writer.clone(),
            supervisor: supervisor.clone(),
            events: events.clone(),
            settings: settings.engine.clone(),
            stats: stats.clone(),
            registry: registry.clone(),
            middleware: self.middleware,
            instance,
        }));
        let engine = Engine {
            inner: Arc::new(Inner {
                instance,
                queue: Arc::new(Semaphore::new(settings.engine.max_queued.max(1))),
                db,
                owns_db,
                flow,
                registry,
                supervisor,
                writer,
                events,
                in_flight: watch::channel(0).0,
                stopping: AtomicBool::new(false),
                system,
                main_arbiter,
                thread: Mutex::new(Some(started)),
                stats,
                writer_stats,
                ai_stats,
                supervisor_stats,
                ai_breaker,
                dispatcher,
                presence_stop,
                settings,
            }),
        };
        engine.resume(true).await?;
        engine.start_resume_sweeper();
        Ok(engine)
    }
}

/// A phone's turn to enqueue (see [`Engine::turn`]).
struct Turn {
    slot: Slot,
    _ticket: Ticket,
}

/// Counts work in flight; [`Engine::wait_idle`] waits for zero.
struct InFlightGuard(watch::Sender<usize>);

impl InFlightGuard {
    fn new(tx: &watch::Sender<usize>) -> Self {
        tx.send_modify(|n| *n += 1);
        Self(tx.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Engine {
    pub fn builder(settings: Settings) -> EngineBuilder {
        EngineBuilder {
            settings,
            db: None,
            flow: None,
            model: None,
            middleware: None,
            sender: None,
        }
    }

    /// Starts an engine with everything taken from `settings`.
    pub async fn start(settings: Settings) -> Result<Engine> {
        Self::builder(settings).start().await
    }

    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    pub fn flow(&self) -> &Flow {
        &self.inner.flow
    }

    /// Accepts an inbound message: returns once it is durably registered
    /// (atomic dedupe + inbox row). It is then applied in the background,
    /// in order with the other messages of its phone.
    #[tracing::instrument(skip_all, fields(phone = %phone::mask(&m.phone)))]
    pub async fn submit_inbound(&self, m: InboundMessage) -> Result<Accepted> {
        self.check_running()?;
        let phone = phone::normalize(&m.phone).map_err(Error::InvalidInput)?;
        if m.provider_message_id.is_empty() || m.provider_message_id.len() > 256 {
            return Err(Error::InvalidInput(
                "a provider message id has 1 to 256 characters".into(),
            ));
        }
        let permit = self.enqueue_permit().await?;
        // The registration is handed to the DB writer as the phone's ticket
        // is taken, so the writer sees a phone's messages in ticket order and
        // numbers them in that order; registrations of concurrent requests
        // share one commit. The message then enters the mailbox in its
        // ticket's turn: inbox ids of a phone grow in the order they are
        // applied, and one phone's registrations overlap.
        let slot = self.slot(&phone)?;
        let (ticket, registration) = slot.order.take(|| {
            self.inner.writer.send(Register(OwnedDelivery {
                phone: phone.clone(),
                provider_message_id: m.provider_message_id.clone(),
                payload: m.payload.clone(),
                contact_name: m.contact_name.clone(),
            }))
        });
        // The rest goes on even if the caller stops waiting: once its
        // registration is on its way, a message keeps its place in line
        // (a later one must not be applied first). The caller's wait is
        // bounded like every other wait of a webhook: past it, a 503 — the
        // provider redelivers, and the redelivery finds the message stored.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let guard = InFlightGuard::new(&self.inner.in_flight);
        self.inner.main_arbiter.spawn(async move {
            let pending = (m.provider_message_id, m.payload);
            let r = this
                .enqueue_registered(phone, pending, slot, ticket, registration, permit)
                .await;
            drop(guard);
            let _ = tx.send(r);
        });
        let wait = Duration::from_millis(self.inner.settings.engine.enqueue_timeout_ms);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Unavailable("the engine is shutting down".into())),
            Err(_) => Err(Error::Unavailable(
                "the message was not stored and queued in time; send it again".into(),
            )),
        }
    }

    /// Waits for a registration, then, in the ticket's turn, puts the
    /// message in its actor's mailbox (unless it was applied already or
    /// another process holds it).
    async fn enqueue_registered(
        &self,
        phone: String,
        (provider_message_id, payload): (String, serde_json::Value),
        slot: Slot,
        ticket: Ticket,
        registration: Request<DbWriter, Register>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Accepted> {
        let reg = registration
            .await
            .unwrap_or_else(|e| Err(Error::Unavailable(format!("DB writer: {e}"))));
        let reg = match reg {
            Ok(r) => r,
            Err(e) => {
                // Not stored: its place in line is given up.
                self.inner.registry.release(&slot, false);
                return Err(e);
            }
        };
        if reg.first {
            self.inner.stats.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            self.inner.stats.redeliveries.fetch_add(1, Ordering::Relaxed);
        }
        let accepted = Accepted {
            inbox_id: reg.inbox_id,
            first: reg.first,
            delivery_count: reg.delivery_count,
            already_processed: reg.processed,
        };
        if reg.processed || reg.leased_by != self.inner.instance {
            // Applied already; or another process holds it (it accepted the
            // message first and applies it in its order; should it die,
            // resume hands the message to a live process).
            self.inner.registry.release(&slot, false);
            return Ok(accepted);
        }
        // Unbounded: every earlier ticket ends (a registration has a retry
        // budget; an enqueue waits for the actor, which answers every message).
        ticket.wait().await;
        let turn = Turn { slot, _ticket: ticket };
        // A redelivery of a message not yet applied that this process holds
        // is dispatched again: harmless (the actor skips what it applied),
        // and it makes progress if the first dispatch was lost.
        let pending = PendingInbound {
            id: reg.inbox_id,
            provider_message_id,
            payload,
        };
        self.dispatch(phone, Apply(pending.clone()), Some(turn), Some(permit), Some(pending))
            .await?;
        Ok(accepted)
    }

    /// Stores and queues a human agent's message; returns after the commit.
    pub async fn submit_agent_message(&self, phone: &str, body: &str, idempotency_key: &str) -> Result<AgentAck> {
        self.check_running()?;
        let phone = phone::normalize(phone).map_err(Error::InvalidInput)?;
        if body.trim().is_empty() || body.chars().count() > 4096 {
            return Err(Error::InvalidInput("a message has 1 to 4,096 characters".into()));
        }
        let _guard = InFlightGuard::new(&self.inner.in_flight);
        self.call(
            &phone,
            AgentSend {
                body: body.to_string(),
                idempotency_key: idempotency_key.to_string(),
            },
        )
        .await?
    }

    /// Hands the conversation to a human agent (`true`) or back to the bot.
    pub async fn set_handoff(&self, phone: &str, on: bool) -> Result<ConversationView> {
        self.check_running()?;
        let phone = phone::normalize(phone).map_err(Error::InvalidInput)?;
        let _guard = InFlightGuard::new(&self.inner.in_flight);
        self.call(&phone, SetHandoff(on)).await?
    }

    /// Reads a conversation. Through its actor when it is live (so the read
    /// comes after every message accepted before it), else from the primary.
    pub async fn conversation(&self, phone: &str) -> Result<Option<ConversationView>> {
        let phone = phone::normalize(phone).map_err(Error::InvalidInput)?;
        if self.inner.registry.is_live(&phone) {
            return self.call(&phone, Read).await?.map(Some);
        }
        Ok(self.inner.db.load_session(&phone).await?.map(|s| ConversationView {
            phone: s.phone,
            flow_state: s.flow_state,
            data: s.data,
            version: s.version,
            handoff: s.handoff,
        }))
    }

    /// Applies a delivery status report (`sent`, `delivered`, `read`,
    /// `failed`) to the outbound message with that provider id (sent to
    /// `recipient`, when given: the conversation's phone); publishes it.
    /// Returns false when no such message is known.
    pub async fn apply_status(
        &self,
        recipient: Option<&str>,
        provider_id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<bool> {
        let db = &self.inner.db;
        // The recipient is the conversation's phone; an unusable one only
        // costs the index.
        let recipient = recipient.and_then(|r| phone::normalize(r).ok());
        let phone = db
            .retry_policy()
            .run("apply_status", || async {
                crate::db::outbox::apply_status(
                    &mut *db.pool().get().await?,
                    recipient.as_deref(),
                    provider_id,
                    status,
                    error,
                )
                .await
            })
            .await?;
        let Some(phone) = phone else { return Ok(false) };
        let _ = self.inner.events.send(Event {
            kind: EventKind::DeliveryStatus,
            phone,
            version: 0,
            flow_state: String::new(),
            handoff: false,
            messages: Vec::new(),
            provider_message_id: None,
            delivery: Some(DeliveryEvent {
                provider_message_id: provider_id.to_string(),
                status: status.to_string(),
                error: error.map(str::to_string),
            }),
            breaker: None,
            relayed: false,
        });
        Ok(true)
    }

    /// Replays a dead letter through the normal path (see
    /// [`crate::db::dead_letters::replay`]) and wakes whatever must act on it.
    pub async fn replay_dead_letter(&self, phone: &str, id: i64) -> Result<()> {
        self.check_running()?;
        let phone = phone::normalize(phone).map_err(Error::InvalidInput)?;
        let db = &self.inner.db;
        let (phone, source) = db
            .retry_policy()
            .run("replay_dead_letter", || async {
                crate::db::dead_letters::replay(&mut *db.pool().get().await?, &phone, id).await
            })
            .await?;
        if source == "inbox" {
            self.dispatch(phone, Wake, None, None, None).await?;
        } else {
            self.inner.dispatcher.wake();
        }
        Ok(())
    }

    /// Whether the engine is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// The outbox dispatcher (backlog, wait until drained, its breaker).
    pub fn outbox(&self) -> &Dispatcher {
        &self.inner.dispatcher
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
            duplicates: l(&i.stats.duplicates),
            conflicts: l(&i.stats.conflicts),
            retries: l(&i.stats.retries),
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
        }
    }

    /// Every circuit breaker's state.
    pub async fn breakers(&self) -> Vec<BreakerSnapshot> {
        self.inner
            .supervisor
            .send(GetBreakers)
            .await
            .unwrap_or_else(|_| vec![self.inner.ai_breaker.snapshot()])
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

    /// Stops accepting, lets queued work finish (up to the server's
    /// shutdown timeout), stops the actors and, if the engine opened the
    /// database itself, the database.
    pub async fn shutdown(&self) -> Result<()> {
        if self.inner.stopping.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let grace = Duration::from_secs(self.inner.settings.server.shutdown_timeout_s);
        if tokio::time::timeout(grace, self.wait_idle()).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight(),
                "shutdown grace period over; unapplied messages stay in the inbox and resume at next start"
            );
        }
        self.inner.dispatcher.stop().await;
        let _ = self.inner.presence_stop.send(true);
        self.inner.registry.stop_all();
        self.inner.system.stop();
        let thread = self.inner.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if self.inner.owns_db {
            self.inner.db.shutdown().await?;
        }
        tracing::info!("engine stopped");
        Ok(())
    }

    // ---- internals ------------------------------------------------------

    fn check_running(&self) -> Result<()> {
        if self.inner.stopping.load(Ordering::SeqCst) {
            Err(Error::Unavailable("the engine is shutting down".into()))
        } else {
            Ok(())
        }
    }

    async fn enqueue_permit(&self) -> Result<OwnedSemaphorePermit> {
        let wait = Duration::from_millis(self.inner.settings.engine.enqueue_timeout_ms);
        match tokio::time::timeout(wait, self.inner.queue.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::Unavailable("the engine is shutting down".into())),
            Err(_) => Err(Error::Overloaded(format!(
                "{} messages are waiting to be applied",
                self.inner.settings.engine.max_queued
            ))),
        }
    }

    /// The phone's live actor (activated if needed), its pending count
    /// raised: pair with a release.
    fn slot(&self, phone: &str) -> Result<Slot> {
        self.inner
            .registry
            .acquire(phone)
            .ok_or_else(|| Error::Unavailable("engine not started".into()))
    }

    /// Waits for the phone's turn: senders of one phone enqueue one at a
    /// time, first come, first served, so the mailbox keeps their order.
    /// Activates the phone's actor if needed.
    async fn turn(&self, phone: &str) -> Result<Turn> {
        let slot = self.slot(phone)?;
        let (ticket, ()) = slot.order.take(|| ());
        self.wait_turn(slot, ticket).await
    }

    /// Waits (bounded) until `ticket`'s turn comes.
    async fn wait_turn(&self, slot: Slot, ticket: Ticket) -> Result<Turn> {
        let wait = Duration::from_millis(self.inner.settings.engine.enqueue_timeout_ms);
        match tokio::time::timeout(wait, ticket.wait()).await {
            Ok(()) => Ok(Turn { slot, _ticket: ticket }),
            Err(_) => {
                // Dropping the ticket gives its place up.
                self.inner.registry.release(&slot, false);
                Err(Error::Overloaded("the conversation is busy; try again".into()))
            }
        }
    }

    /// Gives a turn back without sending anything.
    fn abandon(&self, turn: Turn) {
        self.inner.registry.release(&turn.slot, false);
    }

    /// Puts `msg` in the mailbox during `turn`, waiting while the mailbox is
    /// full (`bounded`: at most `engine.enqueue_timeout_ms`), and `inbound` (the message an `Apply` carries) in the actor's
    /// waiting list. Returns the slot (to release when the answer comes)
    /// and the pending answer.
    async fn send_in_turn<M>(
        &self,
        turn: Turn,
        msg: M,
        inbound: Option<PendingInbound>,
        bounded: bool,
    ) -> Result<(Slot, Request<SessionActor, M>)>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<M>,
    {
        let capacity = self.inner.settings.engine.mailbox_capacity.max(1);
        let wait = Duration::from_millis(self.inner.settings.engine.enqueue_timeout_ms);
        let slot = &turn.slot;
        // Only the holder of the turn waits here, so a freed place is its.
        let room = async {
            loop {
                let room = slot.room.notified();
                if slot.queued.load(Ordering::SeqCst) < capacity {
                    break;
                }
                room.await;
            }
        };
        if !bounded {
            room.await;
        } else if tokio::time::timeout(wait, room).await.is_err() {
            self.abandon(turn);
            return Err(Error::Overloaded(format!(
                "the conversation already has {capacity} queued messages"
            )));
        }
        slot.queued.fetch_add(1, Ordering::SeqCst);
        if let Some(p) = inbound {
            if let Ok(mut waiting) = slot.inbound.lock() {
                waiting.push_back(p);
            }
        }
        let request = slot.addr.send(msg);
        Ok((turn.slot.clone(), request))
    }

    /// Puts `msg` in the phone's actor mailbox, in arrival order.
    async fn enqueue<M>(&self, phone: &str, msg: M) -> Result<(Slot, Request<SessionActor, M>)>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<M>,
    {
        let turn = self.turn(phone).await?;
        self.send_in_turn(turn, msg, None, true).await
    }

    /// Sends `msg` to the phone's actor and waits for the answer. An actor
    /// that stopped between lookup and delivery is replaced and the message
    /// sent again.
    async fn call<M>(&self, phone: &str, msg: M) -> Result<M::Result>
    where
        M: Message + Send + Clone + 'static,
        M::Result: Send,
        SessionActor: Handler<M>,
    {
        for _ in 0..3 {
            let (slot, request) = self.enqueue(phone, msg.clone()).await?;
            let answer = request.await;
            self.inner.registry.release(&slot, true);
            match answer {
                Ok(r) => return Ok(r),
                Err(MailboxError::Closed) => continue,
                Err(MailboxError::Timeout) => return Err(Error::Unavailable("session actor timed out".into())),
            }
        }
        Err(Error::Unavailable("session actor kept stopping".into()))
    }

    /// Enqueues `msg` now (during `turn`, or a new turn) and waits for its
    /// answer in the background, counting it in flight until applied.
    async fn dispatch<M>(
        &self,
        phone: String,
        msg: M,
        turn: Option<Turn>,
        permit: Option<OwnedSemaphorePermit>,
        inbound: Option<PendingInbound>,
    ) -> Result<()>
    where
        M: Message<Result = Result<()>> + Send + Clone + 'static,
        SessionActor: Handler<M>,
    {
        let guard = InFlightGuard::new(&self.inner.in_flight);
        let turn = match turn {
            Some(t) => t,
            None => self.turn(&phone).await?,
        };
        // Unbounded: the message is stored and has its place in line; the
        // actor answers every message, so room comes.
        let (slot, request) = self.send_in_turn(turn, msg.clone(), inbound, false).await?;
        let this = self.clone();
        self.inner.main_arbiter.spawn(async move {
            let answer = request.await;
            this.inner.registry.release(&slot, true);
            let result = match answer {
                Ok(r) => r,
                // The actor died with the message queued: send it again.
                Err(MailboxError::Closed) => this.call(&phone, msg).await.and_then(|r| r),
                Err(MailboxError::Timeout) => Err(Error::Unavailable("session actor timed out".into())),
            };
            if let Err(e) = result {
                tracing::warn!(phone = %phone::mask(&phone), error = %e, "message left in the inbox; it will be resumed");
            }
            drop(permit);
            drop(guard);
        });
        Ok(())
    }

    /// Wakes the actor of every phone with unprocessed inbox rows this
    /// process may resume (`own`: its own rows too, see
    /// [`steps::phones_with_unprocessed`]).
    async fn resume(&self, own: bool) -> Result<()> {
        let db = &self.inner.db;
        let phones = db
            .retry_policy()
            .run("phones_with_unprocessed", || async {
                steps::phones_with_unprocessed(&mut *db.pool().get().await?, self.inner.instance, own).await
            })
            .await?;
        if !phones.is_empty() {
            tracing::info!(phones = phones.len(), "resuming unprocessed messages");
        }
        for phone in phones {
            self.dispatch(phone, Wake, None, None, None).await?;
        }
        Ok(())
    }

    /// Periodically resumes rows left behind by failures (a database
    /// outage longer than the retry budget), while the engine runs.
    fn start_resume_sweeper(&self) {
        let every = self.inner.settings.engine.resume_interval_s;
        if every == 0 {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        self.inner.main_arbiter.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let engine = Engine { inner };
                if engine.inner.stopping.load(Ordering::SeqCst) {
                    break;
                }
                // Other processes' rows (gone, or past their lease) always;
                // this process's own only when idle (when busy, they are in
                // its mailboxes, being applied).
                if let Err(e) = engine.resume(engine.in_flight() == 0).await {
                    tracing::warn!(error = %e, "resume sweep failed");
                }
            }
        });
    }
}
