//! The outbox dispatcher against a local fake of the WhatsApp send API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use support::{say, TestDb};
use switchboard::breaker::BreakerState;
use switchboard::db::schema::{dead_letters, messages, outbox};
use switchboard::load::fake_graph::{wa_error, FakeGraph};
use switchboard::Engine;

const PHONE: &str = "5215512341234";

async fn engine(db: &TestDb, fake: &FakeGraph, adjust: impl FnOnce(&mut switchboard::config::Settings)) -> Engine {
    support::engine_with_fake(db, fake, adjust).await
}

async fn rows(db: &TestDb) -> Vec<(String, i32, Option<String>, Option<String>)> {
    outbox::table
        .order(outbox::id)
        .select((
            outbox::status,
            outbox::attempts,
            outbox::provider_message_id,
            outbox::last_error,
        ))
        .load(&mut db.admin().await)
        .await
        .unwrap()
}

/// Each reply sent once, and each conversation's in the order they were committed.
async fn sent_once_in_commit_order(db: &TestDb, fake: &FakeGraph, phones: &[String]) {
    let committed: Vec<(String, String)> = outbox::table
        .order(outbox::id)
        .select((outbox::phone, outbox::idempotency_key))
        .load(&mut db.admin().await)
        .await
        .unwrap();
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), committed.len(), "sends against rows");
    for phone in phones {
        let sent: Vec<&str> = arrivals
            .iter()
            .filter(|a| &a.to == phone)
            .map(|a| a.tracking.as_str())
            .collect();
        let made: Vec<&str> = committed
            .iter()
            .filter(|c| &c.0 == phone)
            .map(|c| c.1.as_str())
            .collect();
        assert_eq!(sent, made, "{phone}");
    }
}

#[actix_web::test]
async fn a_reply_is_sent_once_and_its_provider_id_stored_on_the_message() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let e = engine(&db, &fake, |_| {}).await;
    say(&e, PHONE, "wamid.o1", "hola").await;
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    let r = rows(&db).await;
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0.as_str(), r[0].1), ("sent", 1));
    let id = r[0].2.clone().unwrap();
    assert!(id.starts_with("wamid.fake."));
    let req = &fake.requests()[0];
    assert_eq!(req["to"], PHONE);
    assert_eq!(req["type"], "interactive", "the greeting offers choices as buttons");
    let (status, pid): (String, Option<String>) = messages::table
        .filter(messages::origin.eq("bot"))
        .select((messages::status, messages::provider_message_id))
        .first(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!((status.as_str(), pid.as_deref()), ("sent", Some(id.as_str())));
    assert_eq!(fake.requests().len(), 1, "sent exactly once");
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_server_error_then_a_throughput_limit_are_retried_until_success() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    fake.script([wa_error(500, 1), wa_error(400, 130429)]);
    let e = engine(&db, &fake, |_| {}).await;
    say(&e, PHONE, "wamid.o2", "hola").await;
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    let r = rows(&db).await;
    assert_eq!((r[0].0.as_str(), r[0].1), ("sent", 3));
    assert_eq!(fake.requests().len(), 3);
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn an_undeliverable_message_fails_without_retry_and_shows_the_error() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    fake.script([wa_error(400, 131026)]);
    let e = engine(&db, &fake, |_| {}).await;
    say(&e, PHONE, "wamid.o3", "hola").await;
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    let r = rows(&db).await;
    assert_eq!((r[0].0.as_str(), r[0].1), ("failed", 1));
    assert!(r[0].3.as_deref().unwrap().contains("131026"));
    let (status, error): (String, Option<String>) = messages::table
        .filter(messages::origin.eq("bot"))
        .select((messages::status, messages::error))
        .first(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("131026"));
    assert_eq!(fake.requests().len(), 1);
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn out_of_attempts_a_row_goes_to_dead_letters() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    fake.script((0..3).map(|_| wa_error(503, 2)));
    let e = engine(&db, &fake, |s| {
        s.outbox.max_attempts = 3;
        s.outbox.breaker.failure_threshold = 100;
    })
    .await;
    say(&e, PHONE, "wamid.o4", "hola").await;
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    assert_eq!(rows(&db).await[0].0, "dead");
    let n: i64 = dead_letters::table
        .filter(dead_letters::source.eq("outbox"))
        .count()
        .get_result(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(n, 1);
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn when_the_api_is_down_the_breaker_opens_and_the_backlog_drains_once_it_returns() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    fake.set_down(true);
    let e = engine(&db, &fake, |s| {
        s.outbox.breaker.failure_threshold = 3;
        s.outbox.breaker.open_ms = 100;
        s.outbox.breaker.max_open_ms = 100;
        s.outbox.max_attempts = 1000;
    })
    .await;
    for i in 0..5 {
        say(&e, &format!("52155700000{i:02}"), &format!("wamid.d{i}"), "hola").await;
    }
    e.wait_idle().await;
    // Webhooks keep being accepted while the API is down.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while e.outbox().breaker.snapshot().counters.opened == 0 {
        assert!(std::time::Instant::now() < deadline, "the breaker never opened");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(e.outbox().backlog() > 0 || rows(&db).await.iter().any(|r| r.0 != "sent"));
    fake.set_down(false);
    e.outbox().wait_drained().await;
    let r = rows(&db).await;
    assert!(r.iter().all(|r| r.0 == "sent"), "{r:?}");
    // Each of the 5 replies reached the API exactly once.
    let mut to: Vec<String> = fake
        .requests()
        .iter()
        .map(|q| q["to"].as_str().unwrap().to_string())
        .collect();
    to.sort();
    to.dedup();
    assert_eq!((fake.requests().len(), to.len()), (5, 5));
    assert_ne!(
        e.breakers().await.iter().find(|b| b.name == "outbound").unwrap().state,
        BreakerState::Open
    );
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_row_left_in_flight_by_a_dead_process_is_sent_after_its_lease() {
    let db = TestDb::migrated().await;
    // A process claimed this row (attempt 1) and died before recording the result.
    diesel::insert_into(outbox::table)
        .values((
            outbox::phone.eq(PHONE),
            outbox::kind.eq("text"),
            outbox::payload.eq(serde_json::json!({"text": "Hola", "choices": []})),
            outbox::idempotency_key.eq("in:1:0"),
            outbox::status.eq("sending"),
            outbox::attempts.eq(1),
            outbox::next_attempt_at.eq(diesel::dsl::now),
        ))
        .execute(&mut db.admin().await)
        .await
        .unwrap();
    let fake = FakeGraph::start().unwrap();
    let e = engine(&db, &fake, |_| {}).await;
    e.outbox().wait_drained().await;
    let r = rows(&db).await;
    assert_eq!((r[0].0.as_str(), r[0].1), ("sent", 2));
    assert_eq!(fake.requests().len(), 1);
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_send_the_provider_holds_does_not_hold_back_the_others() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let slow = "5215570000100";
    fake.hold(slow);
    let e = engine(&db, &fake, |s| {
        s.outbox.batch = 2;
        s.outbox.concurrency = 2;
    })
    .await;
    say(&e, slow, "wamid.slow", "hola").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fake.waiting() == 0 {
        assert!(std::time::Instant::now() < deadline, "the first reply was never sent");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // While the provider hangs on that send, six other conversations reply.
    for i in 0..6 {
        say(&e, &format!("52155700002{i:02}"), &format!("wamid.other{i}"), "hola").await;
    }
    while fake.accepted_tracking().len() < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "the other replies were not sent: {} of 6",
            fake.accepted_tracking().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // ... while the held send was still in flight (not timed out and retried).
    let first = &rows(&db).await[0];
    assert_eq!(
        (first.0.as_str(), first.1, fake.waiting()),
        ("sending", 1, 1),
        "the other replies waited for the held send"
    );
    fake.release(slow);
    e.outbox().wait_drained().await;
    let r = rows(&db).await;
    assert_eq!(r.len(), 7);
    assert!(r.iter().all(|r| r.0 == "sent" && r.1 == 1), "{r:?}");
    let mut tracking = fake.accepted_tracking();
    tracking.sort();
    tracking.dedup();
    assert_eq!((fake.requests().len(), tracking.len()), (7, 7));
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn while_the_send_api_stalls_messages_are_applied_and_the_replies_drain_in_order_after() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let phones: Vec<String> = (0..4).map(|i| format!("52155700003{i:02}")).collect();
    // The API takes every send and answers none.
    for phone in &phones {
        fake.hold(phone);
    }
    let e = engine(&db, &fake, |_| {}).await;
    for (i, phone) in phones.iter().enumerate() {
        say(&e, phone, &format!("wamid.stall{i}a"), "hola").await;
        say(&e, phone, &format!("wamid.stall{i}b"), "refrigerador").await;
    }
    // Acknowledged and applied, every one, while no send was answered.
    e.wait_idle().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fake.waiting() < phones.len() {
        assert!(std::time::Instant::now() < deadline, "the heads were not sent");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(fake.accepted_tracking().is_empty());
    assert_eq!(fake.waiting(), phones.len(), "one send in flight per conversation");
    let queued = rows(&db).await.len();
    assert!(queued >= 2 * phones.len(), "{queued} replies queued");
    for phone in &phones {
        fake.release(phone);
    }
    e.outbox().wait_drained().await;
    let r = rows(&db).await;
    assert!(r.iter().all(|r| r.0 == "sent" && r.1 == 1), "{r:?}");
    sent_once_in_commit_order(&db, &fake, &phones).await;
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_row_the_rate_holds_past_half_its_lease_is_given_back_not_sent_late_or_twice() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    // Far more rows claimed than the number's rate sends within half a
    // lease: most wait for the rate longer than that.
    let e = engine(&db, &fake, |s| {
        // Room for a send and its mark within the lease on a busy machine.
        s.outbox.lease_ms = 4_000;
        s.outbox.rate_per_s = 2;
        s.outbox.concurrency = 16;
    })
    .await;
    let phones: Vec<String> = (0..6).map(|i| format!("52155700004{i:02}")).collect();
    for (i, phone) in phones.iter().enumerate() {
        say(&e, phone, &format!("wamid.late{i}a"), "hola").await;
        say(&e, phone, &format!("wamid.late{i}b"), "refrigerador").await;
    }
    e.wait_idle().await;
    // Bounded: rows sent late are claimed again and again (each lease runs
    // out while it waits), which keeps the outbox from draining.
    tokio::time::timeout(std::time::Duration::from_secs(60), e.outbox().wait_drained())
        .await
        .expect("the replies did not drain in 60 s");
    let stats = &e.outbox().stats;
    // (`AtomicU64::load` by name: diesel's `load` is in scope.)
    let count =
        |a: &std::sync::atomic::AtomicU64| std::sync::atomic::AtomicU64::load(a, std::sync::atomic::Ordering::Relaxed);
    let late = count(&stats.given_back_late);
    assert!(late > 0, "no row waited past half its lease: the test shows nothing");
    assert_eq!(
        count(&stats.resent_after_crash),
        0,
        "a row's lease ran out while it waited, and it was claimed again"
    );
    sent_once_in_commit_order(&db, &fake, &phones).await;
    e.shutdown().await.unwrap();
}
