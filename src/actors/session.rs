//! The session actor: one per phone. It holds the conversation's state and
//! version in memory and applies its messages one at a time — each handler
//! is an `AtomicResponse`, so the next message waits until the model call
//! *and* the database write of this one are done (seed 004's race cannot
//! happen inside a process; the version column catches it across processes).
//!
//! A crash (an error that retries cannot fix, or a panic) restarts the
//! actor from the database; the supervisor quarantines a message that keeps
//! crashing it, so one poison message never blocks a conversation.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;
use serde::Serialize;
use serde_json::{json, Value};

use super::ai::{AiActor, Understand};
use super::db_writer::{DbWriter, Persist};
use super::registry::Registry;
use super::supervisor::{CrashDecision, Crashed, Supervisor};
use crate::ai::{candidates, SlotRequest};
use crate::db::sessions::SessionRecord;
use crate::db::steps::{self, NewMessage, NewOutbox, NewOutcome, PendingInbound, StepWrite, WriteOutcome};
use crate::db::Database;
use crate::engine::{inbound_text, EngineSettings, EngineStats, Event, EventKind, EventMessage, Middleware};
use crate::error::{Error, Result};
use crate::flow::{self, Flow, StepResult};
use crate::phone::mask;

/// Inbox ids remembered per actor to skip a message already applied
/// (a resumed row whose mailbox copy arrives later).
const RECENT_CAPACITY: usize = 1024;
/// Unprocessed inbox rows fetched per resume round.
const RESUME_BATCH: i64 = 500;

/// Inbound messages waiting for one actor, in mailbox order. The engine
/// pushes each message here when it puts its `Apply` in the mailbox; the
/// actor takes all that wait and applies them as one chain, committed
/// together. An `Apply` whose message a chain already took finds it
/// applied and answers at once.
pub(crate) type Inbound = Arc<Mutex<VecDeque<PendingInbound>>>;

/// What every session actor shares.
pub(crate) struct SessionDeps {
    pub db: Database,
    pub flow: Arc<Flow>,
    pub ai: Addr<AiActor>,
    pub writer: Addr<DbWriter>,
    pub supervisor: Addr<Supervisor>,
    pub events: tokio::sync::broadcast::Sender<Event>,
    pub settings: EngineSettings,
    pub stats: Arc<EngineStats>,
    pub registry: Registry,
    pub middleware: Option<Arc<dyn Middleware>>,
    /// This engine instance: the holder of the inbox leases it takes.
    pub instance: i64,
}

/// A conversation as its actor knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationView {
    pub phone: String,
    pub flow_state: String,
    pub data: Value,
    pub version: i64,
    pub handoff: bool,
}

/// The in-memory state; taken out of the actor while a handler runs.
#[derive(Debug, Clone)]
struct Core {
    state: String,
    data: Value,
    version: i64,
    handoff: bool,
    recent: VecDeque<i64>,
}

impl Core {
    fn remember(&mut self, inbox_id: i64) {
        if self.recent.len() >= RECENT_CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(inbox_id);
    }
}

// ---- messages -------------------------------------------------------------

/// Apply one accepted inbound message.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<()>")]
pub struct Apply(pub PendingInbound);

/// Load the session and apply any unprocessed inbox rows (resume).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<()>")]
pub struct Wake;

/// Send a message written by a human agent.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<AgentAck>")]
pub struct AgentSend {
    pub body: String,
    /// Makes a retried request harmless: the same key is stored once.
    pub idempotency_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentAck {
    pub version: i64,
    pub idempotency_key: String,
    /// False when this key had been stored already.
    pub created: bool,
}

/// Give the conversation to a human agent (`true`) or back to the bot.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<ConversationView>")]
pub struct SetHandoff(pub bool);

/// Read the conversation, after every message queued before this one.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<ConversationView>")]
pub struct Read;

/// Stop (passivation or eviction). Sent only when nothing is pending.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Stop;

// ---- the actor ------------------------------------------------------------

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
            if act.last_active.elapsed() >= ttl && act.deps.registry.try_passivate(&act.phone, act.id) {
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

impl Handler<SetHandoff> for SessionActor {
    type Result = AtomicResponse<Self, Result<ConversationView>>;

    fn handle(&mut self, msg: SetHandoff, _: &mut Context<Self>) -> Self::Result {
        let on = msg.0;
        self.atomic_loaded(move |deps, phone, mut core| {
            async move {
                let r = set_handoff(&deps, &phone, &mut core, on).await;
                (core, r)
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

// ---- the work -------------------------------------------------------------

fn view(phone: &str, c: &Core) -> ConversationView {
    ConversationView {
        phone: phone.to_string(),
        flow_state: c.state.clone(),
        data: c.data.clone(),
        version: c.version,
        handoff: c.handoff,
    }
}

/// The core, loading (creating) the session if this actor has none yet.
async fn ensure_core(deps: &SessionDeps, phone: &str, core: Option<Core>) -> Result<Core> {
    match core {
        Some(c) => Ok(c),
        None => load_core(deps, phone, VecDeque::new()).await,
    }
}

/// The session as stored; a phone without one starts in the flow's initial
/// state at version 0 (its first step creates the row: no commit here).
async fn load_core(deps: &SessionDeps, phone: &str, recent: VecDeque<i64>) -> Result<Core> {
    Ok(core_of(deps, deps.db.load_session(phone).await?, recent))
}

/// The core and the phone's waiting inbox rows, in one round trip (an
/// activation, or a restart after a crash).
async fn load_core_and_unprocessed(
    deps: &SessionDeps,
    phone: &str,
    recent: VecDeque<i64>,
) -> Result<(Core, Vec<PendingInbound>)> {
    let (record, rows) = deps
        .db
        .load_session_and_unprocessed(phone, deps.instance, RESUME_BATCH)
        .await?;
    Ok((core_of(deps, record, recent), rows))
}

fn core_of(deps: &SessionDeps, record: Option<SessionRecord>, recent: VecDeque<i64>) -> Core {
    match record {
        Some(s) => Core {
            state: s.flow_state,
            data: s.data,
            version: s.version,
            handoff: s.handoff,
            recent,
        },
        None => Core {
            state: deps.flow.initial.clone(),
            data: json!({}),
            version: 0,
            handoff: false,
            recent,
        },
    }
}

/// For a write on version 0: the state to create a missing session in.
fn create_as(deps: &SessionDeps, expected_version: i64) -> Option<String> {
    (expected_version == 0).then(|| deps.flow.initial.clone())
}

async fn fetch_unprocessed(deps: &SessionDeps, phone: &str) -> Result<Vec<PendingInbound>> {
    deps.db
        .retry_policy()
        .run("unprocessed", || async {
            steps::unprocessed(&mut *deps.db.pool().get().await?, phone, deps.instance, RESUME_BATCH).await
        })
        .await
}

/// Applies `first` (if any), the messages waiting in `inbound`, and, after
/// a (re)start, every unprocessed inbox row of the phone — in acceptance
/// order, several at a time as one chain when they queue up. Crashes
/// restart from the database.
async fn run_inbound(
    deps: &SessionDeps,
    phone: &str,
    core: Option<Core>,
    first: Option<PendingInbound>,
    inbound: &Inbound,
) -> (Option<Core>, Result<()>) {
    let mut queue: VecDeque<PendingInbound> = VecDeque::new();
    let mut core = match core {
        Some(c) => match first {
            // A mailbox copy of a row this actor already applied (in a
            // chain, or while resuming): nothing to do but what waits.
            Some(f) if c.recent.contains(&f.id) => c,
            Some(f) => {
                queue.push_back(f);
                c
            }
            // A wake-up (resume sweep, replayed dead letter): look for work.
            None => match fetch_unprocessed(deps, phone).await {
                Ok(rows) => {
                    queue.extend(rows);
                    c
                }
                Err(e) => return (Some(c), Err(e)),
            },
        },
        None => {
            // Activation: load, and resume whatever is waiting (it includes `first`).
            let (c, rows) = match load_core_and_unprocessed(deps, phone, VecDeque::new()).await {
                Ok(loaded) => loaded,
                Err(e) => return (None, Err(e)),
            };
            queue.extend(rows);
            if let Some(f) = first {
                if !queue.iter().any(|p| p.id == f.id) {
                    queue.push_back(f);
                }
            }
            c
        }
    };
    // Everything else waiting in the mailbox, in order (its `Apply`
    // messages will find it applied). Rows read from the inbox are
    // unprocessed by definition; the rest needs the check.
    let waiting: Vec<PendingInbound> = inbound.lock().map(|mut q| q.drain(..).collect()).unwrap_or_default();
    for p in waiting {
        if !core.recent.contains(&p.id) && !queue.iter().any(|q| q.id == p.id) {
            queue.push_back(p);
        }
    }
    let chain_max = deps.settings.group_commit.max_batch.max(1);
    // Messages at the front to apply one at a time (after a chain stopped
    // on a conflict, a duplicate or a crash).
    let mut singles = 0usize;
    while !queue.is_empty() {
        let (id, reason) = if singles == 0 && queue.len() > 1 && chain_max > 1 {
            let n = queue.len().min(chain_max);
            let chain: Vec<PendingInbound> = queue.drain(..n).collect();
            let outcome = std::panic::AssertUnwindSafe(apply_chain(deps, phone, &mut core, chain.clone()))
                .catch_unwind()
                .await;
            match outcome {
                Ok(Ok(end)) => {
                    let crashed = end.crash.and_then(|reason| end.rest.first().map(|m| (m.id, reason)));
                    // The first one not committed goes the careful way.
                    singles = usize::from(!end.rest.is_empty());
                    for p in end.rest.into_iter().rev() {
                        queue.push_front(p);
                    }
                    match crashed {
                        Some(c) => c,
                        None => continue,
                    }
                }
                Ok(Err(e)) if e.is_retryable() => return (Some(core), Err(e)),
                _ => {
                    // The commit itself failed: find which message fails, one
                    // at a time, from the database's state.
                    core = match load_core(deps, phone, std::mem::take(&mut core.recent)).await {
                        Ok(c) => c,
                        Err(e) => return (None, Err(e)),
                    };
                    singles = chain.len();
                    for p in chain.into_iter().rev() {
                        queue.push_front(p);
                    }
                    continue;
                }
            }
        } else {
            singles = singles.saturating_sub(1);
            let Some(item) = queue.pop_front() else { break };
            let id = item.id;
            let outcome = std::panic::AssertUnwindSafe(apply_inbound(deps, phone, &mut core, item))
                .catch_unwind()
                .await;
            match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(e)) if e.is_retryable() => {
                    // The database is unreachable beyond the retry budget: leave the
                    // row in the inbox (resumed later) and report it.
                    return (Some(core), Err(e));
                }
                Ok(Err(e)) => (id, e.to_string()),
                Err(panic) => (id, panic_text(panic.as_ref())),
            }
        };
        // A crash: let the supervisor decide, restart from the database, resume.
        let decision = deps
            .supervisor
            .send(Crashed {
                phone: phone.to_string(),
                inbox_id: id,
                reason,
            })
            .await;
        let quarantined = match decision {
            Ok(Ok(CrashDecision::Retry { .. })) => false,
            Ok(Ok(CrashDecision::Quarantined)) => true,
            Ok(Err(e)) => return (None, Err(e)),
            Err(e) => return (None, Err(Error::Unavailable(format!("supervisor: {e}")))),
        };
        let rows;
        (core, rows) = match load_core_and_unprocessed(deps, phone, std::mem::take(&mut core.recent)).await {
            Ok(loaded) => loaded,
            Err(e) => return (None, Err(e)),
        };
        if quarantined {
            // Its mailbox copy, if any, must not crash the actor again.
            core.remember(id);
        }
        queue = rows.into();
        singles = 0;
    }
    (Some(core), Ok(()))
}

/// How a chain ended.
struct ChainEnd {
    /// The messages not committed, in order.
    rest: Vec<PendingInbound>,
    /// Why the first of `rest` crashed while being stepped (it and the rest
    /// were not sent to the database; those before it were committed).
    crash: Option<String>,
}

/// Applies several queued messages of the phone as one chain: each is
/// understood and stepped on the state the one before leaves, and all are
/// committed in one transaction. Returns the messages not committed: from
/// the first that met a conflict or a duplicate, or that crashed while
/// being stepped (those before a crash are committed without it).
async fn apply_chain(deps: &SessionDeps, phone: &str, core: &mut Core, chain: Vec<PendingInbound>) -> Result<ChainEnd> {
    let mut at = Snapshot::of(core);
    let mut steps = Vec::with_capacity(chain.len());
    let mut writes = Vec::with_capacity(chain.len());
    let mut crash = None;
    for msg in &chain {
        let text = inbound_text(&msg.payload);
        let stepped = std::panic::AssertUnwindSafe(async {
            if let Some(m) = &deps.middleware {
                m.before_step(phone, &text)?;
            }
            Ok::<_, String>(understand_and_step(deps, &at, &text, msg.id).await)
        })
        .catch_unwind()
        .await;
        let result = match stepped {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                crash = Some(Error::Processing(e).to_string());
                break;
            }
            Err(panic) => {
                crash = Some(panic_text(panic.as_ref()));
                break;
            }
        };
        let mut write = inbound_write(phone, at.version, msg, &text, &result);
        write.create_as = create_as(deps, at.version);
        writes.push(write);
        at = Snapshot {
            state: result.state.clone(),
            data: result.data.clone(),
            handoff: result.handoff,
            version: at.version + 1,
        };
        steps.push((text, result));
    }
    let (total, stepped) = (chain.len(), writes.len());
    let outcomes = deps
        .writer
        .send(Persist(writes))
        .await
        .map_err(|e| Error::Unavailable(format!("DB writer: {e}")))??;
    let mut rest = Vec::new();
    let mut steps = steps.into_iter();
    let mut outcomes = outcomes.into_iter();
    for msg in chain {
        match (steps.next(), outcomes.next()) {
            (Some((text, result)), Some(WriteOutcome::Committed { version })) if rest.is_empty() => {
                committed(deps, phone, core, version, result, &msg, &text);
            }
            _ => rest.push(msg),
        }
    }
    // A crash is the first of `rest`'s only when every step before it committed.
    if rest.len() > total - stepped {
        crash = None;
    }
    tracing::debug!(phone = %mask(phone), version = core.version, left = rest.len(), "chain applied");
    Ok(ChainEnd { rest, crash })
}

/// A step of `msg` committed at `version`: count it, publish it, and make
/// its result the actor's state.
fn committed(
    deps: &SessionDeps,
    phone: &str,
    core: &mut Core,
    version: i64,
    result: StepResult,
    msg: &PendingInbound,
    text: &str,
) {
    deps.stats.processed.fetch_add(1, Ordering::Relaxed);
    publish(deps, phone, version, &result, msg, text);
    core.state = result.state;
    core.data = result.data;
    core.handoff = result.handoff;
    core.version = version;
    core.remember(msg.id);
}

/// The part of a conversation a step reads.
struct Snapshot {
    state: String,
    data: Value,
    handoff: bool,
    version: i64,
}

impl Snapshot {
    fn of(c: &Core) -> Self {
        Self {
            state: c.state.clone(),
            data: c.data.clone(),
            handoff: c.handoff,
            version: c.version,
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("panic: {msg}")
}

/// Applies one inbound message: understand, step the flow, commit — and on
/// a version conflict reload and run the transition again on fresh state.
async fn apply_inbound(deps: &SessionDeps, phone: &str, core: &mut Core, msg: PendingInbound) -> Result<()> {
    let text = inbound_text(&msg.payload);
    if let Some(m) = &deps.middleware {
        m.before_step(phone, &text).map_err(Error::Processing)?;
    }
    let retries = deps.settings.conflict_retries;
    let policy = deps.db.retry_policy();
    for attempt in 0..=retries {
        let result = understand_and_step(deps, &Snapshot::of(core), &text, msg.id).await;
        let mut write = inbound_write(phone, core.version, &msg, &text, &result);
        write.create_as = create_as(deps, core.version);
        let answer = persist_one(deps, write).await?;
        match answer {
            Ok(WriteOutcome::Committed { version }) => {
                let replies = result.replies.len();
                committed(deps, phone, core, version, result, &msg, &text);
                tracing::debug!(phone = %mask(phone), version, replies, "message applied");
                return Ok(());
            }
            Ok(WriteOutcome::AlreadyProcessed) => {
                deps.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                *core = load_core(deps, phone, std::mem::take(&mut core.recent)).await?;
                core.remember(msg.id);
                return Ok(());
            }
            Ok(WriteOutcome::Conflict { actual }) => {
                deps.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(phone = %mask(phone), expected = core.version, ?actual, attempt, "version conflict; re-running on fresh state");
                *core = load_core(deps, phone, std::mem::take(&mut core.recent)).await?;
            }
            Err(e) if e.is_retryable() && attempt < retries => {}
            Err(e) => return Err(e),
        }
        deps.stats.retries.fetch_add(1, Ordering::Relaxed);
        let pause = policy.delay(attempt, &mut rand::rng());
        tokio::time::sleep(pause).await;
    }
    Err(Error::Processing(format!("gave up after {} conflicts", retries + 1)))
}

/// Commits one write alone (a chain of one).
async fn persist_one(deps: &SessionDeps, write: StepWrite) -> Result<Result<WriteOutcome>> {
    let answer = deps
        .writer
        .send(Persist(vec![write]))
        .await
        .map_err(|e| Error::Unavailable(format!("DB writer: {e}")))?;
    Ok(answer.and_then(|mut o| {
        o.pop()
            .ok_or_else(|| Error::Unavailable("DB writer: no outcome".into()))
    }))
}

async fn understand_and_step(deps: &SessionDeps, core: &Snapshot, text: &str, inbox_id: i64) -> StepResult {
    let flow = &deps.flow;
    let mut understanding = flow::Understanding::default();
    if !core.handoff {
        let needs = flow.needs(&core.state);
        let request = Understand {
            text: text.to_string(),
            intents: candidates(flow, &needs.intents),
            global_count: flow.global.len(),
            slot: needs.slot.map(|s| SlotRequest {
                text: text.to_string(),
                name: s.name.clone(),
                pattern: s.pattern.as_ref().map(|p| p.as_str().to_string()),
                min_len: s.min_len,
                max_len: s.max_len,
            }),
        };
        understanding = match deps.ai.send(request).await {
            Ok(u) => u.understanding,
            // The AI actor is gone: the rules inside the flow still apply.
            Err(_) => flow::Understanding::default(),
        };
    }
    flow::step(
        flow,
        &core.state,
        &core.data,
        core.handoff,
        &understanding,
        &format!("R{inbox_id}"),
    )
}

fn inbound_write(phone: &str, expected_version: i64, msg: &PendingInbound, text: &str, r: &StepResult) -> StepWrite {
    let mut messages = vec![NewMessage {
        phone: phone.to_string(),
        direction: "in",
        origin: "user",
        body: text.to_string(),
        inbox_id: Some(msg.id),
        provider_message_id: Some(msg.provider_message_id.clone()),
        status: "received",
        outbox_key: None,
    }];
    let mut outbox = Vec::new();
    for (i, reply) in r.replies.iter().enumerate() {
        let key = format!("in:{}:{i}", msg.id);
        messages.push(NewMessage {
            phone: phone.to_string(),
            direction: "out",
            origin: "bot",
            body: reply.text.clone(),
            inbox_id: Some(msg.id),
            provider_message_id: None,
            status: "queued",
            outbox_key: Some(key.clone()),
        });
        outbox.push(NewOutbox {
            phone: phone.to_string(),
            kind: if reply.choices.is_empty() {
                "text"
            } else {
                "interactive"
            },
            payload: json!({"text": reply.text, "choices": reply.choices}),
            idempotency_key: key,
        });
    }
    StepWrite {
        phone: phone.to_string(),
        expected_version,
        create_as: None,
        flow_state: r.state.clone(),
        data: r.data.clone(),
        handoff: r.handoff,
        inbox_id: Some(msg.id),
        dedupe_key: None,
        messages,
        outbox,
        outcomes: r
            .outcome
            .iter()
            .map(|o| NewOutcome {
                phone: phone.to_string(),
                kind: o.kind.clone(),
                ticket: o.ticket.clone(),
                data: o.data.clone(),
                inbox_id: Some(msg.id),
            })
            .collect(),
    }
}

fn publish(deps: &SessionDeps, phone: &str, version: i64, r: &StepResult, msg: &PendingInbound, inbound: &str) {
    let mut messages = vec![EventMessage {
        origin: "user".into(),
        body: inbound.to_string(),
    }];
    messages.extend(r.replies.iter().map(|m| EventMessage {
        origin: "bot".into(),
        body: m.text.clone(),
    }));
    // Best-effort: no subscriber, or a slow one, never fails a message.
    let _ = deps.events.send(Event {
        kind: EventKind::Transition,
        phone: phone.to_string(),
        version,
        flow_state: r.state.clone(),
        handoff: r.handoff,
        messages,
        provider_message_id: Some(msg.provider_message_id.clone()),
        delivery: None,
        breaker: None,
        relayed: false,
    });
}

/// How a write made by [`write_fresh`] ended.
enum Written {
    Committed {
        version: i64,
    },
    /// Its idempotency key was already stored: applied before.
    AlreadyApplied,
}

/// Commits the write `build` makes from the current state; on a version
/// conflict reloads the session and builds it again (bounded, with backoff).
/// `build` returning `None` means there is nothing to write.
async fn write_fresh(
    deps: &SessionDeps,
    phone: &str,
    core: &mut Core,
    build: impl Fn(&Core) -> Option<StepWrite>,
) -> Result<Option<Written>> {
    let retries = deps.settings.conflict_retries;
    for attempt in 0..=retries {
        let Some(write) = build(core) else { return Ok(None) };
        let answer = persist_one(deps, write).await?;
        match answer {
            Ok(WriteOutcome::Committed { version }) => return Ok(Some(Written::Committed { version })),
            Ok(WriteOutcome::AlreadyProcessed) => {
                *core = load_core(deps, phone, std::mem::take(&mut core.recent)).await?;
                return Ok(Some(Written::AlreadyApplied));
            }
            Ok(WriteOutcome::Conflict { .. }) => {
                deps.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                *core = load_core(deps, phone, std::mem::take(&mut core.recent)).await?;
            }
            Err(e) if e.is_retryable() && attempt < retries => {}
            Err(e) => return Err(e),
        }
        deps.stats.retries.fetch_add(1, Ordering::Relaxed);
        let pause = deps.db.retry_policy().delay(attempt, &mut rand::rng());
        tokio::time::sleep(pause).await;
    }
    Err(Error::Processing(format!("gave up after {} conflicts", retries + 1)))
}

/// A write that changes nothing but what `edit` sets (and the version).
fn same_state(phone: &str, c: &Core) -> StepWrite {
    StepWrite {
        phone: phone.to_string(),
        expected_version: c.version,
        // At version 0 the state is the one a new session starts in.
        create_as: (c.version == 0).then(|| c.state.clone()),
        flow_state: c.state.clone(),
        data: c.data.clone(),
        handoff: c.handoff,
        inbox_id: None,
        dedupe_key: None,
        messages: Vec::new(),
        outbox: Vec::new(),
        outcomes: Vec::new(),
    }
}

/// Stores and queues an agent's message (no flow step), bumping the version.
async fn agent_send(deps: &SessionDeps, phone: &str, core: &mut Core, msg: AgentSend) -> Result<AgentAck> {
    let key = format!("agent:{}", msg.idempotency_key);
    let written = write_fresh(deps, phone, core, |c| {
        let mut w = same_state(phone, c);
        w.dedupe_key = Some(key.clone());
        w.messages.push(NewMessage {
            phone: phone.to_string(),
            direction: "out",
            origin: "agent",
            body: msg.body.clone(),
            inbox_id: None,
            provider_message_id: None,
            status: "queued",
            outbox_key: Some(key.clone()),
        });
        w.outbox.push(NewOutbox {
            phone: phone.to_string(),
            kind: "text",
            payload: json!({"text": msg.body, "choices": []}),
            idempotency_key: key.clone(),
        });
        Some(w)
    })
    .await?;
    let created = matches!(written, Some(Written::Committed { .. }));
    if let Some(Written::Committed { version }) = written {
        core.version = version;
        let _ = deps.events.send(Event {
            kind: EventKind::AgentMessage,
            phone: phone.to_string(),
            version,
            flow_state: core.state.clone(),
            handoff: core.handoff,
            messages: vec![EventMessage {
                origin: "agent".into(),
                body: msg.body.clone(),
            }],
            provider_message_id: None,
            delivery: None,
            breaker: None,
            relayed: false,
        });
    }
    Ok(AgentAck {
        version: core.version,
        idempotency_key: msg.idempotency_key,
        created,
    })
}

/// Hands the conversation to a human agent or back to the bot.
async fn set_handoff(deps: &SessionDeps, phone: &str, core: &mut Core, on: bool) -> Result<ConversationView> {
    let written = write_fresh(deps, phone, core, |c| {
        (c.handoff != on).then(|| StepWrite {
            handoff: on,
            ..same_state(phone, c)
        })
    })
    .await?;
    if let Some(Written::Committed { version }) = written {
        core.version = version;
        core.handoff = on;
        let _ = deps.events.send(Event {
            kind: EventKind::Handoff,
            phone: phone.to_string(),
            version,
            flow_state: core.state.clone(),
            handoff: on,
            messages: Vec::new(),
            provider_message_id: None,
            delivery: None,
            breaker: None,
            relayed: false,
        });
    }
    Ok(view(phone, core))
}
