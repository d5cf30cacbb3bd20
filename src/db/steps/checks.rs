//! What a batch reads under its locks before it writes: creating the new
//! sessions, locking the batch's rows, the "already applied" checks and
//! the messages still waiting before the batch's. Each is generic over the
//! connection so they run pipelined on one shared `&AsyncPgConnection`.

use std::collections::{HashMap, HashSet};

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::{AsyncConnectionCore, RunQueryDsl};

use super::StepWrite;
use crate::db::error::Result;
use crate::db::schema::outbox;
use crate::db::sql::Cached;

/// Creates, at version 0, the sessions that writes expecting version 0 say
/// how to create — those that do not exist yet (a concurrent creator's row
/// wins; the version check then tells whether this write still applies).
pub(super) async fn create_sessions<C>(conn: &mut C, writes: &[StepWrite]) -> Result<()>
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

pub(super) async fn lock_sessions<C>(conn: &mut C, sorted_phones: &[&str]) -> Result<HashMap<String, i64>>
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
pub(super) enum Key {
    Inbox(i64),
    Outbox(String),
    /// A timer no longer pending: fired already, or cancelled (deleted) by
    /// a step before this one (the customer answered, the state changed).
    Timer(i64),
}

pub(super) async fn existing_keys<C>(conn: &mut C, writes: &[StepWrite]) -> Result<HashSet<(String, Key)>>
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

/// The (phone, inbox row) of each write that applies an inbound message.
fn inbox_pairs(writes: &[StepWrite]) -> (Vec<&str>, Vec<i64>) {
    writes
        .iter()
        .filter_map(|w| w.inbox_id.map(|id| (w.phone.as_str(), id)))
        .unzip()
}

pub(super) async fn processed_inbox<C>(conn: &mut C, writes: &[StepWrite]) -> Result<HashSet<(String, Key)>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    let (phones, ids) = inbox_pairs(writes);
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    // Pairs joined on the primary key: `phone = ANY(..) AND id = ANY(..)`
    // over a chain repeats one phone, and the planner, counting each copy,
    // scanned the whole table for a busy phone.
    // A row that is gone — its contact erased since the message was
    // taken up — counts as applied: the step is dropped, nothing comes back.
    let rows: Vec<PhoneId> = Cached::new("SELECT u.phone, u.id FROM unnest(")
        .bind::<Array<Text>, _>(&phones)
        .sql("::text[], ")
        .bind::<Array<BigInt>, _>(&ids)
        .sql(
            "::int8[]) AS u(phone, id) LEFT JOIN inbox i ON i.phone = u.phone AND i.id = u.id \
             WHERE i.id IS NULL OR i.processed_at IS NOT NULL",
        )
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.phone, Key::Inbox(r.id))).collect())
}

/// The timers the writes would fire that are no longer pending — fired, or
/// gone (cancelled) — read under the session locks: a step that cancels a
/// timer holds its session's lock.
pub(super) async fn moot_timers<C>(conn: &mut C, writes: &[StepWrite]) -> Result<HashSet<(String, Key)>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    let (phones, ids): (Vec<&str>, Vec<i64>) = writes
        .iter()
        .filter_map(|w| w.time.fired.map(|f| (w.phone.as_str(), f.id)))
        .unzip();
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<PhoneId> = Cached::new("SELECT u.phone, u.id FROM unnest(")
        .bind::<Array<Text>, _>(&phones)
        .sql("::text[], ")
        .bind::<Array<BigInt>, _>(&ids)
        // Each timer looked up by key on its own: a subquery kept so by its
        // OFFSET, whatever plan the table's statistics suggest.
        .sql(
            "::int8[]) AS u(phone, id) CROSS JOIN LATERAL \
             (SELECT count(*) AS n FROM (SELECT 1 FROM timers t WHERE t.phone = u.phone AND t.id = u.id \
                AND t.status = 'pending' OFFSET 0) AS p) AS pending WHERE pending.n = 0",
        )
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.phone, Key::Timer(r.id))).collect())
}

/// Per phone, the first unprocessed inbox row below the batch's last
/// message that the batch does not apply itself: a message accepted
/// before the batch's, waiting — for another process, say, that accepted
/// it. Read under the session locks, so every step committed before them
/// is seen (a registration commits before its message can be stepped).
pub(super) async fn waiting_before<C>(conn: &mut C, writes: &[StepWrite]) -> Result<HashMap<String, i64>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    let (phones, ids) = inbox_pairs(writes);
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    // The first row of the partial index `inbox_unprocessed` past the
    // batch's own: a few index entries per phone.
    let rows: Vec<PhoneId> =
        Cached::new("SELECT b.phone, w.id FROM (SELECT u.phone, array_agg(u.id) AS ids, max(u.id) AS top FROM unnest(")
            .bind::<Array<Text>, _>(&phones)
            .sql("::text[], ")
            .bind::<Array<BigInt>, _>(&ids)
            .sql(
                "::int8[]) AS u(phone, id) GROUP BY u.phone) AS b CROSS JOIN LATERAL \
             (SELECT i.id FROM inbox i WHERE i.phone = b.phone AND i.processed_at IS NULL \
                AND i.id < b.top AND NOT (i.id = ANY(b.ids)) ORDER BY i.id LIMIT 1) AS w",
            )
            .load(conn)
            .await?;
    Ok(rows.into_iter().map(|r| (r.phone, r.id)).collect())
}
