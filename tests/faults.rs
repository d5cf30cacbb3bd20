//! The server under faults: the database going away and coming back, and a
//! stop with queued work followed by a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use support::app::{text_message, TestApp};
use support::TestDb;
use switchboard::db::schema::{inbox, outbox};
use switchboard::db::{self, EmbeddedPostgres};

const PHONE: &str = "5215512341234";

/// A cluster of its own (so it can be stopped), with a migrated database.
async fn own_cluster() -> (switchboard::config::EmbeddedSettings, EmbeddedPostgres, TestDb) {
    let base = support::scratch_dir("faults");
    let data_dir = base.join("pg");
    support::spawn_watchdog(std::process::id(), &data_dir, &base);
    let settings = support::embedded_settings(&data_dir, support::free_port());
    let s = settings.clone();
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&s, support::FAST_SERVER))
        .await
        .unwrap()
        .unwrap();
    db::create_database_if_missing(pg.url_for("postgres").expose(), "faults")
        .await
        .unwrap();
    db::migrations::run_pending(pg.url_for("faults").expose())
        .await
        .unwrap();
    let test = TestDb {
        name: "faults".into(),
        url: pg.url_for("faults"),
    };
    (settings, pg, test)
}

#[actix_web::test]
async fn while_the_database_is_down_webhooks_get_503_and_both_recover_when_it_returns() {
    let (settings, mut pg, db) = own_cluster().await;
    let app = TestApp::spawn(
        &db,
        |s| {
            s.database.acquire_timeout_ms = 300;
            s.database.connect_timeout_ms = 300;
            s.database.retry.max_attempts = 2;
            s.database.retry.base_delay_ms = 10;
            s.database.min_idle = 0;
        },
        None,
    )
    .await;
    assert_eq!(
        app.deliver_value(vec![text_message(PHONE, "wamid.f1", "hola")], vec![])
            .await
            .status(),
        200
    );
    app.engine.wait_idle().await;

    tokio::task::spawn_blocking(move || {
        pg.stop().unwrap();
        pg
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let r = app
        .deliver_value(vec![text_message(PHONE, "wamid.f2", "refrigerador")], vec![])
        .await;
    assert_eq!(r.status(), 503, "the provider must redeliver later");
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "answered fast, did not hang"
    );
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 503);
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);

    // The same cluster comes back on the same port: no restart of the server.
    let s = settings.clone();
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&s, support::FAST_SERVER))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 200);
    // The redelivery is accepted and applied.
    let r = app
        .deliver_value(vec![text_message(PHONE, "wamid.f2", "refrigerador")], vec![])
        .await;
    assert_eq!(r.status(), 200);
    app.engine.wait_idle().await;
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!((s.version, s.flow_state.as_str()), (2, "refri_sap"));
    app.stop().await;
    drop(pg);
}

#[actix_web::test]
async fn after_a_stop_with_queued_work_a_restart_applies_every_acked_message_exactly_once() {
    use switchboard::ai::simulated::{SimulatedModel, SimulatedSettings};
    let db = TestDb::migrated().await;
    let slow = || {
        let mut s = support::engine_settings(&db);
        s.server.bind = "127.0.0.1:0".into();
        s.server.shutdown_timeout_s = 0; // stop without waiting for the queue
        s
    };
    let model = Arc::new(SimulatedModel::new(SimulatedSettings {
        latency_ms: 40,
        jitter_ms: 0,
        ..Default::default()
    }));
    let engine = switchboard::Engine::builder(slow())
        .database(db.database())
        .flow(support::example_flow())
        .model(model)
        .start()
        .await
        .unwrap();
    let app = switchboard::startup::Application::with_engine(engine.clone(), slow()).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = actix_web::rt::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    let phones = ["5215510000001", "5215510000002"];
    for i in 0..10 {
        for p in phones {
            let body = serde_json::to_vec(&support::app::delivery(vec![support::app::change(
                vec![text_message(p, &format!("wamid.q.{p}.{i}"), &format!("m{i}"))],
                vec![],
            )]))
            .unwrap();
            let r = client.post(format!("{base}/webhook")).body(body).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    let unprocessed: i64 = inbox::table
        .filter(inbox::processed_at.is_null())
        .count()
        .get_result(&mut db.admin().await)
        .await
        .unwrap();
    assert!(
        unprocessed > 0,
        "the stop left work queued (else this test proves nothing)"
    );

    // Restart: everything acked is applied, once.
    let app = TestApp::spawn(&db, |_| {}, None).await;
    app.engine.wait_idle().await;
    for p in phones {
        let s = app.engine.conversation(p).await.unwrap().unwrap();
        assert_eq!(s.version, 10, "{p}: every acked message applied exactly once");
    }
    let replies: Vec<String> = outbox::table
        .select(outbox::idempotency_key)
        .load(&mut db.admin().await)
        .await
        .unwrap();
    let distinct: std::collections::HashSet<&String> = replies.iter().collect();
    assert_eq!(distinct.len(), replies.len());
    app.stop().await;
}

#[actix_web::test]
async fn a_read_only_database_gives_503_loses_nothing_and_recovers_when_fixed() {
    let db = TestDb::migrated().await;
    let app = TestApp::spawn(
        &db,
        |s| {
            s.database.retry.max_attempts = 2;
            s.database.retry.base_delay_ms = 10;
        },
        None,
    )
    .await;
    assert_eq!(
        app.deliver_value(vec![text_message(PHONE, "wamid.ro1", "hola")], vec![])
            .await
            .status(),
        200
    );
    app.engine.wait_idle().await;
    // An operator (or a failover) makes the database read-only; sessions reconnect.
    let set_read_only = |on: bool| {
        let db = &db;
        async move {
            let mut admin = db.admin().await;
            // The operator's own session stays writable.
            diesel::sql_query("SET default_transaction_read_only = off")
                .execute(&mut admin)
                .await
                .unwrap();
            diesel::sql_query(format!(
                "ALTER DATABASE {} SET default_transaction_read_only = {on}",
                db.name
            ))
            .execute(&mut admin)
            .await
            .unwrap();
            diesel::sql_query(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND pid <> pg_backend_pid()",
                db.name
            ))
            .execute(&mut admin)
            .await
            .unwrap();
        }
    };
    set_read_only(true).await;
    let r = app
        .deliver_value(vec![text_message(PHONE, "wamid.ro2", "refrigerador")], vec![])
        .await;
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
    set_read_only(false).await;
    let r = app
        .deliver_value(vec![text_message(PHONE, "wamid.ro2", "refrigerador")], vec![])
        .await;
    assert_eq!(r.status(), 200, "the redelivery is taken once the database is writable");
    app.engine.wait_idle().await;
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!((s.version, s.flow_state.as_str()), (2, "refri_sap"));
    app.stop().await;
}
