//! The session's versioned writes: one conflict-retry loop for every kind of
//! step, and the rows an inbound step and an outbound message write (an
//! agent's are in `agent`).

use std::sync::atomic::Ordering;

use serde_json::json;
use tracing::Instrument;

use super::state::{load_core, Core, Snapshot};
use super::SessionDeps;
use crate::actors::db_writer::Persist;
use crate::db::resume::PendingInbound;
use crate::db::steps::{NewMedia, NewMessage, NewOutbox, NewOutcome, StepTime, StepWrite, WriteOutcome};
use crate::error::{Error, Result};
use crate::flow::{Flow, Reply, StepResult};
use crate::phone::mask;
use crate::telemetry;
use crate::whatsapp::templates::TemplateMessage;
use crate::whatsapp::window::{self, Window};
use crate::whatsapp::{kinds, split};

/// Commits one write alone (a chain of one).
pub(super) async fn persist_one(deps: &SessionDeps, write: StepWrite) -> Result<Result<WriteOutcome>> {
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

/// The rows an inbound message's step writes: the message, the bot's replies
/// with their outbox rows, and the outcome it produced.
pub(super) fn inbound_write(
    phone: &str,
    at: &Snapshot,
    msg: &PendingInbound,
    text: &str,
    r: &StepResult,
    time: StepTime,
) -> StepWrite {
    let (messages, outbox) = answered(phone, at, msg, text, &r.replies, time.customer_at);
    StepWrite {
        phone: phone.to_string(),
        expected_version: at.version,
        create_as: None,
        flow_state: r.state.clone(),
        data: r.data.clone(),
        handoff: r.handoff,
        stepped: true,
        inbox_id: Some(msg.id),
        dedupe_key: None,
        messages,
        outbox,
        media: media_jobs(phone, msg),
        outcomes: outcome_rows(phone, r, Some(msg.id)),
        time,
    }
}

/// An inbound message's row and its replies' rows, keyed by its inbox row.
/// A message that reaches the bot over 24 hours after it was sent (a long
/// outage) cannot be answered free-form: its replies are skipped.
fn answered(
    phone: &str,
    at: &Snapshot,
    msg: &PendingInbound,
    body: &str,
    replies: &[Reply],
    customer_at: Option<chrono::DateTime<chrono::Utc>>,
) -> (Vec<NewMessage>, Vec<NewOutbox>) {
    let sendable = Window::now(customer_at.max(at.last_customer_at)).open;
    let mut messages = vec![NewMessage {
        phone: phone.to_string(),
        direction: "in",
        origin: "user",
        body: body.to_string(),
        inbox_id: Some(msg.id),
        provider_message_id: Some(msg.provider_message_id.clone()),
        status: "received",
        outbox_key: None,
        author: None,
    }];
    let mut outbox = Vec::new();
    for (i, reply) in replies.iter().enumerate() {
        let out = Outbound {
            phone,
            origin: "bot",
            inbox_id: Some(msg.id),
            key: &format!("in:{}:{i}", msg.id),
            sendable,
            author: None,
        };
        out.push_parts(reply, &mut messages, &mut outbox);
    }
    (messages, outbox)
}

/// The outcome a step reached, as its row (`inbox_id`: the message that reached it).
pub(super) fn outcome_rows(phone: &str, r: &StepResult, inbox_id: Option<i64>) -> Vec<NewOutcome> {
    r.outcome
        .iter()
        .map(|o| NewOutcome {
            phone: phone.to_string(),
            kind: o.kind.clone(),
            ticket: o.ticket.clone(),
            data: o.data.clone(),
            inbox_id,
        })
        .collect()
}

/// One outbound message of a step (a bot reply, an agent message): its
/// rows, a message and an outbox row per part.
pub(super) struct Outbound<'a> {
    pub(super) phone: &'a str,
    pub(super) origin: &'static str,
    pub(super) inbox_id: Option<i64>,
    /// The whole message's key: its first part's.
    pub(super) key: &'a str,
    /// False outside the 24-hour window: the message is recorded as
    /// skipped and not sent.
    pub(super) sendable: bool,
    /// The named agent who wrote it.
    pub(super) author: Option<&'a str>,
}

impl<'a> Outbound<'a> {
    /// A message the bot sends on its own (a timer's), keyed `key`.
    pub(super) fn bot(phone: &'a str, key: &'a str) -> Self {
        Self {
            phone,
            origin: "bot",
            inbox_id: None,
            key,
            sendable: true,
            author: None,
        }
    }

    /// The reply's parts (see `whatsapp::split`), in order: the choices go
    /// with the last; the parts before it are texts.
    pub(super) fn push_parts(&self, reply: &Reply, messages: &mut Vec<NewMessage>, outbox: &mut Vec<NewOutbox>) {
        let parts = split::reply_parts(&reply.text, !reply.choices.is_empty());
        let last = parts.len() - 1;
        for (p, text) in parts.into_iter().enumerate() {
            let key = part_key(self.key, p);
            let choices: &[String] = if p == last { &reply.choices } else { &[] };
            messages.push(NewMessage {
                phone: self.phone.to_string(),
                direction: "out",
                origin: self.origin,
                body: text.clone(),
                inbox_id: self.inbox_id,
                provider_message_id: None,
                status: if self.sendable { "queued" } else { "skipped" },
                outbox_key: Some(key.clone()),
                author: self.author.map(str::to_string),
            });
            if !self.sendable {
                continue;
            }
            outbox.push(NewOutbox {
                phone: self.phone.to_string(),
                kind: if choices.is_empty() { "text" } else { "interactive" },
                payload: match (&reply.list_button, choices.is_empty()) {
                    (Some(button), false) => json!({"text": text, "choices": choices, "list_button": button}),
                    _ => json!({"text": text, "choices": choices}),
                },
                idempotency_key: key,
                traceparent: None,
            });
        }
    }

    /// A template message: one message row (its transcript) and one outbox row.
    pub(super) fn push_template(
        &self,
        t: &TemplateMessage,
        messages: &mut Vec<NewMessage>,
        outbox: &mut Vec<NewOutbox>,
    ) {
        messages.push(NewMessage {
            phone: self.phone.to_string(),
            direction: "out",
            origin: self.origin,
            body: t.transcript(),
            inbox_id: self.inbox_id,
            provider_message_id: None,
            status: "queued",
            outbox_key: Some(self.key.to_string()),
            author: self.author.map(str::to_string),
        });
        outbox.push(NewOutbox {
            phone: self.phone.to_string(),
            kind: "template",
            payload: t.payload(),
            idempotency_key: self.key.to_string(),
            traceparent: None,
        });
    }
}

/// The outbox key of part `p` of a message keyed `key`: the key itself for
/// the first (or only) part, `key#p<p>` for the others (no key of a whole
/// message has a `#`: agents' keys are refused with one).
fn part_key(key: &str, p: usize) -> String {
    if p == 0 {
        key.to_string()
    } else {
        format!("{key}#p{p}")
    }
}

/// How a versioned write ended.
pub(super) enum Written<T> {
    /// Committed at `version`; `made` is what the attempt that committed made.
    Committed { version: i64, made: T },
    /// Its inbound message or idempotency key was applied before: the core
    /// was reloaded, nothing was written.
    AlreadyApplied,
    /// A message of the conversation accepted before its inbound message
    /// (inbox row `earlier`) waits, unapplied: nothing was written. Only a
    /// write of an inbound message can be behind.
    Behind { earlier: i64 },
}

/// The one conflict-retry loop. `attempt` makes a write (and a value) from
/// the conversation as it stands; on a version conflict the session is
/// reloaded and `attempt` runs again on the fresh state (bounded, with
/// backoff), so no step is ever committed on a stale one. `attempt`
/// answering `None`: there is nothing to write.
pub(super) async fn retry_conflicts<T, F, Fut>(
    deps: &SessionDeps,
    phone: &str,
    core: &mut Core,
    mut attempt: F,
) -> Result<Option<Written<T>>>
where
    F: FnMut(Snapshot) -> Fut,
    Fut: std::future::Future<Output = Option<(StepWrite, T)>>,
{
    let retries = deps.settings.conflict_retries;
    for n in 0..=retries {
        let was_handoff = core.handoff;
        let Some((mut write, made)) = attempt(Snapshot::of(core)).await else {
            return Ok(None);
        };
        // The team's webhooks hear of it in the same transaction.
        deps.webhooks.add_rows(&mut write, was_handoff);
        write.traced(telemetry::trace::current());
        let commit = tracing::info_span!(target: telemetry::TARGET, "commit", steps = 1);
        match persist_one(deps, write).instrument(commit).await? {
            Ok(WriteOutcome::Committed { version }) => return Ok(Some(Written::Committed { version, made })),
            Ok(WriteOutcome::AlreadyApplied) => {
                *core = load_core(deps, phone, std::mem::take(&mut core.recent)).await?;
                return Ok(Some(Written::AlreadyApplied));
            }
            Ok(WriteOutcome::Behind { earlier }) => return Ok(Some(Written::Behind { earlier })),
            Ok(WriteOutcome::Conflict { actual }) => {
                deps.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(phone = %mask(phone), expected = core.version, ?actual, attempt = n, "version conflict; re-running on fresh state");
                *core = load_core(deps, phone, std::mem::take(&mut core.recent)).await?;
            }
            Err(e) if e.is_retryable() && n < retries => {}
            Err(e) => return Err(e),
        }
        deps.stats.retries.fetch_add(1, Ordering::Relaxed);
        let pause = deps.db.retry_policy().delay(n, &mut rand::rng());
        tokio::time::sleep(pause).await;
    }
    Err(Error::Processing(format!("gave up after {} conflicts", retries + 1)))
}

/// The write of an inbound message the flow does not step (see
/// [`crate::whatsapp::kinds`]): the message stored and its inbox row marked,
/// at the same version, the session unchanged — and a welcome request
/// answered with the state's prompt when the flow says `welcome`.
pub(super) fn stored_write(
    deps: &SessionDeps,
    phone: &str,
    at: &Snapshot,
    msg: &PendingInbound,
    body: &str,
) -> StepWrite {
    let customer_at = customer_at(msg);
    let welcome = welcome_reply(deps.flows.of(phone), at, msg);
    let (messages, outbox) = answered(phone, at, msg, body, welcome.as_slice(), customer_at);
    StepWrite {
        stepped: false,
        inbox_id: Some(msg.id),
        messages,
        outbox,
        media: media_jobs(phone, msg),
        time: StepTime {
            customer_at,
            ..Default::default()
        },
        ..same_state(phone, at)
    }
}

/// The reply to `msg` if it is a welcome request the flow answers, on the
/// state the customer's next step will meet (an idle conversation past its
/// expiry starts over there, so it is greeted from the start).
pub(super) fn welcome_reply(flow: &Flow, at: &Snapshot, msg: &PendingInbound) -> Option<Reply> {
    if !kinds::asks_welcome(&msg.payload) {
        return None;
    }
    let expired = super::time::met_expired(flow, at, msg);
    let at = expired.as_ref().unwrap_or(at);
    crate::flow::welcome(flow, &at.state, &at.data, at.handoff)
}

/// When the customer sent `msg` (its own timestamp; when it gives none,
/// now). `None` for what WhatsApp itself sends (a `system` notice, an
/// `errors` report): that opens no window.
pub(super) fn customer_at(msg: &PendingInbound) -> Option<chrono::DateTime<chrono::Utc>> {
    let by_whatsapp = matches!(
        msg.payload.get("type").and_then(serde_json::Value::as_str),
        Some("system" | "errors")
    );
    (!by_whatsapp).then(|| window::sent_at(&msg.payload).unwrap_or_else(chrono::Utc::now))
}

/// The download job of the media file `msg` carries, if it carries one.
fn media_jobs(phone: &str, msg: &PendingInbound) -> Vec<NewMedia> {
    kinds::media_of(&msg.payload)
        .map(|m| NewMedia {
            phone: phone.to_string(),
            media_id: m.id,
            provider_message_id: msg.provider_message_id.clone(),
            kind: m.kind,
            mime_type: m.mime_type,
            sha256: m.sha256,
            caption: m.caption,
        })
        .into_iter()
        .collect()
}

/// A write that changes nothing but the version (callers set what changes).
pub(super) fn same_state(phone: &str, c: &Snapshot) -> StepWrite {
    StepWrite {
        phone: phone.to_string(),
        expected_version: c.version,
        // At version 0 the state is the one a new session starts in.
        create_as: (c.version == 0).then(|| c.state.clone()),
        flow_state: c.state.clone(),
        data: c.data.clone(),
        handoff: c.handoff,
        stepped: true,
        inbox_id: None,
        dedupe_key: None,
        messages: Vec::new(),
        outbox: Vec::new(),
        outcomes: Vec::new(),
        media: Vec::new(),
        time: StepTime::default(),
    }
}
