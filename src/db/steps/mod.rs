//! The step transaction: everything one conversation step changes, written
//! together, for a batch of phones at once (group commit); several steps
//! of one phone go as a chain, each on the version the one before made.
//!
//! One batch = one transaction:
//! 1. lock the batch's session rows in phone order (`FOR UPDATE`, sorted, so
//!    concurrent batches cannot deadlock) and read their versions;
//! 2. drop the writes whose expected version is stale (a conflict) or whose
//!    inbound message is already processed (a duplicate);
//! 3. apply the rest with one statement per table: versioned session
//!    update (once per phone, to its chain's last state), messages, outbox,
//!    outcomes, `inbox.processed_at`.
//!
//! Each write gets its own [`WriteOutcome`].

use std::collections::{HashMap, HashSet};

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncConnectionCore, AsyncPgConnection, RunQueryDsl};
use futures_util::future::BoxFuture;
use serde::Serialize;

use super::outbox::Claimed;
use super::schema::{dead_letters, inbox, outbox};
use super::sql::Cached;
use crate::error::{Error, Result};
use crate::phone::mask;

/// A message row to insert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewMessage {
    pub phone: String,
    pub direction: &'static str,
    pub origin: &'static str,
    pub body: String,
    pub inbox_id: Option<i64>,
    pub provider_message_id: Option<String>,
    pub status: &'static str,
    pub outbox_key: Option<String>,
}

/// An outbox row to insert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewOutbox {
    pub phone: String,
    pub kind: &'static str,
    pub payload: serde_json::Value,
    pub idempotency_key: String,
}

/// An outcome row to insert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewOutcome {
    pub phone: String,
    pub kind: String,
    pub ticket: String,
    pub data: serde_json::Value,
    pub inbox_id: Option<i64>,
}

/// Everything one step of one conversation writes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepWrite {
    pub phone: String,
    pub expected_version: i64,
    /// With `expected_version` 0: the state to create the session in (at
    /// version 0) if it does not exist yet. A conversation's row is created
    /// by its first step, in the step's transaction: starting one costs no
    /// commit of its own.
    pub create_as: Option<String>,
    pub flow_state: String,
    pub data: serde_json::Value,
    pub handoff: bool,
    /// The inbound message this step applies (marked processed), if any.
    pub inbox_id: Option<i64>,
    /// For steps without an inbound message (agent sends): an outbox
    /// idempotency key; if it is stored already, the step was applied.
    pub dedupe_key: Option<String>,
    pub messages: Vec<NewMessage>,
    pub outbox: Vec<NewOutbox>,
    pub outcomes: Vec<NewOutcome>,
}

/// What happened to one write of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed; the session is now at `version`.
    Committed { version: i64 },
    /// The session was at another version (`None`: it does not exist).
    Conflict { actual: Option<i64> },
    /// The inbound message was already applied (by a restart or another process).
    AlreadyApplied,
}

/// Commits a batch of writes in one transaction. Several writes of one
/// phone form a chain: they apply in the order given, each expecting the
/// version the one before it commits (per-phone batching). Returns one
/// outcome per write, in the input order; once a write of a chain is not
/// committed, the rest of its chain is reported as a conflict (it was
/// computed on a state that did not happen). A database error fails the
/// whole batch (nothing is committed) and is returned to all. With `claim_ms` the outbox rows it inserts are
/// claimed for this process's dispatcher at once (status `sending`, one
/// attempt counted, leased for `claim_ms`), as its claim query would:
/// they are returned, to be handed to the dispatcher in memory, and no
/// other process takes them before the lease runs out. Saves the claim
/// statement (and its commit) on the way of every reply.
#[tracing::instrument(skip_all, fields(batch = writes.len()))]
pub async fn commit_batch_claiming(
    conn: &mut AsyncPgConnection,
    writes: &[StepWrite],
    claim_ms: Option<i64>,
) -> Result<(Vec<WriteOutcome>, Vec<Claimed>)> {
    if writes.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut phones: Vec<&str> = writes.iter().map(|w| w.phone.as_str()).collect();
    phones.sort_unstable();
    phones.dedup();
    conn.transaction::<_, Error, _>(async move |conn| {
        // The creation, the locks and the two "already applied" checks go
        // out pipelined, in one round trip. PostgreSQL still runs them one
        // after the other, each on a snapshot taken when it starts (read
        // committed): the checks see every commit made before the locks
        // were granted, as when each waited for the one before.
        let shared: &AsyncPgConnection = conn;
        let (mut c1, mut c2, mut c3, mut c4) = (shared, shared, shared, shared);
        let ((), versions, mut processed, keys) = futures_util::try_join!(
            create_sessions(&mut c1, writes),
            lock_sessions(&mut c2, &phones),
            processed_inbox(&mut c3, writes),
            existing_keys(&mut c4, writes),
        )?;
        processed.extend(keys);
        // Per phone: the version its chain has reached, and whether it broke.
        let mut reached: HashMap<&str, (Option<i64>, bool)> = HashMap::with_capacity(phones.len());
        let mut results = Vec::with_capacity(writes.len());
        let mut valid: Vec<&StepWrite> = Vec::with_capacity(writes.len());
        for w in writes {
            let actual = versions.get(w.phone.as_str()).copied();
            let (at, broken) = reached.entry(w.phone.as_str()).or_insert((actual, false));
            let applied = w
                .inbox_id
                .is_some_and(|id| processed.contains(&(w.phone.clone(), Key::Inbox(id))))
                || w.dedupe_key
                    .as_ref()
                    .is_some_and(|k| processed.contains(&(w.phone.clone(), Key::Outbox(k.clone()))));
            let outcome = if *broken {
                WriteOutcome::Conflict { actual }
            } else if applied {
                *broken = true;
                WriteOutcome::AlreadyApplied
            } else if *at != Some(w.expected_version) {
                *broken = true;
                WriteOutcome::Conflict { actual }
            } else {
                valid.push(w);
                *at = Some(w.expected_version + 1);
                WriteOutcome::Committed {
                    version: w.expected_version + 1,
                }
            };
            results.push(outcome);
        }
        let claimed = if valid.is_empty() {
            Vec::new()
        } else {
            apply(conn, &valid, claim_ms).await?
        };
        Ok((results, claimed))
    })
    .await
}

/// Creates, at version 0, the sessions that writes expecting version 0 say
/// how to create — those that do not exist yet (a concurrent creator's row
/// wins; the version check then tells whether this write still applies).
async fn create_sessions<C>(conn: &mut C, writes: &[StepWrite]) -> Result<()>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    let mut seen = HashSet::new();
    let (phones, states): (Vec<&str>, Vec<&str>) = writes
        .iter()
        .filter(|w| w.expected_version == 0 && seen.insert(w.phone.as_str()))
        .filter_map(|w| w.create_as.as_deref().map(|s| (w.phone.as_str(), s)))
        .unzip();
    if phones.is_empty() {
        return Ok(());
    }
    let mut order: Vec<usize> = (0..phones.len()).collect();
    order.sort_by_key(|i| phones[*i]);
    let phones: Vec<&str> = order.iter().map(|i| phones[*i]).collect();
    let states: Vec<&str> = order.iter().map(|i| states[*i]).collect();
    // In phone order, like the locks below: concurrent batches cannot deadlock.
    Cached::new("INSERT INTO sessions (phone, flow_state) SELECT u.phone, u.state FROM unnest(")
        .bind::<Array<Text>, _>(&phones)
        .sql("::text[], ")
        .bind::<Array<Text>, _>(&states)
        .sql("::text[]) WITH ORDINALITY AS u(phone, state, ord) ORDER BY u.ord ON CONFLICT (phone) DO NOTHING")
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct PhoneVersion {
    #[diesel(sql_type = Text)]
    phone: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
}

async fn lock_sessions<C>(conn: &mut C, sorted_phones: &[&str]) -> Result<HashMap<String, i64>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    let rows: Vec<PhoneVersion> = Cached::new("SELECT phone, version FROM sessions WHERE phone = ANY(")
        .bind::<Array<Text>, _>(sorted_phones)
        .sql(") ORDER BY phone FOR UPDATE")
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.phone, r.version)).collect())
}

/// What marks a step as already applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Inbox(i64),
    Outbox(String),
}

async fn existing_keys<C>(conn: &mut C, writes: &[StepWrite]) -> Result<HashSet<(String, Key)>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    let (phones, keys): (Vec<&str>, Vec<&str>) = writes
        .iter()
        .filter_map(|w| w.dedupe_key.as_deref().map(|k| (w.phone.as_str(), k)))
        .unzip();
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<(String, String)> = outbox::table
        .filter(outbox::phone.eq_any(&phones))
        .filter(outbox::idempotency_key.eq_any(&keys))
        .select((outbox::phone, outbox::idempotency_key))
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|(p, k)| (p, Key::Outbox(k))).collect())
}

#[derive(QueryableByName)]
struct PhoneId {
    #[diesel(sql_type = Text)]
    phone: String,
    #[diesel(sql_type = BigInt)]
    id: i64,
}

async fn processed_inbox<C>(conn: &mut C, writes: &[StepWrite]) -> Result<HashSet<(String, Key)>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    let (phones, ids): (Vec<&str>, Vec<i64>) = writes
        .iter()
        .filter_map(|w| w.inbox_id.map(|id| (w.phone.as_str(), id)))
        .unzip();
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    // Pairs joined on the primary key: `phone = ANY(..) AND id = ANY(..)`
    // over a chain repeats one phone, and the planner, counting each copy,
    // scanned the whole table for a busy phone.
    let rows: Vec<PhoneId> = Cached::new("SELECT i.phone, i.id FROM unnest(")
        .bind::<Array<Text>, _>(&phones)
        .sql("::text[], ")
        .bind::<Array<BigInt>, _>(&ids)
        .sql(
            "::int8[]) AS u(phone, id) JOIN inbox i ON i.phone = u.phone AND i.id = u.id \
             WHERE i.processed_at IS NOT NULL",
        )
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.phone, Key::Inbox(r.id))).collect())
}

/// One session row's update: a chain's first expected version, its last
/// write's state, and how many writes it applies.
struct SessionUpdate<'a> {
    expected: i64,
    last: &'a StepWrite,
    steps: i64,
}

/// Returns the outbox rows inserted claimed (none without `claim_ms`).
async fn apply(conn: &mut AsyncPgConnection, valid: &[&StepWrite], claim_ms: Option<i64>) -> Result<Vec<Claimed>> {
    // The statements below do not depend on one another (the versions were
    // checked under the locks above; no row of one refers to another's), so
    // they go out pipelined: sent back to back, answered in order, one round
    // trip for all instead of one each (PostgreSQL still runs them one after
    // the other, in the transaction). Each is serialized when its future is
    // made; the futures borrow only the connection.
    let conn: &AsyncPgConnection = conn;
    let mut pipeline: Vec<BoxFuture<'_, diesel::QueryResult<usize>>> = Vec::with_capacity(5);
    // A chain updates its session row once, to its last state.
    let mut order: Vec<&str> = Vec::new();
    let mut updates: HashMap<&str, SessionUpdate> = HashMap::new();
    for w in valid {
        updates
            .entry(w.phone.as_str())
            .and_modify(|u| {
                u.last = w;
                u.steps += 1;
            })
            .or_insert_with(|| {
                order.push(w.phone.as_str());
                SessionUpdate {
                    expected: w.expected_version,
                    last: w,
                    steps: 1,
                }
            });
    }
    let rows: Vec<&SessionUpdate> = order.iter().map(|p| &updates[p]).collect();
    let phones: Vec<&str> = order.clone();
    let states: Vec<&str> = rows.iter().map(|u| u.last.flow_state.as_str()).collect();
    let data: Vec<&serde_json::Value> = rows.iter().map(|u| &u.last.data).collect();
    let handoffs: Vec<bool> = rows.iter().map(|u| u.last.handoff).collect();
    let expected: Vec<i64> = rows.iter().map(|u| u.expected).collect();
    let steps: Vec<i64> = rows.iter().map(|u| u.steps).collect();
    let session_update = Cached::new(
        "UPDATE sessions AS s SET flow_state = u.flow_state, data = u.data, handoff = u.handoff, \
                version = s.version + u.steps, updated_at = now() FROM unnest(",
    )
    .bind::<Array<Text>, _>(&phones)
    .sql("::text[], ")
    .bind::<Array<Text>, _>(&states)
    .sql("::text[], ")
    .bind::<Array<Jsonb>, _>(&data)
    .sql("::jsonb[], ")
    .bind::<Array<Bool>, _>(&handoffs)
    .sql("::bool[], ")
    .bind::<Array<BigInt>, _>(&expected)
    .sql("::int8[], ")
    .bind::<Array<BigInt>, _>(&steps)
    .sql(
        "::int8[]) AS u(phone, flow_state, data, handoff, expected, steps) \
         WHERE s.phone = u.phone AND s.version = u.expected",
    )
    .execute(&mut &*conn);
    pipeline.push(session_update);
    // Fixed-text statements over arrays (one prepared statement whatever the
    // batch size; diesel's multi-row VALUES had a new text, so a new parse
    // and plan, for every row count). Rows keep the batch's order, so ids
    // follow it.
    let msgs: Vec<&NewMessage> = valid.iter().flat_map(|w| &w.messages).collect();
    if !msgs.is_empty() {
        let col = |f: fn(&NewMessage) -> &str| msgs.iter().map(|m| f(m)).collect::<Vec<&str>>();
        let opt = |f: fn(&NewMessage) -> Option<&str>| msgs.iter().map(|m| f(m)).collect::<Vec<Option<&str>>>();
        let insert = Cached::new(
            "INSERT INTO messages (phone, direction, origin, body, inbox_id, provider_message_id, status, outbox_key) \
             SELECT u.phone, u.direction, u.origin, u.body, u.inbox_id, u.provider_message_id, u.status, u.outbox_key \
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
        .sql(
            "::text[]) WITH ORDINALITY \
             AS u(phone, direction, origin, body, inbox_id, provider_message_id, status, outbox_key, ord) \
             ORDER BY u.ord",
        )
        .execute(&mut &*conn);
        pipeline.push(insert);
    }
    let out: Vec<&NewOutbox> = valid.iter().flat_map(|w| &w.outbox).collect();
    // Claimed at insert (see `commit_batch_claiming`) or left pending, with
    // one statement text either way.
    let (status, attempts, lease_ms) = match claim_ms {
        Some(ms) => ("sending", 1, ms.max(0)),
        None => ("pending", 0, 0),
    };
    let outbox_insert = (!out.is_empty()).then(|| {
        Cached::new("WITH claim AS (SELECT ")
            .bind::<Text, _>(status)
            .sql("::text AS status, ")
            .bind::<Integer, _>(attempts)
            .sql("::int4 AS attempts, ")
            .bind::<BigInt, _>(lease_ms)
            .sql(
                "::int8 AS lease_ms) \
                 INSERT INTO outbox (phone, kind, payload, idempotency_key, status, attempts, next_attempt_at) \
                 SELECT u.phone, u.kind, u.payload, u.key, claim.status, claim.attempts, \
                        now() + claim.lease_ms * interval '1 millisecond' \
                 FROM claim, unnest(",
            )
            .bind::<Array<Text>, _>(out.iter().map(|o| o.phone.as_str()).collect::<Vec<_>>())
            .sql("::text[], ")
            .bind::<Array<Text>, _>(out.iter().map(|o| o.kind).collect::<Vec<_>>())
            .sql("::text[], ")
            .bind::<Array<Jsonb>, _>(out.iter().map(|o| &o.payload).collect::<Vec<_>>())
            .sql("::jsonb[], ")
            .bind::<Array<Text>, _>(out.iter().map(|o| o.idempotency_key.as_str()).collect::<Vec<_>>())
            .sql(
                "::text[]) WITH ORDINALITY AS u(phone, kind, payload, key, ord) ORDER BY u.ord \
                 RETURNING id, phone, idempotency_key",
            )
            .load::<InsertedOutbox>(&mut &*conn)
    });
    let results: Vec<&NewOutcome> = valid.iter().flat_map(|w| &w.outcomes).collect();
    if !results.is_empty() {
        let insert = Cached::new("INSERT INTO outcomes (phone, kind, ticket, data, inbox_id) SELECT u.phone, u.kind, u.ticket, u.data, u.inbox_id FROM unnest(")
            .bind::<Array<Text>, _>(results.iter().map(|o| o.phone.as_str()).collect::<Vec<_>>())
            .sql("::text[], ")
            .bind::<Array<Text>, _>(results.iter().map(|o| o.kind.as_str()).collect::<Vec<_>>())
            .sql("::text[], ")
            .bind::<Array<Text>, _>(results.iter().map(|o| o.ticket.as_str()).collect::<Vec<_>>())
            .sql("::text[], ")
            .bind::<Array<Jsonb>, _>(results.iter().map(|o| &o.data).collect::<Vec<_>>())
            .sql("::jsonb[], ")
            .bind::<Array<Nullable<BigInt>>, _>(results.iter().map(|o| o.inbox_id).collect::<Vec<_>>())
            .sql("::int8[]) WITH ORDINALITY AS u(phone, kind, ticket, data, inbox_id, ord) ORDER BY u.ord ON CONFLICT DO NOTHING")
            .execute(&mut &*conn);
        pipeline.push(insert);
    }
    let (in_phones, in_ids): (Vec<&str>, Vec<i64>) = valid
        .iter()
        .filter_map(|w| w.inbox_id.map(|id| (w.phone.as_str(), id)))
        .unzip();
    if !in_ids.is_empty() {
        // No `processed_at IS NULL` filter (they were checked above, under
        // the session locks): with it the planner reads the partial
        // unprocessed index, whose statistics lag behind a busy phone's
        // backlog, and hashed the whole backlog for every batch.
        let mark = Cached::new(
            "UPDATE inbox AS i SET processed_at = coalesce(i.processed_at, now()), attempts = i.attempts + 1 \
             FROM unnest(",
        )
        .bind::<Array<Text>, _>(&in_phones)
        .sql("::text[], ")
        .bind::<Array<BigInt>, _>(&in_ids)
        .sql("::int8[]) AS u(phone, id) WHERE i.phone = u.phone AND i.id = u.id")
        .execute(&mut &*conn);
        pipeline.push(mark);
    }
    let inserted = async {
        match outbox_insert {
            Some(f) => f.await,
            None => Ok(Vec::new()),
        }
    };
    let (counts, inserted) = futures_util::try_join!(futures_util::future::try_join_all(pipeline), inserted)?;
    let updated = counts[0];
    if updated != rows.len() {
        // Impossible while the rows are locked; refuse to commit half a batch.
        return Err(Error::InvalidInput(format!(
            "versioned update touched {updated} of {} locked sessions",
            rows.len()
        )));
    }
    if claim_ms.is_none() {
        return Ok(Vec::new());
    }
    // The payloads are ours already: matched by key, not read back.
    let payloads: HashMap<(&str, &str), &NewOutbox> = out
        .iter()
        .map(|o| ((o.phone.as_str(), o.idempotency_key.as_str()), *o))
        .collect();
    Ok(inserted
        .into_iter()
        .filter_map(|r| {
            let o = payloads.get(&(r.phone.as_str(), r.idempotency_key.as_str()))?;
            Some(Claimed {
                id: r.id,
                payload: o.payload.clone(),
                phone: r.phone,
                idempotency_key: r.idempotency_key,
                attempts,
            })
        })
        .collect())
}

#[derive(QueryableByName)]
struct InsertedOutbox {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    phone: String,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
}

/// An inbound message waiting to be applied.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Serialize)]
pub struct PendingInbound {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub provider_message_id: String,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub payload: serde_json::Value,
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
#[tracing::instrument(skip_all, fields(phone = %mask(phone)))]
/// Generic over the connection so it can run pipelined with the session
/// read on a shared `&AsyncPgConnection` (an activation's one round trip).
pub async fn unprocessed<C>(conn: &mut C, phone: &str, holder: i64, limit: i64) -> Result<Vec<PendingInbound>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    Ok(Cached::new("WITH me AS (SELECT ")
        .bind::<BigInt, _>(holder)
        .sql("::int8 AS holder) SELECT i.id, i.provider_message_id, i.payload FROM inbox i, me WHERE i.phone = ")
        .bind::<Text, _>(phone)
        .sql(" AND i.processed_at IS NULL AND ")
        .sql(RESUMABLE)
        .sql(" ORDER BY i.id LIMIT ")
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await?)
}

#[derive(QueryableByName)]
struct PhoneRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
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
pub async fn quarantine(conn: &mut AsyncPgConnection, phone: &str, inbox_id: i64, reason: &str) -> Result<()> {
    let phone = phone.to_string();
    let reason = reason.to_string();
    conn.transaction::<_, Error, _>(async move |conn| {
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
        }
        Ok(())
    })
    .await
}
