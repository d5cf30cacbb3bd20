//! Time in a conversation: reminders that fire once (or not at all when the
//! customer answers first), across crashes and processes; expiry; hand-off
//! timeouts; the 24-hour window and templates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use support::app::{delivery, text_message, TestApp, APP_SECRET};
use support::{say, TestDb};
use switchboard::config::{Settings, TemplateSettings};
use switchboard::db::schema::{messages, sessions, timers};
use switchboard::engine::{Event, EventKind};
use switchboard::flow::Flow;
use switchboard::load::fake_graph::FakeGraph;
use switchboard::Engine;

/// A report that asks for a number and reminds after a second; the
/// reminder's template goes when the window has closed.
const FLOW: &str = r#"
name = "tiempo"
initial = "inicio"
[intents]
reportar = ["reportar"]
listo = ["listo"]
[states.inicio]
prompt = "Hola"
[states.inicio.on]
reportar = "pide_dato"
[states.pide_dato]
prompt = "¿Tu número de cliente?"
[states.pide_dato.on]
listo = "inicio"
[states.pide_dato.after."1s"]
reply = "¿Sigues ahí?"
template = "recordatorio"
"#;

/// The test flow with flow-level keys (`expire_after`, …) added.
fn with_top(keys: &str) -> String {
    FLOW.replace("[intents]", &format!("{keys}\n[intents]"))
}

/// `flow` without the test flow's reminder.
fn without_reminder(flow: &str) -> String {
    flow.replace(
        "[states.pide_dato.after.\"1s\"]\nreply = \"¿Sigues ahí?\"\ntemplate = \"recordatorio\"\n",
        "",
    )
}

fn templates() -> Vec<TemplateSettings> {
    vec![
        TemplateSettings {
            name: "recordatorio".into(),
            language: "es".into(),
            parameters: 0,
        },
        TemplateSettings {
            name: "seguimiento".into(),
            language: "es".into(),
            parameters: 1,
        },
    ]
}

fn settings_for(db: &TestDb, fake: &FakeGraph) -> Settings {
    let mut s = support::engine_settings(db);
    s.whatsapp = fake.settings();
    s.whatsapp.templates = templates();
    s.whatsapp.read_receipts = false;
    s.outbox.poll_interval_ms = 20;
    s.timers.poll_interval_ms = 50;
    s
}

async fn engine(db: &TestDb, fake: &FakeGraph, flow: &str, adjust: impl FnOnce(&mut Settings)) -> Engine {
    let mut s = settings_for(db, fake);
    adjust(&mut s);
    Engine::builder(s)
        .database(db.database())
        .flow(Flow::parse(flow, "tiempo.toml").unwrap())
        .start()
        .await
        .unwrap()
}

/// Waits (bounded) for an event of `kind` for `phone`.
async fn event(rx: &mut tokio::sync::broadcast::Receiver<Event>, kind: EventKind, phone: &str) -> Event {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match rx.recv().await {
                Ok(e) if e.kind == kind && e.phone == phone => return e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events closed: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind:?} event for {phone}"))
}

/// The conversation's timers: (kind, status, outcome).
async fn timer_rows(db: &TestDb, phone: &str) -> Vec<(String, String, Option<String>)> {
    timers::table
        .filter(timers::phone.eq(phone))
        .order(timers::id)
        .select((timers::kind, timers::status, timers::outcome))
        .load(&mut db.admin().await)
        .await
        .unwrap()
}

/// The bodies the fake send API accepted for `to`.
fn sent_to(fake: &FakeGraph, to: &str) -> Vec<Value> {
    fake.requests().into_iter().filter(|r| r["to"] == to).collect()
}

fn texts(sent: &[Value]) -> Vec<String> {
    sent.iter()
        .map(|r| r["text"]["body"].as_str().unwrap_or("").to_string())
        .collect()
}

#[actix_web::test]
async fn a_reminder_fires_once_after_its_delay_in_its_place_in_the_line() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let e = engine(&db, &fake, FLOW, |_| {}).await;
    let mut rx = e.subscribe();
    let phone = "5215590000001";
    say(&e, phone, "wamid.t1", "reportar").await;
    let fired = event(&mut rx, EventKind::Timer, phone).await;
    assert_eq!(fired.version, 2, "after the message's step, as the next version");
    assert_eq!(fired.messages[0].body, "¿Sigues ahí?");
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    assert_eq!(
        timer_rows(&db, phone).await,
        [("after".into(), "fired".into(), Some("replied".into()))]
    );
    assert_eq!(
        texts(&sent_to(&fake, phone)),
        ["¿Tu número de cliente?", "¿Sigues ahí?"]
    );
    let (set, fired_at): (i64, Option<i64>) = timers::table
        .filter(timers::phone.eq(phone))
        .select((timers::set_version, timers::fired_version))
        .first(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!((set, fired_at), (1, Some(2)));
    // Fired once: the poller finds nothing more, a second engine neither.
    let again = engine(&db, &fake, FLOW, |_| {}).await;
    again.wait_idle().await;
    assert_eq!(sent_to(&fake, phone).len(), 2);
    again.shutdown().await.unwrap();
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_reminder_does_not_fire_when_the_customer_answers_first() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let e = engine(&db, &fake, FLOW, |_| {}).await;
    let mut rx = e.subscribe();
    let (answers, waits) = ("5215590000002", "5215590000003");
    say(&e, answers, "wamid.a1", "reportar").await;
    e.wait_idle().await;
    assert_eq!(
        timer_rows(&db, answers).await,
        [("after".into(), "pending".into(), None)]
    );
    say(&e, answers, "wamid.a2", "listo").await;
    // A witness whose reminder is due after the cancelled one's.
    say(&e, waits, "wamid.w1", "reportar").await;
    event(&mut rx, EventKind::Timer, waits).await;
    e.wait_idle().await;
    assert!(
        timer_rows(&db, answers).await.is_empty(),
        "cancelled: deleted by the answer's step"
    );
    assert!(
        !texts(&sent_to(&fake, answers)).contains(&"¿Sigues ahí?".to_string()),
        "the reminder went after the answer"
    );
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn two_processes_fire_a_reminder_once() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let a = engine(&db, &fake, FLOW, |_| {}).await;
    let b = engine(&db, &fake, FLOW, |_| {}).await;
    let (mut ra, mut rb) = (a.subscribe(), b.subscribe());
    let phones: Vec<String> = (0..20).map(|i| format!("52155900001{i:02}")).collect();
    for (i, p) in phones.iter().enumerate() {
        let e = if i % 2 == 0 { &a } else { &b };
        say(e, p, &format!("wamid.two{i}"), "reportar").await;
    }
    // Every reminder fires in one process or the other.
    let mut fired = 0;
    while fired < phones.len() {
        tokio::select! {
            Ok(ev) = ra.recv() => fired += usize::from(ev.kind == EventKind::Timer),
            Ok(ev) = rb.recv() => fired += usize::from(ev.kind == EventKind::Timer),
            _ = tokio::time::sleep(Duration::from_secs(15)) => panic!("{fired} of {} reminders fired", phones.len()),
        }
    }
    a.wait_idle().await;
    b.wait_idle().await;
    a.outbox().wait_drained().await;
    b.outbox().wait_drained().await;
    for p in &phones {
        let reminders = texts(&sent_to(&fake, p))
            .into_iter()
            .filter(|t| t == "¿Sigues ahí?")
            .count();
        assert_eq!(reminders, 1, "{p}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix_web::test]
async fn an_expired_conversation_starts_over_from_the_initial_state() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let flow = with_top("expire_after = \"2s\"\nexpire_reply = \"Empecemos de nuevo.\"");
    // Without the reminder: only the expiry is due.
    let flow = without_reminder(&flow);
    let e = engine(&db, &fake, &flow, |_| {}).await;
    let mut rx = e.subscribe();
    let phone = "5215590000004";
    say(&e, phone, "wamid.x1", "reportar").await;
    assert_eq!(e.conversation(phone).await.unwrap().unwrap().flow_state, "pide_dato");
    let fired = event(&mut rx, EventKind::Timer, phone).await;
    assert_eq!(fired.flow_state, "inicio");
    let view = e.conversation(phone).await.unwrap().unwrap();
    assert_eq!((view.flow_state.as_str(), view.data.clone()), ("inicio", json!({})));
    e.outbox().wait_drained().await;
    assert_eq!(
        texts(&sent_to(&fake, phone)).last().map(String::as_str),
        Some("Empecemos de nuevo.")
    );
    assert_eq!(
        timer_rows(&db, phone).await,
        [("expire".into(), "fired".into(), Some("replied".into()))]
    );
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_handoff_returns_to_the_bot_after_its_timeout_and_an_agent_message_restarts_it() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let flow = with_top("handoff_timeout = \"2s\"\nhandoff_timeout_reply = \"Te atiende el asistente de nuevo.\"");
    let e = engine(&db, &fake, &flow, |_| {}).await;
    let mut rx = e.subscribe();
    let phone = "5215590000005";
    say(&e, phone, "wamid.h1", "reportar").await;
    assert!(e.set_handoff(phone, true, None).await.unwrap().handoff);
    e.submit_agent_message(phone, "Hola, soy Marta.", "marta-1", None)
        .await
        .unwrap();
    let back = event(&mut rx, EventKind::Timer, phone).await;
    assert!(!back.handoff);
    assert!(!e.conversation(phone).await.unwrap().unwrap().handoff);
    e.outbox().wait_drained().await;
    let kinds: Vec<(String, String)> = timer_rows(&db, phone)
        .await
        .into_iter()
        .map(|(k, s, _)| (k, s))
        .collect();
    // The reminder (cancelled by the hand-off) and the first timeout
    // (cancelled by the agent's message) are gone; the timeout that fired
    // stays. The state's reminder waits for the customer's next message.
    assert_eq!(kinds, [("handoff".into(), "fired".into())]);
    let numbered: i64 = timers::table
        .filter(timers::phone.eq(phone))
        .select(diesel::dsl::max(timers::id))
        .first::<Option<i64>>(&mut db.admin().await)
        .await
        .unwrap()
        .unwrap();
    assert!(numbered >= 3, "three timers were set: {numbered}");
    assert_eq!(
        texts(&sent_to(&fake, phone)).last().map(String::as_str),
        Some("Te atiende el asistente de nuevo.")
    );
    e.shutdown().await.unwrap();
}

/// A message the customer sent 25 hours ago (its own timestamp).
fn old_message(from: &str, id: &str, body: &str) -> Value {
    let mut m = text_message(from, id, body);
    m["timestamp"] = json!((chrono::Utc::now() - chrono::TimeDelta::hours(25))
        .timestamp()
        .to_string());
    m
}

/// Submits a text the customer sent 25 hours ago.
async fn say_long_ago(e: &Engine, phone: &str, id: &str, body: &str) {
    e.submit_inbound(switchboard::InboundMessage {
        phone: phone.into(),
        user_id: None,
        business_number: None,
        provider_message_id: id.into(),
        payload: old_message(phone, id, body),
        contact_name: None,
        contact_username: None,
    })
    .await
    .unwrap();
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app.client.post(app.url(path)).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[actix_web::test]
async fn outside_the_window_agents_get_409_templates_go_and_stopped_templates_are_refused() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let (fake_settings, flow) = (fake.settings(), Flow::parse(FLOW, "tiempo.toml").unwrap());
    let app = TestApp::spawn_with(
        &db,
        |s| {
            s.whatsapp = fake_settings;
            s.whatsapp.templates = templates();
            s.whatsapp.read_receipts = false;
            s.outbox.poll_interval_ms = 20;
        },
        |b| b.flow(flow),
    )
    .await;
    let phone = "5215590000006";
    let r = app
        .deliver_value(vec![old_message(phone, "wamid.old", "reportar")], vec![])
        .await;
    assert_eq!(r.status(), 200);
    app.engine.wait_idle().await;
    // The bot's reply to a message sent over 24 hours ago is not sent.
    let statuses: Vec<(String, String)> = messages::table
        .filter(messages::phone.eq(phone))
        .order(messages::id)
        .select((messages::origin, messages::status))
        .load(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(
        statuses,
        [("user".into(), "received".into()), ("bot".into(), "skipped".into())]
    );

    let path = format!("/api/conversations/{phone}");
    let got = app.get_json(&path, "").await;
    assert_eq!(got["window"]["open"], false);
    assert_eq!(got["templates"][0]["name"], "recordatorio");
    let (status, body) = post(
        &app,
        &format!("{path}/messages"),
        json!({"text": "¿Sigue el problema?"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("24-hour"), "{body}");
    assert_eq!(body["window"]["open"], false);
    assert!(body["window"]["closes_at"].is_string(), "{body}");

    let (status, body) = post(&app, &format!("{path}/template"), json!({"name": "nada"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unknown template `nada`"),
        "{body}"
    );
    let (status, body) = post(&app, &format!("{path}/template"), json!({"name": "seguimiento"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("takes 1 parameter"), "{body}");
    let (status, body) = post(
        &app,
        &format!("{path}/template"),
        json!({"name": "seguimiento", "parameters": ["Ana"], "idempotency_key": "seg-1"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    app.engine.outbox().wait_drained().await;
    let sent = sent_to(&fake, phone);
    assert_eq!(sent.len(), 1, "only the template: {sent:?}");
    assert_eq!(sent[0]["type"], "template");
    assert_eq!(sent[0]["template"]["name"], "seguimiento");
    assert_eq!(sent[0]["template"]["language"]["code"], "es");
    assert_eq!(sent[0]["template"]["components"][0]["parameters"][0]["text"], "Ana");

    // WhatsApp pauses a template: it is refused with the reason.
    let update = delivery(vec![json!({"field": "message_template_status_update", "value": {
        "event": "PAUSED", "message_template_id": 594425479261596_i64,
        "message_template_name": "seguimiento", "message_template_language": "es",
        "reason": "LOW_QUALITY"}})]);
    let r = app
        .deliver(&serde_json::to_vec(&update).unwrap(), Some(APP_SECRET))
        .await;
    assert_eq!(r.status(), 200);
    let (status, body) = post(
        &app,
        &format!("{path}/template"),
        json!({"name": "seguimiento", "parameters": ["Ana"]}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("PAUSED"), "{body}");
    app.stop().await;
}

#[actix_web::test]
async fn a_reminder_outside_the_window_sends_its_template() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let e = engine(&db, &fake, FLOW, |_| {}).await;
    let mut rx = e.subscribe();
    let phone = "5215590000007";
    say_long_ago(&e, phone, "wamid.late", "reportar").await;
    event(&mut rx, EventKind::Timer, phone).await;
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    let sent = sent_to(&fake, phone);
    assert_eq!(sent.len(), 1, "the prompt was skipped, the template went: {sent:?}");
    assert_eq!(sent[0]["type"], "template");
    assert_eq!(sent[0]["template"]["name"], "recordatorio");
    assert_eq!(
        timer_rows(&db, phone).await,
        [("after".into(), "fired".into(), Some("template".into()))]
    );
    e.shutdown().await.unwrap();
}

#[test]
fn a_flow_with_an_unknown_target_or_a_bad_duration_in_after_fails_naming_the_state() {
    let bad = FLOW.replace(
        "reply = \"¿Sigues ahí?\"",
        "reply = \"¿Sigues ahí?\"\ntarget = \"escalar\"\n[states.pide_dato.after.\"10 minutos\"]\nreply = \"x\"",
    );
    let err = Flow::parse(&bad, "tiempo.toml").unwrap_err().to_string();
    assert!(err.contains("state `pide_dato`"), "{err}");
    assert!(err.contains("unknown target state `escalar`"), "{err}");
    assert!(err.contains("after \"10 minutos\""), "{err}");
    let bad = with_top("expire_after = \"pronto\"");
    let err = Flow::parse(&bad, "tiempo.toml").unwrap_err().to_string();
    assert!(err.contains("`expire_after` (line 4)"), "{err}");
}

#[actix_web::test]
async fn a_flow_naming_an_unconfigured_template_does_not_start() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let mut s = settings_for(&db, &fake);
    s.whatsapp.templates.clear();
    let err = Engine::builder(s)
        .database(db.database())
        .flow(Flow::parse(FLOW, "tiempo.toml").unwrap())
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("state `pide_dato`"), "{err}");
    assert!(err.contains("unknown template `recordatorio`"), "{err}");
}

/// The session row, read from outside.
async fn session_version(db: &TestDb, phone: &str) -> i64 {
    sessions::table
        .find(phone)
        .select(sessions::version)
        .first(&mut db.admin().await)
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_timer_due_while_no_process_runs_fires_late_when_one_starts() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let e = engine(&db, &fake, FLOW, |s| s.timers.poll_interval_ms = 60_000).await;
    let phone = "5215590000008";
    say(&e, phone, "wamid.d1", "reportar").await;
    e.wait_idle().await;
    // Stops before the reminder is due (its poller looks once a minute).
    e.shutdown().await.unwrap();
    assert_eq!(timer_rows(&db, phone).await[0].1, "pending");
    // The hours pass while no process runs.
    diesel::sql_query("UPDATE timers SET due_at = due_at - interval '2 hours'")
        .execute(&mut db.admin().await)
        .await
        .unwrap();
    let e = engine(&db, &fake, FLOW, |_| {}).await;
    let mut rx = e.subscribe();
    event(&mut rx, EventKind::Timer, phone).await;
    e.wait_idle().await;
    assert_eq!(e.stats().timers_late, 1);
    assert_eq!(session_version(&db, phone).await, 2);
    e.shutdown().await.unwrap();
}

/// Polls `done` every 20 ms for up to 20 s: the process under test is
/// another program, with nothing to subscribe to.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "no {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn a_reminder_fires_once_after_the_server_is_killed_while_it_waits() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("flow.toml"),
        FLOW.replace("after.\"1s\"", "after.\"3s\""),
    )
    .unwrap();
    let w = fake.settings();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\n[flow]\npath = \"{}\"\n[log]\nformat = \"json\"\n\
             [timers]\npoll_interval_ms = 50\n[outbox]\npoll_interval_ms = 20\nlease_ms = 1000\n\
             [whatsapp]\napi_base = \"{}\"\naccess_token = \"t\"\nphone_number_id = \"{}\"\nread_receipts = false\n\
             templates = [{{ name = \"recordatorio\", language = \"es\" }}]\n",
            db.url.expose(),
            dir.path().join("flow.toml").display(),
            w.api_base,
            w.phone_number_id.unwrap(),
        ),
    )
    .unwrap();
    let (mut first, port) = support::serve(dir.path());
    let phone = "5215590000009";
    assert_eq!(support::app::post_text(port, phone, "wamid.k1", "reportar").await, 200);
    // The step committed (its reply went): the reminder is waiting. Kill.
    until("prompt", || sent_to(&fake, phone).len() == 1).await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(timer_rows(&db, phone).await[0].1, "pending");
    let (mut second, _) = support::serve(dir.path());
    let reminders = || {
        texts(&sent_to(&fake, phone))
            .iter()
            .filter(|t| *t == "¿Sigues ahí?")
            .count()
    };
    until("reminder", || reminders() >= 1).await;
    // (The prompt may go twice: the kill can fall between its send and its mark.)
    assert_eq!(reminders(), 1);
    assert_eq!(
        timer_rows(&db, phone).await,
        [("after".into(), "fired".into(), Some("replied".into()))]
    );
    assert_eq!(session_version(&db, phone).await, 2);
    second.kill().unwrap();
    second.wait().unwrap();
}

#[actix_web::test]
async fn a_reminder_whose_template_whatsapp_paused_is_skipped_outside_the_window() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let e = engine(&db, &fake, FLOW, |_| {}).await;
    e.record_template_status("recordatorio", "es", "PAUSED", Some("LOW_QUALITY"))
        .await
        .unwrap();
    let mut rx = e.subscribe();
    let phone = "5215590000010";
    say_long_ago(&e, phone, "wamid.paused", "reportar").await;
    event(&mut rx, EventKind::Timer, phone).await;
    e.wait_idle().await;
    e.outbox().wait_drained().await;
    assert!(
        sent_to(&fake, phone).is_empty(),
        "nothing may go: {:?}",
        sent_to(&fake, phone)
    );
    assert_eq!(
        timer_rows(&db, phone).await,
        [("after".into(), "fired".into(), Some("skipped".into()))]
    );
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn claiming_due_timers_reads_the_due_index_however_many_wait() {
    let db = TestDb::migrated().await;
    let mut admin = db.admin().await;
    // A hundred thousand reminders waiting, for days: none is due.
    diesel::sql_query(
        "INSERT INTO timers (phone, kind, due_at, action, set_version) \
         SELECT '52155' || lpad(g::text, 8, '0'), 'after', now() + interval '2 days', '{}', 1 \
         FROM generate_series(1, 100000) AS g",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    diesel::sql_query("ANALYZE timers").execute(&mut admin).await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Plan {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let plan: Vec<Plan> = diesel::sql_query(
        "EXPLAIN SELECT phone, id FROM timers WHERE status = 'pending' AND due_at <= now() \
         AND lease_until < now() ORDER BY due_at LIMIT 1000 FOR UPDATE SKIP LOCKED",
    )
    .load(&mut admin)
    .await
    .unwrap();
    let plan: Vec<String> = plan.into_iter().map(|p| p.line).collect();
    assert!(
        plan.iter().any(|l| l.contains("timers_due")) && !plan.iter().any(|l| l.contains("Seq Scan")),
        "{plan:#?}"
    );
    let claimed = db
        .database()
        .run("claim", |c| {
            use scoped_futures::ScopedFutureExt;
            switchboard::db::timers::claim_due(c, 1, 30_000, 1000).scope_boxed()
        })
        .await
        .unwrap();
    assert!(claimed.is_empty());
}

#[test]
fn timers_that_would_loop_with_nobody_writing_are_refused() {
    let looping = FLOW.replace(
        "reply = \"¿Sigues ahí?\"",
        "reply = \"¿Sigues ahí?\"\ntarget = \"pide_dato\"",
    );
    let err = Flow::parse(&looping, "tiempo.toml").unwrap_err().to_string();
    assert!(err.contains("timers alone loop through `pide_dato`"), "{err}");
    // A reminder that only reminds fires once, and a hand-off's timeout
    // does not set the reminder that handed off again: no loop.
    assert!(Flow::parse(FLOW, "tiempo.toml").is_ok());
    let handing = with_top("handoff_timeout = \"1h\"").replace(
        "reply = \"¿Sigues ahí?\"\ntemplate = \"recordatorio\"",
        "handoff = true",
    );
    assert!(Flow::parse(&handing, "tiempo.toml").is_ok());
}

#[actix_web::test]
async fn an_agent_answers_a_customer_another_process_heard_and_a_retry_after_the_window_is_stored_not_refused() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let a = engine(&db, &fake, FLOW, |_| {}).await;
    let b = engine(&db, &fake, FLOW, |_| {}).await;
    let phone = "5215590000011";
    // B's actor knows the conversation from before the customer wrote.
    let refused = b.submit_agent_message(phone, "Hola", "early", None).await.unwrap_err();
    assert!(matches!(refused, switchboard::Error::OutsideWindow(_)), "{refused}");
    say(&a, phone, "wamid.ab1", "reportar").await;
    a.wait_idle().await;
    let ack = b
        .submit_agent_message(phone, "Hola, te ayudo.", "k1", None)
        .await
        .unwrap();
    assert!(ack.created);
    // A day later the same request is retried (its answer was lost).
    diesel::sql_query("UPDATE sessions SET last_customer_at = now() - interval '25 hours'")
        .execute(&mut db.admin().await)
        .await
        .unwrap();
    b.shutdown().await.unwrap();
    let b = engine(&db, &fake, FLOW, |_| {}).await;
    let again = b
        .submit_agent_message(phone, "Hola, te ayudo.", "k1", None)
        .await
        .unwrap();
    assert!(!again.created, "stored before: answered, not refused");
    assert!(
        b.submit_agent_message(phone, "¿Sigues?", "k2", None).await.is_err(),
        "a new one is refused"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_customer_back_after_the_expiry_meets_a_fresh_start_even_if_its_timer_has_not_fired() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let flow = without_reminder(&with_top("expire_after = \"1h\""));
    let e = engine(&db, &fake, &flow, |s| s.timers.poll_interval_ms = 60_000).await;
    let (idle, handed_back) = ("5215590000012", "5215590000013");
    for (i, p) in [idle, handed_back].iter().enumerate() {
        say(&e, p, &format!("wamid.e{i}"), "reportar").await;
    }
    e.wait_idle().await;
    e.shutdown().await.unwrap();
    // Two hours pass while no process runs (the expiry is overdue, not
    // fired); in the other conversation an agent acted a minute ago.
    let mut admin = db.admin().await;
    diesel::sql_query(
        "UPDATE sessions SET last_customer_at = last_customer_at - interval '2 hours', \
         updated_at = CASE WHEN phone = $1 THEN now() - interval '1 minute' ELSE updated_at - interval '2 hours' END",
    )
    .bind::<diesel::sql_types::Text, _>(handed_back)
    .execute(&mut admin)
    .await
    .unwrap();
    let e = engine(&db, &fake, &flow, |s| s.timers.poll_interval_ms = 60_000).await;
    // "listo" answers the old question (back to the start, its prompt); met
    // at the start it is not understood (the fallback, then the prompt).
    for (i, p) in [idle, handed_back].iter().enumerate() {
        say(&e, p, &format!("wamid.f{i}"), "listo").await;
    }
    e.wait_idle().await;
    let fresh = bot_said(&db, idle).await;
    assert_eq!(fresh.len(), 3, "{fresh:?}");
    assert!(
        fresh[1].starts_with("Perdón"),
        "the stale question was not taken up: {fresh:?}"
    );
    assert!(
        timer_rows(&db, idle).await.is_empty(),
        "the overdue expiry is cancelled"
    );
    // Recent activity (an agent's, a timer's) restarts the idle time.
    let kept = bot_said(&db, handed_back).await;
    assert_eq!(kept.len(), 2, "the question was answered: {kept:?}");
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_welcome_after_the_expiry_greets_from_the_start_even_if_its_timer_has_not_fired() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    let flow = without_reminder(&with_top("expire_after = \"1h\"\nwelcome = true"));
    let e = engine(&db, &fake, &flow, |s| s.timers.poll_interval_ms = 60_000).await;
    let phone = "5215590000014";
    say(&e, phone, "wamid.w0", "reportar").await;
    e.wait_idle().await;
    e.shutdown().await.unwrap();
    // Two hours pass while no process runs: the expiry is overdue, not fired.
    diesel::sql_query(
        "UPDATE sessions SET last_customer_at = last_customer_at - interval '2 hours', \
         updated_at = updated_at - interval '2 hours'",
    )
    .execute(&mut db.admin().await)
    .await
    .unwrap();
    let e = engine(&db, &fake, &flow, |s| s.timers.poll_interval_ms = 60_000).await;
    support::submit(&e, phone, "wamid.w1", json!({"type": "request_welcome"})).await;
    e.wait_idle().await;
    let said = bot_said(&db, phone).await;
    assert_eq!(
        said,
        ["¿Tu número de cliente?", "Hola"],
        "greeted from the start its next step will meet, not asked the stale question"
    );
    e.shutdown().await.unwrap();
}

/// What the bot said in the conversation, oldest first.
async fn bot_said(db: &TestDb, phone: &str) -> Vec<String> {
    support::transcript(db, phone)
        .await
        .into_iter()
        .filter(|(o, _)| o == "bot")
        .map(|(_, b)| b)
        .collect()
}
