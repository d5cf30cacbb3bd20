//! The HTTP server end to end: webhook verification, signatures, every
//! message and status type, bad input, the agent API, SSE, metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use support::app::{change, delivery, message, status, text_message, TestApp, APP_SECRET};
use support::TestDb;
use switchboard::config::Secret;
use switchboard::db::schema::{inbox, messages};

const PHONE: &str = "5215512341234";
const TOKEN: &str = "agent-token-1";

fn secure(s: &mut switchboard::config::Settings) {
    s.whatsapp.app_secret = Some(Secret::new(APP_SECRET));
    s.whatsapp.verify_token = Some(Secret::new("verify-me"));
    s.api.tokens = vec![Secret::new("old-token").into(), Secret::new(TOKEN).into()];
}

async fn app(db: &TestDb) -> TestApp {
    TestApp::spawn(db, secure, None).await
}

/// A secured app with one more setting changed.
async fn app_with(db: &TestDb, adjust: impl FnOnce(&mut switchboard::config::Settings)) -> TestApp {
    TestApp::spawn(
        db,
        |s| {
            secure(s);
            adjust(s);
        },
        None,
    )
    .await
}

async fn inbox_count(db: &TestDb) -> i64 {
    inbox::table.count().get_result(&mut db.admin().await).await.unwrap()
}

#[actix_web::test]
async fn the_verification_handshake_echoes_the_challenge_only_for_the_right_token() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let ok = app
        .client
        .get(app.url("/webhook?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    for q in [
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
        "hub.mode=unsubscribe&hub.verify_token=verify-me&hub.challenge=1",
        "hub.challenge=1",
    ] {
        let r = app.client.get(app.url(&format!("/webhook?{q}"))).send().await.unwrap();
        assert_eq!(r.status(), 403, "{q}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn deliveries_need_a_valid_signature_over_the_exact_bytes() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    // Non-ASCII text and '/' as Meta sends them: escaped and unescaped forms differ.
    let body = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"value":{"messaging_product":"whatsapp","messages":[{"from":"5215512341234","id":"wamid.sig1","timestamp":"1","type":"text","text":{"body":"¿Dónde está mi técnico? 🔧 \/ urgente"}}]},"field":"messages"}]}]}"#;
    assert_eq!(app.deliver(body.as_bytes(), None).await.status(), 401, "missing");
    assert_eq!(
        app.deliver(body.as_bytes(), Some("wrong-secret")).await.status(),
        401,
        "wrong"
    );
    assert_eq!(inbox_count(&db).await, 0, "nothing stored without a valid signature");
    let r = app.deliver(body.as_bytes(), Some(APP_SECRET)).await;
    assert_eq!(r.status(), 200);
    app.engine.wait_idle().await;
    let stored: Value = inbox::table
        .select(inbox::payload)
        .first(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(stored["text"]["body"], "¿Dónde está mi técnico? 🔧 / urgente");
    app.stop().await;
}

#[actix_web::test]
async fn every_message_type_is_accepted_stored_as_received_and_applied_once() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let kinds = vec![
        ("text", json!({"body": "hola"})),
        (
            "interactive",
            json!({"type": "button_reply", "button_reply": {"id": "opt1", "title": "Refrigerador"}}),
        ),
        (
            "interactive",
            json!({"type": "list_reply", "list_reply": {"id": "r1", "title": "Vehículo", "description": "Carros"}}),
        ),
        ("button", json!({"text": "Sí", "payload": "CONFIRM"})),
        (
            "image",
            json!({"caption": "la etiqueta", "mime_type": "image/jpeg", "sha256": "abc", "id": "1001"}),
        ),
        (
            "audio",
            json!({"mime_type": "audio/ogg; codecs=opus", "sha256": "abc", "id": "1002", "voice": true}),
        ),
        (
            "video",
            json!({"mime_type": "video/mp4", "sha256": "abc", "id": "1003"}),
        ),
        (
            "document",
            json!({"filename": "factura.pdf", "mime_type": "application/pdf", "sha256": "abc", "id": "1004"}),
        ),
        (
            "sticker",
            json!({"mime_type": "image/webp", "sha256": "abc", "id": "1005", "animated": false}),
        ),
        (
            "location",
            json!({"latitude": 19.4326, "longitude": -99.1332, "name": "Oficina", "address": "CDMX"}),
        ),
        (
            "contacts",
            json!([{"name": {"formatted_name": "Luis", "first_name": "Luis"}, "phones": [{"phone": "+52 55 1111 2222", "type": "CELL", "wa_id": "5215511112222"}]}]),
        ),
        ("reaction", json!({"message_id": "wamid.prev", "emoji": "👍"})),
        (
            "unsupported",
            json!([{"code": 131051, "title": "Message type unknown", "message": "Message type unknown"}]),
        ),
        ("request_welcome", json!({})),
        (
            "order",
            json!({"catalog_id": "9001", "text": "para la tienda 12",
                   "product_items": [{"product_retailer_id": "SKU-1", "quantity": 2, "item_price": 150, "currency": "MXN"}]}),
        ),
        ("brand_new_type", json!({"whatever": [1, 2, 3]})),
    ];
    for (i, (kind, part)) in kinds.iter().enumerate() {
        let mut m = message(PHONE, &format!("wamid.type.{i}"), kind, part.clone());
        m["unknown_field"] = json!({"kept": true});
        let r = app.deliver_value(vec![m.clone()], vec![]).await;
        assert_eq!(r.status(), 200, "{kind}: {}", r.text().await.unwrap());
        app.engine.wait_idle().await;
        let stored: Value = inbox::table
            .filter(inbox::provider_message_id.eq(format!("wamid.type.{i}")))
            .select(inbox::payload)
            .first(&mut db.admin().await)
            .await
            .unwrap();
        assert_eq!(stored, m, "{kind} stored as received");
    }
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    // A reaction, an unsupported message, a welcome request, an order and an
    // unknown type are stored, not stepped: one version per stepped message.
    assert_eq!(s.version, kinds.len() as i64 - 5, "each stepped exactly once");
    let users: Vec<String> = messages::table
        .filter(messages::origin.eq("user"))
        .order(messages::id)
        .select(messages::body)
        .load(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(&users[..4], ["hola", "Refrigerador", "Vehículo", "Sí"]);
    assert_eq!(users[4], "la etiqueta", "a caption is the text of a media message");
    assert_eq!(users.len(), kinds.len(), "every message stored once");
    for shown in [
        "👍",
        "[unsupported]",
        "[request_welcome]",
        "[order]",
        "[brand_new_type]",
    ] {
        assert!(users.iter().any(|u| u == shown), "{shown} in {users:?}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_delivery_with_several_entries_and_changes_registers_every_message() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let mut body = delivery(vec![
        change(
            vec![
                text_message(PHONE, "wamid.m1", "hola"),
                text_message(PHONE, "wamid.m2", "vehiculo"),
            ],
            vec![],
        ),
        change(vec![text_message("5215599990000", "wamid.m3", "hola")], vec![]),
    ]);
    body["entry"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "2", "changes": [change(vec![text_message("5215588880000", "wamid.m4", "hola")], vec![])]}));
    let raw = serde_json::to_vec(&body).unwrap();
    let r = app.deliver(&raw, Some(APP_SECRET)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 4);
    app.engine.wait_idle().await;
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(
        (s.version, s.flow_state.as_str()),
        (2, "vehiculo_empleado"),
        "in order within the delivery"
    );
    // The same delivery again: all duplicates, nothing applied twice.
    let r = app.deliver(&raw, Some(APP_SECRET)).await;
    assert_eq!(r.json::<Value>().await.unwrap()["duplicates"], 4);
    app.engine.wait_idle().await;
    assert_eq!(app.engine.conversation(PHONE).await.unwrap().unwrap().version, 2);
    app.stop().await;
}

#[actix_web::test]
async fn bad_bodies_get_a_clear_4xx_and_store_nothing() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "malformed JSON"),
        (br#"{"object":"page","entry":[]}"#.to_vec(), 400, "not a WhatsApp"),
        (br#"{"entry":[]}"#.to_vec(), 400, "missing `object`"),
        (vec![b' '; 3 * 1024 * 1024 + 1], 413, ""),
    ];
    for (body, code, reason) in cases {
        let r = app.deliver(&body, Some(APP_SECRET)).await;
        assert_eq!(r.status().as_u16(), code, "{reason}");
        if !reason.is_empty() {
            let text = r.text().await.unwrap();
            assert!(text.contains(reason), "{text}");
        }
    }
    assert_eq!(inbox_count(&db).await, 0);
    app.stop().await;
}

#[actix_web::test]
async fn delivery_statuses_update_the_outbound_message_and_never_go_backwards() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    app.deliver_value(vec![text_message(PHONE, "wamid.s1", "hola")], vec![])
        .await;
    app.engine.wait_idle().await;
    app.engine.outbox().wait_drained().await;
    let out_id: String = messages::table
        .filter(messages::origin.eq("bot"))
        .select(messages::provider_message_id.assume_not_null())
        .first(&mut db.admin().await)
        .await
        .unwrap();
    let current = || async {
        messages::table
            .filter(messages::provider_message_id.eq(out_id.clone()))
            .select((messages::status, messages::error))
            .first::<(String, Option<String>)>(&mut db.admin().await)
            .await
            .unwrap()
    };
    for s in ["sent", "delivered", "read"] {
        let r = app.deliver_value(vec![], vec![status(&out_id, PHONE, s)]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(current().await.0, s);
    }
    app.deliver_value(vec![], vec![status(&out_id, PHONE, "delivered")])
        .await;
    assert_eq!(current().await.0, "read", "a late 'delivered' does not undo 'read'");
    app.deliver_value(vec![], vec![status(&out_id, PHONE, "failed")]).await;
    let (st, err) = current().await;
    assert_eq!(st, "failed");
    assert!(err.unwrap().contains("131047"));
    // A status for a message we do not know is accepted and ignored.
    let r = app
        .deliver_value(vec![], vec![status("wamid.unknown", PHONE, "read")])
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["statuses"], 0);
    app.stop().await;
}

#[actix_web::test]
async fn the_agent_api_needs_a_token_and_reads_its_own_writes() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    // The customer wrote: the 24-hour window is open.
    app.say(PHONE, "wamid.window", "hola").await;
    let url = app.url(&format!("/api/conversations/{PHONE}/messages"));
    let r = app
        .client
        .post(&url)
        .json(&json!({"text": "hola"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .post(&url)
        .bearer_auth("nope")
        .json(&json!({"text": "hola"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for i in 0..5 {
        let text = format!("Hola, soy Ana ({i}). ¿Me confirmas tu número SAP?");
        let r = app
            .client
            .post(&url)
            .bearer_auth(TOKEN)
            .json(&json!({"text": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let created: Value = r.json().await.unwrap();
        // Immediately after the 201, the conversation shows it.
        let got: Value = app
            .client
            .get(app.url(&format!("/api/conversations/{PHONE}")))
            .bearer_auth("old-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["session"]["version"], created["version"]);
        assert_eq!(got["messages"].as_array().unwrap().last().unwrap()["body"], text);
    }
    let r = app
        .client
        .post(app.url("/api/conversations/12x/messages"))
        .bearer_auth(TOKEN)
        .json(&json!({"text": "hola"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("invalid phone"));
    let r = app
        .client
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"txt\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let list: Value = app
        .client
        .get(app.url("/api/conversations?handoff=false&limit=10"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["conversations"][0]["phone"], PHONE);
    app.stop().await;
}

#[actix_web::test]
async fn hand_off_stops_the_bot_replies_and_release_resumes_them() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let handoff = |active: bool| {
        app.client
            .post(app.url(&format!("/api/conversations/{PHONE}/handoff")))
            .bearer_auth(TOKEN)
            .json(&json!({"active": active}))
            .send()
    };
    assert_eq!(handoff(true).await.unwrap().status(), 200);
    app.deliver_value(vec![text_message(PHONE, "wamid.h1", "hola")], vec![])
        .await;
    app.engine.wait_idle().await;
    let bots = || async {
        messages::table
            .filter(messages::origin.eq("bot"))
            .count()
            .get_result::<i64>(&mut db.admin().await)
            .await
            .unwrap()
    };
    assert_eq!(bots().await, 0, "no bot reply while an agent holds the conversation");
    assert_eq!(handoff(false).await.unwrap().status(), 200);
    app.deliver_value(vec![text_message(PHONE, "wamid.h2", "hola")], vec![])
        .await;
    app.engine.wait_idle().await;
    assert_eq!(bots().await, 1);
    app.stop().await;
}

#[actix_web::test]
async fn an_sse_subscriber_receives_the_events_of_a_processed_message() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let resp = app
        .client
        .get(app.url(&format!("/api/conversations/{PHONE}/events")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut resp = resp;
    app.deliver_value(vec![text_message("5215500001111", "wamid.other", "hola")], vec![])
        .await;
    app.deliver_value(vec![text_message(PHONE, "wamid.e1", "mi refri no enfría")], vec![])
        .await;
    // Frames end with a blank line; comment frames (`: keepalive`) are skipped.
    let mut buf = String::new();
    let frame = loop {
        if let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            // Keepalives, and the position the stream starts from.
            if frame.starts_with(':') || !frame.contains("event:") {
                continue;
            }
            break frame;
        }
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    };
    // A feed event: its position as the id, its kind, its JSON.
    let lines: Vec<&str> = frame.lines().collect();
    assert!(lines[0].starts_with("id: ") && lines[0].len() == 4 + 32, "{frame}");
    assert_eq!(lines[1], "event: message.received", "{frame}");
    let data: Value = serde_json::from_str(lines[2].trim_start_matches("data: ")).unwrap();
    assert_eq!(data["conversation"]["key"], PHONE, "only this conversation's events");
    assert_eq!(data["data"]["state"], "refri_sap");
    assert_eq!(data["data"]["message"]["body"], "mi refri no enfría");
    app.stop().await;
}

#[actix_web::test]
async fn health_readiness_and_metrics_answer() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 200);
    app.deliver_value(vec![text_message(PHONE, "wamid.x1", "hola")], vec![])
        .await;
    app.deliver(b"{}", None).await;
    app.engine.wait_idle().await;
    let text = app.get_text("/metrics").await;
    for needle in [
        "switchboard_messages_processed_total 1",
        "switchboard_deliveries_total 1",
        "switchboard_http_requests_total{method=\"POST\",route=\"/webhook\",status=\"200\"} 1",
        "switchboard_rejected_requests_total{reason=\"webhook_signature\"} 1",
        "switchboard_breaker_state{breaker=\"ai\"} 0",
        "switchboard_pool_connections_max ",
        "switchboard_live_sessions ",
        "switchboard_http_request_duration_seconds_bucket",
        "switchboard_model_call_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
    assert!(!text.contains(PHONE), "no phone in metric labels");
    app.stop().await;

    // Optionally behind the API token.
    let app = TestApp::spawn(
        &db,
        |s| {
            secure(s);
            s.api.protect_metrics = true;
        },
        None,
    )
    .await;
    assert_eq!(app.client.get(app.url("/metrics")).send().await.unwrap().status(), 401);
    let r = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

/// Whether `promtool` can be run. Without it the lint test is skipped,
/// except under CI (`CI` set), where it must not pass unseen.
fn promtool_available() -> bool {
    match std::process::Command::new("promtool").arg("--version").output() {
        Ok(out) => out.status.success(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("promtool: {e}"),
    }
}

/// `promtool check metrics` on `text`: its exit status and what it printed.
fn promtool_check(text: &str) -> (std::process::ExitStatus, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Dropped at the end of the statement: promtool sees the end of its input.
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, printed)
}

#[actix_web::test]
async fn the_whole_metrics_exposition_passes_promtool_without_a_lint_message() {
    if !promtool_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed; under CI the metrics lint must run (Debian: apt-get install prometheus)"
        );
        eprintln!("skipped: promtool is not installed (Debian: apt-get install prometheus)");
        return;
    }
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    // A webhook (a model call: the histogram has a sample), a refused one
    // (a labelled counter) and an agent message.
    let r = app
        .deliver_value(vec![text_message(PHONE, "wamid.lint1", "hola")], vec![])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.deliver(b"{}", None).await.status(), 401);
    app.engine.wait_idle().await;
    let r = app
        .client
        .post(app.url(&format!("/api/conversations/{PHONE}/messages")))
        .bearer_auth(TOKEN)
        .json(&json!({"text": "Hola, soy Ana. ¿En qué te ayudo?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    app.engine.wait_idle().await;
    let text = app.get_text("/metrics").await;
    app.stop().await;
    let model_calls = text
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_model_call_duration_seconds_count "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        model_calls.is_some_and(|n| n >= 1.0),
        "the model call was observed\n{text}"
    );
    for needle in [
        "switchboard_http_requests_total{method=\"POST\",route=\"/api/conversations/{phone}/messages\",status=\"201\"} 1",
        "switchboard_http_request_duration_seconds_bucket{route=\"/api/conversations/{phone}/messages\",le=\"+Inf\"} 1",
        "switchboard_rejected_requests_total{reason=\"webhook_signature\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
    for gone in ["switchboard_gauge", "p99", "_us "] {
        assert!(!text.contains(gone), "{gone} is still exposed\n{text}");
    }
    let (status, printed) = promtool_check(&text);
    assert!(
        status.success() && printed.trim().is_empty(),
        "promtool check metrics: {status}\n{printed}\n--- the exposition:\n{text}"
    );
}

#[actix_web::test]
async fn serve_refuses_a_public_bind_without_signatures_and_tokens_unless_insecure() {
    let db = TestDb::migrated().await;
    let mut settings = support::engine_settings(&db);
    settings.server.bind = "0.0.0.0:0".into();
    let engine = switchboard::Engine::builder(settings.clone())
        .database(db.database())
        .flow(support::example_flow())
        .start()
        .await
        .unwrap();
    let err = switchboard::startup::Application::with_engine(engine.clone(), settings.clone())
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("whatsapp.app_secret") && text.contains("api.tokens"),
        "{text}"
    );
    // With both configured it starts; and `insecure` overrides the refusal.
    let mut secured = settings.clone();
    secure(&mut secured);
    assert!(switchboard::startup::Application::with_engine(engine.clone(), secured).is_ok());
    settings.server.insecure = true;
    assert!(switchboard::startup::Application::with_engine(engine.clone(), settings).is_ok());
    engine.shutdown().await.unwrap();
}

#[actix_web::test]
async fn limits_answer_with_a_clear_4xx_and_store_nothing() {
    let db = TestDb::migrated().await;
    let app = TestApp::spawn(
        &db,
        |s| {
            secure(s);
            s.api.rate_per_s = 1;
            s.api.burst = 2;
            s.api.max_sse_subscribers = 1;
        },
        None,
    )
    .await;
    // JSON nested deeper than the parser allows.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let r = app.deliver(deep.as_bytes(), Some(APP_SECRET)).await;
    assert_eq!(r.status(), 400);
    // Too many messages in one delivery.
    let many: Vec<Value> = (0..1001)
        .map(|i| text_message(PHONE, &format!("wamid.many.{i}"), "hola"))
        .collect();
    let r = app.deliver_value(many, vec![]).await;
    assert_eq!(r.status(), 413);
    // A text over WhatsApp's 4,096 characters: acknowledged, kept as a dead
    // letter with its reason, never applied.
    let r = app
        .deliver_value(vec![text_message(PHONE, "wamid.long", &"a".repeat(4097))], vec![])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["dead_lettered"], 1);
    let letters = app.engine.dead_letters(false, 10).await.unwrap();
    assert!(letters[0].reason.contains("4096"), "{:?}", letters[0]);
    assert_eq!(inbox_count(&db).await, 0);

    // One event stream at a time.
    let first = app
        .client
        .get(app.url("/api/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = app
        .client
        .get(app.url("/api/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
    drop(first);

    // Per-client rate: the burst is spent, then 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = app
            .client
            .get(app.url("/api/conversations"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        statuses.push((r.status().as_u16(), r.headers().get("retry-after").cloned()));
    }
    let limited = statuses
        .iter()
        .find(|(s, _)| *s == 429)
        .expect("a 429 within the burst + 1");
    assert!(limited.1.is_some(), "429 carries Retry-After");
    let text = app.get_text("/metrics").await;
    assert!(text.contains("reason=\"api_rate_limit\""), "{text}");
    app.stop().await;
}

struct PoisonWhile(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl switchboard::engine::Middleware for PoisonWhile {
    fn before_step(&self, _phone: &str, text: &str) -> Result<(), String> {
        if text == "veneno" && std::sync::atomic::AtomicBool::load(&self.0, std::sync::atomic::Ordering::SeqCst) {
            return Err("downstream system rejected it".into());
        }
        Ok(())
    }
}

#[actix_web::test]
async fn a_dead_letter_is_listed_and_its_replay_is_applied_exactly_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let db = TestDb::migrated().await;
    let poisoned = Arc::new(AtomicBool::new(true));
    let p = poisoned.clone();
    let app = TestApp::spawn_with(&db, secure, |b| b.middleware(Arc::new(PoisonWhile(p)))).await;
    app.deliver_value(vec![text_message(PHONE, "wamid.dl1", "veneno")], vec![])
        .await;
    app.engine.wait_idle().await;
    let get = |path: &str| app.client.get(app.url(path)).bearer_auth(TOKEN).send();
    assert_eq!(get("/api/admin/dead-letters").await.unwrap().status(), 200);
    let r = app.client.get(app.url("/api/admin/dead-letters")).send().await.unwrap();
    assert_eq!(r.status(), 401, "admin actions need the token");
    let list: Value = get("/api/admin/dead-letters").await.unwrap().json().await.unwrap();
    let letter = &list["dead_letters"][0];
    assert_eq!(letter["source"], "inbox");
    assert!(letter["reason"]
        .as_str()
        .unwrap()
        .contains("downstream system rejected it"));
    let id = letter["id"].as_i64().unwrap();
    assert_eq!(app.engine.conversation(PHONE).await.unwrap().unwrap().version, 0);

    // Fixed downstream; replay goes through the normal path once.
    poisoned.store(false, Ordering::SeqCst);
    let replay = |id: i64| {
        app.client
            .post(app.url(&format!("/api/admin/dead-letters/{PHONE}/{id}/replay")))
            .bearer_auth(TOKEN)
            .send()
    };
    assert_eq!(replay(id).await.unwrap().status(), 202);
    app.engine.wait_idle().await;
    assert_eq!(replay(id).await.unwrap().status(), 404, "a letter is replayed once");
    app.engine.wait_idle().await;
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.version, 1, "applied exactly once");
    let users: i64 = messages::table
        .filter(messages::origin.eq("user"))
        .count()
        .get_result(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(users, 1);
    let pending: Value = get("/api/admin/dead-letters?pending=true")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending["dead_letters"].as_array().unwrap().len(), 0);

    // Breakers can be read and forced.
    let r = app
        .client
        .post(app.url("/api/admin/breakers/outbound"))
        .bearer_auth(TOKEN)
        .json(&json!({"state": "open"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = get("/api/admin/breakers").await.unwrap().json().await.unwrap();
    let outbound = b["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "outbound")
        .unwrap()
        .clone();
    assert_eq!(outbound["state"], "open");
    app.stop().await;
}

#[actix_web::test]
async fn the_list_names_the_contact_and_the_overview_needs_a_token() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let r = app
        .deliver_value(vec![text_message(PHONE, "wamid.named", "hola")], vec![])
        .await;
    assert_eq!(r.status(), 200);
    app.engine.wait_idle().await;
    let get = |path: String, token: Option<&'static str>| {
        let mut req = app.client.get(app.url(&path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let list: Value = get("/api/conversations".into(), Some(TOKEN))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &list["conversations"][0];
    assert_eq!(row["phone"], PHONE);
    assert_eq!(row["contact_name"], "Ana Pérez", "from the delivery's contacts block");
    assert_eq!(row["last_origin"], "bot", "the bot's reply is the newest message");
    let one: Value = get(format!("/api/conversations/{PHONE}"), Some(TOKEN))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["contact_name"], "Ana Pérez");

    assert_eq!(get("/api/admin/overview".into(), None).await.unwrap().status(), 401);
    let o: Value = get("/api/admin/overview".into(), Some(TOKEN))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(o["ready"], true);
    assert_eq!(o["processed"], 1);
    assert_eq!(o["dead_letters_pending"], 0);
    assert_eq!(o["acks"]["count"], 1, "the webhook ack is counted: {o}");
    assert!(o["acks"]["p99_ms"].as_f64().unwrap() > 0.0);
    let names: Vec<&str> = o["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"ai") && names.contains(&"outbound"), "{names:?}");
    app.stop().await;
}

#[actix_web::test]
async fn oversized_headers_get_431_and_store_nothing() {
    let db = TestDb::migrated().await;
    let app = app_with(&db, |s| s.server.max_header_bytes = 4096).await;
    let body = serde_json::to_vec(&delivery(vec![change(
        vec![text_message(PHONE, "wamid.big-header", "hola")],
        vec![],
    )]))
    .unwrap();
    let r = app
        .client
        .post(app.url("/webhook"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            switchboard::whatsapp::webhook::sign(APP_SECRET.as_bytes(), &body),
        )
        .header("x-padding", "a".repeat(5000))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let reason: Value = r.json().await.unwrap();
    assert!(reason["error"].as_str().unwrap().contains("at most 4096"), "{reason}");
    assert_eq!(inbox_count(&db).await, 0, "nothing stored");
    // The same delivery with ordinary headers goes through.
    assert_eq!(app.deliver(&body, Some(APP_SECRET)).await.status(), 200);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"switchboard_rejected_requests_total{reason="header_size"} 1"#),
        "counted"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_client_that_never_finishes_its_request_head_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::migrated().await;
    let app = app_with(&db, |s| s.server.request_head_timeout_ms = 200).await;
    let addr = app.addr();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // The server answers 408 and closes; the read ends well before this
    // bound, which is under actix's own 5 s default.
    let mut answer = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(3), slow.read_to_end(&mut answer))
        .await
        .expect("the server closed the slow connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    app.stop().await;
}

#[actix_web::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::migrated().await;
    let app = app_with(&db, |s| s.server.max_connections = 1).await;
    let addr = app.addr();
    // One connection per worker fills the server (the limit is shared out
    // per worker, at least one each). Each has been served once and is
    // kept alive.
    let workers = std::thread::available_parallelism().unwrap().get();
    let mut held = Vec::new();
    for _ in 0..workers {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let waiting = client
        .get(app.url("/healthz"))
        .timeout(std::time::Duration::from_millis(500))
        .send()
        .await;
    assert!(waiting.is_err(), "not served while the server is full: {waiting:?}");
    drop(held.pop());
    let r = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "served once a connection closed");
    drop(held);
    app.stop().await;
}

#[actix_web::test]
async fn a_webhook_whose_lone_registration_fails_in_the_database_gets_503_not_400() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    // A server-side fault no retry can fix: the inbox is gone (as after a
    // botched migration). The message is fine; the provider must redeliver.
    diesel::sql_query("ALTER TABLE inbox RENAME TO inbox_gone")
        .execute(&mut db.admin().await)
        .await
        .unwrap();
    let r = app
        .deliver_value(vec![text_message(PHONE, "wamid.lone.1", "Hola")], vec![])
        .await;
    assert_eq!(r.status(), 503, "a database fault is the server's, never the client's");
    assert!(r.headers().contains_key("retry-after"));
    diesel::sql_query("ALTER TABLE inbox_gone RENAME TO inbox")
        .execute(&mut db.admin().await)
        .await
        .unwrap();
    let again = app
        .deliver_value(vec![text_message(PHONE, "wamid.lone.1", "Hola")], vec![])
        .await;
    assert_eq!(again.status(), 200, "the redelivery is stored once the fault is gone");
    assert_eq!(inbox_count(&db).await, 1);
    app.stop().await;
}

#[actix_web::test]
async fn a_delivery_with_bad_messages_is_acknowledged_the_good_applied_and_the_bad_dead_lettered() {
    let db = TestDb::migrated().await;
    let app = app_with(&db, |s| s.whatsapp.phone_number_id = Some("1098765432".into())).await;
    let mut no_from = text_message(PHONE, "wamid.nofrom", "hola");
    no_from.as_object_mut().unwrap().remove("from");
    // No phone, and a BSUID that is not one.
    let mut bsuid = text_message(PHONE, "wamid.bsuid", "hola");
    bsuid.as_object_mut().unwrap().remove("from");
    bsuid["from_user_id"] = json!("not-a-bsuid");
    let mut no_id = text_message(PHONE, "wamid.x", "hola");
    no_id.as_object_mut().unwrap().remove("id");
    let mut bad_group = text_message(PHONE, "wamid.badgroup", "hola");
    bad_group["group_id"] = json!("../../etc");
    let mut number_group = text_message(PHONE, "wamid.numgroup", "hola");
    number_group["group_id"] = json!(120363);
    let crafted_media = message(
        PHONE,
        "wamid.badmedia",
        "image",
        json!({"id": "../me?fields=access_token", "mime_type": "image/jpeg"}),
    );
    let mut bad_status = status("wamid.out", PHONE, "delivered");
    bad_status.as_object_mut().unwrap().remove("status");
    let body = serde_json::to_vec(&delivery(vec![change(
        vec![
            text_message(PHONE, "wamid.good1", "hola"),
            text_message("12ab", "wamid.badphone", "hola"),
            text_message(PHONE, "wamid.long", &"a".repeat(4097)),
            bsuid,
            no_from,
            no_id,
            text_message(PHONE, &format!("wamid.{}", "x".repeat(300)), "hola"),
            text_message(PHONE, "wamid.nul", "ho\u{0}la"),
            bad_group,
            number_group,
            crafted_media,
            text_message(PHONE, "wamid.good2", "vehiculo"),
        ],
        vec![bad_status],
    )]))
    .unwrap();
    let r = app.deliver(&body, Some(APP_SECRET)).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        (answer["accepted"].as_i64(), answer["dead_lettered"].as_i64()),
        (Some(2), Some(11))
    );
    app.engine.wait_idle().await;
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(
        (s.version, s.flow_state.as_str()),
        (2, "vehiculo_empleado"),
        "both good applied, in order"
    );

    let letters = app.engine.dead_letters(false, 20).await.unwrap();
    let mut reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(letters.len(), 11, "{reasons:?}");
    assert!(letters.iter().all(|l| l.source == "webhook"));
    for expected in [
        "1 to 256 characters",
        "a NUL character",
        "invalid phone",
        "4096",
        "BSUID",
        "without `from`",
        "without `id`",
        "a status without",
        "invalid group",
        "not a string",
        "invalid media id",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected} in {reasons:?}"
        );
    }
    let long = letters.iter().find(|l| l.reason.contains("4096")).unwrap();
    assert_eq!(long.payload["id"], "wamid.long", "kept as received");

    // Redelivered whole (as after a 503): nothing stored twice, nothing applied twice.
    let again: Value = app.deliver(&body, Some(APP_SECRET)).await.json().await.unwrap();
    assert_eq!(again["duplicates"], 2);
    app.engine.wait_idle().await;
    assert_eq!(app.engine.dead_letters(false, 20).await.unwrap().len(), 11);
    assert_eq!(app.engine.conversation(PHONE).await.unwrap().unwrap().version, 2);
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("switchboard_dead_letters_unusable_total 11"),
        "{metrics}"
    );

    // A message for a business number this deployment does not serve:
    // acknowledged, kept, counted, never answered.
    let mut other = change(vec![text_message(PHONE, "wamid.othernumber", "hola")], vec![]);
    other["value"]["metadata"]["phone_number_id"] = json!("5550009999");
    let r = app
        .deliver(&serde_json::to_vec(&delivery(vec![other])).unwrap(), Some(APP_SECRET))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["dead_lettered"], 1);
    let letters = app.engine.dead_letters(false, 20).await.unwrap();
    assert!(
        letters[0].reason.contains("business number 5550009999"),
        "{:?}",
        letters[0]
    );

    // It never reached the inbox: there is nothing to replay it onto.
    let r = app
        .client
        .post(app.url(&format!("/api/admin/dead-letters/{}/{}/replay", long.phone, long.id)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

/// The bot's messages stored for `phone`.
async fn bot_messages(db: &TestDb, phone: &str) -> i64 {
    messages::table
        .filter(messages::phone.eq(phone))
        .filter(messages::origin.eq("bot"))
        .count()
        .get_result(&mut db.admin().await)
        .await
        .unwrap()
}

#[actix_web::test]
async fn reactions_and_group_messages_are_stored_not_answered_and_use_no_attempt() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    app.say(PHONE, "wamid.k1", "vehiculo").await;
    let before = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(before.flow_state, "vehiculo_empleado", "a slot state");
    let replies = bot_messages(&db, PHONE).await;
    let reaction = message(
        PHONE,
        "wamid.k2",
        "reaction",
        json!({"message_id": "wamid.k1", "emoji": "👍"}),
    );
    let mut in_group = text_message(PHONE, "wamid.k3", "12345");
    in_group["group_id"] = json!("120363000000000000");
    let r = app.deliver_value(vec![reaction, in_group], vec![]).await;
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 2);
    app.engine.wait_idle().await;
    let after = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(
        (after.version, after.flow_state.as_str(), &after.data),
        (before.version, "vehiculo_empleado", &before.data),
        "not stepped: no version, no attempt, the slot still waits"
    );
    assert_eq!(bot_messages(&db, PHONE).await, replies, "not answered");
    let processed: i64 = inbox::table
        .filter(inbox::processed_at.is_not_null())
        .count()
        .get_result(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(processed, 3, "both handled");
    // The group's message is kept in the group's conversation, out of the 1:1 one.
    const GROUP: &str = "g.120363000000000000";
    let in_group = app.engine.conversation(GROUP).await.unwrap().unwrap();
    assert_eq!(in_group.version, 0, "stored, never stepped");
    let (group_messages, _) = app.engine.recent_messages(GROUP, 10).await.unwrap();
    assert_eq!(group_messages.len(), 1);
    assert_eq!(group_messages[0].body, "12345");
    let (direct, _) = app.engine.recent_messages(PHONE, 50).await.unwrap();
    assert!(direct
        .iter()
        .all(|m| m.provider_message_id.as_deref() != Some("wamid.k3")));
    let answer = app
        .client
        .post(app.url(&format!("/api/conversations/{GROUP}/messages")))
        .bearer_auth(TOKEN)
        .json(&json!({"text": "hola grupo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 409, "a group is not answered from here");
    // The slot is still there for the real answer.
    app.say(PHONE, "wamid.k4", "12345").await;
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(
        (s.version, s.flow_state.as_str()),
        (before.version + 1, "vehiculo_problema")
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_button_reply_matches_its_choice_by_id_whatever_its_title() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    app.say(PHONE, "wamid.b1", "hola").await;
    assert_eq!(app.state(PHONE).await, "inicio");
    // The id the bot sent names the choice; the title was edited since.
    let reply = message(
        PHONE,
        "wamid.b2",
        "interactive",
        json!({"type": "button_reply", "button_reply": {"id": "choice:Refrigerador", "title": "Otra cosa"}}),
    );
    app.deliver_value(vec![reply], vec![]).await;
    app.engine.wait_idle().await;
    assert_eq!(app.state(PHONE).await, "refri_sap");
    app.stop().await;
}

#[actix_web::test]
async fn the_api_shows_what_a_message_replies_to_the_ad_that_opened_the_chat_and_reactions() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    let mut from_ad = text_message(PHONE, "wamid.r1", "hola");
    from_ad["referral"] = json!({
        "source_url": "https://fb.me/anuncio", "source_id": "120200", "source_type": "ad",
        "headline": "Reporta tu falla", "body": "Escríbenos", "media_type": "image",
        "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ",
    });
    let mut reply = text_message(PHONE, "wamid.r2", "vehiculo");
    reply["context"] = json!({"from": "15550001111", "id": "wamid.bot.1"});
    let reaction = message(
        PHONE,
        "wamid.r3",
        "reaction",
        json!({"message_id": "wamid.r2", "emoji": "🙏"}),
    );
    app.deliver_value(vec![from_ad, reply, reaction], vec![]).await;
    app.engine.wait_idle().await;
    let got = app.get_json(&format!("/api/conversations/{PHONE}"), TOKEN).await;
    let inbound: Vec<&Value> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "in")
        .collect();
    assert_eq!(inbound.len(), 3, "{got}");
    assert_eq!(inbound[0]["referral"]["source_id"], "120200");
    assert_eq!(inbound[1]["context_id"], "wamid.bot.1");
    assert_eq!(
        (inbound[2]["body"].as_str(), inbound[2]["reacts_to"].as_str()),
        (Some("🙏"), Some("wamid.r2"))
    );
    assert!(inbound[0].get("context_id").is_none(), "absent, not null");
    app.stop().await;
}
