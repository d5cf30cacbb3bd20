//! A database that stops answering without closing anything (every byte
//! held by a proxy between the engine and PostgreSQL): webhooks get 503
//! within their deadline and readiness goes 503 — nothing hangs; once the
//! path heals, everything goes on by itself and nothing acknowledged is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::app::{text_message, TestApp};
use support::proxy::Proxy;
use support::TestDb;
use switchboard::config::Secret;
use switchboard::db::Database;

/// The test database's URL, through `proxy`.
fn proxied(db: &TestDb, proxy: &Proxy) -> String {
    let url = db.url.expose();
    let at = url.rfind(':').unwrap();
    let slash = url[at..].find('/').unwrap() + at;
    format!("{}:{}{}", &url[..at], proxy.port, &url[slash..])
}

fn target(db: &TestDb) -> std::net::SocketAddr {
    let url = db.url.expose();
    let at = url.rfind('@').unwrap();
    let slash = url[at..].find('/').unwrap() + at;
    url[at + 1..slash].parse().unwrap()
}

#[actix_web::test]
async fn a_database_that_stops_answering_gets_503s_within_deadlines_and_recovery_by_itself() {
    let db = TestDb::migrated().await;
    let proxy = Proxy::start(target(&db)).await;
    let url = Secret::new(proxied(&db, &proxy));
    let adjust = |s: &mut switchboard::config::Settings| {
        s.database.url = Some(url.clone());
        s.database.statement_timeout_ms = 2_000;
        s.database.answer_grace_ms = 1_000;
        s.server.webhook_deadline_ms = 3_000;
        s.engine.resume_interval_s = 1;
    };
    let mut settings = support::engine_settings(&db);
    adjust(&mut settings);
    let database = Database::connect(url.clone(), &settings.database);
    let app = TestApp::spawn_with(&db, adjust, |b| b.database(database)).await;
    let (known, new) = ("5215511112222", "5215511113333");
    let deliver = |phone: &'static str, id: &'static str| {
        let app = &app;
        async move {
            let started = Instant::now();
            // Bounded: a hang fails the test instead of holding it.
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                app.deliver_value(vec![text_message(phone, id, "hola")], vec![]),
            )
            .await
            .expect("the webhook hung");
            (r.status().as_u16(), started.elapsed())
        }
    };
    assert_eq!(deliver(known, "wamid.s1").await.0, 200);
    app.engine.wait_idle().await;

    proxy.stall();
    // A known contact (its link cached): the registration waits on the
    // stalled writer; a new one: its link waits on a stalled connection.
    for (phone, id) in [(known, "wamid.s2"), (new, "wamid.s3")] {
        let (status, took) = deliver(phone, id).await;
        assert_eq!(status, 503, "{phone}");
        assert!(took < Duration::from_secs(8), "{phone}: answered after {took:?}");
    }
    let started = Instant::now();
    let ready = tokio::time::timeout(Duration::from_secs(20), app.client.get(app.url("/readyz")).send())
        .await
        .expect("readiness hung")
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());

    proxy.heal();
    // WhatsApp delivers again until a 200.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (phone, id) in [(known, "wamid.s2"), (new, "wamid.s3")] {
        while deliver(phone, id).await.0 != 200 {
            assert!(Instant::now() < deadline, "{phone} never stored after the path healed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    app.engine.wait_idle().await;
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 200);
    // Every acknowledged message applied once: two for the known contact, one for the new.
    assert_eq!(support::user_messages(&db, known).await, ["hola", "hola"]);
    assert_eq!(support::user_messages(&db, new).await, ["hola"]);
    app.stop().await;
}
