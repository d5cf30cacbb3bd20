//! Outbox rows: claim due rows (`FOR UPDATE SKIP LOCKED`, so several
//! processes share the work), and record each send's result.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Jsonb, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::schema::{dead_letters, messages, outbox};
use super::sql::Cached;
use crate::db::error::{DbError, Result};

/// Where a step commit hands the outbox rows it claimed at insert: the
/// outbox's in-memory send queue. A trait here, so the DB writer (an actor)
/// hands rows over without knowing the outbox.
pub trait ClaimedRows: Send + Sync {
    /// The lease to claim a commit's rows with, or `None` to leave them
    /// pending (the queue is full or closing).
    fn claim_ms(&self) -> Option<i64>;
    /// Takes rows claimed by a commit that began at `began`, to send them.
    fn hand(&self, claimed: Vec<Claimed>, began: std::time::Instant);
}

/// A claimed row, leased to this process until `lease` passes.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub phone: String,
    #[diesel(sql_type = Jsonb)]
    pub payload: serde_json::Value,
    #[diesel(sql_type = Text)]
    pub idempotency_key: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// Claimed again after its lease ran out while it was being sent: its
    /// sender died (or lost the database) before recording the answer, so
    /// the provider may have accepted it already — sending it again may
    /// repeat it.
    #[diesel(sql_type = Bool)]
    pub lapsed: bool,
    /// The span that made the row (see [`crate::telemetry::trace`]).
    #[diesel(sql_type = Nullable<Text>)]
    pub traceparent: Option<String>,
}

/// Claims up to `limit` due rows, each the next of its conversation: a row
/// is claimed only while no earlier row of its conversation is open
/// (pending or being sent) and no other is being sent (a row replayed from
/// the dead letters is older than the ones after it), so a conversation's messages leave one at a
/// time, in the order they were committed — across processes, as every
/// claim reads the same rows. Due rows are pending ones and `sending` ones
/// whose lease expired (their process died mid-send). Each claim counts an
/// attempt.
#[tracing::instrument(skip_all, fields(limit))]
pub async fn claim(conn: &mut AsyncPgConnection, limit: i64, lease_ms: i64) -> Result<Vec<Claimed>> {
    Ok(Cached::new("WITH claim AS (SELECT ")
        .bind::<BigInt, _>(limit)
        .sql("::int8 AS n, ")
        .bind::<BigInt, _>(lease_ms)
        .sql(
            "::int8 AS lease_ms), \
             due AS (SELECT d.phone, d.id, d.status AS was FROM outbox d \
                   WHERE d.status IN ('pending', 'sending') AND d.next_attempt_at <= now() \
                     AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.phone = d.phone AND p.id <> d.id \
                                       AND (p.status = 'sending' \
                                            OR (p.id < d.id AND p.status = 'pending'))) \
                   ORDER BY d.next_attempt_at, d.id LIMIT (SELECT n FROM claim) FOR UPDATE SKIP LOCKED) \
             UPDATE outbox AS o SET status = 'sending', attempts = o.attempts + 1, \
                    next_attempt_at = now() + make_interval(secs => claim.lease_ms / 1000.0), updated_at = now() \
             FROM claim, due \
             WHERE o.phone = due.phone AND o.id = due.id \
             RETURNING o.id, o.phone, o.payload, o.idempotency_key, o.attempts, due.was = 'sending' AS lapsed, \
                       o.traceparent",
        )
        .load(conn)
        .await?)
}

/// Claims the next row of each of `phones` (sorted, distinct) whose row
/// before it was just finished in this transaction: the conversation's
/// next message goes at once, without waiting for the claim query, and no
/// other process can take it first (it saw the finished row still open).
async fn claim_next(conn: &AsyncPgConnection, phones: &[&str], lease_ms: i64) -> diesel::QueryResult<Vec<Claimed>> {
    use diesel::sql_types::Array;
    Cached::new("UPDATE outbox AS o SET status = 'sending', attempts = o.attempts + 1, next_attempt_at = now() + ")
        .bind::<BigInt, _>(lease_ms)
        .sql(
            "::int8 * interval '1 millisecond', updated_at = now() \
             FROM unnest(",
        )
        .bind::<Array<Text>, _>(phones)
        .sql(
            "::text[]) AS c(phone) CROSS JOIN LATERAL \
               (SELECT h.id FROM outbox h WHERE h.phone = c.phone AND h.status IN ('pending', 'sending') \
                ORDER BY h.id LIMIT 1) AS head \
             WHERE o.phone = c.phone AND o.id = head.id AND o.status = 'pending' AND o.next_attempt_at <= now() \
             RETURNING o.id, o.phone, o.payload, o.idempotency_key, o.attempts, false AS lapsed, o.traceparent",
        )
        .load::<Claimed>(&mut &*conn)
        .await
}

/// Rows were sent: store each provider id on its row and on its message,
/// and claim each conversation's next row, in one transaction (one commit
/// instead of one each). Returns the next rows, leased for `lease_ms`. A
/// row is marked only while its claim is still this one (`sending`, the
/// same attempt): a row whose lease ran out and that another process
/// claimed again is left to it, and its conversation's next row with it.
/// With `told`, the rows it makes of the messages sent (the team's
/// `message.sent` webhooks) are inserted in the same transaction.
pub async fn mark_sent_batch(
    conn: &mut AsyncPgConnection,
    sent: &[(Claimed, String)],
    lease_ms: i64,
    told: Option<super::told::SentRows<'_>>,
) -> Result<Vec<Claimed>> {
    use diesel::sql_types::{Array, BigInt, Text};
    #[derive(QueryableByName)]
    struct Marked {
        #[diesel(sql_type = Text)]
        phone: String,
        #[diesel(sql_type = Text)]
        idempotency_key: String,
    }
    let mut sorted: Vec<&(Claimed, String)> = sent.iter().collect();
    sorted.sort_by(|a, b| (&a.0.phone, a.0.id).cmp(&(&b.0.phone, b.0.id)));
    let phones: Vec<&str> = sorted.iter().map(|(r, _)| r.phone.as_str()).collect();
    let ids: Vec<i64> = sorted.iter().map(|(r, _)| r.id).collect();
    let attempts: Vec<i32> = sorted.iter().map(|(r, _)| r.attempts).collect();
    let pids: Vec<&str> = sorted.iter().map(|(_, p)| p.as_str()).collect();
    conn.transaction::<_, DbError, _>(async move |conn| {
        // The commit does not wait for its flush: it is visible (and safe
        // from a crash of this process) at once, and only a crash of
        // PostgreSQL itself within the WAL writer's delay (≤ 3 ×
        // `wal_writer_delay`) could lose it — its rows would then be sent
        // again after their lease, counted as resent. Marks then add no
        // flush of their own to the disk every ack waits on.
        Cached::new("SET LOCAL synchronous_commit = off").execute(conn).await?;
        // The row and its message in one statement; the next rows in a
        // second, which sees the first's marks.
        let marked: Vec<Marked> = Cached::new(
            "WITH marked AS (UPDATE outbox AS o SET status = 'sent', provider_message_id = u.pid, \
                    last_error = NULL, updated_at = now() FROM unnest(",
        )
        .bind::<Array<Text>, _>(&phones)
        .sql("::text[], ")
        .bind::<Array<BigInt>, _>(&ids)
        .sql("::bigint[], ")
        .bind::<Array<Integer>, _>(&attempts)
        .sql("::int4[], ")
        .bind::<Array<Text>, _>(&pids)
        .sql(
            "::text[]) AS u(phone, id, attempts, pid) \
               WHERE o.phone = u.phone AND o.id = u.id AND o.status = 'sending' AND o.attempts = u.attempts \
               RETURNING o.phone, o.idempotency_key, o.provider_message_id), \
             messages_sent AS (UPDATE messages AS m SET status = 'sent', \
                    provider_message_id = marked.provider_message_id, updated_at = now() \
               FROM marked WHERE m.phone = marked.phone AND m.outbox_key = marked.idempotency_key) \
             SELECT phone, idempotency_key FROM marked ORDER BY phone",
        )
        .load(conn)
        .await?;
        if marked.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(told) = told {
            // Only the rows this mark took: one another process claimed
            // again is told by that process's mark.
            let phones: Vec<&str> = marked.iter().map(|m| m.phone.as_str()).collect();
            let keys: Vec<&str> = marked.iter().map(|m| m.idempotency_key.as_str()).collect();
            let messages = super::told::sent_messages(conn, &phones, &keys).await?;
            super::told::insert(conn, &told(&messages), conversation_of).await?;
        }
        let mut conversations: Vec<&str> = marked.iter().map(|m| m.phone.as_str()).collect();
        conversations.dedup();
        Ok(claim_next(conn, &conversations, lease_ms).await?)
    })
    .await
}

/// Claimed rows not sent go back to pending, due now, their attempt
/// uncounted (a dispatcher stopping with rows handed to it in memory) —
/// each only while its claim is still this one: a row whose lease ran out
/// and that another process claimed again is left to it.
pub async fn give_back(conn: &mut AsyncPgConnection, rows: &[Claimed]) -> Result<()> {
    use diesel::sql_types::Array;
    let mut sorted: Vec<&Claimed> = rows.iter().collect();
    sorted.sort_by(|a, b| (&a.phone, a.id).cmp(&(&b.phone, b.id)));
    let phones: Vec<&str> = sorted.iter().map(|r| r.phone.as_str()).collect();
    let ids: Vec<i64> = sorted.iter().map(|r| r.id).collect();
    let attempts: Vec<i32> = sorted.iter().map(|r| r.attempts).collect();
    let lapsed: Vec<bool> = sorted.iter().map(|r| r.lapsed).collect();
    // A lapsed row stays `sending`, its attempt kept (see `release`).
    Cached::new(
        "UPDATE outbox AS o SET status = CASE WHEN u.lapsed THEN 'sending' ELSE 'pending' END, \
                attempts = CASE WHEN u.lapsed THEN o.attempts ELSE greatest(o.attempts - 1, 0) END, \
                next_attempt_at = now(), updated_at = now() FROM unnest(",
    )
    .bind::<Array<Text>, _>(&phones)
    .sql("::text[], ")
    .bind::<Array<BigInt>, _>(&ids)
    .sql("::bigint[], ")
    .bind::<Array<Integer>, _>(&attempts)
    .sql("::int4[], ")
    .bind::<Array<Bool>, _>(&lapsed)
    .sql(
        "::bool[]) AS u(phone, id, attempts, lapsed) \
         WHERE o.phone = u.phone AND o.id = u.id AND o.status = 'sending' AND o.attempts = u.attempts",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The row while its claim is still `row`'s (not claimed again by another
/// process after its lease ran out).
macro_rules! still_claimed {
    ($row:expr) => {
        outbox::table
            .find((&$row.phone, $row.id))
            .filter(outbox::status.eq("sending"))
            .filter(outbox::attempts.eq($row.attempts))
    };
}

/// Try again at `at`.
pub async fn mark_retry(conn: &mut AsyncPgConnection, row: &Claimed, at: DateTime<Utc>, reason: &str) -> Result<()> {
    diesel::update(still_claimed!(row))
        .set((
            outbox::status.eq("pending"),
            outbox::next_attempt_at.eq(at),
            outbox::last_error.eq(reason),
            outbox::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives a claim back untouched, due at `at` (the number's breaker is open,
/// the endpoint's slots are busy, or its send could not begin within half
/// its lease): the attempt does not count. A lapsed row (its earlier
/// attempt's answer never recorded) stays `sending`, due at `at`, its
/// attempt kept: claimed again, it is still known as possibly sent, and
/// the earlier sender's claim is not this one.
pub async fn release(conn: &mut AsyncPgConnection, row: &Claimed, at: DateTime<Utc>) -> Result<()> {
    diesel::update(still_claimed!(row))
        .set((
            outbox::status.eq(if row.lapsed { "sending" } else { "pending" }),
            outbox::attempts.eq(outbox::attempts - i32::from(!row.lapsed)),
            outbox::next_attempt_at.eq(at),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends the row: `failed` (permanent error) or `dead` (out of attempts, also
/// copied to dead letters). Its message shows the failure. The
/// conversation's next row is claimed in the same transaction (leased for
/// `lease_ms`) and returned: a failed message does not hold back the ones
/// after it. A dead row's `told` rows (the team's `dead_letter` webhooks)
/// are inserted with its dead letter.
pub async fn mark_final(
    conn: &mut AsyncPgConnection,
    row: &Claimed,
    dead: bool,
    reason: &str,
    lease_ms: i64,
    told: &[crate::db::steps::NewOutbox],
) -> Result<Vec<Claimed>> {
    let row = row.clone();
    let reason = reason.to_string();
    conn.transaction::<_, DbError, _>(async move |conn| {
        let ended = diesel::update(still_claimed!(row))
            .set((
                outbox::status.eq(if dead { "dead" } else { "failed" }),
                outbox::last_error.eq(&reason),
                outbox::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        if ended == 0 {
            // Claimed again by another process: its claim decides.
            return Ok(Vec::new());
        }
        diesel::update(messages::table)
            .filter(messages::phone.eq(&row.phone))
            .filter(messages::outbox_key.eq(&row.idempotency_key))
            .set((
                messages::status.eq("failed"),
                messages::error.eq(&reason),
                messages::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        if dead {
            diesel::insert_into(dead_letters::table)
                .values((
                    dead_letters::phone.eq(&row.phone),
                    dead_letters::source.eq("outbox"),
                    dead_letters::source_id.eq(row.id),
                    dead_letters::payload.eq(&row.payload),
                    dead_letters::reason.eq(&reason),
                ))
                .execute(conn)
                .await?;
            super::told::insert(conn, told, conversation_of).await?;
        }
        Ok(claim_next(conn, &[row.phone.as_str()], lease_ms).await?)
    })
    .await
}

/// Rows still to deliver (pending or being sent).
pub async fn backlog(conn: &mut AsyncPgConnection) -> Result<i64> {
    Ok(outbox::table
        .filter(outbox::status.eq_any(["pending", "sending"]))
        .count()
        .get_result(conn)
        .await?)
}

/// The prefix of a webhook lane's key, `webhook:<name>:<conversation>`: one
/// endpoint's events of one conversation, in the `phone` column.
pub const WEBHOOK_LANE: &str = "webhook:";

/// Endpoint `name`'s lane for `conversation` (the name holds no `:`).
pub fn webhook_lane(name: &str, conversation: &str) -> String {
    format!("{WEBHOOK_LANE}{name}:{conversation}")
}

/// The conversation a row's key belongs to: its own, or a lane's (the
/// name in a lane holds no `:`).
pub fn conversation_of(key: &str) -> &str {
    match key.strip_prefix(WEBHOOK_LANE) {
        Some(rest) => rest.split_once(':').map_or(rest, |(_, conversation)| conversation),
        None => key,
    }
}

/// Applies a delivery status webhook to our outbound message with that
/// provider id, and inserts the rows `told` makes for its conversation (the
/// team's webhooks), in one transaction under the conversation's lock, as
/// a step inserts its rows. Returns the message's phone if one was updated,
/// and whether rows were inserted. A status never moves backwards (`read`
/// is not overwritten by a late `delivered`).
pub async fn apply_status(
    conn: &mut AsyncPgConnection,
    recipient: Option<&str>,
    provider_id: &str,
    status: &str,
    error: Option<&str>,
    told: Option<super::told::StatusRows<'_>>,
) -> Result<(Option<String>, bool)> {
    let Some(told) = told else {
        // No webhook wants statuses: the update alone, no transaction around it.
        return Ok((update_status(conn, recipient, provider_id, status, error).await?, false));
    };
    conn.transaction::<_, DbError, _>(async move |conn| {
        let Some(phone) = update_status(conn, recipient, provider_id, status, error).await? else {
            return Ok((None, false));
        };
        // Only a status that changed something gets here: told once.
        let rows = told(&phone);
        super::told::insert(conn, &rows, conversation_of).await?;
        Ok((Some(phone), !rows.is_empty()))
    })
    .await
}

/// The status update itself: the message's phone if one was updated.
async fn update_status(
    conn: &mut AsyncPgConnection,
    recipient: Option<&str>,
    provider_id: &str,
    status: &str,
    error: Option<&str>,
) -> Result<Option<String>> {
    let rank = |s: &str| match s {
        "queued" => 0,
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        "failed" => 4,
        _ => -1,
    };
    let allowed: Vec<&str> = ["queued", "sent", "delivered", "read"]
        .into_iter()
        .filter(|s| rank(s) < rank(status) || status == "failed")
        .collect();
    let mut q = diesel::update(messages::table)
        .filter(messages::provider_message_id.eq(provider_id))
        .filter(messages::direction.eq("out"))
        .filter(messages::status.eq_any(&allowed))
        .into_boxed();
    if let Some(phone) = recipient {
        // With the phone, the (phone, provider_message_id) index finds the
        // row; without it, the whole table is searched.
        q = q.filter(messages::phone.eq(phone));
    }
    let phones: Vec<String> = q
        .set((
            messages::status.eq(status),
            messages::error.eq(error),
            messages::updated_at.eq(diesel::dsl::now),
        ))
        .returning(messages::phone)
        .get_results(conn)
        .await?;
    Ok(phones.into_iter().next())
}
