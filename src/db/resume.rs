//! The inbox's resume and crash queries: which unprocessed messages a
//! process may take up (its own, or those of a process that died or let its
//! lease run out), and what happens to a message that keeps failing.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Jsonb, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncConnectionCore, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::{dead_letters, inbox};
use super::sql::Cached;
use crate::db::error::{DbError, Result};
use crate::phone::mask;

/// An inbound message waiting to be applied.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Serialize)]
pub struct PendingInbound {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub provider_message_id: String,
    #[diesel(sql_type = Jsonb)]
    pub payload: serde_json::Value,
    /// The span that accepted it (see [`crate::telemetry::trace`]).
    #[diesel(sql_type = Nullable<Text>)]
    pub traceparent: Option<String>,
}

/// Rows `$holder` may resume: its own; those whose lease ran out; those
/// whose holder is not alive — its presence lock (see
/// `engine::presence`) is not held, because its process died.
/// (`me.holder` comes from the statement's `WITH me AS (SELECT $1 AS holder)`.)
const RESUMABLE: &str = "(i.leased_by = me.holder OR i.lease_until < now() OR i.leased_by NOT IN ( \
       SELECT (l.classid::bigint << 32) | l.objid::bigint FROM pg_locks l \
       WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())))";

/// Unprocessed inbox rows of one phone that `holder` may resume, in
/// acceptance order — not those another live process is applying.
/// Generic over the connection so it can run pipelined with the session
/// read on a shared `&AsyncPgConnection` (an activation's one round trip).
#[tracing::instrument(skip_all, fields(phone = %mask(phone)))]
pub async fn unprocessed<C>(conn: &mut C, phone: &str, holder: i64, limit: i64) -> Result<Vec<PendingInbound>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    Ok(Cached::new("WITH me AS (SELECT ")
        .bind::<BigInt, _>(holder)
        .sql("::int8 AS holder) SELECT i.id, i.provider_message_id, i.payload, i.traceparent FROM inbox i, me WHERE i.phone = ")
        .bind::<Text, _>(phone)
        .sql(" AND i.processed_at IS NULL AND ")
        .sql(RESUMABLE)
        .sql(" ORDER BY i.id LIMIT ")
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await?)
}

/// An unprocessed inbox row accepted before another, and whether the
/// asking process may take it up (see [`RESUMABLE`]). `PendingInbound`'s
/// columns and one more (diesel's `embed` does not take its derive).
#[derive(Debug, QueryableByName)]
pub struct Waiting {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    provider_message_id: String,
    #[diesel(sql_type = Jsonb)]
    payload: serde_json::Value,
    #[diesel(sql_type = Nullable<Text>)]
    traceparent: Option<String>,
    /// Its own, its holder gone, or its lease run out; otherwise a live
    /// process holds it and is applying it.
    #[diesel(sql_type = Bool)]
    pub free: bool,
}

impl Waiting {
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn into_row(self) -> PendingInbound {
        PendingInbound {
            id: self.id,
            provider_message_id: self.provider_message_id,
            payload: self.payload,
            traceparent: self.traceparent,
        }
    }
}

/// Unprocessed inbox rows of one phone accepted before row `before`,
/// whichever process holds them, in acceptance order: what a step found
/// waiting before its message (see `steps::WriteOutcome::Behind`).
#[tracing::instrument(skip_all, fields(phone = %mask(phone)))]
pub async fn waiting_before(
    conn: &mut AsyncPgConnection,
    phone: &str,
    holder: i64,
    before: i64,
    limit: i64,
) -> Result<Vec<Waiting>> {
    Ok(Cached::new("WITH me AS (SELECT ")
        .bind::<BigInt, _>(holder)
        .sql("::int8 AS holder) SELECT i.id, i.provider_message_id, i.payload, i.traceparent, ")
        .sql(RESUMABLE)
        .sql(" AS free FROM inbox i, me WHERE i.phone = ")
        .bind::<Text, _>(phone)
        .sql(" AND i.processed_at IS NULL AND i.id < ")
        .bind::<BigInt, _>(before)
        .sql(" ORDER BY i.id LIMIT ")
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await?)
}

#[derive(QueryableByName)]
struct PhoneRow {
    #[diesel(sql_type = Text)]
    phone: String,
}

/// Phones with unprocessed inbox rows that `holder` may resume: for
/// start-up and sweeps. Without `own`, only rows of other processes (gone,
/// or past their lease): a busy process's own rows are in its mailboxes.
#[tracing::instrument(skip_all)]
pub async fn phones_with_unprocessed(conn: &mut AsyncPgConnection, holder: i64, own: bool) -> Result<Vec<String>> {
    let rows: Vec<PhoneRow> = Cached::new("WITH me AS (SELECT ")
        .bind::<BigInt, _>(holder)
        .sql("::int8 AS holder, ")
        .bind::<Bool, _>(own)
        .sql("::bool AS own) SELECT DISTINCT i.phone FROM inbox i, me WHERE i.processed_at IS NULL AND ")
        .sql(RESUMABLE)
        .sql(" AND (me.own OR i.leased_by <> me.holder)")
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| r.phone).collect())
}

/// Records a failed attempt at an inbound message; returns the attempts so far.
#[tracing::instrument(skip_all, fields(phone = %mask(phone), inbox_id))]
pub async fn record_failure(conn: &mut AsyncPgConnection, phone: &str, inbox_id: i64, reason: &str) -> Result<i32> {
    Ok(diesel::update(inbox::table)
        .filter(inbox::phone.eq(phone))
        .filter(inbox::id.eq(inbox_id))
        .set((inbox::attempts.eq(inbox::attempts + 1), inbox::last_error.eq(reason)))
        .returning(inbox::attempts)
        .get_result(conn)
        .await?)
}

/// Moves a poison inbound message to dead letters and marks it handled, in
/// one transaction, so the conversation goes on with the next message.
#[tracing::instrument(skip_all, fields(phone = %mask(phone), inbox_id))]
/// `told`: the rows telling the team's `dead_letter` webhooks, inserted
/// with the dead letter.
pub async fn quarantine(
    conn: &mut AsyncPgConnection,
    phone: &str,
    inbox_id: i64,
    reason: &str,
    told: &[super::steps::NewOutbox],
) -> Result<()> {
    let phone = phone.to_string();
    let reason = reason.to_string();
    conn.transaction::<_, DbError, _>(async move |conn| {
        let payload: Option<serde_json::Value> = diesel::update(inbox::table)
            .filter(inbox::phone.eq(&phone))
            .filter(inbox::id.eq(inbox_id))
            .filter(inbox::processed_at.is_null())
            .set((inbox::processed_at.eq(diesel::dsl::now), inbox::last_error.eq(&reason)))
            .returning(inbox::payload)
            .get_result(conn)
            .await
            .optional()?;
        if let Some(payload) = payload {
            diesel::insert_into(dead_letters::table)
                .values((
                    dead_letters::phone.eq(&phone),
                    dead_letters::source.eq("inbox"),
                    dead_letters::source_id.eq(inbox_id),
                    dead_letters::payload.eq(payload),
                    dead_letters::reason.eq(&reason),
                ))
                .execute(conn)
                .await?;
            super::told::insert(conn, told, super::outbox::conversation_of).await?;
        }
        Ok(())
    })
    .await
}
