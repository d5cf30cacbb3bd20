//! Erasure and retention: `DELETE /api/contacts/{contact}` leaves no trace
//! of the contact in any table (every row of every table is searched as
//! text) while the counts stay; a redelivery of an erased message does not
//! bring it back; a table the erasure does not know fails a test; expired
//! bodies and payloads are blanked by the retention job.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use support::app::{text_message, TestApp, APP_SECRET};
use support::TestDb;
use switchboard::config::{ApiToken, Role, Secret, Settings};

const PHONE: &str = "5215512348899";
const BSUID: &str = "US.13491208655302741918";
const ADMIN: &str = "admin-token-erasure";
const AGENT: &str = "agent-token-erasure";

fn secure(s: &mut Settings) {
    s.whatsapp.app_secret = Some(Secret::new(APP_SECRET));
    s.api.tokens = vec![
        ApiToken::named("Olga", ADMIN, Role::Admin),
        ApiToken::named("Ana", AGENT, Role::Agent),
    ];
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn tables(db: &TestDb) -> Vec<String> {
    diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .load::<Name>(&mut db.admin().await)
    .await
    .unwrap()
    .into_iter()
    .map(|t| t.name)
    .collect()
}

/// The rows of every table whose text holds `needle`, as (table, count).
async fn traces(db: &TestDb, needle: &str) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    for t in tables(db).await {
        let c: Count = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM {t} AS r WHERE r::text ILIKE '%' || $1 || '%'"
        ))
        .bind::<diesel::sql_types::Text, _>(needle)
        .get_result(&mut db.admin().await)
        .await
        .unwrap();
        if c.n > 0 {
            found.push((t, c.n));
        }
    }
    found
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(&mut db.admin().await)
        .await
        .unwrap()
        .n
}

/// A text of the contact, sent now (its phone and BSUID).
fn message(id: &str, body: &str) -> Value {
    let mut m = text_message(PHONE, id, body);
    m["from_user_id"] = json!(BSUID);
    m
}

async fn deliver(app: &TestApp, m: &Value) {
    let r = app.deliver_value(vec![m.clone()], vec![]).await;
    assert_eq!(r.status(), 200);
}

async fn say(app: &TestApp, id: &str, body: &str) {
    deliver(app, &message(id, body)).await;
}

#[test]
fn every_table_says_how_it_is_erased() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = TestDb::migrated().await;
        let known: Vec<&str> = switchboard::db::erasure::TABLES.iter().map(|(t, _)| *t).collect();
        for t in tables(&db).await {
            assert!(
                known.contains(&t.as_str()),
                "table `{t}` is not in db::erasure::TABLES: say how erasure treats its personal data"
            );
        }
    });
}

#[actix_web::test]
async fn erasing_a_contact_leaves_no_trace_in_any_table_and_a_redelivery_does_not_bring_it_back() {
    let db = TestDb::migrated().await;
    let app = TestApp::spawn(&db, secure, None).await;
    // A report to its outcome, another begun (a pending reminder), a text
    // too long to apply (a dead letter), events in the feed.
    let first = message("wamid.e1", "refrigerador");
    deliver(&app, &first).await;
    app.engine.wait_idle().await;
    for (id, body) in [
        ("wamid.e2", "1234567890"),
        ("wamid.e3", "si"),
        ("wamid.e4", "refrigerador"),
    ] {
        say(&app, id, body).await;
        app.engine.wait_idle().await;
    }
    say(&app, "wamid.e5", &"mi refri no enfría ".repeat(300)).await;
    app.engine.wait_idle().await;
    app.engine.outbox().wait_drained().await;
    for needle in [PHONE, BSUID, "1234567890", "Ana Pérez", "mi refri no enf"] {
        assert!(!traces(&db, needle).await.is_empty(), "{needle} is stored before");
    }
    let messages = count(&db, "SELECT count(*) AS n FROM messages").await;
    let outcomes = count(&db, "SELECT count(*) AS n FROM outcomes").await;

    let erase = |token: &'static str| {
        app.client
            .delete(app.url(&format!("/api/contacts/{PHONE}")))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(erase(AGENT).await.unwrap().status(), 403, "an agent cannot erase");
    let r = erase(ADMIN).await.unwrap();
    assert_eq!(r.status(), 200);
    let erased: Value = r.json().await.unwrap();
    let marker = erased["erased"]["marker"].as_str().unwrap().to_string();
    assert!(erased["erased"]["messages"].as_u64().unwrap() >= 8, "{erased}");

    for needle in [PHONE, BSUID, "1234567890", "Ana Pérez", "mi refri no enf", "wamid.e"] {
        assert_eq!(traces(&db, needle).await, [], "{needle} left after the erasure");
    }
    // The rows stay, under the marker: the counts hold.
    assert_eq!(count(&db, "SELECT count(*) AS n FROM messages").await, messages);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM outcomes").await, outcomes);
    let audit: (Option<String>, Value) = switchboard::db::schema::erasures::table
        .filter(switchboard::db::schema::erasures::phone.eq(&marker))
        .select((
            switchboard::db::schema::erasures::requested_by,
            switchboard::db::schema::erasures::counts,
        ))
        .first(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(audit.0.as_deref(), Some("Olga"));
    assert_eq!(audit.1["outcomes"], 1);

    // WhatsApp delivers an erased message again (as it was sent): a duplicate, dropped.
    deliver(&app, &first).await;
    app.engine.wait_idle().await;
    assert_eq!(traces(&db, PHONE).await, [], "a redelivery brought the contact back");
    // A new message starts a new conversation.
    say(&app, "wamid.after", "hola").await;
    app.engine.wait_idle().await;
    assert_eq!(app.state(PHONE).await, "inicio");
    app.stop().await;
}

#[actix_web::test]
async fn expired_bodies_and_payloads_are_blanked_and_dead_letters_deleted() {
    let db = TestDb::migrated().await;
    let app = TestApp::spawn(&db, secure, None).await;
    say(&app, "wamid.r1", "refrigerador").await;
    say(&app, "wamid.r2", &"x".repeat(5000)).await;
    app.engine.wait_idle().await;
    app.engine.outbox().wait_drained().await;
    app.stop().await;
    let mut admin = db.admin().await;
    for t in ["messages", "outbox", "dead_letters", "events"] {
        diesel::sql_query(format!("UPDATE {t} SET created_at = now() - interval '3 days'"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    diesel::sql_query("UPDATE inbox SET received_at = now() - interval '3 days'")
        .execute(&mut admin)
        .await
        .unwrap();
    // A process with retention: its first round runs at start.
    let app = TestApp::spawn(
        &db,
        |s| {
            secure(s);
            s.retention.message_days = 2;
            s.retention.payload_days = 2;
            s.retention.dead_letter_days = 2;
            s.retention.batch = 1;
        },
        None,
    )
    .await;
    // Nothing personal left that is older than two days.
    let left = || async {
        count(
            &db,
            "SELECT (SELECT count(*) FROM messages WHERE body <> '') \
                  + (SELECT count(*) FROM inbox WHERE payload <> '{}' OR contact_name IS NOT NULL) \
                  + (SELECT count(*) FROM outbox WHERE payload <> '{}') \
                  + (SELECT count(*) FROM dead_letters) + (SELECT count(*) FROM events) AS n",
        )
        .await
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while left().await > 0 {
        assert!(
            Instant::now() < deadline,
            "{} rows still hold expired data",
            left().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(traces(&db, "Ana Pérez").await, []);
    assert!(
        count(&db, "SELECT count(*) AS n FROM messages").await >= 2,
        "the rows stay"
    );
    assert!(app.engine.retention_expired() >= 4, "in batches of one");
    app.stop().await;
}

/// Acknowledgement times (ms, sorted) of `n` conversations sending `each`
/// messages in turn, all at once; every one must be acknowledged.
async fn load(app: &TestApp, tag: &str, n: usize, each: usize) -> Vec<f64> {
    let conversations = (0..n).map(|c| async move {
        let phone = format!("5215577{c:06}");
        let mut took = Vec::new();
        for m in 0..each {
            let started = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                app.deliver_value(
                    vec![text_message(&phone, &format!("wamid.{tag}.{c}.{m}"), "hola")],
                    vec![],
                ),
            )
            .await
            .expect("a webhook hung");
            assert_eq!(r.status(), 200, "{phone}");
            took.push(started.elapsed().as_secs_f64() * 1e3);
        }
        took
    });
    let mut all: Vec<f64> = futures_util::future::join_all(conversations).await.concat();
    all.sort_by(f64::total_cmp);
    all
}

#[actix_web::test]
async fn expiring_a_large_backlog_while_messages_arrive_holds_none_of_them_back() {
    let db = TestDb::migrated().await;
    // A year of someone else's history, expired: 200,000 message bodies.
    const OLD: i64 = 200_000;
    diesel::sql_query(format!(
        "INSERT INTO messages (phone, direction, origin, body, status, created_at) \
         SELECT '5215566' || lpad((g % 2000)::text, 6, '0'), 'in', 'user', repeat('x', 200), 'received', \
                now() - interval '400 days' + g * interval '1 minute' \
         FROM generate_series(1, {OLD}) AS g"
    ))
    .execute(&mut db.admin().await)
    .await
    .unwrap();
    let (conversations, each) = (16, 10);
    // The same load without the job, then with it: side by side.
    let app = TestApp::spawn(&db, secure, None).await;
    let without = load(&app, "a", conversations, each).await;
    app.engine.wait_idle().await;
    app.stop().await;
    let app = TestApp::spawn(
        &db,
        |s| {
            secure(s);
            s.retention.message_days = 30;
        },
        None,
    )
    .await;
    // Its first round begins at start, in batches of 1,000.
    let with = load(&app, "b", conversations, each).await;
    let expired_meanwhile = app.engine.retention_expired();
    app.engine.wait_idle().await;
    assert!(
        expired_meanwhile < OLD as u64,
        "the round ended ({expired_meanwhile} rows) before the load did: nothing was measured under load"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while app.engine.retention_expired() < OLD as u64 {
        assert!(
            Instant::now() < deadline,
            "{} of {OLD} expired",
            app.engine.retention_expired()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM messages WHERE body <> '' AND phone LIKE '5215566%'"
        )
        .await,
        0
    );
    // The messages of the load: every one applied, none blanked (fresh).
    let fresh = "SELECT count(*) AS n FROM messages WHERE phone LIKE '5215577%' AND direction = 'in' AND body = 'hola'";
    assert_eq!(count(&db, fresh).await, 2 * (conversations * each) as i64);
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    eprintln!(
        "acks without the job: p50 {:.1} p99 {:.1} max {:.1} ms; during its round ({expired_meanwhile} of {OLD} rows \
         expired meanwhile): p50 {:.1} p99 {:.1} max {:.1} ms",
        at(&without, 0.5),
        at(&without, 0.99),
        at(&without, 1.0),
        at(&with, 0.5),
        at(&with, 0.99),
        at(&with, 1.0)
    );
    app.stop().await;
}
