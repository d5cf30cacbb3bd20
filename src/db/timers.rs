//! Due timers: claimed by one process at a time (`FOR UPDATE SKIP LOCKED`,
//! leased: a timer whose process died before applying it is claimed again
//! once the lease runs out), many conversations' at once. Applying one is
//! a step (see `db::steps`), which marks it fired.

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Jsonb, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::sql::Cached;
use crate::db::error::Result;

/// A due timer, claimed.
#[derive(Debug, Clone, PartialEq, diesel::QueryableByName)]
pub struct ClaimedTimer {
    #[diesel(sql_type = Text)]
    pub phone: String,
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Jsonb)]
    pub action: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    pub due_at: DateTime<Utc>,
}

/// Claims up to `limit` due timers for `holder` for `lease_ms`, the most
/// overdue first. Timers another process holds (locked, or leased and not
/// yet applied) are skipped.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    holder: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<ClaimedTimer>> {
    Ok(Cached::new(
        "WITH due AS (SELECT phone, id FROM timers \
         WHERE status = 'pending' AND due_at <= now() AND lease_until < now() \
         ORDER BY due_at LIMIT ",
    )
    .bind::<BigInt, _>(limit)
    .sql(" FOR UPDATE SKIP LOCKED) UPDATE timers AS t SET leased_by = ")
    .bind::<BigInt, _>(holder)
    .sql(", lease_until = now() + ")
    .bind::<BigInt, _>(lease_ms)
    .sql(
        " * interval '1 millisecond' FROM due WHERE t.phone = due.phone AND t.id = due.id \
         RETURNING t.phone, t.id, t.kind, t.action, t.due_at",
    )
    .load(conn)
    .await?)
}
