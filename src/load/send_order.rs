//! What the fake send API saw, checked: each recipient's messages arrived
//! in the order they were committed and one at a time, and no number sent
//! more in a second than its rate.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::fake_graph::Arrival;
use crate::error::Result;

/// Where each outbox row stands in its conversation's commit order:
/// `(conversation, key) → id`.
pub type CommitOrder = HashMap<(String, String), i64>;

/// Reads the commit order of every outbox row.
pub async fn commit_order(database_url: &str) -> Result<CommitOrder> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        phone: String,
        #[diesel(sql_type = Text)]
        idempotency_key: String,
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    let rows: Vec<Row> = diesel::sql_query("SELECT phone, idempotency_key, id FROM outbox")
        .load(&mut conn)
        .await?;
    Ok(rows.into_iter().map(|r| ((r.phone, r.idempotency_key), r.id)).collect())
}

/// The recipients (`number → contact`) whose messages arrived out of
/// commit order, and those with a send that arrived while the one before
/// it was not answered yet. A row sent again (a retry, a resend after a
/// crash) arriving right after itself is in order. `conversation` names a
/// recipient's conversation key.
pub fn order_violations(
    arrivals: &[Arrival],
    order: &CommitOrder,
    conversation: impl Fn(&str, &str) -> String,
) -> (Vec<String>, Vec<String>) {
    let mut by_recipient: HashMap<(&str, &str), Vec<&Arrival>> = HashMap::new();
    for a in arrivals {
        by_recipient.entry((&a.number, &a.to)).or_default().push(a);
    }
    let (mut disordered, mut overlapped) = (Vec::new(), Vec::new());
    for ((number, to), mut sends) in by_recipient {
        sends.sort_by_key(|a| a.arrived);
        let key = conversation(number, to);
        let name = format!("{number}→{}", crate::phone::mask(to));
        // Sends of rows the database does not know (none in a healthy
        // run) are left out, so they hide no reversal around them.
        let ids: Vec<i64> = sends
            .iter()
            .filter_map(|a| order.get(&(key.clone(), a.tracking.clone())).copied())
            .collect();
        if ids.windows(2).any(|w| w[1] < w[0]) {
            disordered.push(name.clone());
        }
        if sends
            .windows(2)
            .any(|w| w[0].answered.is_none_or(|answered| w[1].arrived < answered))
        {
            overlapped.push(name);
        }
    }
    disordered.sort();
    overlapped.sort();
    (disordered, overlapped)
}

/// `number second: sends` for each number and wall-clock second in which
/// it sent more than `rate(number)`.
pub fn over_rate(arrivals: &[Arrival], rate: impl Fn(&str) -> u32) -> Vec<String> {
    let mut per_second: HashMap<(&str, u64), u32> = HashMap::new();
    for a in arrivals {
        let second = a.arrived_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        *per_second.entry((&a.number, second)).or_default() += 1;
    }
    let mut over: Vec<String> = per_second
        .into_iter()
        .filter(|((number, _), n)| *n > rate(number))
        .map(|((number, second), n)| format!("{number} at {second}: {n} sends (rate {})", rate(number)))
        .collect();
    over.sort();
    over
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use super::*;

    /// A send of `key` to `to` arriving `at` ms and answered `answered` ms after `t0`.
    fn arrival(t0: (Instant, SystemTime), to: &str, key: &str, at: u64, answered: u64) -> Arrival {
        Arrival {
            number: "100".into(),
            to: to.into(),
            tracking: key.into(),
            arrived_at: t0.1 + Duration::from_millis(at),
            arrived: t0.0 + Duration::from_millis(at),
            answered: Some(t0.0 + Duration::from_millis(answered)),
            accepted: true,
            traceparent: None,
        }
    }

    fn order() -> CommitOrder {
        [("a", "k1", 1), ("a", "k2", 2), ("b", "k3", 3), ("b", "k4", 4)]
            .into_iter()
            .map(|(c, k, id)| ((c.to_string(), k.to_string()), id))
            .collect()
    }

    #[test]
    fn sends_in_commit_order_one_at_a_time_hold_and_a_retry_of_the_same_row_is_in_order() {
        let t0 = (Instant::now(), SystemTime::now());
        let sends = [
            arrival(t0, "a", "k1", 0, 10),
            arrival(t0, "a", "k1", 20, 30),
            arrival(t0, "a", "k2", 30, 40),
            arrival(t0, "b", "k3", 0, 50),
            arrival(t0, "b", "k4", 60, 70),
        ];
        let (disordered, overlapped) = order_violations(&sends, &order(), |_, to| to.to_string());
        assert!(disordered.is_empty() && overlapped.is_empty());
    }

    #[test]
    fn a_later_row_first_or_a_send_before_the_last_was_answered_is_found() {
        let t0 = (Instant::now(), SystemTime::now());
        let sends = [
            arrival(t0, "a", "k2", 0, 10),
            arrival(t0, "a", "k1", 20, 30),
            arrival(t0, "b", "k3", 0, 50),
            arrival(t0, "b", "k4", 10, 70),
        ];
        let (disordered, overlapped) = order_violations(&sends, &order(), |_, to| to.to_string());
        // Recipients are masked in the report (personal data).
        assert_eq!((disordered.len(), overlapped.len()), (1, 1));
        let (d, o) = order_violations(&sends[..2], &order(), |_, to| to.to_string());
        assert_eq!((d.len(), o.len()), (1, 0), "a alone: out of order, not overlapped");
        let (d, o) = order_violations(&sends[2..], &order(), |_, to| to.to_string());
        assert_eq!((d.len(), o.len()), (0, 1), "b alone: in order, overlapped");
    }

    #[test]
    fn more_sends_in_one_second_than_the_rate_are_found() {
        let t0 = (Instant::now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let sends: Vec<Arrival> = (0..4).map(|i| arrival(t0, "a", "k1", i * 100, i * 100 + 50)).collect();
        assert!(over_rate(&sends, |_| 4).is_empty());
        assert_eq!(over_rate(&sends, |_| 3), vec!["100 at 1000: 4 sends (rate 3)"]);
    }
}
