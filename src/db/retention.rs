//! The retention job's statements: each blanks or deletes at most `batch`
//! expired rows (found through the tables' BRIN age indexes), so a round
//! holds no lock for long and its WAL comes in small bursts.

use diesel::sql_types::{BigInt, Integer};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::error::Result;

/// What expires, with the statement that handles one batch of it: `$1`
/// the age in days, `$2` the batch.
pub const EXPIRING: [(&str, &str); 4] = [
    (
        "message bodies",
        "UPDATE messages SET body = '' WHERE (phone, id) IN (SELECT phone, id FROM messages \
         WHERE created_at < now() - $1 * interval '1 day' AND body <> '' LIMIT $2)",
    ),
    (
        "outbound payloads",
        "UPDATE outbox SET payload = '{}' WHERE (phone, id) IN (SELECT phone, id FROM outbox \
         WHERE created_at < now() - $1 * interval '1 day' AND status IN ('sent', 'failed', 'dead') \
         AND payload <> '{}' LIMIT $2)",
    ),
    (
        "inbound payloads",
        "UPDATE inbox SET payload = '{}', contact_name = NULL, contact_username = NULL \
         WHERE (phone, id) IN (SELECT phone, id FROM inbox WHERE received_at < now() - $1 * interval '1 day' \
         AND processed_at IS NOT NULL AND payload <> '{}' LIMIT $2)",
    ),
    (
        "dead letters",
        "DELETE FROM dead_letters WHERE (phone, id) IN (SELECT phone, id FROM dead_letters \
         WHERE created_at < now() - $1 * interval '1 day' LIMIT $2)",
    ),
];

/// Runs one batch of `EXPIRING[which]` for rows older than `days`; returns the rows changed.
pub async fn expire(conn: &mut AsyncPgConnection, which: usize, days: i32, batch: i64) -> Result<usize> {
    Ok(diesel::sql_query(EXPIRING[which].1)
        .bind::<Integer, _>(days)
        .bind::<BigInt, _>(batch)
        .execute(conn)
        .await?)
}
