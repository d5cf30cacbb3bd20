//! Flow actions against a backend of the team's (a local HTTP server): a
//! call that succeeds moves the flow and keeps the backend's ticket number;
//! a hanging backend costs the step its timeout, not more; a backend that
//! is down opens the action's breaker and later calls fail at once; a
//! process killed between the call and the commit makes the call again
//! with the same idempotency key; a step that would call the backend
//! while an earlier message of its conversation waits in another live
//! process waits for it instead, and never calls on the state before it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use support::{say, transcript, TestDb};
use switchboard::config::{Secret, Settings};
use switchboard::flow::Flow;
use switchboard::Engine;

/// Validates the SAP number with the backend when it is given, files the
/// report there on confirming; each failure has its own way on.
const FLOW: &str = r#"
name = "acciones"
initial = "inicio"
[intents]
reportar = ["reportar"]
si = ["si"]
[actions.validar]
url = "BASE/sap/{sap}"
method = "GET"
timeout_ms = 2000
retries = 0
[actions.crear]
url = "BASE/tickets"
headers = { Authorization = { secret = "crm" } }
timeout_ms = 400
retries = 1
[states.inicio]
prompt = "Hola"
[states.inicio.on]
reportar = "sap"
[states.sap]
prompt = "¿Número SAP?"
next = "confirmar"
action = "validar"
on_failure = "desconocido"
[states.sap.slot]
name = "sap"
pattern = '^\d{5}$'
[states.desconocido]
prompt = "No encontré ese SAP."
[states.desconocido.on]
reportar = "sap"
[states.confirmar]
prompt = "¿Es el equipo de {tienda}?"
[states.confirmar.on]
si = "fin"
[states.fin]
prompt = "Listo, tu folio es {folio}."
outcome = "reporte"
action = "crear"
on_failure = "sin_sistema"
[states.sin_sistema]
prompt = "El sistema no responde; te contactamos."
[states.sin_sistema.on]
reportar = "sap"
"#;

/// How the backend answers `POST /tickets`.
#[derive(Clone, Copy, PartialEq)]
enum Tickets {
    Ok,
    /// Never answers (until the test ends).
    Hang,
    /// The first request hangs, the rest answer.
    HangOnce,
    Down,
}

/// One request the backend received: method, path, idempotency key,
/// authorization, body.
type Call = (String, String, String, String, Value);

struct Backend {
    base: String,
    mode: Arc<Mutex<Tickets>>,
    calls: Arc<Mutex<Vec<Call>>>,
    hit: Arc<tokio::sync::Notify>,
}

type Shared = (Arc<Mutex<Tickets>>, Arc<Mutex<Vec<Call>>>, Arc<tokio::sync::Notify>);

async fn answer(req: HttpRequest, body: web::Bytes, state: web::Data<Shared>) -> HttpResponse {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let call = (
        req.method().to_string(),
        req.path().to_string(),
        header("idempotency-key"),
        header("authorization"),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    );
    let seen = {
        let mut calls = state.1.lock().unwrap();
        calls.push(call);
        calls.iter().filter(|c| c.1 == "/tickets").count()
    };
    state.2.notify_waiters();
    if let Some(sap) = req.path().strip_prefix("/sap/") {
        return match sap {
            "12345" => HttpResponse::Ok().json(json!({"tienda": "Tienda 7", "_attempts": 99})),
            _ => HttpResponse::NotFound().finish(),
        };
    }
    let mode = *state.0.lock().unwrap();
    match mode {
        Tickets::Ok => HttpResponse::Created().json(json!({"folio": "SAP-4711"})),
        Tickets::Hang => std::future::pending().await,
        Tickets::HangOnce if seen == 1 => std::future::pending().await,
        Tickets::HangOnce => HttpResponse::Created().json(json!({"folio": "SAP-4711"})),
        Tickets::Down => HttpResponse::ServiceUnavailable().finish(),
    }
}

impl Backend {
    fn start(mode: Tickets) -> Self {
        let shared: Shared = (Arc::new(Mutex::new(mode)), Arc::default(), Arc::default());
        let data = web::Data::new(shared.clone());
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(answer)))
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
        let port = server.addrs()[0].port();
        actix_web::rt::spawn(server.run());
        Self {
            base: format!("http://127.0.0.1:{port}"),
            mode: shared.0,
            calls: shared.1,
            hit: shared.2,
        }
    }

    fn flow(&self) -> String {
        FLOW.replace("BASE", &self.base)
    }

    fn tickets(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.1 == "/tickets")
            .cloned()
            .collect()
    }

    /// Waits (bounded) until `POST /tickets` was called `n` times.
    async fn tickets_called(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let hit = self.hit.notified();
                if self.tickets().len() >= n {
                    return;
                }
                hit.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the backend was not called {n} times"));
    }
}

fn settings(db: &TestDb, adjust: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = support::engine_settings(db);
    s.integrations
        .secrets
        .insert("crm".into(), Secret::new("Bearer crm-token"));
    s.integrations.action_breaker.failure_threshold = 2;
    s.integrations.action_breaker.open_ms = 60_000;
    adjust(&mut s);
    s
}

async fn engine(db: &TestDb, backend: &Backend, adjust: impl FnOnce(&mut Settings)) -> Engine {
    Engine::builder(settings(db, adjust))
        .database(db.database())
        .flow(Flow::parse(&backend.flow(), "acciones.toml").unwrap())
        .sender(Arc::new(switchboard::whatsapp::sender::LogSink))
        .start()
        .await
        .unwrap()
}

/// The bot's replies to `phone`, oldest first.
async fn bot_said(db: &TestDb, phone: &str) -> Vec<String> {
    transcript(db, phone)
        .await
        .into_iter()
        .filter(|(origin, _)| origin == "bot")
        .map(|(_, body)| body)
        .collect()
}

async fn outcomes(db: &TestDb) -> Vec<Value> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use switchboard::db::schema::outcomes;
    outcomes::table
        .order(outcomes::id)
        .select(outcomes::data)
        .load(&mut db.admin().await)
        .await
        .unwrap()
}

/// Says `reportar`, a SAP number and `si` as three messages of `phone`.
async fn report(e: &Engine, phone: &str, sap: &str) {
    say(e, phone, &format!("wamid.{phone}.1"), "reportar").await;
    say(e, phone, &format!("wamid.{phone}.2"), sap).await;
    e.wait_idle().await;
    say(e, phone, &format!("wamid.{phone}.3"), "si").await;
    e.wait_idle().await;
}

#[actix_web::test]
async fn an_action_that_succeeds_moves_the_flow_and_keeps_the_backends_ticket_number() {
    let db = TestDb::migrated().await;
    let backend = Backend::start(Tickets::Ok);
    let e = engine(&db, &backend, |_| {}).await;
    let phone = "5215512340001";
    report(&e, phone, "12345").await;
    assert_eq!(
        bot_said(&db, phone).await,
        [
            "¿Número SAP?",
            "¿Es el equipo de Tienda 7?",
            "Listo, tu folio es SAP-4711."
        ]
    );
    let outcome = &outcomes(&db).await[0];
    assert_eq!(
        (outcome["folio"].as_str(), outcome["sap"].as_str()),
        (Some("SAP-4711"), Some("12345"))
    );
    assert!(outcome.get("_attempts").is_none(), "the backend sets no engine key");
    let calls = backend.calls.lock().unwrap().clone();
    let check = &calls[0];
    assert_eq!(
        (check.0.as_str(), check.1.as_str(), check.2.as_str()),
        ("GET", "/sap/12345", "wamid.5215512340001.2:validar")
    );
    let create = &calls[1];
    assert_eq!(
        (create.0.as_str(), create.2.as_str(), create.3.as_str()),
        ("POST", "wamid.5215512340001.3:crear", "Bearer crm-token")
    );
    assert_eq!(
        create.4,
        json!({"sap": "12345", "tienda": "Tienda 7"}),
        "the slot values"
    );
    // The backend's no (404) takes on_failure.
    let other = "5215512340002";
    say(&e, other, "wamid.o.1", "reportar").await;
    say(&e, other, "wamid.o.2", "99999").await;
    e.wait_idle().await;
    assert_eq!(bot_said(&db, other).await, ["¿Número SAP?", "No encontré ese SAP."]);
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn an_action_that_times_out_takes_its_failure_within_its_timeout() {
    let db = TestDb::migrated().await;
    let backend = Backend::start(Tickets::Hang);
    let e = engine(&db, &backend, |_| {}).await;
    let phone = "5215512340003";
    say(&e, phone, "wamid.t.1", "reportar").await;
    say(&e, phone, "wamid.t.2", "12345").await;
    e.wait_idle().await;
    let started = Instant::now();
    say(&e, phone, "wamid.t.3", "si").await;
    e.wait_idle().await;
    let took = started.elapsed();
    assert_eq!(
        bot_said(&db, phone).await.last().map(String::as_str),
        Some("El sistema no responde; te contactamos.")
    );
    // Two attempts of 400 ms and a 100 ms pause; the backend never answers.
    assert!(took >= Duration::from_millis(900), "took {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: the timeout did not hold"
    );
    let keys: Vec<String> = backend.tickets().into_iter().map(|c| c.2).collect();
    assert_eq!(
        keys,
        ["wamid.t.3:crear", "wamid.t.3:crear"],
        "one key for every attempt"
    );
    assert!(outcomes(&db).await.is_empty(), "no report without the backend's");
    e.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_backend_that_is_down_opens_the_actions_breaker_and_the_flow_fails_over_at_once() {
    let db = TestDb::migrated().await;
    let backend = Backend::start(Tickets::Down);
    let e = engine(&db, &backend, |_| {}).await;
    let first = "5215512340004";
    report(&e, first, "12345").await;
    assert_eq!(backend.tickets().len(), 2, "an attempt and its retry");
    let breaker = e
        .breakers()
        .await
        .into_iter()
        .find(|b| b.name == "action:crear")
        .unwrap();
    assert_eq!(format!("{:?}", breaker.state), "Open");
    let second = "5215512340005";
    report(&e, second, "12345").await;
    assert_eq!(backend.tickets().len(), 2, "an open breaker sends nothing");
    for phone in [first, second] {
        assert_eq!(
            bot_said(&db, phone).await.last().map(String::as_str),
            Some("El sistema no responde; te contactamos.")
        );
    }
    let figures = e.action_figures().into_iter().find(|a| a.action == "crear").unwrap();
    assert_eq!((figures.failed, figures.rejected, figures.succeeded), (1, 1, 0));
    // The backend is back; the breaker, forced closed, lets calls through.
    *backend.mode.lock().unwrap() = Tickets::Ok;
    assert!(e.force_breaker("action:crear", false).await);
    say(&e, second, "wamid.again.1", "reportar").await;
    say(&e, second, "wamid.again.2", "12345").await;
    e.wait_idle().await;
    say(&e, second, "wamid.again.3", "si").await;
    e.wait_idle().await;
    assert_eq!(
        bot_said(&db, second).await.last().map(String::as_str),
        Some("Listo, tu folio es SAP-4711.")
    );
    e.shutdown().await.unwrap();
}

#[test]
fn a_flow_naming_what_does_not_exist_is_refused_when_it_loads() {
    let unknown = FLOW.replace("action = \"crear\"", "action = \"facturar\"");
    let err = Flow::parse(&unknown, "f.toml").unwrap_err().to_string();
    assert!(err.contains("unknown action `facturar`"), "{err}");
    let bad_target = FLOW.replace("on_failure = \"sin_sistema\"", "on_failure = \"nada\"");
    let err = Flow::parse(&bad_target, "f.toml").unwrap_err().to_string();
    assert!(err.contains("unknown state `nada`"), "{err}");
    let no_failure = FLOW.replace("on_failure = \"desconocido\"\n", "");
    let err = Flow::parse(&no_failure, "f.toml").unwrap_err().to_string();
    assert!(err.contains("needs `on_failure`"), "{err}");
}

#[actix_web::test]
async fn an_action_naming_a_secret_that_is_not_configured_stops_the_start() {
    let db = TestDb::migrated().await;
    let backend = Backend::start(Tickets::Ok);
    let err = Engine::builder(settings(&db, |s| s.integrations.secrets.clear()))
        .database(db.database())
        .flow(Flow::parse(&backend.flow(), "acciones.toml").unwrap())
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("secret `crm`"), "{err}");
}

#[actix_web::test]
async fn a_crash_between_the_call_and_the_commit_repeats_the_call_with_the_same_key() {
    let db = TestDb::migrated().await;
    let backend = Backend::start(Tickets::HangOnce);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flow.toml"), backend.flow()).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\n[flow]\npath = \"{}\"\n[log]\nformat = \"json\"\n\
             [engine]\ninbox_lease_ms = 4000\nresume_interval_s = 1\n\
             [integrations.secrets]\ncrm = \"Bearer crm-token\"\n",
            db.url.expose(),
            dir.path().join("flow.toml").display(),
        ),
    )
    .unwrap();
    let (mut first, port) = support::serve(dir.path());
    let phone = "5215512340006";
    for (n, text) in [(1, "reportar"), (2, "12345"), (3, "si")] {
        let id = format!("wamid.k{n}");
        assert_eq!(support::app::post_text(port, phone, &id, text).await, 200);
    }
    // The call to file the report is in flight (the backend holds it): kill.
    backend.tickets_called(1).await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(outcomes(&db).await.is_empty(), "nothing committed yet");
    let (mut second, _) = support::serve(dir.path());
    backend.tickets_called(2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while outcomes(&db).await.is_empty() {
        assert!(Instant::now() < deadline, "the step never committed after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys: Vec<String> = backend.tickets().into_iter().map(|c| c.2).collect();
    assert_eq!(
        keys,
        ["wamid.k3:crear", "wamid.k3:crear"],
        "the repeat carries the same key"
    );
    let outcomes = outcomes(&db).await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0]["folio"], "SAP-4711");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[actix_web::test]
async fn a_step_reaching_an_action_waits_for_an_earlier_message_another_process_holds() {
    use diesel_async::RunQueryDsl;
    use switchboard::db::inbox::{register_batch, Lease, OwnedDelivery};
    let db = TestDb::migrated().await;
    let backend = Backend::start(Tickets::Ok);
    let e = engine(&db, &backend, |_| {}).await;
    let phone = "5215512340007";
    say(&e, phone, "wamid.h1", "reportar").await;
    e.wait_idle().await;
    // Another process, alive (it holds its presence lock), accepted a SAP
    // number the backend does not know and has not applied it yet.
    const OTHER: i64 = 0x5EED_0001;
    let mut other = db.admin().await;
    diesel::sql_query(format!("SELECT pg_advisory_lock({OTHER})"))
        .execute(&mut other)
        .await
        .unwrap();
    let held = OwnedDelivery {
        phone: phone.into(),
        provider_message_id: "wamid.h2".into(),
        payload: support::text("99999"),
        contact_name: None,
        contact_username: None,
        traceparent: None,
    };
    let lease = Lease {
        holder: OTHER,
        millis: 60_000,
    };
    register_batch(&mut other, &[held], lease).await.unwrap();
    // A later message whose step, on the state before the earlier one,
    // would validate its SAP number with the backend.
    say(&e, phone, "wamid.h3", "12345").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while e.stats().waited_behind == 0 {
        assert!(Instant::now() < deadline, "the later message never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The other process dies: its message is taken up, applied first.
    drop(other);
    e.wait_idle().await;
    let validated: Vec<String> = backend
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.1.clone())
        .filter(|p| p.starts_with("/sap/"))
        .collect();
    assert_eq!(
        validated,
        ["/sap/99999"],
        "the backend saw only the step the earlier message made, never one on the state before it"
    );
    let inbound: Vec<String> = transcript(&db, phone)
        .await
        .into_iter()
        .filter(|(origin, _)| origin == "user")
        .map(|(_, body)| body)
        .collect();
    assert_eq!(inbound, ["reportar", "99999", "12345"]);
    assert_eq!(e.conversation(phone).await.unwrap().unwrap().flow_state, "desconocido");
    e.shutdown().await.unwrap();
}
