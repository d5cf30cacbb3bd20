//! Outgoing webhooks (`[[integrations.webhooks]]`): what happens to a
//! conversation, told to the team's own systems. Each event an endpoint
//! subscribed to is an outbox row written in the transaction that causes
//! it, so it is delivered exactly when that commits — through the outbox's
//! machinery: in order per conversation and endpoint (each pair is a lane
//! of its own, `webhook:<name>:<conversation>`, so a slow consumer never
//! holds a customer's replies), retried with backoff, dead-lettered, and
//! signed per Standard Webhooks ([`signature`]). Its `webhook-id` is the
//! row's idempotency key: stable across retries, for the consumer's dedupe,
//! and opaque (a hash of its cause: no phone in a header).
//!
//! Every process must run a build that knows lanes before an endpoint is
//! configured: an older one would take a lane's row for a reply.

pub mod post;
pub mod signature;

use std::sync::Arc;

use chrono::Utc;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::{IntegrationSettings, WebhookSettings};
use crate::db::steps::{NewOutbox, StepWrite};
use crate::numbers::Numbers;

/// The outbox row kind of a webhook delivery.
pub const ROW_KIND: &str = "webhook";

/// The configured endpoints.
#[derive(Debug)]
pub struct Webhooks {
    endpoints: Vec<WebhookSettings>,
    /// Whether every event is also kept in the feed (`events`).
    feed: bool,
    /// Which business number and contact a conversation key names.
    numbers: Arc<Numbers>,
}

/// One event of a write: its kind and what it says.
#[derive(Debug, Clone, PartialEq)]
struct Happening {
    kind: &'static str,
    data: Value,
}

impl Webhooks {
    pub fn new(settings: &IntegrationSettings, numbers: Arc<Numbers>) -> Self {
        let endpoints = settings.named();
        Self {
            endpoints,
            feed: settings.events_keep_s > 0,
            numbers,
        }
    }

    /// Adds to `write` a row per event per endpoint subscribed to its kind
    /// (`was_handoff`: the conversation's hand-off before the write).
    pub fn add_rows(&self, write: &mut StepWrite, was_handoff: bool) {
        if self.endpoints.is_empty() && !self.feed {
            return;
        }
        let cause = event_cause(write);
        for (n, h) in happenings(write, was_handoff).into_iter().enumerate() {
            let id = event_id(&write.phone, &cause, n);
            let rows = self.rows_for(&write.phone, h.kind, &h.data, &id);
            write.outbox.extend(rows);
        }
    }

    /// The rows telling the endpoints that want `message.status` of a
    /// delivery status WhatsApp reported for our message `provider_id` in
    /// conversation `phone` (written with the status, under its lock).
    pub fn status_rows(&self, phone: &str, provider_id: &str, status: &str, error: Option<&str>) -> Vec<NewOutbox> {
        let cause = format!("status {provider_id} {status} {}", error.unwrap_or(""));
        let data = json!({"message": {"id": provider_id, "status": status, "error": error}});
        self.rows_for(phone, "message.status", &data, &event_id(phone, &cause, 0))
    }

    /// The rows telling the endpoints that want `dead_letter` of what
    /// `conversation` could not apply or deliver (`source`: `inbox`,
    /// `outbox` or `webhook`; `id`: what names it in its source). None for
    /// a webhook delivery's own lane: a dead event is not told again.
    pub fn dead_letter_rows(&self, conversation: &str, source: &str, id: &str, reason: &str) -> Vec<NewOutbox> {
        if is_lane(conversation) {
            return Vec::new();
        }
        let data = json!({"dead_letter": {"source": source, "id": id, "reason": reason}});
        let event = event_id(conversation, &format!("dead {source} {id}"), 0);
        self.rows_for(conversation, "dead_letter", &data, &event)
    }

    /// Whether the feed or any endpoint wants events of `kind`.
    pub fn wanted(&self, kind: &str) -> bool {
        self.feed || self.endpoints.iter().any(|e| e.wants(kind))
    }

    /// The rows telling the endpoints that want `message.sent` of messages
    /// WhatsApp just accepted (written with their send marks).
    pub fn sent_rows(&self, sent: &[crate::db::told::SentMessage]) -> Vec<NewOutbox> {
        let mut rows = Vec::new();
        for m in sent {
            let key = m.outbox_key.as_deref().unwrap_or_default();
            let data = json!({"message": {"id": m.provider_message_id, "origin": m.origin,
                "name": m.author, "body": m.body, "key": key}});
            let id = event_id(&m.phone, &format!("sent {key}"), 0);
            rows.extend(self.rows_for(&m.phone, "message.sent", &data, &id));
        }
        rows
    }

    /// An event `kind` of conversation `phone` saying `data`, as a row in
    /// the lane of each endpoint that wants it, all with the event's `id`,
    /// and as the feed's row.
    fn rows_for(&self, phone: &str, kind: &'static str, data: &Value, id: &str) -> Vec<NewOutbox> {
        let (number, contact) = self.numbers.split(phone);
        let at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let feed = self.feed.then(|| NewOutbox {
            phone: phone.to_string(),
            kind: crate::db::events::FEED_ROW,
            payload: json!({"id": id, "type": kind, "timestamp": at,
                "conversation": {"number": number, "contact": contact, "key": phone}, "data": data}),
            idempotency_key: id.to_string(),
            traceparent: None,
        });
        self.endpoints
            .iter()
            .filter(|e| e.wants(kind))
            .map(|e| NewOutbox {
                phone: crate::db::outbox::webhook_lane(&e.name, phone),
                kind: ROW_KIND,
                payload: json!({"webhook": e.name, "type": kind, "timestamp": at,
                    "conversation": {"number": number, "contact": contact}, "data": data}),
                idempotency_key: id.to_string(),
                traceparent: None,
            })
            .chain(feed)
            .collect()
    }

    pub fn endpoints(&self) -> &[WebhookSettings] {
        &self.endpoints
    }
}

/// Whether an outbox row is a webhook delivery (by its lane).
pub fn is_lane(key: &str) -> bool {
    key.starts_with(crate::db::outbox::WEBHOOK_LANE)
}

/// What names the write's cause once: its inbound message, its agent
/// request, its timer, or its version (a hand-off).
fn event_cause(w: &StepWrite) -> String {
    match (&w.inbox_id, &w.dedupe_key, &w.time.fired) {
        (Some(id), _, _) => format!("in {id}"),
        (None, Some(key), _) => format!("key {key}"),
        (None, None, Some(t)) => format!("timer {}", t.id),
        (None, None, None) => format!("version {}", w.committed_version()),
    }
}

/// The `n`th event of a cause in conversation `phone`, as a `webhook-id`:
/// `evt_` and a hash — distinct causes never meet, and no phone or
/// caller-given text reaches a header.
fn event_id(phone: &str, cause: &str, n: usize) -> String {
    let digest = Sha256::new()
        .chain_update(phone.as_bytes())
        .chain_update([0])
        .chain_update(cause.as_bytes())
        .chain_update([0])
        .chain_update(n.to_le_bytes())
        .finalize();
    format!("evt_{}", hex::encode(&digest[..16]))
}

/// What a write makes happen, in order: the timer it fires, the customer's
/// message, the outcome, the hand-off. (A message the bot or an agent
/// sends is told as `message.sent` by its send's mark, once WhatsApp took it.)
fn happenings(w: &StepWrite, was_handoff: bool) -> Vec<Happening> {
    let version = w.committed_version();
    let base = |more: Value| {
        let mut v = json!({"version": version, "state": w.flow_state});
        if let (Some(o), Value::Object(m)) = (v.as_object_mut(), more) {
            o.extend(m);
        }
        v
    };
    let mut out = Vec::new();
    if let Some(t) = &w.time.fired {
        out.push(Happening {
            kind: "timer",
            data: base(json!({"timer_id": t.id, "outcome": t.outcome})),
        });
    }
    for m in w.messages.iter().filter(|m| m.direction == "in") {
        out.push(Happening {
            kind: "message.received",
            data: base(json!({"message": {"id": m.provider_message_id, "body": m.body}})),
        });
    }
    for o in &w.outcomes {
        out.push(Happening {
            kind: "outcome",
            data: base(json!({"outcome": {"kind": o.kind, "ticket": o.ticket, "data": o.data}})),
        });
    }
    if w.handoff != was_handoff {
        let by = w.data.get(crate::flow::HANDOFF_BY_KEY).cloned().unwrap_or(Value::Null);
        out.push(Happening {
            kind: "handoff",
            data: base(json!({"active": w.handoff, "by": by})),
        });
    }
    out
}
