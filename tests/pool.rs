//! The pool under trouble: killed connections, exhaustion, per-connection limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use support::rows::Rows;
use support::TestDb;
use switchboard::config::DatabaseSettings;
use switchboard::db::pool::APPLICATION_NAME;
use switchboard::db::DbError;
use switchboard::db::PoolStats;

const PHONE: &str = "5215512341234";

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

async fn backend_pid(db: &switchboard::db::Database) -> i32 {
    let mut conn = db.pool().get().await.unwrap();
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(&mut *conn)
        .await
        .unwrap()
        .pid
}

async fn terminate(test: &TestDb, pid: i32) {
    diesel::sql_query(format!("SELECT pg_terminate_backend({pid})"))
        .execute(&mut test.admin().await)
        .await
        .unwrap();
}

/// Waits (bounded) until the server has ended backend `pid`.
async fn gone(test: &TestDb, pid: i32) {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    for _ in 0..500 {
        let c: Count = diesel::sql_query(format!("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = {pid}"))
            .get_result(&mut test.admin().await)
            .await
            .unwrap();
        if c.n == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("backend {pid} still listed after 500 looks");
}

/// A one-connection pool (`adjust` for the rest) whose connection the
/// server kills; then a read through the pool, which must be answered, on a
/// new connection. The pool's figures after.
async fn read_after_the_server_kills_the_connection(adjust: impl FnOnce(&mut DatabaseSettings)) -> PoolStats {
    let test = TestDb::migrated().await;
    let db = test.database_with(|s| {
        s.max_connections = 1;
        s.min_idle = 1;
        adjust(s);
    });
    db.load_or_create_session(PHONE, "inicio").await.unwrap();
    let pid = backend_pid(&db).await;
    terminate(&test, pid).await;
    gone(&test, pid).await;

    let s = db.load_session(PHONE).await.unwrap().unwrap();
    assert_eq!(s.version, 0);
    assert_ne!(backend_pid(&db).await, pid, "the dead connection was replaced");
    db.stats()
}

#[tokio::test]
async fn a_pooled_connection_killed_by_the_server_is_replaced_and_the_operation_succeeds() {
    // The checkout test sees the closed socket (no round trip), or, if the
    // client has not read the close yet, the first statement fails
    // retryably and the retry takes a fresh connection: either way the
    // caller gets its answer.
    let st = read_after_the_server_kills_the_connection(|_| {}).await;
    assert!(st.closed_invalid + st.closed_broken >= 1, "{st:?}");
}

#[tokio::test]
async fn with_checkout_query_a_killed_connection_is_replaced_before_the_next_operation() {
    let st = read_after_the_server_kills_the_connection(|s| s.checkout_query = true).await;
    // Caught by the checkout's test (bb8 counts the one it drops then as
    // broken too); a statement never ran on it.
    assert!(st.closed_invalid >= 1, "{st:?}");
}

#[tokio::test]
async fn without_a_checkout_test_a_killed_connection_is_absorbed_by_the_retry() {
    // The first attempt uses the dead connection and fails retryably; bb8
    // drops it as broken; the retry gets a fresh one.
    let st = read_after_the_server_kills_the_connection(|s| s.test_on_checkout = false).await;
    assert!(st.closed_broken >= 1, "{st:?}");
    assert_eq!(st.closed_invalid, 0, "{st:?}");
}

#[tokio::test]
async fn an_exhausted_pool_fails_fast_with_a_retryable_timeout() {
    let test = TestDb::migrated().await;
    let acquire = Duration::from_millis(300);
    let db = test.database_with(|s| {
        s.max_connections = 1;
        s.min_idle = 0;
        s.acquire_timeout_ms = acquire.as_millis() as u64;
        s.retry.max_attempts = 1;
    });
    let held = db.pool().get().await.unwrap();
    let start = Instant::now();
    let err = match db.pool().get().await {
        Err(e) => e,
        Ok(_) => panic!("a second connection from a pool of one"),
    };
    let waited = start.elapsed();
    assert!(matches!(err, DbError::PoolTimeout(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(waited >= acquire, "gave up early: {waited:?}");
    // Generous bound: the point is "no hang", not a timing target.
    assert!(waited < acquire * 10, "hung for {waited:?}");
    // The high-level operations fail the same way, and recover once a connection is free.
    assert!(matches!(db.load_session(PHONE).await, Err(DbError::PoolTimeout(_))));
    drop(held);
    assert!(db.load_session(PHONE).await.unwrap().is_none());
    assert!(db.stats().gets_timed_out >= 2);
}

#[tokio::test]
async fn every_pooled_connection_carries_the_configured_timeouts_and_name() {
    #[derive(QueryableByName)]
    struct Settings {
        #[diesel(sql_type = diesel::sql_types::Text)]
        st: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        idle: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        app: String,
    }
    let test = TestDb::migrated().await;
    let db = test.database_with(|s| {
        s.statement_timeout_ms = 1234;
        s.idle_in_transaction_timeout_ms = 5678;
    });
    let mut conn = db.pool().get().await.unwrap();
    let got: Settings = diesel::sql_query(
        "SELECT current_setting('statement_timeout') AS st, \
                current_setting('idle_in_transaction_session_timeout') AS idle, \
                current_setting('application_name') AS app",
    )
    .get_result(&mut *conn)
    .await
    .unwrap();
    assert_eq!(got.st, "1234ms");
    assert_eq!(got.idle, "5678ms");
    assert_eq!(got.app, APPLICATION_NAME);
}

#[tokio::test]
async fn a_statement_over_the_timeout_is_cancelled_with_a_retryable_error() {
    let test = TestDb::migrated().await;
    let db = test.database_with(|s| s.statement_timeout_ms = 100);
    let mut conn = db.pool().get().await.unwrap();
    let err: DbError = diesel::sql_query("SELECT pg_sleep(5)")
        .execute(&mut *conn)
        .await
        .unwrap_err()
        .into();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("statement timeout"), "{err}");
}

#[tokio::test]
async fn pool_statistics_count_connections_and_gets() {
    let test = TestDb::migrated().await;
    let db = test.database_with(|s| {
        s.max_connections = 3;
        s.min_idle = 0;
    });
    for _ in 0..5 {
        db.load_session(PHONE).await.unwrap();
    }
    let stats = db.stats();
    assert_eq!(stats.max_size, 3);
    assert!(stats.gets >= 5, "{stats:?}");
    assert!(stats.created >= 1 && stats.connections <= 3, "{stats:?}");
}

#[tokio::test]
async fn a_server_that_is_down_gives_a_retryable_error_not_a_hang() {
    let port = support::free_port();
    let db = switchboard::db::Database::connect(
        switchboard::config::Secret::new(format!("postgres://nobody:pw@127.0.0.1:{port}/none")),
        &switchboard::config::DatabaseSettings {
            acquire_timeout_ms: 300,
            connect_timeout_ms: 200,
            min_idle: 0,
            retry: switchboard::config::RetrySettings {
                max_attempts: 2,
                base_delay_ms: 10,
                max_delay_ms: 10,
            },
            ..Default::default()
        },
    );
    let start = Instant::now();
    let err = db.load_session(PHONE).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// The pathology `plan_cache_mode = force_custom_plan` once answered:
/// PostgreSQL settles on a generic plan after five executions, and one made
/// while the inbox was empty (a sequential scan, a hash join) stayed cached
/// as the table grew. The pool's connections keep the planner off those
/// paths, so a generic plan made on an empty table still probes the key.
#[tokio::test]
async fn a_plan_settled_while_the_inbox_was_empty_still_probes_its_key_once_it_has_grown() {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let test = TestDb::migrated().await;
    let db = test.database();
    let mut conn = db.pool().get().await.unwrap();
    // The shapes of the step's "already processed" check and processed mark.
    for prepare in [
        "PREPARE processed(text[], int8[]) AS SELECT i.phone, i.id FROM unnest($1, $2) AS u(phone, id) \
         JOIN inbox i ON i.phone = u.phone AND i.id = u.id WHERE i.processed_at IS NOT NULL",
        "PREPARE mark(text[], int8[]) AS UPDATE inbox AS i SET processed_at = now(), attempts = i.attempts + 1 \
         FROM unnest($1, $2) AS u(phone, id) WHERE i.phone = u.phone AND i.id = u.id",
    ] {
        diesel::sql_query(prepare).execute(&mut *conn).await.unwrap();
    }
    for _ in 0..10 {
        for run in [
            "EXECUTE processed('{5215512341234}', '{1}')",
            "EXECUTE mark('{5215512341234}', '{1}')",
        ] {
            diesel::sql_query(run).execute(&mut *conn).await.unwrap();
        }
    }
    // One busy phone's history: 20,000 rows, not yet analyzed.
    diesel::sql_query(format!(
        "INSERT INTO inbox (id, phone, provider_message_id, payload, processed_at) \
         SELECT g, '{PHONE}', 'wamid.' || g, '{{}}'::jsonb, now() FROM generate_series(1, 20000) g"
    ))
    .execute(&mut test.admin().await)
    .await
    .unwrap();
    for explain in [
        "EXPLAIN EXECUTE processed('{5215512341234}', '{5}')",
        "EXPLAIN EXECUTE mark('{5215512341234}', '{5}')",
    ] {
        let plan: Vec<Line> = diesel::sql_query(explain).load(&mut *conn).await.unwrap();
        let plan: Vec<String> = plan.into_iter().map(|l| l.line).collect();
        let text = plan.join("\n");
        assert!(
            !text.contains("Seq Scan on inbox") && !text.contains("Hash Join") && text.contains("inbox_pkey"),
            "{explain}:\n{text}"
        );
    }
}
