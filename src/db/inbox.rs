//! The inbox: every inbound delivery, deduplicated atomically.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::inbox;
use crate::error::Result;
use crate::phone::mask;

/// One inbound delivery to register.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = inbox)]
pub struct NewDelivery<'a> {
    pub phone: &'a str,
    pub provider_message_id: &'a str,
    pub payload: &'a serde_json::Value,
}

/// What registering a delivery found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Registration {
    /// The inbox row (the same for every delivery of one message).
    pub inbox_id: i64,
    /// True for the first delivery of this provider message id only.
    pub first: bool,
    /// Deliveries so far, this one included.
    pub delivery_count: i32,
    /// Whether the message has already been applied.
    pub processed: bool,
}

/// An inbox row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Serialize)]
#[diesel(table_name = inbox, check_for_backend(diesel::pg::Pg))]
pub struct InboxRecord {
    pub id: i64,
    pub phone: String,
    pub provider_message_id: String,
    pub payload: serde_json::Value,
    pub received_at: DateTime<Utc>,
    pub delivery_count: i32,
    pub last_delivery_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// Registers one delivery in a single statement: the first delivery inserts
/// the row; every redelivery bumps `delivery_count` and `last_delivery_at` on
/// the same row. No read-then-write, so concurrent deliveries cannot both be
/// "first" and none is lost from the count.
#[tracing::instrument(skip_all, fields(phone = %mask(d.phone)))]
pub async fn register(conn: &mut AsyncPgConnection, d: &NewDelivery<'_>) -> Result<Registration> {
    let (inbox_id, delivery_count, processed_at) = diesel::insert_into(inbox::table)
        .values(d)
        .on_conflict((inbox::phone, inbox::provider_message_id))
        .do_update()
        .set((
            inbox::delivery_count.eq(inbox::delivery_count + 1),
            inbox::last_delivery_at.eq(diesel::dsl::now),
        ))
        .returning((inbox::id, inbox::delivery_count, inbox::processed_at))
        .get_result::<(i64, i32, Option<DateTime<Utc>>)>(conn)
        .await?;
    Ok(Registration {
        inbox_id,
        // The row lock serializes the upserts; only the insert sees count 1.
        first: delivery_count == 1,
        delivery_count,
        processed: processed_at.is_some(),
    })
}

/// Reads one inbox row.
#[tracing::instrument(skip_all, fields(phone = %mask(phone)))]
pub async fn get(conn: &mut AsyncPgConnection, phone: &str, provider_message_id: &str) -> Result<Option<InboxRecord>> {
    Ok(inbox::table
        .filter(inbox::phone.eq(phone))
        .filter(inbox::provider_message_id.eq(provider_message_id))
        .select(InboxRecord::as_select())
        .first(conn)
        .await
        .optional()?)
}
