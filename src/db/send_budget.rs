//! The deployment's send budget: each business number's sends of one
//! wall-clock second, shared by every process (`send_budget`).

use diesel::sql_types::{BigInt, Integer, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::sql::Cached;
use crate::db::error::Result;

#[derive(QueryableByName)]
struct Grant {
    #[diesel(sql_type = Integer)]
    last_grant: i32,
}

/// Takes up to `want` sends of `number`'s budget for `second` (Unix
/// seconds), of `rate` in all; returns how many were granted (0 when the
/// second's budget is spent). One upsert: the row's lock orders the takers,
/// and each sees the `used` the one before it left.
pub async fn take(conn: &mut AsyncPgConnection, number: &str, second: i64, want: i32, rate: i32) -> Result<i32> {
    // The same two values in the insert and the update: `excluded` holds
    // only the inserted row, not what was asked for.
    let g: Grant = Cached::new("INSERT INTO send_budget AS b (number, second, used, last_grant) SELECT ")
        .bind::<Text, _>(number)
        .sql(", ")
        .bind::<BigInt, _>(second)
        .sql(", g.n, g.n FROM (SELECT least(")
        .bind::<Integer, _>(want)
        .sql(", ")
        .bind::<Integer, _>(rate)
        .sql(") AS n) AS g ON CONFLICT (number, second) DO UPDATE SET used = least(b.used + ")
        .bind::<Integer, _>(want)
        .sql(", greatest(b.used, ")
        .bind::<Integer, _>(rate)
        .sql(")), last_grant = least(b.used + ")
        .bind::<Integer, _>(want)
        .sql(", greatest(b.used, ")
        .bind::<Integer, _>(rate)
        .sql(")) - b.used RETURNING last_grant")
        .get_result(conn)
        .await?;
    Ok(g.last_grant)
}

/// Forgets the budgets of seconds before `before`.
pub async fn sweep(conn: &mut AsyncPgConnection, before: i64) -> Result<()> {
    Cached::new("DELETE FROM send_budget WHERE second < ")
        .bind::<BigInt, _>(before)
        .execute(conn)
        .await?;
    Ok(())
}
