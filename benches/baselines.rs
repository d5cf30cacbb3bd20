//! The same workload through the designs the seeds tried and through
//! switchboard, side by side on one durable cluster, plus the database's own
//! ceiling for one message per commit.
//!
//! Workload: MESSAGES messages over PHONES phones (contended), CLIENTS
//! concurrent clients. Each message appends its number to the session's data
//! and stores one message row; a lost update is a number missing at the end.
//!
//! `cargo bench --bench baselines`

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

const MESSAGES: usize = 4_000;
/// Fewer phones than clients: concurrent messages for one phone are the point.
const PHONES: usize = 8;
const CLIENTS: usize = 16;

#[derive(QueryableByName)]
struct V {
    #[diesel(sql_type = BigInt)]
    v: i64,
}

#[derive(Default)]
struct Counts {
    conflicts: AtomicU64,
    retries: AtomicU64,
}

#[derive(Clone, Copy, PartialEq)]
enum Design {
    Ceiling,
    Naive,
    Optimistic,
    Pessimistic,
}

/// The phone of message `i`: a fixed pseudo-random choice, so every design
/// gets the same sequence and concurrent clients collide on phones.
fn phone(i: usize) -> String {
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59;
    format!("52155800{:05}", h as usize % PHONES)
}

async fn reset(url: &str) {
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    c.batch_execute("TRUNCATE sessions, messages, inbox, outbox, outcomes, dead_letters")
        .await
        .unwrap();
    for p in 0..PHONES {
        diesel::sql_query("INSERT INTO sessions (phone, flow_state, data) VALUES ($1, 'inicio', '{\"seen\": []}')")
            .bind::<Text, _>(format!("52155800{p:05}"))
            .execute(&mut c)
            .await
            .unwrap();
    }
}

/// One message, the way `design` does it. Returns after its commit.
async fn one(c: &mut AsyncPgConnection, design: Design, n: usize, counts: &Counts) {
    let p = phone(n);
    let msg = "INSERT INTO messages (phone, direction, origin, body) VALUES ($1, 'in', 'user', 'hola')";
    match design {
        Design::Ceiling => {
            c.batch_execute("BEGIN").await.unwrap();
            diesel::sql_query("UPDATE sessions SET version = version + 1 WHERE phone = $1")
                .bind::<Text, _>(&p)
                .execute(c)
                .await
                .unwrap();
            diesel::sql_query(msg).bind::<Text, _>(&p).execute(c).await.unwrap();
            c.batch_execute("COMMIT").await.unwrap();
        }
        Design::Naive => {
            // Read, decide, write — no version check (the seeds' original code).
            let (_, list) = read_seen(c, &p, false, n).await;
            c.batch_execute("BEGIN").await.unwrap();
            write_seen(c, &p, &list, None).await;
            diesel::sql_query(msg).bind::<Text, _>(&p).execute(c).await.unwrap();
            c.batch_execute("COMMIT").await.unwrap();
        }
        Design::Optimistic => loop {
            let (version, list) = read_seen(c, &p, false, n).await;
            c.batch_execute("BEGIN").await.unwrap();
            if write_seen(c, &p, &list, Some(version)).await == 1 {
                diesel::sql_query(msg).bind::<Text, _>(&p).execute(c).await.unwrap();
                c.batch_execute("COMMIT").await.unwrap();
                break;
            }
            c.batch_execute("ROLLBACK").await.unwrap();
            counts.conflicts.fetch_add(1, Ordering::Relaxed);
            counts.retries.fetch_add(1, Ordering::Relaxed);
            let backoff = rand::random_range(0..2_000u64);
            tokio::time::sleep(Duration::from_micros(backoff)).await;
        },
        Design::Pessimistic => {
            c.batch_execute("BEGIN").await.unwrap();
            let (_, list) = read_seen(c, &p, true, n).await;
            write_seen(c, &p, &list, None).await;
            diesel::sql_query(msg).bind::<Text, _>(&p).execute(c).await.unwrap();
            c.batch_execute("COMMIT").await.unwrap();
        }
    }
}

/// The session's version and its `seen` list with `n` appended (`lock`: FOR UPDATE).
async fn read_seen(c: &mut AsyncPgConnection, phone: &str, lock: bool, n: usize) -> (i64, Vec<i64>) {
    let sql = format!(
        "SELECT version AS v, (data->'seen')::text AS s FROM sessions WHERE phone = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row: VS = diesel::sql_query(sql)
        .bind::<Text, _>(phone)
        .get_result(c)
        .await
        .unwrap();
    let mut list: Vec<i64> = serde_json::from_str(&row.s).unwrap();
    list.push(n as i64);
    (row.v, list)
}

/// Writes the list and bumps the version, only at `expected` if given.
/// Returns the rows updated.
async fn write_seen(c: &mut AsyncPgConnection, phone: &str, list: &[i64], expected: Option<i64>) -> usize {
    diesel::sql_query(
        "UPDATE sessions SET data = jsonb_build_object('seen', $2::jsonb), version = version + 1 \
         WHERE phone = $1 AND ($3::int8 IS NULL OR version = $3)",
    )
    .bind::<Text, _>(phone)
    .bind::<Text, _>(serde_json::to_string(list).unwrap())
    .bind::<diesel::sql_types::Nullable<BigInt>, _>(expected)
    .execute(c)
    .await
    .unwrap()
}

#[derive(QueryableByName)]
struct VS {
    #[diesel(sql_type = BigInt)]
    v: i64,
    #[diesel(sql_type = Text)]
    s: String,
}

async fn run_design(url: &str, design: Design) -> (f64, u64, u64, i64) {
    reset(url).await;
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (url, counts, next) = (url.to_string(), counts.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = AsyncPgConnection::establish(&url).await.unwrap();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= MESSAGES {
                    break;
                }
                one(&mut c, design, n, &counts).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let kept: V =
        diesel::sql_query("SELECT coalesce(sum(jsonb_array_length(data->'seen')), 0)::int8 AS v FROM sessions")
            .get_result(&mut AsyncPgConnection::establish(url).await.unwrap())
            .await
            .unwrap();
    let lost = if design == Design::Ceiling {
        0
    } else {
        MESSAGES as i64 - kept.v
    };
    (
        MESSAGES as f64 / secs,
        AtomicU64::load(&counts.conflicts, Ordering::Relaxed),
        AtomicU64::load(&counts.retries, Ordering::Relaxed),
        lost,
    )
}

async fn run_switchboard(url: &switchboard::config::Secret) -> (f64, u64, u64, i64) {
    reset(url.expose()).await;
    let engine = support::bench_engine(url, |s| s.database.max_connections = CLIENTS as u32).await;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (engine, next) = (engine.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= MESSAGES {
                    break;
                }
                support::say(&engine, &phone(n), &format!("wamid.base.{n}"), "hola").await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    engine.wait_idle().await;
    let secs = start.elapsed().as_secs_f64();
    let st = engine.stats();
    let applied: V = diesel::sql_query("SELECT coalesce(sum(version), 0)::int8 AS v FROM sessions")
        .get_result(&mut AsyncPgConnection::establish(url.expose()).await.unwrap())
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
    (
        MESSAGES as f64 / secs,
        st.conflicts,
        st.retries,
        MESSAGES as i64 - applied.v,
    )
}

fn main() {
    // `cargo test --benches` runs benches with --bench absent: stay quick then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = support::durable_cluster(&rt, "bench-baselines");
    let url = pg.url();
    rt.block_on(async {
        let sc = switchboard::load::checker::setting(url.expose(), "synchronous_commit").await.unwrap();
        println!("{MESSAGES} messages over {PHONES} phones, {CLIENTS} clients, synchronous_commit = {sc}\n");
        println!("| design | msgs/s | vs. ceiling | conflicts | retries | lost updates |");
        println!("|---|---|---|---|---|---|");
        let (ceiling, ..) = run_design(url.expose(), Design::Ceiling).await;
        println!("| ceiling: 1 message per commit (UPDATE + INSERT) | {ceiling:.0} | 1.00 | - | - | - |");
        for (name, d) in [
            ("naive read-modify-write", Design::Naive),
            ("optimistic locking + retries, no actors", Design::Optimistic),
            ("pessimistic SELECT … FOR UPDATE", Design::Pessimistic),
        ] {
            let (rate, c, r, lost) = run_design(url.expose(), d).await;
            println!("| {name} | {rate:.0} | {:.2} | {c} | {r} | {lost} |", rate / ceiling);
        }
        let (rate, c, r, lost) = run_switchboard(&url).await;
        println!(
            "| switchboard (dedupe + inbox + actor + flow + group commit + outbox) | {rate:.0} | {:.2} | {c} | {r} | {lost} |",
            rate / ceiling
        );
    });
}
