//! The wiring: an [`Engine`] from settings, with any part injectable (tests
//! and the load harness give their own database, model or sender).

use std::sync::Arc;

use tokio::sync::{broadcast, watch, Semaphore};

use super::actor_thread::{ActorParts, ActorThread};
use super::{presence, Engine, Inner};
use crate::actors::ai::AiStats;
use crate::actors::db_writer::WriterStats;
use crate::actors::middleware::Middleware;
use crate::actors::registry::Registry;
use crate::actors::session::SessionDeps;
use crate::actors::stats::EngineStats;
use crate::actors::supervisor::SupervisorStats;
use crate::ai::Model;
use crate::breaker::CircuitBreaker;
use crate::config::Settings;
use crate::db::inbox::Lease;
use crate::db::Database;
use crate::error::{Error, Result};
use crate::events::{Event, EVENT_BUFFER};
use crate::flow::{Flow, Flows};
use crate::lifecycle::Lifecycle;
use crate::media::{self, Fetcher, MediaStats};
use crate::numbers::Numbers;
use crate::outbox::{Dispatcher, Outbound, OutboundBreakers, SendQueue};
use crate::whatsapp::read_receipts::ReadReceipts;
use crate::whatsapp::sender::Sender;
use crate::whatsapp::templates::Templates;

/// Builds an [`Engine`]; anything not given comes from the settings.
pub struct EngineBuilder {
    settings: Settings,
    db: Option<Database>,
    flow: Option<Flow>,
    /// An `Arc<dyn>`: any provider, which the caller may keep a handle to.
    model: Option<Arc<dyn Model>>,
    /// An `Arc<dyn>`: the application's hook, shared by every session actor.
    middleware: Option<Arc<dyn Middleware>>,
    /// An `Arc<dyn>`: any sender, which the caller may keep a handle to.
    sender: Option<Arc<dyn Sender>>,
}

impl EngineBuilder {
    pub(super) fn new(settings: Settings) -> Self {
        Self {
            settings,
            db: None,
            flow: None,
            model: None,
            middleware: None,
            sender: None,
        }
    }

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

    /// Application code run before each step (see [`Middleware`]).
    pub fn middleware(mut self, m: Arc<dyn Middleware>) -> Self {
        self.middleware = Some(m);
        self
    }

    /// Opens what is missing, starts the actors and the background tasks,
    /// and resumes any accepted message left unprocessed by an earlier run.
    pub async fn start(self) -> Result<Engine> {
        let Inputs {
            settings,
            flow,
            model,
            db,
            owns_db,
            sender,
            middleware,
            numbers,
            templates,
        } = self.inputs().await?;
        // Random per start, never 0 (the column's default): a restarted
        // process does not inherit the leases of its previous life.
        let instance = (rand::random::<u64>() >> 1).max(1) as i64;
        let parts = Parts::new(&settings, &numbers, &flow)?;
        let life = Lifecycle::new();
        let (actors, started) = ActorThread::start(parts.for_actors(&db, &settings, model, instance)).await?;
        let in_flight = watch::channel(0).0;
        let receipts = Arc::new(ReadReceipts::new(sender.clone(), numbers.clone()));
        let until = quiesced(&life, &in_flight);
        let dispatcher = parts.dispatcher(&db, sender, &numbers, &settings, until, |round| {
            actors.spawn(life.track(round))
        });
        let media = spawn_background(&actors, &life, &db, &settings, &numbers, instance, &parts.events);
        let registry = Registry::new(started.arbiters, settings.engine.max_live_sessions);
        registry.set_deps(Arc::new(SessionDeps {
            db: db.clone(),
            flows: flow.clone(),
            ai: started.ai,
            writer: started.writer.clone(),
            supervisor: started.supervisor.clone(),
            events: parts.events.clone(),
            settings: settings.engine.clone(),
            stats: parts.stats.clone(),
            registry: registry.downgrade(),
            middleware,
            instance,
            receipts: receipts.clone(),
            templates: templates.clone(),
            webhooks: parts.webhooks.clone(),
            actions: parts.actions.clone(),
        }));
        let engine = Engine {
            inner: Arc::new(Inner {
                instance,
                queue: Arc::new(Semaphore::new(settings.engine.max_queued.max(1))),
                db,
                owns_db,
                flows: flow,
                numbers,
                webhooks: parts.webhooks,
                actions: parts.actions,
                retention: Arc::default(),
                registry,
                supervisor: started.supervisor,
                writer: started.writer,
                events: parts.events,
                in_flight,
                life,
                actors,
                stats: parts.stats,
                writer_stats: parts.writer_stats,
                ai_stats: parts.ai_stats,
                supervisor_stats: parts.supervisor_stats,
                ai_breaker: parts.ai_breaker,
                dispatcher,
                receipts,
                media,
                settings,
                contacts: dashmap::DashMap::new(),
                templates,
            }),
        };
        engine.begin().await?;
        Ok(engine)
    }
}

impl Engine {
    /// Picks up what an earlier run left (accepted messages not applied),
    /// then starts the periodic work: the resume sweep and the timer poller.
    async fn begin(&self) -> Result<()> {
        self.resume(true).await?;
        self.start_resume_sweeper();
        self.start_timer_poller();
        self.start_feed_pruner();
        self.start_retention();
        Ok(())
    }
}

/// What an engine is made from: given to the builder, or made from the settings.
struct Inputs {
    settings: Settings,
    flow: Arc<Flows>,
    model: Arc<dyn Model>,
    db: Database,
    /// Whether the engine opened the database (and so closes it).
    owns_db: bool,
    sender: Arc<dyn Sender>,
    middleware: Option<Arc<dyn Middleware>>,
    numbers: Arc<Numbers>,
    templates: Arc<Templates>,
}

impl EngineBuilder {
    async fn inputs(self) -> Result<Inputs> {
        let settings = self.settings;
        let numbers = Arc::new(Numbers::from_settings(&settings));
        let default = Arc::new(match self.flow {
            Some(f) => f,
            None => Flow::load(&settings.flow.path)?,
        });
        let flow = Arc::new(Flows::load(default, &settings.flow.path, numbers.clone())?);
        // A flow may only name templates its numbers have, with their parameter counts.
        let templates = Arc::new(Templates::new(&settings.whatsapp, numbers.clone()));
        templates.check_flows(&flow)?;
        let model = match self.model {
            Some(m) => m,
            None => crate::ai::build_model(&settings.ai).map_err(|e| Error::InvalidInput(e.to_string()))?,
        };
        let (db, owns_db) = match self.db {
            Some(db) => (db, false),
            None => (Database::open(&settings.database).await?, true),
        };
        let sender = self
            .sender
            .unwrap_or_else(|| crate::whatsapp::cloud_api::build(&settings.whatsapp, &numbers));
        Ok(Inputs {
            settings,
            flow,
            model,
            db,
            owns_db,
            sender,
            middleware: self.middleware,
            numbers,
            templates,
        })
    }
}

/// What the actors, the dispatcher and the handle share: counters,
/// breakers, the event fan-out and the outbox's send queue.
struct Parts {
    /// Counted by the session actors and the handle, read by the handle.
    stats: Arc<EngineStats>,
    /// Counted by the writer, read by the handle.
    writer_stats: Arc<WriterStats>,
    /// Counted by the AI actor, read by the handle.
    ai_stats: Arc<AiStats>,
    /// Counted by the supervisor, read by the handle.
    supervisor_stats: Arc<SupervisorStats>,
    /// Cloned (sharing state) into the AI actor, the supervisor and the handle.
    ai_breaker: CircuitBreaker,
    /// Cloned (sharing state) into the dispatcher and the supervisor.
    outbound_breakers: OutboundBreakers,
    /// Filled by the writer at commit, emptied by the dispatcher.
    send_queue: Arc<SendQueue>,
    /// A broadcast: the breakers, the session actors and presence publish,
    /// every SSE subscriber reads its own copy.
    events: broadcast::Sender<Event>,
    /// The team's webhooks: rows added by the session actors, posted by the dispatcher.
    webhooks: Arc<crate::webhooks::Webhooks>,
    /// The flows' backend calls, made by the session actors; read by the handle.
    actions: Arc<crate::actions::Actions>,
}

impl Parts {
    /// What the actor thread's actors are made of.
    fn for_actors(&self, db: &Database, settings: &Settings, model: Arc<dyn Model>, instance: i64) -> ActorParts {
        ActorParts {
            db: db.clone(),
            settings: settings.clone(),
            model,
            lease: Lease {
                holder: instance,
                millis: i64::try_from(settings.engine.inbox_lease_ms).unwrap_or(i64::MAX),
            },
            send_queue: self.send_queue.clone(),
            ai_breaker: self.ai_breaker.clone(),
            outbound_breakers: self.outbound_breakers.clone(),
            writer_stats: self.writer_stats.clone(),
            ai_stats: self.ai_stats.clone(),
            supervisor_stats: self.supervisor_stats.clone(),
            webhooks: self.webhooks.clone(),
            action_breakers: self.actions.breakers(),
        }
    }

    fn new(settings: &Settings, numbers: &Arc<Numbers>, flows: &Flows) -> Result<Self> {
        let ai_breaker = CircuitBreaker::new("ai", settings.ai.breaker.clone());
        let outbound_breakers = OutboundBreakers::new(&settings.outbox.breaker, numbers);
        let actions = crate::actions::Actions::new(flows, &settings.integrations, settings.engine.inbox_lease_ms)
            .map_err(Error::InvalidInput)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let breakers = std::iter::once(ai_breaker.clone())
            .chain(outbound_breakers.all())
            .chain(actions.breakers());
        for b in breakers {
            let tx: broadcast::Sender<Event> = events.clone();
            b.observe(Box::new(move |name, state| {
                let _ = tx.send(Event::breaker(name, state));
            }));
        }
        Ok(Self {
            stats: Arc::default(),
            writer_stats: Arc::default(),
            ai_stats: Arc::default(),
            supervisor_stats: Arc::default(),
            ai_breaker,
            outbound_breakers,
            send_queue: Arc::new(SendQueue::new(&settings.outbox)),
            events,
            webhooks: Arc::new(crate::webhooks::Webhooks::new(&settings.integrations, numbers.clone())),
            actions: Arc::new(actions),
        })
    }

    /// Starts the outbox dispatcher: its rounds run until `until`, each
    /// `spawn`ed on the actor thread.
    fn dispatcher(
        &self,
        db: &Database,
        sender: Arc<dyn Sender>,
        numbers: &Arc<Numbers>,
        settings: &Settings,
        until: impl std::future::Future<Output = ()> + Send + 'static,
        spawn: impl FnOnce(futures_util::future::BoxFuture<'static, ()>),
    ) -> Dispatcher {
        Dispatcher::start(
            db.clone(),
            self.outbound(sender, numbers, settings.outbox.concurrency),
            settings.outbox.clone(),
            self.outbound_breakers.clone(),
            self.send_queue.clone(),
            until,
            spawn,
        )
    }

    /// What the dispatcher sends through: `sender` to WhatsApp from the
    /// conversations' `numbers`, the poster to the team's webhooks.
    fn outbound(&self, sender: Arc<dyn Sender>, numbers: &Arc<Numbers>, sends: usize) -> Outbound {
        Outbound {
            sender,
            numbers: numbers.clone(),
            webhooks: Arc::new(crate::webhooks::post::Poster::new(&self.webhooks, sends)),
        }
    }
}

/// Completes once stop was asked and nothing is in flight any more: from
/// then on no step of this process commits a reply, so the dispatcher may
/// finish its sends and stop.
fn quiesced(
    life: &Lifecycle,
    in_flight: &watch::Sender<usize>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let stop = life.cancelled();
    let mut idle = in_flight.subscribe();
    async move {
        stop.await;
        let _ = idle.wait_for(|n| *n == 0).await;
    }
}

/// The background tasks beside the dispatcher: the presence connection
/// (liveness, shared events) and, unless turned off, the media fetcher.
/// Returns the fetcher's counters.
fn spawn_background(
    actors: &ActorThread,
    life: &Lifecycle,
    db: &Database,
    settings: &Settings,
    numbers: &Arc<Numbers>,
    instance: i64,
    events: &broadcast::Sender<Event>,
) -> Arc<MediaStats> {
    let presence_url =
        crate::db::tcp::with_dead_peer_detection(db.url().expose(), settings.database.tcp_user_timeout_s);
    actors.spawn(life.track(presence::run(
        crate::config::Secret::new(presence_url),
        instance,
        events.clone(),
        settings.engine.share_events,
        life.child_token(),
    )));
    let media = Arc::new(MediaStats::default());
    if settings.media.download {
        let fetcher = Fetcher::new(db.clone(), numbers.clone(), settings, media.clone());
        actors.spawn(life.track(media::run(fetcher, life.child_token())));
    }
    media
}
