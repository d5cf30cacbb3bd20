//! Several business numbers in one deployment: a conversation is one number
//! × one contact; each number replies from its own path with its own token
//! and may run its own flow; a number not served is a dead letter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::app::{delivery, status, text_message, TestApp};
use support::TestDb;
use switchboard::config::{NumberSettings, Secret};
use switchboard::load::fake_graph::FakeGraph;

const PHONE: &str = "5215512341234";
/// The home number (the fake's `whatsapp.phone_number_id`).
const SALES: &str = "1098765432";
const SUPPORT: &str = "2000000002";
const SUPPORT_TOKEN: &str = "EAAG-support-token";

async fn app(db: &TestDb, fake: &FakeGraph, support_flow: Option<std::path::PathBuf>) -> TestApp {
    let whatsapp = fake.settings();
    TestApp::spawn(
        db,
        |s| {
            s.whatsapp = whatsapp;
            s.whatsapp.numbers = vec![NumberSettings {
                phone_number_id: SUPPORT.into(),
                access_token: Some(Secret::new(SUPPORT_TOKEN)),
                flow: support_flow,
                rate_per_s: Some(20),
                name: Some("Soporte".into()),
                ..Default::default()
            }];
            s.outbox.poll_interval_ms = 20;
        },
        None,
    )
    .await
}

/// A delivery of `messages` (and `statuses`) to business number `number`.
fn to_number(number: &str, messages: Vec<Value>, statuses: Vec<Value>) -> Vec<u8> {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": number},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": PHONE}],
        "messages": messages,
    });
    if !statuses.is_empty() {
        value["statuses"] = Value::Array(statuses);
    }
    serde_json::to_vec(&delivery(vec![json!({"value": value, "field": "messages"})])).unwrap()
}

async fn say(app: &TestApp, number: &str, id: &str, body: &str) -> Value {
    let r = app
        .deliver(&to_number(number, vec![text_message(PHONE, id, body)], vec![]), None)
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The customer's conversation with the support number, as the engine keys it.
async fn support_session(app: &TestApp) -> switchboard::actors::session::ConversationView {
    app.engine
        .conversation(&format!("{SUPPORT}:{PHONE}"))
        .await
        .unwrap()
        .unwrap()
}

#[actix_web::test]
async fn one_customer_of_two_numbers_has_two_conversations_each_answered_from_its_number() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let app = app(&db, &fake, None).await;
    say(&app, SALES, "wamid.s1", "vehiculo").await;
    say(&app, SUPPORT, "wamid.t1", "refrigerador").await;
    say(&app, SUPPORT, "wamid.t2", "hola").await;
    app.engine.wait_idle().await;
    app.engine.outbox().wait_drained().await;

    let sales = app.engine.conversation(PHONE).await.unwrap().unwrap();
    let support = support_session(&app).await;
    assert_eq!(sales.version, 1, "the sales conversation saw one message");
    assert_eq!(support.version, 2, "the support conversation saw two");
    assert_ne!(sales.flow_state, support.flow_state);

    let (requests, senders) = (fake.requests(), fake.senders());
    assert!(!requests.is_empty());
    for (r, (number, token)) in requests.iter().zip(&senders) {
        assert_eq!(r["to"], PHONE, "{r}");
        match number.as_str() {
            SALES => assert_eq!(token, "EAAG-fake-token"),
            SUPPORT => assert_eq!(token, SUPPORT_TOKEN),
            other => panic!("sent from {other}"),
        }
    }
    let from_support = senders.iter().filter(|(n, _)| n == SUPPORT).count();
    let from_sales = senders.len() - from_support;
    assert!(from_sales >= 1 && from_support >= 2, "{senders:?}");

    // The API names a conversation by contact and number.
    let one = app
        .get_json(&format!("/api/conversations/{PHONE}?number={SUPPORT}"), "")
        .await;
    assert_eq!(one["session"]["version"], 2, "{one}");
    assert_eq!(
        (one["number"].as_str(), one["contact"].as_str()),
        (Some(SUPPORT), Some(PHONE))
    );
    let home = app.get_json(&format!("/api/conversations/{PHONE}"), "").await;
    assert_eq!(home["session"]["version"], 1, "{home}");
    let listed = app.get_json(&format!("/api/conversations?number={SUPPORT}"), "").await;
    let rows = listed["conversations"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(
        (rows[0]["contact"].as_str(), rows[0]["number_name"].as_str()),
        (Some(PHONE), Some("Soporte"))
    );
    let listed = app.get_json(&format!("/api/conversations?number={SALES}"), "").await;
    assert_eq!(listed["conversations"].as_array().unwrap().len(), 1, "{listed}");
    // By the key as listed (the console's links), and by phone across numbers.
    let by_key = app.get_json(&format!("/api/conversations/{SUPPORT}:{PHONE}"), "").await;
    assert_eq!(by_key["session"]["version"], 2, "{by_key}");
    let by_phone = app.get_json("/api/conversations?phone=52155", "").await;
    assert_eq!(by_phone["conversations"].as_array().unwrap().len(), 2, "{by_phone}");
    let r = reqwest::get(app.url("/api/conversations?number=3000")).await.unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

#[actix_web::test]
async fn an_agent_reply_and_a_status_stay_with_their_number() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let app = app(&db, &fake, None).await;
    say(&app, SUPPORT, "wamid.a1", "hola").await;
    app.engine.wait_idle().await;
    app.engine.outbox().wait_drained().await;
    let r = reqwest::Client::new()
        .post(app.url(&format!("/api/conversations/{PHONE}/messages?number={SUPPORT}")))
        .json(&json!({"text": "Soy Carla, de soporte."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    app.engine.outbox().wait_drained().await;
    let senders = fake.senders();
    assert!(senders.iter().all(|(n, _)| n == SUPPORT), "{senders:?}");
    let last = fake.requests().last().cloned().unwrap();
    assert_eq!(last["text"]["body"], "Soy Carla, de soporte.");

    // Its delivery status, reported for the support number, finds it.
    let one = app
        .get_json(&format!("/api/conversations/{PHONE}?number={SUPPORT}"), "")
        .await;
    let wamid = one["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["origin"] == "agent")
        .and_then(|m| m["provider_message_id"].as_str())
        .unwrap()
        .to_string();
    let r = app
        .deliver(&to_number(SUPPORT, vec![], vec![status(&wamid, PHONE, "read")]), None)
        .await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["statuses"], 1, "{answer}");
    app.stop().await;
}

#[actix_web::test]
async fn a_delivery_to_a_number_not_served_is_acknowledged_and_dead_lettered() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let app = app(&db, &fake, None).await;
    let answer = say(&app, "3000000003", "wamid.x1", "hola").await;
    assert_eq!(
        (answer["accepted"].as_i64(), answer["dead_lettered"].as_i64()),
        (Some(0), Some(1)),
        "{answer}"
    );
    let letters = app.get_json("/api/admin/dead-letters", "").await;
    let reason = letters["dead_letters"][0]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("3000000003"), "{reason}");
    assert_eq!(
        letters["dead_letters"][0]["phone"],
        format!("3000000003:{PHONE}"),
        "filed under the conversation it was meant for"
    );
    app.engine.wait_idle().await;
    assert_eq!(fake.request_count(), 0, "never answered");
    app.stop().await;
}

#[actix_web::test]
async fn a_number_runs_its_own_flow() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let dir = support::scratch_dir("numbers-flow");
    let path = dir.join("ventas.toml");
    std::fs::write(
        &path,
        "name = \"ventas\"\ninitial = \"inicio\"\nfallback = \"No entendí.\"\n\n\
         [intents]\nhola = [\"hola\"]\n\n\
         [states.inicio]\nprompt = \"Hola, somos ventas.\"\non = { hola = \"inicio\" }\n",
    )
    .unwrap();
    let app = app(&db, &fake, Some(path)).await;
    say(&app, SUPPORT, "wamid.f1", "hola").await;
    say(&app, SALES, "wamid.f2", "hola").await;
    app.engine.wait_idle().await;
    app.engine.outbox().wait_drained().await;
    let support = support_session(&app).await;
    assert_eq!(support.flow_state, "inicio");
    let bodies: Vec<(String, String)> = fake
        .requests()
        .iter()
        .zip(fake.senders())
        .map(|(r, (n, _))| (n, r.to_string()))
        .collect();
    assert!(
        bodies
            .iter()
            .filter(|(n, _)| n == SUPPORT)
            .all(|(_, b)| b.contains("somos ventas") || b.contains("No entendí")),
        "{bodies:?}"
    );
    assert!(
        bodies
            .iter()
            .filter(|(n, _)| n == SALES)
            .all(|(_, b)| !b.contains("somos ventas")),
        "{bodies:?}"
    );
    app.stop().await;
}
