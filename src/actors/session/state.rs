//! The conversation as its actor holds it, and how it is loaded.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use scoped_futures::ScopedFutureExt;
use serde_json::{json, Value};

use super::messages::ConversationView;
use super::SessionDeps;
use crate::db::resume::{self, PendingInbound};
use crate::db::sessions::SessionRecord;
use crate::error::Result;
use crate::whatsapp::window::Window;

/// Inbox ids remembered per actor to skip a message already applied
/// (a resumed row whose mailbox copy arrives later).
pub(super) const RECENT_CAPACITY: usize = 1024;

/// Unprocessed inbox rows fetched per resume round.
pub(super) const RESUME_BATCH: i64 = 500;

/// The in-memory state; taken out of the actor while a handler runs.
#[derive(Debug, Clone)]
pub(super) struct Core {
    pub(super) state: String,
    pub(super) data: Value,
    pub(super) version: i64,
    pub(super) handoff: bool,
    /// When the customer last wrote (the 24-hour window runs from it).
    pub(super) last_customer_at: Option<DateTime<Utc>>,
    /// When the conversation last changed (a step of any kind: the
    /// expiry counts from it).
    pub(super) last_step_at: Option<DateTime<Utc>>,
    pub(super) recent: VecDeque<i64>,
}

impl Core {
    /// A write of this actor committed at `version`.
    pub(super) fn stepped_to(&mut self, version: i64) {
        self.version = version;
        self.last_step_at = Some(Utc::now());
    }
}

impl Core {
    pub(super) fn remember(&mut self, inbox_id: i64) {
        if self.recent.len() >= RECENT_CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(inbox_id);
    }
}

/// The part of a conversation a step reads.
#[derive(Clone)]
pub(super) struct Snapshot {
    pub(super) state: String,
    pub(super) data: Value,
    pub(super) handoff: bool,
    pub(super) version: i64,
    pub(super) last_customer_at: Option<DateTime<Utc>>,
    pub(super) last_step_at: Option<DateTime<Utc>>,
}

impl Snapshot {
    pub(super) fn of(c: &Core) -> Self {
        Self {
            state: c.state.clone(),
            data: c.data.clone(),
            handoff: c.handoff,
            version: c.version,
            last_customer_at: c.last_customer_at,
            last_step_at: c.last_step_at,
        }
    }
}

pub(super) fn view(phone: &str, c: &Core) -> ConversationView {
    ConversationView {
        phone: phone.to_string(),
        flow_state: c.state.clone(),
        data: c.data.clone(),
        version: c.version,
        handoff: c.handoff,
        window: Window::now(c.last_customer_at),
    }
}

/// The core, loading (creating) the session if this actor has none yet.
pub(super) async fn ensure_core(deps: &SessionDeps, phone: &str, core: Option<Core>) -> Result<Core> {
    match core {
        Some(c) => Ok(c),
        None => load_core(deps, phone, VecDeque::new()).await,
    }
}

/// The session as stored; a phone without one starts in the flow's initial
/// state at version 0 (its first step creates the row: no commit here).
pub(super) async fn load_core(deps: &SessionDeps, phone: &str, recent: VecDeque<i64>) -> Result<Core> {
    Ok(core_of(deps, phone, deps.db.load_session(phone).await?, recent))
}

/// The core and the phone's waiting inbox rows, in one round trip (an
/// activation, or a restart after a crash).
pub(super) async fn load_core_and_unprocessed(
    deps: &SessionDeps,
    phone: &str,
    recent: VecDeque<i64>,
) -> Result<(Core, Vec<PendingInbound>)> {
    let (record, rows) = deps
        .db
        .load_session_and_unprocessed(phone, deps.instance, RESUME_BATCH)
        .await?;
    Ok((core_of(deps, phone, record, recent), rows))
}

pub(super) fn core_of(deps: &SessionDeps, phone: &str, record: Option<SessionRecord>, recent: VecDeque<i64>) -> Core {
    match record {
        Some(s) => Core {
            state: s.flow_state,
            data: s.data,
            version: s.version,
            handoff: s.handoff,
            last_customer_at: s.last_customer_at,
            last_step_at: Some(s.updated_at),
            recent,
        },
        None => Core {
            state: deps.flows.of(phone).initial.clone(),
            data: json!({}),
            version: 0,
            handoff: false,
            last_customer_at: None,
            last_step_at: None,
            recent,
        },
    }
}

/// For a write on version 0: the state to create a missing session in.
pub(super) fn create_as(deps: &SessionDeps, phone: &str, expected_version: i64) -> Option<String> {
    (expected_version == 0).then(|| deps.flows.of(phone).initial.clone())
}

/// The unprocessed messages accepted before inbox row `before`, whoever
/// holds them, the first `limit` at most.
pub(super) async fn fetch_waiting_before(
    deps: &SessionDeps,
    phone: &str,
    before: i64,
    limit: i64,
) -> Result<Vec<resume::Waiting>> {
    let rows = deps
        .db
        .run("waiting before", |c| {
            resume::waiting_before(c, phone, deps.instance, before, limit).scope_boxed()
        })
        .await?;
    Ok(rows)
}

pub(super) async fn fetch_unprocessed(deps: &SessionDeps, phone: &str) -> Result<Vec<PendingInbound>> {
    let rows = deps
        .db
        .run("unprocessed", |c| {
            resume::unprocessed(c, phone, deps.instance, RESUME_BATCH).scope_boxed()
        })
        .await?;
    Ok(rows)
}
