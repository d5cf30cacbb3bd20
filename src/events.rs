//! Realtime events: what changed in a conversation, broadcast best-effort
//! (a slow subscriber loses events; it never slows or fails a message).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Events kept for a subscriber that falls behind.
pub const EVENT_BUFFER: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An inbound message was applied (with the bot's replies).
    Transition,
    /// An inbound message of a kind the flow does not step (a reaction, a
    /// system notice, an unsupported type) was stored; the version is
    /// unchanged. A welcome request comes with the bot's welcome, if any.
    Stored,
    /// A human agent's message was stored and queued.
    AgentMessage,
    /// The conversation went to a human agent or back to the bot.
    Handoff,
    /// A due timer was applied (a reminder, an escalation, an expiry, a
    /// hand-off timeout), with the messages it sent.
    Timer,
    /// WhatsApp reported the delivery status of an outbound message.
    DeliveryStatus,
    /// A circuit breaker changed state (`phone` is empty).
    BreakerState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMessage {
    /// `user`, `bot` or `agent`.
    pub origin: std::borrow::Cow<'static, str>,
    pub body: String,
    /// The named agent who wrote an agent message (`name` in the JSON).
    // `author` as relayed by a process of the build before the rename.
    #[serde(rename = "name", alias = "author", default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// A delivery status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    pub provider_message_id: String,
    pub status: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub phone: String,
    /// Session version after the change (0 for delivery statuses).
    pub version: i64,
    pub flow_state: String,
    pub handoff: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<EventMessage>,
    /// For transitions: the provider id of the inbound message applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryEvent>,
    /// Breaker states are this process's own; never relayed.
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub breaker: Option<BreakerEvent>,
    /// Came from another process (through PostgreSQL); not relayed again.
    #[serde(skip)]
    pub relayed: bool,
}

/// A breaker's new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerEvent {
    pub name: &'static str,
    pub state: crate::breaker::BreakerState,
}

impl Event {
    /// A change of `phone`'s conversation, with no messages yet.
    pub fn conversation(kind: EventKind, phone: &str, version: i64, flow_state: &str, handoff: bool) -> Self {
        Self {
            kind,
            phone: phone.to_string(),
            version,
            flow_state: flow_state.to_string(),
            handoff,
            messages: Vec::new(),
            provider_message_id: None,
            delivery: None,
            breaker: None,
            relayed: false,
        }
    }

    /// The same event carrying the messages it is about.
    pub fn with_messages(mut self, messages: Vec<EventMessage>) -> Self {
        self.messages = messages;
        self
    }

    /// The same event naming the inbound message it applied.
    pub fn applying(mut self, provider_message_id: &str) -> Self {
        self.provider_message_id = Some(provider_message_id.to_string());
        self
    }

    /// A delivery status of an outbound message of `phone`'s conversation.
    pub fn delivery(phone: String, delivery: DeliveryEvent) -> Self {
        Self {
            delivery: Some(delivery),
            ..Self::conversation(EventKind::DeliveryStatus, &phone, 0, "", false)
        }
    }

    /// An event about a breaker, not a conversation.
    pub fn breaker(name: &'static str, state: crate::breaker::BreakerState) -> Self {
        Self {
            breaker: Some(BreakerEvent { name, state }),
            ..Self::conversation(EventKind::BreakerState, "", 0, "", false)
        }
    }
}

/// The id a reply button or list row carries: this prefix and the choice
/// itself, so a reply names its choice whatever its (cut or edited) title.
pub const CHOICE_ID: &str = "choice:";

/// The text of an inbound WhatsApp message object, whatever its type:
/// text body; for a button or list reply the choice its id names (see
/// [`CHOICE_ID`]), else its title; template button text; a media caption.
/// Other types (location, contacts, reactions, media without caption) have
/// no text: the flow sees an empty message.
pub fn inbound_text(payload: &Value) -> String {
    let s = |p: &str| payload.pointer(p).and_then(Value::as_str);
    let choice = |p: &str| s(p).and_then(|id| id.strip_prefix(CHOICE_ID)).filter(|c| !c.is_empty());
    choice("/interactive/button_reply/id")
        .or_else(|| choice("/interactive/list_reply/id"))
        .or_else(|| s("/text/body"))
        .or_else(|| s("/text"))
        .or_else(|| s("/interactive/button_reply/title"))
        .or_else(|| s("/interactive/list_reply/title"))
        .or_else(|| s("/button/text"))
        .or_else(|| s("/image/caption"))
        .or_else(|| s("/video/caption"))
        .or_else(|| s("/document/caption"))
        .unwrap_or_default()
        .to_string()
}
