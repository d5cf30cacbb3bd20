//! The run's timers: what they did (from the database, after the drain)
//! and, with `--timer-wave N`, N more coming due in the same second
//! mid-run — the firing benchmark (each fires as a step in its own
//! conversation, with the load going on).

use std::time::Duration;

use diesel::sql_types::{BigInt, Double, Jsonb, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

/// Marks the wave's timers (their action's `after`).
const WAVE: &str = "wave";

/// How many timers, and how late they fired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, QueryableByName)]
pub struct TimerFigures {
    /// Timers set: numbered by the table's sequence (a rolled-back batch's
    /// numbers count too, as cancelled).
    #[diesel(sql_type = BigInt)]
    pub set: i64,
    #[diesel(sql_type = BigInt)]
    pub fired: i64,
    /// Set and gone: a cancelled timer is deleted by the step that cancels it.
    #[diesel(sql_type = BigInt)]
    pub cancelled: i64,
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    /// Fired over a second after their due time.
    #[diesel(sql_type = BigInt)]
    pub late: i64,
    /// From due time to the commit of the step that fired it (ms).
    #[diesel(sql_type = Double)]
    pub fire_delay_p50_ms: f64,
    #[diesel(sql_type = Double)]
    pub fire_delay_p99_ms: f64,
    #[diesel(sql_type = Double)]
    pub fire_delay_max_ms: f64,
}

/// The run's timers, and the wave's apart (`None` without one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timers {
    pub all: TimerFigures,
    pub wave: Option<TimerFigures>,
}

impl Timers {
    /// The report table's lines.
    pub fn lines(&self) -> String {
        let line = |name: &str, f: &TimerFigures| {
            format!(
                "  {name:<12} {} set, {} fired ({} late), {} cancelled, {} pending; due → fired p50 {:.0}  p99 {:.0}  max {:.0} ms\n",
                f.set, f.fired, f.late, f.cancelled, f.pending, f.fire_delay_p50_ms, f.fire_delay_p99_ms, f.fire_delay_max_ms
            )
        };
        let mut t = line("timers", &self.all);
        if let Some(w) = &self.wave {
            t.push_str(&line("timer wave", w));
        }
        t
    }
}

/// Waits, at most `limit`, until the wave's timers are all applied (they
/// come due up to 3 s after they were set, perhaps after the last send).
pub async fn wait_wave(url: &str, limit: Duration) -> crate::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    let mut conn = AsyncPgConnection::establish(url).await?;
    #[derive(QueryableByName)]
    struct Left {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    while std::time::Instant::now() < deadline {
        let left: Left = diesel::sql_query(
            "SELECT count(*) AS n FROM timers WHERE action->>'after' = 'wave' AND status = 'pending'",
        )
        .get_result(&mut conn)
        .await?;
        if left.n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The figures of the run's timers (`None`: it set none).
pub async fn figures(url: &str, wave: bool) -> crate::Result<Option<Timers>> {
    let mut conn = AsyncPgConnection::establish(url).await?;
    // Every timer ever numbered; the wave's (never cancelled) are its rows.
    let numbered = "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM timers_id_seq)";
    let all = of(&mut conn, numbered, "").await?;
    if all.set == 0 {
        return Ok(None);
    }
    let wave = match wave {
        true => Some(of(&mut conn, "count(*)", "WHERE action->>'after' = 'wave'").await?),
        false => None,
    };
    Ok(Some(Timers { all, wave }))
}

/// The figures of the timers `filter` keeps, `set` counting those set.
async fn of(conn: &mut AsyncPgConnection, set: &str, filter: &str) -> crate::Result<TimerFigures> {
    let delay = "extract(epoch FROM fired_at - due_at) * 1000";
    let sql = format!(
        "SELECT {set}::int8 AS set, count(*) FILTER (WHERE status = 'fired') AS fired, \
                {set}::int8 - count(*) AS cancelled, \
                count(*) FILTER (WHERE status = 'pending') AS pending, \
                count(*) FILTER (WHERE status = 'fired' AND fired_at - due_at > interval '1 second') AS late, \
                coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY {delay}) FILTER (WHERE status = 'fired'), 0) AS fire_delay_p50_ms, \
                coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY {delay}) FILTER (WHERE status = 'fired'), 0) AS fire_delay_p99_ms, \
                coalesce(max({delay}) FILTER (WHERE status = 'fired'), 0)::float8 AS fire_delay_max_ms \
         FROM timers {filter}"
    );
    Ok(diesel::sql_query(sql).get_result(conn).await?)
}

/// At `at` into the run, sets `n` reminders due together at the start of a
/// second 2 to 3 seconds later, each in a conversation of its own (new
/// contacts who wrote a moment ago, in the flow's `initial` state: each
/// reminder is a step and a send). Says what it did, for the report.
pub async fn wave(url: &str, n: u32, at: Duration, initial: &str) -> crate::Result<String> {
    tokio::time::sleep(at).await;
    let mut conn = AsyncPgConnection::establish(url).await?;
    let action = serde_json::json!({"state": initial, "after": WAVE, "reply": "¿Sigues ahí? (recordatorio)"});
    // Customers who wrote a moment ago (the window open: the reminders go
    // out), at rest in the initial state at version 0.
    diesel::sql_query(
        "INSERT INTO sessions (phone, flow_state, last_customer_at) \
         SELECT '52199' || lpad(g::text, 8, '0'), $1, now() FROM generate_series(1, $2) AS g \
         ON CONFLICT (phone) DO NOTHING",
    )
    .bind::<Text, _>(initial)
    .bind::<BigInt, _>(i64::from(n))
    .execute(&mut conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO timers (phone, kind, due_at, action, set_version) \
         SELECT '52199' || lpad(g::text, 8, '0'), 'after', date_trunc('second', now()) + interval '3 seconds', $1, 0 \
         FROM generate_series(1, $2) AS g",
    )
    .bind::<Jsonb, _>(action)
    .bind::<BigInt, _>(i64::from(n))
    .execute(&mut conn)
    .await?;
    #[derive(QueryableByName)]
    struct Due {
        #[diesel(sql_type = Text)]
        due: String,
    }
    let due: Due = diesel::sql_query(
        "SELECT to_char(max(due_at), 'HH24:MI:SS') AS due FROM timers WHERE action->>'after' = 'wave'",
    )
    .get_result(&mut conn)
    .await?;
    Ok(format!(
        "{n} timers due together at {} (set {:.0} s into the run)",
        due.due,
        at.as_secs_f64()
    ))
}
