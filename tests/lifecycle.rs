//! One lifecycle: an engine started and stopped many times in one process
//! leaves no task, no database connection and no memory behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use support::{engine_settings, example_flow, say, TestDb};
use switchboard::Engine;

const CYCLES: usize = 50;
/// Cycles before the baseline is taken: the allocator, the runtime and the
/// test cluster settle in the first few.
const WARM_UP: usize = 5;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Connections to `db` other than the one asking.
async fn connections(db: &TestDb) -> i64 {
    diesel::sql_query("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind::<Text, _>(&db.name)
        .get_result::<Count>(&mut db.admin().await)
        .await
        .unwrap()
        .n
}

/// Connections to `db` once the server has seen every closed one go: a
/// backend leaves `pg_stat_activity` a moment after its client closes the
/// socket, so this asks again, for at most ten seconds.
async fn settled_connections(db: &TestDb) -> i64 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = connections(db).await;
        if n == 0 || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// This process's threads.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// One start, one message through the whole engine (step, reply, outbox),
/// one shutdown; the engine opens its own pool from the settings, so its
/// connections are its own to close.
async fn cycle(db: &TestDb, n: usize) {
    let mut s = engine_settings(db);
    s.engine.resume_interval_s = 1;
    let engine = Engine::builder(s).flow(example_flow()).start().await.unwrap();
    say(&engine, "5215512341234", &format!("wamid.cycle.{n}"), "Hola").await;
    engine.wait_idle().await;
    engine.outbox().wait_drained().await;
    engine.shutdown().await.unwrap();
    assert_eq!(engine.lifecycle().tasks(), 0, "cycle {n}: every tracked task joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_starts_and_stops_leave_no_task_connection_or_memory_behind() {
    let db = TestDb::migrated().await;
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    for n in 0..WARM_UP {
        cycle(&db, n).await;
    }
    let (tasks0, threads0, rss0) = (tasks(), threads(), resident_bytes());
    for n in WARM_UP..CYCLES {
        cycle(&db, n).await;
    }
    // A pool is closed when its last handle goes; a cycle of references
    // between the engine's parts kept every pool (and its connections) open.
    assert_eq!(
        settled_connections(&db).await,
        0,
        "every engine's connections are closed"
    );
    // The pool's reaper (a bb8 task, not ours) ends at its first tick after
    // its pool is gone; give it that tick, no more.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tasks() > tasks0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        tasks() <= tasks0,
        "tasks on the caller's runtime: {} after, {tasks0} before",
        tasks()
    );
    // tokio's blocking pool (the joins run there) may keep a few idle
    // threads for a while; an actor system left running would be three more
    // threads per cycle (its own and two arbiters), 135 over the run.
    assert!(
        threads() <= threads0 + 4,
        "threads: {} after, {threads0} before",
        threads()
    );
    let grown = resident_bytes().saturating_sub(rss0);
    // One engine kept alive holds its event buffer, its registry and its
    // pool: megabytes. Forty-five of them could not hide under this bound.
    assert!(
        grown < 32 << 20,
        "resident memory grew {grown} bytes over {} cycles",
        CYCLES - WARM_UP
    );
}
