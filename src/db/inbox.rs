//! The inbox: every inbound delivery, deduplicated atomically.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::inbox;
use crate::db::error::Result;
use crate::phone::mask;

/// One inbound delivery to register.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = inbox)]
pub struct NewDelivery<'a> {
    pub phone: &'a str,
    pub provider_message_id: &'a str,
    pub payload: &'a serde_json::Value,
    /// The sender's profile name, if the delivery gave one.
    pub contact_name: Option<&'a str>,
    /// The sender's WhatsApp username, if the delivery gave one.
    pub contact_username: Option<&'a str>,
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
    /// The engine instance that holds the message (see [`Lease`]); 0 when
    /// registered without a lease.
    pub leased_by: i64,
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
    pub contact_name: Option<String>,
    pub leased_by: i64,
    pub lease_until: DateTime<Utc>,
    pub contact_username: Option<String>,
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

/// When the customer sent a message (its `timestamp`, Unix seconds), if it says.
pub fn sent_at(payload: &serde_json::Value) -> Option<i64> {
    match payload.get("timestamp")? {
        serde_json::Value::String(s) => s.parse().ok(),
        v => v.as_i64(),
    }
}

/// The registrations in the batch's order (the statement returns them in key order).
fn in_input_order(rows: Vec<Registered>, batch: &[OwnedDelivery]) -> Result<Vec<Registration>> {
    let found: std::collections::HashMap<(String, String), Registration> = rows
        .into_iter()
        .map(|r| {
            (
                (r.phone, r.provider_message_id),
                Registration {
                    inbox_id: r.id,
                    first: r.delivery_count == 1,
                    delivery_count: r.delivery_count,
                    processed: r.processed,
                    leased_by: r.leased_by,
                },
            )
        })
        .collect();
    batch
        .iter()
        .map(|d| {
            found
                .get(&(d.phone.clone(), d.provider_message_id.clone()))
                .copied()
                .ok_or_else(|| crate::db::DbError::NotFound("a registered delivery was not returned".into()))
        })
        .collect()
}

/// A delivery to register, owned (it waits in a batch).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedDelivery {
    pub phone: String,
    pub provider_message_id: String,
    pub payload: serde_json::Value,
    pub contact_name: Option<String>,
    pub contact_username: Option<String>,
    /// The span that accepted it (see [`crate::telemetry::trace`]).
    pub traceparent: Option<String>,
}

#[derive(diesel::QueryableByName)]
struct Registered {
    #[diesel(sql_type = diesel::sql_types::Text)]
    phone: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    provider_message_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    delivery_count: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    processed: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    leased_by: i64,
}

/// Who holds the messages a process registers, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The engine instance (random per start, never 0).
    pub holder: i64,
    pub millis: i64,
}

/// Registers many deliveries in one statement (one commit): the batched
/// form of [`register`], with the same atomic dedupe. Keys must be distinct
/// within the batch. New rows get their ids in input order (the order of
/// acceptance: one phone's messages are applied in id order) but are
/// written in key order, so concurrent batches cannot deadlock. Results
/// come back in input order. New rows are leased
/// to `lease.holder`; a redelivery takes the lease over only once it has
/// run out.
#[tracing::instrument(skip_all, fields(batch = batch.len()))]
pub async fn register_batch(
    conn: &mut AsyncPgConnection,
    batch: &[OwnedDelivery],
    lease: Lease,
) -> Result<Vec<Registration>> {
    use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text};
    let phones: Vec<&str> = batch.iter().map(|d| d.phone.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|d| d.provider_message_id.as_str()).collect();
    let payloads: Vec<&serde_json::Value> = batch.iter().map(|d| &d.payload).collect();
    let names: Vec<Option<&str>> = batch.iter().map(|d| d.contact_name.as_deref()).collect();
    let usernames: Vec<Option<&str>> = batch.iter().map(|d| d.contact_username.as_deref()).collect();
    let traces: Vec<Option<&str>> = batch.iter().map(|d| d.traceparent.as_deref()).collect();
    let arrival: Vec<i64> = (0..batch.len() as i64).collect();
    // A message of an erased contact sent before its erasure is a
    // redelivery of erased data: answered as processed, never stored.
    let markers: Vec<String> = batch.iter().map(|d| crate::db::erasure::marker(&d.phone)).collect();
    let sent_at: Vec<Option<i64>> = batch.iter().map(|d| sent_at(&d.payload)).collect();
    let rows: Vec<Registered> = crate::db::sql::Cached::new("WITH lease AS (SELECT ")
        .bind::<BigInt, _>(lease.holder)
        .sql("::int8 AS holder, ")
        .bind::<BigInt, _>(lease.millis)
        .sql("::int8 AS millis), u AS (SELECT * FROM unnest(")
        .bind::<Array<Text>, _>(&phones)
        .sql("::text[], ")
        .bind::<Array<Text>, _>(&ids)
        .sql("::text[], ")
        .bind::<Array<Jsonb>, _>(&payloads)
        .sql("::jsonb[], ")
        .bind::<Array<Nullable<Text>>, _>(&names)
        .sql("::text[], ")
        .bind::<Array<Nullable<Text>>, _>(&usernames)
        .sql("::text[], ")
        .bind::<Array<BigInt>, _>(&arrival)
        .sql("::int8[], ")
        .bind::<Array<Text>, _>(&markers)
        .sql("::text[], ")
        .bind::<Array<Nullable<BigInt>>, _>(&sent_at)
        .sql("::int8[], ")
        .bind::<Array<Nullable<Text>>, _>(&traces)
        .sql(
            "::text[]) AS u(phone, pid, payload, name, username, arrival, marker, sent_at, trace)), \
             erased AS (SELECT u.phone, u.pid FROM u JOIN erasures e \
                        ON e.phone = u.marker AND e.erased_at >= to_timestamp(u.sent_at)), \
             registered AS ( \
             INSERT INTO inbox (id, phone, provider_message_id, payload, contact_name, contact_username, \
                                leased_by, lease_until, traceparent) \
             SELECT s.id, s.phone, s.pid, s.payload, s.name, s.username, lease.holder, \
                    now() + lease.millis * interval '1 millisecond', s.trace \
             FROM (SELECT u.*, nextval('inbox_id_seq') AS id FROM u \
                   WHERE NOT EXISTS (SELECT 1 FROM erased x WHERE x.phone = u.phone AND x.pid = u.pid) \
                   ORDER BY u.arrival OFFSET 0) AS s, lease \
             ORDER BY s.phone, s.pid \
             ON CONFLICT (phone, provider_message_id) DO UPDATE \
                SET delivery_count = inbox.delivery_count + 1, last_delivery_at = now(), \
                    leased_by = CASE WHEN inbox.lease_until < now() THEN EXCLUDED.leased_by \
                                     ELSE inbox.leased_by END, \
                    lease_until = CASE WHEN inbox.lease_until < now() THEN EXCLUDED.lease_until \
                                       ELSE inbox.lease_until END \
             RETURNING phone, provider_message_id, id, delivery_count, processed_at IS NOT NULL AS processed, \
                       leased_by) \
             SELECT * FROM registered \
             UNION ALL SELECT phone, pid, 0::int8, 2, true, 0::int8 FROM erased",
        )
        .load(conn)
        .await?;
    in_input_order(rows, batch)
}
