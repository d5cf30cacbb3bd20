//! Outgoing webhooks (`[[integrations.webhooks]]`): what happens to a
//! conversation, told to the team's own systems. Each event an endpoint
//! subscribed to is an outbox row written in the transaction that causes
//! it, so it is delivered exactly when that commits — through the outbox's
//! machinery: in order per conversation and endpoint (each pair is a lane
//! of its own, `webhook:<name>:<conversation>`, so a slow consumer never
//! holds a customer's replies), retried with backoff, dead-lettered, and
//! signed per Standard Webhooks ([`signature`]). Its `webhook-id` is the
//! row's idempotency key: stable across retries, for the consumer's dedupe.

pub mod post;
pub mod signature;

use chrono::Utc;
use serde_json::{json, Value};

use crate::config::{IntegrationSettings, WebhookSettings};
use crate::db::steps::{NewOutbox, StepWrite};

/// The outbox row kind of a webhook delivery.
pub const ROW_KIND: &str = "webhook";
/// The lane key's prefix: `webhook:<name>:<conversation>`.
const LANE: &str = "webhook:";

/// The configured endpoints.
#[derive(Debug, Default)]
pub struct Webhooks {
    endpoints: Vec<WebhookSettings>,
}

/// One event of a write: its kind and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Happening {
    pub kind: &'static str,
    pub data: Value,
}

impl Webhooks {
    pub fn new(settings: &IntegrationSettings) -> Self {
        Self {
            endpoints: settings.webhooks.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Adds to `write` a row per event per endpoint subscribed to its kind
    /// (`was_handoff`: the conversation's hand-off before the write).
    pub fn add_rows(&self, write: &mut StepWrite, was_handoff: bool) {
        if self.endpoints.is_empty() {
            return;
        }
        let happened = happenings(write, was_handoff);
        if happened.is_empty() {
            return;
        }
        let at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let origin = event_key(write);
        for e in &self.endpoints {
            for (n, h) in happened.iter().enumerate() {
                if !e.events.iter().any(|k| k == h.kind) {
                    continue;
                }
                write.outbox.push(NewOutbox {
                    phone: format!("{LANE}{}:{}", e.name, write.phone),
                    kind: ROW_KIND,
                    payload: json!({"webhook": e.name, "type": h.kind, "timestamp": at, "data": h.data}),
                    idempotency_key: format!("evt_{origin}_{n}"),
                });
            }
        }
    }

    /// The endpoint named `name`.
    pub fn endpoint(&self, name: &str) -> Option<&WebhookSettings> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    pub fn endpoints(&self) -> &[WebhookSettings] {
        &self.endpoints
    }
}

/// Whether an outbox row is a webhook delivery (by its lane).
pub fn is_lane(key: &str) -> bool {
    key.starts_with(LANE)
}

/// A key naming the write's cause once: its inbound message, its agent
/// request, its timer, or its version (a hand-off).
fn event_key(w: &StepWrite) -> String {
    let raw = match (&w.inbox_id, &w.dedupe_key, &w.time.fired) {
        (Some(id), _, _) => format!("in{id}"),
        (None, Some(key), _) => key.replace(':', "-"),
        (None, None, Some(t)) => format!("timer{}", t.id),
        (None, None, None) => format!("v{}", w.committed_version()),
    };
    format!("{}_{raw}", w.phone)
}

/// What a write makes happen, in order: the timer it fires, the customer's
/// message, the messages it queues, the outcome, the hand-off.
pub fn happenings(w: &StepWrite, was_handoff: bool) -> Vec<Happening> {
    let version = w.committed_version();
    let base = |more: Value| {
        let mut v = json!({"conversation": w.phone, "version": version, "state": w.flow_state});
        if let (Some(o), Value::Object(m)) = (v.as_object_mut(), more) {
            o.extend(m);
        }
        v
    };
    let mut out = Vec::new();
    if let Some(t) = &w.time.fired {
        out.push(Happening {
            kind: "timer.fired",
            data: base(json!({"timer_id": t.id, "outcome": t.outcome})),
        });
    }
    for m in &w.messages {
        let (kind, data) = if m.direction == "in" {
            let data = json!({"message": {"id": m.provider_message_id, "body": m.body}});
            ("message.received", data)
        } else if m.status == "queued" {
            let data =
                json!({"message": {"origin": m.origin, "author": m.author, "body": m.body, "key": m.outbox_key}});
            ("message.queued", data)
        } else {
            continue;
        };
        out.push(Happening { kind, data: base(data) });
    }
    for o in &w.outcomes {
        out.push(Happening {
            kind: "outcome.recorded",
            data: base(json!({"outcome": {"kind": o.kind, "ticket": o.ticket, "data": o.data}})),
        });
    }
    if w.handoff != was_handoff {
        let by = w.data.get("_handoff_by").cloned().unwrap_or(Value::Null);
        out.push(Happening {
            kind: if w.handoff {
                "handoff.requested"
            } else {
                "handoff.returned"
            },
            data: base(json!({"by": by})),
        });
    }
    out
}
