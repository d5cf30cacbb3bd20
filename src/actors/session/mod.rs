//! The session actor: one per conversation. It holds the conversation's state
//! and version in memory and applies its messages one at a time — each
//! handler is an `AtomicResponse`, so the next message waits until the model
//! call *and* the database write of this one are done (two webhooks for one
//! phone cannot race inside a process; the version column catches a race
//! across processes).
//!
//! A crash (an error that retries cannot fix, or a panic) restarts the
//! actor from the database; the supervisor quarantines a message that keeps
//! crashing it, so one poison message never blocks a conversation.
//!
//! - [`messages`]: what the engine sends the actor;
//! - `state`: the conversation in memory and how it is loaded;
//! - `inbound`: the step pipeline of inbound messages (chains, crashes);
//! - `writes`: the versioned writes and their one conflict-retry loop;
//! - `agent`: what a human agent writes (a message, the hand-off);
//! - `actions`: the flow's calls to the team's backend, inside a step.

mod actions;
mod agent;
mod inbound;
pub mod messages;
mod state;
mod step;
mod time;
mod writes;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use scoped_futures::ScopedFutureExt;

pub use messages::{
    AgentAck, AgentContent, AgentSend, Apply, ConversationView, DueTimer, Erase, Fire, Read, SetHandoff, Stop, Wake,
};

use self::agent::{agent_send, set_handoff};
use self::inbound::run_inbound;
use self::state::{ensure_core, view, Core};
use super::ai::AiActor;
use super::db_writer::DbWriter;
use super::middleware::Middleware;
use super::stats::EngineStats;
use super::supervisor::Supervisor;
use crate::config::EngineSettings;
use crate::db::resume::PendingInbound;
use crate::db::Database;
use crate::error::Result;
use crate::events::Event;
use crate::flow::Flows;

/// What a session actor asks of the registry that started it: to be let go
/// when idle. A narrow trait, held weakly: the registry owns every actor's
/// dependencies, so a strong reference back would be a cycle that keeps the
/// engine (and its database) alive after shutdown.
pub(crate) trait Passivation: Send + Sync {
    /// Removes actor `id` of `phone` if nothing is pending for it; the
    /// actor stops when this returns true.
    fn try_passivate(&self, phone: &str, id: u64) -> bool;
}

/// Inbound messages waiting for one actor, in mailbox order. The engine
/// pushes each message here when it puts its `Apply` in the mailbox; the
/// actor takes all that wait and applies them as one chain, committed
/// together. An `Apply` whose message a chain already took finds it
/// applied and answers at once.
pub(crate) type Inbound = Arc<Mutex<VecDeque<PendingInbound>>>;

/// What every session actor shares.
pub(crate) struct SessionDeps {
    pub db: Database,
    /// Each conversation's flow, by its business number.
    pub flows: Arc<Flows>,
    pub ai: Addr<AiActor>,
    pub writer: Addr<DbWriter>,
    pub supervisor: Addr<Supervisor>,
    pub events: tokio::sync::broadcast::Sender<Event>,
    pub settings: EngineSettings,
    pub stats: Arc<EngineStats>,
    /// Weak: see [`Passivation`].
    pub registry: Weak<dyn Passivation>,
    pub middleware: Option<Arc<dyn Middleware>>,
    /// This engine instance: the holder of the inbox leases it takes.
    pub instance: i64,
    /// Marks the messages the bot takes up read; shared with `/metrics`.
    pub receipts: Arc<crate::whatsapp::read_receipts::ReadReceipts>,
    /// The templates each conversation may send.
    pub templates: Arc<crate::whatsapp::templates::Templates>,
    /// The team's webhooks: each write gets a row per event they subscribed to.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// The flows' calls to the team's backend.
    pub actions: Arc<crate::actions::Actions>,
}

pub struct SessionActor {
    phone: String,
    id: u64,
    deps: Arc<SessionDeps>,
    inbound: Inbound,
    core: Option<Core>,
    last_active: Instant,
}

impl SessionActor {
    pub(crate) fn new(phone: String, id: u64, deps: Arc<SessionDeps>, inbound: Inbound) -> Self {
        Self {
            phone,
            id,
            deps,
            inbound,
            core: None,
            last_active: Instant::now(),
        }
    }

    /// Runs `work` with the core taken out, atomically (no other message is
    /// handled until it completes), and puts the core back.
    fn atomic<R: 'static>(
        &mut self,
        work: impl FnOnce(
            Arc<SessionDeps>,
            String,
            Option<Core>,
        ) -> futures_util::future::BoxFuture<'static, (Option<Core>, R)>,
    ) -> AtomicResponse<Self, R> {
        let core = self.core.take();
        let fut = work(self.deps.clone(), self.phone.clone(), core);
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|(core, r), act, _| {
            act.core = core;
            act.last_active = Instant::now();
            r
        })))
    }
}

impl SessionActor {
    /// [`SessionActor::atomic`] with the session loaded (created if new)
    /// before `work` runs.
    fn atomic_loaded<R: Send + 'static>(
        &mut self,
        work: impl FnOnce(Arc<SessionDeps>, String, Core) -> futures_util::future::BoxFuture<'static, (Core, Result<R>)>
            + Send
            + 'static,
    ) -> AtomicResponse<Self, Result<R>> {
        self.atomic(|deps, phone, core| {
            async move {
                match ensure_core(&deps, &phone, core).await {
                    Ok(c) => {
                        let (c, r) = work(deps, phone, c).await;
                        (Some(c), r)
                    }
                    Err(e) => (None, Err(e)),
                }
            }
            .boxed()
        })
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The registry bounds the mailbox and keeps it FIFO; actix's own
        // bound sits just above, so senders never park inside actix.
        ctx.set_mailbox_capacity(self.deps.settings.mailbox_capacity.max(1) + 8);
        let ttl = Duration::from_secs(self.deps.settings.idle_ttl_s.max(1));
        // Check twice per TTL: an idle actor lives between 1 and 1.5 TTLs.
        ctx.run_interval(ttl / 2, move |act, ctx| {
            if act.last_active.elapsed() >= ttl
                && act
                    .deps
                    .registry
                    .upgrade()
                    .is_some_and(|r| r.try_passivate(&act.phone, act.id))
            {
                ctx.stop();
            }
        });
    }
}

impl Handler<Apply> for SessionActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: Apply, _: &mut Context<Self>) -> Self::Result {
        let inbound = self.inbound.clone();
        self.atomic(|deps, phone, core| {
            async move { run_inbound(&deps, &phone, core, Some(msg.0), &inbound).await }.boxed()
        })
    }
}

impl Handler<Wake> for SessionActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, _: Wake, _: &mut Context<Self>) -> Self::Result {
        let inbound = self.inbound.clone();
        self.atomic(|deps, phone, core| async move { run_inbound(&deps, &phone, core, None, &inbound).await }.boxed())
    }
}

impl Handler<AgentSend> for SessionActor {
    type Result = AtomicResponse<Self, Result<AgentAck>>;

    fn handle(&mut self, msg: AgentSend, _: &mut Context<Self>) -> Self::Result {
        self.atomic_loaded(move |deps, phone, mut core| {
            async move {
                let r = agent_send(&deps, &phone, &mut core, msg).await;
                (core, r)
            }
            .boxed()
        })
    }
}

impl Handler<Fire> for SessionActor {
    type Result = AtomicResponse<Self, Result<()>>;

    /// The conversation's accepted messages go first (those waiting here,
    /// and any left unprocessed, as a wake-up would find them): a timer
    /// fires only after every message accepted before it was applied, so
    /// an answer that cancels it wins.
    fn handle(&mut self, msg: Fire, _: &mut Context<Self>) -> Self::Result {
        let inbound = self.inbound.clone();
        self.atomic(|deps, phone, core| {
            async move {
                let (core, applied) = run_inbound(&deps, &phone, core, None, &inbound).await;
                let Some(mut core) = core else { return (None, applied) };
                if applied.is_err() {
                    // Left for later (the timer is claimed again after its lease).
                    return (Some(core), applied);
                }
                let r = time::fire_timer(&deps, &phone, &mut core, msg.0).await;
                (Some(core), r)
            }
            .boxed()
        })
    }
}

impl Handler<SetHandoff> for SessionActor {
    type Result = AtomicResponse<Self, Result<ConversationView>>;

    fn handle(&mut self, msg: SetHandoff, _: &mut Context<Self>) -> Self::Result {
        self.atomic_loaded(move |deps, phone, mut core| {
            async move {
                let r = set_handoff(&deps, &phone, &mut core, msg).await;
                (core, r)
            }
            .boxed()
        })
    }
}

impl Handler<Erase> for SessionActor {
    type Result = AtomicResponse<Self, Result<crate::db::erasure::Erased>>;

    fn handle(&mut self, msg: Erase, _: &mut Context<Self>) -> Self::Result {
        self.atomic(move |deps, phone, core| {
            async move {
                let by = msg.by.as_deref();
                let contact = msg.contact.as_str();
                let erased = deps
                    .db
                    .run("erase_contact", |c| {
                        crate::db::erasure::erase(c, &phone, contact, by).scope_boxed()
                    })
                    .await
                    .map_err(crate::error::Error::from);
                // Erased: the next message starts a new conversation, loaded
                // afresh. Not erased: nothing changed.
                let core = if erased.is_ok() { None } else { core };
                (core, erased)
            }
            .boxed()
        })
    }
}

impl Handler<Read> for SessionActor {
    type Result = AtomicResponse<Self, Result<ConversationView>>;

    fn handle(&mut self, _: Read, _: &mut Context<Self>) -> Self::Result {
        self.atomic_loaded(|_, phone, core| {
            let v = view(&phone, &core);
            futures_util::future::ready((core, Ok(v))).boxed()
        })
    }
}

impl Handler<Stop> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// A caught panic's message, for the crash report.
pub(super) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("panic: {msg}")
}
