//! Outgoing webhooks end to end: a consumer of the team's (a local HTTP
//! server) hears every event of a conversation in order, once per
//! `webhook-id`, each signed per Standard Webhooks — also after it was
//! down a while, and without holding the customer's replies meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use support::app::{status, text_message, TestApp, APP_SECRET};
use support::TestDb;
use switchboard::config::{Secret, WebhookSettings};
use switchboard::db::schema::{messages, outbox};
use switchboard::webhooks::signature::Key;

const PHONE: &str = "5215512347788";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "webhook-test-token";

/// What the consumer saw: every request, and whether it was taken.
#[derive(Default)]
struct Seen {
    down: bool,
    /// Every request waits for `release` before it is answered.
    hang: bool,
    /// Requests waiting now, and the most ever at once.
    hanging: usize,
    most_hanging: usize,
    refused: usize,
    /// Taken deliveries: (webhook-id, event).
    taken: Vec<(String, Value)>,
    bad_signatures: usize,
}

struct Consumer {
    url: String,
    seen: Arc<Mutex<Seen>>,
    /// Told on every request.
    hit: Arc<tokio::sync::Notify>,
    /// Lets hanging requests go (permits are added).
    release: Arc<tokio::sync::Semaphore>,
}

type State = (Arc<Mutex<Seen>>, Arc<tokio::sync::Notify>, Arc<tokio::sync::Semaphore>);

async fn receive(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let hang = {
        let mut seen = state.0.lock().unwrap();
        if seen.hang {
            seen.hanging += 1;
            seen.most_hanging = seen.most_hanging.max(seen.hanging);
        }
        seen.hang
    };
    if hang {
        state.1.notify_waiters();
        let _go = state.2.acquire().await.unwrap();
        state.0.lock().unwrap().hanging -= 1;
    }
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, at, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let key = Key::parse(SECRET).unwrap();
    let at: i64 = at.parse().unwrap_or(0);
    let fresh = (chrono::Utc::now().timestamp() - at).abs() <= 300;
    let mut seen = state.0.lock().unwrap();
    let answer = if !key.verify(&id, at, &body, &sig) || !fresh {
        seen.bad_signatures += 1;
        HttpResponse::Unauthorized().finish()
    } else if seen.down {
        seen.refused += 1;
        HttpResponse::ServiceUnavailable().finish()
    } else {
        seen.taken.push((id, serde_json::from_slice(&body).unwrap()));
        HttpResponse::NoContent().finish()
    };
    drop(seen);
    state.1.notify_waiters();
    answer
}

async fn consumer(down: bool) -> Consumer {
    let seen = Arc::new(Mutex::new(Seen {
        down,
        ..Seen::default()
    }));
    let hit = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let data = web::Data::new((seen.clone(), hit.clone(), release.clone()));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/hook", web::post().to(receive))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    Consumer {
        url: format!("http://127.0.0.1:{port}/hook"),
        seen,
        hit,
        release,
    }
}

async fn app(db: &TestDb, url: &str) -> TestApp {
    app_with_attempts(db, url, 1_000).await
}

async fn app_with_attempts(db: &TestDb, url: &str, attempts: i32) -> TestApp {
    app_with(db, url, |s| s.outbox.max_attempts = attempts).await
}

async fn app_with(db: &TestDb, url: &str, more: impl FnOnce(&mut switchboard::config::Settings)) -> TestApp {
    let url = url.to_string();
    TestApp::spawn(
        db,
        move |s| {
            s.whatsapp.app_secret = Some(Secret::new(APP_SECRET));
            s.api.tokens = vec![Secret::new(TOKEN).into()];
            // No name (it is `webhook1`) and no kinds: every event.
            s.integrations.webhooks = vec![WebhookSettings {
                name: String::new(),
                url: Secret::new(url),
                secret: Secret::new(SECRET),
                events: Vec::new(),
                timeout_ms: 2_000,
            }];
            // Quick retries: the consumer is down for a few of them.
            s.outbox.base_delay_ms = 20;
            s.outbox.max_delay_ms = 100;
            s.outbox.max_attempts = 1_000;
            more(s);
        },
        None,
    )
    .await
}

async fn open_rows(db: &TestDb, webhooks: bool) -> i64 {
    let lanes = outbox::table.filter(outbox::status.ne("sent")).into_boxed();
    let lanes = if webhooks {
        lanes.filter(outbox::phone.like("webhook:%"))
    } else {
        lanes.filter(outbox::phone.not_like("webhook:%"))
    };
    lanes.count().get_result(&mut db.admin().await).await.unwrap()
}

#[actix_web::test]
async fn a_consumer_hears_every_event_in_order_once_signed_after_being_down() {
    let db = TestDb::migrated().await;
    let hook = consumer(true).await;
    let app = app(&db, &hook.url).await;
    let said = ["hola", "refrigerador", "1234567890", "si"];
    for (i, text) in said.iter().enumerate() {
        app.say(PHONE, &format!("wamid.hook.{i}"), text).await;
    }
    let conv = format!("/api/conversations/{PHONE}");
    let post = |path: String, body: Value| app.client.post(app.url(&path)).bearer_auth(TOKEN).json(&body).send();
    assert_eq!(
        post(format!("{conv}/handoff"), json!({"active": true}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(format!("{conv}/messages"), json!({"text": "Soy Ana."}))
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        post(format!("{conv}/handoff"), json!({"active": false}))
            .await
            .unwrap()
            .status(),
        200
    );

    // Down: it refuses a few attempts; the customer's replies go out meanwhile.
    loop {
        let notified = hook.hit.notified();
        if hook.seen.lock().unwrap().refused >= 3 {
            break;
        }
        notified.await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while open_rows(&db, false).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the replies waited for the webhook"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        open_rows(&db, true).await > 0,
        "the events are still waiting for the consumer"
    );

    hook.seen.lock().unwrap().down = false;
    app.engine.outbox().wait_drained().await;
    let rows: i64 = outbox::table
        .filter(outbox::phone.like("webhook:webhook1:%"))
        .count()
        .get_result(&mut db.admin().await)
        .await
        .unwrap();
    let (bad_signatures, taken) = {
        let seen = hook.seen.lock().unwrap();
        (seen.bad_signatures, seen.taken.clone())
    };
    assert_eq!(bad_signatures, 0);
    assert_eq!(taken.len() as i64, rows, "each event once");
    let mut ids: Vec<&str> = taken.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), taken.len(), "one delivery per webhook-id");

    let events: Vec<&Value> = taken.iter().map(|(_, e)| e).collect();
    // In the conversation's order: versions never go back.
    // (Steps carry a version; a send's mark does not.)
    let versions: Vec<i64> = events.iter().filter_map(|e| e["data"]["version"].as_i64()).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    let received: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "message.received")
        .map(|e| e["data"]["message"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(received, said);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let tail: Vec<&str> = kinds.iter().copied().filter(|k| !k.starts_with("message.")).collect();
    assert_eq!(tail, ["outcome", "handoff", "handoff"], "{kinds:?}");
    // Every reply the bot or the agent sent, told once it was accepted.
    let sent: Vec<&Value> = events.iter().filter(|e| e["type"] == "message.sent").copied().collect();
    let replies: i64 = messages::table
        .filter(messages::phone.eq(PHONE))
        .filter(messages::direction.eq("out"))
        .count()
        .get_result(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(sent.len() as i64, replies, "{kinds:?}");
    let agent = sent
        .iter()
        .find(|e| e["data"]["message"]["origin"] == "agent")
        .expect("the agent's");
    assert_eq!(agent["data"]["message"]["body"], "Soy Ana.");
    assert!(sent.iter().all(|e| e["data"]["message"]["id"].is_string()));
    let handoffs: Vec<&Value> = events.iter().filter(|e| e["type"] == "handoff").copied().collect();
    assert_eq!(
        (
            handoffs[0]["data"]["active"].as_bool(),
            handoffs[1]["data"]["active"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let outcome = events.iter().find(|e| e["type"] == "outcome").unwrap();
    assert!(outcome["data"]["outcome"]["ticket"].is_string(), "{outcome}");
    assert!(events.iter().all(|e| e["conversation"]["contact"] == PHONE
        && e["conversation"].get("number").is_some()
        && e["timestamp"].is_string()));
    app.stop().await;
}

#[actix_web::test]
async fn a_delivery_that_fails_every_attempt_is_a_dead_letter_and_its_replay_delivers_it() {
    let db = TestDb::migrated().await;
    let hook = consumer(true).await;
    let app = app_with_attempts(&db, &hook.url, 2).await;
    app.say(PHONE, "wamid.hook.dead", "hola").await;
    app.engine.outbox().wait_drained().await;
    let letters = app.get_json("/api/admin/dead-letters", TOKEN).await;
    let lanes: Vec<&Value> = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["phone"].as_str().unwrap().starts_with("webhook:webhook1:"))
        .collect();
    assert!(!lanes.is_empty(), "{letters}");
    assert!(
        lanes.iter().all(|l| l["reason"].as_str().unwrap().contains("503")),
        "{letters}"
    );
    assert!(hook.seen.lock().unwrap().taken.is_empty());

    hook.seen.lock().unwrap().down = false;
    for l in &lanes {
        let path = format!(
            "/api/admin/dead-letters/{}/{}/replay",
            l["phone"].as_str().unwrap(),
            l["id"]
        );
        let r = app.client.post(app.url(&path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 202, "{path}");
    }
    app.engine.outbox().wait_drained().await;
    let taken: Vec<String> = hook
        .seen
        .lock()
        .unwrap()
        .taken
        .iter()
        .map(|(_, e)| e["type"].to_string())
        .collect();
    assert_eq!(taken.len(), lanes.len(), "each replayed once: {taken:?}");
    assert!(taken.iter().any(|t| t.contains("message.received")), "{taken:?}");
    app.stop().await;
}

#[actix_web::test]
async fn an_endpoint_that_hangs_holds_no_customers_reply() {
    let db = TestDb::migrated().await;
    let hook = consumer(false).await;
    hook.seen.lock().unwrap().hang = true;
    // Four sends at once: the webhook posts may hold one of them.
    let app = app_with(&db, &hook.url, |s| {
        s.outbox.concurrency = 4;
        s.integrations.webhooks[0].timeout_ms = 10_000;
    })
    .await;
    for i in 0..6 {
        app.say(&format!("52155123400{i:02}"), &format!("wamid.hang.{i}"), "hola")
            .await;
    }
    // Every reply goes out while the posts hang (far before their timeout).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while open_rows(&db, false).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the replies waited for the hanging webhook"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(hook.seen.lock().unwrap().most_hanging, 1, "one post at a time");
    hook.seen.lock().unwrap().hang = false;
    hook.release.add_permits(1_000);
    app.engine.outbox().wait_drained().await;
    let taken = hook.seen.lock().unwrap().taken.len();
    assert_eq!(taken, 12, "each conversation's message.received and message.sent, once");
    app.stop().await;
}

#[actix_web::test]
async fn a_delivery_status_is_told_once_in_its_conversations_order() {
    let db = TestDb::migrated().await;
    let hook = consumer(false).await;
    let app = app(&db, &hook.url).await;
    app.say(PHONE, "wamid.hook.st", "hola").await;
    app.engine.outbox().wait_drained().await;
    let reply: String = messages::table
        .filter(messages::origin.eq("bot"))
        .select(messages::provider_message_id.assume_not_null())
        .first(&mut db.admin().await)
        .await
        .unwrap();
    // WhatsApp's `sent` repeats what our send recorded, and a late
    // `delivered` after `read` changes nothing: neither tells anything.
    for st in ["sent", "delivered", "read", "delivered"] {
        let r = app.deliver_value(vec![], vec![status(&reply, PHONE, st)]).await;
        assert_eq!(r.status(), 200);
    }
    app.engine.outbox().wait_drained().await;
    let taken: Vec<Value> = hook.seen.lock().unwrap().taken.iter().map(|(_, e)| e.clone()).collect();
    let told: Vec<(&str, &str)> = taken
        .iter()
        .map(|e| {
            let what = e["data"]["message"]["status"].as_str().unwrap_or("-");
            (e["type"].as_str().unwrap(), what)
        })
        .collect();
    assert_eq!(
        told,
        [
            ("message.received", "-"),
            ("message.sent", "-"),
            ("message.status", "delivered"),
            ("message.status", "read")
        ]
    );
    assert!(taken[1..].iter().all(|e| e["data"]["message"]["id"] == reply.as_str()));
    assert_eq!(taken[1]["data"]["message"]["origin"], "bot");
    app.stop().await;
}

#[actix_web::test]
async fn a_message_kept_as_a_dead_letter_is_told_once() {
    let db = TestDb::migrated().await;
    let hook = consumer(false).await;
    let app = app(&db, &hook.url).await;
    // A text over WhatsApp's limit: kept as a dead letter, the delivery acked.
    let long = text_message(PHONE, "wamid.hook.long", &"a".repeat(4097));
    for _ in 0..2 {
        let r = app.deliver_value(vec![long.clone()], vec![]).await;
        assert_eq!(r.status(), 200);
    }
    app.engine.outbox().wait_drained().await;
    let taken: Vec<Value> = hook.seen.lock().unwrap().taken.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        taken.len(),
        1,
        "a redelivery keeps nothing new, tells nothing: {taken:?}"
    );
    let dead = &taken[0]["data"]["dead_letter"];
    assert_eq!(
        (taken[0]["type"].as_str(), dead["source"].as_str()),
        (Some("dead_letter"), Some("webhook"))
    );
    assert!(dead["reason"].as_str().unwrap().contains("4096"), "{dead}");
    assert_eq!(taken[0]["conversation"]["contact"], PHONE);
    app.stop().await;
}

#[test]
fn a_webhook_is_refused_at_load_naming_what_is_wrong() {
    let text = r#"
[[integrations.webhooks]]
name = "tickets"
url = "ftp://example.com"
secret = "not-a-secret!"
events = ["message.received", "message.deleted"]
"#;
    let problems = match switchboard::config::parse_str(text) {
        Err(switchboard::config::ConfigError::Invalid(p)) => p.join("\n"),
        other => panic!("refused as invalid, not {other:?}"),
    };
    for part in [
        "integrations.webhooks[0].url",
        "integrations.webhooks[0].secret",
        "unknown kind \"message.deleted\"",
    ] {
        assert!(problems.contains(part), "{part} in:\n{problems}");
    }
}
