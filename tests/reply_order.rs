//! Replies as the customer should see them: one at a time per recipient, in
//! commit order, whatever order the send API answers in; a number's rate
//! held across processes; read receipts that never delay a reply; long
//! texts in ordered parts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use support::{say, TestDb};
use switchboard::db::schema::{messages, outbox};
use switchboard::load::fake_graph::{wa_error, FakeGraph};
use switchboard::load::send_order::{commit_order, order_violations, over_rate};
use switchboard::Engine;

async fn engine(db: &TestDb, fake: &FakeGraph, adjust: impl FnOnce(&mut switchboard::config::Settings)) -> Engine {
    support::engine_with_fake(db, fake, adjust).await
}

/// Each outbox row's key and status, in commit order.
async fn rows(db: &TestDb) -> Vec<(String, String)> {
    outbox::table
        .order(outbox::id)
        .select((outbox::idempotency_key, outbox::status))
        .load(&mut db.admin().await)
        .await
        .unwrap()
}

/// The keys the fake saw for `to`, in arrival order.
fn arrived_for(fake: &FakeGraph, to: &str) -> Vec<String> {
    fake.arrivals()
        .into_iter()
        .filter(|a| a.to == to)
        .map(|a| a.tracking)
        .collect()
}

#[actix_web::test]
async fn answers_in_any_order_still_reach_each_recipient_in_commit_order_one_at_a_time() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    fake.set_latency_range(Duration::ZERO, Duration::from_millis(150));
    let e = engine(&db, &fake, |_| {}).await;
    // An input the flow does not understand: the apology, then the re-prompt.
    for i in 0..25 {
        say(&e, &format!("52155800000{i:02}"), &format!("wamid.ord{i}"), "xyzzy").await;
    }
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), 50, "two replies for each of 25 conversations");
    let order = commit_order(db.url.expose()).await.unwrap();
    let (disordered, overlapped) = order_violations(&arrivals, &order, |_, to| to.to_string());
    assert!(disordered.is_empty(), "out of commit order: {disordered:?}");
    assert!(
        overlapped.is_empty(),
        "sent while the one before was unanswered: {overlapped:?}"
    );
    let first = arrived_for(&fake, "5215580000000");
    assert_eq!(first.len(), 2);
    assert!(first[0].ends_with(":0") && first[1].ends_with(":1"), "{first:?}");
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_retried_first_reply_holds_the_second_back_until_it_succeeds() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    fake.script([wa_error(500, 1)]);
    let e = engine(&db, &fake, |_| {}).await;
    let to = "5215580001000";
    say(&e, to, "wamid.retry", "xyzzy").await;
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    let keys = arrived_for(&fake, to);
    assert_eq!(
        keys.len(),
        3,
        "the first twice (500, then accepted), then the second: {keys:?}"
    );
    assert_eq!(keys[0], keys[1], "the retry came before anything else: {keys:?}");
    assert!(keys[2].ends_with(":1"), "{keys:?}");
    let accepted: Vec<bool> = fake.arrivals().iter().map(|a| a.accepted).collect();
    assert_eq!(accepted, vec![false, true, true]);
    let order = commit_order(db.url.expose()).await.unwrap();
    let (disordered, overlapped) = order_violations(&fake.arrivals(), &order, |_, to| to.to_string());
    assert!(disordered.is_empty() && overlapped.is_empty());
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_first_reply_that_fails_for_good_lets_the_second_go_and_shows_failed() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    // 131026: the message is undeliverable — not retried.
    fake.script([wa_error(400, 131026)]);
    let e = engine(&db, &fake, |_| {}).await;
    let to = "5215580002000";
    say(&e, to, "wamid.fail", "xyzzy").await;
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    assert_eq!(arrived_for(&fake, to).len(), 2);
    let statuses: Vec<String> = rows(&db).await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses, vec!["failed", "sent"]);
    let shown: Vec<(String, Option<String>)> = messages::table
        .filter(messages::origin.eq("bot"))
        .order(messages::id)
        .select((messages::status, messages::error))
        .load(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(shown[0].0, "failed");
    assert!(
        shown[0].1.as_deref().unwrap_or_default().contains("131026"),
        "{shown:?}"
    );
    assert_eq!(shown[1].0, "sent");
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_row_whose_sender_died_is_resent_before_the_later_ones_of_its_conversation() {
    let db = TestDb::migrated().await;
    let to = "5215580003000";
    // A process claimed the first row and died mid-send; the second waits.
    put_row(&db, to, "in:1:0", "sending", 1).await;
    put_row(&db, to, "in:1:1", "pending", 0).await;
    let fake = FakeGraph::start().unwrap();
    let e = engine(&db, &fake, |_| {}).await;
    e.outbox().wait_drained().await;
    assert_eq!(arrived_for(&fake, to), vec!["in:1:0", "in:1:1"]);
    assert_eq!(
        std::sync::atomic::AtomicU64::load(
            &e.outbox().stats.resent_after_crash,
            std::sync::atomic::Ordering::Relaxed
        ),
        1,
        "the row whose answer was never recorded is counted as a possible repeat"
    );
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn three_processes_on_one_number_send_within_its_rate_together() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    const RATE: u32 = 20;
    let mut engines = Vec::new();
    for _ in 0..3 {
        engines.push(engine(&db, &fake, |s| s.outbox.rate_per_s = RATE).await);
    }
    // Each process has 40 replies to send at once: 3× the rate for two seconds.
    for (p, e) in engines.iter().enumerate() {
        for i in 0..40 {
            say(e, &format!("5215581{p}{i:05}"), &format!("wamid.rate{p}.{i}"), "hola").await;
        }
    }
    for e in &engines {
        e.wait_idle().await;
    }
    for e in &engines {
        e.outbox().wait_drained().await;
    }
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), 120);
    let over = over_rate(&arrivals, |_| RATE);
    assert!(over.is_empty(), "over the number's rate: {over:?}");
    let first = arrivals.iter().map(|a| a.arrived).min().unwrap();
    let last = arrivals.iter().map(|a| a.arrived).max().unwrap();
    assert!(
        last - first >= Duration::from_secs(4),
        "120 sends at 20/s take five seconds: {:?}",
        last - first
    );
    for e in engines {
        e.shutdown().await.unwrap();
    }
}

#[actix_web::test]
async fn each_message_taken_up_is_marked_read_once_and_a_hung_receipt_does_not_delay_the_reply() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    fake.hold_read_receipts(true);
    let e = engine(&db, &fake, |_| {}).await;
    let to = "5215580004000";
    say(&e, to, "wamid.read1", "hola").await;
    say(&e, to, "wamid.read2", "refrigerador").await;
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    assert_eq!(
        arrived_for(&fake, to).len(),
        2,
        "both replies went while the receipts hung"
    );
    let receipts = fake.read_receipts();
    // Each once; in any order — receipts are fire-and-forget calls, not
    // replies, so two may overtake each other on the wire.
    let mut ids: Vec<&str> = receipts.iter().map(|r| r["message_id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec!["wamid.read1", "wamid.read2"]);
    assert!(
        receipts.iter().all(|r| r["typing_indicator"]["type"] == "text"),
        "{receipts:?}"
    );
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_number_that_wants_no_receipts_gets_none() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let e = engine(&db, &fake, |s| s.whatsapp.read_receipts = false).await;
    say(&e, "5215580005000", "wamid.noread", "hola").await;
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    assert_eq!(fake.arrivals().len(), 1);
    assert!(fake.read_receipts().is_empty());
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_nine_thousand_character_message_arrives_as_three_ordered_parts() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    fake.set_latency_range(Duration::ZERO, Duration::from_millis(100));
    let e = engine(&db, &fake, |_| {}).await;
    let to = "5215580006000";
    let paragraph = |i: usize| format!("Párrafo {i}. {}", "texto largo ".repeat(80).trim_end());
    let long: String = (0..9).map(paragraph).collect::<Vec<_>>().join("\n\n");
    assert!(long.chars().count() > 8_500);
    // The customer writes first: agents answer inside the 24-hour window.
    say(&e, to, "wamid.k9000", "hola").await;
    e.wait_idle().await;
    e.submit_agent_message(to, &long, "k9000", None).await.unwrap();
    e.outbox().wait_drained().await;
    let agent: Vec<String> = arrived_for(&fake, to)
        .into_iter()
        .filter(|k| k.starts_with("agent:"))
        .collect();
    assert_eq!(agent, vec!["agent:k9000", "agent:k9000#p1", "agent:k9000#p2"]);
    let bodies: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| {
            r["biz_opaque_callback_data"]
                .as_str()
                .is_some_and(|k| k.starts_with("agent:"))
        })
        .map(|r| r["text"]["body"].as_str().unwrap().to_string())
        .collect();
    assert!(bodies.iter().all(|b| b.chars().count() <= 4096));
    assert_eq!(bodies.join("\n\n"), long, "nothing cut, nothing reordered");
    // The same request again adds nothing.
    let before = fake.arrivals().len();
    e.submit_agent_message(to, &long, "k9000", None).await.unwrap();
    e.outbox().wait_drained().await;
    assert_eq!(fake.arrivals().len(), before);
    // A key that could name a part is refused, not confused with one.
    assert!(e.submit_agent_message(to, "hola", "k9000#p1", None).await.is_err());
    e.shutdown().await.unwrap();
}

/// Inserts an outbox row of `to` with this status and attempt count.
async fn put_row(db: &TestDb, to: &str, key: &str, status: &str, attempts: i32) -> i64 {
    diesel::insert_into(outbox::table)
        .values((
            outbox::phone.eq(to),
            outbox::kind.eq("text"),
            outbox::payload.eq(serde_json::json!({"text": key, "choices": []})),
            outbox::idempotency_key.eq(key),
            outbox::status.eq(status),
            outbox::attempts.eq(attempts),
            outbox::next_attempt_at.eq(diesel::dsl::now),
        ))
        .returning(outbox::id)
        .get_result(&mut db.admin().await)
        .await
        .unwrap()
}

fn claimed(to: &str, id: i64, key: &str, attempts: i32) -> switchboard::db::outbox::Claimed {
    switchboard::db::outbox::Claimed {
        id,
        phone: to.into(),
        payload: serde_json::json!({"text": key}),
        idempotency_key: key.into(),
        attempts,
        lapsed: false,
        traceparent: None,
    }
}

#[actix_web::test]
async fn a_late_record_from_a_sender_whose_lease_ran_out_changes_nothing() {
    use switchboard::db::outbox as rows;
    let db = TestDb::migrated().await;
    let to = "5215580007000";
    // Claimed by us at attempt 1; our lease ran out and another process
    // claimed it again (attempt 2) and is sending it now.
    let first = put_row(&db, to, "in:7:0", "sending", 2).await;
    put_row(&db, to, "in:7:1", "pending", 0).await;
    let mut conn = db.admin().await;
    let ours = claimed(to, first, "in:7:0", 1);
    let next = rows::mark_sent_batch(&mut conn, &[(ours.clone(), "wamid.late".into())], 30_000, None)
        .await
        .unwrap();
    assert!(next.is_empty(), "the next row stays behind the one in flight");
    let at = chrono::Utc::now();
    rows::mark_retry(&mut conn, &ours, at, "late").await.unwrap();
    rows::release(&mut conn, &ours, at).await.unwrap();
    assert!(rows::mark_final(&mut conn, &ours, false, "late", 30_000, &[])
        .await
        .unwrap()
        .is_empty());
    let statuses: Vec<(String, String)> = rows(&db).await;
    assert_eq!(
        statuses,
        vec![("in:7:0".into(), "sending".into()), ("in:7:1".into(), "pending".into())],
        "the other process's claim decides"
    );
}

#[actix_web::test]
async fn a_row_replayed_from_the_dead_letters_waits_for_the_one_in_flight_then_goes_next() {
    use switchboard::db::outbox as rows;
    let db = TestDb::migrated().await;
    let to = "5215580008000";
    let dead = put_row(&db, to, "in:8:0", "pending", 0).await;
    let mut conn = db.admin().await;
    // The first row went to the dead letters; the next one is being sent.
    let claimed_first = rows::claim(&mut conn, 10, 30_000).await.unwrap();
    assert_eq!(claimed_first.len(), 1);
    rows::mark_final(&mut conn, &claimed_first[0], true, "gave up", 30_000, &[])
        .await
        .unwrap();
    let second = put_row(&db, to, "in:8:1", "sending", 1).await;
    let letter: i64 = switchboard::db::schema::dead_letters::table
        .filter(switchboard::db::schema::dead_letters::source_id.eq(dead))
        .select(switchboard::db::schema::dead_letters::id)
        .first(&mut conn)
        .await
        .unwrap();
    switchboard::db::dead_letters::replay(&mut conn, to, letter)
        .await
        .unwrap();
    assert!(
        rows::claim(&mut conn, 10, 30_000).await.unwrap().is_empty(),
        "not while a later row of its conversation is in flight"
    );
    let next = rows::mark_sent_batch(
        &mut conn,
        &[(claimed(to, second, "in:8:1", 1), "wamid.s".into())],
        30_000,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        next.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![dead],
        "then it goes next"
    );
}
