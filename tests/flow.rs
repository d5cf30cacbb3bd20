//! Flow files: validation errors and the example flow walked end to end
//! through the real engine, with the welcome a user opening the chat gets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{engine_settings, example_flow, say, transcript, TestDb};
use switchboard::flow::Flow;
use switchboard::Engine;

const PHONE: &str = "5215512341234";

fn err(text: &str) -> String {
    Flow::parse(text, "test.toml").unwrap_err().to_string()
}

const MINIMAL: &str = r#"
name = "t"
initial = "a"
[intents]
go = ["go"]
[states.a]
prompt = "A"
[states.a.on]
go = "b"
[states.b]
prompt = "B"
outcome = "done"
"#;

#[test]
fn a_minimal_flow_is_valid() {
    let f = Flow::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(f.initial, "a");
}

#[test]
fn an_unknown_target_state_is_named_with_its_line() {
    let e = err(&MINIMAL.replace("go = \"b\"", "go = \"nowhere\""));
    assert!(
        e.contains("state `a` (line 6)") && e.contains("unknown state `nowhere`"),
        "{e}"
    );
}

#[test]
fn an_unreachable_state_is_an_error() {
    let e = err(&format!(
        "{MINIMAL}\n[states.island]\nprompt = \"I\"\noutcome = \"x\"\n"
    ));
    assert!(e.contains("state `island`") && e.contains("unreachable"), "{e}");
}

#[test]
fn a_duplicate_state_name_is_an_error_with_its_line() {
    let e = err(&format!("{MINIMAL}\n[states.b]\nprompt = \"again\"\n"));
    assert!(e.contains("duplicate") && e.contains("line 14"), "{e}");
}

#[test]
fn a_missing_initial_state_is_an_error() {
    let e = err(&MINIMAL.replace("initial = \"a\"", "initial = \"zz\""));
    assert!(e.contains("initial state `zz`") && e.contains("not declared"), "{e}");
}

#[test]
fn an_invalid_pattern_is_an_error_naming_the_state() {
    let bad = r#"
name = "t"
initial = "a"
[states.a]
prompt = "A"
next = "b"
[states.a.slot]
name = "sap"
pattern = "^[0-9{10}$"
[states.b]
prompt = "B"
outcome = "done"
"#;
    let e = err(bad);
    assert!(e.contains("state `a`") && e.contains("invalid pattern"), "{e}");
}

/// MINIMAL with `choices` (and more) in state `a`.
fn with_choices(choices: &[String], extra: &str) -> String {
    let list = choices.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
    MINIMAL.replace(
        "prompt = \"A\"",
        &format!("prompt = \"A\"\nchoices = [{list}]\n{extra}"),
    )
}

#[test]
fn choices_past_whatsapp_s_interactive_limits_are_errors_naming_the_state() {
    let n = |k: usize, len: usize| {
        (0..k)
            .map(|i| format!("{i}{}", "x".repeat(len - 1)))
            .collect::<Vec<_>>()
    };
    // Within the limits: 3 buttons of 20 characters, a list of 10 rows of 24.
    assert!(Flow::parse(&with_choices(&n(3, 20), ""), "t.toml").is_ok());
    assert!(Flow::parse(&with_choices(&n(10, 24), "list_button = \"Elige\""), "t.toml").is_ok());
    let cases = [
        (with_choices(&n(11, 5), ""), "11 choices"),
        (with_choices(&n(2, 21), ""), "a reply button's title has at most 20"),
        (with_choices(&n(5, 25), ""), "a list row's title has at most 24"),
        (
            with_choices(&n(5, 5), "list_button = \"una etiqueta demasiado larga\""),
            "`list_button` has 1 to 20",
        ),
        (
            with_choices(&n(2, 5), "list_button = \"Elige\""),
            "`list_button` without a list",
        ),
        (
            with_choices(&n(2, 5), "").replace("prompt = \"A\"", &format!("prompt = \"{}\"", "a".repeat(1025))),
            "at most 1024 characters",
        ),
    ];
    for (text, expected) in cases {
        let e = err(&text);
        assert!(e.contains("state `a`") && e.contains(expected), "{expected}: {e}");
    }
}

#[test]
fn an_unknown_key_is_an_error() {
    let e = err(&MINIMAL.replace("prompt = \"A\"", "prompt = \"A\"\npromt = \"typo\""));
    assert!(e.contains("promt"), "{e}");
}

#[test]
fn the_engine_refuses_to_start_on_an_invalid_flow_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, MINIMAL.replace("go = \"b\"", "go = \"nowhere\"")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut s = switchboard::config::Settings::default();
    s.flow.path = path;
    s.database.url = Some(switchboard::config::Secret::new("postgres://nobody@127.0.0.1:1/none"));
    let e = rt.block_on(Engine::start(s)).unwrap_err();
    assert!(matches!(e, switchboard::Error::Flow(_)), "{e:?}");
}

async fn engine(db: &TestDb) -> Engine {
    Engine::builder(engine_settings(db))
        .database(db.database())
        .flow(example_flow())
        .start()
        .await
        .unwrap()
}

/// Sends the messages in order and returns the bot's replies to the last one.
async fn walk(engine: &Engine, db: &TestDb, steps: &[&str]) -> Vec<String> {
    let before = transcript(db, PHONE).await.len();
    for (i, text) in steps.iter().enumerate() {
        say(engine, PHONE, &format!("wamid.{before}.{i}.{text}"), text).await;
        engine.wait_idle().await;
    }
    let t = transcript(db, PHONE).await;
    let last_user = t.iter().rposition(|(o, _)| o == "user").unwrap();
    t[last_user + 1..].iter().map(|(_, b)| b.clone()).collect()
}

async fn outcomes(db: &TestDb) -> Vec<(String, serde_json::Value)> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use switchboard::db::schema::outcomes;
    outcomes::table
        .order(outcomes::id)
        .select((outcomes::kind, outcomes::data))
        .load(&mut db.admin().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_fridge_path_validates_the_sap_number_re_asks_and_records_the_report() {
    let db = TestDb::migrated().await;
    let e = engine(&db).await;
    let r = walk(&e, &db, &["Hola"]).await;
    assert!(r[0].contains("¿Qué quieres reportar?"), "{r:?}");
    let r = walk(&e, &db, &["Mi refri no enfría"]).await;
    assert!(r[0].contains("número SAP"), "{r:?}");
    let r = walk(&e, &db, &["12345"]).await;
    assert!(
        r[0].contains("no es válido") && r[1].contains("número SAP"),
        "re-asked: {r:?}"
    );
    let r = walk(&e, &db, &["es el 1234567890"]).await;
    assert!(
        r[0].contains("SAP 1234567890") && r[0].contains("¿Es correcto?"),
        "{r:?}"
    );
    let r = walk(&e, &db, &["Sí"]).await;
    assert!(
        r[0].contains("Registré el reporte R") && r[0].contains("1234567890"),
        "{r:?}"
    );
    let o = outcomes(&db).await;
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].0, "reporte_refrigerador");
    assert_eq!(o[0].1["sap"], "1234567890");
    let s = e.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.flow_state, "inicio", "back to the start after the report");
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn three_invalid_sap_numbers_hand_the_conversation_to_a_person() {
    let db = TestDb::migrated().await;
    let e = engine(&db).await;
    walk(&e, &db, &["refrigerador", "1", "22", "333"]).await;
    let s = e.conversation(PHONE).await.unwrap().unwrap();
    assert!(s.handoff);
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_vehicle_path_asks_the_employee_number_then_the_problem() {
    let db = TestDb::migrated().await;
    let e = engine(&db).await;
    let r = walk(&e, &db, &["Quiero reportar mi camioneta"]).await;
    assert!(r[0].contains("número de empleado"), "{r:?}");
    let r = walk(&e, &db, &["98765"]).await;
    assert!(r[0].contains("qué le pasa"), "{r:?}");
    let r = walk(&e, &db, &["no arranca / la batería está muerta 🔋"]).await;
    assert!(
        r[0].contains("98765") && r[0].contains("no arranca / la batería está muerta 🔋"),
        "{r:?}"
    );
    walk(&e, &db, &["si"]).await;
    let o = outcomes(&db).await;
    assert_eq!(o[0].0, "reporte_vehiculo");
    assert_eq!(o[0].1["problema"], "no arranca / la batería está muerta 🔋");
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_returns_to_the_start_and_help_repeats_the_question() {
    let db = TestDb::migrated().await;
    let e = engine(&db).await;
    walk(&e, &db, &["vehiculo"]).await;
    let r = walk(&e, &db, &["ayuda"]).await;
    assert!(
        r[0].contains("Puedo levantar reportes") && r[1].contains("número de empleado"),
        "{r:?}"
    );
    let r = walk(&e, &db, &["cancelar"]).await;
    assert!(
        r[0].contains("cancelé") && r[1].contains("¿Qué quieres reportar?"),
        "{r:?}"
    );
    let s = e.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.flow_state, "inicio");
    assert_eq!(s.data, serde_json::json!({}));
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn while_a_human_agent_holds_the_conversation_the_bot_does_not_reply() {
    let db = TestDb::migrated().await;
    let e = engine(&db).await;
    let r = walk(&e, &db, &["quiero hablar con un agente"]).await;
    assert!(r[0].contains("Te comunico con una persona"), "{r:?}");
    let r = walk(&e, &db, &["hola?", "refrigerador"]).await;
    assert!(r.is_empty(), "the bot stayed silent: {r:?}");
    let ack = e
        .submit_agent_message(PHONE, "Hola, soy Ana. ¿En qué te ayudo?", "k1", None)
        .await
        .unwrap();
    assert!(ack.created);
    let again = e
        .submit_agent_message(PHONE, "Hola, soy Ana. ¿En qué te ayudo?", "k1", None)
        .await
        .unwrap();
    assert!(!again.created, "a retried agent send is stored once");
    let t = transcript(&db, PHONE).await;
    assert_eq!(t.iter().filter(|(o, _)| o == "agent").count(), 1);
    // Handed back to the bot, it answers again.
    let v = e.set_handoff(PHONE, false, None).await.unwrap();
    assert!(!v.handoff);
    let r = walk(&e, &db, &["refrigerador"]).await;
    assert!(r[0].contains("número SAP"), "{r:?}");
    e.shutdown().await.unwrap();
}

/// What the outbox holds for `PHONE`: each row's payload, oldest first.
async fn outbox_payloads(db: &TestDb) -> Vec<serde_json::Value> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use switchboard::db::schema::outbox;
    outbox::table
        .filter(outbox::phone.eq(PHONE))
        .order(outbox::id)
        .select(outbox::payload)
        .load(&mut db.admin().await)
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_user_opening_the_chat_is_welcomed_once_with_the_first_prompt_and_its_choices() {
    use support::app::{message, TestApp};
    use switchboard::load::fake_graph::FakeGraph;
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let whatsapp = fake.settings();
    let app = TestApp::spawn(&db, |s| s.whatsapp = whatsapp, None).await;
    // WhatsApp's request as it sends it (no body of its own), then its
    // redelivery.
    let mut opened = message(PHONE, "wamid.welcome", "request_welcome", serde_json::Value::Null);
    opened.as_object_mut().unwrap().remove("request_welcome");
    for _ in 0..2 {
        let r = app.deliver_value(vec![opened.clone()], vec![]).await;
        assert_eq!(r.status(), 200);
        app.engine.wait_idle().await;
    }
    app.engine.outbox().wait_drained().await;
    let greeting = "¡Hola! 👋 Soy el asistente de reportes. ¿Qué quieres reportar?";
    let t = transcript(&db, PHONE).await;
    let expected = [("user", "[request_welcome]"), ("bot", greeting)];
    assert_eq!(t, expected.map(|(o, b)| (o.to_string(), b.to_string())));
    let sent = fake.requests();
    assert_eq!(sent.len(), 1, "answered once: {sent:?}");
    assert_eq!(sent[0]["to"], PHONE);
    assert_eq!(sent[0]["type"], "interactive", "{}", sent[0]);
    let buttons: Vec<&str> = sent[0]["interactive"]["action"]["buttons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["reply"]["title"].as_str().unwrap())
        .collect();
    assert_eq!(buttons, ["Refrigerador", "Vehículo"]);
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(
        (s.flow_state.as_str(), s.version),
        ("inicio", 0),
        "a welcome is not a step"
    );
    // The customer's first words then go the usual way.
    app.say(PHONE, "wamid.first", "refrigerador").await;
    assert_eq!(app.state(PHONE).await, "refri_sap");
    app.stop().await;
}

#[tokio::test]
async fn without_welcome_in_the_flow_a_welcome_request_is_only_stored() {
    let db = TestDb::migrated().await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/reporte.toml");
    let text = std::fs::read_to_string(path).unwrap().replace("welcome = true", "");
    let flow = switchboard::flow::Flow::parse(&text, "reporte.toml").unwrap();
    assert!(!flow.welcome);
    let e = Engine::builder(engine_settings(&db))
        .database(db.database())
        .flow(flow)
        .start()
        .await
        .unwrap();
    support::submit(
        &e,
        PHONE,
        "wamid.welcome",
        serde_json::json!({"type": "request_welcome"}),
    )
    .await;
    e.wait_idle().await;
    let t = transcript(&db, PHONE).await;
    assert_eq!(t, [("user".to_string(), "[request_welcome]".to_string())]);
    assert!(outbox_payloads(&db).await.is_empty());
    e.shutdown().await.unwrap();
}
