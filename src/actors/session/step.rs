//! One message, or several queued ones as a chain, through the step:
//! understand, step the flow, commit — and what a committed step changes
//! (the actor's state, the events it publishes).

use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use tracing::Instrument;

use super::state::{create_as, Core, Snapshot};
use super::time::inbound_time;
use super::writes::{customer_at, inbound_write, retry_conflicts, stored_write, welcome_reply, Written};
use super::{panic_text, SessionDeps};
use crate::actors::ai::Understand;
use crate::actors::db_writer::Persist;
use crate::ai::{candidates, SlotRequest};
use crate::db::resume::PendingInbound;
use crate::db::steps::WriteOutcome;
use crate::error::{Error, Result};
use crate::events::{inbound_text, Event, EventKind, EventMessage};
use crate::flow::{self, SlotKind, StepResult};
use crate::phone::mask;
use crate::telemetry;
use crate::whatsapp::kinds;

/// How a chain ended.
pub(super) struct ChainEnd {
    /// The messages not committed, in order.
    pub(super) rest: Vec<PendingInbound>,
    /// Why the first of `rest` crashed while being stepped (it and the rest
    /// were not sent to the database; those before it were committed).
    pub(super) crash: Option<String>,
    /// The first of `rest` was behind this unapplied earlier inbox row.
    pub(super) behind: Option<i64>,
}

/// Applies several queued messages of the phone as one chain: each is
/// understood and stepped on the state the one before leaves, and all are
/// committed in one transaction. Returns the messages not committed: from
/// the first that met a conflict or a duplicate, or that crashed while
/// being stepped (those before a crash are committed without it).
pub(super) async fn apply_chain(
    deps: &SessionDeps,
    phone: &str,
    core: &mut Core,
    chain: Vec<PendingInbound>,
) -> Result<ChainEnd> {
    let mut at = Snapshot::of(core);
    let mut steps = Vec::with_capacity(chain.len());
    let mut writes = Vec::with_capacity(chain.len());
    let mut crash = None;
    // Each message's step on its own trace; the chain's commit under the first.
    let mut spans = Vec::with_capacity(chain.len());
    for msg in &chain {
        let span = step_span(msg);
        if !kinds::is_stepped(&msg.payload) {
            let body = kinds::stored_body(&msg.payload);
            let write = ready(deps, phone, &at, stored_write(deps, phone, &at, msg, &body));
            at.last_customer_at = at.last_customer_at.max(write.time.customer_at);
            writes.push(write);
            steps.push((body, None));
            spans.push(span);
            continue;
        }
        let text = inbound_text(&msg.payload);
        let stepped = guarded_step(deps, phone, &at, &text, msg).instrument(span.clone());
        let mut result = match stepped.await {
            Ok(r) => r,
            Err(why) => {
                crash = Some(why);
                break;
            }
        };
        if result.action.is_some() && (!writes.is_empty() || first_waiting(deps, phone, msg).await.is_some()) {
            // An action calls the backend on committed state only: this
            // message waits for the ones before it to commit (in this chain,
            // or accepted by another process), then goes alone.
            break;
        }
        call_actions(deps, phone, &mut result, msg)
            .instrument(span.clone())
            .await;
        let time = inbound_time(deps, phone, at.handoff, &result, msg);
        let customer_at = time.customer_at.max(at.last_customer_at);
        let mut write = ready(deps, phone, &at, inbound_write(phone, &at, msg, &text, &result, time));
        write.traced(telemetry::traceparent(&span));
        writes.push(write);
        spans.push(span);
        at = Snapshot {
            state: result.state.clone(),
            data: result.data.clone(),
            handoff: result.handoff,
            version: at.version + 1,
            last_customer_at: customer_at,
            last_step_at: Some(chrono::Utc::now()),
        };
        steps.push((text, Some(result)));
    }
    let (total, stepped) = (chain.len(), writes.len());
    let first = spans.first().and_then(tracing::Span::id);
    let commit = tracing::info_span!(target: telemetry::TARGET, parent: first, "commit", steps = stepped);
    let outcomes = deps
        .writer
        .send(Persist(writes))
        .instrument(commit)
        .await
        .map_err(|e| Error::Unavailable(format!("DB writer: {e}")))??;
    let behind = outcomes.iter().find_map(|o| match o {
        WriteOutcome::Behind { earlier } => Some(*earlier),
        _ => None,
    });
    let rest = settle(deps, phone, core, chain, steps, outcomes);
    // A crash is the first of `rest`'s only when every step before it committed.
    if rest.len() > total - stepped {
        crash = None;
    }
    tracing::debug!(phone = %mask(phone), version = core.version, left = rest.len(), "chain applied");
    Ok(ChainEnd { rest, crash, behind })
}

/// Makes the chain's committed steps the actor's state, in order, up to the
/// first that did not commit; returns the messages from that one on.
fn settle(
    deps: &SessionDeps,
    phone: &str,
    core: &mut Core,
    chain: Vec<PendingInbound>,
    steps: Vec<(String, Option<StepResult>)>,
    outcomes: Vec<WriteOutcome>,
) -> Vec<PendingInbound> {
    let mut rest = Vec::new();
    let mut steps = steps.into_iter();
    let mut outcomes = outcomes.into_iter();
    for msg in chain {
        match (steps.next(), outcomes.next()) {
            (Some((text, made)), Some(WriteOutcome::Committed { version })) if rest.is_empty() => match made {
                Some(result) => committed(deps, phone, core, version, result, &msg, &text),
                None => stored(deps, phone, core, version, &msg, &text),
            },
            _ => rest.push(msg),
        }
    }
    rest
}

/// Steps `msg` of the chain, its middleware first; a middleware's refusal
/// or a panic is the crash it reports.
async fn guarded_step(
    deps: &SessionDeps,
    phone: &str,
    at: &Snapshot,
    text: &str,
    msg: &PendingInbound,
) -> std::result::Result<StepResult, String> {
    let stepped = std::panic::AssertUnwindSafe(async {
        if let Some(m) = &deps.middleware {
            m.before_step(phone, text)?;
        }
        Ok::<_, String>(understand(deps, phone, at, text, msg).await)
    })
    .catch_unwind()
    .await;
    match stepped {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(Error::Processing(e).to_string()),
        Err(panic) => Err(panic_text(panic.as_ref())),
    }
}

/// A chain's write made ready on `at`: its session created if missing (at
/// version 0), the team's webhooks told of it in the same transaction.
fn ready(
    deps: &SessionDeps,
    phone: &str,
    at: &Snapshot,
    mut write: crate::db::steps::StepWrite,
) -> crate::db::steps::StepWrite {
    write.create_as = create_as(deps, phone, at.version);
    deps.webhooks.add_rows(&mut write, at.handoff);
    write
}

/// A step of `msg` committed at `version`: count it, publish it, and make
/// its result the actor's state.
pub(super) fn committed(
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
    core.stepped_to(version);
    core.last_customer_at = core.last_customer_at.max(customer_at(msg));
    core.remember(msg.id);
}

/// A message only stored (not stepped) committed at `version` (the
/// session's, unchanged): count it and publish it, with the welcome it
/// was answered with, if any.
pub(super) fn stored(deps: &SessionDeps, phone: &str, core: &mut Core, version: i64, msg: &PendingInbound, body: &str) {
    deps.stats.processed.fetch_add(1, Ordering::Relaxed);
    let user = (body.to_string(), "user");
    let welcome = welcome_reply(deps.flows.of(phone), &Snapshot::of(core), msg);
    let messages = std::iter::once(user).chain(welcome.map(|r| (r.text, "bot")));
    let messages = messages.map(|(body, origin)| EventMessage {
        origin: origin.into(),
        body,
        author: None,
    });
    let event = Event::conversation(EventKind::Stored, phone, version, &core.state, core.handoff)
        .with_messages(messages.collect())
        .applying(&msg.provider_message_id);
    // Best-effort, like every event.
    let _ = deps.events.send(event);
    core.version = version;
    core.last_customer_at = core.last_customer_at.max(customer_at(msg));
    core.remember(msg.id);
}

/// How applying one message alone ended.
pub(super) enum Applied {
    /// Committed, or found applied before.
    Done,
    /// Not applied: a message accepted before it, inbox row `earlier`,
    /// waits unapplied (accepted by another process, say). Handed back.
    Behind { msg: PendingInbound, earlier: i64 },
}

/// Applies one inbound message: understand, step the flow, commit — and on
/// a version conflict reload and run the transition again on fresh state.
pub(super) async fn apply_inbound(
    deps: &SessionDeps,
    phone: &str,
    core: &mut Core,
    msg: PendingInbound,
) -> Result<Applied> {
    if !kinds::is_stepped(&msg.payload) {
        return apply_stored(deps, phone, core, msg).await;
    }
    let text = inbound_text(&msg.payload);
    if let Some(m) = &deps.middleware {
        m.before_step(phone, &text).map_err(Error::Processing)?;
    }
    let (msg_ref, text_ref) = (&msg, text.as_str());
    // Set when the step reached an action while an earlier message waits.
    let behind = std::sync::Mutex::new(None::<i64>);
    let behind_ref = &behind;
    let written = retry_conflicts(deps, phone, core, |at| async move {
        let mut result = understand(deps, phone, &at, text_ref, msg_ref).await;
        if result.action.is_some() {
            if let Some(earlier) = first_waiting(deps, phone, msg_ref).await {
                *behind_ref.lock().unwrap_or_else(|p| p.into_inner()) = Some(earlier);
                return None;
            }
        }
        call_actions(deps, phone, &mut result, msg_ref).await;
        let time = inbound_time(deps, phone, at.handoff, &result, msg_ref);
        let mut write = inbound_write(phone, &at, msg_ref, text_ref, &result, time);
        write.create_as = create_as(deps, phone, at.version);
        Some((write, result))
    })
    .instrument(step_span(&msg))
    .await?;
    match written {
        Some(Written::Committed { version, made: result }) => {
            let replies = result.replies.len();
            committed(deps, phone, core, version, result, &msg, &text);
            tracing::debug!(phone = %mask(phone), version, replies, "message applied");
        }
        Some(Written::AlreadyApplied) => {
            deps.stats.already_applied.fetch_add(1, Ordering::Relaxed);
            core.remember(msg.id);
        }
        Some(Written::Behind { earlier }) => return Ok(Applied::Behind { msg, earlier }),
        // Every attempt makes a write, unless it stopped at an action
        // behind an earlier message.
        None => {
            let earlier = behind.into_inner().unwrap_or_else(|p| p.into_inner());
            if let Some(earlier) = earlier {
                return Ok(Applied::Behind { msg, earlier });
            }
        }
    }
    Ok(Applied::Done)
}

/// The first message accepted before `msg` and still unapplied, if any:
/// asked before a step calls the team's backend, which must see the state
/// those messages leave (an action's idempotency key is the message's).
/// Unknown (the database cannot be asked) counts as none: the commit
/// checks again.
async fn first_waiting(deps: &SessionDeps, phone: &str, msg: &PendingInbound) -> Option<i64> {
    let waiting = super::state::fetch_waiting_before(deps, phone, msg.id, 1).await.ok()?;
    waiting.first().map(|w| w.id())
}

/// Applies one message the flow does not step: stored, at the same version.
async fn apply_stored(deps: &SessionDeps, phone: &str, core: &mut Core, msg: PendingInbound) -> Result<Applied> {
    let body = kinds::stored_body(&msg.payload);
    let (msg_ref, body_ref) = (&msg, body.as_str());
    let written = retry_conflicts(deps, phone, core, |at| {
        let mut write = stored_write(deps, phone, &at, msg_ref, body_ref);
        write.create_as = create_as(deps, phone, at.version);
        std::future::ready(Some((write, ())))
    })
    .instrument(step_span(&msg))
    .await?;
    match written {
        Some(Written::Committed { version, .. }) => stored(deps, phone, core, version, &msg, &body),
        Some(Written::AlreadyApplied) => {
            deps.stats.already_applied.fetch_add(1, Ordering::Relaxed);
            core.remember(msg.id);
        }
        Some(Written::Behind { earlier }) => return Ok(Applied::Behind { msg, earlier }),
        None => {}
    }
    Ok(Applied::Done)
}

/// The span of `msg`'s step, on the message's trace.
fn step_span(msg: &PendingInbound) -> tracing::Span {
    let span = tracing::info_span!(target: telemetry::TARGET, "step", inbox_id = msg.id);
    telemetry::continue_from(&span, msg.traceparent.as_deref());
    span
}

/// Calls the actions `result` stopped at, for inbound message `msg`.
async fn call_actions(deps: &SessionDeps, phone: &str, result: &mut StepResult, msg: &PendingInbound) {
    if result.action.is_none() {
        return;
    }
    let ticket = format!("R{}", msg.id);
    let flow = deps.flows.of(phone);
    super::actions::run(deps, phone, flow, result, &msg.provider_message_id, &ticket).await;
}

/// Understands and steps one message; the result may stop at an action.
async fn understand(deps: &SessionDeps, phone: &str, core: &Snapshot, text: &str, msg: &PendingInbound) -> StepResult {
    let flow = deps.flows.of(phone);
    let expired = super::time::met_expired(flow, core, msg);
    let core = expired.as_ref().unwrap_or(core);
    let mut understanding = flow::Understanding::default();
    if !core.handoff {
        let needs = flow.needs(&core.state);
        // A media, location or contact slot takes the message's typed
        // input; the model is asked for text slots only.
        let typed = needs.slot.filter(|s| s.kind != SlotKind::Text);
        let request = Understand {
            trace: telemetry::trace::current(),
            text: text.to_string(),
            intents: candidates(flow, &needs.intents),
            global_count: flow.global.len(),
            slot: needs.slot.filter(|_| typed.is_none()).map(|s| SlotRequest {
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
        understanding.input = typed.and_then(|s| kinds::typed_input(&msg.payload, s.kind));
        understanding.referral = msg.payload.get("referral").cloned();
        understanding.reply_to = msg
            .payload
            .pointer("/context/id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
    }
    flow::step(
        flow,
        &core.state,
        &core.data,
        core.handoff,
        &understanding,
        &format!("R{}", msg.id),
    )
}

pub(super) fn publish(
    deps: &SessionDeps,
    phone: &str,
    version: i64,
    r: &StepResult,
    msg: &PendingInbound,
    inbound: &str,
) {
    let mut messages = vec![EventMessage {
        origin: "user".into(),
        body: inbound.to_string(),
        author: None,
    }];
    messages.extend(r.replies.iter().map(|m| EventMessage {
        origin: "bot".into(),
        body: m.text.clone(),
        author: None,
    }));
    // Best-effort: no subscriber, or a slow one, never fails a message.
    let event = Event::conversation(EventKind::Transition, phone, version, &r.state, r.handoff)
        .with_messages(messages)
        .applying(&msg.provider_message_id);
    let _ = deps.events.send(event);
}
