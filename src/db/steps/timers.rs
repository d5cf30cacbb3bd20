//! A batch's timer statements: the due timers its steps apply, marked
//! fired; and the conversations whose timers its steps replace (the
//! pending ones cancelled — deleted: no new row version, no index entry —
//! and the new ones inserted, in one statement).

use std::collections::HashMap;

use diesel::sql_types::{Array, BigInt, Jsonb, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::apply::Pending;
use super::StepWrite;
use crate::db::sql::Cached;

/// Marks the timers the steps apply fired, at their steps' versions. Only
/// pending ones: the checks under the session locks refused the others.
pub(super) fn mark_fired<'c>(conn: &'c AsyncPgConnection, valid: &[&StepWrite]) -> Option<Pending<'c>> {
    let fired: Vec<(&StepWrite, super::FiredTimer)> =
        valid.iter().filter_map(|w| w.time.fired.map(|f| (*w, f))).collect();
    if fired.is_empty() {
        return None;
    }
    Some(
        Cached::new(
            "UPDATE timers AS t SET status = 'fired', fired_at = now(), fired_version = u.version, \
             outcome = u.outcome FROM unnest(",
        )
        .bind::<Array<Text>, _>(fired.iter().map(|(w, _)| w.phone.as_str()).collect::<Vec<_>>())
        .sql("::text[], ")
        .bind::<Array<BigInt>, _>(fired.iter().map(|(_, f)| f.id).collect::<Vec<_>>())
        .sql("::int8[], ")
        .bind::<Array<BigInt>, _>(fired.iter().map(|(w, _)| w.committed_version()).collect::<Vec<_>>())
        .sql("::int8[], ")
        .bind::<Array<Text>, _>(fired.iter().map(|(_, f)| f.outcome).collect::<Vec<_>>())
        // Each timer looked up by key on its own (see `replace`).
        .sql(
            "::text[]) AS u(phone, id, version, outcome) CROSS JOIN LATERAL \
             (SELECT p.id FROM timers p WHERE p.phone = u.phone AND p.id = u.id AND p.status = 'pending' OFFSET 0) AS due \
             WHERE t.phone = u.phone AND t.id = due.id",
        )
        .execute(&mut &*conn),
    )
}

/// Replaces the timers of every conversation whose steps say so, with
/// those of its chain's last such step (the earlier ones' never existed as
/// far as anyone can see: the chain commits as one). The timers the batch
/// fires are left to their own mark.
pub(super) fn replace<'c>(conn: &'c AsyncPgConnection, valid: &[&StepWrite]) -> Option<Pending<'c>> {
    let mut order: Vec<&str> = Vec::new();
    let mut last: HashMap<&str, &StepWrite> = HashMap::new();
    for w in valid.iter().filter(|w| w.time.timers.is_some()) {
        if last.insert(w.phone.as_str(), w).is_none() {
            order.push(w.phone.as_str());
        }
    }
    if order.is_empty() {
        return None;
    }
    let fired: Vec<i64> = valid.iter().filter_map(|w| w.time.fired.map(|f| f.id)).collect();
    let new: Vec<(&StepWrite, &super::NewTimer)> = order
        .iter()
        .flat_map(|p| {
            let w = last[p];
            w.time.timers.iter().flatten().map(move |t| (w, t))
        })
        .collect();
    Some(
        // By key, each conversation's pending timers looked up on their own
        // (LATERAL, kept a subquery by its OFFSET: flattened into a join, a
        // generic plan made while the table was small read every pending
        // timer for every conversation of the batch, 8–30 ms a batch).
        Cached::new("WITH cancelled AS (DELETE FROM timers AS t USING unnest(")
            .bind::<Array<Text>, _>(&order)
            .sql(
                "::text[]) AS c(phone) CROSS JOIN LATERAL (SELECT p.id FROM timers p \
                 WHERE p.phone = c.phone AND p.status = 'pending' AND p.id <> ALL(",
            )
            .bind::<Array<BigInt>, _>(fired)
            .sql(
                "::int8[]) OFFSET 0) AS gone WHERE t.phone = c.phone AND t.id = gone.id) \
                 INSERT INTO timers (phone, kind, due_at, action, set_version) \
             SELECT u.phone, u.kind, now() + u.delay_ms * interval '1 millisecond', u.action, u.version FROM unnest(",
            )
            .bind::<Array<Text>, _>(new.iter().map(|(w, _)| w.phone.as_str()).collect::<Vec<_>>())
            .sql("::text[], ")
            .bind::<Array<Text>, _>(new.iter().map(|(_, t)| t.kind).collect::<Vec<_>>())
            .sql("::text[], ")
            .bind::<Array<BigInt>, _>(new.iter().map(|(_, t)| t.delay_ms).collect::<Vec<_>>())
            .sql("::int8[], ")
            .bind::<Array<Jsonb>, _>(new.iter().map(|(_, t)| &t.action).collect::<Vec<_>>())
            .sql("::jsonb[], ")
            .bind::<Array<BigInt>, _>(new.iter().map(|(w, _)| w.committed_version()).collect::<Vec<_>>())
            .sql("::int8[]) WITH ORDINALITY AS u(phone, kind, delay_ms, action, version, ord) ORDER BY u.ord")
            .execute(&mut &*conn),
    )
}
