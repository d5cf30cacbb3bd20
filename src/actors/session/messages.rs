//! What the engine sends a session actor, one `Message` type per intent.

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::db::resume::PendingInbound;
use crate::error::Result;
use crate::flow::TimerKind;
use crate::whatsapp::templates::TemplateMessage;
use crate::whatsapp::window::Window;

/// A conversation as its actor knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationView {
    pub phone: String,
    pub flow_state: String,
    pub data: Value,
    pub version: i64,
    pub handoff: bool,
    /// The 24-hour customer-service window, now.
    pub window: Window,
}

/// Apply one accepted inbound message.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<()>")]
pub struct Apply(pub PendingInbound);

/// Load the session and apply any unprocessed inbox rows (resume).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<()>")]
pub struct Wake;

/// Send a message written by a human agent: free-form text (only inside
/// the 24-hour window) or a template (any time).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<AgentAck>")]
pub struct AgentSend {
    pub content: AgentContent,
    /// Makes a retried request harmless: the same key is stored once.
    pub idempotency_key: String,
    /// The named agent who wrote it (`api.tokens`); `None`: anonymous.
    pub author: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AgentContent {
    Text(String),
    Template(TemplateMessage),
}

/// Apply a due timer (claimed by this process's timer poller).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<()>")]
pub struct Fire(pub DueTimer);

/// A due timer as claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct DueTimer {
    pub id: i64,
    pub kind: TimerKind,
    pub action: Value,
    pub due_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentAck {
    pub version: i64,
    pub idempotency_key: String,
    /// False when this key had been stored already.
    pub created: bool,
}

/// Give the conversation to a human agent (`on`) or back to the bot.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<ConversationView>")]
pub struct SetHandoff {
    pub on: bool,
    /// The named agent who did it; `None`: anonymous.
    pub by: Option<String>,
}

/// Erase the conversation's personal data (see [`crate::db::erasure`]),
/// after every message queued before this one; the actor forgets it too.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<crate::db::erasure::Erased>")]
pub struct Erase {
    /// The conversation's contact (its identifiers are erased too).
    pub contact: String,
    /// Who asked (a named admin), for the audit row.
    pub by: Option<String>,
}

/// Read the conversation, after every message queued before this one.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<ConversationView>")]
pub struct Read;

/// Stop (passivation or eviction). Sent only when nothing is pending.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Stop;
