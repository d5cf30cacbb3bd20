//! Reads for the agent API: conversation lists and transcripts.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::{inbox, messages};
use crate::db::error::Result;

/// One row of the conversation list.
#[derive(Debug, Clone, PartialEq, QueryableByName, Serialize)]
pub struct ConversationSummary {
    #[diesel(sql_type = Text)]
    pub phone: String,
    #[diesel(sql_type = Text)]
    pub flow_state: String,
    #[diesel(sql_type = BigInt)]
    pub version: i64,
    #[diesel(sql_type = Bool)]
    pub handoff: bool,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
    /// The customer's WhatsApp profile name, from their latest message.
    #[diesel(sql_type = Nullable<Text>)]
    pub contact_name: Option<String>,
    /// The customer's WhatsApp username, from their latest message that gave one.
    #[diesel(sql_type = Nullable<Text>)]
    pub contact_username: Option<String>,
    /// The newest message of the conversation, either way.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_message: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_origin: Option<String>,
}

/// Filters of the conversation list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<String>,
    pub handoff: Option<bool>,
    /// Phones starting with these digits.
    pub phone_prefix: Option<String>,
    /// Conversations of one business number: keys behind this prefix
    /// (`<id>:`), or, for the home number, keys without any.
    pub number: Option<NumberScope>,
    pub limit: i64,
    pub offset: i64,
}

/// Which keys a business number's conversations have (see [`crate::numbers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberScope {
    Home,
    Prefixed(String),
}

/// Conversations, most recently active first, each with its contact name
/// and newest message (one index probe each, by primary key).
pub async fn list(conn: &mut AsyncPgConnection, f: &ListFilter) -> Result<Vec<ConversationSummary>> {
    let q = diesel::sql_query(
        "SELECT s.phone, s.flow_state, s.version, s.handoff, s.updated_at, \
                i.contact_name, u.contact_username, m.body AS last_message, m.origin AS last_origin \
         FROM sessions s \
         LEFT JOIN LATERAL (SELECT contact_name FROM inbox \
                            WHERE inbox.phone = s.phone AND contact_name IS NOT NULL \
                            ORDER BY id DESC LIMIT 1) i ON true \
         LEFT JOIN LATERAL (SELECT contact_username FROM inbox \
                            WHERE inbox.phone = s.phone AND contact_username IS NOT NULL \
                            ORDER BY id DESC LIMIT 1) u ON true \
         LEFT JOIN LATERAL (SELECT body, origin FROM messages \
                            WHERE messages.phone = s.phone ORDER BY id DESC LIMIT 1) m ON true \
         WHERE ($1::text IS NULL OR s.flow_state = $1) \
           AND ($2::bool IS NULL OR s.handoff = $2) \
           AND ($3::text IS NULL OR substr(s.phone, strpos(s.phone, ':') + 1) LIKE $3 || '%') \
           AND ($6::text IS NULL OR s.phone LIKE $6 || '%') \
           AND ($7::bool IS NOT TRUE OR strpos(s.phone, ':') = 0) \
         ORDER BY s.updated_at DESC, s.phone \
         LIMIT $4 OFFSET $5",
    )
    .bind::<Nullable<Text>, _>(f.state.as_deref())
    .bind::<Nullable<Bool>, _>(f.handoff)
    .bind::<Nullable<Text>, _>(f.phone_prefix.as_deref())
    .bind::<BigInt, _>(f.limit)
    .bind::<BigInt, _>(f.offset)
    .bind::<Nullable<Text>, _>(match &f.number {
        Some(NumberScope::Prefixed(p)) => Some(p.as_str()),
        _ => None,
    })
    .bind::<Bool, _>(f.number == Some(NumberScope::Home));
    Ok(q.load(conn).await?)
}

/// How the customer shows: their WhatsApp profile name and username, each
/// from their latest message that gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContactDisplay {
    pub name: Option<String>,
    pub username: Option<String>,
}

pub async fn contact_display(conn: &mut AsyncPgConnection, phone: &str) -> Result<ContactDisplay> {
    use super::schema::inbox;
    let name: Option<Option<String>> = inbox::table
        .filter(inbox::phone.eq(phone))
        .filter(inbox::contact_name.is_not_null())
        .order(inbox::id.desc())
        .select(inbox::contact_name)
        .first(conn)
        .await
        .optional()?;
    let username: Option<Option<String>> = inbox::table
        .filter(inbox::phone.eq(phone))
        .filter(inbox::contact_username.is_not_null())
        .order(inbox::id.desc())
        .select(inbox::contact_username)
        .first(conn)
        .await
        .optional()?;
    Ok(ContactDisplay {
        name: name.flatten(),
        username: username.flatten(),
    })
}

/// One message of a transcript. For an inbound message, what its payload
/// says beyond the text: the message it replies to (`context.id`), the ad
/// that opened the chat (`referral`), the message a reaction is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageRow {
    pub id: i64,
    pub direction: String,
    pub origin: String,
    pub body: String,
    pub status: String,
    pub error: Option<String>,
    pub provider_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The named agent who wrote an agent message (`name` in the JSON, as
    /// the interface contract says).
    #[serde(rename = "name", skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referral: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reacts_to: Option<String>,
    /// The media file an inbound message carries, and how its download stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<crate::db::media::MediaInfo>,
}

type Stored = (
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    Option<i64>,
    Option<String>,
);

/// The newest `limit` messages of a conversation older than message
/// `before` (all: `None`), oldest first. Ids grow with each message stored,
/// so paging back by the oldest id shown covers the whole history once.
pub async fn recent_messages(
    conn: &mut AsyncPgConnection,
    phone: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<MessageRow>> {
    let mut rows: Vec<Stored> = messages::table
        .filter(messages::phone.eq(phone))
        .filter(messages::id.lt(before.unwrap_or(i64::MAX)))
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
            messages::inbox_id,
            messages::author,
        ))
        .load(conn)
        .await?;
    rows.reverse();
    // The inbound messages' payloads, as received: by key, in one read.
    let ids: Vec<i64> = rows.iter().filter(|r| r.1 == "in").filter_map(|r| r.8).collect();
    let payloads: std::collections::HashMap<i64, serde_json::Value> = if ids.is_empty() {
        Default::default()
    } else {
        inbox::table
            .filter(inbox::phone.eq(phone))
            .filter(inbox::id.eq_any(&ids))
            .select((inbox::id, inbox::payload))
            .load::<(i64, serde_json::Value)>(conn)
            .await?
            .into_iter()
            .collect()
    };
    let ids: Vec<&str> = rows
        .iter()
        .filter(|r| r.1 == "in")
        .filter_map(|r| r.6.as_deref())
        .collect();
    let mut media: std::collections::HashMap<String, crate::db::media::MediaInfo> =
        crate::db::media::of_messages(conn, phone, &ids)
            .await?
            .into_iter()
            .map(|m| (m.provider_message_id.clone(), m))
            .collect();
    Ok(rows
        .into_iter()
        .map(|r| message_row(r, &payloads, &mut media))
        .collect())
}

/// A stored message as the API shows it, with what its inbound payload
/// says beyond the text and its media file.
fn message_row(
    (id, direction, origin, body, status, error, provider_message_id, created_at, inbox_id, author): Stored,
    payloads: &std::collections::HashMap<i64, serde_json::Value>,
    media: &mut std::collections::HashMap<String, crate::db::media::MediaInfo>,
) -> MessageRow {
    let payload = inbox_id.filter(|_| direction == "in").and_then(|i| payloads.get(&i));
    let at = |p: &str| {
        payload
            .and_then(|v| v.pointer(p))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    MessageRow {
        context_id: at("/context/id"),
        referral: payload.and_then(|v| v.get("referral")).cloned(),
        reacts_to: at("/reaction/message_id"),
        media: provider_message_id.as_ref().and_then(|p| media.remove(p)),
        id,
        direction,
        origin,
        body,
        status,
        error,
        provider_message_id,
        created_at,
        author,
    }
}
