//! Time in the session actor: the timers a step sets, and a due timer
//! applied as a step of its own — in its place in the conversation's line,
//! versioned, committed with its `fired` mark (a timer no longer pending
//! when the step commits was cancelled or fired: nothing happens).

use std::sync::atomic::Ordering;

use super::messages::DueTimer;
use super::state::{Core, Snapshot};
use super::writes::{outcome_rows, retry_conflicts, same_state, Outbound, Written};
use super::SessionDeps;
use crate::db::resume::PendingInbound;
use crate::db::steps::{FiredTimer, NewTimer, StepTime, StepWrite};
use crate::error::Result;
use crate::events::{Event, EventKind, EventMessage};
use crate::flow::fire::{fire, Fired};
use crate::flow::{StepResult, TimerAction, TimerKind, TimerPlan};
use crate::phone::mask;
use crate::whatsapp::window::Window;

/// The rows of timers to set.
pub(super) fn new_timers(plans: Vec<TimerPlan>) -> Vec<NewTimer> {
    plans
        .into_iter()
        .map(|p| NewTimer {
            kind: p.kind.as_str(),
            delay_ms: i64::try_from(p.delay.as_millis()).unwrap_or(i64::MAX),
            action: p.action.to_json(),
        })
        .collect()
}

/// What an inbound message's step does to the clock: the customer wrote
/// (the window moves), and — unless a person holds the conversation (the
/// bot stays silent, the hand-off timeout runs on) — the conversation's
/// timers become those of where the step leaves it: none, in a flow
/// without timers (those an earlier flow set are cancelled all the same).
pub(super) fn inbound_time(
    deps: &SessionDeps,
    phone: &str,
    was_handoff: bool,
    r: &StepResult,
    msg: &PendingInbound,
) -> StepTime {
    let flow = deps.flows.of(phone);
    StepTime {
        timers: (!was_handoff).then(|| new_timers(flow.resting_timers(&r.state, r.handoff))),
        fired: None,
        customer_at: super::writes::customer_at(msg),
    }
}

/// The timers a conversation has after a timer's step moved it: those of
/// where it rests — but back from a hand-off timeout, not the state's
/// reminders (they would hand off again, and again, with nobody writing):
/// they are set when the customer next writes.
fn after_timer(flow: &crate::flow::Flow, kind: TimerKind, r: &StepResult) -> Vec<TimerPlan> {
    let mut plans = flow.resting_timers(&r.state, r.handoff);
    if kind == TimerKind::Handoff {
        plans.retain(|p| p.kind != TimerKind::After);
    }
    plans
}

/// The conversation a message meets when nothing happened to it for
/// longer than `expire_after` before the message was sent (no step of any
/// kind: the customer's, an agent's, a timer's — the expiry timer counts
/// from the last of them) and it still waits away from the start: its
/// expiry is overdue even if the timer has not fired yet (no process ran
/// meanwhile), so the message meets a fresh start, not a stale question.
/// `None`: it meets the conversation as is.
pub(super) fn met_expired(flow: &crate::flow::Flow, at: &Snapshot, msg: &PendingInbound) -> Option<Snapshot> {
    let idle = flow.timing.expire_after?;
    let (last, now) = (at.last_step_at?, super::writes::customer_at(msg)?);
    let silent = (now - last).to_std().ok()?;
    (silent > idle && !at.handoff && at.state != flow.initial).then(|| Snapshot {
        state: flow.initial.clone(),
        data: serde_json::json!({}),
        ..at.clone()
    })
}

/// Applies due timer `t`. A moot one (cancelled, fired) changes nothing.
pub(super) async fn fire_timer(deps: &SessionDeps, phone: &str, core: &mut Core, t: DueTimer) -> Result<()> {
    let flow = deps.flows.of(phone);
    let mut action = TimerAction::from_json(&t.action);
    if let Some(why) = unsendable_template(deps, phone, &action).await? {
        // The timer goes on without it (its reply outside the window is
        // then skipped), said once in the log.
        tracing::warn!(phone = %mask(phone), timer = t.id, reason = %why, "timer template not sent");
        action.template = None;
    }
    let (t_ref, action_ref) = (&t, &action);
    let written = retry_conflicts(deps, phone, core, |at| {
        let window = Window::now(at.last_customer_at);
        let ticket = format!("T{}", t_ref.id);
        let f = fire(
            flow,
            &at.state,
            &at.data,
            at.handoff,
            t_ref.kind,
            action_ref,
            window.open,
            &ticket,
        );
        let mut w = same_state(phone, &at);
        timer_rows(deps, phone, t_ref.id, &f, &mut w);
        w.time = StepTime {
            timers: f
                .replace_timers
                .then(|| new_timers(after_timer(flow, t_ref.kind, &f.result))),
            fired: Some(FiredTimer {
                id: t_ref.id,
                outcome: f.outcome,
            }),
            customer_at: None,
        };
        std::future::ready(Some((w, f)))
    })
    .await?;
    match written {
        Some(Written::Committed { version, made }) => {
            deps.stats.timers_fired.fetch_add(1, Ordering::Relaxed);
            let late = chrono::Utc::now() - t.due_at > chrono::TimeDelta::seconds(1);
            if late {
                deps.stats.timers_late.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(phone = %mask(phone), timer = t.id, version, outcome = made.outcome, late, "timer fired");
            publish(deps, phone, version, &made);
            core.state = made.result.state;
            core.data = made.result.data;
            core.handoff = made.result.handoff;
            core.stepped_to(version);
        }
        Some(Written::AlreadyApplied) => {
            deps.stats.timers_moot.fetch_add(1, Ordering::Relaxed);
        }
        // A timer's write carries no inbound message: never behind one.
        Some(Written::Behind { .. }) | None => {}
    }
    Ok(())
}

/// Why the template `action` names cannot be sent now, if it cannot:
/// removed from the number's templates since the flow was loaded, or
/// paused or disabled by WhatsApp.
async fn unsendable_template(deps: &SessionDeps, phone: &str, action: &TimerAction) -> Result<Option<String>> {
    let Some(call) = &action.template else { return Ok(None) };
    let t = match deps
        .templates
        .call(phone, &call.name, call.language.as_deref(), call.parameters.clone())
    {
        Ok(t) => t,
        Err(e) => return Ok(Some(e)),
    };
    let status = deps.db.template_status(&t.name, &t.language).await?;
    Ok(status
        .filter(|s| crate::whatsapp::templates::is_stopped(&s.status))
        .map(|s| format!("template `{}` ({}) is {}", t.name, t.language, s.status)))
}

/// The rows of a timer's step: its replies (or its template) and the
/// outcome a target reached.
fn timer_rows(deps: &SessionDeps, phone: &str, id: i64, f: &Fired, w: &mut StepWrite) {
    w.stepped = true;
    w.flow_state = f.result.state.clone();
    w.data = f.result.data.clone();
    w.handoff = f.result.handoff;
    for (i, reply) in f.result.replies.iter().enumerate() {
        let key = format!("timer:{id}:{i}");
        Outbound::bot(phone, &key).push_parts(reply, &mut w.messages, &mut w.outbox);
    }
    if let Some(call) = &f.template {
        let key = format!("timer:{id}:t");
        // Resolved before the step (`unsendable_template`): it resolves.
        if let Ok(t) = deps
            .templates
            .call(phone, &call.name, call.language.as_deref(), call.parameters.clone())
        {
            Outbound::bot(phone, &key).push_template(&t, &mut w.messages, &mut w.outbox);
        }
    }
    w.outcomes = outcome_rows(phone, &f.result, None);
}

fn publish(deps: &SessionDeps, phone: &str, version: i64, f: &Fired) {
    let mut messages: Vec<EventMessage> = f
        .result
        .replies
        .iter()
        .map(|m| EventMessage {
            origin: "bot".into(),
            body: m.text.clone(),
            author: None,
        })
        .collect();
    if let Some(t) = &f.template {
        messages.push(EventMessage {
            origin: "bot".into(),
            body: format!("[plantilla {}]", t.name),
            author: None,
        });
    }
    let event = Event::conversation(EventKind::Timer, phone, version, &f.result.state, f.result.handoff)
        .with_messages(messages);
    let _ = deps.events.send(event);
}
