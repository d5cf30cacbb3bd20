//! Contacts as WhatsApp knows them since 2026: by phone, by business-scoped
//! user ID (BSUID), or both — and a conversation that survives a change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use support::app::{delivery, message, text_message, TestApp};
use support::TestDb;
use switchboard::db::schema::messages;
use switchboard::load::fake_graph::FakeGraph;

const PHONE: &str = "5215512341234";
const BSUID: &str = "US.13491208655302741918";

async fn app(db: &TestDb, fake: &FakeGraph) -> TestApp {
    let whatsapp = fake.settings();
    TestApp::spawn(
        db,
        |s| {
            s.whatsapp = whatsapp;
            s.outbox.poll_interval_ms = 20;
        },
        None,
    )
    .await
}

/// One change whose contact is known by `wa_id` and/or `user_id`.
fn from_contact(wa_id: Option<&str>, user_id: Option<&str>, messages: Vec<Value>) -> Value {
    let mut contact = json!({"profile": {"name": "Ana", "username": "@ana.reportes"}});
    if let Some(w) = wa_id {
        contact["wa_id"] = json!(w);
    }
    if let Some(u) = user_id {
        contact["user_id"] = json!(u);
    }
    let value = json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "1098765432"},
        "contacts": [contact],
        "messages": messages,
    });
    delivery(vec![json!({"value": value, "field": "messages"})])
}

/// A text from a contact known only by its BSUID (no `from`).
fn bsuid_text(id: &str, body: &str) -> Value {
    let mut m = text_message(PHONE, id, body);
    m.as_object_mut().unwrap().remove("from");
    m["from_user_id"] = json!(BSUID);
    m
}

/// A text from `phone` known by its phone alone.
async fn phone_says(app: &TestApp, phone: &str, id: &str, body: &str) -> Value {
    send(
        app,
        &from_contact(Some(phone), None, vec![text_message(phone, id, body)]),
    )
    .await
}

/// A text from the contact known only by its BSUID.
async fn bsuid_says(app: &TestApp, id: &str, body: &str) -> Value {
    send(app, &from_contact(None, Some(BSUID), vec![bsuid_text(id, body)])).await
}

/// A text from the contact known by both its phone and its BSUID.
async fn both_say(app: &TestApp, id: &str, body: &str) -> Value {
    let mut m = text_message(PHONE, id, body);
    m["from_user_id"] = json!(BSUID);
    send(app, &from_contact(Some(PHONE), Some(BSUID), vec![m])).await
}

async fn send(app: &TestApp, body: &Value) -> Value {
    let r = app.deliver(&serde_json::to_vec(body).unwrap(), None).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[actix_web::test]
async fn a_username_only_user_gets_a_conversation_and_replies_go_to_its_bsuid() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let app = app(&db, &fake).await;
    let answer = bsuid_says(&app, "wamid.u1", "hola").await;
    assert_eq!(answer["accepted"], 1, "{answer}");
    app.engine.wait_idle().await;
    app.engine.outbox().wait_drained().await;
    let s = app.engine.conversation(BSUID).await.unwrap().unwrap();
    assert_eq!(s.version, 1);
    let sent = fake.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["recipient"], BSUID, "{}", sent[0]);
    assert!(sent[0].get("to").is_none(), "no phone to send to");
    let (_, shown) = app.engine.recent_messages(BSUID, 10).await.unwrap();
    assert_eq!(
        (shown.name.as_deref(), shown.username.as_deref()),
        (Some("Ana"), Some("@ana.reportes")),
        "stored for display"
    );
    let listed = app.get_json("/api/conversations", "").await;
    assert_eq!(
        listed["conversations"][0]["contact_username"], "@ana.reportes",
        "{listed}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_contact_first_seen_by_phone_keeps_its_conversation_when_it_is_known_by_bsuid() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let app = app(&db, &fake).await;
    phone_says(&app, PHONE, "wamid.p1", "vehiculo").await;
    both_say(&app, "wamid.p2", "12345").await;
    bsuid_says(&app, "wamid.p3", "no arranca").await;
    app.engine.wait_idle().await;
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(
        (s.version, s.flow_state.as_str()),
        (3, "vehiculo_confirma"),
        "one conversation"
    );
    assert!(app.engine.conversation(BSUID).await.unwrap().is_none());
    app.engine.outbox().wait_drained().await;
    assert!(
        fake.requests().iter().all(|r| r["to"] == PHONE),
        "replies go to the phone while it is known"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_user_who_changed_number_continues_the_same_conversation() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let app = app(&db, &fake).await;
    const NEW_PHONE: &str = "5215598765432";
    phone_says(&app, PHONE, "wamid.c1", "vehiculo").await;
    let notice = message(
        PHONE,
        "wamid.c2",
        "system",
        json!({"body": "Ana changed from 5215512341234 to 5215598765432", "wa_id": NEW_PHONE, "type": "user_changed_number"}),
    );
    send(&app, &from_contact(Some(PHONE), None, vec![notice])).await;
    send(
        &app,
        &from_contact(
            Some(NEW_PHONE),
            None,
            vec![text_message(NEW_PHONE, "wamid.c3", "12345")],
        ),
    )
    .await;
    app.engine.wait_idle().await;
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(
        (s.version, s.flow_state.as_str()),
        (2, "vehiculo_problema"),
        "the notice is stored, not stepped; the new number's message continues the slot"
    );
    assert!(app.engine.conversation(NEW_PHONE).await.unwrap().is_none());
    app.stop().await;
}

#[actix_web::test]
async fn a_status_that_names_only_the_bsuid_finds_its_message() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let app = app(&db, &fake).await;
    bsuid_says(&app, "wamid.s1", "hola").await;
    app.engine.wait_idle().await;
    app.engine.outbox().wait_drained().await;
    let wamid: Option<String> = messages::table
        .filter(messages::origin.eq("bot"))
        .select(messages::provider_message_id)
        .first(&mut db.admin().await)
        .await
        .unwrap();
    let wamid = wamid.expect("the reply was sent");
    let status = json!({"id": wamid, "status": "delivered", "timestamp": "1732320001", "recipient_user_id": BSUID});
    let value =
        json!({"messaging_product": "whatsapp", "metadata": {"phone_number_id": "1098765432"}, "statuses": [status]});
    let answer = send(&app, &delivery(vec![json!({"value": value, "field": "messages"})])).await;
    assert_eq!(answer["statuses"], 1, "{answer}");
    app.stop().await;
}

#[actix_web::test]
async fn identifiers_linked_apart_keep_their_own_conversations() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let app = app(&db, &fake).await;
    // The phone and the BSUID first come apart: two conversations.
    phone_says(&app, PHONE, "wamid.a1", "hola").await;
    bsuid_says(&app, "wamid.a2", "hola").await;
    // Then together: the phone's conversation takes it, and the BSUID
    // alone still leads to its own (in this process and in any other).
    both_say(&app, "wamid.a3", "hola").await;
    bsuid_says(&app, "wamid.a4", "hola").await;
    app.engine.wait_idle().await;
    assert_eq!(app.engine.conversation(PHONE).await.unwrap().unwrap().version, 2);
    assert_eq!(app.engine.conversation(BSUID).await.unwrap().unwrap().version, 2);
    app.stop().await;
}

#[actix_web::test]
async fn a_username_user_whose_bsuid_changed_continues_the_same_conversation() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let app = app(&db, &fake).await;
    const NEW_BSUID: &str = "US.77700000000000000001";
    bsuid_says(&app, "wamid.i1", "vehiculo").await;
    // Meta's notice: from the new BSUID, naming the previous one.
    let notice = json!({"from_user_id": NEW_BSUID, "id": "wamid.i2", "timestamp": chrono::Utc::now().timestamp().to_string(), "type": "system",
        "system": {"body": "User Ana changed", "type": "user_changed_user_id",
                   "user_id": NEW_BSUID, "previous_user_id": BSUID}});
    send(&app, &from_contact(None, Some(NEW_BSUID), vec![notice])).await;
    let mut text = bsuid_text("wamid.i3", "12345");
    text["from_user_id"] = json!(NEW_BSUID);
    send(&app, &from_contact(None, Some(NEW_BSUID), vec![text])).await;
    app.engine.wait_idle().await;
    let s = app.engine.conversation(BSUID).await.unwrap().unwrap();
    assert_eq!(
        (s.version, s.flow_state.as_str()),
        (2, "vehiculo_problema"),
        "the notice is stored; the new BSUID's message continues the slot"
    );
    assert!(app.engine.conversation(NEW_BSUID).await.unwrap().is_none());
    app.stop().await;
}
