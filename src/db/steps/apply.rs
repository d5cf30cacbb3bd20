//! The writes of a batch's valid steps: one statement per table, pipelined.
//!
//! The statements do not depend on one another (the versions were checked
//! under the locks; no row of one refers to another's), so they are sent
//! back to back and answered in order: one round trip for all (PostgreSQL
//! still runs them one after the other, in the transaction). Each statement
//! has a fixed text over arrays, so it is prepared once whatever the batch
//! size; rows keep the batch's order, so ids follow it. Each statement is
//! sent when its future is first polled (all of them by the one join), and
//! the futures borrow only the connection.

use std::collections::HashMap;

use diesel::sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::future::{self, BoxFuture};

use super::{NewMedia, NewMessage, NewOutbox, NewOutcome, StepWrite};
use crate::db::error::{DbError, Result};
use crate::db::outbox::Claimed;
use crate::db::sql::Cached;

pub(super) type Pending<'c> = BoxFuture<'c, diesel::QueryResult<usize>>;

/// Applies `valid` (steps whose versions were checked under the locks).
/// Returns the outbox rows inserted claimed (none without `claim_ms`; see
/// [`super::commit_batch_claiming`]).
pub(super) async fn apply(
    conn: &mut AsyncPgConnection,
    valid: &[&StepWrite],
    claim_ms: Option<i64>,
) -> Result<Vec<Claimed>> {
    let conn: &AsyncPgConnection = conn;
    let claim = Claim::new(claim_ms);
    let (out, feed): (Vec<&NewOutbox>, Vec<&NewOutbox>) = valid
        .iter()
        .flat_map(|w| &w.outbox)
        .partition(|o| o.kind != crate::db::events::FEED_ROW);
    let (sessions, session_rows) = update_sessions(conn, valid);
    let mut pipeline: Vec<Pending<'_>> = vec![sessions];
    pipeline.extend(insert_messages(conn, valid));
    pipeline.extend(insert_outcomes(conn, valid));
    pipeline.extend(insert_media(conn, valid));
    pipeline.extend(mark_processed(conn, valid));
    pipeline.extend(super::timers::mark_fired(conn, valid));
    pipeline.extend(super::timers::replace(conn, valid));
    pipeline.extend(insert_feed(conn, &feed));
    let outbox = insert_outbox(conn, &out, &claim);
    let (counts, inserted) = futures_util::join!(future::join_all(pipeline), outbox);
    let (counts, inserted) = crate::db::pipelined::both(crate::db::pipelined::all(counts), inserted)?;
    if counts[0] != session_rows {
        // Impossible while the rows are locked; refuse to commit half a batch.
        return Err(DbError::Invariant(format!(
            "versioned update touched {} of {session_rows} locked sessions",
            counts[0]
        )));
    }
    Ok(if claim_ms.is_some() {
        claimed(inserted, &out, claim.attempts)
    } else {
        Vec::new()
    })
}

/// One session row's update: a chain's first expected version, its last
/// write's state, how many steps it applies, and the customer's latest
/// message time among them.
struct SessionUpdate<'a> {
    expected: i64,
    last: &'a StepWrite,
    steps: i64,
    customer_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The versioned session update: a chain updates its row once, to its last
/// state (a write that only stores a message changes no state, but a
/// customer's message moves the window). Returns the statement and the
/// number of rows it must touch.
fn update_sessions<'c>(conn: &'c AsyncPgConnection, valid: &[&StepWrite]) -> (Pending<'c>, usize) {
    let mut order: Vec<&str> = Vec::new();
    let mut updates: HashMap<&str, SessionUpdate> = HashMap::new();
    for w in valid.iter().filter(|w| w.stepped || w.time.customer_at.is_some()) {
        let (steps, at) = (i64::from(w.stepped), w.time.customer_at);
        updates
            .entry(w.phone.as_str())
            .and_modify(|u| {
                u.last = w;
                u.steps += steps;
                u.customer_at = u.customer_at.max(at);
            })
            .or_insert_with(|| {
                order.push(w.phone.as_str());
                SessionUpdate {
                    expected: w.expected_version,
                    last: w,
                    steps,
                    customer_at: at,
                }
            });
    }
    let rows: Vec<&SessionUpdate> = order.iter().map(|p| &updates[p]).collect();
    let statement = Cached::new(
        "UPDATE sessions AS s SET flow_state = u.flow_state, data = u.data, handoff = u.handoff, \
                version = s.version + u.steps, \
                updated_at = CASE WHEN u.steps > 0 THEN now() ELSE s.updated_at END, \
                last_customer_at = greatest(s.last_customer_at, u.customer_at) FROM unnest(",
    )
    .bind::<Array<Text>, _>(&order)
    .sql("::text[], ")
    .bind::<Array<Text>, _>(rows.iter().map(|u| u.last.flow_state.as_str()).collect::<Vec<_>>())
    .sql("::text[], ")
    .bind::<Array<Jsonb>, _>(rows.iter().map(|u| &u.last.data).collect::<Vec<_>>())
    .sql("::jsonb[], ")
    .bind::<Array<Bool>, _>(rows.iter().map(|u| u.last.handoff).collect::<Vec<_>>())
    .sql("::bool[], ")
    .bind::<Array<BigInt>, _>(rows.iter().map(|u| u.expected).collect::<Vec<_>>())
    .sql("::int8[], ")
    .bind::<Array<BigInt>, _>(rows.iter().map(|u| u.steps).collect::<Vec<_>>())
    .sql("::int8[], ")
    .bind::<Array<Nullable<Timestamptz>>, _>(rows.iter().map(|u| u.customer_at).collect::<Vec<_>>())
    .sql(
        "::timestamptz[]) AS u(phone, flow_state, data, handoff, expected, steps, customer_at) \
         WHERE s.phone = u.phone AND s.version = u.expected",
    )
    .execute(&mut &*conn);
    (statement, rows.len())
}

fn insert_messages<'c>(conn: &'c AsyncPgConnection, valid: &[&StepWrite]) -> Option<Pending<'c>> {
    let msgs: Vec<&NewMessage> = valid.iter().flat_map(|w| &w.messages).collect();
    if msgs.is_empty() {
        return None;
    }
    let col = |f: fn(&NewMessage) -> &str| msgs.iter().map(|m| f(m)).collect::<Vec<&str>>();
    let opt = |f: fn(&NewMessage) -> Option<&str>| msgs.iter().map(|m| f(m)).collect::<Vec<Option<&str>>>();
    Some(
        Cached::new(
            "INSERT INTO messages (phone, direction, origin, body, inbox_id, provider_message_id, status, outbox_key, author) \
             SELECT u.phone, u.direction, u.origin, u.body, u.inbox_id, u.provider_message_id, u.status, u.outbox_key, u.author \
             FROM unnest(",
        )
        .bind::<Array<Text>, _>(col(|m| &m.phone))
        .sql("::text[], ")
        .bind::<Array<Text>, _>(col(|m| m.direction))
        .sql("::text[], ")
        .bind::<Array<Text>, _>(col(|m| m.origin))
        .sql("::text[], ")
        .bind::<Array<Text>, _>(col(|m| &m.body))
        .sql("::text[], ")
        .bind::<Array<Nullable<BigInt>>, _>(msgs.iter().map(|m| m.inbox_id).collect::<Vec<Option<i64>>>())
        .sql("::int8[], ")
        .bind::<Array<Nullable<Text>>, _>(opt(|m| m.provider_message_id.as_deref()))
        .sql("::text[], ")
        .bind::<Array<Text>, _>(col(|m| m.status))
        .sql("::text[], ")
        .bind::<Array<Nullable<Text>>, _>(opt(|m| m.outbox_key.as_deref()))
        .sql("::text[], ")
        .bind::<Array<Nullable<Text>>, _>(opt(|m| m.author.as_deref()))
        .sql(
            "::text[]) WITH ORDINALITY \
             AS u(phone, direction, origin, body, inbox_id, provider_message_id, status, outbox_key, author, ord) \
             ORDER BY u.ord",
        )
        .execute(&mut &*conn),
    )
}

fn insert_outcomes<'c>(conn: &'c AsyncPgConnection, valid: &[&StepWrite]) -> Option<Pending<'c>> {
    let rows: Vec<&NewOutcome> = valid.iter().flat_map(|w| &w.outcomes).collect();
    if rows.is_empty() {
        return None;
    }
    Some(
        Cached::new(
            "INSERT INTO outcomes (phone, kind, ticket, data, inbox_id) \
             SELECT u.phone, u.kind, u.ticket, u.data, u.inbox_id FROM unnest(",
        )
        .bind::<Array<Text>, _>(rows.iter().map(|o| o.phone.as_str()).collect::<Vec<_>>())
        .sql("::text[], ")
        .bind::<Array<Text>, _>(rows.iter().map(|o| o.kind.as_str()).collect::<Vec<_>>())
        .sql("::text[], ")
        .bind::<Array<Text>, _>(rows.iter().map(|o| o.ticket.as_str()).collect::<Vec<_>>())
        .sql("::text[], ")
        .bind::<Array<Jsonb>, _>(rows.iter().map(|o| &o.data).collect::<Vec<_>>())
        .sql("::jsonb[], ")
        .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|o| o.inbox_id).collect::<Vec<_>>())
        .sql(
            "::int8[]) WITH ORDINALITY AS u(phone, kind, ticket, data, inbox_id, ord) \
             ORDER BY u.ord ON CONFLICT DO NOTHING",
        )
        .execute(&mut &*conn),
    )
}

/// The download jobs of the steps' media files (a file named twice, by a
/// replayed message, is one job).
fn insert_media<'c>(conn: &'c AsyncPgConnection, valid: &[&StepWrite]) -> Option<Pending<'c>> {
    let rows: Vec<&NewMedia> = valid.iter().flat_map(|w| &w.media).collect();
    if rows.is_empty() {
        return None;
    }
    let col = |f: fn(&NewMedia) -> &str| rows.iter().map(|m| f(m)).collect::<Vec<&str>>();
    let opt = |f: fn(&NewMedia) -> Option<&str>| rows.iter().map(|m| f(m)).collect::<Vec<Option<&str>>>();
    Some(
        Cached::new(
            "INSERT INTO media (phone, media_id, provider_message_id, kind, mime_type, sha256, caption) \
             SELECT u.phone, u.media_id, u.provider_message_id, u.kind, u.mime_type, u.sha256, u.caption FROM unnest(",
        )
        .bind::<Array<Text>, _>(col(|m| &m.phone))
        .sql("::text[], ")
        .bind::<Array<Text>, _>(col(|m| &m.media_id))
        .sql("::text[], ")
        .bind::<Array<Text>, _>(col(|m| &m.provider_message_id))
        .sql("::text[], ")
        .bind::<Array<Text>, _>(col(|m| &m.kind))
        .sql("::text[], ")
        .bind::<Array<Nullable<Text>>, _>(opt(|m| m.mime_type.as_deref()))
        .sql("::text[], ")
        .bind::<Array<Nullable<Text>>, _>(opt(|m| m.sha256.as_deref()))
        .sql("::text[], ")
        .bind::<Array<Nullable<Text>>, _>(opt(|m| m.caption.as_deref()))
        .sql(
            "::text[]) WITH ORDINALITY \
             AS u(phone, media_id, provider_message_id, kind, mime_type, sha256, caption, ord) \
             ORDER BY u.ord ON CONFLICT DO NOTHING",
        )
        .execute(&mut &*conn),
    )
}

/// Marks the steps' inbound messages processed, with the version each
/// committed at.
fn mark_processed<'c>(conn: &'c AsyncPgConnection, valid: &[&StepWrite]) -> Option<Pending<'c>> {
    let rows: Vec<(&str, i64, i64)> = valid
        .iter()
        .filter_map(|w| w.inbox_id.map(|id| (w.phone.as_str(), id, w.committed_version())))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let phones: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let ids: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let versions: Vec<i64> = rows.iter().map(|r| r.2).collect();
    // No `processed_at IS NULL` filter (they were checked under the session
    // locks): with it the planner reads the partial unprocessed index, whose
    // statistics lag behind a busy phone's backlog, and hashes that backlog.
    Some(
        Cached::new(
            "UPDATE inbox AS i SET processed_at = coalesce(i.processed_at, now()), attempts = i.attempts + 1, \
             version = u.version FROM unnest(",
        )
        .bind::<Array<Text>, _>(phones)
        .sql("::text[], ")
        .bind::<Array<BigInt>, _>(ids)
        .sql("::int8[], ")
        .bind::<Array<BigInt>, _>(versions)
        .sql("::int8[]) AS u(phone, id, version) WHERE i.phone = u.phone AND i.id = u.id")
        .execute(&mut &*conn),
    )
}

/// How the outbox rows are inserted: claimed for this process's dispatcher
/// (status `sending`, one attempt counted, leased) or left pending — with
/// one statement text either way.
struct Claim {
    status: &'static str,
    attempts: i32,
    lease_ms: i64,
}

impl Claim {
    fn new(claim_ms: Option<i64>) -> Self {
        match claim_ms {
            Some(ms) => Self {
                status: "sending",
                attempts: 1,
                lease_ms: ms.max(0),
            },
            None => Self {
                status: "pending",
                attempts: 0,
                lease_ms: 0,
            },
        }
    }
}

#[derive(diesel::QueryableByName)]
struct InsertedOutbox {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    phone: String,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    /// Claimed at insert (the conversation's next message to send).
    #[diesel(sql_type = Bool)]
    claimed: bool,
}

/// Inserts the rows in batch order. With a claim, a row is claimed only if
/// it is the next its conversation sends: the first of its conversation in
/// the batch, with no row of that conversation still open (one in flight
/// elsewhere, a retry waiting). The others are inserted pending, and are
/// claimed when the row before them is finished (see
/// `outbox::mark_sent_batch`) or by the claim query. The conversation's
/// session row is locked by this transaction, so no other step inserts
/// into it meanwhile.
async fn insert_outbox(
    conn: &AsyncPgConnection,
    out: &[&NewOutbox],
    claim: &Claim,
) -> diesel::QueryResult<Vec<InsertedOutbox>> {
    if out.is_empty() {
        return Ok(Vec::new());
    }
    Cached::new("WITH claim AS (SELECT ")
        .bind::<Text, _>(claim.status)
        .sql("::text AS status, ")
        .bind::<Integer, _>(claim.attempts)
        .sql("::int4 AS attempts, ")
        .bind::<BigInt, _>(claim.lease_ms)
        .sql("::int8 AS lease_ms), u AS (SELECT u.*, row_number() OVER (PARTITION BY u.phone ORDER BY u.ord) AS nth FROM unnest(")
        .bind::<Array<Text>, _>(out.iter().map(|o| o.phone.as_str()).collect::<Vec<_>>())
        .sql("::text[], ")
        .bind::<Array<Text>, _>(out.iter().map(|o| o.kind).collect::<Vec<_>>())
        .sql("::text[], ")
        .bind::<Array<Jsonb>, _>(out.iter().map(|o| &o.payload).collect::<Vec<_>>())
        .sql("::jsonb[], ")
        .bind::<Array<Text>, _>(out.iter().map(|o| o.idempotency_key.as_str()).collect::<Vec<_>>())
        .sql("::text[], ")
        .bind::<Array<Nullable<Text>>, _>(out.iter().map(|o| o.traceparent.as_deref()).collect::<Vec<_>>())
        .sql(
            "::text[]) WITH ORDINALITY AS u(phone, kind, payload, key, trace, ord)) \
             INSERT INTO outbox (phone, kind, payload, idempotency_key, status, attempts, next_attempt_at, \
                                 traceparent) \
             SELECT u.phone, u.kind, u.payload, u.key, \
                    CASE WHEN h.next THEN claim.status ELSE 'pending' END, \
                    CASE WHEN h.next THEN claim.attempts ELSE 0 END, \
                    now() + CASE WHEN h.next THEN claim.lease_ms ELSE 0 END * interval '1 millisecond', \
                    u.trace \
             FROM claim, u CROSS JOIN LATERAL (SELECT u.nth = 1 AND NOT EXISTS \
                   (SELECT 1 FROM outbox p WHERE p.phone = u.phone AND p.status IN ('pending', 'sending')) AS next) AS h \
             ORDER BY u.ord \
             RETURNING id, phone, idempotency_key, status = 'sending' AS claimed",
        )
        .load::<InsertedOutbox>(&mut &*conn)
        .await
}

/// The events of the feed the steps caused (their sessions are locked).
fn insert_feed<'c>(conn: &'c AsyncPgConnection, feed: &[&'c NewOutbox]) -> Option<Pending<'c>> {
    if feed.is_empty() {
        return None;
    }
    Some(Box::pin(crate::db::events::insert_statement(feed).execute(&mut &*conn)))
}

/// The claimed rows, for the dispatcher: the payloads are ours already,
/// matched by key, not read back.
fn claimed(inserted: Vec<InsertedOutbox>, out: &[&NewOutbox], attempts: i32) -> Vec<Claimed> {
    let payloads: HashMap<(&str, &str), &NewOutbox> = out
        .iter()
        .map(|o| ((o.phone.as_str(), o.idempotency_key.as_str()), *o))
        .collect();
    inserted
        .into_iter()
        .filter(|r| r.claimed)
        .filter_map(|r| {
            let o = payloads.get(&(r.phone.as_str(), r.idempotency_key.as_str()))?;
            Some(Claimed {
                id: r.id,
                payload: o.payload.clone(),
                traceparent: o.traceparent.clone(),
                phone: r.phone,
                idempotency_key: r.idempotency_key,
                attempts,
                lapsed: false,
            })
        })
        .collect()
}
