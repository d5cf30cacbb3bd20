//! A database that stops answering without closing anything — every byte
//! held by a proxy between the engine and PostgreSQL, or every packet
//! dropped on a black-holed path (a network namespace of the test's own,
//! nftables in it): webhooks get 503 within their deadline and readiness
//! goes 503 — nothing hangs; once the path heals, everything goes on by
//! itself within seconds and nothing acknowledged is lost. A slow one (every
//! packet late) slows the engine down and breaks nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::app::{text_message, TestApp};
use support::TestDb;
use switchboard::config::Secret;
use switchboard::db::Database;
use switchboard::load::netns::Netns;
use switchboard::load::proxy::Proxy;

/// The test database's URL, through `proxy`.
fn proxied(db: &TestDb, proxy: &Proxy) -> String {
    proxy.route(db.url.expose())
}

fn target(db: &TestDb) -> std::net::SocketAddr {
    let url = db.url.expose();
    let at = url.rfind('@').unwrap();
    let slash = url[at..].find('/').unwrap() + at;
    url[at + 1..slash].parse().unwrap()
}

/// An app whose database is `url` (through a proxy), with short bounds:
/// statements 2 s, the answer's grace 1 s, the kernel's user timeout 2 s,
/// the webhook's deadline 3 s, a resume sweep every second.
async fn app_through(db: &TestDb, url: &Secret) -> TestApp {
    let adjust = |s: &mut switchboard::config::Settings| {
        s.database.url = Some(url.clone());
        s.database.statement_timeout_ms = 2_000;
        s.database.answer_grace_ms = 1_000;
        s.database.tcp_user_timeout_s = 2;
        s.server.webhook_deadline_ms = 3_000;
        s.engine.resume_interval_s = 1;
    };
    let mut settings = support::engine_settings(db);
    adjust(&mut settings);
    let database = Database::connect(url.clone(), &settings.database);
    TestApp::spawn_with(db, adjust, |b| b.database(database)).await
}

/// One message delivered: the webhook's status and how long it took
/// (bounded: a hang fails the test instead of holding it).
async fn deliver(app: &TestApp, phone: &str, id: &str) -> (u16, Duration) {
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        app.deliver_value(vec![text_message(phone, id, "hola")], vec![]),
    )
    .await
    .expect("the webhook hung");
    (r.status().as_u16(), started.elapsed())
}

/// While the path is out: each of `messages` refused with 503 within its
/// deadline, and readiness 503 soon.
async fn refused_in_time(app: &TestApp, messages: &[(&str, &str)]) {
    for (phone, id) in messages {
        let (status, took) = deliver(app, phone, id).await;
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
}

/// Once the path healed: `messages` redelivered (as WhatsApp does) until
/// stored, applied, and readiness back.
async fn stored_again(app: &TestApp, messages: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for (phone, id) in messages {
        while deliver(app, phone, id).await.0 != 200 {
            assert!(Instant::now() < deadline, "{phone} never stored after the path healed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    app.engine.wait_idle().await;
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 200);
}

#[actix_web::test]
async fn a_database_that_stops_answering_gets_503s_within_deadlines_and_recovery_by_itself() {
    let db = TestDb::migrated().await;
    let proxy = Proxy::start(target(&db)).await.unwrap();
    let app = app_through(&db, &Secret::new(proxied(&db, &proxy))).await;
    let (known, new) = ("5215511112222", "5215511113333");
    assert_eq!(deliver(&app, known, "wamid.s1").await.0, 200);
    app.engine.wait_idle().await;

    proxy.stall();
    // A known contact (its link cached): the registration waits on the
    // stalled writer; a new one: its link waits on a stalled connection.
    let waiting = [(known, "wamid.s2"), (new, "wamid.s3")];
    refused_in_time(&app, &waiting).await;

    proxy.heal();
    stored_again(&app, &waiting).await;
    // Every acknowledged message applied once: two for the known contact, one for the new.
    assert_eq!(support::user_messages(&db, known).await, ["hola", "hola"]);
    assert_eq!(support::user_messages(&db, new).await, ["hola"]);
    app.stop().await;
}

#[actix_web::test]
async fn a_slow_database_slows_the_engine_down_without_errors_or_a_connection_storm() {
    let db = TestDb::migrated().await;
    let proxy = Proxy::start(target(&db)).await.unwrap();
    let url = Secret::new(proxied(&db, &proxy));
    let adjust = |s: &mut switchboard::config::Settings| {
        s.database.url = Some(url.clone());
    };
    let mut settings = support::engine_settings(&db);
    adjust(&mut settings);
    let pool = settings.database.max_connections as usize;
    let database = Database::connect(url.clone(), &settings.database);
    let app = TestApp::spawn_with(&db, adjust, |b| b.database(database)).await;
    // Every packet, either way, 50 to 200 ms late.
    proxy.slow(Duration::from_millis(50), Duration::from_millis(200));
    let started = Instant::now();
    let phones: Vec<String> = (0..8).map(|c| format!("52155122200{c:02}")).collect();
    // Each conversation's three messages in order; the conversations at once.
    let conversations = phones.iter().map(|phone| {
        let app = &app;
        async move {
            let mut statuses = Vec::new();
            for (n, text) in ["uno", "dos", "tres"].into_iter().enumerate() {
                let id = format!("wamid.slow.{phone}.{n}");
                let r = tokio::time::timeout(
                    Duration::from_secs(30),
                    app.deliver_value(vec![text_message(phone, &id, text)], vec![]),
                )
                .await
                .expect("the webhook hung");
                statuses.push(r.status().as_u16());
            }
            statuses
        }
    });
    let statuses = futures_util::future::join_all(conversations).await;
    app.engine.wait_idle().await;
    let took = started.elapsed();
    assert!(statuses.iter().flatten().all(|s| *s == 200), "{statuses:?}");
    for phone in &phones {
        assert_eq!(
            support::user_messages(&db, phone).await,
            ["uno", "dos", "tres"],
            "{phone}"
        );
    }
    // Slow answers did not make the engine open connection after connection:
    // the pool's, plus the few of its own (presence, notifications).
    let opened = proxy.connections();
    assert!(opened <= pool + 4, "{opened} connections for a pool of {pool}");
    eprintln!("24 messages over a slow path in {took:?}, {opened} connections");
    proxy.slow(Duration::ZERO, Duration::ZERO);
    app.stop().await;
}

#[actix_web::test]
async fn a_black_holed_database_gets_503s_within_deadlines_and_recovers_within_seconds_of_healing() {
    let db = TestDb::migrated().await;
    // The engine reaches PostgreSQL through a proxy listening inside the
    // test's namespace: dropping its packets there black-holes the path.
    let ns = Netns::create().unwrap();
    let proxy = Proxy::start_on(ns.listen().unwrap(), target(&db)).unwrap();
    let app = app_through(&db, &Secret::new(proxied(&db, &proxy))).await;
    let (known, new) = ("5215511114444", "5215511115555");
    assert_eq!(deliver(&app, known, "wamid.b1").await.0, 200);
    app.engine.wait_idle().await;

    ns.black_hole(proxy.port).unwrap();
    let waiting = [(known, "wamid.b2"), (new, "wamid.b3")];
    refused_in_time(&app, &waiting).await;
    // By now (over the 2 s user timeout) the kernel has given up the
    // connections whose packets went unanswered.
    let opened = proxy.connections();

    ns.heal().unwrap();
    let healed = Instant::now();
    stored_again(&app, &waiting).await;
    let recovered = healed.elapsed();
    assert!(
        recovered < Duration::from_secs(15),
        "applied again {recovered:?} after healing"
    );
    assert_eq!(support::user_messages(&db, known).await, ["hola", "hola"]);
    assert_eq!(support::user_messages(&db, new).await, ["hola"]);
    assert!(
        proxy.connections() > opened,
        "no new connection after healing: the black-holed ones were not given up"
    );
    eprintln!("black hole: stored and applied again {recovered:?} after healing");
    app.stop().await;
}
