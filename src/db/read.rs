//! Reads for the agent API: conversation lists and transcripts.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::{messages, sessions};
use crate::error::Result;

/// One row of the conversation list.
#[derive(Debug, Clone, PartialEq, Queryable, Serialize)]
pub struct ConversationSummary {
    pub phone: String,
    pub flow_state: String,
    pub version: i64,
    pub handoff: bool,
    pub updated_at: DateTime<Utc>,
}

/// Filters of the conversation list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<String>,
    pub handoff: Option<bool>,
    /// Phones starting with these digits.
    pub phone_prefix: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// Conversations, most recently active first.
pub async fn list(conn: &mut AsyncPgConnection, f: &ListFilter) -> Result<Vec<ConversationSummary>> {
    let mut q = sessions::table
        .select((
            sessions::phone,
            sessions::flow_state,
            sessions::version,
            sessions::handoff,
            sessions::updated_at,
        ))
        .order((sessions::updated_at.desc(), sessions::phone))
        .limit(f.limit)
        .offset(f.offset)
        .into_boxed();
    if let Some(s) = &f.state {
        q = q.filter(sessions::flow_state.eq(s.clone()));
    }
    if let Some(h) = f.handoff {
        q = q.filter(sessions::handoff.eq(h));
    }
    if let Some(p) = &f.phone_prefix {
        q = q.filter(sessions::phone.like(format!("{p}%")));
    }
    Ok(q.load(conn).await?)
}

/// One message of a transcript.
#[derive(Debug, Clone, PartialEq, Queryable, Serialize)]
pub struct MessageRow {
    pub id: i64,
    pub direction: String,
    pub origin: String,
    pub body: String,
    pub status: String,
    pub error: Option<String>,
    pub provider_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The newest `limit` messages of a conversation, oldest first.
pub async fn recent_messages(conn: &mut AsyncPgConnection, phone: &str, limit: i64) -> Result<Vec<MessageRow>> {
    let mut rows: Vec<MessageRow> = messages::table
        .filter(messages::phone.eq(phone))
        .order(messages::id.desc())
        .limit(limit)
        .select((
            messages::id,
            messages::direction,
            messages::origin,
            messages::body,
            messages::status,
            messages::error,
            messages::provider_message_id,
            messages::created_at,
        ))
        .load(conn)
        .await?;
    rows.reverse();
    Ok(rows)
}
