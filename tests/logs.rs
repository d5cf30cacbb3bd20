//! Personal data in logs: a whole conversation's logs (info and above, as
//! in production) must not show a phone number, a message body or a secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::app::{text_message, TestApp, APP_SECRET};
use support::TestDb;
use switchboard::config::Secret;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[actix_web::test]
async fn a_full_conversation_logs_no_phone_body_or_secret_in_clear() {
    let buffer = Buffer::default();
    let sink = buffer.clone();
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();

    let phone = "5215587654321";
    let token = "api-token-very-secret";
    let db = TestDb::migrated().await;
    let app = TestApp::spawn(
        &db,
        |s| {
            s.whatsapp.app_secret = Some(Secret::new(APP_SECRET));
            s.api.tokens = vec![Secret::new(token).into()];
        },
        None,
    )
    .await;
    let bodies = [
        "Hola, soy Rocío",
        "refrigerador",
        "9081726354",
        "si",
        "hablar con un agente",
    ];
    for (i, b) in bodies.iter().enumerate() {
        let r = app
            .deliver_value(vec![text_message(phone, &format!("wamid.pii.{i}"), b)], vec![])
            .await;
        assert_eq!(r.status(), 200);
        app.engine.wait_idle().await;
    }
    let r = app
        .client
        .post(app.url(&format!("/api/conversations/{phone}/messages")))
        .bearer_auth(token)
        .json(&json!({"text": "Hola Rocío, te atiende Ana"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A bad signature and a bad token are logged as rejections, without the values.
    app.deliver(b"{}", Some("not-the-secret")).await;
    app.client
        .get(app.url("/api/conversations"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    app.engine.outbox().wait_drained().await;
    app.stop().await;

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("reply (log sink"), "logs were captured: {logs}");
    assert!(logs.contains("+52*******4321"), "phones appear masked");
    for secret in [
        phone,
        "5587654321",
        "Rocío",
        "9081726354",
        "te atiende Ana",
        APP_SECRET,
        token,
    ] {
        assert!(!logs.contains(secret), "`{secret}` in the logs:\n{logs}");
    }
    let password = db
        .url
        .expose()
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    assert!(!logs.contains(&password), "the database password is in the logs");
}
