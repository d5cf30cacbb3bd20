//! A running switchboard (engine + HTTP server) on a free port, and
//! WhatsApp Cloud API webhook payloads in the shape Meta documents.

use std::sync::Arc;

use serde_json::{json, Value};
use switchboard::config::Settings;
use switchboard::startup::Application;
use switchboard::whatsapp::sender::Sender;
use switchboard::Engine;

use super::{engine_settings, example_flow, TestDb};

pub const APP_SECRET: &str = "test-app-secret";

pub struct TestApp {
    pub base: String,
    pub engine: Engine,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<actix_web::rt::task::JoinHandle<switchboard::Result<()>>>,
}

impl TestApp {
    /// Starts an app on `db` with the example flow; `adjust` edits the settings.
    pub async fn spawn(db: &TestDb, adjust: impl FnOnce(&mut Settings), sender: Option<Arc<dyn Sender>>) -> Self {
        Self::spawn_with(db, adjust, |b| match sender {
            Some(s) => b.sender(s),
            None => b,
        })
        .await
    }

    /// Like [`TestApp::spawn`], with a last word on the engine builder.
    pub async fn spawn_with(
        db: &TestDb,
        adjust: impl FnOnce(&mut Settings),
        build: impl FnOnce(switchboard::engine::EngineBuilder) -> switchboard::engine::EngineBuilder,
    ) -> Self {
        let mut settings = engine_settings(db);
        settings.server.bind = "127.0.0.1:0".into();
        adjust(&mut settings);
        let builder = Engine::builder(settings.clone())
            .database(db.database())
            .flow(example_flow());
        let engine = build(builder).start().await.unwrap();
        let app = Application::with_engine(engine.clone(), settings).unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = actix_web::rt::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        Self {
            base,
            engine,
            client: reqwest::Client::new(),
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// Stops the app in order (as on SIGTERM) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap().unwrap();
        }
    }

    /// `host:port`, for raw TCP clients.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The body of `GET path`, as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The JSON body of `GET path` with the bearer `token`.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POSTs a delivery to /webhook, signed with `secret` if given.
    pub async fn deliver(&self, body: &[u8], secret: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/webhook"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = secret {
            req = req.header(
                "x-hub-signature-256",
                switchboard::whatsapp::webhook::sign(s.as_bytes(), body),
            );
        }
        req.send().await.unwrap()
    }

    /// Delivers one text from `phone` and waits until it is applied.
    pub async fn say(&self, phone: &str, id: &str, body: &str) {
        let r = self.deliver_value(vec![text_message(phone, id, body)], vec![]).await;
        assert_eq!(r.status(), 200, "{id}");
        self.engine.wait_idle().await;
    }

    /// The state `phone`'s conversation is in.
    pub async fn state(&self, phone: &str) -> String {
        self.engine.conversation(phone).await.unwrap().unwrap().flow_state
    }

    /// A signed delivery of `messages` / `statuses` in one change.
    pub async fn deliver_value(&self, messages: Vec<Value>, statuses: Vec<Value>) -> reqwest::Response {
        let body = serde_json::to_vec(&delivery(vec![change(messages, statuses)])).unwrap();
        self.deliver(&body, Some(APP_SECRET)).await
    }
}

/// One `change` of a delivery.
pub fn change(messages: Vec<Value>, statuses: Vec<Value>) -> Value {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "1098765432"},
    });
    if !messages.is_empty() {
        let from = messages[0]["from"].clone();
        value["contacts"] = json!([{"profile": {"name": "Ana Pérez"}, "wa_id": from}]);
        value["messages"] = Value::Array(messages);
    }
    if !statuses.is_empty() {
        value["statuses"] = Value::Array(statuses);
    }
    json!({"value": value, "field": "messages"})
}

/// A delivery with one entry holding `changes`.
pub fn delivery(changes: Vec<Value>) -> Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": changes}]})
}

/// A message object of `kind` with its type-specific part.
pub fn message(from: &str, id: &str, kind: &str, part: Value) -> Value {
    // Sent now: the 24-hour window runs from a message's own timestamp.
    let now = chrono::Utc::now().timestamp().to_string();
    let mut m = json!({"from": from, "id": id, "timestamp": now, "type": kind});
    if kind != "unsupported" {
        m[kind] = part;
    } else {
        m["errors"] = part;
    }
    m
}

pub fn text_message(from: &str, id: &str, body: &str) -> Value {
    message(from, id, "text", json!({"body": body}))
}

/// A status report for our outbound message `id`.
pub fn status(id: &str, recipient: &str, status: &str) -> Value {
    let mut s = json!({
        "id": id, "status": status, "timestamp": "1732320001", "recipient_id": recipient,
        "conversation": {"id": "CONVERSATION_ID", "origin": {"type": "service"}},
        "pricing": {"billable": true, "pricing_model": "CBP", "category": "service"},
    });
    if status == "failed" {
        s["errors"] = json!([{"code": 131047, "title": "Re-engagement message",
            "message": "Re-engagement message", "error_data": {"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."}}]);
    }
    s
}

/// Posts one unsigned text message to the webhook of `switchboard serve`
/// on `port` (a process started by [`super::serve`]); returns the status.
pub async fn post_text(port: u16, phone: &str, id: &str, text: &str) -> u16 {
    let body = serde_json::to_vec(&delivery(vec![change(vec![text_message(phone, id, text)], vec![])])).unwrap();
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhook"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
