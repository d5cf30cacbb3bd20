//! Dead letters: listing, and replay through the normal path.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::{dead_letters, inbox, outbox};
use crate::db::error::{DbError, Result};

#[derive(Debug, Clone, PartialEq, Queryable, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub phone: String,
    pub source: String,
    pub source_id: i64,
    pub payload: serde_json::Value,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Dead letters, newest first; `pending_only` hides replayed ones.
pub async fn list(conn: &mut AsyncPgConnection, pending_only: bool, limit: i64) -> Result<Vec<DeadLetter>> {
    let mut q = dead_letters::table
        .order(dead_letters::id.desc())
        .limit(limit)
        .select((
            dead_letters::id,
            dead_letters::phone,
            dead_letters::source,
            dead_letters::source_id,
            dead_letters::payload,
            dead_letters::reason,
            dead_letters::created_at,
            dead_letters::replayed_at,
        ))
        .into_boxed();
    if pending_only {
        q = q.filter(dead_letters::replayed_at.is_null());
    }
    Ok(q.load(conn).await?)
}

/// Dead letters not replayed yet, of those that can be (an unusable
/// webhook item never can: it is kept to be read, not waited on).
pub async fn pending_count(conn: &mut AsyncPgConnection) -> Result<i64> {
    Ok(dead_letters::table
        .filter(dead_letters::replayed_at.is_null())
        .filter(dead_letters::source.ne(UNUSABLE))
        .count()
        .get_result(conn)
        .await?)
}

/// A message (or status) of a delivery that cannot be applied, to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUnusable<'a> {
    /// The sender as the delivery gave it (possibly not a phone, or empty).
    pub from: &'a str,
    /// One letter per key: the message id, or a hash of its JSON.
    pub key: &'a str,
    pub payload: &'a serde_json::Value,
    pub reason: &'a str,
}

/// The `source` of dead letters made from unusable webhook items. They
/// never reached the inbox, so there is nothing to replay them onto.
pub const UNUSABLE: &str = "webhook";

/// Keeps an unusable item as a dead letter; true when it is new (a
/// redelivery of the same item stores nothing). `told`: the rows telling
/// the team's `dead_letter` webhooks, inserted with it (in one transaction
/// then; the insert alone otherwise).
pub async fn record_unusable(
    conn: &mut AsyncPgConnection,
    u: &NewUnusable<'_>,
    told: &[super::steps::NewOutbox],
) -> Result<bool> {
    if told.is_empty() {
        return keep_unusable(conn, u).await;
    }
    conn.transaction::<_, DbError, _>(async move |conn| {
        let new = keep_unusable(conn, u).await?;
        if new {
            super::told::insert(conn, told, super::outbox::conversation_of).await?;
        }
        Ok(new)
    })
    .await
}

async fn keep_unusable(conn: &mut AsyncPgConnection, u: &NewUnusable<'_>) -> Result<bool> {
    let stored = diesel::insert_into(dead_letters::table)
        .values((
            dead_letters::phone.eq(u.from),
            dead_letters::source.eq(UNUSABLE),
            dead_letters::source_id.eq(0),
            dead_letters::payload.eq(u.payload),
            dead_letters::reason.eq(u.reason),
            dead_letters::dedupe_key.eq(u.key),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(stored == 1)
}

/// Puts a dead letter back on its normal path: an inbound message becomes
/// unprocessed again (attempts reset; it goes through dedupe, order and the
/// version check like any message), an outbound one pending again. Marks
/// the letter replayed. Returns the letter's phone and source.
pub async fn replay(conn: &mut AsyncPgConnection, phone: &str, id: i64) -> Result<(String, String)> {
    let phone = phone.to_string();
    conn.transaction::<_, DbError, _>(async move |conn| {
        let letter: Option<(String, i64)> = diesel::update(dead_letters::table)
            .filter(dead_letters::phone.eq(&phone))
            .filter(dead_letters::id.eq(id))
            .filter(dead_letters::replayed_at.is_null())
            // An unusable webhook item never reached the inbox: nothing to replay.
            .filter(dead_letters::source.ne(UNUSABLE))
            .set(dead_letters::replayed_at.eq(diesel::dsl::now))
            .returning((dead_letters::source, dead_letters::source_id))
            .get_result(conn)
            .await
            .optional()?;
        let Some((source, source_id)) = letter else {
            return Err(DbError::NotFound("no such dead letter waiting for replay".into()));
        };
        match source.as_str() {
            "inbox" => {
                diesel::update(inbox::table.find((&phone, source_id)))
                    .set((
                        inbox::processed_at.eq(None::<DateTime<Utc>>),
                        inbox::attempts.eq(0),
                        inbox::last_error.eq(None::<String>),
                    ))
                    .execute(conn)
                    .await?;
            }
            _ => {
                // Under the conversation's lock, as a step inserting rows
                // takes it: a step's claim at insert and this row's return
                // to the line never cross (see `outbox::claim`).
                // A webhook lane's row: its conversation's lock.
                diesel::sql_query("SELECT 1 FROM sessions WHERE phone = $1 FOR UPDATE")
                    .bind::<diesel::sql_types::Text, _>(super::outbox::conversation_of(&phone))
                    .execute(conn)
                    .await?;
                diesel::update(outbox::table.find((&phone, source_id)))
                    .set((
                        outbox::status.eq("pending"),
                        outbox::attempts.eq(0),
                        outbox::next_attempt_at.eq(diesel::dsl::now),
                    ))
                    .execute(conn)
                    .await?;
            }
        }
        Ok((phone, source))
    })
    .await
}
